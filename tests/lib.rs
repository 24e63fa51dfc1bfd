//! Cross-service tests live in `e2e/`, `chaos/`, `faults/` and `faults_peers/`; this library
//! holds only what the test binaries that run the real service processes share.

use std::path::{Path, PathBuf};

/// The workspace's binary `name`, next to the running test's own `deps/` directory.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the services first (cargo build --workspace --bins; scripts/test does)",
        path.display()
    );
    path
}

/// A loopback port free a moment ago.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}
