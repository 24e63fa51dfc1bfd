//! Issue 9 must-show 1: the dashboard in headless Chromium (Debian `chromium`, driven by the
//! Python `playwright` package without any browser download) against a whole system: login,
//! a submitted patch appearing and finishing on the live list, its detail page, cancelling a
//! queued patch from the UI; without a key the pages redirect and the JSON API answers 401.
//! Screenshots go to `$GHOST_ARTIFACTS` or `target/ui-artifacts/`.

use std::path::{Path, PathBuf};

use crate::system::{ADMIN_KEY, System};

const CHROMIUM: &str = "/usr/bin/chromium";

fn artifact_dir() -> PathBuf {
    std::env::var_os("GHOST_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| ghost_testkit::repo_root().join("target/ui-artifacts"))
}

#[tokio::test]
async fn a_browser_logs_in_watches_a_patch_finish_and_cancels_a_queued_one() {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: install the Debian package `chromium` (apt-get install -y chromium); \
         this test drives the real browser and must not pass without it"
    );
    let system = System::start(true, |_| {}).await;
    let script = ghost_testkit::repo_root().join("tests/python/dashboard_browser.py");
    let artifacts = artifact_dir();
    let output = tokio::process::Command::new(ghost_testkit::python())
        .arg(&script)
        .arg(system.url())
        .arg(ADMIN_KEY)
        .arg(&artifacts)
        .arg(CHROMIUM)
        .kill_on_drop(true)
        .output()
        .await
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    for line in stdout.lines().filter(|l| l.starts_with("screenshot ")) {
        eprintln!(
            "dashboard artifact: {}",
            line.trim_start_matches("screenshot ")
        );
    }
    assert!(
        output.status.success() && stdout.lines().any(|l| l == "ok"),
        "the browser run failed:\n{stdout}\n{stderr}"
    );
    let shots = stdout
        .lines()
        .filter(|l| l.starts_with("screenshot "))
        .count();
    assert_eq!(shots, 6, "{stdout}");
}
