//! `ghost revert ID`: the real binary against a fake gateway on loopback that scripts the
//! answers of `POST /v1/patches/{id}/revert` (queued, asked before, 409 with conflicts, 404) and
//! of the long poll `GET /v1/patches/{id}?wait=`, recording every request; and against the real
//! system, where an unknown patch is not found.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::helpers::{Env, Run, spawn_system};

const KEY: &str = "revert-test-key-0123456789";

/// One request the fake gateway saw: method and path, query, bearer token, body.
#[derive(Debug, Clone)]
struct Seen {
    route: String,
    query: String,
    authorization: String,
    body: String,
}

#[derive(Clone, Default)]
struct Fake {
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Long polls answered per patch so far.
    polls: Arc<Mutex<HashMap<String, usize>>>,
}

fn view(id: &str, status: &str, replayed: bool) -> Value {
    json!({
        "id": id, "target": "MAIN", "status": status, "attempt": 0, "trace_id": "",
        "replayed": replayed, "shape": "v1", "ignored": [], "warnings": [], "id_derived": false,
    })
}

fn problem(status: StatusCode, detail: &str) -> Value {
    json!({
        "type": "/problems/x", "title": status.canonical_reason().unwrap_or("error"),
        "status": status.as_u16(), "detail": detail,
    })
}

fn record(fake: &Fake, route: String, query: Option<String>, headers: &HeaderMap, body: &str) {
    fake.seen.lock().unwrap().push(Seen {
        route,
        query: query.unwrap_or_default(),
        authorization: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned(),
        body: body.to_owned(),
    });
}

async fn revert(
    State(fake): State<Fake>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    record(
        &fake,
        format!("POST /v1/patches/{id}/revert"),
        None,
        &headers,
        &body,
    );
    match id.as_str() {
        "p-done" | "p-slow" | "p-breaks" => (
            StatusCode::ACCEPTED,
            Json(view(&format!("revert-{id}"), "queued", false)),
        )
            .into_response(),
        "p-again" => (
            StatusCode::OK,
            Json(view("revert-p-again", "succeeded", true)),
        )
            .into_response(),
        "p-again-failed" => (
            StatusCode::OK,
            Json(view("revert-p-again-failed", "rolled_back", true)),
        )
            .into_response(),
        "p-again-queued" => (
            StatusCode::OK,
            Json(view("revert-p-again-queued", "queued", true)),
        )
            .into_response(),
        "p-changed" => {
            let mut body = problem(
                StatusCode::CONFLICT,
                "2 files changed since p-changed ended: src/a.ts, src/\u{1b}[31mevil.ts",
            );
            body["conflicts"] = json!(["src/a.ts", "src/\u{1b}[31mevil.ts"]);
            (StatusCode::CONFLICT, Json(body)).into_response()
        }
        "p-bidi" => {
            let mut body = problem(StatusCode::CONFLICT, "1 file changed since p-bidi ended");
            body["conflicts"] = json!(["src/\u{202e}st.ts\u{200b}", "\u{2066}b.ts"]);
            (StatusCode::CONFLICT, Json(body)).into_response()
        }
        "p-failed" => (
            StatusCode::CONFLICT,
            Json(problem(
                StatusCode::CONFLICT,
                "patch p-failed is failed: only a succeeded patch can be reverted",
            )),
        )
            .into_response(),
        other => (
            StatusCode::NOT_FOUND,
            Json(problem(
                StatusCode::NOT_FOUND,
                &format!("no patch with id {other:?}"),
            )),
        )
            .into_response(),
    }
}

/// `revert-p-done` is applying at the first long poll and succeeded at the second;
/// `revert-p-slow` never ends; `revert-p-breaks` ends rolled back.
async fn patch(
    State(fake): State<Fake>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    record(&fake, format!("GET /v1/patches/{id}"), query, &headers, "");
    let polls = {
        let mut polls = fake.polls.lock().unwrap();
        let count = polls.entry(id.clone()).or_default();
        *count += 1;
        *count
    };
    let status = match (id.as_str(), polls) {
        ("revert-p-done", 1) | ("revert-p-slow", _) => "applying",
        ("revert-p-done", _) => "succeeded",
        ("revert-p-breaks", _) => "rolled_back",
        _ => {
            return (
                StatusCode::NOT_FOUND,
                Json(problem(StatusCode::NOT_FOUND, "no such patch")),
            )
                .into_response();
        }
    };
    let mut detail = view(&id, status, false);
    if status == "rolled_back" {
        detail["error"] = json!("owner check `tsc` failed");
    }
    Json(detail).into_response()
}

