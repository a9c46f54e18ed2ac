//! A small MQTT 3.1.1 load generator (rumqttc): N publishers and M
//! subscribers on one topic. Works against Liebre and Mosquitto alike.
//!
//! ```text
//! cargo build -p liebre-server --release --example mqtt_load
//! target/release/examples/mqtt_load --host 127.0.0.1 --port 1883 \
//!     --seconds 10 --size 16 --qos 1 --subscribers 1 --publishers 1
//! # against Mosquitto (tests/python/run_mosquitto.sh start):
//! target/release/examples/mqtt_load --port 1884 --broker mosquitto
//! # against a Liebre broker started inside the load process:
//! target/release/examples/mqtt_load --embedded
//! ```
//!
//! Every subscriber subscribes to `load/<run id>` at `--qos` and counts
//! what it receives. Every publisher publishes `--size`-byte messages to
//! that topic at `--qos`, as fast as it can with a bounded number in
//! flight: at QoS 1 rumqttc's inflight window (`--inflight`, unacknowledged
//! PUBLISHes); at QoS 0, which has no acknowledgements, all publishers
//! together keep `published - received by subscriber 0` below
//! `--max-backlog` (applied at QoS 1 too, where it only matters if a
//! subscriber falls behind), so the broker's queues stay short and the
//! figure is end-to-end throughput, not how fast a socket buffer fills. After
//! `--seconds` the counters are read and one JSON line is printed:
//!
//! ```text
//! {"broker":"127.0.0.1:1883","qos":1,"size":16,"publishers":1,"subscribers":1,"seconds":10,
//!  "published":N,"received_total":N,"msgs_per_sec_per_subscriber":X,"delivered_per_sec":X}
//! ```
//!
//! `published` counts PUBLISH packets written (QoS 0) or acknowledged with
//! PUBACK (QoS 1) during the run; `received_total` adds up every
//! subscriber's count during the run.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use clap::Parser;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

#[derive(Debug, Parser)]
#[command(about = "MQTT 3.1.1 publish/subscribe throughput")]
struct Args {
    /// Broker host.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Broker MQTT port.
    #[arg(long, default_value_t = 1883)]
    port: u16,
    /// How long to measure.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 16)]
    size: usize,
    /// QoS of publishes and subscriptions (0 or 1).
    #[arg(long, default_value_t = 0)]
    qos: u8,
    /// Subscriber connections.
    #[arg(long, default_value_t = 1)]
    subscribers: u32,
    /// Publisher connections.
    #[arg(long, default_value_t = 1)]
    publishers: u32,
    /// QoS 1: unacknowledged PUBLISHes per publisher (rumqttc inflight).
    #[arg(long, default_value_t = 100)]
    inflight: u16,
    /// QoS 0: most messages published and not yet received by subscriber 0.
    #[arg(long, default_value_t = 20_000)]
    max_backlog: u64,
    /// Broker name for the JSON line [default: HOST:PORT].
    #[arg(long)]
    broker: Option<String>,
    /// Username (and `--password`); none by default.
    #[arg(long)]
    username: Option<String>,
    /// Password for `--username`.
    #[arg(long, default_value = "")]
    password: String,
    /// Ignore --host/--port: start a Liebre broker in this process on an
    /// ephemeral loopback port and measure it.
    #[arg(long)]
    embedded: bool,
}

/// What a client's eventloop task reports.
enum Ready {
    Connected,
    Subscribed,
    Failed(String),
}

/// Counters shared by every task.
struct Shared {
    /// Publishes written (QoS 0) or acknowledged (QoS 1), all publishers.
    published: AtomicU64,
    /// Received, per subscriber.
    received: Vec<AtomicU64>,
    /// Set at the end: eventloop errors after it are expected.
    stopping: AtomicBool,
}

