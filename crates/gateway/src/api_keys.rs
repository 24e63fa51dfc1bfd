//! API keys created at runtime: `POST /v1/keys` (the secret in the 201 answer only),
//! `GET /v1/keys` (never a secret; the keys from config listed read-only with
//! `source: "config"`) and `DELETE /v1/keys/{name}`. Admin scope only; a key is never created
//! with more scopes or targets than its creator holds.
//!
//! The gateway keeps no database: the keys live in `<data_dir>/api-keys.json` (SHA-256 hashes
//! only, mode 0600), replaced atomically (a temporary file, fsync, rename, fsync of the
//! directory) on every change, so they survive a restart. Without `data_dir` they cannot be
//! created (409 naming the setting). Every change is an `audit` log line.
//!
//! The file is this one gateway's: replicas neither share it nor see each other's changes (a
//! key revoked on one stays valid on another until it restarts), so a deployment with several
//! gateways keeps its keys in config (`[[keys]]`) and leaves `data_dir` unset, as the
//! Kubernetes manifests do.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError, RwLock};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ghost_core::TargetName;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::ToSchema;

use crate::auth::{Principal, Scope};
use crate::error::GatewayError;
use crate::http::{AppState, Problem};

/// Runtime keys kept at most.
pub const MAX_KEYS: usize = 1_000;
/// The prefix of every runtime key's secret, so a leaked one is recognisable.
pub const SECRET_PREFIX: &str = "gr_";
/// Random bytes in a secret (256 bits).
const SECRET_BYTES: usize = 32;
/// Targets one key may name at most.
const MAX_TARGETS: usize = 64;
/// Largest keys file read at start (1,000 keys take about 300 KB).
const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;
/// The file under `data_dir`.
const FILE_NAME: &str = "api-keys.json";

/// One key as the file keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    name: String,
    /// Lowercase hex SHA-256 of the secret.
    sha256: String,
    scopes: Vec<Scope>,
    #[serde(default)]
    targets: Vec<String>,
    created_at: String,
    created_by: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    version: u32,
    keys: Vec<Record>,
}

#[derive(Debug, Clone)]
struct Live {
    record: Record,
    hash: [u8; 32],
    principal: Principal,
}

/// The runtime keys, in memory and in their file.
pub struct KeyStore {
    file: Option<PathBuf>,
    keys: RwLock<Vec<Live>>,
    /// Held by a change from its checks to its file being replaced.
    writer: Mutex<()>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn live(record: Record) -> anyhow::Result<Live> {
    let hash = crate::auth::decode_hex32(&record.sha256)
        .ok_or_else(|| anyhow::anyhow!("key {}: sha256 must be 64 hex digits", record.name))?;
    let targets = record
        .targets
        .iter()
        .map(|t| TargetName::parse(t))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| anyhow::anyhow!("key {}: {err}", record.name))?;
    let principal = Principal::new(
        record.name.clone(),
        record.scopes.clone(),
        (!targets.is_empty()).then_some(targets),
    )
    .with_runtime_key(hash);
    Ok(Live {
        record,
        hash,
        principal,
    })
}

