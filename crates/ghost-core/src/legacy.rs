//! Normalising what the old system was sent into canonical v1 patches.
//!
//! Four legacy shapes are recognised (DESIGN.md, "The patch"): the webhook envelope
//! (`id, role, target_file, patch:{mutations|pattern/replacement}`), the `command_patch` block
//! (`blockId, mutations, postMutationBuild, validate`), the g2o shape
//! (`{patch:{id,kind,preflight,execution,validation,options.timeoutMs}}`) and prose "phase"
//! patches (notes, phases, executionSteps), which become an agent task. Absolute paths are mapped
//! through the target's configured legacy roots; anything that cannot be normalised is refused
//! with the JSON pointer of the legacy field at fault. Fields the old system accepted but v1 has
//! no use for are listed in [`Normalised::ignored`], never silently dropped.
//!
//! A document of any shape that names no id gets one derived from its normalised content
//! ([`Patch::derived_id`]), so sending it again is a replay. A document that asks for nothing
//! (a manifest, a status note, an object with none of the known keys) is refused with the
//! reason [`NOTHING_TO_DO`].
//!
//! This file holds the options, the shape detection, [`normalise`] and the reader's common
//! steps (ids, targets, paths, v1); the envelope, `command_patch` and g2o shapes are read in
//! `shapes`, prose phase patches in `phase`.

mod phase;
mod shapes;

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::budget::ParseBudget;
use crate::ids::{PatchId, RelPath, TargetName};
use crate::parse::{Format, PatchError, patch_from_value, read_document, validate};
use crate::patch::{Check, OnFailure, Patch, Priority};

/// What the normaliser needs to know about the deployment; the caller loads it from config.
#[derive(Debug, Clone, Default)]
pub struct LegacyOptions {
    /// Target used when a document names none (e.g. the inbox directory's target).
    pub default_target: Option<TargetName>,
    /// Old target names and the target each now means (`BRAUN` → `MAIN`).
    pub aliases: BTreeMap<String, TargetName>,
    /// Per target, absolute directories that were its workspace root on old machines.
    pub roots: BTreeMap<TargetName, Vec<String>>,
}

impl LegacyOptions {
    /// The current name of `raw` after aliases (exact, then case-insensitive).
    pub fn resolve_target(&self, raw: &str) -> Result<TargetName, crate::IdError> {
        if let Some(target) = self.aliases.get(raw) {
            return Ok(target.clone());
        }
        if let Some((_, target)) = self
            .aliases
            .iter()
            .find(|(alias, _)| alias.eq_ignore_ascii_case(raw))
        {
            return Ok(target.clone());
        }
        TargetName::parse(raw)
    }
}

/// The shape a submitted document had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Already canonical v1.
    V1,
    /// The old webhook envelope.
    Envelope,
    /// The old `command_patch` / `blockId` + `mutations` block.
    CommandPatch,
    /// The g2o `{patch:{kind, execution, validation}}` shape.
    G2o,
    /// Prose phases and notes for a coding agent.
    Phase,
}

impl Shape {
    /// A short name for logs and API answers.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V1 => "v1",
            Self::Envelope => "legacy-envelope",
            Self::CommandPatch => "legacy-command-patch",
            Self::G2o => "legacy-g2o",
            Self::Phase => "legacy-phase",
        }
    }
}

/// A submitted document turned into a v1 patch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalised {
    /// The canonical patch.
    pub patch: Patch,
    /// What it was before.
    pub shape: Shape,
    /// JSON pointers of legacy fields that have no v1 meaning and were left out.
    pub ignored: Vec<String>,
    /// What reading the document forgave ("line L, column C: ..."), for the sender and the
    /// summary; filled by [`parse_submission`], empty from [`normalise`] alone.
    pub warnings: Vec<String>,
    /// True when the document named no id and [`Patch::derived_id`] gave it one.
    pub derived_id: bool,
}

/// Why a document that asks for nothing is refused.
pub const NOTHING_TO_DO: &str =
    "no edits, patch, mutations, commands or agent instructions: nothing to do";

