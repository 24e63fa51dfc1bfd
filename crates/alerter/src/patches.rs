//! Patch outcomes (`Notify`), routed by [`Router`]: a patch routed to its own thread gets a
//! parent message (with Retry / Cancel / View summary buttons, or Revert / View summary once
//! it succeeded); each later attempt updates the parent's status (`chat.update`) and adds its
//! own reply to the thread. A patch routed to the digest becomes one line of its channel's
//! digest message. A patch whose thread exists keeps it whatever the routes say.
//!
//! Idempotent by (patch id, attempt), durably: the dedup row, the messages and the digest
//! entries are stored in one transaction before `Notify` answers, so every patch is in its own
//! thread or in exactly one digest, even across a crash.
//!
//! When a channel's backlog passes `routing.backlog_threshold`, successes routed to their own
//! thread go to the digest instead, with a one-line notice; when the backlog has fallen to
//! half the threshold, it switches back (another notice), noticed by the next patch routed
//! there or by the delivery loop, whichever comes first.

use std::collections::BTreeMap;
use std::sync::Arc;

use ghost_core::Status;

use crate::error::AlerterError;
use crate::messages::{self, PatchOutcome};
use crate::outbox::Outbox;
use crate::routing::{Router, RoutingConfig, Subject};
use crate::store::{DigestAdd, Kind, NewMessage, Priority};

/// The thread key of a patch.
pub fn thread_of(patch_id: &str) -> String {
    format!("patch/{patch_id}")
}

/// Who gets a DM when a patch ends.
enum Notify {
    Nobody,
    User(String),
    /// Named by the patch but not allowed: no DM.
    NotAllowed(String),
}

/// Accepts patch outcomes into the outbox. Cheap to clone.
#[derive(Clone)]
pub struct Patches {
    outbox: Outbox,
    router: Arc<Router>,
    routing: Arc<RoutingConfig>,
    clock: ghost_runtime::clock::SharedClock,
}

