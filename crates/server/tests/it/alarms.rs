//! Memory and disk alarms: publishers are blocked (`connection.blocked` /
//! `connection.unblocked` to clients that asked), consumers go on.
//!
//! Most tests switch the monitor off and force the alarms by hand through
//! `Broker::alarms()`; one lets the monitor raise them with limits no
//! machine meets.

use std::sync::atomic::Ordering;
use std::time::Duration;

use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions};
use lapin::BasicProperties;
use liebre_server::Config;

use crate::raw::{self, Args, RawClient, Read};
use crate::support::*;

const QUEUE_DECLARED: &str = "alarm-q";

/// No monitor: the alarms change only by hand.
fn no_monitor(c: &mut Config) {
    c.alarms.check_interval = Duration::ZERO;
}

/// connection.start-ok announcing the `connection.blocked` capability.
fn start_ok_with_blocked_capability() -> Vec<u8> {
    let inner = Args::new()
        .shortstr("connection.blocked")
        .u8(b't')
        .u8(1)
        .bytes();
    let caps = Args::new().u32(inner.len() as u32).bytes();
    let entry = Args::new()
        .shortstr("capabilities")
        .u8(b'F')
        .bytes()
        .into_iter()
        .chain(caps)
        .chain(inner)
        .collect::<Vec<u8>>();
    let mut args = Args::new().u32(entry.len() as u32);
    args.0.extend_from_slice(&entry);
    let args = args
        .shortstr("PLAIN")
        .longstr(b"\0guest\0guest")
        .shortstr("en_US")
        .bytes();
    raw::method(0, 10, 11, &args)
}

/// The handshake of `RawClient::handshake`, announcing `connection.blocked`.
async fn handshake_blocked_capable(srv: &TestServer, heartbeat: u16) -> RawClient {
    let mut c = RawClient::connect(srv.addr).await;
    c.send(raw::PROTOCOL_HEADER).await;
    c.expect_method(10, 10).await;
    c.send(&start_ok_with_blocked_capability()).await;
    let tune = c.expect_method(10, 30).await.tune_args();
    c.send(&raw::tune_ok(tune.0, tune.1, heartbeat)).await;
    c.send(&raw::connection_open("/")).await;
    c.expect_method(10, 41).await;
    c
}

/// basic.publish to the default exchange, a content header and one body frame.
async fn raw_publish(c: &mut RawClient, ch: u16, queue: &str, body: &[u8]) {
    let mut bytes = raw::basic_publish(ch, "", queue);
    bytes.extend(raw::content_header(ch, body.len() as u64));
    bytes.extend(raw::body(ch, body));
    c.send(&bytes).await;
}

/// The reason of a connection.blocked frame.
fn blocked_reason(f: &raw::Frame) -> String {
    let a = f.args();
    let len = a[0] as usize;
    String::from_utf8_lossy(&a[1..1 + len]).into_owned()
}

fn ready(srv: &TestServer, queue: &str) -> u64 {
    srv.queue_stats(queue).map_or(0, |s| s.messages_ready)
}

fn blocked_connections(srv: &TestServer) -> u64 {
    srv.broker()
        .metrics()
        .blocked_connections
        .load(Ordering::Relaxed)
}

