//! The dashboard pages as HTML strings. Every value that comes from a user, a patch, a
//! command's output or an upstream goes through [`esc`] (or [`url_part`] inside a URL).
//!
//! This file holds the login, error, overview, list and alerts pages; the page of one patch is
//! in `detail`.

mod detail;

pub use detail::detail;

use std::fmt::Write as _;

use ghost_core::Status;

use crate::fleet::{AlertList, AlertView, ChannelBacklogView, ExecutorList, Stats};
use crate::patches::{PatchView, TargetView};
use crate::ui::board::{ListPage, ListRequest, Overview};
use crate::ui::charts;
use crate::ui::html::{badge, duration, esc, time, url_part};

/// Per-request facts the pages need.
pub struct Viewer<'a> {
    /// CSRF token to put into action forms.
    pub csrf: &'a str,
    /// True when the viewer may cancel, retry, pause and resume.
    pub admin: bool,
    /// Now, Unix ms.
    pub now_ms: i64,
    /// Base URL of a Jaeger UI for trace links (none: no link).
    pub jaeger_url: Option<&'a str>,
}

fn action_form(viewer: &Viewer<'_>, action: &str, label: &str, class: &str) -> String {
    format!(
        "<form class=\"action\" method=\"post\" action=\"{action}\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <button type=\"submit\" class=\"{class}\">{label}</button></form>",
        action = esc(action),
        csrf = esc(viewer.csrf),
        label = esc(label),
        class = esc(class),
    )
}

fn patch_link(id: &str) -> String {
    format!(
        "<a class=\"patch-link\" href=\"/ui/patches/{}\">{}</a>",
        url_part(id),
        esc(id)
    )
}

fn age(viewer: &Viewer<'_>, since_ms: i64) -> String {
    if since_ms <= 0 {
        return "—".to_owned();
    }
    duration(viewer.now_ms - since_ms)
}

/// The login form, with an optional error line.
pub fn login(next: &str, error: Option<&str>) -> String {
    let error = error
        .map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", esc(e)))
        .unwrap_or_default();
    format!(
        "<section class=\"login\"><h1>Log in</h1>{error}\
         <form method=\"post\" action=\"/ui/login\">\
         <label for=\"key\">API key (read scope)</label>\
         <input id=\"key\" name=\"key\" type=\"password\" autocomplete=\"current-password\" required autofocus>\
         <input type=\"hidden\" name=\"next\" value=\"{next}\">\
         <button type=\"submit\">Log in</button></form>\
         <p class=\"muted\">The key is checked once; the browser keeps only a session cookie.</p></section>",
        next = esc(next)
    )
}

/// An error page body.
pub fn error(status: u16, message: &str) -> String {
    format!(
        "<section class=\"error-page\"><h1>{status}</h1><p class=\"error\">{}</p>\
         <p><a href=\"/ui\">Back to the overview</a></p></section>",
        esc(message)
    )
}

/// The overview page body.
pub fn overview(viewer: &Viewer<'_>, data: &Overview) -> String {
    let mut out = String::from("<h1>Overview</h1>");
    if let Ok(alerts) = &data.alerts {
        let firing = alerts.alerts.iter().filter(|a| a.state == "firing").count();
        if firing > 0 {
            let _ = write!(
                out,
                "<p class=\"banner bad\"><a href=\"/ui/alerts\">{firing} alert(s) firing</a></p>"
            );
        }
    }
    out.push_str(
        "<section><h2>Targets</h2><table class=\"targets\"><thead><tr><th>Target</th><th>Queued</th>\
         <th>Oldest queued</th><th>State</th><th>Executor</th><th>Running</th><th>Last outcomes</th><th></th></tr></thead><tbody>",
    );
    if data.targets.is_empty() {
        out.push_str("<tr><td colspan=\"8\" class=\"muted\">No targets yet.</td></tr>");
    }
    for target in &data.targets {
        out.push_str(&target_row(viewer, target, data.recent.get(&target.target)));
    }
    out.push_str("</tbody></table></section>");

    executors_section(&mut out, viewer, &data.executors);
    charts_section(&mut out, viewer, data.stats.as_ref());
    out
}

