//! Plain HTTP probes of a service under test.

/// The status code of `GET url` (panics, naming the URL, when there is no answer).
pub async fn status(client: &reqwest::Client, url: String) -> u16 {
    client
        .get(&url)
        .send()
        .await
        .unwrap_or_else(|err| panic!("GET {url}: {err}"))
        .status()
        .as_u16()
}

/// The routes a service serves on its operations port (`server.ops_listen`) when it has one.
pub const OPS_ROUTES: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// Asserts that each of [`OPS_ROUTES`] answers 200 on the operations port `ops` and 404 on
/// the public port `public`.
pub async fn assert_ops_routes_on_ops_port_alone(
    client: &reqwest::Client,
    ops: std::net::SocketAddr,
    public: std::net::SocketAddr,
) {
    for route in OPS_ROUTES {
        assert_eq!(
            status(client, format!("http://{ops}{route}")).await,
            200,
            "{route} on the ops port"
        );
        assert_eq!(
            status(client, format!("http://{public}{route}")).await,
            404,
            "{route} on the public port"
        );
    }
}

/// The value of the unlabelled metric `name` on `http://{addr}/metrics`; `None` when the
/// service does not answer or does not show it.
pub async fn metric(addr: std::net::SocketAddr, name: &str) -> Option<f64> {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

/// Waits ([`crate::wait_for`]: bounded) until the unlabelled metric `name` on
/// `http://{addr}/metrics` reads `expected`; the panic on timeout names the last value seen.
pub async fn wait_for_metric(addr: std::net::SocketAddr, name: &str, expected: f64) {
    let what = format!("{name} on {addr} to read {expected}");
    crate::wait_for(&what, async || {
        let value = metric(addr, name).await;
        if value == Some(expected) {
            Ok(())
        } else {
            Err(value)
        }
    })
    .await;
}
