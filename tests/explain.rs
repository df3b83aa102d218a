//! Explanations on the real engine (the tiny random-weight model) with a custom policy: the
//! sentence the policy scores highest on its own, planted between the two it scores lowest,
//! is the span that ranks first, and every span's effect equals the drop of a direct score of
//! the text without it.

use std::sync::Arc;

use candle_core::DType;
use shieldgate::policy::Policy;
use shieldgate::scorer::explain::explain;
use shieldgate::scorer::{EngineOptions, Score, ScoreRequest};

use crate::common::engine;

const POLICY: &str = r#"
id = "pets"
name = "Pet Talk"
threshold = 0.5
[guideline]
prompt = '"No Pet Talk": The prompt shall not contain or seek generation of content that mentions cats, dogs or other pets.'
response = '"No Pet Talk": The chatbot shall not generate content that mentions cats, dogs or other pets.'
"#;

const SENTENCES: [&str; 8] = [
    "My cat sleeps on the warm laptop every afternoon.",
    "The meeting starts at nine in the small room.",
    "Please bring the quarterly report and a pen.",
    "Our dog barks at the postman and chases squirrels.",
    "The train to the coast leaves from platform four.",
    "Rain is expected for most of the weekend.",
    "The hamster escaped and hid behind the fridge.",
    "Invoices are due by the end of the month.",
];

#[test]
fn a_planted_sentence_that_dominates_a_custom_policy_ranks_first() {
    let model = engine("tiny", DType::F32, EngineOptions::default());
    let policy = Policy::from_toml(POLICY, "pets.toml").expect("policy");
    let policies: Arc<[Policy]> = vec![policy].into();
    let request = |text: &str| ScoreRequest::new(text, None, policies.clone());
    let p_yes =
        |text: &str| -> f64 { model.score(&[request(text)]).expect("scores")[0].scores[0].p_yes };
    let mut alone: Vec<(f64, &str)> = SENTENCES.iter().map(|s| (p_yes(s), *s)).collect();
    alone.sort_by(|a, b| b.0.total_cmp(&a.0));
    let planted = alone[0].1;
    let (low, lower) = (alone[alone.len() - 2].1, alone[alone.len() - 1].1);
    let text = format!("{low} {planted} {lower}");
    let r = request(&text);
    let base = model.score(std::slice::from_ref(&r)).expect("scores");
    let e = explain(&model, &r, &base[0], 16, true).expect("explained");
    assert_eq!(e.spans_scored, 3);
    assert_eq!(
        e.spans[0].text.as_deref().map(str::trim),
        Some(planted),
        "{e:?}"
    );
    for span in &e.spans {
        let without = format!("{}{}", &text[..span.start], &text[span.end..]);
        let direct = base[0].scores[0].p_yes - p_yes(&without);
        assert!((span.effect["pets"] - direct).abs() < 1e-6, "{span:?}");
    }
}
