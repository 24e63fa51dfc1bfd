//! Runtime API keys kept by the router (`ApiKeyService`): created with a secret shown once and
//! only its SHA-256 stored, listed, revoked with refusals audited like acceptances, learnt by
//! gateways through a snapshot long poll, imported from a gateway's old file, and kept across
//! a restart.

use std::time::{Duration, Instant};

use ghost_proto::router::v1::api_key_service_client::ApiKeyServiceClient;
use ghost_proto::router::v1::{
    ApiKey, CreateApiKeyRequest, ImportApiKeysRequest, ListApiKeysRequest, RevokeApiKeyRequest,
    SnapshotApiKeysRequest, StoredApiKey,
};
use sha2::{Digest, Sha256};
use tonic::Code;

use crate::helpers::{PATIENCE, TestRouter, config, spawn_router};

fn keys(router: &TestRouter) -> ApiKeyServiceClient<tonic::transport::Channel> {
    ApiKeyServiceClient::new(router.channel.clone())
}

fn strings(raw: &[&str]) -> Vec<String> {
    raw.iter().map(|s| (*s).to_owned()).collect()
}

fn new_key(name: &str, scopes: &[&str], targets: &[&str]) -> CreateApiKeyRequest {
    CreateApiKeyRequest {
        name: name.to_owned(),
        scopes: strings(scopes),
        targets: strings(targets),
        actor: "admin-key".to_owned(),
        reserved_names: strings(&["reader"]),
    }
}

fn revoke_as(name: &str, limited_to: Option<&[&str]>) -> RevokeApiKeyRequest {
    RevokeApiKeyRequest {
        name: name.to_owned(),
        actor: "admin-key".to_owned(),
        actor_limited: limited_to.is_some(),
        actor_targets: strings(limited_to.unwrap_or_default()),
        reserved_names: strings(&["reader"]),
    }
}

