//! How the core talks to the message store: what is appended (once, with
//! the ids of every durable queue a persistent message reached), when a
//! message is reported gone from a queue (ack, no-ack delivery, reject,
//! expiry, length limits, purge), what queue deletion reports, what a
//! refusing store does to a publish, and how recovered messages come back
//! (`Queue::restore`, `Queue::redelivered_ids`).
//!
//! Everything goes through a fake [`MessageStore`] that records every call
//! in order.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use liebre_amqp_codec::{BasicProperties, FieldTable, FieldValue, ShortStr};
use liebre_core::persistence::{
    decode_record, encode_record, unix_millis_now, Recovered, StoreRefused, Stored,
};
use liebre_core::{
    Broker, Consumer, ConsumerSink, Delivery, ExchangeOptions, ManualClock, Message, MessageStore,
    PublishOutcome, Queue, QueueOptions, Returned, VHost, Wake,
};
use parking_lot::Mutex;

// ---- the fake store ------------------------------------------------------

/// One call the core made to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    QueueId {
        vhost: String,
        queue: String,
        id: Option<u32>,
    },
    Append {
        queues: Vec<u32>,
        id: u64,
        lsn: u64,
    },
    AppendRefused {
        queues: Vec<u32>,
    },
    Remove(Vec<(u32, u64)>),
    QueueDeleted {
        vhost: String,
        queue: String,
        id: u32,
    },
}

#[derive(Default)]
struct Inner {
    calls: Vec<Call>,
    /// Records appended, by message id.
    records: HashMap<u64, Bytes>,
    /// Queue ids handed out, by (vhost, queue).
    queue_ids: HashMap<(String, String), u32>,
    next_queue_id: u32,
    next_message_id: u64,
    /// The position of the last append.
    lsn: u64,
    /// The highest durable position.
    synced: u64,
    /// Refuse appends with this reason.
    refuse: Option<String>,
    /// Hand out no queue ids.
    no_queue_ids: bool,
    /// Fail reads with this reason.
    fail_reads: Option<String>,
    /// Every `read` call's ids, in order.
    reads: Vec<Vec<u64>>,
    /// `wake_when_synced` registrations not yet due.
    waiters: Vec<(u64, Arc<dyn Wake>)>,
    /// Every `wake_when_synced` registration, in order.
    registrations: Vec<u64>,
}

/// A message store in memory that records what the core asks of it.
#[derive(Default)]
struct FakeStore {
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for FakeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeStore").finish_non_exhaustive()
    }
}

/// Message ids start here and queue ids at 1, positions grow by record
/// size: none of the three can be mistaken for another.
const FIRST_MESSAGE_ID: u64 = 1000;
const LSN_OVERHEAD: u64 = 16;

impl MessageStore for FakeStore {
    fn queue_id(&self, vhost: &str, queue: &str) -> Option<u32> {
        let mut s = self.inner.lock();
        let id = if s.no_queue_ids {
            None
        } else {
            let key = (vhost.to_owned(), queue.to_owned());
            let next = s.next_queue_id + 1;
            let id = *s.queue_ids.entry(key).or_insert(next);
            if id == next {
                s.next_queue_id = next;
            }
            Some(id)
        };
        s.calls.push(Call::QueueId {
            vhost: vhost.to_owned(),
            queue: queue.to_owned(),
            id,
        });
        id
    }

    fn queue_deleted(&self, vhost: &str, queue: &str, id: u32) {
        let mut s = self.inner.lock();
        s.queue_ids.remove(&(vhost.to_owned(), queue.to_owned()));
        s.calls.push(Call::QueueDeleted {
            vhost: vhost.to_owned(),
            queue: queue.to_owned(),
            id,
        });
    }

    fn append(&self, queues: &[u32], record: Bytes) -> Result<Stored, StoreRefused> {
        let mut s = self.inner.lock();
        if let Some(why) = s.refuse.clone() {
            s.calls.push(Call::AppendRefused {
                queues: queues.to_vec(),
            });
            return Err(StoreRefused(why));
        }
        let id = FIRST_MESSAGE_ID + s.next_message_id;
        s.next_message_id += 1;
        s.lsn += LSN_OVERHEAD + record.len() as u64;
        let lsn = s.lsn;
        s.records.insert(id, record);
        s.calls.push(Call::Append {
            queues: queues.to_vec(),
            id,
            lsn,
        });
        Ok(Stored { id, lsn })
    }

    fn remove(&self, pairs: &[(u32, u64)]) {
        self.inner.lock().calls.push(Call::Remove(pairs.to_vec()));
    }

    fn synced(&self) -> u64 {
        self.inner.lock().synced
    }

    fn read(&self, ids: &[u64]) -> Result<Vec<(u64, Bytes)>, StoreRefused> {
        let mut s = self.inner.lock();
        s.reads.push(ids.to_vec());
        if let Some(why) = s.fail_reads.clone() {
            return Err(StoreRefused(why));
        }
        Ok(ids
            .iter()
            .filter_map(|id| s.records.get(id).map(|r| (*id, r.clone())))
            .collect())
    }

    fn wake_when_synced(&self, lsn: u64, waker: Arc<dyn Wake>) {
        let mut s = self.inner.lock();
        s.registrations.push(lsn);
        if s.synced >= lsn {
            drop(s);
            waker.wake();
        } else {
            s.waiters.push((lsn, waker));
        }
    }
}

impl FakeStore {
    fn calls(&self) -> Vec<Call> {
        self.inner.lock().calls.clone()
    }

    /// Forget the calls recorded so far.
    fn clear(&self) {
        self.inner.lock().calls.clear();
    }

    /// Successful appends as (queue ids, message id, lsn).
    fn appends(&self) -> Vec<(Vec<u32>, u64, u64)> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Append { queues, id, lsn } => Some((queues, id, lsn)),
                _ => None,
            })
            .collect()
    }

    /// Every (queue id, message id) reported removed, in order.
    fn removed(&self) -> Vec<(u32, u64)> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Remove(p) => Some(p),
                _ => None,
            })
            .flatten()
            .collect()
    }

    fn queue_deletions(&self) -> Vec<(String, String, u32)> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::QueueDeleted { vhost, queue, id } => Some((vhost, queue, id)),
                _ => None,
            })
            .collect()
    }

    fn record(&self, id: u64) -> Option<Bytes> {
        self.inner.lock().records.get(&id).cloned()
    }

    fn refuse(&self, why: Option<&str>) {
        self.inner.lock().refuse = why.map(str::to_owned);
    }

    fn registrations(&self) -> Vec<u64> {
        self.inner.lock().registrations.clone()
    }

    /// The disk caught up to `pos`: wake everyone waiting for it (outside
    /// the lock, as a syncing thread would).
    fn sync_to(&self, pos: u64) {
        let due: Vec<Arc<dyn Wake>> = {
            let mut s = self.inner.lock();
            s.synced = s.synced.max(pos);
            let synced = s.synced;
            let (due, later): (Vec<_>, Vec<_>) =
                s.waiters.drain(..).partition(|(lsn, _)| *lsn <= synced);
            s.waiters = later;
            due.into_iter().map(|(_, w)| w).collect()
        };
        for w in due {
            w.wake();
        }
    }
}

/// Counts wake-ups.
#[derive(Default)]
struct CountingWaker(AtomicUsize);

