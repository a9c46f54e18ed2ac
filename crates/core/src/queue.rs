//! Queues: ready messages, unacknowledged count, consumers with credit.
//!
//! Each queue has its own lock and no global lock is taken on the message
//! path: a publisher's task enqueues and dispatches directly, and a
//! consumer's task acknowledges and dispatches directly. Deliveries are
//! handed to a [`ConsumerSink`] while the queue lock is held; sinks must not
//! call back into a queue from `deliver` (lock order: queue, then sink; see
//! docs/lock-order.md).
//!
//! Dead-lettered messages are collected under the lock and republished
//! after it is released, so a dead-letter cycle back into the same queue
//! cannot deadlock.

use std::collections::VecDeque;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use liebre_amqp_codec::{FieldTable, FieldValue, ShortStr};
use parking_lot::Mutex;

use crate::error::{CoreError, Result};
use crate::flow::{FlowLimits, FlowState, Overflow as FlowOverflow};
use crate::message::{Clock, Delivery, Message};
use crate::metrics::Metrics;
use crate::persistence::{QueueStore, Recovered};
use crate::vhost::VHost;

/// Receives deliveries for one consumer. Implemented by protocol front ends.
pub trait ConsumerSink: Send + Sync {
    /// Reserve credit for one delivery (prefetch, output backlog). Returns
    /// false if the consumer cannot take one now; the sink must arrange for
    /// [`Queue::kick`] to be called when it can again.
    fn try_reserve(&self) -> bool;
    /// Hand over a delivery for which credit was reserved. Called with the
    /// queue lock held: must not block or call into a queue.
    fn deliver(&self, delivery: Delivery);
    /// The queue went away (deleted); the consumer is cancelled by the
    /// server (AMQP `basic.cancel` to clients that asked for it).
    fn cancelled(&self, consumer_tag: &ShortStr);
}

/// A consumer attached to a queue.
#[derive(Clone)]
pub struct Consumer {
    /// Broker-wide unique id, used to detach it.
    pub id: u64,
    /// Its tag, as the client knows it.
    pub tag: ShortStr,
    /// Messages are settled on delivery (no acknowledgement expected).
    pub no_ack: bool,
    /// It asked to be the queue's only consumer.
    pub exclusive: bool,
    /// Consumer priority (`x-priority`): higher ones are served first
    /// while they have credit; equal ones take turns.
    pub priority: i32,
    /// Where deliveries go.
    pub sink: Arc<dyn ConsumerSink>,
}

/// What happens when a queue with a length limit is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// Drop (or dead-letter) the oldest message.
    #[default]
    DropHead,
    /// Refuse the new message (publisher gets a nack).
    RejectPublish,
    /// Refuse the new message and dead-letter it.
    RejectPublishDlx,
}

/// The queue arguments Liebre understands, validated.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueArgs {
    /// `x-message-ttl`.
    pub message_ttl: Option<Duration>,
    /// `x-expires`: delete the queue after this long unused.
    pub expires: Option<Duration>,
    /// `x-max-length`.
    pub max_length: Option<u64>,
    /// `x-max-length-bytes`.
    pub max_length_bytes: Option<u64>,
    /// `x-overflow`.
    pub overflow: Overflow,
    /// `x-dead-letter-exchange`.
    pub dead_letter_exchange: Option<ShortStr>,
    /// `x-dead-letter-routing-key`.
    pub dead_letter_routing_key: Option<ShortStr>,
    /// `x-max-priority`: message priorities 0..=this are honoured.
    pub max_priority: Option<u8>,
}

impl QueueArgs {
    /// Validate arguments as RabbitMQ does. Arguments of features Liebre
    /// does not have are refused with 406 rather than silently ignored;
    /// unknown arguments are ignored, as RabbitMQ ignores them.
    pub fn parse(args: &FieldTable, queue: &str, vhost: &str) -> Result<Self> {
        let bad = |key: &str, why: &str| {
            CoreError::Precondition(format!(
                "invalid arg '{key}' for queue '{queue}' in vhost '{vhost}': {why}"
            ))
        };
        let non_neg = |key: &str, v: &FieldValue| -> Result<u64> {
            match v.as_i64() {
                Some(n) if n >= 0 => Ok(n as u64),
                Some(n) => Err(bad(key, &format!("{{value_negative,{n}}}"))),
                None => Err(bad(key, "{unacceptable_type,not an integer}")),
            }
        };
        let string = |key: &str, v: &FieldValue| -> Result<ShortStr> {
            v.as_str()
                .map(ShortStr::from)
                .ok_or_else(|| bad(key, "{unacceptable_type,not a string}"))
        };
        let mut out = Self::default();
        for (key, value) in args.iter() {
            match &**key {
                "x-message-ttl" => {
                    out.message_ttl = Some(Duration::from_millis(non_neg(key, value)?))
                }
                "x-expires" => match non_neg(key, value)? {
                    0 => return Err(bad(key, "{value_zero,0}")),
                    n => out.expires = Some(Duration::from_millis(n)),
                },
                "x-max-length" => out.max_length = Some(non_neg(key, value)?),
                "x-max-length-bytes" => out.max_length_bytes = Some(non_neg(key, value)?),
                "x-overflow" => {
                    out.overflow = match &*string(key, value)? {
                        "drop-head" => Overflow::DropHead,
                        "reject-publish" => Overflow::RejectPublish,
                        "reject-publish-dlx" => Overflow::RejectPublishDlx,
                        other => return Err(bad(key, &format!("{{unacceptable_value,{other}}}"))),
                    }
                }
                "x-dead-letter-exchange" => out.dead_letter_exchange = Some(string(key, value)?),
                "x-dead-letter-routing-key" => {
                    out.dead_letter_routing_key = Some(string(key, value)?)
                }
                "x-queue-type" => match &*string(key, value)? {
                    "classic" => {}
                    other => {
                        return Err(bad(
                            key,
                            &format!(
                            "queue type '{other}' is not supported by Liebre yet; use 'classic'"
                        ),
                        ))
                    }
                },
                // Classic queues v2 ignore the mode; accepted for compatibility.
                "x-queue-mode" | "x-queue-version" => {}
                "x-max-priority" => match non_neg(key, value)? {
                    n @ 0..=255 => out.max_priority = Some(n as u8),
                    n => return Err(bad(key, &format!("{{value_too_large,{n}}}"))),
                },
                "x-single-active-consumer"
                | "x-dead-letter-strategy"
                | "x-queue-leader-locator"
                | "x-stream-max-segment-size-bytes"
                | "x-max-age" => {
                    return Err(bad(key, "not supported by Liebre yet"));
                }
                _ => {}
            }
        }
        if out.dead_letter_routing_key.is_some() && out.dead_letter_exchange.is_none() {
            return Err(bad(
                "x-dead-letter-routing-key",
                "Key x-dead-letter-exchange should be specified",
            ));
        }
        Ok(out)
    }
}