/// Serves the fake gateway on a loopback port; its URL.
async fn start(fake: &Fake) -> String {
    let app = Router::new()
        .route("/v1/patches/{id}/revert", post(revert))
        .route("/v1/patches/{id}", get(patch))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

async fn ghost(env: &Env, url: &str, args: &[&str]) -> Run {
    env.ghost_with(args, &[("GHOST_URL", url), ("GHOST_API_KEY", KEY)], b"")
        .await
}

#[tokio::test]
async fn revert_prints_the_revert_patch_and_its_status() {
    let (env, fake) = (Env::empty(), Fake::default());
    let url = start(&fake).await;

    let run = ghost(&env, &url, &["revert", "p-done"]).await;
    run.expect(0);
    assert_eq!(
        run.stdout.trim_end(),
        "revert-p-done is queued (reverts p-done)",
        "{run:?}"
    );
    let seen = fake.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "no wait, no poll: {seen:?}");
    assert_eq!(seen[0].route, "POST /v1/patches/p-done/revert");
    assert_eq!(seen[0].authorization, format!("Bearer {KEY}"));
    assert_eq!(seen[0].body, "{}");

    let run = ghost(&env, &url, &["--json", "revert", "p-done"]).await;
    run.expect(0);
    assert_eq!(run.json()["id"], "revert-p-done");
    assert_eq!(run.json()["status"], "queued");

    let run = ghost(&env, &url, &["revert", "p-again"]).await;
    run.expect(0);
    assert_eq!(
        run.stdout.trim_end(),
        "p-again was already reverted by revert-p-again",
        "{run:?}"
    );
    // Asked before and still queued: said so, nothing to wait for without --wait.
    let run = ghost(&env, &url, &["revert", "p-again-queued"]).await;
    run.expect(0);
    assert_eq!(
        run.stdout.trim_end(),
        "revert-p-again-queued is queued (the revert of p-again-queued was asked for before)",
        "{run:?}"
    );

    let help = env.ghost(&["revert", "--help"]).await;
    help.expect(0);
    assert!(help.stdout.contains("Undo a succeeded patch"), "{help:?}");
    assert!(help.stdout.contains("--wait <DURATION>"), "{help:?}");
    env.ghost(&["revert"]).await.expect(2);
    env.ghost(&["revert", "p-done", "--wait", "soon"])
        .await
        .expect(2);
}

#[tokio::test]
async fn revert_wait_long_polls_the_revert_patch_and_exits_by_its_outcome() {
    let (env, fake) = (Env::empty(), Fake::default());
    let url = start(&fake).await;

    let run = ghost(&env, &url, &["revert", "p-done", "--wait", "30s"]).await;
    run.expect(0);
    assert_eq!(
        run.stdout.trim_end(),
        "revert-p-done is succeeded",
        "{run:?}"
    );
    assert!(run.stderr.contains("queued revert-p-done"), "{run:?}");
    let polls: Vec<Seen> = fake
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.route == "GET /v1/patches/revert-p-done")
        .cloned()
        .collect();
    assert_eq!(polls.len(), 2, "{polls:?}");
    for poll in &polls {
        assert!(poll.query.starts_with("wait="), "a long poll: {poll:?}");
        assert_eq!(poll.authorization, format!("Bearer {KEY}"));
    }

    let run = ghost(
        &env,
        &url,
        &["--json", "revert", "p-breaks", "--wait", "30s"],
    )
    .await;
    run.expect(4);
    assert_eq!(run.json()["status"], "rolled_back");
    assert!(run.stderr.contains("owner check `tsc` failed"), "{run:?}");

    let run = ghost(&env, &url, &["revert", "p-slow", "--wait", "300ms"]).await;
    run.expect(14);
    assert!(
        run.stderr.contains("stopped waiting after 300ms"),
        "{run:?}"
    );
    assert_eq!(run.stdout.trim_end(), "revert-p-slow is applying");
}

