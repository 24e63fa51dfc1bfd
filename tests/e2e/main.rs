//! Cross-service tests: all five services started in one process on loopback ports, wired by
//! real gRPC, with a fake Slack and a real OTLP receiver standing in for the outside world.

mod cancel;
mod control;
mod guide;
mod health;
mod helpers;
mod manual;
mod metrics;
mod notify;
mod refusals;
mod restart;
mod revert;
mod spine;
mod typescript;
