//! Q8_0 linear layers as an int8 GEMM on AVX-512 VNNI. candle multiplies Q8_0 weights with
//! activations one dot product at a time; here the weights are repacked once at load time into
//! panels of 16 output rows so that one `vpdpbusd` multiplies 4 inputs of 16 rows at once, the
//! activations are quantized per 32-wide block (like Q8_0) and a tile of 6 tokens × 32 outputs
//! stays in registers for the whole input dimension. Machines without AVX-512 VNNI, other
//! shapes and `SHIELDGATE_KERNELS=candle` keep candle's quantized matmul.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{CpuStorage, CustomOp1, Device, Layout, Result, Shape};
use half::f16;
use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
mod avx512;

/// Inputs per quantization block (Q8_0's block).
const BLOCK: usize = 32;
/// Output rows per packed panel: one 512-bit register of i32 sums.
const PANEL: usize = 16;
/// Bytes per Q8_0 block in candle's storage: an f16 scale and 32 signed bytes.
const Q8_0_BYTES: usize = 2 + BLOCK;
/// Tokens per register tile; the kernel holds ROWS × 2 panels of sums and of results.
const ROWS: usize = 6;

/// A Q8_0 matrix `[out, in]` repacked for the VNNI kernel.
#[derive(Debug)]
pub struct PackedQ8 {
    out_dim: usize,
    in_dim: usize,
    /// Per panel, per block: 8 groups of 4 inputs, each `[16 rows × 4 bytes]` (one line).
    weights: Vec<Line>,
    /// Per panel, per block: each row's Q8_0 scale.
    scales: Vec<f32>,
    /// Per panel, per block: 128 × the sum of each row's 32 weights. Activations enter
    /// `vpdpbusd` as unsigned bytes (`q + 128`); subtracting this undoes the shift.
    offsets: Vec<i32>,
}

/// 64 packed weight bytes, one `vpdpbusd` operand, aligned so that no load splits a cache line.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
struct Line([i8; 64]);

/// Lines of packed weights per block of one panel.
const LINES_PER_BLOCK: usize = BLOCK * PANEL / 64;

/// Whether the VNNI kernel can run here (and has not been switched off).
fn kernel_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        avx512::available() && std::env::var("SHIELDGATE_KERNELS").as_deref() != Ok("candle")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

impl PackedQ8 {
    /// Packs a CPU Q8_0 matrix whose rows split into whole panel pairs and blocks, when the
    /// kernel can run here; `None` leaves the matrix to candle.
    pub fn from_qtensor(q: &QTensor) -> Result<Option<Self>> {
        if q.dtype() != GgmlDType::Q8_0 || !matches!(q.device(), Device::Cpu) {
            return Ok(None);
        }
        let (out_dim, in_dim) = q.shape().dims2()?;
        if out_dim % (2 * PANEL) != 0 || in_dim % BLOCK != 0 || !kernel_available() {
            return Ok(None);
        }
        Self::pack(&q.data()?, out_dim, in_dim).map(Some)
    }

    /// Repacks candle's row-major Q8_0 blocks (`out_dim` rows of `in_dim / 32` blocks).
    fn pack(raw: &[u8], out_dim: usize, in_dim: usize) -> Result<Self> {
        let blocks = in_dim / BLOCK;
        check_q8_0_len(raw, out_dim, in_dim)?;
        let mut weights = vec![Line([0; 64]); out_dim * in_dim / 64];
        let mut scales = vec![0f32; out_dim * blocks];
        let mut offsets = vec![0i32; out_dim * blocks];
        for (row, row_blocks) in raw.chunks_exact(blocks * Q8_0_BYTES).enumerate() {
            let (panel, lane) = (row / PANEL, row % PANEL);
            for (b, block) in row_blocks.chunks_exact(Q8_0_BYTES).enumerate() {
                let meta = (panel * blocks + b) * PANEL + lane;
                let (scale, qs) = q8_0_block(block);
                scales[meta] = scale;
                offsets[meta] = 128 * qs.clone().map(i32::from).sum::<i32>();
                let base = (panel * blocks + b) * BLOCK * PANEL + lane * 4;
                for (k, v) in qs.enumerate() {
                    let at = base + (k / 4) * PANEL * 4 + k % 4;
                    weights[at / 64].0[at % 64] = v;
                }
            }
        }
        Ok(Self {
            out_dim,
            in_dim,
            weights,
            scales,
            offsets,
        })
    }

