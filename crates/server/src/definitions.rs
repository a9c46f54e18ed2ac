//! Durable definitions kept in the store's metadata database, so a
//! restart keeps durable exchanges, durable queues and the bindings
//! between them, and the MQTT retained messages (written behind, every
//! tick, in one transaction). Messages in queues are in the message log
//! (`messages`).
//!
//! Values are JSON in the shape of RabbitMQ's `definitions.json` entries,
//! so an export can later be produced from the table as it is.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use bytes::Bytes;
use liebre_amqp_codec::{FieldTable, FieldValue, ShortStr};
use liebre_core::{Binding, Broker, Exchange, ExchangeOptions, Queue, QueueOptions};
use liebre_store::meta::{key, vhost_prefix};
use liebre_store::{MetaStore, Table};
use serde_json::{json, Map, Value};
use tracing::{error, info};

/// Writes definition changes to the metadata database.
#[derive(Debug)]
pub struct StoredDefinitions {
    // Closed (None) at shutdown: the database's file lock must go with the
    // server even while stray references to the broker linger.
    meta: parking_lot::Mutex<Option<MetaStore>>,
}

impl StoredDefinitions {
    /// Keep definitions in `meta`.
    pub fn new(meta: MetaStore) -> Self {
        Self {
            meta: parking_lot::Mutex::new(Some(meta)),
        }
    }

    /// Close the database; later changes are not stored (and say so).
    pub fn close(&self) {
        self.meta.lock().take();
    }

    /// Run `f` on the metadata store; failures are logged and give `None`.
    pub(crate) fn with_meta<T>(
        &self,
        f: impl FnOnce(&MetaStore) -> liebre_store::Result<T>,
    ) -> Option<T> {
        match self.meta.lock().as_ref().map(f) {
            Some(Ok(v)) => Some(v),
            Some(Err(e)) => {
                error!(message = "Metadata store operation failed.", %e);
                None
            }
            None => {
                error!(message = "Definition change after the store was closed; not stored.");
                None
            }
        }
    }

