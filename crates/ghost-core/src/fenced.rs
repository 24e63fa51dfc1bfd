//! Finding fenced code blocks (```` ``` ```` or `~~~`, CommonMark rules) in chat text, so that
//! patches a model wrote inside a message can be picked out and submitted.

/// One fenced code block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FencedBlock {
    /// The info string's first word, lowercase (`json`, `yaml`, or empty).
    pub lang: String,
    /// 1-based line of the opening fence.
    pub line: usize,
    /// The block's text, without the fences.
    pub body: String,
    /// False when the text ended before a closing fence.
    pub closed: bool,
}

/// Every fenced block of `text`, in order.
pub fn fenced_blocks(text: &str) -> Vec<FencedBlock> {
    let mut blocks = Vec::new();
    let mut open: Option<(char, usize, usize, FencedBlock)> = None;
    for (index, line) in text.lines().enumerate() {
        let indent = line.len() - line.trim_start_matches(' ').len();
        let stripped = line.trim_start_matches(' ');
        if let Some((fence_char, fence_len, fence_indent, block)) = open.as_mut() {
            let run = stripped.chars().take_while(|c| c == fence_char).count();
            if indent < 4 && run >= *fence_len && stripped[run..].trim().is_empty() {
                if let Some((_, _, _, mut done)) = open.take() {
                    done.closed = true;
                    blocks.push(done);
                }
                continue;
            }
            // Content lines lose up to the opening fence's indentation.
            let drop = line.len() - line.trim_start_matches(' ').len();
            block.body.push_str(&line[drop.min(*fence_indent)..]);
            block.body.push('\n');
            continue;
        }
        if indent >= 4 {
            continue;
        }
        let Some(fence_char) = stripped.chars().next().filter(|c| *c == '`' || *c == '~') else {
            continue;
        };
        let run = stripped.chars().take_while(|c| *c == fence_char).count();
        if run < 3 {
            continue;
        }
        let info = stripped[run..].trim();
        if fence_char == '`' && info.contains('`') {
            continue;
        }
        let lang = info
            .split(|c: char| c.is_whitespace() || c == '{')
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        open = Some((
            fence_char,
            run,
            indent,
            FencedBlock {
                lang,
                line: index + 1,
                body: String::new(),
                closed: false,
            },
        ));
    }
    if let Some((_, _, _, block)) = open {
        blocks.push(block);
    }
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_blocks_with_their_language_and_line() {
        let text = "Here:\n```json\n{\"a\": 1}\n```\nand\n~~~yaml title\nb: 2\n~~~\n";
        let blocks = fenced_blocks(text);
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[0].lang, "json");
        assert_eq!(blocks[0].line, 2);
        assert_eq!(blocks[0].body, "{\"a\": 1}\n");
        assert_eq!(blocks[1].lang, "yaml");
        assert_eq!(blocks[1].body, "b: 2\n");
        assert!(blocks[1].closed);
    }

    #[test]
    fn longer_fences_contain_shorter_ones_and_unclosed_blocks_are_flagged() {
        let text = "````md\n```json\n{}\n```\n````\n```python\nprint(1)\n";
        let blocks = fenced_blocks(text);
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[0].lang, "md");
        assert!(blocks[0].body.contains("```json"));
        assert_eq!(blocks[1].lang, "python");
        assert!(!blocks[1].closed);
    }

    #[test]
    fn inline_backticks_are_not_fences() {
        assert!(fenced_blocks("use ``x`` here\n``` a`b\n").is_empty());
    }
}
