//! Exchange types, exchange-to-exchange bindings, alternate exchanges.

use lapin::options::{
    BasicPublishOptions, ExchangeBindOptions, ExchangeDeclareOptions, QueueBindOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, ExchangeKind};

use crate::support::*;

async fn declare_exchange(ch: &Channel, name: &str, kind: ExchangeKind, args: FieldTable) {
    within(
        "exchange.declare",
        ch.exchange_declare(name.into(), kind, ExchangeDeclareOptions::default(), args),
    )
    .await
    .unwrap_or_else(|e| panic!("exchange.declare {name}: {e}"));
}

async fn bind(ch: &Channel, queue: &str, exchange: &str, key: &str, args: FieldTable) {
    within(
        "queue.bind",
        ch.queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            args,
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("queue.bind {queue} -> {exchange} ({key}): {e}"));
}

/// Publish each key (body = key) with confirms, then read back what each
/// queue holds.
async fn route_keys(
    ch: &Channel,
    exchange: &str,
    keys: &[&str],
    queues: &[&str],
) -> Vec<Vec<String>> {
    for k in keys {
        publish_confirmed(ch, exchange, k, k.as_bytes(), BasicProperties::default()).await;
    }
    let mut out = Vec::new();
    for q in queues {
        out.push(drain_bodies(ch, q).await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_copies_to_every_bound_queue() {
    guard(async {
        let srv = TestServer::start().await;
        let conn = srv.connect().await;
        let ch = confirm_channel(&conn).await;
        declare_exchange(&ch, "logs", ExchangeKind::Fanout, no_args()).await;
        for q in ["f1", "f2", "f3"] {
            declare_queue(&ch, q, no_args()).await;
        }
        bind(&ch, "f1", "logs", "", no_args()).await;
        bind(&ch, "f2", "logs", "ignored-key", no_args()).await;
        let got = route_keys(&ch, "logs", &["a", "b.c", ""], &["f1", "f2", "f3"]).await;
        assert_eq!(got[0], ["a", "b.c", ""]);
        assert_eq!(got[1], ["a", "b.c", ""]);
        assert!(got[2].is_empty(), "unbound queue got {:?}", got[2]);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_routes_by_exact_key() {
    guard(async {
        let srv = TestServer::start().await;
        let conn = srv.connect().await;
        let ch = confirm_channel(&conn).await;
        declare_exchange(&ch, "direct_logs", ExchangeKind::Direct, no_args()).await;
        declare_queue(&ch, "errors", no_args()).await;
        declare_queue(&ch, "all", no_args()).await;
        bind(&ch, "errors", "direct_logs", "error", no_args()).await;
        for k in ["info", "warning", "error"] {
            bind(&ch, "all", "direct_logs", k, no_args()).await;
        }
        let got = route_keys(
            &ch,
            "direct_logs",
            &["info", "error", "debug", "warning", "error.x", "ERROR"],
            &["errors", "all"],
        )
        .await;
        assert_eq!(got[0], ["error"]);
        assert_eq!(got[1], ["info", "error", "warning"]);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_routes_like_the_rabbitmq_tutorial() {
    guard(async {
        let srv = TestServer::start().await;
        let conn = srv.connect().await;
        let ch = confirm_channel(&conn).await;
        declare_exchange(&ch, "topic_animals", ExchangeKind::Topic, no_args()).await;
        declare_queue(&ch, "Q1", no_args()).await;
        declare_queue(&ch, "Q2", no_args()).await;
        bind(&ch, "Q1", "topic_animals", "*.orange.*", no_args()).await;
        bind(&ch, "Q2", "topic_animals", "*.*.rabbit", no_args()).await;
        bind(&ch, "Q2", "topic_animals", "lazy.#", no_args()).await;
        let keys = [
            "quick.orange.rabbit",      // Q1, Q2
            "lazy.orange.elephant",     // Q1, Q2
            "quick.orange.fox",         // Q1
            "lazy.brown.fox",           // Q2
            "lazy.pink.rabbit",         // Q2 once, although two bindings match
            "quick.brown.fox",          // none
            "orange",                   // none
            "quick.orange.male.rabbit", // none
            "lazy.orange.male.rabbit",  // Q2
            "lazy",                     // Q2: # matches zero words
            "quick.orange",             // none: * needs exactly one word
        ];
        let got = route_keys(&ch, "topic_animals", &keys, &["Q1", "Q2"]).await;
        assert_eq!(
            got[0],
            [
                "quick.orange.rabbit",
                "lazy.orange.elephant",
                "quick.orange.fox"
            ]
        );
        assert_eq!(
            got[1],
            [
                "quick.orange.rabbit",
                "lazy.orange.elephant",
                "lazy.brown.fox",
                "lazy.pink.rabbit",
                "lazy.orange.male.rabbit",
                "lazy",
            ]
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_hash_and_star_edge_cases() {
    guard(async {
        let srv = TestServer::start().await;
        let conn = srv.connect().await;
        let ch = confirm_channel(&conn).await;
        declare_exchange(&ch, "t", ExchangeKind::Topic, no_args()).await;
        declare_queue(&ch, "hash", no_args()).await;
        declare_queue(&ch, "mid", no_args()).await;
        bind(&ch, "hash", "t", "#", no_args()).await;
        bind(&ch, "mid", "t", "a.#.z", no_args()).await;
        let got = route_keys(
            &ch,
            "t",
            &["", "a.z", "a.b.c.z", "a.b", "x"],
            &["hash", "mid"],
        )
        .await;
        assert_eq!(got[0], ["", "a.z", "a.b.c.z", "a.b", "x"]);
        assert_eq!(got[1], ["a.z", "a.b.c.z"]);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_exchange_all_and_any() {
    guard(async {
        let srv = TestServer::start().await;
        let conn = srv.connect().await;
        let ch = confirm_channel(&conn).await;
        declare_exchange(&ch, "hdrs", ExchangeKind::Headers, no_args()).await;
        declare_queue(&ch, "h_all", no_args()).await;
        declare_queue(&ch, "h_any", no_args()).await;
        let binding = |mode: &str| {
            table(vec![
                ("x-match", long_str(mode)),
                ("format", long_str("pdf")),
                ("type", long_str("report")),
            ])
        };
        bind(&ch, "h_all", "hdrs", "", binding("all")).await;
        bind(&ch, "h_any", "hdrs", "", binding("any")).await;

        let cases: Vec<(&str, FieldTable)> = vec![
            (
                "both",
                table(vec![
                    ("format", long_str("pdf")),
                    ("type", long_str("report")),
                ]),
            ),
            (
                "both+extra",
                table(vec![
                    ("format", long_str("pdf")),
                    ("type", long_str("report")),
                    ("size", AMQPValue::LongInt(3)),
                ]),
            ),
            ("format-only", table(vec![("format", long_str("pdf"))])),
            ("type-only", table(vec![("type", long_str("report"))])),
            (
                "wrong-format",
                table(vec![("format", long_str("zip")), ("type", long_str("log"))]),
            ),
            ("none", FieldTable::default()),
        ];
        for (name, headers) in cases {
            publish_confirmed(
                &ch,
                "hdrs",
                "any-key",
                name.as_bytes(),
                BasicProperties::default().with_headers(headers),
            )
            .await;
        }
        // No headers property at all.
        publish_confirmed(&ch, "hdrs", "", b"no-property", BasicProperties::default()).await;

        assert_eq!(drain_bodies(&ch, "h_all").await, ["both", "both+extra"]);
        assert_eq!(
            drain_bodies(&ch, "h_any").await,
            ["both", "both+extra", "format-only", "type-only"]
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_to_exchange_binding() {
    guard(async {
        let srv = TestServer::start().await;
        let conn = srv.connect().await;
        let ch = confirm_channel(&conn).await;
        declare_exchange(&ch, "upstream", ExchangeKind::Direct, no_args()).await;
        declare_exchange(&ch, "downstream", ExchangeKind::Fanout, no_args()).await;
        declare_queue(&ch, "e2e", no_args()).await;
        declare_queue(&ch, "direct-on-upstream", no_args()).await;
        bind(&ch, "e2e", "downstream", "", no_args()).await;
        bind(&ch, "direct-on-upstream", "upstream", "k", no_args()).await;
        within(
            "exchange.bind",
            ch.exchange_bind(
                "downstream".into(),
                "upstream".into(),
                "k".into(),
                ExchangeBindOptions::default(),
                no_args(),
            ),
        )
        .await
        .expect("exchange.bind");

        let got = route_keys(
            &ch,
            "upstream",
            &["k", "other"],
            &["e2e", "direct-on-upstream"],
        )
        .await;
        assert_eq!(got[0], ["k"]);
        assert_eq!(got[1], ["k"]);

        // A queue reached twice (directly and through the other exchange) gets one copy.
        bind(&ch, "e2e", "upstream", "k", no_args()).await;
        let got = route_keys(&ch, "upstream", &["k"], &["e2e"]).await;
        assert_eq!(got[0], ["k"], "a message must reach a queue at most once");

        within(
            "exchange.unbind",
            ch.exchange_unbind(
                "downstream".into(),
                "upstream".into(),
                "k".into(),
                lapin::options::ExchangeUnbindOptions::default(),
                no_args(),
            ),
        )
        .await
        .expect("exchange.unbind");
        declare_queue(&ch, "e2e-only", no_args()).await;
        bind(&ch, "e2e-only", "downstream", "", no_args()).await;
        let got = route_keys(&ch, "upstream", &["k"], &["e2e-only"]).await;
        assert!(
            got[0].is_empty(),
            "unbound exchange still routes: {:?}",
            got[0]
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alternate_exchange_takes_unroutable_messages() {
    guard(async {
        let srv = TestServer::start().await;
        let conn = srv.connect().await;
        let ch = confirm_channel(&conn).await;
        declare_exchange(&ch, "ae", ExchangeKind::Fanout, no_args()).await;
        declare_exchange(
            &ch,
            "main",
            ExchangeKind::Direct,
            table(vec![("alternate-exchange", long_str("ae"))]),
        )
        .await;
        declare_queue(&ch, "unrouted", no_args()).await;
        declare_queue(&ch, "routed", no_args()).await;
        bind(&ch, "unrouted", "ae", "", no_args()).await;
        bind(&ch, "routed", "main", "good", no_args()).await;

        let got = route_keys(
            &ch,
            "main",
            &["good", "bad", "worse"],
            &["routed", "unrouted"],
        )
        .await;
        assert_eq!(got[0], ["good"]);
        assert_eq!(got[1], ["bad", "worse"]);

        // Mandatory: routed by the AE, so not returned.
        let confirm = within(
            "basic.publish",
            ch.basic_publish(
                "main".into(),
                "nowhere".into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                b"m",
                BasicProperties::default(),
            ),
        )
        .await
        .expect("publish");
        let c = within("confirm", confirm).await.expect("confirm");
        assert!(c.is_ack());
        assert!(
            c.take_message().is_none(),
            "a message taken by the alternate exchange was returned"
        );
        assert_eq!(drain_bodies(&ch, "unrouted").await, ["m"]);
    })
    .await
}
