//! The alerter's API over real gRPC on loopback, delivering to a fake Slack.
//!
//! Absence of a message is checked by ordering, never by waiting: the alerter delivers in
//! order, so once a later message arrived, an unwanted earlier one would have arrived first.

mod helpers;

use std::time::Duration;

use ghost_testkit::{FakeResponse, FakeSlack, SlackRequest};
use helpers::{TOKEN, notify, spawn_alerter};

const WAIT: Duration = Duration::from_secs(10);

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

#[tokio::test]
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
}

#[tokio::test]
async fn rate_limits_are_waited_out_and_retried() {
    let slack = FakeSlack::start().await;
    slack.push_response(FakeResponse::RateLimited { retry_after_s: 1 });
    let mut app = spawn_alerter(Some(slack.base_url())).await;

    app.client.notify(notify("p-limited")).await.unwrap();
    let posts = slack.wait_for_posts(2, WAIT).await;
    assert_eq!(names(&posts), ["p-limited", "p-limited"]);
}

#[tokio::test]
async fn server_errors_are_retried() {
    let slack = FakeSlack::start().await;
    slack.push_response(FakeResponse::ServerError);
    let mut app = spawn_alerter(Some(slack.base_url())).await;

    app.client.notify(notify("p-flaky")).await.unwrap();
    let posts = slack.wait_for_posts(2, WAIT).await;
    assert_eq!(names(&posts), ["p-flaky", "p-flaky"]);
}

#[tokio::test]
async fn permanent_slack_errors_are_not_retried() {
    let slack = FakeSlack::start().await;
    slack.push_response(FakeResponse::SlackError("invalid_auth".to_owned()));
    let mut app = spawn_alerter(Some(slack.base_url())).await;

    app.client.notify(notify("p-refused")).await.unwrap();
    app.client.notify(notify("p-after")).await.unwrap();
    let posts = slack.wait_for_posts(2, WAIT).await;
    assert_eq!(names(&posts), ["p-refused", "p-after"]);
}

#[tokio::test]
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

#[tokio::test]
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
