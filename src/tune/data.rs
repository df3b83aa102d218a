//! Reading tuning data: labelled examples (text to score, or scores already computed, with
//! per-category labels) and unlabelled traffic (audit results or the gateway's decision log:
//! scores without labels). Lines that cannot be used are kept with file, line and reason.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use crate::audit::reader::{read_record, Fields, Judged, NO_TURN};
use crate::audit::records::{Item, Records};
use crate::audit::source;
use crate::config::MAX_CONTEXT_TURNS;
use crate::prompt::ContextTurn;

use super::pii::{found_in_line, Found};

/// A labelled example.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Example {
    /// The line's `id`, or `FILE:LINE`.
    pub id: String,
    /// The user text (absent when only scores were given).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// The response, for examples judged with the prompt-response template.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<String>,
    /// Per category: violation or not (categories left unlabelled are absent).
    pub labels: BTreeMap<String, bool>,
    /// Per category: P(Yes), given or scored.
    pub scores: Scores,
    /// The turns before the judged one, for examples given as a `messages` list (oldest first).
    #[serde(skip)]
    pub context: Vec<ContextTurn>,
    /// The file and line it came from.
    #[serde(skip)]
    pub origin: (String, u64),
}

/// A line that could not be used.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LineError {
    /// The file.
    pub file: String,
    /// The line (1-based).
    pub line: u64,
    /// Why.
    pub reason: String,
}

/// What a file gave: the usable items and the lines that were not.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded<T> {
    /// The items, in file order.
    pub items: Vec<T>,
    /// The unusable lines, in file order.
    pub errors: Vec<LineError>,
}

/// P(Yes) by category id.
pub type Scores = BTreeMap<String, f64>;

/// Field names of labelled examples.
#[derive(Debug, Clone)]
pub struct ExampleFields {
    /// The user text.
    pub prompt: String,
    /// The response.
    pub response: String,
}

impl Default for ExampleFields {
    fn default() -> Self {
        Self {
            prompt: "prompt".into(),
            response: "response".into(),
        }
    }
}

/// Every JSON value of a JSONL file (plain, gzip or zstd) with its line, and the lines that
/// are not JSON.
fn json_lines(path: &Path) -> std::io::Result<Loaded<(u64, Value)>> {
    let file = path.display().to_string();
    let mut records = Records::jsonl(source::open(path, 0)?.0, 0, 0);
    let (mut values, mut errors) = (Vec::new(), Vec::new());
    while let Some(record) = records.next_record()? {
        match record.item {
            Item::Blank => {}
            Item::Value(v) => values.push((record.line, v)),
            Item::Unreadable(reason) => errors.push(LineError {
                file: file.clone(),
                line: record.line,
                reason,
            }),
        }
    }
    Ok(Loaded {
        items: values,
        errors,
    })
}

/// The raw P(Yes) per category of a record (tuning works before calibration): `scores` as an
/// object (audit results, labelled data), its entries replaced by `raw_scores` where the audit
/// calibrated them, or `categories` as a list of `{id, p_yes, raw_p_yes?}` (the gateway's
/// decision log).
pub fn scores_of(value: &Value) -> Option<Scores> {
    if let Some(map) = value.get("scores").and_then(Value::as_object) {
        let raw = value.get("raw_scores").and_then(Value::as_object);
        return map
            .iter()
            .map(|(k, v)| {
                let v = raw.and_then(|r| r.get(k)).unwrap_or(v);
                Some((k.clone(), v.as_f64()?))
            })
            .collect();
    }
    value
        .get("categories")
        .and_then(Value::as_array)?
        .iter()
        .map(|c| {
            let p = c.get("raw_p_yes").unwrap_or(c.get("p_yes")?);
            Some((c.get("id")?.as_str()?.to_string(), p.as_f64()?))
        })
        .collect()
}