/// Why an explicit id of the derived form is refused (unless it is the document's own).
pub const RESERVED_ID: &str =
    "ids of the form p-<16 hex> are reserved for derived ids; choose another id or leave id out";

/// Why a `tasks[]` document (an old runner's own format) is refused, rather than "nothing to do".
pub const TASKS_SHAPE: &str =
    "`tasks` is not a shape Ghost Runner reads; use edits (write, rename) and commands";

/// True for an id of the form [`Patch::derived_id`] gives: `p-` and 16 lowercase hex digits.
pub fn is_derived_form(id: &str) -> bool {
    id.strip_prefix("p-").is_some_and(|hex| {
        hex.len() == 16
            && hex
                .bytes()
                .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte))
    })
}

/// Refuses an explicit `id` of the derived form unless it is `patch`'s own derived id: anyone
/// could otherwise take, ahead of time, the id an id-less patch of predictable content will
/// get, and that patch would then be refused as a conflict. `pointer` names where the id was.
pub fn check_explicit_id(patch: &Patch, pointer: &str) -> Result<(), PatchError> {
    if is_derived_form(patch.id.as_str()) && patch.id != patch.derived_id() {
        return Err(invalid(pointer, RESERVED_ID));
    }
    Ok(())
}

/// Keys of a v1 patch that ask for work; a v1 document with none of them asks for nothing.
const V1_WORK: [&str; 4] = ["edits", "patch", "commands", "agent"];

/// Stands in for the id of a document that names none, until the content is known.
const PENDING_ID: &str = "pending-derived-id";

/// Parses a JSON or YAML document of any accepted shape, within `budget`, into a validated
/// v1 patch.
pub fn parse_submission(
    body: &[u8],
    format: Format,
    budget: &ParseBudget,
    options: &LegacyOptions,
) -> Result<Normalised, PatchError> {
    let document = read_document(body, format, budget)?;
    let mut normalised = normalise(document.value, options)?;
    normalised.warnings = document.warnings;
    Ok(normalised)
}

/// [`NOTHING_TO_DO`], with the keys the document did have (at most eight, shortened).
fn nothing_to_do(object: &Map<String, Value>) -> PatchError {
    let mut keys: Vec<String> = object
        .keys()
        .take(8)
        .map(|key| format!("{:?}", key.chars().take(32).collect::<String>()))
        .collect();
    if object.len() > keys.len() {
        keys.push(format!("and {} more", object.len() - keys.len()));
    }
    let found = if keys.is_empty() {
        "an empty object".to_owned()
    } else {
        format!("only {}", keys.join(", "))
    };
    invalid("", format!("{NOTHING_TO_DO} (the document has {found})"))
}

/// The shape of a document, or `None` when it is not an object that could be a patch.
pub fn detect_shape(value: &Value) -> Option<Shape> {
    shape_of(value.as_object()?)
}

fn shape_of(object: &Map<String, Value>) -> Option<Shape> {
    let has = |key: &str| object.contains_key(key);
    if let Some(inner) = object.get("patch").and_then(Value::as_object) {
        if ["kind", "execution", "preflight", "validation"]
            .iter()
            .any(|key| inner.contains_key(*key))
        {
            return Some(Shape::G2o);
        }
        return Some(Shape::Envelope);
    }
    if has("target_file") {
        return Some(Shape::Envelope);
    }
    if has("mutations") || has("blockId") {
        return Some(Shape::CommandPatch);
    }
    if has("phases") || has("notes") || has("executionSteps") {
        return Some(Shape::Phase);
    }
    if has("postMutationBuild") {
        return Some(Shape::CommandPatch);
    }
    if has("id") || has("target") || V1_WORK.iter().any(|key| has(key)) {
        return Some(Shape::V1);
    }
    None
}

