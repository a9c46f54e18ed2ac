//! End to end: the real broker started in this process, the benchmark run
//! against it through its public entry points. No timing assertions: only
//! that every message arrived exactly once.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use liebre_bench::{run_amqp, run_connections, run_mqtt, BenchArgs, BenchCommand, Report};
use liebre_server::{Config, Server};

#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    bench: BenchArgs,
}

fn parse(args: &[&str]) -> BenchCommand {
    let mut v = vec!["liebre-bench"];
    v.extend_from_slice(args);
    Cli::try_parse_from(v)
        .expect("valid arguments")
        .bench
        .command
}

fn data_dir(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("liebre-bench-smoke-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

const LIMIT: Duration = Duration::from_secs(90);

fn assert_exact(report: &Report, n: u64) {
    assert!(report.errors.is_empty(), "errors: {:?}", report.errors);
    assert_eq!(report.published, n, "{report:#?}");
    assert_eq!(report.consumed, n, "{report:#?}");
    assert_eq!(report.expected, n);
    assert_eq!(report.lost, 0, "{report:#?}");
    assert_eq!(report.duplicated, 0, "{report:#?}");
    assert_eq!(report.foreign, 0);
    let lat = report.latency_us.as_ref().expect("latency measured");
    assert_eq!(lat.count, n);
    assert!(lat.p50 <= lat.p99 && lat.p99 <= lat.max);
    let delivered: u64 = report.timeline.iter().map(|p| p.delivered).sum();
    let published: u64 = report.timeline.iter().map(|p| p.published).sum();
    assert_eq!((delivered, published), (n, n));
    // The JSON form parses back.
    let v: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(v["lost"], 0);
    assert!(report.to_table().contains("consumed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_burst_with_confirms() {
    let dir = data_dir("amqp");
    let server = Server::start(Config::ephemeral(&dir)).await.unwrap();
    let url = format!("amqp://guest:guest@{}/%2F", server.amqp_addrs()[0]);
    let BenchCommand::Amqp(args) = parse(&[
        "amqp",
        "--url",
        &url,
        "--burst",
        "2000",
        "--confirm",
        "--no-progress",
    ]) else {
        panic!("not amqp")
    };
    let report = tokio::time::timeout(LIMIT, run_amqp(&args))
        .await
        .expect("finished in time")
        .expect("ran");
    assert_exact(&report, 2000);
    assert_eq!(report.confirmed, Some(2000));
    assert_eq!(report.nacked, 0);
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_several_queues_competing_consumers_and_large_messages() {
    let dir = data_dir("amqp-multi");
    let server = Server::start(Config::ephemeral(&dir)).await.unwrap();
    let url = format!("amqp://guest:guest@{}/%2F", server.amqp_addrs()[0]);
    // 3 producers over 2 queues, 4 consumers (2 per queue), bodies larger
    // than a frame, persistent, acks every 7, small window.
    let BenchCommand::Amqp(args) = parse(&[
        "amqp",
        "--url",
        &url,
        "--burst",
        "900",
        "--producers",
        "3",
        "--consumers",
        "4",
        "--queues",
        "2",
        "--size",
        "140000",
        "--persistent",
        "--confirm",
        "--multi-ack",
        "7",
        "--prefetch",
        "10",
        "--max-in-flight",
        "60",
        "--exchange",
        "bench-x",
        "--no-progress",
    ]) else {
        panic!("not amqp")
    };
    let report = tokio::time::timeout(LIMIT, run_amqp(&args))
        .await
        .expect("finished in time")
        .expect("ran");
    assert_exact(&report, 900);
    assert_eq!(report.confirmed, Some(900));
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_burst_qos1() {
    let dir = data_dir("mqtt");
    let server = Server::start(Config::ephemeral(&dir)).await.unwrap();
    let addr = server.mqtt_addrs()[0];
    let port = addr.port().to_string();
    let BenchCommand::Mqtt(args) = parse(&[
        "mqtt",
        "--host",
        "127.0.0.1",
        "--port",
        &port,
        "--burst",
        "2000",
        "--qos",
        "1",
        "--no-progress",
    ]) else {
        panic!("not mqtt")
    };
    let report = tokio::time::timeout(LIMIT, run_mqtt(&args))
        .await
        .expect("finished in time")
        .expect("ran");
    assert_exact(&report, 2000);
    assert_eq!(report.confirmed, Some(2000));
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_v5_qos2_persistent_fan_out() {
    let dir = data_dir("mqtt-v5");
    let server = Server::start(Config::ephemeral(&dir)).await.unwrap();
    let port = server.mqtt_addrs()[0].port().to_string();
    // 2 publishers on 1 topic, 2 subscribers: each subscriber gets all 1000.
    let BenchCommand::Mqtt(args) = parse(&[
        "mqtt",
        "--port",
        &port,
        "--burst",
        "1000",
        "--qos",
        "2",
        "--v5",
        "--persistent",
        "--publishers",
        "2",
        "--subscribers",
        "2",
        "--no-progress",
    ]) else {
        panic!("not mqtt")
    };
    let report = tokio::time::timeout(LIMIT, run_mqtt(&args))
        .await
        .expect("finished in time")
        .expect("ran");
    assert!(report.errors.is_empty(), "errors: {:?}", report.errors);
    assert_eq!(report.published, 1000);
    assert_eq!(report.confirmed, Some(1000));
    assert_eq!((report.expected, report.consumed), (2000, 2000));
    assert_eq!((report.lost, report.duplicated), (0, 0));
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections() {
    let dir = data_dir("conns");
    let server = Server::start(Config::ephemeral(&dir)).await.unwrap();
    let url = format!("amqp://guest:guest@{}/%2F", server.amqp_addrs()[0]);
    let pid = std::process::id().to_string();
    let BenchCommand::Connections(args) = parse(&[
        "connections",
        "--url",
        &url,
        "--count",
        "40",
        "--source-ips",
        "3",
        "--hold",
        "0",
        "--pid",
        &pid,
        "--no-progress",
    ]) else {
        panic!("not connections")
    };
    let report = tokio::time::timeout(LIMIT, run_connections(&args))
        .await
        .expect("finished in time")
        .expect("ran");
    assert_eq!((report.opened, report.failed), (40, 0), "{report:#?}");
    assert_eq!(report.connect_latency_us.as_ref().unwrap().count, 40);
    assert!(report.broker_rss_after.is_some() && report.broker_bytes_per_connection.is_some());

    let port = server.mqtt_addrs()[0].port().to_string();
    let BenchCommand::Connections(args) = parse(&[
        "connections",
        "--protocol",
        "mqtt",
        "--port",
        &port,
        "--count",
        "20",
        "--hold",
        "0",
        "--no-progress",
    ]) else {
        panic!("not connections")
    };
    let report = run_connections(&args).await.expect("ran");
    assert_eq!((report.opened, report.failed), (20, 0), "{report:#?}");
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churned_connections() {
    use std::sync::atomic::Ordering::Relaxed;

    let dir = data_dir("churn");
    let server = Server::start(Config::ephemeral(&dir)).await.unwrap();
    let url = format!("amqp://guest:guest@{}/%2F", server.amqp_addrs()[0]);
    let port = server.mqtt_addrs()[0].port().to_string();
    let pid = std::process::id().to_string();
    let metrics = server.broker().metrics().clone();
    for (protocol, target) in [("amqp", ["--url", &url]), ("mqtt", ["--port", &port])] {
        let BenchCommand::Connections(args) = parse(&[
            "connections",
            "--churn",
            "--protocol",
            protocol,
            target[0],
            target[1],
            "--duration",
            "1s",
            "--concurrency",
            "4",
            "--pid",
            &pid,
            "--no-progress",
        ]) else {
            panic!("not connections")
        };
        let report = tokio::time::timeout(LIMIT, run_connections(&args))
            .await
            .expect("finished in time")
            .expect("ran");
        let cycles = report.cycles.expect("a churn report");
        assert!(cycles > 0, "{report:#?}");
        assert_eq!(report.failed, 0, "{report:#?}");
        assert!(report.errors.is_empty(), "{report:#?}");
        assert_eq!(report.cycle_latency_us.as_ref().unwrap().count, cycles);
        assert!(report.broker_cpu_s.is_some() && report.broker_rss_after.is_some());
        assert!(report.to_table().contains("--churn"));
        let json: serde_json::Value = serde_json::to_value(&report).unwrap();
        assert_eq!(json["cycles"], cycles);
        // Every connection is gone on the broker's side too (its task may
        // finish just after the client saw the close).
        let open = || {
            (
                metrics.amqp_connections.load(Relaxed),
                metrics.mqtt_connections.load(Relaxed),
                server.mqtt().sessions.len(),
            )
        };
        for _ in 0..100 {
            if open() == (0, 0, 0) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(open(), (0, 0, 0), "{protocol}: left open on the broker");
    }
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The relay baseline: the bench's frames through a raw TCP relay, no
/// broker. Every message arrives once, in order, and the client's CPU is
/// measured.
#[test]
fn relay_amqp_and_mqtt_qos1() {
    for args in [
        &["relay", "--duration", "300ms"][..],
        &[
            "relay",
            "--protocol",
            "mqtt",
            "--qos",
            "1",
            "--duration",
            "300ms",
        ][..],
    ] {
        let BenchCommand::Relay(a) = parse(args) else {
            panic!("not relay")
        };
        let report = liebre_bench::run_relay(&a).expect("ran");
        assert!(report.errors.is_empty(), "errors: {:?}", report.errors);
        assert!(report.consumed > 0, "{report:#?}");
        assert_eq!(report.consumed, report.published, "{report:#?}");
        assert_eq!((report.lost, report.duplicated, report.foreign), (0, 0, 0));
        assert!(
            report.client_cpu_s_per_million.is_some_and(|c| c > 0.0),
            "{report:#?}"
        );
        assert!(report.relay_cpu_s.is_some() && report.relay_bytes > 0);
        let v: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(v["lost"], 0);
        assert!(report.to_table().contains("per million messages"));
    }
}
