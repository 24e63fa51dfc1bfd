//! Must-show 1: the OpenAPI document passes openapi-spec-validator and schemathesis (all checks)
//! against a running gateway with a real router; plus the GPT Action rules.

use crate::helpers::{KEY, TestGateway};

#[tokio::test]
async fn the_document_is_fit_for_a_gpt_action() {
    let gateway = TestGateway::start(|config, _| {
        config.public_url = "https://ghost.example.com".to_owned();
    })
    .await;
    let doc: serde_json::Value = reqwest::get(format!("{}/openapi.json", gateway.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["servers"][0]["url"], "https://ghost.example.com");
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            operations += 1;
            assert!(
                op["operationId"].is_string(),
                "{method} {path}: no operationId"
            );
            let description = op["description"].as_str().unwrap_or("");
            assert!(
                description.chars().count() <= 300,
                "{method} {path}: description too long"
            );
            assert_eq!(
                op["x-openai-isConsequential"],
                method == "post",
                "{method} {path}"
            );
        }
    }
    assert_eq!(operations, 12);
}

const VALIDATE: &str = r#"
import sys, json, urllib.request
from openapi_spec_validator import validate
validate(json.load(urllib.request.urlopen(sys.argv[1])))
print("valid")
"#;

#[tokio::test]
async fn openapi_spec_validator_and_schemathesis_find_no_failure() {
    // A whole read side: GET /v1/alerts needs the alerter (without one it is a 503 by design).
    let (alerter, _lifecycle) = crate::helpers::spawn_alerter().await;
    let gateway = TestGateway::start(|config, _| {
        config.rate_limit.per_minute = 100_000;
        config.rate_limit.burst = 10_000;
        config.alerter_url = Some(format!("http://{}", alerter.grpc));
    })
    .await;
    let url = format!("{}/openapi.json", gateway.url());
    let (ok, stdout, stderr) = crate::helpers::python(VALIDATE, &[&url]).await;
    assert!(
        ok && stdout.contains("valid"),
        "openapi-spec-validator: {stderr}"
    );
    let schemathesis = ghost_testkit::repo_root().join(".venv/bin/schemathesis");
    let output = tokio::process::Command::new(schemathesis)
        .args([
            "run",
            &url,
            "--checks",
            "all",
            "--header",
            &format!("Authorization: Bearer {KEY}"),
            "--max-examples",
            "12",
            "--seed",
            "1",
            "--no-color",
        ])
        .env("SCHEMATHESIS_HOOKS", "")
        .current_dir(gateway.scratch.path())
        .output()
        .await
        .expect("schemathesis runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found failures:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
