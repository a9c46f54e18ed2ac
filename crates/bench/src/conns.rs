//! `liebre bench connections`: open N idle connections, measure how long
//! each took (TCP connect plus protocol handshake), hold them, and read
//! the broker's resident memory before and after.
//!
//! Past about 28,000 connections one source address runs out of ephemeral
//! ports, so connections bind to 127.0.0.1, 127.0.0.2, ... in turn (every
//! 127/8 address is local on Linux).
//!
//! With `--churn`, workers instead connect, handshake and close cleanly
//! over and over for `--duration`: cycles per second, cycle latency and
//! the broker's CPU time per cycle.
//!
//! Churn and ephemeral ports: whoever closes a TCP connection first keeps
//! it in TIME_WAIT for 60 s, and a client-side TIME_WAIT holds a local
//! port. MQTT clients wait for the broker to close after DISCONNECT, so
//! TIME_WAIT stays on the broker's side (it holds no client port). AMQP
//! clients close the socket after close-ok, as the spec says (RabbitMQ
//! waits for that; Liebre closes at once, so in practice TIME_WAIT lands
//! on its side), and `tcp` just drops: there TIME_WAIT is ours. Churn
//! therefore binds to no source address unless `--source-ips` says so: a
//! plain connect() picks its port knowing the destination, and with
//! `net.ipv4.tcp_tw_reuse` at 1, or at 2 (the default) on loopback, it
//! reuses ports whose TIME_WAIT is over a second old: some 28,000 cycles
//! per second, more than one client thread makes (20 s of `tcp` churn at
//! 14,000/s, 14,000 client-side TIME_WAITs, nothing failed). bind() to
//! port 0 cannot reuse them (it picks the port before the destination is
//! known) and scans the whole range each time: with client-side TIME_WAIT,
//! `--source-ips 2` fell to 1,600 cycles/s, p99 0.7 s. It helps only when
//! tcp_tw_reuse is 0. Running out shows as EADDRNOTAVAIL, reported with a
//! hint.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use hdrhistogram::Histogram;
use indicatif::ProgressBar;
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
/// Longest a connection may take to open (idle), or a whole cycle to run
/// (churn).
const OPEN_LIMIT: Duration = Duration::from_secs(30);
/// Longest a clean close may take in churn: close-ok, or the broker's end
/// of stream after DISCONNECT.
const CLOSE_LIMIT: Duration = Duration::from_secs(5);
/// Distinct error messages kept in the report.
const MAX_ERRORS: usize = 5;

/// The result of `liebre bench connections`. The churn fields are left
/// out of the JSON of an idle run.
#[derive(Debug, Clone, Serialize)]
pub struct ConnReport {
    /// `amqp`, `mqtt` or `tcp`.
    pub protocol: String,
    /// Where to.
    pub target: String,
    /// Connections asked for (churn: workers, one connection each at a
    /// time).
    pub requested: u32,
    /// Connections opened (and held; churn: opened and closed, the same
    /// as `cycles`).
    pub opened: u64,
    /// Connections that failed (churn: cycles that failed).
    pub failed: u64,
    /// Source addresses used.
    pub source_ips: u8,
    /// Time to open them all, s (churn: the run's length).
    pub open_s: f64,
    /// Connections opened per second.
    pub connect_rate: f64,
    /// Connect + handshake latency, µs (churn: that part of each cycle).
    pub connect_latency_us: Option<Latency>,
    /// Broker VmRSS before, bytes (with --pid).
    pub broker_rss_before: Option<u64>,
    /// Broker VmRSS with every connection open, bytes (churn: once every
    /// worker stopped, all connections closed).
    pub broker_rss_after: Option<u64>,
    /// (after - before) / opened, bytes (not with churn).
    pub broker_bytes_per_connection: Option<f64>,
    /// CPU seconds this client used.
    pub client_cpu_s: Option<f64>,
    /// The first distinct errors.
    pub errors: Vec<String>,
    /// Churn: connect + handshake + clean close cycles completed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cycles: Option<u64>,
    /// Churn: cycles completed per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cycles_per_s: Option<f64>,
    /// Churn: latency of a whole cycle (connect, handshake, close), µs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cycle_latency_us: Option<Latency>,
    /// Churn: the broker's CPU seconds over the run (with --pid).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broker_cpu_s: Option<f64>,
    /// Churn: the broker's CPU µs per completed cycle (with --pid).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broker_cpu_us_per_cycle: Option<f64>,
}

