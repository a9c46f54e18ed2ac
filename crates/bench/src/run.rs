//! The engine shared by the AMQP and MQTT benchmarks: one task per
//! connection driving a sans-IO [`Session`] over a socket with batched
//! reads and writes, the [`Generator`] that paces producers and keeps the
//! in-flight window, and [`execute`], which starts consumers then
//! producers, shows progress, waits for the last messages and collects
//! what every task recorded.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::cli::LoadArgs;
use crate::pace::{Pacer, Pattern, NS};
use crate::payload::Clock;
use crate::progress::Progress;
use crate::stats::Recorder;

/// Stop producing into the output buffer above this many bytes: one
/// write carries many messages, and memory stays bounded.
pub(crate) const HIGH_WATER: usize = 128 * 1024;
/// Read at least this much room at a time.
const READ_CHUNK: usize = 256 * 1024;
/// How long a closing connection waits for the broker's answer.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// A boxed task future: what the task recorded, and how it ended (the
/// record is kept when the connection failed, so the report stays honest).
pub(crate) type BoxFut<T> = Pin<Box<dyn Future<Output = (T, anyhow::Result<()>)> + Send>>;

/// Per-producer state consumers report into.
#[derive(Debug, Default)]
pub(crate) struct ProducerSlot {
    /// Deliveries of this producer's messages seen by any consumer.
    pub(crate) delivered: AtomicU64,
    /// Messages sent (kept up to date for the drain check).
    pub(crate) sent: AtomicU64,
    /// How many deliveries each message should give (groups it feeds).
    pub(crate) fanout: u64,
    /// Wakes the producer when its window opens.
    pub(crate) notify: Notify,
}

/// State shared by every task of a run.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) clock: Clock,
    pub(crate) published: AtomicU64,
    pub(crate) confirmed: AtomicU64,
    pub(crate) nacked: AtomicU64,
    pub(crate) consumed: AtomicU64,
    pub(crate) producers: Vec<ProducerSlot>,
    /// Stops consumers (the run is drained).
    pub(crate) stop: CancellationToken,
    /// Stops producers early (Ctrl-C or a failed task).
    pub(crate) abort: CancellationToken,
    /// Per-producer share of --max-in-flight.
    pub(crate) window: u64,
    pub(crate) drain_ns: u64,
    pub(crate) blocked: AtomicBool,
}

impl Shared {
    /// Adds a consumer's unreported per-producer deliveries to the
    /// producers' windows and wakes them.
    pub(crate) fn report_deliveries(&self, rec: &mut Recorder, got: u64) {
        if got == 0 {
            return;
        }
        self.consumed.fetch_add(got, Ordering::Relaxed);
        for (slot, n) in self.producers.iter().zip(rec.unreported.iter_mut()) {
            if *n > 0 {
                slot.delivered.fetch_add(*n, Ordering::Relaxed);
                slot.notify.notify_one();
                *n = 0;
            }
        }
    }
}

/// When a session wants to run again if no input arrives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Wake {
    /// At this time (ns on the run's clock).
    pub(crate) at_ns: Option<u64>,
    /// When a consumer reports deliveries of this producer.
    pub(crate) notify: bool,
}

/// A connection's protocol logic, free of I/O: bytes in, bytes out.
pub(crate) trait Session: Send {
    /// Handles every complete frame or packet in `input` (consuming them),
    /// appending any answer (acks...) to `out`.
    fn on_input(
        &mut self,
        input: &mut BytesMut,
        out: &mut BytesMut,
        now_ns: u64,
    ) -> anyhow::Result<()>;
    /// Appends messages to send, up to about [`HIGH_WATER`] bytes.
    fn produce(&mut self, _out: &mut BytesMut, _now_ns: u64) -> Wake {
        Wake::default()
    }
    /// The run is over for this connection: flush what is pending (final
    /// acks) into `out`.
    fn stop(&mut self, out: &mut BytesMut);
    /// Nothing more to do: close.
    fn finished(&self) -> bool;
    /// Appends the polite goodbye (connection.close, DISCONNECT).
    fn goodbye(&mut self, out: &mut BytesMut);
    /// The broker answered the goodbye.
    fn closed(&self) -> bool {
        false
    }
    /// Everything produced so far was written to the socket.
    fn flushed(&mut self, _now_ns: u64) {}
}

