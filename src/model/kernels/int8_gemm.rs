//! Quantized linear layers as an int8 GEMM. The weights are repacked once at load time into
//! panels of 16 output rows so that one `vpdpbusd` multiplies 4 inputs of 16 rows at once; the
//! activations are quantized per 32-wide block (like Q8_0; for Q4_K with one scale per 256
//! inputs, like llama.cpp's Q8_K, so that a super-block's sub-block sums add as integers) and a
//! tile of 6 tokens × 32 outputs runs over the input dimension. Q8_0 keeps its 8-bit values, Q4_K and Q4_0
//! their 4-bit values with their own scales (`int8_gemm/nibbles.rs`), and Q6_K is requantized to
//! Q8_0 (its 6-bit values with a scale per 16 inputs fit no 32-wide block; the added rounding is
//! at most about an eighth of a Q6_K step). The packed matrix replaces the file's copy (candle's
//! own VNNI path keeps both). Three kernels read the panels, the fastest the CPU runs chosen at
//! load ([`quantized_kernel`]): bf16 tiles on AMX for inputs of `AMX_MIN_ROWS` tokens or more
//! (`int8_gemm/amx.rs`, with the VNNI tile for fewer), the AVX-512 VNNI tile
//! (`int8_gemm/avx512.rs`), and the AVX2 tile (`int8_gemm/avx2.rs`), which does `vpdpbusd`'s
//! work in three instructions. `SHIELDGATE_KERNELS=vnni` or `avx2` caps the choice; CPUs with
//! none of them, other shapes and types, and `SHIELDGATE_KERNELS=candle` keep candle's quantized
//! matmul.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{CpuStorage, CustomOp1, Device, Layout, Result, Shape};

use super::panels::{activation_rows, Plan, Sums, PANEL, ROWS};
use super::Cap;
use crate::model::profile::{self, Phase};

mod activations;
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod amx;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod nibbles;
mod q8_0;

use activations::{Activations, Encoding};
use nibbles::NibblePanels;
use q8_0::Q8_0Panels;

/// Inputs per quantization block (Q8_0's block, Q4_K's sub-block).
const BLOCK: usize = 32;
/// Blocks of 32 inputs the VNNI tiles run over before the next row tile: a panel pair's weights
/// for them (16 KiB of Q8_0) stay in L1 while every row tile passes over them, instead of
/// coming from L2 for each (twice the rate on a Xeon: docs/benchmarks.md#roofline).
const CHUNK_BLOCKS: usize = 16;
/// Fewest tokens that take the AMX path: below it, widening every weight to bf16 costs
/// more than the VNNI tile's per-block work.
const AMX_MIN_ROWS: usize = 32;

/// 64 packed weight bytes, one `vpdpbusd` operand, aligned so that no load splits a cache line.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// A quantized matrix `[out, in]` repacked for the VNNI kernel.
#[derive(Debug)]
pub struct PackedInt8 {
    out_dim: usize,
    in_dim: usize,
    panels: Panels,
    kernel: Kernel,
}

#[derive(Debug)]
enum Panels {
    Q8_0(Q8_0Panels),
    Nibbles(NibblePanels),
}

/// The kernel a packed matrix runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kernel {
    /// The VNNI tile, and bf16 tiles (`int8_gemm/amx.rs`) for inputs of `AMX_MIN_ROWS` or more.
    Amx,
    /// The AVX-512 VNNI tile.
    Vnni,
    /// The AVX2 tile.
    Avx2,
}

impl Kernel {
    /// The fastest kernel this CPU runs, unless `SHIELDGATE_KERNELS` names a slower one
    /// (`vnni`, `avx2`, or `candle` for none).
    fn chosen() -> Option<Self> {
        let cap = Cap::from_env();
        let allowed = |k: Self| match cap {
            Cap::Candle => false,
            Cap::Vnni => k != Self::Amx,
            Cap::Avx2 => k == Self::Avx2,
            Cap::None => true,
        };
        [Self::Amx, Self::Vnni, Self::Avx2]
            .into_iter()
            .find(|&k| k.runs_here() && allowed(k))
    }

