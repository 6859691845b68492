//! CPU and memory figures from Linux `/proc` (proc(5)).
//!
//! Belongs here: reading a process's user+system CPU ticks (`/proc/<pid>/stat` fields 14 and 15),
//! its resident set (`/proc/<pid>/status` `VmRSS`), the machine-wide busy and total ticks (the `cpu`
//! line of `/proc/stat`) and the clock tick rate (`getconf CLK_TCK`), and turning two samples into
//! percentages. Does not belong: deciding when to sample (the harness's run loop).

use std::time::Duration;

/// `/proc` could not be read or parsed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProcError {
    #[error("reading {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: {what}")]
    Parse { path: String, what: &'static str },
}

/// utime + stime in clock ticks from the text of `/proc/<pid>/stat`. The command name (field 2)
/// is in parentheses and may itself hold spaces and ')', so fields are counted after the last ')'.
pub fn parse_stat_cpu_ticks(text: &str) -> Option<u64> {
    let after = &text[text.rfind(')')? + 1..];
    // After ")": field 3 (state) is index 0, so utime (field 14) is index 11, stime index 12.
    let mut f = after.split_whitespace();
    let utime: u64 = f.nth(11)?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(utime + stime)
}

/// VmRSS in KiB from the text of `/proc/<pid>/status`.
pub fn parse_status_rss_kib(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    line["VmRSS:".len()..].split_whitespace().next()?.parse().ok()
}

/// Machine-wide ticks from the `cpu` line of `/proc/stat`: (busy, total), where idle is idle+iowait.
pub fn parse_proc_stat(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).map(|x| x.parse().ok()).collect::<Option<_>>()?;
    if v.len() < 4 {
        return None;
    }
    // user nice system idle iowait irq softirq steal guest guest_nice; guest time is already
    // counted in user/nice, so only the first 8 fields are summed.
    let total: u64 = v.iter().take(8).sum();
    let idle = v[3] + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// Number of `cpuN` lines in `/proc/stat`.
pub fn parse_cpu_count(text: &str) -> usize {
    text.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count()
}

fn read(path: &str) -> Result<String, ProcError> {
    std::fs::read_to_string(path).map_err(|source| ProcError::Io { path: path.to_string(), source })
}

/// A process's CPU ticks; `pid` None means this process.
pub fn cpu_ticks(pid: Option<u32>) -> Result<u64, ProcError> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let text = read(&path)?;
    parse_stat_cpu_ticks(&text).ok_or(ProcError::Parse { path, what: "utime/stime fields missing" })
}

/// A process's resident set in KiB.
pub fn rss_kib(pid: u32) -> Result<u64, ProcError> {
    let path = format!("/proc/{pid}/status");
    let text = read(&path)?;
    parse_status_rss_kib(&text).ok_or(ProcError::Parse { path, what: "VmRSS line missing" })
}

/// Machine (busy, total) ticks and the number of CPUs.
pub fn machine() -> Result<((u64, u64), usize), ProcError> {
    let path = "/proc/stat";
    let text = read(path)?;
    let t = parse_proc_stat(&text).ok_or(ProcError::Parse { path: path.into(), what: "cpu line missing" })?;
    Ok((t, parse_cpu_count(&text).max(1)))
}

/// Clock ticks per second from `getconf CLK_TCK` (100 when it cannot be run).
pub fn clk_tck() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|v| *v > 0)
        .unwrap_or(100)
}

/// CPU use in % of one core between two tick samples over `wall`.
pub fn cpu_percent(ticks_before: u64, ticks_after: u64, tck: u64, wall: Duration) -> f64 {
    if wall.is_zero() || tck == 0 {
        return 0.0;
    }
    let secs = ticks_after.saturating_sub(ticks_before) as f64 / tck as f64;
    secs / wall.as_secs_f64() * 100.0
}

/// Machine busy in % of all cores between two `/proc/stat` samples.
pub fn busy_percent(before: (u64, u64), after: (u64, u64)) -> f64 {
    let busy = after.0.saturating_sub(before.0) as f64;
    let total = after.1.saturating_sub(before.1) as f64;
    if total == 0.0 {
        0.0
    } else {
        busy / total * 100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_last_paren() {
        let text = "4242 (gb relay) x) S 1 4242 4242 0 -1 4194560 1234 0 0 0 150 37 0 0 20 0 9 0 123456 1000000 2000 18446744073709551615";
        assert_eq!(parse_stat_cpu_ticks(text), Some(187));
        assert_eq!(parse_stat_cpu_ticks("1 (x) S 1 2"), None);
        // This process's own stat parses.
        assert!(cpu_ticks(None).is_ok());
    }

    #[test]
    fn rss_is_read_from_status() {
        let text = "Name:\tgbrelay\nVmPeak:\t  20000 kB\nVmRSS:\t    7340 kB\nThreads:\t3\n";
        assert_eq!(parse_status_rss_kib(text), Some(7340));
        assert_eq!(parse_status_rss_kib("Name: x\n"), None);
        assert!(rss_kib(std::process::id()).unwrap() > 0);
    }

    #[test]
    fn machine_busy_excludes_idle_and_iowait() {
        let text = "cpu  100 5 50 800 40 3 2 0 7 0\ncpu0 50 2 25 400 20 1 1 0 0 0\ncpu1 50 3 25 400 20 2 1 0 0 0\nintr 1\n";
        assert_eq!(parse_proc_stat(text), Some((160, 1000)));
        assert_eq!(parse_cpu_count(text), 2);
        assert_eq!(busy_percent((160, 1000), (260, 1200)), 50.0);
        assert_eq!(busy_percent((1, 1), (1, 1)), 0.0);
    }

    #[test]
    fn cpu_percent_of_one_core() {
        assert_eq!(cpu_percent(100, 160, 100, Duration::from_secs(2)), 30.0);
        assert_eq!(cpu_percent(100, 400, 100, Duration::from_secs(1)), 300.0);
        assert_eq!(cpu_percent(5, 5, 100, Duration::ZERO), 0.0);
    }
}
