//! Every kind of region failure is detected and fails over in under a
//! second at the default health settings (100 ms × 3), with three regions,
//! and failback follows the policy; real load through the VIP.

use std::{thread, time::Duration};

use redirector_tests::{
    client::{Measurement, Options},
    lab::{body, Lab, LabOptions},
    netns::{require_root, unique_name},
};

#[derive(Clone, Copy, Debug)]
enum Failure {
    ServerKilled,
    LinkDown,
    BlackHoled,
    /// The HTTP server lives on: the heartbeat check wins.
    AgentKilled,
}

fn inject(lab: &mut Lab, failure: Failure, region: u8) {
    match failure {
        Failure::ServerKilled => lab.kill_server(region),
        Failure::LinkDown => lab.link_down(region),
        Failure::BlackHoled => lab.black_hole(region),
        Failure::AgentKilled => lab.kill_agent(region),
    }
    .unwrap()
}

fn repair(lab: &mut Lab, failure: Failure, region: u8) {
    match failure {
        Failure::ServerKilled => lab.restore_server(region),
        Failure::LinkDown => lab.link_up(region),
        Failure::BlackHoled => lab.lift_black_hole(region),
        Failure::AgentKilled => lab.restore_agent(region),
    }
    .unwrap()
}

/// The VIP of the lab's `web`, or with `ipv6` of its IPv6 twin `web6`
/// (the lab then checks its regions over IPv6).
fn vip(lab: &Lab, ipv6: bool) -> std::net::SocketAddr {
    if ipv6 {
        lab.vip6()
    } else {
        lab.vip()
    }
}

fn fails_over_and_back(failure: Failure) {
    fails_over_and_back_over(failure, false);
}

fn fails_over_and_back_over(failure: Failure, ipv6: bool) {
    require_root();
    let mut lab = Lab::new(&unique_name("rdf"), LabOptions { heartbeat: true, ipv6, ..Default::default() }).unwrap();
    lab.start_daemon().unwrap();
    lab.wait_active("region2", Duration::from_secs(3)).unwrap();
    let vip = vip(&lab, ipv6);
    let client = Measurement::start(&lab.topo.client, vip, Options::default());
    thread::sleep(Duration::from_millis(300));

    inject(&mut lab, failure, 2);
    lab.wait_active("region1", Duration::from_secs(3)).unwrap();
    thread::sleep(Duration::from_millis(300));
    let report = client.stop().unwrap();
    let t_un = report.max_t_un();
    eprintln!("{failure:?}: T_un {t_un:?}, {} of {} requests failed", report.failures, report.requests());
    assert!(t_un < Duration::from_secs(1), "{failure:?}: T_un {t_un:?}: {:?}", report.outages);
    assert_eq!(report.answers.last().unwrap().1, body(1), "{failure:?}");

    // preempt = true: region2 takes new flows again once it is back.
    repair(&mut lab, failure, 2);
    lab.wait_active("region2", Duration::from_secs(3)).unwrap();
    let answer = {
        let _inside = lab.topo.client.enter().unwrap();
        redirector_tests::client::get(vip, Duration::from_secs(1)).unwrap()
    };
    assert_eq!(answer, body(2), "{failure:?}: failback");
}

#[test]
fn server_killed() {
    fails_over_and_back(Failure::ServerKilled);
}

/// The same over IPv6: the client at the IPv6 VIP, the regions checked
/// over IPv6 (HTTP and heartbeat).
#[test]
fn server_killed_over_ipv6() {
    fails_over_and_back_over(Failure::ServerKilled, true);
}

#[test]
fn link_down() {
    fails_over_and_back(Failure::LinkDown);
}

#[test]
fn black_holed_without_reply_or_reset() {
    fails_over_and_back(Failure::BlackHoled);
}

#[test]
fn agent_killed_while_the_server_lives() {
    fails_over_and_back(Failure::AgentKilled);
}

#[test]
fn a_thousand_concurrent_connections_through_the_vip_complete_without_errors() {
    a_thousand_concurrent_connections(false);
}

#[test]
fn a_thousand_concurrent_connections_through_the_ipv6_vip_complete_without_errors() {
    a_thousand_concurrent_connections(true);
}

fn a_thousand_concurrent_connections(ipv6: bool) {
    require_root();
    let mut lab = Lab::new(&unique_name("rdw"), LabOptions { ipv6, ..Default::default() }).unwrap();
    lab.start_daemon().unwrap();
    // Steer to region1: every connection is rewritten by the data plane (to
    // region2, the VIP's owner, plain routing would also deliver).
    lab.ctl_ok(&["set-active", "region1"]).unwrap();
    lab.wait_active("region1", Duration::from_secs(3)).unwrap();
    let url = format!("http://{}/", vip(&lab, ipv6));
    let out = lab
        .topo
        .client
        .exec("sh", &["-c", &format!("ulimit -n $(ulimit -Hn) && wrk -t2 -c1000 -d4s --timeout 4s {url}")])
        .unwrap();
    eprintln!("{out}");
    let requests: u64 = out
        .lines()
        .find_map(|l| l.split_once(" requests in ").map(|(n, _)| n.trim().parse().unwrap()))
        .expect("wrk's summary");
    assert!(requests >= 1000, "{out}");
    assert!(!out.contains("Socket errors"), "connection errors under load:\n{out}");
    assert!(!out.contains("Non-2xx"), "{out}");
    let status = lab.status().unwrap();
    let region1 = status.regions.iter().find(|r| r.name == "region1").unwrap();
    assert!(region1.new_flows >= 1000, "only {} flows steered to region1", region1.new_flows);
}
