//! What Herald knows of a user's clock: their time zone and quiet hours.
//!
//! Key `{ns}:profile:{tenantId}:{aadObjectId}` (the object id lower-cased, as Teams may send it
//! in either case), a hash: `timeZone` with `timeZoneSource` (`teams`: learned from an inbound
//! activity; `explicit`: set through `/v1/users`, which a later activity never overrides),
//! `quietFrom` and `quietTo`, `updatedAt`.

use std::{collections::HashMap, sync::LazyLock};

use redis::{AsyncCommands, Script};
use time::OffsetDateTime;

use super::{ReachStore, Redis, StoreError, parse_rfc3339, rfc3339};
use crate::{
    calendar::{QuietHours, RecipientClock, TimeOfDay, Zone},
    job::Target,
};

/// A user's stored profile.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Profile {
    pub time_zone: Option<Zone>,
    /// Whether the zone was set through the API (and is kept from Teams' activities).
    pub time_zone_explicit: bool,
    pub quiet_hours: Option<QuietHours>,
    pub updated_at: Option<OffsetDateTime>,
}

/// A change to a profile: each field absent is left alone, `Some(None)` clears it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProfileChange {
    pub time_zone: Option<Option<Zone>>,
    pub quiet_hours: Option<Option<QuietHours>>,
}

/// KEYS: the profile. ARGV: zone, now. Sets a zone learned from Teams unless one was set
/// explicitly; answers 1 if it changed anything.
static LEARN_ZONE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local found = redis.call('HMGET', KEYS[1], 'timeZone', 'timeZoneSource')
if found[2] == 'explicit' or found[1] == ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'timeZone', ARGV[1], 'timeZoneSource', 'teams', 'updatedAt', ARGV[2])
return 1
"#,
    )
});

#[derive(Debug, Clone)]
pub struct UserStore {
    redis: Redis,
}

impl UserStore {
    pub fn new(redis: Redis) -> Self {
        Self { redis }
    }

    /// The profile, if Herald holds one.
    pub async fn get(
        &self,
        tenant_id: &str,
        aad_object_id: &str,
    ) -> Result<Option<Profile>, StoreError> {
        let key = self.key(tenant_id, aad_object_id);
        let hash: HashMap<String, String> = self.redis.conn().hgetall(&key).await?;
        if hash.is_empty() {
            return Ok(None);
        }
        Profile::from_hash(&key, &hash).map(Some)
    }

    /// The recipient's clock: their zone (else `default`) and quiet hours. One small read.
    pub async fn clock(
        &self,
        tenant_id: &str,
        aad_object_id: &str,
        default: Zone,
    ) -> Result<RecipientClock, StoreError> {
        let key = self.key(tenant_id, aad_object_id);
        let (zone, from, to): (Option<String>, Option<String>, Option<String>) =
            redis::cmd("HMGET")
                .arg(&key)
                .arg(&["timeZone", "quietFrom", "quietTo"])
                .query_async(&mut self.redis.conn())
                .await?;
        let profile = Profile::from_fields(&key, zone.as_deref(), from.as_deref(), to.as_deref())?;
        Ok(RecipientClock {
            zone: profile.0.unwrap_or(default),
            quiet_hours: profile.1,
        })
    }

    /// The clock of whoever `to` names: a user's as stored, else `default` (conversations and
    /// channels have no one clock). A user named by sign-in name or mail has their clock
    /// under the object id the name was resolved to; before the first contact resolves it,
    /// Herald knows no clock of theirs either, and `default` it is.
    pub async fn recipient_clock(
        &self,
        to: &Target,
        default: Zone,
    ) -> Result<RecipientClock, StoreError> {
        match to {
            Target::User(user) => {
                self.clock(&user.tenant_id, &user.aad_object_id, default)
                    .await
            }
            Target::NamedUser(named) => {
                let names = ReachStore::new(self.redis.clone());
                match names.resolved_name(&named.tenant_id, &named.name).await? {
                    Some(id) => self.clock(&named.tenant_id, &id, default).await,
                    None => Ok(RecipientClock::in_zone(default)),
                }
            }
            _ => Ok(RecipientClock::in_zone(default)),
        }
    }

