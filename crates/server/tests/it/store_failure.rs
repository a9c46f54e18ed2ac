//! A failed fsync poisons the message log: what it will never have on
//! disk is refused, not confirmed, and nobody waits for it forever.

use std::sync::Arc;

use lapin::BasicProperties;
use liebre_store::CrashBackend;

use crate::support::*;

/// A server whose message log is on a memory disk that fails on request.
async fn on_failing_disk() -> (TestServer, CrashBackend) {
    let disk = CrashBackend::new();
    let log = Arc::new(disk.clone());
    let srv = TestServer::start_with(|c| c.log_backend = Some(log)).await;
    (srv, disk)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirm_held_for_a_failed_fsync_is_a_nack() {
    guard(async {
        let (srv, disk) = on_failing_disk().await;
        let conn = srv.connect().await;
        let ch = confirm_channel(&conn).await;
        declare_durable_queue(&ch, "d").await;
        let persistent = BasicProperties::default().with_delivery_mode(2);
        publish_confirmed(&ch, "", "d", b"on disk", persistent.clone()).await;

        disk.fail_next_sync();
        for body in [&b"held, then refused"[..], b"refused at once"] {
            let c = publish_confirmation(&ch, "", "d", body, persistent.clone()).await;
            assert!(c.is_nack(), "{body:?} was not nacked: {c:?}");
        }
        // The channel and connection still work for what needs no disk.
        publish_confirmed(&ch, "", "d", b"transient", BasicProperties::default()).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_held_for_a_failed_fsync_closes_the_connection() {
    guard(async {
        let (srv, disk) = on_failing_disk().await;
        let conn = srv.connect().await;
        let ch = channel(&conn).await;
        declare_durable_queue(&ch, "t").await;
        within("tx.select", ch.tx_select())
            .await
            .expect("tx.select");
        let persistent = BasicProperties::default().with_delivery_mode(2);
        publish(&ch, "", "t", b"committed", persistent.clone()).await;
        within("tx.commit", ch.tx_commit())
            .await
            .expect("tx.commit");

        disk.fail_next_sync();
        publish(&ch, "", "t", b"never on disk", persistent).await;
        let refused = within("tx.commit", ch.tx_commit()).await;
        assert_code(refused, 541, "tx.commit after a failed fsync");
    })
    .await
}
