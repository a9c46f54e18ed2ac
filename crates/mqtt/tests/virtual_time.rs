//! Keepalive, will delay and session expiry under virtual time: the
//! connection state machine and the session registry are driven with
//! instants we choose, so nothing here sleeps.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use liebre_auth::AuthStore;
use liebre_core::{Broker, ManualClock, QueueOptions, VHost, Wake};
use liebre_mqtt::{MqttConfig, MqttConnection, MqttContext};
use liebre_mqtt_codec::{self as codec, Connect, LastWill, Packet, Properties, Protocol, QoS, Str};

#[derive(Default)]
struct CountingWaker(AtomicUsize);

impl Wake for CountingWaker {
    fn wake(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

struct Harness {
    ctx: Arc<MqttContext>,
    vhost: Arc<VHost>,
    t0: Instant,
}

impl Harness {
    fn new() -> Self {
        let clock = Arc::new(ManualClock::default());
        let t0 = liebre_core::Clock::now(&*clock);
        let broker = Arc::new(Broker::new(clock));
        let vhost = broker.vhost("/").expect("default vhost");
        let ctx = Arc::new(MqttContext {
            broker,
            auth: Arc::new(AuthStore::default()),
            sessions: Default::default(),
            config: MqttConfig::default(),
        });
        Self { ctx, vhost, t0 }
    }

    /// A queue bound to `amq.topic` with `#`: sees every MQTT publish.
    fn capture(&self) -> Arc<liebre_core::Queue> {
        let q = self
            .vhost
            .declare_queue("capture", QueueOptions::default(), false, 0)
            .expect("declare");
        self.vhost
            .bind_queue("capture", "amq.topic", "#", Default::default(), 0)
            .expect("bind");
        q
    }

    fn connect(&self, connect: Connect, now: Instant) -> (MqttConnection, Vec<Packet>) {
        let peer: SocketAddr = "127.0.0.1:40000".parse().expect("addr");
        let mut conn = MqttConnection::new(
            self.ctx.clone(),
            peer,
            Arc::new(CountingWaker::default()),
            now,
        );
        let protocol = connect.protocol;
        let mut buf = BytesMut::new();
        codec::encode(&Packet::Connect(connect), protocol, &mut buf).expect("encode");
        conn.handle_input(&mut buf, now);
        let out = drain(&mut conn, protocol, now);
        (conn, out)
    }
}

fn drain(conn: &mut MqttConnection, protocol: Protocol, now: Instant) -> Vec<Packet> {
    let mut out = BytesMut::new();
    conn.poll_transmit(&mut out, now);
    let mut packets = Vec::new();
    while let Some(p) =
        codec::decode(&mut out, Some(protocol), u32::MAX).expect("server output decodes")
    {
        packets.push(p);
    }
    packets
}

fn connect_packet(protocol: Protocol, client_id: &str, keep_alive: u16, clean: bool) -> Connect {
    Connect {
        protocol,
        clean_start: clean,
        keep_alive,
        client_id: Str::from(client_id),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    }
}

fn will(delay: Option<u32>) -> LastWill {
    LastWill {
        topic: Str::from("plant/north/status"),
        payload: Bytes::from_static(b"offline"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Properties {
            will_delay_interval: delay,
            ..Default::default()
        },
    }
}

fn connack_code(packets: &[Packet]) -> u8 {
    match packets.first() {
        Some(Packet::ConnAck(c)) => c.code,
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

#[test]
fn keepalive_is_enforced_at_one_and_a_half_times_and_fires_the_will() {
    let h = Harness::new();
    let capture = h.capture();
    let mut c = connect_packet(Protocol::V5, "sensor-1", 10, true);
    c.will = Some(will(None));
    let (mut conn, out) = h.connect(c, h.t0);
    assert_eq!(connack_code(&out), 0);
    assert_eq!(conn.poll_timeout(), Some(h.t0 + Duration::from_secs(15)));

    conn.handle_timeout(h.t0 + Duration::from_millis(14_999));
    assert!(!conn.is_closed(), "closed before 1.5 x keepalive");
    // A PINGREQ at 14 s moves the deadline.
    let mut ping = BytesMut::new();
    codec::encode(&Packet::PingReq, Protocol::V5, &mut ping).expect("encode");
    conn.handle_input(&mut ping, h.t0 + Duration::from_secs(14));
    assert_eq!(drain(&mut conn, Protocol::V5, h.t0), vec![Packet::PingResp]);
    conn.handle_timeout(h.t0 + Duration::from_secs(28));
    assert!(!conn.is_closed());
    assert!(capture.get(true).is_none(), "no will while alive");

    conn.handle_timeout(h.t0 + Duration::from_secs(29));
    assert!(conn.is_closed());
    let out = drain(&mut conn, Protocol::V5, h.t0);
    assert!(
        matches!(out.as_slice(), [Packet::Disconnect(d)] if d.reason == 0x8D),
        "expected DISCONNECT 0x8D, got {out:?}"
    );
    let w = capture
        .get(true)
        .expect("will published on keepalive timeout");
    assert_eq!(&w.message.body[..], b"offline");
}

#[test]
fn will_waits_for_its_delay_and_a_reconnect_cancels_it() {
    let h = Harness::new();
    let capture = h.capture();
    let mut c = connect_packet(Protocol::V5, "sensor-2", 0, false);
    c.properties.session_expiry_interval = Some(300);
    c.will = Some(will(Some(30)));
    let (mut conn, _) = h.connect(c.clone(), h.t0);
    conn.handle_disconnect(h.t0);

    h.ctx.sessions.tick(h.t0 + Duration::from_secs(29));
    assert!(capture.get(true).is_none(), "will sent before its delay");
    h.ctx.sessions.tick(h.t0 + Duration::from_secs(30));
    assert!(capture.get(true).is_some(), "will not sent after its delay");

    // Second round: the client comes back in time, so no will.
    let t1 = h.t0 + Duration::from_secs(100);
    let (mut conn, out) = h.connect(c.clone(), t1);
    assert_eq!(connack_code(&out), 0);
    conn.handle_disconnect(t1);
    let (_back, out) = h.connect(c, t1 + Duration::from_secs(10));
    assert!(matches!(out.first(), Some(Packet::ConnAck(a)) if a.session_present));
    h.ctx.sessions.tick(t1 + Duration::from_secs(60));
    assert!(
        capture.get(true).is_none(),
        "will sent although the client reconnected"
    );
}

#[test]
fn will_delay_is_cut_short_by_session_expiry() {
    let h = Harness::new();
    let capture = h.capture();
    let mut c = connect_packet(Protocol::V5, "sensor-3", 0, true);
    c.properties.session_expiry_interval = Some(10);
    c.will = Some(will(Some(600)));
    let (mut conn, _) = h.connect(c, h.t0);
    conn.handle_disconnect(h.t0);
    h.ctx.sessions.tick(h.t0 + Duration::from_secs(9));
    assert!(capture.get(true).is_none());
    assert_eq!(h.ctx.sessions.len(), 1);
    h.ctx.sessions.tick(h.t0 + Duration::from_secs(10));
    assert!(
        capture.get(true).is_some(),
        "session end must publish the will"
    );
    assert_eq!(h.ctx.sessions.len(), 0);
}

#[test]
fn normal_disconnect_discards_the_will_but_reason_4_sends_it() {
    let h = Harness::new();
    let capture = h.capture();
    for (reason, expect_will) in [(0x00u8, false), (0x04u8, true)] {
        let mut c = connect_packet(Protocol::V5, &format!("sensor-d{reason}"), 0, true);
        c.will = Some(will(None));
        let (mut conn, _) = h.connect(c, h.t0);
        let mut buf = BytesMut::new();
        let d = codec::Disconnect {
            reason,
            properties: Properties::default(),
        };
        codec::encode(&Packet::Disconnect(d), Protocol::V5, &mut buf).expect("encode");
        conn.handle_input(&mut buf, h.t0);
        assert!(conn.is_closed());
        assert_eq!(
            capture.get(true).is_some(),
            expect_will,
            "reason {reason:#x}"
        );
    }
}

#[test]
fn persistent_session_expires_after_its_interval_and_takes_its_queue() {
    let h = Harness::new();
    let mut c = connect_packet(Protocol::V5, "printer-7", 0, false);
    c.properties.session_expiry_interval = Some(5);
    let (mut conn, _) = h.connect(c.clone(), h.t0);
    conn.handle_disconnect(h.t0);
    let queue = "mqtt-subscription-printer-7qos1";
    h.ctx.sessions.tick(h.t0 + Duration::from_secs(4));
    assert!(h.vhost.queue(queue).is_some(), "session gone too early");
    h.ctx.sessions.tick(h.t0 + Duration::from_secs(5));
    assert!(
        h.vhost.queue(queue).is_none(),
        "session queue outlived the session"
    );
    let (_conn, out) = h.connect(c, h.t0 + Duration::from_secs(6));
    assert!(matches!(out.first(), Some(Packet::ConnAck(a)) if !a.session_present));
}

#[test]
fn v311_persistent_session_never_expires_by_default() {
    let h = Harness::new();
    let c = connect_packet(Protocol::V311, "printer-8", 0, false);
    let (mut conn, _) = h.connect(c.clone(), h.t0);
    conn.handle_disconnect(h.t0);
    h.ctx
        .sessions
        .tick(h.t0 + Duration::from_secs(30 * 24 * 3600));
    let (_conn, out) = h.connect(c, h.t0 + Duration::from_secs(30 * 24 * 3600));
    assert!(matches!(out.first(), Some(Packet::ConnAck(a)) if a.session_present));
}

#[test]
fn connect_timeout_closes_a_silent_socket() {
    let h = Harness::new();
    let peer: SocketAddr = "127.0.0.1:40001".parse().expect("addr");
    let mut conn = MqttConnection::new(
        h.ctx.clone(),
        peer,
        Arc::new(CountingWaker::default()),
        h.t0,
    );
    let deadline = conn.poll_timeout().expect("a CONNECT deadline");
    conn.handle_timeout(deadline - Duration::from_millis(1));
    assert!(!conn.is_closed());
    conn.handle_timeout(deadline);
    assert!(conn.is_closed());
}

#[test]
fn takeover_with_clean_start_keeps_the_new_sessions_queue() {
    let h = Harness::new();
    let c = connect_packet(Protocol::V5, "dup", 0, true);
    let (mut first, _) = h.connect(c.clone(), h.t0);
    let (_second, out) = h.connect(c, h.t0);
    assert_eq!(connack_code(&out), 0);
    let kicked = drain(&mut first, Protocol::V5, h.t0);
    assert!(
        matches!(kicked.as_slice(), [Packet::Disconnect(d)] if d.reason == 0x8E),
        "expected DISCONNECT 0x8E, got {kicked:?}"
    );
    assert!(first.is_closed());
    first.handle_disconnect(h.t0);
    assert!(
        h.vhost.queue("mqtt-subscription-dupqos1").is_some(),
        "the old connection took the new session's queue with it"
    );
    assert_eq!(h.ctx.sessions.len(), 1);
}

#[test]
fn offline_sessions_queue_qos1_subscriptions_only() {
    let h = Harness::new();
    let c = connect_packet(Protocol::V311, "printer-9", 0, false);
    let (mut conn, _) = h.connect(c.clone(), h.t0);
    let mut buf = BytesMut::new();
    let sub = codec::Subscribe {
        packet_id: 1,
        filters: vec![
            (
                Str::from("jobs/printer-9"),
                codec::SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    ..Default::default()
                },
            ),
            (
                Str::from("status/#"),
                codec::SubscriptionOptions {
                    qos: QoS::AtMostOnce,
                    ..Default::default()
                },
            ),
        ],
        properties: Properties::default(),
    };
    codec::encode(&Packet::Subscribe(sub), Protocol::V311, &mut buf).expect("encode");
    conn.handle_input(&mut buf, h.t0);
    assert!(
        matches!(drain(&mut conn, Protocol::V311, h.t0).as_slice(), [Packet::SubAck(a)] if a.codes == [1, 0])
    );
    conn.handle_disconnect(h.t0);

    let publish = |topic: &str, qos: QoS| {
        let m =
            liebre_mqtt::mapping::to_message(topic, qos, false, Bytes::from_static(b"x"), None, 0);
        h.vhost.publish("amq.topic", Arc::new(m)).expect("publish")
    };
    assert_eq!(
        publish("jobs/printer-9", QoS::AtLeastOnce).routed,
        1,
        "QoS 1 subscription must queue"
    );
    assert_eq!(
        publish("status/online", QoS::AtMostOnce).routed,
        0,
        "QoS 0 subscription must not queue offline"
    );

    let (_back, got) = h.connect(c, h.t0);
    assert!(matches!(got.first(), Some(Packet::ConnAck(a)) if a.session_present));
    assert!(
        got.iter()
            .any(|p| matches!(p, Packet::Publish(p) if &*p.topic == "jobs/printer-9")),
        "queued job not delivered: {got:?}"
    );
    assert_eq!(
        publish("status/online", QoS::AtMostOnce).routed,
        1,
        "QoS 0 subscription back once online"
    );
}

#[test]
fn unacknowledged_messages_are_resent_with_dup_and_the_same_packet_id() {
    let h = Harness::new();
    let c = connect_packet(Protocol::V5, "meter-1", 0, false);
    let mut c = c;
    c.properties.session_expiry_interval = Some(3600);
    let (mut conn, _) = h.connect(c.clone(), h.t0);
    let mut buf = BytesMut::new();
    let sub = codec::Subscribe {
        packet_id: 7,
        filters: vec![(
            Str::from("meters/+/reading"),
            codec::SubscriptionOptions {
                qos: QoS::ExactlyOnce,
                ..Default::default()
            },
        )],
        properties: Properties::default(),
    };
    codec::encode(&Packet::Subscribe(sub), Protocol::V5, &mut buf).expect("encode");
    conn.handle_input(&mut buf, h.t0);
    drain(&mut conn, Protocol::V5, h.t0);
    for (topic, qos) in [
        ("meters/1/reading", QoS::AtLeastOnce),
        ("meters/2/reading", QoS::ExactlyOnce),
    ] {
        let m =
            liebre_mqtt::mapping::to_message(topic, qos, false, Bytes::from_static(b"42"), None, 0);
        h.vhost.publish("amq.topic", Arc::new(m)).expect("publish");
    }
    let first: Vec<(u16, bool, QoS)> = drain(&mut conn, Protocol::V5, h.t0)
        .into_iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some((p.packet_id, p.dup, p.qos)),
            _ => None,
        })
        .collect();
    assert_eq!(first.len(), 2, "{first:?}");
    assert!(first.iter().all(|(_, dup, _)| !dup));
    // The QoS 2 one gets as far as PUBREC: on resumption a PUBREL is due, not the PUBLISH.
    let qos2_id = first
        .iter()
        .find(|(_, _, q)| *q == QoS::ExactlyOnce)
        .map(|x| x.0)
        .expect("qos 2");
    let mut rec = BytesMut::new();
    let pubrec = codec::PubAck {
        packet_id: qos2_id,
        reason: 0,
        properties: Properties::default(),
    };
    codec::encode(&Packet::PubRec(pubrec), Protocol::V5, &mut rec).expect("encode");
    conn.handle_input(&mut rec, h.t0);
    assert!(
        matches!(drain(&mut conn, Protocol::V5, h.t0).as_slice(), [Packet::PubRel(r)] if r.packet_id == qos2_id)
    );
    conn.handle_disconnect(h.t0);

    let (_back, out) = h.connect(c, h.t0 + Duration::from_secs(1));
    let qos1_id = first
        .iter()
        .find(|(_, _, q)| *q == QoS::AtLeastOnce)
        .map(|x| x.0)
        .expect("qos 1");
    assert!(
        out.iter()
            .any(|p| matches!(p, Packet::Publish(p) if p.dup && p.packet_id == qos1_id)),
        "QoS 1 message not resent with DUP and id {qos1_id}: {out:?}"
    );
    assert!(
        out.iter()
            .any(|p| matches!(p, Packet::PubRel(r) if r.packet_id == qos2_id)),
        "PUBREL {qos2_id} not resent: {out:?}"
    );
    assert_eq!(
        out.iter()
            .filter(|p| matches!(p, Packet::Publish(_)))
            .count(),
        1,
        "the released QoS 2 message must not be sent again: {out:?}"
    );
}
