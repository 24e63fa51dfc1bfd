//! The gateway's logic: accept a patch only once the router holds it, and read patches back
//! with their summary. Talks to its downstreams through the two ports below.

use std::sync::Arc;

use ghost_core::{Patch, PatchId, Status};
use serde::Serialize;

use crate::error::GatewayError;

/// The router as the gateway needs it.
#[tonic::async_trait]
pub trait PatchQueue: Send + Sync {
    /// Stores the patch durably; returns its state (`created` false for an identical replay).
    async fn submit(&self, patch: &Patch) -> Result<PatchView, GatewayError>;
    /// One patch's state.
    async fn get(&self, id: &PatchId) -> Result<PatchView, GatewayError>;
}

/// The summarizer as the gateway needs it.
#[tonic::async_trait]
pub trait SummaryStore: Send + Sync {
    /// The Markdown summary of a patch, if one was written yet.
    async fn markdown(&self, id: &PatchId) -> Result<Option<String>, GatewayError>;
}

/// A patch as the public API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PatchView {
    /// The patch id.
    pub id: String,
    /// Its workspace.
    pub target: String,
    /// Lifecycle state.
    pub status: Status,
    /// Attempts started.
    pub attempt: u32,
    /// The submitter's description.
    pub description: String,
    /// Why it did not succeed (empty otherwise).
    pub error: String,
    /// Trace id to find it in Jaeger.
    pub trace_id: String,
    /// Unix ms.
    pub created_unix_ms: i64,
    /// Unix ms.
    pub updated_unix_ms: i64,
    /// False when this submit replayed an identical earlier one.
    #[serde(skip)]
    pub created: bool,
}

/// A patch with its summary text, for `GET /v1/patches/{id}`.
#[derive(Debug, Clone, Serialize)]
pub struct PatchDetail {
    /// State.
    #[serde(flatten)]
    pub view: PatchView,
    /// The summary, cut to the configured size; null until the patch has ended and been
    /// summarised.
    pub summary: Option<String>,
}

/// The gateway's logic over its ports.
#[derive(Clone)]
pub struct Patches {
    queue: Arc<dyn PatchQueue>,
    summaries: Arc<dyn SummaryStore>,
    summary_max_chars: usize,
}

impl Patches {
    /// Logic over the given ports.
    pub fn new(
        queue: Arc<dyn PatchQueue>,
        summaries: Arc<dyn SummaryStore>,
        summary_max_chars: usize,
    ) -> Self {
        Self {
            queue,
            summaries,
            summary_max_chars,
        }
    }

    /// Parses, validates and durably queues a JSON patch.
    pub async fn submit_json(&self, body: &[u8]) -> Result<PatchView, GatewayError> {
        let patch = ghost_core::parse_json(body)?;
        tracing::Span::current().record("patch_id", patch.id.as_str());
        self.queue.submit(&patch).await
    }

    /// A patch and, once it has ended, its summary.
    pub async fn detail(&self, raw_id: &str) -> Result<PatchDetail, GatewayError> {
        let id = PatchId::parse(raw_id).map_err(|_| GatewayError::NotFound(raw_id.to_owned()))?;
        let view = self.queue.get(&id).await?;
        let summary = if view.status.is_terminal() {
            self.summaries
                .markdown(&id)
                .await?
                .map(|text| cut_middle(&text, self.summary_max_chars))
        } else {
            None
        };
        Ok(PatchDetail { view, summary })
    }
}

/// Shortens `text` to at most `max` characters by cutting its middle, keeping head and tail.
pub fn cut_middle(text: &str, max: usize) -> String {
    let count = text.chars().count();
    if count <= max {
        return text.to_owned();
    }
    let marker = format!("\n\n[… {} characters cut …]\n\n", count.saturating_sub(max));
    let keep = max.saturating_sub(marker.chars().count());
    let head: String = text.chars().take(keep / 2).collect();
    let tail: String = text.chars().skip(count - (keep - keep / 2)).collect();
    format!("{head}{marker}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_untouched() {
        assert_eq!(cut_middle("hello", 10), "hello");
    }

    #[test]
    fn long_text_keeps_head_and_tail_within_budget() {
        let text = format!("HEAD{}TAIL", "x".repeat(10_000));
        let cut = cut_middle(&text, 500);
        assert!(cut.chars().count() <= 500, "{}", cut.chars().count());
        assert!(cut.starts_with("HEAD"));
        assert!(cut.ends_with("TAIL"));
        assert!(cut.contains("characters cut"));
    }

    #[test]
    fn cutting_respects_multibyte_characters() {
        let text = "é".repeat(1000);
        let cut = cut_middle(&text, 100);
        assert!(cut.chars().count() <= 100);
    }
}
