//! MQTT 5.0 only: no-local, subscription identifiers, properties, topic
//! aliases, session expiry, retain-as-published, shutdown reason.

use rumqttc::v5::mqttbytes::v5::{
    Filter, PublishProperties, RetainForwardRule, SubscribeProperties,
};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_local_suppresses_own_messages() {
    guard(async {
        let srv = TestServer::start().await;
        let mut a = srv.client(V::V5, Opts::new("nl-a")).await;
        let mut f = Filter::new("nl/t", qos5(1));
        f.nolocal = true;
        assert_eq!(a.subscribe5(f, None).await, vec![1]);
        // Control: without no-local a client does get its own messages.
        let mut c = srv.client(V::V5, Opts::new("nl-c")).await;
        c.subscribe("nl/t", 1).await;

        a.publish("nl/t", 1, false, b"own").await;
        let mut b = srv.client(V::V5, Opts::new("nl-b")).await;
        b.publish("nl/t", 1, false, b"other").await;
        assert_eq!(
            a.recv().await.body(),
            "other",
            "no-local: own message must not come back"
        );
        assert_eq!(c.recv_bodies(2).await, ["own", "other"]);
        c.publish("nl/t", 1, false, b"c-own").await;
        assert_eq!(c.recv().await.body(), "c-own");
        b.disconnect().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_identifier_comes_back() {
    guard(async {
        let srv = TestServer::start().await;
        let mut s = srv.client(V::V5, Opts::new("si-sub")).await;
        let props = |id| SubscribeProperties {
            id: Some(id),
            user_properties: vec![],
        };
        s.subscribe5(Filter::new("si/+", qos5(1)), Some(props(42)))
            .await;
        s.subscribe5(Filter::new("other/t", qos5(1)), Some(props(7)))
            .await;
        s.subscribe("noid/t", 1).await;
        let mut p = srv.client(V::V5, Opts::new("si-pub")).await;
        p.publish("si/y", 1, false, b"1").await;
        p.publish("other/t", 1, false, b"2").await;
        p.publish("noid/t", 1, false, b"3").await;
        let ids = |m: Msg| {
            m.props
                .map(|p| p.subscription_identifiers)
                .unwrap_or_default()
        };
        assert_eq!(ids(s.recv().await), vec![42]);
        assert_eq!(ids(s.recv().await), vec![7]);
        assert_eq!(
            ids(s.recv().await),
            Vec::<usize>::new(),
            "no identifier on a subscription without one"
        );
        p.disconnect().await;
    })
    .await
}

fn rich_properties() -> PublishProperties {
    PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(600),
        content_type: Some("application/json".into()),
        response_topic: Some("replies/client-7".into()),
        correlation_data: Some(bytes_of(b"req-42")),
        user_properties: vec![
            ("k".into(), "1".into()),
            ("k".into(), "2".into()),
            ("site".into(), "norte".into()),
        ],
        ..Default::default()
    }
}

fn bytes_of(b: &[u8]) -> bytes::Bytes {
    bytes::Bytes::copy_from_slice(b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_properties_pass_through() {
    guard(async {
        let srv = TestServer::start().await;
        let mut s = srv.client(V::V5, Opts::new("pp-sub")).await;
        s.subscribe("pp/t", 1).await;
        let mut p = srv.client(V::V5, Opts::new("pp-pub")).await;
        let sent = rich_properties();
        p.publish5("pp/t", 1, false, b"{}", sent.clone()).await;
        let m = s.recv().await;
        assert_eq!(m.body(), "{}");
        let got = m.props.expect("properties on the delivered PUBLISH");
        assert_eq!(got.content_type, sent.content_type);
        assert_eq!(got.correlation_data, sent.correlation_data);
        assert_eq!(got.response_topic, sent.response_topic);
        assert_eq!(
            got.user_properties, sent.user_properties,
            "user properties, order and duplicates kept"
        );
        assert_eq!(got.payload_format_indicator, Some(1));
        let left = got
            .message_expiry_interval
            .expect("message expiry interval");
        assert!(
            (1..=600).contains(&left),
            "expiry counts down from 600, got {left}"
        );
        p.disconnect().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_alias_from_client() {
    guard(async {
        let srv = TestServer::start().await;
        let mut s = srv.client(V::V5, Opts::new("ta-sub")).await;
        s.subscribe("alias/t", 1).await;
        let mut p = srv.client(V::V5, Opts::new("ta-pub")).await;
        let with_alias = PublishProperties {
            topic_alias: Some(1),
            ..Default::default()
        };
        p.publish5("alias/t", 1, false, b"first", with_alias.clone())
            .await;
        p.publish5("", 1, false, b"second", with_alias.clone())
            .await;
        p.publish5("", 0, false, b"third", with_alias).await;
        for body in ["first", "second", "third"] {
            let m = s.recv().await;
            assert_eq!((m.topic.as_str(), m.body().as_str()), ("alias/t", body));
        }
        p.disconnect().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_without_expiry_ends_at_disconnect() {
    guard(async {
        let srv = TestServer::start().await;
        let mut o = Opts::new("se-0");
        o.clean = false; // clean_start=false but Session Expiry Interval 0
        let mut c = srv.client(V::V5, o.clone()).await;
        c.subscribe("se/t", 1).await;
        c.disconnect().await;
        let mut p = srv.client(V::V5, Opts::new("se-pub")).await;
        p.publish("se/t", 1, false, b"lost").await;
        let mut c = srv.client(V::V5, o).await;
        assert!(
            !c.session_present,
            "5.0: expiry 0 means the session ended with the connection"
        );
        c.subscribe("se/t", 1).await;
        p.publish("se/t", 1, false, b"sentinel").await;
        assert_eq!(c.recv().await.body(), "sentinel");
        p.disconnect().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retain_as_published_and_retain_handling() {
    guard(async {
        let srv = TestServer::start().await;
        let mut p = srv.client(V::V5, Opts::new("rap-pub")).await;
        p.publish("rap/t", 1, true, b"stored").await;

        let mut s = srv.client(V::V5, Opts::new("rap-sub")).await;
        let mut f = Filter::new("rap/t", qos5(1));
        f.preserve_retain = true;
        f.retain_forward_rule = RetainForwardRule::Never;
        s.subscribe5(f, None).await;
        p.publish("rap/t", 1, true, b"live").await;
        let m = s.recv().await;
        assert_eq!(
            m.body(),
            "live",
            "retain handling 2: the stored retained message is not sent"
        );
        assert!(
            m.retain,
            "retain as published keeps RETAIN on live delivery"
        );
        p.disconnect().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_sends_disconnect_0x8b() {
    guard(async {
        let mut srv = TestServer::start().await;
        let mut c = srv.client(V::V5, Opts::new("sd")).await;
        c.subscribe("sd/t", 1).await;
        srv.shutdown().await;
        assert_eq!(c.closed().await, Some(0x8B));
    })
    .await
}
