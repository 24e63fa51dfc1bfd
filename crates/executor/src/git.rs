//! The `git` CLI: the `base.git_head` check and the commit made on success.
//!
//! The workspace is patch-writable, so git must not take anything from it but the files to
//! commit: a patch can fake a repository at the root (`HEAD`, `objects/`, `refs/`, `config`
//! with `core.fsmonitor = <cmd>`) or name a path that is pathspec magic (`:(glob)*`, `:!x`).
//! Hence [`HARDENING`], literal pathspecs, and discovery stopped above the root.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Config given on every git command line (it wins over every config file): a repository
/// is never discovered as a bare one implicitly (a patch cannot fake one at the root), no
/// fsmonitor command runs, no hook, no signing program, no untracked cache (a command
/// could have written it), and no attributes or excludes file named by config.
const HARDENING: [&str; 16] = [
    "-c",
    "safe.bareRepository=explicit",
    "-c",
    "core.fsmonitor=false",
    "-c",
    "core.hooksPath=/dev/null",
    "-c",
    "commit.gpgSign=false",
    "-c",
    "core.untrackedCache=false",
    "-c",
    "core.attributesFile=/dev/null",
    "-c",
    "core.excludesFile=/dev/null",
    "-c",
    "core.splitIndex=false",
];

fn git(root: &Path) -> Command {
    let mut command = Command::new("git");
    command.args(HARDENING);
    command
        // No automatic gc or maintenance: `git commit` would start it detached, in a session
        // of its own, where a command's sweep would take it for that command's orphan.
        .args(["-c", "gc.auto=0", "-c", "maintenance.auto=false"])
        .arg("-C")
        .arg(root)
        .env_clear()
        .envs(std::env::vars_os().filter(|(name, _)| name == "PATH"))
        // Neither the user's nor the system's config or attributes: only the repository's
        // own config, which the commands' change to is refused (see [`Identity`]).
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_ATTR_NOSYSTEM", "1")
        .env("HOME", "/nonexistent")
        .env("GIT_TERMINAL_PROMPT", "0")
        // Paths are file names, never pathspec magic or globs.
        .env("GIT_LITERAL_PATHSPECS", "1");
    // Discovery looks at the root only, never above it: a repository in a parent directory
    // (which a patch cannot see) is never the one committed to.
    if let Some(parent) = root.parent() {
        command.env("GIT_CEILING_DIRECTORIES", parent);
    }
    // A work tree whose `.git` is a real directory (patches may not touch it) is named
    // explicitly, so nothing else at the root is taken for the repository.
    let git_dir = root.join(".git");
    if std::fs::symlink_metadata(&git_dir).is_ok_and(|meta| meta.is_dir()) {
        command.env("GIT_DIR", git_dir).env("GIT_WORK_TREE", root);
    }
    command
}

