//! Shared helpers: a server per test, an MQTT client that wraps rumqttc's
//! 3.1.1 and 5.0 APIs behind one interface (so a scenario is written once
//! and run for both versions), bounded waits, and lapin helpers for the
//! cross-protocol tests.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use lapin::message::{Delivery, DeliveryResult};
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use liebre_server::{Config, Server};
use rumqttc::v5::mqttbytes::v5 as p5;
use rumqttc::v5::mqttbytes::QoS as QoS5;
use rumqttc::QoS as QoS4;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Upper bound for any single wait on the broker. Generous: the suite runs
/// in parallel on a small machine; a correct broker answers in
/// milliseconds, a buggy one fails the test instead of hanging it.
pub(crate) const WAIT: Duration = Duration::from_secs(15);

/// Upper bound for a whole test.
pub(crate) const TEST_LIMIT: Duration = Duration::from_secs(120);

/// Run a test body with an overall time limit.
pub(crate) async fn guard<F: Future<Output = ()>>(body: F) {
    if tokio::time::timeout(TEST_LIMIT, body).await.is_err() {
        panic!("test did not finish within {TEST_LIMIT:?}");
    }
}

/// Await `fut`, failing the test if it takes longer than [`WAIT`].
pub(crate) async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    within_for(WAIT, what, fut).await
}

/// Await `fut`, failing the test if it takes longer than `limit`.
pub(crate) async fn within_for<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

static DIR_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A unique scratch directory, removed on drop.
#[derive(Debug)]
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new() -> Self {
        let n = DIR_COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let p =
            std::env::temp_dir().join(format!("liebre-mqtt-it-{}-{n}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).expect("create temp dir");
        Self(p)
    }

    pub(crate) fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A broker on ephemeral loopback ports.
pub(crate) struct TestServer {
    server: Option<Server>,
    /// MQTT over TCP.
    pub(crate) mqtt: SocketAddr,
    /// MQTT over WebSocket.
    pub(crate) ws: SocketAddr,
    /// AMQP.
    pub(crate) amqp: SocketAddr,
    _dir: TempDir,
}

impl TestServer {
    pub(crate) async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub(crate) async fn start_with(configure: impl FnOnce(&mut Config)) -> Self {
        let dir = TempDir::new();
        let mut config = Config::ephemeral(dir.path());
        configure(&mut config);
        let server = within("server start", Server::start(config))
            .await
            .expect("server starts");
        Self {
            mqtt: server.mqtt_addrs()[0],
            ws: server.mqtt_ws_addrs()[0],
            amqp: server.amqp_addrs()[0],
            server: Some(server),
            _dir: dir,
        }
    }

    pub(crate) fn server(&self) -> &Server {
        self.server.as_ref().expect("server running")
    }

    pub(crate) fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@{}/%2F", self.amqp)
    }

    /// A client of this server's TCP listener.
    pub(crate) async fn client(&self, v: V, opts: Opts) -> Client {
        Client::connect(self.mqtt, v, opts).await
    }

    pub(crate) async fn try_client(&self, v: V, opts: Opts) -> Result<Client, Refused> {
        Client::try_connect(self.mqtt, v, opts).await
    }

    pub(crate) async fn shutdown(&mut self) {
        if let Some(s) = self.server.take() {
            within_for(Duration::from_secs(30), "server shutdown", s.shutdown()).await;
        }
    }
}

// ---- the MQTT client ------------------------------------------------------

/// Protocol version of a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum V {
    /// 3.1.1 (rumqttc's top-level API).
    V4,
    /// 5.0 (`rumqttc::v5`).
    V5,
}

/// Connection options common to both versions.
#[derive(Debug, Clone)]
pub(crate) struct Opts {
    pub(crate) id: String,
    /// 3.1.1 clean session / 5.0 clean start.
    pub(crate) clean: bool,
    /// 5.0 Session Expiry Interval.
    pub(crate) session_expiry: Option<u32>,
    /// (topic, payload, qos, retain).
    pub(crate) will: Option<(String, Vec<u8>, u8, bool)>,
    pub(crate) credentials: Option<(String, String)>,
    pub(crate) keep_alive: Duration,
    /// Connect over WebSocket with this URL path instead of TCP.
    pub(crate) ws_path: Option<String>,
    /// 5.0 Receive Maximum / 3.1.1 rumqttc inflight.
    pub(crate) inflight: Option<u16>,
}

