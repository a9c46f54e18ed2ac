//! `liebre bench connections`: open N idle connections, measure how long
//! each took (TCP connect plus protocol handshake), hold them, and read
//! the broker's resident memory before and after.
//!
//! Past about 28,000 connections one source address runs out of ephemeral
//! ports, so connections bind to 127.0.0.1, 127.0.0.2, ... in turn (every
//! 127/8 address is local on Linux).

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde::Serialize;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;

use crate::amqp::{AmqpIo, AmqpUrl};
use crate::cli::{ConnArgs, ConnProtocol};
use crate::mqtt::{MqttConn, MqttOpts};
use crate::report::{thousands, Latency};
use crate::stats::new_histogram;

/// Ephemeral ports one source address is good for (Linux's default range
/// 32768-60999, with some slack).
const PORTS_PER_SOURCE: u32 = 28_000;

/// The result of `liebre bench connections`.
#[derive(Debug, Clone, Serialize)]
pub struct ConnReport {
    /// `amqp`, `mqtt` or `tcp`.
    pub protocol: String,
    /// Where to.
    pub target: String,
    /// Connections asked for.
    pub requested: u32,
    /// Connections opened (and held).
    pub opened: u64,
    /// Connections that failed.
    pub failed: u64,
    /// Source addresses used.
    pub source_ips: u8,
    /// Time to open them all, s.
    pub open_s: f64,
    /// Connections opened per second.
    pub connect_rate: f64,
    /// Connect + handshake latency, µs.
    pub connect_latency_us: Option<Latency>,
    /// Broker VmRSS before, bytes (with --pid).
    pub broker_rss_before: Option<u64>,
    /// Broker VmRSS with every connection open, bytes.
    pub broker_rss_after: Option<u64>,
    /// (after - before) / opened, bytes.
    pub broker_bytes_per_connection: Option<f64>,
    /// CPU seconds this client used.
    pub client_cpu_s: Option<f64>,
    /// The first distinct errors.
    pub errors: Vec<String>,
}

impl ConnReport {
    /// The human-readable summary.
    pub fn to_table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "liebre bench connections: {} x {} to {} from {} source address(es)",
            thousands(u64::from(self.requested)),
            self.protocol,
            self.target,
            self.source_ips
        );
        let _ = writeln!(
            s,
            "  opened       {} in {:.2} s ({:.0}/s), failed {}",
            thousands(self.opened),
            self.open_s,
            self.connect_rate,
            self.failed
        );
        if let Some(l) = &self.connect_latency_us {
            let _ = writeln!(
                s,
                "  connect µs   p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
                l.p50, l.p90, l.p99, l.p99_9, l.max
            );
        }
        if let (Some(b), Some(a)) = (self.broker_rss_before, self.broker_rss_after) {
            let per = self.broker_bytes_per_connection.map_or(String::new(), |p| {
                format!(", {:.1} KiB per connection", p / 1024.0)
            });
            let _ = writeln!(
                s,
                "  broker RSS   {:.1} MiB -> {:.1} MiB{per}",
                b as f64 / 1048576.0,
                a as f64 / 1048576.0
            );
        }
        if let Some(cpu) = self.client_cpu_s {
            let _ = writeln!(s, "  client CPU   {cpu:.2} s");
        }
        for e in &self.errors {
            let _ = writeln!(s, "  error: {e}");
        }
        s
    }
}

