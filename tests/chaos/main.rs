//! Chaos: the real router, executor and summarizer binaries, each kill -9'd at random moments
//! and restarted, while 1,000 patches are submitted. At the end every accepted patch has exactly
//! one terminal outcome and one summary, and the workspace shows each patch's effect once.
//!
//! Every patch appends its id to `log.txt` with a `replace` of the unique `END` marker: a patch
//! applied twice would leave its id twice, a patch half-applied or lost would leave it out.
//! The seed is printed; set `GHOST_CHAOS_SEED` to replay a run's kill schedule.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use ghost_e2e::{TERMINAL, binary, reserve_port};
use ghost_proto::router::v1::router_service_client::RouterServiceClient;
use ghost_proto::router::v1::{
    Edit, EventsRequest, GetRequest, Patch, PatchStatus, ReplaceText, SubmitRequest, edit,
};
use ghost_proto::summarizer::v1::GetRequest as SummaryRequest;
use ghost_proto::summarizer::v1::summarizer_service_client::SummarizerServiceClient;
use ghost_testkit::{POLL_INTERVAL, wait_until};
use tokio::process::{Child, Command};
use tonic::transport::{Channel, Endpoint};

const PATCHES: usize = 1_000;
const SUBMITTERS: usize = 4;
const KILLS: usize = 30;
const SETTLE: Duration = Duration::from_secs(240);

/// A small deterministic generator (xorshift64*), so a run can be replayed from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One service: its binary, config file and log; restartable.
struct Service {
    name: &'static str,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    kills: usize,
}

impl Service {
    fn new(dir: &Path, name: &'static str, toml: String) -> Self {
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(&config, toml).expect("write config");
        Self {
            name,
            config,
            log: dir.join(format!("{name}.log")),
            child: None,
            kills: 0,
        }
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = Command::new(binary(self.name))
            .env("GHOST_CONFIG", &self.config)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("service starts");
        self.child = Some(child);
    }

    async fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            // tokio's kill is SIGKILL on unix: no drain, no flush.
            let _ = child.kill().await;
            self.kills += 1;
        }
    }
}

fn replace_patch(n: usize) -> Patch {
    Patch {
        id: format!("chaos-{n:04}"),
        target: "MAIN".to_owned(),
        description: format!("append {n} to the log"),
        edits: vec![Edit {
            op: Some(edit::Op::Replace(ReplaceText {
                path: "log.txt".to_owned(),
                search: "END\n".to_owned(),
                replace: format!("chaos-{n:04}\nEND\n"),
            })),
        }],
        ..Patch::default()
    }
}

