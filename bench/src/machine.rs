//! The machine a benchmark ran on, printed beside every figure, and the processes' own view of
//! their CPU time and resident memory, read from `/proc`.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

use anyhow::Context as _;

/// Linux reports thread CPU times in clock ticks of 1/100 s (`USER_HZ`).
const TICKS_PER_SECOND: f64 = 100.0;

/// Cores, processor model and kernel of this machine.
pub(crate) struct Machine {
    cores: usize,
    model: String,
    kernel: String,
    load: String,
}

impl Machine {
    /// Reads the machine's description from the standard library and `/proc`.
    pub(crate) fn detect() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|text| model_name(&text))
            .unwrap_or_else(|| "unknown processor".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|text| text.trim().to_owned())
            .unwrap_or_else(|_| "unknown".into());
        let load = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|text| load_average(&text))
            .unwrap_or_else(|| "unknown".into());
        Self {
            cores,
            model,
            kernel,
            load,
        }
    }

    /// How many cores this process may use.
    pub(crate) fn cores(&self) -> usize {
        self.cores
    }
}

impl fmt::Display for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "machine: {} cores, {}, Linux {}",
            self.cores, self.model, self.kernel
        )?;
        write!(
            f,
            "shared: the load generator, the stand-ins and Steward all run on these {} cores \
             (load average over 1, 5, 15 min before the run, from other work too: {})",
            self.cores, self.load
        )
    }
}

/// The three load averages of a `/proc/loadavg` text.
fn load_average(text: &str) -> Option<String> {
    let fields: Vec<&str> = text.split_whitespace().take(3).collect();
    let numeric = fields.len() == 3 && fields.iter().all(|f| f.parse::<f64>().is_ok());
    numeric.then(|| fields.join(" "))
}

/// The first non-empty `model name` of a `/proc/cpuinfo` text.
fn model_name(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        let value = value.trim();
        (key.trim() == "model name" && !value.is_empty()).then(|| value.to_owned())
    })
}

/// Resident memory of process `pid` in bytes (`VmRSS` of `/proc/<pid>/status`).
pub(crate) fn resident_bytes(pid: u32) -> anyhow::Result<u64> {
    status_bytes(pid, "VmRSS:")
}

/// The most the process has had resident since it started (`VmHWM`), in bytes.
pub(crate) fn peak_resident_bytes(pid: u32) -> anyhow::Result<u64> {
    status_bytes(pid, "VmHWM:")
}

fn status_bytes(pid: u32, field: &str) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let kib = status_kib(&status, field).with_context(|| format!("{path} has no {field} line"))?;
    Ok(kib * 1024)
}

/// The value of a `Field:   1234 kB` line, in KiB.
fn status_kib(status: &str, field: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(field))?;
    let mut words = line[field.len()..].split_whitespace();
    let value = words.next()?.parse().ok()?;
    (words.next() == Some("kB")).then_some(value)
}

/// Bytes as MiB with one decimal.
pub(crate) fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// The CPU time each thread of a process had used at one moment.
pub(crate) struct CpuSample {
    at: Instant,
    threads: HashMap<u32, (String, u64)>,
}

impl CpuSample {
    /// Reads `/proc/<pid>/task/*/stat`. Threads that end while being read are skipped.
    pub(crate) fn take(pid: u32) -> Self {
        let mut threads = HashMap::new();
        let dir = format!("/proc/{pid}/task");
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            if let Some(thread) = thread_ticks(&stat) {
                threads.insert(tid, thread);
            }
        }
        Self {
            at: Instant::now(),
            threads,
        }
    }

    /// What was used between `earlier` and this sample.
    pub(crate) fn since(&self, earlier: &CpuSample) -> CpuUsage {
        let wall = self.at.duration_since(earlier.at);
        let mut by_name: HashMap<String, u64> = HashMap::new();
        let mut busiest: Vec<(String, u64)> = Vec::new();
        for (tid, (name, ticks)) in &self.threads {
            let before = earlier.threads.get(tid).map_or(0, |(_, t)| *t);
            let used = ticks.saturating_sub(before);
            *by_name.entry(name.clone()).or_default() += used;
            busiest.push((format!("{name}[{tid}]"), used));
        }
        busiest.sort_by_key(|b| std::cmp::Reverse(b.1));
        busiest.truncate(3);
        let mut groups: Vec<(String, u64)> = by_name.into_iter().collect();
        groups.sort_by_key(|g| std::cmp::Reverse(g.1));
        CpuUsage {
            wall,
            groups,
            busiest,
        }
    }
}

