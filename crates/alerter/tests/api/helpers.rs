//! Spawning the real alerter on loopback, pointed at a fake Slack.

use ghost_proto::alerter::v1::NotifyRequest;
use ghost_proto::alerter::v1::alerter_service_client::AlerterServiceClient;
use ghost_proto::router::v1::PatchStatus;
use ghost_runtime::config::{Secret, ServerConfig};
use std::time::Duration;

use alerter::{AlerterConfig, App, SlackConfig};
use tokio::sync::oneshot;
use tonic::transport::Channel;

/// The bot token the tests configure.
pub const TOKEN: &str = "xoxb-test-token";

/// A running alerter; stops when dropped.
pub struct TestApp {
    pub client: AlerterServiceClient<Channel>,
    _stop: oneshot::Sender<()>,
}

/// Builds and runs the real alerter on ephemeral ports; Slack at `slack_base_url`, if any.
pub async fn spawn_alerter(slack_base_url: Option<String>) -> TestApp {
    let config = AlerterConfig {
        server: ServerConfig::ephemeral(),
        slack: SlackConfig {
            api_base_url: slack_base_url,
            bot_token: Secret::new(TOKEN),
            channel: "#ghost-test".to_owned(),
            max_attempts: 3,
            initial_backoff: Duration::from_millis(10),
        },
        ..AlerterConfig::default()
    };
    let app = App::build(config).await.expect("build alerter");
    let addr = app.grpc_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(app.run(async {
        let _ = stopped.await;
    }));
    let client = AlerterServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect to alerter");
    TestApp {
        client,
        _stop: stop,
    }
}

/// A Notify for `patch_id`, attempt 1, failed on MAIN.
pub fn notify(patch_id: &str) -> NotifyRequest {
    NotifyRequest {
        patch_id: patch_id.to_owned(),
        target: "MAIN".to_owned(),
        attempt: 1,
        status: PatchStatus::RolledBack as i32,
        description: "make login faster".to_owned(),
        excerpt: format!("# ❌ {patch_id} rolled_back\n\npatchName: {patch_id}\n"),
        trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".to_owned(),
        error: "validation failed".to_owned(),
    }
}
