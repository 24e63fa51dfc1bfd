//! The `ghost` command: run the whole system on one machine (`ghost up`) and talk to a running
//! one (`ghost submit`).
//!
//! [`local`] wires the five services in one process with embedded defaults — the same wiring
//! the cross-service tests use — and [`client`] is the gateway HTTP client behind `submit`.

pub mod client;
pub mod local;
