//! What `ghost up` refuses before anything starts, and what it must not leak or let slip: a
//! config file or a state directory a patch could write, keys from the client's environment,
//! file values a flag's default would overwrite, secrets in errors and printed configs.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::helpers::{Env, Run};
use crate::up::{PORT_ZERO, ghost_in, keys_of, spawn_up, submit, write_patch};

/// Asserts `run` failed, saying every one of `needles`.
#[track_caller]
pub(crate) fn refused(run: &Run, needles: &[&str]) {
    assert_ne!(run.code, 0, "expected a refusal: {run:?}");
    for needle in needles {
        assert!(run.stderr.contains(needle), "missing {needle:?}: {run:?}");
    }
}

/// `ghost up --print-config` in `dir` with `args` after it.
pub(crate) async fn print_config(
    env: &Env,
    dir: &Path,
    args: &[&str],
    extra: &[(&str, &str)],
) -> Run {
    let mut all = vec!["up", "--print-config"];
    all.extend(args);
    ghost_in(env, dir, &all, extra).await
}

/// The effective config `--print-config` printed, as TOML.
fn printed(run: &Run) -> toml::Table {
    run.expect(0);
    toml::from_str(&run.stdout).unwrap_or_else(|err| panic!("not TOML ({err}): {run:?}"))
}

#[tokio::test]
async fn a_config_file_inside_a_workspace_is_refused_so_no_patch_can_rewrite_it() {
    let env = Env::empty();
    let project = env.scratch.path().join("project");
    ghost_in(
        &env,
        env.scratch.path(),
        &["init", &project.display().to_string()],
        &[],
    )
    .await
    .expect(0);
    let file = project.join("ghost.toml");
    let text = std::fs::read_to_string(&file).expect("ghost.toml");
    std::fs::write(
        &file,
        text.replace("root = \"./workspace\"", "root = \".\""),
    )
    .expect("rewritten");
    let args = ["up", "-f", "ghost.toml", "--data-dir", "../state"];
    let run = ghost_in(&env, &project, &args, &PORT_ZERO).await;
    refused(
        &run,
        &[
            "config file ghost.toml",
            "inside workspace MAIN",
            "move it outside",
        ],
    );
    let run = print_config(&env, &project, &["--data-dir", "../state"], &[]).await;
    refused(&run, &["config file ghost.toml", "inside workspace MAIN"]);
    // The same file through a symlink from outside the workspace is the same file.
    std::os::unix::fs::symlink(&file, env.scratch.path().join("linked.toml")).expect("symlink");
    std::fs::create_dir_all(env.scratch.path().join("elsewhere")).expect("dir");
    let run = print_config(
        &env,
        env.scratch.path(),
        &[
            "-f",
            "linked.toml",
            "--data-dir",
            "./state",
            "--workspace",
            &format!("MAIN={}", project.display()),
        ],
        &[],
    )
    .await;
    refused(&run, &["config file linked.toml", "inside workspace MAIN"]);
}

#[tokio::test]
async fn every_state_directory_is_checked_against_the_final_workspaces_both_ways() {
    let env = Env::empty();
    let dir = env.scratch.path().to_owned();
    for (text, needles) in [
        (
            "[router]\ndata_dir = \"./workspace/.router\"\n",
            [
                "[router] data_dir ./workspace/.router",
                "inside workspace MAIN",
            ],
        ),
        (
            "[summarizer]\ndata_dir = \"./workspace\"\n",
            ["[summarizer] data_dir ./workspace", "inside workspace MAIN"],
        ),
        (
            "[alerter]\ndata_dir = \"./workspace/a\"\n",
            ["[alerter] data_dir", "inside workspace MAIN"],
        ),
        (
            "[executor]\nstate_dir = \"./workspace/.x\"\n",
            ["[executor] state_dir", "inside workspace MAIN"],
        ),
        (
            "[gateway]\ninbox = \"./workspace/inbox\"\n",
            ["[gateway] inbox", "inside workspace MAIN"],
        ),
        (
            "[router]\ndata_dir = \".\"\n",
            [
                "workspace MAIN (./workspace) is inside [router] data_dir .",
                "outside",
            ],
        ),
    ] {
        env.file("ghost.toml", text);
        let run = print_config(&env, &dir, &[], &[]).await;
        refused(&run, &needles);
    }

    // The environment cannot name the workspaces behind [[targets]]'s back (and so beat a
    // --workspace flag and make the data dir a workspace).
    env.file("ghost.toml", "");
    let workspaces = [(
        "GHOST_EXECUTOR__WORKSPACES",
        "[{target=\"MAIN\",root=\"./.ghost\"}]",
    )];
    let args = ["--workspace", "MAIN=./flagws"];
    let run = print_config(&env, &dir, &args, &workspaces).await;
    refused(
        &run,
        &["GHOST_EXECUTOR__WORKSPACES", "set targets with [[targets]]"],
    );
    let mut extra = PORT_ZERO.to_vec();
    extra.extend(workspaces);
    let run = ghost_in(&env, &dir, &["up", "--workspace", "MAIN=./flagws"], &extra).await;
    refused(&run, &["set targets with [[targets]]"]);
    for text in [
        "[executor]\nworkspaces = [{ target = \"MAIN\", root = \"./.ghost\" }]\n",
        "[gateway]\ndefault_target = \"OTHER\"\n",
    ] {
        env.file("ghost.toml", text);
        let run = print_config(&env, &dir, &[], &[]).await;
        refused(
            &run,
            &["is set in the file", "set targets with [[targets]]"],
        );
    }
}

