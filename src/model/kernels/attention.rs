//! Gemma 2 attention as one fused CPU kernel. For each row of the batch, block of queries and
//! key/value head it computes the scores over the keys that block may see, the soft-capped
//! (`softcap · tanh(s · scale / softcap)`), masked softmax and the weighted values, and writes
//! them straight into the packed token rows the output projection reads (padding queries are
//! skipped). Only one block's scores (its queries × its visible keys, f32) exist at a time,
//! keys no query of the block may see (a causal prefill's future, a sliding window's past,
//! padding at the ends) are never multiplied, and the products run in f32 through `gemm`
//! whatever the model's dtype (bf16 and f16 keys and values are widened once per layer).
//! candle's ops, which other devices take, materialise every head's whole score matrix, take
//! seven passes over it with libm's `tanh` and `exp` one value at a time, copy the output
//! between layouts twice and, in bf16, round scores and probabilities to bf16.

use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::model::kernels::approx::{exp, tanh};
use crate::model::kernels::float::{contiguous, with_host_f32, Float};
use crate::model::kernels::rows::Rows;

/// Queries per block: with two query heads per key/value head (every Gemma 2 size), 64 rows of
/// scores per matrix product, and blocks enough to keep both cores busy on a short prefill.
const BLOCK: usize = 32;

/// The constants of Gemma 2's attention logits.
#[derive(Debug, Clone, Copy)]
pub struct Softcap {
    /// Multiplies the raw scores (`1 / √query_pre_attn_scalar`).
    pub scale: f64,
    /// The soft cap on the scaled scores.
    pub cap: f64,
}

/// Grouped-query attention of `q` (`[batch, heads, width, head_dim]`) over `k` and `v`
/// (`[batch, kv_heads, keys, head_dim]`) under the additive `mask` (`[batch, 1, width, keys]`,
/// f32: 0 where a query sees a key, `-inf` where not; every query sees at least one key).
/// Returns the real queries' outputs packed by `rows`, `[tokens, heads · head_dim]`.
pub fn attention(
    (q, k, v): (&Tensor, &Tensor, &Tensor),
    rows: Rows<'_>,
    mask: &Tensor,
    softcap: Softcap,
) -> Result<Tensor> {
    let fused = matches!(q.device(), Device::Cpu)
        && matches!(q.dtype(), DType::F32 | DType::BF16 | DType::F16)
        && mask.dtype() == DType::F32
        && mask.is_contiguous();
    if fused {
        q.apply_op3_no_bwd(
            k,
            v,
            &FusedAttention {
                rows,
                mask,
                softcap,
            },
        )
    } else {
        rows.pack(&unfused(q, k, v, mask, softcap)?)
    }
}

/// The same attention in candle's ops, `[batch, width, heads · head_dim]` (other devices; the
/// tests' reference).
fn unfused(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, softcap: Softcap) -> Result<Tensor> {
    let (b, heads, t, head_dim) = q.dims4()?;
    let (_, kv_heads, keys, _) = k.dims4()?;
    let group = heads / kv_heads;
    // Query heads of one key/value head are stacked along the token axis, so grouped-query
    // attention is one matmul per key/value head without copying keys.
    let q = q
        .contiguous()?
        .reshape((b, kv_heads, group * t, head_dim))?;
    let scores = q
        .matmul(&k.t()?)?
        .reshape((b, heads, t, keys))?
        .to_dtype(DType::F32)?;
    let capped = (((scores * softcap.scale)? / softcap.cap)?.tanh()? * softcap.cap)?;
    let probs = candle_nn::ops::softmax_last_dim(&capped.broadcast_add(mask)?)?;
    probs
        .to_dtype(v.dtype())?
        .reshape((b, kv_heads, group * t, keys))?
        .matmul(&v.contiguous()?)?
        .reshape((b, heads, t, head_dim))?
        .transpose(1, 2)?
        .reshape((b, t, heads * head_dim))
}

struct FusedAttention<'a> {
    rows: Rows<'a>,
    mask: &'a Tensor,
    softcap: Softcap,
}

/// The sizes of one call.
#[derive(Clone, Copy)]
struct Dims {
    heads: usize,
    kv_heads: usize,
    queries: usize,
    keys: usize,
    head_dim: usize,
}

