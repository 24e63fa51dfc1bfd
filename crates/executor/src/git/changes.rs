//! What a commit changed, read from git with bounded fields: the paths, their blobs and
//! modes, for a revert from git once the revert record is gone.

use std::path::Path;
use std::process::Command;

use super::{bytes_output, git, output};

/// One file a commit changed, listed from git for a revert: its blob before (the first
/// parent's, or none) and after (the commit's, or none), each as a blob id and a mode. Only
/// the ids are read here; the bytes of the pre-images come from [`blobs`], once their sizes
/// are known to fit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitChange {
    /// Workspace-relative path.
    pub path: String,
    /// Blob id and mode in the commit's parent; `None`: the commit created the file.
    pub before: Option<(String, u32)>,
    /// Blob id and mode in the commit; `None`: the commit deleted the file.
    pub after: Option<(String, u32)>,
}

/// Most files one commit may change for its revert to be read from git.
pub const MAX_COMMIT_PATHS: usize = 10_000;

/// True for a sha git can be given as is: 7 to 64 lowercase hex digits.
fn is_sha(commit: &str) -> bool {
    (7..=64).contains(&commit.len())
        && commit
            .bytes()
            .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte))
}

/// A tree entry's mode as permission bits; `None` for "no file". Symlinks, submodules and
/// anything else are refused: a revert restores regular files only.
fn blob_mode(mode: &str, path: &str) -> Result<Option<u32>, String> {
    match mode {
        "000000" => Ok(None),
        "100644" => Ok(Some(0o644)),
        "100755" => Ok(Some(0o755)),
        "120000" => Err(format!(
            "{path} is a symlink in git, which a revert does not restore"
        )),
        "160000" => Err(format!(
            "{path} is a submodule in git, which a revert does not restore"
        )),
        other => Err(format!(
            "{path} has git mode {other}, which a revert does not restore"
        )),
    }
}

/// Runs `git` with `input` on its stdin (written from a thread, so a large input cannot
/// deadlock against the output) and returns its stdout.
fn with_input(command: &mut Command, input: Vec<u8>) -> Result<Vec<u8>, String> {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| format!("cannot run git: {err}"))?;
    let writer = child.stdin.take().map(|mut stdin| {
        std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        })
    });
    let out = child
        .wait_with_output()
        .map_err(|err| format!("cannot run git: {err}"))?;
    if let Some(writer) = writer {
        let _ = writer.join();
    }
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
    }
    Ok(out.stdout)
}

/// The git blob id `bytes` would have in the workspace's repository (its object format,
/// SHA-1 or SHA-256), without writing it and without filters.
pub fn blob_id(root: &Path, bytes: Vec<u8>) -> Result<String, String> {
    let out = with_input(
        git(root).args(["hash-object", "-t", "blob", "--no-filters", "--stdin"]),
        bytes,
    )
    .map_err(|err| format!("git hash-object failed: {err}"))?;
    let id = String::from_utf8_lossy(&out).trim().to_owned();
    if !is_sha(&id) {
        return Err(format!("git hash-object gave {id:?}, which is not a sha"));
    }
    Ok(id)
}

