//! The dispatcher's Microsoft Graph client against the emulator's Graph stand-in and the real
//! Redis: users by UPN and by mail, the app's catalog id, an install and its chat, a group's
//! and a tenant's users over pages; each tenant's calls with that tenant's token; the
//! allowlist keeping the token from other hosts; a 429 holding the tenant on every replica;
//! a withheld permission named; one token for many calls at once; the tenant's pace.

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::future::join_all;
use herald_dispatcher::graph::{GraphClient, GraphError, GraphPage, Installed, UserName};
use herald_emulator::{
    DirectoryGroup, DirectoryUser, Emulator, EmulatorConfig, Fault, GraphPermission, InstallSource,
    Operation, RecordedRequest,
};
use herald_shared::{
    config::{DispatcherConfig, GraphConfig},
    metrics::{Metrics, Service},
    store::Redis,
};
use herald_tests::{NamespaceGuard, busiest, fresh_namespace, init_logging, listener, service_env};
use tokio::io::AsyncReadExt;

/// An emulator, and a Graph client configured for it as the dispatcher is, in a namespace of
/// its own.
struct Setup {
    emulator: Emulator,
    config: DispatcherConfig,
    redis: Redis,
    metrics: Metrics,
    graph: GraphClient,
    _cleanup: NamespaceGuard,
}

impl Setup {
    async fn start() -> Self {
        Self::start_with(EmulatorConfig::default(), &[]).await
    }

    /// With the emulator's Graph limit (30 a second per tenant) on unless `emulator` says
    /// otherwise, and `env` over the test services' configuration.
    async fn start_with(emulator: EmulatorConfig, env: &[(&str, &str)]) -> Self {
        init_logging();
        let emulator = Emulator::start(emulator, listener().await)
            .await
            .expect("the emulator starts");
        let namespace = fresh_namespace();
        let cleanup = NamespaceGuard::new(&namespace);
        let mut vars = service_env(&namespace, &emulator);
        for (key, value) in env {
            vars.set(*key, *value);
        }
        let config = DispatcherConfig::from_env(&vars).expect("the test configuration is valid");
        let redis = Redis::new(&config.common.redis, config.common.namespace.clone()).unwrap();
        let metrics = Metrics::new(Service::Dispatcher);
        let graph = client(&config, &config.graph, &redis, &metrics);
        Self {
            emulator,
            config,
            redis,
            metrics,
            graph,
            _cleanup: cleanup,
        }
    }

    /// Another client as a second dispatcher replica would have (its own tokens, the same
    /// Redis), or one with other Graph settings.
    fn client_with(&self, graph: &GraphConfig) -> GraphClient {
        client(
            &self.config,
            graph,
            &self.redis,
            &Metrics::new(Service::Dispatcher),
        )
    }

    /// The Graph calls (tokens aside) the emulator answered, in order.
    fn graph_calls(&self) -> Vec<RecordedRequest> {
        self.emulator
            .requests()
            .into_iter()
            .filter(|request| request.operation.is_graph())
            .collect()
    }

    fn graph_token_requests(&self) -> Vec<RecordedRequest> {
        self.emulator
            .requests()
            .into_iter()
            .filter(|request| request.operation == Operation::GraphToken)
            .collect()
    }

    /// Every page of a listing, as `list` reads one page from the link of the last; returns
    /// the users and how many pages there were.
    async fn all_pages<F, Fut>(&self, mut list: F) -> (Vec<String>, usize)
    where
        F: FnMut(Option<String>) -> Fut,
        Fut: Future<Output = Result<GraphPage, GraphError>>,
    {
        let (mut ids, mut pages, mut next) = (Vec::new(), 0, None);
        loop {
            let page = list(next.take()).await.expect("the page reads");
            pages += 1;
            ids.extend(page.users.into_iter().map(|user| user.id));
            match page.next {
                Some(link) => next = Some(link),
                None => return (ids, pages),
            }
        }
    }
}

