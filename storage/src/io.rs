//! The narrow file-system interface the disk engine does all its I/O through.
//!
//! [`StdFileSystem`] is the real one. [`crate::testing::FaultyFileSystem`] keeps files in memory,
//! tracks which bytes are durable and can fail writes and fsyncs or simulate a crash, so recovery
//! is tested against the failures a disk really has.

use std::fmt;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io;
use std::path::Path;
use std::sync::Arc;

/// One open file. Reads and writes are positional, so one handle serves concurrent readers.
pub trait FsFile: Send + Sync + fmt::Debug {
    /// Reads exactly `buf.len()` bytes at `position` (an `UnexpectedEof` error if the file is shorter).
    fn read_exact_at(&self, buf: &mut [u8], position: u64) -> io::Result<()>;
    /// Writes all of `data` at `position`. Not durable until [`FsFile::sync_data`].
    fn write_all_at(&self, data: &[u8], position: u64) -> io::Result<()>;
    /// Cuts (or extends with zeros) the file to `len` bytes. Not durable until [`FsFile::sync_data`].
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Makes every byte written (and the length) durable.
    fn sync_data(&self) -> io::Result<()>;
    /// The file's current length.
    fn file_len(&self) -> io::Result<u64>;
    /// Tells the OS that bytes `[start, end)`, already durable, will not be read soon, so it may
    /// drop them from its page cache (`posix_fadvise(POSIX_FADV_DONTNEED)`). Advice only: the
    /// file's contents, length and durability do not change, and a later read still returns the
    /// bytes (from the disk). The disk engine calls it for a stream's synced bytes well behind its
    /// end ([`crate::StorageOptions::page_cache_keep_bytes`]).
    fn drop_cached(&self, start: u64, end: u64) -> io::Result<()>;
}

/// A held exclusive lock; dropping it releases the lock.
pub trait FsLock: Send + Sync + fmt::Debug {}

/// How [`FileSystem::open`] opens a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// An existing file, read and write.
    Existing,
    /// A new file, which must not exist yet (read and write).
    CreateNew,
    /// A file created if missing and cut to zero length if present (read and write).
    CreateTruncate,
    /// An existing file, read only: its writes and `set_len` fail (a read-only open of the
    /// storage opens every file so).
    ReadOnly,
}

/// The directory and file operations the disk engine needs. Directory entries (a created, renamed
/// or removed file) are durable only after [`FileSystem::sync_dir`] on the parent directory.
pub trait FileSystem: Send + Sync + fmt::Debug + 'static {
    /// Creates `path` and any missing parents.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// The names of the entries (files and directories) in `dir`.
    fn read_dir(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Whether `path` is an existing directory.
    fn is_dir(&self, path: &Path) -> bool;
    /// Opens a file.
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn FsFile>>;
    /// Reads a whole file.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Renames `from` to `to`, replacing `to` atomically if it exists.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Removes an empty directory.
    fn remove_dir(&self, path: &Path) -> io::Result<()>;
    /// Makes the entries of `dir` durable (fsync of the directory).
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Takes an exclusive lock on `path` (created if missing), without waiting:
    /// an error of kind [`io::ErrorKind::WouldBlock`] if someone else holds it.
    fn try_lock(&self, path: &Path) -> io::Result<Box<dyn FsLock>>;
}

/// The real file system (`std::fs`).
#[derive(Debug, Default, Clone, Copy)]
pub struct StdFileSystem;

#[derive(Debug)]
struct StdFile(File);

impl FsFile for StdFile {
    fn read_exact_at(&self, buf: &mut [u8], position: u64) -> io::Result<()> {
        positional::read_exact_at(&self.0, buf, position)
    }
    fn write_all_at(&self, data: &[u8], position: u64) -> io::Result<()> {
        positional::write_all_at(&self.0, data, position)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn file_len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
    fn drop_cached(&self, start: u64, end: u64) -> io::Result<()> {
        positional::drop_cached(&self.0, start, end)
    }
}

#[cfg(unix)]
mod positional {
    use std::fs::File;
    use std::io;
    use std::os::unix::fs::FileExt;

    pub fn read_exact_at(f: &File, buf: &mut [u8], position: u64) -> io::Result<()> {
        f.read_exact_at(buf, position)
    }
    pub fn write_all_at(f: &File, data: &[u8], position: u64) -> io::Result<()> {
        f.write_all_at(data, position)
    }
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
    pub fn drop_cached(f: &File, start: u64, end: u64) -> io::Result<()> {
        // A zero length would mean "to the end of the file" to the kernel: nothing to drop instead.
        let Some(len) = std::num::NonZeroU64::new(end.saturating_sub(start)) else { return Ok(()) };
        rustix::fs::fadvise(f, start, Some(len), rustix::fs::Advice::DontNeed).map_err(io::Error::from)
    }
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
    pub fn drop_cached(_f: &File, _start: u64, _end: u64) -> io::Result<()> {
        // No posix_fadvise here (macOS): the OS manages its cache alone.
        Ok(())
    }
}

#[cfg(windows)]
mod positional {
    use std::fs::File;
    use std::io;
    use std::os::windows::fs::FileExt;

    pub fn read_exact_at(f: &File, mut buf: &mut [u8], mut position: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match f.seek_read(buf, position)? {
                0 => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "file ends before the read")),
                n => {
                    buf = &mut buf[n..];
                    position += n as u64;
                }
            }
        }
        Ok(())
    }
    pub fn write_all_at(f: &File, mut data: &[u8], mut position: u64) -> io::Result<()> {
        while !data.is_empty() {
            let n = f.seek_write(data, position)?;
            data = &data[n..];
            position += n as u64;
        }
        Ok(())
    }
    pub fn drop_cached(_f: &File, _start: u64, _end: u64) -> io::Result<()> {
        // No per-range cache advice on Windows; the OS manages its cache alone.
        Ok(())
    }
}

#[derive(Debug)]
struct StdLock(#[allow(dead_code, reason = "held, never read: the lock lasts while the file is open")] File);

impl FsLock for StdLock {}

impl FileSystem for StdFileSystem {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::create_dir_all(path)
    }

    fn read_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(dir)? {
            if let Ok(name) = entry?.file_name().into_string() {
                out.push(name);
            }
        }
        Ok(out)
    }

    fn is_dir(&self, path: &Path) -> bool {
        path.is_dir()
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn FsFile>> {
        let mut o = OpenOptions::new();
        o.read(true).write(mode != OpenMode::ReadOnly);
        match mode {
            OpenMode::Existing | OpenMode::ReadOnly => {}
            OpenMode::CreateNew => {
                o.create_new(true);
            }
            OpenMode::CreateTruncate => {
                o.create(true).truncate(true);
            }
        }
        Ok(Arc::new(StdFile(o.open(path)?)))
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        fs::read(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        fs::remove_dir(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        #[cfg(unix)]
        {
            File::open(dir)?.sync_all()
        }
        #[cfg(not(unix))]
        {
            // Directory handles cannot be fsynced here; NTFS journals metadata.
            let _ = dir;
            Ok(())
        }
    }

    fn try_lock(&self, path: &Path) -> io::Result<Box<dyn FsLock>> {
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
        match file.try_lock() {
            Ok(()) => Ok(Box::new(StdLock(file))),
            Err(TryLockError::WouldBlock) => Err(io::Error::new(io::ErrorKind::WouldBlock, "lock held elsewhere")),
            Err(TryLockError::Error(e)) => Err(e),
        }
    }
}
