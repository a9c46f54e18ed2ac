//! The command line: `liebre bench amqp|mqtt|connections|relay`.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

use crate::pace::{Pattern, NS};

/// `liebre bench`: load generator and measurement for AMQP and MQTT
/// brokers (Liebre, RabbitMQ, Mosquitto...).
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// What to measure.
    #[command(subcommand)]
    pub command: BenchCommand,
}

/// The benchmarks.
#[derive(Debug, Clone, Subcommand)]
pub enum BenchCommand {
    /// AMQP 0-9-1 producers and consumers over one or more queues.
    #[command(
        after_help = "Examples:\n  liebre bench amqp --duration 10\n  liebre bench amqp --producers 2 --consumers 2 --queues 2 --size 1024 --confirm\n  liebre bench amqp --rate 20000 --duration 30 --plot latency.svg\n  liebre bench amqp --burst 100000 --persistent --confirm --json"
    )]
    Amqp(AmqpArgs),
    /// MQTT 3.1.1 or 5.0 publishers and subscribers over one or more topics.
    #[command(
        after_help = "Examples:\n  liebre bench mqtt --qos 1 --duration 10\n  liebre bench mqtt --publishers 4 --subscribers 4 --topics 4 --qos 2 --v5\n  liebre bench mqtt --ramp-to 50000 --duration 20 --plot ramp.svg"
    )]
    Mqtt(MqttArgs),
    /// Open N idle connections; report connect latency and the broker's
    /// memory per connection.
    #[command(
        after_help = "Examples:\n  liebre bench connections --count 10000 --pid $(pgrep -x liebre)\n  liebre bench connections --protocol mqtt --count 60000 --source-ips 3"
    )]
    Connections(ConnArgs),
    /// The floor for the client: the same frames as `amqp`/`mqtt`, through
    /// a raw TCP relay instead of a broker; reports the client's CPU per
    /// million messages.
    #[command(
        after_help = "Examples:\n  liebre bench relay --duration 5s\n  liebre bench relay --protocol mqtt --qos 1 --size 1024 --json"
    )]
    Relay(RelayArgs),
}

/// Options every load run shares: size, pattern, limits, output.
#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// Message size in bytes (at least 16: sequence number and send time).
    #[arg(long, default_value_t = 16)]
    pub size: usize,
    /// Burst pattern: send N messages in total (split over the producers)
    /// as fast as possible.
    #[arg(long, value_name = "N", conflicts_with_all = ["rate", "ramp_to"])]
    pub burst: Option<u64>,
    /// Steady pattern: R msg/s in total for --duration (a fixed rate for
    /// latency runs).
    #[arg(long, value_name = "R", conflicts_with = "ramp_to")]
    pub rate: Option<f64>,
    /// Ramp pattern: from 0 to R msg/s in total over --duration.
    #[arg(long, value_name = "R")]
    pub ramp_to: Option<f64>,
    /// Run time of the timed patterns: seconds, or with a unit (500ms,
    /// 10s, 2m). Without --burst/--rate/--ramp-to: as fast as possible for
    /// this long.
    #[arg(long, value_name = "T", default_value = "10s", value_parser = parse_duration_ns)]
    pub duration: u64,
    /// Most messages sent and not yet consumed (or confirmed), over all
    /// producers, so queues stay short and latency means something.
    #[arg(long, default_value_t = 10_000)]
    pub max_in_flight: u64,
    /// After the producers stop, how long to wait for the last messages
    /// once nothing arrives any more.
    #[arg(long, value_name = "T", default_value = "5s", value_parser = parse_duration_ns)]
    pub drain_timeout: u64,
    /// Client runtime threads (the client shares the machine with the
    /// broker: keep it small).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Write an SVG with p99 latency and delivered msg/s per second.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// No progress bar (it is shown only when stderr is a terminal anyway).
    #[arg(long)]
    pub no_progress: bool,
}

