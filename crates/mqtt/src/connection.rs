//! The MQTT connection state machine (3.1, 3.1.1 and 5.0).
//!
//! Bytes and time in ([`MqttConnection::handle_input`],
//! [`MqttConnection::handle_timeout`]), bytes out
//! ([`MqttConnection::poll_transmit`]) with the next deadline
//! ([`MqttConnection::poll_timeout`]). No socket, no clock.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use liebre_auth::{Access, AuthError, AuthStore};
use liebre_core::{Broker, Consumer, Message, VHost, Wake};
use liebre_mqtt_codec::{
    self as codec, ConnAck, Connect, DecodeError, Disconnect, Packet, Properties, Protocol, PubAck,
    Publish, QoS, Str, SubAck, Subscribe, UnsubAck, Unsubscribe,
};
use parking_lot::Mutex;
use tracing::debug;

use crate::mapping::{self, MQTT_EXCHANGE};
use crate::session::{
    publish_will, ConnectionHandle, Handle, InFlight, MqttConsumer, MqttEvent, MqttOutbox,
    PendingWill, Session, Sessions, SharedWaker, Subscription,
};

/// MQTT limits and policies.
#[derive(Debug, Clone)]
pub struct MqttConfig {
    /// Largest packet accepted (and advertised as Maximum Packet Size).
    pub max_packet_size: u32,
    /// QoS 1/2 publishes a client may have unacknowledged towards us
    /// (advertised as Receive Maximum; exceeding it is 0x93).
    pub receive_maximum: u16,
    /// QoS 1/2 messages in flight to a 3.1.1 client (5.0 clients say their own).
    pub max_inflight_v3: u16,
    /// Longest keepalive allowed; a longer one is cut to this (5.0: Server Keep Alive).
    pub max_keepalive: u16,
    /// Topic aliases a client may use towards us.
    pub topic_alias_maximum: u16,
    /// Session expiry for 3.1.1 persistent sessions and the cap for 5.0.
    pub max_session_expiry: Duration,
    /// A CONNECT without username logs in as `guest`.
    pub allow_anonymous: bool,
    /// Messages held for one session while its client is offline or
    /// slow; beyond them `queue_overflow` decides what is dropped.
    pub max_queued_messages: u32,
    /// What a full session queue drops: the new message (Mosquitto's
    /// behaviour) or the oldest.
    pub queue_overflow: liebre_core::flow::Overflow,
    /// How long a subscriber that falls behind may hold the publishers
    /// feeding it (they stop being read); after that it counts as slow
    /// and they go on (see `liebre_core::flow`).
    pub slow_subscriber_after: Duration,
    /// Hold QoS 0 publishers too (else their messages to a subscriber
    /// that falls behind are dropped once its queue is full).
    pub qos0_flow_control: bool,
    /// Deliveries buffered per connection.
    pub outbox_max_len: usize,
    /// Bytes of bodies buffered per connection.
    pub outbox_max_bytes: usize,
    /// How long CONNECT may take to arrive.
    pub connect_timeout: Duration,
    /// Keep queueing messages of QoS 0 subscriptions for offline
    /// persistent sessions (Mosquitto's `queue_qos0_messages`).
    pub queue_qos0_offline: bool,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            max_packet_size: 16 * 1024 * 1024,
            receive_maximum: 1024,
            max_inflight_v3: 128,
            max_keepalive: u16::MAX,
            topic_alias_maximum: 64,
            max_session_expiry: Duration::from_secs(u64::from(u32::MAX)),
            allow_anonymous: true,
            max_queued_messages: 100_000,
            queue_overflow: liebre_core::flow::Overflow::DropNew,
            slow_subscriber_after: Duration::from_secs(5),
            qos0_flow_control: true,
            outbox_max_len: 2048,
            outbox_max_bytes: 8 * 1024 * 1024,
            connect_timeout: Duration::from_secs(10),
            queue_qos0_offline: false,
        }
    }
}

impl MqttConfig {
    /// The flow limits of a queue serving `owner` (a client id, or a
    /// shared subscription).
    pub fn flow_limits(&self, owner: &str) -> liebre_core::FlowLimits {
        liebre_core::FlowLimits::new(
            owner.into(),
            self.max_queued_messages,
            self.queue_overflow,
            self.slow_subscriber_after,
        )
    }
}

/// What an MQTT connection needs from the rest of the broker.
#[derive(Debug)]
pub struct MqttContext {
    /// The routing core.
    pub broker: Arc<Broker>,
    /// Users and permissions.
    pub auth: Arc<AuthStore>,
    /// Sessions.
    pub sessions: Sessions,
    /// Limits.
    pub config: MqttConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Connect,
    Connected,
    Closed,
}

/// Acknowledgements waiting for the store.
#[derive(Default)]
struct HeldAcks {
    /// Each with the store position it waits for.
    acks: VecDeque<(u64, Packet)>,
    /// The store position this connection asked to be woken at.
    sync_wait: liebre_core::persistence::SyncWait,
}

/// Topic aliases of an MQTT 5 connection, both ways.
#[derive(Default)]
struct Aliases {
    incoming: HashMap<u16, Str>,
    outgoing: HashMap<String, u16>,
}

/// What a connection that consumes has.
struct Consuming {
    outbox: Arc<MqttOutbox>,
    consumers: Vec<Arc<MqttConsumer>>,
}

/// The rarely used parts of a connection.
#[derive(Default)]
struct Cold {
    will: Option<Will>,
    /// Topic aliases in use (MQTT 5 only).
    aliases: Aliases,
    close_reason: Option<Box<str>>,
}

/// `cold`, made now if need be.
fn cold(cold: &mut Option<Box<Cold>>) -> &mut Cold {
    cold.get_or_insert_with(Default::default)
}

struct Will {
    message: Arc<Message>,
    topic: String,
    retain: bool,
    delay: Duration,
}

/// One MQTT client connection.
pub struct MqttConnection {
    ctx: Arc<MqttContext>,
    peer: SocketAddr,
    state: State,
    protocol: Protocol,
    out: BytesMut,
    /// Keep alive, seconds (0: none).
    keep_alive: u16,
    /// When the last bytes came; before CONNECT, when the connection was
    /// opened (the CONNECT deadline counts from there).
    last_rx: Instant,
    /// Shared with the session (none before CONNECT).
    client_id: Option<Arc<str>>,
    /// Shared with the user's other connections (none before CONNECT).
    user: Option<Arc<str>>,
    vhost: Option<Arc<VHost>>,
    session: Option<Arc<Mutex<Session>>>,
    handle: Arc<dyn Handle>,
    /// Deliveries for this connection and its consumers; made with its
    /// first consumer.
    consuming: Option<Box<Consuming>>,
    client_receive_max: u16,
    client_max_packet: u32,
    client_alias_max: u16,
    problem_info: bool,
    may_publish: Option<bool>,
    /// The will, topic aliases and why the connection closed, made when
    /// one of them is first needed.
    cold: Option<Box<Cold>>,
    /// PUBACK/PUBREC held until the store has the message on disk, with
    /// the store position each waits for; in the order the PUBLISHes came
    /// (MQTT 4.6: acknowledgements go out in that order).
    /// (Allocated only while some are held.)
    held_acks: Option<Box<HeldAcks>>,
    /// Stopped reading: a PUBLISH came while a resource alarm was on.
    throttle: liebre_core::Throttle,
    /// Stopped reading: a PUBLISH reached subscriber queues that are
    /// congested.
    flow: liebre_core::Backpressure,
    /// See [`MqttConnection::take_routed`].
    routed: bool,
}

