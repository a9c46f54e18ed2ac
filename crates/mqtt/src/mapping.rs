//! MQTT and AMQP views of one message, as RabbitMQ's MQTT plugin maps them.
//!
//! - Topic `a/b.c` is routing key `a.b/c` on exchange `amq.topic`: `/` and
//!   `.` swap, so the mapping is its own inverse.
//! - Filter `+` is `*`, `#` is `#`.
//! - QoS 1 and 2 publishes are persistent (`delivery_mode` 2) and carry
//!   the header `x-mqtt-publish-qos`; a retained publish carries
//!   `x-mqtt-retain` so Retain As Published can be honoured downstream.
//! - MQTT 5 properties: Content Type is `content_type`; Correlation Data is
//!   `correlation_id` when it is short UTF-8, else header
//!   `x-correlation-id`; Response Topic is header `x-reply-to-topic` (as a
//!   routing key; `reply_to` names a queue, not a topic);
//!   Message Expiry Interval is `expiration`; User Properties are headers
//!   (order and duplicates kept); Payload Format Indicator is header
//!   `x-mqtt-payload-format-indicator`.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use liebre_amqp_codec::{BasicProperties, FieldTable, FieldValue, ShortStr};
use liebre_core::Message;
use liebre_mqtt_codec::{Properties, QoS, Str};

/// The exchange MQTT publishes to and subscribes from.
pub const MQTT_EXCHANGE: &str = "amq.topic";

const QOS_HEADER: &str = "x-mqtt-publish-qos";
const RETAIN_HEADER: &str = "x-mqtt-retain";
const CORRELATION_HEADER: &str = "x-correlation-id";
const FORMAT_HEADER: &str = "x-mqtt-payload-format-indicator";
const REPLY_TOPIC_HEADER: &str = "x-reply-to-topic";

/// Swap `/` and `.`: MQTT topic to AMQP routing key and back.
pub fn swap_separators(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '/' => '.',
            '.' => '/',
            c => c,
        })
        .collect()
}

/// An MQTT topic filter as an AMQP topic binding key.
pub fn filter_to_binding_key(filter: &str) -> String {
    swap_separators(filter)
        .split('.')
        .map(|w| if w == "+" { "*" } else { w })
        .collect::<Vec<_>>()
        .join(".")
}

/// Build the core message for an MQTT PUBLISH.
pub fn to_message(
    topic: &str,
    qos: QoS,
    retain: bool,
    payload: Bytes,
    props: Option<&Properties>,
    origin: u64,
) -> Message {
    let mut p = BasicProperties::default();
    let mut headers = FieldTable::default();
    if qos != QoS::AtMostOnce {
        p.delivery_mode = Some(2);
        headers.insert(ShortStr::from(QOS_HEADER), FieldValue::U8(qos as u8));
    }
    if retain {
        headers.insert(ShortStr::from(RETAIN_HEADER), FieldValue::Bool(true));
    }
    if let Some(props) = props {
        if let Some(ct) = &props.content_type {
            p.content_type = Some(short(ct));
        }
        if let Some(cd) = &props.correlation_data {
            match std::str::from_utf8(cd) {
                Ok(s) if s.len() <= 255 => p.correlation_id = Some(ShortStr::from(s)),
                _ => headers.insert(
                    ShortStr::from(CORRELATION_HEADER),
                    FieldValue::ByteArray(cd.clone()),
                ),
            }
        }
        if let Some(rt) = &props.response_topic {
            headers.insert(
                ShortStr::from(REPLY_TOPIC_HEADER),
                FieldValue::LongString(Bytes::from(swap_separators(rt))),
            );
        }
        if let Some(secs) = props.message_expiry_interval {
            p.expiration = Some(ShortStr::from((u64::from(secs) * 1000).to_string()));
        }
        if let Some(f) = props.payload_format_indicator {
            headers.insert(ShortStr::from(FORMAT_HEADER), FieldValue::U8(f));
        }
        for (k, v) in &props.user_properties {
            // Pushed, not inserted: MQTT keeps order and duplicate keys.
            headers
                .0
                .push((short(k), FieldValue::LongString(v.as_bytes().clone())));
        }
    }
    if !headers.is_empty() {
        p.headers = Some(headers);
    }
    let mut m = Message::with_properties(
        ShortStr::from(MQTT_EXCHANGE),
        ShortStr::from(swap_separators(topic)),
        p,
        payload,
    );
    m.origin = origin;
    m
}

fn short(s: &Str) -> ShortStr {
    let s: &str = s;
    let mut end = s.len().min(255);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    ShortStr::from(&s[..end])
}

/// What an MQTT subscriber needs to know about a core message.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The topic (from the routing key).
    pub topic: String,
    /// The QoS it was published with (AMQP: persistent is 1).
    pub qos: QoS,
    /// It was published retained.
    pub retain: bool,
    /// MQTT 5 properties to send (subscription identifiers and topic alias
    /// are added per subscriber).
    pub properties: Properties,
}

