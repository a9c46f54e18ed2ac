//! Memory and disk alarms over MQTT: a connection that publishes stops
//! being read until the alarm clears (its keepalive does not run out
//! meanwhile); subscribers keep receiving. The monitor is off; the alarms
//! are forced through `Broker::alarms()`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// More than the 128 QoS 1 messages in flight to a 3.1.1 client, and more
/// than the subscriber's Receive Maximum: the backlog only drains if the
/// subscriber's PUBACKs are read during the alarm.
const BACKLOG: usize = 200;

async fn start() -> TestServer {
    TestServer::start_with(|c| c.alarms.check_interval = Duration::ZERO).await
}

fn blocked_connections(srv: &TestServer) -> u64 {
    srv.server()
        .broker()
        .metrics()
        .blocked_connections
        .load(Ordering::Relaxed)
}

/// Poll `cond` every 20 ms until it holds; fail after [`WAIT`].
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    within(what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

async fn publisher_waits_while_subscriber_drains(v: V, publisher_over_ws: bool) {
    let srv = start().await;
    let topic = unique("alarm/t");
    let sub_id = unique("alarm-sub");
    let sub_opts = || {
        let mut o = Opts::new(&sub_id).persistent();
        o.inflight = Some(10);
        o
    };
    let mut sub = srv.client(v, sub_opts()).await;
    sub.subscribe(&topic, 1).await;
    sub.disconnect().await;

    let mut publ_opts = Opts::new(&unique("alarm-pub"));
    if publisher_over_ws {
        publ_opts = publ_opts.ws("/mqtt");
    }
    let mut publ = Client::connect(
        if publisher_over_ws { srv.ws } else { srv.mqtt },
        v,
        publ_opts,
    )
    .await;
    for i in 0..BACKLOG {
        publ.publish(&topic, 1, false, format!("backlog-{i}").as_bytes())
            .await;
    }

    let alarms = srv.server().broker().alarms();
    alarms.set_memory(true);
    for i in 0..10 {
        publ.publish(&topic, 0, false, format!("live-{i}").as_bytes())
            .await;
    }
    eventually("the publisher to be blocked", || {
        blocked_connections(&srv) == 1
    })
    .await;

    // The subscriber comes back during the alarm and drains its backlog.
    let mut sub = srv.client(v, sub_opts()).await;
    assert!(sub.session_present);
    let got = sub.recv_bodies(BACKLOG).await;
    let want: Vec<String> = (0..BACKLOG).map(|i| format!("backlog-{i}")).collect();
    assert_eq!(got, want);
    assert_eq!(
        blocked_connections(&srv),
        1,
        "the publisher is still blocked"
    );
    assert!(
        sub.try_recv().is_none(),
        "a message published during the alarm arrived before it cleared"
    );

    alarms.set_memory(false);
    let got = sub.recv_bodies(10).await;
    let want: Vec<String> = (0..10).map(|i| format!("live-{i}")).collect();
    assert_eq!(got, want);
    assert_eq!(blocked_connections(&srv), 0);
    publ.publish(&topic, 1, false, b"after").await;
    assert_eq!(sub.recv().await.body(), "after");
    publ.disconnect().await;
    sub.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_waits_while_subscriber_drains_v311() {
    guard(publisher_waits_while_subscriber_drains(V::V4, false)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_waits_while_subscriber_drains_v5() {
    guard(publisher_waits_while_subscriber_drains(V::V5, false)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_waits_while_subscriber_drains_websocket() {
    guard(publisher_waits_while_subscriber_drains(V::V4, true)).await
}

/// A 3.1.1 packet with a one-byte remaining length.
fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    assert!(body.len() < 128);
    let mut p = vec![first, body.len() as u8];
    p.extend_from_slice(body);
    p
}

fn mqtt_str(s: &str) -> Vec<u8> {
    let mut out = (s.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(s.as_bytes());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_publisher_outlives_its_keepalive() {
    guard(async {
        let srv = start().await;
        let topic = unique("alarm/ka");
        let mut sub = srv.client(V::V4, Opts::new(&unique("ka-sub"))).await;
        sub.subscribe(&topic, 0).await;

        let mut s = within("TCP connect", TcpStream::connect(srv.mqtt))
            .await
            .expect("connect");
        // CONNECT 3.1.1, clean session, keepalive 1 s.
        let mut connect = mqtt_str("MQTT");
        connect.extend_from_slice(&[4, 0x02, 0, 1]);
        connect.extend(mqtt_str(&unique("ka-pub")));
        s.write_all(&packet(0x10, &connect)).await.expect("write");
        let mut connack = [0u8; 4];
        within("CONNACK", s.read_exact(&mut connack))
            .await
            .expect("CONNACK");
        assert_eq!(connack, [0x20, 2, 0, 0]);

        srv.server().broker().alarms().set_disk(true);
        let mut publish = mqtt_str(&topic);
        publish.extend_from_slice(b"held");
        s.write_all(&packet(0x30, &publish)).await.expect("write");
        eventually("the publisher to be blocked", || {
            blocked_connections(&srv) == 1
        })
        .await;

        // Silent for twice the 1.5 s the keepalive allows: not dropped.
        let mut byte = [0u8; 1];
        match tokio::time::timeout(Duration::from_secs(3), s.read(&mut byte)).await {
            Err(_) => {}
            Ok(Ok(0)) | Ok(Err(_)) => panic!("a blocked publisher was dropped"),
            Ok(Ok(_)) => panic!("unexpected bytes to a blocked publisher"),
        }

        srv.server().broker().alarms().set_disk(false);
        assert_eq!(sub.recv().await.body(), "held");
        // Read again: PINGREQ is answered.
        s.write_all(&[0xC0, 0]).await.expect("write");
        let mut pingresp = [0u8; 2];
        within("PINGRESP", s.read_exact(&mut pingresp))
            .await
            .expect("PINGRESP");
        assert_eq!(pingresp, [0xD0, 0]);
        sub.disconnect().await;
    })
    .await
}