/// The bytes of the pre-images of `changes` (blob id → bytes), their sizes asked of git
/// (`cat-file --batch-check`) before a byte is read: each must be within `max_file_bytes`
/// and all together within `max_total_bytes`.
pub fn blobs(
    root: &Path,
    changes: &[CommitChange],
    max_file_bytes: u64,
    max_total_bytes: u64,
) -> Result<std::collections::BTreeMap<String, Vec<u8>>, String> {
    let wanted: Vec<(&str, &str)> = changes
        .iter()
        .filter_map(|change| {
            let (id, _) = change.before.as_ref()?;
            Some((id.as_str(), change.path.as_str()))
        })
        .collect();
    if wanted.is_empty() {
        return Ok(std::collections::BTreeMap::new());
    }
    let mut input = Vec::new();
    for (id, _) in &wanted {
        input.extend_from_slice(id.as_bytes());
        input.push(b'\n');
    }
    let sizes = with_input(git(root).args(["cat-file", "--batch-check"]), input)
        .map_err(|err| format!("git cat-file failed: {err}"))?;
    let sizes = String::from_utf8_lossy(&sizes);
    let mut lines = sizes.lines();
    let mut total: u64 = 0;
    for (id, path) in &wanted {
        let line = lines.next().unwrap_or_default();
        let size = match line.split(' ').collect::<Vec<_>>()[..] {
            [found, "blob", size] if found == *id => size.parse::<u64>().ok(),
            _ => None,
        }
        .ok_or_else(|| format!("git has no blob {id} for {path} ({line:?})"))?;
        if size > max_file_bytes {
            return Err(format!(
                "{path} is {size} bytes in git, over the {max_file_bytes} byte file limit"
            ));
        }
        total = total.saturating_add(size);
        if total > max_total_bytes {
            return Err(format!(
                "its pre-images in git are over the {max_total_bytes} byte patch limit"
            ));
        }
    }
    let mut read = std::collections::BTreeMap::new();
    for (id, path) in wanted {
        if read.contains_key(id) {
            continue;
        }
        let bytes = bytes_output(git(root).args(["cat-file", "blob", id]), &[0])
            .map_err(|err| format!("git cat-file failed for {path}: {err}"))?;
        if bytes.len() as u64 > max_file_bytes {
            return Err(format!(
                "{path} is {} bytes in git, over the {max_file_bytes} byte file limit",
                bytes.len()
            ));
        }
        read.insert(id.to_owned(), bytes);
    }
    Ok(read)
}

