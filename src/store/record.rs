//! How a file's record is written in the `files` tree: a compact binary form, read back
//! field by field. Receives a `FileRecord` and its key (the file's path), emits bytes, and
//! reads those bytes (or a record written as JSON by an earlier version) back.
//! A folder of 20,000 files keeps every record in sled's memory once read: JSON with field
//! names, a hex hash and decimal times took about 700 bytes each, this form about 450.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::{hex, unhex, Asset, FileMeta, FileRecord, FileState, RunRef};

/// The first byte of a record in this form; JSON records start with `{`.
const FORMAT: u8 = 1;

/// The record's bytes. Its folder is written as a length when it is the start of `key`, as
/// it is for every file the daemon finds.
pub fn encode(key: &[u8], record: &FileRecord) -> Vec<u8> {
    let mut out = Writer(Vec::with_capacity(512));
    out.0.push(FORMAT);
    let folder = record.folder.as_os_str().as_bytes();
    if key.starts_with(folder) {
        out.0.push(0);
        out.number(folder.len() as u64);
    } else {
        out.0.push(1);
        out.bytes(folder);
    }
    out.bytes(record.target.as_bytes());
    out.number(record.meta.size);
    out.signed(record.meta.mtime_ns);
    out.number(record.meta.inode);
    out.signed(record.meta.ctime_ns);
    match record.hash.as_deref().map(|hash| (hash, hash_bytes(hash))) {
        None => out.0.push(0),
        Some((_, Some(hash))) => {
            out.0.push(1);
            out.0.extend_from_slice(&hash);
        }
        Some((hash, None)) => {
            out.0.push(2);
            out.bytes(hash.as_bytes());
        }
    }
    match &record.attached {
        None => out.0.push(0),
        Some(asset) => {
            out.0.push(1);
            out.asset(asset);
        }
    }
    match &record.state {
        FileState::Uploading => out.0.push(0),
        FileState::Uploaded { asset } => {
            out.0.push(1);
            out.asset(asset);
        }
        FileState::Synced => out.0.push(2),
        FileState::Removed => out.0.push(3),
        FileState::Rejected { reason } => {
            out.0.push(4);
            out.bytes(reason.as_bytes());
        }
        FileState::Failed { error } => {
            out.0.push(5);
            out.bytes(error.as_bytes());
        }
        FileState::Launching {
            asset,
            name,
            summary,
        } => {
            out.0.push(6);
            out.asset(asset);
            out.bytes(name.as_bytes());
            out.bytes(summary.as_bytes());
        }
        FileState::Launched { run } => {
            out.0.push(7);
            out.run(run);
        }
        FileState::Duplicate { of, run } => {
            out.0.push(8);
            out.bytes(of.as_os_str().as_bytes());
            match run {
                None => out.0.push(0),
                Some(run) => {
                    out.0.push(1);
                    out.run(run);
                }
            }
        }
        FileState::Waiting { reason } => {
            out.0.push(9);
            out.bytes(reason.as_bytes());
        }
    }
    out.number(record.updated);
    out.number(u64::from(record.attempts));
    out.0
}

/// The record in `bytes`, stored under `key`; what is wrong with them otherwise.
pub fn decode(key: &[u8], bytes: &[u8]) -> Result<FileRecord, String> {
    match bytes.first() {
        Some(b'{') => serde_json::from_slice(bytes).map_err(|error| error.to_string()),
        Some(&FORMAT) => {
            let mut input = Reader { bytes, at: 1 };
            let record = input.record(key)?;
            match input.at == bytes.len() {
                true => Ok(record),
                false => Err(format!("{} bytes left over", bytes.len() - input.at)),
            }
        }
        Some(other) => Err(format!("unknown record format {other}")),
        None => Err("empty record".into()),
    }
}

/// A hash written as 64 lowercase hex digits, as 32 bytes; `None` for any other text, which
/// is then kept as it is.
fn hash_bytes(hash: &str) -> Option<[u8; 32]> {
    let lowercase = hash
        .bytes()
        .all(|digit| matches!(digit, b'0'..=b'9' | b'a'..=b'f'));
    lowercase.then(|| unhex(hash)?.try_into().ok())?
}

struct Writer(Vec<u8>);

impl Writer {
    /// LEB128: most numbers here (sizes, counts, lengths) take one or two bytes.
    fn number(&mut self, mut value: u64) {
        while value >= 0x80 {
            self.0.push((value as u8) | 0x80);
            value >>= 7;
        }
        self.0.push(value as u8);
    }

    fn signed(&mut self, value: i64) {
        self.number(((value << 1) ^ (value >> 63)) as u64);
    }

    fn bytes(&mut self, bytes: &[u8]) {
        self.number(bytes.len() as u64);
        self.0.extend_from_slice(bytes);
    }

    fn asset(&mut self, asset: &Asset) {
        // A JSON value always serializes.
        let text = serde_json::to_vec(&asset.0).unwrap_or_default();
        self.bytes(&text);
    }

