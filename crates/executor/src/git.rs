//! The `git` CLI: the `base.git_head` check and the commit made on success.
//!
//! The workspace is patch-writable, so git must not take anything from it but the files to
//! commit: a patch can fake a repository at the root (`HEAD`, `objects/`, `refs/`, `config`
//! with `core.fsmonitor = <cmd>`) or name a path that is pathspec magic (`:(glob)*`, `:!x`).
//! Hence [`HARDENING`], literal pathspecs, and discovery stopped above the root.

mod changes;
mod guard;

use std::path::{Path, PathBuf};
use std::process::Command;

pub use self::changes::{blob_id, blobs, commit_changes};
pub use self::guard::Guard;

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

#[cfg(test)]
mod tests {
    use super::guard::GUARD_MAGIC;
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
