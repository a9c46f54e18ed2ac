//! The report: built from what the tasks recorded, printed as a table or
//! as one JSON object.

use std::fmt::Write as _;

use serde::Serialize;

use crate::cli::LoadArgs;
use crate::pace::NS;
use crate::run::{Outcome, Plan};
use crate::stats::{account, new_histogram, LogHist};

/// Latency percentiles, µs.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Latency {
    /// Messages measured.
    pub count: u64,
    /// Minimum.
    pub min: u64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p99_9: u64,
    /// Maximum.
    pub max: u64,
}

impl Latency {
    /// The percentiles of `hist`; `None` when it is empty.
    pub fn of(hist: &hdrhistogram::Histogram<u64>) -> Option<Self> {
        (!hist.is_empty()).then(|| Self {
            count: hist.len(),
            min: hist.min(),
            mean: (hist.mean() * 10.0).round() / 10.0,
            p50: hist.value_at_quantile(0.5),
            p90: hist.value_at_quantile(0.9),
            p99: hist.value_at_quantile(0.99),
            p99_9: hist.value_at_quantile(0.999),
            max: hist.max(),
        })
    }
}

/// Table lines shared by the load and relay reports: the latency
/// percentiles (or `empty` when nothing was measured).
pub(crate) fn write_latency(s: &mut String, latency: Option<&Latency>, empty: &str) {
    match latency {
        Some(l) => {
            let _ = writeln!(
                s,
                "  latency µs   {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
                "p50", "p90", "p99", "p99.9", "max", "mean"
            );
            let _ = writeln!(
                s,
                "  {:<12} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8.0}",
                "", l.p50, l.p90, l.p99, l.p99_9, l.max, l.mean
            );
        }
        None => {
            let _ = writeln!(s, "  latency      ({empty})");
        }
    }
}

/// The client CPU line shared by the load and relay reports.
pub(crate) fn write_client_cpu(s: &mut String, cpu: f64, elapsed_s: f64, per_million: Option<f64>) {
    let pct = if elapsed_s > 0.0 {
        cpu / elapsed_s * 100.0
    } else {
        0.0
    };
    let per = per_million.map_or(String::new(), |p| {
        format!(", {p:.3} s per million messages")
    });
    let _ = writeln!(
        s,
        "  client CPU   {cpu:.2} s over {elapsed_s:.2} s ({pct:.0}% of one core){per}"
    );
}

/// One second of the run.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TimelinePoint {
    /// Seconds since the start (the second `[t, t+1)`).
    pub t: u64,
    /// Messages published in this second.
    pub published: u64,
    /// Messages delivered to consumers in this second.
    pub delivered: u64,
    /// Median latency of those deliveries, µs (about 6 % resolution).
    pub p50_us: u64,
    /// 99th percentile latency, µs (about 6 % resolution).
    pub p99_us: u64,
}

/// The result of a load run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `amqp` or `mqtt`.
    pub benchmark: String,
    /// The load pattern.
    pub pattern: String,
    /// Producer (publisher) connections.
    pub producers: u32,
    /// Consumer (subscriber) connections.
    pub consumers: u32,
    /// Message size, bytes.
    pub size: usize,
    /// Protocol settings (URL, queues, QoS...).
    pub settings: serde_json::Value,
    /// Wall time from the first publish to the end of draining, s.
    pub elapsed_s: f64,
    /// Messages published.
    pub published: u64,
    /// Publish rate over the publishing time, msg/s.
    pub publish_rate: f64,
    /// Messages confirmed (AMQP basic.ack, MQTT PUBACK/PUBCOMP); absent
    /// without confirms / at QoS 0.
    pub confirmed: Option<u64>,
    /// Confirm rate, msg/s.
    pub confirm_rate: Option<f64>,
    /// Messages refused (basic.nack, reason code >= 0x80).
    pub nacked: u64,
    /// Deliveries received, duplicates included.
    pub consumed: u64,
    /// Consume rate over the consuming time, msg/s.
    pub consume_rate: f64,
    /// Deliveries expected from what was published.
    pub expected: u64,
    /// Expected deliveries never received.
    pub lost: u64,
    /// Deliveries received more than once.
    pub duplicated: u64,
    /// Deliveries without this run's stamp.
    pub foreign: u64,
    /// End-to-end latency (send to receive), µs.
    pub latency_us: Option<Latency>,
    /// CPU seconds this client used (user + system, /proc/self/stat).
    pub client_cpu_s: Option<f64>,
    /// Client CPU seconds per million messages (the larger of published
    /// and consumed).
    pub client_cpu_s_per_million: Option<f64>,
    /// The broker blocked publishers (connection.blocked) at some point.
    pub broker_blocked: bool,
    /// Per-second rates and latency.
    pub timeline: Vec<TimelinePoint>,
    /// What went wrong, if anything.
    pub errors: Vec<String>,
}

fn rate(n: u64, from_ns: Option<u64>, to_ns: u64) -> f64 {
    match from_ns {
        Some(from) if n > 0 => {
            // At least 1 ms, so a burst of a few messages is not infinite.
            let span = to_ns.saturating_sub(from).max(1_000_000);
            n as f64 * NS as f64 / span as f64
        }
        _ => 0.0,
    }
}