fn options(args: &Args, id: String) -> MqttOptions {
    let mut o = MqttOptions::new(id, args.host.clone(), args.port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_clean_session(true);
    let max = (args.size + 1024).max(10 * 1024);
    o.set_max_packet_size(max, max);
    o.set_inflight(args.inflight.max(1));
    o.set_request_channel_capacity(1024);
    if let Some(u) = &args.username {
        o.set_credentials(u.clone(), args.password.clone());
    }
    o
}

/// Poll an eventloop until it fails or the run stops. `on_event` counts.
fn spawn_eventloop(
    mut el: EventLoop,
    shared: Arc<Shared>,
    ready: mpsc::UnboundedSender<Ready>,
    mut on_event: impl FnMut(&Event) + Send + 'static,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(ev) => {
                    match &ev {
                        Event::Incoming(Packet::ConnAck(_)) => {
                            let _ = ready.send(Ready::Connected);
                        }
                        Event::Incoming(Packet::SubAck(s)) => {
                            let ok = s
                                .return_codes
                                .iter()
                                .all(|c| !matches!(c, rumqttc::SubscribeReasonCode::Failure));
                            let _ = ready.send(if ok {
                                Ready::Subscribed
                            } else {
                                Ready::Failed("subscription refused".into())
                            });
                        }
                        _ => {}
                    }
                    on_event(&ev);
                }
                Err(e) => {
                    if !shared.stopping.load(Ordering::Acquire) {
                        let _ = ready.send(Ready::Failed(e.to_string()));
                    }
                    return;
                }
            }
        }
    })
}

