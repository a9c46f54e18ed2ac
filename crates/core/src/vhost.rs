//! A virtual host: its exchanges, queues and bindings, and routing.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use liebre_amqp_codec::{FieldTable, FieldValue, ShortStr};
use parking_lot::RwLock;
use smallvec::SmallVec;

use crate::error::{CoreError, Result};
use crate::exchange::{Binding, Destination, Exchange, ExchangeKind, ExchangeOptions};
use crate::message::{Clock, Message};
use crate::persistence::QueueStore;
use crate::queue::{DeathReason, Enqueued, Queue, QueueArgs, QueueOptions};
use crate::FastMap;

/// Prefix of the hidden per-channel queues behind direct reply-to.
pub const REPLY_TO_PREFIX: &str = "amq.rabbitmq.reply-to.";

/// Exchanges that exist in every vhost: (name, type, internal).
const BUILTIN_EXCHANGES: &[(&str, ExchangeKind, bool)] = &[
    ("", ExchangeKind::Direct, false),
    ("amq.direct", ExchangeKind::Direct, false),
    ("amq.fanout", ExchangeKind::Fanout, false),
    ("amq.topic", ExchangeKind::Topic, false),
    ("amq.headers", ExchangeKind::Headers, false),
    ("amq.match", ExchangeKind::Headers, false),
    ("amq.rabbitmq.trace", ExchangeKind::Topic, true),
];

/// The queues a message was routed to. Small fan-outs stay on the stack.
pub type Routed = SmallVec<[Arc<Queue>; 4]>;

/// The subscriber queues a publish found congested (see [`crate::flow`]):
/// the publisher is to wait for them. Compared by identity.
#[derive(Debug, Default, Clone)]
pub struct Congested(pub SmallVec<[Arc<Queue>; 1]>);

impl PartialEq for Congested {
    fn eq(&self, other: &Self) -> bool {
        self.0.len() == other.0.len() && self.0.iter().zip(&other.0).all(|(a, b)| Arc::ptr_eq(a, b))
    }
}

impl Eq for Congested {}

/// What publishing did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PublishOutcome {
    /// How many queues took the message.
    pub routed: usize,
    /// Some queue refused it (`x-overflow: reject-publish`), or the store
    /// failed: a confirming publisher gets a nack.
    pub rejected: bool,
    /// The message store refused it (it was not enqueued anywhere).
    pub store_failed: bool,
    /// The message was stored: confirm it once the store's synced
    /// position reaches this (0: nothing to wait for).
    pub lsn: u64,
    /// Subscriber queues that took it and are congested.
    pub congested: Congested,
}

/// A virtual host.
pub struct VHost {
    name: String,
    clock: Arc<dyn Clock>,
    exchanges: RwLock<FastMap<ShortStr, Arc<Exchange>>>,
    queues: RwLock<FastMap<ShortStr, Arc<Queue>>>,
    retained: crate::retained::Retained,
    metrics: Arc<crate::metrics::Metrics>,
    definitions: std::sync::OnceLock<Arc<dyn crate::Definitions>>,
    store: std::sync::OnceLock<Arc<dyn crate::MessageStore>>,
    max_loaded: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for VHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VHost").field("name", &self.name).finish()
    }
}

impl VHost {
    /// A vhost with the built-in exchanges.
    pub fn new(
        name: &str,
        clock: Arc<dyn Clock>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Arc<Self> {
        let exchanges = BUILTIN_EXCHANGES
            .iter()
            .map(|&(n, kind, internal)| {
                let name = ShortStr::from(n);
                let opts = ExchangeOptions {
                    durable: true,
                    internal,
                    ..Default::default()
                };
                (name.clone(), Arc::new(Exchange::new(name, kind, opts)))
            })
            .collect();
        Arc::new(Self {
            name: name.to_owned(),
            clock,
            exchanges: RwLock::new(exchanges),
            queues: RwLock::new(FastMap::default()),
            retained: Default::default(),
            metrics,
            definitions: std::sync::OnceLock::new(),
            store: std::sync::OnceLock::new(),
            max_loaded: std::sync::atomic::AtomicUsize::new(crate::persistence::DEFAULT_MAX_LOADED),
        })
    }

    /// The vhost's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Report durable definition changes to `d` from now on (once).
    pub fn set_definitions(&self, d: Arc<dyn crate::Definitions>) {
        let _ = self.definitions.set(d);
    }

    /// Keep persistent messages of durable queues in `store` (once; queues
    /// declared before keep theirs in memory only).
    pub fn set_store(&self, store: Arc<dyn crate::MessageStore>) {
        let _ = self.store.set(store);
    }

    /// Broker-wide counters.
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.metrics
    }

    /// The message store, if there is one.
    pub fn store(&self) -> Option<&Arc<dyn crate::MessageStore>> {
        self.store.get()
    }

