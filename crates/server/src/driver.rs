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
        if !self.woken.swap(true, Ordering::AcqRel) {
            if let Some(task) = self.task.take() {
                // The task was waiting: it will poll `Woken` (or be
                // dropped) after this, and hands the publisher back then.
                if let Some(publisher) = HandOff::take() {
                    let replaced = self.hand_back.lock().replace(publisher);
                    if let Some(w) = replaced {
                        w.wake();
                    }
                }
                task.wake();
            }
        }
    }
}

/// A quiet publisher lets the consumers its message woke deliver before
/// it writes its own PUBACK or confirm, as Mosquitto orders it: p99 at
/// 1000 msg/s fell from about 150 to 110 µs (BENCHMARKS.md).
///
/// While its input is handled, the publisher's waker sits in a
/// thread-local slot; the first waiting consumer task woken on this
/// thread takes it ([`NotifyWaker::wake`]) and wakes it when it next
/// polls `Woken`, in the same poll in which it writes the delivery (or
/// when it is dropped). The publisher waits for that once.
///
/// Not `tokio::task::yield_now`: a yielded task resumes only after its
/// worker has searched the other's queue, and a worker that found work
/// while searching wakes the other one: a futex wake and a context
/// switch per message for nothing (`perf`: 1.3 futex calls per message,
/// 0.05 without the yield).
struct HandOff;

thread_local! {
    static HAND_OFF: std::cell::Cell<Option<Waker>> = const { std::cell::Cell::new(None) };
}

impl HandOff {
    /// Run `handle` with `publisher` offered to the consumers it wakes;
    /// whether one took it.
    fn offer(publisher: Waker, handle: impl FnOnce()) -> bool {
        HAND_OFF.with(|slot| slot.set(Some(publisher)));
        handle();
        HAND_OFF.with(|slot| slot.take()).is_none()
    }

    fn take() -> Option<Waker> {
        HAND_OFF.with(|slot| slot.take())
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
    (mut rd, mut wr): (R, W),
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
    async move {
        let mut inbuf = BytesMut::new();
        let mut outbuf = BytesMut::new();
        let mut timer = Timer::default();
        let mut stopping = false;
        let mut eof = false;
        // The connection stopped taking input with bytes left in `inbuf`.
        let mut stalled = false;
        // The last reads filled what they were given: read big chunks.
        let mut streaming = false;
        // A consumer took this task's waker ([`HandOff`]): wait for it.
        let mut handed_off = false;
        loop {
            if !stopping && registered.conns.stopping() {
                stopping = true;
                conn.shutdown(Instant::now());
            }
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
            timer.set(conn.poll_timeout());
            let can_read =
                !eof && !conn.is_closed() && outbuf.len() < OUTPUT_HIGH_WATER && conn.wants_read();
            if can_read && streaming && inbuf.capacity() - inbuf.len() < READ_CHUNK / 4 {
                inbuf.reserve(READ_CHUNK);
            }
            tokio::select! {
                r = poll_fn(|cx| poll_read(&mut rd, &mut inbuf, cx)), if can_read => match r {
                    Ok((0, _, _)) | Err(_) => {
                        conn.handle_disconnect(Instant::now());
                        eof = true;
                        outbuf.clear();
                    }
                    Ok((n, filled, quiet)) => {
                        Metrics::add(&registered.conns.metrics.bytes_received, n as u64);
                        match quiet {
                            Some(me) if !streaming => {
                                handed_off = HandOff::offer(me, || {
                                    conn.handle_input(&mut inbuf, Instant::now())
                                });
                            }
                            // A streaming publisher does not wait: there
                            // the extra poll per read would cost throughput.
                            _ => conn.handle_input(&mut inbuf, Instant::now()),
                        }
                        stalled = !conn.wants_read();
                        if filled {
                            streaming = true;
                        } else if inbuf.is_empty() && n < SMALL_READ {
                            // Quiet again: give the buffer back.
                            streaming = false;
                            inbuf = BytesMut::new();
                        }
                    }
                },
                w = poll_fn(|cx| Pin::new(&mut wr).poll_write(cx, &outbuf)), if !outbuf.is_empty() => match w {
                    Ok(n) => {
                        Metrics::add(&registered.conns.metrics.bytes_sent, n as u64);
                        outbuf.advance(n);
                        if outbuf.is_empty() && n < OUTPUT_KEEP {
                            // Not streaming: no buffer kept while idle.
                            outbuf = BytesMut::new();
                            conn.trim();
                        }
                    }
                    Err(_) => {
                        conn.handle_disconnect(Instant::now());
                        eof = true;
                        outbuf.clear();
                    }
                },
                _ = Woken(waker.notify()) => {}
                _ = poll_fn(|cx| timer.poll(cx)), if timer.is_set() => {
                    conn.handle_timeout(Instant::now());
                }
            }
            if std::mem::take(&mut handed_off) {
                // (Outside `select!`, so that the future does not hold its
                // branches and this at once.)
                HandOff::wait().await;
            }
        }
        let _ = wr.shutdown().await;
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

/// Read what the socket has: straight into `inbuf` when it has room (a
/// streaming connection, or a packet being completed), otherwise through a
/// buffer on the stack, so that a connection waiting for input holds no
/// buffer. Also says whether the read filled the room it had, and after a
/// small read that did not, gives this task's waker for a [`HandOff`]
/// (returned from here rather than taken in the caller, where it would
/// grow every connection's future).
fn poll_read<R: AsyncRead + Unpin>(
    rd: &mut R,
    inbuf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<(usize, bool, Option<Waker>)>> {
    let room = inbuf.capacity() - inbuf.len();
    if room >= SMALL_READ {
        let n = ready!(std::pin::pin!(rd.read_buf(inbuf)).poll(cx))?;
        return Poll::Ready(Ok((n, n == room, None)));
    }
    let mut stack = [const { MaybeUninit::<u8>::uninit() }; SMALL_READ];
    let mut buf = ReadBuf::uninit(&mut stack);
    ready!(Pin::new(rd).poll_read(cx, &mut buf))?;
    let got = buf.filled();
    inbuf.extend_from_slice(got);
    let filled = got.len() == SMALL_READ;
    let quiet = (!filled).then(|| cx.waker().clone());
    Poll::Ready(Ok((got.len(), filled, quiet)))
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
        if HandOff::offer(me, || notify.wake()) {
            HandOff::wait().await;
        }
        log.lock().push("reply");
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