/// Normalises a parsed document into a validated v1 patch; target aliases apply to v1 too.
pub fn normalise(value: Value, options: &LegacyOptions) -> Result<Normalised, PatchError> {
    let Value::Object(object) = value else {
        return Err(PatchError::invalid(
            "",
            format!(
                "expected a patch object with `target` and `edits` (or a legacy patch shape), got {}",
                kind(&value)
            ),
        ));
    };
    let asks_for_work = |shape: Option<Shape>| match shape {
        None => false,
        Some(Shape::V1) => V1_WORK.iter().any(|key| object.contains_key(*key)),
        Some(_) => true,
    };
    let shape = shape_of(&object);
    if !asks_for_work(shape) {
        if object.contains_key("tasks") {
            return Err(invalid("/tasks", TASKS_SHAPE));
        }
        return Err(nothing_to_do(&object));
    }
    let Some(shape) = shape else {
        return Err(nothing_to_do(&object));
    };
    let mut reader = Reader {
        options,
        ignored: Vec::new(),
        derived_id: false,
        id_pointer: "/id",
    };
    let mut patch = match shape {
        Shape::V1 => reader.v1(object)?,
        Shape::Envelope => reader.envelope(object)?,
        Shape::CommandPatch => reader.command_patch(object)?,
        Shape::G2o => reader.g2o(object)?,
        Shape::Phase => reader.phase(object)?,
    };
    if reader.derived_id {
        patch.id = patch.derived_id();
    } else {
        check_explicit_id(&patch, reader.id_pointer)?;
    }
    Ok(Normalised {
        patch,
        shape,
        ignored: reader.ignored,
        warnings: Vec::new(),
        derived_id: reader.derived_id,
    })
}

/// One normalisation in progress: options plus the ignored fields found so far.
struct Reader<'a> {
    options: &'a LegacyOptions,
    ignored: Vec<String>,
    /// The document named no id: one is derived once the patch is built.
    derived_id: bool,
    /// Where the document named its id (for a refusal of a reserved id).
    id_pointer: &'static str,
}

fn invalid(pointer: &str, message: impl Into<String>) -> PatchError {
    PatchError::invalid(pointer, message)
}

fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// Takes `key` out of `object` as an optional string, refusing other types.
fn take_str(
    object: &mut Map<String, Value>,
    key: &str,
    base: &str,
) -> Result<Option<String>, PatchError> {
    match object.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(other) => Err(invalid(
            &format!("{base}/{}", escape(key)),
            format!("expected a string, got {}", kind(&other)),
        )),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A command list as the old system spelled it: `"cmd"`, `["a", "b"]` or `{shell: ...}`.
fn command_list(value: Value, pointer: &str) -> Result<Vec<String>, PatchError> {
    match value {
        Value::Null => Ok(Vec::new()),
        Value::String(command) => Ok(vec![command]),
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(index, item)| match item {
                Value::String(command) => Ok(command),
                other => Err(invalid(
                    &format!("{pointer}/{index}"),
                    format!("expected a command string, got {}", kind(&other)),
                )),
            })
            .collect(),
        Value::Object(mut object) => {
            let Some(shell) = object.remove("shell") else {
                return Err(invalid(
                    pointer,
                    "expected a command, a list of commands or an object with `shell`",
                ));
            };
            if let Some(extra) = object.keys().next() {
                return Err(invalid(
                    &format!("{pointer}/{}", escape(extra)),
                    "only `shell` is understood here",
                ));
            }
            command_list(shell, &format!("{pointer}/shell"))
        }
        other => Err(invalid(
            pointer,
            format!(
                "expected a command or a list of commands, got {}",
                kind(&other)
            ),
        )),
    }
}

/// Prose lines from a string or a list of strings (anything else is rendered as JSON).
fn prose(value: &Value) -> Vec<String> {
    match value {
        Value::String(text) => vec![text.clone()],
        Value::Array(items) => items.iter().flat_map(prose).collect(),
        Value::Null => Vec::new(),
        other => vec![other.to_string()],
    }
}

