//! Reaching people who never installed the app, through Microsoft Graph: who a name
//! (`userPrincipalName`, `email`) is, and — with `HERALD_PROACTIVE_INSTALL=on` — installing the
//! app for a user Teams will not open a chat with, then reading the chat the install made.
//!
//! Graph is asked once per fact, not once per job: resolved names and the catalog id are kept
//! in Redis ([`ReachStore`]), and a tenant that has not granted a Graph permission fails the
//! jobs needing it at once with the reason until the refusal lapses. Until Graph has answered
//! a tenant's calls of one permission once, this dispatcher makes them one at a time, so a
//! tenant without the permission costs one refused call, not one per job in flight.

use std::{
    collections::HashMap,
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use herald_shared::{
    job::UserName,
    store::{ReachStore, StoreError},
};

use crate::graph::{GraphClient, GraphError, GraphPage, Installed};

/// What `lastError` says when Teams will not open a chat with a user who never installed the
/// app and Herald is not to install it.
pub const NOT_INSTALLED: &str = "the app is not installed for this user, so Teams will not open a \
    chat with them; set HERALD_PROACTIVE_INSTALL=on (with HERALD_TEAMS_APP_ID and the Graph \
    permission TeamsAppInstallation.ReadWriteSelfForUser.All) to have Herald install it";

/// Why a user could not be reached through Graph.
#[derive(Debug, thiserror::Error)]
pub enum ReachError {
    /// Final: no such user, installs off, a missing permission, the app not in the catalog.
    #[error("{0}")]
    Final(String),
    /// Graph's answer, to be decided on like a failed call (a 429, a 503, a lost connection).
    #[error(transparent)]
    Graph(#[from] GraphError),
}

/// The application permission a call needs: a tenant grants each or not, so each has its own
/// first call and its own remembered refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Permission {
    /// `User.Read.All`: users by name, the directory.
    Users,
    /// `AppCatalog.Read.All`.
    Catalog,
    /// `TeamsAppInstallation.ReadWriteSelfForUser.All`: installs and their chats.
    Installs,
    /// `GroupMember.Read.All`.
    Groups,
}

impl Permission {
    fn name(self) -> &'static str {
        match self {
            Permission::Users => "User.Read.All",
            Permission::Catalog => "AppCatalog.Read.All",
            Permission::Installs => "TeamsAppInstallation.ReadWriteSelfForUser.All",
            Permission::Groups => "GroupMember.Read.All",
        }
    }
}

/// Whether Graph has answered a tenant's calls of one permission yet, and the lock their
/// first calls take turns on.
#[derive(Default)]
struct Gate {
    answered: AtomicBool,
    first_calls: tokio::sync::Mutex<()>,
}

pub struct Reach {
    graph: GraphClient,
    store: ReachStore,
    /// `HERALD_PROACTIVE_INSTALL`.
    install: bool,
    /// `HERALD_TEAMS_APP_ID`, the app's manifest id.
    app_id: Option<String>,
    gates: Mutex<HashMap<(String, Permission), Arc<Gate>>>,
    /// One catalog lookup at a time per tenant: first contacts arriving together wait for
    /// the one in flight and read its answer from the store.
    catalog_lookups: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for Reach {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reach")
            .field("install", &self.install)
            .field("app_id", &self.app_id)
            .finish_non_exhaustive()
    }
}

/// Whose users an audience read from Graph is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Members<'a> {
    /// An Entra group's, nested groups' members included.
    Group(&'a str),
    /// The tenant directory's.
    Directory,
}

/// A user reached by an install: the chat the install opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenedChat {
    pub conversation_id: String,
}

impl Reach {
    pub fn new(
        graph: GraphClient,
        store: ReachStore,
        install: bool,
        app_id: Option<String>,
    ) -> Self {
        Self {
            graph,
            store,
            install,
            app_id,
            gates: Mutex::default(),
            catalog_lookups: Mutex::default(),
        }
    }

    /// The object id of a user named by `name`, if the stores know it (no call to Graph).
    pub async fn known_name(
        &self,
        tenant_id: &str,
        name: &UserName,
    ) -> Result<Option<String>, StoreError> {
        self.store.resolved_name(tenant_id, name).await
    }

    /// The object id of the user named by `name`, asked of Graph (the caller found no stored
    /// answer, [`known_name`](Self::known_name)), and stored for the next job.
    pub async fn resolve_name(
        &self,
        tenant_id: &str,
        name: &UserName,
    ) -> Result<Result<String, ReachError>, StoreError> {
        let lookup = || self.graph.user(tenant_id, name);
        let found = match self.call(tenant_id, Permission::Users, lookup).await? {
            Ok(found) => found,
            Err(error) => return Ok(Err(error)),
        };
        let Some(user) = found else {
            return Ok(Err(ReachError::Final(format!(
                "tenant {tenant_id}'s directory has no user with {} {:?}",
                name.field(),
                name.as_str()
            ))));
        };
        if user.account_enabled == Some(false) {
            return Ok(Err(ReachError::Final(format!(
                "the account of the user with {} {:?} is disabled",
                name.field(),
                name.as_str()
            ))));
        }
        self.store.remember_name(tenant_id, name, &user.id).await?;
        Ok(Ok(user.id))
    }

