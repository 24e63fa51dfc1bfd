//! `server.ops_listen`: with it set, `/healthz`, `/readyz` and `/metrics` answer on the
//! operations port alone and 404 on the public port, which keeps serving `/slack/*`; the
//! operations port answers nothing else.

use alerter::App;
use ghost_testkit::http::{assert_ops_routes_on_ops_port_alone, status};

use crate::helpers::{command_body, config, now_secs, post_signed};

#[tokio::test]
async fn the_operations_routes_answer_on_the_ops_port_alone() {
    let mut cfg = config(None);
    cfg.server.ops_listen = Some("127.0.0.1:0".parse().expect("addr"));
    let app = App::build(cfg).await.expect("build alerter");
    let (public, ops) = (app.http_addr(), app.ops_addr());
    assert_ne!(public, ops, "two listeners");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(app.run(async {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::new();

    assert_ops_routes_on_ops_port_alone(&client, ops, public).await;

    // `/slack/*` is routed on the public port: an unsigned request is refused there (401),
    // a signed one answered; the ops port does not know it.
    for path in ["/slack/commands", "/slack/interactions"] {
        let (code, answer) =
            post_signed(&format!("http://{public}{path}"), "text=status", None, None).await;
        assert_eq!(code, 401, "{path} on the public port: {answer}");
        let (code, _) =
            post_signed(&format!("http://{ops}{path}"), "text=status", None, None).await;
        assert_eq!(code, 404, "{path} on the ops port");
    }
    let timestamp = now_secs().to_string();
    let body = command_body(
        "/ghost",
        "help",
        crate::helpers::OPERATOR,
        &format!("{}/commands/unused", crate::helpers::DISCARD_ORIGIN),
    );
    let signature =
        alerter::signing::sign(crate::helpers::SIGNING_SECRET, &timestamp, body.as_bytes());
    let (code, answer) = post_signed(
        &format!("http://{public}/slack/commands"),
        &body,
        Some(&timestamp),
        Some(&signature),
    )
    .await;
    assert_eq!(code, 200, "a signed command on the public port: {answer}");
    for path in ["/", "/slack", "/v1/alerts", "/openapi.json", "/readyz/x"] {
        assert_eq!(
            status(&client, format!("http://{ops}{path}")).await,
            404,
            "{path} on ops"
        );
    }

    drop(stop);
    task.await.expect("alerter task").expect("alerter run");
}
