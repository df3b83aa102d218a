//! A projection's output split into attention heads, with RoPE where it applies, as one fused
//! CPU pass: the token-packed rows `[tokens, heads · head_dim]` (the real tokens of every row of
//! the batch, one after another) become `[batch, heads, width, head_dim]`, zeros in the padding
//! slots. candle's path takes a gather, a transposing copy and, for queries and keys, a RoPE
//! pass that in bf16 converts each operand one value at a time on one core. The rotation rounds
//! where the reference rounds (`x·cos` and `y·sin` to the dtype, then their sum), so its
//! results are candle's bit for bit. Other devices take candle's ops.

use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::model::kernels::float::{contiguous, Float};
use crate::model::kernels::rows::Rows;

/// `x` (`[tokens, heads · head_dim]`, packed by `rows`) as `[batch, heads, width, head_dim]`,
/// zeros in padding slots, rotated by `rope` (`cos`, `sin`: `[batch, width, head_dim / 2]` in
/// `x`'s dtype) when given.
pub fn split_heads(
    x: &Tensor,
    rows: Rows<'_>,
    heads: usize,
    rope: Option<(&Tensor, &Tensor)>,
) -> Result<Tensor> {
    let fused = matches!(x.device(), Device::Cpu)
        && matches!(x.dtype(), DType::F32 | DType::BF16 | DType::F16)
        && rope.is_none_or(|(cos, sin)| cos.dtype() == x.dtype() && sin.dtype() == x.dtype());
    if !fused {
        return unfused(x, rows, heads, rope);
    }
    let batch = rows.lengths.len();
    let head_dim = x.dim(1)? / heads.max(1);
    let no_rope;
    let (cos, sin) = match rope {
        Some(tables) => tables,
        None => {
            no_rope = Tensor::zeros(0, x.dtype(), x.device())?;
            (&no_rope, &no_rope)
        }
    };
    let rotate = rope.is_some();
    let tables = [batch, rows.width, head_dim / 2];
    if rotate && (cos.dims() != tables || sin.dims() != tables) {
        candle_core::bail!(
            "RoPE tables {:?} and {:?} for {batch} rows of {} and heads of {head_dim}",
            cos.shape(),
            sin.shape(),
            rows.width
        )
    }
    x.apply_op3_no_bwd(
        cos,
        sin,
        &SplitHeads {
            rows,
            heads,
            rotate,
        },
    )
}

/// The same in candle's ops.
fn unfused(
    x: &Tensor,
    rows: Rows<'_>,
    heads: usize,
    rope: Option<(&Tensor, &Tensor)>,
) -> Result<Tensor> {
    let batch = rows.lengths.len();
    let head_dim = x.dim(1)? / heads.max(1);
    let split = rows
        .unpack(x)?
        .reshape((batch, rows.width, heads, head_dim))?
        .transpose(1, 2)?
        .contiguous()?;
    match rope {
        Some((cos, sin)) => candle_nn::rotary_emb::rope(&split, cos, sin),
        None => Ok(split),
    }
}

struct SplitHeads<'a> {
    rows: Rows<'a>,
    heads: usize,
    rotate: bool,
}

impl CustomOp3 for SplitHeads<'_> {
    fn name(&self) -> &'static str {
        "split-heads"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        cos: &CpuStorage,
        cos_layout: &Layout,
        sin: &CpuStorage,
        sin_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (tokens, row) = x_layout.shape().dims2()?;
        let head_dim = row / self.heads.max(1);
        let batch = self.rows.lengths.len();
        if self.heads * head_dim != row
            || !head_dim.is_multiple_of(2)
            || self.rows.lengths.iter().sum::<usize>() != tokens
            || self.rows.lengths.iter().any(|&n| n > self.rows.width)
        {
            candle_core::bail!(
                "{}: {tokens} × {row} values for {} heads in rows {:?} of {}",
                self.name(),
                self.heads,
                self.rows.lengths,
                self.rows.width
            )
        }
        let out = match (x, cos, sin) {
            (CpuStorage::F32(x), CpuStorage::F32(c), CpuStorage::F32(s)) => CpuStorage::F32(
                self.run((x, x_layout), (c, cos_layout), (s, sin_layout), head_dim)?,
            ),
            (CpuStorage::BF16(x), CpuStorage::BF16(c), CpuStorage::BF16(s)) => CpuStorage::BF16(
                self.run((x, x_layout), (c, cos_layout), (s, sin_layout), head_dim)?,
            ),
            (CpuStorage::F16(x), CpuStorage::F16(c), CpuStorage::F16(s)) => CpuStorage::F16(
                self.run((x, x_layout), (c, cos_layout), (s, sin_layout), head_dim)?,
            ),
            _ => candle_core::bail!("{} takes x and its RoPE tables in one dtype", self.name()),
        };
        let shape = (batch, self.heads, self.rows.width, head_dim);
        Ok((out, Shape::from(shape)))
    }
}

