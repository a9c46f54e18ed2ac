//! Every method of the protocol, with non-default arguments: round trip,
//! ids, names, truncation.

use bytes::{Bytes, BytesMut};
use liebre_amqp_codec::*;

fn table(key: &str) -> FieldTable {
    [(
        key,
        FieldValue::LongString(Bytes::copy_from_slice(key.as_bytes())),
    )]
    .into_iter()
    .collect()
}

/// One instance of every method; bits alternate so that packing order shows.
pub fn every_method() -> Vec<(Method, &'static str)> {
    vec![
        (
            Method::ConnectionStart(ConnectionStart {
                version_major: 0,
                version_minor: 1,
                server_properties: table("server_properties"),
                mechanisms: Bytes::from_static(b"mechanisms"),
                locales: Bytes::from_static(b"locales"),
            }),
            "connection.start",
        ),
        (
            Method::ConnectionStartOk(ConnectionStartOk {
                client_properties: table("client_properties"),
                mechanism: ShortStr::from("mechanism"),
                response: Bytes::from_static(b"response"),
                locale: ShortStr::from("locale"),
            }),
            "connection.start-ok",
        ),
        (
            Method::ConnectionSecure(ConnectionSecure {
                challenge: Bytes::from_static(b"challenge"),
            }),
            "connection.secure",
        ),
        (
            Method::ConnectionSecureOk(ConnectionSecureOk {
                response: Bytes::from_static(b"response"),
            }),
            "connection.secure-ok",
        ),
        (
            Method::ConnectionTune(ConnectionTune {
                channel_max: 0x1200,
                frame_max: 0x12345601,
                heartbeat: 0x1202,
            }),
            "connection.tune",
        ),
        (
            Method::ConnectionTuneOk(ConnectionTuneOk {
                channel_max: 0x1200,
                frame_max: 0x12345601,
                heartbeat: 0x1202,
            }),
            "connection.tune-ok",
        ),
        (
            Method::ConnectionOpen(ConnectionOpen {
                virtual_host: ShortStr::from("virtual_host"),
            }),
            "connection.open",
        ),
        (Method::ConnectionOpenOk, "connection.open-ok"),
        (
            Method::ConnectionClose(ConnectionClose {
                reply_code: 0x1200,
                reply_text: ShortStr::from("reply_text"),
                class_id: 0x1202,
                method_id: 0x1203,
            }),
            "connection.close",
        ),
        (Method::ConnectionCloseOk, "connection.close-ok"),
        (
            Method::ConnectionBlocked(ConnectionBlocked {
                reason: ShortStr::from("reason"),
            }),
            "connection.blocked",
        ),
        (Method::ConnectionUnblocked, "connection.unblocked"),
        (
            Method::ConnectionUpdateSecret(ConnectionUpdateSecret {
                new_secret: Bytes::from_static(b"new_secret"),
                reason: ShortStr::from("reason"),
            }),
            "connection.update-secret",
        ),
        (
            Method::ConnectionUpdateSecretOk,
            "connection.update-secret-ok",
        ),
        (Method::ChannelOpen, "channel.open"),
        (Method::ChannelOpenOk, "channel.open-ok"),
        (
            Method::ChannelFlow(ChannelFlow { active: true }),
            "channel.flow",
        ),
        (
            Method::ChannelFlowOk(ChannelFlowOk { active: true }),
            "channel.flow-ok",
        ),
        (
            Method::ChannelClose(ChannelClose {
                reply_code: 0x1200,
                reply_text: ShortStr::from("reply_text"),
                class_id: 0x1202,
                method_id: 0x1203,
            }),
            "channel.close",
        ),
        (Method::ChannelCloseOk, "channel.close-ok"),
        (
            Method::AccessRequest(AccessRequest {
                realm: ShortStr::from("realm"),
                exclusive: true,
                passive: false,
                active: true,
                write: false,
                read: true,
            }),
            "access.request",
        ),
        (Method::AccessRequestOk, "access.request-ok"),
        (
            Method::ExchangeDeclare(ExchangeDeclare {
                exchange: ShortStr::from("exchange"),
                kind: ShortStr::from("kind"),
                passive: true,
                durable: false,
                auto_delete: true,
                internal: false,
                nowait: true,
                arguments: table("arguments"),
            }),
            "exchange.declare",
        ),
        (Method::ExchangeDeclareOk, "exchange.declare-ok"),
        (
            Method::ExchangeDelete(ExchangeDelete {
                exchange: ShortStr::from("exchange"),
                if_unused: true,
                nowait: false,
            }),
            "exchange.delete",
        ),
        (Method::ExchangeDeleteOk, "exchange.delete-ok"),
        (
            Method::ExchangeBind(ExchangeBind {
                destination: ShortStr::from("destination"),
                source: ShortStr::from("source"),
                routing_key: ShortStr::from("routing_key"),
                nowait: true,
                arguments: table("arguments"),
            }),
            "exchange.bind",
        ),
        (Method::ExchangeBindOk, "exchange.bind-ok"),
        (
            Method::ExchangeUnbind(ExchangeUnbind {
                destination: ShortStr::from("destination"),
                source: ShortStr::from("source"),
                routing_key: ShortStr::from("routing_key"),
                nowait: true,
                arguments: table("arguments"),
            }),
            "exchange.unbind",
        ),
        (Method::ExchangeUnbindOk, "exchange.unbind-ok"),
        (
            Method::QueueDeclare(QueueDeclare {
                queue: ShortStr::from("queue"),
                passive: true,
                durable: false,
                exclusive: true,
                auto_delete: false,
                nowait: true,
                arguments: table("arguments"),
            }),
            "queue.declare",
        ),
        (
            Method::QueueDeclareOk(QueueDeclareOk {
                queue: ShortStr::from("queue"),
                message_count: 0x12345601,
                consumer_count: 0x12345602,
            }),
            "queue.declare-ok",
        ),
        (
            Method::QueueBind(QueueBind {
                queue: ShortStr::from("queue"),
                exchange: ShortStr::from("exchange"),
                routing_key: ShortStr::from("routing_key"),
                nowait: true,
                arguments: table("arguments"),
            }),
            "queue.bind",
        ),
        (Method::QueueBindOk, "queue.bind-ok"),
        (
            Method::QueuePurge(QueuePurge {
                queue: ShortStr::from("queue"),
                nowait: true,
            }),
            "queue.purge",
        ),
        (
            Method::QueuePurgeOk(QueuePurgeOk {
                message_count: 0x12345600,
            }),
            "queue.purge-ok",
        ),
        (
            Method::QueueDelete(QueueDelete {
                queue: ShortStr::from("queue"),
                if_unused: true,
                if_empty: false,
                nowait: true,
            }),
            "queue.delete",
        ),
        (
            Method::QueueDeleteOk(QueueDeleteOk {
                message_count: 0x12345600,
            }),
            "queue.delete-ok",
        ),
        (
            Method::QueueUnbind(QueueUnbind {
                queue: ShortStr::from("queue"),
                exchange: ShortStr::from("exchange"),
                routing_key: ShortStr::from("routing_key"),
                arguments: table("arguments"),
            }),
            "queue.unbind",
        ),
        (Method::QueueUnbindOk, "queue.unbind-ok"),
        (
            Method::BasicQos(BasicQos {
                prefetch_size: 0x12345600,
                prefetch_count: 0x1201,
                global: true,
            }),
            "basic.qos",
        ),
        (Method::BasicQosOk, "basic.qos-ok"),
        (
            Method::BasicConsume(BasicConsume {
                queue: ShortStr::from("queue"),
                consumer_tag: ShortStr::from("consumer_tag"),
                no_local: true,
                no_ack: false,
                exclusive: true,
                nowait: false,
                arguments: table("arguments"),
            }),
            "basic.consume",
        ),
        (
            Method::BasicConsumeOk(BasicConsumeOk {
                consumer_tag: ShortStr::from("consumer_tag"),
            }),
            "basic.consume-ok",
        ),
        (
            Method::BasicCancel(BasicCancel {
                consumer_tag: ShortStr::from("consumer_tag"),
                nowait: true,
            }),
            "basic.cancel",
        ),
        (
            Method::BasicCancelOk(BasicCancelOk {
                consumer_tag: ShortStr::from("consumer_tag"),
            }),
            "basic.cancel-ok",
        ),
        (
            Method::BasicPublish(BasicPublish {
                exchange: ShortStr::from("exchange"),
                routing_key: ShortStr::from("routing_key"),
                mandatory: true,
                immediate: false,
            }),
            "basic.publish",
        ),
        (
            Method::BasicReturn(BasicReturn {
                reply_code: 0x1200,
                reply_text: ShortStr::from("reply_text"),
                exchange: ShortStr::from("exchange"),
                routing_key: ShortStr::from("routing_key"),
            }),
            "basic.return",
        ),
        (
            Method::BasicDeliver(BasicDeliver {
                consumer_tag: ShortStr::from("consumer_tag"),
                delivery_tag: 0x123456789abcde01,
                redelivered: true,
                exchange: ShortStr::from("exchange"),
                routing_key: ShortStr::from("routing_key"),
            }),
            "basic.deliver",
        ),
        (
            Method::BasicGet(BasicGet {
                queue: ShortStr::from("queue"),
                no_ack: true,
            }),
            "basic.get",
        ),
        (
            Method::BasicGetOk(BasicGetOk {
                delivery_tag: 0x123456789abcde00,
                redelivered: true,
                exchange: ShortStr::from("exchange"),
                routing_key: ShortStr::from("routing_key"),
                message_count: 0x12345604,
            }),
            "basic.get-ok",
        ),
        (Method::BasicGetEmpty, "basic.get-empty"),
        (
            Method::BasicAck(BasicAck {
                delivery_tag: 0x123456789abcde00,
                multiple: true,
            }),
            "basic.ack",
        ),
        (
            Method::BasicReject(BasicReject {
                delivery_tag: 0x123456789abcde00,
                requeue: true,
            }),
            "basic.reject",
        ),
        (
            Method::BasicRecoverAsync(BasicRecoverAsync { requeue: true }),
            "basic.recover-async",
        ),
        (
            Method::BasicRecover(BasicRecover { requeue: true }),
            "basic.recover",
        ),
        (Method::BasicRecoverOk, "basic.recover-ok"),
        (
            Method::BasicNack(BasicNack {
                delivery_tag: 0x123456789abcde00,
                multiple: true,
                requeue: false,
            }),
            "basic.nack",
        ),
        (
            Method::ConfirmSelect(ConfirmSelect { nowait: true }),
            "confirm.select",
        ),
        (Method::ConfirmSelectOk, "confirm.select-ok"),
        (Method::TxSelect, "tx.select"),
        (Method::TxSelectOk, "tx.select-ok"),
        (Method::TxCommit, "tx.commit"),
        (Method::TxCommitOk, "tx.commit-ok"),
        (Method::TxRollback, "tx.rollback"),
        (Method::TxRollbackOk, "tx.rollback-ok"),
    ]
}