#[tokio::test]
async fn a_workspace_flag_moves_the_files_target_and_targets_are_checked_at_load() {
    let env = Env::empty();
    let dir = env.scratch.path().to_owned();
    env.file(
        "ghost.toml",
        "[[targets]]\nname = \"MAIN\"\nroot = \"./from-file\"\n",
    );
    let effective =
        printed(&print_config(&env, &dir, &["--workspace", "MAIN=./flagws"], &[]).await);
    let workspaces = effective["executor"]["workspaces"]
        .as_array()
        .expect("list");
    assert_eq!(workspaces.len(), 1, "{workspaces:?}");
    assert_eq!(workspaces[0]["root"].as_str(), Some("./flagws"));

    env.file(
        "ghost.toml",
        "[[targets]]\nname = \"MAIN\"\nroot = \"./a\"\n[[targets]]\nname = \"DEV\"\nroot = \"./x/../a\"\n",
    );
    let run = print_config(&env, &dir, &[], &[]).await;
    refused(&run, &["targets MAIN and DEV have the same root"]);
    env.file(
        "ghost.toml",
        "[[targets]]\nname = \"MAIN ../x\"\nroot = \"./a\"\n",
    );
    let run = print_config(&env, &dir, &[], &[]).await;
    refused(&run, &["\"MAIN ../x\"", "target may contain only"]);
}

#[tokio::test]
async fn the_clients_api_key_variable_never_becomes_an_all_scopes_gateway_key() {
    let env = Env::empty();
    let dir = env.scratch.path().to_owned();
    let init = ghost_in(&env, &dir, &["--json", "init", "."], &[]).await;
    init.expect(0);
    let keys = keys_of(&init);
    // The client's variable, holding the read key or a key of some other deployment, is not
    // a gateway key at all under `ghost up`.
    for (client_key, expected) in [
        (keys["read"].as_str(), 403),
        ("a-key-of-another-deployment-0123", 401),
    ] {
        let mut extra = PORT_ZERO.to_vec();
        extra.push(("GHOST_API_KEY", client_key));
        let up = spawn_up(&env, &dir, &["up"], &extra).await;
        let (code, body) = submit(
            &up.url,
            client_key,
            &write_patch("by-client", None, "c.txt"),
        )
        .await;
        assert_eq!(code, expected, "{client_key}: {body}");
        let (code, body) = submit(
            &up.url,
            &keys["submit"],
            &write_patch(&format!("by-submitter-{expected}"), None, "s.txt"),
        )
        .await;
        assert_eq!(code, 202, "{body}");
        up.kill_9().await;
    }

    // An explicit --api-key is the operator's choice: it is an all-scopes key.
    let args = ["up", "--api-key", "flag-key-0123456789abcdef"];
    let up = spawn_up(&env, &dir, &args, &PORT_ZERO).await;
    let (code, body) = submit(
        &up.url,
        "flag-key-0123456789abcdef",
        &write_patch("flag-key", None, "f.txt"),
    )
    .await;
    assert_eq!(code, 202, "{body}");
    up.kill_9().await;
}

