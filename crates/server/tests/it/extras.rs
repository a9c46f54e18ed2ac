//! RabbitMQ behaviours beyond the basics: exclusive consumers, consumer
//! tags, user_id checks, internal exchanges, unbind, x-expires, direct
//! reply-to, transactions, recover, reject-publish overflow, global qos.

use std::time::Duration;

use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    BasicRecoverOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
};
use lapin::types::AMQPValue;
use lapin::{BasicProperties, ExchangeKind};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_consumer_locks_out_others_with_403() {
    guard(async {
        let srv = TestServer::start().await;
        let conn = srv.connect().await;
        let ch = channel(&conn).await;
        declare_queue(&ch, "solo", no_args()).await;
        let _c = consume(
            &ch,
            "solo",
            "owner",
            BasicConsumeOptions {
                exclusive: true,
                ..Default::default()
            },
        )
        .await;
        let ch2 = channel(&conn).await;
        let r = within(
            "second consumer",
            ch2.basic_consume(
                "solo".into(),
                "".into(),
                BasicConsumeOptions::default(),
                no_args(),
            ),
        )
        .await;
        assert_code(r, 403, "consume on a queue with an exclusive consumer");

        // And an exclusive consume on a queue that already has a consumer.
        let ch3 = channel(&conn).await;
        declare_queue(&ch3, "shared", no_args()).await;
        let _s = consume(&ch3, "shared", "", BasicConsumeOptions::default()).await;
        let ch4 = channel(&conn).await;
        let r = within(
            "exclusive consume on a used queue",
            ch4.basic_consume(
                "shared".into(),
                "".into(),
                BasicConsumeOptions {
                    exclusive: true,
                    ..Default::default()
                },
                no_args(),
            ),
        )
        .await;
        assert_code(r, 403, "exclusive consume on a queue that has consumers");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reused_consumer_tag_is_530() {
    guard(async {
        let srv = TestServer::start().await;
        let conn = srv.connect().await;
        let ch = channel(&conn).await;
        declare_queue(&ch, "tags", no_args()).await;
        let _c = consume(&ch, "tags", "same-tag", BasicConsumeOptions::default()).await;
        let r = within(
            "duplicate tag",
            ch.basic_consume(
                "tags".into(),
                "same-tag".into(),
                BasicConsumeOptions::default(),
                no_args(),
            ),
        )
        .await;
        assert_code(
            r,
            530,
            "basic.consume with a consumer tag already in use on the channel",
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_id_must_match_the_connection_user() {
    guard(async {
        let srv = TestServer::start().await;
        let conn = srv.connect().await;
        let ch = confirm_channel(&conn).await;
        declare_queue(&ch, "uid", no_args()).await;
        publish_confirmed(
            &ch,
            "",
            "uid",
            b"ok",
            BasicProperties::default().with_user_id("guest".into()),
        )
        .await;
        let confirm = within(
            "publish",
            ch.basic_publish(
                "".into(),
                "uid".into(),
                BasicPublishOptions::default(),
                b"forged",
                BasicProperties::default().with_user_id("mallory".into()),
            ),
        )
        .await
        .expect("publish is sent");
        assert_code(
            within("confirm", confirm).await,
            406,
            "publish with a forged user_id",
        );
        assert_eq!(srv.queue_stats("uid").map(|s| s.messages_ready), Some(1));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_to_an_internal_exchange_is_403() {
    guard(async {
        let srv = TestServer::start().await;
        let conn = srv.connect().await;
        let ch = confirm_channel(&conn).await;
        within(
            "declare internal",
            ch.exchange_declare(
                "inner".into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions {
                    internal: true,
                    ..Default::default()
                },
                no_args(),
            ),
        )
        .await
        .expect("declare internal exchange");
        let confirm = within(
            "publish",
            ch.basic_publish(
                "inner".into(),
                "".into(),
                BasicPublishOptions::default(),
                b"x",
                BasicProperties::default(),
            ),
        )
        .await
        .expect("publish is sent");
        assert_code(
            within("confirm", confirm).await,
            403,
            "publish to an internal exchange",
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_delete_if_unused_is_406_when_bound() {
    guard(async {
        let srv = TestServer::start().await;
        let conn = srv.connect().await;
        let ch = channel(&conn).await;
        within(
            "declare",
            ch.exchange_declare(
                "busy-x".into(),
                ExchangeKind::Direct,
                Default::default(),
                no_args(),
            ),
        )
        .await
        .expect("declare");
        declare_queue(&ch, "busy-q", no_args()).await;
        within(
            "bind",
            ch.queue_bind(
                "busy-q".into(),
                "busy-x".into(),
                "k".into(),
                Default::default(),
                no_args(),
            ),
        )
        .await
        .expect("bind");
        let r = within(
            "delete if-unused",
            ch.exchange_delete(
                "busy-x".into(),
                ExchangeDeleteOptions {
                    if_unused: true,
                    ..Default::default()
                },
            ),
        )
        .await;
        assert_code(r, 406, "exchange.delete if-unused with a binding");
        let ch = channel(&conn).await;
        within(
            "delete",
            ch.exchange_delete("busy-x".into(), Default::default()),
        )
        .await
        .expect("unconditional delete");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_unbind_stops_routing() {
    guard(async {
        let srv = TestServer::start().await;
        let conn = srv.connect().await;
        let ch = confirm_channel(&conn).await;
        declare_queue(&ch, "ub", no_args()).await;
        within(
            "bind",
            ch.queue_bind(
                "ub".into(),
                "amq.direct".into(),
                "k".into(),
                Default::default(),
                no_args(),
            ),
        )
        .await
        .expect("bind");
        publish_confirmed(&ch, "amq.direct", "k", b"1", BasicProperties::default()).await;
        within(
            "unbind",
            ch.queue_unbind("ub".into(), "amq.direct".into(), "k".into(), no_args()),
        )
        .await
        .expect("unbind");
        publish_confirmed(&ch, "amq.direct", "k", b"2", BasicProperties::default()).await;
        assert_eq!(drain_bodies(&ch, "ub").await, ["1"]);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_expires_deletes_an_unused_queue() {
    guard(async {
        let srv = TestServer::start().await;
        let conn = srv.connect().await;
        let ch = channel(&conn).await;
        declare_queue(
            &ch,
            "ephemeral",
            table(vec![("x-expires", AMQPValue::LongInt(100))]),
        )
        .await;
        declare_queue(
            &ch,
            "in-use",
            table(vec![("x-expires", AMQPValue::LongInt(100))]),
        )
        .await;
        let _c = consume(&ch, "in-use", "", BasicConsumeOptions::default()).await;
        eventually("x-expires to delete the unused queue", || {
            !srv.queue_exists("ephemeral")
        })
        .await;
        assert!(
            srv.queue_exists("in-use"),
            "a queue with a consumer expired"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_reply_to_round_trip() {
    guard(async {
        let srv = TestServer::start().await;
        let server_conn = srv.connect().await;
        let sch = channel(&server_conn).await;
        declare_queue(&sch, "rpc", no_args()).await;
        let mut requests = consume(
            &sch,
            "rpc",
            "",
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
        )
        .await;

        let client_conn = srv.connect().await;
        let cch = channel(&client_conn).await;
        let mut replies = consume(
            &cch,
            "amq.rabbitmq.reply-to",
            "",
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
        )
        .await;
        publish(
            &cch,
            "",
            "rpc",
            b"ping",
            BasicProperties::default()
                .with_reply_to("amq.rabbitmq.reply-to".into())
                .with_correlation_id("c-1".into()),
        )
        .await;

        let req = requests.next().await;
        let reply_to = req.properties.reply_to().clone().expect("reply_to");
        assert!(
            reply_to.as_str().starts_with("amq.rabbitmq.reply-to."),
            "reply_to is rewritten to a routable name, got {reply_to:?}"
        );
        publish(
            &sch,
            "",
            reply_to.as_str(),
            b"pong",
            BasicProperties::default().with_correlation_id("c-1".into()),
        )
        .await;
        let rep = replies.next().await;
        assert_eq!(rep.data, b"pong");
        assert_eq!(
            rep.properties.correlation_id().as_ref().map(|s| s.as_str()),
            Some("c-1")
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_commit_and_rollback() {
    guard(async {
        let srv = TestServer::start().await;
        let conn = srv.connect().await;
        let ch = channel(&conn).await;
        let obs = channel(&conn).await;
        declare_queue(&ch, "txq", no_args()).await;
        within("tx.select", ch.tx_select())
            .await
            .expect("tx.select");
        publish(&ch, "", "txq", b"rolled-back", BasicProperties::default()).await;
        within("tx.rollback", ch.tx_rollback())
            .await
            .expect("tx.rollback");
        assert!(
            get(&obs, "txq", true).await.is_none(),
            "rolled back publish is visible"
        );
        publish(&ch, "", "txq", b"committed", BasicProperties::default()).await;
        assert!(
            get(&obs, "txq", true).await.is_none(),
            "uncommitted publish is visible"
        );
        within("tx.commit", ch.tx_commit())
            .await
            .expect("tx.commit");
        assert_eq!(drain_bodies(&obs, "txq").await, ["committed"]);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_recover_requeue_redelivers_unacked() {
    guard(async {
        let srv = TestServer::start().await;
        let conn = srv.connect().await;
        let pch = confirm_channel(&conn).await;
        let ch = channel(&conn).await;
        declare_queue(&pch, "rec", no_args()).await;
        publish_confirmed(&pch, "", "rec", b"again", BasicProperties::default()).await;
        let mut c = consume(&ch, "rec", "", BasicConsumeOptions::default()).await;
        let d = c.next().await;
        assert!(!d.redelivered);
        within(
            "basic.recover",
            ch.basic_recover(BasicRecoverOptions { requeue: true }),
        )
        .await
        .expect("recover");
        let d = c.next().await;
        assert_eq!(d.data, b"again");
        assert!(
            d.redelivered,
            "recovered message must be flagged redelivered"
        );
        within("ack", d.acker.ack(BasicAckOptions::default()))
            .await
            .expect("ack");
        eventually("queue settles", || {
            srv.queue_stats("rec")
                .is_some_and(|s| s.messages_ready == 0 && s.messages_unacknowledged == 0)
        })
        .await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_publish_overflow_nacks() {
    guard(async {
        let srv = TestServer::start().await;
        let conn = srv.connect().await;
        let ch = confirm_channel(&conn).await;
        declare_queue(
            &ch,
            "full-up",
            table(vec![
                ("x-max-length", AMQPValue::LongInt(2)),
                ("x-overflow", long_str("reject-publish")),
            ]),
        )
        .await;
        publish_confirmed(&ch, "", "full-up", b"1", BasicProperties::default()).await;
        publish_confirmed(&ch, "", "full-up", b"2", BasicProperties::default()).await;
        let confirm = within(
            "publish",
            ch.basic_publish(
                "".into(),
                "full-up".into(),
                BasicPublishOptions::default(),
                b"3",
                BasicProperties::default(),
            ),
        )
        .await
        .expect("publish");
        let c = within("confirm", confirm).await.expect("confirm");
        assert!(
            c.is_nack(),
            "publish to a full reject-publish queue must be nacked: {c:?}"
        );
        assert_eq!(drain_bodies(&ch, "full-up").await, ["1", "2"]);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_qos_limits_the_whole_channel() {
    guard(async {
        let srv = TestServer::start().await;
        let conn = srv.connect().await;
        let pch = confirm_channel(&conn).await;
        let ch = channel(&conn).await;
        for q in ["gq1", "gq2"] {
            declare_queue(&pch, q, no_args()).await;
            for i in 0..5 {
                publish_confirmed(
                    &pch,
                    "",
                    q,
                    format!("{i}").as_bytes(),
                    BasicProperties::default(),
                )
                .await;
            }
        }
        within(
            "basic.qos global",
            ch.basic_qos(3, BasicQosOptions { global: true }),
        )
        .await
        .expect("qos");
        let mut a = consume(&ch, "gq1", "", BasicConsumeOptions::default()).await;
        let mut b = consume(&ch, "gq2", "", BasicConsumeOptions::default()).await;
        eventually("three deliveries in flight", || {
            let un = |q: &str| {
                srv.queue_stats(q)
                    .map(|s| s.messages_unacknowledged)
                    .unwrap_or(0)
            };
            un("gq1") + un("gq2") == 3
        })
        .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let un = |q: &str| {
            srv.queue_stats(q)
                .map(|s| s.messages_unacknowledged)
                .unwrap_or(0)
        };
        assert_eq!(un("gq1") + un("gq2"), 3, "global prefetch 3 exceeded");
        let mut received = 0;
        while a.try_next().is_some() {
            received += 1;
        }
        while b.try_next().is_some() {
            received += 1;
        }
        assert_eq!(received, 3);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_never_reads_does_not_stall_the_broker() {
    guard(async {
        let srv = TestServer::start().await;
        let conn = srv.connect().await;
        let ch = confirm_channel(&conn).await;
        declare_queue(&ch, "stuck", no_args()).await;
        declare_queue(&ch, "healthy", no_args()).await;

        // A raw client consumes "stuck" with no-ack and never reads its socket.
        let (mut raw, _) = crate::raw::RawClient::handshake(srv.addr, 0).await;
        raw.open_channel(1).await;
        let consume_args = crate::raw::Args::new()
            .u16(0)
            .shortstr("stuck")
            .shortstr("raw")
            .u8(0b0000_0010) // no-ack
            .empty_table()
            .bytes();
        raw.send(&crate::raw::method(1, 60, 20, &consume_args))
            .await;
        raw.expect_method(60, 21).await; // consume-ok; from now on we read nothing

        // 64 MiB for it: far more than any sane buffering.
        let body = vec![7u8; 16 * 1024];
        within_for(Duration::from_secs(90), "publishing 64 MiB", async {
            for _ in 0..4096 {
                ch.basic_publish(
                    "".into(),
                    "stuck".into(),
                    BasicPublishOptions::default(),
                    &body,
                    BasicProperties::default(),
                )
                .await
                .expect("publish");
            }
            let returned = ch.wait_for_confirms().await.expect("confirms");
            assert!(returned.is_empty());
        })
        .await;

        // Others are served normally...
        let other = srv.connect().await;
        let och = confirm_channel(&other).await;
        publish_confirmed(&och, "", "healthy", b"fine", BasicProperties::default()).await;
        assert_eq!(drain_bodies(&och, "healthy").await, ["fine"]);
        // ...and the broker did not push everything into an ever-growing buffer.
        let ready = srv
            .queue_stats("stuck")
            .map(|s| s.messages_ready)
            .unwrap_or(0);
        assert!(
            ready > 0,
            "all 64 MiB were handed to a consumer that reads nothing"
        );
        drop(raw);
    })
    .await
}

/// A reply to a method pipelined after `tx.commit` does not overtake the
/// commit-ok, also while that waits for the disk (a persistent message on
/// a durable queue): the connection takes no input until it is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_pipelined_after_tx_commit_follows_the_commit_ok() {
    use crate::raw::{basic_publish, body, frame, method, Args, RawClient, FRAME_HEADER};
    guard(async {
        let srv = TestServer::start().await;
        let (mut raw, _) = RawClient::handshake(srv.addr, 0).await;
        raw.open_channel(1).await;
        // queue.declare "txd": durable, or passive.
        let declare = |flags: u8| {
            let args = Args::new().u16(0).shortstr("txd").u8(flags).empty_table();
            method(1, 50, 10, &args.bytes())
        };
        raw.send(&declare(0b10)).await;
        raw.expect_method(50, 11).await;
        raw.send(&method(1, 90, 10, &[])).await; // tx.select
        raw.expect_method(90, 11).await;
        // delivery-mode 2 (persistent): property flag bit 12.
        let persistent = Args::new().u16(60).u16(0).u64(1).u16(0x1000).u8(2);
        for round in 1..=20u32 {
            // One write: a persistent publish, tx.commit, a passive declare.
            let mut burst = basic_publish(1, "", "txd");
            burst.extend(frame(FRAME_HEADER, 1, &persistent.0));
            burst.extend(body(1, b"x"));
            burst.extend(method(1, 90, 20, &[])); // tx.commit
            burst.extend(declare(0b01));
            raw.send(&burst).await;
            let first = raw.next_frame().await;
            assert!(
                first.is_method(90, 21),
                "round {round}: expected tx.commit-ok first, got {:?}",
                first.method_ids()
            );
            let ok = raw.expect_method(50, 11).await;
            // declare-ok: queue name, message count, consumer count.
            let a = &ok.args()[1 + "txd".len()..];
            let messages = u32::from_be_bytes([a[0], a[1], a[2], a[3]]);
            assert_eq!(messages, round, "the committed messages are counted");
        }
    })
    .await
}