/// One target's row: queue, state, executor, running patch, last outcomes and (for an admin)
/// pause or resume.
fn target_row(viewer: &Viewer<'_>, target: &TargetView, recent: Option<&Vec<PatchView>>) -> String {
    let recent = recent
        .map(|patches| {
            patches
                .iter()
                .map(|p| {
                    format!(
                        "<a href=\"/ui/patches/{}\" title=\"{}\">{}</a>",
                        url_part(&p.id),
                        esc(&p.id),
                        badge(p.status.as_str())
                    )
                })
                .collect::<String>()
        })
        .unwrap_or_default();
    let actions = if viewer.admin {
        let (verb, label) = if target.paused {
            ("resume", "Resume")
        } else {
            ("pause", "Pause")
        };
        action_form(
            viewer,
            &format!("/ui/targets/{}/{verb}", url_part(&target.target)),
            label,
            "secondary",
        )
    } else {
        String::new()
    };
    let running = if target.running_patch_id.is_empty() {
        "—".to_owned()
    } else {
        patch_link(&target.running_patch_id)
    };
    format!(
        "<tr data-target=\"{name}\"><td><a href=\"/ui/patches?target={name_url}\">{name}</a></td>\
         <td class=\"num\">{queued}</td><td>{oldest}</td><td>{state}</td><td>{executor}</td>\
         <td>{running}</td><td class=\"recent\">{recent}</td><td>{actions}</td></tr>",
        name = esc(&target.target),
        name_url = url_part(&target.target),
        queued = target.queued,
        oldest = age(viewer, target.oldest_queued_unix_ms),
        state = if target.paused {
            badge("paused")
        } else {
            badge("active")
        },
        executor = if target.executor_online {
            "<span class=\"badge ok\">online</span>"
        } else {
            "<span class=\"badge bad\">offline</span>"
        },
    )
}

/// The executors connected now, with what each runs.
fn executors_section(out: &mut String, viewer: &Viewer<'_>, executors: &ExecutorList) {
    out.push_str("<section><h2>Executors</h2><table><thead><tr><th>Executor</th><th>Targets</th><th>Connected</th><th>Last seen</th><th>Running</th></tr></thead><tbody>");
    if executors.executors.is_empty() {
        out.push_str("<tr><td colspan=\"5\" class=\"muted\">No executor connected.</td></tr>");
    }
    for executor in &executors.executors {
        let _ = write!(
            out,
            "<tr><td>{id}</td><td>{targets}</td><td>{connected}</td><td>{seen} ago</td><td>{running}</td></tr>",
            id = esc(&executor.executor_id),
            targets = esc(&executor.targets.join(", ")),
            connected = time(executor.connected_unix_ms),
            seen = age(viewer, executor.last_seen_unix_ms),
            running = executor
                .running_patch_ids
                .iter()
                .map(|id| patch_link(id))
                .collect::<Vec<_>>()
                .join(" "),
        );
    }
    out.push_str("</tbody></table></section>");
}

/// Patches per hour by outcome and stage latency, or why they are missing.
fn charts_section(out: &mut String, viewer: &Viewer<'_>, stats: Option<&Stats>) {
    out.push_str("<section class=\"charts\"><h2>Patches per hour by outcome (24 h)</h2>");
    match stats {
        Some(stats) => {
            out.push_str(&charts::outcomes_per_hour(&stats.hours, viewer.now_ms, 24));
            out.push_str("<p class=\"legend\"><span class=\"key ok\"></span>succeeded <span class=\"key warn\"></span>rolled back / timed out <span class=\"key bad\"></span>failed / lost <span class=\"key muted\"></span>cancelled</p>");
            let _ = write!(
                out,
                "<h2>Stage latency (newest {} reports, 24 h)</h2>",
                stats.reports_sampled
            );
            out.push_str(&charts::stage_latency(&stats.stages));
        }
        None => out
            .push_str("<p class=\"muted\">Charts are unavailable: the router did not answer.</p>"),
    }
    out.push_str("</section>");
}

