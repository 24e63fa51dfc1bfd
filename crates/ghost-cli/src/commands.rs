//! The commands that read or steer a running system: each calls the gateway, then prints the
//! answer for people or, with `--json`, as one JSON document.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::client::{ClientError, GatewayClient, ListQuery};
use crate::error::CliError;
use crate::exit::Exit;
use crate::render::{self, Output};

/// The largest page the gateway serves.
const MAX_PAGE: u32 = 500;
/// `ghost status` counts at most this many of the newest patches.
const STATUS_COUNT_LIMIT: usize = 10_000;

/// `ghost status`: targets, executors and patch counts by status.
pub async fn status(client: &GatewayClient, output: &Output) -> Result<Exit, CliError> {
    let targets = client.targets().await?;
    // The executors route may be missing on an older gateway: say so, show the rest.
    let (executors, executors_error) = match client.executors().await {
        Ok(answer) => (answer["executors"].clone(), Value::Null),
        Err(ClientError::Refused(problem)) if problem.status == 404 => {
            (Value::Null, Value::String(problem.one_line()))
        }
        Err(err) => return Err(err.into()),
    };
    let mut counts = BTreeMap::<String, u64>::new();
    let mut counted = 0usize;
    let mut token = None;
    let more = loop {
        let page = client
            .list(&ListQuery {
                page_size: Some(MAX_PAGE),
                page_token: token.take(),
                ..ListQuery::default()
            })
            .await?;
        for patch in page["patches"].as_array().into_iter().flatten() {
            let status = patch["status"].as_str().unwrap_or("unknown").to_owned();
            *counts.entry(status).or_default() += 1;
            counted += 1;
        }
        let next = page["next_page_token"].as_str().unwrap_or("");
        if next.is_empty() || counted >= STATUS_COUNT_LIMIT {
            break !next.is_empty();
        }
        token = Some(next.to_owned());
    };
    let overview = json!({
        "url": client.base_url(),
        "targets": targets,
        "executors": executors,
        "executors_error": executors_error,
        "counts": counts,
        "counted": counted,
        "counts_truncated": more,
    });
    output.show(&overview, render::overview);
    Ok(Exit::Success)
}

/// What `ghost list` shows.
#[derive(Debug, Clone)]
pub struct ListOptions {
    /// Only this target.
    pub target: Option<String>,
    /// Only this status.
    pub status: Option<String>,
    /// At most this many patches (pages fetched as needed).
    pub limit: usize,
    /// Continue after an earlier listing.
    pub page_token: Option<String>,
}

/// `ghost list`: newest first, following pages until `limit`.
pub async fn list(
    client: &GatewayClient,
    output: &Output,
    options: ListOptions,
) -> Result<Exit, CliError> {
    let mut patches: Vec<Value> = Vec::new();
    let mut token = options.page_token;
    let mut next = String::new();
    while patches.len() < options.limit {
        let remaining = options.limit - patches.len();
        let page = client
            .list(&ListQuery {
                target: options.target.clone(),
                status: options.status.clone(),
                page_size: Some(u32::try_from(remaining).unwrap_or(MAX_PAGE).min(MAX_PAGE)),
                page_token: token.take(),
            })
            .await?;
        patches.extend(page["patches"].as_array().cloned().unwrap_or_default());
        next = page["next_page_token"].as_str().unwrap_or("").to_owned();
        if next.is_empty() {
            break;
        }
        token = Some(next.clone());
    }
    if output.json {
        output.print_json(&json!({"patches": patches, "next_page_token": next}));
    } else {
        output.print(&render::patch_list(&patches, &next, output.out));
    }
    Ok(Exit::Success)
}

/// `ghost show ID`.
pub async fn show(client: &GatewayClient, output: &Output, id: &str) -> Result<Exit, CliError> {
    let detail = client.patch(id).await?;
    output.show(&detail, render::patch_detail);
    Ok(Exit::Success)
}

