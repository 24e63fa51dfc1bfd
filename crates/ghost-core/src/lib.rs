//! The Ghost Runner patch model, shared by every service that touches a patch.
//!
//! The gateway parses and validates incoming patches with [`parse`]; the router stores their
//! canonical form and content hash; the executor applies the [`Edit`]s and fills an
//! [`ApplyReport`], with the [`diagnostics`] parsed from its checks' output; the summarizer
//! renders that report. This crate does no I/O and knows nothing
//! about gRPC or HTTP: wire conversions live in `ghost-proto`.

mod budget;
pub mod diagnostics;
mod edit_de;
mod fenced;
pub mod fileops;
mod ids;
pub mod invisible;
pub mod ladder;
mod legacy;
mod lenient;
#[cfg(feature = "openapi")]
pub mod openapi;
mod parse;
mod patch;
mod report;
mod status;
pub mod unified;
pub mod v4a;

pub use budget::ParseBudget;
pub use fenced::{FencedBlock, fenced_blocks};
pub use ids::{IdError, PatchId, RelPath, TargetName};
pub use legacy::{
    LegacyOptions, NOTHING_TO_DO, Normalised, RESERVED_ID, Shape, TASKS_SHAPE, check_explicit_id,
    detect_shape, is_derived_form, normalise, parse_submission,
};
pub use parse::{
    Document, Format, PatchError, parse_document, parse_document_spent, parse_json,
    patch_from_value, read_document, validate,
};
pub use patch::{
    AgentTask, Base, Check, CommitSpec, Edit, OnFailure, Patch, Priority, RESERVED_REVERT_ID,
    REVERT_ID_PREFIX, RevertSpec, is_revert_form, is_slack_user_id, revert_id,
};
pub use report::{
    AgentRun, ApplyReport, CommandKind, CommandReport, Diagnostic, EditReport, Rollback, Severity,
    StageTiming,
};
pub use status::{Status, UnknownStatus};
