//! Opening the node's storage.

use std::sync::Arc;

use shale_storage::{MemoryStorage, StorageBackend, StorageOptions};

use crate::config::{NodeConfig, StorageKind};
use crate::error::NodeError;

/// The storage options the config implies.
pub fn options(config: &NodeConfig) -> StorageOptions {
    StorageOptions {
        // A record is stored as one Raft entry: the node's record limit plus entry framing.
        max_record_bytes: (config.limits.max_record_bytes + 64 * 1024).max(StorageOptions::default().max_record_bytes),
        max_segment_bytes: config.segment_bytes,
        ..StorageOptions::default()
    }
}

/// Opens (or creates) the storage the config names.
pub fn open(config: &NodeConfig) -> Result<Arc<dyn StorageBackend>, NodeError> {
    let options = options(config);
    match config.storage {
        StorageKind::Memory => Ok(Arc::new(MemoryStorage::with_options(options).map_err(NodeError::Storage)?)),
        StorageKind::Disk => {
            std::fs::create_dir_all(&config.data_dir)
                .map_err(|source| NodeError::DataDir { path: config.data_dir.clone(), source })?;
            let storage = shale_storage::Storage::open_with(&config.data_dir, options).map_err(NodeError::Storage)?;
            Ok(Arc::new(storage))
        }
    }
}
