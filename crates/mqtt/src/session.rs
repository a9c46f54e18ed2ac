//! MQTT sessions: the state that outlives a connection.
//!
//! A session is a core queue bound to `amq.topic` (as in RabbitMQ's MQTT
//! plugin; a clean session declares it at its first subscription), the
//! client's subscriptions, and the QoS 1/2 messages in flight with their
//! packet identifiers, which a resumed session resends with DUP set and
//! the same identifiers. The [`Sessions`] registry finds
//! a session by (vhost, client id), takes it over from an older
//! connection, and expires it ([`Sessions::tick`]) when its Session
//! Expiry Interval has passed with no connection. Delayed wills are
//! published from the same tick.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use liebre_core::{ConsumerSink, Delivery, Outbox, Queue, Wake};
use liebre_mqtt_codec::{QoS, SubscriptionOptions};
use parking_lot::Mutex;

use crate::connection::MqttConfig;
use crate::mapping::MQTT_EXCHANGE;

/// What a connection's outbox carries.
#[derive(Debug)]
pub enum MqttEvent {
    /// A message from one of the session's queues.
    Deliver(Delivery, Arc<MqttConsumer>),
}

/// A connection's outbox.
pub type MqttOutbox = Outbox<MqttEvent>;

/// One subscription of a session.
#[derive(Debug, Clone, PartialEq)]
pub struct Subscription {
    /// Requested options (QoS is the granted maximum).
    pub options: SubscriptionOptions,
    /// MQTT 5 Subscription Identifier.
    pub identifier: Option<u32>,
    /// Shared subscription group, if `$share/{group}/...`.
    pub share: Option<String>,
}

/// A message sent to the client and not yet fully acknowledged.
#[derive(Debug)]
pub struct InFlight {
    /// The core delivery, `None` for retained messages sent on subscribe.
    pub delivery: Option<Delivery>,
    /// The consumer whose credit it holds.
    pub consumer: Option<Arc<MqttConsumer>>,
    /// QoS it was sent with (1 or 2).
    pub qos: QoS,
    /// QoS 2: PUBREC received, PUBREL sent, waiting for PUBCOMP.
    pub released: bool,
    /// What to resend: the encoded PUBLISH (without DUP) for resumption.
    pub packet: bytes::Bytes,
}

/// A will waiting for its delay to pass.
#[derive(Debug, Clone)]
pub struct PendingWill {
    /// When to publish.
    pub due: Instant,
    /// The message.
    pub message: Arc<liebre_core::Message>,
    /// MQTT topic, for the retained store.
    pub topic: String,
    /// Publish retained.
    pub retain: bool,
}

/// The persistent part of an MQTT session.
#[derive(Debug)]
pub struct Session {
    /// Client identifier (shared with the registry's key and the
    /// connection).
    pub client_id: Arc<str>,
    /// Its vhost.
    pub vhost: Arc<liebre_core::VHost>,
    /// The session queue (`mqtt-subscription-{client_id}qos1`). A clean
    /// session gets it at its first subscription
    /// ([`Session::ensure_queue`]), so an idle client that subscribes to
    /// nothing costs no queue; a persistent one has it from the start.
    pub queue: Option<Arc<Queue>>,
    /// Subscriptions by topic filter (without any `$share/` prefix).
    pub subscriptions: BTreeMap<String, Subscription>,
    /// Outgoing QoS 1/2 messages by packet id.
    pub inflight: BTreeMap<u16, InFlight>,
    /// Incoming QoS 2 packet ids between PUBREC and PUBREL (made at the
    /// first: most sessions never see QoS 2; boxed, it costs an idle
    /// session 8 bytes instead of 24).
    #[allow(clippy::box_collection)]
    incoming_qos2: Option<Box<BTreeSet<u16>>>,
    next_packet_id: u16,
    /// Session Expiry Interval.
    pub expiry: Duration,
    /// When the last connection went away (None while connected).
    pub disconnected_at: Option<Instant>,
    /// The attached connection, for takeover.
    pub connection: Option<Arc<dyn Handle>>,
    /// A will waiting for its delay.
    pub pending_will: Option<Box<PendingWill>>,
    /// Destroyed (clean start by a newer connection, or expired): a
    /// connection still holding it must leave it alone.
    pub ended: bool,
    /// The last [`SessionSnapshot`] given to the [`SessionStore`], so that
    /// only changes are written.
    saved: Option<Box<SessionSnapshot>>,
}

