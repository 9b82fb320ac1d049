//! [`FaultyFileSystem`]: an in-memory [`FileSystem`] for crash and fault-injection tests.
//!
//! It models what a real disk promises and no more:
//! - a file's bytes are durable only once `sync_data` ran after they were written;
//! - a created, renamed or removed directory entry is durable only once its parent directory was
//!   synced (`sync_dir`), and a new directory only once its parent was synced;
//! - [`FaultyFileSystem::crash`] throws away everything not durable, as a power cut would, and
//!   invalidates every handle opened before it.
//!
//! [`FaultyFileSystem::fail_next_write`] and [`FaultyFileSystem::fail_next_fsync`] make the next
//! such call fail (a failed write leaves the first half of its bytes written, like a short write).
//! [`FaultyFileSystem::set_disk_full`] models a full disk until it is cleared: a write past a
//! file's current length writes what fits in the file's existing bytes and fails with ENOSPC
//! (`No space left on device`), as does growing a file with `set_len`; overwriting allocated
//! bytes (preallocated zeros) still succeeds, as on a real file system.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::io::{FileSystem, FsFile, FsLock, OpenMode};

#[derive(Debug, Default)]
struct Inode {
    /// What a reader sees now.
    data: Vec<u8>,
    /// What survives a crash.
    durable: Vec<u8>,
}

#[derive(Debug, Default)]
struct State {
    /// Bumped by every crash; handles from an older generation fail.
    generation: u64,
    next_inode: u64,
    inodes: BTreeMap<u64, Inode>,
    /// Live namespace: path -> inode.
    files: BTreeMap<PathBuf, u64>,
    /// Namespace as it survives a crash.
    durable_files: BTreeMap<PathBuf, u64>,
    dirs: BTreeSet<PathBuf>,
    durable_dirs: BTreeSet<PathBuf>,
    locks: BTreeSet<PathBuf>,
    /// Writes to let through before one fails.
    write_fails_after: Option<u64>,
    /// Fsyncs (file or directory) to let through before one fails.
    fsync_fails_after: Option<u64>,
    writes: u64,
    fsyncs: u64,
    /// Writes that grow a file fail with ENOSPC.
    disk_full: bool,
    /// Every `drop_cached` range, per inode, in call order.
    cache_drops: BTreeMap<u64, Vec<(u64, u64)>>,
    /// `drop_cached` calls whose range held bytes not durable yet.
    undurable_cache_drops: u64,
}

/// An in-memory file system that tracks written versus durable bytes and injects faults.
/// Clones share the same files.
#[derive(Debug, Clone, Default)]
pub struct FaultyFileSystem {
    state: Arc<Mutex<State>>,
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{} not found", path.display()))
}

/// ENOSPC, as the OS reports a full disk.
fn no_space() -> io::Error {
    io::Error::from_raw_os_error(28)
}

fn injected(what: &str) -> io::Error {
    io::Error::other(format!("injected {what} failure"))
}

impl FaultyFileSystem {
    /// An empty file system (the root `/` exists and is durable).
    pub fn new() -> Self {
        let fs = Self::default();
        {
            let mut s = fs.state.lock();
            s.dirs.insert(PathBuf::from("/"));
            s.durable_dirs.insert(PathBuf::from("/"));
        }
        fs
    }

    /// Makes the next `write_all_at` fail after writing the first half of its bytes.
    pub fn fail_next_write(&self) {
        self.fail_write_after(0);
    }

    /// Lets `n` writes through, then fails the next one as [`FaultyFileSystem::fail_next_write`].
    pub fn fail_write_after(&self, n: u64) {
        self.state.lock().write_fails_after = Some(n);
    }

    /// Makes the next file or directory fsync fail (nothing becomes durable).
    pub fn fail_next_fsync(&self) {
        self.fail_fsync_after(0);
    }

    /// Lets `n` fsyncs (file or directory) through, then fails the next one.
    pub fn fail_fsync_after(&self, n: u64) {
        self.state.lock().fsync_fails_after = Some(n);
    }

    /// Fills (`true`) or frees (`false`) the disk: while full, every write or `set_len` that would
    /// grow a file fails with ENOSPC (after writing what fits within the file's current length).
    pub fn set_disk_full(&self, full: bool) {
        self.state.lock().disk_full = full;
    }

    /// Cancels any armed failure.
    pub fn clear_faults(&self) {
        let mut s = self.state.lock();
        s.write_fails_after = None;
        s.fsync_fails_after = None;
    }

