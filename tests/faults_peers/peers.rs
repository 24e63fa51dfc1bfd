//! Slow and silent peers: a router that accepts and never answers, a router stopped with
//! SIGSTOP, a connection to the summarizer that goes silent. Each is noticed within
//! [`BOUND`] (the measured time is printed; the default keep-alive aims at 10 s) and every
//! patch still completes exactly once. And a slow path (200 ms each way between the executor
//! and the router) that must not be mistaken for a dead one.

use std::path::Path;
use std::time::{Duration, Instant};

use ghost_proto::router::v1::router_service_client::RouterServiceClient;
use ghost_proto::summarizer::v1::GetRequest as SummaryRequest;
use ghost_proto::summarizer::v1::summarizer_service_client::SummarizerServiceClient;
use ghost_testkit::{POLL_INTERVAL, wait_until};
use tonic::transport::{Channel, Endpoint};

use crate::system::{
    BlackHole, Relay, Service, append_patch, assert_each_once, executor_toml, reserve_port,
    router_client, router_toml, submit, succeeded, summarizer_and_router, summarizer_toml,
    workspace,
};

/// The summarizer, the router and an executor that reaches the router through a [`Relay`]
/// (which counts its connections), all started; fields drop (and the services die) in order.
struct BehindARelay {
    client: RouterServiceClient<Channel>,
    _executor: Service,
    relay: Relay,
    router: Service,
    _summarizer: Service,
}

async fn behind_a_relay(dir: &Path, ws: &Path) -> BehindARelay {
    let (mut summarizer, mut router, router_port) = summarizer_and_router(dir);
    let relay = Relay::start(([127, 0, 0, 1], router_port).into()).await;
    let mut executor = Service::new(
        dir,
        "executor",
        &executor_toml(dir, &format!("http://{}", relay.addr), ws),
    );
    summarizer.start();
    router.start();
    executor.start();
    BehindARelay {
        client: router_client(&format!("http://127.0.0.1:{router_port}")),
        _executor: executor,
        relay,
        router,
        _summarizer: summarizer,
    }
}

/// A generous upper bound on noticing a silent peer (the default bound is 10 s).
const BOUND: Duration = Duration::from_secs(30);

