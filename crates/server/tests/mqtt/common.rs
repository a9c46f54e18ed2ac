//! Scenarios that hold for MQTT 3.1.1 and 5.0 alike; each runs once per
//! version (`<scenario>::v311` and `<scenario>::v5`).
//!
//! Where a test must show that something does *not* arrive, it publishes a
//! sentinel afterwards on a path that preserves order and asserts that the
//! sentinel is the next message: no quiet-period guessing.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::support::*;

macro_rules! both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use crate::support::{guard, V};
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn v311() {
                guard(super::$name(V::V4)).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn v5() {
                guard(super::$name(V::V5)).await
            }
        }
    )*};
}

both!(
    qos_round_trips,
    qos_is_downgraded_to_the_subscription,
    wildcards,
    sys_topics_are_not_matched_by_wildcards,
    retained_messages,
    persistent_session_gets_offline_messages_in_order,
    persistent_session_survives_repeated_abrupt_drops,
    clean_session_gets_nothing_from_before,
    will_on_abrupt_drop_not_on_disconnect,
    client_id_takeover,
    client_id_takeover_of_persistent_session,
    shared_subscription_spreads_messages,
    zero_length_client_id,
    bad_password_is_refused,
    anonymous_from_loopback_is_accepted,
    unsubscribe_stops_delivery,
);

async fn qos_round_trips(v: V) {
    let srv = TestServer::start().await;
    let mut sub = srv.client(v, Opts::new("rt-sub")).await;
    assert_eq!(sub.subscribe("rt/q", 2).await, vec![2]);
    let mut publ = srv.client(v, Opts::new("rt-pub")).await;
    for qos in 0..=2u8 {
        let body = format!("q{qos}");
        publ.publish("rt/q", qos, false, body.as_bytes()).await;
        let m = sub.recv().await;
        assert_eq!(m.topic, "rt/q");
        assert_eq!(m.body(), body);
        assert_eq!(m.qos, qos, "delivered QoS of a QoS {qos} publish");
        assert!(!m.retain);
    }
    // A larger body, byte for byte.
    let big: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    publ.publish("rt/q", 1, false, &big).await;
    assert_eq!(sub.recv().await.payload, big);
    publ.disconnect().await;
    sub.disconnect().await;
}

async fn qos_is_downgraded_to_the_subscription(v: V) {
    let srv = TestServer::start().await;
    let mut s0 = srv.client(v, Opts::new("dg-0")).await;
    assert_eq!(s0.subscribe("dg/t", 0).await, vec![0]);
    let mut s1 = srv.client(v, Opts::new("dg-1")).await;
    assert_eq!(s1.subscribe("dg/t", 1).await, vec![1]);
    let mut publ = srv.client(v, Opts::new("dg-pub")).await;
    publ.publish("dg/t", 2, false, b"x").await;
    assert_eq!(s0.recv().await.qos, 0);
    assert_eq!(s1.recv().await.qos, 1);
    publ.disconnect().await;
}

async fn wildcards(v: V) {
    let srv = TestServer::start().await;
    let mut plus = srv.client(v, Opts::new("wc-plus")).await;
    plus.subscribe("w/+/temp", 1).await;
    let mut hash = srv.client(v, Opts::new("wc-hash")).await;
    hash.subscribe("w/#", 1).await;
    let mut mid = srv.client(v, Opts::new("wc-mid")).await;
    mid.subscribe("+/x/#", 1).await;
    let mut publ = srv.client(v, Opts::new("wc-pub")).await;
    for t in ["w/x/temp", "w/x/y/temp", "w", "other/x", "w/y/temp"] {
        publ.publish(t, 1, false, t.as_bytes()).await;
    }
    assert_eq!(
        plus.recv_bodies(2).await,
        ["w/x/temp", "w/y/temp"],
        "w/+/temp"
    );
    assert_eq!(
        hash.recv_bodies(4).await,
        ["w/x/temp", "w/x/y/temp", "w", "w/y/temp"],
        "w/# (matches the parent level too)"
    );
    assert_eq!(
        mid.recv_bodies(3).await,
        ["w/x/temp", "w/x/y/temp", "other/x"],
        "+/x/#"
    );
    publ.disconnect().await;
}

