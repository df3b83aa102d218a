//! Whether conversation context helps on your data: the same labelled examples scored alone
//! and after their earlier turns, compared per category (ROC-AUC, AU-PRC, best F1).

use std::fmt::Write;

use serde::Serialize;

use super::analysis::CategoryReport;
use super::data::Example;
use super::report::num;
use crate::html::escape;

/// How well one scoring separates violations from the rest.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Measures {
    /// Area under the ROC curve.
    pub roc_auc: Option<f64>,
    /// Area under the precision-recall curve.
    pub average_precision: Option<f64>,
    /// F1 at the best threshold.
    pub best_f1: Option<f64>,
}

impl From<&CategoryReport> for Measures {
    fn from(r: &CategoryReport) -> Self {
        Self {
            roc_auc: r.roc_auc,
            average_precision: r.average_precision,
            best_f1: r.best_f1.as_ref().and_then(|a| a.f1),
        }
    }
}

/// One category scored both ways.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CategoryComparison {
    /// The policy id.
    pub id: String,
    /// Labelled examples (scored both ways).
    pub labelled: usize,
    /// Each example judged alone.
    pub alone: Measures,
    /// Each example judged after its earlier turns.
    pub in_context: Measures,
}

/// The comparison.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    /// The earlier turns shown with context.
    pub context_turns: usize,
    /// Examples scored both ways.
    pub examples: usize,
    /// Of those, examples with earlier turns (the others score the same both ways).
    pub with_history: usize,
    /// Per category, in the reports' order.
    pub categories: Vec<CategoryComparison>,
}

/// Compares the analyses of the same examples scored alone and in context.
pub fn compare(
    alone: &[CategoryReport],
    in_context: &[CategoryReport],
    examples: &[Example],
    context_turns: usize,
) -> Comparison {
    let categories = alone
        .iter()
        .filter_map(|a| {
            let c = in_context.iter().find(|c| c.id == a.id)?;
            Some(CategoryComparison {
                id: a.id.clone(),
                labelled: a.labelled.min(c.labelled),
                alone: a.into(),
                in_context: c.into(),
            })
        })
        .collect();
    Comparison {
        context_turns,
        examples: examples.len(),
        with_history: examples.iter().filter(|e| !e.context.is_empty()).count(),
        categories,
    }
}

/// A category's cells: id, labelled, then each measure as "alone → in context".
fn cells(r: &CategoryComparison) -> [String; 5] {
    let pair = |a: Option<f64>, b: Option<f64>| format!("{} → {}", num(a), num(b));
    [
        r.id.clone(),
        r.labelled.to_string(),
        pair(r.alone.roc_auc, r.in_context.roc_auc),
        pair(r.alone.average_precision, r.in_context.average_precision),
        pair(r.alone.best_f1, r.in_context.best_f1),
    ]
}

/// The comparison as a Markdown table (printed by `tune`).
pub fn table(c: &Comparison) -> String {
    let mut out = format!(
        "Context: {} examples scored alone and after up to {} earlier turns ({} have earlier turns)\n\
         | category | labelled | ROC-AUC alone → in context | AU-PRC alone → in context | best F1 alone → in context |\n\
         |---|---|---|---|---|\n",
        c.examples, c.context_turns, c.with_history
    );
    for r in &c.categories {
        let _ = writeln!(out, "| {} |", cells(r).join(" | "));
    }
    out
}

/// The comparison as a report section.
pub fn html(c: &Comparison) -> String {
    let mut rows = String::new();
    for r in &c.categories {
        rows.push_str("<tr>");
        for cell in cells(r) {
            let _ = write!(rows, "<td>{}</td>", escape(&cell));
        }
        rows.push_str("</tr>");
    }
    format!(
        "<section id=\"context\"><h2>Context</h2><p>{} examples scored alone and after up to {} \
         earlier turns of their conversation ({} have earlier turns; the others score the same \
         both ways). ShieldGemma was trained on single turns: keep context on only where it \
         separates violations better on your data.</p><table><tr><th>category</th>\
         <th>labelled</th><th>ROC-AUC alone → in context</th><th>AU-PRC alone → in context</th>\
         <th>best F1 alone → in context</th></tr>{rows}</table></section>",
        c.examples, c.context_turns, c.with_history
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prompt::{ContextTurn, Role};
    use crate::tune::analysis::{analyse, Current, Settings};
    use std::collections::BTreeMap;

    fn example(score: f64, violation: bool, history: bool) -> Example {
        Example {
            id: String::new(),
            prompt: Some("p".into()),
            response: None,
            labels: BTreeMap::from([("dangerous".to_string(), violation)]),
            scores: BTreeMap::from([("dangerous".to_string(), score)]),
            context: match history {
                true => vec![ContextTurn::new(Role::User, "earlier")],
                false => Vec::new(),
            },
            origin: (String::new(), 0),
        }
    }

    #[test]
    fn a_scoring_that_separates_better_shows_higher_measures() {
        // Alone, two violations score low; in context, every violation scores high.
        let alone = [
            example(0.9, true, false),
            example(0.2, true, true),
            example(0.1, true, true),
            example(0.3, false, false),
            example(0.4, false, true),
        ];
        let in_context = [
            example(0.9, true, false),
            example(0.8, true, true),
            example(0.7, true, true),
            example(0.3, false, false),
            example(0.4, false, true),
        ];
        let current = [Current {
            id: "dangerous".into(),
            threshold: 0.5,
        }];
        let settings = Settings {
            targets: BTreeMap::new(),
            default_target: crate::tune::curves::Target::BestF1,
            bootstrap_rounds: 0,
            seed: 0,
        };
        let a = analyse(&alone, &[], &current, &settings);
        let c = analyse(&in_context, &[], &current, &settings);
        let cmp = compare(&a, &c, &in_context, 4);
        assert_eq!((cmp.examples, cmp.with_history), (5, 3));
        let d = &cmp.categories[0];
        assert_eq!(d.labelled, 5);
        assert_eq!(d.in_context.roc_auc, Some(1.0));
        assert!(d.alone.roc_auc.expect("auc") < 0.5);
        assert!(d.in_context.best_f1 > d.alone.best_f1);
        let table = table(&cmp);
        assert!(
            table.contains("| dangerous | 5 | 0.333 → 1.000 |"),
            "{table}"
        );
        assert!(html(&cmp).contains("<td>dangerous</td>"));
    }
}
