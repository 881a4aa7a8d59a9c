//! The reference's load-balancing tables (5.7-5.9) re-run, one row per
//! policy: elapsed time, requests, success rate, T_un and each region's
//! share of the measuring client's requests, while the policy's trigger is
//! driven with real traffic in the middle third of the run.
//!
//! Two regions; region2 is preferred (priority 200), region1 takes what
//! spills. The measuring client opens a new connection per request all
//! along, so its answers show where new flows go over time; connections
//! kept open through the run show whether any established flow moved.

use std::{
    collections::BTreeMap,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use plotters::prelude::*;

use super::{machine, results_dir, write_result};
use crate::{
    client::{Kept, Measurement, Options, Pacing, Report, Session},
    lab::{body, Lab, LabOptions},
    netns::unique_name,
};

const TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone, Copy)]
enum Trigger {
    /// Nothing: the weights alone decide.
    None,
    /// Kept connections asking as fast as they can, toward region2.
    Packets,
    /// Connections opened and held until region2 has `count` of them (and
    /// region1 the rest).
    OpenFlows { count: usize },
    /// A busy loop in region2's cgroup.
    BusyCpu,
}

struct Scenario {
    policy: &'static str,
    trigger: Trigger,
    /// Keys of region1 and region2.
    keys: [String; 2],
    /// What the reference measured with its version of this trigger.
    reference: &'static str,
}

fn scenarios(quick: bool) -> Vec<Scenario> {
    // The reference redirected at 1000 active flows.
    let flows = if quick { 100 } else { 1000 };
    vec![
        Scenario {
            policy: "weighted",
            trigger: Trigger::None,
            keys: ["weight = 1".into(), "weight = 1".into()],
            reference: "— (no weights)",
        },
        // The measuring client and the kept connections alone send region2
        // about 1500 packets/s: the watermarks sit above that.
        Scenario {
            policy: "pps",
            trigger: Trigger::Packets,
            keys: [String::new(), "pps = { low = 3000, high = 6000 }".into()],
            reference: "0.5 % of requests failed: flows split mid-connection",
        },
        Scenario {
            policy: "flows",
            trigger: Trigger::OpenFlows { count: 2 * flows },
            keys: [String::new(), format!("flows = {{ low = {}, high = {flows} }}", flows * 9 / 10)],
            reference: "45.8 % / 54.2 % where 50 / 50 was meant",
        },
        Scenario {
            policy: "cpu",
            trigger: Trigger::BusyCpu,
            keys: [String::new(), "cpu = { low = 10, high = 25 }".into()],
            reference: "never fired: the switch saturated first",
        },
    ]
}

struct Measured {
    report: Report,
    switches: usize,
    /// Established connections that changed region or broke.
    moved: usize,
    broken: usize,
    kept: usize,
    /// What the trigger did, in words.
    load: String,
    load_phase: (Duration, Duration),
}

fn measure(scenario: &Scenario, duration: Duration) -> Result<Measured> {
    let options = LabOptions {
        regions: 2,
        heartbeat: matches!(scenario.trigger, Trigger::BusyCpu),
        cgroups: matches!(scenario.trigger, Trigger::BusyCpu),
        policy: scenario.policy,
        region_keys: scenario.keys.to_vec(),
        dwell_ms: 1000,
        // Opening flows fast overshoots the watermark by what opens within
        // one sample.
        sample_ms: if matches!(scenario.trigger, Trigger::OpenFlows { .. }) { 200 } else { 1000 },
        ..LabOptions::default()
    };
    let mut lab = Lab::new(&unique_name("rdbl"), options)?;
    lab.start_daemon()?;
    let first = if scenario.policy == "weighted" { vec!["region1", "region2"] } else { vec!["region2"] };
    lab.wait_new_flows("web", &first, Duration::from_secs(10))?;

    let kept = Kept::open(&lab.topo.client, lab.vip(), 20, Duration::from_millis(100))?;
    let client = Measurement::start(
        &lab.topo.client,
        lab.vip(),
        Options {
            pacing: Pacing::Sequential { pause: Duration::from_millis(5) },
            timeout: Duration::from_millis(500),
            max_duration: duration + Duration::from_secs(60),
            ..Default::default()
        },
    );
    let third = duration / 3;
    thread::sleep(third);
    let load_from = client.elapsed();
    let load = drive(&lab, scenario.trigger, third)?;
    let load_to = client.elapsed();
    thread::sleep(duration.saturating_sub(load_to));
    let report = client.stop()?;
    let kept = kept.close();
    Ok(Measured {
        report,
        switches: lab.switches("web")?.len(),
        moved: kept.moved.len(),
        broken: kept.broken.len(),
        kept: 20,
        load,
        load_phase: (load_from, load_to),
    })
}

