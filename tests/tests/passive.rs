//! Passive detection with real processes: the data plane tells redirectord
//! of every SYN a region refuses with a reset; enough of them take the
//! region down before its checks notice, and one never does.

use std::{thread, time::Duration};

use redirector_proto::model::RegionStatus;
use redirector_tests::{
    client::{self, Measurement, Options},
    lab::{body, Lab, LabOptions, CLOSED_PORT},
    netns::{require_root, unique_name},
};

fn region_state(lab: &Lab, region: &str) -> RegionStatus {
    lab.status().unwrap().regions.into_iter().find(|r| r.name == region).unwrap().state
}

#[test]
fn a_killed_server_is_taken_down_by_its_refused_syns_before_its_checks_notice() {
    require_root();
    let options = LabOptions { passive: Some(3), ..Default::default() };
    let mut lab = Lab::new(&unique_name("rdpv"), options).unwrap();
    lab.start_daemon().unwrap();
    lab.wait_active("region2", Duration::from_secs(3)).unwrap();
    let client = Measurement::start(&lab.topo.client, lab.vip(), Options::default());
    thread::sleep(Duration::from_millis(300));

    lab.kill_server(2).unwrap();
    lab.wait_active("region1", Duration::from_secs(3)).unwrap();
    thread::sleep(Duration::from_millis(300));
    let report = client.stop().unwrap();
    let t_un = report.max_t_un();
    eprintln!("passive: T_un {t_un:?}, {} of {} requests failed", report.failures, report.requests());
    let down = lab.region_changes("region2").unwrap();
    let why = &down.last().unwrap().why;
    assert!(why.starts_with("passive: 3 SYNs refused by a reset"), "taken down by {why:?}, not by passive detection");
    assert!(t_un < Duration::from_secs(1), "T_un {t_un:?}: {:?}", report.outages);
    assert_eq!(report.answers.last().unwrap().1, body(1));

    // Its checks bring it back once the server is.
    lab.restore_server(2).unwrap();
    lab.wait_active("region2", Duration::from_secs(3)).unwrap();
}

#[test]
fn one_refused_syn_leaves_the_region_up_and_a_threshold_of_them_takes_it_down_until_its_checks_pass() {
    require_root();
    let options = LabOptions { passive: Some(3), closed_service: true, ..Default::default() };
    let mut lab = Lab::new(&unique_name("rdpv"), options).unwrap();
    lab.start_daemon().unwrap();
    lab.wait_active("region2", Duration::from_secs(3)).unwrap();
    let closed = std::net::SocketAddr::new(lab.vip().ip(), CLOSED_PORT);
    let knock = || {
        let _inside = lab.topo.client.enter().unwrap();
        let err = client::get(closed, Duration::from_secs(1)).unwrap_err();
        assert!(format!("{err:#}").contains("refused"), "{err:#}");
    };

    // A client at a port nothing listens on: region2 refuses it, and stays
    // up; the refusal leaves the window before the next ones come.
    knock();
    thread::sleep(Duration::from_millis(1_200));
    assert_eq!(region_state(&lab, "region2"), RegionStatus::Up);
    assert!(lab.region_changes("region2").unwrap().iter().all(|e| !e.why.starts_with("passive")));

    // Three within a second: down, new flows of every service elsewhere.
    knock();
    knock();
    knock();
    lab.wait_active("region1", Duration::from_secs(1)).unwrap();
    let why = lab.region_changes("region2").unwrap().last().unwrap().why.clone();
    assert!(why.starts_with("passive: 3 SYNs refused"), "{why}");
    // Its server never stopped: its checks bring it back (rise = 3 at 100 ms).
    lab.wait_active("region2", Duration::from_secs(2)).unwrap();
}
