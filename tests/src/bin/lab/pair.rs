//! `cargo xtask lab --pair`: two gateways syncing flows under keepalived,
//! the master killed mid-stream, and the connections that carried on.

use std::{thread, time::Duration};

use anyhow::{bail, Result};
use redirector_tests::{
    client::{Measurement, Options, Session},
    lab::{body, Side},
    pair_load::{self, PairKind},
};

use super::{check_interrupt, step};

/// The advertisement interval `dist/keepalived/` ships.
const ADVERT: Duration = Duration::from_millis(100);
const KEPT: usize = 10;

pub fn demo() -> Result<()> {
    step("building the pair: client, gateways A and B on bridged segments, a sync link, region1-2; keepalived on both")?;
    let mut lab = pair_load::start(PairKind::Redirector { sync: true }, ADVERT, "rdpair")?;
    println!("   gateway A is master (VRRP, advert {ADVERT:?}); both run redirectord with [sync] naming the other");
    println!("{}", lab.ctl_ok(&["status"])?);

    step("kept connections: half pinned to region1 (set-active region1 on both), half to region2 (--auto)")?;
    let mut sessions = Vec::new();
    for (args, region) in [(&["set-active", "region1"][..], 1), (&["set-active", "--auto"][..], 2)] {
        for side in [Side::A, Side::B] {
            lab.pair_daemon(side).ctl_ok(args)?;
        }
        for _ in 0..KEPT {
            let mut session = Session::open(&lab.topo.client, lab.vip(), Duration::from_secs(1))?;
            let first = session.get()?;
            if first != body(region) {
                bail!("a connection opened for region{region} was answered by {first:?}");
            }
            sessions.push((session, region));
        }
    }
    thread::sleep(Duration::from_millis(200));
    let view = lab.pair_daemon(Side::B).status()?.sync.map(|s| s.flows_written).unwrap_or(0);
    println!("   {} connections open through gateway A; gateway B has written {view} of A's flows", sessions.len());

    step("gateway A killed as a host dies (processes SIGKILLed, links down), the measuring client running")?;
    let client = Measurement::start(&lab.topo.client, lab.vip(), Options::default());
    thread::sleep(Duration::from_millis(500));
    lab.kill_gateway(Side::A)?;
    let takeover = lab.wait_master(Side::B, Duration::from_secs(5))?;
    thread::sleep(Duration::from_millis(500));
    let report = client.stop()?;
    check_interrupt()?;
    println!(
        "   gateway B master after {takeover:.0?}; new connections: T_un {:.0?}, {} of {} requests succeeded",
        report.max_t_un(),
        report.successes,
        report.requests()
    );
    println!("\n| connection | pinned to | answered through gateway B |\n|---:|---|---|");
    let mut survived = 0;
    for (i, (session, region)) in sessions.iter_mut().enumerate() {
        let answer = session.get().unwrap_or_else(|e| format!("BROKEN: {e:#}"));
        survived += usize::from(answer == body(*region));
        println!("| {i} | region{region} | {answer} |");
    }
    println!("\n   {survived} of {} kept connections carried on through gateway B", sessions.len());

    step("gateway A back (a rebooted host): it takes the peers' table, is ready, and is master again")?;
    lab.revive_gateway(Side::A, ADVERT)?;
    let back = lab.wait_master(Side::A, Duration::from_secs(10))?;
    let still: usize = sessions.iter_mut().map(|(s, region)| usize::from(s.get().is_ok_and(|b| b == body(*region)))).sum();
    println!("   gateway A master again after {back:.0?}; {still} of {} kept connections answered through it", sessions.len());

    step("summary")?;
    println!("| step | result |\n|---|---|");
    println!("| master killed: gateway B takes the addresses | {takeover:.0?} |");
    println!("| new connections' unavailability T_un | {:.0?} |", report.max_t_un());
    println!("| kept connections carried on by gateway B | {survived} of {} |", sessions.len());
    println!("| gateway A back: master again | {back:.0?}, {still} of {} connections carried on |", sessions.len());
    Ok(())
}
