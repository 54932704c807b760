//! A scenario's figures: one block of text, or one JSON object with `--json`; and for several
//! runs of a scenario, the median of every numeric figure.

use std::io::Write;

use serde_json::{Map, Value, json};

#[derive(Debug, Clone)]
pub struct Report {
    title: String,
    lines: Vec<String>,
    json: Map<String, Value>,
    section: Option<String>,
    /// Every numeric figure, in order, for the medians over runs.
    numbers: Vec<Number>,
}

/// One numeric figure of a report.
#[derive(Debug, Clone)]
struct Number {
    section: Option<String>,
    key: String,
    label: String,
    value: f64,
    unit: String,
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
            numbers: Vec::new(),
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
        if let Some(number) = value.as_f64() {
            self.number(key, label, number, unit.trim());
        }
        self.insert(key, value);
    }

    /// A numeric figure kept for the medians only (its text is in a table).
    pub fn number(&mut self, key: &str, label: &str, value: f64, unit: &str) {
        self.numbers.push(Number {
            section: self.section.clone(),
            key: key.to_owned(),
            label: label.to_owned(),
            value,
            unit: unit.to_owned(),
        });
    }

    /// The median of each numeric figure over `runs` (figures as the first run has them),
    /// with every run's value beside it.
    pub fn medians(runs: &[Report]) -> Report {
        let first = &runs[0];
        let mut report = Report::new(
            "",
            format!("{} — median of {} runs", first.title, runs.len()),
            first.json.get("parameters").cloned().unwrap_or(Value::Null),
        );
        report.json.remove("scenario");
        for number in &first.numbers {
            if report.section != number.section
                && let Some(section) = &number.section
            {
                report.section(section);
            }
            let mut values: Vec<f64> = runs
                .iter()
                .filter_map(|run| {
                    run.numbers
                        .iter()
                        .find(|n| n.section == number.section && n.key == number.key)
                        .map(|n| n.value)
                })
                .collect();
            values.sort_by(f64::total_cmp);
            let median = quantile(&values, 0.5);
            let each = values
                .iter()
                .map(|v| format_number(*v))
                .collect::<Vec<_>>()
                .join(", ");
            let unit = if number.unit.is_empty() {
                String::new()
            } else {
                format!(" {}", number.unit)
            };
            report.lines.push(format!(
                "  {:<46}{}{unit}   ({each})",
                number.label,
                format_number(median)
            ));
            report.insert(&number.key, json!(median));
        }
        report
    }

    /// Several runs' reports and their medians as one JSON object.
    pub fn runs_json(runs: &[Report], medians: &Report) -> Value {
        json!({
            "scenario": runs[0].json.get("scenario"),
            "runs": runs.iter().map(|r| Value::Object(r.json.clone())).collect::<Vec<_>>(),
            "median": Value::Object(medians.json.clone()),
        })
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
        if as_json {
            print_line(&Value::Object(self.json.clone()).to_string())
        } else {
            self.print_text()
        }
    }

    pub fn print_text(&self) -> anyhow::Result<()> {
        let mut out = std::io::stdout().lock();
        writeln!(out, "== {} ==", self.title)?;
        for line in &self.lines {
            writeln!(out, "{line}")?;
        }
        out.flush()?;
        Ok(())
    }
}

pub fn print_line(line: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
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
    if f.abs() >= 100.0 || f.fract() == 0.0 {
        format!("{f:.0}")
    } else if f.abs() >= 10.0 {
        format!("{f:.1}")
    } else if f.abs() >= 1.0 {
        format!("{f:.2}")
    } else {
        format!("{f:.3}")
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