/// Builds the report of a run.
#[allow(clippy::too_many_arguments)]
pub(crate) fn build(
    benchmark: &str,
    load: &LoadArgs,
    producers: u32,
    consumers: u32,
    settings: serde_json::Value,
    plan: &Plan,
    outcome: Outcome,
    confirms: bool,
) -> Report {
    let sent: Vec<u64> = outcome.producers.iter().map(|p| p.sent).collect();
    let published: u64 = sent.iter().sum();
    let pub_first = outcome.producers.iter().filter_map(|p| p.first_ns).min();
    let pub_last = outcome
        .producers
        .iter()
        .map(|p| p.last_ns.max(p.flushed_ns))
        .max()
        .unwrap_or(0);
    let confirmed: u64 = outcome.producers.iter().map(|p| p.confirmed).sum();
    let nacked: u64 = outcome.producers.iter().map(|p| p.nacked).sum();
    let confirm_last = outcome
        .producers
        .iter()
        .map(|p| p.last_confirm_ns)
        .max()
        .unwrap_or(0);

    let acc = account(&outcome.recorders, &sent, &plan.feeds);
    let con_first = outcome.recorders.iter().filter_map(|r| r.first_ns).min();
    let con_last = outcome
        .recorders
        .iter()
        .map(|r| r.last_ns)
        .max()
        .unwrap_or(0);

    let mut hist = new_histogram();
    for r in &outcome.recorders {
        let _ = hist.add(&r.latency);
    }
    let latency_us = Latency::of(&hist);

    let secs = outcome
        .producers
        .iter()
        .map(|p| p.timeline.len())
        .chain(outcome.recorders.iter().map(|r| r.timeline.len()))
        .max()
        .unwrap_or(0);
    let mut timeline = Vec::with_capacity(secs);
    for t in 0..secs {
        let published = outcome
            .producers
            .iter()
            .filter_map(|p| p.timeline.get(t))
            .sum();
        let mut lat = LogHist::default();
        let mut delivered = 0;
        for r in &outcome.recorders {
            if let Some(s) = r.timeline.get(t) {
                delivered += s.delivered;
                lat.merge(&s.latency);
            }
        }
        timeline.push(TimelinePoint {
            t: t as u64,
            published,
            delivered,
            p50_us: lat.quantile(0.5),
            p99_us: lat.quantile(0.99),
        });
    }

    let moved = published.max(acc.received);
    let per_million = outcome
        .cpu_seconds
        .filter(|_| moved > 0)
        .map(|c| round3(c / (moved as f64 / 1e6)));
    Report {
        benchmark: benchmark.into(),
        pattern: load.pattern().describe(),
        producers,
        consumers,
        size: load.size,
        settings,
        elapsed_s: round3(outcome.elapsed_ns as f64 / NS as f64),
        published,
        publish_rate: round1(rate(published, pub_first, pub_last)),
        confirmed: confirms.then_some(confirmed),
        confirm_rate: confirms.then(|| round1(rate(confirmed, pub_first, confirm_last))),
        nacked,
        consumed: acc.received,
        consume_rate: round1(rate(acc.received, con_first, con_last)),
        expected: acc.expected,
        lost: acc.lost,
        duplicated: acc.duplicates,
        foreign: acc.foreign,
        latency_us,
        client_cpu_s: outcome.cpu_seconds.map(round3),
        client_cpu_s_per_million: per_million,
        broker_blocked: outcome.blocked,
        timeline,
        errors: outcome.errors,
    }
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// 1234567 -> "1,234,567".
pub(crate) fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn settings_line(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Object(m) => m
            .iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => format!("{k}={s}"),
                other => format!("{k}={other}"),
            })
            .collect::<Vec<_>>()
            .join("  "),
        other => other.to_string(),
    }
}

impl Report {
    /// The human-readable table.
    pub fn to_table(&self) -> String {
        let mut s = String::new();
        let (p, c) = if self.benchmark == "mqtt" {
            ("publishers", "subscribers")
        } else {
            ("producers", "consumers")
        };
        let _ = writeln!(
            s,
            "liebre bench {}: {}, {} {p}, {} {c}, {} B messages",
            self.benchmark, self.pattern, self.producers, self.consumers, self.size
        );
        let _ = writeln!(s, "  {}", settings_line(&self.settings));
        let _ = writeln!(s);
        let _ = writeln!(s, "  {:<12} {:>14} {:>14}", "", "messages", "msg/s");
        let row = |s: &mut String, name: &str, n: u64, r: Option<f64>| {
            let r = r.map_or(String::new(), |r| thousands(r.round() as u64));
            let _ = writeln!(s, "  {name:<12} {:>14} {r:>14}", thousands(n));
        };
        row(&mut s, "published", self.published, Some(self.publish_rate));
        if let Some(confirmed) = self.confirmed {
            row(&mut s, "confirmed", confirmed, self.confirm_rate);
        }
        if self.nacked > 0 {
            row(&mut s, "nacked", self.nacked, None);
        }
        row(&mut s, "consumed", self.consumed, Some(self.consume_rate));
        row(&mut s, "lost", self.lost, None);
        row(&mut s, "duplicated", self.duplicated, None);
        if self.foreign > 0 {
            row(&mut s, "foreign", self.foreign, None);
        }
        let _ = writeln!(s);
        write_latency(&mut s, self.latency_us.as_ref(), "no deliveries");
        if let Some(cpu) = self.client_cpu_s {
            write_client_cpu(&mut s, cpu, self.elapsed_s, self.client_cpu_s_per_million);
        }
        if self.broker_blocked {
            let _ = writeln!(s, "  the broker blocked publishers (connection.blocked)");
        }
        for e in &self.errors {
            let _ = writeln!(s, "  error: {e}");
        }
        s
    }

    /// One JSON object.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn rates_never_divide_by_zero() {
        assert_eq!(rate(0, None, 0), 0.0);
        assert_eq!(rate(10, Some(5), 5), 10_000.0);
        assert_eq!(rate(100, Some(0), NS), 100.0);
    }
}