impl Opts {
    pub(crate) fn new(id: &str) -> Self {
        Self {
            id: id.to_owned(),
            clean: true,
            session_expiry: None,
            will: None,
            credentials: None,
            keep_alive: Duration::from_secs(30),
            ws_path: None,
            inflight: None,
        }
    }

    /// A persistent session: 3.1.1 clean_session=false; 5.0 clean_start=false
    /// with a Session Expiry Interval of an hour.
    pub(crate) fn persistent(mut self) -> Self {
        self.clean = false;
        self.session_expiry = Some(3600);
        self
    }

    pub(crate) fn will(mut self, topic: &str, payload: &[u8], qos: u8, retain: bool) -> Self {
        self.will = Some((topic.to_owned(), payload.to_vec(), qos, retain));
        self
    }

    pub(crate) fn credentials(mut self, user: &str, pass: &str) -> Self {
        self.credentials = Some((user.to_owned(), pass.to_owned()));
        self
    }

    pub(crate) fn ws(mut self, path: &str) -> Self {
        self.ws_path = Some(path.to_owned());
        self
    }
}

/// A received PUBLISH, either version.
#[derive(Debug, Clone)]
pub(crate) struct Msg {
    pub(crate) topic: String,
    pub(crate) payload: Vec<u8>,
    pub(crate) qos: u8,
    pub(crate) retain: bool,
    pub(crate) dup: bool,
    /// 5.0 only.
    pub(crate) props: Option<p5::PublishProperties>,
}

