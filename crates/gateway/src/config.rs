//! Gateway configuration.

use std::path::PathBuf;
use std::time::Duration;

use ghost_runtime::config::{Secret, ServerConfig};
use ghost_runtime::telemetry::TelemetryConfig;
use serde::{Deserialize, Serialize};

use crate::auth::Scope;

/// Everything the gateway reads at start.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Listen addresses (the HTTP one is the public API) and drain timings.
    pub server: ServerConfig,
    /// Logs and traces.
    pub telemetry: TelemetryConfig,
    /// gRPC URL of the router.
    pub router_url: String,
    /// gRPC URL of the summarizer, for summary text.
    pub summarizer_url: String,
    /// gRPC URL of the alerter, for `GET /v1/alerts` and the dashboard's alerts (none: those
    /// answer 503).
    pub alerter_url: Option<String>,
    /// A single key with every scope and every target, presented as `Authorization: Bearer
    /// <key>` or `X-Api-Key` (what `ghost up` sets). Optional when `api_keys` are configured.
    pub api_key: Secret,
    /// API keys stored as SHA-256 hashes, each with scopes and an optional target allowlist.
    pub api_keys: Vec<ApiKeyConfig>,
    /// Standard Webhooks senders (`webhook-id`, `webhook-timestamp`, `webhook-signature`).
    pub webhooks: Vec<WebhookConfig>,
    /// Accepted clock difference of a signed webhook, and how long its id is remembered.
    #[serde(with = "humantime_serde")]
    pub webhook_tolerance: Duration,
    /// Public base URL advertised in the OpenAPI document (must be https for GPT Actions).
    pub public_url: String,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Longest summary text returned to a caller (a model's context is finite).
    pub summary_max_chars: usize,
    /// Deadline for one call to the router or summarizer.
    #[serde(with = "humantime_serde")]
    pub upstream_timeout: Duration,
    /// The longest a long poll (`GET /v1/patches/{id}?wait=`, MCP `get_patch`) is held
    /// (at most, and by default, 60 s): a longer `wait` is answered with the patch's state when
    /// this is over.
    #[serde(with = "humantime_serde")]
    pub long_poll_max_wait: Duration,
    /// Deadline for one whole HTTP request.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Requests served at once; more are refused with 503 instead of queueing in memory.
    pub max_in_flight: usize,
    /// Deadline for receiving a request's whole body once its headers are in; a slower body is
    /// answered 408. Bodies are read before a place among `max_in_flight` is taken.
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// Bytes of request bodies being read or held at once, over every client: each request
    /// reserves its declared length (or `max_body_bytes` when it declares none) before its
    /// body is read, and one that does not fit is answered 503 with Retry-After. Unset (the
    /// default): 64 × `max_body_bytes` (64 MiB with the defaults: 300 held 1 MB bodies from
    /// 10 addresses cost 21 → 224 MiB RSS with a 512 MiB budget, 21 → 31 MiB with 32 MiB).
    pub max_buffered_body_bytes: Option<usize>,
    /// Per-caller rate limit (per credential); `/v1/messages` is charged one per patch.
    /// Counted by each gateway replica on its own: with N replicas, set the wanted rate / N.
    pub rate_limit: RateLimitConfig,
    /// Limits kept per client address, taken before any shared place or credential check.
    pub client_limits: ClientLimitsConfig,
    /// Most JSON/YAML blocks one `/v1/messages` call may carry; more are refused with 413 and
    /// nothing is queued.
    pub max_patches_per_message: usize,
    /// Target used when a legacy document names none.
    pub default_target: Option<String>,
    /// Per-target aliases and legacy roots. These names and aliases, with the targets an
    /// executor has served through the router since the gateway started, are the known
    /// targets: a patch naming another is refused with 422 ("did you mean MAIN?").
    pub targets: Vec<TargetConfig>,
    /// Queue patches for targets nobody knows yet (default false: refused with 422). Such a
    /// patch waits until an executor serving its target connects; the router counts it in
    /// metrics under `target="other"`.
    pub accept_unknown_targets: bool,
    /// Directory watched for dropped patch files (`<inbox>/<TARGET>/*.json|*.yaml`).
    pub inbox: Option<PathBuf>,
    /// How long a dropped file's size must stay unchanged before it is read.
    #[serde(with = "humantime_serde")]
    pub inbox_settle: Duration,
    /// The web dashboard at `/ui`.
    pub ui: UiConfig,
    /// Where an older gateway kept the API keys created at runtime (`api-keys.json`): such a
    /// file is imported into the router once at start and renamed `api-keys.json.imported`.
    /// Runtime keys now live in the router, shared by every gateway; unset is fine.
    pub data_dir: Option<PathBuf>,
    /// The privacy policy served at `GET /privacy` (markdown-ish text: blank lines part
    /// paragraphs, `#` lines are headings), e.g. for a public Custom GPT. Unset, and no
    /// `privacy_policy_file`: a built-in text saying what the gateway stores.
    pub privacy_policy: Option<String>,
    /// A file holding the privacy policy (read once at start, at most 256 KiB); exclusive with
    /// `privacy_policy`.
    pub privacy_policy_file: Option<PathBuf>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            server: ServerConfig::loopback(50050, 8080),
            telemetry: TelemetryConfig::default(),
            router_url: "http://127.0.0.1:50051".to_owned(),
            summarizer_url: "http://127.0.0.1:50053".to_owned(),
            alerter_url: None,
            api_key: Secret::default(),
            api_keys: Vec::new(),
            webhooks: Vec::new(),
            webhook_tolerance: Duration::from_secs(300),
            public_url: String::new(),
            max_body_bytes: 1024 * 1024,
            summary_max_chars: 100_000,
            upstream_timeout: Duration::from_secs(10),
            long_poll_max_wait: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
            max_in_flight: 256,
            body_read_timeout: Duration::from_secs(10),
            max_buffered_body_bytes: None,
            rate_limit: RateLimitConfig::default(),
            client_limits: ClientLimitsConfig::default(),
            max_patches_per_message: 20,
            default_target: None,
            targets: Vec::new(),
            accept_unknown_targets: false,
            inbox: None,
            inbox_settle: Duration::from_millis(300),
            ui: UiConfig::default(),
            data_dir: None,
            privacy_policy: None,
            privacy_policy_file: None,
        }
    }
}

