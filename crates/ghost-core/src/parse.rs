//! Parsing a submitted patch, with errors that say exactly where and what.

use serde::de::DeserializeSeed;
use serde_path_to_error::Segment;

use crate::budget::{ParseBudget, Reader, Refusal, ScanLimits, ScanRefusal, scan};
use crate::fileops::{FileOpError, plan_document};
use crate::patch::{Edit, Patch};

/// Why a submitted patch was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    /// The document is not well-formed JSON or YAML.
    #[error("malformed document at line {line}, column {column}: {message}")]
    Syntax {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What the parser expected.
        message: String,
    },
    /// The document is well-formed but a field is missing, unknown or wrong.
    #[error("invalid patch at {pointer:?}: {message}")]
    Invalid {
        /// RFC 6901 JSON pointer of the offending value ("" is the whole document).
        pointer: String,
        /// What is wrong and what was expected.
        message: String,
    },
    /// Reading the document would cost more than its budget (size, aliases, depth).
    #[error("document refused: {message}")]
    OverBudget {
        /// Which limit, and its value.
        message: String,
    },
    /// One object names the same key twice (JSON or YAML): refused rather than one silently
    /// winning.
    #[error(
        "duplicate key {key:?}: first at {first:?}, again at {second:?} (line {line}, column {column}); each key may appear once"
    )]
    DuplicateKey {
        /// The key as written (unescaped).
        key: String,
        /// JSON pointer of its first occurrence.
        first: String,
        /// JSON pointer of the repeat (the same object, so the same pointer).
        second: String,
        /// 1-based line of the repeat.
        line: usize,
        /// 1-based column of the repeat.
        column: usize,
    },
}

impl PatchError {
    pub(crate) fn invalid(pointer: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            pointer: pointer.into(),
            message: message.into(),
        }
    }
}

/// Largest accepted `timeout_s`: one day.
pub(crate) const MAX_TIMEOUT_S: u32 = 86_400;

/// The syntax a submitted document is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// JSON (RFC 8259).
    Json,
    /// YAML 1.2 (one document).
    Yaml,
}

impl Format {
    /// The format a media type names (`application/json`, `application/yaml`, `+json`, ...),
    /// if it names one.
    pub fn from_media_type(media_type: &str) -> Option<Self> {
        let essence = media_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match essence.as_str() {
            "application/json" => Some(Self::Json),
            "application/yaml" | "application/x-yaml" | "text/yaml" | "text/x-yaml" => {
                Some(Self::Yaml)
            }
            _ if essence.ends_with("+json") => Some(Self::Json),
            _ if essence.ends_with("+yaml") => Some(Self::Yaml),
            _ => None,
        }
    }
}

/// A submitted document as read: its value, what reading it cost, and what was forgiven.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// The generic value.
    pub value: serde_json::Value,
    /// Expanded bytes charged against the budget.
    pub spent: usize,
    /// "line L, column C: ..." for each trailing comma or comment forgiven (JSON only).
    pub warnings: Vec<String>,
}

/// Reads a submitted document like [`parse_document_spent`], forgiving in JSON what models
/// write by habit: trailing commas and `//` or `/* */` comments, each named in
/// [`Document::warnings`]. The forgiven bytes are blanked, not removed, so any later error
/// still points at the sender's line:column; everything else stays strict (duplicate keys
/// included).
pub fn read_document(
    body: &[u8],
    format: Format,
    budget: &ParseBudget,
) -> Result<Document, PatchError> {
    if body.len() > budget.max_bytes {
        return Err(PatchError::OverBudget {
            message: format!("the document is over the {} byte limit", budget.max_bytes),
        });
    }
    let (value, spent, warnings) = match format {
        Format::Json => {
            let forgiven = crate::lenient::forgive(body);
            let (value, spent) = parse_document_spent(&forgiven.body, format, budget)?;
            (value, spent, forgiven.warnings)
        }
        Format::Yaml => {
            let (value, spent) = parse_document_spent(body, format, budget)?;
            (value, spent, Vec::new())
        }
    };
    Ok(Document {
        value,
        spent,
        warnings,
    })
}

