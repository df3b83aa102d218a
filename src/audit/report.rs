//! The audit's HTML report: one self-contained page (inline CSS and SVG, no scripts, nothing
//! fetched) that a trust-and-safety lead can open in any browser: the counts, each category's
//! flag rate and score histogram, and the top-scoring turns.

use std::fmt::Write;

use serde_json::Value;

use super::summary::Summary;
use crate::html::escape;

/// A bar chart of the ten P(Yes) deciles.
fn histogram_svg(bins: &[u64; 10]) -> String {
    let max = bins.iter().copied().max().unwrap_or(0).max(1) as f64;
    let (w, h, bar) = (320.0, 120.0, 28.0);
    let mut svg = format!(
        "<svg viewBox=\"0 0 {w} {}\" width=\"{w}\" height=\"{}\" role=\"img\" aria-label=\"P(Yes) histogram\">",
        h + 20.0,
        h + 20.0
    );
    for (i, &n) in bins.iter().enumerate() {
        let bh = h * n as f64 / max;
        let x = 4.0 + i as f64 * (bar + 4.0);
        let fill = if i >= 5 { "#c0392b" } else { "#7f8c8d" };
        let _ = write!(
            svg,
            "<rect x=\"{x}\" y=\"{}\" width=\"{bar}\" height=\"{bh}\" fill=\"{fill}\"><title>{:.1}–{:.1}: {n}</title></rect>\
             <text x=\"{}\" y=\"{}\" font-size=\"9\" text-anchor=\"middle\">{:.1}</text>",
            h - bh,
            i as f64 / 10.0,
            (i + 1) as f64 / 10.0,
            x + bar / 2.0,
            h + 12.0,
            i as f64 / 10.0
        );
    }
    svg.push_str("</svg>");
    svg
}

