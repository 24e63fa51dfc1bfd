//! Revert records, and the plan of a revert patch (`revert: {of, commit}`).
//!
//! **Records.** When a patch ends `succeeded` (only then: not a kept failure, not a dry run,
//! and not an agent hand-off, which has no journal), its journal of originals is kept instead
//! of removed: it already holds each touched file's pre-image (bytes and mode, or absent), so
//! keeping it is one rename, no copy. Beside it goes a small post file with each touched
//! path's post-image, read from disk once the patch's commands, checks and commit are done:
//! the SHA-256 of its bytes and its mode, `absent`, or `other` (a directory, symlink, device,
//! or a file over the file limit), which always conflicts. Cost: O(touched files), no fsync.
//!
//! Layout: `<state_dir>/revert/<target>/<seq>-<patch id>.journal` and `.post`, `seq` 16
//! decimal digits; names come from a validated target name and patch id only, nothing in the
//! state dir is followed through a symlink, and every read is bounded. The last
//! `revert_keep` records of a target are kept (the oldest pruned when one is written,
//! with the files of no whole record); 0 keeps none. Records hold the contents of the files
//! a patch replaced or deleted: files are 0600, folders 0700.
//!
//! A record is whole or ignored: the journal was synced when it was sealed (before the patch
//! wrote anything); the post file is written last (temp file and rename) and names the
//! journal's length, patch id and content hash, so after a power loss a record whose rename
//! or bytes were lost does not parse or does not match, and the revert answers "no record
//! of patch X", never restores from half a record. So does a record made under another
//! workspace root (its journal header names the root's device and inode).
//!
//! **Revert plan.** Every path of the record must still be in its post-image, else it is a
//! conflict and nothing is written; then each path gets its pre-image back through the
//! normal apply (journal, write, checks, commit, ledger, and a record of its own, so a revert
//! can be reverted). Paths go through the workspace's confinement again: a record can be old,
//! and the target's policy stricter now. Directories the original patch created are left in
//! place (empty or not): a revert restores files only. Without a record, a patch that made a
//! git commit is reverted from git (`<commit>^` and `<commit>`, paths under the workspace
//! root), comparing file modes as git does (the executable bit); a file that exists keeps
//! its own permission bits, only the executable ones change. A file written back gets its
//! permission bits only (never setuid, setgid or sticky), and a file is left as it is only
//! when its bytes and all twelve mode bits are its pre-image's. The commit must carry the
//! patch's `Ghost-Patch-Id` trailer; the pre-images' sizes are checked before they are read,
//! and the post-images are compared by blob id, never read.

mod records;

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::Path;

use ghost_core::{EditReport, RevertSpec};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::apply::Context;
use crate::beneath::{self, Dirs, Kind};
use crate::journal;
use crate::plan::{Final, Plan, PlanError};
use crate::workspace::check_path;

pub(crate) use self::records::keep;
use self::records::{folder, list, read_bounded};

/// Records kept per target unless `revert_keep` says otherwise.
pub const DEFAULT_KEEP: u32 = 20;
/// The most `revert_keep` may be.
pub const MAX_KEEP: u32 = 1000;
/// The first field of every post file.
const FORMAT: &str = "ghost-revert 1";
/// The largest post file read.
const MAX_POST_BYTES: u64 = 64 * 1024 * 1024;
/// The largest kept journal read.
const MAX_JOURNAL_BYTES: u64 = 1024 * 1024 * 1024;
/// The most directory entries looked at in a target's record folder.
const MAX_LISTED: usize = 100_000;
/// The longest conflict list named in an error (the report's `conflicts` has them all).
const MAX_NAMED_BYTES: usize = 2000;

/// A path's state when a patch ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
enum Image {
    /// A regular file: the SHA-256 of its bytes (hex) and its mode.
    File { sha256: String, mode: u32 },
    /// Nothing there.
    Absent,
    /// A directory, symlink, device, or a file that cannot be read: always a conflict.
    Other,
    /// A file in a git commit (a revert without a record): its blob id, as git computes it
    /// for the repository's object format, and its mode. Never written to a post file.
    #[serde(skip)]
    GitBlob { id: String, mode: u32 },
}

/// The post file of a record.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Post {
    format: String,
    patch_id: String,
    content_hash: String,
    /// Length of the kept journal (which was synced when it was sealed, before the patch
    /// wrote anything, so it is whole wherever it is found).
    journal_bytes: u64,
    /// Post-image of every file path the patch touched.
    paths: BTreeMap<String, Image>,
}

