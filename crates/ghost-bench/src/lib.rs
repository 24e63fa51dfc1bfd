//! `ghost-bench`: measures Ghost Runner end to end.
//!
//! It starts the five services from their (release) binaries as child processes, with config
//! files it writes into a temp dir and Slack pointed at an in-process [`ghost_testkit::FakeSlack`]
//! (or targets a running gateway with `--url`), submits patches through the gateway's
//! `POST /v1/patches` at a concurrency or a fixed rate, follows every patch to its end (router
//! events, summary file, Slack post) and reports throughput, latency by stage, loss, readiness
//! time, RSS and the machine's fsync floor, as a table and as JSON.
//!
//! - [`args`] — the command line.
//! - [`agent_overhead`] — `ghost-bench agent-overhead`: the executor's overhead around a
//!   no-op coding agent, in this process.
//! - [`system`] — spawning the services, readiness, RSS.
//! - [`procfs`] — a process's memory, CPU time and children, from `/proc`.
//! - [`store`] — `--store`: SQLite, a throwaway PostgreSQL, or a PostgreSQL URL.
//! - [`load`] — submitting patches.
//! - [`follow`] — waiting for every patch's end and collecting its stored events.
//! - [`floor`] — the fsync floor of the disk and the fsyncs on a patch's path.
//! - [`report`] — statistics, the table and the JSON document.
//! - [`run`] — the whole benchmark.

pub mod agent_overhead;
pub mod args;
pub mod floor;
pub mod follow;
pub mod load;
pub mod procfs;
pub mod report;
pub mod run;
pub mod store;
pub mod system;

pub use args::BenchArgs;
pub use report::Report;
pub use run::run;
