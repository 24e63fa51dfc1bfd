//! Characters a reader cannot see: shown as they are, they let text pass for other text.

/// Unicode format characters (general category Cf, Unicode 15) and the line and paragraph
/// separators: invisible, yet they reorder (bidi overrides and isolates), hide (zero-width)
/// or break what is shown, so `a\u{202e}st.ts` could pass for another name.
pub const INVISIBLE: &[(char, char)] = &[
    ('\u{ad}', '\u{ad}'),
    ('\u{600}', '\u{605}'),
    ('\u{61c}', '\u{61c}'),
    ('\u{6dd}', '\u{6dd}'),
    ('\u{70f}', '\u{70f}'),
    ('\u{890}', '\u{891}'),
    ('\u{8e2}', '\u{8e2}'),
    ('\u{180e}', '\u{180e}'),
    ('\u{200b}', '\u{200f}'),
    ('\u{2028}', '\u{202e}'),
    ('\u{2060}', '\u{2064}'),
    ('\u{2066}', '\u{206f}'),
    ('\u{feff}', '\u{feff}'),
    ('\u{fff9}', '\u{fffb}'),
    ('\u{110bd}', '\u{110bd}'),
    ('\u{110cd}', '\u{110cd}'),
    ('\u{13430}', '\u{1343f}'),
    ('\u{1bca0}', '\u{1bca3}'),
    ('\u{1d173}', '\u{1d17a}'),
    ('\u{e0001}', '\u{e0001}'),
    ('\u{e0020}', '\u{e007f}'),
];

/// True for a character of [`INVISIBLE`].
pub fn is_invisible(ch: char) -> bool {
    INVISIBLE
        .iter()
        .any(|&(first, last)| (first..=last).contains(&ch))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bidi_zero_width_and_tag_characters_are_invisible_letters_are_not() {
        for ch in [
            '\u{202e}',
            '\u{2066}',
            '\u{200b}',
            '\u{feff}',
            '\u{e0041}',
            '\u{2028}',
        ] {
            assert!(is_invisible(ch), "{ch:?}");
        }
        for ch in ['a', 'é', 'ˋ', ' ', '\u{2030}'] {
            assert!(!is_invisible(ch), "{ch:?}");
        }
    }
}
