//! Per-executor tokens: issue, list, revoke; the Work stream's Hello checked against them.

use std::time::Duration;

use ghost_proto::executor::v1::{Hello, Workspace};
use ghost_proto::router::v1::executor_token_service_client::ExecutorTokenServiceClient;
use ghost_proto::router::v1::{
    CreateExecutorTokenRequest, ExecutorToken, ListExecutorTokensRequest, PatchStatus,
    RevokeExecutorTokenRequest,
};
use tonic::Code;

use crate::helpers::{
    RecordingAlerter, TestExecutor, TestRouter, config, patch, spawn_router, state, submit,
    wait_for_status,
};

fn tokens(router: &TestRouter) -> ExecutorTokenServiceClient<tonic::transport::Channel> {
    ExecutorTokenServiceClient::new(router.channel.clone())
}

/// Issues a token; (its record, the secret).
async fn create(router: &TestRouter, name: &str, targets: &[&str]) -> (ExecutorToken, String) {
    let answer = tokens(router)
        .create_executor_token(CreateExecutorTokenRequest {
            name: name.to_owned(),
            targets: targets.iter().map(|t| (*t).to_owned()).collect(),
            actor: "admin-key".to_owned(),
        })
        .await
        .expect("token created")
        .into_inner();
    (answer.token.expect("token"), answer.secret)
}

async fn list(router: &TestRouter) -> Vec<ExecutorToken> {
    tokens(router)
        .list_executor_tokens(ListExecutorTokensRequest {})
        .await
        .expect("list")
        .into_inner()
        .tokens
}

/// The patch is still waiting: nobody leased it.
async fn still_queued(router: &TestRouter, id: &str) {
    let current = state(router, id).await;
    assert_eq!(current.status, PatchStatus::Queued as i32, "{current:?}");
    assert_eq!(current.attempt, 0, "never leased: {current:?}");
}

#[tokio::test]
async fn an_unknown_token_is_refused_and_nothing_is_leased() {
    let dir = tempfile::tempdir().unwrap();
    let router = spawn_router(config(dir.path())).await;
    create(&router, "alice-laptop", &["MAIN"]).await;
    submit(&router, patch("waiting", "MAIN")).await;

    let refused = TestExecutor::connect_with(&router, "mallory", &["MAIN"], "gx_0123456789abcdef")
        .await
        .err()
        .expect("refused");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert_eq!(refused.message(), "unknown executor token");

    let anonymous = TestExecutor::connect_with(&router, "mallory", &["MAIN"], "")
        .await
        .err()
        .expect("refused once a token exists");
    assert_eq!(anonymous.code(), Code::Unauthenticated, "{anonymous:?}");
    still_queued(&router, "waiting").await;
}

#[tokio::test]
async fn a_revoked_token_cuts_its_live_stream_and_its_lease_goes_to_another_executor() {
    let dir = tempfile::tempdir().unwrap();
    let router = spawn_router(config(dir.path())).await;
    let (_, doomed_secret) = create(&router, "doomed", &["MAIN"]).await;
    let (_, spare_secret) = create(&router, "spare", &["MAIN"]).await;
    submit(&router, patch("held", "MAIN")).await;

    let mut doomed = TestExecutor::connect_with(&router, "doomed-box", &["MAIN"], &doomed_secret)
        .await
        .expect("live token accepted");
    let first = doomed.assignment().await;
    assert_eq!(first.patch.as_ref().unwrap().id, "held");
    let mut spare = TestExecutor::connect_with(&router, "spare-box", &["MAIN"], &spare_secret)
        .await
        .expect("live token accepted");
    spare.keep_alive(Duration::from_millis(100));
    let before = list(&router).await;
    let doomed_row = before.iter().find(|t| t.name == "doomed").unwrap();
    assert_eq!(doomed_row.live_streams, 1);
    assert!(doomed_row.last_used_unix_ms > 0);

    let revoked = tokens(&router)
        .revoke_executor_token(RevokeExecutorTokenRequest {
            name: "doomed".to_owned(),
            actor: "admin-key".to_owned(),
        })
        .await
        .expect("revoked")
        .into_inner();
    assert_eq!(revoked.streams_cut, 1);
    assert!(revoked.token.unwrap().revoked_unix_ms > 0);

    let cut = tokio::time::timeout(Duration::from_secs(5), doomed.ended())
        .await
        .expect("the live stream is cut within 5 s");
    assert_eq!(cut.code(), Code::Unauthenticated, "{cut:?}");
    assert_eq!(cut.message(), "executor token doomed was revoked");

    let second = spare.assignment().await;
    assert_eq!(second.patch.as_ref().unwrap().id, "held");
    assert_eq!(second.attempt, 2);
    assert!(second.fencing_token > first.fencing_token);
    spare.finish(&second, PatchStatus::Succeeded).await;
    wait_for_status(&router, "held", PatchStatus::Succeeded).await;

    let again = TestExecutor::connect_with(&router, "doomed-box", &["MAIN"], &doomed_secret)
        .await
        .err()
        .expect("a revoked token opens nothing");
    assert_eq!(again.code(), Code::Unauthenticated);
    assert_eq!(again.message(), "executor token doomed was revoked");
}

