//! AMQP 0-9-1 methods with RabbitMQ's extensions: one [`Method`] variant per
//! method, one struct per method that has arguments.
//!
//! Structs carry the specification's argument names in snake_case (`type`
//! becomes `kind`). `reserved-N` arguments are not fields: decoding skips
//! them without validating them, encoding writes zero or an empty string.
//! Methods without (non-reserved) arguments are unit variants. Consecutive
//! bit arguments share one octet, low bit first.

use bytes::BytesMut;

use crate::error::CodecError;
use crate::field::{FieldTable, LongStr, ShortStr};
use crate::wire::{ArgWriter, Reader, Res};

/// `connection.start` (10/10): Server's greeting: protocol version, properties, SASL mechanisms.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionStart {
    /// Protocol major version (0).
    pub version_major: u8,
    /// Protocol minor version (9).
    pub version_minor: u8,
    /// Server product, version, platform and capabilities.
    pub server_properties: FieldTable,
    /// Space-separated SASL mechanisms offered.
    pub mechanisms: LongStr,
    /// Space-separated message locales offered.
    pub locales: LongStr,
}

/// `connection.start-ok` (10/11): Client's choice of mechanism and its SASL response.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionStartOk {
    /// Client product, version, platform and capabilities.
    pub client_properties: FieldTable,
    /// SASL mechanism chosen.
    pub mechanism: ShortStr,
    /// SASL response data.
    pub response: LongStr,
    /// Message locale chosen.
    pub locale: ShortStr,
}

/// `connection.secure` (10/20): SASL challenge.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionSecure {
    /// SASL challenge data.
    pub challenge: LongStr,
}

/// `connection.secure-ok` (10/21): SASL challenge response.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionSecureOk {
    /// SASL response data.
    pub response: LongStr,
}

/// `connection.tune` (10/30): Server's proposed connection limits.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionTune {
    /// Highest channel number allowed; 0 means no limit.
    pub channel_max: u16,
    /// Largest frame size allowed in bytes; 0 means no limit.
    pub frame_max: u32,
    /// Heartbeat interval in seconds; 0 disables heartbeats.
    pub heartbeat: u16,
}

/// `connection.tune-ok` (10/31): Client's chosen connection limits.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionTuneOk {
    /// Highest channel number allowed; 0 means no limit.
    pub channel_max: u16,
    /// Largest frame size allowed in bytes; 0 means no limit.
    pub frame_max: u32,
    /// Heartbeat interval in seconds; 0 disables heartbeats.
    pub heartbeat: u16,
}

/// `connection.open` (10/40): Open a virtual host (reserved capabilities and insist skipped).
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionOpen {
    /// Virtual host name.
    pub virtual_host: ShortStr,
}

/// `connection.close` (10/50): Close the connection, with the reason.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionClose {
    /// AMQP reply code.
    pub reply_code: u16,
    /// Human-readable reason.
    pub reply_text: ShortStr,
    /// Class of the method that caused the close, or 0.
    pub class_id: u16,
    /// Method that caused the close, or 0.
    pub method_id: u16,
}

/// `connection.blocked` (10/60): RabbitMQ extension: the connection is blocked by a resource alarm.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionBlocked {
    /// Human-readable reason.
    pub reason: ShortStr,
}

/// `connection.update-secret` (10/70): RabbitMQ extension: replace the connection's credentials (e.g. an expiring token).
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionUpdateSecret {
    /// The new secret, e.g. a refreshed token.
    pub new_secret: LongStr,
    /// Human-readable reason.
    pub reason: ShortStr,
}

/// `channel.flow` (20/20): Ask the peer to pause or resume sending content.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelFlow {
    /// Whether content may flow.
    pub active: bool,
}

/// `channel.flow-ok` (20/21): Flow change confirmed.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelFlowOk {
    /// Whether content may flow.
    pub active: bool,
}

/// `channel.close` (20/40): Close the channel, with the reason.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelClose {
    /// AMQP reply code.
    pub reply_code: u16,
    /// Human-readable reason.
    pub reply_text: ShortStr,
    /// Class of the method that caused the close, or 0.
    pub class_id: u16,
    /// Method that caused the close, or 0.
    pub method_id: u16,
}

/// `access.request` (30/10): Deprecated access ticket request; RabbitMQ answers it and ignores it.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessRequest {
    /// Access realm (ignored).
    pub realm: ShortStr,
    /// Requested exclusive access (ignored).
    pub exclusive: bool,
    /// Requested passive access (ignored).
    pub passive: bool,
    /// Requested active access (ignored).
    pub active: bool,
    /// Requested write access (ignored).
    pub write: bool,
    /// Requested read access (ignored).
    pub read: bool,
}

/// `exchange.declare` (40/10): Create an exchange, or check that it exists.
#[derive(Debug, Clone, PartialEq)]
pub struct ExchangeDeclare {
    /// Exchange name.
    pub exchange: ShortStr,
    /// Exchange type (`type` in the spec): `direct`, `fanout`, `topic`, `headers`...
    pub kind: ShortStr,
    /// Only check that it exists; never create it.
    pub passive: bool,
    /// Survive a broker restart.
    pub durable: bool,
    /// Delete the exchange when its last binding is removed.
    pub auto_delete: bool,
    /// Clients may not publish to it directly.
    pub internal: bool,
    /// The peer sends no `-ok` reply.
    pub nowait: bool,
    /// Extension arguments (`x-...`).
    pub arguments: FieldTable,
}

/// `exchange.delete` (40/20): Delete an exchange.
#[derive(Debug, Clone, PartialEq)]
pub struct ExchangeDelete {
    /// Exchange name.
    pub exchange: ShortStr,
    /// Only delete if the exchange has no bindings.
    pub if_unused: bool,
    /// The peer sends no `-ok` reply.
    pub nowait: bool,
}

/// `exchange.bind` (40/30): RabbitMQ extension: bind an exchange to an exchange.
#[derive(Debug, Clone, PartialEq)]
pub struct ExchangeBind {
    /// Exchange that receives the messages.
    pub destination: ShortStr,
    /// Exchange the messages come from.
    pub source: ShortStr,
    /// Routing key.
    pub routing_key: ShortStr,
    /// The peer sends no `-ok` reply.
    pub nowait: bool,
    /// Extension arguments (`x-...`).
    pub arguments: FieldTable,
}

