//! [`Storage`]: the on-disk backend. Same semantics, errors and chain hashes as
//! [`crate::MemoryStorage`], plus durability, recovery and verified reads from disk.
//!
//! Layout: `data_dir/LOCK`, and per stream `data_dir/{stream_id}/` holding
//! `segment_NNNNNN.log` (records), `segment_NNNNNN.idx` (dense offset index, written when the
//! segment is sealed or the storage is closed) and `checkpoint_{offset}.ckp`. `docs/format.md`
//! tables every byte.
//!
//! Sealed segments are immutable, with one documented exception: `truncate_from` may cut into a
//! sealed segment (it then becomes the active segment again and loses its index file).

mod api;
mod group_commit;
mod maintenance;
mod page_cache;
mod read;
mod recovery;
mod scrub;
mod stream;
mod sync_helpers;
mod wake;
mod write;

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};

use crate::checkpoint::CheckpointIndex;
use crate::codec::{Codec, CodecRegistry};
use crate::error::{Result, StorageError};
use crate::format::{self, names};
use crate::io::{FileSystem, FsLock, OpenMode, StdFileSystem};
use crate::options::StorageOptions;
use crate::record::SegmentHeader;
use crate::types::{ChainHash, Offset, StreamId};

use recovery::Access;
pub use recovery::{RecoveryFinding, RecoveryKind};
pub(crate) use stream::{ANCHOR_INTERVAL, Segment, Stream, StreamCore};

/// The on-disk [`crate::StorageBackend`] (its API is that trait's: import it to call one; see
/// `api.rs`). `Send + Sync`; every method takes `&self`. Readers run concurrently, appenders to
/// one stream are serialised (and share fsyncs), streams are independent.
pub struct Storage {
    root: PathBuf,
    fs: Arc<dyn FileSystem>,
    options: StorageOptions,
    codec: Arc<dyn Codec>,
    registry: CodecRegistry,
    streams: RwLock<BTreeMap<StreamId, Arc<Stream>>>,
    /// Serialises stream creation and deletion.
    create: Mutex<()>,
    /// Recently used read buffers (see `read_pooled`).
    read_buffers: Mutex<Vec<Bytes>>,
    /// The thread that prepares large batches ahead of their writer (see `append_prepared_ahead`).
    prepare_ahead: std::sync::OnceLock<Option<crate::prepare_ahead::PrepareAhead>>,
    /// The threads that fsync streams side by side for `sync_streams` (see `sync_many`).
    sync_helpers: sync_helpers::SyncHelpers,
    /// Synced bytes every stream left in the OS page cache (see `page_cache`).
    cached_tails: Arc<page_cache::CachedTails>,
    /// Set by the first clean shutdown (`close` or drop).
    closed: std::sync::atomic::AtomicBool,
    /// Whether it may change its files (see [`Storage::open_read_only`]).
    access: Access,
    /// What opening found and (read-write) repaired, per stream (see [`Storage::recovery_report`]).
    recovery: Vec<RecoveryFinding>,
    /// The data directory's lock; none when read-only.
    _lock: Option<Box<dyn FsLock>>,
}

impl fmt::Debug for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Storage")
            .field("root", &self.root)
            .field("options", &self.options)
            .field("streams", &self.streams.read().keys().collect::<Vec<_>>())
            .finish()
    }
}

pub(crate) fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StorageError {
    let path = path.to_path_buf();
    move |source| StorageError::Io { op, path, source }
}

