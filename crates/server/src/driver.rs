//! The one loop that runs every connection, whatever its protocol: it
//! moves bytes between a transport and a sans-IO state machine and waits
//! on the socket, the connection's wake-up, the next deadline and
//! shutdown. Nothing protocol-specific happens here.

use std::future::{poll_fn, Future};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll, Waker};
use std::time::Instant;

use bytes::{Buf, BytesMut};
use futures_util::task::AtomicWaker;
use futures_util::{SinkExt, StreamExt};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;

use liebre_core::{Metrics, Wake};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, Instrument};

/// Stop reading from a client while this much output waits for it: a peer
/// that does not read cannot make the broker buffer without bound.
const OUTPUT_HIGH_WATER: usize = 1024 * 1024;
/// A connection that is streaming reads in chunks of at least this much
/// into its own buffer.
const READ_CHUNK: usize = 64 * 1024;
/// Any other connection reads at most this much at a time, into the
/// stack, and keeps only what it has not consumed yet: an idle connection
/// holds no read buffer at all. A read that fills it marks the connection
/// as streaming.
const SMALL_READ: usize = 4 * 1024;
/// Output buffers are kept between writes only by a connection writing
/// at least this much at a time.
const OUTPUT_KEEP: usize = 4 * 1024;

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
    /// Give back the capacity of internal buffers that are empty (the
    /// connection went quiet).
    fn trim(&mut self);
    /// Whether the last input routed a message to some queue.
    fn take_routed(&mut self) -> bool;
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
    fn trim(&mut self) {
        self.trim()
    }
    fn take_routed(&mut self) -> bool {
        self.take_routed()
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
    fn trim(&mut self) {
        self.trim()
    }
    fn take_routed(&mut self) -> bool {
        self.take_routed()
    }
}

/// Wakes a connection task: a flag and the task's waker, which is there
/// only while the task waits in [`Woken`]. Like `Notify::notify_one`, a
/// wake-up while the task runs (a queue delivering to the task's own
/// connection, say) only leaves the flag for its next wait. (A `Notify`
/// would do, but waiting on it puts a 64-byte waiter in every idle
/// connection's future.)
#[derive(Debug, Default)]
pub(crate) struct NotifyWaker {
    woken: AtomicBool,
    task: AtomicWaker,
    /// A publisher's task, to wake once this task has run (see
    /// [`HandOff`]).
    hand_back: Mutex<Option<Waker>>,
}

impl NotifyWaker {
    /// Wake the publisher that handed off to this task, if one did.
    fn hand_back(&self) {
        let publisher = self.hand_back.lock().take();
        if let Some(w) = publisher {
            w.wake();
        }
    }
}

impl Wake for NotifyWaker {
    fn wake(&self) {
        if self.woken.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(task) = self.task.take() {
            // The task was waiting: it will poll `Woken` (or be dropped)
            // after this, and hands the publisher back then.
            if let Some(publisher) = HandOff::take_publisher() {
                let replaced = self.hand_back.lock().replace(publisher);
                if let Some(w) = replaced {
                    w.wake();
                }
            }
            task.wake();
        }
    }
}

/// What a publisher does after input that woke consumer tasks, before it
/// writes its own replies (PUBACKs, confirms).
///
/// - A quiet publisher (its read was small and had to wait for the
///   client) lets the consumers deliver first, as Mosquitto orders it:
///   while its input is handled, its waker sits in a thread-local slot;
///   the first waiting consumer task woken on this thread takes it
///   ([`NotifyWaker::wake`]) and wakes it when it next polls `Woken`, in
///   the poll in which it writes the delivery (or when it is dropped).
///   MQTT QoS 1 p99 at 1000 msg/s: 150 to 110 µs, and no other worker is
///   woken (BENCHMARKS.md). If the consumer was not waiting, nothing.
/// - Any other publisher whose read routed a message without filling the
///   buffer yields (`yield_now`): its task resumes once the worker has run
///   the consumers and found nothing else, by which time more input has
///   arrived, so the batches grow (MQTT QoS 0 1 to 1 streams at about
///   800k msg/s with it, 500k without, at 2.4 times the CPU per message).
///   Not for a quiet one: a yielded task resumes only after its worker
///   searched the other's queue, and a worker that found work while
///   searching wakes the other one, a futex wake and a context switch per
///   message for nothing (`perf`: 1.3 futex calls per message, 0.05 with
///   the hand-off).
/// - A streaming publisher (its reads fill the buffer) does neither: the
///   extra poll per read would cost throughput.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HandOff {
    Nothing,
    /// A consumer took the publisher's waker: wait until it wakes it.
    Wait,
    /// A message was routed: yield once.
    Yield,
}