#[test]
fn there_are_66_methods_with_unique_ids_and_names() {
    let all = every_method();
    assert_eq!(all.len(), 66);
    let mut ids: Vec<(u16, u16)> = all
        .iter()
        .map(|(m, _)| (m.class_id(), m.method_id()))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 66);
    for (m, name) in &all {
        assert_eq!(m.name(), *name);
    }
}

#[test]
fn every_method_round_trips() {
    for (method, name) in every_method() {
        let mut out = BytesMut::new();
        method
            .encode(&mut out)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let bytes = out.freeze();
        let ids = [bytes.get(..2), bytes.get(2..4)];
        assert_eq!(ids[0], Some(&method.class_id().to_be_bytes()[..]), "{name}");
        assert_eq!(
            ids[1],
            Some(&method.method_id().to_be_bytes()[..]),
            "{name}"
        );
        let args = bytes.slice(4..);
        let back = Method::decode(method.class_id(), method.method_id(), &args);
        assert_eq!(back.as_ref(), Ok(&method), "{name}");

        let mut again = BytesMut::new();
        back.map(|m| m.encode(&mut again))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(again.freeze(), bytes, "{name}");
    }
}

#[test]
fn every_truncation_of_every_method_is_a_syntax_error() {
    for (method, name) in every_method() {
        let mut out = BytesMut::new();
        method
            .encode(&mut out)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let args = out.freeze().slice(4..);
        for len in 0..args.len() {
            let got = Method::decode(method.class_id(), method.method_id(), &args.slice(..len));
            assert!(
                matches!(got, Err(CodecError::Syntax { class_id, method_id, .. })
                    if class_id == method.class_id() && method_id == method.method_id()),
                "{name} cut to {len}: {got:?}"
            );
        }
        let mut longer = BytesMut::from(&args[..]);
        longer.extend_from_slice(&[0]);
        let got = Method::decode(method.class_id(), method.method_id(), &longer.freeze());
        assert!(
            matches!(got, Err(CodecError::Syntax { .. })),
            "{name} + 1 byte: {got:?}"
        );
    }
}

#[test]
fn only_content_methods_have_content() {
    let with: Vec<&str> = every_method()
        .into_iter()
        .filter(|(m, _)| m.has_content())
        .map(|(_, n)| n)
        .collect();
    assert_eq!(
        with,
        [
            "basic.publish",
            "basic.return",
            "basic.deliver",
            "basic.get-ok"
        ]
    );
}

#[test]
fn unknown_methods_are_not_implemented() {
    for (c, m) in [(10, 12), (60, 0), (0, 0), (85, 12), (100, 10), (40, 41)] {
        let got = Method::decode(c, m, &Bytes::new());
        assert_eq!(
            got,
            Err(CodecError::UnknownMethod {
                class_id: c,
                method_id: m
            })
        );
    }
}