impl KeyStore {
    /// Reads `<data_dir>/api-keys.json` (none yet: no keys); `None`: keys cannot be created.
    pub fn open(data_dir: Option<&Path>) -> anyhow::Result<Self> {
        let Some(dir) = data_dir else {
            return Ok(Self {
                file: None,
                keys: RwLock::new(Vec::new()),
                writer: Mutex::new(()),
            });
        };
        let file = dir.join(FILE_NAME);
        let mut keys = Vec::new();
        match std::fs::metadata(&file) {
            Ok(meta) if meta.len() > MAX_FILE_BYTES => {
                anyhow::bail!(
                    "{} is {} bytes; at most {MAX_FILE_BYTES} are read",
                    file.display(),
                    meta.len()
                );
            }
            Ok(_) => {
                let text = std::fs::read(&file)
                    .map_err(|err| anyhow::anyhow!("cannot read {}: {err}", file.display()))?;
                let parsed: File = serde_json::from_slice(&text).map_err(|err| {
                    anyhow::anyhow!("{} is not a keys file: {err}", file.display())
                })?;
                if parsed.version != 1 {
                    anyhow::bail!("{}: unknown version {}", file.display(), parsed.version);
                }
                for record in parsed.keys {
                    keys.push(live(record)?);
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => anyhow::bail!("cannot read {}: {err}", file.display()),
        }
        Ok(Self {
            file: Some(file),
            keys: RwLock::new(keys),
            writer: Mutex::new(()),
        })
    }

    /// The holder of the key whose SHA-256 is `digest`. Compares with every key, in constant
    /// time each, with no early exit.
    pub fn find(&self, digest: &[u8; 32]) -> Option<Principal> {
        let keys = self.keys.read().unwrap_or_else(PoisonError::into_inner);
        let mut found = None;
        for candidate in keys.iter() {
            if bool::from(digest.ct_eq(&candidate.hash)) {
                found = Some(candidate.principal.clone());
            }
        }
        found
    }

    /// True while a key with this SHA-256 exists.
    pub fn holds(&self, digest: &[u8; 32]) -> bool {
        self.find(digest).is_some()
    }

    fn views(&self) -> Vec<KeyView> {
        let keys = self.keys.read().unwrap_or_else(PoisonError::into_inner);
        keys.iter().map(|key| view(&key.record)).collect()
    }

    /// Writes `keys` to the file, replacing it atomically.
    fn persist(&self, keys: &[Live]) -> Result<(), GatewayError> {
        let Some(file) = &self.file else {
            return Err(GatewayError::Conflict(
                "runtime API keys are off: this gateway has no data_dir to keep them in; set the gateway's data_dir (for one gateway only: gateway replicas do not share runtime keys, give them [[keys]] in their config)".to_owned(),
            ));
        };
        let failed = |what: &str, err: std::io::Error| {
            tracing::error!(file = %file.display(), error = %err, "cannot {what} the API keys file");
            GatewayError::Internal(format!("cannot {what} {}: {err}", file.display()))
        };
        let document = File {
            version: 1,
            keys: keys.iter().map(|key| key.record.clone()).collect(),
        };
        let text = serde_json::to_vec_pretty(&document)
            .map_err(|err| GatewayError::Internal(err.to_string()))?;
        // Never write a file the next start would refuse to read.
        if text.len() as u64 > MAX_FILE_BYTES {
            return Err(GatewayError::Conflict(format!(
                "the runtime keys would take {} bytes, over the {MAX_FILE_BYTES} the gateway reads at start; delete keys first",
                text.len()
            )));
        }
        let dir = file.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|err| failed("create the directory of", err))?;
        let temporary = dir.join(format!("{FILE_NAME}.tmp"));
        // A leftover from a crash may have other permissions: start from a new file.
        if let Err(err) = std::fs::remove_file(&temporary)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            return Err(failed("remove the leftover temporary file of", err));
        }
        let mut out = std::fs::OpenOptions::new();
        out.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut out, 0o600);
        let mut handle = out.open(&temporary).map_err(|err| failed("write", err))?;
        handle
            .write_all(&text)
            .map_err(|err| failed("write", err))?;
        handle.sync_all().map_err(|err| failed("sync", err))?;
        drop(handle);
        std::fs::rename(&temporary, file).map_err(|err| failed("replace", err))?;
        if let Ok(directory) = std::fs::File::open(dir) {
            directory
                .sync_all()
                .map_err(|err| failed("sync the directory of", err))?;
        }
        Ok(())
    }

    /// Adds a key (checked by the caller), returning its secret.
    fn create(
        &self,
        record_of: impl FnOnce(String) -> Record,
        taken: &[String],
    ) -> Result<(String, Record), GatewayError> {
        let _writing = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let mut next = self
            .keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut bytes = [0u8; SECRET_BYTES];
        getrandom::fill(&mut bytes)
            .map_err(|err| GatewayError::Internal(format!("no randomness: {err}")))?;
        let secret = format!("{SECRET_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes));
        let record = record_of(hex(&Sha256::digest(secret.as_bytes())));
        if taken.contains(&record.name) || next.iter().any(|key| key.record.name == record.name) {
            return Err(GatewayError::Conflict(format!(
                "a key named {:?} exists already; names are unique",
                record.name
            )));
        }
        if next.len() >= MAX_KEYS {
            return Err(GatewayError::Conflict(format!(
                "{MAX_KEYS} runtime keys exist already, the most kept; delete one first"
            )));
        }
        next.push(live(record.clone()).map_err(|err| GatewayError::Internal(err.to_string()))?);
        self.persist(&next)?;
        *self.keys.write().unwrap_or_else(PoisonError::into_inner) = next;
        Ok((secret, record))
    }

    /// Removes the key `name` when `allowed` accepts it.
    fn delete(
        &self,
        name: &str,
        allowed: impl FnOnce(&Record) -> Result<(), GatewayError>,
    ) -> Result<Record, GatewayError> {
        let _writing = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let mut next = self
            .keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let Some(index) = next.iter().position(|key| key.record.name == name) else {
            return Err(GatewayError::NoSuchApiKey(name.to_owned()));
        };
        allowed(&next[index].record)?;
        let removed = next.remove(index);
        self.persist(&next)?;
        *self.keys.write().unwrap_or_else(PoisonError::into_inner) = next;
        Ok(removed.record)
    }
}

