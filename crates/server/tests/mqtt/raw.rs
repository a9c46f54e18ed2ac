//! A hand-rolled MQTT client for tests that must misbehave: packets built
//! byte by byte over a plain `TcpStream`. Each test keeps a well-behaved
//! rumqttc "bystander" connected throughout and checks at the end that it
//! still works.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

const CONNACK: u8 = 0x20;
const DISCONNECT: u8 = 0xE0;

fn varint(mut n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            return out;
        }
    }
}

fn mqtt_str(s: &[u8]) -> Vec<u8> {
    let mut out = (s.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(s);
    out
}

/// A packet: first byte, remaining length, body.
fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    out.extend(varint(body.len()));
    out.extend_from_slice(body);
    out
}

/// CONNECT at protocol `level` (4 = 3.1.1, 5 = 5.0), clean session, no
/// credentials, optionally a QoS 1 will.
fn connect(
    level: u8,
    client_id: &str,
    clean: bool,
    keep_alive: u16,
    will: Option<(&str, &[u8])>,
) -> Vec<u8> {
    let mut b = mqtt_str(b"MQTT");
    b.push(level);
    let mut flags = 0u8;
    if clean {
        flags |= 0x02;
    }
    if will.is_some() {
        flags |= 0x04 | 0x08; // will, QoS 1
    }
    b.push(flags);
    b.extend_from_slice(&keep_alive.to_be_bytes());
    if level == 5 {
        b.push(0); // no properties
    }
    b.extend(mqtt_str(client_id.as_bytes()));
    if let Some((topic, payload)) = will {
        if level == 5 {
            b.push(0); // no will properties
        }
        b.extend(mqtt_str(topic.as_bytes()));
        b.extend(mqtt_str(payload));
    }
    packet(0x10, &b)
}

/// PUBLISH QoS 0; `props` is the raw 5.0 property block (without its length).
fn publish_qos0(v5: bool, topic: &str, props: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut b = mqtt_str(topic.as_bytes());
    if v5 {
        b.extend(varint(props.len()));
        b.extend_from_slice(props);
    }
    b.extend_from_slice(payload);
    packet(0x30, &b)
}

/// SUBSCRIBE with the given first byte (correct is 0x82).
fn subscribe(first: u8, v5: bool, pkid: u16, filter: &str) -> Vec<u8> {
    let mut b = pkid.to_be_bytes().to_vec();
    if v5 {
        b.push(0);
    }
    b.extend(mqtt_str(filter.as_bytes()));
    b.push(1);
    packet(first, &b)
}

struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    async fn open(addr: SocketAddr) -> Self {
        let s = within("raw TCP connect", TcpStream::connect(addr))
            .await
            .expect("raw TCP connect");
        s.set_nodelay(true).ok();
        Self { s, buf: Vec::new() }
    }

    /// Write; the broker may already have closed, so errors are ignored
    /// (the following read reports the close).
    async fn send(&mut self, bytes: &[u8]) {
        let _ = within("raw write", self.s.write_all(bytes)).await;
    }

    /// One whole packet already buffered, if any.
    fn parse(&mut self) -> Option<(u8, Vec<u8>)> {
        let mut len = 0usize;
        let mut mult = 1usize;
        let mut i = 1;
        loop {
            let b = *self.buf.get(i)?;
            len += usize::from(b & 0x7F) * mult;
            mult *= 128;
            i += 1;
            if b & 0x80 == 0 {
                break;
            }
            assert!(i <= 5, "broker sent a bad remaining length");
        }
        if self.buf.len() < i + len {
            return None;
        }
        let first = self.buf[0];
        let body = self.buf[i..i + len].to_vec();
        self.buf.drain(..i + len);
        Some((first, body))
    }

    /// The next packet, or `None` when the broker closed the connection.
    async fn read_packet_for(&mut self, limit: Duration) -> Option<(u8, Vec<u8>)> {
        within_for(limit, "a packet from the broker or close", async {
            loop {
                if let Some(p) = self.parse() {
                    return Some(p);
                }
                let mut chunk = [0u8; 4096];
                match self.s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await
    }

    async fn read_packet(&mut self) -> Option<(u8, Vec<u8>)> {
        self.read_packet_for(WAIT).await
    }

    /// Read until the broker closes; returns the packets sent before.
    async fn closed_within(&mut self, limit: Duration) -> Vec<(u8, Vec<u8>)> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self
                .read_packet_for(left.max(Duration::from_millis(1)))
                .await
            {
                Some(p) => got.push(p),
                None => return got,
            }
        }
    }

    async fn closed(&mut self) -> Vec<(u8, Vec<u8>)> {
        self.closed_within(WAIT).await
    }

    /// CONNECT and expect CONNACK with return/reason code 0.
    async fn handshake(addr: SocketAddr, level: u8, id: &str) -> Self {
        let mut r = Self::open(addr).await;
        r.send(&connect(level, id, true, 60, None)).await;
        let (first, body) = r.read_packet().await.expect("CONNACK");
        assert_eq!(first, CONNACK);
        assert_eq!(body[1], 0, "CONNACK code");
        r
    }
}

