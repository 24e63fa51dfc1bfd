//! V4A `*** Begin Patch` documents (the `apply_patch` format): Add, Delete, Update, Move.
//!
//! An Update's chunks become [`Hunk`]s without line numbers: `@@ text` lines are anchors that
//! must be found (in order) before the chunk, and `*** End of File` pins a chunk to the end.

use crate::unified::{DiffError, Hunk, HunkLine};

/// One file operation of a V4A document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum V4aFile {
    /// `*** Add File:` — a new file with these contents.
    Add {
        /// The new file.
        path: String,
        /// Its contents (each `+` line plus a newline).
        contents: String,
    },
    /// `*** Delete File:`.
    Delete {
        /// The file to remove.
        path: String,
    },
    /// `*** Update File:`, optionally with `*** Move to:`.
    Update {
        /// The file to change.
        path: String,
        /// Where it moves, if anywhere.
        move_to: Option<String>,
        /// Its chunks.
        hunks: Vec<Hunk>,
    },
}

fn syntax(line: usize, message: impl Into<String>) -> DiffError {
    DiffError::Syntax {
        line,
        message: message.into(),
    }
}

/// True when `text` looks like a V4A document.
pub fn is_v4a(text: &str) -> bool {
    text.trim_start().starts_with("*** Begin Patch")
}

/// Parses a whole `*** Begin Patch` … `*** End Patch` document.
pub fn parse(text: &str) -> Result<Vec<V4aFile>, DiffError> {
    let lines: Vec<&str> = text.lines().collect();
    let mut at = lines
        .iter()
        .position(|l| !l.trim().is_empty())
        .ok_or_else(|| syntax(1, "empty patch document"))?;
    if lines[at].trim() != "*** Begin Patch" {
        return Err(syntax(at + 1, "expected *** Begin Patch"));
    }
    at += 1;
    let mut files = Vec::new();
    loop {
        let Some(line) = lines.get(at) else {
            return Err(syntax(at + 1, "missing *** End Patch"));
        };
        let number = at + 1;
        let line = line.trim_end();
        if line == "*** End Patch" {
            break;
        }
        if let Some(path) = line.strip_prefix("*** Add File: ") {
            at += 1;
            let mut contents = String::new();
            while let Some(body) = lines.get(at).and_then(|l| l.strip_prefix('+')) {
                contents.push_str(body);
                contents.push('\n');
                at += 1;
            }
            files.push(V4aFile::Add {
                path: path.trim().to_owned(),
                contents,
            });
        } else if let Some(path) = line.strip_prefix("*** Delete File: ") {
            at += 1;
            files.push(V4aFile::Delete {
                path: path.trim().to_owned(),
            });
        } else if let Some(path) = line.strip_prefix("*** Update File: ") {
            at += 1;
            let mut move_to = None;
            if let Some(to) = lines.get(at).and_then(|l| l.strip_prefix("*** Move to: ")) {
                move_to = Some(to.trim().to_owned());
                at += 1;
            }
            let (hunks, end) = read_chunks(&lines, at)?;
            at = end;
            if hunks.is_empty() && move_to.is_none() {
                return Err(syntax(
                    number,
                    format!("update of {} has no changes", path.trim()),
                ));
            }
            files.push(V4aFile::Update {
                path: path.trim().to_owned(),
                move_to,
                hunks,
            });
        } else if line.trim().is_empty() {
            at += 1;
        } else {
            return Err(syntax(
                number,
                format!(
                    "expected *** Add File, *** Update File, *** Delete File or *** End Patch, got {line:?}"
                ),
            ));
        }
    }
    if files.is_empty() {
        return Err(syntax(1, "the patch document changes no file"));
    }
    Ok(files)
}

fn read_chunks(lines: &[&str], mut at: usize) -> Result<(Vec<Hunk>, usize), DiffError> {
    let mut hunks: Vec<Hunk> = Vec::new();
    let mut current = Hunk::default();
    let mut has_body = false;
    while let Some(line) = lines.get(at) {
        if line.starts_with("*** ") && line.trim_end() != "*** End of File" {
            break;
        }
        if line.trim_end() == "*** End of File" {
            current.at_eof = true;
            at += 1;
            continue;
        }
        if let Some(anchor) = line.strip_prefix("@@") {
            if has_body {
                hunks.push(std::mem::take(&mut current));
                has_body = false;
            }
            if current.header.is_empty() {
                current.header = (*line).to_owned();
            }
            let anchor = anchor.trim();
            if !anchor.is_empty() {
                current.anchors.push(anchor.to_owned());
            }
            at += 1;
            continue;
        }
        let parsed = match line.chars().next() {
            Some('+') => HunkLine::Add(line[1..].to_owned()),
            Some('-') => HunkLine::Remove(line[1..].to_owned()),
            Some(' ') => HunkLine::Context(line[1..].to_owned()),
            None => HunkLine::Context(String::new()),
            Some(_) => {
                return Err(syntax(
                    at + 1,
                    format!("chunk lines start with ' ', '-' or '+', got {line:?}"),
                ));
            }
        };
        if current.header.is_empty() {
            current.header = "@@".to_owned();
        }
        current.lines.push(parsed);
        has_body = true;
        at += 1;
    }
    if has_body {
        hunks.push(current);
    }
    Ok((hunks, at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unified::apply_hunks;

    #[test]
    fn documents_with_every_operation_parse_and_apply() {
        let doc = "*** Begin Patch\n*** Add File: new.txt\n+hello\n*** Delete File: old.txt\n\
*** Update File: src/a.py\n*** Move to: src/b.py\n@@ def f():\n     x = 1\n-    return x\n+    return x + 1\n*** End Patch\n";
        let files = parse(doc).unwrap();
        assert_eq!(files.len(), 3);
        let V4aFile::Update { hunks, move_to, .. } = &files[2] else {
            panic!("expected an update");
        };
        assert_eq!(move_to.as_deref(), Some("src/b.py"));
        let original = "def g():\n    x = 1\n    return x\ndef f():\n    x = 1\n    return x\n";
        let applied = apply_hunks(original, hunks).unwrap();
        assert_eq!(
            applied.text,
            "def g():\n    x = 1\n    return x\ndef f():\n    x = 1\n    return x + 1\n"
        );
    }

    #[test]
    fn malformed_documents_name_the_line() {
        let err = parse("*** Begin Patch\n*** Frobnicate: x\n*** End Patch").unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
        assert!(parse("*** Begin Patch\n*** Delete File: x\n").is_err());
    }
}