/// Runs `session` over `stream` until it is finished, then says goodbye.
/// `stop` ends it from outside; `notify` is the producer's window wake-up.
pub(crate) async fn drive<S: Session>(
    mut stream: TcpStream,
    mut input: BytesMut,
    session: &mut S,
    clock: Clock,
    stop: CancellationToken,
    notify: Option<&Notify>,
) -> anyhow::Result<()> {
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.split();
    let mut out = BytesMut::with_capacity(HIGH_WATER * 2);
    let spare = Notify::new();
    let notify = notify.unwrap_or(&spare);
    let mut stopped = false;
    if !input.is_empty() {
        session.on_input(&mut input, &mut out, clock.now_ns())?;
    }
    loop {
        let now = clock.now_ns();
        let wake = if out.len() < HIGH_WATER && !stopped {
            session.produce(&mut out, now)
        } else {
            Wake::default()
        };
        if session.finished() && out.is_empty() {
            break;
        }
        if input.capacity() - input.len() < READ_CHUNK / 4 {
            input.reserve(READ_CHUNK);
        }
        let idle = out.is_empty();
        let deadline = clock.instant_at(wake.at_ns.unwrap_or(now + 3600 * NS));
        tokio::select! {
            biased;
            () = stop.cancelled(), if !stopped => {
                stopped = true;
                session.stop(&mut out);
            }
            r = rd.read_buf(&mut input) => {
                if r? == 0 {
                    anyhow::bail!("the broker closed the connection");
                }
                session.on_input(&mut input, &mut out, clock.now_ns())?;
            }
            r = wr.write_buf(&mut out), if !out.is_empty() => {
                r?;
                if out.is_empty() {
                    session.flushed(clock.now_ns());
                }
            }
            () = tokio::time::sleep_until(deadline.into()), if idle && wake.at_ns.is_some() => {}
            () = notify.notified(), if idle && wake.notify => {}
        }
    }
    session.goodbye(&mut out);
    wr.write_all(&out).await?;
    out.clear();
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        while !session.closed() {
            if input.capacity() - input.len() < READ_CHUNK / 4 {
                input.reserve(READ_CHUNK);
            }
            match rd.read_buf(&mut input).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if session
                        .on_input(&mut input, &mut out, clock.now_ns())
                        .is_err()
                    {
                        break;
                    }
                    out.clear();
                }
            }
        }
    })
    .await;
    Ok(())
}

/// What a producer did.
#[derive(Debug, Clone, Default)]
pub(crate) struct ProducerStats {
    pub(crate) sent: u64,
    pub(crate) confirmed: u64,
    pub(crate) nacked: u64,
    pub(crate) first_ns: Option<u64>,
    pub(crate) last_ns: u64,
    /// When the last message left for the socket.
    pub(crate) flushed_ns: u64,
    /// When the last confirm arrived.
    pub(crate) last_confirm_ns: u64,
    /// Messages sent per second of the run.
    pub(crate) timeline: Vec<u64>,
}

/// Paces a producer and keeps its in-flight window.
#[derive(Debug)]
pub(crate) struct Generator {
    /// Producer number.
    pub(crate) id: u32,
    pacer: Pacer,
    shared: Arc<Shared>,
    pub(crate) stats: ProducerStats,
    /// When the pattern ended, ns.
    pub(crate) done_at: Option<u64>,
}

