//! The MQTT listeners: plain TCP, and WebSocket on paths `/mqtt` and `/ws`
//! with the `mqtt` / `mqttv3.1` subprotocols.

use std::sync::Arc;
use std::time::Instant;

use liebre_mqtt::{MqttConnection, MqttContext};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use crate::driver::{accept, drive, drive_ws, spawn_connection, Connections, Kind, NotifyWaker};
use liebre_mqtt::session::ConnectionHandle;

/// Accept MQTT connections until shutdown.
pub async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<MqttContext>,
    token: CancellationToken,
    tracker: TaskTracker,
) {
    let conns = Connections::new(ctx.broker.metrics().clone(), Kind::Mqtt);
    accept(listener, token, &conns.clone(), |stream, peer| {
        let handle = new_handle(&ctx);
        let conn = MqttConnection::with_handle(ctx.clone(), peer, handle.clone(), Instant::now());
        let span = tracing::debug_span!("mqtt", %peer);
        let task = drive(conn, stream.into_split(), handle, conns.clone());
        spawn_connection(&tracker, span, task);
    })
    .await;
}

/// Accept MQTT-over-WebSocket connections until shutdown.
pub async fn accept_ws_loop(
    listener: TcpListener,
    ctx: Arc<MqttContext>,
    token: CancellationToken,
    tracker: TaskTracker,
) {
    let conns = Connections::new(ctx.broker.metrics().clone(), Kind::Mqtt);
    accept(listener, token, &conns.clone(), |stream, peer| {
        let ctx = ctx.clone();
        let conns = conns.clone();
        let conn_tracker = tracker.clone();
        let span = tracing::debug_span!("mqtt-ws", %peer);
        spawn_connection(&tracker, span.clone(), async move {
            let handshake = tokio_tungstenite::accept_hdr_async_with_config(
                stream,
                negotiate,
                Some(ws_config()),
            );
            let ws = match tokio::time::timeout(std::time::Duration::from_secs(10), handshake).await
            {
                Ok(Ok(ws)) => ws,
                Ok(Err(e)) => {
                    debug!(message = "WebSocket handshake failed.", %e);
                    return;
                }
                Err(_) => return,
            };
            let handle = new_handle(&ctx);
            let conn = MqttConnection::with_handle(ctx, peer, handle.clone(), Instant::now());
            // A task of its own, sized for the connection rather than
            // for the handshake.
            let task = drive_ws(conn, ws, handle, conns);
            spawn_connection(&conn_tracker, span, task);
        });
    })
    .await;
}

/// A new connection's handle, which is also its waker.
fn new_handle(ctx: &MqttContext) -> Arc<ConnectionHandle<NotifyWaker>> {
    Arc::new(ConnectionHandle::new(
        ctx.broker.next_id(),
        NotifyWaker::default(),
    ))
}

/// WebSocket limits. tungstenite reads at most `read_buffer_size` bytes
/// at a time, into a buffer of that size that every connection keeps
/// (zero-filled, so resident): its default of 128 KiB would be most of an
/// idle connection. A larger frame still gets a buffer of its own size,
/// filled in reads of this size.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(WS_READ_BUFFER)
}

/// See [`ws_config`].
const WS_READ_BUFFER: usize = 4 * 1024;

/// Check the path and pick the MQTT subprotocol.
#[allow(clippy::result_large_err)] // the signature is tungstenite's callback type
fn negotiate(req: &Request, mut resp: Response) -> Result<Response, ErrorResponse> {
    let path = req.uri().path();
    if path != "/mqtt" && path != "/ws" {
        let mut err = ErrorResponse::new(Some(format!(
            "no MQTT endpoint at {path}; use /mqtt or /ws"
        )));
        *err.status_mut() = StatusCode::NOT_FOUND;
        return Err(err);
    }
    let offered = req
        .headers()
        .get_all("Sec-WebSocket-Protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(str::trim))
        .find(|p| matches!(*p, "mqtt" | "mqttv3.1"))
        .map(str::to_owned);
    if let Some(p) = offered {
        if let Ok(v) = HeaderValue::from_str(&p) {
            resp.headers_mut().insert("Sec-WebSocket-Protocol", v);
        }
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Most of what an idle MQTT connection costs is its task, which tokio
    /// rounds up to a multiple of 128 bytes (plus about 110 bytes of its
    /// own): a future of at most 400 bytes takes 512. Growing past that
    /// costs every idle connection 128 bytes more.
    #[tokio::test]
    async fn an_idle_mqtt_connection_task_stays_small() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let _client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (stream, peer) = listener.accept().await.expect("accept");
        let broker = Arc::new(liebre_core::Broker::default());
        let ctx = Arc::new(MqttContext {
            broker: broker.clone(),
            auth: Default::default(),
            sessions: Default::default(),
            config: Default::default(),
        });
        let handle = new_handle(&ctx);
        let conn = MqttConnection::with_handle(ctx, peer, handle.clone(), Instant::now());
        let task = drive(
            conn,
            stream.into_split(),
            handle,
            Connections::new(broker.metrics().clone(), Kind::Mqtt),
        );
        let size = std::mem::size_of_val(&task);
        assert!(
            size <= 400,
            "the MQTT connection future grew to {size} bytes"
        );
    }
}
