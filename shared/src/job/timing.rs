//! The job's local-time fields (the contract's "Time"): `deliverAtLocal` with its `timeZone`,
//! a send `window`, and `urgent`, which lets a message through the recipient's quiet hours.
//!
//! They are checked once, as they are read, each failure naming its field; the one rule that
//! spans the job (`deliverAt` and `deliverAtLocal` are never both given) is checked by
//! [`Job::with_timing`](super::Job::with_timing).

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::openapi::schema::Schema;

use super::{JobError, openapi};
use crate::calendar::{LocalDateTime, TimeOfDay, Weekday, Weekly, Zone};

/// Whose zone a local time is read in: the recipient's own (learned from Teams, or set
/// through `/v1/users`), or a named IANA zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZoneChoice {
    Recipient,
    Named(Zone),
}

impl ZoneChoice {
    /// The zone this choice names, given the recipient's.
    pub fn resolve(self, recipient: Zone) -> Zone {
        match self {
            ZoneChoice::Recipient => recipient,
            ZoneChoice::Named(zone) => zone,
        }
    }
}

impl FromStr for ZoneChoice {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "recipient" => Ok(Self::Recipient),
            name => name
                .parse()
                .map(Self::Named)
                .map_err(|e| format!("{e}, or \"recipient\" for the recipient's own")),
        }
    }
}

impl fmt::Display for ZoneChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Recipient => f.write_str("recipient"),
            Self::Named(zone) => f.write_str(zone.name()),
        }
    }
}

/// Hours of the week a message may be sent in; one due outside waits for the next opening.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SendWindow {
    #[serde(serialize_with = "as_text")]
    #[schema(schema_with = openapi::time_of_day)]
    pub from: TimeOfDay,
    /// Earlier than `from`: the window runs past midnight.
    #[serde(serialize_with = "as_text")]
    #[schema(schema_with = openapi::time_of_day)]
    pub to: TimeOfDay,
    /// The days it opens on (the day it opens, for a window past midnight); absent or empty
    /// means every day.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Option<Vec<Weekday>>)]
    pub days: Vec<Weekday>,
    /// Absent: the job's `timeZone`, else the recipient's.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "optional_as_text"
    )]
    #[schema(schema_with = openapi::optional_zone_choice)]
    pub time_zone: Option<ZoneChoice>,
}

/// The job's local-time fields, all optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", try_from = "UncheckedTiming")]
pub struct Timing {
    /// Instead of `deliverAt`: a wall-clock time in `timeZone` (which it needs), such as
    /// `2026-12-07T09:00`. A time that does not exist on that day (in a spring-forward gap)
    /// moves to the end of the gap; one that happens twice takes the first.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "optional_as_text"
    )]
    #[schema(schema_with = deliver_at_local_schema)]
    pub deliver_at_local: Option<LocalDateTime>,
    /// The zone of `deliverAtLocal` and of `window`: `recipient` (the user's own, learned
    /// from Teams or set through `/v1/users`; `HERALD_DEFAULT_TIME_ZONE` when unknown, and
    /// for targets that are not a user) or an IANA name.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "optional_as_text"
    )]
    #[schema(schema_with = openapi::optional_zone_choice)]
    pub time_zone: Option<ZoneChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = window_schema)]
    pub window: Option<SendWindow>,
    /// Sent even in the recipient's quiet hours.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    #[schema(schema_with = urgent_schema)]
    pub urgent: bool,
}

impl Timing {
    /// Whether any field reads the recipient's zone.
    pub fn needs_recipient_zone(&self) -> bool {
        let recipient = Some(ZoneChoice::Recipient);
        let local = self.deliver_at_local.is_some() && self.time_zone == recipient;
        let window = self
            .window
            .as_ref()
            .is_some_and(|window| self.zone_of(window) == ZoneChoice::Recipient);
        local || window
    }

    /// A window's zone: its own, else the job's, else the recipient's.
    fn zone_of(&self, window: &SendWindow) -> ZoneChoice {
        window
            .time_zone
            .or(self.time_zone)
            .unwrap_or(ZoneChoice::Recipient)
    }

    /// The instant `deliverAtLocal` names, in the chosen zone.
    pub fn local_due(&self, recipient: Zone) -> Option<OffsetDateTime> {
        let zone = self
            .time_zone
            .unwrap_or(ZoneChoice::Recipient)
            .resolve(recipient);
        self.deliver_at_local.map(|local| local.in_zone(zone))
    }

    /// The send window in its zone.
    pub fn window_in(&self, recipient: Zone) -> Option<Weekly> {
        self.window.as_ref().map(|window| Weekly {
            from: window.from,
            to: window.to,
            days: window.days.clone(),
            zone: self.zone_of(window).resolve(recipient),
        })
    }
}

/// The fields as sent, before each is read and checked.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UncheckedTiming {
    #[serde(default)]
    deliver_at_local: Option<String>,
    #[serde(default)]
    time_zone: Option<String>,
    #[serde(default)]
    window: Option<UncheckedWindow>,
    #[serde(default)]
    urgent: Option<bool>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UncheckedWindow {
    from: String,
    to: String,
    #[serde(default)]
    days: Option<Vec<String>>,
    #[serde(default)]
    time_zone: Option<String>,
}

impl TryFrom<UncheckedTiming> for Timing {
    type Error = JobError;

