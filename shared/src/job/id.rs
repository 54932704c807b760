//! Job ids: the ones callers choose, checked once where they enter, and the three schemes by
//! which Herald names jobs itself.
//!
//! Herald's own ids are UUIDs. The v5 schemes are deterministic on purpose: a request retried
//! with the same `Idempotency-Key`, or the several activities Teams sends for one install, must
//! name the same job on every replica and in every version, or a second job would be queued.
//! Changing either scheme would do exactly that to every record already stored, so the tests
//! below pin one id of each.

use std::{fmt, ops::Deref, str::FromStr};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Names jobs created from an `Idempotency-Key` (UUID v5 over namespace and key).
const IDEMPOTENCY_NAMESPACE: Uuid = Uuid::from_u128(0x6865_7261_6c64_4964_656d_0000_0000_0001);

/// Names Herald's own job ids (UUID v5 over namespace, conversation, install, kind).
const JOB_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6865_7261_6c64_4a6f_6273_0000_0000_0001);

/// Names the jobs of a schedule's occurrences (UUID v5 over schedule id and instant).
const OCCURRENCE_NAMESPACE: Uuid = Uuid::from_u128(0x6865_7261_6c64_5363_6865_0000_0000_0001);

/// The longest id accepted: it is part of Redis keys and AMQP message ids.
const MAX_LEN: usize = 128;

/// [`JobId::is_valid`] as a regular expression, for the OpenAPI document and the job schema.
const PATTERN: &str = "^[!-~]+$";

/// A job's id: 1–128 printable ASCII characters (no spaces), so that it is safe in a Redis
/// key, an AMQP message id and a URL path segment.
///
/// It reads as the `str` it is (`Deref`), so a checked id goes wherever an id is keyed or
/// logged; only parsing (`FromStr`, `TryFrom<String>`, serde) and Herald's own schemes make one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String")]
pub struct JobId(String);

/// Why a string is not a job id. The text is the reason an invalid job's `id` is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("must be 1-128 printable ASCII characters")]
pub struct InvalidJobId;

impl JobId {
    /// A new job's id (UUID v7: ids made later sort later).
    pub fn fresh() -> Self {
        Uuid::now_v7().into()
    }

    /// The id of the job a request with this `Idempotency-Key` creates: the same key names the
    /// same job, in this `namespace` only.
    pub fn from_idempotency_key(namespace: &str, key: &str) -> Self {
        Uuid::new_v5(
            &IDEMPOTENCY_NAMESPACE,
            format!("{namespace}/{key}").as_bytes(),
        )
        .into()
    }

    /// The id of one of Herald's own jobs for an install (`kind` tells them apart, e.g.
    /// `welcome`): the same for every activity of that install, different for the next install
    /// (`generation`) of the same conversation.
    pub fn for_install(
        namespace: &str,
        conversation_id: &str,
        generation: u64,
        kind: &str,
    ) -> Self {
        let name = format!("{namespace}/{conversation_id}/{generation}/{kind}");
        Uuid::new_v5(&JOB_ID_NAMESPACE, name.as_bytes()).into()
    }

    /// The id of the job a schedule's occurrence at `instant` becomes: the same on every
    /// replica and at every retry, so an occurrence is never sent twice.
    pub fn for_occurrence(schedule_id: &str, instant: time::OffsetDateTime) -> Self {
        let name = format!(
            "{schedule_id}/{}",
            instant.unix_timestamp_nanos() / 1_000_000
        );
        Uuid::new_v5(&OCCURRENCE_NAMESPACE, name.as_bytes()).into()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn is_valid(id: &str) -> bool {
        (1..=MAX_LEN).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic())
    }
}

/// A UUID's text is always a valid id.
impl From<Uuid> for JobId {
    fn from(uuid: Uuid) -> Self {
        Self(uuid.to_string())
    }
}

impl TryFrom<String> for JobId {
    type Error = InvalidJobId;

    fn try_from(id: String) -> Result<Self, Self::Error> {
        if Self::is_valid(&id) {
            Ok(Self(id))
        } else {
            Err(InvalidJobId)
        }
    }
}