/// The consumer to offer the next message to: the first group of equal
/// priority (highest first) in which someone has credit, taking turns
/// within the group from `turn`.
fn pick_consumer(consumers: &[Consumer], turn: usize) -> Option<usize> {
    let mut start = 0;
    while start < consumers.len() {
        let prio = consumers[start].priority;
        let len = consumers[start..]
            .iter()
            .take_while(|c| c.priority == prio)
            .count();
        let found = (0..len)
            .map(|i| start + (turn + i) % len)
            .find(|&i| consumers[i].sink.try_reserve());
        if found.is_some() {
            return found;
        }
        start += len;
    }
    None
}

/// Snapshot of a queue's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Messages ready for delivery.
    pub messages_ready: u64,
    /// Messages delivered and not yet acknowledged.
    pub messages_unacknowledged: u64,
    /// Bytes of ready message bodies.
    pub message_bytes_ready: u64,
    /// Attached consumers.
    pub consumers: u32,
    /// Messages ever enqueued.
    pub published: u64,
    /// Messages ever delivered (including `basic.get`).
    pub delivered: u64,
    /// Messages ever acknowledged.
    pub acked: u64,
    /// Messages dropped because the queue was full while its subscriber
    /// was offline or slow (see [`crate::flow`]).
    pub dropped: u64,
}

/// Why a message was dead-lettered (the `reason` of its `x-death` entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeathReason {
    /// Rejected or nacked without requeue.
    Rejected,
    /// Its TTL ran out.
    Expired,
    /// Pushed out by a length limit.
    Maxlen,
}

impl DeathReason {
    /// The `x-death` reason string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rejected => "rejected",
            Self::Expired => "expired",
            Self::Maxlen => "maxlen",
        }
    }
}

/// A ready message's content: in memory, or only in the message store
/// (paged out: read back when it nears the head of the queue).
#[derive(Debug)]
enum Body {
    Loaded(Arc<Message>),
    Paged {
        /// Body size, for `x-max-length-bytes` and statistics (0 if not
        /// known: recovered without its body).
        size: u32,
        /// Its priority level.
        priority: u8,
        /// Recovered at startup without its body: a transient message
        /// found when it is read back was only paged out before the
        /// restart, and goes.
        recovered: bool,
    },
}

#[derive(Debug)]
struct Entry {
    body: Body,
    seq: u64,
    redelivered: bool,
    expires_at: Option<Instant>,
    /// Its id in the message store, if it is stored for this queue.
    stored: Option<u64>,
}

impl Entry {
    fn size(&self) -> u64 {
        match &self.body {
            Body::Loaded(m) => m.body.len() as u64,
            Body::Paged { size, .. } => u64::from(*size),
        }
    }

    fn priority(&self) -> u8 {
        match &self.body {
            Body::Loaded(m) => m.properties.priority.unwrap_or(0),
            Body::Paged { priority, .. } => *priority,
        }
    }

    fn is_loaded(&self) -> bool {
        matches!(self.body, Body::Loaded(_))
    }
}

/// A level keeps at least this many slots of capacity however far it
/// drains (a few KiB), so a queue hovering around empty does not
/// reallocate.
const KEPT_CAPACITY: usize = 64;

/// Returns memory after a backlog drains: a level using less than a
/// quarter of its capacity shrinks to twice its length. Shrinking costs
/// O(len) and the next shrink needs the length to halve again, so this is
/// amortised O(1) per message; a queue that held millions of messages
/// does not keep tens of MiB of empty slots.
fn give_back<T>(level: &mut VecDeque<T>) {
    let cap = level.capacity();
    if cap > KEPT_CAPACITY && level.len() < cap / 4 {
        level.shrink_to((level.len() * 2).max(KEPT_CAPACITY));
    }
}

/// How many paged-out messages are read back at once.
const PAGE_IN_BATCH: usize = 256;

/// Ready messages: one FIFO per priority level (one level unless the
/// queue was declared with `x-max-priority`), highest level served first.
#[derive(Debug)]
struct Ready {
    levels: Vec<VecDeque<Entry>>,
    len: usize,
    bytes: u64,
    /// Entries whose body is in memory.
    loaded: usize,
}

impl Ready {
    fn new(max_priority: u8) -> Self {
        Self {
            levels: (0..=max_priority).map(|_| VecDeque::new()).collect(),
            len: 0,
            bytes: 0,
            loaded: 0,
        }
    }

    fn level(&self, e: &Entry) -> usize {
        let max = self.levels.len() - 1;
        usize::from(e.priority()).min(max)
    }

