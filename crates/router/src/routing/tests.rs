//! Unit tests of the routing logic.

use super::{Policy, Routing};
use crate::store::SqliteStore;
use crate::store::transitions::patch;
use ghost_core::Status;
use ghost_proto::executor::v1::router_message;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A revocation can land after the Hello's second token lookup and before the session's
/// reader watches its cut signal: the session is registered already cut, and dispatch
/// must not queue an Assign to it (the API cannot time that window, so this drives
/// `Routing` directly).
#[tokio::test]
async fn a_session_registered_already_cut_gets_no_assignment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(&dir.path().join("router.db")).expect("store");
    let routing = Routing::new(
        Arc::new(store),
        Policy {
            lease: Duration::from_secs(30),
            max_attempts: 3,
            stale_after: Duration::from_secs(300),
        },
    );
    let targets = vec!["MAIN".to_owned()];
    let (revoked_sender, mut revoked_inbox) = mpsc::channel(8);
    let cut = CancellationToken::new();
    cut.cancel();
    routing
        .connect("revoked", &targets, &[], revoked_sender, cut)
        .await;
    routing
        .submit(
            patch("waiting", "MAIN", &[]),
            "gateway",
            String::new(),
            Vec::new(),
            String::new(),
        )
        .await
        .expect("stored");
    assert!(
        revoked_inbox.try_recv().is_err(),
        "a cut session was given work"
    );
    let record = routing
        .store()
        .get("waiting".to_owned())
        .await
        .expect("read")
        .expect("stored");
    assert_eq!(record.status, Status::Queued);

    let (live_sender, mut live_inbox) = mpsc::channel(8);
    routing
        .connect("live", &targets, &[], live_sender, CancellationToken::new())
        .await;
    let message = live_inbox.try_recv().expect("the live session is assigned");
    assert!(matches!(
        message.map(|message| message.kind),
        Ok(Some(router_message::Kind::Assign(_)))
    ));
}
