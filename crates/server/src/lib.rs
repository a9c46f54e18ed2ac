//! Liebre's server: listeners, per-connection tasks, periodic work and
//! shutdown. Protocol logic lives in the sans-IO crates; each task here
//! only moves bytes between a socket and a state machine.
//!
//! # Layout
//! - [`alarms`]: the memory and disk monitor that blocks publishers.
//! - [`config`]: flags, environment and TOML file.
//! - [`definitions`]: durable exchanges, queues and bindings in the store.
//! - [`messages`]: persistent messages in the store's log, recovery.
//! - `driver`: the one loop that runs a connection over TCP or WebSocket.
//! - [`amqp`]: the AMQP listener.
//! - [`mqtt`]: the MQTT listeners (TCP and WebSocket).
//! - [`Server`]: starts everything, and stops it on request: listeners
//!   close, every client is told (AMQP `connection.close` 320), tasks are
//!   given a grace period.

pub mod alarms;
pub mod amqp;
pub mod config;
pub mod definitions;
mod driver;
pub mod messages;
pub mod mqtt;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use liebre_auth::AuthStore;
use liebre_core::Broker;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

pub use config::{Config, Listen, ServerArgs};

/// A running broker.
#[derive(Debug)]
pub struct Server {
    broker: Arc<Broker>,
    auth: Arc<AuthStore>,
    amqp_addrs: Vec<SocketAddr>,
    mqtt_addrs: Vec<SocketAddr>,
    mqtt_ws_addrs: Vec<SocketAddr>,
    mqtt: Arc<liebre_mqtt::MqttContext>,
    definitions: Arc<definitions::StoredDefinitions>,
    messages: Arc<messages::StoredMessages>,
    token: CancellationToken,
    tracker: TaskTracker,
    grace: Duration,
}

impl Server {
    /// Bind every listener and start serving. Fails if a port cannot be bound.
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
        let broker = Arc::new(Broker::default());
        broker.set_queue_max_loaded(config.queue_messages_in_memory);
        let log_config = liebre_store::LogConfig {
            fsync: config.fsync,
            // Bodies past each queue's in-memory budget stay on disk.
            recovered_bodies_per_queue: config.queue_messages_in_memory,
            ..Default::default()
        };
        let data_dir = config.data_dir.clone();
        let backend = config.log_backend.clone();
        let b = broker.clone();
        // Recovery reads every segment: off the runtime's threads.
        let definitions::Attached {
            definitions,
            messages,
        } = tokio::task::spawn_blocking(move || {
            definitions::attach(&b, &data_dir, log_config, backend)
        })
        .await
        .context("restoring durable data")??;
        let auth = Arc::new(AuthStore::default());
        auth.set_loopback_users(config.loopback_users.clone());
        definitions.attach_users(&auth).context("restoring users")?;
        let token = CancellationToken::new();
        let tracker = TaskTracker::new();

