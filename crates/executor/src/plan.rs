//! Computes the whole effect of a patch's file operations in memory, before any write.
//!
//! Every path is checked, every file is read through directory handles, every text transform is applied to an overlay of the workspace,
//! and every limit is checked; the result is the final state of each touched path (bytes and
//! mode, or absent) plus the directories to create. A patch that fails here has written
//! nothing, which also makes a dry run exactly this step.

use std::collections::{BTreeMap, BTreeSet};
use std::io;

use ghost_core::fileops::{self, FileOp};
use ghost_core::{EditReport, RelPath};
use rustix::io::Errno;

use crate::beneath::{self, Dirs, Kind};
use crate::workspace::{ConfineError, Limits, Workspace, check_path};

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
    /// Final state per workspace-relative path.
    pub files: BTreeMap<String, Final>,
    /// Directories to create (workspace-relative), outermost first.
    pub dirs: Vec<String>,
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
        }
    }
}

/// Says why `rel` (or its directory `dir`) could not be opened, without a server path.
fn open_error(rel: &str, dir: &str, err: &io::Error) -> PlanError {
    let place = if dir.is_empty() { rel } else { dir };
    if beneath::is(err, Errno::LOOP) {
        PlanError::Refused(format!(
            "path {rel}: {place} is a symlink, which is never followed"
        ))
    } else if beneath::is(err, Errno::NOTDIR) {
        PlanError::Refused(format!("path {rel}: {place} is not a directory"))
    } else if beneath::is(err, Errno::XDEV) {
        PlanError::Refused(format!("path {rel} escapes the workspace"))
    } else {
        PlanError::Mismatch(format!("cannot read {rel}: {err}"))
    }
}

fn lines(bytes: &[u8]) -> u32 {
    let newlines = bytes.iter().filter(|b| **b == b'\n').count();
    let trailing = usize::from(!bytes.is_empty() && !bytes.ends_with(b"\n"));
    u32::try_from(newlines + trailing).unwrap_or(u32::MAX)
}

/// Every ancestor directory of `rel`, outermost first (`a`, `a/b` for `a/b/c`).
fn ancestors(rel: &str) -> impl Iterator<Item = &str> {
    rel.match_indices('/').map(move |(cut, _)| &rel[..cut])
}

struct Overlay<'a> {
    workspace: &'a Workspace,
    dirs: &'a mut Dirs,
    limits: Limits,
    plan: Plan,
    dir_set: BTreeSet<String>,
    /// Bytes charged to each path so far: its planned contents, or a deleted file's size.
    charged: std::collections::HashMap<String, u64>,
    /// Their sum, held to the patch limit after every operation.
    total: u64,
}

