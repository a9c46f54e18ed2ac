//! `liebre bench relay`: the floor for the client's cost per message.
//!
//! A producer task writes the frames `liebre bench amqp` or `mqtt` writes
//! (the same encoding code, the same stamp, the same batches) into a TCP
//! socket; a relay thread copies the bytes, unparsed, to a second socket;
//! a consumer task reads and splits them as the benchmark's consumers do,
//! checks the sequence and records latency. Producer and consumer share
//! one runtime thread like the benchmark's clients, so the process's CPU
//! time minus the relay thread's is what a client pays to move these
//! frames through TCP, with no broker protocol around them: no broker, no
//! acknowledgements, no confirms.
//!
//! The AMQP consumer gets `basic.publish` frames instead of
//! `basic.deliver` ones (there is no broker to rewrite them) and takes the
//! stamp from the first body frame of each message; the MQTT consumer gets
//! exactly the PUBLISH packets a subscriber would (3.1.1).

use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::{Shutdown, TcpListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context as _};
use bytes::{Buf as _, BytesMut};
use hdrhistogram::Histogram;
use liebre_mqtt_codec::{Protocol, QoS};
use serde::Serialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::cli::{RelayArgs, RelayProtocol};
use crate::pace::NS;
use crate::payload::{self, Clock, Stamp, STAMP_LEN};
use crate::report::{thousands, write_client_cpu, write_latency, Latency};
use crate::run::HIGH_WATER;
use crate::stats::new_histogram;
use crate::{amqp, mqtt, procfs};

/// The relay's copy buffer.
const RELAY_BUF: usize = 64 * 1024;
/// The consumer reads at least this much room at a time (as the
/// benchmark's connections do).
const READ_CHUNK: usize = 256 * 1024;

/// The result of `liebre bench relay`.
#[derive(Debug, Clone, Serialize)]
pub struct RelayReport {
    /// `amqp` or `mqtt`.
    pub protocol: String,
    /// QoS of the MQTT PUBLISH packets; absent for AMQP.
    pub qos: Option<u8>,
    /// Message size, bytes.
    pub size: usize,
    /// Most messages sent and not yet consumed.
    pub max_in_flight: u64,
    /// Wall time of the run, s.
    pub elapsed_s: f64,
    /// Messages the producer wrote.
    pub published: u64,
    /// Publish rate over the publishing time, msg/s.
    pub publish_rate: f64,
    /// Messages the consumer read.
    pub consumed: u64,
    /// Consume rate over the consuming time, msg/s.
    pub consume_rate: f64,
    /// Messages written and never read (skipped sequence numbers, and
    /// those missing at the end).
    pub lost: u64,
    /// Messages read behind the expected sequence number (TCP does not
    /// reorder: read twice).
    pub duplicated: u64,
    /// Messages without this run's stamp.
    pub foreign: u64,
    /// Bytes the relay copied.
    pub relay_bytes: u64,
    /// End-to-end latency (send to receive), µs.
    pub latency_us: Option<Latency>,
    /// CPU seconds of the client (producer and consumer): the process's
    /// CPU time over the run minus the relay thread's.
    pub client_cpu_s: Option<f64>,
    /// Client CPU seconds per million messages (the larger of published
    /// and consumed).
    pub client_cpu_s_per_million: Option<f64>,
    /// CPU seconds of the relay thread (not the client's).
    pub relay_cpu_s: Option<f64>,
    /// What went wrong, if anything.
    pub errors: Vec<String>,
}

/// The frames of one message, encoded by the benchmark's own code.
enum Encoder {
    /// `basic.publish`, content header and body frames of `liebre bench
    /// amqp` (default exchange, not persistent).
    Amqp {
        /// The method frame and content header, encoded once.
        prefix: Vec<u8>,
        /// Body size.
        size: usize,
        /// Largest frame.
        frame_max: u32,
    },
    /// PUBLISH packets of `liebre bench mqtt` (3.1.1).
    Mqtt {
        /// The topic the benchmark publishes to.
        topic: String,
        /// QoS 0 or 1.
        qos: QoS,
        /// The message, stamped in place.
        scratch: Vec<u8>,
        /// The next packet identifier (QoS 1).
        next_id: u16,
    },
}

