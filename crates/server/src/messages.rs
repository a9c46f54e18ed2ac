//! Persistent messages in the store's message log: the server's side of
//! the core's [`MessageStore`] seam, and recovery at startup.
//!
//! - Appends and acks go to the log's writer thread, which group-commits
//!   them (one `write` and one `fsync` for everything that arrived
//!   meanwhile).
//! - Connections that hold publisher confirms or PUBACKs register their
//!   waker for a log position ([`MessageStore::wake_when_synced`]); the
//!   writer's sync callback wakes every one whose position is now durable.
//! - On startup the log's live messages go back to their queues (found
//!   through the queue ids in the metadata store). After a crash every one
//!   is marked redelivered, as RabbitMQ does, since nobody can tell which
//!   were delivered; a clean shutdown records exactly which were, so the
//!   others come back with `redelivered=false`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use anyhow::Context as _;
use bytes::Bytes;
use liebre_core::persistence::{decode_record, Recovered as RecoveredMessage};
use liebre_core::{Broker, MessageStore, StoreRefused, Stored, Wake};
use liebre_store::{MessageLog, Recovered, Table};
use parking_lot::Mutex;
use tracing::{error, info, warn};

use crate::definitions::StoredDefinitions;

/// Key in [`Table::Runtime`] of the record a clean shutdown leaves: the
/// (queue id, message id) pairs that had been delivered.
const CLEAN_SHUTDOWN: &str = "clean_shutdown";

/// Connections waiting for log positions to be synced.
#[derive(Default)]
struct Waiters {
    by_lsn: BTreeMap<u64, Vec<Arc<dyn Wake>>>,
}

/// The message log behind the core's [`MessageStore`].
pub struct StoredMessages {
    log: MessageLog,
    definitions: Arc<StoredDefinitions>,
    waiters: Arc<Mutex<Waiters>>,
}

impl std::fmt::Debug for StoredMessages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredMessages")
            .field("log", &self.log)
            .finish_non_exhaustive()
    }
}

impl StoredMessages {
    /// Wrap an open log; queue ids come from `definitions`' metadata store.
    pub fn new(log: MessageLog, definitions: Arc<StoredDefinitions>) -> Arc<Self> {
        let waiters: Arc<Mutex<Waiters>> = Arc::default();
        let w = waiters.clone();
        log.on_sync(Box::new(move |lsn| {
            let due = {
                let mut w = w.lock();
                let later = w.by_lsn.split_off(&(lsn.0 + 1));
                std::mem::replace(&mut w.by_lsn, later)
            };
            for waker in due.into_values().flatten() {
                waker.wake();
            }
        }));
        // A poisoned log syncs nothing more: every waiter is woken to see
        // that (`failed`) and refuse what it holds.
        let w = waiters.clone();
        log.on_failure(Box::new(move || {
            let all = std::mem::take(&mut w.lock().by_lsn);
            for waker in all.into_values().flatten() {
                waker.wake();
            }
        }));
        Arc::new(Self {
            log,
            definitions,
            waiters,
        })
    }

    /// Put recovered messages back into their queues. Messages of queue
    /// ids that no longer name a durable queue are dropped from the log.
    pub fn restore(&self, broker: &Broker, recovered: Recovered) -> anyhow::Result<()> {
        let ids: HashMap<u32, (String, String)> = self
            .definitions
            .with_meta(|m| m.queue_ids())
            .context("reading queue ids")?
            .into_iter()
            .map(|(vhost, name, id)| (id, (vhost, name)))
            .collect();
        let delivered = self.take_clean_shutdown_record();
        let (mut messages, mut queues, mut unreadable) = (0u64, 0usize, 0u64);
        for (qid, entries) in recovered.queues {
            let queue = ids
                .get(&qid)
                .and_then(|(vhost, name)| broker.vhost(vhost)?.queue(name))
                .filter(|q| q.store_id() == Some(qid));
            let Some(queue) = queue else {
                warn!(
                    message = "Stored messages of a queue that no longer exists are dropped.",
                    queue_id = qid,
                    messages = entries.len()
                );
                if let Err(e) = self.log.drop_queue(qid) {
                    error!(message = "Could not drop the messages of a deleted queue.", %e);
                }
                continue;
            };
            let mut batch = Vec::with_capacity(entries.len());
            let mut bad = Vec::new();
            for (id, record) in entries {
                let redelivered = delivered.as_ref().is_none_or(|d| d.contains(&(qid, id)));
                let Some(record) = record else {
                    // Past the queue's in-memory budget: read back later.
                    batch.push(RecoveredMessage {
                        id,
                        message: None,
                        published_at_ms: 0,
                        redelivered,
                    });
                    continue;
                };
                match decode_record(&record) {
                    Some((message, published_at_ms)) => batch.push(RecoveredMessage {
                        id,
                        message: Some(message),
                        published_at_ms,
                        redelivered,
                    }),
                    None => bad.push((qid, id)),
                }
            }
            if !bad.is_empty() {
                error!(
                    message = "Unreadable stored messages dropped.",
                    queue = %queue.name(),
                    count = bad.len()
                );
                unreadable += bad.len() as u64;
                self.remove(&bad);
            }
            messages += batch.len() as u64;
            queues += 1;
            queue.restore(batch);
        }
        info!(
            message = "Messages recovered.",
            messages,
            queues,
            unreadable,
            clean_shutdown = delivered.is_some(),
            segments = recovered.report.segments,
            torn_tail_bytes = recovered.report.torn_tail_bytes,
        );
        Ok(())
    }