/// `POST /v1/keys`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "chatgpt-3f1c", "scopes": ["submit", "read"], "targets": ["MAIN"]}))]
pub struct NewApiKey {
    /// Unique among every key (config and runtime): a letter or digit, then letters, digits,
    /// `.`, `_`, `-`; at most 64.
    #[schema(
        pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
        example = "chatgpt-3f1c"
    )]
    pub name: String,
    /// What the key may do (1 to 3; `admin` implies the others).
    #[schema(min_items = 1, max_items = 3)]
    pub scopes: Vec<Scope>,
    /// The targets it may touch (at most 64); left out: every target the creator may touch.
    #[schema(max_items = 64)]
    pub targets: Option<Vec<crate::executor_tokens::TokenTarget>>,
}

/// `201` of `POST /v1/keys`: the only time the secret is shown.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"name": "chatgpt-3f1c", "key": "gr_Zm9v…", "scopes": ["submit", "read"], "targets": [], "created_at": "2026-12-06T05:00:00Z", "created_by": "api_key", "source": "runtime"}))]
pub struct IssuedApiKey {
    /// Its name.
    pub name: String,
    /// The secret (`gr_` and 43 characters): send it as `Authorization: Bearer <key>`. Never
    /// shown again; the gateway keeps only its SHA-256.
    pub key: String,
    /// What it may do.
    pub scopes: Vec<Scope>,
    /// Targets it may touch; empty: all.
    pub targets: Vec<String>,
    /// RFC 3339.
    pub created_at: String,
    /// The key that created it.
    pub created_by: String,
    /// Always `runtime`.
    pub source: String,
}

/// A key without its secret.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"name": "chatgpt-3f1c", "scopes": ["submit", "read"], "targets": [], "created_at": "2026-12-06T05:00:00Z", "created_by": "api_key", "source": "runtime"}))]
pub struct KeyView {
    /// Its name.
    pub name: String,
    /// What it may do.
    pub scopes: Vec<Scope>,
    /// Targets it may touch; empty: all.
    pub targets: Vec<String>,
    /// RFC 3339; null for a key from config.
    pub created_at: Option<String>,
    /// The key that created it; null for a key from config.
    pub created_by: Option<String>,
    /// `config` (read-only: change the gateway's config) or `runtime` (`POST /v1/keys`).
    pub source: String,
}

/// `GET /v1/keys`.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyList {
    /// The keys from config first, then the runtime ones, oldest first.
    pub keys: Vec<KeyView>,
}