impl Encoder {
    /// The encoder for `args`, with the benchmark's queue or topic name.
    fn new(args: &RelayArgs) -> anyhow::Result<Self> {
        let pid = std::process::id();
        Ok(match args.protocol {
            RelayProtocol::Amqp => Self::Amqp {
                prefix: amqp::publish_prefix(
                    "",
                    &format!("liebre-bench-{pid}-0"),
                    args.size,
                    false,
                )?,
                size: args.size,
                frame_max: amqp::CLIENT_FRAME_MAX,
            },
            RelayProtocol::Mqtt => Self::Mqtt {
                topic: format!("liebre-bench/{pid}/0"),
                qos: QoS::from_u8(args.qos).context("--qos must be 0 or 1")?,
                scratch: vec![0; args.size],
                next_id: 1,
            },
        })
    }

    /// Most messages the benchmark's producer encodes per batch.
    fn batch(&self) -> u64 {
        match self {
            Self::Amqp { .. } => amqp::BATCH,
            Self::Mqtt { .. } => mqtt::BATCH,
        }
    }

    /// Appends messages `seq0..seq0 + n`, sent at `now_ns`, as the
    /// benchmark's producer does.
    fn put_batch(
        &mut self,
        out: &mut BytesMut,
        seq0: u64,
        n: u64,
        now_ns: u64,
    ) -> anyhow::Result<()> {
        match self {
            Self::Amqp {
                prefix,
                size,
                frame_max,
            } => {
                for seq in seq0..seq0 + n {
                    amqp::put_message(out, prefix, *size, *frame_max, 0, seq, now_ns);
                }
            }
            Self::Mqtt {
                topic,
                qos,
                scratch,
                next_id,
            } => {
                for seq in seq0..seq0 + n {
                    let id = if *qos == QoS::AtMostOnce {
                        0
                    } else {
                        let id = *next_id;
                        *next_id = if id == u16::MAX { 1 } else { id + 1 };
                        id
                    };
                    mqtt::put_publish(
                        out,
                        Protocol::V311,
                        *qos,
                        topic,
                        id,
                        scratch,
                        0,
                        seq,
                        now_ns,
                    )
                    .context("encoding PUBLISH")?;
                }
            }
        }
        Ok(())
    }
}

/// Where the AMQP consumer is within a message.
#[derive(Debug, Default)]
struct Content {
    /// Body bytes still to come.
    remaining: u64,
    /// The stamp, as far as read.
    stamp: [u8; STAMP_LEN],
    /// Stamp bytes read.
    have: usize,
    /// A content header was read and its body is not complete.
    in_body: bool,
}

/// What the consumer saw.
#[derive(Debug)]
struct Tally {
    /// Messages read.
    received: u64,
    /// The sequence number expected next.
    next_seq: u64,
    /// Sequence numbers skipped.
    lost: u64,
    /// Messages behind `next_seq`.
    duplicated: u64,
    /// Messages without a stamp of producer 0.
    foreign: u64,
    /// Latency, µs.
    latency: Histogram<u64>,
    /// First and last read with messages, ns.
    first_ns: Option<u64>,
    /// See `first_ns`.
    last_ns: u64,
}

impl Default for Tally {
    fn default() -> Self {
        Self {
            received: 0,
            next_seq: 0,
            lost: 0,
            duplicated: 0,
            foreign: 0,
            latency: new_histogram(),
            first_ns: None,
            last_ns: 0,
        }
    }
}

impl Tally {
    /// Books one message read at `now_ns`.
    fn record(&mut self, stamp: Option<Stamp>, now_ns: u64) {
        self.received += 1;
        let Some(s) = stamp.filter(|s| s.producer == 0) else {
            self.foreign += 1;
            return;
        };
        if s.seq < self.next_seq {
            self.duplicated += 1;
        } else {
            self.lost += s.seq - self.next_seq;
            self.next_seq = s.seq + 1;
        }
        self.latency
            .saturating_record(now_ns.saturating_sub(s.sent_ns) / 1000);
    }
}