/// What is at a path now. A file's bytes are not kept: its digests say whether it is the
/// post-image or the pre-image, so one file at a time is in memory.
enum Now {
    Absent,
    File {
        sha256: String,
        /// Its git blob id, computed only for a revert from git.
        git_id: Option<String>,
        mode: u32,
        lines: u32,
    },
    /// A regular file over the file limit (never read): it cannot be compared.
    TooBig,
    Other,
}

impl Now {
    fn image(&self) -> Image {
        match self {
            Self::Absent => Image::Absent,
            Self::File { sha256, mode, .. } => Image::File {
                sha256: sha256.clone(),
                mode: *mode,
            },
            Self::TooBig | Self::Other => Image::Other,
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// What is at `rel` now, read through `dirs`; anything but a readable regular file within
/// `max_bytes` (or nothing) is `Other`. With `git_root`, a file's git blob id is computed
/// too (by the repository's git, which knows its object format).
fn now(dirs: &mut Dirs, rel: &str, max_bytes: u64, git_root: Option<&Path>) -> Now {
    let (parent, name) = beneath::split(rel);
    let handle = match dirs.dir(parent) {
        Ok(handle) => handle,
        Err(err) if beneath::is_absent(&err) => return Now::Absent,
        Err(_) => return Now::Other,
    };
    match beneath::stat(&handle, name) {
        Ok(None) => return Now::Absent,
        Ok(Some(Kind::File(_))) => {}
        Ok(Some(_)) | Err(_) => return Now::Other,
    }
    let (bytes, mode) = match beneath::read(&handle, name, max_bytes) {
        Ok(Some(found)) => found,
        Ok(None) => return Now::Absent,
        Err(err) if beneath::is(&err, rustix::io::Errno::FBIG) => return Now::TooBig,
        Err(_) => return Now::Other,
    };
    let sha256 = hex(&Sha256::digest(&bytes));
    let lines = lines(&bytes);
    let git_id = match git_root {
        Some(root) => match crate::git::blob_id(root, bytes) {
            Ok(id) => Some(id),
            Err(err) => {
                tracing::warn!(path = %rel, error = %err, "cannot compute a file's git blob id");
                return Now::Other;
            }
        },
        None => None,
    };
    Now::File {
        sha256,
        git_id,
        mode: mode & 0o7777,
        lines,
    }
}

/// A file's pre-image: its bytes and mode, or `None` when it did not exist.
type PreImage = Option<(Vec<u8>, u32)>;

/// A record's content: per path its pre-image and post-image.
struct Record {
    paths: BTreeMap<String, (PreImage, Image)>,
    /// Post-image modes compared by the executable bit only (git keeps no more).
    git_modes: bool,
}

/// The newest whole record of patch `of` for `ctx`'s target; `None` when there is none, or
/// the one there is not whole (logged).
fn load(ctx: &Context, of: &str) -> Option<Record> {
    let target = ctx.workspace.target.as_str();
    let dir = match folder(&ctx.workspace.state_dir, target, false) {
        Ok(Some(dir)) => dir,
        Ok(None) => return None,
        Err(err) => {
            tracing::error!(%target, error = %err, "cannot open the revert records");
            return None;
        }
    };
    let found = match list(&dir) {
        Ok(found) => found,
        Err(err) => {
            tracing::error!(%target, error = %err, "cannot list the revert records");
            return None;
        }
    };
    let seq = found
        .iter()
        .filter(|listed| listed.id == of && listed.post)
        .map(|listed| listed.seq)
        .max()?;
    let base = format!("{seq:016}-{of}");
    let ignored = |reason: String| {
        tracing::warn!(%target, patch_id = %of, %reason, "revert record ignored");
        None
    };
    let post = match read_bounded(&dir.join(format!("{base}.post")), MAX_POST_BYTES) {
        Ok(bytes) => bytes,
        Err(err) => return ignored(format!("post file: {err}")),
    };
    let post: Post = match serde_json::from_slice(&post) {
        Ok(post) => post,
        Err(err) => return ignored(format!("post file: {err}")),
    };
    if post.format != FORMAT || post.patch_id != of {
        return ignored("the post file names another format or patch".to_owned());
    }
    let kept = match read_bounded(
        &dir.join(format!("{base}.journal")),
        post.journal_bytes.min(MAX_JOURNAL_BYTES),
    ) {
        Ok(bytes) => bytes,
        Err(err) => return ignored(format!("journal: {err}")),
    };
    if kept.len() as u64 != post.journal_bytes {
        return ignored("the journal is not the one the post file names".to_owned());
    }
    let (header, originals) = match journal::read_kept(&kept) {
        Ok(found) => found,
        Err(err) => return ignored(format!("journal: {err}")),
    };
    if header.patch_id != of || header.content_hash != post.content_hash {
        return ignored("the journal is another patch's".to_owned());
    }
    // Its paths are relative to the root it was made under: another directory's (a root
    // replaced since, the executor restarted on it) are not this one's.
    if header.root != Some(ctx.root_id) {
        return ignored("it was made under another workspace root".to_owned());
    }
    let mut posts = post.paths;
    let mut paths = BTreeMap::new();
    for (rel, before) in originals {
        let Some(image) = posts.remove(&rel) else {
            return ignored(format!("no post-image of {rel}"));
        };
        paths.insert(rel, (before, image));
    }
    if !posts.is_empty() {
        return ignored("post-images of paths the journal does not name".to_owned());
    }
    Some(Record {
        paths,
        git_modes: false,
    })
}

/// The record of a patch read from its git commit: the pre-images' bytes (their sizes
/// checked before they are read), the post-images as blob ids (never read).
fn from_git(ctx: &Context, of: &str, commit: &str) -> Result<Record, String> {
    let root = &ctx.workspace.root;
    // Git is given the root as a path: it must still be the directory the executor started
    // with (checked again here, just before git runs, as for a commit).
    crate::apply::root_unchanged(ctx)?;
    let changes = crate::git::commit_changes(root, commit, of)?;
    if changes.is_empty() {
        return Err(format!(
            "commit {commit} changed no file under the workspace root"
        ));
    }
    let mut blobs = crate::git::blobs(
        root,
        &changes,
        ctx.limits.max_file_bytes,
        ctx.limits.max_patch_bytes,
    )?;
    let mut uses: BTreeMap<String, usize> = BTreeMap::new();
    for (id, _) in changes.iter().filter_map(|change| change.before.as_ref()) {
        *uses.entry(id.clone()).or_default() += 1;
    }
    let mut paths = BTreeMap::new();
    for change in changes {
        let before = match change.before {
            Some((id, mode)) => {
                let left = uses.entry(id.clone()).or_default();
                *left = left.saturating_sub(1);
                // Moved out on the blob's last use, copied only for a blob two paths share.
                let bytes = if *left == 0 {
                    blobs.remove(&id)
                } else {
                    blobs.get(&id).cloned()
                };
                let bytes = bytes.ok_or_else(|| format!("git gave no blob for {}", change.path))?;
                Some((bytes, mode))
            }
            None => None,
        };
        let image = match change.after {
            Some((id, mode)) => Image::GitBlob { id, mode },
            None => Image::Absent,
        };
        paths.insert(change.path, (before, image));
    }
    Ok(Record {
        paths,
        git_modes: true,
    })
}

/// Why a revert cannot be planned.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// Not allowed, or nothing to revert from: `rejected`.
    Rejected(String),
    /// Files changed since the patch ended: `rejected`, with these paths (sorted).
    Conflicts(Vec<String>, String),
    /// The workspace does not fit (cannot be read): `failed`.
    Failed(String),
}

impl From<PlanError> for Refusal {
    fn from(err: PlanError) -> Self {
        match err {
            PlanError::Refused(reason) => Self::Rejected(reason),
            PlanError::Mismatch(reason) => Self::Failed(reason),
        }
    }
}

/// `files changed since patch X: a, b` naming as many paths as fit in a bounded text.
fn conflict_error(of: &str, conflicts: &[String]) -> String {
    let mut named = String::new();
    let mut shown = 0;
    for path in conflicts {
        let piece: String = path.chars().take(256).collect();
        if !named.is_empty() && named.len() + piece.len() > MAX_NAMED_BYTES {
            break;
        }
        if !named.is_empty() {
            named.push_str(", ");
        }
        named.push_str(&piece);
        shown += 1;
    }
    let more = conflicts.len() - shown;
    if more > 0 {
        named.push_str(&format!(" and {more} more"));
    }
    format!("files changed since patch {of}: {named}")
}

fn lines(bytes: &[u8]) -> u32 {
    let newlines = bytes.iter().filter(|b| **b == b'\n').count();
    let trailing = usize::from(!bytes.is_empty() && !bytes.ends_with(b"\n"));
    u32::try_from(newlines + trailing).unwrap_or(u32::MAX)
}

/// True when what is there now is the post-image (by the executable bit only for git's).
fn unchanged(now: &Now, image: &Image) -> bool {
    match (now, image) {
        (Now::Absent, Image::Absent) => true,
        (
            Now::File { sha256, mode, .. },
            Image::File {
                sha256: post_sha,
                mode: post_mode,
            },
        ) => sha256 == post_sha && mode == post_mode,
        (
            Now::File {
                git_id: Some(id),
                mode,
                ..
            },
            Image::GitBlob {
                id: post_id,
                mode: post_mode,
            },
        ) => id == post_id && (mode & 0o100 != 0) == (post_mode & 0o100 != 0),
        _ => false,
    }
}

/// The mode a file now in `now_mode` gets back from git's `git_mode` (0644 or 0755): its
/// permission bits as they are, with the executable bits set (where it is readable) or
/// cleared as git says.
fn git_mode(now_mode: u32, git_mode: u32) -> u32 {
    let kept = now_mode & 0o777 & !0o111;
    if git_mode & 0o100 == 0 {
        kept
    } else {
        kept | ((kept & 0o444) >> 2)
    }
}

/// The record a revert restores from: the executor's own, else one read from the git commit
/// the reverted patch made; refused when there is neither.
fn record_of(ctx: &Context, spec: &RevertSpec) -> Result<Record, Refusal> {
    let of = spec.of.as_str();
    let record = match (load(ctx, of), &spec.commit) {
        (Some(record), _) => record,
        (None, Some(commit)) => from_git(ctx, of, commit)
            .map_err(|reason| Refusal::Rejected(format!("cannot revert patch {of}: {reason}")))?,
        (None, None) => {
            let keep = ctx.workspace.policy.revert_keep;
            return Err(Refusal::Rejected(if keep == 0 {
                format!(
                    "cannot revert patch {of}: revert_keep = 0: this executor keeps no records, \
                     and {of} made no git commit"
                )
            } else {
                format!(
                    "cannot revert patch {of}: no record of patch {of} (the executor keeps the \
                     last {keep} per target; agent hand-offs and crashed or damaged records are \
                     not kept), and {of} made no git commit"
                )
            }));
        }
    };
    Ok(record)
}

/// Each recorded path as it is now, checked for confinement and size; a path changed since
/// the patch (not what the patch left) is a conflict, and any conflict refuses the revert.
fn compare(
    ctx: &Context,
    dirs: &mut Dirs,
    of: &str,
    paths: BTreeMap<String, (PreImage, Image)>,
    git_root: Option<&Path>,
) -> Result<Vec<(String, PreImage, Now)>, Refusal> {
    let mut conflicts = Vec::new();
    let mut current = Vec::with_capacity(paths.len());
    for (rel, (before, image)) in paths {
        check_path(&ctx.workspace, &rel)
            .map_err(|err| Refusal::Rejected(format!("cannot revert patch {of}: {err}")))?;
        let found = now(dirs, &rel, ctx.limits.max_file_bytes, git_root);
        // Not a conflict: whether it changed cannot be told without reading it.
        if matches!(found, Now::TooBig) {
            return Err(Refusal::Rejected(format!(
                "cannot revert patch {of}: {rel} is over the {} byte file limit, so it cannot be \
                 compared with what the patch left",
                ctx.limits.max_file_bytes
            )));
        }
        if !unchanged(&found, &image) {
            conflicts.push(rel.clone());
        }
        current.push((rel, before, found));
    }
    if !conflicts.is_empty() {
        let error = conflict_error(of, &conflicts);
        return Err(Refusal::Conflicts(conflicts, error));
    }
    Ok(current)
}

/// Plans the revert `spec` against the workspace as it is now, reading through `dirs`:
/// the record's pre-images, each path checked for confinement, limits and conflicts.
/// Nothing is written.
pub(crate) fn plan(ctx: &Context, dirs: &mut Dirs, spec: &RevertSpec) -> Result<Plan, Refusal> {
    let of = spec.of.as_str();
    let record = record_of(ctx, spec)?;
    let git_root = record.git_modes.then_some(ctx.workspace.root.as_path());
    let current = compare(ctx, dirs, of, record.paths, git_root)?;
    let mut plan = Plan::default();
    let mut made = BTreeSet::new();
    let mut total: u64 = 0;
    for (rel, before, found) in current {
        let (now_sha, now_mode, now_lines) = match &found {
            Now::File {
                sha256,
                mode,
                lines,
                ..
            } => (Some(sha256.as_str()), *mode, *lines),
            _ => (None, 0, 0),
        };
        let report = match before {
            Some((bytes, mode)) => {
                // A file written back gets the permission bits only: setuid, setgid and
                // sticky bits are never set by a revert (as by no other patch).
                let mode = match (&found, git_root) {
                    // Git knows only 644 and 755: the file's own bits stay, but for the
                    // executable ones.
                    (Now::File { mode: now_mode, .. }, Some(_)) => git_mode(*now_mode, mode),
                    _ => mode & 0o777,
                };
                // All twelve mode bits compared: a setuid bit added since is not left.
                if now_sha == Some(hex(&Sha256::digest(&bytes)).as_str())
                    && now_mode & 0o7777 == mode
                {
                    continue;
                }
                if bytes.len() as u64 > ctx.limits.max_file_bytes {
                    return Err(Refusal::Rejected(format!(
                        "cannot revert patch {of}: {rel} would be {} bytes, over the {} byte \
                         file limit",
                        bytes.len(),
                        ctx.limits.max_file_bytes
                    )));
                }
                total = total.saturating_add(bytes.len() as u64);
                missing_parents(dirs, &rel, &mut plan, &mut made)?;
                let report = EditReport {
                    op: "write".to_owned(),
                    path: rel.clone(),
                    added: lines(&bytes),
                    removed: now_lines,
                    ..EditReport::default()
                };
                plan.files.insert(rel, Final::File { bytes, mode });
                report
            }
            None => {
                if now_sha.is_none() {
                    continue;
                }
                plan.files.insert(rel.clone(), Final::Absent);
                EditReport {
                    op: "delete".to_owned(),
                    path: rel,
                    removed: now_lines,
                    ..EditReport::default()
                }
            }
        };
        plan.reports.push(report);
    }
    if total > ctx.limits.max_patch_bytes {
        return Err(Refusal::Rejected(format!(
            "cannot revert patch {of}: it writes {total} bytes, over the {} byte patch limit",
            ctx.limits.max_patch_bytes
        )));
    }
    Ok(plan)
}

/// Plans every missing directory above `rel`, outermost first.
fn missing_parents(
    dirs: &mut Dirs,
    rel: &str,
    plan: &mut Plan,
    made: &mut BTreeSet<String>,
) -> Result<(), Refusal> {
    let mut missing = false;
    for (cut, _) in rel.match_indices('/') {
        let dir = &rel[..cut];
        if made.contains(dir) {
            continue;
        }
        if !missing {
            match dirs.dir(dir) {
                Ok(_) => continue,
                Err(err) if err.kind() == io::ErrorKind::NotFound => missing = true,
                Err(err) if beneath::is(&err, rustix::io::Errno::LOOP) => {
                    return Err(Refusal::Rejected(format!(
                        "cannot restore {rel}: {dir} is a symlink, which is never followed"
                    )));
                }
                Err(err) => {
                    return Err(Refusal::Failed(format!(
                        "cannot restore {rel}: {dir}: {err}"
                    )));
                }
            }
        }
        made.insert(dir.to_owned());
        plan.dirs.push(dir.to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::records::parse_name;
    use super::*;

    #[test]
    fn record_names_parse_back_and_others_are_ignored() {
        let listed = parse_name("0000000000000012-revert-a-b.post").unwrap();
        assert_eq!(
            (listed.seq, listed.id.as_str(), listed.post),
            (12, "revert-a-b", true)
        );
        assert!(!parse_name("0000000000000012-a.journal").unwrap().post);
        for bad in [
            "12-a.post",
            "0000000000000012-.post",
            "0000000000000012-a/b.post",
            "0000000000000012-.hidden.post",
            "0000000000000012-a.txt",
        ] {
            assert!(parse_name(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn the_conflict_error_is_bounded() {
        let many: Vec<String> = (0..1000).map(|n| format!("src/file{n}.ts")).collect();
        let error = conflict_error("p1", &many);
        assert!(error.starts_with("files changed since patch p1: src/file0.ts, src/file1.ts"));
        assert!(error.len() < MAX_NAMED_BYTES + 200, "{}", error.len());
        assert!(error.ends_with("more"), "{error}");
    }
}
