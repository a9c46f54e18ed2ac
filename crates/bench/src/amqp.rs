//! A minimal AMQP 0-9-1 client on `liebre-amqp-codec`, and the AMQP
//! benchmark.
//!
//! The handshake and setup use the codec's [`Method`] values. The message
//! path does not: a producer writes the `basic.publish` method frame and
//! content header it encoded once, then the stamped body frame, straight
//! into one output buffer per batch; a consumer scans the read buffer in
//! place for `basic.deliver`, content header and body frames (and
//! `basic.ack`/`basic.nack` confirms on the producer side) and hands only
//! other frames to [`decode_frame`].

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use liebre_amqp_codec::{
    decode_frame, encode_method_frame, hot, BasicConsume, BasicProperties, BasicPublish, BasicQos,
    ConfirmSelect, ConnectionClose, ConnectionOpen, ConnectionStartOk, ConnectionTuneOk,
    ContentHeader, ExchangeDeclare, FieldTable, FieldValue, Frame, Method, QueueBind, QueueDeclare,
    QueueDelete, QueuePurge, ShortStr, FRAME_BODY, FRAME_END, PROTOCOL_HEADER,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::cli::AmqpArgs;
use crate::payload::{self, Stamp, STAMP_LEN};
use crate::report::{self, Report};
use crate::run::{self, Generator, Plan, Session, Shared, Wake, HIGH_WATER};
use crate::stats::Recorder;

/// The channel every benchmark connection uses.
const CH: u16 = 1;
/// Largest frame the client proposes.
pub(crate) const CLIENT_FRAME_MAX: u32 = 131_072;
/// Most messages one `produce` call writes.
pub(crate) const BATCH: u64 = 4096;

/// The parts of an `amqp://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmqpUrl {
    /// User name.
    pub user: String,
    /// Password.
    pub pass: String,
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Virtual host.
    pub vhost: String,
}

impl AmqpUrl {
    /// Parses `amqp://user:pass@host:port/vhost`; every part may be left
    /// out (guest, guest, localhost, 5672, "/"). The vhost is
    /// percent-decoded (`%2F` is "/").
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let rest = match url.split_once("://") {
            Some(("amqp", rest)) => rest,
            Some((scheme, _)) => bail!("unsupported URL scheme {scheme:?} (only amqp://)"),
            None => url,
        };
        let (authority, path) = match rest.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (rest, None),
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (user, pass) = match userinfo {
            Some(u) => match u.split_once(':') {
                Some((u, p)) => (percent_decode(u)?, percent_decode(p)?),
                None => (percent_decode(u)?, String::new()),
            },
            None => ("guest".into(), "guest".into()),
        };
        let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
            // [ipv6]:port
            let (h, rest) = h.split_once(']').context("unterminated [ in URL host")?;
            let port = match rest.strip_prefix(':') {
                Some(p) => p.parse().context("bad port in URL")?,
                None => 5672,
            };
            (h.to_string(), port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.parse().context("bad port in URL")?),
                None => (hostport.to_string(), 5672),
            }
        };
        let host = if host.is_empty() {
            "localhost".into()
        } else {
            host
        };
        let vhost = match path {
            None | Some("") => "/".to_string(),
            Some(p) => percent_decode(p)?,
        };
        Ok(Self {
            user,
            pass,
            host,
            port,
            vhost,
        })
    }

    /// `host:port` to connect to.
    pub fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

fn percent_decode(s: &str) -> anyhow::Result<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3).context("truncated %-escape in URL")?;
            out.push(u8::from_str_radix(hex, 16).context("bad %-escape in URL")?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).context("URL part is not UTF-8")
}

/// An open AMQP connection with channel 1 open, for the setup steps.
pub(crate) struct AmqpIo {
    pub(crate) stream: TcpStream,
    pub(crate) input: BytesMut,
    pub(crate) frame_max: u32,
    out: BytesMut,
}

fn short(s: &str) -> ShortStr {
    ShortStr::from(s)
}

const STEP: Duration = Duration::from_secs(15);

impl AmqpIo {
    /// Connects, authenticates with PLAIN, opens the vhost and channel 1.
    pub(crate) async fn open(url: &AmqpUrl, name: &str) -> anyhow::Result<Self> {
        let stream = run::connect(&url.addr()).await?;
        Self::handshake(stream, url, name).await
    }

