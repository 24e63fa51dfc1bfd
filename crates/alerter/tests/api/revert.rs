//! Revert from Slack: `/ghost revert ID`, the legacy `/patch-revert ID` and the Revert button
//! of a succeeded patch's message, each calling the router's `Revert` RPC. The router here is a
//! fake speaking real gRPC on loopback: it records every Revert and answers from a script
//! (queued, asked before, conflicts, not found, not succeeded); every other RPC is
//! UNIMPLEMENTED.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use ghost_proto::executor::v1::{ExecutorMessage, RouterMessage};
use ghost_proto::router::v1 as wire;
use ghost_proto::router::v1::PatchStatus;
use ghost_proto::router::v1::router_service_server::{RouterService, RouterServiceServer};
use ghost_runtime::clock::SystemClock;
use ghost_testkit::{FakeSlack, RESPONSE_URL_METHOD};
use tokio_stream::Stream;
use tonic::{Request, Response, Status as RpcStatus, Streaming};

use crate::helpers::{
    BYSTANDER, OPERATOR, SIGNING_SECRET, TestApp, WAIT, config, notify, now_secs, post_signed,
    slash, spawn_with,
};

/// What the fake router answers to `Revert` of one id.
#[derive(Clone)]
enum Scripted {
    /// The revert patch, and whether it was made now.
    Queued { created: bool, status: PatchStatus },
    /// Refused: these files changed since.
    Conflicts(Vec<String>),
    /// A gRPC error.
    Error(tonic::Code, String),
}

/// A router that only knows `Revert`, answering from a script and recording every request.
#[derive(Clone, Default)]
struct FakeRouter {
    script: Arc<Mutex<HashMap<String, Scripted>>>,
    reverts: Arc<Mutex<Vec<wire::RevertRequest>>>,
}

impl FakeRouter {
    /// Serves on a loopback port.
    async fn start(&self) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(RouterServiceServer::new(self.clone()))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        addr
    }

    fn script(&self, id: &str, answer: Scripted) {
        self.script.lock().unwrap().insert(id.to_owned(), answer);
    }

    fn reverts(&self) -> Vec<(String, String)> {
        self.reverts
            .lock()
            .unwrap()
            .iter()
            .map(|r| (r.id.clone(), r.actor.clone()))
            .collect()
    }
}

fn unimplemented<T>() -> Result<Response<T>, RpcStatus> {
    Err(RpcStatus::unimplemented("fake router: only revert"))
}

#[tonic::async_trait]
impl RouterService for FakeRouter {
    async fn revert(
        &self,
        request: Request<wire::RevertRequest>,
    ) -> Result<Response<wire::RevertResponse>, RpcStatus> {
        let request = request.into_inner();
        self.reverts.lock().unwrap().push(request.clone());
        let scripted = self.script.lock().unwrap().get(&request.id).cloned();
        let revert_id = ghost_core::revert_id(&ghost_core::PatchId::parse(&request.id).unwrap());
        match scripted {
            Some(Scripted::Queued { created, status }) => Ok(Response::new(wire::RevertResponse {
                state: Some(wire::PatchState {
                    id: revert_id.to_string(),
                    target: "MAIN".to_owned(),
                    status: status as i32,
                    ..Default::default()
                }),
                created,
                ..Default::default()
            })),
            Some(Scripted::Conflicts(conflicts)) => Ok(Response::new(wire::RevertResponse {
                error: format!("changed since {} ended", request.id),
                conflicts,
                ..Default::default()
            })),
            Some(Scripted::Error(code, message)) => Err(RpcStatus::new(code, message)),
            None => Err(RpcStatus::not_found(format!("no patch {:?}", request.id))),
        }
    }

    async fn dry_run(
        &self,
        _: Request<wire::DryRunRequest>,
    ) -> Result<Response<wire::DryRunResponse>, RpcStatus> {
        unimplemented()
    }

    async fn wait(
        &self,
        _: Request<wire::WaitRequest>,
    ) -> Result<Response<wire::GetResponse>, RpcStatus> {
        unimplemented()
    }

    async fn submit(
        &self,
        _: Request<wire::SubmitRequest>,
    ) -> Result<Response<wire::SubmitResponse>, RpcStatus> {
        unimplemented()
    }

    async fn get(
        &self,
        _: Request<wire::GetRequest>,
    ) -> Result<Response<wire::GetResponse>, RpcStatus> {
        unimplemented()
    }

