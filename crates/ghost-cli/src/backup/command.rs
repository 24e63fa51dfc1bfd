//! The `ghost backup` and `ghost restore` commands: the flags made into a destination, the
//! work run off the async runtime (it blocks on files and SQLite), the answer printed.

use std::path::PathBuf;

use super::{Destination, RestoreOptions, StateDirs, render};
use crate::error::CliError;
use crate::exit::Exit;
use crate::render::Output;

impl Destination {
    /// `--out DIR`, or `--into ROOT` with `--keep N`; refuses `--keep` without `--into`.
    pub fn from_flags(
        out: Option<PathBuf>,
        into: Option<PathBuf>,
        keep: Option<u32>,
    ) -> Result<Self, CliError> {
        if keep.is_some() && into.is_none() {
            return Err(CliError::Settings(
                "--keep counts the backups under --into ROOT; it does not go with --out".to_owned(),
            ));
        }
        match (out, into) {
            (Some(out), _) => Ok(Self::Exactly(out)),
            (None, Some(root)) => Ok(Self::Under {
                root,
                keep: keep.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
            }),
            (None, None) => Err(CliError::Settings(
                "give --out DIR or --into ROOT".to_owned(),
            )),
        }
    }
}

/// `ghost backup`: takes the backup, notes its warnings on stderr, prints what it holds.
pub async fn run_backup(
    dirs: StateDirs,
    destination: Destination,
    output: &Output,
) -> Result<Exit, CliError> {
    let report = tokio::task::spawn_blocking(move || super::backup(&dirs, &destination))
        .await
        .map_err(|err| CliError::Other(err.into()))??;
    for warning in &report.manifest.warnings {
        output.note(&format!("warning: {warning}"));
    }
    output.show(&render::report_json(&report), render::render_backup);
    Ok(Exit::Success)
}

/// `ghost restore`: checks the backup, puts it back, prints what went where.
pub async fn run_restore(options: RestoreOptions, output: &Output) -> Result<Exit, CliError> {
    let report = tokio::task::spawn_blocking(move || super::restore(&options))
        .await
        .map_err(|err| CliError::Other(err.into()))??;
    let value = serde_json::to_value(&report).unwrap_or_default();
    output.show(&value, render::render_restore);
    Ok(Exit::Success)
}
