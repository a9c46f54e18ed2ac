//! Publish/consume through the default exchange, properties, work queues
//! and redelivery.

use std::time::Duration;

use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, ByteArray, DecimalValue, FieldArray};
use lapin::BasicProperties;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_through_default_exchange() {
    guard(async {
        let srv = TestServer::start().await;
        let conn = srv.connect().await;
        let ch = channel(&conn).await;
        declare_queue(&ch, "hello", no_args()).await;
        let mut deliveries = consume(&ch, "hello", "c1", BasicConsumeOptions::default()).await;

        publish(
            &ch,
            "",
            "hello",
            b"Hello, world!",
            BasicProperties::default(),
        )
        .await;

        let d = deliveries.next().await;
        assert_eq!(d.data, b"Hello, world!");
        assert_eq!(d.exchange.as_str(), "");
        assert_eq!(d.routing_key.as_str(), "hello");
        assert!(!d.redelivered);
        assert_eq!(deliveries.tag(), "c1");
        within("ack", d.acker.ack(BasicAckOptions::default()))
            .await
            .expect("ack");

        eventually("the ack to empty the queue", || {
            srv.queue_stats("hello")
                .is_some_and(|s| s.messages_ready == 0 && s.messages_unacknowledged == 0)
        })
        .await;
        let s = srv.queue_stats("hello").expect("queue exists");
        assert_eq!(s.consumers, 1);
    })
    .await
}

