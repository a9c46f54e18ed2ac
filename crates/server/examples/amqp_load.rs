//! A small AMQP 0-9-1 load generator (lapin): one producer connection, one
//! consumer connection, one queue. Works against Liebre and RabbitMQ alike.
//!
//! ```text
//! cargo run -p liebre-server --release --example amqp_load -- \
//!     --url amqp://guest:guest@127.0.0.1:5672/%2F --seconds 10 --size 16
//! # or against a Liebre broker started inside the load process:
//! cargo run -p liebre-server --release --example amqp_load -- --embedded --seconds 10
//! ```
//!
//! The producer publishes transient messages (delivery_mode 1) without
//! confirms as fast as it can, but keeps at most `--max-in-flight`
//! messages published and not yet consumed, so the queue stays short and
//! the number measured is end-to-end throughput. The consumer uses manual
//! acks with prefetch `--prefetch`, acknowledging every `--ack-every`
//! messages with `multiple=true`. At the end one JSON line is printed:
//!
//! ```text
//! {"broker_url":"amqp://...","seconds":10,"size":16,"published":N,"consumed":N,"msgs_per_sec":X}
//! ```

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use lapin::message::DeliveryResult;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use tokio::sync::{mpsc, Notify};

#[derive(Debug, Parser)]
#[command(about = "AMQP 0-9-1 publish/consume throughput")]
struct Args {
    /// Broker URL.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2F")]
    url: String,
    /// How long to run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Message body size in bytes.
    #[arg(long, default_value_t = 16)]
    size: usize,
    /// Queue name [default: load-<pid>].
    #[arg(long)]
    queue: Option<String>,
    /// Most messages published but not yet consumed.
    #[arg(long, default_value_t = 20_000)]
    max_in_flight: u64,
    /// Consumer prefetch (basic.qos).
    #[arg(long, default_value_t = 1000)]
    prefetch: u16,
    /// Acknowledge (multiple=true) every N messages.
    #[arg(long, default_value_t = 100)]
    ack_every: u64,
    /// Ignore --url: start a Liebre broker in this process on an ephemeral
    /// loopback port and measure it (no separate server binary needed).
    #[arg(long)]
    embedded: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.seconds > 0, "--seconds must be positive");
    anyhow::ensure!(args.ack_every > 0, "--ack-every must be positive");
    let queue = args
        .queue
        .clone()
        .unwrap_or_else(|| format!("load-{}", std::process::id()));

    let mut embedded = None;
    let mut args = args;
    if args.embedded {
        let dir = std::env::temp_dir().join(format!("liebre-amqp-load-{}", std::process::id()));
        let server = liebre_server::Server::start(liebre_server::Config::ephemeral(&dir))
            .await
            .context("starting the embedded broker")?;
        args.url = format!("amqp://guest:guest@{}/%2F", server.amqp_addrs()[0]);
        embedded = Some((server, dir));
    }
    let args = args;

    let producer = Connection::connect(&args.url, ConnectionProperties::default())
        .await
        .with_context(|| format!("connecting the producer to {}", args.url))?;
    let consumer = Connection::connect(&args.url, ConnectionProperties::default())
        .await
        .with_context(|| format!("connecting the consumer to {}", args.url))?;
    let pch = producer
        .create_channel()
        .await
        .context("producer channel")?;
    let cch = consumer
        .create_channel()
        .await
        .context("consumer channel")?;

    pch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions {
            durable: false,
            auto_delete: false,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .with_context(|| format!("declaring queue {queue}"))?;
    // Leftovers from an earlier run with the same name would skew the count.
    pch.queue_purge(queue.as_str().into(), Default::default())
        .await
        .context("purging the queue")?;

    cch.basic_qos(args.prefetch, BasicQosOptions::default())
        .await
        .context("basic.qos")?;

    let published = Arc::new(AtomicU64::new(0));
    let consumed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(Notify::new());

    // The consumer: deliveries are forwarded in order by lapin's delegate
    // (no StreamExt needed) to a task that counts and acks.
    let tag = format!("{queue}-consumer");
    let lapin_consumer = cch
        .basic_consume(
            queue.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .context("basic.consume")?;
    let (tx, mut rx) = mpsc::unbounded_channel::<DeliveryResult>();
    lapin_consumer.set_delegate(move |d: DeliveryResult| {
        let _ = tx.send(d);
        std::future::ready(())
    });

    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.seconds);

    let consumer_task = {
        let cch = cch.clone();
        let consumed = consumed.clone();
        let stop = stop.clone();
        let progress = progress.clone();
        let ack_every = args.ack_every;
        tokio::spawn(async move {
            let mut since_ack = 0u64;
            let mut last_tag = 0u64;
            let end = tokio::time::sleep_until(deadline.into());
            tokio::pin!(end);
            loop {
                let next = tokio::select! {
                    biased;
                    _ = &mut end => None,
                    d = rx.recv() => d,
                };
                let Some(d) = next else { break };
                match d {
                    Ok(Some(delivery)) => {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        last_tag = delivery.delivery_tag;
                        consumed.fetch_add(1, Ordering::Relaxed);
                        since_ack += 1;
                        if since_ack >= ack_every {
                            since_ack = 0;
                            cch.basic_ack(last_tag, BasicAckOptions { multiple: true })
                                .await?;
                            progress.notify_one();
                        }
                    }
                    Ok(None) => anyhow::bail!("the broker cancelled the consumer"),
                    Err(e) => return Err(anyhow::Error::from(e).context("consumer")),
                }
            }
            if since_ack > 0 {
                cch.basic_ack(last_tag, BasicAckOptions { multiple: true })
                    .await?;
            }
            Ok::<_, anyhow::Error>(())
        })
    };

    // The producer, on this task.
    let body = vec![b'x'; args.size];
    let props = BasicProperties::default().with_delivery_mode(1);
    let mut sent = 0u64;
    while Instant::now() < deadline {
        if sent.saturating_sub(consumed.load(Ordering::Relaxed)) >= args.max_in_flight {
            // Back-pressure: wait for the consumer to catch up.
            let _ = tokio::time::timeout(Duration::from_millis(20), progress.notified()).await;
            continue;
        }
        pch.basic_publish(
            "".into(),
            queue.as_str().into(),
            BasicPublishOptions::default(),
            &body,
            props.clone(),
        )
        .await
        .context("basic.publish")?;
        sent += 1;
        published.store(sent, Ordering::Relaxed);
    }
    stop.store(true, Ordering::Relaxed);
    let consumer_result = consumer_task.await.context("consumer task")?;
    let consumed_n = consumed.load(Ordering::Relaxed);
    let published_n = published.load(Ordering::Relaxed);

    // Clean up: cancel, delete the queue, close.
    let _ = cch
        .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
        .await;
    drop(lapin_consumer);
    pch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .with_context(|| format!("deleting queue {queue}"))?;
    let _ = consumer.close(200, "done".into()).await;
    let _ = producer.close(200, "done".into()).await;
    consumer_result?;
    if let Some((server, dir)) = embedded {
        server.shutdown().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    let rate = consumed_n as f64 / args.seconds as f64;
    println!(
        "{{\"broker_url\":{},\"seconds\":{},\"size\":{},\"published\":{},\"consumed\":{},\"msgs_per_sec\":{:.1}}}",
        json_string(&args.url),
        args.seconds,
        args.size,
        published_n,
        consumed_n,
        rate
    );
    Ok(())
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
