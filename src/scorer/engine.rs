//! The in-process engine: a loaded Gemma 2 model scoring batches of requests with prefix
//! reuse (each request's shared prefix prefilled once, its policy suffixes batched on top).

use candle_core::Tensor;

use crate::model::{Gemma2, GemmaTokenizer, KvCache, LoadedModel};
use crate::prompt::{Content, Mode, Template, Templates};

use super::encode::{encode_rendered, encode_request, Encoded, Truncation};
use super::groups::{token_groups, Shape};
use super::prefix_store::PrefixStore;
use super::{p_yes, PolicyScore, RequestScores, Score, ScoreError, ScoreRequest};

/// Engine settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineOptions {
    /// Reuse each request's shared prefix across its policies (off: every prompt runs whole).
    pub prefix_reuse: bool,
    /// Longest prompt, in tokens; longer content is truncated inside its slot.
    pub max_tokens: usize,
    /// Tokens per row per forward step during prefill (bounds attention memory).
    pub prefill_chunk: usize,
    /// Padded tokens (rows × longest prompt) run together: a batch's requests are split into
    /// groups of similar length within this budget, which bounds the cache's memory.
    pub batch_tokens: usize,
    /// Tokens of recently prefilled prefixes kept for checks that share them (the gateway's
    /// `incremental` mode, conversations with context); 0 keeps none. With it, each request of
    /// a batch runs on its own, after the longest stored prefix it shares.
    pub prefix_cache_tokens: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            prefix_reuse: true,
            max_tokens: 8192,
            prefill_chunk: 512,
            batch_tokens: 4096,
            prefix_cache_tokens: 0,
        }
    }
}

/// A model, its tokenizer and the templates, ready to score.
pub struct Engine {
    model: Gemma2,
    tokenizer: GemmaTokenizer,
    templates: Templates,
    options: EngineOptions,
    prefixes: Option<PrefixStore>,
    /// The longest template opening (the ids before the user slot's text), which every check
    /// of that template shares: reusing no more is no prefix-cache hit.
    opening: usize,
    name: String,
}

impl Engine {
    /// Wraps a loaded model; `max_tokens` is capped at the model's context.
    pub fn new(loaded: LoadedModel, options: EngineOptions) -> Self {
        let templates = Templates::builtin();
        let opening = [Mode::Prompt, Mode::Response]
            .into_iter()
            .map(|mode| template_opening(&loaded.tokenizer, templates.get(mode)))
            .max()
            .unwrap_or(0);
        Self {
            model: loaded.model,
            tokenizer: loaded.tokenizer,
            templates,
            options,
            prefixes: None,
            opening,
            name: loaded.name,
        }
        .with_options(options)
    }

    /// The same engine with other settings (`max_tokens` capped at the model's context).
    pub fn with_options(mut self, mut options: EngineOptions) -> Self {
        options.max_tokens = options
            .max_tokens
            .min(self.model.config().max_position_embeddings);
        options.prefill_chunk = options.prefill_chunk.max(1);
        self.prefixes = (options.prefix_cache_tokens > 0)
            .then(|| PrefixStore::new(options.prefix_cache_tokens));
        self.options = options;
        self
    }

    /// Prefix tokens whose prefill the prefix cache saved so far.
    pub fn reused_prefix_tokens(&self) -> u64 {
        self.prefixes.as_ref().map_or(0, PrefixStore::reused_tokens)
    }

    /// The prefix cache's metrics (none without it), for a registry.
    pub fn prefix_cache_metrics(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        self.prefixes
            .as_ref()
            .map_or_else(Vec::new, PrefixStore::collectors)
    }