    /// `x W^T` for `rows` rows of `x` (`rows × in_dim`, row-major).
    fn matmul(&self, x: &[f32], rows: usize) -> Vec<f32> {
        let blocks = self.in_dim / BLOCK;
        let tiles = rows.div_ceil(ROWS);
        let acts = Activations::quantize(x, rows, tiles * ROWS, self.in_dim);
        let pairs = self.out_dim / (2 * PANEL);
        // Each task takes a run of panel pairs over all rows: a pair's weights stay in L2
        // while every row tile passes over them.
        let per_task = pairs.div_ceil(4 * rayon::current_num_threads()).max(1);
        let columns: Vec<(usize, Vec<f32>)> = (0..pairs)
            .step_by(per_task)
            .collect::<Vec<_>>()
            .into_par_iter()
            .map(|first| {
                let last = (first + per_task).min(pairs);
                let width = (last - first) * 2 * PANEL;
                let mut out = vec![0f32; tiles * ROWS * width];
                for pair in first..last {
                    let panel = |p: usize| Panel {
                        weights: &self.weights[p * blocks * LINES_PER_BLOCK..]
                            [..blocks * LINES_PER_BLOCK],
                        scales: &self.scales[p * blocks * PANEL..][..blocks * PANEL],
                        offsets: &self.offsets[p * blocks * PANEL..][..blocks * PANEL],
                    };
                    let (left, right) = (panel(2 * pair), panel(2 * pair + 1));
                    for tile in 0..tiles {
                        let mut sums = [[0f32; 2 * PANEL]; ROWS];
                        tile_kernel(&left, &right, &acts, tile * ROWS, &mut sums);
                        for (r, sum) in sums.iter().enumerate() {
                            let at = (tile * ROWS + r) * width + (pair - first) * 2 * PANEL;
                            out[at..at + 2 * PANEL].copy_from_slice(sum);
                        }
                    }
                }
                (first * 2 * PANEL, out)
            })
            .collect();
        let mut y = vec![0f32; rows * self.out_dim];
        for (start, out) in &columns {
            let width = out.len() / (tiles * ROWS);
            for (row, dst) in y.chunks_exact_mut(self.out_dim).enumerate() {
                dst[*start..start + width].copy_from_slice(&out[row * width..][..width]);
            }
        }
        y
    }
}

/// A Q8_0 block's scale and its 32 signed values.
fn q8_0_block(block: &[u8]) -> (f32, impl Iterator<Item = i8> + Clone + '_) {
    let scale = f16::from_le_bytes([block[0], block[1]]).to_f32();
    (scale, block[2..].iter().map(|&v| v as i8))
}

/// Checks that `raw` holds `rows` whole Q8_0 rows of `cols` columns.
fn check_q8_0_len(raw: &[u8], rows: usize, cols: usize) -> Result<()> {
    let want = rows * cols / BLOCK * Q8_0_BYTES;
    if !cols.is_multiple_of(BLOCK) || raw.len() != want {
        candle_core::bail!(
            "Q8_0 matrix [{rows}, {cols}] holds {} bytes, expected {want}",
            raw.len()
        )
    }
    Ok(())
}

/// The rows `ids` of a row-major Q8_0 matrix of `rows × cols`, decoded to f32.
pub(super) fn q8_0_rows(
    raw: &[u8],
    rows: usize,
    cols: usize,
    ids: impl ExactSizeIterator<Item = usize>,
) -> Result<Vec<f32>> {
    check_q8_0_len(raw, rows, cols)?;
    let row_bytes = cols / BLOCK * Q8_0_BYTES;
    let mut out = Vec::with_capacity(ids.len() * cols);
    for id in ids {
        if id >= rows {
            candle_core::bail!("row {id} is outside the Q8_0 matrix of {rows} rows")
        }
        for block in raw[id * row_bytes..][..row_bytes].chunks_exact(Q8_0_BYTES) {
            let (scale, qs) = q8_0_block(block);
            out.extend(qs.map(|q| f32::from(q) * scale));
        }
    }
    Ok(out)
}

/// One panel of 16 output rows: its packed weights, scales and offsets for every block.
struct Panel<'a> {
    weights: &'a [Line],
    scales: &'a [f32],
    offsets: &'a [i32],
}

/// Activations quantized per 32-wide block of each row: `q = round(x / d)` in [-127, 127]
/// with `d = max |x| / 127`, stored as `q + 128`. Rows past the real ones are zero.
struct Activations {
    bytes: Vec<u8>,
    scales: Vec<f32>,
    in_dim: usize,
}

impl Activations {
    fn quantize(x: &[f32], rows: usize, padded_rows: usize, in_dim: usize) -> Self {
        let blocks = in_dim / BLOCK;
        let mut bytes = vec![128u8; padded_rows * in_dim];
        let mut scales = vec![0f32; padded_rows * blocks];
        bytes[..rows * in_dim]
            .par_chunks_mut(in_dim)
            .zip(scales[..rows * blocks].par_chunks_mut(blocks))
            .zip(x.par_chunks(in_dim))
            .for_each(|((bytes, scales), x)| {
                for ((q, d), x) in bytes
                    .chunks_exact_mut(BLOCK)
                    .zip(scales.iter_mut())
                    .zip(x.chunks_exact(BLOCK))
                {
                    let max = x.iter().fold(0f32, |m, v| m.max(v.abs()));
                    *d = max / 127.0;
                    let inv = if max > 0.0 { 127.0 / max } else { 0.0 };
                    for (q, &v) in q.iter_mut().zip(x) {
                        *q = ((v * inv).round() as i32 + 128) as u8;
                    }
                }
            });
        Self {
            bytes,
            scales,
            in_dim,
        }
    }
}

