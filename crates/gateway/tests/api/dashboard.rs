//! The dashboard over plain HTTP against a whole system: login and sessions, redirects
//! without one, CSRF and Origin checks on actions, escaping, security headers, the report on
//! the detail page and the charts.

use std::time::Duration;

use ghost_testkit::wait_for;
use serde_json::{Value, json};

use crate::system::{ADMIN_KEY, READ_KEY, System};

/// A cookie-keeping client that does not follow redirects.
pub struct Client {
    http: reqwest::Client,
    base: String,
    cookie: Option<String>,
}

/// Status, headers and body of one answer.
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

impl Client {
    pub fn new(base: &str) -> Self {
        Self {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            base: base.to_owned(),
            cookie: None,
        }
    }

    async fn answer(response: reqwest::Response) -> Answer {
        Answer {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            body: response.text().await.unwrap_or_default(),
        }
    }

    pub async fn get(&self, path: &str) -> Answer {
        let mut request = self.http.get(format!("{}{path}", self.base));
        if let Some(cookie) = &self.cookie {
            request = request.header("cookie", cookie);
        }
        Self::answer(request.send().await.expect("gateway reachable")).await
    }

    /// POSTs a form with `origin` (None: no Origin header).
    pub async fn post(&self, path: &str, fields: &[(&str, &str)], origin: Option<&str>) -> Answer {
        let mut request = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(
                fields
                    .iter()
                    .map(|(k, v)| format!("{k}={}", form_encode(v)))
                    .collect::<Vec<_>>()
                    .join("&"),
            );
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        if let Some(cookie) = &self.cookie {
            request = request.header("cookie", cookie);
        }
        Self::answer(request.send().await.expect("gateway reachable")).await
    }

    /// Logs in with `key`; keeps the session cookie.
    pub async fn login(&mut self, key: &str) -> Answer {
        let origin = self.base.clone();
        let answer = self
            .post("/ui/login", &[("key", key), ("next", "/ui")], Some(&origin))
            .await;
        let set_cookie = answer.header("set-cookie").to_owned();
        if let Some(pair) = set_cookie.split(';').next()
            && pair.starts_with("ghost_session=")
        {
            self.cookie = Some(pair.to_owned());
        }
        answer
    }

    /// The CSRF token of the page at `path`.
    pub async fn csrf(&self, path: &str) -> String {
        let page = self.get(path).await;
        let marker = "name=\"csrf\" value=\"";
        let start = page.body.find(marker).expect("a form with a csrf token") + marker.len();
        page.body[start..start + 64].to_owned()
    }
}

fn form_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `POST /v1/patches` with the admin key.
pub async fn submit(system: &System, patch: &Value) -> Value {
    let response = reqwest::Client::new()
        .post(format!("{}/v1/patches", system.url()))
        .bearer_auth(ADMIN_KEY)
        .json(patch)
        .send()
        .await
        .expect("gateway reachable");
    assert_eq!(response.status().as_u16(), 202);
    response.json().await.expect("json")
}

/// `GET /v1/patches/{id}` once it has ended and has its summary.
pub async fn finished(system: &System, id: &str) -> Value {
    wait_for(&format!("patch {id} to end with a summary"), async || {
        let body: Value = reqwest::Client::new()
            .get(format!("{}/v1/patches/{id}", system.url()))
            .bearer_auth(READ_KEY)
            .send()
            .await
            .expect("gateway reachable")
            .json()
            .await
            .expect("json");
        let ended = !matches!(
            body["status"].as_str(),
            Some("received" | "queued" | "leased" | "applying" | "validating") | None
        );
        if ended && !body["summary"].is_null() {
            Ok(body)
        } else {
            Err(body)
        }
    })
    .await
}

