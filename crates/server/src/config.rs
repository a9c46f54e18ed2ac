//! Server configuration: defaults < TOML file < `LIEBRE_*` environment <
//! command-line flags.
//!
//! The flags and the environment are read by clap (`ServerArgs`); the file
//! by serde (`FileConfig`, unknown keys refused). [`Config::resolve`] lays
//! them over the defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use serde::Deserialize;

/// `liebre server` flags. Each is also a `LIEBRE_*` environment variable
/// and a key of the TOML file given with `--config`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServerArgs {
    /// TOML configuration file.
    #[arg(long, env = "LIEBRE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where durable data lives [default: ./liebre-data].
    #[arg(long, env = "LIEBRE_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// AMQP 0-9-1 listener; repeat for several [default: [::]:5672, all interfaces, IPv4 and IPv6].
    #[arg(
        long,
        env = "LIEBRE_AMQP",
        value_name = "ADDR:PORT",
        value_delimiter = ','
    )]
    pub amqp: Vec<SocketAddr>,
    /// MQTT listener; repeat for several [default: [::]:1883, all interfaces, IPv4 and IPv6].
    #[arg(
        long,
        env = "LIEBRE_MQTT",
        value_name = "ADDR:PORT",
        value_delimiter = ','
    )]
    pub mqtt: Vec<SocketAddr>,
    /// MQTT over WebSocket listener, paths /mqtt and /ws [default: 0.0.0.0:9001].
    #[arg(
        long = "mqtt-ws",
        env = "LIEBRE_MQTT_WS",
        value_name = "ADDR:PORT",
        value_delimiter = ','
    )]
    pub mqtt_ws: Vec<SocketAddr>,
    /// Management HTTP listener [default: [::]:15672] (reserved).
    #[arg(
        long,
        env = "LIEBRE_HTTP",
        value_name = "ADDR:PORT",
        value_delimiter = ','
    )]
    pub http: Vec<SocketAddr>,
    /// Heartbeat interval proposed to AMQP clients, in seconds (0 disables) [default: 60].
    #[arg(long, env = "LIEBRE_HEARTBEAT", value_name = "SECONDS")]
    pub heartbeat: Option<u16>,
    /// Largest AMQP frame, in bytes [default: 131072].
    #[arg(long, env = "LIEBRE_FRAME_MAX", value_name = "BYTES")]
    pub frame_max: Option<u32>,
    /// Highest AMQP channel number [default: 2047].
    #[arg(long, env = "LIEBRE_CHANNEL_MAX", value_name = "N")]
    pub channel_max: Option<u16>,
    /// Longest MQTT keepalive accepted, seconds; longer ones are cut (MQTT 5: Server Keep Alive) [default: 65535].
    #[arg(long, env = "LIEBRE_MQTT_MAX_KEEPALIVE", value_name = "SECONDS")]
    pub mqtt_max_keepalive: Option<u16>,
    /// How often `$SYS/broker/...` topics are published, seconds (0: never) [default: 10].
    #[arg(long, env = "LIEBRE_SYS_INTERVAL", value_name = "SECONDS")]
    pub sys_interval: Option<u64>,
    /// Refuse MQTT clients that send no username (otherwise they are `guest`, loopback only) [default: false].
    #[arg(long, env = "LIEBRE_MQTT_NO_ANONYMOUS")]
    pub mqtt_no_anonymous: bool,
    /// When the message store fsyncs: `always` (every group commit, before any confirm or PUBACK) or `never` (UNSAFE: a machine crash loses confirmed messages; for benchmarks) [default: always].
    #[arg(long, env = "LIEBRE_FSYNC", value_name = "POLICY")]
    pub fsync: Option<String>,
    /// Memory use above which publishers are blocked (the memory alarm): a fraction of RAM or of the cgroup limit (0.4), or an amount (2GiB) [default: 0.6].
    #[arg(
        long = "memory-high-watermark",
        alias = "vm-memory-high-watermark",
        env = "LIEBRE_MEMORY_HIGH_WATERMARK",
        value_name = "FRACTION|BYTES"
    )]
    pub memory_high_watermark: Option<String>,
    /// Free disk space of the data directory below which publishers are blocked (the disk alarm): bytes, or 50MB, 1GB, 2GiB... [default: 50MB].
    #[arg(long, env = "LIEBRE_DISK_FREE_LIMIT", value_name = "BYTES")]
    pub disk_free_limit: Option<String>,
    /// Ready messages a queue keeps in memory; persistent messages of durable queues beyond them wait on disk and are read back near the head [default: 2048].
    #[arg(long, env = "LIEBRE_QUEUE_MESSAGES_IN_MEMORY", value_name = "N")]
    pub queue_messages_in_memory: Option<usize>,
    /// Messages held for one MQTT session while its client is offline or slow; beyond them the overflow policy drops [default: 100000].
    #[arg(long, env = "LIEBRE_MQTT_MAX_QUEUED_MESSAGES", value_name = "N")]
    pub mqtt_max_queued_messages: Option<u32>,
    /// What a full MQTT session queue drops: `drop-new` (as Mosquitto) or `drop-oldest` [default: drop-new].
    #[arg(long, env = "LIEBRE_MQTT_QUEUE_OVERFLOW", value_name = "POLICY")]
    pub mqtt_queue_overflow: Option<String>,
    /// How long a subscriber that falls behind may hold back the publishers feeding it, seconds; after that it is slow: they go on and its messages beyond the queue limit are dropped [default: 5].
    #[arg(
        long,
        env = "LIEBRE_MQTT_SLOW_SUBSCRIBER_AFTER",
        value_name = "SECONDS"
    )]
    pub mqtt_slow_subscriber_after: Option<f64>,
    /// Hold QoS 0 publishers for subscribers that fall behind too (`false`: their QoS 0 messages are dropped once the subscriber's queue is full) [default: true].
    #[arg(long, env = "LIEBRE_MQTT_QOS0_FLOW_CONTROL", value_name = "BOOL")]
    pub mqtt_qos0_flow_control: Option<bool>,
}

