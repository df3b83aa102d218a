//! Writing suggested thresholds into the gateway's TOML: the profile's
//! `[profiles.NAME.categories]` entries get their `threshold` set (and, with `--calibrate`, the
//! `[calibration.ID]` tables their fitted maps) and nothing else in the file changes (comments,
//! order, actions, other profiles); the change is shown as a unified diff.

use std::collections::BTreeMap;

use toml_edit::{value, Array, DocumentMut, InlineTable, Item, Table, Value};

use crate::policy::calibration::Calibration;

/// The config being tuned: its text, the profile whose thresholds change and the calibrations
/// in force once written. Tuning works on raw P(Yes); a calibrated category's threshold is
/// written as the calibrated probability of the raw one.
#[derive(Debug, Clone)]
pub struct Tuned {
    /// The config's text, with the fitted calibrations written in.
    pub text: String,
    /// The profile tuned.
    pub profile: String,
    /// Per category id: its calibration in the text.
    pub calibrations: BTreeMap<String, Calibration>,
}

impl Tuned {
    /// The config `text` (whose own calibrations are `current`) with `fitted` written over
    /// them.
    pub fn new(
        text: &str,
        profile: &str,
        current: &BTreeMap<String, Calibration>,
        fitted: &[(String, Calibration)],
    ) -> Result<Self, EditError> {
        let mut calibrations = current.clone();
        calibrations.extend(fitted.iter().cloned());
        Ok(Self {
            text: set_calibrations(text, fitted)?,
            profile: profile.to_string(),
            calibrations,
        })
    }

    /// The text with raw thresholds set, each written as its category's calibrated
    /// probability where the category is calibrated. (An isotonic step cannot be split: such
    /// a threshold takes in the whole step it falls on.)
    pub fn with_thresholds(&self, raw: &[(String, f64)]) -> Result<String, EditError> {
        let written: Vec<(String, f64)> = raw
            .iter()
            .map(|(id, t)| {
                let t = self.calibrations.get(id).map_or(*t, |c| c.apply(*t));
                (id.clone(), t)
            })
            .collect();
        set_thresholds(&self.text, &self.profile, &written)
    }
}

/// Returns `config` with a `[calibration.ID]` table per entry of `fitted` (replacing what was
/// there).
pub fn set_calibrations(
    config: &str,
    fitted: &[(String, Calibration)],
) -> Result<String, EditError> {
    if fitted.is_empty() {
        return Ok(config.to_string());
    }
    let (bom, config) = split_bom(config);
    let mut doc: DocumentMut = config.parse()?;
    let tables = table_at(doc.as_table_mut(), &["calibration"])?;
    tables.set_implicit(true);
    for (id, calibration) in fitted {
        let mut table = Table::new();
        match calibration {
            Calibration::Platt { a, b } => {
                table.insert("method", value("platt"));
                table.insert("a", value(*a));
                table.insert("b", value(*b));
            }
            Calibration::Isotonic { steps } => {
                table.insert("method", value("isotonic"));
                let mut list = Array::new();
                for &(score, probability) in steps {
                    let mut pair = Value::from(Array::from_iter([score, probability]));
                    pair.decor_mut().set_prefix("\n  ");
                    list.push_formatted(pair);
                }
                list.set_trailing("\n");
                table.insert("steps", value(list));
            }
        }
        tables.insert(id, Item::Table(table));
    }
    Ok(format!("{bom}{doc}"))
}

fn split_bom(config: &str) -> (&'static str, &str) {
    match config.strip_prefix('\u{feff}') {
        Some(rest) => ("\u{feff}", rest),
        None => ("", config),
    }
}

/// Why the config could not be edited.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    /// The text is not TOML.
    #[error("the config is not valid TOML: {0}")]
    Parse(#[from] toml_edit::TomlError),
    /// A key on the way is not a table.
    #[error("{0} is not a table in the config; fix it by hand, then run tune again")]
    Shape(String),
}

/// Returns `config` with `thresholds` set in `profile` (entries created where missing); a
/// byte-order mark the file starts with stays where it was.
pub fn set_thresholds(
    config: &str,
    profile: &str,
    thresholds: &[(String, f64)],
) -> Result<String, EditError> {
    let (bom, config) = split_bom(config);
    let mut doc: DocumentMut = config.parse()?;
    let categories = table_at(doc.as_table_mut(), &["profiles", profile, "categories"])?;
    for (id, threshold) in thresholds {
        let path = format!("profiles.{profile}.categories.{id}");
        match categories.entry(id) {
            toml_edit::Entry::Vacant(slot) => {
                let mut entry = InlineTable::new();
                entry.insert("threshold", (*threshold).into());
                slot.insert(Item::Value(entry.into()));
            }
            toml_edit::Entry::Occupied(mut slot) => {
                let item = slot.get_mut();
                if let Some(inline) = item.as_inline_table_mut() {
                    inline.insert("threshold", (*threshold).into());
                } else if let Some(table) = item.as_table_mut() {
                    table.insert("threshold", value(*threshold));
                } else {
                    return Err(EditError::Shape(path));
                }
            }
        }
    }
    Ok(format!("{bom}{doc}"))
}

