//! The one loop that runs every connection, whatever its protocol: it
//! moves bytes between a transport and a sans-IO state machine and waits
//! on the socket, the connection's wake-up, the next deadline and
//! shutdown. Nothing protocol-specific happens here.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, BytesMut};
use futures_util::{SinkExt, StreamExt};
use std::sync::atomic::AtomicU64;

use liebre_core::{Metrics, Wake};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// Stop reading from a client while this much output waits for it: a peer
/// that does not read cannot make the broker buffer without bound.
const OUTPUT_HIGH_WATER: usize = 1024 * 1024;
/// Read in chunks of at least this much.
const READ_CHUNK: usize = 64 * 1024;

/// A protocol connection as the driver sees it.
pub(crate) trait Driven {
    fn handle_input(&mut self, buf: &mut BytesMut, now: Instant);
    fn handle_timeout(&mut self, now: Instant);
    fn poll_timeout(&self) -> Option<Instant>;
    /// Whether to read now; false while a resource alarm blocks the
    /// connection. Bytes it left in the input buffer are fed again when
    /// this turns true (after a wake-up and `poll_transmit`).
    fn wants_read(&self) -> bool;
    fn poll_transmit(&mut self, out: &mut BytesMut, now: Instant) -> bool;
    fn is_closed(&self) -> bool;
    fn shutdown(&mut self, now: Instant);
    fn handle_disconnect(&mut self, now: Instant);
    fn close_reason(&self) -> Option<&str>;
}

impl Driven for liebre_amqp::Connection {
    fn handle_input(&mut self, buf: &mut BytesMut, now: Instant) {
        self.handle_input(buf, now)
    }
    fn handle_timeout(&mut self, now: Instant) {
        self.handle_timeout(now)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        self.poll_timeout()
    }
    fn wants_read(&self) -> bool {
        self.wants_read()
    }
    fn poll_transmit(&mut self, out: &mut BytesMut, now: Instant) -> bool {
        self.poll_transmit(out, now)
    }
    fn is_closed(&self) -> bool {
        self.is_closed()
    }
    fn shutdown(&mut self, now: Instant) {
        self.shutdown(now)
    }
    fn handle_disconnect(&mut self, _now: Instant) {
        self.handle_disconnect()
    }
    fn close_reason(&self) -> Option<&str> {
        self.close_reason()
    }
}

impl Driven for liebre_mqtt::MqttConnection {
    fn handle_input(&mut self, buf: &mut BytesMut, now: Instant) {
        self.handle_input(buf, now)
    }
    fn handle_timeout(&mut self, now: Instant) {
        self.handle_timeout(now)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        self.poll_timeout()
    }
    fn wants_read(&self) -> bool {
        self.wants_read()
    }
    fn poll_transmit(&mut self, out: &mut BytesMut, now: Instant) -> bool {
        self.poll_transmit(out, now)
    }
    fn is_closed(&self) -> bool {
        self.is_closed()
    }
    fn shutdown(&mut self, now: Instant) {
        self.shutdown(now)
    }
    fn handle_disconnect(&mut self, now: Instant) {
        self.handle_disconnect(now)
    }
    fn close_reason(&self) -> Option<&str> {
        self.close_reason()
    }
}

/// Wakes a connection task.
#[derive(Debug, Default)]
pub(crate) struct NotifyWaker(pub(crate) Notify);

impl Wake for NotifyWaker {
    fn wake(&self) {
        self.0.notify_one();
    }
}

/// Which gauge counts a connection while it is open.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    Amqp,
    Mqtt,
}

/// Counts a connection open for as long as it lives.
struct Open {
    metrics: Arc<Metrics>,
    kind: Kind,
}

impl Open {
    fn new(metrics: Arc<Metrics>, kind: Kind) -> Self {
        Metrics::add(&metrics.connections_total, 1);
        Metrics::add(open_gauge(&metrics, kind), 1);
        Self { metrics, kind }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        Metrics::dec(open_gauge(&self.metrics, self.kind));
    }
}

fn open_gauge(m: &Metrics, kind: Kind) -> &AtomicU64 {
    match kind {
        Kind::Amqp => &m.amqp_connections,
        Kind::Mqtt => &m.mqtt_connections,
    }
}