#[tokio::test]
async fn slack_flags_and_their_variables_override_only_what_they_set() {
    let env = Env::empty();
    let dir = env.scratch.path().to_owned();
    env.file(
        "ghost.toml",
        "[alerter.slack]\nbot_token = \"xoxb-from-file\"\nchannel = \"#ops\"\n",
    );
    let slack = |run: &Run| printed(run)["alerter"]["slack"].clone();
    let api = [("GHOST_SLACK_API_URL", "http://127.0.0.1:9/api")];
    let with_url = slack(&print_config(&env, &dir, &[], &api).await);
    assert_eq!(
        with_url["api_base_url"].as_str(),
        Some("http://127.0.0.1:9/api")
    );
    assert_eq!(with_url["channel"].as_str(), Some("#ops"), "{with_url}");
    assert_eq!(
        with_url["bot_token"].as_str(),
        Some("[redacted]"),
        "{with_url}"
    );

    // File < GHOST_ALERTER__* < GHOST_SLACK_CHANNEL (the flag's variable) < --slack-channel.
    let service_env = [("GHOST_ALERTER__SLACK__CHANNEL", "#service-env")];
    let from_env = slack(&print_config(&env, &dir, &[], &service_env).await);
    assert_eq!(from_env["channel"].as_str(), Some("#service-env"));
    let flag_env = [
        ("GHOST_ALERTER__SLACK__CHANNEL", "#service-env"),
        ("GHOST_SLACK_CHANNEL", "#flag-env"),
    ];
    let from_flag_env = slack(&print_config(&env, &dir, &[], &flag_env).await);
    assert_eq!(from_flag_env["channel"].as_str(), Some("#flag-env"));
    let args = ["--slack-channel", "#flag"];
    let from_flag = slack(&print_config(&env, &dir, &args, &flag_env).await);
    assert_eq!(from_flag["channel"].as_str(), Some("#flag"));
}

#[tokio::test]
async fn every_secret_is_redacted_and_a_printed_config_cannot_be_run_with_its_placeholders() {
    let env = Env::empty();
    let dir = env.scratch.path().to_owned();
    env.file(
        "ghost.toml",
        "[gateway]\napi_key = \"sk-GATEWAY-SECRET\"\n\
         [[gateway.webhooks]]\nname = \"gh\"\nsecrets = [\"whsec_WEBHOOK_SECRET\"]\n\
         [router]\nexecutor_token = \"ROUTER-EXECUTOR-TOKEN\"\n\
         [executor]\ntoken = \"EXECUTOR-TOKEN\"\n\
         [alerter.slack]\nbot_token = \"xoxb-BOT\"\nwebhook_url = \"https://hooks.example/SECRET-HOOK\"\n\
         signing_secret = \"SIGNING-SECRET\"\n",
    );
    let run = print_config(&env, &dir, &[], &[]).await;
    run.expect(0);
    for secret in [
        "sk-GATEWAY-SECRET",
        "whsec_WEBHOOK_SECRET",
        "ROUTER-EXECUTOR-TOKEN",
        "EXECUTOR-TOKEN",
        "xoxb-BOT",
        "SECRET-HOOK",
        "SIGNING-SECRET",
    ] {
        assert!(!run.stdout.contains(secret), "{secret} printed: {run:?}");
    }
    assert!(run.stdout.matches("\"[redacted]\"").count() >= 7, "{run:?}");

    env.file("printed.toml", &run.stdout);
    let again = print_config(&env, &dir, &["-f", "printed.toml"], &[]).await;
    refused(
        &again,
        &["printed.toml:", "the placeholder --print-config shows"],
    );
    let env_placeholder = [("GHOST_ALERTER__SLACK__SIGNING_SECRET", "[redacted]")];
    env.file("ghost.toml", "");
    let again = print_config(&env, &dir, &[], &env_placeholder).await;
    refused(
        &again,
        &["GHOST_ALERTER__SLACK__SIGNING_SECRET", "placeholder"],
    );
}