        // Every listener is bound before any accepts: one that cannot bind
        // stops the start with nothing served.
        let amqp_listeners = bind_all(&config.amqp)
            .await
            .context("binding the AMQP listener")?;
        let mqtt_listeners = bind_all(&config.mqtt)
            .await
            .context("binding the MQTT listener")?;
        let mqtt_ws_listeners = bind_all(&config.mqtt_ws)
            .await
            .context("binding the MQTT WebSocket listener")?;
        let mqtt = Arc::new(liebre_mqtt::MqttContext {
            broker: broker.clone(),
            auth: auth.clone(),
            sessions: Default::default(),
            config: config.mqtt_limits.clone(),
        });
        definitions
            .load_sessions(&broker, &mqtt)
            .context("restoring MQTT sessions")?;
        let ctx = Arc::new(liebre_amqp::Context {
            broker: broker.clone(),
            auth: auth.clone(),
            config: config.amqp_limits.clone(),
        });
        let mut amqp_addrs = Vec::new();
        for l in amqp_listeners {
            let addr = l.local_addr()?;
            info!(message = "AMQP listener started.", %addr);
            amqp_addrs.push(addr);
            tracker.spawn(amqp::accept_loop(
                l,
                ctx.clone(),
                token.clone(),
                tracker.clone(),
            ));
        }
        let mut mqtt_addrs = Vec::new();
        for l in mqtt_listeners {
            let addr = l.local_addr()?;
            info!(message = "MQTT listener started.", %addr);
            mqtt_addrs.push(addr);
            tracker.spawn(mqtt::accept_loop(
                l,
                mqtt.clone(),
                token.clone(),
                tracker.clone(),
            ));
        }
        let mut mqtt_ws_addrs = Vec::new();
        for l in mqtt_ws_listeners {
            let addr = l.local_addr()?;
            info!(message = "MQTT WebSocket listener started.", %addr, paths = "/mqtt /ws");
            mqtt_ws_addrs.push(addr);
            tracker.spawn(mqtt::accept_ws_loop(
                l,
                mqtt.clone(),
                token.clone(),
                tracker.clone(),
            ));
        }
        tracker.spawn(tick_loop(
            broker.clone(),
            mqtt.clone(),
            definitions.clone(),
            token.clone(),
        ));
        if !config.alarms.check_interval.is_zero() {
            tracker.spawn(alarms::monitor_loop(
                broker.clone(),
                config.alarms.clone(),
                config.data_dir.clone(),
                token.clone(),
            ));
        }
        if !config.sys_interval.is_zero() {
            tracker.spawn(sys_loop(mqtt.clone(), config.sys_interval, token.clone()));
        }
        Ok(Self {
            broker,
            auth,
            amqp_addrs,
            mqtt_addrs,
            mqtt_ws_addrs,
            mqtt,
            definitions,
            messages,
            token,
            tracker,
            grace: config.shutdown_grace,
        })
    }

    /// The routing core.
    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// The user database.
    pub fn auth(&self) -> &Arc<AuthStore> {
        &self.auth
    }

    /// Where AMQP listens (ports resolved).
    pub fn amqp_addrs(&self) -> &[SocketAddr] {
        &self.amqp_addrs
    }

    /// Where MQTT listens.
    pub fn mqtt_addrs(&self) -> &[SocketAddr] {
        &self.mqtt_addrs
    }

    /// Where MQTT over WebSocket listens.
    pub fn mqtt_ws_addrs(&self) -> &[SocketAddr] {
        &self.mqtt_ws_addrs
    }

    /// MQTT sessions and settings.
    pub fn mqtt(&self) -> &Arc<liebre_mqtt::MqttContext> {
        &self.mqtt
    }

    /// Resolves once shutdown has been requested.
    pub fn cancelled(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }

    /// Stop: close listeners, tell clients, wait up to the grace period.
    pub async fn shutdown(self) {
        info!(message = "Shutting down.", connections = self.tracker.len());
        self.token.cancel();
        self.tracker.close();
        if tokio::time::timeout(self.grace, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(message = "Some connections did not close within the grace period.");
        }
        // Every acknowledgement on disk, what was delivered recorded; the
        // last retained changes; then release the metadata database (and
        // its file lock) now, not when the last reference to the broker goes.
        self.messages.close(&self.broker);
        self.definitions.flush_retained(&self.broker);
        self.definitions.close();
        info!(message = "Stopped.");
    }
}

/// Pending connections the kernel may hold per listener (capped by
/// `net.core.somaxconn`): a burst of clients reconnecting after a restart
/// must not wait for SYN retransmits.
const LISTEN_BACKLOG: u32 = 4096;

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

async fn bind_all(listen: &Listen) -> anyhow::Result<Vec<TcpListener>> {
    match listen {
        Listen::Addrs(addrs) => addrs
            .iter()
            .map(|a| bind(*a).with_context(|| format!("binding {a}")))
            .collect(),
        Listen::Default(port) => {
            // `[::]` takes IPv4 too on a dual-stack host; hosts without
            // IPv6 get the IPv4 wildcard.
            let v6: SocketAddr = (std::net::Ipv6Addr::UNSPECIFIED, *port).into();
            match bind(v6) {
                Ok(l) => Ok(vec![l]),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                    Err(e).with_context(|| format!("binding {v6}"))
                }
                Err(_) => {
                    let v4: SocketAddr = (std::net::Ipv4Addr::UNSPECIFIED, *port).into();
                    Ok(vec![bind(v4).with_context(|| format!("binding {v4}"))?])
                }
            }
        }
    }
}

async fn tick_loop(
    broker: Arc<Broker>,
    mqtt: Arc<liebre_mqtt::MqttContext>,
    definitions: Arc<definitions::StoredDefinitions>,
    token: CancellationToken,
) {
    let mut every = tokio::time::interval(Duration::from_millis(250));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = every.tick() => {
                broker.tick();
                mqtt.sessions.tick(broker.clock().now());
                // Retained messages are written behind, a tick's worth at once.
                let (b, d) = (broker.clone(), definitions.clone());
                let _ = tokio::task::spawn_blocking(move || d.flush_retained(&b)).await;
            }
        }
    }
}

async fn sys_loop(mqtt: Arc<liebre_mqtt::MqttContext>, every: Duration, token: CancellationToken) {
    let mut state = liebre_mqtt::sys::SysState::default();
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = interval.tick() => liebre_mqtt::sys::publish(&mqtt, &mut state, mqtt.broker.clock().now()),
        }
    }
}
