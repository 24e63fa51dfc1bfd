//! Every edit format normalised into one list of file operations.
//!
//! `edits`, a git-style unified diff and a V4A document all become [`FileOp`]s; the executor
//! applies only these. Text transforms ([`replace_text`], [`apply_hunks`]) are pure.

use crate::ids::RelPath;
use crate::ladder::{MatchError, MatchStep};
use crate::patch::{Edit, Patch};
use crate::unified::{self, Applied, DiffError, Hunk, HunkLine};
use crate::v4a::{self, V4aFile};

pub use crate::unified::apply_hunks;

/// One normalised file operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileOp {
    /// Create or overwrite a file.
    Write {
        /// The file.
        path: RelPath,
        /// Its whole new contents.
        contents: String,
    },
    /// Create a file that must not exist yet.
    Create {
        /// The file.
        path: RelPath,
        /// Its contents.
        contents: String,
    },
    /// Replace one unique occurrence of `search` (found with the ladder).
    Replace {
        /// The file.
        path: RelPath,
        /// What to find.
        search: String,
        /// What to put there.
        replace: String,
    },
    /// Apply hunks (from a diff or a V4A update) to an existing file.
    Hunks {
        /// The file.
        path: RelPath,
        /// The hunks, in file order.
        hunks: Vec<Hunk>,
    },
    /// Remove a file.
    Delete {
        /// The file.
        path: RelPath,
    },
    /// Move a file; the destination must not exist.
    Rename {
        /// Current path.
        from: RelPath,
        /// New path.
        to: RelPath,
    },
    /// Set a file's permission bits (0..=0o777).
    Chmod {
        /// The file.
        path: RelPath,
        /// The bits.
        mode: u32,
    },
    /// Create a directory and its parents.
    Mkdir {
        /// The directory.
        path: RelPath,
    },
}

impl FileOp {
    /// The operation name shown in reports.
    pub fn op(&self) -> &'static str {
        match self {
            Self::Write { .. } => "write",
            Self::Create { .. } => "create",
            Self::Replace { .. } => "replace",
            Self::Hunks { .. } => "diff",
            Self::Delete { .. } => "delete",
            Self::Rename { .. } => "rename",
            Self::Chmod { .. } => "chmod",
            Self::Mkdir { .. } => "mkdir",
        }
    }

    /// The path changed (the destination of a rename).
    pub fn path(&self) -> &RelPath {
        match self {
            Self::Write { path, .. }
            | Self::Create { path, .. }
            | Self::Replace { path, .. }
            | Self::Hunks { path, .. }
            | Self::Delete { path }
            | Self::Chmod { path, .. }
            | Self::Mkdir { path } => path,
            Self::Rename { to, .. } => to,
        }
    }
}

