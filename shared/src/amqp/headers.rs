//! AMQP headers that carry Herald's bookkeeping beside the public job body.

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

/// W3C trace context, continued from the request that created the job.
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";
/// Calls made to Teams for this job so far.
pub const ATTEMPTS: &str = "x-herald-attempts";
/// Unix milliseconds before which the job must not be sent (retry backoff; `deliverAt` is in
/// the body). Lets the dispatcher wait out the sub-second rest of a delay.
pub const NOT_BEFORE: &str = "x-herald-not-before";
/// The job's place in a pacing queue (Redis time, Unix ms), while it waits for its turn
/// ([`crate::store::Admission::Wait`]).
pub const PACE_TURN: &str = "x-herald-pace-turn";
/// Marks a change to a delivered message (`update` or `delete`); absent on jobs.
pub const OPERATION: &str = "x-herald-op";
/// Why a message was dead-lettered, and where from.
pub const DEAD_REASON: &str = "x-herald-reason";
pub const DEAD_AT: &str = "x-herald-dead-at";

/// Reads a header as text, whatever string type the publisher used.
pub fn text(headers: Option<&FieldTable>, key: &str) -> Option<String> {
    match headers?.inner().get(key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// Reads a header as an integer, whatever integer type the publisher used.
pub fn integer(headers: Option<&FieldTable>, key: &str) -> Option<i64> {
    Some(match headers?.inner().get(key)? {
        AMQPValue::LongLongInt(n) => *n,
        AMQPValue::LongInt(n) => i64::from(*n),
        AMQPValue::LongUInt(n) => i64::from(*n),
        AMQPValue::ShortInt(n) => i64::from(*n),
        AMQPValue::ShortUInt(n) => i64::from(*n),
        AMQPValue::ShortShortInt(n) => i64::from(*n),
        AMQPValue::ShortShortUInt(n) => i64::from(*n),
        AMQPValue::Timestamp(n) => i64::try_from(*n).ok()?,
        _ => return None,
    })
}

/// The W3C trace context a job carries (an empty context when it carries none).
pub fn trace_context(headers: Option<&FieldTable>) -> opentelemetry::Context {
    let fields: Vec<(&str, String)> = [TRACEPARENT, TRACESTATE]
        .into_iter()
        .filter_map(|key| text(headers, key).map(|value| (key, value)))
        .collect();
    crate::telemetry::trace_context_from(fields.iter().map(|(k, v)| (*k, v.as_str())))
}

/// Writes the current span's trace context into a job's headers, so the dispatcher's span
/// continues the trace.
pub fn set_trace_context(headers: &mut FieldTable) {
    for (key, value) in crate::telemetry::current_trace_context() {
        set_text(headers, &key, &value);
    }
}

pub fn set_text(headers: &mut FieldTable, key: &str, value: &str) {
    headers.insert(
        ShortString::from(key),
        AMQPValue::LongString(LongString::from(value)),
    );
}

pub fn set_integer(headers: &mut FieldTable, key: &str, value: i64) {
    headers.insert(ShortString::from(key), AMQPValue::LongLongInt(value));
}

/// Drops one header (the table has no removal of its own, so it is rebuilt without it).
pub fn remove(headers: &mut FieldTable, key: &str) {
    if headers.contains_key(key) {
        let mut kept = headers.inner().clone();
        kept.remove(key);
        *headers = kept.into();
    }
}

/// The headers worth keeping when a job is republished (to a delay level or the dead-letter
/// queue): Herald's own and the trace context, not RabbitMQ's `x-death` history.
pub fn carried_over(headers: Option<&FieldTable>) -> FieldTable {
    let mut kept = FieldTable::default();
    if let Some(headers) = headers {
        for (key, value) in headers.inner() {
            let key = key.as_str();
            if key == TRACEPARENT || key == TRACESTATE || key.starts_with("x-herald-") {
                kept.insert(ShortString::from(key), value.clone());
            }
        }
    }
    kept
}
