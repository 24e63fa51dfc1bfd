//! The diagnostics parser on real (and, where the tool is not installed, hand-written) outputs
//! of each tool it knows: see `fixtures/diagnostics/README.md`.

use ghost_core::diagnostics::{MAX_DIAGNOSTICS, MAX_MESSAGE_CHARS, MAX_PATH_CHARS, Parser, parse};
use ghost_core::{Diagnostic, Severity};

fn fixture(name: &str) -> String {
    let path = format!(
        "{}/tests/fixtures/diagnostics/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{path}: {err}"))
}

/// (where, severity, code, tool) of each diagnostic, for compact assertions.
fn brief(found: &[Diagnostic]) -> Vec<(String, Severity, String, String)> {
    found
        .iter()
        .map(|d| {
            let column = d.column.map(|c| format!(":{c}")).unwrap_or_default();
            (
                format!("{}:{}{column}", d.path, d.line),
                d.severity,
                d.code.clone(),
                d.tool.clone(),
            )
        })
        .collect()
}

fn one(
    place: &str,
    severity: Severity,
    code: &str,
    tool: &str,
) -> (String, Severity, String, String) {
    (place.to_owned(), severity, code.to_owned(), tool.to_owned())
}

#[test]
fn tsc_plain_and_pretty_give_the_file_line_column_and_code() {
    for name in ["tsc.txt", "tsc-pretty.txt"] {
        let found = parse(&fixture(name), "tsc --noEmit -p .");
        assert_eq!(
            brief(&found),
            [one("src/a.ts:3:9", Severity::Error, "TS2322", "tsc")],
            "{name}"
        );
        assert_eq!(
            found[0].message,
            "Type 'string' is not assignable to type 'number'."
        );
        assert_eq!(found[0].check, "tsc --noEmit -p .");
    }
}

#[test]
fn eslint_stylish_and_json_agree() {
    let stylish = parse(&fixture("eslint-stylish.txt"), "eslint");
    let json = parse(&fixture("eslint.json"), "eslint");
    let expected = [
        one(
            "/srv/ws/a.js:1:7",
            Severity::Error,
            "no-unused-vars",
            "eslint",
        ),
        one("/srv/ws/a.js:1:17", Severity::Warning, "semi", "eslint"),
    ];
    assert_eq!(brief(&stylish), expected);
    assert_eq!(brief(&json), expected);
    assert_eq!(
        stylish[0].message,
        "'unused' is assigned a value but never used"
    );
    assert_eq!(
        json[0].message,
        "'unused' is assigned a value but never used."
    );
}

#[test]
fn gcc_keeps_errors_warnings_notes_and_flags() {
    let found = parse(&fixture("gcc.txt"), "gcc -Wall -c b.c");
    assert_eq!(
        brief(&found),
        [
            one("b.c:3:11", Severity::Warning, "-Wint-conversion", "gcc"),
            one("b.c:4:10", Severity::Error, "", "gcc"),
            one("b.c:4:10", Severity::Note, "", "gcc"),
            one("b.c:3:7", Severity::Warning, "-Wunused-variable", "gcc"),
        ]
    );
    assert_eq!(
        found[1].message,
        "‘y’ undeclared (first use in this function)"
    );
}

#[test]
fn clang_reads_like_gcc_fatal_errors_included() {
    let found = parse(&fixture("clang.txt"), "clang -c b.c");
    assert_eq!(
        brief(&found),
        [
            one("b.c:1:10", Severity::Error, "", "gcc"),
            one("b.c:3:11", Severity::Warning, "-Wint-conversion", "gcc"),
            one("b.c:4:10", Severity::Error, "", "gcc"),
            one("include/c.h:7:1", Severity::Note, "", "gcc"),
        ]
    );
    assert_eq!(found[0].message, "'missing.h' file not found");
}

#[test]
fn rustc_headers_take_the_location_of_their_arrow() {
    let found = parse(&fixture("rustc.txt"), "cargo build");
    assert_eq!(
        brief(&found),
        [one("src/main.rs:2:18", Severity::Error, "E0308", "rustc")]
    );
    assert_eq!(found[0].message, "mismatched types");
}