impl Session {
    /// What a [`SessionStore`] keeps of this session.
    pub fn snapshot(&self) -> SessionSnapshot {
        SessionSnapshot {
            client_id: self.client_id.to_string(),
            expiry: self.expiry,
            subscriptions: self
                .subscriptions
                .iter()
                .map(|(f, s)| (f.clone(), s.clone()))
                .collect(),
        }
    }

    /// Note incoming QoS 2 packet `id` as received; false if it was
    /// already.
    pub fn incoming_qos2_insert(&mut self, id: u16) -> bool {
        self.incoming_qos2.get_or_insert_default().insert(id)
    }

    /// Forget incoming QoS 2 packet `id` (PUBREL came); whether it was
    /// there.
    pub fn incoming_qos2_remove(&mut self, id: u16) -> bool {
        let Some(ids) = &mut self.incoming_qos2 else {
            return false;
        };
        let known = ids.remove(&id);
        if ids.is_empty() {
            self.incoming_qos2 = None;
        }
        known
    }

    /// How many incoming QoS 2 packets wait for their PUBREL.
    pub fn incoming_qos2_len(&self) -> usize {
        self.incoming_qos2.as_ref().map_or(0, |ids| ids.len())
    }

    /// A packet identifier not in use by an in-flight message.
    pub fn next_packet_id(&mut self) -> Option<u16> {
        for _ in 0..=u16::MAX {
            self.next_packet_id = self.next_packet_id.wrapping_add(1).max(1);
            if !self.inflight.contains_key(&self.next_packet_id) {
                return Some(self.next_packet_id);
            }
        }
        None
    }

    /// The session queue's name for `client_id`, as RabbitMQ names it.
    pub fn queue_name(client_id: &str) -> String {
        format!("mqtt-subscription-{client_id}qos1")
    }

    /// The session queue, declared now (not durable: only clean sessions
    /// start without one) if the session has none yet. `None` if the
    /// session is no longer `conn_id`'s (taken over or ended): the queue
    /// is left for the connection that holds it.
    pub fn ensure_queue(
        &mut self,
        conn_id: u64,
        config: &MqttConfig,
    ) -> Result<Option<Arc<Queue>>, liebre_core::CoreError> {
        if let Some(q) = &self.queue {
            return Ok(Some(q.clone()));
        }
        if self.ended || self.connection.as_ref().is_none_or(|c| c.id() != conn_id) {
            return Ok(None);
        }
        let queue = declare_session_queue(&self.vhost, &self.client_id, false, config, conn_id)?;
        self.queue = Some(queue.clone());
        Ok(Some(queue))
    }

    /// While the client is offline, QoS 0 subscriptions stop feeding the
    /// session queue, so only QoS 1/2 messages wait for it (Mosquitto's
    /// default, `queue_qos0_messages false`). [`Session::unpark`] undoes it.
    pub fn park_qos0(&self) {
        let Some(queue) = &self.queue else { return };
        for (filter, sub) in &self.subscriptions {
            if sub.share.is_none() && sub.options.qos == QoS::AtMostOnce {
                let key = crate::mapping::filter_to_binding_key(filter);
                let _ = self.vhost.unbind_queue(
                    queue.name(),
                    MQTT_EXCHANGE,
                    &key,
                    Default::default(),
                    0,
                );
            }
        }
    }

    /// Bind the QoS 0 subscriptions again (the client is back).
    pub fn unpark(&self) {
        let Some(queue) = &self.queue else { return };
        for (filter, sub) in &self.subscriptions {
            if sub.share.is_none() && sub.options.qos == QoS::AtMostOnce {
                let key = crate::mapping::filter_to_binding_key(filter);
                let _ =
                    self.vhost
                        .bind_queue(queue.name(), MQTT_EXCHANGE, &key, Default::default(), 0);
            }
        }
    }