/// The TOML file's shape; every key optional, unknown keys are an error.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// See `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// See `--amqp`.
    pub amqp: Option<Vec<SocketAddr>>,
    /// See `--mqtt`.
    pub mqtt: Option<Vec<SocketAddr>>,
    /// See `--mqtt-ws`.
    pub mqtt_ws: Option<Vec<SocketAddr>>,
    /// See `--http`.
    pub http: Option<Vec<SocketAddr>>,
    /// See `--heartbeat`.
    pub heartbeat: Option<u16>,
    /// See `--frame-max`.
    pub frame_max: Option<u32>,
    /// See `--channel-max`.
    pub channel_max: Option<u16>,
    /// Users that may only log in from loopback (default `["guest"]`).
    pub loopback_users: Option<Vec<String>>,
    /// See `--mqtt-max-keepalive`.
    pub mqtt_max_keepalive: Option<u16>,
    /// See `--sys-interval`.
    pub sys_interval: Option<u64>,
    /// `false` is `--mqtt-no-anonymous`.
    pub mqtt_allow_anonymous: Option<bool>,
    /// See `--mqtt-max-queued-messages`.
    pub mqtt_max_queued_messages: Option<u32>,
    /// See `--mqtt-queue-overflow`.
    pub mqtt_queue_overflow: Option<String>,
    /// See `--mqtt-slow-subscriber-after`.
    pub mqtt_slow_subscriber_after: Option<f64>,
    /// See `--mqtt-qos0-flow-control`.
    pub mqtt_qos0_flow_control: Option<bool>,
    /// Receive Maximum advertised to MQTT 5 clients.
    pub mqtt_receive_maximum: Option<u16>,
    /// Queue messages of QoS 0 subscriptions for offline persistent sessions.
    pub mqtt_queue_qos0_messages: Option<bool>,
    /// See `--fsync`.
    pub fsync: Option<String>,
    /// See `--memory-high-watermark`: a fraction (0.6) or an amount ("2GiB").
    #[serde(alias = "memory_high_watermark")]
    pub vm_memory_high_watermark: Option<NumberOrText>,
    /// See `--disk-free-limit`: bytes, or an amount ("50MB").
    pub disk_free_limit: Option<NumberOrText>,
    /// See `--queue-messages-in-memory`.
    pub queue_messages_in_memory: Option<usize>,
}

/// A TOML value that may be written as a number or as a string
/// (`0.6`, `50000000`, `"50MB"`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum NumberOrText {
    /// An integer.
    Int(u64),
    /// A float.
    Float(f64),
    /// A string, such as "50MB".
    Text(String),
}

impl NumberOrText {
    fn text(&self) -> String {
        match self {
            Self::Int(n) => n.to_string(),
            Self::Float(f) => f.to_string(),
            Self::Text(s) => s.clone(),
        }
    }
}

/// The documented example configuration, embedded so a test can check
/// that it parses.
pub const EXAMPLE_CONFIG: &str = include_str!("../liebre.example.toml");