    async fn events(
        &self,
        _: Request<wire::EventsRequest>,
    ) -> Result<Response<wire::EventsResponse>, RpcStatus> {
        unimplemented()
    }

    async fn list(
        &self,
        _: Request<wire::ListRequest>,
    ) -> Result<Response<wire::ListResponse>, RpcStatus> {
        unimplemented()
    }

    async fn cancel(
        &self,
        _: Request<wire::CancelRequest>,
    ) -> Result<Response<wire::CancelResponse>, RpcStatus> {
        unimplemented()
    }

    async fn retry(
        &self,
        _: Request<wire::RetryRequest>,
    ) -> Result<Response<wire::RetryResponse>, RpcStatus> {
        unimplemented()
    }

    async fn pause(
        &self,
        _: Request<wire::PauseRequest>,
    ) -> Result<Response<wire::PauseResponse>, RpcStatus> {
        unimplemented()
    }

    async fn resume(
        &self,
        _: Request<wire::ResumeRequest>,
    ) -> Result<Response<wire::ResumeResponse>, RpcStatus> {
        unimplemented()
    }

    async fn list_targets(
        &self,
        _: Request<wire::ListTargetsRequest>,
    ) -> Result<Response<wire::ListTargetsResponse>, RpcStatus> {
        unimplemented()
    }

    async fn list_executors(
        &self,
        _: Request<wire::ListExecutorsRequest>,
    ) -> Result<Response<wire::ListExecutorsResponse>, RpcStatus> {
        unimplemented()
    }

    type WorkStream = Pin<Box<dyn Stream<Item = Result<RouterMessage, RpcStatus>> + Send>>;

    async fn work(
        &self,
        _: Request<Streaming<ExecutorMessage>>,
    ) -> Result<Response<Self::WorkStream>, RpcStatus> {
        unimplemented()
    }
}

/// The real alerter wired to the fake router and a fake Slack.
struct System {
    alerter: TestApp,
    router: FakeRouter,
    slack: FakeSlack,
}

async fn system() -> System {
    let router = FakeRouter::default();
    let addr = router.start().await;
    let slack = FakeSlack::start().await;
    let mut cfg = config(Some(slack.base_url()));
    cfg.router_url = Some(format!("http://{addr}"));
    // Successes go to the digest by default; these tests look at a success's own message.
    cfg.routing.routes = vec![alerter::routing::Route {
        status: vec!["succeeded".to_owned()],
        thread: Some(alerter::routing::ThreadMode::Own),
        ..Default::default()
    }];
    let alerter = spawn_with(cfg, Arc::new(SystemClock)).await;
    System {
        alerter,
        router,
        slack,
    }
}

impl System {
    async fn ghost(&self, text: &str) -> String {
        slash(&self.alerter, "/ghost", text, OPERATOR).await
    }

    /// Tells the alerter `patch_id` ended with `status`, as the router does.
    async fn outcome(&mut self, patch_id: &str, status: PatchStatus) {
        let mut request = notify(patch_id);
        request.status = status as i32;
        if status == PatchStatus::Succeeded {
            request.error.clear();
        }
        self.alerter.client.notify(request).await.unwrap();
    }

    /// Presses a button of a patch message as `user_id`; answers come through `response_url`.
    async fn press(&self, action_id: &str, value: &str, user_id: &str) {
        let payload = serde_json::json!({
            "type": "block_actions",
            "user": {"id": user_id, "username": "op"},
            "channel": {"id": "C0001"},
            "response_url": self.slack.response_url("button"),
            "actions": [{"action_id": action_id, "value": value, "type": "button"}],
        });
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("payload", &payload.to_string())
            .finish();
        let timestamp = now_secs().to_string();
        let signature = alerter::signing::sign(SIGNING_SECRET, &timestamp, body.as_bytes());
        let (status, answer) = post_signed(
            &format!("{}/slack/interactions", self.alerter.http),
            &body,
            Some(&timestamp),
            Some(&signature),
        )
        .await;
        assert_eq!((status, answer.as_str()), (200, ""));
    }
}