    fn scan(&self, table: Table) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
        self.with_meta(|m| m.scan(table))
            .with_context(|| format!("reading stored {}", table.name()))
    }

    /// Recreate every stored definition in `broker`.
    pub fn load_into(&self, broker: &Broker) -> anyhow::Result<()> {
        let stored_vhosts = self.scan(Table::Vhosts)?;
        if stored_vhosts.is_empty() {
            // First start on this data directory: keep the default vhost.
            for v in broker.vhosts() {
                self.put(Table::Vhosts, v.name(), &json!({ "name": v.name() }));
            }
        } else {
            let names: Vec<&str> = stored_vhosts.iter().map(|(k, _)| k.as_str()).collect();
            for name in &names {
                broker.add_vhost(name);
            }
            if !names.contains(&"/") {
                broker.delete_vhost("/"); // an operator deleted it
            }
        }
        let (mut exchanges, mut queues, mut bindings) = (0, 0, 0);
        for (k, v) in self.scan(Table::Exchanges)? {
            let d: Value = serde_json::from_slice(&v).with_context(|| format!("exchange {k}"))?;
            let vhost = broker.add_vhost(str_of(&d, "vhost"));
            let opts = ExchangeOptions {
                durable: true,
                auto_delete: d["auto_delete"].as_bool().unwrap_or(false),
                internal: d["internal"].as_bool().unwrap_or(false),
                arguments: table_from_json(&d["arguments"]),
            };
            match vhost.declare_exchange(str_of(&d, "name"), str_of(&d, "type"), opts, false) {
                Ok(_) => exchanges += 1,
                Err(e) => error!(message = "Stored exchange not restored.", key = %k, %e),
            }
        }
        for (k, v) in self.scan(Table::Queues)? {
            let d: Value = serde_json::from_slice(&v).with_context(|| format!("queue {k}"))?;
            let vhost = broker.add_vhost(str_of(&d, "vhost"));
            let opts = QueueOptions {
                durable: true,
                exclusive_owner: None,
                auto_delete: d["auto_delete"].as_bool().unwrap_or(false),
                arguments: table_from_json(&d["arguments"]),
            };
            match vhost.declare_queue(str_of(&d, "name"), opts, false, 0) {
                Ok(_) => queues += 1,
                Err(e) => error!(message = "Stored queue not restored.", key = %k, %e),
            }
        }
        for (k, v) in self.scan(Table::Bindings)? {
            let d: Value = serde_json::from_slice(&v).with_context(|| format!("binding {k}"))?;
            let Some(vhost) = broker.vhost(str_of(&d, "vhost")) else {
                continue;
            };
            let args = table_from_json(&d["arguments"]);
            let (src, dst, rk) = (
                str_of(&d, "source"),
                str_of(&d, "destination"),
                str_of(&d, "routing_key"),
            );
            let r = match str_of(&d, "destination_type") {
                "queue" => vhost.bind_queue(dst, src, rk, args, 0),
                _ => vhost.bind_exchange(dst, src, rk, args),
            };
            match r {
                Ok(()) => bindings += 1,
                Err(e) => error!(message = "Stored binding not restored.", key = %k, %e),
            }
        }
        let mut retained = 0;
        for (k, v) in self.scan(Table::Retained)? {
            let Some((vhost, topic)) = liebre_store::meta::split_key(&k) else {
                continue;
            };
            match decode_message(&v) {
                Some(m) => {
                    broker
                        .add_vhost(vhost)
                        .retained()
                        .restore(topic, Some(Arc::new(m)));
                    retained += 1;
                }
                None => error!(message = "Stored retained message unreadable.", key = %k),
            }
        }
        info!(
            message = "Definitions restored.",
            exchanges, queues, bindings, retained
        );
        Ok(())
    }

    /// Write retained-message changes since the last call, in one
    /// transaction. `$SYS` topics are the broker's own and not kept.
    pub fn flush_retained(&self, broker: &Broker) {
        let mut rows: Vec<(String, Option<Vec<u8>>)> = Vec::new();
        for vhost in broker.vhosts() {
            for (topic, msg) in vhost.retained().take_changes() {
                if topic.starts_with("$SYS/") {
                    continue;
                }
                rows.push((key(vhost.name(), &topic), msg.map(|m| encode_message(&m))));
            }
        }
        if rows.is_empty() {
            return;
        }
        let ops: Vec<liebre_store::MetaOp<'_>> = rows
            .iter()
            .map(|(k, v)| match v {
                Some(value) => liebre_store::MetaOp::Put {
                    table: Table::Retained,
                    key: k,
                    value,
                },
                None => liebre_store::MetaOp::Delete {
                    table: Table::Retained,
                    key: k,
                },
            })
            .collect();
        self.with_meta(|m| m.apply(&ops));
    }

    fn put(&self, table: Table, k: &str, v: &Value) {
        self.with_meta(|m| m.put(table, k, v.to_string().as_bytes()));
    }

    fn delete(&self, table: Table, k: &str) {
        self.with_meta(|m| m.delete(table, k));
    }

    /// Remove every stored binding of `vhost` that `pred` selects.
    fn delete_bindings(&self, vhost: &str, pred: impl Fn(&Value) -> bool) {
        let Some(rows) = self.with_meta(|m| m.scan_prefix(Table::Bindings, &vhost_prefix(vhost)))
        else {
            return;
        };
        for (k, v) in rows {
            if serde_json::from_slice::<Value>(&v).is_ok_and(|d| pred(&d)) {
                self.delete(Table::Bindings, &k);
            }
        }
    }
}

