//! The Gemma 2 decoder, written for scoring: the KV cache is passed in and returned, rows of a
//! batch may differ in length and in cached prefix, and only the Yes/No logits are computed.

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
        let elementwise = |f: &dyn Fn() -> Result<Tensor>| profile::timed(Phase::Elementwise, f);
        let h = elementwise(&|| self.input_norm.forward(x))?;
        let (h, kv) = self.attention.forward(&h, rows, rope, mask, past)?;
        let x = elementwise(&|| self.post_attention_norm.add_to(x, &h))?;
        let h = self
            .mlp
            .forward(&elementwise(&|| self.pre_ffn_norm.forward(&x))?)?;
        let x = elementwise(&|| self.post_ffn_norm.add_to(&x, &h))?;
        Ok((x, kv))
    }
}

/// The output of one forward step.
pub struct Step {
    /// `[batch, tokens, hidden]` hidden states after the last block (before the final norm).
    pub hidden: Tensor,
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
    /// row `b` of `past`, or from position 0 without a cache. Rows are padded internally.
    /// Without `keep_cache` each layer's keys and values are dropped as soon as the layer is
    /// done, instead of all being held until the step returns.
    pub fn forward(
        &self,
        tokens: &[Vec<u32>],
        past: Option<&KvCache>,
        keep_cache: bool,
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

        // The blocks run on the real tokens only (see `Rows`).
        let mut x = (self.embed.rows(&ids)? * (self.config.hidden_size as f64).sqrt())?;
        let mut layers = Vec::with_capacity(self.blocks.len());
        for (i, block) in self.blocks.iter().enumerate() {
            let layer_past = past.map(|p| p.layer(i)).transpose()?;
            let (next, kv) = block.forward(&x, rows, (&cos, &sin), &mask, layer_past.as_ref())?;
            x = next;
            if keep_cache {
                layers.push(kv);
            }
        }
        Ok(Step {
            hidden: rows.unpack(&x)?,
            cache: keep_cache.then_some(KvCache {
                layers,
                selected: None,
                positions: key_pos,
            }),
        })
    }

    /// Final soft-capped (Yes, No) logits in f32, `[at.len(), 2]`, at the `(row, token)`
    /// positions `at` of `hidden` (`[batch, tokens, hidden]`).
    pub fn yes_no_logits(&self, hidden: &Tensor, at: &[(usize, usize)]) -> Result<Tensor> {
        let (batch, width, h) = hidden.dims3()?;
        if at.iter().any(|&(b, t)| b >= batch || t >= width) {
            candle_core::bail!("bad positions {at:?} for {batch} rows of {width}")
        }
        let flat: Vec<u32> = at.iter().map(|&(b, t)| (b * width + t) as u32).collect();
        let rows = Tensor::from_vec(flat, at.len(), &self.device)?;
        let last = hidden.reshape((batch * width, h))?.index_select(&rows, 0)?;
        self.head.forward(&last)
    }
}
