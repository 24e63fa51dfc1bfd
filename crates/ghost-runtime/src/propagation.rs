//! W3C trace-context propagation: the one module that moves a trace across process edges.
//!
//! - gRPC clients add [`TraceInterceptor`]; gRPC and HTTP servers build their request span
//!   with [`grpc_server_span`] / [`http_server_span`], which continue an incoming `traceparent`.
//! - The router stores [`current_traceparent`] with each patch and hands it to executors, which
//!   call [`set_parent`] so a patch stays one trace across the long-lived Work stream.
//! - Outgoing HTTP (Slack) calls [`inject_headers`].
//!
//! The propagator is used directly rather than through a global, so propagation works the
//! same whether or not an exporter is installed.

use std::collections::HashMap;

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::config::ServerConfig;

const TRACEPARENT: &str = "traceparent";

/// The `traceparent` of the current span, if it is being traced.
pub fn current_traceparent() -> Option<String> {
    traceparent_of(&Span::current())
}

/// The `traceparent` of `span`, if it is being traced.
pub fn traceparent_of(span: &Span) -> Option<String> {
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// The 32-hex-digit trace id inside a `traceparent` (empty if it is malformed).
pub fn trace_id_of(traceparent: &str) -> String {
    let mut parts = traceparent.split('-');
    match (parts.next(), parts.next()) {
        (Some(_version), Some(trace_id)) if trace_id.len() == 32 => trace_id.to_owned(),
        _ => String::new(),
    }
}

/// The trace id of the current span (empty when not traced).
pub fn current_trace_id() -> String {
    current_traceparent()
        .map(|tp| trace_id_of(&tp))
        .unwrap_or_default()
}

/// Makes `span` a child of the remote span named by `traceparent` (ignored when empty or
/// malformed: the span then starts its own trace).
pub fn set_parent(span: &Span, traceparent: &str) {
    if traceparent.is_empty() {
        return;
    }
    let mut carrier = HashMap::new();
    carrier.insert(TRACEPARENT.to_owned(), traceparent.to_owned());
    let context = TraceContextPropagator::new().extract(&carrier);
    if !context.span().span_context().is_valid() {
        tracing::debug!(traceparent, "ignoring malformed traceparent");
        return;
    }
    if let Err(err) = span.set_parent(context) {
        tracing::debug!(error = %err, "cannot set span parent");
    }
}

struct HeaderCarrier<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderCarrier<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

struct HeaderReader<'a>(&'a http::HeaderMap);

impl Extractor for HeaderReader<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Adds the current span's `traceparent` to outgoing HTTP headers.
pub fn inject_headers(headers: &mut http::HeaderMap) {
    let context = Span::current().context();
    TraceContextPropagator::new().inject_context(&context, &mut HeaderCarrier(headers));
}

/// The remote parent context named by incoming HTTP/gRPC headers.
pub fn extract_headers(headers: &http::HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&HeaderReader(headers))
}

fn continue_trace(span: &Span, headers: &http::HeaderMap) {
    let parent = extract_headers(headers);
    if parent.span().span_context().is_valid()
        && let Err(err) = span.set_parent(parent)
    {
        tracing::debug!(error = %err, "cannot set span parent");
    }
}

/// The server span of one gRPC call, continuing the caller's trace.
pub fn grpc_server_span<B>(service: &'static str, request: &http::Request<B>) -> Span {
    let path = request.uri().path();
    let span = tracing::info_span!(
        "grpc.server",
        otel.name = %path.trim_start_matches('/'),
        otel.kind = "server",
        rpc.system = "grpc",
        ghost.service = service,
    );
    continue_trace(&span, request.headers());
    span
}

/// The server span of one HTTP request, continuing the caller's trace.
pub fn http_server_span<B>(service: &'static str, request: &http::Request<B>) -> Span {
    let span = tracing::info_span!(
        "http.server",
        otel.name = %format!("{} {}", request.method(), request.uri().path()),
        otel.kind = "server",
        http.request.method = %request.method(),
        url.path = %request.uri().path(),
        ghost.service = service,
    );
    continue_trace(&span, request.headers());
    span
}

/// A tonic client interceptor that sends the current span's trace context, and the
/// deployment's service credential when there is one.
#[derive(Debug, Clone, Default)]
pub struct TraceInterceptor {
    authorization: Option<tonic::metadata::AsciiMetadataValue>,
}

impl tonic::service::Interceptor for TraceInterceptor {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(traceparent) = current_traceparent()
            && let Ok(value) = traceparent.parse()
        {
            request.metadata_mut().insert(TRACEPARENT, value);
        }
        if let Some(authorization) = &self.authorization
            && !request.metadata().contains_key("authorization")
        {
            request
                .metadata_mut()
                .insert("authorization", authorization.clone());
        }
        // A peer that takes the call and never answers fails it at the deadline instead of
        // holding it (and an outbox row, a pooled connection) forever.
        crate::peers::default_deadline(&mut request, crate::peers::PEER_TIMEOUTS.call);
        Ok(request)
    }
}

/// How a service dials its peers: the service credential every call carries and the CA it
/// trusts for `https://` peers. Made once, when the service is built.
#[derive(Debug, Clone, Default)]
pub struct Upstream {
    authorization: Option<tonic::metadata::AsciiMetadataValue>,
    ca: Option<Vec<u8>>,
    allow_plaintext_peers: bool,
}