/// Splits frames as the benchmark's consumers do.
enum Decoder {
    /// AMQP frames (`basic.publish`, header, body).
    Amqp(Content),
    /// MQTT 3.1.1 packets.
    Mqtt,
}

impl Decoder {
    /// Books every complete message at the front of `input`; returns the
    /// bytes taken.
    fn on_input(&mut self, input: &[u8], tally: &mut Tally, now_ns: u64) -> anyhow::Result<usize> {
        match self {
            Self::Amqp(cur) => amqp::scan_frames(input, |kind, _channel, p| {
                match kind {
                    // basic.publish: a new message.
                    1 => *cur = Content::default(),
                    2 => {
                        let size = amqp::content_body_size(p)?;
                        cur.remaining = size;
                        cur.in_body = true;
                        if size == 0 {
                            cur.in_body = false;
                            tally.record(None, now_ns);
                        }
                    }
                    3 if cur.in_body => {
                        let take = (STAMP_LEN - cur.have).min(p.len());
                        cur.stamp[cur.have..cur.have + take].copy_from_slice(&p[..take]);
                        cur.have += take;
                        cur.remaining = cur.remaining.saturating_sub(p.len() as u64);
                        if cur.remaining == 0 {
                            cur.in_body = false;
                            let stamp = if cur.have == STAMP_LEN {
                                payload::parse(&cur.stamp)
                            } else {
                                None
                            };
                            tally.record(stamp, now_ns);
                        }
                    }
                    _ => {}
                }
                Ok(())
            }),
            Self::Mqtt => mqtt::scan_packets(input, |first, body| {
                if first >> 4 == 3 {
                    let (_, _, payload) = mqtt::publish_parts(first, body, false)?;
                    tally.record(payload::parse(payload), now_ns);
                }
                Ok(())
            }),
        }
    }
}

/// The in-flight window between producer and consumer.
#[derive(Debug, Default)]
struct Flow {
    /// Messages the consumer read.
    consumed: AtomicU64,
    /// Wakes the producer when the window opens.
    notify: Notify,
}

/// What the producer did.
#[derive(Debug, Default)]
struct Sent {
    /// Messages written.
    sent: u64,
    /// When the last batch was encoded, ns.
    last_ns: u64,
}

/// Writes messages for `end_ns`, in the benchmark's batches: up to
/// `enc.batch()` messages at a time while the buffer is below
/// [`HIGH_WATER`] and the window allows, then one write.
async fn produce(
    mut stream: TcpStream,
    mut enc: Encoder,
    flow: Arc<Flow>,
    clock: Clock,
    end_ns: u64,
    window: u64,
) -> (Sent, anyhow::Result<()>) {
    let mut s = Sent::default();
    let mut out = BytesMut::with_capacity(HIGH_WATER * 2);
    let batch = enc.batch();
    let r = async {
        loop {
            let now = clock.now_ns();
            let done = now >= end_ns;
            while !done && out.len() < HIGH_WATER {
                let in_flight = s.sent.saturating_sub(flow.consumed.load(Ordering::Relaxed));
                let n = window.saturating_sub(in_flight).min(batch);
                if n == 0 {
                    break;
                }
                enc.put_batch(&mut out, s.sent, n, now)?;
                s.sent += n;
                s.last_ns = now;
            }
            if out.is_empty() {
                if done {
                    break;
                }
                // The window is full: wait for the consumer, or the end.
                tokio::select! {
                    () = flow.notify.notified() => {}
                    () = tokio::time::sleep_until(clock.instant_at(end_ns).into()) => {}
                }
                continue;
            }
            stream
                .write_buf(&mut out)
                .await
                .context("writing to the relay")?;
        }
        stream
            .shutdown()
            .await
            .context("closing the producer's socket")
    }
    .await;
    (s, r)
}

