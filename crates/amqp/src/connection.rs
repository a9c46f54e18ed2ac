//! The AMQP 0-9-1 connection state machine.
//!
//! Bytes and time go in ([`Connection::handle_input`],
//! [`Connection::handle_timeout`]); bytes to write come out
//! ([`Connection::poll_transmit`]) along with the next deadline
//! ([`Connection::poll_timeout`]). It owns no socket and reads no clock, so
//! heartbeats and every error path are testable without a network.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use liebre_amqp_codec::{
    self as codec, decode_frame, decode_protocol_header, encode_method_frame, hot, FieldTable,
    FieldValue, Frame, Method, ShortStr,
};
use liebre_auth::{Access, AuthError, AuthStore};
use liebre_core::{Broker, Consumer, FastMap, Message, Metrics, QueueOptions, Throttle, VHost};
use smallvec::SmallVec;
use tracing::debug;

use crate::channel::{
    BodyParts, Channel, ChannelState, Mode, PendingPublish, TxPublish, TxSettle, Unacked,
};
use crate::consumer::{AmqpConsumer, ConsumerSpec, OutEvent, Outbox};
use crate::error::{AmqpError, Scope};
use liebre_core::Wake;

/// Limits and defaults a connection negotiates with.
#[derive(Debug, Clone)]
pub struct AmqpConfig {
    /// Largest frame we accept and propose (bytes, including the 8 bytes of
    /// frame overhead). RabbitMQ's default is 131072.
    pub frame_max: u32,
    /// Highest channel number we accept.
    pub channel_max: u16,
    /// Heartbeat interval we propose, in seconds (0 disables).
    pub heartbeat: u16,
    /// Largest message body accepted.
    pub max_message_size: u64,
    /// Deliveries buffered per connection before consumers without
    /// prefetch limits stop receiving.
    pub outbox_max_len: usize,
    /// Bytes of bodies buffered per connection likewise.
    pub outbox_max_bytes: usize,
    /// How long we wait for `connection.close-ok`.
    pub close_timeout: Duration,
    /// How long the handshake may take.
    pub handshake_timeout: Duration,
}

impl Default for AmqpConfig {
    fn default() -> Self {
        Self {
            frame_max: 131_072,
            channel_max: 2047,
            heartbeat: 60,
            max_message_size: 16 * 1024 * 1024,
            outbox_max_len: 2048,
            outbox_max_bytes: 8 * 1024 * 1024,
            close_timeout: Duration::from_secs(3),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// What a connection needs from the rest of the broker.
#[derive(Debug, Clone)]
pub struct Context {
    /// The routing core.
    pub broker: Arc<Broker>,
    /// Users and permissions.
    pub auth: Arc<AuthStore>,
    /// Limits.
    pub config: AmqpConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for the 8-byte protocol header.
    Header,
    /// Sent `connection.start`.
    StartOk,
    /// Sent `connection.tune`.
    TuneOk,
    /// Waiting for `connection.open`.
    Open,
    /// Ready for channels.
    Running,
    /// We sent `connection.close`; waiting for `close-ok` until the deadline.
    Closing,
    /// Done: flush what is pending and drop the socket.
    Closed,
}

/// One client connection.
pub struct Connection {
    ctx: Arc<Context>,
    id: u64,
    peer: SocketAddr,
    state: State,
    out: BytesMut,
    frame_max: u32,
    channel_max: u16,
    heartbeat: Duration,
    last_rx: Instant,
    last_tx: Instant,
    deadline: Option<Instant>,
    user: String,
    vhost: Option<Arc<VHost>>,
    /// Boxed: a `Channel` is large, and the map keeps room for several.
    channels: FastMap<u16, Box<Channel>>,
    outbox: Arc<Outbox>,
    /// What the client announced in `capabilities` of its
    /// `connection.start-ok` (the rest of its properties is not kept).
    capabilities: Capabilities,
    close_reason: Option<String>,
    /// The store position this connection asked to be woken at.
    sync_wait: liebre_core::persistence::SyncWait,
    /// Stopped reading: published while a resource alarm was on.
    throttle: Throttle,
    /// `connection.blocked` went out; `connection.unblocked` is owed.
    blocked_sent: bool,
    /// Stopped reading: a publish reached subscriber queues that are
    /// congested (RabbitMQ's credit flow; no `connection.blocked`).
    flow: liebre_core::Backpressure,
    /// See [`Connection::take_routed`].
    routed: bool,
    /// `tx.commit-ok`s not yet written (on any channel). No input is taken
    /// while there are some: a reply to a method pipelined after
    /// `tx.commit` must not overtake its commit-ok.
    held_commits: usize,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.id)
            .field("peer", &self.peer)
            .finish()
    }
}

impl Connection {
    /// A new connection from `peer`, at time `now`; `waker` wakes its task
    /// when deliveries arrive.
    pub fn new(ctx: Arc<Context>, peer: SocketAddr, waker: Arc<dyn Wake>, now: Instant) -> Self {
        let id = ctx.broker.next_id();
        let outbox = Arc::new(Outbox::new(
            waker,
            ctx.config.outbox_max_len,
            ctx.config.outbox_max_bytes,
        ));
        Self {
            id,
            peer,
            state: State::Header,
            out: BytesMut::new(),
            frame_max: ctx.config.frame_max,
            channel_max: ctx.config.channel_max,
            heartbeat: Duration::ZERO,
            last_rx: now,
            last_tx: now,
            deadline: Some(now + ctx.config.handshake_timeout),
            user: String::new(),
            vhost: None,
            channels: FastMap::default(),
            outbox,
            capabilities: Capabilities::default(),
            close_reason: None,
            sync_wait: Default::default(),
            throttle: Throttle::default(),
            blocked_sent: false,
            flow: Default::default(),
            routed: false,
            held_commits: 0,
            ctx,
        }
    }

    /// Broker-wide id of this connection.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The authenticated user ("" before login).
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The vhost, once opened.
    pub fn vhost(&self) -> Option<&Arc<VHost>> {
        self.vhost.as_ref()
    }

    /// Why the connection ended, if it did.
    pub fn close_reason(&self) -> Option<&str> {
        self.close_reason.as_deref()
    }

    /// Whether the socket should be closed once pending output is written.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Whether the connection takes input now: not while it is blocked by
    /// a resource alarm, nor while a `tx.commit-ok` waits for the disk
    /// (bytes already received wait in the caller's buffer, to be fed
    /// again once this turns true, after `poll_transmit`).
    pub fn wants_read(&self) -> bool {
        !self.throttle.is_blocked() && !self.flow.is_held() && self.held_commits == 0
    }

    /// Whether reading is paused by an alarm or by congested subscribers:
    /// the heartbeat monitor does not run meanwhile (as RabbitMQ's).
    fn paused(&self) -> bool {
        self.throttle.is_blocked() || self.flow.is_held()
    }

    /// Whether input since the last call routed a message to some queue
    /// (whose consumers, on other connections, were then woken). The
    /// driver uses it to let those run before it writes this connection's
    /// own replies.
    pub fn take_routed(&mut self) -> bool {
        std::mem::take(&mut self.routed)
    }

    /// Size limit for reads: a frame never needs more than this.
    pub fn frame_max(&self) -> u32 {
        self.frame_max
    }

