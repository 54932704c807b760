//! The recipient's clock: IANA time zones (from `chrono-tz`, the IANA database compiled in),
//! wall-clock times, the daylight-saving rules Herald applies, and the weekly windows a message
//! waits for (send windows, quiet hours).
//!
//! DST, as the contract says: a local time keeps its wall-clock time across a change; a local
//! time that does not exist (in the gap of a spring-forward) moves to the first one after the
//! gap that does (02:30 on a night Berlin skips from 02:00 to 03:00 is 03:00); an ambiguous
//! one (repeated in a fall-back) takes its first instant.
//!
//! Everything here is pure: the instant it starts from is given, never read from a clock.

use std::{fmt, str::FromStr};

use chrono::{
    Datelike, Duration as Span, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, TimeZone,
    Timelike,
};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// An IANA time zone, such as `Europe/Berlin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Zone(Tz);

impl Zone {
    pub const UTC: Zone = Zone(Tz::UTC);

    pub fn name(self) -> &'static str {
        self.0.name()
    }

    /// The wall-clock time in this zone at `at`.
    pub fn wall_clock(self, at: OffsetDateTime) -> LocalDateTime {
        LocalDateTime(self.0.from_utc_datetime(&naive_utc(at)).naive_local())
    }

    /// Every zone the database knows, by name (the OpenAPI document lists them).
    pub fn all_names() -> impl Iterator<Item = &'static str> {
        chrono_tz::TZ_VARIANTS.iter().map(|tz| tz.name())
    }
}

impl FromStr for Zone {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        name.parse::<Tz>()
            .map(Zone)
            .map_err(|_| format!("{name:?} is not an IANA time zone (such as \"Europe/Berlin\")"))
    }
}

impl fmt::Display for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for Zone {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Zone {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// A time of day on the wall clock, `HH:MM`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TimeOfDay(NaiveTime);

impl TimeOfDay {
    pub fn new(hour: u32, minute: u32) -> Option<Self> {
        NaiveTime::from_hms_opt(hour, minute, 0).map(Self)
    }
}

impl FromStr for TimeOfDay {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{text:?} is not a time of day as HH:MM (00:00 to 23:59)");
        if text.len() != 5 {
            return Err(bad());
        }
        NaiveTime::parse_from_str(text, "%H:%M")
            .map(Self)
            .map_err(|_| bad())
    }
}

impl fmt::Display for TimeOfDay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.format("%H:%M"))
    }
}

impl Serialize for TimeOfDay {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TimeOfDay {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A user's quiet hours: a message to them due within waits until they end, unless it is
/// urgent. `to` earlier than `from` runs past midnight (`18:00` to `08:00`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuietHours {
    pub from: TimeOfDay,
    pub to: TimeOfDay,
}

impl QuietHours {
    /// Quiet hours as the window they leave open, every day, in `zone`.
    pub fn awake(self, zone: Zone) -> Weekly {
        Weekly {
            from: self.to,
            to: self.from,
            days: Vec::new(),
            zone,
        }
    }
}

/// What a recipient's clock says about sending to them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecipientClock {
    /// Their own zone, or the deployment's default.
    pub zone: Zone,
    pub quiet_hours: Option<QuietHours>,
}

impl RecipientClock {
    /// A recipient Herald knows nothing about, in `zone`.
    pub fn in_zone(zone: Zone) -> Self {
        Self {
            zone,
            quiet_hours: None,
        }
    }
}

/// A date and wall-clock time without a zone, `YYYY-MM-DDTHH:MM` or `YYYY-MM-DDTHH:MM:SS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct LocalDateTime(NaiveDateTime);

impl LocalDateTime {
    /// The instant this wall-clock time names in `zone`, by the DST rules of the module docs.
    pub fn in_zone(self, zone: Zone) -> OffsetDateTime {
        instant_of(self.0, zone.0)
    }

    pub(crate) fn from_naive(naive: NaiveDateTime) -> Self {
        Self(naive)
    }

    pub(crate) fn naive(self) -> NaiveDateTime {
        self.0
    }
}

impl FromStr for LocalDateTime {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let format = match text.len() {
            16 => "%Y-%m-%dT%H:%M",
            19 => "%Y-%m-%dT%H:%M:%S",
            _ => "",
        };
        NaiveDateTime::parse_from_str(text, format)
            .ok()
            .filter(|_| !format.is_empty())
            .map(Self)
            .ok_or_else(|| {
                format!(
                    "{text:?} is not a local date and time as YYYY-MM-DDTHH:MM or YYYY-MM-DDTHH:MM:SS"
                )
            })
    }
}

impl fmt::Display for LocalDateTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.format("%Y-%m-%dT%H:%M:%S"))
    }
}

/// A day of the week, as windows name them.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Weekday {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

impl From<chrono::Weekday> for Weekday {
    fn from(day: chrono::Weekday) -> Self {
        match day {
            chrono::Weekday::Mon => Self::Mon,
            chrono::Weekday::Tue => Self::Tue,
            chrono::Weekday::Wed => Self::Wed,
            chrono::Weekday::Thu => Self::Thu,
            chrono::Weekday::Fri => Self::Fri,
            chrono::Weekday::Sat => Self::Sat,
            chrono::Weekday::Sun => Self::Sun,
        }
    }
}

