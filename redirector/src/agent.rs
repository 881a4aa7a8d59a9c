//! redirector-agent's parts: the heartbeat responder, the local service
//! check, and the region's load as the agent reports it (CPU utilisation
//! and established connections).
//!
//! The /proc and cgroup parsers take the file's text, so they are tested
//! with fixed text; the readers around them are thin.

use std::{
    collections::HashMap,
    convert::Infallible,
    fs, io,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use tokio::{
    net::UdpSocket,
    time::{interval, interval_at, MissedTickBehavior},
};
use tracing::{debug, info, warn};

use crate::{
    config::HttpCheck,
    heartbeat::{self, DecodeError, Key, Report, ServiceCheck, MESSAGE_LEN},
    probe,
};

/// The report every reply carries: written by the service check and the
/// load sampler as their results come in, read by the responder, which
/// therefore never waits for either.
#[derive(Clone, Debug, Default)]
pub struct LatestReport(Arc<Mutex<Report>>);

impl LatestReport {
    pub fn get(&self) -> Report {
        *self.lock()
    }

    fn update(&self, change: impl FnOnce(&mut Report)) {
        change(&mut self.lock());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Report> {
        // A writer cannot panic halfway through a field assignment, so a
        // poisoned report is still a whole one.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

// ---------------------------------------------------------------------------
// Heartbeat responder
// ---------------------------------------------------------------------------

/// Requests answered and dropped since the responder started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResponderCounters {
    pub answered: u64,
    /// Wrong length, magic or kind, or a field out of range.
    pub malformed: u64,
    /// A daemon speaking another heartbeat version: worth its own count,
    /// as it means the two ends were upgraded apart.
    pub bad_version: u64,
    /// MAC missing, wrong, or present where no key is configured.
    pub unauthenticated: u64,
    /// Replies the kernel refused to send.
    pub send_errors: u64,
}

impl ResponderCounters {
    fn dropped(&self) -> u64 {
        self.malformed + self.bad_version + self.unauthenticated
    }

    fn since(&self, earlier: &ResponderCounters) -> ResponderCounters {
        ResponderCounters {
            answered: self.answered - earlier.answered,
            malformed: self.malformed - earlier.malformed,
            bad_version: self.bad_version - earlier.bad_version,
            unauthenticated: self.unauthenticated - earlier.unauthenticated,
            send_errors: self.send_errors - earlier.send_errors,
        }
    }
}

impl std::fmt::Display for ResponderCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} answered, {} malformed, {} of another version, {} unauthenticated dropped, {} send errors",
            self.answered, self.malformed, self.bad_version, self.unauthenticated, self.send_errors
        )
    }
}

/// Answers heartbeat requests on one socket with the latest report.
pub struct Responder {
    socket: UdpSocket,
    key: Option<Key>,
    report: LatestReport,
    counters: ResponderCounters,
}

impl Responder {
    pub fn new(socket: UdpSocket, key: Option<Key>, report: LatestReport) -> Self {
        Responder {
            socket,
            key,
            report,
            counters: ResponderCounters::default(),
        }
    }

    pub fn counters(&self) -> ResponderCounters {
        self.counters
    }

    /// Answers until the socket fails. Every `summary_every` it logs what
    /// it dropped in that period, if anything: each drop is only logged at
    /// debug, so a misconfigured daemon would otherwise go unnoticed.
    pub async fn run(&mut self, summary_every: Duration) -> io::Result<Infallible> {
        // One byte more than a heartbeat: a longer datagram must show up as
        // too long, not be truncated into one that decodes.
        let mut buf = [0u8; MESSAGE_LEN + 1];
        let mut summary = interval(summary_every);
        summary.set_missed_tick_behavior(MissedTickBehavior::Delay);
        summary.tick().await;
        let mut last_summary = self.counters;
        loop {
            tokio::select! {
                received = self.socket.recv_from(&mut buf) => {
                    let (len, from) = received?;
                    self.handle(&buf[..len], from).await;
                }
                _ = summary.tick() => {
                    let period = self.counters.since(&last_summary);
                    if period.dropped() > 0 || period.send_errors > 0 {
                        info!("heartbeat in the last {summary_every:?}: {period}");
                    }
                    last_summary = self.counters;
                }
            }
        }
    }