fn client(
    config: &DispatcherConfig,
    graph: &GraphConfig,
    redis: &Redis,
    metrics: &Metrics,
) -> GraphClient {
    GraphClient::new(
        reqwest::Client::new(),
        graph,
        &config.common.bot,
        redis.clone(),
        metrics,
        Duration::from_secs(5),
    )
}

fn tenant() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn upn(name: &str) -> UserName {
    UserName::PrincipalName(name.to_owned())
}

fn email(name: &str) -> UserName {
    UserName::Email(name.to_owned())
}

/// A TCP listener that counts the connections made to it and never answers: a host that must
/// never be called.
async fn counting_listener() -> (String, Arc<AtomicUsize>) {
    let listener = listener().await;
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buffer = [0u8; 1024];
                while matches!(socket.read(&mut buffer).await, Ok(n) if n > 0) {}
            });
        }
    });
    (origin, connections)
}

#[tokio::test]
async fn users_are_found_by_upn_and_by_mail_and_an_unknown_one_is_none() {
    let setup = Setup::start().await;
    let contoso = tenant();
    let ann = DirectoryUser::member(&contoso, "ann@contoso.onmicrosoft.com", "Ann Lee")
        .with_mail("ann.lee@contoso.com");
    let admin = DirectoryUser::member(&contoso, "$admin@contoso.onmicrosoft.com", "Admin");
    let oneil = DirectoryUser::member(&contoso, "oneil@contoso.onmicrosoft.com", "Pat O'Neil")
        .with_mail("o'neil+teams@contoso.com");
    for user in [&ann, &admin, &oneil] {
        setup.emulator.add_directory_user(user);
    }
    let graph = &setup.graph;

    let by_upn = graph
        .user(&contoso, &upn("ann@contoso.onmicrosoft.com"))
        .await
        .unwrap()
        .expect("Ann is found by her UPN");
    assert_eq!(by_upn.id, ann.id);
    assert_eq!(by_upn.mail.as_deref(), Some("ann.lee@contoso.com"));
    assert_eq!(by_upn.account_enabled, Some(true));

    let by_mail = graph
        .user(&contoso, &email("ann.lee@contoso.com"))
        .await
        .unwrap()
        .expect("Ann is found by her mail");
    assert_eq!(by_mail, by_upn);
    assert_eq!(
        graph
            .user(&contoso, &email("ann@contoso.onmicrosoft.com"))
            .await
            .unwrap(),
        None,
        "her UPN is not her mail"
    );

    // A UPN starting with `$` and a mail with a quote and a plus.
    let found = graph
        .user(&contoso, &upn("$admin@contoso.onmicrosoft.com"))
        .await
        .unwrap();
    assert_eq!(found.map(|u| u.id), Some(admin.id.clone()));
    let found = graph
        .user(&contoso, &email("o'neil+teams@contoso.com"))
        .await
        .unwrap();
    assert_eq!(found.map(|u| u.id), Some(oneil.id.clone()));

    for unknown in [
        upn("nobody@contoso.onmicrosoft.com"),
        email("nobody@contoso.com"),
        upn(""),
    ] {
        assert_eq!(graph.user(&contoso, &unknown).await.unwrap(), None);
    }

    let calls = setup.graph_calls();
    assert!(
        calls
            .iter()
            .any(|call| call.path.contains("/graph/v1.0/users('")),
        "a UPN starting with $ goes in parentheses"
    );
    assert!(calls.iter().all(|call| call.had_authorization));
    assert_eq!(calls.len(), 7, "the empty name is not looked up");
}