/// Where a listener binds; `Default` means "all interfaces, IPv6 and IPv4
/// if the host has IPv6, else IPv4 only".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// All interfaces on this port.
    Default(u16),
    /// Exactly these addresses.
    Addrs(Vec<SocketAddr>),
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Data directory.
    pub data_dir: PathBuf,
    /// AMQP listeners.
    pub amqp: Listen,
    /// MQTT listeners.
    pub mqtt: Listen,
    /// MQTT over WebSocket listeners.
    pub mqtt_ws: Listen,
    /// HTTP listeners (reserved).
    pub http: Listen,
    /// AMQP limits.
    pub amqp_limits: liebre_amqp::AmqpConfig,
    /// MQTT limits and policies.
    pub mqtt_limits: liebre_mqtt::MqttConfig,
    /// Loopback-only users.
    pub loopback_users: Vec<String>,
    /// `$SYS` publication interval (zero: off).
    pub sys_interval: Duration,
    /// How long shutdown waits for clients to close.
    pub shutdown_grace: Duration,
    /// When the message store fsyncs.
    pub fsync: liebre_store::FsyncPolicy,
    /// Memory and disk alarms.
    pub alarms: crate::alarms::AlarmsConfig,
    /// Ready messages a queue keeps in memory before paging out.
    pub queue_messages_in_memory: usize,
    /// The file system the message log goes through: the real one unless
    /// set (tests put one here that fails an fsync on demand). Not a flag
    /// or a file setting.
    pub log_backend: Option<std::sync::Arc<dyn liebre_store::Backend>>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("liebre-data"),
            amqp: Listen::Default(5672),
            mqtt: Listen::Default(1883),
            mqtt_ws: Listen::Addrs(vec![([0, 0, 0, 0], 9001).into()]),
            http: Listen::Default(15672),
            amqp_limits: liebre_amqp::AmqpConfig::default(),
            mqtt_limits: liebre_mqtt::MqttConfig::default(),
            loopback_users: vec!["guest".into()],
            sys_interval: liebre_mqtt::sys::DEFAULT_INTERVAL,
            shutdown_grace: Duration::from_secs(5),
            fsync: liebre_store::FsyncPolicy::Always,
            alarms: crate::alarms::AlarmsConfig::default(),
            queue_messages_in_memory: liebre_core::persistence::DEFAULT_MAX_LOADED,
            log_backend: None,
        }
    }
}

impl Config {
    /// A configuration for tests: every listener on an ephemeral loopback
    /// port, data in `data_dir`.
    pub fn ephemeral(data_dir: impl AsRef<Path>) -> Self {
        let lo: SocketAddr = ([127, 0, 0, 1], 0).into();
        Self {
            data_dir: data_dir.as_ref().to_owned(),
            amqp: Listen::Addrs(vec![lo]),
            mqtt: Listen::Addrs(vec![lo]),
            mqtt_ws: Listen::Addrs(vec![lo]),
            http: Listen::Addrs(vec![lo]),
            ..Self::default()
        }
    }