impl Wake for CountingWaker {
    fn wake(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl CountingWaker {
    fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

// ---- a recording consumer --------------------------------------------------

/// A consumer without credit limit that keeps what it gets.
#[derive(Default)]
struct Sink {
    got: Mutex<Vec<Delivery>>,
}

impl ConsumerSink for Sink {
    fn try_reserve(&self) -> bool {
        true
    }
    fn deliver(&self, d: Delivery) {
        self.got.lock().push(d);
    }
    fn cancelled(&self, _tag: &ShortStr) {}
}

impl Sink {
    fn take(&self) -> Vec<Delivery> {
        std::mem::take(&mut *self.got.lock())
    }
}

fn consume(q: &Arc<Queue>, id: u64, no_ack: bool) -> Arc<Sink> {
    let sink = Arc::new(Sink::default());
    q.add_consumer(Consumer {
        id,
        tag: ShortStr::from(format!("c{id}")),
        no_ack,
        exclusive: false,
        priority: 0,
        sink: sink.clone(),
    })
    .expect("consumer attached");
    sink
}

// ---- setup -----------------------------------------------------------------

struct Env {
    clock: Arc<ManualClock>,
    store: Arc<FakeStore>,
    broker: Broker,
    v: Arc<VHost>,
}

fn setup() -> Env {
    let clock = Arc::new(ManualClock::default());
    let broker = Broker::new(clock.clone());
    let store = Arc::new(FakeStore::default());
    broker.set_store(store.clone());
    let v = broker.vhost("/").expect("default vhost");
    Env {
        clock,
        store,
        broker,
        v,
    }
}

fn message(rk: &str, body: &str, delivery_mode: Option<u8>) -> Arc<Message> {
    let props = BasicProperties {
        delivery_mode,
        ..Default::default()
    };
    Arc::new(Message::with_properties(
        ShortStr::from(""),
        ShortStr::from(rk),
        props,
        Bytes::copy_from_slice(body.as_bytes()),
    ))
}

fn persistent(rk: &str, body: &str) -> Arc<Message> {
    message(rk, body, Some(2))
}

fn long_str(s: &str) -> FieldValue {
    FieldValue::LongString(Bytes::copy_from_slice(s.as_bytes()))
}

fn args(list: &[(&str, FieldValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in list {
        t.insert(ShortStr::from(*k), v.clone());
    }
    t
}

fn durable(list: &[(&str, FieldValue)]) -> QueueOptions {
    QueueOptions {
        durable: true,
        arguments: args(list),
        ..Default::default()
    }
}

fn transient_queue() -> QueueOptions {
    QueueOptions::default()
}

fn declare(v: &Arc<VHost>, name: &str, options: QueueOptions) -> Arc<Queue> {
    v.declare_queue(name, options, false, 1)
        .expect("queue declared")
}

fn fanout(v: &Arc<VHost>, name: &str, queues: &[&str]) {
    v.declare_exchange(name, "fanout", ExchangeOptions::default(), false)
        .expect("exchange declared");
    for q in queues {
        v.bind_queue(q, name, "", FieldTable::default(), 1)
            .expect("bound");
    }
}

fn publish(v: &VHost, exchange: &str, m: Arc<Message>) -> PublishOutcome {
    v.publish(exchange, m).expect("published")
}

fn qid(q: &Queue) -> u32 {
    q.store_id().expect("queue has a store id")
}

fn body(m: &Message) -> String {
    String::from_utf8_lossy(&m.body).into_owned()
}

fn ready(q: &Queue) -> u64 {
    q.stats().messages_ready
}

/// The one append recorded so far: (queue ids, message id, lsn).
fn only_append(store: &FakeStore) -> (Vec<u32>, u64, u64) {
    let mut a = store.appends();
    assert_eq!(
        a.len(),
        1,
        "expected exactly one append: {:?}",
        store.calls()
    );
    a.remove(0)
}

fn sorted(mut v: Vec<u32>) -> Vec<u32> {
    v.sort_unstable();
    v
}

// ---- what is appended ------------------------------------------------------

#[test]
fn persistent_message_is_appended_once_with_exactly_the_durable_queue_ids() {
    let env = setup();
    let d1 = declare(&env.v, "d1", durable(&[]));
    let d2 = declare(&env.v, "d2", durable(&[]));
    let t = declare(&env.v, "t", transient_queue());
    assert_eq!(t.store_id(), None);
    assert_ne!(qid(&d1), qid(&d2));
    fanout(&env.v, "fan", &["d1", "d2", "t"]);
    env.store.clear();

    let before = unix_millis_now();
    // As a front end builds it: with the exchange it was published to.
    let m = Arc::new(Message::with_properties(
        ShortStr::from("fan"),
        ShortStr::from("rk"),
        BasicProperties {
            delivery_mode: Some(2),
            ..Default::default()
        },
        Bytes::from_static(b"hello"),
    ));
    let out = publish(&env.v, "fan", m.clone());
    let after = unix_millis_now();

    let (queues, id, lsn) = only_append(&env.store);
    assert_eq!(sorted(queues), sorted(vec![qid(&d1), qid(&d2)]));
    assert_eq!(out.routed, 3);
    assert!(!out.rejected);
    assert!(!out.store_failed);
    assert_eq!(out.lsn, lsn, "outcome carries the store's position");
    assert_ne!(out.lsn, 0);
    assert!(env.store.removed().is_empty());

    // The record is the message, stamped with its publish time.
    let record = env.store.record(id).expect("record kept");
    let (back, at) = decode_record(&record).expect("record decodes");
    assert!(
        (before..=after).contains(&at),
        "{before} <= {at} <= {after}"
    );
    assert_eq!(&*back.exchange, "fan");
    assert_eq!(&*back.routing_key, "rk");
    assert_eq!(back.properties, m.properties);
    assert_eq!(body(&back), "hello");

    // Each durable queue holds it under the store id, the other without.
    assert_eq!(d1.get(false).expect("in d1").stored, Some(id));
    assert_eq!(d2.get(false).expect("in d2").stored, Some(id));
    assert_eq!(t.get(false).expect("in t").stored, None);
}

#[test]
fn every_persistent_publish_gets_its_own_id_and_a_growing_lsn() {
    let env = setup();
    let q = declare(&env.v, "q", durable(&[]));
    let a = publish(&env.v, "", persistent("q", "a"));
    let b = publish(&env.v, "", persistent("q", "b"));
    let appends = env.store.appends();
    assert_eq!(appends.len(), 2);
    assert_ne!(appends[0].1, appends[1].1);
    assert_eq!((a.lsn, b.lsn), (appends[0].2, appends[1].2));
    assert!(b.lsn > a.lsn);
    assert_eq!(q.get(true).expect("a").stored, None); // no-ack get reports none
    assert_eq!(
        env.store.removed(),
        [(qid(&q), appends[0].1)],
        "no-ack get removed the first"
    );
}

#[test]
fn transient_messages_are_not_appended() {
    let env = setup();
    let d = declare(&env.v, "d", durable(&[]));
    declare(&env.v, "t", transient_queue());
    fanout(&env.v, "fan", &["d", "t"]);
    env.store.clear();
    for mode in [Some(1), None] {
        let out = publish(&env.v, "fan", message("rk", "x", mode));
        assert_eq!(out.lsn, 0, "delivery mode {mode:?}");
        assert_eq!(out.routed, 2);
        assert!(!out.rejected && !out.store_failed);
    }
    assert!(env.store.calls().is_empty(), "{:?}", env.store.calls());
    // In the durable queue, in memory only; acking it reports nothing.
    let got = d.get(false).expect("ready");
    assert_eq!(got.stored, None);
    d.ack(1, got.stored);
    let _ = d.get(true).expect("second one");
    assert!(env.store.calls().is_empty(), "{:?}", env.store.calls());
}

#[test]
fn persistent_message_reaching_only_non_durable_or_exclusive_queues_is_not_appended() {
    let env = setup();
    let t = declare(&env.v, "t", transient_queue());
    let excl = env
        .v
        .declare_queue(
            "mine",
            QueueOptions {
                durable: true,
                exclusive_owner: Some(7),
                ..Default::default()
            },
            false,
            7,
        )
        .expect("exclusive queue");
    assert_eq!(excl.store_id(), None, "exclusive queues are not stored");
    assert_eq!(t.store_id(), None);
    fanout(&env.v, "fan", &["t"]);
    env.v
        .bind_queue("mine", "fan", "", FieldTable::default(), 7)
        .expect("bound");
    env.store.clear();

    let out = publish(&env.v, "fan", persistent("rk", "x"));
    assert_eq!(out.routed, 2);
    assert_eq!(out.lsn, 0);
    assert!(!out.rejected && !out.store_failed);
    // Unroutable: nothing either.
    let out = publish(&env.v, "", persistent("nowhere", "x"));
    assert_eq!((out.routed, out.lsn), (0, 0));
    assert!(env.store.calls().is_empty(), "{:?}", env.store.calls());
    assert_eq!(excl.get(false).expect("ready").stored, None);
    assert_eq!(t.get(false).expect("ready").stored, None);
}

#[test]
fn only_new_durable_non_exclusive_queues_ask_for_a_store_id() {
    let env = setup();
    let d = declare(&env.v, "d", durable(&[]));
    // Redeclaring the same queue does not ask again.
    let again = declare(&env.v, "d", durable(&[]));
    assert!(Arc::ptr_eq(&d, &again));
    declare(&env.v, "t", transient_queue());
    env.v
        .declare_queue(
            "mine",
            QueueOptions {
                durable: true,
                exclusive_owner: Some(7),
                ..Default::default()
            },
            false,
            7,
        )
        .expect("exclusive queue");
    let named = declare(&env.v, "", durable(&[]));
    assert!(named.store_id().is_some(), "server-named durable queue");
    assert_eq!(
        env.store.calls(),
        [
            Call::QueueId {
                vhost: "/".into(),
                queue: "d".into(),
                id: d.store_id(),
            },
            Call::QueueId {
                vhost: "/".into(),
                queue: named.name().to_string(),
                id: named.store_id(),
            },
        ]
    );
}

#[test]
fn durable_queue_without_a_store_id_keeps_persistent_messages_in_memory() {
    let env = setup();
    env.store.inner.lock().no_queue_ids = true;
    let q = declare(&env.v, "q", durable(&[]));
    assert_eq!(q.store_id(), None);
    env.store.clear();
    let out = publish(&env.v, "", persistent("q", "x"));
    assert_eq!((out.routed, out.lsn), (1, 0));
    assert!(env.store.calls().is_empty());
    let got = q.get(false).expect("ready");
    assert_eq!(got.stored, None);
}

#[test]
fn queues_declared_before_the_store_was_set_keep_messages_in_memory() {
    let clock = Arc::new(ManualClock::default());
    let broker = Broker::new(clock);
    let v = broker.vhost("/").expect("default vhost");
    let early = declare(&v, "early", durable(&[]));
    let store = Arc::new(FakeStore::default());
    broker.set_store(store.clone());
    assert!(v.store().is_some());
    let late = declare(&v, "late", durable(&[]));
    assert_eq!(early.store_id(), None);
    assert!(late.store_id().is_some());
    store.clear();

    let out = publish(&v, "", persistent("early", "x"));
    assert_eq!(out.lsn, 0);
    assert!(store.calls().is_empty());
    let out = publish(&v, "", persistent("late", "y"));
    let (queues, _, lsn) = only_append(&store);
    assert_eq!(queues, [qid(&late)]);
    assert_eq!(out.lsn, lsn);

    // A vhost added after the store was set has it too.
    let other = broker.add_vhost("other");
    assert!(other.store().is_some());
    let q = declare(&other, "q", durable(&[]));
    assert!(q.store_id().is_some());
    assert!(store.calls().contains(&Call::QueueId {
        vhost: "other".into(),
        queue: "q".into(),
        id: q.store_id(),
    }));
}

#[test]
fn confirm_waits_for_the_synced_position_of_the_publish() {
    let env = setup();
    declare(&env.v, "q", durable(&[]));
    let out = publish(&env.v, "", persistent("q", "x"));
    assert!(out.lsn > 0);
    let store: Arc<dyn MessageStore> = env.broker.store().expect("store").clone();
    assert!(store.synced() < out.lsn);

    let waker = Arc::new(CountingWaker::default());
    store.wake_when_synced(out.lsn, waker.clone());
    assert_eq!(env.store.registrations(), [out.lsn]);
    assert_eq!(waker.count(), 0);
    env.store.sync_to(out.lsn - 1);
    assert_eq!(waker.count(), 0, "not durable yet");
    env.store.sync_to(out.lsn);
    assert_eq!(waker.count(), 1);
    assert!(store.synced() >= out.lsn);
    env.store.sync_to(out.lsn + 100);
    assert_eq!(waker.count(), 1, "woken once");

    // A position already synced wakes at once.
    let now = Arc::new(CountingWaker::default());
    store.wake_when_synced(out.lsn, now.clone());
    assert_eq!(now.count(), 1);
}

// ---- acknowledgements and deliveries ------------------------------------------

#[test]
fn ack_of_a_delivered_stored_message_removes_it() {
    let env = setup();
    let q = declare(&env.v, "q", durable(&[]));
    let sink = consume(&q, 1, false);
    publish(&env.v, "", persistent("q", "a"));
    publish(&env.v, "", persistent("q", "b"));
    publish(&env.v, "", persistent("q", "c"));
    let ids: Vec<u64> = env.store.appends().iter().map(|a| a.1).collect();
    let got = sink.take();
    assert_eq!(got.len(), 3);
    assert_eq!(
        got.iter().map(|d| d.stored).collect::<Vec<_>>(),
        ids.iter().copied().map(Some).collect::<Vec<_>>()
    );
    assert!(
        env.store.removed().is_empty(),
        "nothing gone before the ack"
    );

    got[0].ack();
    assert_eq!(
        env.store.calls().last(),
        Some(&Call::Remove(vec![(qid(&q), ids[0])]))
    );
    // A multiple ack reports all of them in one call.
    q.ack(2, got[1..].iter().filter_map(|d| d.stored));
    assert_eq!(
        env.store.calls().last(),
        Some(&Call::Remove(vec![(qid(&q), ids[1]), (qid(&q), ids[2])]))
    );
    assert_eq!(
        env.store.removed(),
        [(qid(&q), ids[0]), (qid(&q), ids[1]), (qid(&q), ids[2])]
    );
    assert_eq!(q.stats().messages_unacknowledged, 0);
}

#[test]
fn ack_of_transient_deliveries_reports_nothing() {
    let env = setup();
    let q = declare(&env.v, "q", durable(&[]));
    let sink = consume(&q, 1, false);
    publish(&env.v, "", message("q", "t", Some(1)));
    let got = sink.take();
    assert_eq!(got[0].stored, None);
    got[0].ack();
    assert!(env.store.removed().is_empty());
}

#[test]
fn no_ack_consumer_delivery_removes_at_delivery() {
    let env = setup();
    let q = declare(&env.v, "q", durable(&[]));
    // A message waiting before the consumer comes, and one after.
    publish(&env.v, "", persistent("q", "early"));
    let sink = consume(&q, 1, true);
    publish(&env.v, "", persistent("q", "late"));
    let ids: Vec<u64> = env.store.appends().iter().map(|a| a.1).collect();
    let got = sink.take();
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|d| !d.needs_ack && d.stored.is_none()));
    assert_eq!(env.store.removed(), [(qid(&q), ids[0]), (qid(&q), ids[1])]);
    // The late one was appended, then removed at once on delivery.
    let calls = env.store.calls();
    let n = calls.len();
    assert!(matches!(&calls[n - 2], Call::Append { id, .. } if *id == ids[1]));
    assert_eq!(calls[n - 1], Call::Remove(vec![(qid(&q), ids[1])]));
}

#[test]
fn basic_get_with_no_ack_removes_at_delivery() {
    let env = setup();
    let q = declare(&env.v, "q", durable(&[]));
    publish(&env.v, "", persistent("q", "x"));
    let (_, id, _) = only_append(&env.store);
    let got = q.get(true).expect("ready");
    assert_eq!(got.stored, None, "nothing left to ack");
    assert_eq!(env.store.removed(), [(qid(&q), id)]);
}

#[test]
fn basic_get_then_ack_removes() {
    let env = setup();
    let q = declare(&env.v, "q", durable(&[]));
    publish(&env.v, "", persistent("q", "x"));
    let (_, id, _) = only_append(&env.store);
    let got = q.get(false).expect("ready");
    assert_eq!(got.stored, Some(id));
    assert!(env.store.removed().is_empty(), "not gone until acked");
    q.ack(1, got.stored);
    assert_eq!(env.store.removed(), [(qid(&q), id)]);
}

#[test]
fn requeue_keeps_the_store_id() {
    let env = setup();
    let q = declare(&env.v, "q", durable(&[]));
    publish(&env.v, "", persistent("q", "x"));
    let (_, id, _) = only_append(&env.store);
    let sink = consume(&q, 1, false);
    let first = sink.take();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].stored, Some(id));
    assert!(!first[0].redelivered);

    // Requeued (consumer went away or nacked with requeue): back to the
    // same consumer, same id, marked redelivered, nothing removed.
    q.requeue(first.iter().map(Returned::from).collect());
    assert!(env.store.removed().is_empty());
    let again = sink.take();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].stored, Some(id));
    assert!(again[0].redelivered);
    assert_eq!(env.store.appends().len(), 1, "not appended again");

    again[0].ack();
    assert_eq!(env.store.removed(), [(qid(&q), id)]);
}

