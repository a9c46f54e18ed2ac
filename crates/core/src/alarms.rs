//! Resource alarms: memory above the high watermark, free disk below the
//! limit (RabbitMQ's `vm_memory_high_watermark` and `disk_free_limit`).
//!
//! While any alarm is on, connections that publish stop being read (AMQP
//! clients that asked are told with `connection.blocked`); connections that
//! only consume go on. The server's monitor sets and clears the flags; a
//! connection that stopped reading registers its waker and is woken once
//! every alarm has cleared.
//!
//! A connection's side is a [`Throttle`]: it becomes blocked when a publish
//! arrives while an alarm is on ([`Throttle::publish_received`]) and
//! resumes when [`Throttle::poll_unblock`] finds every alarm clear.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use crate::metrics::Metrics;
use crate::outbox::Wake;

/// A resource an alarm watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// Memory use above the high watermark.
    Memory,
    /// Free disk space below the limit.
    Disk,
}

impl Resource {
    /// The name RabbitMQ uses in logs and in `connection.blocked`.
    pub fn name(self) -> &'static str {
        match self {
            Resource::Memory => "memory",
            Resource::Disk => "disk",
        }
    }
}

/// The broker's alarm flags and the connections waiting for them to clear.
pub struct Alarms {
    memory: AtomicBool,
    disk: AtomicBool,
    /// Wakers of blocked connections, woken (and dropped) when every alarm
    /// has cleared.
    waiters: Mutex<Vec<Weak<dyn Wake>>>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Alarms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Alarms")
            .field("memory", &self.memory())
            .field("disk", &self.disk())
            .finish()
    }
}

impl Alarms {
    /// No alarm on; `metrics` gets the gauges.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            memory: AtomicBool::new(false),
            disk: AtomicBool::new(false),
            waiters: Mutex::new(Vec::new()),
            metrics,
        }
    }

    fn flag(&self, r: Resource) -> &AtomicBool {
        match r {
            Resource::Memory => &self.memory,
            Resource::Disk => &self.disk,
        }
    }

    /// Turn the alarm for `r` on or off. Returns whether it changed. When
    /// the last alarm clears, every blocked connection is woken.
    pub fn set(&self, r: Resource, on: bool) -> bool {
        if self.flag(r).swap(on, Ordering::SeqCst) == on {
            return false;
        }
        if on {
            Metrics::add(&self.metrics.resource_alarms, 1);
        } else {
            Metrics::dec(&self.metrics.resource_alarms);
            if !self.blocked() {
                // Taken after the flag is stored: a connection that
                // registers later sees the flag clear (wake_when_clear).
                let waiters = std::mem::take(&mut *self.waiters.lock());
                for w in waiters.iter().filter_map(Weak::upgrade) {
                    w.wake();
                }
            }
        }
        true
    }

    /// Memory alarm on or off (also how tests force it).
    pub fn set_memory(&self, on: bool) -> bool {
        self.set(Resource::Memory, on)
    }

    /// Disk alarm on or off.
    pub fn set_disk(&self, on: bool) -> bool {
        self.set(Resource::Disk, on)
    }

    /// Whether the memory alarm is on.
    pub fn memory(&self) -> bool {
        self.memory.load(Ordering::SeqCst)
    }

    /// Whether the disk alarm is on.
    pub fn disk(&self) -> bool {
        self.disk.load(Ordering::SeqCst)
    }

    /// Whether any alarm is on: publishers are to be blocked.
    pub fn blocked(&self) -> bool {
        self.memory() || self.disk()
    }

    /// The alarms that are on.
    pub fn reasons(&self) -> Vec<Resource> {
        [Resource::Memory, Resource::Disk]
            .into_iter()
            .filter(|r| self.flag(*r).load(Ordering::SeqCst))
            .collect()
    }

    /// The reason of `connection.blocked`, worded as RabbitMQ does:
    /// "low on memory", "low on disk", "low on memory & disk".
    pub fn reason_text(&self) -> String {
        let names: Vec<&str> = self.reasons().into_iter().map(Resource::name).collect();
        format!("low on {}", names.join(" & "))
    }

    /// Wake `waker` once every alarm has cleared (at once if none is on).
    pub fn wake_when_clear(&self, waker: &Arc<dyn Wake>) {
        {
            let mut w = self.waiters.lock();
            // Connections that went away leave dead entries; drop them
            // before they pile up.
            if w.len() >= 64 && w.len().is_power_of_two() {
                w.retain(|x| x.strong_count() > 0);
            }
            w.push(Arc::downgrade(waker));
        }
        if !self.blocked() {
            waker.wake();
        }
    }
}