    /// Lay the file (if any) and then the flags/environment over the defaults.
    pub fn resolve(args: &ServerArgs) -> anyhow::Result<Self> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading configuration file {}", path.display()))?;
                parse_file(&text)
                    .with_context(|| format!("in configuration file {}", path.display()))?
            }
            None => FileConfig::default(),
        };
        let mut c = Self::default();
        // Listeners: the highest layer that names any listener names them
        // all. With `--amqp 127.0.0.1:5673` alone the broker opens that
        // port and no other; with no listener named anywhere, the defaults.
        let flags = [&args.amqp, &args.mqtt, &args.mqtt_ws, &args.http];
        let files = [&file.amqp, &file.mqtt, &file.mqtt_ws, &file.http];
        if flags.iter().any(|f| !f.is_empty()) {
            let [amqp, mqtt, mqtt_ws, http] = flags.map(|f| Listen::Addrs(f.clone()));
            (c.amqp, c.mqtt, c.mqtt_ws, c.http) = (amqp, mqtt, mqtt_ws, http);
        } else if files.iter().any(|f| f.is_some()) {
            let [amqp, mqtt, mqtt_ws, http] =
                files.map(|f| Listen::Addrs(f.clone().unwrap_or_default()));
            (c.amqp, c.mqtt, c.mqtt_ws, c.http) = (amqp, mqtt, mqtt_ws, http);
        }
        if let Some(d) = args.data_dir.clone().or(file.data_dir) {
            c.data_dir = d;
        }
        if let Some(h) = args.heartbeat.or(file.heartbeat) {
            c.amqp_limits.heartbeat = h;
        }
        if let Some(f) = args.frame_max.or(file.frame_max) {
            anyhow::ensure!(f >= 4096, "frame_max must be at least 4096 bytes, got {f}");
            c.amqp_limits.frame_max = f;
        }
        if let Some(n) = args.channel_max.or(file.channel_max) {
            c.amqp_limits.channel_max = n;
        }
        if let Some(u) = file.loopback_users {
            c.loopback_users = u;
        }
        if let Some(secs) = args.sys_interval.or(file.sys_interval) {
            c.sys_interval = Duration::from_secs(secs);
        }
        if let Some(k) = args.mqtt_max_keepalive.or(file.mqtt_max_keepalive) {
            c.mqtt_limits.max_keepalive = k;
        }
        if args.mqtt_no_anonymous || file.mqtt_allow_anonymous == Some(false) {
            c.mqtt_limits.allow_anonymous = false;
        }
        if let Some(n) = args
            .mqtt_max_queued_messages
            .or(file.mqtt_max_queued_messages)
        {
            anyhow::ensure!(n > 0, "mqtt_max_queued_messages must be at least 1");
            c.mqtt_limits.max_queued_messages = n;
        }
        if let Some(p) = args
            .mqtt_queue_overflow
            .clone()
            .or(file.mqtt_queue_overflow)
        {
            c.mqtt_limits.queue_overflow = p
                .parse()
                .map_err(|e| anyhow::anyhow!("mqtt_queue_overflow: {e}"))?;
        }
        if let Some(secs) = args
            .mqtt_slow_subscriber_after
            .or(file.mqtt_slow_subscriber_after)
        {
            anyhow::ensure!(
                secs.is_finite() && secs > 0.0,
                "mqtt_slow_subscriber_after must be a positive number of seconds, got {secs}"
            );
            c.mqtt_limits.slow_subscriber_after = Duration::from_secs_f64(secs);
        }
        if let Some(b) = args.mqtt_qos0_flow_control.or(file.mqtt_qos0_flow_control) {
            c.mqtt_limits.qos0_flow_control = b;
        }
        if let Some(q) = file.mqtt_queue_qos0_messages {
            c.mqtt_limits.queue_qos0_offline = q;
        }
        if let Some(n) = args
            .queue_messages_in_memory
            .or(file.queue_messages_in_memory)
        {
            anyhow::ensure!(n > 0, "queue_messages_in_memory must be at least 1");
            c.queue_messages_in_memory = n;
        }
        if let Some(p) = args.fsync.clone().or(file.fsync) {
            c.fsync = match p.as_str() {
                "always" => liebre_store::FsyncPolicy::Always,
                "never" => liebre_store::FsyncPolicy::Never,
                other => anyhow::bail!("fsync must be 'always' or 'never', got '{other}'"),
            };
        }
        let watermark = args.memory_high_watermark.clone().or(file
            .vm_memory_high_watermark
            .as_ref()
            .map(NumberOrText::text));
        if let Some(w) = watermark {
            c.alarms.memory_high_watermark = crate::alarms::parse_watermark(&w)?;
        }
        let disk = args
            .disk_free_limit
            .clone()
            .or(file.disk_free_limit.as_ref().map(NumberOrText::text));
        if let Some(d) = disk {
            c.alarms.disk_free_limit = crate::alarms::parse_bytes(&d)
                .map_err(|e| anyhow::anyhow!("disk_free_limit: {e}"))?;
        }
        if let Some(n) = file.mqtt_receive_maximum {
            anyhow::ensure!(n > 0, "mqtt_receive_maximum must be at least 1");
            c.mqtt_limits.receive_maximum = n;
        }
        Ok(c)
    }
}

