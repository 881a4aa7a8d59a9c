//! The gateway pair, as deployed: two redirectord with the same services,
//! syncing flows, keepalived (VRRP) moving the shared addresses. The
//! master dies as a host does; the backup carries every established flow
//! on. Without the sync, the same failure breaks the connections a fresh
//! selection would send elsewhere.

use std::time::Duration;

use redirector_tests::{
    client::{Kept, KeptReport, Measurement, Options},
    lab::{body, Lab, LabOptions, PairOptions, Side},
    netns::{require_root, unique_name},
};

/// The advertisement interval the pair runs with.
const ADVERT: Duration = Duration::from_millis(100);

struct Run {
    kept: KeptReport,
    /// Outages of new connections, one per transition that had one.
    outages: Vec<Duration>,
    requests: u64,
    failed: u64,
}

/// A pair under load: 100 kept connections pinned to region1 (then new
/// flows sent to region2), 100 pinned to region2, and a new-connection
/// loop; gateway A killed and revived `kills` times.
fn pair_under_load(sync: bool, kills: usize) -> Run {
    require_root();
    let options = LabOptions { regions: 2, pair: Some(PairOptions { sync, sync_key: true }), ..LabOptions::default() };
    let mut lab = Lab::new(&unique_name("rdp"), options).unwrap();
    lab.start_daemon().unwrap();
    lab.peer().start().unwrap();
    lab.start_keepalived(Side::A, ADVERT).unwrap();
    lab.start_keepalived(Side::B, ADVERT).unwrap();
    lab.wait_master(Side::A, Duration::from_secs(10)).unwrap();

    let set_active = |lab: &Lab, args: &[&str]| {
        for side in [Side::A, Side::B] {
            lab.pair_daemon(side).ctl_ok(args).unwrap();
        }
    };
    set_active(&lab, &["set-active", "region1"]);
    let on_region1 = Kept::open(&lab.topo.client, lab.vip(), 100, Duration::from_millis(250)).unwrap();
    set_active(&lab, &["set-active", "--auto"]);
    let on_region2 = Kept::open(&lab.topo.client, lab.vip(), 100, Duration::from_millis(250)).unwrap();
    let measurement = Measurement::start(&lab.topo.client, lab.vip(), Options::default());
    std::thread::sleep(Duration::from_secs(1));

    for kill in 0..kills {
        lab.kill_gateway(Side::A).unwrap();
        let took = lab.wait_master(Side::B, Duration::from_secs(5)).unwrap();
        println!("kill {kill}: gateway B master after {took:?}");
        std::thread::sleep(Duration::from_secs(1));
        lab.revive_gateway(Side::A, ADVERT).unwrap();
        let took = lab.wait_master(Side::A, Duration::from_secs(10)).unwrap();
        println!("kill {kill}: gateway A back, master after {took:?}");
        std::thread::sleep(Duration::from_secs(1));
    }

    let report = measurement.stop().unwrap();
    let mut kept = on_region1.close();
    let region2 = on_region2.close();
    kept.requests += region2.requests;
    kept.min_requests = kept.min_requests.min(region2.min_requests);
    for (region, n) in region2.first_answers {
        *kept.first_answers.entry(region).or_default() += n;
    }
    kept.moved.extend(region2.moved);
    kept.broken.extend(region2.broken);
    println!("{}", lab.gateway.log().lines().rev().take(5).collect::<Vec<_>>().join("\n"));
    Run {
        outages: report.outages.iter().map(|o| o.t_un()).collect(),
        requests: report.requests(),
        failed: report.failures,
        kept,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[test]
fn the_backup_carries_every_established_flow_on_when_the_master_dies_and_back() {
    let run = pair_under_load(true, 5);
    let kept = &run.kept;
    assert_eq!(kept.first_answers.get(&body(1)), Some(&100), "{:?}", kept.first_answers);
    assert_eq!(kept.first_answers.get(&body(2)), Some(&100), "{:?}", kept.first_answers);
    assert!(kept.broken.is_empty(), "{} broken: {:?}", kept.broken.len(), kept.broken);
    assert!(kept.moved.is_empty(), "{:?}", kept.moved);
    let mut outages = run.outages.clone();
    outages.sort();
    println!(
        "200 kept connections, {} requests, none broken; new connections: {} requests, {} failed, outages {:?}",
        kept.requests, run.requests, run.failed, outages
    );
    if let Some(worst) = outages.last() {
        println!("outage p50 {:?}, p99 {:?}", percentile(&outages, 0.5), percentile(&outages, 0.99));
        assert!(*worst < Duration::from_secs(3), "an outage of {worst:?}");
    }
}

#[test]
fn without_sync_the_backup_breaks_the_connections_a_fresh_selection_moves() {
    let run = pair_under_load(false, 1);
    let kept = &run.kept;
    println!("without sync: {} of 200 kept connections broken", kept.broken.len());
    assert!(kept.broken.len() >= 90, "{} broken: {:?}", kept.broken.len(), kept.broken);
}
