//! redirectord with real processes: region servers, agents, the daemon and
//! redirectorctl in namespaces, traffic from the measuring client.

use std::{thread, time::Duration};

use redirector_tests::{
    client::{Measurement, Options},
    lab::{body, wait_for, Lab, LabOptions},
    netns::{require_root, unique_name},
};

fn lab(options: LabOptions) -> Lab {
    require_root();
    let mut lab = Lab::new(&unique_name("rdc"), options).unwrap();
    lab.start_daemon().unwrap();
    lab
}

fn measure(lab: &Lab) -> Measurement {
    Measurement::start(&lab.topo.client, lab.vip(), Options::default())
}

fn wait_active(lab: &Lab, region: &str, limit: Duration) {
    wait_for(limit, || {
        let active = lab.active()?;
        anyhow::ensure!(active == [region], "active {active:?}, waiting for {region}");
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", lab.daemon_log()));
}

#[test]
fn server_killed_moves_new_requests_to_the_next_region_within_a_second_and_back() {
    let mut lab = lab(LabOptions::default());
    wait_active(&lab, "region2", Duration::from_secs(2));
    let client = measure(&lab);
    thread::sleep(Duration::from_millis(500));

    lab.kill_server(2).unwrap();
    wait_active(&lab, "region1", Duration::from_secs(2));
    thread::sleep(Duration::from_millis(500));
    let report = client.stop().unwrap();

    assert!(report.by_body.contains_key(&body(2)) && report.by_body.contains_key(&body(1)), "{:?}", report.by_body);
    let t_un = report.max_t_un();
    eprintln!("requests {} failures {} T_un {t_un:?} by region {:?}", report.requests(), report.failures, report.by_body);
    assert!(t_un < Duration::from_secs(1), "T_un {t_un:?} ≥ 1 s: {:?}", report.outages);
    let last = report.answers.last().unwrap();
    assert_eq!(last.1, body(1), "after the failure region1 answers");

    // Failback (preempt = true): region2 takes new flows again once up.
    lab.restore_server(2).unwrap();
    wait_active(&lab, "region2", Duration::from_secs(2));
    let events = lab.ctl_ok(&["events", "--json"]).unwrap();
    assert!(events.contains("region region2") && events.contains("map_write_us"), "{events}");
    eprintln!("{}", lab.ctl_ok(&["events"]).unwrap());
}
