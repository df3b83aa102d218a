//! The Gemma 2 decoder, written for scoring: the KV cache is passed in and returned, rows of a
//! batch may differ in length and in cached prefix, and only the Yes/No logits are computed.

use std::collections::{BTreeMap, BTreeSet};

use candle_core::{Device, Module, Result, Tensor};

use crate::model::forward::attention::{Attention, AttentionMask, RopeTables};
use crate::model::forward::embedding::Embedding;
use crate::model::forward::head::YesNoHead;
use crate::model::forward::kv_cache::KvCache;
use crate::model::forward::linear::Linear;
use crate::model::forward::norm::RmsNorm;
use crate::model::kernels::geglu::geglu;
use crate::model::kernels::rows::Rows;
use crate::model::load::config::Gemma2Config;
use crate::model::load::weights::WeightSource;
use crate::model::profile::{self, Phase};

struct Mlp {
    gate: Linear,
    up: Linear,
    down: Linear,
}

impl Mlp {
    fn load(ws: &WeightSource, c: &Gemma2Config) -> Result<Self> {
        Ok(Self {
            gate: ws.linear(c.hidden_size, c.intermediate_size, "gate_proj")?,
            up: ws.linear(c.hidden_size, c.intermediate_size, "up_proj")?,
            down: ws.linear(c.intermediate_size, c.hidden_size, "down_proj")?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // GeGLU with the tanh approximation of gelu.
        let (gate, up) = (self.gate.forward(x)?, self.up.forward(x)?);
        let hidden = profile::timed(Phase::Elementwise, || geglu(&gate, &up))?;
        self.down.forward(&hidden)
    }
}

struct Block {
    input_norm: RmsNorm,
    attention: Attention,
    post_attention_norm: RmsNorm,
    pre_ffn_norm: RmsNorm,
    mlp: Mlp,
    post_ffn_norm: RmsNorm,
    sliding: bool,
}

impl Block {
    fn load(ws: &WeightSource, c: &Gemma2Config, sliding: bool) -> Result<Self> {
        let norm = |name: &str| RmsNorm::load(&ws.pp(name), c.hidden_size, c.rms_norm_eps);
        Ok(Self {
            input_norm: norm("input_layernorm")?,
            attention: Attention::load(&ws.pp("self_attn"), c)?,
            post_attention_norm: norm("post_attention_layernorm")?,
            pre_ffn_norm: norm("pre_feedforward_layernorm")?,
            mlp: Mlp::load(&ws.pp("mlp"), c)?,
            post_ffn_norm: norm("post_feedforward_layernorm")?,
            sliding,
        })
    }

    /// Runs the block on the real tokens `x` (`[tokens, hidden]`, packed by `rows`).
    fn forward(
        &self,
        x: &Tensor,
        rows: Rows<'_>,
        rope: (&Tensor, &Tensor),
        mask: &AttentionMask,
        past: Option<&(Tensor, Tensor)>,
    ) -> Result<(Tensor, (Tensor, Tensor))> {
        let mask = if self.sliding {
            &mask.sliding
        } else {
            &mask.full
        };
        let h = elementwise(&|| self.input_norm.forward(x))?;
        let (h, kv) = self.attention.forward(&h, rows, rope, mask, past)?;
        Ok((self.residual_and_mlp(x, &h)?, kv))
    }

    /// The last block, whose output only `queries` need: the keys and values of every token
    /// (for the cache), the rest for the queries' tokens only, in their packed order (`None`
    /// without queries).
    fn forward_last(
        &self,
        x: &Tensor,
        rows: Rows<'_>,
        rope: (&Tensor, &Tensor),
        past: Option<&(Tensor, Tensor)>,
        queries: Option<&Queries>,
    ) -> Result<(Option<Tensor>, (Tensor, Tensor))> {
        let h = elementwise(&|| self.input_norm.forward(x))?;
        let (k, v) = self.attention.keys_values(&h, rows, rope, past)?;
        let Some(queries) = queries else {
            return Ok((None, (k, v)));
        };
        let (qk, qv) = match &queries.batch_rows {
            Some(index) => (k.index_select(index, 0)?, v.index_select(index, 0)?),
            None => (k.clone(), v.clone()),
        };
        let mask = if self.sliding {
            &queries.mask.sliding
        } else {
            &queries.mask.full
        };
        let x = x.index_select(&queries.picked, 0)?;
        let h = h.index_select(&queries.picked, 0)?;
        let rope = (&queries.rope.0, &queries.rope.1);
        let h = self
            .attention
            .attend(&h, queries.rows(), rope, (&qk, &qv), mask)?;
        Ok((Some(self.residual_and_mlp(&x, &h)?), (k, v)))
    }

    /// The block after attention: `x` plus the normalized attention output `h`, then the same
    /// around the MLP.
    fn residual_and_mlp(&self, x: &Tensor, h: &Tensor) -> Result<Tensor> {
        let x = elementwise(&|| self.post_attention_norm.add_to(x, h))?;
        let h = self
            .mlp
            .forward(&elementwise(&|| self.pre_ffn_norm.forward(&x))?)?;
        elementwise(&|| self.post_ffn_norm.add_to(&x, &h))
    }
}

/// Times `f` as element-wise work.
fn elementwise(f: &dyn Fn() -> Result<Tensor>) -> Result<Tensor> {
    profile::timed(Phase::Elementwise, f)
}

/// The tokens whose final hidden states a step returns, as the last block's queries: their
/// batch rows (each with its wanted tokens, in order), where they sit in the packed batch,
/// their RoPE tables and their attention masks over their rows' keys.
struct Queries {
    /// Wanted tokens per selected batch row (at least one each).
    lengths: Vec<usize>,
    /// Packed indices of the wanted tokens, row by row.
    picked: Tensor,
    /// The selected batch rows, when not every row is.
    batch_rows: Option<Tensor>,
    rope: (Tensor, Tensor),
    mask: AttentionMask,
    /// For each requested output, its place among the picked tokens.
    order: Tensor,
}

impl Queries {
    fn rows(&self) -> Rows<'_> {
        Rows {
            lengths: &self.lengths,
            width: self.lengths.iter().copied().max().unwrap_or(1),
        }
    }
}

/// The output of one forward step.
pub struct Step {
    /// `[outputs, hidden]` hidden states after the last block (before the final norm) of the
    /// tokens asked for, in the order asked (`None` when none were).
    pub hidden: Option<Tensor>,
    /// The cache with this step's keys and values appended, when asked for.
    pub cache: Option<KvCache>,
}

/// A loaded Gemma 2 model.
pub struct Gemma2 {
    config: Gemma2Config,
    embed: Embedding,
    blocks: Vec<Block>,
    head: YesNoHead,
    rope: RopeTables,
    device: Device,
}

impl Gemma2 {
    /// Loads the weights under `model.` (Hugging Face names) in the builder's dtype; the final
    /// norm and the embedding rows of `head_ids` (Yes, No) are kept in f32.
    pub fn load(ws: &WeightSource, config: &Gemma2Config, head_ids: [u32; 2]) -> Result<Self> {
        let ws = ws.pp("model");
        let embed = ws.embedding(config.vocab_size, config.hidden_size, "embed_tokens.weight")?;
        let blocks = config
            .sliding_layers
            .iter()
            .enumerate()
            .map(|(i, &sliding)| Block::load(&ws.pp(format!("layers.{i}")), config, sliding))
            .collect::<Result<Vec<_>>>()?;
        let final_norm = RmsNorm::load(&ws.pp("norm"), config.hidden_size, config.rms_norm_eps)?;
        let head = YesNoHead::new(
            &embed.rows(&head_ids)?,
            final_norm,
            config.final_logit_softcapping,
        )?;
        Ok(Self {
            rope: RopeTables::new(config, ws.dtype(), ws.device())?,
            config: config.clone(),
            embed,
            blocks,
            head,
            device: ws.device().clone(),
        })
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &Gemma2Config {
        &self.config
    }

    /// Runs `tokens[b]` (one row per sequence, any lengths, at least one row) after the cached
    /// row `b` of `past`, or from position 0 without a cache, and returns the final hidden
    /// states of the `(row, token)` positions `outputs` only (the last block computes its
    /// queries, attention and MLP for those alone; every token's keys and values still). Rows
    /// are padded internally. Without `keep_cache` each layer's keys and values are dropped as
    /// soon as the layer is done, instead of all being held until the step returns.
    pub fn forward(
        &self,
        tokens: &[Vec<u32>],
        past: Option<&KvCache>,
        keep_cache: bool,
        outputs: &[(usize, usize)],
    ) -> Result<Step> {
        let batch = tokens.len();
        if batch == 0 {
            candle_core::bail!("forward needs at least one row")
        }
        if let Some(p) = past {
            if p.rows() != batch {
                candle_core::bail!("{batch} rows of tokens for a cache of {} rows", p.rows())
            }
        }
        let lengths: Vec<usize> = tokens.iter().map(Vec::len).collect();
        let width = lengths.iter().copied().max().unwrap_or(0).max(1);
        let rows = Rows {
            lengths: &lengths,
            width,
        };
        let mut ids = Vec::with_capacity(lengths.iter().sum());
        let mut query_pos = Vec::with_capacity(batch);
        let mut rope_pos = Vec::with_capacity(batch);
        for (b, row) in tokens.iter().enumerate() {
            let start = past.map_or(0, |p| p.next_position(b));
            let end = start as usize + row.len();
            if end > self.config.max_position_embeddings {
                candle_core::bail!(
                    "sequence of {end} tokens exceeds the model's {} positions",
                    self.config.max_position_embeddings
                )
            }
            ids.extend(row.iter().copied());
            let positions: Vec<Option<u32>> = (0..width as u32)
                .map(|t| ((t as usize) < row.len()).then_some(start + t))
                .collect();
            rope_pos.push(positions.iter().map(|p| p.unwrap_or(0)).collect::<Vec<_>>());
            query_pos.push(positions);
        }
        let key_pos: Vec<Vec<Option<u32>>> = match past {
            Some(p) => p
                .positions
                .iter()
                .zip(&query_pos)
                .map(|(cached, new)| cached.iter().chain(new).copied().collect())
                .collect(),
            None => query_pos.clone(),
        };
        let mask = AttentionMask::new(
            &query_pos,
            &key_pos,
            self.config.sliding_window,
            &self.device,
        )?;
        let (cos, sin) = self.rope.select(&rope_pos)?;
        let queries = self.queries(outputs, rows, &query_pos, &key_pos)?;
        let queries = queries.as_ref();

        // The blocks run on the real tokens only (see `Rows`).
        let mut x = (self.embed.rows(&ids)? * (self.config.hidden_size as f64).sqrt())?;
        let mut layers = Vec::with_capacity(self.blocks.len());
        let mut hidden = None;
        let last = self.blocks.len().saturating_sub(1);
        for (i, block) in self.blocks.iter().enumerate() {
            let layer_past = past.map(|p| p.layer(i)).transpose()?;
            let rope = (&cos, &sin);
            let kv = if i == last {
                let (out, kv) = block.forward_last(&x, rows, rope, layer_past.as_ref(), queries)?;
                hidden = out;
                kv
            } else {
                let (next, kv) = block.forward(&x, rows, rope, &mask, layer_past.as_ref())?;
                x = next;
                kv
            };
            if keep_cache {
                layers.push(kv);
            }
        }
        let hidden = match (hidden, queries) {
            (Some(h), Some(q)) => Some(h.index_select(&q.order, 0)?),
            _ => None,
        };
        Ok(Step {
            hidden,
            cache: keep_cache.then_some(KvCache {
                layers,
                selected: None,
                positions: key_pos,
            }),
        })
    }

    /// Final soft-capped (Yes, No) logits in f32, `[tokens, 2]`, of a step's `hidden` states.
    pub fn yes_no_logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.head.forward(hidden)
    }