    /// The handshake over an already connected stream.
    pub(crate) async fn handshake(
        stream: TcpStream,
        url: &AmqpUrl,
        name: &str,
    ) -> anyhow::Result<Self> {
        let mut io = Self {
            stream,
            input: BytesMut::with_capacity(8192),
            frame_max: CLIENT_FRAME_MAX,
            out: BytesMut::new(),
        };
        io.stream.write_all(PROTOCOL_HEADER).await?;
        let start = io
            .expect(0, |m| matches!(m, Method::ConnectionStart(_)))
            .await?;
        if let Method::ConnectionStart(s) = &start {
            let mechs = String::from_utf8_lossy(&s.mechanisms);
            if !mechs.split_whitespace().any(|m| m == "PLAIN") {
                bail!("the broker does not offer PLAIN authentication (offers {mechs})");
            }
        }
        let mut caps = FieldTable::new();
        for cap in [
            "publisher_confirms",
            "basic.nack",
            "consumer_cancel_notify",
            "connection.blocked",
            "authentication_failure_close",
        ] {
            caps.insert(cap, FieldValue::Bool(true));
        }
        let mut props = FieldTable::new();
        props.insert(
            "product",
            FieldValue::LongString(Bytes::from_static(b"liebre bench")),
        );
        props.insert(
            "version",
            FieldValue::LongString(Bytes::from_static(env!("CARGO_PKG_VERSION").as_bytes())),
        );
        props.insert(
            "connection_name",
            FieldValue::LongString(Bytes::from(name.to_string())),
        );
        props.insert("capabilities", FieldValue::Table(caps));
        let response = format!("\0{}\0{}", url.user, url.pass);
        io.send(Method::ConnectionStartOk(ConnectionStartOk {
            client_properties: props,
            mechanism: short("PLAIN"),
            response: Bytes::from(response),
            locale: short("en_US"),
        }))
        .await?;
        let tune = io
            .expect(0, |m| {
                matches!(m, Method::ConnectionTune(_) | Method::ConnectionSecure(_))
            })
            .await
            .with_context(|| {
                format!("authenticating as {:?} (wrong user or password?)", url.user)
            })?;
        let Method::ConnectionTune(tune) = tune else {
            bail!("the broker asked for a SASL challenge round; only PLAIN is supported");
        };
        let frame_max = match tune.frame_max {
            0 => CLIENT_FRAME_MAX,
            n => n.min(CLIENT_FRAME_MAX),
        };
        let channel_max = match tune.channel_max {
            0 => 2047,
            n => n.min(2047),
        };
        io.frame_max = frame_max;
        io.send(Method::ConnectionTuneOk(ConnectionTuneOk {
            channel_max,
            frame_max,
            heartbeat: 0,
        }))
        .await?;
        io.send(Method::ConnectionOpen(ConnectionOpen {
            virtual_host: short(&url.vhost),
        }))
        .await?;
        io.expect(0, |m| matches!(m, Method::ConnectionOpenOk))
            .await
            .with_context(|| format!("opening vhost {:?} as {:?}", url.vhost, url.user))?;
        io.send_on(CH, Method::ChannelOpen).await?;
        io.expect(CH, |m| matches!(m, Method::ChannelOpenOk))
            .await?;
        Ok(io)
    }

    pub(crate) async fn send(&mut self, m: Method) -> anyhow::Result<()> {
        self.send_on(0, m).await
    }

    pub(crate) async fn send_on(&mut self, channel: u16, m: Method) -> anyhow::Result<()> {
        self.out.clear();
        encode_method_frame(&mut self.out, channel, &m)?;
        self.stream.write_all(&self.out).await?;
        Ok(())
    }

    /// Reads frames until a method on `channel` that `want` accepts;
    /// fails on connection.close or channel.close.
    pub(crate) async fn expect(
        &mut self,
        channel: u16,
        want: impl Fn(&Method) -> bool,
    ) -> anyhow::Result<Method> {
        tokio::time::timeout(STEP, async {
            loop {
                while let Some(frame) = decode_frame(&mut self.input, 0)? {
                    if let Frame::Method {
                        channel: ch,
                        method,
                    } = frame
                    {
                        match method {
                            Method::ConnectionClose(c) => bail!(
                                "the broker closed the connection: {} {}",
                                c.reply_code,
                                c.reply_text
                            ),
                            Method::ChannelClose(c) => bail!(
                                "the broker closed the channel: {} {}",
                                c.reply_code,
                                c.reply_text
                            ),
                            m if ch == channel && want(&m) => return Ok(m),
                            _ => {}
                        }
                    }
                }
                if self.stream.read_buf(&mut self.input).await? == 0 {
                    bail!("the broker closed the connection during the handshake");
                }
            }
        })
        .await
        .context("no answer from the broker within 15 s")?
    }

