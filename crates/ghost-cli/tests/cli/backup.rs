//! `ghost backup` while patches flow, `ghost restore` into a fresh data dir, the system started
//! again on it: every patch that had ended is there with its events and summary. And a damaged
//! or hostile backup is refused before anything is written.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use ghost_cli::system::{LocalOptions, System, SystemBuilder};
use ghost_testkit::wait_for;
use serde_json::{Value, json};

use crate::helpers::{API_KEY, Env, Run};

/// A system with the local executor serving MAIN, state under `data_dir`.
/// The gateway's rate limit is lifted: the load below is one client submitting without pause.
async fn start(data_dir: &Path, workspace: Option<&Path>) -> System {
    SystemBuilder::new(&LocalOptions {
        data_dir: data_dir.to_owned(),
        workspaces: workspace
            .map(|dir| vec![("MAIN".to_owned(), dir.to_owned())])
            .unwrap_or_default(),
        targets: vec!["MAIN".to_owned()],
        gateway_listen: "127.0.0.1:0".parse().expect("addr"),
        api_key: API_KEY.to_owned(),
        slack: None,
    })
    .gateway(|gateway| {
        gateway.rate_limit = gateway::config::RateLimitConfig {
            per_minute: 1_000_000,
            burst: 100_000,
        };
    })
    .start()
    .await
    .expect("system starts")
}

fn write_patch(id: &str) -> Value {
    json!({
        "id": id,
        "target": "MAIN",
        "description": format!("backup test {id}"),
        "edits": [{"op": "write", "path": format!("{id}.txt"), "contents": format!("{id}\n")}],
    })
}

async fn submit(http: &reqwest::Client, gateway: &str, id: &str) -> u16 {
    http.post(format!("{gateway}/v1/patches"))
        .bearer_auth(API_KEY)
        .json(&write_patch(id))
        .send()
        .await
        .map(|response| response.status().as_u16())
        .unwrap_or(0)
}