/// `exchange.unbind` (40/40): RabbitMQ extension: remove an exchange-to-exchange binding.
#[derive(Debug, Clone, PartialEq)]
pub struct ExchangeUnbind {
    /// Exchange that receives the messages.
    pub destination: ShortStr,
    /// Exchange the messages come from.
    pub source: ShortStr,
    /// Routing key.
    pub routing_key: ShortStr,
    /// The peer sends no `-ok` reply.
    pub nowait: bool,
    /// Extension arguments (`x-...`).
    pub arguments: FieldTable,
}

/// `queue.declare` (50/10): Create a queue, or check that it exists.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueDeclare {
    /// Queue name; empty asks the server to generate one.
    pub queue: ShortStr,
    /// Only check that it exists; never create it.
    pub passive: bool,
    /// Survive a broker restart.
    pub durable: bool,
    /// Owned by this connection and deleted with it.
    pub exclusive: bool,
    /// Delete the queue when its last consumer is cancelled.
    pub auto_delete: bool,
    /// The peer sends no `-ok` reply.
    pub nowait: bool,
    /// Extension arguments (`x-...`).
    pub arguments: FieldTable,
}

/// `queue.declare-ok` (50/11): Queue declared.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueDeclareOk {
    /// Queue name, as generated if the client left it empty.
    pub queue: ShortStr,
    /// Messages ready in the queue.
    pub message_count: u32,
    /// Active consumers.
    pub consumer_count: u32,
}

/// `queue.bind` (50/20): Bind a queue to an exchange.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueBind {
    /// Queue name; empty means the channel's last declared queue.
    pub queue: ShortStr,
    /// Exchange name.
    pub exchange: ShortStr,
    /// Binding key.
    pub routing_key: ShortStr,
    /// The peer sends no `-ok` reply.
    pub nowait: bool,
    /// Extension arguments (`x-...`).
    pub arguments: FieldTable,
}

/// `queue.purge` (50/30): Remove every ready message from a queue.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuePurge {
    /// Queue name; empty means the channel's last declared queue.
    pub queue: ShortStr,
    /// The peer sends no `-ok` reply.
    pub nowait: bool,
}

/// `queue.purge-ok` (50/31): Queue purged.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuePurgeOk {
    /// Messages purged.
    pub message_count: u32,
}

/// `queue.delete` (50/40): Delete a queue.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueDelete {
    /// Queue name; empty means the channel's last declared queue.
    pub queue: ShortStr,
    /// Only delete if the queue has no consumers.
    pub if_unused: bool,
    /// Only delete if the queue holds no messages.
    pub if_empty: bool,
    /// The peer sends no `-ok` reply.
    pub nowait: bool,
}

/// `queue.delete-ok` (50/41): Queue deleted.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueDeleteOk {
    /// Messages deleted with the queue.
    pub message_count: u32,
}

/// `queue.unbind` (50/50): Remove a queue binding (no `nowait`).
#[derive(Debug, Clone, PartialEq)]
pub struct QueueUnbind {
    /// Queue name; empty means the channel's last declared queue.
    pub queue: ShortStr,
    /// Exchange name.
    pub exchange: ShortStr,
    /// Binding key.
    pub routing_key: ShortStr,
    /// Extension arguments (`x-...`).
    pub arguments: FieldTable,
}

/// `basic.qos` (60/10): Set the prefetch window.
#[derive(Debug, Clone, PartialEq)]
pub struct BasicQos {
    /// Prefetch window in octets; 0 means no limit.
    pub prefetch_size: u32,
    /// Prefetch window in messages; 0 means no limit.
    pub prefetch_count: u16,
    /// Apply to the whole channel (RabbitMQ) instead of each new consumer.
    pub global: bool,
}

/// `basic.consume` (60/20): Start a consumer.
#[derive(Debug, Clone, PartialEq)]
pub struct BasicConsume {
    /// Queue name; empty means the channel's last declared queue.
    pub queue: ShortStr,
    /// Consumer tag; empty asks the server to generate one.
    pub consumer_tag: ShortStr,
    /// Do not receive messages published on this connection (ignored, as RabbitMQ).
    pub no_local: bool,
    /// Messages count as acknowledged once sent.
    pub no_ack: bool,
    /// Be the queue's only consumer.
    pub exclusive: bool,
    /// The peer sends no `-ok` reply.
    pub nowait: bool,
    /// Extension arguments (`x-...`).
    pub arguments: FieldTable,
}

/// `basic.consume-ok` (60/21): Consumer started.
#[derive(Debug, Clone, PartialEq)]
pub struct BasicConsumeOk {
    /// Consumer tag.
    pub consumer_tag: ShortStr,
}

/// `basic.cancel` (60/30): Cancel a consumer (sent by the server too, with consumer cancel notifications).
#[derive(Debug, Clone, PartialEq)]
pub struct BasicCancel {
    /// Consumer tag.
    pub consumer_tag: ShortStr,
    /// The peer sends no `-ok` reply.
    pub nowait: bool,
}

/// `basic.cancel-ok` (60/31): Consumer cancelled.
#[derive(Debug, Clone, PartialEq)]
pub struct BasicCancelOk {
    /// Consumer tag.
    pub consumer_tag: ShortStr,
}

/// `basic.publish` (60/40): Publish a message; a content header and body frames follow.
#[derive(Debug, Clone, PartialEq)]
pub struct BasicPublish {
    /// Exchange to publish to; empty is the default exchange.
    pub exchange: ShortStr,
    /// Routing key.
    pub routing_key: ShortStr,
    /// Return the message if no queue receives it.
    pub mandatory: bool,
    /// Return the message if no consumer takes it at once (not supported by RabbitMQ).
    pub immediate: bool,
}

/// `basic.return` (60/50): Return an unroutable mandatory message; content follows.
#[derive(Debug, Clone, PartialEq)]
pub struct BasicReturn {
    /// AMQP reply code.
    pub reply_code: u16,
    /// Human-readable reason.
    pub reply_text: ShortStr,
    /// Exchange the message was published to.
    pub exchange: ShortStr,
    /// Routing key.
    pub routing_key: ShortStr,
}

/// `basic.deliver` (60/60): Deliver a message to a consumer; content follows.
#[derive(Debug, Clone, PartialEq)]
pub struct BasicDeliver {
    /// Consumer tag.
    pub consumer_tag: ShortStr,
    /// Channel-scoped delivery tag.
    pub delivery_tag: u64,
    /// The message was delivered before.
    pub redelivered: bool,
    /// Exchange the message was published to.
    pub exchange: ShortStr,
    /// Routing key.
    pub routing_key: ShortStr,
}