async fn submit_until_accepted(client: &mut RouterServiceClient<Channel>, patch: Patch) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match client
            .submit(SubmitRequest {
                patch: Some(patch.clone()),
                ..Default::default()
            })
            .await
        {
            Ok(_) => return,
            Err(status) => {
                assert!(
                    matches!(
                        status.code(),
                        tonic::Code::Unavailable
                            | tonic::Code::Unknown
                            | tonic::Code::Internal
                            | tonic::Code::Cancelled
                    ),
                    "submit of {} refused for a reason other than the router being down: {status}",
                    patch.id
                );
                assert!(
                    Instant::now() < deadline,
                    "{} not accepted within 120 s",
                    patch.id
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_patches_survive_random_kill_9_of_router_executor_and_summarizer() {
    let seed = std::env::var("GHOST_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64 | 1)
                .unwrap_or(0x9E37_79B9_7F4A_7C15)
        });
    eprintln!("chaos seed {seed} (GHOST_CHAOS_SEED={seed} replays the kill schedule)");
    let mut rng = Rng(seed);

    let scratch = tempfile::tempdir().expect("tempdir");
    let dir = scratch.path();
    let workspace = dir.join("workspace");
    std::fs::create_dir_all(&workspace).unwrap();
    std::fs::write(workspace.join("log.txt"), "END\n").unwrap();
    // Held for the whole test (see `reserve_port`): no other socket takes a port between a
    // kill -9 and the restart.
    let (router_reserved, summarizer_reserved) = (reserve_port(), reserve_port());
    let (router_port, summarizer_port) = (router_reserved.port, summarizer_reserved.port);
    let router_url = format!("http://127.0.0.1:{router_port}");
    let summarizer_url = format!("http://127.0.0.1:{summarizer_port}");

    let mut router = Service::new(
        dir,
        "router",
        format!(
            r#"data_dir = "{data}"
summarizer_url = "{summarizer_url}"
heartbeat_interval = "200ms"
lease_timeout = "3s"
sweep_interval = "200ms"
max_attempts = 50
[server]
grpc_listen = "127.0.0.1:{router_port}"
http_listen = "127.0.0.1:0"
drain_grace = "0s"
"#,
            data = dir.join("router").display()
        ),
    );
    let mut summarizer = Service::new(
        dir,
        "summarizer",
        format!(
            r#"data_dir = "{data}"
[server]
grpc_listen = "127.0.0.1:{summarizer_port}"
http_listen = "127.0.0.1:0"
drain_grace = "0s"
"#,
            data = dir.join("summarizer").display()
        ),
    );
    let mut executor = Service::new(
        dir,
        "executor",
        format!(
            r#"router_url = "{router_url}"
executor_id = "chaos"
state_dir = "{state}"
reconnect_backoff = "100ms"
[[workspaces]]
target = "MAIN"
root = "{workspace}"
[server]
grpc_listen = "127.0.0.1:0"
http_listen = "127.0.0.1:0"
drain_grace = "0s"
"#,
            state = dir.join("executor-state").display(),
            workspace = workspace.display()
        ),
    );
    summarizer.start();
    router.start();
    executor.start();

    let channel = Endpoint::from_shared(router_url.clone())
        .unwrap()
        .connect_lazy();
    let mut submitters = Vec::new();
    for s in 0..SUBMITTERS {
        let mut client = RouterServiceClient::new(channel.clone());
        submitters.push(tokio::spawn(async move {
            for n in (s..PATCHES).step_by(SUBMITTERS) {
                submit_until_accepted(&mut client, replace_patch(n)).await;
            }
        }));
    }

    // The kill schedule: bounded in count, spread over the submissions and the applying.
    for _ in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(100 + rng.below(500))).await;
        let victim = match rng.below(3) {
            0 => &mut router,
            1 => &mut executor,
            _ => &mut summarizer,
        };
        victim.kill9().await;
        tokio::time::sleep(Duration::from_millis(rng.below(300))).await;
        victim.start();
    }
    for submitter in submitters {
        submitter.await.expect("submitter finished");
    }
    eprintln!(
        "kills: router {}, executor {}, summarizer {}",
        router.kills, executor.kills, summarizer.kills
    );

    // Everything settles: every patch terminal in the router, and summarized.
    let mut router_client = RouterServiceClient::new(channel.clone());
    let mut summaries = SummarizerServiceClient::new(
        Endpoint::from_shared(summarizer_url)
            .unwrap()
            .connect_lazy(),
    );
    let started = Instant::now();
    let mut statuses: BTreeMap<String, i32> = BTreeMap::new();
    for n in 0..PATCHES {
        let id = format!("chaos-{n:04}");
        // One bound for all; each is looked at at least once.
        let left = SETTLE
            .saturating_sub(started.elapsed())
            .max(Duration::from_secs(5));
        let what = format!(
            "{id} to reach a terminal state with its summary (logs in {})",
            dir.display()
        );
        let status = wait_until(&what, left, POLL_INTERVAL, async || {
            let state = router_client
                .get(GetRequest { id: id.clone() })
                .await
                .ok()
                .and_then(|r| r.into_inner().state);
            let terminal = state.as_ref().is_some_and(|s| {
                PatchStatus::try_from(s.status).is_ok_and(|status| {
                    TERMINAL.contains(
                        &status
                            .as_str_name()
                            .trim_start_matches("PATCH_STATUS_")
                            .to_lowercase()
                            .as_str(),
                    )
                })
            });
            let summarized = terminal
                && summaries
                    .get(SummaryRequest {
                        patch_id: id.clone(),
                    })
                    .await
                    .ok()
                    .and_then(|r| r.into_inner().summary)
                    .is_some_and(|summary| {
                        Some(summary.status) == state.as_ref().map(|s| s.status)
                    });
            match state {
                Some(state) if summarized => Ok(state.status),
                other => Err(other),
            }
        })
        .await;
        statuses.insert(id.clone(), status);
    }

    // Exactly one terminal outcome per patch, and it is success (max_attempts is generous).
    let not_succeeded: Vec<_> = statuses
        .iter()
        .filter(|(_, status)| **status != PatchStatus::Succeeded as i32)
        .collect();
    assert!(not_succeeded.is_empty(), "not succeeded: {not_succeeded:?}");
    for id in statuses.keys() {
        let events = router_client
            .events(EventsRequest { id: id.clone() })
            .await
            .expect("events")
            .into_inner()
            .events;
        let terminal: Vec<_> = events
            .iter()
            .filter(|e| TERMINAL.contains(&e.status.as_str()))
            .collect();
        assert_eq!(terminal.len(), 1, "{id}: {events:?}");
    }

    // Each patch's effect exactly once.
    let log = std::fs::read_to_string(workspace.join("log.txt")).unwrap();
    let mut lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.pop(), Some("END"), "the marker stays last");
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for line in &lines {
        *counts.entry(line).or_default() += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, c)| **c != 1).collect();
    assert!(twice.is_empty(), "applied more than once: {twice:?}");
    assert_eq!(lines.len(), PATCHES, "every patch's line is in the log");
    assert!(
        router.kills + executor.kills + summarizer.kills == KILLS,
        "every kill hit a running process"
    );
}