impl CustomOp3 for FusedAttention<'_> {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        q_layout: &Layout,
        k: &CpuStorage,
        k_layout: &Layout,
        v: &CpuStorage,
        v_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (batch, heads, queries, head_dim) = q_layout.shape().dims4()?;
        let (kb, kv_heads, keys, kd) = k_layout.shape().dims4()?;
        let dims = Dims {
            heads,
            kv_heads,
            queries,
            keys,
            head_dim,
        };
        let kv_shape = (batch, kv_heads, keys, head_dim);
        let mask_shape = (batch, 1, queries, keys);
        if (kb, kd) != (batch, head_dim)
            || v_layout.shape().dims4()? != kv_shape
            || kv_heads == 0
            || !heads.is_multiple_of(kv_heads)
            || self.mask.dims4()? != mask_shape
            || self.rows.width != queries
            || self.rows.lengths.len() != batch
            || self.rows.lengths.iter().any(|&n| n > queries)
        {
            candle_core::bail!(
                "{}: q {:?}, k {:?}, v {:?}, mask {:?} do not fit together",
                self.name(),
                q_layout.shape(),
                k_layout.shape(),
                v_layout.shape(),
                self.mask.shape()
            )
        }
        let out = with_host_f32(self.mask, |mask| {
            let run = Run {
                dims,
                rows: self.rows,
                mask,
                softcap: self.softcap,
            };
            Ok(match (q, k, v) {
                (CpuStorage::F32(q), CpuStorage::F32(k), CpuStorage::F32(v)) => {
                    CpuStorage::F32(run.on(q, q_layout, k, k_layout, v, v_layout)?)
                }
                (CpuStorage::BF16(q), CpuStorage::BF16(k), CpuStorage::BF16(v)) => {
                    CpuStorage::BF16(run.on(q, q_layout, k, k_layout, v, v_layout)?)
                }
                (CpuStorage::F16(q), CpuStorage::F16(k), CpuStorage::F16(v)) => {
                    CpuStorage::F16(run.on(q, q_layout, k, k_layout, v, v_layout)?)
                }
                _ => candle_core::bail!("fused-attention takes q, k and v of one float dtype"),
            })
        })?;
        let tokens = self.rows.lengths.iter().sum::<usize>();
        Ok((out, Shape::from((tokens, heads * head_dim))))
    }
}

/// One call's sizes, mask and constants.
struct Run<'a> {
    dims: Dims,
    rows: Rows<'a>,
    mask: &'a [f32],
    softcap: Softcap,
}

