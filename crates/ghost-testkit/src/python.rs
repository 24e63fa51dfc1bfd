//! The Python interpreter of `./.venv`, where `scripts/python-env` installs the foreign peers
//! (clients and validators written by others) that tests drive.

use std::path::PathBuf;

/// The repository root (this crate lives in `crates/ghost-testkit`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the repository root exists")
}

/// `./.venv/bin/python`; panics with the fix when the environment has not been created.
pub fn python() -> PathBuf {
    let interpreter = repo_root().join(".venv/bin/python");
    assert!(
        interpreter.exists(),
        "{} is missing: run scripts/python-env (scripts/test does) to install tests/python/requirements.txt",
        interpreter.display()
    );
    interpreter
}