async fn get(http: &reqwest::Client, url: String) -> (u16, Value) {
    let response = http
        .get(url)
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("gateway reachable");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn ended(detail: &Value) -> bool {
    !matches!(
        detail["status"].as_str(),
        None | Some("received" | "queued" | "leased" | "applying" | "validating")
    ) && !detail["summary"].is_null()
}

/// The parts of a patch a restore must keep: its detail and its events.
async fn snapshot(http: &reqwest::Client, gateway: &str, id: &str) -> (Value, Value) {
    let (code, detail) = get(http, format!("{gateway}/v1/patches/{id}")).await;
    assert_eq!(code, 200, "{id}: {detail}");
    let (code, events) = get(http, format!("{gateway}/v1/patches/{id}/events")).await;
    assert_eq!(code, 200, "{id} events: {events}");
    let kept = json!({
        "id": detail["id"],
        "target": detail["target"],
        "status": detail["status"],
        "attempt": detail["attempt"],
        "error": detail["error"],
        "report": detail["report"],
        "summary": detail["summary"],
    });
    (kept, events)
}

async fn wait_ended(http: &reqwest::Client, gateway: &str, id: &str) {
    wait_for(&format!("{id} to end"), async || {
        let (code, detail) = get(http, format!("{gateway}/v1/patches/{id}")).await;
        if code == 200 && ended(&detail) {
            Ok(())
        } else {
            Err((code, detail))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_taken_under_load_restores_every_ended_patch_with_its_events_and_summary() {
    let env = Env::empty();
    let workspace = env.scratch.path().join("workspace");
    std::fs::create_dir_all(&workspace).expect("workspace");
    let data_dir = env.scratch.path().join("state");
    let system = start(&data_dir, Some(&workspace)).await;
    let gateway = system.gateway_url().expect("gateway");
    let http = reqwest::Client::new();

    // A history that has ended: 20 patches, each with a summary.
    let mut done: Vec<String> = (0..20).map(|n| format!("before-{n}")).collect();
    for id in &done {
        assert_eq!(submit(&http, &gateway, id).await, 202, "{id}");
    }
    for id in &done {
        wait_ended(&http, &gateway, id).await;
    }

    // Load: patches submitted without pause while the backup runs (bounded: 400 at most).
    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicUsize::new(0));
    let load = tokio::spawn({
        let (stop, accepted, http, gateway) = (
            stop.clone(),
            accepted.clone(),
            http.clone(),
            gateway.clone(),
        );
        async move {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) && n < 400 {
                if submit(&http, &gateway, &format!("load-{n}")).await == 202 {
                    accepted.fetch_add(1, Ordering::SeqCst);
                }
                n += 1;
            }
            n
        }
    });
    wait_for(
        "the load to start (10 patches accepted)",
        async || match accepted.load(Ordering::SeqCst) {
            10.. => Ok(()),
            fewer => Err(fewer),
        },
    )
    .await;
    // Load patches that have ended by now count as history too.
    for n in 0..accepted.load(Ordering::SeqCst) {
        let id = format!("load-{n}");
        let (code, detail) = get(&http, format!("{gateway}/v1/patches/{id}")).await;
        if code == 200 && ended(&detail) {
            done.push(id);
        }
    }
    let mut before = Vec::new();
    for id in &done {
        before.push(snapshot(&http, &gateway, id).await);
    }

    let backup_dir = env.scratch.path().join("backups/one");
    let data_arg = data_dir.display().to_string();
    let out_arg = backup_dir.display().to_string();
    let accepted_at_start = accepted.load(Ordering::SeqCst);
    let run = env
        .ghost(&[
            "--json",
            "backup",
            "--data-dir",
            &data_arg,
            "--out",
            &out_arg,
        ])
        .await;
    let accepted_at_end = accepted.load(Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    let submitted = load.await.expect("load task");
    run.expect(0);
    let report = run.json();
    eprintln!(
        "backup of {} ended patches under load: {} patches accepted while it ran, {submitted} \
         submitted in all; report {report}",
        done.len(),
        accepted_at_end - accepted_at_start
    );
    for service in ["router", "summarizer", "alerter"] {
        assert!(
            report["services"][service]["files"].as_u64().unwrap_or(0) >= 1,
            "{service} missing: {report}"
        );
    }
    assert!(
        report["services"]["summarizer"]["files"]
            .as_u64()
            .unwrap_or(0)
            > 20,
        "the summary files are in the backup: {report}"
    );
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(backup_dir.join("manifest.json")).expect("manifest"),
    )
    .expect("manifest is JSON");
    for file in manifest["files"].as_array().expect("files") {
        assert_eq!(file["sha256"].as_str().map(str::len), Some(64), "{file}");
        assert!(
            file["size"].is_u64() && file["copied_at"].is_string(),
            "{file}"
        );
        if file["kind"] == "sqlite" {
            // The router counts its migrations in user_version; the others keep 0.
            assert!(file["schema_version"].is_i64(), "{file}");
        }
        if file["path"] == "router/router.db" {
            assert!(file["schema_version"].as_i64().unwrap_or(0) > 0, "{file}");
        }
    }
    system.shutdown().await.expect("system stops");

    // Restore into a fresh data dir and start a system on it (no executor: nothing runs).
    let fresh = env.scratch.path().join("restored");
    let fresh_arg = fresh.display().to_string();
    env.ghost(&["restore", "--from", &out_arg, "--data-dir", &fresh_arg])
        .await
        .expect(0);
    let again = env
        .ghost(&["restore", "--from", &out_arg, "--data-dir", &fresh_arg])
        .await;
    again.expect(10);
    assert!(again.stderr.contains("not empty"), "{again:?}");

    let restored = start(&fresh, None).await;
    let gateway = restored.gateway_url().expect("gateway");
    for (id, (detail, events)) in done.iter().zip(&before) {
        let (after_detail, after_events) = snapshot(&http, &gateway, id).await;
        assert_eq!(&after_detail, detail, "{id} after the restore");
        assert_eq!(&after_events, events, "{id}'s events after the restore");
        assert!(detail["summary"].as_str().is_some_and(|s| !s.is_empty()));
    }
    restored.shutdown().await.expect("system stops");
}

/// A small real backup to tamper with: one patch through a real system.
async fn real_backup(env: &Env) -> PathBuf {
    let workspace = env.scratch.path().join("workspace");
    std::fs::create_dir_all(&workspace).expect("workspace");
    let data_dir = env.scratch.path().join("state");
    let system = start(&data_dir, Some(&workspace)).await;
    let gateway = system.gateway_url().expect("gateway");
    let http = reqwest::Client::new();
    assert_eq!(submit(&http, &gateway, "only-1").await, 202);
    wait_ended(&http, &gateway, "only-1").await;
    let out = env.scratch.path().join("good-backup");
    env.ghost(&[
        "backup",
        "--data-dir",
        &data_dir.display().to_string(),
        "--out",
        &out.display().to_string(),
    ])
    .await
    .expect(0);
    system.shutdown().await.expect("system stops");
    out
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("dir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

fn edit_manifest(dir: &Path, change: impl FnOnce(&mut Value)) {
    let path = dir.join("manifest.json");
    let mut manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("manifest")).expect("json");
    change(&mut manifest);
    std::fs::write(&path, manifest.to_string()).expect("manifest written");
}

fn summary_file(manifest_dir: &Path) -> String {
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(manifest_dir.join("manifest.json")).expect("manifest"),
    )
    .expect("json");
    manifest["files"]
        .as_array()
        .expect("files")
        .iter()
        .filter_map(|f| f["path"].as_str())
        .find(|p| p.ends_with(".md"))
        .expect("a summary file")
        .to_owned()
}

async fn restore(env: &Env, from: &Path, into: &Path, extra: &[&str]) -> Run {
    let from = from.display().to_string();
    let into = into.display().to_string();
    let mut args = vec!["restore", "--from", &from, "--data-dir", &into];
    args.extend_from_slice(extra);
    env.ghost(&args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_or_hostile_backup_is_refused_before_anything_is_written() {
    let env = Env::empty();
    let good = real_backup(&env).await;
    let md = summary_file(&good);
    let outside = env.scratch.path().join("outside.txt");
    std::fs::write(&outside, "secret").expect("outside");

    type Tamper = Box<dyn Fn(&Path)>;
    let md_for_sum = md.clone();
    let md_for_size = md.clone();
    let md_for_escape = md.clone();
    let md_for_abs = md.clone();
    let outside_link = outside.clone();
    let cases: Vec<(&str, Tamper, &str)> = vec![
        (
            "a manifest path with ..",
            Box::new(move |dir: &Path| {
                edit_manifest(dir, |m| {
                    for f in m["files"].as_array_mut().expect("files") {
                        if f["path"] == md_for_escape.as_str() {
                            f["path"] = json!("summarizer/../../escape.md");
                        }
                    }
                });
            }),
            "not a plain relative path",
        ),
        (
            "an absolute manifest path",
            Box::new(move |dir: &Path| {
                edit_manifest(dir, |m| {
                    for f in m["files"].as_array_mut().expect("files") {
                        if f["path"] == md_for_abs.as_str() {
                            f["path"] = json!("/etc/passwd");
                        }
                    }
                });
            }),
            "not a plain relative path",
        ),
        (
            "a symlink in the backup",
            Box::new(move |dir: &Path| {
                std::os::unix::fs::symlink(&outside_link, dir.join("summarizer/link.md"))
                    .expect("symlink");
            }),
            "is a symlink",
        ),
        (
            "a file whose checksum does not match",
            Box::new(move |dir: &Path| {
                let path = dir.join(&md_for_sum);
                let mut bytes = std::fs::read(&path).expect("md");
                bytes[0] ^= 0x20;
                std::fs::write(&path, bytes).expect("md written");
            }),
            "sha256",
        ),
        (
            "a file larger than the manifest says",
            Box::new(move |dir: &Path| {
                let path = dir.join(&md_for_size);
                let mut bytes = std::fs::read(&path).expect("md");
                bytes.extend(std::iter::repeat_n(b'x', 1 << 20));
                std::fs::write(&path, bytes).expect("md written");
            }),
            "the manifest says",
        ),
        (
            "a manifest claiming a huge file",
            Box::new(|dir: &Path| {
                edit_manifest(dir, |m| m["files"][0]["size"] = json!(1u64 << 40));
            }),
            "more than the",
        ),
        (
            "a file the manifest does not list",
            Box::new(|dir: &Path| {
                std::fs::write(dir.join("router/extra.db"), "x").expect("extra");
            }),
            "not in the manifest",
        ),
        (
            "no manifest",
            Box::new(|dir: &Path| {
                std::fs::remove_file(dir.join("manifest.json")).expect("rm");
            }),
            "no manifest.json",
        ),
        (
            "a corrupt database with a matching checksum",
            Box::new(|dir: &Path| {
                let path = dir.join("router/router.db");
                let mut bytes = std::fs::read(&path).expect("db");
                let len = bytes.len();
                for byte in &mut bytes[4096..len.min(4096 * 3)] {
                    *byte = 0xA5;
                }
                std::fs::write(&path, &bytes).expect("db written");
                let sha = {
                    use sha2::Digest as _;
                    let digest = sha2::Sha256::digest(&bytes);
                    digest
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect::<String>()
                };
                edit_manifest(dir, |m| {
                    for f in m["files"].as_array_mut().expect("files") {
                        if f["path"] == "router/router.db" {
                            f["sha256"] = json!(sha);
                        }
                    }
                });
            }),
            "router.db",
        ),
    ];
    for (n, (what, tamper, expected)) in cases.into_iter().enumerate() {
        let copy = env.scratch.path().join(format!("tampered-{n}"));
        copy_tree(&good, &copy);
        tamper(&copy);
        let target = env.scratch.path().join(format!("target-{n}"));
        let run = restore(&env, &copy, &target, &[]).await;
        assert_eq!(run.code, 10, "{what}: {run:#?}");
        assert!(
            run.stderr.contains(expected),
            "{what}: expected {expected:?} in {run:#?}"
        );
        let left: Vec<_> = std::fs::read_dir(&target)
            .map(|entries| entries.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        let written: Vec<_> = left
            .iter()
            .flat_map(|dir| std::fs::read_dir(dir).into_iter().flatten().flatten())
            .map(|e| e.path())
            .collect();
        assert!(written.is_empty(), "{what}: files written: {written:?}");
    }
    assert!(!env.scratch.path().join("escape.md").exists());

    // A non-empty target: refused, then with --force its contents move aside, nothing deleted.
    let target = env.scratch.path().join("busy");
    std::fs::create_dir_all(target.join("router")).expect("dir");
    std::fs::write(target.join("router/router.db"), "older state").expect("old");
    let run = restore(&env, &good, &target, &[]).await;
    run.expect(10);
    assert!(run.stderr.contains("not empty"), "{run:?}");
    assert_eq!(
        std::fs::read_to_string(target.join("router/router.db")).expect("old"),
        "older state"
    );
    let run = restore(&env, &good, &target, &["--force", "--json"]).await;
    run.expect(0);
    let report = run.json();
    let aside = report["services"]
        .as_array()
        .expect("services")
        .iter()
        .find(|s| s["service"] == "router")
        .and_then(|s| s["moved_aside"].as_str())
        .map(PathBuf::from)
        .expect("router's old state moved aside");
    assert_eq!(
        std::fs::read_to_string(aside.join("router.db")).expect("kept"),
        "older state"
    );
    assert_ne!(
        std::fs::read(target.join("router/router.db")).expect("restored"),
        b"older state"
    );
}

#[tokio::test]
async fn backups_into_a_root_keep_the_newest_n() {
    let env = Env::empty();
    let good = real_backup(&env).await;
    // The state dir the good backup came from is stopped now; back it up three times.
    let data = env.scratch.path().join("state").display().to_string();
    let root = env.scratch.path().join("backups");
    std::fs::create_dir_all(&root).expect("root");
    std::fs::write(root.join("notes.txt"), "not a backup").expect("notes");
    let root_arg = root.display().to_string();
    let mut made = Vec::new();
    for _ in 0..3 {
        let run = env
            .ghost(&[
                "--json",
                "backup",
                "--data-dir",
                &data,
                "--into",
                &root_arg,
                "--keep",
                "2",
            ])
            .await;
        run.expect(0);
        made.push(PathBuf::from(run.json()["dir"].as_str().expect("dir")));
    }
    let mut names: Vec<String> = std::fs::read_dir(&root)
        .expect("root")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut expected: Vec<String> = made[1..]
        .iter()
        .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
        .collect();
    expected.push("notes.txt".to_owned());
    expected.sort();
    assert_eq!(
        names, expected,
        "the oldest backup is deleted, other files kept"
    );
    assert!(!made[0].exists());
    assert!(good.join("manifest.json").is_file());

    // --keep without --into, and no state named: usage errors.
    let unused = env.scratch.path().join("unused").display().to_string();
    let run = env
        .ghost(&[
            "backup",
            "--data-dir",
            &data,
            "--out",
            &unused,
            "--keep",
            "1",
        ])
        .await;
    run.expect(2);
    env.ghost(&["backup", "--out", &unused]).await.expect(2);
    assert!(!env.scratch.path().join("unused").exists());
}

#[tokio::test]
async fn one_service_at_a_time_as_in_kubernetes() {
    let env = Env::empty();
    real_backup(&env).await;
    let state = env.scratch.path().join("state");
    let arg = |path: PathBuf| path.display().to_string();

    // The router's volume alone, as the backup-router CronJob runs it.
    let out = env.scratch.path().join("router-only");
    let run = env
        .ghost(&[
            "--json",
            "backup",
            "--router-dir",
            &arg(state.join("router")),
            "--out",
            &arg(out.clone()),
        ])
        .await;
    run.expect(0);
    let services = run.json()["services"].clone();
    assert_eq!(
        services
            .as_object()
            .map(|s| s.keys().cloned().collect::<Vec<_>>()),
        Some(vec!["router".to_owned()]),
        "{services}"
    );

    // Into a fresh volume: only lost+found there, which is still empty and stays.
    let volume = env.scratch.path().join("volume");
    std::fs::create_dir_all(volume.join("lost+found")).expect("lost+found");
    env.ghost(&[
        "restore",
        "--from",
        &arg(out.clone()),
        "--router-dir",
        &arg(volume.clone()),
    ])
    .await
    .expect(0);
    assert!(volume.join("router.db").is_file());
    assert!(volume.join("lost+found").is_dir());

    // A service the backup does not hold is refused.
    let run = env
        .ghost(&[
            "restore",
            "--from",
            &arg(out),
            "--summarizer-dir",
            &arg(env.scratch.path().join("s")),
        ])
        .await;
    run.expect(10);
    assert!(run.stderr.contains("holds no summarizer state"), "{run:?}");

    // A backup inside the state it copies is refused before anything is written.
    let inside = state.join("summarizer/summaries/backup");
    let run = env
        .ghost(&[
            "backup",
            "--data-dir",
            &arg(state.clone()),
            "--out",
            &arg(inside.clone()),
        ])
        .await;
    run.expect(10);
    assert!(
        run.stderr.contains("inside the summarizer state"),
        "{run:?}"
    );
    assert!(!inside.exists());
}
