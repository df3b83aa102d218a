//! Gemma 2 attention: grouped-query attention with RoPE, the attention-logit soft-cap, and
//! masks built from absolute positions, so rows of different lengths, padding and cached
//! prefixes all attend exactly as a lone, unpadded sequence would.

use candle_core::{DType, Device, Module, Result, Tensor, D};

use crate::model::forward::linear::Linear;
use crate::model::kernels::attention::{attention, Softcap};
use crate::model::kernels::heads::split_heads;
use crate::model::kernels::rows::Rows;
use crate::model::load::config::Gemma2Config;
use crate::model::load::weights::WeightSource;
use crate::model::profile::{self, Phase};

/// Which keys each query may see: causal, optionally within a sliding window.
pub struct AttentionMask {
    /// `[batch, 1, queries, keys]` additive mask (0 or -inf), f32.
    pub full: Tensor,
    /// The same with the sliding window applied.
    pub sliding: Tensor,
}

impl AttentionMask {
    /// Builds both masks. `queries[b][t]` and `keys[b][s]` are absolute positions or `None` for
    /// padding; the last `queries[b].len()` key slots of each row are the queries themselves. A
    /// padding query sees only its own slot, so every row of the softmax stays finite.
    pub fn new(
        queries: &[Vec<Option<u32>>],
        keys: &[Vec<Option<u32>>],
        window: usize,
        device: &Device,
    ) -> Result<Self> {
        let batch = queries.len();
        let tq = queries.first().map_or(0, Vec::len);
        let tk = keys.first().map_or(0, Vec::len);
        let mut full = vec![f32::NEG_INFINITY; batch * tq * tk];
        let mut sliding = full.clone();
        for (b, (qrow, krow)) in queries.iter().zip(keys).enumerate() {
            let own_slot_base = tk - tq;
            for (t, q) in qrow.iter().enumerate() {
                let base = (b * tq + t) * tk;
                match q {
                    None => {
                        full[base + own_slot_base + t] = 0.0;
                        sliding[base + own_slot_base + t] = 0.0;
                    }
                    Some(q) => {
                        for (s, k) in krow.iter().enumerate() {
                            let Some(k) = k else { continue };
                            if k <= q {
                                full[base + s] = 0.0;
                                if ((q - k) as usize) < window {
                                    sliding[base + s] = 0.0;
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok(Self {
            full: Tensor::from_vec(full, (batch, 1, tq, tk), device)?,
            sliding: Tensor::from_vec(sliding, (batch, 1, tq, tk), device)?,
        })
    }
}

/// One attention layer's weights and constants.
pub struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    heads: usize,
    kv_heads: usize,
    softcap: Softcap,
}

impl Attention {
    /// Loads `self_attn.{q,k,v,o}_proj`.
    pub fn load(ws: &WeightSource, c: &Gemma2Config) -> Result<Self> {
        let q_out = c.num_attention_heads * c.head_dim;
        let kv_out = c.num_key_value_heads * c.head_dim;
        Ok(Self {
            q_proj: ws.linear(c.hidden_size, q_out, "q_proj")?,
            k_proj: ws.linear(c.hidden_size, kv_out, "k_proj")?,
            v_proj: ws.linear(c.hidden_size, kv_out, "v_proj")?,
            o_proj: ws.linear(q_out, c.hidden_size, "o_proj")?,
            heads: c.num_attention_heads,
            kv_heads: c.num_key_value_heads,
            softcap: Softcap {
                scale: 1.0 / c.query_pre_attn_scalar.sqrt(),
                cap: c.attn_logit_softcapping,
            },
        })
    }

    /// Attends the real tokens `x` (`[tokens, hidden]`, packed by `rows`) over the cached
    /// keys plus their own row's; returns the output (packed) and the keys/values including
    /// the new ones (padded, zeros in padding slots).
    pub fn forward(
        &self,
        x: &Tensor,
        rows: Rows<'_>,
        rope: (&Tensor, &Tensor),
        mask: &Tensor,
        past: Option<&(Tensor, Tensor)>,
    ) -> Result<(Tensor, (Tensor, Tensor))> {
        let kv = self.keys_values(x, rows, rope, past)?;
        let out = self.attend(x, rows, rope, (&kv.0, &kv.1), mask)?;
        Ok((out, kv))
    }

    /// The keys (with RoPE) and values of the real tokens `x` (packed by `rows`), after the
    /// cached ones: `[batch, kv_heads, keys, head_dim]`, zeros in padding slots.
    pub fn keys_values(
        &self,
        x: &Tensor,
        rows: Rows<'_>,
        rope: (&Tensor, &Tensor),
        past: Option<&(Tensor, Tensor)>,
    ) -> Result<(Tensor, Tensor)> {
        let (k, v) = (self.k_proj.forward(x)?, self.v_proj.forward(x)?);
        let k = profile::timed(Phase::Elementwise, || {
            split_heads(&k, rows, self.kv_heads, Some(rope))
        })?;
        profile::timed(Phase::Copies, || {
            let v = split_heads(&v, rows, self.kv_heads, None)?;
            match past {
                Some((pk, pv)) => Ok((Tensor::cat(&[pk, &k], 2)?, Tensor::cat(&[pv, &v], 2)?)),
                None => Ok::<_, candle_core::Error>((k, v)),
            }
        })
    }

    /// The attention output of the query tokens `x` (packed by `rows`, at the positions of
    /// `rope`) over `keys_values` of the same batch rows under `mask`, projected: `[tokens,
    /// hidden]`, packed.
    pub fn attend(
        &self,
        x: &Tensor,
        rows: Rows<'_>,
        rope: (&Tensor, &Tensor),
        (k, v): (&Tensor, &Tensor),
        mask: &Tensor,
    ) -> Result<Tensor> {
        let q = self.q_proj.forward(x)?;
        let q = profile::timed(Phase::Elementwise, || {
            split_heads(&q, rows, self.heads, Some(rope))
        })?;
        let out = profile::timed(Phase::Attention, || {
            attention((&q, k, v), rows, mask, self.softcap)
        })?;
        self.o_proj.forward(&out)
    }
}

/// RoPE cos/sin tables for every position up to the model's limit.
pub struct RopeTables {
    cos: Tensor,
    sin: Tensor,
}

impl RopeTables {
    /// Precomputes the tables (in f32 arithmetic, like the reference) stored in `dtype`.
    pub fn new(c: &Gemma2Config, dtype: DType, device: &Device) -> Result<Self> {
        let half = c.head_dim / 2;
        let theta = c.rope_theta as f32;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| 1.0 / theta.powf((2 * i) as f32 / c.head_dim as f32))
            .collect();
        let positions = c.max_position_embeddings;
        let mut cos = Vec::with_capacity(positions * half);
        let mut sin = Vec::with_capacity(positions * half);
        for p in 0..positions {
            for f in &inv_freq {
                let angle = p as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        Ok(Self {
            cos: Tensor::from_vec(cos, (positions, half), device)?.to_dtype(dtype)?,
            sin: Tensor::from_vec(sin, (positions, half), device)?.to_dtype(dtype)?,
        })
    }

    /// `[batch, tokens, head_dim / 2]` cos and sin for the given positions.
    pub fn select(&self, positions: &[Vec<u32>]) -> Result<(Tensor, Tensor)> {
        let b = positions.len();
        let t = positions.first().map_or(0, Vec::len);
        let flat: Vec<u32> = positions.iter().flatten().copied().collect();
        let index = Tensor::from_vec(flat, b * t, self.cos.device())?;
        let half = self.cos.dim(D::Minus1)?;
        Ok((
            self.cos.index_select(&index, 0)?.reshape((b, t, half))?,
            self.sin.index_select(&index, 0)?.reshape((b, t, half))?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn visible(mask: &Tensor) -> Vec<Vec<Vec<bool>>> {
        let m = mask
            .squeeze(1)
            .and_then(|m| m.to_vec3::<f32>())
            .expect("3d");
        m.into_iter()
            .map(|r| {
                r.into_iter()
                    .map(|q| q.into_iter().map(|v| v == 0.0).collect())
                    .collect()
            })
            .collect()
    }

    #[test]
    fn causal_with_padding_and_window() {
        // Row 0: three real tokens; row 1: one real token then two pads.
        let q = vec![vec![Some(0), Some(1), Some(2)], vec![Some(0), None, None]];
        let m = AttentionMask::new(&q, &q, 2, &Device::Cpu).expect("mask");
        let full = visible(&m.full);
        assert_eq!(full[0][2], vec![true, true, true]);
        assert_eq!(full[0][0], vec![true, false, false]);
        assert_eq!(full[1][0], vec![true, false, false]);
        // A pad query sees only its own slot.
        assert_eq!(full[1][1], vec![false, true, false]);
        let sliding = visible(&m.sliding);
        assert_eq!(sliding[0][2], vec![false, true, true]);
    }

    #[test]
    fn cached_prefix_keys_come_first() {
        // Two cached slots (positions 0, 1) then one new query at position 2.
        let keys = vec![vec![Some(0), Some(1), Some(2)]];
        let queries = vec![vec![Some(2)]];
        let m = AttentionMask::new(&queries, &keys, 8, &Device::Cpu).expect("mask");
        assert_eq!(visible(&m.full)[0][0], vec![true, true, true]);
    }
}