#[tokio::test]
async fn a_token_for_other_claiming_main_is_denied_alerted_and_leases_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let alerter = RecordingAlerter::start().await;
    let mut cfg = config(dir.path());
    cfg.alerter_url = Some(alerter.url.clone());
    let router = spawn_router(cfg).await;
    let (_, secret) = create(&router, "other-box", &["OTHER"]).await;
    submit(&router, patch("main-work", "MAIN")).await;

    let denied = TestExecutor::connect_with(&router, "sneaky", &["OTHER", "MAIN"], &secret)
        .await
        .err()
        .expect("denied");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(
        denied.message().contains("may not serve MAIN"),
        "{}",
        denied.message()
    );
    // Keyed by the token's id (the first token of a fresh router is 1), not its name.
    let alert = alerter.wait_for("executor_refused/1", false).await;
    assert_eq!(
        alert.labels.get("token").map(String::as_str),
        Some("other-box")
    );
    assert_eq!(
        alert.labels.get("targets").map(String::as_str),
        Some("MAIN")
    );
    still_queued(&router, "main-work").await;
    let row = list(&router).await.remove(0);
    assert_eq!(row.live_streams, 0);
    assert_eq!(row.last_used_unix_ms, 0, "a refused Hello is no use");

    // Its own target is fine.
    TestExecutor::connect_with(&router, "honest", &["OTHER"], &secret)
        .await
        .expect("its own target");
}

fn hello(token: String, workspaces: usize) -> Hello {
    Hello {
        executor_id: "huge".to_owned(),
        workspaces: (0..workspaces)
            .map(|index| Workspace {
                target: format!("T{index}"),
                root: String::new(),
            })
            .collect(),
        capabilities: Vec::new(),
        token,
    }
}

#[tokio::test]
async fn oversized_hellos_are_refused_without_leasing_and_the_router_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let router = spawn_router(config(dir.path())).await;
    submit(&router, patch("bystander", "T0")).await;

    let huge = TestExecutor::say_hello(&router, hello("x".repeat(10 * 1024 * 1024), 1))
        .await
        .err()
        .expect("a 10 MB token is refused");
    assert!(
        matches!(
            huge.code(),
            Code::InvalidArgument | Code::ResourceExhausted | Code::OutOfRange
        ),
        "{huge:?}"
    );
    let long = TestExecutor::say_hello(&router, hello("x".repeat(1024), 1))
        .await
        .err()
        .expect("a 1 KB token is refused");
    assert_eq!(long.code(), Code::InvalidArgument);
    assert!(long.message().contains("hello.token"), "{}", long.message());
    let many = TestExecutor::say_hello(&router, hello(String::new(), 10_000))
        .await
        .err()
        .expect("10,000 targets are refused");
    assert_eq!(many.code(), Code::InvalidArgument);
    assert!(
        many.message().contains("hello.workspaces") && many.message().contains("256"),
        "{}",
        many.message()
    );
    still_queued(&router, "bystander").await;

    let mut fine = TestExecutor::connect(&router, "fine", &["T0"]).await;
    assert_eq!(fine.assignment().await.patch.unwrap().id, "bystander");
}