/// The labels of a record: `{"hate": 1, "sexual": 0}` (unnamed categories stay unlabelled) or
/// `["hate"]` (named ones are violations, every other known category is not).
fn labels_of(value: &Value, categories: &[String]) -> Result<BTreeMap<String, bool>, String> {
    let known = |id: &str| -> Result<String, String> {
        if categories.iter().any(|c| c == id) {
            Ok(id.to_string())
        } else {
            Err(format!(
                "label {id:?} is not a category (categories: {})",
                categories.join(", ")
            ))
        }
    };
    match value.get("labels") {
        Some(Value::Object(map)) => {
            let mut labels = BTreeMap::new();
            for (id, v) in map {
                let flag = match v {
                    Value::Null => continue,
                    Value::Bool(b) => *b,
                    Value::Number(n) if n.as_f64() == Some(0.0) => false,
                    Value::Number(n) if n.as_f64() == Some(1.0) => true,
                    other => {
                        return Err(format!(
                            "label {id:?} is {other}: expected 0, 1, true or false"
                        ))
                    }
                };
                labels.insert(known(id)?, flag);
            }
            Ok(labels)
        }
        Some(Value::Array(list)) => {
            let mut labels: BTreeMap<String, bool> =
                categories.iter().map(|c| (c.clone(), false)).collect();
            for v in list {
                let id = v
                    .as_str()
                    .ok_or_else(|| format!("labels holds {v}: expected category names"))?;
                labels.insert(known(id)?, true);
            }
            Ok(labels)
        }
        Some(other) => Err(format!(
            "labels is {other}: expected an object of 0/1 or a list of categories"
        )),
        None => Err("no \"labels\"".into()),
    }
}

/// The last turn of a `messages` example, the one labelled, with its earlier turns.
fn last_turn(value: &Value, origin: &str) -> Result<Judged, String> {
    read_record(value, origin, &Fields::default())?
        .last_judged(MAX_CONTEXT_TURNS)
        .ok_or_else(|| NO_TURN.to_string())
}

/// Reads labelled examples for `categories` from a JSONL file.
pub fn read_examples(
    path: &Path,
    fields: &ExampleFields,
    categories: &[String],
) -> std::io::Result<Loaded<Example>> {
    let file = path.display().to_string();
    let Loaded {
        items: values,
        mut errors,
    } = json_lines(path)?;
    let mut examples = Vec::new();
    for (line, value) in values {
        let text = |name: &str| {
            value
                .get(name)
                .and_then(Value::as_str)
                .filter(|t| !t.trim().is_empty())
                .map(str::to_string)
        };
        let example = labels_of(&value, categories).and_then(|labels| {
            let (prompt, response, context) = match value.get("messages") {
                Some(_) => {
                    let judged = last_turn(&value, &format!("{file}:{line}"))?;
                    (Some(judged.prompt), judged.response, judged.context)
                }
                None => (text(&fields.prompt), text(&fields.response), Vec::new()),
            };
            let example = Example {
                id: match value.get("id") {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Number(n)) => n.to_string(),
                    _ => format!("{file}:{line}"),
                },
                prompt,
                response,
                labels,
                scores: scores_of(&value).unwrap_or_default(),
                context,
                origin: (file.clone(), line),
            };
            if example.prompt.is_none() && example.scores.is_empty() {
                return Err(format!(
                    "neither a {:?} text to score nor \"scores\"",
                    fields.prompt
                ));
            }
            Ok(example)
        });
        match example {
            Ok(e) => examples.push(e),
            Err(reason) => errors.push(LineError {
                file: file.clone(),
                line,
                reason,
            }),
        }
    }
    errors.sort_by_key(|e| e.line);
    Ok(Loaded {
        items: examples,
        errors,
    })
}