impl ConnReport {
    /// The human-readable summary.
    pub fn to_table(&self) -> String {
        if let Some(cycles) = self.cycles {
            return self.churn_table(cycles);
        }
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

    /// The summary of a churn run.
    fn churn_table(&self, cycles: u64) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "liebre bench connections --churn: {} to {}, {} worker(s) for {:.1} s, \
             {} source address(es)",
            self.protocol, self.target, self.requested, self.open_s, self.source_ips
        );
        let _ = writeln!(
            s,
            "  cycles       {} ({}/s), failed {}",
            thousands(cycles),
            thousands(self.cycles_per_s.unwrap_or(0.0) as u64),
            self.failed
        );
        for (name, lat) in [
            ("cycle µs  ", &self.cycle_latency_us),
            ("connect µs", &self.connect_latency_us),
        ] {
            if let Some(l) = lat {
                let _ = writeln!(
                    s,
                    "  {name}   p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
                    l.p50, l.p90, l.p99, l.p99_9, l.max
                );
            }
        }
        if let Some(cpu) = self.broker_cpu_s {
            let per = self
                .broker_cpu_us_per_cycle
                .map_or(String::new(), |p| format!(", {p:.1} µs per cycle"));
            let _ = writeln!(s, "  broker CPU   {cpu:.2} s{per}");
        }
        if let (Some(b), Some(a)) = (self.broker_rss_before, self.broker_rss_after) {
            let _ = writeln!(
                s,
                "  broker RSS   {:.1} MiB -> {:.1} MiB ({:+.1} MiB over {} cycles)",
                b as f64 / 1048576.0,
                a as f64 / 1048576.0,
                (a as f64 - b as f64) / 1048576.0,
                thousands(cycles)
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
    Amqp(AmqpIo),
    Mqtt(MqttConn),
}

impl Held {
    /// Closes cleanly: AMQP connection.close and close-ok, MQTT
    /// DISCONNECT and the broker's end of stream; plain TCP is dropped.
    async fn close(self) -> anyhow::Result<()> {
        match self {
            Held::Tcp(_) => Ok(()),
            Held::Amqp(io) => io.try_close(CLOSE_LIMIT).await,
            Held::Mqtt(c) => c.try_disconnect(CLOSE_LIMIT).await,
        }
    }
}

/// Source addresses needed for `count` connections.
pub(crate) fn sources_needed(count: u32) -> u8 {
    u8::try_from(count.div_ceil(PORTS_PER_SOURCE).clamp(1, 254)).unwrap_or(254)
}

/// The source address of connection `n` of `sources`: 127.0.0.1 and up.
fn source_ip(n: u32, sources: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 1 + (n % u32::from(sources.max(1))) as u8)
}

/// Keeps `e` unless it is already there or enough are.
fn keep_error(errors: &mut Vec<String>, e: String) {
    if errors.len() < MAX_ERRORS && !errors.contains(&e) {
        errors.push(e);
    }
}

/// [`keep_error`] on a list the churn workers share.
fn note_error(errors: &Mutex<Vec<String>>, e: String) {
    keep_error(
        &mut errors.lock().unwrap_or_else(PoisonError::into_inner),
        e,
    );
}

/// A failed connect, with a hint when this machine ran out of ephemeral
/// ports.
fn connect_error(e: std::io::Error, target: SocketAddr) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::AddrNotAvailable {
        anyhow::anyhow!(
            "connecting to {target}: {e}: no ephemeral port left (too many in TIME_WAIT?); \
             try a lower --concurrency, --source-ips N on a loopback broker, \
             net.ipv4.tcp_tw_reuse=1 or a wider net.ipv4.ip_local_port_range"
        )
    } else {
        anyhow::Error::new(e).context(format!("connecting to {target}"))
    }
}

async fn open_one(
    target: SocketAddr,
    source: Option<Ipv4Addr>,
    args: &ConnArgs,
    url: Option<&AmqpUrl>,
    mqtt: Option<&MqttOpts>,
    n: u32,
) -> anyhow::Result<Held> {
    let connected = match source {
        Some(ip) => {
            let sock = TcpSocket::new_v4()?;
            sock.bind(SocketAddr::new(IpAddr::V4(ip), 0))
                .with_context(|| format!("binding to {ip} (no ephemeral port left on it?)"))?;
            sock.connect(target).await
        }
        None => TcpStream::connect(target).await,
    };
    let stream = connected.map_err(|e| connect_error(e, target))?;
    let _ = stream.set_nodelay(true);
    let name = if args.churn {
        "liebre bench churn"
    } else {
        "liebre bench idle"
    };
    Ok(match args.protocol {
        ConnProtocol::Tcp => Held::Tcp(stream),
        ConnProtocol::Amqp => {
            Held::Amqp(AmqpIo::handshake(stream, url.context("no URL")?, name).await?)
        }
        ConnProtocol::Mqtt => {
            let id = format!("lb-{}-c{n}", std::process::id());
            Held::Mqtt(MqttConn::handshake(stream, mqtt.context("no options")?, &id, true).await?)
        }
    })
}