/// `ghost events ID`.
pub async fn events(client: &GatewayClient, output: &Output, id: &str) -> Result<Exit, CliError> {
    let events = client.events(id).await?;
    output.show(&events, render::events);
    Ok(Exit::Success)
}

/// `ghost logs ID`: the outputs of the patch's commands.
pub async fn logs(client: &GatewayClient, output: &Output, id: &str) -> Result<Exit, CliError> {
    let detail = client.patch(id).await?;
    if output.json {
        output.print_json(&json!({
            "id": detail["id"],
            "status": detail["status"],
            "commands": detail["report"]["commands"].as_array().cloned().unwrap_or_default(),
        }));
    } else {
        output.print(&render::logs(&detail, output.out));
    }
    Ok(Exit::Success)
}

/// `ghost cancel ID`.
pub async fn cancel(client: &GatewayClient, output: &Output, id: &str) -> Result<Exit, CliError> {
    let view = client.cancel(id).await?;
    output.show(&view, |view, paint| {
        format!(
            "{} is {}",
            view["id"].as_str().unwrap_or(id),
            paint.status(view["status"].as_str().unwrap_or("?"))
        )
    });
    Ok(Exit::Success)
}

/// `ghost retry ID`.
pub async fn retry(client: &GatewayClient, output: &Output, id: &str) -> Result<Exit, CliError> {
    let view = client.retry(id).await?;
    output.show(&view, |view, paint| {
        format!(
            "{} is {} again (attempt {} next)",
            view["id"].as_str().unwrap_or(id),
            paint.status(view["status"].as_str().unwrap_or("?")),
            view["attempt"].as_u64().unwrap_or(0) + 1
        )
    });
    Ok(Exit::Success)
}

/// `ghost pause TARGET` (`pause` true) or `ghost resume TARGET`.
pub async fn pause(
    client: &GatewayClient,
    output: &Output,
    target: &str,
    pause: bool,
) -> Result<Exit, CliError> {
    let view = if pause {
        client.pause(target).await?
    } else {
        client.resume(target).await?
    };
    output.show(&view, render::targets);
    Ok(Exit::Success)
}

/// `ghost targets`.
pub async fn targets(client: &GatewayClient, output: &Output) -> Result<Exit, CliError> {
    let targets = client.targets().await?;
    output.show(&targets, render::targets);
    Ok(Exit::Success)
}

/// `ghost executors`.
pub async fn executors(client: &GatewayClient, output: &Output) -> Result<Exit, CliError> {
    let executors = client.executors().await?;
    output.show(&executors, render::executors);
    Ok(Exit::Success)
}

/// `ghost token create`: issues a token for `targets` and prints it, once. `--json` prints
/// exactly `{"name", "token", "targets"}`.
pub async fn token_create(
    client: &GatewayClient,
    output: &Output,
    name: &str,
    targets: &[String],
) -> Result<Exit, CliError> {
    let issued = client.create_executor_token(name, targets).await?;
    let shown = json!({
        "name": issued["name"],
        "token": issued["token"],
        "targets": issued["targets"],
    });
    output.show(&shown, render::issued_token);
    Ok(Exit::Success)
}

/// `ghost token list`: every executor token, without secrets.
pub async fn token_list(client: &GatewayClient, output: &Output) -> Result<Exit, CliError> {
    let tokens = client.executor_tokens().await?;
    output.show(&tokens, render::executor_tokens);
    Ok(Exit::Success)
}

/// `ghost token revoke NAME`: revokes a token; the router cuts its live streams.
pub async fn token_revoke(
    client: &GatewayClient,
    output: &Output,
    name: &str,
) -> Result<Exit, CliError> {
    let revoked = client.revoke_executor_token(name).await?;
    output.show(&revoked, |token, _| {
        format!(
            "revoked executor token {}; its executors are disconnected",
            text(token, "name")
        )
    });
    Ok(Exit::Success)
}

fn text<'a>(value: &'a Value, key: &str) -> &'a str {
    value[key].as_str().unwrap_or("")
}