/// Sums of `ROWS` rows from `row` × the two panels' 32 outputs.
fn tile_kernel(
    left: &Panel,
    right: &Panel,
    acts: &Activations,
    row: usize,
    sums: &mut [[f32; 2 * PANEL]; ROWS],
) {
    #[cfg(target_arch = "x86_64")]
    avx512::tile(left, right, acts, row, sums);
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (left, right, acts, row, sums);
        unreachable!("PackedQ8 is only built where the kernel runs")
    }
}

impl CustomOp1 for PackedQ8 {
    fn name(&self) -> &'static str {
        "q8_0-vnni-matmul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(x) = storage else {
            candle_core::bail!("{} takes f32 activations", self.name())
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("{} takes contiguous activations", self.name())
        };
        let (rows, in_dim) = layout.shape().dims2()?;
        if in_dim != self.in_dim {
            candle_core::bail!(
                "{}: activations have {in_dim} columns, the matrix {}",
                self.name(),
                self.in_dim
            )
        }
        let y = self.matmul(&x[start..end], rows);
        Ok((CpuStorage::F32(y), Shape::from((rows, self.out_dim))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::QMatMul;
    use candle_core::{Module, Tensor};

    /// Deterministic values in [-1, 1) with a few large outliers, like real activations.
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut z = seed;
        (0..n)
            .map(|i| {
                z = z
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let v = ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0;
                if i % 97 == 0 {
                    v * 8.0
                } else {
                    v
                }
            })
            .collect()
    }

    fn q8_matrix(out_dim: usize, in_dim: usize) -> QTensor {
        let w = Tensor::from_vec(values(out_dim * in_dim, 7), (out_dim, in_dim), &Device::Cpu)
            .expect("tensor");
        QTensor::quantize(&w, GgmlDType::Q8_0).expect("quantize")
    }

    /// The same arithmetic as the kernel, in plain integers from candle's own Q8_0 blocks.
    fn reference(q: &QTensor, x: &[f32], rows: usize) -> Vec<f32> {
        let (out_dim, in_dim) = q.shape().dims2().expect("2d");
        let raw = q.data().expect("data");
        let blocks = in_dim / BLOCK;
        let acts = Activations::quantize(x, rows, rows, in_dim);
        let mut y = vec![0f32; rows * out_dim];
        for r in 0..rows {
            for n in 0..out_dim {
                let mut total = 0f32;
                for b in 0..blocks {
                    let (d, qs) = q8_0_block(&raw[(n * blocks + b) * Q8_0_BYTES..][..Q8_0_BYTES]);
                    let dot: i32 = qs
                        .zip(&acts.bytes[r * in_dim + b * BLOCK..][..BLOCK])
                        .map(|(w, &a)| i32::from(w) * (i32::from(a) - 128))
                        .sum();
                    total += dot as f32 * d * acts.scales[r * blocks + b];
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

    #[test]
    fn the_kernel_computes_the_integer_reference_for_odd_row_counts() {
        let q = q8_matrix(64, 96);
        let Some(packed) = PackedQ8::from_qtensor(&q).expect("pack") else {
            eprintln!("no AVX-512 VNNI here: candle's kernel runs instead");
            return;
        };
        for rows in [1, 5, 6, 7, 13] {
            let x = values(rows * 96, rows as u64);
            let got = packed.matmul(&x, rows);
            let want = reference(&q, &x, rows);
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(
                max_difference(&got, &want) <= 1e-5 * scale,
                "rows {rows}: {}",
                max_difference(&got, &want)
            );
        }
    }

    #[test]
    fn the_layer_is_as_close_to_the_exact_product_as_candles_quantized_matmul() {
        let q = q8_matrix(96, 256);
        let Some(packed) = PackedQ8::from_qtensor(&q).expect("pack") else {
            return;
        };
        let x = Tensor::from_vec(values(9 * 256, 3), (9, 256), &Device::Cpu).expect("x");
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
        // Both quantize the activations per block of 32 (candle rounds its scales to f16); the
        // outliers in `values` make that error visible, and it must not be larger here.
        let (ours, candle) = (
            max_difference(&ours, &exact),
            max_difference(&candle, &exact),
        );
        assert!(
            ours > 0.0 && ours <= 1.1 * candle,
            "ours {ours}, candle {candle}"
        );
    }

    #[test]
    fn shapes_the_kernel_does_not_cover_stay_with_candle() {
        assert!(PackedQ8::from_qtensor(&q8_matrix(48, 64))
            .expect("pack")
            .is_none());
        let w = Tensor::zeros((64, 256), candle_core::DType::F32, &Device::Cpu).expect("w");
        let q4 = QTensor::quantize(&w, GgmlDType::Q4K).expect("q4k");
        assert!(PackedQ8::from_qtensor(&q4).expect("pack").is_none());
    }
}