/// A rumqttc client subscribed to `bystander/t` for the whole test.
async fn bystander(srv: &TestServer) -> Client {
    let mut b = srv.client(V::V4, Opts::new("bystander")).await;
    b.subscribe("bystander/t", 1).await;
    b
}

/// The bystander still receives, and new connections still work.
async fn bystander_ok(srv: &TestServer, mut b: Client) {
    b.publish("bystander/t", 1, false, b"ping").await;
    assert_eq!(b.recv().await.body(), "ping");
    b.disconnect().await;
    assert_round_trip(srv, V::V5, "after/abuse").await;
}

/// Topic Alias Maximum (0x22) from a CONNACK property block (with its
/// length prefix).
fn topic_alias_maximum(block: &[u8]) -> Option<u16> {
    let (len, mut i) = {
        let mut len = 0usize;
        let mut mult = 1;
        let mut i = 0;
        loop {
            let b = block[i];
            len += usize::from(b & 0x7F) * mult;
            mult *= 128;
            i += 1;
            if b & 0x80 == 0 {
                break (len, i);
            }
        }
    };
    let end = i + len;
    while i < end {
        let id = block[i];
        i += 1;
        let skip = match id {
            0x22 => return Some(u16::from_be_bytes([block[i], block[i + 1]])),
            0x21 | 0x13 => 2,                      // two byte integers
            0x11 | 0x27 => 4,                      // four byte integers
            0x24 | 0x25 | 0x28 | 0x29 | 0x2A => 1, // bytes
            0x12 | 0x1A | 0x1C | 0x1F | 0x15 | 0x16 => {
                2 + usize::from(u16::from_be_bytes([block[i], block[i + 1]]))
            }
            0x26 => {
                let k = 2 + usize::from(u16::from_be_bytes([block[i], block[i + 1]]));
                k + 2 + usize::from(u16::from_be_bytes([block[i + k], block[i + k + 1]]))
            }
            other => panic!("unexpected CONNACK property 0x{other:02x}"),
        };
        i += skip;
    }
    None
}

fn no_packets(got: &[(u8, Vec<u8>)], what: &str) {
    assert!(
        got.is_empty(),
        "{what}: expected a silent close, got {got:02x?}"
    );
}

