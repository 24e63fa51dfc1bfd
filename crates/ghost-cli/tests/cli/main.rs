//! The real `ghost` binary against a real system: all five services started in the test
//! process on loopback port 0 (an executor allowed to run commands), `ghost` run as a child
//! process with its environment cleared, so flags, `GHOST_*` and the config file are the only
//! inputs. One system per test function (nextest runs each test in its own process); each
//! function drives several subcommands against it.

mod backup;
mod connect;
mod executor;
mod helpers;
mod logs;
mod offline;
mod push;
mod read;
mod remote;
mod revert;
mod steer;
mod submit;
mod tokens;
mod up;
mod up_chaos_pg;
mod up_checks;
mod up_guards;
mod up_store;
mod walkthrough;
