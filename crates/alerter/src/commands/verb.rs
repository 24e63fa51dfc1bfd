//! The `/ghost` verbs as a type: their names, which ones change state (operators only), how each
//! is typed, and how a slash command (or an alias of the old system) maps onto one.

/// The help text.
pub const HELP: &str = "*/ghost* verbs:
• `status` — targets, queues, alerts and health at a glance
• `queue [target]` — queued patches (no target: the targets routed to this channel, or all)
• `routes` — where patch outcomes and alerts go
• `patch <id>` — one patch's state
• `summary <id>` — a patch's summary
• `retry <id>` · `cancel <id>` — operators only
• `revert <id>` — undo a succeeded patch (queues `revert-<id>`) — operators only
• `pause <target>` · `resume <target>` — operators only
• `targets` · `executors` — what the router knows
• `alerts` — firing alerts and silences
• `ack <alert key>` — operators only
• `silence <key|target> <duration>` · `unsilence <id>` — operators only
• `health` — what the health monitor sees
• `help`
Old commands still work: /status-runner, /patch-status, /status-queue, /daemon-status, and /patch-revert (now `revert`, no longer `cancel`).";

/// A `/ghost` verb. Adding one: a variant here, in [`Verb::ALL`], its name in [`Verb::as_str`],
/// whether it changes state in [`Verb::is_mutating`], a line in [`HELP`] and its arm in
/// `Commands::execute` (the compiler asks for each but `ALL` and `HELP`; the tests check those).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verb {
    /// The verb list.
    Help,
    /// Targets, queues, alerts and health at a glance.
    Status,
    /// Queued patches of a target, or of the targets routed to this channel.
    Queue,
    /// Where patch outcomes and alerts go.
    Routes,
    /// One patch's state.
    Patch,
    /// A patch's summary.
    Summary,
    /// Queue a patch again.
    Retry,
    /// Cancel a patch.
    Cancel,
    /// Undo a succeeded patch.
    Revert,
    /// Stop handing out a target's work.
    Pause,
    /// Hand out a paused target's work again.
    Resume,
    /// The targets the router knows.
    Targets,
    /// The executors connected to the router.
    Executors,
    /// Firing alerts and silences.
    Alerts,
    /// Acknowledge an alert.
    Ack,
    /// Silence alerts by key or target for a while.
    Silence,
    /// End a silence.
    Unsilence,
    /// What the health monitor sees.
    Health,
}

/// A word that is not a verb (lowercased as it was looked up).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown verb {0:?}")]
pub struct UnknownVerb(pub String);

impl Verb {
    /// Every verb, in the order of [`HELP`].
    pub const ALL: [Self; 18] = [
        Self::Status,
        Self::Queue,
        Self::Routes,
        Self::Patch,
        Self::Summary,
        Self::Retry,
        Self::Cancel,
        Self::Revert,
        Self::Pause,
        Self::Resume,
        Self::Targets,
        Self::Executors,
        Self::Alerts,
        Self::Ack,
        Self::Silence,
        Self::Unsilence,
        Self::Health,
        Self::Help,
    ];

    /// The word typed after `/ghost` (also what the audit log records).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Help => "help",
            Self::Status => "status",
            Self::Queue => "queue",
            Self::Routes => "routes",
            Self::Patch => "patch",
            Self::Summary => "summary",
            Self::Retry => "retry",
            Self::Cancel => "cancel",
            Self::Revert => "revert",
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Targets => "targets",
            Self::Executors => "executors",
            Self::Alerts => "alerts",
            Self::Ack => "ack",
            Self::Silence => "silence",
            Self::Unsilence => "unsilence",
            Self::Health => "health",
        }
    }

    /// True for the verbs that change something (a patch, a target, an alert or a silence):
    /// only operators may run them.
    pub fn is_mutating(self) -> bool {
        match self {
            Self::Retry
            | Self::Cancel
            | Self::Revert
            | Self::Pause
            | Self::Resume
            | Self::Ack
            | Self::Silence
            | Self::Unsilence => true,
            Self::Help
            | Self::Status
            | Self::Queue
            | Self::Routes
            | Self::Patch
            | Self::Summary
            | Self::Targets
            | Self::Executors
            | Self::Alerts
            | Self::Health => false,
        }
    }

    /// How the verb is typed, with its arguments (the answer when one is missing).
    pub fn usage(self) -> &'static str {
        match self {
            Self::Patch => "patch <id>",
            Self::Summary => "summary <id>",
            Self::Retry => "retry <id>",
            Self::Cancel => "cancel <id>",
            Self::Revert => "revert <id>",
            Self::Pause => "pause <target>",
            Self::Resume => "resume <target>",
            Self::Ack => "ack <alert key>",
            Self::Silence => "silence <key|target> <duration>",
            Self::Unsilence => "unsilence <id>",
            Self::Queue => "queue [target]",
            Self::Help
            | Self::Status
            | Self::Routes
            | Self::Targets
            | Self::Executors
            | Self::Alerts
            | Self::Health => self.as_str(),
        }
    }
}

