//! `cargo xtask bench pair [--quick]`: the gateway pair's failover, per
//! VRRP advertisement interval, under the pair tests' load (200 kept
//! connections, half pinned to a region that no longer takes new flows,
//! and a new-connection loop): spurious master changes while nothing
//! fails (is the interval stable here?), the kill-to-takeover time, the
//! new connections' outage (T_un) and the kept connections broken, with
//! the sync and without. Then how far apart the two gateways' own health
//! verdicts fall when a region fails: the window in which they disagree.

use std::time::Duration;

use anyhow::{Context, Result};

use super::{percentile, publish};
use crate::{
    lab::{wait_for, Lab, Side},
    netns::require_root,
    pair_load::{self, PairKind, PairLoad, PairRun, KEPT_PER_REGION},
};

pub fn run(args: &[String]) -> Result<()> {
    require_root();
    let quick = args.iter().any(|a| a == "--quick");
    let (adverts, kills, calm, region_failures): (&[u64], usize, u64, usize) =
        if quick { (&[100], 1, 3, 2) } else { (&[1000, 100, 50, 20, 10], 5, 30, 10) };
    let mut rows = Vec::new();
    for &ms in adverts {
        let advert = Duration::from_millis(ms);
        let run = pair_load::run(&PairLoad { kind: PairKind::Redirector { sync: true }, advert, kills, calm: Duration::from_secs(calm) })?;
        eprintln!("bench pair: advert {ms} ms: {} spurious, {} broken", run.spurious_transitions, run.kept.broken.len());
        rows.push((ms, PairKind::Redirector { sync: true }, run));
    }
    let advert = Duration::from_millis(100);
    let calm_1s = Duration::from_secs(1);
    let without = pair_load::run(&PairLoad { kind: PairKind::Redirector { sync: false }, advert, kills: 1, calm: calm_1s })?;
    rows.push((100, PairKind::Redirector { sync: false }, without));
    let anchor = pair_load::run(&PairLoad { kind: PairKind::LinuxNat, advert, kills, calm: calm_1s })?;
    eprintln!("bench pair: keepalived + conntrackd: {} broken", anchor.kept.broken.len());
    rows.push((100, PairKind::LinuxNat, anchor));
    let windows = verdict_windows(region_failures)?;
    publish("bench pair", "pair", &report(&rows, calm, &windows), !quick);
    Ok(())
}

/// Region2's server killed `failures` times with both gateways watching:
/// per failure, how far apart their switches of new flows fell.
fn verdict_windows(failures: usize) -> Result<Vec<Duration>> {
    let mut lab = pair_load::start(PairKind::Redirector { sync: true }, Duration::from_millis(100), "rdbp")?;
    let mut windows = Vec::new();
    for _ in 0..failures {
        for (kill, region) in [(true, "region1"), (false, "region2")] {
            let before = switch_count(&lab)?;
            if kill {
                lab.kill_server(2)?;
            } else {
                lab.restore_server(2)?;
            }
            wait_for(Duration::from_secs(10), || {
                let now = switch_count(&lab)?;
                anyhow::ensure!(now[0] > before[0] && now[1] > before[1], "both gateways to switch to {region}");
                Ok(())
            })?;
            if kill {
                let [a, b] = last_switches(&lab)?;
                windows.push(Duration::from_millis(a.abs_diff(b)));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    windows.sort();
    Ok(windows)
}

fn switch_count(lab: &Lab) -> Result<[usize; 2]> {
    Ok([lab.pair_daemon(Side::A).switches("web")?.len(), lab.pair_daemon(Side::B).switches("web")?.len()])
}

fn last_switches(lab: &Lab) -> Result<[u64; 2]> {
    let last = |side| -> Result<u64> {
        Ok(lab.pair_daemon(side).switches("web")?.last().context("no switch")?.unix_ms)
    };
    Ok([last(Side::A)?, last(Side::B)?])
}

fn report(rows: &[(u64, PairKind, PairRun)], calm: u64, windows: &[Duration]) -> String {
    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1e3);
    let spread = |v: &[Duration]| {
        let mut v = v.to_vec();
        v.sort();
        match v.last() {
            Some(&max) => format!("{} / {} / {}", ms(percentile(&v, 0.5)), ms(percentile(&v, 0.99)), ms(max)),
            None => "none".into(),
        }
    };
    let mut text = format!(
        "## Gateway pair: failover of the gateway itself\n\n\
         keepalived (VRRPv3) moves the shared addresses; gateway A killed as a host dies (processes SIGKILLed, \
         links down) and revived as a rebooted one, then master again, {} kept connections (half pinned to a region \
         that no longer takes new flows) and a new-connection loop (a request every 2 ms, 200 ms timeout) \
         throughout. Spurious: master changes in {calm} s of the same load before any kill.\n\n\
         | advert | gateways | spurious master changes | kills | takeover p50 / p99 / max | new-connection outage p50 / p99 / max | new requests failed | kept connections broken |\n\
         |---:|---|---:|---:|---|---|---:|---:|\n",
        2 * KEPT_PER_REGION
    );
    for (advert, kind, run) in rows {
        text += &format!(
            "| {advert} ms | {} | {} | {} | {} | {} | {} of {} | {} of {} |\n",
            match kind {
                PairKind::Redirector { sync: true } => "redirector, sync on",
                PairKind::Redirector { sync: false } => "redirector, sync off",
                PairKind::LinuxNat => "Linux NAT + conntrackd",
            },
            run.spurious_transitions,
            run.takeovers.len(),
            spread(&run.takeovers),
            spread(&run.outages),
            run.failed,
            run.requests,
            run.kept.broken.len(),
            2 * KEPT_PER_REGION,
        );
    }
    text += &format!(
        "\nThe gateways' own health verdicts (100 ms × 3, each gateway probing on its own): region2's server killed \
         {} times, both switch new flows to region1; they did so {} apart (p50 / p99 / max).\n",
        windows.len(),
        spread(windows)
    );
    text
}
