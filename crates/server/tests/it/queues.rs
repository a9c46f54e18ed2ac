//! basic.get, nack/reject, dead-lettering, TTL, length limits, queue
//! lifecycle (exclusive, auto-delete, delete, purge).

use std::time::Duration;

use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicRejectOptions,
    QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::types::AMQPValue;
use lapin::{BasicProperties, Channel, ExchangeKind};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_get_and_get_empty() {
    guard(async {
        let srv = TestServer::start().await;
        let conn = srv.connect().await;
        let ch = confirm_channel(&conn).await;
        declare_queue(&ch, "g", no_args()).await;
        assert!(
            get(&ch, "g", false).await.is_none(),
            "get on an empty queue"
        );
        publish_confirmed(&ch, "", "g", b"one", BasicProperties::default()).await;
        publish_confirmed(&ch, "", "g", b"two", BasicProperties::default()).await;
        let m = get(&ch, "g", true).await.expect("first");
        assert_eq!(m.delivery.data, b"one");
        assert_eq!(m.message_count, 1, "message_count is what remains");
        assert_eq!(m.delivery.routing_key.as_str(), "g");
        assert!(!m.delivery.redelivered);
        let m = get(&ch, "g", true).await.expect("second");
        assert_eq!(m.delivery.data, b"two");
        assert_eq!(m.message_count, 0);
        assert!(
            get(&ch, "g", true).await.is_none(),
            "get-empty after draining"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_with_requeue_redelivers() {
    guard(async {
        let srv = TestServer::start().await;
        let conn = srv.connect().await;
        let ch = confirm_channel(&conn).await;
        declare_queue(&ch, "n", no_args()).await;
        publish_confirmed(&ch, "", "n", b"again", BasicProperties::default()).await;
        publish_confirmed(&ch, "", "n", b"later", BasicProperties::default()).await;
        let m = get(&ch, "n", false).await.expect("message");
        assert!(!m.delivery.redelivered);
        within(
            "nack",
            m.delivery.acker.nack(BasicNackOptions {
                requeue: true,
                multiple: false,
            }),
        )
        .await
        .expect("nack");
        // Requeued at its original position: first again.
        let m = get(&ch, "n", false).await.expect("redelivered message");
        assert_eq!(m.delivery.data, b"again");
        assert!(m.delivery.redelivered);
        within("ack", m.delivery.acker.ack(Default::default()))
            .await
            .expect("ack");
        let m = get(&ch, "n", true).await.expect("second message");
        assert_eq!(m.delivery.data, b"later");
        assert!(!m.delivery.redelivered);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_without_requeue_drops() {
    guard(async {
        let srv = TestServer::start().await;
        let conn = srv.connect().await;
        let ch = confirm_channel(&conn).await;
        declare_queue(&ch, "r", no_args()).await;
        publish_confirmed(&ch, "", "r", b"bad", BasicProperties::default()).await;
        let m = get(&ch, "r", false).await.expect("message");
        within(
            "reject",
            m.delivery
                .acker
                .reject(BasicRejectOptions { requeue: false }),
        )
        .await
        .expect("reject");
        assert!(
            get(&ch, "r", true).await.is_none(),
            "rejected message came back"
        );
        eventually("unacked count back to 0", || {
            srv.queue_stats("r")
                .is_some_and(|s| s.messages_ready == 0 && s.messages_unacknowledged == 0)
        })
        .await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_multiple_requeues_all() {
    guard(async {
        let srv = TestServer::start().await;
        let conn = srv.connect().await;
        let pch = confirm_channel(&conn).await;
        let cch = channel(&conn).await;
        declare_queue(&pch, "nm", no_args()).await;
        for i in 0..3 {
            publish_confirmed(
                &pch,
                "",
                "nm",
                format!("m{i}").as_bytes(),
                BasicProperties::default(),
            )
            .await;
        }
        let mut c = consume(&cch, "nm", "nm-c", BasicConsumeOptions::default()).await;
        let mut last = None;
        for _ in 0..3 {
            last = Some(c.next().await);
        }
        let last = last.unwrap();
        within(
            "cancel",
            cch.basic_cancel("nm-c".into(), BasicCancelOptions::default()),
        )
        .await
        .expect("cancel");
        within(
            "nack multiple",
            cch.basic_nack(
                last.delivery_tag,
                BasicNackOptions {
                    multiple: true,
                    requeue: true,
                },
            ),
        )
        .await
        .expect("nack");
        let bodies = drain_bodies(&pch, "nm").await;
        assert_eq!(bodies, ["m0", "m1", "m2"]);
    })
    .await
}

async fn declare_dlx_pair(ch: &Channel) {
    within(
        "exchange.declare dlx",
        ch.exchange_declare(
            "dlx".into(),
            ExchangeKind::Fanout,
            Default::default(),
            no_args(),
        ),
    )
    .await
    .expect("declare dlx");
    declare_queue(ch, "dlq", no_args()).await;
    within(
        "bind dlq",
        ch.queue_bind(
            "dlq".into(),
            "dlx".into(),
            "".into(),
            Default::default(),
            no_args(),
        ),
    )
    .await
    .expect("bind dlq");
}

/// The first x-death entry as a table.
fn first_x_death(props: &BasicProperties) -> lapin::types::FieldTable {
    match header(props, "x-death") {
        Some(AMQPValue::FieldArray(a)) => match a.as_slice().first() {
            Some(AMQPValue::FieldTable(t)) => t.clone(),
            other => panic!("x-death[0] is not a table: {other:?}"),
        },
        other => panic!(
            "x-death header missing or not an array: {other:?} (headers: {:?})",
            props.headers()
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_dead_letters_with_x_death() {
    guard(async {
        let srv = TestServer::start().await;
        let conn = srv.connect().await;
        let ch = confirm_channel(&conn).await;
        declare_dlx_pair(&ch).await;
        declare_queue(
            &ch,
            "work-dl",
            table(vec![("x-dead-letter-exchange", long_str("dlx"))]),
        )
        .await;
        let props = BasicProperties::default()
            .with_message_id("m-1".into())
            .with_headers(table(vec![("app-header", long_str("kept"))]));
        publish_confirmed(&ch, "", "work-dl", b"poison", props).await;
        let m = get(&ch, "work-dl", false).await.expect("message");
        within(
            "reject",
            m.delivery
                .acker
                .reject(BasicRejectOptions { requeue: false }),
        )
        .await
        .expect("reject");

        let mut dead = None;
        within("dead letter to arrive", async {
            loop {
                if let Some(m) = get(&ch, "dlq", true).await {
                    dead = Some(m);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        let dead = dead.unwrap();
        assert_eq!(dead.delivery.data, b"poison");
        assert_eq!(dead.delivery.exchange.as_str(), "dlx");
        assert_eq!(
            dead.delivery.routing_key.as_str(),
            "work-dl",
            "original routing key kept"
        );
        let p = &dead.delivery.properties;
        assert_eq!(p.message_id().as_ref().map(|s| s.as_str()), Some("m-1"));
        assert_eq!(
            header(p, "app-header").and_then(as_string).as_deref(),
            Some("kept")
        );

        let xd = first_x_death(p);
        let get_s = |k: &str| xd.inner().get(k).and_then(as_string);
        assert_eq!(
            get_s("queue").as_deref(),
            Some("work-dl"),
            "x-death: {xd:?}"
        );
        assert_eq!(
            get_s("reason").as_deref(),
            Some("rejected"),
            "x-death: {xd:?}"
        );
        assert_eq!(get_s("exchange").as_deref(), Some(""), "x-death: {xd:?}");
        assert_eq!(
            xd.inner().get("count").and_then(as_i64),
            Some(1),
            "x-death: {xd:?}"
        );
        match xd.inner().get("routing-keys") {
            Some(AMQPValue::FieldArray(a)) => {
                let keys: Vec<String> = a.as_slice().iter().filter_map(as_string).collect();
                assert_eq!(keys, ["work-dl"]);
            }
            other => panic!("x-death routing-keys: {other:?}"),
        }
        assert!(
            matches!(xd.inner().get("time"), Some(AMQPValue::Timestamp(_))),
            "x-death time: {xd:?}"
        );
        // RabbitMQ also sets x-first-death-*.
        assert_eq!(
            header(p, "x-first-death-queue")
                .and_then(as_string)
                .as_deref(),
            Some("work-dl")
        );
        assert_eq!(
            header(p, "x-first-death-reason")
                .and_then(as_string)
                .as_deref(),
            Some("rejected")
        );
        assert_eq!(
            header(p, "x-first-death-exchange")
                .and_then(as_string)
                .as_deref(),
            Some("")
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_ttl_expires_into_dead_letter_queue() {
    guard(async {
        let srv = TestServer::start().await;
        let conn = srv.connect().await;
        let ch = confirm_channel(&conn).await;
        declare_queue(&ch, "ttl-dlq", no_args()).await;
        declare_queue(
            &ch,
            "ttl",
            table(vec![
                ("x-message-ttl", AMQPValue::LongInt(50)),
                ("x-dead-letter-exchange", long_str("")),
                ("x-dead-letter-routing-key", long_str("ttl-dlq")),
            ]),
        )
        .await;
        publish_confirmed(&ch, "", "ttl", b"short-lived", BasicProperties::default()).await;

        let mut dead = None;
        within("the expired message in the DLQ", async {
            loop {
                if let Some(m) = get(&ch, "ttl-dlq", true).await {
                    dead = Some(m);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        let dead = dead.unwrap();
        assert_eq!(dead.delivery.data, b"short-lived");
        assert_eq!(dead.delivery.routing_key.as_str(), "ttl-dlq");
        let xd = first_x_death(&dead.delivery.properties);
        assert_eq!(
            xd.inner().get("reason").and_then(as_string).as_deref(),
            Some("expired"),
            "{xd:?}"
        );
        assert_eq!(
            xd.inner().get("queue").and_then(as_string).as_deref(),
            Some("ttl"),
            "{xd:?}"
        );
        assert!(
            get(&ch, "ttl", true).await.is_none(),
            "the expired message is still in its queue"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_message_expiration_dead_letters() {
    guard(async {
        let srv = TestServer::start().await;
        let conn = srv.connect().await;
        let ch = confirm_channel(&conn).await;
        declare_queue(&ch, "exp-dlq", no_args()).await;
        declare_queue(
            &ch,
            "exp",
            table(vec![
                ("x-dead-letter-exchange", long_str("")),
                ("x-dead-letter-routing-key", long_str("exp-dlq")),
            ]),
        )
        .await;
        publish_confirmed(
            &ch,
            "",
            "exp",
            b"expiring",
            BasicProperties::default().with_expiration("30".into()),
        )
        .await;
        let mut dead = None;
        within("the expired message in the DLQ", async {
            loop {
                if let Some(m) = get(&ch, "exp-dlq", true).await {
                    dead = Some(m);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        let dead = dead.unwrap();
        assert_eq!(dead.delivery.data, b"expiring");
        // RabbitMQ removes the expiration property when dead-lettering and
        // records it as original-expiration in x-death.
        assert_eq!(dead.delivery.properties.expiration(), &None);
        let xd = first_x_death(&dead.delivery.properties);
        assert_eq!(
            xd.inner().get("reason").and_then(as_string).as_deref(),
            Some("expired")
        );
        assert_eq!(
            xd.inner()
                .get("original-expiration")
                .and_then(as_string)
                .as_deref(),
            Some("30")
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_length_drops_from_head() {
    guard(async {
        let srv = TestServer::start().await;
        let conn = srv.connect().await;
        let ch = confirm_channel(&conn).await;
        declare_queue(
            &ch,
            "bounded",
            table(vec![("x-max-length", AMQPValue::LongInt(3))]),
        )
        .await;
        declare_queue(
            &ch,
            "bounded-explicit",
            table(vec![
                ("x-max-length", AMQPValue::LongInt(2)),
                ("x-overflow", long_str("drop-head")),
            ]),
        )
        .await;
        for i in 0..5 {
            publish_confirmed(
                &ch,
                "",
                "bounded",
                format!("m{i}").as_bytes(),
                BasicProperties::default(),
            )
            .await;
            publish_confirmed(
                &ch,
                "",
                "bounded-explicit",
                format!("m{i}").as_bytes(),
                BasicProperties::default(),
            )
            .await;
        }
        assert_eq!(
            srv.queue_stats("bounded").map(|s| s.messages_ready),
            Some(3)
        );
        assert_eq!(drain_bodies(&ch, "bounded").await, ["m2", "m3", "m4"]);
        assert_eq!(drain_bodies(&ch, "bounded-explicit").await, ["m3", "m4"]);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_length_drop_head_dead_letters_with_maxlen_reason() {
    guard(async {
        let srv = TestServer::start().await;
        let conn = srv.connect().await;
        let ch = confirm_channel(&conn).await;
        declare_queue(&ch, "ml-dlq", no_args()).await;
        declare_queue(
            &ch,
            "ml",
            table(vec![
                ("x-max-length", AMQPValue::LongInt(1)),
                ("x-dead-letter-exchange", long_str("")),
                ("x-dead-letter-routing-key", long_str("ml-dlq")),
            ]),
        )
        .await;
        publish_confirmed(&ch, "", "ml", b"old", BasicProperties::default()).await;
        publish_confirmed(&ch, "", "ml", b"new", BasicProperties::default()).await;
        assert_eq!(drain_bodies(&ch, "ml").await, ["new"]);
        let mut dead = None;
        within("dropped head in the DLQ", async {
            loop {
                if let Some(m) = get(&ch, "ml-dlq", true).await {
                    dead = Some(m);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        let dead = dead.unwrap();
        assert_eq!(dead.delivery.data, b"old");
        let xd = first_x_death(&dead.delivery.properties);
        assert_eq!(
            xd.inner().get("reason").and_then(as_string).as_deref(),
            Some("maxlen")
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_queue_is_deleted_when_its_connection_closes() {
    guard(async {
        let srv = TestServer::start().await;
        let owner = srv.connect().await;
        let och = channel(&owner).await;
        within(
            "exclusive declare",
            och.queue_declare(
                "mine".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    ..Default::default()
                },
                no_args(),
            ),
        )
        .await
        .expect("declare exclusive");
        // A server-named exclusive queue too.
        let named = within(
            "server-named exclusive declare",
            och.queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    ..Default::default()
                },
                no_args(),
            ),
        )
        .await
        .expect("declare server-named");
        let generated = named.name().to_string();
        assert!(
            generated.starts_with("amq.gen-"),
            "server-generated name {generated:?}"
        );
        assert!(srv.queue_exists("mine"));
        assert!(srv.queue_exists(&generated));

        within("connection.close", owner.close(200, "bye".into()))
            .await
            .expect("close");
        eventually("the exclusive queues to be deleted", || {
            !srv.queue_exists("mine") && !srv.queue_exists(&generated)
        })
        .await;

        let other = srv.connect().await;
        let ch = channel(&other).await;
        let r = within(
            "passive declare",
            ch.queue_declare(
                "mine".into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                no_args(),
            ),
        )
        .await;
        assert_code(r, 404, "passive declare of a deleted exclusive queue");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_delete_queue_goes_with_its_last_consumer() {
    guard(async {
        let srv = TestServer::start().await;
        let conn = srv.connect().await;
        let ch = channel(&conn).await;
        within(
            "auto-delete declare",
            ch.queue_declare(
                "ad".into(),
                QueueDeclareOptions {
                    auto_delete: true,
                    ..Default::default()
                },
                no_args(),
            ),
        )
        .await
        .expect("declare");
        let _c1 = consume(&ch, "ad", "c1", BasicConsumeOptions::default()).await;
        let _c2 = consume(&ch, "ad", "c2", BasicConsumeOptions::default()).await;
        within(
            "cancel c1",
            ch.basic_cancel("c1".into(), BasicCancelOptions::default()),
        )
        .await
        .expect("cancel c1");
        assert!(srv.queue_exists("ad"), "deleted while a consumer remains");
        assert_eq!(srv.queue_stats("ad").map(|s| s.consumers), Some(1));
        within(
            "cancel c2",
            ch.basic_cancel("c2".into(), BasicCancelOptions::default()),
        )
        .await
        .expect("cancel c2");
        eventually("auto-delete queue to be deleted", || {
            !srv.queue_exists("ad")
        })
        .await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_delete_queue_without_consumers_stays() {
    guard(async {
        let srv = TestServer::start().await;
        let conn = srv.connect().await;
        let ch = confirm_channel(&conn).await;
        within(
            "auto-delete declare",
            ch.queue_declare(
                "ad-never-consumed".into(),
                QueueDeclareOptions {
                    auto_delete: true,
                    ..Default::default()
                },
                no_args(),
            ),
        )
        .await
        .expect("declare");
        publish_confirmed(
            &ch,
            "",
            "ad-never-consumed",
            b"x",
            BasicProperties::default(),
        )
        .await;
        let m = get(&ch, "ad-never-consumed", true).await;
        assert!(m.is_some(), "basic.get does not count as a consumer");
        assert!(srv.queue_exists("ad-never-consumed"));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_delete_if_empty_and_if_unused() {
    guard(async {
        let srv = TestServer::start().await;
        let conn = srv.connect().await;
        let ch = confirm_channel(&conn).await;
        declare_queue(&ch, "full", no_args()).await;
        publish_confirmed(&ch, "", "full", b"x", BasicProperties::default()).await;
        publish_confirmed(&ch, "", "full", b"y", BasicProperties::default()).await;
        let r = within(
            "delete if-empty",
            ch.queue_delete(
                "full".into(),
                QueueDeleteOptions {
                    if_empty: true,
                    ..Default::default()
                },
            ),
        )
        .await;
        assert_code(r, 406, "queue.delete if-empty on a non-empty queue");
        assert!(srv.queue_exists("full"));

        let ch = confirm_channel(&conn).await;
        declare_queue(&ch, "used", no_args()).await;
        let cch = channel(&conn).await;
        let _c = consume(&cch, "used", "", BasicConsumeOptions::default()).await;
        let r = within(
            "delete if-unused",
            ch.queue_delete(
                "used".into(),
                QueueDeleteOptions {
                    if_unused: true,
                    ..Default::default()
                },
            ),
        )
        .await;
        assert_code(r, 406, "queue.delete if-unused on a queue with a consumer");
        assert!(srv.queue_exists("used"));

        // Unconditional delete reports the message count.
        let ch = channel(&conn).await;
        let n = within(
            "delete",
            ch.queue_delete("full".into(), QueueDeleteOptions::default()),
        )
        .await
        .expect("delete");
        assert_eq!(n, 2);
        assert!(!srv.queue_exists("full"));
        // Deleting a missing queue is fine (RabbitMQ answers delete-ok 0).
        let n = within(
            "delete again",
            ch.queue_delete("full".into(), QueueDeleteOptions::default()),
        )
        .await
        .expect("delete of a missing queue");
        assert_eq!(n, 0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_queue_cancels_its_consumers() {
    guard(async {
        let srv = TestServer::start().await;
        let conn = srv.connect().await;
        let ch = channel(&conn).await;
        let cch = channel(&conn).await;
        declare_queue(&ch, "doomed", no_args()).await;
        let mut c = consume(&cch, "doomed", "", BasicConsumeOptions::default()).await;
        within(
            "delete",
            ch.queue_delete("doomed".into(), QueueDeleteOptions::default()),
        )
        .await
        .expect("delete");
        // basic.cancel from the server (consumer_cancel_notify).
        match c.next_event().await {
            Some(Ok(None)) => {}
            other => panic!("expected a server-side consumer cancel, got {other:?}"),
        }
        // The consumer's channel is still usable.
        declare_queue(&cch, "after-cancel", no_args()).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_returns_the_count() {
    guard(async {
        let srv = TestServer::start().await;
        let conn = srv.connect().await;
        let ch = confirm_channel(&conn).await;
        declare_queue(&ch, "p", no_args()).await;
        for i in 0..7 {
            publish_confirmed(
                &ch,
                "",
                "p",
                format!("{i}").as_bytes(),
                BasicProperties::default(),
            )
            .await;
        }
        let n = within(
            "purge",
            ch.queue_purge("p".into(), QueuePurgeOptions::default()),
        )
        .await
        .expect("purge");
        assert_eq!(n, 7);
        assert!(get(&ch, "p", true).await.is_none());
        let n = within(
            "purge again",
            ch.queue_purge("p".into(), QueuePurgeOptions::default()),
        )
        .await
        .expect("purge");
        assert_eq!(n, 0);
        assert_eq!(srv.queue_stats("p").map(|s| s.messages_ready), Some(0));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declare_ok_reports_counts() {
    guard(async {
        let srv = TestServer::start().await;
        let conn = srv.connect().await;
        let ch = confirm_channel(&conn).await;
        let cch = channel(&conn).await;
        declare_queue(&ch, "counts", no_args()).await;
        for _ in 0..4 {
            publish_confirmed(&ch, "", "counts", b"x", BasicProperties::default()).await;
        }
        let q = declare_queue(&ch, "counts", no_args()).await;
        assert_eq!(q.message_count(), 4);
        assert_eq!(q.consumer_count(), 0);
        let _c = consume(
            &cch,
            "counts",
            "",
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
        )
        .await;
        eventually("consumer drains the queue", || {
            srv.queue_stats("counts")
                .is_some_and(|s| s.messages_ready == 0)
        })
        .await;
        let q = declare_queue(&ch, "counts", no_args()).await;
        assert_eq!(q.message_count(), 0);
        assert_eq!(q.consumer_count(), 1);
    })
    .await
}