    /// A synchronous method on channel 1: send, await the `-ok`.
    pub(crate) async fn call(
        &mut self,
        m: Method,
        ok: impl Fn(&Method) -> bool,
    ) -> anyhow::Result<Method> {
        self.send_on(CH, m).await?;
        self.expect(CH, ok).await
    }

    /// connection.close, awaiting close-ok briefly.
    pub(crate) async fn close(self) {
        let _ = self.try_close(Duration::from_secs(2)).await;
    }

    /// connection.close, then close-ok within `limit`, else an error. The
    /// socket is dropped after close-ok: in AMQP the peer that receives
    /// close-ok closes the socket.
    pub(crate) async fn try_close(mut self, limit: Duration) -> anyhow::Result<()> {
        tokio::time::timeout(limit, async {
            self.send(Method::ConnectionClose(ConnectionClose {
                reply_code: 200,
                reply_text: short("bye"),
                class_id: 0,
                method_id: 0,
            }))
            .await?;
            self.expect(0, |m| matches!(m, Method::ConnectionCloseOk))
                .await
                .map(drop)
        })
        .await
        .with_context(|| format!("no connection.close-ok within {limit:?}"))?
    }
}

/// The body size a content header frame's payload announces (after class
/// and weight).
pub(crate) fn content_body_size(header: &[u8]) -> anyhow::Result<u64> {
    header
        .get(4..12)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .context("short content header")
}

/// Calls `f(kind, channel, payload)` for every complete frame at the front
/// of `input`; returns the bytes they took.
pub(crate) fn scan_frames(
    input: &[u8],
    mut f: impl FnMut(u8, u16, &[u8]) -> anyhow::Result<()>,
) -> anyhow::Result<usize> {
    let mut pos = 0;
    while let Some(&[kind, c0, c1, s0, s1, s2, s3]) = input.get(pos..pos + 7) {
        let size = u32::from_be_bytes([s0, s1, s2, s3]) as usize;
        let end = pos + 7 + size;
        match input.get(end) {
            None => break,
            Some(&FRAME_END) => {}
            Some(_) => bail!("bad frame end from the broker"),
        }
        f(kind, u16::from_be_bytes([c0, c1]), &input[pos + 7..end])?;
        pos = end + 1;
    }
    Ok(pos)
}

/// Decodes a frame the fast path does not handle.
fn slow_method(kind: u8, channel: u16, payload: &[u8]) -> anyhow::Result<Option<Method>> {
    let mut buf = BytesMut::with_capacity(payload.len() + 8);
    buf.put_u8(kind);
    buf.put_u16(channel);
    buf.put_u32(payload.len() as u32);
    buf.extend_from_slice(payload);
    buf.put_u8(FRAME_END);
    match decode_frame(&mut buf, 0)? {
        Some(Frame::Method { method, .. }) => Ok(Some(method)),
        _ => Ok(None),
    }
}

/// What a connection does with a method outside the message path.
enum Control {
    Ignore,
    CloseOk,
}

fn control(method: Method, shared: &Shared) -> anyhow::Result<Control> {
    match method {
        Method::ConnectionClose(c) => bail!(
            "the broker closed the connection: {} {}",
            c.reply_code,
            c.reply_text
        ),
        Method::ChannelClose(c) => bail!(
            "the broker closed the channel: {} {}",
            c.reply_code,
            c.reply_text
        ),
        Method::BasicCancel(_) => bail!("the broker cancelled the consumer"),
        Method::ConnectionCloseOk => Ok(Control::CloseOk),
        Method::ConnectionBlocked(_) => {
            shared
                .blocked
                .store(true, std::sync::atomic::Ordering::Relaxed);
            Ok(Control::Ignore)
        }
        _ => Ok(Control::Ignore),
    }
}

fn close_frame(out: &mut BytesMut) {
    let _ = encode_method_frame(
        out,
        0,
        &Method::ConnectionClose(ConnectionClose {
            reply_code: 200,
            reply_text: short("bye"),
            class_id: 0,
            method_id: 0,
        }),
    );
}