impl std::fmt::Display for Verb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Verb {
    type Err = UnknownVerb;
    /// Exact, lowercase names only ([`resolve`] lowercases what was typed).
    fn from_str(word: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|verb| verb.as_str() == word)
            .ok_or_else(|| UnknownVerb(word.to_owned()))
    }
}

/// Maps a slash command and its text to a verb (or the unknown word, lowercased) and its
/// arguments; aliases of the old system map onto the verbs, an empty `/ghost` is `help`.
pub fn resolve(command: &str, text: &str) -> (Result<Verb, UnknownVerb>, Vec<String>) {
    let words: Vec<String> = text.split_whitespace().map(str::to_owned).collect();
    let alias = match command.trim_start_matches('/') {
        "status-runner" => Some(Verb::Status),
        "patch-status" => Some(Verb::Patch),
        "status-queue" => Some(Verb::Queue),
        "daemon-status" => Some(Verb::Health),
        "patch-revert" => Some(Verb::Revert),
        _ => None,
    };
    if let Some(verb) = alias {
        return (Ok(verb), words);
    }
    let mut words = words.into_iter();
    let verb = words
        .next()
        .map_or(Ok(Verb::Help), |word| word.to_lowercase().parse());
    (verb, words.collect())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn verbs_and_aliases_resolve() {
        assert_eq!(resolve("/ghost", ""), (Ok(Verb::Help), vec![]));
        assert_eq!(
            resolve("/ghost", " Cancel  p-1 "),
            (Ok(Verb::Cancel), vec!["p-1".to_owned()])
        );
        assert_eq!(resolve("/status-runner", "").0, Ok(Verb::Status));
        assert_eq!(
            resolve("/patch-status", "p-1"),
            (Ok(Verb::Patch), vec!["p-1".to_owned()])
        );
        assert_eq!(resolve("/status-queue", "MAIN").0, Ok(Verb::Queue));
        assert_eq!(resolve("/daemon-status", "").0, Ok(Verb::Health));
        assert_eq!(
            resolve("/patch-revert", "p-9"),
            (Ok(Verb::Revert), vec!["p-9".to_owned()])
        );
        assert_eq!(
            resolve("/ghost", "Frobnicate now"),
            (
                Err(UnknownVerb("frobnicate".to_owned())),
                vec!["now".to_owned()]
            )
        );
        assert_eq!(
            "frobnicate".parse::<Verb>().unwrap_err().to_string(),
            "unknown verb \"frobnicate\""
        );
    }

    #[test]
    fn every_verb_parses_from_its_name_in_any_case_and_is_in_the_help() {
        let mut names = HashSet::new();
        for verb in Verb::ALL {
            assert!(names.insert(verb.as_str()), "{verb} twice in Verb::ALL");
            assert_eq!(verb.as_str().parse::<Verb>(), Ok(verb));
            let typed = format!("{} x", verb.as_str().to_uppercase());
            assert_eq!(resolve("/ghost", &typed).0, Ok(verb));
            assert!(
                HELP.contains(&format!("`{verb}")),
                "{verb} is not in the help"
            );
            assert!(
                verb.usage().starts_with(verb.as_str()),
                "{verb}: {}",
                verb.usage()
            );
        }
        // Each variant is in ALL: this match has no wildcard, so a new variant stops the
        // build here until it is placed.
        for verb in Verb::ALL {
            let position = match verb {
                Verb::Status => 0,
                Verb::Queue => 1,
                Verb::Routes => 2,
                Verb::Patch => 3,
                Verb::Summary => 4,
                Verb::Retry => 5,
                Verb::Cancel => 6,
                Verb::Revert => 7,
                Verb::Pause => 8,
                Verb::Resume => 9,
                Verb::Targets => 10,
                Verb::Executors => 11,
                Verb::Alerts => 12,
                Verb::Ack => 13,
                Verb::Silence => 14,
                Verb::Unsilence => 15,
                Verb::Health => 16,
                Verb::Help => 17,
            };
            assert_eq!(Verb::ALL[position], verb);
        }
    }

    #[test]
    fn the_mutating_verbs_are_the_ones_that_change_a_patch_a_target_an_alert_or_a_silence() {
        let mutating: Vec<&str> = Verb::ALL
            .into_iter()
            .filter(|verb| verb.is_mutating())
            .map(Verb::as_str)
            .collect();
        assert_eq!(
            mutating,
            [
                "retry",
                "cancel",
                "revert",
                "pause",
                "resume",
                "ack",
                "silence",
                "unsilence"
            ]
        );
        // The help says so of each of them, and of no other.
        for line in HELP.lines().filter(|line| line.starts_with('•')) {
            let verbs: Vec<Verb> = line
                .split('`')
                .skip(1)
                .step_by(2)
                .filter_map(|code| code.split_whitespace().next()?.parse().ok())
                .collect();
            for verb in verbs {
                assert_eq!(
                    line.contains("operators only"),
                    verb.is_mutating(),
                    "{verb}: {line}"
                );
            }
        }
    }
}
