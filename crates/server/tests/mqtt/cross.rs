//! MQTT and AMQP on one routing core: `amq.topic`, `/` and `.` swapped,
//! QoS > 0 persistent, MQTT 5 properties as AMQP properties and headers
//! (Response Topic as header `x-reply-to-topic`, as in RabbitMQ 3.13).

use lapin::options::ConfirmSelectOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use rumqttc::v5::mqttbytes::v5::PublishProperties;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_qos1_reaches_amqp_queue_persistent() {
    guard(async {
        let srv = TestServer::start().await;
        let conn = amqp_connect(&srv).await;
        let ch = amqp_channel(&conn).await;
        bound_queue(&ch, "fiscal-errors", "fiscalberry.errors.*").await;
        let mut d = amqp_consume(&ch, "fiscal-errors").await;
        for v in [V::V4, V::V5] {
            let mut p = srv.client(v, Opts::new(&format!("fb-{v:?}"))).await;
            p.publish("fiscalberry/errors/p1", 1, false, b"paper out")
                .await;
            p.publish("fiscalberry/errors/p2", 0, false, b"qos0").await;
            // Not matched by the binding (two levels below errors).
            p.publish("fiscalberry/errors/p1/x", 1, false, b"deep")
                .await;
            let m = d.next().await;
            assert_eq!(m.data, b"paper out");
            assert_eq!(m.exchange.as_str(), "amq.topic");
            assert_eq!(m.routing_key.as_str(), "fiscalberry.errors.p1");
            assert_eq!(
                *m.properties.delivery_mode(),
                Some(2),
                "{v:?}: QoS 1 publishes are persistent"
            );
            let m = d.next().await;
            assert_eq!(m.data, b"qos0");
            assert_ne!(
                *m.properties.delivery_mode(),
                Some(2),
                "{v:?}: QoS 0 publishes are transient"
            );
            p.disconnect().await;
        }
        // Sentinel: "deep" never arrived.
        let mut p = srv.client(V::V4, Opts::new("fb-end")).await;
        p.publish("fiscalberry/errors/end", 1, false, b"sentinel")
            .await;
        assert_eq!(d.next().await.data, b"sentinel");
        p.disconnect().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_publish_reaches_offline_persistent_mqtt_session() {
    guard(async {
        let srv = TestServer::start().await;
        let id = "p1-client";
        let mut s = srv.client(V::V4, Opts::new(id).persistent()).await;
        s.subscribe("p1", 1).await;

        let conn = amqp_connect(&srv).await;
        let ch = amqp_channel(&conn).await;
        within(
            "confirm.select",
            ch.confirm_select(ConfirmSelectOptions::default()),
        )
        .await
        .expect("confirm.select");
        let persistent = BasicProperties::default().with_delivery_mode(2);
        let publish = |body: &'static [u8]| {
            let ch = ch.clone();
            let props = persistent.clone();
            async move {
                let confirm = within(
                    "basic.publish",
                    ch.basic_publish(
                        "amq.topic".into(),
                        "p1".into(),
                        Default::default(),
                        body,
                        props,
                    ),
                )
                .await
                .expect("basic.publish");
                let c = within("publisher confirm", confirm).await.expect("confirm");
                assert!(c.is_ack());
            }
        };

        // Online.
        publish(b"online").await;
        let m = s.recv().await;
        assert_eq!(
            (m.topic.as_str(), m.body().as_str(), m.qos),
            ("p1", "online", 1)
        );

        // Offline: confirmed (so routed) while no connection holds the session.
        s.disconnect().await;
        publish(b"offline-1").await;
        publish(b"offline-2").await;
        let mut s = srv.client(V::V4, Opts::new(id).persistent()).await;
        assert!(s.session_present);
        let a = s.recv().await;
        let b = s.recv().await;
        assert_eq!(
            (a.body().as_str(), b.body().as_str()),
            ("offline-1", "offline-2")
        );
        assert_eq!((a.qos, b.qos), (1, 1), "persistent AMQP messages are QoS 1");
        s.disconnect().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_properties_reach_amqp() {
    guard(async {
        let srv = TestServer::start().await;
        let conn = amqp_connect(&srv).await;
        let ch = amqp_channel(&conn).await;
        bound_queue(&ch, "p5-amqp", "p5.amqp").await;
        let mut d = amqp_consume(&ch, "p5-amqp").await;
        let mut p = srv.client(V::V5, Opts::new("p5-pub")).await;
        let props = PublishProperties {
            content_type: Some("application/json".into()),
            correlation_data: Some(bytes::Bytes::from_static(b"corr-1")),
            response_topic: Some("reply/here".into()),
            user_properties: vec![("k".into(), "v".into()), ("site".into(), "norte".into())],
            ..Default::default()
        };
        p.publish5("p5/amqp", 1, false, b"{\"a\":1}", props).await;
        let m = d.next().await;
        assert_eq!(m.routing_key.as_str(), "p5.amqp");
        assert_eq!(m.data, b"{\"a\":1}");
        let pr = &m.properties;
        assert_eq!(
            pr.content_type().as_ref().map(|s| s.as_str()),
            Some("application/json")
        );
        assert_eq!(
            pr.correlation_id().as_ref().map(|s| s.as_str()),
            Some("corr-1")
        );
        // As RabbitMQ 3.13: `reply_to` names a queue, so the Response
        // Topic travels as header x-reply-to-topic, as a routing key.
        assert_eq!(
            header(pr, "x-reply-to-topic")
                .and_then(as_string)
                .as_deref(),
            Some("reply.here"),
            "response topic as header x-reply-to-topic"
        );
        assert_eq!(pr.reply_to().as_ref().map(|s| s.as_str()), None);
        assert_eq!(*pr.delivery_mode(), Some(2));
        assert_eq!(header(pr, "k").and_then(as_string).as_deref(), Some("v"));
        assert_eq!(
            header(pr, "site").and_then(as_string).as_deref(),
            Some("norte")
        );
        p.disconnect().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_properties_reach_mqtt5() {
    guard(async {
        let srv = TestServer::start().await;
        let mut s5 = srv.client(V::V5, Opts::new("a2m-5")).await;
        s5.subscribe("a/b", 1).await;
        let mut s4 = srv.client(V::V4, Opts::new("a2m-4")).await;
        s4.subscribe("a/+", 1).await;

        let conn = amqp_connect(&srv).await;
        let ch = amqp_channel(&conn).await;
        let mut headers = FieldTable::default();
        headers.insert("k".into(), AMQPValue::LongString("v".into()));
        headers.insert(
            "x-reply-to-topic".into(),
            AMQPValue::LongString("resp.q".into()),
        );
        let props = BasicProperties::default()
            .with_content_type("text/plain".into())
            .with_correlation_id("c-9".into())
            .with_reply_to("some-queue".into())
            .with_headers(headers)
            .with_delivery_mode(2);
        amqp_publish(&ch, "amq.topic", "a.b", b"from amqp", props).await;

        let m = s5.recv().await;
        assert_eq!((m.topic.as_str(), m.body().as_str()), ("a/b", "from amqp"));
        assert_eq!(m.qos, 1, "persistent AMQP message is QoS 1");
        let p = m.props.expect("5.0 properties");
        assert_eq!(p.content_type.as_deref(), Some("text/plain"));
        assert_eq!(p.correlation_data.as_deref(), Some(&b"c-9"[..]));
        assert_eq!(p.response_topic.as_deref(), Some("resp/q"));
        assert_eq!(
            p.user_properties,
            vec![("k".to_string(), "v".to_string())],
            "header k=v as a user property (x- headers are not)"
        );

        let m = s4.recv().await;
        assert_eq!((m.topic.as_str(), m.body().as_str()), ("a/b", "from amqp"));

        // Transient AMQP messages are QoS 0.
        amqp_publish(
            &ch,
            "amq.topic",
            "a.b",
            b"transient",
            BasicProperties::default(),
        )
        .await;
        let m = s5.recv().await;
        assert_eq!((m.body().as_str(), m.qos), ("transient", 0));
    })
    .await
}