/// Reads until the relay closes, booking every message.
async fn consume(
    mut stream: TcpStream,
    mut dec: Decoder,
    flow: Arc<Flow>,
    clock: Clock,
) -> (Tally, anyhow::Result<()>) {
    let mut tally = Tally::default();
    let mut input = BytesMut::with_capacity(8192);
    let r = async {
        loop {
            if input.capacity() - input.len() < READ_CHUNK / 4 {
                input.reserve(READ_CHUNK);
            }
            if stream
                .read_buf(&mut input)
                .await
                .context("reading from the relay")?
                == 0
            {
                if !input.is_empty() {
                    bail!("the stream ended inside a frame");
                }
                return Ok(());
            }
            let now = clock.now_ns();
            let before = tally.received;
            let used = dec.on_input(&input, &mut tally, now)?;
            input.advance(used);
            let got = tally.received - before;
            if got > 0 {
                tally.first_ns.get_or_insert(now);
                tally.last_ns = now;
                flow.consumed.fetch_add(got, Ordering::Relaxed);
                flow.notify.notify_one();
            }
        }
    }
    .await;
    (tally, r)
}

/// What the relay thread did.
#[derive(Debug)]
struct RelayEnd {
    /// Bytes copied.
    bytes: u64,
    /// The thread's CPU seconds.
    cpu_s: Option<f64>,
    /// How the copy ended.
    result: anyhow::Result<()>,
}

/// The relay thread: copies `from` to `to` with blocking calls until
/// `from` ends, then closes `to` for writing.
fn relay(mut from: std::net::TcpStream, mut to: std::net::TcpStream) -> RelayEnd {
    let cpu0 = procfs::thread_cpu_seconds();
    let mut bytes = 0u64;
    let result = copy(&mut from, &mut to, &mut bytes);
    let cpu_s = match (cpu0, procfs::thread_cpu_seconds()) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    RelayEnd {
        bytes,
        cpu_s,
        result,
    }
}

/// Copies `from` to `to` through a [`RELAY_BUF`] buffer until `from`
/// ends, counting `bytes`; then closes `to` for writing.
fn copy(
    from: &mut std::net::TcpStream,
    to: &mut std::net::TcpStream,
    bytes: &mut u64,
) -> anyhow::Result<()> {
    let mut buf = vec![0u8; RELAY_BUF];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("relay: reading from the producer"),
        };
        to.write_all(&buf[..n])
            .context("relay: writing to the consumer")?;
        *bytes += n as u64;
    }
    to.shutdown(Shutdown::Write)
        .context("relay: closing the consumer's socket")
}

/// A connected loopback pair: (the client's end, the relay's end).
fn loopback_pair() -> anyhow::Result<(std::net::TcpStream, std::net::TcpStream)> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a loopback socket")?;
    let addr = listener.local_addr().context("loopback address")?;
    let client = std::net::TcpStream::connect(addr).context("connecting to the relay")?;
    let (server, _) = listener.accept().context("accepting on the relay")?;
    for s in [&client, &server] {
        s.set_nodelay(true).context("TCP_NODELAY")?;
    }
    Ok((client, server))
}

/// `v` to one decimal.
fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// `v` to three decimals.
fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// `n` messages over `from_ns..to_ns`, msg/s.
fn rate(n: u64, from_ns: u64, to_ns: u64) -> f64 {
    if n == 0 {
        return 0.0;
    }
    n as f64 * NS as f64 / to_ns.saturating_sub(from_ns).max(1_000_000) as f64
}

