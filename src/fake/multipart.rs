//! Parses a `multipart/form-data` request body the way PHP's rfc1867 code does.
//! Receives the raw Content-Type header value and the complete body bytes; emits the parts
//! (form field name, file name when the part is a file, data as a zero-copy slice).
//! Owns nothing: the caller decides what the parts mean.

use bytes::Bytes;

/// One part of the form.
#[derive(Debug, Clone)]
pub struct Part {
    pub name: String,
    /// `Some` only when Content-Disposition carried a `filename=` parameter: PHP never looks
    /// at `filename*=`, so a part with only that one arrives as a plain text field.
    pub filename: Option<String>,
    pub data: Bytes,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MultipartError {
    #[error("Content-Type is not multipart/form-data")]
    NotMultipart,
    #[error("Content-Type has no usable boundary parameter")]
    NoBoundary,
    #[error("body does not start with the boundary")]
    NoFirstBoundary,
    #[error("part headers are not terminated by an empty line")]
    UnterminatedHeaders,
    #[error("part is not terminated by a boundary (body truncated?)")]
    UnterminatedPart,
    #[error("garbage after a boundary line")]
    BadBoundaryLine,
}

/// Extracts the boundary from a Content-Type value such as
/// `multipart/form-data; boundary="abc"`.
pub fn boundary(content_type: &str) -> Result<String, MultipartError> {
    let mut pieces = split_unquoted(content_type, b';').into_iter();
    let media = pieces.next().unwrap_or_default();
    if !media.trim().eq_ignore_ascii_case("multipart/form-data") {
        return Err(MultipartError::NotMultipart);
    }
    for piece in pieces {
        let Some((key, value)) = piece.split_once('=') else {
            continue;
        };
        if key.trim().eq_ignore_ascii_case("boundary") {
            let value = unquote(value.trim());
            // RFC 2046 caps boundaries at 70 characters; anything else is a client bug.
            if value.is_empty() || value.len() > 70 {
                return Err(MultipartError::NoBoundary);
            }
            return Ok(value);
        }
    }
    Err(MultipartError::NoBoundary)
}

/// Splits the body into parts. Lines may end in CRLF or bare LF, as PHP accepts both.
/// Parts without a Content-Disposition `name` are skipped, as PHP skips them.
pub fn parse(body: &Bytes, boundary: &str) -> Result<Vec<Part>, MultipartError> {
    let delimiter = format!("--{boundary}").into_bytes();
    // The first delimiter may follow a preamble, but must start a line.
    let mut position = if body.starts_with(&delimiter) {
        0
    } else {
        let mut needle = b"\n".to_vec();
        needle.extend_from_slice(&delimiter);
        find(body, &needle, 0).ok_or(MultipartError::NoFirstBoundary)? + 1
    };
    let mut next_delimiter = b"\n".to_vec();
    next_delimiter.extend_from_slice(&delimiter);

    let mut parts = Vec::new();
    loop {
        position += delimiter.len();
        if body[position..].starts_with(b"--") {
            return Ok(parts);
        }
        // Transport padding (RFC 2046) may sit between the boundary and its line end.
        while matches!(body.get(position), Some(b' ' | b'\t')) {
            position += 1;
        }
        position = skip_line_end(body, position).ok_or(MultipartError::BadBoundaryLine)?;

        let (headers, data_start) = read_headers(body, position)?;
        let found =
            find(body, &next_delimiter, data_start).ok_or(MultipartError::UnterminatedPart)?;
        let mut data_end = found;
        if data_end > data_start && body[data_end - 1] == b'\r' {
            data_end -= 1;
        }
        if let Some(part) = make_part(&headers, body.slice(data_start..data_end)) {
            parts.push(part);
        }
        position = found + 1;
    }
}

fn make_part(headers: &[(String, String)], data: Bytes) -> Option<Part> {
    let disposition = headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("content-disposition"))
        .map(|(_, value)| value.as_str())?;
    let mut name = None;
    let mut filename = None;
    for pair in split_unquoted(disposition, b';') {
        let Some((key, value)) = pair.split_once('=') else {
            continue;
        };
        // PHP skips the blanks after `;`, not those before `=`.
        let key = key.trim_start_matches(c_space);
        if key.eq_ignore_ascii_case("name") {
            name = Some(php_word(value));
        } else if key.eq_ignore_ascii_case("filename") {
            filename = Some(php_basename(&php_word(value)));
        }
    }
    let name = name.filter(|name| !name.is_empty())?;
    Some(Part {
        name,
        filename,
        data,
    })
}