impl Msg {
    pub(crate) fn body(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

/// What the eventloop task forwards.
#[derive(Debug)]
pub(crate) enum Ev {
    ConnAck {
        present: bool,
        assigned: Option<String>,
    },
    Publish(Msg),
    PubAck(u16),
    PubRec(u16),
    PubComp(u16),
    SubAck(Vec<u8>),
    UnsubAck,
    /// 5.0 DISCONNECT from the server, with its reason code.
    Disconnect(u8),
    /// The connection was refused in CONNACK: rumqttc's name of the code,
    /// and the code on the wire.
    Refused(String, u8),
    /// The eventloop ended with this error.
    Closed(String),
}

/// Why a connection attempt failed.
#[derive(Debug)]
pub(crate) enum Refused {
    /// CONNACK with this (name, wire code).
    Code(String, u8),
    /// Something else (network, WebSocket handshake...).
    Other(String),
}

enum Handle {
    V4(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

/// One MQTT client: rumqttc's eventloop runs in a task that forwards
/// events; the test reads them with bounded waits. Publishes that arrive
/// while waiting for something else are kept, in order.
pub(crate) struct Client {
    pub(crate) v: V,
    pub(crate) id: String,
    handle: Handle,
    rx: mpsc::UnboundedReceiver<Ev>,
    task: JoinHandle<()>,
    pending: VecDeque<Msg>,
    /// CONNACK session present.
    pub(crate) session_present: bool,
    /// 5.0 Assigned Client Identifier.
    pub(crate) assigned_id: Option<String>,
    /// A DISCONNECT seen from the server.
    pub(crate) disconnect_reason: Option<u8>,
    closed: Option<String>,
}

fn qos4(q: u8) -> QoS4 {
    match q {
        0 => QoS4::AtMostOnce,
        1 => QoS4::AtLeastOnce,
        _ => QoS4::ExactlyOnce,
    }
}

pub(crate) fn qos5(q: u8) -> QoS5 {
    match q {
        0 => QoS5::AtMostOnce,
        1 => QoS5::AtLeastOnce,
        _ => QoS5::ExactlyOnce,
    }
}

fn v5_connack_code(c: p5::ConnectReturnCode) -> u8 {
    use p5::ConnectReturnCode as C;
    match c {
        C::Success => 0,
        C::RefusedProtocolVersion => 1,
        C::BadClientId => 2,
        C::ServiceUnavailable => 3,
        C::UnspecifiedError => 0x80,
        C::MalformedPacket => 0x81,
        C::ProtocolError => 0x82,
        C::ImplementationSpecificError => 0x83,
        C::UnsupportedProtocolVersion => 0x84,
        C::ClientIdentifierNotValid => 0x85,
        C::BadUserNamePassword => 0x86,
        C::NotAuthorized => 0x87,
        C::ServerUnavailable => 0x88,
        C::ServerBusy => 0x89,
        C::Banned => 0x8A,
        C::BadAuthenticationMethod => 0x8C,
        C::TopicNameInvalid => 0x90,
        C::PacketTooLarge => 0x95,
        C::QuotaExceeded => 0x97,
        C::PayloadFormatInvalid => 0x99,
        C::RetainNotSupported => 0x9A,
        C::QoSNotSupported => 0x9B,
        C::UseAnotherServer => 0x9C,
        C::ServerMoved => 0x9D,
        C::ConnectionRateExceeded => 0x9F,
    }
}

fn v5_suback_code(c: &p5::SubscribeReasonCode) -> u8 {
    use p5::SubscribeReasonCode as S;
    match c {
        S::Success(q) => *q as u8,
        S::Failure | S::Unspecified => 0x80,
        S::ImplementationSpecific => 0x83,
        S::NotAuthorized => 0x87,
        S::TopicFilterInvalid => 0x8F,
        S::PkidInUse => 0x91,
        S::QuotaExceeded => 0x97,
        S::SharedSubscriptionsNotSupported => 0x9E,
        S::SubscriptionIdNotSupported => 0xA1,
        S::WildcardSubscriptionsNotSupported => 0xA2,
    }
}

fn spawn_v4(mut el: rumqttc::EventLoop, tx: mpsc::UnboundedSender<Ev>) -> JoinHandle<()> {
    use rumqttc::{ConnectionError, Event, Packet, SubscribeReasonCode};
    tokio::spawn(async move {
        loop {
            let ev = match el.poll().await {
                Ok(Event::Incoming(p)) => match p {
                    Packet::ConnAck(c) => Ev::ConnAck {
                        present: c.session_present,
                        assigned: None,
                    },
                    Packet::Publish(p) => Ev::Publish(Msg {
                        topic: p.topic.clone(),
                        payload: p.payload.to_vec(),
                        qos: p.qos as u8,
                        retain: p.retain,
                        dup: p.dup,
                        props: None,
                    }),
                    Packet::PubAck(a) => Ev::PubAck(a.pkid),
                    Packet::PubRec(a) => Ev::PubRec(a.pkid),
                    Packet::PubComp(a) => Ev::PubComp(a.pkid),
                    Packet::SubAck(s) => Ev::SubAck(
                        s.return_codes
                            .iter()
                            .map(|c| match c {
                                SubscribeReasonCode::Success(q) => *q as u8,
                                SubscribeReasonCode::Failure => 0x80,
                            })
                            .collect(),
                    ),
                    Packet::UnsubAck(_) => Ev::UnsubAck,
                    _ => continue,
                },
                Ok(Event::Outgoing(_)) => continue,
                Err(ConnectionError::ConnectionRefused(code)) => {
                    let _ = tx.send(Ev::Refused(format!("{code:?}"), code as u8));
                    return;
                }
                Err(e) => {
                    let _ = tx.send(Ev::Closed(format!("{e:?}")));
                    return;
                }
            };
            if tx.send(ev).is_err() {
                return;
            }
        }
    })
}

fn spawn_v5(mut el: rumqttc::v5::EventLoop, tx: mpsc::UnboundedSender<Ev>) -> JoinHandle<()> {
    use p5::Packet;
    use rumqttc::v5::{ConnectionError, Event, StateError};
    tokio::spawn(async move {
        loop {
            let ev = match el.poll().await {
                Ok(Event::Incoming(p)) => match p {
                    Packet::ConnAck(c) => Ev::ConnAck {
                        present: c.session_present,
                        assigned: c
                            .properties
                            .as_ref()
                            .and_then(|p| p.assigned_client_identifier.clone()),
                    },
                    Packet::Publish(p) => Ev::Publish(Msg {
                        topic: String::from_utf8_lossy(&p.topic).into_owned(),
                        payload: p.payload.to_vec(),
                        qos: p.qos as u8,
                        retain: p.retain,
                        dup: p.dup,
                        props: p.properties.clone(),
                    }),
                    Packet::PubAck(a) => Ev::PubAck(a.pkid),
                    Packet::PubRec(a) => Ev::PubRec(a.pkid),
                    Packet::PubComp(a) => Ev::PubComp(a.pkid),
                    Packet::SubAck(s) => {
                        Ev::SubAck(s.return_codes.iter().map(v5_suback_code).collect())
                    }
                    Packet::UnsubAck(_) => Ev::UnsubAck,
                    Packet::Disconnect(d) => Ev::Disconnect(d.reason_code as u8),
                    _ => continue,
                },
                Ok(Event::Outgoing(_)) => continue,
                Err(ConnectionError::ConnectionRefused(code)) => {
                    let _ = tx.send(Ev::Refused(format!("{code:?}"), v5_connack_code(code)));
                    return;
                }
                Err(ConnectionError::MqttState(StateError::ServerDisconnect {
                    reason_code,
                    reason_string,
                })) => {
                    let _ = tx.send(Ev::Disconnect(reason_code as u8));
                    let _ = tx.send(Ev::Closed(format!(
                        "server DISCONNECT {reason_code:?} {reason_string:?}"
                    )));
                    return;
                }
                Err(e) => {
                    let _ = tx.send(Ev::Closed(format!("{e:?}")));
                    return;
                }
            };
            if tx.send(ev).is_err() {
                return;
            }
        }
    })
}

impl Client {
    /// Connect and wait for a successful CONNACK; panics otherwise.
    pub(crate) async fn connect(addr: SocketAddr, v: V, opts: Opts) -> Self {
        let id = opts.id.clone();
        match Self::try_connect(addr, v, opts).await {
            Ok(c) => c,
            Err(e) => panic!("{v:?} client {id:?} could not connect: {e:?}"),
        }
    }

    /// Connect and wait for CONNACK.
    pub(crate) async fn try_connect(addr: SocketAddr, v: V, opts: Opts) -> Result<Self, Refused> {
        let (tx, rx) = mpsc::unbounded_channel();
        let (host, transport) = match &opts.ws_path {
            Some(path) => (format!("ws://{}:{}{}", addr.ip(), addr.port(), path), true),
            None => (addr.ip().to_string(), false),
        };
        let (handle, task) = match v {
            V::V4 => {
                let mut o = rumqttc::MqttOptions::new(opts.id.clone(), host, addr.port());
                o.set_keep_alive(opts.keep_alive);
                o.set_clean_session(opts.clean);
                o.set_max_packet_size(1 << 20, 1 << 20);
                if let Some(n) = opts.inflight {
                    o.set_inflight(n);
                }
                if let Some((u, p)) = &opts.credentials {
                    o.set_credentials(u.clone(), p.clone());
                }
                if let Some((t, m, q, r)) = &opts.will {
                    o.set_last_will(rumqttc::LastWill::new(t.clone(), m.clone(), qos4(*q), *r));
                }
                if transport {
                    o.set_transport(rumqttc::Transport::Ws);
                }
                let (c, el) = rumqttc::AsyncClient::new(o, 100);
                (Handle::V4(c), spawn_v4(el, tx))
            }
            V::V5 => {
                let mut o = rumqttc::v5::MqttOptions::new(opts.id.clone(), host, addr.port());
                o.set_keep_alive(opts.keep_alive);
                o.set_clean_start(opts.clean);
                o.set_max_packet_size(Some(1 << 20));
                if let Some(n) = opts.inflight {
                    o.set_receive_maximum(Some(n));
                }
                if let Some(e) = opts.session_expiry {
                    o.set_session_expiry_interval(Some(e));
                }
                if let Some((u, p)) = &opts.credentials {
                    o.set_credentials(u.clone(), p.clone());
                }
                if let Some((t, m, q, r)) = &opts.will {
                    o.set_last_will(p5::LastWill::new(t.clone(), m.clone(), qos5(*q), *r, None));
                }
                if transport {
                    o.set_transport(rumqttc::Transport::Ws);
                }
                let (c, el) = rumqttc::v5::AsyncClient::new(o, 100);
                (Handle::V5(c), spawn_v5(el, tx))
            }
        };
        let mut c = Client {
            v,
            id: opts.id.clone(),
            handle,
            rx,
            task,
            pending: VecDeque::new(),
            session_present: false,
            assigned_id: None,
            disconnect_reason: None,
            closed: None,
        };
        match within("CONNACK", c.rx.recv()).await {
            Some(Ev::ConnAck { present, assigned }) => {
                c.session_present = present;
                c.assigned_id = assigned;
                Ok(c)
            }
            Some(Ev::Refused(name, code)) => Err(Refused::Code(name, code)),
            Some(Ev::Closed(e)) => Err(Refused::Other(e)),
            other => Err(Refused::Other(format!("unexpected first event {other:?}"))),
        }
    }

    /// The next event; panics after [`WAIT`].
    async fn next_event(&mut self, what: &str) -> Ev {
        if let Some(e) = &self.closed {
            panic!(
                "client {:?} waiting for {what}: connection already closed ({e})",
                self.id
            );
        }
        let what = format!("{what} on client {:?}", self.id);
        match within(&what, self.rx.recv()).await {
            Some(Ev::Closed(e)) => {
                self.closed = Some(e.clone());
                Ev::Closed(e)
            }
            Some(Ev::Disconnect(r)) => {
                self.disconnect_reason.get_or_insert(r);
                Ev::Disconnect(r)
            }
            Some(ev) => ev,
            None => {
                self.closed = Some("eventloop task ended".into());
                Ev::Closed("eventloop task ended".into())
            }
        }
    }

    /// Wait for an event picked by `pick`, keeping publishes; panics if the
    /// connection closes first.
    async fn wait_for<T>(&mut self, what: &str, mut pick: impl FnMut(&Ev) -> Option<T>) -> T {
        loop {
            let ev = self.next_event(what).await;
            if let Some(t) = pick(&ev) {
                return t;
            }
            match ev {
                Ev::Publish(m) => self.pending.push_back(m),
                Ev::Closed(e) => panic!(
                    "client {:?}: connection closed while waiting for {what}: {e}",
                    self.id
                ),
                _ => {}
            }
        }
    }

    /// The next message; panics on timeout or close.
    pub(crate) async fn recv(&mut self) -> Msg {
        if let Some(m) = self.pending.pop_front() {
            return m;
        }
        self.wait_for("a PUBLISH", |ev| match ev {
            Ev::Publish(m) => Some(m.clone()),
            _ => None,
        })
        .await
    }

    /// The next message within `limit`, or `None`; panics if the
    /// connection closes.
    pub(crate) async fn recv_for(&mut self, limit: Duration) -> Option<Msg> {
        if let Some(m) = self.pending.pop_front() {
            return Some(m);
        }
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let ev = match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Err(_) => return None,
                Ok(ev) => ev,
            };
            match ev {
                Some(Ev::Publish(m)) => return Some(m),
                Some(Ev::Disconnect(r)) => {
                    self.disconnect_reason.get_or_insert(r);
                }
                Some(Ev::Closed(e)) => {
                    self.closed = Some(e.clone());
                    panic!(
                        "client {:?}: connection closed while waiting for a PUBLISH: {e}",
                        self.id
                    )
                }
                None => panic!("client {:?}: eventloop task ended", self.id),
                Some(_) => {}
            }
        }
    }

    /// The next `n` messages' bodies.
    pub(crate) async fn recv_bodies(&mut self, n: usize) -> Vec<String> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.recv().await.body());
        }
        out
    }

    /// A message already received, without waiting.
    pub(crate) fn try_recv(&mut self) -> Option<Msg> {
        if let Some(m) = self.pending.pop_front() {
            return Some(m);
        }
        while let Ok(ev) = self.rx.try_recv() {
            match ev {
                Ev::Publish(m) => return Some(m),
                Ev::Closed(e) => self.closed = Some(e),
                Ev::Disconnect(r) => {
                    self.disconnect_reason.get_or_insert(r);
                }
                _ => {}
            }
        }
        None
    }

    /// Wait until the server closes the connection. Returns the 5.0
    /// DISCONNECT reason code if one came first; messages received are
    /// dropped.
    pub(crate) async fn closed(&mut self) -> Option<u8> {
        while self.closed.is_none() {
            let _ = self.next_event("the connection to close").await;
        }
        self.disconnect_reason
    }

    pub(crate) async fn subscribe(&mut self, filter: &str, qos: u8) -> Vec<u8> {
        match &self.handle {
            Handle::V4(c) => c.subscribe(filter, qos4(qos)).await.expect("subscribe"),
            Handle::V5(c) => c.subscribe(filter, qos5(qos)).await.expect("subscribe"),
        }
        self.suback(filter).await
    }

    /// 5.0 SUBSCRIBE with options and properties.
    pub(crate) async fn subscribe5(
        &mut self,
        filter: p5::Filter,
        props: Option<p5::SubscribeProperties>,
    ) -> Vec<u8> {
        let Handle::V5(c) = &self.handle else {
            panic!("subscribe5 on a 3.1.1 client")
        };
        let name = filter.path.clone();
        match props {
            Some(p) => c
                .subscribe_many_with_properties(vec![filter], p)
                .await
                .expect("subscribe"),
            None => c.subscribe_many(vec![filter]).await.expect("subscribe"),
        }
        self.suback(&name).await
    }

    async fn suback(&mut self, filter: &str) -> Vec<u8> {
        let codes = self
            .wait_for(&format!("SUBACK for {filter}"), |ev| match ev {
                Ev::SubAck(c) => Some(c.clone()),
                _ => None,
            })
            .await;
        codes
    }

    pub(crate) async fn unsubscribe(&mut self, filter: &str) {
        match &self.handle {
            Handle::V4(c) => c.unsubscribe(filter).await.expect("unsubscribe"),
            Handle::V5(c) => c.unsubscribe(filter).await.expect("unsubscribe"),
        }
        self.wait_for("UNSUBACK", |ev| matches!(ev, Ev::UnsubAck).then_some(()))
            .await;
    }

    /// Publish and, for QoS 1/2, wait for PUBACK/PUBCOMP.
    pub(crate) async fn publish(&mut self, topic: &str, qos: u8, retain: bool, payload: &[u8]) {
        match &self.handle {
            Handle::V4(c) => c
                .publish(topic, qos4(qos), retain, payload.to_vec())
                .await
                .expect("publish"),
            Handle::V5(c) => c
                .publish(topic, qos5(qos), retain, payload.to_vec())
                .await
                .expect("publish"),
        }
        self.publish_acked(qos).await;
    }

    /// 5.0 publish with properties; waits for the acknowledgement.
    pub(crate) async fn publish5(
        &mut self,
        topic: &str,
        qos: u8,
        retain: bool,
        payload: &[u8],
        props: p5::PublishProperties,
    ) {
        let Handle::V5(c) = &self.handle else {
            panic!("publish5 on a 3.1.1 client")
        };
        c.publish_with_properties(topic, qos5(qos), retain, payload.to_vec(), props)
            .await
            .expect("publish");
        self.publish_acked(qos).await;
    }

    async fn publish_acked(&mut self, qos: u8) {
        match qos {
            0 => {}
            1 => {
                self.wait_for("PUBACK", |ev| matches!(ev, Ev::PubAck(_)).then_some(()))
                    .await
            }
            _ => {
                self.wait_for("PUBCOMP", |ev| matches!(ev, Ev::PubComp(_)).then_some(()))
                    .await
            }
        }
    }

    /// Send DISCONNECT and wait for the server to close the socket.
    pub(crate) async fn disconnect(mut self) {
        match &self.handle {
            Handle::V4(c) => c.disconnect().await.expect("disconnect"),
            Handle::V5(c) => c.disconnect().await.expect("disconnect"),
        }
        let _ = self.closed().await;
        let _ = within("eventloop task end", &mut self.task).await;
    }

    /// Drop the TCP connection without DISCONNECT: the eventloop task (and
    /// the socket it owns) is aborted and dropped.
    pub(crate) async fn kill(mut self) {
        self.task.abort();
        let _ = within("eventloop task abort", &mut self.task).await;
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A unique topic prefix per call.
pub(crate) fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!("{prefix}-{}", N.fetch_add(1, Ordering::Relaxed))
}

