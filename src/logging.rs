//! Log output. Receives the configured `log.format` and the environment (RUST_LOG-style filter,
//! default `info`; JOURNAL_STREAM; whether stderr is a terminal); emits tracing events as
//! journal entries with one field per event field (FOLDER=, FILE=, ASSET_ID=...), as JSON lines,
//! or as text lines (coloured on a terminal). Owns the choice, the journal's native protocol
//! and the escaping of control characters in every human-readable line (text and MESSAGE).

use std::fmt::{self, Write as _};
use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::layer::{Context, Layered, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// The value of `log.format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// The journal when stderr is connected to it, else text.
    #[default]
    Auto,
    Text,
    Json,
    Journald,
}

impl LogFormat {
    pub const NAMES: &'static str = "auto, text, json or journald";

    pub fn parse(name: &str) -> Option<LogFormat> {
        match name {
            "auto" => Some(LogFormat::Auto),
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            "journald" => Some(LogFormat::Journald),
            _ => None,
        }
    }
}

type Output = Box<dyn Layer<Layered<EnvFilter, Registry>> + Send + Sync>;

/// A path for a log field, exactly: where `Path::display` would put U+FFFD for bytes that are
/// not UTF-8 (and so lose which bytes they were), each such byte is written `\xNN`.
pub struct Exact<'a>(&'a Path);

pub fn exact(path: &Path) -> Exact<'_> {
    Exact(path)
}

impl fmt::Display for Exact<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for chunk in self.0.as_os_str().as_encoded_bytes().utf8_chunks() {
            f.write_str(chunk.valid())?;
            for byte in chunk.invalid() {
                write!(f, "\\x{byte:02x}")?;
            }
        }
        Ok(())
    }
}