    /// Simulates a power cut: every byte and directory entry not yet durable is lost, locks are
    /// released and every open handle stops working.
    pub fn crash(&self) {
        let mut s = self.state.lock();
        s.generation += 1;
        s.files = s.durable_files.clone();
        s.dirs = s.durable_dirs.clone();
        s.locks.clear();
        let live: BTreeSet<u64> = s.files.values().copied().collect();
        s.inodes.retain(|id, _| live.contains(id));
        for inode in s.inodes.values_mut() {
            inode.data = inode.durable.clone();
        }
        s.write_fails_after = None;
        s.fsync_fails_after = None;
    }

    /// The current (not necessarily durable) bytes of a file.
    pub fn file_bytes(&self, path: &Path) -> Option<Vec<u8>> {
        let s = self.state.lock();
        s.files.get(path).map(|id| s.inodes[id].data.clone())
    }

    /// Replaces a file's bytes (current and durable): for tests that damage files.
    pub fn set_file_bytes(&self, path: &Path, bytes: Vec<u8>) -> io::Result<()> {
        let mut s = self.state.lock();
        let id = *s.files.get(path).ok_or_else(|| not_found(path))?;
        let inode = s.inodes.get_mut(&id).expect("live inode");
        inode.data = bytes.clone();
        inode.durable = bytes;
        Ok(())
    }

    /// Every live file path, sorted.
    pub fn list_files(&self) -> Vec<PathBuf> {
        self.state.lock().files.keys().cloned().collect()
    }

    /// The ranges `drop_cached` was called with for the file at `path`, in call order.
    pub fn cache_drops(&self, path: &Path) -> Vec<(u64, u64)> {
        let s = self.state.lock();
        s.files.get(path).and_then(|id| s.cache_drops.get(id)).cloned().unwrap_or_default()
    }

    /// How many `drop_cached` calls were made on every file, live or since removed (a segment
    /// dropped from the cache when it was sealed may be purged by retention afterwards).
    pub fn cache_drop_count(&self) -> usize {
        self.state.lock().cache_drops.values().map(Vec::len).sum()
    }

    /// How many `drop_cached` calls named bytes that were not durable (written since the file's
    /// last fsync, or past its durable length). The engine only drops what an fsync covered.
    pub fn undurable_cache_drops(&self) -> u64 {
        self.state.lock().undurable_cache_drops
    }

    /// How many writes and fsyncs (file and directory) were made so far.
    pub fn op_counts(&self) -> (u64, u64) {
        let s = self.state.lock();
        (s.writes, s.fsyncs)
    }

    /// Counts down an armed failure; true when this operation must fail.
    fn trip(counter: &mut Option<u64>) -> bool {
        match counter {
            Some(0) => {
                *counter = None;
                true
            }
            Some(n) => {
                *n -= 1;
                false
            }
            None => false,
        }
    }

    fn parent_exists(s: &State, path: &Path) -> bool {
        path.parent().is_none_or(|p| s.dirs.contains(p))
    }
}

#[derive(Debug)]
struct FaultyFile {
    state: Arc<Mutex<State>>,
    inode: u64,
    generation: u64,
    /// Opened with [`OpenMode::ReadOnly`]: writes and `set_len` fail, as on a read-only descriptor.
    read_only: bool,
}

impl FaultyFile {
    fn with<T>(&self, f: impl FnOnce(&mut State, u64) -> io::Result<T>) -> io::Result<T> {
        let mut s = self.state.lock();
        if s.generation != self.generation || !s.inodes.contains_key(&self.inode) {
            return Err(io::Error::other("handle invalidated by a simulated crash"));
        }
        f(&mut s, self.inode)
    }

    fn check_writable(&self) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::new(io::ErrorKind::PermissionDenied, "file opened read-only"));
        }
        Ok(())
    }
}

impl FsFile for FaultyFile {
    fn read_exact_at(&self, buf: &mut [u8], position: u64) -> io::Result<()> {
        self.with(|s, id| {
            let data = &s.inodes[&id].data;
            let start = usize::try_from(position).unwrap_or(usize::MAX);
            match start.checked_add(buf.len()) {
                Some(end) if end <= data.len() => {
                    buf.copy_from_slice(&data[start..end]);
                    Ok(())
                }
                _ => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end of the file")),
            }
        })
    }