impl Reader<'_> {
    fn ignore_rest(&mut self, object: Map<String, Value>, base: &str) {
        self.ignored
            .extend(object.keys().map(|key| format!("{base}/{}", escape(key))));
    }

    fn id(&mut self, raw: Option<String>, pointer: &'static str) -> Result<PatchId, PatchError> {
        self.id_pointer = pointer;
        let Some(raw) = raw else {
            self.derived_id = true;
            return PatchId::parse(PENDING_ID).map_err(|err| invalid(pointer, err.to_string()));
        };
        let trimmed = raw.strip_suffix(".json").unwrap_or(&raw);
        PatchId::parse(trimmed).map_err(|err| invalid(pointer, err.to_string()))
    }

    fn target(&self, raw: Option<String>, pointer: &str) -> Result<TargetName, PatchError> {
        match raw {
            Some(raw) => self
                .options
                .resolve_target(raw.trim())
                .map_err(|err| invalid(pointer, err.to_string())),
            None => self.options.default_target.clone().ok_or_else(|| {
                invalid(
                    "/target",
                    "no target given and no default target configured; add \"target\"",
                )
            }),
        }
    }

    /// A legacy path: relative as is, absolute only under one of the target's legacy roots.
    fn path(&self, raw: &str, target: &TargetName, pointer: &str) -> Result<RelPath, PatchError> {
        if !raw.starts_with('/') {
            return RelPath::parse(raw).map_err(|err| invalid(pointer, err.to_string()));
        }
        let roots = self
            .options
            .roots
            .get(target)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        for root in roots {
            let root = root.trim_end_matches('/');
            if let Some(rest) = raw.strip_prefix(root)
                && let Some(relative) = rest.strip_prefix('/')
            {
                return RelPath::parse(relative).map_err(|err| invalid(pointer, err.to_string()));
            }
        }
        // The roots themselves are server configuration: counted, never shown to the caller.
        Err(invalid(
            pointer,
            format!(
                "absolute path {raw:?} is outside every legacy root configured for target {target} \
                 ({} configured); use a workspace-relative path",
                roots.len()
            ),
        ))
    }

    fn v1(&mut self, mut object: Map<String, Value>) -> Result<Patch, PatchError> {
        if !object.contains_key("id") {
            self.derived_id = true;
            object.insert("id".to_owned(), Value::String(PENDING_ID.to_owned()));
        }
        match object.get("target") {
            Some(Value::String(raw)) => {
                let resolved = self
                    .options
                    .resolve_target(raw)
                    .map_err(|err| invalid("/target", err.to_string()))?;
                object.insert("target".to_owned(), Value::String(resolved.into()));
            }
            None => {
                if let Some(target) = &self.options.default_target {
                    object.insert("target".to_owned(), Value::String(target.to_string()));
                }
            }
            Some(_) => {}
        }
        patch_from_value(Value::Object(object))
    }
}

/// A legacy document's checks: run where the target's policy allows their program, skipped
/// (and reported) where it does not.
fn checks(commands: Vec<String>) -> Vec<Check> {
    commands
        .into_iter()
        .map(|run| Check {
            run,
            timeout_s: None,
            if_allowed: true,
        })
        .collect()
}

/// `postMutationBuild` then `validate`, as patch checks in that order.
fn legacy_checks(object: &mut Map<String, Value>) -> Result<Vec<Check>, PatchError> {
    let mut all = match object.remove("postMutationBuild") {
        Some(value) => checks(command_list(value, "/postMutationBuild")?),
        None => Vec::new(),
    };
    if let Some(value) = object.remove("validate") {
        all.extend(checks(command_list(value, "/validate")?));
    }
    Ok(all)
}

fn empty(id: PatchId, target: TargetName) -> Patch {
    Patch {
        id,
        target,
        description: String::new(),
        priority: Priority::Normal,
        depends_on: Vec::new(),
        base: None,
        edits: Vec::new(),
        patch: None,
        commands: Vec::new(),
        validate: Vec::new(),
        timeout_s: None,
        on_failure: OnFailure::Rollback,
        commit: None,
        agent: None,
        revert: None,
        notify: None,
    }
}

fn finish(patch: Patch) -> Result<Patch, PatchError> {
    validate(&patch)?;
    Ok(patch)
}