impl FromStr for JobId {
    type Err = InvalidJobId;

    fn from_str(id: &str) -> Result<Self, Self::Err> {
        id.to_owned().try_into()
    }
}

impl From<JobId> for String {
    fn from(id: JobId) -> Self {
        id.0
    }
}

impl Deref for JobId {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for JobId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The OpenAPI schema states the same rule [`JobId::is_valid`] checks.
impl utoipa::PartialSchema for JobId {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(MAX_LEN))
            .pattern(Some(PATTERN))
            .description(Some(
                "A job's id: 1-128 printable ASCII characters, no spaces. The same id again \
                 names the same job, never a second message.",
            ))
            .into()
    }
}

impl utoipa::ToSchema for JobId {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retried_request_names_the_job_it_named_before() {
        // Computed by the ingress before the scheme moved here; records stored since carry it.
        let id = JobId::from_idempotency_key("herald", "order-42");
        assert_eq!(id.as_str(), "7e64d8a8-39c4-5420-8b77-5f6e97ff0f4f");
        assert_eq!(id, JobId::from_idempotency_key("herald", "order-42"));
        // Another deployment's namespace, or another key, is another job.
        assert_ne!(id, JobId::from_idempotency_key("staging", "order-42"));
        assert_ne!(id, JobId::from_idempotency_key("herald", "order-43"));
    }

    #[test]
    fn every_activity_of_an_install_names_the_same_greeting() {
        // Computed by the ingress before the scheme moved here; records stored since carry it.
        let welcome = JobId::for_install("herald", "a:1", 3, "welcome");
        assert_eq!(welcome.as_str(), "f028fd2b-8c59-5984-b9b1-9f75bb1f9eb4");
        assert_ne!(welcome, JobId::for_install("herald", "a:1", 3, "reminder"));
        assert_ne!(
            welcome,
            JobId::for_install("herald", "a:1", 4, "welcome"),
            "a reinstall greets again"
        );
    }

    #[test]
    fn each_occurrence_of_a_schedule_names_its_own_job() {
        let at = time::macros::datetime!(2026-12-07 09:00 UTC);
        let occurrence = JobId::for_occurrence("weekly-standup", at);
        assert_eq!(occurrence.as_str(), "8ce9719c-0d19-58f5-8004-3b8c72367580");
        assert_eq!(occurrence, JobId::for_occurrence("weekly-standup", at));
        assert_ne!(
            occurrence,
            JobId::for_occurrence("weekly-standup", at + time::Duration::DAY)
        );
        assert_ne!(occurrence, JobId::for_occurrence("daily-digest", at));
    }

    #[test]
    fn fresh_ids_are_uuids_that_sort_by_creation() {
        let first = JobId::fresh();
        let second = JobId::fresh();
        assert_eq!(Uuid::parse_str(&first).unwrap().get_version_num(), 7);
        assert!(first < second, "{first} then {second}");
    }

    #[test]
    fn a_caller_may_choose_any_short_printable_ascii_id() {
        for id in [
            "a",
            "invoice-77",
            "0193b6f0-7c1e-7a52",
            "a:b/c?d=e&f#g",
            &"x".repeat(128),
        ] {
            let parsed: JobId = id.parse().unwrap_or_else(|e| panic!("{id:?}: {e}"));
            assert_eq!(parsed.as_str(), id);
        }
        for id in [
            "",
            "has space",
            "tab\t",
            "caf\u{e9}",
            "line\nbreak",
            &"x".repeat(129),
        ] {
            assert_eq!(id.parse::<JobId>(), Err(InvalidJobId), "{id:?}");
        }
    }

    #[test]
    fn an_id_in_json_is_a_plain_string_checked_on_the_way_in() {
        let id: JobId = serde_json::from_str(r#""invoice-77""#).unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), r#""invoice-77""#);
        let err = serde_json::from_str::<JobId>(r#""two words""#).unwrap_err();
        assert!(err.to_string().contains("printable ASCII"), "{err}");
    }
}
