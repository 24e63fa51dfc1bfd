//! What leaves the executor about a workspace says nothing of the server: paths under the
//! root are made relative, the root and state dir named, secrets in the environment and
//! the agent's variables redacted, and an agent's output bounded.

use ghost_core::ApplyReport;

use crate::workspace::Workspace;

use super::hand_off::MAX_AGENT_REPORT_BYTES;

/// Replaces the server's own paths in `text`: the workspace root becomes relative, the state
/// dir a generic name.
pub(crate) fn scrub(text: &mut String, workspace: &Workspace) {
    let root = workspace.root.display().to_string();
    let state = workspace.state_dir.display().to_string();
    let inbox = workspace
        .policy
        .agent
        .as_ref()
        .and_then(|agent| agent.inbox.as_ref())
        .map(|inbox| inbox.display().to_string())
        .unwrap_or_default();
    // The longer path first, in case one lies inside another.
    let mut paths = [
        (state, "<executor state>"),
        (inbox, "<agent inbox>"),
        (root, "."),
    ];
    paths.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
    for (path, name) in paths {
        if path.len() < 2 || !text.contains(&path) {
            continue;
        }
        if name == "." {
            *text = text.replace(&format!("{path}/"), "");
        }
        *text = replace_whole_path(text, &path, name);
    }
    redact(text, &secrets(workspace));
}

/// Variables whose values are never taken for secrets: the default allowlist's, which name
/// the machine rather than a credential (and would redact every path under `HOME`).
const NOT_SECRET: [&str; 10] = [
    "PATH", "HOME", "LANG", "LC_ALL", "TERM", "TMPDIR", "USER", "LOGNAME", "SHELL", "PWD",
];

/// Shortest value taken for a secret (shorter ones would redact ordinary words).
const MIN_SECRET_BYTES: usize = 8;

/// The values (≥ [`MIN_SECRET_BYTES`]) of the variables a command or the agent is given from
/// the executor's environment: the target's `env_allowlist` and the agent's `env`, with the
/// variable's name, longest value first.
pub(crate) fn secrets(workspace: &Workspace) -> Vec<(String, String)> {
    let agent_env = workspace
        .policy
        .agent
        .iter()
        .flat_map(|agent| agent.env.iter());
    let mut found: Vec<(String, String)> = workspace
        .policy
        .env_allowlist
        .iter()
        .chain(agent_env)
        .filter(|name| !NOT_SECRET.contains(&name.as_str()))
        .filter_map(|name| {
            let value = std::env::var_os(name)?.to_string_lossy().into_owned();
            (value.len() >= MIN_SECRET_BYTES).then(|| (name.clone(), value))
        })
        .collect();
    found.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then_with(|| a.0.cmp(&b.0)));
    found.dedup_by(|a, b| a.1 == b.1);
    found
}

/// Replaces every secret value in `text` with `[redacted:NAME]`, and a piece of one (≥ 4 bytes)
/// where a cut to a tail or head left it at the text's start or end.
pub(crate) fn redact(text: &mut String, secrets: &[(String, String)]) {
    for (name, value) in secrets {
        let mark = format!("[redacted:{name}]");
        if text.contains(value.as_str()) {
            *text = text.replace(value.as_str(), &mark);
        }
        // A tail starting inside the value, or a head ending inside it.
        if let Some(len) = (4..value.len()).rev().find(|len| {
            value.is_char_boundary(value.len() - len)
                && text.starts_with(&value[value.len() - len..])
        }) {
            text.replace_range(..len, &mark);
        }
        if let Some(len) = (4..value.len())
            .rev()
            .find(|len| value.is_char_boundary(*len) && text.ends_with(&value[..*len]))
        {
            let at = text.len() - len;
            text.replace_range(at.., &mark);
        }
    }
}

/// `text` with every occurrence of `path` that is a whole path (not the start of a longer
/// name: `/srv/ws` in `/srv/ws2` stays) replaced by `name`.
fn replace_whole_path(text: &str, path: &str, name: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(path) {
        let after = &rest[at + path.len()..];
        let whole = !after
            .chars()
            .next()
            .is_some_and(|next| next.is_alphanumeric() || matches!(next, '_' | '-' | '.' | '~'));
        out.push_str(&rest[..at]);
        out.push_str(if whole { name } else { path });
        rest = after;
    }
    out.push_str(rest);
    out
}

pub(crate) fn scrub_report(report: &mut ApplyReport, workspace: &Workspace) {
    scrub(&mut report.error, workspace);
    if let Some(rollback) = &mut report.rollback {
        scrub(&mut rollback.reason, workspace);
        scrub(&mut rollback.error, workspace);
    }
    for command in &mut report.commands {
        scrub(&mut command.output_head, workspace);
        scrub(&mut command.output_tail, workspace);
    }
    if let Some(agent) = &mut report.agent {
        scrub(&mut agent.final_message, workspace);
        scrub(&mut agent.transcript_tail, workspace);
    }
    // The secrets only (paths in these are the user's own text): command lines, diffs,
    // file lists, diagnostics.
    let secrets = secrets(workspace);
    if secrets.is_empty() {
        return;
    }
    for command in &mut report.commands {
        redact(&mut command.command, &secrets);
    }
    for diagnostic in &mut report.diagnostics {
        redact(&mut diagnostic.path, &secrets);
        redact(&mut diagnostic.message, &secrets);
    }
    redact(&mut report.diff, &secrets);
    if let Some(agent) = &mut report.agent {
        redact(&mut agent.diff, &secrets);
        for file in &mut agent.files {
            redact(file, &secrets);
        }
        bound_agent(agent);
    }
}

/// Keeps the agent's part of a report within [`MAX_AGENT_REPORT_BYTES`] once redaction marks
/// (longer than what they replace) are in: the diff is cut first, then the paths.
fn bound_agent(agent: &mut ghost_core::AgentRun) {
    let size = |agent: &ghost_core::AgentRun| {
        agent.diff.len()
            + agent.files.iter().map(String::len).sum::<usize>()
            + agent.transcript_tail.len()
            + agent.final_message.len()
    };
    let over = size(agent).saturating_sub(MAX_AGENT_REPORT_BYTES);
    if over == 0 {
        return;
    }
    let mut keep = agent.diff.len().saturating_sub(over + 64);
    while !agent.diff.is_char_boundary(keep) {
        keep -= 1;
    }
    agent.diff.truncate(keep);
    agent
        .diff
        .push_str("\n# diff cut: the report's size limit\n");
    agent.diff_truncated = true;
    while size(agent) > MAX_AGENT_REPORT_BYTES && agent.files.len() > 1 {
        agent.files.pop();
    }
}
