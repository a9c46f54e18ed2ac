//! The AMQP listener and the task that runs one connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, BytesMut};
use liebre_amqp::{Connection, Context, Wake};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn, Instrument};

/// Stop reading from a client while this much output waits for it: a peer
/// that does not read cannot make the broker buffer without bound.
const OUTPUT_HIGH_WATER: usize = 1024 * 1024;
/// Read in chunks of at least this much.
const READ_CHUNK: usize = 64 * 1024;

struct NotifyWaker(Notify);

impl Wake for NotifyWaker {
    fn wake(&self) {
        self.0.notify_one();
    }
}

/// Accept connections until shutdown.
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
                let span = tracing::info_span!("amqp", %peer, user = tracing::field::Empty);
                tracker.spawn(serve(stream, peer, ctx.clone(), token.clone()).instrument(span));
            }
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                warn!(message = "Accept failed.", %e);
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Run one connection to its end.
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    ctx: Arc<Context>,
    token: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let waker = Arc::new(NotifyWaker(Notify::new()));
    let mut conn = Connection::new(ctx, peer, waker.clone(), Instant::now());
    let mut inbuf = BytesMut::new();
    let mut outbuf = BytesMut::new();
    let mut stopping = false;
    let mut eof = false;
    loop {
        if outbuf.len() < OUTPUT_HIGH_WATER {
            conn.poll_transmit(&mut outbuf, Instant::now());
        }
        if (conn.is_closed() || eof) && outbuf.is_empty() {
            break;
        }
        let deadline = conn.poll_timeout().map(tokio::time::Instant::from_std);
        let can_read = !eof && !conn.is_closed() && outbuf.len() < OUTPUT_HIGH_WATER;
        if can_read && inbuf.capacity() - inbuf.len() < READ_CHUNK / 4 {
            inbuf.reserve(READ_CHUNK);
        }
        tokio::select! {
            _ = token.cancelled(), if !stopping => {
                stopping = true;
                conn.shutdown(Instant::now());
            }
            r = rd.read_buf(&mut inbuf), if can_read => match r {
                Ok(0) | Err(_) => {
                    conn.handle_disconnect();
                    eof = true;
                    outbuf.clear();
                }
                Ok(_) => conn.handle_input(&mut inbuf, Instant::now()),
            },
            w = wr.write(&outbuf), if !outbuf.is_empty() => match w {
                Ok(n) => outbuf.advance(n),
                Err(_) => {
                    conn.handle_disconnect();
                    eof = true;
                    outbuf.clear();
                }
            },
            _ = waker.0.notified() => {}
            _ = sleep_until(deadline), if deadline.is_some() => conn.handle_timeout(Instant::now()),
        }
    }
    let _ = wr.shutdown().await;
    conn.handle_disconnect();
    debug!(
        message = "Connection closed.",
        reason = conn.close_reason().unwrap_or("peer closed")
    );
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
