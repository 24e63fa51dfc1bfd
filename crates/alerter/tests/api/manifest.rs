//! `deploy/slack-app-manifest.yaml` declares what the alerter serves: the commands (each one a
//! verb we know), the interactivity URL and the bot scopes delivery needs.

use serde_norway::Value;

#[test]
fn the_slack_app_manifest_matches_the_routes_and_verbs() {
    let path = ghost_testkit::repo_root().join("deploy/slack-app-manifest.yaml");
    let text = std::fs::read_to_string(&path).expect("manifest exists");
    let manifest: Value = serde_norway::from_str(&text).expect("manifest is yaml");
    let commands = manifest["features"]["slash_commands"]
        .as_sequence()
        .expect("slash commands");
    let names: Vec<&str> = commands
        .iter()
        .map(|c| c["command"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "/ghost",
            "/status-runner",
            "/patch-status",
            "/status-queue",
            "/daemon-status",
            "/patch-revert"
        ]
    );
    for command in commands {
        let url = command["url"].as_str().unwrap();
        assert!(
            url.starts_with("https://") && url.ends_with("/slack/commands"),
            "{url}"
        );
        let name = command["command"].as_str().unwrap();
        let (verb, _) = alerter::commands::resolve(name, "");
        let verb = verb.unwrap_or_else(|unknown| panic!("{name}: {unknown}"));
        let help = alerter::commands::HELP;
        assert!(
            help.contains(&format!("`{verb}")),
            "{name} → {verb} is not in the help"
        );
    }
    let interactivity = &manifest["settings"]["interactivity"];
    assert_eq!(interactivity["is_enabled"].as_bool(), Some(true));
    assert!(
        interactivity["request_url"]
            .as_str()
            .unwrap()
            .ends_with("/slack/interactions")
    );
    let scopes: Vec<&str> = manifest["oauth_config"]["scopes"]["bot"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    for needed in ["chat:write", "commands"] {
        assert!(scopes.contains(&needed), "{needed} missing from {scopes:?}");
    }
}
