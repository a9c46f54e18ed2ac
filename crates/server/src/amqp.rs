//! The AMQP listener.

use std::sync::Arc;
use std::time::Instant;

use liebre_amqp::{Connection, Context};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{warn, Instrument};

use crate::driver::{drive, Kind, NotifyWaker};

/// Accept AMQP connections until shutdown.
pub async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<Context>,
    token: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            _ = token.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let waker = Arc::new(NotifyWaker::default());
                let conn = Connection::new(ctx.clone(), peer, waker.clone(), Instant::now());
                let span = tracing::info_span!("amqp", %peer);
                let metrics = (ctx.broker.metrics().clone(), Kind::Amqp);
                tracker.spawn(
                    drive(conn, stream.into_split(), waker, token.clone(), metrics)
                        .instrument(span),
                );
            }
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                warn!(message = "Accept failed.", %e);
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}
