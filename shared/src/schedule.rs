//! Recurring schedules: an RFC 5545 `RRULE` (parsed and expanded by the `rrule` crate) in a
//! zone, from a start, until an optional end; each occurrence becomes a notification whose id
//! is UUID v5 of the schedule and the occurrence's instant ([`JobId::for_occurrence`]), so an
//! occurrence is never sent twice.
//!
//! The rule is expanded on the wall clock: occurrences are local date-times (the rule runs
//! as if in a zone without daylight saving), and each becomes an instant in the schedule's
//! zone by [`crate::calendar`]'s rules. So "every day at 09:00" stays at 09:00 across DST; a
//! time that does not exist that day moves to the end of the gap; an ambiguous one takes its
//! first instant. An `UNTIL` in the rule is read the same way (as a wall-clock time), and is
//! inclusive, as RFC 5545 says.
//!
//! A schedule has one timer per generation (`schedule:{id}:{generation}`) for its next
//! occurrence; when it is due, the dispatcher queues the occurrence's job, then parks the timer
//! for the occurrence after. Editing, pausing or resuming a schedule bumps its `generation` and
//! parks the new generation's timer, so a timer parked for the schedule as it was is dropped
//! when it comes due. One timer per generation, not per schedule: two edits at once each park
//! their own, and whichever lands last cannot overwrite the newer one's.

use std::{str::FromStr, time::Duration};

use chrono::TimeZone;
use lapin::types::FieldTable;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{
    amqp::DispatchMessage,
    calendar::{LocalDateTime, Zone},
    job::{JobId, Message, Target, ZoneChoice, openapi},
    store::{ScheduleStore, StoreError, UserStore},
    timers::{DispatchQueue, QueueError},
};

/// The AMQP `type` of a schedule's timer when it comes due.
pub const TICK_TYPE_V1: &str = "schedule.tick.v1";

/// How many occurrences ahead `GET /v1/schedules/{id}` shows, and how many past ones' ids.
pub const SHOWN: usize = 5;

/// The body of a schedule's timer: which schedule, as of which edit, and which occurrence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Tick {
    pub schedule: String,
    pub generation: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub occurrence: OffsetDateTime,
}

impl Tick {
    /// The timer's id: one per schedule and generation, so parking the next occurrence
    /// replaces the last of the same generation.
    pub fn timer_id(schedule: &str, generation: u64) -> String {
        format!("schedule:{schedule}:{generation}")
    }

    /// The id every generation's timer had in earlier versions: removed with the schedule.
    pub fn legacy_timer_id(schedule: &str) -> String {
        format!("schedule:{schedule}")
    }
}

/// A recurrence as callers send it and as it is stored and shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecurrenceSpec {
    /// An RFC 5545 recurrence rule (`RRULE:` may lead), down to `FREQ=SECONDLY`, such as
    /// `FREQ=WEEKLY;BYDAY=MO;BYHOUR=9;BYMINUTE=0`. Its `UNTIL` is a wall-clock time in
    /// `timeZone`, inclusive. A rule the service cannot expand is refused with 400.
    #[schema(min_length = 1, example = "FREQ=WEEKLY;BYDAY=MO;BYHOUR=9;BYMINUTE=0")]
    pub rrule: String,
    #[schema(schema_with = openapi::zone_choice)]
    pub time_zone: String,
    /// The first occurrence at the earliest: a local date-time in `timeZone`
    /// (YYYY-MM-DDTHH:MM[:SS], a real one), or an RFC 3339 instant (with a named `timeZone`).
    #[schema(schema_with = openapi::local_or_instant)]
    pub start: String,
    /// No occurrence after this (inclusive): like `start`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = openapi::optional_local_or_instant)]
    pub until: Option<String>,
}

/// When a schedule's occurrences fall.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recurrence {
    /// The rule as given (without `RRULE:`), checked against the start.
    pub rrule: String,
    pub zone: ZoneChoice,
    /// The first occurrence's wall-clock time at the earliest (the rule's `DTSTART`).
    pub start: LocalDateTime,
    /// No occurrence after this wall-clock time (inclusive).
    pub until: Option<LocalDateTime>,
}

/// Why a recurrence is refused, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidRecurrence {
    pub field: &'static str,
    pub reason: String,
}

