//! The gateway pair under load, the scenario the pair tests assert on and
//! `bench pair` measures: two redirectord (synced or not) under keepalived,
//! or the Linux anchor (nftables NAT, conntrackd), 100 kept connections
//! pinned to region1 (then new flows sent to region2), 100 pinned to
//! region2, and a new-connection loop; gateway A killed as a host dies and
//! revived, `kills` times.

use std::time::Duration;

use anyhow::Result;

use crate::{
    client::{Kept, KeptReport, Measurement, Options},
    lab::{Lab, LabOptions, PairOptions, Side},
    netns::unique_name,
};

/// Kept connections per region.
pub const KEPT_PER_REGION: usize = 100;
/// A kept connection's request waits this long for its answer: TCP rides
/// out a gateway's failover by retransmitting; what breaks a connection is
/// a reset (or a takeover slower than this).
const KEPT_TIMEOUT: Duration = Duration::from_secs(10);

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

/// What forwards on the pair's gateways.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PairKind {
    /// redirectord, with `[sync]` or without.
    Redirector { sync: bool },
    /// nftables DNAT and conntrack, conntrackd syncing (`lab/nat.rs`).
    LinuxNat,
}

pub struct PairLoad {
    pub kind: PairKind,
    /// keepalived's advertisement interval.
    pub advert: Duration,
    pub kills: usize,
    /// Under load before the first kill, counting spurious transitions.
    pub calm: Duration,
}

/// A lab with the pair built, both gateways forwarding as `kind` says,
/// keepalived on both, gateway A master.
pub fn start(kind: PairKind, advert: Duration, prefix: &str) -> Result<Lab> {
    let sync = kind == PairKind::Redirector { sync: true };
    let options = LabOptions {
        regions: 2,
        pair: Some(PairOptions { sync, sync_key: true }),
        // `bench pair` fails a region every few seconds to time the two
        // gateways' verdicts: the flap limit would hold the failbacks.
        max_switches_per_minute: 1000,
        ..LabOptions::default()
    };
    let mut lab = Lab::new(&unique_name(prefix), options)?;
    match kind {
        PairKind::Redirector { .. } => {
            // Both daemons first: each is ready once it has the other's table.
            lab.start_daemon()?;
            lab.peer().start()?;
            lab.start_keepalived(Side::A, advert)?;
            lab.start_keepalived(Side::B, advert)?;
        }
        PairKind::LinuxNat => {
            lab.start_linux_nat(Side::A, advert)?;
            lab.start_linux_nat(Side::B, advert)?;
        }
    }
    lab.wait_master(Side::A, Duration::from_secs(10))?;
    Ok(lab)
}

/// New flows of the service to `region` (1 or 2) on both gateways: an
/// operator's `set-active`, or the anchor's NAT rule.
fn steer(lab: &Lab, kind: PairKind, region: u8) -> Result<()> {
    match kind {
        PairKind::Redirector { .. } => {
            let args: &[&str] = if region == 1 { &["set-active", "region1"] } else { &["set-active", "--auto"] };
            for side in [Side::A, Side::B] {
                lab.pair_daemon(side).ctl_ok(args)?;
            }
            Ok(())
        }
        // Region2's address is the VIP: routed, no rule.
        PairKind::LinuxNat => lab.nat_steer((region == 1).then(|| lab.topo.region("region1").addr)),
    }
}

pub fn run(load: &PairLoad) -> Result<PairRun> {
    let mut lab = start(load.kind, load.advert, "rdp")?;
    steer(&lab, load.kind, 1)?;
    let kept = |lab: &Lab| Kept::open_with_timeout(&lab.topo.client, lab.vip(), KEPT_PER_REGION, Duration::from_millis(250), KEPT_TIMEOUT);
    let on_region1 = kept(&lab)?;
    steer(&lab, load.kind, 2)?;
    let on_region2 = kept(&lab)?;
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
        match load.kind {
            PairKind::Redirector { .. } => lab.revive_gateway(Side::A, load.advert)?,
            PairKind::LinuxNat => lab.revive_linux_nat(Side::A, load.advert)?,
        }
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