/// A connection's side of the alarms: whether it stopped reading because
/// it published while an alarm was on ("blocked" in RabbitMQ's terms; a
/// connection that has not published is never blocked).
#[derive(Debug, Default)]
pub struct Throttle {
    blocked: Option<Blocked>,
}

/// Counts a blocked connection in the gauge for as long as it lives.
#[derive(Debug)]
struct Blocked {
    metrics: Arc<Metrics>,
}

impl Drop for Blocked {
    fn drop(&mut self) {
        Metrics::dec(&self.metrics.blocked_connections);
    }
}

impl Throttle {
    /// Whether the connection stopped reading.
    pub fn is_blocked(&self) -> bool {
        self.blocked.is_some()
    }

    /// A publish is arriving: if an alarm is on, stop reading and have
    /// `waker` woken when the alarms clear. Returns whether the connection
    /// became blocked now (the moment to send `connection.blocked`).
    pub fn publish_received(&mut self, alarms: &Alarms, waker: &Arc<dyn Wake>) -> bool {
        if self.blocked.is_some() || !alarms.blocked() {
            return false;
        }
        Metrics::add(&alarms.metrics.blocked_connections, 1);
        self.blocked = Some(Blocked {
            metrics: alarms.metrics.clone(),
        });
        alarms.wake_when_clear(waker);
        true
    }

    /// If blocked and every alarm has cleared, resume reading. Returns
    /// whether the connection was unblocked now.
    pub fn poll_unblock(&mut self, alarms: &Alarms) -> bool {
        if self.blocked.is_none() || alarms.blocked() {
            return false;
        }
        self.blocked = None;
        true
    }

    /// The connection is closing: read again (a close handshake must get
    /// through), whatever the alarms.
    pub fn release(&mut self) {
        self.blocked = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn count(w: &Arc<Count>) -> usize {
        w.0.load(Ordering::SeqCst)
    }

    #[test]
    fn flags_reasons_and_gauge() {
        let m = Arc::new(Metrics::default());
        let a = Alarms::new(m.clone());
        assert!(!a.blocked());
        assert!(a.set_memory(true));
        assert!(!a.set_memory(true), "setting twice is no change");
        assert_eq!(a.reason_text(), "low on memory");
        assert!(a.set_disk(true));
        assert_eq!(a.reasons(), vec![Resource::Memory, Resource::Disk]);
        assert_eq!(a.reason_text(), "low on memory & disk");
        assert_eq!(Metrics::get(&m.resource_alarms), 2);
        a.set_memory(false);
        assert_eq!(a.reason_text(), "low on disk");
        assert!(a.blocked());
        a.set_disk(false);
        assert!(!a.blocked());
        assert_eq!(Metrics::get(&m.resource_alarms), 0);
    }

    #[test]
    fn blocked_connection_is_woken_when_the_last_alarm_clears() {
        let m = Arc::new(Metrics::default());
        let a = Alarms::new(m.clone());
        let w = Arc::new(Count::default());
        let waker: Arc<dyn Wake> = w.clone();
        let mut t = Throttle::default();
        assert!(!t.publish_received(&a, &waker), "no alarm: not blocked");
        a.set_memory(true);
        a.set_disk(true);
        assert!(t.publish_received(&a, &waker));
        assert!(!t.publish_received(&a, &waker), "already blocked");
        assert!(t.is_blocked());
        assert_eq!(Metrics::get(&m.blocked_connections), 1);
        a.set_memory(false);
        assert_eq!(count(&w), 0, "disk still on");
        assert!(!t.poll_unblock(&a));
        a.set_disk(false);
        assert_eq!(count(&w), 1);
        assert!(t.poll_unblock(&a));
        assert!(!t.is_blocked());
        assert_eq!(Metrics::get(&m.blocked_connections), 0);
    }

    #[test]
    fn registering_after_the_clear_wakes_at_once() {
        let a = Alarms::new(Arc::new(Metrics::default()));
        let w = Arc::new(Count::default());
        let waker: Arc<dyn Wake> = w.clone();
        a.wake_when_clear(&waker);
        assert_eq!(count(&w), 1);
    }

    #[test]
    fn a_closed_blocked_connection_leaves_the_gauge() {
        let m = Arc::new(Metrics::default());
        let a = Alarms::new(m.clone());
        let waker: Arc<dyn Wake> = Arc::new(Count::default());
        a.set_disk(true);
        let mut t = Throttle::default();
        t.publish_received(&a, &waker);
        assert_eq!(Metrics::get(&m.blocked_connections), 1);
        drop(t);
        assert_eq!(Metrics::get(&m.blocked_connections), 0);
    }
}
