//! Recording fakes of the outside services Ghost Runner talks to, for tests only.
//!
//! Service API tests (`crates/<svc>/tests/api/`) and the cross-service tests in `tests/` start
//! these on `127.0.0.1:0`, point a real service at them and assert on what they recorded.
//! [`FakeSlack`] speaks Slack's Web API (`chat.postMessage`, `chat.update`), incoming webhooks
//! and `response_url`, and can be scripted to rate-limit or fail; [`RecordingAlerter`] records
//! the alert changes a service raises; [`OtlpReceiver`] is a real OTLP/gRPC trace collector;
//! [`WebhookReceiver`] checks Standard Webhooks with the real `standardwebhooks` package;
//! [`disk`] makes real disk faults (a full tmpfs, the `LD_PRELOAD` fault shim); [`postgres`]
//! starts a real PostgreSQL (`initdb`, `pg_ctl`) on a free loopback port, gone with its
//! process however that ends; [`process`] tells whether a process has ended; [`grpc`] serves a
//! stand-in for another service and [`http`] probes a service's routes; [`wait`] is the one
//! bounded poll loop every test waits with ([`wait_until`], [`TEST_TIMEOUT`]). Tests take it as
//! a dev-dependency; `ghost-bench`, a measuring tool, links it for the fake Slack, the run's CA
//! and its throwaway PostgreSQL; no service links it.

mod alerter;
pub mod disk;
pub mod grpc;
pub mod http;
mod otlp;
pub mod pki;
pub mod postgres;
pub mod process;
mod python;
mod slack;
pub mod wait;
mod webhooks;

pub use alerter::{ReceivedAlert, RecordingAlerter};
pub use otlp::{OtlpReceiver, ReceivedSpan};
pub use python::{python, repo_root};
pub use slack::{
    FakeMessage, FakeResponse, FakeSlack, RESPONSE_URL_METHOD, SlackRequest, WEBHOOK_METHOD,
};
pub use wait::{POLL_INTERVAL, TEST_TIMEOUT, try_wait_until, wait_for, wait_until};
pub use webhooks::WebhookReceiver;