fn hex_sha256(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// (action, actor, name, detail) of every audit row about API keys, oldest first.
fn key_audit(dir: &std::path::Path) -> Vec<(String, String, String, String)> {
    let conn = rusqlite::Connection::open_with_flags(
        dir.join("router.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open the router's database");
    let mut statement = conn
        .prepare("SELECT action, actor, name, detail FROM token_audit WHERE action LIKE 'api_key.%' ORDER BY id")
        .expect("query");
    statement
        .query_map([], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
        })
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("rows")
}

#[tokio::test]
async fn a_key_is_created_listed_snapshotted_and_revoked_with_every_refusal_audited() {
    let dir = tempfile::tempdir().unwrap();
    let router = spawn_router(config(dir.path())).await;
    let created = keys(&router)
        .create_api_key(new_key(
            "chatgpt",
            &["read", "submit", "read"],
            &["MAIN", "MAIN"],
        ))
        .await
        .expect("created")
        .into_inner();
    let secret = created.secret.clone();
    assert!(secret.starts_with("gr_") && secret.len() == 46, "{secret}");
    let key = created.key.expect("key");
    assert_eq!(key.scopes, ["submit", "read"]);
    assert_eq!(key.targets, ["MAIN"]);
    assert_eq!(key.created_by, "admin-key");

    // The snapshot holds the hash, never the secret; the list holds neither.
    let snapshot = keys(&router)
        .snapshot_api_keys(SnapshotApiKeysRequest {
            since_version: 0,
            wait_ms: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(snapshot.version, created.version);
    assert_eq!(snapshot.keys.len(), 1);
    assert_eq!(snapshot.keys[0].sha256, hex_sha256(&secret));
    let listed = keys(&router)
        .list_api_keys(ListApiKeysRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.keys, vec![key.clone()]);
    // Neither in the database nor in its write-ahead log and shared memory.
    let mut scanned = 0;
    for file in ["router.db", "router.db-wal", "router.db-shm"] {
        let Ok(bytes) = std::fs::read(dir.path().join(file)) else {
            continue;
        };
        scanned += bytes.len();
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "the secret is stored in {file}"
        );
    }
    assert!(scanned > 0, "no database file was scanned");

    // Refused: a taken name, a config key's name, bad scopes, too many targets.
    for (request, code) in [
        (new_key("chatgpt", &["read"], &[]), Code::AlreadyExists),
        (new_key("reader", &["read"], &[]), Code::AlreadyExists),
        (new_key("x", &[], &[]), Code::InvalidArgument),
        (new_key("x", &["root"], &[]), Code::InvalidArgument),
        (new_key("a b", &["read"], &[]), Code::InvalidArgument),
        (
            CreateApiKeyRequest {
                targets: (0..65).map(|i| format!("T{i}")).collect(),
                ..new_key("x", &["read"], &[])
            },
            Code::InvalidArgument,
        ),
    ] {
        let refused = keys(&router).create_api_key(request.clone()).await;
        assert_eq!(refused.unwrap_err().code(), code, "{request:?}");
    }

    // Revocations refused (a config key, an unknown name, a caller limited to other targets)
    // are audited like the accepted one.
    for (request, code) in [
        (revoke_as("reader", None), Code::FailedPrecondition),
        (revoke_as("nobody", None), Code::NotFound),
        (
            revoke_as("chatgpt", Some(&["CYOPS"])),
            Code::PermissionDenied,
        ),
    ] {
        let refused = keys(&router).revoke_api_key(request.clone()).await;
        assert_eq!(refused.unwrap_err().code(), code, "{request:?}");
    }
    let revoked = keys(&router)
        .revoke_api_key(revoke_as("chatgpt", Some(&["MAIN"])))
        .await
        .expect("revoked")
        .into_inner();
    assert!(revoked.version > created.version);
    let audit = key_audit(dir.path());
    let actions: Vec<(&str, &str)> = audit
        .iter()
        .map(|(action, _, name, _)| (action.as_str(), name.as_str()))
        .collect();
    assert!(
        actions.contains(&("api_key.create", "chatgpt")),
        "{audit:?}"
    );
    assert!(
        audit
            .iter()
            .any(|(action, _, name, detail)| action == "api_key.refused"
                && name == "reader"
                && detail.starts_with("create:")),
        "a refused creation with a config key's name is audited: {audit:?}"
    );
    assert!(
        actions.contains(&("api_key.refused", "reader")),
        "{audit:?}"
    );
    assert!(
        actions.contains(&("api_key.refused", "nobody")),
        "{audit:?}"
    );
    assert!(
        actions.contains(&("api_key.refused", "chatgpt")),
        "{audit:?}"
    );
    assert!(
        actions.contains(&("api_key.revoke", "chatgpt")),
        "{audit:?}"
    );
    assert!(
        audit.iter().all(|(_, actor, _, _)| actor == "admin-key"),
        "{audit:?}"
    );
}

#[tokio::test]
async fn a_held_snapshot_is_answered_when_a_key_is_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let router = spawn_router(config(dir.path())).await;
    let created = keys(&router)
        .create_api_key(new_key("held", &["read"], &[]))
        .await
        .unwrap()
        .into_inner();
    let mut client = keys(&router);
    let started = Instant::now();
    let held = tokio::spawn(async move {
        client
            .snapshot_api_keys(SnapshotApiKeysRequest {
                since_version: created.version,
                wait_ms: 30_000,
            })
            .await
            .unwrap()
            .into_inner()
    });
    // Still held while nothing changes (bounded: the revocation below must end it).
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!held.is_finished(), "a current caller is held");
    keys(&router)
        .revoke_api_key(revoke_as("held", None))
        .await
        .unwrap();
    let answer = tokio::time::timeout(PATIENCE, held)
        .await
        .expect("answered on the change")
        .unwrap();
    eprintln!(
        "held snapshot answered {:?} after it was asked (200 ms of it before the revocation)",
        started.elapsed()
    );
    assert!(answer.keys.is_empty(), "{answer:?}");
    assert!(answer.version > created.version);
}

