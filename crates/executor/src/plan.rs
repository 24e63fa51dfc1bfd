//! Computes the whole effect of a patch's file operations in memory, before any write.
//!
//! Every path is confined, every text transform is applied to an overlay of the workspace,
//! and every limit is checked; the result is the final state of each touched path (bytes and
//! mode, or absent) plus the directories to create. A patch that fails here has written
//! nothing, which also makes a dry run exactly this step.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use ghost_core::fileops::{self, FileOp};
use ghost_core::{EditReport, RelPath};

use crate::workspace::{ConfineError, Limits, Want, Workspace, confine};

/// The final state of one touched file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Final {
    /// The file exists with these bytes and permission bits.
    File {
        /// Contents.
        bytes: Vec<u8>,
        /// Permission bits.
        mode: u32,
    },
    /// The file does not exist.
    Absent,
}

/// Everything a patch's file operations will do.
#[derive(Debug, Default)]
pub struct Plan {
    /// Final state per real path.
    pub files: BTreeMap<PathBuf, Final>,
    /// Directories to create, outermost first.
    pub dirs: Vec<PathBuf>,
    /// One report per operation.
    pub reports: Vec<EditReport>,
}

/// Why the operations cannot be applied.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// Refused by confinement or limits (the patch is not allowed).
    #[error("{0}")]
    Refused(String),
    /// The operation does not fit the workspace (text not found, file missing, …).
    #[error("{0}")]
    Mismatch(String),
}

impl From<ConfineError> for PlanError {
    fn from(err: ConfineError) -> Self {
        match err {
            ConfineError::Refused(message) => Self::Refused(message),
            ConfineError::Io { .. } => Self::Mismatch(err.to_string()),
        }
    }
}

fn lines(bytes: &[u8]) -> u32 {
    let newlines = bytes.iter().filter(|b| **b == b'\n').count();
    let trailing = usize::from(!bytes.is_empty() && !bytes.ends_with(b"\n"));
    u32::try_from(newlines + trailing).unwrap_or(u32::MAX)
}

struct Overlay<'a> {
    workspace: &'a Workspace,
    limits: Limits,
    plan: Plan,
    dir_set: BTreeSet<PathBuf>,
}

