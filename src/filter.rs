//! The checks a file passes before any bandwidth is spent on it.
//! Receives a path and its `lstat` metadata; emits `Ok` or the `Rejection` that explains why
//! the file is not sent. Owns the list of extensions Tallyfy accepts and the size limit.

use std::fmt;
use std::path::Path;

use crate::config::Folder;

/// Tallyfy's upload limit (the API says 100 MB; we stay on the safe side of both readings).
pub const MAX_SIZE: u64 = 100 * 1024 * 1024;

/// The extensions Tallyfy's file endpoint accepts, compared case-insensitively.
pub const EXTENSIONS: &[&str] = &[
    "xlsx", "xls", "pptx", "docx", "ppt", "doc", "rtf", "pdf", "txt", "mpga", "mov", "qt", "mp4",
    "webm", "jpg", "jpeg", "gif", "png", "ai", "psd", "zip", "xml", "xps", "dwg", "csv", "tif",
    "bmp",
];

/// Names that editors, browsers and copy tools use for files still being written.
const TEMPORARY_SUFFIXES: &[&str] = &[".tmp", ".part", ".crdownload", ".swp"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    Hidden,
    Temporary,
    Ignored { pattern: String },
    Symlink,
    NotAFile,
    NotUtf8,
    Extension { extension: Option<String> },
    TooLarge { size: u64 },
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::Hidden => f.write_str("hidden file (name starts with a dot)"),
            Rejection::Temporary => {
                f.write_str("temporary file (a download, editor or lock file still in use)")
            }
            Rejection::Ignored { pattern } => {
                write!(f, "matches the folder's ignore pattern {pattern:?}")
            }
            Rejection::Symlink => f.write_str("symbolic link (links are never followed)"),
            Rejection::NotAFile => f.write_str("not a regular file"),
            Rejection::NotUtf8 => f.write_str(
                "file name is not valid UTF-8, so Tallyfy cannot store it; rename the file",
            ),
            Rejection::Extension {
                extension: Some(extension),
            } => {
                write!(
                    f,
                    "extension .{extension} is not accepted by Tallyfy (accepted: {})",
                    EXTENSIONS.join(", ")
                )
            }
            Rejection::Extension { extension: None } => {
                write!(
                    f,
                    "no file extension; Tallyfy accepts only {}",
                    EXTENSIONS.join(", ")
                )
            }
            Rejection::TooLarge { size } => {
                write!(
                    f,
                    "{} ({size} bytes) is over Tallyfy's limit of 100 MiB ({MAX_SIZE} bytes)",
                    humansize(*size)
                )
            }
        }
    }
}

/// Files that Windows, macOS and office programs leave in every folder they touch (thumbnail
/// caches, folder settings, lock files of open documents): never anyone's upload, so they are
/// passed over without a warning, a record or a line in `status`.
pub fn is_system_file(name: &std::ffi::OsStr) -> bool {
    let bytes = name.as_encoded_bytes();
    bytes.starts_with(b"~$")
        || [&b"thumbs.db"[..], b"desktop.ini", b".ds_store"]
            .iter()
            .any(|known| bytes.eq_ignore_ascii_case(known))
}

/// Checks a file, given its `symlink_metadata` (never the target's: a link is not followed).
pub fn check(folder: &Folder, path: &Path, metadata: &std::fs::Metadata) -> Result<(), Rejection> {
    let name = path.file_name().unwrap_or_default();
    let Some(name) = name.to_str() else {
        return Err(Rejection::NotUtf8);
    };
    if name.starts_with('.') {
        return Err(Rejection::Hidden);
    }
    let lower = name.to_lowercase();
    if name.starts_with("~$")
        || TEMPORARY_SUFFIXES
            .iter()
            .any(|suffix| lower.ends_with(suffix))
    {
        return Err(Rejection::Temporary);
    }
    if let Some(index) = folder.ignore_set.matches(name).first() {
        return Err(Rejection::Ignored {
            pattern: folder.ignore[*index].clone(),
        });
    }
    if metadata.file_type().is_symlink() {
        return Err(Rejection::Symlink);
    }
    if !metadata.is_file() {
        return Err(Rejection::NotAFile);
    }
    let extension = Path::new(&lower)
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_string);
    if !extension
        .as_deref()
        .is_some_and(|e| EXTENSIONS.contains(&e))
    {
        return Err(Rejection::Extension { extension });
    }
    if metadata.len() > MAX_SIZE {
        return Err(Rejection::TooLarge {
            size: metadata.len(),
        });
    }
    Ok(())
}

/// Whether `dir`, a directory in `folder`, is hidden or lies in a hidden one: a name under the
/// folder starts with a dot (`.Trash-1000`, `.git`, a subfolder renamed `.old`). Nothing in
/// one is ever taken, however it got there: the same rule for scans, watch events and renames.
pub fn hidden_dir(folder: &Folder, dir: &Path) -> bool {
    dir.strip_prefix(&folder.path).is_ok_and(|inside| {
        inside
            .components()
            .any(|name| name.as_os_str().as_encoded_bytes().first() == Some(&b'.'))
    })
}

