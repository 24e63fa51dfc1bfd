//! Unified diffs in git's format of what a patch would change: `diff --git a/ b/` headers,
//! `/dev/null` for created and deleted files, `old mode`/`new mode`, `rename from`/`rename to`,
//! hunks with three lines of context, `\ No newline at end of file`. Binary files (a NUL byte,
//! or not UTF-8) are named, not dumped. A deleted file is named with its line count, never its
//! contents (`# -N lines ...`). A path holding a control character, `"` or `\\` is quoted as
//! git quotes it, so no path can forge a header line. The whole text is capped at [`MAX_DIFF_BYTES`]; a cut
//! diff ends with a line saying so. The output is accepted by `git apply`.

/// The longest diff returned; the rest is cut and the cut is said.
pub const MAX_DIFF_BYTES: usize = 1024 * 1024;
/// Lines of context around each change.
const CONTEXT: usize = 3;
/// Beyond this many differences a file's diff is shown as all old lines removed and all new
/// lines added (still exact, only longer), keeping the search's memory bounded.
const MAX_EDIT_DISTANCE: usize = 1000;
/// Beyond this many line comparisons the search gives up the same way, keeping its time
/// bounded whatever the file sizes and the number of changes.
const MAX_DIFF_WORK: usize = 2_000_000;

/// A file's contents and permission bits.
#[derive(Debug, Clone, Copy)]
pub struct Side<'a> {
    /// Contents.
    pub bytes: &'a [u8],
    /// Permission bits (`0o644`).
    pub mode: u32,
}

/// One path's change.
#[derive(Debug, Clone, Copy)]
pub struct FileChange<'a> {
    /// The path before (differs from `path` for a rename).
    pub old_path: &'a str,
    /// The path after.
    pub path: &'a str,
    /// Before; None: created.
    pub before: Option<Side<'a>>,
    /// After; None: deleted.
    pub after: Option<Side<'a>>,
}

/// The rendered diff.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diff {
    /// Unified diff text.
    pub text: String,
    /// True when it was cut at [`MAX_DIFF_BYTES`].
    pub truncated: bool,
}

fn git_mode(mode: u32) -> String {
    format!("100{:03o}", mode & 0o777)
}