#[tokio::test]
async fn the_app_is_installed_for_a_user_once_and_its_chat_is_their_personal_chat() {
    let setup = Setup::start().await;
    let contoso = tenant();
    let ann = DirectoryUser::member(&contoso, "ann@contoso.com", "Ann Lee");
    setup.emulator.add_directory_user(&ann);
    let graph = &setup.graph;
    let manifest_id = setup.emulator.teams_app_id();

    assert_eq!(
        graph.catalog_app_id(&contoso, &manifest_id).await.unwrap(),
        None,
        "the tenant's catalog does not have the app yet"
    );
    let app = setup.emulator.put_app_in_catalog(&contoso);
    let catalog_id = graph
        .catalog_app_id(&contoso, &manifest_id)
        .await
        .unwrap()
        .expect("the catalog has the app");
    assert_eq!(catalog_id, app.id);
    assert_ne!(
        catalog_id, manifest_id,
        "an org catalog's id is the tenant's own"
    );

    assert_eq!(
        graph
            .installation_id(&contoso, &ann.id, &catalog_id)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        graph
            .install_app(&contoso, &ann.id, &catalog_id)
            .await
            .unwrap(),
        Installed::Installed
    );
    assert_eq!(
        graph
            .install_app(&contoso, &ann.id, &catalog_id)
            .await
            .unwrap(),
        Installed::AlreadyInstalled
    );
    let installation = setup
        .emulator
        .app_installation(&contoso, &ann.id)
        .expect("Ann has the app");
    assert_eq!(installation.source, InstallSource::Graph);
    let installation_id = graph
        .installation_id(&contoso, &ann.id, &catalog_id)
        .await
        .unwrap()
        .expect("Graph lists the installation");
    assert_eq!(installation_id, installation.installation_id);
    let chat = graph
        .installation_chat(&contoso, &ann.id, &installation_id)
        .await
        .unwrap();
    assert_eq!(chat, setup.emulator.graph_chat_id(&ann.teams_user()));

    // Another tenant whose catalog does not have the app.
    let fabrikam = tenant();
    let bob = DirectoryUser::member(&fabrikam, "bob@fabrikam.com", "Bob Ray");
    setup.emulator.add_directory_user(&bob);
    let refused = graph
        .install_app(&fabrikam, &bob.id, &catalog_id)
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, GraphError::NotInCatalog { teams_app_id, .. } if *teams_app_id == catalog_id),
        "{refused:?}"
    );
    assert!(!refused.is_transient());
    assert!(
        refused.reason().contains("not in the tenant's app catalog"),
        "{}",
        refused.reason()
    );
}

#[tokio::test]
async fn a_groups_users_come_once_each_over_pages_and_the_directory_without_disabled_accounts() {
    let setup = Setup::start().await;
    let contoso = tenant();
    let ann = DirectoryUser::member(&contoso, "ann@contoso.com", "Ann Lee");
    let bob = DirectoryUser::member(&contoso, "bob@contoso.com", "Bob Ray");
    let gone = DirectoryUser::member(&contoso, "gone@contoso.com", "Left Us").disabled();
    for user in [&ann, &bob, &gone] {
        setup.emulator.add_directory_user(user);
    }
    let staff = setup
        .emulator
        .generate_directory_users(&contoso, "staff", 1500);
    // Bob and staff 500..700 are in both groups; the inner group is nested in the outer.
    let inner = DirectoryGroup::new(&contoso, "Inner")
        .with_user(&bob.id)
        .with_generated(&staff, 500..1500);
    let outer = DirectoryGroup::new(&contoso, "Outer")
        .with_user(&ann.id)
        .with_user(&bob.id)
        .with_group(&inner)
        .with_generated(&staff, 0..700);
    setup.emulator.create_group(&inner);
    setup.emulator.create_group(&outer);

    let (graph, tenant, group) = (&setup.graph, contoso.as_str(), outer.id.as_str());
    let (members, pages) = setup
        .all_pages(|next| async move { graph.group_members(tenant, group, next.as_deref()).await })
        .await;
    assert_eq!(pages, 2, "999 a page");
    let unique: HashSet<&String> = members.iter().collect();
    assert_eq!(unique.len(), members.len(), "each member once");
    assert_eq!(members.len(), 2 + 1500);
    assert!(unique.contains(&ann.id) && unique.contains(&bob.id));
    assert!(unique.contains(&staff.directory_user(1499).id));
    assert!(!unique.contains(&inner.id), "groups are not users");

    let (users, pages) = setup
        .all_pages(|next| async move { graph.directory_users(tenant, next.as_deref()).await })
        .await;
    assert_eq!(pages, 2);
    assert_eq!(users.len(), 2 + 1500, "every enabled user, once");
    assert!(
        !users.contains(&gone.id),
        "the disabled account is left out"
    );
}