impl Overlay<'_> {
    /// Charges `size` bytes to `key` (replacing what it was charged before) and refuses once
    /// the patch's running total is over its limit: deleted files count their size, so a
    /// patch of deletes cannot make the executor read more than the limit either.
    fn charge(&mut self, key: &str, size: u64) -> Result<(), PlanError> {
        let before = self.charged.insert(key.to_owned(), size).unwrap_or(0);
        self.total = self.total.saturating_sub(before).saturating_add(size);
        if self.total > self.limits.max_patch_bytes {
            return Err(PlanError::Refused(format!(
                "the patch writes or deletes {} bytes, over the {} byte patch limit",
                self.total, self.limits.max_patch_bytes
            )));
        }
        Ok(())
    }

    /// What is on disk at `rel`, through directory handles only.
    fn on_disk(&mut self, rel: &str) -> Result<Option<Kind>, PlanError> {
        let (dir, name) = beneath::split(rel);
        let handle = match self.dirs.dir(dir) {
            Ok(handle) => handle,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(open_error(rel, dir, &err)),
        };
        beneath::stat(&handle, name).map_err(|err| open_error(rel, dir, &err))
    }

    fn current(&mut self, rel: &RelPath) -> Result<Option<(Vec<u8>, u32)>, PlanError> {
        let key = rel.as_str();
        if let Some(state) = self.plan.files.get(key) {
            return Ok(match state {
                Final::File { bytes, mode } => Some((bytes.clone(), *mode)),
                Final::Absent => None,
            });
        }
        let (dir, name) = beneath::split(key);
        let handle = match self.dirs.dir(dir) {
            Ok(handle) => handle,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(open_error(key, dir, &err)),
        };
        match beneath::read(&handle, name, self.limits.max_file_bytes) {
            Ok(found) => Ok(found),
            Err(err) if beneath::is(&err, Errno::FBIG) => Err(PlanError::Refused(format!(
                "path {rel} is larger than the {} byte file limit",
                self.limits.max_file_bytes
            ))),
            Err(err) if beneath::is(&err, Errno::LOOP) => Err(PlanError::Refused(format!(
                "path {rel} is a symlink, which is never followed"
            ))),
            Err(err) if err.kind() == io::ErrorKind::Other => Err(PlanError::Refused(format!(
                "path {rel} is not a regular file (directory, device, socket or fifo)"
            ))),
            Err(err) => Err(open_error(key, "", &err)),
        }
    }

    fn existing(&mut self, rel: &RelPath, op: &str) -> Result<(Vec<u8>, u32), PlanError> {
        self.current(rel)?
            .ok_or_else(|| PlanError::Mismatch(format!("{op} {rel}: the file does not exist")))
    }

    fn text(bytes: Vec<u8>, rel: &RelPath) -> Result<String, PlanError> {
        String::from_utf8(bytes).map_err(|_| {
            PlanError::Mismatch(format!("{rel} is not UTF-8 text; use a `write` edit"))
        })
    }

    /// Plans every missing directory above `rel`, outermost first.
    fn ensure_parents(&mut self, rel: &str) -> Result<(), PlanError> {
        let mut missing = false;
        for dir in ancestors(rel) {
            if self.dir_set.contains(dir) {
                continue;
            }
            if matches!(self.plan.files.get(dir), Some(Final::File { .. })) {
                return Err(PlanError::Mismatch(format!(
                    "{rel}: {dir} is a file planned by this patch"
                )));
            }
            if !missing {
                match self.dirs.dir(dir) {
                    Ok(_) => continue,
                    Err(err) if err.kind() == io::ErrorKind::NotFound => missing = true,
                    Err(err) => return Err(open_error(rel, dir, &err)),
                }
            }
            self.dir_set.insert(dir.to_owned());
            self.plan.dirs.push(dir.to_owned());
        }
        Ok(())
    }

    fn set_file(&mut self, rel: &RelPath, bytes: Vec<u8>, mode: u32) -> Result<(), PlanError> {
        let size = bytes.len() as u64;
        if size > self.limits.max_file_bytes {
            return Err(PlanError::Refused(format!(
                "{rel} would be {size} bytes, over the {} byte file limit",
                self.limits.max_file_bytes
            )));
        }
        if self.dir_set.contains(rel.as_str()) {
            return Err(PlanError::Mismatch(format!(
                "{rel} is a directory planned by this patch"
            )));
        }
        self.ensure_parents(rel.as_str())?;
        self.charge(rel.as_str(), size)?;
        // Never setuid/setgid/sticky: a file the patch writes keeps only its permission bits.
        let mode = mode & 0o777;
        self.plan
            .files
            .insert(rel.as_str().to_owned(), Final::File { bytes, mode });
        Ok(())
    }

    fn apply(&mut self, op: &FileOp) -> Result<EditReport, PlanError> {
        check_path(self.workspace, op.path().as_str())?;
        if let FileOp::Rename { from, .. } = op {
            check_path(self.workspace, from.as_str())?;
        }
        let mut report = EditReport {
            op: op.op().to_owned(),
            path: op.path().to_string(),
            ..EditReport::default()
        };
        match op {
            FileOp::Write { path, contents } | FileOp::Create { path, contents } => {
                let create = matches!(op, FileOp::Create { .. });
                self.write(path, contents, create, &mut report)?;
            }
            FileOp::Replace {
                path,
                search,
                replace,
            } => {
                let (bytes, mode) = self.existing(path, "replace")?;
                let applied = fileops::replace_text(&Self::text(bytes, path)?, search, replace)
                    .map_err(|err| PlanError::Mismatch(format!("replace in {path}: {err}")))?;
                report.match_step = applied.step.as_str().to_owned();
                (report.added, report.removed) = (applied.added, applied.removed);
                self.set_file(path, applied.text.into_bytes(), mode)?;
            }
            FileOp::Hunks { path, hunks } => {
                let (bytes, mode) = self.existing(path, "diff")?;
                let applied = fileops::apply_hunks(&Self::text(bytes, path)?, hunks)
                    .map_err(|err| PlanError::Mismatch(format!("diff of {path}: {err}")))?;
                report.match_step = applied.step.as_str().to_owned();
                (report.added, report.removed) = (applied.added, applied.removed);
                self.set_file(path, applied.text.into_bytes(), mode)?;
            }
            FileOp::Delete { path } => {
                let (bytes, _) = self.existing(path, "delete")?;
                report.removed = lines(&bytes);
                self.charge(path.as_str(), bytes.len() as u64)?;
                self.plan
                    .files
                    .insert(path.as_str().to_owned(), Final::Absent);
            }
            FileOp::Rename { from, to } => {
                let (bytes, mode) = self.existing(from, "rename")?;
                if from != to && self.current(to)?.is_some() {
                    return Err(PlanError::Mismatch(format!(
                        "rename {from} -> {to}: the destination already exists"
                    )));
                }
                report.from = from.to_string();
                self.charge(from.as_str(), 0)?;
                self.plan
                    .files
                    .insert(from.as_str().to_owned(), Final::Absent);
                self.set_file(to, bytes, mode)?;
            }
            FileOp::Chmod { path, mode } => {
                let (bytes, _) = self.existing(path, "chmod")?;
                self.set_file(path, bytes, *mode)?;
            }
            FileOp::Mkdir { path } => self.mkdir(path)?,
        }
        Ok(report)
    }

    /// Plans writing (or, with `create`, creating) `path` with `contents`, within the file
    /// limit; the lines added and removed go into `report`.
    fn write(
        &mut self,
        path: &RelPath,
        contents: &str,
        create: bool,
        report: &mut EditReport,
    ) -> Result<(), PlanError> {
        if contents.len() as u64 > self.limits.max_file_bytes {
            return Err(PlanError::Refused(format!(
                "{path}: writing {} bytes is over the {} byte file limit",
                contents.len(),
                self.limits.max_file_bytes
            )));
        }
        let before = self.current(path)?;
        if create && before.is_some() {
            return Err(PlanError::Mismatch(format!(
                "create {path}: the file already exists"
            )));
        }
        report.removed = before.as_ref().map_or(0, |(bytes, _)| lines(bytes));
        report.added = lines(contents.as_bytes());
        let mode = before.map_or(0o644, |(_, mode)| mode);
        self.set_file(path, contents.to_owned().into_bytes(), mode)
    }

    /// Plans the directory `path` (and its missing parents), unless it is there or planned;
    /// a file planned there, a symlink or a non-directory in the way refuses it.
    fn mkdir(&mut self, path: &RelPath) -> Result<(), PlanError> {
        let key = path.as_str();
        if matches!(self.plan.files.get(key), Some(Final::File { .. })) {
            return Err(PlanError::Mismatch(format!(
                "mkdir {path}: a file is planned there"
            )));
        }
        if self.dir_set.contains(key) {
            return Ok(());
        }
        match self.on_disk(key)? {
            Some(Kind::Dir) => {}
            Some(Kind::Symlink) => {
                return Err(PlanError::Refused(format!(
                    "path {path} is a symlink, which is never followed"
                )));
            }
            Some(_) => {
                return Err(PlanError::Refused(format!(
                    "path {path} exists and is not a directory"
                )));
            }
            None => {
                self.ensure_parents(key)?;
                self.dir_set.insert(key.to_owned());
                self.plan.dirs.push(key.to_owned());
            }
        }
        Ok(())
    }
}

