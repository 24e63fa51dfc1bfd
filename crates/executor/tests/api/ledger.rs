//! Must show 6: a re-delivered patch (same id and content hash) is not applied twice.

use ghost_core::Status;

use crate::helpers::{patch, workspace};

#[test]
fn a_redelivered_patch_returns_the_recorded_result_and_touches_nothing() {
    let ws = workspace();
    ws.write("log.txt", "start\n");
    let append = patch(
        "append-once",
        r#""edits":[{"op":"diff","path":"log.txt","diff":"@@ -1 +1,2 @@\n start\n+once\n"}]"#,
    );
    let first = ws.apply(&append);
    assert_eq!(first.status, Status::Succeeded, "{}", first.error);
    assert_eq!(ws.read("log.txt"), "start\nonce\n");
    // Someone edits the file; a second delivery must neither re-apply nor undo anything.
    ws.write("log.txt", "start\nonce\nlater\n");
    let second = ws.apply(&append);
    assert_eq!(second, first);
    assert_eq!(ws.read("log.txt"), "start\nonce\nlater\n");
    // A patch that was rolled back is not recorded, so a retry runs again.
    let failing = patch(
        "fails",
        r#""edits":[{"op":"replace","path":"log.txt","search":"absent","replace":"x"}]"#,
    );
    assert_eq!(ws.apply(&failing).status, Status::Failed);
    ws.write("log.txt", "absent\n");
    assert_eq!(ws.apply(&failing).status, Status::Succeeded);
}