/// A replayed revert that ended without succeeding exits by its status (as `--wait` would) and
/// hints at `ghost retry`, with or without `--wait`, and waits for nothing.
#[tokio::test]
async fn a_replayed_revert_that_ended_badly_exits_by_its_status_and_hints_at_retry() {
    let (env, fake) = (Env::empty(), Fake::default());
    let url = start(&fake).await;
    for args in [
        &["revert", "p-again-failed"][..],
        &["revert", "p-again-failed", "--wait", "30s"][..],
    ] {
        let run = ghost(&env, &url, args).await;
        run.expect(4);
        assert_eq!(
            run.stdout.trim_end(),
            "revert-p-again-failed is rolled_back (the revert of p-again-failed was asked for before)",
            "{run:?}"
        );
        assert!(
            run.stderr.contains("ghost retry revert-p-again-failed"),
            "{run:?}"
        );
    }
    let run = ghost(&env, &url, &["--json", "revert", "p-again-failed"]).await;
    run.expect(4);
    assert_eq!(run.json()["status"], "rolled_back");
    let run = ghost(&env, &url, &["revert", "p-again", "--wait", "30s"]).await;
    run.expect(0);
    assert_eq!(
        run.stdout.trim_end(),
        "p-again was already reverted by revert-p-again",
        "{run:?}"
    );
    assert!(
        fake.seen
            .lock()
            .unwrap()
            .iter()
            .all(|seen| seen.route.starts_with("POST")),
        "an ended revert is not waited for"
    );
}

#[tokio::test]
async fn a_conflict_prints_each_changed_file_and_exits_10() {
    let (env, fake) = (Env::empty(), Fake::default());
    let url = start(&fake).await;

    let run = ghost(&env, &url, &["revert", "p-changed", "--wait", "30s"]).await;
    run.expect(10);
    assert_eq!(
        run.stdout.lines().collect::<Vec<_>>(),
        ["src/a.ts", "src/\\u{1b}[31mevil.ts"],
        "{run:?}"
    );
    assert!(!run.stdout.contains('\u{1b}') && !run.stderr.contains('\u{1b}'));
    assert!(
        run.stderr
            .contains("cannot revert p-changed: 2 file(s) changed since it succeeded"),
        "{run:?}"
    );
    assert_eq!(
        fake.seen.lock().unwrap().len(),
        1,
        "nothing was queued, so nothing is waited for"
    );

    let run = ghost(&env, &url, &["--json", "revert", "p-changed"]).await;
    run.expect(10);
    let answer = run.json();
    assert_eq!(answer["id"], "p-changed");
    assert_eq!(
        answer["conflicts"],
        json!(["src/a.ts", "src/\u{1b}[31mevil.ts"])
    );

    // Invisible characters (bidi overrides and isolates, zero-width) are shown escaped.
    let run = ghost(&env, &url, &["revert", "p-bidi"]).await;
    run.expect(10);
    assert_eq!(
        run.stdout.lines().collect::<Vec<_>>(),
        ["src/\\u{202e}st.ts\\u{200b}", "\\u{2066}b.ts"],
        "{run:?}"
    );

    // A 409 without files (the patch did not succeed) is the gateway's refusal, said as is.
    let run = ghost(&env, &url, &["revert", "p-failed"]).await;
    run.expect(10);
    assert!(
        run.stderr
            .contains("409 Conflict: patch p-failed is failed: only a succeeded patch"),
        "{run:?}"
    );
}

#[tokio::test]
async fn an_unknown_patch_is_not_found() {
    let (env, fake) = (Env::empty(), Fake::default());
    let url = start(&fake).await;
    let run = ghost(&env, &url, &["revert", "p-unknown"]).await;
    run.expect(12);
    assert!(
        run.stderr
            .contains("404 Not Found: no patch with id \"p-unknown\""),
        "{run:?}"
    );
    assert!(run.stdout.is_empty(), "{run:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn against_the_real_system_an_unknown_patch_is_not_found() {
    let system = spawn_system().await;
    let run = system.ghost(&["revert", "cli-never-submitted"]).await;
    run.expect(12);
    assert!(run.stderr.contains("404"), "{run:?}");
}