impl Overlay<'_> {
    fn current(&self, real: &Path, rel: &RelPath) -> Result<Option<(Vec<u8>, u32)>, PlanError> {
        if let Some(state) = self.plan.files.get(real) {
            return Ok(match state {
                Final::File { bytes, mode } => Some((bytes.clone(), *mode)),
                Final::Absent => None,
            });
        }
        match fs::symlink_metadata(real) {
            Ok(meta) if meta.is_file() => {
                let bytes = fs::read(real)
                    .map_err(|err| PlanError::Mismatch(format!("cannot read {rel}: {err}")))?;
                Ok(Some((bytes, meta.permissions().mode() & 0o7777)))
            }
            Ok(_) => Err(PlanError::Refused(format!(
                "path {rel} is not a regular file"
            ))),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(PlanError::Mismatch(format!("cannot read {rel}: {err}"))),
        }
    }

    fn existing(&self, real: &Path, rel: &RelPath, op: &str) -> Result<(Vec<u8>, u32), PlanError> {
        self.current(real, rel)?
            .ok_or_else(|| PlanError::Mismatch(format!("{op} {rel}: the file does not exist")))
    }

    fn text(bytes: Vec<u8>, rel: &RelPath) -> Result<String, PlanError> {
        String::from_utf8(bytes).map_err(|_| {
            PlanError::Mismatch(format!("{rel} is not UTF-8 text; use a `write` edit"))
        })
    }

    fn ensure_parents(&mut self, real: &Path, rel: &RelPath) -> Result<(), PlanError> {
        let mut missing = Vec::new();
        let mut current = real.parent();
        while let Some(dir) = current {
            if dir == self.workspace.root || self.dir_set.contains(dir) {
                break;
            }
            if matches!(self.plan.files.get(dir), Some(Final::File { .. })) {
                return Err(PlanError::Mismatch(format!(
                    "{rel}: {} is a file planned by this patch",
                    dir.display()
                )));
            }
            match fs::symlink_metadata(dir) {
                Ok(meta) if meta.is_dir() => break,
                Ok(_) => {
                    return Err(PlanError::Refused(format!(
                        "{rel}: {} is not a directory",
                        dir.display()
                    )));
                }
                Err(_) => missing.push(dir.to_owned()),
            }
            current = dir.parent();
        }
        for dir in missing.into_iter().rev() {
            self.dir_set.insert(dir.clone());
            self.plan.dirs.push(dir);
        }
        Ok(())
    }

    fn set_file(
        &mut self,
        real: PathBuf,
        rel: &RelPath,
        bytes: Vec<u8>,
        mode: u32,
    ) -> Result<(), PlanError> {
        let size = bytes.len() as u64;
        if size > self.limits.max_file_bytes {
            return Err(PlanError::Refused(format!(
                "{rel} would be {size} bytes, over the {} byte file limit",
                self.limits.max_file_bytes
            )));
        }
        if self.dir_set.contains(&real) {
            return Err(PlanError::Mismatch(format!(
                "{rel} is a directory planned by this patch"
            )));
        }
        self.ensure_parents(&real, rel)?;
        self.plan.files.insert(real, Final::File { bytes, mode });
        Ok(())
    }

    fn apply(&mut self, op: &FileOp) -> Result<EditReport, PlanError> {
        let mut report = EditReport {
            op: op.op().to_owned(),
            path: op.path().to_string(),
            ..EditReport::default()
        };
        match op {
            FileOp::Write { path, contents } | FileOp::Create { path, contents } => {
                if contents.len() as u64 > self.limits.max_file_bytes {
                    return Err(PlanError::Refused(format!(
                        "{path}: writing {} bytes is over the {} byte file limit",
                        contents.len(),
                        self.limits.max_file_bytes
                    )));
                }
                let real = confine(self.workspace, path, Want::File)?;
                let before = self.current(&real, path)?;
                if matches!(op, FileOp::Create { .. }) && before.is_some() {
                    return Err(PlanError::Mismatch(format!(
                        "create {path}: the file already exists"
                    )));
                }
                report.removed = before.as_ref().map_or(0, |(bytes, _)| lines(bytes));
                report.added = lines(contents.as_bytes());
                let mode = before.map_or(0o644, |(_, mode)| mode);
                self.set_file(real, path, contents.clone().into_bytes(), mode)?;
            }
            FileOp::Replace {
                path,
                search,
                replace,
            } => {
                let real = confine(self.workspace, path, Want::File)?;
                let (bytes, mode) = self.existing(&real, path, "replace")?;
                let applied = fileops::replace_text(&Self::text(bytes, path)?, search, replace)
                    .map_err(|err| PlanError::Mismatch(format!("replace in {path}: {err}")))?;
                report.match_step = applied.step.as_str().to_owned();
                (report.added, report.removed) = (applied.added, applied.removed);
                self.set_file(real, path, applied.text.into_bytes(), mode)?;
            }
            FileOp::Hunks { path, hunks } => {
                let real = confine(self.workspace, path, Want::File)?;
                let (bytes, mode) = self.existing(&real, path, "diff")?;
                let applied = fileops::apply_hunks(&Self::text(bytes, path)?, hunks)
                    .map_err(|err| PlanError::Mismatch(format!("diff of {path}: {err}")))?;
                report.match_step = applied.step.as_str().to_owned();
                (report.added, report.removed) = (applied.added, applied.removed);
                self.set_file(real, path, applied.text.into_bytes(), mode)?;
            }
            FileOp::Delete { path } => {
                let real = confine(self.workspace, path, Want::File)?;
                let (bytes, _) = self.existing(&real, path, "delete")?;
                report.removed = lines(&bytes);
                self.plan.files.insert(real, Final::Absent);
            }
            FileOp::Rename { from, to } => {
                let real_from = confine(self.workspace, from, Want::File)?;
                let real_to = confine(self.workspace, to, Want::File)?;
                let (bytes, mode) = self.existing(&real_from, from, "rename")?;
                if real_from != real_to && self.current(&real_to, to)?.is_some() {
                    return Err(PlanError::Mismatch(format!(
                        "rename {from} -> {to}: the destination already exists"
                    )));
                }
                report.from = from.to_string();
                self.plan.files.insert(real_from, Final::Absent);
                self.set_file(real_to, to, bytes, mode)?;
            }
            FileOp::Chmod { path, mode } => {
                let real = confine(self.workspace, path, Want::File)?;
                let (bytes, _) = self.existing(&real, path, "chmod")?;
                self.set_file(real, path, bytes, *mode)?;
            }
            FileOp::Mkdir { path } => {
                let real = confine(self.workspace, path, Want::Dir)?;
                if matches!(self.plan.files.get(&real), Some(Final::File { .. })) {
                    return Err(PlanError::Mismatch(format!(
                        "mkdir {path}: a file is planned there"
                    )));
                }
                if !real.is_dir() && !self.dir_set.contains(&real) {
                    self.ensure_parents(&real, path)?;
                    self.dir_set.insert(real.clone());
                    self.plan.dirs.push(real);
                }
            }
        }
        Ok(report)
    }
}

/// Plans `ops` against `workspace`; nothing is written.
pub fn build(workspace: &Workspace, ops: &[FileOp], limits: Limits) -> Result<Plan, PlanError> {
    let mut overlay = Overlay {
        workspace,
        limits,
        plan: Plan::default(),
        dir_set: BTreeSet::new(),
    };
    for (index, op) in ops.iter().enumerate() {
        let report = overlay.apply(op).map_err(|err| match err {
            PlanError::Refused(message) => {
                PlanError::Refused(format!("operation {index} ({}): {message}", op.op()))
            }
            PlanError::Mismatch(message) => {
                PlanError::Mismatch(format!("operation {index} ({}): {message}", op.op()))
            }
        })?;
        overlay.plan.reports.push(report);
    }
    let total: u64 = overlay
        .plan
        .files
        .values()
        .map(|state| match state {
            Final::File { bytes, .. } => bytes.len() as u64,
            Final::Absent => 0,
        })
        .sum();
    if total > limits.max_patch_bytes {
        return Err(PlanError::Refused(format!(
            "the patch writes {total} bytes, over the {} byte patch limit",
            limits.max_patch_bytes
        )));
    }
    Ok(overlay.plan)
}
