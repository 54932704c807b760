//! A scenario's figures: one block of text, or one JSON object with `--json`.

use std::io::Write;

use serde_json::{Map, Value, json};

#[derive(Debug)]
pub struct Report {
    title: String,
    lines: Vec<String>,
    json: Map<String, Value>,
    section: Option<String>,
}

impl Report {
    pub fn new(scenario: &str, title: String, parameters: Value) -> Self {
        let mut json = Map::new();
        json.insert("scenario".into(), json!(scenario));
        json.insert("parameters".into(), parameters);
        Self {
            title,
            lines: Vec::new(),
            json,
            section: None,
        }
    }

    /// Starts a section: a heading in the text, an object in the JSON.
    pub fn section(&mut self, name: &str) {
        self.lines.push(name.to_owned());
        self.section = Some(name.to_owned());
    }

    /// A figure: `label  value unit` in the text, `key: value` in the JSON (in the section).
    pub fn figure(&mut self, key: &str, label: &str, value: Value, unit: &str) {
        let shown = match &value {
            Value::Number(n) => match n.as_f64() {
                Some(f) if n.is_f64() => format_number(f),
                _ => n.to_string(),
            },
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let unit = if unit.is_empty() {
            String::new()
        } else {
            format!(" {unit}")
        };
        self.lines.push(format!("  {label:<46}{shown}{unit}"));
        self.insert(key, value);
    }

    /// A line of text only (tables).
    pub fn text(&mut self, line: &str) {
        self.lines.push(format!("  {line}"));
    }

    /// A JSON value only, under `key` at the top level.
    pub fn json(&mut self, key: &str, value: Value) {
        self.json.insert(json_key(key), value);
    }

    fn insert(&mut self, key: &str, value: Value) {
        match &self.section {
            Some(section) => {
                let entry = self
                    .json
                    .entry(json_key(section))
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(map) = entry {
                    map.insert(key.to_owned(), value);
                }
            }
            None => {
                self.json.insert(key.to_owned(), value);
            }
        }
    }

    pub fn print(&self, as_json: bool) -> anyhow::Result<()> {
        let mut out = std::io::stdout().lock();
        if as_json {
            writeln!(out, "{}", Value::Object(self.json.clone()))?;
        } else {
            writeln!(out, "== {} ==", self.title)?;
            for line in &self.lines {
                writeln!(out, "{line}")?;
            }
        }
        out.flush()?;
        Ok(())
    }
}

/// `end-to-end delivery` → `endToEndDelivery`.
fn json_key(name: &str) -> String {
    let mut out = String::new();
    let mut upper = false;
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            if upper && !out.is_empty() {
                out.push(c.to_ascii_uppercase());
            } else {
                out.push(c);
            }
            upper = false;
        } else {
            upper = true;
        }
    }
    out
}

fn format_number(f: f64) -> String {
    if f.abs() >= 100.0 {
        format!("{f:.0}")
    } else if f.abs() >= 10.0 {
        format!("{f:.1}")
    } else {
        format!("{f:.2}")
    }
}

/// The `q` quantile (0..=1) of sorted values, nearest rank.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