/// Reads header lines starting at `start` up to the empty line; returns them and the offset
/// of the first data byte.
fn read_headers(
    body: &[u8],
    mut position: usize,
) -> Result<(Vec<(String, String)>, usize), MultipartError> {
    let mut headers: Vec<(String, String)> = Vec::new();
    loop {
        let line_end = find(body, b"\n", position).ok_or(MultipartError::UnterminatedHeaders)?;
        let mut line = &body[position..line_end];
        if line.last() == Some(&b'\r') {
            line = &line[..line.len() - 1];
        }
        position = line_end + 1;
        if line.is_empty() {
            return Ok((headers, position));
        }
        let text = String::from_utf8_lossy(line);
        if line[0].is_ascii_whitespace() || line[0] == b'\x0b' {
            // Folded continuation of the previous header, which PHP still honours by
            // appending the line as it is.
            if let Some((_, value)) = headers.last_mut() {
                value.push_str(&text);
            }
            continue;
        }
        // PHP keeps the name up to the colon as it is and skips the blanks after it.
        if let Some((name, value)) = text.split_once(':') {
            headers.push((
                name.to_string(),
                value.trim_start_matches(c_space).to_string(),
            ));
        }
    }
}

fn skip_line_end(body: &[u8], position: usize) -> Option<usize> {
    match body.get(position..) {
        Some([b'\r', b'\n', ..]) => Some(position + 2),
        Some([b'\n', ..]) => Some(position + 1),
        _ => None,
    }
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() || from > haystack.len() {
        return None;
    }
    let first = needle[0];
    let mut start = from;
    while start + needle.len() <= haystack.len() {
        let offset = haystack[start..=haystack.len() - needle.len()]
            .iter()
            .position(|&byte| byte == first)?;
        let candidate = start + offset;
        if &haystack[candidate..candidate + needle.len()] == needle {
            return Some(candidate);
        }
        start = candidate + 1;
    }
    None
}

/// Splits at `stop` outside quoted strings, like PHP's `php_ap_getword`: a quote opens a
/// string that only the same quote closes, and a backslash escapes that quote inside it.
fn split_unquoted(text: &str, stop: u8) -> Vec<String> {
    let bytes = text.as_bytes();
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut index = 0;
    while index < bytes.len() {
        let byte = bytes[index];
        if byte == b'"' || byte == b'\'' {
            index += 1;
            while index < bytes.len() && bytes[index] != byte {
                if bytes[index] == b'\\' && bytes.get(index + 1) == Some(&byte) {
                    index += 1;
                }
                index += 1;
            }
            index += 1;
        } else if byte == stop {
            pieces.push(String::from_utf8_lossy(&bytes[start..index]).into_owned());
            index += 1;
            start = index;
        } else {
            index += 1;
        }
    }
    if start < bytes.len() {
        pieces.push(String::from_utf8_lossy(&bytes[start..]).into_owned());
    }
    pieces
}

/// A parameter value as PHP's `php_ap_getword_conf` reads it: quoted strings keep their raw
/// bytes (no percent-decoding) except that `\"` and `\\` lose the backslash; unquoted values
/// end at whitespace.
fn php_word(value: &str) -> String {
    let value = value.trim_start_matches(c_space);
    let mut chars = value.chars();
    let quote = match value.chars().next() {
        Some(quote @ ('"' | '\'')) => {
            chars.next();
            Some(quote)
        }
        _ => None,
    };
    let mut out = String::new();
    let mut chars = chars.peekable();
    while let Some(character) = chars.next() {
        match quote {
            Some(quote) if character == quote => break,
            None if c_space(character) => break,
            _ => {}
        }
        if character == '\\' {
            if let Some(&next) = chars.peek() {
                if next == '\\' || Some(next) == quote {
                    out.push(next);
                    chars.next();
                    continue;
                }
            }
        }
        out.push(character);
    }
    out
}

/// PHP keeps only what follows the last `/` or `\` of an uploaded file's name (old browsers
/// sent full client paths), so a name with a backslash loses everything before it.
fn php_basename(name: &str) -> String {
    match name.rfind(['/', '\\']) {
        Some(index) => name[index + 1..].to_string(),
        None => name.to_string(),
    }
}

