//! `ghost up` with a PostgreSQL store (issue 21): the router, summarizer and alerter on one
//! database the test starts itself, the URL given through `GHOST_STORE` so it is in no argv,
//! and its password in nothing `ghost up` prints or logs.

use ghost_testkit::postgres::TempPostgres;

use serde_json::json;

use crate::helpers::Env;
use crate::up::{PORT_ZERO, ghost_in, keys_of, spawn_up, submit, wait_ended, write_patch};

/// Trust authentication ignores it; it must show up nowhere.
const PASSWORD: &str = "pw-never-printed-7f3a";

/// The three services share the one database, each in its own schema (they all have a
/// `schema_migrations` and an `outbox`).
#[tokio::test]
async fn up_with_a_postgres_store_runs_a_patch_to_succeeded_and_never_shows_the_password() {
    let Some(postgres) = TempPostgres::start_or_skip("up --store") else {
        return;
    };
    let url = postgres
        .create_database()
        .replacen("postgres@", &format!("postgres:{PASSWORD}@"), 1);
    let env = Env::empty();
    let dir = env.scratch.path().to_owned();
    let init = ghost_in(&env, &dir, &["--json", "init", "."], &[]).await;
    init.expect(0);
    let keys = keys_of(&init);

    let mut vars = PORT_ZERO.to_vec();
    vars.push(("GHOST_STORE", url.as_str()));
    let printed = ghost_in(
        &env,
        &dir,
        &["up", "-f", "ghost.toml", "--print-config"],
        &vars,
    )
    .await;
    printed.expect(0);
    assert!(!printed.stdout.contains(PASSWORD), "{printed:?}");
    assert!(printed.stdout.contains("standby = true"), "{printed:?}");

    let up = spawn_up(&env, &dir, &["up", "-f", "ghost.toml"], &vars).await;
    let shown = format!("postgres://postgres@127.0.0.1:{}/", postgres.port());
    assert!(up.printed.contains(&shown), "{}", up.printed);
    assert!(!up.printed.contains(PASSWORD), "{}", up.printed);
    let argv = std::fs::read(format!("/proc/{}/cmdline", up.pid())).expect("cmdline");
    assert!(
        !String::from_utf8_lossy(&argv).contains(PASSWORD),
        "the URL is in ghost up's argv"
    );

    let (code, body) = submit(
        &up.url,
        &keys["submit"],
        &write_patch("on-pg", None, "pg.txt"),
    )
    .await;
    assert_eq!(code, 202, "{body}");
    let ended = wait_ended(&up.url, &keys["read"], "on-pg").await;
    assert_eq!(ended["status"], "succeeded", "{ended}");
    assert_eq!(
        std::fs::read_to_string(dir.join("workspace/pg.txt")).expect("written"),
        "on-pg\n"
    );
    let stderr = up.kill_9_stderr().await;
    assert!(!stderr.contains(PASSWORD), "{stderr}");
}

#[tokio::test]
async fn up_refuses_a_store_that_is_not_postgres_naming_the_flag() {
    let env = Env::empty();
    let dir = env.scratch.path().to_owned();
    let run = ghost_in(
        &env,
        &dir,
        &[
            "up",
            "--print-config",
            "--store",
            "mysql://root:hunter2@db/ghost",
        ],
        &[],
    )
    .await;
    assert_ne!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("--store"), "{run:?}");
    assert!(!run.stderr.contains("hunter2"), "{run:?}");
    assert!(!run.stdout.contains("hunter2"), "{run:?}");
}

/// PostgreSQL's text cannot hold a NUL character (SQLite's can): a patch carrying one in its
/// description and in a file's contents must still be answered and end (or be refused with a
/// clear 4xx), never stall the stores that keep its text, its report or its summary.
#[tokio::test]
async fn a_patch_with_nul_characters_ends_on_a_postgres_store_and_the_next_one_succeeds() {
    let Some(postgres) = TempPostgres::start_or_skip("up --store with NUL characters") else {
        return;
    };
    let url = postgres.create_database();
    let env = Env::empty();
    let dir = env.scratch.path().to_owned();
    let init = ghost_in(&env, &dir, &["--json", "init", "."], &[]).await;
    init.expect(0);
    let keys = keys_of(&init);
    let mut vars = PORT_ZERO.to_vec();
    vars.push(("GHOST_STORE", url.as_str()));
    let up = spawn_up(&env, &dir, &["up", "-f", "ghost.toml"], &vars).await;

    let hostile = json!({
        "id": "nul-bytes",
        "description": "a description with a \u{0} NUL",
        "edits": [{"op": "write", "path": "nul.txt", "contents": "before\u{0}after\n"}],
    });
    let (code, body) = submit(&up.url, &keys["submit"], &hostile).await;
    if code == 202 {
        let ended = wait_ended(&up.url, &keys["read"], "nul-bytes").await;
        assert!(ended["status"].is_string(), "{ended}");
    } else {
        assert!((400..500).contains(&code), "{code}: {body}");
    }
    let (code, body) = submit(
        &up.url,
        &keys["submit"],
        &write_patch("after-nul", None, "a.txt"),
    )
    .await;
    assert_eq!(code, 202, "{body}");
    let ended = wait_ended(&up.url, &keys["read"], "after-nul").await;
    assert_eq!(ended["status"], "succeeded", "{ended}");
    up.kill_9().await;
}