async fn declare(srv: &TestServer) -> lapin::Connection {
    let conn = srv.connect().await;
    let ch = channel(&conn).await;
    declare_queue(&ch, QUEUE_DECLARED, no_args()).await;
    conn
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_that_asked_gets_blocked_then_unblocked() {
    guard(async {
        let srv = TestServer::start_with(no_monitor).await;
        let admin = declare(&srv).await;
        let mut p = handshake_blocked_capable(&srv, 0).await;
        p.open_channel(1).await;

        raw_publish(&mut p, 1, QUEUE_DECLARED, b"before").await;
        eventually("the first message to be routed", || {
            ready(&srv, QUEUE_DECLARED) == 1
        })
        .await;

        let alarms = srv.broker().alarms();
        alarms.set_memory(true);
        raw_publish(&mut p, 1, QUEUE_DECLARED, b"during").await;
        let f = p.expect_method(10, 60).await;
        assert_eq!(f.channel, 0);
        assert_eq!(blocked_reason(&f), "low on memory");
        // Blocked at the content header: the body was not read, so the
        // message is not routed.
        assert_eq!(ready(&srv, QUEUE_DECLARED), 1);
        assert_eq!(blocked_connections(&srv), 1);

        // Memory clears while the disk alarm is on: still blocked.
        alarms.set_disk(true);
        alarms.set_memory(false);
        assert_eq!(ready(&srv, QUEUE_DECLARED), 1);
        alarms.set_disk(false);

        // Next frame: connection.unblocked (a spurious unblocked/blocked
        // pair while the disk alarm was on would show up here, or as the
        // channel probe's answer).
        p.expect_method(10, 61).await;
        eventually("the blocked message to be routed", || {
            ready(&srv, QUEUE_DECLARED) == 2
        })
        .await;
        p.open_channel(2).await;
        assert_eq!(blocked_connections(&srv), 0);
        let ch = channel(&admin).await;
        assert_eq!(
            drain_bodies(&ch, QUEUE_DECLARED).await,
            vec!["before", "during"]
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_without_the_capability_is_paused_silently() {
    guard(async {
        let srv = TestServer::start_with(no_monitor).await;
        let _admin = declare(&srv).await;
        let (mut p, _) = RawClient::handshake(srv.addr, 0).await;
        p.open_channel(1).await;
        srv.broker().alarms().set_disk(true);
        raw_publish(&mut p, 1, QUEUE_DECLARED, b"paused").await;
        eventually("the publisher to be blocked", || {
            blocked_connections(&srv) == 1
        })
        .await;
        assert_eq!(ready(&srv, QUEUE_DECLARED), 0);
        srv.broker().alarms().set_disk(false);
        eventually("the paused message to be routed", || {
            ready(&srv, QUEUE_DECLARED) == 1
        })
        .await;
        // Neither connection.blocked nor connection.unblocked went out:
        // the next frame is the answer to this channel.open.
        p.open_channel(2).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_keep_receiving_while_publishers_are_blocked() {
    guard(async {
        let srv = TestServer::start_with(no_monitor).await;
        let _admin = declare(&srv).await;
        let publisher = srv.connect().await;
        let pch = confirm_channel(&publisher).await;
        for i in 0..20 {
            let body = format!("backlog-{i}");
            publish_confirmed(
                &pch,
                "",
                QUEUE_DECLARED,
                body.as_bytes(),
                BasicProperties::default(),
            )
            .await;
        }

        srv.broker().alarms().set_memory(true);
        let confirm = within(
            "basic.publish",
            pch.basic_publish(
                "".into(),
                QUEUE_DECLARED.into(),
                BasicPublishOptions::default(),
                b"late",
                BasicProperties::default(),
            ),
        )
        .await
        .expect("basic.publish");
        eventually("lapin to see connection.blocked", || {
            publisher.status().blocked()
        })
        .await;

        // A consumer connected during the alarm, prefetch 5: the backlog
        // only flows if its acks are read.
        let consumer = srv.connect().await;
        let cch = channel(&consumer).await;
        within("basic.qos", cch.basic_qos(5, BasicQosOptions::default()))
            .await
            .expect("basic.qos");
        let mut d = consume(&cch, QUEUE_DECLARED, "", BasicConsumeOptions::default()).await;
        for i in 0..20 {
            let m = d.next().await;
            assert_eq!(m.data, format!("backlog-{i}").as_bytes());
            within("basic.ack", m.ack(BasicAckOptions::default()))
                .await
                .expect("ack");
        }
        assert!(publisher.status().blocked());
        eventually("every backlog ack to be settled", || {
            srv.queue_stats(QUEUE_DECLARED)
                .is_some_and(|s| s.messages_unacknowledged == 0 && s.acked == 20)
        })
        .await;
        assert!(
            d.try_next().is_none(),
            "the blocked publish was delivered during the alarm"
        );

        srv.broker().alarms().set_memory(false);
        let c = within("the confirm of the blocked publish", confirm)
            .await
            .expect("confirm");
        assert!(c.is_ack());
        let m = d.next().await;
        assert_eq!(m.data, b"late");
        assert!(!publisher.status().blocked());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_connection_keeps_heartbeats_and_is_not_dropped() {
    guard(async {
        let srv = TestServer::start_with(|c| {
            no_monitor(c);
            c.amqp_limits.heartbeat = 1;
        })
        .await;
        let _admin = declare(&srv).await;
        let mut p = handshake_blocked_capable(&srv, 1).await;
        p.open_channel(1).await;
        srv.broker().alarms().set_memory(true);
        raw_publish(&mut p, 1, QUEUE_DECLARED, b"hb").await;
        p.expect_method(10, 60).await;

        // Silent for three heartbeat timeouts (2 s each): the broker keeps
        // sending heartbeats and does not drop us.
        let mut heartbeats = 0;
        let quiet = tokio::time::Instant::now() + Duration::from_secs(6);
        while let Ok(r) = tokio::time::timeout_at(quiet, p.read_unbounded()).await {
            match r {
                Read::Frame(f) if f.kind == raw::FRAME_HEARTBEAT => heartbeats += 1,
                Read::Frame(f) => panic!("unexpected frame while blocked: {f:?}"),
                Read::Closed => panic!("a blocked connection was dropped for missed heartbeats"),
            }
        }
        assert!(heartbeats >= 1, "no heartbeat while blocked");

        srv.broker().alarms().set_memory(false);
        p.expect_method(10, 61).await;
        p.open_channel(2).await;
        eventually("the blocked message to be routed", || {
            ready(&srv, QUEUE_DECLARED) == 1
        })
        .await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_raises_both_alarms_past_their_limits() {
    guard(async {
        let srv = TestServer::start_with(|c| {
            c.alarms.check_interval = Duration::from_millis(20);
            // Limits no machine meets: any resident set is above one
            // byte, any free space below u64::MAX.
            c.alarms.memory_high_watermark = liebre_server::alarms::Watermark::Absolute(1);
            c.alarms.disk_free_limit = u64::MAX;
        })
        .await;
        let alarms = srv.broker().alarms();
        eventually("the monitor to raise both alarms", || {
            alarms.memory() && alarms.disk()
        })
        .await;
        assert_eq!(
            srv.broker()
                .metrics()
                .resource_alarms
                .load(Ordering::Relaxed),
            2
        );
        let _admin = declare(&srv).await;
        let mut p = handshake_blocked_capable(&srv, 0).await;
        p.open_channel(1).await;
        raw_publish(&mut p, 1, QUEUE_DECLARED, b"x").await;
        let f = p.expect_method(10, 60).await;
        assert_eq!(blocked_reason(&f), "low on memory & disk");
        assert_eq!(ready(&srv, QUEUE_DECLARED), 0);
        // Cleared by hand: the monitor acts on crossings only, so it
        // leaves them off.
        alarms.set_memory(false);
        alarms.set_disk(false);
        p.expect_method(10, 61).await;
        eventually("the message to be routed", || {
            ready(&srv, QUEUE_DECLARED) == 1
        })
        .await;
    })
    .await
}