    /// Feed received bytes; every complete frame in `buf` is handled.
    pub fn handle_input(&mut self, buf: &mut BytesMut, now: Instant) {
        if !buf.is_empty() {
            self.last_rx = now;
        }
        loop {
            match self.state {
                State::Closed => {
                    buf.clear();
                    return;
                }
                State::Header => match decode_protocol_header(buf) {
                    Ok(None) => return,
                    Ok(Some(())) => self.send_start(),
                    Err(_) => {
                        // Tell the client what we speak, then hang up.
                        self.out.extend_from_slice(codec::PROTOCOL_HEADER);
                        self.finish("bad protocol header");
                        buf.clear();
                        return;
                    }
                },
                // Blocked by an alarm, or a commit-ok is owed first: the
                // rest waits in `buf`.
                _ if !self.wants_read() => return,
                _ => match decode_frame(buf, self.frame_max) {
                    Ok(None) => return,
                    Ok(Some(frame)) => self.handle_frame(frame, now),
                    Err(e) => {
                        buf.clear();
                        self.fail(AmqpError::from(e));
                        self.finish("frame error");
                        return;
                    }
                },
            }
        }
    }

    /// Advance time: heartbeats, handshake and close deadlines.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.poll_flow(now);
        if let Some(d) = self.deadline {
            if now >= d {
                self.deadline = None;
                match self.state {
                    State::Closing => self.finish("close-ok not received in time"),
                    State::Running | State::Closed => {}
                    _ => self.finish("handshake timeout"),
                }
            }
        }
        if self.heartbeat.is_zero() || self.state != State::Running {
            return;
        }
        // Heartbeat monitoring pauses while we do not read (as RabbitMQ).
        if !self.paused() && now.duration_since(self.last_rx) >= self.heartbeat * 2 {
            debug!(message = "Missed heartbeats from client.", peer = %self.peer);
            self.finish(&format!(
                "missed heartbeats from client, timeout: {}s",
                self.heartbeat.as_secs()
            ));
            return;
        }
        if now.duration_since(self.last_tx) >= self.heartbeat / 2 {
            hot::write_heartbeat(&mut self.out);
            self.last_tx = now;
        }
    }