fn view(record: &Record) -> KeyView {
    KeyView {
        name: record.name.clone(),
        scopes: record.scopes.clone(),
        targets: record.targets.clone(),
        created_at: Some(record.created_at.clone()),
        created_by: Some(record.created_by.clone()),
        source: "runtime".to_owned(),
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 64
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn invalid(pointer: &str, message: String) -> GatewayError {
    GatewayError::InvalidRequest {
        pointer: pointer.to_owned(),
        message,
    }
}

fn new_key(body: Result<Bytes, BytesRejection>) -> Result<NewApiKey, GatewayError> {
    let body = body.map_err(|rejection| GatewayError::BadRequest(rejection.body_text()))?;
    serde_json::from_slice(&body).map_err(|err| match err.classify() {
        serde_json::error::Category::Data => invalid("", err.to_string()),
        _ => GatewayError::MalformedBody {
            line: err.line(),
            column: err.column(),
            message: err.to_string(),
        },
    })
}

/// True when the caller may touch every one of `targets` (empty: all targets).
fn covers(caller: &Principal, targets: &[String]) -> bool {
    if targets.is_empty() {
        return !caller.is_limited();
    }
    targets.iter().all(|target| caller.may_touch(target))
}

/// Create an API key.
#[utoipa::path(
    post, path = "/v1/keys", operation_id = "createApiKey", tag = "keys",
    description = "Create an API key with some scopes and, optionally, targets. The secret (`gr_…`) is in this answer only; the gateway keeps its SHA-256 in its data_dir, so it survives a restart. Never more scopes or targets than the creating key holds. At most 1,000 runtime keys. Needs the admin scope.",
    request_body(content = NewApiKey, content_type = "application/json"),
    responses(
        (status = 201, description = "Created; `key` is shown only now", body = IssuedApiKey),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin key, or more scopes or targets than the creating key holds", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A key has this name, 1,000 runtime keys exist, or the gateway has no data_dir to keep keys in", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad name, scopes or targets (names the field)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(name))]
pub async fn create_api_key(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, GatewayError> {
    caller.require(Scope::Admin)?;
    let request = new_key(body)?;
    if !valid_name(&request.name) {
        return Err(invalid(
            "/name",
            format!(
                "name {:?} must be 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit",
                request.name
            ),
        ));
    }
    tracing::Span::current().record("name", request.name.as_str());
    let mut scopes = request.scopes;
    scopes.sort_by_key(|scope| *scope as u8);
    scopes.dedup();
    if scopes.is_empty() {
        return Err(invalid(
            "/scopes",
            "give at least one scope: submit, read or admin".to_owned(),
        ));
    }
    for scope in &scopes {
        caller.require(*scope).map_err(|_| {
            tracing::warn!(target: "audit", caller = %caller.name, key_name = %request.name, scope = ?scope, "api key refused: a scope its creator lacks");
            GatewayError::Forbidden(format!(
                "credential {:?} cannot create a key with the {scope:?} scope it lacks",
                caller.name
            ))
        })?;
    }
    let mut targets: Vec<String> = request
        .targets
        .unwrap_or_default()
        .into_iter()
        .map(|target| target.0)
        .collect();
    // A target named twice is one target (and one line of the file).
    let mut seen = std::collections::HashSet::new();
    targets.retain(|target| seen.insert(target.clone()));
    if targets.len() > MAX_TARGETS {
        return Err(invalid(
            "/targets",
            format!("at most {MAX_TARGETS} targets, got {}", targets.len()),
        ));
    }
    for (index, target) in targets.iter().enumerate() {
        TargetName::parse(target).map_err(|err| {
            invalid(
                &format!("/targets/{index}"),
                format!("target {target:?}: {err}"),
            )
        })?;
    }
    if !covers(&caller, &targets) {
        tracing::warn!(target: "audit", caller = %caller.name, key_name = %request.name, targets = ?targets, "api key refused: targets its creator may not touch");
        return Err(GatewayError::Forbidden(format!(
            "credential {:?} may touch only some targets; the new key must name targets, each one it may touch",
            caller.name
        )));
    }
    let credentials = &state.guard.credentials;
    let taken = credentials.config_names();
    let created_by = caller.name.clone();
    let name = request.name.clone();
    let created_at = OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default();
    let guard = std::sync::Arc::clone(&state.guard);
    let (secret, record) = tokio::task::spawn_blocking(move || {
        guard.credentials.store().create(
            |sha256| Record {
                name,
                sha256,
                scopes,
                targets,
                created_at,
                created_by,
            },
            &taken,
        )
    })
    .await
    .map_err(|err| GatewayError::Internal(err.to_string()))??;
    tracing::info!(
        target: "audit",
        caller = %caller.name,
        key_name = %record.name,
        scopes = ?record.scopes,
        targets = ?record.targets,
        "api key created"
    );
    let issued = IssuedApiKey {
        name: record.name,
        key: secret,
        scopes: record.scopes,
        targets: record.targets,
        created_at: record.created_at,
        created_by: record.created_by,
        source: "runtime".to_owned(),
    };
    Ok((StatusCode::CREATED, Json(issued)).into_response())
}

/// Every API key, without secrets.
#[utoipa::path(
    get, path = "/v1/keys", operation_id = "listApiKeys", tag = "keys",
    description = "Every API key the caller may manage, never a secret: the keys from config (`source: config`, read-only) then the runtime ones (`source: runtime`). A key limited to targets sees only keys within them. Needs the admin scope.",
    responses(
        (status = 200, description = "Keys", body = KeyList),
        (status = 401, description = "Missing or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin key", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn list_api_keys(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
) -> Result<Json<KeyList>, GatewayError> {
    caller.require(Scope::Admin)?;
    let credentials = &state.guard.credentials;
    let keys = credentials
        .config_views()
        .into_iter()
        .chain(credentials.store().views())
        .filter(|key| covers(&caller, &key.targets))
        .collect();
    Ok(Json(KeyList { keys }))
}

/// Delete (revoke) an API key.
#[utoipa::path(
    delete, path = "/v1/keys/{name}", operation_id = "deleteApiKey", tag = "keys",
    description = "Revoke a runtime key: the next request with it is a 401. Keys from config cannot be deleted here (409): change the config. Needs the admin scope and every target of the key.",
    params(("name" = String, Path, description = "Key name", pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")),
    responses(
        (status = 200, description = "The deleted key", body = KeyView),
        (status = 401, description = "Missing or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin key, or the key has targets the caller may not touch", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No key has this name", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A key from config", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(name = %name))]
pub async fn delete_api_key(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
    UrlPath(name): UrlPath<String>,
) -> Result<Json<KeyView>, GatewayError> {
    caller.require(Scope::Admin)?;
    if state.guard.credentials.config_names().contains(&name) {
        return Err(GatewayError::Conflict(format!(
            "key {name:?} comes from the gateway's config; remove it there"
        )));
    }
    let guard = std::sync::Arc::clone(&state.guard);
    let who = caller.clone();
    let wanted = name.clone();
    let record = tokio::task::spawn_blocking(move || {
        guard.credentials.store().delete(&wanted, |record| {
            if covers(&who, &record.targets) {
                Ok(())
            } else {
                Err(GatewayError::Forbidden(format!(
                    "credential {:?} may not touch every target of key {:?}",
                    who.name, record.name
                )))
            }
        })
    })
    .await
    .map_err(|err| GatewayError::Internal(err.to_string()))??;
    tracing::info!(target: "audit", caller = %caller.name, key_name = %record.name, "api key deleted");
    Ok(Json(view(&record)))
}

/// A key from config, as listed.
pub(crate) fn config_view(principal: &Principal) -> KeyView {
    KeyView {
        name: principal.name.clone(),
        scopes: principal.scopes().to_vec(),
        targets: principal
            .targets()
            .map(|targets| targets.iter().map(|t| t.as_str().to_owned()).collect())
            .unwrap_or_default(),
        created_at: None,
        created_by: None,
        source: "config".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(valid_name("chatgpt-3f1c"));
        assert!(valid_name("a.b_c"));
        assert!(!valid_name(""));
        assert!(!valid_name("-x"));
        assert!(!valid_name("../x"));
        assert!(!valid_name(&"a".repeat(65)));
    }
}
