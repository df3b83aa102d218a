//! Dense linear layers (bf16 and f32 weights) on AVX-512. The weights are repacked once at load
//! time into panels of 16 output rows, one 64-byte line per step of the input: an input pair
//! in bf16 (one `vdpbf16ps` multiplies 2 inputs of 16 rows), one input in f32 (one FMA). The
//! activations, read in place, are broadcast a step at a time into a tile of 6 tokens × 32
//! outputs that accumulates in f32, over runs of 128 steps while every row tile passes over
//! them (the weights come from L1). bf16 results are rounded to bf16 once at the end, as
//! candle's own path rounds its f32 GEMM. Candle's CPU matmul widens bf16 matrices to f32 on
//! every call, weights included, and runs f32 on the `gemm` crate's AVX2 kernels. CPUs without
//! the features, other shapes, and `SHIELDGATE_KERNELS=candle` or `avx2` keep candle's.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Result, Shape, Storage, Tensor};
use half::bf16;
use rayon::prelude::*;

use super::panels::{activation_rows, Plan, PANEL, ROWS};
use super::Cap;

#[cfg(target_arch = "x86_64")]
mod avx512;

/// Steps the tiles run over before the next row tile: a panel pair's weights for them
/// (2 × 8 KiB) stay in L1 while every row tile passes over them.
const CHUNK_STEPS: usize = 128;

/// One panel's weights for one step: 16 rows × (2 bf16 or 1 f32), one multiply-add operand,
/// aligned so that no load splits a cache line.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
struct Line([u32; PANEL]);

/// The weights' precision, which the tile multiplies in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// Input pairs into `vdpbf16ps` (AVX-512 BF16).
    Bf16,
    /// One input per FMA.
    F32,
}

impl Precision {
    /// The tile's precision for weights of `dtype`; `None` for the dtypes it does not cover.
    pub fn of(dtype: DType) -> Option<Self> {
        match dtype {
            DType::BF16 => Some(Self::Bf16),
            DType::F32 => Some(Self::F32),
            _ => None,
        }
    }

    /// Inputs per 32-bit step.
    fn per_step(self) -> usize {
        match self {
            Self::Bf16 => 2,
            Self::F32 => 1,
        }
    }

    fn dtype(self) -> DType {
        match self {
            Self::Bf16 => DType::BF16,
            Self::F32 => DType::F32,
        }
    }
}

/// Whether the tile of `precision` runs here: the CPU has AVX-512 F (and BF16 for bf16) and
/// `SHIELDGATE_KERNELS` does not cap the kernels below AVX-512 (`candle`, `avx2`).
pub fn available(precision: Precision) -> bool {
    let capped = matches!(Cap::from_env(), Cap::Avx2 | Cap::Candle);
    #[cfg(target_arch = "x86_64")]
    {
        !capped && avx512::available(precision)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (capped, precision);
        false
    }
}

/// A bf16 or f32 matrix `[out, in]` repacked for the dense tile.
#[derive(Debug)]
pub struct PackedDense {
    precision: Precision,
    out_dim: usize,
    in_dim: usize,
    /// Per panel, per step `j`: each row's inputs of step `j` (for bf16, input `2j` in the low
    /// half and `2j + 1` in the high half).
    lines: Vec<Line>,
}

impl PackedDense {
    /// Packs a CPU bf16 or f32 matrix whose rows split into whole panel pairs (and, in bf16,
    /// whose inputs into pairs), when its tile runs here; `None` leaves it to candle.
    pub fn from_tensor(w: &Tensor) -> Result<Option<Self>> {
        match Precision::of(w.dtype()) {
            Some(precision) if available(precision) => Self::pack(w),
            _ => Ok(None),
        }
    }

    /// Packs `w`; `None` for other devices, dtypes and shapes.
    fn pack(w: &Tensor) -> Result<Option<Self>> {
        let Some(precision) = Precision::of(w.dtype()) else {
            return Ok(None);
        };
        let (out_dim, in_dim) = w.dims2()?;
        let per_step = precision.per_step();
        if !matches!(w.device(), Device::Cpu)
            || out_dim % (2 * PANEL) != 0
            || in_dim % per_step != 0
            || in_dim == 0
        {
            return Ok(None);
        }
        let steps = in_dim / per_step;
        let w = w.contiguous()?;
        let (storage, layout) = w.storage_and_layout();
        let lines = match (&*storage, layout.contiguous_offsets()) {
            (Storage::Cpu(CpuStorage::BF16(values)), Some((start, end))) => {
                panel_lines(&values[start..end], in_dim, steps, |row, j| {
                    word(row[2 * j], row[2 * j + 1])
                })
            }
            (Storage::Cpu(CpuStorage::F32(values)), Some((start, end))) => {
                panel_lines(&values[start..end], in_dim, steps, |row, j| {
                    row[j].to_bits()
                })
            }
            _ => return Ok(None),
        };
        Ok(Some(Self {
            precision,
            out_dim,
            in_dim,
            lines,
        }))
    }

