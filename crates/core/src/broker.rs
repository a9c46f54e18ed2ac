//! The broker: the registry of vhosts and the shared clock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::alarms::Alarms;
use crate::error::{CoreError, Result};
use crate::message::{Clock, SystemClock};
use crate::metrics::Metrics;
use crate::vhost::VHost;

/// The routing core's root. Protocol front ends, the management API and
/// the CLI all reach the core through one `Arc<Broker>`.
#[derive(Debug)]
pub struct Broker {
    vhosts: RwLock<HashMap<String, Arc<VHost>>>,
    clock: Arc<dyn Clock>,
    ids: AtomicU64,
    metrics: Arc<Metrics>,
    alarms: Alarms,
    started: std::time::Instant,
    definitions: std::sync::OnceLock<Arc<dyn crate::Definitions>>,
    store: std::sync::OnceLock<Arc<dyn crate::MessageStore>>,
    max_loaded: AtomicU64,
}

impl Default for Broker {
    fn default() -> Self {
        Self::new(Arc::new(SystemClock))
    }
}

impl Broker {
    /// A broker with the default vhost `/`.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        let started = clock.now();
        let metrics = Arc::new(Metrics::default());
        let b = Self {
            vhosts: RwLock::new(HashMap::new()),
            clock,
            ids: AtomicU64::new(1),
            alarms: Alarms::new(metrics.clone()),
            metrics,
            started,
            definitions: std::sync::OnceLock::new(),
            store: std::sync::OnceLock::new(),
            max_loaded: AtomicU64::new(crate::persistence::DEFAULT_MAX_LOADED as u64),
        };
        b.add_vhost("/");
        b
    }

    /// The clock everything in this broker reads.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Report durable definition changes to `d` from now on, in every
    /// vhost (set once, after definitions were loaded).
    pub fn set_definitions(&self, d: Arc<dyn crate::Definitions>) {
        let _ = self.definitions.set(d.clone());
        for v in self.vhosts() {
            v.set_definitions(d.clone());
        }
    }

    /// Keep persistent messages of durable queues in `store` from now on,
    /// in every vhost (set once, before definitions are loaded, so that
    /// restored queues get their store ids).
    pub fn set_store(&self, store: Arc<dyn crate::MessageStore>) {
        let _ = self.store.set(store.clone());
        for v in self.vhosts() {
            v.set_store(store.clone());
        }
    }

    /// Ready messages each queue keeps in memory before new stored ones
    /// are paged out (for queues declared from now on; set before
    /// definitions are loaded).
    pub fn set_queue_max_loaded(&self, n: usize) {
        self.max_loaded.store(n as u64, Ordering::Relaxed);
        for v in self.vhosts() {
            v.set_queue_max_loaded(n);
        }
    }

    /// The message store, if there is one.
    pub fn store(&self) -> Option<&Arc<dyn crate::MessageStore>> {
        self.store.get()
    }

    /// Broker-wide counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Memory and disk alarms: while one is on, publishers are blocked.
    pub fn alarms(&self) -> &Alarms {
        &self.alarms
    }

    /// How long the broker has been running.
    pub fn uptime(&self) -> std::time::Duration {
        self.clock.now().saturating_duration_since(self.started)
    }

    /// A fresh broker-wide id (connections, consumers).
    pub fn next_id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::Relaxed)
    }

    /// Look up a vhost.
    pub fn vhost(&self, name: &str) -> Option<Arc<VHost>> {
        self.vhosts.read().get(name).cloned()
    }

    /// Look up a vhost for a connection: 530 NOT_ALLOWED if missing.
    pub fn vhost_for_connection(&self, name: &str) -> Result<Arc<VHost>> {
        self.vhost(name)
            .ok_or_else(|| CoreError::NotAllowed(format!("vhost {name} not found")))
    }

    /// Create a vhost (no-op if it exists); returns it.
    pub fn add_vhost(&self, name: &str) -> Arc<VHost> {
        let mut created = false;
        let v = self
            .vhosts
            .write()
            .entry(name.to_owned())
            .or_insert_with(|| {
                created = true;
                let v = VHost::new(name, self.clock.clone(), self.metrics.clone());
                if let Some(d) = self.definitions.get() {
                    v.set_definitions(d.clone());
                }
                if let Some(s) = self.store.get() {
                    v.set_store(s.clone());
                }
                v.set_queue_max_loaded(self.max_loaded.load(Ordering::Relaxed) as usize);
                v
            })
            .clone();
        if let (true, Some(d)) = (created, self.definitions.get()) {
            d.vhost_added(name);
        }
        v
    }

    /// Delete a vhost and everything in it.
    pub fn delete_vhost(&self, name: &str) -> Option<Arc<VHost>> {
        let v = self.vhosts.write().remove(name)?;
        for q in v.queues() {
            v.delete_queue_unchecked(q.name());
        }
        if let Some(d) = self.definitions.get() {
            d.vhost_deleted(name);
        }
        Some(v)
    }

    /// All vhosts, sorted by name.
    pub fn vhosts(&self) -> Vec<Arc<VHost>> {
        let mut v: Vec<Arc<VHost>> = self.vhosts.read().values().cloned().collect();
        v.sort_by(|a, b| a.name().cmp(b.name()));
        v
    }

    /// Periodic work in every vhost (message expiry, `x-expires`).
    pub fn tick(&self) {
        for v in self.vhosts() {
            v.tick();
        }
    }
}