async fn sys_topics_are_not_matched_by_wildcards(v: V) {
    let srv = TestServer::start().await;
    let mut all = srv.client(v, Opts::new("sys-all")).await;
    all.subscribe("#", 1).await;
    let mut plus = srv.client(v, Opts::new("sys-plus")).await;
    plus.subscribe("+/x", 1).await;
    // (Exact filter: the broker publishes its own `$SYS/broker/...` topics.)
    let mut sys = srv.client(v, Opts::new("sys-sys")).await;
    sys.subscribe("$SYS/x", 1).await;
    let mut publ = srv.client(v, Opts::new("sys-pub")).await;
    publ.publish("$SYS/x", 1, false, b"sys").await;
    publ.publish("n/x", 1, false, b"sentinel").await;
    let m = all.recv().await;
    assert_eq!(
        (m.topic.as_str(), m.body().as_str()),
        ("n/x", "sentinel"),
        "# must not match $SYS/x"
    );
    let m = plus.recv().await;
    assert_eq!(
        (m.topic.as_str(), m.body().as_str()),
        ("n/x", "sentinel"),
        "+/x must not match $SYS/x"
    );
    let m = sys.recv().await;
    assert_eq!((m.topic.as_str(), m.body().as_str()), ("$SYS/x", "sys"));
    publ.disconnect().await;
}

async fn retained_messages(v: V) {
    let srv = TestServer::start().await;
    let mut publ = srv.client(v, Opts::new("ret-pub")).await;
    publ.publish("ret/a", 1, true, b"A").await;
    publ.publish("ret/b", 1, true, b"B").await;

    // Exact filter: the retained message comes with the retain flag.
    let mut s1 = srv.client(v, Opts::new("ret-s1")).await;
    s1.subscribe("ret/a", 1).await;
    let m = s1.recv().await;
    assert_eq!((m.topic.as_str(), m.body().as_str()), ("ret/a", "A"));
    assert!(
        m.retain,
        "retained message sent on subscribe has RETAIN set"
    );
    assert_eq!(m.qos, 1);

    // Wildcard filter: both.
    let mut s2 = srv.client(v, Opts::new("ret-s2")).await;
    s2.subscribe("ret/+", 1).await;
    let got: BTreeSet<(String, String, bool)> = [s2.recv().await, s2.recv().await]
        .into_iter()
        .map(|m| (m.topic.clone(), m.body(), m.retain))
        .collect();
    assert_eq!(
        got,
        BTreeSet::from([
            ("ret/a".into(), "A".into(), true),
            ("ret/b".into(), "B".into(), true)
        ])
    );

    // A live retained publish reaches existing subscribers without RETAIN
    // (3.1.1 §3.3.1.3; 5.0 without Retain As Published), and replaces the
    // stored one.
    publ.publish("ret/a", 1, true, b"A2").await;
    let m = s1.recv().await;
    assert_eq!(m.body(), "A2");
    assert!(
        !m.retain,
        "live delivery of a retained publish has RETAIN 0"
    );

    // An empty retained publish clears it.
    publ.publish("ret/a", 1, true, b"").await;
    let mut s3 = srv.client(v, Opts::new("ret-s3")).await;
    s3.subscribe("ret/+", 1).await;
    let m = s3.recv().await;
    assert_eq!(
        (m.topic.as_str(), m.body().as_str(), m.retain),
        ("ret/b", "B", true),
        "only ret/b is still retained"
    );
    publ.publish("ret/z", 1, false, b"sentinel").await;
    let m = s3.recv().await;
    assert_eq!(
        (m.topic.as_str(), m.body().as_str()),
        ("ret/z", "sentinel"),
        "ret/a was cleared by the empty retained publish"
    );
    publ.disconnect().await;
}

