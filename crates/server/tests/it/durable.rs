//! What a restart keeps: durable exchanges, durable queues (with their
//! arguments) and the bindings between them; not transient entities.
//! (Messages are not kept yet: issue 4.)

use lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, ExchangeKind};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_definitions_survive_a_restart_and_transient_ones_do_not() {
    guard(async {
        let mut srv = TestServer::start().await;
        {
            let conn = srv.connect().await;
            let ch = channel(&conn).await;
            let durable = ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            };
            within(
                "exchange.declare",
                ch.exchange_declare("orders".into(), ExchangeKind::Topic, durable, no_args()),
            )
            .await
            .expect("declare orders");
            within(
                "exchange.declare",
                ch.exchange_declare(
                    "scratch".into(),
                    ExchangeKind::Fanout,
                    ExchangeDeclareOptions::default(),
                    no_args(),
                ),
            )
            .await
            .expect("declare scratch");
            let args = table(vec![("x-max-length", AMQPValue::LongInt(10))]);
            let q = QueueDeclareOptions {
                durable: true,
                ..Default::default()
            };
            within("queue.declare", ch.queue_declare("billing".into(), q, args))
                .await
                .expect("billing");
            declare_queue(&ch, "temporary", no_args()).await;
            for (queue, exchange, key) in [
                ("billing", "orders", "order.*.paid"),
                ("billing", "amq.direct", "bill"),
            ] {
                within(
                    "queue.bind",
                    ch.queue_bind(
                        queue.into(),
                        exchange.into(),
                        key.into(),
                        QueueBindOptions::default(),
                        no_args(),
                    ),
                )
                .await
                .expect("bind");
            }
            within(
                "queue.bind",
                ch.queue_bind(
                    "temporary".into(),
                    "orders".into(),
                    "#".into(),
                    QueueBindOptions::default(),
                    no_args(),
                ),
            )
            .await
            .expect("bind temporary");
        }

        srv.restart().await;

        let vhost = srv.broker().vhost("/").expect("vhost");
        assert!(vhost.exchange("orders").is_some(), "durable exchange lost");
        assert!(
            vhost.exchange("scratch").is_none(),
            "transient exchange came back"
        );
        assert!(srv.queue_exists("billing"), "durable queue lost");
        assert!(!srv.queue_exists("temporary"), "transient queue came back");

        let conn = srv.connect().await;
        let ch = channel(&conn).await;
        // The bindings route again, from a custom and from a built-in exchange.
        publish(
            &ch,
            "orders",
            "order.42.paid",
            b"paid",
            BasicProperties::default(),
        )
        .await;
        publish(
            &ch,
            "amq.direct",
            "bill",
            b"bill",
            BasicProperties::default(),
        )
        .await;
        eventually("both messages routed", || {
            srv.queue_stats("billing")
                .is_some_and(|s| s.messages_ready == 2)
        })
        .await;
        let got = within(
            "basic.get",
            ch.basic_get("billing".into(), BasicGetOptions { no_ack: true }),
        )
        .await
        .expect("get")
        .expect("a message");
        assert_eq!(got.delivery.data, b"paid");

        // The arguments came back too: an equivalent redeclare is fine, a
        // different x-max-length is 406.
        let q = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let same = table(vec![("x-max-length", AMQPValue::LongInt(10))]);
        within("queue.declare", ch.queue_declare("billing".into(), q, same))
            .await
            .expect("equivalent redeclare");
        let other = table(vec![("x-max-length", AMQPValue::LongInt(20))]);
        let r = within(
            "queue.declare",
            ch.queue_declare("billing".into(), q, other),
        )
        .await;
        assert_code(r, 406, "redeclare with another x-max-length after restart");

        // Deleting is remembered as well.
        let ch = channel(&conn).await;
        within(
            "queue.delete",
            ch.queue_delete(
                "billing".into(),
                lapin::options::QueueDeleteOptions::default(),
            ),
        )
        .await
        .expect("delete");
        drop(conn);
        srv.restart().await;
        assert!(
            !srv.queue_exists("billing"),
            "deleted durable queue came back"
        );
        let _: FieldTable = no_args();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_survive_a_restart_and_clearing_is_remembered() {
    guard(async {
        let mut srv = TestServer::start().await;
        let msg = |body: &'static [u8]| {
            std::sync::Arc::new(liebre_core::Message::with_properties(
                "amq.topic".into(),
                "plant.north.state".into(),
                Default::default(),
                bytes::Bytes::from_static(body),
            ))
        };
        let retained = |srv: &TestServer| {
            srv.broker()
                .vhost("/")
                .expect("vhost")
                .retained()
                .matching("plant/+/state")
                .into_iter()
                .map(|(t, m)| (t, m.body.to_vec()))
                .collect::<Vec<_>>()
        };
        let vhost = srv.broker().vhost("/").expect("vhost");
        vhost
            .retained()
            .set("plant/north/state", Some(msg(b"online")));
        vhost
            .retained()
            .set("plant/south/state", Some(msg(b"offline")));
        srv.restart().await;
        assert_eq!(
            retained(&srv),
            vec![
                ("plant/north/state".to_owned(), b"online".to_vec()),
                ("plant/south/state".to_owned(), b"offline".to_vec()),
            ]
        );
        srv.broker()
            .vhost("/")
            .expect("vhost")
            .retained()
            .set("plant/south/state", None);
        srv.restart().await;
        assert_eq!(
            retained(&srv),
            vec![("plant/north/state".to_owned(), b"online".to_vec())]
        );
    })
    .await;
}