    /// Applies `change` (an explicit zone wins over Teams' from now on) and answers the
    /// profile as it then stands.
    pub async fn change(
        &self,
        tenant_id: &str,
        aad_object_id: &str,
        change: &ProfileChange,
        now: OffsetDateTime,
    ) -> Result<Profile, StoreError> {
        let key = self.key(tenant_id, aad_object_id);
        let mut pipe = redis::pipe();
        pipe.atomic();
        let mut set: Vec<(&str, String)> = vec![("updatedAt", rfc3339(now))];
        let mut clear: Vec<&str> = Vec::new();
        match change.time_zone {
            Some(Some(zone)) => {
                set.push(("timeZone", zone.name().to_owned()));
                set.push(("timeZoneSource", "explicit".to_owned()));
            }
            // Cleared: Teams' next activity may teach it again.
            Some(None) => clear.extend(["timeZone", "timeZoneSource"]),
            None => {}
        }
        match change.quiet_hours {
            Some(Some(quiet)) => {
                set.push(("quietFrom", quiet.from.to_string()));
                set.push(("quietTo", quiet.to.to_string()));
            }
            Some(None) => clear.extend(["quietFrom", "quietTo"]),
            None => {}
        }
        pipe.hset_multiple(&key, &set).ignore();
        if !clear.is_empty() {
            pipe.hdel(&key, clear).ignore();
        }
        pipe.hgetall(&key);
        let (hash,): (HashMap<String, String>,) = pipe.query_async(&mut self.redis.conn()).await?;
        Profile::from_hash(&key, &hash)
    }

    /// Notes the zone an inbound activity carried, unless one was set explicitly.
    pub async fn learn_time_zone(
        &self,
        tenant_id: &str,
        aad_object_id: &str,
        zone: Zone,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let changed: u8 = LEARN_ZONE
            .key(self.key(tenant_id, aad_object_id))
            .arg(zone.name())
            .arg(rfc3339(now))
            .invoke_async(&mut self.redis.conn())
            .await?;
        Ok(changed == 1)
    }

    fn key(&self, tenant_id: &str, aad_object_id: &str) -> String {
        self.redis.key(
            "profile",
            &format!("{tenant_id}:{}", aad_object_id.to_ascii_lowercase()),
        )
    }
}

impl Profile {
    fn from_hash(key: &str, hash: &HashMap<String, String>) -> Result<Self, StoreError> {
        let field = |name: &str| hash.get(name).map(String::as_str);
        let (time_zone, quiet_hours) =
            Self::from_fields(key, field("timeZone"), field("quietFrom"), field("quietTo"))?;
        Ok(Self {
            time_zone,
            time_zone_explicit: field("timeZoneSource") == Some("explicit"),
            quiet_hours,
            updated_at: field("updatedAt").and_then(parse_rfc3339),
        })
    }

    /// The zone and quiet hours from their stored fields.
    #[allow(clippy::type_complexity)]
    fn from_fields(
        key: &str,
        zone: Option<&str>,
        from: Option<&str>,
        to: Option<&str>,
    ) -> Result<(Option<Zone>, Option<QuietHours>), StoreError> {
        let malformed = |reason: String| StoreError::Malformed {
            key: key.to_owned(),
            reason,
        };
        let zone = zone
            .map(str::parse::<Zone>)
            .transpose()
            .map_err(malformed)?;
        let time = |text: Option<&str>| text.map(str::parse::<TimeOfDay>).transpose();
        let quiet = match (time(from).map_err(malformed)?, time(to).map_err(malformed)?) {
            (Some(from), Some(to)) => Some(QuietHours { from, to }),
            _ => None,
        };
        Ok((zone, quiet))
    }
}