/// Parse a TOML configuration.
pub fn parse_file(text: &str) -> anyhow::Result<FileConfig> {
    Ok(toml::from_str(text)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses() {
        let f = parse_file(EXAMPLE_CONFIG).unwrap();
        assert!(f.amqp.is_some());
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = parse_file("amqp = [\"127.0.0.1:5672\"]\nbogus = 1\n").unwrap_err();
        assert!(format!("{err:#}").contains("bogus"), "{err:#}");
    }

    #[test]
    fn flags_beat_file_beat_defaults() {
        let dir = std::env::temp_dir().join(format!("liebre-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("liebre.toml");
        std::fs::write(
            &path,
            "amqp = [\"127.0.0.1:6000\"]\nheartbeat = 10\ndata_dir = \"from-file\"\n",
        )
        .unwrap();
        let args = ServerArgs {
            config: Some(path),
            heartbeat: Some(5),
            ..Default::default()
        };
        let c = Config::resolve(&args).unwrap();
        assert_eq!(
            c.amqp,
            Listen::Addrs(vec!["127.0.0.1:6000".parse().unwrap()])
        );
        assert_eq!(c.amqp_limits.heartbeat, 5);
        assert_eq!(c.data_dir, PathBuf::from("from-file"));
        // The file names a listener: it names them all.
        assert_eq!(c.mqtt, Listen::Addrs(vec![]));
        assert_eq!(c.mqtt_ws, Listen::Addrs(vec![]));
        assert!(c.mqtt_limits.allow_anonymous);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn any_listener_flag_names_every_listener() {
        let d = Config::resolve(&ServerArgs::default()).unwrap();
        assert_eq!(d.amqp, Listen::Default(5672));
        assert_eq!(d.mqtt, Listen::Default(1883));
        assert_eq!(
            d.mqtt_ws,
            Listen::Addrs(vec!["0.0.0.0:9001".parse().unwrap()])
        );
        let args = ServerArgs {
            amqp: vec!["127.0.0.1:5673".parse().unwrap()],
            ..Default::default()
        };
        let c = Config::resolve(&args).unwrap();
        assert_eq!(
            c.amqp,
            Listen::Addrs(vec!["127.0.0.1:5673".parse().unwrap()])
        );
        for other in [&c.mqtt, &c.mqtt_ws, &c.http] {
            assert_eq!(other, &Listen::Addrs(vec![]));
        }
    }

    #[test]
    fn mqtt_flow_settings() {
        let d = Config::resolve(&ServerArgs::default()).unwrap();
        assert_eq!(d.mqtt_limits.max_queued_messages, 100_000);
        assert_eq!(d.mqtt_limits.slow_subscriber_after, Duration::from_secs(5));
        assert!(d.mqtt_limits.qos0_flow_control);
        let args = ServerArgs {
            mqtt_queue_overflow: Some("drop-oldest".into()),
            mqtt_slow_subscriber_after: Some(0.5),
            mqtt_qos0_flow_control: Some(false),
            mqtt_max_queued_messages: Some(10),
            ..Default::default()
        };
        let c = Config::resolve(&args).unwrap();
        assert_eq!(
            c.mqtt_limits.queue_overflow,
            liebre_core::flow::Overflow::DropOldest
        );
        assert_eq!(
            c.mqtt_limits.slow_subscriber_after,
            Duration::from_millis(500)
        );
        assert!(!c.mqtt_limits.qos0_flow_control);
        assert_eq!(c.mqtt_limits.max_queued_messages, 10);
        let bad = ServerArgs {
            mqtt_queue_overflow: Some("drop-all".into()),
            ..Default::default()
        };
        let e = Config::resolve(&bad).unwrap_err();
        assert!(
            format!("{e:#}").contains("drop-new or drop-oldest"),
            "{e:#}"
        );
        let f = parse_file(EXAMPLE_CONFIG).unwrap();
        assert_eq!(f.mqtt_queue_overflow.as_deref(), Some("drop-new"));
    }

    #[test]
    fn alarm_limits_from_file_and_flags() {
        use crate::alarms::Watermark;
        let f = parse_file("vm_memory_high_watermark = 0.4\ndisk_free_limit = \"1GB\"\n").unwrap();
        assert_eq!(f.vm_memory_high_watermark, Some(NumberOrText::Float(0.4)));
        let f =
            parse_file("vm_memory_high_watermark = \"2GiB\"\ndisk_free_limit = 1000\n").unwrap();
        assert_eq!(f.disk_free_limit, Some(NumberOrText::Int(1000)));
        let d = Config::resolve(&ServerArgs::default()).unwrap();
        assert_eq!(d.alarms.memory_high_watermark, Watermark::Relative(0.6));
        assert_eq!(d.alarms.disk_free_limit, 50_000_000);
        let args = ServerArgs {
            memory_high_watermark: Some("2GiB".into()),
            disk_free_limit: Some("50MB".into()),
            ..Default::default()
        };
        let c = Config::resolve(&args).unwrap();
        assert_eq!(c.alarms.memory_high_watermark, Watermark::Absolute(2 << 30));
        assert_eq!(c.alarms.disk_free_limit, 50_000_000);
        let bad = ServerArgs {
            memory_high_watermark: Some("1.5".into()),
            ..Default::default()
        };
        assert!(Config::resolve(&bad).is_err());
        let example = parse_file(EXAMPLE_CONFIG).unwrap();
        assert_eq!(
            example.vm_memory_high_watermark,
            Some(NumberOrText::Float(0.6))
        );
    }
}
