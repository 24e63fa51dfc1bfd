//! The inbox directory: `<inbox>/<TARGET>/*.json|*.yaml|*.yml` files are submitted once
//! completely written (their size and mtime unchanged for `settle`), then moved to
//! `<TARGET>/.accepted/` or to `<TARGET>/.rejected/` beside a `<name>.error.txt` saying why.
//! Files present at start are processed too. When the router is down a file stays where it is
//! and is tried again, so nothing dropped in the inbox is lost.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ghost_core::{Format, TargetName};
use notify::{RecursiveMode, Watcher};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Principal;
use crate::error::GatewayError;
use crate::patches::Patches;

/// How long to wait before trying a file again when the router is unavailable.
const RETRY_AFTER: Duration = Duration::from_secs(2);

/// The inbox watcher's shared state.
#[derive(Clone)]
pub struct Inbox {
    root: PathBuf,
    settle: Duration,
    patches: Patches,
    pending: Arc<Mutex<HashSet<PathBuf>>>,
}

/// The target directory and format of an inbox file, if `path` is one.
fn classify(root: &Path, path: &Path) -> Option<(TargetName, Format)> {
    let relative = path.strip_prefix(root).ok()?;
    let mut parts = relative.components();
    let target = parts.next()?.as_os_str().to_str()?;
    let name = parts.next()?.as_os_str().to_str()?;
    if parts.next().is_some() || target.starts_with('.') || name.starts_with('.') {
        return None;
    }
    let format = match Path::new(name).extension()?.to_str()? {
        "json" => Format::Json,
        "yaml" | "yml" => Format::Yaml,
        _ => return None,
    };
    Some((TargetName::parse(target).ok()?, format))
}

/// Size and mtime, or `None` when the file is gone.
fn stamp(path: &Path) -> Option<(u64, std::time::SystemTime)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.len(), meta.modified().ok()?))
}

/// Moves `path` into `dir` (created), keeping its name unless taken.
fn move_into(path: &Path, dir: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let mut destination = dir.join(&name);
    let mut counter = 1;
    while destination.exists() {
        destination = dir.join(format!("{counter}-{name}"));
        counter += 1;
    }
    std::fs::rename(path, &destination)?;
    Ok(destination)
}

/// What reading an inbox file gave.
enum Read {
    Body(Vec<u8>),
    Gone,
    Refused(String),
}

/// Reads an inbox file on the blocking pool: never through a symlink (`O_NOFOLLOW`, so a link
/// dropped in the inbox cannot submit a file the gateway may read elsewhere), only a regular
/// file (a FIFO would block), and never more than `max` bytes of it (size checked first).
async fn read_capped(path: PathBuf, max: usize) -> Read {
    let read = tokio::task::spawn_blocking(move || -> std::io::Result<Read> {
        use rustix::fs::{Mode, OFlags};
        use std::io::Read as _;
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let file = match rustix::fs::open(&path, flags, Mode::empty()) {
            Ok(fd) => std::fs::File::from(fd),
            Err(rustix::io::Errno::LOOP) => {
                return Ok(Read::Refused("the file is a symlink".to_owned()));
            }
            Err(err) => return Err(err.into()),
        };
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Ok(Read::Refused("not a regular file".to_owned()));
        }
        let limit = u64::try_from(max).unwrap_or(u64::MAX);
        let too_large = || Read::Refused(format!("the file is over the {max} byte limit"));
        if meta.len() > limit {
            return Ok(too_large());
        }
        let mut body = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
        file.take(limit.saturating_add(1)).read_to_end(&mut body)?;
        if body.len() > max {
            return Ok(too_large());
        }
        Ok(Read::Body(body))
    })
    .await;
    match read {
        Ok(Ok(read)) => read,
        Ok(Err(_)) | Err(_) => Read::Gone,
    }
}

enum Outcome {
    Accepted(String),
    Rejected(String),
    Retry,
    Gone,
}

impl Inbox {
    /// An inbox at `root` submitting through `patches`.
    pub fn new(root: PathBuf, settle: Duration, patches: Patches) -> Self {
        Self {
            root,
            settle,
            patches,
            pending: Arc::new(Mutex::new(HashSet::new())),
        }
    }