/// Whether the installed output writes JSON lines, so that a fatal error goes out as one too.
static JSON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Reports the error a command ends with: an ERROR event where logs are JSON (a log shipper
/// then reads every line of stderr as JSON), else the plain line people read.
pub fn fatal(error: &anyhow::Error) {
    let text = format!("{error:#}");
    if JSON.load(std::sync::atomic::Ordering::Relaxed) {
        tracing::error!(error = %text, "tallyfy-sync stopped: {text}");
    } else {
        eprintln!("tallyfy-sync: {text}");
    }
}

/// Installs the process-wide subscriber; call once, before anything logs.
pub fn init(format: LogFormat) {
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Every sled failure reaches us as an error, logged with the state directory and what
    // happens next; sled's own lines repeat it without either (and a database closed after a
    // full disk complains of the flush it no longer needs). RUST_LOG=sled=... shows them.
    let sled_asked = std::env::var("RUST_LOG").is_ok_and(|filter| filter.contains("sled"));
    if let (false, Ok(quiet)) = (sled_asked, "sled=off".parse()) {
        filter = filter.add_directive(quiet);
    }
    let under_journal = stderr_is_journal();
    let text = |colour: bool| -> Output {
        let layer = tracing_subscriber::fmt::layer()
            .fmt_fields(EscapedFields)
            .with_writer(std::io::stderr)
            .with_target(false)
            .with_ansi(colour);
        // The journal stamps each line itself.
        if under_journal {
            Box::new(layer.without_time())
        } else {
            Box::new(layer)
        }
    };
    let terminal = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let journal = format == LogFormat::Journald || (format == LogFormat::Auto && under_journal);
    let mut unreachable = None;
    let output = match format {
        _ if journal => match Journald::connect(Path::new(JOURNAL_SOCKET)) {
            Ok(journal) => Box::new(journal),
            Err(error) => {
                unreachable = Some(error);
                text(false)
            }
        },
        LogFormat::Auto => text(terminal),
        LogFormat::Text | LogFormat::Journald => text(false),
        LogFormat::Json => {
            JSON.store(true, std::sync::atomic::Ordering::Relaxed);
            Box::new(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    // The module path would be a second "target" key next to the field's.
                    .with_target(false)
                    .with_current_span(false)
                    .with_span_list(false)
                    .with_writer(|| Redacting(std::io::stderr())),
            )
        }
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(output)
        .init();
    if let Some(error) = unreachable {
        tracing::warn!(%error, socket = JOURNAL_SOCKET, "cannot reach the journal; logging text to stderr instead");
    }
}

/// systemd sets JOURNAL_STREAM to the device and inode of the stream it connected to stdout
/// and stderr; they must match stderr, or stderr was redirected since and the journal is not
/// where text goes.
fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    match std::fs::File::from(fd).metadata() {
        Ok(stderr) => names_stream(&stream.to_string_lossy(), stderr.dev(), stderr.ino()),
        Err(_) => false,
    }
}

/// Whether a JOURNAL_STREAM value ("DEV:INODE") names this device and inode.
fn names_stream(value: &str, dev: u64, ino: u64) -> bool {
    value
        .split_once(':')
        .is_some_and(|(stream_dev, stream_ino)| {
            stream_dev.parse() == Ok(dev) && stream_ino.parse() == Ok(ino)
        })
}

/// Sends each event to journald as one entry: MESSAGE is the line a terminal would show
/// (message and fields, without time or level), PRIORITY follows the level, and every field
/// is also a journal field of its own, upper-cased, for `journalctl FILE=...`.
struct Journald {
    socket: UnixDatagram,
}

impl Journald {
    fn connect(socket: &Path) -> std::io::Result<Journald> {
        let datagram = UnixDatagram::unbound()?;
        datagram.connect(socket)?;
        Ok(Journald { socket: datagram })
    }

    fn entry(event: &Event<'_>) -> (String, Vec<u8>) {
        let meta = event.metadata();
        let mut message = String::new();
        let _ = EscapedFields.format_fields(Writer::new(&mut message), event);
        let mut entry = Vec::with_capacity(256 + message.len());
        put(&mut entry, "MESSAGE", message.as_bytes());
        put(&mut entry, "PRIORITY", priority(meta.level()).as_bytes());
        put(
            &mut entry,
            "SYSLOG_IDENTIFIER",
            env!("CARGO_PKG_NAME").as_bytes(),
        );
        if let Some(file) = meta.file() {
            put(&mut entry, "CODE_FILE", file.as_bytes());
        }
        if let Some(line) = meta.line() {
            put(&mut entry, "CODE_LINE", line.to_string().as_bytes());
        }
        event.record(&mut FieldVisitor(&mut entry));
        (message, entry)
    }
}

impl<S: Subscriber> Layer<S> for Journald {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let (message, entry) = Journald::entry(event);
        if self.socket.send(&entry).is_err() {
            // Too large for a datagram, or journald is gone: stderr still reaches someone.
            eprintln!("{message}");
        }
    }
}

/// Formats fields as tracing's default does (`message name=value ...`, strings quoted), but with
/// every control character in the message and in each value escaped (`\n`, `\u{1b}`): a file
/// name or a server message can then neither start a line that looks like the daemon's own nor
/// reach a terminal raw. Structured outputs (JSON, journal fields) keep the exact text.
struct EscapedFields;

impl<'writer> FormatFields<'writer> for EscapedFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        let mut visitor = EscapingVisitor {
            writer: &mut writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct EscapingVisitor<'a, 'writer> {
    writer: &'a mut Writer<'writer>,
    first: bool,
    result: fmt::Result,
}

impl EscapingVisitor<'_, '_> {
    fn write(&mut self, field: &Field, value: fmt::Arguments<'_>) {
        let name = field.name();
        // Metadata of records bridged from the `log` crate, already shown as the target.
        if self.result.is_err() || name.starts_with("log.") {
            return;
        }
        if !std::mem::take(&mut self.first) {
            self.result = self.writer.write_char(' ');
        }
        if name != "message" {
            let name = name.strip_prefix("r#").unwrap_or(name);
            self.result = self.result.and_then(|()| {
                if self.writer.has_ansi_escapes() {
                    // Italic name, dimmed `=`, as tracing's default.
                    write!(self.writer, "\x1b[3m{name}\x1b[0m\x1b[2m=\x1b[0m")
                } else {
                    write!(self.writer, "{name}=")
                }
            });
        }
        self.result = self
            .result
            .and_then(|()| Escaping(&mut *self.writer).write_fmt(value));
    }
}

impl Visit for EscapingVisitor<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.write(field, format_args!("{value}"));
        } else {
            self.write(field, format_args!("{value:?}"));
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.write(field, format_args!("{value}"));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.write(field, format_args!("{value:?}"));
    }
}

