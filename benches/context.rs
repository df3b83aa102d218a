//! Conversation benchmark: a 10-turn conversation checked turn by turn as the gateway checks it
//! with `[proxy] context_turns = 8` (each user turn after the turns before it, each answer
//! after its user turn and the turns before that), without and with the engine's prefix cache
//! (`[model] prefix_cache_tokens`); then the same turns as plain single-turn checks, without
//! and with it, to show that the cache costs them nothing. 4 policies, 2B-shaped random model.
//!
//! Run: `scripts/fetch-tokenizer.sh && cargo bench --bench context`
//! Environment: SHIELDGATE_BENCH_PRESET (2b; tiny for a smoke run), SHIELDGATE_BENCH_DTYPE
//! (q8_0), SHIELDGATE_BENCH_CONTEXT (8).

// The binary's allocator, so that the figures are the binary's.
#[global_allocator]
static ALLOC: shieldgate::allocator::Split = shieldgate::allocator::Split;

mod common;

use std::sync::Arc;
use std::time::Instant;

use shieldgate::policy::{for_answers, Policy};
use shieldgate::prompt::{ContextTurn, Role};
use shieldgate::scorer::{Engine, EngineOptions, Score, ScoreRequest};

use common::{cpu_name, env_or, number};

/// Five user turns and five answers of everyday length.
const TURNS: [&str; 10] = [
    "I'm planning a week-long trip to the mountains in early spring with two friends. What should we think about before we book anything?",
    "Early spring in the mountains can be unpredictable, so plan for snow at altitude and mud lower down. Check which huts and trails are open, book refundable rooms, and make sure everyone has waterproof boots and layers. Agree on a budget and a rough daily distance before you commit.",
    "Good points. One of my friends has never hiked more than a few kilometres. How long should our daily stages be so that nobody is miserable?",
    "Start with stages of eight to twelve kilometres and no more than six hundred metres of climbing, then adjust after the first two days. Put the longest day in the middle of the trip, keep an easy day in reserve for bad weather, and let the slowest walker set the pace.",
    "That makes sense. What food should we carry for the days between huts, given that we want to keep our packs light?",
    "Carry calorie-dense food that does not spoil: oats, nuts, dried fruit, hard cheese, flatbreads and some chocolate. Plan roughly four hundred grams of dry food per person per day, repack everything into bags to cut weight, and buy fresh food wherever the route passes a village.",
    "We also want to take some photos at sunrise. Is it safe to walk up to a viewpoint in the dark?",
    "It can be, on a trail you already walked in daylight. Take a headlamp with spare batteries, tell someone where you are going, check the forecast the evening before and turn back if the path is icy or the fog rolls in. Sunrise is never worth a fall.",
    "Last question: what should be in our first-aid kit for a week like this?",
    "Blister plasters and tape, a small pair of scissors, bandages and gauze, painkillers, antihistamines, an elastic bandage for sprains, a foil blanket, rehydration salts and any personal medication. Everyone should know where the kit is, and one person should check it every morning.",
];

/// One check as the gateway makes it: a user turn, or an answer after its user turn, with up
/// to `context` turns before (none for plain checks).
fn check(k: usize, context: Option<usize>, engine_policies: &Policies) -> ScoreRequest {
    let turn = |i: usize| {
        let role = if i.is_multiple_of(2) {
            Role::User
        } else {
            Role::Assistant
        };
        ContextTurn::new(role, TURNS[i])
    };
    let (user_at, response) = match k % 2 {
        0 => (k, None),
        _ => (k - 1, Some(TURNS[k].to_string())),
    };
    let earlier = context.map_or(0, |n| n.min(user_at));
    let policies = match response {
        Some(_) => engine_policies.answers.clone(),
        None => engine_policies.prompts.clone(),
    };
    ScoreRequest {
        context: (user_at - earlier..user_at).map(turn).collect(),
        ..ScoreRequest::new(TURNS[user_at], response, policies)
    }
}

/// The policies of user turns and of answers.
struct Policies {
    prompts: Arc<[Policy]>,
    answers: Arc<[Policy]>,
}

/// One check's time and tokens.
struct Timed {
    seconds: f64,
    tokens: usize,
    prefilled: usize,
}

fn timed(engine: &Engine, request: &ScoreRequest) -> Timed {
    let (encoded, _) = engine
        .encode(request)
        .unwrap_or_else(|e| common::fail(&format!("cannot encode: {e}")));
    let tokens = encoded.shared.len() + encoded.suffixes.iter().map(Vec::len).sum::<usize>();
    let before = engine.reused_prefix_tokens();
    let started = Instant::now();
    if let Err(e) = engine.score(std::slice::from_ref(request)) {
        common::fail(&format!("scoring failed: {e}"));
    }
    let reused = (engine.reused_prefix_tokens() - before) as usize;
    Timed {
        seconds: started.elapsed().as_secs_f64(),
        tokens,
        prefilled: tokens - reused,
    }
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let values: Vec<f64> = values.collect();
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

fn main() {
    let preset = env_or("SHIELDGATE_BENCH_PRESET", "2b");
    let precision = env_or("SHIELDGATE_BENCH_DTYPE", "q8_0");
    let context = number("SHIELDGATE_BENCH_CONTEXT", 8);
    let plain = common::engine(&preset, &precision);
    let prompts = common::policies();
    let policies = Policies {
        answers: for_answers(&prompts),
        prompts,
    };
    println!(
        "shieldgate conversation checks: synthetic:{preset} {precision}, 4 policies, a 10-turn conversation checked turn by turn, {} threads, {}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu_name()
    );
    println!();
    // The same checks on two engines, one with the prefix cache, taking turns check by check
    // so that both meet the machine in the same state.
    let mut cached = common::engine(&preset, &precision);
    let with_cache = EngineOptions {
        prefix_cache_tokens: 16384,
        ..cached.options()
    };
    let mut ratios = Vec::new();
    for (name, context) in [
        (format!("context {context}"), Some(context)),
        ("single turn".to_string(), None),
    ] {
        let checks: Vec<ScoreRequest> = (0..TURNS.len())
            .map(|k| check(k, context, &policies))
            .collect();
        // An empty cache for each series.
        cached = cached.with_options(with_cache);
        let mut series = (Vec::new(), Vec::new());
        for request in &checks {
            series.0.push(timed(&plain, request));
            series.1.push(timed(&cached, request));
        }
        println!("{name}, prefix cache off → 16384 tokens:");
        println!();
        println!("| check | judged | prompt tokens (4 policies) | prefilled | seconds |");
        println!("|---|---|---|---|---|");
        for (k, (off, on)) in series.0.iter().zip(&series.1).enumerate() {
            println!(
                "| {} | {} | {} | {} → {} | {:.2} → {:.2} |",
                k + 1,
                if k % 2 == 0 { "user turn" } else { "answer" },
                off.tokens,
                off.prefilled,
                on.prefilled,
                off.seconds,
                on.seconds
            );
        }
        let (off, on) = (
            mean(series.0.iter().map(|t| t.seconds)),
            mean(series.1.iter().map(|t| t.seconds)),
        );
        let prefilled = |s: &[Timed]| s.iter().map(|t| t.prefilled).sum::<usize>();
        println!(
            "| mean | | | {} → {} in all | {off:.2} → {on:.2} |",
            prefilled(&series.0),
            prefilled(&series.1)
        );
        println!();
        ratios.push((name, on / off));
    }
    for (name, ratio) in ratios {
        println!("{name}: with the cache / without {ratio:.2}×");
    }
}
