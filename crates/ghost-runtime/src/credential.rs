//! The deployment's service credential on the server side, and the method allow-list of a
//! restricted listener (the router's executor port): one tower layer on a gRPC server.
//!
//! - Every method needs `authorization: Bearer <server.internal_token>` except health checks,
//!   reflection and the methods the service lists as open (the router's `Work` stream, which
//!   authenticates executors itself). A call without it, or with another token, is answered
//!   UNAUTHENTICATED and counted in `ghost_grpc_unauthenticated_total`.
//! - With no token configured (allowed on a loopback listener only), every call passes.
//! - On a restricted listener, a method outside its list (and health) is answered
//!   PERMISSION_DENIED before the credential is looked at.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// Prefixes of the methods open to every caller on every listener.
const ALWAYS_OPEN: &[&str] = &[
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// The message of an UNAUTHENTICATED answer.
pub const NEEDS_CREDENTIAL: &str = "this call needs the deployment's service credential";

/// The message of a PERMISSION_DENIED answer on a restricted listener.
pub const NOT_ON_THIS_PORT: &str =
    "this port serves only the executors' Work stream and health checks";

/// Equal in time independent of where `a` and `b` differ (their lengths may leak).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0_u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// Marks a response the [`Gate`] answered itself (the call reached no service): the metrics
/// layer counts it under one `(refused)` label, not under the path the caller invented.
#[derive(Debug, Clone, Copy)]
pub struct Refused;

/// The health method a restricted listener serves (not `Watch`: a stream held open for free).
const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";

/// What a gRPC server lets through.
#[derive(Clone)]
pub struct Gate {
    /// Short service name, for the metric and logs.
    pub service: &'static str,
    /// The service credential; `None`: every caller passes.
    pub token: Option<Arc<[u8]>>,
    /// Full method paths (`/pkg.Service/Method`) open without the credential.
    pub open: Arc<[&'static str]>,
    /// On a restricted listener: the only methods served (besides health).
    pub only: Option<Arc<[&'static str]>>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("service", &self.service)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("open", &self.open)
            .field("only", &self.only)
            .finish()
    }
}

impl Gate {
    /// Why a call to `path` with `authorization` is refused, if it is.
    fn refusal(&self, path: &str, authorization: Option<&[u8]>) -> Option<tonic::Status> {
        if let Some(only) = &self.only
            && path != HEALTH_CHECK
            && !only.contains(&path)
        {
            return Some(tonic::Status::permission_denied(NOT_ON_THIS_PORT));
        }
        let token = self.token.as_ref()?;
        if ALWAYS_OPEN.iter().any(|prefix| path.starts_with(prefix)) || self.open.contains(&path) {
            return None;
        }
        let presented = authorization.and_then(|value| {
            let scheme = value.get(..7)?;
            scheme
                .eq_ignore_ascii_case(b"bearer ")
                .then(|| value.get(7..))
                .flatten()
        });
        match presented {
            Some(presented) if constant_time_eq(presented, token) => None,
            _ => {
                tracing::debug!(
                    service = self.service,
                    method = path,
                    "call without the service credential refused"
                );
                metrics::counter!("ghost_grpc_unauthenticated_total", "service" => self.service)
                    .increment(1);
                Some(tonic::Status::unauthenticated(NEEDS_CREDENTIAL))
            }
        }
    }
}

impl<S> tower::Layer<S> for Gate {
    type Service = Gated<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Gated {
            gate: self.clone(),
            inner,
        }
    }
}

/// The service [`Gate`] wraps around the gRPC routes.
#[derive(Debug, Clone)]
pub struct Gated<S> {
    gate: Gate,
    inner: S,
}

impl<S, B, RB> tower::Service<http::Request<B>> for Gated<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let refusal = self.gate.refusal(
            request.uri().path(),
            request
                .headers()
                .get(http::header::AUTHORIZATION)
                .map(http::HeaderValue::as_bytes),
        );
        match refusal {
            Some(status) => {
                let mut response = status.into_http();
                response.extensions_mut().insert(Refused);
                Box::pin(std::future::ready(Ok(response)))
            }
            None => Box::pin(self.inner.call(request)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn make(token: Option<&str>, only: Option<&[&'static str]>) -> Gate {
        Gate {
            service: "test",
            token: token.map(|token| Arc::from(token.as_bytes())),
            open: Arc::from(["/ghost.router.v1.RouterService/Work"].as_slice()),
            only: only.map(Arc::from),
        }
    }

    fn code(gate: &Gate, path: &str, authorization: Option<&str>) -> tonic::Code {
        gate.refusal(path, authorization.map(str::as_bytes))
            .map_or(tonic::Code::Ok, |status| status.code())
    }

    #[test]
    fn control_calls_need_the_token_and_open_ones_do_not() {
        let gate = make(Some("s3cret"), None);
        let pause = "/ghost.router.v1.RouterService/Pause";
        assert_eq!(code(&gate, pause, None), tonic::Code::Unauthenticated);
        assert_eq!(
            code(&gate, pause, Some("Bearer wrong")),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            code(&gate, pause, Some("Bearer s3cre")),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            code(&gate, pause, Some("s3cret")),
            tonic::Code::Unauthenticated
        );
        assert_eq!(code(&gate, pause, Some("Bearer s3cret")), tonic::Code::Ok);
        assert_eq!(code(&gate, pause, Some("bearer s3cret")), tonic::Code::Ok);
        assert_eq!(
            code(&gate, "/grpc.health.v1.Health/Check", None),
            tonic::Code::Ok
        );
        assert_eq!(
            code(&gate, "/ghost.router.v1.RouterService/Work", None),
            tonic::Code::Ok
        );
        assert_eq!(code(&make(None, None), pause, None), tonic::Code::Ok);
    }

    #[test]
    fn a_restricted_listener_serves_only_its_methods_and_health() {
        let gate = make(
            Some("s3cret"),
            Some(&["/ghost.router.v1.RouterService/Work"]),
        );
        assert_eq!(
            code(
                &gate,
                "/ghost.router.v1.RouterService/Pause",
                Some("Bearer s3cret")
            ),
            tonic::Code::PermissionDenied
        );
        assert_eq!(
            code(
                &gate,
                "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                None
            ),
            tonic::Code::PermissionDenied
        );
        assert_eq!(
            code(&gate, "/grpc.health.v1.Health/Check", None),
            tonic::Code::Ok
        );
        assert_eq!(
            code(&gate, "/ghost.router.v1.RouterService/Work", None),
            tonic::Code::Ok
        );
        assert_eq!(
            code(&gate, "/grpc.health.v1.Health/Watch", None),
            tonic::Code::PermissionDenied
        );
    }

    #[test]
    fn the_debug_form_hides_the_token() {
        let shown = format!("{:?}", make(Some("s3cret"), None));
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(!shown.contains("115"), "no bytes either: {shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }
}
