//! CPU utilisation of the host, a cgroup or a set of processes: what the
//! agent reports for the cpu policy.
//!
//! The /proc and cgroup parsers take the file's text, so they are tested
//! with fixed text; the readers around them are thin.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{ensure, Context, Result};
use tracing::{info, warn};

/// CPU consumed and CPU available, both cumulative and in the same unit:
/// utilisation over an interval is the ratio of their growth.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuReading {
    pub used: u64,
    pub capacity: u64,
}

impl CpuReading {
    /// Utilisation from `earlier` to `self`, rounded; None when no
    /// capacity elapsed. A counter that went back (a cgroup re-created
    /// under the same path) counts as idle rather than wrapping.
    pub fn permille_since(&self, earlier: &CpuReading) -> Option<u16> {
        let capacity = u128::from(self.capacity.checked_sub(earlier.capacity)?);
        if capacity == 0 {
            return None;
        }
        let used = u128::from(self.used.saturating_sub(earlier.used));
        let permille = (used * 1000 + capacity / 2) / capacity;
        Some(permille.min(1000) as u16)
    }
}

/// The host's reading from /proc/stat's aggregate `cpu` line, in clock
/// ticks. Idle and iowait are unused capacity; guest time is already part
/// of user and nice, so it is not added again.
pub fn host_cpu(proc_stat: &str) -> Result<CpuReading> {
    let line = proc_stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some("cpu"))
        .context("/proc/stat: no aggregate cpu line")?;
    let fields = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(str::parse::<u64>)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("/proc/stat: bad cpu line {line:?}"))?;
    ensure!(fields.len() >= 4, "/proc/stat: short cpu line {line:?}");
    let idle = fields[3] + fields.get(4).copied().unwrap_or(0);
    let total: u64 = fields.iter().sum();
    Ok(CpuReading {
        used: total - idle,
        capacity: total,
    })
}

/// `usage_usec` from a cgroup v2 `cpu.stat`: the CPU time of every task
/// that ran in the cgroup or its descendants.
pub fn cgroup_usage_usec(cpu_stat: &str) -> Result<u64> {
    let value = cpu_stat
        .lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .context("cpu.stat: no usage_usec (not a cgroup v2 cpu.stat?)")?;
    value
        .trim()
        .parse()
        .with_context(|| format!("cpu.stat: bad usage_usec {value:?}"))
}

/// The fields of /proc/PID/stat the agent needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcStat {
    /// utime + stime, clock ticks.
    pub cpu_ticks: u64,
    /// Clock ticks after boot: tells a reused pid from the process that had it.
    pub start_time: u64,
}

/// Parses /proc/PID/stat. The command name is in parentheses and may hold
/// spaces and parentheses itself, so the fields are counted from the last
/// `)`.
pub fn proc_stat(stat: &str) -> Result<ProcStat> {
    let after_comm = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .context("/proc/PID/stat: no command name")?;
    // Field 3 (state) is the first after the name: utime is field 14.
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let field = |n: usize| -> Result<u64> {
        let text = fields
            .get(n - 3)
            .with_context(|| format!("/proc/PID/stat: no field {n}"))?;
        text.parse()
            .with_context(|| format!("/proc/PID/stat: bad field {n} {text:?}"))
    };
    Ok(ProcStat {
        cpu_ticks: field(14)? + field(15)?,
        start_time: field(22)?,
    })
}

/// CPU ticks of a fixed set of processes, summed over the intervals each
/// was seen in: a process that exits takes its past ticks with it from
/// /proc, but not from this total, which therefore never goes back.
#[derive(Debug)]
pub struct PidSetCpu {
    /// The processes still measured, as last seen.
    last: HashMap<u32, ProcStat>,
    ticks: u64,
}

impl PidSetCpu {
    pub fn new(first: impl IntoIterator<Item = (u32, ProcStat)>) -> Self {
        PidSetCpu {
            last: first.into_iter().collect(),
            ticks: 0,
        }
    }

    /// Adds each process's ticks since the last call and returns the
    /// total. `read` gives a pid's stat now, None once it is gone. A pid
    /// that is gone, or now names another process, is dropped for good:
    /// that process is not one the operator chose.
    pub fn advance(&mut self, read: impl Fn(u32) -> Option<ProcStat>) -> u64 {
        let mut ticks = 0;
        self.last.retain(|&pid, last| match read(pid) {
            Some(now) if now.start_time == last.start_time => {
                ticks += now.cpu_ticks.saturating_sub(last.cpu_ticks);
                *last = now;
                true
            }
            Some(_) => {
                warn!("pid {pid} is another process now; no longer measured");
                false
            }
            None => {
                info!("pid {pid} exited; no longer measured");
                false
            }
        });
        self.ticks += ticks;
        self.ticks
    }