    /// The activations' dtype: the weights'.
    pub fn dtype(&self) -> DType {
        self.precision.dtype()
    }

    /// `x W^T` for `rows` rows of `x` (`rows × in_dim`, row-major, in the weights' precision:
    /// `bf16` or `f32`), each output row written by `emit` from its f32 sums.
    #[cfg(target_arch = "x86_64")]
    fn matmul<T: Copy + Default + Send + Sync>(
        &self,
        x: &[T],
        rows: usize,
        emit: impl Fn(&[f32], &mut [T]) + Sync,
    ) -> Vec<T> {
        let plan = Plan {
            rows,
            pairs: self.out_dim / (2 * PANEL),
            steps: self.in_dim / self.precision.per_step(),
            chunk: CHUNK_STEPS,
        };
        let panel = |p: usize| &self.lines[p * plan.steps..][..plan.steps];
        plan.run(
            |pair, tile, range, sums| {
                let first = tile * ROWS;
                let live = (rows - first).min(ROWS);
                let x = &x[first * self.in_dim..][..live * self.in_dim];
                let panels = [panel(2 * pair), panel(2 * pair + 1)];
                avx512::tile(self.precision, panels, x, range, sums);
            },
            emit,
        )
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn matmul<T: Copy + Default + Send + Sync>(
        &self,
        _: &[T],
        _: usize,
        _: impl Fn(&[f32], &mut [T]) + Sync,
    ) -> Vec<T> {
        unreachable!("PackedDense is only built where the tile runs")
    }
}

/// The panels' lines of a row-major `[out, in]` matrix of `steps` steps per row, whose row
/// `r`'s step `j` is `word(row r, j)`: a panel at a time (one per task), its lines in order, its
/// 16 rows read side by side.
fn panel_lines<T: Sync>(
    values: &[T],
    in_dim: usize,
    steps: usize,
    word: impl Fn(&[T], usize) -> u32 + Sync,
) -> Vec<Line> {
    let panels = values.len() / (PANEL * in_dim);
    let mut lines = vec![Line([0; PANEL]); panels * steps];
    lines
        .par_chunks_mut(steps)
        .zip(values.par_chunks(PANEL * in_dim))
        .for_each(|(lines, rows)| {
            for (j, line) in lines.iter_mut().enumerate() {
                for (lane, out) in line.0.iter_mut().enumerate() {
                    *out = word(&rows[lane * in_dim..][..in_dim], j);
                }
            }
        });
    lines
}

/// Two bf16 values as `vdpbf16ps` takes them: the first in the low half.
fn word(first: bf16, second: bf16) -> u32 {
    u32::from(first.to_bits()) | u32::from(second.to_bits()) << 16
}

impl CustomOp1 for PackedDense {
    fn name(&self) -> &'static str {
        "packed-dense-matmul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (rows, range) = activation_rows(self.name(), layout, self.in_dim)?;
        let y = match (storage, self.precision) {
            #[cfg(target_arch = "x86_64")]
            (CpuStorage::BF16(x), Precision::Bf16) => {
                CpuStorage::BF16(self.matmul(&x[range], rows, avx512::narrow))
            }
            (CpuStorage::F32(x), Precision::F32) => {
                CpuStorage::F32(self.matmul(&x[range], rows, |src, dst| dst.copy_from_slice(src)))
            }
            (other, precision) => candle_core::bail!(
                "{} takes {precision:?} activations, not {:?}",
                self.name(),
                other.dtype()
            ),
        };
        Ok((y, Shape::from((rows, self.out_dim))))
    }
}

#[cfg(test)]
mod tests {
    use super::super::panels::test_values;
    use super::*;
    use candle_core::Module;

    /// The kernels' test values as a `[rows, cols]` tensor of `dtype`.
    fn tensor(rows: usize, cols: usize, dtype: DType, seed: u64) -> Tensor {
        Tensor::from_vec(test_values(rows * cols, seed), (rows, cols), &Device::Cpu)
            .and_then(|t| t.to_dtype(dtype))
            .expect("tensor")
    }