    async fn handle(&mut self, request: &[u8], from: std::net::SocketAddr) {
        let c = &mut self.counters;
        match heartbeat::answer(request, self.key.as_ref(), self.report.get()) {
            Ok(reply) => match self.socket.send_to(&reply, from).await {
                Ok(_) => c.answered += 1,
                Err(e) => {
                    c.send_errors += 1;
                    debug!("heartbeat reply to {from}: {e}");
                }
            },
            Err(e) => {
                *match e {
                    DecodeError::Version(_) => &mut c.bad_version,
                    DecodeError::MissingMac | DecodeError::UnexpectedMac | DecodeError::BadMac => {
                        &mut c.unauthenticated
                    }
                    _ => &mut c.malformed,
                } += 1;
                debug!("heartbeat request from {from} dropped: {e}");
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Local service check
// ---------------------------------------------------------------------------

/// `http://HOST[:PORT][/PATH]`, as the daemon's http checks take it.
pub fn http_check(url: &str, expect_status: u16) -> Result<HttpCheck> {
    HttpCheck::parse(url, expect_status).map_err(anyhow::Error::msg)
}

/// One probe, its result written into the report; logs only changes, as
/// a probe runs every check interval (100 ms by default).
pub async fn check_once(check: &HttpCheck, timeout: Duration, report: &LatestReport) {
    let result = probe::http(check, timeout).await;
    let now = if result.ok {
        ServiceCheck::Ok
    } else {
        ServiceCheck::Failed
    };
    let before = report.get().service;
    report.update(|r| r.service = now);
    match (before, now) {
        (ServiceCheck::Failed, ServiceCheck::Ok) => info!("{}: ok again", check.url),
        (ServiceCheck::None | ServiceCheck::Ok, ServiceCheck::Failed) => warn!(
            "{}: check failed: {}",
            check.url,
            result.error.as_deref().unwrap_or("?")
        ),
        _ => {}
    }
}

/// Probes every `every`, forever, starting a period from now (after the
/// caller's first [`check_once`]). A probe that outlasts the period delays
/// the next one rather than overlapping it.
pub async fn check_service(
    check: HttpCheck,
    every: Duration,
    timeout: Duration,
    report: LatestReport,
) {
    let mut ticks = interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        check_once(&check, timeout, &report).await;
    }
}

// ---------------------------------------------------------------------------
// CPU utilisation
// ---------------------------------------------------------------------------

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

fn read_text(path: &Path) -> Result<String> {
    fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

// ---------------------------------------------------------------------------
// Active connections
// ---------------------------------------------------------------------------

const TCP_ESTABLISHED: &str = "01";

/// ESTABLISHED connections with local port `port` in a /proc/net/tcp or
/// /proc/net/tcp6 table. Lines that do not parse (the header) are skipped.
pub fn established_on_port(table: &str, port: u16) -> u32 {
    let count = table
        .lines()
        .filter(|line| {
            let mut fields = line.split_whitespace();
            let local = fields.nth(1);
            let state = fields.nth(1);
            state == Some(TCP_ESTABLISHED) && local.and_then(local_port) == Some(port)
        })
        .count();
    u32::try_from(count).unwrap_or(u32::MAX)
}

/// The port of an `ADDRESS:PORT` field, both in hex.
fn local_port(field: &str) -> Option<u16> {
    let (_, port) = field.rsplit_once(':')?;
    u16::from_str_radix(port, 16).ok()
}

/// Established connections to the service in this network namespace.
/// IPv4 clients of a service listening on `::` are in tcp6, as mapped
/// addresses, so both tables count; tcp6 is absent without IPv6.
pub fn count_connections(port: u16) -> Result<u32> {
    let v4 = established_on_port(&read_text(Path::new("/proc/net/tcp"))?, port);
    let v6 = match fs::read_to_string("/proc/net/tcp6") {
        Ok(table) => established_on_port(&table, port),
        Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e).context("reading /proc/net/tcp6"),
    };
    Ok(v4.saturating_add(v6))
}

// ---------------------------------------------------------------------------
// Load sampling
// ---------------------------------------------------------------------------

/// Samples CPU and connections into the report about every `every`, on a
/// thread of its own: reading /proc/net/tcp takes time in proportion to
/// the connections, and the responder must not wait for it. Connections
/// are reported at once, CPU after the first period (it needs two
/// readings); drift does not matter, as utilisation is over the time that
/// actually passed.
pub fn spawn_load_sampler(
    mut cpu: CpuMeter,
    service_port: Option<u16>,
    every: Duration,
    report: LatestReport,
) -> io::Result<()> {
    thread::Builder::new()
        .name("load-sampler".into())
        .spawn(move || {
            let mut failing = Failing::default();
            let mut cpu_permille = 0;
            loop {
                let connections = match service_port {
                    Some(port) => failing.note("connections", count_connections(port)),
                    None => 0,
                };
                report.update(|r| {
                    r.cpu_permille = cpu_permille;
                    r.active_connections = connections;
                });
                thread::sleep(every);
                cpu_permille = failing.note("CPU", cpu.sample());
            }
        })
        .map(drop)
}

/// The load sources failing now, so that each failure is logged when it
/// starts and ends rather than twice a second. A failing source reports 0.
#[derive(Default)]
struct Failing(Vec<&'static str>);

impl Failing {
    fn note<T: Default>(&mut self, what: &'static str, result: Result<T>) -> T {
        let was_failing = self.0.contains(&what);
        match result {
            Ok(value) => {
                if was_failing {
                    info!("{what} measured again");
                    self.0.retain(|w| *w != what);
                }
                value
            }
            Err(e) => {
                if !was_failing {
                    warn!("{what} not measured, reporting 0: {e:#}");
                    self.0.push(what);
                }
                T::default()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heartbeat::Verifier;
    use std::net::SocketAddr;

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

    // ---- /proc/net/tcp ----------------------------------------------------

    /// Port 8080 is 1F90. Lines: a listener on 8080, two clients on 8080,
    /// one in TIME_WAIT on 8080, one established on 22, and an outbound
    /// connection *to* 8080 (local port ephemeral).
    const NET_TCP: &str = "\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0000000000000000 100 0 0 10 0
   1: 0201010A:1F90 0200000A:C350 01 00000000:00000000 00:00000000 00000000     0        0 1002 1 0000000000000000 20 4 30 10 -1
   2: 0201010A:1F90 0300000A:C351 01 00000000:00000000 00:00000000 00000000     0        0 1003 1 0000000000000000 20 4 30 10 -1
   3: 0201010A:1F90 0400000A:C352 06 00000000:00000000 03:00000285 00000000     0        0 0 3 0000000000000000
   4: 0201010A:0016 0500000A:D431 01 00000000:00000000 02:0009A2E4 00000000     0        0 1004 2 0000000000000000 20 4 1 10 -1
   5: 0201010A:A1B2 0600000A:1F90 01 00000000:00000000 00:00000000 00000000     0        0 1005 1 0000000000000000 20 4 30 10 -1
";

    const NET_TCP6: &str = "\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2001 1 0000000000000000 100 0 0 10 0
   1: 0000000000000000FFFF00000201010A:1F90 0000000000000000FFFF00000700000A:C353 01 00000000:00000000 00:00000000 00000000     0        0 2002 1 0000000000000000 20 4 30 10 -1
";

    #[test]
    fn only_established_connections_on_the_local_port_count() {
        assert_eq!(established_on_port(NET_TCP, 8080), 2);
        assert_eq!(established_on_port(NET_TCP, 22), 1);
        assert_eq!(established_on_port(NET_TCP, 0xA1B2), 1);
        assert_eq!(established_on_port(NET_TCP, 80), 0);
        assert_eq!(established_on_port(NET_TCP6, 8080), 1);
        assert_eq!(established_on_port("", 8080), 0);
        assert_eq!(established_on_port("garbage\n   7: x:zz 01\n", 8080), 0);
    }

    #[test]
    fn connections_are_counted_in_this_namespace() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let before = count_connections(port).unwrap();
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let _server = listener.accept().unwrap();
        // The accepted end has the local port; the client's end does not.
        assert_eq!(count_connections(port).unwrap(), before + 1);
    }

    // ---- check URL --------------------------------------------------------

    #[test]
    fn check_urls_are_plain_http() {
        let c = http_check("http://10.1.0.2:8080/health?deep=1", 204).unwrap();
        assert_eq!(
            (c.host.as_str(), c.port, c.path.as_str(), c.expect_status),
            ("10.1.0.2", 8080, "/health?deep=1", 204)
        );
        let c = http_check("http://localhost", 200).unwrap();
        assert_eq!((c.port, c.path.as_str()), (80, "/"));
        for bad in [
            "https://x/",
            "http://x:0/",
            "http://:80/",
            "http://u@x/",
            "http://x:y/",
        ] {
            assert!(http_check(bad, 200).is_err(), "{bad}");
        }
    }

    // ---- responder --------------------------------------------------------

    const KEY: &str = "0123456789abcdef0123456789abcdef";

    /// Keys only load from files: one file, once, for every test.
    fn key() -> Key {
        static KEY_ONCE: std::sync::OnceLock<Key> = std::sync::OnceLock::new();
        KEY_ONCE
            .get_or_init(|| {
                let path = std::env::temp_dir()
                    .join(format!("redirector-agent-key-{}", std::process::id()));
                fs::write(&path, KEY).unwrap();
                let key = Key::load(&path).unwrap();
                fs::remove_file(&path).unwrap();
                key
            })
            .clone()
    }

    fn sample_report() -> Report {
        Report {
            service: ServiceCheck::Ok,
            cpu_permille: 321,
            active_connections: 17,
        }
    }

    async fn responder(key: Option<Key>) -> (Responder, SocketAddr) {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let report = LatestReport::default();
        report.update(|r| *r = sample_report());
        (Responder::new(socket, key, report), addr)
    }

    /// Runs `client` against a running responder; returns its result and
    /// the responder's counters afterwards.
    async fn exchange<T>(
        mut responder: Responder,
        client: impl std::future::Future<Output = T>,
    ) -> (T, ResponderCounters) {
        let result = tokio::select! {
            r = responder.run(Duration::from_secs(60)) => panic!("responder ended: {r:?}"),
            t = client => t,
        };
        (result, responder.counters())
    }

    async fn receive(socket: &UdpSocket) -> (SocketAddr, Vec<u8>) {
        let mut buf = [0u8; 128];
        let (len, from) = tokio::time::timeout(Duration::from_secs(2), socket.recv_from(&mut buf))
            .await
            .expect("a reply")
            .unwrap();
        (from, buf[..len].to_vec())
    }

    #[tokio::test]
    async fn the_responder_answers_with_the_latest_report() {
        let (responder, agent) = responder(Some(key())).await;
        let report = responder.report.clone();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut verifier = Verifier::new(agent, Some(key()), 7);
        let ((first, second), counters) = exchange(responder, async {
            client
                .send_to(&verifier.request(Duration::from_millis(1)), agent)
                .await
                .unwrap();
            let (from, reply) = receive(&client).await;
            let first = verifier
                .accept(from, &reply, Duration::from_millis(2))
                .unwrap();
            report.update(|r| r.service = ServiceCheck::Failed);
            client
                .send_to(&verifier.request(Duration::from_millis(3)), agent)
                .await
                .unwrap();
            let (from, reply) = receive(&client).await;
            (
                first,
                verifier
                    .accept(from, &reply, Duration::from_millis(4))
                    .unwrap(),
            )
        })
        .await;
        assert_eq!((first.seq, first.report), (7, sample_report()));
        assert_eq!(second.seq, 8);
        assert_eq!(second.report.service, ServiceCheck::Failed);
        assert_eq!(counters.answered, 2);
    }

    #[tokio::test]
    async fn a_keyed_responder_ignores_requests_without_the_key() {
        let (responder, agent) = responder(Some(key())).await;
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut unkeyed = Verifier::new(agent, None, 100);
        let mut keyed = Verifier::new(agent, Some(key()), 200);
        let (reply, counters) = exchange(responder, async {
            client
                .send_to(&unkeyed.request(Duration::ZERO), agent)
                .await
                .unwrap();
            client
                .send_to(&[0u8; MESSAGE_LEN + 1], agent)
                .await
                .unwrap();
            client
                .send_to(&keyed.request(Duration::ZERO), agent)
                .await
                .unwrap();
            // Loopback keeps order: the first reply is to the last request.
            let (from, reply) = receive(&client).await;
            keyed.accept(from, &reply, Duration::ZERO)
        })
        .await;
        assert_eq!(reply.map(|a| a.seq), Ok(200));
        assert_eq!(
            counters,
            ResponderCounters {
                answered: 1,
                malformed: 1,
                unauthenticated: 1,
                ..ResponderCounters::default()
            }
        );
    }
}
