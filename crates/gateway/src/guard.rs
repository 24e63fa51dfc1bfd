//! What stands in front of every API route: a concurrency cap that sheds load (503), a request
//! deadline, authentication (API key or signed webhook, 401) and a per-caller rate limit (429).

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::Semaphore;

use crate::auth::Credentials;
use crate::config::RateLimitConfig;
use crate::error::GatewayError;

/// Shared guard state.
pub struct Guard {
    /// Who may call.
    pub credentials: Credentials,
    limiter: DefaultKeyedRateLimiter<String>,
    in_flight: Arc<Semaphore>,
    request_timeout: Duration,
    max_body_bytes: usize,
}

impl Guard {
    /// A guard from its limits.
    pub fn new(
        credentials: Credentials,
        rate: &RateLimitConfig,
        max_in_flight: usize,
        request_timeout: Duration,
        max_body_bytes: usize,
    ) -> Self {
        let per_minute = NonZeroU32::new(rate.per_minute).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(rate.burst).unwrap_or(NonZeroU32::MIN);
        Self {
            credentials,
            limiter: RateLimiter::keyed(Quota::per_minute(per_minute).allow_burst(burst)),
            in_flight: Arc::new(Semaphore::new(max_in_flight.max(1))),
            request_timeout,
            max_body_bytes,
        }
    }

    /// Charges one request to `caller`; 429 with the wait when the bucket is empty.
    pub fn charge(&self, caller: &str) -> Result<(), GatewayError> {
        match self.limiter.check_key(&caller.to_owned()) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                tracing::warn!(caller, wait_ms = wait.as_millis() as u64, "rate limit hit");
                Err(GatewayError::TooManyRequests {
                    retry_after_s: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
                })
            }
        }
    }
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Sheds load beyond the concurrency cap and bounds each request's time.
pub async fn shed_and_time(
    State(guard): State<Arc<Guard>>,
    request: Request,
    next: Next,
) -> Response {
    let Ok(_permit) = Arc::clone(&guard.in_flight).try_acquire_owned() else {
        tracing::warn!("concurrency cap reached; request shed");
        return GatewayError::Overloaded("too many requests in flight").into_response();
    };
    match tokio::time::timeout(guard.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => GatewayError::Overloaded("request timed out").into_response(),
    }
}

/// Authenticates (API key, or Standard Webhooks signature over the body), rate-limits, and
/// hands the [`crate::auth::Principal`] to the handler as a request extension.
pub async fn authenticate(
    State(guard): State<Arc<Guard>>,
    request: Request,
    next: Next,
) -> Response {
    let (mut parts, body) = request.into_parts();
    let (principal, body) = if Credentials::is_webhook(&parts.headers) {
        let bytes = match axum::body::to_bytes(body, guard.max_body_bytes).await {
            Ok(bytes) => bytes,
            Err(_) => return GatewayError::PayloadTooLarge(guard.max_body_bytes).into_response(),
        };
        match guard
            .credentials
            .webhook(&parts.headers, &bytes, now_unix())
        {
            Ok(principal) => (principal, Body::from(bytes)),
            Err(err) => return err.into_response(),
        }
    } else {
        match guard.credentials.api_key(&parts.headers) {
            Ok(principal) => (principal, body),
            Err(err) => return err.into_response(),
        }
    };
    if let Err(err) = guard.charge(&principal.name) {
        return err.into_response();
    }
    parts.extensions.insert(principal);
    next.run(Request::from_parts(parts, body)).await
}