#[tokio::test]
async fn keys_survive_a_restart_and_an_import_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let router = spawn_router(config(dir.path())).await;
    let created = keys(&router)
        .create_api_key(new_key("kept", &["admin"], &[]))
        .await
        .unwrap()
        .into_inner();
    let old = StoredApiKey {
        key: Some(ApiKey {
            name: "from-file".to_owned(),
            scopes: strings(&["read"]),
            targets: strings(&["MAIN"]),
            created_unix_ms: 1_700_000_000_000,
            created_by: "api_key".to_owned(),
            imported: true,
        }),
        sha256: hex_sha256("gr_old-secret"),
    };
    let import = ImportApiKeysRequest {
        keys: vec![old.clone()],
        actor: "gateway import".to_owned(),
    };
    let first = keys(&router)
        .import_api_keys(import.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!((first.imported, first.present), (1, 0));
    let again = keys(&router)
        .import_api_keys(import)
        .await
        .unwrap()
        .into_inner();
    assert_eq!((again.imported, again.present), (0, 1));
    // A name held by another secret refuses the whole import.
    let mut other = old.clone();
    other.sha256 = hex_sha256("gr_another");
    let conflict = keys(&router)
        .import_api_keys(ImportApiKeysRequest {
            keys: vec![other],
            actor: "gateway import".to_owned(),
        })
        .await
        .unwrap_err();
    assert_eq!(conflict.code(), Code::AlreadyExists, "{conflict:?}");
    router.stop().await;

    let router = spawn_router(config(dir.path())).await;
    let snapshot = keys(&router)
        .snapshot_api_keys(SnapshotApiKeysRequest {
            since_version: 0,
            wait_ms: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = snapshot
        .keys
        .iter()
        .map(|k| k.key.as_ref().unwrap().name.as_str())
        .collect();
    assert_eq!(names, ["kept", "from-file"]);
    assert_eq!(snapshot.keys[0].sha256, hex_sha256(&created.secret));
    assert_eq!(snapshot.keys[1].sha256, old.sha256);
    assert!(snapshot.version > created.version);
}

/// The largest key set the router keeps (1,000 keys with the longest names and creators,
/// 10,000 targets of 64 characters in all) reaches a client with tonic's default 4 MiB
/// decoding limit; a key past either bound is refused, naming it.
#[tokio::test]
async fn the_largest_key_set_fits_one_snapshot_and_creation_past_the_bounds_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let router = spawn_router(config(dir.path())).await;
    let mut client = keys(&router);
    // 64 invisible characters: the creator's name escaped as long as it can be.
    let actor: String = std::iter::repeat_n('\u{202e}', 64).collect();
    let name = |i: usize| format!("{i:0>64}");
    let targets = |i: usize, n: usize| -> Vec<String> {
        (0..n)
            .map(|t| format!("T{i:05}{t:03}{}", "X".repeat(55)))
            .collect()
    };
    let started = Instant::now();
    let mut made = 0;
    // 156 keys of 64 targets: 9,984 targets.
    while made < 156 {
        client
            .create_api_key(CreateApiKeyRequest {
                name: name(made),
                scopes: strings(&["submit", "read", "admin"]),
                targets: targets(made, 64),
                actor: actor.clone(),
                reserved_names: Vec::new(),
            })
            .await
            .unwrap_or_else(|err| panic!("key {made}: {err:?}"));
        made += 1;
    }
    let past = client
        .create_api_key(CreateApiKeyRequest {
            name: name(made),
            scopes: strings(&["read"]),
            targets: targets(made, 17),
            actor: actor.clone(),
            reserved_names: Vec::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(past.code(), Code::ResourceExhausted, "{past:?}");
    assert!(
        past.message().contains("10001") && past.message().contains("10000"),
        "{past:?}"
    );
    // Exactly 10,000 targets, then keys for every target up to 1,000 keys.
    while made < 1_000 {
        let n = if made == 156 { 16 } else { 0 };
        client
            .create_api_key(CreateApiKeyRequest {
                name: name(made),
                scopes: strings(&["submit", "read", "admin"]),
                targets: targets(made, n),
                actor: actor.clone(),
                reserved_names: Vec::new(),
            })
            .await
            .unwrap_or_else(|err| panic!("key {made}: {err:?}"));
        made += 1;
    }
    let full = client
        .create_api_key(new_key("one-more", &["read"], &[]))
        .await
        .unwrap_err();
    assert_eq!(full.code(), Code::ResourceExhausted, "{full:?}");
    eprintln!("1,000 keys created in {:?}", started.elapsed());

    let snapshot = keys(&router)
        .snapshot_api_keys(SnapshotApiKeysRequest {
            since_version: 0,
            wait_ms: 0,
        })
        .await
        .expect("the largest set fits one snapshot at the default 4 MiB")
        .into_inner();
    assert_eq!(snapshot.keys.len(), 1_000);
    let bytes: usize = snapshot
        .keys
        .iter()
        .map(|stored| {
            let key = stored.key.as_ref().unwrap();
            stored.sha256.len()
                + key.name.len()
                + key.created_by.len()
                + key.scopes.iter().map(|s| s.len() + 2).sum::<usize>()
                + key.targets.iter().map(|t| t.len() + 2).sum::<usize>()
                + 24
        })
        .sum();
    eprintln!("the largest snapshot is about {bytes} bytes");
    assert!(bytes < 2 * 1024 * 1024, "{bytes} bytes");
    let listed = keys(&router)
        .list_api_keys(ListApiKeysRequest {})
        .await
        .expect("the largest set fits one list")
        .into_inner();
    assert_eq!(listed.keys.len(), 1_000);
}

/// A revoked key is never brought back by an import (under its name or another): its hash is
/// remembered; imported keys are marked; every import call is audited, refused or not.
#[tokio::test]
async fn an_import_never_revives_a_revoked_key_and_every_import_is_audited() {
    let dir = tempfile::tempdir().unwrap();
    let router = spawn_router(config(dir.path())).await;
    let created = keys(&router)
        .create_api_key(new_key("made", &["read"], &[]))
        .await
        .unwrap()
        .into_inner();
    let stored = |name: &str, sha256: String| StoredApiKey {
        key: Some(ApiKey {
            name: name.to_owned(),
            scopes: strings(&["read"]),
            targets: Vec::new(),
            created_unix_ms: 1_700_000_000_000,
            created_by: "api_key".to_owned(),
            imported: true,
        }),
        sha256,
    };
    let import = |keys: Vec<StoredApiKey>| ImportApiKeysRequest {
        keys,
        actor: "gateway import".to_owned(),
    };
    let old = stored("from-file", hex_sha256("gr_old-secret"));
    let first = keys(&router)
        .import_api_keys(import(vec![old.clone()]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((first.imported, first.present), (1, 0));
    let listed = keys(&router)
        .list_api_keys(ListApiKeysRequest {})
        .await
        .unwrap()
        .into_inner();
    let flags: Vec<(&str, bool)> = listed
        .keys
        .iter()
        .map(|key| (key.name.as_str(), key.imported))
        .collect();
    assert_eq!(flags, [("made", false), ("from-file", true)]);

    for name in ["made", "from-file"] {
        keys(&router)
            .revoke_api_key(revoke_as(name, None))
            .await
            .unwrap();
    }
    // Neither comes back: not under its name, not under another.
    for again in [
        old.clone(),
        stored("renamed", hex_sha256("gr_old-secret")),
        stored("made", hex_sha256(&created.secret)),
        stored("made-again", hex_sha256(&created.secret)),
    ] {
        let refused = keys(&router)
            .import_api_keys(import(vec![
                again.clone(),
                stored("innocent", hex_sha256("gr_new")),
            ]))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::FailedPrecondition, "{again:?}");
        assert!(refused.message().contains("revoked"), "{refused:?}");
    }
    let after = keys(&router)
        .snapshot_api_keys(SnapshotApiKeysRequest {
            since_version: 0,
            wait_ms: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(after.keys.is_empty(), "nothing was stored: {after:?}");
    // Across a restart too.
    router.stop().await;
    let router = spawn_router(config(dir.path())).await;
    let refused = keys(&router)
        .import_api_keys(import(vec![old]))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");

    let audit = key_audit(dir.path());
    let imports = audit
        .iter()
        .filter(|(action, actor, _, _)| action == "api_key.import" && actor == "gateway import")
        .count();
    let refusals = audit
        .iter()
        .filter(|(action, actor, _, detail)| {
            action == "api_key.refused" && actor == "gateway import" && detail.contains("revoked")
        })
        .count();
    assert!(imports >= 2, "{audit:?}");
    assert_eq!(refusals, 5, "{audit:?}");
}
