//! A tiny hand-rolled AMQP 0-9-1 client for tests that need to misbehave:
//! frame building, frame reading, the handshake.

#![allow(dead_code)]

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::within;

pub(crate) const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";
pub(crate) const FRAME_METHOD: u8 = 1;
pub(crate) const FRAME_HEADER: u8 = 2;
pub(crate) const FRAME_BODY: u8 = 3;
pub(crate) const FRAME_HEARTBEAT: u8 = 8;
pub(crate) const FRAME_END: u8 = 0xCE;

/// Argument encoder.
#[derive(Default)]
pub(crate) struct Args(pub Vec<u8>);

impl Args {
    pub(crate) fn new() -> Self {
        Self::default()
    }
    pub(crate) fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    pub(crate) fn u16(mut self, v: u16) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub(crate) fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub(crate) fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub(crate) fn shortstr(mut self, s: &str) -> Self {
        assert!(s.len() < 256);
        self.0.push(s.len() as u8);
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    pub(crate) fn longstr(mut self, s: &[u8]) -> Self {
        self.0.extend_from_slice(&(s.len() as u32).to_be_bytes());
        self.0.extend_from_slice(s);
        self
    }
    pub(crate) fn empty_table(self) -> Self {
        self.u32(0)
    }
    pub(crate) fn bytes(self) -> Vec<u8> {
        self.0
    }
}

/// One complete frame on the wire.
pub(crate) fn frame(kind: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
    frame_with_end(kind, channel, payload, FRAME_END)
}

/// A frame with a chosen frame-end octet (for malformed-frame tests).
pub(crate) fn frame_with_end(kind: u8, channel: u16, payload: &[u8], end: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.push(kind);
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out.push(end);
    out
}

pub(crate) fn method_payload(class: u16, method: u16, args: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(args.len() + 4);
    p.extend_from_slice(&class.to_be_bytes());
    p.extend_from_slice(&method.to_be_bytes());
    p.extend_from_slice(args);
    p
}

pub(crate) fn method(channel: u16, class: u16, method: u16, args: &[u8]) -> Vec<u8> {
    frame(FRAME_METHOD, channel, &method_payload(class, method, args))
}

/// connection.start-ok with PLAIN.
pub(crate) fn start_ok_plain(user: &str, pass: &str) -> Vec<u8> {
    let response = format!("\0{user}\0{pass}");
    let args = Args::new()
        .empty_table()
        .shortstr("PLAIN")
        .longstr(response.as_bytes())
        .shortstr("en_US")
        .bytes();
    method(0, 10, 11, &args)
}

pub(crate) fn tune_ok(channel_max: u16, frame_max: u32, heartbeat: u16) -> Vec<u8> {
    method(
        0,
        10,
        31,
        &Args::new()
            .u16(channel_max)
            .u32(frame_max)
            .u16(heartbeat)
            .bytes(),
    )
}

pub(crate) fn connection_open(vhost: &str) -> Vec<u8> {
    method(
        0,
        10,
        40,
        &Args::new().shortstr(vhost).shortstr("").u8(0).bytes(),
    )
}

pub(crate) fn connection_close_ok() -> Vec<u8> {
    method(0, 10, 51, &[])
}

pub(crate) fn channel_open(channel: u16) -> Vec<u8> {
    method(channel, 20, 10, &Args::new().shortstr("").bytes())
}

pub(crate) fn basic_publish(channel: u16, exchange: &str, key: &str) -> Vec<u8> {
    method(
        channel,
        60,
        40,
        &Args::new()
            .u16(0)
            .shortstr(exchange)
            .shortstr(key)
            .u8(0)
            .bytes(),
    )
}

/// A content header with no properties.
pub(crate) fn content_header(channel: u16, body_size: u64) -> Vec<u8> {
    let payload = Args::new().u16(60).u16(0).u64(body_size).u16(0).bytes();
    frame(FRAME_HEADER, channel, &payload)
}

pub(crate) fn body(channel: u16, data: &[u8]) -> Vec<u8> {
    frame(FRAME_BODY, channel, data)
}

pub(crate) fn heartbeat() -> Vec<u8> {
    frame(FRAME_HEARTBEAT, 0, &[])
}

/// A frame read from the server.
#[derive(Debug, Clone)]
pub(crate) struct Frame {
    pub(crate) kind: u8,
    pub(crate) channel: u16,
    pub(crate) payload: Vec<u8>,
}

impl Frame {
    /// (class id, method id) of a method frame.
    pub(crate) fn method_ids(&self) -> Option<(u16, u16)> {
        if self.kind != FRAME_METHOD || self.payload.len() < 4 {
            return None;
        }
        Some((
            u16::from_be_bytes([self.payload[0], self.payload[1]]),
            u16::from_be_bytes([self.payload[2], self.payload[3]]),
        ))
    }

    pub(crate) fn is_method(&self, class: u16, method: u16) -> bool {
        self.method_ids() == Some((class, method))
    }

    /// Arguments of a method frame.
    pub(crate) fn args(&self) -> &[u8] {
        &self.payload[4..]
    }

    /// (reply code, reply text, class id, method id) of connection.close or channel.close.
    pub(crate) fn close_args(&self) -> (u16, String, u16, u16) {
        let a = self.args();
        let code = u16::from_be_bytes([a[0], a[1]]);
        let len = a[2] as usize;
        let text = String::from_utf8_lossy(&a[3..3 + len]).into_owned();
        let rest = &a[3 + len..];
        let class = u16::from_be_bytes([rest[0], rest[1]]);
        let method = u16::from_be_bytes([rest[2], rest[3]]);
        (code, text, class, method)
    }