    /// Read and delete the record of the last clean shutdown (None if the
    /// broker did not stop cleanly).
    fn take_clean_shutdown_record(&self) -> Option<HashSet<(u32, u64)>> {
        let raw = self
            .definitions
            .with_meta(|m| m.get(Table::Runtime, CLEAN_SHUTDOWN))??;
        // Deleted at once: if this run crashes, the next start must not
        // trust it.
        self.definitions
            .with_meta(|m| m.delete(Table::Runtime, CLEAN_SHUTDOWN))?;
        Some(
            raw.chunks_exact(12)
                .filter_map(|c| {
                    let q = u32::from_be_bytes(c[..4].try_into().ok()?);
                    let m = u64::from_be_bytes(c[4..].try_into().ok()?);
                    Some((q, m))
                })
                .collect(),
        )
    }

    /// Clean shutdown, after every connection has gone: write and fsync
    /// what is queued, then record which stored messages had been
    /// delivered (the next start marks only those redelivered).
    pub fn close(&self, broker: &Broker) {
        if let Err(e) = self.log.stop() {
            error!(message = "The message log did not close cleanly.", %e);
            return;
        }
        let mut record = Vec::new();
        for vhost in broker.vhosts() {
            for q in vhost.queues() {
                let Some(qid) = q.store_id() else { continue };
                for id in q.redelivered_ids() {
                    record.extend_from_slice(&qid.to_be_bytes());
                    record.extend_from_slice(&id.to_be_bytes());
                }
            }
        }
        self.definitions
            .with_meta(|m| m.put(Table::Runtime, CLEAN_SHUTDOWN, &record));
    }
}

impl MessageStore for StoredMessages {
    fn queue_id(&self, vhost: &str, queue: &str) -> Option<u32> {
        self.definitions.with_meta(|m| m.queue_id(vhost, queue))
    }

    fn queue_deleted(&self, vhost: &str, queue: &str, id: u32) {
        if let Err(e) = self.log.drop_queue(id) {
            error!(message = "Could not drop the stored messages of a deleted queue.", queue, %e);
        }
        self.definitions
            .with_meta(|m| m.release_queue_id(vhost, queue));
    }

    fn append(&self, queues: &[u32], record: Bytes) -> Result<Stored, StoreRefused> {
        // Blocking while the writer is `queue_capacity` commands behind is
        // the back-pressure from the disk to publishers. The writer is a
        // plain thread, so this cannot deadlock the runtime.
        self.log
            .append(queues, record)
            .map(|a| Stored {
                id: a.id,
                lsn: a.lsn.0,
            })
            .map_err(|e| StoreRefused(e.to_string()))
    }

    fn remove(&self, pairs: &[(u32, u64)]) {
        if let Err(e) = self.log.ack(pairs) {
            // A lost ack means a redelivery after a restart, never a loss.
            tracing::debug!(message = "Ack not stored.", %e);
        }
    }

    fn synced(&self) -> u64 {
        self.log.synced_lsn().0
    }

    fn failed(&self) -> bool {
        matches!(self.log.health(), liebre_store::Health::Poisoned { .. })
    }

    fn read(&self, ids: &[u64]) -> Result<Vec<(u64, Bytes)>, StoreRefused> {
        // Called with a queue lock held, on a connection task: a read of a
        // few hundred records from the page cache or the disk. The writer
        // never takes a queue lock, so this cannot deadlock.
        self.log.read(ids).map_err(|e| StoreRefused(e.to_string()))
    }

    fn wake_when_synced(&self, lsn: u64, waker: Arc<dyn Wake>) {
        let mut w = self.waiters.lock();
        // Read under the lock: the sync callback takes it after publishing
        // a new position, so a waiter is either seen by it or sees it (and
        // the failure callback after poisoning the log).
        if self.log.synced_lsn().0 >= lsn || self.failed() {
            drop(w);
            waker.wake();
        } else {
            w.by_lsn.entry(lsn).or_default().push(waker);
        }
    }
}
