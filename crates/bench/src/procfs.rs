//! Reading `/proc`: this process's or thread's CPU time and a process's
//! resident memory. Linux only; elsewhere the numbers are absent.

/// Clock ticks per second of `/proc/*/stat` (`USER_HZ`, 100 on every
/// Linux architecture the kernel exports to user space).
const USER_HZ: f64 = 100.0;

/// User and system CPU seconds of process `pid` ("self" for this one),
/// threads that already exited included.
pub(crate) fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_cpu(&stat)
}

/// User and system CPU seconds of the calling thread, from
/// `/proc/thread-self/stat` (Linux 3.17 and later).
pub(crate) fn thread_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    parse_stat_cpu(&stat)
}

/// utime + stime from a `/proc/PID/stat` line, in seconds.
pub(crate) fn parse_stat_cpu(stat: &str) -> Option<f64> {
    // The command name (field 2) may contain spaces and parentheses: the
    // fields after it start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

/// Resident set size of process `pid` in bytes, from `VmRSS` in
/// `/proc/PID/status`.
pub(crate) fn vm_rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_rss(&status)
}

/// `VmRSS` from a `/proc/PID/status` text, in bytes.
pub(crate) fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut it = line["VmRSS:".len()..].split_whitespace();
    let n: u64 = it.next()?.parse().ok()?;
    let unit = it.next().unwrap_or("kB");
    Some(match unit {
        "kB" => n * 1024,
        "mB" | "MB" => n * 1024 * 1024,
        _ => n,
    })
}

/// The soft limit on open files of this process, from `/proc/self/limits`.
pub(crate) fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_command_names() {
        let stat = "1234 (my (odd) prog) S 1 1234 1234 0 -1 4194304 100 0 0 0 250 50 0 0 20 0 3 0 1000 1000000 200 18446744073709551615";
        assert_eq!(parse_stat_cpu(stat), Some(3.0));
        assert!(cpu_seconds("self").is_some_and(|s| s >= 0.0));
        assert!(thread_cpu_seconds().is_some_and(|s| s >= 0.0));
    }

    #[test]
    fn parses_vm_rss() {
        let status = "Name:\tliebre\nVmPeak:\t  100 kB\nVmRSS:\t    2048 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss(status), Some(2048 * 1024));
        assert!(vm_rss_bytes(std::process::id()).is_some_and(|b| b > 0));
    }
}