/// Drives the trigger for about `length`; what it did.
fn drive(lab: &Lab, trigger: Trigger, length: Duration) -> Result<String> {
    let started = Instant::now();
    Ok(match trigger {
        Trigger::None => {
            thread::sleep(length);
            "none".into()
        }
        Trigger::Packets => {
            let load = Kept::open(&lab.topo.client, lab.vip(), 2, Duration::ZERO)?;
            thread::sleep(length);
            let peak = lab.status()?.regions[1].pps;
            let load = load.close();
            ensure!(load.moved.is_empty() && load.broken.is_empty(), "a load connection moved or broke: {load:?}");
            format!("2 kept connections, {} requests; region2 at {peak:.0} pps", load.requests)
        }
        Trigger::OpenFlows { count } => {
            raise_fd_limit(count as u64 + 1024)?;
            let pause = length / count as u32;
            let mut held = Vec::with_capacity(count);
            for _ in 0..count {
                held.push(Session::open(&lab.topo.client, lab.vip(), TIMEOUT)?);
                thread::sleep(pause.saturating_sub(Duration::from_micros(100)));
            }
            let mut by_region = BTreeMap::<String, usize>::new();
            for session in &mut held {
                *by_region.entry(session.get()?).or_default() += 1;
            }
            let on = |r: u8| by_region.get(&body(r)).copied().unwrap_or(0);
            thread::sleep(length.saturating_sub(started.elapsed()));
            format!(
                "{count} connections held: region2 {} ({:.1} %), region1 {} ({:.1} %)",
                on(2),
                on(2) as f64 * 100.0 / count as f64,
                on(1),
                on(1) as f64 * 100.0 / count as f64
            )
        }
        Trigger::BusyCpu => {
            let busy = lab.burn_cpu(2, length + Duration::from_secs(5))?;
            thread::sleep(length.saturating_sub(Duration::from_millis(300)));
            let cpu = lab.status()?.regions[1].cpu_percent.unwrap_or(0.0);
            drop(busy);
            format!("busy loop in region2's cgroup; region2 at {cpu:.0} % CPU")
        }
    })
}

fn raise_fd_limit(want: u64) -> Result<()> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    limit.rlim_cur = limit.rlim_cur.max(want.min(limit.rlim_max));
    ensure!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } == 0, "raising RLIMIT_NOFILE");
    Ok(())
}

pub fn run(args: &[String]) -> Result<()> {
    let quick = args.iter().any(|a| a == "--quick");
    let duration = Duration::from_secs(if quick { 6 } else { 15 });
    let mut table = String::from(
        "| policy | trigger (middle third) | elapsed | requests | success | T_un max | region1 | region2 | switches | kept connections moved / broken | reference |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    let mut measured = Vec::new();
    for scenario in scenarios(quick) {
        eprintln!("{}...", scenario.policy);
        let m = measure(&scenario, duration).with_context(|| scenario.policy)?;
        let r = &m.report;
        let share = |region: u8| r.by_body.get(&body(region)).copied().unwrap_or(0) as f64 * 100.0 / r.successes.max(1) as f64;
        table += &format!(
            "| {} | {} | {:.1} s | {} | {:.3} % | {:.0} ms | {:.1} % | {:.1} % | {} | {} / {} of {} | {} |\n",
            scenario.policy,
            m.load,
            r.elapsed.as_secs_f64(),
            r.requests(),
            r.success_rate() * 100.0,
            r.max_t_un().as_secs_f64() * 1e3,
            share(1),
            share(2),
            m.switches,
            m.moved,
            m.broken,
            m.kept,
            scenario.reference,
        );
        measured.push((scenario.policy, m));
    }
    draw(&results_dir()?.join("lb.png"), &measured)?;
    let report = format!(
        "# Load balancing: the reference's Tables 5.7-5.9, re-run per policy\n\n\
         Machine: {}\n\n\
         Two regions in namespaces; region2 preferred (priority 200). Each run lasts {} s: a \
         measuring client sends a request every 5 ms on a new TCP connection (500 ms timeout) all \
         along, 20 connections stay open and ask every 100 ms, and the trigger runs in the middle \
         third. The region columns are the measuring client's answers: where new flows went. \
         Dwell 1 s; pps and CPU sampled every 1 s, active flows every 200 ms. A switch is one \
         change of the service's selection table.\n\n{table}\n\
         ![share of new requests answered by region1 over time](lb.png)\n",
        machine(),
        duration.as_secs()
    );
    println!("{report}");
    println!("written to {}", write_result("lb", &report)?.display());
    Ok(())
}

/// Per policy, the share of the measuring client's requests answered by
/// region1 in each 500 ms, with the trigger's phase marked.
fn draw(path: &Path, measured: &[(&str, Measured)]) -> Result<()> {
    let root = BitMapBackend::new(path, (1000, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let end = measured.iter().map(|(_, m)| m.report.elapsed.as_secs_f64()).fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .caption("New requests answered by region1 (%, per 500 ms)", ("sans-serif", 24))
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..end, 0f64..105f64)?;
    chart.configure_mesh().x_desc("seconds").y_desc("% to region1").draw()?;
    let (from, to) = measured[0].1.load_phase;
    chart.draw_series(std::iter::once(Rectangle::new(
        [(from.as_secs_f64(), 0.0), (to.as_secs_f64(), 105.0)],
        BLACK.mix(0.06).filled(),
    )))?;
    let colors = [BLUE, RED, GREEN, MAGENTA];
    for ((policy, m), color) in measured.iter().zip(colors) {
        let mut bins: BTreeMap<u64, (u32, u32)> = BTreeMap::new();
        for (at, answer) in &m.report.answers {
            let bin = bins.entry(at.as_millis() as u64 / 500).or_default();
            bin.1 += 1;
            if *answer == body(1) {
                bin.0 += 1;
            }
        }
        let points: Vec<(f64, f64)> = bins
            .iter()
            .map(|(bin, (one, all))| (*bin as f64 * 0.5 + 0.25, *one as f64 * 100.0 / *all as f64))
            .collect();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(*policy)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
