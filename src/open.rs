//! Opens files of watched folders to read them: the only way the daemon reads their content.
//! Receives a folder and a path inside it; emits the open file with its `fstat`, or the hash
//! of its content (or removes or moves the file, where the operator asked for that), and an
//! `OpenError` naming why not. Owns the rules a hostile share cannot get round: every part of
//! the path is resolved beneath the folder's own directory handle without following a symbolic
//! link, the open never blocks (a FIFO swapped in is refused, not waited on), and only a
//! regular file is ever read.

use std::ffi::{CString, OsStr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path};
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("a symbolic link is on its path (links are never followed)")]
    Link,
    #[error("its path leads out of the folder")]
    Outside,
    #[error("not a regular file (a {kind}); it is never read")]
    NotAFile { kind: &'static str },
}

impl From<OpenError> for std::io::Error {
    fn from(error: OpenError) -> std::io::Error {
        match error {
            OpenError::Io(error) => error,
            other => std::io::Error::new(std::io::ErrorKind::InvalidInput, other),
        }
    }
}

/// A regular file of a watched folder, open read-only, with what `fstat` said once it was open.
#[derive(Debug)]
pub struct Opened {
    pub file: std::fs::File,
    pub metadata: std::fs::Metadata,
}

/// One version of a file: the same file object (device and inode), neither resized nor
/// touched in its metadata (ctime changes with every write, chmod, link or rename of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub device: u64,
    pub inode: u64,
    pub size: u64,
    pub ctime_ns: i64,
}

impl Identity {
    pub fn of(metadata: &std::fs::Metadata) -> Identity {
        Identity {
            device: metadata.dev(),
            inode: metadata.ino(),
            size: metadata.len(),
            ctime_ns: metadata.ctime().saturating_mul(1_000_000_000) + metadata.ctime_nsec(),
        }
    }
}

/// Opens `path`, a file inside `folder`, for reading. Blocks only as long as a `stat` does,
/// so it may run on a runtime thread; `file_async` keeps even that off them.
pub fn file(folder: &Path, path: &Path) -> Result<Opened, OpenError> {
    let root = open_folder(folder)?;
    let fd = beneath(
        root.as_fd(),
        relative(folder, path)?,
        FILE_FLAGS,
        use_openat2(),
    )?;
    let file = std::fs::File::from(fd);
    let metadata = file.metadata()?;
    if !metadata.is_file() {
        return Err(OpenError::NotAFile {
            kind: kind(&metadata.file_type()),
        });
    }
    // O_NONBLOCK only guarded the open: reads of a regular file should wait for the disk.
    // SAFETY: fcntl on a descriptor this function owns; F_SETFL takes an int.
    unsafe {
        let flags = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK);
        }
    }
    Ok(Opened { file, metadata })
}

/// `file` on the blocking pool: a hung network share holds a pool thread, never the runtime.
pub async fn file_async(folder: &Path, path: &Path) -> Result<Opened, OpenError> {
    let (folder, path) = (folder.to_path_buf(), path.to_path_buf());
    tokio::task::spawn_blocking(move || file(&folder, &path))
        .await
        .map_err(|error| OpenError::Io(std::io::Error::other(error)))?
}

/// blake3 of a file's content (hex), as recorded for what was uploaded.
pub fn hash(folder: &Path, path: &Path) -> Result<String, OpenError> {
    let opened = file(folder, path)?;
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(&opened.file)?;
    Ok(hasher.finalize().to_hex().to_string())
}

/// `hash` on the blocking pool: a file of 100 MiB takes a while to read.
pub async fn hash_async(folder: &Path, path: &Path) -> Result<String, OpenError> {
    let (folder, path) = (folder.to_path_buf(), path.to_path_buf());
    tokio::task::spawn_blocking(move || hash(&folder, &path))
        .await
        .map_err(|error| OpenError::Io(std::io::Error::other(error)))?
}

