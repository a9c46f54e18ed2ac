//! The resource monitor: every `check_interval` it reads this process's
//! resident memory and the free space of the data directory's file system
//! and sets or clears the broker's memory and disk alarms (RabbitMQ's
//! `vm_memory_high_watermark`, default 0.6 of RAM, and `disk_free_limit`,
//! default 50 MB). While an alarm is on, publishing connections are
//! blocked; see `liebre_core::alarms`.
//!
//! The monitor acts on changes of what it measures: an alarm forced on or
//! off by hand (`Broker::alarms()`, as tests do) stays so until the
//! measurement crosses its limit.
//!
//! Memory and total RAM come from `/proc` (Linux); a cgroup memory limit
//! below the machine's RAM counts as the RAM. Where `/proc` is missing the
//! memory alarm is off.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use liebre_core::{Alarms, Broker};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The memory limit: a fraction of RAM or an amount.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Watermark {
    /// This fraction of total RAM (or of the cgroup's limit).
    Relative(f64),
    /// This many bytes.
    Absolute(u64),
}

/// Alarm settings.
#[derive(Debug, Clone)]
pub struct AlarmsConfig {
    /// Resident memory above which the memory alarm is on.
    pub memory_high_watermark: Watermark,
    /// Free disk space (of the data directory) below which the disk alarm
    /// is on.
    pub disk_free_limit: u64,
    /// How often memory and disk are measured; zero: never (the alarms
    /// only change by hand, as in tests).
    pub check_interval: Duration,
}

impl Default for AlarmsConfig {
    fn default() -> Self {
        Self {
            memory_high_watermark: Watermark::Relative(0.6),
            disk_free_limit: 50_000_000,
            check_interval: Duration::from_secs(1),
        }
    }
}

/// Parse an amount of bytes: a plain integer, or a number with a unit as
/// RabbitMQ writes them: `kB`/`MB`/`GB`/`TB` are powers of 1000,
/// `k`/`kiB`/`M`/`MiB`/`G`/`GiB`/`T`/`TiB` powers of 1024 (case does not
/// matter; "50MB", "1.5 GiB", "500000000").
pub fn parse_bytes(s: &str) -> anyhow::Result<u64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let unit = unit.trim().to_ascii_lowercase();
    let mult: u64 = match unit.as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "mb" => 1000u64.pow(2),
        "gb" => 1000u64.pow(3),
        "tb" => 1000u64.pow(4),
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        _ => anyhow::bail!("unknown unit '{unit}' in '{s}' (use kB, MB, GB, kiB, MiB, GiB, ...)"),
    };
    if num.is_empty() {
        anyhow::bail!("'{s}' is not an amount of bytes");
    }
    if let Ok(n) = num.parse::<u64>() {
        return n
            .checked_mul(mult)
            .ok_or_else(|| anyhow::anyhow!("'{s}' is too large"));
    }
    let f: f64 = num
        .parse()
        .map_err(|_| anyhow::anyhow!("'{s}' is not an amount of bytes"))?;
    let bytes = (f * mult as f64).round();
    anyhow::ensure!(
        bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64,
        "'{s}' is out of range"
    );
    Ok(bytes as u64)
}

/// Parse the memory high watermark: a plain number from 0 to 1 is a
/// fraction of RAM ("0.4"); anything else is an amount of bytes ("2GiB",
/// "1500000000").
pub fn parse_watermark(s: &str) -> anyhow::Result<Watermark> {
    let t = s.trim();
    if let Ok(f) = t.parse::<f64>() {
        if (0.0..=1.0).contains(&f) {
            return Ok(Watermark::Relative(f));
        }
        if t.contains('.') || t.contains(['e', 'E']) || f < 0.0 {
            anyhow::bail!(
                "memory high watermark '{t}': a fraction must be between 0 and 1 (or give an amount such as 2GiB)"
            );
        }
    }
    parse_bytes(t)
        .map(Watermark::Absolute)
        .map_err(|e| anyhow::anyhow!("memory high watermark: {e}"))
}

/// The resident set of this process, in bytes (`/proc/self/statm`).
pub fn resident_memory() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages = parse_statm_resident(&statm)?;
    pages.checked_mul(rustix::param::page_size() as u64)
}

/// Resident pages: the second field of `/proc/PID/statm`.
pub fn parse_statm_resident(statm: &str) -> Option<u64> {
    statm.split_whitespace().nth(1)?.parse().ok()
}

/// `MemTotal` of `/proc/meminfo`, in bytes.
pub fn parse_meminfo_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut it = line["MemTotal:".len()..].split_whitespace();
    let n: u64 = it.next()?.parse().ok()?;
    match it.next() {
        Some("kB") | None => n.checked_mul(1024),
        Some(_) => None,
    }
}

