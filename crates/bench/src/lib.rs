//! `liebre bench`: the load generator shipped inside Liebre.
//!
//! ```text
//! liebre bench amqp [--producers N --consumers N --queues N --size B
//!                    --persistent --confirm --prefetch N --multi-ack N]
//! liebre bench mqtt [--publishers N --subscribers N --topics N --qos 0|1|2
//!                    --persistent --v5]
//! liebre bench connections --count N [--protocol amqp|mqtt|tcp --pid PID]
//! liebre bench connections --churn --duration T [--concurrency N --pid PID]
//! liebre bench relay [--protocol amqp|mqtt --size B --qos 0|1]
//! ```
//!
//! plus, for `amqp` and `mqtt`, a load pattern (`--burst N`,
//! `--rate R --duration T`, `--ramp-to R --duration T`, or as fast as
//! possible for `--duration`), `--max-in-flight`, `--json` and
//! `--plot FILE.svg`.
//!
//! The clients are hand-written on Liebre's own codecs and kept lean, since
//! they share the machine with the broker: one task per connection,
//! many messages per write, every complete frame of a read handled before
//! the next read, no allocation per message, and by default a single
//! runtime thread. The client's own CPU time is part of the report.
//!
//! Every message starts with a 16-byte stamp (see [`payload`]): producer
//! number and sequence number, and the send time on a clock shared by all
//! tasks. Consumers use it for loss and duplicate accounting ([`stats`])
//! and for end-to-end latency in an HDR histogram.

mod amqp;
mod cli;
mod conns;
mod mqtt;
pub mod pace;
pub mod payload;
mod procfs;
mod progress;
mod relay;
mod report;
mod run;
pub mod stats;
mod svg;

pub use amqp::{run_amqp, AmqpUrl};
pub use cli::{
    parse_duration_ns, AmqpArgs, BenchArgs, BenchCommand, ConnArgs, ConnProtocol, LoadArgs,
    MqttArgs, RelayArgs, RelayProtocol,
};
pub use conns::{run_connections, ConnReport};
pub use mqtt::run_mqtt;
pub use relay::{run_relay, RelayReport};
pub use report::{Latency, Report, TimelinePoint};
pub use svg::render as render_svg;

use anyhow::Context as _;

/// Runs a `liebre bench` subcommand: builds the client runtime, runs,
/// prints the report (table or JSON) and writes the plot. Fails when the
/// run could not start or any connection failed during it.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.command {
        BenchCommand::Relay(r) => {
            let report = run_relay(&r)?;
            if r.json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.to_table());
            }
            anyhow::ensure!(
                report.errors.is_empty(),
                "the run had {} error(s)",
                report.errors.len()
            );
            Ok(())
        }
        BenchCommand::Amqp(a) => {
            let rt = run::runtime(a.load.threads)?;
            let report = rt.block_on(run_amqp(&a))?;
            output(&report, &a.load)
        }
        BenchCommand::Mqtt(m) => {
            let rt = run::runtime(m.load.threads)?;
            let report = rt.block_on(run_mqtt(&m))?;
            output(&report, &m.load)
        }
        BenchCommand::Connections(c) => {
            let rt = run::runtime(1)?;
            let report = rt.block_on(run_connections(&c))?;
            if c.json {
                println!(
                    "{}",
                    serde_json::to_string(&report).context("serializing the report")?
                );
            } else {
                print!("{}", report.to_table());
            }
            if let Some(cycles) = report.cycles {
                anyhow::ensure!(
                    report.failed == 0,
                    "{} of {} connection cycles failed",
                    report.failed,
                    cycles + report.failed
                );
            }
            anyhow::ensure!(
                report.failed == 0,
                "{} of {} connections failed",
                report.failed,
                report.requested
            );
            Ok(())
        }
    }
}

fn output(report: &Report, load: &LoadArgs) -> anyhow::Result<()> {
    if let Some(path) = &load.plot {
        let title = format!(
            "liebre bench {}: {}, {} B, {} producer(s), {} consumer(s)",
            report.benchmark, report.pattern, report.size, report.producers, report.consumers
        );
        // A last second cut short by the end of the run would show as a
        // drop in the rate curve: plot whole seconds only (unless that
        // leaves nothing).
        let whole: Vec<TimelinePoint> = report
            .timeline
            .iter()
            .filter(|p| (p.t + 1) as f64 <= report.elapsed_s)
            .cloned()
            .collect();
        let points = if whole.is_empty() {
            &report.timeline
        } else {
            &whole
        };
        std::fs::write(path, render_svg(&title, points))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if load.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_table());
        if let Some(path) = &load.plot {
            println!("  plot: {}", path.display());
        }
    }
    anyhow::ensure!(
        report.errors.is_empty(),
        "the run had {} error(s)",
        report.errors.len()
    );
    Ok(())
}