/// `basic.get` (60/70): Fetch one message synchronously.
#[derive(Debug, Clone, PartialEq)]
pub struct BasicGet {
    /// Queue name; empty means the channel's last declared queue.
    pub queue: ShortStr,
    /// Messages count as acknowledged once sent.
    pub no_ack: bool,
}

/// `basic.get-ok` (60/71): Answer to `basic.get` with a message; content follows.
#[derive(Debug, Clone, PartialEq)]
pub struct BasicGetOk {
    /// Channel-scoped delivery tag.
    pub delivery_tag: u64,
    /// The message was delivered before.
    pub redelivered: bool,
    /// Exchange the message was published to.
    pub exchange: ShortStr,
    /// Routing key.
    pub routing_key: ShortStr,
    /// Messages left in the queue.
    pub message_count: u32,
}

/// `basic.ack` (60/80): Acknowledge one or more messages (from the server too, in confirm mode).
#[derive(Debug, Clone, PartialEq)]
pub struct BasicAck {
    /// Channel-scoped delivery tag.
    pub delivery_tag: u64,
    /// Also settle every earlier outstanding tag.
    pub multiple: bool,
}

/// `basic.reject` (60/90): Reject one message.
#[derive(Debug, Clone, PartialEq)]
pub struct BasicReject {
    /// Channel-scoped delivery tag.
    pub delivery_tag: u64,
    /// Requeue instead of discarding or dead-lettering.
    pub requeue: bool,
}

/// `basic.recover-async` (60/100): Deprecated asynchronous `basic.recover`.
#[derive(Debug, Clone, PartialEq)]
pub struct BasicRecoverAsync {
    /// Requeue instead of discarding or dead-lettering.
    pub requeue: bool,
}

/// `basic.recover` (60/110): Redeliver every unacknowledged message of the channel.
#[derive(Debug, Clone, PartialEq)]
pub struct BasicRecover {
    /// Requeue instead of discarding or dead-lettering.
    pub requeue: bool,
}

/// `basic.nack` (60/120): RabbitMQ extension: reject one or more messages (from the server too, in confirm mode).
#[derive(Debug, Clone, PartialEq)]
pub struct BasicNack {
    /// Channel-scoped delivery tag.
    pub delivery_tag: u64,
    /// Also settle every earlier outstanding tag.
    pub multiple: bool,
    /// Requeue instead of discarding or dead-lettering.
    pub requeue: bool,
}

/// `confirm.select` (85/10): RabbitMQ extension: put the channel in publisher-confirm mode.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfirmSelect {
    /// The peer sends no `-ok` reply.
    pub nowait: bool,
}