/// `(action_id, value)` of the buttons of a patch message.
fn actions(body: &serde_json::Value) -> Vec<(String, String)> {
    body["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|block| block["type"] == "actions")
        .flat_map(|block| block["elements"].as_array().unwrap().iter())
        .map(|button| {
            (
                button["action_id"].as_str().unwrap().to_owned(),
                button["value"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

async fn revert_by_an_operator_queues_the_revert_and_notes_it_in_the_patch_thread() {
    let mut sys = system().await;
    sys.router.script(
        "p-done",
        Scripted::Queued {
            created: true,
            status: PatchStatus::Queued,
        },
    );
    sys.outcome("p-done", PatchStatus::Succeeded).await;
    let parent = sys.slack.wait_for_posts(1, WAIT).await;

    let answer = sys.ghost("revert p-done").await;
    assert_eq!(
        answer,
        format!("↩️ revert of `p-done` queued as `revert-p-done` by <@{OPERATOR}>")
    );
    assert_eq!(
        sys.router.reverts(),
        [("p-done".to_owned(), format!("slack:{OPERATOR}"))]
    );
    let posts = sys.slack.wait_for_posts(2, WAIT).await;
    assert_eq!(
        posts[1].text(),
        format!("↩️ revert of `p-done` requested by <@{OPERATOR}>: `revert-p-done`")
    );
    assert_eq!(
        posts[1].body["thread_ts"],
        sys.slack.messages()[0].ts.as_str(),
        "the note goes into p-done's thread: {parent:?}"
    );
    let audit = sys.alerter.store.audit_log().await.unwrap();
    let reverts: Vec<_> = audit.iter().filter(|e| e.verb == "revert").collect();
    assert_eq!(reverts.len(), 1, "{audit:?}");
    assert_eq!(
        (
            reverts[0].user_id.as_str(),
            reverts[0].allowed,
            reverts[0].outcome.as_str(),
            reverts[0].args.as_str()
        ),
        (OPERATOR, true, "ok", "p-done")
    );
    assert!(
        sys.ghost("revert")
            .await
            .contains("usage: `/ghost revert <id>`")
    );
    let help = sys.ghost("help").await;
    assert!(help.contains("`revert <id>`"), "{help}");
}

async fn a_bystander_cannot_revert_and_the_router_is_not_asked() {
    let sys = system().await;
    sys.router.script(
        "p-done",
        Scripted::Queued {
            created: true,
            status: PatchStatus::Queued,
        },
    );
    let refused = slash(&sys.alerter, "/ghost", "revert p-done", BYSTANDER).await;
    assert!(
        refused.starts_with("⛔ `revert` is for operators"),
        "{refused}"
    );
    let legacy = slash(&sys.alerter, "/patch-revert", "p-done", BYSTANDER).await;
    assert!(
        legacy.starts_with("⛔ `revert` is for operators"),
        "{legacy}"
    );
    sys.press("revert", "p-done", BYSTANDER).await;
    let followups = sys.slack.wait_for(RESPONSE_URL_METHOD, 1, WAIT).await;
    assert!(followups[0].text().starts_with("⛔"), "{followups:?}");
    assert!(sys.router.reverts().is_empty());
    let audit = sys.alerter.store.audit_log().await.unwrap();
    assert_eq!(audit.len(), 3, "{audit:?}");
    for entry in &audit {
        assert_eq!(
            (entry.verb.as_str(), entry.allowed, entry.outcome.as_str()),
            ("revert", false, "refused: not an operator")
        );
    }
}

async fn patch_revert_now_means_revert() {
    let sys = system().await;
    sys.router.script(
        "p-legacy",
        Scripted::Queued {
            created: true,
            status: PatchStatus::Queued,
        },
    );
    let answer = slash(&sys.alerter, "/patch-revert", "p-legacy", OPERATOR).await;
    assert_eq!(
        answer,
        format!("↩️ revert of `p-legacy` queued as `revert-p-legacy` by <@{OPERATOR}>")
    );
    assert_eq!(
        sys.router.reverts(),
        [("p-legacy".to_owned(), format!("slack:{OPERATOR}"))]
    );
    let help = sys.ghost("help").await;
    assert!(help.contains("/patch-revert (now `revert`"), "{help}");
}

async fn asking_again_conflicts_and_refusals_are_answered_each_in_its_words() {
    let sys = system().await;
    sys.router.script(
        "p-again",
        Scripted::Queued {
            created: false,
            status: PatchStatus::Succeeded,
        },
    );
    sys.router.script(
        "p-changed",
        Scripted::Conflicts(vec![
            "src/a.ts".to_owned(),
            "<!channel> `x` & <https://evil.example|y>.ts".to_owned(),
        ]),
    );
    sys.router.script(
        "p-bidi",
        Scripted::Conflicts(vec!["src/\u{202e}st.ts\u{200b}".to_owned()]),
    );
    sys.router.script(
        "p-failed",
        Scripted::Error(
            tonic::Code::FailedPrecondition,
            "patch p-failed is failed: only a succeeded patch can be reverted".to_owned(),
        ),
    );

    let again = sys.ghost("revert p-again").await;
    assert_eq!(
        again,
        "↩️ a revert of `p-again` was asked for already: `revert-p-again` is succeeded"
    );

    let conflicts = sys.ghost("revert p-changed").await;
    assert_eq!(
        conflicts,
        "⚠️ cannot revert `p-changed`: changed since it succeeded: `src/a.ts`, \
         `&lt;!channel&gt; \u{2cb}x\u{2cb} &amp; &lt;https://evil.example|y&gt;.ts`"
    );
    assert_eq!(conflicts.matches('`').count(), 6, "{conflicts}");
    // Invisible characters (a bidi override, a zero-width space) are shown, not obeyed.
    let bidi = sys.ghost("revert p-bidi").await;
    assert_eq!(
        bidi,
        "⚠️ cannot revert `p-bidi`: changed since it succeeded: `src/\\u{202e}st.ts\\u{200b}`"
    );

    let failed = sys.ghost("revert p-failed").await;
    assert_eq!(
        failed,
        "⚠️ router: patch p-failed is failed: only a succeeded patch can be reverted"
    );
    let missing = sys.ghost("revert p-nope").await;
    assert_eq!(missing, "⚠️ router: no patch \"p-nope\"");

    let audit = sys.alerter.store.audit_log().await.unwrap();
    let outcomes: Vec<_> = audit.iter().map(|e| e.outcome.as_str()).collect();
    assert_eq!(outcomes[0], "ok");
    assert!(
        outcomes[1].starts_with("error: cannot revert"),
        "{outcomes:?}"
    );
}

async fn a_succeeded_patch_message_has_a_revert_button_that_reverts_it() {
    let mut sys = system().await;
    sys.outcome("p-failed", PatchStatus::RolledBack).await;
    sys.outcome("p-good", PatchStatus::Succeeded).await;
    let posts = sys.slack.wait_for_posts(2, WAIT).await;
    let ids = |list: &[(String, String)]| -> Vec<String> {
        list.iter().map(|(action, _)| action.clone()).collect()
    };
    let failed = actions(&posts[0].body);
    assert_eq!(ids(&failed), ["retry", "cancel", "view_summary"]);
    let good = actions(&posts[1].body);
    assert_eq!(ids(&good), ["revert", "view_summary"]);
    assert!(good.iter().all(|(_, value)| value == "p-good"), "{good:?}");

    sys.router.script(
        "p-good",
        Scripted::Queued {
            created: true,
            status: PatchStatus::Queued,
        },
    );
    sys.press("revert", "p-good", OPERATOR).await;
    let followups = sys.slack.wait_for(RESPONSE_URL_METHOD, 1, WAIT).await;
    assert_eq!(
        followups[0].text(),
        format!("↩️ revert of `p-good` queued as `revert-p-good` by <@{OPERATOR}>")
    );
    assert_eq!(
        sys.router.reverts(),
        [("p-good".to_owned(), format!("slack:{OPERATOR}"))]
    );
    let audit = sys.alerter.store.audit_log().await.unwrap();
    assert_eq!(
        (audit[0].verb.as_str(), audit[0].source.as_str()),
        ("revert", "button")
    );
}

async fn a_patch_that_succeeds_on_a_later_attempt_gets_the_revert_button_on_its_parent() {
    let mut sys = system().await;
    sys.outcome("p-later", PatchStatus::RolledBack).await;
    sys.slack.wait_for_posts(1, WAIT).await;
    let mut second = notify("p-later");
    second.attempt = 2;
    second.status = PatchStatus::Succeeded as i32;
    second.error.clear();
    sys.alerter.client.notify(second).await.unwrap();
    let updates = sys.slack.wait_for("chat.update", 1, WAIT).await;
    let ids: Vec<String> = actions(&updates[0].body)
        .into_iter()
        .map(|(action, _)| action)
        .collect();
    assert_eq!(ids, ["revert", "view_summary"]);
}

on_both_stores!(
    revert_by_an_operator_queues_the_revert_and_notes_it_in_the_patch_thread,
    a_bystander_cannot_revert_and_the_router_is_not_asked,
    patch_revert_now_means_revert,
    asking_again_conflicts_and_refusals_are_answered_each_in_its_words,
    a_succeeded_patch_message_has_a_revert_button_that_reverts_it,
    a_patch_that_succeeds_on_a_later_attempt_gets_the_revert_button_on_its_parent,
);