#[test]
fn requeue_after_basic_get_keeps_the_store_id() {
    let env = setup();
    let q = declare(&env.v, "q", durable(&[]));
    publish(&env.v, "", persistent("q", "x"));
    let (_, id, _) = only_append(&env.store);
    let got = q.get(false).expect("ready");
    q.requeue(vec![Returned {
        message: got.message.clone(),
        seq: got.seq,
        expires_at: got.expires_at,
        stored: got.stored,
    }]);
    assert!(env.store.removed().is_empty());
    assert_eq!(q.redelivered_ids(), [id]);
    let again = q.get(false).expect("requeued");
    assert!(again.redelivered);
    assert_eq!(again.stored, Some(id));
    q.ack(1, again.stored);
    assert_eq!(env.store.removed(), [(qid(&q), id)]);
}

// ---- reject and dead-lettering ---------------------------------------------------

#[test]
fn reject_without_dead_letter_exchange_removes() {
    let env = setup();
    let q = declare(&env.v, "q", durable(&[]));
    let sink = consume(&q, 1, false);
    publish(&env.v, "", persistent("q", "x"));
    let (_, id, _) = only_append(&env.store);
    let got = sink.take();
    q.reject(got.iter().map(Returned::from).collect());
    assert_eq!(env.store.removed(), [(qid(&q), id)]);
    assert_eq!(env.store.appends().len(), 1, "nothing dead-lettered");
    assert_eq!(q.stats().messages_unacknowledged, 0);
}