async fn persistent_session_gets_offline_messages_in_order(v: V) {
    let srv = TestServer::start().await;
    let id = "ps-client";
    let mut sub = srv.client(v, Opts::new(id).persistent()).await;
    assert!(!sub.session_present, "first connection has no session");
    sub.subscribe("ps/t", 1).await;
    sub.disconnect().await;

    let mut publ = srv.client(v, Opts::new("ps-pub")).await;
    let sent: Vec<String> = (0..5).map(|i| format!("m{i}")).collect();
    for b in &sent {
        publ.publish("ps/t", 1, false, b.as_bytes()).await;
    }
    // QoS 0 published while offline may be dropped or queued; not checked.

    let mut sub = srv.client(v, Opts::new(id).persistent()).await;
    assert!(sub.session_present, "CONNACK session present");
    let mut got = Vec::new();
    for _ in 0..sent.len() {
        let m = sub.recv().await;
        assert_eq!(m.qos, 1);
        got.push(m.body());
    }
    assert_eq!(got, sent, "offline messages, in order");

    // The subscription survived: no SUBSCRIBE this time.
    publ.publish("ps/t", 1, false, b"after").await;
    assert_eq!(sub.recv().await.body(), "after");

    // And again after an abrupt drop.
    sub.kill().await;
    publ.publish("ps/t", 1, false, b"while-dropped").await;
    let mut sub = srv.client(v, Opts::new(id).persistent()).await;
    assert!(sub.session_present);
    let mut m = sub.recv().await;
    if m.body() == "after" {
        // Killed before its PUBACK left: resent, marked DUP (at least once).
        assert!(m.dup, "a resent message must carry DUP");
        m = sub.recv().await;
    }
    assert_eq!(m.body(), "while-dropped");
    sub.disconnect().await;
    publ.disconnect().await;
}

/// Drop the socket, publish, reconnect, many times: every message must
/// arrive. (Races between the dying connection and the new one show up
/// here: a delivery handed to the old connection must come back.)
async fn persistent_session_survives_repeated_abrupt_drops(v: V) {
    let srv = TestServer::start().await;
    let id = "drop-loop";
    let queue = "mqtt-subscription-drop-loopqos1";
    let mut sub = srv.client(v, Opts::new(id).persistent()).await;
    sub.subscribe("dl/t", 1).await;
    let mut publ = srv.client(v, Opts::new("dl-pub")).await;
    for i in 0..200i32 {
        sub.kill().await;
        let body = format!("m{i}");
        publ.publish("dl/t", 1, false, body.as_bytes()).await;
        sub = srv.client(v, Opts::new(id).persistent()).await;
        assert!(sub.session_present, "iteration {i}: session present");
        // At least once: the previous message may come again first (the
        // socket died before its PUBACK left), marked DUP; nothing else may.
        let mut m = sub.recv_for(WAIT).await;
        while let Some(dup) = m.as_ref().filter(|m| m.body() != body) {
            let prev = format!("m{}", i32::wrapping_sub(i, 1));
            assert!(
                dup.dup && dup.body() == prev,
                "iteration {i}: unexpected {:?}",
                dup.body()
            );
            m = sub.recv_for(WAIT).await;
        }
        match m {
            Some(m) => assert_eq!(m.body(), body, "iteration {i}"),
            None => {
                let stats = srv
                    .server()
                    .broker()
                    .vhost("/")
                    .and_then(|vh| vh.queue(queue))
                    .map(|q| q.stats());
                panic!(
                    "iteration {i}: {body:?} published while the session was \
                     offline never arrived; session queue: {stats:?}"
                );
            }
        }
    }
    sub.disconnect().await;
    publ.disconnect().await;
}