    /// Drop everything: unbind, delete the queue, settle in-flight messages.
    pub fn destroy(&mut self) {
        self.ended = true;
        for (_, f) in std::mem::take(&mut self.inflight) {
            if let (Some(d), Some(c)) = (f.delivery, f.consumer) {
                c.release(1);
                d.ack();
            }
        }
        // By identity: a newer session of the same client may already own
        // a queue of the same name.
        if let Some(queue) = &self.queue {
            self.vhost.delete_queue_if_same(queue);
        }
        self.subscriptions.clear();
    }
}

/// A connection as the registry sees it: enough to take it over. It is
/// also the connection's waker, so that the two cost one allocation: the
/// server's connection task waits on `W` ([`ConnectionHandle::waker`]).
pub trait Handle: Wake {
    /// Broker-wide connection id.
    fn id(&self) -> u64;
    /// The MQTT 5 reason code another connection that took the session
    /// over asked this one to disconnect with (0x8E), or 0.
    fn kicked(&self) -> u8;
    /// Ask the connection to go away with `reason`.
    fn kick(&self, reason: u8);
}

/// The [`Handle`] of a connection whose task is woken through `W`.
pub struct ConnectionHandle<W> {
    id: u64,
    kicked: AtomicU8,
    /// Wakes the connection's task.
    pub waker: W,
}

impl<W> ConnectionHandle<W> {
    /// The handle of connection `id`.
    pub fn new(id: u64, waker: W) -> Self {
        Self {
            id,
            kicked: AtomicU8::new(0),
            waker,
        }
    }
}

impl<W: Wake> Wake for ConnectionHandle<W> {
    fn wake(&self) {
        self.waker.wake();
    }
}

impl<W: Wake> Handle for ConnectionHandle<W> {
    fn id(&self) -> u64 {
        self.id
    }

    fn kicked(&self) -> u8 {
        self.kicked.load(Ordering::Acquire)
    }

    fn kick(&self, reason: u8) {
        self.kicked.store(reason, Ordering::Release);
        self.waker.wake();
    }
}

/// Any shared waker, as a [`ConnectionHandle`]'s.
pub struct SharedWaker(pub Arc<dyn Wake>);

impl Wake for SharedWaker {
    fn wake(&self) {
        self.0.wake();
    }
}

impl std::fmt::Debug for dyn Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionHandle")
            .field("id", &self.id())
            .field("kicked", &self.kicked())
            .finish()
    }
}

/// The sessions of one vhost by client id.
type Clients = HashMap<Arc<str>, Arc<Mutex<Session>>>;

/// The part of a persistent session (Session Expiry Interval above zero)
/// that survives a restart of the broker. Its queue and the queue's
/// bindings and messages are durable in the core already; in-flight
/// messages come back from the queue as redeliveries.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionSnapshot {
    /// Client identifier.
    pub client_id: String,
    /// Session Expiry Interval (it counts again from the restart).
    pub expiry: Duration,
    /// Subscriptions by topic filter.
    pub subscriptions: Vec<(String, Subscription)>,
}

/// Where persistent sessions are kept. Called with the session's lock
/// held (writes are rare: CONNECT, SUBSCRIBE, UNSUBSCRIBE, the end).
pub trait SessionStore: Send + Sync + std::fmt::Debug {
    /// Keep (or replace) the session of `snapshot.client_id` in `vhost`.
    fn save(&self, vhost: &str, snapshot: &SessionSnapshot);
    /// Forget the session of `client_id` in `vhost`.
    fn delete(&self, vhost: &str, client_id: &str);
}

/// Every MQTT session of the broker.
#[derive(Debug, Default)]
pub struct Sessions {
    /// By vhost name, then client id.
    map: Mutex<HashMap<String, Clients>>,
    store: std::sync::OnceLock<Arc<dyn SessionStore>>,
    /// The names of connected users, each shared by their connections.
    users: Mutex<std::collections::HashSet<Arc<str>>>,
}

