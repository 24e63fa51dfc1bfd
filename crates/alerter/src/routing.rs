//! Where patch outcomes and system alerts go: a route tree in the spirit of Alertmanager's.
//!
//! The root route is implicit: the channel `slack.channel`, no mention, and `thread = "auto"`
//! (failures, rollbacks, timeouts, lost patches and every other outcome that is not a success
//! get their own thread; successes go to the channel's digest). `routing.routes` are its
//! children. A patch walks the tree: at each level the first child whose matchers all hold
//! wins (its unset settings inherited from its parent) and the walk goes on into its own
//! children; a matching child with `continue = true` does not stop the search, so later
//! siblings may match too (one message per matching route, each in its own channel). When no
//! child matches, the parent itself applies. System alerts go to `routing.ops_channel`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use ghost_core::Status;
use serde::{Deserialize, Serialize};

/// Deepest route tree accepted (a guard against a config that nests without end).
pub const MAX_DEPTH: usize = 8;
/// Most routes accepted in the whole tree.
pub const MAX_ROUTES: usize = 200;
/// Longest `digest_max_entries` accepted (one digest message must stay within Slack's
/// 50 blocks and 3,000 characters per section).
pub const MAX_DIGEST_ENTRIES: u32 = 100;

/// Most DMs per user and digest period accepted as `notify_max_per_period`.
pub const MAX_DMS_PER_PERIOD: u32 = 1_000;

/// Routing, digests and the backlog switch (`[alerter.routing]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Channel of system alerts (stale queues, lost executors…); unset: `slack.channel`.
    pub ops_channel: Option<String>,
    /// A digest message collects the successes of one channel for this long, then a new
    /// message starts.
    #[serde(with = "humantime_serde")]
    pub digest_period: Duration,
    /// A digest message holds at most this many patches; the next one starts a new message.
    pub digest_max_entries: u32,
    /// Pending messages of one channel above which successes routed to their own thread go
    /// to the digest instead (a one-line notice says so, and another when it drains);
    /// 0: never switch.
    pub backlog_threshold: u32,
    /// Link of a patch's summary in digests, `{id}` replaced by the patch id, e.g.
    /// `https://ghost.example.com/patches/{id}/summary`; unset: no links.
    pub summary_url: Option<String>,
    /// Slack user to notify when a patch submitted with an API key of this name ends
    /// (API key name → `U…`/`W…` id); a patch's own `notify` field wins.
    pub notify_users: BTreeMap<String, String>,
    /// Slack users a patch's own `notify` field may name, besides the `notify_users` values;
    /// any other user id is never sent a DM (the patch is still posted; a log line and
    /// `ghost_alerter_notify_dropped_total{reason="not_allowed"}` say so).
    pub notify_allowed: Vec<String>,
    /// DMs to one user per digest period; the next one is a single line saying DMs pause,
    /// later ones are dropped (counted in `ghost_alerter_notify_dropped_total{reason="capped"}`).
    pub notify_max_per_period: u32,
    /// The routes under the implicit root.
    pub routes: Vec<Route>,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            ops_channel: None,
            digest_period: Duration::from_secs(15 * 60),
            digest_max_entries: 50,
            backlog_threshold: 20,
            summary_url: None,
            notify_users: BTreeMap::new(),
            notify_allowed: Vec::new(),
            notify_max_per_period: 10,
            routes: Vec::new(),
        }
    }
}

/// Whether a routed patch gets a thread of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ThreadMode {
    /// Its own thread (parent message, replies per attempt).
    Own,
    /// One line in the channel's digest.
    Digest,
    /// Own thread unless it succeeded.
    Auto,
}

impl ThreadMode {
    fn as_str(self) -> &'static str {
        match self {
            Self::Own => "own",
            Self::Digest => "digest",
            Self::Auto => "auto",
        }
    }
}

