//! The upload's multipart/form-data body, written by hand so the filename goes out the way
//! browsers send it (raw UTF-8 in `filename="…"`, only `"` CR LF escaped as %22 %0D %0A) and the
//! Content-Length is known up front. The file is streamed from disk and hashed as it is read,
//! so the content hashed is exactly the content sent; a file that grows or shrinks while it is
//! being sent fails the request instead of uploading a torn copy.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{stream, Stream, StreamExt};
use tokio_util::io::ReaderStream;

const CHUNK: usize = 64 * 1024;

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

/// Escapes a filename for `filename="…"` as browsers do (RFC 7578 §4.2, WHATWG HTML).
pub fn escape_filename(name: &str) -> String {
    name.replace('"', "%22")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
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

/// Builds the body: the text `fields` first, then the file as part `name`.
pub fn build(
    fields: &[(&str, &str)],
    path: &Path,
    file_name: &str,
    file: tokio::fs::File,
    size: u64,
) -> Body {
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
    let content = hashed(
        ReaderStream::with_capacity(file, CHUNK),
        path.to_path_buf(),
        size,
        tracker.clone(),
    );
    let stream = stream::once(async move { Ok(Bytes::from(head)) })
        .chain(content)
        .chain(stream::once(async move { Ok(Bytes::from(tail)) }));
    Body {
        content_type: format!("multipart/form-data; boundary={boundary}"),
        length,
        stream: Box::pin(stream),
        tracker,
    }
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
    fn filenames_keep_unicode_and_spaces_and_escape_quotes_and_newlines() {
        assert_eq!(
            escape_filename("Facture n°1 \"final\"\r\n.pdf"),
            "Facture n°1 %22final%22%0D%0A.pdf"
        );
    }

    #[tokio::test]
    async fn the_body_length_matches_what_is_sent_and_the_hash_matches_the_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a b.pdf");
        std::fs::write(&path, b"hello world").unwrap();
        let file = tokio::fs::File::open(&path).await.unwrap();
        let body = build(&[("subject_type", "Run")], &path, "a b.pdf", file, 11);
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
    async fn a_file_shorter_than_announced_fails_the_stream() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.pdf");
        std::fs::write(&path, b"short").unwrap();
        let file = tokio::fs::File::open(&path).await.unwrap();
        let body = build(&[], &path, "a.pdf", file, 100);
        let tracker = body.tracker.clone();
        assert!(collect(body).await.is_err());
        assert!(tracker.failure().unwrap().contains("shrank"));
    }
}
