//! A SYN flood from spoofed sources (hping3, as an attacker would run it)
//! must not break an established connection: new TCP flows wait in a
//! table of their own until their handshake completes.

use std::{
    process::Stdio,
    thread,
    time::{Duration, Instant},
};

use redirector_common::Reason;
use redirector_tests::{
    client::Kept,
    lab::{body, Lab, LabOptions},
    netns::{require_root, unique_name},
};

/// How long the flood lasts, and the most SYNs it may send (hping3 sends
/// about 200 000/s from one core here).
const FLOOD: Duration = Duration::from_secs(8);
const MAX_SYNS: u64 = 4_000_000;
/// Established entries (two per flow): 32 768 connections.
const FLOW_TABLE: u32 = 65_536;

/// The count of one reason in /metrics.
fn reason(lab: &Lab, reason: Reason) -> u64 {
    let metrics = lab.metrics().unwrap();
    let line = format!("redirector_packets_total{{reason=\"{}\"}} ", reason.name());
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(line.as_str()))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {line} in\n{metrics}"))
}

#[test]
fn a_syn_flood_from_spoofed_sources_breaks_no_established_connection() {
    require_root();
    // A table small enough that this flood would turn one shared by every
    // flow over in well under a second.
    let options = LabOptions { regions: 2, sample_ms: 200, flow_table_size: Some(FLOW_TABLE), ..Default::default() };
    let mut lab = Lab::new(&unique_name("rdf"), options).unwrap();
    lab.start_daemon().unwrap();
    lab.wait_active("region2", Duration::from_secs(2)).unwrap();
    // Pinned to region1, which then stops taking new flows: only their
    // entries keep these connections there. They ask every 2 s: cold
    // enough that the flood would evict them from one shared table.
    lab.ctl_ok(&["set-active", "region1"]).unwrap();
    lab.wait_active("region1", Duration::from_secs(1)).unwrap();
    let kept = Kept::open(&lab.topo.client, lab.vip(), 20, Duration::from_secs(2)).unwrap();
    thread::sleep(Duration::from_millis(300));
    lab.ctl_ok(&["set-active", "--auto"]).unwrap();
    lab.wait_active("region2", Duration::from_secs(1)).unwrap();
    let new_flows_before = reason(&lab, Reason::Forwarded);

    let vip = lab.vip();
    let started = Instant::now();
    let flood = lab
        .topo
        .client
        .command("hping3")
        .args(["-S", "-p", &vip.port().to_string(), "--flood", "--rand-source", "-c", &MAX_SYNS.to_string()])
        .arg(vip.ip().to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("hping3 (cargo xtask setup installs it)");
    thread::sleep(FLOOD);
    // SIGINT: hping3 prints what it sent and exits.
    unsafe { libc::kill(flood.id() as i32, libc::SIGINT) };
    let output = flood.wait_with_output().unwrap();
    let flooded = started.elapsed();
    let stats = String::from_utf8_lossy(&output.stderr);
    let sent: u64 = stats
        .lines()
        .find_map(|l| l.split_whitespace().next().filter(|_| l.contains("packets transmitted")))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in hping3's output: {stats}"));

    thread::sleep(Duration::from_millis(500));
    let kept = kept.close();
    let status = lab.status().unwrap();
    eprintln!(
        "{sent} spoofed SYNs in {flooded:.1?} ({:.0}/s); kept connections: {} requests, {} moved, {} broken; \
         forwarded during the flood: {}; promoted {}, midstream without a flow {}",
        sent as f64 / flooded.as_secs_f64(),
        kept.requests,
        kept.moved.len(),
        kept.broken.len(),
        reason(&lab, Reason::Forwarded) - new_flows_before,
        reason(&lab, Reason::Promoted),
        reason(&lab, Reason::MidstreamNoFlow),
    );
    assert!(sent >= 200_000, "only {sent} SYNs: not a flood that would turn the flow table over");
    assert!(kept.moved.is_empty() && kept.broken.is_empty(), "{kept:#?}");
    assert_eq!(kept.first_answers.get(&body(1)), Some(&20), "{:?}", kept.first_answers);
    assert!(kept.min_requests >= 4, "a kept connection asked only {} times", kept.min_requests);
    assert!(status.regions.iter().all(|r| r.state == redirector_proto::model::RegionStatus::Up));
    lab.stop_daemon(libc::SIGTERM).unwrap();
}
