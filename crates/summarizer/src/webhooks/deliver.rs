//! Delivering the webhook outbox ([`run`]: one lane per subscription, each the one outbox
//! engine ([`ghost_runtime::outbox`]) over that subscription's rows, so a receiver that stalls
//! or fails only delays its own messages): one HTTP client per subscription (its own guarded
//! resolver, no redirects, no proxy, a deadline per call), rounds of due messages sent at once
//! (at most one per patch and subscription, so order holds), every outcome settled in one
//! transaction, and what finished is settled on shutdown too. Rows are claimed, so replicas on
//! one database send each message once.
//!
//! 2xx is delivered; 410 Gone is dead-lettered at once; anything else (or no answer) is tried
//! again after an exponential backoff with jitter, until `give_up_after` has passed since the
//! first try, then dead-lettered (kept in `webhook_dead_letters`, logged as an error, counted).
//! Messages of a subscription no longer configured are kept (not sent, not dead-lettered),
//! logged once and counted in `ghost_webhook_orphaned`; they are sent if it comes back.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use reqwest::header::CONTENT_TYPE;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use ghost_runtime::outbox::{
    Claim, Delivery, GiveUp, Outbox, Outcome, Policy as EnginePolicy, SendError, Sink, Store,
};

use super::Webhooks;
use super::subscription::{GuardedResolver, Prepared, Refused};
use crate::error::SummarizerError;
use crate::index::{Index, WebhookRow};
use crate::outbox::{AT_ONCE, BATCH, Backoff, WebhookStore};
use crate::summaries::Summaries;

/// The dead-letter reason of a message to a subscription disabled by 410 Gone.
const GONE_BEFORE: &str = "the receiver answered 410 Gone before; the subscription is disabled \
                           until its url changes";
/// The outbox gauges are set at most this often (by whichever lane passes first).
const PUBLISH_EVERY_MS: i64 = 250;
/// Dead letters are pruned by age at least this often (and whenever one is added).
const PRUNE_EVERY_MS: i64 = 60_000;

/// How deliveries are retried and bounded.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Exponential backoff between tries (jitter takes up to half off each wait).
    pub backoff: Backoff,
    /// After this long since its first try, a message that still fails is dead-lettered.
    pub give_up_after: Duration,
    /// Deadline of one POST.
    pub timeout: Duration,
    /// Most dead letters kept (the oldest beyond it are deleted).
    pub dead_letter_max: u64,
    /// Dead letters older than this are deleted.
    pub dead_letter_max_age: Duration,
    /// How long a claim keeps other replicas off a message.
    pub claim_timeout: Duration,
}

impl Policy {
    /// The engine's policy for one lane: jittered backoff, dead-lettered `give_up_after`
    /// after the first try.
    fn engine(&self) -> EnginePolicy {
        EnginePolicy {
            delivery: Delivery::Parallel { at_once: AT_ONCE },
            give_up: GiveUp {
                after_tries: None,
                after: Some(self.give_up_after),
            },
            batch: BATCH,
            claim_timeout: self.claim_timeout,
            ..EnginePolicy::new(
                "webhooks",
                Backoff {
                    jitter: true,
                    ..self.backoff
                },
            )
        }
    }
}

struct Endpoint {
    subscription: Prepared,
    client: reqwest::Client,
    /// Its receiver answered 410 Gone: nothing more is sent until its URL changes.
    gone: AtomicBool,
    /// `gone` is in the `webhook_gone` table.
    gone_saved: AtomicBool,
}