#[tokio::test]
async fn each_tenants_calls_carry_that_tenants_token() {
    let setup = Setup::start().await;
    let (contoso, fabrikam) = (tenant(), tenant());
    let ann = DirectoryUser::member(&contoso, "ann@contoso.com", "Ann Lee");
    let bob = DirectoryUser::member(&fabrikam, "bob@fabrikam.com", "Bob Ray");
    setup.emulator.add_directory_user(&ann);
    setup.emulator.add_directory_user(&bob);
    let graph = &setup.graph;

    let asked = [
        (&contoso, "ann@contoso.com", true),
        (&fabrikam, "ann@contoso.com", false),
        (&fabrikam, "bob@fabrikam.com", true),
        (&contoso, "bob@fabrikam.com", false),
        (&contoso, "ann@contoso.com", true),
    ];
    for (tenant, name, found) in asked {
        let user = graph.user(tenant, &upn(name)).await.unwrap();
        assert_eq!(user.is_some(), found, "{name} in {tenant}");
    }

    // The emulator records the tenant of the token each call carried: always the tenant the
    // call was made for, though each tenant's token was cached and used again.
    let carried: Vec<Option<String>> = setup
        .graph_calls()
        .into_iter()
        .map(|call| call.tenant_id)
        .collect();
    let expected: Vec<Option<String>> = asked
        .iter()
        .map(|(tenant, _, _)| Some((*tenant).clone()))
        .collect();
    assert_eq!(carried, expected);
    let mut token_tenants: Vec<String> = setup
        .graph_token_requests()
        .into_iter()
        .filter_map(|request| request.tenant_id)
        .collect();
    token_tenants.sort();
    let mut both = vec![contoso.clone(), fabrikam.clone()];
    both.sort();
    assert_eq!(token_tenants, both, "one token from each tenant");
    assert_eq!(graph.tokens().refreshes(), 2);
}