/// One route: matchers, then what to do when they all hold.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Route {
    /// Target names; a trailing `*` matches a prefix (`WEB-*`). Empty: any target.
    pub target: Vec<String>,
    /// Patch statuses (`succeeded`, `failed`, `rolled_back`, `timed_out`, `lost`…). Empty: any.
    pub status: Vec<String>,
    /// Patch priorities (`low`, `normal`, `high`). Empty: any.
    pub priority: Vec<String>,
    /// Labels that must all be present with these values. Refused at start for now: patches
    /// carry no labels yet, so such a route could never match.
    pub labels: BTreeMap<String, String>,
    /// Channel (name or id); unset: the parent's.
    pub channel: Option<String>,
    /// `here`, `channel`, `none`, a user group `subteam:S0123` or a user `user:U0123`;
    /// unset: the parent's.
    pub mention: Option<String>,
    /// `own`, `digest` or `auto`; unset: the parent's.
    pub thread: Option<ThreadMode>,
    /// Keep looking at the following siblings after this route matched.
    #[serde(rename = "continue")]
    pub continue_matching: bool,
    /// Child routes.
    pub routes: Vec<Route>,
}

/// What a patch is routed on.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// Its target.
    pub target: &'a str,
    /// How it ended.
    pub status: Status,
    /// Its priority (`low`, `normal`, `high`; empty when unknown).
    pub priority: &'a str,
    /// Its labels.
    pub labels: &'a BTreeMap<String, String>,
}

/// Where one copy of a patch's message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Channel.
    pub channel: String,
    /// Mention markup to prefix (`<!here>`, `<!subteam^S0123>`…), empty for none.
    pub mention: String,
    /// True: its own thread; false: the digest.
    pub own_thread: bool,
}

/// The effective route tree, checked.
#[derive(Debug, Clone)]
pub struct Router {
    root: Route,
    ops_channel: String,
}

fn valid_channel(channel: &str) -> bool {
    !channel.is_empty()
        && channel.chars().count() <= 80
        && channel
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '#' | '-' | '_' | '.'))
}

/// True for a Slack user id: `U` or `W`, then 2 to 20 capital letters or digits.
pub fn is_slack_user_id(id: &str) -> bool {
    id.starts_with(['U', 'W'])
        && (3..=21).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
}

/// The Slack markup of a configured mention, or why it is not one.
pub fn mention_markup(mention: &str) -> Result<String, String> {
    let id_ok = |id: &str| {
        (2..=24).contains(&id.len())
            && id
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
    };
    match mention {
        "" | "none" => Ok(String::new()),
        "here" => Ok("<!here>".to_owned()),
        "channel" => Ok("<!channel>".to_owned()),
        other => {
            if let Some(id) = other.strip_prefix("subteam:")
                && id.starts_with('S')
                && id_ok(id)
            {
                return Ok(format!("<!subteam^{id}>"));
            }
            if let Some(id) = other.strip_prefix("user:")
                && id.starts_with(['U', 'W'])
                && id_ok(id)
            {
                return Ok(format!("<@{id}>"));
            }
            Err(format!(
                "{other:?} is not a mention: use here, channel, none, subteam:S… or user:U…"
            ))
        }
    }
}

fn check_route(route: &Route, key: &str, depth: usize, count: &mut usize) -> Result<(), String> {
    *count += 1;
    if *count > MAX_ROUTES {
        return Err(format!("routing.routes: more than {MAX_ROUTES} routes"));
    }
    if depth > MAX_DEPTH {
        return Err(format!("{key}: nested deeper than {MAX_DEPTH} levels"));
    }
    for target in &route.target {
        let stem = target.strip_suffix('*').unwrap_or(target);
        if stem.contains('*') || (stem.is_empty() && target != "*") || target.len() > 100 {
            return Err(format!(
                "{key}.target: {target:?} is not a target name or a prefix ending in *"
            ));
        }
    }
    for status in &route.status {
        let parsed: Result<Status, _> = status.parse();
        if parsed.is_err() {
            return Err(format!("{key}.status: unknown status {status:?}"));
        }
    }
    if !route.labels.is_empty() {
        return Err(format!(
            "{key}.labels: labels are not carried yet (no patch has any), so this route could never match; remove it"
        ));
    }
    for priority in &route.priority {
        if !matches!(priority.as_str(), "low" | "normal" | "high") {
            return Err(format!(
                "{key}.priority: {priority:?} is not low, normal or high"
            ));
        }
    }
    if let Some(channel) = &route.channel
        && !valid_channel(channel)
    {
        return Err(format!(
            "{key}.channel: {channel:?} is not a channel name or id"
        ));
    }
    if let Some(mention) = &route.mention {
        mention_markup(mention).map_err(|err| format!("{key}.mention: {err}"))?;
    }
    for (index, child) in route.routes.iter().enumerate() {
        check_route(child, &format!("{key}.routes[{index}]"), depth + 1, count)?;
    }
    Ok(())
}

