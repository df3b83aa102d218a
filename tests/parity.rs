//! Parity with Hugging Face transformers: token ids identical, logits within 1e-4 (f32), and
//! the engine's shortcuts (prefix reuse, batching) equal to the plain forward.

use candle_core::DType;
use shieldgate::scorer::{Engine, EngineOptions, RequestScores, Score, ScoreRequest};

use crate::common::{self, Case, Fixture};

/// The fixture's cases grouped into requests: one per (sample, mode), policies in file order.
pub fn requests(fixture: &Fixture) -> Vec<(ScoreRequest, &[Case])> {
    fixture
        .cases
        .chunk_by(|a, b| a.sample == b.sample && a.mode == b.mode)
        .map(|group| {
            let first = &group[0];
            let response =
                (first.mode == "response").then(|| first.response.clone().unwrap_or_default());
            (common::request(&first.user, response.as_deref()), group)
        })
        .collect()
}

fn max_logit_delta(fixture: &Fixture, preset: &str, scored: &[RequestScores]) -> f32 {
    let reference = &fixture.models[preset].yes_no_logits;
    let ours = scored
        .iter()
        .flat_map(|r| r.scores.iter().map(|s| [s.yes_logit, s.no_logit]));
    reference
        .iter()
        .zip(ours)
        .map(|(r, o)| (r[0] - o[0]).abs().max((r[1] - o[1]).abs()))
        .fold(0.0, f32::max)
}

fn score_all(engine: &Engine, fixture: &Fixture) -> Vec<RequestScores> {
    let batch: Vec<ScoreRequest> = requests(fixture).into_iter().map(|(r, _)| r).collect();
    let scored = engine.score(&batch).expect("scores");
    assert_eq!(
        scored.iter().map(|r| r.scores.len()).sum::<usize>(),
        fixture.cases.len()
    );
    scored
}

#[test]
fn rendering_and_token_ids_match_the_reference_tokenizer() {
    let fixture = common::fixture();
    let engine = common::engine("tiny", DType::F32, EngineOptions::default());
    assert_eq!(engine.tokenizer().yes, fixture.yes_id);
    assert_eq!(engine.tokenizer().no, fixture.no_id);
    for (request, group) in requests(&fixture) {
        let (encoded, truncation) = engine.encode(&request).expect("encodes");
        assert_eq!(truncation, Default::default());
        for (k, case) in group.iter().enumerate() {
            assert_eq!(request.policies[k].id, case.policy);
            assert_eq!(
                encoded.full(k),
                case.ids,
                "ids differ for sample {} {} {}",
                case.sample,
                case.mode,
                case.policy
            );
        }
    }
}

#[test]
fn f32_logits_match_transformers_on_both_shapes() {
    let fixture = common::fixture();
    for preset in ["tiny", "odd"] {
        for prefix_reuse in [true, false] {
            let options = EngineOptions {
                prefix_reuse,
                ..EngineOptions::default()
            };
            let engine = common::engine(preset, DType::F32, options);
            let delta = max_logit_delta(&fixture, preset, &score_all(&engine, &fixture));
            eprintln!("{preset} prefix reuse {prefix_reuse}: f32 max |Δlogit| {delta}");
            assert!(
                delta <= 1e-4,
                "{preset} (prefix reuse {prefix_reuse}): max |Δlogit| {delta}"
            );
        }
    }
}

#[test]
fn small_prefill_chunks_and_sliding_windows_match_transformers() {
    // Chunks of 7 tokens exercise the cache across many steps; the long sample runs past both
    // presets' sliding windows.
    let fixture = common::fixture();
    let options = EngineOptions {
        prefill_chunk: 7,
        ..EngineOptions::default()
    };
    let engine = common::engine("odd", DType::F32, options);
    let delta = max_logit_delta(&fixture, "odd", &score_all(&engine, &fixture));
    assert!(delta <= 1e-4, "max |Δlogit| {delta}");
}

#[test]
fn bf16_stays_close_to_the_f32_reference() {
    let fixture = common::fixture();
    let engine = common::engine("tiny", DType::BF16, EngineOptions::default());
    let delta = max_logit_delta(&fixture, "tiny", &score_all(&engine, &fixture));
    // Measured 0.061 on 2026-11-27 (README, "Parity").
    assert!(delta <= 0.15, "bf16 max |Δlogit| {delta}");
    eprintln!("bf16 max |Δlogit| vs transformers f32: {delta}");
}

