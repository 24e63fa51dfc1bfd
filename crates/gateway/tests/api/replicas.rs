//! Two gateway replicas behind one address (issue 25): dashboard sessions and webhook ids
//! live in the router, so a login made through one replica works through the other, a logout
//! on one ends it on both, a webhook id committed through one is answered as a replay by the
//! other (and refused with another body), and a session survives a gateway restart.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};

use crate::helpers::{KEY, Running, TestGateway, config, spawn_gateway, spawn_router, write_patch};
use crate::hostile::deliver;

/// Connections the proxy accepts at most.
const MAX_CONNECTIONS: usize = 1_000;
/// Longest one proxied connection lives.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);

/// A round-robin TCP proxy on loopback: connection n goes to backend n mod len.
struct RoundRobin {
    addr: SocketAddr,
    /// The backend each accepted connection went to, in order.
    picks: Arc<Mutex<Vec<usize>>>,
    acceptor: tokio::task::JoinHandle<()>,
}

impl Drop for RoundRobin {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

impl RoundRobin {
    async fn start(backends: Vec<SocketAddr>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let picks = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&picks);
        let acceptor = tokio::spawn(async move {
            for n in 0..MAX_CONNECTIONS {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let pick = n % backends.len();
                seen.lock().expect("picks").push(pick);
                let backend = backends[pick];
                tokio::spawn(async move {
                    let Ok(Ok(mut outbound)) =
                        tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(backend))
                            .await
                    else {
                        return;
                    };
                    let _ = tokio::time::timeout(
                        CONNECTION_LIFETIME,
                        tokio::io::copy_bidirectional(&mut inbound, &mut outbound),
                    )
                    .await;
                });
            }
        });
        Self {
            addr,
            picks,
            acceptor,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn picks(&self) -> Vec<usize> {
        self.picks.lock().expect("picks").clone()
    }
}

/// A client opening a new connection for every request (so the proxy alternates), keeping
/// the session cookie and not following redirects.
struct Browser {
    http: reqwest::Client,
    base: String,
    cookie: Option<String>,
}

/// Status, `Location` and body of one answer.
struct Page {
    status: u16,
    location: String,
    body: String,
}

fn fresh_connections() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

impl Browser {
    fn new(base: &str) -> Self {
        Self {
            http: fresh_connections(),
            base: base.to_owned(),
            cookie: None,
        }
    }

    async fn page(response: reqwest::Response) -> Page {
        Page {
            status: response.status().as_u16(),
            location: response
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned(),
            body: response.text().await.unwrap_or_default(),
        }
    }

    async fn get(&self, path: &str) -> Page {
        let mut request = self.http.get(format!("{}{path}", self.base));
        if let Some(cookie) = &self.cookie {
            request = request.header("cookie", cookie);
        }
        Self::page(request.send().await.expect("gateway reachable")).await
    }

    async fn post(&self, path: &str, form: &str) -> Page {
        let mut request = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("origin", &self.base)
            .body(form.to_owned());
        if let Some(cookie) = &self.cookie {
            request = request.header("cookie", cookie);
        }
        Self::page(request.send().await.expect("gateway reachable")).await
    }