/// The only packet before the close is a 5.0 DISCONNECT with one of `codes`.
fn disconnect_with(got: &[(u8, Vec<u8>)], codes: &[u8], what: &str) {
    match got {
        [(DISCONNECT, body)] if !body.is_empty() => assert!(
            codes.contains(&body[0]),
            "{what}: DISCONNECT reason 0x{:02x}, expected one of {codes:02x?}",
            body[0]
        ),
        _ => panic!("{what}: expected one DISCONNECT {codes:02x?} then close, got {got:02x?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_remaining_length_closes() {
    guard(async {
        let srv = TestServer::start().await;
        let b = bystander(&srv).await;
        // Five length bytes, all but the last with the continuation bit.
        let bad = [0xFF, 0xFF, 0xFF, 0xFF, 0x01];

        let mut r = Raw::handshake(srv.mqtt, 4, "raw-len-4").await;
        let mut p = vec![0x30];
        p.extend_from_slice(&bad);
        r.send(&p).await;
        no_packets(&r.closed().await, "3.1.1 PUBLISH with 5 length bytes");

        let mut r = Raw::handshake(srv.mqtt, 5, "raw-len-5").await;
        r.send(&p).await;
        disconnect_with(
            &r.closed().await,
            &[0x81],
            "5.0 PUBLISH with 5 length bytes",
        );

        // Before CONNECT too.
        let mut r = Raw::open(srv.mqtt).await;
        let mut c = vec![0x10];
        c.extend_from_slice(&bad);
        r.send(&c).await;
        no_packets(&r.closed().await, "CONNECT with 5 length bytes");
        bystander_ok(&srv, b).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_with_reserved_flags_zero_closes() {
    guard(async {
        let srv = TestServer::start().await;
        let b = bystander(&srv).await;
        let mut r = Raw::handshake(srv.mqtt, 4, "raw-sub-4").await;
        r.send(&subscribe(0x80, false, 1, "x/y")).await;
        no_packets(&r.closed().await, "3.1.1 SUBSCRIBE flags 0000");

        let mut r = Raw::handshake(srv.mqtt, 5, "raw-sub-5").await;
        r.send(&subscribe(0x80, true, 1, "x/y")).await;
        disconnect_with(&r.closed().await, &[0x81], "5.0 SUBSCRIBE flags 0000");

        // The correct flags work on the same kind of connection.
        let mut r = Raw::handshake(srv.mqtt, 4, "raw-sub-ok").await;
        r.send(&subscribe(0x82, false, 7, "x/y")).await;
        let (first, body) = r.read_packet().await.expect("SUBACK");
        assert_eq!((first, body), (0x90, vec![0, 7, 1]));
        bystander_ok(&srv, b).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_duplicate_property_gets_disconnect() {
    guard(async {
        let srv = TestServer::start().await;
        let mut b = bystander(&srv).await;
        b.subscribe("dup/p", 1).await;
        let mut r = Raw::handshake(srv.mqtt, 5, "raw-dup").await;
        // Content Type (0x03) twice.
        let mut props = vec![0x03];
        props.extend(mqtt_str(b"a"));
        props.push(0x03);
        props.extend(mqtt_str(b"b"));
        r.send(&publish_qos0(true, "dup/p", &props, b"bad")).await;
        disconnect_with(
            &r.closed().await,
            &[0x81, 0x82],
            "PUBLISH with a repeated property",
        );

        // The bad PUBLISH was not routed.
        let mut p = srv.client(V::V4, Opts::new("dup-pub")).await;
        p.publish("dup/p", 1, false, b"sentinel").await;
        assert_eq!(b.recv().await.body(), "sentinel");
        p.disconnect().await;
        bystander_ok(&srv, b).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_packet_not_connect_closes() {
    guard(async {
        let srv = TestServer::start().await;
        let b = bystander(&srv).await;
        let mut r = Raw::open(srv.mqtt).await;
        r.send(&[0xC0, 0x00]).await; // PINGREQ
        no_packets(&r.closed().await, "PINGREQ before CONNECT");

        let mut r = Raw::open(srv.mqtt).await;
        r.send(&publish_qos0(false, "bystander/t", &[], b"sneaky"))
            .await;
        no_packets(&r.closed().await, "PUBLISH before CONNECT");

        let mut r = Raw::open(srv.mqtt).await;
        r.send(&subscribe(0x82, false, 1, "#")).await;
        no_packets(&r.closed().await, "SUBSCRIBE before CONNECT");
        bystander_ok(&srv, b).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_connect_closes() {
    guard(async {
        let srv = TestServer::start().await;
        let b = bystander(&srv).await;
        let mut r = Raw::handshake(srv.mqtt, 4, "raw-2c-4").await;
        r.send(&connect(4, "raw-2c-4", true, 60, None)).await;
        no_packets(&r.closed().await, "3.1.1 second CONNECT");

        let mut r = Raw::handshake(srv.mqtt, 5, "raw-2c-5").await;
        r.send(&connect(5, "raw-2c-5", true, 60, None)).await;
        disconnect_with(&r.closed().await, &[0x82], "5.0 second CONNECT");
        bystander_ok(&srv, b).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_refusals() {
    guard(async {
        let srv = TestServer::start().await;
        let b = bystander(&srv).await;
        // 3.1.1: empty client id with clean session 0 is identifier rejected (2).
        let mut r = Raw::open(srv.mqtt).await;
        r.send(&connect(4, "", false, 60, None)).await;
        let got = r.closed().await;
        assert_eq!(
            got,
            vec![(CONNACK, vec![0, 2])],
            "3.1.1 empty id without clean session"
        );
        // Unknown protocol level: 3.1.1-style CONNACK 1, then close.
        let mut r = Raw::open(srv.mqtt).await;
        r.send(&connect(3 + 4, "lvl7", true, 60, None)).await;
        let got = r.closed().await;
        assert_eq!(got.len(), 1, "one CONNACK then close: {got:02x?}");
        assert_eq!(got[0].0, CONNACK);
        bystander_ok(&srv, b).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_unknown_topic_alias_gets_disconnect() {
    guard(async {
        let srv = TestServer::start().await;
        let b = bystander(&srv).await;
        let mut r = Raw::handshake(srv.mqtt, 5, "raw-alias").await;
        // Empty topic with alias 5, never set.
        r.send(&publish_qos0(true, "", &[0x23, 0x00, 0x05], b"x"))
            .await;
        disconnect_with(&r.closed().await, &[0x82], "unknown topic alias");
        // Alias 0 is not permitted (MQTT-3.3.2-8); the spec names no
        // reason code for it: Protocol Error or Topic Alias Invalid.
        let mut r = Raw::handshake(srv.mqtt, 5, "raw-alias0").await;
        r.send(&publish_qos0(true, "a/b", &[0x23, 0x00, 0x00], b"x"))
            .await;
        disconnect_with(&r.closed().await, &[0x82, 0x94], "topic alias 0");
        // Above the Topic Alias Maximum of the CONNACK: 0x94.
        let mut r = Raw::open(srv.mqtt).await;
        r.send(&connect(5, "raw-alias-max", true, 60, None)).await;
        let (first, body) = r.read_packet().await.expect("CONNACK");
        assert_eq!((first, body[1]), (CONNACK, 0));
        let max = topic_alias_maximum(&body[2..]).unwrap_or(0);
        let over = max.checked_add(1).expect("alias maximum below 65535");
        let [hi, lo] = over.to_be_bytes();
        r.send(&publish_qos0(true, "a/b", &[0x23, hi, lo], b"x"))
            .await;
        disconnect_with(&r.closed().await, &[0x94], "topic alias above the maximum");
        bystander_ok(&srv, b).await;
    })
    .await
}

async fn silent_client_is_dropped(level: u8) {
    let srv = TestServer::start().await;
    let mut watcher = srv.client(V::V4, Opts::new("ka-watch")).await;
    watcher.subscribe("ka/will", 1).await;
    let mut r = Raw::open(srv.mqtt).await;
    r.send(&connect(
        level,
        "ka-silent",
        true,
        1,
        Some(("ka/will", b"silent")),
    ))
    .await;
    let (first, body) = r.read_packet().await.expect("CONNACK");
    assert_eq!((first, body[1]), (CONNACK, 0));
    let started = Instant::now();
    // Keepalive 1 s: the broker must give up after 1.5 s; 10 s is the bound.
    let got = r.closed_within(Duration::from_secs(10)).await;
    if level == 5 {
        disconnect_with(&got, &[0x8D], "keep alive timeout");
    } else {
        no_packets(&got, "3.1.1 keepalive timeout");
    }
    let waited = started.elapsed();
    let m = watcher.recv().await;
    assert_eq!((m.topic.as_str(), m.body().as_str()), ("ka/will", "silent"));
    eprintln!("keepalive 1 s: closed after {waited:?}");
    watcher.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_timeout_disconnects_and_publishes_will_v311() {
    guard(silent_client_is_dropped(4)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_timeout_disconnects_and_publishes_will_v5() {
    guard(silent_client_is_dropped(5)).await
}

/// PUBLISH QoS 1 with packet id `pkid` (no 5.0 properties).
fn publish_qos1(v5: bool, pkid: u16, topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut b = mqtt_str(topic.as_bytes());
    b.extend_from_slice(&pkid.to_be_bytes());
    if v5 {
        b.push(0);
    }
    b.extend_from_slice(payload);
    packet(0x32, &b)
}

/// A PUBACK held for a message whose fsync failed is never a success: 5.0
/// gets reason 0x80, 3.1.1 (which has no negative acknowledgement) is
/// disconnected; a message already on disk was acknowledged normally.
async fn a_puback_held_for_a_failed_fsync_is_refused(level: u8) {
    guard(async {
        let disk = liebre_store::CrashBackend::new();
        let log = std::sync::Arc::new(disk.clone());
        let srv = TestServer::start_with(|c| c.log_backend = Some(log)).await;
        // A persistent session, offline: its queue is durable, so QoS 1
        // messages to it are stored and their PUBACKs wait for the fsync
        // (and nothing else writes to the log meanwhile).
        let mut sub = srv.client(V::V4, Opts::new("keeper").persistent()).await;
        sub.subscribe("plant/line1", 1).await;
        sub.disconnect().await;
        let mut p = Raw::handshake(srv.server().mqtt_addrs()[0], level, "press").await;
        let v5 = level == 5;
        p.send(&publish_qos1(v5, 1, "plant/line1", b"stored")).await;
        let (first, body) = p.read_packet().await.expect("PUBACK");
        assert_eq!((first, &body[..2]), (0x40, &[0, 1][..]), "PUBACK 1");
        assert!(body.len() == 2 || body[2] == 0, "PUBACK 1 reason: {body:?}");

        disk.fail_next_sync();
        p.send(&publish_qos1(v5, 2, "plant/line1", b"lost")).await;
        if v5 {
            let (first, body) = p.read_packet().await.expect("PUBACK");
            assert_eq!((first, &body[..2]), (0x40, &[0, 2][..]), "PUBACK 2");
            assert_eq!(body.get(2), Some(&0x80), "PUBACK 2 reason");
        } else {
            let got = p.closed().await;
            assert!(
                got.iter().all(|(first, _)| *first != 0x40),
                "a PUBACK came for a message not on disk: {got:?}"
            );
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_puback_held_for_a_failed_fsync_is_refused_v311() {
    a_puback_held_for_a_failed_fsync_is_refused(4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_puback_held_for_a_failed_fsync_is_refused_v5() {
    a_puback_held_for_a_failed_fsync_is_refused(5).await;
}