#[tokio::test]
async fn tokens_are_listed_without_secrets_and_names_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let router = spawn_router(config(dir.path())).await;
    let (created, secret) = create(&router, "ci.box_1", &["MAIN", "CYOPS"]).await;
    assert!(secret.starts_with("gx_") && secret.len() == 67, "{secret}");
    assert_eq!(created.targets, ["MAIN", "CYOPS"]);
    assert_eq!(created.created_by, "admin-key");

    let listed = list(&router).await;
    assert_eq!(listed.len(), 1);
    assert!(!format!("{listed:?}").contains(&secret));
    assert!(!format!("{listed:?}").contains(&secret[3..]));

    let mut client = tokens(&router);
    let refuse = |name: &str, targets: &[&str]| CreateExecutorTokenRequest {
        name: name.to_owned(),
        targets: targets.iter().map(|t| (*t).to_owned()).collect(),
        actor: String::new(),
    };
    for (request, code, needle) in [
        (
            refuse("ci.box_1", &["MAIN"]),
            Code::AlreadyExists,
            "ci.box_1",
        ),
        (
            refuse("has space", &["MAIN"]),
            Code::InvalidArgument,
            "name",
        ),
        (
            refuse(&"n".repeat(65), &["MAIN"]),
            Code::InvalidArgument,
            "name",
        ),
        (refuse("ok", &[]), Code::InvalidArgument, "targets"),
        (
            refuse("ok", &["no such/target"]),
            Code::InvalidArgument,
            "targets[0]",
        ),
    ] {
        let status = client.create_executor_token(request).await.unwrap_err();
        assert_eq!(status.code(), code, "{status:?}");
        assert!(status.message().contains(needle), "{status:?}");
    }
    let too_many: Vec<String> = (0..65).map(|i| format!("T{i}")).collect();
    let status = client
        .create_executor_token(CreateExecutorTokenRequest {
            name: "many".to_owned(),
            targets: too_many,
            actor: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    let revoke = |name: &str| RevokeExecutorTokenRequest {
        name: name.to_owned(),
        actor: String::new(),
    };
    client
        .revoke_executor_token(revoke("ci.box_1"))
        .await
        .unwrap();
    let twice = client
        .revoke_executor_token(revoke("ci.box_1"))
        .await
        .unwrap_err();
    assert_eq!(twice.code(), Code::FailedPrecondition, "{twice:?}");
    let unknown = client
        .revoke_executor_token(revoke("nobody"))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");

    // A revoked name may be issued again.
    let (reissued, new_secret) = create(&router, "ci.box_1", &["MAIN"]).await;
    assert_eq!(reissued.revoked_unix_ms, 0);
    assert_ne!(new_secret, secret);
    assert_eq!(list(&router).await.len(), 2);
}

#[tokio::test]
async fn the_shared_token_and_the_service_credential_open_every_target() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.executor_token = ghost_runtime::config::Secret::new("shared-secret");
    cfg.server.internal_token = ghost_runtime::config::Secret::new("service-secret");
    let router = spawn_router(cfg).await;

    let none = TestExecutor::connect_with(&router, "anon", &["MAIN"], "")
        .await
        .err()
        .expect("anonymous refused when a credential is configured");
    assert_eq!(none.code(), Code::Unauthenticated);
    TestExecutor::connect_with(&router, "shared", &["MAIN", "CYOPS"], "shared-secret")
        .await
        .expect("the shared token serves every target");
    TestExecutor::connect_with(&router, "local", &["MAIN"], "service-secret")
        .await
        .expect("the service credential serves every target");
}

/// Everything the process logs, at every level.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn the_secret_is_never_logged() {
    let captured = Captured::default();
    let writer = captured.clone();
    // nextest runs each test in a process of its own: this subscriber sees only this test.
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let router = spawn_router(config(dir.path())).await;
    let (_, secret) = create(&router, "logged-box", &["MAIN"]).await;
    submit(&router, patch("logged", "MAIN")).await;
    let mut executor = TestExecutor::connect_with(&router, "logged-ex", &["MAIN"], &secret)
        .await
        .expect("accepted");
    executor.assignment().await;
    TestExecutor::connect_with(&router, "logged-ex", &["CYOPS"], &secret)
        .await
        .err()
        .expect("out of scope");
    tokens(&router)
        .revoke_executor_token(RevokeExecutorTokenRequest {
            name: "logged-box".to_owned(),
            actor: String::new(),
        })
        .await
        .unwrap();
    executor.ended().await;
    TestExecutor::connect_with(&router, "logged-ex", &["MAIN"], &secret)
        .await
        .err()
        .expect("revoked");
    router.stop().await;

    let logs = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    assert!(logs.contains("logged-box"), "the capture works: {logs}");
    assert!(
        !logs.contains(&secret[3..]),
        "the secret is in the logs:\n{logs}"
    );
}

/// (action, token id, actor, detail) of every token audit row, oldest first.
fn audit_rows(dir: &std::path::Path) -> Vec<(String, i64, String, String)> {
    let conn = rusqlite::Connection::open_with_flags(
        dir.join("router.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open the router's database");
    let mut statement = conn
        .prepare("SELECT action, token_id, actor, detail FROM token_audit ORDER BY id")
        .expect("query");
    statement
        .query_map([], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
        })
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("rows")
}

async fn revoke(router: &TestRouter, name: &str) {
    tokens(router)
        .revoke_executor_token(RevokeExecutorTokenRequest {
            name: name.to_owned(),
            actor: "admin-key".to_owned(),
        })
        .await
        .expect("revoked");
}