fn matches(route: &Route, subject: &Subject<'_>) -> bool {
    let target_ok = route.target.is_empty()
        || route
            .target
            .iter()
            .any(|pattern| match pattern.strip_suffix('*') {
                Some(prefix) => subject.target.starts_with(prefix),
                None => pattern == subject.target,
            });
    let status_ok =
        route.status.is_empty() || route.status.iter().any(|s| s == subject.status.as_str());
    let priority_ok =
        route.priority.is_empty() || route.priority.iter().any(|p| p == subject.priority);
    let labels_ok = route
        .labels
        .iter()
        .all(|(name, value)| subject.labels.get(name) == Some(value));
    target_ok && status_ok && priority_ok && labels_ok
}

/// Settings inherited down the tree.
#[derive(Debug, Clone)]
struct Settings {
    channel: String,
    mention: String,
    thread: ThreadMode,
}

impl Settings {
    fn under(&self, route: &Route) -> Self {
        Self {
            channel: route
                .channel
                .clone()
                .unwrap_or_else(|| self.channel.clone()),
            mention: route
                .mention
                .clone()
                .unwrap_or_else(|| self.mention.clone()),
            thread: route.thread.unwrap_or(self.thread),
        }
    }
}

impl Router {
    /// Checks `config` (naming the first bad key) and builds the tree; `default_channel` is
    /// the root's channel.
    pub fn new(config: &RoutingConfig, default_channel: &str) -> Result<Self, String> {
        let root = Route {
            channel: Some(default_channel.to_owned()),
            mention: Some("none".to_owned()),
            thread: Some(ThreadMode::Auto),
            routes: config.routes.clone(),
            ..Route::default()
        };
        let mut count = 0;
        for (index, child) in root.routes.iter().enumerate() {
            check_route(child, &format!("routing.routes[{index}]"), 1, &mut count)?;
        }
        if let Some(ops) = &config.ops_channel
            && !valid_channel(ops)
        {
            return Err(format!(
                "routing.ops_channel: {ops:?} is not a channel name or id"
            ));
        }
        if config.digest_max_entries == 0 || config.digest_max_entries > MAX_DIGEST_ENTRIES {
            return Err(format!(
                "routing.digest_max_entries must be 1 to {MAX_DIGEST_ENTRIES} (got {})",
                config.digest_max_entries
            ));
        }
        if config.digest_period < Duration::from_secs(1) {
            return Err("routing.digest_period must be at least 1s".to_owned());
        }
        if let Some(url) = &config.summary_url
            && (!(url.starts_with("https://") || url.starts_with("http://"))
                || url.len() > 500
                || url
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '|' | '<' | '>')))
        {
            return Err(format!(
                "routing.summary_url: {url:?} must be an http(s) URL of at most 500 characters without spaces, |, < or >"
            ));
        }
        for (key, user) in &config.notify_users {
            if !is_slack_user_id(user) {
                return Err(format!(
                    "routing.notify_users.{key}: {user:?} is not a Slack user id (U… or W…)"
                ));
            }
        }
        for (index, user) in config.notify_allowed.iter().enumerate() {
            if !is_slack_user_id(user) {
                return Err(format!(
                    "routing.notify_allowed[{index}]: {user:?} is not a Slack user id (U… or W…)"
                ));
            }
        }
        if config.notify_max_per_period == 0 || config.notify_max_per_period > MAX_DMS_PER_PERIOD {
            return Err(format!(
                "routing.notify_max_per_period must be 1 to {MAX_DMS_PER_PERIOD} (got {})",
                config.notify_max_per_period
            ));
        }
        Ok(Self {
            root,
            ops_channel: config
                .ops_channel
                .clone()
                .unwrap_or_else(|| default_channel.to_owned()),
        })
    }

    /// The channel of system alerts.
    pub fn ops_channel(&self) -> &str {
        &self.ops_channel
    }

    /// Where `subject` goes: one decision per matching leaf (several with `continue`), never
    /// none.
    pub fn route(&self, subject: &Subject<'_>) -> Vec<Decision> {
        let start = Settings {
            channel: String::new(),
            mention: String::new(),
            thread: ThreadMode::Auto,
        }
        .under(&self.root);
        let mut found = Vec::new();
        walk(&self.root, &start, subject, &mut found);
        let mut decisions: Vec<Decision> = Vec::new();
        for settings in found {
            let own_thread = match settings.thread {
                ThreadMode::Own => true,
                ThreadMode::Digest => false,
                ThreadMode::Auto => subject.status != Status::Succeeded,
            };
            let decision = Decision {
                channel: settings.channel,
                mention: mention_markup(&settings.mention).unwrap_or_default(),
                own_thread,
            };
            // Two routes landing in the same channel are one message: its own thread when
            // either asks for one, with both mentions.
            if let Some(same) = decisions.iter_mut().find(|d| d.channel == decision.channel) {
                same.own_thread |= decision.own_thread;
                if !decision.mention.is_empty() && !same.mention.contains(&decision.mention) {
                    if !same.mention.is_empty() {
                        same.mention.push(' ');
                    }
                    same.mention.push_str(&decision.mention);
                }
            } else {
                decisions.push(decision);
            }
        }
        decisions
    }

    /// The channels whose routes name targets: channel → target patterns (for `/ghost` in a
    /// team channel).
    pub fn targets_by_channel(&self) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        fn collect(route: &Route, channel: &str, out: &mut BTreeMap<String, Vec<String>>) {
            let channel = route.channel.as_deref().unwrap_or(channel);
            if !route.target.is_empty() {
                let entry = out.entry(channel.to_owned()).or_default();
                for target in &route.target {
                    if !entry.contains(target) {
                        entry.push(target.clone());
                    }
                }
            }
            for child in &route.routes {
                collect(child, channel, out);
            }
        }
        collect(&self.root, "", &mut out);
        out
    }

    /// The effective tree, one route a line, for `/ghost routes` (plain text; the caller
    /// escapes it).
    pub fn describe(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "system alerts → {}", self.ops_channel);
        let start = Settings {
            channel: String::new(),
            mention: String::new(),
            thread: ThreadMode::Auto,
        }
        .under(&self.root);
        describe(&self.root, &start, 0, &mut out);
        out
    }
}

