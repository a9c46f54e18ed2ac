//! A minimal MQTT 3.1.1 / 5.0 client on `liebre-mqtt-codec`, and the MQTT
//! benchmark.
//!
//! CONNECT, SUBSCRIBE and their answers go through the codec's
//! [`encode`]/[`decode`]. On the message path a publisher writes each
//! PUBLISH with [`write_publish`] into one output buffer per batch, and
//! both sides scan the read buffer in place for PUBLISH, PUBACK, PUBREC,
//! PUBREL and PUBCOMP, answering with 4-byte acknowledgements.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use liebre_mqtt_codec::{
    decode, encode, write_publish, Connect, EncodeError, Packet, Properties, Protocol, QoS, Str,
    Subscribe, SubscriptionOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::cli::MqttArgs;
use crate::payload::{self, STAMP_LEN};
use crate::report::{self, Report};
use crate::run::{self, Generator, Plan, Session, Shared, Wake, HIGH_WATER};
use crate::stats::Recorder;

/// Most messages one `produce` call writes.
pub(crate) const BATCH: u64 = 4096;
/// Default limit on unacknowledged QoS 1/2 publications in 3.1.1, which
/// has no Receive Maximum to learn the broker's limit from (Liebre applies
/// its 1024 to 3.1.1 clients too).
const V3_INFLIGHT: u16 = 1024;
/// Session expiry asked for by persistent 5.0 sessions, seconds.
const SESSION_EXPIRY: u32 = 300;

/// How to connect.
#[derive(Debug, Clone)]
pub(crate) struct MqttOpts {
    pub(crate) addr: String,
    pub(crate) protocol: Protocol,
    pub(crate) keep_alive: u16,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<String>,
}

/// A connected MQTT client after CONNACK.
pub(crate) struct MqttConn {
    pub(crate) stream: TcpStream,
    pub(crate) input: BytesMut,
    /// In-flight QoS 1/2 publications the server accepts.
    pub(crate) receive_max: u16,
}

const STEP: Duration = Duration::from_secs(15);

impl MqttConn {
    /// Connects and sends CONNECT; fails unless CONNACK accepts.
    pub(crate) async fn open(
        opts: &MqttOpts,
        client_id: &str,
        clean: bool,
    ) -> anyhow::Result<Self> {
        let stream = run::connect(&opts.addr).await?;
        Self::handshake(stream, opts, client_id, clean).await
    }

    /// CONNECT / CONNACK over a connected stream.
    pub(crate) async fn handshake(
        stream: TcpStream,
        opts: &MqttOpts,
        client_id: &str,
        clean: bool,
    ) -> anyhow::Result<Self> {
        let v5 = opts.protocol.is_v5();
        let properties = if v5 {
            Properties {
                session_expiry_interval: (!clean).then_some(SESSION_EXPIRY),
                receive_maximum: Some(u16::MAX),
                ..Properties::default()
            }
        } else {
            Properties::default()
        };
        let connect = Packet::Connect(Connect {
            protocol: opts.protocol,
            clean_start: clean,
            keep_alive: opts.keep_alive,
            client_id: Str::from(client_id),
            will: None,
            username: opts.username.as_deref().map(Str::from),
            password: opts.password.clone().map(Bytes::from),
            properties,
        });
        let mut conn = Self {
            stream,
            input: BytesMut::with_capacity(8192),
            receive_max: u16::MAX,
        };
        conn.send(&connect, opts.protocol).await?;
        let ack = conn.recv(opts.protocol).await?;
        let Packet::ConnAck(ack) = ack else {
            bail!("expected CONNACK, got {}", ack.name());
        };
        if ack.code != 0 {
            bail!(
                "the broker refused the connection: CONNACK code {:#04x}",
                ack.code
            );
        }
        if let Some(m) = ack.properties.receive_maximum {
            conn.receive_max = m;
        }
        Ok(conn)
    }

    async fn send(&mut self, p: &Packet, protocol: Protocol) -> anyhow::Result<()> {
        let mut out = BytesMut::new();
        encode(p, protocol, &mut out)?;
        self.stream.write_all(&out).await?;
        Ok(())
    }

    async fn recv(&mut self, protocol: Protocol) -> anyhow::Result<Packet> {
        tokio::time::timeout(STEP, async {
            loop {
                if let Some(p) = decode(&mut self.input, Some(protocol), 0)? {
                    return Ok(p);
                }
                if self.stream.read_buf(&mut self.input).await? == 0 {
                    bail!("the broker closed the connection");
                }
            }
        })
        .await
        .context("no answer from the broker within 15 s")?
    }

