//! [`WebhookReceiver`]: `tests/python/webhook_receiver.py`, a Standard Webhooks receiver that
//! verifies every message with the real `standardwebhooks` Python package and writes what it
//! got, one JSON line per request, for the test to read.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncBufReadExt as _;

/// A running receiver on a loopback port; killed when dropped.
pub struct WebhookReceiver {
    _child: tokio::process::Child,
    out: PathBuf,
}

impl WebhookReceiver {
    /// Listens on `127.0.0.1:port` and verifies with `secret`; answers 503 until the unix time
    /// `fail_until` (an outage; 0: never), then `status` (e.g. 204, or 410); records to `out`.
    pub async fn start(port: u16, secret: &str, out: &Path, fail_until: f64, status: u16) -> Self {
        let script = crate::repo_root().join("tests/python/webhook_receiver.py");
        let mut child = tokio::process::Command::new(crate::python())
            .arg(script)
            .arg(port.to_string())
            .arg(secret)
            .arg(out)
            .arg(fail_until.to_string())
            .arg(status.to_string())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python runs");
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(40), lines.next_line())
            .await
            .expect("the receiver starts within 40 s")
            .expect("its stdout is readable");
        assert_eq!(
            ready.as_deref(),
            Some("ready"),
            "the receiver did not start"
        );
        Self {
            _child: child,
            out: out.to_owned(),
        }
    }

    /// Every request so far, in arrival order: `{id, refused, at, verified, type, patch,
    /// attempt, payload, …}` (see the script).
    pub fn records(&self) -> Vec<Value> {
        let Ok(text) = std::fs::read_to_string(&self.out) else {
            return Vec::new();
        };
        text.lines()
            .map(|line| serde_json::from_str(line).expect("the receiver writes JSON lines"))
            .collect()
    }

    /// The requests it accepted (not refused during an outage).
    pub fn accepted(&self) -> Vec<Value> {
        self.records()
            .into_iter()
            .filter(|r| r["refused"] == false)
            .collect()
    }

    /// Waits (bounded by `within`) until `n` requests were accepted; returns them.
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let accepted = self.accepted();
            if accepted.len() >= n || tokio::time::Instant::now() > deadline {
                return accepted;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
