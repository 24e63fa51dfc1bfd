//! Patch outcomes: one thread per patch, Block Kit, retries, the webhook fallback, and the
//! `Alert` RPC's idempotency.
//!
//! Absence of a message is checked by ordering, never by waiting: the alerter delivers in
//! order, so once a later message arrived, an unwanted earlier one would have arrived first.

use std::collections::HashMap;
use std::sync::Arc;

use alerter::{AlertPolicy, SlackConfig};
use ghost_proto::alerter::v1::{AlertRequest, Severity};
use ghost_proto::router::v1::PatchStatus;
use ghost_runtime::clock::SystemClock;
use ghost_runtime::config::Secret;
use ghost_testkit::{FakeResponse, FakeSlack, SlackRequest, WEBHOOK_METHOD, wait_for};

use crate::helpers::{TOKEN, WAIT, config, notify, spawn_alerter, spawn_with};

fn names(posts: &[SlackRequest]) -> Vec<String> {
    posts
        .iter()
        .map(|post| {
            post.text()
                .split_whitespace()
                .nth(1)
                .unwrap_or("")
                .to_owned()
        })
        .collect()
}

async fn notify_posts_one_message_and_duplicates_post_nothing() {
    let slack = FakeSlack::start().await;
    let mut app = spawn_alerter(Some(slack.base_url())).await;

    let first = app
        .client
        .notify(notify("p-one"))
        .await
        .unwrap()
        .into_inner();
    assert!(first.accepted);
    let again = app
        .client
        .notify(notify("p-one"))
        .await
        .unwrap()
        .into_inner();
    assert!(!again.accepted);
    app.client.notify(notify("p-two")).await.unwrap();

    let posts = slack.wait_for_posts(2, WAIT).await;
    assert_eq!(names(&posts), ["p-one", "p-two"]);
    let post = &posts[0];
    assert_eq!(
        post.authorization.as_deref(),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    assert_eq!(post.body["channel"], "#ghost-test");
    assert_eq!(
        post.body["blocks"][0]["text"]["text"],
        "❌ p-one rolled_back"
    );
    let blocks = post.body["blocks"].to_string();
    assert!(blocks.contains("patchName: p-one"), "{blocks}");
    assert!(
        blocks.contains("trace 4bf92f3577b34da6a3ce929d0e0e4736"),
        "{blocks}"
    );
    for action in ["retry", "cancel", "view_summary"] {
        assert!(
            blocks.contains(&format!("\"action_id\":\"{action}\"")),
            "{blocks}"
        );
    }
}

async fn later_attempts_update_the_parent_and_reply_in_its_thread() {
    let slack = FakeSlack::start().await;
    let mut app = spawn_alerter(Some(slack.base_url())).await;

    app.client.notify(notify("p-thread")).await.unwrap();
    let mut second = notify("p-thread");
    second.attempt = 2;
    second.status = PatchStatus::Succeeded as i32;
    second.error = String::new();
    app.client.notify(second).await.unwrap();

    let posts = slack.wait_for_posts(2, WAIT).await;
    let updates = slack.wait_for("chat.update", 1, WAIT).await;
    assert_eq!(updates.len(), 1);
    let messages = slack.messages();
    let parent = &messages[0];
    assert_eq!(parent.thread_ts, None);
    assert_eq!(parent.updates, 1);
    assert_eq!(
        parent.body["blocks"][0]["text"]["text"],
        "✅ p-thread succeeded"
    );
    assert_eq!(updates[0].body["ts"], parent.ts.as_str());
    assert_eq!(updates[0].body["channel"], parent.channel.as_str());
    let reply = &posts[1];
    assert_eq!(reply.body["thread_ts"], parent.ts.as_str());
    assert_eq!(reply.body["channel"], parent.channel.as_str());
    assert!(reply.text().contains("attempt 2"), "{}", reply.text());
}

async fn rate_limits_are_waited_out_and_retried() {
    let slack = FakeSlack::start().await;
    slack.push_response(FakeResponse::RateLimited { retry_after_s: 1 });
    let mut app = spawn_alerter(Some(slack.base_url())).await;

    app.client.notify(notify("p-limited")).await.unwrap();
    let posts = slack.wait_for_posts(2, WAIT).await;
    assert_eq!(names(&posts), ["p-limited", "p-limited"]);
}

async fn server_errors_are_retried() {
    let slack = FakeSlack::start().await;
    slack.push_response(FakeResponse::ServerError);
    let mut app = spawn_alerter(Some(slack.base_url())).await;

    app.client.notify(notify("p-flaky")).await.unwrap();
    let posts = slack.wait_for_posts(2, WAIT).await;
    assert_eq!(names(&posts), ["p-flaky", "p-flaky"]);
}

async fn permanent_slack_errors_are_dead_lettered_not_retried() {
    let slack = FakeSlack::start().await;
    slack.push_response(FakeResponse::SlackError("channel_not_found".to_owned()));
    let mut app = spawn_alerter(Some(slack.base_url())).await;

    app.client.notify(notify("p-refused")).await.unwrap();
    // The refusal is scripted for the first post: let it be p-refused's before p-after exists
    // (two threads are delivered at once, in either order).
    slack.wait_for_posts(1, WAIT).await;
    app.client.notify(notify("p-after")).await.unwrap();
    let posts = slack.wait_for_posts(2, WAIT).await;
    assert_eq!(names(&posts), ["p-refused", "p-after"]);
    // The posts are seen a moment before their outcomes are recorded: wait (bounded) for the
    // dead letter, then check that nothing was tried again meanwhile.
    let counts = wait_for("p-refused to be dead-lettered", async || {
        let counts = app.store.outbox_counts().await.unwrap();
        if counts.dead > 0 {
            Ok(counts)
        } else {
            Err(counts)
        }
    })
    .await;
    assert_eq!(counts.dead, 1, "{counts:?}");
    assert_eq!(
        names(&slack.posts().await),
        ["p-refused", "p-after"],
        "not retried"
    );
}

async fn retries_are_bounded_then_dead_lettered() {
    let slack = FakeSlack::start().await;
    slack.push_responses([
        FakeResponse::ServerError,
        FakeResponse::ServerError,
        FakeResponse::ServerError,
    ]);
    let mut app = spawn_alerter(Some(slack.base_url())).await;

    app.client.notify(notify("p-doomed")).await.unwrap();
    // max_attempts is 3: three failed tries, then the message is dead-lettered.
    wait_for("p-doomed to be dead-lettered", async || {
        let counts = app.store.outbox_counts().await.unwrap();
        if counts.dead > 0 { Ok(()) } else { Err(counts) }
    })
    .await;
    app.client.notify(notify("p-next")).await.unwrap();
    let posts = slack.wait_for_posts(4, WAIT).await;
    assert_eq!(
        names(&posts),
        ["p-doomed", "p-doomed", "p-doomed", "p-next"]
    );
    assert!(posts[3].succeeded());
    assert_eq!(app.store.outbox_counts().await.unwrap().dead, 1);
}

async fn the_webhook_is_used_without_a_bot_token_and_when_the_token_is_refused() {
    let slack = FakeSlack::start().await;
    let mut webhook_only = config(None);
    webhook_only.slack = SlackConfig {
        webhook_url: Secret::new(slack.webhook_url()),
        ..webhook_only.slack
    };
    let mut app = spawn_with(webhook_only, Arc::new(SystemClock)).await;
    app.client.notify(notify("p-hook")).await.unwrap();
    let hooks = slack.wait_for(WEBHOOK_METHOD, 1, WAIT).await;
    assert!(hooks[0].text().contains("p-hook"), "{:?}", hooks[0]);
    assert!(hooks[0].body.get("channel").is_none());
    drop(app);

    let slack = FakeSlack::start().await;
    let mut revoked = config(Some(slack.base_url()));
    revoked.slack.bot_token = Secret::new("xoxp-not-a-bot-token");
    revoked.slack.webhook_url = Secret::new(slack.webhook_url());
    let mut app = spawn_with(revoked, Arc::new(SystemClock)).await;
    app.client.notify(notify("p-fallback")).await.unwrap();
    let hooks = slack.wait_for(WEBHOOK_METHOD, 1, WAIT).await;
    assert!(hooks[0].text().contains("p-fallback"));
    let all = slack.requests().await;
    assert_eq!(all[0].method, "chat.postMessage");
    assert_eq!(all[0].answer, "invalid_auth");
}

async fn notify_succeeds_without_slack() {
    let mut app = spawn_alerter(None).await;
    let response = app
        .client
        .notify(notify("p-quiet"))
        .await
        .unwrap()
        .into_inner();
    assert!(response.accepted);
}

async fn invalid_notifications_name_the_field() {
    let mut app = spawn_alerter(None).await;
    let status = app.client.notify(notify("../x")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("patch_id"), "{status:?}");
    let mut unspecified = notify("p-bad-status");
    unspecified.status = 0;
    let status = app.client.notify(unspecified).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("status"), "{status:?}");
}