/// The outcome of looking a session up at CONNECT.
pub struct Attached {
    /// The session.
    pub session: Arc<Mutex<Session>>,
    /// It existed before (CONNACK Session Present).
    pub present: bool,
}

impl Sessions {
    /// Keep persistent sessions in `store` from now on (set once, after
    /// [`Sessions::restore`]).
    pub fn set_store(&self, store: Arc<dyn SessionStore>) {
        let _ = self.store.set(store);
    }

    /// Write `s` to the store if it is persistent and changed; forget it
    /// there if it is no longer persistent.
    pub fn persist(&self, s: &mut Session) {
        let Some(store) = self.store.get() else {
            return;
        };
        if s.ended || s.expiry.is_zero() {
            if s.saved.take().is_some() {
                store.delete(s.vhost.name(), &s.client_id);
            }
            return;
        }
        let snap = s.snapshot();
        if s.saved.as_deref() != Some(&snap) {
            store.save(s.vhost.name(), &snap);
            s.saved = Some(Box::new(snap));
        }
    }

    /// End a session: [`Session::destroy`], and forget it in the store.
    fn end(&self, s: &mut Session) {
        s.destroy();
        self.persist(s);
    }

    /// Bring back a persistent session kept by the store, at startup: it is
    /// offline, and expires `expiry` after `now` unless a client resumes it.
    pub fn restore(
        &self,
        vhost: &Arc<liebre_core::VHost>,
        snapshot: SessionSnapshot,
        now: Instant,
        config: &MqttConfig,
    ) -> Result<(), liebre_core::CoreError> {
        let name = Session::queue_name(&snapshot.client_id);
        let queue = match vhost.queue(&name) {
            Some(q) => q,
            None => vhost.declare_queue(&name, crate::connection::queue_options(true), false, 0)?,
        };
        crate::connection::subscriber_queue(&queue, config, &snapshot.client_id);
        let queue_qos0 = config.queue_qos0_offline;
        let session = Session {
            client_id: snapshot.client_id.as_str().into(),
            vhost: vhost.clone(),
            queue: Some(queue),
            subscriptions: snapshot.subscriptions.iter().cloned().collect(),
            inflight: BTreeMap::new(),
            incoming_qos2: None,
            next_packet_id: 0,
            expiry: snapshot.expiry,
            disconnected_at: Some(now),
            connection: None,
            pending_will: None,
            ended: false,
            saved: Some(Box::new(snapshot)),
        };
        // Bindings of the session queue are durable and came back with it;
        // those of QoS 0 subscriptions wait for the client.
        if !queue_qos0 {
            session.park_qos0();
        }
        let client_id = session.client_id.clone();
        self.map
            .lock()
            .entry(vhost.name().to_owned())
            .or_default()
            .insert(client_id, Arc::new(Mutex::new(session)));
        Ok(())
    }