/// Runs `liebre bench connections` (idle, or with `--churn`).
pub async fn run_connections(args: &ConnArgs) -> anyhow::Result<ConnReport> {
    anyhow::ensure!(args.churn || args.count > 0, "--count must be positive");
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
        None if loopback_v4 && !args.churn => sources_needed(args.count),
        None => 1,
    };
    let at_once = if args.churn {
        args.concurrency
    } else {
        args.count
    };
    if let Some(limit) = crate::procfs::open_files_limit() {
        if u64::from(at_once) + 64 > limit {
            bail!(
                "{at_once} connections need more open files than this process may have \
                 ({limit}); raise it first, e.g. `ulimit -n {}`",
                u64::from(at_once) + 1024
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
    if args.churn {
        return churn(args, target, url, mqtt, sources).await;
    }
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
        let source = (sources > 1).then(|| source_ip(n, sources));
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
                OPEN_LIMIT,
                open_one(target, source, &args, url.as_ref().as_ref(), Some(&mqtt), n),
            )
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out after {OPEN_LIMIT:?}")));
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
            Ok(Some(Err(e))) => keep_error(&mut errors, e),
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
    let latency = Latency::of(&hist);
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
        client_cpu_s: cpu_since(cpu_start, "self"),
        errors,
        cycles: None,
        cycles_per_s: None,
        cycle_latency_us: None,
        broker_cpu_s: None,
        broker_cpu_us_per_cycle: None,
    })
}

/// CPU seconds process `pid` used since `start` (its reading then).
fn cpu_since(start: Option<f64>, pid: &str) -> Option<f64> {
    match (start, crate::procfs::cpu_seconds(pid)) {
        (Some(a), Some(b)) => Some(((b - a) * 1000.0).round() / 1000.0),
        _ => None,
    }
}

/// What the churn workers share.
struct Churn {
    /// Where to.
    target: SocketAddr,
    /// Source addresses to bind to in turn (1: none, plain connect).
    sources: u8,
    /// The options.
    args: ConnArgs,
    /// For AMQP.
    url: Option<AmqpUrl>,
    /// For MQTT.
    mqtt: MqttOpts,
    /// Workers start no cycle after this.
    deadline: Instant,
    /// Numbers cycles: MQTT client ids, source addresses.
    next: AtomicU32,
    /// Cycles completed.
    cycles: AtomicU64,
    /// Cycles failed.
    failed: AtomicU64,
    /// Whole cycle and connect + handshake latency, µs.
    hists: Mutex<(Histogram<u64>, Histogram<u64>)>,
    /// The first distinct errors.
    errors: Mutex<Vec<String>>,
    /// Counts cycles on the terminal.
    bar: ProgressBar,
}

/// One cycle: connect, handshake, clean close. Returns the connect +
/// handshake time, µs.
async fn cycle(c: &Churn, n: u32) -> anyhow::Result<u64> {
    let t0 = Instant::now();
    let source = (c.sources > 1).then(|| source_ip(n, c.sources));
    let held = open_one(c.target, source, &c.args, c.url.as_ref(), Some(&c.mqtt), n).await?;
    let connect_us = t0.elapsed().as_micros() as u64;
    held.close().await?;
    Ok(connect_us)
}

