//! What needs no running system: completions, config check, settings precedence against a
//! gateway that is not there, and the unreachable-gateway error.

use crate::helpers::{API_KEY, Env, path_arg, spawn_system};

/// A loopback URL nothing listens on.
fn dead_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

#[tokio::test]
async fn completions_mention_the_subcommands() {
    let env = Env::empty();
    let run = env.ghost(&["completions", "bash"]).await;
    run.expect(0);
    assert!(!run.stdout.is_empty());
    for subcommand in ["submit", "status", "logs", "executors", "completions"] {
        assert!(run.stdout.contains(subcommand), "{subcommand} missing");
    }
    env.ghost(&["completions", "zsh"]).await.expect(0);
    env.ghost(&["completions", "tcsh"]).await.expect(2);
}

#[tokio::test]
async fn config_check_redacts_secrets_and_names_unknown_keys() {
    let env = Env::empty();
    let good = env.file(
        "alerter.toml",
        "router_url = \"http://10.1.2.3:50051\"\n[slack]\nbot_token = \"xoxb-super-secret\"\n",
    );
    let run = env.ghost(&["config", "check", &path_arg(&good)]).await;
    run.expect(0);
    assert!(run.stdout.contains("[redacted]"), "{run:?}");
    assert!(!run.stdout.contains("xoxb-super-secret"), "{run:?}");
    assert!(run.stdout.contains("http://10.1.2.3:50051"), "{run:?}");
    assert!(run.stderr.contains("valid alerter config"), "{run:?}");
    let json = env
        .ghost(&["--json", "config", "check", &path_arg(&good)])
        .await
        .json();
    assert_eq!(json["service"], "alerter");
    assert_eq!(json["config"]["slack"]["bot_token"], "[redacted]");

    // The service's environment layer applies as it would in the service.
    let run = env
        .ghost_with(
            &["config", "check", &path_arg(&good)],
            &[("GHOST_ALERTER__ROUTER_URL", "http://from-env:1")],
            b"",
        )
        .await;
    run.expect(0);
    assert!(run.stdout.contains("http://from-env:1"), "{run:?}");

    let typo = env.file("svc.toml", "[server]\ngrpc_listn = \"127.0.0.1:1\"\n");
    let run = env
        .ghost(&["config", "check", "--service", "router", &path_arg(&typo)])
        .await;
    run.expect(10);
    assert!(run.stderr.contains("grpc_listn"), "names the key: {run:?}");
    assert!(run.stdout.is_empty(), "{run:?}");

    let run = env
        .ghost(&["config", "check", "--service", "nope", &path_arg(&typo)])
        .await;
    run.expect(2);
}

#[tokio::test]
async fn an_unreachable_gateway_exits_13_with_a_hint() {
    let env = Env::empty();
    let url = dead_url();
    for args in [vec!["status"], vec!["--json", "list"], vec!["show", "x"]] {
        let mut full = vec!["--url", url.as_str()];
        full.extend(args);
        let run = env.ghost(&full).await;
        run.expect(13);
        assert!(run.stderr.contains("cannot reach the gateway"), "{run:?}");
        assert!(
            run.stderr
                .contains(&format!("hint: is `ghost up` running? GHOST_URL={url}")),
            "{run:?}"
        );
    }
    let run = env.ghost(&["--url", "localhost:8080", "status"]).await;
    run.expect(2);
    assert!(run.stderr.contains("hint:"), "{run:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_come_from_flag_then_env_then_config_file() {
    let system = spawn_system().await;
    let plain = Env::empty();
    let config = plain.file(
        "config/ghost/config.toml",
        &format!("url = \"{}\"\napi_key = \"{API_KEY}\"\n", system.url),
    );
    // The default location ($XDG_CONFIG_HOME/ghost/config.toml) alone is enough.
    plain.ghost(&["targets"]).await.expect(0);
    // Env beats the file: a wrong key from GHOST_API_KEY is used and refused.
    let run = plain
        .ghost_with(&["targets"], &[("GHOST_API_KEY", "wrong")], b"")
        .await;
    run.expect(11);
    // The flag beats env.
    plain
        .ghost_with(
            &["--api-key", API_KEY, "targets"],
            &[("GHOST_API_KEY", "wrong")],
            b"",
        )
        .await
        .expect(0);
    // An explicit --config is read, and an unknown key in it is named.
    let other = plain.file("elsewhere.toml", "uRL = \"x\"\n");
    let run = plain
        .ghost(&["--config", &path_arg(&other), "targets"])
        .await;
    run.expect(2);
    assert!(run.stderr.contains("uRL"), "{run:?}");
    let missing = plain
        .ghost(&["--config", "/nonexistent.toml", "targets"])
        .await;
    missing.expect(2);
    drop(config);
}

#[tokio::test]
async fn colours_only_on_a_terminal_and_never_with_no_color() {
    let env = Env::empty();
    let url = dead_url();
    // `script` (util-linux) runs ghost on a pseudo-terminal.
    let on_tty = format!("{} --url {url} status", env!("CARGO_BIN_EXE_ghost"));
    let tty = env
        .ghost_via(&["script", "-qec", &on_tty, "/dev/null"], &[])
        .await;
    tty.expect(13);
    assert!(
        tty.stdout.contains("\x1b[31mghost:"),
        "red on a tty: {tty:?}"
    );
    let no_color = env
        .ghost_via(
            &["script", "-qec", &on_tty, "/dev/null"],
            &[("NO_COLOR", "1")],
        )
        .await;
    no_color.expect(13);
    assert!(!no_color.stdout.contains('\x1b'), "{no_color:?}");
    assert!(
        no_color.stdout.contains("ghost: cannot reach"),
        "{no_color:?}"
    );
    // Not a terminal (a pipe): no colours either.
    let piped = env.ghost(&["--url", &url, "status"]).await;
    assert!(!piped.stderr.contains('\x1b'), "{piped:?}");
}

#[tokio::test]
async fn up_refuses_a_data_dir_inside_a_workspace_naming_both() {
    let env = Env::empty();
    let workspace = env.scratch.path().join("repo");
    std::fs::create_dir_all(&workspace).unwrap();
    let data_dir = workspace.join(".ghost");
    let run = env
        .ghost(&[
            "up",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            &path_arg(&data_dir),
            "--workspace",
            &format!("MAIN={}", path_arg(&workspace)),
        ])
        .await;
    run.expect(2);
    assert!(run.stderr.contains(&path_arg(&data_dir)), "{run:?}");
    assert!(run.stderr.contains(&path_arg(&workspace)), "{run:?}");
    assert!(run.stderr.contains("inside"), "{run:?}");
    assert!(!data_dir.exists(), "nothing was started: {run:?}");
}