impl std::fmt::Debug for MqttConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttConnection")
            .field("id", &self.handle.id())
            .field("client_id", &self.client_id())
            .finish()
    }
}

/// An error that ends the connection: MQTT 5 reason code and why.
#[derive(Debug)]
struct Fatal(u8, String);

impl MqttConnection {
    /// A new connection from `peer` at `now`; `waker` wakes its task.
    pub fn new(
        ctx: Arc<MqttContext>,
        peer: SocketAddr,
        waker: Arc<dyn Wake>,
        now: Instant,
    ) -> Self {
        let id = ctx.broker.next_id();
        let handle = Arc::new(ConnectionHandle::new(id, SharedWaker(waker)));
        Self::with_handle(ctx, peer, handle, now)
    }

    /// A new connection from `peer` at `now` whose [`Handle`] (made with
    /// an id from [`Broker::next_id`]) wakes its task.
    pub fn with_handle(
        ctx: Arc<MqttContext>,
        peer: SocketAddr,
        handle: Arc<dyn Handle>,
        now: Instant,
    ) -> Self {
        Self {
            peer,
            state: State::Connect,
            protocol: Protocol::V311,
            out: BytesMut::new(),
            keep_alive: 0,
            last_rx: now,
            client_id: None,
            user: None,
            vhost: None,
            session: None,
            handle,
            consuming: None,
            client_receive_max: 65535,
            client_max_packet: u32::MAX,
            client_alias_max: 0,
            problem_info: true,
            may_publish: None,
            cold: None,
            held_acks: None,
            throttle: Default::default(),
            flow: Default::default(),
            routed: false,
            ctx,
        }
    }

    /// The user ("" before CONNECT).
    fn user(&self) -> &str {
        self.user.as_deref().unwrap_or_default()
    }

    /// The consumers of this connection.
    fn consumers(&self) -> impl Iterator<Item = &Arc<MqttConsumer>> {
        self.consuming.iter().flat_map(|x| &x.consumers)
    }

    /// This connection's waker.
    fn waker(&self) -> Arc<dyn Wake> {
        self.handle.clone()
    }

    /// Broker-wide connection id.
    pub fn id(&self) -> u64 {
        self.handle.id()
    }

    /// The client identifier ("" before CONNECT).
    pub fn client_id(&self) -> &str {
        self.client_id.as_deref().unwrap_or_default()
    }

    /// Why the connection ended.
    pub fn close_reason(&self) -> Option<&str> {
        self.cold.as_ref()?.close_reason.as_deref()
    }

    /// Whether the socket should close once pending output is written.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Whether the connection takes input now: not while a resource alarm
    /// holds its next PUBLISH (bytes already received wait in the caller's
    /// buffer, to be fed again once this turns true).
    pub fn wants_read(&self) -> bool {
        !self.throttle.is_blocked() && !self.flow.is_held()
    }

    /// Whether the connection does not read now (a resource alarm, or
    /// congested subscribers): keepalive does not run meanwhile.
    fn paused(&self) -> bool {
        !self.wants_read()
    }

    /// Whether input since the last call routed a message to some queue
    /// (whose consumers, on other connections, were then woken). The
    /// driver uses it to let those run before it writes this connection's
    /// own replies.
    pub fn take_routed(&mut self) -> bool {
        std::mem::take(&mut self.routed)
    }

    /// Largest packet we read.
    pub fn max_packet_size(&self) -> u32 {
        self.ctx.config.max_packet_size
    }

    /// Feed received bytes; every complete packet is handled.
    pub fn handle_input(&mut self, buf: &mut BytesMut, now: Instant) {
        if !buf.is_empty() && self.state != State::Connect {
            self.last_rx = now;
        }
        while self.state != State::Closed {
            // A PUBLISH (type 3) while an alarm is on waits in `buf`.
            if self.state == State::Connected
                && (self.paused()
                    || (buf.first().is_some_and(|b| b >> 4 == 3)
                        && self.ctx.broker.alarms().blocked()
                        && self
                            .throttle
                            .publish_received(self.ctx.broker.alarms(), &self.waker())))
            {
                return;
            }
            let proto = (self.state == State::Connected).then_some(self.protocol);
            if proto.is_none() {
                // Known before decoding, so a bad CONNECT is answered in
                // the client's own version.
                if let Some(p) = codec::connect_protocol(buf) {
                    self.protocol = p;
                }
            }
            match codec::decode(buf, proto, self.ctx.config.max_packet_size) {
                Ok(None) => return,
                Ok(Some(p)) => {
                    if let Err(Fatal(code, why)) = self.handle_packet(p, now) {
                        self.disconnect_with(code, &why, now);
                    }
                }
                Err(e) => {
                    buf.clear();
                    self.decode_failed(e, now);
                }
            }
        }
        buf.clear();
    }

    fn decode_failed(&mut self, e: DecodeError, now: Instant) {
        debug!(message = "Bad MQTT packet.", peer = %self.peer, %e);
        match (&e, self.state) {
            (DecodeError::UnsupportedProtocol { .. }, State::Connect) => {
                // 3.1.1 return code 1 / 5.0 reason 0x84, then close.
                let code = if matches!(e, DecodeError::UnsupportedProtocol { level } if level >= 5)
                {
                    0x84
                } else {
                    0x01
                };
                let proto = if code == 0x84 {
                    Protocol::V5
                } else {
                    Protocol::V311
                };
                self.write_packet(
                    &Packet::ConnAck(ConnAck {
                        session_present: false,
                        code,
                        properties: Properties::default(),
                    }),
                    proto,
                );
                self.finish(&e.to_string(), now);
            }
            (_, State::Connect) if self.protocol == Protocol::V5 => {
                // MQTT 5: a CONNECT that cannot be accepted gets a CONNACK
                // with the reason before the close (§3.1.4).
                self.write_packet(
                    &Packet::ConnAck(ConnAck {
                        session_present: false,
                        code: e.reason_code(),
                        properties: Properties::default(),
                    }),
                    Protocol::V5,
                );
                self.finish(&e.to_string(), now);
            }
            _ => self.disconnect_with(e.reason_code(), &e.to_string(), now),
        }
    }

    /// Close the connection; a 5.0 client is told why in DISCONNECT first.
    fn disconnect_with(&mut self, code: u8, why: &str, now: Instant) {
        if self.state == State::Connected && self.protocol == Protocol::V5 {
            let mut properties = Properties::default();
            if self.problem_info && !why.is_empty() {
                properties.reason_string = Some(Str::from(why));
            }
            self.write_packet(
                &Packet::Disconnect(Disconnect {
                    reason: code,
                    properties,
                }),
                Protocol::V5,
            );
        }
        self.finish(why, now);
    }