/// Runs `liebre bench relay` (on its own single-threaded client runtime
/// and a relay thread) and returns its report.
pub fn run_relay(args: &RelayArgs) -> anyhow::Result<RelayReport> {
    args.validate()?;
    let enc = Encoder::new(args)?;
    let dec = match args.protocol {
        RelayProtocol::Amqp => Decoder::Amqp(Content::default()),
        RelayProtocol::Mqtt => Decoder::Mqtt,
    };
    let rt = crate::run::runtime(1)?;
    let cpu_start = procfs::cpu_seconds("self");
    let (producer_end, relay_in) = loopback_pair()?;
    let (relay_out, consumer_end) = loopback_pair()?;
    for s in [&producer_end, &consumer_end] {
        s.set_nonblocking(true).context("non-blocking socket")?;
    }
    let relay = std::thread::Builder::new()
        .name("liebre-bench-relay".into())
        .spawn(move || relay(relay_in, relay_out))
        .context("starting the relay thread")?;

    let (window, duration) = (args.max_in_flight, args.duration);
    let run = rt.block_on(async move {
        let producer = TcpStream::from_std(producer_end).context("producer socket")?;
        let consumer = TcpStream::from_std(consumer_end).context("consumer socket")?;
        let clock = Clock::start();
        let flow = Arc::new(Flow::default());
        let cons = tokio::spawn(consume(consumer, dec, flow.clone(), clock));
        let prod = tokio::spawn(produce(producer, enc, flow, clock, duration, window));
        let (sent, pr) = prod.await.context("the producer panicked")?;
        let (tally, cr) = cons.await.context("the consumer panicked")?;
        anyhow::Ok((sent, pr, tally, cr, clock.now_ns()))
    });
    let relay_end = relay
        .join()
        .map_err(|_| anyhow::anyhow!("the relay thread panicked"))?;
    let (sent, pr, tally, cr, elapsed_ns) = run?;
    let cpu_end = procfs::cpu_seconds("self");

    let mut errors = Vec::new();
    for (who, r) in [
        ("producer", pr),
        ("consumer", cr),
        ("relay", relay_end.result),
    ] {
        if let Err(e) = r {
            errors.push(format!("{who}: {e:#}"));
        }
    }
    let client_cpu_s = match (cpu_start, cpu_end, relay_end.cpu_s) {
        (Some(a), Some(b), Some(r)) => Some(b - a - r),
        _ => None,
    };
    let moved = sent.sent.max(tally.received);
    let latency_us = Latency::of(&tally.latency);
    Ok(RelayReport {
        protocol: match args.protocol {
            RelayProtocol::Amqp => "amqp".into(),
            RelayProtocol::Mqtt => "mqtt".into(),
        },
        qos: (args.protocol == RelayProtocol::Mqtt).then_some(args.qos),
        size: args.size,
        max_in_flight: args.max_in_flight,
        elapsed_s: round3(elapsed_ns as f64 / NS as f64),
        published: sent.sent,
        publish_rate: round1(rate(sent.sent, 0, sent.last_ns)),
        consumed: tally.received,
        consume_rate: round1(rate(
            tally.received,
            tally.first_ns.unwrap_or(0),
            tally.last_ns,
        )),
        lost: tally.lost + sent.sent.saturating_sub(tally.next_seq),
        duplicated: tally.duplicated,
        foreign: tally.foreign,
        relay_bytes: relay_end.bytes,
        latency_us,
        client_cpu_s: client_cpu_s.map(round3),
        client_cpu_s_per_million: client_cpu_s
            .filter(|_| moved > 0)
            .map(|c| round3(c / (moved as f64 / 1e6))),
        relay_cpu_s: relay_end.cpu_s.map(round3),
        errors,
    })
}

impl RelayReport {
    /// The `liebre bench amqp|mqtt` command moving the same frames.
    fn bench_command(&self) -> String {
        match self.qos {
            Some(q) if q > 0 => format!(
                "liebre bench {} --qos {q} --size {}",
                self.protocol, self.size
            ),
            _ => format!("liebre bench {} --size {}", self.protocol, self.size),
        }
    }