async fn clean_session_gets_nothing_from_before(v: V) {
    let srv = TestServer::start().await;
    let mut publ = srv.client(v, Opts::new("cs-pub")).await;

    // A clean session that disconnects is gone.
    let mut sub = srv.client(v, Opts::new("cs-1")).await;
    sub.subscribe("cs/t", 1).await;
    sub.disconnect().await;
    publ.publish("cs/t", 1, false, b"lost-1").await;
    let mut sub = srv.client(v, Opts::new("cs-1")).await;
    assert!(!sub.session_present);
    publ.publish("cs/t", 1, false, b"not-subscribed").await;
    sub.subscribe("cs/t", 1).await;
    publ.publish("cs/t", 1, false, b"sentinel").await;
    assert_eq!(sub.recv().await.body(), "sentinel");
    sub.disconnect().await;

    // A persistent session is discarded by a clean reconnect.
    let mut sub = srv.client(v, Opts::new("cs-2").persistent()).await;
    sub.subscribe("cs/u", 1).await;
    sub.disconnect().await;
    publ.publish("cs/u", 1, false, b"lost-2").await;
    let mut sub = srv.client(v, Opts::new("cs-2")).await;
    assert!(!sub.session_present, "clean reconnect: no session present");
    sub.subscribe("cs/u", 1).await;
    publ.publish("cs/u", 1, false, b"sentinel").await;
    assert_eq!(sub.recv().await.body(), "sentinel");
    sub.disconnect().await;
    publ.disconnect().await;
}

async fn will_on_abrupt_drop_not_on_disconnect(v: V) {
    let srv = TestServer::start().await;
    let mut watcher = srv.client(v, Opts::new("will-watch")).await;
    watcher.subscribe("will/#", 1).await;

    let a = srv
        .client(v, Opts::new("will-a").will("will/a", b"a-gone", 1, false))
        .await;
    a.kill().await;
    let m = watcher.recv().await;
    assert_eq!((m.topic.as_str(), m.body().as_str()), ("will/a", "a-gone"));
    assert_eq!(m.qos, 1);

    let b = srv
        .client(v, Opts::new("will-b").will("will/b", b"b-gone", 1, false))
        .await;
    b.disconnect().await;
    let mut publ = srv.client(v, Opts::new("will-pub")).await;
    publ.publish("will/sentinel", 1, false, b"sentinel").await;
    let m = watcher.recv().await;
    assert_eq!(
        (m.topic.as_str(), m.body().as_str()),
        ("will/sentinel", "sentinel"),
        "no will after a normal DISCONNECT"
    );

    // A retained will is kept for later subscribers.
    let c = srv
        .client(v, Opts::new("will-c").will("will/c", b"c-gone", 1, true))
        .await;
    c.kill().await;
    assert_eq!(watcher.recv().await.body(), "c-gone");
    let mut late = srv.client(v, Opts::new("will-late")).await;
    late.subscribe("will/c", 1).await;
    let m = late.recv().await;
    assert_eq!(m.body(), "c-gone");
    assert!(m.retain);
    publ.disconnect().await;
}

async fn client_id_takeover(v: V) {
    let srv = TestServer::start().await;
    let mut first = srv.client(v, Opts::new("dup-id")).await;
    first.subscribe("to/t", 1).await;
    let mut second = srv.client(v, Opts::new("dup-id")).await;
    let reason = first.closed().await;
    if v == V::V5 {
        assert_eq!(
            reason,
            Some(0x8E),
            "5.0: the old connection gets DISCONNECT Session Taken Over"
        );
    }
    // The new (clean) session works once the old connection is gone.
    assert_eq!(
        second.subscribe("to/t", 1).await,
        vec![1],
        "SUBACK of the new connection after takeover"
    );
    second.publish("to/t", 1, false, b"mine").await;
    assert_eq!(second.recv().await.body(), "mine");
    second.disconnect().await;
}

async fn client_id_takeover_of_persistent_session(v: V) {
    let srv = TestServer::start().await;
    let mut first = srv.client(v, Opts::new("dup-ps").persistent()).await;
    first.subscribe("tp/t", 1).await;
    let mut second = srv.client(v, Opts::new("dup-ps").persistent()).await;
    assert!(
        second.session_present,
        "the session is taken over, not replaced"
    );
    let reason = first.closed().await;
    if v == V::V5 {
        assert_eq!(reason, Some(0x8E));
    }
    // The subscription came along.
    let mut publ = srv.client(v, Opts::new("tp-pub")).await;
    publ.publish("tp/t", 1, false, b"kept").await;
    assert_eq!(second.recv().await.body(), "kept");
    publ.disconnect().await;
    second.disconnect().await;
}

