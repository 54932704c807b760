//! What Herald remembers of its Microsoft Graph calls for people who never installed the app,
//! so that they are made once, not once per job:
//!
//! - `{ns}:reach:name:{tenantId}:{upn:…|mail:…}` → the user's object id (a day; directories
//!   rarely give a name to someone else, and a day bounds how long that would mislead);
//! - `{ns}:reach:catalog:{tenantId}` → the app's id in the tenant's catalog (a day);
//! - `{ns}:reach:denied:{tenantId}:{permission}` → why Graph refused the tenant's calls that
//!   need that permission, so that the tenant's later jobs fail at once without calling
//!   Graph; it lapses after [`DENIAL_TTL`], so a permission granted later is used without a
//!   restart;
//! - `{ns}:reach:quiet:{tenantId}:{aadObjectId}` → set while Herald installs the app for a
//!   user: the install Teams then tells the bot of gets no welcome (the notification is the
//!   user's first message).

use std::time::Duration;

use redis::AsyncCommands;

use super::{Redis, StoreError};
use crate::job::UserName;

/// How long a resolved name and a catalog id are kept.
pub const NAME_TTL: Duration = Duration::from_secs(24 * 3600);

/// How long a tenant's refused permission fails its jobs without asking Graph again.
pub const DENIAL_TTL: Duration = Duration::from_secs(10 * 60);

/// How long the quiet mark of an install Herald makes lasts: Teams tells the bot of the
/// install within seconds, and redelivers for minutes at most.
pub const QUIET_TTL: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone)]
pub struct ReachStore {
    redis: Redis,
}

impl ReachStore {
    pub fn new(redis: Redis) -> Self {
        Self { redis }
    }

    fn name_key(&self, tenant_id: &str, name: &UserName) -> String {
        self.redis
            .key("reach", &format!("name:{tenant_id}:{}", name.key()))
    }

    fn quiet_key(&self, tenant_id: &str, aad_object_id: &str) -> String {
        self.redis.key(
            "reach",
            &format!("quiet:{tenant_id}:{}", aad_object_id.to_ascii_lowercase()),
        )
    }

    /// The object id a name was resolved to, if it was.
    pub async fn resolved_name(
        &self,
        tenant_id: &str,
        name: &UserName,
    ) -> Result<Option<String>, StoreError> {
        Ok(self
            .redis
            .conn()
            .get(self.name_key(tenant_id, name))
            .await?)
    }

    pub async fn remember_name(
        &self,
        tenant_id: &str,
        name: &UserName,
        aad_object_id: &str,
    ) -> Result<(), StoreError> {
        let key = self.name_key(tenant_id, name);
        let () = self
            .redis
            .conn()
            .set_ex(key, aad_object_id, NAME_TTL.as_secs())
            .await?;
        Ok(())
    }

    /// The app's id in the tenant's catalog, if it was looked up.
    pub async fn catalog_id(&self, tenant_id: &str) -> Result<Option<String>, StoreError> {
        let key = self.redis.key("reach", &format!("catalog:{tenant_id}"));
        Ok(self.redis.conn().get(key).await?)
    }

    pub async fn remember_catalog_id(
        &self,
        tenant_id: &str,
        catalog_id: &str,
    ) -> Result<(), StoreError> {
        let key = self.redis.key("reach", &format!("catalog:{tenant_id}"));
        let () = self
            .redis
            .conn()
            .set_ex(key, catalog_id, NAME_TTL.as_secs())
            .await?;
        Ok(())
    }

    /// Why Graph refuses the tenant's calls that need `permission`, while that is remembered.
    pub async fn denial(
        &self,
        tenant_id: &str,
        permission: &str,
    ) -> Result<Option<String>, StoreError> {
        let key = self
            .redis
            .key("reach", &format!("denied:{tenant_id}:{permission}"));
        Ok(self.redis.conn().get(key).await?)
    }

    pub async fn deny(
        &self,
        tenant_id: &str,
        permission: &str,
        reason: &str,
    ) -> Result<(), StoreError> {
        let key = self
            .redis
            .key("reach", &format!("denied:{tenant_id}:{permission}"));
        let () = self
            .redis
            .conn()
            .set_ex(key, reason, DENIAL_TTL.as_secs())
            .await?;
        Ok(())
    }

    /// Marks the install Herald is about to make for the user: no welcome for it.
    pub async fn mark_quiet_install(
        &self,
        tenant_id: &str,
        aad_object_id: &str,
    ) -> Result<(), StoreError> {
        let key = self.quiet_key(tenant_id, aad_object_id);
        let () = self
            .redis
            .conn()
            .set_ex(key, "1", QUIET_TTL.as_secs())
            .await?;
        Ok(())
    }

    /// Whether the user's install was made by Herald (and so gets no welcome).
    pub async fn is_quiet_install(
        &self,
        tenant_id: &str,
        aad_object_id: &str,
    ) -> Result<bool, StoreError> {
        let key = self.quiet_key(tenant_id, aad_object_id);
        Ok(self.redis.conn().exists(key).await?)
    }

    /// The user removed the app: a later install is theirs, and gets its welcome.
    pub async fn forget_quiet_install(
        &self,
        tenant_id: &str,
        aad_object_id: &str,
    ) -> Result<(), StoreError> {
        let key = self.quiet_key(tenant_id, aad_object_id);
        let () = self.redis.conn().del(key).await?;
        Ok(())
    }
}