pub fn alert_request(key: &str, resolved: bool, at_unix_ms: i64) -> AlertRequest {
    AlertRequest {
        key: key.to_owned(),
        resolved,
        severity: Severity::Critical as i32,
        summary: format!("{key} is bad"),
        labels: HashMap::from([("target".to_owned(), "MAIN".to_owned())]),
        source: "router".to_owned(),
        at_unix_ms,
    }
}

async fn alert_rpc_raises_and_resolves_idempotently() {
    let slack = FakeSlack::start().await;
    let mut cfg = config(Some(slack.base_url()));
    cfg.alerts = AlertPolicy {
        group_wait: std::time::Duration::ZERO,
        ..AlertPolicy::default()
    };
    let mut app = spawn_with(cfg, Arc::new(SystemClock)).await;

    let raised = app
        .client
        .alert(alert_request("queue_stale/MAIN", false, 1))
        .await
        .unwrap();
    assert!(raised.into_inner().accepted);
    let again = app
        .client
        .alert(alert_request("queue_stale/MAIN", false, 1))
        .await
        .unwrap();
    assert!(!again.into_inner().accepted);
    let resolved = app
        .client
        .alert(alert_request("queue_stale/MAIN", true, 2))
        .await
        .unwrap();
    assert!(resolved.into_inner().accepted);

    let posts = slack.wait_for_posts(2, WAIT).await;
    assert_eq!(posts.len(), 2, "{posts:?}");
    assert!(
        posts[0].text().contains("queue_stale/MAIN"),
        "{}",
        posts[0].text()
    );
    assert!(
        posts[0].body["blocks"]
            .to_string()
            .contains("\"action_id\":\"ack\"")
    );
    assert!(
        posts[1]
            .text()
            .starts_with("✅ resolved: `queue_stale/MAIN`"),
        "{}",
        posts[1].text()
    );
    assert_eq!(posts[1].body["thread_ts"], slack.messages()[0].ts.as_str());

    let bad = app
        .client
        .alert(alert_request("has space", false, 3))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().contains("key"));
}

