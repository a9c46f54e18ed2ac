//! Durable storage for Liebre: persistent messages of durable queues in a
//! group-committed, checksummed message log, and definitions, retained
//! messages and MQTT sessions in a metadata database.
//!
//! Data directory:
//!
//! ```text
//! <data_dir>/meta.redb                     MetaStore (redb)
//! <data_dir>/msgs/00000000000000000001.seg MessageLog segments
//! ```
//!
//! The message log does its I/O through the [`Backend`] trait: the file
//! system in production, memory in tests, and [`CrashBackend`] to test
//! what survives a crash. The byte layout is in `docs/store-format.md`.
//!
//! # Layout
//! - [`log`]: [`MessageLog`]: append, ack, group commit, reading bodies
//!   back, recovery, reclamation.
//! - [`meta`]: [`MetaStore`]: tables of opaque values, queue ids.
//! - [`backend`]: the I/O seam and its three implementations.
//! - `format`: segment and record encoding, the streaming segment reader.
//! - `error`: [`StoreError`].
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use bytes::Bytes;
//! use liebre_store::{LogConfig, MemoryBackend, MessageLog};
//!
//! let backend = Arc::new(MemoryBackend::new());
//! let (log, recovered) = MessageLog::open(backend.clone(), "/msgs", LogConfig::default())?;
//! assert!(recovered.queues.is_empty());
//! let m = log.append(&[1, 2], Bytes::from_static(b"hello"))?;
//! log.wait_synced(m.lsn)?; // now the publisher may be confirmed
//! log.ack(&[(1, m.id)])?;
//! // A body dropped from memory is read back from the log.
//! assert_eq!(log.read(&[m.id])?, vec![(m.id, Bytes::from_static(b"hello"))]);
//! log.close()?;
//!
//! let (log, recovered) = MessageLog::open(backend, "/msgs", LogConfig::default())?;
//! assert_eq!(recovered.queues[&2], vec![(m.id, Some(Bytes::from_static(b"hello")))]);
//! assert!(!recovered.queues.contains_key(&1));
//! log.ack(&[(2, m.id)])?;
//! log.sync()?;
//! assert!(log.read(&[m.id])?.is_empty(), "acked by every queue");
//! # Ok::<(), liebre_store::StoreError>(())
//! ```

#![deny(clippy::unwrap_used)]
#![warn(missing_docs)]

pub mod backend;
mod error;
mod format;
pub mod log;
pub mod meta;

use std::path::Path;
use std::sync::Arc;

pub use backend::{Backend, BackendFile, CrashBackend, FileBackend, MemoryBackend};
pub use error::{Result, StoreError};
pub use log::{
    Appended, FailureCallback, FsyncPolicy, Health, LogConfig, LogStats, Lsn, MessageLog,
    Recovered, Recovery, RecoveryReport, SyncCallback,
};
pub use meta::{MetaOp, MetaStore, Table};

/// Name of the message log's directory inside the data directory.
pub const MSGS_DIR: &str = "msgs";
/// Name of the metadata database inside the data directory.
pub const META_FILE: &str = "meta.redb";

/// Both halves of the store, opened from one data directory.
#[derive(Debug)]
pub struct Store {
    /// Persistent messages and acks.
    pub log: MessageLog,
    /// Definitions, retained messages, sessions, queue ids.
    pub meta: MetaStore,
}

impl Store {
    /// Opens (creating if needed) `<data_dir>/meta.redb` and
    /// `<data_dir>/msgs/` on the real file system, and recovers the log.
    ///
    /// The metadata database is opened first: its file lock keeps a second
    /// broker off the same data directory before the log is touched.
    pub fn open(data_dir: impl AsRef<Path>, config: LogConfig) -> Result<(Self, Recovered)> {
        Self::open_with(data_dir, config, Arc::new(FileBackend::new()))
    }

    /// [`Store::open`], with the message log going through `backend`
    /// (the metadata store always uses the real file system).
    pub fn open_with(
        data_dir: impl AsRef<Path>,
        config: LogConfig,
        backend: Arc<dyn Backend>,
    ) -> Result<(Self, Recovered)> {
        let data_dir = data_dir.as_ref();
        std::fs::create_dir_all(data_dir)
            .map_err(|e| StoreError::io("create directory", data_dir, e))?;
        let meta = MetaStore::open(data_dir.join(META_FILE))?;
        let (log, recovered) = MessageLog::open(backend, data_dir.join(MSGS_DIR), config)?;
        Ok((Self { log, meta }, recovered))
    }
}
