//! The upload's multipart/form-data body, written by hand so the filename goes out the way
//! Tallyfy's PHP parser reads it (raw UTF-8 in `filename="…"`, `"` as `\"`; see `stored_name`)
//! and the Content-Length is known up front. The file is streamed from disk and hashed as it is read,
//! so the content hashed is exactly the content sent; a file that grows or shrinks while it is
//! being sent fails the request instead of uploading a torn copy.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{stream, Stream, StreamExt};
use tokio_util::io::ReaderStream;

const CHUNK: usize = 256 * 1024;
/// Files up to this size go out in one piece, read in one go: most hot-folder files are small,
/// and a stream of chunks costs a hand-off to the blocking pool per read and a write per chunk.
/// Larger files stream, so memory stays flat whatever their size.
const WHOLE: u64 = 256 * 1024;

/// What the upload stream learned about the file: its hash, or why it stopped.
#[derive(Default)]
struct Progress {
    hasher: blake3::Hasher,
    sent: u64,
    failure: Option<String>,
}

#[derive(Clone, Default)]
pub struct Tracker(Arc<Mutex<Progress>>);

impl Tracker {
    fn lock(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.0.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    /// The content hash, once the whole file was sent.
    pub fn hash(&self) -> String {
        self.lock().hasher.finalize().to_hex().to_string()
    }

    /// Why the file could not be sent completely, if it could not.
    pub fn failure(&self) -> Option<String> {
        self.lock().failure.clone()
    }
}

pub struct Body {
    pub content_type: String,
    pub length: u64,
    pub stream: std::pin::Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>,
    pub tracker: Tracker,
}

/// The name Tallyfy stores for a local file name. PHP's multipart parser (php-src
/// `main/rfc1867.c`) keeps only what follows the last `/` or `\\` and does not percent-decode,
/// so a backslash would cut the name and CR, LF and other control characters cannot survive the
/// header line: each becomes `_`. Everything else, quotes and non-ASCII letters included, is
/// stored as it is.
pub fn stored_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c == '\\' || c == '/' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect()
}

/// The local name as it goes into `filename="…"`: the stored name with `"` escaped as `\\"`,
/// which PHP unescapes (a browser's `%22` would be stored as the three characters `%22`).
pub fn escape_filename(name: &str) -> String {
    stored_name(name).replace('"', "\\\"")
}

fn boundary() -> String {
    let seed = format!(
        "{:?}{:?}",
        std::time::SystemTime::now(),
        std::thread::current().id()
    );
    let hash = blake3::hash(seed.as_bytes()).to_hex();
    format!("tallyfy-sync-{}", &hash[..32])
}

/// Builds the body: the text `fields` first, then the file as part `name`. A small file is read
/// here, before any upload slot is taken; `Err` says why it could not be read as announced.
pub async fn build(
    fields: &[(&str, &str)],
    path: &Path,
    file_name: &str,
    file: tokio::fs::File,
    size: u64,
) -> Result<Body, String> {
    let boundary = boundary();
    let mut head = String::new();
    for (name, value) in fields {
        head.push_str(&format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
        ));
    }
    head.push_str(&format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"name\"; filename=\"{}\"\r\nContent-Type: application/octet-stream\r\n\r\n",
        escape_filename(file_name)
    ));
    let tail = format!("\r\n--{boundary}--\r\n");
    let length = head.len() as u64 + size + tail.len() as u64;
    let tracker = Tracker::default();
    let content_type = format!("multipart/form-data; boundary={boundary}");
    if size <= WHOLE {
        let whole = whole(file, path.to_path_buf(), size, &tracker, head, tail)
            .await
            .map_err(|error| error.to_string())?;
        return Ok(Body {
            content_type,
            length,
            stream: Box::pin(stream::once(async move { Ok(whole) })),
            tracker,
        });
    }
    let content = hashed(
        ReaderStream::with_capacity(file, CHUNK),
        path.to_path_buf(),
        size,
        tracker.clone(),
    );
    let stream = stream::once(async move { Ok(Bytes::from(head)) })
        .chain(content)
        .chain(stream::once(async move { Ok(Bytes::from(tail)) }));
    Ok(Body {
        content_type,
        length,
        stream: Box::pin(stream),
        tracker,
    })
}

/// The whole body of a small file in one piece: the file read in one go (one byte more than
/// announced, to notice growth), hashed, and checked against the announced size.
async fn whole(
    file: tokio::fs::File,
    path: PathBuf,
    size: u64,
    tracker: &Tracker,
    head: String,
    tail: String,
) -> std::io::Result<Bytes> {
    use std::io::Read;
    let file = file.into_std().await;
    let read = tokio::task::spawn_blocking(move || {
        let mut content = Vec::with_capacity(head.len() + size as usize + tail.len() + 1);
        content.extend_from_slice(head.as_bytes());
        file.take(size + 1).read_to_end(&mut content)?;
        Ok::<_, std::io::Error>((content, head.len(), tail))
    })
    .await
    .unwrap_or_else(|error| Err(std::io::Error::other(error)));
    let mut progress = tracker.lock();
    let problem = match read {
        Err(error) => format!("{}: {error}", path.display()),
        Ok((mut content, start, tail)) => {
            let sent = (content.len() - start) as u64;
            if sent == size {
                progress.hasher.update(&content[start..]);
                progress.sent = sent;
                content.extend_from_slice(tail.as_bytes());
                return Ok(Bytes::from(content));
            }
            if sent > size {
                format!("the file grew while it was being uploaded (expected {size} bytes)")
            } else {
                format!("the file shrank while it was being uploaded ({sent} of {size} bytes)")
            }
        }
    };
    progress.failure = Some(problem.clone());
    Err(std::io::Error::other(problem))
}

