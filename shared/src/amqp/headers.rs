//! AMQP headers that carry Herald's bookkeeping beside the public job body.
//!
//! The dispatcher reads a delivery's bookkeeping once, into a [`Bookkeeping`], and writes the
//! next one when it sends the delivery round again; the raw readers below are for the headers
//! that are not bookkeeping (trace context, dead-letter reasons).

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use time::OffsetDateTime;

/// W3C trace context, continued from the request that created the job.
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";
/// Calls made to Teams for this job so far.
pub const ATTEMPTS: &str = "x-herald-attempts";
/// Unix milliseconds before which the job must not be sent (retry backoff; `deliverAt` is in
/// the body). Lets the dispatcher wait out the sub-second rest of a delay.
pub const NOT_BEFORE: &str = "x-herald-not-before";
/// The job's place in a pacing queue (Redis time, Unix ms), while it waits for its turn (the
/// dispatcher's pacer hands turns out).
pub const PACE_TURN: &str = "x-herald-pace-turn";
/// Marked a change to a delivered message (`update` or `delete`) before changes had AMQP
/// types of their own; still read, so that a change queued by an older ingress is understood.
pub const LEGACY_OPERATION: &str = "x-herald-op";
/// Why a message was dead-lettered, and where from.
pub const DEAD_REASON: &str = "x-herald-reason";
pub const DEAD_AT: &str = "x-herald-dead-at";
/// On a broadcast recipient's job (and its edits): the broadcast's id. The dispatcher trusts
/// it only when the job's id is that recipient's notification id in that broadcast.
pub const BROADCAST: &str = "x-herald-broadcast";
/// Beside [`BROADCAST`]: the version of the broadcast's message the job carries.
pub const BROADCAST_VERSION: &str = "x-herald-broadcast-version";

/// Herald's bookkeeping on one delivery: what its headers say about earlier attempts and
/// waits, read once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bookkeeping {
    /// Calls made to Teams for this message by this delivery and the ones it came from (the
    /// retry budget; a job redriven from the dead-letter queue starts again at 0).
    pub attempts: u32,
    /// Not to be sent before this instant: a retry's backoff or a pacing turn's time (a
    /// short wait goes back to the queue at once, and the next handler waits out the rest).
    pub not_before: Option<OffsetDateTime>,
    /// Its place in a pacing queue (Redis time, Unix ms) while it waits for its turn.
    pub pace_turn: Option<u64>,
}

impl Bookkeeping {
    /// Reads the bookkeeping headers; a missing or malformed one reads as absent (a job
    /// published by another service carries none).
    pub fn read(headers: Option<&FieldTable>) -> Self {
        Self {
            attempts: integer(headers, ATTEMPTS)
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(0),
            not_before: integer(headers, NOT_BEFORE).and_then(|ms| {
                OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
            }),
            pace_turn: integer(headers, PACE_TURN).and_then(|turn| u64::try_from(turn).ok()),
        }
    }

    /// Writes this bookkeeping over `headers`' own: a header whose value is absent here is
    /// removed, so nothing stale travels on.
    pub fn write(&self, headers: &mut FieldTable) {
        set_integer(headers, ATTEMPTS, i64::from(self.attempts));
        match self.not_before {
            Some(at) => set_integer(
                headers,
                NOT_BEFORE,
                i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX),
            ),
            None => remove(headers, NOT_BEFORE),
        }
        match self.pace_turn {
            Some(turn) => set_integer(headers, PACE_TURN, i64::try_from(turn).unwrap_or(i64::MAX)),
            None => remove(headers, PACE_TURN),
        }
    }
}

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

/// The headers worth keeping when a job is republished (parked until due, or to the
/// dead-letter queue): Herald's own and the trace context, not RabbitMQ's `x-death` history.
pub fn carried_over(headers: Option<&FieldTable>) -> FieldTable {
    carried_over_except(headers, &[])
}

/// [`carried_over`], without the headers named in `dropped`.
pub fn carried_over_except(headers: Option<&FieldTable>, dropped: &[&str]) -> FieldTable {
    let mut kept = FieldTable::default();
    if let Some(headers) = headers {
        for (key, value) in headers.inner() {
            let key = key.as_str();
            let ours = key == TRACEPARENT || key == TRACESTATE || key.starts_with("x-herald-");
            if ours && !dropped.contains(&key) {
                kept.insert(ShortString::from(key), value.clone());
            }
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_from_another_service_carries_no_bookkeeping() {
        assert_eq!(Bookkeeping::read(None), Bookkeeping::default());
        assert_eq!(
            Bookkeeping::read(Some(&FieldTable::default())),
            Bookkeeping::default()
        );
    }

    #[test]
    fn bookkeeping_survives_a_round_trip_through_the_headers() {
        let at = OffsetDateTime::from_unix_timestamp_nanos(1_780_000_000_123_000_000).unwrap();
        let kept = Bookkeeping {
            attempts: 3,
            not_before: Some(at),
            pace_turn: Some(1_780_000_000_456),
        };
        let mut headers = FieldTable::default();
        set_text(&mut headers, TRACEPARENT, "00-abc-def-01");
        kept.write(&mut headers);
        assert_eq!(Bookkeeping::read(Some(&headers)), kept);
        assert_eq!(
            text(Some(&headers), TRACEPARENT).as_deref(),
            Some("00-abc-def-01")
        );
    }

    #[test]
    fn writing_drops_what_the_bookkeeping_no_longer_holds() {
        let mut headers = FieldTable::default();
        Bookkeeping {
            attempts: 1,
            not_before: Some(OffsetDateTime::UNIX_EPOCH),
            pace_turn: Some(7),
        }
        .write(&mut headers);
        Bookkeeping {
            attempts: 2,
            ..Bookkeeping::default()
        }
        .write(&mut headers);
        assert!(!headers.contains_key(NOT_BEFORE));
        assert!(!headers.contains_key(PACE_TURN));
        assert_eq!(Bookkeeping::read(Some(&headers)).attempts, 2);
    }

    #[test]
    fn any_integer_type_a_publisher_chose_is_read_and_nonsense_is_ignored() {
        let mut headers = FieldTable::default();
        headers.insert(ATTEMPTS.into(), AMQPValue::ShortShortUInt(4));
        headers.insert(PACE_TURN.into(), AMQPValue::LongLongInt(-5));
        headers.insert(NOT_BEFORE.into(), AMQPValue::LongString("soon".into()));
        let read = Bookkeeping::read(Some(&headers));
        assert_eq!(read.attempts, 4);
        assert_eq!(read.pace_turn, None, "a negative turn is no turn");
        assert_eq!(read.not_before, None);
    }

    #[test]
    fn carrying_over_keeps_herald_headers_and_the_trace_only() {
        let mut headers = FieldTable::default();
        set_text(&mut headers, TRACEPARENT, "00-abc-def-01");
        set_text(&mut headers, DEAD_REASON, "why");
        set_integer(&mut headers, ATTEMPTS, 2);
        set_text(&mut headers, "x-death", "rabbitmq's history");
        let kept = carried_over_except(Some(&headers), &[DEAD_REASON]);
        assert!(kept.contains_key(TRACEPARENT) && kept.contains_key(ATTEMPTS));
        assert!(!kept.contains_key(DEAD_REASON) && !kept.contains_key("x-death"));
    }
}