/// Reads a JSON or YAML document into a generic value within `budget`.
///
/// The one way a submitted document is read: the body size, YAML aliases, the expanded size
/// (aliases replayed) and the nesting depth are bounded ([`PatchError::OverBudget`]); a key
/// repeated in one object is refused with its JSON pointer and line:column; syntax errors carry
/// line:column.
pub fn parse_document(
    body: &[u8],
    format: Format,
    budget: &ParseBudget,
) -> Result<serde_json::Value, PatchError> {
    parse_document_spent(body, format, budget).map(|(value, _)| value)
}

/// [`parse_document`], also returning the expanded bytes charged, so that several documents
/// (the blocks of one chat message) can share one budget.
pub fn parse_document_spent(
    body: &[u8],
    format: Format,
    budget: &ParseBudget,
) -> Result<(serde_json::Value, usize), PatchError> {
    if body.len() > budget.max_bytes {
        return Err(PatchError::OverBudget {
            message: format!("the document is over the {} byte limit", budget.max_bytes),
        });
    }
    let reader = Reader::new(budget);
    match format {
        Format::Json => {
            let mut deserializer = serde_json::Deserializer::from_slice(body);
            let read = reader
                .root()
                .deserialize(&mut deserializer)
                .and_then(|value| deserializer.end().map(|()| value))
                .map(|value| (value, reader.spent()));
            read.map_err(|err| {
                let (line, column) = (err.line(), err.column());
                refused(reader, line, column).unwrap_or_else(|| PatchError::Syntax {
                    line,
                    column,
                    message: strip_position(&err),
                })
            })
        }
        Format::Yaml => {
            let text = std::str::from_utf8(body).map_err(|err| PatchError::Syntax {
                line: 1 + body[..err.valid_up_to()]
                    .iter()
                    .filter(|b| **b == b'\n')
                    .count(),
                column: 1,
                message: "the document is not valid UTF-8".to_owned(),
            })?;
            prescan(text, budget)?;
            let read = reader
                .root()
                .deserialize(serde_norway::Deserializer::from_str(text))
                .map(|value| (value, reader.spent()));
            read.map_err(|err| {
                let (line, column) = err.location().map_or((0, 0), |at| (at.line(), at.column()));
                refused(reader, line, column).unwrap_or_else(|| {
                    let text = err.to_string();
                    // serde_norway's own alias bound (jumps > 100 per event) can trip before
                    // ours on nested aliases; its error has no kind to match, only this text.
                    if text.starts_with("repetition limit exceeded") {
                        return PatchError::OverBudget {
                            message: "the document replays YAML aliases too often".to_owned(),
                        };
                    }
                    let message = match text.find(" at line ") {
                        Some(cut) => text[..cut].to_owned(),
                        None => text,
                    };
                    PatchError::Syntax {
                        line,
                        column,
                        message,
                    }
                })
            })
        }
    }
}

/// The lexical pre-scan of a YAML text ([`scan`]), before any parser sees it: aliases, flow
/// nesting and nodes within the budget.
fn prescan(text: &str, budget: &ParseBudget) -> Result<(), PatchError> {
    let limits = ScanLimits {
        aliases: budget.max_aliases,
        depth: budget.max_depth,
        nodes: budget.max_nodes,
    };
    let message = match scan(text, limits) {
        Ok(_) => None,
        Err(ScanRefusal::Aliases) => Some(format!(
            "the document uses more than {} YAML aliases",
            budget.max_aliases
        )),
        Err(ScanRefusal::Depth { line, column }) => Some(format!(
            "the document nests deeper than {} levels at line {line}, column {column}",
            budget.max_depth
        )),
        Err(ScanRefusal::Nodes { line, column }) => Some(format!(
            "the document has more than {} YAML nodes (line {line}, column {column})",
            budget.max_nodes
        )),
    };
    match message {
        Some(message) => Err(PatchError::OverBudget { message }),
        None => Ok(()),
    }
}

