//! MQTT over WebSocket: paths `/mqtt` and `/ws`, subprotocol `mqtt`.

use crate::support::*;

async fn ws_pub_sub(path: &str, v: V) {
    let srv = TestServer::start().await;
    let mut ws = Client::connect(srv.ws, v, Opts::new("ws-client").ws(path)).await;
    ws.subscribe("ws/in", 1).await;
    let mut tcp = srv.client(v, Opts::new("tcp-client")).await;
    tcp.subscribe("ws/out", 1).await;

    tcp.publish("ws/in", 1, false, b"tcp->ws").await;
    assert_eq!(ws.recv().await.body(), "tcp->ws");
    ws.publish("ws/out", 1, false, b"ws->tcp").await;
    assert_eq!(tcp.recv().await.body(), "ws->tcp");
    for qos in 0..=2 {
        ws.publish("ws/in", qos, false, format!("self-{qos}").as_bytes())
            .await;
        let m = ws.recv().await;
        assert_eq!((m.body(), m.qos), (format!("self-{qos}"), qos.min(1)));
    }
    // A larger message spanning several WebSocket reads.
    let big: Vec<u8> = (0..=255u8).cycle().take(200_000).collect();
    tcp.publish("ws/in", 1, false, &big).await;
    assert_eq!(ws.recv().await.payload, big);
    ws.disconnect().await;
    tcp.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_path_mqtt_v311() {
    guard(ws_pub_sub("/mqtt", V::V4)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_path_mqtt_v5() {
    guard(ws_pub_sub("/mqtt", V::V5)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_path_ws_v311() {
    guard(ws_pub_sub("/ws", V::V4)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_wrong_path_is_refused() {
    guard(async {
        let srv = TestServer::start().await;
        for path in ["/nope", "/", "/mqtt/extra"] {
            match Client::try_connect(srv.ws, V::V4, Opts::new("ws-bad").ws(path)).await {
                Ok(_) => panic!("WebSocket path {path} was accepted"),
                Err(Refused::Other(e)) => assert!(
                    e.contains("404") || e.contains("Http"),
                    "path {path}: expected an HTTP 404 handshake failure, got {e}"
                ),
                Err(e) => panic!("path {path}: expected a handshake failure, got {e:?}"),
            }
        }
        // The listener still works.
        let c = Client::connect(srv.ws, V::V4, Opts::new("ws-good").ws("/mqtt")).await;
        c.disconnect().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_will_on_abrupt_drop() {
    guard(async {
        let srv = TestServer::start().await;
        let mut watcher = srv.client(V::V4, Opts::new("wsw-watch")).await;
        watcher.subscribe("wsw/#", 1).await;
        let c = Client::connect(
            srv.ws,
            V::V4,
            Opts::new("wsw-a")
                .ws("/mqtt")
                .will("wsw/a", b"gone", 1, false),
        )
        .await;
        c.kill().await;
        assert_eq!(watcher.recv().await.body(), "gone");
    })
    .await
}