    /// Whether this CPU (and OS) runs the kernel.
    fn runs_here(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        match self {
            Self::Amx => {
                #[cfg(target_os = "linux")]
                {
                    amx::available()
                }
                #[cfg(not(target_os = "linux"))]
                {
                    false
                }
            }
            Self::Vnni => avx512::available(),
            Self::Avx2 => avx2::available(),
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = self;
            false
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Amx => "amx",
            Self::Vnni => "vnni",
            Self::Avx2 => "avx2",
        }
    }
}

/// Which kernel runs prefill-sized quantized matmuls here: `"amx"` (bf16 tiles), `"vnni"` (the
/// AVX-512 int8 tile), `"avx2"` (the AVX2 int8 tile) or `"candle"` (candle's quantized
/// matmul), by CPU and `SHIELDGATE_KERNELS`.
pub fn quantized_kernel() -> &'static str {
    Kernel::chosen().map_or("candle", Kernel::name)
}

impl PackedInt8 {
    /// Packs a CPU Q8_0, Q4_K, Q4_0 or Q6_K matrix whose rows split into whole panel pairs, when
    /// a kernel can run here; `None` leaves the matrix to candle.
    pub fn from_qtensor(q: &QTensor) -> Result<Option<Self>> {
        match Kernel::chosen() {
            Some(kernel) => Self::pack(q, kernel),
            None => Ok(None),
        }
    }

    /// Packs `q` for `kernel`, which must run here; `None` for other devices, types and shapes.
    fn pack(q: &QTensor, kernel: Kernel) -> Result<Option<Self>> {
        if !matches!(q.device(), Device::Cpu) {
            return Ok(None);
        }
        let (out_dim, in_dim) = q.shape().dims2()?;
        if out_dim % (2 * PANEL) != 0 || in_dim % BLOCK != 0 {
            return Ok(None);
        }
        let panels = match q.dtype() {
            GgmlDType::Q8_0 => Panels::Q8_0(Q8_0Panels::pack(&q.data()?, out_dim, in_dim)?),
            GgmlDType::Q4K => {
                Panels::Nibbles(NibblePanels::from_q4_k(&q.data()?, out_dim, in_dim)?)
            }
            GgmlDType::Q4_0 => {
                Panels::Nibbles(NibblePanels::from_q4_0(&q.data()?, out_dim, in_dim)?)
            }
            GgmlDType::Q6K => {
                let dense = q.dequantize(&Device::Cpu)?;
                let q8 = QTensor::quantize(&dense, GgmlDType::Q8_0)?;
                Panels::Q8_0(Q8_0Panels::pack(&q8.data()?, out_dim, in_dim)?)
            }
            _ => return Ok(None),
        };
        Ok(Some(Self {
            out_dim,
            in_dim,
            panels,
            kernel,
        }))
    }

    /// How this matrix's tile takes its activations.
    fn encoding(&self) -> Encoding {
        match (&self.panels, self.kernel) {
            (Panels::Q8_0(_), Kernel::Amx | Kernel::Vnni) => Encoding::Shifted,
            (Panels::Nibbles(p), _) if p.is_q4_k() => Encoding::SignedPer256,
            _ => Encoding::Signed,
        }
    }

    /// `x W^T` for `rows` rows of `x` (`rows × in_dim`, row-major).
    fn matmul(&self, x: &[f32], rows: usize) -> Vec<f32> {
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        if self.kernel == Kernel::Amx && rows >= AMX_MIN_ROWS {
            return amx::matmul(&self.panels, self.out_dim, self.in_dim, x, rows);
        }
        let plan = Plan {
            rows,
            pairs: self.out_dim / (2 * PANEL),
            steps: self.in_dim / BLOCK,
            chunk: match self.kernel {
                Kernel::Amx | Kernel::Vnni => CHUNK_BLOCKS,
                Kernel::Avx2 => self.in_dim / BLOCK,
            },
        };
        let acts = profile::timed(Phase::Quantize, || {
            Activations::quantize(x, rows, plan.tiles() * ROWS, self.in_dim, self.encoding())
        });
        plan.run(
            |pair, tile, range, sums| {
                let live = (rows - tile * ROWS).min(ROWS);
                self.tile(pair, &acts, tile * ROWS, live, range, sums);
            },
            |src, dst| dst.copy_from_slice(src),
        )
    }

