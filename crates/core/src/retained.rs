//! Retained messages: the last message published with the retain flag on
//! each topic, handed to new subscribers whose filter matches.
//!
//! Kept in the core, per vhost, so the durable store can persist it and
//! any front end can read it. Topics are stored in MQTT form (`a/b/c`).

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;

use crate::message::Message;

/// Match an MQTT topic filter against a topic name: `+` is one level, `#`
/// (last) is any number of levels including none; a topic starting with
/// `$` is not matched by a filter starting with a wildcard.
pub fn mqtt_filter_matches(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/').peekable();
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            (Some(_), _) | (None, Some(_)) => return false,
        }
    }
}

/// Retained messages of one vhost, by topic.
#[derive(Debug, Default)]
pub struct Retained {
    by_topic: RwLock<HashMap<String, Arc<Message>>>,
    // Changes not yet taken by the store (latest per topic; None = cleared).
    // Bounded by the number of topics, like the map itself.
    changes: parking_lot::Mutex<HashMap<String, Option<Arc<Message>>>>,
}

impl Retained {
    /// Set (or with `None`, clear) the retained message of `topic`.
    pub fn set(&self, topic: &str, message: Option<Arc<Message>>) {
        self.changes
            .lock()
            .insert(topic.to_owned(), message.clone());
        self.restore(topic, message);
    }

    /// Set without recording a change (loading from the store).
    pub fn restore(&self, topic: &str, message: Option<Arc<Message>>) {
        let mut m = self.by_topic.write();
        match message {
            Some(msg) => {
                m.insert(topic.to_owned(), msg);
            }
            None => {
                m.remove(topic);
            }
        }
    }

    /// Take the changes made since the last call, for the store to write
    /// behind (latest per topic; `None` means the topic was cleared).
    pub fn take_changes(&self) -> Vec<(String, Option<Arc<Message>>)> {
        std::mem::take(&mut *self.changes.lock())
            .into_iter()
            .collect()
    }

    /// Every retained message whose topic matches `filter`, sorted by topic.
    pub fn matching(&self, filter: &str) -> Vec<(String, Arc<Message>)> {
        let m = self.by_topic.read();
        let mut out: Vec<(String, Arc<Message>)> = if !filter.contains(['+', '#']) {
            m.get(filter)
                .map(|v| (filter.to_owned(), v.clone()))
                .into_iter()
                .collect()
        } else {
            m.iter()
                .filter(|(t, _)| mqtt_filter_matches(filter, t))
                .map(|(t, v)| (t.clone(), v.clone()))
                .collect()
        };
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Number of retained messages.
    pub fn len(&self) -> usize {
        self.by_topic.read().len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_as_the_spec_says() {
        assert!(mqtt_filter_matches(
            "sport/tennis/player1/#",
            "sport/tennis/player1"
        ));
        assert!(mqtt_filter_matches(
            "sport/tennis/player1/#",
            "sport/tennis/player1/ranking"
        ));
        assert!(mqtt_filter_matches("sport/#", "sport"));
        assert!(mqtt_filter_matches("#", "a/b"));
        assert!(mqtt_filter_matches("sport/+", "sport/"));
        assert!(!mqtt_filter_matches("sport/+", "sport"));
        assert!(mqtt_filter_matches("+/+", "/finance"));
        assert!(mqtt_filter_matches("/+", "/finance"));
        assert!(!mqtt_filter_matches("+", "/finance"));
        assert!(!mqtt_filter_matches("#", "$SYS/broker"));
        assert!(!mqtt_filter_matches(
            "+/monitor/Clients",
            "$SYS/monitor/Clients"
        ));
        assert!(mqtt_filter_matches("$SYS/#", "$SYS/broker"));
        assert!(mqtt_filter_matches(
            "acme/v1/+/norte/temp",
            "acme/v1/planta-1/norte/temp"
        ));
        assert!(!mqtt_filter_matches("a/b", "a/b/c"));
    }
}
