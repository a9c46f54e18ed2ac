//! The metadata store, in memory and on disk, and `Store::open`.

use liebre_store::meta::{key, split_key, vhost_prefix};
use liebre_store::{LogConfig, MetaOp, MetaStore, Store, Table};

use crate::common::TempDir;

fn put_get_delete_scan(m: &MetaStore) {
    assert_eq!(m.get(Table::Queues, "q").expect("get"), None);
    m.put(Table::Queues, &key("/", "orders"), b"v1")
        .expect("put");
    m.put(Table::Queues, &key("/", "audit"), b"v2")
        .expect("put");
    m.put(Table::Exchanges, &key("/", "orders"), b"x")
        .expect("put");
    assert_eq!(
        m.get(Table::Queues, &key("/", "orders")).expect("get"),
        Some(b"v1".to_vec())
    );
    m.put(Table::Queues, &key("/", "orders"), b"v3")
        .expect("replace");
    assert_eq!(
        m.scan(Table::Queues).expect("scan"),
        vec![
            (key("/", "audit"), b"v2".to_vec()),
            (key("/", "orders"), b"v3".to_vec())
        ]
    );
    assert_eq!(
        m.scan(Table::Exchanges).expect("scan").len(),
        1,
        "tables are separate"
    );
    assert!(m.delete(Table::Queues, &key("/", "audit")).expect("delete"));
    assert!(!m
        .delete(Table::Queues, &key("/", "audit"))
        .expect("delete again"));
    assert_eq!(m.scan(Table::Queues).expect("scan").len(), 1);
    for t in Table::ALL {
        m.scan(t).expect("every table exists");
    }
}

#[test]
fn meta_in_memory_round_trip() {
    put_get_delete_scan(&MetaStore::in_memory().expect("open"));
}

#[test]
fn meta_on_disk_round_trip_and_persistence() {
    let tmp = TempDir::new("meta");
    let path = tmp.path().join("meta.redb");
    {
        let m = MetaStore::open(&path).expect("open");
        put_get_delete_scan(&m);
        m.put(Table::Retained, &key("/", "a/b"), b"payload")
            .expect("put");
    }
    let m = MetaStore::open(&path).expect("reopen");
    assert_eq!(
        m.get(Table::Retained, &key("/", "a/b")).expect("get"),
        Some(b"payload".to_vec())
    );
    assert_eq!(m.scan(Table::Queues).expect("scan").len(), 1);
}

#[test]
fn scan_prefix_lists_one_vhost() {
    let m = MetaStore::in_memory().expect("open");
    for (vh, topic) in [("a", "t/1"), ("a", "t/2"), ("ab", "t/1"), ("b", "x")] {
        m.put(Table::Retained, &key(vh, topic), topic.as_bytes())
            .expect("put");
    }
    let got = m
        .scan_prefix(Table::Retained, &vhost_prefix("a"))
        .expect("scan");
    let names: Vec<&str> = got
        .iter()
        .map(|(k, _)| split_key(k).expect("compound").1)
        .collect();
    assert_eq!(names, vec!["t/1", "t/2"], "vhost 'ab' is not under 'a'");
}

#[test]
fn apply_is_all_or_nothing_and_ordered() {
    let m = MetaStore::in_memory().expect("open");
    m.put(Table::Bindings, "old", b"1").expect("put");
    m.apply(&[
        MetaOp::Put {
            table: Table::Queues,
            key: "q",
            value: b"q",
        },
        MetaOp::Delete {
            table: Table::Bindings,
            key: "old",
        },
        MetaOp::Put {
            table: Table::Bindings,
            key: "new",
            value: b"2",
        },
        MetaOp::Delete {
            table: Table::Users,
            key: "absent",
        },
    ])
    .expect("apply");
    assert_eq!(m.get(Table::Queues, "q").expect("get"), Some(b"q".to_vec()));
    assert_eq!(m.get(Table::Bindings, "old").expect("get"), None);
    assert_eq!(
        m.get(Table::Bindings, "new").expect("get"),
        Some(b"2".to_vec())
    );
}

#[test]
fn queue_ids_are_stable_persistent_and_never_reused() {
    let tmp = TempDir::new("queue-ids");
    let path = tmp.path().join("meta.redb");
    let (a, b) = {
        let m = MetaStore::open(&path).expect("open");
        let a = m.queue_id("/", "a").expect("id");
        let b = m.queue_id("/", "b").expect("id");
        let a_other_vhost = m.queue_id("other", "a").expect("id");
        assert_ne!(a, b);
        assert_ne!(a, a_other_vhost);
        assert_eq!(m.queue_id("/", "a").expect("id"), a, "stable");
        (a, b)
    };
    let m = MetaStore::open(&path).expect("reopen");
    assert_eq!(m.queue_id("/", "a").expect("id"), a, "persistent");
    assert_eq!(m.release_queue_id("/", "a").expect("release"), Some(a));
    assert_eq!(m.release_queue_id("/", "a").expect("release"), None);
    let a2 = m.queue_id("/", "a").expect("id");
    assert!(a2 != a && a2 != b, "a redeclared queue gets a fresh id");
    let mut ids = m.queue_ids().expect("list");
    ids.sort();
    assert_eq!(
        ids,
        vec![
            ("/".to_owned(), "a".to_owned(), a2),
            ("/".to_owned(), "b".to_owned(), b),
            ("other".to_owned(), "a".to_owned(), ids[2].2),
        ]
    );
}

#[test]
fn store_open_creates_both_halves_and_locks_the_directory() {
    let tmp = TempDir::new("store");
    let data = tmp.path().join("data");
    let id;
    {
        let (store, rec) = Store::open(&data, LogConfig::default()).expect("open");
        assert!(rec.queues.is_empty());
        assert!(data.join("meta.redb").is_file());
        assert!(data.join("msgs").is_dir());
        let q = store.meta.queue_id("/", "jobs").expect("id");
        let m = store
            .log
            .append(&[q], bytes::Bytes::from_static(b"job"))
            .expect("append");
        store.log.wait_synced(m.lsn).expect("synced");
        id = (q, m.id);
        assert!(
            Store::open(&data, LogConfig::default()).is_err(),
            "a second opener is refused"
        );
    }
    let (store, rec) = Store::open(&data, LogConfig::default()).expect("reopen");
    assert_eq!(store.meta.queue_id("/", "jobs").expect("id"), id.0);
    assert_eq!(
        rec.queues[&id.0],
        vec![(id.1, Some(bytes::Bytes::from_static(b"job")))]
    );
}
