//! Load balancing with real processes: weighted Maglev, the pps, flows and
//! CPU policies, and flow affinity through every change.

use std::{
    collections::BTreeMap,
    thread,
    time::{Duration, Instant},
};

use redirector_proto::control::Status;
use redirector_tests::{
    client::{get_from, Kept, Measurement, Options, Session},
    lab::{body, wait_for, Lab, LabOptions},
    netns::{require_root, unique_name, Netns},
};

const TIMEOUT: Duration = Duration::from_secs(2);

fn lab(options: LabOptions) -> Lab {
    require_root();
    let mut lab = Lab::new(&unique_name("rdb"), options).unwrap();
    lab.start_daemon().unwrap();
    lab
}

/// Two regions under `policy`, with `keys` for region1 and region2.
fn two_regions(policy: &'static str, keys: [&str; 2]) -> LabOptions {
    LabOptions {
        regions: 2,
        policy,
        region_keys: keys.iter().map(|k| k.to_string()).collect(),
        ..LabOptions::default()
    }
}

/// Waits until the service's table is written with these regions.
fn wait_shares(lab: &Lab, regions: &[&str]) {
    lab.wait_new_flows("web", regions, Duration::from_secs(5)).unwrap();
}

/// `count` GETs on new connections from source ports `first_port..`, from
/// the client namespace; answers by body.
fn requests_from_ports(ns: &Netns, lab: &Lab, first_port: u16, count: u16) -> (BTreeMap<String, u32>, Vec<String>) {
    let target = lab.vip();
    ns.on_thread(|| {
        let mut by_body = BTreeMap::new();
        let mut errors = Vec::new();
        for port in first_port..first_port + count {
            match get_from(port, target, TIMEOUT) {
                Ok(body) => *by_body.entry(body).or_default() += 1,
                Err(e) => errors.push(format!("port {port}: {e:#}")),
            }
        }
        Ok((by_body, errors))
    })
    .unwrap()
}

#[test]
fn weighted_50_50_splits_2000_requests_within_3_percent() {
    let lab = lab(two_regions("weighted", ["weight = 1", "weight = 1"]));
    wait_shares(&lab, &["region1", "region2"]);
    let (by_body, errors) = requests_from_ports(&lab.topo.client, &lab, 20_000, 2000);
    eprintln!("{by_body:?}");
    assert!(errors.is_empty(), "{} failed: {:?}", errors.len(), &errors[..errors.len().min(5)]);
    // ± 3 % of half. The client's ports are fixed and the flow hash and
    // table have no seed, so this split is the same on every run.
    for region in [1, 2] {
        let n = by_body.get(&body(region)).copied().unwrap_or(0);
        assert!((970..=1030).contains(&n), "region{region} answered {n} of 2000: {by_body:?}");
    }
    // The data plane pinned them (its counters refresh every second).
    wait_for(Duration::from_secs(3), || {
        let new_flows: u64 = lab.status()?.regions.iter().map(|r| r.new_flows).sum();
        anyhow::ensure!(new_flows >= 2000, "the data plane pinned {new_flows} flows for 2000 requests");
        Ok(())
    })
    .unwrap();
}