/// The bytes before every body: the `basic.publish` method frame and the
/// content header, encoded once.
pub(crate) fn publish_prefix(
    exchange: &str,
    routing_key: &str,
    size: usize,
    persistent: bool,
) -> anyhow::Result<Vec<u8>> {
    let mut out = BytesMut::new();
    encode_method_frame(
        &mut out,
        CH,
        &Method::BasicPublish(BasicPublish {
            exchange: short(exchange),
            routing_key: short(routing_key),
            mandatory: false,
            immediate: false,
        }),
    )?;
    let props = BasicProperties {
        delivery_mode: Some(if persistent { 2 } else { 1 }),
        ..BasicProperties::default()
    };
    Frame::Header {
        channel: CH,
        header: ContentHeader::new(60, size as u64, props)?,
    }
    .encode(&mut out)?;
    Ok(out.to_vec())
}

/// Appends one message: `prefix`, then the body (stamp + padding) in body
/// frames of at most `frame_max - 8` bytes.
pub(crate) fn put_message(
    out: &mut BytesMut,
    prefix: &[u8],
    size: usize,
    frame_max: u32,
    producer: u32,
    seq: u64,
    sent_ns: u64,
) {
    out.extend_from_slice(prefix);
    let chunk = frame_max as usize - 8;
    let mut left = size;
    let mut first = true;
    while left > 0 {
        let part = left.min(chunk);
        out.put_u8(FRAME_BODY);
        out.put_u16(CH);
        out.put_u32(part as u32);
        if first {
            let mut head = [0u8; STAMP_LEN];
            payload::stamp(&mut head, producer, seq, sent_ns);
            out.extend_from_slice(&head);
            payload::put_zeros(out, part - STAMP_LEN);
            first = false;
        } else {
            payload::put_zeros(out, part);
        }
        out.put_u8(FRAME_END);
        left -= part;
    }
}

/// Publisher confirm bookkeeping: tags settled so far, allowing acks out
/// of order and `multiple`.
#[derive(Debug, Default)]
pub(crate) struct Confirms {
    /// Every tag up to this one is settled.
    upto: u64,
    /// Settled tags above `upto`.
    singles: BTreeSet<u64>,
}

impl Confirms {
    /// Settles `tag` (and with `multiple` every earlier tag); returns how
    /// many tags this settled newly.
    pub(crate) fn settle(&mut self, tag: u64, multiple: bool) -> u64 {
        if tag <= self.upto {
            return 0;
        }
        if multiple {
            let above: u64 = self.singles.range(..=tag).count() as u64;
            let newly = tag - self.upto - above;
            self.singles = self.singles.split_off(&(tag + 1));
            self.upto = tag;
            self.advance();
            newly
        } else if self.singles.insert(tag) {
            self.advance();
            1
        } else {
            0
        }
    }

    fn advance(&mut self) {
        while self.singles.remove(&(self.upto + 1)) {
            self.upto += 1;
        }
    }

    /// Tags settled.
    pub(crate) fn settled(&self) -> u64 {
        self.upto + self.singles.len() as u64
    }
}

/// A producer connection's session.
struct Producer {
    gen: Generator,
    prefix: Vec<u8>,
    size: usize,
    frame_max: u32,
    confirm: bool,
    confirms: Confirms,
    gave_up: bool,
    closed: bool,
}

impl Producer {
    fn unsettled(&self) -> u64 {
        self.gen.sent() - self.confirms.settled()
    }
}

impl Session for Producer {
    fn on_input(
        &mut self,
        input: &mut BytesMut,
        _out: &mut BytesMut,
        now_ns: u64,
    ) -> anyhow::Result<()> {
        let (mut acked, mut nacked) = (0u64, 0u64);
        let shared = self.gen.shared().clone();
        let confirms = &mut self.confirms;
        let mut closed = false;
        let used = scan_frames(input, |kind, channel, p| {
            // basic.ack / basic.nack: class 60, method 80 / 120, tag, bits.
            if kind == 1
                && p.len() == 13
                && p[0..2] == [0, 60]
                && (p[3] == 80 || p[3] == 120)
                && p[2] == 0
            {
                let tag = u64::from_be_bytes(p[4..12].try_into().unwrap_or_default());
                let n = confirms.settle(tag, p[12] & 1 != 0);
                if p[3] == 80 {
                    acked += n;
                } else {
                    nacked += n;
                }
                return Ok(());
            }
            if kind == 1 {
                if let Some(m) = slow_method(kind, channel, p)? {
                    if let Control::CloseOk = control(m, &shared)? {
                        closed = true;
                    }
                }
            }
            Ok(())
        })?;
        input.advance(used);
        self.closed |= closed;
        self.gen.record_confirms(acked, nacked, now_ns);
        Ok(())
    }