    /// SUBSCRIBE to one filter; fails unless SUBACK grants it.
    async fn subscribe(
        &mut self,
        protocol: Protocol,
        filter: &str,
        qos: QoS,
    ) -> anyhow::Result<()> {
        let sub = Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: vec![(
                Str::from(filter),
                SubscriptionOptions {
                    qos,
                    ..SubscriptionOptions::default()
                },
            )],
            properties: Properties::default(),
        });
        self.send(&sub, protocol).await?;
        loop {
            match self.recv(protocol).await? {
                Packet::SubAck(a) => {
                    let code = a.codes.first().copied().unwrap_or(0x80);
                    if code >= 0x80 {
                        bail!(
                            "the broker refused the subscription to {filter:?}: code {code:#04x}"
                        );
                    }
                    return Ok(());
                }
                // A persistent session may get queued messages first; they
                // are not this run's (the run has not started).
                Packet::Publish(_) | Packet::PubRel(_) => {}
                other => bail!("expected SUBACK, got {}", other.name()),
            }
        }
    }

    /// Sends DISCONNECT and waits briefly for the socket to close.
    pub(crate) async fn disconnect(self) {
        let _ = self.try_disconnect(Duration::from_secs(2)).await;
    }

    /// Sends DISCONNECT and waits up to `limit` for the broker to close
    /// the socket (end of stream), else an error. The broker closing
    /// first leaves TIME_WAIT on its side, not on the client's ports.
    pub(crate) async fn try_disconnect(mut self, limit: Duration) -> anyhow::Result<()> {
        self.stream.write_all(&[0xE0, 0x00]).await?;
        tokio::time::timeout(limit, async {
            let mut buf = [0u8; 4096];
            while self.stream.read(&mut buf).await? > 0 {}
            anyhow::Ok(())
        })
        .await
        .with_context(|| format!("the broker did not close within {limit:?} of DISCONNECT"))?
        .context("reading after DISCONNECT")
    }
}

