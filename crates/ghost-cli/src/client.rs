//! The gateway's REST API as `ghost` uses it: one method per route, answers kept as the
//! gateway's own JSON (so `--json` prints exactly what the API said), refusals decoded from
//! their RFC 9457 problem documents.

use std::time::Duration;

use reqwest::{Method, Url};
use serde_json::Value;

/// Why a call to the gateway failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The base URL is not a usable http(s) URL.
    #[error("invalid gateway URL {url:?}: {reason}")]
    BadUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The gateway could not be reached (refused, timed out, DNS).
    #[error("cannot reach the gateway at {url}: {reason}")]
    Unreachable {
        /// The gateway's base URL.
        url: String,
        /// The transport error, with its causes.
        reason: String,
    },
    /// The gateway answered with an error status.
    #[error("{}", .0.one_line())]
    Refused(Box<Problem>),
    /// The gateway answered success with a body that is not JSON.
    #[error("unexpected answer from {url}: {reason}")]
    Malformed {
        /// The request URL.
        url: String,
        /// Why it could not be read.
        reason: String,
    },
}

/// An error answer from the gateway, decoded from its problem document where it sent one.
#[derive(Debug, Clone)]
pub struct Problem {
    /// HTTP status.
    pub status: u16,
    /// Request method and path, e.g. `GET /v1/executors`.
    pub request: String,
    /// The problem's title (or the HTTP reason phrase).
    pub title: String,
    /// What is wrong, as the gateway said it (empty when it sent no problem document).
    pub detail: String,
    /// JSON pointer of the offending field.
    pub pointer: Option<String>,
    /// Line and column of a syntax error.
    pub position: Option<(u64, u64)>,
    /// `Retry-After`, seconds.
    pub retry_after: Option<u64>,
    /// True when the body was an RFC 9457 problem document.
    pub is_problem_document: bool,
    /// The whole body as JSON (null when it was not JSON).
    pub body: Value,
}

impl Problem {
    /// One line: status, title, detail, and where in the input.
    pub fn one_line(&self) -> String {
        let mut line = format!("{} {}", self.status, self.title);
        if !self.detail.is_empty() {
            line.push_str(": ");
            line.push_str(&self.detail);
        }
        if let Some(pointer) = &self.pointer {
            let shown = if pointer.is_empty() { "/" } else { pointer };
            line.push_str(&format!(" (at {shown})"));
        }
        if let Some((row, column)) = self.position {
            line.push_str(&format!(" (line {row}, column {column})"));
        }
        if !self.is_problem_document {
            line.push_str(&format!(" [{}]", self.request));
        }
        line
    }
}

/// Filters and paging of `GET /v1/patches`.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// Only this target.
    pub target: Option<String>,
    /// Only this status.
    pub status: Option<String>,
    /// Page size, 1 to 500.
    pub page_size: Option<u32>,
    /// `next_page_token` of the previous page.
    pub page_token: Option<String>,
}

/// The gateway at one base URL, with an optional API key.
#[derive(Clone)]
pub struct GatewayClient {
    base: Url,
    api_key: Option<String>,
    http: reqwest::Client,
}