pub fn humansize(bytes: u64) -> String {
    const UNITS: &[&str] = &["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::Target;
    use std::os::unix::ffi::OsStrExt;

    /// A non-recursive folder with `max_delete: 50%` ignoring `ignore`.
    pub(crate) fn folder(ignore: &[&str]) -> Folder {
        let mut builder = globset::GlobSetBuilder::new();
        for pattern in ignore {
            builder.add(globset::Glob::new(pattern).unwrap());
        }
        Folder {
            path: "/tmp".into(),
            target: Target::Kickoff {
                checklist_id: "c".into(),
                field_id: "f".into(),
            },
            recursive: false,
            delete_remote: true,
            remote_removed: crate::config::RemoteRemoved::Leave,
            ignore: ignore.iter().map(|s| s.to_string()).collect(),
            ignore_set: builder.build().unwrap(),
            watch: crate::config::WatchMode::Auto,
            max_delete_percent: 50,
        }
    }

    fn verdict(folder: &Folder, dir: &Path, name: &str) -> Result<(), Rejection> {
        let path = dir.join(name);
        if !path.exists() {
            std::fs::write(&path, b"x").unwrap();
        }
        check(folder, &path, &std::fs::symlink_metadata(&path).unwrap())
    }

    #[test]
    fn a_directory_is_hidden_when_any_name_under_the_folder_starts_with_a_dot() {
        let mut folder = folder(&[]);
        folder.path = "/srv/.shares/in".into();
        for hidden in [
            "/srv/.shares/in/.Trash-1000",
            "/srv/.shares/in/.Trash-1000/files",
            "/srv/.shares/in/a/.old/b",
        ] {
            assert!(hidden_dir(&folder, Path::new(hidden)), "{hidden}");
        }
        // The folder's own path may hold a dot: only what lies under it counts.
        for shown in [
            "/srv/.shares/in",
            "/srv/.shares/in/a/b",
            "/srv/.shares/in/a.b",
        ] {
            assert!(!hidden_dir(&folder, Path::new(shown)), "{shown}");
        }
    }

    #[test]
    fn each_kind_of_file_gets_its_verdict() {
        let dir = tempfile::tempdir().unwrap();
        let folder = folder(&["*.bak"]);
        assert_eq!(verdict(&folder, dir.path(), "Invoice 1.PDF"), Ok(()));
        assert_eq!(
            verdict(&folder, dir.path(), ".hidden.pdf"),
            Err(Rejection::Hidden)
        );
        for name in [
            "~$report.docx",
            "scan.pdf.part",
            "x.TMP",
            "y.crdownload",
            "z.swp",
        ] {
            assert_eq!(
                verdict(&folder, dir.path(), name),
                Err(Rejection::Temporary),
                "{name}"
            );
        }
        assert_eq!(
            verdict(&folder, dir.path(), "old.bak"),
            Err(Rejection::Ignored {
                pattern: "*.bak".into()
            })
        );
        assert_eq!(
            verdict(&folder, dir.path(), "run.exe"),
            Err(Rejection::Extension {
                extension: Some("exe".into())
            })
        );
        assert_eq!(
            verdict(&folder, dir.path(), "README"),
            Err(Rejection::Extension { extension: None })
        );
        std::os::unix::fs::symlink("/etc/hostname", dir.path().join("link.txt")).unwrap();
        assert_eq!(
            verdict(&folder, dir.path(), "link.txt"),
            Err(Rejection::Symlink)
        );
        std::fs::create_dir(dir.path().join("sub.pdf")).unwrap();
        assert_eq!(
            verdict(&folder, dir.path(), "sub.pdf"),
            Err(Rejection::NotAFile)
        );
        let odd = std::ffi::OsStr::from_bytes(b"bad\xff.pdf");
        std::fs::write(dir.path().join(odd), b"x").unwrap();
        let path = dir.path().join(odd);
        assert_eq!(
            check(&folder, &path, &std::fs::symlink_metadata(&path).unwrap()),
            Err(Rejection::NotUtf8)
        );
    }

    #[test]
    fn files_over_100_mib_are_too_large() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.zip");
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(MAX_SIZE + 1).unwrap();
        let rejection = check(
            &folder(&[]),
            &path,
            &std::fs::symlink_metadata(&path).unwrap(),
        )
        .unwrap_err();
        assert_eq!(rejection, Rejection::TooLarge { size: MAX_SIZE + 1 });
        assert_eq!(
            rejection.to_string(),
            "100.0 MiB (104857601 bytes) is over Tallyfy's limit of 100 MiB (104857600 bytes)"
        );
        file.set_len(MAX_SIZE).unwrap();
        assert_eq!(
            check(
                &folder(&[]),
                &path,
                &std::fs::symlink_metadata(&path).unwrap()
            ),
            Ok(())
        );
    }
}
