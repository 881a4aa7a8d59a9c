//! The reference's Table 5.6 re-run on our system: unavailability T_un and
//! success rate per (heartbeat interval T_h, misses n), with the region's
//! HTTP server killed (the reference's checkHTTPServer failure) at least
//! five times per row, failing back in between.

use std::{thread, time::Duration};

use anyhow::{Context, Result};
use plotters::prelude::*;

use super::{machine, percentile, results_dir, spread_phase, write_result, CpuMeter};
use crate::{
    client::{Measurement, Options, Pacing},
    lab::{Failure, Lab, LabOptions},
    netns::unique_name,
};

struct Row {
    interval_ms: u64,
    fall: u32,
    /// The reference's T_un (s) and success rate (%), where it has the row.
    reference: Option<(f64, f64)>,
}

const ROWS: [Row; 7] = [
    Row { interval_ms: 2000, fall: 10, reference: Some((24.72, 91.24)) },
    Row { interval_ms: 2000, fall: 5, reference: Some((9.88, 96.85)) },
    Row { interval_ms: 1000, fall: 5, reference: Some((5.09, 98.66)) },
    Row { interval_ms: 500, fall: 5, reference: Some((3.25, 99.5)) },
    Row { interval_ms: 100, fall: 3, reference: None },
    Row { interval_ms: 50, fall: 3, reference: None },
    Row { interval_ms: 10, fall: 3, reference: None },
];

struct Measured {
    t_un: Vec<Duration>,
    success_rate: f64,
    requests: u64,
    /// redirectord's CPU over the run, % of one core.
    daemon_cpu: f64,
    /// Open loop: the longest time between two requests' starts.
    largest_gap: Duration,
}

fn measure(row: &Row, failures: usize, kind: Failure, pacing: Pacing, timeout_ms: Option<u64>) -> Result<Measured> {
    let timeout_ms = timeout_ms.unwrap_or(row.interval_ms.min(1000));
    let options = LabOptions {
        interval_ms: row.interval_ms,
        fall: row.fall,
        rise: 3,
        timeout_ms,
        // Failures come every few seconds here; the flap limit would hold
        // the failbacks back, which is not what this measures.
        max_switches_per_minute: 1000,
        ..Default::default()
    };
    let mut lab = Lab::new(&unique_name("rdbf"), options)?;
    lab.start_daemon()?;
    let interval = Duration::from_millis(row.interval_ms);
    let verdict = interval * (row.fall + 3) * 2 + Duration::from_secs(5);
    let settle = (interval * 2).max(Duration::from_millis(500));
    // Polling the daemon's status spawns a process every 20 ms: on two
    // cores that would compete with what is measured, so the polls start
    // only once the detection should be over.
    let detection = interval * (row.fall + 1) + Duration::from_millis(timeout_ms);
    lab.wait_active("region2", verdict)?;
    let cpu = CpuMeter::start(lab.daemon_pid().context("daemon not running")?)?;
    let client = Measurement::start(
        &lab.topo.client,
        lab.vip(),
        Options { pacing, max_duration: Duration::from_secs(900), ..Default::default() },
    );
    for i in 0..failures {
        thread::sleep(settle + interval.mul_f64(spread_phase(i)));
        lab.fail(2, kind)?;
        thread::sleep(detection);
        lab.wait_active("region1", verdict)?;
        thread::sleep(settle);
        lab.repair(2, kind)?;
        lab.wait_active("region2", verdict)?;
    }
    thread::sleep(settle);
    let report = client.stop()?;
    let daemon_cpu = cpu.percent()?;
    let mut t_un: Vec<Duration> = report.outages.iter().map(|o| o.t_un()).collect();
    t_un.sort();
    anyhow::ensure!(!t_un.is_empty(), "no outage measured: the failures went unnoticed");
    Ok(Measured {
        t_un,
        success_rate: report.success_rate() * 100.0,
        requests: report.requests(),
        daemon_cpu,
        largest_gap: report.largest_gap,
    })
}

