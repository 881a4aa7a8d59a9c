//! Benchmarks: each prints a markdown table and writes it, with the machine
//! it ran on, under bench/results/.

pub mod availability;
pub mod daemon;
pub mod dataplane;
pub mod failover;
pub mod flows;
pub mod lb;
pub mod pair;
pub mod sync;
pub mod xdp;

use std::{fs, path::PathBuf};

use anyhow::{Context, Result};

/// The value at fraction `p` (0 to 1) of `sorted`, nearest rank.
///
/// # Panics
/// On an empty slice.
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> T {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// utime + stime of a process, in clock ticks.
pub fn cpu_ticks(pid: u32) -> Result<u64> {
    stat_ticks(&format!("/proc/{pid}/stat"))
}

/// A process's CPU over a window of wall time.
pub struct CpuMeter {
    pid: u32,
    ticks: u64,
    started: std::time::Instant,
}

impl CpuMeter {
    pub fn start(pid: u32) -> Result<Self> {
        Ok(Self { pid, ticks: cpu_ticks(pid)?, started: std::time::Instant::now() })
    }

    /// % of one core since the start.
    pub fn percent(&self) -> Result<f64> {
        let used = (cpu_ticks(self.pid)? - self.ticks) as f64 / ticks_per_second();
        Ok(100.0 * used / self.started.elapsed().as_secs_f64())
    }
}

/// The phase (0 to 1) of the probe interval at which failure `i` strikes.
/// Real failures strike at any phase; failures that all struck just after
/// a probe (as they would, paced by verdicts) would all read alike. The
/// golden-ratio sequence spreads them evenly, whatever their number.
pub fn spread_phase(i: usize) -> f64 {
    (i as f64 * 0.618_033_988_75).fract()
}

/// utime + stime of a process's threads named `name` (its `comm`), in
/// clock ticks.
pub fn thread_cpu_ticks(pid: u32, name: &str) -> Result<u64> {
    let mut ticks = 0;
    for task in fs::read_dir(format!("/proc/{pid}/task"))? {
        let dir = task?.path();
        if fs::read_to_string(dir.join("comm")).is_ok_and(|comm| comm.trim() == name) {
            ticks += stat_ticks(&dir.join("stat").display().to_string())?;
        }
    }
    Ok(ticks)
}

fn stat_ticks(path: &str) -> Result<u64> {
    let stat = fs::read_to_string(path)?;
    // Fields after the command name, which may hold spaces: ") S ppid ..."
    let rest = stat.rsplit_once(')').context("malformed stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Ok(fields[11].parse::<u64>()? + fields[12].parse::<u64>()?)
}

/// Clock ticks per second of /proc's CPU times.
pub fn ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a constant.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}

/// CPU model, cores, memory and kernel, for every results file.
pub fn machine() -> String {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / (1024 * 1024));
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{model}, {cores} cores, {mem_gib} GiB, Linux {}",
        kernel.trim()
    )
}

/// bench/results/, created if missing.
pub fn results_dir() -> Result<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../bench/results");
    fs::create_dir_all(&dir)?;
    Ok(dir.canonicalize()?)
}

/// Writes `name.md` under bench/results/ and returns its path.
pub fn write_result(name: &str, markdown: &str) -> Result<PathBuf> {
    let path = results_dir()?.join(format!("{name}.md"));
    fs::write(&path, markdown).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// A tool's report with the machine it ran on: printed, and with `record`
/// written to bench/results/`name`.md as well.
pub fn publish(tool: &str, name: &str, report: &str, record: bool) {
    let markdown = format!("{report}\nMachine: {}\n", machine());
    println!("{markdown}");
    if record {
        match write_result(name, &markdown) {
            Ok(path) => eprintln!("{tool}: wrote {}", path.display()),
            Err(e) => eprintln!("{tool}: {e:#}"),
        }
    }
}

pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}