    pub fn measured(&self) -> usize {
        self.last.len()
    }
}

/// What the agent's CPU figure measures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CpuSource {
    /// The whole host, from /proc/stat.
    Host,
    /// A cgroup v2 directory.
    Cgroup(PathBuf),
    /// These processes (not their children).
    Pids(Vec<u32>),
}

impl std::fmt::Display for CpuSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CpuSource::Host => f.write_str("the host"),
            CpuSource::Cgroup(dir) => write!(f, "cgroup {}", dir.display()),
            CpuSource::Pids(pids) => {
                let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
                write!(f, "pids {}", pids.join(","))
            }
        }
    }
}

/// Turns CPU time used by a cgroup or process set into a reading against
/// wall time on every online CPU, in microseconds.
#[derive(Clone, Copy, Debug)]
pub struct WallCapacity {
    pub cpus: u64,
    pub origin: Instant,
}

impl WallCapacity {
    pub fn of_this_host() -> Result<Self> {
        Ok(WallCapacity {
            cpus: sysconf(libc::_SC_NPROCESSORS_ONLN, "online CPUs")?,
            origin: Instant::now(),
        })
    }

    pub fn reading(&self, used_usec: u64, at: Instant) -> CpuReading {
        let wall_usec = at.saturating_duration_since(self.origin).as_micros() as u64;
        CpuReading {
            used: used_usec,
            capacity: wall_usec * self.cpus,
        }
    }
}

fn sysconf(name: libc::c_int, what: &str) -> Result<u64> {
    // SAFETY: sysconf only reads a system constant.
    let value = unsafe { libc::sysconf(name) };
    u64::try_from(value)
        .ok()
        .filter(|&v| v > 0)
        .with_context(|| format!("sysconf: no count of {what}"))
}

/// Reads one CpuSource. Every read goes back to the files, so a source
/// that cannot be read at startup fails the agent's start.
#[derive(Debug)]
pub struct CpuMeter {
    kind: MeterKind,
    last: CpuReading,
}

#[derive(Debug)]
enum MeterKind {
    Host,
    Cgroup {
        cpu_stat: PathBuf,
        wall: WallCapacity,
    },
    Pids {
        set: PidSetCpu,
        wall: WallCapacity,
        ticks_per_second: u64,
    },
}

impl CpuMeter {
    pub fn new(source: &CpuSource) -> Result<Self> {
        let kind = match source {
            CpuSource::Host => MeterKind::Host,
            CpuSource::Cgroup(dir) => MeterKind::Cgroup {
                cpu_stat: dir.join("cpu.stat"),
                wall: WallCapacity::of_this_host()?,
            },
            CpuSource::Pids(pids) => MeterKind::Pids {
                set: PidSetCpu::new(
                    pids.iter()
                        .map(|&pid| read_proc_stat(pid).map(|s| (pid, s)))
                        .collect::<Result<Vec<_>>>()?,
                ),
                wall: WallCapacity::of_this_host()?,
                ticks_per_second: sysconf(libc::_SC_CLK_TCK, "clock ticks per second")?,
            },
        };
        let mut meter = CpuMeter {
            kind,
            last: CpuReading {
                used: 0,
                capacity: 0,
            },
        };
        meter.last = meter.read()?;
        Ok(meter)
    }

    /// Utilisation since the last call (or since `new`).
    pub fn sample(&mut self) -> Result<u16> {
        let now = self.read()?;
        let permille = now.permille_since(&self.last).unwrap_or(0);
        self.last = now;
        Ok(permille)
    }

    fn read(&mut self) -> Result<CpuReading> {
        match &mut self.kind {
            MeterKind::Host => host_cpu(&read_text(Path::new("/proc/stat"))?),
            MeterKind::Cgroup { cpu_stat, wall } => {
                let usage = cgroup_usage_usec(&read_text(cpu_stat)?)
                    .with_context(|| cpu_stat.display().to_string())?;
                Ok(wall.reading(usage, Instant::now()))
            }
            MeterKind::Pids {
                set,
                wall,
                ticks_per_second,
            } => {
                let ticks = set.advance(|pid| read_proc_stat(pid).ok());
                ensure!(
                    set.measured() > 0,
                    "none of the measured processes runs any more"
                );
                Ok(wall.reading(ticks * 1_000_000 / *ticks_per_second, Instant::now()))
            }
        }
    }
}

fn read_proc_stat(pid: u32) -> Result<ProcStat> {
    let path = PathBuf::from(format!("/proc/{pid}/stat"));
    proc_stat(&read_text(&path)?).with_context(|| path.display().to_string())
}

