//! Plain HTTP probes of a service under test.

/// The status code of `GET url` (panics, naming the URL, when there is no answer).
pub async fn status(client: &reqwest::Client, url: String) -> u16 {
    client
        .get(&url)
        .send()
        .await
        .unwrap_or_else(|err| panic!("GET {url}: {err}"))
        .status()
        .as_u16()
}
