//! The gateway pair, as deployed: two redirectord with the same services,
//! syncing flows, keepalived (VRRP) moving the shared addresses. The
//! master dies as a host does; the backup carries every established flow
//! on. Without the sync, the same failure breaks the connections a fresh
//! selection would send elsewhere.

use std::time::Duration;

use redirector_tests::{
    bench::percentile,
    lab::body,
    netns::require_root,
    pair_load::{run, PairKind, PairLoad, KEPT_PER_REGION},
};

/// The advertisement interval the pair runs with (dist/keepalived/).
const ADVERT: Duration = Duration::from_millis(100);

#[test]
fn the_backup_carries_every_established_flow_on_when_the_master_dies_and_back() {
    require_root();
    let run = run(&PairLoad { kind: PairKind::Redirector { sync: true }, advert: ADVERT, kills: 5, calm: Duration::from_secs(1) }).unwrap();
    let kept = &run.kept;
    assert_eq!(kept.first_answers.get(&body(1)), Some(&KEPT_PER_REGION), "{:?}", kept.first_answers);
    assert_eq!(kept.first_answers.get(&body(2)), Some(&KEPT_PER_REGION), "{:?}", kept.first_answers);
    assert!(kept.broken.is_empty(), "{} broken: {:?}", kept.broken.len(), kept.broken);
    assert!(kept.moved.is_empty(), "{:?}", kept.moved);
    assert_eq!(run.takeovers.len(), 5);
    let mut outages = run.outages.clone();
    outages.sort();
    println!(
        "{} kept connections, {} requests, none broken; new connections: {} requests, {} failed, outages {outages:?}, takeovers {:?}",
        2 * KEPT_PER_REGION,
        kept.requests,
        run.requests,
        run.failed,
        run.takeovers
    );
    if let Some(worst) = outages.last() {
        println!("outage p50 {:?}, p99 {:?}", percentile(&outages, 0.5), percentile(&outages, 0.99));
        assert!(*worst < Duration::from_secs(3), "an outage of {worst:?}");
    }
}

#[test]
fn without_sync_the_backup_breaks_the_connections_a_fresh_selection_moves() {
    require_root();
    let run = run(&PairLoad { kind: PairKind::Redirector { sync: false }, advert: ADVERT, kills: 1, calm: Duration::from_secs(1) }).unwrap();
    let broken = run.kept.broken.len();
    println!("without sync: {broken} of {} kept connections broken", 2 * KEPT_PER_REGION);
    assert!(broken >= KEPT_PER_REGION * 9 / 10, "{broken} broken: {:?}", run.kept.broken);
}