    /// Advance time: keepalive and the CONNECT deadline.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.state == State::Connect && now >= self.connect_deadline() {
            self.finish("no CONNECT in time", now);
            return;
        }
        if self.flow.poll_release(&self.waker(), now) {
            self.last_rx = now; // keepalive starts again
        }
        if self.state == State::Connected
            && self.keep_alive != 0
            && !self.paused()
            && now >= self.last_rx + self.keep_alive_grace()
        {
            self.disconnect_with(0x8D, "keep alive timeout", now);
        }
    }

    /// When CONNECT must have come by.
    fn connect_deadline(&self) -> Instant {
        self.last_rx + self.ctx.config.connect_timeout
    }

    /// How long the client may stay silent: one and a half keep alives.
    fn keep_alive_grace(&self) -> Duration {
        Duration::from_millis(u64::from(self.keep_alive) * 1500)
    }

    /// The next instant [`MqttConnection::handle_timeout`] has work at.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Connect => Some(self.connect_deadline()),
            State::Connected if self.flow.is_held() => self.flow.deadline(),
            State::Connected if self.keep_alive != 0 && !self.paused() => {
                Some(self.last_rx + self.keep_alive_grace())
            }
            _ => None,
        }
    }

    /// Move pending output into `out`; returns whether anything was written.
    pub fn poll_transmit(&mut self, out: &mut BytesMut, now: Instant) -> bool {
        if self.throttle.poll_unblock(self.ctx.broker.alarms())
            | self.flow.poll_release(&self.waker(), now)
        {
            self.last_rx = now; // keepalive starts again
        }
        let kicked = self.handle.kicked();
        if kicked != 0 && self.state == State::Connected {
            self.disconnect_with(kicked, "another connection took over the session", now);
        }
        self.drain_outbox(now);
        if self.release_acks() {
            // 3.1.1 has no negative acknowledgement.
            self.disconnect_with(0x80, "the message store failed", now);
        }
        if self.out.is_empty() {
            return false;
        }
        if out.is_empty() {
            std::mem::swap(out, &mut self.out);
        } else {
            out.extend_from_slice(&self.out);
            self.out.clear();
        }
        for c in self.consumers() {
            c.kick_if_starved();
        }
        true
    }

    /// Give back the output buffer's memory if it is empty (the caller's
    /// connection went quiet).
    pub fn trim(&mut self) {
        if self.out.is_empty() {
            self.out = BytesMut::new();
        }
    }

    /// The socket is gone (EOF or error).
    pub fn handle_disconnect(&mut self, now: Instant) {
        if self.state != State::Closed {
            self.finish("connection lost", now);
        }
    }

    /// Server shutdown: 5.0 clients get DISCONNECT 0x8B.
    pub fn shutdown(&mut self, now: Instant) {
        self.disconnect_with(0x8B, "server shutting down", now);
    }

    /// End the connection: publish the will unless the client
    /// disconnected normally, detach from the session.
    fn finish(&mut self, why: &str, now: Instant) {
        if self.state == State::Closed {
            return;
        }
        let was_connected = self.state == State::Connected;
        self.state = State::Closed;
        self.throttle.release();
        self.flow.release();
        let cold = cold(&mut self.cold);
        if cold.close_reason.is_none() {
            cold.close_reason = Some(why.into());
        }
        // Detach first, then send back what was not written: a requeued
        // message must not land in this dead connection's outbox again.
        for c in self
            .consuming
            .iter_mut()
            .flat_map(|x| x.consumers.drain(..))
        {
            c.queue.remove_consumer(c.id);
        }
        for ev in self
            .consuming
            .as_ref()
            .map(|x| x.outbox.drain())
            .unwrap_or_default()
        {
            let MqttEvent::Deliver(d, c) = ev;
            c.release(1);
            d.queue.requeue(vec![(&d).into()]);
        }
        if !was_connected {
            return;
        }
        let taken_over = self.handle.kicked() != 0;
        if let Some(session) = self.session.take() {
            if let Some(w) = self.cold.as_mut().and_then(|c| c.will.take()) {
                let mut s = session.lock();
                let delay = w.delay.min(s.expiry);
                let pending = PendingWill {
                    due: now + delay,
                    message: w.message,
                    topic: w.topic,
                    retain: w.retain,
                };
                if delay.is_zero() {
                    publish_will(&s.vhost, pending);
                } else if !taken_over {
                    // Published by the session registry when due, or when
                    // the session ends; cancelled if the client returns.
                    s.pending_will = Some(Box::new(pending));
                }
                // Taken over with a delay: the session goes on with the new
                // connection, so the will is never sent (5.0 §3.1.3.2.2).
            }
            self.ctx.sessions.detach(
                &session,
                self.handle.id(),
                now,
                self.ctx.config.queue_qos0_offline,
            );
        }
    }

    fn write_packet(&mut self, p: &Packet, proto: Protocol) {
        if let Err(e) = codec::encode(p, proto, &mut self.out) {
            tracing::error!(message = "Failed to encode an MQTT packet.", packet = p.name(), %e);
        }
    }

    fn send(&mut self, p: Packet) {
        let proto = self.protocol;
        self.write_packet(&p, proto);
    }

    // ---- packets ---------------------------------------------------------

    fn handle_packet(&mut self, p: Packet, now: Instant) -> Result<(), Fatal> {
        if self.state == State::Connect {
            return match p {
                Packet::Connect(c) => self.connect(c, now),
                other => Err(Fatal(
                    0x82,
                    format!("first packet must be CONNECT, got {}", other.name()),
                )),
            };
        }
        match p {
            Packet::Connect(_) => Err(Fatal(0x82, "second CONNECT".into())),
            Packet::Publish(p) => self.publish(p, now),
            Packet::PubAck(a) => {
                self.settle_out(a.packet_id, false);
                Ok(())
            }
            Packet::PubRec(a) => self.pubrec(a),
            Packet::PubRel(a) => {
                let known = self.session_mut(|s| s.incoming_qos2_remove(a.packet_id));
                let reason = if known || self.protocol != Protocol::V5 {
                    0
                } else {
                    0x92
                };
                self.send(Packet::PubComp(PubAck {
                    packet_id: a.packet_id,
                    reason,
                    properties: Properties::default(),
                }));
                Ok(())
            }
            Packet::PubComp(a) => {
                self.settle_out(a.packet_id, true);
                Ok(())
            }
            Packet::Subscribe(s) => self.subscribe(s, now),
            Packet::Unsubscribe(u) => self.unsubscribe(u),
            Packet::PingReq => {
                self.send(Packet::PingResp);
                Ok(())
            }
            Packet::Disconnect(d) => {
                if let Some(exp) = d.properties.session_expiry_interval {
                    let was_zero = self.session_mut(|s| s.expiry.is_zero());
                    if was_zero && exp != 0 {
                        return Err(Fatal(
                            0x82,
                            "session expiry set on DISCONNECT after 0 on CONNECT".into(),
                        ));
                    }
                    let cap = self.ctx.config.max_session_expiry;
                    let sessions = &self.ctx.sessions;
                    if let Some(session) = &self.session {
                        let mut s = session.lock();
                        s.expiry = Duration::from_secs(u64::from(exp)).min(cap);
                        sessions.persist(&mut s);
                    }
                }
                if d.reason != 0x04 {
                    if let Some(c) = &mut self.cold {
                        c.will = None;
                    } // normal disconnect: no will
                }
                self.finish("client disconnected", now);
                Ok(())
            }
            Packet::Auth(_) => Err(Fatal(
                0x82,
                "enhanced authentication is not supported".into(),
            )),
            other => Err(Fatal(
                0x82,
                format!("unexpected {} from a client", other.name()),
            )),
        }
    }

    fn session_mut<T: Default>(&self, f: impl FnOnce(&mut Session) -> T) -> T {
        match &self.session {
            Some(s) => f(&mut s.lock()),
            None => T::default(),
        }
    }

    fn connack_fail(&mut self, v3: u8, v5: u8, why: &str, now: Instant) -> Result<(), Fatal> {
        let code = if self.protocol == Protocol::V5 {
            v5
        } else {
            v3
        };
        self.send(Packet::ConnAck(ConnAck {
            session_present: false,
            code,
            properties: Properties::default(),
        }));
        tracing::info!(message = "MQTT connection refused.", peer = %self.peer, reason = why);
        self.finish(why, now);
        Ok(())
    }

    fn connect(&mut self, c: Connect, now: Instant) -> Result<(), Fatal> {
        self.protocol = c.protocol;
        let v5 = c.protocol == Protocol::V5;
        self.last_rx = now;
        // Client identifier rules.
        let mut assigned = None;
        let client_id = if c.client_id.is_empty() {
            if v5 {
                let id = format!("liebre-{}", liebre_core::vhost::generated_name(""));
                assigned = Some(id.clone());
                id
            } else if c.clean_start {
                format!("liebre-{}", liebre_core::vhost::generated_name(""))
            } else {
                return self.connack_fail(
                    0x02,
                    0x85,
                    "zero-length client id needs a clean session",
                    now,
                );
            }
        } else {
            c.client_id.to_string()
        };
        // Login: "vhost:user" picks the vhost; no username is guest.
        let (vhost_name, user, password) = match &c.username {
            Some(u) => {
                let (v, name) = match u.split_once(':') {
                    Some((v, n)) if !v.is_empty() => (v.to_owned(), n.to_owned()),
                    _ => ("/".to_owned(), u.to_string()),
                };
                let pass = c
                    .password
                    .as_ref()
                    .map(|p| String::from_utf8_lossy(p).into_owned());
                (v, name, pass)
            }
            None if self.ctx.config.allow_anonymous => ("/".to_owned(), "guest".to_owned(), None),
            None => return self.connack_fail(0x05, 0x87, "anonymous access is disabled", now),
        };
        let authed = match &password {
            Some(p) => self.ctx.auth.authenticate(&user, p, self.peer.ip()),
            // Anonymous: the guest account, with its `loopback_users` rule.
            None if c.username.is_none() => self.ctx.auth.check_origin(&user, self.peer.ip()),
            None => Err(AuthError::InvalidCredentials),
        };
        match authed {
            Ok(()) => {}
            Err(AuthError::LoopbackOnly(_)) => {
                return self.connack_fail(0x05, 0x87, "user can only connect via localhost", now)
            }
            Err(_) => return self.connack_fail(0x04, 0x86, "bad user name or password", now),
        }
        let Some(vhost) = self.ctx.broker.vhost(&vhost_name) else {
            return self.connack_fail(0x05, 0x87, "no such vhost", now);
        };
        if !self.ctx.auth.can_access_vhost(&user, &vhost_name) {
            return self.connack_fail(0x05, 0x87, "not authorised for the vhost", now);
        }
        self.user = Some(self.ctx.sessions.user_name(&user));
        // Keepalive, capped.
        let max_ka = self.ctx.config.max_keepalive;
        let ka = if c.keep_alive > max_ka || (c.keep_alive == 0 && max_ka != u16::MAX) {
            max_ka
        } else {
            c.keep_alive
        };
        self.keep_alive = ka;
        // Client limits.
        if v5 {
            self.client_receive_max = c.properties.receive_maximum.unwrap_or(65535);
            self.client_max_packet = c.properties.maximum_packet_size.unwrap_or(u32::MAX);
            self.client_alias_max = c.properties.topic_alias_maximum.unwrap_or(0);
            self.problem_info = c.properties.request_problem_information != Some(0);
        } else {
            self.client_receive_max = self.ctx.config.max_inflight_v3;
        }
        let expiry = if v5 {
            Duration::from_secs(u64::from(c.properties.session_expiry_interval.unwrap_or(0)))
        } else if c.clean_start {
            Duration::ZERO
        } else {
            self.ctx.config.max_session_expiry
        }
        .min(self.ctx.config.max_session_expiry);
        // Will.
        if let Some(w) = &c.will {
            let msg = mapping::to_message(
                &w.topic,
                w.qos,
                w.retain,
                w.payload.clone(),
                v5.then_some(&w.properties),
                self.handle.id(),
            );
            cold(&mut self.cold).will = Some(Will {
                message: Arc::new(msg),
                topic: w.topic.to_string(),
                retain: w.retain,
                delay: Duration::from_secs(u64::from(
                    w.properties.will_delay_interval.unwrap_or(0),
                )),
            });
        }
        // Session.
        let attached = match self.ctx.sessions.attach(
            &vhost,
            &client_id,
            c.clean_start,
            expiry.is_zero(),
            self.handle.clone(),
            self.handle.id(),
            &self.ctx.config,
        ) {
            Ok(a) => a,
            Err(e) => return self.connack_fail(0x03, 0x88, &e.to_string(), now),
        };
        {
            let mut s = attached.session.lock();
            self.client_id = Some(s.client_id.clone());
            s.expiry = expiry;
            // Reconnecting in time cancels a delayed will.
            s.pending_will = None;
            self.ctx.sessions.persist(&mut s);
        }
        self.vhost = Some(vhost);
        self.session = Some(attached.session.clone());
        self.state = State::Connected;
        let mut props = Properties::default();
        if v5 {
            props.receive_maximum = Some(self.ctx.config.receive_maximum);
            props.maximum_packet_size = Some(self.ctx.config.max_packet_size);
            props.topic_alias_maximum = Some(self.ctx.config.topic_alias_maximum);
            props.retain_available = Some(1);
            props.wildcard_subscription_available = Some(1);
            props.subscription_identifier_available = Some(1);
            props.shared_subscription_available = Some(1);
            if ka != c.keep_alive {
                props.server_keep_alive = Some(ka);
            }
            if let Some(id) = assigned {
                props.assigned_client_identifier = Some(Str::from(id));
            }
            let requested = c.properties.session_expiry_interval.unwrap_or(0);
            if u64::from(requested) > expiry.as_secs() {
                props.session_expiry_interval = Some(expiry.as_secs() as u32);
            }
        }
        self.send(Packet::ConnAck(ConnAck {
            session_present: attached.present,
            code: 0,
            properties: props,
        }));
        // Resume: resend what was in flight, then start consuming.
        self.resume_inflight();
        self.attach_consumers();
        Ok(())
    }

    fn attach_consumers(&mut self) {
        let Some(session) = &self.session else { return };
        let queues: Vec<Arc<liebre_core::Queue>> = {
            let s = session.lock();
            let mut qs: Vec<_> = s.queue.iter().cloned().collect();
            for (filter, sub) in &s.subscriptions {
                if let Some(g) = &sub.share {
                    if let Some(q) = s.vhost.queue(&shared_queue_name(g, filter)) {
                        qs.push(q);
                    }
                }
            }
            qs
        };
        for q in queues {
            self.consume(q);
        }
    }

    fn consume(&mut self, q: Arc<liebre_core::Queue>) {
        if self.consumers().any(|c| Arc::ptr_eq(&c.queue, &q)) {
            return;
        }
        let id = self.ctx.broker.next_id();
        let waker = self.waker();
        let outbox = self
            .consuming
            .get_or_insert_with(|| {
                Box::new(Consuming {
                    outbox: Arc::new(MqttOutbox::new(
                        waker,
                        self.ctx.config.outbox_max_len,
                        self.ctx.config.outbox_max_bytes,
                    )),
                    consumers: Vec::new(),
                })
            })
            .outbox
            .clone();
        let c = MqttConsumer::new(id, q.clone(), u32::from(self.client_receive_max), outbox);
        let added = q.add_consumer(Consumer {
            id,
            tag: liebre_amqp_codec::ShortStr::from(format!("mqtt-{}", self.client_id())),
            no_ack: false,
            exclusive: false,
            priority: 0,
            sink: c.clone(),
        });
        if let (Ok(_), Some(x)) = (added, &mut self.consuming) {
            x.consumers.push(c);
        }
    }

    fn resume_inflight(&mut self) {
        let Some(session) = &self.session else { return };
        let s = session.lock();
        for (&pkid, f) in &s.inflight {
            if f.released {
                let p = Packet::PubRel(PubAck {
                    packet_id: pkid,
                    reason: 0,
                    properties: Properties::default(),
                });
                if let Err(e) = codec::encode(&p, self.protocol, &mut self.out) {
                    tracing::error!(message = "Failed to encode PUBREL.", %e);
                }
            } else if let Some(first) = f.packet.first() {
                // Same packet, same identifier, DUP set.
                self.out.extend_from_slice(&[first | 0x08]);
                self.out.extend_from_slice(&f.packet[1..]);
            }
        }
    }

    // ---- publish in ------------------------------------------------------

    fn publish(&mut self, p: Publish, now: Instant) -> Result<(), Fatal> {
        let v5 = self.protocol == Protocol::V5;
        // Topic alias.
        let topic: Str = match p.properties.topic_alias {
            Some(alias) if v5 => {
                if alias == 0 || alias > self.ctx.config.topic_alias_maximum {
                    return Err(Fatal(0x94, format!("topic alias {alias} out of range")));
                }
                let aliases = &mut cold(&mut self.cold).aliases;
                if p.topic.is_empty() {
                    match aliases.incoming.get(&alias) {
                        Some(t) => t.clone(),
                        None => return Err(Fatal(0x82, format!("unknown topic alias {alias}"))),
                    }
                } else {
                    aliases.incoming.insert(alias, p.topic.clone());
                    p.topic.clone()
                }
            }
            _ if p.topic.is_empty() => {
                return Err(Fatal(0x82, "empty topic without a topic alias".into()))
            }
            _ => p.topic.clone(),
        };
        if p.qos == QoS::ExactlyOnce {
            let dup = self.session_mut(|s| !s.incoming_qos2_insert(p.packet_id));
            // Only 5.0 clients were told our Receive Maximum; a 3.1.1
            // client's QoS 2 window is bounded by its packet identifiers.
            if !dup
                && v5
                && self.session_mut(|s| s.incoming_qos2_len())
                    > usize::from(self.ctx.config.receive_maximum)
            {
                return Err(Fatal(0x93, "receive maximum exceeded".into()));
            }
            if dup {
                // A resend of a message we already routed: acknowledge only.
                self.send(Packet::PubRec(PubAck {
                    packet_id: p.packet_id,
                    reason: 0,
                    properties: Properties::default(),
                }));
                return Ok(());
            }
        }
        let allowed = *self.may_publish.get_or_insert_with(|| {
            let vhost = self
                .vhost
                .as_ref()
                .map(|v| v.name().to_owned())
                .unwrap_or_default();
            self.ctx.auth.check(
                self.user.as_deref().unwrap_or_default(),
                &vhost,
                Access::Write,
                MQTT_EXCHANGE,
            )
        });
        let mut reason = 0u8;
        let mut lsn = 0;
        if !allowed {
            if !v5 && p.qos == QoS::AtMostOnce {
                return Err(Fatal(0x87, "not authorised to publish".into()));
            }
            if !v5 {
                // 3.1.1 has no negative PUBACK: close, as Mosquitto does.
                return Err(Fatal(0x87, "not authorised to publish".into()));
            }
            reason = 0x87;
        } else {
            let vhost = self.vhost.clone();
            let Some(vhost) = vhost else { return Ok(()) };
            let msg = mapping::to_message(
                &topic,
                p.qos,
                p.retain,
                p.payload.clone(),
                v5.then_some(&p.properties),
                self.handle.id(),
            );
            let msg = Arc::new(msg);
            if p.retain {
                let keep = (!msg.body.is_empty()).then(|| msg.clone());
                vhost.retained().set(&topic, keep);
            }
            let outcome = vhost.publish(MQTT_EXCHANGE, msg);
            self.routed |= outcome.as_ref().is_ok_and(|o| o.routed > 0);
            if let Ok(o) = &outcome {
                if p.qos != QoS::AtMostOnce || self.ctx.config.qos0_flow_control {
                    self.hold_for(&o.congested, now);
                }
            }
            match outcome {
                Ok(o) if o.store_failed => {
                    // Never acknowledge what is not stored: 5.0 clients get
                    // 0x80; 3.1.1 has no negative acknowledgement.
                    if !v5 {
                        return Err(Fatal(0x80, "the message store failed".into()));
                    }
                    reason = 0x80;
                }
                Ok(o) if o.routed == 0 && v5 => reason = 0x10,
                Ok(o) if o.rejected && v5 => {
                    lsn = o.lsn;
                    reason = 0x97
                }
                Ok(o) => lsn = o.lsn,
                Err(e) => {
                    if v5 {
                        reason = 0x80;
                    }
                    debug!(message = "MQTT publish failed.", %e);
                }
            }
        }
        let ack = PubAck {
            packet_id: p.packet_id,
            reason,
            properties: Properties::default(),
        };
        match p.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.send_ack(lsn, Packet::PubAck(ack)),
            QoS::ExactlyOnce => {
                if reason >= 0x80 {
                    self.session_mut(|s| s.incoming_qos2_remove(p.packet_id));
                }
                self.send_ack(lsn, Packet::PubRec(ack))
            }
        }
        Ok(())
    }

    /// Stop reading until the `congested` subscriber queues drain, but
    /// for those this connection consumes itself (it would not read the
    /// acknowledgements that drain them).
    fn hold_for(&mut self, congested: &liebre_core::Congested, now: Instant) {
        if congested.0.is_empty() {
            return;
        }
        let others: smallvec::SmallVec<[Arc<liebre_core::Queue>; 1]> = congested
            .0
            .iter()
            .filter(|q| !self.consumers().any(|c| Arc::ptr_eq(&c.queue, q)))
            .cloned()
            .collect();
        let waker = self.waker();
        self.flow.hold(&others, &waker, now);
    }

    /// Send a PUBACK/PUBREC now, or once the store has synced `lsn` (and
    /// every acknowledgement held before it has gone).
    fn send_ack(&mut self, lsn: u64, p: Packet) {
        if self.held_acks.is_none() && lsn <= self.synced() {
            self.send(p);
        } else {
            self.held_acks
                .get_or_insert_with(Default::default)
                .acks
                .push_back((lsn, p));
            self.release_acks();
        }
    }

    fn synced(&self) -> u64 {
        self.vhost
            .as_ref()
            .and_then(|v| v.store())
            .map_or(u64::MAX, |s| s.synced())
    }

    /// Send the held acknowledgements whose messages are on disk; ask the
    /// store to wake the connection for the rest. If the store failed, the
    /// rest will never be on disk: a 5.0 client gets them with reason 0x80,
    /// and for a 3.1.1 client this says the connection must close.
    fn release_acks(&mut self) -> bool {
        let Some(mut held) = self.held_acks.take() else {
            return false;
        };
        let synced = self.synced();
        let store = self.vhost.as_ref().and_then(|v| v.store()).cloned();
        let failed = store.as_ref().is_some_and(|s| s.failed());
        while let Some(&(lsn, _)) = held.acks.front() {
            if lsn > synced && !failed {
                break;
            }
            if lsn > synced && self.protocol != Protocol::V5 {
                self.held_acks = Some(held);
                return true;
            }
            let Some((_, mut p)) = held.acks.pop_front() else {
                break;
            };
            if lsn > synced {
                match &mut p {
                    Packet::PubAck(a) => a.reason = 0x80,
                    Packet::PubRec(a) => {
                        a.reason = 0x80;
                        let id = a.packet_id;
                        self.session_mut(|s| s.incoming_qos2_remove(id));
                    }
                    _ => {}
                }
            }
            self.send(p);
        }
        let Some(&(wait, _)) = held.acks.back() else {
            return false; // all sent: the box goes
        };
        if let Some(store) = store {
            held.sync_wait
                .wake_at(store.as_ref(), wait, || self.waker());
        }
        self.held_acks = Some(held);
        false
    }

    // ---- publish out -----------------------------------------------------

    fn drain_outbox(&mut self, now: Instant) {
        let Some(outbox) = self.consuming.as_ref().map(|x| &x.outbox) else {
            return;
        };
        if outbox.is_empty() || self.state != State::Connected {
            return;
        }
        for ev in outbox.drain() {
            let MqttEvent::Deliver(d, c) = ev;
            self.deliver(d, c, now);
        }
    }

    fn deliver(&mut self, d: liebre_core::Delivery, c: Arc<MqttConsumer>, now: Instant) {
        let Some(session) = self.session.clone() else {
            c.release(1);
            d.queue.requeue(vec![(&d).into()]);
            return;
        };
        let out = mapping::from_message(&d.message, d.expires_at, now);
        // Which subscriptions match (MQTT rules, `$` topics included)?
        let (matched, qos, no_local_only, ids, rap) = {
            let s = session.lock();
            let mut matched = false;
            let mut qos = QoS::AtMostOnce;
            let mut any_local_ok = false;
            let mut rap = false;
            let mut ids = Vec::new();
            let shared_queue = s.queue.as_ref().is_none_or(|q| !Arc::ptr_eq(&d.queue, q));
            for (filter, sub) in &s.subscriptions {
                if sub.share.is_some() != shared_queue {
                    continue;
                }
                if shared_queue
                    && sub
                        .share
                        .as_deref()
                        .map(|g| shared_queue_name(g, filter))
                        .as_deref()
                        != Some(&**d.queue.name())
                {
                    continue;
                }
                if !liebre_core::retained::mqtt_filter_matches(filter, &out.topic) {
                    continue;
                }
                matched = true;
                qos = qos.max(sub.options.qos);
                any_local_ok |= !sub.options.no_local;
                rap |= sub.options.retain_as_published;
                ids.extend(sub.identifier);
            }
            (matched, qos, !any_local_ok, ids, rap)
        };
        let own = d.message.origin == self.handle.id();
        if !matched || (own && no_local_only) {
            c.release(1);
            d.ack();
            return;
        }
        let qos = qos.min(out.qos);
        let mut props = out.properties;
        props.subscription_identifiers = ids;
        let body = d.message.body.clone();
        self.send_publish(
            &out.topic,
            qos,
            rap && out.retain,
            props,
            &body,
            Some((d, c)),
        );
    }

    /// Write one PUBLISH; QoS 1/2 ones are tracked in the session.
    fn send_publish(
        &mut self,
        topic: &str,
        qos: QoS,
        retain: bool,
        mut props: Properties,
        payload: &Bytes,
        source: Option<(liebre_core::Delivery, Arc<MqttConsumer>)>,
    ) {
        let v5 = self.protocol == Protocol::V5;
        let settle_now = |source: Option<(liebre_core::Delivery, Arc<MqttConsumer>)>| {
            if let Some((d, c)) = source {
                c.release(1);
                d.ack();
            }
        };
        // Outbound topic alias within the client's maximum.
        // A new alias is taken only once the PUBLISH that sets it goes out.
        let mut wire_topic = topic;
        let mut new_alias = None;
        if v5 && self.client_alias_max > 0 {
            let aliases = &mut cold(&mut self.cold).aliases;
            match aliases.outgoing.get(topic) {
                Some(&a) => {
                    props.topic_alias = Some(a);
                    wire_topic = "";
                }
                None if aliases.outgoing.len() < usize::from(self.client_alias_max) => {
                    let a = aliases.outgoing.len() as u16 + 1;
                    new_alias = Some(a);
                    props.topic_alias = Some(a);
                }
                None => {}
            }
        }
        let props_ref = v5.then_some(&props);
        let size = codec::publish_size(self.protocol, wire_topic, qos, props_ref, payload.len());
        if size as u64 > u64::from(self.client_max_packet) {
            // Larger than the client accepts: discarded as if delivered
            // (5.0 §3.1.2.11.4), and counted as dropped.
            liebre_core::Metrics::add(&self.ctx.broker.metrics().messages_dropped, 1);
            settle_now(source);
            return;
        }
        if let Some(a) = new_alias {
            cold(&mut self.cold)
                .aliases
                .outgoing
                .insert(topic.to_owned(), a);
        }
        liebre_core::Metrics::add(&self.ctx.broker.metrics().messages_sent, 1);
        if qos == QoS::AtMostOnce {
            if let Err(e) = codec::write_publish(
                &mut self.out,
                self.protocol,
                false,
                qos,
                retain,
                wire_topic,
                0,
                props_ref,
                payload,
            ) {
                tracing::error!(message = "Failed to encode PUBLISH.", %e);
            }
            settle_now(source);
            return;
        }
        let Some(session) = self.session.clone() else {
            settle_now(source);
            return;
        };
        let mut s = session.lock();
        let Some(pkid) = s.next_packet_id() else {
            drop(s);
            settle_now(source);
            return;
        };
        let mut packet = BytesMut::with_capacity(size);
        if let Err(e) = codec::write_publish(
            &mut packet,
            self.protocol,
            false,
            qos,
            retain,
            wire_topic,
            pkid,
            props_ref,
            payload,
        ) {
            tracing::error!(message = "Failed to encode PUBLISH.", %e);
            drop(s);
            settle_now(source);
            return;
        }
        let mut packet = packet.freeze();
        self.out.extend_from_slice(&packet);
        if props.topic_alias.is_some() {
            // Aliases belong to this connection: a resend on a resumed
            // session carries the topic itself.
            props.topic_alias = None;
            let mut resend = BytesMut::new();
            if codec::write_publish(
                &mut resend,
                self.protocol,
                false,
                qos,
                retain,
                topic,
                pkid,
                Some(&props),
                payload,
            )
            .is_ok()
            {
                packet = resend.freeze();
            }
        }
        let (delivery, consumer) = match source {
            Some((d, c)) => (Some(d), Some(c)),
            None => (None, None),
        };
        s.inflight.insert(
            pkid,
            InFlight {
                delivery,
                consumer,
                qos,
                released: false,
                packet,
            },
        );
    }

    fn pubrec(&mut self, a: PubAck) -> Result<(), Fatal> {
        let known = self.session_mut(|s| match s.inflight.get_mut(&a.packet_id) {
            Some(f) if f.qos == QoS::ExactlyOnce => {
                f.released = true;
                // The message has reached the client: settle it in its queue
                // now; the credit is held until PUBCOMP.
                if let Some(d) = f.delivery.take() {
                    d.ack();
                }
                true
            }
            _ => false,
        });
        if a.reason >= 0x80 {
            self.settle_out(a.packet_id, true);
            return Ok(());
        }
        let reason = if known || self.protocol != Protocol::V5 {
            0
        } else {
            0x92
        };
        self.send(Packet::PubRel(PubAck {
            packet_id: a.packet_id,
            reason,
            properties: Properties::default(),
        }));
        Ok(())
    }

    fn settle_out(&mut self, pkid: u16, qos2: bool) {
        let Some(session) = &self.session else { return };
        let f = {
            let mut s = session.lock();
            match s.inflight.get(&pkid) {
                Some(f) if (f.qos == QoS::ExactlyOnce) == qos2 => s.inflight.remove(&pkid),
                _ => None,
            }
        };
        if let Some(f) = f {
            if let Some(d) = f.delivery {
                d.ack();
            }
            if let Some(c) = f.consumer {
                c.release(1);
                c.kick_if_starved();
            }
        }
    }

    // ---- subscriptions ---------------------------------------------------

    fn subscribe(&mut self, sub: Subscribe, now: Instant) -> Result<(), Fatal> {
        let v5 = self.protocol == Protocol::V5;
        let Some(vhost) = self.vhost.clone() else {
            return Ok(());
        };
        let Some(session) = self.session.clone() else {
            return Ok(());
        };
        let id = sub.properties.subscription_identifiers.first().copied();
        let may_read = self
            .ctx
            .auth
            .check(self.user(), vhost.name(), Access::Read, MQTT_EXCHANGE);
        let mut codes = Vec::with_capacity(sub.filters.len());
        let mut retained_to_send = Vec::new();
        for (raw_filter, opts) in &sub.filters {
            if !may_read {
                codes.push(if v5 { 0x87 } else { 0x80 });
                continue;
            }
            let (share, filter) = match parse_shared(raw_filter) {
                Ok(x) => x,
                Err(()) => {
                    codes.push(if v5 { 0x8F } else { 0x80 });
                    continue;
                }
            };
            if share.is_some() && opts.no_local {
                return Err(Fatal(0x82, "no local on a shared subscription".into()));
            }
            let key = mapping::filter_to_binding_key(&filter);
            let queue_name = match &share {
                Some(g) => {
                    let name = shared_queue_name(g, &filter);
                    let q =
                        vhost.declare_queue(&name, queue_options(false), false, self.handle.id());
                    match q {
                        Ok(q) => {
                            if q.flow_limits().is_none() {
                                let owner = format!("$share/{g}/{filter}");
                                subscriber_queue(&q, &self.ctx.config, &owner);
                            }
                            self.consume(q);
                            name
                        }
                        Err(_) => {
                            codes.push(0x80);
                            continue;
                        }
                    }
                }
                None => {
                    let q = session
                        .lock()
                        .ensure_queue(self.handle.id(), &self.ctx.config);
                    match q {
                        Ok(Some(q)) => {
                            self.consume(q.clone());
                            q.name().to_string()
                        }
                        Ok(None) | Err(_) => {
                            codes.push(0x80);
                            continue;
                        }
                    }
                }
            };
            if vhost
                .bind_queue(
                    &queue_name,
                    MQTT_EXCHANGE,
                    &key,
                    Default::default(),
                    self.handle.id(),
                )
                .is_err()
            {
                codes.push(0x80);
                continue;
            }
            let granted = opts.qos;
            let existed = {
                let mut s = session.lock();
                let existed = s.subscriptions.contains_key(&filter);
                s.subscriptions.insert(
                    filter.clone(),
                    Subscription {
                        options: *opts,
                        identifier: id,
                        share: share.clone(),
                    },
                );
                self.ctx.sessions.persist(&mut s);
                existed
            };
            codes.push(granted as u8);
            let send_retained = share.is_none()
                && match opts.retain_handling {
                    0 => true,
                    1 => !existed,
                    _ => false,
                };
            if send_retained {
                retained_to_send.push((filter, opts.qos, id));
            }
        }
        self.send(Packet::SubAck(SubAck {
            packet_id: sub.packet_id,
            codes,
            properties: Properties::default(),
        }));
        for (filter, max_qos, id) in retained_to_send {
            for (_topic, msg) in vhost.retained().matching(&filter) {
                let out = mapping::from_message(&msg, None, now);
                let mut props = out.properties;
                props.subscription_identifiers = id.into_iter().collect();
                let qos = max_qos.min(out.qos);
                // Sent on subscribe, retained messages keep the flag.
                self.send_publish(&out.topic, qos, true, props, &msg.body, None);
            }
        }
        Ok(())
    }

    fn unsubscribe(&mut self, u: Unsubscribe) -> Result<(), Fatal> {
        let Some(vhost) = self.vhost.clone() else {
            return Ok(());
        };
        let Some(session) = self.session.clone() else {
            return Ok(());
        };
        let mut codes = Vec::with_capacity(u.filters.len());
        for raw in &u.filters {
            let Ok((share, filter)) = parse_shared(raw) else {
                codes.push(0x8F);
                continue;
            };
            let removed = {
                let mut s = session.lock();
                let removed = match s.subscriptions.get(&filter) {
                    Some(sub) if sub.share == share => s.subscriptions.remove(&filter),
                    _ => None,
                };
                self.ctx.sessions.persist(&mut s);
                removed
            };
            match removed {
                Some(sub) => {
                    let key = mapping::filter_to_binding_key(&filter);
                    let queue_name = match &sub.share {
                        Some(g) => {
                            let name = shared_queue_name(g, &filter);
                            if let Some(x) = &mut self.consuming {
                                if let Some(pos) =
                                    x.consumers.iter().position(|c| *c.queue.name() == *name)
                                {
                                    let c = x.consumers.remove(pos);
                                    c.queue.remove_consumer(c.id);
                                }
                            }
                            name
                        }
                        None => session
                            .lock()
                            .queue
                            .as_ref()
                            .map(|q| q.name().to_string())
                            .unwrap_or_default(),
                    };
                    if sub.share.is_none() && !queue_name.is_empty() {
                        let _ = vhost.unbind_queue(
                            &queue_name,
                            MQTT_EXCHANGE,
                            &key,
                            Default::default(),
                            self.handle.id(),
                        );
                    }
                    codes.push(0x00);
                }
                None => codes.push(0x11),
            }
        }
        if self.protocol != Protocol::V5 {
            codes.clear();
        }
        self.send(Packet::UnsubAck(UnsubAck {
            packet_id: u.packet_id,
            codes,
            properties: Properties::default(),
        }));
        Ok(())
    }
}

