//! The metadata store: definitions, retained messages, MQTT sessions and
//! queue ids, in a redb database (`<data_dir>/meta.redb`).
//!
//! Values are opaque bytes the broker serializes; keys are strings the
//! broker chooses ([`key`] joins a vhost and a name). Every call is one
//! durable redb transaction (committed with fsync before it returns): these
//! are rare operations (a declaration, a retained publish, a session
//! change), and blocking ones, so async callers should run them on a
//! blocking thread.
//!
//! redb locks the file, so a second process cannot open the same data
//! directory: [`crate::Store::open`] relies on it for the message log too.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::error::{Result, StoreError};

/// The tables of the metadata store. Each maps a string key to opaque bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// Virtual hosts, by name.
    Vhosts,
    /// Users, by name.
    Users,
    /// Permissions, keyed by [`key`]`(vhost, user)`.
    Permissions,
    /// Durable exchanges, keyed by [`key`]`(vhost, name)`.
    Exchanges,
    /// Durable queues, keyed by [`key`]`(vhost, name)`.
    Queues,
    /// Bindings of durable exchanges and queues; the broker picks a key
    /// that starts with the vhost ([`key`]).
    Bindings,
    /// Policies, keyed by [`key`]`(vhost, name)`.
    Policies,
    /// MQTT retained messages, keyed by [`key`]`(vhost, topic)`.
    Retained,
    /// MQTT persistent sessions, keyed by [`key`]`(vhost, client id)`.
    MqttSessions,
    /// The broker's own records between runs (such as what a clean
    /// shutdown left), keyed by name.
    Runtime,
}

impl Table {
    /// Every table.
    pub const ALL: [Table; 10] = [
        Table::Vhosts,
        Table::Users,
        Table::Permissions,
        Table::Exchanges,
        Table::Queues,
        Table::Bindings,
        Table::Policies,
        Table::Retained,
        Table::MqttSessions,
        Table::Runtime,
    ];

    /// The redb table's name.
    pub fn name(self) -> &'static str {
        match self {
            Table::Vhosts => "vhosts",
            Table::Users => "users",
            Table::Permissions => "permissions",
            Table::Exchanges => "exchanges",
            Table::Queues => "queues",
            Table::Bindings => "bindings",
            Table::Policies => "policies",
            Table::Retained => "retained",
            Table::MqttSessions => "mqtt_sessions",
            Table::Runtime => "runtime",
        }
    }

    fn def(self) -> TableDefinition<'static, &'static str, &'static [u8]> {
        TableDefinition::new(self.name())
    }
}

/// Queue ids of the message log, keyed by [`key`]`(vhost, queue name)`.
const QUEUE_IDS: TableDefinition<'static, &'static str, u32> = TableDefinition::new("queue_ids");
/// Store-wide counters.
const COUNTERS: TableDefinition<'static, &'static str, u64> = TableDefinition::new("counters");
/// The counter holding the next queue id to hand out.
const NEXT_QUEUE_ID: &str = "next_queue_id";

/// The character between the parts of a compound key. U+0000 cannot
/// appear in an MQTT topic or client id, nor sensibly in a vhost name.
pub const KEY_SEPARATOR: char = '\u{0}';

/// A compound key: `vhost`, U+0000, `name`. Keys of one vhost sort
/// together, so [`MetaStore::scan_prefix`] with [`vhost_prefix`] lists them.
pub fn key(vhost: &str, name: &str) -> String {
    let mut k = String::with_capacity(vhost.len() + 1 + name.len());
    k.push_str(vhost);
    k.push(KEY_SEPARATOR);
    k.push_str(name);
    k
}

/// The prefix every [`key`] of `vhost` starts with.
pub fn vhost_prefix(vhost: &str) -> String {
    key(vhost, "")
}

/// Splits a [`key`] into its vhost and name.
pub fn split_key(key: &str) -> Option<(&str, &str)> {
    key.split_once(KEY_SEPARATOR)
}

/// One change of a [`MetaStore::apply`] batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaOp<'a> {
    /// Insert or replace a value.
    Put {
        /// The table.
        table: Table,
        /// The key.
        key: &'a str,
        /// The new value.
        value: &'a [u8],
    },
    /// Remove a key (absent keys are fine).
    Delete {
        /// The table.
        table: Table,
        /// The key.
        key: &'a str,
    },
}

fn meta(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Meta(e.into())
}

/// The metadata database.
pub struct MetaStore {
    db: Database,
}

impl std::fmt::Debug for MetaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaStore").finish_non_exhaustive()
    }
}