    async fn login(&mut self, key: &str) -> Page {
        let mut request = self
            .http
            .post(format!("{}/ui/login", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("origin", &self.base)
            .body(format!("key={key}&next=%2Fui"));
        if let Some(cookie) = &self.cookie {
            request = request.header("cookie", cookie);
        }
        let response = request.send().await.expect("gateway reachable");
        let cookie = response
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .filter(|pair| pair.starts_with("ghost_session="))
            .map(str::to_owned);
        self.cookie = cookie;
        Self::page(response).await
    }
}

/// The CSRF token in a page's forms.
fn csrf_of(page: &Page) -> String {
    let marker = "name=\"csrf\" value=\"";
    let start = page.body.find(marker).expect("a form with a csrf token") + marker.len();
    page.body[start..start + 64].to_owned()
}

/// A router and two gateway replicas in front of it, behind one round-robin address: the
/// first gateway with the router (the system builder's), the second beside it.
struct Replicas {
    _first: TestGateway,
    _second: Running,
    proxy: RoundRobin,
}

async fn replicas() -> Replicas {
    let first = TestGateway::start(|_, _| {}).await;
    let second = spawn_gateway(config(first.router().grpc)).await;
    let proxy = RoundRobin::start(vec![first.gateway().http, second.http]).await;
    Replicas {
        _first: first,
        _second: second,
        proxy,
    }
}

#[tokio::test]
async fn a_dashboard_login_works_through_both_replicas_and_a_logout_on_one_ends_it_on_both() {
    let system = replicas().await;
    let mut browser = Browser::new(&system.proxy.url());
    // Replica 0.
    let login = browser.login(KEY).await;
    assert_eq!(login.status, 303, "{}", login.body);
    assert_eq!(login.location, "/ui");
    assert!(browser.cookie.is_some(), "no session cookie");
    // Replica 1, then 0: the pages load through both.
    let overview = browser.get("/ui").await;
    assert_eq!(
        overview.status, 200,
        "the other replica does not know the session: {} {}",
        overview.location, overview.body
    );
    let csrf = csrf_of(&overview);
    let list = browser.get("/ui/patches").await;
    assert_eq!(list.status, 200, "{} {}", list.location, list.body);
    // Replica 1 (not the one that started the session): a CSRF-protected action works; on
    // replica 0 a wrong token is refused.
    let paused = browser
        .post("/ui/targets/CYOPS/pause", &format!("csrf={csrf}"))
        .await;
    assert_eq!(paused.status, 303, "{}", paused.body);
    let forged = browser.post("/ui/targets/CYOPS/pause", "csrf=0000").await;
    assert_eq!(forged.status, 403, "{}", forged.body);
    // Replica 1 shows the pause.
    let overview = browser.get("/ui").await;
    assert!(
        overview.body.contains("/ui/targets/CYOPS/resume"),
        "paused target offers resume"
    );
    // Logout on replica 0 ends the session on both.
    let logout = browser.post("/ui/logout", &format!("csrf={csrf}")).await;
    assert_eq!(logout.status, 303, "{}", logout.body);
    for _ in 0..2 {
        let after = browser.get("/ui").await;
        assert_eq!(after.status, 303, "the session outlived its logout");
        assert!(
            after.location.starts_with("/ui/login"),
            "{}",
            after.location
        );
    }
    // Every request went to the next replica in turn.
    let picks = system.proxy.picks();
    assert_eq!(picks.len(), 9, "{picks:?}");
    assert!(
        picks.iter().enumerate().all(|(n, pick)| *pick == n % 2),
        "{picks:?}"
    );
}

#[tokio::test]
async fn a_webhook_replayed_to_the_other_replica_is_answered_once_and_another_body_refused() {
    let system = replicas().await;
    let http = fresh_connections();
    let base = system.proxy.url();
    // Replica 0 delivers it.
    let first = deliver(&http, &base, "msg_replicas", &write_patch("wh-replicas")).await;
    assert_eq!(first.0, 202, "{}", first.1);
    assert_eq!(first.1["replayed"], false, "{}", first.1);
    // Replica 1 answers the committed answer again: not run again (a second run would say
    // "replayed": true from the router's idempotency).
    let again = deliver(&http, &base, "msg_replicas", &write_patch("wh-replicas")).await;
    assert_eq!(again, first, "the other replica ran the delivery again");
    // The same id with another body is refused on either replica.
    for _ in 0..2 {
        let reused = deliver(&http, &base, "msg_replicas", &write_patch("wh-other")).await;
        assert_eq!(reused.0, 409, "{}", reused.1);
    }
    // One patch only.
    let listed: Value = http
        .get(format!("{base}/v1/patches?page_size=500"))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("gateway reachable")
        .json()
        .await
        .expect("json");
    let ids: Vec<&str> = listed["patches"]
        .as_array()
        .expect("patches")
        .iter()
        .filter_map(|patch| patch["id"].as_str())
        .collect();
    assert_eq!(ids, ["wh-replicas"]);
    assert_eq!(system.proxy.picks(), [0, 1, 0, 1, 0]);
}

#[tokio::test]
async fn a_dashboard_session_survives_a_gateway_restart() {
    let scratch = tempfile::tempdir().expect("scratch");
    let router = spawn_router(&scratch.path().join("router")).await;
    let before = spawn_gateway(config(router.grpc)).await;
    let mut browser = Browser::new(&format!("http://{}", before.http));
    assert_eq!(browser.login(KEY).await.status, 303);
    assert_eq!(browser.get("/ui").await.status, 200);
    before.stop().await;
    let after = spawn_gateway(config(router.grpc)).await;
    browser.base = format!("http://{}", after.http);
    let page = browser.get("/ui").await;
    assert_eq!(
        page.status, 200,
        "the session ended with the gateway: {}",
        page.location
    );
    assert!(page.body.contains("Log out") || page.body.contains("logout"));
}
