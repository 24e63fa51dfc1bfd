//! What the dashboard pages show, gathered through [`Patches`] with the caller's own
//! principal (so scopes and target allowlists apply exactly as on the JSON API). Nothing here
//! knows HTML. Lists never load everything: one router page per request, or for a text search
//! a bounded number of router pages.

use std::collections::BTreeMap;

use crate::auth::Principal;
use crate::error::GatewayError;
use crate::fleet::{AlertList, ExecutorList, Stats};
use crate::patches::{EventView, ListFilter, PatchDetail, PatchView, Patches, TargetView};

/// Router pages a text search may read for one dashboard page.
pub const MAX_SEARCH_PAGES: usize = 20;
/// Longest accepted search text.
pub const MAX_SEARCH_CHARS: usize = 200;
/// Recent patches shown per target on the overview.
const RECENT_PER_TARGET: u32 = 8;

/// Everything on the overview page.
pub struct Overview {
    /// Targets with their queues.
    pub targets: Vec<TargetView>,
    /// The newest patches of each target.
    pub recent: BTreeMap<String, Vec<PatchView>>,
    /// Connected executors.
    pub executors: ExecutorList,
    /// Chart figures of the last 24 hours (`None` when the router cannot give them).
    pub stats: Option<Stats>,
    /// Active alerts, or why there are none to show.
    pub alerts: Result<AlertList, GatewayError>,
}

/// Filters and position of the patch list, as checked from the query string.
#[derive(Debug, Clone, Default)]
pub struct ListRequest {
    /// Router filters and page position.
    pub filter: ListFilter,
    /// Case-insensitive text to find in id, description or error (empty: none).
    pub text: String,
    /// 1-based page number, for display only.
    pub page: u32,
}

impl ListRequest {
    /// Checks raw query values; every refusal says what is wrong.
    pub fn parse(
        target: Option<String>,
        status: Option<String>,
        text: Option<String>,
        page_size: Option<u32>,
        page_token: Option<String>,
        page: Option<u32>,
    ) -> Result<Self, GatewayError> {
        let blank = |value: Option<String>| value.filter(|v| !v.trim().is_empty());
        let filter = ListFilter::parse(
            blank(target),
            blank(status),
            Some(page_size.unwrap_or(50)),
            blank(page_token),
        )?;
        let text = text.unwrap_or_default().trim().to_owned();
        if text.chars().count() > MAX_SEARCH_CHARS {
            return Err(GatewayError::BadRequest(format!(
                "search text is limited to {MAX_SEARCH_CHARS} characters"
            )));
        }
        Ok(Self {
            filter,
            text,
            page: page.unwrap_or(1).max(1),
        })
    }
}

/// One page of the patch list.
pub struct ListPage {
    /// Newest first.
    pub patches: Vec<PatchView>,
    /// Token of the next page (empty: this is the last).
    pub next_page_token: String,
    /// Patches read from the router for this page.
    pub scanned: usize,
    /// True when a text search stopped at its read budget before filling the page.
    pub search_budget_spent: bool,
}

fn matches(patch: &PatchView, needle: &str) -> bool {
    [&patch.id, &patch.description, &patch.error]
        .iter()
        .any(|field| field.to_lowercase().contains(needle))
}

/// The overview: targets, their newest patches, executors, charts and alerts.
pub async fn overview(
    patches: &Patches,
    caller: &Principal,
    now_ms: i64,
) -> Result<Overview, GatewayError> {
    let targets = patches.targets(caller).await?;
    let mut recent = BTreeMap::new();
    for target in &targets {
        let filter = ListFilter {
            target: Some(target.target.clone()),
            page_size: RECENT_PER_TARGET,
            ..ListFilter::default()
        };
        recent.insert(
            target.target.clone(),
            patches.list(caller, &filter).await?.patches,
        );
    }
    let executors = patches.executors(caller).await?;
    let stats = match patches.stats(caller, None, now_ms - 24 * 3_600_000).await {
        Ok(stats) => Some(stats),
        Err(err) => {
            tracing::warn!(error = %err, "dashboard charts unavailable");
            None
        }
    };
    let alerts = patches.alerts(caller).await;
    Ok(Overview {
        targets,
        recent,
        executors,
        stats,
        alerts,
    })
}

/// One page of the list: a router page as it is, or for a text search the matches of up to
/// [`MAX_SEARCH_PAGES`] router pages (a page may then hold up to twice the page size).
pub async fn list(
    patches: &Patches,
    caller: &Principal,
    request: &ListRequest,
) -> Result<ListPage, GatewayError> {
    if request.text.is_empty() {
        let mut page = patches.list(caller, &request.filter).await?;
        // A full page gets a token even when nothing follows: peek one row so the last
        // page says so instead of linking to an empty one.
        if !page.next_page_token.is_empty() {
            let peek = ListFilter {
                page_size: 1,
                page_token: page.next_page_token.clone(),
                ..request.filter.clone()
            };
            if patches.list(caller, &peek).await?.patches.is_empty() {
                page.next_page_token.clear();
            }
        }
        return Ok(ListPage {
            scanned: page.patches.len(),
            patches: page.patches,
            next_page_token: page.next_page_token,
            search_budget_spent: false,
        });
    }
    let needle = request.text.to_lowercase();
    let wanted = request.filter.page_size as usize;
    let mut filter = request.filter.clone();
    let mut found = Vec::new();
    let mut scanned = 0;
    for _ in 0..MAX_SEARCH_PAGES {
        let page = patches.list(caller, &filter).await?;
        scanned += page.patches.len();
        found.extend(page.patches.into_iter().filter(|p| matches(p, &needle)));
        filter.page_token = page.next_page_token;
        if filter.page_token.is_empty() || found.len() >= wanted {
            break;
        }
    }
    let search_budget_spent = found.len() < wanted && !filter.page_token.is_empty();
    Ok(ListPage {
        patches: found,
        next_page_token: filter.page_token,
        scanned,
        search_budget_spent,
    })
}

/// A patch with its report and summary, and its event trail.
pub async fn detail(
    patches: &Patches,
    caller: &Principal,
    id: &str,
) -> Result<(PatchDetail, Vec<EventView>), GatewayError> {
    let detail = patches.detail(caller, id).await?;
    let events = patches.events(caller, id).await?;
    Ok((detail, events))
}