async fn the_summary_excerpt_reaches_slack_as_mrkdwn() {
    let slack = FakeSlack::start().await;
    let mut app = spawn_alerter(Some(slack.base_url())).await;
    let mut request = notify("p-md");
    request.excerpt = "# ❌ p-md rolled_back\n**Target** MAIN\nDiagnostics:\n\
                       - `src/a.ts:12:5` TS2322 Type 'string' is not assignable to type 'number'.\n\
                       | where | code |\n|---|---|\n| `b.c:1` | -Wall |\n\
                       Trace: [open](http://jaeger.test/trace/1)\npatchName: p-md\n"
        .to_owned();
    app.client.notify(request).await.unwrap();

    let posts = slack.wait_for_posts(1, WAIT).await;
    let excerpt = posts[0].body["blocks"][2]["text"]["text"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        excerpt,
        "*❌ p-md rolled_back*\n*Target* MAIN\nDiagnostics:\n\
         • `src/a.ts:12:5` TS2322 Type 'string' is not assignable to type 'number'.\n\
         *where* · *code*\n`b.c:1` · -Wall\n\
         Trace: open (http://jaeger.test/trace/1)\npatchName: p-md\n"
    );
}

on_both_stores!(
    notify_posts_one_message_and_duplicates_post_nothing,
    later_attempts_update_the_parent_and_reply_in_its_thread,
    rate_limits_are_waited_out_and_retried,
    server_errors_are_retried,
    permanent_slack_errors_are_dead_lettered_not_retried,
    retries_are_bounded_then_dead_lettered,
    the_webhook_is_used_without_a_bot_token_and_when_the_token_is_refused,
    notify_succeeds_without_slack,
    invalid_notifications_name_the_field,
    alert_rpc_raises_and_resolves_idempotently,
    the_summary_excerpt_reaches_slack_as_mrkdwn,
);