/// A publisher and a subscriber on `topic` can still exchange a message:
/// the broker is healthy.
pub(crate) async fn assert_round_trip(srv: &TestServer, v: V, topic: &str) {
    let mut sub = srv.client(v, Opts::new(&unique("rt-sub"))).await;
    sub.subscribe(topic, 1).await;
    let mut publ = srv.client(v, Opts::new(&unique("rt-pub"))).await;
    publ.publish(topic, 1, false, b"still alive").await;
    assert_eq!(sub.recv().await.body(), "still alive");
    publ.disconnect().await;
    sub.disconnect().await;
}

// ---- lapin ----------------------------------------------------------------

pub(crate) async fn amqp_connect(srv: &TestServer) -> Connection {
    within(
        "lapin connect",
        Connection::connect(&srv.amqp_url(), ConnectionProperties::default()),
    )
    .await
    .expect("lapin connect")
}

pub(crate) async fn amqp_channel(conn: &Connection) -> Channel {
    within("channel.open", conn.create_channel())
        .await
        .expect("channel.open")
}

/// Declare an exclusive queue bound to `amq.topic` with `key`.
pub(crate) async fn bound_queue(ch: &Channel, name: &str, key: &str) {
    within(
        "queue.declare",
        ch.queue_declare(
            name.into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("queue.declare");
    within(
        "queue.bind",
        ch.queue_bind(
            name.into(),
            "amq.topic".into(),
            key.into(),
            Default::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("queue.bind");
}

pub(crate) async fn amqp_publish(
    ch: &Channel,
    exchange: &str,
    key: &str,
    body: &[u8],
    props: BasicProperties,
) {
    within(
        "basic.publish",
        ch.basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions::default(),
            body,
            props,
        ),
    )
    .await
    .expect("basic.publish");
}

/// A lapin consumer whose deliveries are forwarded, in order, to a channel.
pub(crate) struct Deliveries {
    rx: mpsc::UnboundedReceiver<DeliveryResult>,
    _consumer: lapin::Consumer,
}

impl Deliveries {
    pub(crate) async fn next(&mut self) -> Delivery {
        match within("an AMQP delivery", self.rx.recv()).await {
            Some(Ok(Some(d))) => d,
            other => panic!("expected an AMQP delivery, got {other:?}"),
        }
    }
}

pub(crate) async fn amqp_consume(ch: &Channel, queue: &str) -> Deliveries {
    let consumer = within(
        "basic.consume",
        ch.basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("basic.consume");
    let (tx, rx) = mpsc::unbounded_channel();
    consumer.set_delegate(move |d: DeliveryResult| {
        let _ = tx.send(d);
        std::future::ready(())
    });
    Deliveries {
        rx,
        _consumer: consumer,
    }
}

/// Look up an AMQP header by name.
pub(crate) fn header<'a>(props: &'a BasicProperties, key: &str) -> Option<&'a AMQPValue> {
    props.headers().as_ref()?.inner().get(key)
}

/// A string-ish AMQP value as a `String`.
pub(crate) fn as_string(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}