#[test]
fn go_build_and_vet() {
    let found = parse(&fixture("go.txt"), "go vet ./...");
    assert_eq!(
        brief(&found),
        [
            one("main.go:9:2", Severity::Error, "", "go"),
            one("main.go:12:15", Severity::Error, "", "go"),
            one("util/fmt.go:7:2", Severity::Error, "", "go"),
        ]
    );
    assert_eq!(found[0].message, "declared and not used: unused");
}

#[test]
fn jest_failures_are_located_by_stack_or_code_frame() {
    let found = parse(&fixture("jest.txt"), "npx jest");
    assert_eq!(
        brief(&found),
        [
            one("src/sum.test.ts:12:23", Severity::Error, "", "jest"),
            one("src/parse.test.ts:8:27", Severity::Error, "", "jest"),
        ]
    );
    assert_eq!(
        found[0].message,
        "sum › adds two numbers: expect(received).toBe(expected) // Object.is equality"
    );
    assert!(
        found[1]
            .message
            .starts_with("parse › rejects empty input: TypeError")
    );
}

#[test]
fn pytest_failures_are_located_once_each() {
    let found = parse(&fixture("pytest.txt"), "pytest");
    assert_eq!(
        brief(&found),
        [
            one(
                "tests/test_a.py:10",
                Severity::Error,
                "AssertionError",
                "pytest"
            ),
            one("tests/test_a.py:2", Severity::Error, "ValueError", "pytest"),
        ]
    );
    assert_eq!(found[0].message, "test_x: assert (1 + 1) == 3");
    assert_eq!(found[1].message, "test_raises: ValueError: bad value 5");
    // Only the short summary: no line, but the test and the reason.
    let short = parse("FAILED tests/test_b.py::test_y - assert 0\n", "pytest -q");
    assert_eq!(
        brief(&short),
        [one("tests/test_b.py:0", Severity::Error, "", "pytest")]
    );
    assert_eq!(short[0].message, "test_y: assert 0");
}

#[test]
fn the_generic_form_skips_urls_timestamps_and_addresses() {
    let found = parse(&fixture("generic.txt"), "check");
    assert_eq!(
        brief(&found),
        [
            one("config/app.yaml:4", Severity::Error, "", "generic"),
            one("lib/parse.py:17:3", Severity::Error, "", "generic"),
            one("docs/guide.md:33", Severity::Warning, "", "generic"),
        ]
    );
    assert_eq!(found[2].message, "broken link");
}

#[test]
fn output_fed_in_any_chunks_parses_the_same() {
    let output = [
        fixture("tsc-pretty.txt"),
        fixture("gcc.txt"),
        fixture("rustc.txt"),
        fixture("eslint.json"),
        fixture("jest.txt"),
    ]
    .concat();
    let whole = parse(&output, "all");
    assert_eq!(whole.len(), 1 + 4 + 1 + 2 + 2);
    for size in [1, 2, 7, 64, 4096] {
        let mut parser = Parser::new("all");
        for chunk in output.as_bytes().chunks(size) {
            parser.feed(chunk);
        }
        assert_eq!(parser.finish().diagnostics, whole, "chunks of {size}");
    }
}