/// Passes the file's chunks through, hashing them, and turns a size that differs from the one
/// announced in Content-Length into an error rather than a short or overlong body.
fn hashed(
    file: ReaderStream<tokio::fs::File>,
    path: PathBuf,
    size: u64,
    tracker: Tracker,
) -> impl Stream<Item = std::io::Result<Bytes>> {
    let fail = |tracker: &Tracker, detail: String| {
        tracker.lock().failure = Some(detail.clone());
        std::io::Error::other(detail)
    };
    let end_tracker = tracker.clone();
    file.map(move |chunk| {
        let chunk =
            chunk.map_err(|error| fail(&tracker, format!("{}: {error}", path.display())))?;
        let mut progress = tracker.lock();
        progress.sent += chunk.len() as u64;
        if progress.sent > size {
            drop(progress);
            return Err(fail(
                &tracker,
                format!("the file grew while it was being uploaded (expected {size} bytes)"),
            ));
        }
        progress.hasher.update(&chunk);
        Ok(chunk)
    })
    .chain(stream::once(async move {
        let sent = end_tracker.lock().sent;
        if sent < size {
            return Err(fail(
                &end_tracker,
                format!("the file shrank while it was being uploaded ({sent} of {size} bytes)"),
            ));
        }
        Ok(Bytes::new())
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn collect(body: Body) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut stream = body.stream;
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(out)
    }

    #[test]
    fn filenames_keep_unicode_and_spaces_escape_quotes_and_replace_what_php_cannot_store() {
        assert_eq!(
            escape_filename("Facture n°1 \"final\"\r\n.pdf"),
            "Facture n°1 \\\"final\\\"__.pdf"
        );
        assert_eq!(stored_name("a\\b\tc\u{1b}.pdf"), "a_b_c_.pdf");
        assert_eq!(stored_name("Résumé \"final\".pdf"), "Résumé \"final\".pdf");
    }

    #[tokio::test]
    async fn the_body_length_matches_what_is_sent_and_the_hash_matches_the_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a b.pdf");
        std::fs::write(&path, b"hello world").unwrap();
        let file = tokio::fs::File::open(&path).await.unwrap();
        let body = build(&[("subject_type", "Run")], &path, "a b.pdf", file, 11)
            .await
            .unwrap();
        let (length, tracker) = (body.length, body.tracker.clone());
        let bytes = collect(body).await.unwrap();
        assert_eq!(bytes.len() as u64, length);
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            text.contains("name=\"name\"; filename=\"a b.pdf\"\r\n"),
            "{text}"
        );
        assert!(text.contains("name=\"subject_type\"\r\n\r\nRun\r\n"));
        assert_eq!(
            tracker.hash(),
            blake3::hash(b"hello world").to_hex().to_string()
        );
    }

    #[tokio::test]
    async fn a_file_larger_than_one_piece_streams_with_the_same_length_and_hash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.pdf");
        let content: Vec<u8> = (0..WHOLE as usize * 3 + 7).map(|i| i as u8).collect();
        std::fs::write(&path, &content).unwrap();
        let file = tokio::fs::File::open(&path).await.unwrap();
        let body = build(&[], &path, "big.pdf", file, content.len() as u64)
            .await
            .unwrap();
        let (length, tracker) = (body.length, body.tracker.clone());
        let bytes = collect(body).await.unwrap();
        assert_eq!(bytes.len() as u64, length);
        assert_eq!(tracker.hash(), blake3::hash(&content).to_hex().to_string());
    }

    #[tokio::test]
    async fn a_small_file_longer_than_announced_is_refused_before_sending() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.pdf");
        std::fs::write(&path, b"longer than said").unwrap();
        let file = tokio::fs::File::open(&path).await.unwrap();
        let Err(problem) = build(&[], &path, "a.pdf", file, 4).await else {
            panic!("a file longer than announced was accepted");
        };
        assert!(problem.contains("grew"), "{problem}");
    }

    #[tokio::test]
    async fn a_small_file_shorter_than_announced_is_refused_before_sending() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.pdf");
        std::fs::write(&path, b"short").unwrap();
        let file = tokio::fs::File::open(&path).await.unwrap();
        let Err(problem) = build(&[], &path, "a.pdf", file, 100).await else {
            panic!("a file shorter than announced was accepted");
        };
        assert!(problem.contains("shrank"), "{problem}");
    }
}