    fn len(&self) -> usize {
        self.len
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn count_in(&mut self, e: &Entry) {
        self.len += 1;
        self.bytes += e.size();
        self.loaded += usize::from(e.is_loaded());
    }

    fn push_back(&mut self, e: Entry) {
        let l = self.level(&e);
        self.count_in(&e);
        self.levels[l].push_back(e);
    }

    /// Put a message back where its sequence number says it belongs.
    fn insert_by_seq(&mut self, e: Entry) {
        let l = self.level(&e);
        self.count_in(&e);
        let level = &mut self.levels[l];
        let pos = level.partition_point(|x| x.seq < e.seq);
        level.insert(pos, e);
    }

    fn front(&self) -> Option<&Entry> {
        self.levels.iter().rev().find_map(|l| l.front())
    }

    /// The level the next message comes from.
    fn front_level(&self) -> Option<usize> {
        self.levels.iter().rposition(|l| !l.is_empty())
    }

    fn pop_front(&mut self) -> Option<Entry> {
        let level = self.levels.iter_mut().rev().find(|l| !l.is_empty())?;
        let e = level.pop_front()?;
        give_back(level);
        self.len -= 1;
        self.bytes -= e.size();
        self.loaded -= usize::from(e.is_loaded());
        Some(e)
    }

    fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.levels.iter().flatten()
    }

    fn clear(&mut self) -> usize {
        let n = self.len;
        for level in &mut self.levels {
            level.clear();
            give_back(level);
        }
        self.len = 0;
        self.bytes = 0;
        self.loaded = 0;
        n
    }
}

struct State {
    ready: Ready,
    unacked: u64,
    consumers: Vec<Consumer>,
    next_consumer: usize,
    next_seq: u64,
    ever_consumed: bool,
    deleted: bool,
    last_used: Instant,
    stats: QueueStats,
    /// Back-pressure and drop policy of a subscriber queue (boxed: most
    /// queues have none).
    flow: Option<Box<FlowState>>,
}

/// A message queue.
pub struct Queue {
    name: ShortStr,
    vhost_name: String,
    durable: bool,
    auto_delete: bool,
    exclusive_owner: Option<u64>,
    arguments: FieldTable,
    args: QueueArgs,
    vhost: Weak<VHost>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    store: Option<QueueStore>,
    /// Ready messages kept in memory before new stored ones are paged out.
    max_loaded: usize,
    /// It holds messages for an MQTT subscriber: topic bindings to it
    /// follow MQTT's rule for `$` topics (see [`crate::topic::DollarRule`]).
    mqtt_rules: std::sync::atomic::AtomicBool,
    state: Mutex<State>,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("name", &self.name)
            .field("vhost", &self.vhost_name)
            .finish()
    }
}

/// How a queue is declared.
#[derive(Debug, Clone, Default)]
pub struct QueueOptions {
    /// Survives a restart.
    pub durable: bool,
    /// Owned by one connection (its id), deleted with it.
    pub exclusive_owner: Option<u64>,
    /// Deleted when its last consumer goes.
    pub auto_delete: bool,
    /// The declared arguments, as given.
    pub arguments: FieldTable,
}

/// The outcome of offering a message to a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// Accepted.
    Accepted,
    /// Refused by `x-overflow: reject-publish`.
    Rejected,
    /// Accepted, but the queue is congested: the publisher is to wait
    /// (see [`crate::flow`]).
    Congested,
    /// Dropped: a full subscriber queue (offline or slow subscriber)
    /// under drop-new. Not a refusal the publisher hears of.
    Dropped,
}

/// A message taken with `basic.get`.
#[derive(Debug)]
pub struct Got {
    /// The message.
    pub message: Arc<Message>,
    /// Its sequence number, for ack.
    pub seq: u64,
    /// Whether it was delivered before.
    pub redelivered: bool,
    /// When it expires.
    pub expires_at: Option<Instant>,
    /// Messages still ready after this one.
    pub remaining: u64,
    /// Its id in the message store, if it is stored for this queue.
    pub stored: Option<u64>,
}

/// A delivered message coming back to its queue.
#[derive(Debug, Clone)]
pub struct Returned {
    /// The message.
    pub message: Arc<Message>,
    /// Its sequence number.
    pub seq: u64,
    /// When it expires, as it was when delivered (requeue keeps it).
    pub expires_at: Option<Instant>,
    /// Its id in the message store, if it is stored for this queue.
    pub stored: Option<u64>,
}

impl From<&Delivery> for Returned {
    fn from(d: &Delivery) -> Self {
        Self {
            message: d.message.clone(),
            seq: d.seq,
            expires_at: d.expires_at,
            stored: d.stored,
        }
    }
}

type DeadLetters = Vec<(Arc<Message>, DeathReason)>;

/// Messages that left a queue for good, as `(queue id, message id)` for
/// the store; reported after the queue lock is released.
type Removed = Vec<(u32, u64)>;

/// What an operation under the queue lock leaves to do after it.
#[derive(Default)]
struct Out {
    dead: DeadLetters,
    removed: Removed,
}

impl Queue {
    pub(crate) fn new(
        name: ShortStr,
        vhost: &Arc<VHost>,
        options: QueueOptions,
        args: QueueArgs,
        clock: Arc<dyn Clock>,
        store: Option<QueueStore>,
        max_loaded: usize,
    ) -> Self {
        let metrics = vhost.metrics().clone();
        let now = clock.now();
        let ready = Ready::new(args.max_priority.unwrap_or(0));
        Self {
            name,
            vhost_name: vhost.name().to_owned(),
            durable: options.durable,
            auto_delete: options.auto_delete,
            exclusive_owner: options.exclusive_owner,
            arguments: options.arguments,
            args,
            vhost: Arc::downgrade(vhost),
            clock,
            metrics,
            store,
            max_loaded,
            mqtt_rules: Default::default(),
            state: Mutex::new(State {
                ready,
                unacked: 0,
                consumers: Vec::new(),
                next_consumer: 0,
                next_seq: 0,
                ever_consumed: false,
                deleted: false,
                last_used: now,
                stats: QueueStats::default(),
                flow: None,
            }),
        }
    }

    /// The queue's name.
    pub fn name(&self) -> &ShortStr {
        &self.name
    }

    /// Its vhost's name.
    pub fn vhost_name(&self) -> &str {
        &self.vhost_name
    }

    /// Declared durable.
    pub fn durable(&self) -> bool {
        self.durable
    }

    /// Declared auto-delete.
    pub fn auto_delete(&self) -> bool {
        self.auto_delete
    }

