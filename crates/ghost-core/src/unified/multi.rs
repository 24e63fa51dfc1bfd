//! Git-style (or plain `---`/`+++`) multi-file unified diffs: each file's section, its paths
//! (renames, creations, deletions), modes and hunks.

use super::{DiffError, Hunk, read_hunks, split_lines, syntax};

/// One file's part of a multi-file diff.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileDiff {
    /// Path before (`None`: the file is created).
    pub old_path: Option<String>,
    /// Path after (`None`: the file is deleted).
    pub new_path: Option<String>,
    /// Permission bits after, when the diff sets them (new file or mode change).
    pub new_mode: Option<u32>,
    /// Content changes.
    pub hunks: Vec<Hunk>,
}

fn unquote(raw: &str) -> String {
    let raw = raw.trim_end_matches('\r');
    let Some(inner) = raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) else {
        return raw.split('\t').next().unwrap_or(raw).to_owned();
    };
    let mut bytes = Vec::new();
    let mut chars = inner.bytes().peekable();
    while let Some(byte) = chars.next() {
        if byte != b'\\' {
            bytes.push(byte);
            continue;
        }
        match chars.next() {
            Some(b'n') => bytes.push(b'\n'),
            Some(b't') => bytes.push(b'\t'),
            Some(digit @ b'0'..=b'7') => {
                let mut value = u32::from(digit - b'0');
                for _ in 0..2 {
                    if let Some(next @ b'0'..=b'7') = chars.peek().copied() {
                        value = value * 8 + u32::from(next - b'0');
                        chars.next();
                    }
                }
                bytes.push(u8::try_from(value).unwrap_or(b'?'));
            }
            Some(other) => bytes.push(other),
            None => {}
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

fn strip_side(path: &str, prefix: &str) -> Option<String> {
    let path = unquote(path);
    if path == "/dev/null" {
        return None;
    }
    Some(path.strip_prefix(prefix).map(str::to_owned).unwrap_or(path))
}

fn parse_mode(line: usize, raw: &str) -> Result<u32, DiffError> {
    let mode = u32::from_str_radix(raw.trim(), 8)
        .map_err(|_| syntax(line, format!("bad file mode {raw:?}")))?;
    if mode & 0o170000 == 0o120000 || mode & 0o170000 == 0o160000 {
        return Err(syntax(line, "symlinks and submodules cannot be patched"));
    }
    Ok(mode & 0o777)
}

/// Paths from `diff --git a/X b/Y` when no other header names them.
fn git_line_paths(rest: &str) -> (String, String) {
    let len = rest.len();
    if len > 5 && (len - 5).is_multiple_of(2) {
        let half = (len - 5) / 2;
        // `get`, not indexing: a middle that falls inside a multi-byte character is no match.
        if let (Some(old), Some(" b/"), Some(new)) = (
            rest.get(2..2 + half),
            rest.get(2 + half..5 + half),
            rest.get(5 + half..),
        ) && rest.starts_with("a/")
            && old == new
        {
            return (old.to_owned(), new.to_owned());
        }
    }
    match rest.split_once(" b/") {
        Some((old, new)) => (old.trim_start_matches("a/").to_owned(), new.to_owned()),
        None => (rest.to_owned(), rest.to_owned()),
    }
}

/// A file section's extended header (modes, renames) through its `---`/`+++` lines and
/// hunks; `at` moves past them. Returns whether the file is created and whether deleted.
fn file_header(
    lines: &[&str],
    at: &mut usize,
    file: &mut FileDiff,
) -> Result<(bool, bool), DiffError> {
    let mut deleted = false;
    let mut created = false;
    while *at < lines.len() {
        let line = lines[*at].trim_end_matches('\r');
        let number = *at + 1;
        if let Some(mode) = line.strip_prefix("new file mode ") {
            file.new_mode = Some(parse_mode(number, mode)?);
            created = true;
        } else if line.starts_with("deleted file mode ") {
            deleted = true;
        } else if let Some(mode) = line.strip_prefix("new mode ") {
            file.new_mode = Some(parse_mode(number, mode)?);
        } else if line.starts_with("old mode ")
            || line.starts_with("index ")
            || line.starts_with("similarity index ")
            || line.starts_with("dissimilarity index ")
        {
        } else if let Some(from) = line.strip_prefix("rename from ") {
            file.old_path = Some(unquote(from));
        } else if let Some(to) = line.strip_prefix("rename to ") {
            file.new_path = Some(unquote(to));
        } else if line.starts_with("copy from ") || line.starts_with("copy to ") {
            return Err(syntax(
                number,
                "copies are not supported; send the new file instead",
            ));
        } else if line.starts_with("Binary files ") || line == "GIT binary patch" {
            return Err(syntax(
                number,
                "binary diffs are not supported; use a `write` edit",
            ));
        } else if let Some(old) = line.strip_prefix("--- ") {
            let Some(new) = lines.get(*at + 1).and_then(|l| l.strip_prefix("+++ ")) else {
                return Err(syntax(number, "a --- line must be followed by +++"));
            };
            let old = strip_side(old, "a/");
            let new = strip_side(new, "b/");
            created |= old.is_none();
            deleted |= new.is_none();
            if file.old_path.is_none() {
                file.old_path = old;
            }
            if file.new_path.is_none() {
                file.new_path = new;
            }
            let (hunks, end) = read_hunks(lines, *at + 2)?;
            file.hunks = hunks;
            *at = end;
            break;
        } else {
            break;
        }
        *at += 1;
    }
    Ok((created, deleted))
}

/// The file's paths from its header: the `diff --git` paths fill the gaps; a created file has
/// no old path, a deleted one no new path, and one of them must remain.
fn settle_paths(
    file: &mut FileDiff,
    git_paths: Option<(String, String)>,
    (created, deleted): (bool, bool),
    at: usize,
) -> Result<(), DiffError> {
    if let Some((old, new)) = git_paths {
        if file.old_path.is_none() && !created {
            file.old_path = Some(unquote(&old));
        }
        if file.new_path.is_none() && !deleted {
            file.new_path = Some(unquote(&new));
        }
    }
    if created {
        file.old_path = None;
    }
    if deleted {
        file.new_path = None;
    }
    if file.old_path.is_none() && file.new_path.is_none() {
        return Err(syntax(at, "a file section names no path"));
    }
    Ok(())
}

/// Parses a git-style (or plain `---`/`+++`) multi-file unified diff.
pub fn parse_multi(diff: &str) -> Result<Vec<FileDiff>, DiffError> {
    let lines = split_lines(diff);
    let lines = &lines[..];
    let mut files = Vec::new();
    let mut at = 0;
    while at < lines.len() {
        let line = lines[at].trim_end_matches('\r');
        if line.trim().is_empty() || !(line.starts_with("diff --git ") || line.starts_with("--- "))
        {
            if files.is_empty() || line.trim().is_empty() {
                at += 1;
                continue;
            }
            return Err(syntax(at + 1, format!("unexpected line {line:?}")));
        }
        let mut file = FileDiff::default();
        let mut git_paths = None;
        if let Some(rest) = line.strip_prefix("diff --git ") {
            git_paths = Some(git_line_paths(rest));
            at += 1;
        }
        let (created, deleted) = file_header(lines, &mut at, &mut file)?;
        settle_paths(&mut file, git_paths, (created, deleted), at)?;
        files.push(file);
    }
    if files.is_empty() {
        return Err(syntax(1, "the document contains no file diff"));
    }
    Ok(files)
}
