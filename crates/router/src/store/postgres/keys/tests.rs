//! Each scenario runs against [`SqliteStore`] (through [`RouterStore`]) and against the
//! PostgreSQL functions on a real server the test starts itself, and compares the answers and
//! the audit rows; the concurrency tests run two tasks against PostgreSQL alone (SQLite has one
//! writer).

use std::path::PathBuf;

use ghost_testkit::postgres::TempPostgres;
use sqlx::postgres::{PgPool, PgPoolOptions};

use super::super::super::{RouterStore, SqliteStore};
use super::*;

/// One SQLite store and one fresh PostgreSQL database holding [`SCHEMA`].
pub(in super::super) struct Both {
    /// The SQLite store.
    pub sqlite: SqliteStore,
    /// A pool on the PostgreSQL database.
    pub pg: PgPool,
    /// The SQLite database file.
    pub path: PathBuf,
    _dir: tempfile::TempDir,
    _server: TempPostgres,
}

impl Both {
    /// `None` (printed) when PostgreSQL is not installed.
    pub async fn start(test: &str) -> Option<Self> {
        let server = TempPostgres::start_or_skip(test)?;
        let url = server.create_database();
        let pg = PgPoolOptions::new()
            .max_connections(4)
            .connect(&url)
            .await
            .expect("connect");
        sqlx::raw_sql(SCHEMA).execute(&pg).await.expect("schema");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("router.db");
        let sqlite = SqliteStore::open(&path).expect("sqlite");
        Some(Self {
            sqlite,
            pg,
            path,
            _dir: dir,
            _server: server,
        })
    }

    /// The token audit trail of each store, oldest first, without times.
    pub async fn audit(&self) -> (Vec<AuditRow>, Vec<AuditRow>) {
        let conn = rusqlite::Connection::open(&self.path).expect("open");
        let sqlite = conn
            .prepare("SELECT action, token_id, name, actor, detail FROM token_audit ORDER BY id")
            .expect("query")
            .query_map([], |row| {
                Ok((
                    row.get(0)?,
                    row.get(1)?,
                    row.get(2)?,
                    row.get(3)?,
                    row.get(4)?,
                ))
            })
            .expect("rows")
            .collect::<Result<Vec<AuditRow>, _>>()
            .expect("rows");
        let pg = sqlx::query(
            "SELECT action, token_id, name, actor, detail FROM token_audit ORDER BY id",
        )
        .fetch_all(&self.pg)
        .await
        .expect("rows")
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4)))
        .collect();
        (sqlite, pg)
    }
}

/// (action, token id, name, actor, detail).
pub(in super::super) type AuditRow = (String, i64, String, String, String);

/// Calls `method` with the same arguments on both stores (the arguments are evaluated once per
/// store) and returns (SQLite's answer, PostgreSQL's answer).
macro_rules! on_both {
    ($both:expr, $method:ident ( $($arg:expr),* $(,)? )) => {{
        let sqlite = $both.sqlite.$method($($arg),*).await.expect("sqlite");
        let pg = super::$method(&$both.pg, $($arg),*).await.expect("postgres");
        (sqlite, pg)
    }};
}
pub(in super::super) use on_both;

/// [`on_both!`], asserting both answers print the same; returns PostgreSQL's.
macro_rules! same {
    ($both:expr, $method:ident ( $($arg:expr),* $(,)? )) => {{
        let (sqlite, pg) = on_both!($both, $method($($arg),*));
        assert_eq!(
            format!("{sqlite:?}"),
            format!("{pg:?}"),
            concat!(stringify!($method), ": SQLite, then PostgreSQL")
        );
        pg
    }};
}
pub(in super::super) use same;

fn strings(raw: &[&str]) -> Vec<String> {
    raw.iter().map(|s| (*s).to_owned()).collect()
}

fn new_token(name: &str, hash: &str, targets: &[&str]) -> NewToken {
    NewToken {
        name: name.to_owned(),
        hash: hash.to_owned(),
        targets: strings(targets),
        actor: "admin".to_owned(),
    }
}

fn new_key(name: &str, sha256: &str, targets: &[&str]) -> NewApiKey {
    NewApiKey {
        name: name.to_owned(),
        sha256: sha256.to_owned(),
        scopes: strings(&["read", "submit"]),
        targets: strings(targets),
        created_ms: 1_700_000_000_000,
        created_by: "admin-key".to_owned(),
    }
}

fn revoker(targets: Option<&[&str]>) -> Revoker {
    Revoker {
        actor: "admin-key".to_owned(),
        targets: targets.map(strings),
    }
}

/// A token without its wall-clock times (created now, revoked now: compared as set or not).
fn timeless(token: &TokenRow) -> TokenRow {
    assert!(token.created_ms > 1_700_000_000_000, "{token:?}");
    TokenRow {
        created_ms: 0,
        revoked_ms: i64::from(token.revoked_ms != 0),
        ..token.clone()
    }
}