#[test]
fn hostile_output_is_bounded() {
    // Many diagnostics: the first MAX_DIAGNOSTICS kept, the rest counted.
    let many: String = (1..=MAX_DIAGNOSTICS + 5)
        .map(|n| format!("src/a.c:{n}:1: error: x\n"))
        .collect();
    let mut parser = Parser::new("gcc");
    parser.feed(many.as_bytes());
    let found = parser.finish();
    assert_eq!(found.diagnostics.len(), MAX_DIAGNOSTICS);
    assert_eq!(found.dropped, 5);
    // A huge message is cut; a huge line without a newline, binary and lone escapes do not panic.
    let long = format!("src/a.c:1:1: error: {}\n", "m".repeat(100_000));
    let cut = parse(&long, "gcc");
    assert!(cut[0].message.chars().count() <= MAX_MESSAGE_CHARS + 1);
    let junk = [
        &b"\x1b"[..],
        b"\x1b[",
        b"\xff\xfe:1:2: error: x",
        b"a(1,2): error TS: x",
        b"[{\"filePath\": truncated",
        b"  1:2  error",
        b"error[E1: x\n -->",
        b"> 1 |",
        b"\xe2\x97\x8f ",
    ]
    .concat();
    // A huge path (eslint JSON may carry any) is cut too.
    let json = format!(
        "[{{\"filePath\":\"{}\",\"messages\":[{{\"line\":1,\"severity\":2,\"message\":\"m\"}}]}}]\n",
        "p".repeat(100_000)
    );
    let found = parse(&json, "eslint");
    assert_eq!(found.len(), 1);
    assert!(found[0].path.chars().count() <= MAX_PATH_CHARS + 1);
    let mut parser = Parser::new("junk");
    parser.feed(&junk);
    parser.feed(&vec![b'x'; 1 << 20]);
    let _ = parser.finish();
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    /// Lines of every format, broken ones and noise, in any order.
    fn output() -> impl Strategy<Value = String> {
        let known = [
            "src/a.ts(3,9): error TS2322: Type 'string' is not assignable.",
            "\u{1b}[96msrc/a.ts\u{1b}[0m:\u{1b}[93m3\u{1b}[0m:\u{1b}[93m9\u{1b}[0m - \u{1b}[91merror\u{1b}[0m TS2322: x",
            "/srv/ws/a.js",
            "  1:7   error    'unused' is assigned a value but never used  no-unused-vars",
            "b.c:4:10: error: 'y' undeclared [-Wx]",
            "error[E0308]: mismatched types",
            " --> src/main.rs:2:18",
            "./main.go:9:2: declared and not used: x",
            "FAIL src/sum.test.ts",
            "  ● sum › adds",
            "    > 12 |     expect(1).toBe(2);",
            "         |               ^",
            "      at Object.<anonymous> (src/sum.test.ts:12:23)",
            "___ test_x ___",
            "E       assert 1 == 2",
            "tests/test_a.py:10: AssertionError",
            "FAILED tests/test_a.py::test_y - assert 0",
            "[{\"filePath\":\"/srv/ws/a.js\",\"messages\":[{\"line\":1,\"column\":2,\"severity\":2,\"message\":\"m\",\"ruleId\":\"r\"}]}]",
            "12:30:45: tick",
            "",
        ];
        let line = prop_oneof![
            4 => proptest::sample::select(known.to_vec()).prop_map(str::to_owned),
            1 => "[ -~\u{1b}●›]{0,80}",
        ];
        proptest::collection::vec(line, 0..40).prop_map(|lines| lines.join("\n"))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn chunking_never_changes_what_is_found(
            output in output(),
            sizes in proptest::collection::vec(1usize..300, 1..20),
        ) {
            let whole = parse(&output, "check");
            let bytes = output.as_bytes();
            let mut parser = Parser::new("check");
            let mut at = 0;
            for size in sizes.iter().cycle() {
                if at >= bytes.len() {
                    break;
                }
                let end = (at + size).min(bytes.len());
                parser.feed(&bytes[at..end]);
                at = end;
            }
            let found = parser.finish();
            prop_assert_eq!(&found.diagnostics, &whole);
            prop_assert!(whole.len() <= MAX_DIAGNOSTICS);
            for diagnostic in &whole {
                prop_assert!(!diagnostic.message.contains('\n'));
                prop_assert!(!diagnostic.path.is_empty());
            }
        }
    }
}

#[test]
fn terminal_controls_never_reach_a_diagnostic_from_any_reader() {
    let esc = '\u{1b}';
    let output = format!(
        "src/{esc}]0;owned\u{7}a\u{202e}.ts(1,2): error TS2322: bad {esc}[2J\u{9b}31mthing\u{7f}\n\
         ESLINT_JSON_PLACEHOLDER\n"
    );
    let eslint = format!(
        r#"[{{"filePath":"/w/src/b{}\u202e.ts","messages":[{{"ruleId":"no-x\u001b[31m","severity":2,"message":"m\u001b]0;t\u0007\u0085x","line":1,"column":1}}]}}]"#,
        "\\u001b[1m"
    );
    let output = output.replace("ESLINT_JSON_PLACEHOLDER", &eslint);
    let found = parse(&output, "lint");
    assert!(found.len() >= 2, "{found:#?}");
    for diagnostic in &found {
        for text in [&diagnostic.path, &diagnostic.code, &diagnostic.message] {
            assert!(
                !text.chars().any(|ch| ch.is_control()
                    || matches!(ch, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{61c}')),
                "a control character survived in {text:?}: {diagnostic:#?}"
            );
        }
    }
}
