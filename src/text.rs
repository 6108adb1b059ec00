//! Text from outside (file names, paths, server messages) made safe for a human-readable line.
//! Receives any string or path; emits a `Display` that writes control characters escaped
//! (`\n`, `\t`, `\u{1b}`, ...), so one event is always one line and nothing reaches a terminal
//! raw. Structured outputs (JSON, journald fields) keep the exact text and do not use this.

use std::fmt;
use std::path::Path;

/// A string shown with its control characters escaped; everything else, including non-ASCII
/// letters and quotes, as it is.
#[derive(Clone, Copy)]
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            if c.is_control() {
                write!(f, "{}", c.escape_default())?;
            } else {
                fmt::Write::write_char(f, c)?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// `text` with its control characters escaped.
pub fn escaped(text: &str) -> Escaped<'_> {
    Escaped(text)
}

/// A path for a human-readable line: lossy UTF-8, control characters escaped.
pub struct EscapedPath<'a>(pub &'a Path);

impl fmt::Display for EscapedPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&Escaped(&self.0.to_string_lossy()), f)
    }
}

/// `path` for a human-readable line.
pub fn path(path: &Path) -> EscapedPath<'_> {
    EscapedPath(path)
}

/// `text` as an owned string with its control characters escaped.
pub fn escape(text: &str) -> String {
    Escaped(text).to_string()
}

/// `head` followed by the causes of `error`, "head: cause: its cause", each left out when the
/// text before already says it (many errors repeat their source in their own message).
pub fn with_causes(mut head: String, error: &dyn std::error::Error) -> String {
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !head.contains(&cause_text) {
            head.push_str(": ");
            head.push_str(&cause_text);
        }
        source = cause.source();
    }
    head
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert_eq!(escape("a\nb\tc\u{1b}[31md"), "a\\nb\\tc\\u{1b}[31md");
        assert_eq!(escape("Résumé \"final\".pdf"), "Résumé \"final\".pdf");
        assert_eq!(escape("a\u{7f}b\rc"), "a\\u{7f}b\\rc");
    }

    #[test]
    fn a_path_with_a_newline_stays_on_one_line() {
        let shown = path(Path::new("/srv/x\n2026 INFO forged.pdf")).to_string();
        assert!(!shown.contains('\n'));
        assert_eq!(shown, "/srv/x\\n2026 INFO forged.pdf");
    }
}