impl Storage {
    /// Opens (or creates) a storage in `path` with default options.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path, StorageOptions::default())
    }

    /// Opens (or creates) a storage in `path`.
    pub fn open_with(path: impl AsRef<Path>, options: StorageOptions) -> Result<Self> {
        Self::open_with_fs(path, options, Arc::new(StdFileSystem))
    }

    /// Opens (or creates) a storage in `path` doing all I/O through `fs`.
    ///
    /// Recovers every stream: a torn last record of an active segment is cut off (with a warning),
    /// any other damage is a typed error. Sealed segments are trusted through their CRC-checked
    /// index files; only the active segment is scanned.
    pub fn open_with_fs(path: impl AsRef<Path>, options: StorageOptions, fs: Arc<dyn FileSystem>) -> Result<Self> {
        Self::open_in(path.as_ref(), options, fs, Access::ReadWrite)
    }

    /// Opens the storage in `path` read-only, for inspecting a data directory (the offline
    /// `shale verify`). It never creates, cuts, preallocates, renames, removes or writes a file
    /// (every file is opened read-only, and no lock is taken: stop the node first for a stable
    /// view); what recovery would repair is reported in [`Storage::recovery_report`] instead, and
    /// every write is refused with [`StorageError::ReadOnly`]. See `disk/recovery.rs`.
    pub fn open_read_only(path: impl AsRef<Path>, options: StorageOptions) -> Result<Self> {
        Self::open_read_only_with_fs(path, options, Arc::new(StdFileSystem))
    }

    /// [`Storage::open_read_only`] doing all I/O through `fs`.
    pub fn open_read_only_with_fs(
        path: impl AsRef<Path>,
        options: StorageOptions,
        fs: Arc<dyn FileSystem>,
    ) -> Result<Self> {
        Self::open_in(path.as_ref(), options, fs, Access::ReadOnly)
    }

    fn open_in(root: &Path, options: StorageOptions, fs: Arc<dyn FileSystem>, access: Access) -> Result<Self> {
        options.validate()?;
        let root = root.to_path_buf();
        let lock = match access {
            Access::ReadWrite => Some(Self::lock_data_dir(&root, fs.as_ref())?),
            Access::ReadOnly if fs.is_dir(&root) => None,
            Access::ReadOnly => {
                let source = io::Error::new(io::ErrorKind::NotFound, "no such directory");
                return Err(StorageError::Io { op: "open data directory", path: root, source });
            }
        };
        let codec = options.codec.codec();
        let cached_tails =
            Arc::new(page_cache::CachedTails::new(options.page_cache_keep_bytes, options.page_cache_budget_bytes));
        let mut storage = Self {
            root,
            fs,
            options,
            codec,
            registry: CodecRegistry::new(),
            streams: RwLock::new(BTreeMap::new()),
            create: Mutex::new(()),
            read_buffers: Mutex::new(Vec::new()),
            prepare_ahead: std::sync::OnceLock::new(),
            sync_helpers: sync_helpers::SyncHelpers::new(SYNC_THREADS - 1),
            cached_tails,
            closed: std::sync::atomic::AtomicBool::new(false),
            access,
            recovery: Vec::new(),
            _lock: lock,
        };
        let (streams, recovery) = storage.open_streams()?;
        *storage.streams.write() = streams;
        storage.recovery = recovery;
        Ok(storage)
    }

    /// Creates the data directory if needed, takes its lock and writes the lock file's content.
    fn lock_data_dir(root: &Path, fs: &dyn FileSystem) -> Result<Box<dyn FsLock>> {
        fs.create_dir_all(root).map_err(io_err("create directory", root))?;
        if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs.sync_dir(parent).map_err(io_err("fsync directory", parent))?;
        }
        let lock_path = root.join(format::lock::FILE_NAME);
        let lock = fs.try_lock(&lock_path).map_err(|e| {
            if e.kind() == io::ErrorKind::WouldBlock {
                StorageError::Locked { path: lock_path.clone() }
            } else {
                StorageError::Io { op: "lock", path: lock_path.clone(), source: e }
            }
        })?;
        let mut info = Vec::with_capacity(format::lock::LEN);
        info.extend_from_slice(&format::lock::MAGIC.to_le_bytes());
        info.extend_from_slice(&format::lock::VERSION.to_le_bytes());
        info.extend_from_slice(&0u16.to_le_bytes());
        info.extend_from_slice(&std::process::id().to_le_bytes());
        let f = fs.open(&lock_path, OpenMode::Existing).map_err(io_err("open", &lock_path))?;
        f.set_len(0).and_then(|()| f.write_all_at(&info, 0)).map_err(io_err("write", &lock_path))?;
        Ok(lock)
    }

    /// The data directory.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// The options in force.
    pub fn options(&self) -> &StorageOptions {
        &self.options
    }

    pub(crate) fn stream(&self, id: StreamId) -> Option<Arc<Stream>> {
        self.streams.read().get(&id).cloned()
    }

    /// The stream, created empty at `base` (anchored on `base_prev_hash`) if it does not exist.
    pub(crate) fn stream_or_create(
        &self,
        id: StreamId,
        base: Offset,
        base_prev_hash: ChainHash,
    ) -> Result<Arc<Stream>> {
        if let Some(s) = self.stream(id) {
            return Ok(s);
        }
        self.check_writable()?;
        let _c = self.create.lock();
        if let Some(s) = self.stream(id) {
            return Ok(s);
        }
        let dir = self.root.join(id.get().to_string());
        self.fs.create_dir_all(&dir).map_err(io_err("create directory", &dir))?;
        self.fs.sync_dir(&self.root).map_err(io_err("fsync directory", &self.root))?;
        let segment = self.create_segment(id, &dir, 0, base, base_prev_hash, 0)?;
        let core = StreamCore {
            segments: vec![segment],
            head: base_prev_hash,
            checkpoints: CheckpointIndex::new(),
            pending_checkpoints: Default::default(),
        };
        let stream = Arc::new(Stream::new(id, dir, core, BTreeMap::new(), self.cached_tails.clone()));
        self.streams.write().insert(id, stream.clone());
        Ok(stream)
    }

    /// Creates a durable, empty segment file (header written, file and directory fsynced).
    pub(crate) fn create_segment(
        &self,
        id: StreamId,
        dir: &Path,
        seq: u64,
        base: Offset,
        base_prev_hash: ChainHash,
        flags: u16,
    ) -> Result<Segment> {
        let path = dir.join(names::segment(seq));
        // A stale index of an earlier segment with this number must not describe the new one.
        let idx = dir.join(names::index(seq));
        if self.fs.open(&idx, OpenMode::Existing).is_ok() {
            self.fs.remove_file(&idx).map_err(io_err("remove", &idx))?;
        }
        let created_ms = crate::clock::now_ms();
        let header = SegmentHeader { flags, stream: id, base, created_ms, base_prev_hash };
        let file = self.fs.open(&path, OpenMode::CreateTruncate).map_err(io_err("create", &path))?;
        file.write_all_at(&header.encode(), 0).map_err(io_err("write", &path))?;
        file.sync_data().map_err(io_err("fsync", &path))?;
        self.fs.sync_dir(dir).map_err(io_err("fsync directory", dir))?;
        Ok(Segment {
            seq,
            base,
            base_prev_hash,
            file,
            positions: Vec::new(),
            len: stream::EMPTY_SEGMENT_LEN,
            allocated: stream::EMPTY_SEGMENT_LEN,
            last_append_ms: created_ms,
            idx_bytes: 0,
            indexed_len: 0,
            index_pending: false,
        })
    }

    /// Writes `bytes` as `dir/name` atomically and durably: temporary file, fsync, rename, fsync
    /// of the directory.
    pub(crate) fn write_atomic(&self, dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
        let tmp = dir.join(format!("{name}{}", names::TMP_SUFFIX));
        let path = dir.join(name);
        let f = self.fs.open(&tmp, OpenMode::CreateTruncate).map_err(io_err("create", &tmp))?;
        f.write_all_at(bytes, 0).map_err(io_err("write", &tmp))?;
        f.sync_data().map_err(io_err("fsync", &tmp))?;
        self.fs.rename(&tmp, &path).map_err(io_err("rename", &tmp))?;
        self.fs.sync_dir(dir).map_err(io_err("fsync directory", dir))?;
        Ok(())
    }

    /// Removes a file (a missing file is fine); the caller syncs the directory.
    pub(crate) fn remove_if_exists(&self, path: &Path) -> Result<()> {
        match self.fs.remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StorageError::Io { op: "remove", path: path.to_path_buf(), source: e }),
        }
    }

    /// Makes every record of every stream durable and writes pending checkpoints and the active
    /// segments' index files, so the next open scans nothing. Also done (best effort) on drop.
    pub fn close(self) -> Result<()> {
        self.shutdown()
    }

    /// [`crate::StorageBackend::sync_streams`]: `sync` of each listed stream, the answers in the
    /// order of `ids`. The fsyncs run side by side on up to [`SYNC_THREADS`] threads (this one
    /// and the storage's kept helpers, [`sync_helpers`]); each stream's deferred writes (index
    /// files after a rotation, policy checkpoints: rare) then on this thread.
    pub(crate) fn sync_many(&self, ids: &[StreamId]) -> Vec<Result<()>> {
        let streams: Vec<Option<Arc<Stream>>> = ids.iter().map(|id| self.stream(*id)).collect();
        let mut durable = self.sync_helpers.sync_records(streams.iter().flatten().cloned().collect()).into_iter();
        let answers: Vec<Result<()>> = streams
            .iter()
            .map(|s| match s {
                // A stream that does not exist has nothing to sync (as `sync`).
                None => Ok(()),
                Some(h) => durable.next().expect("one answer per stream").and_then(|()| self.flush_deferred(h)),
            })
            .collect();
        debug_assert!(durable.next().is_none(), "every stream answered once");
        answers
    }

    /// Closes every modified stream (fsync, trim, active index), once; streams are closed by up
    /// to [`CLOSE_THREADS`] threads at a time, since each close is a few fsyncs of its own files
    /// (thousands of streams closed one after the other take seconds).
    pub(crate) fn shutdown(&self) -> Result<()> {
        if self.closed.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Ok(());
        }
        let streams: Vec<Arc<Stream>> = self
            .streams
            .read()
            .values()
            .filter(|s| s.check_usable().is_ok() && s.modified.load(std::sync::atomic::Ordering::Acquire))
            .cloned()
            .collect();
        let next = std::sync::atomic::AtomicUsize::new(0);
        let first_err = parking_lot::Mutex::new(None);
        let close_some = || {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(s) = streams.get(i) else { break };
                if let Err(e) = self.sync_stream(s).and_then(|()| self.write_active_index(s)) {
                    tracing::warn!(stream = %s.id, error = %e, "closing the stream failed");
                    first_err.lock().get_or_insert(e);
                }
            }
        };
        let threads = CLOSE_THREADS.min(streams.len());
        if threads <= 1 {
            close_some();
        } else {
            std::thread::scope(|scope| {
                for _ in 0..threads {
                    scope.spawn(close_some);
                }
            });
        }
        first_err.into_inner().map_or(Ok(()), Err)
    }
}

/// Most threads closing streams at once on [`Storage::close`] (and drop).
const CLOSE_THREADS: usize = 8;

/// Most threads syncing streams at once in one `sync_streams` call. With 300 streams of one
/// unsynced 1 KiB append each, 8 or 32 threads made them all durable in ~20 ms where one thread
/// took ~930 ms (a loaded 2-core VM, ext4; `benches/sync_rounds.rs`, README "Many partitions").
pub(crate) const SYNC_THREADS: usize = 16;

impl Drop for Storage {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}