/// One held connection.
enum Held {
    Tcp(#[allow(dead_code)] TcpStream),
    Amqp(#[allow(dead_code)] AmqpIo),
    Mqtt(#[allow(dead_code)] MqttConn),
}

/// Source addresses needed for `count` connections.
pub(crate) fn sources_needed(count: u32) -> u8 {
    u8::try_from(count.div_ceil(PORTS_PER_SOURCE).clamp(1, 254)).unwrap_or(254)
}

async fn open_one(
    target: SocketAddr,
    source: Option<Ipv4Addr>,
    args: &ConnArgs,
    url: Option<&AmqpUrl>,
    mqtt: Option<&MqttOpts>,
    n: u32,
) -> anyhow::Result<Held> {
    let stream = match source {
        Some(ip) => {
            let sock = TcpSocket::new_v4()?;
            sock.bind(SocketAddr::new(IpAddr::V4(ip), 0))
                .with_context(|| format!("binding to {ip}"))?;
            sock.connect(target).await?
        }
        None => TcpStream::connect(target).await?,
    };
    let _ = stream.set_nodelay(true);
    Ok(match args.protocol {
        ConnProtocol::Tcp => Held::Tcp(stream),
        ConnProtocol::Amqp => Held::Amqp(
            AmqpIo::handshake(stream, url.context("no URL")?, "liebre bench idle").await?,
        ),
        ConnProtocol::Mqtt => {
            let id = format!("lb-{}-c{n}", std::process::id());
            Held::Mqtt(MqttConn::handshake(stream, mqtt.context("no options")?, &id, true).await?)
        }
    })
}

/// Runs `liebre bench connections`.
pub async fn run_connections(args: &ConnArgs) -> anyhow::Result<ConnReport> {
    anyhow::ensure!(args.count > 0, "--count must be positive");
    anyhow::ensure!(args.concurrency > 0, "--concurrency must be positive");
    let (host, port, url) = match args.protocol {
        ConnProtocol::Amqp => {
            let url = AmqpUrl::parse(&args.url)?;
            (url.host.clone(), url.port, Some(url))
        }
        ConnProtocol::Mqtt => (args.host.clone(), args.port.unwrap_or(1883), None),
        ConnProtocol::Tcp => (
            args.host.clone(),
            args.port.context("--protocol tcp needs --port")?,
            None,
        ),
    };
    let target = tokio::net::lookup_host((host.as_str(), port))
        .await
        .with_context(|| format!("resolving {host}"))?
        .next()
        .with_context(|| format!("no address for {host}"))?;
    let loopback_v4 = matches!(target.ip(), IpAddr::V4(ip) if ip.is_loopback());
    let sources = match args.source_ips {
        Some(n) => {
            anyhow::ensure!(n > 0, "--source-ips must be positive");
            if n > 1 && !loopback_v4 {
                bail!("--source-ips above 1 needs an IPv4 loopback broker (127.x.x.x)");
            }
            n
        }
        None if loopback_v4 => sources_needed(args.count),
        None => 1,
    };
    if let Some(limit) = crate::procfs::open_files_limit() {
        if u64::from(args.count) + 64 > limit {
            bail!(
                "{} connections need more open files than this process may have ({limit}); \
                 raise it first, e.g. `ulimit -n {}`",
                args.count,
                u64::from(args.count) + 1024
            );
        }
    }
    let mqtt = MqttOpts {
        addr: target.to_string(),
        protocol: liebre_mqtt_codec::Protocol::V311,
        keep_alive: 0,
        username: None,
        password: None,
    };
    let rss_before = args.pid.and_then(crate::procfs::vm_rss_bytes);
    let cpu_start = crate::procfs::cpu_seconds("self");
    let show = crate::progress::wanted(args.no_progress, args.json);
    let bar = crate::progress::bar(
        u64::from(args.count),
        show,
        "{spinner} [{elapsed_precise}] [{bar:30}] {pos}/{len} connections {msg}",
    );

    let args = Arc::new(args.clone());
    let url = Arc::new(url);
    let mqtt = Arc::new(mqtt);
    let sem = Arc::new(Semaphore::new(args.concurrency as usize));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(args.count as usize);
    for n in 0..args.count {
        let source =
            (sources > 1).then(|| Ipv4Addr::new(127, 0, 0, 1 + (n % u32::from(sources)) as u8));
        let (args, url, mqtt, sem, bar, failed) = (
            args.clone(),
            url.clone(),
            mqtt.clone(),
            sem.clone(),
            bar.clone(),
            failed.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await.ok()?;
            let t0 = Instant::now();
            let r = tokio::time::timeout(
                Duration::from_secs(30),
                open_one(target, source, &args, url.as_ref().as_ref(), Some(&mqtt), n),
            )
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out after 30 s")));
            let us = t0.elapsed().as_micros() as u64;
            bar.inc(1);
            match r {
                Ok(h) => Some(Ok((h, us))),
                Err(e) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    Some(Err(format!("{e:#}")))
                }
            }
        }));
    }
    let mut held = Vec::with_capacity(tasks.len());
    let mut hist = new_histogram();
    let mut errors: Vec<String> = Vec::new();
    for t in tasks {
        match t.await {
            Ok(Some(Ok((h, us)))) => {
                hist.saturating_record(us);
                held.push(h);
            }
            Ok(Some(Err(e))) if errors.len() < 5 && !errors.contains(&e) => errors.push(e),
            _ => {}
        }
    }
    let open_s = started.elapsed().as_secs_f64();
    bar.set_message("holding");
    tokio::time::sleep(Duration::from_nanos(args.hold)).await;
    let rss_after = args.pid.and_then(crate::procfs::vm_rss_bytes);
    bar.finish_and_clear();
    let opened = held.len() as u64;
    drop(held);
    let latency = (!hist.is_empty()).then(|| Latency {
        count: hist.len(),
        min: hist.min(),
        mean: (hist.mean() * 10.0).round() / 10.0,
        p50: hist.value_at_quantile(0.5),
        p90: hist.value_at_quantile(0.9),
        p99: hist.value_at_quantile(0.99),
        p99_9: hist.value_at_quantile(0.999),
        max: hist.max(),
    });
    let per = match (rss_before, rss_after) {
        (Some(b), Some(a)) if opened > 0 => {
            Some(((a as f64 - b as f64) / opened as f64 * 10.0).round() / 10.0)
        }
        _ => None,
    };
    if args.pid.is_some() && rss_before.is_none() {
        errors.push(format!(
            "could not read /proc/{}/status (is the broker local?)",
            args.pid.unwrap_or_default()
        ));
    }
    Ok(ConnReport {
        protocol: format!("{:?}", args.protocol).to_lowercase(),
        target: target.to_string(),
        requested: args.count,
        opened,
        failed: failed.load(Ordering::Relaxed),
        source_ips: sources,
        open_s: (open_s * 1000.0).round() / 1000.0,
        connect_rate: (opened as f64 / open_s.max(1e-6)).round(),
        connect_latency_us: latency,
        broker_rss_before: rss_before,
        broker_rss_after: rss_after,
        broker_bytes_per_connection: per,
        client_cpu_s: match (cpu_start, crate::procfs::cpu_seconds("self")) {
            (Some(a), Some(b)) => Some(((b - a) * 1000.0).round() / 1000.0),
            _ => None,
        },
        errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_addresses_for_counts() {
        assert_eq!(sources_needed(1), 1);
        assert_eq!(sources_needed(28_000), 1);
        assert_eq!(sources_needed(28_001), 2);
        assert_eq!(sources_needed(100_000), 4);
        assert_eq!(sources_needed(u32::MAX), 254);
    }
}