/// Polls `count` every 20 ms until it exceeds `above`, at most [`BOUND`]; the time it took.
async fn until_more(count: impl Fn() -> usize, above: usize, what: &str) -> Duration {
    let started = Instant::now();
    let what = format!("{what} (a peer noticed: more than {above})");
    wait_until(
        &what,
        BOUND,
        Duration::from_millis(20),
        async || match count() {
            now if now > above => Ok(()),
            now => Err(now),
        },
    )
    .await;
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executor_notices_a_router_that_accepts_and_never_answers_and_dials_again() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let dir = scratch.path();
    let hole = BlackHole::start().await;
    let ws = workspace(dir);
    let mut executor = Service::new(
        dir,
        "executor",
        &executor_toml(dir, &format!("http://{}", hole.addr), &ws),
    );
    executor.start();
    until_more(|| hole.count(), 0, "the executor's first dial").await;
    let detected = until_more(
        || hole.count(),
        1,
        "the executor giving up on a router that never answers",
    )
    .await;
    eprintln!("black-hole router: the executor gave up and dialled again after {detected:?}");
    assert!(detected <= BOUND, "{detected:?}");
    drop(executor);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_under_sigstop_is_noticed_by_its_executor_and_every_patch_completes_once() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let dir = scratch.path();
    let ws = workspace(dir);
    let mut system = behind_a_relay(dir, &ws).await;
    let mut ids = Vec::new();
    for n in 0..3 {
        let id = format!("before-{n}");
        submit(&mut system.client, append_patch(&id, &[])).await;
        succeeded(&mut system.client, &id, Duration::from_secs(60)).await;
        ids.push(id);
    }

    let before = system.relay.count();
    system.router.stop();
    let detected = until_more(
        || system.relay.count(),
        before,
        "the executor noticing the stopped router and dialling again",
    )
    .await;
    eprintln!("SIGSTOP'd router: its executor noticed and dialled again after {detected:?}");
    system.router.resume();

    for n in 0..3 {
        let id = format!("after-{n}");
        submit(&mut system.client, append_patch(&id, &[])).await;
        ids.push(id);
    }
    for id in &ids {
        succeeded(&mut system.client, id, Duration::from_secs(60)).await;
    }
    assert_each_once(&ws, &ids);
    assert!(detected <= BOUND, "{detected:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_to_the_summarizer_is_replaced_and_every_summary_arrives() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let dir = scratch.path();
    let ws = workspace(dir);
    // Held until the services bind them: a port found free and bound later was once taken
    // meanwhile (by the relay, which binds port 0).
    let (router_reserved, summarizer_reserved) = (reserve_port(), reserve_port());
    let (router_port, summarizer_port) = (router_reserved.port, summarizer_reserved.port);
    let router_url = format!("http://127.0.0.1:{router_port}");
    // The router reaches the summarizer through a relay whose open connections can go silent.
    let relay = Relay::start(([127, 0, 0, 1], summarizer_port).into()).await;
    let mut summarizer = Service::new(dir, "summarizer", &summarizer_toml(dir, summarizer_port))
        .holding(summarizer_reserved);
    let mut router = Service::new(
        dir,
        "router",
        &router_toml(dir, router_port, &format!("http://{}", relay.addr)),
    )
    .holding(router_reserved);
    let mut executor = Service::new(dir, "executor", &executor_toml(dir, &router_url, &ws));
    summarizer.start();
    router.start();
    executor.start();
    let mut client = router_client(&router_url);
    let summaries = SummarizerServiceClient::new(
        Endpoint::from_shared(format!("http://127.0.0.1:{summarizer_port}"))
            .expect("url")
            .timeout(Duration::from_secs(5))
            .connect_lazy(),
    );
    // Waits (at most `bound`) for the summary of `id`.
    let summarized = |id: &str, bound: Duration| {
        let mut summaries = summaries.clone();
        let (id, what) = (id.to_owned(), format!("a summary of {id}"));
        async move {
            wait_until(&what, bound, POLL_INTERVAL, async || {
                let request = SummaryRequest {
                    patch_id: id.clone(),
                };
                let answer = summaries
                    .get(request)
                    .await
                    .map_err(|status| status.code())?;
                answer
                    .into_inner()
                    .summary
                    .map(drop)
                    .ok_or(tonic::Code::NotFound)
            })
            .await;
        }
    };

    let mut ids = vec!["warm".to_owned()];
    submit(&mut client, append_patch("warm", &[])).await;
    succeeded(&mut client, "warm", Duration::from_secs(60)).await;
    summarized("warm", Duration::from_secs(60)).await;

    let before = relay.count();
    relay.freeze();
    let frozen_at = Instant::now();
    for n in 0..3 {
        let id = format!("silent-{n}");
        submit(&mut client, append_patch(&id, &[])).await;
        ids.push(id);
    }
    for id in &ids {
        succeeded(&mut client, id, Duration::from_secs(60)).await;
    }
    until_more(
        || relay.count(),
        before,
        "the router replacing its silent connection to the summarizer",
    )
    .await;
    eprintln!(
        "silent summarizer connection: the router dialled anew {:?} after it went silent",
        frozen_at.elapsed()
    );
    for id in &ids {
        // None 90 s after the connection went silent: the outbox is wedged.
        summarized(id, Duration::from_secs(90)).await;
    }
    eprintln!(
        "silent summarizer connection: every summary delivered {:?} after it went silent",
        frozen_at.elapsed()
    );
    assert_each_once(&ws, &ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_path_between_executor_and_router_keeps_its_session_and_every_patch_completes_once()
{
    const DELAY: Duration = Duration::from_millis(200);
    let scratch = tempfile::tempdir().expect("tempdir");
    let dir = scratch.path();
    let ws = workspace(dir);
    let mut system = behind_a_relay(dir, &ws).await;
    let mut ids = vec!["warm".to_owned()];
    submit(&mut system.client, append_patch("warm", &[])).await;
    succeeded(&mut system.client, "warm", Duration::from_secs(60)).await;

    // 200 ms added to every chunk, either way, for longer than the keep-alive's PING
    // timeout (5 s): a slow path is not a dead one, so the session stays.
    let sessions = system.relay.count();
    system.relay.delay(DELAY);
    let started = Instant::now();
    for n in 0..8 {
        let id = format!("slow-{n}");
        submit(&mut system.client, append_patch(&id, &[])).await;
        ids.push(id);
    }
    for id in &ids {
        succeeded(&mut system.client, id, Duration::from_secs(90)).await;
    }
    let elapsed = started.elapsed();
    system.relay.delay(Duration::ZERO);
    eprintln!(
        "slow path ({DELAY:?} each way) between executor and router: 8 patches ended in {elapsed:?}, \
         {} new session(s)",
        system.relay.count() - sessions
    );
    assert_each_once(&ws, &ids);
    let log = std::fs::read_to_string(ws.join("log.txt")).expect("log.txt");
    let applied: Vec<&str> = log.lines().filter(|line| *line != "END").collect();
    assert_eq!(applied, ids, "FIFO: applied in submission order");
    assert_eq!(
        system.relay.count(),
        sessions,
        "the executor dropped its session over a slow (not dead) path"
    );
    drop(system);
}