    fn produce(&mut self, out: &mut BytesMut, now_ns: u64) -> Wake {
        loop {
            if out.len() >= HIGH_WATER {
                return Wake::default();
            }
            let room = if self.confirm {
                self.gen.shared().window.saturating_sub(self.unsettled())
            } else {
                u64::MAX
            };
            let (n, wake) = self.gen.allowance(now_ns, room, BATCH);
            if n == 0 {
                if self.gen.done_at.is_some() && self.confirm && self.unsettled() > 0 {
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
            for i in 0..n {
                put_message(
                    out,
                    &self.prefix,
                    self.size,
                    self.frame_max,
                    self.gen.id,
                    seq0 + i,
                    now_ns,
                );
            }
            self.gen.record_sent(n, now_ns);
        }
    }

    fn flushed(&mut self, now_ns: u64) {
        self.gen.flushed(now_ns);
    }

    fn stop(&mut self, _out: &mut BytesMut) {
        // Aborted: stop sending and stop waiting for confirms.
        self.gen.done_at.get_or_insert(0);
        self.gave_up = true;
    }

    fn finished(&self) -> bool {
        self.gen.done_at.is_some() && (!self.confirm || self.unsettled() == 0 || self.gave_up)
    }

    fn goodbye(&mut self, out: &mut BytesMut) {
        close_frame(out);
    }

    fn closed(&self) -> bool {
        self.closed
    }
}

/// Where a consumer is within a delivery.
#[derive(Debug, Default)]
struct Delivery {
    tag: u64,
    remaining: u64,
    stamp: [u8; STAMP_LEN],
    have: usize,
    in_body: bool,
}

/// A consumer connection's session.
struct Consumer {
    shared: Arc<Shared>,
    rec: Recorder,
    cur: Delivery,
    auto_ack: bool,
    ack_every: u64,
    unacked: u64,
    last_tag: u64,
    stopped: bool,
    closed: bool,
}

impl Consumer {
    fn complete(&mut self, out: &mut BytesMut, now_ns: u64) {
        let stamp: Option<Stamp> = if self.cur.have == STAMP_LEN {
            payload::parse(&self.cur.stamp)
        } else {
            None
        };
        self.rec.record(stamp, now_ns);
        self.cur.in_body = false;
        if !self.auto_ack {
            self.unacked += 1;
            self.last_tag = self.cur.tag;
            if self.unacked >= self.ack_every {
                hot::write_basic_ack(out, CH, self.last_tag, true);
                self.unacked = 0;
            }
        }
    }
}

/// The delivery tag of a `basic.deliver` payload (class and method ids
/// included), or `None` when it is not one.
fn deliver_tag(p: &[u8]) -> Option<u64> {
    if p.get(0..4)? != [0, 60, 0, 60] {
        return None;
    }
    let tag_len = *p.get(4)? as usize;
    let at = 5 + tag_len;
    Some(u64::from_be_bytes(p.get(at..at + 8)?.try_into().ok()?))
}

impl Session for Consumer {
    fn on_input(
        &mut self,
        input: &mut BytesMut,
        out: &mut BytesMut,
        now_ns: u64,
    ) -> anyhow::Result<()> {
        let before = self.rec.received;
        let mut pos = 0;
        let data: &[u8] = input;
        while let Some(&[kind, c0, c1, s0, s1, s2, s3]) = data.get(pos..pos + 7) {
            let size = u32::from_be_bytes([s0, s1, s2, s3]) as usize;
            let end = pos + 7 + size;
            match data.get(end) {
                None => break,
                Some(&FRAME_END) => {}
                Some(_) => bail!("bad frame end from the broker"),
            }
            let p = &data[pos + 7..end];
            pos = end + 1;
            match kind {
                1 => {
                    if let Some(tag) = deliver_tag(p) {
                        self.cur.tag = tag;
                        self.cur.have = 0;
                        self.cur.in_body = false;
                    } else if let Some(m) = slow_method(kind, u16::from_be_bytes([c0, c1]), p)? {
                        if let Control::CloseOk = control(m, &self.shared)? {
                            self.closed = true;
                        }
                    }
                }
                2 => {
                    let size = content_body_size(p)?;
                    self.cur.remaining = size;
                    self.cur.in_body = true;
                    if size == 0 {
                        self.complete(out, now_ns);
                    }
                }
                3 if self.cur.in_body => {
                    let take = (STAMP_LEN - self.cur.have).min(p.len());
                    self.cur.stamp[self.cur.have..self.cur.have + take].copy_from_slice(&p[..take]);
                    self.cur.have += take;
                    self.cur.remaining = self.cur.remaining.saturating_sub(p.len() as u64);
                    if self.cur.remaining == 0 {
                        self.complete(out, now_ns);
                    }
                }
                _ => {}
            }
        }
        input.advance(pos);
        let got = self.rec.received - before;
        self.shared.report_deliveries(&mut self.rec, got);
        Ok(())
    }

    fn stop(&mut self, out: &mut BytesMut) {
        if self.unacked > 0 {
            hot::write_basic_ack(out, CH, self.last_tag, true);
            self.unacked = 0;
        }
        self.stopped = true;
    }

    fn finished(&self) -> bool {
        self.stopped
    }

    fn goodbye(&mut self, out: &mut BytesMut) {
        close_frame(out);
    }

    fn closed(&self) -> bool {
        self.closed
    }
}

fn queue_name(prefix: &str, i: u32) -> String {
    format!("{prefix}-{i}")
}

async fn declare(args: &AmqpArgs, url: &AmqpUrl, prefix: &str) -> anyhow::Result<()> {
    let mut io = AmqpIo::open(url, "liebre bench setup")
        .await
        .context("setup connection")?;
    if !args.exchange.is_empty() {
        io.call(
            Method::ExchangeDeclare(ExchangeDeclare {
                exchange: short(&args.exchange),
                kind: short("direct"),
                passive: false,
                durable: args.persistent,
                auto_delete: false,
                internal: false,
                nowait: false,
                arguments: FieldTable::new(),
            }),
            |m| matches!(m, Method::ExchangeDeclareOk),
        )
        .await
        .with_context(|| format!("declaring exchange {:?}", args.exchange))?;
    }
    for q in 0..args.queues.max(1) {
        let name = queue_name(prefix, q);
        io.call(
            Method::QueueDeclare(QueueDeclare {
                queue: short(&name),
                passive: false,
                durable: args.persistent,
                exclusive: false,
                auto_delete: false,
                nowait: false,
                arguments: FieldTable::new(),
            }),
            |m| matches!(m, Method::QueueDeclareOk(_)),
        )
        .await
        .with_context(|| format!("declaring queue {name:?}"))?;
        // A run with producers starts from empty queues; one without
        // drains what an earlier run (with --keep-queues) left.
        if args.producers > 0 {
            io.call(
                Method::QueuePurge(QueuePurge {
                    queue: short(&name),
                    nowait: false,
                }),
                |m| matches!(m, Method::QueuePurgeOk(_)),
            )
            .await?;
        }
        if !args.exchange.is_empty() {
            io.call(
                Method::QueueBind(QueueBind {
                    queue: short(&name),
                    exchange: short(&args.exchange),
                    routing_key: short(&name),
                    nowait: false,
                    arguments: FieldTable::new(),
                }),
                |m| matches!(m, Method::QueueBindOk),
            )
            .await?;
        }
    }
    io.close().await;
    Ok(())
}

async fn teardown(args: &AmqpArgs, url: &AmqpUrl, prefix: &str) -> anyhow::Result<()> {
    let mut io = AmqpIo::open(url, "liebre bench teardown").await?;
    for q in 0..args.queues.max(1) {
        io.call(
            Method::QueueDelete(QueueDelete {
                queue: short(&queue_name(prefix, q)),
                if_unused: false,
                if_empty: false,
                nowait: false,
            }),
            |m| matches!(m, Method::QueueDeleteOk(_)),
        )
        .await?;
    }
    io.close().await;
    Ok(())
}

/// Runs `liebre bench amqp` and returns its report.
pub async fn run_amqp(args: &AmqpArgs) -> anyhow::Result<Report> {
    args.load.validate()?;
    anyhow::ensure!(args.queues > 0, "--queues must be positive");
    anyhow::ensure!(
        args.producers < payload::MAX_PRODUCERS,
        "too many producers"
    );
    anyhow::ensure!(
        args.producers + args.consumers > 0,
        "nothing to do: no producers and no consumers"
    );
    let url = AmqpUrl::parse(&args.url)?;
    let prefix = args
        .queue_prefix
        .clone()
        .unwrap_or_else(|| format!("liebre-bench-{}", std::process::id()));
    let cpu_start = crate::procfs::cpu_seconds("self");
    declare(args, &url, &prefix).await?;

    let plan = Plan::round_robin(args.producers, args.consumers, args.queues, true);
    let ack_every = if args.multi_ack == 0 {
        u64::MAX
    } else {
        // Never wait for more deliveries than the prefetch allows.
        let cap = match args.prefetch {
            0 => u64::MAX,
            p => (u64::from(p) / 2).max(1),
        };
        u64::from(args.multi_ack).min(cap)
    };

    let mut consumers: Vec<run::ConsumerStart> = Vec::new();
    for c in 0..args.consumers {
        let queue = queue_name(&prefix, c % args.queues);
        let mut io = AmqpIo::open(&url, &format!("liebre bench consumer {c}"))
            .await
            .with_context(|| format!("consumer {c}"))?;
        io.call(
            Method::BasicQos(BasicQos {
                prefetch_size: 0,
                prefetch_count: args.prefetch,
                global: false,
            }),
            |m| matches!(m, Method::BasicQosOk),
        )
        .await?;
        io.call(
            Method::BasicConsume(BasicConsume {
                queue: short(&queue),
                consumer_tag: short(&format!("bench-{c}")),
                no_local: false,
                no_ack: args.multi_ack == 0,
                exclusive: false,
                nowait: false,
                arguments: FieldTable::new(),
            }),
            |m| matches!(m, Method::BasicConsumeOk(_)),
        )
        .await
        .with_context(|| format!("consuming from {queue:?}"))?;
        let auto_ack = args.multi_ack == 0;
        consumers.push(Box::new(move |shared: Arc<Shared>, rec: Recorder| {
            Box::pin(async move {
                let AmqpIo { stream, input, .. } = io;
                let stop = shared.stop.clone();
                let clock = shared.clock;
                let mut s = Consumer {
                    shared,
                    rec,
                    cur: Delivery::default(),
                    auto_ack,
                    ack_every,
                    unacked: 0,
                    last_tag: 0,
                    stopped: false,
                    closed: false,
                };
                let r = run::drive(stream, input, &mut s, clock, stop, None).await;
                (s.rec, r)
            })
        }));
    }

    let mut producers: Vec<run::ProducerStart> = Vec::new();
    for p in 0..args.producers {
        let queue = queue_name(&prefix, p % args.queues);
        let mut io = AmqpIo::open(&url, &format!("liebre bench producer {p}"))
            .await
            .with_context(|| format!("producer {p}"))?;
        if args.confirm {
            io.call(
                Method::ConfirmSelect(ConfirmSelect { nowait: false }),
                |m| matches!(m, Method::ConfirmSelectOk),
            )
            .await
            .context("confirm.select")?;
        }
        let prefix = publish_prefix(&args.exchange, &queue, args.load.size, args.persistent)?;
        let (size, confirm) = (args.load.size, args.confirm);
        producers.push(Box::new(move |gen: Generator| {
            Box::pin(async move {
                let AmqpIo {
                    stream,
                    input,
                    frame_max,
                    ..
                } = io;
                let shared = gen.shared().clone();
                let mut s = Producer {
                    gen,
                    prefix,
                    size,
                    frame_max,
                    confirm,
                    confirms: Confirms::default(),
                    gave_up: false,
                    closed: false,
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
    if !args.keep_queues {
        if let Err(e) = teardown(args, &url, &prefix).await {
            errors.push(format!("deleting the queues: {e:#}"));
        }
    }
    let settings = serde_json::json!({
        "url": format!("amqp://{}@{}/{}", url.user, url.addr(), url.vhost),
        "queues": args.queues,
        "exchange": args.exchange,
        "persistent": args.persistent,
        "confirm": args.confirm,
        "prefetch": args.prefetch,
        "multi_ack": args.multi_ack,
    });
    let mut report = report::build(
        "amqp",
        &args.load,
        args.producers,
        args.consumers,
        settings,
        &plan,
        outcome,
        args.confirm,
    );
    report.errors.extend(errors);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = AmqpUrl::parse("amqp://guest:guest@127.0.0.1:5672/%2F").unwrap();
        assert_eq!(
            u,
            AmqpUrl {
                user: "guest".into(),
                pass: "guest".into(),
                host: "127.0.0.1".into(),
                port: 5672,
                vhost: "/".into()
            }
        );
        let u = AmqpUrl::parse("amqp://bob:p%40ss@broker:5673/prod").unwrap();
        assert_eq!(
            (u.pass.as_str(), u.port, u.vhost.as_str()),
            ("p@ss", 5673, "prod")
        );
        let u = AmqpUrl::parse("amqp://localhost").unwrap();
        assert_eq!(
            (u.user.as_str(), u.port, u.vhost.as_str()),
            ("guest", 5672, "/")
        );
        let u = AmqpUrl::parse("amqp://[::1]:5999/").unwrap();
        assert_eq!((u.addr().as_str(), u.vhost.as_str()), ("[::1]:5999", "/"));
        assert!(AmqpUrl::parse("amqps://x").is_err());
        assert!(AmqpUrl::parse("amqp://h:notaport").is_err());
    }

    #[test]
    fn message_bytes_match_the_codec() {
        // What put_message writes equals basic.publish + hot::write_content
        // with the same body, for a single-frame and a multi-frame body.
        for (size, frame_max) in [(16usize, 131_072u32), (10_000, 4096)] {
            let prefix = publish_prefix("ex", "rk", size, true).unwrap();
            let mut ours = BytesMut::new();
            put_message(&mut ours, &prefix, size, frame_max, 3, 42, 1234);

            let mut body = BytesMut::new();
            payload::put_payload(&mut body, size, 3, 42, 1234);
            let mut theirs = BytesMut::new();
            encode_method_frame(
                &mut theirs,
                CH,
                &Method::BasicPublish(BasicPublish {
                    exchange: short("ex"),
                    routing_key: short("rk"),
                    mandatory: false,
                    immediate: false,
                }),
            )
            .unwrap();
            let mut raw = BytesMut::new();
            BasicProperties {
                delivery_mode: Some(2),
                ..BasicProperties::default()
            }
            .encode(&mut raw)
            .unwrap();
            hot::write_content(&mut theirs, CH, 60, &raw, &body.freeze(), frame_max);
            assert_eq!(ours, theirs, "size {size}");

            // And it decodes as the publish, header and body frames.
            let mut wire = ours.clone();
            let mut frames = Vec::new();
            while let Some(f) = decode_frame(&mut wire, frame_max).unwrap() {
                frames.push(f);
            }
            assert!(matches!(
                frames[0],
                Frame::Method {
                    method: Method::BasicPublish(_),
                    ..
                }
            ));
            assert!(
                matches!(&frames[1], Frame::Header { header, .. } if header.body_size == size as u64 && header.properties.is_persistent())
            );
            let Frame::Body { payload, .. } = &frames[2] else {
                panic!()
            };
            assert_eq!(
                payload::parse(payload),
                Some(Stamp {
                    producer: 3,
                    seq: 42,
                    sent_ns: 1234
                })
            );
        }
    }

    #[test]
    fn confirms_in_and_out_of_order() {
        let mut c = Confirms::default();
        assert_eq!(c.settle(3, true), 3);
        assert_eq!(c.settle(5, false), 1);
        assert_eq!(c.settled(), 4);
        assert_eq!(c.settle(4, false), 1);
        assert_eq!(c.settled(), 5);
        assert_eq!(c.upto, 5);
        assert_eq!(c.settle(7, false), 1);
        // multiple=true over a single already settled above upto.
        assert_eq!(c.settle(8, true), 2);
        assert_eq!(c.settled(), 8);
        assert_eq!(c.settle(8, false), 0);
        assert_eq!(c.settle(2, true), 0);
    }

    #[test]
    fn scans_deliveries_in_place() {
        let mut wire = BytesMut::new();
        hot::write_basic_deliver(&mut wire, CH, "ctag", 77, false, "", "q");
        assert_eq!(deliver_tag(&wire[7..wire.len() - 1]), Some(77));
        let mut n = 0;
        let used = scan_frames(&wire, |k, ch, _| {
            assert_eq!((k, ch), (1, CH));
            n += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!((used, n), (wire.len(), 1));
        // An incomplete frame is left for the next read.
        assert_eq!(
            scan_frames(&wire[..wire.len() - 1], |_, _, _| Ok(())).unwrap(),
            0
        );
    }
}