/// A durable queue `work` dead-lettering through fanout `dlx` to durable
/// queue `dlq` (plus its other arguments).
fn with_dead_letter_queue(env: &Env, extra: &[(&str, FieldValue)]) -> (Arc<Queue>, Arc<Queue>) {
    env.v
        .declare_exchange("dlx", "fanout", ExchangeOptions::default(), false)
        .expect("dlx");
    let dlq = declare(&env.v, "dlq", durable(&[]));
    env.v
        .bind_queue("dlq", "dlx", "", FieldTable::default(), 1)
        .expect("bound");
    let mut list = vec![("x-dead-letter-exchange", long_str("dlx"))];
    list.extend(extra.iter().cloned());
    let work = declare(&env.v, "work", durable(&list));
    env.store.clear();
    (work, dlq)
}

#[test]
fn reject_with_dead_letter_exchange_appends_the_copy_before_removing_the_original() {
    let env = setup();
    let (work, dlq) = with_dead_letter_queue(&env, &[]);
    publish(&env.v, "", persistent("work", "x"));
    let (_, old, _) = only_append(&env.store);
    let got = work.get(false).expect("ready");
    assert_eq!(got.stored, Some(old));
    env.store.clear();

    work.reject(vec![Returned {
        message: got.message.clone(),
        seq: got.seq,
        expires_at: got.expires_at,
        stored: got.stored,
    }]);
    let calls = env.store.calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    let Call::Append {
        queues, id: new, ..
    } = &calls[0]
    else {
        panic!("the dead-lettered copy is appended first: {calls:?}");
    };
    assert_eq!(queues, &[qid(&dlq)]);
    assert_ne!(*new, old, "the copy is a new message");
    assert_eq!(calls[1], Call::Remove(vec![(qid(&work), old)]));

    // The copy is what the store has for it: with its x-death.
    let (rec, _) = decode_record(&env.store.record(*new).expect("record")).expect("decodes");
    assert_eq!(&*rec.exchange, "dlx");
    let headers = rec.properties.headers.expect("x-death headers");
    assert!(headers.get("x-death").is_some());
    assert_eq!(rec.properties.delivery_mode, Some(2));

    let dead = dlq.get(false).expect("dead-lettered");
    assert_eq!(dead.stored, Some(*new));
    assert_eq!(body(&dead.message), "x");
}

#[test]
fn reject_dead_lettered_back_into_the_same_queue_is_a_new_stored_message() {
    let env = setup();
    env.v
        .declare_exchange("retry", "fanout", ExchangeOptions::default(), false)
        .expect("exchange");
    let q = declare(
        &env.v,
        "q",
        durable(&[("x-dead-letter-exchange", long_str("retry"))]),
    );
    env.v
        .bind_queue("q", "retry", "", FieldTable::default(), 1)
        .expect("bound");
    publish(&env.v, "", persistent("q", "x"));
    let (_, old, _) = only_append(&env.store);
    let got = q.get(false).expect("ready");
    env.store.clear();
    q.reject(vec![Returned {
        message: got.message,
        seq: got.seq,
        expires_at: got.expires_at,
        stored: got.stored,
    }]);
    let calls = env.store.calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    let Call::Append {
        queues, id: new, ..
    } = &calls[0]
    else {
        panic!("{calls:?}");
    };
    assert_eq!(queues, &[qid(&q)]);
    assert_ne!(*new, old);
    assert_eq!(calls[1], Call::Remove(vec![(qid(&q), old)]));
    let again = q.get(false).expect("dead-lettered back");
    assert_eq!(again.stored, Some(*new));
    assert!(!again.redelivered, "a dead-lettered copy is a new message");
}

#[test]
fn reject_to_a_dead_letter_exchange_with_only_transient_queues_just_removes() {
    let env = setup();
    env.v
        .declare_exchange("dlx", "fanout", ExchangeOptions::default(), false)
        .expect("dlx");
    let dlq = declare(&env.v, "dlq", transient_queue());
    env.v
        .bind_queue("dlq", "dlx", "", FieldTable::default(), 1)
        .expect("bound");
    let work = declare(
        &env.v,
        "work",
        durable(&[("x-dead-letter-exchange", long_str("dlx"))]),
    );
    publish(&env.v, "", persistent("work", "x"));
    let (_, id, _) = only_append(&env.store);
    let got = work.get(false).expect("ready");
    env.store.clear();
    work.reject(vec![Returned {
        message: got.message,
        seq: got.seq,
        expires_at: got.expires_at,
        stored: got.stored,
    }]);
    assert_eq!(env.store.calls(), [Call::Remove(vec![(qid(&work), id)])]);
    assert_eq!(ready(&dlq), 1);
}

// ---- expiry and length limits ---------------------------------------------------

#[test]
fn message_ttl_expiry_removes() {
    let env = setup();
    let q = declare(
        &env.v,
        "q",
        durable(&[("x-message-ttl", FieldValue::I32(100))]),
    );
    publish(&env.v, "", persistent("q", "x"));
    let (_, id, _) = only_append(&env.store);
    env.clock.advance(Duration::from_millis(99));
    env.v.tick();
    assert!(env.store.removed().is_empty());
    assert_eq!(ready(&q), 1);
    env.clock.advance(Duration::from_millis(1));
    env.v.tick();
    assert_eq!(ready(&q), 0);
    assert_eq!(env.store.removed(), [(qid(&q), id)]);
}

#[test]
fn per_message_expiration_removes_on_queue_tick() {
    let env = setup();
    let q = declare(&env.v, "q", durable(&[]));
    let props = BasicProperties {
        delivery_mode: Some(2),
        expiration: Some(ShortStr::from("50")),
        ..Default::default()
    };
    let m = Message::with_properties(
        ShortStr::from(""),
        ShortStr::from("q"),
        props,
        Bytes::from_static(b"x"),
    );
    publish(&env.v, "", Arc::new(m));
    let (_, id, _) = only_append(&env.store);
    env.clock.advance(Duration::from_millis(50));
    assert!(!q.tick(), "the queue itself does not expire");
    assert_eq!(env.store.removed(), [(qid(&q), id)]);
}

#[test]
fn expired_head_found_by_basic_get_is_removed() {
    let env = setup();
    let q = declare(
        &env.v,
        "q",
        durable(&[("x-message-ttl", FieldValue::I32(10))]),
    );
    publish(&env.v, "", persistent("q", "old"));
    env.clock.advance(Duration::from_millis(10));
    assert!(q.get(false).is_none());
    let (_, id, _) = only_append(&env.store);
    assert_eq!(env.store.removed(), [(qid(&q), id)]);
}

#[test]
fn ttl_expiry_into_a_durable_dead_letter_queue_appends_before_removing() {
    let env = setup();
    let (work, dlq) = with_dead_letter_queue(&env, &[("x-message-ttl", FieldValue::I32(100))]);
    publish(&env.v, "", persistent("work", "x"));
    let (_, old, _) = only_append(&env.store);
    env.store.clear();
    env.clock.advance(Duration::from_millis(100));
    env.v.tick();
    let calls = env.store.calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    let Call::Append {
        queues, id: new, ..
    } = &calls[0]
    else {
        panic!("dead-lettered copy first: {calls:?}");
    };
    assert_eq!(queues, &[qid(&dlq)]);
    assert_eq!(calls[1], Call::Remove(vec![(qid(&work), old)]));
    assert_eq!(dlq.get(false).expect("dead").stored, Some(*new));
}

