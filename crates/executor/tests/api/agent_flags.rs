//! Issue 23, must show: the built-in invocations of the agent CLIs (`executor::agent::CLIS`)
//! are checked against the installed CLIs' own help, so a renamed or removed flag fails here
//! instead of in a user's task. claude-code, codex, gemini and opencode come pinned from the
//! npm registry (`tests/node/package.json`, installed by `scripts/node-env`), aider from PyPI
//! (`./.venv-aider`, made by `scripts/agent-env`). cursor-agent is on no registry: it is not
//! checked.
//!
//! Every flag of the invocation (its `args`, model flag and `tail`) must be listed in the help
//! of the command it is given to (`codex exec --help`, `opencode run --help`), the subcommand
//! in the program's own help, and a flag's word value (`json`, `user`, `workspace-write`)
//! among its listed choices. In CI (`CI` set) a missing CLI fails the test; elsewhere the test
//! says loudly that it skipped.

use std::path::{Path, PathBuf};
use std::process::Command;

use executor::agent::{self, Invocation};

/// `tests/node/node_modules`.
fn node_modules() -> PathBuf {
    ghost_testkit::repo_root().join("tests/node/node_modules")
}

/// The installed program at the first of `candidates` (relative to the repository) that
/// exists, or `None` after a loud message; a missing one fails the test in CI.
fn installed(cli: &str, candidates: &[PathBuf], how: &str) -> Option<PathBuf> {
    if let Some(found) = candidates.iter().find(|path| path.is_file()) {
        return Some(found.clone());
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{cli} is not installed at {candidates:?}: run {how} (scripts/test does)"
    );
    eprintln!(
        "\n*** SKIPPED: {cli} is not installed at {candidates:?}; run {how} to check its flags ***\n"
    );
    None
}

/// The npm platform package folder names for this machine, e.g. `linux-x64` and
/// `linux-x64-musl` (npm installs the one matching the C library).
fn platforms() -> Vec<String> {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "x64",
        "aarch64" => "arm64",
        other => other,
    };
    vec![format!("linux-{arch}"), format!("linux-{arch}-musl")]
}

/// claude-code's native binary. Its package's postinstall would copy it over
/// `.bin/claude`; `scripts/node-env` runs no install scripts, so it is run from its
/// platform package.
fn claude() -> Option<PathBuf> {
    let modules = node_modules();
    let candidates: Vec<PathBuf> = platforms()
        .iter()
        .map(|platform| modules.join(format!("@anthropic-ai/claude-code-{platform}/claude")))
        .collect();
    installed("claude-code", &candidates, "scripts/node-env")
}

/// opencode's native binary, from its platform package (like claude-code's).
fn opencode() -> Option<PathBuf> {
    let modules = node_modules();
    let candidates: Vec<PathBuf> = platforms()
        .iter()
        .map(|platform| modules.join(format!("opencode-{platform}/bin/opencode")))
        .collect();
    installed("opencode", &candidates, "scripts/node-env")
}

/// A CLI whose `.bin` launcher is a node script needing no install script (codex, gemini).
fn npm_bin(cli: &str, program: &str) -> Option<PathBuf> {
    let path = node_modules().join(".bin").join(program);
    installed(cli, &[path], "scripts/node-env")
}

fn aider() -> Option<PathBuf> {
    let path = ghost_testkit::repo_root().join(".venv-aider/bin/aider");
    installed("aider", &[path], "scripts/agent-env")
}

/// The help text of `program args... --help`, run with a private `HOME` (a CLI may create
/// its config folder even for its help) and no colour.
fn help(program: &Path, args: &[&str], home: &Path) -> String {
    let output = Command::new(program)
        .args(args)
        .arg("--help")
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("XDG_DATA_HOME", home.join(".local/share"))
        .env("XDG_CACHE_HOME", home.join(".cache"))
        .env("XDG_STATE_HOME", home.join(".local/state"))
        .env("NO_COLOR", "1")
        .env("TERM", "dumb")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|err| panic!("cannot run {}: {err}", program.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "{} {args:?} --help failed ({}):\n{text}",
        program.display(),
        output.status
    );
    text
}