/// Reads unlabelled traffic scores: an audit folder (its results.jsonl), audit results or a
/// decision log.
pub fn read_traffic(path: &Path) -> std::io::Result<Loaded<(Scores, Found)>> {
    let path = if path.is_dir() {
        path.join(crate::audit::RESULTS)
    } else {
        path.to_path_buf()
    };
    let file = path.display().to_string();
    let Loaded {
        items: values,
        mut errors,
    } = json_lines(&path)?;
    let mut traffic = Vec::new();
    for (line, value) in values {
        match scores_of(&value) {
            Some(scores) => traffic.push((scores, found_in_line(&value))),
            None => errors.push(LineError {
                file: file.clone(),
                line,
                reason: "no scores: expected audit results (\"scores\") or decision log lines (\"categories\")".into(),
            }),
        }
    }
    Ok(Loaded {
        items: traffic,
        errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cats() -> Vec<String> {
        ["dangerous", "hate"].map(String::from).to_vec()
    }

    #[test]
    fn labels_come_as_flags_or_as_a_list() {
        let flags = labels_of(&json!({"labels": {"hate": 1, "dangerous": null}}), &cats());
        assert_eq!(flags, Ok(BTreeMap::from([("hate".to_string(), true)])));
        let list = labels_of(&json!({"labels": ["hate"]}), &cats());
        assert_eq!(
            list,
            Ok(BTreeMap::from([
                ("dangerous".to_string(), false),
                ("hate".to_string(), true)
            ]))
        );
        assert_eq!(
            labels_of(&json!({"labels": []}), &cats()).map(|l| l.values().any(|v| *v)),
            Ok(false)
        );
        for bad in [
            json!({"labels": {"hate": 2}}),
            json!({"labels": ["violence"]}),
            json!({"labels": "hate"}),
            json!({}),
        ] {
            assert!(labels_of(&bad, &cats()).is_err(), "{bad}");
        }
    }

    #[test]
    fn scores_come_from_audit_results_or_decision_logs() {
        let audit = json!({"scores": {"hate": 0.25}});
        let log = json!({"categories": [{"id": "hate", "p_yes": 0.25, "threshold": 0.5}]});
        let want = BTreeMap::from([("hate".to_string(), 0.25)]);
        assert_eq!(scores_of(&audit), Some(want.clone()));
        assert_eq!(scores_of(&log), Some(want.clone()));
        assert_eq!(scores_of(&json!({"scores": {"hate": "x"}})), None);
        assert_eq!(scores_of(&json!({"x": 1})), None);
        // Calibrated records give their raw scores.
        let audit = json!({"scores": {"hate": 0.9, "sexual": 0.1}, "raw_scores": {"hate": 0.25}});
        let log = json!({"categories": [{"id": "hate", "p_yes": 0.9, "raw_p_yes": 0.25}]});
        let both = BTreeMap::from([("hate".to_string(), 0.25), ("sexual".to_string(), 0.1)]);
        assert_eq!(scores_of(&audit), Some(both));
        assert_eq!(scores_of(&log), Some(want));
    }

    /// Files written by Windows tools start with a UTF-8 byte-order mark: labelled data and
    /// traffic read their first line all the same.
    #[test]
    fn a_byte_order_mark_does_not_spoil_the_first_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let labelled = dir.path().join("labelled.jsonl");
        std::fs::write(
            &labelled,
            "\u{feff}{\"prompt\": \"p\", \"labels\": [\"hate\"]}\n\
             {\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, \
             {\"role\": \"assistant\", \"content\": \"b\"}, {\"role\": \"user\", \"content\": \"c\"}], \
             \"labels\": []}\n",
        )
        .expect("written");
        let read = read_examples(&labelled, &ExampleFields::default(), &cats()).expect("read");
        assert!(read.errors.is_empty(), "{:?}", read.errors);
        assert_eq!(read.items[0].prompt.as_deref(), Some("p"));
        // A conversation's last turn is the example, the turns before it its context.
        assert_eq!(read.items[1].prompt.as_deref(), Some("c"));
        assert_eq!(read.items[1].context.len(), 2);
        let traffic = dir.path().join("traffic.jsonl");
        std::fs::write(&traffic, "\u{feff}{\"scores\": {\"hate\": 0.5}}\n").expect("written");
        let read = read_traffic(&traffic).expect("read");
        assert!(read.errors.is_empty(), "{:?}", read.errors);
        assert_eq!(read.items.len(), 1);
    }

    #[test]
    fn examples_and_errors_keep_their_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("labelled.jsonl");
        std::fs::write(
            &path,
            "{\"id\": 1, \"prompt\": \"p\", \"labels\": [\"hate\"]}\n\
             {\"scores\": {\"hate\": 0.5}, \"labels\": {\"hate\": 0}}\n\
             {\"labels\": {\"hate\": 0}}\n\
             not json\n",
        )
        .expect("written");
        let Loaded {
            items: examples,
            errors,
        } = read_examples(&path, &ExampleFields::default(), &cats()).expect("reads");
        assert_eq!(examples.len(), 2);
        assert_eq!(examples[0].id, "1");
        assert_eq!(examples[1].id, format!("{}:2", path.display()));
        assert_eq!(examples[1].scores["hate"], 0.5);
        let lines: Vec<u64> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, [3, 4]);
        assert!(errors[0].reason.contains("neither"));
    }
}