impl Endpoint {
    fn url_sha256(&self) -> String {
        use sha2::{Digest as _, Sha256};
        Sha256::digest(self.subscription.url.as_str().as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// Sends outbox rows to their subscriptions; a lane sends only those of one.
#[derive(Clone)]
pub struct Deliverer {
    endpoints: Arc<HashMap<String, Endpoint>>,
    policy: Policy,
    /// Set once the rows of unconfigured subscriptions have been logged.
    orphans_logged: Arc<AtomicBool>,
    /// When dead letters were last pruned (unix ms), shared by the lanes.
    pruned_ms: Arc<AtomicI64>,
    /// When the gauges were last set (unix ms), shared by the lanes.
    published_ms: Arc<AtomicI64>,
}

impl Deliverer {
    /// A client per subscription of `webhooks`.
    pub fn new(webhooks: &Webhooks, policy: Policy) -> anyhow::Result<Self> {
        let mut endpoints = HashMap::new();
        for subscription in &webhooks.subscriptions {
            let client = reqwest::Client::builder()
                .timeout(policy.timeout)
                // A redirect could point anywhere, past the address checks.
                .redirect(reqwest::redirect::Policy::none())
                // A proxy would resolve the name itself, past the address checks.
                .no_proxy()
                .dns_resolver(GuardedResolver {
                    allow_private: subscription.allow_private,
                })
                .user_agent(concat!(
                    "ghost-runner-summarizer/",
                    env!("CARGO_PKG_VERSION")
                ))
                .build()
                .with_context(|| format!("cannot build the client of {}", subscription.name()))?;
            endpoints.insert(
                subscription.key.clone(),
                Endpoint {
                    subscription: subscription.clone(),
                    client,
                    gone: AtomicBool::new(false),
                    gone_saved: AtomicBool::new(false),
                },
            );
        }
        Ok(Self {
            endpoints: Arc::new(endpoints),
            policy,
            orphans_logged: Arc::new(AtomicBool::new(false)),
            pruned_ms: Arc::new(AtomicI64::new(i64::MIN)),
            published_ms: Arc::new(AtomicI64::new(i64::MIN)),
        })
    }

    /// Deletes the dead letters over the age or count bounds (blocking).
    fn prune(&self, index: &Index, now_ms: i64) -> Result<(), SummarizerError> {
        self.pruned_ms.store(now_ms, Ordering::Relaxed);
        let max_age_ms =
            i64::try_from(self.policy.dead_letter_max_age.as_millis()).unwrap_or(i64::MAX);
        let deleted = index.webhook_prune_dead_letters(
            now_ms.saturating_sub(max_age_ms),
            self.policy.dead_letter_max,
        )?;
        if deleted > 0 {
            tracing::info!(
                deleted,
                max = self.policy.dead_letter_max,
                max_age = ?self.policy.dead_letter_max_age,
                "old webhook dead letters deleted"
            );
        }
        Ok(())
    }

    /// One try of `row`: `Ok` on 2xx, `Err((reason, final))` otherwise, `final` when it must
    /// not be tried again.
    async fn post(&self, row: &WebhookRow) -> Result<(), (String, bool)> {
        let Some(endpoint) = self.endpoints.get(&row.subscription) else {
            return Err(("its subscription is no longer configured".to_owned(), true));
        };
        if endpoint.gone.load(Ordering::Relaxed) {
            return Err((GONE_BEFORE.to_owned(), true));
        }
        let timestamp = unix_seconds();
        let mut signature = super::signature(
            &endpoint.subscription.secret,
            &row.webhook_id,
            timestamp,
            &row.body,
        );
        if let Some(previous) = &endpoint.subscription.previous_secret {
            // Rotation: both signatures, space-separated (Standard Webhooks).
            signature.push(' ');
            signature.push_str(&super::signature(
                previous,
                &row.webhook_id,
                timestamp,
                &row.body,
            ));
        }
        let started = Instant::now();
        let result = endpoint
            .client
            .post(endpoint.subscription.url.clone())
            .header("webhook-id", &row.webhook_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .header(CONTENT_TYPE, "application/json")
            .body(row.body.clone())
            .send()
            .await;
        metrics::histogram!("ghost_webhook_attempt_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        match result {
            Ok(response) if response.status().is_success() => Ok(()),
            Ok(response) if response.status() == reqwest::StatusCode::GONE => {
                endpoint.gone.store(true, Ordering::Relaxed);
                tracing::error!(
                    subscription = %endpoint.subscription.name(),
                    "webhook receiver answered 410 Gone; the subscription is disabled (its \
                     messages are dead-lettered) until its url changes"
                );
                Err(("the receiver answered 410 Gone".to_owned(), true))
            }
            Ok(response) => Err((
                format!("the receiver answered {}", response.status()),
                false,
            )),
            // The guard refused the address: retrying cannot help until the config changes.
            Err(err) => Err((describe(&err, self.policy.timeout), refused(&err))),
        }
    }
}

fn unix_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|since| i64::try_from(since.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// True when the SSRF guard refused the address `err` tried.
fn refused(err: &reqwest::Error) -> bool {
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        if cause.downcast_ref::<Refused>().is_some() {
            return true;
        }
        source = cause.source();
    }
    false
}

/// What went wrong, without the URL (its path or query may carry a token).
fn describe(err: &reqwest::Error, timeout: Duration) -> String {
    if err.is_timeout() {
        return format!("no answer within {timeout:?}");
    }
    let mut causes = Vec::new();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        causes.push(cause.to_string());
        source = cause.source();
    }
    let kind = if err.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    if causes.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}: {}", causes.join(": "))
    }
}

impl Sink for Deliverer {
    type Row = WebhookRow;
    type Receipt = ();