async fn shared_subscription_spreads_messages(v: V) {
    let srv = TestServer::start().await;
    let mut s1 = srv.client(v, Opts::new("sh-1")).await;
    assert_eq!(s1.subscribe("$share/g/sh/t", 1).await, vec![1]);
    let mut s2 = srv.client(v, Opts::new("sh-2")).await;
    assert_eq!(s2.subscribe("$share/g/sh/t", 1).await, vec![1]);
    let mut publ = srv.client(v, Opts::new("sh-pub")).await;
    for i in 0..10 {
        publ.publish("sh/t", 1, false, format!("{i}").as_bytes())
            .await;
    }
    let (mut a, mut b) = (Vec::new(), Vec::new());
    within("10 shared deliveries", async {
        while a.len() + b.len() < 10 {
            while let Some(m) = s1.try_recv() {
                a.push(m.body());
            }
            while let Some(m) = s2.try_recv() {
                b.push(m.body());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let all: BTreeSet<String> = a.iter().chain(&b).cloned().collect();
    assert_eq!(all.len(), 10, "each message once: {a:?} {b:?}");
    assert_eq!(a.len() + b.len(), 10, "no duplicates: {a:?} {b:?}");
    assert!(
        !a.is_empty() && !b.is_empty(),
        "both members get some: {a:?} {b:?}"
    );
    // Nothing more arrives: a sentinel on a plain subscription of s1 comes
    // next (its shared queue is drained).
    s1.subscribe("sh/sentinel", 1).await;
    publ.publish("sh/sentinel", 1, false, b"sentinel").await;
    assert_eq!(s1.recv().await.body(), "sentinel");
    publ.disconnect().await;
}

async fn zero_length_client_id(v: V) {
    let srv = TestServer::start().await;
    let mut c = srv.client(v, Opts::new("")).await;
    if v == V::V5 {
        let id = c
            .assigned_id
            .clone()
            .expect("5.0: Assigned Client Identifier");
        assert!(!id.is_empty());
    }
    c.subscribe("zl/t", 1).await;
    c.publish("zl/t", 1, false, b"x").await;
    assert_eq!(c.recv().await.body(), "x");
    c.disconnect().await;
}

async fn bad_password_is_refused(v: V) {
    let srv = TestServer::start().await;
    match srv
        .try_client(v, Opts::new("badpw").credentials("guest", "wrong"))
        .await
    {
        Ok(_) => panic!("a bad password was accepted"),
        Err(Refused::Code(name, code)) => {
            assert_eq!(name, "BadUserNamePassword");
            assert_eq!(code, if v == V::V5 { 0x86 } else { 4 });
        }
        Err(e) => panic!("expected CONNACK BadUserNamePassword, got {e:?}"),
    }
    match srv
        .try_client(v, Opts::new("nouser").credentials("nobody", "x"))
        .await
    {
        Ok(_) => panic!("an unknown user was accepted"),
        Err(Refused::Code(name, _)) => assert_eq!(name, "BadUserNamePassword"),
        Err(e) => panic!("expected CONNACK BadUserNamePassword, got {e:?}"),
    }
    // The right password works.
    let c = srv
        .client(v, Opts::new("goodpw").credentials("guest", "guest"))
        .await;
    c.disconnect().await;
}

async fn anonymous_from_loopback_is_accepted(v: V) {
    let srv = TestServer::start().await;
    assert_round_trip(&srv, v, "anon/t").await;
}

async fn unsubscribe_stops_delivery(v: V) {
    let srv = TestServer::start().await;
    let mut sub = srv.client(v, Opts::new("un-sub")).await;
    sub.subscribe("un/a", 1).await;
    sub.subscribe("un/b", 1).await;
    let mut publ = srv.client(v, Opts::new("un-pub")).await;
    publ.publish("un/a", 1, false, b"a1").await;
    assert_eq!(sub.recv().await.body(), "a1");
    sub.unsubscribe("un/a").await;
    publ.publish("un/a", 1, false, b"a2").await;
    publ.publish("un/b", 1, false, b"sentinel").await;
    assert_eq!(sub.recv().await.body(), "sentinel");
    publ.disconnect().await;
}