/// The budget reader's own refusal, if that is what stopped the parser at line:column.
fn refused(reader: Reader<'_>, line: usize, column: usize) -> Option<PatchError> {
    Some(match reader.refusal()? {
        Refusal::OverBudget(message) => PatchError::OverBudget { message },
        Refusal::DuplicateKey { pointer, key } => {
            let pointer = shorten(&pointer);
            PatchError::DuplicateKey {
                key: shorten(&key),
                first: pointer.clone(),
                second: pointer,
                line,
                column,
            }
        }
    })
}

/// Longest key or pointer an error repeats, in characters: the sender's text is echoed, so a
/// long one would make the answer several times the document.
const MAX_ECHOED_CHARS: usize = 64;

/// `text`, cut to [`MAX_ECHOED_CHARS`] characters with "…" added when it was longer.
fn shorten(text: &str) -> String {
    match text.char_indices().nth(MAX_ECHOED_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// Reads a canonical v1 patch out of a generic value and validates it; errors name the field.
pub fn patch_from_value(value: serde_json::Value) -> Result<Patch, PatchError> {
    let patch: Patch = serde_path_to_error::deserialize(value).map_err(|err| {
        let pointer = json_pointer(err.path());
        PatchError::invalid(pointer, strip_position(err.inner()))
    })?;
    validate(&patch)?;
    Ok(patch)
}

/// Parses and validates a canonical v1 patch from JSON (wire patches, tests, tools).
///
/// JSON has no aliases, so its expanded size never passes its own length: the budget is the
/// body's length, and the caller has already bounded that.
pub fn parse_json(body: &[u8]) -> Result<Patch, PatchError> {
    patch_from_value(parse_document(
        body,
        Format::Json,
        &ParseBudget::new(body.len()),
    )?)
}

/// Rules that span several fields, checked once the shape is right (also for wire patches).
pub fn validate(patch: &Patch) -> Result<(), PatchError> {
    let has_document = patch
        .patch
        .as_deref()
        .is_some_and(|doc| !doc.trim().is_empty());
    if let Some(revert) = &patch.revert {
        return validate_revert(patch, revert, has_document);
    }
    validate_work(patch, has_document)?;
    validate_fields(patch)?;
    validate_steps(patch)
}

/// A revert patch carries nothing of its own, names a plausible commit and not itself.
fn validate_revert(
    patch: &Patch,
    revert: &crate::patch::RevertSpec,
    has_document: bool,
) -> Result<(), PatchError> {
    if !patch.edits.is_empty()
        || has_document
        || patch.agent.is_some()
        || !patch.commands.is_empty()
        || !patch.validate.is_empty()
        || patch.base.is_some()
    {
        return Err(PatchError::invalid(
            "/revert",
            "a revert patch restores another patch's pre-images and carries no edits, \
             document, agent task, commands, checks or base of its own",
        ));
    }
    let hex = |commit: &str| {
        (7..=64).contains(&commit.len())
            && commit
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    };
    if revert.commit.as_deref().is_some_and(|commit| !hex(commit)) {
        return Err(PatchError::invalid(
            "/revert/commit",
            "a commit is 7 to 64 lowercase hex digits",
        ));
    }
    if revert.of == patch.id {
        return Err(PatchError::invalid(
            "/revert/of",
            "a patch cannot revert itself",
        ));
    }
    Ok(())
}

/// The patch asks for something: edits or a document (not both, its paths sound), an agent
/// task with instructions, a command or a check.
fn validate_work(patch: &Patch, has_document: bool) -> Result<(), PatchError> {
    if patch.edits.is_empty()
        && !has_document
        && patch.agent.is_none()
        && patch.commands.is_empty()
        && patch.validate.is_empty()
    {
        return Err(PatchError::invalid(
            "/edits",
            "a patch needs at least one edit, a `patch` document, an `agent` task, a command or \
             a check",
        ));
    }
    if let Some(agent) = &patch.agent
        && agent.task.trim().is_empty()
    {
        return Err(PatchError::invalid(
            "/agent/task",
            "an agent task needs instructions: `task` is empty or blank",
        ));
    }
    if let Some(document) = patch.patch.as_deref().filter(|_| has_document)
        && let Err(FileOpError::Path { path, message }) = plan_document(document)
    {
        // Paths are checked here so a bad one is refused at intake, not by the executor; the
        // document's other faults are still the executor's to report.
        let shown: String = path.chars().take(64).collect();
        return Err(PatchError::invalid(
            "/patch",
            format!("path {shown:?} in the patch document: {message}"),
        ));
    }
    if !patch.edits.is_empty() && has_document {
        return Err(PatchError::invalid(
            "/patch",
            "give either `edits` or a `patch` document, not both",
        ));
    }
    Ok(())
}

/// `notify`, `depends_on` and `timeout_s`.
fn validate_fields(patch: &Patch) -> Result<(), PatchError> {
    if let Some(user) = &patch.notify
        && !crate::patch::is_slack_user_id(user)
    {
        let shown: String = user.chars().take(32).collect();
        return Err(PatchError::invalid(
            "/notify",
            format!(
                "notify must be a Slack user id (U or W, then 2 to 20 capital letters or digits), got {shown:?}"
            ),
        ));
    }
    if let Some(index) = patch.depends_on.iter().position(|dep| *dep == patch.id) {
        return Err(PatchError::invalid(
            format!("/depends_on/{index}"),
            "a patch cannot depend on itself",
        ));
    }
    if let Some(timeout) = patch.timeout_s
        && (timeout == 0 || timeout > MAX_TIMEOUT_S)
    {
        return Err(PatchError::invalid(
            "/timeout_s",
            format!("timeout_s must be between 1 and {MAX_TIMEOUT_S} seconds, got {timeout}"),
        ));
    }
    Ok(())
}

/// Every check and command is not blank, every chmod mode octal, every replace's search
/// not empty.
fn validate_steps(patch: &Patch) -> Result<(), PatchError> {
    for (index, check) in patch.validate.iter().enumerate() {
        if check.run.trim().is_empty() {
            return Err(PatchError::invalid(
                format!("/validate/{index}"),
                "a validation command must not be empty",
            ));
        }
    }
    for (index, command) in patch.commands.iter().enumerate() {
        if command.trim().is_empty() {
            return Err(PatchError::invalid(
                format!("/commands/{index}"),
                "a command must not be empty",
            ));
        }
    }
    for (index, edit) in patch.edits.iter().enumerate() {
        if let Edit::Chmod { mode, .. } = edit
            && !is_octal_mode(mode)
        {
            return Err(PatchError::invalid(
                format!("/edits/{index}/mode"),
                format!(
                    "mode must be octal permission bits like \"755\" or \"0644\", got {mode:?}"
                ),
            ));
        }
        if let Edit::Replace { search, .. } = edit
            && search.is_empty()
        {
            return Err(PatchError::invalid(
                format!("/edits/{index}/search"),
                "search text must not be empty",
            ));
        }
    }
    Ok(())
}

fn is_octal_mode(mode: &str) -> bool {
    (1..=4).contains(&mode.len())
        && mode.chars().all(|c| c.is_digit(8))
        && u32::from_str_radix(mode, 8).is_ok_and(|bits| bits <= 0o7777)
}

/// serde_json appends " at line L column C" to its messages; we report position separately.
fn strip_position(err: &serde_json::Error) -> String {
    let text = err.to_string();
    match text.rfind(" at line ") {
        Some(cut) => text[..cut].to_owned(),
        None => text,
    }
}

/// Turns serde_path_to_error's path into an RFC 6901 JSON pointer.
fn json_pointer(path: &serde_path_to_error::Path) -> String {
    let mut pointer = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => pointer.push_str(&format!("/{index}")),
            Segment::Map { key } => {
                pointer.push('/');
                pointer.push_str(&key.replace('~', "~0").replace('/', "~1"));
            }
            Segment::Enum { .. } | Segment::Unknown => {}
        }
    }
    pointer
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::patch::Priority;

    fn invalid_pointer(body: &str) -> (String, String) {
        match parse_json(body.as_bytes()) {
            Err(PatchError::Invalid { pointer, message }) => (pointer, message),
            other => panic!("expected an invalid-field error, got {other:?}"),
        }
    }

    #[test]
    fn a_minimal_patch_gets_defaults() {
        let patch = parse_json(
            br#"{"id":"p1","target":"MAIN","edits":[{"op":"write","path":"a.txt","contents":"hi"}]}"#,
        )
        .unwrap();
        assert_eq!(patch.priority, Priority::Normal);
        assert_eq!(patch.edits[0].op(), "write");
        assert_eq!(patch.edits[0].path().as_str(), "a.txt");
    }

    #[test]
    fn every_edit_op_and_check_spelling_parses() {
        let patch = parse_json(
            br#"{"id":"p2","target":"MAIN","priority":"high","depends_on":["p1"],
                "edits":[
                  {"op":"write","path":"a","contents":""},
                  {"op":"replace","path":"b","search":"x","replace":"y"},
                  {"op":"diff","path":"c","diff":"@@ -1 +1 @@\n-a\n+b\n"},
                  {"op":"delete","path":"d"},
                  {"op":"rename","from":"e","to":"f"},
                  {"op":"chmod","path":"g","mode":"755"},
                  {"op":"mkdir","path":"h"}],
                "validate":["true",{"run":"make check","timeout_s":30}],
                "timeout_s":60,"on_failure":"keep","commit":{"message":"m"}}"#,
        )
        .unwrap();
        assert_eq!(patch.edits.len(), 7);
        assert_eq!(patch.validate[1].timeout_s, Some(30));
        assert_eq!(patch.validate[0].run, "true");
    }

    #[test]
    fn escaping_paths_name_the_field() {
        let (pointer, message) = invalid_pointer(
            r#"{"id":"p","target":"MAIN","edits":[{"op":"write","path":"ok","contents":""},{"op":"write","path":"../x","contents":""}]}"#,
        );
        assert_eq!(pointer, "/edits/1/path");
        assert!(message.contains("escapes"), "{message}");
        let (pointer, message) = invalid_pointer(
            r#"{"id":"p","target":"MAIN","edits":[{"op":"write","path":"/etc/x","contents":""}]}"#,
        );
        assert_eq!(pointer, "/edits/0/path");
        assert!(message.contains("absolute"), "{message}");
    }

    #[test]
    fn long_path_components_are_refused_at_parse_time_with_the_field() {
        let long = "x".repeat(256);
        let (pointer, message) = invalid_pointer(&format!(
            r#"{{"id":"p","target":"MAIN","edits":[{{"op":"rename","from":"a","to":"d/{long}"}}]}}"#
        ));
        assert_eq!(pointer, "/edits/0/to");
        assert!(message.contains("256 bytes"), "{message}");
        let v4a = format!("*** Begin Patch\n*** Add File: {long}\n+x\n*** End Patch\n");
        let unified = format!("--- /dev/null\n+++ b/{long}\n@@ -0,0 +1 @@\n+x\n");
        let git = ".GIT/config";
        for document in [
            v4a,
            unified,
            format!("--- a/{git}\n+++ b/{git}\n@@ -1 +1 @@\n-a\n+b\n"),
        ] {
            let body = serde_json::json!({"id": "p", "target": "MAIN", "patch": document});
            let (pointer, message) = invalid_pointer(&body.to_string());
            assert_eq!(pointer, "/patch");
            assert!(
                message.contains("256 bytes") || message.contains(".git/"),
                "{message}"
            );
        }
    }

    #[test]
    fn shape_errors_name_the_field() {
        let (pointer, message) = invalid_pointer(r#"{"id":"p","edits":[]}"#);
        assert_eq!(pointer, "");
        assert!(message.contains("missing field `target`"), "{message}");
        let (pointer, _) = invalid_pointer(r#"{"id":"a/b","target":"MAIN"}"#);
        assert_eq!(pointer, "/id");
        let (pointer, message) = invalid_pointer(
            r#"{"id":"p","target":"MAIN","edits":[{"op":"frobnicate","path":"a"}]}"#,
        );
        assert_eq!(pointer, "/edits/0");
        assert!(message.contains("frobnicate"), "{message}");
        let (pointer, message) = invalid_pointer(r#"{"id":"p","target":"MAIN","colour":"red"}"#);
        assert_eq!(pointer, "/colour");
        assert!(message.contains("colour"), "{message}");
        let (pointer, _) = invalid_pointer(
            r#"{"id":"p","target":"MAIN","edits":[{"op":"write","path":"a","contents":1}]}"#,
        );
        assert_eq!(pointer, "/edits/0/contents");
        let (pointer, message) = invalid_pointer(
            r#"{"id":"p","target":"MAIN","edits":[{"op":"delete","path":"a","contents":"x"}]}"#,
        );
        assert_eq!(pointer, "/edits/0");
        assert!(
            message.contains("`contents` does not belong to op `delete`"),
            "{message}"
        );
        let (pointer, message) =
            invalid_pointer(r#"{"id":"p","target":"MAIN","edits":[{"op":"write","path":"a"}]}"#);
        assert_eq!(pointer, "/edits/0");
        assert!(message.contains("missing field `contents`"), "{message}");
    }

    #[test]
    fn notify_takes_a_slack_user_id_and_stays_out_of_the_canonical_form_when_unset() {
        let plain = parse_json(br#"{"id":"p","target":"MAIN","agent":{"task":"t"}}"#).unwrap();
        assert_eq!(plain.notify, None);
        assert!(!plain.canonical_json().contains("notify"));
        let with =
            parse_json(br#"{"id":"p","target":"MAIN","agent":{"task":"t"},"notify":"U0ALICE1"}"#)
                .unwrap();
        assert_eq!(with.notify.as_deref(), Some("U0ALICE1"));
        for bad in ["u0alice", "U1", "<!channel>", "C0CHANNEL", "U0\\nX"] {
            let body =
                format!(r#"{{"id":"p","target":"MAIN","agent":{{"task":"t"}},"notify":"{bad}"}}"#);
            let (pointer, message) = invalid_pointer(&body);
            assert_eq!(pointer, "/notify", "{bad}");
            assert!(message.contains("Slack user id"), "{message}");
        }
    }

    #[test]
    fn cross_field_rules_are_enforced() {
        assert_eq!(invalid_pointer(r#"{"id":"p","target":"MAIN"}"#).0, "/edits");
        assert_eq!(
            invalid_pointer(
                r#"{"id":"p","target":"MAIN","depends_on":["p"],"agent":{"task":"t"}}"#
            )
            .0,
            "/depends_on/0"
        );
        assert_eq!(
            invalid_pointer(r#"{"id":"p","target":"MAIN","timeout_s":0,"agent":{"task":"t"}}"#).0,
            "/timeout_s"
        );
        assert_eq!(
            invalid_pointer(
                r#"{"id":"p","target":"MAIN","edits":[{"op":"chmod","path":"a","mode":"999"}]}"#
            )
            .0,
            "/edits/0/mode"
        );
    }

    #[test]
    fn syntax_errors_give_line_and_column() {
        let err = parse_json(b"{\n  \"id\": \"p\",\n  oops\n}").unwrap_err();
        match err {
            PatchError::Syntax { line, column, .. } => assert_eq!((line, column), (3, 3)),
            other => panic!("expected a syntax error, got {other:?}"),
        }
        assert!(matches!(
            parse_json(br#"{"id":"p","target":"MAIN","agent":{"task":"t"}} trailing"#),
            Err(PatchError::Syntax { .. })
        ));
    }

    #[test]
    fn content_hash_follows_content() {
        let one = parse_json(br#"{"id":"p","target":"MAIN","agent":{"task":"a"}}"#).unwrap();
        let same = parse_json(br#"{ "target":"MAIN", "id":"p", "agent":{"task":"a"}}"#).unwrap();
        let other = parse_json(br#"{"id":"p","target":"MAIN","agent":{"task":"b"}}"#).unwrap();
        assert_eq!(one.content_hash(), same.content_hash());
        assert_ne!(one.content_hash(), other.content_hash());
        assert_eq!(one.content_hash().len(), 64);
    }
}