impl LoadArgs {
    /// The load pattern the flags describe.
    pub fn pattern(&self) -> Pattern {
        if let Some(messages) = self.burst {
            Pattern::Burst { messages }
        } else if let Some(rate) = self.rate {
            Pattern::Steady {
                rate,
                duration_ns: self.duration,
            }
        } else if let Some(to) = self.ramp_to {
            Pattern::Ramp {
                to,
                duration_ns: self.duration,
            }
        } else {
            Pattern::Max {
                duration_ns: self.duration,
            }
        }
    }

    /// Checks values clap cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.size >= 16, "--size must be at least 16 (the stamp)");
        anyhow::ensure!(self.max_in_flight > 0, "--max-in-flight must be positive");
        anyhow::ensure!(self.threads > 0, "--threads must be positive");
        for (name, r) in [("--rate", self.rate), ("--ramp-to", self.ramp_to)] {
            if let Some(r) = r {
                anyhow::ensure!(r.is_finite() && r > 0.0, "{name} must be a positive number");
            }
        }
        if self.burst.is_none() {
            anyhow::ensure!(self.duration > 0, "--duration must be positive");
        }
        Ok(())
    }
}

/// `liebre bench amqp`.
#[derive(Debug, Clone, Args)]
pub struct AmqpArgs {
    /// Broker URL: amqp://user:pass@host:port/vhost (vhost percent-encoded,
    /// %2F for "/").
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2F")]
    pub url: String,
    /// Producer connections; 0 drains what an earlier run left (with --keep-queues) until nothing arrives for --drain-timeout.
    #[arg(long, default_value_t = 1)]
    pub producers: u32,
    /// Consumer connections.
    #[arg(long, default_value_t = 1)]
    pub consumers: u32,
    /// Queues; producer i publishes to and consumer j consumes from queue
    /// i % N and j % N.
    #[arg(long, default_value_t = 1)]
    pub queues: u32,
    /// Publish to this direct exchange (declared, queues bound with their
    /// name as routing key) instead of the default exchange.
    #[arg(long, default_value = "")]
    pub exchange: String,
    /// Queue name prefix [default: liebre-bench-<pid>].
    #[arg(long)]
    pub queue_prefix: Option<String>,
    /// Durable queues and persistent messages (delivery mode 2).
    #[arg(long)]
    pub persistent: bool,
    /// Publisher confirms (confirm.select); the in-flight window then also
    /// bounds unconfirmed messages.
    #[arg(long)]
    pub confirm: bool,
    /// Consumer prefetch (basic.qos).
    #[arg(long, default_value_t = 1000)]
    pub prefetch: u16,
    /// Acknowledge every N deliveries with multiple=true; 0 = auto-ack
    /// (no_ack consumers).
    #[arg(long, default_value_t = 100)]
    pub multi_ack: u32,
    /// Leave the queues (and exchange) in place afterwards.
    #[arg(long)]
    pub keep_queues: bool,
    /// Load options.
    #[command(flatten)]
    pub load: LoadArgs,
}

/// `liebre bench mqtt`.
#[derive(Debug, Clone, Args)]
pub struct MqttArgs {
    /// Broker host.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Broker port.
    #[arg(long, default_value_t = 1883)]
    pub port: u16,
    /// Publisher connections.
    #[arg(long, default_value_t = 1)]
    pub publishers: u32,
    /// Subscriber connections.
    #[arg(long, default_value_t = 1)]
    pub subscribers: u32,
    /// QoS of publications and subscriptions: 0, 1 or 2.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,
    /// Topics; publisher i publishes to and subscriber j subscribes to
    /// topic i % N and j % N (every subscriber of a topic gets every
    /// message of it).
    #[arg(long, default_value_t = 1)]
    pub topics: u32,
    /// Topic prefix [default: liebre-bench/<pid>].
    #[arg(long)]
    pub topic_prefix: Option<String>,
    /// Clean sessions (the default).
    #[arg(long, conflicts_with = "persistent")]
    pub clean: bool,
    /// Persistent sessions (clean session 0; in 5.0 a session expiry of
    /// 300 s). They are removed again at the end unless --keep-sessions.
    #[arg(long)]
    pub persistent: bool,
    /// Leave persistent sessions on the broker afterwards.
    #[arg(long)]
    pub keep_sessions: bool,
    /// Speak MQTT 5.0 instead of 3.1.1.
    #[arg(long)]
    pub v5: bool,
    /// Most unacknowledged QoS 1/2 publications per publisher [default:
    /// the broker's Receive Maximum in 5.0; 1024 in 3.1.1, where brokers
    /// have limits they cannot announce].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub inflight: Option<u16>,
    /// Keep alive in seconds sent in CONNECT (0 = off).
    #[arg(long, default_value_t = 0)]
    pub keep_alive: u16,
    /// User name.
    #[arg(long)]
    pub username: Option<String>,
    /// Password.
    #[arg(long)]
    pub password: Option<String>,
    /// Load options.
    #[command(flatten)]
    pub load: LoadArgs,
}