/// Passes text through with its control characters escaped.
struct Escaping<'a>(&'a mut dyn fmt::Write);

impl fmt::Write for Escaping<'_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        write!(self.0, "{}", crate::text::escaped(text))
    }
}

/// syslog priorities: error 3, warning 4, info 6, debug 7.
fn priority(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "3",
        Level::WARN => "4",
        Level::INFO => "6",
        _ => "7",
    }
}

/// Appends one field in the native protocol: `NAME=value\n`, or for a value holding a
/// newline, `NAME\n`, its length as 64-bit little-endian, the value and `\n`.
fn put(entry: &mut Vec<u8>, name: &str, value: &[u8]) {
    entry.extend_from_slice(name.as_bytes());
    if value.contains(&b'\n') {
        entry.push(b'\n');
        entry.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        entry.push(b'=');
    }
    entry.extend_from_slice(value);
    entry.push(b'\n');
}

/// Journal field names are upper-case letters, digits and `_`, not starting with `_` (those
/// are trusted fields journald sets itself) or a digit.
fn journal_name(field: &str) -> String {
    let name: String = field
        .chars()
        .map(|c| match c {
            'a'..='z' => c.to_ascii_uppercase(),
            'A'..='Z' | '0'..='9' => c,
            _ => '_',
        })
        .collect();
    let name = name.trim_start_matches(|c: char| c == '_' || c.is_ascii_digit());
    format!("{name:.64}")
}

/// JSON lines with every known secret redacted: the formatter hands over one whole event per
/// write.
struct Redacting<W>(W);

impl<W: std::io::Write> std::io::Write for Redacting<W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(bytes);
        self.0.write_all(crate::text::redact(&text).as_bytes())?;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// Journal fields keep the exact text, but never a secret.
struct FieldVisitor<'a>(&'a mut Vec<u8>);

