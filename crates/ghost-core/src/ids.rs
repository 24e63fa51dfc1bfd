//! Validated identifiers: patch ids, target names and workspace-relative paths.
//!
//! Each is parsed once at the edge and can then be used in file names and log fields without
//! further checks: an id never contains a path separator, a path never escapes its root.

use std::fmt;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Why an identifier or path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct IdError(String);

/// A patch id: `[A-Za-z0-9._()+-]{1,128}`, not starting with a dot.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PatchId(String);

impl PatchId {
    /// Parses a patch id, explaining what is wrong when it is refused.
    pub fn parse(raw: &str) -> Result<Self, IdError> {
        if raw.is_empty() || raw.len() > 128 {
            return Err(IdError(format!(
                "patch id must be 1 to 128 characters, got {}",
                raw.len()
            )));
        }
        if raw.starts_with('.') {
            return Err(IdError("patch id must not start with '.'".to_owned()));
        }
        if let Some(bad) = raw
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || "._()+-".contains(*c)))
        {
            return Err(IdError(format!(
                "patch id may contain only letters, digits and . _ ( ) + -; found {bad:?}"
            )));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// An id built by [`Patch::derived_id`](crate::Patch::derived_id) (`p-` and hex digits) or
    /// [`revert_id`](crate::revert_id), valid by construction.
    pub(crate) fn from_derived(id: String) -> Self {
        debug_assert!(Self::parse(&id).is_ok(), "{id}");
        Self(id)
    }
}

impl TryFrom<String> for PatchId {
    type Error = IdError;
    fn try_from(raw: String) -> Result<Self, Self::Error> {
        Self::parse(&raw)
    }
}

impl From<PatchId> for String {
    fn from(id: PatchId) -> Self {
        id.0
    }
}

impl fmt::Display for PatchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A workspace (target) name: `[A-Za-z0-9_-]{1,64}`, e.g. `MAIN`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TargetName(String);