impl Recurrence {
    /// A recurrence from what a caller sent: the rule, the zone (`recipient` or IANA), and the
    /// start and end as wall-clock times or RFC 3339 instants (read in the zone, which must
    /// then be a named one).
    pub fn new(
        rrule: &str,
        zone: &str,
        start: &str,
        until: Option<&str>,
    ) -> Result<Self, InvalidRecurrence> {
        let invalid =
            |field: &'static str| move |reason: String| InvalidRecurrence { field, reason };
        let zone: ZoneChoice = zone.parse().map_err(invalid("recurrence.timeZone"))?;
        let wall_clock = |text: &str,
                          field: &'static str|
         -> Result<LocalDateTime, InvalidRecurrence> {
            if let Ok(local) = text.parse::<LocalDateTime>() {
                return Ok(local);
            }
            let instant = OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
                .map_err(|_| {
                    invalid(field)(format!(
                        "{text:?} is neither a local date-time (YYYY-MM-DDTHH:MM[:SS]) nor an RFC 3339 instant"
                    ))
                })?;
            match zone {
                ZoneChoice::Named(zone) => Ok(zone.wall_clock(instant)),
                ZoneChoice::Recipient => Err(invalid(field)(
                    "an instant needs a named timeZone; with \"recipient\", give a local date-time"
                        .into(),
                )),
            }
        };
        let start = wall_clock(start, "recurrence.start")?;
        let until = until
            .map(|u| wall_clock(u, "recurrence.until"))
            .transpose()?;
        if until.is_some_and(|until| until < start) {
            return Err(invalid("recurrence.until")("is before start".into()));
        }
        let rrule = rrule.trim();
        let rrule = rrule.strip_prefix("RRULE:").unwrap_or(rrule).to_owned();
        let recurrence = Self {
            rrule,
            zone,
            start,
            until,
        };
        recurrence
            .rule_set()
            .map_err(|e| invalid("recurrence.rrule")(e.to_string()))?;
        Ok(recurrence)
    }

    pub fn from_spec(spec: &RecurrenceSpec) -> Result<Self, InvalidRecurrence> {
        Self::new(
            &spec.rrule,
            &spec.time_zone,
            &spec.start,
            spec.until.as_deref(),
        )
    }

    /// As stored and shown: the start and end as wall-clock times.
    pub fn spec(&self) -> RecurrenceSpec {
        RecurrenceSpec {
            rrule: self.rrule.clone(),
            time_zone: self.zone.to_string(),
            start: self.start.to_string(),
            until: self.until.map(|until| until.to_string()),
        }
    }

    /// The occurrences after `after` (exclusive), as instants in `zone` (the recipient's, if
    /// the recurrence says so), in order.
    pub fn occurrences_after(
        &self,
        after: OffsetDateTime,
        recipient: Zone,
    ) -> impl Iterator<Item = OffsetDateTime> + '_ {
        let zone = self.zone.resolve(recipient);
        let wall_clock = self
            .rule_set()
            .ok()
            .into_iter()
            .flat_map(|set| set.into_iter());
        wall_clock
            .map(|occurrence| LocalDateTime::from_naive(occurrence.naive_utc()))
            .take_while(move |local| self.until.is_none_or(|until| *local <= until))
            .map(move |local| local.in_zone(zone))
            .skip_while(move |instant| *instant <= after)
    }

    /// The rule expanded on the wall clock (a zone without daylight saving: UTC).
    fn rule_set(&self) -> Result<rrule::RRuleSet, rrule::RRuleError> {
        let start = rrule::Tz::UTC.from_utc_datetime(&self.start.naive());
        rrule::RRule::from_str(&self.rrule)?.build(start)
    }
}

/// A schedule as stored and shown.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub id: String,
    pub to: Target,
    pub message: Message,
    pub recurrence: Recurrence,
    pub paused: bool,
    /// Bumped by every edit, pause and resume; a timer of an older one is dropped.
    pub generation: u64,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