    /// Adds the sums of `ROWS` rows from `row` × the 32 outputs of panel pair `pair` over the
    /// blocks `range` to `sums`; `live` rows are real (the AVX2 tile computes only those; the
    /// VNNI tile all `ROWS`). The AVX2 tile takes whole rows: `range` all blocks, `sums` zero.
    fn tile(
        &self,
        pair: usize,
        acts: &Activations,
        row: usize,
        live: usize,
        range: std::ops::Range<usize>,
        sums: &mut Sums,
    ) {
        #[cfg(target_arch = "x86_64")]
        match (&self.panels, self.kernel) {
            (Panels::Q8_0(p), Kernel::Amx | Kernel::Vnni) => avx512::tile_q8_0(
                &p.panel(2 * pair),
                &p.panel(2 * pair + 1),
                acts,
                row,
                range,
                sums,
            ),
            (Panels::Nibbles(p), Kernel::Amx | Kernel::Vnni) => avx512::tile_nibbles(
                &p.panel(2 * pair),
                &p.panel(2 * pair + 1),
                acts,
                row,
                range,
                sums,
            ),
            (_, Kernel::Avx2) if range.len() != self.in_dim / BLOCK => {
                unreachable!("the AVX2 tile takes whole rows")
            }
            (Panels::Q8_0(p), Kernel::Avx2) => avx2::tile(
                [&p.panel(2 * pair), &p.panel(2 * pair + 1)],
                acts,
                row,
                live,
                sums,
            ),
            (Panels::Nibbles(p), Kernel::Avx2) => avx2::tile(
                [&p.panel(2 * pair), &p.panel(2 * pair + 1)],
                acts,
                row,
                live,
                sums,
            ),
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (pair, acts, row, live, range, sums);
            unreachable!("PackedInt8 is only built where a kernel runs")
        }
    }
}

impl CustomOp1 for PackedInt8 {
    fn name(&self) -> &'static str {
        "packed-quantized-matmul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(x) = storage else {
            candle_core::bail!("{} takes f32 activations", self.name())
        };
        let (rows, range) = activation_rows(self.name(), layout, self.in_dim)?;
        let y = self.matmul(&x[range], rows);
        Ok((CpuStorage::F32(y), Shape::from((rows, self.out_dim))))
    }
}

#[cfg(test)]
mod tests {
    use super::super::panels::test_values as values;
    use super::q8_0::{q8_0_block, Q8_0_BYTES};
    use super::*;
    use candle_core::quantized::QMatMul;
    use candle_core::{Module, Tensor};
    use half::f16;

    fn matrix(dtype: GgmlDType, out_dim: usize, in_dim: usize) -> QTensor {
        let w = Tensor::from_vec(values(out_dim * in_dim, 7), (out_dim, in_dim), &Device::Cpu)
            .expect("tensor");
        QTensor::quantize(&w, dtype).expect("quantize")
    }

    /// The kernel's arithmetic in plain integers, from candle's own blocks: per 32-wide block
    /// the integer dot product of the stored values and the quantized activations, times the
    /// block's weight scale and activation scale, less the block's min term (4-bit types).
    fn reference(q: &QTensor, x: &[f32], rows: usize, encoding: Encoding) -> Vec<f32> {
        let (out_dim, in_dim) = q.shape().dims2().expect("2d");
        let raw = q.data().expect("data");
        let blocks = in_dim / BLOCK;
        let acts = Activations::quantize(x, rows, rows, in_dim, encoding);
        let supers = in_dim / nibbles::SUPER;
        let super_bytes = raw.len() / (out_dim * supers.max(1));
        let mut y = vec![0f32; rows * out_dim];
        for r in 0..rows {
            for n in 0..out_dim {
                let mut total = 0f32;
                for b in 0..blocks {
                    let x_at = |k: usize| acts.value(r, b * BLOCK + k, encoding);
                    let (scale, min, dot) = match q.dtype() {
                        GgmlDType::Q8_0 => {
                            let at = (n * blocks + b) * Q8_0_BYTES;
                            let (d, qs) = q8_0_block(&raw[at..][..Q8_0_BYTES]);
                            let dot: i32 =
                                qs.enumerate().map(|(k, w)| i32::from(w) * x_at(k)).sum();
                            (d, 0.0, dot)
                        }
                        GgmlDType::Q4_0 => {
                            let bytes = &raw[(n * blocks + b) * nibbles::Q4_0_BYTES..];
                            let d = f16::from_le_bytes([bytes[0], bytes[1]]).to_f32();
                            let dot: i32 = (0..BLOCK)
                                .map(|k| i32::from(nibbles::q4_0_nibble(&bytes[2..], k)) * x_at(k))
                                .sum();
                            (d, 8.0 * d, dot)
                        }
                        _ => {
                            let (s, j) = (b / 8, b % 8);
                            let at = (n * supers + s) * super_bytes;
                            let (d, dmin, packed, qs) =
                                nibbles::q4_k_super_block(&raw[at..][..super_bytes]);
                            let (sc, m) = nibbles::scale_and_min(j, packed);
                            let dot: i32 = (0..BLOCK)
                                .map(|k| {
                                    i32::from(nibbles::q4_k_nibble(qs, j * BLOCK + k)) * x_at(k)
                                })
                                .sum();
                            (d * f32::from(sc), dmin * f32::from(m), dot)
                        }
                    };
                    let x_scale = acts.scales[r * blocks + b];
                    let x_sum = x_scale * f32::from(acts.totals[r * blocks + b]);
                    total += dot as f32 * scale * x_scale - min * x_sum;
                }
                y[r * out_dim + n] = total;
            }
        }
        y
    }