/// Protocol spoken by `liebre bench connections`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ConnProtocol {
    /// AMQP 0-9-1: handshake up to connection.open-ok.
    Amqp,
    /// MQTT 3.1.1: CONNECT / CONNACK.
    Mqtt,
    /// Plain TCP connect, no handshake.
    Tcp,
}

/// `liebre bench connections`.
#[derive(Debug, Clone, Args)]
pub struct ConnArgs {
    /// Protocol to open the connections with.
    #[arg(long, value_enum, default_value_t = ConnProtocol::Amqp)]
    pub protocol: ConnProtocol,
    /// AMQP URL (for --protocol amqp).
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2F")]
    pub url: String,
    /// Host (for mqtt and tcp).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port (for mqtt and tcp) [default: 1883].
    #[arg(long)]
    pub port: Option<u16>,
    /// Connections to open and hold.
    #[arg(long, default_value_t = 1000)]
    pub count: u32,
    /// Source addresses to cycle through: 127.0.0.1 .. 127.0.0.N, each
    /// good for about 28,000 ephemeral ports [default: enough for --count
    /// on a loopback broker, else 1; with --churn: 1, no bind, as binding
    /// cannot reuse ports in TIME_WAIT].
    #[arg(long)]
    pub source_ips: Option<u8>,
    /// Connections opened at the same time (above the broker's listen
    /// backlog, often 128, some connects wait for a SYN retransmit: 1 s).
    /// With --churn: workers, each cycling one connection at a time; 100
    /// keeps the broker busy, so cycle latency includes queueing (use a
    /// few for unloaded latency).
    #[arg(long, default_value_t = 100)]
    pub concurrency: u32,
    /// Churn instead of holding: each worker connects, handshakes, closes
    /// cleanly (AMQP connection.close / close-ok, MQTT DISCONNECT) and
    /// starts over, for --duration. Reports cycles/s, cycle latency and,
    /// with --pid, the broker's CPU per cycle and its memory before and
    /// after, e.g. `--churn --protocol mqtt --pid $(pgrep -x liebre)`.
    #[arg(long, conflicts_with_all = ["count", "hold"])]
    pub churn: bool,
    /// Run time with --churn: seconds, or with a unit (500ms, 10s, 2m).
    #[arg(long, value_name = "T", default_value = "10s", value_parser = parse_duration_ns, requires = "churn")]
    pub duration: u64,
    /// Seconds to hold the connections open once all are up (the memory
    /// reading is taken at the end of it).
    #[arg(long, value_parser = parse_duration_ns, default_value = "2s")]
    pub hold: u64,
    /// The broker's process id: read its VmRSS from /proc before and
    /// after to report memory per connection (with --churn also its CPU
    /// time, per cycle).
    #[arg(long)]
    pub pid: Option<u32>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

/// Protocol whose frames `liebre bench relay` moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RelayProtocol {
    /// AMQP 0-9-1: basic.publish, content header and body frames.
    Amqp,
    /// MQTT 3.1.1: PUBLISH packets.
    Mqtt,
}