async fn wait_ready(
    rx: &mut mpsc::UnboundedReceiver<Ready>,
    want: fn(&Ready) -> bool,
    what: &str,
) -> anyhow::Result<()> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            Err(_) => bail!("timed out waiting for {what}"),
            Ok(None) => bail!("{what}: eventloop ended"),
            Ok(Some(Ready::Failed(e))) => bail!("{what}: {e}"),
            Ok(Some(r)) if want(&r) => return Ok(()),
            Ok(Some(_)) => {}
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    anyhow::ensure!(args.seconds > 0, "--seconds must be positive");
    anyhow::ensure!(args.qos <= 1, "--qos must be 0 or 1");
    anyhow::ensure!(args.publishers > 0, "--publishers must be positive");
    let qos = if args.qos == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    };

    let mut embedded = None;
    if args.embedded {
        let dir = std::env::temp_dir().join(format!("liebre-mqtt-load-{}", std::process::id()));
        let server = liebre_server::Server::start(liebre_server::Config::ephemeral(&dir))
            .await
            .context("starting the embedded broker")?;
        let addr = server.mqtt_addrs()[0];
        args.host = addr.ip().to_string();
        args.port = addr.port();
        args.broker.get_or_insert_with(|| "liebre-embedded".into());
        embedded = Some((server, dir));
    }
    let args = Arc::new(args);
    let broker = args
        .broker
        .clone()
        .unwrap_or_else(|| format!("{}:{}", args.host, args.port));
    let run_id = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    );
    let topic = format!("load/{run_id}");
    let shared = Arc::new(Shared {
        published: AtomicU64::new(0),
        received: (0..args.subscribers).map(|_| AtomicU64::new(0)).collect(),
        stopping: AtomicBool::new(false),
    });
    let (fail_tx, mut fail_rx) = mpsc::unbounded_channel::<String>();

    // Subscribers first, each subscribed before anything is published.
    let mut clients: Vec<AsyncClient> = Vec::new();
    let mut tasks: Vec<JoinHandle<()>> = Vec::new();
    for i in 0..args.subscribers as usize {
        let (client, el) = AsyncClient::new(options(&args, format!("load-sub-{run_id}-{i}")), 1024);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let counters = shared.clone();
        tasks.push(spawn_eventloop(el, shared.clone(), tx, move |ev| {
            if let Event::Incoming(Packet::Publish(_)) = ev {
                counters.received[i].fetch_add(1, Ordering::Relaxed);
            }
        }));
        wait_ready(
            &mut rx,
            |r| matches!(r, Ready::Connected),
            "subscriber CONNACK",
        )
        .await
        .with_context(|| format!("subscriber {i} connecting to {}:{}", args.host, args.port))?;
        client
            .subscribe(topic.clone(), qos)
            .await
            .context("sending SUBSCRIBE")?;
        wait_ready(&mut rx, |r| matches!(r, Ready::Subscribed), "SUBACK")
            .await
            .with_context(|| format!("subscriber {i}"))?;
        forward_failures(rx, fail_tx.clone(), format!("subscriber {i}"));
        clients.push(client);
    }

    // Publishers.
    let payload = Bytes::from(vec![b'x'; args.size]);
    let mut publishers = Vec::new();
    for j in 0..args.publishers {
        let (client, el) = AsyncClient::new(options(&args, format!("load-pub-{run_id}-{j}")), 1024);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let counters = shared.clone();
        let count_written = qos == QoS::AtMostOnce;
        tasks.push(spawn_eventloop(el, shared.clone(), tx, move |ev| {
            let done = match ev {
                Event::Outgoing(Outgoing::Publish(_)) => count_written,
                Event::Incoming(Packet::PubAck(_)) => !count_written,
                _ => false,
            };
            if done {
                counters.published.fetch_add(1, Ordering::Relaxed);
            }
        }));
        wait_ready(
            &mut rx,
            |r| matches!(r, Ready::Connected),
            "publisher CONNACK",
        )
        .await
        .with_context(|| format!("publisher {j} connecting to {}:{}", args.host, args.port))?;
        forward_failures(rx, fail_tx.clone(), format!("publisher {j}"));
        clients.push(client.clone());
        publishers.push(client);
    }

    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.seconds);
    let mut pub_tasks = Vec::new();
    for client in publishers {
        let shared = shared.clone();
        let topic = topic.clone();
        let payload = payload.clone();
        let args = args.clone();
        pub_tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline && !shared.stopping.load(Ordering::Relaxed) {
                if !shared.received.is_empty() {
                    // QoS 0 has no acknowledgements: pace on subscriber 0.
                    // (At QoS 1 the inflight window paces; this only keeps
                    // a slow subscriber's queue short.)
                    let backlog = shared
                        .published
                        .load(Ordering::Relaxed)
                        .saturating_sub(shared.received[0].load(Ordering::Relaxed));
                    if backlog >= args.max_backlog {
                        tokio::time::sleep(Duration::from_micros(200)).await;
                        continue;
                    }
                }
                // Bounded: returns once the request is queued; the
                // eventloop holds at most `inflight` unacknowledged.
                let sent = tokio::time::timeout(
                    Duration::from_secs(5),
                    client.publish_bytes(topic.clone(), qos, false, payload.clone()),
                )
                .await;
                match sent {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return, // eventloop gone; reported elsewhere
                    Err(_) => {}          // stalled; the deadline ends the loop
                }
            }
        }));
    }

    // Run until the deadline or the first failure.
    let failure = tokio::select! {
        _ = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => None,
        f = fail_rx.recv() => f,
    };
    let elapsed = start.elapsed();
    let published = shared.published.load(Ordering::Relaxed);
    let received: Vec<u64> = shared
        .received
        .iter()
        .map(|r| r.load(Ordering::Relaxed))
        .collect();
    shared.stopping.store(true, Ordering::Release);
    if let Some(f) = failure {
        bail!("{f} (after {elapsed:?})");
    }

    // Tidy up, bounded.
    for t in pub_tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    for c in &clients {
        let _ = tokio::time::timeout(Duration::from_secs(1), c.disconnect()).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    for t in tasks {
        t.abort();
    }
    if let Some((server, dir)) = embedded {
        server.shutdown().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    let received_total: u64 = received.iter().sum();
    let secs = args.seconds as f64;
    let per_sub = if args.subscribers > 0 {
        received_total as f64 / f64::from(args.subscribers) / secs
    } else {
        0.0
    };
    println!(
        "{{\"broker\":{},\"qos\":{},\"size\":{},\"publishers\":{},\"subscribers\":{},\"seconds\":{},\"published\":{},\"received_total\":{},\"msgs_per_sec_per_subscriber\":{:.1},\"delivered_per_sec\":{:.1}}}",
        json_string(&broker),
        args.qos,
        args.size,
        args.publishers,
        args.subscribers,
        args.seconds,
        published,
        received_total,
        per_sub,
        received_total as f64 / secs,
    );
    Ok(())
}

/// After setup, an eventloop failure ends the run.
fn forward_failures(
    mut rx: mpsc::UnboundedReceiver<Ready>,
    fail: mpsc::UnboundedSender<String>,
    who: String,
) {
    tokio::spawn(async move {
        while let Some(r) = rx.recv().await {
            if let Ready::Failed(e) = r {
                let _ = fail.send(format!("{who}: {e}"));
                return;
            }
        }
    });
}

/// A JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