#[test]
fn max_length_drop_head_removes_the_dropped_message() {
    let env = setup();
    let q = declare(
        &env.v,
        "q",
        durable(&[("x-max-length", FieldValue::I32(2))]),
    );
    for b in ["a", "b", "c"] {
        let out = publish(&env.v, "", persistent("q", b));
        assert!(!out.rejected);
    }
    let ids: Vec<u64> = env.store.appends().iter().map(|a| a.1).collect();
    assert_eq!(ids.len(), 3);
    assert_eq!(env.store.removed(), [(qid(&q), ids[0])]);
    // The third append is followed at once by the removal of the first.
    let calls = env.store.calls();
    assert_eq!(calls.last(), Some(&Call::Remove(vec![(qid(&q), ids[0])])));
    let left: Vec<Option<u64>> = std::iter::from_fn(|| q.get(false))
        .map(|g| g.stored)
        .collect();
    assert_eq!(left, [Some(ids[1]), Some(ids[2])]);
}

#[test]
fn max_length_bytes_drop_head_removes_the_dropped_messages() {
    let env = setup();
    let q = declare(
        &env.v,
        "q",
        durable(&[("x-max-length-bytes", FieldValue::I32(10))]),
    );
    publish(&env.v, "", persistent("q", "aaaa"));
    publish(&env.v, "", persistent("q", "bbbb"));
    publish(&env.v, "", persistent("q", "cccccccc"));
    let ids: Vec<u64> = env.store.appends().iter().map(|a| a.1).collect();
    assert_eq!(env.store.removed(), [(qid(&q), ids[0]), (qid(&q), ids[1])]);
    assert_eq!(ready(&q), 1);
}

#[test]
fn reject_publish_overflow_removes_the_refused_message_right_after_its_append() {
    let env = setup();
    let strict = declare(
        &env.v,
        "strict",
        durable(&[
            ("x-max-length", FieldValue::I32(1)),
            ("x-overflow", long_str("reject-publish")),
        ]),
    );
    let other = declare(&env.v, "other", durable(&[]));
    fanout(&env.v, "fan", &["strict", "other"]);
    env.store.clear();

    let first = publish(&env.v, "fan", persistent("rk", "1"));
    assert!(!first.rejected);
    let second = publish(&env.v, "fan", persistent("rk", "2"));
    assert!(second.rejected, "publisher gets a nack");
    assert!(!second.store_failed);
    assert_eq!(second.routed, 2);

    let calls = env.store.calls();
    assert_eq!(calls.len(), 3, "{calls:?}");
    let Call::Append { queues, id, lsn } = &calls[1] else {
        panic!("second append: {calls:?}");
    };
    assert_eq!(
        sorted(queues.clone()),
        sorted(vec![qid(&strict), qid(&other)])
    );
    assert_eq!(second.lsn, *lsn);
    // Only the refusing queue lets go of it; the other keeps it.
    assert_eq!(calls[2], Call::Remove(vec![(qid(&strict), *id)]));
    assert_eq!(ready(&strict), 1);
    assert_eq!(ready(&other), 2);
}

#[test]
fn reject_publish_dlx_overflow_appends_the_dead_copy_before_removing() {
    let env = setup();
    let (work, dlq) = with_dead_letter_queue(
        &env,
        &[
            ("x-max-length", FieldValue::I32(1)),
            ("x-overflow", long_str("reject-publish-dlx")),
        ],
    );
    publish(&env.v, "", persistent("work", "1"));
    env.store.clear();
    let out = publish(&env.v, "", persistent("work", "2"));
    assert!(out.rejected);
    let calls = env.store.calls();
    assert_eq!(calls.len(), 3, "{calls:?}");
    let Call::Append {
        queues,
        id: refused,
        ..
    } = &calls[0]
    else {
        panic!("{calls:?}");
    };
    assert_eq!(queues, &[qid(&work)]);
    let Call::Append {
        queues, id: copy, ..
    } = &calls[1]
    else {
        panic!("dead copy appended before the removal: {calls:?}");
    };
    assert_eq!(queues, &[qid(&dlq)]);
    assert_eq!(calls[2], Call::Remove(vec![(qid(&work), *refused)]));
    assert_eq!(dlq.get(false).expect("dead").stored, Some(*copy));
}

// ---- purge and delete ------------------------------------------------------

#[test]
fn purge_removes_every_ready_stored_message() {
    let env = setup();
    let q = declare(&env.v, "q", durable(&[]));
    for b in ["a", "b", "c"] {
        publish(&env.v, "", persistent("q", b));
    }
    publish(&env.v, "", message("q", "transient", Some(1)));
    let ids: Vec<u64> = env.store.appends().iter().map(|a| a.1).collect();
    // "a" is delivered and not acked: purge leaves it alone.
    let unacked = q.get(false).expect("a");
    assert_eq!(unacked.stored, Some(ids[0]));
    env.store.clear();

    assert_eq!(q.purge(), 3);
    assert_eq!(
        env.store.calls(),
        [Call::Remove(vec![(qid(&q), ids[1]), (qid(&q), ids[2])])],
        "one call for the ready stored ones"
    );
    assert_eq!(ready(&q), 0);
    q.ack(1, unacked.stored);
    assert_eq!(env.store.removed().last(), Some(&(qid(&q), ids[0])));

    // An empty purge says nothing.
    env.store.clear();
    assert_eq!(q.purge(), 0);
    assert!(env.store.calls().is_empty());
}

#[test]
fn deleting_a_durable_queue_calls_queue_deleted_without_per_message_removes() {
    let env = setup();
    let q = declare(&env.v, "q", durable(&[]));
    let id = qid(&q);
    let t = declare(&env.v, "t", transient_queue());
    for b in ["a", "b", "c"] {
        publish(&env.v, "", persistent("q", b));
        publish(&env.v, "", persistent("t", b));
    }
    let _unacked = q.get(false).expect("a");
    env.store.clear();

    assert_eq!(
        env.v.delete_queue("q", false, false, 1).expect("deleted"),
        2
    );
    assert_eq!(
        env.store.calls(),
        [Call::QueueDeleted {
            vhost: "/".into(),
            queue: "q".into(),
            id,
        }]
    );
    // A non-durable queue has nothing in the store.
    env.store.clear();
    assert_eq!(
        env.v.delete_queue("t", false, false, 1).expect("deleted"),
        3
    );
    assert!(env.store.calls().is_empty());
    assert!(t.is_deleted());

    // A message routed before the delete and enqueued after it is let go.
    env.store.clear();
    publish_to_deleted(&env, &q);
}

/// Enqueue a stored message into a queue that is already deleted: the
/// queue reports it gone (the store already forgot the queue).
fn publish_to_deleted(env: &Env, q: &Arc<Queue>) {
    assert!(q.is_deleted());
    let routed: liebre_core::vhost::Routed = std::iter::once(q.clone()).collect();
    let out = env.v.enqueue_all(&routed, persistent("q", "late"));
    let appends = env.store.appends();
    assert_eq!(appends.len(), 1);
    assert_eq!(out.lsn, appends[0].2);
    assert_eq!(env.store.removed(), [(qid(q), appends[0].1)]);
}

#[test]
fn auto_delete_of_a_durable_queue_calls_queue_deleted() {
    let env = setup();
    let q = declare(
        &env.v,
        "ad",
        QueueOptions {
            durable: true,
            auto_delete: true,
            ..Default::default()
        },
    );
    let sink = consume(&q, 1, false);
    publish(&env.v, "", persistent("ad", "x"));
    let (_, id, _) = only_append(&env.store);
    let got = sink.take();
    env.store.clear();
    assert!(q.remove_consumer(1));
    assert!(q.is_deleted());
    assert_eq!(
        env.store.calls(),
        [Call::QueueDeleted {
            vhost: "/".into(),
            queue: "ad".into(),
            id: qid(&q),
        }]
    );
    // The channel then settles what it held (requeue into a deleted queue
    // reports nothing: the store already dropped the queue).
    q.requeue(got.iter().map(Returned::from).collect());
    assert_eq!(env.store.calls().len(), 1);
    assert_eq!(got[0].stored, Some(id));
}

#[test]
fn queue_deletion_by_x_expires_and_by_vhost_deletion_calls_queue_deleted() {
    let env = setup();
    let q = declare(
        &env.v,
        "idle",
        durable(&[("x-expires", FieldValue::I32(1000))]),
    );
    publish(&env.v, "", persistent("idle", "x"));
    env.store.clear();
    env.clock.advance(Duration::from_millis(1000));
    env.broker.tick();
    assert!(q.is_deleted());
    assert_eq!(
        env.store.queue_deletions(),
        [("/".to_owned(), "idle".to_owned(), qid(&q))]
    );
    assert!(env.store.removed().is_empty());

    let v2 = env.broker.add_vhost("v2");
    let q2 = declare(&v2, "q", durable(&[]));
    publish(&v2, "", persistent("q", "x"));
    env.store.clear();
    env.broker.delete_vhost("v2").expect("vhost existed");
    assert_eq!(
        env.store.calls(),
        [Call::QueueDeleted {
            vhost: "v2".into(),
            queue: "q".into(),
            id: qid(&q2),
        }]
    );
}

