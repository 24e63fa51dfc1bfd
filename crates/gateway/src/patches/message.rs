//! Patches out of chat text: every fenced JSON/YAML block of a message is parsed from one
//! shared budget, and each is submitted, skipped or refused, with the reason.

use ghost_core::{Format, ParseBudget};

use super::{
    Accepted, BlockOutcome, MessageOutcome, Patches, parse_off_the_workers, refuse_revert_member,
};
use crate::auth::{Principal, Scope};
use crate::error::GatewayError;

/// The format of a fenced block that may hold a patch; None for other blocks (skipped).
fn block_format(block: &ghost_core::FencedBlock) -> Option<Format> {
    match block.lang.as_str() {
        "json" | "jsonc" | "json5" => Some(Format::Json),
        "yaml" | "yml" => Some(Format::Yaml),
        "" if block.body.trim_start().starts_with('{') => Some(Format::Json),
        _ => None,
    }
}

/// Fenced JSON/YAML blocks in chat text: the patches a message may submit, counted before
/// any is parsed so a message over the cap costs no parsing.
pub fn patch_blocks(text: &str) -> usize {
    ghost_core::fenced_blocks(text)
        .iter()
        .filter(|block| block_format(block).is_some())
        .count()
}
/// Chat text quotes JSON for many reasons: a block that names neither an id nor a target is a
/// patch only in a legacy shape, with that shape's own markers; a bare `{"commands": [...]}`
/// is an example, not an order.
fn is_patch(value: &serde_json::Value) -> bool {
    match ghost_core::detect_shape(value) {
        None => false,
        Some(ghost_core::Shape::V1) => value.get("id").is_some() || value.get("target").is_some(),
        Some(_) => true,
    }
}

impl Patches {
    /// Every fenced JSON/YAML patch block of a chat message submitted; the others reported.
    pub async fn submit_message(
        &self,
        caller: &Principal,
        text: &str,
    ) -> Result<MessageOutcome, GatewayError> {
        caller.require(Scope::Submit)?;
        let mut blocks = Vec::new();
        let mut submitted = 0;
        let mut remaining = self.budget.max_bytes;
        for block in ghost_core::fenced_blocks(text) {
            let outcome =
                |outcome: &str, patch: Option<Accepted>, reason: Option<String>| BlockOutcome {
                    line: block.line,
                    lang: block.lang.clone(),
                    outcome: outcome.to_owned(),
                    patch,
                    reason,
                };
            let skipped = |reason: &str| outcome("skipped", None, Some(reason.to_owned()));
            let Some(format) = block_format(&block) else {
                blocks.push(skipped("not a JSON or YAML block"));
                continue;
            };
            // One budget for the whole message: each block spends from what the earlier ones
            // left, so twenty blocks cannot expand to twenty budgets.
            let budget = ParseBudget {
                max_bytes: remaining,
                ..self.budget
            };
            let parsed =
                parse_off_the_workers(block.body.clone().into_bytes(), format, budget).await?;
            remaining = remaining.saturating_sub(match &parsed {
                Ok(document) => document.spent,
                Err(_) => block.body.len(),
            });
            let document = match parsed {
                Ok(document) => document,
                Err(_) if !block.closed => {
                    blocks.push(skipped("unterminated block"));
                    continue;
                }
                Err(err) => {
                    blocks.push(outcome("refused", None, Some(err.to_string())));
                    continue;
                }
            };
            if !is_patch(&document.value) {
                blocks.push(skipped("not a patch"));
                continue;
            }
            match self.submit_document(caller, document).await {
                Ok(accepted) => {
                    submitted += 1;
                    blocks.push(outcome("submitted", Some(accepted), None));
                }
                // A transient failure (the router lost, overloaded or failing) must not look
                // like a refused block: the whole message is 503, so a webhook delivery is not
                // committed and the sender's retry queues the patch.
                Err(
                    err @ (GatewayError::Unavailable(_)
                    | GatewayError::Overloaded(_)
                    | GatewayError::Internal(_)),
                ) => {
                    tracing::warn!(error = %err, "transient failure inside a message; the message is refused whole");
                    return Err(GatewayError::Unavailable(err.to_string()));
                }
                Err(err) => blocks.push(outcome("refused", None, Some(err.to_string()))),
            }
        }
        Ok(MessageOutcome { submitted, blocks })
    }

    /// One block's document as a patch: refused when it carries `revert`, else normalised
    /// (keeping what reading it forgave) and queued.
    async fn submit_document(
        &self,
        caller: &Principal,
        document: ghost_core::Document,
    ) -> Result<Accepted, GatewayError> {
        refuse_revert_member(&document.value)?;
        let mut normalised = ghost_core::normalise(document.value, &self.legacy)?;
        normalised.warnings = document.warnings;
        self.queue_normalised(caller, normalised).await
    }
}

#[cfg(test)]
mod message_tests {
    use std::sync::Arc;

    use ghost_core::{LegacyOptions, TargetName};

    use super::super::fake::FakeRouter;
    use super::*;

    #[tokio::test]
    async fn a_failing_router_makes_the_whole_message_unavailable_not_a_refused_block() {
        let patches = Patches::new(
            Arc::new(FakeRouter::failing()),
            Arc::new(FakeRouter::failing()),
            1000,
            LegacyOptions::default(),
            ParseBudget::new(1 << 20),
        );
        let target = TargetName::parse("MAIN").expect("target");
        let text = "```json\n{\"id\":\"p1\",\"target\":\"MAIN\",\"edits\":[{\"op\":\"write\",\"path\":\"a.txt\",\"contents\":\"x\"}]}\n```\n";
        let outcome = patches
            .submit_message(&Principal::inbox(&target), text)
            .await;
        assert!(
            matches!(outcome, Err(GatewayError::Unavailable(_))),
            "{outcome:?}"
        );
    }
}