#[tokio::test]
async fn without_a_session_pages_redirect_to_login_and_the_json_api_answers_401() {
    let system = System::start(false, |_| {}).await;
    let client = Client::new(&system.url());
    for path in [
        "/ui",
        "/ui/patches?target=MAIN",
        "/ui/patches/x",
        "/ui/alerts",
    ] {
        let answer = client.get(path).await;
        assert_eq!(answer.status, 303, "{path}");
        assert!(
            answer
                .header("location")
                .starts_with("/ui/login?next=%2Fui"),
            "{path}: {}",
            answer.header("location")
        );
    }
    let answer = client
        .post("/ui/patches/x/cancel", &[], Some(&system.url()))
        .await;
    assert_eq!(answer.status, 303);
    let login = client.get("/ui/login?next=%2Fui%2Falerts").await;
    assert_eq!(login.status, 200);
    assert!(login.body.contains("value=\"/ui/alerts\""));
    assert!(
        login
            .header("content-security-policy")
            .contains("frame-ancestors 'none'")
    );
    assert_eq!(login.header("x-content-type-options"), "nosniff");

    // A dashboard cookie is no credential for the JSON API.
    let mut logged_in = Client::new(&system.url());
    assert_eq!(logged_in.login(READ_KEY).await.status, 303);
    for path in ["/v1/patches", "/v1/targets", "/v1/executors", "/v1/alerts"] {
        let answer = logged_in.get(path).await;
        assert_eq!(answer.status, 401, "{path}");
        assert_eq!(answer.header("content-type"), "application/problem+json");
    }
}

#[tokio::test]
async fn login_sets_a_strict_http_only_session_cookie_and_logout_ends_it() {
    let system = System::start(false, |_| {}).await;
    let mut client = Client::new(&system.url());
    let refused = client.login("not-a-key").await;
    assert_eq!(refused.status, 401);
    assert!(refused.body.contains("unknown API key"));
    assert!(client.cookie.is_none());

    let foreign = client
        .post(
            "/ui/login",
            &[("key", READ_KEY)],
            Some("http://evil.example"),
        )
        .await;
    assert_eq!(foreign.status, 403, "cross-site login");

    let answer = client.login(READ_KEY).await;
    assert_eq!(answer.status, 303);
    assert_eq!(answer.header("location"), "/ui");
    let cookie = answer.header("set-cookie");
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("SameSite=Strict"), "{cookie}");
    assert!(cookie.contains("Path=/ui"), "{cookie}");
    assert!(
        !cookie.contains(READ_KEY),
        "the key never goes into the cookie"
    );
    let id = client.cookie.clone().expect("cookie kept");
    assert_eq!(id.len(), "ghost_session=".len() + 64);

    let overview = client.get("/ui").await;
    assert_eq!(overview.status, 200);
    assert!(overview.body.contains("<h1>Overview</h1>"));
    assert!(
        overview
            .header("content-security-policy")
            .contains("script-src 'self'")
    );
    assert_eq!(overview.header("x-frame-options"), "DENY");

    let csrf = client.csrf("/ui").await;
    let wrong = client
        .post("/ui/logout", &[("csrf", "nope")], Some(&system.url()))
        .await;
    assert_eq!(wrong.status, 403);
    let out = client
        .post("/ui/logout", &[("csrf", &csrf)], Some(&system.url()))
        .await;
    assert_eq!(out.status, 303);
    assert!(out.header("set-cookie").contains("Max-Age=0"));
    let after = client.get("/ui").await;
    assert_eq!(after.status, 303, "the old session id no longer works");
}

#[tokio::test]
async fn actions_need_admin_a_csrf_token_and_a_same_origin_request() {
    let system = System::start(false, |_| {}).await;
    submit(
        &system,
        &json!({"id": "queued-one", "target": "CYOPS", "edits": [{"op": "write", "path": "a", "contents": "x"}]}),
    )
    .await;
    let origin = system.url();

    let mut reader = Client::new(&system.url());
    reader.login(READ_KEY).await;
    let page = reader.get("/ui/patches/queued-one").await;
    assert_eq!(page.status, 200);
    assert!(
        !page.body.contains("Cancel patch"),
        "readers get no action buttons"
    );
    let csrf = reader.csrf("/ui").await;
    let answer = reader
        .post(
            "/ui/patches/queued-one/cancel",
            &[("csrf", &csrf)],
            Some(&origin),
        )
        .await;
    assert_eq!(answer.status, 403, "read scope may not cancel");

    let mut admin = Client::new(&system.url());
    admin.login(ADMIN_KEY).await;
    let csrf = admin.csrf("/ui/patches/queued-one").await;
    let answer = admin
        .post("/ui/patches/queued-one/cancel", &[], Some(&origin))
        .await;
    assert_eq!(answer.status, 403, "no CSRF token");
    let answer = admin
        .post(
            "/ui/patches/queued-one/cancel",
            &[("csrf", &csrf)],
            Some("http://evil.example"),
        )
        .await;
    assert_eq!(answer.status, 403, "foreign Origin");
    let answer = admin
        .post("/ui/patches/queued-one/cancel", &[("csrf", &csrf)], None)
        .await;
    assert_eq!(answer.status, 403, "neither Origin nor Referer");
    let still = admin.get("/ui/patches/queued-one").await;
    assert!(
        still.body.contains("data-status=\"queued\""),
        "nothing happened yet"
    );

    let answer = admin
        .post(
            "/ui/patches/queued-one/cancel",
            &[("csrf", &csrf)],
            Some(&origin),
        )
        .await;
    assert_eq!(answer.status, 303, "{}", answer.body);
    assert_eq!(answer.header("location"), "/ui/patches/queued-one");
    let done = admin.get("/ui/patches/queued-one").await;
    assert!(
        done.body.contains("data-status=\"cancelled\""),
        "{}",
        done.body
    );

    let answer = admin
        .post("/ui/targets/CYOPS/pause", &[("csrf", &csrf)], Some(&origin))
        .await;
    assert_eq!(answer.status, 303);
    let overview = admin.get("/ui").await;
    assert!(
        overview.body.contains("/ui/targets/CYOPS/resume"),
        "paused target offers resume"
    );
    let answer = admin
        .post(
            "/ui/targets/CYOPS/resume",
            &[("csrf", &csrf)],
            Some(&origin),
        )
        .await;
    assert_eq!(answer.status, 303);
    let answer = admin
        .post(
            "/ui/patches/queued-one/explode",
            &[("csrf", &csrf)],
            Some(&origin),
        )
        .await;
    assert_eq!(answer.status, 404);
}