thread_local! {
    /// The publisher's waker, while its input is handled.
    static PUBLISHER: std::cell::Cell<Option<Waker>> = const { std::cell::Cell::new(None) };
}

impl HandOff {
    /// Handle a publisher's input (`handle`) with its waker, if it is
    /// quiet, offered to the consumer tasks it wakes: `None` if it is not
    /// quiet, else whether one took it.
    fn offer(publisher: Option<Waker>, handle: impl FnOnce()) -> Option<bool> {
        let Some(publisher) = publisher else {
            handle();
            return None;
        };
        PUBLISHER.with(|slot| slot.set(Some(publisher)));
        handle();
        Some(PUBLISHER.with(|slot| slot.take()).is_none())
    }

    /// What to do: wait if a consumer took a quiet publisher's waker;
    /// else, for a publisher that is not quiet, yield if its input routed
    /// a message and did not fill the buffer.
    fn after(taken: Option<bool>, routed_small: bool) -> Self {
        match taken {
            Some(true) => Self::Wait,
            Some(false) => Self::Nothing,
            None if routed_small => Self::Yield,
            None => Self::Nothing,
        }
    }

    /// The publisher's waker, for a consumer task that was waiting: if one
    /// is offered and not yet taken.
    fn take_publisher() -> Option<Waker> {
        PUBLISHER.with(|slot| slot.take())
    }

    /// Pending once, without waking itself: the consumer that took the
    /// publisher's waker wakes it.
    fn wait() -> impl Future<Output = ()> {
        let mut waited = false;
        poll_fn(move |_| {
            if std::mem::replace(&mut waited, true) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }
}

/// What a connection task waits on: a [`NotifyWaker`], or something that
/// holds one (an MQTT connection's handle).
pub(crate) trait Waiter: Send + Sync + 'static {
    fn notify(&self) -> &NotifyWaker;
}

impl Waiter for NotifyWaker {
    fn notify(&self) -> &NotifyWaker {
        self
    }
}

impl Waiter for liebre_mqtt::session::ConnectionHandle<NotifyWaker> {
    fn notify(&self) -> &NotifyWaker {
        &self.waker
    }
}

/// Ready once [`Wake::wake`] was called since the last wait ended.
struct Woken<'a>(&'a NotifyWaker);

impl Future for Woken<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let w = self.0;
        // A task polls `Woken` in every `select!` before it waits, so a
        // publisher handed to it is woken at the latest then.
        w.hand_back();
        if w.woken.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        w.task.register(cx.waker());
        if w.woken.swap(false, Ordering::AcqRel) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl Drop for Woken<'_> {
    fn drop(&mut self) {
        self.0.task.take();
    }
}

/// The connections of one listener, for shutdown to reach: each task's
/// waker in a slot, woken once shutdown starts, after which every task
/// sees [`Connections::stopping`]. (Waiting on a `CancellationToken`
/// instead would keep a 72-byte waiter in every connection's future.)
pub(crate) struct Connections<W> {
    metrics: Arc<Metrics>,
    kind: Kind,
    stopping: AtomicBool,
    slots: Mutex<Slots<W>>,
}

struct Slots<W> {
    wakers: Vec<Option<Arc<W>>>,
    free: Vec<u32>,
}

impl<W: Waiter> Connections<W> {
    pub(crate) fn new(metrics: Arc<Metrics>, kind: Kind) -> Arc<Self> {
        Arc::new(Self {
            metrics,
            kind,
            stopping: AtomicBool::new(false),
            slots: Mutex::new(Slots {
                wakers: Vec::new(),
                free: Vec::new(),
            }),
        })
    }

    /// Whether shutdown has started.
    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Start shutdown: every connection, present or to come, stops.
    pub(crate) fn stop(&self) {
        let slots = self.slots.lock();
        self.stopping.store(true, Ordering::Release);
        for w in slots.wakers.iter().flatten() {
            w.notify().wake();
        }
    }

