//! The alerter's API over real gRPC and HTTP on loopback, delivering to a fake Slack.

#[macro_use]
mod helpers;

mod commands;
mod delivery;
mod health;
mod hostile;
mod lifecycle;
mod manifest;
mod notify;
mod ops_port;
mod outage;
mod replicas;
mod revert;
mod routing;
mod signing;
mod storage;