fn binding_key(vhost: &str, source: &str, b: &Binding) -> (String, Value) {
    let args = table_to_json(&b.arguments);
    let v = json!({
        "vhost": vhost,
        "source": source,
        "destination": &**b.destination.name(),
        "destination_type": b.destination.kind(),
        "routing_key": &*b.routing_key,
        "arguments": args,
    });
    let id = format!(
        "{source}\u{1}{}\u{1}{}\u{1}{}\u{1}{}",
        b.destination.kind(),
        b.destination.name(),
        b.routing_key,
        v["arguments"]
    );
    (key(vhost, &id), v)
}

impl StoredDefinitions {
    /// Load the stored users into `auth` (on a first start, store the
    /// default ones instead), then keep every change to them.
    pub fn attach_users(self: &Arc<Self>, auth: &liebre_auth::AuthStore) -> anyhow::Result<()> {
        let rows = self.scan(Table::Users)?;
        if rows.is_empty() {
            for u in auth.users() {
                self.save_user(&u);
            }
        } else {
            let mut users = Vec::with_capacity(rows.len());
            for (k, v) in rows {
                let d: Value = serde_json::from_slice(&v).with_context(|| format!("user {k}"))?;
                match user_from_json(&d) {
                    Ok(u) => users.push(u),
                    Err(e) => error!(message = "Stored user not restored.", user = %k, error = %e),
                }
            }
            info!(message = "Users restored.", users = users.len());
            auth.replace_all(users);
        }
        auth.set_observer(self.clone());
        Ok(())
    }

    fn save_user(&self, u: &liebre_auth::User) {
        let permissions: Map<String, Value> = u
            .permissions
            .iter()
            .map(|(vhost, p)| {
                (
                    vhost.clone(),
                    json!({ "configure": p.configure, "write": p.write, "read": p.read }),
                )
            })
            .collect();
        let v = json!({
            "name": u.name,
            "password_hash": u.password_hash.to_base64(),
            "hashing_algorithm": "rabbit_password_hashing_sha256",
            "tags": u.tags,
            "permissions": permissions,
        });
        self.put(Table::Users, &u.name, &v);
    }

    /// Remove every row of `vhost` from a table keyed by [`key`].
    fn delete_vhost_rows(&self, table: Table, vhost: &str) {
        let Some(rows) = self.with_meta(|m| m.scan_prefix(table, &vhost_prefix(vhost))) else {
            return;
        };
        for (k, _) in rows {
            self.delete(table, &k);
        }
    }
}

