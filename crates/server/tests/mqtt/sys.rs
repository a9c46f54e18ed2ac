//! `$` topics and `$SYS`: what reaches whom, and what the counters count.

use std::time::Duration;

use crate::support::*;

/// A broker publishing `$SYS` every 100 ms.
async fn sys_server() -> TestServer {
    TestServer::start_with(|c| c.sys_interval = Duration::from_millis(100)).await
}

/// `$SYS` messages never reach a session queue through `#` or `+/...`
/// (MQTT §4.7.2): they are not even routed there, so a `#` subscriber costs
/// nothing per `$SYS` tick. `$SYS/#` gets them, and so does an AMQP queue
/// bound with `#` (AMQP has no such rule).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dollar_topics_never_reach_a_wildcard_subscription() {
    guard(async {
        let srv = sys_server().await;
        let mut all = srv.client(V::V5, Opts::new("wild-1")).await;
        assert_eq!(all.subscribe("#", 1).await, vec![1]);
        assert_eq!(all.subscribe("+/broker/#", 1).await, vec![1]);
        let mut sys = srv.client(V::V4, Opts::new("sys-1")).await;
        assert_eq!(sys.subscribe("$SYS/broker/uptime", 0).await, vec![0]);
        let conn = amqp_connect(&srv).await;
        let ch = amqp_channel(&conn).await;
        bound_queue(&ch, "amqp-all", "#").await;
        let mut amqp = amqp_consume(&ch, "amqp-all").await;

        // Retained $SYS/broker/uptime first (from the first tick), then
        // fresh ones: wait for two ticks' worth.
        sys.recv().await;
        sys.recv().await;
        let d = amqp.next().await;
        assert!(
            d.routing_key.as_str().starts_with("$SYS."),
            "{}",
            d.routing_key
        );
        assert!(all.recv_for(Duration::from_millis(300)).await.is_none());
        let queue = srv
            .server()
            .broker()
            .vhost("/")
            .and_then(|v| v.queue("mqtt-subscription-wild-1qos1"))
            .expect("session queue");
        assert_eq!(
            queue.stats().published,
            0,
            "no $SYS message was routed to the session queue"
        );
        // An ordinary topic does reach it.
        let mut p = srv.client(V::V4, Opts::new("pub-1")).await;
        p.publish("a/b", 1, false, b"x").await;
        assert_eq!(all.recv().await.topic, "a/b");
        assert_eq!(queue.stats().published, 1);
    })
    .await;
}
