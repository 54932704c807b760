//! How the JSON log layer keeps a span's fields: as the JSON object it will print, written
//! straight from the values when the span opens and extended in place when a field is recorded.
//!
//! `tracing-subscriber`'s own `JsonFields` builds a map of `serde_json::Value`s for every span
//! and, when a field is recorded later, parses the whole object back, inserts and serialises it
//! again. With two spans a job that was a tenth of the dispatcher's instructions, though nearly
//! every span closes without a line logged in it (BENCHMARKS.md). Fields meant for traces only
//! (`otel.*`) are left out: the trace has them, and a log line names its span already.

use std::fmt::{self, Write};

use tracing::field::{Field, Visit};
use tracing_subscriber::{
    field::RecordFields,
    fmt::{FormatFields, FormattedFields, format::Writer},
};

/// The field formatter of the JSON log layer (see the module docs). What it keeps is always one
/// JSON object, which the layer's event formatter parses when a line is logged in the span.
#[derive(Debug, Default, Clone, Copy)]
pub struct JsonSpanFields;

impl<'writer> FormatFields<'writer> for JsonSpanFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        let mut object = ObjectWriter::new(&mut writer);
        fields.record(&mut object);
        object.finish()
    }

    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        // Reopen the object (drop its closing brace) and go on after its last member.
        let mut object = if current.fields.starts_with('{') && current.fields.ends_with('}') {
            current.fields.pop();
            let has_members = current.fields.len() > 1;
            ObjectWriter::reopened(&mut current.fields, has_members)
        } else {
            current.fields.clear();
            ObjectWriter::new(&mut current.fields)
        };
        fields.record(&mut object);
        object.finish()
    }
}

/// Writes visited fields as the members of one JSON object; the brace opens with the first.
struct ObjectWriter<'a, W: Write> {
    out: &'a mut W,
    opened: bool,
    has_members: bool,
    result: fmt::Result,
}

impl<'a, W: Write> ObjectWriter<'a, W> {
    fn new(out: &'a mut W) -> Self {
        Self {
            out,
            opened: false,
            has_members: false,
            result: Ok(()),
        }
    }

    /// Goes on writing an object whose opening brace (and `has_members` members) `out` holds.
    fn reopened(out: &'a mut W, has_members: bool) -> Self {
        Self {
            opened: true,
            has_members,
            ..Self::new(out)
        }
    }

    /// Writes `"name":` (after a comma when needed), or nothing for a trace-only field.
    fn member(&mut self, field: &Field) -> bool {
        if self.result.is_err() || field.name().starts_with("otel.") {
            return false;
        }
        let opening = if !self.opened {
            self.opened = true;
            "{"
        } else if self.has_members {
            ","
        } else {
            ""
        };
        self.has_members = true;
        self.result = self
            .out
            .write_str(opening)
            .and_then(|()| write_json_string(self.out, field.name()))
            .and_then(|()| self.out.write_char(':'));
        self.result.is_ok()
    }

    fn raw(&mut self, field: &Field, value: fmt::Arguments<'_>) {
        if self.member(field) {
            self.result = self.out.write_fmt(value);
        }
    }

    fn finish(self) -> fmt::Result {
        self.result?;
        if !self.opened {
            self.out.write_char('{')?;
        }
        self.out.write_char('}')
    }
}

impl<W: Write> Visit for ObjectWriter<'_, W> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.member(field) {
            self.result = write_json_string(self.out, value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.member(field) {
            self.result = self
                .out
                .write_char('"')
                .and_then(|()| write!(Escaped(self.out), "{value:?}"))
                .and_then(|()| self.out.write_char('"'));
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.raw(field, format_args!("{value}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.raw(field, format_args!("{value}"));
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        self.raw(field, format_args!("{value}"));
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        self.raw(field, format_args!("{value}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.raw(field, format_args!("{value}"));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if value.is_finite() {
            self.raw(field, format_args!("{value}"));
        } else {
            // JSON has no NaN or infinities.
            self.record_str(field, &value.to_string());
        }
    }
}

fn write_json_string(out: &mut impl Write, value: &str) -> fmt::Result {
    out.write_char('"')?;
    Escaped(out).write_str(value)?;
    out.write_char('"')
}

/// Escapes what it is given for the inside of a JSON string.
struct Escaped<'a, W: Write>(&'a mut W);

impl<W: Write> Write for Escaped<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut plain_from = 0;
        for (at, byte) in s.bytes().enumerate() {
            let escape = match byte {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0..=0x1f => "",
                _ => continue,
            };
            self.0.write_str(&s[plain_from..at])?;
            if escape.is_empty() {
                write!(self.0, "\\u{byte:04x}")?;
            } else {
                self.0.write_str(escape)?;
            }
            plain_from = at + 1;
        }
        self.0.write_str(&s[plain_from..])
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use serde_json::{Value, json};
    use tracing_subscriber::{fmt, prelude::*};

    use super::*;

    /// Every line the JSON log layer (with these span fields) writes while `work` runs.
    fn logged_lines(work: impl FnOnce()) -> Vec<Value> {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = buffer.clone();
        let layer = fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .fmt_fields(JsonSpanFields)
            .with_writer(move || Sink(sink.clone()));
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), work);
        let bytes = buffer.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
            .collect()
    }

    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_line_carries_its_spans_fields_as_given_and_as_recorded_later() {
        let lines = logged_lines(|| {
            let span = tracing::info_span!(
                "job",
                otel.name = "deliver job",
                job_id = %"n-1",
                attempt = 2u64,
                late_ms = -5i64,
                ratio = 0.5f64,
                retried = false,
                trace_id = tracing::field::Empty,
                status = tracing::field::Empty,
            );
            span.record("trace_id", "4bf92f3577b34da6a3ce929d0e0e4736");
            span.record("status", 201u64);
            span.in_scope(|| tracing::info!("sent"));
        });
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0]["message"], "sent");
        assert_eq!(
            lines[0]["span"],
            json!({
                "name": "job", "job_id": "n-1", "attempt": 2, "late_ms": -5, "ratio": 0.5,
                "retried": false, "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "status": 201,
            }),
            "otel.* fields are for traces only"
        );
    }

    #[test]
    fn a_span_without_fields_until_one_is_recorded_still_logs_an_object() {
        let lines = logged_lines(|| {
            let span = tracing::info_span!("bare", later = tracing::field::Empty);
            span.in_scope(|| tracing::info!("first"));
            span.record("later", "now");
            span.in_scope(|| tracing::info!("second"));
        });
        assert_eq!(lines[0]["span"], json!({ "name": "bare" }));
        assert_eq!(lines[1]["span"], json!({ "name": "bare", "later": "now" }));
    }

    #[test]
    fn strings_and_debug_values_are_escaped() {
        let awkward = "quote \" backslash \\ newline \n tab \t bell \u{7} é 🚀";
        let lines = logged_lines(|| {
            let span = tracing::info_span!("s", text = awkward, debugged = ?awkward);
            span.in_scope(|| tracing::info!("x"));
        });
        assert_eq!(lines[0]["span"]["text"], awkward);
        assert_eq!(lines[0]["span"]["debugged"], format!("{awkward:?}"));
    }

    #[test]
    fn a_number_json_cannot_hold_is_written_as_a_string() {
        let lines = logged_lines(|| {
            let span = tracing::info_span!("s", nan = f64::NAN, infinite = f64::INFINITY);
            span.in_scope(|| tracing::info!("x"));
        });
        assert_eq!(lines[0]["span"]["nan"], "NaN");
        assert_eq!(lines[0]["span"]["infinite"], "inf");
    }
}