impl TargetName {
    /// Parses a target name, explaining what is wrong when it is refused.
    pub fn parse(raw: &str) -> Result<Self, IdError> {
        if raw.is_empty() || raw.len() > 64 {
            return Err(IdError(format!(
                "target must be 1 to 64 characters, got {}",
                raw.len()
            )));
        }
        if let Some(bad) = raw
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
        {
            return Err(IdError(format!(
                "target may contain only letters, digits, '_' and '-'; found {bad:?}"
            )));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TargetName {
    type Error = IdError;
    fn try_from(raw: String) -> Result<Self, Self::Error> {
        Self::parse(&raw)
    }
}

impl From<TargetName> for String {
    fn from(name: TargetName) -> Self {
        name.0
    }
}

impl fmt::Display for TargetName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Longest accepted path, in bytes (Linux `PATH_MAX`).
const MAX_PATH_BYTES: usize = 4096;
/// Longest accepted path component, in bytes (`NAME_MAX` of every common filesystem).
const MAX_COMPONENT_BYTES: usize = 255;

/// Code points HFS+ ignores in names, so `.g\u{200C}it` is `.git` on macOS (git's own list in
/// `is_hfs_dotgit`).
fn hfs_ignorable(c: char) -> bool {
    matches!(
        c,
        '\u{200C}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{206A}'..='\u{206F}' | '\u{FEFF}'
    )
}

/// The name a case-insensitive, name-trimming filesystem opens for `part`: HFS+ ignorable code
/// points dropped, an NTFS stream suffix (`:stream`, `::$INDEX_ALLOCATION`) cut, trailing dots
/// and spaces trimmed (Windows), ASCII lower-cased.
fn as_filesystems_see(part: &str) -> String {
    let kept: String = part.chars().filter(|c| !hfs_ignorable(*c)).collect();
    let name = kept.split(':').next().unwrap_or_default();
    name.trim_end_matches(['.', ' ']).to_ascii_lowercase()
}

/// True for `.git` as any filesystem may read it: git's own rules (`is_ntfs_dotgit`,
/// `is_hfs_dotgit`), including the 8.3 short name `GIT~1`.
fn is_git_dir(part: &str) -> bool {
    let seen = as_filesystems_see(part);
    seen == ".git" || seen == "git~1"
}

/// True for the executor's own `.ghost` directory as any filesystem may read it.
fn is_ghost_dir(part: &str) -> bool {
    let seen = as_filesystems_see(part);
    seen == ".ghost" || seen == "ghost~1"
}

/// A path relative to a workspace root, lexically normalised, that cannot leave the root.
///
/// Refused: absolute paths, `..` that climbs above the root, `.git` components (in any ASCII
/// case, with trailing dots or spaces, an NTFS stream suffix, HFS+ ignorable code points or as
/// the 8.3 name `GIT~1`), `.ghost` (likewise) as the first component, `\\` in a component, components over 255 bytes, paths over 4,096 bytes,
/// empty paths, NUL bytes and other control characters (U+0001 to U+001F, U+007F: a newline
/// in a path could forge lines of a diff or a log). Symlinks are the executor's business: it resolves them against the real root.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RelPath(String);

impl RelPath {
    /// Parses and normalises a workspace-relative path.
    pub fn parse(raw: &str) -> Result<Self, IdError> {
        if raw.is_empty() {
            return Err(IdError("path must not be empty".to_owned()));
        }
        if raw.contains('\0') {
            return Err(IdError("path must not contain NUL bytes".to_owned()));
        }
        if raw.len() > MAX_PATH_BYTES {
            return Err(IdError(format!(
                "path is {} bytes; at most {MAX_PATH_BYTES} are allowed",
                raw.len()
            )));
        }
        if raw.chars().any(|c| c.is_ascii_control()) {
            return Err(IdError(format!(
                "path {raw:?} contains a control character (U+0000 to U+001F or U+007F, e.g. a \
                 newline or a tab), which no patch path may hold"
            )));
        }
        let path = Path::new(raw);
        if path.is_absolute() || raw.starts_with('\\') {
            return Err(IdError(format!(
                "path must be relative to the workspace root, got absolute path {raw:?}"
            )));
        }
        let mut parts: Vec<&str> = Vec::new();
        for component in path.components() {
            match component {
                Component::Normal(part) => {
                    let Some(part) = part.to_str() else {
                        return Err(IdError("path must be valid UTF-8".to_owned()));
                    };
                    if part.len() > MAX_COMPONENT_BYTES {
                        let head: String = part.chars().take(32).collect();
                        return Err(IdError(format!(
                            "path component {head:?}... is {} bytes; at most {MAX_COMPONENT_BYTES} are allowed",
                            part.len()
                        )));
                    }
                    if is_git_dir(part) {
                        return Err(IdError(format!(
                            "path {raw:?} is inside .git/, which patches may not touch"
                        )));
                    }
                    if parts.is_empty() && is_ghost_dir(part) {
                        return Err(IdError(format!(
                            "path {raw:?} is inside .ghost/, which patches may not touch"
                        )));
                    }
                    if part.contains('\\') {
                        return Err(IdError(format!(
                            "path {raw:?} has a '\\' in a component (a Windows separator); use '/'"
                        )));
                    }
                    parts.push(part);
                }
                Component::CurDir => {}
                Component::ParentDir => {
                    if parts.pop().is_none() {
                        return Err(IdError(format!(
                            "path {raw:?} escapes the workspace root through '..'"
                        )));
                    }
                }
                Component::RootDir | Component::Prefix(_) => {
                    return Err(IdError(format!(
                        "path must be relative to the workspace root, got {raw:?}"
                    )));
                }
            }
        }
        if parts.is_empty() {
            return Err(IdError(format!(
                "path {raw:?} names the workspace root itself"
            )));
        }
        Ok(Self(parts.join("/")))
    }

    /// The normalised path, `/`-separated.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The path joined onto `root` (still lexical: symlinks not resolved).
    pub fn under(&self, root: &Path) -> PathBuf {
        root.join(&self.0)
    }
}

impl TryFrom<String> for RelPath {
    type Error = IdError;
    fn try_from(raw: String) -> Result<Self, Self::Error> {
        Self::parse(&raw)
    }
}

impl From<RelPath> for String {
    fn from(path: RelPath) -> Self {
        path.0
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_ids_follow_the_documented_alphabet() {
        assert!(PatchId::parse("patch-v1.4.1048a(P6.5.50)_ghost-smoke").is_ok());
        assert!(PatchId::parse("a+b").is_ok());
        assert!(PatchId::parse("").is_err());
        assert!(PatchId::parse(".hidden").is_err());
        assert!(PatchId::parse("a/b").is_err());
        assert!(PatchId::parse("a b").is_err());
        assert!(PatchId::parse(&"x".repeat(129)).is_err());
        assert!(PatchId::parse(&"x".repeat(128)).is_ok());
    }

    #[test]
    fn target_names_are_plain_words() {
        assert!(TargetName::parse("MAIN").is_ok());
        assert!(TargetName::parse("cy-ops_2").is_ok());
        assert!(TargetName::parse("../etc").is_err());
        assert!(TargetName::parse("").is_err());
    }

    #[test]
    fn control_characters_in_a_path_are_refused_naming_it() {
        for raw in [
            "a\nb.txt",
            "x\n+++ b/evil",
            "tab\there",
            "del\u{7f}",
            "cr\r",
        ] {
            let err = RelPath::parse(raw).expect_err(raw);
            assert!(err.to_string().contains("control character"), "{err}");
            assert!(err.to_string().contains(&format!("{raw:?}")), "{err}");
        }
        assert!(RelPath::parse("caf\u{e9}/na\u{ef}ve.txt").is_ok());
    }

    #[test]
    fn relative_paths_are_normalised() {
        assert_eq!(RelPath::parse("./src//a.ts").unwrap().as_str(), "src/a.ts");
        assert_eq!(
            RelPath::parse("src/x/../a.ts").unwrap().as_str(),
            "src/a.ts"
        );
    }

    #[test]
    fn escaping_paths_are_refused_with_a_reason() {
        let err = RelPath::parse("../x").unwrap_err().to_string();
        assert!(err.contains("escapes"), "{err}");
        let err = RelPath::parse("/etc/x").unwrap_err().to_string();
        assert!(err.contains("absolute"), "{err}");
        assert!(RelPath::parse("a/../../x").is_err());
        assert!(RelPath::parse(".git/config").is_err());
        assert!(RelPath::parse("sub/.git/hooks/pre-commit").is_err());
        assert!(RelPath::parse(".").is_err());
        assert!(RelPath::parse("a\0b").is_err());
    }

    #[test]
    fn git_in_any_spelling_is_refused() {
        for raw in [
            ".GIT/config",
            ".Git/HEAD",
            ".git.",
            ".git ",
            "a/.gIt. ./x",
            ".git.. ",
        ] {
            let err = RelPath::parse(raw).unwrap_err().to_string();
            assert!(err.contains(".git/"), "{raw:?}: {err}");
        }
        for raw in [
            "GIT~1/config",
            "git~1",
            ".git::$INDEX_ALLOCATION/config",
            ".git:stream",
            ".g\u{200C}it/config",
            "\u{FEFF}.GIT\u{200D}/HEAD",
        ] {
            let err = RelPath::parse(raw).unwrap_err().to_string();
            assert!(err.contains(".git/"), "{raw:?}: {err}");
        }
        for raw in [".ghost/x", ".GHOST./x", ".ghost :x/y", "a/../.Ghost/x"] {
            let err = RelPath::parse(raw).unwrap_err().to_string();
            assert!(err.contains(".ghost/"), "{raw:?}: {err}");
        }
        assert!(RelPath::parse("a/.ghost/x").is_ok());
        let err = RelPath::parse("a\\b.txt").unwrap_err().to_string();
        assert!(err.contains("Windows separator"), "{err}");
        assert!(RelPath::parse("git~2/x").is_ok());
        assert!(RelPath::parse(".gitignore").is_ok());
        assert!(RelPath::parse("a.git").is_ok());
        assert!(RelPath::parse(".github/workflows/ci.yml").is_ok());
    }

    #[test]
    fn long_components_and_paths_are_refused() {
        assert!(RelPath::parse(&"x".repeat(255)).is_ok());
        let err = RelPath::parse(&format!("a/{}/b", "x".repeat(256)))
            .unwrap_err()
            .to_string();
        assert!(err.contains("256 bytes"), "{err}");
        let long = vec!["y".repeat(200); 21].join("/");
        let err = RelPath::parse(&long).unwrap_err().to_string();
        assert!(err.contains("4220 bytes"), "{err}");
    }
}
