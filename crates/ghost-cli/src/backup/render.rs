//! `ghost backup`'s and `ghost restore`'s answers, for people and for `--json`.

use super::{BackupReport, MANIFEST};

/// `ghost backup --json`: the directory, per service its files, bytes and schema version, what
/// was skipped, deleted and not copied.
pub fn report_json(report: &BackupReport) -> serde_json::Value {
    let mut services = serde_json::Map::new();
    for entry in &report.manifest.files {
        let service = services
            .entry(entry.service.clone())
            .or_insert_with(|| serde_json::json!({"files": 0, "bytes": 0}));
        service["files"] = (service["files"].as_u64().unwrap_or(0) + 1).into();
        service["bytes"] = (service["bytes"].as_u64().unwrap_or(0) + entry.size).into();
        if let Some(version) = entry.schema_version {
            service["schema_version"] = version.into();
        }
    }
    serde_json::json!({
        "dir": report.dir,
        "manifest": report.dir.join(MANIFEST),
        "started_at": report.manifest.started_at,
        "finished_at": report.manifest.finished_at,
        "services": services,
        "skipped": report.skipped,
        "deleted": report.deleted,
        "warnings": report.manifest.warnings,
    })
}

/// `ghost backup`'s text.
pub fn render_backup(report: &serde_json::Value, _paint: crate::render::Paint) -> String {
    let mut lines = vec![format!(
        "backup written to {} (started {})",
        report["dir"].as_str().unwrap_or("?"),
        report["started_at"].as_str().unwrap_or("?")
    )];
    for (name, service) in report["services"].as_object().into_iter().flatten() {
        lines.push(format!(
            "  {name}: {} files, {} bytes{}",
            service["files"],
            service["bytes"],
            service["schema_version"]
                .as_i64()
                .map(|v| format!(", schema version {v}"))
                .unwrap_or_default()
        ));
    }
    for name in report["skipped"].as_array().into_iter().flatten() {
        lines.push(format!(
            "  {}: no state under the data dir, skipped",
            name.as_str().unwrap_or("?")
        ));
    }
    for old in report["deleted"].as_array().into_iter().flatten() {
        lines.push(format!(
            "deleted old backup {}",
            old.as_str().unwrap_or("?")
        ));
    }
    lines.join("\n")
}

/// `ghost restore`'s text.
pub fn render_restore(report: &serde_json::Value, _paint: crate::render::Paint) -> String {
    let mut lines = vec![format!(
        "restored the backup taken {}",
        report["backup_started_at"].as_str().unwrap_or("?")
    )];
    for service in report["services"].as_array().into_iter().flatten() {
        lines.push(format!(
            "  {} -> {}: {} files, {} bytes, schema version {}, integrity ok",
            service["service"].as_str().unwrap_or("?"),
            service["dir"].as_str().unwrap_or("?"),
            service["files"],
            service["bytes"],
            service["schema_version"]
        ));
        if let Some(aside) = service["moved_aside"].as_str() {
            lines.push(format!("    what was there is now in {aside}"));
        }
    }
    for name in report["not_restored"].as_array().into_iter().flatten() {
        lines.push(format!(
            "  {}: in the backup, not restored (no --data-dir or --{}-dir)",
            name.as_str().unwrap_or("?"),
            name.as_str().unwrap_or("?")
        ));
    }
    lines.join("\n")
}