impl GatewayClient {
    /// A client of the gateway at `base_url` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base_url: &str, api_key: Option<&str>) -> Result<Self, ClientError> {
        let bad_url = |reason: String| ClientError::BadUrl {
            url: base_url.to_owned(),
            reason,
        };
        let mut base = Url::parse(base_url).map_err(|err| bad_url(err.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(bad_url("expected http:// or https://".to_owned()));
        }
        // Keep any path prefix (a gateway behind a proxy) and make it a directory.
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|err| bad_url(err.to_string()))?;
        Ok(Self {
            base,
            api_key: api_key.filter(|k| !k.is_empty()).map(str::to_owned),
            http,
        })
    }

    /// The base URL, as shown in hints.
    pub fn base_url(&self) -> &str {
        self.base.as_str().trim_end_matches('/')
    }

    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty();
            // Each segment is percent-encoded: an id like `../x` stays one segment.
            path.extend(segments);
        }
        url
    }

    async fn call(
        &self,
        method: Method,
        url: Url,
        body: Option<(Vec<u8>, &str)>,
    ) -> Result<Value, ClientError> {
        self.call_within(method, url, body, None).await
    }

    /// [`Self::call`] with its own deadline instead of the client's 30 s (a long poll).
    async fn call_within(
        &self,
        method: Method,
        url: Url,
        body: Option<(Vec<u8>, &str)>,
        timeout: Option<Duration>,
    ) -> Result<Value, ClientError> {
        let request_line = format!("{method} {}", url.path());
        let mut request = self.http.request(method, url.clone());
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        if let Some((bytes, content_type)) = body {
            request = request.header("content-type", content_type).body(bytes);
        }
        let response = request
            .send()
            .await
            .map_err(|err| ClientError::Unreachable {
                url: self.base_url().to_owned(),
                reason: root_cause(&err),
            })?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        let bytes = response
            .bytes()
            .await
            .map_err(|err| ClientError::Unreachable {
                url: self.base_url().to_owned(),
                reason: root_cause(&err),
            })?;
        let parsed: Result<Value, _> = serde_json::from_slice(&bytes);
        if status.is_success() {
            return parsed.map_err(|err| ClientError::Malformed {
                url: url.to_string(),
                reason: format!("not JSON: {err}"),
            });
        }
        let body = parsed.unwrap_or(Value::Null);
        let is_problem_document = body["status"].is_u64() && body["title"].is_string();
        let text = |key: &str| body[key].as_str().map(str::to_owned);
        Err(ClientError::Refused(Box::new(Problem {
            status: status.as_u16(),
            request: request_line,
            title: text("title")
                .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_owned()),
            detail: text("detail").unwrap_or_default(),
            pointer: text("pointer"),
            position: body["line"].as_u64().zip(body["column"].as_u64()),
            retry_after,
            is_problem_document,
            body,
        })))
    }

    async fn get(&self, segments: &[&str]) -> Result<Value, ClientError> {
        self.call(Method::GET, self.url(segments), None).await
    }

    async fn post(&self, segments: &[&str]) -> Result<Value, ClientError> {
        self.call(Method::POST, self.url(segments), None).await
    }

    /// `POST /v1/patches` with a JSON or YAML body (`content_type` says which).
    pub async fn submit(&self, body: Vec<u8>, content_type: &str) -> Result<Value, ClientError> {
        let url = self.url(&["v1", "patches"]);
        self.call(Method::POST, url, Some((body, content_type)))
            .await
    }

    /// `GET /v1/patches/{id}`: state, summary and (once run) the apply report.
    pub async fn patch(&self, id: &str) -> Result<Value, ClientError> {
        self.get(&["v1", "patches", id]).await
    }

    /// `GET /v1/patches/{id}?wait=`: the patch as soon as it has ended, or its state when
    /// `wait` (at most 60 s) is over.
    pub async fn patch_wait(&self, id: &str, wait: Duration) -> Result<Value, ClientError> {
        let wait = wait.min(Duration::from_secs(60));
        let mut url = self.url(&["v1", "patches", id]);
        url.set_query(Some(&format!("wait={}ms", wait.as_millis())));
        self.call_within(Method::GET, url, None, Some(wait + Duration::from_secs(15)))
            .await
    }

    /// `POST /v1/patches?dry_run=true`: what the patch would do; nothing is stored.
    pub async fn dry_run(&self, body: Vec<u8>, content_type: &str) -> Result<Value, ClientError> {
        let mut url = self.url(&["v1", "patches"]);
        url.set_query(Some("dry_run=true"));
        // The router waits up to 30 s for the executor's answer.
        self.call_within(
            Method::POST,
            url,
            Some((body, content_type)),
            Some(Duration::from_secs(45)),
        )
        .await
    }

    /// `GET /v1/patches/{id}/events`: the audit trail, oldest first.
    pub async fn events(&self, id: &str) -> Result<Value, ClientError> {
        self.get(&["v1", "patches", id, "events"]).await
    }

    /// `GET /v1/patches`: one page, newest first.
    pub async fn list(&self, query: &ListQuery) -> Result<Value, ClientError> {
        let mut url = self.url(&["v1", "patches"]);
        {
            let mut pairs = url.query_pairs_mut();
            if let Some(target) = &query.target {
                pairs.append_pair("target", target);
            }
            if let Some(status) = &query.status {
                pairs.append_pair("status", status);
            }
            if let Some(size) = query.page_size {
                pairs.append_pair("page_size", &size.to_string());
            }
            if let Some(token) = &query.page_token {
                pairs.append_pair("page_token", token);
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        self.call(Method::GET, url, None).await
    }

    /// `POST /v1/patches/{id}/cancel`.
    pub async fn cancel(&self, id: &str) -> Result<Value, ClientError> {
        self.post(&["v1", "patches", id, "cancel"]).await
    }

    /// `POST /v1/patches/{id}/retry`.
    pub async fn retry(&self, id: &str) -> Result<Value, ClientError> {
        self.post(&["v1", "patches", id, "retry"]).await
    }

    /// `POST /v1/patches/{id}/revert` (body `{}`): queues `revert-<id>`, which restores what
    /// the succeeded patch `id` changed; answers the revert patch's view (`replayed` when it was
    /// asked for before). A 409 carrying `conflicts` names the files changed since.
    pub async fn revert(&self, id: &str) -> Result<Value, ClientError> {
        let url = self.url(&["v1", "patches", id, "revert"]);
        // The router asks the target's executor first (up to 30 s).
        self.call_within(
            Method::POST,
            url,
            Some((b"{}".to_vec(), "application/json")),
            Some(Duration::from_secs(45)),
        )
        .await
    }

    /// `GET /v1/targets`: every target's queue.
    pub async fn targets(&self) -> Result<Value, ClientError> {
        self.get(&["v1", "targets"]).await
    }

    /// `POST /v1/targets/{target}/pause`.
    pub async fn pause(&self, target: &str) -> Result<Value, ClientError> {
        self.post(&["v1", "targets", target, "pause"]).await
    }

    /// `POST /v1/targets/{target}/resume`.
    pub async fn resume(&self, target: &str) -> Result<Value, ClientError> {
        self.post(&["v1", "targets", target, "resume"]).await
    }

    /// `GET /v1/executors`: connected executors.
    pub async fn executors(&self) -> Result<Value, ClientError> {
        self.get(&["v1", "executors"]).await
    }

    /// `POST /v1/executor-tokens`: issues a token for `targets` (admin scope); the answer
    /// carries the token, shown only this once.
    pub async fn create_executor_token(
        &self,
        name: &str,
        targets: &[String],
    ) -> Result<Value, ClientError> {
        let body = serde_json::json!({"name": name, "targets": targets}).to_string();
        let url = self.url(&["v1", "executor-tokens"]);
        self.call(
            Method::POST,
            url,
            Some((body.into_bytes(), "application/json")),
        )
        .await
    }

    /// `GET /v1/executor-tokens`: every token, without secrets (admin scope).
    pub async fn executor_tokens(&self) -> Result<Value, ClientError> {
        self.get(&["v1", "executor-tokens"]).await
    }

    /// `POST /v1/keys`: creates an API key with `scopes` (admin scope); the answer carries the
    /// key, shown only this once.
    pub async fn create_api_key(
        &self,
        name: &str,
        scopes: &[String],
    ) -> Result<Value, ClientError> {
        let body = serde_json::json!({"name": name, "scopes": scopes}).to_string();
        let url = self.url(&["v1", "keys"]);
        self.call(
            Method::POST,
            url,
            Some((body.into_bytes(), "application/json")),
        )
        .await
    }

    /// `GET /v1/info` (public): the gateway's public URL and paths.
    pub async fn info(&self) -> Result<Value, ClientError> {
        self.get(&["v1", "info"]).await
    }

    /// `GET path?query` as text (at most 1 MiB), e.g. the guide; `None` when the gateway
    /// answers anything but a 2xx (an older gateway without that route).
    pub async fn text(
        &self,
        segments: &[&str],
        query: &str,
    ) -> Result<Option<String>, ClientError> {
        let mut url = self.url(segments);
        url.set_query(Some(query));
        let mut request = self.http.get(url);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let unreachable = |err: reqwest::Error| ClientError::Unreachable {
            url: self.base_url().to_owned(),
            reason: root_cause(&err),
        };
        let response = request.send().await.map_err(unreachable)?;
        if !response.status().is_success() {
            return Ok(None);
        }
        let bytes = response.bytes().await.map_err(unreachable)?;
        if bytes.len() > 1024 * 1024 {
            return Ok(None);
        }
        Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
    }

    /// `DELETE /v1/executor-tokens/{name}`: revokes a token (admin scope).
    pub async fn revoke_executor_token(&self, name: &str) -> Result<Value, ClientError> {
        let url = self.url(&["v1", "executor-tokens", name]);
        self.call(Method::DELETE, url, None).await
    }
}

/// The root cause of a transport error, e.g. `Connection refused (os error 111)`.
fn root_cause(err: &reqwest::Error) -> String {
    if err.is_timeout() {
        return "timed out".to_owned();
    }
    let mut cause: &dyn std::error::Error = err;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_stay_one_path_segment() {
        let client = GatewayClient::new("http://127.0.0.1:1/prefix", None).unwrap();
        let url = client.url(&["v1", "patches", "../x y", "events"]);
        assert_eq!(url.path(), "/prefix/v1/patches/..%2Fx%20y/events");
        let plain = GatewayClient::new("http://127.0.0.1:1", None).unwrap();
        assert_eq!(plain.url(&["v1", "targets"]).path(), "/v1/targets");
        assert_eq!(plain.base_url(), "http://127.0.0.1:1");
    }

    #[test]
    fn bad_urls_are_refused_with_the_reason() {
        assert!(matches!(
            GatewayClient::new("127.0.0.1:8080", None),
            Err(ClientError::BadUrl { .. })
        ));
        assert!(matches!(
            GatewayClient::new("ftp://host", None),
            Err(ClientError::BadUrl { .. })
        ));
    }

    #[test]
    fn a_problem_reads_as_one_line_with_its_pointer() {
        let problem = Problem {
            status: 422,
            request: "POST /v1/patches".to_owned(),
            title: "Unprocessable Entity".to_owned(),
            detail: "unknown op \"wrte\"".to_owned(),
            pointer: Some("/edits/0/op".to_owned()),
            position: None,
            retry_after: None,
            is_problem_document: true,
            body: Value::Null,
        };
        assert_eq!(
            problem.one_line(),
            "422 Unprocessable Entity: unknown op \"wrte\" (at /edits/0/op)"
        );
    }
}
