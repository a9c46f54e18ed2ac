//! Exchanges and their bindings, indexed per exchange type.

use std::sync::Arc;

use liebre_amqp_codec::{FieldTable, FieldValue, ShortStr};
use parking_lot::RwLock;

use crate::message::Message;
use crate::queue::Queue;
use crate::topic::{split_amqp, TopicTrie};
use crate::FastMap;

/// The four exchange types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeKind {
    /// Routing key equals binding key.
    Direct,
    /// Every binding.
    Fanout,
    /// Binding key is a pattern (`*`, `#`).
    Topic,
    /// Match on message headers (`x-match` all/any).
    Headers,
}

impl ExchangeKind {
    /// Parse the `type` of `exchange.declare`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "direct" => Self::Direct,
            "fanout" => Self::Fanout,
            "topic" => Self::Topic,
            "headers" => Self::Headers,
            _ => return None,
        })
    }

    /// The type's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Fanout => "fanout",
            Self::Topic => "topic",
            Self::Headers => "headers",
        }
    }
}

/// Where a binding leads.
#[derive(Debug, Clone)]
pub enum Destination {
    /// A queue.
    Queue(Arc<Queue>),
    /// Another exchange, by name (exchange-to-exchange binding).
    Exchange(ShortStr),
}

impl PartialEq for Destination {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Queue(a), Self::Queue(b)) => Arc::ptr_eq(a, b),
            (Self::Exchange(a), Self::Exchange(b)) => a == b,
            _ => false,
        }
    }
}

impl Destination {
    /// The destination's name.
    pub fn name(&self) -> &ShortStr {
        match self {
            Self::Queue(q) => q.name(),
            Self::Exchange(e) => e,
        }
    }

    /// "queue" or "exchange", as the management API says it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Queue(_) => "queue",
            Self::Exchange(_) => "exchange",
        }
    }
}

/// One binding from an exchange.
#[derive(Debug, Clone, PartialEq)]
pub struct Binding {
    /// Where it leads.
    pub destination: Destination,
    /// The binding key.
    pub routing_key: ShortStr,
    /// The binding arguments (headers exchange match spec).
    pub arguments: FieldTable,
}

#[derive(Debug, Default)]
struct Bindings {
    all: Vec<Binding>,
    direct: FastMap<ShortStr, Vec<Destination>>,
    topic: TopicTrie<Destination>,
}

/// How an exchange is declared.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExchangeOptions {
    /// Survives restart.
    pub durable: bool,
    /// Deleted when its last binding goes.
    pub auto_delete: bool,
    /// Clients may not publish to it directly.
    pub internal: bool,
    /// Declared arguments (`alternate-exchange`).
    pub arguments: FieldTable,
}

/// An exchange.
#[derive(Debug)]
pub struct Exchange {
    name: ShortStr,
    kind: ExchangeKind,
    options: ExchangeOptions,
    alternate: Option<ShortStr>,
    bindings: RwLock<Bindings>,
}

impl Exchange {
    /// A new exchange with no bindings.
    pub fn new(name: ShortStr, kind: ExchangeKind, options: ExchangeOptions) -> Self {
        let alternate = options
            .arguments
            .get("alternate-exchange")
            .and_then(FieldValue::as_str)
            .map(ShortStr::from);
        Self {
            name,
            kind,
            options,
            alternate,
            bindings: RwLock::new(Bindings::default()),
        }
    }

    /// Its name.
    pub fn name(&self) -> &ShortStr {
        &self.name
    }

    /// Its type.
    pub fn kind(&self) -> ExchangeKind {
        self.kind
    }

    /// Its declaration.
    pub fn options(&self) -> &ExchangeOptions {
        &self.options
    }

    /// The `alternate-exchange` argument.
    pub fn alternate(&self) -> Option<&ShortStr> {
        self.alternate.as_ref()
    }

    /// Add a binding; false if an identical one exists.
    pub fn bind(&self, binding: Binding) -> bool {
        let mut b = self.bindings.write();
        if b.all.contains(&binding) {
            return false;
        }
        match self.kind {
            ExchangeKind::Direct => b
                .direct
                .entry(binding.routing_key.clone())
                .or_default()
                .push(binding.destination.clone()),
            ExchangeKind::Topic => {
                b.topic.insert(
                    split_amqp(&binding.routing_key),
                    binding.destination.clone(),
                );
            }
            ExchangeKind::Fanout | ExchangeKind::Headers => {}
        }
        b.all.push(binding);
        true
    }

    /// Remove a binding; false if it was not there.
    pub fn unbind(&self, binding: &Binding) -> bool {
        let mut b = self.bindings.write();
        let Some(pos) = b.all.iter().position(|x| x == binding) else {
            return false;
        };
        b.all.remove(pos);
        self.unindex(&mut b, binding);
        true
    }