    /// Watches until `token` is cancelled; files already present are handled first.
    pub async fn run(self, token: CancellationToken, tasks: TaskTracker) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.root)?;
        let (sender, mut events) = tokio::sync::mpsc::unbounded_channel::<PathBuf>();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if let Ok(event) = event {
                    for path in event.paths {
                        let _ = sender.send(path);
                    }
                }
            })?;
        watcher.watch(&self.root, RecursiveMode::Recursive)?;
        for target_dir in std::fs::read_dir(&self.root)?.flatten() {
            if !target_dir.path().is_dir() {
                continue;
            }
            for file in std::fs::read_dir(target_dir.path())?.flatten() {
                self.consider(file.path(), &tasks, &token);
            }
        }
        tracing::info!(inbox = %self.root.display(), "watching the inbox");
        loop {
            tokio::select! {
                () = token.cancelled() => break,
                event = events.recv() => match event {
                    Some(path) => self.consider(path, &tasks, &token),
                    None => break,
                },
            }
        }
        drop(watcher);
        Ok(())
    }

    /// Starts handling `path` unless it is not an inbox file or is already being handled.
    fn consider(&self, path: PathBuf, tasks: &TaskTracker, token: &CancellationToken) {
        let Some((target, format)) = classify(&self.root, &path) else {
            return;
        };
        if !path.is_file() {
            return;
        }
        {
            let Ok(mut pending) = self.pending.lock() else {
                return;
            };
            if !pending.insert(path.clone()) {
                return;
            }
        }
        let inbox = self.clone();
        let token = token.clone();
        tasks.spawn(async move {
            loop {
                let outcome = tokio::select! {
                    () = token.cancelled() => break,
                    outcome = inbox.handle(&path, &target, format) => outcome,
                };
                match outcome {
                    Outcome::Retry => {
                        tokio::select! {
                            () = token.cancelled() => break,
                            () = tokio::time::sleep(RETRY_AFTER) => continue,
                        }
                    }
                    Outcome::Accepted(id) => {
                        tracing::info!(file = %path.display(), patch_id = %id, "inbox file accepted");
                    }
                    Outcome::Rejected(reason) => {
                        tracing::warn!(file = %path.display(), %reason, "inbox file rejected");
                    }
                    Outcome::Gone => {}
                }
                break;
            }
            if let Ok(mut pending) = inbox.pending.lock() {
                pending.remove(&path);
            }
        });
    }

    /// Waits until the file stops changing.
    async fn settled(&self, path: &Path) -> Option<(u64, std::time::SystemTime)> {
        let mut last = stamp(path)?;
        loop {
            tokio::time::sleep(self.settle).await;
            let now = stamp(path)?;
            if now == last {
                return Some(now);
            }
            last = now;
        }
    }

    async fn handle(&self, path: &Path, target: &TargetName, format: Format) -> Outcome {
        let mut stable = match self.settled(path).await {
            Some(stable) => stable,
            None => return Outcome::Gone,
        };
        let result = loop {
            let max = self.patches.budget().max_bytes;
            let body = match read_capped(path.to_owned(), max).await {
                Read::Body(body) => body,
                Read::Gone => return Outcome::Gone,
                Read::Refused(reason) => return self.reject(path, &reason),
            };
            let mut options = self.patches.legacy().clone();
            options.default_target = Some(target.clone());
            let caller = Principal::inbox(target);
            match self
                .patches
                .submit(&caller, &body, format, None, Some(&options))
                .await
            {
                // A syntax error in a file still being written: wait for it to change again.
                Err(GatewayError::MalformedBody { .. }) if stamp(path) != Some(stable) => {
                    match self.settled(path).await {
                        Some(next) => stable = next,
                        None => return Outcome::Gone,
                    }
                }
                other => break other,
            }
        };
        match result {
            Ok(accepted) => match move_into(path, &path.with_file_name(".accepted")) {
                Ok(_) => Outcome::Accepted(accepted.id),
                Err(err) => Outcome::Rejected(format!("accepted but not moved: {err}")),
            },
            Err(GatewayError::Unavailable(_) | GatewayError::Overloaded(_)) => Outcome::Retry,
            Err(err) => self.reject(path, &err.to_string()),
        }
    }

    fn reject(&self, path: &Path, reason: &str) -> Outcome {
        let dir = path.with_file_name(".rejected");
        match move_into(path, &dir) {
            Ok(moved) => {
                let name = moved.file_name().unwrap_or_default().to_string_lossy();
                let note = dir.join(format!("{name}.error.txt"));
                if let Err(err) = std::fs::write(&note, format!("{reason}\n")) {
                    tracing::error!(file = %note.display(), error = %err, "cannot write the rejection note");
                }
            }
            Err(err) => {
                tracing::error!(file = %path.display(), error = %err, "cannot move a rejected file");
            }
        }
        Outcome::Rejected(reason.to_owned())
    }
}