/// Removes `path`, a file inside `folder`, from the directory it is in as reached beneath the
/// folder: a directory on its way swapped for a link never makes it remove a file elsewhere.
pub fn remove(folder: &Path, path: &Path) -> Result<(), OpenError> {
    let (dir, name) = parent(folder, path)?;
    // SAFETY: a valid descriptor and C string.
    if unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) } != 0 {
        return Err(OpenError::Io(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Renames `path`, a file inside `folder` reached as `remove` reaches it, to `to` (a path the
/// operator configured). Fails without moving anything when `to` exists.
pub fn rename(folder: &Path, path: &Path, to: &Path) -> Result<(), OpenError> {
    let (dir, name) = parent(folder, path)?;
    let to = c_name(to.as_os_str())?;
    let rename = |flags| {
        // SAFETY: valid descriptors and C strings.
        match unsafe {
            libc::renameat2(
                dir.as_raw_fd(),
                name.as_ptr(),
                libc::AT_FDCWD,
                to.as_ptr(),
                flags,
            )
        } {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        }
    };
    // RENAME_NOREPLACE never replaces a file that appeared at `to` meanwhile; file systems
    // that do not know it (some network ones) answer EINVAL and get a plain rename.
    match rename(libc::RENAME_NOREPLACE) {
        Err(error) if error.raw_os_error() == Some(libc::EINVAL) => Ok(rename(0)?),
        other => Ok(other?),
    }
}

/// The directory `path` is in, opened beneath `folder` (O_PATH), and the file's name in it.
fn parent(folder: &Path, path: &Path) -> Result<(OwnedFd, CString), OpenError> {
    let root = open_folder(folder)?;
    let mut names = relative(folder, path)?;
    let name = c_name(names.pop().unwrap_or_default())?;
    if names.is_empty() {
        return Ok((root, name));
    }
    let dir = beneath(root.as_fd(), names, DIR_FLAGS, use_openat2())?;
    let metadata = std::fs::File::from(dir.try_clone()?).metadata()?;
    if !metadata.is_dir() {
        return Err(OpenError::Link);
    }
    Ok((dir, name))
}

/// What a file that is not a regular one is, for the operator.
fn kind(file_type: &std::fs::FileType) -> &'static str {
    if file_type.is_fifo() {
        "FIFO"
    } else if file_type.is_socket() {
        "socket"
    } else if file_type.is_char_device() || file_type.is_block_device() {
        "device"
    } else if file_type.is_dir() {
        "directory"
    } else if file_type.is_symlink() {
        "symbolic link"
    } else {
        "special file"
    }
}

/// The names leading from `folder` to `path`: plain names only (no `..`, no `.`).
fn relative<'a>(folder: &Path, path: &'a Path) -> Result<Vec<&'a OsStr>, OpenError> {
    let inside = path.strip_prefix(folder).map_err(|_| OpenError::Outside)?;
    let names: Vec<&OsStr> = inside
        .components()
        .map(|component| match component {
            Component::Normal(name) => Ok(name),
            _ => Err(OpenError::Outside),
        })
        .collect::<Result<_, _>>()?;
    if names.is_empty() {
        return Err(OpenError::Outside);
    }
    Ok(names)
}

/// The folder's own directory, as configured (the operator's path may go through links).
fn open_folder(folder: &Path) -> Result<OwnedFd, OpenError> {
    let path = c_name(folder.as_os_str())?;
    // SAFETY: a valid C string; the descriptor returned is owned below.
    let fd = retry(|| unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    })?;
    Ok(fd)
}

/// How the file itself is opened: read-only, never waiting (a FIFO without a writer, a
/// device), never becoming the controlling terminal, never through a final link.
const FILE_FLAGS: libc::c_int =
    libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_NOFOLLOW | libc::O_CLOEXEC;

/// How a directory on the way is opened: only as a handle to resolve names beneath, never
/// through a final link.
const DIR_FLAGS: libc::c_int = libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC;

/// Cleared once `openat2` is found missing (before Linux 5.6) or forbidden (a seccomp filter
/// that does not know it answers EPERM): the walk below is the way from then on.
static OPENAT2: AtomicBool = AtomicBool::new(true);

fn use_openat2() -> bool {
    OPENAT2.load(Ordering::Relaxed)
}

