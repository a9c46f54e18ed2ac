//! The one error type of the store.
//!
//! Nearly everything here is an internal fault (a disk that fails, a file
//! that is corrupt), to be logged at error level by the broker; only
//! [`StoreError::Full`], [`StoreError::TooLarge`] and
//! [`StoreError::NoQueues`] are about the caller's request.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file-system operation failed while opening or recovering the log.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done ("open", "read", "truncate", ...).
        op: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// A record or segment header that is neither valid nor a torn tail of
    /// the last segment, found by recovery under
    /// [`crate::Recovery::Strict`]; or a record that [`crate::MessageLog::read`]
    /// found damaged (its checksum does not verify, or it is not the
    /// message the index says is there).
    #[error("corrupt message log: {} at offset {offset}: {reason}", segment.display())]
    Corrupt {
        /// The segment file.
        segment: PathBuf,
        /// Byte offset of the bad record (0 for a bad header).
        offset: u64,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A segment written by a newer (or unknown) version of the format.
    #[error("segment {} has format version {version}, this build reads version {}", path.display(), crate::log::FORMAT_VERSION)]
    UnsupportedVersion {
        /// The segment file.
        path: PathBuf,
        /// The version found in its header.
        version: u32,
    },
    /// A write or fsync of the log failed earlier. Durability can no
    /// longer be guaranteed, so the log accepts no more writes; restart
    /// the broker (recovery truncates what was not synced).
    #[error("message log is poisoned by an earlier write or fsync failure: {cause}")]
    Poisoned {
        /// The failure that poisoned the log.
        #[source]
        cause: Arc<io::Error>,
    },
    /// The log's writer has stopped (the log is closing, or its thread
    /// died); nothing more can be appended.
    #[error("message log is closed")]
    Closed,
    /// The append queue is full (only from `try_append`/`try_ack`): the
    /// disk is behind; retry later or block the publisher.
    #[error("message log append queue is full")]
    Full,
    /// A message larger than the configured `max_message_size`.
    #[error("message of {size} bytes exceeds the store's limit of {max} bytes")]
    TooLarge {
        /// Body plus queue list, in bytes.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// An append with an empty queue list: nothing would ever acknowledge it.
    #[error("a persisted message must be routed to at least one queue")]
    NoQueues,
    /// Every queue id (u32) has been handed out once.
    #[error("no queue ids left")]
    QueueIdsExhausted,
    /// The metadata database (redb) failed.
    #[error("metadata store: {0}")]
    Meta(#[from] redb::Error),
}

impl StoreError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