    /// Installs the app for a user Teams would not open a chat with (they never installed
    /// it), and reads the chat the install opened. Only with installs on; a user who removed
    /// the app never comes here (their stored conversation says so).
    pub async fn install_for(
        &self,
        tenant_id: &str,
        aad_object_id: &str,
    ) -> Result<Result<OpenedChat, ReachError>, StoreError> {
        let (true, Some(app_id)) = (self.install, self.app_id.as_deref()) else {
            return Ok(Err(ReachError::Final(NOT_INSTALLED.to_owned())));
        };
        let catalog_id = match self.catalog_id(tenant_id, app_id).await? {
            Ok(id) => id,
            Err(error) => return Ok(Err(error)),
        };
        // Marked before the install: Teams tells the bot of it at once.
        self.store
            .mark_quiet_install(tenant_id, aad_object_id)
            .await?;
        let installed = self
            .call(tenant_id, Permission::Installs, || {
                self.graph
                    .install_app(tenant_id, aad_object_id, &catalog_id)
            })
            .await?;
        match installed {
            Ok(Installed::Installed) => {
                tracing::info!(tenant_id, "installed the app for a user who had not");
            }
            // Installed meanwhile (by the user, or an earlier attempt of this job).
            Ok(Installed::AlreadyInstalled) => {}
            Err(error) => {
                // No install of Herald's is coming: one the user makes is greeted. (A retry
                // of this job marks it again.)
                self.store
                    .forget_quiet_install(tenant_id, aad_object_id)
                    .await?;
                return Ok(Err(error));
            }
        }
        let installation = self
            .call(tenant_id, Permission::Installs, || {
                self.graph
                    .installation_id(tenant_id, aad_object_id, &catalog_id)
            })
            .await?;
        let installation_id = match installation {
            Ok(Some(id)) => id,
            // Graph has not caught up with its own install: a later attempt will find it.
            Ok(None) => {
                return Ok(Err(ReachError::Graph(GraphError::Unavailable {
                    status: 404,
                    code: None,
                    message: "the app's installation is not listed yet".into(),
                    retry_after: None,
                })));
            }
            Err(error) => return Ok(Err(error)),
        };
        let chat = self
            .call(tenant_id, Permission::Installs, || {
                self.graph
                    .installation_chat(tenant_id, aad_object_id, &installation_id)
            })
            .await?;
        Ok(chat.map(|conversation_id| OpenedChat { conversation_id }))
    }

    /// One page of an audience's users (`next`: the link the page before gave).
    pub async fn members_page(
        &self,
        tenant_id: &str,
        members: Members<'_>,
        next: Option<&str>,
    ) -> Result<Result<GraphPage, ReachError>, StoreError> {
        let permission = match members {
            Members::Group(_) => Permission::Groups,
            Members::Directory => Permission::Users,
        };
        self.call(tenant_id, permission, || async move {
            match members {
                Members::Group(group_id) => {
                    self.graph.group_members(tenant_id, group_id, next).await
                }
                Members::Directory => self.graph.directory_users(tenant_id, next).await,
            }
        })
        .await
    }

    /// The app's id in the tenant's catalog: stored, or asked of Graph.
    async fn catalog_id(
        &self,
        tenant_id: &str,
        app_id: &str,
    ) -> Result<Result<String, ReachError>, StoreError> {
        if let Some(id) = self.store.catalog_id(tenant_id).await? {
            return Ok(Ok(id));
        }
        let lookup = {
            let mut lookups = self
                .catalog_lookups
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            lookups.entry(tenant_id.to_owned()).or_default().clone()
        };
        let _only = lookup.lock().await;
        // The lookup this one waited for may have found it.
        if let Some(id) = self.store.catalog_id(tenant_id).await? {
            return Ok(Ok(id));
        }
        let found = self
            .call(tenant_id, Permission::Catalog, || {
                self.graph.catalog_app_id(tenant_id, app_id)
            })
            .await?;
        match found {
            Ok(Some(id)) => {
                self.store.remember_catalog_id(tenant_id, &id).await?;
                Ok(Ok(id))
            }
            Ok(None) => Ok(Err(ReachError::Final(format!(
                "the app (HERALD_TEAMS_APP_ID {app_id}) is not in tenant {tenant_id}'s app \
                 catalog; publish it to the organization's catalog"
            )))),
            Err(error) => Ok(Err(error)),
        }
    }

    /// Makes one Graph call for `tenant_id` that needs `permission`: not at all while the
    /// tenant is known not to grant it, one at a time until Graph has answered such a call of
    /// the tenant once, and a refusal remembered for the tenant's later jobs.
    async fn call<T, F, Fut>(
        &self,
        tenant_id: &str,
        permission: Permission,
        call: F,
    ) -> Result<Result<T, ReachError>, StoreError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, GraphError>>,
    {
        let gate = self.gate(tenant_id, permission);
        let _turn = if gate.answered.load(Ordering::Acquire) {
            None
        } else {
            Some(gate.first_calls.lock().await)
        };
        if let Some(reason) = self.store.denial(tenant_id, permission.name()).await? {
            return Ok(Err(ReachError::Final(reason)));
        }
        match call().await {
            Ok(answer) => {
                gate.answered.store(true, Ordering::Release);
                Ok(Ok(answer))
            }
            Err(error @ GraphError::PermissionMissing { .. }) => {
                let reason = error.reason();
                tracing::warn!(tenant_id, %reason, "Microsoft Graph refused a permission; the tenant's jobs fail until it is granted");
                self.store
                    .deny(tenant_id, permission.name(), &reason)
                    .await?;
                Ok(Err(ReachError::Final(reason)))
            }
            Err(error) if !error.is_transient() => Ok(Err(ReachError::Final(error.reason()))),
            Err(error) => Ok(Err(ReachError::Graph(error))),
        }
    }

    fn gate(&self, tenant_id: &str, permission: Permission) -> Arc<Gate> {
        let mut gates = self.gates.lock().unwrap_or_else(|e| e.into_inner());
        let key = (tenant_id.to_owned(), permission);
        gates.entry(key).or_default().clone()
    }
}
