//! What stands in front of every route, in order: a share of requests at once per client
//! address (429), the body read under its own deadline (408) before any shared place is taken,
//! a concurrency cap that sheds load (503), a request deadline; then, on API routes,
//! authentication (API key or signed webhook, 401) behind a per-address bucket of failed checks
//! (429), replays of committed webhook deliveries, and a per-caller rate limit (429).

use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::Semaphore;

use crate::auth::Credentials;
use crate::clients::{ClientAddress, Clients};
use crate::config::GatewayConfig;
use crate::deliveries::{Begin, Deliveries};
use crate::error::GatewayError;

/// Shared guard state.
pub struct Guard {
    /// Who may call.
    pub credentials: Credentials,
    /// Limits kept per client address.
    pub clients: Clients,
    deliveries: Deliveries,
    limiter: DefaultKeyedRateLimiter<String>,
    burst: u32,
    in_flight: Arc<Semaphore>,
    request_timeout: Duration,
    body_read_timeout: Duration,
    max_body_bytes: usize,
}

/// 429 with the wait rounded up to whole seconds.
fn too_many(wait: Duration) -> GatewayError {
    GatewayError::TooManyRequests {
        retry_after_s: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
    }
}

impl Guard {
    /// A guard from the gateway's limits.
    pub fn new(credentials: Credentials, config: &GatewayConfig) -> Self {
        let rate = &config.rate_limit;
        let per_minute = NonZeroU32::new(rate.per_minute).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(rate.burst).unwrap_or(NonZeroU32::MIN);
        Self {
            credentials,
            clients: Clients::new(&config.client_limits, &config.server.trusted_proxies),
            deliveries: Deliveries::new(config.webhook_tolerance * 2),
            limiter: RateLimiter::keyed(Quota::per_minute(per_minute).allow_burst(burst)),
            burst: burst.get(),
            in_flight: Arc::new(Semaphore::new(config.max_in_flight.max(1))),
            request_timeout: config.request_timeout,
            body_read_timeout: config.body_read_timeout,
            max_body_bytes: config.max_body_bytes,
        }
    }

    /// Charges one request to `caller`; 429 with the wait when the bucket is empty.
    pub fn charge(&self, caller: &str) -> Result<(), GatewayError> {
        self.charge_more(caller, 1)
    }

    /// Charges `count` units to `caller` at once, all or nothing; 429 when they do not fit now.
    /// `count` must not exceed [`Guard::burst`].
    pub fn charge_more(&self, caller: &str, count: usize) -> Result<(), GatewayError> {
        let Some(units) = u32::try_from(count).ok().and_then(NonZeroU32::new) else {
            return Ok(());
        };
        match self.limiter.check_key_n(&caller.to_owned(), units) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                tracing::warn!(
                    caller,
                    units = count,
                    wait_ms = wait.as_millis() as u64,
                    "rate limit hit"
                );
                Err(too_many(wait))
            }
            Err(_) => Err(GatewayError::Internal(format!(
                "{count} units charged at once exceed the burst of {}",
                self.burst
            ))),
        }
    }

    /// The per-caller burst: the most units one request can be charged.
    pub fn burst(&self) -> usize {
        usize::try_from(self.burst).unwrap_or(usize::MAX)
    }

    /// 429 while `client` has spent its bucket of failed credential checks.
    fn check_failures(&self, client: IpAddr) -> Result<(), GatewayError> {
        self.clients.failures.check(client).map_err(|wait| {
            tracing::warn!(%client, "credential refused unchecked: too many failures from this address");
            too_many(wait)
        })
    }

    /// Counts a failed credential check against `client`.
    pub fn record_failure(&self, client: IpAddr) {
        // A spent bucket already refuses the next attempt; nothing more to do here.
        let _ = self.clients.failures.take(client);
    }

    /// Admits one dashboard login attempt from `client`, or 429.
    pub fn login_attempt(&self, client: IpAddr) -> Result<(), GatewayError> {
        self.check_failures(client)?;
        self.clients.logins.take(client).map_err(|wait| {
            tracing::warn!(%client, "login attempts from this address at their limit");
            too_many(wait)
        })
    }

    /// The whole body, within the body deadline and the size limit.
    async fn read_body(&self, headers: &HeaderMap, body: Body) -> Result<Bytes, GatewayError> {
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u64>().ok());
        if declared.is_some_and(|length| length > self.max_body_bytes as u64) {
            return Err(GatewayError::PayloadTooLarge(self.max_body_bytes));
        }
        let reading = axum::body::to_bytes(body, self.max_body_bytes);
        match tokio::time::timeout(self.body_read_timeout, reading).await {
            Ok(Ok(bytes)) => Ok(bytes),
            // Over the limit, or the client hung up mid-body (then nobody reads the answer).
            Ok(Err(_)) => Err(GatewayError::PayloadTooLarge(self.max_body_bytes)),
            Err(_) => Err(GatewayError::BodyTimeout(self.body_read_timeout.as_secs())),
        }
    }
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The client address [`shed_and_time`] resolved (unspecified outside it, e.g. in unit tests).
pub fn client_of(request: &axum::http::Extensions) -> IpAddr {
    request
        .get::<ClientAddress>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |client| client.0)
}