impl Run<'_> {
    fn on<T: Float>(
        &self,
        q: &[T],
        q_layout: &Layout,
        k: &[T],
        k_layout: &Layout,
        v: &[T],
        v_layout: &Layout,
    ) -> Result<Vec<T>> {
        let q = contiguous(q, q_layout)?;
        let k = T::widened(contiguous(k, k_layout)?);
        let v = T::widened(contiguous(v, v_layout)?);
        let d = self.dims;
        let row = d.heads * d.head_dim;
        let mut out = vec![T::zero(); self.rows.lengths.iter().sum::<usize>() * row];
        // Tasks: (batch row, first query, its block of the output).
        let mut tasks = Vec::new();
        let mut rest = out.as_mut_slice();
        for (b, &n) in self.rows.lengths.iter().enumerate() {
            let (mine, others) = rest.split_at_mut(n * row);
            rest = others;
            let blocks = mine.chunks_mut(BLOCK * row).enumerate();
            tasks.extend(blocks.map(|(i, block)| (b, i * BLOCK, block)));
        }
        tasks
            .into_par_iter()
            .for_each(|(b, first, out)| self.block(q, &k, &v, b, first, out));
        Ok(out)
    }

    /// Queries `first..` of batch row `b` (as many as `out` has rows), every head.
    fn block<T: Float>(
        &self,
        q: &[T],
        k: &[f32],
        v: &[f32],
        b: usize,
        first: usize,
        out: &mut [T],
    ) {
        let d = self.dims;
        let n = out.len() / (d.heads * d.head_dim);
        let group = d.heads / d.kv_heads;
        let rows = group * n;
        let mask = &self.mask[(b * d.queries + first) * d.keys..][..n * d.keys];
        // The keys any query of the block sees.
        let (mut lo, mut hi) = (d.keys, 0);
        for query in mask.chunks_exact(d.keys) {
            if let Some(first_seen) = query.iter().position(|m| *m != f32::NEG_INFINITY) {
                let last_seen = query.iter().rposition(|m| *m != f32::NEG_INFINITY);
                lo = lo.min(first_seen);
                hi = hi.max(last_seen.unwrap_or(first_seen) + 1);
            }
        }
        if lo >= hi {
            return; // No query sees a key (the mask's contract rules this out): zeros.
        }
        let width = hi - lo;
        let mut queries = vec![0f32; rows * d.head_dim];
        let mut scores = vec![0f32; rows * width];
        let mut values = vec![0f32; rows * d.head_dim];
        for g in 0..d.kv_heads {
            let heads = g * group..(g + 1) * group;
            // Rows: query `i` of the group's head `h` is row `h · n + i`.
            for (h, dst) in heads.zip(queries.chunks_exact_mut(n * d.head_dim)) {
                let src = &q[((b * d.heads + h) * d.queries + first) * d.head_dim..];
                for (o, &x) in dst.iter_mut().zip(src) {
                    *o = x.widen();
                }
            }
            let kv = (b * d.kv_heads + g) * d.keys * d.head_dim + lo * d.head_dim;
            let keys = &k[kv..kv + width * d.head_dim];
            let vals = &v[kv..kv + width * d.head_dim];
            // scores = queries · keysᵀ
            matmul(
                &mut scores,
                (rows, width, d.head_dim),
                (&queries, d.head_dim as isize, 1),
                (keys, 1, d.head_dim as isize),
            );
            for (r, s) in scores.chunks_exact_mut(width).enumerate() {
                let m = &mask[(r % n) * d.keys + lo..][..width];
                self.softmax(s, m);
            }
            // values = probabilities · values
            matmul(
                &mut values,
                (rows, d.head_dim, width),
                (&scores, width as isize, 1),
                (vals, d.head_dim as isize, 1),
            );
            for (r, src) in values.chunks_exact(d.head_dim).enumerate() {
                let (h, i) = (g * group + r / n, r % n);
                let dst = &mut out[(i * d.heads + h) * d.head_dim..][..d.head_dim];
                for (o, &x) in dst.iter_mut().zip(src) {
                    *o = T::narrow(x);
                }
            }
        }
    }

    /// One query's probabilities over its keys, in place of its raw scores.
    fn softmax(&self, scores: &mut [f32], mask: &[f32]) {
        let scale = self.softcap.scale as f32;
        let inverse_cap = (1.0 / self.softcap.cap) as f32;
        let cap = self.softcap.cap as f32;
        let mut max = f32::NEG_INFINITY;
        for (s, &m) in scores.iter_mut().zip(mask) {
            *s = tanh(*s * scale * inverse_cap) * cap + m;
            max = max.max(*s);
        }
        let mut sum = 0f32;
        for s in scores.iter_mut() {
            *s = exp(*s - max);
            sum += *s;
        }
        for s in scores.iter_mut() {
            *s /= sum;
        }
    }
}

