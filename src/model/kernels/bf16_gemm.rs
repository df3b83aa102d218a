//! Dense bf16 linear layers on AVX-512 BF16. The weights are repacked once at load time into
//! panels of 16 output rows whose input pairs sit side by side, so that one `vdpbf16ps`
//! multiplies 2 inputs of 16 rows at once; the activations (bf16 already) are broadcast a pair
//! at a time into a tile of 6 tokens × 32 outputs that accumulates in f32, over runs of 256
//! inputs while every row tile passes over them (the weights come from L1). The results are
//! rounded to bf16 once at the end, as candle's own path rounds its f32 GEMM. Candle's CPU
//! matmul has no bf16 kernel: it widens both matrices to f32 on every call, weights included.
//! CPUs without AVX512_BF16, other shapes, and `SHIELDGATE_KERNELS=candle` or `avx2` keep it.

use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Result, Shape, Tensor};
use half::bf16;

use super::panels::{activation_rows, Plan, PANEL, ROWS};
use super::Cap;

#[cfg(target_arch = "x86_64")]
mod avx512;

/// Input pairs the tiles run over before the next row tile: a panel pair's weights for them
/// (2 × 16 KiB) stay in L1 while every row tile passes over them.
const CHUNK_PAIRS: usize = 128;

/// One panel's weights for one input pair: 16 rows × 2 bf16, one `vdpbf16ps` operand,
/// aligned so that no load splits a cache line.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
struct Pairs([u32; PANEL]);

/// A bf16 matrix `[out, in]` repacked for the bf16 tile.
#[derive(Debug)]
pub struct PackedBf16 {
    out_dim: usize,
    in_dim: usize,
    /// Per panel, per input pair `j`: each row's inputs `2j` (low half) and `2j + 1`.
    weights: Vec<Pairs>,
}

/// Whether the bf16 tile runs here: the CPU has AVX-512 BF16 and `SHIELDGATE_KERNELS` does
/// not cap the kernels below AVX-512 (`candle`, `avx2`).
pub fn available() -> bool {
    let capped = matches!(Cap::from_env(), Cap::Avx2 | Cap::Candle);
    #[cfg(target_arch = "x86_64")]
    {
        !capped && avx512::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = capped;
        false
    }
}

impl PackedBf16 {
    /// Packs a CPU bf16 matrix whose rows split into whole panel pairs and whose inputs into
    /// pairs, when the tile runs here; `None` leaves it to candle.
    pub fn from_tensor(w: &Tensor) -> Result<Option<Self>> {
        if !available() {
            return Ok(None);
        }
        Self::pack(w)
    }

    /// Packs `w`; `None` for other devices, dtypes and shapes.
    fn pack(w: &Tensor) -> Result<Option<Self>> {
        if !matches!(w.device(), Device::Cpu) || w.dtype() != DType::BF16 {
            return Ok(None);
        }
        let (out_dim, in_dim) = w.dims2()?;
        if out_dim % (2 * PANEL) != 0 || in_dim % 2 != 0 || in_dim == 0 {
            return Ok(None);
        }
        let values = w.flatten_all()?.to_vec1::<bf16>()?;
        let pairs = in_dim / 2;
        let mut weights = vec![Pairs([0; PANEL]); out_dim / PANEL * pairs];
        for (row, values) in values.chunks_exact(in_dim).enumerate() {
            let (panel, lane) = (row / PANEL, row % PANEL);
            for (j, pair) in values.chunks_exact(2).enumerate() {
                weights[panel * pairs + j].0[lane] = word(pair[0], pair[1]);
            }
        }
        Ok(Some(Self {
            out_dim,
            in_dim,
            weights,
        }))
    }

    /// `x W^T` for `rows` rows of `x` (`rows × in_dim`, row-major), rounded to bf16.
    #[cfg(target_arch = "x86_64")]
    fn matmul(&self, x: &[bf16], rows: usize) -> Vec<bf16> {
        let plan = Plan {
            rows,
            pairs: self.out_dim / (2 * PANEL),
            steps: self.in_dim / 2,
            chunk: CHUNK_PAIRS,
        };
        let panel = |p: usize| &self.weights[p * plan.steps..][..plan.steps];
        plan.run(
            |pair, tile, range, sums| {
                let first = tile * ROWS;
                let live = (rows - first).min(ROWS);
                let x = &x[first * self.in_dim..][..live * self.in_dim];
                avx512::tile([panel(2 * pair), panel(2 * pair + 1)], x, range, sums);
            },
            avx512::narrow,
        )
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn matmul(&self, _: &[bf16], _: usize) -> Vec<bf16> {
        unreachable!("PackedBf16 is only built where the tile runs")
    }
}

/// Two bf16 values as `vdpbf16ps` takes them: the first in the low half.
fn word(first: bf16, second: bf16) -> u32 {
    u32::from(first.to_bits()) | u32::from(second.to_bits()) << 16
}

impl CustomOp1 for PackedBf16 {
    fn name(&self) -> &'static str {
        "packed-bf16-matmul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::BF16(x) = storage else {
            candle_core::bail!("{} takes bf16 activations", self.name())
        };
        let (rows, range) = activation_rows(self.name(), layout, self.in_dim)?;
        let y = self.matmul(&x[range], rows);
        Ok((CpuStorage::BF16(y), Shape::from((rows, self.out_dim))))
    }
}