// ---- a refusing store ------------------------------------------------------

#[test]
fn store_refusal_nacks_and_no_queue_gets_the_message() {
    let env = setup();
    let d = declare(&env.v, "d", durable(&[]));
    let t = declare(&env.v, "t", transient_queue());
    fanout(&env.v, "fan", &["d", "t"]);
    let sink = consume(&t, 1, false);
    env.store.clear();
    env.store.refuse(Some("disk full"));

    let out = publish(&env.v, "fan", persistent("rk", "x"));
    assert_eq!(
        out,
        PublishOutcome {
            routed: 0,
            rejected: true,
            store_failed: true,
            lsn: 0,
            ..Default::default()
        }
    );
    assert_eq!(
        env.store.calls(),
        [Call::AppendRefused {
            queues: sorted(vec![qid(&d)]),
        }]
    );
    assert_eq!(ready(&d), 0);
    assert_eq!(ready(&t), 0);
    assert!(
        sink.take().is_empty(),
        "not even the transient queue got it"
    );
    assert_eq!(d.stats().published, 0);

    // Transient messages do not need the store and still go through.
    let out = publish(&env.v, "fan", message("rk", "y", None));
    assert_eq!(out.routed, 2);
    assert!(!out.rejected && !out.store_failed);
    assert_eq!(ready(&d), 1);
    assert_eq!(sink.take().len(), 1);

    // Once the store takes messages again, so do the queues.
    env.store.refuse(None);
    let out = publish(&env.v, "fan", persistent("rk", "z"));
    assert!(!out.rejected && !out.store_failed);
    assert_eq!(out.routed, 2);
    assert_eq!(ready(&d), 2);
}

// ---- recovery --------------------------------------------------------------

/// A persistent message as the store gives it back.
fn stored_message(rk: &str, body: &str, expiration: Option<&str>) -> Message {
    let props = BasicProperties {
        delivery_mode: Some(2),
        expiration: expiration.map(ShortStr::from),
        ..Default::default()
    };
    Message::with_properties(
        ShortStr::from(""),
        ShortStr::from(rk),
        props,
        Bytes::copy_from_slice(body.as_bytes()),
    )
}

/// The only place a `Recovered` is built.
fn recovered_as(id: u64, message: Message, published_at_ms: u64, redelivered: bool) -> Recovered {
    Recovered {
        id,
        message: Some(message),
        published_at_ms,
        redelivered,
    }
}

fn recovered(id: u64, body: &str, published_at_ms: u64, redelivered: bool) -> Recovered {
    recovered_as(
        id,
        stored_message("q", body, None),
        published_at_ms,
        redelivered,
    )
}

#[test]
fn restore_gives_messages_back_in_order_with_their_redelivered_flags() {
    let env = setup();
    let q = declare(&env.v, "q", durable(&[]));
    env.store.clear();
    let now = unix_millis_now();
    q.restore(vec![
        recovered(7, "a", now, true),
        recovered(8, "b", now, false),
        recovered(9, "c", now, true),
    ]);
    assert!(env.store.calls().is_empty(), "restoring writes nothing");
    assert_eq!(ready(&q), 3);
    let sink = consume(&q, 1, false);
    let got = sink.take();
    let seen: Vec<(String, bool, Option<u64>)> = got
        .iter()
        .map(|d| (body(&d.message), d.redelivered, d.stored))
        .collect();
    assert_eq!(
        seen,
        [
            ("a".to_owned(), true, Some(7)),
            ("b".to_owned(), false, Some(8)),
            ("c".to_owned(), true, Some(9)),
        ]
    );
    // Restored messages are acked like any other.
    got[1].ack();
    assert_eq!(env.store.removed(), [(qid(&q), 8)]);
}

#[test]
fn restore_into_a_queue_that_is_consumed_delivers_at_once() {
    let env = setup();
    let q = declare(&env.v, "q", durable(&[]));
    let sink = consume(&q, 1, true);
    env.store.clear();
    q.restore(vec![recovered(1, "a", unix_millis_now(), false)]);
    let got = sink.take();
    assert_eq!(got.len(), 1);
    assert_eq!(
        env.store.removed(),
        [(qid(&q), 1)],
        "no-ack: gone at delivery"
    );
}

#[test]
fn restore_counts_the_ttl_from_the_publish_time() {
    let env = setup();
    let q = declare(
        &env.v,
        "q",
        durable(&[("x-message-ttl", FieldValue::I32(60_000))]),
    );
    env.store.clear();
    let now = unix_millis_now();
    q.restore(vec![
        recovered(1, "an hour old", now - 3_600_000, true),
        recovered(2, "50 s old", now - 50_000, false),
        recovered(3, "new", now, false),
    ]);
    // The first one's TTL ran out while the broker was down.
    assert_eq!(env.store.removed(), [(qid(&q), 1)]);
    assert_eq!(ready(&q), 2);
    // The second has about 10 s left, not 60.
    env.clock.advance(Duration::from_secs(9));
    q.tick();
    assert_eq!(ready(&q), 2);
    env.clock.advance(Duration::from_secs(2));
    q.tick();
    assert_eq!(ready(&q), 1);
    assert_eq!(env.store.removed(), [(qid(&q), 1), (qid(&q), 2)]);
    // The third has its full minute.
    env.clock.advance(Duration::from_secs(47));
    q.tick();
    assert_eq!(ready(&q), 1);
    env.clock.advance(Duration::from_secs(2));
    q.tick();
    assert_eq!(ready(&q), 0);
    assert_eq!(env.store.removed().last(), Some(&(qid(&q), 3)));
}

#[test]
fn restore_counts_a_per_message_expiration_from_the_publish_time() {
    let env = setup();
    let q = declare(&env.v, "q", durable(&[]));
    env.store.clear();
    let now = unix_millis_now();
    let dead = recovered_as(
        1,
        stored_message("q", "x", Some("1000")),
        now - 2_000,
        false,
    );
    let alive = recovered_as(2, stored_message("q", "y", Some("60000")), now, false);
    q.restore(vec![dead, alive]);
    assert_eq!(env.store.removed(), [(qid(&q), 1)]);
    assert_eq!(q.get(false).expect("alive").stored, Some(2));
}

#[test]
fn restore_expires_into_a_durable_dead_letter_queue() {
    let env = setup();
    let (work, dlq) = with_dead_letter_queue(&env, &[("x-message-ttl", FieldValue::I32(1000))]);
    let r = recovered_as(
        5,
        stored_message("work", "x", None),
        unix_millis_now() - 10_000,
        true,
    );
    work.restore(vec![r]);
    let calls = env.store.calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert!(matches!(&calls[0], Call::Append { queues, .. } if queues == &[qid(&dlq)]));
    assert_eq!(calls[1], Call::Remove(vec![(qid(&work), 5)]));
}

#[test]
fn restore_applies_drop_head_length_limits() {
    let env = setup();
    let q = declare(
        &env.v,
        "q",
        durable(&[("x-max-length", FieldValue::I32(2))]),
    );
    env.store.clear();
    let now = unix_millis_now();
    q.restore(vec![
        recovered(1, "a", now, false),
        recovered(2, "b", now, false),
        recovered(3, "c", now, false),
    ]);
    assert_eq!(env.store.removed(), [(qid(&q), 1)]);
    assert_eq!(ready(&q), 2);
}

