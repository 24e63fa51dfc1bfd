//! The gateway's API tests: the real gateway App and a real router App on 127.0.0.1:0.

mod api_keys;
mod auth;
mod browser;
mod dashboard;
mod executor_tokens;
mod fleet;
mod guide;
mod hardening;
mod helpers;
mod hostile;
mod inbox;
mod intake;
mod limits;
mod loop_calls;
mod mcp;
mod mcp_fit;
mod openapi;
mod parse_budget;
mod real_patches;
mod reference;
mod replicas;
mod revert;
mod scale;
mod shared_keys;
mod system;
mod targets;