/// What `commit` changed under the workspace root (paths outside it are left out): every
/// changed path with its blob in the commit's parent and in the commit, as
/// `git diff-tree -r --no-renames --root` lists them. `commit` must be a sha (7 to 64
/// lowercase hex digits) of a commit in the workspace's repository; a merge commit is refused.
pub fn commit_changes(
    root: &Path,
    commit: &str,
    patch_id: &str,
) -> Result<Vec<CommitChange>, String> {
    if !is_sha(commit) {
        return Err(format!(
            "commit {commit:?} is not a sha (7 to 64 lowercase hex digits)"
        ));
    }
    let full = output(git(root).args([
        "rev-parse",
        "--verify",
        "--quiet",
        "--end-of-options",
        &format!("{commit}^{{commit}}"),
    ]))
    .map_err(|_| format!("commit {commit} is not in the workspace's git repository"))?;
    if !is_sha(&full) {
        return Err(format!(
            "commit {commit} is not in the workspace's git repository"
        ));
    }
    let parents = output(git(root).args(["rev-list", "--parents", "-n", "1", &full]))
        .map_err(|err| format!("cannot read the parents of commit {commit}: {err}"))?;
    if parents.split_whitespace().count() > 2 {
        return Err(format!(
            "commit {commit} is a merge commit, which a revert does not undo"
        ));
    }
    // The commit must be the patch's own ([`commit`] ends its message with this trailer), so
    // that a revert undoes the patch and nothing else.
    let trailers = output(git(root).args([
        "show",
        "-s",
        "--format=%(trailers:key=Ghost-Patch-Id,valueonly,unfold)",
        &full,
    ]))
    .map_err(|err| format!("cannot read the message of commit {commit}: {err}"))?;
    if trailers.lines().last().map(str::trim) != Some(patch_id) {
        return Err(format!("commit {commit} was not made by patch {patch_id}"));
    }
    let prefix = output(git(root).args(["rev-parse", "--show-prefix"]))
        .map_err(|err| format!("cannot read the workspace's place in git: {err}"))?;
    // Read as git writes it, one field at a time: the listing is bounded while it is read,
    // never held whole.
    let mut child = git(root)
        .args([
            "diff-tree",
            "-r",
            "--no-renames",
            "--no-commit-id",
            "--root",
            "-z",
            &full,
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|err| format!("cannot run git: {err}"))?;
    let listed = child
        .stdout
        .take()
        .map(|stdout| list_changes(std::io::BufReader::new(stdout), commit, &prefix));
    // On an early refusal git is stopped rather than waited for to write the rest.
    if !matches!(listed, Some(Ok(_))) {
        let _ = child.kill();
    }
    let status = child
        .wait()
        .map_err(|err| format!("cannot run git: {err}"))?;
    let changes = listed.ok_or("git diff-tree gave no output")??;
    if !status.success() {
        return Err(format!("git diff-tree failed for commit {commit}"));
    }
    Ok(changes)
}

/// The longest field of diff-tree's listing read (a path or a line of modes and ids).
const MAX_FIELD_BYTES: u64 = 16 * 1024;

/// The most changes listed (under the root or not) before the commit is refused.
const MAX_LISTED_CHANGES: usize = 10 * MAX_COMMIT_PATHS;

/// One NUL-terminated field of `reader`, at most [`MAX_FIELD_BYTES`]; `None` at the end.
fn field(reader: &mut impl std::io::BufRead) -> Result<Option<Vec<u8>>, String> {
    use std::io::{BufRead, Read};
    let mut bytes = Vec::new();
    let read = reader
        .by_ref()
        .take(MAX_FIELD_BYTES + 1)
        .read_until(0, &mut bytes)
        .map_err(|err| format!("cannot read git diff-tree's listing: {err}"))?;
    if read == 0 {
        return Ok(None);
    }
    if bytes.last() != Some(&0) {
        return Err("git diff-tree gave a field that is too long".to_owned());
    }
    bytes.pop();
    Ok(Some(bytes))
}

/// The changes `diff-tree -z` lists under `prefix`, at most [`MAX_COMMIT_PATHS`] of them.
fn list_changes(
    mut reader: impl std::io::BufRead,
    commit: &str,
    prefix: &str,
) -> Result<Vec<CommitChange>, String> {
    let mut changes = Vec::new();
    let mut listed = 0;
    while let Some(meta) = field(&mut reader)? {
        if meta.is_empty() {
            continue;
        }
        listed += 1;
        if listed > MAX_LISTED_CHANGES {
            return Err(format!(
                "commit {commit} changed more than {MAX_LISTED_CHANGES} files"
            ));
        }
        let meta = String::from_utf8(meta)
            .map_err(|_| "git diff-tree gave a line that is not UTF-8".to_owned())?;
        let raw_path = field(&mut reader)?.ok_or("git diff-tree gave a change without a path")?;
        let path = String::from_utf8(raw_path)
            .map_err(|_| format!("commit {commit} changed a path that is not UTF-8"))?;
        let Some(rel) = path.strip_prefix(prefix) else {
            continue;
        };
        let parts: Vec<&str> = meta.trim_start_matches(':').split(' ').collect();
        let [old_mode, new_mode, old_sha, new_sha, _status] = parts[..] else {
            return Err(format!("git diff-tree gave an unexpected line {meta:?}"));
        };
        if changes.len() >= MAX_COMMIT_PATHS {
            return Err(format!(
                "commit {commit} changed more than {MAX_COMMIT_PATHS} files"
            ));
        }
        if !is_sha(old_sha) || !is_sha(new_sha) {
            return Err(format!("git diff-tree gave an unexpected line {meta:?}"));
        }
        let before = blob_mode(old_mode, rel)?.map(|mode| (old_sha.to_owned(), mode));
        let after = blob_mode(new_mode, rel)?.map(|mode| (new_sha.to_owned(), mode));
        changes.push(CommitChange {
            path: rel.to_owned(),
            before,
            after,
        });
    }
    Ok(changes)
}
