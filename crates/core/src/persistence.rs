//! The seam through which persistent messages reach durable storage.
//!
//! A persistent message (`delivery_mode` 2, MQTT QoS 1/2) routed to
//! durable queues is handed to the [`MessageStore`] once, with the ids of
//! every durable queue it reached ([`VHost::enqueue_all`]); the store gives
//! back the message's id and the log position ([`Stored::lsn`]) after
//! which it is on disk. A queue remembers the id with each entry and tells
//! the store when the message leaves it for good: acknowledged, rejected,
//! expired, dropped by a length limit, purged, or consumed without ack.
//! Protocol front ends hold publisher confirms and PUBACKs until
//! [`MessageStore::synced`] reaches the publish's position, and ask to be
//! woken for it with [`MessageStore::wake_when_synced`].
//!
//! The server implements the trait over `liebre-store`'s message log; the
//! core never does I/O itself.
//!
//! [`VHost::enqueue_all`]: crate::VHost::enqueue_all

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use liebre_amqp_codec::{BasicProperties, ShortStr};

use crate::message::Message;
use crate::outbox::Wake;

/// Where a stored message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// The message's id in the store (the same for every queue it is in).
    pub id: u64,
    /// The message is durable once [`MessageStore::synced`] reaches this.
    pub lsn: u64,
}

/// Why the store did not take a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreRefused(pub String);

impl std::fmt::Display for StoreRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Durable storage of persistent messages, as the core sees it.
///
/// Methods are called from connection tasks with no core lock held,
/// except [`MessageStore::remove`], which may be called right after a
/// queue's lock is released. They must not call back into the core.
pub trait MessageStore: Send + Sync + std::fmt::Debug {
    /// The store's id for durable queue `queue` of `vhost`, allocated on
    /// first use. `None` if the store cannot give one (the queue then keeps
    /// its messages in memory only, and the failure is logged).
    fn queue_id(&self, vhost: &str, queue: &str) -> Option<u32>;

    /// The durable queue with store id `id` was deleted: its messages and
    /// its id go.
    fn queue_deleted(&self, vhost: &str, queue: &str, id: u32);

    /// Store a message routed to the durable queues `queues` (store ids),
    /// encoded with [`encode_record`].
    fn append(&self, queues: &[u32], record: Bytes) -> Result<Stored, StoreRefused>;

    /// The messages `(queue id, message id)` left those queues for good.
    fn remove(&self, pairs: &[(u32, u64)]);

    /// The highest position that is durable.
    fn synced(&self) -> u64;

    /// Whether the store failed (a write or fsync): no position past
    /// [`MessageStore::synced`] will ever be durable, and connections
    /// holding confirms or PUBACKs for one must refuse them instead.
    /// Waiters registered with [`MessageStore::wake_when_synced`] are woken
    /// when it fails.
    fn failed(&self) -> bool {
        false
    }

    /// Call `waker` once [`MessageStore::synced`] reaches `lsn` (at once if
    /// it has). Called from the thread that syncs: the waker must be quick.
    fn wake_when_synced(&self, lsn: u64, waker: Arc<dyn Wake>);

    /// The records of stored messages `ids`, as `(id, record)`; ids the
    /// store does not have are left out. Used to read back messages a queue
    /// paged out. Called with a queue lock held.
    fn read(&self, ids: &[u64]) -> Result<Vec<(u64, Bytes)>, StoreRefused> {
        let _ = ids;
        Err(StoreRefused("this store cannot read messages back".into()))
    }
}

/// Ready messages a queue keeps in memory by default; stored messages
/// beyond them are paged out (their bodies read back from the store when
/// they near the head of the queue).
pub const DEFAULT_MAX_LOADED: usize = 2048;

/// The store position a connection last asked to be woken at, so that it
/// registers again only for a later one (confirms and PUBACKs held for
/// the disk, in both protocols).
#[derive(Debug, Default, Clone, Copy)]
pub struct SyncWait(u64);

impl SyncWait {
    /// Ask `store` to wake the connection once `lsn` is synced, unless it
    /// already asked for `lsn` or later.
    pub fn wake_at(
        &mut self,
        store: &dyn MessageStore,
        lsn: u64,
        waker: impl FnOnce() -> Arc<dyn Wake>,
    ) {
        if lsn > self.0 {
            self.0 = lsn;
            store.wake_when_synced(lsn, waker());
        }
    }
}

/// A queue's link to the store: the store and the queue's id in it.
#[derive(Clone)]
pub(crate) struct QueueStore {
    pub(crate) store: Arc<dyn MessageStore>,
    pub(crate) id: u32,
}

impl std::fmt::Debug for QueueStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueStore").field("id", &self.id).finish()
    }
}

/// Version byte at the start of every record written by this build.
const RECORD_VERSION: u8 = 1;