    /// Ready messages a queue declared from now on keeps in memory before
    /// new stored ones are paged out.
    pub fn set_queue_max_loaded(&self, n: usize) {
        self.max_loaded
            .store(n.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    fn defs(&self) -> Option<&Arc<dyn crate::Definitions>> {
        self.definitions.get()
    }

    fn durable_destination(&self, d: &Destination) -> bool {
        match d {
            Destination::Queue(q) => q.durable() && q.exclusive_owner().is_none(),
            Destination::Exchange(name) => self.exchange(name).is_some_and(|e| e.options().durable),
        }
    }

    fn report_binding(&self, source: &Exchange, binding: &Binding, added: bool) {
        let Some(d) = self.defs() else { return };
        if !source.options().durable || !self.durable_destination(&binding.destination) {
            return;
        }
        if added {
            d.binding_added(&self.name, source.name(), binding);
        } else {
            d.binding_removed(&self.name, source.name(), binding);
        }
    }

    fn report_exchange_deleted(&self, ex: &Exchange) {
        if let (Some(d), true) = (self.defs(), ex.options().durable) {
            d.exchange_deleted(&self.name, ex.name());
        }
    }

    /// Retained messages (MQTT).
    pub fn retained(&self) -> &crate::retained::Retained {
        &self.retained
    }

    /// The clock this vhost reads.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    // ---- exchanges -------------------------------------------------------

    /// Look up an exchange.
    pub fn exchange(&self, name: &str) -> Option<Arc<Exchange>> {
        self.exchanges.read().get(name).cloned()
    }

    fn exchange_or_404(&self, name: &str) -> Result<Arc<Exchange>> {
        self.exchange(name)
            .ok_or_else(|| CoreError::no_exchange(&self.name, name))
    }

    /// Declare an exchange (RabbitMQ rules: `amq.*` is reserved for
    /// clients, a redeclaration must be equivalent).
    pub fn declare_exchange(
        &self,
        name: &str,
        kind: &str,
        options: ExchangeOptions,
        passive: bool,
    ) -> Result<Arc<Exchange>> {
        if passive {
            return self.exchange_or_404(name);
        }
        if name.is_empty() {
            return Err(CoreError::AccessRefused(
                "operation not permitted on the default exchange".into(),
            ));
        }
        let Some(kind) = ExchangeKind::parse(kind) else {
            return Err(CoreError::CommandInvalid(format!(
                "unknown exchange type '{kind}'"
            )));
        };
        if let Some(ae) = options.arguments.get("alternate-exchange") {
            if ae.as_str().is_none() {
                return Err(CoreError::Precondition(format!(
                    "invalid arg 'alternate-exchange' for exchange '{name}' in vhost '{}': not a string",
                    self.name
                )));
            }
        }
        let mut exchanges = self.exchanges.write();
        if let Some(existing) = exchanges.get(name) {
            let inequivalent = |arg: &str, got: String, cur: String| {
                CoreError::Precondition(format!(
                    "inequivalent arg '{arg}' for exchange '{name}' in vhost '{}': received '{got}' but current is '{cur}'",
                    self.name
                ))
            };
            let cur = existing.options();
            if existing.kind() != kind {
                return Err(inequivalent(
                    "type",
                    kind.as_str().into(),
                    existing.kind().as_str().into(),
                ));
            }
            if cur.durable != options.durable {
                return Err(inequivalent(
                    "durable",
                    options.durable.to_string(),
                    cur.durable.to_string(),
                ));
            }
            if cur.auto_delete != options.auto_delete {
                return Err(inequivalent(
                    "auto_delete",
                    options.auto_delete.to_string(),
                    cur.auto_delete.to_string(),
                ));
            }
            if cur.internal != options.internal {
                return Err(inequivalent(
                    "internal",
                    options.internal.to_string(),
                    cur.internal.to_string(),
                ));
            }
            let ae = |o: &ExchangeOptions| o.arguments.get("alternate-exchange").cloned();
            if ae(cur) != ae(&options) {
                return Err(inequivalent(
                    "alternate-exchange",
                    String::new(),
                    String::new(),
                ));
            }
            return Ok(existing.clone());
        }
        // Like RabbitMQ, the reserved prefix only stops *creating* an
        // exchange: redeclaring `amq.direct` as it is succeeds.
        if name.starts_with("amq.") {
            return Err(CoreError::AccessRefused(format!(
                "exchange name '{name}' contains reserved prefix 'amq.*'"
            )));
        }
        let ex = Arc::new(Exchange::new(ShortStr::from(name), kind, options));
        exchanges.insert(ex.name().clone(), ex.clone());
        drop(exchanges);
        if let (Some(d), true) = (self.defs(), ex.options().durable) {
            d.exchange_declared(&self.name, &ex);
        }
        Ok(ex)
    }

    /// Delete an exchange. A missing one is not an error (RabbitMQ 3.x).
    pub fn delete_exchange(&self, name: &str, if_unused: bool) -> Result<()> {
        if name.is_empty() || name.starts_with("amq.") {
            return Err(CoreError::AccessRefused(format!(
                "operation not permitted on the {} exchange",
                if name.is_empty() {
                    "default".to_owned()
                } else {
                    format!("'{name}'")
                }
            )));
        }
        let ex = {
            let mut exchanges = self.exchanges.write();
            let Some(ex) = exchanges.get(name) else {
                return Ok(());
            };
            if if_unused
                && (ex.binding_count() > 0 || self.has_bindings_to_exchange(&exchanges, name))
            {
                return Err(CoreError::Precondition(format!(
                    "exchange '{name}' in vhost '{}' in use",
                    self.name
                )));
            }
            exchanges.remove(name)
        };
        if let Some(ex) = ex {
            let dest = Destination::Exchange(ShortStr::from(name));
            self.remove_bindings_to(&dest);
            self.report_exchange_deleted(&ex);
        }
        Ok(())
    }

    fn has_bindings_to_exchange(
        &self,
        exchanges: &FastMap<ShortStr, Arc<Exchange>>,
        name: &str,
    ) -> bool {
        let dest = Destination::Exchange(ShortStr::from(name));
        exchanges
            .values()
            .any(|e| e.bindings().iter().any(|b| b.destination == dest))
    }

    /// Remove every binding leading to `dest`, then auto-delete exchanges
    /// left with no bindings.
    fn remove_bindings_to(&self, dest: &Destination) {
        let exchanges: Vec<Arc<Exchange>> = self.exchanges.read().values().cloned().collect();
        for ex in exchanges {
            if ex.unbind_destination(dest) > 0 {
                self.maybe_auto_delete_exchange(&ex);
            }
        }
    }

    fn maybe_auto_delete_exchange(&self, ex: &Exchange) {
        if ex.options().auto_delete && ex.binding_count() == 0 {
            let removed = self.exchanges.write().remove(&**ex.name());
            if removed.is_some() {
                self.remove_bindings_to(&Destination::Exchange(ex.name().clone()));
                self.report_exchange_deleted(ex);
            }
        }
    }

    // ---- queues ----------------------------------------------------------

    /// Look up a queue (no ownership check).
    pub fn queue(&self, name: &str) -> Option<Arc<Queue>> {
        self.queues.read().get(name).cloned()
    }

    /// Look up a queue for connection `conn`: 404 if missing, 405 if it is
    /// exclusive to another connection.
    pub fn queue_for(&self, name: &str, conn: u64) -> Result<Arc<Queue>> {
        let q = self
            .queue(name)
            .ok_or_else(|| CoreError::no_queue(&self.name, name))?;
        self.check_owner(&q, conn)?;
        Ok(q)
    }

    fn check_owner(&self, q: &Queue, conn: u64) -> Result<()> {
        match q.exclusive_owner() {
            Some(owner) if owner != conn => Err(CoreError::Locked {
                name: q.name().to_string(),
                vhost: self.name.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// Declare a queue. An empty name asks for a server-named one.
    pub fn declare_queue(
        self: &Arc<Self>,
        name: &str,
        options: QueueOptions,
        passive: bool,
        conn: u64,
    ) -> Result<Arc<Queue>> {
        if passive {
            let q = self.queue_for(name, conn)?;
            q.touch();
            return Ok(q);
        }
        let reserved = name.starts_with("amq.");
        let name = if name.is_empty() {
            generated_name("amq.gen-")
        } else {
            ShortStr::from(name)
        };
        let args = QueueArgs::parse(&options.arguments, &name, &self.name)?;
        // A new durable queue's store id is found (a metadata write) before
        // the vhost's lock is taken; the same name always gets the same id.
        let store = match self.store.get() {
            Some(s)
                if options.durable
                    && options.exclusive_owner.is_none()
                    && !reserved
                    && self.queue(&name).is_none() =>
            {
                s.queue_id(&self.name, &name).map(|id| QueueStore {
                    store: s.clone(),
                    id,
                })
            }
            _ => None,
        };
        let mut queues = self.queues.write();
        if let Some(q) = queues.get(&*name) {
            self.check_owner(q, conn)?;
            let inequivalent = |arg: &str,
                                got: &dyn std::fmt::Display,
                                cur: &dyn std::fmt::Display| {
                CoreError::Precondition(format!(
                    "inequivalent arg '{arg}' for queue '{name}' in vhost '{}': received '{got}' but current is '{cur}'",
                    self.name
                ))
            };
            if q.durable() != options.durable {
                return Err(inequivalent("durable", &options.durable, &q.durable()));
            }
            if q.auto_delete() != options.auto_delete {
                return Err(inequivalent(
                    "auto_delete",
                    &options.auto_delete,
                    &q.auto_delete(),
                ));
            }
            if q.exclusive_owner().is_some() != options.exclusive_owner.is_some() {
                // RabbitMQ reports a mismatched exclusive flag as 405.
                return Err(CoreError::Locked {
                    name: name.to_string(),
                    vhost: self.name.clone(),
                });
            }
            if q.args() != &args {
                let key = differing_arg(q.args(), &args);
                return Err(CoreError::Precondition(format!(
                    "inequivalent arg '{key}' for queue '{name}' in vhost '{}'",
                    self.name
                )));
            }
            q.touch();
            return Ok(q.clone());
        }
        if reserved {
            return Err(CoreError::AccessRefused(format!(
                "queue name '{name}' contains reserved prefix 'amq.*'"
            )));
        }
        let q = Arc::new(Queue::new(
            name.clone(),
            self,
            options,
            args,
            self.clock.clone(),
            store,
            self.max_loaded.load(std::sync::atomic::Ordering::Relaxed),
        ));
        queues.insert(name, q.clone());
        drop(queues);
        if let (Some(d), true) = (self.defs(), q.durable() && q.exclusive_owner().is_none()) {
            d.queue_declared(&self.name, &q);
        }
        Ok(q)
    }

    /// Create the hidden queue behind a channel's direct reply-to consumer.
    pub fn declare_reply_queue(self: &Arc<Self>, conn: u64) -> Arc<Queue> {
        let name = generated_name(REPLY_TO_PREFIX);
        let options = QueueOptions {
            exclusive_owner: Some(conn),
            auto_delete: true,
            ..Default::default()
        };
        let q = Arc::new(Queue::new(
            name.clone(),
            self,
            options,
            QueueArgs::default(),
            self.clock.clone(),
            None,
            usize::MAX,
        ));
        self.queues.write().insert(name, q.clone());
        q
    }

    /// Delete a queue on a client's request. A missing queue is not an
    /// error (RabbitMQ 3.x); returns the number of messages dropped.
    pub fn delete_queue(
        &self,
        name: &str,
        if_unused: bool,
        if_empty: bool,
        conn: u64,
    ) -> Result<u32> {
        let Some(q) = self.queue(name) else {
            return Ok(0);
        };
        self.check_owner(&q, conn)?;
        let (ready, consumers) = q.counts();
        if if_unused && consumers > 0 {
            return Err(CoreError::Precondition(format!(
                "queue '{name}' in vhost '{}' in use",
                self.name
            )));
        }
        if if_empty && ready > 0 {
            return Err(CoreError::Precondition(format!(
                "queue '{name}' in vhost '{}' is not empty",
                self.name
            )));
        }
        Ok(self.delete_queue_unchecked(name))
    }

    /// Delete a queue: detach and notify its consumers, drop its bindings.
    pub fn delete_queue_unchecked(&self, name: &str) -> u32 {
        let removed = self.queues.write().remove(name);
        removed.map_or(0, |q| self.finish_delete(q))
    }

    /// Delete `queue` if it is still the one registered under its name.
    pub fn delete_queue_if_same(&self, queue: &Arc<Queue>) -> u32 {
        let removed = {
            let mut queues = self.queues.write();
            match queues.get(&**queue.name()) {
                Some(q) if Arc::ptr_eq(q, queue) => queues.remove(&**queue.name()),
                _ => None,
            }
        };
        removed.map_or(0, |q| self.finish_delete(q))
    }

    /// A queue left the map: detach and notify its consumers, drop its bindings.
    fn finish_delete(&self, q: Arc<Queue>) -> u32 {
        if let (Some(d), true) = (self.defs(), q.durable() && q.exclusive_owner().is_none()) {
            d.queue_deleted(&self.name, q.name());
        }
        let (consumers, dropped) = q.mark_deleted();
        if let (Some(s), Some(id)) = (self.store.get(), q.store_id()) {
            s.queue_deleted(&self.name, q.name(), id);
        }
        for c in consumers {
            c.sink.cancelled(&c.tag);
        }
        self.remove_bindings_to(&Destination::Queue(q));
        dropped
    }

    /// The connection `conn` closed: its exclusive queues go.
    pub fn connection_closed(&self, conn: u64) {
        let owned: Vec<ShortStr> = self
            .queues
            .read()
            .values()
            .filter(|q| q.exclusive_owner() == Some(conn))
            .map(|q| q.name().clone())
            .collect();
        for name in owned {
            self.delete_queue_unchecked(&name);
        }
    }

    /// All queues, hidden reply-to queues excluded, sorted by name.
    pub fn queues(&self) -> Vec<Arc<Queue>> {
        let mut v: Vec<Arc<Queue>> = self
            .queues
            .read()
            .values()
            .filter(|q| !q.name().starts_with(REPLY_TO_PREFIX))
            .cloned()
            .collect();
        v.sort_by(|a, b| a.name().cmp(b.name()));
        v
    }

    /// All exchanges, sorted by name.
    pub fn exchanges(&self) -> Vec<Arc<Exchange>> {
        let mut v: Vec<Arc<Exchange>> = self.exchanges.read().values().cloned().collect();
        v.sort_by(|a, b| a.name().cmp(b.name()));
        v
    }

    /// All bindings as (source exchange, binding), including the default
    /// exchange's implicit binding of every queue under its own name.
    pub fn bindings(&self) -> Vec<(ShortStr, Binding)> {
        let mut out: Vec<(ShortStr, Binding)> = self
            .queues()
            .into_iter()
            .map(|q| {
                let b = Binding {
                    routing_key: q.name().clone(),
                    destination: Destination::Queue(q),
                    arguments: FieldTable::default(),
                };
                (ShortStr::from(""), b)
            })
            .collect();
        for ex in self.exchanges() {
            for b in ex.bindings() {
                out.push((ex.name().clone(), b));
            }
        }
        out
    }

    // ---- bindings --------------------------------------------------------

    /// Bind a queue to an exchange.
    pub fn bind_queue(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: FieldTable,
        conn: u64,
    ) -> Result<()> {
        let (ex, q) = self.binding_ends(queue, exchange, conn)?;
        validate_binding_args(&ex, &arguments)?;
        let b = Binding {
            destination: Destination::Queue(q),
            routing_key: ShortStr::from(routing_key),
            arguments,
        };
        if ex.bind(b.clone()) {
            self.report_binding(&ex, &b, true);
        }
        Ok(())
    }

    /// Unbind a queue from an exchange; a missing binding is not an error.
    pub fn unbind_queue(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: FieldTable,
        conn: u64,
    ) -> Result<()> {
        let (ex, q) = self.binding_ends(queue, exchange, conn)?;
        let b = Binding {
            destination: Destination::Queue(q),
            routing_key: ShortStr::from(routing_key),
            arguments,
        };
        if ex.unbind(&b) {
            self.report_binding(&ex, &b, false);
            self.maybe_auto_delete_exchange(&ex);
        }
        Ok(())
    }

    fn binding_ends(
        &self,
        queue: &str,
        exchange: &str,
        conn: u64,
    ) -> Result<(Arc<Exchange>, Arc<Queue>)> {
        if exchange.is_empty() {
            return Err(CoreError::AccessRefused(
                "operation not permitted on the default exchange".into(),
            ));
        }
        let q = self.queue_for(queue, conn)?;
        let ex = self.exchange_or_404(exchange)?;
        Ok((ex, q))
    }

    /// Bind exchange `destination` to exchange `source`.
    pub fn bind_exchange(
        &self,
        destination: &str,
        source: &str,
        routing_key: &str,
        arguments: FieldTable,
    ) -> Result<()> {
        let (src, _dst) = self.exchange_ends(destination, source)?;
        validate_binding_args(&src, &arguments)?;
        let b = Binding {
            destination: Destination::Exchange(ShortStr::from(destination)),
            routing_key: ShortStr::from(routing_key),
            arguments,
        };
        if src.bind(b.clone()) {
            self.report_binding(&src, &b, true);
        }
        Ok(())
    }

    /// Remove an exchange-to-exchange binding.
    pub fn unbind_exchange(
        &self,
        destination: &str,
        source: &str,
        routing_key: &str,
        arguments: FieldTable,
    ) -> Result<()> {
        let (src, _dst) = self.exchange_ends(destination, source)?;
        let b = Binding {
            destination: Destination::Exchange(ShortStr::from(destination)),
            routing_key: ShortStr::from(routing_key),
            arguments,
        };
        if src.unbind(&b) {
            self.report_binding(&src, &b, false);
            self.maybe_auto_delete_exchange(&src);
        }
        Ok(())
    }

    fn exchange_ends(
        &self,
        destination: &str,
        source: &str,
    ) -> Result<(Arc<Exchange>, Arc<Exchange>)> {
        if destination.is_empty() || source.is_empty() {
            return Err(CoreError::AccessRefused(
                "operation not permitted on the default exchange".into(),
            ));
        }
        let dst = self.exchange_or_404(destination)?;
        let src = self.exchange_or_404(source)?;
        Ok((src, dst))
    }

    // ---- routing ---------------------------------------------------------

    /// Route a message from `exchange` to queues, following
    /// exchange-to-exchange bindings and alternate exchanges.
    pub fn route(&self, exchange: &str, message: &Message) -> Result<Routed> {
        let mut routed = Routed::new();
        if exchange.is_empty() {
            if let Some(q) = self.queue(&message.routing_key) {
                routed.push(q);
            }
            return Ok(routed);
        }
        let ex = self.exchange_or_404(exchange)?;
        let mut visited: SmallVec<[ShortStr; 4]> = SmallVec::new();
        self.route_from(&ex, message, &mut routed, &mut visited);
        Ok(routed)
    }

    fn route_from(
        &self,
        ex: &Exchange,
        message: &Message,
        routed: &mut Routed,
        visited: &mut SmallVec<[ShortStr; 4]>,
    ) {
        if visited.contains(ex.name()) {
            return;
        }
        visited.push(ex.name().clone());
        let before = routed.len();
        let mut next: SmallVec<[ShortStr; 2]> = SmallVec::new();
        ex.route(message, |d| match d {
            Destination::Queue(q) => {
                if !routed.iter().any(|r| Arc::ptr_eq(r, q)) {
                    routed.push(q.clone());
                }
            }
            Destination::Exchange(name) => next.push(name.clone()),
        });
        let mut reached_exchange = false;
        for name in next {
            if let Some(e) = self.exchange(&name) {
                reached_exchange = true;
                self.route_from(&e, message, routed, visited);
            }
        }
        // The alternate exchange takes what this exchange could not route.
        if routed.len() == before && !reached_exchange {
            if let Some(ae) = ex.alternate().and_then(|n| self.exchange(n)) {
                self.route_from(&ae, message, routed, visited);
            }
        }
    }

    /// Route and enqueue a message.
    pub fn publish(&self, exchange: &str, message: Arc<Message>) -> Result<PublishOutcome> {
        if let Some(ex) = (!exchange.is_empty())
            .then(|| self.exchange(exchange))
            .flatten()
        {
            if ex.options().internal {
                return Err(CoreError::AccessRefused(format!(
                    "cannot publish to internal exchange '{exchange}' in vhost '{}'",
                    self.name
                )));
            }
        }
        let routed = self.route(exchange, &message)?;
        crate::metrics::Metrics::add(&self.metrics.messages_received, 1);
        if routed.is_empty() {
            crate::metrics::Metrics::add(&self.metrics.messages_unroutable, 1);
        }
        Ok(self.enqueue_all(&routed, message))
    }

    /// Enqueue an already routed message.
    ///
    /// A persistent message that reached durable queues is stored once,
    /// for all of them, before any queue sees it; its store position comes
    /// back in [`PublishOutcome::lsn`]. If the store refuses it, no queue
    /// gets it and the outcome says so (the publisher gets a nack).
    pub fn enqueue_all(&self, routed: &Routed, message: Arc<Message>) -> PublishOutcome {
        let mut outcome = PublishOutcome {
            routed: routed.len(),
            ..Default::default()
        };
        let mut stored = None;
        if let (Some(store), true) = (self.store.get(), message.is_persistent()) {
            let ids: SmallVec<[u32; 4]> = routed.iter().filter_map(|q| q.store_id()).collect();
            if !ids.is_empty() {
                let record = crate::persistence::encode_record(
                    &message,
                    crate::persistence::unix_millis_now(),
                );
                match store.append(&ids, record) {
                    Ok(s) => {
                        stored = Some(s.id);
                        outcome.lsn = s.lsn;
                    }
                    Err(e) => {
                        tracing::error!(message = "Persistent message refused by the store.", error = %e);
                        outcome.rejected = true;
                        outcome.store_failed = true;
                        outcome.routed = 0;
                        return outcome;
                    }
                }
            }
        }
        for q in routed {
            match q.enqueue(message.clone(), stored) {
                Enqueued::Rejected => outcome.rejected = true,
                Enqueued::Congested => outcome.congested.0.push(q.clone()),
                Enqueued::Accepted | Enqueued::Dropped => {}
            }
        }
        outcome
    }

    /// Republish a message dead-lettered by `queue` to `dlx`, with an
    /// `x-death` record as RabbitMQ writes it.
    pub(crate) fn dead_letter(
        &self,
        queue: &Queue,
        dlx: &str,
        dlrk: Option<&ShortStr>,
        message: &Message,
        reason: DeathReason,
    ) {
        let mut properties = message.properties.clone();
        // A message's own TTL does not follow it to the dead-letter queue.
        properties.expiration = None;
        let headers = properties.headers.get_or_insert_with(FieldTable::default);
        record_death(headers, queue, message, reason);
        let routing_key = dlrk.cloned().unwrap_or_else(|| message.routing_key.clone());
        let dead = Message::with_properties(
            ShortStr::from(dlx),
            routing_key,
            properties,
            message.body.clone(),
        );
        let Ok(mut routed) = self.route(dlx, &dead) else {
            return; // a missing dead-letter exchange drops the message, as RabbitMQ
        };
        // Break automatic cycles (expiry or overflow back into the same queue).
        if reason != DeathReason::Rejected {
            routed.retain(|q| q.name() != queue.name());
        }
        self.enqueue_all(&routed, Arc::new(dead));
    }

    /// Periodic work: message expiry at queue heads and `x-expires`.
    pub fn tick(&self) {
        let queues: Vec<Arc<Queue>> = self.queues.read().values().cloned().collect();
        for q in queues {
            if q.tick() {
                self.delete_queue_unchecked(q.name());
            }
        }
    }
}

fn validate_binding_args(ex: &Exchange, arguments: &FieldTable) -> Result<()> {
    if ex.kind() == ExchangeKind::Headers {
        if let Some(m) = arguments.get("x-match") {
            let ok = matches!(
                m.as_str(),
                Some("all" | "any" | "all-with-x" | "any-with-x")
            );
            if !ok {
                return Err(CoreError::Precondition(
                    "Invalid x-match field value; expected all, any, all-with-x, or any-with-x"
                        .into(),
                ));
            }
        }
    }
    Ok(())
}

fn differing_arg(a: &QueueArgs, b: &QueueArgs) -> &'static str {
    if a.message_ttl != b.message_ttl {
        "x-message-ttl"
    } else if a.expires != b.expires {
        "x-expires"
    } else if a.max_length != b.max_length {
        "x-max-length"
    } else if a.max_length_bytes != b.max_length_bytes {
        "x-max-length-bytes"
    } else if a.overflow != b.overflow {
        "x-overflow"
    } else if a.dead_letter_exchange != b.dead_letter_exchange {
        "x-dead-letter-exchange"
    } else if a.max_priority != b.max_priority {
        "x-max-priority"
    } else {
        "x-dead-letter-routing-key"
    }
}

/// A server-generated name: prefix plus 22 url-safe random characters, as
/// RabbitMQ's `amq.gen-...`.
pub fn generated_name(prefix: &str) -> ShortStr {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut rng = rand::rng();
    let mut s = String::with_capacity(prefix.len() + 22);
    s.push_str(prefix);
    for _ in 0..22 {
        s.push(ALPHABET[rng.random_range(0..ALPHABET.len())] as char);
    }
    ShortStr::from(s)
}

fn long_str(s: &str) -> FieldValue {
    FieldValue::LongString(Bytes::copy_from_slice(s.as_bytes()))
}

/// Update the `x-death` header: one table per (queue, reason), newest
/// first, with a count; plus `x-first-death-*` and `x-last-death-*`.
fn record_death(headers: &mut FieldTable, queue: &Queue, message: &Message, reason: DeathReason) {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut deaths = match headers.get("x-death") {
        Some(FieldValue::Array(a)) => a.clone(),
        _ => Vec::new(),
    };
    let same = |v: &FieldValue| match v {
        FieldValue::Table(t) => {
            t.get("queue").and_then(FieldValue::as_str) == Some(&**queue.name())
                && t.get("reason").and_then(FieldValue::as_str) == Some(reason.as_str())
        }
        _ => false,
    };
    let mut entry = match deaths.iter().position(same) {
        Some(i) => match deaths.remove(i) {
            FieldValue::Table(t) => t,
            _ => FieldTable::default(),
        },
        None => {
            let mut t = FieldTable::default();
            t.insert(ShortStr::from("count"), FieldValue::I64(0));
            t.insert(ShortStr::from("reason"), long_str(reason.as_str()));
            t.insert(ShortStr::from("queue"), long_str(queue.name()));
            t.insert(ShortStr::from("exchange"), long_str(&message.exchange));
            t.insert(
                ShortStr::from("routing-keys"),
                FieldValue::Array(vec![long_str(&message.routing_key)]),
            );
            t
        }
    };
    let count = entry.get("count").and_then(FieldValue::as_i64).unwrap_or(0) + 1;
    entry.insert(ShortStr::from("count"), FieldValue::I64(count));
    entry.insert(ShortStr::from("time"), FieldValue::Timestamp(now));
    if let Some(e) = &message.properties.expiration {
        entry.insert(ShortStr::from("original-expiration"), long_str(e));
    }
    deaths.insert(0, FieldValue::Table(entry));
    headers.insert(ShortStr::from("x-death"), FieldValue::Array(deaths));
    if headers.get("x-first-death-reason").is_none() {
        headers.insert(
            ShortStr::from("x-first-death-reason"),
            long_str(reason.as_str()),
        );
        headers.insert(
            ShortStr::from("x-first-death-queue"),
            long_str(queue.name()),
        );
        headers.insert(
            ShortStr::from("x-first-death-exchange"),
            long_str(&message.exchange),
        );
    }
    headers.insert(
        ShortStr::from("x-last-death-reason"),
        long_str(reason.as_str()),
    );
    headers.insert(ShortStr::from("x-last-death-queue"), long_str(queue.name()));
    headers.insert(
        ShortStr::from("x-last-death-exchange"),
        long_str(&message.exchange),
    );
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use parking_lot::Mutex;

    use super::*;
    use crate::message::ManualClock;
    use crate::queue::{Consumer, ConsumerSink, Returned};
    use crate::Delivery;

    /// A consumer with a prefetch limit that records what it gets.
    #[derive(Default)]
    struct Sink {
        prefetch: u32,
        in_flight: AtomicU32,
        got: Mutex<Vec<Delivery>>,
        cancelled: AtomicU32,
    }

    impl ConsumerSink for Sink {
        fn try_reserve(&self) -> bool {
            if self.prefetch > 0 && self.in_flight.load(Ordering::SeqCst) >= self.prefetch {
                return false;
            }
            self.in_flight.fetch_add(1, Ordering::SeqCst);
            true
        }
        fn deliver(&self, d: Delivery) {
            self.got.lock().push(d);
        }
        fn cancelled(&self, _tag: &ShortStr) {
            self.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl Sink {
        fn bodies(&self) -> Vec<String> {
            self.got
                .lock()
                .iter()
                .map(|d| String::from_utf8_lossy(&d.message.body).into_owned())
                .collect()
        }
        fn ack_all(&self) {
            let got: Vec<Delivery> = self.got.lock().drain(..).collect();
            for d in &got {
                self.in_flight.fetch_sub(1, Ordering::SeqCst);
                d.ack();
            }
            if let Some(d) = got.first() {
                d.queue.kick();
            }
        }
    }

    fn msg(rk: &str, body: &str) -> Arc<Message> {
        Arc::new(Message::with_properties(
            ShortStr::from(""),
            ShortStr::from(rk),
            liebre_amqp_codec::BasicProperties::default(),
            Bytes::copy_from_slice(body.as_bytes()),
        ))
    }

    fn setup() -> (Arc<ManualClock>, Arc<VHost>) {
        let clock = Arc::new(ManualClock::default());
        let v = VHost::new("/", clock.clone(), Default::default());
        (clock, v)
    }

    fn consume(q: &Arc<Queue>, id: u64, sink: Arc<Sink>) {
        q.add_consumer(Consumer {
            id,
            tag: ShortStr::from(format!("c{id}")),
            no_ack: false,
            exclusive: false,
            priority: 0,
            sink,
        })
        .unwrap();
    }

    #[test]
    fn prefetch_one_dispatches_fairly() {
        let (_, v) = setup();
        let q = v
            .declare_queue("task_queue", QueueOptions::default(), false, 1)
            .unwrap();
        let a = Arc::new(Sink {
            prefetch: 1,
            ..Default::default()
        });
        let b = Arc::new(Sink {
            prefetch: 1,
            ..Default::default()
        });
        consume(&q, 1, a.clone());
        consume(&q, 2, b.clone());
        for i in 0..4 {
            v.publish("", msg("task_queue", &i.to_string())).unwrap();
        }
        assert_eq!(a.bodies(), ["0"]);
        assert_eq!(b.bodies(), ["1"]);
        assert_eq!(q.stats().messages_ready, 2);
        assert_eq!(q.stats().messages_unacknowledged, 2);
        // b is fast: it acks and gets the next one while a is still busy.
        b.ack_all();
        assert_eq!(b.bodies(), ["2"]);
        assert_eq!(a.bodies(), ["0"]);
    }

    #[test]
    fn requeue_restores_order_and_marks_redelivered() {
        let (_, v) = setup();
        let q = v
            .declare_queue("q", QueueOptions::default(), false, 1)
            .unwrap();
        for i in 0..3 {
            v.publish("", msg("q", &i.to_string())).unwrap();
        }
        let first = q.get(false).unwrap();
        let second = q.get(false).unwrap();
        // Returned out of order: they still go back in queue order.
        q.requeue(vec![
            Returned {
                message: second.message.clone(),
                seq: second.seq,
                expires_at: None,
                stored: None,
            },
            Returned {
                message: first.message.clone(),
                seq: first.seq,
                expires_at: None,
                stored: None,
            },
        ]);
        let order: Vec<(String, bool)> = std::iter::from_fn(|| q.get(true))
            .map(|g| {
                (
                    String::from_utf8_lossy(&g.message.body).into_owned(),
                    g.redelivered,
                )
            })
            .collect();
        assert_eq!(
            order,
            [("0".into(), true), ("1".into(), true), ("2".into(), false)]
        );
    }

    #[test]
    fn ttl_expires_into_dead_letter_queue() {
        let (clock, v) = setup();
        v.declare_exchange("dlx", "fanout", ExchangeOptions::default(), false)
            .unwrap();
        let dlq = v
            .declare_queue("dlq", QueueOptions::default(), false, 1)
            .unwrap();
        v.bind_queue("dlq", "dlx", "", FieldTable::default(), 1)
            .unwrap();
        let mut args = FieldTable::default();
        args.insert(ShortStr::from("x-message-ttl"), FieldValue::I32(100));
        args.insert(ShortStr::from("x-dead-letter-exchange"), long_str("dlx"));
        let opts = QueueOptions {
            arguments: args,
            ..Default::default()
        };
        let q = v.declare_queue("work", opts, false, 1).unwrap();
        v.publish("", msg("work", "late")).unwrap();
        clock.advance(Duration::from_millis(99));
        v.tick();
        assert_eq!(q.stats().messages_ready, 1);
        clock.advance(Duration::from_millis(1));
        v.tick();
        assert_eq!(q.stats().messages_ready, 0);
        let dead = dlq.get(true).expect("dead-lettered");
        let headers = dead.message.properties.headers.as_ref().unwrap();
        let Some(FieldValue::Array(deaths)) = headers.get("x-death") else {
            panic!("no x-death: {headers:?}");
        };
        let Some(FieldValue::Table(d)) = deaths.first() else {
            panic!("bad x-death")
        };
        assert_eq!(
            d.get("reason").and_then(FieldValue::as_str),
            Some("expired")
        );
        assert_eq!(d.get("queue").and_then(FieldValue::as_str), Some("work"));
        assert_eq!(d.get("count").and_then(FieldValue::as_i64), Some(1));
    }

    #[test]
    fn max_length_drops_head_or_rejects() {
        let (_, v) = setup();
        let mut args = FieldTable::default();
        args.insert(ShortStr::from("x-max-length"), FieldValue::I32(2));
        let q = v
            .declare_queue(
                "short",
                QueueOptions {
                    arguments: args.clone(),
                    ..Default::default()
                },
                false,
                1,
            )
            .unwrap();
        for i in 0..3 {
            assert!(
                !v.publish("", msg("short", &i.to_string()))
                    .unwrap()
                    .rejected
            );
        }
        assert_eq!(
            String::from_utf8_lossy(&q.get(true).unwrap().message.body),
            "1"
        );
        args.insert(ShortStr::from("x-overflow"), long_str("reject-publish"));
        v.declare_queue(
            "strict",
            QueueOptions {
                arguments: args,
                ..Default::default()
            },
            false,
            1,
        )
        .unwrap();
        assert!(!v.publish("", msg("strict", "a")).unwrap().rejected);
        assert!(!v.publish("", msg("strict", "b")).unwrap().rejected);
        assert!(v.publish("", msg("strict", "c")).unwrap().rejected);
    }

    #[test]
    fn declarations_follow_rabbitmq_rules() {
        let (_, v) = setup();
        let err = v
            .declare_exchange("amq.custom", "direct", ExchangeOptions::default(), false)
            .unwrap_err();
        assert_eq!(err.reply_code(), 403);
        let err = v
            .declare_queue("missing", QueueOptions::default(), true, 1)
            .unwrap_err();
        assert_eq!(err.reply_code(), 404);
        v.declare_queue(
            "d",
            QueueOptions {
                durable: true,
                ..Default::default()
            },
            false,
            1,
        )
        .unwrap();
        let err = v
            .declare_queue("d", QueueOptions::default(), false, 1)
            .unwrap_err();
        assert_eq!(err.reply_code(), 406);
        let excl = QueueOptions {
            exclusive_owner: Some(7),
            ..Default::default()
        };
        v.declare_queue("mine", excl, false, 7).unwrap();
        assert_eq!(v.queue_for("mine", 8).unwrap_err().reply_code(), 405);
        v.connection_closed(7);
        assert!(v.queue("mine").is_none());
        let named = v
            .declare_queue("", QueueOptions::default(), false, 1)
            .unwrap();
        assert!(named.name().starts_with("amq.gen-"), "{}", named.name());
        let mut bad = FieldTable::default();
        bad.insert(
            ShortStr::from("x-single-active-consumer"),
            FieldValue::Bool(true),
        );
        let err = v
            .declare_queue(
                "prio",
                QueueOptions {
                    arguments: bad,
                    ..Default::default()
                },
                false,
                1,
            )
            .unwrap_err();
        assert_eq!(err.reply_code(), 406);
        assert!(err.to_string().contains("not supported"), "{err}");
    }

    #[test]
    fn deleting_a_queue_cancels_consumers_and_auto_delete_follows_last_consumer() {
        let (_, v) = setup();
        let q = v
            .declare_queue("gone", QueueOptions::default(), false, 1)
            .unwrap();
        let s = Arc::new(Sink::default());
        consume(&q, 1, s.clone());
        assert_eq!(v.delete_queue("gone", false, false, 1).unwrap(), 0);
        assert_eq!(s.cancelled.load(Ordering::SeqCst), 1);

        let ad = v
            .declare_queue(
                "ad",
                QueueOptions {
                    auto_delete: true,
                    ..Default::default()
                },
                false,
                1,
            )
            .unwrap();
        consume(&ad, 2, Arc::new(Sink::default()));
        consume(&ad, 3, Arc::new(Sink::default()));
        ad.remove_consumer(2);
        assert!(v.queue("ad").is_some());
        ad.remove_consumer(3);
        assert!(v.queue("ad").is_none());
    }

    #[test]
    fn exchange_to_exchange_and_alternate_exchange() {
        let (_, v) = setup();
        let mut args = FieldTable::default();
        args.insert(ShortStr::from("alternate-exchange"), long_str("unrouted"));
        v.declare_exchange(
            "main",
            "direct",
            ExchangeOptions {
                arguments: args,
                ..Default::default()
            },
            false,
        )
        .unwrap();
        v.declare_exchange("unrouted", "fanout", ExchangeOptions::default(), false)
            .unwrap();
        v.declare_exchange("mirror", "topic", ExchangeOptions::default(), false)
            .unwrap();
        v.declare_queue("lost", QueueOptions::default(), false, 1)
            .unwrap();
        v.declare_queue("audit", QueueOptions::default(), false, 1)
            .unwrap();
        v.declare_queue("orders", QueueOptions::default(), false, 1)
            .unwrap();
        v.bind_queue("lost", "unrouted", "", FieldTable::default(), 1)
            .unwrap();
        v.bind_queue("orders", "main", "order", FieldTable::default(), 1)
            .unwrap();
        v.bind_exchange("mirror", "main", "order", FieldTable::default())
            .unwrap();
        v.bind_queue("audit", "mirror", "#", FieldTable::default(), 1)
            .unwrap();
        let routed = |rk: &str| -> Vec<String> {
            let mut r: Vec<String> = v
                .route("main", &msg(rk, "x"))
                .unwrap()
                .iter()
                .map(|q| q.name().to_string())
                .collect();
            r.sort();
            r
        };
        assert_eq!(routed("order"), ["audit", "orders"]);
        assert_eq!(routed("other"), ["lost"]);
        // A cycle of exchange bindings terminates.
        v.bind_exchange("main", "mirror", "#", FieldTable::default())
            .unwrap();
        assert_eq!(routed("order"), ["audit", "orders"]);
    }

    #[test]
    fn priority_queue_serves_highest_first_and_requeues_in_place() {
        let (_, v) = setup();
        let mut args = FieldTable::default();
        args.insert(ShortStr::from("x-max-priority"), FieldValue::I32(5));
        let q = v
            .declare_queue(
                "prio",
                QueueOptions {
                    arguments: args,
                    ..Default::default()
                },
                false,
                1,
            )
            .unwrap();
        for (body, prio) in [
            ("low", Some(1)),
            ("none", None),
            ("high", Some(5)),
            ("over", Some(200)),
            ("low2", Some(1)),
        ] {
            let props = liebre_amqp_codec::BasicProperties {
                priority: prio,
                ..Default::default()
            };
            let m = Message::with_properties(
                ShortStr::from(""),
                ShortStr::from("prio"),
                props,
                Bytes::from(body),
            );
            v.publish("", Arc::new(m)).unwrap();
        }
        let high = q.get(false).unwrap();
        assert_eq!(&high.message.body[..], b"high");
        q.requeue(vec![Returned {
            message: high.message,
            seq: high.seq,
            expires_at: None,
            stored: None,
        }]);
        let order: Vec<String> = std::iter::from_fn(|| q.get(true))
            .map(|g| String::from_utf8_lossy(&g.message.body).into_owned())
            .collect();
        assert_eq!(order, ["high", "over", "low", "low2", "none"]);
    }

    #[test]
    fn higher_priority_consumers_are_served_first_while_they_have_credit() {
        let (_, v) = setup();
        let q = v
            .declare_queue("cp", QueueOptions::default(), false, 1)
            .unwrap();
        let low = Arc::new(Sink {
            prefetch: 5,
            ..Default::default()
        });
        let high = Arc::new(Sink {
            prefetch: 2,
            ..Default::default()
        });
        for (id, prio, sink) in [(1, 1, low.clone()), (2, 10, high.clone())] {
            q.add_consumer(Consumer {
                id,
                tag: ShortStr::from(format!("c{id}")),
                no_ack: false,
                exclusive: false,
                priority: prio,
                sink,
            })
            .unwrap();
        }
        for i in 0..4 {
            v.publish("", msg("cp", &i.to_string())).unwrap();
        }
        assert_eq!(high.bodies(), ["0", "1"]);
        assert_eq!(low.bodies(), ["2", "3"]);
    }
}
