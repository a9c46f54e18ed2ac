//! Publisher confirms and mandatory returns.

use std::time::Duration;

use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::BasicProperties;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_confirms_all_acked() {
    guard(async {
        let srv = TestServer::start().await;
        let conn = srv.connect().await;
        let ch = confirm_channel(&conn).await;
        declare_queue(&ch, "confirmed", no_args()).await;
        const N: usize = 10_000;
        let mut confirms = Vec::with_capacity(N);
        within_for(Duration::from_secs(60), "publishing 10k messages", async {
            for i in 0..N {
                let c = ch
                    .basic_publish(
                        "".into(),
                        "confirmed".into(),
                        BasicPublishOptions::default(),
                        format!("{i}").as_bytes(),
                        BasicProperties::default(),
                    )
                    .await
                    .expect("publish");
                confirms.push(c);
            }
        })
        .await;
        let returned = within_for(
            Duration::from_secs(60),
            "wait_for_confirms",
            ch.wait_for_confirms(),
        )
        .await
        .expect("wait_for_confirms");
        assert!(returned.is_empty(), "{} messages returned", returned.len());
        let mut acked = 0;
        for c in confirms {
            let c = within("a confirm", c).await.expect("confirm");
            assert!(c.is_ack(), "nacked: {c:?}");
            acked += 1;
        }
        assert_eq!(acked, N);
        let q = within(
            "passive declare",
            ch.queue_declare(
                "confirmed".into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                no_args(),
            ),
        )
        .await
        .expect("passive declare");
        assert_eq!(q.message_count() as usize, N);
        assert_eq!(
            srv.queue_stats("confirmed").map(|s| s.messages_ready),
            Some(N as u64)
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mandatory_unroutable_is_returned_then_acked() {
    guard(async {
        let srv = TestServer::start().await;
        let conn = srv.connect().await;
        let ch = confirm_channel(&conn).await;
        let props = BasicProperties::default().with_message_id("lost".into());
        let confirm = within(
            "basic.publish",
            ch.basic_publish(
                "".into(),
                "no-such-queue".into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                b"nobody home",
                props.clone(),
            ),
        )
        .await
        .expect("publish");
        let c = within("confirm", confirm).await.expect("confirm");
        assert!(c.is_ack(), "unroutable messages are still acked: {c:?}");
        let returned = c.take_message().expect("basic.return before the ack");
        assert_eq!(returned.reply_code, 312);
        assert_eq!(returned.reply_text.as_str(), "NO_ROUTE");
        assert_eq!(returned.delivery.exchange.as_str(), "");
        assert_eq!(returned.delivery.routing_key.as_str(), "no-such-queue");
        assert_eq!(returned.delivery.data, b"nobody home");
        assert_eq!(returned.delivery.properties, props);

        // Not mandatory: silently dropped, still acked, nothing returned.
        let confirm = within(
            "basic.publish",
            ch.basic_publish(
                "".into(),
                "no-such-queue".into(),
                BasicPublishOptions::default(),
                b"dropped",
                BasicProperties::default(),
            ),
        )
        .await
        .expect("publish");
        let c = within("confirm", confirm).await.expect("confirm");
        assert!(c.is_ack());
        assert!(c.take_message().is_none());

        // Mandatory and routable: not returned.
        declare_queue(&ch, "home", no_args()).await;
        let confirm = within(
            "basic.publish",
            ch.basic_publish(
                "".into(),
                "home".into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                b"x",
                BasicProperties::default(),
            ),
        )
        .await
        .expect("publish");
        let c = within("confirm", confirm).await.expect("confirm");
        assert!(c.is_ack());
        assert!(c.take_message().is_none());
        let _ = srv;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_to_missing_exchange_is_404() {
    guard(async {
        let srv = TestServer::start().await;
        let conn = srv.connect().await;
        let ch = confirm_channel(&conn).await;
        let confirm = within(
            "basic.publish",
            ch.basic_publish(
                "no-such-exchange".into(),
                "k".into(),
                BasicPublishOptions::default(),
                b"x",
                BasicProperties::default(),
            ),
        )
        .await
        .expect("publish is sent");
        let r = within("confirm", confirm).await;
        assert_code(r, 404, "publish to a missing exchange");
        let _ = srv;
    })
    .await
}
