//! What a no-op owner check costs a patch: the executor's whole attempt for a one-file patch
//! in a 10-file workspace, without owner checks and with one (`true`, so its snapshot, its
//! process and its sweep), alternating, `N` patches each (default 100). Prints p50 and p90.
//!
//! `cargo run -p executor --example owner_check_cost -- 100`

// An example run by hand: its figures are its output.
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use executor::apply::{self, Context, Lease};
use executor::beneath::RootId;
use executor::workspace::{Limits, Workspace};
use executor::{OwnerCheck, TargetPolicy, When};
use tokio_util::sync::CancellationToken;

fn context(base: &std::path::Path, name: &str, policy: TargetPolicy) -> std::io::Result<Context> {
    let root = base.join(name);
    std::fs::create_dir_all(&root)?;
    for i in 0..10 {
        std::fs::write(root.join(format!("f{i}.txt")), format!("file {i}\n"))?;
    }
    let state = base.join(format!("{name}-state"));
    std::fs::create_dir_all(&state)?;
    let root = std::fs::canonicalize(root)?;
    Ok(Context {
        root_id: RootId::of(&root)?,
        workspace: Workspace {
            target: "MAIN".to_owned(),
            root,
            state_dir: state,
            policy,
        },
        limits: Limits {
            max_file_bytes: 1024 * 1024,
            max_patch_bytes: 4 * 1024 * 1024,
        },
        default_timeout: Duration::from_secs(30),
        write_delay: Duration::ZERO,
    })
}

fn percentile(sorted: &[Duration], rank: usize) -> Duration {
    sorted[(sorted.len() * rank / 100).min(sorted.len() - 1)]
}

fn main() -> std::io::Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|arg| arg.parse().ok())
        .unwrap_or(100);
    let base = std::env::temp_dir().join(format!("ghost-owner-check-cost-{}", std::process::id()));
    let plain = context(&base, "plain", TargetPolicy::default())?;
    let checked = context(
        &base,
        "checked",
        TargetPolicy {
            checks: vec![OwnerCheck {
                name: "noop".to_owned(),
                run: "true".to_owned(),
                timeout: None,
                when: When::Always,
            }],
            ..TargetPolicy::default()
        },
    )?;
    let mut times = [Vec::new(), Vec::new()];
    for i in 0..n * 2 {
        let ctx = if i % 2 == 0 { &plain } else { &checked };
        let body = format!(
            r#"{{"id":"cost-{i}","target":"MAIN","edits":[{{"op":"write","path":"f{}.txt","contents":"v{i}\n"}}]}}"#,
            i % 10
        );
        let patch = ghost_core::parse_json(body.as_bytes()).map_err(std::io::Error::other)?;
        let started = Instant::now();
        let report = apply::apply(
            ctx,
            &patch,
            Lease::default(),
            false,
            &CancellationToken::new(),
        );
        times[i % 2].push(started.elapsed());
        assert_eq!(
            report.status,
            ghost_core::Status::Succeeded,
            "{}",
            report.error
        );
    }
    for (name, mut times) in ["without", "with a no-op owner check"]
        .into_iter()
        .zip(times)
    {
        times.sort();
        println!(
            "{name}: p50 {:.2} ms, p90 {:.2} ms ({} patches)",
            percentile(&times, 50).as_secs_f64() * 1000.0,
            percentile(&times, 90).as_secs_f64() * 1000.0,
            times.len()
        );
    }
    std::fs::remove_dir_all(&base)?;
    Ok(())
}
