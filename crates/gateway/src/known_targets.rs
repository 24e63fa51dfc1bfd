//! Which targets a patch may name. Known are the configured `targets` (names and aliases) and
//! the targets an executor has served through the router since this gateway started (read with
//! `ListTargets`, `executor_online`). A patch naming any other target is refused with 422,
//! naming the known targets and the nearest one ("did you mean MAIN?", by case-insensitive
//! edit distance), unless `accept_unknown_targets` is set: a typo'd target would otherwise wait
//! forever for an executor that never comes.
//!
//! The router is asked only when a name is not known already, and at most once per
//! [`REFRESH_EVERY`] however many such requests arrive: unknown names cannot turn into one
//! router call each.

use std::collections::BTreeSet;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use ghost_core::TargetName;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::error::GatewayError;
use crate::patches::PatchQueue;

/// Least time between two reads of the router's target list.
pub const REFRESH_EVERY: Duration = Duration::from_secs(1);

/// Known targets named in a refusal at most; the rest are counted.
const LISTED_AT_MOST: usize = 20;

/// The check every intake path makes before a patch is queued.
pub struct KnownTargets {
    configured: BTreeSet<String>,
    accept_unknown: bool,
    queue: Arc<dyn PatchQueue>,
    /// Targets executors were seen serving (only ever grows: an executor restarting does not
    /// make its target unknown).
    served: RwLock<BTreeSet<String>>,
    /// When the router was last asked; held while asking, so one request asks at a time.
    read_at: Mutex<Option<Instant>>,
}

/// A patch named a target that is neither configured nor served: what the caller is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownTarget {
    /// The name the patch gave.
    pub target: String,
    /// The known name nearest to it, when one is near enough to be a likely typo.
    pub nearest: Option<String>,
    /// Every known target, sorted.
    pub known: Vec<String>,
}

impl std::fmt::Display for UnknownTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unknown target {:?}", self.target)?;
        if let Some(nearest) = &self.nearest {
            write!(f, "; did you mean {nearest}?")?;
        }
        if self.known.is_empty() {
            return write!(
                f,
                "; no target is known yet (configure gateway `targets`, or connect an executor serving it)"
            );
        }
        let listed: Vec<&str> = self
            .known
            .iter()
            .take(LISTED_AT_MOST)
            .map(String::as_str)
            .collect();
        write!(f, "; known targets: {}", listed.join(", "))?;
        if self.known.len() > LISTED_AT_MOST {
            write!(f, " and {} more", self.known.len() - LISTED_AT_MOST)?;
        }
        Ok(())
    }
}

impl KnownTargets {
    /// Targets from config (`names` with their aliases), the router's served ones through
    /// `queue`; `accept_unknown` turns the check off.
    pub fn new(
        configured: impl IntoIterator<Item = String>,
        accept_unknown: bool,
        queue: Arc<dyn PatchQueue>,
    ) -> Self {
        Self {
            configured: configured.into_iter().collect(),
            accept_unknown,
            queue,
            served: RwLock::new(BTreeSet::new()),
            read_at: Mutex::new(None),
        }
    }

    /// Accepts every target (no check): for logic built without a config.
    pub fn accept_all(queue: Arc<dyn PatchQueue>) -> Self {
        Self::new([], true, queue)
    }

    /// Ok when `target` is known (or unknown targets are accepted); a 422 naming the known
    /// targets and the nearest one otherwise. A router that cannot be reached while a name is
    /// not known yet answers as the router would (503).
    ///
    /// The names are not filtered by the caller's target allowlist: that check runs first
    /// (403), so a restricted credential gets here only for a name its own allowlist holds, and
    /// the inbox's per-directory caller is exactly the one that needs "did you mean MAIN?".
    pub async fn check(&self, target: &TargetName) -> Result<(), GatewayError> {
        if self.accept_unknown || self.configured.contains(target.as_str()) {
            return Ok(());
        }
        if self.is_served(target) {
            return Ok(());
        }
        let mut read_at = self.read_at.lock().await;
        // Another request may have asked the router while this one waited for its turn.
        if self.is_served(target) {
            return Ok(());
        }
        if read_at.is_none_or(|at| at.elapsed() >= REFRESH_EVERY) {
            *read_at = Some(Instant::now());
            match self.queue.targets().await {
                Ok(views) => self.served_mut().extend(
                    views
                        .into_iter()
                        .filter(|view| view.executor_online)
                        .map(|view| view.target),
                ),
                // A router without ListTargets serves no names beyond the configured ones.
                Err(GatewayError::NotImplemented(_)) => {}
                Err(err) => return Err(err),
            }
            if self.is_served(target) {
                return Ok(());
            }
        }
        drop(read_at);
        let known: Vec<String> = self.configured.union(&self.served()).cloned().collect();
        Err(GatewayError::UnknownTarget(UnknownTarget {
            target: target.to_string(),
            nearest: nearest(target.as_str(), &known),
            known,
        }))
    }
}

