//! Availability measured the reference's way (its perftest): requests for
//! 60 s with one failure in the middle, ten runs (by default) per detection
//! setting and failure kind; the success rate of each run at its request
//! rate, its T_un, and what that T_un means over a week with one such
//! failure a day.

use std::{thread, time::Duration};

use anyhow::{Context, Result};

use super::{machine, median, spread_phase, write_result, CpuMeter};
use crate::{
    client::{Measurement, Options, Pacing},
    lab::{BfdPeer, Failure, Lab, LabOptions},
    netns::unique_name,
};

/// How regions are watched.
struct Setting {
    name: &'static str,
    what: &'static str,
    interval_ms: u64,
    /// Of the HTTP check and the heartbeat (BFD has none: its detection
    /// time is the multiplier's worth of intervals).
    timeout_ms: u64,
    /// BFD (FRR's bfdd in each region) instead of the HTTP check and the
    /// agent's heartbeat.
    bfd: bool,
    /// `[passive] syn_refused`.
    passive: Option<u32>,
    /// The failures this setting is meant to catch: BFD watches the path
    /// to the region, not its server.
    failures: &'static [Failure],
}

const BOTH: &[Failure] = &[Failure::ServerKilled, Failure::BlackHoled];

const SETTINGS: [Setting; 4] = [
    Setting {
        name: "heartbeat-100",
        what: "HTTP check and agent heartbeat, 100 ms × 3",
        interval_ms: 100,
        timeout_ms: 100,
        bfd: false,
        passive: None,
        failures: BOTH,
    },
    Setting {
        name: "heartbeat-10",
        what: "HTTP check and agent heartbeat, 10 ms × 3, timeout 5 ms",
        interval_ms: 10,
        timeout_ms: 5,
        bfd: false,
        passive: None,
        failures: BOTH,
    },
    Setting {
        name: "bfd-10",
        what: "BFD with FRR's bfdd, 10 ms × 3",
        interval_ms: 10,
        timeout_ms: 10,
        bfd: true,
        passive: None,
        failures: &[Failure::BlackHoled],
    },
    Setting {
        name: "passive",
        what: "passive detection (3 refused SYNs in 1 s) over the 100 ms × 3 checks",
        interval_ms: 100,
        timeout_ms: 100,
        bfd: false,
        passive: Some(3),
        failures: &[Failure::ServerKilled],
    },
];

const FALL: u32 = 3;

struct Run {
    requests: u64,
    failed: u64,
    rate: f64,
    /// Windows of failed requests: one is the failure; more, or none, is
    /// something to look at.
    outages: usize,
    t_un: Duration,
    largest_gap: Duration,
    /// redirectord's CPU while the client ran, % of one core.
    daemon_cpu: f64,
}

impl Run {
    fn success(&self) -> f64 {
        100.0 * (self.requests - self.failed) as f64 / self.requests as f64
    }
}

struct Measured<'a> {
    setting: &'a Setting,
    failure: Failure,
    runs: Vec<Run>,
}

struct Plan {
    runs: usize,
    length: Duration,
    period: Duration,
}

/// One lab per setting; each run strikes region2 once, halfway through,
/// at a phase of the probe interval spread evenly over the runs, and
/// repairs it after the run (so the run holds one failure and no failback).
fn measure<'a>(setting: &'a Setting, plan: &Plan) -> Result<Vec<Measured<'a>>> {
    let options = LabOptions {
        interval_ms: setting.interval_ms,
        fall: FALL,
        rise: 3,
        timeout_ms: setting.timeout_ms,
        heartbeat: !setting.bfd,
        bfd: setting.bfd.then_some(BfdPeer { interval_ms: setting.interval_ms, detect_mult: FALL }),
        passive: setting.passive,
        // One failure a minute, and its repair: no flap limit in the way.
        max_switches_per_minute: 1000,
        ..Default::default()
    };
    let mut lab = Lab::new(&unique_name("rdav"), options)?;
    lab.start_daemon()?;
    // BFD sessions come up at one packet a second before they speed up.
    let verdict = Duration::from_secs(15);
    lab.wait_active("region2", verdict)?;
    let pid = lab.daemon_pid().context("daemon not running")?;
    let interval = Duration::from_millis(setting.interval_ms);
    let mut measured = Vec::new();
    for &failure in setting.failures {
        let mut runs = Vec::new();
        for i in 0..plan.runs {
            eprintln!("{} ({}): run {} of {}", setting.name, failure.describe(), i + 1, plan.runs);
            let cpu = CpuMeter::start(pid)?;
            let client = Measurement::start(
                &lab.topo.client,
                lab.vip(),
                Options {
                    pacing: Pacing::OpenLoop { period: plan.period },
                    max_duration: plan.length,
                    max_requests: u64::MAX,
                    ..Default::default()
                },
            );
            thread::sleep(plan.length / 2 + interval.mul_f64(spread_phase(i)));
            lab.fail(2, failure)?;
            thread::sleep(plan.length.saturating_sub(client.elapsed()));
            let report = client.stop()?;
            let daemon_cpu = cpu.percent()?;
            lab.repair(2, failure)?;
            lab.wait_active("region2", verdict)?;
            runs.push(Run {
                requests: report.requests(),
                failed: report.failures,
                rate: report.requests() as f64 / report.elapsed.as_secs_f64(),
                outages: report.outages.len(),
                t_un: report.outages.iter().map(|o| o.t_un()).sum(),
                largest_gap: report.largest_gap,
                daemon_cpu,
            });
        }
        measured.push(Measured { setting, failure, runs });
    }
    Ok(measured)
}