/// Split `$share/{group}/{filter}`. `Err` for a malformed share name.
fn parse_shared(filter: &str) -> Result<(Option<String>, String), ()> {
    match filter.strip_prefix("$share/") {
        None => Ok((None, filter.to_owned())),
        Some(rest) => match rest.split_once('/') {
            Some((group, f))
                if !group.is_empty() && !group.contains(['+', '#']) && !f.is_empty() =>
            {
                Ok((Some(group.to_owned()), f.to_owned()))
            }
            _ => Err(()),
        },
    }
}

/// Options of a queue holding messages for MQTT subscribers. Its bound
/// and what it drops are its flow limits ([`MqttConfig::flow_limits`]),
/// set once it is declared, not queue arguments: they follow the
/// configuration, also for queues that come back after a restart.
pub(crate) fn queue_options(durable: bool) -> liebre_core::QueueOptions {
    liebre_core::QueueOptions {
        durable,
        ..Default::default()
    }
}

/// Make `queue` an MQTT subscriber queue serving `owner`: its flow limits,
/// and MQTT's rule for `$` topics on its bindings.
pub(crate) fn subscriber_queue(queue: &liebre_core::Queue, config: &MqttConfig, owner: &str) {
    queue.set_flow(Some(config.flow_limits(owner)));
    queue.set_mqtt_rules(true);
}

