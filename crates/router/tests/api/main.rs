//! The router's API tests: the real router App on loopback port 0 with a temp SQLite file,
//! executors played by a test client speaking the Work stream, and a recording alerter.

mod alerts;
mod anonymous;
mod api_keys;
mod gateway_state;
mod helpers;
mod lease_holder;
mod leases;
mod long_poll;
mod metric_labels;
mod ordering;
mod outbox_claims;
mod outbox_lag;
mod outcomes;
mod replicas;
mod revert;
mod service_credential;
mod submit;
mod tokens;