impl Generator {
    pub(crate) fn new(id: u32, pattern: Pattern, shared: Arc<Shared>) -> Self {
        Self {
            id,
            pacer: Pacer::new(pattern),
            shared,
            stats: ProducerStats::default(),
            done_at: None,
        }
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    fn slot(&self) -> &ProducerSlot {
        &self.shared.producers[self.id as usize]
    }

    /// Messages sent so far (= the next sequence number).
    pub(crate) fn sent(&self) -> u64 {
        self.stats.sent
    }

    /// How many messages may go out now, at most `room` (the protocol's
    /// own limit: unconfirmed window, packet identifiers) and `batch`; and
    /// when none may, when to try again.
    pub(crate) fn allowance(&mut self, now_ns: u64, room: u64, batch: u64) -> (u64, Wake) {
        if self.done_at.is_some() {
            return (0, Wake::default());
        }
        let pattern = *self.pacer.pattern();
        if self.shared.abort.is_cancelled() || pattern.finished(now_ns, self.stats.sent) {
            self.done_at = Some(now_ns);
            return (0, Wake::default());
        }
        let end = pattern.duration_ns();
        let mut want = room.min(batch);
        if let Pattern::Burst { messages } = pattern {
            want = want.min(messages - self.stats.sent);
        }
        let mut window_blocked = false;
        let slot = self.slot();
        if slot.fanout > 0 {
            let delivered = slot.delivered.load(Ordering::Relaxed);
            let outstanding = (self.stats.sent * slot.fanout).saturating_sub(delivered);
            let in_flight = outstanding.div_ceil(slot.fanout);
            let free = self.shared.window.saturating_sub(in_flight);
            if free == 0 {
                window_blocked = true;
            }
            want = want.min(free);
        }
        if want == 0 {
            return (
                0,
                Wake {
                    at_ns: end,
                    notify: window_blocked,
                },
            );
        }
        let n = self.pacer.take(now_ns, want);
        if n == 0 {
            let at = self.pacer.next_token_ns(now_ns);
            let at = match (at, end) {
                (Some(a), Some(e)) => Some(a.min(e)),
                (a, e) => a.or(e),
            };
            return (
                0,
                Wake {
                    at_ns: at,
                    notify: false,
                },
            );
        }
        (n, Wake::default())
    }

    /// Books `n` messages sent at `now_ns`.
    pub(crate) fn record_sent(&mut self, n: u64, now_ns: u64) {
        self.stats.sent += n;
        self.stats.first_ns.get_or_insert(now_ns);
        self.stats.last_ns = now_ns;
        let sec = (now_ns / NS) as usize;
        if sec >= self.stats.timeline.len() {
            self.stats.timeline.resize(sec + 1, 0);
        }
        self.stats.timeline[sec] += n;
        self.shared.published.fetch_add(n, Ordering::Relaxed);
        self.slot().sent.store(self.stats.sent, Ordering::Relaxed);
    }

    /// Notes that everything sent so far is written.
    pub(crate) fn flushed(&mut self, now_ns: u64) {
        if self.stats.sent > 0 {
            self.stats.flushed_ns = now_ns;
        }
    }

    /// Books `confirmed` and `nacked` publisher acknowledgements.
    pub(crate) fn record_confirms(&mut self, confirmed: u64, nacked: u64, now_ns: u64) {
        if confirmed + nacked == 0 {
            return;
        }
        self.stats.confirmed += confirmed;
        self.stats.nacked += nacked;
        self.stats.last_confirm_ns = now_ns;
        self.shared
            .confirmed
            .fetch_add(confirmed, Ordering::Relaxed);
        self.shared.nacked.fetch_add(nacked, Ordering::Relaxed);
    }

    /// Whether waiting for outstanding confirms should end: the pattern is
    /// over and `--drain-timeout` has passed since. Also returns when to
    /// check again.
    pub(crate) fn confirm_deadline(&self, now_ns: u64) -> (bool, Option<u64>) {
        match self.done_at {
            None => (false, None),
            Some(done) => {
                let deadline = done + self.shared.drain_ns;
                (now_ns >= deadline, Some(deadline))
            }
        }
    }
}

/// How a run is laid out: per producer, how many groups it feeds; per
/// group, which producers feed it (see [`crate::stats::Accounting`]).
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) fanout: Vec<u64>,
    pub(crate) feeds: Vec<Vec<usize>>,
    /// Group of each consumer.
    pub(crate) consumer_groups: Vec<usize>,
}

