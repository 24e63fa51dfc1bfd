//! RED metrics (rate, errors, duration) for every service's HTTP and gRPC sides:
//! `ghost_http_requests_total{method,route,status}`, `ghost_http_request_duration_seconds`,
//! `ghost_grpc_requests_total{grpc_service,grpc_method,grpc_code}` and
//! `ghost_grpc_request_duration_seconds`. Prometheus adds the service as the scrape target.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;

/// axum middleware: counts and times each request by its matched route (not its raw path, so
/// ids do not explode the label set).
pub async fn http(request: Request, next: Next) -> Response {
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("ghost_http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("ghost_http_request_duration_seconds", "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

/// The `grpc_service` and `grpc_method` of calls answered UNIMPLEMENTED (a path nothing serves).
pub const UNKNOWN_METHOD: &str = "(unimplemented)";

/// The `grpc_service` and `grpc_method` of calls the credential gate refused before any
/// service saw them (the path may be invented).
pub const REFUSED_METHOD: &str = "(refused)";

/// A tower layer for the tonic server recording gRPC RED metrics. The status code is read from
/// the response headers (where tonic puts it for calls that fail before any message); a call
/// whose headers carry no status counts as `Ok`: an error sent later in trailers (mid-stream)
/// is not seen.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcLayer;

impl<S> tower::Layer<S> for GrpcLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics { inner }
    }
}

/// The service [`GrpcLayer`] wraps around the gRPC routes.
#[derive(Debug, Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
}

fn code_name(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::Ok => "OK",
        tonic::Code::Cancelled => "CANCELLED",
        tonic::Code::Unknown => "UNKNOWN",
        tonic::Code::InvalidArgument => "INVALID_ARGUMENT",
        tonic::Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        tonic::Code::NotFound => "NOT_FOUND",
        tonic::Code::AlreadyExists => "ALREADY_EXISTS",
        tonic::Code::PermissionDenied => "PERMISSION_DENIED",
        tonic::Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        tonic::Code::FailedPrecondition => "FAILED_PRECONDITION",
        tonic::Code::Aborted => "ABORTED",
        tonic::Code::OutOfRange => "OUT_OF_RANGE",
        tonic::Code::Unimplemented => "UNIMPLEMENTED",
        tonic::Code::Internal => "INTERNAL",
        tonic::Code::Unavailable => "UNAVAILABLE",
        tonic::Code::DataLoss => "DATA_LOSS",
        tonic::Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

impl<S, B, RB> tower::Service<http::Request<B>> for GrpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let (service, method) = request
            .uri()
            .path()
            .trim_start_matches('/')
            .split_once('/')
            .map_or_else(
                || ("unknown".to_owned(), "unknown".to_owned()),
                |(service, method)| (service.to_owned(), method.to_owned()),
            );
        let started = Instant::now();
        let call = self.inner.call(request);
        Box::pin(async move {
            let result = call.await;
            let refused = matches!(&result, Ok(response) if response.extensions().get::<crate::credential::Refused>().is_some());
            let code = match &result {
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .and_then(|value| value.to_str().ok())
                    .and_then(|value| value.parse::<i32>().ok())
                    .map_or("OK", |code| code_name(tonic::Code::from_i32(code))),
                Err(_) => "UNKNOWN",
            };
            // A path no service serves is answered UNIMPLEMENTED before any handler runs: one
            // label for all of them, so a client cannot grow the series by inventing names.
            // A call the gate refused may name any path: one label for those too.
            let (service, method) = if refused {
                (REFUSED_METHOD.to_owned(), REFUSED_METHOD.to_owned())
            } else if code == "UNIMPLEMENTED" {
                (UNKNOWN_METHOD.to_owned(), UNKNOWN_METHOD.to_owned())
            } else {
                (service, method)
            };
            metrics::counter!("ghost_grpc_requests_total", "grpc_service" => service.clone(), "grpc_method" => method.clone(), "grpc_code" => code)
                .increment(1);
            metrics::histogram!("ghost_grpc_request_duration_seconds", "grpc_service" => service, "grpc_method" => method)
                .record(started.elapsed().as_secs_f64());
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tower::{Layer, ServiceExt};

    use super::*;

    /// Answers every call with `grpc-status` `code` in the headers, as tonic does for a path
    /// no service serves (12, UNIMPLEMENTED).
    async fn answer(code: &'static str, uri: String) -> Result<http::Response<()>, Infallible> {
        let request = http::Request::builder().uri(uri).body(()).expect("request");
        GrpcLayer
            .layer(tower::service_fn(move |_: http::Request<()>| async move {
                Ok::<_, Infallible>(
                    http::Response::builder()
                        .header("grpc-status", code)
                        .body(())
                        .expect("response"),
                )
            }))
            .oneshot(request)
            .await
    }

    fn series(rendered: &str, needle: &str) -> usize {
        rendered
            .lines()
            .filter(|line| line.starts_with("ghost_grpc_requests_total{") && line.contains(needle))
            .count()
    }

    #[tokio::test]
    async fn invented_method_names_share_one_series_and_served_ones_keep_their_names() {
        let handle = crate::metrics::handle();
        for n in 0..50 {
            answer("12", format!("/made.up.Service{n}/Method{n}"))
                .await
                .expect("served");
        }
        answer("0", "/ghost.router.v1.Router/RedTestSubmit".to_owned())
            .await
            .expect("served");
        let rendered = handle.render();
        assert_eq!(series(&rendered, "made.up.Service"), 0, "{rendered}");
        assert_eq!(series(&rendered, UNKNOWN_METHOD), 1, "{rendered}");
        assert_eq!(series(&rendered, "RedTestSubmit"), 1, "{rendered}");
    }
}
