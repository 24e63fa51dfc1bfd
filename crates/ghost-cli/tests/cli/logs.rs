//! Logs written to a pipe (a log shipper, `docker logs`, a file) carry no ANSI colour codes.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

use crate::helpers::{API_KEY, Env, path_arg};
use crate::up::PORT_ZERO;

#[tokio::test]
async fn up_logs_to_a_pipe_without_colour_codes() {
    let env = Env::empty();
    let workspace = env.scratch.path().join("workspace");
    std::fs::create_dir_all(&workspace).expect("workspace");
    let data_dir = env.scratch.path().join("state");
    let mut child = env.spawn(
        &[
            "up",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            &path_arg(&data_dir),
            "--workspace",
            &format!("MAIN={}", path_arg(&workspace)),
            "--api-key",
            API_KEY,
        ],
        // Every internal listener on a free port: the README's fixed ports may be taken by
        // another test (or another `ghost up`) on this machine.
        &PORT_ZERO,
    );
    let stdout = child.stdout.take().expect("stdout piped");
    let mut lines = BufReader::new(stdout).lines();
    let mut seen = Vec::new();
    // Until the banner has ended and a service has logged that it is serving.
    let read = tokio::time::timeout(Duration::from_secs(60), async {
        let mut banner_done = false;
        let mut logged = false;
        while let Some(line) = lines.next_line().await.expect("stdout readable") {
            banner_done |= line.contains("Submit with:");
            logged |= line.contains("serving");
            seen.push(line);
            if banner_done && logged {
                return true;
            }
        }
        false
    })
    .await;
    child.start_kill().expect("ghost up stopped");
    let output = seen.join("\n");
    assert_eq!(read.ok(), Some(true), "ghost up did not start: {output}");
    assert!(
        seen.iter()
            .any(|line| line.contains("INFO") && line.contains("serving")),
        "no log line on stdout: {output}"
    );
    assert!(
        !output.contains("\x1b["),
        "colour codes in piped logs: {output:?}"
    );
    let _ = child.wait().await;
}