fn timeless_revoked(revoked: &Revoked) -> String {
    match revoked {
        Revoked::Now(token) => format!("Now({:?})", timeless(token)),
        other => format!("{other:?}"),
    }
}

/// Both stores' answers to one call returning an optional token, compared without times.
fn same_token(method: &str, sqlite: Option<TokenRow>, pg: Option<TokenRow>) -> Option<TokenRow> {
    assert_eq!(
        sqlite.as_ref().map(timeless),
        pg.as_ref().map(timeless),
        "{method}"
    );
    pg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_answer_and_are_audited_as_on_sqlite() {
    let Some(both) = Both::start("keys::tokens_answer_and_are_audited_as_on_sqlite").await else {
        return;
    };
    assert!(!same!(both, any_token()));
    let (sqlite, pg) = on_both!(both, create_token(new_token("a", "h1", &["MAIN", "CYOPS"])));
    let first = same_token("create", sqlite, pg).expect("created");
    assert_eq!(first.targets, ["MAIN", "CYOPS"]);
    // A live name, then a known secret under another name: refused, not audited.
    for refused in [new_token("a", "h2", &["MAIN"]), new_token("b", "h1", &[])] {
        let (sqlite, pg) = on_both!(both, create_token(refused.clone()));
        assert_eq!(same_token("create again", sqlite, pg), None, "{refused:?}");
    }
    assert!(same!(both, any_token()));
    let (sqlite, pg) = on_both!(both, token_by_hash("h1".to_owned()));
    assert_eq!(same_token("by hash", sqlite, pg), Some(first.clone()));
    let (sqlite, pg) = on_both!(both, token_by_hash("nope".to_owned()));
    assert_eq!(same_token("unknown hash", sqlite, pg), None);
    same!(both, token_used(first.id, 1_800_000_000_000));
    for (name, expected) in [("a", "Now"), ("a", "Already"), ("zzz", "Unknown")] {
        let (sqlite, pg) = on_both!(both, revoke_token(name.to_owned(), "admin".to_owned()));
        assert_eq!(timeless_revoked(&sqlite), timeless_revoked(&pg), "{name}");
        assert!(timeless_revoked(&pg).starts_with(expected), "{pg:?}");
    }
    // A revoked name is issued again, under a new id.
    let (sqlite, pg) = on_both!(both, create_token(new_token("a", "h3", &["MAIN"])));
    let again = same_token("issued again", sqlite, pg).expect("issued again");
    assert!(again.id > first.id);
    same!(
        both,
        audit_token(
            "refused".to_owned(),
            again.id,
            "a".to_owned(),
            "peer 127.0.0.1".to_owned(),
            "scope".to_owned()
        )
    );
    let (sqlite, pg) = on_both!(both, tokens());
    let listed: Vec<TokenRow> = pg.iter().map(timeless).collect();
    assert_eq!(sqlite.iter().map(timeless).collect::<Vec<_>>(), listed);
    assert_eq!(listed.len(), 2);
    assert_eq!(pg[0].last_used_ms, 1_800_000_000_000);
    assert!(pg[0].revoked_ms > 0 && pg[1].revoked_ms == 0, "{pg:?}");
    let (sqlite, pg) = both.audit().await;
    assert_eq!(sqlite, pg);
    let actions: Vec<&str> = pg.iter().map(|row| row.0.as_str()).collect();
    assert_eq!(actions, ["create", "revoke", "create", "refused"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_answer_and_are_audited_as_on_sqlite() {
    let Some(both) = Both::start("keys::api_keys_answer_and_are_audited_as_on_sqlite").await else {
        return;
    };
    assert_eq!(same!(both, api_keys()).1, 0);
    let created = same!(both, create_api_key(new_key("main", "s1", &["MAIN"])));
    assert!(matches!(created, KeyCreated::Created(_, 1)), "{created:?}");
    same!(both, create_api_key(new_key("all", "s2", &[])));
    for refused in [new_key("main", "s9", &[]), new_key("other", "s1", &[])] {
        let answer = same!(both, create_api_key(refused.clone()));
        assert!(matches!(answer, KeyCreated::NameTaken), "{answer:?}");
    }
    // Refused revocations: unknown; a narrower caller; a limited caller and a key for all.
    for (name, limited) in [
        ("nobody", None),
        ("main", Some(&["CYOPS"][..])),
        ("all", Some(&["MAIN"][..])),
    ] {
        let answer = same!(both, revoke_api_key(name.to_owned(), revoker(limited)));
        assert!(
            matches!(answer, KeyRevoked::Unknown | KeyRevoked::Wider(_)),
            "{answer:?}"
        );
    }
    let revoked = same!(
        both,
        revoke_api_key("main".to_owned(), revoker(Some(&["MAIN", "CYOPS"])))
    );
    assert!(matches!(revoked, KeyRevoked::Now(_, 3)), "{revoked:?}");
    // Imports: fresh and present; then all or none (a conflict, a revoked secret).
    let file = vec![new_key("f1", "s3", &["MAIN"]), new_key("all", "s2", &[])];
    let done = same!(
        both,
        import_api_keys(file.clone(), "gateway import".to_owned())
    );
    assert!(matches!(done, KeysImported::Done(1, 1, 4)), "{done:?}");
    let again = same!(
        both,
        import_api_keys(file.clone(), "gateway import".to_owned())
    );
    assert!(matches!(again, KeysImported::Done(0, 2, 4)), "{again:?}");
    for refused in [
        vec![new_key("f2", "s4", &[]), new_key("f1", "s5", &[])],
        vec![new_key("f3", "s6", &[]), new_key("renamed", "s1", &[])],
    ] {
        let answer = same!(
            both,
            import_api_keys(refused.clone(), "gateway import".to_owned())
        );
        assert!(
            matches!(answer, KeysImported::Conflict(_) | KeysImported::Revoked(_)),
            "{answer:?}"
        );
    }
    let (keys, version) = same!(both, api_keys());
    let names: Vec<&str> = keys.iter().map(|key| key.name.as_str()).collect();
    assert_eq!(
        (names, version),
        (vec!["all", "f1"], 4),
        "nothing of a refused import"
    );
    assert!(keys[1].imported && !keys[0].imported);
    let (sqlite, pg) = both.audit().await;
    assert_eq!(sqlite, pg);
    assert_eq!(pg.len(), 13, "{pg:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_limits_hold_as_on_sqlite() {
    let Some(both) = Both::start("keys::key_limits_hold_as_on_sqlite").await else {
        return;
    };
    let many = |from: usize, count: usize, targets: usize| -> Vec<NewApiKey> {
        (from..from + count)
            .map(|i| {
                let targets: Vec<String> = (0..targets).map(|t| format!("T{i}-{t}")).collect();
                let targets: Vec<&str> = targets.iter().map(String::as_str).collect();
                new_key(&format!("k{i}"), &format!("s{i}"), &targets)
            })
            .collect()
    };
    let actor = || "gateway import".to_owned();
    // 157 keys of 64 targets: 10,048 targets, refused as a whole.
    let answer = same!(both, import_api_keys(many(0, 157, 64), actor()));
    assert!(
        matches!(answer, KeysImported::TooManyTargets(10_048)),
        "{answer:?}"
    );
    same!(both, import_api_keys(many(0, 156, 64), actor()));
    let answer = same!(both, create_api_key(many(156, 1, 17).remove(0)));
    assert!(
        matches!(answer, KeyCreated::TooManyTargets(10_001)),
        "{answer:?}"
    );
    same!(both, create_api_key(many(156, 1, 16).remove(0)));
    same!(
        both,
        import_api_keys(many(157, MAX_API_KEYS - 158, 0), actor())
    );
    let answer = same!(both, import_api_keys(many(2_000, 2, 0), actor()));
    assert!(matches!(answer, KeysImported::Full(1_001)), "{answer:?}");
    same!(both, import_api_keys(many(2_000, 1, 0), actor()));
    let answer = same!(both, create_api_key(new_key("one-more", "x", &[])));
    assert!(matches!(answer, KeyCreated::Full), "{answer:?}");
    let (keys, version) = same!(both, api_keys());
    assert_eq!((keys.len(), version), (MAX_API_KEYS, 4));
    let (sqlite, pg) = both.audit().await;
    assert_eq!(sqlite, pg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_racing_keep_the_limits_and_revoke_once() {
    let Some(both) = Both::start("keys::two_replicas_racing_keep_the_limits_and_revoke_once").await
    else {
        return;
    };
    let pool = both.pg.clone();
    let create = |key: NewApiKey| {
        let pool = pool.clone();
        tokio::spawn(async move { create_api_key(&pool, key).await })
    };
    let revoke = |name: &str| {
        let (pool, name) = (pool.clone(), name.to_owned());
        tokio::spawn(async move { revoke_api_key(&pool, name, revoker(None)).await })
    };
    let token = |token: NewToken| {
        let pool = pool.clone();
        tokio::spawn(async move { create_token(&pool, token).await })
    };
    let filler: Vec<NewApiKey> = (0..MAX_API_KEYS - 1)
        .map(|i| new_key(&format!("k{i}"), &format!("s{i}"), &[]))
        .collect();
    import_api_keys(&pool, filler, "import".to_owned())
        .await
        .expect("filled");
    // Two creations for the one place left: one is stored, the other finds the set full.
    let (left, right) = tokio::join!(
        create(new_key("left", "l", &[])),
        create(new_key("right", "r", &[])),
    );
    let answers = [left.expect("task"), right.expect("task")].map(|answer| answer.expect("pg"));
    let stored = answers
        .iter()
        .filter(|answer| matches!(answer, KeyCreated::Created(..)))
        .count();
    let full = answers
        .iter()
        .filter(|answer| matches!(answer, KeyCreated::Full))
        .count();
    assert_eq!((stored, full), (1, 1), "{answers:?}");
    let (keys, version) = api_keys(&pool).await.expect("keys");
    assert_eq!((keys.len(), version), (MAX_API_KEYS, 2));
    // Two revocations of one key: one revokes it (one version more), the other finds none.
    let (left, right) = tokio::join!(revoke("k0"), revoke("k0"),);
    let answers = [left.expect("task"), right.expect("task")].map(|answer| answer.expect("pg"));
    let now = answers
        .iter()
        .filter(|answer| matches!(answer, KeyRevoked::Now(_, 3)))
        .count();
    assert_eq!(now, 1, "{answers:?}");
    // Two tokens of one name: one is created.
    let (left, right) = tokio::join!(
        token(new_token("t", "h1", &["MAIN"])),
        token(new_token("t", "h2", &["MAIN"])),
    );
    let created = [left.expect("task"), right.expect("task")]
        .map(|answer| answer.expect("pg"))
        .iter()
        .filter(|answer| answer.is_some())
        .count();
    assert_eq!(created, 1);
}

/// The PostgreSQL trail keeps what SQLite's keeps (see the SQLite store's tests of the same):
/// the last rows of each kind, none older than 90 days, and a flood of refusals never pushes
/// out the record of changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_audit_is_bounded_as_on_sqlite() {
    let Some(both) = Both::start("keys::the_token_audit_is_bounded_as_on_sqlite").await else {
        return;
    };
    let pool = &both.pg;
    let now = now_ms();
    let audit = |action: &str, name: &str| {
        audit_token(
            pool,
            action.to_owned(),
            0,
            name.to_owned(),
            "x".to_owned(),
            String::new(),
        )
    };
    audit("api_key.create", "made").await.expect("audit");
    audit("issue", "token").await.expect("audit");
    sqlx::query(
        "INSERT INTO token_audit (at_ms, action, name, actor) VALUES ($1, 'refused', 'old', 'x')",
    )
    .bind(now - AUDIT_KEEP_MS - 1)
    .execute(pool)
    .await
    .expect("old row");
    sqlx::query(
        "INSERT INTO token_audit (at_ms, action, name, actor)
         SELECT $1, 'api_key.refused', 'flood', 'x' FROM generate_series(1, $2)",
    )
    .bind(now)
    .bind(AUDIT_KEEP_ROWS)
    .execute(pool)
    .await
    .expect("flood");
    let started = std::time::Instant::now();
    audit("api_key.refused", "newest").await.expect("audit");
    // A figure, not asserted: one audit row written and the trail trimmed.
    eprintln!(
        "one refusal audited with {} rows in the trail: {:?}",
        AUDIT_KEEP_ROWS + 3,
        started.elapsed()
    );
    audit("refused", "newest-token").await.expect("audit");
    let counts = sqlx::query(
        "SELECT COUNT(*) FILTER (WHERE action LIKE '%refused'),
                COUNT(*) FILTER (WHERE name IN ('made', 'token')),
                COUNT(*) FILTER (WHERE name LIKE 'newest%'),
                COUNT(*) FILTER (WHERE name = 'old')
         FROM token_audit",
    )
    .fetch_one(pool)
    .await
    .expect("count");
    let counts: [i64; 4] = [0, 1, 2, 3].map(|index| counts.get(index));
    assert_eq!(counts, [AUDIT_KEEP_ROWS, 2, 2, 0]);
}

/// PostgreSQL's TEXT cannot hold NUL, which SQLite stores: a NUL reaching a store call (the
/// token service's `actor` is not escaped by its caller) is a database error about that call
/// only, never a lost server, and nothing of it is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nul_in_text_is_refused_by_postgres_and_nothing_is_stored() {
    let Some(both) = Both::start("keys::a_nul_in_text_is_refused_by_postgres").await else {
        return;
    };
    let mut token = new_token("a", "h1", &["MAIN"]);
    token.actor = "ad\0min".to_owned();
    let sqlite = both.sqlite.create_token(token.clone()).await;
    assert!(matches!(sqlite, Ok(Some(_))), "{sqlite:?}");
    let refused = create_token(&both.pg, token).await;
    let Err(StoreError::Postgres(sqlx::Error::Database(err))) = &refused else {
        panic!("{refused:?}");
    };
    assert_eq!(err.code().as_deref(), Some("22021"), "{err}");
    assert!(!any_token(&both.pg).await.expect("still serving"));
    assert!(both.audit().await.1.is_empty());
}