    fn unindex(&self, b: &mut Bindings, binding: &Binding) {
        // Another binding with the same key and destination but different
        // arguments may still need the index entry.
        let still = b
            .all
            .iter()
            .any(|x| x.destination == binding.destination && x.routing_key == binding.routing_key);
        if still {
            return;
        }
        match self.kind {
            ExchangeKind::Direct => {
                if let Some(v) = b.direct.get_mut(&binding.routing_key) {
                    v.retain(|d| d != &binding.destination);
                    if v.is_empty() {
                        b.direct.remove(&binding.routing_key);
                    }
                }
            }
            ExchangeKind::Topic => {
                b.topic
                    .remove(split_amqp(&binding.routing_key), &binding.destination);
            }
            ExchangeKind::Fanout | ExchangeKind::Headers => {}
        }
    }

    /// Remove every binding to `destination`; returns how many went.
    pub fn unbind_destination(&self, destination: &Destination) -> usize {
        let mut b = self.bindings.write();
        let gone: Vec<Binding> = b
            .all
            .iter()
            .filter(|x| &x.destination == destination)
            .cloned()
            .collect();
        b.all.retain(|x| &x.destination != destination);
        for g in &gone {
            self.unindex(&mut b, g);
        }
        gone.len()
    }

    /// Number of bindings from this exchange.
    pub fn binding_count(&self) -> usize {
        self.bindings.read().all.len()
    }

    /// A snapshot of the bindings.
    pub fn bindings(&self) -> Vec<Binding> {
        self.bindings.read().all.clone()
    }

    /// Call `f` for each destination the message routes to (possibly
    /// repeated; the caller deduplicates).
    pub fn route(&self, message: &Message, mut f: impl FnMut(&Destination)) {
        let b = self.bindings.read();
        match self.kind {
            ExchangeKind::Direct => {
                if let Some(v) = b.direct.get(&message.routing_key) {
                    v.iter().for_each(f);
                }
            }
            ExchangeKind::Fanout => b.all.iter().for_each(|x| f(&x.destination)),
            ExchangeKind::Topic => {
                // Queues of MQTT subscribers follow MQTT's rule for `$`
                // topics, so `#` never routes `$SYS` into a session queue.
                let mqtt = |d: &Destination| matches!(d, Destination::Queue(q) if q.mqtt_rules());
                b.topic
                    .for_each_match(split_amqp(&message.routing_key), mqtt, f)
            }
            ExchangeKind::Headers => {
                let headers = message.properties.headers.as_ref();
                for x in &b.all {
                    if headers_match(&x.arguments, headers) {
                        f(&x.destination);
                    }
                }
            }
        }
    }
}

/// The headers exchange rule: `x-match` is `all` (default) or `any`
/// (`all-with-x`/`any-with-x` also compare `x-` keys); a `void` binding
/// value matches on the key's presence alone.
pub fn headers_match(binding: &FieldTable, headers: Option<&FieldTable>) -> bool {
    let mode = binding
        .get("x-match")
        .and_then(FieldValue::as_str)
        .unwrap_or("all");
    let (any, with_x) = match mode {
        "any" => (true, false),
        "any-with-x" => (true, true),
        "all-with-x" => (false, true),
        _ => (false, false),
    };
    let empty = FieldTable::default();
    let headers = headers.unwrap_or(&empty);
    let mut considered = binding
        .iter()
        .filter(|(k, _)| &**k != "x-match" && (with_x || !k.starts_with("x-")))
        .peekable();
    if considered.peek().is_none() {
        // RabbitMQ: no keys to compare means "all" matches and "any" does not.
        return !any;
    }
    let check = |(k, want): &(ShortStr, FieldValue)| match headers.get(k) {
        None => false,
        Some(_) if matches!(want, FieldValue::Void) => true,
        Some(have) => values_equal(want, have),
    };
    if any {
        considered.any(check)
    } else {
        considered.all(check)
    }
}

fn values_equal(a: &FieldValue, b: &FieldValue) -> bool {
    if let (Some(x), Some(y)) = (a.as_i64(), b.as_i64()) {
        return x == y;
    }
    if let (Some(x), Some(y)) = (a.as_str(), b.as_str()) {
        return x == y;
    }
    a == b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(kv: &[(&str, FieldValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in kv {
            t.insert(ShortStr::from(*k), v.clone());
        }
        t
    }

    #[test]
    fn headers_all_and_any() {
        let s = |v: &str| FieldValue::LongString(bytes::Bytes::copy_from_slice(v.as_bytes()));
        let msg = table(&[
            ("format", s("pdf")),
            ("type", s("report")),
            ("n", FieldValue::I32(3)),
        ]);
        let all = table(&[
            ("x-match", s("all")),
            ("format", s("pdf")),
            ("type", s("report")),
        ]);
        let all_miss = table(&[
            ("x-match", s("all")),
            ("format", s("pdf")),
            ("type", s("log")),
        ]);
        let any = table(&[
            ("x-match", s("any")),
            ("format", s("zip")),
            ("type", s("report")),
        ]);
        let num = table(&[("n", FieldValue::I64(3))]);
        let present = table(&[("type", FieldValue::Void)]);
        assert!(headers_match(&all, Some(&msg)));
        assert!(!headers_match(&all_miss, Some(&msg)));
        assert!(headers_match(&any, Some(&msg)));
        assert!(
            headers_match(&num, Some(&msg)),
            "integers compare by value across widths"
        );
        assert!(headers_match(&present, Some(&msg)));
        assert!(!headers_match(&any, None));
        assert!(headers_match(&table(&[]), None));
    }
}
