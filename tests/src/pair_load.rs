//! The gateway pair under load, the scenario the pair tests assert on and
//! `bench pair` measures: two redirectord (synced or not) under keepalived,
//! 100 kept connections pinned to region1 (then new flows sent to
//! region2), 100 pinned to region2, and a new-connection loop; gateway A
//! killed as a host dies and revived, `kills` times.

use std::time::Duration;

use anyhow::Result;

use crate::{
    client::{Kept, KeptReport, Measurement, Options},
    lab::{Lab, LabOptions, PairOptions, Side},
    netns::unique_name,
};

/// Kept connections per region.
pub const KEPT_PER_REGION: usize = 100;

pub struct PairRun {
    pub kept: KeptReport,
    /// Outages of new connections (T_un), one per transition that had one.
    pub outages: Vec<Duration>,
    pub requests: u64,
    pub failed: u64,
    /// Master changes keepalived logged while nothing was killed (a
    /// stable advertisement interval has none).
    pub spurious_transitions: usize,
    /// Kill to gateway B holding the addresses, per kill.
    pub takeovers: Vec<Duration>,
}

pub struct PairLoad {
    pub sync: bool,
    /// keepalived's advertisement interval.
    pub advert: Duration,
    pub kills: usize,
    /// Under load before the first kill, counting spurious transitions.
    pub calm: Duration,
}

/// A lab with the pair built, both daemons and both keepalived started,
/// gateway A master.
pub fn start(sync: bool, advert: Duration, prefix: &str) -> Result<Lab> {
    let options = LabOptions { regions: 2, pair: Some(PairOptions { sync, sync_key: true }), ..LabOptions::default() };
    let mut lab = Lab::new(&unique_name(prefix), options)?;
    lab.start_daemon()?;
    lab.peer().start()?;
    lab.start_keepalived(Side::A, advert)?;
    lab.start_keepalived(Side::B, advert)?;
    lab.wait_master(Side::A, Duration::from_secs(10))?;
    Ok(lab)
}

pub fn run(load: &PairLoad) -> Result<PairRun> {
    let mut lab = start(load.sync, load.advert, "rdp")?;
    let set_active = |lab: &Lab, args: &[&str]| -> Result<()> {
        for side in [Side::A, Side::B] {
            lab.pair_daemon(side).ctl_ok(args)?;
        }
        Ok(())
    };
    set_active(&lab, &["set-active", "region1"])?;
    let on_region1 = Kept::open(&lab.topo.client, lab.vip(), KEPT_PER_REGION, Duration::from_millis(250))?;
    set_active(&lab, &["set-active", "--auto"])?;
    let on_region2 = Kept::open(&lab.topo.client, lab.vip(), KEPT_PER_REGION, Duration::from_millis(250))?;
    let measurement = Measurement::start(&lab.topo.client, lab.vip(), Options::default());
    let transitions_before = lab.master_transitions()?;
    std::thread::sleep(load.calm.max(Duration::from_secs(1)));
    let spurious_transitions = lab.master_transitions()? - transitions_before;

    let mut takeovers = Vec::new();
    for _ in 0..load.kills {
        let killed = std::time::Instant::now();
        lab.kill_gateway(Side::A)?;
        lab.wait_master(Side::B, Duration::from_secs(10))?;
        takeovers.push(killed.elapsed());
        std::thread::sleep(Duration::from_secs(1));
        lab.revive_gateway(Side::A, load.advert)?;
        lab.wait_master(Side::A, Duration::from_secs(10))?;
        std::thread::sleep(Duration::from_secs(1));
    }

    let report = measurement.stop()?;
    let mut kept = on_region1.close();
    kept.merge(on_region2.close());
    Ok(PairRun {
        outages: report.outages.iter().map(|o| o.t_un()).collect(),
        requests: report.requests(),
        failed: report.failures,
        kept,
        spurious_transitions,
        takeovers,
    })
}