    /// The owning connection of an exclusive queue.
    pub fn exclusive_owner(&self) -> Option<u64> {
        self.exclusive_owner
    }

    /// The arguments as declared.
    pub fn arguments(&self) -> &FieldTable {
        &self.arguments
    }

    /// The validated arguments.
    pub fn args(&self) -> &QueueArgs {
        &self.args
    }

    /// Counters.
    pub fn stats(&self) -> QueueStats {
        let st = self.state.lock();
        QueueStats {
            messages_ready: st.ready.len() as u64,
            messages_unacknowledged: st.unacked,
            message_bytes_ready: st.ready.bytes,
            consumers: st.consumers.len() as u32,
            ..st.stats
        }
    }

    /// Ready message and consumer counts (for `queue.declare-ok`).
    pub fn counts(&self) -> (u32, u32) {
        let st = self.state.lock();
        (st.ready.len() as u32, st.consumers.len() as u32)
    }

    /// Mark the queue as used now (for `x-expires`).
    pub fn touch(&self) {
        self.state.lock().last_used = self.clock.now();
    }

    /// The queue's id in the message store, if its persistent messages are
    /// stored (durable, not exclusive, and the broker has a store).
    pub fn store_id(&self) -> Option<u32> {
        self.store.as_ref().map(|s| s.id)
    }

    /// Offer a routed message. `stored` is its id in the message store,
    /// if it was stored for this queue (see [`Queue::store_id`]).
    pub fn enqueue(self: &Arc<Self>, message: Arc<Message>, stored: Option<u64>) -> Enqueued {
        let stored = stored.filter(|_| self.store.is_some());
        let now = self.clock.now();
        let mut out = Out::default();
        let result = {
            let mut st = self.state.lock();
            if st.deleted {
                drop(st);
                self.gone(&mut out, stored);
                self.finish(out);
                return Enqueued::Accepted;
            }
            let size = message.body.len() as u64;
            if self.flow_full(&st) == Some(FlowOverflow::DropNew) {
                drop(st);
                self.gone(&mut out, stored);
                self.finish(out);
                self.flow_dropped(1);
                return Enqueued::Dropped;
            }
            if self.would_overflow(&st, size) {
                match self.args.overflow {
                    Overflow::DropHead => {}
                    Overflow::RejectPublish => {
                        drop(st);
                        self.gone(&mut out, stored);
                        self.finish(out);
                        return Enqueued::Rejected;
                    }
                    Overflow::RejectPublishDlx => {
                        drop(st);
                        out.dead.push((message, DeathReason::Maxlen));
                        self.gone(&mut out, stored);
                        self.finish(out);
                        return Enqueued::Rejected;
                    }
                }
            }
            let expires_at = self.ttl(&message).map(|t| now + t);
            let seq = st.next_seq;
            st.next_seq += 1;
            st.stats.published += 1;
            // Past the in-memory budget a stored message keeps only its
            // place in the queue; its body is read back near the head. A
            // transient one is written to the store for this queue only
            // to be paged out (recovery drops it).
            let mut stored = stored;
            let over = st.ready.loaded >= self.max_loaded;
            if over && stored.is_none() {
                if let Some(qs) = &self.store {
                    let record = crate::persistence::encode_record(
                        &message,
                        crate::persistence::unix_millis_now(),
                    );
                    stored = qs.store.append(&[qs.id], record).ok().map(|s| s.id);
                }
            }
            let body = if over && stored.is_some() {
                Body::Paged {
                    size: u32::try_from(size).unwrap_or(u32::MAX),
                    priority: message.properties.priority.unwrap_or(0),
                    recovered: false,
                }
            } else {
                Body::Loaded(message)
            };
            st.ready.push_back(Entry {
                body,
                seq,
                redelivered: false,
                expires_at,
                stored,
            });
            self.enforce_limits(&mut st, &mut out);
            let dropped_oldest = self.enforce_flow_limit(&mut st, &mut out);
            // Deliver before expiring: with a TTL of 0 a message still
            // reaches a consumer that can take it right now (RabbitMQ).
            self.deliver_ready(&mut st, now, &mut out);
            self.expire_head(&mut st, now, &mut out);
            let congested = Self::congest(&mut st);
            (congested, dropped_oldest)
        };
        self.finish(out);
        let (congested, dropped) = result;
        self.flow_dropped(dropped);
        if congested {
            Enqueued::Congested
        } else {
            Enqueued::Accepted
        }
    }

