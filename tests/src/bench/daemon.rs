//! redirectord's own costs: CPU while health-checking three regions at a
//! 10 ms interval (an HTTP and a heartbeat check each: 600 probes/s), and
//! the time from a decision to the data plane map write, over repeated
//! switches.

use std::{fs, thread, time::Duration};

use anyhow::{Context, Result};

use super::{machine, median, write_result};
use crate::{
    lab::{Lab, LabOptions},
    netns::unique_name,
};

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which may hold spaces: ") S ppid ..."
    let rest = stat.rsplit_once(')').context("malformed stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Ok(fields[11].parse::<u64>()? + fields[12].parse::<u64>()?)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

pub fn run(args: &[String]) -> Result<()> {
    let quick = args.iter().any(|a| a == "--quick");
    let (window, switches) = if quick { (Duration::from_secs(2), 10) } else { (Duration::from_secs(10), 100) };
    let options = LabOptions {
        heartbeat: true,
        interval_ms: 10,
        timeout_ms: 10,
        ..Default::default()
    };
    let mut lab = Lab::new(&unique_name("rdb"), options)?;
    lab.start_daemon()?;
    let pid = lab.daemon_pid().context("daemon not running")?;
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;

    let before = cpu_ticks(pid)?;
    thread::sleep(window);
    let cpu = (cpu_ticks(pid)? - before) as f64 / ticks_per_second / window.as_secs_f64();

    for i in 0..switches {
        let region = if i % 2 == 0 { "region3" } else { "region1" };
        lab.ctl_ok(&["set-active", region])?;
        // Switches closer than the bank-reuse grace (5 ms) wait for it:
        // pace them as failovers are, far apart.
        thread::sleep(Duration::from_millis(20));
    }
    let events: Vec<redirector::control::Event> = serde_json::from_str(&lab.ctl_ok(&["events", "--json"])?)?;
    let mut writes: Vec<f64> = events
        .iter()
        .filter(|e| e.why.starts_with("set-active"))
        .filter_map(|e| e.map_write_us)
        .collect();
    anyhow::ensure!(!writes.is_empty(), "no map write recorded");
    writes.sort_by(|a, b| a.total_cmp(b));
    let p50 = median(&mut writes.clone());

    let report = format!(
        "# redirectord: CPU and decision → map write\n\n\
         Machine: {}\n\n\
         | measure | value |\n|---|---:|\n\
         | CPU, 3 regions × (HTTP + heartbeat) checks every 10 ms, over {:?} | {:.1} % of one core |\n\
         | decision → map write, p50 over {} switches | {p50:.0} µs |\n\
         | decision → map write, p99 | {:.0} µs |\n\
         | decision → map write, max | {:.0} µs |\n\n\
         The map write is a whole 65 537-slot selection table into the idle bank, then the flip; \
         timed from the moment the triggering input (probe result or command) reached the \
         controller. Switches are 20 ms apart: a switch within 5 ms of the previous one waits \
         out the bank-reuse grace first.\n",
        machine(),
        window,
        cpu * 100.0,
        writes.len(),
        percentile(&writes, 0.99),
        writes.last().unwrap(),
    );
    println!("{report}");
    println!("written to {}", write_result("daemon", &report)?.display());
    Ok(())
}