fn user_from_json(d: &Value) -> anyhow::Result<liebre_auth::User> {
    let mut permissions = std::collections::HashMap::new();
    if let Some(m) = d["permissions"].as_object() {
        for (vhost, p) in m {
            let perm = liebre_auth::Permission::new(
                str_of(p, "configure"),
                str_of(p, "write"),
                str_of(p, "read"),
            )?;
            permissions.insert(vhost.clone(), perm);
        }
    }
    Ok(liebre_auth::User {
        name: str_of(d, "name").to_owned(),
        password_hash: liebre_auth::PasswordHash::from_base64(str_of(d, "password_hash"))?,
        tags: d["tags"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
        permissions,
    })
}

impl liebre_auth::AuthObserver for StoredDefinitions {
    fn user_changed(&self, name: &str, user: Option<&liebre_auth::User>) {
        match user {
            Some(u) => self.save_user(u),
            None => self.delete(Table::Users, name),
        }
    }
}

impl liebre_core::Definitions for StoredDefinitions {
    fn vhost_added(&self, name: &str) {
        self.put(Table::Vhosts, name, &json!({ "name": name }));
    }

    fn vhost_deleted(&self, name: &str) {
        self.delete(Table::Vhosts, name);
        for table in [
            Table::Exchanges,
            Table::Queues,
            Table::Bindings,
            Table::Retained,
            Table::MqttSessions,
        ] {
            self.delete_vhost_rows(table, name);
        }
    }

    fn exchange_declared(&self, vhost: &str, ex: &Exchange) {
        let o = ex.options();
        let v = json!({
            "name": &**ex.name(), "vhost": vhost, "type": ex.kind().as_str(), "durable": true,
            "auto_delete": o.auto_delete, "internal": o.internal, "arguments": table_to_json(&o.arguments),
        });
        self.put(Table::Exchanges, &key(vhost, ex.name()), &v);
    }

    fn exchange_deleted(&self, vhost: &str, name: &str) {
        self.delete(Table::Exchanges, &key(vhost, name));
        self.delete_bindings(vhost, |d| {
            d["source"] == name || (d["destination_type"] == "exchange" && d["destination"] == name)
        });
    }

    fn queue_declared(&self, vhost: &str, q: &Queue) {
        let v = json!({
            "name": &**q.name(), "vhost": vhost, "durable": true,
            "auto_delete": q.auto_delete(), "arguments": table_to_json(q.arguments()),
        });
        self.put(Table::Queues, &key(vhost, q.name()), &v);
    }

    fn queue_deleted(&self, vhost: &str, name: &str) {
        self.delete(Table::Queues, &key(vhost, name));
        self.delete_bindings(vhost, |d| {
            d["destination_type"] == "queue" && d["destination"] == name
        });
    }

    fn binding_added(&self, vhost: &str, source: &str, b: &Binding) {
        let (k, v) = binding_key(vhost, source, b);
        self.put(Table::Bindings, &k, &v);
    }

    fn binding_removed(&self, vhost: &str, source: &str, b: &Binding) {
        let (k, _) = binding_key(vhost, source, b);
        self.delete(Table::Bindings, &k);
    }
}

impl liebre_mqtt::SessionStore for StoredDefinitions {
    fn save(&self, vhost: &str, snap: &liebre_mqtt::SessionSnapshot) {
        let subs: Vec<Value> = snap
            .subscriptions
            .iter()
            .map(|(filter, s)| {
                json!({
                    "filter": filter,
                    "qos": s.options.qos as u8,
                    "no_local": s.options.no_local,
                    "retain_as_published": s.options.retain_as_published,
                    "retain_handling": s.options.retain_handling,
                    "identifier": s.identifier,
                    "share": s.share,
                })
            })
            .collect();
        let v = json!({
            "vhost": vhost,
            "client_id": snap.client_id,
            "expiry_secs": snap.expiry.as_secs(),
            "subscriptions": subs,
        });
        self.put(Table::MqttSessions, &key(vhost, &snap.client_id), &v);
    }

    fn delete(&self, vhost: &str, client_id: &str) {
        self.delete(Table::MqttSessions, &key(vhost, client_id));
    }
}

impl StoredDefinitions {
    /// Bring back the persistent MQTT sessions (after definitions and
    /// messages, so their queues are back), then keep sessions here.
    pub fn load_sessions(
        self: &Arc<Self>,
        broker: &Broker,
        mqtt: &liebre_mqtt::MqttContext,
    ) -> anyhow::Result<()> {
        use liebre_mqtt_codec::{QoS, SubscriptionOptions};
        let now = broker.clock().now();
        let mut restored = 0;
        for (k, v) in self.scan(Table::MqttSessions)? {
            let d: Value = serde_json::from_slice(&v).with_context(|| format!("session {k}"))?;
            let subscriptions = d["subscriptions"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .filter_map(|s| {
                    let qos = match s["qos"].as_u64()? {
                        0 => QoS::AtMostOnce,
                        1 => QoS::AtLeastOnce,
                        _ => QoS::ExactlyOnce,
                    };
                    let sub = liebre_mqtt::session::Subscription {
                        options: SubscriptionOptions {
                            qos,
                            no_local: s["no_local"].as_bool().unwrap_or(false),
                            retain_as_published: s["retain_as_published"]
                                .as_bool()
                                .unwrap_or(false),
                            retain_handling: s["retain_handling"].as_u64().unwrap_or(0) as u8,
                        },
                        identifier: s["identifier"].as_u64().map(|n| n as u32),
                        share: s["share"].as_str().map(str::to_owned),
                    };
                    Some((s["filter"].as_str()?.to_owned(), sub))
                })
                .collect();
            let snap = liebre_mqtt::SessionSnapshot {
                client_id: str_of(&d, "client_id").to_owned(),
                expiry: std::time::Duration::from_secs(d["expiry_secs"].as_u64().unwrap_or(0)),
                subscriptions,
            };
            let vhost = broker.add_vhost(str_of(&d, "vhost"));
            match mqtt.sessions.restore(&vhost, snap, now, &mqtt.config) {
                Ok(()) => restored += 1,
                Err(e) => error!(message = "Stored MQTT session not restored.", key = %k, %e),
            }
        }
        mqtt.sessions.set_store(self.clone());
        info!(message = "MQTT sessions restored.", sessions = restored);
        Ok(())
    }
}

/// A message as stored: exchange and routing key (u8 length each), the
/// properties as on the wire (u32 length), then the body.
fn encode_message(m: &liebre_core::Message) -> Vec<u8> {
    fn short(s: &str) -> &[u8] {
        let b = s.as_bytes();
        &b[..b.len().min(255)]
    }
    let (ex, rk) = (short(&m.exchange), short(&m.routing_key));
    let mut out =
        Vec::with_capacity(2 + ex.len() + rk.len() + 4 + m.raw_properties.len() + m.body.len());
    out.push(ex.len() as u8);
    out.extend_from_slice(ex);
    out.push(rk.len() as u8);
    out.extend_from_slice(rk);
    out.extend_from_slice(&(m.raw_properties.len() as u32).to_be_bytes());
    out.extend_from_slice(&m.raw_properties);
    out.extend_from_slice(&m.body);
    out
}

fn decode_message(b: &[u8]) -> Option<liebre_core::Message> {
    let (&n, rest) = b.split_first()?;
    let (ex, rest) = rest.split_at_checked(usize::from(n))?;
    let (&n, rest) = rest.split_first()?;
    let (rk, rest) = rest.split_at_checked(usize::from(n))?;
    let (len, rest) = rest.split_at_checked(4)?;
    let len = u32::from_be_bytes(len.try_into().ok()?) as usize;
    let (raw, body) = rest.split_at_checked(len)?;
    let raw = Bytes::copy_from_slice(raw);
    let properties = liebre_amqp_codec::BasicProperties::decode(&raw).ok()?;
    Some(liebre_core::Message::new(
        ShortStr::from(std::str::from_utf8(ex).ok()?),
        ShortStr::from(std::str::from_utf8(rk).ok()?),
        properties,
        raw,
        Bytes::copy_from_slice(body),
    ))
}

fn str_of<'a>(d: &'a Value, field: &str) -> &'a str {
    d[field].as_str().unwrap_or_default()
}

