//! A guard on status names written into SQL text: every quoted word the stores' SQL compares
//! with or writes to a `status` column must be the wire name of a [`ghost_core::Status`], so a
//! renamed status cannot leave a query matching nothing.

/// The SQL sources of both stores.
const SOURCES: [(&str, &str); 10] = [
    ("sqlite/queue.rs", include_str!("sqlite/queue.rs")),
    ("sqlite/lifecycle.rs", include_str!("sqlite/lifecycle.rs")),
    ("sqlite/reads.rs", include_str!("sqlite/reads.rs")),
    ("sqlite/records.rs", include_str!("sqlite/records.rs")),
    ("stats.rs", include_str!("stats.rs")),
    ("postgres/queue.rs", include_str!("postgres/queue.rs")),
    ("postgres/patches.rs", include_str!("postgres/patches.rs")),
    ("postgres/reads.rs", include_str!("postgres/reads.rs")),
    ("postgres/mod.rs", include_str!("postgres/mod.rs")),
    ("schema.rs", include_str!("schema.rs")),
];

/// Quoted words on a line of SQL that names `status` (or on the line after one, for an
/// `INSERT (…, status, …) VALUES (…, 'x', …)` split over two lines).
fn status_words(source: &str) -> Vec<(usize, String)> {
    let mut words = Vec::new();
    let mut previous_names_status = false;
    for (number, line) in source.lines().enumerate() {
        let names_status = line.contains("status");
        if names_status || previous_names_status {
            let mut parts = line.split('\'');
            parts.next();
            while let (Some(word), Some(_)) = (parts.next(), parts.next()) {
                if !word.is_empty() && word.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                    words.push((number + 1, word.to_owned()));
                }
            }
        }
        previous_names_status = names_status && !line.contains(';');
    }
    words
}

#[test]
fn every_status_named_in_sql_is_a_status() {
    // Quoted words on such lines that are not statuses (severity, keys).
    const NOT_STATUSES: [&str; 5] = ["info", "seq", "fencing_token_seq", "old", "router"];
    let mut checked = 0;
    for (file, source) in SOURCES {
        for (line, word) in status_words(source) {
            if NOT_STATUSES.contains(&word.as_str()) {
                continue;
            }
            assert!(
                word.parse::<ghost_core::Status>().is_ok(),
                "store/{file}:{line}: '{word}' is not a Status"
            );
            checked += 1;
        }
    }
    assert!(checked >= 10, "the scan found only {checked} status words");
}

#[test]
fn a_word_that_is_no_status_is_caught() {
    let words = status_words("\"UPDATE patches SET status = 'queud' WHERE id = ?1\"");
    assert_eq!(words, vec![(1, "queud".to_owned())]);
    assert!("queud".parse::<ghost_core::Status>().is_err());
}
