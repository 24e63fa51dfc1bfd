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
