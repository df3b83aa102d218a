//! The tuning report: one self-contained page (inline CSS and SVG, no scripts) with, per
//! category, the ROC and precision-recall curves with the current and suggested thresholds
//! marked, the areas with their intervals, confusion matrices, and the what-if flag rate on
//! traffic.

use std::fmt::Write;

use super::analysis::{AtThreshold, CalibrationReport, CategoryReport};
use super::calibration::{Calibration, Reliability};
use super::context::Comparison;
use super::pii::KindShare;
use crate::html::escape;

const W: f64 = 260.0;
const H: f64 = 200.0;
const PAD: f64 = 34.0;

/// A marked point on a chart.
struct Mark {
    at: (f64, f64),
    label: &'static str,
    color: &'static str,
}

/// A unit-square line chart with axis labels and marked points.
fn chart(title: &str, x_label: &str, y_label: &str, line: &[(f64, f64)], marks: &[Mark]) -> String {
    let sx = |x: f64| PAD + x.clamp(0.0, 1.0) * W;
    let sy = |y: f64| PAD / 2.0 + (1.0 - y.clamp(0.0, 1.0)) * H;
    let mut svg = format!(
        "<svg viewBox=\"0 0 {} {}\" width=\"{}\" height=\"{}\" role=\"img\" aria-label=\"{}\">\
         <rect x=\"{}\" y=\"{}\" width=\"{W}\" height=\"{H}\" fill=\"#fafafa\" stroke=\"#999\"/>",
        W + PAD + 10.0,
        H + PAD + 20.0,
        W + PAD + 10.0,
        H + PAD + 20.0,
        escape(title),
        sx(0.0),
        sy(1.0)
    );
    for tick in [0.0, 0.5, 1.0] {
        let _ = write!(
            svg,
            "<text x=\"{}\" y=\"{}\" font-size=\"10\" text-anchor=\"middle\">{tick}</text>\
             <text x=\"{}\" y=\"{}\" font-size=\"10\" text-anchor=\"end\">{tick}</text>",
            sx(tick),
            sy(0.0) + 13.0,
            sx(0.0) - 4.0,
            sy(tick) + 4.0
        );
    }
    let _ = write!(
        svg,
        "<text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"middle\">{}</text>\
         <text x=\"10\" y=\"{}\" font-size=\"11\" text-anchor=\"middle\" transform=\"rotate(-90 10 {})\">{}</text>",
        sx(0.5),
        sy(0.0) + 28.0,
        escape(x_label),
        sy(0.5),
        sy(0.5),
        escape(y_label)
    );
    if line.is_empty() {
        let _ = write!(
            svg,
            "<text x=\"{}\" y=\"{}\" font-size=\"12\" text-anchor=\"middle\">not defined for this data</text>",
            sx(0.5),
            sy(0.5)
        );
    } else {
        let path: Vec<String> = line
            .iter()
            .map(|&(x, y)| format!("{:.2},{:.2}", sx(x), sy(y)))
            .collect();
        let _ = write!(
            svg,
            "<polyline fill=\"none\" stroke=\"#2c3e50\" stroke-width=\"2\" points=\"{}\"/>",
            path.join(" ")
        );
    }
    for m in marks {
        let _ = write!(
            svg,
            "<circle cx=\"{:.2}\" cy=\"{:.2}\" r=\"5\" fill=\"{}\"><title>{}</title></circle>",
            sx(m.at.0),
            sy(m.at.1),
            m.color,
            m.label
        );
    }
    svg.push_str("</svg>");
    svg
}

/// The reliability diagram of the raw P(Yes) (the line) and of the calibrated probabilities
/// (the points), with the fitted map and each one's ECE.
fn calibration(c: &CalibrationReport) -> String {
    let points = |r: &Reliability| -> Vec<(f64, f64)> {
        r.bins.iter().map(|b| (b.predicted, b.observed)).collect()
    };
    let calibrated: Vec<Mark> = points(&c.calibrated)
        .into_iter()
        .map(|at| Mark {
            at,
            label: "calibrated",
            color: "#c0392b",
        })
        .collect();
    let fitted = match &c.fitted {
        Calibration::Platt { a, b } => {
            format!("Platt scaling: 1 / (1 + exp(−({a:.3} · logit(p) + {b:.3})))")
        }
        Calibration::Isotonic { steps } => format!("isotonic regression, {} steps", steps.len()),
    };
    format!(
        "<h3>Calibration</h3><p>{}. Expected calibration error on these examples: raw {:.3}, \
         calibrated {:.3} (measured on the data it was fitted on: check it on held-out \
         examples). Perfect calibration lies on the diagonal.</p><div class=\"charts\">{}</div>",
        escape(&fitted),
        c.raw.ece,
        c.calibrated.ece,
        chart(
            "Reliability: raw P(Yes) (line), calibrated (points)",
            "probability",
            "share of violations",
            &points(&c.raw),
            &calibrated
        )
    )
}

/// A measure with three decimals, or "n/a" where it is not defined.
pub fn num(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".into(), |v| format!("{v:.3}"))
}

fn with_interval(v: Option<f64>, ci: Option<super::bootstrap::Interval>) -> String {
    match ci {
        Some(ci) => format!("{} ({:.3}–{:.3})", num(v), ci.low, ci.high),
        None => num(v),
    }
}

fn row(name: &str, a: &AtThreshold) -> String {
    let c = a.confusion;
    format!(
        "<tr><th>{name}</th><td>{:.4}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
         <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
        a.threshold,
        c.tp,
        c.fp,
        c.fn_,
        c.tn,
        num(a.precision),
        num(a.recall),
        num(a.f1),
        num(a.fpr),
        a.traffic_flag_rate
            .map_or_else(|| "–".into(), |r| format!("{:.1}%", 100.0 * r))
    )
}