/// The words of a help text: flags (`-p`, `--print`), subcommands and listed choices.
fn words(help: &str) -> Vec<&str> {
    help.split(|c: char| {
        c.is_whitespace()
            || matches!(
                c,
                ',' | '=' | '[' | ']' | '(' | ')' | '"' | '\'' | '`' | '|'
            )
    })
    .filter(|word| !word.is_empty())
    .collect()
}

/// The flags of `known`'s invocation, each with the word value after it (if any).
fn flags(known: &Invocation) -> Vec<(&'static str, Option<&'static str>)> {
    let all: Vec<&'static str> = known
        .args
        .iter()
        .chain(known.tail)
        .copied()
        .chain([known.model_flag])
        .collect();
    let mut found = Vec::new();
    for (index, arg) in all.iter().enumerate() {
        if !arg.starts_with('-') {
            continue;
        }
        // A value that is a word (a listed choice), not a path, a number or a placeholder.
        let value = all
            .get(index + 1)
            .copied()
            .filter(|next| !next.starts_with('-'))
            .filter(|next| next.chars().all(|c| c.is_ascii_lowercase() || c == '-'));
        found.push((*arg, value));
    }
    found
}

/// Asserts that every flag of the built-in invocation of `cli` is in the installed
/// program's help (the subcommand's help when the invocation starts with one).
fn check(cli: &str, program: &Path) {
    let known = agent::invocation(cli).unwrap_or_else(|| panic!("{cli} is a known cli"));
    let home = tempfile::tempdir().unwrap();
    let subcommand = known.args.first().filter(|first| !first.starts_with('-'));
    let help_text = match subcommand {
        Some(sub) => {
            let top = help(program, &[], home.path());
            assert!(
                words(&top).contains(sub),
                "`{} --help` lists no subcommand {sub:?}:\n{top}",
                known.program
            );
            help(program, &[sub], home.path())
        }
        None => help(program, &[], home.path()),
    };
    let listed = words(&help_text);
    let shown = match subcommand {
        Some(sub) => format!("{} {sub} --help", known.program),
        None => format!("{} --help", known.program),
    };
    for (flag, value) in flags(known) {
        assert!(
            listed.contains(&flag),
            "`{shown}` does not list {flag}, which the built-in {cli} invocation passes:\n{help_text}"
        );
        if let Some(value) = value {
            assert!(
                listed.contains(&value),
                "`{shown}` does not list {value:?} as a value (of {flag}), which the built-in \
                 {cli} invocation passes:\n{help_text}"
            );
        }
    }
}

#[test]
fn every_flag_of_the_built_in_claude_code_invocation_is_in_its_help() {
    let Some(claude) = claude() else { return };
    check("claude-code", &claude);
}

#[test]
fn every_flag_of_the_built_in_codex_invocation_is_in_codex_exec_help() {
    let Some(codex) = npm_bin("codex", "codex") else {
        return;
    };
    check("codex", &codex);
}

#[test]
fn every_flag_of_the_built_in_gemini_invocation_is_in_its_help() {
    let Some(gemini) = npm_bin("gemini", "gemini") else {
        return;
    };
    check("gemini", &gemini);
}

#[test]
fn every_flag_of_the_built_in_opencode_invocation_is_in_opencode_run_help() {
    let Some(opencode) = opencode() else { return };
    check("opencode", &opencode);
}

/// The built-in aider invocation is checked against the installed aider's own `--help`.
#[test]
fn every_flag_of_the_built_in_aider_invocation_is_in_aiders_help() {
    let Some(aider) = aider() else { return };
    check("aider", &aider);
}

/// The checker itself: a flag missing from a help text, or a value missing from its
/// choices, is found.
#[test]
fn a_renamed_flag_or_value_is_not_found_in_a_help_text() {
    let help_text = "Options:\n  -p, --print  Print\n  --output-format <format>  (choices: \"text\", \"json\")\n";
    let listed = words(help_text);
    assert!(listed.contains(&"-p") && listed.contains(&"--print"));
    assert!(listed.contains(&"--output-format") && listed.contains(&"json"));
    assert!(!listed.contains(&"--full-auto"));
    assert!(!listed.contains(&"jsonl"));
    let codex = agent::invocation("codex").unwrap();
    assert!(
        flags(codex).iter().all(|(flag, _)| flag.starts_with('-')),
        "{:?}",
        flags(codex)
    );
}