    fn write_all_at(&self, data: &[u8], position: u64) -> io::Result<()> {
        self.check_writable()?;
        self.with(|s, id| {
            s.writes += 1;
            let fail = FaultyFileSystem::trip(&mut s.write_fails_after);
            let bytes = if fail { &data[..data.len() / 2] } else { data };
            let start = position as usize;
            let current = s.inodes[&id].data.len();
            if s.disk_full && start + data.len() > current {
                let fits = current.saturating_sub(start).min(data.len());
                let inode = s.inodes.get_mut(&id).expect("checked");
                inode.data[start.min(current)..start.min(current) + fits].copy_from_slice(&data[..fits]);
                return Err(no_space());
            }
            let inode = s.inodes.get_mut(&id).expect("checked");
            if inode.data.len() < start + bytes.len() {
                inode.data.resize(start + bytes.len(), 0);
            }
            inode.data[start..start + bytes.len()].copy_from_slice(bytes);
            if fail { Err(injected("write")) } else { Ok(()) }
        })
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.check_writable()?;
        self.with(|s, id| {
            if s.disk_full && len as usize > s.inodes[&id].data.len() {
                return Err(no_space());
            }
            s.inodes.get_mut(&id).expect("checked").data.resize(len as usize, 0);
            Ok(())
        })
    }

    fn sync_data(&self) -> io::Result<()> {
        self.with(|s, id| {
            s.fsyncs += 1;
            if FaultyFileSystem::trip(&mut s.fsync_fails_after) {
                return Err(injected("fsync"));
            }
            let inode = s.inodes.get_mut(&id).expect("checked");
            inode.durable = inode.data.clone();
            Ok(())
        })
    }

    fn file_len(&self) -> io::Result<u64> {
        self.with(|s, id| Ok(s.inodes[&id].data.len() as u64))
    }

    fn drop_cached(&self, start: u64, end: u64) -> io::Result<()> {
        self.with(|s, id| {
            let inode = &s.inodes[&id];
            let (a, b) = (start as usize, end as usize);
            let durable =
                a <= b && b <= inode.durable.len() && b <= inode.data.len() && inode.durable[a..b] == inode.data[a..b];
            if !durable {
                s.undurable_cache_drops += 1;
            }
            s.cache_drops.entry(id).or_default().push((start, end));
            Ok(())
        })
    }
}

#[derive(Debug)]
struct FaultyLock {
    state: Arc<Mutex<State>>,
    path: PathBuf,
    generation: u64,
}

impl FsLock for FaultyLock {}

impl Drop for FaultyLock {
    fn drop(&mut self) {
        let mut s = self.state.lock();
        if s.generation == self.generation {
            s.locks.remove(&self.path);
        }
    }
}