impl Schedule {
    /// A digest of what the schedule asks for, to tell a repeated request from a different one
    /// under the same id.
    pub fn content_hash(&self) -> String {
        use sha2::{Digest, Sha256};
        let content = serde_json::json!({
            "to": self.to, "message": self.message, "recurrence": self.recurrence.spec(),
        });
        let digest = Sha256::digest(content.to_string().as_bytes());
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The job of the occurrence at `instant`.
    pub fn occurrence_job(
        &self,
        instant: OffsetDateTime,
    ) -> Result<crate::job::Job, crate::job::JobError> {
        crate::job::Job::new(
            JobId::for_occurrence(&self.id, instant),
            self.to.clone(),
            self.message.clone(),
            Some(instant),
            None,
        )
    }
}

/// Parks schedules' timers: each schedule's next occurrence.
#[derive(Debug, Clone)]
pub struct Scheduler {
    pub store: ScheduleStore,
    pub queue: DispatchQueue,
    pub users: UserStore,
    pub default_time_zone: Zone,
}

impl Scheduler {
    /// The zone `recipient` names for this schedule: the user's, for a user target (named by
    /// object id, or by a name Herald has resolved).
    pub async fn recipient_zone(&self, schedule: &Schedule) -> Result<Zone, StoreError> {
        match schedule.recurrence.zone {
            ZoneChoice::Recipient => Ok(self
                .users
                .recipient_clock(&schedule.to, self.default_time_zone)
                .await?
                .zone),
            _ => Ok(self.default_time_zone),
        }
    }

    /// The next [`SHOWN`] occurrences after `after` (none while paused).
    pub async fn upcoming(
        &self,
        schedule: &Schedule,
        after: OffsetDateTime,
    ) -> Result<Vec<OffsetDateTime>, StoreError> {
        if schedule.paused {
            return Ok(Vec::new());
        }
        let zone = self.recipient_zone(schedule).await?;
        Ok(schedule
            .recurrence
            .occurrences_after(after, zone)
            .take(SHOWN)
            .collect())
    }