fn millis(duration: std::time::Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

impl Patches {
    /// Patch messages as `router` and `routing` say.
    pub fn new(
        outbox: Outbox,
        router: Arc<Router>,
        routing: RoutingConfig,
        clock: ghost_runtime::clock::SharedClock,
    ) -> Self {
        Self {
            outbox,
            router,
            routing: Arc::new(routing),
            clock,
        }
    }

    /// The route tree.
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// Checks `channel`'s backlog: true when its successes go to the digest now; a switch
    /// either way is stored with its one-line notice.
    async fn backlogged(&self, channel: &str) -> Result<bool, AlerterError> {
        if self.routing.backlog_threshold == 0 {
            return Ok(false);
        }
        let pending = self.outbox.store().pending_in(channel).await?;
        Ok(self.outbox.observe_backlog(channel, pending).await?)
    }

    /// Stores the messages for `outcome` unless its (patch id, attempt) was accepted before;
    /// true when fresh.
    pub async fn accept(
        &self,
        outcome: &PatchOutcome,
        traceparent: Option<String>,
    ) -> Result<bool, AlerterError> {
        let patch_id = outcome.patch_id.to_string();
        let thread = thread_of(&patch_id);
        let store = self.outbox.store();
        let (mut batch, digests) = match store.thread_channel(&thread).await? {
            Some(channel) => {
                let updates = self
                    .thread_updates(&thread, channel, outcome, traceparent.as_ref())
                    .await?;
                (updates, Vec::new())
            }
            None => self.routed(&thread, outcome, traceparent.as_ref()).await?,
        };
        let (dm, dropped_dm) = self.direct_message(outcome, traceparent.as_ref()).await?;
        batch.extend(dm);
        let fresh = store
            .accept_routed(
                &patch_id,
                outcome.attempt,
                self.clock.now_ms(),
                batch,
                digests,
                messages::digest_message,
            )
            .await?;
        if fresh {
            if let Some(reason) = dropped_dm {
                metrics::counter!("ghost_alerter_notify_dropped_total", "reason" => reason)
                    .increment(1);
            }
            self.outbox.wake();
        }
        Ok(fresh)
    }

    /// A later attempt of a patch whose thread exists: its parent is updated and a reply
    /// added, in the thread and in its copies in other channels (routes with `continue`).
    async fn thread_updates(
        &self,
        thread: &str,
        channel: String,
        outcome: &PatchOutcome,
        traceparent: Option<&String>,
    ) -> Result<Vec<NewMessage>, AlerterError> {
        let mut threads = vec![(thread.to_owned(), channel)];
        threads.extend(self.outbox.store().thread_copies(thread).await?);
        let mut batch = Vec::with_capacity(threads.len() * 2);
        for (thread, channel) in threads {
            let message = |kind, body| NewMessage {
                thread: thread.clone(),
                channel: channel.clone(),
                kind,
                body,
                traceparent: traceparent.cloned(),
                priority: Priority::Thread,
            };
            batch.push(message(
                Kind::Update,
                messages::patch_message(outcome, true),
            ));
            batch.push(message(
                Kind::Reply,
                messages::patch_message(outcome, false),
            ));
        }
        Ok(batch)
    }

    /// A patch's first outcome, routed: an own thread per route that wants one (the first
    /// keeps the patch's thread key, the others are copies), a digest entry for the others
    /// (and for successes while their channel is backlogged).
    async fn routed(
        &self,
        thread: &str,
        outcome: &PatchOutcome,
        traceparent: Option<&String>,
    ) -> Result<(Vec<NewMessage>, Vec<DigestAdd>), AlerterError> {
        let failure = outcome.status != Status::Succeeded;
        let labels: BTreeMap<String, String> = outcome.labels.clone();
        let decisions = self.router.route(&Subject {
            target: outcome.target.as_str(),
            status: outcome.status,
            priority: &outcome.priority,
            labels: &labels,
        });
        let now = self.clock.now_ms();
        let period = millis(self.routing.digest_period).max(1);
        let (mut batch, mut digests) = (Vec::new(), Vec::new());
        for (index, decision) in decisions.into_iter().enumerate() {
            let backlogged = self.backlogged(&decision.channel).await?;
            let own = decision.own_thread && (failure || !backlogged);
            if !own {
                digests.push(DigestAdd {
                    channel: decision.channel,
                    period_ms: now - now.rem_euclid(period),
                    max_entries: self.routing.digest_max_entries,
                    entry: messages::digest_entry(outcome, self.routing.summary_url.as_deref()),
                });
                continue;
            }
            let thread = if index == 0 {
                thread.to_owned()
            } else {
                format!("{thread}@{}", decision.channel)
            };
            batch.push(NewMessage {
                thread,
                channel: decision.channel,
                kind: Kind::Post,
                body: messages::with_mention(
                    messages::patch_message(outcome, true),
                    &decision.mention,
                ),
                traceparent: traceparent.cloned(),
                priority: if failure {
                    Priority::Failure
                } else {
                    Priority::Thread
                },
            });
        }
        Ok((batch, digests))
    }

    /// The DM to the user the patch names, if allowed and under the cap per digest period
    /// (the message that reaches the cap says DMs pause); with why a DM was dropped.
    async fn direct_message(
        &self,
        outcome: &PatchOutcome,
        traceparent: Option<&String>,
    ) -> Result<(Option<NewMessage>, Option<&'static str>), AlerterError> {
        let user = match self.notify_user(outcome) {
            Notify::Nobody => return Ok((None, None)),
            Notify::NotAllowed(user) => {
                tracing::warn!(
                    patch_id = %outcome.patch_id,
                    user = %user,
                    "notify names a user outside routing.notify_allowed; no DM sent"
                );
                return Ok((None, Some("not_allowed")));
            }
            Notify::User(user) => user,
        };
        let now = self.clock.now_ms();
        let period = millis(self.routing.digest_period).max(1);
        let period_start = now - now.rem_euclid(period);
        let sent = self.outbox.store().dms_since(&user, period_start).await?;
        let cap = u64::from(self.routing.notify_max_per_period);
        let (body, dropped) = if sent < cap {
            (
                Some(messages::line(&messages::fallback_text(outcome))),
                None,
            )
        } else if sent == cap {
            let text = format!(
                "🔕 You have more patches ending than {cap} DMs a period: DMs pause until {}; their results are in the channels.",
                messages::time_of_day(period_start.saturating_add(period))
            );
            (Some(messages::line(&text)), Some("capped"))
        } else {
            (None, Some("capped"))
        };
        let dm = body.map(|body| NewMessage {
            thread: format!("dm/{}/{}", outcome.patch_id, outcome.attempt),
            channel: user,
            kind: Kind::Post,
            body,
            traceparent: traceparent.cloned(),
            priority: Priority::Thread,
        });
        Ok((dm, dropped))
    }

    /// Who to tell directly when `outcome`'s patch ends: its `notify` field when that user is
    /// allowed (`notify_allowed` or a `notify_users` value), else the user mapped to its API
    /// key.
    fn notify_user(&self, outcome: &PatchOutcome) -> Notify {
        if !outcome.notify.is_empty() {
            let user = &outcome.notify;
            let allowed = self.routing.notify_allowed.contains(user)
                || self
                    .routing
                    .notify_users
                    .values()
                    .any(|mapped| mapped == user);
            return if allowed {
                Notify::User(user.clone())
            } else {
                Notify::NotAllowed(user.clone())
            };
        }
        if outcome.key_name.is_empty() {
            return Notify::Nobody;
        }
        self.routing
            .notify_users
            .get(&outcome.key_name)
            .map_or(Notify::Nobody, |user| Notify::User(user.clone()))
    }

    /// Adds a line to the patch's thread (e.g. "retry requested by …").
    pub async fn note(&self, patch_id: &str, text: &str) -> Result<(), AlerterError> {
        let thread = thread_of(patch_id);
        let Some(channel) = self.outbox.store().thread_channel(&thread).await? else {
            return Ok(());
        };
        self.outbox
            .enqueue(vec![NewMessage {
                thread,
                channel,
                kind: Kind::Reply,
                body: messages::line(text),
                traceparent: None,
                priority: Priority::Thread,
            }])
            .await?;
        Ok(())
    }
}