/// RabbitMQ never drops the head of a `reject-publish` queue (its
/// `maybe_drop_head` is a no-op for both reject modes): the limit only
/// refuses new publishes. Messages that were confirmed before a restart
/// (ready ones plus ones delivered but unacked, which do not count
/// towards the limit) must all come back.
#[test]
fn restore_keeps_every_message_of_a_reject_publish_queue() {
    let env = setup();
    let q = declare(
        &env.v,
        "q",
        durable(&[
            ("x-max-length", FieldValue::I32(2)),
            ("x-overflow", long_str("reject-publish")),
        ]),
    );
    // Two published and delivered (unacked), two more published: four
    // confirmed messages in the store when the broker stops.
    let sink = consume(&q, 1, false);
    publish(&env.v, "", persistent("q", "a"));
    publish(&env.v, "", persistent("q", "b"));
    assert_eq!(sink.take().len(), 2);
    q.remove_consumer(1);
    assert!(!publish(&env.v, "", persistent("q", "c")).rejected);
    assert!(!publish(&env.v, "", persistent("q", "d")).rejected);
    let ids: Vec<u64> = env.store.appends().iter().map(|a| a.1).collect();
    assert_eq!(ids.len(), 4);

    // After a crash all four come back into a fresh queue.
    let env2 = setup();
    let q2 = declare(
        &env2.v,
        "q",
        durable(&[
            ("x-max-length", FieldValue::I32(2)),
            ("x-overflow", long_str("reject-publish")),
        ]),
    );
    env2.store.clear();
    let now = unix_millis_now();
    q2.restore(
        ids.iter()
            .zip(["a", "b", "c", "d"])
            .map(|(&id, b)| recovered(id, b, now, true))
            .collect(),
    );
    assert!(
        env2.store.removed().is_empty(),
        "confirmed messages dropped at restore: {:?}",
        env2.store.removed()
    );
    assert_eq!(ready(&q2), 4);
}

/// The same for a requeue: RabbitMQ's requeue does not drop the head of a
/// reject-publish queue, so nacking with requeue cannot lose a message.
#[test]
fn requeue_into_a_full_reject_publish_queue_keeps_the_message() {
    let env = setup();
    let q = declare(
        &env.v,
        "q",
        durable(&[
            ("x-max-length", FieldValue::I32(1)),
            ("x-overflow", long_str("reject-publish")),
        ]),
    );
    publish(&env.v, "", persistent("q", "a"));
    let got = q.get(false).expect("a");
    assert!(!publish(&env.v, "", persistent("q", "b")).rejected);
    env.store.clear();
    q.requeue(vec![Returned {
        message: got.message,
        seq: got.seq,
        expires_at: got.expires_at,
        stored: got.stored,
    }]);
    assert!(
        env.store.removed().is_empty(),
        "requeued message dropped: {:?}",
        env.store.removed()
    );
    assert_eq!(ready(&q), 2);
}

#[test]
fn redelivered_ids_lists_stored_ids_of_ready_redelivered_messages() {
    let env = setup();
    let q = declare(&env.v, "q", durable(&[]));
    let now = unix_millis_now();
    q.restore(vec![
        recovered(10, "a", now, true),
        recovered(11, "b", now, false),
        recovered(12, "c", now, true),
    ]);
    assert_eq!(q.redelivered_ids(), [10, 12]);

    // Delivered and unacked: not ready, not listed.
    let a = q.get(false).expect("a");
    assert_eq!(a.stored, Some(10));
    assert_eq!(q.redelivered_ids(), [12]);
    // Requeued: listed again; "b" after a requeue is redelivered too.
    let b = q.get(false).expect("b");
    q.requeue(
        [a, b]
            .into_iter()
            .map(|g| Returned {
                message: g.message,
                seq: g.seq,
                expires_at: g.expires_at,
                stored: g.stored,
            })
            .collect(),
    );
    let mut ids = q.redelivered_ids();
    ids.sort_unstable();
    assert_eq!(ids, [10, 11, 12]);

    // A transient message requeued is redelivered but has no store id.
    publish(&env.v, "", message("q", "t", None));
    for _ in 0..3 {
        let g = q.get(true).expect("restored");
        assert!(g.redelivered);
    }
    let t = q.get(false).expect("transient");
    assert_eq!(t.stored, None);
    q.requeue(vec![Returned {
        message: t.message,
        seq: t.seq,
        expires_at: t.expires_at,
        stored: t.stored,
    }]);
    assert_eq!(ready(&q), 1);
    assert!(q.redelivered_ids().is_empty());
}

#[test]
fn restore_into_a_queue_without_a_store_keeps_no_ids() {
    let env = setup();
    let t = declare(&env.v, "t", transient_queue());
    env.store.clear();
    t.restore(vec![recovered(1, "a", unix_millis_now(), true)]);
    assert!(t.redelivered_ids().is_empty());
    let got = t.get(false).expect("restored");
    assert!(got.redelivered);
    assert_eq!(got.stored, None);
    t.ack(1, got.stored);
    assert!(env.store.calls().is_empty());
}

// ---- records ---------------------------------------------------------------

#[test]
fn record_roundtrip_with_headers_and_an_empty_body() {
    let mut nested = FieldTable::default();
    nested.insert(ShortStr::from("depth"), FieldValue::I64(2));
    let headers = args(&[
        ("tenant", long_str("acme")),
        ("attempt", FieldValue::I32(3)),
        ("flag", FieldValue::Bool(true)),
        ("nested", FieldValue::Table(nested)),
        (
            "list",
            FieldValue::Array(vec![long_str("a"), FieldValue::I64(-1)]),
        ),
    ]);
    let props = BasicProperties {
        content_type: Some(ShortStr::from("application/json")),
        headers: Some(headers),
        delivery_mode: Some(2),
        priority: Some(4),
        correlation_id: Some(ShortStr::from("c-1")),
        expiration: Some(ShortStr::from("60000")),
        timestamp: Some(1_700_000_000),
        ..Default::default()
    };
    let m = Message::with_properties(
        ShortStr::from("orders"),
        ShortStr::from("eu.created"),
        props.clone(),
        Bytes::new(),
    );
    let at = 1_712_345_678_901;
    let record = encode_record(&m, at);
    let (back, back_at) = decode_record(&record).expect("decodes");
    assert_eq!(back_at, at);
    assert_eq!(&*back.exchange, "orders");
    assert_eq!(&*back.routing_key, "eu.created");
    assert_eq!(*back.properties, props);
    assert_eq!(back.raw_properties, m.raw_properties);
    assert!(back.body.is_empty());
    assert!(back.is_persistent());
    assert_eq!(back.expiration(), Some(Duration::from_secs(60)));
    // Encoding what was decoded gives the same bytes.
    assert_eq!(encode_record(&back, at), record);
    // Nothing may follow an empty body's record and still mean the same:
    // extra bytes become the body.
    let mut longer = record.to_vec();
    longer.extend_from_slice(b"zz");
    let (with_body, _) = decode_record(&Bytes::from(longer)).expect("decodes");
    assert_eq!(&with_body.body[..], b"zz");
}

#[test]
fn record_roundtrip_with_empty_names_and_no_properties() {
    let m = Message::with_properties(
        ShortStr::from(""),
        ShortStr::from(""),
        BasicProperties::default(),
        Bytes::new(),
    );
    let record = encode_record(&m, 0);
    let (back, at) = decode_record(&record).expect("decodes");
    assert_eq!(at, 0);
    assert!(back.exchange.is_empty() && back.routing_key.is_empty());
    assert_eq!(*back.properties, BasicProperties::default());
    assert!(back.body.is_empty());
    assert!(!back.is_persistent());
}

// ---- paging: bodies past the in-memory budget stay in the store -------------

/// Ids read back so far, over every `read` call.
fn read_ids(store: &FakeStore) -> Vec<u64> {
    store.inner.lock().reads.iter().flatten().copied().collect()
}

fn paged_env(max_loaded: usize) -> Env {
    let env = setup();
    env.broker.set_queue_max_loaded(max_loaded);
    env
}

#[test]
fn stored_messages_past_the_budget_are_paged_out_and_read_back_in_order() {
    let env = paged_env(4);
    let q = declare(&env.v, "q", durable(&[]));
    for i in 0..20 {
        publish(&env.v, "", persistent("q", &format!("m{i}")));
    }
    assert_eq!(ready(&q), 20);
    assert!(
        read_ids(&env.store).is_empty(),
        "nothing read while publishing"
    );
    let sink = consume(&q, 1, false);
    let got = sink.take();
    let bodies: Vec<String> = got.iter().map(|d| body(&d.message)).collect();
    assert_eq!(bodies, (0..20).map(|i| format!("m{i}")).collect::<Vec<_>>());
    // The first 4 stayed in memory; the 16 others were read back, in batches.
    let appended: Vec<u64> = env
        .store
        .appends()
        .into_iter()
        .map(|(_, id, _)| id)
        .collect();
    assert_eq!(read_ids(&env.store), appended[4..].to_vec());
    assert!(got.iter().all(|d| d.stored.is_some()));
    // Acks of read-back messages remove them like any other.
    got[10].ack();
    assert_eq!(env.store.removed(), [(qid(&q), appended[10])]);
}