#[cfg(test)]
mod tests {
    use super::super::panels::test_values;
    use super::*;
    use candle_core::Module;

    /// The kernels' test values, rounded to bf16.
    fn values(n: usize, seed: u64) -> Vec<bf16> {
        test_values(n, seed)
            .into_iter()
            .map(bf16::from_f32)
            .collect()
    }

    fn tensor(values: Vec<bf16>, rows: usize, cols: usize) -> Tensor {
        Tensor::from_vec(values, (rows, cols), &Device::Cpu).expect("tensor")
    }

    /// The exact products of the bf16 values summed in f64, and the sum of their magnitudes.
    fn reference(w: &[bf16], x: &[bf16], in_dim: usize) -> Vec<(f64, f64)> {
        x.chunks_exact(in_dim)
            .flat_map(|x| {
                w.chunks_exact(in_dim).map(move |w| {
                    w.iter().zip(x).fold((0.0, 0.0), |(sum, size), (w, x)| {
                        let p = f64::from(w.to_f32()) * f64::from(x.to_f32());
                        (sum + p, size + p.abs())
                    })
                })
            })
            .collect()
    }

    #[test]
    fn the_tile_computes_the_exact_products_rounded_once_to_bf16() {
        if !available() {
            eprintln!("no AVX-512 BF16 here: candle's matmul runs instead");
            return;
        }
        // 1 to 7 rows (each size of a last tile) and 13 (two full tiles and a partial one);
        // 3 panel pairs; 600 inputs: two full runs of pairs and a partial one.
        let (out_dim, in_dim) = (96, 600);
        let w = values(out_dim * in_dim, 7);
        let packed = PackedBf16::from_tensor(&tensor(w.clone(), out_dim, in_dim))
            .expect("pack")
            .expect("a shape the tile covers");
        for rows in (1..=7).chain([13]) {
            let x = values(rows * in_dim, 11 + rows as u64);
            let y = packed.matmul(&x, rows);
            assert_eq!(y.len(), rows * out_dim);
            for (i, (got, (want, size))) in y.iter().zip(reference(&w, &x, in_dim)).enumerate() {
                // f32 sums carry at most about in_dim roundings of 2^-24 of the running size;
                // the result is then one bf16 rounding (2^-9 relative) from its f32 value.
                let f32_error = size * in_dim as f64 * f64::from(f32::EPSILON);
                let allowed = want.abs() / 256.0 + f32_error;
                let got = f64::from(got.to_f32());
                assert!(
                    (got - want).abs() <= allowed,
                    "{rows} rows, output {i}: {got} against {want} (allowed {allowed})"
                );
            }
        }
    }

    #[test]
    fn the_layer_matches_candles_bf16_matmul() {
        let (rows, out_dim, in_dim) = (7, 64, 256);
        let w = tensor(values(out_dim * in_dim, 3), out_dim, in_dim);
        let x = tensor(values(rows * in_dim, 5), rows, in_dim);
        let Some(packed) = PackedBf16::from_tensor(&w).expect("pack") else {
            eprintln!("no AVX-512 BF16 here: candle's matmul runs instead");
            return;
        };
        let ours = x.apply_op1_no_bwd(&packed).expect("packed matmul");
        let candle = candle_nn::Linear::new(w, None).forward(&x).expect("candle");
        let (ours, candle) = (
            ours.to_dtype(DType::F32)
                .expect("f32")
                .flatten_all()
                .expect("flat"),
            candle
                .to_dtype(DType::F32)
                .expect("f32")
                .flatten_all()
                .expect("flat"),
        );
        let ours = ours.to_vec1::<f32>().expect("values");
        let candle = candle.to_vec1::<f32>().expect("values");
        for (i, (a, b)) in ours.iter().zip(&candle).enumerate() {
            // Both round an f32 sum to bf16: they differ by at most one bf16 step.
            assert!(
                (a - b).abs() <= b.abs() / 128.0 + 1e-6,
                "output {i}: {a} against {b}"
            );
        }
    }

    #[test]
    fn other_dtypes_and_shapes_stay_with_candle() {
        let w = tensor(values(48 * 64, 1), 48, 64);
        assert!(PackedBf16::pack(&w).expect("pack").is_none(), "48 rows");
        let w = tensor(values(64 * 63, 1), 64, 63);
        assert!(PackedBf16::pack(&w).expect("pack").is_none(), "odd inputs");
        let f32 = Tensor::zeros((64, 64), DType::F32, &Device::Cpu).expect("zeros");
        assert!(PackedBf16::pack(&f32).expect("pack").is_none(), "f32");
    }
}
