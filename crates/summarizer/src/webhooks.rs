//! Push subscriptions: every recorded attempt whose status and target a subscription wants is
//! queued in the webhook outbox ([`crate::index::NewWebhook`]) in the same transaction as the
//! record, then POSTed as a signed Standard Webhooks message by [`deliver::run`]: retried with
//! exponential backoff and jitter until `webhook_give_up_after` after its first try, then
//! dead-lettered. A patch's events reach each subscription in the order they were recorded.
//!
//! - [`subscription`] — the config entry, its checks and the SSRF guard.
//! - [`payload`] — the body: `{type, timestamp, data}` with the patch view and its summary.
//! - [`deliver`] — the HTTP client and the delivery loop.

pub mod deliver;
pub mod payload;
pub mod subscription;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ghost_core::Status;
use hmac::{Hmac, KeyInit, Mac as _};
use sha2::{Digest as _, Sha256};

use self::payload::PatchView;
use self::subscription::{Prepared, event_name};
use crate::doc::Outcome;
use crate::index::NewWebhook;

/// The checked subscriptions and what the payload links to; shared by the store (which queues)
/// and the delivery loop (which signs).
#[derive(Debug, Clone)]
pub struct Webhooks {
    /// The subscriptions, in config order.
    pub subscriptions: Vec<Prepared>,
    /// `{patch_id}` is replaced to link a summary (`data.summary.url`); `None`: no link.
    pub summary_url_template: Option<String>,
    /// Most messages waiting in the outbox (beyond it a message is dead-lettered at once).
    pub outbox_max: u64,
}

impl Webhooks {
    /// True when some subscription wants an attempt on `target` that ended `status`.
    pub fn wants(&self, target: &str, status: Status) -> bool {
        self.subscriptions
            .iter()
            .any(|subscription| subscription.wants(target, status))
    }

    /// The view of `outcome` (before its summary exists), or `None` when nobody wants it.
    pub fn view(&self, outcome: &Outcome) -> Option<PatchView> {
        if !self.wants(outcome.target.as_str(), outcome.report.status) {
            return None;
        }
        let url = self
            .summary_url_template
            .as_ref()
            .map(|template| template.replace("{patch_id}", outcome.patch_id.as_str()));
        Some(payload::view(outcome, "", url))
    }

    /// One message per subscription that wants `view`, with the summary's `markdown`.
    pub fn messages(&self, mut view: PatchView, markdown: &str) -> Vec<NewWebhook> {
        view.summary.markdown = markdown.to_owned();
        let body = payload::body(&view);
        self.subscriptions
            .iter()
            .filter(|subscription| subscription.wants(&view.target, view.status))
            .map(|subscription| NewWebhook {
                webhook_id: webhook_id(&subscription.key, &view.id, view.attempt),
                subscription: subscription.key.clone(),
                event: event_name(view.status),
                body: body.clone(),
                outbox_max: self.outbox_max,
            })
            .collect()
    }
}

/// The `webhook-id` of attempt `attempt` of `patch_id` sent to the subscription `key`: the
/// same on every try and after restarts, so receivers can deduplicate.
pub fn webhook_id(key: &str, patch_id: &str, attempt: u32) -> String {
    let mut hasher = Sha256::new();
    for part in [key.as_bytes(), patch_id.as_bytes(), &attempt.to_be_bytes()] {
        hasher.update(u64::try_from(part.len()).unwrap_or(u64::MAX).to_be_bytes());
        hasher.update(part);
    }
    let digest = hasher.finalize();
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("msg_{hex}")
}

/// The `webhook-signature` value: `v1,` and the base64 HMAC-SHA256 of `id.timestamp.body`
/// under the decoded secret.
pub fn signature(secret: &[u8], webhook_id: &str, timestamp: i64, body: &[u8]) -> String {
    let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(secret) else {
        // HMAC takes keys of any length; unreachable, and an empty signature only fails.
        return String::new();
    };
    mac.update(webhook_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_the_standard_webhooks_test_vector() {
        // From the Standard Webhooks reference libraries' tests.
        let secret = STANDARD.decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            signature(
                &secret,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1_614_265_330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn webhook_ids_are_stable_and_distinct() {
        let id = webhook_id("https://a.example/hook", "p-1", 1);
        assert_eq!(id, webhook_id("https://a.example/hook", "p-1", 1));
        assert!(id.starts_with("msg_") && id.len() == 36, "{id}");
        assert_ne!(id, webhook_id("https://a.example/hook", "p-1", 2));
        assert_ne!(id, webhook_id("https://b.example/hook", "p-1", 1));
        assert_ne!(
            webhook_id("https://a.example/hookp", "-1", 1),
            webhook_id("https://a.example/hook", "p-1", 1)
        );
    }
}