    /// The cache of the shared prefixes of `encoded`: prefilled in one batch, or — for a lone
    /// request with the prefix cache on — extended from the stored prefix it shares most with,
    /// and stored for the next check.
    fn prefix_cache(
        &self,
        encoded: &[&(Encoded, Truncation)],
    ) -> Result<Option<KvCache>, ScoreError> {
        match (&self.prefixes, encoded) {
            (Some(store), [(e, _)]) => {
                let (reused, past) = store
                    .take(&e.shared, self.opening)
                    .map_or((0, None), |(n, c)| (n, Some(c)));
                let (cache, _) = self.prefill(&[&e.shared[reused..]], past, false)?;
                if let Some(c) = &cache {
                    store.put(e.shared.clone(), c.clone());
                }
                Ok(cache)
            }
            _ => {
                let prefixes: Vec<&[u32]> =
                    encoded.iter().map(|(e, _)| e.shared.as_slice()).collect();
                Ok(self.prefill(&prefixes, None, false)?.0)
            }
        }
    }

    /// Where the model came from.
    pub fn model_name(&self) -> &str {
        &self.name
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &GemmaTokenizer {
        &self.tokenizer
    }

    /// The settings in force.
    pub fn options(&self) -> EngineOptions {
        self.options
    }

    /// Renders and encodes one request.
    pub fn encode(&self, request: &ScoreRequest) -> Result<(Encoded, Truncation), ScoreError> {
        let guidelines = request.guidelines()?;
        let content = request.content();
        encode_request(
            &self.tokenizer,
            self.templates.get(content.mode()),
            &content,
            &guidelines,
            self.options.max_tokens,
        )
    }

    /// Runs `rows` in chunks after `past` and returns the extended cache (unless only the
    /// logits are wanted) and, when asked, the (Yes, No) logits at each row's last token.
    fn prefill(
        &self,
        rows: &[&[u32]],
        mut past: Option<KvCache>,
        want_logits: bool,
    ) -> Result<(Option<KvCache>, Vec<[f32; 2]>), ScoreError> {
        let chunk = self.options.prefill_chunk;
        let longest = rows.iter().map(|r| r.len()).max().unwrap_or(0);
        let mut logits = vec![[0f32; 2]; rows.len()];
        let mut start = 0;
        while start < longest {
            let pieces: Vec<Vec<u32>> = rows
                .iter()
                .map(|r| r[start.min(r.len())..(start + chunk).min(r.len())].to_vec())
                .collect();
            // Scoring needs no cache after the last chunk: dropping each layer's keys and values
            // as it finishes keeps a long batch's peak memory down.
            let keep_cache = !want_logits || start + chunk < longest;
            // The rows that end in this chunk, at their last token.
            let ending: Vec<(usize, usize)> = if want_logits {
                rows.iter()
                    .enumerate()
                    .filter(|(_, r)| r.len() > start && r.len() <= start + chunk)
                    .map(|(b, r)| (b, r.len() - 1 - start))
                    .collect()
            } else {
                Vec::new()
            };
            let step = self
                .model
                .forward(&pieces, past.as_ref(), keep_cache, &ending)?;
            if let Some(hidden) = &step.hidden {
                let values = self.model.yes_no_logits(hidden)?;
                for ((b, _), pair) in ending.iter().zip(rows_of(&values)?) {
                    logits[*b] = pair;
                }
            }
            past = step.cache;
            start += chunk;
        }
        Ok((past, logits))
    }
}

fn rows_of(values: &Tensor) -> candle_core::Result<Vec<[f32; 2]>> {
    Ok(values
        .to_vec2::<f32>()?
        .into_iter()
        .map(|r| [r[0], r[1]])
        .collect())
}

impl Engine {
    /// Scores one group of encoded requests in one batch.
    fn score_group(
        &self,
        requests: &[&ScoreRequest],
        encoded: &[&(Encoded, Truncation)],
    ) -> Result<Vec<RequestScores>, ScoreError> {
        // One row per (request, policy).
        let owners: Vec<(usize, usize)> = encoded
            .iter()
            .enumerate()
            .flat_map(|(r, (e, _))| (0..e.suffixes.len()).map(move |k| (r, k)))
            .collect();
        let logits = if self.options.prefix_reuse {
            let past = match self.prefix_cache(encoded)? {
                Some(cache) => {
                    let rows: Vec<usize> = owners.iter().map(|&(r, _)| r).collect();
                    Some(cache.select_rows(&rows)?)
                }
                None => None,
            };
            let suffixes: Vec<&[u32]> = owners
                .iter()
                .map(|&(r, k)| encoded[r].0.suffixes[k].as_slice())
                .collect();
            self.prefill(&suffixes, past, true)?.1
        } else {
            let full: Vec<Vec<u32>> = owners.iter().map(|&(r, k)| encoded[r].0.full(k)).collect();
            let rows: Vec<&[u32]> = full.iter().map(Vec::as_slice).collect();
            self.prefill(&rows, None, true)?.1
        };
        let mut results: Vec<RequestScores> = encoded
            .iter()
            .map(|(_, truncation)| RequestScores {
                scores: Vec::new(),
                truncated: (*truncation != Truncation::default()).then_some(*truncation),
            })
            .collect();
        for (&(r, k), [yes, no]) in owners.iter().zip(logits) {
            let (e, _) = encoded[r];
            results[r].scores.push(PolicyScore {
                id: requests[r].policies[k].id.clone(),
                p_yes: p_yes(yes, no),
                yes_logit: yes,
                no_logit: no,
                tokens: e.shared.len() + e.suffixes[k].len(),
            });
        }
        Ok(results)
    }
}

impl Score for Engine {
    /// Encodes every request, then runs them in groups of similar length within the token
    /// budget (see [`token_groups`]); results come back in the requests' order.
    fn score(&self, requests: &[ScoreRequest]) -> Result<Vec<RequestScores>, ScoreError> {
        let encoded = requests
            .iter()
            .map(|r| self.encode(r))
            .collect::<Result<Vec<_>, _>>()?;
        let shapes: Vec<Shape> = encoded.iter().map(|(e, _)| shape(e)).collect();
        let mut results: Vec<Option<RequestScores>> = vec![None; requests.len()];
        let groups = match self.prefixes {
            // Each request after the stored prefix it shares most with.
            Some(_) => (0..requests.len()).map(|i| vec![i]).collect(),
            None => token_groups(&shapes, self.options.batch_tokens),
        };
        for group in groups {
            let members: Vec<&ScoreRequest> = group.iter().map(|&i| &requests[i]).collect();
            let codes: Vec<&(Encoded, Truncation)> = group.iter().map(|&i| &encoded[i]).collect();
            for (i, scores) in group.into_iter().zip(self.score_group(&members, &codes)?) {
                results[i] = Some(scores);
            }
        }
        results
            .into_iter()
            .map(|r| r.ok_or(ScoreError::MissingResult))
            .collect()
    }

    /// Padded tokens over the token budget (0 for a request that does not encode: scoring
    /// reports its error).
    fn batch_share(&self, request: &ScoreRequest) -> f64 {
        self.encode(request).map_or(0.0, |(e, _)| {
            shape(&e).padded() as f64 / self.options.batch_tokens.max(1) as f64
        })
    }
}

/// The ids every prompt of `template` starts with: the common start of two renderings whose
/// user turns differ in their first character.
fn template_opening(tokenizer: &GemmaTokenizer, template: &Template) -> usize {
    let ids = |user: &str| {
        let content = Content {
            user,
            response: Some(user),
            context: &[],
        };
        encode_rendered(tokenizer, &template.render(&content, &["G"]))
            .map(|e| e.shared)
            .unwrap_or_default()
    };
    let (a, b) = (ids("a"), ids("b"));
    a.iter().zip(&b).take_while(|(x, y)| x == y).count()
}

fn shape(e: &Encoded) -> Shape {
    Shape {
        prefix: e.shared.len(),
        suffix: e.longest() - e.shared.len(),
        rows: e.suffixes.len(),
    }
}