impl Plan {
    /// `producers` spread over `targets` (queues or topics) round robin,
    /// `consumers` likewise. With `shared_groups` (AMQP queues) the
    /// consumers of one target form one group; otherwise (MQTT) every
    /// consumer is its own group.
    pub(crate) fn round_robin(
        producers: u32,
        consumers: u32,
        targets: u32,
        shared_groups: bool,
    ) -> Plan {
        let targets = targets.max(1);
        let target_of_producer = |p: u32| p % targets;
        let target_of_consumer = |c: u32| c % targets;
        let mut feeds = Vec::new();
        let mut consumer_groups = Vec::new();
        let mut group_target = Vec::new();
        if shared_groups {
            let mut group_of_target = vec![None; targets as usize];
            for c in 0..consumers {
                let t = target_of_consumer(c) as usize;
                let g = *group_of_target[t].get_or_insert_with(|| {
                    group_target.push(t as u32);
                    group_target.len() - 1
                });
                consumer_groups.push(g);
            }
        } else {
            for c in 0..consumers {
                group_target.push(target_of_consumer(c));
                consumer_groups.push(group_target.len() - 1);
            }
        }
        for &t in &group_target {
            feeds.push(
                (0..producers)
                    .filter(|&p| target_of_producer(p) == t)
                    .map(|p| p as usize)
                    .collect(),
            );
        }
        let fanout = (0..producers)
            .map(|p| {
                group_target
                    .iter()
                    .filter(|&&t| t == target_of_producer(p))
                    .count() as u64
            })
            .collect();
        Plan {
            fanout,
            feeds,
            consumer_groups,
        }
    }
}

/// A consumer, connected and subscribed, waiting to be started.
pub(crate) type ConsumerStart = Box<dyn FnOnce(Arc<Shared>, Recorder) -> BoxFut<Recorder> + Send>;
/// A producer, connected, waiting to be started.
pub(crate) type ProducerStart = Box<dyn FnOnce(Generator) -> BoxFut<ProducerStats> + Send>;

/// What [`execute`] collected.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub(crate) producers: Vec<ProducerStats>,
    pub(crate) recorders: Vec<Recorder>,
    pub(crate) errors: Vec<String>,
    /// Wall time from the start to the end of draining, ns.
    pub(crate) elapsed_ns: u64,
    pub(crate) cpu_seconds: Option<f64>,
    pub(crate) blocked: bool,
}

/// Starts the consumers, then the producers, shows progress, drains and
/// collects. `cpu_start` is the process CPU time before the connections
/// were opened.
pub(crate) async fn execute(
    load: &LoadArgs,
    plan: &Plan,
    consumers: Vec<ConsumerStart>,
    producers: Vec<ProducerStart>,
    cpu_start: Option<f64>,
) -> Outcome {
    let pattern = load.pattern();
    let n_producers = producers.len() as u32;
    let window = (load.max_in_flight / u64::from(n_producers.max(1))).max(1);
    let shared = Arc::new(Shared {
        clock: Clock::start(),
        published: AtomicU64::new(0),
        confirmed: AtomicU64::new(0),
        nacked: AtomicU64::new(0),
        consumed: AtomicU64::new(0),
        producers: plan
            .fanout
            .iter()
            .map(|&fanout| ProducerSlot {
                fanout,
                ..ProducerSlot::default()
            })
            .collect(),
        stop: CancellationToken::new(),
        abort: CancellationToken::new(),
        window,
        drain_ns: load.drain_timeout,
        blocked: AtomicBool::new(false),
    });
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let progress = Progress::new(load, &pattern, n_producers);

    let mut consumer_tasks = Vec::new();
    for (i, start) in consumers.into_iter().enumerate() {
        let group = plan.consumer_groups[i];
        let rec = Recorder::new(group, plan.fanout.len());
        let fut = start(shared.clone(), rec);
        let (sh, errs) = (shared.clone(), errors.clone());
        consumer_tasks.push(tokio::spawn(async move {
            let (rec, r) = fut.await;
            if let Err(e) = &r {
                errs.lock().unwrap().push(format!("consumer {i}: {e:#}"));
                sh.abort.cancel();
                sh.stop.cancel();
            }
            rec
        }));
    }
    let mut producer_tasks = Vec::new();
    for (i, start) in producers.into_iter().enumerate() {
        let gen = Generator::new(
            i as u32,
            pattern.share(i as u32, n_producers),
            shared.clone(),
        );
        let fut = start(gen);
        let (sh, errs) = (shared.clone(), errors.clone());
        producer_tasks.push(tokio::spawn(async move {
            let (stats, r) = fut.await;
            if let Err(e) = &r {
                errs.lock().unwrap().push(format!("producer {i}: {e:#}"));
                sh.abort.cancel();
                sh.stop.cancel();
            }
            stats
        }));
    }

    // Watch: progress, Ctrl-C, producers finishing, draining.
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut last_consumed = 0u64;
    let mut last_change = 0u64;
    let mut producers_done_at: Option<u64> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut ctrl_c, if !shared.abort.is_cancelled() => {
                errors.lock().unwrap().push("interrupted (Ctrl-C): stopped early".into());
                shared.abort.cancel();
            }
        }
        let now = shared.clock.now_ns();
        progress.update(&shared, now);
        if shared.stop.is_cancelled() {
            break;
        }
        let consumed = shared.consumed.load(Ordering::Relaxed);
        if consumed != last_consumed {
            last_consumed = consumed;
            last_change = now;
        }
        if producers_done_at.is_none() && producer_tasks.iter().all(|t| t.is_finished()) {
            producers_done_at = Some(now);
            last_change = last_change.max(now);
        }
        if producers_done_at.is_some() {
            let expected: u64 = shared
                .producers
                .iter()
                .map(|s| s.sent.load(Ordering::Relaxed) * s.fanout)
                .sum();
            let idle = now.saturating_sub(last_change) >= load.drain_timeout;
            // With no producers the run drains what is already queued:
            // it ends once nothing has arrived for --drain-timeout.
            let drain_only = shared.producers.is_empty();
            if consumer_tasks.is_empty() || (!drain_only && consumed >= expected) || idle {
                shared.stop.cancel();
                break;
            }
        }
    }
    let mut producer_stats = Vec::new();
    for t in producer_tasks {
        // A panicked producer keeps its place (with zeros) so indices match.
        producer_stats.push(t.await.unwrap_or_default());
    }
    let mut recorders = Vec::new();
    for t in consumer_tasks {
        match tokio::time::timeout(Duration::from_secs(10), t).await {
            Ok(Ok(r)) => recorders.push(r),
            Ok(Err(e)) => errors
                .lock()
                .unwrap()
                .push(format!("a consumer panicked: {e}")),
            Err(_) => errors
                .lock()
                .unwrap()
                .push("a consumer did not stop within 10 s".into()),
        }
    }
    let elapsed_ns = shared.clock.now_ns();
    progress.finish();
    let cpu_seconds = match (cpu_start, crate::procfs::cpu_seconds("self")) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let errors = std::mem::take(&mut *errors.lock().unwrap());
    Outcome {
        producers: producer_stats,
        recorders,
        errors,
        elapsed_ns,
        cpu_seconds,
        blocked: shared.blocked.load(Ordering::Relaxed),
    }
}