fn all_properties() -> BasicProperties {
    let nested = table(vec![
        ("inner-string", long_str("deep")),
        ("inner-int", AMQPValue::LongInt(-7)),
        (
            "inner-table",
            AMQPValue::FieldTable(table(vec![("leaf", AMQPValue::Boolean(true))])),
        ),
    ]);
    let array: FieldArray = vec![
        AMQPValue::LongString("a".into()),
        AMQPValue::LongInt(2),
        AMQPValue::Boolean(false),
        AMQPValue::FieldTable(table(vec![("k", long_str("v"))])),
        AMQPValue::FieldArray(vec![AMQPValue::ShortShortInt(-1)].into()),
    ]
    .into();
    let headers = table(vec![
        ("string", long_str("value")),
        ("bool", AMQPValue::Boolean(true)),
        ("i8", AMQPValue::ShortShortInt(-8)),
        ("u8", AMQPValue::ShortShortUInt(200)),
        ("i16", AMQPValue::ShortInt(-1600)),
        ("u16", AMQPValue::ShortUInt(60000)),
        ("i32", AMQPValue::LongInt(-320_000)),
        ("u32", AMQPValue::LongUInt(4_000_000_000)),
        ("i64", AMQPValue::LongLongInt(-64_000_000_000)),
        ("f32", AMQPValue::Float(1.5)),
        ("f64", AMQPValue::Double(-2.25)),
        (
            "decimal",
            AMQPValue::DecimalValue(DecimalValue {
                scale: 2,
                value: 12345,
            }),
        ),
        ("timestamp", AMQPValue::Timestamp(1_700_000_000)),
        (
            "bytes",
            AMQPValue::ByteArray(ByteArray::from(vec![0u8, 1, 2, 0xFF, 0xCE])),
        ),
        ("void", AMQPValue::Void),
        ("array", AMQPValue::FieldArray(array)),
        ("nested", AMQPValue::FieldTable(nested)),
    ]);
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_content_encoding("gzip".into())
        .with_headers(headers)
        .with_delivery_mode(2)
        .with_priority(7)
        .with_correlation_id("corr-42".into())
        .with_reply_to("replies".into())
        .with_expiration("600000".into())
        .with_message_id("msg-1".into())
        .with_timestamp(1_700_000_123)
        .with_type("order.created".into())
        .with_user_id("guest".into())
        .with_app_id("liebre-it".into())
        .with_cluster_id("cluster-9".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_fourteen_properties_and_body_survive() {
    guard(async {
        let srv = TestServer::start().await;
        let conn = srv.connect().await;
        let ch = channel(&conn).await;
        declare_queue(&ch, "props", no_args()).await;
        let mut deliveries = consume(&ch, "props", "", BasicConsumeOptions::default()).await;

        let props = all_properties();
        let body: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        publish(&ch, "", "props", &body, props.clone()).await;
        let d = deliveries.next().await;
        assert_eq!(d.data, body);
        assert_eq!(d.properties, props, "properties changed in transit");

        // A second delivery on the same consumer: same properties, next tag.
        publish(&ch, "", "props", &body, props.clone()).await;
        let d2 = deliveries.next().await;
        assert_eq!(d2.properties, props);
        assert!(d2.delivery_tag > d.delivery_tag);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_get_returns_properties_unchanged() {
    guard(async {
        let srv = TestServer::start().await;
        let conn = srv.connect().await;
        let ch = confirm_channel(&conn).await;
        declare_queue(&ch, "props-get", no_args()).await;
        let props = all_properties();
        publish_confirmed(&ch, "", "props-get", b"payload", props.clone()).await;
        let m = get(&ch, "props-get", true).await.expect("a message");
        assert_eq!(m.delivery.data, b"payload");
        assert_eq!(m.delivery.properties, props);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_and_multi_frame_bodies() {
    guard(async {
        let srv = TestServer::start().await;
        let conn = srv.connect().await;
        let ch = channel(&conn).await;
        declare_queue(&ch, "bodies", no_args()).await;
        let mut deliveries = consume(
            &ch,
            "bodies",
            "",
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
        )
        .await;
        // frame_max is 128 KiB: 1 MiB needs several body frames each way.
        let big: Vec<u8> = (0..1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        publish(&ch, "", "bodies", b"", BasicProperties::default()).await;
        publish(&ch, "", "bodies", &big, BasicProperties::default()).await;
        publish(&ch, "", "bodies", b"after", BasicProperties::default()).await;
        assert_eq!(deliveries.next().await.data, b"");
        let d = deliveries.next().await;
        assert_eq!(d.data.len(), big.len());
        assert!(d.data == big, "large body corrupted");
        assert_eq!(deliveries.next().await.data, b"after");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_delivered_in_publish_order() {
    guard(async {
        let srv = TestServer::start().await;
        let conn = srv.connect().await;
        let pubch = channel(&conn).await;
        let conch = channel(&conn).await;
        declare_queue(&pubch, "order", no_args()).await;
        let mut deliveries = consume(
            &conch,
            "order",
            "",
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
        )
        .await;
        for i in 0..500 {
            publish(
                &pubch,
                "",
                "order",
                i.to_string().as_bytes(),
                BasicProperties::default(),
            )
            .await;
        }
        for i in 0..500 {
            let d = deliveries.next().await;
            assert_eq!(String::from_utf8_lossy(&d.data), i.to_string());
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_one_fair_dispatch_slow_consumer_gets_one() {
    guard(async {
        let srv = TestServer::start().await;
        let conn = srv.connect().await;
        let fast_ch = channel(&conn).await;
        let slow_ch = channel(&conn).await;
        let pub_ch = confirm_channel(&conn).await;
        declare_queue(&pub_ch, "work", no_args()).await;
        for ch in [&fast_ch, &slow_ch] {
            within("basic.qos", ch.basic_qos(1, BasicQosOptions::default())).await.expect("qos");
        }
        let mut fast = consume(&fast_ch, "work", "fast", BasicConsumeOptions::default()).await;
        let mut slow = consume(&slow_ch, "work", "slow", BasicConsumeOptions::default()).await;

        const N: usize = 10;
        for i in 0..N {
            publish_confirmed(&pub_ch, "", "work", format!("task-{i}").as_bytes(), BasicProperties::default()).await;
        }

        // The slow consumer gets exactly one message and never acks it.
        let slow_msg = slow.next().await;
        let slow_body = String::from_utf8_lossy(&slow_msg.data).into_owned();
        assert!(
            slow_body == "task-0" || slow_body == "task-1",
            "round robin: the second consumer should get one of the first two messages, got {slow_body}"
        );

        // The fast consumer acks each message and receives all the others, in order.
        let mut fast_bodies = Vec::new();
        for _ in 0..N - 1 {
            let d = fast.next().await;
            fast_bodies.push(String::from_utf8_lossy(&d.data).into_owned());
            within("ack", d.acker.ack(BasicAckOptions::default())).await.expect("ack");
        }
        let expected: Vec<String> = (0..N).map(|i| format!("task-{i}")).filter(|b| *b != slow_body).collect();
        assert_eq!(fast_bodies, expected);

        // While its message is unacked the slow consumer gets nothing more.
        slow.assert_nothing_for(Duration::from_millis(300), "prefetch=1 consumer with an unacked message")
            .await;
        eventually("stats to settle", || {
            srv.queue_stats("work")
                .is_some_and(|s| s.messages_ready == 0 && s.messages_unacknowledged == 1)
        })
        .await;
        within("ack", slow_msg.acker.ack(BasicAckOptions::default())).await.expect("ack");
        eventually("last ack", || {
            srv.queue_stats("work").is_some_and(|s| s.messages_unacknowledged == 0)
        })
        .await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_consumers_share_a_queue_round_robin() {
    guard(async {
        let srv = TestServer::start().await;
        let conn = srv.connect().await;
        let a_ch = channel(&conn).await;
        let b_ch = channel(&conn).await;
        let pub_ch = confirm_channel(&conn).await;
        declare_queue(&pub_ch, "rr", no_args()).await;
        let mut a = consume(
            &a_ch,
            "rr",
            "a",
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
        )
        .await;
        let mut b = consume(
            &b_ch,
            "rr",
            "b",
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
        )
        .await;
        for i in 0..10 {
            publish_confirmed(
                &pub_ch,
                "",
                "rr",
                format!("{i}").as_bytes(),
                BasicProperties::default(),
            )
            .await;
        }
        let mut got_a = Vec::new();
        let mut got_b = Vec::new();
        for _ in 0..5 {
            got_a.push(
                String::from_utf8_lossy(&a.next().await.data)
                    .parse::<u32>()
                    .unwrap(),
            );
            got_b.push(
                String::from_utf8_lossy(&b.next().await.data)
                    .parse::<u32>()
                    .unwrap(),
            );
        }
        a.assert_nothing_for(Duration::from_millis(100), "a got more than half")
            .await;
        b.assert_nothing_for(Duration::from_millis(100), "b got more than half")
            .await;
        // Strict alternation, as RabbitMQ does: one consumer gets the even
        // messages, the other the odd ones, each in order.
        let (evens, odds) = if got_a[0] == 0 {
            (&got_a, &got_b)
        } else {
            (&got_b, &got_a)
        };
        assert_eq!(*evens, [0, 2, 4, 6, 8], "a={got_a:?} b={got_b:?}");
        assert_eq!(*odds, [1, 3, 5, 7, 9], "a={got_a:?} b={got_b:?}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_messages_of_a_closed_channel_are_redelivered_in_order() {
    guard(async {
        let srv = TestServer::start().await;
        let conn = srv.connect().await;
        let first_ch = channel(&conn).await;
        let second_ch = channel(&conn).await;
        let pub_ch = confirm_channel(&conn).await;
        declare_queue(&pub_ch, "redeliver", no_args()).await;

        let mut first = consume(
            &first_ch,
            "redeliver",
            "first",
            BasicConsumeOptions::default(),
        )
        .await;
        for i in 0..3 {
            publish_confirmed(
                &pub_ch,
                "",
                "redeliver",
                format!("m{i}").as_bytes(),
                BasicProperties::default(),
            )
            .await;
        }
        for i in 0..3 {
            let d = first.next().await;
            assert_eq!(d.data, format!("m{i}").as_bytes());
            assert!(!d.redelivered);
        }
        // The second consumer joins while everything is unacked: nothing for it.
        let mut second = consume(
            &second_ch,
            "redeliver",
            "second",
            BasicConsumeOptions::default(),
        )
        .await;
        second
            .assert_nothing_for(
                Duration::from_millis(200),
                "all messages are unacked by the first consumer",
            )
            .await;

        within("channel.close", first_ch.close(200, "bye".into()))
            .await
            .expect("close");

        for i in 0..3 {
            let d = second.next().await;
            assert_eq!(
                String::from_utf8_lossy(&d.data),
                format!("m{i}"),
                "redelivery order"
            );
            assert!(d.redelivered, "redelivered flag on m{i}");
            within("ack", d.acker.ack(BasicAckOptions::default()))
                .await
                .expect("ack");
        }
        eventually("queue drained", || {
            srv.queue_stats("redeliver")
                .is_some_and(|s| s.messages_ready == 0 && s.messages_unacknowledged == 0)
        })
        .await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_messages_of_a_closed_connection_are_requeued() {
    guard(async {
        let srv = TestServer::start().await;
        let keeper = srv.connect().await;
        let kch = confirm_channel(&keeper).await;
        declare_queue(&kch, "requeue-conn", no_args()).await;
        for i in 0..2 {
            publish_confirmed(
                &kch,
                "",
                "requeue-conn",
                format!("m{i}").as_bytes(),
                BasicProperties::default(),
            )
            .await;
        }
        let other = srv.connect().await;
        let och = channel(&other).await;
        let mut c = consume(&och, "requeue-conn", "", BasicConsumeOptions::default()).await;
        c.next().await;
        c.next().await;
        within("connection.close", other.close(200, "bye".into()))
            .await
            .expect("close");
        eventually("messages back to ready", || {
            srv.queue_stats("requeue-conn").is_some_and(|s| {
                s.messages_ready == 2 && s.messages_unacknowledged == 0 && s.consumers == 0
            })
        })
        .await;
        let m = get(&kch, "requeue-conn", true).await.expect("m0");
        assert_eq!(m.delivery.data, b"m0");
        assert!(m.delivery.redelivered);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requeued_messages_go_back_to_their_original_position() {
    guard(async {
        let srv = TestServer::start().await;
        let conn = srv.connect().await;
        let pch = confirm_channel(&conn).await;
        let cch = channel(&conn).await;
        declare_queue(&pch, "positions", no_args()).await;
        for i in 0..6 {
            publish_confirmed(
                &pch,
                "",
                "positions",
                format!("m{i}").as_bytes(),
                BasicProperties::default(),
            )
            .await;
        }
        within("basic.qos", cch.basic_qos(3, BasicQosOptions::default()))
            .await
            .expect("qos");
        let mut c = consume(&cch, "positions", "", BasicConsumeOptions::default()).await;
        let d0 = c.next().await;
        let d1 = c.next().await;
        let d2 = c.next().await;
        assert_eq!(
            [&d0.data[..], &d1.data[..], &d2.data[..]],
            [b"m0", b"m1", b"m2"]
        );
        within("ack m1", d1.acker.ack(BasicAckOptions::default()))
            .await
            .expect("ack");
        // m3 is delivered in m1's place; then the channel goes away.
        let d3 = c.next().await;
        assert_eq!(d3.data, b"m3");
        within("channel.close", cch.close(200, "bye".into()))
            .await
            .expect("close");
        eventually("requeue", || {
            srv.queue_stats("positions")
                .is_some_and(|s| s.messages_ready == 5 && s.messages_unacknowledged == 0)
        })
        .await;
        let mut got = Vec::new();
        while let Some(m) = get(&pch, "positions", true).await {
            got.push((
                String::from_utf8_lossy(&m.delivery.data).into_owned(),
                m.delivery.redelivered,
            ));
        }
        let expected: Vec<(String, bool)> = [
            ("m0", true),
            ("m2", true),
            ("m3", true),
            ("m4", false),
            ("m5", false),
        ]
        .iter()
        .map(|(b, r)| (b.to_string(), *r))
        .collect();
        assert_eq!(got, expected);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_basic_get_is_requeued_when_its_channel_closes() {
    guard(async {
        let srv = TestServer::start().await;
        let conn = srv.connect().await;
        let pch = confirm_channel(&conn).await;
        let gch = channel(&conn).await;
        declare_queue(&pch, "get-requeue", no_args()).await;
        publish_confirmed(&pch, "", "get-requeue", b"x", BasicProperties::default()).await;
        let m = get(&gch, "get-requeue", false).await.expect("message");
        assert!(!m.delivery.redelivered);
        assert_eq!(
            srv.queue_stats("get-requeue")
                .map(|s| s.messages_unacknowledged),
            Some(1)
        );
        within("channel.close", gch.close(200, "bye".into()))
            .await
            .expect("close");
        eventually("requeue", || {
            srv.queue_stats("get-requeue")
                .is_some_and(|s| s.messages_ready == 1)
        })
        .await;
        let m = get(&pch, "get-requeue", true).await.expect("message again");
        assert!(m.delivery.redelivered);
    })
    .await
}
