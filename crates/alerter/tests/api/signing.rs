//! `/slack/commands` and `/slack/interactions` verify Slack's v0 signature: Slack's documented
//! example (on a clock pinned to its time), requests signed by Python's `slack_sdk`, and the
//! refusals (stale, replayed, tampered, unsigned).

use std::process::Command;
use std::sync::Arc;

use ghost_runtime::clock::SystemClock;
use ghost_runtime::config::Secret;

use crate::helpers::{
    PinnedClock, SIGNING_SECRET, command_body, config, now_secs, post_signed, spawn_with,
};

const SLACK_SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
const SLACK_TIMESTAMP: &str = "1531420618";
const SLACK_BODY: &str = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
const SLACK_SIGNATURE: &str = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";

#[tokio::test]
async fn slacks_documented_example_is_accepted_on_a_clock_pinned_to_its_time() {
    assert_eq!(
        alerter::signing::sign(SLACK_SECRET, SLACK_TIMESTAMP, SLACK_BODY.as_bytes()),
        SLACK_SIGNATURE
    );
    let mut cfg = config(None);
    cfg.slack.signing_secret = Secret::new(SLACK_SECRET);
    let clock = PinnedClock::at(1_531_420_618_000);
    let app = spawn_with(cfg, clock.clone()).await;
    let url = format!("{}/slack/commands", app.http);

    let (status, answer) = post_signed(
        &url,
        SLACK_BODY,
        Some(SLACK_TIMESTAMP),
        Some(SLACK_SIGNATURE),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    // `/webhook-collect` with no text is not a verb we know: the answer is the help.
    assert!(answer.contains("*/ghost* verbs"), "{answer}");

    // The same request again is a replay.
    let (status, answer) = post_signed(
        &url,
        SLACK_BODY,
        Some(SLACK_TIMESTAMP),
        Some(SLACK_SIGNATURE),
    )
    .await;
    assert_eq!(status, 401);
    assert!(answer.contains("replayed"), "{answer}");

    // Five minutes and one second later it is stale.
    clock.set(1_531_420_618_000 + 301_000);
    let (status, answer) = post_signed(
        &url,
        SLACK_BODY,
        Some(SLACK_TIMESTAMP),
        Some(SLACK_SIGNATURE),
    )
    .await;
    assert_eq!(status, 401);
    assert!(answer.contains("300 s"), "{answer}");
}

/// Signs `body` at `timestamp` with `slack_sdk.signature.SignatureVerifier.generate_signature`.
fn slack_sdk_signature(secret: &str, timestamp: &str, body: &str) -> String {
    let script = "import sys\n\
from slack_sdk.signature import SignatureVerifier\n\
verifier = SignatureVerifier(signing_secret=sys.argv[1])\n\
print(verifier.generate_signature(timestamp=sys.argv[2], body=sys.argv[3]))\n";
    let output = Command::new(ghost_testkit::python())
        .args(["-c", script, secret, timestamp, body])
        .output()
        .expect("run python");
    assert!(
        output.status.success(),
        "slack_sdk failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

#[tokio::test]
async fn requests_signed_by_slack_sdk_are_accepted_and_bad_ones_refused() {
    let app = spawn_with(config(None), Arc::new(SystemClock)).await;
    let commands = format!("{}/slack/commands", app.http);

    let body = command_body(
        "/ghost",
        "help",
        "U123",
        "http://127.0.0.1:9/commands/unused",
    );
    let timestamp = now_secs().to_string();
    let signature = slack_sdk_signature(SIGNING_SECRET, &timestamp, &body);
    assert!(signature.starts_with("v0="), "{signature}");
    let (status, answer) = post_signed(&commands, &body, Some(&timestamp), Some(&signature)).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("*/ghost* verbs"), "{answer}");

    // Replayed.
    let (status, _) = post_signed(&commands, &body, Some(&timestamp), Some(&signature)).await;
    assert_eq!(status, 401);

    // Tampered: same signature, another body.
    let tampered = body.replace("help", "cancel%20p-1");
    let (status, answer) =
        post_signed(&commands, &tampered, Some(&timestamp), Some(&signature)).await;
    assert_eq!(status, 401);
    assert!(answer.contains("mismatch"), "{answer}");

    // Stale: correctly signed by slack_sdk, but six minutes old.
    let old = (now_secs() - 360).to_string();
    let old_signature = slack_sdk_signature(SIGNING_SECRET, &old, &body);
    let (status, _) = post_signed(&commands, &body, Some(&old), Some(&old_signature)).await;
    assert_eq!(status, 401);

    // Signed with another secret.
    let fresh = now_secs().to_string();
    let foreign = slack_sdk_signature("someone-elses-secret", &fresh, &body);
    let (status, _) = post_signed(&commands, &body, Some(&fresh), Some(&foreign)).await;
    assert_eq!(status, 401);

    // Unsigned, on both routes.
    let (status, answer) = post_signed(&commands, &body, None, None).await;
    assert_eq!(status, 401);
    assert!(answer.contains("missing header"), "{answer}");
    let interactions = format!("{}/slack/interactions", app.http);
    let (status, _) = post_signed(&interactions, "payload=%7B%7D", None, None).await;
    assert_eq!(status, 401);

    // Every refusal was refused before running anything: only the one help is audited.
    let audit = app.store.audit_log().await.unwrap();
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0].verb, "help");
}