/// `liebre bench relay`.
#[derive(Debug, Clone, Args)]
pub struct RelayArgs {
    /// Whose frames to move.
    #[arg(long, value_enum, default_value_t = RelayProtocol::Amqp)]
    pub protocol: RelayProtocol,
    /// Message size in bytes (at least 16: sequence number and send time).
    #[arg(long, default_value_t = 16)]
    pub size: usize,
    /// Run time: seconds, or with a unit (500ms, 10s, 2m).
    #[arg(long, value_name = "T", default_value = "5s", value_parser = parse_duration_ns)]
    pub duration: u64,
    /// MQTT QoS of the PUBLISH packets: 0, or 1 (with a packet identifier;
    /// nothing acknowledges them, as there is no broker).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub qos: u8,
    /// Most messages sent and not yet consumed.
    #[arg(long, default_value_t = 10_000)]
    pub max_in_flight: u64,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

impl RelayArgs {
    /// Checks values clap cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.size >= 16, "--size must be at least 16 (the stamp)");
        anyhow::ensure!(self.duration > 0, "--duration must be positive");
        anyhow::ensure!(self.max_in_flight > 0, "--max-in-flight must be positive");
        anyhow::ensure!(
            self.qos == 0 || self.protocol == RelayProtocol::Mqtt,
            "--qos applies to --protocol mqtt"
        );
        Ok(())
    }
}

