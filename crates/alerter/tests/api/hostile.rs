//! Hostile input through the alerter's public doors (issue 17): caller text cannot become
//! Slack markup, and a signed request cannot make the alerter post to an address it chose.

use ghost_testkit::FakeSlack;

use crate::helpers::{
    OPERATOR, SIGNING_SECRET, WAIT, command_body, notify, now_secs, post_signed, slash,
    spawn_alerter,
};

const PHISH: &str = "<!channel> <https://evil.example/login|Approve> & more";

#[tokio::test]
async fn caller_text_is_escaped_in_every_part_of_a_patch_message() {
    let slack = FakeSlack::start().await;
    let mut app = spawn_alerter(Some(slack.base_url())).await;
    let mut request = notify("p-phish");
    request.description = PHISH.to_owned();
    request.excerpt = format!("output: {PHISH}");
    request.target = "MAIN".to_owned();
    app.client.notify(request).await.unwrap();

    let posts = slack.wait_for_posts(1, WAIT).await;
    let body = posts[0].body.to_string();
    for raw in ["<!channel>", "<https://evil.example", "& more"] {
        assert!(
            !body.contains(raw),
            "{raw:?} reached Slack as markup: {body}"
        );
    }
    assert!(
        body.contains("&lt;!channel&gt; &lt;https://evil.example/login|Approve&gt; &amp; more"),
        "{body}"
    );
    // Slack is asked not to auto-link bare URLs or names, nor to unfurl a caller's links.
    let post = &posts[0].body;
    assert_eq!(post["parse"], "none");
    assert_eq!(post["link_names"], false);
    assert_eq!(post["unfurl_links"], false);
    assert_eq!(post["unfurl_media"], false);
    let mut texts = 0;
    for block in post["blocks"].as_array().unwrap() {
        let objects = block["fields"]
            .as_array()
            .cloned()
            .unwrap_or_else(|| vec![block["text"].clone()]);
        for object in objects.iter().filter(|object| object["type"] == "mrkdwn") {
            assert_eq!(object["verbatim"], true, "{object}");
            texts += 1;
        }
    }
    assert!(texts >= 5, "{post}");
}

#[tokio::test]
async fn a_long_escaped_text_is_cut_between_escapes() {
    let slack = FakeSlack::start().await;
    let mut app = spawn_alerter(Some(slack.base_url())).await;
    let mut request = notify("p-long");
    // 1,000 characters of description: the cut at 1,000 falls among the escapes.
    request.description = "<".repeat(1_000);
    app.client.notify(request).await.unwrap();

    let posts = slack.wait_for_posts(1, WAIT).await;
    let description = posts[0].body["blocks"][1]["fields"][3]["text"]
        .as_str()
        .unwrap()
        .to_owned();
    let cut = description
        .strip_prefix("*Description*\n")
        .and_then(|rest| rest.strip_suffix('…'))
        .unwrap_or_else(|| panic!("not a cut description: {description:?}"));
    assert!(!cut.contains('<'), "{cut}");
    assert_eq!(cut.len() % "&lt;".len(), 0, "an escape was split: {cut:?}");
    assert!(cut.split("&lt;").all(str::is_empty), "{cut}");
}

#[tokio::test]
async fn a_slack_users_own_words_are_escaped_in_the_answer() {
    let app = spawn_alerter(None).await;
    let answer = slash(&app, "/ghost", "<!channel>", OPERATOR).await;
    assert!(!answer.contains("<!channel>"), "{answer}");
    assert!(answer.contains("&lt;!channel&gt;"), "{answer}");
}

#[tokio::test]
async fn a_response_url_off_slacks_hosts_is_refused_and_never_called() {
    let slack = FakeSlack::start().await;
    let elsewhere = FakeSlack::start().await;
    let app = spawn_alerter(Some(slack.base_url())).await;

    let body = command_body("/ghost", "help", OPERATOR, &elsewhere.response_url("ssrf"));
    let timestamp = now_secs().to_string();
    let signature = alerter::signing::sign(SIGNING_SECRET, &timestamp, body.as_bytes());
    let url = format!("{}/slack/commands", app.http);
    let (status, answer) = post_signed(&url, &body, Some(&timestamp), Some(&signature)).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("response_url"), "{answer}");

    let payload = serde_json::json!({
        "type": "block_actions",
        "user": {"id": OPERATOR, "username": "op"},
        "channel": {"id": "C0001"},
        "response_url": elsewhere.response_url("ssrf-button"),
        "actions": [{"action_id": "ack", "value": "x/y", "type": "button"}],
    });
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", &payload.to_string())
        .finish();
    let signature = alerter::signing::sign(SIGNING_SECRET, &timestamp, body.as_bytes());
    let url = format!("{}/slack/interactions", app.http);
    let (status, answer) = post_signed(&url, &body, Some(&timestamp), Some(&signature)).await;
    assert_eq!(status, 400, "{answer}");

    // Both were refused before their verb ran, so nothing can follow later.
    assert!(elsewhere.requests().await.is_empty());
    // The allowed origin still works.
    let body = command_body("/ghost", "help", OPERATOR, &slack.response_url("ok"));
    let signature = alerter::signing::sign(SIGNING_SECRET, &timestamp, body.as_bytes());
    let url = format!("{}/slack/commands", app.http);
    let (status, _) = post_signed(&url, &body, Some(&timestamp), Some(&signature)).await;
    assert_eq!(status, 200);
}