/// Opens `names` beneath `root`: with `openat2` and RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS
/// when it can, else one directory at a time with O_NOFOLLOW.
fn beneath(
    root: BorrowedFd<'_>,
    names: Vec<&OsStr>,
    flags: libc::c_int,
    openat2: bool,
) -> Result<OwnedFd, OpenError> {
    if openat2 {
        let joined: Vec<u8> = names.join(OsStr::new("/")).as_bytes().to_vec();
        let path = c_name(OsStr::from_bytes(&joined))?;
        // SAFETY: open_how is plain integers, for which zero is a valid value.
        let mut how: libc::open_how = unsafe { std::mem::zeroed() };
        how.flags = flags as u64;
        how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS;
        // SAFETY: valid descriptor, C string and open_how of the size passed; the result is a
        // new descriptor owned below, or -1.
        let opened = retry(|| unsafe {
            libc::syscall(
                libc::SYS_openat2,
                root.as_raw_fd(),
                path.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            ) as libc::c_int
        });
        match opened {
            Ok(fd) => return Ok(fd),
            Err(error) if matches!(error.raw_os_error(), Some(libc::ENOSYS | libc::EPERM)) => {
                OPENAT2.store(false, Ordering::Relaxed);
            }
            Err(error) => return Err(refusal(error)),
        }
    }
    walk(root, &names, flags)
}

/// Opens each directory on the way with O_PATH | O_NOFOLLOW and checks it is a directory, not
/// a link to one, then the file itself beneath the last.
fn walk(root: BorrowedFd<'_>, names: &[&OsStr], flags: libc::c_int) -> Result<OwnedFd, OpenError> {
    let Some((last, parents)) = names.split_last() else {
        return Err(OpenError::Outside);
    };
    let mut dir: Option<OwnedFd> = None;
    for name in parents {
        let at = dir.as_ref().map_or(root.as_raw_fd(), AsRawFd::as_raw_fd);
        let name = c_name(name)?;
        // SAFETY: valid descriptor and C string; the result is owned below.
        let next =
            retry(|| unsafe { libc::openat(at, name.as_ptr(), DIR_FLAGS) }).map_err(refusal)?;
        let metadata = std::fs::File::from(next.try_clone()?).metadata()?;
        if metadata.file_type().is_symlink() {
            return Err(OpenError::Link);
        }
        if !metadata.is_dir() {
            return Err(OpenError::Io(std::io::Error::from_raw_os_error(
                libc::ENOTDIR,
            )));
        }
        dir = Some(next);
    }
    let at = dir.as_ref().map_or(root.as_raw_fd(), AsRawFd::as_raw_fd);
    let name = c_name(last)?;
    // SAFETY: valid descriptor and C string; the result is owned below.
    retry(|| unsafe { libc::openat(at, name.as_ptr(), flags) }).map_err(refusal)
}

/// What the kernel's refusal means here: ELOOP is a link met on the way (or the file itself
/// being one), EXDEV a path that would leave the folder.
fn refusal(error: std::io::Error) -> OpenError {
    match error.raw_os_error() {
        Some(libc::ELOOP) => OpenError::Link,
        Some(libc::EXDEV) => OpenError::Outside,
        _ => OpenError::Io(error),
    }
}

fn c_name(name: &OsStr) -> Result<CString, OpenError> {
    CString::new(name.as_bytes()).map_err(|_| {
        OpenError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the path holds a NUL byte",
        ))
    })
}

