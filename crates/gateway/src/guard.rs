//! What stands in front of every route, in order: a share of requests at once per client
//! address (429), room in a global budget of body bytes (503), the body read under its own
//! deadline (408) before any shared place is taken, a concurrency cap that sheds load (503), a
//! request deadline; then, on API routes, authentication (API key or signed webhook, 401; once
//! an address has spent its bucket of failed checks its further failures are 429, while valid
//! credentials are still served), replays of committed webhook deliveries (kept per sender),
//! and a per-caller rate limit (429).

use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::auth::Credentials;
use crate::clients::{ClientAddress, Clients};
use crate::config::GatewayConfig;
use crate::deliveries::{Begin, Deliveries, DeliveryLedger};
use crate::error::GatewayError;

/// Bodies of `max_body_bytes` that may be read or held at once when
/// `max_buffered_body_bytes` is unset.
const DEFAULT_BUFFERED_BODIES: usize = 64;

/// Long polls (`GET /v1/patches/{id}?wait=`) held at once, apart from `max_in_flight`; more
/// are shed with 503. (The router admits 10,000 waiting calls from all its clients.)
const MAX_LONG_POLLS: usize = 1024;

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
    /// Places for long polls, apart from `in_flight`.
    long_polls: Arc<Semaphore>,
    /// Bytes of bodies being read or held, one permit a byte.
    bodies: Arc<Semaphore>,
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
    /// A guard from the gateway's limits, remembering webhook deliveries in `ledger`.
    pub fn new(
        credentials: Credentials,
        config: &GatewayConfig,
        ledger: Arc<dyn DeliveryLedger>,
    ) -> Self {
        let rate = &config.rate_limit;
        let per_minute = NonZeroU32::new(rate.per_minute).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(rate.burst).unwrap_or(NonZeroU32::MIN);
        Self {
            credentials,
            clients: Clients::new(&config.client_limits, &config.server.trusted_proxies),
            deliveries: Deliveries::new(config.webhook_tolerance * 2, ledger),
            limiter: RateLimiter::keyed(Quota::per_minute(per_minute).allow_burst(burst)),
            burst: burst.get(),
            in_flight: Arc::new(Semaphore::new(config.max_in_flight.max(1))),
            long_polls: Arc::new(Semaphore::new(MAX_LONG_POLLS)),
            bodies: Arc::new(Semaphore::new(
                config
                    .max_buffered_body_bytes
                    .unwrap_or_else(|| {
                        DEFAULT_BUFFERED_BODIES.saturating_mul(config.max_body_bytes)
                    })
                    .clamp(1, Semaphore::MAX_PERMITS),
            )),
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

    /// Counts a failed credential check against `client` and says what to answer: `refusal`
    /// while the address has failures left, 429 with the wait once they are spent. Only
    /// failures are throttled: a valid credential is always served, so a stranger's wrong
    /// guesses cannot lock out everyone behind a shared address (a NAT, an ingress), and
    /// keys are long enough that serving a right guess made while throttled reveals nothing
    /// guessing could find.
    pub fn refuse(&self, client: IpAddr, refusal: GatewayError) -> GatewayError {
        match self.clients.failures.take(client) {
            Ok(()) => refusal,
            Err(wait) => {
                tracing::warn!(%client, "credential refused: too many failures from this address");
                too_many(wait)
            }
        }
    }

    /// Counts a failed dashboard login from `client` (against both its login and its failure
    /// buckets) and says what to answer: `refusal`, or 429 once either bucket is spent. A
    /// correct login is never throttled.
    pub fn refuse_login(&self, client: IpAddr, refusal: GatewayError) -> GatewayError {
        let refusal = self.refuse(client, refusal);
        if matches!(refusal, GatewayError::TooManyRequests { .. }) {
            return refusal;
        }
        match self.clients.logins.take(client) {
            Ok(()) => refusal,
            Err(wait) => {
                tracing::warn!(%client, "failed logins from this address at their limit");
                too_many(wait)
            }
        }
    }

    /// Reserves room for `body` in the global body budget: its exact length when known, else
    /// the most it may be. None when the budget cannot hold it now.
    fn reserve_body(&self, body: &Body) -> Option<Option<OwnedSemaphorePermit>> {
        let hint = body.size_hint();
        let most = hint
            .exact()
            .or(hint.upper())
            .map_or(self.max_body_bytes, |bytes| {
                usize::try_from(bytes).unwrap_or(usize::MAX)
            })
            .min(self.max_body_bytes);
        if most == 0 {
            return Some(None);
        }
        let permits = u32::try_from(most).unwrap_or(u32::MAX);
        Arc::clone(&self.bodies)
            .try_acquire_many_owned(permits)
            .ok()
            .map(Some)
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
    let Ok(client) = guard
        .clients
        .address(request.extensions(), request.headers())
    else {
        return GatewayError::BadRequest(
            "X-Forwarded-For does not name the client: its entry for the client is not an IP address"
                .to_owned(),
        )
        .into_response();
    };
    let (mut parts, body) = request.into_parts();
    // A long poll (`GET /v1/patches/{id}?wait=`) is slow by design: it is not counted among
    // its address's requests (many callers share a few addresses, e.g. GPT Actions); each
    // credential's long polls are capped instead (`Patches`, shared with MCP).
    let long_poll = long_poll_wait(&parts);
    let _client_slot = if long_poll.is_some() {
        None
    } else {
        let Some(slot) = guard.clients.admit(client) else {
            tracing::warn!(%client, "requests in flight from one address at its cap; refused");
            return GatewayError::TooManyRequests { retry_after_s: 1 }.into_response();
        };
        Some(slot)
    };
    // Held until the answer: the bytes stay in memory as long as the request runs.
    let Some(_body_budget) = guard.reserve_body(&body) else {
        tracing::warn!(%client, "bodies being read at their global budget; request shed");
        return GatewayError::Overloaded("too many request bodies being read").into_response();
    };
    // Read before a shared place is taken: a slow sender then holds only its own address's.
    let body = match guard.read_body(&parts.headers, body).await {
        Ok(body) => body,
        Err(err) => return err.into_response(),
    };
    parts.extensions.insert(ClientAddress(client));
    // A long poll takes a place among the long polls, not among `max_in_flight`, so waiting
    // callers cannot shed everyone else; when they are all taken it is served as a plain
    // read (its current state at once, see [`NoWait`]).
    let mut long_poll = long_poll;
    let long_place = match long_poll {
        Some(_) => Arc::clone(&guard.long_polls).try_acquire_owned().ok(),
        None => None,
    };
    if long_poll.is_some() && long_place.is_none() {
        tracing::info!("long polls at their cap; this one is answered at once");
        parts.extensions.insert(NoWait);
        long_poll = None;
    }
    let _permit = match long_place {
        Some(place) => place,
        None => {
            let Ok(place) = Arc::clone(&guard.in_flight).try_acquire_owned() else {
                tracing::warn!("concurrency cap reached; request shed");
                return GatewayError::Overloaded("too many requests in flight").into_response();
            };
            place
        }
    };
    // Deadlines in order, inner first: a long poll's router call ends at its wait, the
    // gateway's call to it a margin later, the HTTP request a margin after that; a dry run's
    // executor gives up at 25 s, the router at 30 s, the gateway's call at 35 s, the HTTP
    // request at 40 s.
    let deadline = match long_poll {
        Some(wait) => guard
            .request_timeout
            .max(wait + crate::long_poll::ANSWER_MARGIN + HTTP_MARGIN),
        None if asks_an_executor(&parts) => {
            guard.request_timeout.max(crate::dry_run::HTTP_DEADLINE)
        }
        None => guard.request_timeout,
    };
    let request = Request::from_parts(parts, Body::from(body));
    match tokio::time::timeout(deadline, next.run(request)).await {
        Ok(response) => response,
        Err(_) => GatewayError::Overloaded("request timed out").into_response(),
    }
}

/// What an HTTP request's deadline adds to the gateway's own call deadline beneath it.
const HTTP_MARGIN: Duration = Duration::from_secs(5);

/// Set on a long poll that found every long-poll place taken: it answers the current state
/// at once.
#[derive(Debug, Clone, Copy)]
pub struct NoWait;

/// `POST /v1/patches?dry_run=true` and `POST /v1/patches/{id}/revert`: the router asks an
/// executor before answering.
fn asks_an_executor(parts: &axum::http::request::Parts) -> bool {
    if parts.method != axum::http::Method::POST {
        return false;
    }
    let path = parts.uri.path();
    let revert = path
        .strip_prefix("/v1/patches/")
        .and_then(|rest| rest.strip_suffix("/revert"))
        .is_some_and(|id| !id.is_empty() && !id.contains('/'));
    revert
        || path == "/v1/patches"
            && parts
                .uri
                .query()
                .is_some_and(|query| query.split('&').any(|pair| pair == "dry_run=true"))
}

/// The wait of a long poll: `GET /v1/patches/{id}?wait=...` with a valid wait.
fn long_poll_wait(parts: &axum::http::request::Parts) -> Option<Duration> {
    if parts.method != axum::http::Method::GET {
        return None;
    }
    let id = parts.uri.path().strip_prefix("/v1/patches/")?;
    if id.is_empty() || id.contains('/') {
        return None;
    }
    crate::long_poll::wait_in_query(parts.uri.query())
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
    let (mut parts, body) = request.into_parts();
    if !Credentials::is_webhook(&parts.headers) {
        let principal = match guard.credentials.api_key(&parts.headers) {
            Ok(principal) => principal,
            // Not a refusal: the runtime keys are not learnt yet (503, retry).
            Err(err @ GatewayError::KeysNotLearnt) => return err.into_response(),
            Err(err) if Credentials::presents_key(&parts.headers) => {
                return guard.refuse(client, err).into_response();
            }
            // No credential at all is not a guess.
            Err(err) => return err.into_response(),
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
        Err(err) => return guard.refuse(client, err).into_response(),
    };
    let ticket = match guard.deliveries.begin(&principal.name, &id, &bytes).await {
        Ok(Begin::Deliver(ticket)) => ticket,
        Ok(Begin::Replay(answer)) => {
            tracing::info!(webhook_id = %id, "committed webhook delivery answered again");
            return answer.into_response();
        }
        Ok(Begin::OtherBody) => {
            return GatewayError::Conflict(format!(
                "webhook-id {id} was already delivered with a different body; a new message needs a new webhook-id"
            ))
            .into_response();
        }
        Ok(Begin::InProgress) => {
            return GatewayError::Overloaded("a delivery with this webhook-id is in progress")
                .into_response();
        }
        Err(err) => return err.into_response(),
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