/// One AMQP method with its arguments.
#[derive(Debug, Clone, PartialEq)]
pub enum Method {
    /// `connection.start` (10/10): Server's greeting: protocol version, properties, SASL mechanisms.
    ConnectionStart(ConnectionStart),
    /// `connection.start-ok` (10/11): Client's choice of mechanism and its SASL response.
    ConnectionStartOk(ConnectionStartOk),
    /// `connection.secure` (10/20): SASL challenge.
    ConnectionSecure(ConnectionSecure),
    /// `connection.secure-ok` (10/21): SASL challenge response.
    ConnectionSecureOk(ConnectionSecureOk),
    /// `connection.tune` (10/30): Server's proposed connection limits.
    ConnectionTune(ConnectionTune),
    /// `connection.tune-ok` (10/31): Client's chosen connection limits.
    ConnectionTuneOk(ConnectionTuneOk),
    /// `connection.open` (10/40): Open a virtual host (reserved capabilities and insist skipped).
    ConnectionOpen(ConnectionOpen),
    /// `connection.open-ok` (10/41): Virtual host opened (reserved known-hosts skipped).
    ConnectionOpenOk,
    /// `connection.close` (10/50): Close the connection, with the reason.
    ConnectionClose(ConnectionClose),
    /// `connection.close-ok` (10/51): Connection close confirmed.
    ConnectionCloseOk,
    /// `connection.blocked` (10/60): RabbitMQ extension: the connection is blocked by a resource alarm.
    ConnectionBlocked(ConnectionBlocked),
    /// `connection.unblocked` (10/61): RabbitMQ extension: the connection is no longer blocked.
    ConnectionUnblocked,
    /// `connection.update-secret` (10/70): RabbitMQ extension: replace the connection's credentials (e.g. an expiring token).
    ConnectionUpdateSecret(ConnectionUpdateSecret),
    /// `connection.update-secret-ok` (10/71): RabbitMQ extension: secret updated.
    ConnectionUpdateSecretOk,
    /// `channel.open` (20/10): Open a channel (reserved out-of-band skipped).
    ChannelOpen,
    /// `channel.open-ok` (20/11): Channel opened (reserved channel-id skipped).
    ChannelOpenOk,
    /// `channel.flow` (20/20): Ask the peer to pause or resume sending content.
    ChannelFlow(ChannelFlow),
    /// `channel.flow-ok` (20/21): Flow change confirmed.
    ChannelFlowOk(ChannelFlowOk),
    /// `channel.close` (20/40): Close the channel, with the reason.
    ChannelClose(ChannelClose),
    /// `channel.close-ok` (20/41): Channel close confirmed.
    ChannelCloseOk,
    /// `access.request` (30/10): Deprecated access ticket request; RabbitMQ answers it and ignores it.
    AccessRequest(AccessRequest),
    /// `access.request-ok` (30/11): Access granted (reserved ticket skipped).
    AccessRequestOk,
    /// `exchange.declare` (40/10): Create an exchange, or check that it exists.
    ExchangeDeclare(ExchangeDeclare),
    /// `exchange.declare-ok` (40/11): Exchange declared.
    ExchangeDeclareOk,
    /// `exchange.delete` (40/20): Delete an exchange.
    ExchangeDelete(ExchangeDelete),
    /// `exchange.delete-ok` (40/21): Exchange deleted.
    ExchangeDeleteOk,
    /// `exchange.bind` (40/30): RabbitMQ extension: bind an exchange to an exchange.
    ExchangeBind(ExchangeBind),
    /// `exchange.bind-ok` (40/31): Exchange-to-exchange binding created.
    ExchangeBindOk,
    /// `exchange.unbind` (40/40): RabbitMQ extension: remove an exchange-to-exchange binding.
    ExchangeUnbind(ExchangeUnbind),
    /// `exchange.unbind-ok` (40/51): Exchange-to-exchange binding removed.
    ExchangeUnbindOk,
    /// `queue.declare` (50/10): Create a queue, or check that it exists.
    QueueDeclare(QueueDeclare),
    /// `queue.declare-ok` (50/11): Queue declared.
    QueueDeclareOk(QueueDeclareOk),
    /// `queue.bind` (50/20): Bind a queue to an exchange.
    QueueBind(QueueBind),
    /// `queue.bind-ok` (50/21): Queue bound.
    QueueBindOk,
    /// `queue.purge` (50/30): Remove every ready message from a queue.
    QueuePurge(QueuePurge),
    /// `queue.purge-ok` (50/31): Queue purged.
    QueuePurgeOk(QueuePurgeOk),
    /// `queue.delete` (50/40): Delete a queue.
    QueueDelete(QueueDelete),
    /// `queue.delete-ok` (50/41): Queue deleted.
    QueueDeleteOk(QueueDeleteOk),
    /// `queue.unbind` (50/50): Remove a queue binding (no `nowait`).
    QueueUnbind(QueueUnbind),
    /// `queue.unbind-ok` (50/51): Queue binding removed.
    QueueUnbindOk,
    /// `basic.qos` (60/10): Set the prefetch window.
    BasicQos(BasicQos),
    /// `basic.qos-ok` (60/11): Prefetch window set.
    BasicQosOk,
    /// `basic.consume` (60/20): Start a consumer.
    BasicConsume(BasicConsume),
    /// `basic.consume-ok` (60/21): Consumer started.
    BasicConsumeOk(BasicConsumeOk),
    /// `basic.cancel` (60/30): Cancel a consumer (sent by the server too, with consumer cancel notifications).
    BasicCancel(BasicCancel),
    /// `basic.cancel-ok` (60/31): Consumer cancelled.
    BasicCancelOk(BasicCancelOk),
    /// `basic.publish` (60/40): Publish a message; a content header and body frames follow.
    BasicPublish(BasicPublish),
    /// `basic.return` (60/50): Return an unroutable mandatory message; content follows.
    BasicReturn(BasicReturn),
    /// `basic.deliver` (60/60): Deliver a message to a consumer; content follows.
    BasicDeliver(BasicDeliver),
    /// `basic.get` (60/70): Fetch one message synchronously.
    BasicGet(BasicGet),
    /// `basic.get-ok` (60/71): Answer to `basic.get` with a message; content follows.
    BasicGetOk(BasicGetOk),
    /// `basic.get-empty` (60/72): Answer to `basic.get` when the queue is empty (reserved cluster-id skipped).
    BasicGetEmpty,
    /// `basic.ack` (60/80): Acknowledge one or more messages (from the server too, in confirm mode).
    BasicAck(BasicAck),
    /// `basic.reject` (60/90): Reject one message.
    BasicReject(BasicReject),
    /// `basic.recover-async` (60/100): Deprecated asynchronous `basic.recover`.
    BasicRecoverAsync(BasicRecoverAsync),
    /// `basic.recover` (60/110): Redeliver every unacknowledged message of the channel.
    BasicRecover(BasicRecover),
    /// `basic.recover-ok` (60/111): Recover done.
    BasicRecoverOk,
    /// `basic.nack` (60/120): RabbitMQ extension: reject one or more messages (from the server too, in confirm mode).
    BasicNack(BasicNack),
    /// `confirm.select` (85/10): RabbitMQ extension: put the channel in publisher-confirm mode.
    ConfirmSelect(ConfirmSelect),
    /// `confirm.select-ok` (85/11): Confirm mode on.
    ConfirmSelectOk,
    /// `tx.select` (90/10): Put the channel in transaction mode.
    TxSelect,
    /// `tx.select-ok` (90/11): Transaction mode on.
    TxSelectOk,
    /// `tx.commit` (90/20): Commit the current transaction.
    TxCommit,
    /// `tx.commit-ok` (90/21): Transaction committed.
    TxCommitOk,
    /// `tx.rollback` (90/30): Abandon the current transaction.
    TxRollback,
    /// `tx.rollback-ok` (90/31): Transaction rolled back.
    TxRollbackOk,
}

