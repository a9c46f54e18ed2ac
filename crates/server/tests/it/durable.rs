//! What a restart keeps: durable exchanges, durable queues (with their
//! arguments) and the bindings between them; not transient entities.
//! Users, permissions and vhosts too, and persistent messages of durable
//! queues (the kill -9 loops are in tests/python/test_crash_loop.py).

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
                liebre_amqp_codec::BasicProperties::default(),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_permissions_and_vhosts_survive_a_restart() {
    guard(async {
        let mut srv = TestServer::start().await;
        srv.broker().add_vhost("plant");
        srv.broker().add_vhost("scratch");
        let auth = srv.auth().clone();
        auth.add_user("printer", "s3cret", vec!["monitoring".into()]);
        auth.set_permissions(
            "printer",
            "plant",
            liebre_auth::Permission::new("^printer-.*", ".*", ".*").expect("patterns"),
        )
        .expect("printer exists");
        auth.add_user("leaver", "x", vec![]);
        auth.delete_user("leaver").expect("leaver exists");
        auth.change_password("guest", "changed")
            .expect("guest exists");
        srv.broker().delete_vhost("scratch");

        srv.restart().await;

        let names: Vec<String> = srv
            .broker()
            .vhosts()
            .iter()
            .map(|v| v.name().to_owned())
            .collect();
        assert_eq!(names, ["/", "plant"]);
        let printer = srv.auth().user("printer").expect("printer restored");
        assert_eq!(printer.tags, ["monitoring"]);
        assert!(srv.auth().user("leaver").is_none());
        // The printer logs in to its vhost and may configure only its own queues.
        let conn = connect(&srv.url_for("printer", "s3cret", "plant")).await;
        let ch = channel(&conn).await;
        declare_queue(&ch, "printer-1", no_args()).await;
        let ch = channel(&conn).await;
        let denied = within(
            "queue.declare",
            ch.queue_declare("other".into(), Default::default(), no_args()),
        )
        .await;
        assert!(denied.is_err(), "configure permission outside ^printer-");
        // guest's new password holds; the old one does not.
        assert!(try_connect(&srv.url_for("guest", "guest", "%2F"))
            .await
            .is_err());
        connect(&srv.url_for("guest", "changed", "%2F")).await;
    })
    .await;
}

/// Persistent messages of a durable queue far past the in-memory budget:
/// every one comes back after a restart, in order, and those delivered
/// but not acknowledged before it are marked redelivered (and only those,
/// after a clean shutdown). Transient ones do not come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_messages_past_the_memory_budget_survive_a_restart_in_order() {
    guard(async {
        let mut srv = TestServer::start_with(|c| c.queue_messages_in_memory = 8).await;
        let n = 300;
        {
            let conn = srv.connect().await;
            let ch = confirm_channel(&conn).await;
            declare_durable_queue(&ch, "jobs").await;
            let persistent = BasicProperties::default().with_delivery_mode(2);
            for i in 0..n {
                publish_confirmed(
                    &ch,
                    "",
                    "jobs",
                    format!("job {i}").as_bytes(),
                    persistent.clone(),
                )
                .await;
                if i % 50 == 0 {
                    publish_confirmed(&ch, "", "jobs", b"transient", BasicProperties::default())
                        .await;
                }
            }
            // Take the first two without acking them: they come back redelivered.
            let a = get(&ch, "jobs", false).await.expect("job 0");
            let b = get(&ch, "jobs", false).await.expect("job 1");
            assert_eq!(
                (&a.delivery.data[..], &b.delivery.data[..]),
                (&b"job 0"[..], &b"transient"[..])
            );
        }
        srv.restart().await;
        let conn = srv.connect().await;
        let ch = channel(&conn).await;
        let mut got = Vec::new();
        while let Some(m) = get(&ch, "jobs", true).await {
            got.push((
                String::from_utf8_lossy(&m.delivery.data).into_owned(),
                m.delivery.redelivered,
            ));
        }
        let expected: Vec<(String, bool)> = (0..n).map(|i| (format!("job {i}"), i == 0)).collect();
        assert_eq!(got, expected);
    })
    .await;
}
