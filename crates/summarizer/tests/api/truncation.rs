//! Must-show 4: long summaries are cut in the middle for the model (≤ 100,000 characters) and
//! for Slack (≤ 3,000 per section), keeping head and tail and saying how much was cut; the full
//! output stays in artifact files.

use ghost_proto::router::v1::{ApplyReport, CommandReport, PatchStatus};
use ghost_proto::summarizer::v1::{Outcome, RecordRequest};
use summarizer::render::{MODEL_TEXT_CHARS, excerpt, model_text};

use crate::helpers::{FakeAlerter, T0, TRACE_ID, spawn_summarizer, summary};

fn noisy_command(n: usize) -> CommandReport {
    CommandReport {
        command: format!("npm run build:{n}"),
        exit_code: Some(if n == 39 { 1 } else { 0 }),
        duration_ms: 1_000,
        output_head: format!("head of {n}: {}\n", "é🚀".repeat(3_000)),
        output_tail: format!("{}\ntail of {n}: done\n", "x".repeat(20_000)),
        omitted_bytes: 1_000_000,
        kind: "command".to_owned(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_huge_summary_is_cut_in_the_middle_for_the_model_and_for_slack() {
    let dir = tempfile::tempdir().unwrap();
    let alerter = FakeAlerter::start().await;
    let mut app = spawn_summarizer(dir.path(), Some(alerter.url.clone())).await;
    app.client
        .record(RecordRequest {
            outcome: Some(Outcome {
                notify: String::new(),
                priority: String::new(),
                key_name: String::new(),
                patch_id: "huge".to_owned(),
                target: "MAIN".to_owned(),
                attempt: 1,
                description: "d".repeat(10_000),
                report: Some(ApplyReport {
                    status: PatchStatus::Failed as i32,
                    error: format!("build failed: {}", "e".repeat(50_000)),
                    commands: (0..40).map(noisy_command).collect(),
                    ..Default::default()
                }),
                trace_id: TRACE_ID.to_owned(),
                created_unix_ms: T0,
                finished_unix_ms: T0 + 1_000,
                intake_warnings: Vec::new(),
            }),
        })
        .await
        .unwrap();

    let summary = summary(&mut app.client, "huge").await;
    let markdown_chars = summary.markdown.chars().count();
    assert!(markdown_chars > 2 * MODEL_TEXT_CHARS, "{markdown_chars}");
    let model_chars = summary.model_text.chars().count();
    assert!(model_chars <= MODEL_TEXT_CHARS, "{model_chars}");
    // Head and tail of the real summary are kept; the marker says how much is missing.
    let head: String = summary.markdown.chars().take(2_000).collect();
    let tail: String = summary
        .markdown
        .chars()
        .skip(markdown_chars - 2_000)
        .collect();
    assert!(summary.model_text.starts_with(&head));
    assert!(summary.model_text.ends_with(&tail));
    assert!(summary.model_text.ends_with("patchName: huge\n"));
    // The model marker starts where the model text stops following the Markdown.
    let marker_start = summary
        .model_text
        .char_indices()
        .zip(summary.markdown.chars())
        .find(|((_, kept), original)| kept != original)
        .map(|((at, _), _)| at)
        .unwrap();
    let rest = summary.model_text[marker_start..]
        .strip_prefix("\n\n… ")
        .unwrap();
    let cut: usize = rest[..rest.find(" characters cut …\n\n").unwrap()]
        .parse()
        .unwrap();
    let marker = format!("\n\n… {cut} characters cut …\n\n");
    assert_eq!(cut + model_chars - marker.chars().count(), markdown_chars);

    // Slack gets a short excerpt, within one Block Kit section.
    let notified = alerter.wait_for(1).await;
    let excerpt_chars = notified[0].excerpt.chars().count();
    assert!(excerpt_chars <= 3_000, "{excerpt_chars}");
    assert!(
        notified[0].excerpt.starts_with("# ❌ huge failed"),
        "{}",
        notified[0].excerpt
    );
    assert!(notified[0].excerpt.contains("characters cut"));
    assert!(notified[0].error.chars().count() <= 3_000);

    // The whole output as received is kept beside the summary.
    let artifact =
        std::fs::read_to_string(dir.path().join("summaries/MAIN/artifacts/huge/1-40.log")).unwrap();
    assert!(artifact.starts_with("head of 39: é🚀"));
    assert!(artifact.contains("[… 1000000 bytes omitted by the executor …]"));
    assert!(artifact.ends_with(&format!("{}\ntail of 39: done\n", "x".repeat(20_000))));
    assert!(
        summary
            .markdown
            .contains("[artifacts/huge/1-40.log](artifacts/huge/1-40.log)")
    );
    app.stop().await;
}

#[test]
fn model_text_never_exceeds_its_budget_and_keeps_both_ends() {
    for budget in [40_usize, 100, 1_000, 3_000, 100_000] {
        for len in [
            0,
            1,
            budget - 1,
            budget,
            budget + 1,
            2 * budget,
            7 * budget + 3,
        ] {
            let text: String = (0..len)
                .map(|i| {
                    if i % 3 == 0 {
                        'é'
                    } else {
                        char::from(b'a' + (i % 26) as u8)
                    }
                })
                .collect();
            let cut = model_text(&text, budget);
            assert!(cut.chars().count() <= budget, "budget {budget}, len {len}");
            if len <= budget {
                assert_eq!(cut, text);
            } else {
                let first: String = text.chars().take(5).collect();
                let last: String = text.chars().skip(len - 5).collect();
                assert!(
                    cut.starts_with(&first) && cut.ends_with(&last),
                    "{budget} {len}"
                );
                assert!(cut.contains("characters cut"));
            }
        }
    }
    assert_eq!(excerpt("abc", 3), "abc");
}