/// The queue shared by the members of `$share/{group}/{filter}`.
fn shared_queue_name(group: &str, filter: &str) -> String {
    format!("mqtt-shared-{group}-{filter}")
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoWake;

    impl Wake for NoWake {
        fn wake(&self) {}
    }

    fn context() -> Arc<MqttContext> {
        Arc::new(MqttContext {
            broker: Arc::new(Broker::default()),
            auth: Default::default(),
            sessions: Default::default(),
            config: MqttConfig::default(),
        })
    }

    fn feed(conn: &mut MqttConnection, p: Packet, now: Instant) -> Vec<Packet> {
        let mut buf = BytesMut::new();
        codec::encode(&p, Protocol::V311, &mut buf).expect("encode");
        conn.handle_input(&mut buf, now);
        let mut out = BytesMut::new();
        conn.poll_transmit(&mut out, now);
        std::iter::from_fn(|| codec::decode(&mut out, Some(Protocol::V311), u32::MAX).ok()?)
            .collect()
    }

    fn connect(client_id: &str, clean: bool) -> Packet {
        Packet::Connect(Connect {
            protocol: Protocol::V311,
            clean_start: clean,
            keep_alive: 0,
            client_id: Str::from(client_id),
            will: None,
            username: None,
            password: None,
            properties: Properties::default(),
        })
    }

    #[test]
    fn a_clean_session_declares_its_queue_at_its_first_subscription() {
        let ctx = context();
        let vhost = ctx.broker.vhost("/").expect("vhost");
        let now = Instant::now();
        let name = Session::queue_name("idle-1");
        // A leftover of an earlier session goes at CONNECT all the same.
        vhost
            .declare_queue(&name, queue_options(true), false, 0)
            .expect("leftover");
        let peer = "127.0.0.1:40000".parse().expect("addr");
        let mut conn = MqttConnection::new(ctx.clone(), peer, Arc::new(NoWake), now);
        let out = feed(&mut conn, connect("idle-1", true), now);
        assert!(matches!(out.as_slice(), [Packet::ConnAck(a)] if a.code == 0));
        assert!(
            vhost.queue(&name).is_none(),
            "an idle clean session has no queue"
        );
        assert!(conn.consuming.is_none());

        let sub = Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: vec![(
                Str::from("jobs/+"),
                codec::SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    ..Default::default()
                },
            )],
            properties: Properties::default(),
        });
        let out = feed(&mut conn, sub, now);
        assert!(matches!(out.as_slice(), [Packet::SubAck(a)] if a.codes == [1]));
        let queue = vhost.queue(&name).expect("declared at SUBSCRIBE");
        assert!(!queue.durable());
        let msg = mapping::to_message("jobs/1", QoS::AtLeastOnce, false, "j1".into(), None, 0);
        vhost
            .publish(MQTT_EXCHANGE, Arc::new(msg))
            .expect("publish");
        let mut out = BytesMut::new();
        conn.poll_transmit(&mut out, now);
        match codec::decode(&mut out, Some(Protocol::V311), u32::MAX) {
            Ok(Some(Packet::Publish(p))) => assert_eq!(&p.payload[..], b"j1"),
            other => panic!("expected the PUBLISH, got {other:?}"),
        }

        conn.handle_disconnect(now);
        assert!(
            vhost.queue(&name).is_none(),
            "the queue goes with the session"
        );
        assert!(ctx.sessions.is_empty());
    }

    #[test]
    fn a_persistent_session_has_its_queue_from_connect() {
        let ctx = context();
        let vhost = ctx.broker.vhost("/").expect("vhost");
        let now = Instant::now();
        let peer = "127.0.0.1:40000".parse().expect("addr");
        let mut conn = MqttConnection::new(ctx.clone(), peer, Arc::new(NoWake), now);
        feed(&mut conn, connect("kept-1", false), now);
        let queue = vhost
            .queue(&Session::queue_name("kept-1"))
            .expect("a persistent session's queue");
        assert!(queue.durable());
        conn.handle_disconnect(now);
        assert!(vhost.queue(&Session::queue_name("kept-1")).is_some());
    }

    #[test]
    fn shared_subscription_names() {
        assert_eq!(parse_shared("a/b"), Ok((None, "a/b".into())));
        assert_eq!(
            parse_shared("$share/g1/a/+"),
            Ok((Some("g1".into()), "a/+".into()))
        );
        assert!(parse_shared("$share/g1").is_err());
        assert!(parse_shared("$share//a").is_err());
        assert!(parse_shared("$share/g+/a").is_err());
    }
}