fn query_string(request: &ListRequest, page_token: &str, page: u32) -> String {
    let mut parts = Vec::new();
    if let Some(target) = &request.filter.target {
        parts.push(format!("target={}", url_part(target)));
    }
    if let Some(status) = request.filter.status {
        parts.push(format!("status={}", url_part(status.as_str())));
    }
    if !request.text.is_empty() {
        parts.push(format!("q={}", url_part(&request.text)));
    }
    parts.push(format!("page_size={}", request.filter.page_size));
    if !page_token.is_empty() {
        parts.push(format!("page_token={}", url_part(page_token)));
        parts.push(format!("page={page}"));
    }
    parts.join("&")
}

fn patch_row(viewer: &Viewer<'_>, patch: &PatchView) -> String {
    let action = if viewer.admin && !patch.status.is_terminal() {
        action_form(
            viewer,
            &format!("/ui/patches/{}/cancel", url_part(&patch.id)),
            "Cancel",
            "danger",
        )
    } else {
        String::new()
    };
    format!(
        "<tr class=\"patch\" data-id=\"{id}\" data-status=\"{status}\"><td>{link}</td><td>{target}</td>\
         <td>{badge}</td><td class=\"num\">{attempt}</td><td>{created}</td><td>{updated}</td>\
         <td class=\"desc\">{description}</td><td>{action}</td></tr>",
        id = esc(&patch.id),
        status = esc(patch.status.as_str()),
        link = patch_link(&patch.id),
        target = esc(&patch.target),
        badge = badge(patch.status.as_str()),
        attempt = patch.attempt,
        created = time(patch.created_unix_ms),
        updated = time(patch.updated_unix_ms),
        description = esc(&patch.description),
    )
}

/// The filter form's fields: target, status, text and page size.
fn filters(out: &mut String, targets: &[String], request: &ListRequest) {
    out.push_str("<label>Target <select name=\"target\"><option value=\"\">all</option>");
    for target in targets {
        let selected = if request.filter.target.as_deref() == Some(target.as_str()) {
            " selected"
        } else {
            ""
        };
        let _ = write!(
            out,
            "<option value=\"{t}\"{selected}>{t}</option>",
            t = esc(target)
        );
    }
    out.push_str(
        "</select></label><label>Status <select name=\"status\"><option value=\"\">all</option>",
    );
    for status in Status::ALL.map(Status::as_str) {
        let selected = if request.filter.status.map(Status::as_str) == Some(status) {
            " selected"
        } else {
            ""
        };
        let _ = write!(
            out,
            "<option value=\"{status}\"{selected}>{status}</option>"
        );
    }
    let _ = write!(
        out,
        "</select></label><label>Text <input type=\"search\" name=\"q\" value=\"{q}\" maxlength=\"200\" placeholder=\"id, description, error\"></label>\
         <input type=\"hidden\" name=\"page_size\" value=\"{size}\"><button type=\"submit\">Filter</button></form>",
        q = esc(&request.text),
        size = request.filter.page_size,
    );
}

/// The links to the first and the next page.
fn pager(out: &mut String, request: &ListRequest, page: &ListPage) {
    out.push_str("</tbody></table><nav class=\"pager\">");
    if request.page > 1 || !request.filter.page_token.is_empty() {
        let _ = write!(
            out,
            "<a class=\"first\" href=\"/ui/patches?{}\">« First page</a> ",
            query_string(request, "", 1)
        );
    }
    if !page.next_page_token.is_empty() {
        let label = if page.search_budget_spent {
            "Search further »"
        } else {
            "Next page »"
        };
        let _ = write!(
            out,
            "<a class=\"next\" rel=\"next\" href=\"/ui/patches?{}\">{label}</a>",
            query_string(request, &page.next_page_token, request.page + 1)
        );
    } else {
        out.push_str("<span class=\"last muted\">Last page</span>");
    }
    out.push_str("</nav>");
}