/// A cgroup memory limit file's value: bytes, or `None` for "max".
pub fn parse_cgroup_limit(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// The files that may hold a memory limit for this process, from
/// `/proc/self/cgroup`: cgroup v2's `memory.max` and v1's
/// `memory.limit_in_bytes` of its cgroup and of every ancestor (a limit
/// on a parent binds too).
pub fn cgroup_limit_files(proc_self_cgroup: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for line in proc_self_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let (root, file) = if id == "0" && controllers.is_empty() {
            ("/sys/fs/cgroup", "memory.max")
        } else if controllers.split(',').any(|c| c == "memory") {
            ("/sys/fs/cgroup/memory", "memory.limit_in_bytes")
        } else {
            continue;
        };
        let mut dir = Some(Path::new(path));
        while let Some(d) = dir {
            let rel = d.strip_prefix("/").unwrap_or(d);
            files.push(Path::new(root).join(rel).join(file));
            dir = d.parent();
        }
    }
    files
}

/// Total RAM in bytes, or the cgroup's memory limit if smaller.
pub fn total_memory() -> Option<u64> {
    let ram = parse_meminfo_total(&std::fs::read_to_string("/proc/meminfo").ok()?)?;
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let limit = cgroup_limit_files(&cgroup)
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .filter_map(|t| parse_cgroup_limit(&t))
        .min();
    Some(limit.map_or(ram, |l| l.min(ram)))
}

/// Bytes available to unprivileged users on the file system of `dir`.
pub fn disk_free(dir: &Path) -> Option<u64> {
    let s = rustix::fs::statvfs(dir).ok()?;
    s.f_bavail.checked_mul(s.f_frsize)
}

/// The memory limit in bytes for `w` given total memory, if known.
pub fn memory_limit(w: Watermark, total: Option<u64>) -> Option<u64> {
    match w {
        Watermark::Absolute(b) => Some(b),
        Watermark::Relative(f) => total.map(|t| (t as f64 * f) as u64),
    }
}

/// One measurement.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// Resident memory, bytes.
    pub memory: Option<u64>,
    /// Free disk space, bytes.
    pub disk_free: Option<u64>,
}

impl Sample {
    fn take(data_dir: &Path) -> Self {
        Self {
            memory: resident_memory(),
            disk_free: disk_free(data_dir),
        }
    }
}

/// Turns measurements into alarm changes; acts on the crossings of each
/// limit only.
#[derive(Debug)]
pub struct Monitor {
    memory_limit: Option<u64>,
    disk_limit: u64,
    memory_high: bool,
    disk_low: bool,
}

impl Monitor {
    /// A monitor with these limits (no memory limit: no memory alarm).
    pub fn new(memory_limit: Option<u64>, disk_limit: u64) -> Self {
        Self {
            memory_limit,
            disk_limit,
            memory_high: false,
            disk_low: false,
        }
    }

    /// Compare `s` with the limits and set or clear `alarms` where a limit
    /// was crossed. An unreadable value changes nothing.
    pub fn observe(&mut self, s: Sample, alarms: &Alarms) {
        if let (Some(used), Some(limit)) = (s.memory, self.memory_limit) {
            let high = used > limit;
            if high != self.memory_high {
                self.memory_high = high;
                alarms.set_memory(high);
                if high {
                    warn!(
                        message = "memory resource limit alarm set on this node; publishers will be blocked until this alarm clears.",
                        used_bytes = used,
                        limit_bytes = limit,
                    );
                } else {
                    info!(
                        message = "memory resource limit alarm cleared on this node.",
                        used_bytes = used,
                        limit_bytes = limit,
                    );
                }
            }
        }
        if let Some(free) = s.disk_free {
            let low = free < self.disk_limit;
            if low != self.disk_low {
                self.disk_low = low;
                alarms.set_disk(low);
                if low {
                    warn!(
                        message = "disk resource limit alarm set on this node: free disk space is insufficient; publishers will be blocked until this alarm clears.",
                        free_bytes = free,
                        limit_bytes = self.disk_limit,
                    );
                } else {
                    info!(
                        message = "disk resource limit alarm cleared on this node: free disk space is sufficient.",
                        free_bytes = free,
                        limit_bytes = self.disk_limit,
                    );
                }
            }
        }
    }
}

