//! The guard of `.git`'s config, info and hooks: what an agent or a command may not change
//! there is kept before it runs and put back after (and after a crash).

use std::path::{Path, PathBuf};

/// What one path under `.git` held when a [`Guard`] was taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Held {
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
pub(super) const GUARD_MAGIC: &[u8] = b"ghost-git-guard 1\n";

/// Copies of what git obeys under the root's `.git` (`config`, `config.worktree`, `info/`,
/// `hooks/`), taken before a patch's commands or an agent run in the (writable) workspace.
/// A patch may never change them: a change fails the patch, naming the path, and the
/// rollback puts the copies back, so a filter or hook planted by one patch is never obeyed
/// by the next patch's `git add` (which runs outside the sandbox).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guard {
    pub(super) held: std::collections::BTreeMap<PathBuf, Held>,
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

pub(super) fn same(held: &Held, path: &Path, meta: &std::fs::Metadata) -> bool {
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