/// The table at `path`, created (as a standard table) where missing.
fn table_at<'a>(root: &'a mut Table, path: &[&str]) -> Result<&'a mut Table, EditError> {
    let mut table = root;
    for (depth, key) in path.iter().enumerate() {
        let entry = table.entry(key).or_insert_with(|| {
            let mut t = Table::new();
            t.set_implicit(depth + 1 < path.len());
            Item::Table(t)
        });
        if let Some(inline) = entry.as_inline_table() {
            *entry = Item::Table(inline.clone().into_table());
        }
        table = entry
            .as_table_mut()
            .ok_or_else(|| EditError::Shape(path[..=depth].join(".")))?;
    }
    Ok(table)
}

/// A unified diff from `old` to `new` (empty when equal).
pub fn diff(old: &str, new: &str, old_name: &str, new_name: &str) -> String {
    if old == new {
        return String::new();
    }
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(2)
        .header(old_name, new_name)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn thresholds_change_and_nothing_else_does() {
        let config = "# our gateway\n[profiles.default.categories]\n\
                      hate = { threshold = 0.5, action = \"flag\" }  # keep\n\
                      [profiles.default.categories.sexual]\nthreshold = 0.5\naction = \"shadow\"\n\
                      [profiles.trial.categories]\nhate = { threshold = 0.2 }\n";
        let new = set_thresholds(
            config,
            "default",
            &[
                ("hate".into(), 0.3125),
                ("sexual".into(), 0.75),
                ("dangerous".into(), 0.4),
            ],
        )
        .expect("edited");
        assert!(new.starts_with("# our gateway\n"));
        assert!(new.contains("# keep"));
        let bom = format!("\u{feff}{config}");
        let edited = set_thresholds(&bom, "default", &[("hate".into(), 0.3125)]).expect("bom");
        assert!(
            edited.starts_with("\u{feff}# our gateway\n"),
            "the mark stays"
        );
        let parsed = Config::parse(&new, "test").expect("the gateway loads it");
        let cats = &parsed.profiles["default"].categories;
        assert_eq!(cats["hate"].threshold, Some(0.3125));
        assert_eq!(cats["sexual"].threshold, Some(0.75));
        assert_eq!(cats["dangerous"].threshold, Some(0.4));
        assert_eq!(
            parsed.profiles["trial"].categories["hate"].threshold,
            Some(0.2)
        );
        let d = diff(config, &new, "current", "suggested");
        assert!(
            d.contains("-hate = { threshold = 0.5, action = \"flag\" }  # keep"),
            "{d}"
        );
        assert!(
            d.contains("+hate = { threshold = 0.3125, action = \"flag\" }  # keep"),
            "{d}"
        );
        assert!(!d.contains("-[profiles.trial"), "{d}");
    }

    #[test]
    fn an_empty_config_gets_the_profile_and_a_broken_one_is_refused() {
        let new = set_thresholds("", "strict", &[("hate".into(), 0.2)]).expect("edited");
        let parsed = Config::parse(&new, "test").expect("loads");
        assert_eq!(
            parsed.profiles["strict"].categories["hate"].threshold,
            Some(0.2)
        );
        assert!(matches!(
            set_thresholds("[profiles\n", "default", &[]),
            Err(EditError::Parse(_))
        ));
        assert!(matches!(
            set_thresholds("profiles = 3\n", "default", &[]),
            Err(EditError::Shape(p)) if p == "profiles"
        ));
        assert_eq!(diff("a\n", "a\n", "x", "y"), "");
    }

    #[test]
    fn fitted_calibrations_are_written_and_thresholds_become_calibrated() {
        let config = "# ours\n[calibration.sexual]\nmethod = \"platt\"\na = 2.0\nb = 0.0\n\
                      [profiles.default.categories]\nhate = { threshold = 0.5 }\n";
        let current = Config::parse(config, "t").expect("loads").calibration;
        let hate = Calibration::Isotonic {
            steps: vec![(0.0, 0.0), (0.3, 0.25), (0.6, 0.9)],
        };
        let tuned = Tuned::new(
            config,
            "default",
            &current,
            &[("hate".into(), hate.clone())],
        )
        .expect("written");
        let text = tuned
            .with_thresholds(&[
                ("hate".into(), 0.4),
                ("sexual".into(), 0.5),
                ("dangerous".into(), 0.3),
            ])
            .expect("edited");
        assert!(text.starts_with("# ours\n"), "{text}");
        let parsed = Config::parse(&text, "t").expect("the gateway loads it");
        assert_eq!(parsed.calibration["hate"], hate);
        assert_eq!(parsed.calibration["sexual"], current["sexual"]);
        let cats = &parsed.profiles["default"].categories;
        // Raw 0.4 lies on hate's step from 0.3; raw 0.5 maps to 0.5 under a = 2, b = 0.
        assert_eq!(cats["hate"].threshold, Some(0.25));
        assert_eq!(cats["sexual"].threshold, Some(0.5));
        assert_eq!(cats["dangerous"].threshold, Some(0.3), "not calibrated");
        let platt = Calibration::Platt { a: 1.5, b: -0.25 };
        let again = Tuned::new(
            &text,
            "default",
            &parsed.calibration,
            &[("hate".into(), platt.clone())],
        )
        .expect("replaced");
        let parsed = Config::parse(&again.text, "t").expect("loads");
        assert_eq!(parsed.calibration["hate"], platt);
    }
}