impl KnownTargets {
    fn served(&self) -> std::sync::RwLockReadGuard<'_, BTreeSet<String>> {
        self.served.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn served_mut(&self) -> std::sync::RwLockWriteGuard<'_, BTreeSet<String>> {
        self.served.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn is_served(&self, target: &TargetName) -> bool {
        self.served().contains(target.as_str())
    }
}

/// The candidate closest to `name` ignoring case, if within a third of its length (at least
/// one edit): `MIAN` → `MAIN`, `main` → `MAIN`, `XYZZY` → none.
pub fn nearest(name: &str, candidates: &[String]) -> Option<String> {
    let wanted = name.to_lowercase();
    let allowed = (wanted.chars().count() / 3).max(1);
    candidates
        .iter()
        .map(|candidate| (edit_distance(&wanted, &candidate.to_lowercase()), candidate))
        .filter(|(distance, _)| *distance <= allowed)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate.clone())
}

/// Optimal string alignment distance: insertions, deletions, substitutions and swaps of two
/// neighbours (the commonest typo, `MIAN`) each cost one.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let width = b.len() + 1;
    let mut rows = vec![0usize; (a.len() + 1) * width];
    let at = |i: usize, j: usize| i * width + j;
    for i in 0..=a.len() {
        rows[at(i, 0)] = i;
    }
    for j in 0..=b.len() {
        rows[at(0, j)] = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (rows[at(i - 1, j)] + 1)
                .min(rows[at(i, j - 1)] + 1)
                .min(rows[at(i - 1, j - 1)] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(rows[at(i - 2, j - 2)] + 1);
            }
            rows[at(i, j)] = best;
        }
    }
    rows[at(a.len(), b.len())]
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::patches::fake::FakeRouter;

    fn target(name: &str) -> TargetName {
        TargetName::parse(name).expect("target")
    }

    #[tokio::test(start_paused = true)]
    async fn the_router_is_asked_at_most_once_a_second_however_many_unknown_names_arrive() {
        let router = Arc::new(FakeRouter::serving(&["MAIN"]));
        let known = KnownTargets::new(["CYOPS".to_owned()], false, Arc::clone(&router) as _);
        // Configured: no call.
        assert!(known.check(&target("CYOPS")).await.is_ok());
        assert_eq!(router.calls.load(Ordering::SeqCst), 0);
        for index in 0..200 {
            let refused = known.check(&target(&format!("NOBODY{index}"))).await;
            assert!(
                matches!(refused, Err(GatewayError::UnknownTarget(_))),
                "{refused:?}"
            );
        }
        assert_eq!(router.calls.load(Ordering::SeqCst), 1);
        // Served since that call: known without another.
        assert!(known.check(&target("MAIN")).await.is_ok());
        assert_eq!(router.calls.load(Ordering::SeqCst), 1);
        // A target an executor starts serving is found on the first miss a second later.
        router.served.lock().expect("lock").push("LATE".to_owned());
        assert!(known.check(&target("LATE")).await.is_err());
        tokio::time::advance(REFRESH_EVERY).await;
        assert!(known.check(&target("LATE")).await.is_ok());
        assert_eq!(router.calls.load(Ordering::SeqCst), 2);
        // Still served after its executor left: a restart does not make a target unknown.
        router.served.lock().expect("lock").clear();
        tokio::time::advance(REFRESH_EVERY).await;
        assert!(known.check(&target("NOBODY")).await.is_err());
        assert!(known.check(&target("LATE")).await.is_ok());
        assert!(known.check(&target("MAIN")).await.is_ok());
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|name| (*name).to_owned()).collect()
    }

    #[test]
    fn typos_find_the_target_they_meant() {
        let known = names(&["CYOPS", "MAIN", "BRAUN"]);
        assert_eq!(nearest("MIAN", &known).as_deref(), Some("MAIN"));
        assert_eq!(nearest("main", &known).as_deref(), Some("MAIN"));
        assert_eq!(nearest("CYOP", &known).as_deref(), Some("CYOPS"));
        assert_eq!(nearest("XYZZYQ", &known), None);
        assert_eq!(nearest("MAIN", &[]), None);
    }

    #[test]
    fn distances_count_swaps_as_one_edit() {
        assert_eq!(edit_distance("mian", "main"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
    }

    #[test]
    fn a_refusal_names_the_nearest_and_the_known_targets() {
        let refusal = UnknownTarget {
            target: "MIAN".to_owned(),
            nearest: Some("MAIN".to_owned()),
            known: names(&["CYOPS", "MAIN"]),
        };
        assert_eq!(
            refusal.to_string(),
            "unknown target \"MIAN\"; did you mean MAIN?; known targets: CYOPS, MAIN"
        );
        let many = UnknownTarget {
            target: "X".to_owned(),
            nearest: None,
            known: (0..25).map(|i| format!("T{i:02}")).collect(),
        };
        assert!(many.to_string().ends_with("T19 and 5 more"), "{many}");
    }
}