    async fn send(&self, row: &WebhookRow) -> Result<(), SendError> {
        self.post(row).await.map_err(|(reason, permanent)| {
            if permanent {
                SendError::Permanent(reason)
            } else {
                SendError::retry(reason)
            }
        })
    }

    /// Counts `ghost_webhook_deliveries_total{result}` (the outbox logs the failures).
    fn observe(&self, row: &WebhookRow, outcome: &Outcome<()>) {
        let result = match outcome {
            Outcome::Delivered { .. } => {
                tracing::info!(webhook_id = %row.webhook_id, patch_id = %row.patch_id, tries = row.tries + 1, "webhook delivered");
                "delivered"
            }
            Outcome::Retry { .. } => "retry",
            Outcome::Dead { .. } => "dead_letter",
            Outcome::Release { .. } => return,
        };
        metrics::counter!("ghost_webhook_deliveries_total", "result" => result).increment(1);
    }
}

impl Deliverer {
    /// After a round is settled: remembers the subscriptions that answered 410 Gone, and
    /// prunes the dead letters when one was added (`buried`, at that time) (blocking).
    fn after_settle(&self, index: &Index, buried: Option<i64>) -> Result<(), SummarizerError> {
        for (key, endpoint) in self.endpoints.iter() {
            if endpoint.gone.load(Ordering::Relaxed)
                && !endpoint.gone_saved.swap(true, Ordering::Relaxed)
                && let Err(err) =
                    index.webhook_set_gone(key, Some(&endpoint.url_sha256()), buried.unwrap_or(0))
            {
                endpoint.gone_saved.store(false, Ordering::Relaxed);
                return Err(err);
            }
        }
        match buried {
            Some(now_ms) => self.prune(index, now_ms),
            None => Ok(()),
        }
    }
}

/// One subscription's rows as an outbox store: the rows, and the deliverer's bookkeeping
/// (410 Gone, dead-letter pruning, gauges) around them.
struct Lane {
    store: WebhookStore,
    deliverer: Deliverer,
}

impl Store for Lane {
    type Row = WebhookRow;
    type Receipt = ();
    type Error = SummarizerError;

    async fn claim(&self, claim: Claim) -> Result<Vec<WebhookRow>, SummarizerError> {
        self.store.claim(claim).await
    }

    async fn next_due(&self) -> Result<Option<i64>, SummarizerError> {
        self.store.next_due().await
    }

    async fn settle(
        &self,
        claimant: &str,
        outcomes: &[Outcome<()>],
    ) -> Result<(), SummarizerError> {
        self.store.settle(claimant, outcomes).await?;
        let buried = outcomes
            .iter()
            .filter_map(|outcome| match outcome {
                Outcome::Dead { at_ms, .. } => Some(*at_ms),
                _ => None,
            })
            .max();
        let (deliverer, index) = (self.deliverer.clone(), self.store.summaries.index().clone());
        tokio::task::spawn_blocking(move || deliverer.after_settle(&index, buried))
            .await
            .map_err(SummarizerError::Task)?
    }

    async fn after_pass(&self) {
        publish_counts(&self.store.summaries, &self.deliverer).await;
    }