/// Read a core message as MQTT. `expires_at` is when it expires, so the
/// Message Expiry Interval sent is what remains of it.
pub fn from_message(m: &Arc<Message>, expires_at: Option<Instant>, now: Instant) -> Outgoing {
    let p = &m.properties;
    let mut props = Properties::default();
    let mut qos = if p.delivery_mode == Some(2) {
        QoS::AtLeastOnce
    } else {
        QoS::AtMostOnce
    };
    let mut retain = false;
    if let Some(ct) = &p.content_type {
        props.content_type = Some(Str::from(&**ct));
    }
    if let Some(c) = &p.correlation_id {
        props.correlation_data = Some(Bytes::copy_from_slice(c.as_bytes()));
    }
    if let Some(at) = expires_at {
        let left = at.saturating_duration_since(now);
        // Round up: a message with 0.4 s left must not claim 0 (no expiry).
        let secs = (left.as_secs() + u64::from(left.subsec_nanos() > 0)).max(1);
        props.message_expiry_interval = Some(u32::try_from(secs).unwrap_or(u32::MAX));
    }
    if let Some(h) = &p.headers {
        for (k, v) in h.iter() {
            match &**k {
                QOS_HEADER => {
                    if let Some(q) = v
                        .as_i64()
                        .and_then(|q| u8::try_from(q).ok())
                        .and_then(QoS::from_u8)
                    {
                        qos = q;
                    }
                }
                RETAIN_HEADER => retain = v.as_bool().unwrap_or(false),
                CORRELATION_HEADER => {
                    if let FieldValue::ByteArray(b) | FieldValue::LongString(b) = v {
                        props.correlation_data = Some(b.clone());
                    }
                }
                REPLY_TOPIC_HEADER => {
                    if let Some(t) = v.as_str() {
                        props.response_topic = Some(Str::from(swap_separators(t)));
                    }
                }
                FORMAT_HEADER => {
                    props.payload_format_indicator = v.as_i64().and_then(|f| u8::try_from(f).ok())
                }
                key if key.starts_with("x-") => {}
                key => {
                    if let Some(s) = v.as_str() {
                        props.user_properties.push((Str::from(key), Str::from(s)));
                    }
                }
            }
        }
    }
    Outgoing {
        topic: swap_separators(&m.routing_key),
        qos,
        retain,
        properties: props,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn topics_and_filters_map_like_rabbitmq() {
        assert_eq!(
            swap_separators("acme/v1/planta-1/norte/temp"),
            "acme.v1.planta-1.norte.temp"
        );
        assert_eq!(swap_separators("a.b/c"), "a/b.c");
        assert_eq!(swap_separators(&swap_separators("x/y.z/")), "x/y.z/");
        assert_eq!(
            filter_to_binding_key("acme/+/planta-1/#"),
            "acme.*.planta-1.#"
        );
        assert_eq!(
            filter_to_binding_key("fiscalberry/errors/+"),
            "fiscalberry.errors.*"
        );
    }

    #[test]
    fn properties_survive_the_round_trip() {
        let props = Properties {
            content_type: Some(Str::from("application/json")),
            correlation_data: Some(Bytes::from_static(b"req-42")),
            response_topic: Some(Str::from("replies/client-7")),
            message_expiry_interval: Some(30),
            payload_format_indicator: Some(1),
            user_properties: vec![
                (Str::from("k"), Str::from("1")),
                (Str::from("k"), Str::from("2")),
                (Str::from("site"), Str::from("norte")),
            ],
            ..Default::default()
        };
        let m = to_message(
            "a/b",
            QoS::ExactlyOnce,
            true,
            Bytes::from_static(b"x"),
            Some(&props),
            9,
        );
        assert_eq!(&*m.routing_key, "a.b");
        assert_eq!(m.properties.delivery_mode, Some(2));
        let headers = m.properties.headers.as_ref().expect("headers");
        assert_eq!(
            headers.get("x-reply-to-topic").and_then(FieldValue::as_str),
            Some("replies.client-7")
        );
        assert_eq!(
            m.properties.reply_to, None,
            "reply_to names a queue, not a topic"
        );
        assert_eq!(m.properties.expiration.as_deref(), Some("30000"));
        let now = Instant::now();
        let out = from_message(&Arc::new(m), Some(now + Duration::from_secs(30)), now);
        assert_eq!(out.topic, "a/b");
        assert_eq!(out.qos, QoS::ExactlyOnce);
        assert!(out.retain);
        assert_eq!(out.properties.content_type, props.content_type);
        assert_eq!(out.properties.correlation_data, props.correlation_data);
        assert_eq!(out.properties.response_topic, props.response_topic);
        assert_eq!(out.properties.message_expiry_interval, Some(30));
        assert_eq!(out.properties.payload_format_indicator, Some(1));
        assert_eq!(out.properties.user_properties, props.user_properties);
    }

    #[test]
    fn amqp_messages_read_as_mqtt() {
        let p = BasicProperties {
            delivery_mode: Some(2),
            correlation_id: Some(ShortStr::from("abc")),
            ..Default::default()
        };
        let m = Message::with_properties(
            ShortStr::from("amq.topic"),
            ShortStr::from("jobs.printer-1"),
            p,
            Bytes::new(),
        );
        let out = from_message(&Arc::new(m), None, Instant::now());
        assert_eq!(out.topic, "jobs/printer-1");
        assert_eq!(out.qos, QoS::AtLeastOnce);
        assert!(!out.retain);
        assert_eq!(
            out.properties.correlation_data.as_deref(),
            Some(&b"abc"[..])
        );
        assert_eq!(out.properties.message_expiry_interval, None);
    }
}
