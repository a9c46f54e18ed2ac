//! Malformed input on the wire, with a well-behaved lapin connection
//! alongside that must keep working.

use lapin::{BasicProperties, Channel, Connection};

use crate::raw::{self, RawClient};
use crate::support::*;

/// A lapin connection that must be unaffected by other clients' errors.
struct Bystander {
    conn: Connection,
    ch: Channel,
}

impl Bystander {
    async fn new(srv: &TestServer) -> Self {
        let conn = srv.connect().await;
        let ch = confirm_channel(&conn).await;
        declare_queue(&ch, "bystander", no_args()).await;
        Self { conn, ch }
    }

    async fn check(&self) {
        assert!(
            self.conn.status().connected(),
            "bystander connection was dropped"
        );
        publish_confirmed(&self.ch, "", "bystander", b"ok", BasicProperties::default()).await;
        let m = get(&self.ch, "bystander", true)
            .await
            .expect("bystander message");
        assert_eq!(m.delivery.data, b"ok");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_protocol_header_gets_ours_and_a_close() {
    guard(async {
        let srv = TestServer::start().await;
        let by = Bystander::new(&srv).await;
        for header in [
            &b"HTTP/1.1"[..],
            &b"AMQP\x01\x01\x00\x0a"[..], // AMQP 0-10
            &b"AMQX\x00\x00\x09\x01"[..],
        ] {
            let mut c = RawClient::connect(srv.addr).await;
            c.send(header).await;
            let got = c.read_to_close().await;
            assert_eq!(got, raw::PROTOCOL_HEADER, "reply to header {header:?}");
        }
        by.check().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_larger_than_frame_max_is_501() {
    guard(async {
        let srv = TestServer::start().await;
        let by = Bystander::new(&srv).await;
        let (mut c, tune) = RawClient::handshake(srv.addr, 0).await;
        c.open_channel(1).await;
        let frame_max = tune.1;
        // Only the 7-byte header, declaring a payload bigger than frame_max:
        // the broker must refuse it without waiting for the payload.
        let size = frame_max + 1024;
        let mut header = vec![raw::FRAME_BODY];
        header.extend_from_slice(&1u16.to_be_bytes());
        header.extend_from_slice(&size.to_be_bytes());
        c.send(&header).await;
        let (code, text, _, _) = c.expect_connection_close().await;
        assert_eq!(code, 501, "oversized frame: {text}");
        let _ = c.send_lossy(&raw::connection_close_ok()).await;
        c.expect_closed().await;
        by.check().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_of_exactly_frame_max_is_accepted_one_byte_more_is_501() {
    // frame_max counts the whole frame: 7 header octets + payload + frame end.
    guard(async {
        let srv = TestServer::start().await;
        let by = Bystander::new(&srv).await;
        let (mut c, tune) = RawClient::handshake(srv.addr, 0).await;
        c.open_channel(1).await;
        let max_payload = tune.1 as usize - 8;
        let body = vec![b'z'; max_payload];
        c.send(&raw::basic_publish(1, "", "bystander")).await;
        c.send(&raw::content_header(1, max_payload as u64)).await;
        c.send(&raw::body(1, &body)).await;
        let m = within("the frame_max-sized message to arrive", async {
            loop {
                if let Some(m) = get(&by.ch, "bystander", true).await {
                    return m;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
        .await;
        assert_eq!(m.delivery.data.len(), max_payload);

        let mut header = vec![raw::FRAME_BODY];
        header.extend_from_slice(&1u16.to_be_bytes());
        header.extend_from_slice(&(max_payload as u32 + 1).to_be_bytes());
        c.send(&header).await;
        let (code, text, _, _) = c.expect_connection_close().await;
        assert_eq!(code, 501, "frame one byte over frame_max: {text}");
        let _ = c.send_lossy(&raw::connection_close_ok()).await;
        c.expect_closed().await;
        by.check().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frame_end_is_501() {
    guard(async {
        let srv = TestServer::start().await;
        let by = Bystander::new(&srv).await;
        let (mut c, _) = RawClient::handshake(srv.addr, 0).await;
        // channel.open with 0x00 instead of 0xCE.
        let payload = raw::method_payload(20, 10, &raw::Args::new().shortstr("").bytes());
        c.send(&raw::frame_with_end(raw::FRAME_METHOD, 1, &payload, 0x00))
            .await;
        let (code, text, _, _) = c.expect_connection_close().await;
        assert_eq!(code, 501, "bad frame end: {text}");
        let _ = c.send_lossy(&raw::connection_close_ok()).await;
        c.expect_closed().await;
        by.check().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_frame_without_publish_is_505() {
    guard(async {
        let srv = TestServer::start().await;
        let by = Bystander::new(&srv).await;
        let (mut c, _) = RawClient::handshake(srv.addr, 0).await;
        c.open_channel(1).await;
        c.send(&raw::body(1, b"orphan body")).await;
        let (code, text, _, _) = c.expect_connection_close().await;
        assert_eq!(code, 505, "body frame without basic.publish: {text}");
        let _ = c.send_lossy(&raw::connection_close_ok()).await;
        c.expect_closed().await;
        by.check().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_frame_without_publish_is_505() {
    guard(async {
        let srv = TestServer::start().await;
        let by = Bystander::new(&srv).await;
        let (mut c, _) = RawClient::handshake(srv.addr, 0).await;
        c.open_channel(1).await;
        c.send(&raw::content_header(1, 5)).await;
        let (code, text, _, _) = c.expect_connection_close().await;
        assert_eq!(code, 505, "content header without basic.publish: {text}");
        let _ = c.send_lossy(&raw::connection_close_ok()).await;
        c.expect_closed().await;
        by.check().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_frame_instead_of_body_is_505() {
    guard(async {
        let srv = TestServer::start().await;
        let by = Bystander::new(&srv).await;
        let (mut c, _) = RawClient::handshake(srv.addr, 0).await;
        c.open_channel(1).await;
        // publish + header announcing 5 bytes, then another publish.
        c.send(&raw::basic_publish(1, "", "bystander")).await;
        c.send(&raw::content_header(1, 5)).await;
        c.send(&raw::basic_publish(1, "", "bystander")).await;
        let (code, text, _, _) = c.expect_connection_close().await;
        assert_eq!(code, 505, "method frame while a body was expected: {text}");
        let _ = c.send_lossy(&raw::connection_close_ok()).await;
        c.expect_closed().await;
        by.check().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_publish_is_routed() {
    // The raw client itself is sane: a hand-built publish arrives intact.
    guard(async {
        let srv = TestServer::start().await;
        let by = Bystander::new(&srv).await;
        let (mut c, _) = RawClient::handshake(srv.addr, 0).await;
        c.open_channel(1).await;
        c.send(&raw::basic_publish(1, "", "bystander")).await;
        c.send(&raw::content_header(1, 11)).await;
        c.send(&raw::body(1, b"hello ")).await;
        c.send(&raw::body(1, b"world")).await;
        let m = within("raw message to arrive", async {
            loop {
                if let Some(m) = get(&by.ch, "bystander", true).await {
                    return m;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
        .await;
        assert_eq!(m.delivery.data, b"hello world");
        // Orderly close.
        c.send(&raw::method(
            0,
            10,
            50,
            &raw::Args::new()
                .u16(200)
                .shortstr("bye")
                .u16(0)
                .u16(0)
                .bytes(),
        ))
        .await;
        c.expect_method(10, 51).await;
        c.expect_closed().await;
        by.check().await;
    })
    .await
}