/// Plans `ops` against `workspace`, reading through `dirs`; nothing is written.
pub fn build(
    workspace: &Workspace,
    dirs: &mut Dirs,
    ops: &[FileOp],
    limits: Limits,
) -> Result<Plan, PlanError> {
    let mut overlay = Overlay {
        workspace,
        dirs,
        limits,
        plan: Plan::default(),
        dir_set: BTreeSet::new(),
        charged: std::collections::HashMap::new(),
        total: 0,
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
    if workspace.policy.agent.is_some()
        && let Some(path) = overlay
            .plan
            .files
            .keys()
            .chain(&overlay.plan.dirs)
            .find(|rel| is_agent_config(rel))
    {
        return Err(PlanError::Refused(format!(
            "{path} is an agent's configuration (it could redirect the target's agent): a \
             patch may not change it on a target with an agent"
        )));
    }
    Ok(overlay.plan)
}

/// True for a path an agent CLI reads its settings, permissions or environment from:
/// anything under `.claude/`, `.gemini/`, `.codex/`, `.opencode/` or `.cursor/`, and
/// `opencode.json(c)`, `.aider*`, `.env` and `.env.*`, at any depth.
pub fn is_agent_config(rel: &str) -> bool {
    rel.split('/').any(|name| {
        matches!(
            name,
            ".claude"
                | ".gemini"
                | ".codex"
                | ".opencode"
                | ".cursor"
                | "opencode.json"
                | "opencode.jsonc"
                | ".env"
        ) || name.starts_with(".aider")
            || name.starts_with(".env.")
    })
}
