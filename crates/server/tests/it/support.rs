//! Shared helpers: a server per test, lapin connections, bounded waits,
//! a consumer wrapper that does not need `StreamExt`, and error-code
//! extraction.

#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lapin::message::{BasicGetMessage, Delivery, DeliveryResult};
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer, ErrorKind};
use liebre_server::{Config, Server};
use tokio::sync::mpsc;

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

/// Poll `cond` every 20 ms until it holds; fail after [`WAIT`].
pub(crate) async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    within(what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
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
        let p = std::env::temp_dir().join(format!("liebre-it-{}-{n}-{nanos}", std::process::id()));
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

/// A broker on an ephemeral loopback port.
pub(crate) struct TestServer {
    server: Option<Server>,
    pub(crate) addr: SocketAddr,
    config: Config,
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
        let server = within("server start", Server::start(config.clone()))
            .await
            .expect("server starts");
        let addr = server.amqp_addrs()[0];
        Self {
            server: Some(server),
            addr,
            config,
            _dir: dir,
        }
    }

    /// Stop the broker and start it again on the same data directory
    /// (new ephemeral ports).
    pub(crate) async fn restart(&mut self) {
        self.shutdown().await;
        let server = within("server restart", Server::start(self.config.clone()))
            .await
            .expect("server restarts");
        self.addr = server.amqp_addrs()[0];
        self.server = Some(server);
    }

    pub(crate) fn server(&self) -> &Server {
        self.server.as_ref().expect("server running")
    }

    pub(crate) fn broker(&self) -> &Arc<liebre_core::Broker> {
        self.server().broker()
    }

    pub(crate) fn auth(&self) -> &Arc<liebre_auth::AuthStore> {
        self.server().auth()
    }

    /// `amqp://user:pass@addr/vhost` with the vhost already URL-encoded.
    pub(crate) fn url_for(&self, user: &str, pass: &str, vhost_encoded: &str) -> String {
        format!("amqp://{user}:{pass}@{}/{vhost_encoded}", self.addr)
    }

    pub(crate) fn url(&self) -> String {
        self.url_for("guest", "guest", "%2F")
    }

    pub(crate) async fn connect(&self) -> Connection {
        connect(&self.url()).await
    }

    /// Queue stats from the broker's side, if the queue exists.
    pub(crate) fn queue_stats(&self, name: &str) -> Option<liebre_core::QueueStats> {
        self.broker().vhost("/")?.queue(name).map(|q| q.stats())
    }

    pub(crate) fn queue_exists(&self, name: &str) -> bool {
        self.broker()
            .vhost("/")
            .and_then(|v| v.queue(name))
            .is_some()
    }

    /// Stop the broker (connection.close 320 to every client).
    pub(crate) async fn shutdown(&mut self) {
        if let Some(s) = self.server.take() {
            within_for(Duration::from_secs(30), "server shutdown", s.shutdown()).await;
        }
    }
}