#[tokio::test]
async fn user_controlled_text_is_escaped_everywhere() {
    let system = System::start(false, |_| {}).await;
    let evil = "<script>alert('x')</script><img src=x onerror=alert(1)>";
    submit(
        &system,
        &json!({"id": "evil-(1)", "target": "CYOPS", "description": evil,
                "edits": [{"op": "write", "path": "a", "contents": "x"}]}),
    )
    .await;
    let mut client = Client::new(&system.url());
    client.login(READ_KEY).await;
    for path in [
        "/ui/patches",
        "/ui/patches/evil-(1)",
        "/ui/patches?q=%3Cscript%3E",
        "/ui",
    ] {
        let page = client.get(path).await;
        assert_eq!(page.status, 200, "{path}");
        assert!(!page.body.contains("<script>alert"), "{path}");
        assert!(!page.body.contains("<img src=x"), "{path}");
    }
    let detail = client.get("/ui/patches/evil-(1)").await;
    assert!(
        detail
            .body
            .contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;")
    );
    let search = client.get("/ui/patches?q=%3Cscript%3E").await;
    assert!(
        search.body.contains("data-id=\"evil-(1)\""),
        "text search finds it"
    );
    assert!(search.body.contains("value=\"&lt;script&gt;\""));
    let missing = client.get("/ui/patches/%3Cb%3Enope").await;
    assert_eq!(missing.status, 404);
    assert!(!missing.body.contains("<b>nope"));
    let bad = client.get("/ui/patches?status=%3Cb%3E").await;
    assert_eq!(bad.status, 400);
    assert!(!bad.body.contains("<b>"));
}