/// The patch list page body.
pub fn list(
    viewer: &Viewer<'_>,
    targets: &[String],
    request: &ListRequest,
    page: &ListPage,
) -> String {
    let mut out = String::from(
        "<h1>Patches</h1><form class=\"filters\" method=\"get\" action=\"/ui/patches\">",
    );
    filters(&mut out, targets, request);
    let first = (request.page.saturating_sub(1) as usize) * request.filter.page_size as usize + 1;
    let _ = write!(
        out,
        "<p class=\"page-info\" data-page=\"{page_no}\" data-count=\"{count}\">Page {page_no}: {count} patch(es){range}{search}</p>",
        page_no = request.page,
        count = page.patches.len(),
        range = if request.text.is_empty() && !page.patches.is_empty() {
            format!(", #{first}–#{}", first + page.patches.len() - 1)
        } else {
            String::new()
        },
        search = if request.text.is_empty() {
            String::new()
        } else {
            format!(" matching, {} read", page.scanned)
        },
    );
    out.push_str("<table class=\"patches\"><thead><tr><th>Id</th><th>Target</th><th>Status</th><th>Attempt</th><th>Created</th><th>Updated</th><th>Description</th><th></th></tr></thead><tbody>");
    if page.patches.is_empty() {
        out.push_str("<tr><td colspan=\"8\" class=\"muted\">No patches on this page.</td></tr>");
    }
    for patch in &page.patches {
        out.push_str(&patch_row(viewer, patch));
    }
    pager(&mut out, request, page);
    out
}

fn alert_rows(out: &mut String, alerts: &[&AlertView], viewer: &Viewer<'_>) {
    out.push_str("<table class=\"alerts\"><thead><tr><th>Severity</th><th>Key</th><th>Summary</th><th>Labels</th><th>Since</th><th>Updated</th></tr></thead><tbody>");
    if alerts.is_empty() {
        out.push_str("<tr><td colspan=\"6\" class=\"muted\">None.</td></tr>");
    }
    for alert in alerts {
        let labels = alert
            .labels
            .iter()
            .map(|(k, v)| format!("<code>{}={}</code>", esc(k), esc(v)))
            .collect::<Vec<_>>()
            .join(" ");
        let _ = write!(
            out,
            "<tr data-key=\"{key}\"><td>{severity}</td><td><code>{key}</code></td><td>{summary}</td><td>{labels}</td><td>{since} ago</td><td>{updated}</td></tr>",
            key = esc(&alert.key),
            severity = badge(&alert.severity),
            summary = esc(&alert.summary),
            since = age(viewer, alert.since_unix_ms),
            updated = time(alert.updated_unix_ms),
        );
    }
    out.push_str("</tbody></table>");
}

/// The Slack backlog per channel (nothing when no channel has one).
fn backlog_rows(out: &mut String, channels: &[ChannelBacklogView]) {
    if channels.is_empty() {
        return;
    }
    out.push_str("<section class=\"slack-backlog\"><h2>Slack backlog</h2><table class=\"backlog\"><thead><tr><th>Channel</th><th>Waiting</th><th>Successes</th></tr></thead><tbody>");
    for channel in channels {
        let _ = write!(
            out,
            "<tr><td>{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
            esc(&channel.channel),
            channel.pending,
            if channel.digest_only {
                "digest only (backlog)"
            } else {
                "own threads or digest, as routed"
            }
        );
    }
    out.push_str("</tbody></table></section>");
}

/// The alerts page body, with the Slack backlog per channel; `listed` is `Err(message)` when
/// they cannot be listed.
pub fn alerts(viewer: &Viewer<'_>, listed: Result<&AlertList, &str>) -> String {
    let mut out = String::from("<h1>Alerts</h1>");
    let list = match listed {
        Ok(list) => list,
        Err(message) => {
            let _ = write!(out, "<p class=\"muted\">{}</p>", esc(message));
            return out;
        }
    };
    for (state, title) in [
        ("firing", "Firing"),
        ("acked", "Acknowledged"),
        ("silenced", "Silenced"),
        ("resolved", "Resolved"),
    ] {
        let group: Vec<&AlertView> = list.alerts.iter().filter(|a| a.state == state).collect();
        if state == "resolved" && group.is_empty() {
            continue;
        }
        let _ = write!(
            out,
            "<section class=\"alerts-{state}\"><h2>{title} ({})</h2>",
            group.len()
        );
        alert_rows(&mut out, &group, viewer);
        out.push_str("</section>");
    }
    backlog_rows(&mut out, &list.slack_backlog);
    out
}
