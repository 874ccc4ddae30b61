//! Rendering untrusted text so that it shows exactly what it is: invisible and direction-changing
//! characters made visible, length cut to Slack's limits with a visible marker, and single-line
//! values quoted so that one value can never look like several.

use std::fmt::Write as _;

/// Most characters in a section's text object.
pub(super) const SECTION_TEXT_MAX: usize = 3000;
/// Most characters in a header block.
pub(super) const HEADER_TEXT_MAX: usize = 150;
/// Most characters in a message's top-level fallback text.
pub(super) const FALLBACK_TEXT_MAX: usize = 4000;
/// Most characters in a context element.
pub(super) const CONTEXT_TEXT_MAX: usize = 3000;

/// Characters that render as nothing, or that reorder the text around them: zero-width
/// characters, bidirectional embeddings, overrides and isolates, the byte-order mark, invisible
/// operators, the soft hyphen, interlinear annotation controls and Unicode tag characters.
pub(super) fn is_hidden(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{061C}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{2069}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFB}'
            | '\u{E0000}'..='\u{E007F}'
    )
}

fn push_escape(out: &mut String, c: char) {
    // Writing to a String cannot fail.
    let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
}

/// Multi-line text for a block of its own: line breaks and tabs kept (CRLF folded to LF, runs of
/// blank lines folded to one), every other control or hidden character shown as `\u{…}`.
pub(super) fn block_text(raw: &str) -> String {
    let normalized = raw.replace("\r\n", "\n");
    let mut out = String::with_capacity(normalized.len());
    let mut newlines = 0usize;
    for c in normalized.chars() {
        if c == '\n' {
            newlines += 1;
            if newlines <= 2 {
                out.push('\n');
            }
            continue;
        }
        newlines = 0;
        if c == '\t' {
            out.push(c);
        } else if c.is_control() || is_hidden(c) {
            push_escape(&mut out, c);
        } else {
            out.push(c);
        }
    }
    out
}

/// Text confined to one line: backslash, line breaks, tabs, controls and hidden characters are
/// all written as escapes, so nothing in it can start a new line.
pub(super) fn line_text(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        push_line_char(&mut out, c, false);
    }
    out
}

fn push_line_char(out: &mut String, c: char, escape_quote: bool) {
    match c {
        '\\' => out.push_str("\\\\"),
        '"' if escape_quote => out.push_str("\\\""),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if c.is_control() || is_hidden(c) => push_escape(out, c),
        c => out.push(c),
    }
}

/// A value shown in double quotes on one line, `(empty)` when empty. Inside the quotes, `"` and
/// `\` are escaped, so the closing quote is always ours. Cut to `max_chars` inside the quotes,
/// with the marker after them.
pub(super) fn quoted(raw: &str, max_chars: usize) -> String {
    if raw.is_empty() {
        return "(empty)".to_owned();
    }
    let mut inner = String::with_capacity(raw.len());
    for c in raw.chars() {
        push_line_char(&mut inner, c, true);
    }
    let total = inner.chars().count();
    if total <= max_chars {
        return format!("\"{inner}\"");
    }
    let kept: String = inner.chars().take(max_chars).collect();
    format!("\"{kept}\" {}", marker(total - max_chars))
}

fn marker(more: usize) -> String {
    format!("…(truncated, {more} more characters)")
}

/// Cuts `text` to at most `max_chars` characters, the visible marker included.
pub(super) fn truncate(text: &str, max_chars: usize) -> String {
    let total = text.chars().count();
    if total <= max_chars {
        return text.to_owned();
    }
    // The marker for the whole length is at least as long as the final one, so this fits.
    let keep = max_chars.saturating_sub(marker(total).chars().count());
    let kept: String = text.chars().take(keep).collect();
    format!("{kept}{}", marker(total - keep))
}

/// Escapes the three characters Slack's mrkdwn treats as markup, for our own text around a
/// short trusted value. Untrusted text never goes into mrkdwn.
pub(super) fn mrkdwn_escape(raw: &str) -> String {
    raw.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Splits `text` into pieces of at most `size` characters.
pub(super) fn chunks(text: &str, size: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    chars
        .chunks(size.max(1))
        .map(|piece| piece.iter().collect())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_and_control_characters_become_visible_escapes() {
        let raw = "a\u{200B}b\u{202E}c\u{2066}d\u{FEFF}e\u{7}f\u{E0041}";
        assert_eq!(
            block_text(raw),
            "a\\u{200b}b\\u{202e}c\\u{2066}d\\u{feff}e\\u{7}f\\u{e0041}"
        );
        assert_eq!(line_text(raw), block_text(raw));
    }

    #[test]
    fn block_text_keeps_lines_but_folds_blank_runs() {
        assert_eq!(block_text("a\r\nb\n\n\n\n\nc\td"), "a\nb\n\nc\td");
    }

    #[test]
    fn line_text_never_breaks_a_line() {
        assert_eq!(line_text("a\nb\rc\td\\"), "a\\nb\\rc\\td\\\\");
    }

    #[test]
    fn quoted_values_cannot_close_their_own_quotes() {
        assert_eq!(quoted("3\" → \"1", 100), "\"3\\\" → \\\"1\"");
        assert_eq!(quoted("", 10), "(empty)");
        assert_eq!(quoted("(empty)", 10), "\"(empty)\"");
    }

    #[test]
    fn quoted_values_are_cut_inside_the_quotes() {
        let q = quoted(&"x".repeat(50), 10);
        assert_eq!(
            q,
            format!("\"{}\" …(truncated, 40 more characters)", "x".repeat(10))
        );
    }

    #[test]
    fn truncation_respects_the_limit_marker_included() {
        for total in [0, 1, 149, 150, 151, 10_000, 100_000] {
            let text = "é".repeat(total);
            let cut = truncate(&text, HEADER_TEXT_MAX);
            assert!(cut.chars().count() <= HEADER_TEXT_MAX, "{total}");
            if total > HEADER_TEXT_MAX {
                let kept = cut.chars().take_while(|&c| c == 'é').count();
                assert!(cut.ends_with(&format!("(truncated, {} more characters)", total - kept)));
            } else {
                assert_eq!(cut, text);
            }
        }
    }

    #[test]
    fn mrkdwn_markup_characters_are_escaped() {
        assert_eq!(
            mrkdwn_escape("<!channel> & <x|y>"),
            "&lt;!channel&gt; &amp; &lt;x|y&gt;"
        );
    }

    #[test]
    fn chunks_cover_the_whole_text() {
        let text = "ab".repeat(3001);
        let pieces = chunks(&text, SECTION_TEXT_MAX);
        assert_eq!(pieces.len(), 3);
        assert!(pieces.iter().all(|p| p.chars().count() <= SECTION_TEXT_MAX));
        assert_eq!(pieces.concat(), text);
    }
}