/// Takes the client's share, reads the body, then sheds load beyond the concurrency cap and
/// bounds each request's time.
pub async fn shed_and_time(
    State(guard): State<Arc<Guard>>,
    request: Request,
    next: Next,
) -> Response {
    let client = guard
        .clients
        .address(request.extensions(), request.headers());
    let Some(_client_slot) = guard.clients.admit(client) else {
        tracing::warn!(%client, "requests in flight from one address at its cap; refused");
        return GatewayError::TooManyRequests { retry_after_s: 1 }.into_response();
    };
    let (mut parts, body) = request.into_parts();
    // Read before a shared place is taken: a slow sender then holds only its own address's.
    let body = match guard.read_body(&parts.headers, body).await {
        Ok(body) => body,
        Err(err) => return err.into_response(),
    };
    parts.extensions.insert(ClientAddress(client));
    let Ok(_permit) = Arc::clone(&guard.in_flight).try_acquire_owned() else {
        tracing::warn!("concurrency cap reached; request shed");
        return GatewayError::Overloaded("too many requests in flight").into_response();
    };
    let request = Request::from_parts(parts, Body::from(body));
    match tokio::time::timeout(guard.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => GatewayError::Overloaded("request timed out").into_response(),
    }
}

/// Authenticates (API key, or Standard Webhooks signature over the body), rate-limits, and
/// hands the [`crate::auth::Principal`] to the handler as a request extension. A webhook id is
/// remembered only once its delivery is committed; a retry of it then gets the same answer.
pub async fn authenticate(
    State(guard): State<Arc<Guard>>,
    request: Request,
    next: Next,
) -> Response {
    let client = client_of(request.extensions());
    // Refused before the credential is even checked: guessing stays slow, and a right guess
    // made while throttled is not revealed.
    if let Err(err) = guard.check_failures(client) {
        return err.into_response();
    }
    let (mut parts, body) = request.into_parts();
    if !Credentials::is_webhook(&parts.headers) {
        let principal = match guard.credentials.api_key(&parts.headers) {
            Ok(principal) => principal,
            Err(err) => {
                if Credentials::presents_key(&parts.headers) {
                    guard.record_failure(client);
                }
                return err.into_response();
            }
        };
        if let Err(err) = guard.charge(&principal.name) {
            return err.into_response();
        }
        parts.extensions.insert(principal);
        return next.run(Request::from_parts(parts, body)).await;
    }
    let bytes = match axum::body::to_bytes(body, guard.max_body_bytes).await {
        Ok(bytes) => bytes,
        Err(_) => return GatewayError::PayloadTooLarge(guard.max_body_bytes).into_response(),
    };
    let (principal, id) = match guard
        .credentials
        .webhook(&parts.headers, &bytes, now_unix())
    {
        Ok(verified) => verified,
        Err(err) => {
            guard.record_failure(client);
            return err.into_response();
        }
    };
    let ticket = match guard.deliveries.begin(&id) {
        Begin::Deliver(ticket) => ticket,
        Begin::Replay(answer) => {
            tracing::info!(webhook_id = %id, "committed webhook delivery answered again");
            return answer.into_response();
        }
        Begin::InProgress => {
            return GatewayError::Overloaded("a delivery with this webhook-id is in progress")
                .into_response();
        }
    };
    // Refused here, the ticket is dropped and the id stays free for the sender's retry.
    if let Err(err) = guard.charge(&principal.name) {
        return err.into_response();
    }
    parts.extensions.insert(principal);
    let response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    ticket.settle(response).await
}
