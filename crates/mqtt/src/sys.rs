//! `$SYS/broker/...` topics as Mosquitto publishes them: retained
//! messages on the default vhost, refreshed every interval.
//!
//! The 1-, 5- and 15-minute loads are exponentially weighted moving
//! averages of per-minute rates, as Mosquitto computes them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use liebre_core::Metrics;
use liebre_mqtt_codec::QoS;

use crate::mapping::{to_message, MQTT_EXCHANGE};
use crate::MqttContext;

/// Rates carried from one publication to the next.
#[derive(Debug, Default)]
pub struct SysState {
    last: Option<(Instant, [u64; 4])>,
    /// Load averages (per minute) of messages received/sent and bytes
    /// received/sent, for 1, 5 and 15 minutes.
    load: [[f64; 3]; 4],
}

const WINDOWS: [(&str, f64); 3] = [("1min", 60.0), ("5min", 300.0), ("15min", 900.0)];
const SERIES: [&str; 4] = [
    "messages/received",
    "messages/sent",
    "bytes/received",
    "bytes/sent",
];

/// Publish every `$SYS` topic now.
pub fn publish(ctx: &MqttContext, state: &mut SysState, now: Instant) {
    let Some(vhost) = ctx.broker.vhost("/") else {
        return;
    };
    let m = ctx.broker.metrics();
    let counters = [
        Metrics::get(&m.messages_received),
        Metrics::get(&m.messages_sent),
        Metrics::get(&m.bytes_received),
        Metrics::get(&m.bytes_sent),
    ];
    if let Some((then, before)) = state.last {
        let dt = now.saturating_duration_since(then).as_secs_f64();
        if dt > 0.0 {
            for (i, (now_v, before_v)) in counters.iter().zip(before).enumerate() {
                let per_minute = (now_v.saturating_sub(before_v)) as f64 * 60.0 / dt;
                for (w, (_, span)) in WINDOWS.iter().enumerate() {
                    let k = (-dt / span).exp();
                    state.load[i][w] = state.load[i][w] * k + per_minute * (1.0 - k);
                }
            }
        }
    }
    state.last = Some((now, counters));
    let connected = Metrics::get(&m.mqtt_connections);
    let sessions = ctx.sessions.len() as u64;
    let mut topics: Vec<(String, String)> = vec![
        (
            "version".into(),
            format!("liebre version {}", env!("CARGO_PKG_VERSION")),
        ),
        (
            "uptime".into(),
            format!("{} seconds", ctx.broker.uptime().as_secs()),
        ),
        ("clients/connected".into(), connected.to_string()),
        ("clients/active".into(), connected.to_string()),
        ("clients/total".into(), sessions.max(connected).to_string()),
        (
            "clients/disconnected".into(),
            sessions.saturating_sub(connected).to_string(),
        ),
        (
            "retained messages/count".into(),
            vhost.retained().len().to_string(),
        ),
        (
            "subscriptions/count".into(),
            ctx.sessions.subscription_count().to_string(),
        ),
        (
            "messages/inflight".into(),
            ctx.sessions.inflight_count().to_string(),
        ),
        (
            "publish/messages/dropped".into(),
            Metrics::get(&m.messages_dropped).to_string(),
        ),
    ];
    for (i, series) in SERIES.iter().enumerate() {
        topics.push(((*series).to_owned(), counters[i].to_string()));
        for (w, (name, _)) in WINDOWS.iter().enumerate() {
            topics.push((
                format!("load/{series}/{name}"),
                format!("{:.2}", state.load[i][w]),
            ));
        }
    }
    for (suffix, value) in topics {
        let topic = format!("$SYS/broker/{suffix}");
        let msg = Arc::new(to_message(
            &topic,
            QoS::AtMostOnce,
            true,
            Bytes::from(value),
            None,
            0,
        ));
        vhost.retained().set(&topic, Some(msg.clone()));
        let _ = vhost.publish(MQTT_EXCHANGE, msg);
    }
}

/// The default interval, as Mosquitto's `sys_interval`.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;
    use liebre_core::{Broker, ManualClock};

    #[test]
    fn sys_topics_are_retained_and_loads_follow_the_rate() {
        let clock = Arc::new(ManualClock::default());
        let t0 = liebre_core::Clock::now(&*clock);
        let ctx = MqttContext {
            broker: Arc::new(Broker::new(clock)),
            auth: Default::default(),
            sessions: Default::default(),
            config: Default::default(),
        };
        let mut st = SysState::default();
        publish(&ctx, &mut st, t0);
        let m = ctx.broker.metrics();
        Metrics::add(&m.messages_received, 600);
        publish(&ctx, &mut st, t0 + Duration::from_secs(60));
        let v = ctx.broker.vhost("/").unwrap();
        let get = |t: &str| {
            let r = v.retained().matching(t);
            String::from_utf8_lossy(&r[0].1.body).into_owned()
        };
        assert!(get("$SYS/broker/version").starts_with("liebre version"));
        // The counter includes the $SYS publishes themselves.
        assert!(get("$SYS/broker/messages/received").parse::<u64>().unwrap() >= 600);
        let load: f64 = get("$SYS/broker/load/messages/received/1min")
            .parse()
            .unwrap();
        assert!(load > 300.0 && load < 700.0, "1-minute load {load}");
        assert!(v.retained().matching("$SYS/#").len() > 20);
        assert!(
            v.retained().matching("#").is_empty(),
            "$SYS must not match #"
        );
    }
}
