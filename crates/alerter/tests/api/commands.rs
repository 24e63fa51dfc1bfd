//! Every `/ghost` verb against a real router and summarizer (their `App`s on loopback), each
//! answered inline (within the 2.5 s budget, so under Slack's 3 s), and the operator rule with
//! its audit trail.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ghost_proto::alerter::v1::AlertRequest;
use ghost_proto::router::v1::router_service_client::RouterServiceClient;
use ghost_proto::router::v1::{
    ApplyReport, CancelRequest, Edit, GetRequest, Patch, PatchStatus, SubmitRequest, WriteFile,
    edit,
};
use ghost_proto::summarizer::v1::summarizer_service_client::SummarizerServiceClient;
use ghost_proto::summarizer::v1::{Outcome, RecordRequest};
use ghost_runtime::clock::SystemClock;
use ghost_runtime::config::ServerConfig;
use ghost_testkit::{FakeSlack, RESPONSE_URL_METHOD, wait_for};
use tokio::sync::oneshot;
use tonic::transport::Channel;

use crate::helpers::{
    BYSTANDER, OPERATOR, SIGNING_SECRET, TestApp, WAIT, command_body, config, now_secs,
    post_signed, slash, spawn_with,
};
use crate::notify::alert_request;

/// A service task that stops when dropped.
pub struct Running {
    pub grpc: SocketAddr,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Stops the service and waits until it has let go of its ports.
    pub async fn stop(self) {
        drop(self.stop);
        self.task.await.expect("service task").expect("service run");
    }
}

fn fast_server() -> ServerConfig {
    ServerConfig {
        drain_grace: Duration::ZERO,
        drain_timeout: Duration::from_secs(2),
        ..ServerConfig::ephemeral()
    }
}

fn run<F>(grpc: SocketAddr, serve: impl FnOnce(oneshot::Receiver<()>) -> F) -> Running
where
    F: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(stopped));
    Running { grpc, stop, task }
}

/// The real router over `data_dir`.
pub async fn spawn_router(data_dir: &std::path::Path) -> Running {
    let config = router::RouterConfig {
        server: fast_server(),
        data_dir: data_dir.to_owned(),
        ..Default::default()
    };
    let app = router::App::build(config).await.expect("router builds");
    run(app.grpc_addr(), |stopped| {
        app.run(async {
            let _ = stopped.await;
        })
    })
}

/// The real summarizer over `data_dir`, on `grpc` (port 0: any).
pub async fn spawn_summarizer(data_dir: &std::path::Path, grpc: SocketAddr) -> Running {
    let config = summarizer::SummarizerConfig {
        server: ServerConfig {
            grpc_listen: grpc,
            ..fast_server()
        },
        data_dir: data_dir.to_owned(),
        ..Default::default()
    };
    let app = summarizer::App::build(config)
        .await
        .expect("summarizer builds");
    run(app.grpc_addr(), |stopped| {
        app.run(async {
            let _ = stopped.await;
        })
    })
}

/// Router, summarizer and alerter wired together, with a fake Slack.
struct System {
    alerter: TestApp,
    router: RouterServiceClient<Channel>,
    summarizer: SummarizerServiceClient<Channel>,
    slack: FakeSlack,
    _services: (Running, Running),
    _scratch: tempfile::TempDir,
}

async fn system_with(inline_budget: Duration) -> System {
    system_routed(inline_budget, Vec::new()).await
}

