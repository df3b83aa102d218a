//! Gemma 2's attention probabilities as one fused CPU kernel for f32: the logit soft-cap
//! `softcap · tanh(s · scale / softcap)`, the additive mask and the softmax over each query's
//! keys, in one pass per row on both cores. candle's ops take seven passes over the scores,
//! each with a new tensor, and call libm's `tanh` and `exp` one value at a time; here they are
//! the vectorizable approximations of `approx.rs`. Other dtypes and devices take candle's ops.

use candle_core::{CpuStorage, CustomOp2, DType, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::model::kernels::approx::{exp, tanh};

/// Softmax over the last axis of `softcap · tanh(scores · scale / softcap) + mask`, in f32.
/// `scores` is `[batch, heads, queries, keys]`, `mask` `[batch, 1, queries, keys]`.
pub fn softcapped_softmax(
    scores: &Tensor,
    mask: &Tensor,
    scale: f64,
    softcap: f64,
) -> Result<Tensor> {
    let scores = scores.to_dtype(DType::F32)?;
    let fused = matches!(scores.device(), Device::Cpu)
        && mask.dtype() == DType::F32
        && scores.is_contiguous()
        && mask.is_contiguous();
    if fused {
        scores.apply_op2_no_bwd(mask, &SoftcappedSoftmax { scale, softcap })
    } else {
        let capped = (((scores * scale)? / softcap)?.tanh()? * softcap)?;
        candle_nn::ops::softmax_last_dim(&capped.broadcast_add(mask)?)
    }
}

struct SoftcappedSoftmax {
    scale: f64,
    softcap: f64,
}

impl CustomOp2 for SoftcappedSoftmax {
    fn name(&self) -> &'static str {
        "softcapped-softmax"
    }

    fn cpu_fwd(
        &self,
        scores: &CpuStorage,
        scores_layout: &Layout,
        mask: &CpuStorage,
        mask_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(scores), CpuStorage::F32(mask)) = (scores, mask) else {
            candle_core::bail!("{} takes f32 tensors", self.name())
        };
        let (Some((s0, s1)), Some((m0, m1))) = (
            scores_layout.contiguous_offsets(),
            mask_layout.contiguous_offsets(),
        ) else {
            candle_core::bail!("{} takes contiguous tensors", self.name())
        };
        let (batch, heads, queries, keys) = scores_layout.shape().dims4()?;
        if mask_layout.shape().dims4()? != (batch, 1, queries, keys) {
            candle_core::bail!(
                "{}: mask {:?} for scores {:?}",
                self.name(),
                mask_layout.shape(),
                scores_layout.shape()
            )
        }
        let (scores, mask) = (&scores[s0..s1], &mask[m0..m1]);
        let scale = self.scale as f32;
        let inverse_cap = (1.0 / self.softcap) as f32;
        let cap = self.softcap as f32;
        let mut out = vec![0f32; scores.len()];
        out.par_chunks_mut(keys)
            .zip(scores.par_chunks(keys))
            .enumerate()
            .with_min_len(16)
            .for_each(|(row, (out, scores))| {
                let (b, query) = (row / (heads * queries), row % queries);
                let mask = &mask[(b * queries + query) * keys..][..keys];
                let mut max = f32::NEG_INFINITY;
                for ((o, &s), &m) in out.iter_mut().zip(scores).zip(mask) {
                    *o = tanh(s * scale * inverse_cap) * cap + m;
                    max = max.max(*o);
                }
                let mut sum = 0f32;
                for o in out.iter_mut() {
                    *o = exp(*o - max);
                    sum += *o;
                }
                for o in out.iter_mut() {
                    *o /= sum;
                }
            });
        Ok((CpuStorage::F32(out), scores_layout.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fused_kernel_matches_candles_ops() {
        let (b, h, q, k) = (2, 3, 5, 37);
        let scores: Vec<f32> = (0..b * h * q * k)
            .map(|i| ((i * 7919 % 2003) as f32 - 1000.0) / 9.0)
            .collect();
        let mask: Vec<f32> = (0..b * q * k)
            .map(|i| if i % 7 == 3 { f32::NEG_INFINITY } else { 0.0 })
            .collect();
        let scores = Tensor::from_vec(scores, (b, h, q, k), &Device::Cpu).expect("scores");
        let mask = Tensor::from_vec(mask, (b, 1, q, k), &Device::Cpu).expect("mask");
        let fused = softcapped_softmax(&scores, &mask, 0.0625, 50.0).expect("fused");
        let capped = (((&scores * 0.0625).and_then(|s| s / 50.0))
            .and_then(|s| s.tanh())
            .and_then(|s| s * 50.0))
        .expect("capped");
        let plain = capped
            .broadcast_add(&mask)
            .and_then(|s| candle_nn::ops::softmax_last_dim(&s))
            .expect("softmax");
        let diff = (fused - plain)
            .and_then(|d| d.abs())
            .and_then(|d| d.flatten_all())
            .and_then(|d| d.max(0))
            .and_then(|d| d.to_scalar::<f32>())
            .expect("difference");
        assert!(diff < 1e-6, "largest difference {diff:e}");
    }
}