impl Method {
    /// Class id, method id and `class.method` name.
    fn info(&self) -> (u16, u16, &'static str) {
        match self {
            Self::ConnectionStart(_) => (10, 10, "connection.start"),
            Self::ConnectionStartOk(_) => (10, 11, "connection.start-ok"),
            Self::ConnectionSecure(_) => (10, 20, "connection.secure"),
            Self::ConnectionSecureOk(_) => (10, 21, "connection.secure-ok"),
            Self::ConnectionTune(_) => (10, 30, "connection.tune"),
            Self::ConnectionTuneOk(_) => (10, 31, "connection.tune-ok"),
            Self::ConnectionOpen(_) => (10, 40, "connection.open"),
            Self::ConnectionOpenOk => (10, 41, "connection.open-ok"),
            Self::ConnectionClose(_) => (10, 50, "connection.close"),
            Self::ConnectionCloseOk => (10, 51, "connection.close-ok"),
            Self::ConnectionBlocked(_) => (10, 60, "connection.blocked"),
            Self::ConnectionUnblocked => (10, 61, "connection.unblocked"),
            Self::ConnectionUpdateSecret(_) => (10, 70, "connection.update-secret"),
            Self::ConnectionUpdateSecretOk => (10, 71, "connection.update-secret-ok"),
            Self::ChannelOpen => (20, 10, "channel.open"),
            Self::ChannelOpenOk => (20, 11, "channel.open-ok"),
            Self::ChannelFlow(_) => (20, 20, "channel.flow"),
            Self::ChannelFlowOk(_) => (20, 21, "channel.flow-ok"),
            Self::ChannelClose(_) => (20, 40, "channel.close"),
            Self::ChannelCloseOk => (20, 41, "channel.close-ok"),
            Self::AccessRequest(_) => (30, 10, "access.request"),
            Self::AccessRequestOk => (30, 11, "access.request-ok"),
            Self::ExchangeDeclare(_) => (40, 10, "exchange.declare"),
            Self::ExchangeDeclareOk => (40, 11, "exchange.declare-ok"),
            Self::ExchangeDelete(_) => (40, 20, "exchange.delete"),
            Self::ExchangeDeleteOk => (40, 21, "exchange.delete-ok"),
            Self::ExchangeBind(_) => (40, 30, "exchange.bind"),
            Self::ExchangeBindOk => (40, 31, "exchange.bind-ok"),
            Self::ExchangeUnbind(_) => (40, 40, "exchange.unbind"),
            Self::ExchangeUnbindOk => (40, 51, "exchange.unbind-ok"),
            Self::QueueDeclare(_) => (50, 10, "queue.declare"),
            Self::QueueDeclareOk(_) => (50, 11, "queue.declare-ok"),
            Self::QueueBind(_) => (50, 20, "queue.bind"),
            Self::QueueBindOk => (50, 21, "queue.bind-ok"),
            Self::QueuePurge(_) => (50, 30, "queue.purge"),
            Self::QueuePurgeOk(_) => (50, 31, "queue.purge-ok"),
            Self::QueueDelete(_) => (50, 40, "queue.delete"),
            Self::QueueDeleteOk(_) => (50, 41, "queue.delete-ok"),
            Self::QueueUnbind(_) => (50, 50, "queue.unbind"),
            Self::QueueUnbindOk => (50, 51, "queue.unbind-ok"),
            Self::BasicQos(_) => (60, 10, "basic.qos"),
            Self::BasicQosOk => (60, 11, "basic.qos-ok"),
            Self::BasicConsume(_) => (60, 20, "basic.consume"),
            Self::BasicConsumeOk(_) => (60, 21, "basic.consume-ok"),
            Self::BasicCancel(_) => (60, 30, "basic.cancel"),
            Self::BasicCancelOk(_) => (60, 31, "basic.cancel-ok"),
            Self::BasicPublish(_) => (60, 40, "basic.publish"),
            Self::BasicReturn(_) => (60, 50, "basic.return"),
            Self::BasicDeliver(_) => (60, 60, "basic.deliver"),
            Self::BasicGet(_) => (60, 70, "basic.get"),
            Self::BasicGetOk(_) => (60, 71, "basic.get-ok"),
            Self::BasicGetEmpty => (60, 72, "basic.get-empty"),
            Self::BasicAck(_) => (60, 80, "basic.ack"),
            Self::BasicReject(_) => (60, 90, "basic.reject"),
            Self::BasicRecoverAsync(_) => (60, 100, "basic.recover-async"),
            Self::BasicRecover(_) => (60, 110, "basic.recover"),
            Self::BasicRecoverOk => (60, 111, "basic.recover-ok"),
            Self::BasicNack(_) => (60, 120, "basic.nack"),
            Self::ConfirmSelect(_) => (85, 10, "confirm.select"),
            Self::ConfirmSelectOk => (85, 11, "confirm.select-ok"),
            Self::TxSelect => (90, 10, "tx.select"),
            Self::TxSelectOk => (90, 11, "tx.select-ok"),
            Self::TxCommit => (90, 20, "tx.commit"),
            Self::TxCommitOk => (90, 21, "tx.commit-ok"),
            Self::TxRollback => (90, 30, "tx.rollback"),
            Self::TxRollbackOk => (90, 31, "tx.rollback-ok"),
        }
    }

    /// The class id, e.g. 60 for `basic.publish`.
    pub fn class_id(&self) -> u16 {
        self.info().0
    }

    /// The method id within its class, e.g. 40 for `basic.publish`.
    pub fn method_id(&self) -> u16 {
        self.info().1
    }