/// Run `conn` over a byte stream until it closes.
pub(crate) async fn drive<C, R, W>(
    mut conn: C,
    (mut rd, mut wr): (R, W),
    waker: Arc<NotifyWaker>,
    token: CancellationToken,
    (metrics, kind): (Arc<Metrics>, Kind),
) where
    C: Driven,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let _open = Open::new(metrics.clone(), kind);
    let mut inbuf = BytesMut::new();
    let mut outbuf = BytesMut::new();
    let mut stopping = false;
    let mut eof = false;
    // The connection stopped taking input with bytes left in `inbuf`.
    let mut stalled = false;
    loop {
        if outbuf.len() < OUTPUT_HIGH_WATER {
            conn.poll_transmit(&mut outbuf, Instant::now());
        }
        if (conn.is_closed() || eof) && outbuf.is_empty() {
            break;
        }
        if stalled && conn.wants_read() {
            // Unblocked: what was received meanwhile goes in first.
            conn.handle_input(&mut inbuf, Instant::now());
            stalled = !conn.wants_read();
            continue;
        }
        let deadline = conn.poll_timeout().map(tokio::time::Instant::from_std);
        let can_read =
            !eof && !conn.is_closed() && outbuf.len() < OUTPUT_HIGH_WATER && conn.wants_read();
        if can_read && inbuf.capacity() - inbuf.len() < READ_CHUNK / 4 {
            inbuf.reserve(READ_CHUNK);
        }
        tokio::select! {
            _ = token.cancelled(), if !stopping => {
                stopping = true;
                conn.shutdown(Instant::now());
            }
            r = rd.read_buf(&mut inbuf), if can_read => match r {
                Ok(0) | Err(_) => {
                    conn.handle_disconnect(Instant::now());
                    eof = true;
                    outbuf.clear();
                }
                Ok(n) => {
                    Metrics::add(&metrics.bytes_received, n as u64);
                    conn.handle_input(&mut inbuf, Instant::now());
                    stalled = !conn.wants_read();
                }
            },
            w = wr.write(&outbuf), if !outbuf.is_empty() => match w {
                Ok(n) => {
                    Metrics::add(&metrics.bytes_sent, n as u64);
                    outbuf.advance(n);
                }
                Err(_) => {
                    conn.handle_disconnect(Instant::now());
                    eof = true;
                    outbuf.clear();
                }
            },
            _ = waker.0.notified() => {}
            _ = sleep_until(deadline), if deadline.is_some() => conn.handle_timeout(Instant::now()),
        }
    }
    let _ = wr.shutdown().await;
    conn.handle_disconnect(Instant::now());
    debug!(
        message = "Connection closed.",
        reason = conn.close_reason().unwrap_or("peer closed")
    );
}

/// Run `conn` over a WebSocket: binary messages carry the protocol's
/// bytes, and a packet may span messages.
pub(crate) async fn drive_ws<C, S>(
    mut conn: C,
    ws: WebSocketStream<S>,
    waker: Arc<NotifyWaker>,
    token: CancellationToken,
    (metrics, kind): (Arc<Metrics>, Kind),
) where
    C: Driven,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let _open = Open::new(metrics.clone(), kind);
    let (mut sink, mut stream) = ws.split();
    let mut inbuf = BytesMut::new();
    let mut outbuf = BytesMut::new();
    let mut stopping = false;
    let mut stalled = false;
    loop {
        conn.poll_transmit(&mut outbuf, Instant::now());
        if !outbuf.is_empty() {
            Metrics::add(&metrics.bytes_sent, outbuf.len() as u64);
            let msg = WsMessage::Binary(outbuf.split().freeze());
            if sink.send(msg).await.is_err() {
                break;
            }
        }
        if conn.is_closed() {
            break;
        }
        if stalled && conn.wants_read() {
            conn.handle_input(&mut inbuf, Instant::now());
            stalled = !conn.wants_read();
            continue;
        }
        let deadline = conn.poll_timeout().map(tokio::time::Instant::from_std);
        let can_read = conn.wants_read();
        tokio::select! {
            _ = token.cancelled(), if !stopping => {
                stopping = true;
                conn.shutdown(Instant::now());
            }
            m = stream.next(), if can_read => match m {
                Some(Ok(WsMessage::Binary(data))) => {
                    Metrics::add(&metrics.bytes_received, data.len() as u64);
                    inbuf.extend_from_slice(&data);
                    conn.handle_input(&mut inbuf, Instant::now());
                    stalled = !conn.wants_read();
                }
                Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_))) => {}
                Some(Ok(WsMessage::Text(_))) => {
                    // MQTT over WebSocket is binary only (MQTT 5.0 §6).
                    conn.handle_disconnect(Instant::now());
                    break;
                }
                Some(Ok(WsMessage::Close(_))) | Some(Err(_)) | None => {
                    conn.handle_disconnect(Instant::now());
                    break;
                }
            },
            _ = waker.0.notified() => {}
            _ = sleep_until(deadline), if deadline.is_some() => conn.handle_timeout(Instant::now()),
        }
    }
    let _ = sink.close().await;
    conn.handle_disconnect(Instant::now());
    debug!(
        message = "WebSocket connection closed.",
        reason = conn.close_reason().unwrap_or("peer closed")
    );
}

/// Accept connections on `listener` until shutdown, handing each socket
/// (with TCP_NODELAY set) to `serve`, which spawns its task.
pub(crate) async fn accept(
    listener: tokio::net::TcpListener,
    token: CancellationToken,
    mut serve: impl FnMut(tokio::net::TcpStream, std::net::SocketAddr),
) {
    loop {
        let accepted = tokio::select! {
            _ = token.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                serve(stream, peer);
            }
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(message = "Accept failed.", %e);
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
