//! Channel and connection errors and their reply codes.

use lapin::options::{BasicAckOptions, ExchangeDeclareOptions, QueueDeclareOptions};
use lapin::{BasicProperties, ExchangeKind};
use liebre_auth::Permission;

use crate::support::*;

fn passive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        passive: true,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_declare_of_missing_queue_is_404() {
    guard(async {
        let srv = TestServer::start().await;
        let conn = srv.connect().await;
        let ch = channel(&conn).await;
        let r = within(
            "passive declare",
            ch.queue_declare("missing".into(), passive(), no_args()),
        )
        .await;
        assert_code(r, 404, "passive queue.declare of a missing queue");
        assert!(
            !srv.queue_exists("missing"),
            "passive declare created the queue"
        );

        let ch = channel(&conn).await;
        let r = within(
            "passive exchange declare",
            ch.exchange_declare(
                "missing-x".into(),
                ExchangeKind::Direct,
                ExchangeDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                no_args(),
            ),
        )
        .await;
        assert_code(r, 404, "passive exchange.declare of a missing exchange");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeclare_with_different_durable_is_406() {
    guard(async {
        let srv = TestServer::start().await;
        let conn = srv.connect().await;
        let ch = channel(&conn).await;
        declare_queue(&ch, "q-transient", no_args()).await;
        let r = within(
            "redeclare durable",
            ch.queue_declare(
                "q-transient".into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                no_args(),
            ),
        )
        .await;
        assert_code(r, 406, "redeclare with a different durable flag");

        // Same for an argument mismatch.
        let ch = channel(&conn).await;
        let r = within(
            "redeclare with args",
            ch.queue_declare(
                "q-transient".into(),
                QueueDeclareOptions::default(),
                table(vec![("x-max-length", lapin::types::AMQPValue::LongInt(5))]),
            ),
        )
        .await;
        assert_code(r, 406, "redeclare with a different x-max-length");

        // And exchanges with a different type.
        let ch = channel(&conn).await;
        within(
            "exchange.declare",
            ch.exchange_declare(
                "x-typed".into(),
                ExchangeKind::Direct,
                Default::default(),
                no_args(),
            ),
        )
        .await
        .expect("declare");
        let r = within(
            "exchange redeclare",
            ch.exchange_declare(
                "x-typed".into(),
                ExchangeKind::Fanout,
                Default::default(),
                no_args(),
            ),
        )
        .await;
        assert_code(r, 406, "exchange redeclared with another type");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declaring_amq_prefixed_names_is_403() {
    guard(async {
        let srv = TestServer::start().await;
        let conn = srv.connect().await;
        let ch = channel(&conn).await;
        let r = within(
            "exchange.declare amq.foo",
            ch.exchange_declare(
                "amq.foo".into(),
                ExchangeKind::Direct,
                Default::default(),
                no_args(),
            ),
        )
        .await;
        assert_code(r, 403, "exchange.declare amq.foo");

        let ch = channel(&conn).await;
        let r = within(
            "queue.declare amq.foo",
            ch.queue_declare("amq.foo".into(), QueueDeclareOptions::default(), no_args()),
        )
        .await;
        assert_code(r, 403, "queue.declare amq.foo");

        // Passive declaration of the predefined exchanges is fine.
        let ch = channel(&conn).await;
        for (name, kind) in [
            ("amq.direct", ExchangeKind::Direct),
            ("amq.fanout", ExchangeKind::Fanout),
            ("amq.topic", ExchangeKind::Topic),
            ("amq.headers", ExchangeKind::Headers),
            ("amq.match", ExchangeKind::Headers),
        ] {
            within(
                "passive declare amq.*",
                ch.exchange_declare(
                    name.into(),
                    kind,
                    ExchangeDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    no_args(),
                ),
            )
            .await
            .unwrap_or_else(|e| panic!("predefined exchange {name}: {e}"));
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_queue_from_another_connection_is_405() {
    guard(async {
        let srv = TestServer::start().await;
        let owner = srv.connect().await;
        let och = channel(&owner).await;
        within(
            "exclusive declare",
            och.queue_declare(
                "locked".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    ..Default::default()
                },
                no_args(),
            ),
        )
        .await
        .expect("declare");

        let other = srv.connect().await;
        let ch = channel(&other).await;
        let r = within(
            "declare from another connection",
            ch.queue_declare("locked".into(), QueueDeclareOptions::default(), no_args()),
        )
        .await;
        assert_code(r, 405, "declaring another connection's exclusive queue");

        let ch = channel(&other).await;
        let r = within(
            "consume from another connection",
            ch.basic_consume("locked".into(), "".into(), Default::default(), no_args()),
        )
        .await;
        assert_code(r, 405, "consuming another connection's exclusive queue");

        // The owner can still use it.
        declare_queue(&och, "locked-sibling", no_args()).await;
        publish(&och, "", "locked", b"mine", BasicProperties::default()).await;
        let m = within("get on owner", async {
            loop {
                if let Some(m) = get(&och, "locked", true).await {
                    return m;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
        .await;
        assert_eq!(m.delivery.data, b"mine");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_of_unknown_delivery_tag_is_406() {
    guard(async {
        let srv = TestServer::start().await;
        let conn = srv.connect().await;
        let ch = channel(&conn).await;
        let mut watch = watch_channel(&ch).await;
        within("basic.ack", ch.basic_ack(12345, BasicAckOptions::default()))
            .await
            .expect("ack is sent");
        assert_eq!(
            watch.error_code().await,
            Some(406),
            "ack of an unknown delivery tag"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn double_ack_is_406() {
    guard(async {
        let srv = TestServer::start().await;
        let conn = srv.connect().await;
        let ch = confirm_channel(&conn).await;
        declare_queue(&ch, "dbl", no_args()).await;
        publish_confirmed(&ch, "", "dbl", b"x", BasicProperties::default()).await;
        let m = get(&ch, "dbl", false).await.expect("message");
        let tag = m.delivery.delivery_tag;
        let mut watch = watch_channel(&ch).await;
        within("ack", ch.basic_ack(tag, BasicAckOptions::default()))
            .await
            .expect("ack");
        within("ack again", ch.basic_ack(tag, BasicAckOptions::default()))
            .await
            .expect("second ack is sent");
        assert_eq!(
            watch.error_code().await,
            Some(406),
            "second ack of the same tag"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_vhost_is_530() {
    guard(async {
        let srv = TestServer::start().await;
        let r = try_connect(&srv.url_for("guest", "guest", "nope")).await;
        assert_code(r.map(|_| ()), 530, "connection.open to a missing vhost");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_403() {
    guard(async {
        let srv = TestServer::start().await;
        let r = try_connect(&srv.url_for("guest", "wrong", "%2F")).await;
        assert_code(r.map(|_| ()), 403, "login with a wrong password");
        let r = try_connect(&srv.url_for("nobody", "guest", "%2F")).await;
        assert_code(r.map(|_| ()), 403, "login as an unknown user");
        // The right password still works afterwards.
        let conn = srv.connect().await;
        assert!(conn.status().connected());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_without_configure_permission_gets_403_on_declare() {
    guard(async {
        let srv = TestServer::start().await;
        srv.auth().add_user("alice", "secret", vec![]);
        srv.auth()
            .set_permissions(
                "alice",
                "/",
                Permission::new("^$", "^$", "^$").expect("patterns"),
            )
            .expect("set permissions");
        let conn = connect(&srv.url_for("alice", "secret", "%2F")).await;
        let ch = channel(&conn).await;
        let r = within(
            "queue.declare without permission",
            ch.queue_declare(
                "alices-queue".into(),
                QueueDeclareOptions::default(),
                no_args(),
            ),
        )
        .await;
        assert_code(r, 403, "queue.declare without configure permission");
        assert!(!srv.queue_exists("alices-queue"));

        // Reading from someone else's queue needs read permission.
        let gconn = srv.connect().await;
        let gch = channel(&gconn).await;
        declare_queue(&gch, "guests-queue", no_args()).await;
        let ch = channel(&conn).await;
        let r = within(
            "basic.get without read permission",
            ch.basic_get("guests-queue".into(), Default::default()),
        )
        .await;
        assert_code(r, 403, "basic.get without read permission");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_permission_pattern_denies_like_rabbitmq() {
    // RabbitMQ: "the empty string, '', is a synonym for ^$".
    guard(async {
        let srv = TestServer::start().await;
        srv.auth().add_user("bob", "secret", vec![]);
        srv.auth()
            .set_permissions("bob", "/", Permission::new("", "", "").expect("patterns"))
            .expect("set permissions");
        let conn = connect(&srv.url_for("bob", "secret", "%2F")).await;
        let ch = channel(&conn).await;
        let r = within(
            "queue.declare with empty configure pattern",
            ch.queue_declare(
                "bobs-queue".into(),
                QueueDeclareOptions::default(),
                no_args(),
            ),
        )
        .await;
        assert_code(
            r,
            403,
            "queue.declare with an empty ('' = ^$) configure pattern",
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_without_any_permission_on_vhost_is_refused() {
    guard(async {
        let srv = TestServer::start().await;
        srv.auth().add_user("carol", "secret", vec![]);
        let r = try_connect(&srv.url_for("carol", "secret", "%2F")).await;
        assert_code(
            r.map(|_| ()),
            530,
            "connection.open to a vhost without permissions",
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_channels_survive_a_channel_error() {
    guard(async {
        let srv = TestServer::start().await;
        let conn = srv.connect().await;
        let bad = channel(&conn).await;
        let good = confirm_channel(&conn).await;
        declare_queue(&good, "survivor", no_args()).await;
        let mut good_watch = watch_channel(&good).await;

        let r = within(
            "passive declare",
            bad.queue_declare("missing".into(), passive(), no_args()),
        )
        .await;
        assert_code(r, 404, "passive declare");

        // The errored channel is closed...
        let r = within(
            "use of closed channel",
            bad.queue_declare("x".into(), Default::default(), no_args()),
        )
        .await;
        assert!(
            r.is_err(),
            "a channel closed by the broker must not work: {r:?}"
        );
        // ...the other channel and the connection are fine.
        publish_confirmed(
            &good,
            "",
            "survivor",
            b"still here",
            BasicProperties::default(),
        )
        .await;
        let m = get(&good, "survivor", true)
            .await
            .expect("message on the good channel");
        assert_eq!(m.delivery.data, b"still here");
        assert!(
            good_watch.try_next().is_none(),
            "the good channel saw an event"
        );
        let fresh = channel(&conn).await;
        declare_queue(&fresh, "after-error", no_args()).await;
        assert!(conn.status().connected());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_from_missing_queue_is_404() {
    guard(async {
        let srv = TestServer::start().await;
        let conn = srv.connect().await;
        let ch = channel(&conn).await;
        let r = within(
            "consume missing",
            ch.basic_consume("nope".into(), "".into(), Default::default(), no_args()),
        )
        .await;
        assert_code(r, 404, "basic.consume on a missing queue");
        let ch = channel(&conn).await;
        let r = within(
            "bind to missing exchange",
            ch.queue_bind(
                "nope".into(),
                "amq.direct".into(),
                "k".into(),
                Default::default(),
                no_args(),
            ),
        )
        .await;
        assert_code(r, 404, "queue.bind of a missing queue");
    })
    .await
}
