//! Graceful shutdown: clients are told (connection.close 320).
//!
//! lapin 4 does not surface the reply code of a broker-initiated
//! connection.close to delegate consumers (the delegate is dropped when the
//! connection starts closing) and we have no `StreamExt` to read the
//! consumer or event streams, so the code itself is checked on the wire
//! with the raw client; with lapin we check what lapin exposes: the
//! connection ends in the `Error` state (a broker close with an error code,
//! not a clean close), the consumer ends, operations fail.

use lapin::options::BasicConsumeOptions;

use crate::raw::RawClient;
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_sends_320_and_lapin_sees_the_connection_end() {
    guard(async {
        let mut srv = TestServer::start().await;
        let conn = srv.connect().await;
        let ch = channel(&conn).await;
        declare_queue(&ch, "shutdown-q", no_args()).await;
        let mut c = consume(&ch, "shutdown-q", "", BasicConsumeOptions::default()).await;
        let (mut raw, _) = RawClient::handshake(srv.addr, 0).await;
        raw.open_channel(1).await;

        let stop = tokio::spawn(async move {
            srv.shutdown().await;
            srv
        });

        // On the wire: connection.close 320 CONNECTION_FORCED, then the socket closes.
        let (code, text, _, _) = raw.expect_connection_close().await;
        assert_eq!(code, 320, "shutdown close: {text}");
        assert!(text.starts_with("CONNECTION_FORCED"), "reply text {text:?}");
        raw.send(&crate::raw::connection_close_ok()).await;
        raw.expect_closed().await;

        // lapin: the connection ends with an error...
        eventually("lapin to see the connection fail", || {
            conn.status().errored()
        })
        .await;
        // ...the consumer ends (lapin drops the delegate; an error, if any, is 320)...
        match c.next_event().await {
            None | Some(Ok(None)) => {}
            Some(Err(e)) => assert_eq!(code_of(&e), Some(320), "consumer error {e:?}"),
            Some(Ok(Some(d))) => panic!("unexpected delivery during shutdown: {d:?}"),
        }
        // ...and nothing works any more.
        let r = within(
            "use after shutdown",
            ch.queue_declare("x".into(), Default::default(), no_args()),
        )
        .await;
        assert!(r.is_err(), "channel still works after shutdown");
        let r = within("create_channel after shutdown", conn.create_channel()).await;
        assert!(r.is_err(), "new channel after shutdown");

        let _srv = within("shutdown to finish", stop)
            .await
            .expect("shutdown task");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_completes_even_if_a_client_never_answers() {
    guard(async {
        let mut srv =
            TestServer::start_with(|c| c.shutdown_grace = std::time::Duration::from_secs(8)).await;
        let (mut raw, _) = RawClient::handshake(srv.addr, 0).await;
        let stop = tokio::spawn(async move {
            srv.shutdown().await;
        });
        let (code, _, _, _) = raw.expect_connection_close().await;
        assert_eq!(code, 320);
        // Never send close-ok: the broker must still hang up (close timeout)
        // and shutdown must finish.
        raw.expect_closed().await;
        within("shutdown to finish", stop)
            .await
            .expect("shutdown task");
    })
    .await
}
