//! Workspaces in temp dirs, patches from JSON, and byte-exact snapshots.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use executor::TargetPolicy;
use executor::apply::{self, Context, Lease};
use executor::workspace::{Limits, Workspace};
use ghost_core::{ApplyReport, Patch};
use tokio_util::sync::CancellationToken;

/// A workspace with its state dir beside it; both vanish on drop.
pub struct TestWorkspace {
    pub _dir: tempfile::TempDir,
    pub ctx: Context,
}

impl TestWorkspace {
    pub fn root(&self) -> &Path {
        &self.ctx.workspace.root
    }

    pub fn write(&self, rel: &str, contents: &str) {
        let path = self.root().join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, contents).unwrap();
    }

    pub fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.root().join(rel)).unwrap()
    }

    pub fn apply(&self, patch: &Patch) -> ApplyReport {
        apply::apply(
            &self.ctx,
            patch,
            Lease::default(),
            false,
            &CancellationToken::new(),
        )
    }
}

pub const LIMITS: Limits = Limits {
    max_file_bytes: 1024 * 1024,
    max_patch_bytes: 4 * 1024 * 1024,
};

pub fn workspace_with(policy: TargetPolicy) -> TestWorkspace {
    let dir = tempfile::tempdir().unwrap();
    let base = fs::canonicalize(dir.path()).unwrap();
    fs::create_dir_all(base.join("ws")).unwrap();
    fs::create_dir_all(base.join("state")).unwrap();
    TestWorkspace {
        ctx: Context {
            workspace: Workspace {
                target: "MAIN".to_owned(),
                root: base.join("ws"),
                state_dir: base.join("state"),
                policy,
            },
            limits: LIMITS,
            default_timeout: Duration::from_secs(30),
            write_delay: Duration::ZERO,
        },
        _dir: dir,
    }
}

pub fn workspace() -> TestWorkspace {
    workspace_with(TargetPolicy::default())
}

/// A v1 patch for target MAIN from the JSON of its other fields.
pub fn patch(id: &str, fields: &str) -> Patch {
    let body = format!(r#"{{"id":"{id}","target":"MAIN",{fields}}}"#);
    ghost_core::parse_json(body.as_bytes()).unwrap_or_else(|err| panic!("{err}: {body}"))
}

/// Every file (bytes and mode) and directory under `root`, `.git` excluded.
pub fn snapshot(root: &Path) -> BTreeMap<String, (Option<Vec<u8>>, u32)> {
    let mut found = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            if rel == ".git" {
                continue;
            }
            let meta = fs::symlink_metadata(&path).unwrap();
            let mode = meta.permissions().mode() & 0o7777;
            if meta.file_type().is_symlink() {
                let target = fs::read_link(&path).unwrap();
                found.insert(
                    rel,
                    (Some(target.display().to_string().into_bytes()), 0o120000),
                );
            } else if meta.is_dir() {
                found.insert(rel, (None, mode));
                stack.push(path);
            } else {
                found.insert(rel, (Some(fs::read(&path).unwrap()), mode));
            }
        }
    }
    found
}