#[test]
fn weights_changing_every_100_ms_for_10_s_move_no_connection_and_fail_no_request() {
    let lab = lab(two_regions("weighted", ["weight = 1", "weight = 1"]));
    wait_shares(&lab, &["region1", "region2"]);
    let client = Measurement::start(&lab.topo.client, lab.vip(), Options::default());
    let kept = Kept::open(&lab.topo.client, lab.vip(), 20, Duration::from_millis(20)).unwrap();
    let writes_before = lab.switches("web").unwrap().len();
    let mut changes = 0;
    let started = Instant::now();
    // One change every 100 ms on a fixed schedule: 1:4, then 4:1, ...
    while started.elapsed() < Duration::from_secs(10) {
        let (one, two) = if changes % 2 == 0 { ("1", "4") } else { ("4", "1") };
        lab.ctl_ok(&["weight", "region1", one]).unwrap();
        lab.ctl_ok(&["weight", "region2", two]).unwrap();
        changes += 1;
        let next = started + Duration::from_millis(100) * changes;
        thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    let kept = kept.close();
    let report = client.stop().unwrap();
    // Each change rewrote the data plane's table (the first command of a
    // change may already rewrite it, passing 1:1 or 4:4).
    let writes = lab.switches("web").unwrap().len() - writes_before;
    eprintln!(
        "{changes} weight changes, {writes} table writes; kept connections: {} requests; new connections: {} requests, {} failed, {:?}",
        kept.requests,
        report.requests(),
        report.failures,
        report.by_body
    );
    assert!(kept.moved.is_empty() && kept.broken.is_empty(), "{kept:#?}");
    assert!(kept.requests > 20 * 100, "the kept connections asked only {} times", kept.requests);
    assert_eq!(report.failures, 0, "{:?}", report.outages);
    assert!(report.by_body.len() == 2, "new connections reached {:?}", report.by_body);
    assert!(changes >= 95, "{changes} changes in 10 s");
    assert!(writes >= changes as usize, "{writes} table writes for {changes} weight changes");
}

fn saturated(status: &Status, region: &str) -> Vec<String> {
    status.regions.iter().find(|r| r.name == region).unwrap().saturated.clone()
}


#[test]
fn pps_over_the_high_watermark_spills_new_flows_and_they_return_when_load_falls() {
    // region2 is preferred (priority 200); 2 kept connections asking as
    // fast as they can put it far above 400 packets/s.
    let marks = "pps = { low = 100, high = 400 }";
    let lab = lab(two_regions("pps", [marks, marks]));
    wait_shares(&lab, &["region2"]);
    let load = Kept::open(&lab.topo.client, lab.vip(), 2, Duration::ZERO).unwrap();
    wait_shares(&lab, &["region1"]);
    let status = lab.status().unwrap();
    eprintln!("region2 at {:.0} pps: saturated {:?}", status.regions[1].pps, saturated(&status, "region2"));
    assert_eq!(saturated(&status, "region2"), ["pps"]);
    let (by_body, errors) = requests_from_ports(&lab.topo.client, &lab, 30_000, 50);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(by_body.get(&body(1)), Some(&50), "new flows spill to region1: {by_body:?}");

    let load = load.close();
    assert!(load.moved.is_empty() && load.broken.is_empty(), "{load:#?}");
    assert_eq!(load.first_answers, BTreeMap::from([(body(2), 2)]), "the load went to region2");
    assert!(load.min_requests > 100, "a load connection asked only {} times", load.min_requests);
    let fell = Instant::now();
    wait_shares(&lab, &["region2"]);
    eprintln!("new flows back on region2 {:?} after the load stopped", fell.elapsed());
    // Quiet for a few dwell times: nothing moves again.
    thread::sleep(Duration::from_secs(3));
    let switches: Vec<String> =
        lab.switches("web").unwrap().into_iter().map(|e| format!("{}: {}", e.what, e.why)).collect();
    assert_eq!(switches.len(), 3, "start, spill and return, nothing more: {switches:#?}");
}

#[test]
fn flows_policy_spills_at_its_active_flows_and_counts_them_as_the_agents_do() {
    let lab = lab(LabOptions {
        heartbeat: true,
        ..two_regions("flows", ["", "flows = { low = 4, high = 8 }"])
    });
    wait_shares(&lab, &["region2"]);
    // Opened one by one until the data plane counts more than 8 on
    // region2; the next ones go to region1.
    let mut kept = Vec::new();
    let mut first_answers = Vec::new();
    wait_for(Duration::from_secs(10), || {
        let mut session = Session::open(&lab.topo.client, lab.vip(), TIMEOUT)?;
        first_answers.push(session.get()?);
        kept.push(session);
        thread::sleep(Duration::from_millis(100));
        anyhow::ensure!(saturated(&lab.status()?, "region2") == ["flows"], "not saturated yet");
        Ok(())
    })
    .unwrap();
    wait_shares(&lab, &["region1"]);
    // None broken, none moved: each still answers, from where it began.
    let mut on = BTreeMap::<String, u32>::new();
    for (session, first) in kept.iter_mut().zip(&first_answers) {
        let answer = session.get().unwrap();
        assert_eq!(&answer, first, "a connection held through the spill moved");
        *on.entry(answer).or_default() += 1;
    }
    // The last one may have opened between a status check and the spill.
    eprintln!("{} connections opened before the spill: {on:?}", kept.len());
    assert!(on.get(&body(2)).is_some_and(|&n| n > 8), "region2 took more than its high watermark: {on:?}");
    for _ in 0..3 {
        let mut spilled = Session::open(&lab.topo.client, lab.vip(), TIMEOUT).unwrap();
        assert_eq!(spilled.get().unwrap(), body(1), "opened after the spill");
        kept.push(spilled);
    }

    // The data plane's count and the agents' agree (both refresh within
    // about a second).
    wait_for(Duration::from_secs(5), || {
        let status = lab.status()?;
        for r in &status.regions {
            anyhow::ensure!(
                r.agent_connections == Some(r.active_flows as u32),
                "{}: data plane {} active flows, agent {:?} connections",
                r.name,
                r.active_flows,
                r.agent_connections
            );
        }
        let counted: u64 = status.regions.iter().map(|r| r.active_flows).sum();
        anyhow::ensure!(counted == kept.len() as u64, "{counted} active flows for {} connections", kept.len());
        Ok(())
    })
    .unwrap();

    // Closing them brings region2 below its low watermark: new flows return.
    kept.clear();
    wait_shares(&lab, &["region2"]);
    let status = lab.status().unwrap();
    assert!(status.regions.iter().all(|r| r.active_flows == 0), "{:?}", status.regions);
    thread::sleep(Duration::from_secs(2));
    let switches = lab.switches("web").unwrap();
    assert_eq!(switches.len(), 3, "start, spill and return, nothing more: {switches:#?}");
}

#[test]
fn cpu_policy_moves_new_flows_off_a_region_whose_cgroup_is_busy() {
    let lab = lab(LabOptions {
        heartbeat: true,
        cgroups: true,
        ..two_regions("cpu", ["", "cpu = { low = 10, high = 25 }"])
    });
    wait_shares(&lab, &["region2"]);
    let busy = lab.burn_cpu(2, Duration::from_secs(30)).unwrap();
    let started = Instant::now();
    wait_shares(&lab, &["region1"]);
    let status = lab.status().unwrap();
    eprintln!(
        "region2's cgroup at {:?} % CPU; new flows moved after {:?}",
        status.regions[1].cpu_percent,
        started.elapsed()
    );
    assert!(status.regions[1].cpu_percent.unwrap() > 25.0);
    let (by_body, errors) = requests_from_ports(&lab.topo.client, &lab, 40_000, 20);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(by_body.get(&body(1)), Some(&20), "{by_body:?}");
    drop(busy);
    wait_shares(&lab, &["region2"]);
}

#[test]
fn bad_weights_are_refused_with_the_reason_and_change_nothing() {
    let lab = lab(two_regions("weighted", ["weight = 1", "weight = 3"]));
    wait_shares(&lab, &["region1", "region2"]);
    let before = lab.status().unwrap().services[0].clone();

    lab.ctl_ok(&["weight", "region1", "0"]).unwrap();
    let refused = lab.ctl(&["weight", "region2", "0"]).unwrap();
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(message.contains("every weight of service \"web\" would be 0"), "{message}");
    let refused = lab.ctl(&["weight", "region9", "2"]).unwrap();
    assert!(String::from_utf8_lossy(&refused.stderr).contains("unknown region \"region9\" (known: region1, region2)"));
    let refused = lab.ctl(&["weight", "region1", "2", "--service", "api"]).unwrap();
    assert!(String::from_utf8_lossy(&refused.stderr).contains("unknown service \"api\""));
    let after = lab.status().unwrap().services[0].clone();
    assert_eq!(after.weights, [("region1".to_string(), 0), ("region2".to_string(), 3)]);
    wait_shares(&lab, &["region2"]);

    // A config with every weight 0 is refused on reload; nothing changes.
    let config = lab.config(&lab.gateway.pins.0);
    std::fs::write(
        lab.config_path(),
        config.replace("weight = 1", "weight = 0").replace("weight = 3", "weight = 0"),
    )
    .unwrap();
    let refused = lab.ctl(&["reload"]).unwrap();
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(message.contains("every weight of service \"web\" would be 0"), "{message}");
    assert_eq!(lab.status().unwrap().services[0].weights, after.weights);
    assert_ne!(before.weights, after.weights);
}
