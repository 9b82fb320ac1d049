//! Opening the node's storage.

use std::sync::Arc;

use shale_storage::{MemoryStorage, StorageBackend, StorageOptions};

use crate::config::{NodeConfig, StorageKind};
use crate::error::NodeError;

/// The storage options the config implies. The record and batch limits are the storage's
/// defaults, [`shale_storage::limits::STORAGE_RECORD_BYTES`] and `STORAGE_BATCH_BYTES`: sized for
/// the largest `limits.max_record_bytes` a node may be configured with, never for the configured
/// value (reads take a declared length over the storage limit for damage, so lowering the
/// configured limit must not make data already written unreadable).
pub fn options(config: &NodeConfig) -> StorageOptions {
    let keep = config.memory.page_cache_keep_bytes;
    StorageOptions {
        max_segment_bytes: config.segment_bytes,
        page_cache_keep_bytes: (keep > 0).then_some(keep),
        prepare_ahead: config.prepare_ahead,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_stay_on_their_thread_unless_the_config_turns_prepare_ahead_on() {
        let config = NodeConfig::default();
        assert!(!options(&config).prepare_ahead);
        let config = NodeConfig::from_toml("prepare_ahead = true").expect("parse");
        assert!(options(&config).prepare_ahead);
    }
}