/// C's `isspace`, which PHP's parser uses: ASCII blanks only, never a non-breaking space.
fn c_space(character: char) -> bool {
    matches!(character, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r')
}

/// Strips one pair of surrounding double quotes from a header parameter.
fn unquote(value: &str) -> String {
    value
        .strip_prefix('"')
        .and_then(|inner| inner.strip_suffix('"'))
        .unwrap_or(value)
        .to_string()
}

#[cfg(test)]
mod unit {
    use super::*;

    fn body(text: &str) -> Bytes {
        Bytes::from(text.replace('\n', "\r\n"))
    }

    #[test]
    fn boundary_is_read_quoted_or_bare() {
        assert_eq!(
            boundary("multipart/form-data; boundary=abc").as_deref(),
            Ok("abc")
        );
        assert_eq!(
            boundary("Multipart/Form-Data; charset=utf-8; boundary=\"a b\"").as_deref(),
            Ok("a b")
        );
        assert_eq!(
            boundary("application/json"),
            Err(MultipartError::NotMultipart)
        );
        assert_eq!(
            boundary("multipart/form-data"),
            Err(MultipartError::NoBoundary)
        );
    }

    #[test]
    fn parts_are_split_with_file_names_kept_raw() {
        let body = body(
            "preamble\n--XX\nContent-Disposition: form-data; name=\"subject_type\"\n\nRun\n\
             --XX\nContent-Disposition: form-data; name=\"name\"; filename=\"a %22b\\\" ü.pdf\"\n\
             Content-Type: application/pdf\n\n%PDF\n\nx\n--XX--\n",
        );
        let parts = parse(&body, "XX").expect("parses");
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].name, "subject_type");
        assert_eq!(parts[0].filename, None);
        assert_eq!(&parts[0].data[..], b"Run");
        assert_eq!(parts[1].filename.as_deref(), Some("a %22b\" ü.pdf"));
        assert_eq!(&parts[1].data[..], b"%PDF\r\n\r\nx");
    }

    #[test]
    fn filename_star_alone_does_not_make_a_file() {
        let body = body(
            "--XX\nContent-Disposition: form-data; name=\"name\"; filename*=utf-8''a%20b.pdf\n\n\
             data\n--XX--\n",
        );
        let parts = parse(&body, "XX").expect("parses");
        assert_eq!(parts[0].filename, None);
    }

    #[test]
    fn directories_are_stripped_from_file_names_like_php() {
        let body = body(
            "--XX\nContent-Disposition: form-data; name=\"name\"; filename=\"C:\\\\dir\\\\a.pdf\"\n\n\
             data\n--XX--\n",
        );
        let parts = parse(&body, "XX").expect("parses");
        assert_eq!(parts[0].filename.as_deref(), Some("a.pdf"));
    }

    /// The file name PHP stores for one `filename=` parameter as it appears on the wire.
    fn stored(parameter: &str) -> Option<String> {
        let body = body(&format!(
            "--XX\nContent-Disposition: form-data; name=\"name\"; {parameter}\n\ndata\n--XX--\n"
        ));
        parse(&body, "XX").expect("parses")[0].filename.clone()
    }

    #[test]
    fn file_names_are_unescaped_and_cut_exactly_as_php_does() {
        let cases = [
            (r#"filename="a \"b\".pdf""#, "a \"b\".pdf"),
            (r#"filename="a%22b%0A.pdf""#, "a%22b%0A.pdf"),
            (r#"filename="dir\\a.pdf""#, "a.pdf"),
            (r#"filename="dir\a.pdf""#, "a.pdf"),
            (r#"filename="x/y\z.pdf""#, "z.pdf"),
            (r#"filename="x\\y/z.pdf""#, "z.pdf"),
            // A backslash before anything but `"` or `\` stays, and then cuts the name.
            (r#"filename="a\tb.pdf""#, "tb.pdf"),
            (r#"filename='it\'s.pdf'"#, "it's.pdf"),
            ("filename=plain.pdf", "plain.pdf"),
            ("filename=two words.pdf", "two"),
            ("filename=\"nbsp\u{a0}.pdf\"", "nbsp\u{a0}.pdf"),
            ("filename=nbsp\u{a0}x.pdf", "nbsp\u{a0}x.pdf"),
            (r#"filename="Résumé \"final\".pdf""#, "Résumé \"final\".pdf"),
        ];
        for (parameter, name) in cases {
            assert_eq!(stored(parameter).as_deref(), Some(name), "{parameter}");
        }
    }

    #[test]
    fn a_blank_before_the_equals_sign_hides_the_parameter_as_from_php() {
        assert_eq!(stored(r#"filename ="a.pdf""#), None);
    }

    #[test]
    fn a_semicolon_inside_quotes_does_not_split_parameters() {
        let body = body(
            "--XX\nContent-Disposition: form-data; name=\"name\"; filename=\"a;b.pdf\"\n\n\
             \n--XX--\n",
        );
        let parts = parse(&body, "XX").expect("parses");
        assert_eq!(parts[0].filename.as_deref(), Some("a;b.pdf"));
        assert!(parts[0].data.is_empty());
    }

    #[test]
    fn a_truncated_body_is_an_error() {
        let body = body("--XX\nContent-Disposition: form-data; name=\"a\"\n\nvalue");
        assert!(matches!(
            parse(&body, "XX"),
            Err(MultipartError::UnterminatedPart)
        ));
    }
}