impl MetaStore {
    /// Opens the database file at `path`, creating it if missing.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::init(Database::create(path).map_err(meta)?)
    }

    /// A database held in memory (tests, and `--data-dir`-less runs).
    pub fn in_memory() -> Result<Self> {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(meta)?;
        Self::init(db)
    }

    /// Creates every table, so reads never meet a missing one.
    fn init(db: Database) -> Result<Self> {
        let txn = db.begin_write().map_err(meta)?;
        for table in Table::ALL {
            txn.open_table(table.def()).map_err(meta)?;
        }
        txn.open_table(QUEUE_IDS).map_err(meta)?;
        txn.open_table(COUNTERS).map_err(meta)?;
        txn.commit().map_err(meta)?;
        Ok(Self { db })
    }

    /// Inserts or replaces `key` in `table`.
    pub fn put(&self, table: Table, key: &str, value: &[u8]) -> Result<()> {
        self.apply(&[MetaOp::Put { table, key, value }])
    }

    /// Removes `key` from `table`; true if it was there.
    pub fn delete(&self, table: Table, key: &str) -> Result<bool> {
        let txn = self.db.begin_write().map_err(meta)?;
        let existed = {
            let mut t = txn.open_table(table.def()).map_err(meta)?;
            let removed = t.remove(key).map_err(meta)?;
            removed.is_some()
        };
        txn.commit().map_err(meta)?;
        Ok(existed)
    }

    /// Applies several changes in one durable transaction: all or nothing.
    pub fn apply(&self, ops: &[MetaOp<'_>]) -> Result<()> {
        let txn = self.db.begin_write().map_err(meta)?;
        for op in ops {
            match *op {
                MetaOp::Put { table, key, value } => {
                    let mut t = txn.open_table(table.def()).map_err(meta)?;
                    t.insert(key, value).map_err(meta)?;
                }
                MetaOp::Delete { table, key } => {
                    let mut t = txn.open_table(table.def()).map_err(meta)?;
                    t.remove(key).map_err(meta)?;
                }
            }
        }
        txn.commit().map_err(meta)?;
        Ok(())
    }

    /// The value of `key` in `table`.
    pub fn get(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>> {
        let txn = self.db.begin_read().map_err(meta)?;
        let t = txn.open_table(table.def()).map_err(meta)?;
        let value = t.get(key).map_err(meta)?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    /// Every entry of `table`, in key order.
    pub fn scan(&self, table: Table) -> Result<Vec<(String, Vec<u8>)>> {
        self.scan_prefix(table, "")
    }

    /// The entries of `table` whose key starts with `prefix`, in key order.
    pub fn scan_prefix(&self, table: Table, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let txn = self.db.begin_read().map_err(meta)?;
        let t = txn.open_table(table.def()).map_err(meta)?;
        let mut out = Vec::new();
        for entry in t.range(prefix..).map_err(meta)? {
            let (k, v) = entry.map_err(meta)?;
            let k = k.value();
            if !k.starts_with(prefix) {
                break;
            }
            out.push((k.to_owned(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// The message-log queue id of queue `name` in `vhost`, allocated (and
    /// made durable) on first use. Ids are never reused: a queue deleted
    /// with [`MetaStore::release_queue_id`] and declared again gets a new
    /// one, so nothing left in the log for the old queue can reach it.
    pub fn queue_id(&self, vhost: &str, name: &str) -> Result<u32> {
        let k = key(vhost, name);
        if let Some(id) = self.lookup_queue_id(&k)? {
            return Ok(id);
        }
        let txn = self.db.begin_write().map_err(meta)?;
        let id = {
            let mut ids = txn.open_table(QUEUE_IDS).map_err(meta)?;
            // Another thread may have allocated it since the read above.
            let existing = ids.get(k.as_str()).map_err(meta)?.map(|v| v.value());
            match existing {
                Some(id) => id,
                None => {
                    let mut counters = txn.open_table(COUNTERS).map_err(meta)?;
                    let next = counters
                        .get(NEXT_QUEUE_ID)
                        .map_err(meta)?
                        .map_or(1, |v| v.value());
                    let id = u32::try_from(next).map_err(|_| StoreError::QueueIdsExhausted)?;
                    counters.insert(NEXT_QUEUE_ID, next + 1).map_err(meta)?;
                    ids.insert(k.as_str(), id).map_err(meta)?;
                    id
                }
            }
        };
        txn.commit().map_err(meta)?;
        Ok(id)
    }

    fn lookup_queue_id(&self, k: &str) -> Result<Option<u32>> {
        let txn = self.db.begin_read().map_err(meta)?;
        let ids = txn.open_table(QUEUE_IDS).map_err(meta)?;
        let id = ids.get(k).map_err(meta)?.map(|v| v.value());
        Ok(id)
    }

    /// Forgets the id of a deleted queue; returns it if there was one.
    pub fn release_queue_id(&self, vhost: &str, name: &str) -> Result<Option<u32>> {
        let k = key(vhost, name);
        let txn = self.db.begin_write().map_err(meta)?;
        let id = {
            let mut ids = txn.open_table(QUEUE_IDS).map_err(meta)?;
            let removed = ids.remove(k.as_str()).map_err(meta)?;
            removed.map(|v| v.value())
        };
        txn.commit().map_err(meta)?;
        Ok(id)
    }

    /// Every allocated queue id as `(vhost, queue name, id)`: how the broker
    /// maps [`crate::Recovered::queues`] back to queues on startup.
    pub fn queue_ids(&self) -> Result<Vec<(String, String, u32)>> {
        let txn = self.db.begin_read().map_err(meta)?;
        let ids = txn.open_table(QUEUE_IDS).map_err(meta)?;
        let mut out = Vec::new();
        for entry in ids.iter().map_err(meta)? {
            let (k, v) = entry.map_err(meta)?;
            if let Some((vhost, name)) = split_key(k.value()) {
                out.push((vhost.to_owned(), name.to_owned(), v.value()));
            }
        }
        Ok(out)
    }
}