/// The same policies, token counts and (within `tolerance`) logits.
fn assert_same_scores(want: &RequestScores, got: &RequestScores, tolerance: f32, context: &str) {
    assert_eq!(want.scores.len(), got.scores.len(), "{context}");
    for (a, b) in want.scores.iter().zip(&got.scores) {
        assert_eq!((&a.id, a.tokens), (&b.id, b.tokens), "{context}");
        assert!(
            (a.yes_logit - b.yes_logit).abs() <= tolerance
                && (a.no_logit - b.no_logit).abs() <= tolerance,
            "{context}: {} {:?} vs {:?}",
            a.id,
            (a.yes_logit, a.no_logit),
            (b.yes_logit, b.no_logit)
        );
    }
}

#[test]
fn a_batch_scores_exactly_like_each_request_alone() {
    let fixture = common::fixture();
    let engine = common::engine("tiny", DType::F32, EngineOptions::default());
    // One padded batch of every request, and the same batch split by a tiny token budget into
    // groups run one after another (sorted by length): both in the requests' order.
    for batch_tokens in [usize::MAX, 1] {
        let batched = common::engine(
            "tiny",
            DType::F32,
            EngineOptions {
                batch_tokens,
                ..EngineOptions::default()
            },
        );
        let together = score_all(&batched, &fixture);
        for ((request, _), batched) in requests(&fixture).into_iter().zip(&together) {
            let alone = engine
                .score(std::slice::from_ref(&request))
                .expect("scores");
            assert_same_scores(&alone[0], batched, 1e-5, &format!("budget {batch_tokens}"));
        }
    }
}

#[test]
fn a_request_takes_its_padded_tokens_share_of_a_batch() {
    let engine = common::engine(
        "tiny",
        DType::F32,
        EngineOptions {
            batch_tokens: 1000,
            ..EngineOptions::default()
        },
    );
    let short = common::request("How do I make my neighbour stop parking here?", None);
    let long = common::request(&"Tell me more about the weather. ".repeat(40), None);
    let (e, _) = engine.encode(&short).expect("encodes");
    let expected = (e.suffixes.len() * e.longest()) as f64 / 1000.0;
    assert_eq!(engine.batch_share(&short), expected);
    assert!(engine.batch_share(&long) > 1.0, "runs alone");
    let cached = shieldgate::scorer::cache::CachedScorer::new(
        std::sync::Arc::new(engine),
        std::num::NonZeroUsize::MIN,
        "m",
    );
    assert_eq!(
        cached.batch_share(&short),
        expected,
        "the cache passes the engine's share on"
    );
}

#[test]
fn a_growing_answer_reuses_the_stored_prefix_and_scores_the_same() {
    let plain = common::engine("tiny", DType::F32, EngineOptions::default());
    let cached = common::engine(
        "tiny",
        DType::F32,
        EngineOptions {
            prefix_cache_tokens: 4096,
            ..EngineOptions::default()
        },
    );
    let user = "Tell me a story about a fox.";
    let mut answer = String::from("Once upon a time");
    let mut reused = 0;
    for (step, more) in [
        " there was a fox",
        " who lived in the woods,",
        " and it was clever.",
    ]
    .into_iter()
    .enumerate()
    {
        let request = common::request(user, Some(&answer));
        let want = plain.score(std::slice::from_ref(&request)).expect("scores");
        let got = cached
            .score(std::slice::from_ref(&request))
            .expect("scores");
        assert_same_scores(&want[0], &got[0], 1e-4, &format!("step {step}"));
        let now = cached.reused_prefix_tokens();
        if step > 0 {
            // The template, the user turn and the answer so far were not prefilled again.
            let user_tokens = cached.tokenizer().encode(user).expect("ids").len() as u64;
            assert!(now - reused > user_tokens, "step {step}: {}", now - reused);
        }
        reused = now;
        answer.push_str(more);
    }
    // The same check again: its whole shared prefix is stored.
    let request = common::request(user, Some("Once upon a time there was a fox"));
    let (encoded, _) = cached.encode(&request).expect("encodes");
    let before = cached.reused_prefix_tokens();
    cached
        .score(std::slice::from_ref(&request))
        .expect("scores");
    assert_eq!(
        cached.reused_prefix_tokens() - before,
        encoded.shared.len() as u64
    );
    assert_eq!(plain.reused_prefix_tokens(), 0, "off by default");
}