impl FileSystem for FaultyFileSystem {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut s = self.state.lock();
        for p in path.ancestors().collect::<Vec<_>>().into_iter().rev() {
            if s.files.contains_key(p) {
                return Err(io::Error::new(io::ErrorKind::AlreadyExists, "a file is in the way"));
            }
            s.dirs.insert(p.to_path_buf());
        }
        Ok(())
    }

    fn read_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let s = self.state.lock();
        if !s.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        let child = |p: &PathBuf| (p.parent() == Some(dir)).then(|| p.file_name()?.to_str().map(str::to_string))?;
        Ok(s.files.keys().filter_map(child).chain(s.dirs.iter().filter_map(child)).collect())
    }

    fn is_dir(&self, path: &Path) -> bool {
        self.state.lock().dirs.contains(path)
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn FsFile>> {
        let mut s = self.state.lock();
        if !Self::parent_exists(&s, path) {
            return Err(not_found(path));
        }
        let existing = s.files.get(path).copied();
        let inode = match (mode, existing) {
            (OpenMode::Existing | OpenMode::ReadOnly, None) => return Err(not_found(path)),
            (OpenMode::Existing | OpenMode::ReadOnly, Some(id)) => id,
            (OpenMode::CreateNew, Some(_)) => {
                return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{} exists", path.display())));
            }
            (OpenMode::CreateTruncate, Some(id)) => {
                s.inodes.get_mut(&id).expect("live").data.clear();
                id
            }
            (_, None) => {
                let id = s.next_inode;
                s.next_inode += 1;
                s.inodes.insert(id, Inode::default());
                s.files.insert(path.to_path_buf(), id);
                id
            }
        };
        let read_only = mode == OpenMode::ReadOnly;
        Ok(Arc::new(FaultyFile { state: self.state.clone(), inode, generation: s.generation, read_only }))
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.file_bytes(path).ok_or_else(|| not_found(path))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.state.lock();
        if !Self::parent_exists(&s, to) {
            return Err(not_found(to));
        }
        let id = s.files.remove(from).ok_or_else(|| not_found(from))?;
        s.files.insert(to.to_path_buf(), id);
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut s = self.state.lock();
        s.files.remove(path).ok_or_else(|| not_found(path))?;
        Ok(())
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        let mut s = self.state.lock();
        if s.files.keys().chain(s.dirs.iter()).any(|p| p.parent() == Some(path)) {
            return Err(io::Error::new(io::ErrorKind::DirectoryNotEmpty, format!("{} not empty", path.display())));
        }
        if !s.dirs.remove(path) {
            return Err(not_found(path));
        }
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.state.lock();
        s.fsyncs += 1;
        if FaultyFileSystem::trip(&mut s.fsync_fails_after) {
            return Err(injected("directory fsync"));
        }
        if !s.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        let in_dir = |p: &PathBuf| p.parent() == Some(dir);
        let live: Vec<(PathBuf, u64)> =
            s.files.iter().filter(|(p, _)| in_dir(p)).map(|(p, i)| (p.clone(), *i)).collect();
        s.durable_files.retain(|p, _| !in_dir(p));
        s.durable_files.extend(live);
        let live_dirs: Vec<PathBuf> = s.dirs.iter().filter(|p| in_dir(p)).cloned().collect();
        s.durable_dirs.retain(|p| !in_dir(p));
        s.durable_dirs.extend(live_dirs);
        Ok(())
    }

    fn try_lock(&self, path: &Path) -> io::Result<Box<dyn FsLock>> {
        {
            let mut s = self.state.lock();
            if !s.locks.insert(path.to_path_buf()) {
                return Err(io::Error::new(io::ErrorKind::WouldBlock, "lock held elsewhere"));
            }
        }
        let exists = self.state.lock().files.contains_key(path);
        if let Err(e) = self.open(path, if exists { OpenMode::Existing } else { OpenMode::CreateNew }) {
            self.state.lock().locks.remove(path);
            return Err(e);
        }
        let generation = self.state.lock().generation;
        Ok(Box::new(FaultyLock { state: self.state.clone(), path: path.to_path_buf(), generation }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsynced_bytes_and_entries_are_lost_on_crash() {
        let fs = FaultyFileSystem::new();
        let dir = Path::new("/d");
        fs.create_dir_all(dir).unwrap();
        fs.sync_dir(Path::new("/")).unwrap();
        let f = fs.open(&dir.join("a"), OpenMode::CreateNew).unwrap();
        f.write_all_at(b"hello", 0).unwrap();
        f.sync_data().unwrap();
        fs.sync_dir(dir).unwrap();
        f.write_all_at(b" world", 5).unwrap();
        let g = fs.open(&dir.join("b"), OpenMode::CreateNew).unwrap();
        g.write_all_at(b"x", 0).unwrap();
        g.sync_data().unwrap(); // file synced, but its directory entry is not
        fs.crash();
        assert_eq!(fs.read(&dir.join("a")).unwrap(), b"hello");
        assert!(fs.read(&dir.join("b")).is_err());
        assert!(f.file_len().is_err(), "old handles are dead after a crash");
    }

    #[test]
    fn injected_faults_fail_once() {
        let fs = FaultyFileSystem::new();
        let f = fs.open(Path::new("/a"), OpenMode::CreateNew).unwrap();
        fs.fail_next_write();
        assert!(f.write_all_at(b"abcd", 0).is_err());
        assert_eq!(fs.read(Path::new("/a")).unwrap(), b"ab");
        f.write_all_at(b"abcd", 0).unwrap();
        fs.fail_next_fsync();
        assert!(f.sync_data().is_err());
        f.sync_data().unwrap();
    }

    #[test]
    fn locks_are_exclusive_until_dropped() {
        let fs = FaultyFileSystem::new();
        let l = fs.try_lock(Path::new("/LOCK")).unwrap();
        assert_eq!(fs.try_lock(Path::new("/LOCK")).unwrap_err().kind(), io::ErrorKind::WouldBlock);
        drop(l);
        fs.try_lock(Path::new("/LOCK")).unwrap();
    }
}