pub fn read_text(path: &Path) -> Result<String> {
    fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    // ---- /proc/stat -------------------------------------------------------

    const PROC_STAT_1: &str = "\
cpu  1000 50 200 8000 100 10 20 5 40 0
cpu0 500 25 100 4000 50 5 10 3 20 0
cpu1 500 25 100 4000 50 5 10 2 20 0
intr 123456 0 0
ctxt 987654
btime 1700000000
";

    const PROC_STAT_2: &str = "\
cpu  1300 50 300 8500 100 10 20 5 100 0
cpu0 650 25 150 4250 50 5 10 3 50 0
cpu1 650 25 150 4250 50 5 10 2 50 0
ctxt 987999
";

    #[test]
    fn host_cpu_counts_idle_and_iowait_as_unused_and_guest_once() {
        let r = host_cpu(PROC_STAT_1).unwrap();
        // user+nice+system+irq+softirq+steal; guest (40) is inside user.
        assert_eq!(r.used, 1000 + 50 + 200 + 10 + 20 + 5);
        assert_eq!(r.capacity, r.used + 8000 + 100);
    }

    #[test]
    fn host_utilisation_is_over_all_cores() {
        let (a, b) = (
            host_cpu(PROC_STAT_1).unwrap(),
            host_cpu(PROC_STAT_2).unwrap(),
        );
        // 400 busy ticks (300 user + 100 system) out of 900.
        assert_eq!(b.permille_since(&a), Some(444));
        assert_eq!(a.permille_since(&a), None, "no time elapsed");
    }

    #[test]
    fn old_kernels_short_cpu_lines_and_garbage() {
        let r = host_cpu("cpu  10 0 10 80\n").unwrap();
        assert_eq!((r.used, r.capacity), (20, 100));
        assert!(host_cpu("cpu0 1 2 3 4\n").is_err(), "per-CPU lines only");
        assert!(host_cpu("cpu  1 2 3\n").is_err());
        assert!(host_cpu("cpu  1 2 x 4\n").is_err());
    }

    // ---- readings ---------------------------------------------------------

    #[test]
    fn utilisation_rounds_clamps_and_tolerates_a_reset_counter() {
        let at = |used, capacity| CpuReading { used, capacity };
        assert_eq!(at(1, 3).permille_since(&at(0, 0)), Some(333));
        assert_eq!(at(2, 3).permille_since(&at(0, 0)), Some(667));
        // Sampling jitter can make used outrun wall time a little.
        assert_eq!(at(1010, 1000).permille_since(&at(0, 0)), Some(1000));
        assert_eq!(at(5, 2000).permille_since(&at(900, 1000)), Some(0));
        assert_eq!(at(5, 500).permille_since(&at(0, 1000)), None);
    }

    // ---- cgroup -----------------------------------------------------------

    const CPU_STAT_1: &str = "\
usage_usec 1500000
user_usec 1000000
system_usec 500000
nr_periods 0
nr_throttled 0
throttled_usec 0
";

    const CPU_STAT_2: &str = "\
usage_usec 2100000
user_usec 1400000
system_usec 700000
nr_periods 0
nr_throttled 0
throttled_usec 0
";

    #[test]
    fn cgroup_usage_is_read_from_cpu_stat() {
        assert_eq!(cgroup_usage_usec(CPU_STAT_1).unwrap(), 1_500_000);
        // The per-mode lines must not be taken for the total.
        assert_eq!(cgroup_usage_usec("user_usec 7\nusage_usec 9\n").unwrap(), 9);
        assert!(cgroup_usage_usec("user_usec 7\nsystem_usec 2\n").is_err());
        assert!(cgroup_usage_usec("usage_usec lots\n").is_err());
    }

    #[test]
    fn cgroup_utilisation_is_usage_over_wall_time_on_every_cpu() {
        let origin = Instant::now();
        let wall = WallCapacity { cpus: 4, origin };
        let a = wall.reading(
            cgroup_usage_usec(CPU_STAT_1).unwrap(),
            origin + Duration::from_secs(1),
        );
        let b = wall.reading(
            cgroup_usage_usec(CPU_STAT_2).unwrap(),
            origin + Duration::from_millis(1500),
        );
        // 600 ms of CPU in 500 ms on 4 CPUs: 30 %.
        assert_eq!(b.permille_since(&a), Some(300));
        // The same usage on 1 CPU would be 120 %: capped.
        let one = WallCapacity { cpus: 1, origin };
        let (a, b) = (
            one.reading(1_500_000, origin + Duration::from_secs(1)),
            one.reading(2_100_000, origin + Duration::from_millis(1500)),
        );
        assert_eq!(b.permille_since(&a), Some(1000));
    }

    // ---- /proc/PID/stat ---------------------------------------------------

    /// A command name with spaces and parentheses, as `prctl` allows.
    const PID_STAT: &str = "4242 (my (odd) cmd) S 1 4242 4242 0 -1 4194560 \
        2718 0 3 0 150 73 9 4 20 0 3 0 123456 5000000 300 \
        18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";

    #[test]
    fn pid_stat_counts_fields_after_the_last_parenthesis() {
        assert_eq!(
            proc_stat(PID_STAT).unwrap(),
            ProcStat {
                cpu_ticks: 150 + 73,
                start_time: 123456
            },
            "children's cutime/cstime (9, 4) are not counted"
        );
        assert!(proc_stat("4242 (cut short) S 1 2 3").is_err());
        assert!(proc_stat("no name at all").is_err());
    }

    fn stat(cpu_ticks: u64, start_time: u64) -> ProcStat {
        ProcStat {
            cpu_ticks,
            start_time,
        }
    }

    #[test]
    fn a_pid_set_sums_its_processes_and_keeps_what_an_exited_one_used() {
        let mut set = PidSetCpu::new([(10, stat(100, 1)), (20, stat(1000, 2))]);
        let now = HashMap::from([(10, stat(130, 1)), (20, stat(1050, 2))]);
        assert_eq!(set.advance(|pid| now.get(&pid).copied()), 80);
        // 20 exits: the total keeps its 50 ticks and goes on with 10's.
        let now = HashMap::from([(10, stat(140, 1))]);
        assert_eq!(set.advance(|pid| now.get(&pid).copied()), 90);
        assert_eq!(set.measured(), 1);
        // 20 comes back as an unrelated process: not measured.
        let now = HashMap::from([(10, stat(150, 1)), (20, stat(5, 9))]);
        assert_eq!(set.advance(|pid| now.get(&pid).copied()), 100);
    }

    #[test]
    fn a_reused_pid_is_dropped_not_counted() {
        let mut set = PidSetCpu::new([(10, stat(100, 1))]);
        assert_eq!(set.advance(|_| Some(stat(500, 7))), 0);
        assert_eq!(set.measured(), 0);
        assert_eq!(set.advance(|_| Some(stat(900, 7))), 0);
    }

    #[test]
    fn pid_ticks_become_microseconds_against_wall_time() {
        let origin = Instant::now();
        let wall = WallCapacity { cpus: 2, origin };
        let ticks_per_second = 100;
        let usec = |ticks: u64| ticks * 1_000_000 / ticks_per_second;
        let a = wall.reading(usec(0), origin);
        // 25 ticks = 250 ms of CPU in 500 ms on 2 CPUs.
        let b = wall.reading(usec(25), origin + Duration::from_millis(500));
        assert_eq!(b.permille_since(&a), Some(250));
    }

    fn process_cpu_time() -> Duration {
        let mut t = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: t is a valid timespec to write to.
        assert_eq!(
            unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) },
            0
        );
        Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
    }

    #[test]
    fn the_pid_meter_measures_this_process() {
        let started = Instant::now();
        let mut meter = CpuMeter::new(&CpuSource::Pids(vec![std::process::id()])).unwrap();
        // Spin for an amount of CPU, not of wall time, so that a loaded
        // machine cannot make the test fail.
        let spun = process_cpu_time() + Duration::from_millis(200);
        let mut spin = 0u64;
        while process_cpu_time() < spun {
            spin = std::hint::black_box(spin.wrapping_add(1));
        }
        let permille = meter.sample().unwrap();
        let wall = started.elapsed();
        let cpus = WallCapacity::of_this_host().unwrap().cpus;
        // At least the 200 ms spun (less two 10 ms ticks of rounding) over
        // at most `wall` on every CPU; other tests' threads only add.
        let floor = 180.0 / (wall.as_secs_f64() * 1000.0 * cpus as f64) * 1000.0;
        assert!(
            f64::from(permille) >= floor.floor(),
            "{permille} ‰, expected at least {floor:.0} ‰ ({wall:?} on {cpus} CPUs)"
        );
    }

    #[test]
    fn a_meter_on_a_missing_source_fails_at_once() {
        let missing = CpuSource::Cgroup("/nonexistent/redirector-agent".into());
        assert!(CpuMeter::new(&missing).is_err());
        assert!(CpuMeter::new(&CpuSource::Pids(vec![u32::MAX])).is_err());
        assert!(CpuMeter::new(&CpuSource::Host).is_ok());
    }

}