/// Milliseconds since the Unix epoch, now.
pub fn unix_millis_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Encode a message as the store keeps it (layout in
/// `docs/store-format.md`, "message record payload"):
///
/// ```text
/// u8  version (1)
/// u64 published at, ms since the Unix epoch (big-endian)
/// u8  exchange length, exchange
/// u8  routing key length, routing key
/// u32 properties length (big-endian), properties as on the wire
/// ... body (the rest)
/// ```
pub fn encode_record(m: &Message, published_at_ms: u64) -> Bytes {
    let (ex, rk) = (m.exchange.as_bytes(), m.routing_key.as_bytes());
    let mut out = BytesMut::with_capacity(
        1 + 8 + 2 + ex.len() + rk.len() + 4 + m.raw_properties.len() + m.body.len(),
    );
    out.put_u8(RECORD_VERSION);
    out.put_u64(published_at_ms);
    // Short strings: at most 255 bytes by construction.
    out.put_u8(ex.len() as u8);
    out.put_slice(ex);
    out.put_u8(rk.len() as u8);
    out.put_slice(rk);
    out.put_u32(m.raw_properties.len() as u32);
    out.put_slice(&m.raw_properties);
    out.put_slice(&m.body);
    out.freeze()
}

/// Decode a record written by [`encode_record`]: the message (its
/// properties and body share `record`'s buffer) and when it was
/// published. `None` if the record is not one this build can read.
pub fn decode_record(record: &Bytes) -> Option<(Message, u64)> {
    let b = &record[..];
    let (&version, rest) = b.split_first()?;
    if version != RECORD_VERSION {
        return None;
    }
    let (at, rest) = rest.split_at_checked(8)?;
    let at = u64::from_be_bytes(at.try_into().ok()?);
    let (&n, rest) = rest.split_first()?;
    let (ex, rest) = rest.split_at_checked(usize::from(n))?;
    let (&n, rest) = rest.split_first()?;
    let (rk, rest) = rest.split_at_checked(usize::from(n))?;
    let (len, rest) = rest.split_at_checked(4)?;
    let len = u32::from_be_bytes(len.try_into().ok()?) as usize;
    let (raw, body) = rest.split_at_checked(len)?;
    let raw_start = b.len() - rest.len();
    let body_start = b.len() - body.len();
    let raw_properties = record.slice(raw_start..raw_start + raw.len());
    let properties = BasicProperties::decode(&raw_properties).ok()?;
    let message = Message::new(
        ShortStr::from(std::str::from_utf8(ex).ok()?),
        ShortStr::from(std::str::from_utf8(rk).ok()?),
        properties,
        raw_properties,
        record.slice(body_start..),
    );
    Some((message, at))
}

/// A message recovered from the store, to put back into its queue.
#[derive(Debug)]
pub struct Recovered {
    /// Its id in the store.
    pub id: u64,
    /// The message; `None` if it was recovered without its body (read
    /// back from the store when it nears the head of the queue).
    pub message: Option<Message>,
    /// When it was published (ms since the Unix epoch), so a TTL keeps
    /// counting across the restart.
    pub published_at_ms: u64,
    /// Whether it may have been delivered before (after a crash every
    /// recovered message is, as RabbitMQ marks them).
    pub redelivered: bool,
}

/// How much of a TTL is left for a message published at `published_at_ms`.
pub(crate) fn remaining(ttl: Duration, published_at_ms: u64, now_ms: u64) -> Duration {
    ttl.saturating_sub(Duration::from_millis(
        now_ms.saturating_sub(published_at_ms),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_decode_as_written() {
        let props = BasicProperties {
            content_type: Some(ShortStr::from("text/plain")),
            delivery_mode: Some(2),
            ..Default::default()
        };
        let m = Message::with_properties(
            ShortStr::from("amq.topic"),
            ShortStr::from("plant.north.state"),
            props.clone(),
            Bytes::from_static(b"online"),
        );
        let rec = encode_record(&m, 1_700_000_000_123);
        let (back, at) = decode_record(&rec).expect("decodes");
        assert_eq!(at, 1_700_000_000_123);
        assert_eq!(&*back.routing_key, "plant.north.state");
        assert_eq!(&*back.exchange, "amq.topic");
        assert_eq!(*back.properties, props);
        assert_eq!(&back.body[..], b"online");
        for cut in 0..rec.len() - b"online".len() {
            assert!(decode_record(&rec.slice(..cut)).is_none(), "cut at {cut}");
        }
        let mut other = rec.to_vec();
        other[0] = 9;
        assert!(decode_record(&Bytes::from(other)).is_none());
    }

    #[test]
    fn ttl_keeps_counting_across_a_restart() {
        let ttl = Duration::from_secs(10);
        assert_eq!(remaining(ttl, 1_000, 4_000), Duration::from_secs(7));
        assert_eq!(remaining(ttl, 1_000, 20_000), Duration::ZERO);
        assert_eq!(remaining(ttl, 5_000, 4_000), ttl); // clock went back
    }
}