fn output(command: &mut Command) -> Result<String, String> {
    let out = command
        .output()
        .map_err(|err| format!("cannot run git: {err}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Refuses unless the workspace's HEAD is `expected` (a full sha or a prefix of ≥ 7 chars).
pub fn check_head(root: &Path, expected: &str) -> Result<(), String> {
    let head = output(git(root).args(["rev-parse", "HEAD"]))
        .map_err(|err| format!("base.git_head is set but HEAD cannot be read: {err}"))?;
    let expected = expected.trim().to_ascii_lowercase();
    if expected.len() >= 7 && head.starts_with(&expected) {
        return Ok(());
    }
    Err(format!(
        "stale base: the patch expects HEAD {expected} but the workspace is at {head}"
    ))
}

/// Commits `paths` (absolute, inside `root`) and nothing else (`--only`: a change the user
/// had staged stays staged, out of the patch's commit) with the patch id as a trailer;
/// returns the sha.
pub fn commit(
    root: &Path,
    paths: &[PathBuf],
    message: &str,
    patch_id: &str,
) -> Result<String, String> {
    let relative: Vec<&Path> = paths
        .iter()
        .map(|path| path.strip_prefix(root).unwrap_or(path))
        .collect();
    let mut known = Vec::new();
    if !relative.is_empty() {
        output(git(root).args(["add", "-A", "--"]).args(&relative))
            .map_err(|err| format!("git add failed: {err}"))?;
        known = known_paths(root, &relative)?;
    }
    let message = format!("{}\n\nGhost-Patch-Id: {patch_id}\n", message.trim_end());
    output(
        git(root)
            .env("GIT_AUTHOR_NAME", "Ghost Runner")
            .env("GIT_AUTHOR_EMAIL", "ghost-runner@localhost")
            .env("GIT_COMMITTER_NAME", "Ghost Runner")
            .env("GIT_COMMITTER_EMAIL", "ghost-runner@localhost")
            .args([
                "commit",
                "--no-verify",
                "--allow-empty",
                "--only",
                "-q",
                "-m",
                &message,
                "--",
            ])
            .args(&known),
    )
    .map_err(|err| format!("git commit failed: {err}"))?;
    output(git(root).args(["rev-parse", "HEAD"]))
        .map_err(|err| format!("git rev-parse failed: {err}"))
}

/// Those of `paths` git knows after the `add` (in the index or in HEAD): `commit --only`
/// refuses a path it knows neither way (one the user had staged as new and the patch
/// deleted), and such a path changes nothing in the commit.
fn known_paths(root: &Path, paths: &[&Path]) -> Result<Vec<std::ffi::OsString>, String> {
    use std::os::unix::ffi::OsStringExt;
    let mut known = std::collections::BTreeSet::new();
    let in_index = bytes_output(git(root).args(["ls-files", "-z", "--"]).args(paths), &[0])
        .map_err(|err| format!("git ls-files failed: {err}"))?;
    known.extend(split_nul(&in_index));
    let has_head = output(git(root).args(["rev-parse", "--verify", "--quiet", "HEAD"])).is_ok();
    if has_head {
        let in_head = bytes_output(
            git(root)
                .args(["ls-tree", "-r", "-z", "--name-only", "HEAD", "--"])
                .args(paths),
            &[0],
        )
        .map_err(|err| format!("git ls-tree failed: {err}"))?;
        known.extend(split_nul(&in_head));
    }
    Ok(known
        .into_iter()
        .map(std::ffi::OsString::from_vec)
        .collect())
}

/// True when `root` is the top of a git work tree (its `.git` is a directory or a file).
pub fn is_work_tree(root: &Path) -> bool {
    std::fs::symlink_metadata(root.join(".git")).is_ok()
}

fn bytes_output(command: &mut Command, ok_codes: &[i32]) -> Result<Vec<u8>, String> {
    let out = command
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|err| format!("cannot run git: {err}"))?;
    if !out
        .status
        .code()
        .is_some_and(|code| ok_codes.contains(&code))
    {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
    }
    Ok(out.stdout)
}

fn split_nul(bytes: &[u8]) -> Vec<Vec<u8>> {
    bytes
        .split(|byte| *byte == 0)
        .filter(|part| !part.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

/// The untracked paths the work tree's `.gitignore` files ignore now, a directory whose whole
/// content is ignored named once with a trailing `/`. Only `.gitignore` files count: not
/// `.git/info/exclude` nor the user's excludes file (neither is in the snapshot, so a
/// command could change what they hide).
pub fn ignored(root: &Path) -> Result<Vec<Vec<u8>>, String> {
    let out = bytes_output(
        git(root).args([
            "ls-files",
            "-z",
            "--others",
            "--ignored",
            "--exclude-per-directory=.gitignore",
            "--directory",
        ]),
        &[0],
    )
    .map_err(|err| format!("git ls-files failed: {err}"))?;
    Ok(split_nul(&out))
}

/// An ignored path and the file of the rule that ignores it.
pub type IgnoreSource = (Vec<u8>, Vec<u8>);

/// For each of `paths` that an ignore rule matches: the path and the file the rule is in
/// (relative to the root for the work tree's `.gitignore` files).
pub fn ignore_sources(root: &Path, paths: &[Vec<u8>]) -> Result<Vec<IgnoreSource>, String> {
    use std::io::Write;
    if paths.is_empty() {
        return Ok(Vec::new());
    }
    // `check-ignore` takes no literal pathspecs; a `./` in front keeps a name such as
    // `:(top)x` from being read as pathspec magic.
    let mut input = Vec::new();
    for path in paths {
        input.extend_from_slice(b"./");
        input.extend_from_slice(path);
        input.push(0);
    }
    let mut child = git(root)
        .env_remove("GIT_LITERAL_PATHSPECS")
        .args(["check-ignore", "-z", "-v", "--stdin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|err| format!("cannot run git: {err}"))?;
    // Written from a thread while this one reads: no deadlock on a large list.
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
    // 0: some paths ignored; 1: none.
    if !matches!(out.status.code(), Some(0 | 1)) {
        return Err(format!(
            "git check-ignore failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    // Records of four fields: source, line number, pattern, path.
    let fields: Vec<&[u8]> = out.stdout.split(|byte| *byte == 0).collect();
    Ok(fields
        .chunks_exact(4)
        .filter(|record| !record[0].is_empty())
        .map(|record| {
            let path = record[3].strip_prefix(b"./").unwrap_or(record[3]);
            (path.to_vec(), record[0].to_vec())
        })
        .collect())
}

/// [`Identity::changed_from`]'s word for a `.git/config` changed in place: the commit is
/// refused, but git still lists the same work tree's ignored paths for the rollback.
pub const CONFIG_CHANGED: &str = ".git/config was changed";

/// What the root's `.git` is: its kind, device and inode, and a hash of `.git/config` (which
/// names the filters, hooks and work tree git would obey). A patch's commands may run git
/// (`git add`), but if they change this, the git run for the rollback's listing and the
/// commit would take orders from them: the patch is refused and rolled back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity(Option<(bool, u64, u64, Option<[u8; 32]>)>);

impl Identity {
    /// `.git` at `root` now (`None` inside when there is none).
    pub fn of(root: &Path) -> Self {
        use sha2::Digest;
        use std::os::unix::fs::MetadataExt;
        let git_dir = root.join(".git");
        let Ok(meta) = std::fs::symlink_metadata(&git_dir) else {
            return Self(None);
        };
        let config = meta
            .is_dir()
            .then(|| std::fs::read(git_dir.join("config")).ok())
            .flatten()
            .map(|bytes| sha2::Sha256::digest(&bytes).into());
        Self(Some((meta.is_dir(), meta.dev(), meta.ino(), config)))
    }

    /// Names the difference from `before`, if any.
    pub fn changed_from(&self, before: &Self) -> Option<&'static str> {
        match (&before.0, &self.0) {
            (a, b) if a == b => None,
            (Some(_), None) => Some(".git was removed"),
            (None, Some(_)) => Some(".git was made"),
            (Some((_, dev, ino, _)), Some((dir, now_dev, now_ino, _)))
                if !dir || dev != now_dev || ino != now_ino =>
            {
                Some(".git was replaced")
            }
            _ => Some(CONFIG_CHANGED),
        }
    }
}

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

/// What one path under `.git` held when a [`Guard`] was taken.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Held {
    File(Vec<u8>, u32),
    Symlink(PathBuf),
    Dir,
}

/// Files under `.git` a [`Guard`] keeps: the ones git obeys that a command could poison.
const GUARDED_FILES: [&str; 2] = ["config", "config.worktree"];
/// Directories under `.git` a [`Guard`] keeps whole (hooks, attributes and excludes).
const GUARDED_DIRS: [&str; 2] = ["info", "hooks"];
/// Most entries a [`Guard`] keeps.
const GUARD_MAX_ENTRIES: usize = 1_000;
/// Most bytes a [`Guard`] keeps.
const GUARD_MAX_BYTES: u64 = 16 << 20;
/// The first line of a [`Guard`]'s durable copy.
const GUARD_MAGIC: &[u8] = b"ghost-git-guard 1\n";

/// Copies of what git obeys under the root's `.git` (`config`, `config.worktree`, `info/`,
/// `hooks/`), taken before a patch's commands or an agent run in the (writable) workspace.
/// A patch may never change them: a change fails the patch, naming the path, and the
/// rollback puts the copies back, so a filter or hook planted by one patch is never obeyed
/// by the next patch's `git add` (which runs outside the sandbox).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guard {
    held: std::collections::BTreeMap<PathBuf, Held>,
}

impl Guard {
    /// The guarded paths of `root/.git` now; `Ok(None)` when `.git` is not a directory.
    pub fn take(root: &Path) -> Result<Option<Self>, String> {
        let git_dir = root.join(".git");
        if !std::fs::symlink_metadata(&git_dir).is_ok_and(|meta| meta.is_dir()) {
            return Ok(None);
        }
        let mut held = std::collections::BTreeMap::new();
        let mut bytes = 0u64;
        for name in GUARDED_FILES.iter().chain(&GUARDED_DIRS) {
            keep(&git_dir, Path::new(name), 0, &mut held, &mut bytes)?;
        }
        Ok(Some(Self { held }))
    }

    /// The copies as bytes, to be kept durably beside a snapshot (so a restart after a crash
    /// can put them back): a header line, then per path its kind, its length-prefixed path
    /// and, for a file, its mode and length-prefixed bytes (for a symlink its target).
    pub fn encode(&self) -> Vec<u8> {
        use std::os::unix::ffi::OsStrExt;
        let mut out = GUARD_MAGIC.to_vec();
        let put = |out: &mut Vec<u8>, bytes: &[u8]| {
            out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
            out.extend_from_slice(bytes);
        };
        for (rel, held) in &self.held {
            match held {
                Held::Dir => out.push(b'd'),
                Held::Symlink(_) => out.push(b'l'),
                Held::File(..) => out.push(b'f'),
            }
            put(&mut out, rel.as_os_str().as_bytes());
            match held {
                Held::Dir => {}
                Held::Symlink(target) => put(&mut out, target.as_os_str().as_bytes()),
                Held::File(bytes, mode) => {
                    out.extend_from_slice(&mode.to_le_bytes());
                    put(&mut out, bytes);
                }
            }
        }
        out
    }

    /// The copies [`Guard::encode`] wrote; an error names what is wrong with `bytes`. Every
    /// path must be relative and below a guarded name (a damaged or planted file cannot make
    /// a restore write elsewhere).
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        use std::os::unix::ffi::OsStrExt;
        let mut rest = bytes
            .strip_prefix(GUARD_MAGIC)
            .ok_or("the kept .git copies have no header")?;
        let take = |rest: &mut &[u8], len: usize| -> Result<Vec<u8>, String> {
            if rest.len() < len {
                return Err("the kept .git copies are cut short".to_owned());
            }
            let (head, tail) = rest.split_at(len);
            *rest = tail;
            Ok(head.to_vec())
        };
        let take_len = |rest: &mut &[u8]| -> Result<usize, String> {
            let raw = take(rest, 8)?;
            let mut word = [0u8; 8];
            word.copy_from_slice(&raw);
            usize::try_from(u64::from_le_bytes(word))
                .ok()
                .filter(|len| *len as u64 <= GUARD_MAX_BYTES + 4096)
                .ok_or_else(|| "the kept .git copies hold a length out of range".to_owned())
        };
        let mut held = std::collections::BTreeMap::new();
        while let Some((&kind, tail)) = rest.split_first() {
            rest = tail;
            let len = take_len(&mut rest)?;
            let rel = PathBuf::from(std::ffi::OsStr::from_bytes(&take(&mut rest, len)?));
            let below_guarded = rel
                .components()
                .all(|part| matches!(part, std::path::Component::Normal(_)))
                && rel.components().next().is_some_and(|first| {
                    GUARDED_FILES
                        .iter()
                        .chain(&GUARDED_DIRS)
                        .any(|name| first.as_os_str() == std::ffi::OsStr::new(name))
                });
            if !below_guarded {
                return Err(format!(
                    "the kept .git copies name {} outside config, info/ and hooks/",
                    rel.display()
                ));
            }
            let entry = match kind {
                b'd' => Held::Dir,
                b'l' => {
                    let len = take_len(&mut rest)?;
                    Held::Symlink(PathBuf::from(std::ffi::OsStr::from_bytes(&take(
                        &mut rest, len,
                    )?)))
                }
                b'f' => {
                    let raw = take(&mut rest, 4)?;
                    let mut word = [0u8; 4];
                    word.copy_from_slice(&raw);
                    let mode = u32::from_le_bytes(word) & 0o7777;
                    let len = take_len(&mut rest)?;
                    Held::File(take(&mut rest, len)?, mode)
                }
                other => {
                    return Err(format!(
                        "the kept .git copies hold an unknown kind {other:#x}"
                    ));
                }
            };
            if held.len() >= GUARD_MAX_ENTRIES {
                return Err("the kept .git copies hold too many entries".to_owned());
            }
            held.insert(rel, entry);
        }
        Ok(Self { held })
    }

    /// The first guarded path that differs now, as `.git/<path>`.
    pub fn changed(&self, root: &Path) -> Option<String> {
        let now = match Self::take(root) {
            Ok(Some(now)) => now,
            Ok(None) => return Some(".git".to_owned()),
            Err(err) => return Some(format!(".git ({err})")),
        };
        let paths: std::collections::BTreeSet<&PathBuf> =
            self.held.keys().chain(now.held.keys()).collect();
        paths
            .into_iter()
            .find(|path| self.held.get(*path) != now.held.get(*path))
            .map(|path| format!(".git/{}", path.display()))
    }

    /// Puts the guarded paths back as they were: what was added is removed, what changed
    /// or went is written again. Returns the paths restored, or what could not be.
    pub fn restore(&self, root: &Path) -> Result<u32, String> {
        let git_dir = root.join(".git");
        if !std::fs::symlink_metadata(&git_dir).is_ok_and(|meta| meta.is_dir()) {
            return Err(".git is no longer a directory".to_owned());
        }
        let mut count = 0u32;
        // Removed deepest first: whatever is not held, or held as something else.
        for name in GUARDED_FILES.iter().chain(&GUARDED_DIRS) {
            let path = git_dir.join(name);
            let top = Path::new(name).to_path_buf();
            match (self.held.get(&top), std::fs::symlink_metadata(&path)) {
                (_, Err(_)) => {}
                (Some(Held::Dir), Ok(meta)) if meta.is_dir() => {
                    count += prune_dir(&git_dir, &top, &self.held)?;
                }
                (_, Ok(meta)) => {
                    if self
                        .held
                        .get(&top)
                        .is_some_and(|held| same(held, &path, &meta))
                    {
                        continue;
                    }
                    remove_any(&path, &meta)?;
                    count += 1;
                }
            }
        }
        for (rel, held) in &self.held {
            let path = git_dir.join(rel);
            if let Ok(meta) = std::fs::symlink_metadata(&path) {
                if same(held, &path, &meta) {
                    continue;
                }
                remove_any(&path, &meta)?;
            }
            let shown = format!(".git/{}", rel.display());
            match held {
                Held::Dir => std::fs::create_dir(&path),
                Held::Symlink(target) => std::os::unix::fs::symlink(target, &path),
                Held::File(bytes, mode) => {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::write(&path, bytes).and_then(|()| {
                        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode))
                    })
                }
            }
            .map_err(|err| format!("cannot restore {shown}: {err}"))?;
            count += 1;
        }
        match Self::take(root) {
            Ok(Some(after)) if after == *self => Ok(count),
            _ => Err("the guarded files under .git could not be restored".to_owned()),
        }
    }
}

fn same(held: &Held, path: &Path, meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    match held {
        Held::Dir => meta.is_dir(),
        Held::Symlink(target) => {
            meta.file_type().is_symlink()
                && std::fs::read_link(path).is_ok_and(|now| now == *target)
        }
        Held::File(bytes, mode) => {
            meta.is_file()
                && meta.permissions().mode() & 0o7777 == *mode
                && std::fs::read(path).is_ok_and(|now| now == *bytes)
        }
    }
}

fn remove_any(path: &Path, meta: &std::fs::Metadata) -> Result<(), String> {
    if meta.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    }
    .map_err(|err| format!("cannot remove {}: {err}", path.display()))
}

/// Removes under `git_dir/rel` (a directory) what `held` does not have as it is now.
fn prune_dir(
    git_dir: &Path,
    rel: &Path,
    held: &std::collections::BTreeMap<PathBuf, Held>,
) -> Result<u32, String> {
    let mut count = 0;
    let entries = std::fs::read_dir(git_dir.join(rel))
        .map_err(|err| format!("cannot list .git/{}: {err}", rel.display()))?;
    for entry in entries.take(GUARD_MAX_ENTRIES * 4) {
        let entry = entry.map_err(|err| format!("cannot list .git/{}: {err}", rel.display()))?;
        let child = rel.join(entry.file_name());
        let path = git_dir.join(&child);
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        match held.get(&child) {
            Some(Held::Dir) if meta.is_dir() => count += prune_dir(git_dir, &child, held)?,
            Some(kept) if same(kept, &path, &meta) => {}
            _ => {
                remove_any(&path, &meta)?;
                count += 1;
            }
        }
    }
    Ok(count)
}

/// Records `git_dir/rel` (and, for a directory, what is under it) into `held`, bounded.
fn keep(
    git_dir: &Path,
    rel: &Path,
    depth: usize,
    held: &mut std::collections::BTreeMap<PathBuf, Held>,
    bytes: &mut u64,
) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let path = git_dir.join(rel);
    let shown = || format!(".git/{}", rel.display());
    let Ok(meta) = std::fs::symlink_metadata(&path) else {
        return Ok(());
    };
    if held.len() >= GUARD_MAX_ENTRIES || depth > 8 {
        return Err(format!(
            "{} holds more than {GUARD_MAX_ENTRIES} entries or is nested too deep to be kept",
            shown()
        ));
    }
    if meta.file_type().is_symlink() {
        let target =
            std::fs::read_link(&path).map_err(|err| format!("cannot read {}: {err}", shown()))?;
        held.insert(rel.to_path_buf(), Held::Symlink(target));
    } else if meta.is_dir() {
        held.insert(rel.to_path_buf(), Held::Dir);
        let entries =
            std::fs::read_dir(&path).map_err(|err| format!("cannot list {}: {err}", shown()))?;
        for entry in entries {
            let entry = entry.map_err(|err| format!("cannot list {}: {err}", shown()))?;
            keep(
                git_dir,
                &rel.join(entry.file_name()),
                depth + 1,
                held,
                bytes,
            )?;
        }
    } else if meta.is_file() {
        *bytes = bytes.saturating_add(meta.len());
        if *bytes > GUARD_MAX_BYTES {
            return Err(format!(
                "the files under .git/config, info/ and hooks/ hold more than {GUARD_MAX_BYTES} bytes"
            ));
        }
        let data = std::fs::read(&path).map_err(|err| format!("cannot read {}: {err}", shown()))?;
        held.insert(
            rel.to_path_buf(),
            Held::File(data, meta.permissions().mode() & 0o7777),
        );
    } else {
        return Err(format!("{} is not a file, directory or symlink", shown()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guards_durable_copy_reads_back_the_same_and_refuses_paths_outside_it() {
        let dir = tempfile::tempdir().unwrap();
        let git_dir = dir.path().join(".git");
        std::fs::create_dir_all(git_dir.join("hooks")).unwrap();
        std::fs::create_dir_all(git_dir.join("info")).unwrap();
        std::fs::write(git_dir.join("config"), "[core]\n").unwrap();
        std::fs::write(git_dir.join("hooks/pre-commit"), "#!/bin/sh\n").unwrap();
        std::os::unix::fs::symlink("../config", git_dir.join("info/link")).unwrap();
        let guard = Guard::take(dir.path()).unwrap().unwrap();
        assert_eq!(Guard::decode(&guard.encode()).unwrap(), guard);
        let mut planted = GUARD_MAGIC.to_vec();
        planted.push(b'f');
        planted.extend_from_slice(&(12u64).to_le_bytes());
        planted.extend_from_slice(b"../../etc/x\n");
        assert!(Guard::decode(&planted).unwrap_err().contains("outside"));
        let encoded = guard.encode();
        assert!(Guard::decode(&encoded[..encoded.len() - 1]).is_err());
    }
}