    /// The method's name as `class.method`, e.g. `"basic.publish"`.
    pub fn name(&self) -> &'static str {
        self.info().2
    }

    /// Whether a content header and body follow the method: `basic.publish`,
    /// `basic.return`, `basic.deliver` and `basic.get-ok`.
    pub fn has_content(&self) -> bool {
        matches!(
            self,
            Self::BasicPublish(_)
                | Self::BasicReturn(_)
                | Self::BasicDeliver(_)
                | Self::BasicGetOk(_)
        )
    }

    /// Appends class id, method id and arguments (a method frame's payload)
    /// to `out`. Fails with [`CodecError::TooLong`] on a shortstr over 255
    /// bytes or an oversized table or longstr, in which case nothing is
    /// appended.
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), CodecError> {
        let start = out.len();
        let result = self.encode_inner(out);
        if result.is_err() {
            out.truncate(start);
        }
        result
    }

    /// Decodes the arguments `args` (the method frame's payload after the
    /// class and method ids) of method `class_id`/`method_id`. Strings are
    /// zero-copy slices of `args`. Unknown ids give
    /// [`CodecError::UnknownMethod`]; truncated arguments, bytes left over
    /// after them, invalid UTF-8 in a shortstr or a bad field table give
    /// [`CodecError::Syntax`].
    pub fn decode(
        class_id: u16,
        method_id: u16,
        args: &bytes::Bytes,
    ) -> Result<Method, CodecError> {
        let syntax = |reason| CodecError::Syntax {
            class_id,
            method_id,
            reason,
        };
        let mut r = Reader::new(args);
        let Some(method) = decode_args(class_id, method_id, &mut r).map_err(syntax)? else {
            return Err(CodecError::UnknownMethod {
                class_id,
                method_id,
            });
        };
        if r.remaining() != 0 {
            return Err(syntax("trailing bytes after method arguments"));
        }
        Ok(method)
    }

    fn encode_inner(&self, out: &mut BytesMut) -> Result<(), CodecError> {
        let (class_id, method_id, _) = self.info();
        let mut w = ArgWriter::new(out);
        w.u16(class_id);
        w.u16(method_id);
        match self {
            Self::ConnectionStart(m) => {
                w.u8(m.version_major);
                w.u8(m.version_minor);
                w.table(&m.server_properties)?;
                w.longstr(&m.mechanisms)?;
                w.longstr(&m.locales)?;
            }
            Self::ConnectionStartOk(m) => {
                w.table(&m.client_properties)?;
                w.shortstr(&m.mechanism)?;
                w.longstr(&m.response)?;
                w.shortstr(&m.locale)?;
            }
            Self::ConnectionSecure(m) => {
                w.longstr(&m.challenge)?;
            }
            Self::ConnectionSecureOk(m) => {
                w.longstr(&m.response)?;
            }
            Self::ConnectionTune(m) => {
                w.u16(m.channel_max);
                w.u32(m.frame_max);
                w.u16(m.heartbeat);
            }
            Self::ConnectionTuneOk(m) => {
                w.u16(m.channel_max);
                w.u32(m.frame_max);
                w.u16(m.heartbeat);
            }
            Self::ConnectionOpen(m) => {
                w.shortstr(&m.virtual_host)?;
                w.u8(0);
                w.bit(false);
            }
            Self::ConnectionOpenOk => {
                w.u8(0);
            }
            Self::ConnectionClose(m) => {
                w.u16(m.reply_code);
                w.shortstr(&m.reply_text)?;
                w.u16(m.class_id);
                w.u16(m.method_id);
            }
            Self::ConnectionBlocked(m) => {
                w.shortstr(&m.reason)?;
            }
            Self::ConnectionUpdateSecret(m) => {
                w.longstr(&m.new_secret)?;
                w.shortstr(&m.reason)?;
            }
            Self::ChannelOpen => {
                w.u8(0);
            }
            Self::ChannelOpenOk => {
                w.u32(0);
            }
            Self::ChannelFlow(m) => {
                w.bit(m.active);
            }
            Self::ChannelFlowOk(m) => {
                w.bit(m.active);
            }
            Self::ChannelClose(m) => {
                w.u16(m.reply_code);
                w.shortstr(&m.reply_text)?;
                w.u16(m.class_id);
                w.u16(m.method_id);
            }
            Self::AccessRequest(m) => {
                w.shortstr(&m.realm)?;
                w.bit(m.exclusive);
                w.bit(m.passive);
                w.bit(m.active);
                w.bit(m.write);
                w.bit(m.read);
            }
            Self::AccessRequestOk => {
                w.u16(0);
            }
            Self::ExchangeDeclare(m) => {
                w.u16(0);
                w.shortstr(&m.exchange)?;
                w.shortstr(&m.kind)?;
                w.bit(m.passive);
                w.bit(m.durable);
                w.bit(m.auto_delete);
                w.bit(m.internal);
                w.bit(m.nowait);
                w.table(&m.arguments)?;
            }
            Self::ExchangeDelete(m) => {
                w.u16(0);
                w.shortstr(&m.exchange)?;
                w.bit(m.if_unused);
                w.bit(m.nowait);
            }
            Self::ExchangeBind(m) => {
                w.u16(0);
                w.shortstr(&m.destination)?;
                w.shortstr(&m.source)?;
                w.shortstr(&m.routing_key)?;
                w.bit(m.nowait);
                w.table(&m.arguments)?;
            }
            Self::ExchangeUnbind(m) => {
                w.u16(0);
                w.shortstr(&m.destination)?;
                w.shortstr(&m.source)?;
                w.shortstr(&m.routing_key)?;
                w.bit(m.nowait);
                w.table(&m.arguments)?;
            }
            Self::QueueDeclare(m) => {
                w.u16(0);
                w.shortstr(&m.queue)?;
                w.bit(m.passive);
                w.bit(m.durable);
                w.bit(m.exclusive);
                w.bit(m.auto_delete);
                w.bit(m.nowait);
                w.table(&m.arguments)?;
            }
            Self::QueueDeclareOk(m) => {
                w.shortstr(&m.queue)?;
                w.u32(m.message_count);
                w.u32(m.consumer_count);
            }
            Self::QueueBind(m) => {
                w.u16(0);
                w.shortstr(&m.queue)?;
                w.shortstr(&m.exchange)?;
                w.shortstr(&m.routing_key)?;
                w.bit(m.nowait);
                w.table(&m.arguments)?;
            }
            Self::QueuePurge(m) => {
                w.u16(0);
                w.shortstr(&m.queue)?;
                w.bit(m.nowait);
            }
            Self::QueuePurgeOk(m) => {
                w.u32(m.message_count);
            }
            Self::QueueDelete(m) => {
                w.u16(0);
                w.shortstr(&m.queue)?;
                w.bit(m.if_unused);
                w.bit(m.if_empty);
                w.bit(m.nowait);
            }
            Self::QueueDeleteOk(m) => {
                w.u32(m.message_count);
            }
            Self::QueueUnbind(m) => {
                w.u16(0);
                w.shortstr(&m.queue)?;
                w.shortstr(&m.exchange)?;
                w.shortstr(&m.routing_key)?;
                w.table(&m.arguments)?;
            }
            Self::BasicQos(m) => {
                w.u32(m.prefetch_size);
                w.u16(m.prefetch_count);
                w.bit(m.global);
            }
            Self::BasicConsume(m) => {
                w.u16(0);
                w.shortstr(&m.queue)?;
                w.shortstr(&m.consumer_tag)?;
                w.bit(m.no_local);
                w.bit(m.no_ack);
                w.bit(m.exclusive);
                w.bit(m.nowait);
                w.table(&m.arguments)?;
            }
            Self::BasicConsumeOk(m) => {
                w.shortstr(&m.consumer_tag)?;
            }
            Self::BasicCancel(m) => {
                w.shortstr(&m.consumer_tag)?;
                w.bit(m.nowait);
            }
            Self::BasicCancelOk(m) => {
                w.shortstr(&m.consumer_tag)?;
            }
            Self::BasicPublish(m) => {
                w.u16(0);
                w.shortstr(&m.exchange)?;
                w.shortstr(&m.routing_key)?;
                w.bit(m.mandatory);
                w.bit(m.immediate);
            }
            Self::BasicReturn(m) => {
                w.u16(m.reply_code);
                w.shortstr(&m.reply_text)?;
                w.shortstr(&m.exchange)?;
                w.shortstr(&m.routing_key)?;
            }
            Self::BasicDeliver(m) => {
                w.shortstr(&m.consumer_tag)?;
                w.u64(m.delivery_tag);
                w.bit(m.redelivered);
                w.shortstr(&m.exchange)?;
                w.shortstr(&m.routing_key)?;
            }
            Self::BasicGet(m) => {
                w.u16(0);
                w.shortstr(&m.queue)?;
                w.bit(m.no_ack);
            }
            Self::BasicGetOk(m) => {
                w.u64(m.delivery_tag);
                w.bit(m.redelivered);
                w.shortstr(&m.exchange)?;
                w.shortstr(&m.routing_key)?;
                w.u32(m.message_count);
            }
            Self::BasicGetEmpty => {
                w.u8(0);
            }
            Self::BasicAck(m) => {
                w.u64(m.delivery_tag);
                w.bit(m.multiple);
            }
            Self::BasicReject(m) => {
                w.u64(m.delivery_tag);
                w.bit(m.requeue);
            }
            Self::BasicRecoverAsync(m) => {
                w.bit(m.requeue);
            }
            Self::BasicRecover(m) => {
                w.bit(m.requeue);
            }
            Self::BasicNack(m) => {
                w.u64(m.delivery_tag);
                w.bit(m.multiple);
                w.bit(m.requeue);
            }
            Self::ConfirmSelect(m) => {
                w.bit(m.nowait);
            }
            _ => {}
        }
        Ok(())
    }
}