    fn failed(&self, err: &SummarizerError) {
        self.store.summaries.note_storage_error(err);
    }
}

/// Delivers every subscription's messages until `shutdown`, one lane (outbox loop) each;
/// `wake` (a message was queued) wakes every lane.
pub async fn run(
    deliverer: Deliverer,
    summaries: Summaries,
    claimant: Arc<str>,
    shutdown: CancellationToken,
) {
    let wake = summaries.webhook_wake();
    restore_gone(&deliverer, &summaries).await;
    let mut lanes = tokio::task::JoinSet::new();
    let mut wakes = Vec::new();
    for key in deliverer.endpoints.keys() {
        let lane_wake = Arc::new(Notify::new());
        wakes.push(Arc::clone(&lane_wake));
        let lane = Lane {
            store: WebhookStore {
                summaries: summaries.clone(),
                lane: Arc::from(key.as_str()),
            },
            deliverer: deliverer.clone(),
        };
        let outbox = Outbox::new(
            lane,
            deliverer.clone(),
            deliverer.policy.engine(),
            summaries.clock(),
            Arc::clone(&claimant),
        );
        lanes.spawn(outbox.run(lane_wake, shutdown.clone()));
    }
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = wake.notified() => {
                for lane_wake in &wakes {
                    // Stores a permit when the lane is busy, so no wake-up is lost.
                    lane_wake.notify_one();
                }
            }
        }
    }
    while let Some(joined) = lanes.join_next().await {
        if let Err(err) = joined {
            tracing::error!(error = %err, "webhook lane failed");
        }
    }
}

/// Disables again the subscriptions whose receiver answered 410 Gone at their current URL,
/// and forgets the mark of those whose URL changed.
async fn restore_gone(deliverer: &Deliverer, summaries: &Summaries) {
    let index = summaries.index().clone();
    let endpoints = Arc::clone(&deliverer.endpoints);
    let restored = tokio::task::spawn_blocking(move || {
        for (key, sha) in index.webhooks_gone()? {
            let Some(endpoint) = endpoints.get(&key) else {
                continue;
            };
            if endpoint.url_sha256() == sha {
                endpoint.gone.store(true, Ordering::Relaxed);
                endpoint.gone_saved.store(true, Ordering::Relaxed);
                tracing::warn!(
                    subscription = %endpoint.subscription.name(),
                    "webhook subscription disabled: its receiver answered 410 Gone; change its \
                     url to enable it"
                );
            } else {
                index.webhook_set_gone(&key, None, 0)?;
            }
        }
        Ok::<_, SummarizerError>(())
    })
    .await;
    match restored {
        Ok(Ok(())) => {}
        Ok(Err(err)) => {
            tracing::error!(error = ?anyhow::Error::from(err), "cannot read the disabled webhook subscriptions");
        }
        Err(err) => tracing::error!(error = %err, "webhook task failed"),
    }
}