/// Runs an open until a signal does not interrupt it, owning the descriptor it returns.
fn retry(mut open: impl FnMut() -> libc::c_int) -> std::io::Result<OwnedFd> {
    loop {
        let fd = open();
        if fd >= 0 {
            // SAFETY: a descriptor the kernel just returned to us and no one else holds.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let error = std::io::Error::last_os_error();
        if error.kind() != std::io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::symlink;

    fn both(folder: &Path, path: &Path) -> [Result<OwnedFd, OpenError>; 2] {
        [true, false].map(|openat2| {
            let root = open_folder(folder).unwrap();
            beneath(root.as_fd(), relative(folder, path)?, FILE_FLAGS, openat2)
        })
    }

    #[test]
    fn reads_a_regular_file_in_a_subdirectory_both_ways() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        let path = dir.path().join("a/b/x.pdf");
        std::fs::write(&path, "content").unwrap();
        for opened in both(dir.path(), &path) {
            let mut text = String::new();
            std::fs::File::from(opened.unwrap())
                .read_to_string(&mut text)
                .unwrap();
            assert_eq!(text, "content");
        }
        let opened = file(dir.path(), &path).unwrap();
        assert_eq!(Identity::of(&opened.metadata).size, 7);
        assert_eq!(
            hash(dir.path(), &path).unwrap(),
            blake3::hash(b"content").to_hex().to_string()
        );
    }

    #[test]
    fn a_directory_swapped_for_a_link_is_never_followed_either_way() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret.pdf"), "root only").unwrap();
        let folder = dir.path().join("in");
        std::fs::create_dir(&folder).unwrap();
        symlink(outside.path(), folder.join("sub")).unwrap();
        for opened in both(&folder, &folder.join("sub/secret.pdf")) {
            assert!(matches!(opened, Err(OpenError::Link)), "{opened:?}");
        }
        // A directory handle for removing or moving: the link itself at most, never its target.
        for openat2 in [true, false] {
            let root = open_folder(&folder).unwrap();
            let names = vec![OsStr::new("sub")];
            match beneath(root.as_fd(), names, DIR_FLAGS, openat2) {
                Err(OpenError::Link) => {}
                Ok(fd) => assert!(!std::fs::File::from(fd).metadata().unwrap().is_dir()),
                Err(other) => panic!("{other:?}"),
            }
        }
        // The folder's own path, as configured, may go through a link.
        symlink(&folder, dir.path().join("alias")).unwrap();
        std::fs::write(folder.join("ok.pdf"), "x").unwrap();
        assert!(file(&dir.path().join("alias"), &dir.path().join("alias/ok.pdf")).is_ok());
    }

    #[test]
    fn a_link_as_the_file_itself_and_a_way_out_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::NamedTempFile::new().unwrap();
        symlink(outside.path(), dir.path().join("x.pdf")).unwrap();
        for opened in both(dir.path(), &dir.path().join("x.pdf")) {
            assert!(matches!(opened, Err(OpenError::Link)), "{opened:?}");
        }
        let escape = dir.path().join("../x.pdf");
        assert!(matches!(file(dir.path(), &escape), Err(OpenError::Outside)));
        assert!(matches!(
            file(dir.path(), Path::new("/etc/passwd")),
            Err(OpenError::Outside)
        ));
    }

    #[test]
    fn a_fifo_is_refused_without_waiting_for_a_writer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r3.pdf");
        let name = CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o644) }, 0);
        match file(dir.path(), &path) {
            Err(error @ OpenError::NotAFile { kind: "FIFO" }) => {
                assert_eq!(
                    error.to_string(),
                    "not a regular file (a FIFO); it is never read"
                )
            }
            other => panic!("{other:?}"),
        }
        assert!(hash(dir.path(), &path).is_err());
        assert!(matches!(
            file(dir.path(), dir.path()),
            Err(OpenError::Outside)
        ));
    }

    #[test]
    fn removing_or_moving_through_a_directory_swapped_for_a_link_touches_nothing_outside() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let secret = outside.path().join("x.pdf");
        std::fs::write(&secret, "keep").unwrap();
        let folder = dir.path().join("in");
        std::fs::create_dir_all(folder.join("real")).unwrap();
        symlink(outside.path(), folder.join("sub")).unwrap();
        let through = folder.join("sub/x.pdf");
        assert!(matches!(remove(&folder, &through), Err(OpenError::Link)));
        let to = dir.path().join("done.pdf");
        assert!(matches!(
            rename(&folder, &through, &to),
            Err(OpenError::Link)
        ));
        assert!(secret.exists() && !to.exists());
        // A file really in the folder is moved, then another one removed.
        std::fs::write(folder.join("real/x.pdf"), "mine").unwrap();
        rename(&folder, &folder.join("real/x.pdf"), &to).unwrap();
        assert_eq!(std::fs::read_to_string(&to).unwrap(), "mine");
        std::fs::write(folder.join("y.pdf"), "y").unwrap();
        std::fs::write(folder.join("real/y.pdf"), "y").unwrap();
        assert!(matches!(
            rename(&folder, &folder.join("y.pdf"), &folder.join("real/y.pdf")),
            Err(OpenError::Io(error)) if error.kind() == std::io::ErrorKind::AlreadyExists
        ));
        remove(&folder, &folder.join("real/y.pdf")).unwrap();
        remove(&folder, &folder.join("y.pdf")).unwrap();
        assert!(!folder.join("y.pdf").exists() && !folder.join("real/y.pdf").exists());
    }

    #[test]
    fn a_missing_file_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let error =
            std::io::Error::from(file(dir.path(), &dir.path().join("gone.pdf")).unwrap_err());
        assert_eq!(error.kind(), std::io::ErrorKind::NotFound);
    }
}