/// Why a patch could not be turned into file operations.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileOpError {
    /// An edit is unusable; `field` is its JSON pointer.
    #[error("{field}: {message}")]
    Edit {
        /// JSON pointer of the offending field, e.g. `/edits/2/mode`.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The `patch` document is malformed.
    #[error("/patch: {0}")]
    Document(#[from] DiffError),
    /// A path in the `patch` document is not acceptable.
    #[error("/patch: path {path:?}: {message}")]
    Path {
        /// The path as written.
        path: String,
        /// Why it was refused.
        message: String,
    },
}

fn doc_path(raw: &str) -> Result<RelPath, FileOpError> {
    RelPath::parse(raw).map_err(|err| FileOpError::Path {
        path: raw.to_owned(),
        message: err.to_string(),
    })
}

/// Parses an octal mode like `755` or `0644`; refuses setuid, setgid and sticky bits.
pub fn parse_mode(raw: &str) -> Result<u32, String> {
    let digits = raw.trim().trim_start_matches("0o");
    let mode = u32::from_str_radix(digits, 8)
        .map_err(|_| format!("mode {raw:?} is not an octal number like \"755\""))?;
    if mode > 0o777 {
        return Err(format!(
            "mode {raw:?} sets setuid, setgid or sticky bits, which patches may not"
        ));
    }
    Ok(mode)
}

/// The patch's edits or document as file operations, in order.
pub fn plan(patch: &Patch) -> Result<Vec<FileOp>, FileOpError> {
    let mut ops = Vec::new();
    for (index, edit) in patch.edits.iter().enumerate() {
        ops.push(match edit {
            Edit::Write { path, contents } => FileOp::Write {
                path: path.clone(),
                contents: contents.clone(),
            },
            Edit::Replace {
                path,
                search,
                replace,
            } => {
                if search.trim().is_empty() {
                    return Err(FileOpError::Edit {
                        field: format!("/edits/{index}/search"),
                        message: "must contain non-blank text".to_owned(),
                    });
                }
                FileOp::Replace {
                    path: path.clone(),
                    search: search.clone(),
                    replace: replace.clone(),
                }
            }
            Edit::Diff { path, diff } => FileOp::Hunks {
                path: path.clone(),
                hunks: unified::parse_hunks(diff).map_err(|err| FileOpError::Edit {
                    field: format!("/edits/{index}/diff"),
                    message: err.to_string(),
                })?,
            },
            Edit::Delete { path } => FileOp::Delete { path: path.clone() },
            Edit::Rename { from, to } => FileOp::Rename {
                from: from.clone(),
                to: to.clone(),
            },
            Edit::Chmod { path, mode } => FileOp::Chmod {
                path: path.clone(),
                mode: parse_mode(mode).map_err(|message| FileOpError::Edit {
                    field: format!("/edits/{index}/mode"),
                    message,
                })?,
            },
            Edit::Mkdir { path } => FileOp::Mkdir { path: path.clone() },
        });
    }
    if let Some(document) = &patch.patch {
        ops.extend(plan_document(document)?);
    }
    Ok(ops)
}

/// A whole `patch` document (V4A or unified) as file operations.
pub fn plan_document(document: &str) -> Result<Vec<FileOp>, FileOpError> {
    let mut ops = Vec::new();
    if v4a::is_v4a(document) {
        for file in v4a::parse(document)? {
            match file {
                V4aFile::Add { path, contents } => ops.push(FileOp::Create {
                    path: doc_path(&path)?,
                    contents,
                }),
                V4aFile::Delete { path } => ops.push(FileOp::Delete {
                    path: doc_path(&path)?,
                }),
                V4aFile::Update {
                    path,
                    move_to,
                    hunks,
                } => {
                    let mut current = doc_path(&path)?;
                    if let Some(to) = move_to {
                        let to = doc_path(&to)?;
                        ops.push(FileOp::Rename {
                            from: current,
                            to: to.clone(),
                        });
                        current = to;
                    }
                    if !hunks.is_empty() {
                        ops.push(FileOp::Hunks {
                            path: current,
                            hunks,
                        });
                    }
                }
            }
        }
        return Ok(ops);
    }
    for file in unified::parse_multi(document)? {
        match (&file.old_path, &file.new_path) {
            (None, Some(new)) => {
                let contents = apply_hunks("", &file.hunks)?.text;
                let path = doc_path(new)?;
                ops.push(FileOp::Create {
                    path: path.clone(),
                    contents,
                });
                if let Some(mode) = file.new_mode.filter(|mode| *mode != 0o644) {
                    ops.push(FileOp::Chmod { path, mode });
                }
            }
            (Some(old), None) => ops.push(FileOp::Delete {
                path: doc_path(old)?,
            }),
            (Some(old), Some(new)) => {
                let (old, new) = (doc_path(old)?, doc_path(new)?);
                if old != new {
                    ops.push(FileOp::Rename {
                        from: old,
                        to: new.clone(),
                    });
                }
                if !file.hunks.is_empty() {
                    ops.push(FileOp::Hunks {
                        path: new.clone(),
                        hunks: file.hunks.clone(),
                    });
                }
                if let Some(mode) = file.new_mode {
                    ops.push(FileOp::Chmod { path: new, mode });
                }
            }
            (None, None) => {}
        }
    }
    Ok(ops)
}

/// Replaces the one occurrence of `search` in `original`.
///
/// An exact substring is tried first (it need not cover whole lines); otherwise the search
/// text is placed line by line with the ladder and its lines are replaced.
pub fn replace_text(original: &str, search: &str, replace: &str) -> Result<Applied, MatchError> {
    let crlf = original.contains("\r\n") && !original.replace("\r\n", "").contains('\n');
    let (search_nl, replace_nl) = if crlf && !search.contains('\r') {
        (search.replace('\n', "\r\n"), replace.replace('\n', "\r\n"))
    } else {
        (search.to_owned(), replace.to_owned())
    };
    let starts: Vec<usize> = original
        .match_indices(search_nl.as_str())
        .map(|(at, _)| at)
        .collect();
    let line_of = |at: usize| original[..at].matches('\n').count() + 1;
    let lines_in = |text: &str| u32::try_from(text.lines().count()).unwrap_or(u32::MAX);
    match starts.as_slice() {
        [at] => {
            let mut text = String::with_capacity(original.len() + replace_nl.len());
            text.push_str(&original[..*at]);
            text.push_str(&replace_nl);
            text.push_str(&original[at + search_nl.len()..]);
            return Ok(Applied {
                text,
                step: MatchStep::Exact,
                added: lines_in(replace),
                removed: lines_in(search),
            });
        }
        [] => {}
        many => {
            return Err(MatchError::Ambiguous {
                lines: many.iter().map(|at| line_of(*at)).collect(),
                step: MatchStep::Exact,
            });
        }
    }
    let as_lines = |text: &str| -> Vec<String> {
        let text = text.strip_suffix('\n').unwrap_or(text);
        text.split('\n').map(str::to_owned).collect()
    };
    let mut lines: Vec<HunkLine> = as_lines(search).into_iter().map(HunkLine::Remove).collect();
    if !replace.is_empty() {
        lines.extend(as_lines(replace).into_iter().map(HunkLine::Add));
    }
    let hunk = Hunk {
        header: "replace".to_owned(),
        lines,
        ..Hunk::default()
    };
    apply_hunks(original, &[hunk]).map_err(|err| match err {
        DiffError::Hunk { source, .. } => source,
        DiffError::Syntax { .. } => MatchError::Empty,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_uses_the_ladder_and_reports_the_rung() {
        let applied = replace_text("a\n  b  \nc\n", "b", "B").unwrap();
        assert_eq!(
            (applied.text.as_str(), applied.step),
            ("a\n  B  \nc\n", MatchStep::Exact)
        );
        let applied = replace_text(
            "x\n    if a:\n        go()\n",
            "if a:\n    go()\n",
            "if b:\n    stop()\n",
        )
        .unwrap();
        assert_eq!(applied.step, MatchStep::Indentation);
        assert_eq!(applied.text, "x\n    if b:\n        stop()\n");
        let err = replace_text("k\nk\n", "k", "j").unwrap_err();
        assert!(err.to_string().contains("lines 1, 2"), "{err}");
    }

    #[test]
    fn bad_modes_name_the_field() {
        let patch = crate::parse_json(
            br#"{"id":"p","target":"MAIN","edits":[{"op":"chmod","path":"a","mode":"4755"}]}"#,
        )
        .unwrap();
        let err = plan(&patch).unwrap_err();
        assert!(err.to_string().starts_with("/edits/0/mode"), "{err}");
    }
}
