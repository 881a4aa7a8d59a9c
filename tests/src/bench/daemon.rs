//! redirectord's own costs: CPU while health-checking three regions at a
//! 10 ms interval (an HTTP and a heartbeat check each: 600 probes/s), the
//! time from a decision to the data plane map write, and how quickly it
//! answers an operator, over repeated switches; with an empty flow table,
//! then a full one (the sweep must not hold the controller back).

use std::{
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use redirector::dataplane::flow_table::monotonic_ns;
use redirector_common::FLOW_TABLE_SIZE;

use super::{machine, percentile, write_result, CpuMeter};
use crate::{
    lab::{Lab, LabOptions},
    netns::unique_name,
};

/// Flow entries the full-table phase writes: the table's size less a
/// margin, as the LRU may evict before it is completely full.
fn full_table(flow_table_size: u32) -> u32 {
    flow_table_size - flow_table_size / 20
}

/// What one phase of the benchmark measured.
struct Phase {
    cpu_percent: f64,
    /// Decision → map write, µs, sorted.
    writes: Vec<f64>,
    /// `redirectorctl set-active` from start to answer, ms, sorted.
    round_trips: Vec<f64>,
}

fn measure(lab: &Lab, window: Duration, switches: usize) -> Result<Phase> {
    let pid = lab.daemon_pid().context("daemon not running")?;
    let meter = CpuMeter::start(pid)?;
    thread::sleep(window);
    let cpu_percent = meter.percent()?;

    let events_before = set_active_writes(lab)?.len();
    let mut round_trips = Vec::new();
    for i in 0..switches {
        let region = if i % 2 == 0 { "region3" } else { "region1" };
        let started = Instant::now();
        lab.ctl_ok(&["set-active", region])?;
        round_trips.push(started.elapsed().as_secs_f64() * 1e3);
        // Switches closer than the bank-reuse grace (5 ms) wait for it:
        // pace them as failovers are, far apart.
        thread::sleep(Duration::from_millis(20));
    }
    let mut writes = set_active_writes(lab)?.split_off(events_before);
    anyhow::ensure!(!writes.is_empty(), "no map write recorded");
    writes.sort_by(|a, b| a.total_cmp(b));
    round_trips.sort_by(|a, b| a.total_cmp(b));
    Ok(Phase { cpu_percent, writes, round_trips })
}

/// Decision → map write of every `set-active` in the event log, oldest first.
fn set_active_writes(lab: &Lab) -> Result<Vec<f64>> {
    let events: Vec<redirector_proto::control::Event> = serde_json::from_str(&lab.ctl_ok(&["events", "--json"])?)?;
    Ok(events
        .iter()
        .filter(|e| e.why.starts_with("set-active"))
        .filter_map(|e| e.map_write_us)
        .collect())
}

/// Fills the lab's flow table and times the sweep the daemon runs every
/// sample, in ms, sorted.
fn fill_flow_table(lab: &Lab, entries: u32) -> Result<Vec<f64>> {
    let mut table = lab.fill_flow_table(entries)?;
    let mut sweeps = Vec::new();
    for _ in 0..5 {
        let sweep = table.sweep(monotonic_ns())?;
        anyhow::ensure!(sweep.entries >= entries as usize * 9 / 10, "only {} of {entries} entries read", sweep.entries);
        sweeps.push(sweep.took.as_secs_f64() * 1e3);
    }
    sweeps.sort_by(|a, b| a.total_cmp(b));
    Ok(sweeps)
}

/// `[--quick] [--flow-table-size N]`
pub fn run(args: &[String]) -> Result<()> {
    let quick = args.iter().any(|a| a == "--quick");
    let size: u32 = match args.iter().position(|a| a == "--flow-table-size") {
        Some(i) => args.get(i + 1).context("--flow-table-size N")?.parse().context("--flow-table-size N")?,
        None => FLOW_TABLE_SIZE,
    };
    let (window, switches) = if quick { (Duration::from_secs(2), 10) } else { (Duration::from_secs(10), 100) };
    let options = LabOptions {
        heartbeat: true,
        interval_ms: 10,
        timeout_ms: 10,
        flow_table_size: Some(size),
        ..Default::default()
    };
    let mut lab = Lab::new(&unique_name("rdb"), options)?;
    lab.start_daemon()?;
    let empty = measure(&lab, window, switches)?;
    let full_table = full_table(size);
    let sweeps = fill_flow_table(&lab, full_table)?;
    let full = measure(&lab, window, switches)?;

    let row = |what: &str, value: &dyn Fn(&Phase) -> String| format!("| {what} | {} | {} |\n", value(&empty), value(&full));
    let report = format!(
        "# redirectord: CPU and decision → map write\n\n\
         Machine: {}\n\n\
         | measure | empty flow table | {full_table} flow entries (`flow_table_size` {size}) |\n|---|---:|---:|\n\
         {}{}{}{}{}{}{}\n\
         CPU: 3 regions × (HTTP + heartbeat) checks every 10 ms, over {window:?}, with the flow \
         table swept every second (`balance.sample_ms`, the default). One sweep of the full \
         table (batched reads, counting and expiry): median {:.0} ms, max {:.0} ms of 5; it runs \
         off the controller's loop.\n\n\
         The map write is a whole 65 537-slot selection table into the idle bank, then the flip; \
         timed from the moment the triggering input (probe result or command) reached the \
         controller. The round trip is `redirectorctl set-active` from process start to answer, \
         so it also shows any wait in the controller's queue. Switches are 20 ms apart: a switch \
         within 5 ms of the previous one waits out the bank-reuse grace first.\n",
        machine(),
        row("CPU", &|p| format!("{:.1} % of one core", p.cpu_percent)),
        row(&format!("decision → map write, p50 over {switches} switches"), &|p| format!("{:.0} µs", percentile(&p.writes, 0.5))),
        row("decision → map write, p99", &|p| format!("{:.0} µs", percentile(&p.writes, 0.99))),
        row("decision → map write, max", &|p| format!("{:.0} µs", p.writes.last().unwrap())),
        row("`set-active` round trip, p50", &|p| format!("{:.1} ms", percentile(&p.round_trips, 0.5))),
        row("`set-active` round trip, p99", &|p| format!("{:.1} ms", percentile(&p.round_trips, 0.99))),
        row("`set-active` round trip, max", &|p| format!("{:.1} ms", p.round_trips.last().unwrap())),
        percentile(&sweeps, 0.5),
        sweeps.last().unwrap(),
    );
    println!("{report}");
    let name = if size == FLOW_TABLE_SIZE { "daemon".to_string() } else { format!("daemon-{size}") };
    println!("written to {}", write_result(&name, &report)?.display());
    Ok(())
}