    /// Find or create the session of `client_id` for a new connection,
    /// taking it over from any connection that holds it. A new session
    /// that ends with its connection (`clean_start` and `ephemeral`: no
    /// expiry interval) gets its queue at the first subscription; any
    /// other, and one that replaces an earlier session of the client,
    /// gets it now.
    #[allow(clippy::too_many_arguments)]
    pub fn attach(
        &self,
        vhost: &Arc<liebre_core::VHost>,
        client_id: &str,
        clean_start: bool,
        ephemeral: bool,
        handle: Arc<dyn Handle>,
        conn_id: u64,
        config: &MqttConfig,
    ) -> Result<Attached, liebre_core::CoreError> {
        let mut map = self.map.lock();
        let clients = map.entry(vhost.name().to_owned()).or_default();
        let replaces = clients.contains_key(client_id);
        if let Some(existing) = clients.get(client_id).cloned() {
            let mut s = existing.lock();
            if let Some(old) = s.connection.take() {
                old.kick(0x8E);
            }
            if !clean_start {
                s.connection = Some(handle);
                s.disconnected_at = None;
                s.unpark();
                drop(s);
                return Ok(Attached {
                    session: existing,
                    present: true,
                });
            }
            self.end(&mut s);
            drop(s);
            clients.remove(client_id);
        }
        let queue = if clean_start && ephemeral && !replaces {
            // A leftover queue of an earlier session of this client goes
            // now all the same (its session expired, or was lost with a
            // restart): a clean session starts with nothing queued.
            vhost.delete_queue_unchecked(&Session::queue_name(client_id));
            None
        } else {
            Some(declare_session_queue(
                vhost,
                client_id,
                !clean_start,
                config,
                conn_id,
            )?)
        };
        let client_id: Arc<str> = client_id.into();
        let session = Arc::new(Mutex::new(Session {
            client_id: client_id.clone(),
            vhost: vhost.clone(),
            queue,
            subscriptions: BTreeMap::new(),
            inflight: BTreeMap::new(),
            incoming_qos2: None,
            next_packet_id: 0,
            expiry: Duration::ZERO,
            disconnected_at: None,
            connection: Some(handle),
            pending_will: None,
            ended: false,
            saved: None,
        }));
        clients.insert(client_id, session.clone());
        Ok(Attached {
            session,
            present: false,
        })
    }

    /// The connection holding `session` went away. A session with no
    /// expiry interval ends now.
    pub fn detach(
        &self,
        session: &Arc<Mutex<Session>>,
        conn_id: u64,
        now: Instant,
        queue_qos0: bool,
    ) {
        let mut map = self.map.lock();
        let mut s = session.lock();
        if s.ended || s.connection.as_ref().is_some_and(|c| c.id() != conn_id) {
            return; // taken over or replaced: it is not this connection's any more
        }
        s.connection = None;
        s.disconnected_at = Some(now);
        if !s.expiry.is_zero() && !queue_qos0 {
            s.park_qos0();
        }
        if s.expiry.is_zero() {
            if let Some(w) = s.pending_will.take() {
                publish_will(&s.vhost, *w);
            }
            self.end(&mut s);
            let client_id = s.client_id.clone();
            let clients = map.get_mut(s.vhost.name());
            drop(s);
            if let Some(clients) = clients {
                if clients
                    .get(&client_id)
                    .is_some_and(|x| Arc::ptr_eq(x, session))
                {
                    clients.remove(&client_id);
                }
            }
        }
    }

    /// Expire sessions whose interval has passed and publish delayed wills
    /// that are due.
    pub fn tick(&self, now: Instant) {
        let mut map = self.map.lock();
        map.values_mut()
            .for_each(|clients| clients.retain(|_, session| self.tick_one(session, now)));
        drop(map);
        self.users.lock().retain(|u| Arc::strong_count(u) > 1);
    }

    /// `name`, shared with the other connections of that user (a
    /// connection keeps its user's name for its permission checks).
    pub fn user_name(&self, name: &str) -> Arc<str> {
        let mut users = self.users.lock();
        if let Some(u) = users.get(name) {
            return u.clone();
        }
        let u: Arc<str> = name.into();
        users.insert(u.clone());
        u
    }

    /// [`Sessions::tick`] for one session: whether it lives on.
    fn tick_one(&self, session: &Arc<Mutex<Session>>, now: Instant) -> bool {
        let mut s = session.lock();
        let due = s.pending_will.as_ref().is_some_and(|w| w.due <= now);
        let expired = s
            .disconnected_at
            .is_some_and(|at| now.saturating_duration_since(at) >= s.expiry);
        if due || (expired && s.pending_will.is_some()) {
            if let Some(w) = s.pending_will.take() {
                publish_will(&s.vhost, *w);
            }
        }
        if expired {
            self.end(&mut s);
            return false;
        }
        true
    }

    /// `f` of every session, summed.
    fn sum(&self, f: impl Fn(&Session) -> usize) -> usize {
        self.map
            .lock()
            .values()
            .flat_map(|clients| clients.values())
            .map(|s| f(&s.lock()))
            .sum()
    }