#[test]
fn transient_messages_of_a_durable_queue_are_paged_out_through_the_store_too() {
    let env = paged_env(2);
    let dq = declare(&env.v, "dq", durable(&[]));
    for i in 0..6 {
        let out = publish(&env.v, "", message("dq", &format!("t{i}"), None));
        assert_eq!(out.lsn, 0, "a transient publish never waits for the disk");
    }
    // The first two stay in memory; the four others went to the store
    // for this queue only, to be paged out.
    let appended = env.store.appends();
    assert_eq!(appended.len(), 4);
    assert!(appended.iter().all(|(qs, _, _)| qs == &[qid(&dq)]));
    let sink = consume(&dq, 1, false);
    let got = sink.take();
    let bodies: Vec<String> = got.iter().map(|d| body(&d.message)).collect();
    assert_eq!(bodies, ["t0", "t1", "t2", "t3", "t4", "t5"]);
    for d in &got {
        d.ack();
    }
    let ids: Vec<u64> = appended.iter().map(|(_, id, _)| *id).collect();
    assert_eq!(
        env.store.removed(),
        ids.iter().map(|id| (qid(&dq), *id)).collect::<Vec<_>>()
    );
}

#[test]
fn transient_queues_are_never_paged() {
    let env = paged_env(2);
    let tq = declare(&env.v, "tq", transient_queue());
    for i in 0..10 {
        publish(&env.v, "", persistent("tq", &format!("p{i}")));
    }
    assert_eq!(consume(&tq, 2, true).take().len(), 10);
    assert!(env.store.appends().is_empty());
    assert!(read_ids(&env.store).is_empty());
}

#[test]
fn transient_messages_paged_out_before_a_restart_do_not_come_back() {
    let env = paged_env(1);
    let q = declare(&env.v, "q", durable(&[]));
    let now = unix_millis_now();
    let transient = Message::with_properties(
        ShortStr::from(""),
        ShortStr::from("q"),
        BasicProperties::default(),
        Bytes::from_static(b"t"),
    );
    env.store
        .inner
        .lock()
        .records
        .insert(702, encode_record(&transient, now));
    env.store
        .inner
        .lock()
        .records
        .insert(703, encode_record(&stored_message("q", "p2", None), now));
    q.restore(vec![
        recovered(700, "p0", now, false),
        recovered_as(701, transient.clone(), now, false),
        // Recovered without body: known transient only once read back.
        Recovered {
            id: 702,
            message: None,
            published_at_ms: 0,
            redelivered: true,
        },
        Recovered {
            id: 703,
            message: None,
            published_at_ms: 0,
            redelivered: true,
        },
    ]);
    let got: Vec<String> = consume(&q, 1, true)
        .take()
        .iter()
        .map(|d| body(&d.message))
        .collect();
    assert_eq!(got, ["p0", "p2"]);
    let removed = env.store.removed();
    assert!(removed.contains(&(qid(&q), 701)) && removed.contains(&(qid(&q), 702)));
}

#[test]
fn basic_get_reads_back_a_paged_message() {
    let env = paged_env(1);
    let q = declare(&env.v, "q", durable(&[]));
    for i in 0..3 {
        publish(&env.v, "", persistent("q", &format!("m{i}")));
    }
    let got: Vec<String> = std::iter::from_fn(|| q.get(true))
        .map(|g| body(&g.message))
        .collect();
    assert_eq!(got, ["m0", "m1", "m2"]);
    assert_eq!(read_ids(&env.store).len(), 2);
}

#[test]
fn paged_messages_expire_and_are_dead_lettered_with_their_body() {
    let env = paged_env(2);
    declare(&env.v, "dlq", durable(&[]));
    let q = declare(
        &env.v,
        "q",
        durable(&[
            ("x-message-ttl", FieldValue::I32(1000)),
            (
                "x-dead-letter-exchange",
                FieldValue::LongString(Bytes::from_static(b"")),
            ),
            (
                "x-dead-letter-routing-key",
                FieldValue::LongString(Bytes::from_static(b"dlq")),
            ),
        ]),
    );
    for i in 0..6 {
        publish(&env.v, "", persistent("q", &format!("m{i}")));
    }
    env.clock.advance(Duration::from_secs(2));
    env.v.tick();
    assert_eq!(ready(&q), 0);
    let dlq = env.v.queue("dlq").expect("dlq");
    let got: Vec<String> = std::iter::from_fn(|| dlq.get(true))
        .map(|g| body(&g.message))
        .collect();
    assert_eq!(got, (0..6).map(|i| format!("m{i}")).collect::<Vec<_>>());
}

#[test]
fn paged_messages_expire_without_a_read_when_there_is_no_dead_letter_exchange() {
    let env = paged_env(2);
    let q = declare(
        &env.v,
        "q",
        durable(&[("x-message-ttl", FieldValue::I32(1000))]),
    );
    for i in 0..6 {
        publish(&env.v, "", persistent("q", &format!("m{i}")));
    }
    env.clock.advance(Duration::from_secs(2));
    env.v.tick();
    assert_eq!(ready(&q), 0);
    assert!(read_ids(&env.store).is_empty());
    assert_eq!(env.store.removed().len(), 6);
}

#[test]
fn a_paged_message_the_store_no_longer_has_is_dropped_not_delivered() {
    let env = paged_env(1);
    let q = declare(&env.v, "q", durable(&[]));
    for i in 0..4 {
        publish(&env.v, "", persistent("q", &format!("m{i}")));
    }
    let lost = env.store.appends()[2].1;
    env.store.inner.lock().records.remove(&lost);
    let sink = consume(&q, 1, true);
    let got: Vec<String> = sink.take().iter().map(|d| body(&d.message)).collect();
    assert_eq!(got, ["m0", "m1", "m3"]);
    assert!(env.store.removed().contains(&(qid(&q), lost)));
}

#[test]
fn a_failing_store_keeps_messages_paged_until_it_reads_again() {
    let env = paged_env(1);
    let q = declare(&env.v, "q", durable(&[]));
    for i in 0..3 {
        publish(&env.v, "", persistent("q", &format!("m{i}")));
    }
    env.store.inner.lock().fail_reads = Some("disk on fire".into());
    let sink = consume(&q, 1, true);
    assert_eq!(sink.take().len(), 1, "the loaded head is delivered");
    assert_eq!(ready(&q), 2, "the paged ones wait");
    env.store.inner.lock().fail_reads = None;
    q.kick();
    let got: Vec<String> = sink.take().iter().map(|d| body(&d.message)).collect();
    assert_eq!(got, ["m1", "m2"]);
}

#[test]
fn restore_without_bodies_reads_them_back_and_counts_ttl_from_the_publish() {
    let env = paged_env(2);
    let q = declare(
        &env.v,
        "q",
        durable(&[("x-message-ttl", FieldValue::I32(60_000))]),
    );
    let now = unix_millis_now();
    // Bodies live in the store; recovery hands back ids only.
    let mut batch = Vec::new();
    for (i, age_ms) in [(0u64, 0u64), (1, 120_000), (2, 0), (3, 1_000)] {
        let id = 500 + i;
        let m = stored_message("q", &format!("r{i}"), None);
        env.store
            .inner
            .lock()
            .records
            .insert(id, encode_record(&m, now - age_ms));
        batch.push(Recovered {
            id,
            message: None,
            published_at_ms: 0,
            redelivered: true,
        });
    }
    q.restore(batch);
    assert_eq!(ready(&q), 4);
    let sink = consume(&q, 1, true);
    let got: Vec<String> = sink.take().iter().map(|d| body(&d.message)).collect();
    // r1 was published two minutes ago: its 60 s TTL ran out while down.
    assert_eq!(got, ["r0", "r2", "r3"]);
    assert!(env.store.removed().contains(&(qid(&q), 501)));
}

#[test]
fn restore_pages_out_bodies_past_the_budget() {
    let env = paged_env(2);
    let q = declare(&env.v, "q", durable(&[]));
    let now = unix_millis_now();
    let mut batch = Vec::new();
    for i in 0..5u64 {
        let m = stored_message("q", &format!("r{i}"), None);
        env.store
            .inner
            .lock()
            .records
            .insert(600 + i, encode_record(&m, now));
        batch.push(recovered_as(600 + i, m, now, false));
    }
    q.restore(batch);
    let sink = consume(&q, 1, true);
    let got: Vec<String> = sink.take().iter().map(|d| body(&d.message)).collect();
    assert_eq!(got, ["r0", "r1", "r2", "r3", "r4"]);
    assert_eq!(read_ids(&env.store), [602, 603, 604]);
}