impl Visit for FieldVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() != "message" {
            let value = crate::text::redact(value);
            put(self.0, &journal_name(field.name()), value.as_bytes());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() != "message" {
            let mut text = String::new();
            let _ = write!(text, "{value:?}");
            let text = crate::text::redact(&text);
            put(self.0, &journal_name(field.name()), text.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::{error, info};

    /// Entries the layer sends for whatever `log` emits, read from a socket standing in for
    /// journald's.
    fn entries(log: impl FnOnce()) -> Vec<Vec<u8>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.socket");
        let journal = UnixDatagram::bind(&path).unwrap();
        journal.set_nonblocking(true).unwrap();
        let layer = Journald::connect(&path).unwrap();
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), log);
        let mut received = Vec::new();
        let mut buffer = vec![0; 65536];
        while let Ok(n) = journal.recv(&mut buffer) {
            received.push(buffer[..n].to_vec());
        }
        received
    }

    fn has(entry: &[u8], field: &str) -> bool {
        entry
            .split(|&b| b == b'\n')
            .any(|line| line == field.as_bytes())
    }

    #[test]
    fn a_journal_entry_carries_the_readable_line_and_each_field_on_its_own() {
        let folder = Path::new("/srv/in");
        let file = folder.join("a b.pdf");
        let sent = entries(|| {
            info!(folder = %folder.display(), file = %file.display(), asset_id = "as1", attempt = 2u32, "attached");
        });
        let [entry] = &sent[..] else {
            panic!("expected one entry, got {}", sent.len());
        };
        let text = String::from_utf8_lossy(entry);
        for field in [
            "MESSAGE=attached folder=/srv/in file=/srv/in/a b.pdf asset_id=\"as1\" attempt=2",
            "PRIORITY=6",
            "SYSLOG_IDENTIFIER=tallyfy-sync",
            "FOLDER=/srv/in",
            "FILE=/srv/in/a b.pdf",
            "ASSET_ID=as1",
            "ATTEMPT=2",
        ] {
            assert!(has(entry, field), "{field:?} missing from\n{text}");
        }
        assert!(
            !text.contains("\u{1b}["),
            "ANSI escapes in the entry:\n{text}"
        );
    }

    #[test]
    fn a_value_with_a_newline_uses_the_binary_form_and_errors_get_priority_3() {
        let sent = entries(|| error!(error = "line one\nline two", "upload failed"));
        let entry = &sent[0];
        let value = b"line one\nline two";
        let mut binary = b"ERROR\n".to_vec();
        binary.extend_from_slice(&(value.len() as u64).to_le_bytes());
        binary.extend_from_slice(value);
        binary.push(b'\n');
        assert!(
            entry.windows(binary.len()).any(|window| window == binary),
            "{}",
            String::from_utf8_lossy(entry)
        );
        assert!(has(entry, "PRIORITY=3"));
    }

    #[test]
    fn control_characters_are_escaped_in_the_message_but_kept_in_the_journal_fields() {
        let file = Path::new("/srv/in/x\n2026-11-25T00:00:00Z  INFO attached\u{1b}[2J.pdf");
        let sent = entries(|| info!(file = %file.display(), "attached {}", file.display()));
        let entry = &sent[0];
        let shown = "/srv/in/x\\n2026-11-25T00:00:00Z  INFO attached\\u{1b}[2J.pdf";
        let message = format!("MESSAGE=attached {shown} file={shown}");
        assert!(has(entry, &message), "{}", String::from_utf8_lossy(entry));
        let exact = file.as_os_str().as_encoded_bytes();
        let mut binary = b"FILE\n".to_vec();
        binary.extend_from_slice(&(exact.len() as u64).to_le_bytes());
        binary.extend_from_slice(exact);
        assert!(entry.windows(binary.len()).any(|window| window == binary));
    }

    /// What the text output writes for whatever `log` emits.
    fn text_lines(log: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Buffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let layer = tracing_subscriber::fmt::layer()
            .fmt_fields(EscapedFields)
            .with_ansi(false)
            .without_time()
            .with_target(false)
            .with_writer(move || writer.clone());
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), log);
        let bytes = buffer.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn a_text_line_stays_one_line_whatever_its_fields_hold() {
        let file = Path::new("/srv/in/a\r\nb\tc.pdf");
        let server = std::io::Error::other("refused\nERROR forged");
        let text = text_lines(|| {
            error!(file = %file.display(), error = &server as &(dyn std::error::Error + 'static), detail = "x\ny", "upload\nfailed");
        });
        assert_eq!(
            text,
            "ERROR upload\\nfailed file=/srv/in/a\\r\\nb\\tc.pdf error=refused\\nERROR forged detail=\"x\\ny\"\n"
        );
    }

    #[test]
    fn field_names_become_valid_journal_names() {
        assert_eq!(journal_name("http_status"), "HTTP_STATUS");
        assert_eq!(journal_name("_private"), "PRIVATE");
        assert_eq!(journal_name("state.dir"), "STATE_DIR");
        assert_eq!(journal_name(&"x".repeat(80)).len(), 64);
    }

    #[test]
    fn journal_stream_must_name_the_same_device_and_inode() {
        assert!(names_stream("8:1234", 8, 1234));
        assert!(!names_stream("8:1234", 8, 1235));
        assert!(!names_stream("9:1234", 8, 1234));
        assert!(!names_stream("garbage", 8, 1234));
    }

    #[test]
    fn log_formats_parse_by_name() {
        assert_eq!(LogFormat::parse("auto"), Some(LogFormat::Auto));
        assert_eq!(LogFormat::parse("text"), Some(LogFormat::Text));
        assert_eq!(LogFormat::parse("json"), Some(LogFormat::Json));
        assert_eq!(LogFormat::parse("journald"), Some(LogFormat::Journald));
        assert_eq!(LogFormat::parse("JSON"), None);
    }
}
