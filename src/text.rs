//! Text from outside (file names, paths, server messages) made safe for a human-readable line.
//! Receives any string or path, and every secret in use as it becomes known; emits a `Display`
//! that writes control and invisible format characters escaped (`\n`, `\u{1b}`, `\u{202e}`),
//! so one event is always one line, nothing reaches a terminal raw and no name can be spoofed
//! on screen, with every known secret replaced by `<redacted>`. Owns the list of secrets.
//! Structured outputs (JSON, journald fields) keep the exact text and do not use this.

use std::borrow::Cow;
use std::fmt;
use std::path::Path;
use std::sync::RwLock;

/// Shown in place of a secret.
pub const REDACTED: &str = "<redacted>";
/// Shorter texts cannot be told apart from ordinary words: redacting them would garble every
/// message without protecting much.
const SHORTEST_SECRET: usize = 4;

/// Every secret in use (tokens, the client secret, proxy passwords), in each form a server or
/// a library may echo it: as it is, form- or percent-encoded, with JSON's escaped slashes.
static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Adds `secret` to what `redact` hides from then on.
pub fn keep_secret(secret: &str) {
    if secret.len() < SHORTEST_SECRET {
        return;
    }
    let encoded: String = form_urlencoded::byte_serialize(secret.as_bytes()).collect();
    let forms = [
        secret.to_string(),
        encoded.replace('+', "%20"),
        encoded,
        secret.replace('/', "\\/"),
    ];
    let mut secrets = SECRETS.write().unwrap_or_else(|poison| poison.into_inner());
    for form in forms {
        if !secrets.contains(&form) {
            secrets.push(form);
        }
    }
    // The longest first, so that a secret holding another is hidden whole.
    secrets.sort_by_key(|form| std::cmp::Reverse(form.len()));
}

/// `text` with every known secret replaced by `<redacted>`.
pub fn redact(text: &str) -> Cow<'_, str> {
    let secrets = SECRETS.read().unwrap_or_else(|poison| poison.into_inner());
    let mut text = Cow::Borrowed(text);
    for secret in secrets.iter() {
        if text.contains(secret.as_str()) {
            text = Cow::Owned(text.replace(secret.as_str(), REDACTED));
        }
    }
    text
}

/// `text` (a URL, or what was meant as one) with everything up to its last `@` after the
/// scheme replaced by `***`, whether or not it parses: the part that may hold a password.
pub fn without_userinfo(text: &str) -> String {
    let start = text.find("://").map_or(0, |at| at + 3);
    match text[start..].rfind('@') {
        Some(at) => format!("{}***{}", &text[..start], &text[start + at..]),
        None => text.to_string(),
    }
}

/// Characters a terminal does not show as themselves: control characters, invisible format
/// characters (Unicode category Cf: bidirectional overrides such as U+202E that reorder what
/// follows on screen, zero-width spaces and joiners, the byte order mark, tags) and the line
/// and paragraph separators.
pub fn is_unprintable(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{ad}'
                | '\u{600}'..='\u{605}'
                | '\u{61c}'
                | '\u{6dd}'
                | '\u{70f}'
                | '\u{890}'..='\u{891}'
                | '\u{8e2}'
                | '\u{180e}'
                | '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{206f}'
                | '\u{feff}'
                | '\u{fff9}'..='\u{fffb}'
                | '\u{110bd}'
                | '\u{110cd}'
                | '\u{13430}'..='\u{1343f}'
                | '\u{1bca0}'..='\u{1bca3}'
                | '\u{1d173}'..='\u{1d17a}'
                | '\u{e0001}'
                | '\u{e0020}'..='\u{e007f}'
        )
}

/// A string shown with its unprintable characters escaped and its secrets redacted;
/// everything else, including non-ASCII letters and quotes, as it is.
#[derive(Clone, Copy)]
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in redact(self.0).chars() {
            if is_unprintable(c) {
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

/// `text` with its unprintable characters escaped and its secrets redacted.
pub fn escaped(text: &str) -> Escaped<'_> {
    Escaped(text)
}

/// A path for a human-readable line: lossy UTF-8, unprintable characters escaped.
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

/// `text` as an owned string, escaped and redacted.
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

    #[test]
    fn format_characters_that_reorder_or_hide_text_are_escaped() {
        assert_eq!(escape("invoice\u{202e}fdp.exe"), "invoice\\u{202e}fdp.exe");
        assert_eq!(escape("a\u{200b}b\u{feff}c"), "a\\u{200b}b\\u{feff}c");
        assert_eq!(escape("\u{2066}x\u{2069}"), "\\u{2066}x\\u{2069}");
        assert_eq!(escape("日本語 ü"), "日本語 ü");
    }

    #[test]
    fn a_known_secret_is_redacted_in_every_form() {
        keep_secret("s3cr/et+Value");
        assert_eq!(escape("got s3cr/et+Value back"), "got <redacted> back");
        assert_eq!(
            redact("client_secret=s3cr%2Fet%2BValue&x"),
            "client_secret=<redacted>&x"
        );
        assert_eq!(
            redact("{\"m\":\"s3cr\\/et+Value\"}"),
            "{\"m\":\"<redacted>\"}"
        );
        assert_eq!(
            without_userinfo("http://u:p@ss@proxy:3128"),
            "http://***@proxy:3128"
        );
        assert_eq!(without_userinfo("u:pw@proxy"), "***@proxy");
        assert_eq!(without_userinfo("http://proxy:3128"), "http://proxy:3128");
        keep_secret("abc");
        assert_eq!(redact("abc"), "abc", "too short to tell from a word");
    }
}