/// Builds the client runtime: `threads` workers (1 = current thread).
pub(crate) fn runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let rt = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
    };
    Ok(rt)
}

/// Connects to `addr` ("host:port") within 10 s.
pub(crate) async fn connect(addr: &str) -> anyhow::Result<TcpStream> {
    use anyhow::Context as _;
    let s = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr))
        .await
        .with_context(|| format!("connecting to {addr}: timed out"))?
        .with_context(|| format!("connecting to {addr}"))?;
    let _ = s.set_nodelay(true);
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_for_queues() {
        // 3 producers, 2 consumers, 2 queues: queue 0 has producers 0 and 2
        // and consumer 0; queue 1 has producer 1 and consumer 1.
        let p = Plan::round_robin(3, 2, 2, true);
        assert_eq!(p.consumer_groups, vec![0, 1]);
        assert_eq!(p.feeds, vec![vec![0, 2], vec![1]]);
        assert_eq!(p.fanout, vec![1, 1, 1]);
        // Competing consumers on one queue: one group, each message once.
        let p = Plan::round_robin(1, 3, 1, true);
        assert_eq!(p.consumer_groups, vec![0, 0, 0]);
        assert_eq!(p.fanout, vec![1]);
        // A queue without consumers: its producer feeds nobody.
        let p = Plan::round_robin(2, 1, 2, true);
        assert_eq!(p.fanout, vec![1, 0]);
    }

    #[test]
    fn plan_for_topics() {
        // Every subscriber of a topic gets every message of it.
        let p = Plan::round_robin(1, 3, 1, false);
        assert_eq!(p.consumer_groups, vec![0, 1, 2]);
        assert_eq!(p.feeds, vec![vec![0], vec![0], vec![0]]);
        assert_eq!(p.fanout, vec![3]);
    }
}