/// A churn worker: cycles until the deadline.
async fn churn_worker(c: Arc<Churn>) {
    while Instant::now() < c.deadline {
        let n = c.next.fetch_add(1, Ordering::Relaxed);
        let t0 = Instant::now();
        let r = tokio::time::timeout(OPEN_LIMIT, cycle(&c, n))
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("cycle timed out after {OPEN_LIMIT:?}")));
        match r {
            Ok(connect_us) => {
                let us = t0.elapsed().as_micros() as u64;
                let mut h = c.hists.lock().unwrap_or_else(PoisonError::into_inner);
                h.0.saturating_record(us);
                h.1.saturating_record(connect_us);
                drop(h);
                c.cycles.fetch_add(1, Ordering::Relaxed);
                c.bar.inc(1);
            }
            Err(e) => {
                c.failed.fetch_add(1, Ordering::Relaxed);
                note_error(&c.errors, format!("{e:#}"));
                // No hot loop against a broker that is gone.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Runs `liebre bench connections --churn`.
async fn churn(
    args: &ConnArgs,
    target: SocketAddr,
    url: Option<AmqpUrl>,
    mqtt: MqttOpts,
    sources: u8,
) -> anyhow::Result<ConnReport> {
    anyhow::ensure!(args.duration > 0, "--duration must be positive");
    let pid = args.pid.map(|p| p.to_string());
    let rss_before = args.pid.and_then(crate::procfs::vm_rss_bytes);
    let broker_cpu_start = pid.as_deref().and_then(crate::procfs::cpu_seconds);
    let cpu_start = crate::procfs::cpu_seconds("self");
    let show = crate::progress::wanted(args.no_progress, args.json);
    let bar = crate::progress::bar(
        0,
        show,
        "{spinner} [{elapsed_precise}] {pos} cycles ({per_sec})",
    );
    let started = Instant::now();
    let c = Arc::new(Churn {
        target,
        sources,
        args: args.clone(),
        url,
        mqtt,
        deadline: started + Duration::from_nanos(args.duration),
        next: AtomicU32::new(0),
        cycles: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        hists: Mutex::new((new_histogram(), new_histogram())),
        errors: Mutex::new(Vec::new()),
        bar,
    });
    let workers: Vec<_> = (0..args.concurrency)
        .map(|_| tokio::spawn(churn_worker(c.clone())))
        .collect();
    for w in workers {
        if let Err(e) = w.await {
            note_error(&c.errors, format!("worker: {e}"));
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let rss_after = args.pid.and_then(crate::procfs::vm_rss_bytes);
    let broker_cpu = pid.as_deref().and_then(|p| cpu_since(broker_cpu_start, p));
    let client_cpu = cpu_since(cpu_start, "self");
    c.bar.finish_and_clear();

    let cycles = c.cycles.load(Ordering::Relaxed);
    let rate = (cycles as f64 / elapsed.max(1e-6)).round();
    let (cycle_latency, connect_latency) = {
        let h = c.hists.lock().unwrap_or_else(PoisonError::into_inner);
        (Latency::of(&h.0), Latency::of(&h.1))
    };
    let mut errors = std::mem::take(&mut *c.errors.lock().unwrap_or_else(PoisonError::into_inner));
    if let (Some(p), None) = (args.pid, broker_cpu) {
        errors.push(format!(
            "could not read /proc/{p}/stat (is the broker local?)"
        ));
    }
    Ok(ConnReport {
        protocol: format!("{:?}", args.protocol).to_lowercase(),
        target: target.to_string(),
        requested: args.concurrency,
        opened: cycles,
        failed: c.failed.load(Ordering::Relaxed),
        source_ips: sources,
        open_s: (elapsed * 1000.0).round() / 1000.0,
        connect_rate: rate,
        connect_latency_us: connect_latency,
        broker_rss_before: rss_before,
        broker_rss_after: rss_after,
        broker_bytes_per_connection: None,
        client_cpu_s: client_cpu,
        errors,
        cycles: Some(cycles),
        cycles_per_s: Some(rate),
        cycle_latency_us: cycle_latency,
        broker_cpu_us_per_cycle: broker_cpu
            .filter(|_| cycles > 0)
            .map(|s| (s * 1e6 / cycles as f64 * 10.0).round() / 10.0),
        broker_cpu_s: broker_cpu,
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
        assert_eq!(source_ip(0, 3), Ipv4Addr::new(127, 0, 0, 1));
        assert_eq!(source_ip(5, 3), Ipv4Addr::new(127, 0, 0, 3));
    }

    #[test]
    fn running_out_of_ports_comes_with_a_hint() {
        let target: SocketAddr = "127.0.0.1:5672".parse().unwrap();
        let e = connect_error(std::io::ErrorKind::AddrNotAvailable.into(), target);
        assert!(format!("{e:#}").contains("no ephemeral port left"), "{e:#}");
        let e = connect_error(std::io::ErrorKind::ConnectionRefused.into(), target);
        assert!(!format!("{e:#}").contains("ephemeral"), "{e:#}");
    }
}
