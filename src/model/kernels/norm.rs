//! Gemma's RMSNorm, `x / rms(x) · scale` with the scale `1 + w` in f32, as fused CPU kernels
//! for f32, bf16 and f16: rows spread over both cores, the sum of squares vectorized, f32
//! arithmetic whatever the dtype and the result rounded once, as the reference rounds (it
//! normalizes in f32 and casts back). The residual form, `residual + norm(h)`, adds in the same
//! pass, rounding the norm to the dtype first as the unfused ops do. candle's norm runs on one
//! core and, in bf16, needs a widening and a narrowing copy around it and an addition after it.
//! Other devices take candle's ops.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::model::kernels::float::{contiguous, with_host_f32, Float};

/// `x / rms(x) · scale` over the last axis, in `x`'s dtype. `scale` is f32.
pub fn rms_norm(x: &Tensor, scale: &Tensor, eps: f32) -> Result<Tensor> {
    if fused(x, scale) {
        x.apply_op1_no_bwd(&Norm { scale, eps })
    } else {
        unfused(x, scale, eps)
    }
}

/// `residual + rms_norm(h)`, in `residual`'s dtype (the norm rounded to it before the addition).
pub fn add_rms_norm(residual: &Tensor, h: &Tensor, scale: &Tensor, eps: f32) -> Result<Tensor> {
    if fused(h, scale) && residual.dtype() == h.dtype() && residual.shape() == h.shape() {
        residual.apply_op2_no_bwd(h, &AddNorm { scale, eps })
    } else {
        residual + unfused(h, scale, eps)?
    }
}

fn fused(x: &Tensor, scale: &Tensor) -> bool {
    matches!(x.device(), Device::Cpu)
        && matches!(x.dtype(), DType::F32 | DType::BF16 | DType::F16)
        && scale.dtype() == DType::F32
        && scale.is_contiguous()
        && x.dims().last() == Some(&scale.elem_count())
}

/// The same norm in candle's ops.
fn unfused(x: &Tensor, scale: &Tensor, eps: f32) -> Result<Tensor> {
    candle_nn::ops::rms_norm(&x.to_dtype(DType::F32)?.contiguous()?, scale, eps)?
        .to_dtype(x.dtype())
}

/// Rows per parallel task (a 2304-wide row is 9 KB in f32).
const ROWS: usize = 4;

struct Norm<'a> {
    scale: &'a Tensor,
    eps: f32,
}

impl CustomOp1 for Norm<'_> {
    fn name(&self) -> &'static str {
        "fused-rms-norm"
    }

    fn cpu_fwd(&self, x: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        fn run<T: Float>(x: &[T], layout: &Layout, scale: &[f32], eps: f32) -> Result<Vec<T>> {
            Ok(normalized(contiguous(x, layout)?, None, scale, eps))
        }
        let out = with_host_f32(self.scale, |scale| {
            Ok(match x {
                CpuStorage::F32(x) => CpuStorage::F32(run(x, layout, scale, self.eps)?),
                CpuStorage::BF16(x) => CpuStorage::BF16(run(x, layout, scale, self.eps)?),
                CpuStorage::F16(x) => CpuStorage::F16(run(x, layout, scale, self.eps)?),
                _ => candle_core::bail!("{} takes f32, bf16 or f16", self.name()),
            })
        })?;
        Ok((out, layout.shape().clone()))
    }
}

struct AddNorm<'a> {
    scale: &'a Tensor,
    eps: f32,
}

impl CustomOp2 for AddNorm<'_> {
    fn name(&self) -> &'static str {
        "fused-add-rms-norm"
    }

    fn cpu_fwd(
        &self,
        residual: &CpuStorage,
        residual_layout: &Layout,
        h: &CpuStorage,
        h_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        fn run<T: Float>(
            (residual, residual_layout): (&[T], &Layout),
            (h, h_layout): (&[T], &Layout),
            scale: &[f32],
            eps: f32,
        ) -> Result<Vec<T>> {
            let residual = contiguous(residual, residual_layout)?;
            Ok(normalized(
                contiguous(h, h_layout)?,
                Some(residual),
                scale,
                eps,
            ))
        }
        let (r, l) = (residual, residual_layout);
        let out = with_host_f32(self.scale, |scale| {
            Ok(match (r, h) {
                (CpuStorage::F32(r), CpuStorage::F32(h)) => {
                    CpuStorage::F32(run((r, l), (h, h_layout), scale, self.eps)?)
                }
                (CpuStorage::BF16(r), CpuStorage::BF16(h)) => {
                    CpuStorage::BF16(run((r, l), (h, h_layout), scale, self.eps)?)
                }
                (CpuStorage::F16(r), CpuStorage::F16(h)) => {
                    CpuStorage::F16(run((r, l), (h, h_layout), scale, self.eps)?)
                }
                _ => candle_core::bail!("{} takes two f32, bf16 or f16 tensors", self.name()),
            })
        })?;
        Ok((out, h_layout.shape().clone()))
    }
}