async fn system_routed(inline_budget: Duration, routes: Vec<alerter::routing::Route>) -> System {
    let scratch = tempfile::tempdir().unwrap();
    let router = spawn_router(&scratch.path().join("router")).await;
    let summarizer = spawn_summarizer(
        &scratch.path().join("summarizer"),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await;
    let slack = FakeSlack::start().await;
    let mut cfg = config(Some(slack.base_url()));
    cfg.router_url = Some(format!("http://{}", router.grpc));
    cfg.summarizer_url = Some(format!("http://{}", summarizer.grpc));
    cfg.health.services = [("router".to_owned(), format!("http://{}", router.grpc))].into();
    cfg.health.interval = Duration::from_millis(50);
    cfg.slack.inline_answer_budget = inline_budget;
    cfg.alerts.group_wait = Duration::ZERO;
    cfg.routing.routes = routes;
    let alerter = spawn_with(cfg, Arc::new(SystemClock)).await;
    System {
        router: RouterServiceClient::connect(format!("http://{}", router.grpc))
            .await
            .unwrap(),
        summarizer: SummarizerServiceClient::connect(format!("http://{}", summarizer.grpc))
            .await
            .unwrap(),
        alerter,
        slack,
        _services: (router, summarizer),
        _scratch: scratch,
    }
}

async fn system() -> System {
    system_with(Duration::from_millis(2_500)).await
}

impl System {
    async fn submit(&mut self, id: &str) {
        self.submit_to(id, "MAIN").await;
    }

    async fn submit_to(&mut self, id: &str, target: &str) {
        let patch = Patch {
            id: id.to_owned(),
            target: target.to_owned(),
            description: format!("test patch {id}"),
            edits: vec![Edit {
                op: Some(edit::Op::Write(WriteFile {
                    path: "a.txt".to_owned(),
                    contents: "x\n".to_owned(),
                })),
            }],
            ..Default::default()
        };
        self.router
            .submit(SubmitRequest {
                patch: Some(patch),
                ..Default::default()
            })
            .await
            .expect("router accepts the patch");
    }

    async fn status_of(&mut self, id: &str) -> i32 {
        self.router
            .get(GetRequest { id: id.to_owned() })
            .await
            .unwrap()
            .into_inner()
            .state
            .unwrap()
            .status
    }

    async fn ghost(&self, text: &str) -> String {
        slash(&self.alerter, "/ghost", text, OPERATOR).await
    }

    async fn raise(&mut self, request: AlertRequest) {
        self.alerter.client.alert(request).await.unwrap();
    }
}

async fn help_and_unknown_verbs_answer_with_the_verb_list() {
    let sys = system().await;
    let help = sys.ghost("help").await;
    for verb in [
        "status",
        "queue",
        "patch",
        "summary",
        "retry",
        "cancel",
        "revert",
        "pause",
        "resume",
        "targets",
        "executors",
        "alerts",
        "ack",
        "silence",
        "unsilence",
        "health",
    ] {
        assert!(
            help.contains(&format!("`{verb}")),
            "{verb} missing from {help}"
        );
    }
    let unknown = sys.ghost("frobnicate now").await;
    assert!(
        unknown.starts_with("Unknown verb `frobnicate`"),
        "{unknown}"
    );
    assert!(unknown.contains("*/ghost* verbs"));
    assert_eq!(sys.ghost("").await, help);
}

async fn status_counts_queued_patches_and_alerts() {
    let mut sys = system().await;
    sys.submit("p-status").await;
    sys.raise(alert_request("queue_stale/MAIN", false, 1)).await;
    let status = sys.ghost("status").await;
    assert!(status.contains("queued patches: 1"), "{status}");
    // The health monitor may meanwhile have raised `executor_lost/MAIN` (no executor runs
    // here; a slower store leaves it the time): it is the only other alert allowed.
    let keys: Vec<String> = sys
        .alerter
        .lifecycle
        .active()
        .await
        .into_iter()
        .map(|alert| alert.key)
        .collect();
    assert!(keys.contains(&"queue_stale/MAIN".to_owned()), "{keys:?}");
    assert!(
        keys.iter()
            .all(|key| key == "queue_stale/MAIN" || key == "executor_lost/MAIN"),
        "{keys:?}"
    );
    let counted = ["firing alerts: 1", "firing alerts: 2"];
    assert!(counted.iter().any(|line| status.contains(line)), "{status}");
    let legacy = slash(&sys.alerter, "/status-runner", "", BYSTANDER).await;
    assert!(legacy.contains("queued patches: 1"), "{legacy}");
}

async fn queue_lists_queued_patches_of_a_target() {
    let mut sys = system().await;
    sys.submit("p-q1").await;
    sys.submit("p-q2").await;
    let queue = sys.ghost("queue MAIN").await;
    assert!(
        queue.contains("`p-q1`") && queue.contains("`p-q2`"),
        "{queue}"
    );
    let other = sys.ghost("queue CYOPS").await;
    assert!(other.starts_with("📭 nothing queued on `CYOPS`"), "{other}");
    let legacy = slash(&sys.alerter, "/status-queue", "", BYSTANDER).await;
    assert!(legacy.contains("`p-q1`"), "{legacy}");
}

async fn queue_without_a_target_in_a_team_channel_lists_the_targets_routed_there() {
    let web = alerter::routing::Route {
        target: vec!["WEB-*".to_owned()],
        channel: Some("C0WEB".to_owned()),
        ..Default::default()
    };
    let mut sys = system_routed(Duration::from_millis(2_500), vec![web]).await;
    sys.submit_to("p-web", "WEB-1").await;
    sys.submit_to("p-main", "MAIN").await;
    let team = crate::helpers::slash_in(&sys.alerter, "C0WEB", "/ghost", "queue", BYSTANDER).await;
    assert!(team.contains("`p-web`"), "{team}");
    assert!(!team.contains("`p-main`"), "{team}");
    assert!(team.contains("`WEB-*`"), "{team}");
    let elsewhere = sys.ghost("queue").await;
    assert!(
        elsewhere.contains("`p-web`") && elsewhere.contains("`p-main`"),
        "{elsewhere}"
    );
}

/// Review M6: the first page of all queued patches holding only other targets' patches does
/// not hide a team's queued patch.
async fn queue_in_a_team_channel_looks_past_other_targets_queues() {
    let web = alerter::routing::Route {
        target: vec!["WEB-*".to_owned()],
        channel: Some("C0WEB".to_owned()),
        ..Default::default()
    };
    let mut sys = system_routed(Duration::from_millis(2_500), vec![web]).await;
    // The router lists newest first: the 25 later MAIN patches fill the first page.
    sys.submit_to("p-web-early", "WEB-1").await;
    for n in 0..25 {
        sys.submit_to(&format!("p-main-{n}"), "MAIN").await;
    }
    let team = crate::helpers::slash_in(&sys.alerter, "C0WEB", "/ghost", "queue", BYSTANDER).await;
    assert!(team.contains("`p-web-early`"), "{team}");
    assert!(!team.contains("p-main"), "{team}");
    assert!(!team.contains("and more"), "{team}");
}

async fn patch_shows_one_patch_and_names_missing_ones() {
    let mut sys = system().await;
    sys.submit("p-show").await;
    let shown = sys.ghost("patch p-show").await;
    assert!(shown.contains("*`p-show`* on MAIN: *queued*"), "{shown}");
    let legacy = slash(&sys.alerter, "/patch-status", "p-show", BYSTANDER).await;
    assert_eq!(legacy, shown);
    let missing = sys.ghost("patch p-nope").await;
    assert!(missing.starts_with("⚠️ router:"), "{missing}");
    assert!(missing.contains("p-nope"), "{missing}");
    assert!(
        sys.ghost("patch")
            .await
            .contains("usage: `/ghost patch <id>`")
    );
}

async fn summary_shows_the_summarizers_markdown() {
    let mut sys = system().await;
    sys.summarizer
        .record(RecordRequest {
            outcome: Some(Outcome {
                notify: String::new(),
                priority: String::new(),
                patch_id: "p-sum".to_owned(),
                target: "MAIN".to_owned(),
                attempt: 1,
                description: "summarise me".to_owned(),
                report: Some(ApplyReport {
                    status: PatchStatus::Succeeded as i32,
                    ..Default::default()
                }),
                trace_id: String::new(),
                created_unix_ms: 1_700_000_000_000,
                finished_unix_ms: 1_700_000_001_000,
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let summary = sys.ghost("summary p-sum").await;
    assert!(
        summary.starts_with("*Summary of `p-sum`* (succeeded)"),
        "{summary}"
    );
    assert!(summary.contains("p-sum"), "{summary}");
    // mrkdwn, not GitHub Markdown: headings and bold in Slack's own syntax, no `#`, no table.
    assert!(summary.contains("\n*✅ p-sum succeeded*\n"), "{summary}");
    assert!(summary.contains("• *Target:* MAIN"), "{summary}");
    assert!(
        !summary
            .lines()
            .any(|line| line.starts_with('#') || line.starts_with('|')),
        "{summary}"
    );
    let missing = sys.ghost("summary p-none").await;
    assert!(missing.starts_with("⚠️ summarizer:"), "{missing}");
}

async fn cancel_by_an_operator_cancels_and_a_bystander_is_refused_and_audited() {
    let mut sys = system().await;
    sys.submit("p-cancel").await;
    let refused = slash(&sys.alerter, "/ghost", "cancel p-cancel", BYSTANDER).await;
    assert!(
        refused.starts_with("⛔ `cancel` is for operators"),
        "{refused}"
    );
    assert_eq!(sys.status_of("p-cancel").await, PatchStatus::Queued as i32);

    let cancelled = sys.ghost("cancel p-cancel").await;
    assert_eq!(cancelled, "🛑 `p-cancel` is cancelled");
    assert_eq!(
        sys.status_of("p-cancel").await,
        PatchStatus::Cancelled as i32
    );

    let audit = sys.alerter.store.audit_log().await.unwrap();
    let cancels: Vec<_> = audit.iter().filter(|e| e.verb == "cancel").collect();
    assert_eq!(cancels.len(), 2, "{audit:?}");
    assert_eq!(cancels[0].user_id, BYSTANDER);
    assert!(!cancels[0].allowed);
    assert_eq!(cancels[0].outcome, "refused: not an operator");
    assert_eq!(cancels[0].args, "p-cancel");
    assert_eq!(cancels[1].user_id, OPERATOR);
    assert!(cancels[1].allowed);
    assert_eq!(cancels[1].outcome, "ok");
}

/// Every verb as a bystander: exactly the mutating ones are refused (and audited as refused),
/// and none of the verbs a bystander may run changes the queued patch.
async fn a_bystander_is_refused_exactly_the_verbs_that_change_state() {
    let mut sys = system().await;
    sys.submit("p-verbs").await;
    for verb in alerter::commands::Verb::ALL {
        let text = format!("{verb} p-verbs 1h");
        let answer = slash(&sys.alerter, "/ghost", &text, BYSTANDER).await;
        let refused = answer.starts_with(&format!("⛔ `{verb}` is for operators"));
        assert_eq!(refused, verb.is_mutating(), "{verb}: {answer}");
        assert_eq!(
            sys.status_of("p-verbs").await,
            PatchStatus::Queued as i32,
            "{verb} changed the patch: {answer}"
        );
    }
    let audit = sys.alerter.store.audit_log().await.unwrap();
    assert_eq!(audit.len(), alerter::commands::Verb::ALL.len(), "{audit:?}");
    for entry in audit {
        let verb: alerter::commands::Verb = entry.verb.parse().unwrap();
        assert_eq!(entry.allowed, !verb.is_mutating(), "{entry:?}");
    }
}

/// `/patch-revert` used to mean cancel; it is revert now (see `revert.rs`): a queued patch is
/// not cancelled by it, the router refuses to revert it.
async fn patch_revert_no_longer_cancels() {
    let mut sys = system().await;
    sys.submit("p-revert").await;
    let answer = slash(&sys.alerter, "/patch-revert", "p-revert", OPERATOR).await;
    assert!(answer.starts_with("⚠️ router: "), "{answer}");
    assert_eq!(sys.status_of("p-revert").await, PatchStatus::Queued as i32);
    let audit = sys.alerter.store.audit_log().await.unwrap();
    assert_eq!(audit[0].verb, "revert");
}

async fn retry_queues_a_cancelled_patch_again() {
    let mut sys = system().await;
    sys.submit("p-retry").await;
    sys.router
        .cancel(CancelRequest {
            id: "p-retry".to_owned(),
            actor: "test".to_owned(),
        })
        .await
        .unwrap();
    let answer = sys.ghost("retry p-retry").await;
    assert!(
        answer.starts_with("🔁 `p-retry` is queued again"),
        "{answer}"
    );
    assert_eq!(sys.status_of("p-retry").await, PatchStatus::Queued as i32);
    let missing = sys.ghost("retry p-missing").await;
    assert!(missing.starts_with("⚠️ router:"), "{missing}");
    let refused = slash(&sys.alerter, "/ghost", "retry p-retry", BYSTANDER).await;
    assert!(refused.starts_with("⛔"), "{refused}");
}

async fn pause_and_resume_reach_the_router() {
    let sys = system().await;
    assert_eq!(
        sys.ghost("pause MAIN").await,
        "⏸️ `MAIN` paused: no new work is handed out"
    );
    assert_eq!(sys.ghost("resume MAIN").await, "▶️ `MAIN` resumed");
    let refused = slash(&sys.alerter, "/ghost", "pause MAIN", BYSTANDER).await;
    assert!(refused.starts_with("⛔"), "{refused}");
    let audit = sys.alerter.store.audit_log().await.unwrap();
    let verbs: Vec<_> = audit.iter().map(|e| (e.verb.as_str(), e.allowed)).collect();
    assert_eq!(verbs, [("pause", true), ("resume", true), ("pause", false)]);
}

async fn targets_lists_what_the_router_knows() {
    let mut sys = system().await;
    sys.submit("p-target").await;
    let targets = sys.ghost("targets").await;
    assert!(
        targets.starts_with("*Targets*") && targets.contains("`MAIN`: 1 queued"),
        "{targets}"
    );
}

async fn executors_lists_connected_executors() {
    let sys = system().await;
    let executors = sys.ghost("executors").await;
    assert_eq!(executors, "no executors connected");
}

async fn alerts_lists_active_alerts_and_silences() {
    let mut sys = system().await;
    assert_eq!(sys.ghost("alerts").await, "✅ no active alerts\n");
    sys.raise(alert_request("executor_lost/MAIN", false, 1))
        .await;
    sys.ghost("silence CYOPS 2h").await;
    let alerts = sys.ghost("alerts").await;
    assert!(
        alerts.contains("• `executor_lost/MAIN` (critical, Firing)"),
        "{alerts}"
    );
    assert!(alerts.contains("🔕 silence #1 on `CYOPS`"), "{alerts}");
}

async fn ack_acknowledges_and_says_so_in_the_alert_thread() {
    let mut sys = system().await;
    sys.raise(alert_request("executor_lost/MAIN", false, 1))
        .await;
    let answer = sys.ghost("ack executor_lost/MAIN").await;
    assert_eq!(
        answer,
        format!("👀 `executor_lost/MAIN` acknowledged by <@{OPERATOR}>")
    );
    let active = sys.alerter.lifecycle.active().await;
    assert_eq!(active[0].ack.as_ref().unwrap().by, OPERATOR);
    let posts = sys.slack.wait_for_posts(2, WAIT).await;
    assert_eq!(posts[1].text(), answer);
    assert_eq!(
        posts[1].body["thread_ts"],
        sys.slack.messages()[0].ts.as_str()
    );
    let unknown = sys.ghost("ack no/such").await;
    assert_eq!(unknown, "⚠️ no active alert no/such");
}

async fn silence_and_unsilence() {
    let sys = system().await;
    let answer = sys.ghost("silence executor_lost/MAIN 30m").await;
    assert_eq!(answer, "🔕 silence #1 on `executor_lost/MAIN` for 30m");
    assert_eq!(sys.alerter.lifecycle.silences().await.len(), 1);
    let bad = sys.ghost("silence MAIN forever").await;
    assert!(bad.starts_with("⚠️ `forever` is not a duration"), "{bad}");
    assert!(sys.ghost("silence MAIN").await.contains("usage"));
    assert_eq!(sys.ghost("unsilence 1").await, "🔔 silence #1 ended");
    assert!(sys.alerter.lifecycle.silences().await.is_empty());
    assert_eq!(sys.ghost("unsilence 1").await, "⚠️ no active silence #1");
    let refused = slash(&sys.alerter, "/ghost", "silence MAIN 1h", BYSTANDER).await;
    assert!(refused.starts_with("⛔"), "{refused}");
}

async fn health_shows_what_the_monitor_sees() {
    let sys = system().await;
    let health = wait_for("the monitor to see the router up", async || {
        let health = slash(&sys.alerter, "/daemon-status", "", BYSTANDER).await;
        if health.contains("`service/router` up") {
            Ok(health)
        } else {
            Err(health)
        }
    })
    .await;
    assert!(health.contains("🟢 `service/router` up"), "{health}");
    assert_eq!(sys.ghost("health").await, health);
}

async fn slow_answers_go_through_response_url() {
    let mut sys = system_with(Duration::ZERO).await;
    sys.submit("p-slow").await;
    let response_url = sys.slack.response_url("slow");
    let body = command_body("/ghost", "patch p-slow", OPERATOR, &response_url);
    let timestamp = now_secs().to_string();
    let signature = alerter::signing::sign(SIGNING_SECRET, &timestamp, body.as_bytes());
    let (status, answer) = post_signed(
        &format!("{}/slack/commands", sys.alerter.http),
        &body,
        Some(&timestamp),
        Some(&signature),
    )
    .await;
    assert_eq!(status, 200);
    assert!(answer.contains("working on it"), "{answer}");
    let followups = sys.slack.wait_for(RESPONSE_URL_METHOD, 1, WAIT).await;
    assert_eq!(followups[0].path, "/T0001/slow/xyz");
    assert_eq!(followups[0].body["response_type"], "ephemeral");
    assert!(
        followups[0].text().contains("*`p-slow`* on MAIN: *queued*"),
        "{:?}",
        followups[0]
    );
}

async fn buttons_run_their_verb_and_answer_through_response_url() {
    let mut sys = system().await;
    sys.submit("p-button").await;
    let payload = serde_json::json!({
        "type": "block_actions",
        "user": {"id": OPERATOR, "username": "op"},
        "channel": {"id": "C0001"},
        "response_url": sys.slack.response_url("button"),
        "actions": [{"action_id": "cancel", "value": "p-button", "type": "button"}],
    });
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", &payload.to_string())
        .finish();
    let timestamp = now_secs().to_string();
    let signature = alerter::signing::sign(SIGNING_SECRET, &timestamp, body.as_bytes());
    let (status, answer) = post_signed(
        &format!("{}/slack/interactions", sys.alerter.http),
        &body,
        Some(&timestamp),
        Some(&signature),
    )
    .await;
    assert_eq!((status, answer.as_str()), (200, ""));
    let followups = sys.slack.wait_for(RESPONSE_URL_METHOD, 1, WAIT).await;
    assert_eq!(followups[0].text(), "🛑 `p-button` is cancelled");
    assert_eq!(followups[0].body["replace_original"], false);
    assert_eq!(
        sys.status_of("p-button").await,
        PatchStatus::Cancelled as i32
    );
    let audit = sys.alerter.store.audit_log().await.unwrap();
    assert_eq!(audit[0].source, "button");
}

on_both_stores!(
    help_and_unknown_verbs_answer_with_the_verb_list,
    status_counts_queued_patches_and_alerts,
    queue_lists_queued_patches_of_a_target,
    queue_without_a_target_in_a_team_channel_lists_the_targets_routed_there,
    queue_in_a_team_channel_looks_past_other_targets_queues,
    patch_shows_one_patch_and_names_missing_ones,
    summary_shows_the_summarizers_markdown,
    cancel_by_an_operator_cancels_and_a_bystander_is_refused_and_audited,
    a_bystander_is_refused_exactly_the_verbs_that_change_state,
    patch_revert_no_longer_cancels,
    retry_queues_a_cancelled_patch_again,
    pause_and_resume_reach_the_router,
    targets_lists_what_the_router_knows,
    executors_lists_connected_executors,
    alerts_lists_active_alerts_and_silences,
    ack_acknowledges_and_says_so_in_the_alert_thread,
    silence_and_unsilence,
    health_shows_what_the_monitor_sees,
    slow_answers_go_through_response_url,
    buttons_run_their_verb_and_answer_through_response_url,
);