    /// The human-readable table.
    pub fn to_table(&self) -> String {
        let mut s = String::new();
        let frames = match self.qos {
            Some(q) => format!("MQTT 3.1.1 PUBLISH QoS {q}"),
            None => "AMQP basic.publish".to_string(),
        };
        let _ = writeln!(
            s,
            "liebre bench relay: {frames} frames through a raw TCP relay, {} B messages, window {}",
            self.size,
            thousands(self.max_in_flight)
        );
        let _ = writeln!(
            s,
            "  the floor for a client moving these frames through TCP (no broker, no acks): \
             compare its s per million with the client CPU line of `{}`",
            self.bench_command()
        );
        let _ = writeln!(s);
        let _ = writeln!(s, "  {:<12} {:>14} {:>14}", "", "messages", "msg/s");
        let row = |s: &mut String, name: &str, n: u64, r: Option<f64>| {
            let r = r.map_or(String::new(), |r| thousands(r.round() as u64));
            let _ = writeln!(s, "  {name:<12} {:>14} {r:>14}", thousands(n));
        };
        row(&mut s, "published", self.published, Some(self.publish_rate));
        row(&mut s, "consumed", self.consumed, Some(self.consume_rate));
        row(&mut s, "lost", self.lost, None);
        row(&mut s, "duplicated", self.duplicated, None);
        if self.foreign > 0 {
            row(&mut s, "foreign", self.foreign, None);
        }
        let _ = writeln!(s);
        write_latency(&mut s, self.latency_us.as_ref(), "no messages");
        if let Some(cpu) = self.client_cpu_s {
            write_client_cpu(&mut s, cpu, self.elapsed_s, self.client_cpu_s_per_million);
        }
        if let Some(cpu) = self.relay_cpu_s {
            let per_msg = self
                .relay_bytes
                .checked_div(self.consumed)
                .map_or(String::new(), |b| format!(", {b} B per message"));
            let _ = writeln!(
                s,
                "  relay CPU    {cpu:.2} s (not counted above), {} bytes relayed{per_msg}",
                thousands(self.relay_bytes)
            );
        }
        for e in &self.errors {
            let _ = writeln!(s, "  error: {e}");
        }
        s
    }

    /// One JSON object.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amqp_decoder_reads_multi_frame_bodies() {
        // A body split over several frames: the stamp is in the first.
        let prefix = amqp::publish_prefix("", "q", 10_000, false).unwrap();
        let mut wire = BytesMut::new();
        for seq in 0..3 {
            amqp::put_message(&mut wire, &prefix, 10_000, 4096, 0, seq, 5);
        }
        let mut dec = Decoder::Amqp(Content::default());
        let mut tally = Tally::default();
        // A cut frame waits for more input.
        let used = dec
            .on_input(&wire[..wire.len() - 1], &mut tally, 2005)
            .unwrap();
        assert_eq!(tally.received, 2);
        let rest = dec.on_input(&wire[used..], &mut tally, 2005).unwrap();
        assert_eq!(used + rest, wire.len());
        assert_eq!((tally.received, tally.lost, tally.duplicated), (3, 0, 0));
        assert_eq!(tally.latency.max(), 2);
    }

    #[test]
    fn tally_counts_gaps_and_repeats() {
        let mut t = Tally::default();
        let st = |seq| {
            Some(Stamp {
                producer: 0,
                seq,
                sent_ns: 0,
            })
        };
        for seq in [0, 1, 3, 3, 2, 4] {
            t.record(st(seq), 0);
        }
        t.record(None, 0);
        assert_eq!(
            (t.received, t.lost, t.duplicated, t.foreign, t.next_seq),
            (7, 1, 2, 1, 5)
        );
    }

    #[test]
    fn mqtt_encoder_and_decoder_agree() {
        let args = RelayArgs {
            protocol: RelayProtocol::Mqtt,
            size: 64,
            duration: NS,
            qos: 1,
            max_in_flight: 10,
            json: false,
        };
        let mut enc = Encoder::new(&args).unwrap();
        let mut wire = BytesMut::new();
        enc.put_batch(&mut wire, 0, 5, 1000).unwrap();
        let mut tally = Tally::default();
        let used = Decoder::Mqtt.on_input(&wire, &mut tally, 3000).unwrap();
        assert_eq!(used, wire.len());
        assert_eq!((tally.received, tally.lost, tally.foreign), (5, 0, 0));
        assert_eq!(tally.latency.max(), 2);
    }
}