/// A field table as JSON, as RabbitMQ writes arguments in definitions.
pub fn table_to_json(t: &FieldTable) -> Value {
    Value::Object(
        t.iter()
            .map(|(k, v)| (k.to_string(), value_to_json(v)))
            .collect::<Map<_, _>>(),
    )
}

fn value_to_json(v: &FieldValue) -> Value {
    match v {
        FieldValue::Bool(b) => json!(b),
        FieldValue::F32(f) => json!(f),
        FieldValue::F64(f) => json!(f),
        FieldValue::Decimal { scale, value } => {
            json!(f64::from(*value) / 10f64.powi(i32::from(*scale)))
        }
        FieldValue::Array(a) => Value::Array(a.iter().map(value_to_json).collect()),
        FieldValue::Table(t) => table_to_json(t),
        FieldValue::Void => Value::Null,
        FieldValue::LongString(b) | FieldValue::ByteArray(b) => json!(String::from_utf8_lossy(b)),
        other => match (other.as_i64(), other.as_str()) {
            (Some(n), _) => json!(n),
            (None, Some(s)) => json!(s),
            _ => Value::Null,
        },
    }
}

/// JSON arguments back as a field table (integers as long, strings as longstr).
pub fn table_from_json(v: &Value) -> FieldTable {
    let mut t = FieldTable::default();
    if let Value::Object(m) = v {
        for (k, v) in m {
            t.insert(ShortStr::from(k.as_str()), value_from_json(v));
        }
    }
    t
}

