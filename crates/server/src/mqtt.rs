//! The MQTT listeners: plain TCP, and WebSocket on paths `/mqtt` and `/ws`
//! with the `mqtt` / `mqttv3.1` subprotocols.

use std::sync::Arc;
use std::time::Instant;

use liebre_mqtt::{MqttConnection, MqttContext};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, Instrument};

use crate::driver::{accept, drive, drive_ws, Kind, NotifyWaker};

/// Accept MQTT connections until shutdown.
pub async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<MqttContext>,
    token: CancellationToken,
    tracker: TaskTracker,
) {
    let stop = token.clone();
    accept(listener, stop, |stream, peer| {
        let waker = Arc::new(NotifyWaker::default());
        let conn = MqttConnection::new(ctx.clone(), peer, waker.clone(), Instant::now());
        let metrics = (ctx.broker.metrics().clone(), Kind::Mqtt);
        let span = tracing::info_span!("mqtt", %peer);
        tracker.spawn(
            drive(conn, stream.into_split(), waker, token.clone(), metrics).instrument(span),
        );
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
    let stop = token.clone();
    accept(listener, stop, |stream, peer| {
        let ctx = ctx.clone();
        let token = token.clone();
        let span = tracing::info_span!("mqtt-ws", %peer);
        tracker.spawn(
            async move {
                let handshake = tokio_tungstenite::accept_hdr_async(stream, negotiate);
                let ws = match tokio::time::timeout(std::time::Duration::from_secs(10), handshake)
                    .await
                {
                    Ok(Ok(ws)) => ws,
                    Ok(Err(e)) => {
                        debug!(message = "WebSocket handshake failed.", %e);
                        return;
                    }
                    Err(_) => return,
                };
                let waker = Arc::new(NotifyWaker::default());
                let metrics = (ctx.broker.metrics().clone(), Kind::Mqtt);
                let conn = MqttConnection::new(ctx, peer, waker.clone(), Instant::now());
                drive_ws(conn, ws, waker, token, metrics).await;
            }
            .instrument(span),
        );
    })
    .await;
}

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
