//! `redirectorctl flows` against a running redirectord: the connections a
//! client holds, listed with their region, filtered, cut, as JSON.

use std::time::Duration;

use redirector_proto::control::{FlowList, FlowState};
use redirector_tests::{
    client::Session,
    lab::{body, Lab, LabOptions},
    netns::{require_root, unique_name},
};

fn flows(lab: &Lab, args: &[&str]) -> FlowList {
    let mut all = vec!["flows", "--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&lab.ctl_ok(&all).unwrap()).unwrap()
}

#[test]
fn flows_lists_the_connections_with_their_region_filtered_and_cut() {
    require_root();
    let mut lab = Lab::new(&unique_name("rdf"), LabOptions { regions: 2, ..LabOptions::default() }).unwrap();
    lab.start_daemon().unwrap();
    let mut sessions = Vec::new();
    for _ in 0..3 {
        let mut session = Session::open(&lab.topo.client, lab.vip(), Duration::from_secs(2)).unwrap();
        assert_eq!(session.get().unwrap(), body(2));
        sessions.push(session);
    }
    let ports: Vec<String> = sessions.iter().map(|s| format!("10.0.0.2:{}", s.local_port().unwrap())).collect();

    let listed = flows(&lab, &[]);
    for port in &ports {
        let flow = listed.flows.iter().find(|f| &f.client == port).unwrap_or_else(|| panic!("{port} not listed: {listed:?}"));
        assert_eq!((flow.region.as_str(), flow.state, flow.copy), ("region2", FlowState::Open, false));
        assert_eq!((flow.vip.as_str(), flow.backend.as_str(), flow.service.as_deref()), ("10.2.0.2:80", "10.2.0.2:80", Some("web")));
    }
    assert!(listed.matched >= 3 && listed.total >= listed.matched);

    assert!(flows(&lab, &["--region", "region1"]).flows.iter().all(|f| f.region == "region1"));
    let cut = flows(&lab, &["--region", "region2", "--limit", "1"]);
    assert_eq!(cut.flows.len(), 1);
    assert!(cut.matched >= 3);

    let table = lab.ctl_ok(&["flows", "--limit", "1"]).unwrap();
    assert!(table.contains("(--limit N for more)"), "{table}");
    let refused = lab.ctl(&["flows", "--region", "region9"]).unwrap();
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(message.contains("unknown region \"region9\" (known: region1, region2)"), "{message}");
}
