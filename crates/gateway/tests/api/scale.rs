//! Issue 9 must-show 3: the dashboard stays correct with 10,000 patches in the router's store.
//! The patches go in through the router's gRPC Submit on loopback (no executor, so all stay
//! queued); the dashboard is then paged to its last page through the router's page tokens.
//! The 10,000-patch test also prints render times (not asserted).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use ghost_proto::router::v1::router_service_client::RouterServiceClient;
use ghost_proto::router::v1::{Patch as WirePatch, SubmitRequest};
use serde_json::json;

use crate::dashboard::Client;
use crate::helpers::{KEY, TestGateway};

const PATCHES: usize = 10_000;
const BATCH: usize = 100;

fn id_of(index: usize) -> String {
    format!("bulk-{index:05}")
}

/// Submits `PATCHES` patches for CYOPS, `BATCH` at a time concurrently, batch after batch (so
/// every patch of a later batch is newer than every patch of an earlier one).
async fn fill(gateway: &TestGateway) -> Duration {
    let client = RouterServiceClient::connect(format!("http://{}", gateway.router().grpc))
        .await
        .expect("router reachable");
    let started = Instant::now();
    for batch in 0..PATCHES / BATCH {
        let mut calls = tokio::task::JoinSet::new();
        for index in batch * BATCH..(batch + 1) * BATCH {
            let mut client = client.clone();
            let patch = ghost_core::patch_from_value(json!({
                "id": id_of(index),
                "target": "CYOPS",
                "description": format!("bulk patch number {index}"),
                "edits": [{"op": "write", "path": "a.txt", "contents": "x"}],
            }))
            .expect("valid patch");
            calls.spawn(async move {
                client
                    .submit(SubmitRequest {
                        patch: Some(WirePatch::from(&patch)),
                        ..Default::default()
                    })
                    .await
                    .expect("stored");
            });
        }
        while let Some(done) = calls.join_next().await {
            done.expect("submit task");
        }
    }
    started.elapsed()
}

fn rows(body: &str) -> Vec<String> {
    body.split("<tr class=\"patch\" data-id=\"")
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap_or("").to_owned())
        .collect()
}

fn next_link(body: &str) -> Option<String> {
    let start = body.find("<a class=\"next\" rel=\"next\" href=\"")? + 33;
    let end = start + body[start..].find('"')?;
    Some(body[start..end].replace("&amp;", "&"))
}

fn batch_of(id: &str) -> usize {
    id.trim_start_matches("bulk-")
        .parse::<usize>()
        .expect("bulk id")
        / BATCH
}

#[tokio::test]
async fn ten_thousand_patches_page_through_to_the_last_page_in_order() {
    let gateway = TestGateway::start(|config, _| {
        config.rate_limit.per_minute = 1_000_000;
        config.rate_limit.burst = 100_000;
    })
    .await;
    let took = fill(&gateway).await;
    eprintln!("submitted {PATCHES} patches over gRPC in {took:?}");

    let mut client = Client::new(&gateway.url());
    assert_eq!(client.login(KEY).await.status, 303);
    let overview = client.get("/ui").await;
    assert!(
        overview.body.contains("<td class=\"num\">10000</td>"),
        "the overview counts every queued patch"
    );

    let mut path = "/ui/patches?target=CYOPS&page_size=500".to_owned();
    let mut seen = Vec::with_capacity(PATCHES);
    let mut pages = 0;
    loop {
        let page = client.get(&path).await;
        assert_eq!(page.status, 200, "{path}");
        pages += 1;
        let ids = rows(&page.body);
        let first = seen.len() + 1;
        if !ids.is_empty() {
            let range = format!("#{first}–#{}", first + ids.len() - 1);
            assert!(page.body.contains(&range), "page {pages} shows {range}");
        }
        seen.extend(ids);
        match next_link(&page.body) {
            Some(next) => path = next,
            None => {
                assert!(page.body.contains("Last page"), "the last page says so");
                break;
            }
        }
        assert!(pages <= PATCHES / 500 + 1, "paging does not end");
    }
    assert_eq!(
        pages,
        PATCHES / 500,
        "full pages and no empty page after them"
    );
    assert_eq!(seen.len(), PATCHES);
    let distinct: HashSet<&String> = seen.iter().collect();
    assert_eq!(distinct.len(), PATCHES, "no patch shown twice");
    assert_eq!(batch_of(&seen[0]), PATCHES / BATCH - 1, "newest first");
    assert_eq!(batch_of(seen.last().unwrap()), 0, "oldest last");
    for pair in seen.windows(2) {
        assert!(
            batch_of(&pair[0]) >= batch_of(&pair[1]),
            "{} listed before the older {}",
            pair[1],
            pair[0]
        );
    }

    // A text search reads a bounded number of router pages per request and offers to go on.
    let mut path = "/ui/patches?target=CYOPS&q=bulk-00042".to_owned();
    let mut requests = 0;
    let found = loop {
        requests += 1;
        let page = client.get(&path).await;
        assert_eq!(page.status, 200);
        let ids = rows(&page.body);
        if !ids.is_empty() {
            break ids;
        }
        assert!(
            page.body.contains("Search further"),
            "a spent budget is said"
        );
        path = next_link(&page.body).expect("a link to search further");
        assert!(requests < 20, "search never ends");
    };
    assert_eq!(found, vec![id_of(42)]);
    assert!(requests > 1, "one request never reads all 10,000");

    report_render_times(&mut client).await;
}

fn percentile(sorted: &[Duration], rank: usize) -> Duration {
    let index = (rank * sorted.len()).div_ceil(100).clamp(1, sorted.len()) - 1;
    sorted[index]
}

/// Prints render times of the list's first, middle and last pages and of the overview
/// (a measured figure for the manual's Performance page; nothing is asserted about it). Every render must succeed.
async fn report_render_times(client: &mut Client) {
    for (label, path) in [
        ("first page (50)", "/ui/patches".to_owned()),
        (
            "page 100 (50)",
            "/ui/patches?page_size=50&page_token=4950&page=100".to_owned(),
        ),
        (
            "last page (50)",
            "/ui/patches?page_size=50&page_token=9950&page=200".to_owned(),
        ),
        ("overview", "/ui".to_owned()),
    ] {
        let mut times = Vec::new();
        for _ in 0..20 {
            let started = Instant::now();
            let page = client.get(&path).await;
            times.push(started.elapsed());
            assert_eq!(page.status, 200, "{label}");
        }
        times.sort();
        eprintln!(
            "render {label}: p50 {:?} p99 {:?} over {} renders",
            percentile(&times, 50),
            percentile(&times, 99),
            times.len()
        );
    }
}
