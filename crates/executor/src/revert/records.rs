//! The revert records on disk: one folder per target, records named by sequence and patch
//! id, kept after a succeeded patch, read back bounded, and pruned to `revert_keep`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::{fs, io};

use ghost_core::PatchId;
use rustix::fs::{Mode, OFlags};

use crate::apply::Context;
use crate::beneath::Dirs;
use crate::journal::Journal;

use super::{FORMAT, Image, MAX_LISTED, Post, now};

/// A target name safe as a folder name (a valid target name: letters, digits, `_`, `-`).
fn safe_target(target: &str) -> io::Result<()> {
    ghost_core::TargetName::parse(target)
        .map(|_| ())
        .map_err(|err| io::Error::other(format!("no record folder for target {target:?}: {err}")))
}

/// `dir`, which must be a real directory (never a symlink); made when `create`, with mode
/// 0700 (a record holds the contents of the files a patch replaced or deleted), and made
/// 0700 if it was looser.
fn real_dir(dir: &Path, create: bool) -> io::Result<bool> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if create {
        match fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
            Err(err) => return Err(err),
        }
    }
    match fs::symlink_metadata(dir) {
        Ok(meta) if meta.is_dir() => {
            if create && meta.permissions().mode() & 0o077 != 0 {
                fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
            }
            Ok(true)
        }
        Ok(_) => Err(io::Error::other(format!(
            "{} is not a directory (a symlink is never followed)",
            dir.display()
        ))),
        Err(err) if err.kind() == io::ErrorKind::NotFound && !create => Ok(false),
        Err(err) => Err(err),
    }
}

/// The record folder of `target`, if it exists (made when `create`).
pub(super) fn folder(state_dir: &Path, target: &str, create: bool) -> io::Result<Option<PathBuf>> {
    safe_target(target)?;
    let top = state_dir.join("revert");
    if !real_dir(&top, create)? {
        return Ok(None);
    }
    let dir = top.join(target);
    Ok(real_dir(&dir, create)?.then_some(dir))
}

/// One file of a record folder.
#[derive(Debug)]
pub(super) struct Listed {
    pub(super) seq: u64,
    pub(super) id: String,
    pub(super) post: bool,
    /// A post's temp file, left by a crash or a failed write.
    pub(super) temp: bool,
    pub(super) name: String,
}

/// `<16 digits>-<patch id>.journal`, `.post`, or a post's temp file `.post.tmp`.
pub(super) fn parse_name(name: &str) -> Option<Listed> {
    let (seq, rest) = name.split_once('-')?;
    if seq.len() != 16 || !seq.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    let (id, post, temp) = if let Some(id) = rest.strip_suffix(".journal") {
        (id, false, false)
    } else if let Some(id) = rest.strip_suffix(".post") {
        (id, true, false)
    } else {
        (rest.strip_suffix(".post.tmp")?, false, true)
    };
    PatchId::parse(id).ok()?;
    Some(Listed {
        seq: seq.parse().ok()?,
        id: id.to_owned(),
        post,
        temp,
        name: name.to_owned(),
    })
}

/// The record files in `dir` (regular files with a record's name only), bounded.
pub(super) fn list(dir: &Path) -> io::Result<Vec<Listed>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)?.take(MAX_LISTED) {
        let entry = entry?;
        if !entry.file_type()?.is_file() {
            continue;
        }
        if let Some(listed) = entry.file_name().to_str().and_then(parse_name) {
            found.push(listed);
        }
    }
    Ok(found)
}

/// Reads regular file `path` (never through a symlink), refusing it above `max_bytes`.
pub(super) fn read_bounded(path: &Path, max_bytes: u64) -> io::Result<Vec<u8>> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let file = fs::File::from(rustix::fs::open(path, flags, Mode::empty())?);
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    if meta.len() > max_bytes {
        return Err(io::Error::other(format!(
            "{} bytes, over the {max_bytes} byte limit",
            meta.len()
        )));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max_bytes {
        return Err(io::Error::other("the file grew over the limit"));
    }
    Ok(bytes)
}