    /// Subscriptions over all sessions.
    pub fn subscription_count(&self) -> usize {
        self.sum(|s| s.subscriptions.len())
    }

    /// QoS 1/2 messages in flight to clients over all sessions.
    pub fn inflight_count(&self) -> usize {
        self.sum(|s| s.inflight.len())
    }

    /// Number of sessions (connected or not).
    pub fn len(&self) -> usize {
        self.map.lock().values().map(HashMap::len).sum()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Declare the queue of a new session of `client_id`, replacing any
/// leftover of an earlier session of this client (its session expired, or
/// was lost with a restart).
fn declare_session_queue(
    vhost: &Arc<liebre_core::VHost>,
    client_id: &str,
    durable: bool,
    config: &MqttConfig,
    conn_id: u64,
) -> Result<Arc<Queue>, liebre_core::CoreError> {
    let name = Session::queue_name(client_id);
    vhost.delete_queue_unchecked(&name);
    let queue = vhost.declare_queue(
        &name,
        crate::connection::queue_options(durable),
        false,
        conn_id,
    )?;
    crate::connection::subscriber_queue(&queue, config, client_id);
    Ok(queue)
}

/// Publish a will now: route it through `amq.topic` and keep it retained
/// if it asked to be.
pub fn publish_will(vhost: &liebre_core::VHost, w: PendingWill) {
    if w.retain {
        let keep = (!w.message.body.is_empty()).then(|| w.message.clone());
        vhost.retained().set(&w.topic, keep);
    }
    if let Err(e) = vhost.publish(MQTT_EXCHANGE, w.message) {
        tracing::debug!(message = "Will not published.", %e);
    }
}

/// A session's consumer on one queue. Credit is the client's Receive
/// Maximum: messages awaiting PUBACK/PUBCOMP plus those not yet written.
pub struct MqttConsumer {
    /// Broker-wide consumer id.
    pub id: u64,
    /// The queue consumed.
    pub queue: Arc<Queue>,
    /// Deliveries not yet settled.
    pub in_flight: AtomicU32,
    /// The client's Receive Maximum.
    pub max_in_flight: u32,
    /// It was refused credit: kick the queue when credit returns.
    pub starved: AtomicBool,
    /// The connection's outbox.
    pub outbox: Arc<MqttOutbox>,
    me: std::sync::Weak<MqttConsumer>,
}

impl std::fmt::Debug for MqttConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttConsumer")
            .field("id", &self.id)
            .finish()
    }
}

impl MqttConsumer {
    /// A consumer of `queue` for a connection.
    pub fn new(
        id: u64,
        queue: Arc<Queue>,
        max_in_flight: u32,
        outbox: Arc<MqttOutbox>,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            id,
            queue,
            in_flight: AtomicU32::new(0),
            max_in_flight,
            starved: AtomicBool::new(false),
            outbox,
            me: me.clone(),
        })
    }

    /// Return the credit of `n` settled messages.
    pub fn release(&self, n: u32) {
        let _ = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                Some(v.saturating_sub(n))
            });
    }

    /// Retry the queue if this consumer was refused credit.
    pub fn kick_if_starved(&self) {
        if self.starved.swap(false, Ordering::AcqRel) {
            self.queue.kick();
        }
    }
}

impl ConsumerSink for MqttConsumer {
    fn try_reserve(&self) -> bool {
        if !self.outbox.is_full() {
            if self.in_flight.fetch_add(1, Ordering::AcqRel) < self.max_in_flight {
                return true;
            }
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
        self.starved.store(true, Ordering::Release);
        false
    }

    fn deliver(&self, delivery: Delivery) {
        let Some(me) = self.me.upgrade() else { return };
        let size = delivery.message.body.len();
        self.outbox.push(MqttEvent::Deliver(delivery, me), size);
    }

    fn cancelled(&self, _consumer_tag: &liebre_amqp_codec::ShortStr) {
        // The session queue was deleted under the session (vhost deleted or
        // an operator deleted it): nothing more will arrive. The connection
        // notices nothing; a new subscription recreates the binding on the
        // new queue at the next session.
    }
}