/// Hours of a week, in one zone: from `from` to `to` on each of `days` (every day when empty).
/// A window whose `to` is earlier than its `from` runs past midnight, into the next day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Weekly {
    pub from: TimeOfDay,
    pub to: TimeOfDay,
    pub days: Vec<Weekday>,
    pub zone: Zone,
}

impl Weekly {
    /// The first instant at or after `at` that lies in the window: `at` itself if it does.
    pub fn next_opening(&self, at: OffsetDateTime) -> OffsetDateTime {
        let tz = self.zone.0;
        let local = tz.from_utc_datetime(&naive_utc(at)).naive_local();
        if self.contains(local) {
            return at;
        }
        // The next start on an open day; a week and a day cover every case.
        (0..=8)
            .filter_map(|offset| local.date().checked_add_signed(Span::days(offset)))
            .filter(|date| self.is_open_on(*date))
            .map(|date| instant_of(date.and_time(self.from.0), tz))
            .find(|start| *start > at)
            .unwrap_or(at)
    }

    /// Whether the window holds this wall-clock moment.
    fn contains(&self, local: NaiveDateTime) -> bool {
        let (date, time) = (local.date(), local.time());
        let (from, to) = (self.from.0, self.to.0);
        if from < to {
            self.is_open_on(date) && from <= time && time < to
        } else {
            // Past midnight: the evening part belongs to its own day, the morning part to
            // the day before.
            (time >= from && self.is_open_on(date))
                || (time < to && date.pred_opt().is_some_and(|d| self.is_open_on(d)))
        }
    }

    fn is_open_on(&self, date: NaiveDate) -> bool {
        self.days.is_empty() || self.days.contains(&date.weekday().into())
    }
}

/// There is no instant within a week that every window holds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the send window and the recipient's quiet hours never leave an opening")]
pub struct NoOpening;

/// The first instant at or after `at` that every window in `windows` holds.
pub fn first_opening(at: OffsetDateTime, windows: &[Weekly]) -> Result<OffsetDateTime, NoOpening> {
    let mut candidate = at;
    // Each pass moves to an opening of every window in turn; when a pass moves nothing, all
    // hold. Windows that never meet make the candidate run on: a fortnight is the limit.
    let limit = at + time::Duration::days(15);
    while candidate <= limit {
        let moved = windows
            .iter()
            .fold(candidate, |t, window| window.next_opening(t));
        if moved == candidate {
            return Ok(candidate);
        }
        candidate = moved;
    }
    Err(NoOpening)
}