/// Keeps the revert record of patch `patch_id` (content hash `content_hash`), which has just
/// succeeded and touched the file paths `touched`: moves `journal` into the target's record
/// folder and writes the post-images beside it, then prunes to `revert_keep`. Hands the
/// journal back when it was not kept (`revert_keep = 0`, or the record could not be
/// written: logged, and the patch stays unrevertable but for git), to be closed as usual.
pub(crate) fn keep(
    ctx: &Context,
    patch_id: &str,
    content_hash: &str,
    journal: Journal,
    touched: &[String],
) -> Option<Journal> {
    let target = ctx.workspace.target.as_str();
    let keep = ctx.workspace.policy.revert_keep;
    let state_dir = &ctx.workspace.state_dir;
    if keep == 0 {
        if let Ok(Some(dir)) = folder(state_dir, target, false)
            && let Err(err) = prune(&dir, 0)
        {
            tracing::warn!(%target, error = %err, "cannot prune the revert records");
        }
        return Some(journal);
    }
    let dir = match folder(state_dir, target, true) {
        Ok(Some(dir)) => dir,
        Ok(None) => return Some(journal),
        Err(err) => {
            tracing::error!(%target, %patch_id, error = %err, "cannot make the revert record folder; the patch is not kept for revert");
            return Some(journal);
        }
    };
    let mut dirs = match Dirs::open_checked(&ctx.workspace.root, ctx.root_id) {
        Ok(dirs) => dirs,
        Err(err) => {
            tracing::error!(%target, %patch_id, error = %err, "cannot open the workspace to read the post-images; the patch is not kept for revert");
            return Some(journal);
        }
    };
    let paths: BTreeMap<String, Image> = touched
        .iter()
        .map(|rel| {
            let image = now(&mut dirs, rel, ctx.limits.max_file_bytes, None).image();
            (rel.clone(), image)
        })
        .collect();
    let seq = match list(&dir) {
        Ok(found) => found.iter().map(|listed| listed.seq).max().unwrap_or(0) + 1,
        Err(err) => {
            tracing::error!(%target, %patch_id, error = %err, "cannot list the revert records; the patch is not kept for revert");
            return Some(journal);
        }
    };
    let base = format!("{seq:016}-{patch_id}");
    let journal_path = dir.join(format!("{base}.journal"));
    if let Err(failed) = journal.keep_as(&journal_path) {
        let (journal, err) = *failed;
        tracing::error!(%target, %patch_id, error = %err, "cannot keep the journal as a revert record");
        return Some(journal);
    }
    let written = (|| -> io::Result<()> {
        let journal_bytes = fs::symlink_metadata(&journal_path)?.len();
        let post = Post {
            format: FORMAT.to_owned(),
            patch_id: patch_id.to_owned(),
            content_hash: content_hash.to_owned(),
            journal_bytes,
            paths,
        };
        let bytes = serde_json::to_vec(&post).map_err(io::Error::other)?;
        let temp = dir.join(format!("{base}.post.tmp"));
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC;
        let mut file = fs::File::from(rustix::fs::open(&temp, flags, Mode::from_raw_mode(0o600))?);
        file.write_all(&bytes)?;
        drop(file);
        fs::rename(&temp, dir.join(format!("{base}.post")))
    })();
    if let Err(err) = written {
        tracing::error!(%target, %patch_id, error = %err, "cannot write the revert record; the patch is not kept for revert");
        let _ = fs::remove_file(&journal_path);
        let _ = fs::remove_file(dir.join(format!("{base}.post.tmp")));
        return None;
    }
    if let Err(err) = prune(&dir, keep) {
        tracing::warn!(%target, error = %err, "cannot prune the revert records");
    }
    tracing::debug!(%target, %patch_id, seq, "revert record kept");
    None
}

/// Removes all but the newest `keep` whole records of the folder, older records of an id
/// recorded again, and the files of no whole record: a journal without its post file (its
/// post was never written), a post file without its journal, a post's temp file.
fn prune(dir: &Path, keep: u32) -> io::Result<()> {
    let found = list(dir)?;
    // Per record (seq and id): whether its journal and its post file are there.
    let mut parts: BTreeMap<(u64, &str), (bool, bool)> = BTreeMap::new();
    for listed in found.iter().filter(|listed| !listed.temp) {
        let part = parts.entry((listed.seq, listed.id.as_str())).or_default();
        if listed.post {
            part.1 = true;
        } else {
            part.0 = true;
        }
    }
    let mut newest_of: BTreeMap<&str, u64> = BTreeMap::new();
    for (&(seq, id), _) in parts
        .iter()
        .filter(|(_, (journal, post))| *journal && *post)
    {
        let newest = newest_of.entry(id).or_insert(seq);
        *newest = (*newest).max(seq);
    }
    let mut kept: Vec<(u64, &str)> = newest_of.into_iter().map(|(id, seq)| (seq, id)).collect();
    kept.sort_unstable_by(|a, b| b.cmp(a));
    kept.truncate(usize::try_from(keep).unwrap_or(usize::MAX));
    let kept: BTreeSet<(u64, &str)> = kept.into_iter().collect();
    for listed in &found {
        if listed.temp || !kept.contains(&(listed.seq, listed.id.as_str())) {
            match fs::remove_file(dir.join(&listed.name)) {
                Ok(()) => {}
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => return Err(err),
            }
        }
    }
    Ok(())
}