/// The web dashboard (`/ui`): server-rendered pages behind a login with an API key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UiConfig {
    /// Serve the dashboard.
    pub enabled: bool,
    /// How long a login lasts.
    #[serde(with = "humantime_serde")]
    pub session_ttl: Duration,
    /// Sessions held at once (by the router, for every replica); logins beyond are refused
    /// (503) until some expire.
    pub max_sessions: usize,
    /// Base URL of a Jaeger UI; trace ids link to `<jaeger_url>/trace/<id>` (none: no link).
    pub jaeger_url: Option<String>,
    /// How often open pages poll for fresh content (0: never).
    #[serde(with = "humantime_serde")]
    pub refresh: Duration,
}

impl Default for UiConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            session_ttl: Duration::from_secs(8 * 3600),
            max_sessions: 10_000,
            jaeger_url: None,
            refresh: Duration::from_secs(2),
        }
    }
}

/// One API key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// Who holds it, for logs and rate limiting.
    pub name: String,
    /// Lowercase hex SHA-256 of the key (`printf %s KEY | sha256sum`).
    pub sha256: String,
    /// What it may do.
    pub scopes: Vec<Scope>,
    /// Targets it may touch; empty: all.
    #[serde(default)]
    pub targets: Vec<String>,
}

/// One Standard Webhooks sender.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Who sends, for logs and rate limiting.
    pub name: String,
    /// `whsec_<base64>` secrets; several during rotation.
    pub secrets: Vec<Secret>,
    /// What a verified request may do (default: submit).
    #[serde(default = "submit_only")]
    pub scopes: Vec<Scope>,
    /// Targets it may touch; empty: all.
    #[serde(default)]
    pub targets: Vec<String>,
}

fn submit_only() -> Vec<Scope> {
    vec![Scope::Submit]
}

/// Token bucket per caller, per gateway replica: with N replicas behind a load balancer a
/// caller gets up to N times the rate, so set `per_minute` and `burst` to the wanted rate / N
/// (shared limits would put a router call on every request's path; the router's own intake
/// bounds are global).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Sustained requests per minute.
    pub per_minute: u32,
    /// Requests allowed in a burst.
    pub burst: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            per_minute: 600,
            burst: 60,
        }
    }
}

/// Limits kept per client address (the TCP peer, or the client a proxy in
/// `server.trusted_proxies` names; an IPv6 /64 counts as one address).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientLimitsConfig {
    /// Requests from one address being read or served at once; more are refused with 429.
    pub max_in_flight: usize,
    /// Failed dashboard logins per address (correct logins are not counted).
    pub login: RateLimitConfig,
    /// Failed credential checks per address (a wrong API key, a bad webhook signature, a failed
    /// login). Once spent, further failures from that address are answered 429 (with
    /// Retry-After) until the bucket refills; valid credentials from it are still served.
    pub auth_failures: RateLimitConfig,
    /// Addresses remembered per kind of bucket; beyond, refilled buckets and then the longest
    /// unused are forgotten, so many addresses cannot grow memory without bound.
    pub max_tracked_addresses: usize,
}

impl Default for ClientLimitsConfig {
    fn default() -> Self {
        Self {
            max_in_flight: 32,
            login: RateLimitConfig {
                per_minute: 10,
                burst: 10,
            },
            auth_failures: RateLimitConfig {
                per_minute: 10,
                burst: 20,
            },
            max_tracked_addresses: 10_000,
        }
    }
}

/// A workspace as the gateway knows it: old names and old absolute roots.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// The target name, e.g. `MAIN`.
    pub name: String,
    /// Old names meaning this target, e.g. `BRAUN`.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Absolute directories that were this workspace on old machines.
    #[serde(default)]
    pub legacy_roots: Vec<String>,
}