#[tokio::test]
async fn a_host_outside_the_allowlist_never_gets_a_token() {
    let setup = Setup::start().await;
    let contoso = tenant();
    setup.emulator.add_directory_user(&DirectoryUser::member(
        &contoso,
        "ann@contoso.com",
        "Ann Lee",
    ));
    let (elsewhere, connections) = counting_listener().await;
    let host = elsewhere.trim_start_matches("http://").to_owned();

    // Graph's root elsewhere than its allowlist (which the configuration refuses; a client
    // built without it must refuse all the same).
    let misdirected = GraphConfig {
        root: format!("{elsewhere}/graph").parse().unwrap(),
        ..setup.config.graph.clone()
    };
    let graph = setup.client_with(&misdirected);
    let refused = graph
        .user(&contoso, &upn("ann@contoso.com"))
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, GraphError::NotAllowed(named) if *named == host),
        "{refused:?}"
    );
    assert!(refused.reason().contains(&host), "{}", refused.reason());
    assert!(!refused.is_transient());

    // A next page's link to another host.
    let group = DirectoryGroup::new(&contoso, "Everyone");
    setup.emulator.create_group(&group);
    for link in [
        format!(
            "{elsewhere}/graph/v1.0/groups/{}/transitiveMembers?$skiptoken=x",
            group.id
        ),
        "https://graph.microsoft.com.evil.example/v1.0/users?$skiptoken=x".to_owned(),
    ] {
        let refused = setup
            .graph
            .group_members(&contoso, &group.id, Some(&link))
            .await
            .unwrap_err();
        assert!(matches!(refused, GraphError::NotAllowed(_)), "{refused:?}");
        let refused = setup
            .graph
            .directory_users(&contoso, Some(&link))
            .await
            .unwrap_err();
        assert!(matches!(refused, GraphError::NotAllowed(_)), "{refused:?}");
    }

    // Nothing reached the other host, and no Graph token was even asked for.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(connections.load(Ordering::SeqCst), 0);
    assert!(setup.graph_token_requests().is_empty());
    assert!(setup.graph_calls().is_empty());
    let metrics = setup.metrics.encode();
    assert!(
        metrics.contains(
            r#"herald_graph_requests_total{call="group_members",outcome="not_allowed"} 2"#
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_429_holds_the_tenants_graph_calls_on_every_replica_for_its_retry_after() {
    let setup = Setup::start().await;
    let (contoso, fabrikam) = (tenant(), tenant());
    setup.emulator.add_directory_user(&DirectoryUser::member(
        &contoso,
        "ann@contoso.com",
        "Ann Lee",
    ));
    setup.emulator.add_directory_user(&DirectoryUser::member(
        &fabrikam,
        "bob@fabrikam.com",
        "Bob Ray",
    ));
    setup.emulator.inject_fault(Fault {
        operation: Some(Operation::GraphGetUser),
        tenant_id: Some(contoso.clone()),
        status: 429,
        retry_after: Some("2".to_owned()),
        times: 1,
        ..Fault::default()
    });
    let graph = &setup.graph;
    let ann = upn("ann@contoso.com");

    let throttled = graph.user(&contoso, &ann).await.unwrap_err();
    let paused_at = Instant::now();
    assert!(
        matches!(throttled, GraphError::Throttled { retry_after } if retry_after == Duration::from_secs(2)),
        "{throttled:?}"
    );
    assert!(throttled.is_transient());
    assert_eq!(throttled.retry_after(), Some(Duration::from_secs(2)));

    // Held here and on another replica, without calling Graph; the other tenant is not.
    let replica = setup.client_with(&setup.config.graph);
    for client in [graph, &replica] {
        let held = client.user(&contoso, &ann).await.unwrap_err();
        let wait = held.retry_after().expect("a held call says how long");
        assert!(
            matches!(held, GraphError::Held { .. })
                && wait <= Duration::from_secs(2)
                && wait > Duration::from_secs(1),
            "{held:?}"
        );
    }
    let bob = graph
        .user(&fabrikam, &upn("bob@fabrikam.com"))
        .await
        .unwrap();
    assert!(bob.is_some(), "another tenant's calls go on");
    let contoso_calls = || {
        setup
            .graph_calls()
            .into_iter()
            .filter(|call| call.tenant_id.as_deref() == Some(contoso.as_str()))
            .count()
    };
    assert_eq!(contoso_calls(), 1, "only the throttled call reached Graph");
    assert!(
        paused_at.elapsed() < Duration::from_secs(1),
        "the checks ran inside the pause"
    );

    // Once the pause is over, the tenant's calls go again.
    tokio::time::sleep(Duration::from_secs(2).saturating_sub(paused_at.elapsed())).await;
    let found = loop {
        match graph.user(&contoso, &ann).await {
            Err(GraphError::Held { wait }) if wait < Duration::from_millis(200) => {
                tokio::time::sleep(wait).await;
            }
            other => break other,
        }
    };
    assert!(found.unwrap().is_some());
    assert_eq!(contoso_calls(), 2);
    let metrics = setup.metrics.encode();
    for line in [
        r#"herald_graph_requests_total{call="get_user",outcome="throttled"} 1"#,
        r#"herald_graph_requests_total{call="get_user",outcome="held"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
}

#[tokio::test]
async fn a_withheld_permission_is_named() {
    let setup = Setup::start().await;
    let contoso = tenant();
    let ann = DirectoryUser::member(&contoso, "ann@contoso.com", "Ann Lee");
    setup.emulator.add_directory_user(&ann);
    let group = DirectoryGroup::new(&contoso, "Everyone").with_user(&ann.id);
    setup.emulator.create_group(&group);
    let app = setup.emulator.put_app_in_catalog(&contoso);
    setup
        .emulator
        .withhold_graph_permissions(&contoso, &GraphPermission::ALL);
    let graph = &setup.graph;

    let missing = |result: GraphError| match result {
        GraphError::PermissionMissing { permission, .. } => permission,
        other => panic!("expected a missing permission, got {other:?}"),
    };
    let refused = graph
        .user(&contoso, &upn("ann@contoso.com"))
        .await
        .unwrap_err();
    assert_eq!(
        refused.reason(),
        "Microsoft Graph refused: the app lacks the application permission User.Read.All in this tenant (grant it and give admin consent)"
    );
    assert!(!refused.is_transient());
    assert_eq!(
        missing(graph.directory_users(&contoso, None).await.unwrap_err()),
        "User.Read.All"
    );
    assert_eq!(
        missing(
            graph
                .catalog_app_id(&contoso, &setup.emulator.teams_app_id())
                .await
                .unwrap_err()
        ),
        "AppCatalog.Read.All"
    );
    assert_eq!(
        missing(
            graph
                .install_app(&contoso, &ann.id, &app.id)
                .await
                .unwrap_err()
        ),
        "TeamsAppInstallation.ReadWriteSelfForUser.All"
    );
    assert_eq!(
        missing(
            graph
                .installation_id(&contoso, &ann.id, &app.id)
                .await
                .unwrap_err()
        ),
        "TeamsAppInstallation.ReadWriteSelfForUser.All"
    );
    assert_eq!(
        missing(
            graph
                .group_members(&contoso, &group.id, None)
                .await
                .unwrap_err()
        ),
        "GroupMember.Read.All"
    );
}

#[tokio::test]
async fn many_calls_at_once_for_one_tenant_fetch_one_token() {
    let setup = Setup::start().await;
    let contoso = tenant();
    let staff = setup
        .emulator
        .generate_directory_users(&contoso, "staff", 20);
    let graph = &setup.graph;
    let names: Vec<UserName> = (0..20)
        .map(|i| upn(&staff.directory_user(i).user_principal_name))
        .collect();
    let found = join_all(names.iter().map(|name| graph.user(&contoso, name))).await;
    for (i, user) in found.into_iter().enumerate() {
        assert_eq!(
            user.unwrap().map(|u| u.id),
            Some(staff.directory_user(i).id)
        );
    }
    assert_eq!(graph.tokens().refreshes(), 1);
    assert_eq!(setup.graph_token_requests().len(), 1);
    assert_eq!(
        setup.emulator.stats().graph_throttled,
        0,
        "paced within Graph's limit"
    );
    let metrics = setup.metrics.encode();
    assert!(
        metrics.contains("herald_graph_token_refreshes_total 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_tenants_calls_are_spaced_at_its_rate_and_those_too_far_out_are_held() {
    // The emulator's limit stays at Graph's 30 a second: what is measured is the pace alone.
    let setup = Setup::start_with(EmulatorConfig::default(), &[("HERALD_GRAPH_RATE", "10")]).await;
    let contoso = tenant();
    setup.emulator.add_directory_user(&DirectoryUser::member(
        &contoso,
        "ann@contoso.com",
        "Ann Lee",
    ));
    let graph = &setup.graph;
    let ann = upn("ann@contoso.com");
    // Warm the token, so the calls below start together.
    graph.user(&contoso, &ann).await.unwrap();

    // Turns 101 ms apart: 15 fit in the 1.5 s a call waits, the rest are told to come back.
    let results = join_all((0..20).map(|_| graph.user(&contoso, &ann))).await;
    let went = results.iter().filter(|r| matches!(r, Ok(Some(_)))).count();
    let held: Vec<Duration> = results
        .iter()
        .filter_map(|r| match r {
            Err(GraphError::Held { wait }) => Some(*wait),
            _ => None,
        })
        .collect();
    assert_eq!(went + held.len(), 20, "{results:?}");
    assert!((13..=16).contains(&went), "{went} went");
    assert!(
        held.iter().all(|wait| *wait > Duration::from_millis(1400)),
        "{held:?}"
    );
    // Arrivals are as far apart as the turns, but for the way through the network.
    let mut times: Vec<_> = setup
        .graph_calls()
        .into_iter()
        .map(|call| call.at)
        .collect();
    times.sort();
    let span = *times.last().unwrap() - times[0];
    assert!(
        span >= time::Duration::milliseconds(101 * (times.len() as i64 - 1) - 60),
        "{} calls in {span}",
        times.len()
    );
    assert!(busiest(&times, Duration::from_secs(1)) <= 11);
}