/// The arguments of a known method, or `None` for an unknown one.
fn decode_args(class_id: u16, method_id: u16, r: &mut Reader<'_>) -> Res<Option<Method>> {
    Ok(Some(match (class_id, method_id) {
        (10, 10) => {
            let version_major = r.u8()?;
            let version_minor = r.u8()?;
            let server_properties = r.table()?;
            let mechanisms = r.longstr()?;
            let locales = r.longstr()?;
            Method::ConnectionStart(ConnectionStart {
                version_major,
                version_minor,
                server_properties,
                mechanisms,
                locales,
            })
        }
        (10, 11) => {
            let client_properties = r.table()?;
            let mechanism = r.shortstr()?;
            let response = r.longstr()?;
            let locale = r.shortstr()?;
            Method::ConnectionStartOk(ConnectionStartOk {
                client_properties,
                mechanism,
                response,
                locale,
            })
        }
        (10, 20) => {
            let challenge = r.longstr()?;
            Method::ConnectionSecure(ConnectionSecure { challenge })
        }
        (10, 21) => {
            let response = r.longstr()?;
            Method::ConnectionSecureOk(ConnectionSecureOk { response })
        }
        (10, 30) => {
            let channel_max = r.u16()?;
            let frame_max = r.u32()?;
            let heartbeat = r.u16()?;
            Method::ConnectionTune(ConnectionTune {
                channel_max,
                frame_max,
                heartbeat,
            })
        }
        (10, 31) => {
            let channel_max = r.u16()?;
            let frame_max = r.u32()?;
            let heartbeat = r.u16()?;
            Method::ConnectionTuneOk(ConnectionTuneOk {
                channel_max,
                frame_max,
                heartbeat,
            })
        }
        (10, 40) => {
            let virtual_host = r.shortstr()?;
            r.skip_shortstr()?;
            r.bit()?;
            Method::ConnectionOpen(ConnectionOpen { virtual_host })
        }
        (10, 41) => {
            r.skip_shortstr()?;
            Method::ConnectionOpenOk
        }
        (10, 50) => {
            let reply_code = r.u16()?;
            let reply_text = r.shortstr()?;
            let class_id = r.u16()?;
            let method_id = r.u16()?;
            Method::ConnectionClose(ConnectionClose {
                reply_code,
                reply_text,
                class_id,
                method_id,
            })
        }
        (10, 51) => Method::ConnectionCloseOk,
        (10, 60) => {
            let reason = r.shortstr()?;
            Method::ConnectionBlocked(ConnectionBlocked { reason })
        }
        (10, 61) => Method::ConnectionUnblocked,
        (10, 70) => {
            let new_secret = r.longstr()?;
            let reason = r.shortstr()?;
            Method::ConnectionUpdateSecret(ConnectionUpdateSecret { new_secret, reason })
        }
        (10, 71) => Method::ConnectionUpdateSecretOk,
        (20, 10) => {
            r.skip_shortstr()?;
            Method::ChannelOpen
        }
        (20, 11) => {
            r.longstr()?;
            Method::ChannelOpenOk
        }
        (20, 20) => {
            let active = r.bit()?;
            Method::ChannelFlow(ChannelFlow { active })
        }
        (20, 21) => {
            let active = r.bit()?;
            Method::ChannelFlowOk(ChannelFlowOk { active })
        }
        (20, 40) => {
            let reply_code = r.u16()?;
            let reply_text = r.shortstr()?;
            let class_id = r.u16()?;
            let method_id = r.u16()?;
            Method::ChannelClose(ChannelClose {
                reply_code,
                reply_text,
                class_id,
                method_id,
            })
        }
        (20, 41) => Method::ChannelCloseOk,
        (30, 10) => {
            let realm = r.shortstr()?;
            let exclusive = r.bit()?;
            let passive = r.bit()?;
            let active = r.bit()?;
            let write = r.bit()?;
            let read = r.bit()?;
            Method::AccessRequest(AccessRequest {
                realm,
                exclusive,
                passive,
                active,
                write,
                read,
            })
        }
        (30, 11) => {
            r.u16()?;
            Method::AccessRequestOk
        }
        (40, 10) => {
            r.u16()?;
            let exchange = r.shortstr()?;
            let kind = r.shortstr()?;
            let passive = r.bit()?;
            let durable = r.bit()?;
            let auto_delete = r.bit()?;
            let internal = r.bit()?;
            let nowait = r.bit()?;
            let arguments = r.table()?;
            Method::ExchangeDeclare(ExchangeDeclare {
                exchange,
                kind,
                passive,
                durable,
                auto_delete,
                internal,
                nowait,
                arguments,
            })
        }
        (40, 11) => Method::ExchangeDeclareOk,
        (40, 20) => {
            r.u16()?;
            let exchange = r.shortstr()?;
            let if_unused = r.bit()?;
            let nowait = r.bit()?;
            Method::ExchangeDelete(ExchangeDelete {
                exchange,
                if_unused,
                nowait,
            })
        }
        (40, 21) => Method::ExchangeDeleteOk,
        (40, 30) => {
            r.u16()?;
            let destination = r.shortstr()?;
            let source = r.shortstr()?;
            let routing_key = r.shortstr()?;
            let nowait = r.bit()?;
            let arguments = r.table()?;
            Method::ExchangeBind(ExchangeBind {
                destination,
                source,
                routing_key,
                nowait,
                arguments,
            })
        }
        (40, 31) => Method::ExchangeBindOk,
        (40, 40) => {
            r.u16()?;
            let destination = r.shortstr()?;
            let source = r.shortstr()?;
            let routing_key = r.shortstr()?;
            let nowait = r.bit()?;
            let arguments = r.table()?;
            Method::ExchangeUnbind(ExchangeUnbind {
                destination,
                source,
                routing_key,
                nowait,
                arguments,
            })
        }
        (40, 51) => Method::ExchangeUnbindOk,
        (50, 10) => {
            r.u16()?;
            let queue = r.shortstr()?;
            let passive = r.bit()?;
            let durable = r.bit()?;
            let exclusive = r.bit()?;
            let auto_delete = r.bit()?;
            let nowait = r.bit()?;
            let arguments = r.table()?;
            Method::QueueDeclare(QueueDeclare {
                queue,
                passive,
                durable,
                exclusive,
                auto_delete,
                nowait,
                arguments,
            })
        }
        (50, 11) => {
            let queue = r.shortstr()?;
            let message_count = r.u32()?;
            let consumer_count = r.u32()?;
            Method::QueueDeclareOk(QueueDeclareOk {
                queue,
                message_count,
                consumer_count,
            })
        }
        (50, 20) => {
            r.u16()?;
            let queue = r.shortstr()?;
            let exchange = r.shortstr()?;
            let routing_key = r.shortstr()?;
            let nowait = r.bit()?;
            let arguments = r.table()?;
            Method::QueueBind(QueueBind {
                queue,
                exchange,
                routing_key,
                nowait,
                arguments,
            })
        }
        (50, 21) => Method::QueueBindOk,
        (50, 30) => {
            r.u16()?;
            let queue = r.shortstr()?;
            let nowait = r.bit()?;
            Method::QueuePurge(QueuePurge { queue, nowait })
        }
        (50, 31) => {
            let message_count = r.u32()?;
            Method::QueuePurgeOk(QueuePurgeOk { message_count })
        }
        (50, 40) => {
            r.u16()?;
            let queue = r.shortstr()?;
            let if_unused = r.bit()?;
            let if_empty = r.bit()?;
            let nowait = r.bit()?;
            Method::QueueDelete(QueueDelete {
                queue,
                if_unused,
                if_empty,
                nowait,
            })
        }
        (50, 41) => {
            let message_count = r.u32()?;
            Method::QueueDeleteOk(QueueDeleteOk { message_count })
        }
        (50, 50) => {
            r.u16()?;
            let queue = r.shortstr()?;
            let exchange = r.shortstr()?;
            let routing_key = r.shortstr()?;
            let arguments = r.table()?;
            Method::QueueUnbind(QueueUnbind {
                queue,
                exchange,
                routing_key,
                arguments,
            })
        }
        (50, 51) => Method::QueueUnbindOk,
        (60, 10) => {
            let prefetch_size = r.u32()?;
            let prefetch_count = r.u16()?;
            let global = r.bit()?;
            Method::BasicQos(BasicQos {
                prefetch_size,
                prefetch_count,
                global,
            })
        }
        (60, 11) => Method::BasicQosOk,
        (60, 20) => {
            r.u16()?;
            let queue = r.shortstr()?;
            let consumer_tag = r.shortstr()?;
            let no_local = r.bit()?;
            let no_ack = r.bit()?;
            let exclusive = r.bit()?;
            let nowait = r.bit()?;
            let arguments = r.table()?;
            Method::BasicConsume(BasicConsume {
                queue,
                consumer_tag,
                no_local,
                no_ack,
                exclusive,
                nowait,
                arguments,
            })
        }
        (60, 21) => {
            let consumer_tag = r.shortstr()?;
            Method::BasicConsumeOk(BasicConsumeOk { consumer_tag })
        }
        (60, 30) => {
            let consumer_tag = r.shortstr()?;
            let nowait = r.bit()?;
            Method::BasicCancel(BasicCancel {
                consumer_tag,
                nowait,
            })
        }
        (60, 31) => {
            let consumer_tag = r.shortstr()?;
            Method::BasicCancelOk(BasicCancelOk { consumer_tag })
        }
        (60, 40) => {
            r.u16()?;
            let exchange = r.shortstr()?;
            let routing_key = r.shortstr()?;
            let mandatory = r.bit()?;
            let immediate = r.bit()?;
            Method::BasicPublish(BasicPublish {
                exchange,
                routing_key,
                mandatory,
                immediate,
            })
        }
        (60, 50) => {
            let reply_code = r.u16()?;
            let reply_text = r.shortstr()?;
            let exchange = r.shortstr()?;
            let routing_key = r.shortstr()?;
            Method::BasicReturn(BasicReturn {
                reply_code,
                reply_text,
                exchange,
                routing_key,
            })
        }
        (60, 60) => {
            let consumer_tag = r.shortstr()?;
            let delivery_tag = r.u64()?;
            let redelivered = r.bit()?;
            let exchange = r.shortstr()?;
            let routing_key = r.shortstr()?;
            Method::BasicDeliver(BasicDeliver {
                consumer_tag,
                delivery_tag,
                redelivered,
                exchange,
                routing_key,
            })
        }
        (60, 70) => {
            r.u16()?;
            let queue = r.shortstr()?;
            let no_ack = r.bit()?;
            Method::BasicGet(BasicGet { queue, no_ack })
        }
        (60, 71) => {
            let delivery_tag = r.u64()?;
            let redelivered = r.bit()?;
            let exchange = r.shortstr()?;
            let routing_key = r.shortstr()?;
            let message_count = r.u32()?;
            Method::BasicGetOk(BasicGetOk {
                delivery_tag,
                redelivered,
                exchange,
                routing_key,
                message_count,
            })
        }
        (60, 72) => {
            r.skip_shortstr()?;
            Method::BasicGetEmpty
        }
        (60, 80) => {
            let delivery_tag = r.u64()?;
            let multiple = r.bit()?;
            Method::BasicAck(BasicAck {
                delivery_tag,
                multiple,
            })
        }
        (60, 90) => {
            let delivery_tag = r.u64()?;
            let requeue = r.bit()?;
            Method::BasicReject(BasicReject {
                delivery_tag,
                requeue,
            })
        }
        (60, 100) => {
            let requeue = r.bit()?;
            Method::BasicRecoverAsync(BasicRecoverAsync { requeue })
        }
        (60, 110) => {
            let requeue = r.bit()?;
            Method::BasicRecover(BasicRecover { requeue })
        }
        (60, 111) => Method::BasicRecoverOk,
        (60, 120) => {
            let delivery_tag = r.u64()?;
            let multiple = r.bit()?;
            let requeue = r.bit()?;
            Method::BasicNack(BasicNack {
                delivery_tag,
                multiple,
                requeue,
            })
        }
        (85, 10) => {
            let nowait = r.bit()?;
            Method::ConfirmSelect(ConfirmSelect { nowait })
        }
        (85, 11) => Method::ConfirmSelectOk,
        (90, 10) => Method::TxSelect,
        (90, 11) => Method::TxSelectOk,
        (90, 20) => Method::TxCommit,
        (90, 21) => Method::TxCommitOk,
        (90, 30) => Method::TxRollback,
        (90, 31) => Method::TxRollbackOk,
        _ => return Ok(None),
    }))
}