    /// Mark the queue as an MQTT subscriber's (see [`Queue::mqtt_rules`]).
    pub fn set_mqtt_rules(&self, on: bool) {
        self.mqtt_rules
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether topic bindings to this queue follow MQTT's rule for `$`
    /// topics (it holds messages for an MQTT subscriber).
    pub fn mqtt_rules(&self) -> bool {
        self.mqtt_rules.load(std::sync::atomic::Ordering::Relaxed)
    }

    // ---- flow (see crate::flow) -------------------------------------------

    /// Make this a subscriber queue with `limits` (or an ordinary one
    /// again with `None`). Publishers it held are released.
    pub fn set_flow(&self, limits: Option<FlowLimits>) {
        let mut st = self.state.lock();
        if let Some(f) = &mut st.flow {
            f.uncongest();
        }
        st.flow = limits.map(|l| Box::new(FlowState::new(l)));
    }

    /// The flow limits, if this is a subscriber queue.
    pub fn flow_limits(&self) -> Option<FlowLimits> {
        self.state.lock().flow.as_ref().map(|f| f.limits.clone())
    }

    /// Whether the queue holds its publishers now.
    pub fn flow_congested(&self) -> bool {
        self.state.lock().flow.as_ref().is_some_and(|f| f.congested)
    }

    /// Whether the queue was found slow (it held a publisher for its
    /// `max_hold`) and has not drained since.
    pub fn flow_slow(&self) -> bool {
        self.state.lock().flow.as_ref().is_some_and(|f| f.slow)
    }

    /// If congested, have `waker` woken when it no longer is; returns its
    /// epoch and `max_hold`. A caller that waited in epoch `seen` already
    /// is registered again only if the queue became congested anew.
    pub(crate) fn flow_wait(
        &self,
        waker: &Arc<dyn crate::Wake>,
        seen: Option<u64>,
    ) -> Option<(u64, Duration)> {
        let mut st = self.state.lock();
        let f = st.flow.as_mut().filter(|f| f.congested)?;
        if seen != Some(f.epoch) {
            f.add_waiter(waker);
        }
        Some((f.epoch, f.limits.max_hold))
    }

    /// The queue held a publisher for its `max_hold`: stop holding
    /// publishers until it has drained.
    pub(crate) fn flow_mark_slow(&self) {
        let mut st = self.state.lock();
        let ready = st.ready.len();
        let Some(f) = st.flow.as_mut().filter(|f| f.congested) else {
            return;
        };
        f.slow = true;
        f.uncongest();
        tracing::info!(
            message = "Subscriber is slow: its publishers are no longer held; messages beyond its limit will be dropped.",
            client = %f.limits.owner,
            queue = %self.name,
            ready,
            max_queued = f.limits.max_len,
        );
    }

    /// Whether a subscriber queue is full (and what then goes).
    fn flow_full(&self, st: &State) -> Option<FlowOverflow> {
        let f = st.flow.as_ref()?;
        (st.ready.len() as u64 >= u64::from(f.limits.max_len)).then_some(f.limits.overflow)
    }

    /// Drop the oldest ready messages of a drop-oldest subscriber queue
    /// beyond its limit; returns how many.
    fn enforce_flow_limit(&self, st: &mut State, out: &mut Out) -> u64 {
        let Some(max) = st
            .flow
            .as_ref()
            .filter(|f| f.limits.overflow == FlowOverflow::DropOldest)
            .map(|f| f.limits.max_len as usize)
        else {
            return 0;
        };
        let mut n = 0;
        while st.ready.len() > max {
            let Some(e) = st.ready.pop_front() else { break };
            self.dead(out, e, DeathReason::Maxlen);
            n += 1;
        }
        n
    }

    /// Count `n` dropped messages, and log them if it is time.
    fn flow_dropped(&self, n: u64) {
        if n == 0 {
            return;
        }
        Metrics::add(&self.metrics.messages_dropped, n);
        let now = self.clock.now();
        let mut st = self.state.lock();
        st.stats.dropped += n;
        let ready = st.ready.len();
        let consumers = st.consumers.len();
        let Some(f) = st.flow.as_mut() else { return };
        f.unlogged_drops += n - 1;
        if let Some(count) = f.dropped(now) {
            let owner = f.limits.owner.clone();
            let max_queued = f.limits.max_len;
            drop(st);
            log_drops(&owner, &self.name, count, ready, max_queued, consumers == 0);
        }
    }

    /// After a message went in: congested if over `high` with a consumer
    /// (and not slow). Returns whether it is.
    fn congest(st: &mut State) -> bool {
        let ready = st.ready.len();
        let has_consumers = !st.consumers.is_empty();
        let Some(f) = st.flow.as_mut() else {
            return false;
        };
        if !f.congested && !f.slow && has_consumers && ready > f.limits.high as usize {
            f.congested = true;
        }
        f.congested
    }

    /// After messages left or consumers went: a queue drained to `low`
    /// holds publishers again when next congested (it is not slow any
    /// more), and a congested one that drained, or lost its last
    /// consumer, releases the publishers it holds.
    fn relieve(st: &mut State) {
        let ready = st.ready.len();
        let idle = st.consumers.is_empty() || st.deleted;
        let Some(f) = st.flow.as_mut() else { return };
        if !(f.congested || f.slow) {
            return;
        }
        let drained = ready <= f.limits.low as usize;
        if drained {
            f.slow = false;
        }
        if f.congested && (drained || idle) {
            f.uncongest();
        }
    }

    /// The TTL a message gets in this queue: the queue's or its own,
    /// whichever is shorter.
    fn ttl(&self, message: &Message) -> Option<Duration> {
        match (self.args.message_ttl, message.expiration()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Put back messages recovered from the store at startup, in the order
    /// given (publish order). TTLs count from the original publish time;
    /// length limits apply.
    pub fn restore(self: &Arc<Self>, messages: Vec<Recovered>) {
        let now = self.clock.now();
        let now_ms = crate::persistence::unix_millis_now();
        let mut out = Out::default();
        {
            let mut st = self.state.lock();
            for r in messages {
                let (body, expires_at) = match r.message {
                    // Transient: it was in the store only to be paged out.
                    Some(m) if !m.is_persistent() => {
                        self.gone(&mut out, Some(r.id));
                        continue;
                    }
                    Some(m) => {
                        let expires_at = self.ttl(&m).map(|t| {
                            now + crate::persistence::remaining(t, r.published_at_ms, now_ms)
                        });
                        let body = if st.ready.loaded < self.max_loaded || self.store.is_none() {
                            Body::Loaded(Arc::new(m))
                        } else {
                            Body::Paged {
                                size: u32::try_from(m.body.len()).unwrap_or(u32::MAX),
                                priority: m.properties.priority.unwrap_or(0),
                                recovered: false,
                            }
                        };
                        (body, expires_at)
                    }
                    // Recovered without its body: priority and TTL are
                    // learnt when it is read back.
                    None if self.store.is_some() => (
                        Body::Paged {
                            size: 0,
                            priority: 0,
                            recovered: true,
                        },
                        None,
                    ),
                    None => continue,
                };
                let seq = st.next_seq;
                st.next_seq += 1;
                st.ready.push_back(Entry {
                    body,
                    seq,
                    redelivered: r.redelivered,
                    expires_at,
                    stored: Some(r.id).filter(|_| self.store.is_some()),
                });
            }
            self.enforce_limits(&mut st, &mut out);
            self.dispatch(&mut st, now, &mut out);
        }
        self.finish(out);
    }

    /// Store ids of the ready messages marked redelivered: what a clean
    /// shutdown records so that the next start marks exactly those.
    pub fn redelivered_ids(&self) -> Vec<u64> {
        let st = self.state.lock();
        st.ready
            .iter()
            .filter(|e| e.redelivered)
            .filter_map(|e| e.stored)
            .collect()
    }

    fn would_overflow(&self, st: &State, incoming: u64) -> bool {
        self.args
            .max_length
            .is_some_and(|max| st.ready.len() as u64 + 1 > max)
            || self
                .args
                .max_length_bytes
                .is_some_and(|max| st.ready.bytes + incoming > max)
    }

    /// Drop (or dead-letter) head messages while the queue is over its
    /// length limits. Only under `drop-head`: a `reject-publish` queue
    /// refuses new messages instead, and keeps what it holds (requeued and
    /// recovered ones included), as RabbitMQ does.
    fn enforce_limits(&self, st: &mut State, out: &mut Out) {
        if self.args.overflow != Overflow::DropHead {
            return;
        }
        loop {
            let over_len = self
                .args
                .max_length
                .is_some_and(|max| st.ready.len() as u64 > max);
            let over_bytes = self
                .args
                .max_length_bytes
                .is_some_and(|max| st.ready.bytes > max);
            if !(over_len || over_bytes) {
                return;
            }
            let Some(e) = st.ready.pop_front() else {
                return;
            };
            self.dead(out, e, DeathReason::Maxlen);
        }
    }

    /// Drop expired messages at the head (RabbitMQ expires from the head only).
    fn expire_head(&self, st: &mut State, now: Instant, out: &mut Out) {
        while let Some(e) = st.ready.front() {
            if e.expires_at.is_none_or(|t| t > now) {
                return;
            }
            if let Some(e) = st.ready.pop_front() {
                self.dead(out, e, DeathReason::Expired);
            }
        }
    }

    fn dispatch(self: &Arc<Self>, st: &mut State, now: Instant, out: &mut Out) {
        self.expire_head(st, now, out);
        self.deliver_ready(st, now, out);
    }

    fn deliver_ready(self: &Arc<Self>, st: &mut State, now: Instant, out: &mut Out) {
        self.deliver_some(st, now, out);
        Self::relieve(st);
    }

    fn deliver_some(self: &Arc<Self>, st: &mut State, now: Instant, out: &mut Out) {
        while !st.ready.is_empty() && !st.consumers.is_empty() {
            if !self.page_in(st, now, out) {
                return;
            }
            let Some(idx) = pick_consumer(&st.consumers, st.next_consumer) else {
                return;
            };
            st.next_consumer = st.next_consumer.wrapping_add(1);
            let Some(e) = st.ready.pop_front() else {
                return;
            };
            let Some(message) = self.load(e.body, e.stored) else {
                self.gone(out, e.stored);
                continue;
            };
            st.stats.delivered += 1;
            let c = &st.consumers[idx];
            let needs_ack = !c.no_ack;
            if !needs_ack {
                self.gone(out, e.stored);
            }
            let delivery = Delivery {
                queue: self.clone(),
                consumer_tag: c.tag.clone(),
                message,
                seq: e.seq,
                redelivered: e.redelivered,
                expires_at: e.expires_at,
                needs_ack,
                stored: e.stored.filter(|_| needs_ack),
            };
            c.sink.deliver(delivery);
            if needs_ack {
                st.unacked += 1;
            } else {
                st.stats.acked += 1;
            }
            self.expire_head(st, now, out);
        }
    }

    /// Try to deliver again: a consumer regained credit.
    pub fn kick(self: &Arc<Self>) {
        let now = self.clock.now();
        let mut out = Out::default();
        {
            let mut st = self.state.lock();
            if !st.deleted {
                self.dispatch(&mut st, now, &mut out);
            }
        }
        self.finish(out);
    }

    /// Attach a consumer.
    pub fn add_consumer(self: &Arc<Self>, consumer: Consumer) -> Result<()> {
        let now = self.clock.now();
        let mut out = Out::default();
        {
            let mut st = self.state.lock();
            if st.deleted {
                return Err(CoreError::no_queue(&self.vhost_name, &self.name));
            }
            if st.consumers.iter().any(|c| c.exclusive)
                || (consumer.exclusive && !st.consumers.is_empty())
            {
                return Err(CoreError::AccessRefused(format!(
                    "queue '{}' in vhost '{}' in exclusive use",
                    self.name, self.vhost_name
                )));
            }
            // Kept sorted by priority, highest first; equal ones in arrival order.
            let pos = st
                .consumers
                .partition_point(|c| c.priority >= consumer.priority);
            st.consumers.insert(pos, consumer);
            st.ever_consumed = true;
            st.last_used = now;
            self.dispatch(&mut st, now, &mut out);
        }
        self.finish(out);
        Ok(())
    }

    /// Detach a consumer. If it was the last one of an auto-delete queue,
    /// the queue is deleted. Returns whether the consumer was attached.
    pub fn remove_consumer(&self, id: u64) -> bool {
        let auto_delete_now;
        {
            let mut st = self.state.lock();
            let before = st.consumers.len();
            st.consumers.retain(|c| c.id != id);
            if st.consumers.len() == before {
                return false;
            }
            Self::relieve(&mut st);
            st.last_used = self.clock.now();
            auto_delete_now =
                self.auto_delete && st.ever_consumed && st.consumers.is_empty() && !st.deleted;
        }
        if auto_delete_now {
            if let Some(vhost) = self.vhost.upgrade() {
                let _ = vhost.delete_queue_unchecked(&self.name);
            }
        }
        true
    }

    /// Take one message (`basic.get`).
    pub fn get(&self, no_ack: bool) -> Option<Got> {
        let now = self.clock.now();
        let mut out = Out::default();
        let got = {
            let mut st = self.state.lock();
            st.last_used = now;
            self.expire_head(&mut st, now, &mut out);
            let mut e = None;
            while !st.ready.is_empty() && self.page_in(&mut st, now, &mut out) {
                let Some(next) = st.ready.pop_front() else {
                    break;
                };
                match self.load(next.body, next.stored) {
                    Some(m) => {
                        e = Some((m, next.seq, next.redelivered, next.expires_at, next.stored));
                        break;
                    }
                    None => self.gone(&mut out, next.stored),
                }
            }
            let got = e.map(|(message, seq, redelivered, expires_at, stored)| {
                st.stats.delivered += 1;
                if no_ack {
                    st.stats.acked += 1;
                    self.gone(&mut out, stored);
                } else {
                    st.unacked += 1;
                }
                Got {
                    message,
                    seq,
                    redelivered,
                    expires_at,
                    remaining: st.ready.len() as u64,
                    stored: stored.filter(|_| !no_ack),
                }
            });
            Self::relieve(&mut st);
            got
        };
        self.finish(out);
        got
    }

    /// Settle `count` delivered messages as acknowledged; `stored` are the
    /// store ids of those that were stored (see [`Delivery::stored`]).
    pub fn ack(&self, count: u64, stored: impl IntoIterator<Item = u64>) {
        {
            let mut st = self.state.lock();
            st.unacked = st.unacked.saturating_sub(count);
            st.stats.acked += count;
        }
        if let Some(s) = &self.store {
            let pairs: Removed = stored.into_iter().map(|m| (s.id, m)).collect();
            if !pairs.is_empty() {
                s.store.remove(&pairs);
            }
        }
    }

    /// Put delivered messages back, in queue order, marked redelivered.
    pub fn requeue(self: &Arc<Self>, mut returned: Vec<Returned>) {
        if returned.is_empty() {
            return;
        }
        returned.sort_by_key(|r| r.seq);
        let now = self.clock.now();
        let mut out = Out::default();
        {
            let mut st = self.state.lock();
            st.unacked = st.unacked.saturating_sub(returned.len() as u64);
            if st.deleted {
                return;
            }
            // Messages come back to where they were: before every ready
            // message that was published after them.
            for r in returned.into_iter().rev() {
                st.ready.insert_by_seq(Entry {
                    body: Body::Loaded(r.message),
                    seq: r.seq,
                    redelivered: true,
                    expires_at: r.expires_at,
                    stored: r.stored,
                });
            }
            self.enforce_limits(&mut st, &mut out);
            self.dispatch(&mut st, now, &mut out);
        }
        self.finish(out);
    }

    /// Settle delivered messages as rejected without requeue: they are
    /// dead-lettered if the queue has a dead-letter exchange, else dropped.
    pub fn reject(&self, returned: Vec<Returned>) {
        {
            let mut st = self.state.lock();
            st.unacked = st.unacked.saturating_sub(returned.len() as u64);
        }
        let mut out = Out::default();
        for r in returned {
            self.gone(&mut out, r.stored);
            out.dead.push((r.message, DeathReason::Rejected));
        }
        self.finish(out);
    }

    /// Drop every ready message; returns how many.
    pub fn purge(&self) -> u32 {
        let mut out = Out::default();
        let n = {
            let mut st = self.state.lock();
            for e in st.ready.iter() {
                self.gone(&mut out, e.stored);
            }
            let n = st.ready.clear() as u32;
            Self::relieve(&mut st);
            n
        };
        self.finish(out);
        n
    }

    /// Periodic work: expire messages at the head even with no consumer,
    /// and report whether the queue has been unused past `x-expires`.
    pub fn tick(&self) -> bool {
        let now = self.clock.now();
        let mut out = Out::default();
        let mut drops = None;
        let expired_queue = {
            let mut st = self.state.lock();
            self.expire_head(&mut st, now, &mut out);
            Self::relieve(&mut st);
            let (ready, consumers) = (st.ready.len(), st.consumers.len());
            if let Some(f) = st.flow.as_mut() {
                drops = f.due_drop_report(now).map(|n| {
                    (
                        f.limits.owner.clone(),
                        n,
                        ready,
                        f.limits.max_len,
                        consumers == 0,
                    )
                });
            }
            self.args
                .expires
                .is_some_and(|e| st.consumers.is_empty() && now.duration_since(st.last_used) >= e)
        };
        self.finish(out);
        if let Some((owner, n, ready, max_queued, offline)) = drops {
            log_drops(&owner, &self.name, n, ready, max_queued, offline);
        }
        expired_queue
    }

    /// Mark deleted and detach consumers; returns the consumers to notify
    /// and the number of ready messages dropped. (The store drops the
    /// queue's messages as a whole: see `VHost::finish_delete`.)
    pub(crate) fn mark_deleted(&self) -> (Vec<Consumer>, u32) {
        let mut st = self.state.lock();
        st.deleted = true;
        let n = st.ready.clear() as u32;
        if let Some(f) = &mut st.flow {
            f.uncongest();
        }
        (std::mem::take(&mut st.consumers), n)
    }

    /// Whether the queue was deleted.
    pub fn is_deleted(&self) -> bool {
        self.state.lock().deleted
    }

    /// A ready message leaves for good with `reason`: dead-lettered if the
    /// queue has a dead-letter exchange (read back if it was paged out).
    fn dead(&self, out: &mut Out, e: Entry, reason: DeathReason) {
        self.gone(out, e.stored);
        if self.args.dead_letter_exchange.is_some() {
            if let Some(m) = self.load(e.body, e.stored) {
                out.dead.push((m, reason));
            }
        }
    }

    /// A message's content, read back from the store if it was paged out.
    /// `None` if the store does not have it (logged).
    fn load(&self, body: Body, stored: Option<u64>) -> Option<Arc<Message>> {
        match body {
            Body::Loaded(m) => Some(m),
            Body::Paged { .. } => {
                let (s, id) = (self.store.as_ref()?, stored?);
                let read = s.store.read(&[id]);
                let record = match read {
                    Ok(mut v) if !v.is_empty() => v.swap_remove(0).1,
                    Ok(_) => {
                        tracing::error!(message = "A paged-out message is not in the store.", queue = %self.name, id);
                        return None;
                    }
                    Err(e) => {
                        tracing::error!(message = "Reading a paged-out message failed.", queue = %self.name, id, error = %e);
                        return None;
                    }
                };
                crate::persistence::decode_record(&record).map(|(m, _)| Arc::new(m))
            }
        }
    }

    /// Make sure the next ready message is in memory, reading it and the
    /// paged-out ones after it (up to [`PAGE_IN_BATCH`]) back from the
    /// store. Messages the store no longer has are dropped (logged).
    /// Returns false if the store failed (the message stays paged out).
    fn page_in(&self, st: &mut State, now: Instant, out: &mut Out) -> bool {
        loop {
            let Some(l) = st.ready.front_level() else {
                return true;
            };
            if st.ready.levels[l].front().is_none_or(Entry::is_loaded) {
                return true;
            }
            if !self.page_in_batch(st, l, now, out) {
                return false;
            }
        }
    }

    /// Read back the paged-out messages among the first [`PAGE_IN_BATCH`]
    /// of priority level `l`. False if the store failed.
    fn page_in_batch(&self, st: &mut State, l: usize, now: Instant, out: &mut Out) -> bool {
        let Some(qs) = &self.store else {
            return true;
        };
        let ids: Vec<u64> = st.ready.levels[l]
            .iter()
            .take(PAGE_IN_BATCH)
            .filter(|e| !e.is_loaded())
            .filter_map(|e| e.stored)
            .collect();
        let records: std::collections::HashMap<u64, bytes::Bytes> = match qs.store.read(&ids) {
            Ok(v) => v.into_iter().collect(),
            Err(e) => {
                tracing::error!(message = "Reading paged-out messages failed.", queue = %self.name, error = %e);
                return false;
            }
        };
        let now_ms = crate::persistence::unix_millis_now();
        let (mut loaded, mut bytes_in, mut bytes_out) = (0usize, 0u64, 0u64);
        let mut missing = Vec::new();
        for (i, e) in st.ready.levels[l]
            .iter_mut()
            .take(PAGE_IN_BATCH)
            .enumerate()
        {
            if e.is_loaded() {
                continue;
            }
            let decoded = e
                .stored
                .and_then(|id| records.get(&id))
                .and_then(crate::persistence::decode_record);
            let Some((m, published_at_ms)) = decoded else {
                missing.push((i, true));
                continue;
            };
            if matches!(
                e.body,
                Body::Paged {
                    recovered: true,
                    ..
                }
            ) && !m.is_persistent()
            {
                missing.push((i, false)); // paged out before a restart only
                continue;
            }
            if e.expires_at.is_none() {
                e.expires_at = self
                    .ttl(&m)
                    .map(|t| now + crate::persistence::remaining(t, published_at_ms, now_ms));
            }
            bytes_out += e.size();
            bytes_in += m.body.len() as u64;
            e.body = Body::Loaded(Arc::new(m));
            loaded += 1;
        }
        st.ready.loaded += loaded;
        st.ready.bytes = st.ready.bytes + bytes_in - bytes_out;
        for &(i, unexpected) in missing.iter().rev() {
            if let Some(e) = st.ready.levels[l].remove(i) {
                if unexpected {
                    tracing::error!(message = "A paged-out message could not be read back; dropped.", queue = %self.name, id = ?e.stored);
                }
                st.ready.len -= 1;
                st.ready.bytes -= e.size();
                self.gone(out, e.stored);
            }
        }
        // Read-back TTLs may have run out already.
        self.expire_head(st, now, out);
        true
    }

    /// Record that a message left the queue for good.
    fn gone(&self, out: &mut Out, stored: Option<u64>) {
        if let (Some(s), Some(m)) = (&self.store, stored) {
            out.removed.push((s.id, m));
        }
    }

    /// After the lock is released: republish dead letters, then tell the
    /// store what left (in that order, so a crash between the two can
    /// duplicate a dead-lettered message but not lose it).
    fn finish(&self, out: Out) {
        self.dead_letter(out.dead);
        if let (Some(s), false) = (&self.store, out.removed.is_empty()) {
            s.store.remove(&out.removed);
        }
    }

    fn dead_letter(&self, dead: DeadLetters) {
        if dead.is_empty() {
            return;
        }
        let Some(dlx) = &self.args.dead_letter_exchange else {
            return;
        };
        let Some(vhost) = self.vhost.upgrade() else {
            return;
        };
        for (message, reason) in dead {
            vhost.dead_letter(
                self,
                dlx,
                self.args.dead_letter_routing_key.as_ref(),
                &message,
                reason,
            );
        }
    }
}

/// The rate-limited warning of a subscriber queue that drops messages.
fn log_drops(
    owner: &str,
    queue: &ShortStr,
    count: u64,
    ready: usize,
    max_queued: u32,
    offline: bool,
) {
    tracing::warn!(
        message = "Dropped messages for an MQTT subscriber: its queue is full.",
        client = %owner,
        queue = %queue,
        dropped = count,
        ready,
        max_queued,
        subscriber = if offline { "offline" } else { "slow" },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drained_level_gives_its_memory_back() {
        let mut level: VecDeque<u64> = (0..1_000_000).collect();
        assert!(level.capacity() >= 1_000_000);
        while level.len() > 10 {
            level.pop_front();
            give_back(&mut level);
        }
        assert!(
            level.capacity() <= 2 * KEPT_CAPACITY,
            "{} slots kept for 10 entries",
            level.capacity()
        );
        assert_eq!(
            level.iter().copied().collect::<Vec<_>>(),
            (999_990..1_000_000).collect::<Vec<_>>()
        );
        level.clear();
        give_back(&mut level);
        assert!(level.capacity() <= KEPT_CAPACITY * 2);
    }

    #[test]
    fn a_small_queue_keeps_its_slots() {
        let mut level: VecDeque<u64> = VecDeque::with_capacity(KEPT_CAPACITY);
        level.push_back(1);
        let cap = level.capacity();
        level.pop_front();
        give_back(&mut level);
        assert_eq!(level.capacity(), cap, "no reallocation around empty");
    }
}
