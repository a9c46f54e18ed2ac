//! Publishers faster than their subscribers (liebre_core::flow): while a
//! subscriber is connected and reading, the publishers feeding it are held
//! instead of its messages being dropped; one that stops reading holds them
//! for a bounded time only. Clients here are minimal ones on the MQTT codec
//! so that the publisher is unpaced (thousands of PUBLISHes per write) and
//! the subscriber's reading pace is the test's to set.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use liebre_core::Metrics;
use liebre_mqtt_codec::{
    self as codec, Connect, Packet, Properties, Protocol, PubAck, Publish, QoS, Str, Subscribe,
    SubscriptionOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::support::*;

fn qos(q: u8) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

fn encode(p: &Packet, out: &mut BytesMut) {
    codec::encode(p, Protocol::V311, out).expect("encode");
}

/// Read until one whole packet is decoded.
async fn read_packet(rd: &mut OwnedReadHalf, buf: &mut BytesMut) -> Option<Packet> {
    loop {
        if let Some(p) = codec::decode(buf, Some(Protocol::V311), u32::MAX).expect("decode") {
            return Some(p);
        }
        if rd.read_buf(buf).await.ok()? == 0 {
            return None;
        }
    }
}

/// A 3.1.1 connection: CONNECT (clean session) and its CONNACK.
async fn open(addr: SocketAddr, id: &str) -> (OwnedReadHalf, OwnedWriteHalf, BytesMut) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let (mut rd, mut wr) = stream.into_split();
    let mut out = BytesMut::new();
    encode(
        &Packet::Connect(Connect {
            protocol: Protocol::V311,
            clean_start: true,
            keep_alive: 0,
            client_id: Str::from(id.to_owned()),
            will: None,
            username: None,
            password: None,
            properties: Properties::default(),
        }),
        &mut out,
    );
    wr.write_all(&out).await.expect("write CONNECT");
    let mut buf = BytesMut::new();
    match within("CONNACK", read_packet(&mut rd, &mut buf)).await {
        Some(Packet::ConnAck(a)) if a.code == 0 => {}
        other => panic!("expected CONNACK 0, got {other:?}"),
    }
    (rd, wr, buf)
}

