//! Must-show 4: 413, 429 with Retry-After, router down → 503 with Retry-After and nothing lost.

use crate::helpers::{KEY, TestGateway, write_patch};

#[tokio::test]
async fn oversize_bodies_are_413() {
    let gateway = TestGateway::start(|config, _| config.max_body_bytes = 4096).await;
    let mut patch = write_patch("big");
    patch["edits"][0]["contents"] = "x".repeat(10_000).into();
    let (code, problem) = gateway.post("/v1/patches", KEY, &patch).await;
    assert_eq!(code, 413, "{problem}");
    assert!(gateway.stored_ids().await.is_empty());
}

#[tokio::test]
async fn a_spent_rate_limit_is_429_with_retry_after() {
    let gateway = TestGateway::start(|config, _| {
        config.rate_limit.per_minute = 1;
        config.rate_limit.burst = 3;
    })
    .await;
    for id in ["r-1", "r-2", "r-3"] {
        assert_eq!(
            gateway.post("/v1/patches", KEY, &write_patch(id)).await.0,
            202
        );
    }
    let response = gateway
        .http
        .post(format!("{}/v1/patches", gateway.url()))
        .bearer_auth(KEY)
        .json(&write_patch("r-4"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 429);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
}

#[tokio::test]
async fn router_down_is_503_with_retry_after_and_nothing_accepted_is_lost() {
    let mut gateway = TestGateway::start(|_, _| {}).await;
    assert_eq!(
        gateway
            .post("/v1/patches", KEY, &write_patch("down-1"))
            .await
            .0,
        202
    );
    gateway.stop_router().await;
    let response = gateway
        .http
        .post(format!("{}/v1/patches", gateway.url()))
        .bearer_auth(KEY)
        .json(&write_patch("down-2"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 503);
    assert!(response.headers().contains_key("retry-after"));
    // The router comes back on the same address with the same database.
    gateway.start_router_again().await;
    let mut ok = false;
    for _ in 0..100 {
        let (code, _) = gateway
            .post("/v1/patches", KEY, &write_patch("down-2"))
            .await;
        if code == 202 {
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(ok, "the retried submit was never accepted");
    let mut stored = gateway.stored_ids().await;
    stored.sort();
    assert_eq!(stored, ["down-1", "down-2"]);
}