/// CPU time used over an interval, by thread name and by the busiest single threads.
pub(crate) struct CpuUsage {
    wall: Duration,
    groups: Vec<(String, u64)>,
    busiest: Vec<(String, u64)>,
}

impl CpuUsage {
    fn cores(&self, ticks: u64) -> f64 {
        let wall = self.wall.as_secs_f64();
        if wall <= 0.0 {
            return 0.0;
        }
        ticks as f64 / TICKS_PER_SECOND / wall
    }
}

impl fmt::Display for CpuUsage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total: u64 = self.groups.iter().map(|(_, t)| t).sum();
        let list = |items: &[(String, u64)]| {
            items
                .iter()
                .filter(|(_, t)| *t > 0)
                .take(6)
                .map(|(name, t)| format!("{name} {:.2}", self.cores(*t)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        write!(
            f,
            "cpu: {:.2} cores busy in this process ({}); busiest threads: {}",
            self.cores(total),
            list(&self.groups),
            list(&self.busiest)
        )
    }
}

/// A thread's name and user plus system ticks from its `stat` line. The name sits in
/// parentheses and may itself hold spaces and parentheses, so the fields are counted from the
/// last `)`: state is the first after it, utime the 12th and stime the 13th.
fn thread_ticks(stat: &str) -> Option<(String, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?.to_owned();
    let fields: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((name, utime + stime))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_name_is_the_first_non_empty_one() {
        let text =
            "processor\t: 0\nmodel name\t:\nmodel name\t: AMD EPYC 9B14\nmodel name: Other\n";
        assert_eq!(model_name(text).as_deref(), Some("AMD EPYC 9B14"));
    }

    #[test]
    fn model_name_is_none_for_text_without_one() {
        assert_eq!(model_name(""), None);
        assert_eq!(model_name("model name without colon\n:::\n"), None);
        assert_eq!(model_name(&"x".repeat(1 << 20)), None);
    }

    #[test]
    fn load_averages_are_the_first_three_numbers() {
        assert_eq!(
            load_average("0.52 0.58 0.59 1/123 4567\n").as_deref(),
            Some("0.52 0.58 0.59")
        );
        assert_eq!(load_average("0.52 0.58"), None);
        assert_eq!(load_average("a b c d"), None);
        assert_eq!(load_average(""), None);
    }

    fn vm_rss_kib(status: &str) -> Option<u64> {
        status_kib(status, "VmRSS:")
    }

    #[test]
    fn vm_rss_reads_the_kib_value() {
        let status = "Name:\tsteward\nVmPeak:\t  999 kB\nVmHWM:\t 60000 kB\nVmRSS:\t   51234 kB\n";
        assert_eq!(vm_rss_kib(status), Some(51234));
        assert_eq!(status_kib(status, "VmHWM:"), Some(60000));
    }

    #[test]
    fn vm_rss_refuses_malformed_lines() {
        assert_eq!(status_kib("VmHWM:\t  12 MB\n", "VmHWM:"), None);
        assert_eq!(vm_rss_kib("VmRSS:\t  12 MB\n"), None);
        assert_eq!(vm_rss_kib("VmRSS:\t  -12 kB\n"), None);
        assert_eq!(vm_rss_kib("VmRSS:\n"), None);
        assert_eq!(vm_rss_kib("VmRSS: 99999999999999999999999 kB"), None);
        assert_eq!(vm_rss_kib("Name: VmRSS: 12 kB"), None);
    }

    #[test]
    fn thread_ticks_count_fields_after_the_last_parenthesis() {
        let stat = "4242 (tokio (x) w) S 1 2 3 4 5 6 7 8 9 10 250 30 0 0 20 0 9 0 100 0 0";
        assert_eq!(thread_ticks(stat), Some(("tokio (x) w".into(), 280)));
    }

    #[test]
    fn thread_ticks_refuse_short_or_garbled_lines() {
        assert_eq!(thread_ticks(""), None);
        assert_eq!(thread_ticks("1 (name) S 1 2"), None);
        assert_eq!(
            thread_ticks("1 name) S 1 2 3 4 5 6 7 8 9 10 11 12 13"),
            None
        );
        assert_eq!(thread_ticks("1 (n) S 1 2 3 4 5 6 7 8 9 10 x y"), None);
        assert_eq!(thread_ticks(")1 ( S"), None);
    }

    #[test]
    fn cpu_usage_of_this_process_is_measurable() {
        let pid = std::process::id();
        let before = CpuSample::take(pid);
        assert!(!before.threads.is_empty(), "this process has threads");
        let after = CpuSample::take(pid);
        let usage = after.since(&before);
        assert!(usage.to_string().starts_with("cpu: "));
    }
}