/// `dst (m × n, row-major) = lhs (m × k) · rhs (k × n)`, each operand given with its row and
/// column strides, on the calling thread.
#[allow(unsafe_code)]
fn matmul(
    dst: &mut [f32],
    (m, n, k): (usize, usize, usize),
    (lhs, lhs_rs, lhs_cs): (&[f32], isize, isize),
    (rhs, rhs_rs, rhs_cs): (&[f32], isize, isize),
) {
    let last = |rows: usize, cols: usize, rs: isize, cs: isize| {
        (rows.max(1) - 1) * rs as usize + (cols.max(1) - 1) * cs as usize
    };
    assert!(
        dst.len() >= m * n
            && (m * k == 0 || lhs.len() > last(m, k, lhs_rs, lhs_cs))
            && (k * n == 0 || rhs.len() > last(k, n, rhs_rs, rhs_cs)),
        "matmul operands smaller than their shapes"
    );
    // SAFETY: the assertion keeps every element `gemm` reads or writes inside the slices.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            lhs.as_ptr(),
            lhs_cs,
            lhs_rs,
            rhs.as_ptr(),
            rhs_cs,
            rhs_rs,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::forward::attention::AttentionMask;
    use crate::model::kernels::panels::test_tensor;

    const SOFTCAP: Softcap = Softcap {
        scale: 0.0625,
        cap: 50.0,
    };

    fn largest_difference(a: &Tensor, b: &Tensor) -> f32 {
        (a.to_dtype(DType::F32).expect("a") - b.to_dtype(DType::F32).expect("b"))
            .and_then(|d| d.abs())
            .and_then(|d| d.flatten_all())
            .and_then(|d| d.max(0))
            .and_then(|d| d.to_scalar::<f32>())
            .expect("difference")
    }

    /// Row lengths: more queries than a block, and a short row (padding).
    const LENGTHS: [usize; 2] = [BLOCK + 7, 3];

    fn rows() -> Rows<'static> {
        Rows {
            lengths: &LENGTHS,
            width: LENGTHS[0],
        }
    }

    /// Queries at the end of the keys, a cached prefix before them, rows of different lengths
    /// and a sliding window shorter than the rows.
    fn case(dtype: DType) -> (Tensor, Tensor, Tensor, AttentionMask) {
        let (batch, heads, kv_heads, head_dim, cached) = (2, 4, 2, 16, 5);
        let width = LENGTHS[0];
        let queries: Vec<Vec<Option<u32>>> = LENGTHS
            .iter()
            .map(|&n| {
                (0..width)
                    .map(|t| (t < n).then_some((cached + t) as u32))
                    .collect()
            })
            .collect();
        let keys: Vec<Vec<Option<u32>>> = queries
            .iter()
            .map(|q| {
                (0..cached as u32)
                    .map(Some)
                    .chain(q.iter().copied())
                    .collect()
            })
            .collect();
        let mask = AttentionMask::new(&queries, &keys, 20, &Device::Cpu).expect("mask");
        let tk = cached + width;
        let q = test_tensor((batch, heads, width, head_dim), 1);
        let k = test_tensor((batch, kv_heads, tk, head_dim), 2);
        let v = test_tensor((batch, kv_heads, tk, head_dim), 3);
        let cast = |t: Tensor| t.to_dtype(dtype).expect("dtype");
        (cast(q), cast(k), cast(v), mask)
    }

    #[test]
    fn the_fused_kernel_matches_candles_ops_in_f32() {
        let (q, k, v, mask) = case(DType::F32);
        for m in [&mask.full, &mask.sliding] {
            let fused = attention((&q, &k, &v), rows(), m, SOFTCAP).expect("fused");
            let plain = unfused(&q, &k, &v, m, SOFTCAP).expect("unfused");
            let plain = rows().pack(&plain).expect("pack");
            assert_eq!(fused.dims(), [LENGTHS.iter().sum::<usize>(), 4 * 16]);
            assert_eq!(fused.dims(), plain.dims());
            let diff = largest_difference(&fused, &plain);
            assert!(diff < 1e-5, "largest difference {diff:e}");
        }
    }

    #[test]
    fn in_bf16_and_f16_the_kernel_rounds_only_its_output() {
        let (q, k, v, mask) = case(DType::F32);
        let m = &mask.full;
        let exact = attention((&q, &k, &v), rows(), m, SOFTCAP).expect("f32");
        for dtype in [DType::BF16, DType::F16] {
            let cast = |t: &Tensor| t.to_dtype(dtype).expect("dtype");
            let (q, k, v) = (cast(&q), cast(&k), cast(&v));
            let fused = attention((&q, &k, &v), rows(), m, SOFTCAP).expect("fused");
            assert_eq!(fused.dtype(), dtype);
            // The same inputs, widened: only the output's rounding may differ.
            let widen = |t: &Tensor| t.to_dtype(DType::F32).expect("f32");
            let wide = attention((&widen(&q), &widen(&k), &widen(&v)), rows(), m, SOFTCAP)
                .expect("widened");
            let rounding = if dtype == DType::BF16 { 1e-2 } else { 1e-3 };
            let diff = largest_difference(&fused, &wide);
            assert!(diff <= rounding, "{dtype:?}: largest difference {diff:e}");
            // And the result is near the exact one.
            assert!(largest_difference(&fused, &exact) < 0.1, "{dtype:?}");
        }
    }

    #[test]
    fn mismatched_shapes_are_an_error() {
        let (q, k, v, mask) = case(DType::F32);
        let short = k.narrow(2, 0, 3).expect("narrow");
        assert!(attention((&q, &short, &v), rows(), &mask.full, SOFTCAP).is_err());
        let lengths = [1, 2, 3];
        let wrong = Rows {
            lengths: &lengths,
            width: 3,
        };
        assert!(attention((&q, &k, &v), wrong, &mask.full, SOFTCAP).is_err());
    }
}
