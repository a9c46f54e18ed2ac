//! A connection's bounded inbox of deliveries, shared by every protocol.
//!
//! Queues push deliveries from whichever task is running them (a
//! publisher's, or the consumer's own on an ack); the connection task is
//! woken once per batch, drains everything and writes it in one go. No
//! message costs a task hop of its own. The outbox is bounded: consumers
//! without a credit limit of their own (AMQP no-ack, MQTT QoS 0) stop
//! receiving while it is full (see [`Outbox::is_full`]), and are kicked
//! again once the connection has written what it holds.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

/// Wakes the task that owns a connection. The server implements it over a
/// tokio `Notify`; tests can count calls.
pub trait Wake: Send + Sync {
    /// Make the connection task run soon.
    fn wake(&self);
}

/// Pending events for one connection.
pub struct Outbox<E> {
    events: Mutex<VecDeque<(E, usize)>>,
    len: AtomicUsize,
    bytes: AtomicUsize,
    max_len: usize,
    max_bytes: usize,
    waker: Arc<dyn Wake>,
}

impl<E> std::fmt::Debug for Outbox<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").field("len", &self.len).finish()
    }
}

impl<E> Outbox<E> {
    /// An empty outbox waking `waker`, full at `max_len` events or
    /// `max_bytes` of payload.
    pub fn new(waker: Arc<dyn Wake>, max_len: usize, max_bytes: usize) -> Self {
        Self {
            events: Mutex::new(VecDeque::new()),
            len: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            max_len,
            max_bytes,
            waker,
        }
    }

    /// What wakes the connection's task.
    pub fn waker(&self) -> &Arc<dyn Wake> {
        &self.waker
    }

    /// Whether consumers without their own credit limit should hold off.
    pub fn is_full(&self) -> bool {
        self.len.load(Ordering::Relaxed) >= self.max_len
            || self.bytes.load(Ordering::Relaxed) >= self.max_bytes
    }

    /// Whether anything is waiting (no lock taken).
    pub fn is_empty(&self) -> bool {
        self.len.load(Ordering::Acquire) == 0
    }

    /// Queue an event of `bytes` payload bytes and wake the task if it
    /// was idle.
    pub fn push(&self, event: E, bytes: usize) {
        let was_empty = {
            let mut ev = self.events.lock();
            ev.push_back((event, bytes));
            ev.len() == 1
        };
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.len.fetch_add(1, Ordering::Release);
        // One wake-up per batch: the task drains everything when it runs.
        if was_empty {
            self.waker.wake();
        }
    }

    /// Take everything queued so far, in order.
    pub fn drain(&self) -> Vec<E> {
        let taken = std::mem::take(&mut *self.events.lock());
        self.len.fetch_sub(taken.len(), Ordering::Release);
        let bytes: usize = taken.iter().map(|(_, b)| b).sum();
        self.bytes.fetch_sub(bytes, Ordering::Relaxed);
        taken.into_iter().map(|(e, _)| e).collect()
    }
}