impl Upstream {
    /// From the service's `server` section: `internal_token` (or `internal_token_file`) and
    /// `tls.ca`. Errors name the file or setting that is wrong.
    pub fn new(server: &ServerConfig) -> anyhow::Result<Self> {
        let token = server.internal_token()?;
        let authorization = if token.is_empty() {
            None
        } else {
            let mut value: tonic::metadata::AsciiMetadataValue =
                format!("Bearer {}", token.expose()).parse().map_err(|_| {
                    anyhow::anyhow!(
                        "server.internal_token must be printable ASCII without line breaks"
                    )
                })?;
            value.set_sensitive(true);
            Some(value)
        };
        let ca = match &server.tls.ca {
            Some(path) => Some(crate::tls::read_ca(path)?),
            None => None,
        };
        Ok(Self {
            authorization,
            ca,
            allow_plaintext_peers: server.allow_plaintext_peers,
        })
    }

    /// The same peers' CA, without the service credential: for calls that need none (health
    /// checks), so the credential is not sent where it is not needed.
    #[must_use]
    pub fn without_credential(&self) -> Self {
        Self {
            authorization: None,
            ..self.clone()
        }
    }
}

/// The message of a refused `http://` peer URL.
pub const PLAINTEXT_PEER: &str = "the service credential would cross the network in plaintext: use https:// or set server.allow_plaintext_peers = true for a trusted network";

/// True when `uri` names this host (`localhost`, a loopback address).
fn is_loopback(uri: &http::Uri) -> bool {
    let host = uri.host().unwrap_or("");
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.to_ascii_lowercase().ends_with(".localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback() || ip.to_canonical().is_loopback())
}

/// A gRPC client channel wrapped with [`TraceInterceptor`].
pub type TracedChannel =
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, TraceInterceptor>;

/// A lazily connecting, traced channel to `endpoint` (e.g. `http://127.0.0.1:50051`, or
/// `https://router.example:50051`, verified against `upstream`'s CA or else the web PKI roots)
/// whose calls carry `upstream`'s service credential.
///
/// Lazy so a service starts even when its peer is down; calls then fail with `UNAVAILABLE`,
/// which callers map to a retry or a 503. Bounded by [`crate::peers::PEER_TIMEOUTS`]: a call
/// without its own deadline gets the default one, and a silent peer's connection is closed.
///
/// Refused (naming the URL): an `http://` peer off loopback while `upstream` carries the
/// service credential and `server.allow_plaintext_peers` is off.
pub fn traced_channel(endpoint: &str, upstream: &Upstream) -> anyhow::Result<TracedChannel> {
    let url = endpoint;
    let mut endpoint = crate::peers::PEER_TIMEOUTS.endpoint(url)?;
    if upstream.authorization.is_some()
        && !upstream.allow_plaintext_peers
        && endpoint.uri().scheme_str() != Some("https")
        && !is_loopback(endpoint.uri())
    {
        anyhow::bail!("peer URL {url}: {PLAINTEXT_PEER}");
    }
    if endpoint.uri().scheme_str() == Some("https") {
        let tls = tonic::transport::ClientTlsConfig::new();
        let tls = match &upstream.ca {
            Some(ca) => tls.ca_certificate(tonic::transport::Certificate::from_pem(ca)),
            None => tls.with_webpki_roots(),
        };
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|err| anyhow::anyhow!("peer URL {url}: {err}"))?;
    }
    Ok(tonic::service::interceptor::InterceptedService::new(
        endpoint.connect_lazy(),
        TraceInterceptor {
            authorization: upstream.authorization.clone(),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_ids_come_out_of_traceparents() {
        assert_eq!(
            trace_id_of("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(trace_id_of("garbage"), "");
        assert_eq!(trace_id_of(""), "");
    }

    #[tokio::test]
    async fn the_credential_goes_to_plaintext_peers_only_on_loopback_or_when_allowed() {
        let server = ServerConfig {
            internal_token: crate::config::Secret::new("s3cret"),
            ..ServerConfig::ephemeral()
        };
        let upstream = Upstream::new(&server).expect("upstream");
        for url in [
            "http://127.0.0.1:50051",
            "http://localhost:50051",
            "http://[::1]:50051",
            "https://router.example:50051",
        ] {
            traced_channel(url, &upstream).unwrap_or_else(|err| panic!("{url}: {err}"));
        }
        for url in ["http://router:50051", "http://10.0.0.7:50051"] {
            let err = traced_channel(url, &upstream)
                .map(|_| ())
                .expect_err(url)
                .to_string();
            assert!(err.contains(url), "{err}");
            assert!(err.contains(PLAINTEXT_PEER), "{err}");
            traced_channel(url, &upstream.without_credential()).expect("no credential to leak");
        }
        let allowed = Upstream::new(&ServerConfig {
            allow_plaintext_peers: true,
            ..server
        })
        .expect("upstream");
        traced_channel("http://router:50051", &allowed).expect("allowed on a trusted network");
        traced_channel("http://router:50051", &Upstream::default()).expect("no credential");
    }

    #[test]
    fn untraced_code_has_no_traceparent() {
        assert_eq!(current_traceparent(), None);
        assert_eq!(current_trace_id(), "");
    }
}