#[tokio::test]
async fn a_scope_alert_resolves_on_revoke_and_a_name_issued_again_starts_clean() {
    let dir = tempfile::tempdir().unwrap();
    let alerter = RecordingAlerter::start().await;
    let mut cfg = config(dir.path());
    cfg.alerter_url = Some(alerter.url.clone());
    let router = spawn_router(cfg).await;

    let (_, first) = create(&router, "other-box", &["OTHER"]).await;
    let denied = TestExecutor::connect_with(&router, "sneaky", &["MAIN"], &first)
        .await
        .err()
        .expect("denied");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    let raised = alerter.wait_for("executor_refused/1", false).await;
    assert_eq!(raised.labels.get("token_id").map(String::as_str), Some("1"));
    revoke(&router, "other-box").await;
    alerter.wait_for("executor_refused/1", true).await;

    let (_, second) = create(&router, "other-box", &["OTHER"]).await;
    let denied = TestExecutor::connect_with(&router, "sneaky", &["MAIN"], &second)
        .await
        .err()
        .expect("denied");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    alerter.wait_for("executor_refused/2", false).await;

    let rows: Vec<(String, i64)> = audit_rows(dir.path())
        .into_iter()
        .map(|(action, id, _, _)| (action, id))
        .collect();
    let expected: Vec<(String, i64)> = [
        ("create", 1),
        ("refused", 1),
        ("revoke", 1),
        ("create", 2),
        ("refused", 2),
    ]
    .into_iter()
    .map(|(action, id)| (action.to_owned(), id))
    .collect();
    assert_eq!(rows, expected);
}

#[tokio::test]
async fn repeated_refusals_write_one_audit_row_per_token_and_per_peer() {
    let dir = tempfile::tempdir().unwrap();
    let router = spawn_router(config(dir.path())).await;
    let (_, doomed) = create(&router, "doomed", &["MAIN"]).await;
    revoke(&router, "doomed").await;

    for _ in 0..20 {
        let refused = TestExecutor::connect_with(&router, "again", &["MAIN"], &doomed)
            .await
            .err()
            .expect("revoked");
        assert_eq!(refused.code(), Code::Unauthenticated);
    }
    for _ in 0..20 {
        let refused = TestExecutor::connect_with(
            &router,
            "evil\nrouter: forged log line",
            &["MAIN"],
            "gx_not-a-token",
        )
        .await
        .err()
        .expect("unknown");
        assert_eq!(refused.code(), Code::Unauthenticated);
    }

    let refused: Vec<(String, i64, String, String)> = audit_rows(dir.path())
        .into_iter()
        .filter(|(action, ..)| action == "refused")
        .collect();
    assert_eq!(
        refused.len(),
        2,
        "one row per token and per peer: {refused:#?}"
    );
    assert_eq!(refused[0].1, 1, "{refused:#?}");
    assert_eq!(refused[1].1, 0, "an unknown token has no id: {refused:#?}");
    assert!(refused[1].2.starts_with("peer:127.0.0.1"), "{refused:#?}");
    assert!(
        !refused[1].2.contains('\n'),
        "the executor id is escaped: {refused:#?}"
    );
}

#[tokio::test]
async fn an_executor_id_cannot_forge_log_lines() {
    let captured = Captured::default();
    let writer = captured.clone();
    // nextest runs each test in a process of its own: this subscriber sees only this test.
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let router = spawn_router(config(dir.path())).await;
    let evil = "evil\nFORGED router: all is well";
    // Anonymous (no credential yet): connected, then a refused message on its stream.
    let anonymous = TestExecutor::connect(&router, evil, &["MAIN"]).await;
    submit(&router, patch("forged-target", "MAIN")).await;
    anonymous
        .send(ghost_proto::executor::v1::executor_message::Kind::Result(
            ghost_proto::executor::v1::Result {
                patch_id: "someone-elses".to_owned(),
                attempt: 1,
                fencing_token: 0,
                report: Some(ghost_proto::router::v1::ApplyReport {
                    status: PatchStatus::Succeeded as i32,
                    ..Default::default()
                }),
                traceparent: String::new(),
            },
        ))
        .await;
    drop(anonymous);
    create(&router, "box", &["MAIN"]).await;
    TestExecutor::connect_with(&router, evil, &["MAIN"], "gx_unknown")
        .await
        .err()
        .expect("unknown token");
    router.stop().await;

    let logs = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    assert!(logs.contains("FORGED"), "the capture works: {logs}");
    assert!(
        !logs.lines().any(|line| line.starts_with("FORGED")),
        "an executor id started a log line:\n{logs}"
    );
}