pub(crate) async fn connect(url: &str) -> Connection {
    within(
        "lapin connect",
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await
    .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

pub(crate) async fn try_connect(url: &str) -> lapin::Result<Connection> {
    within(
        "lapin connect",
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await
}

pub(crate) async fn channel(conn: &Connection) -> Channel {
    within("channel.open", conn.create_channel())
        .await
        .expect("channel.open")
}

pub(crate) async fn confirm_channel(conn: &Connection) -> Channel {
    let ch = channel(conn).await;
    within(
        "confirm.select",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await
    .expect("confirm.select");
    ch
}

/// The AMQP reply code inside a lapin error, if the broker sent one.
pub(crate) fn code_of(e: &lapin::Error) -> Option<u16> {
    match e.kind() {
        ErrorKind::ProtocolError(a) => Some(a.get_id()),
        _ => None,
    }
}

/// Assert that `r` failed with AMQP reply code `code`.
pub(crate) fn assert_code<T: std::fmt::Debug>(r: lapin::Result<T>, code: u16, what: &str) {
    match r {
        Ok(v) => panic!("{what}: expected AMQP error {code}, got success {v:?}"),
        Err(e) => assert_eq!(
            code_of(&e),
            Some(code),
            "{what}: expected AMQP error {code}, got {e:?}"
        ),
    }
}

pub(crate) fn no_args() -> FieldTable {
    FieldTable::default()
}

pub(crate) fn table(entries: Vec<(&str, AMQPValue)>) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert(k.into(), v);
    }
    t
}

pub(crate) fn long_str(s: &str) -> AMQPValue {
    AMQPValue::LongString(s.into())
}

/// Declare a plain (non-durable, non-exclusive, non-auto-delete) queue.
pub(crate) async fn declare_queue(ch: &Channel, name: &str, args: FieldTable) -> lapin::Queue {
    within(
        "queue.declare",
        ch.queue_declare(name.into(), QueueDeclareOptions::default(), args),
    )
    .await
    .unwrap_or_else(|e| panic!("queue.declare {name}: {e}"))
}

/// Declare durable queue `name` (no arguments).
pub(crate) async fn declare_durable_queue(ch: &Channel, name: &str) -> lapin::Queue {
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    within(
        "queue.declare",
        ch.queue_declare(name.into(), durable, no_args()),
    )
    .await
    .unwrap_or_else(|e| panic!("queue.declare {name} (durable): {e}"))
}

pub(crate) async fn publish(
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

/// Publish on a confirm channel and wait for the broker's ack.
pub(crate) async fn publish_confirmed(
    ch: &Channel,
    exchange: &str,
    key: &str,
    body: &[u8],
    props: BasicProperties,
) {
    let c = publish_confirmation(ch, exchange, key, body, props).await;
    assert!(
        c.is_ack(),
        "publish to {exchange:?}/{key:?} was not acked: {c:?}"
    );
}

/// Publish on a confirm channel and wait for the broker's ack or nack.
pub(crate) async fn publish_confirmation(
    ch: &Channel,
    exchange: &str,
    key: &str,
    body: &[u8],
    props: BasicProperties,
) -> lapin::Confirmation {
    let confirm = within(
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
    within("publisher confirm", confirm).await.expect("confirm")
}

pub(crate) async fn get(ch: &Channel, queue: &str, no_ack: bool) -> Option<BasicGetMessage> {
    within(
        "basic.get",
        ch.basic_get(queue.into(), BasicGetOptions { no_ack }),
    )
    .await
    .unwrap_or_else(|e| panic!("basic.get {queue}: {e}"))
}

/// Drain a queue with basic.get (no-ack), returning the bodies as strings.
pub(crate) async fn drain_bodies(ch: &Channel, queue: &str) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(m) = get(ch, queue, true).await {
        out.push(String::from_utf8_lossy(&m.delivery.data).into_owned());
        assert!(out.len() < 100_000, "queue {queue} never drains");
    }
    out
}

/// A consumer whose deliveries are forwarded, in order, to a channel.
///
/// lapin's `Consumer` is a `futures::Stream`, but this crate has no
/// `StreamExt`; the delegate's closure runs synchronously in lapin's IO
/// loop, in delivery order, so forwarding from it preserves order.
pub(crate) struct Deliveries {
    rx: mpsc::UnboundedReceiver<DeliveryResult>,
    pub(crate) consumer: Consumer,
}

impl Deliveries {
    pub(crate) fn tag(&self) -> String {
        self.consumer.tag().to_string()
    }

    /// The next delivery; fails on timeout, cancellation or error.
    pub(crate) async fn next(&mut self) -> Delivery {
        match within("a delivery", self.rx.recv()).await {
            Some(Ok(Some(d))) => d,
            Some(Ok(None)) => panic!("consumer was cancelled while a delivery was expected"),
            Some(Err(e)) => panic!("consumer error while a delivery was expected: {e:?}"),
            None => panic!("consumer stream ended while a delivery was expected"),
        }
    }

    /// Whatever comes next (delivery, cancel, error).
    pub(crate) async fn next_event(&mut self) -> Option<DeliveryResult> {
        within("a consumer event", self.rx.recv()).await
    }

    /// Wait for the consumer to be failed by a channel/connection error
    /// and return the AMQP reply code. Deliveries before the error fail
    /// the test.
    pub(crate) async fn error_code(&mut self) -> Option<u16> {
        match within("a consumer error", self.rx.recv()).await {
            Some(Err(e)) => code_of(&e),
            other => panic!("expected a consumer error, got {other:?}"),
        }
    }

    /// Assert that nothing is delivered during `quiet`. (A correct broker
    /// delivers nothing however long we wait; the period only bounds how
    /// hard we look.)
    pub(crate) async fn assert_nothing_for(&mut self, quiet: Duration, why: &str) {
        if let Ok(ev) = tokio::time::timeout(quiet, self.rx.recv()).await {
            panic!("{why}: unexpected consumer event {ev:?}");
        }
    }

    /// Deliveries already received, without waiting.
    pub(crate) fn try_next(&mut self) -> Option<DeliveryResult> {
        self.rx.try_recv().ok()
    }
}

pub(crate) async fn consume(
    ch: &Channel,
    queue: &str,
    tag: &str,
    options: BasicConsumeOptions,
) -> Deliveries {
    let consumer = within(
        "basic.consume",
        ch.basic_consume(queue.into(), tag.into(), options, FieldTable::default()),
    )
    .await
    .unwrap_or_else(|e| panic!("basic.consume {queue}: {e}"));
    let (tx, rx) = mpsc::unbounded_channel();
    consumer.set_delegate(move |d: DeliveryResult| {
        let _ = tx.send(d);
        std::future::ready(())
    });
    Deliveries { rx, consumer }
}

/// Watches a channel for a broker-initiated channel.close: a consumer on a
/// fresh server-named queue gets the close error.
pub(crate) async fn watch_channel(ch: &Channel) -> Deliveries {
    let q = within(
        "queue.declare (watch)",
        ch.queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("declare watch queue");
    consume(ch, q.name().as_str(), "", BasicConsumeOptions::default()).await
}

/// Look up a header by name.
pub(crate) fn header<'a>(props: &'a BasicProperties, key: &str) -> Option<&'a AMQPValue> {
    props.headers().as_ref()?.inner().get(key)
}

/// Any integer AMQP value as i64.
pub(crate) fn as_i64(v: &AMQPValue) -> Option<i64> {
    Some(match v {
        AMQPValue::ShortShortInt(x) => (*x).into(),
        AMQPValue::ShortShortUInt(x) => (*x).into(),
        AMQPValue::ShortInt(x) => (*x).into(),
        AMQPValue::ShortUInt(x) => (*x).into(),
        AMQPValue::LongInt(x) => (*x).into(),
        AMQPValue::LongUInt(x) => (*x).into(),
        AMQPValue::LongLongInt(x) => *x,
        _ => return None,
    })
}

/// A string-ish AMQP value as a `String`.
pub(crate) fn as_string(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}