/// A subscriber to `filter` at `q` that reads `chunk` bytes every `pause`
/// (none: as fast as it can), acknowledging QoS 1 messages, and counts
/// what it gets; payloads must come in order, each once.
struct Subscriber {
    seen: Arc<parking_lot::Mutex<Vec<u64>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Subscriber {
    async fn start(
        addr: SocketAddr,
        id: &str,
        filter: &str,
        q: u8,
        pause: Option<(usize, Duration)>,
    ) -> Self {
        let (mut rd, mut wr, mut buf) = open(addr, id).await;
        let mut out = BytesMut::new();
        encode(
            &Packet::Subscribe(Subscribe {
                packet_id: 1,
                filters: vec![(
                    Str::from(filter.to_owned()),
                    SubscriptionOptions {
                        qos: qos(q),
                        ..Default::default()
                    },
                )],
                properties: Properties::default(),
            }),
            &mut out,
        );
        wr.write_all(&out).await.expect("write SUBSCRIBE");
        match within("SUBACK", read_packet(&mut rd, &mut buf)).await {
            Some(Packet::SubAck(s)) => assert_eq!(s.codes, vec![q]),
            other => panic!("expected SUBACK, got {other:?}"),
        }
        let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let record = seen.clone();
        let task = tokio::spawn(async move {
            let mut acks = BytesMut::new();
            loop {
                while let Ok(Some(p)) = codec::decode(&mut buf, Some(Protocol::V311), u32::MAX) {
                    if let Packet::Publish(p) = p {
                        let n: u64 = std::str::from_utf8(&p.payload)
                            .ok()
                            .and_then(|s| s.parse().ok())
                            .expect("numbered payload");
                        record.lock().push(n);
                        if p.qos == QoS::AtLeastOnce {
                            encode(
                                &Packet::PubAck(PubAck {
                                    packet_id: p.packet_id,
                                    ..Default::default()
                                }),
                                &mut acks,
                            );
                        }
                    }
                }
                if !acks.is_empty() && wr.write_all(&acks.split()).await.is_err() {
                    return;
                }
                let n = match pause {
                    Some((chunk, pause)) => {
                        tokio::time::sleep(pause).await;
                        let mut tmp = vec![0u8; chunk];
                        let n = rd.read(&mut tmp).await.unwrap_or(0);
                        buf.extend_from_slice(&tmp[..n]);
                        n
                    }
                    None => rd.read_buf(&mut buf).await.unwrap_or(0),
                };
                if n == 0 {
                    return;
                }
            }
        });
        Self { seen, task }
    }

    /// Wait until `n` messages have come (failing after a long stall),
    /// then stop and return their payload numbers.
    async fn take(self, n: u64) -> Vec<u64> {
        let mut last = (0, tokio::time::Instant::now());
        loop {
            let now = self.seen.lock().len() as u64;
            if now >= n {
                break;
            }
            if now != last.0 {
                last = (now, tokio::time::Instant::now());
            } else if last.1.elapsed() > WAIT {
                break; // nothing more is coming
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.task.abort();
        let _ = self.task.await;
        std::mem::take(&mut *self.seen.lock())
    }
}

/// The numbers a subscriber saw, checked: 0..n, in order, each once.
fn assert_all_in_order(seen: &[u64], n: u64, what: &str) {
    let lost = n.saturating_sub(seen.len() as u64);
    assert_eq!(
        seen.len() as u64,
        n,
        "{what}: {lost} of {n} messages lost (got {})",
        seen.len()
    );
    for (i, &x) in seen.iter().enumerate() {
        assert_eq!(
            x, i as u64,
            "{what}: message {i} out of order or duplicated"
        );
    }
}

/// Publish `n` numbered messages on `topic` at `q` as fast as the socket
/// takes them (a thousand PUBLISHes per write), reading acknowledgements
/// on the side; returns once every QoS 1 PUBLISH is acknowledged.
async fn flood(addr: SocketAddr, id: &str, topic: &str, q: u8, n: u64) {
    let (mut rd, mut wr, _) = open(addr, id).await;
    let acks = tokio::spawn(async move {
        let mut buf = BytesMut::new();
        let mut acked = 0u64;
        while acked < n {
            match read_packet(&mut rd, &mut buf).await {
                Some(Packet::PubAck(_)) => acked += 1,
                Some(_) => {}
                None => break,
            }
        }
        acked
    });
    let mut out = BytesMut::new();
    for i in 0..n {
        encode(
            &Packet::Publish(Publish {
                dup: false,
                qos: qos(q),
                retain: false,
                topic: Str::from(topic.to_owned()),
                packet_id: if q == 0 { 0 } else { (i % 65_000) as u16 + 1 },
                payload: i.to_string().into(),
                properties: Properties::default(),
            }),
            &mut out,
        );
        if i % 1000 == 999 || i + 1 == n {
            wr.write_all(&out.split()).await.expect("publish");
        }
    }
    if q > 0 {
        let acked = within_for(Duration::from_secs(60), "PUBACKs", acks)
            .await
            .expect("ack reader");
        assert_eq!(acked, n, "every QoS 1 PUBLISH is acknowledged");
    } else {
        acks.abort();
    }
    // Keep the publisher's connection until its messages are through.
    std::mem::forget(wr);
}

/// A broker whose session queues hold at most 1,000 messages: without
/// flow control, a subscriber slower than its publisher would lose most
/// of what is sent below.
async fn small_queues(slow_after: Duration) -> TestServer {
    TestServer::start_with(|c| {
        c.mqtt_limits.max_queued_messages = 1000;
        c.mqtt_limits.slow_subscriber_after = slow_after;
    })
    .await
}

const N: u64 = 30_000;

async fn a_publisher_faster_than_its_subscriber_loses_nothing(q: u8) {
    guard(async {
        let srv = small_queues(Duration::from_secs(60)).await;
        // About 4 KiB per millisecond at most: far slower than the flood.
        let sub = Subscriber::start(
            srv.mqtt,
            "slow-reader",
            "flow/#",
            q,
            Some((4096, Duration::from_millis(1))),
        )
        .await;
        flood(srv.mqtt, "flooder", "flow/t", q, N).await;
        let seen = sub.take(N).await;
        assert_all_in_order(&seen, N, &format!("QoS {q}"));
        let m = srv.server().broker().metrics();
        assert_eq!(Metrics::get(&m.messages_dropped), 0, "nothing dropped");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qos0_publisher_faster_than_its_subscriber_loses_nothing() {
    a_publisher_faster_than_its_subscriber_loses_nothing(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qos1_publisher_faster_than_its_subscriber_loses_nothing() {
    a_publisher_faster_than_its_subscriber_loses_nothing(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_amqp_publisher_faster_than_an_mqtt_subscriber_loses_nothing() {
    use lapin::options::BasicPublishOptions;
    guard(async {
        let srv = small_queues(Duration::from_secs(60)).await;
        let sub = Subscriber::start(
            srv.mqtt,
            "printer-1",
            "jobs/printer-1",
            1,
            Some((4096, Duration::from_millis(1))),
        )
        .await;
        let conn = lapin::Connection::connect(&srv.amqp_url(), Default::default())
            .await
            .expect("AMQP connect");
        let ch = conn.create_channel().await.expect("channel");
        let props = lapin::BasicProperties::default().with_delivery_mode(2);
        for i in 0..N {
            // No confirms: lapin writes them as fast as it can.
            ch.basic_publish(
                "amq.topic".into(),
                "jobs.printer-1".into(),
                BasicPublishOptions::default(),
                i.to_string().as_bytes(),
                props.clone(),
            )
            .await
            .expect("publish");
        }
        let seen = sub.take(N).await;
        assert_all_in_order(&seen, N, "AMQP to MQTT");
        let m = srv.server().broker().metrics();
        assert_eq!(Metrics::get(&m.messages_dropped), 0, "nothing dropped");
    })
    .await;
}

/// A subscriber that stopped reading holds its publisher for
/// `slow_subscriber_after` only; the publisher's other subscriber gets
/// everything, and what does not fit the stuck one's queue is dropped and
/// counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_subscriber_holds_its_publisher_for_a_bounded_time_only() {
    guard(async {
        let srv = small_queues(Duration::from_millis(300)).await;
        let fast = Subscriber::start(srv.mqtt, "fast", "flow/#", 1, None).await;
        // Subscribes, then never reads again.
        let (_rd, mut wr, _) = open(srv.mqtt, "stuck").await;
        let mut out = BytesMut::new();
        encode(
            &Packet::Subscribe(Subscribe {
                packet_id: 1,
                filters: vec![(
                    Str::from("flow/#"),
                    SubscriptionOptions {
                        qos: QoS::AtLeastOnce,
                        ..Default::default()
                    },
                )],
                properties: Properties::default(),
            }),
            &mut out,
        );
        wr.write_all(&out).await.expect("SUBSCRIBE");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = std::time::Instant::now();
        flood(srv.mqtt, "flooder", "flow/t", 1, N).await;
        let seen = fast.take(N).await;
        assert_all_in_order(&seen, N, "the reading subscriber");
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the publisher was held for {:?}",
            started.elapsed()
        );
        let queue = srv
            .server()
            .broker()
            .vhost("/")
            .and_then(|v| v.queue("mqtt-subscription-stuckqos1"))
            .expect("the stuck session's queue");
        let stats = queue.stats();
        assert!(queue.flow_slow(), "the stuck subscriber counts as slow");
        assert_eq!(stats.messages_ready, 1000, "it keeps its limit");
        assert!(stats.dropped > 0);
        let m = srv.server().broker().metrics();
        assert_eq!(Metrics::get(&m.messages_dropped), stats.dropped);
        assert_eq!(
            stats.messages_ready + stats.messages_unacknowledged + stats.dropped,
            N,
            "every message is kept, in flight or counted as dropped"
        );
        drop(wr);
    })
    .await;
}