    fn run(&mut self, run: &RunRef) {
        self.bytes(run.id.as_bytes());
        self.bytes(run.name.as_bytes());
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn record(&mut self, key: &[u8]) -> Result<FileRecord, String> {
        let folder = match self.byte()? {
            0 => {
                let len = self.length()?;
                key.get(..len).ok_or("folder longer than the path")?
            }
            _ => self.bytes()?,
        };
        let folder = path(folder);
        let target = self.text()?;
        let meta = FileMeta {
            size: self.number()?,
            mtime_ns: self.signed()?,
            inode: self.number()?,
            ctime_ns: self.signed()?,
        };
        let hash = match self.byte()? {
            0 => None,
            1 => Some(hex(self.take(32)?)),
            _ => Some(self.text()?),
        };
        let attached = match self.byte()? {
            0 => None,
            _ => Some(self.asset()?),
        };
        let state = match self.byte()? {
            0 => FileState::Uploading,
            1 => FileState::Uploaded {
                asset: self.asset()?,
            },
            2 => FileState::Synced,
            3 => FileState::Removed,
            4 => FileState::Rejected {
                reason: self.text()?,
            },
            5 => FileState::Failed {
                error: self.text()?,
            },
            6 => FileState::Launching {
                asset: self.asset()?,
                name: self.text()?,
                summary: self.text()?,
            },
            7 => FileState::Launched { run: self.run()? },
            8 => FileState::Duplicate {
                of: path(self.bytes()?),
                run: match self.byte()? {
                    0 => None,
                    _ => Some(self.run()?),
                },
            },
            9 => FileState::Waiting {
                reason: self.text()?,
            },
            other => return Err(format!("unknown state {other}")),
        };
        Ok(FileRecord {
            folder,
            target,
            meta,
            hash,
            attached,
            state,
            updated: self.number()?,
            attempts: u32::try_from(self.number()?).map_err(|_| "attempts out of range")?,
        })
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], String> {
        let end = (self.at.checked_add(len))
            .filter(|end| *end <= self.bytes.len())
            .ok_or("record cut short")?;
        let taken = &self.bytes[self.at..end];
        self.at = end;
        Ok(taken)
    }

    fn byte(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn number(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.byte()?;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("number too long".into())
    }

    fn signed(&mut self) -> Result<i64, String> {
        let value = self.number()?;
        Ok(((value >> 1) as i64) ^ -((value & 1) as i64))
    }

    fn length(&mut self) -> Result<usize, String> {
        usize::try_from(self.number()?).map_err(|_| "length out of range".into())
    }

    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let len = self.length()?;
        self.take(len)
    }

    fn text(&mut self) -> Result<String, String> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| "text that is not UTF-8".into())
    }

    fn asset(&mut self) -> Result<Asset, String> {
        serde_json::from_slice(self.bytes()?).map_err(|error| format!("asset: {error}"))
    }

    fn run(&mut self) -> Result<RunRef, String> {
        Ok(RunRef {
            id: self.text()?,
            name: self.text()?,
        })
    }
}

fn path(bytes: &[u8]) -> PathBuf {
    Path::new(std::ffi::OsStr::from_bytes(bytes)).to_path_buf()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(folder: &str, hash: Option<&str>, state: FileState) -> FileRecord {
        FileRecord {
            folder: folder.into(),
            target: "task:run/task/capture".into(),
            meta: FileMeta {
                size: 4_000_000_000,
                mtime_ns: -1_500_000_000,
                inode: u64::MAX,
                ctime_ns: 1_765_151_234_123_456_789,
            },
            hash: hash.map(str::to_owned),
            attached: Some(Asset(
                json!({"id": "a1", "filename": "a.pdf", "n": [1, null]}),
            )),
            state,
            updated: 1_765_151_234,
            attempts: 3,
        }
    }

    #[test]
    fn every_state_reads_back_as_written() {
        let asset = Asset(json!({"id": 7, "filename": "b.pdf"}));
        let run = RunRef {
            id: "r1".into(),
            name: "Invoice ü".into(),
        };
        let states = [
            FileState::Uploading,
            FileState::Uploaded {
                asset: asset.clone(),
            },
            FileState::Synced,
            FileState::Removed,
            FileState::Rejected {
                reason: "hidden".into(),
            },
            FileState::Failed {
                error: "422".into(),
            },
            FileState::Launching {
                asset,
                name: "n".into(),
                summary: "s".into(),
            },
            FileState::Launched { run: run.clone() },
            FileState::Duplicate {
                of: "/in/x.pdf".into(),
                run: Some(run),
            },
            FileState::Duplicate {
                of: "/in/y.pdf".into(),
                run: None,
            },
            FileState::Waiting {
                reason: "no process".into(),
            },
        ];
        let hashes = [None, Some(&"0f".repeat(32)[..]), Some("ABCDEF"), Some("")];
        for (state, hash) in states.into_iter().zip(hashes.into_iter().cycle()) {
            // A folder the path starts with is written as a length; any other in full.
            for folder in ["/in", "/elsewhere"] {
                let written = record(folder, hash, state.clone());
                let bytes = encode(b"/in/a.pdf", &written);
                assert_eq!(decode(b"/in/a.pdf", &bytes), Ok(written));
            }
        }
    }

    #[test]
    fn records_written_as_json_by_earlier_versions_still_read() {
        let written = record("/in", Some(&"ab".repeat(32)), FileState::Synced);
        let json = serde_json::to_vec(&written).unwrap();
        assert_eq!(decode(b"/in/a.pdf", &json), Ok(written.clone()));
        assert!(encode(b"/in/a.pdf", &written).len() < json.len() * 2 / 3);
    }

    #[test]
    fn damaged_records_are_errors_not_panics() {
        let bytes = encode(b"/in/a.pdf", &record("/in", None, FileState::Synced));
        for len in 0..bytes.len() {
            assert!(decode(b"/in/a.pdf", &bytes[..len]).is_err(), "cut at {len}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(b"/in/a.pdf", &longer).is_err());
        // A folder longer than the key it was written for.
        assert!(decode(b"/i", &bytes).is_err());
        assert_eq!(decode(b"k", &[7]), Err("unknown record format 7".into()));
    }
}