/// Measure every `config.check_interval` until shutdown.
pub(crate) async fn monitor_loop(
    broker: Arc<Broker>,
    config: AlarmsConfig,
    data_dir: PathBuf,
    token: CancellationToken,
) {
    let total = total_memory();
    let limit = memory_limit(config.memory_high_watermark, total);
    match (limit, total) {
        (Some(l), t) => info!(
            message = "Memory high watermark set.",
            limit_mib = l >> 20,
            total_mib = t.map(|t| t >> 20),
        ),
        (None, _) => warn!(
            message = "Total memory is unknown: the memory alarm is off (give the watermark as an amount, e.g. 2GiB, to turn it on)."
        ),
    }
    info!(
        message = "Disk free limit set.",
        limit_bytes = config.disk_free_limit,
        dir = %data_dir.display()
    );
    let mut monitor = Monitor::new(limit, config.disk_free_limit);
    let mut every = tokio::time::interval(config.check_interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = every.tick() => {
                let dir = data_dir.clone();
                // statvfs may block (network file systems): off the runtime.
                let Ok(sample) = tokio::task::spawn_blocking(move || Sample::take(&dir)).await else {
                    continue;
                };
                monitor.observe(sample, broker.alarms());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_amounts_of_bytes() {
        assert_eq!(parse_bytes("50MB").unwrap(), 50_000_000);
        assert_eq!(parse_bytes("1GB").unwrap(), 1_000_000_000);
        assert_eq!(parse_bytes("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_bytes("2 gib").unwrap(), 2 << 30);
        assert_eq!(parse_bytes("512M").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("500kB").unwrap(), 500_000);
        assert_eq!(parse_bytes("1.5GiB").unwrap(), 3 << 29);
        assert_eq!(parse_bytes("123").unwrap(), 123);
        assert!(parse_bytes("").is_err());
        assert!(parse_bytes("MB").is_err());
        assert!(parse_bytes("12 parsecs").is_err());
        assert!(parse_bytes("-5MB").is_err());
        assert!(parse_bytes("99999999999999999999TB").is_err());
    }

    #[test]
    fn parses_watermarks() {
        assert_eq!(parse_watermark("0.4").unwrap(), Watermark::Relative(0.4));
        assert_eq!(parse_watermark("1").unwrap(), Watermark::Relative(1.0));
        assert_eq!(parse_watermark("0").unwrap(), Watermark::Relative(0.0));
        assert_eq!(
            parse_watermark("2GiB").unwrap(),
            Watermark::Absolute(2 << 30)
        );
        assert_eq!(
            parse_watermark("1500000000").unwrap(),
            Watermark::Absolute(1_500_000_000)
        );
        assert!(parse_watermark("1.5").is_err());
        assert!(parse_watermark("-0.5").is_err());
        assert!(parse_watermark("lots").is_err());
    }

    #[test]
    fn parses_proc_files() {
        assert_eq!(parse_statm_resident("765 435 407 5 0 123 0\n"), Some(435));
        assert_eq!(parse_statm_resident(""), None);
        let meminfo = "MemTotal:       24684084 kB\nMemFree:        22916444 kB\n";
        assert_eq!(parse_meminfo_total(meminfo), Some(24_684_084 * 1024));
        assert_eq!(parse_meminfo_total("MemFree: 1 kB\n"), None);
        assert_eq!(parse_cgroup_limit("max\n"), None);
        assert_eq!(parse_cgroup_limit("1073741824\n"), Some(1 << 30));
        assert!(resident_memory().is_some_and(|b| b > 0));
        assert!(total_memory().is_some_and(|b| b > 0));
        assert!(disk_free(Path::new(".")).is_some());
    }

    #[test]
    fn finds_cgroup_limit_files() {
        let v2 = "0::/system.slice/liebre.service\n";
        assert_eq!(
            cgroup_limit_files(v2),
            vec![
                PathBuf::from("/sys/fs/cgroup/system.slice/liebre.service/memory.max"),
                PathBuf::from("/sys/fs/cgroup/system.slice/memory.max"),
                PathBuf::from("/sys/fs/cgroup/memory.max"),
            ]
        );
        let v1 = "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n0::/\n";
        assert_eq!(
            cgroup_limit_files(v1),
            vec![
                PathBuf::from("/sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes"),
                PathBuf::from("/sys/fs/cgroup/memory/docker/memory.limit_in_bytes"),
                PathBuf::from("/sys/fs/cgroup/memory/memory.limit_in_bytes"),
                PathBuf::from("/sys/fs/cgroup/memory.max"),
            ]
        );
    }

    #[test]
    fn monitor_sets_and_clears_on_crossings() {
        let alarms = Alarms::new(Default::default());
        let mut m = Monitor::new(Some(1000), 500);
        let s = |memory, disk| Sample {
            memory: Some(memory),
            disk_free: Some(disk),
        };
        m.observe(s(900, 600), &alarms);
        assert!(!alarms.blocked());
        m.observe(s(1001, 600), &alarms);
        assert!(alarms.memory() && !alarms.disk());
        m.observe(s(1001, 499), &alarms);
        assert!(alarms.memory() && alarms.disk());
        m.observe(s(1000, 499), &alarms);
        assert!(!alarms.memory() && alarms.disk());
        m.observe(Sample::default(), &alarms);
        assert!(alarms.disk(), "an unreadable value changes nothing");
        m.observe(s(10, 500), &alarms);
        assert!(!alarms.blocked());
        // Forced by hand: stays until a limit is crossed.
        alarms.set_memory(true);
        m.observe(s(10, 500), &alarms);
        assert!(alarms.memory());
    }

    #[test]
    fn relative_watermark_needs_total_memory() {
        assert_eq!(
            memory_limit(Watermark::Relative(0.5), Some(1000)),
            Some(500)
        );
        assert_eq!(memory_limit(Watermark::Relative(0.5), None), None);
        assert_eq!(memory_limit(Watermark::Absolute(7), None), Some(7));
    }
}