/// A variable byte integer at the front of `b`: `Ok(None)` when
/// incomplete, else its value and length.
fn varint(b: &[u8]) -> anyhow::Result<Option<(usize, usize)>> {
    let mut value = 0usize;
    for i in 0..4 {
        let Some(&byte) = b.get(i) else {
            return Ok(None);
        };
        value |= ((byte & 0x7F) as usize) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    bail!("malformed remaining length from the broker")
}

/// Calls `f(first_byte, body)` for every complete packet at the front of
/// `input`; returns the bytes they took.
pub(crate) fn scan_packets(
    input: &[u8],
    mut f: impl FnMut(u8, &[u8]) -> anyhow::Result<()>,
) -> anyhow::Result<usize> {
    let mut pos = 0;
    while let Some(&first) = input.get(pos) {
        let Some((len, n)) = varint(&input[pos + 1..])? else {
            break;
        };
        let start = pos + 1 + n;
        let Some(body) = input.get(start..start + len) else {
            break;
        };
        f(first, body)?;
        pos = start + len;
    }
    Ok(pos)
}

fn packet_id(body: &[u8]) -> anyhow::Result<u16> {
    match body.get(0..2) {
        Some(&[a, b]) => Ok(u16::from_be_bytes([a, b])),
        _ => bail!("acknowledgement without a packet identifier"),
    }
}

fn ack(out: &mut BytesMut, first: u8, id: u16) {
    out.put_u8(first);
    out.put_u8(2);
    out.put_u16(id);
}

fn disconnect_error(body: &[u8]) -> anyhow::Error {
    match body.first() {
        Some(code) => anyhow::anyhow!("the broker sent DISCONNECT with reason {code:#04x}"),
        None => anyhow::anyhow!("the broker sent DISCONNECT"),
    }
}

/// Appends one PUBLISH of `scratch` (the message, `--size` bytes) after
/// stamping it with `producer`, `seq` and `sent_ns`: what a publisher
/// writes per message.
#[allow(clippy::too_many_arguments)]
pub(crate) fn put_publish(
    out: &mut BytesMut,
    protocol: Protocol,
    qos: QoS,
    topic: &str,
    packet_id: u16,
    scratch: &mut [u8],
    producer: u32,
    seq: u64,
    sent_ns: u64,
) -> Result<(), EncodeError> {
    payload::stamp(scratch, producer, seq, sent_ns);
    write_publish(
        out, protocol, false, qos, false, topic, packet_id, None, scratch,
    )
}

/// The QoS, packet identifier (0 at QoS 0) and payload of a PUBLISH
/// packet, from its first byte and body (what [`scan_packets`] hands out).
pub(crate) fn publish_parts(first: u8, body: &[u8], v5: bool) -> anyhow::Result<(u8, u16, &[u8])> {
    let qos = (first >> 1) & 3;
    let topic_len = usize::from(u16::from_be_bytes(
        body.get(0..2).context("short PUBLISH")?.try_into()?,
    ));
    let mut at = 2 + topic_len;
    let mut id = 0;
    if qos > 0 {
        id = u16::from_be_bytes(body.get(at..at + 2).context("short PUBLISH")?.try_into()?);
        at += 2;
    }
    if v5 {
        let (len, n) =
            varint(body.get(at..).unwrap_or_default())?.context("short PUBLISH properties")?;
        at += n + len;
    }
    Ok((qos, id, body.get(at..).context("short PUBLISH")?))
}

/// A set of packet identifiers (1..=65535).
#[derive(Debug)]
pub(crate) struct IdSet {
    bits: Box<[u64; 1024]>,
    len: u32,
}

impl Default for IdSet {
    fn default() -> Self {
        Self {
            bits: Box::new([0; 1024]),
            len: 0,
        }
    }
}

impl IdSet {
    #[cfg(test)]
    pub(crate) fn contains(&self, id: u16) -> bool {
        self.bits[usize::from(id / 64)] & (1 << (id % 64)) != 0
    }

    /// Adds `id`; false when present.
    pub(crate) fn insert(&mut self, id: u16) -> bool {
        let w = &mut self.bits[usize::from(id / 64)];
        let bit = 1u64 << (id % 64);
        if *w & bit != 0 {
            return false;
        }
        *w |= bit;
        self.len += 1;
        true
    }

    /// Removes `id`; false when absent.
    pub(crate) fn remove(&mut self, id: u16) -> bool {
        let w = &mut self.bits[usize::from(id / 64)];
        let bit = 1u64 << (id % 64);
        if *w & bit == 0 {
            return false;
        }
        *w &= !bit;
        self.len -= 1;
        true
    }

    pub(crate) fn len(&self) -> u32 {
        self.len
    }
}

/// Hands out packet identifiers in order, skipping those in use.
#[derive(Debug)]
pub(crate) struct IdPool {
    used: IdSet,
    next: u16,
}

impl Default for IdPool {
    fn default() -> Self {
        Self {
            used: IdSet::default(),
            next: 1,
        }
    }
}

impl IdPool {
    /// The next free identifier; `None` when the next in line is still in
    /// use (acknowledgements come in order, so the caller waits).
    pub(crate) fn alloc(&mut self) -> Option<u16> {
        let id = self.next;
        if !self.used.insert(id) {
            return None;
        }
        self.next = if id == u16::MAX { 1 } else { id + 1 };
        Some(id)
    }

    /// Releases `id`; false when it was not in use.
    pub(crate) fn free(&mut self, id: u16) -> bool {
        self.used.remove(id)
    }

    pub(crate) fn in_use(&self) -> u64 {
        u64::from(self.used.len())
    }
}

/// A publisher connection's session.
struct Publisher {
    gen: Generator,
    protocol: Protocol,
    topic: String,
    qos: QoS,
    scratch: Vec<u8>,
    ids: IdPool,
    /// Most unacknowledged publications.
    limit: u64,
    gave_up: bool,
}

impl Session for Publisher {
    fn on_input(
        &mut self,
        input: &mut BytesMut,
        out: &mut BytesMut,
        now_ns: u64,
    ) -> anyhow::Result<()> {
        let (mut acked, mut nacked) = (0u64, 0u64);
        let ids = &mut self.ids;
        let used = scan_packets(input, |first, body| {
            match first >> 4 {
                4 | 7 => {
                    // PUBACK (QoS 1) or PUBCOMP (QoS 2): done.
                    let id = packet_id(body)?;
                    if ids.free(id) {
                        if body.get(2).is_some_and(|&r| r >= 0x80) {
                            nacked += 1;
                        } else {
                            acked += 1;
                        }
                    }
                }
                5 => {
                    // PUBREC: release, unless refused.
                    let id = packet_id(body)?;
                    if body.get(2).is_some_and(|&r| r >= 0x80) {
                        if ids.free(id) {
                            nacked += 1;
                        }
                    } else {
                        ack(out, 0x62, id);
                    }
                }
                14 => return Err(disconnect_error(body)),
                _ => {}
            }
            Ok(())
        })?;
        input.advance(used);
        self.gen.record_confirms(acked, nacked, now_ns);
        Ok(())
    }

    fn produce(&mut self, out: &mut BytesMut, now_ns: u64) -> Wake {
        loop {
            if out.len() >= HIGH_WATER {
                return Wake::default();
            }
            let room = if self.qos == QoS::AtMostOnce {
                u64::MAX
            } else {
                self.limit.saturating_sub(self.ids.in_use())
            };
            let (n, wake) = self.gen.allowance(now_ns, room, BATCH);
            if n == 0 {
                if self.gen.done_at.is_some() && self.ids.in_use() > 0 {
                    let (late, at) = self.gen.confirm_deadline(now_ns);
                    self.gave_up = late;
                    return Wake {
                        at_ns: at,
                        notify: false,
                    };
                }
                return wake;
            }
            let seq0 = self.gen.sent();
            let mut written = 0;
            for i in 0..n {
                let id = if self.qos == QoS::AtMostOnce {
                    0
                } else {
                    match self.ids.alloc() {
                        Some(id) => id,
                        None => break,
                    }
                };
                // Cannot fail: the topic is short and the size was checked.
                let _ = put_publish(
                    out,
                    self.protocol,
                    self.qos,
                    &self.topic,
                    id,
                    &mut self.scratch,
                    self.gen.id,
                    seq0 + i,
                    now_ns,
                );
                written += 1;
            }
            self.gen.record_sent(written, now_ns);
            if written < n {
                return Wake::default();
            }
        }
    }

    fn flushed(&mut self, now_ns: u64) {
        self.gen.flushed(now_ns);
    }

    fn stop(&mut self, _out: &mut BytesMut) {
        self.gen.done_at.get_or_insert(0);
        self.gave_up = true;
    }

    fn finished(&self) -> bool {
        self.gen.done_at.is_some() && (self.ids.in_use() == 0 || self.gave_up)
    }

    fn goodbye(&mut self, out: &mut BytesMut) {
        out.extend_from_slice(&[0xE0, 0x00]);
    }
}

/// A subscriber connection's session.
struct Subscriber {
    shared: Arc<Shared>,
    rec: Recorder,
    v5: bool,
    /// QoS 2 packet identifiers received and not yet released.
    pending: IdSet,
    stopped: bool,
}

impl Session for Subscriber {
    fn on_input(
        &mut self,
        input: &mut BytesMut,
        out: &mut BytesMut,
        now_ns: u64,
    ) -> anyhow::Result<()> {
        let before = self.rec.received;
        let (rec, pending, v5) = (&mut self.rec, &mut self.pending, self.v5);
        let used = scan_packets(input, |first, body| {
            match first >> 4 {
                3 => {
                    let (qos, id, payload) = publish_parts(first, body, v5)?;
                    let stamp = payload::parse(payload);
                    match qos {
                        0 => rec.record(stamp, now_ns),
                        1 => {
                            rec.record(stamp, now_ns);
                            ack(out, 0x40, id);
                        }
                        _ => {
                            // Exactly once: a resend before PUBREL is the
                            // same message.
                            if pending.insert(id) {
                                rec.record(stamp, now_ns);
                            }
                            ack(out, 0x50, id);
                        }
                    }
                }
                6 => {
                    let id = packet_id(body)?;
                    pending.remove(id);
                    ack(out, 0x70, id);
                }
                14 => return Err(disconnect_error(body)),
                _ => {}
            }
            Ok(())
        })?;
        input.advance(used);
        let got = self.rec.received - before;
        self.shared.report_deliveries(&mut self.rec, got);
        Ok(())
    }

    fn stop(&mut self, _out: &mut BytesMut) {
        self.stopped = true;
    }

    fn finished(&self) -> bool {
        self.stopped
    }

    fn goodbye(&mut self, out: &mut BytesMut) {
        out.extend_from_slice(&[0xE0, 0x00]);
    }
}

/// Runs `liebre bench mqtt` and returns its report.
pub async fn run_mqtt(args: &MqttArgs) -> anyhow::Result<Report> {
    args.load.validate()?;
    anyhow::ensure!(args.topics > 0, "--topics must be positive");
    anyhow::ensure!(
        args.publishers < payload::MAX_PRODUCERS,
        "too many publishers"
    );
    anyhow::ensure!(
        args.publishers + args.subscribers > 0,
        "nothing to do: no publishers and no subscribers"
    );
    let qos = QoS::from_u8(args.qos).context("--qos must be 0, 1 or 2")?;
    let protocol = if args.v5 {
        Protocol::V5
    } else {
        Protocol::V311
    };
    let opts = MqttOpts {
        addr: if args.host.contains(':') {
            format!("[{}]:{}", args.host, args.port)
        } else {
            format!("{}:{}", args.host, args.port)
        },
        protocol,
        keep_alive: args.keep_alive,
        username: args.username.clone(),
        password: args.password.clone(),
    };
    let pid = std::process::id();
    let prefix = args
        .topic_prefix
        .clone()
        .unwrap_or_else(|| format!("liebre-bench/{pid}"));
    let topic = |i: u32| format!("{prefix}/{}", i % args.topics);
    let clean = !args.persistent;
    let cpu_start = crate::procfs::cpu_seconds("self");
    let plan = Plan::round_robin(args.publishers, args.subscribers, args.topics, false);
    let mut client_ids = Vec::new();

    let mut consumers: Vec<run::ConsumerStart> = Vec::new();
    for s in 0..args.subscribers {
        let id = format!("lb-{pid}-s{s}");
        let mut conn = MqttConn::open(&opts, &id, clean)
            .await
            .with_context(|| format!("subscriber {s}"))?;
        conn.subscribe(protocol, &topic(s), qos)
            .await
            .with_context(|| format!("subscriber {s}"))?;
        client_ids.push(id);
        let v5 = args.v5;
        consumers.push(Box::new(move |shared: Arc<Shared>, rec: Recorder| {
            Box::pin(async move {
                let MqttConn { stream, input, .. } = conn;
                let stop = shared.stop.clone();
                let clock = shared.clock;
                let mut s = Subscriber {
                    shared,
                    rec,
                    v5,
                    pending: IdSet::default(),
                    stopped: false,
                };
                let r = run::drive(stream, input, &mut s, clock, stop, None).await;
                (s.rec, r)
            })
        }));
    }

    let mut producers: Vec<run::ProducerStart> = Vec::new();
    for p in 0..args.publishers {
        let id = format!("lb-{pid}-p{p}");
        let conn = MqttConn::open(&opts, &id, clean)
            .await
            .with_context(|| format!("publisher {p}"))?;
        client_ids.push(id);
        let topic = topic(p);
        let size = args.load.size.max(STAMP_LEN);
        let inflight = args.inflight.or((!args.v5).then_some(V3_INFLIGHT));
        producers.push(Box::new(move |gen: Generator| {
            Box::pin(async move {
                let MqttConn {
                    stream,
                    input,
                    receive_max,
                } = conn;
                let shared = gen.shared().clone();
                let limit = shared
                    .window
                    .min(u64::from(inflight.unwrap_or(receive_max)))
                    .max(1);
                let mut s = Publisher {
                    gen,
                    protocol,
                    topic,
                    qos,
                    scratch: vec![0; size],
                    ids: IdPool::default(),
                    limit,
                    gave_up: false,
                };
                let notify = &shared.producers[s.gen.id as usize].notify;
                let r = run::drive(
                    stream,
                    input,
                    &mut s,
                    shared.clock,
                    shared.abort.clone(),
                    Some(notify),
                )
                .await;
                (s.gen.stats, r)
            })
        }));
    }

    let outcome = run::execute(&args.load, &plan, consumers, producers, cpu_start).await;
    let mut errors = Vec::new();
    if args.persistent && !args.keep_sessions {
        // Reconnect each client with a clean session to remove it.
        for id in &client_ids {
            match MqttConn::open(&opts, id, true).await {
                Ok(c) => c.disconnect().await,
                Err(e) => errors.push(format!("removing session {id}: {e:#}")),
            }
        }
    }
    let settings = serde_json::json!({
        "broker": opts.addr,
        "protocol": if args.v5 { "5.0" } else { "3.1.1" },
        "qos": args.qos,
        "topics": args.topics,
        "session": if clean { "clean" } else { "persistent" },
        "inflight": args.inflight.or((!args.v5).then_some(V3_INFLIGHT)).map_or("receive maximum".to_string(), |n| n.to_string()),
    });
    let mut report = report::build(
        "mqtt",
        &args.load,
        args.publishers,
        args.subscribers,
        settings,
        &plan,
        outcome,
        qos != QoS::AtMostOnce,
    );
    report.errors.extend(errors);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_pool_cycles_and_waits() {
        let mut p = IdPool::default();
        assert_eq!(p.alloc(), Some(1));
        assert_eq!(p.alloc(), Some(2));
        assert!(p.free(1));
        assert!(!p.free(1));
        assert_eq!(p.in_use(), 1);
        p.next = u16::MAX;
        assert_eq!(p.alloc(), Some(u16::MAX));
        assert_eq!(p.alloc(), Some(1), "wraps past 65535 to 1, never 0");
        assert_eq!(p.alloc(), None, "2 is still in flight");
        assert!(p.free(2));
        assert_eq!(p.alloc(), Some(2));
    }

    #[test]
    fn scans_packets_the_codec_writes() {
        let mut wire = BytesMut::new();
        let mut body = vec![0u8; 300];
        payload::stamp(&mut body, 2, 9, 77);
        write_publish(
            &mut wire,
            Protocol::V5,
            false,
            QoS::ExactlyOnce,
            false,
            "a/b",
            513,
            None,
            &body,
        )
        .unwrap();
        let mut seen = Vec::new();
        let used = scan_packets(&wire, |first, body| {
            seen.push((first, body.len()));
            Ok(())
        })
        .unwrap();
        assert_eq!(used, wire.len());
        assert_eq!(seen, vec![(0x34, 2 + 3 + 2 + 1 + 300)]);
        // Incomplete packets wait for more input.
        assert_eq!(
            scan_packets(&wire[..wire.len() - 1], |_, _| Ok(())).unwrap(),
            0
        );
        assert_eq!(scan_packets(&wire[..1], |_, _| Ok(())).unwrap(), 0);
        assert!(varint(&[0xFF, 0xFF, 0xFF, 0xFF, 0x01]).is_err());
        assert_eq!(varint(&[0x80, 0x01]).unwrap(), Some((128, 2)));
    }

    #[test]
    fn subscriber_counts_qos2_once_and_answers() {
        let shared = test_shared(1);
        let mut s = Subscriber {
            shared: shared.clone(),
            rec: Recorder::new(0, 1),
            v5: true,
            pending: IdSet::default(),
            stopped: false,
        };
        let mut body = vec![0u8; 16];
        payload::stamp(&mut body, 0, 0, 0);
        let mut input = BytesMut::new();
        for dup in [false, true] {
            write_publish(
                &mut input,
                Protocol::V5,
                dup,
                QoS::ExactlyOnce,
                false,
                "t",
                7,
                None,
                &body,
            )
            .unwrap();
        }
        input.extend_from_slice(&[0x62, 2, 0, 7]); // PUBREL 7
        let mut out = BytesMut::new();
        s.on_input(&mut input, &mut out, 1000).unwrap();
        assert!(input.is_empty());
        assert_eq!(
            s.rec.received, 1,
            "the resend before PUBREL is not a new message"
        );
        assert!(!s.pending.contains(7), "released by PUBREL");
        assert_eq!(&out[..], &[0x50, 2, 0, 7, 0x50, 2, 0, 7, 0x70, 2, 0, 7]);
        assert_eq!(
            shared.consumed.load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    }

    fn test_shared(producers: usize) -> Arc<Shared> {
        use std::sync::atomic::{AtomicBool, AtomicU64};
        Arc::new(Shared {
            clock: payload::Clock::start(),
            published: AtomicU64::new(0),
            confirmed: AtomicU64::new(0),
            nacked: AtomicU64::new(0),
            consumed: AtomicU64::new(0),
            producers: (0..producers)
                .map(|_| run::ProducerSlot::default())
                .collect(),
            stop: tokio_util::sync::CancellationToken::new(),
            abort: tokio_util::sync::CancellationToken::new(),
            window: 100,
            drain_ns: 0,
            blocked: AtomicBool::new(false),
        })
    }
}
