//! Reading what an agent CLI printed: its final message, token counts and cost, from JSON
//! lines or aider's text, bounded.

/// What an agent's output says about its run, where it says it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    /// Its final message.
    pub final_message: String,
    /// Tokens read by the model.
    pub input_tokens: Option<u64>,
    /// Tokens written by the model.
    pub output_tokens: Option<u64>,
    /// Cost in US dollars as reported.
    pub cost_usd: String,
}

/// Most bytes of a final message reported.
const MAX_FINAL_MESSAGE: usize = 8 * 1024;

fn json_u64(value: Option<&serde_json::Value>) -> Option<u64> {
    value.and_then(serde_json::Value::as_u64)
}

/// Reads one JSON event or result object of a known CLI into `out`.
fn read_json(object: &serde_json::Value, out: &mut Output) {
    use serde_json::Value;
    // claude-code and cursor-agent: {"result": ..., "usage": {...}, "total_cost_usd": ...};
    // gemini: {"response": ..., "stats": ...}; codex: {"type": "item.completed", "item":
    // {"type": "agent_message", "text": ...}} and {"type": "turn.completed", "usage": ...};
    // opencode: {"type": "text", "part": {"text": ...}}.
    let text = object
        .get("result")
        .or_else(|| object.get("response"))
        .or_else(|| {
            object
                .get("item")
                .filter(|item| item.get("type").and_then(Value::as_str) == Some("agent_message"))
                .and_then(|item| item.get("text"))
        })
        .or_else(|| {
            (object.get("type").and_then(Value::as_str) == Some("text"))
                .then(|| object.get("part").and_then(|part| part.get("text")))
                .flatten()
        });
    if let Some(Value::String(text)) = text
        && !text.trim().is_empty()
    {
        out.final_message = text.clone();
    }
    if let Some(usage) = object.get("usage") {
        let input = json_u64(usage.get("input_tokens"));
        let output = json_u64(usage.get("output_tokens"));
        if input.is_some() {
            out.input_tokens = Some(out.input_tokens.unwrap_or(0) + input.unwrap_or(0));
        }
        if output.is_some() {
            out.output_tokens = Some(out.output_tokens.unwrap_or(0) + output.unwrap_or(0));
        }
    }
    if let Some(cost) = object.get("total_cost_usd").and_then(Value::as_f64) {
        out.cost_usd = format!("{cost}");
    }
    if let Some(Value::Object(models)) = object.get("stats").and_then(|stats| stats.get("models")) {
        for model in models.values() {
            let tokens = model.get("tokens");
            if let Some(prompt) = json_u64(tokens.and_then(|t| t.get("prompt"))) {
                out.input_tokens = Some(out.input_tokens.unwrap_or(0) + prompt);
            }
            if let Some(written) = json_u64(tokens.and_then(|t| t.get("candidates"))) {
                out.output_tokens = Some(out.output_tokens.unwrap_or(0) + written);
            }
        }
    }
}

/// `2.3k` → 2300, `1.1M` → 1100000, `120` → 120.
fn count(text: &str) -> Option<u64> {
    let text = text.trim().replace(',', "");
    let (number, scale) = match text.chars().last()? {
        'k' => (&text[..text.len() - 1], 1_000.0),
        'M' => (&text[..text.len() - 1], 1_000_000.0),
        _ => (text.as_str(), 1.0),
    };
    let value: f64 = number.parse().ok()?;
    // Token counts are far below 2^53: the cast is exact enough for a report.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Some((value * scale).round() as u64)
}

/// Reads aider's `Tokens: 2.3k sent, 150 received. Cost: $0.01 message, $0.02 session.`
fn read_aider_line(line: &str, out: &mut Output) -> bool {
    let Some(rest) = line.trim().strip_prefix("Tokens:") else {
        return false;
    };
    let counts = rest.split("Cost:").next().unwrap_or_default();
    for part in counts
        .split(',')
        .map(|part| part.trim().trim_end_matches('.'))
    {
        if let Some(sent) = part.strip_suffix(" sent").and_then(count) {
            out.input_tokens = Some(out.input_tokens.unwrap_or(0) + sent);
        } else if let Some(received) = part.strip_suffix(" received").and_then(count) {
            out.output_tokens = Some(out.output_tokens.unwrap_or(0) + received);
        }
    }
    if let Some((_, cost)) = rest.split_once("Cost: $")
        && let Some((_, session)) = cost.split_once(", $")
        && let Some(session) = session.split_whitespace().next()
    {
        out.cost_usd = session.to_owned();
    }
    true
}

/// The final message, tokens and cost from an agent's output (the tail kept of it): JSON
/// results and events of the known CLIs, aider's token lines; otherwise the final message
/// is the last lines of plain output.
pub fn parse_output(output: &str) -> Output {
    let mut out = Output::default();
    let mut plain = Vec::new();
    if let Ok(whole) = serde_json::from_str::<serde_json::Value>(output.trim())
        && whole.is_object()
    {
        read_json(&whole, &mut out);
    } else {
        for line in output.lines() {
            let trimmed = line.trim();
            if trimmed.starts_with('{')
                && let Ok(value) = serde_json::from_str::<serde_json::Value>(trimmed)
            {
                read_json(&value, &mut out);
                continue;
            }
            if read_aider_line(trimmed, &mut out) {
                continue;
            }
            plain.push(line);
        }
    }
    if out.final_message.is_empty() {
        let lines: Vec<&str> = plain
            .iter()
            .rev()
            .skip_while(|line| line.trim().is_empty())
            .take(20)
            .copied()
            .collect();
        out.final_message = lines.into_iter().rev().collect::<Vec<_>>().join("\n");
    }
    out.final_message = tail_chars(&out.final_message, MAX_FINAL_MESSAGE);
    out
}

/// The last `max` bytes of `text`, cut at a character boundary.
pub fn tail_chars(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_owned()
}