/// `prefix` and `path` as git writes a name in a header: as is, or in double quotes with C
/// escapes when it holds a control character, `"` or `\\`.
fn quoted(prefix: &str, path: &str) -> String {
    let plain = |c: char| !c.is_ascii_control() && c != '"' && c != '\\';
    if path.chars().all(plain) {
        return format!("{prefix}{path}");
    }
    let mut out = String::from("\"");
    out.push_str(prefix);
    for c in path.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_ascii_control() => out.push_str(&format!("\\{:03o}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn is_binary(bytes: &[u8]) -> bool {
    bytes.contains(&0) || std::str::from_utf8(bytes).is_err()
}

/// Renders `changes` (in the order given) within `max_bytes`.
pub fn render(changes: &[FileChange<'_>], max_bytes: usize) -> Diff {
    let mut diff = Diff::default();
    for (index, change) in changes.iter().enumerate() {
        let room = max_bytes.saturating_sub(diff.text.len());
        let section = file_section(change, room);
        if section.as_ref().is_none_or(|section| section.len() > room) {
            diff.truncated = true;
            let left = changes.len() - index;
            diff.text.push_str(&format!(
                "# diff cut at {max_bytes} bytes: {left} more file(s) not shown ({} onwards)\n",
                quoted("", change.path)
            ));
            break;
        }
        if let Some(section) = section {
            diff.text.push_str(&section);
        }
    }
    diff
}

/// One file's part of the diff, or None as soon as it is longer than `room` bytes.
fn file_section(change: &FileChange<'_>, room: usize) -> Option<String> {
    let mut out = format!(
        "diff --git {} {}\n",
        quoted("a/", change.old_path),
        quoted("b/", change.path)
    );
    let renamed = change.old_path != change.path;
    match (change.before, change.after) {
        (None, None) => return Some(String::new()),
        (None, Some(after)) => out.push_str(&format!("new file mode {}\n", git_mode(after.mode))),
        (Some(before), None) => {
            out.push_str(&format!("deleted file mode {}\n", git_mode(before.mode)));
        }
        (Some(before), Some(after)) => {
            if before.mode & 0o777 != after.mode & 0o777 {
                out.push_str(&format!("old mode {}\n", git_mode(before.mode)));
                out.push_str(&format!("new mode {}\n", git_mode(after.mode)));
            }
            if renamed {
                out.push_str(&format!(
                    "rename from {}\nrename to {}\n",
                    quoted("", change.old_path),
                    quoted("", change.path)
                ));
            }
            if before.bytes == after.bytes {
                return Some(out);
            }
        }
    }
    let old_bytes = change.before.map_or(&[][..], |side| side.bytes);
    let new_bytes = change.after.map_or(&[][..], |side| side.bytes);
    let old_name = match change.before {
        Some(_) => quoted("a/", change.old_path),
        None => "/dev/null".to_owned(),
    };
    let new_name = match change.after {
        Some(_) => quoted("b/", change.path),
        None => "/dev/null".to_owned(),
    };
    if is_binary(old_bytes) || is_binary(new_bytes) {
        out.push_str(&format!("Binary files {old_name} and {new_name} differ\n"));
        return Some(out);
    }
    if old_bytes.is_empty() && new_bytes.is_empty() {
        return Some(out);
    }
    if change.after.is_none() {
        // A deleted file's contents are never shown: a dry run would otherwise hand out the
        // text of any file (a `.env`, an ignored secret) to whoever may propose its deletion.
        out.push_str(&format!(
            "# -{} lines (a deleted file's contents are not shown)\n",
            lines(old_bytes).len()
        ));
        return Some(out);
    }
    out.push_str(&format!("--- {old_name}\n+++ {new_name}\n"));
    hunks(&mut out, &lines(old_bytes), &lines(new_bytes), room)?;
    Some(out)
}

/// Lines with their newline (the last may lack one).
fn lines(bytes: &[u8]) -> Vec<&[u8]> {
    bytes.split_inclusive(|byte| *byte == b'\n').collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Equal,
    Delete,
    Insert,
}

/// The edit script turning `old` into `new`, one op per line, in order.
fn script(old: &[&[u8]], new: &[&[u8]]) -> Vec<Op> {
    let prefix = old.iter().zip(new).take_while(|(a, b)| a == b).count();
    let suffix = old[prefix..]
        .iter()
        .rev()
        .zip(new[prefix..].iter().rev())
        .take_while(|(a, b)| a == b)
        .count();
    let middle_old = &old[prefix..old.len() - suffix];
    let middle_new = &new[prefix..new.len() - suffix];
    let mut ops = vec![Op::Equal; prefix];
    match myers(middle_old, middle_new, MAX_EDIT_DISTANCE, MAX_DIFF_WORK) {
        Some(middle) => ops.extend(middle),
        None => {
            ops.extend(std::iter::repeat_n(Op::Delete, middle_old.len()));
            ops.extend(std::iter::repeat_n(Op::Insert, middle_new.len()));
        }
    }
    ops.extend(std::iter::repeat_n(Op::Equal, suffix));
    ops
}

/// Myers' shortest edit script, or None beyond `max_distance` differences or `max_work` line
/// comparisons.
fn myers(old: &[&[u8]], new: &[&[u8]], max_distance: usize, max_work: usize) -> Option<Vec<Op>> {
    let mut work = 0usize;
    let (n, m) = (old.len() as isize, new.len() as isize);
    let limit = (old.len() + new.len()).min(max_distance) as isize;
    let offset = limit + 1;
    let mut v = vec![0isize; (2 * limit + 3) as usize];
    // trace[d] holds v[k] for k in -(d+1)..=(d+1) before step d.
    let mut trace: Vec<Vec<isize>> = Vec::new();
    for d in 0..=limit {
        trace.push(v[(offset - d - 1) as usize..=(offset + d + 1) as usize].to_vec());
        let mut k = -d;
        while k <= d {
            let at = (offset + k) as usize;
            let mut x = if k == -d || (k != d && v[at - 1] < v[at + 1]) {
                v[at + 1]
            } else {
                v[at - 1] + 1
            };
            let mut y = x - k;
            while x < n && y < m && old[x as usize] == new[y as usize] {
                x += 1;
                y += 1;
                work += 1;
            }
            work += 1;
            if work > max_work {
                return None;
            }
            v[at] = x;
            if x >= n && y >= m {
                return Some(backtrack(&trace, n, m));
            }
            k += 2;
        }
    }
    None
}

fn backtrack(trace: &[Vec<isize>], n: isize, m: isize) -> Vec<Op> {
    let mut ops = Vec::new();
    let (mut x, mut y) = (n, m);
    for (d, window) in trace.iter().enumerate().rev() {
        let d = d as isize;
        let get = |k: isize| window[(k + d + 1) as usize];
        let k = x - y;
        let previous_k = if k == -d || (k != d && get(k - 1) < get(k + 1)) {
            k + 1
        } else {
            k - 1
        };
        let previous_x = if d == 0 { 0 } else { get(previous_k) };
        let previous_y = previous_x - previous_k;
        while x > previous_x && y > previous_y {
            ops.push(Op::Equal);
            x -= 1;
            y -= 1;
        }
        if d > 0 {
            if x == previous_x {
                ops.push(Op::Insert);
            } else {
                ops.push(Op::Delete);
            }
        }
        x = previous_x;
        y = previous_y;
    }
    ops.reverse();
    ops
}

fn push_line(out: &mut String, sign: char, line: &[u8]) {
    out.push(sign);
    out.push_str(&String::from_utf8_lossy(line));
    if !line.ends_with(b"\n") {
        out.push_str("\n\\ No newline at end of file\n");
    }
}

/// Appends the hunks turning `old` into `new` to `out`; None as soon as `out` is longer than
/// `room` bytes (the rest is never built).
fn hunks(out: &mut String, old: &[&[u8]], new: &[&[u8]], room: usize) -> Option<()> {
    let ops = script(old, new);
    // Position in old and new before each op.
    let mut positions = Vec::with_capacity(ops.len() + 1);
    let (mut a, mut b) = (0usize, 0usize);
    for op in &ops {
        positions.push((a, b));
        match op {
            Op::Equal => {
                a += 1;
                b += 1;
            }
            Op::Delete => a += 1,
            Op::Insert => b += 1,
        }
    }
    positions.push((a, b));
    let changes: Vec<usize> = (0..ops.len()).filter(|i| ops[*i] != Op::Equal).collect();
    let mut index = 0;
    while index < changes.len() {
        let first = changes[index];
        let mut last = first;
        while index + 1 < changes.len() && changes[index + 1] - last <= 2 * CONTEXT + 1 {
            index += 1;
            last = changes[index];
        }
        index += 1;
        let start = first.saturating_sub(CONTEXT);
        let end = (last + 1 + CONTEXT).min(ops.len());
        let (old_at, new_at) = positions[start];
        let (old_end, new_end) = positions[end];
        let (old_count, new_count) = (old_end - old_at, new_end - new_at);
        let old_start = if old_count == 0 { old_at } else { old_at + 1 };
        let new_start = if new_count == 0 { new_at } else { new_at + 1 };
        out.push_str(&format!(
            "@@ -{old_start},{old_count} +{new_start},{new_count} @@\n"
        ));
        for (op, (a, b)) in ops[start..end].iter().zip(&positions[start..end]) {
            match op {
                Op::Equal => push_line(out, ' ', old[*a]),
                Op::Delete => push_line(out, '-', old[*a]),
                Op::Insert => push_line(out, '+', new[*b]),
            }
            if out.len() > room {
                return None;
            }
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(before: Option<&str>, after: Option<&str>) -> String {
        let side = |text: &'static str| Side {
            bytes: text.as_bytes(),
            mode: 0o644,
        };
        let before = before.map(|t| side(Box::leak(t.to_owned().into_boxed_str())));
        let after = after.map(|t| side(Box::leak(t.to_owned().into_boxed_str())));
        render(
            &[FileChange {
                old_path: "f.txt",
                path: "f.txt",
                before,
                after,
            }],
            MAX_DIFF_BYTES,
        )
        .text
    }

    #[test]
    fn a_changed_line_gets_a_hunk_with_context() {
        let before = "1\n2\n3\n4\n5\n6\n7\n8\n9\n";
        let after = "1\n2\n3\n4\nfive\n6\n7\n8\n9\n";
        assert_eq!(
            one(Some(before), Some(after)),
            "diff --git a/f.txt b/f.txt\n--- a/f.txt\n+++ b/f.txt\n@@ -2,7 +2,7 @@\n 2\n 3\n 4\n-5\n+five\n 6\n 7\n 8\n"
        );
    }

    #[test]
    fn created_and_deleted_files_use_dev_null_and_a_missing_newline_is_said() {
        assert_eq!(
            one(None, Some("a\nb")),
            "diff --git a/f.txt b/f.txt\nnew file mode 100644\n--- /dev/null\n+++ b/f.txt\n@@ -0,0 +1,2 @@\n+a\n+b\n\\ No newline at end of file\n"
        );
        assert_eq!(
            one(Some("secret=1\nkey=2\n"), None),
            "diff --git a/f.txt b/f.txt\ndeleted file mode 100644\n# -2 lines (a deleted file's contents are not shown)\n"
        );
    }

    #[test]
    fn a_path_with_a_newline_is_quoted_and_cannot_forge_a_header() {
        let text = render(
            &[FileChange {
                old_path: "x\n+++ b/evil",
                path: "x\n+++ b/evil",
                before: None,
                after: Some(Side {
                    bytes: b"a\n",
                    mode: 0o644,
                }),
            }],
            MAX_DIFF_BYTES,
        )
        .text;
        assert!(
            text.starts_with("diff --git \"a/x\\n+++ b/evil\" \"b/x\\n+++ b/evil\"\n"),
            "{text}"
        );
        assert!(!text.lines().any(|line| line == "+++ b/evil"), "{text}");
    }

    #[test]
    fn the_diff_search_gives_up_after_its_work_budget_and_stops_at_the_cap() {
        // The search stops after its budget of line comparisons (then the file is shown as a
        // whole replacement), and the text built stops at the cap.
        let before: String = "a\n".repeat(100_000);
        let after: String = (0..100_000)
            .map(|i| if i % 250 == 1 { "b\n" } else { "a\n" })
            .collect();
        let (old, new) = (lines(before.as_bytes()), lines(after.as_bytes()));
        assert!(myers(&old, &new, MAX_EDIT_DISTANCE, usize::MAX).is_some());
        assert!(myers(&old, &new, MAX_EDIT_DISTANCE, 1000).is_none());
        let change = FileChange {
            old_path: "big",
            path: "big",
            before: Some(Side {
                bytes: before.as_bytes(),
                mode: 0o644,
            }),
            after: Some(Side {
                bytes: after.as_bytes(),
                mode: 0o644,
            }),
        };
        let cut = render(&[change], 10_000);
        assert!(cut.truncated);
        assert!(cut.text.len() < 10_000, "{}", cut.text.len());
    }

    #[test]
    fn far_apart_changes_get_two_hunks_and_the_script_is_minimal() {
        let before: String = (1..=30).map(|i| format!("{i}\n")).collect();
        let after: String = (1..=30)
            .map(|i| match i {
                3 => "three\n".to_owned(),
                27 => "x\n".to_owned(),
                _ => format!("{i}\n"),
            })
            .collect();
        let text = one(Some(&before), Some(&after));
        assert_eq!(text.matches("@@ -").count(), 2, "{text}");
        assert_eq!(text.lines().filter(|l| l.starts_with('-')).count(), 3);
        assert_eq!(text.lines().filter(|l| l.starts_with('+')).count(), 3);
    }

    #[test]
    fn binaries_are_named_and_a_diff_over_the_cap_is_cut_and_says_so() {
        let binary = render(
            &[FileChange {
                old_path: "b.bin",
                path: "b.bin",
                before: Some(Side {
                    bytes: b"\0\x01",
                    mode: 0o644,
                }),
                after: Some(Side {
                    bytes: b"\0\x02",
                    mode: 0o755,
                }),
            }],
            MAX_DIFF_BYTES,
        );
        assert_eq!(
            binary.text,
            "diff --git a/b.bin b/b.bin\nold mode 100644\nnew mode 100755\nBinary files a/b.bin and b/b.bin differ\n"
        );
        let big = "x\n".repeat(1000);
        let change = FileChange {
            old_path: "big",
            path: "big",
            before: None,
            after: Some(Side {
                bytes: big.as_bytes(),
                mode: 0o644,
            }),
        };
        let cut = render(&[change, change], 5000);
        assert!(cut.truncated);
        assert!(cut.text.len() <= 5000 + 200);
        assert!(
            cut.text
                .ends_with("1 more file(s) not shown (big onwards)\n"),
            "{}",
            cut.text
        );
    }
}
