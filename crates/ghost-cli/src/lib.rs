//! The `ghost` command: run the whole system on one machine (`ghost up`), submit patches and
//! follow them to their end (`ghost submit`), and read and steer a running system through the
//! gateway's REST API (`status`, `list`, `show`, `events`, `logs`, `cancel`, `retry`, `revert`,
//! `pause`, `resume`, `targets`, `executors`); check a service's config file (`config check`); print a model client's setup (`connect`); run only
//! an executor against a router elsewhere, or install it as a service (`executor`, [`units`]);
//! back up and restore every service's state (`backup`, `restore`: [`backup`]).
//!
//! `main.rs` only parses arguments and dispatches. [`settings`] finds the gateway URL and key
//! (flag > env > config file > default), [`client`] is the HTTP client, [`render`] turns answers
//! into text or `--json`, [`error`] and [`exit`] map every failure and outcome to one exit code
//! and a hint. [`system`] wires the five services in one process ([`system::SystemBuilder`]) — the same
//! wiring every test that needs more than one service uses.

pub mod backup;
pub mod client;
pub mod commands;
pub mod config_check;
pub mod connect;
pub mod error;
pub mod executor;
pub mod exit;
pub mod init;
pub mod render;
pub mod revert;
pub mod settings;
pub mod submit;
pub mod system;
pub mod tls;
pub mod units;
pub mod up;
pub mod up_config;