/// Availability, % of the time, with one failure of `t_un` a day (the
/// same over a day as over a week of them).
fn availability_one_failure_a_day(t_un: Duration) -> f64 {
    100.0 * (1.0 - t_un.as_secs_f64() / 86_400.0)
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

/// `--runs N` (10), `--seconds S` (60), `--period-ms P` (1: a request
/// started every millisecond), `--only NAME` (one setting:
/// heartbeat-100, heartbeat-10, bfd-10, passive).
pub fn run(args: &[String]) -> Result<()> {
    let value = |flag: &str| -> Result<Option<&String>> {
        match args.iter().position(|a| a == flag) {
            Some(i) => Ok(Some(args.get(i + 1).with_context(|| format!("{flag} takes a value"))?)),
            None => Ok(None),
        }
    };
    let number = |flag: &str, default: u64| -> Result<u64> {
        value(flag)?.map_or(Ok(default), |v| v.parse().with_context(|| format!("{flag} {v:?}")))
    };
    let plan = Plan {
        runs: number("--runs", 10)? as usize,
        length: Duration::from_secs(number("--seconds", 60)?),
        period: Duration::from_millis(number("--period-ms", 1)?),
    };
    anyhow::ensure!(plan.runs > 0 && plan.length >= Duration::from_secs(2), "at least one run of 2 s");
    let only = value("--only")?;
    let settings: Vec<&Setting> = SETTINGS.iter().filter(|s| only.is_none_or(|o| o == s.name)).collect();
    anyhow::ensure!(
        !settings.is_empty(),
        "--only: no setting {:?}; known: {}",
        only.unwrap(),
        SETTINGS.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
    );
    let mut measured = Vec::new();
    for setting in settings {
        measured.extend(measure(setting, &plan)?);
    }

    let mut summary = String::from(
        "| detection | failure | runs | requests/s | success min | success median | T_un median | T_un max | a week, one failure a day (T_un max) | redirectord CPU |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut every = String::from(
        "| detection | failure | run | requests | failed | success | outages | T_un (ms) | largest gap between starts (ms) | redirectord CPU |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for m in &measured {
        let mut success: Vec<f64> = m.runs.iter().map(Run::success).collect();
        let mut t_un: Vec<f64> = m.runs.iter().map(|r| r.t_un.as_secs_f64()).collect();
        let mut rate: Vec<f64> = m.runs.iter().map(|r| r.rate).collect();
        let worst = m.runs.iter().map(|r| r.t_un).max().unwrap_or_default();
        let mut cpu: Vec<f64> = m.runs.iter().map(|r| r.daemon_cpu).collect();
        summary += &format!(
            "| {} | {} | {} | {:.0} | {:.4} % | {:.4} % | {:.1} ms | {} ms | {:.6} % | {:.1} % |\n",
            m.setting.what,
            m.failure.describe(),
            m.runs.len(),
            median(&mut rate),
            success.iter().copied().fold(f64::INFINITY, f64::min),
            median(&mut success),
            median(&mut t_un) * 1e3,
            ms(worst),
            availability_one_failure_a_day(worst),
            median(&mut cpu),
        );
        for (i, r) in m.runs.iter().enumerate() {
            every += &format!(
                "| {} | {} | {} | {} | {} | {:.4} % | {} | {} | {} | {:.1} % |\n",
                m.setting.name,
                m.failure.describe(),
                i + 1,
                r.requests,
                r.failed,
                r.success(),
                r.outages,
                ms(r.t_un),
                ms(r.largest_gap),
                r.daemon_cpu,
            );
        }
    }
    let report = format!(
        "# Availability, the reference's way\n\n\
         Machine: {}\n\n\
         Three regions in namespaces, VIP = region2's address, failover by priority. Each run: \
         {} s of requests from the client namespace, each on a new TCP connection with a 200 ms \
         timeout, one started every {} ms whatever became of the others (an open loop); region2 \
         struck once, halfway through, at a phase of the probe interval spread evenly over the \
         runs, and repaired after the run. Success: answered (200) within the timeout. T_un: \
         from the start of the last success before the failure to the start of the first \
         success after it (failed requests less than the timeout apart are one outage; a run's \
         outages are added up); it is measured to within the largest gap between two requests' \
         starts. A week, one failure a day: 1 − T_un / 86 400 s. redirectord's CPU: while the \
         client ran, % of one core (the median of the runs in the summary).\n\n{summary}\n## Every run\n\n{every}",
        machine(),
        plan.length.as_secs(),
        plan.period.as_millis(),
    );
    println!("{report}");
    let name = match only {
        Some(setting) => format!("availability-{setting}"),
        None => "availability".to_string(),
    };
    println!("written to {}", write_result(&name, &report)?.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_failure_a_day_of_t_un_is_its_share_of_the_day() {
        assert!((availability_one_failure_a_day(Duration::from_millis(8640)) - 99.99).abs() < 1e-9);
        assert_eq!(availability_one_failure_a_day(Duration::ZERO), 100.0);
    }
}