    /// The last block's queries for `outputs` (see [`Queries`]); `None` when there are none.
    fn queries(
        &self,
        outputs: &[(usize, usize)],
        rows: Rows<'_>,
        query_pos: &[Vec<Option<u32>>],
        key_pos: &[Vec<Option<u32>>],
    ) -> Result<Option<Queries>> {
        let batch = rows.lengths.len();
        if let Some(bad) = outputs
            .iter()
            .find(|&&(b, t)| b >= batch || t >= rows.lengths[b])
        {
            candle_core::bail!("no token {bad:?} in rows of lengths {:?}", rows.lengths)
        }
        if outputs.is_empty() {
            return Ok(None);
        }
        // Wanted tokens per row, in order, each once.
        let mut wanted: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
        for &(b, t) in outputs {
            wanted.entry(b).or_default().insert(t);
        }
        let starts = rows.starts();
        let picked: Vec<(usize, usize)> = wanted
            .iter()
            .flat_map(|(&b, tokens)| tokens.iter().map(move |&t| (b, t)))
            .collect();
        let order = outputs
            .iter()
            .map(|at| picked.binary_search(at).map(|i| i as u32))
            .collect::<std::result::Result<Vec<u32>, usize>>()
            .map_err(|_| candle_core::Error::Msg("an output went missing".into()))?;
        let lengths: Vec<usize> = wanted.values().map(BTreeSet::len).collect();
        let width = lengths.iter().copied().max().unwrap_or(1);
        let positions: Vec<Vec<Option<u32>>> = wanted
            .iter()
            .map(|(&b, tokens)| {
                let mut row: Vec<Option<u32>> = tokens.iter().map(|&t| query_pos[b][t]).collect();
                row.resize(width, None);
                row
            })
            .collect();
        let keys: Vec<Vec<Option<u32>>> = wanted.keys().map(|&b| key_pos[b].clone()).collect();
        let rope_pos: Vec<Vec<u32>> = positions
            .iter()
            .map(|row| row.iter().map(|p| p.unwrap_or(0)).collect())
            .collect();
        let index = |values: Vec<u32>| {
            let n = values.len();
            Tensor::from_vec(values, n, &self.device)
        };
        Ok(Some(Queries {
            picked: index(
                picked
                    .iter()
                    .map(|&(b, t)| (starts[b] + t) as u32)
                    .collect(),
            )?,
            batch_rows: if wanted.len() == batch {
                None
            } else {
                Some(index(wanted.keys().map(|&b| b as u32).collect())?)
            },
            rope: self.rope.select(&rope_pos)?,
            mask: AttentionMask::new(&positions, &keys, self.config.sliding_window, &self.device)?,
            lengths,
            order: index(order)?,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::load::synthetic;
    use candle_core::DType;

    fn tiny() -> Gemma2 {
        let config = synthetic::preset("tiny").expect("preset");
        let ws = WeightSource::from_var_builder(synthetic::var_builder(DType::F32, &Device::Cpu));
        Gemma2::load(&ws, &config, [1, 2]).expect("load")
    }

    fn rows_of(t: &Tensor) -> Vec<Vec<f32>> {
        t.to_vec2::<f32>().expect("2d")
    }

    #[test]
    fn the_last_block_computes_only_the_tokens_asked_for_and_the_same_values() {
        let model = tiny();
        let tokens = vec![
            vec![5, 17, 300, 42, 9],
            vec![88, 1000],
            vec![7, 7, 123, 4000],
        ];
        let every: Vec<(usize, usize)> = tokens
            .iter()
            .enumerate()
            .flat_map(|(b, row)| (0..row.len()).map(move |t| (b, t)))
            .collect();
        let all = model
            .forward(&tokens, None, false, &every)
            .expect("forward");
        let all = rows_of(&all.hidden.expect("hidden"));
        // Out of order, repeated, and not every row.
        let some = [(2, 3), (0, 1), (0, 4), (2, 3)];
        let step = model.forward(&tokens, None, true, &some).expect("forward");
        let got = rows_of(&step.hidden.expect("hidden"));
        for (at, row) in some.iter().zip(&got) {
            let want = &all[every.iter().position(|e| e == at).expect("listed")];
            let diff = want
                .iter()
                .zip(row)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(diff <= 1e-5, "{at:?}: {diff}");
        }
        // Every token's keys and values are still cached.
        let cache = step.cache.expect("cache");
        assert_eq!(cache.layers.len(), 4);
        assert_eq!(cache.layers[3].0.dim(2).expect("keys"), 5);
        // No outputs: the cache alone.
        let none = model.forward(&tokens, None, true, &[]).expect("forward");
        assert!(none.hidden.is_none() && none.cache.is_some());
    }

    #[test]
    fn an_output_outside_the_rows_is_refused_by_name() {
        let model = tiny();
        let tokens = vec![vec![5, 17], vec![88]];
        let err = model
            .forward(&tokens, None, false, &[(1, 1)])
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains("(1, 1)") && err.contains("[2, 1]"), "{err}");
    }
}