    /// Add a connection, counted open until its [`Registered`] drops.
    fn register(self: Arc<Self>, waker: Arc<W>) -> Registered<W> {
        Metrics::add(&self.metrics.connections_total, 1);
        Metrics::add(open_gauge(&self.metrics, self.kind), 1);
        let mut slots = self.slots.lock();
        let slot = match slots.free.pop() {
            Some(i) => {
                slots.wakers[i as usize] = Some(waker);
                i
            }
            None => {
                slots.wakers.push(Some(waker));
                (slots.wakers.len() - 1) as u32
            }
        };
        drop(slots);
        Registered { conns: self, slot }
    }
}

/// A connection's slot in [`Connections`], given back when it goes (and
/// it stops counting as open).
struct Registered<W: Waiter> {
    conns: Arc<Connections<W>>,
    slot: u32,
}

impl<W: Waiter> Drop for Registered<W> {
    fn drop(&mut self) {
        let mut slots = self.conns.slots.lock();
        if let Some(w) = slots.wakers[self.slot as usize].take() {
            // A publisher handed to this task must not wait for it.
            w.notify().hand_back();
        }
        slots.free.push(self.slot);
        drop(slots);
        Metrics::dec(open_gauge(&self.conns.metrics, self.conns.kind));
    }
}

/// Which gauge counts a connection while it is open.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    Amqp,
    Mqtt,
}

fn open_gauge(m: &Metrics, kind: Kind) -> &AtomicU64 {
    match kind {
        Kind::Amqp => &m.amqp_connections,
        Kind::Mqtt => &m.mqtt_connections,
    }
}

/// Run `conn` over a byte stream until it closes.
///
/// Not an `async fn`: the arguments of one are stored twice in its future
/// (rust-lang/rust#62958), and this future is most of what an idle
/// connection costs.
pub(crate) fn drive<C, R, W, H>(
    mut conn: C,
    (rd, wr): (R, W),
    waker: Arc<H>,
    conns: Arc<Connections<H>>,
) -> impl Future<Output = ()>
where
    C: Driven,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    H: Waiter,
{
    let registered = conns.register(waker.clone());
    // Made here, not in the block: a value moved into a local there would
    // also keep its captured place.
    let mut input = Input::new(rd);
    let mut output = Output::new(wr);
    async move {
        let mut timer = Timer::default();
        let mut stopping = false;
        // What to do after the last input ([`HandOff`]).
        let mut after = HandOff::Nothing;
        loop {
            if !stopping && registered.conns.stopping() {
                stopping = true;
                conn.shutdown(Instant::now());
            }
            if output.buf.len() < OUTPUT_HIGH_WATER {
                conn.poll_transmit(&mut output.buf, Instant::now());
            }
            if (conn.is_closed() || input.eof) && output.buf.is_empty() {
                break;
            }
            if input.stalled && conn.wants_read() {
                // Unblocked: what was received meanwhile goes in first.
                conn.handle_input(&mut input.buf, Instant::now());
                input.stalled = !conn.wants_read();
                continue;
            }
            timer.set(conn.poll_timeout());
            let can_read = !input.eof
                && !conn.is_closed()
                && output.buf.len() < OUTPUT_HIGH_WATER
                && conn.wants_read();
            if can_read
                && input.streaming
                && input.buf.capacity() - input.buf.len() < READ_CHUNK / 4
            {
                input.buf.reserve(READ_CHUNK);
            }
            tokio::select! {
                r = poll_fn(|cx| input.poll_read(cx)), if can_read => match r {
                    Ok((0, _, _)) | Err(_) => {
                        conn.handle_disconnect(Instant::now());
                        input.eof = true;
                        output.buf.clear();
                    }
                    Ok((n, filled, quiet)) => {
                        Metrics::add(&registered.conns.metrics.bytes_received, n as u64);
                        let taken = HandOff::offer(quiet, || {
                            conn.handle_input(&mut input.buf, Instant::now())
                        });
                        input.stalled = !conn.wants_read();
                        if filled {
                            input.streaming = true;
                        } else if input.buf.is_empty() && n < SMALL_READ {
                            // Quiet again: give the buffer back.
                            input.streaming = false;
                            input.buf = BytesMut::new();
                        }
                        after = HandOff::after(taken, conn.take_routed() && !input.streaming);
                    }
                },
                w = poll_fn(|cx| output.poll_write(cx)), if !output.buf.is_empty() => match w {
                    Ok(n) => {
                        Metrics::add(&registered.conns.metrics.bytes_sent, n as u64);
                        output.buf.advance(n);
                        if output.buf.is_empty() && n < OUTPUT_KEEP {
                            // Not streaming: no buffer kept while idle.
                            output.buf = BytesMut::new();
                            conn.trim();
                        }
                    }
                    Err(_) => {
                        conn.handle_disconnect(Instant::now());
                        input.eof = true;
                        output.buf.clear();
                    }
                },
                _ = Woken(waker.notify()) => {}
                _ = poll_fn(|cx| timer.poll(cx)), if timer.is_set() => {
                    conn.handle_timeout(Instant::now());
                }
            }
            // (Outside `select!`, so that the future does not hold its
            // branches and these at once.)
            match std::mem::replace(&mut after, HandOff::Nothing) {
                HandOff::Nothing => {}
                HandOff::Wait => HandOff::wait().await,
                HandOff::Yield => tokio::task::yield_now().await,
            }
        }
        let _ = output.wr.shutdown().await;
        conn.handle_disconnect(Instant::now());
        debug!(
            message = "Connection closed.",
            reason = conn.close_reason().unwrap_or("peer closed")
        );
    }
}