fn walk(route: &Route, settings: &Settings, subject: &Subject<'_>, found: &mut Vec<Settings>) {
    let mut matched = false;
    for child in &route.routes {
        if matches(child, subject) {
            matched = true;
            walk(child, &settings.under(child), subject, found);
            if !child.continue_matching {
                return;
            }
        }
    }
    if !matched {
        found.push(settings.clone());
    }
}

fn describe(route: &Route, settings: &Settings, depth: usize, out: &mut String) {
    let mut matchers = Vec::new();
    if !route.target.is_empty() {
        matchers.push(format!("target={}", route.target.join("|")));
    }
    if !route.status.is_empty() {
        matchers.push(format!("status={}", route.status.join("|")));
    }
    if !route.priority.is_empty() {
        matchers.push(format!("priority={}", route.priority.join("|")));
    }
    for (name, value) in &route.labels {
        matchers.push(format!("{name}={value}"));
    }
    let what = if depth == 0 {
        "(root)".to_owned()
    } else if matchers.is_empty() {
        "(any)".to_owned()
    } else {
        matchers.join(" ")
    };
    let thread = match settings.thread {
        ThreadMode::Auto => "auto (own thread unless succeeded; successes in the digest)",
        other => other.as_str(),
    };
    let _ = writeln!(
        out,
        "{}{what} → {} mention={} thread={thread}{}",
        "  ".repeat(depth),
        settings.channel,
        if settings.mention.is_empty() {
            "none"
        } else {
            settings.mention.as_str()
        },
        if route.continue_matching {
            " (continue)"
        } else {
            ""
        }
    );
    for child in &route.routes {
        describe(child, &settings.under(child), depth + 1, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(target: &[&str], status: &[&str], channel: &str) -> Route {
        Route {
            target: target.iter().map(|s| (*s).to_owned()).collect(),
            status: status.iter().map(|s| (*s).to_owned()).collect(),
            channel: Some(channel.to_owned()),
            ..Route::default()
        }
    }

    #[test]
    fn defaults_give_failures_threads_and_successes_the_digest() {
        let router = Router::new(&RoutingConfig::default(), "#ghost").unwrap();
        let labels = BTreeMap::new();
        let route = |status| {
            router.route(&Subject {
                target: "MAIN",
                status,
                priority: "normal",
                labels: &labels,
            })
        };
        assert!(!route(Status::Succeeded)[0].own_thread);
        for status in [
            Status::Failed,
            Status::RolledBack,
            Status::TimedOut,
            Status::Lost,
        ] {
            assert!(route(status)[0].own_thread, "{status}");
            assert_eq!(route(status)[0].channel, "#ghost");
        }
        assert_eq!(router.ops_channel(), "#ghost");
    }

    #[test]
    fn two_routes_to_one_channel_merge_preferring_a_thread_and_both_mentions() {
        let mut digest = route(&["MAIN"], &[], "#main");
        digest.thread = Some(ThreadMode::Digest);
        digest.mention = Some("here".to_owned());
        digest.continue_matching = true;
        let mut own = route(&["MAIN"], &[], "#main");
        own.thread = Some(ThreadMode::Own);
        own.mention = Some("subteam:S0REL".to_owned());
        let config = RoutingConfig {
            routes: vec![digest, own],
            ..RoutingConfig::default()
        };
        let router = Router::new(&config, "#ghost").unwrap();
        let labels = BTreeMap::new();
        let decisions = router.route(&Subject {
            target: "MAIN",
            status: Status::Succeeded,
            priority: "normal",
            labels: &labels,
        });
        assert_eq!(
            decisions,
            [Decision {
                channel: "#main".to_owned(),
                mention: "<!here> <!subteam^S0REL>".to_owned(),
                own_thread: true,
            }]
        );
    }

    #[test]
    fn first_match_wins_unless_continue_and_children_inherit() {
        let mut web = route(&["WEB-*"], &[], "#web");
        web.mention = Some("subteam:S0WEB".to_owned());
        web.routes = vec![route(&[], &["failed"], "#web-failures")];
        let mut all = route(&[], &[], "#audit");
        all.thread = Some(ThreadMode::Digest);
        let mut first = web.clone();
        first.continue_matching = true;
        let config = RoutingConfig {
            routes: vec![first, all, route(&["WEB-*"], &[], "#never")],
            ..RoutingConfig::default()
        };
        let router = Router::new(&config, "#ghost").unwrap();
        let labels = BTreeMap::new();
        let decisions = router.route(&Subject {
            target: "WEB-1",
            status: Status::Failed,
            priority: "",
            labels: &labels,
        });
        assert_eq!(
            decisions,
            [
                Decision {
                    channel: "#web-failures".to_owned(),
                    mention: "<!subteam^S0WEB>".to_owned(),
                    own_thread: true
                },
                Decision {
                    channel: "#audit".to_owned(),
                    mention: String::new(),
                    own_thread: false
                }
            ]
        );
        let text = router.describe();
        assert!(text.contains("target=WEB-*"), "{text}");
    }

    #[test]
    fn bad_routes_name_their_key() {
        let mut bad = route(&["MAIN"], &["exploded"], "#x");
        let config = RoutingConfig {
            routes: vec![route(&[], &[], "#ok"), bad.clone()],
            ..RoutingConfig::default()
        };
        let error = Router::new(&config, "#g").unwrap_err();
        assert!(error.contains("routing.routes[1].status"), "{error}");
        bad.status.clear();
        bad.mention = Some("everyone".to_owned());
        let config = RoutingConfig {
            routes: vec![Route {
                routes: vec![bad],
                ..Route::default()
            }],
            ..RoutingConfig::default()
        };
        let error = Router::new(&config, "#g").unwrap_err();
        assert!(
            error.contains("routing.routes[0].routes[0].mention"),
            "{error}"
        );
    }
}