impl SplitHeads<'_> {
    fn run<T: Float>(
        &self,
        (x, x_layout): (&[T], &Layout),
        (cos, cos_layout): (&[T], &Layout),
        (sin, sin_layout): (&[T], &Layout),
        head_dim: usize,
    ) -> Result<Vec<T>> {
        let x = contiguous(x, x_layout)?;
        let (cos, sin) = (contiguous(cos, cos_layout)?, contiguous(sin, sin_layout)?);
        let (width, half) = (self.rows.width, head_dim / 2);
        let row = self.heads * head_dim;
        let starts = self.rows.starts();
        let mut out = vec![T::zero(); self.rows.lengths.len() * self.heads * width * head_dim];
        out.par_chunks_mut(width * head_dim)
            .enumerate()
            .for_each(|(bh, out)| {
                let (b, h) = (bh / self.heads, bh % self.heads);
                let tokens = out.chunks_exact_mut(head_dim).take(self.rows.lengths[b]);
                for (t, dst) in tokens.enumerate() {
                    let src = &x[(starts[b] + t) * row + h * head_dim..][..head_dim];
                    if !self.rotate {
                        dst.copy_from_slice(src);
                        continue;
                    }
                    let at = (b * width + t) * half;
                    let (cos, sin) = (&cos[at..at + half], &sin[at..at + half]);
                    let (x1, x2) = src.split_at(half);
                    let (d1, d2) = dst.split_at_mut(half);
                    for i in 0..half {
                        let product = |a: T, b: T| T::narrow(a.widen() * b.widen()).widen();
                        d1[i] = T::narrow(product(x1[i], cos[i]) - product(x2[i], sin[i]));
                        d2[i] = T::narrow(product(x1[i], sin[i]) + product(x2[i], cos[i]));
                    }
                }
            });
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kernels::panels::test_tensor;

    #[test]
    fn the_fused_split_is_candles_bit_for_bit_in_every_dtype() {
        let (heads, head_dim) = (3, 8);
        let lengths = [2, 5, 1];
        let rows = Rows {
            lengths: &lengths,
            width: 5,
        };
        let x = test_tensor((8, heads * head_dim), 1);
        let cos = test_tensor((3 * 5, head_dim / 2), 2).reshape((3, 5, head_dim / 2));
        let sin = test_tensor((3 * 5, head_dim / 2), 3).reshape((3, 5, head_dim / 2));
        let (cos, sin) = (cos.expect("cos"), sin.expect("sin"));
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            let cast = |t: &Tensor| t.to_dtype(dtype).expect("dtype");
            let (x, cos, sin) = (cast(&x), cast(&cos), cast(&sin));
            for rope in [Some((&cos, &sin)), None] {
                let fused = split_heads(&x, rows, heads, rope).expect("fused");
                let plain = unfused(&x, rows, heads, rope).expect("plain");
                assert_eq!(fused.dims(), [3, heads, 5, head_dim]);
                let (fused, plain) = (fused.to_dtype(DType::F32), plain.to_dtype(DType::F32));
                let flat = |t: Result<Tensor>| -> Vec<f32> {
                    t.and_then(|t| t.flatten_all())
                        .and_then(|t| t.to_vec1())
                        .expect("values")
                };
                assert_eq!(
                    flat(fused),
                    flat(plain),
                    "{dtype:?}, rope {}",
                    rope.is_some()
                );
            }
        }
    }

    #[test]
    fn lengths_that_do_not_add_up_and_rope_tables_of_another_shape_are_errors() {
        let lengths = [2, 2];
        let rows = Rows {
            lengths: &lengths,
            width: 2,
        };
        assert!(split_heads(&test_tensor((3, 8), 1), rows, 2, None).is_err());
        // RoPE tables of another shape (here `sin` one position short) are refused, not read.
        let x = test_tensor((4, 8), 1);
        let cos = test_tensor((2 * 2, 2), 2).reshape((2, 2, 2)).expect("cos");
        let sin = test_tensor((2 * 2 - 1, 2), 3)
            .reshape((1, 3, 2))
            .expect("sin");
        let err = split_heads(&x, rows, 2, Some((&cos, &sin))).expect_err("tables");
        assert!(err.to_string().contains("RoPE tables"), "{err}");
    }
}