/// Each row of `h` (`scale.len()` wide) normalized and scaled, rounded to `T`, then added to
/// the same row of `residual` and rounded again when there is one; rows spread over the threads.
fn normalized<T: Float>(h: &[T], residual: Option<&[T]>, scale: &[f32], eps: f32) -> Vec<T> {
    let width = scale.len();
    let mut out = vec![T::zero(); h.len()];
    out.par_chunks_mut(ROWS * width)
        .zip(h.par_chunks(ROWS * width))
        .enumerate()
        .for_each(|(task, (out, h))| {
            let residual = residual.map(|r| &r[task * ROWS * width..][..h.len()]);
            let rows = out.chunks_exact_mut(width).zip(h.chunks_exact(width));
            for (row, (out, h)) in rows.enumerate() {
                let inverse = inverse_rms(h, eps);
                for ((o, &v), &s) in out.iter_mut().zip(h).zip(scale) {
                    *o = T::narrow(v.widen() * inverse * s);
                }
                if let Some(residual) = residual {
                    for (o, &r) in out.iter_mut().zip(&residual[row * width..]) {
                        *o = T::narrow(r.widen() + o.widen());
                    }
                }
            }
        });
    out
}

/// `1 / √(mean(x²) + eps)`, the squares summed in sixteen lanes so the loop vectorizes.
fn inverse_rms<T: Float>(x: &[T], eps: f32) -> f32 {
    let mut lanes = [0f32; 16];
    let mut chunks = x.chunks_exact(16);
    for chunk in &mut chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            let v = v.widen();
            *lane += v * v;
        }
    }
    let tail: f32 = chunks
        .remainder()
        .iter()
        .map(|&v| v.widen() * v.widen())
        .sum();
    let sum = lanes.iter().sum::<f32>() + tail;
    1.0 / (sum / x.len() as f32 + eps).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kernels::panels::test_tensor;

    /// The largest difference in units of the larger value's magnitude (at least 1).
    fn largest_relative_difference(a: &Tensor, b: &Tensor) -> f32 {
        let a: Vec<f32> = a
            .to_dtype(DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1())
            .expect("a");
        let b: Vec<f32> = b
            .to_dtype(DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1())
            .expect("b");
        a.iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs() / x.abs().max(y.abs()).max(1.0))
            .fold(0.0, f32::max)
    }

    #[test]
    fn the_fused_norms_match_candles_in_every_dtype() {
        // 2305 columns: a tail after the sixteen-lane chunks; 9 rows: a partial task.
        let (rows, width) = (9, 2305);
        let scale = test_tensor((1, width), 3)
            .squeeze(0)
            .and_then(|s| s.affine(0.1, 1.0))
            .expect("scale");
        for (dtype, tolerance) in [(DType::F32, 1e-5), (DType::BF16, 1e-2), (DType::F16, 2e-3)] {
            let x = test_tensor((rows, width), 1).to_dtype(dtype).expect("x");
            let residual = test_tensor((rows, width), 2)
                .to_dtype(dtype)
                .expect("residual");
            let fused = rms_norm(&x, &scale, 1e-6).expect("fused");
            assert_eq!(fused.dtype(), dtype);
            let plain = unfused(&x, &scale, 1e-6).expect("plain");
            let diff = largest_relative_difference(&fused, &plain);
            assert!(diff <= tolerance, "{dtype:?} norm: {diff:e}");
            let fused = add_rms_norm(&residual, &x, &scale, 1e-6).expect("fused add");
            let plain = (&residual + &plain).expect("plain add");
            let diff = largest_relative_difference(&fused, &plain);
            assert!(diff <= tolerance, "{dtype:?} residual: {diff:e}");
        }
    }

    #[test]
    fn a_scale_of_the_wrong_width_takes_candles_path_and_fails_there() {
        let x = test_tensor((2, 8), 1);
        let scale = Tensor::ones(7, DType::F32, &Device::Cpu).expect("scale");
        assert!(rms_norm(&x, &scale, 1e-6).is_err());
    }
}