/// The instant of wall-clock time `local` in `tz`, by the module's DST rules.
fn instant_of(local: NaiveDateTime, tz: Tz) -> OffsetDateTime {
    let resolved = match tz.from_local_datetime(&local) {
        LocalResult::Single(t) => t,
        LocalResult::Ambiguous(first, second) => first.min(second),
        LocalResult::None => {
            // In a gap: the first whole minute after it (gaps are whole minutes in the IANA
            // database, and none is longer than a day).
            let mut probe = local
                .with_second(0)
                .and_then(|t| t.with_nanosecond(0))
                .unwrap_or(local);
            loop {
                probe += Span::minutes(1);
                if let LocalResult::Single(t) | LocalResult::Ambiguous(t, _) =
                    tz.from_local_datetime(&probe)
                {
                    break t;
                }
            }
        }
    };
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(
        resolved.timestamp_nanos_opt().unwrap_or(i64::MAX),
    ))
    .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn naive_utc(at: OffsetDateTime) -> NaiveDateTime {
    chrono::DateTime::from_timestamp(at.unix_timestamp(), at.nanosecond())
        .unwrap_or_default()
        .naive_utc()
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    fn zone(name: &str) -> Zone {
        name.parse().unwrap()
    }

    fn local(text: &str) -> LocalDateTime {
        text.parse().unwrap()
    }

    #[test]
    fn a_local_time_is_its_wall_clock_time_in_each_zone() {
        let nine = local("2026-12-07T09:00");
        assert_eq!(
            nine.in_zone(zone("Pacific/Auckland")),
            datetime!(2026-12-06 20:00 UTC)
        );
        assert_eq!(
            nine.in_zone(zone("America/Los_Angeles")),
            datetime!(2026-12-07 17:00 UTC)
        );
        assert_eq!(nine.in_zone(Zone::UTC), datetime!(2026-12-07 09:00 UTC));
    }

    #[test]
    fn berlin_keeps_nine_oclock_across_both_changes_of_2027() {
        let berlin = zone("Europe/Berlin");
        // Spring forward on 28 March 2027, fall back on 31 October 2027.
        assert_eq!(
            local("2027-03-27T09:00").in_zone(berlin),
            datetime!(2027-03-27 08:00 UTC)
        );
        assert_eq!(
            local("2027-03-29T09:00").in_zone(berlin),
            datetime!(2027-03-29 07:00 UTC)
        );
        assert_eq!(
            local("2027-10-30T09:00").in_zone(berlin),
            datetime!(2027-10-30 07:00 UTC)
        );
        assert_eq!(
            local("2027-11-01T09:00").in_zone(berlin),
            datetime!(2027-11-01 08:00 UTC)
        );
    }

    #[test]
    fn a_time_in_the_gap_moves_to_the_gaps_end_and_a_repeated_one_takes_its_first_instant() {
        let berlin = zone("Europe/Berlin");
        // 02:00 becomes 03:00 CEST (01:00 UTC) on 28 March 2027.
        assert_eq!(
            local("2027-03-28T02:30").in_zone(berlin),
            datetime!(2027-03-28 01:00 UTC)
        );
        // 02:30 happens twice on 31 October 2027: first at +02:00.
        assert_eq!(
            local("2027-10-31T02:30").in_zone(berlin),
            datetime!(2027-10-31 00:30 UTC)
        );
    }

    #[test]
    fn local_date_times_parse_with_or_without_seconds_and_nothing_else() {
        assert_eq!(local("2026-12-07T09:00"), local("2026-12-07T09:00:00"));
        for bad in [
            "2026-12-07 09:00",
            "2026-02-30T09:00",
            "2026-12-07T24:00",
            "2026-12-07T09:00Z",
            "2026-12-07T09:00:00.5",
            "",
        ] {
            assert!(bad.parse::<LocalDateTime>().is_err(), "{bad}");
        }
        assert!("Mars/Olympus".parse::<Zone>().is_err());
        assert!("9:00".parse::<TimeOfDay>().is_err());
        assert!("23:60".parse::<TimeOfDay>().is_err());
    }

    fn weekdays_nine_to_five(zone: Zone) -> Weekly {
        Weekly {
            from: "09:00".parse().unwrap(),
            to: "17:00".parse().unwrap(),
            days: vec![
                Weekday::Mon,
                Weekday::Tue,
                Weekday::Wed,
                Weekday::Thu,
                Weekday::Fri,
            ],
            zone,
        }
    }

    #[test]
    fn a_weekday_window_holds_a_saturday_message_until_monday_morning() {
        let window = weekdays_nine_to_five(zone("America/New_York"));
        // Saturday 12 December 2026, 10:00 in New York.
        let saturday = local("2026-12-12T10:00").in_zone(window.zone);
        assert_eq!(
            window.next_opening(saturday),
            local("2026-12-14T09:00").in_zone(window.zone)
        );
        // Inside: at once. Friday evening: Monday.
        let tuesday = local("2026-12-08T16:59").in_zone(window.zone);
        assert_eq!(window.next_opening(tuesday), tuesday);
        let friday = local("2026-12-11T17:00").in_zone(window.zone);
        assert_eq!(
            window.next_opening(friday),
            local("2026-12-14T09:00").in_zone(window.zone)
        );
    }

    #[test]
    fn quiet_hours_past_midnight_end_in_the_morning() {
        // Quiet 22:00–07:00 is the window 07:00–22:00, every day.
        let awake = Weekly {
            from: "07:00".parse().unwrap(),
            to: "22:00".parse().unwrap(),
            days: vec![],
            zone: zone("Europe/Berlin"),
        };
        let late = local("2026-12-07T23:30").in_zone(awake.zone);
        assert_eq!(
            awake.next_opening(late),
            local("2026-12-08T07:00").in_zone(awake.zone)
        );
        // A night window crossing midnight holds the small hours of the next day.
        let night = Weekly {
            from: "22:00".parse().unwrap(),
            to: "06:00".parse().unwrap(),
            days: vec![Weekday::Fri],
            zone: zone("Europe/Berlin"),
        };
        let saturday_small_hours = local("2026-12-12T03:00").in_zone(night.zone);
        assert_eq!(
            night.next_opening(saturday_small_hours),
            saturday_small_hours
        );
        let sunday_small_hours = local("2026-12-13T03:00").in_zone(night.zone);
        assert_eq!(
            night.next_opening(sunday_small_hours),
            local("2026-12-18T22:00").in_zone(night.zone)
        );
    }

    #[test]
    fn every_window_must_hold_and_windows_that_never_meet_are_an_error() {
        let berlin = zone("Europe/Berlin");
        let work = weekdays_nine_to_five(berlin);
        // Awake from 10:00 to 20:00: a Monday 08:00 message waits for 10:00.
        let awake = Weekly {
            from: "10:00".parse().unwrap(),
            to: "20:00".parse().unwrap(),
            days: vec![],
            zone: berlin,
        };
        let monday_eight = local("2026-12-07T08:00").in_zone(berlin);
        assert_eq!(
            first_opening(monday_eight, &[work.clone(), awake]),
            Ok(local("2026-12-07T10:00").in_zone(berlin))
        );
        let never = Weekly {
            from: "18:00".parse().unwrap(),
            to: "20:00".parse().unwrap(),
            days: vec![],
            zone: berlin,
        };
        assert_eq!(first_opening(monday_eight, &[work, never]), Err(NoOpening));
    }
}
