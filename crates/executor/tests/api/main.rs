//! Executor tests against real files, real child processes and real git.

mod agent;
mod agent_cli;
mod agent_flags;
mod checks;
mod complete_rollback;
mod crash;
mod diagnostics;
mod drain;
mod dry_run;
mod git_diff;
mod git_guard;
mod helpers;
mod hostile;
mod ladder;
mod ledger;
mod leftovers;
mod process_tree;
mod race;
mod revert;
mod rollback;
mod rollback_limits;
mod sandbox;
mod standby;
mod storage;
mod timing;
mod wedge;
