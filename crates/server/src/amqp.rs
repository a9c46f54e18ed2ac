//! The AMQP listener.

use std::sync::Arc;
use std::time::Instant;

use liebre_amqp::{Connection, Context};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::driver::{accept, drive, spawn_connection, Connections, Kind, NotifyWaker};

/// Accept AMQP connections until shutdown.
pub async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<Context>,
    token: CancellationToken,
    tracker: TaskTracker,
) {
    let conns = Connections::new(ctx.broker.metrics().clone(), Kind::Amqp);
    accept(listener, token, &conns.clone(), |stream, peer| {
        let waker = Arc::new(NotifyWaker::default());
        let conn = Connection::new(ctx.clone(), peer, waker.clone(), Instant::now());
        let span = tracing::debug_span!("amqp", %peer);
        let task = drive(conn, stream.into_split(), waker, conns.clone());
        spawn_connection(&tracker, span, task);
    })
    .await;
}
