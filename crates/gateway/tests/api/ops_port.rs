//! `server.ops_listen`: with it set, `/healthz`, `/readyz` and `/metrics` answer on the
//! operations port alone and 404 on the public port, which keeps serving the API, the
//! dashboard, MCP and the OpenAPI document; the operations port answers nothing else.

use std::net::SocketAddr;

use ghost_testkit::http::{OPS_ROUTES, assert_ops_routes_on_ops_port_alone, status};

use crate::helpers::{KEY, TestGateway, config};

#[tokio::test]
async fn the_operations_routes_answer_on_the_ops_port_alone() {
    let gateway = TestGateway::start(|config, _| {
        config.server.ops_listen = Some("127.0.0.1:0".parse().expect("addr"));
    })
    .await;
    let (public, ops) = (gateway.gateway().http, gateway.gateway().ops);
    assert_ne!(public, ops, "two listeners");
    let client = reqwest::Client::new();

    assert_ops_routes_on_ops_port_alone(&client, ops, public).await;
    let metrics = client
        .get(format!("http://{ops}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(metrics.contains("ghost_"), "{metrics}");

    // The public port still serves its routes.
    let patches = client
        .get(format!("http://{public}/v1/patches"))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("patches");
    assert_eq!(patches.status().as_u16(), 200);
    for (path, expected) in [
        ("/openapi.json", 200),
        ("/ui/login", 200),
        ("/ui/assets/app.css", 200),
        ("/privacy", 200),
        ("/v1/guide", 200),
        // Unauthenticated: refused, but routed.
        ("/v1/patches", 401),
        ("/ui", 303),
    ] {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        assert_eq!(
            status(&client, format!("http://{public}{path}")).await,
            expected,
            "{path} on the public port"
        );
    }
    let mcp = client
        .post(format!("http://{public}/mcp"))
        .json(&serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}))
        .send()
        .await
        .expect("mcp");
    assert_eq!(mcp.status().as_u16(), 401, "/mcp is routed (and guarded)");

    // The operations port answers nothing but its three routes.
    for path in [
        "/",
        "/v1/patches",
        "/v1/guide",
        "/openapi.json",
        "/ui",
        "/ui/login",
        "/mcp",
        "/privacy",
        "/metrics/x",
    ] {
        assert_eq!(
            status(&client, format!("http://{ops}{path}")).await,
            404,
            "{path} on the ops port"
        );
    }
    let on_ops = client
        .post(format!("http://{ops}/v1/patches"))
        .bearer_auth(KEY)
        .json(&serde_json::json!({}))
        .send()
        .await
        .expect("post");
    assert_eq!(
        on_ops.status().as_u16(),
        404,
        "POST /v1/patches on the ops port"
    );
}

#[tokio::test]
async fn without_ops_listen_the_probes_share_the_public_port() {
    let gateway = TestGateway::start(|_, _| {}).await;
    let public = gateway.gateway().http;
    assert_eq!(gateway.gateway().ops, public);
    let client = reqwest::Client::new();
    for route in OPS_ROUTES {
        assert_eq!(
            status(&client, format!("http://{public}{route}")).await,
            200
        );
    }
}

#[tokio::test]
async fn an_ops_port_equal_to_the_http_port_is_refused_naming_both_keys() {
    let free: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("free port");
    let mut gateway_config = config("127.0.0.1:1".parse().expect("addr"));
    gateway_config.server.http_listen = free;
    gateway_config.server.ops_listen = Some(free);
    let Err(err) = gateway::App::build(gateway_config).await else {
        panic!("built with ops_listen = http_listen");
    };
    let err = format!("{err:#}");
    assert!(err.contains("server.ops_listen"), "{err}");
    assert!(err.contains("server.http_listen"), "{err}");
}
