//! A small client of the gateway's HTTP API, used by `ghost submit`.

use std::time::Duration;

use serde_json::Value;

/// Why a call to the gateway failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The gateway could not be reached.
    #[error("cannot reach the gateway at {url}: {source}")]
    Unreachable {
        /// The URL tried.
        url: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// The gateway refused the request; `problem` is its problem document.
    #[error("{status}: {detail}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The problem's detail, with the pointer or line:column when given.
        detail: String,
        /// The whole problem document.
        problem: Value,
    },
}

/// The gateway at `base_url`, authenticated with `api_key`.
#[derive(Clone)]
pub struct GatewayClient {
    base_url: String,
    api_key: String,
    http: reqwest::Client,
}

impl GatewayClient {
    /// A client; `base_url` like `http://127.0.0.1:8080`.
    pub fn new(base_url: &str, api_key: &str) -> Result<Self, reqwest::Error> {
        Ok(Self {
            base_url: base_url.trim_end_matches('/').to_owned(),
            api_key: api_key.to_owned(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
        })
    }

    async fn answer(
        &self,
        url: String,
        request: reqwest::RequestBuilder,
    ) -> Result<Value, ClientError> {
        let response = request
            .bearer_auth(&self.api_key)
            .send()
            .await
            .map_err(|source| ClientError::Unreachable {
                url: url.clone(),
                source,
            })?;
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .unwrap_or_else(|_| Value::String(String::new()));
        if status.is_success() {
            return Ok(body);
        }
        let mut detail = body["detail"]
            .as_str()
            .unwrap_or("request refused")
            .to_owned();
        if let Some(pointer) = body["pointer"].as_str() {
            detail.push_str(&format!(
                " (at {})",
                if pointer.is_empty() { "/" } else { pointer }
            ));
        }
        if let (Some(line), Some(column)) = (body["line"].as_u64(), body["column"].as_u64()) {
            detail.push_str(&format!(" (line {line}, column {column})"));
        }
        Err(ClientError::Refused {
            status: status.as_u16(),
            detail,
            problem: body,
        })
    }

    /// `POST /v1/patches` with a JSON body; returns the 202 answer.
    pub async fn submit(&self, body: Vec<u8>) -> Result<Value, ClientError> {
        let url = format!("{}/v1/patches", self.base_url);
        let request = self
            .http
            .post(&url)
            .header("content-type", "application/json")
            .body(body);
        self.answer(url, request).await
    }

    /// `GET /v1/patches/{id}`.
    pub async fn patch(&self, id: &str) -> Result<Value, ClientError> {
        let url = format!("{}/v1/patches/{id}", self.base_url);
        let request = self.http.get(&url);
        self.answer(url, request).await
    }
}
