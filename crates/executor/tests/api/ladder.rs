//! Must show 4: one test per ladder rung, plus ambiguity and miss errors naming lines.

use ghost_core::Status;

use crate::helpers::{patch, workspace};

fn replace_step(file: &str, search: &str, replace: &str, expected: &str) -> String {
    let ws = workspace();
    ws.write("f.py", file);
    let search = serde_json::to_string(search).unwrap();
    let replace = serde_json::to_string(replace).unwrap();
    let report = ws.apply(&patch(
        "p",
        &format!(
            r#""edits":[{{"op":"replace","path":"f.py","search":{search},"replace":{replace}}}]"#
        ),
    ));
    assert_eq!(report.status, Status::Succeeded, "{}", report.error);
    assert_eq!(ws.read("f.py"), expected);
    report.edits[0].match_step.clone()
}

#[test]
fn rung_exact() {
    let step = replace_step("a = 1\nb = 2\n", "b = 2", "b = 3", "a = 1\nb = 3\n");
    assert_eq!(step, "exact");
}

#[test]
fn rung_trailing_whitespace() {
    let step = replace_step(
        "a = 1   \nb = 2\t\n",
        "a = 1\nb = 2\n",
        "a = 9\n",
        "a = 9\n",
    );
    assert_eq!(step, "trailing_whitespace");
}

#[test]
fn rung_trim() {
    let step = replace_step("x\ny\nz\n", "\n\ny\nz\n\n", "Y\n", "x\nY\n");
    assert_eq!(step, "trim");
}

#[test]
fn rung_punctuation() {
    let step = replace_step(
        "say(\"it's\")\nend\n",
        "say(\u{201C}it\u{2019}s\u{201D})\nend",
        "say(\"ok\")\nend",
        "say(\"ok\")\nend\n",
    );
    assert_eq!(step, "punctuation");
}

#[test]
fn rung_indentation() {
    let step = replace_step(
        "class A:\n    def f(self):\n        return 1\n",
        "def f(self):\n    return 1\n",
        "def f(self):\n    return 2\n",
        "class A:\n    def f(self):\n        return 2\n",
    );
    assert_eq!(step, "indentation");
}

#[test]
fn ambiguity_lists_candidate_lines_and_writes_nothing() {
    let ws = workspace();
    ws.write("f.txt", "a\nfoo()\nb\nfoo()\n");
    let report = ws.apply(&patch(
        "p",
        r#""edits":[{"op":"replace","path":"f.txt","search":"foo()","replace":"bar()"}]"#,
    ));
    assert_eq!(report.status, Status::Failed);
    assert!(report.error.contains("lines 2, 4"), "{}", report.error);
    assert_eq!(ws.read("f.txt"), "a\nfoo()\nb\nfoo()\n");
}

#[test]
fn a_miss_names_the_nearest_region() {
    let ws = workspace();
    ws.write("f.txt", "one\ntwo\nthree\nfour\nfive\n");
    let report = ws.apply(&patch(
        "p",
        r#""edits":[{"op":"diff","path":"f.txt","diff":"@@ -3,2 +3,2 @@\n three\n-FOUR\n+4\n"}]"#,
    ));
    assert_eq!(report.status, Status::Failed);
    assert!(
        report.error.contains("nearest region is lines 3-4"),
        "{}",
        report.error
    );
    assert_eq!(ws.read("f.txt"), "one\ntwo\nthree\nfour\nfive\n");
}
