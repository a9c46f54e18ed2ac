//! Heartbeats: the server sends them, and drops a silent client.

use std::time::Duration;

use crate::raw::{self, RawClient, Read};
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_is_dropped_and_heartbeats_are_sent() {
    guard(async {
        let srv = TestServer::start_with(|c| c.amqp_limits.heartbeat = 1).await;
        let (mut client, tune) = RawClient::handshake(srv.addr, 1).await;
        assert_eq!(
            tune.2, 1,
            "connection.tune proposes the configured heartbeat"
        );

        // Now say nothing at all. The server must send heartbeats, then
        // (having heard nothing for two intervals) close the socket.
        let mut heartbeats = 0;
        let mut other_frames = Vec::new();
        within_for(
            raw::HEARTBEAT_DEATH_LIMIT,
            "the server to drop a silent client",
            async {
                loop {
                    match client.read_unbounded().await {
                        Read::Frame(f) if f.kind == raw::FRAME_HEARTBEAT => {
                            assert_eq!(f.channel, 0, "heartbeat on a non-zero channel");
                            assert!(f.payload.is_empty(), "heartbeat with a payload");
                            heartbeats += 1;
                        }
                        Read::Frame(f) => other_frames.push(f),
                        Read::Closed => return,
                    }
                }
            },
        )
        .await;
        assert!(
            heartbeats >= 1,
            "no heartbeat frame before the connection was dropped"
        );
        // RabbitMQ just closes the socket; a connection.close first is tolerated.
        for f in &other_frames {
            assert!(
                f.is_method(10, 50),
                "unexpected frame from the server: {f:?}"
            );
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_heartbeats_keep_the_connection_alive() {
    guard(async {
        let srv = TestServer::start_with(|c| c.amqp_limits.heartbeat = 1).await;
        let (mut client, _) = RawClient::handshake(srv.addr, 1).await;
        // Send a heartbeat every 250 ms for ~3 s (well beyond the 2 s
        // timeout): the connection must survive, and the server keeps
        // sending heartbeats.
        let mut server_heartbeats = 0;
        for _ in 0..12 {
            client.send(&raw::heartbeat()).await;
            if let Ok(r) =
                tokio::time::timeout(Duration::from_millis(250), client.read_unbounded()).await
            {
                match r {
                    Read::Frame(f) if f.kind == raw::FRAME_HEARTBEAT => server_heartbeats += 1,
                    Read::Frame(f) => panic!("unexpected frame {f:?}"),
                    Read::Closed => panic!("a client that sends heartbeats was disconnected"),
                }
            }
        }
        assert!(
            server_heartbeats >= 1,
            "the server sent no heartbeat in ~3 s with heartbeat=1"
        );
        // Still alive: open a channel.
        client.open_channel(1).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_zero_disables_the_timeout() {
    guard(async {
        let srv = TestServer::start_with(|c| c.amqp_limits.heartbeat = 1).await;
        // The client refuses heartbeats (tune-ok heartbeat = 0).
        let (mut client, _) = RawClient::handshake(srv.addr, 0).await;
        if let Ok(r) = tokio::time::timeout(Duration::from_secs(3), client.read_unbounded()).await {
            panic!("with heartbeats disabled the server sent/closed: {r:?}");
        }
        client.open_channel(1).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lapin_stays_connected_with_a_short_heartbeat() {
    guard(async {
        let srv = TestServer::start_with(|c| c.amqp_limits.heartbeat = 1).await;
        let conn = srv.connect().await;
        let ch = channel(&conn).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(
            conn.status().connected(),
            "lapin connection dropped despite heartbeats"
        );
        declare_queue(&ch, "still-alive", no_args()).await;
    })
    .await
}