/// `--quick`: the fast rows, twice each. `--row MS`: the rows of that
/// interval only, and `--failures N` of them (the tail of one setting,
/// written to `failover-MSms.md` beside the full table), measured by an
/// open-loop client starting a request every millisecond; `--black-hole`:
/// the region black-holed instead of its server killed
/// (`failover-MSms-black-hole.md`); `--timeout-ms T`: the checks' timeout,
/// min(T_h, 1 s) by default (`failover-MSms-timeout-Tms….md`).
pub fn run(args: &[String]) -> Result<()> {
    let quick = args.iter().any(|a| a == "--quick");
    let value = |flag: &str| -> Result<Option<u64>> {
        match args.iter().position(|a| a == flag) {
            Some(i) => Ok(Some(args.get(i + 1).with_context(|| format!("{flag} takes a number"))?.parse()?)),
            None => Ok(None),
        }
    };
    let only = value("--row")?;
    let timeout_ms = value("--timeout-ms")?;
    anyhow::ensure!(timeout_ms.is_none() || only.is_some(), "--timeout-ms goes with --row MS");
    let (rows, failures): (Vec<&Row>, usize) = if quick {
        (ROWS.iter().filter(|r| r.interval_ms <= 100).collect(), 2)
    } else {
        (ROWS.iter().filter(|r| only.is_none_or(|ms| r.interval_ms == ms)).collect(), 5)
    };
    anyhow::ensure!(!rows.is_empty(), "--row: no row has that interval");
    let failures = value("--failures")?.map_or(failures, |n| n as usize);
    let kind = if args.iter().any(|a| a == "--black-hole") { Failure::BlackHoled } else { Failure::ServerKilled };
    anyhow::ensure!(kind == Failure::ServerKilled || only.is_some(), "--black-hole goes with --row MS");
    // The table re-runs the reference's, with its kind of client; the
    // tail of one setting needs T_un to the millisecond, whatever the
    // requests' timeout.
    let (pacing, client) = match only {
        None => (
            Pacing::Sequential { pause: Duration::from_millis(10) },
            "The measuring client sends its requests one after another, 10 ms apart, each on a new TCP \
             connection with a 200 ms timeout; T_un runs from the end of the last success before a \
             failure to the end of the first success after it.",
        ),
        Some(_) => (
            Pacing::OpenLoop { period: Duration::from_millis(1) },
            "The measuring client starts a request every 1 ms whatever became of the earlier ones (an \
             open loop), each on a new TCP connection with a 200 ms timeout; T_un runs from the start \
             of the last success before a failure to the start of the first success after it; \
             failed requests less than the timeout apart are one outage.",
        ),
    };
    let mut table = String::from(
        "| T_h | n | failures | outages | T_un p50 | T_un p99 | success | requests | redirectord CPU | reference T_un | reference success |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut measured = Vec::new();
    for row in rows {
        eprintln!("T_h = {} ms, n = {}: {failures} failures...", row.interval_ms, row.fall);
        let m = measure(row, failures, kind, pacing, timeout_ms)?;
        let (reference_t_un, reference_success) = match row.reference {
            Some((t, s)) => (format!("{t:.2} s"), format!("{s:.2} %")),
            None => ("—".into(), "—".into()),
        };
        table += &format!(
            "| {} ms | {} | {failures} | {} | {:.0} ms | {:.0} ms | {:.3} % | {} | {:.1} % | {reference_t_un} | {reference_success} |\n",
            row.interval_ms,
            row.fall,
            m.t_un.len(),
            percentile(&m.t_un, 0.5).as_secs_f64() * 1e3,
            percentile(&m.t_un, 0.99).as_secs_f64() * 1e3,
            m.success_rate,
            m.requests,
            m.daemon_cpu,
        );
        measured.push((row, m));
    }
    let suffix = if kind == Failure::BlackHoled { "-black-hole" } else { "" };
    let timeout_suffix = timeout_ms.map(|t| format!("-timeout-{t}ms")).unwrap_or_default();
    let name = only.map_or_else(|| "failover".to_string(), |ms| format!("failover-{ms}ms{timeout_suffix}{suffix}"));
    let plot = results_dir()?.join(format!("{name}.png"));
    draw(&plot, &measured)?;
    let what = match kind {
        Failure::ServerKilled => "Region2's HTTP server is killed (SIGKILL)",
        Failure::BlackHoled => "Region2 is black-holed (nftables drops all it receives: no reply, no reset)",
    };
    let timeout = timeout_ms.map_or_else(|| "min(T_h, 1 s)".to_string(), |t| format!("{t} ms"));
    let report = format!(
        "# Failover: unavailability and success rate (the reference's Table 5.6, re-run)\n\n\
         Machine: {}\n\n\
         Three regions in namespaces, VIP = region2's address, HTTP health check, rise = 3, \
         timeout = {timeout}. {what} at phases spread evenly \
         over the probe interval, then restored after the failover and failed back, {failures} \
         times per row. {client} redirectord's CPU is over the whole run, in % of one core. \
         Reference: OpenFlow switch \
         (Open vSwitch on a Raspberry Pi) and an SDN controller, heartbeats every T_h.\n\n\
         {table}\n![T_un per row]({name}.png)\n\nEvery T_un (ms): {}\n",
        machine(),
        measured
            .iter()
            .map(|(row, m)| format!(
                "{} ms × {}: {}{}",
                row.interval_ms,
                row.fall,
                m.t_un.iter().map(|t| format!("{:.1}", t.as_secs_f64() * 1e3)).collect::<Vec<_>>().join(", "),
                match only {
                    Some(_) => format!(" (largest gap between request starts: {:.1} ms)", m.largest_gap.as_secs_f64() * 1e3),
                    None => String::new(),
                }
            ))
            .collect::<Vec<_>>()
            .join("; ")
    );
    println!("{report}");
    println!("written to {}", write_result(&name, &report)?.display());
    Ok(())
}

/// T_un p50 and p99 per row against the reference's, log scale.
fn draw(path: &std::path::Path, measured: &[(&Row, Measured)]) -> Result<()> {
    let root = BitMapBackend::new(path, (1000, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let labels: Vec<String> = measured.iter().map(|(r, _)| format!("{} ms × {}", r.interval_ms, r.fall)).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption("Failover unavailability T_un (seconds, log scale)", ("sans-serif", 24))
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.5f64..(measured.len() as f64 - 0.5), (0.001f64..100f64).log_scale())?;
    chart
        .configure_mesh()
        .x_labels(measured.len())
        .x_label_formatter(&|x| labels.get(x.round() as usize).cloned().unwrap_or_default())
        .x_desc("heartbeat interval T_h × misses n")
        .y_desc("T_un (s)")
        .draw()?;
    let points = |f: &dyn Fn(&Measured) -> f64| -> Vec<(f64, f64)> {
        measured.iter().enumerate().map(|(i, (_, m))| (i as f64, f(m))).collect()
    };
    chart
        .draw_series(points(&|m| percentile(&m.t_un, 0.5).as_secs_f64()).into_iter().map(|p| Circle::new(p, 6, BLUE.filled())))?
        .label("redirector p50")
        .legend(|(x, y)| Circle::new((x, y), 5, BLUE.filled()));
    chart
        .draw_series(points(&|m| percentile(&m.t_un, 0.99).as_secs_f64()).into_iter().map(|p| TriangleMarker::new(p, 7, RED.filled())))?
        .label("redirector p99")
        .legend(|(x, y)| TriangleMarker::new((x, y), 6, RED.filled()));
    let reference: Vec<(f64, f64)> = measured
        .iter()
        .enumerate()
        .filter_map(|(i, (r, _))| r.reference.map(|(t, _)| (i as f64, t)))
        .collect();
    chart
        .draw_series(reference.into_iter().map(|p| Cross::new(p, 8, BLACK.stroke_width(2))))?
        .label("reference (OpenFlow + SDN controller)")
        .legend(|(x, y)| Cross::new((x, y), 6, BLACK.stroke_width(2)));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