/// Parses `10`, `2.5`, `500ms`, `10s`, `2m`, `1h` into nanoseconds.
pub fn parse_duration_ns(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e6)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, NS as f64)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0 * NS as f64)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600.0 * NS as f64)
    } else {
        (s, NS as f64)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("not a duration: {s:?} (try 10, 10s, 500ms, 2m)"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("not a duration: {s:?}"));
    }
    Ok((v * mult).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        bench: BenchCommand,
    }

    fn parse(args: &[&str]) -> Result<BenchCommand, clap::Error> {
        let mut v = vec!["bench"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).map(|c| c.bench)
    }

    #[test]
    fn amqp_defaults() {
        let BenchCommand::Amqp(a) = parse(&["amqp"]).unwrap() else {
            panic!()
        };
        assert_eq!(a.url, "amqp://guest:guest@127.0.0.1:5672/%2F");
        assert_eq!((a.producers, a.consumers, a.queues), (1, 1, 1));
        assert_eq!((a.prefetch, a.multi_ack), (1000, 100));
        assert!(!a.confirm && !a.persistent);
        assert_eq!(a.load.size, 16);
        assert_eq!(a.load.max_in_flight, 10_000);
        assert_eq!(
            a.load.pattern(),
            Pattern::Max {
                duration_ns: 10 * NS
            }
        );
        a.load.validate().unwrap();
    }

    #[test]
    fn amqp_options_and_patterns() {
        let BenchCommand::Amqp(a) = parse(&[
            "amqp",
            "--producers",
            "4",
            "--consumers",
            "2",
            "--queues",
            "2",
            "--size",
            "1024",
            "--persistent",
            "--confirm",
            "--prefetch",
            "50",
            "--multi-ack",
            "0",
            "--rate",
            "5000",
            "--duration",
            "30s",
            "--json",
            "--plot",
            "x.svg",
        ])
        .unwrap() else {
            panic!()
        };
        assert_eq!(
            (a.producers, a.consumers, a.queues, a.load.size),
            (4, 2, 2, 1024)
        );
        assert!(a.persistent && a.confirm && a.load.json);
        assert_eq!((a.prefetch, a.multi_ack), (50, 0));
        assert_eq!(
            a.load.pattern(),
            Pattern::Steady {
                rate: 5000.0,
                duration_ns: 30 * NS
            }
        );
        assert_eq!(a.load.plot.as_deref(), Some(std::path::Path::new("x.svg")));

        let BenchCommand::Amqp(b) = parse(&["amqp", "--burst", "2000"]).unwrap() else {
            panic!()
        };
        assert_eq!(b.load.pattern(), Pattern::Burst { messages: 2000 });
        let BenchCommand::Amqp(r) =
            parse(&["amqp", "--ramp-to", "1e4", "--duration", "500ms"]).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            r.load.pattern(),
            Pattern::Ramp {
                to: 10_000.0,
                duration_ns: NS / 2
            }
        );
    }

    #[test]
    fn conflicting_and_invalid_flags_are_refused() {
        assert!(parse(&["amqp", "--burst", "10", "--rate", "5"]).is_err());
        assert!(parse(&["amqp", "--rate", "10", "--ramp-to", "5"]).is_err());
        assert!(parse(&["amqp", "--duration", "soon"]).is_err());
        assert!(parse(&["mqtt", "--qos", "3"]).is_err());
        assert!(parse(&["mqtt", "--clean", "--persistent"]).is_err());
        assert!(parse(&["nats"]).is_err());
        let BenchCommand::Amqp(a) = parse(&["amqp", "--size", "8"]).unwrap() else {
            panic!()
        };
        assert!(a.load.validate().is_err(), "size below the stamp");
    }

    #[test]
    fn mqtt_options() {
        let BenchCommand::Mqtt(m) = parse(&[
            "mqtt",
            "--port",
            "1884",
            "--publishers",
            "3",
            "--subscribers",
            "2",
            "--qos",
            "2",
            "--topics",
            "3",
            "--persistent",
            "--v5",
        ])
        .unwrap() else {
            panic!()
        };
        assert_eq!((m.host.as_str(), m.port), ("127.0.0.1", 1884));
        assert_eq!((m.publishers, m.subscribers, m.qos, m.topics), (3, 2, 2, 3));
        assert!(m.persistent && m.v5 && !m.clean);
    }

    #[test]
    fn connections_options() {
        let BenchCommand::Connections(c) = parse(&[
            "connections",
            "--count",
            "50000",
            "--pid",
            "42",
            "--protocol",
            "mqtt",
            "--hold",
            "1",
        ])
        .unwrap() else {
            panic!()
        };
        assert_eq!(
            (c.count, c.pid, c.protocol),
            (50_000, Some(42), ConnProtocol::Mqtt)
        );
        assert_eq!(c.hold, NS);
        assert_eq!(c.source_ips, None);
        assert!(!c.churn);
        assert_eq!(c.duration, 10 * NS);
    }

    #[test]
    fn connections_churn_options() {
        let BenchCommand::Connections(c) = parse(&[
            "connections",
            "--churn",
            "--duration",
            "3s",
            "--concurrency",
            "8",
        ])
        .unwrap() else {
            panic!()
        };
        assert!(c.churn);
        assert_eq!((c.duration, c.concurrency), (3 * NS, 8));
        assert_eq!((c.protocol, c.source_ips), (ConnProtocol::Amqp, None));
        // --duration means nothing without --churn; --count and --hold
        // nothing with it.
        assert!(parse(&["connections", "--duration", "3s"]).is_err());
        assert!(parse(&["connections", "--churn", "--count", "5"]).is_err());
        assert!(parse(&["connections", "--churn", "--hold", "1"]).is_err());
    }

    #[test]
    fn relay_options() {
        let BenchCommand::Relay(r) = parse(&["relay"]).unwrap() else {
            panic!()
        };
        assert_eq!((r.protocol, r.size, r.qos), (RelayProtocol::Amqp, 16, 0));
        assert_eq!((r.duration, r.max_in_flight), (5 * NS, 10_000));
        r.validate().unwrap();
        let BenchCommand::Relay(r) = parse(&[
            "relay",
            "--protocol",
            "mqtt",
            "--size",
            "64",
            "--duration",
            "1s",
            "--qos",
            "1",
        ])
        .unwrap() else {
            panic!()
        };
        assert_eq!(
            (r.protocol, r.size, r.duration, r.qos, r.json),
            (RelayProtocol::Mqtt, 64, NS, 1, false)
        );
        r.validate().unwrap();
        assert!(parse(&["relay", "--qos", "2"]).is_err());
        let BenchCommand::Relay(r) = parse(&["relay", "--qos", "1"]).unwrap() else {
            panic!()
        };
        assert!(r.validate().is_err(), "--qos is for mqtt");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ns("10"), Ok(10 * NS));
        assert_eq!(parse_duration_ns("2.5s"), Ok(2_500_000_000));
        assert_eq!(parse_duration_ns("250ms"), Ok(250_000_000));
        assert_eq!(parse_duration_ns("2m"), Ok(120 * NS));
        assert!(parse_duration_ns("-1").is_err());
        assert!(parse_duration_ns("x").is_err());
    }
}