fn value_from_json(v: &Value) -> FieldValue {
    match v {
        Value::Null => FieldValue::Void,
        Value::Bool(b) => FieldValue::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => FieldValue::I64(i),
            None => FieldValue::F64(n.as_f64().unwrap_or_default()),
        },
        Value::String(s) => FieldValue::LongString(Bytes::from(s.clone())),
        Value::Array(a) => FieldValue::Array(a.iter().map(value_from_json).collect()),
        Value::Object(_) => FieldValue::Table(table_from_json(v)),
    }
}

/// The opened store, wired into a broker.
#[derive(Debug)]
pub struct Attached {
    /// Definitions and retained messages.
    pub definitions: Arc<StoredDefinitions>,
    /// Persistent messages.
    pub messages: Arc<crate::messages::StoredMessages>,
}

/// Open the store in `data_dir`, restore definitions and messages into
/// `broker`, then report changes to the store.
pub fn attach(
    broker: &Arc<Broker>,
    data_dir: &Path,
    log: liebre_store::LogConfig,
    backend: Option<Arc<dyn liebre_store::Backend>>,
) -> anyhow::Result<Attached> {
    let started = std::time::Instant::now();
    let backend = backend.unwrap_or_else(|| Arc::new(liebre_store::FileBackend::new()));
    let (store, recovered) = liebre_store::Store::open_with(data_dir, log, backend)
        .with_context(|| format!("opening the store in {}", data_dir.display()))?;
    let definitions = Arc::new(StoredDefinitions::new(store.meta));
    let messages = crate::messages::StoredMessages::new(store.log, definitions.clone());
    // The store first: restored durable queues get their store ids.
    broker.set_store(messages.clone());
    definitions.load_into(broker)?;
    broker.set_definitions(definitions.clone());
    messages.restore(broker, recovered)?;
    info!(
        message = "Store opened.",
        elapsed_ms = started.elapsed().as_millis() as u64
    );
    Ok(Attached {
        definitions,
        messages,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_messages_decode_as_written() {
        let props = liebre_amqp_codec::BasicProperties {
            content_type: Some(ShortStr::from("text/plain")),
            delivery_mode: Some(2),
            ..Default::default()
        };
        let m = liebre_core::Message::with_properties(
            ShortStr::from("amq.topic"),
            ShortStr::from("plant.north.state"),
            props.clone(),
            Bytes::from_static(b"online"),
        );
        let back = decode_message(&encode_message(&m)).expect("decodes");
        assert_eq!(&*back.routing_key, "plant.north.state");
        assert_eq!(&*back.exchange, "amq.topic");
        assert_eq!(*back.properties, props);
        assert_eq!(&back.body[..], b"online");
        assert!(decode_message(&encode_message(&m)[..5]).is_none());
    }

    #[test]
    fn arguments_survive_json() {
        let mut t = FieldTable::default();
        t.insert(ShortStr::from("x-max-length"), FieldValue::I32(10));
        t.insert(
            ShortStr::from("x-dead-letter-exchange"),
            FieldValue::LongString(Bytes::from("dlx")),
        );
        t.insert(ShortStr::from("flag"), FieldValue::Bool(true));
        let back = table_from_json(&table_to_json(&t));
        assert_eq!(
            back.get("x-max-length").and_then(FieldValue::as_i64),
            Some(10)
        );
        assert_eq!(
            back.get("x-dead-letter-exchange")
                .and_then(FieldValue::as_str),
            Some("dlx")
        );
        assert_eq!(back.get("flag").and_then(FieldValue::as_bool), Some(true));
    }
}