#[tokio::test]
async fn the_detail_page_shows_the_report_with_command_output_and_the_overview_charts_it() {
    let system = System::start(true, |_| {}).await;
    submit(
        &system,
        &json!({"id": "with-output", "target": "MAIN", "description": "prints",
                "edits": [{"op": "write", "path": "hello.txt", "contents": "hi\n"}],
                "commands": ["echo hello-from-command"]}),
    )
    .await;
    let body = finished(&system, "with-output").await;
    assert_eq!(body["status"], "succeeded", "{body}");
    let report = &body["report"];
    assert_eq!(report["status"], "succeeded");
    assert_eq!(report["edits"][0]["op"], "write");
    assert_eq!(report["edits"][0]["path"], "hello.txt");
    assert_eq!(report["commands"][0]["command"], "echo hello-from-command");
    assert_eq!(report["commands"][0]["exit_code"], 0);
    assert!(
        report["commands"][0]["output_tail"]
            .as_str()
            .unwrap()
            .contains("hello-from-command")
    );
    assert!(
        report["stages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["stage"] == "write")
    );
    assert!(report["rollback"].is_null());

    let mut client = Client::new(&system.url());
    client.login(READ_KEY).await;
    let page = client.get("/ui/patches/with-output").await;
    assert!(page.body.contains("hello-from-command"));
    assert!(page.body.contains("<code>hello.txt</code>"));
    assert!(page.body.contains("<ol class=\"timeline\">"));
    assert!(page.body.contains("queued"));
    let trace = body["trace_id"].as_str().unwrap();
    if !trace.is_empty() {
        assert!(
            page.body
                .contains(&format!("http://jaeger.invalid:16686/trace/{trace}"))
        );
    }
    assert!(page.body.contains("class=\"summary\""), "summary shown");

    let overview = client.get("/ui").await;
    assert!(overview.body.contains("data-target=\"MAIN\""));
    assert!(
        overview.body.contains("dashboard-executor"),
        "executor listed"
    );
    assert!(
        overview.body.contains("1 succeeded"),
        "hour bar for the patch"
    );
    assert!(overview.body.contains("Stage latency"));
    assert!(overview.body.contains("write p50"));
}

/// Issue 23: an agent patch's report, in `GET /v1/patches/{id}` and on the detail page: the
/// agent's cli, exit status, duration, tokens and cost, final message, diff, files and
/// transcript tail, and the sandbox it ran in.
#[tokio::test]
async fn the_detail_page_and_the_report_show_the_agent_run_and_its_sandbox() {
    // A scripted agent: it edits the workspace and prints a result object in Claude Code's
    // JSON shape, which the executor reads for the final message, tokens and cost.
    let scripts = tempfile::tempdir().unwrap();
    let script = scripts.path().join("agent.sh");
    std::fs::write(
        &script,
        "printf 'from the agent\\n' > made-by-agent.txt\necho working on it\n\
         echo '{\"type\":\"result\",\"result\":\"Made made-by-agent.txt <ok>.\",\
         \"total_cost_usd\":0.0123,\"usage\":{\"input_tokens\":1200,\"output_tokens\":40}}'\n",
    )
    .unwrap();
    let policy = executor::config::TargetPolicy {
        commands: executor::config::CommandPolicy::Any,
        agent: Some(executor::AgentConfig {
            cli: Some("command".to_owned()),
            command: Some(format!("sh {}", script.display())),
            timeout: Duration::from_secs(30),
            ..Default::default()
        }),
        ..Default::default()
    };
    let system = System::start_with(Some(policy), |_| {}).await;
    submit(
        &system,
        &json!({"id": "agent-run", "target": "MAIN", "description": "ask the agent",
                "agent": {"task": "Make made-by-agent.txt."},
                "validate": ["grep -q agent made-by-agent.txt"]}),
    )
    .await;
    let body = finished(&system, "agent-run").await;
    assert_eq!(body["status"], "succeeded", "{body}");
    let report = &body["report"];
    let agent = &report["agent"];
    assert_eq!(agent["cli"], "command", "{report}");
    assert_eq!(agent["exit_code"], 0);
    assert!(agent["duration_ms"].is_u64());
    assert_eq!(agent["final_message"], "Made made-by-agent.txt <ok>.");
    assert_eq!(agent["input_tokens"], 1200);
    assert_eq!(agent["output_tokens"], 40);
    assert_eq!(agent["cost_usd"], "0.0123");
    assert_eq!(agent["files"], json!(["made-by-agent.txt"]));
    assert!(
        agent["diff"].as_str().unwrap().contains("+from the agent"),
        "{agent}"
    );
    assert_eq!(agent["diff_truncated"], false);
    assert!(
        agent["transcript_tail"]
            .as_str()
            .unwrap()
            .contains("working on it")
    );
    let sandbox = report["sandbox"].as_str().unwrap().to_owned();
    assert!(
        ["landlock", "landlock-partial", "none"].contains(&sandbox.as_str()),
        "{report}"
    );

    let mut client = Client::new(&system.url());
    client.login(READ_KEY).await;
    let page = client.get("/ui/patches/agent-run").await.body;
    let section = page
        .split_once("<section class=\"agent\">")
        .map(|(_, rest)| rest)
        .unwrap_or_else(|| panic!("no agent section: {page}"));
    for shown in [
        "<code>command</code>",
        "exit 0",
        "1200 in · 40 out",
        "$0.0123",
        "Made made-by-agent.txt &lt;ok&gt;.",
        "<li><code>made-by-agent.txt</code></li>",
        "+from the agent",
        "working on it",
    ] {
        assert!(section.contains(shown), "{shown:?} not in {section}");
    }
    assert!(
        page.contains(&format!("data-sandbox=\"{sandbox}\"")),
        "sandbox {sandbox} not shown: {page}"
    );
    let explained = if sandbox == "none" {
        "Not confined"
    } else {
        "Landlock applied"
    };
    assert!(page.contains(explained), "{page}");
}