    fn max_difference(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max)
    }

    /// The int8 tiles this CPU runs (the VNNI tile also where AMX runs).
    fn tiles_here() -> Vec<Kernel> {
        let tiles: Vec<Kernel> = [Kernel::Vnni, Kernel::Avx2]
            .into_iter()
            .filter(|k| k.runs_here())
            .collect();
        if tiles.is_empty() {
            eprintln!("neither AVX-512 VNNI nor AVX2 here: candle's kernel runs instead");
        }
        tiles
    }

    /// `q` packed for `kernel`.
    fn packed(q: &QTensor, kernel: Kernel) -> PackedInt8 {
        PackedInt8::pack(q, kernel)
            .expect("pack")
            .expect("a shape and type the kernels cover")
    }

    /// These tests run in a binary built with the project's portable flags
    /// (`.cargo/config.toml`: x86-64-v3), and the kernels still find AVX-512 and VNNI at run
    /// time where the CPU has them.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn a_portable_build_still_picks_the_cpus_best_kernel() {
        let portable = cfg!(target_feature = "avx2") && !cfg!(target_feature = "avx512f");
        assert!(
            portable,
            "the kernel tests must run with the portable flags of .cargo/config.toml; \
             unset RUSTFLAGS (a native build hides missing run-time dispatch)"
        );
        if std::env::var_os("SHIELDGATE_KERNELS").is_some() {
            return;
        }
        let vnni = std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vnni");
        let expected: &[&str] = if vnni {
            &["amx", "vnni"]
        } else if std::arch::is_x86_feature_detected!("avx2") {
            &["avx2"]
        } else {
            &["candle"]
        };
        assert!(
            expected.contains(&quantized_kernel()),
            "{} chosen, expected one of {expected:?}",
            quantized_kernel()
        );
    }
    #[test]
    fn the_tiles_compute_the_integer_reference_for_odd_row_counts() {
        for (kernel, (dtype, in_dim)) in tiles_here().into_iter().flat_map(|k| {
            // Several runs of CHUNK_BLOCKS blocks and a partial one.
            [
                (GgmlDType::Q8_0, 1056),
                (GgmlDType::Q4K, 1280),
                (GgmlDType::Q4_0, 1056),
            ]
            .map(|case| (k, case))
        }) {
            let q = matrix(dtype, 64, in_dim);
            let packed = packed(&q, kernel);
            for rows in [1, 5, 6, 7, 13] {
                let x = values(rows * in_dim, rows as u64);
                let got = packed.matmul(&x, rows);
                let want = reference(&q, &x, rows, packed.encoding());
                let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
                assert!(
                    max_difference(&got, &want) <= 1e-5 * scale,
                    "{kernel:?} {dtype:?}, rows {rows}: {}",
                    max_difference(&got, &want)
                );
            }
        }
    }

    /// The AMX path's arithmetic: candle's dequantized weights and the activations rounded to
    /// bf16, their products summed exactly (in f64).
    fn bf16_reference(q: &QTensor, x: &[f32], rows: usize) -> Vec<f32> {
        let (out_dim, in_dim) = q.shape().dims2().expect("2d");
        let w: Vec<f32> = q
            .dequantize(&Device::Cpu)
            .and_then(|w| w.flatten_all())
            .and_then(|w| w.to_vec1())
            .expect("dequantize");
        let round = |v: f32| f64::from(half::bf16::from_f32(v).to_f32());
        let mut y = vec![0f32; rows * out_dim];
        for r in 0..rows {
            for n in 0..out_dim {
                let dot: f64 = (0..in_dim)
                    .map(|k| round(x[r * in_dim + k]) * round(w[n * in_dim + k]))
                    .sum();
                y[r * out_dim + n] = dot as f32;
            }
        }
        y
    }

    #[test]
    fn the_amx_path_computes_the_bf16_reference() {
        for (dtype, in_dim) in [
            (GgmlDType::Q8_0, 96),
            (GgmlDType::Q4K, 512),
            (GgmlDType::Q4_0, 96),
            (GgmlDType::Q6K, 256),
        ] {
            if !Kernel::Amx.runs_here() {
                eprintln!("no AMX here");
                return;
            }
            let q = matrix(dtype, 64, in_dim);
            let packed = packed(&q, Kernel::Amx);
            // Q6_K is packed as its Q8_0 requantization.
            let stored = if dtype == GgmlDType::Q6K {
                let dense = q.dequantize(&Device::Cpu).expect("dequantize");
                QTensor::quantize(&dense, GgmlDType::Q8_0).expect("requantize")
            } else {
                q
            };
            for rows in [AMX_MIN_ROWS, 45, 64] {
                let x = values(rows * in_dim, rows as u64);
                let got = packed.matmul(&x, rows);
                let want = bf16_reference(&stored, &x, rows);
                let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
                assert!(
                    max_difference(&got, &want) <= 1e-5 * scale,
                    "{dtype:?}, rows {rows}: {} of {scale}",
                    max_difference(&got, &want)
                );
            }
        }
    }

    #[test]
    fn each_layer_is_as_close_to_the_exact_product_as_candles_quantized_matmul() {
        for (kernel, dtype) in tiles_here().into_iter().flat_map(|k| {
            [
                GgmlDType::Q8_0,
                GgmlDType::Q4K,
                GgmlDType::Q4_0,
                GgmlDType::Q6K,
            ]
            .map(|dtype| (k, dtype))
        }) {
            let q = matrix(dtype, 96, 512);
            let packed = packed(&q, kernel);
            let x = Tensor::from_vec(values(9 * 512, 3), (9, 512), &Device::Cpu).expect("x");
            let flat =
                |t: Tensor| -> Vec<f32> { t.flatten_all().and_then(|t| t.to_vec1()).expect("vec") };
            let w = q.dequantize(&Device::Cpu).expect("dequantize");
            let exact = flat(x.matmul(&w.t().expect("transpose")).expect("matmul"));
            let ours = flat(x.apply_op1_no_bwd(&packed).expect("vnni"));
            let candle = flat(
                QMatMul::from_qtensor(q)
                    .expect("qmatmul")
                    .forward(&x)
                    .expect("candle"),
            );
            assert_eq!(ours.len(), exact.len());
            // Both quantize the activations (candle per 32 with f16 scales for Q8_0, per 256
            // for the K types; Q6_K is also requantized here); the outliers in `values` make
            // that error visible, and it must not be larger here.
            let (ours, candle) = (
                max_difference(&ours, &exact),
                max_difference(&candle, &exact),
            );
            assert!(
                ours > 0.0 && ours <= 1.1 * candle,
                "{kernel:?} {dtype:?}: ours {ours}, candle {candle}"
            );
        }
    }

    #[test]
    fn shapes_and_types_the_kernel_does_not_cover_stay_with_candle() {
        assert!(PackedInt8::from_qtensor(&matrix(GgmlDType::Q8_0, 48, 64))
            .expect("pack")
            .is_none());
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q5K, GgmlDType::F16] {
            assert!(PackedInt8::from_qtensor(&matrix(dtype, 64, 256))
                .expect("pack")
                .is_none());
        }
    }
}
