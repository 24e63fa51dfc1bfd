//! Issue 17 (hostile input, round 2), the gateway's part: slow and idle connections, login and
//! key-guessing limits kept per client address, webhook retries, messages charged per patch,
//! and error bodies without server paths. Other clients are other loopback addresses
//! (127.0.0.2, ...): Linux routes all of 127/8 to `lo`, so a socket bound there before
//! connecting is another client address to the gateway.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use gateway::auth::Scope;
use gateway::config::WebhookConfig;
use ghost_runtime::config::Secret;

use crate::helpers::{KEY, TestGateway, WEBHOOK_SECRET, read, write_patch};

fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// A TCP connection to `to` from the loopback address `source`.
async fn connect_from(source: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(to).await
}

/// An HTTP client whose connections come from `source`; redirects are not followed.
fn client_from(source: IpAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(source)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// Reads until the server closes the connection (EOF or reset) and returns what it sent; None
/// when the connection is still open after `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<String> {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(String::from_utf8_lossy(&received).into_owned()),
            Ok(Ok(read)) => received.extend_from_slice(&buffer[..read]),
        }
    }
}

/// Headers of a dashboard login whose 100-byte body never arrives (one byte is sent).
/// Sends `GET /healthz` with `Connection: close` on `stream` and checks it is answered 200 and
/// then closed by the server.
async fn assert_served_then_closed(stream: &mut TcpStream, target: SocketAddr) {
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("writes");
    let answer = closed_within(stream, Duration::from_secs(10))
        .await
        .expect("answered and closed");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

fn slow_login(host: SocketAddr) -> String {
    format!(
        "POST /ui/login HTTP/1.1\r\nHost: {host}\r\nOrigin: http://{host}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\nk"
    )
}

#[tokio::test]
async fn a_slow_body_flood_from_one_address_leaves_other_clients_served() {
    let gateway = TestGateway::start(|_, _| {}).await;
    let target = gateway.gateway().http;
    let mut flood = Vec::new();
    for _ in 0..300 {
        // Connections over the per-address cap may be refused or closed at once: that is the
        // point, so errors are not failures here.
        if let Ok(mut stream) = connect_from(loopback(1), target).await
            && stream
                .write_all(slow_login(target).as_bytes())
                .await
                .is_ok()
        {
            flood.push(stream);
        }
    }
    // The flood is in place once the flooding address itself is refused.
    let flooder = client_from(loopback(1));
    let mut in_place = false;
    for _ in 0..200 {
        let answer = flooder
            .get(format!("http://{target}/v1/patches"))
            .bearer_auth(KEY)
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        if !matches!(&answer, Ok(response) if response.status().is_success()) {
            in_place = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(in_place, "the flood never took effect");
    // Another address, with a valid key, is served throughout.
    let other = client_from(loopback(2));
    let mut latencies = Vec::new();
    for _ in 0..20 {
        let started = Instant::now();
        let response = other
            .get(format!("http://{target}/v1/patches"))
            .bearer_auth(KEY)
            .send()
            .await
            .expect("gateway reachable");
        latencies.push(started.elapsed());
        let (code, body) = read(response).await;
        assert_eq!(code, 200, "the authenticated client was refused: {body}");
    }
    latencies.sort();
    eprintln!(
        "during a {}-connection slow-body flood: authenticated calls p50 {:?}, max {:?}",
        flood.len(),
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );
}

#[tokio::test]
async fn idle_and_half_sent_connections_are_closed_by_the_server() {
    let gateway = TestGateway::start(|config, _| {
        config.server.header_read_timeout = Duration::from_secs(1);
        config.server.keep_alive_timeout = Duration::from_secs(2);
        config.body_read_timeout = Duration::from_secs(1);
    })
    .await;
    let target = gateway.gateway().http;
    let source = loopback(4);
    let limit = Duration::from_secs(15);

    let mut idle = connect_from(source, target).await.expect("connects");
    let mut half_headers = connect_from(source, target).await.expect("connects");
    half_headers
        .write_all(format!("GET /v1/patches HTTP/1.1\r\nHost: {target}\r\n").as_bytes())
        .await
        .expect("writes");
    let mut half_body = connect_from(source, target).await.expect("connects");
    half_body
        .write_all(slow_login(target).as_bytes())
        .await
        .expect("writes");
    let mut kept_alive = connect_from(source, target).await.expect("connects");
    kept_alive
        .write_all(format!("GET /healthz HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .expect("writes");

    assert!(
        closed_within(&mut idle, limit).await.is_some(),
        "an idle connection stayed open"
    );
    assert!(
        closed_within(&mut half_headers, limit).await.is_some(),
        "a connection with half-sent headers stayed open"
    );
    let answer = closed_within(&mut half_body, limit)
        .await
        .expect("a connection with a half-sent body stayed open");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let answer = closed_within(&mut kept_alive, limit)
        .await
        .expect("an idle keep-alive connection stayed open");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn connections_over_the_per_address_cap_are_closed_at_once() {
    let gateway = TestGateway::start(|config, _| {
        config.server.max_connections_per_address = 4;
    })
    .await;
    let target = gateway.gateway().http;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(connect_from(loopback(6), target).await.expect("connects"));
    }
    // Accepted by the kernel, then closed by the gateway without an answer.
    let mut extra = connect_from(loopback(6), target).await.expect("connects");
    let _ = extra
        .write_all(format!("GET /healthz HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await;
    let answer = closed_within(&mut extra, Duration::from_secs(10))
        .await
        .expect("the fifth connection stayed open");
    assert!(answer.is_empty(), "{answer}");
    // Another address is not affected, and a held connection is served.
    let other = client_from(loopback(7));
    let response = other
        .get(format!("http://{target}/healthz"))
        .send()
        .await
        .expect("gateway reachable");
    assert_eq!(response.status().as_u16(), 200);
    assert_served_then_closed(&mut held[0], target).await;
}

#[tokio::test]
async fn a_kept_alive_connection_may_idle_longer_than_a_header_may_take() {
    let gateway = TestGateway::start(|config, _| {
        config.server.header_read_timeout = Duration::from_secs(1);
        config.server.keep_alive_timeout = Duration::from_secs(60);
    })
    .await;
    let target = gateway.gateway().http;
    let mut stream = connect_from(loopback(10), target).await.expect("connects");
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {target}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("writes");
    let mut buffer = [0u8; 4096];
    let read = stream.read(&mut buffer).await.expect("answered");
    assert!(buffer[..read].starts_with(b"HTTP/1.1 200"));
    // Three header timeouts of idling between requests: a proxy's pooled connection survives.
    assert!(
        closed_within(&mut stream, Duration::from_secs(3))
            .await
            .is_none(),
        "an idle keep-alive connection was closed by the header timeout"
    );
    assert_served_then_closed(&mut stream, target).await;
    // A later request's head still has only the header timeout once it starts.
    let mut slow = connect_from(loopback(10), target).await.expect("connects");
    slow.write_all(request.as_bytes()).await.expect("writes");
    let read = slow.read(&mut buffer).await.expect("answered");
    assert!(buffer[..read].starts_with(b"HTTP/1.1 200"));
    slow.write_all(b"GET /healthz HTTP/1.1\r\n")
        .await
        .expect("writes");
    assert!(
        closed_within(&mut slow, Duration::from_secs(15))
            .await
            .is_some(),
        "a half-sent second head was waited on like an idle connection"
    );
}

#[tokio::test]
async fn connections_over_the_global_cap_are_closed_at_once() {
    let gateway = TestGateway::start(|config, _| {
        config.server.max_connections = 3;
    })
    .await;
    let target = gateway.gateway().http;
    let mut held = Vec::new();
    for last in 11..14 {
        held.push(
            connect_from(loopback(last), target)
                .await
                .expect("connects"),
        );
    }
    let mut extra = connect_from(loopback(14), target).await.expect("connects");
    let _ = extra
        .write_all(format!("GET /healthz HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await;
    let answer = closed_within(&mut extra, Duration::from_secs(10))
        .await
        .expect("a connection over the global cap stayed open");
    assert!(answer.is_empty(), "{answer}");
    // A held one closed gives its place back.
    drop(held.pop());
    let client = client_from(loopback(15));
    let mut served = false;
    for _ in 0..100 {
        if let Ok(response) = client
            .get(format!("http://{target}/healthz"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
        {
            served = response.status().as_u16() == 200;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served, "a freed place was never given back");
}

#[tokio::test]
async fn a_client_that_never_reads_its_answers_is_closed() {
    let gateway = TestGateway::start(|config, _| {
        config.server.idle_timeout = Duration::from_secs(1);
    })
    .await;
    let target = gateway.gateway().http;
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("buffer size");
    socket
        .bind(SocketAddr::new(loopback(16), 0))
        .expect("binds");
    let mut stream = socket.connect(target).await.expect("connects");
    // Far more answer than the socket buffers hold, never read.
    let request = format!("GET /openapi.json HTTP/1.1\r\nHost: {target}\r\n\r\n");
    stream
        .write_all(request.repeat(400).as_bytes())
        .await
        .expect("writes");
    // Junk queued behind the requests: the server never reads it, so closing the connection
    // resets it, and the next write here fails.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut closed = false;
    while Instant::now() < deadline {
        if stream.write_all(&[b'x'; 512]).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        closed,
        "a connection whose answers are never read stayed open"
    );
}

#[tokio::test]
async fn an_oversized_request_head_is_refused() {
    let gateway = TestGateway::start(|_, _| {}).await;
    let target = gateway.gateway().http;
    let mut stream = connect_from(loopback(17), target).await.expect("connects");
    let padding = "a".repeat(100 * 1024);
    let request = format!(
        "GET /healthz HTTP/1.1\r\nHost: {target}\r\nX-Padding: {padding}\r\nConnection: close\r\n\r\n"
    );
    let _ = stream.write_all(request.as_bytes()).await;
    let answer = closed_within(&mut stream, Duration::from_secs(10))
        .await
        .expect("answered and closed");
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
}

#[tokio::test]
async fn bodies_over_the_global_budget_are_shed_with_retry_after() {
    let gateway = TestGateway::start(|config, _| {
        config.max_body_bytes = 100_000;
        config.max_buffered_body_bytes = Some(200_000);
        config.body_read_timeout = Duration::from_secs(30);
    })
    .await;
    let target = gateway.gateway().http;
    // Two bodies, each from its own address, announced whole and never sent: they hold the
    // whole budget.
    let mut held = Vec::new();
    for last in 18..20 {
        let mut stream = connect_from(loopback(last), target)
            .await
            .expect("connects");
        stream
            .write_all(
                format!(
                    "POST /v1/patches HTTP/1.1\r\nHost: {target}\r\nAuthorization: Bearer {KEY}\r\n\
                     Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{{"
                )
                .as_bytes(),
            )
            .await
            .expect("writes");
        held.push(stream);
    }
    let client = client_from(loopback(20));
    let body = "x".repeat(50_000);
    let mut shed = None;
    for _ in 0..200 {
        let response = client
            .post(format!("http://{target}/v1/patches"))
            .bearer_auth(KEY)
            .body(body.clone())
            .send()
            .await
            .expect("gateway reachable");
        if response.status().as_u16() == 503 {
            shed = Some(response);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let shed = shed.expect("a body over the global budget was read");
    assert!(shed.headers().contains_key("retry-after"));
    // Requests without a body need no room and are served.
    assert_eq!(
        read(
            client
                .get(format!("http://{target}/v1/patches"))
                .bearer_auth(KEY)
                .send()
                .await
                .expect("gateway reachable")
        )
        .await
        .0,
        200
    );
    drop(held);
}

/// Posts the dashboard's login form from `client`.
async fn login(client: &reqwest::Client, target: SocketAddr, key: &str) -> u16 {
    client
        .post(format!("http://{target}/ui/login"))
        .header("origin", format!("http://{target}"))
        .header("content-type", "application/x-www-form-urlencoded")
        // Test keys are letters, digits and dashes: nothing to encode.
        .body(format!("key={key}&next=/ui"))
        .send()
        .await
        .expect("gateway reachable")
        .status()
        .as_u16()
}

#[tokio::test]
async fn bad_logins_from_one_address_do_not_lock_out_the_admin_at_another() {
    // A slow per-caller limit: a login bucket shared by everyone would be spent at once.
    let gateway = TestGateway::start(|config, _| {
        config.rate_limit.per_minute = 1;
        config.rate_limit.burst = 5;
    })
    .await;
    let target = gateway.gateway().http;
    let attacker = client_from(loopback(2));
    let mut locked = false;
    for attempt in 0..200 {
        let code = login(
            &attacker,
            target,
            &format!("wrong-key-{attempt:04}-padding"),
        )
        .await;
        if code == 429 {
            locked = true;
            break;
        }
        assert_eq!(code, 401, "attempt {attempt}");
    }
    assert!(locked, "bad logins were never throttled");
    let admin = client_from(loopback(1));
    assert_eq!(
        login(&admin, target, KEY).await,
        303,
        "the admin was locked out"
    );
    // Behind a shared address (a NAT, an ingress) the admin shares the guesser's address:
    // the right key still gets in, and wrong ones stay throttled.
    assert_eq!(
        login(&attacker, target, KEY).await,
        303,
        "a correct login from a throttled address was refused"
    );
    assert_eq!(
        login(&attacker, target, "wrong-key-again-padding").await,
        429
    );
}

/// Sends `count` wrong keys from `client` claiming `forwarded_for`; the first non-401 status.
async fn guess(
    client: &reqwest::Client,
    target: SocketAddr,
    forwarded_for: &str,
    count: usize,
) -> Option<u16> {
    for attempt in 0..count {
        let code = client
            .get(format!("http://{target}/v1/patches"))
            .bearer_auth(format!("guessed-key-{attempt:05}-padding"))
            .header("x-forwarded-for", forwarded_for)
            .send()
            .await
            .expect("gateway reachable")
            .status()
            .as_u16();
        if code != 401 {
            return Some(code);
        }
    }
    None
}

/// `GET /v1/patches` with the right key from `client` claiming `forwarded_for`.
async fn read_as(client: &reqwest::Client, target: SocketAddr, forwarded_for: &str) -> u16 {
    client
        .get(format!("http://{target}/v1/patches"))
        .bearer_auth(KEY)
        .header("x-forwarded-for", forwarded_for)
        .send()
        .await
        .expect("gateway reachable")
        .status()
        .as_u16()
}

#[tokio::test]
async fn forwarded_for_names_the_client_only_behind_a_configured_proxy() {
    // Not configured: the header is the caller's claim and changes nothing.
    let direct = TestGateway::start(|_, _| {}).await;
    let target = direct.gateway().http;
    let client = client_from(loopback(8));
    assert_eq!(guess(&client, target, "192.0.2.1", 100).await, Some(429));
    assert_eq!(
        guess(&client, target, "192.0.2.2", 1).await,
        Some(429),
        "a claimed address escaped the throttle"
    );
    // Behind a trusted proxy, each forwarded client has its own buckets.
    let proxied = TestGateway::start(|config, _| {
        config.server.trusted_proxies = vec!["127.0.0.9".parse().expect("range")];
        // A proxy carries many clients' connections: the per-address cap does not apply to it.
        config.server.max_connections_per_address = 1;
    })
    .await;
    let target = proxied.gateway().http;
    let _held = connect_from(loopback(9), target).await.expect("connects");
    let mut second = connect_from(loopback(9), target).await.expect("connects");
    assert_served_then_closed(&mut second, target).await;
    let proxy = client_from(loopback(9));
    assert_eq!(guess(&proxy, target, "192.0.2.1", 100).await, Some(429));
    assert_eq!(
        read_as(&proxy, target, "192.0.2.2").await,
        200,
        "another client behind the proxy was throttled"
    );
}

#[tokio::test]
async fn the_rightmost_untrusted_forwarded_entry_is_the_client_and_garbage_there_is_400() {
    let gateway = TestGateway::start(|config, _| {
        config.server.trusted_proxies = vec!["127.0.0.9".parse().expect("range")];
    })
    .await;
    let target = gateway.gateway().http;
    let proxy = client_from(loopback(9));
    // The client's own claims on the left, then the client, then a trusted hop.
    let chain = "unknown, 203.0.113.1, 192.0.2.50:41000, 127.0.0.9";
    assert_eq!(guess(&proxy, target, chain, 100).await, Some(429));
    assert_eq!(
        guess(&proxy, target, "192.0.2.50", 1).await,
        Some(429),
        "the same client, named without its port, was not recognised"
    );
    assert_eq!(
        guess(&proxy, target, "192.0.2.50, 192.0.2.51", 1).await,
        None,
        "another client behind the proxy was throttled"
    );
    assert_eq!(
        guess(&proxy, target, "192.0.2.50, unknown", 1).await,
        Some(400),
        "an unreadable client entry was not refused"
    );
}

#[tokio::test]
async fn wrong_keys_from_one_address_are_throttled_but_valid_keys_from_it_are_served() {
    let gateway = TestGateway::start(|_, _| {}).await;
    let target = gateway.gateway().http;
    let guesser = client_from(loopback(3));
    let mut throttled = None;
    for attempt in 0..2_000 {
        let response = guesser
            .get(format!("http://{target}/v1/patches"))
            .bearer_auth(format!("guessed-key-{attempt:05}-padding"))
            .send()
            .await
            .expect("gateway reachable");
        match response.status().as_u16() {
            401 => continue,
            429 => {
                throttled = Some((attempt, response));
                break;
            }
            other => panic!("attempt {attempt}: unexpected {other}"),
        }
    }
    let (attempt, response) = throttled.expect("2,000 wrong keys were never throttled");
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!(retry_after >= 1, "{retry_after}");
    eprintln!(
        "wrong keys from one address: 429 after {attempt} refusals, retry after {retry_after} s"
    );
    // Only failures are throttled: a right key from the same (shared) address is served, so
    // a stranger's guesses cannot lock out everyone behind one NAT or ingress.
    let response = guesser
        .get(format!("http://{target}/v1/patches"))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("gateway reachable");
    assert_eq!(
        response.status().as_u16(),
        200,
        "a valid key from a throttled address was refused"
    );
    let again = guesser
        .get(format!("http://{target}/v1/patches"))
        .bearer_auth("guessed-key-again-padding")
        .send()
        .await
        .expect("gateway reachable");
    assert_eq!(again.status().as_u16(), 429);
    assert!(again.headers().contains_key("retry-after"));
    // Other addresses are not affected.
    assert_eq!(gateway.get("/v1/patches", KEY).await.0, 200);
}

/// `webhook-*` headers signing `body` with `whsec`, as Standard Webhooks does.
fn signed_by(whsec: &str, id: &str, body: &str) -> Vec<(&'static str, String)> {
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        .to_string();
    let secret = STANDARD
        .decode(whsec.trim_start_matches("whsec_"))
        .expect("secret");
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&secret).expect("key");
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    let signature = STANDARD.encode(mac.finalize().into_bytes());
    vec![
        ("webhook-id", id.to_owned()),
        ("webhook-timestamp", timestamp),
        ("webhook-signature", format!("v1,{signature}")),
    ]
}

/// Delivers `body` to `/v1/patches` as the signed webhook `id`.
pub(crate) async fn deliver(
    http: &reqwest::Client,
    base: &str,
    id: &str,
    body: &Value,
) -> (u16, Value) {
    deliver_as(WEBHOOK_SECRET, http, base, id, body).await
}

/// Delivers `body` to `/v1/patches` as the webhook `id` signed with `whsec`.
async fn deliver_as(
    whsec: &str,
    http: &reqwest::Client,
    base: &str,
    id: &str,
    body: &Value,
) -> (u16, Value) {
    let text = body.to_string();
    let mut request = http
        .post(format!("{base}/v1/patches"))
        .header("content-type", "application/json");
    for (name, value) in signed_by(whsec, id, &text) {
        request = request.header(name, value);
    }
    read(request.body(text).send().await.expect("gateway reachable")).await
}

/// Redelivers `id` until it is not refused with `refused` (bounded), as a sender retries.
async fn redeliver(
    http: &reqwest::Client,
    base: &str,
    id: &str,
    body: &Value,
    refused: u16,
) -> (u16, Value) {
    for _ in 0..100 {
        let answer = deliver(http, base, id, body).await;
        if answer.0 != refused {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{id} was refused with {refused} on every retry");
}

/// The second sender's secret.
const OTHER_SECRET: &str = "whsec_b3RoZXItc2VuZGVyLXNlY3JldC0wMTIzNDU2Nzg5";

#[tokio::test]
async fn webhook_ids_belong_to_their_sender_and_a_reused_id_with_another_body_is_409() {
    let gateway = TestGateway::start(|config, _| {
        config.webhooks.push(WebhookConfig {
            name: "other".to_owned(),
            secrets: vec![Secret::new(OTHER_SECRET)],
            scopes: vec![Scope::Submit],
            targets: Vec::new(),
        });
    })
    .await;
    let base = gateway.url();
    let first = deliver(&gateway.http, &base, "msg_shared", &write_patch("wh-ci")).await;
    assert_eq!(first.0, 202, "{}", first.1);
    // Another sender using the same id neither reads ci's answer nor is refused: its
    // delivery is its own.
    let other = deliver_as(
        OTHER_SECRET,
        &gateway.http,
        &base,
        "msg_shared",
        &write_patch("wh-other"),
    )
    .await;
    assert_eq!(other.0, 202, "{}", other.1);
    assert_eq!(
        other.1["id"], "wh-other",
        "another sender's answer was replayed"
    );
    // The same sender reusing the id for another body is told so, and nothing is queued.
    let reused = deliver(&gateway.http, &base, "msg_shared", &write_patch("wh-ci-2")).await;
    assert_eq!(reused.0, 409, "{}", reused.1);
    assert!(
        reused.1["detail"]
            .as_str()
            .is_some_and(|detail| detail.contains("different body")),
        "{}",
        reused.1
    );
    let replay = deliver(&gateway.http, &base, "msg_shared", &write_patch("wh-ci")).await;
    assert_eq!(replay, first);
    let mut stored = gateway.stored_ids().await;
    stored.sort();
    assert_eq!(stored, ["wh-ci", "wh-other"]);
}

#[tokio::test]
async fn a_webhook_refused_by_the_rate_limit_is_accepted_on_retry_and_replayed_after() {
    let gateway = TestGateway::start(|config, _| {
        // One token, refilled every second.
        config.rate_limit.per_minute = 60;
        config.rate_limit.burst = 1;
    })
    .await;
    let base = gateway.url();
    let first = deliver(&gateway.http, &base, "msg_first", &write_patch("wh-a")).await;
    assert_eq!(first.0, 202, "{}", first.1);
    let refused = deliver(&gateway.http, &base, "msg_limited", &write_patch("wh-b")).await;
    assert_eq!(refused.0, 429, "{}", refused.1);
    let accepted = redeliver(
        &gateway.http,
        &base,
        "msg_limited",
        &write_patch("wh-b"),
        429,
    )
    .await;
    assert_eq!(
        accepted.0, 202,
        "the retried delivery was lost: {}",
        accepted.1
    );
    assert_eq!(accepted.1["id"], "wh-b");
    // A retry of a delivery already accepted gets the same answer, and queues nothing new.
    let replay = redeliver(
        &gateway.http,
        &base,
        "msg_limited",
        &write_patch("wh-b"),
        429,
    )
    .await;
    assert_eq!(replay, accepted);
    let mut stored = gateway.stored_ids().await;
    stored.sort();
    assert_eq!(stored, ["wh-a", "wh-b"]);
}

#[tokio::test]
async fn a_webhook_refused_while_the_router_is_down_is_accepted_on_retry() {
    let mut gateway = TestGateway::start(|_, _| {}).await;
    let base = gateway.url();
    gateway.stop_router().await;
    let refused = deliver(&gateway.http, &base, "msg_down", &write_patch("wh-down")).await;
    assert_eq!(refused.0, 503, "{}", refused.1);
    // The router comes back on the same address with the same database.
    gateway.start_router_again().await;
    let accepted = redeliver(
        &gateway.http,
        &base,
        "msg_down",
        &write_patch("wh-down"),
        503,
    )
    .await;
    assert_eq!(
        accepted.0, 202,
        "the retried delivery was lost: {}",
        accepted.1
    );
    let replay = deliver(&gateway.http, &base, "msg_down", &write_patch("wh-down")).await;
    assert_eq!(replay, accepted);
    assert_eq!(gateway.stored_ids().await, ["wh-down"]);
}

/// Chat text with `count` fenced JSON patches for MAIN, ids `<prefix>-<n>`.
fn message(prefix: &str, count: usize) -> Value {
    let mut text = String::from("Here are the patches:\n\n");
    for index in 0..count {
        text.push_str("```json\n");
        text.push_str(&write_patch(&format!("{prefix}-{index}")).to_string());
        text.push_str("\n```\n\n");
    }
    json!({ "text": text })
}

#[tokio::test]
async fn a_message_with_800_patches_is_refused_naming_the_cap_and_queues_nothing() {
    let gateway = TestGateway::start(|_, _| {}).await;
    let (code, problem) = gateway
        .post("/v1/messages", KEY, &message("many", 800))
        .await;
    assert_eq!(code, 413, "{}", problem["detail"]);
    assert!(
        problem["detail"].as_str().unwrap_or("").contains("20"),
        "the cap is not named: {problem}"
    );
    assert!(gateway.stored_ids().await.is_empty());
}

#[tokio::test]
async fn a_message_with_more_patches_than_the_remaining_burst_is_429_and_queues_nothing() {
    let gateway = TestGateway::start(|config, _| {
        config.rate_limit.per_minute = 1;
        config.rate_limit.burst = 10;
    })
    .await;
    for index in 0..5 {
        let (code, body) = gateway
            .post("/v1/patches", KEY, &write_patch(&format!("single-{index}")))
            .await;
        assert_eq!(code, 202, "{body}");
    }
    // About five tokens are left; eight patches do not fit.
    let response = gateway
        .http
        .post(format!("{}/v1/messages", gateway.url()))
        .bearer_auth(KEY)
        .json(&message("burst", 8))
        .send()
        .await
        .expect("gateway reachable");
    assert_eq!(response.status().as_u16(), 429);
    assert!(response.headers().contains_key("retry-after"));
    let stored = gateway.stored_ids().await;
    assert_eq!(stored.len(), 5, "{stored:?}");
}

#[tokio::test]
async fn refusals_do_not_show_configured_server_paths() {
    let gateway = TestGateway::start(|_, _| {}).await;
    let legacy = json!({
        "id": "legacy-outside",
        "description": "an absolute path outside every legacy root",
        "mutations": [{"path": "/etc/ghost/elsewhere.txt", "contents": "x"}],
    });
    let (code, problem) = gateway.post("/v1/patches", KEY, &legacy).await;
    assert_eq!(code, 422, "{problem}");
    let detail = problem["detail"].as_str().unwrap_or("");
    assert!(!detail.contains("/Users/sawyer"), "{detail}");
    assert!(detail.contains("legacy root"), "{detail}");
}