#[tokio::test]
async fn a_secret_of_the_wrong_type_is_not_echoed_in_the_error() {
    let env = Env::empty();
    let dir = env.scratch.path().to_owned();
    env.file(
        "ghost.toml",
        "[[gateway.webhooks]]\nname = \"gh\"\nsecrets = \"whsec_REAL_FILE\"\n",
    );
    let run = print_config(&env, &dir, &[], &[]).await;
    refused(&run, &["ghost.toml:3:11", "string \"…\""]);
    assert!(!run.stderr.contains("whsec_REAL_FILE"), "{run:?}");

    env.file("ghost.toml", "");
    let var = [(
        "GHOST_GATEWAY__WEBHOOKS",
        "[{name=\"gh\",secrets=\"whsec_REAL_ENV\"}]",
    )];
    let run = print_config(&env, &dir, &[], &var).await;
    refused(&run, &["GHOST_GATEWAY__WEBHOOKS"]);
    assert!(!run.stderr.contains("whsec_REAL_ENV"), "{run:?}");
}

#[tokio::test]
async fn init_writes_an_owner_only_file_and_force_replaces_a_symlink_instead_of_following_it() {
    let env = Env::empty();
    let dir = env.scratch.path().join("project");
    let run = ghost_in(
        &env,
        env.scratch.path(),
        &["init", &dir.display().to_string()],
        &[],
    )
    .await;
    run.expect(0);
    let file = dir.join("ghost.toml");
    let mode = std::fs::metadata(&file)
        .expect("written")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");

    let victim = env.scratch.path().join("victim");
    std::fs::write(&victim, "keep me\n").expect("victim");
    std::fs::remove_file(&file).expect("removed");
    std::os::unix::fs::symlink(&victim, &file).expect("symlink");
    let args = ["init", "--force", &dir.display().to_string()];
    ghost_in(&env, env.scratch.path(), &args, &[])
        .await
        .expect(0);
    assert_eq!(
        std::fs::read_to_string(&victim).expect("victim"),
        "keep me\n"
    );
    let meta = std::fs::symlink_metadata(&file).expect("written");
    assert!(meta.file_type().is_file(), "{meta:?}");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .expect("dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(leftovers, ["ghost.toml"], "temporary files left behind");
}

#[tokio::test]
async fn listeners_on_every_interface_are_dialled_on_loopback() {
    let env = Env::empty();
    let dir = env.scratch.path().to_owned();
    env.file(
        "ghost.toml",
        "[router.server]\ngrpc_listen = \"0.0.0.0:6001\"\n[summarizer.server]\ngrpc_listen = \"[::]:6003\"\n",
    );
    let effective = printed(&print_config(&env, &dir, &[], &[]).await);
    assert_eq!(
        effective["gateway"]["router_url"].as_str(),
        Some("http://127.0.0.1:6001")
    );
    assert_eq!(
        effective["router"]["summarizer_url"].as_str(),
        Some("http://[::1]:6003")
    );
}

#[tokio::test]
async fn a_start_that_fails_partway_releases_the_listeners_no_service_took() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("state");
    let mut config = ghost_cli::up_config::defaults(&data_dir);
    let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    for server in [
        &mut config.gateway.server,
        &mut config.router.server,
        &mut config.summarizer.server,
        &mut config.alerter.server,
    ] {
        server.grpc_listen = loopback;
        server.http_listen = loopback;
    }
    // The executor's workspace cannot be created (a file is in the way): the start fails
    // after the alerter, summarizer and router took their listeners, before the gateway.
    let blocker = dir.path().join("blocker");
    std::fs::write(&blocker, "").expect("file");
    let executor = config.executor.as_mut().expect("executor");
    executor.server.grpc_listen = loopback;
    executor.server.http_listen = loopback;
    executor.workspaces = vec![executor::WorkspaceConfig {
        target: "MAIN".to_owned(),
        root: blocker.join("ws"),
    }];
    let mut builder = ghost_cli::system::SystemBuilder::from_config(data_dir, config);
    let bound = builder.bind().expect("prebind");
    let gateway = [
        bound.gateway.server.grpc_listen,
        bound.gateway.server.http_listen,
    ];
    let executor_http = bound
        .executor
        .as_ref()
        .expect("executor")
        .server
        .http_listen;
    let started = builder.start().await;
    assert!(started.is_err(), "the start should fail");
    for addr in gateway.into_iter().chain([executor_http]) {
        std::net::TcpListener::bind(addr)
            .unwrap_or_else(|err| panic!("{addr} is still held after the failed start: {err}"));
    }
}
