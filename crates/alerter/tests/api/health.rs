//! The health monitor raises `service_down/<svc>` when a real service stops answering
//! `grpc.health.v1` (after N consecutive failures) and resolves it when the service is back.

use std::sync::Arc;
use std::time::Duration;

use ghost_runtime::clock::SystemClock;
use ghost_testkit::{FakeSlack, wait_for};

use crate::commands::spawn_summarizer;
use crate::helpers::{BYSTANDER, WAIT, config, slash, spawn_with};

#[tokio::test]
async fn service_down_is_raised_when_a_service_stops_and_resolved_when_it_is_back() {
    let scratch = tempfile::tempdir().unwrap();
    let summarizer = spawn_summarizer(scratch.path(), "127.0.0.1:0".parse().unwrap()).await;
    let addr = summarizer.grpc;
    let slack = FakeSlack::start().await;
    let mut cfg = config(Some(slack.base_url()));
    cfg.health.services = [("summarizer".to_owned(), format!("http://{addr}"))].into();
    cfg.health.interval = Duration::from_millis(50);
    cfg.health.check_timeout = Duration::from_millis(500);
    cfg.health.failures_before_alert = 2;
    cfg.alerts.group_wait = Duration::ZERO;
    cfg.alerts.tick = Duration::from_millis(20);
    let app = spawn_with(cfg, Arc::new(SystemClock)).await;

    // Up first, and nothing raised.
    wait_for("the monitor to see the summarizer up", async || {
        let health = slash(&app, "/ghost", "health", BYSTANDER).await;
        if health.contains("`service/summarizer` up") {
            Ok(())
        } else {
            Err(health)
        }
    })
    .await;
    assert!(app.lifecycle.active().await.is_empty());

    summarizer.stop().await;
    let posts = slack.wait_for_posts(1, WAIT).await;
    assert_eq!(posts.len(), 1, "service_down never raised");
    assert!(
        posts[0].text().contains("service_down/summarizer"),
        "{}",
        posts[0].text()
    );
    let active = app.lifecycle.active().await;
    assert_eq!(active.len(), 1);
    assert_eq!(active[0].key, "service_down/summarizer");
    assert_eq!(active[0].labels["service"], "summarizer");

    let _summarizer = spawn_summarizer(scratch.path(), addr).await;
    let posts = slack.wait_for_posts(2, WAIT).await;
    assert_eq!(posts.len(), 2, "service_down never resolved");
    assert!(
        posts[1]
            .text()
            .starts_with("✅ resolved: `service_down/summarizer`"),
        "{}",
        posts[1].text()
    );
    assert_eq!(posts[1].body["thread_ts"], slack.messages()[0].ts.as_str());
    assert!(app.lifecycle.active().await.is_empty());
}

#[tokio::test]
async fn health_checks_do_not_carry_the_service_credential() {
    use std::sync::Mutex;
    // A health server that records the authorization of every call.
    let seen: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let record = {
        let seen = Arc::clone(&seen);
        move |request: tonic::Request<()>| {
            let authorization = request
                .metadata()
                .get("authorization")
                .map(|value| value.to_str().unwrap_or("?").to_owned());
            seen.lock().unwrap().push(authorization);
            Ok(request)
        }
    };
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .layer(tonic::service::InterceptorLayer::new(record))
            .add_service(health)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let mut cfg = config(None);
    cfg.server.internal_token = ghost_runtime::config::Secret::new("s3cret-service-credential");
    cfg.health.services = [("summarizer".to_owned(), format!("http://{addr}"))].into();
    cfg.health.interval = Duration::from_millis(50);
    cfg.health.check_timeout = Duration::from_millis(500);
    let app = spawn_with(cfg, Arc::new(SystemClock)).await;
    let seen = wait_for("two health checks of the summarizer", async || {
        let seen = seen.lock().unwrap().clone();
        if seen.len() >= 2 { Ok(seen) } else { Err(seen) }
    })
    .await;
    assert!(seen.iter().all(Option::is_none), "{seen:?}");
    drop(app);
    server.abort();
}