fn marks(r: &CategoryReport, pick: impl Fn(&AtThreshold) -> Option<(f64, f64)>) -> Vec<Mark> {
    let mut out = Vec::new();
    if let Some(at) = pick(&r.current) {
        out.push(Mark {
            at,
            label: "current threshold",
            color: "#7f8c8d",
        });
    }
    if let Some(at) = r.suggested.as_ref().and_then(&pick) {
        out.push(Mark {
            at,
            label: "suggested threshold",
            color: "#c0392b",
        });
    }
    out
}

/// The whole page.
pub fn html(
    reports: &[CategoryReport],
    pii: &[KindShare],
    context: Option<&Comparison>,
    title: &str,
) -> String {
    let mut page = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title><style>\
         body{{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1200px}}\
         table{{border-collapse:collapse;margin:.5em 0}}td,th{{border:1px solid #ccc;padding:3px 7px;text-align:left}}\
         .charts{{display:flex;flex-wrap:wrap;gap:1em}}section{{border-top:2px solid #ddd;margin-top:1.5em}}\
         .legend span{{display:inline-block;width:10px;height:10px;border-radius:5px;margin:0 4px 0 12px}}\
         </style></head><body><h1>{t}</h1><p class=\"legend\">Marks on the curves:\
         <span style=\"background:#7f8c8d\"></span>current threshold\
         <span style=\"background:#c0392b\"></span>suggested threshold. A score at or above the \
         threshold is flagged. Intervals are 95% bootstrap intervals.</p>",
        t = escape(title)
    );
    for r in reports {
        let _ = write!(
            page,
            "<section><h2>{}</h2><p>{} labelled examples: {} violations, {} not. \
             ROC-AUC {}; AU-PRC {}. Suggestion: {}{}.</p><div class=\"charts\">{}{}{}</div>",
            escape(&r.id),
            r.labelled,
            r.positives,
            r.negatives,
            with_interval(r.roc_auc, r.roc_auc_interval),
            with_interval(r.average_precision, r.average_precision_interval),
            escape(&r.target),
            match (&r.suggested, r.suggested_f1_interval) {
                (Some(s), ci) => format!(
                    " → threshold {:.4}, F1 {}",
                    s.threshold,
                    with_interval(s.f1, ci)
                ),
                (None, _) => " → no threshold meets it on this data; the current one stays".into(),
            },
            chart(
                "ROC curve",
                "false-positive rate",
                "true-positive rate",
                &r.roc,
                &marks(r, |a| Some((a.fpr?, a.recall?)))
            ),
            chart(
                "Precision-recall curve",
                "recall",
                "precision",
                &r.pr,
                &marks(r, |a| Some((a.recall?, a.precision?)))
            ),
            r.replay.as_ref().map_or_else(String::new, |replay| chart(
                &format!("Traffic flagged by threshold ({} items)", replay.items),
                "threshold",
                "share of traffic flagged",
                &replay.curve,
                &marks(r, |a| Some((a.threshold, a.traffic_flag_rate?)))
            )),
        );
        if let Some(c) = &r.calibration {
            page.push_str(&calibration(c));
        }
        page.push_str(
            "<table><tr><th></th><th>threshold</th><th>TP</th><th>FP</th><th>FN</th><th>TN</th>\
             <th>precision</th><th>recall</th><th>F1</th><th>FPR</th><th>traffic flagged</th></tr>",
        );
        page.push_str(&row("current", &r.current));
        if let Some(b) = &r.best_f1 {
            page.push_str(&row("best F1", b));
        }
        if let Some(s) = &r.suggested {
            page.push_str(&row("suggested", s));
        }
        page.push_str("</table></section>");
    }
    page.push_str(&pii_section(pii));
    if let Some(c) = context {
        page.push_str(&super::context::html(c));
    }
    page.push_str("</body></html>\n");
    page
}

/// How often each kind of personal data or secret appears, and what the profile does with it
/// (nothing when none was found).
fn pii_section(shares: &[KindShare]) -> String {
    if shares.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        "<section><h2>Personal data and secrets</h2><p>Items holding each kind (values are \
         never shown) and what the profile does with it where it is found.</p><table><tr>\
         <th>kind</th><th>labelled examples</th><th>traffic items</th><th>share of traffic</th>\
         <th>in requests</th><th>in answers</th></tr>",
    );
    for s in shares {
        let cells = [
            s.kind.name().to_string(),
            s.examples.to_string(),
            s.traffic.to_string(),
            s.percent().unwrap_or_else(|| "–".into()),
            s.input.as_str().into(),
            s.output.as_str().into(),
        ];
        let _ = write!(out, "<tr><td>{}</td></tr>", cells.join("</td><td>"));
    }
    out.push_str("</table></section>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_draw_the_line_and_the_marks_or_say_why_not() {
        let svg = chart(
            "ROC",
            "x",
            "y",
            &[(0.0, 0.0), (0.5, 1.0), (1.0, 1.0)],
            &[Mark {
                at: (0.5, 1.0),
                label: "suggested threshold",
                color: "#c0392b",
            }],
        );
        assert!(svg.contains("<polyline"));
        assert_eq!(svg.matches("<circle").count(), 1);
        assert!(chart("<x>", "x", "y", &[], &[]).contains("not defined"));
        assert!(chart("<x>", "x", "y", &[], &[]).contains("&lt;x&gt;"));
    }
}