    /// Values of connection.tune: (channel_max, frame_max, heartbeat).
    pub(crate) fn tune_args(&self) -> (u16, u32, u16) {
        let a = self.args();
        (
            u16::from_be_bytes([a[0], a[1]]),
            u32::from_be_bytes([a[2], a[3], a[4], a[5]]),
            u16::from_be_bytes([a[6], a[7]]),
        )
    }
}

/// What reading the socket produced.
#[derive(Debug)]
pub(crate) enum Read {
    Frame(Frame),
    /// Orderly EOF or connection reset: the server closed the socket.
    Closed,
}

pub(crate) struct RawClient {
    pub(crate) stream: TcpStream,
    buf: Vec<u8>,
}

impl RawClient {
    pub(crate) async fn connect(addr: SocketAddr) -> Self {
        let stream = within("raw TCP connect", TcpStream::connect(addr))
            .await
            .expect("TCP connect");
        stream.set_nodelay(true).ok();
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    pub(crate) async fn send(&mut self, bytes: &[u8]) {
        within("raw write", self.stream.write_all(bytes))
            .await
            .expect("raw write");
    }

    /// Send, tolerating a server that already hung up.
    pub(crate) async fn send_lossy(&mut self, bytes: &[u8]) -> io::Result<()> {
        within("raw write", self.stream.write_all(bytes)).await
    }

    async fn fill(&mut self) -> io::Result<usize> {
        // Heap buffer: a 64 KiB array here would live in every enclosing
        // future and overflow the test thread's stack in debug builds.
        self.buf.reserve(64 * 1024);
        self.stream.read_buf(&mut self.buf).await
    }

    /// Read raw bytes until the server closes the socket (no framing).
    pub(crate) async fn read_to_close(&mut self) -> Vec<u8> {
        within("server to close the socket", async {
            loop {
                match self.fill().await {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if is_reset(&e) => break,
                    Err(e) => panic!("read error: {e}"),
                }
            }
        })
        .await;
        std::mem::take(&mut self.buf)
    }

    /// Next frame or the socket's end, without a time limit.
    pub(crate) async fn read_unbounded(&mut self) -> Read {
        loop {
            if self.buf.len() >= 7 {
                let size = u32::from_be_bytes([self.buf[3], self.buf[4], self.buf[5], self.buf[6]])
                    as usize;
                if self.buf.len() > 7 + size {
                    let kind = self.buf[0];
                    let channel = u16::from_be_bytes([self.buf[1], self.buf[2]]);
                    let payload = self.buf[7..7 + size].to_vec();
                    let end = self.buf[7 + size];
                    assert_eq!(
                        end, FRAME_END,
                        "server sent a frame with a bad frame-end octet"
                    );
                    self.buf.drain(..7 + size + 1);
                    return Read::Frame(Frame {
                        kind,
                        channel,
                        payload,
                    });
                }
            }
            match self.fill().await {
                Ok(0) => return Read::Closed,
                Ok(_) => {}
                Err(e) if is_reset(&e) => return Read::Closed,
                Err(e) => panic!("read error: {e}"),
            }
        }
    }

    /// Next frame or the socket's end, within the default limit.
    pub(crate) async fn read(&mut self) -> Read {
        within("a frame from the server", self.read_unbounded()).await
    }

    /// Next frame that is not a heartbeat; fails if the socket closes.
    pub(crate) async fn next_frame(&mut self) -> Frame {
        loop {
            match self.read().await {
                Read::Frame(f) if f.kind == FRAME_HEARTBEAT => continue,
                Read::Frame(f) => return f,
                Read::Closed => panic!("server closed the socket while a frame was expected"),
            }
        }
    }

    /// Next non-heartbeat frame, which must be method (class, method).
    pub(crate) async fn expect_method(&mut self, class: u16, method: u16) -> Frame {
        let f = self.next_frame().await;
        assert!(
            f.is_method(class, method),
            "expected method {class}.{method}, got {:?} (close args if any: {:?})",
            f.method_ids(),
            f.is_method(10, 50).then(|| f.close_args())
        );
        f
    }

    /// Read until connection.close; returns (code, text, class, method).
    pub(crate) async fn expect_connection_close(&mut self) -> (u16, String, u16, u16) {
        loop {
            let f = self.next_frame().await;
            if f.is_method(10, 50) {
                return f.close_args();
            }
        }
    }

    /// After the server is done: every further read ends in EOF/reset
    /// (frames still in flight are skipped).
    pub(crate) async fn expect_closed(&mut self) {
        within("server to close the socket", async {
            loop {
                if let Read::Closed = self.read_unbounded().await {
                    return;
                }
            }
        })
        .await
    }

    /// Protocol header, start/start-ok, tune/tune-ok, open/open-ok.
    /// Returns the server's tune values.
    pub(crate) async fn handshake(addr: SocketAddr, heartbeat: u16) -> (Self, (u16, u32, u16)) {
        let mut c = Self::connect(addr).await;
        c.send(PROTOCOL_HEADER).await;
        c.expect_method(10, 10).await; // connection.start
        c.send(&start_ok_plain("guest", "guest")).await;
        let tune = c.expect_method(10, 30).await.tune_args(); // connection.tune
        c.send(&tune_ok(tune.0, tune.1, heartbeat)).await;
        c.send(&connection_open("/")).await;
        c.expect_method(10, 41).await; // connection.open-ok
        (c, tune)
    }

    pub(crate) async fn open_channel(&mut self, channel: u16) {
        self.send(&channel_open(channel)).await;
        let f = self.expect_method(20, 11).await; // channel.open-ok
        assert_eq!(f.channel, channel);
    }
}

fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

/// How long a test waits at most for a silent client to be dropped.
pub(crate) const HEARTBEAT_DEATH_LIMIT: Duration = Duration::from_secs(10);
