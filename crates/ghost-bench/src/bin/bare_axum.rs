//! `bench-bare-axum ADDR`: the baseline for `deploy/bench/compare.sh` — an axum server with one
//! trivial handler (any method and path answers `202 ok`, the body read and dropped), no
//! middleware.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18080".to_owned());
    let app = axum::Router::new()
        .fallback(|_body: axum::body::Bytes| async { (axum::http::StatusCode::ACCEPTED, "ok") });
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    axum::serve(listener, app).await?;
    Ok(())
}