/// The whole page.
pub fn html(summary: &Summary, title: &str) -> String {
    let c = &summary.counts;
    let mut page = String::new();
    let _ = write!(
        page,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>\
         body{{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1100px}}\
         table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}\
         .cats{{display:flex;flex-wrap:wrap;gap:2em}}.cat{{border:1px solid #ddd;padding:1em;border-radius:6px}}\
         .rate{{background:#eee;width:320px;height:14px}}.rate div{{background:#c0392b;height:14px}}\
         </style></head><body><h1>{}</h1>",
        escape(title),
        escape(title)
    );
    let _ = write!(
        page,
        "<h2>Counts</h2><table><tr><th>lines read</th><td>{}</td></tr><tr><th>lines scored</th><td>{}</td></tr>\
         <tr><th>lines skipped (nothing to score)</th><td>{}</td></tr><tr><th>lines with errors (see errors.jsonl)</th><td>{}</td></tr>\
         <tr><th>lines of other shards</th><td>{}</td></tr><tr><th>turns scored</th><td>{}</td></tr>\
         <tr><th>turns flagged (any category)</th><td>{}</td></tr><tr><th>turns with errors</th><td>{}</td></tr></table>",
        c.lines_read,
        c.lines_scored,
        c.lines_skipped,
        c.lines_errored,
        c.lines_other_shards,
        c.turns_scored,
        c.turns_flagged,
        c.turns_errored
    );
    page.push_str("<h2>Categories</h2><div class=\"cats\">");
    for (id, cat) in &summary.categories {
        let _ = write!(
            page,
            "<div class=\"cat\"><h3>{}</h3><p>{} of {} turns flagged ({:.1}%)</p>\
             <div class=\"rate\"><div style=\"width:{:.1}%\"></div></div><p>P(Yes) distribution</p>{}{}</div>",
            escape(id),
            cat.flagged,
            c.turns_scored,
            100.0 * cat.flag_rate,
            100.0 * cat.flag_rate,
            histogram_svg(&cat.histogram),
            examples(id, &cat.examples)
        );
    }
    page.push_str("</div>");
    if !summary.pii_turns.is_empty() {
        page.push_str(
            "<h2>Personal data and secrets</h2><table><tr><th>kind</th><th>turns</th></tr>",
        );
        for (kind, turns) in &summary.pii_turns {
            let _ = write!(page, "<tr><td>{}</td><td>{turns}</td></tr>", escape(kind));
        }
        page.push_str("</table>");
    }
    page.push_str("<h2>Highest-scoring turns</h2><table><tr><th>conversation</th><th>file:line</th><th>turn</th><th>role</th><th>violated</th><th>highest P(Yes)</th><th>strongest span</th></tr>");
    for item in &summary.top {
        let text = |k: &str| field(item, k);
        let best = item
            .get("scores")
            .and_then(Value::as_object)
            .and_then(|m| m.values().filter_map(Value::as_f64).reduce(f64::max))
            .unwrap_or(0.0);
        let violated = item
            .get("violated")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        let _ = write!(
            page,
            "<tr><td>{}</td><td>{}:{}</td><td>{}</td><td>{}</td><td>{}</td><td>{best:.3}</td>\
             <td>{}</td></tr>",
            escape(&text("conversation")),
            escape(&text("file")),
            escape(&text("line")),
            escape(&text("turn")),
            escape(&text("role")),
            escape(&violated),
            strongest_span(item, None)
        );
    }
    page.push_str("</table></body></html>\n");
    page
}

/// A category's highest-scoring flagged turns (HTML), each with its strongest span for the
/// category when it was explained.
fn examples(id: &str, items: &[Value]) -> String {
    if items.is_empty() {
        return String::new();
    }
    let mut list = String::from("<p>Highest-scoring flagged turns</p><ol class=\"examples\">");
    for item in items {
        let score = item
            .pointer(&format!("/scores/{id}"))
            .and_then(Value::as_f64);
        let _ = write!(
            list,
            "<li>{} turn {} ({}): {:.3} {}</li>",
            escape(&field(item, "conversation")),
            escape(&field(item, "turn")),
            escape(&field(item, "role")),
            score.unwrap_or(0.0),
            strongest_span(item, Some(id))
        );
    }
    list.push_str("</ol>");
    list
}

/// A field of a results line as text.
fn field(item: &Value, key: &str) -> String {
    match item.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None => String::new(),
    }
}

/// Characters of the turn shown on each side of a marked span.
const CONTEXT: usize = 60;

/// An explained turn's strongest span (HTML) — for `category`, or over every policy — marked in
/// its text when the results hold the text, else its byte offsets; with its effect and that
/// policy.
fn strongest_span(item: &Value, category: Option<&str>) -> String {
    let effect_of = |span: &Value, id: &str| span["effect"][id].as_f64();
    let spans = item.pointer("/explanation/spans").and_then(Value::as_array);
    let span = match category {
        // Spans come strongest (over every policy) first.
        None => spans.and_then(|s| s.first()),
        Some(id) => spans.and_then(|s| {
            s.iter()
                .filter(|span| effect_of(span, id).is_some())
                .max_by(|a, b| {
                    effect_of(a, id)
                        .unwrap_or(0.0)
                        .total_cmp(&effect_of(b, id).unwrap_or(0.0))
                })
        }),
    };
    let Some(span) = span else {
        return String::new();
    };
    let offsets = (span["start"].as_u64(), span["end"].as_u64());
    let (Some(start), Some(end)) = offsets else {
        return String::new();
    };
    let (start, end) = (start as usize, end as usize);
    let strongest = span["effect"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(id, _)| category.is_none_or(|c| c == id.as_str()))
        .filter_map(|(id, v)| Some((id, v.as_f64()?)))
        .max_by(|a, b| a.1.total_cmp(&b.1));
    let effect = strongest.map_or_else(String::new, |(id, v)| format!(" ({v:+.3} {})", escape(id)));
    let text = item.get("text").and_then(Value::as_str);
    let marked = match text.and_then(|t| Some((t.get(..start)?, t.get(start..end)?, t.get(end..)?)))
    {
        Some((before, inside, after)) => {
            let skip = before.chars().count().saturating_sub(CONTEXT);
            let before: String = before.chars().skip(skip).collect();
            let after: String = after.chars().take(CONTEXT).collect();
            format!(
                "{}{}<mark>{}</mark>{}{}",
                if skip > 0 { "…" } else { "" },
                escape(&before),
                escape(inside),
                escape(&after),
                if after.len() < text.map_or(0, str::len) - end {
                    "…"
                } else {
                    ""
                }
            )
        }
        None => format!("bytes {start}–{end}"),
    };
    format!("{marked}{effect}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_strongest_span_is_marked_in_its_text_or_named_by_offsets() {
        let span =
            serde_json::json!({"start": 6, "end": 10, "effect": {"hate": 0.5, "sexual": -0.1}});
        let with_text = serde_json::json!({"text": "hello <b>x</b> there",
            "explanation": {"spans": [span]}});
        assert_eq!(
            strongest_span(&with_text, None),
            "hello <mark>&lt;b&gt;x</mark>&lt;/b&gt; there (+0.500 hate)"
        );
        let without = serde_json::json!({"explanation": {"spans": [span]}});
        assert_eq!(strongest_span(&without, None), "bytes 6–10 (+0.500 hate)");
        let long = format!("{}bad{}", "a".repeat(100), "z".repeat(100));
        let item = serde_json::json!({"text": long, "explanation": {"spans": [
            {"start": 100, "end": 103, "effect": {"hate": 0.2}}]}});
        let shown = strongest_span(&item, None);
        assert!(
            shown.starts_with('…') && shown.contains("<mark>bad</mark>"),
            "{shown}"
        );
        assert!(shown.contains("z…"), "{shown}");
        assert_eq!(strongest_span(&serde_json::json!({}), None), "");
    }

    #[test]
    fn a_category_marks_the_span_that_raises_it_most() {
        let item = serde_json::json!({"conversation": "c1", "turn": 2, "role": "user",
            "scores": {"hate": 0.7, "sexual": 0.9},
            "text": "one. two. three.", "explanation": {"spans": [
                {"start": 0, "end": 5, "effect": {"hate": 0.1, "sexual": 0.6}},
                {"start": 5, "end": 10, "effect": {"hate": 0.3, "sexual": 0.0}}]}});
        assert_eq!(
            strongest_span(&item, Some("hate")),
            "one. <mark>two. </mark>three. (+0.300 hate)"
        );
        assert!(strongest_span(&item, None).contains("<mark>one. </mark>"));
        let list = examples("hate", &[item]);
        assert!(
            list.contains("<li>c1 turn 2 (user): 0.700 one. <mark>two. </mark>"),
            "{list}"
        );
        assert_eq!(examples("hate", &[]), "");
    }

    #[test]
    fn the_histogram_has_ten_bars() {
        let svg = histogram_svg(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 3]);
        assert_eq!(svg.matches("<rect").count(), 10);
        assert!(svg.contains("0.9–1.0: 3"));
    }
}