    /// Parks the timer of the schedule's first occurrence after `after`, for the schedule as
    /// it is (its generation); removes it when the schedule is paused or has no occurrence
    /// left. Answers the occurrence.
    pub async fn park_next(
        &self,
        schedule: &Schedule,
        after: OffsetDateTime,
    ) -> Result<Option<OffsetDateTime>, QueueError> {
        let timer = Tick::timer_id(&schedule.id, schedule.generation);
        // The generation before's timer would be dropped when due; removing it saves the trip.
        if let Some(before) = schedule.generation.checked_sub(1) {
            self.queue
                .timers()
                .forget(&Tick::timer_id(&schedule.id, before))
                .await?;
        }
        let zone = self.recipient_zone(schedule).await?;
        let next = match schedule.paused {
            true => None,
            false => schedule.recurrence.occurrences_after(after, zone).next(),
        };
        let Some(occurrence) = next else {
            self.queue.timers().forget(&timer).await?;
            return Ok(None);
        };
        let tick = Tick {
            schedule: schedule.id.clone(),
            generation: schedule.generation,
            occurrence,
        };
        let message = DispatchMessage {
            id: timer,
            amqp_type: TICK_TYPE_V1.to_owned(),
            headers: FieldTable::default(),
            body: serde_json::to_vec(&tick).expect("a tick always serializes"),
        };
        let wait = Duration::try_from(occurrence - OffsetDateTime::now_utc()).unwrap_or_default();
        self.queue.send(&message, wait).await?;
        Ok(Some(occurrence))
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    fn berlin() -> Zone {
        "Europe/Berlin".parse().unwrap()
    }

    #[test]
    fn nine_oclock_in_berlin_stays_nine_oclock_across_both_changes_of_2027() {
        let daily = Recurrence::new(
            "FREQ=DAILY;BYHOUR=9;BYMINUTE=0;BYSECOND=0",
            "Europe/Berlin",
            "2027-03-26T09:00",
            None,
        )
        .unwrap();
        let spring: Vec<_> = daily
            .occurrences_after(datetime!(2027-03-26 00:00 UTC), Zone::UTC)
            .take(4)
            .collect();
        // 26 and 27 March at +01:00; from 28 March (the change) at +02:00.
        assert_eq!(
            spring,
            [
                datetime!(2027-03-26 08:00 UTC),
                datetime!(2027-03-27 08:00 UTC),
                datetime!(2027-03-28 07:00 UTC),
                datetime!(2027-03-29 07:00 UTC),
            ]
        );
        let autumn: Vec<_> = daily
            .occurrences_after(datetime!(2027-10-30 00:00 UTC), Zone::UTC)
            .take(3)
            .collect();
        // Back to +01:00 on 31 October.
        assert_eq!(
            autumn,
            [
                datetime!(2027-10-30 07:00 UTC),
                datetime!(2027-10-31 08:00 UTC),
                datetime!(2027-11-01 08:00 UTC),
            ]
        );
    }

    #[test]
    fn a_time_in_the_gap_moves_to_its_end_and_a_repeated_one_takes_its_first_instant() {
        let half_past_two = Recurrence::new(
            "FREQ=DAILY",
            "Europe/Berlin",
            "2027-03-27T02:30",
            Some("2027-03-28T02:30"),
        )
        .unwrap();
        let all: Vec<_> = half_past_two
            .occurrences_after(datetime!(2027-01-01 00:00 UTC), berlin())
            .collect();
        // 27 March 02:30 +01:00; 28 March 02:30 does not exist: 03:00 +02:00. `until` is
        // inclusive, and nothing comes after it.
        assert_eq!(
            all,
            [
                datetime!(2027-03-27 01:30 UTC),
                datetime!(2027-03-28 01:00 UTC)
            ]
        );
        let fall_back = Recurrence::new(
            "FREQ=DAILY;COUNT=1",
            "Europe/Berlin",
            "2027-10-31T02:30",
            None,
        )
        .unwrap();
        assert_eq!(
            fall_back
                .occurrences_after(datetime!(2027-01-01 00:00 UTC), berlin())
                .collect::<Vec<_>>(),
            [datetime!(2027-10-31 00:30 UTC)]
        );
    }

    #[test]
    fn every_two_seconds_and_every_monday_at_nine_in_the_recipients_zone() {
        let every_two = Recurrence::new(
            "FREQ=SECONDLY;INTERVAL=2",
            "UTC",
            "2026-12-07T09:00:00",
            None,
        )
        .unwrap();
        let next: Vec<_> = every_two
            .occurrences_after(datetime!(2026-12-07 09:00:03 UTC), Zone::UTC)
            .take(2)
            .collect();
        assert_eq!(
            next,
            [
                datetime!(2026-12-07 09:00:04 UTC),
                datetime!(2026-12-07 09:00:06 UTC)
            ]
        );

        let mondays = Recurrence::new(
            "RRULE:FREQ=WEEKLY;BYDAY=MO;BYHOUR=9;BYMINUTE=0;BYSECOND=0",
            "recipient",
            "2026-12-01T00:00",
            None,
        )
        .unwrap();
        let tokyo: Zone = "Asia/Tokyo".parse().unwrap();
        assert_eq!(
            mondays
                .occurrences_after(datetime!(2026-12-01 00:00 UTC), tokyo)
                .next(),
            Some(datetime!(2026-12-07 00:00 UTC))
        );
    }

    #[test]
    fn a_bad_recurrence_is_refused_naming_the_field() {
        for (rule, zone, start, until, field) in [
            (
                "FREQ=SOMETIMES",
                "UTC",
                "2026-12-07T09:00",
                None,
                "recurrence.rrule",
            ),
            (
                "FREQ=DAILY;BYHOUR=25",
                "UTC",
                "2026-12-07T09:00",
                None,
                "recurrence.rrule",
            ),
            (
                "FREQ=DAILY",
                "Mars/Olympus",
                "2026-12-07T09:00",
                None,
                "recurrence.timeZone",
            ),
            ("FREQ=DAILY", "UTC", "tomorrow", None, "recurrence.start"),
            (
                "FREQ=DAILY",
                "recipient",
                "2026-12-07T09:00:00Z",
                None,
                "recurrence.start",
            ),
            (
                "FREQ=DAILY",
                "UTC",
                "2026-12-07T09:00",
                Some("2026-12-06T09:00"),
                "recurrence.until",
            ),
        ] {
            let refused = Recurrence::new(rule, zone, start, until).unwrap_err();
            assert_eq!(refused.field, field, "{rule} {zone} {start}: {refused}");
        }
        // An instant is read in the named zone.
        let from_instant =
            Recurrence::new("FREQ=DAILY", "Europe/Berlin", "2026-12-07T08:00:00Z", None).unwrap();
        assert_eq!(from_instant.start, "2026-12-07T09:00".parse().unwrap());
    }
}