/// Sets the outbox depth and dead-letter gauges from the tables, and each subscription's depth
/// and oldest pending age (labelled by the subscription's label, never its URL); logs once the
/// messages kept for subscriptions no longer configured.
async fn publish_counts(summaries: &Summaries, deliverer: &Deliverer) {
    let index = summaries.index().clone();
    let now = summaries.now_ms();
    // The lanes share the work: the tables are counted at most every PUBLISH_EVERY_MS.
    let last = deliverer.published_ms.load(Ordering::Relaxed);
    if now.saturating_sub(last) < PUBLISH_EVERY_MS
        || deliverer
            .published_ms
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
    {
        return;
    }
    let pruner = deliverer.clone();
    let Ok(Ok(((pending, dead), backlogs))) = tokio::task::spawn_blocking(move || {
        if now.saturating_sub(pruner.pruned_ms.load(Ordering::Relaxed)) >= PRUNE_EVERY_MS {
            pruner.prune(&index, now)?;
        }
        Ok::<_, SummarizerError>((index.webhook_counts()?, index.webhook_backlogs()?))
    })
    .await
    else {
        return;
    };
    metrics::gauge!("ghost_webhook_outbox_depth").set(pending as f64);
    metrics::gauge!("ghost_webhook_dead_letters").set(dead as f64);
    // Every lane sets every subscription's gauges, so a stalled lane's age still grows.
    for (key, endpoint) in deliverer.endpoints.iter() {
        let (depth, oldest_ms) = backlogs
            .iter()
            .find(|(of, _, _)| of == key)
            .map_or((0, now), |(_, depth, oldest)| (*depth, *oldest));
        let label = endpoint.subscription.label.clone();
        metrics::gauge!("ghost_webhook_subscription_depth", "subscription" => label.clone())
            .set(depth as f64);
        metrics::gauge!("ghost_webhook_oldest_pending_age_seconds", "subscription" => label)
            .set(now.saturating_sub(oldest_ms).max(0) as f64 / 1000.0);
    }
    let orphaned: u64 = backlogs
        .iter()
        .filter(|(key, _, _)| !deliverer.endpoints.contains_key(key))
        .map(|(_, depth, _)| depth)
        .sum();
    metrics::gauge!("ghost_webhook_orphaned").set(orphaned as f64);
    if orphaned > 0 && !deliverer.orphans_logged.swap(true, Ordering::Relaxed) {
        let subscriptions: Vec<String> = backlogs
            .iter()
            .filter(|(key, _, _)| !deliverer.endpoints.contains_key(key))
            .map(|(key, _, _)| super::subscription::hashed_label(key))
            .collect();
        tracing::warn!(
            orphaned,
            ?subscriptions,
            "webhook messages of subscriptions no longer configured are kept, not sent; \
             they are sent if the subscription comes back (same name, or same url without one)"
        );
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    fn deliverer(url: &str, allow_private: bool) -> Deliverer {
        let subscription = Prepared {
            index: 0,
            key: url.to_owned(),
            label: "test".to_owned(),
            url: reqwest::Url::parse(url).unwrap(),
            secret: vec![7; 32],
            previous_secret: None,
            statuses: vec![ghost_core::Status::Failed],
            targets: std::collections::BTreeSet::new(),
            allow_private,
        };
        let webhooks = Webhooks {
            subscriptions: vec![subscription],
            summary_url_template: None,
            outbox_max: 10,
        };
        let policy = Policy {
            backoff: Backoff::exponential(Duration::from_millis(10), Duration::from_millis(10)),
            give_up_after: Duration::from_secs(60),
            timeout: Duration::from_secs(5),
            dead_letter_max: 10,
            dead_letter_max_age: Duration::from_secs(3600),
            claim_timeout: Duration::from_secs(60),
        };
        Deliverer::new(&webhooks, policy).unwrap()
    }

    fn row(url: &str) -> WebhookRow {
        WebhookRow {
            id: 1,
            webhook_id: "msg_1".to_owned(),
            subscription: url.to_owned(),
            patch_id: "p".to_owned(),
            attempt: 1,
            event: "patch.failed".to_owned(),
            body: b"{}".to_vec(),
            tries: 0,
            first_try_ms: None,
        }
    }

    #[tokio::test]
    async fn a_name_resolving_to_loopback_is_refused_at_delivery_unless_allowed() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://localhost:{}/hook",
            listener.local_addr().unwrap().port()
        );
        let served = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = vec![0_u8; 4096];
            let read = stream.read(&mut request).await.unwrap();
            stream
                .write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n")
                .await
                .unwrap();
            String::from_utf8_lossy(&request[..read]).into_owned()
        });

        // Guarded: the lookup is refused and nothing connects.
        let (error, permanent) = deliverer(&url, false).post(&row(&url)).await.unwrap_err();
        assert!(
            error.contains("resolves to") && error.contains("loopback"),
            "{error}"
        );
        assert!(permanent, "a refused address is final");
        assert!(!served.is_finished());

        // Allowed: the checked address is dialled on the URL's port, signed.
        deliverer(&url, true).post(&row(&url)).await.unwrap();
        let request = served.await.unwrap();
        assert!(request.starts_with("POST /hook HTTP/1.1"), "{request}");
        assert!(request.contains("webhook-id: msg_1"), "{request}");
        assert!(request.contains("webhook-signature: v1,"), "{request}");
    }

    #[tokio::test]
    async fn a_redirect_is_not_followed() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let served = tokio::spawn(async move {
            let mut seen = 0;
            while let Ok(Ok((mut stream, _))) =
                tokio::time::timeout(Duration::from_millis(500), listener.accept()).await
            {
                seen += 1;
                let mut request = vec![0_u8; 4096];
                let _ = stream.read(&mut request).await;
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 307 Temporary Redirect\r\nlocation: http://127.0.0.1:9/x\r\n\
                          connection: close\r\ncontent-length: 0\r\n\r\n",
                    )
                    .await;
            }
            seen
        });
        let (error, _) = deliverer(&url, true).post(&row(&url)).await.unwrap_err();
        assert!(error.contains("307"), "{error}");
        assert_eq!(served.await.unwrap(), 1);
    }

    #[test]
    fn jitter_takes_at_most_half_off() {
        for _ in 0..100 {
            let wait = ghost_runtime::outbox::jittered(Duration::from_secs(10));
            assert!(
                wait >= Duration::from_secs(5) && wait <= Duration::from_secs(10),
                "{wait:?}"
            );
        }
        assert_eq!(
            ghost_runtime::outbox::jittered(Duration::ZERO),
            Duration::ZERO
        );
    }
}
