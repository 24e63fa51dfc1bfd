//! Patch outcomes (`Notify`): one Slack thread per patch. The first outcome posts the parent
//! message (with Retry / Cancel / View summary buttons, or Revert / View summary once it
//! succeeded); each later attempt updates the parent's status (`chat.update`, its buttons
//! following the status) and adds its own reply to the thread.
//!
//! Idempotent by (patch id, attempt), durably: the dedup row and the messages are stored in
//! one transaction before `Notify` answers.

use crate::error::AlerterError;
use crate::messages::{self, PatchOutcome};
use crate::outbox::Outbox;
use crate::store::{Kind, NewMessage};

/// The thread key of a patch.
pub fn thread_of(patch_id: &str) -> String {
    format!("patch/{patch_id}")
}

/// Accepts patch outcomes into the outbox. Cheap to clone.
#[derive(Clone)]
pub struct Patches {
    outbox: Outbox,
    channel: String,
    clock: crate::clock::SharedClock,
}

impl Patches {
    /// Patch threads in `channel`.
    pub fn new(outbox: Outbox, channel: String, clock: crate::clock::SharedClock) -> Self {
        Self {
            outbox,
            channel,
            clock,
        }
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
        let message = |kind, body| NewMessage {
            thread: thread.clone(),
            channel: self.channel.clone(),
            kind,
            body,
            traceparent: traceparent.clone(),
        };
        let batch = if store.thread_started(&thread).await? {
            vec![
                message(Kind::Update, messages::patch_message(outcome, true)),
                message(Kind::Reply, messages::patch_message(outcome, false)),
            ]
        } else {
            vec![message(Kind::Post, messages::patch_message(outcome, true))]
        };
        let fresh = store
            .accept_notification(&patch_id, outcome.attempt, self.clock.now_ms(), batch)
            .await?;
        if fresh {
            self.outbox.wake();
        }
        Ok(fresh)
    }

    /// Adds a line to the patch's thread (e.g. "retry requested by …").
    pub async fn note(&self, patch_id: &str, text: &str) -> Result<(), AlerterError> {
        let thread = thread_of(patch_id);
        if !self.outbox.store().thread_started(&thread).await? {
            return Ok(());
        }
        self.outbox
            .enqueue(vec![NewMessage {
                thread,
                channel: self.channel.clone(),
                kind: Kind::Reply,
                body: messages::line(text),
                traceparent: None,
            }])
            .await?;
        Ok(())
    }
}
