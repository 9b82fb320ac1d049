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
    let budget = config.memory.page_cache_budget_bytes;
    StorageOptions {
        max_segment_bytes: config.segment_bytes,
        page_cache_keep_bytes: (keep > 0).then_some(keep),
        page_cache_budget_bytes: (budget > 0).then_some(budget),
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

    #[test]
    fn the_page_cache_budget_is_shared_by_default_and_zero_turns_it_off() {
        let config = NodeConfig::default();
        assert_eq!(options(&config).page_cache_budget_bytes, Some(shale_storage::DEFAULT_PAGE_CACHE_BUDGET_BYTES));
        let config = NodeConfig::from_toml("[memory]\npage_cache_budget_bytes = 0").expect("parse");
        assert_eq!(options(&config).page_cache_budget_bytes, None);
        let config = NodeConfig::from_toml("[memory]\npage_cache_budget_bytes = 1048576").expect("parse");
        assert_eq!(options(&config).page_cache_budget_bytes, Some(1 << 20));
    }
}