    fn to_f64(t: &Tensor) -> Vec<f64> {
        t.to_dtype(DType::F64)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f64>())
            .expect("values")
    }

    /// The exact products summed in f64, and the sum of their magnitudes.
    fn reference(w: &[f64], x: &[f64], in_dim: usize) -> Vec<(f64, f64)> {
        x.chunks_exact(in_dim)
            .flat_map(|x| {
                w.chunks_exact(in_dim).map(move |w| {
                    w.iter().zip(x).fold((0.0, 0.0), |(sum, size), (w, x)| {
                        (sum + w * x, size + (w * x).abs())
                    })
                })
            })
            .collect()
    }

    #[test]
    fn the_tile_computes_the_exact_products_in_f32_rounded_once_to_the_weights_precision() {
        for precision in [Precision::Bf16, Precision::F32] {
            if !available(precision) {
                eprintln!("no {precision:?} tile here: candle's matmul runs instead");
                continue;
            }
            // 1 to 7 rows (each size of a last tile) and 13 (two full tiles and a partial
            // one); 3 panel pairs; 600 inputs: in both precisions runs of 128 steps and a
            // partial one.
            let (out_dim, in_dim) = (96, 600);
            let w = tensor(out_dim, in_dim, precision.dtype(), 7);
            let packed = PackedDense::from_tensor(&w)
                .expect("pack")
                .expect("a shape the tile covers");
            for rows in (1..=7).chain([13]) {
                let x = tensor(rows, in_dim, precision.dtype(), 11 + rows as u64);
                let y = x.apply_op1_no_bwd(&packed).expect("packed matmul");
                assert_eq!(y.dims(), [rows, out_dim]);
                let want = reference(&to_f64(&w), &to_f64(&x), in_dim);
                for (i, (got, (want, size))) in to_f64(&y).into_iter().zip(want).enumerate() {
                    // f32 sums carry at most about in_dim roundings of 2^-24 of the running
                    // size; a bf16 result is then one rounding (2^-9 relative) from it.
                    let f32_error = size * in_dim as f64 * f64::from(f32::EPSILON);
                    let rounding = match precision {
                        Precision::Bf16 => want.abs() / 256.0,
                        Precision::F32 => 0.0,
                    };
                    let allowed = rounding + f32_error;
                    assert!(
                        (got - want).abs() <= allowed,
                        "{precision:?}, {rows} rows, output {i}: {got} against {want} \
                         (allowed {allowed})"
                    );
                }
            }
        }
    }

    #[test]
    fn the_layer_matches_candles_matmul() {
        for (dtype, relative) in [(DType::BF16, 1.0 / 128.0), (DType::F32, 1e-5)] {
            let (rows, out_dim, in_dim) = (7, 64, 256);
            let w = tensor(out_dim, in_dim, dtype, 3);
            let x = tensor(rows, in_dim, dtype, 5);
            let Some(packed) = PackedDense::from_tensor(&w).expect("pack") else {
                eprintln!("no {dtype:?} tile here: candle's matmul runs instead");
                continue;
            };
            let ours = to_f64(&x.apply_op1_no_bwd(&packed).expect("packed matmul"));
            let candle = to_f64(&candle_nn::Linear::new(w, None).forward(&x).expect("candle"));
            for (i, (a, b)) in ours.iter().zip(&candle).enumerate() {
                // Both sum in f32 (in another order) and round once to the dtype.
                assert!(
                    (a - b).abs() <= b.abs() * relative + 1e-5,
                    "{dtype:?} output {i}: {a} against {b}"
                );
            }
        }
    }

    #[test]
    fn other_dtypes_and_shapes_stay_with_candle() {
        for dtype in [DType::BF16, DType::F32] {
            let w = tensor(48, 64, dtype, 1);
            assert!(PackedDense::pack(&w).expect("pack").is_none(), "48 rows");
        }
        let w = tensor(64, 63, DType::BF16, 1);
        assert!(
            PackedDense::pack(&w).expect("pack").is_none(),
            "odd inputs in bf16"
        );
        let w = tensor(64, 63, DType::F32, 1);
        assert!(
            PackedDense::pack(&w).expect("pack").is_some(),
            "odd inputs in f32"
        );
        let w = tensor(64, 64, DType::F16, 1);
        assert!(PackedDense::pack(&w).expect("pack").is_none(), "f16");
    }

    #[test]
    fn activations_of_another_dtype_are_refused() {
        let w = tensor(32, 64, DType::F32, 1);
        let Some(packed) = PackedDense::from_tensor(&w).expect("pack") else {
            return;
        };
        let x = tensor(2, 64, DType::BF16, 2);
        let err = x
            .apply_op1_no_bwd(&packed)
            .expect_err("bf16 into an f32 layer");
        assert!(err.to_string().contains("takes F32 activations"), "{err}");
    }
}