    fn try_from(raw: UncheckedTiming) -> Result<Self, Self::Error> {
        let invalid =
            |field: &'static str| move |reason: String| JobError::Invalid { field, reason };
        let deliver_at_local = raw
            .deliver_at_local
            .map(|text| text.parse())
            .transpose()
            .map_err(invalid("deliverAtLocal"))?;
        let time_zone = raw
            .time_zone
            .map(|text| text.parse())
            .transpose()
            .map_err(invalid("timeZone"))?;
        if deliver_at_local.is_some() && time_zone.is_none() {
            return Err(invalid("timeZone")(
                "is required with deliverAtLocal (an IANA name, or \"recipient\")".into(),
            ));
        }
        let window = raw
            .window
            .map(|window| {
                let from: TimeOfDay = window.from.parse().map_err(invalid("window.from"))?;
                let to: TimeOfDay = window.to.parse().map_err(invalid("window.to"))?;
                if from == to {
                    return Err(invalid("window")(
                        "from and to must differ (a window of every hour needs none)".into(),
                    ));
                }
                let days = window
                    .days
                    .unwrap_or_default()
                    .iter()
                    .map(|day| {
                        serde_json::from_value(serde_json::Value::String(day.clone())).map_err(
                            |_| format!("{day:?} is not a day (mon, tue, wed, thu, fri, sat, sun)"),
                        )
                    })
                    .collect::<Result<Vec<Weekday>, String>>()
                    .map_err(invalid("window.days"))?;
                let time_zone = window
                    .time_zone
                    .map(|text| text.parse())
                    .transpose()
                    .map_err(invalid("window.timeZone"))?;
                Ok(SendWindow {
                    from,
                    to,
                    days,
                    time_zone,
                })
            })
            .transpose()?;
        Ok(Self {
            deliver_at_local,
            time_zone,
            window,
            urgent: raw.urgent.unwrap_or(false),
        })
    }
}

fn as_text<T: fmt::Display, S: serde::Serializer>(
    value: &T,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

fn optional_as_text<T: fmt::Display, S: serde::Serializer>(
    value: &Option<T>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(value) => serializer.collect_str(value),
        None => serializer.serialize_none(),
    }
}

fn deliver_at_local_schema() -> Schema {
    openapi::optional_local_date_time(
        "Instead of `deliverAt`: a wall-clock time in `timeZone` (which it needs), as \
         YYYY-MM-DDTHH:MM or YYYY-MM-DDTHH:MM:SS, a real date and time. A time that does not \
         exist that day (in a spring-forward gap) moves to the end of the gap; one that happens \
         twice takes the first. Given with `deliverAt`, the request is refused with 400.",
    )
}

fn window_schema() -> Schema {
    openapi::nullable_ref(
        "SendWindow",
        "Hours of the week the message may be sent in; one due outside waits for the next \
         opening. `from` and `to` must differ.",
    )
}

fn urgent_schema() -> Schema {
    openapi::optional_boolean("Sent even in the recipient's quiet hours.")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn read(body: serde_json::Value) -> Result<Timing, String> {
        serde_json::from_value(body).map_err(|e| e.to_string())
    }

    #[test]
    fn the_fields_read_back_as_they_were_written() {
        let body = json!({
            "deliverAtLocal": "2026-12-07T09:00:00",
            "timeZone": "recipient",
            "window": {"from": "09:00", "to": "17:00", "days": ["mon", "fri"], "timeZone": "Europe/Berlin"},
            "urgent": true
        });
        let timing = read(body.clone()).unwrap();
        assert_eq!(serde_json::to_value(&timing).unwrap(), body);
        assert_eq!(read(json!({})).unwrap(), Timing::default());
        assert_eq!(
            read(json!({"deliverAtLocal": null, "timeZone": null, "window": null, "urgent": null}))
                .unwrap(),
            Timing::default()
        );
    }

    #[test]
    fn each_bad_field_is_named() {
        for (body, field) in [
            (
                json!({"deliverAtLocal": "2026-02-30T09:00", "timeZone": "UTC"}),
                "deliverAtLocal:",
            ),
            (
                json!({"deliverAtLocal": "2026-12-07T09:00"}),
                "timeZone: is required",
            ),
            (json!({"timeZone": "Mars/Olympus"}), "timeZone:"),
            (
                json!({"window": {"from": "9:00", "to": "17:00"}}),
                "window.from:",
            ),
            (
                json!({"window": {"from": "09:00", "to": "24:00"}}),
                "window.to:",
            ),
            (
                json!({"window": {"from": "09:00", "to": "09:00"}}),
                "window: from and to must differ",
            ),
            (
                json!({"window": {"from": "09:00", "to": "17:00", "days": ["funday"]}}),
                "window.days:",
            ),
            (
                json!({"window": {"from": "09:00", "to": "17:00", "timeZone": "x"}}),
                "window.timeZone:",
            ),
        ] {
            let error = read(body.clone()).unwrap_err();
            assert!(error.starts_with(field), "{body}: {error}");
        }
    }

    #[test]
    fn the_window_takes_its_own_zone_else_the_jobs_else_the_recipients() {
        let berlin: Zone = "Europe/Berlin".parse().unwrap();
        let tokyo: Zone = "Asia/Tokyo".parse().unwrap();
        let window = |zone: Option<&str>| {
            let mut w = json!({"from": "09:00", "to": "17:00"});
            if let Some(zone) = zone {
                w["timeZone"] = json!(zone);
            }
            w
        };
        let zone_of = |body: serde_json::Value| read(body).unwrap().window_in(tokyo).unwrap().zone;
        assert_eq!(
            zone_of(json!({"window": window(Some("Europe/Berlin"))})),
            berlin
        );
        assert_eq!(
            zone_of(json!({"timeZone": "Europe/Berlin", "window": window(None)})),
            berlin
        );
        assert_eq!(zone_of(json!({"window": window(None)})), tokyo);
        assert!(
            read(json!({"window": window(None)}))
                .unwrap()
                .needs_recipient_zone()
        );
        assert!(
            !read(json!({"timeZone": "UTC", "window": window(None)}))
                .unwrap()
                .needs_recipient_zone()
        );
    }
}