/// The connection's next deadline. The timer is allocated only while
/// there is one (many idle connections have none), and reset in place
/// when it moves.
#[derive(Default)]
struct Timer(Option<Pin<Box<tokio::time::Sleep>>>);

impl Timer {
    fn set(&mut self, deadline: Option<Instant>) {
        match (deadline, &mut self.0) {
            (None, t) => *t = None,
            (Some(d), Some(sleep)) => {
                let d = tokio::time::Instant::from_std(d);
                if sleep.deadline() != d {
                    sleep.as_mut().reset(d);
                }
            }
            (Some(d), t @ None) => {
                *t = Some(Box::pin(tokio::time::sleep_until(
                    tokio::time::Instant::from_std(d),
                )));
            }
        }
    }

    fn is_set(&self) -> bool {
        self.0.is_some()
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.0 {
            Some(sleep) => sleep.as_mut().poll(cx),
            None => Poll::Pending,
        }
    }
}

/// Run `conn` over a WebSocket: binary messages carry the protocol's
/// bytes, and a packet may span messages. (Not an `async fn`, for the
/// reason given at [`drive`].)
pub(crate) fn drive_ws<C, S, H>(
    mut conn: C,
    ws: WebSocketStream<S>,
    waker: Arc<H>,
    conns: Arc<Connections<H>>,
) -> impl Future<Output = ()>
where
    C: Driven,
    S: AsyncRead + AsyncWrite + Unpin,
    H: Waiter,
{
    let registered = conns.register(waker.clone());
    async move {
        let (mut sink, mut stream) = ws.split();
        let mut inbuf = BytesMut::new();
        let mut outbuf = BytesMut::new();
        let mut timer = Timer::default();
        let mut stopping = false;
        let mut stalled = false;
        loop {
            if !stopping && registered.conns.stopping() {
                stopping = true;
                conn.shutdown(Instant::now());
            }
            conn.poll_transmit(&mut outbuf, Instant::now());
            // Before a send that may wait for a slow client: a publisher
            // handed to this task ([`HandOff`]) does not wait with it.
            waker.notify().hand_back();
            if !outbuf.is_empty() {
                let len = outbuf.len();
                Metrics::add(&registered.conns.metrics.bytes_sent, len as u64);
                let msg = WsMessage::Binary(std::mem::take(&mut outbuf).freeze());
                if sink.send(msg).await.is_err() {
                    break;
                }
                if len < OUTPUT_KEEP {
                    conn.trim();
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
            timer.set(conn.poll_timeout());
            let can_read = conn.wants_read();
            tokio::select! {
                m = stream.next(), if can_read => match m {
                    Some(Ok(WsMessage::Binary(data))) => {
                        Metrics::add(&registered.conns.metrics.bytes_received, data.len() as u64);
                        inbuf.extend_from_slice(&data);
                        conn.handle_input(&mut inbuf, Instant::now());
                        stalled = !conn.wants_read();
                        if inbuf.is_empty() {
                            inbuf = BytesMut::new();
                        }
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
                _ = Woken(waker.notify()) => {}
                _ = poll_fn(|cx| timer.poll(cx)), if timer.is_set() => {
                    conn.handle_timeout(Instant::now());
                }
            }
        }
        let _ = sink.close().await;
        conn.handle_disconnect(Instant::now());
        debug!(
            message = "WebSocket connection closed.",
            reason = conn.close_reason().unwrap_or("peer closed")
        );
    }
}

/// Spawn a connection's task on `tracker`, in `span` if that is enabled
/// (a disabled span would still add 40 bytes to every connection's task).
pub(crate) fn spawn_connection<F>(tracker: &TaskTracker, span: tracing::Span, task: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    if span.is_disabled() {
        tracker.spawn(task);
    } else {
        tracker.spawn(task.instrument(span));
    }
}

/// Accept connections on `listener` until shutdown, handing each socket
/// (with TCP_NODELAY set) to `serve`, which spawns its task; then stop
/// `conns`, those of this listener.
pub(crate) async fn accept<W: Waiter>(
    listener: tokio::net::TcpListener,
    token: CancellationToken,
    conns: &Connections<W>,
    mut serve: impl FnMut(tokio::net::TcpStream, std::net::SocketAddr),
) {
    loop {
        let accepted = tokio::select! {
            _ = token.cancelled() => {
                // The listener closes; every connection it accepted stops.
                conns.stop();
                return;
            }
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

/// A connection's output side: the socket's write half and what waits to
/// be written. (One struct, for the reason given at [`Input`].)
struct Output<W> {
    wr: W,
    buf: BytesMut,
}

impl<W: AsyncWrite + Unpin> Output<W> {
    fn new(wr: W) -> Self {
        Self {
            wr,
            buf: BytesMut::new(),
        }
    }

    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.wr).poll_write(cx, &self.buf)
    }
}

/// A connection's input side: the socket's read half and what was read
/// but not consumed yet. (One struct, so that the read future borrows one
/// pointer: every connection's future holds it while idle.)
struct Input<R> {
    rd: R,
    buf: BytesMut,
    /// The current read had to wait for the client.
    waited: bool,
    /// The last reads filled what they were given: read big chunks.
    streaming: bool,
    /// The connection stopped taking input with bytes left in `buf`.
    stalled: bool,
    /// The client closed its side, or the socket failed.
    eof: bool,
}

impl<R: AsyncRead + Unpin> Input<R> {
    fn new(rd: R) -> Self {
        Self {
            rd,
            buf: BytesMut::new(),
            waited: false,
            streaming: false,
            stalled: false,
            eof: false,
        }
    }

    /// Read what the socket has: straight into `buf` when it has room (a
    /// streaming connection, or a packet being completed), otherwise
    /// through a buffer on the stack, so that a connection waiting for
    /// input holds no buffer. Also says whether the read filled the room
    /// it had, and for a quiet publisher (a small read that had to wait
    /// for the client) gives this task's waker for a [`HandOff`] (from
    /// here rather than the caller, where holding it would grow every
    /// connection's future).
    fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<(usize, bool, Option<Waker>)>> {
        let room = self.buf.capacity() - self.buf.len();
        if room >= SMALL_READ {
            let n = ready!(std::pin::pin!(self.rd.read_buf(&mut self.buf)).poll(cx))?;
            self.waited = false;
            return Poll::Ready(Ok((n, n == room, None)));
        }
        let mut stack = [const { MaybeUninit::<u8>::uninit() }; SMALL_READ];
        let mut buf = ReadBuf::uninit(&mut stack);
        if Pin::new(&mut self.rd).poll_read(cx, &mut buf)?.is_pending() {
            self.waited = true;
            return Poll::Pending;
        }
        let got = buf.filled();
        self.buf.extend_from_slice(got);
        let filled = got.len() == SMALL_READ;
        let quiet = (std::mem::take(&mut self.waited) && !filled).then(|| cx.waker().clone());
        Poll::Ready(Ok((got.len(), filled, quiet)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A consumer task waiting on its [`NotifyWaker`], as a driver does:
    /// each wake-up "delivers" (records `deliver`).
    async fn consumer(notify: Arc<NotifyWaker>, log: Arc<Mutex<Vec<&'static str>>>) {
        loop {
            Woken(&notify).await;
            log.lock().push("deliver");
        }
    }

    /// A publisher whose input wakes `notify`'s task: it offers itself,
    /// waits if that was taken, then "replies".
    async fn publish(notify: &NotifyWaker, log: &Mutex<Vec<&'static str>>) {
        let me = poll_fn(|cx| Poll::Ready(cx.waker().clone())).await;
        if HandOff::offer(Some(me), || notify.wake()) == Some(true) {
            HandOff::wait().await;
        }
        log.lock().push("reply");
    }

    #[test]
    fn a_waiting_consumer_takes_a_quiet_publishers_waker() {
        let me = futures_util::task::noop_waker();
        let notify = NotifyWaker::default();
        // Nothing routed, or no waker offered (a busy publisher).
        assert_eq!(HandOff::offer(Some(me.clone()), || {}), Some(false));
        assert_eq!(HandOff::offer(None, || notify.wake()), None);
        // The consumer was not waiting (already woken).
        assert_eq!(
            HandOff::offer(Some(me.clone()), || notify.wake()),
            Some(false)
        );
        assert!(notify.hand_back.lock().is_none());
        // It was waiting: it takes the waker.
        notify.woken.store(false, Ordering::Release);
        notify.task.register(&me);
        assert_eq!(
            HandOff::offer(Some(me.clone()), || notify.wake()),
            Some(true)
        );
        assert!(notify.hand_back.lock().is_some());
        // Nothing is left offered on the thread.
        assert!(HandOff::take_publisher().is_none());
        assert_eq!(HandOff::after(Some(true), true), HandOff::Wait);
        assert_eq!(HandOff::after(Some(false), true), HandOff::Nothing);
        assert_eq!(HandOff::after(None, true), HandOff::Yield);
        assert_eq!(HandOff::after(None, false), HandOff::Nothing);
    }

    #[tokio::test]
    async fn a_woken_consumer_delivers_before_the_publisher_replies() {
        let notify = Arc::new(NotifyWaker::default());
        let log = Arc::new(Mutex::new(Vec::new()));
        tokio::spawn(consumer(notify.clone(), log.clone()));
        for _ in 0..3 {
            tokio::task::yield_now().await; // the consumer waits
            let publisher = tokio::spawn({
                let (notify, log) = (notify.clone(), log.clone());
                async move { publish(&notify, &log).await }
            });
            tokio::time::timeout(Duration::from_secs(10), publisher)
                .await
                .expect("the consumer woke the publisher")
                .expect("publisher task");
        }
        assert_eq!(
            *log.lock(),
            ["deliver", "reply", "deliver", "reply", "deliver", "reply"]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_publisher_is_not_left_waiting_by_its_consumer() {
        use futures_util::FutureExt;
        let log = Arc::new(Mutex::new(Vec::new()));
        // The consumer's task takes the publisher, then goes away without
        // polling again: its connection's registration hands it back.
        let notify = Arc::new(NotifyWaker::default());
        let conns = Connections::new(Arc::default(), Kind::Mqtt);
        let registered = conns.register(notify.clone());
        let mut waiting = Box::pin(Woken(&notify));
        assert!(waiting.as_mut().now_or_never().is_none());
        let publisher = tokio::spawn({
            let (notify, log) = (notify.clone(), log.clone());
            async move { publish(&notify, &log).await }
        });
        while notify.hand_back.lock().is_none() {
            tokio::task::yield_now().await;
        }
        drop(waiting);
        drop(registered);
        tokio::time::timeout(Duration::from_secs(10), publisher)
            .await
            .expect("the publisher was woken")
            .expect("publisher task");
        // Many publishers racing for one consumer on two workers: each
        // one's wake-up is handed back, none is lost.
        tokio::spawn(consumer(notify.clone(), log.clone()));
        let publishers: Vec<_> = (0..200)
            .map(|_| {
                let (notify, log) = (notify.clone(), log.clone());
                tokio::spawn(async move { publish(&notify, &log).await })
            })
            .collect();
        for p in publishers {
            tokio::time::timeout(Duration::from_secs(10), p)
                .await
                .expect("every publisher was woken")
                .expect("publisher task");
        }
    }
}