    /// The next instant [`Connection::handle_timeout`] has work at.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let hb = (!self.heartbeat.is_zero() && self.state == State::Running).then(|| {
            let send = self.last_tx + self.heartbeat / 2;
            if self.paused() {
                return send;
            }
            let dead = self.last_rx + self.heartbeat * 2;
            send.min(dead)
        });
        [hb, self.deadline, self.flow.deadline()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Move pending output (replies, deliveries, confirms) into `out`.
    /// Returns whether anything was written.
    pub fn poll_transmit(&mut self, out: &mut BytesMut, now: Instant) -> bool {
        self.poll_unblock(now);
        self.poll_flow(now);
        self.drain_outbox();
        self.flush_confirms();
        if self.out.is_empty() {
            return false;
        }
        if out.is_empty() {
            std::mem::swap(out, &mut self.out);
        } else {
            out.extend_from_slice(&self.out);
            self.out.clear();
        }
        self.last_tx = now;
        // Credit may have been refused while the outbox was full.
        for ch in self.channels.values() {
            ch.kick_starved();
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

    /// The socket is gone (EOF or error): release everything.
    pub fn handle_disconnect(&mut self) {
        self.release_all();
        self.state = State::Closed;
    }

    /// Server shutdown: send `connection.close` 320 CONNECTION_FORCED.
    pub fn shutdown(&mut self, now: Instant) {
        if matches!(self.state, State::Closing | State::Closed) {
            return;
        }
        if self.state == State::Header {
            self.finish("shutdown");
            return;
        }
        self.send_close(
            320,
            "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'",
            0,
            0,
            now,
        );
    }

    // ---- frames ----------------------------------------------------------

    fn handle_frame(&mut self, frame: Frame, now: Instant) {
        let content = matches!(frame, Frame::Header { .. } | Frame::Body { .. });
        let (channel, result) = match frame {
            Frame::Heartbeat { channel } => {
                let r = if channel != 0 {
                    Err(AmqpError::unexpected_frame(
                        "heartbeat frame on a non-zero channel",
                    ))
                } else {
                    Ok(())
                };
                (channel, r)
            }
            Frame::Method { channel: 0, method } => (0, self.handle_connection_method(method, now)),
            Frame::Method { channel, method } => {
                (channel, self.handle_channel_method(channel, method))
            }
            Frame::Header { channel, header } => (channel, self.handle_header(channel, header)),
            Frame::Body { channel, payload } => (channel, self.handle_body(channel, payload)),
        };
        match result {
            Ok(()) => {}
            Err(e) if e.scope == Scope::Channel && channel != 0 => {
                self.close_channel_with(channel, e)
            }
            Err(e) => self.fail_at(e, now),
        }
        if content {
            self.publish_received();
        }
    }

    /// A content frame of a publish was handled: with an alarm on, stop
    /// reading (RabbitMQ blocks at the content header or body, so a
    /// connection that only consumes is never blocked) and tell a client
    /// that asked for `connection.blocked`.
    fn publish_received(&mut self) {
        if self.state != State::Running {
            return;
        }
        let alarms = self.ctx.broker.alarms();
        if !self.throttle.publish_received(alarms, self.outbox.waker()) {
            return;
        }
        debug!(message = "Connection blocked by a resource alarm.", peer = %self.peer, reason = %alarms.reason_text());
        if self.capabilities.connection_blocked {
            let m = Method::ConnectionBlocked(codec::ConnectionBlocked {
                reason: short(&alarms.reason_text()),
            });
            self.write_method(0, &m);
            self.blocked_sent = true;
        }
    }

    /// Every alarm cleared: read again, restart the heartbeat monitor and
    /// send `connection.unblocked` if `connection.blocked` went out.
    fn poll_unblock(&mut self, now: Instant) {
        if !self.throttle.poll_unblock(self.ctx.broker.alarms()) {
            return;
        }
        debug!(message = "Connection unblocked.", peer = %self.peer);
        self.last_rx = now;
        if std::mem::take(&mut self.blocked_sent) && self.state == State::Running {
            self.write_method(0, &Method::ConnectionUnblocked);
        }
    }

    /// Congested subscriber queues drained (or the hold ran out): read
    /// again, and the heartbeat monitor starts afresh.
    fn poll_flow(&mut self, now: Instant) {
        if self.flow.poll_release(self.outbox.waker(), now) {
            self.last_rx = now;
        }
    }

    /// Stop reading until the `congested` subscriber queues drain, but for
    /// those this connection consumes itself (it would not read the
    /// acknowledgements that drain them).
    fn hold_for(&mut self, congested: &liebre_core::Congested) {
        if congested.0.is_empty() {
            return;
        }
        let others: SmallVec<[Arc<liebre_core::Queue>; 1]> = congested
            .0
            .iter()
            .filter(|q| {
                !self
                    .channels
                    .values()
                    .flat_map(|c| c.consumers.values())
                    .any(|c| Arc::ptr_eq(&c.queue, q))
            })
            .cloned()
            .collect();
        let now = self.last_rx;
        self.flow.hold(&others, self.outbox.waker(), now);
    }

    fn fail(&mut self, e: AmqpError) {
        let now = self.last_rx;
        self.fail_at(e, now);
    }

    /// Close the connection for `e`. A channel-scoped error only gets
    /// here from channel 0, where it means the connection.
    fn fail_at(&mut self, e: AmqpError, now: Instant) {
        debug!(message = "AMQP error.", peer = %self.peer, code = e.code, text = %e.text);
        if matches!(self.state, State::Closing | State::Closed) {
            return;
        }
        if matches!(self.state, State::Header | State::StartOk) {
            // No tune yet: the client cannot be expected to understand
            // connection.close; RabbitMQ just closes the socket.
            self.finish(&e.text);
            return;
        }
        self.send_close(e.code, &e.text, e.class_id, e.method_id, now);
    }

    fn send_close(&mut self, code: u16, text: &str, class_id: u16, method_id: u16, now: Instant) {
        self.release_all();
        let m = Method::ConnectionClose(codec::ConnectionClose {
            reply_code: code,
            reply_text: short(text),
            class_id,
            method_id,
        });
        self.write_method(0, &m);
        self.close_reason = Some(text.to_owned());
        self.state = State::Closing;
        self.deadline = Some(now + self.ctx.config.close_timeout);
    }

    /// Stop: nothing more is read, pending output is flushed, the socket closes.
    fn finish(&mut self, reason: &str) {
        self.release_all();
        if self.close_reason.is_none() {
            self.close_reason = Some(reason.to_owned());
        }
        self.state = State::Closed;
    }

    fn release_all(&mut self) {
        // Closing: the close handshake must be read whatever the alarms.
        self.throttle.release();
        self.flow.release();
        let channels: Vec<u16> = self.channels.keys().copied().collect();
        for ch in channels {
            self.release_channel(ch);
        }
        // Consumers are detached now; deliveries still in the outbox go
        // back to their queues (drain_outbox requeues for closed channels).
        self.drain_outbox();
        if let Some(v) = &self.vhost {
            v.connection_closed(self.id);
        }
    }

    fn write_method(&mut self, channel: u16, method: &Method) {
        // Only the broker's own, validated values are encoded here; a
        // failure would be a bug, logged instead of taking the process down.
        if let Err(e) = encode_method_frame(&mut self.out, channel, method) {
            tracing::error!(message = "Failed to encode a method.", method = method.name(), %e);
        }
    }

    // ---- connection class ------------------------------------------------

    fn send_start(&mut self) {
        self.state = State::StartOk;
        let m = Method::ConnectionStart(codec::ConnectionStart {
            version_major: 0,
            version_minor: 9,
            server_properties: server_properties(),
            mechanisms: Bytes::from_static(b"PLAIN AMQPLAIN"),
            locales: Bytes::from_static(b"en_US"),
        });
        self.write_method(0, &m);
    }

    fn handle_connection_method(&mut self, method: Method, now: Instant) -> Result<(), AmqpError> {
        let (cid, mid) = (method.class_id(), method.method_id());
        match (self.state, method) {
            (State::StartOk, Method::ConnectionStartOk(m)) => self.start_ok(m),
            (State::TuneOk, Method::ConnectionTuneOk(m)) => self.tune_ok(m, now),
            (State::Open, Method::ConnectionOpen(m)) => self.open(m),
            (State::Closing, Method::ConnectionCloseOk) => {
                self.finish("closed");
                Ok(())
            }
            (State::Closing, Method::ConnectionClose(_)) => {
                // Both sides closed at once: answer and stop.
                self.write_method(0, &Method::ConnectionCloseOk);
                self.finish("closed");
                Ok(())
            }
            (State::Closing, _) => Ok(()),
            (_, Method::ConnectionClose(m)) => {
                debug!(message = "Client closed the connection.", peer = %self.peer, code = m.reply_code);
                self.release_all();
                self.write_method(0, &Method::ConnectionCloseOk);
                self.finish("client closed the connection");
                Ok(())
            }
            (State::Running, Method::ConnectionUpdateSecret(_)) => {
                self.write_method(0, &Method::ConnectionUpdateSecretOk);
                Ok(())
            }
            (State::Running, Method::ConnectionBlocked(_) | Method::ConnectionUnblocked) => Ok(()),
            (State::Running, m) if m.class_id() == 10 => Err(AmqpError::command_invalid(format!(
                "unexpected method {} on channel 0",
                m.name()
            ))),
            (State::Running, m) => Err(AmqpError::channel_error(format!(
                "method {} is not allowed on channel 0",
                m.name()
            ))),
            (_, m) => Err(AmqpError::command_invalid(format!(
                "unexpected method {} during the handshake",
                m.name()
            ))),
        }
        .map_err(|e| e.at(cid, mid))
    }

    fn start_ok(&mut self, m: codec::ConnectionStartOk) -> Result<(), AmqpError> {
        let creds = match &*m.mechanism {
            "PLAIN" => parse_plain(&m.response),
            "AMQPLAIN" => parse_amqplain(&m.response),
            other => {
                return Err(AmqpError::connection(
                    403,
                    format!("ACCESS_REFUSED - unsupported authentication mechanism '{other}'"),
                ))
            }
        };
        let failure_close = client_capability(&m.client_properties, "authentication_failure_close");
        self.capabilities = Capabilities {
            connection_blocked: client_capability(&m.client_properties, "connection.blocked"),
            consumer_cancel_notify: client_capability(
                &m.client_properties,
                "consumer_cancel_notify",
            ),
        };
        let refused = format!(
            "ACCESS_REFUSED - Login was refused using authentication mechanism {}. For details see the broker logfile.",
            m.mechanism
        );
        let outcome = match creds {
            None => Err(refused),
            Some((user, pass)) => match self.ctx.auth.authenticate(&user, &pass, self.peer.ip()) {
                Ok(()) => Ok(user),
                Err(AuthError::LoopbackOnly(u)) => Err(format!(
                    "ACCESS_REFUSED - user '{u}' - User can only log in via localhost"
                )),
                Err(_) => Err(refused),
            },
        };
        let user = match outcome {
            Ok(user) => user,
            Err(text) => {
                tracing::info!(message = "Login refused.", peer = %self.peer, reason = %text);
                // With authentication_failure_close the client is told why
                // in connection.close 403; without it, RabbitMQ just closes.
                if failure_close {
                    let now = self.last_rx;
                    self.send_close(403, &text, 10, 11, now);
                } else {
                    self.finish(&text);
                }
                return Ok(());
            }
        };
        self.user = user;
        self.state = State::TuneOk;
        let tune = Method::ConnectionTune(codec::ConnectionTune {
            channel_max: self.ctx.config.channel_max,
            frame_max: self.ctx.config.frame_max,
            heartbeat: self.ctx.config.heartbeat,
        });
        self.write_method(0, &tune);
        Ok(())
    }

    fn tune_ok(&mut self, m: codec::ConnectionTuneOk, now: Instant) -> Result<(), AmqpError> {
        let server = &self.ctx.config;
        if m.frame_max != 0 && m.frame_max < codec::FRAME_MIN_SIZE {
            return Err(AmqpError::connection(
                530,
                format!(
                    "NOT_ALLOWED - frame_max={} < {} min size",
                    m.frame_max,
                    codec::FRAME_MIN_SIZE
                ),
            ));
        }
        if m.frame_max > server.frame_max {
            return Err(AmqpError::connection(
                530,
                format!(
                    "NOT_ALLOWED - frame_max={} > {} max size",
                    m.frame_max, server.frame_max
                ),
            ));
        }
        if m.channel_max > server.channel_max {
            return Err(AmqpError::connection(
                530,
                format!(
                    "NOT_ALLOWED - negotiated channel_max = {} is higher than the maximum allowed value ({})",
                    m.channel_max, server.channel_max
                ),
            ));
        }
        self.frame_max = if m.frame_max == 0 {
            server.frame_max
        } else {
            m.frame_max
        };
        self.channel_max = if m.channel_max == 0 {
            server.channel_max
        } else {
            m.channel_max
        };
        self.heartbeat = Duration::from_secs(u64::from(m.heartbeat));
        self.last_tx = now;
        self.state = State::Open;
        Ok(())
    }

    fn open(&mut self, m: codec::ConnectionOpen) -> Result<(), AmqpError> {
        let name: &str = &m.virtual_host;
        let vhost = self
            .ctx
            .broker
            .vhost_for_connection(name)
            .map_err(AmqpError::from)?;
        if !self.ctx.auth.can_access_vhost(&self.user, name) {
            return Err(AmqpError::connection(
                530,
                format!(
                    "NOT_ALLOWED - access to vhost '{name}' refused for user '{}'",
                    self.user
                ),
            ));
        }
        self.vhost = Some(vhost);
        self.state = State::Running;
        self.deadline = None;
        self.write_method(0, &Method::ConnectionOpenOk);
        Ok(())
    }

    // ---- channels --------------------------------------------------------

    fn handle_channel_method(&mut self, ch: u16, method: Method) -> Result<(), AmqpError> {
        let (cid, mid) = (method.class_id(), method.method_id());
        if self.state == State::Closing {
            return Ok(()); // everything but close-ok is ignored while closing
        }
        if self.state != State::Running {
            return Err(AmqpError::command_invalid(format!(
                "unexpected method {} during the handshake",
                method.name()
            ))
            .at(cid, mid));
        }
        if cid == 10 {
            return Err(AmqpError::command_invalid(format!(
                "connection method {} on channel {ch}",
                method.name()
            ))
            .at(cid, mid));
        }
        let result = self.channel_method(ch, method);
        match result {
            Ok(()) => Ok(()),
            Err(e) => {
                let e = e.at(cid, mid);
                match e.scope {
                    Scope::Connection => Err(e),
                    Scope::Channel => {
                        self.close_channel_with(ch, e);
                        Ok(())
                    }
                }
            }
        }
    }

    fn close_channel_with(&mut self, ch: u16, e: AmqpError) {
        debug!(message = "Channel error.", peer = %self.peer, channel = ch, code = e.code, text = %e.text);
        self.drain_outbox();
        self.release_channel_state(ch);
        if let Some(c) = self.channels.get_mut(&ch) {
            c.state = ChannelState::Closing;
        }
        let m = Method::ChannelClose(codec::ChannelClose {
            reply_code: e.code,
            reply_text: short(&e.text),
            class_id: e.class_id,
            method_id: e.method_id,
        });
        self.write_method(ch, &m);
    }

    fn channel_method(&mut self, ch: u16, method: Method) -> Result<(), AmqpError> {
        if method == Method::ChannelOpen {
            if ch > self.channel_max {
                return Err(AmqpError::connection(
                    530,
                    format!(
                        "NOT_ALLOWED - channel {ch} exceeds channel_max {}",
                        self.channel_max
                    ),
                ));
            }
            if self.channels.contains_key(&ch) {
                return Err(AmqpError::channel_error("second 'channel.open' seen"));
            }
            self.channels.insert(ch, Box::new(Channel::new()));
            self.write_method(ch, &Method::ChannelOpenOk);
            return Ok(());
        }
        let state = match self.channels.get(&ch) {
            None => return Err(AmqpError::channel_error("expected 'channel.open'")),
            Some(c) => c.state,
        };
        if state == ChannelState::Closing {
            // Waiting for close-ok: everything else is dropped (spec 4.5).
            match method {
                Method::ChannelCloseOk => {
                    self.channels.remove(&ch);
                }
                Method::ChannelClose(_) => {
                    self.write_method(ch, &Method::ChannelCloseOk);
                    self.channels.remove(&ch);
                }
                _ => {}
            }
            return Ok(());
        }
        if self.channels.get(&ch).is_some_and(|c| c.pending.is_some()) {
            return Err(AmqpError::unexpected_frame(format!(
                "expected content header for class 60, got non content header frame instead ({})",
                method.name()
            )));
        }
        match method {
            Method::ChannelClose(_) => {
                self.drain_outbox();
                self.release_channel(ch);
                self.write_method(ch, &Method::ChannelCloseOk);
                Ok(())
            }
            Method::ChannelCloseOk => Ok(()),
            Method::ChannelFlow(m) => {
                if let Some(c) = self.channels.get(&ch) {
                    c.credit
                        .paused
                        .store(!m.active, std::sync::atomic::Ordering::Release);
                    if m.active {
                        c.kick_starved();
                    }
                }
                self.write_method(
                    ch,
                    &Method::ChannelFlowOk(codec::ChannelFlowOk { active: m.active }),
                );
                Ok(())
            }
            Method::ChannelFlowOk(_) => Ok(()),
            Method::AccessRequest(_) => {
                self.write_method(ch, &Method::AccessRequestOk);
                Ok(())
            }
            Method::ExchangeDeclare(m) => self.exchange_declare(ch, m),
            Method::ExchangeDelete(m) => {
                self.check(Access::Configure, "exchange", &m.exchange)?;
                self.open_vhost()?
                    .delete_exchange(&m.exchange, m.if_unused)?;
                self.reply(ch, m.nowait, Method::ExchangeDeleteOk);
                Ok(())
            }
            Method::ExchangeBind(m) => {
                self.check(Access::Write, "exchange", &m.destination)?;
                self.check(Access::Read, "exchange", &m.source)?;
                self.open_vhost()?.bind_exchange(
                    &m.destination,
                    &m.source,
                    &m.routing_key,
                    m.arguments,
                )?;
                self.reply(ch, m.nowait, Method::ExchangeBindOk);
                Ok(())
            }
            Method::ExchangeUnbind(m) => {
                self.check(Access::Write, "exchange", &m.destination)?;
                self.check(Access::Read, "exchange", &m.source)?;
                self.open_vhost()?.unbind_exchange(
                    &m.destination,
                    &m.source,
                    &m.routing_key,
                    m.arguments,
                )?;
                self.reply(ch, m.nowait, Method::ExchangeUnbindOk);
                Ok(())
            }
            Method::QueueDeclare(m) => self.queue_declare(ch, m),
            Method::QueueBind(m) => {
                let queue = self.default_queue(ch, &m.queue)?;
                self.check(Access::Write, "queue", &queue)?;
                self.check(Access::Read, "exchange", &m.exchange)?;
                self.open_vhost()?.bind_queue(
                    &queue,
                    &m.exchange,
                    &m.routing_key,
                    m.arguments,
                    self.id,
                )?;
                self.reply(ch, m.nowait, Method::QueueBindOk);
                Ok(())
            }
            Method::QueueUnbind(m) => {
                let queue = self.default_queue(ch, &m.queue)?;
                self.check(Access::Write, "queue", &queue)?;
                self.check(Access::Read, "exchange", &m.exchange)?;
                self.open_vhost()?.unbind_queue(
                    &queue,
                    &m.exchange,
                    &m.routing_key,
                    m.arguments,
                    self.id,
                )?;
                self.write_method(ch, &Method::QueueUnbindOk);
                Ok(())
            }
            Method::QueuePurge(m) => {
                let queue = self.default_queue(ch, &m.queue)?;
                self.check(Access::Read, "queue", &queue)?;
                let q = self.open_vhost()?.queue_for(&queue, self.id)?;
                let n = q.purge();
                self.reply(
                    ch,
                    m.nowait,
                    Method::QueuePurgeOk(codec::QueuePurgeOk { message_count: n }),
                );
                Ok(())
            }
            Method::QueueDelete(m) => {
                let queue = self.default_queue(ch, &m.queue)?;
                self.check(Access::Configure, "queue", &queue)?;
                let n =
                    self.open_vhost()?
                        .delete_queue(&queue, m.if_unused, m.if_empty, self.id)?;
                self.reply(
                    ch,
                    m.nowait,
                    Method::QueueDeleteOk(codec::QueueDeleteOk { message_count: n }),
                );
                Ok(())
            }
            Method::BasicQos(m) => {
                if m.prefetch_size != 0 {
                    return Err(AmqpError::not_implemented(format!(
                        "prefetch_size!=0 ({})",
                        m.prefetch_size
                    )));
                }
                let c = self.channel_mut(ch)?;
                if m.global {
                    c.credit.prefetch.store(
                        u32::from(m.prefetch_count),
                        std::sync::atomic::Ordering::Release,
                    );
                    c.kick_starved();
                } else {
                    c.consumer_prefetch = u32::from(m.prefetch_count);
                }
                self.write_method(ch, &Method::BasicQosOk);
                Ok(())
            }
            Method::BasicConsume(m) => self.basic_consume(ch, m),
            Method::BasicCancel(m) => {
                self.drain_outbox();
                let c = self.channel_mut(ch)?;
                if let Some(consumer) = c.consumers.remove(&m.consumer_tag) {
                    consumer.queue.remove_consumer(consumer.id);
                }
                self.reply(
                    ch,
                    m.nowait,
                    Method::BasicCancelOk(codec::BasicCancelOk {
                        consumer_tag: m.consumer_tag,
                    }),
                );
                Ok(())
            }
            Method::BasicPublish(m) => {
                if m.immediate {
                    return Err(AmqpError::not_implemented("immediate=true"));
                }
                let c = self.channel_mut(ch)?;
                c.pending = Some(PendingPublish {
                    exchange: m.exchange,
                    routing_key: m.routing_key,
                    mandatory: m.mandatory,
                    header: None,
                    body: BodyParts::Empty,
                });
                Ok(())
            }
            Method::BasicGet(m) => self.basic_get(ch, m),
            Method::BasicAck(m) => self.settle(
                ch,
                TxSettle::Ack {
                    tag: m.delivery_tag,
                    multiple: m.multiple,
                },
            ),
            Method::BasicNack(m) => self.settle(
                ch,
                TxSettle::Reject {
                    tag: m.delivery_tag,
                    multiple: m.multiple,
                    requeue: m.requeue,
                },
            ),
            Method::BasicReject(m) => self.settle(
                ch,
                TxSettle::Reject {
                    tag: m.delivery_tag,
                    multiple: false,
                    requeue: m.requeue,
                },
            ),
            Method::BasicRecover(m) => {
                self.recover(ch, m.requeue)?;
                self.write_method(ch, &Method::BasicRecoverOk);
                Ok(())
            }
            Method::BasicRecoverAsync(m) => self.recover(ch, m.requeue),
            Method::ConfirmSelect(m) => {
                let c = self.channel_mut(ch)?;
                if c.mode == Mode::Tx {
                    return Err(AmqpError::precondition(
                        "cannot switch from tx to confirm mode",
                    ));
                }
                c.mode = Mode::Confirm;
                self.reply(ch, m.nowait, Method::ConfirmSelectOk);
                Ok(())
            }
            Method::TxSelect => {
                let c = self.channel_mut(ch)?;
                if c.mode == Mode::Confirm {
                    return Err(AmqpError::precondition(
                        "cannot switch from confirm to tx mode",
                    ));
                }
                c.mode = Mode::Tx;
                self.write_method(ch, &Method::TxSelectOk);
                Ok(())
            }
            Method::TxCommit => self.tx_commit(ch),
            Method::TxRollback => {
                let c = self.channel_mut(ch)?;
                if c.mode != Mode::Tx {
                    return Err(AmqpError::precondition("channel is not transactional"));
                }
                c.tx_publishes.clear();
                c.tx_settles.clear();
                self.write_method(ch, &Method::TxRollbackOk);
                Ok(())
            }
            m => Err(AmqpError::command_invalid(format!(
                "unexpected method {} from the client",
                m.name()
            ))),
        }
    }

    fn reply(&mut self, ch: u16, nowait: bool, m: Method) {
        if !nowait {
            self.write_method(ch, &m);
        }
    }

    fn open_vhost(&self) -> Result<Arc<VHost>, AmqpError> {
        self.vhost
            .clone()
            .ok_or_else(|| AmqpError::command_invalid("no vhost open"))
    }

    fn channel_mut(&mut self, ch: u16) -> Result<&mut Channel, AmqpError> {
        self.channels
            .get_mut(&ch)
            .map(|c| &mut **c)
            .ok_or_else(|| AmqpError::channel_error("expected 'channel.open'"))
    }

    fn check(&self, access: Access, kind: &str, name: &str) -> Result<(), AmqpError> {
        let vhost = self.vhost.as_ref().map(|v| v.name()).unwrap_or("/");
        if self.ctx.auth.check(&self.user, vhost, access, name) {
            Ok(())
        } else {
            let name = if name.is_empty() { "amq.default" } else { name };
            Err(AmqpError::access_refused(kind, name, vhost, &self.user))
        }
    }

    /// An empty queue name means "the last queue declared on this channel"
    /// in the spec; RabbitMQ keeps that rule.
    fn default_queue(&self, ch: u16, name: &ShortStr) -> Result<ShortStr, AmqpError> {
        if !name.is_empty() {
            return Ok(name.clone());
        }
        self.channels
            .get(&ch)
            .and_then(|c| c.last_queue.clone())
            .ok_or_else(|| AmqpError::channel(404, "NOT_FOUND - no previously declared queue"))
    }

    fn exchange_declare(&mut self, ch: u16, m: codec::ExchangeDeclare) -> Result<(), AmqpError> {
        if !m.passive {
            self.check(Access::Configure, "exchange", &m.exchange)?;
        }
        let opts = liebre_core::ExchangeOptions {
            durable: m.durable,
            auto_delete: m.auto_delete,
            internal: m.internal,
            arguments: m.arguments,
        };
        self.open_vhost()?
            .declare_exchange(&m.exchange, &m.kind, opts, m.passive)?;
        self.reply(ch, m.nowait, Method::ExchangeDeclareOk);
        Ok(())
    }

    fn queue_declare(&mut self, ch: u16, m: codec::QueueDeclare) -> Result<(), AmqpError> {
        let vhost = self.open_vhost()?;
        if m.passive && &*m.queue == "amq.rabbitmq.reply-to" {
            self.reply(
                ch,
                m.nowait,
                Method::QueueDeclareOk(codec::QueueDeclareOk {
                    queue: m.queue,
                    message_count: 0,
                    consumer_count: 0,
                }),
            );
            return Ok(());
        }
        if !m.passive && !m.queue.is_empty() {
            self.check(Access::Configure, "queue", &m.queue)?;
        }
        let options = QueueOptions {
            durable: m.durable,
            exclusive_owner: m.exclusive.then_some(self.id),
            auto_delete: m.auto_delete,
            arguments: m.arguments,
        };
        let q = vhost.declare_queue(&m.queue, options, m.passive, self.id)?;
        let (messages, consumers) = q.counts();
        self.channel_mut(ch)?.last_queue = Some(q.name().clone());
        self.reply(
            ch,
            m.nowait,
            Method::QueueDeclareOk(codec::QueueDeclareOk {
                queue: q.name().clone(),
                message_count: messages,
                consumer_count: consumers,
            }),
        );
        Ok(())
    }

    fn basic_consume(&mut self, ch: u16, m: codec::BasicConsume) -> Result<(), AmqpError> {
        let vhost = self.open_vhost()?;
        let id = self.ctx.broker.next_id();
        let cancel_notify = self.capabilities.consumer_cancel_notify;
        let queue = if &*m.queue == "amq.rabbitmq.reply-to" {
            if !m.no_ack {
                return Err(AmqpError::precondition("reply consumer cannot acknowledge"));
            }
            let c = self.channel_mut(ch)?;
            if c.reply_queue.is_some() {
                return Err(AmqpError::precondition("reply consumer already set"));
            }
            let q = vhost.declare_reply_queue(self.id);
            self.channel_mut(ch)?.reply_queue = Some(q.clone());
            q
        } else {
            let name = self.default_queue(ch, &m.queue)?;
            self.check(Access::Read, "queue", &name)?;
            vhost.queue_for(&name, self.id)?
        };
        let tag = if m.consumer_tag.is_empty() {
            liebre_core::vhost::generated_name("amq.ctag-")
        } else {
            m.consumer_tag.clone()
        };
        let outbox = self.outbox.clone();
        let c = self.channel_mut(ch)?;
        if c.consumers.contains_key(&tag) {
            return Err(AmqpError::connection(
                530,
                format!("NOT_ALLOWED - attempt to reuse consumer tag '{tag}'"),
            ));
        }
        let consumer = AmqpConsumer::new(
            ConsumerSpec {
                channel: ch,
                tag: tag.clone(),
                id,
                no_ack: m.no_ack,
                prefetch: c.consumer_prefetch,
                cancel_notify,
            },
            queue.clone(),
            c.credit.clone(),
            outbox,
        );
        queue.add_consumer(Consumer {
            id,
            tag: tag.clone(),
            no_ack: m.no_ack,
            exclusive: m.exclusive,
            priority: consumer_priority(&m.arguments)?,
            sink: consumer.clone(),
        })?;
        self.channel_mut(ch)?
            .consumers
            .insert(tag.clone(), consumer);
        // consume-ok precedes every delivery: deliveries wait in the outbox
        // and reach `out` only when it is drained, after this is written.
        self.reply(
            ch,
            m.nowait,
            Method::BasicConsumeOk(codec::BasicConsumeOk { consumer_tag: tag }),
        );
        Ok(())
    }

    fn basic_get(&mut self, ch: u16, m: codec::BasicGet) -> Result<(), AmqpError> {
        let name = self.default_queue(ch, &m.queue)?;
        self.check(Access::Read, "queue", &name)?;
        let q = self.open_vhost()?.queue_for(&name, self.id)?;
        self.drain_outbox();
        let frame_max = self.frame_max;
        match q.get(m.no_ack) {
            None => self.write_method(ch, &Method::BasicGetEmpty),
            Some(got) => {
                let delivery = liebre_core::Delivery {
                    queue: q.clone(),
                    consumer_tag: ShortStr::from(""),
                    message: got.message.clone(),
                    seq: got.seq,
                    redelivered: got.redelivered,
                    expires_at: got.expires_at,
                    needs_ack: !m.no_ack,
                    stored: got.stored,
                };
                let c = self.channel_mut(ch)?;
                let tag = c.track(delivery, None);
                let msg = &got.message;
                hot::write_basic_get_ok(
                    &mut self.out,
                    ch,
                    tag,
                    got.redelivered,
                    &msg.exchange,
                    &msg.routing_key,
                    got.remaining as u32,
                );
                hot::write_content(
                    &mut self.out,
                    ch,
                    60,
                    &msg.raw_properties,
                    &msg.body,
                    frame_max,
                );
                Metrics::add(&self.ctx.broker.metrics().messages_sent, 1);
            }
        }
        Ok(())
    }

    fn settle(&mut self, ch: u16, s: TxSettle) -> Result<(), AmqpError> {
        let c = self.channel_mut(ch)?;
        if c.mode == Mode::Tx {
            // Validate now (unknown tags fail at once), apply on commit.
            let (tag, multiple) = match &s {
                TxSettle::Ack { tag, multiple } | TxSettle::Reject { tag, multiple, .. } => {
                    (*tag, *multiple)
                }
            };
            let known = (multiple && tag == 0) || c.unacked.iter().any(|u| u.tag == tag);
            if !known {
                return Err(AmqpError::precondition(format!(
                    "unknown delivery tag {tag}"
                )));
            }
            c.tx_settles.push(s);
            return Ok(());
        }
        Self::apply_settle(c, s)
    }

    fn apply_settle(c: &mut Channel, s: TxSettle) -> Result<(), AmqpError> {
        let (tag, multiple, requeue) = match s {
            TxSettle::Ack { tag, multiple } => (tag, multiple, None),
            TxSettle::Reject {
                tag,
                multiple,
                requeue,
            } => (tag, multiple, Some(requeue)),
        };
        let settled: Vec<Unacked> = c
            .take_unacked(tag, multiple)
            .map_err(|()| AmqpError::precondition(format!("unknown delivery tag {tag}")))?;
        Channel::settle(settled, requeue);
        c.kick_starved();
        Ok(())
    }

    fn recover(&mut self, ch: u16, requeue: bool) -> Result<(), AmqpError> {
        if !requeue {
            return Err(AmqpError::not_implemented("requeue=false"));
        }
        self.drain_outbox();
        let c = self.channel_mut(ch)?;
        let all: Vec<Unacked> = c.unacked.drain(..).collect();
        Channel::settle(all, Some(true));
        c.kick_starved();
        Ok(())
    }

    fn tx_commit(&mut self, ch: u16) -> Result<(), AmqpError> {
        let vhost = self.open_vhost()?;
        let c = self.channel_mut(ch)?;
        if c.mode != Mode::Tx {
            return Err(AmqpError::precondition("channel is not transactional"));
        }
        let publishes = std::mem::take(&mut c.tx_publishes);
        let settles = std::mem::take(&mut c.tx_settles);
        for s in settles {
            // Tags were validated when received; one settled twice within
            // the transaction is ignored rather than failing the commit.
            let _ = Self::apply_settle(c, s);
        }
        let mut lsn = 0;
        for p in publishes {
            lsn =
                lsn.max(self.route_and_enqueue(ch, &vhost, &p.exchange, p.message, p.mandatory)?);
        }
        // Commit-ok once the committed persistent messages are on disk.
        let c = self.channel_mut(ch)?;
        c.commit_oks.push_back(lsn);
        self.held_commits += 1;
        Ok(())
    }

    // ---- content ---------------------------------------------------------

    fn handle_header(&mut self, ch: u16, header: codec::ContentHeader) -> Result<(), AmqpError> {
        let max = self.ctx.config.max_message_size;
        let c = match self.channels.get_mut(&ch) {
            Some(c) if c.state == ChannelState::Closing => return Ok(()),
            Some(c) => c,
            None => return Err(AmqpError::channel_error("expected 'channel.open'")),
        };
        let Some(p) = c.pending.as_mut().filter(|p| p.header.is_none()) else {
            return Err(AmqpError::unexpected_frame(
                "expected method frame, got non method frame instead",
            ));
        };
        if header.class_id != 60 {
            return Err(AmqpError::unexpected_frame(format!(
                "content header for class {} does not match method class 60",
                header.class_id
            )));
        }
        if header.body_size > max {
            c.pending = None;
            let e = AmqpError::precondition(format!(
                "message size {} is larger than configured max size {max}",
                header.body_size
            ))
            .at(60, 40);
            self.close_channel_with(ch, e);
            return Ok(());
        }
        let size = header.body_size;
        p.header = Some((header.properties, header.raw_properties, size));
        if size == 0 {
            return self.complete_publish(ch);
        }
        Ok(())
    }

    fn handle_body(&mut self, ch: u16, payload: Bytes) -> Result<(), AmqpError> {
        let c = match self.channels.get_mut(&ch) {
            Some(c) if c.state == ChannelState::Closing => return Ok(()),
            Some(c) => c,
            None => return Err(AmqpError::channel_error("expected 'channel.open'")),
        };
        let Some(p) = c.pending.as_mut().filter(|p| p.header.is_some()) else {
            return Err(AmqpError::unexpected_frame(
                "expected method frame, got non method frame instead",
            ));
        };
        let expected = p.header.as_ref().map(|h| h.2).unwrap_or(0);
        if (p.body.len() + payload.len()) as u64 > expected {
            return Err(AmqpError::unexpected_frame(
                "content body exceeds the size announced in its header",
            ));
        }
        p.body.push(payload);
        if p.body.len() as u64 == expected {
            return self.complete_publish(ch);
        }
        Ok(())
    }

    fn complete_publish(&mut self, ch: u16) -> Result<(), AmqpError> {
        let vhost = self.open_vhost()?;
        let user = self.user.clone();
        let c = self.channel_mut(ch)?;
        let Some(p) = c.pending.take() else {
            return Ok(());
        };
        let Some((mut properties, mut raw, _)) = p.header else {
            return Ok(());
        };
        let body = p.body.into_bytes();
        let fail = |e: AmqpError| Err(e.at(60, 40));
        if let Some(uid) = &properties.user_id {
            if **uid != user {
                return fail(AmqpError::precondition(format!(
                    "user_id property set to '{uid}' but authenticated user was '{user}'"
                )));
            }
        }
        if let Some(exp) = &properties.expiration {
            if liebre_core::message::parse_expiration(exp).is_none() {
                return fail(AmqpError::precondition(format!(
                    "invalid expiration '{exp}': no_integer"
                )));
            }
        }
        if properties.reply_to.as_deref() == Some("amq.rabbitmq.reply-to") {
            let Some(q) = c.reply_queue.as_ref() else {
                return fail(AmqpError::precondition(
                    "fast reply consumer does not exist",
                ));
            };
            properties.reply_to = Some(q.name().clone());
            raw = liebre_core::message::encode_properties(&properties);
        }
        // Write permission, cached per channel.
        if !c.write_ok.contains(&p.exchange) {
            self.check(Access::Write, "exchange", &p.exchange)
                .map_err(|e| e.at(60, 40))?;
            let c = self.channel_mut(ch)?;
            if c.write_ok.len() < 16 {
                c.write_ok.push(p.exchange.clone());
            }
        }
        let mut message = Message::new(p.exchange.clone(), p.routing_key, properties, raw, body);
        message.origin = self.id;
        let message = Arc::new(message);
        let c = self.channel_mut(ch)?;
        if c.mode == Mode::Tx {
            if vhost.exchange(&p.exchange).is_none() && !p.exchange.is_empty() {
                return fail(AmqpError::from(liebre_core::CoreError::no_exchange(
                    vhost.name(),
                    &p.exchange,
                )));
            }
            c.tx_publishes.push(TxPublish {
                exchange: p.exchange,
                message,
                mandatory: p.mandatory,
            });
            return Ok(());
        }
        self.route_and_enqueue(ch, &vhost, &p.exchange, message, p.mandatory)
            .map(drop)
            .map_err(|e| e.at(60, 40))
    }

    fn route_and_enqueue(
        &mut self,
        ch: u16,
        vhost: &VHost,
        exchange: &str,
        message: Arc<Message>,
        mandatory: bool,
    ) -> Result<u64, AmqpError> {
        let outcome = vhost.publish(exchange, message.clone())?;
        self.routed |= outcome.routed > 0;
        self.hold_for(&outcome.congested);
        if outcome.routed == 0 && mandatory {
            hot::write_basic_return(
                &mut self.out,
                ch,
                312,
                "NO_ROUTE",
                exchange,
                &message.routing_key,
            );
            hot::write_content(
                &mut self.out,
                ch,
                60,
                &message.raw_properties,
                &message.body,
                self.frame_max,
            );
        }
        let c = self.channel_mut(ch)?;
        if c.mode == Mode::Confirm {
            let seq = c.next_publish_seq;
            c.next_publish_seq += 1;
            c.confirms.push_back((seq, !outcome.rejected, outcome.lsn));
        }
        Ok(outcome.lsn)
    }

    /// Write pending confirms, one `multiple` ack per run of acks, and
    /// `tx.commit-ok`s. Those of persistent messages wait until the store
    /// has them on disk (and everything after them on the channel waits
    /// too, to keep the order); the connection asks the store to wake it.
    /// If the store failed, what it will never have is refused: a nack
    /// for each such confirm, and the connection closes (541) for a
    /// commit.
    fn flush_confirms(&mut self) {
        if self
            .channels
            .values()
            .all(|c| c.confirms.is_empty() && c.commit_oks.is_empty())
        {
            return;
        }
        let store = self.vhost.as_ref().and_then(|v| v.store()).cloned();
        let synced = store.as_ref().map_or(u64::MAX, |s| s.synced());
        let failed = store.as_ref().is_some_and(|s| s.failed());
        let mut wait = 0u64;
        let mut lost_commit = false;
        for (&ch, c) in self.channels.iter_mut() {
            while let Some(&lsn) = c.commit_oks.front() {
                if lsn > synced {
                    lost_commit |= failed;
                    wait = wait.max(lsn);
                    break;
                }
                c.commit_oks.pop_front();
                self.held_commits -= 1;
                if let Err(e) = encode_method_frame(&mut self.out, ch, &Method::TxCommitOk) {
                    tracing::error!(message = "Failed to encode tx.commit-ok.", %e);
                }
            }
            if c.confirms.is_empty() {
                continue;
            }
            let mut ready = c.confirms.iter().take_while(|x| x.2 <= synced).count();
            if failed {
                for x in c.confirms.iter_mut().skip(ready) {
                    x.1 &= x.2 <= synced;
                }
                ready = c.confirms.len();
            }
            if let Some(&(_, _, lsn)) = c.confirms.back().filter(|_| ready < c.confirms.len()) {
                wait = wait.max(lsn);
            }
            let confirms: Vec<(u64, bool, u64)> = c.confirms.drain(..ready).collect();
            let mut i = 0;
            while i < confirms.len() {
                let (seq, ack, _) = confirms[i];
                if !ack {
                    hot::write_basic_nack(&mut self.out, ch, seq, false, false);
                    i += 1;
                    continue;
                }
                let mut j = i;
                while j + 1 < confirms.len() && confirms[j + 1].1 {
                    j += 1;
                }
                let last = confirms[j].0;
                hot::write_basic_ack(&mut self.out, ch, last, j > i);
                i = j + 1;
            }
        }
        if lost_commit {
            self.fail(AmqpError::connection(
                541,
                "INTERNAL_ERROR - the message store failed: a committed transaction is not on disk",
            ));
            return;
        }
        if let (Some(store), true) = (store, wait > 0 && !failed) {
            self.sync_wait
                .wake_at(store.as_ref(), wait, || self.outbox.waker().clone());
        }
    }

    // ---- deliveries ------------------------------------------------------

    fn drain_outbox(&mut self) {
        if self.outbox.is_empty() {
            return;
        }
        let frame_max = self.frame_max;
        let mut sent = 0u64;
        for event in self.outbox.drain() {
            match event {
                OutEvent::Deliver {
                    channel,
                    delivery,
                    consumer,
                } => {
                    let open = self
                        .channels
                        .get(&channel)
                        .is_some_and(|c| c.state == ChannelState::Open)
                        && self.state == State::Running;
                    if !open {
                        // The channel went away while this was in flight.
                        consumer.release(1);
                        if delivery.needs_ack {
                            delivery.queue.requeue(vec![(&delivery).into()]);
                        }
                        continue;
                    }
                    let Some(c) = self.channels.get_mut(&channel) else {
                        continue;
                    };
                    let msg = delivery.message.clone();
                    let redelivered = delivery.redelivered;
                    let tag_str = delivery.consumer_tag.clone();
                    let consumer = (!consumer.no_ack).then_some(consumer);
                    let tag = c.track(delivery, consumer);
                    hot::write_basic_deliver(
                        &mut self.out,
                        channel,
                        &tag_str,
                        tag,
                        redelivered,
                        &msg.exchange,
                        &msg.routing_key,
                    );
                    hot::write_content(
                        &mut self.out,
                        channel,
                        60,
                        &msg.raw_properties,
                        &msg.body,
                        frame_max,
                    );
                    sent += 1;
                }
                OutEvent::Cancel {
                    channel,
                    consumer_tag,
                } => {
                    let Some(c) = self.channels.get_mut(&channel) else {
                        continue;
                    };
                    let Some(consumer) = c.consumers.remove(&consumer_tag) else {
                        continue;
                    };
                    if consumer.cancel_notify && c.state == ChannelState::Open {
                        let m = Method::BasicCancel(codec::BasicCancel {
                            consumer_tag,
                            nowait: true,
                        });
                        self.write_method(channel, &m);
                    }
                }
            }
        }
        Metrics::add(&self.ctx.broker.metrics().messages_sent, sent);
    }

    /// Requeue a channel's unacked messages and detach its consumers, keeping the channel entry.
    fn release_channel_state(&mut self, ch: u16) {
        let vhost = self.vhost.clone();
        let Some(c) = self.channels.get_mut(&ch) else {
            return;
        };
        for (_, consumer) in c.consumers.drain() {
            consumer.queue.remove_consumer(consumer.id);
        }
        c.pending = None;
        c.tx_publishes.clear();
        c.tx_settles.clear();
        c.confirms.clear();
        // A closed channel owes no commit-ok.
        self.held_commits -= c.commit_oks.len();
        c.commit_oks.clear();
        let all: Vec<Unacked> = c.unacked.drain(..).collect();
        Channel::settle(all, Some(true));
        if let (Some(q), Some(v)) = (c.reply_queue.take(), vhost) {
            v.delete_queue_unchecked(q.name());
        }
    }

    fn release_channel(&mut self, ch: u16) {
        self.release_channel_state(ch);
        self.channels.remove(&ch);
    }
}

/// The client capabilities the connection acts on.
#[derive(Debug, Default, Clone, Copy)]
struct Capabilities {
    connection_blocked: bool,
    consumer_cancel_notify: bool,
}

/// Whether the client announced `name` in its `capabilities` table.
fn client_capability(client_properties: &FieldTable, name: &str) -> bool {
    match client_properties.get("capabilities") {
        Some(FieldValue::Table(t)) => t.get(name).and_then(FieldValue::as_bool).unwrap_or(false),
        _ => false,
    }
}

/// The `x-priority` consumer argument (RabbitMQ: an integer, default 0).
fn consumer_priority(args: &FieldTable) -> Result<i32, AmqpError> {
    match args.get("x-priority") {
        None => Ok(0),
        Some(v) => v
            .as_i64()
            .and_then(|p| i32::try_from(p).ok())
            .ok_or_else(|| AmqpError::precondition("invalid arg 'x-priority': not an integer")),
    }
}

fn short(s: &str) -> ShortStr {
    let mut end = s.len().min(255);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    ShortStr::from(&s[..end])
}

fn parse_plain(response: &Bytes) -> Option<(String, String)> {
    // "authzid \0 authcid \0 password"
    let mut parts = response.split(|&b| b == 0);
    let _authzid = parts.next()?;
    let user = std::str::from_utf8(parts.next()?).ok()?;
    let pass = std::str::from_utf8(parts.next()?).ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some((user.to_owned(), pass.to_owned()))
}

fn parse_amqplain(response: &Bytes) -> Option<(String, String)> {
    // A field table without its length prefix.
    let mut framed = bytes::BytesMut::with_capacity(response.len() + 4);
    framed.extend_from_slice(&u32::try_from(response.len()).ok()?.to_be_bytes());
    framed.extend_from_slice(response);
    let table = FieldTable::decode(&framed.freeze()).ok()?;
    let user = table.get("LOGIN")?.as_str()?.to_owned();
    let pass = table.get("PASSWORD")?.as_str()?.to_owned();
    Some((user, pass))
}

fn server_properties() -> FieldTable {
    let s = |v: &str| FieldValue::LongString(Bytes::copy_from_slice(v.as_bytes()));
    let mut caps = FieldTable::default();
    for cap in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "authentication_failure_close",
        "per_consumer_qos",
        "consumer_priorities",
        "direct_reply_to",
    ] {
        caps.insert(ShortStr::from(cap), FieldValue::Bool(true));
    }
    let mut t = FieldTable::default();
    t.insert(ShortStr::from("capabilities"), FieldValue::Table(caps));
    t.insert(ShortStr::from("cluster_name"), s("liebre@localhost"));
    t.insert(
        ShortStr::from("copyright"),
        s("Copyright (c) the Liebre developers"),
    );
    t.insert(
        ShortStr::from("information"),
        s("Licensed under the Apache License 2.0"),
    );
    t.insert(ShortStr::from("platform"), s("Rust"));
    t.insert(ShortStr::from("product"), s("Liebre"));
    t.insert(ShortStr::from("version"), s(env!("CARGO_PKG_VERSION")));
    t
}
