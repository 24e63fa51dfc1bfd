//! The router's state on PostgreSQL.
//!
//! Placeholder of branch `rpk` only (RPG's `mod.rs`, with `PgStore` calling these modules,
//! replaces it): until then nothing outside the tests calls them.

#[allow(dead_code)]
pub mod gateway_state;
#[allow(dead_code)]
pub mod keys;
