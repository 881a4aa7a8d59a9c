//! BFD checks against FRR's bfdd (Debian's frr) running in each region: the
//! session comes up and shows in `status`, and bfdd stopped, the region's
//! link cut or the region black-holed takes it down within a second at
//! 100 ms × 3; what is not a control packet of a session is refused and
//! counted by cause.

use std::{net::UdpSocket, time::Duration};

use redirector_proto::bfd::packet::{AuthKey, AuthType, Control, State};
use redirector_tests::{
    lab::{BfdPeer, Lab, LabOptions},
    netns::{require_root, unique_name},
};

const PEER: BfdPeer = BfdPeer { interval_ms: 100, detect_mult: 3 };

fn lab() -> Lab {
    require_root();
    let mut lab = Lab::new(&unique_name("rdbf"), LabOptions { bfd: Some(PEER), ..Default::default() }).unwrap();
    lab.start_daemon().unwrap();
    // Sessions start at one packet a second (RFC 5880 §6.8.3).
    lab.wait_active("region2", Duration::from_secs(10)).unwrap();
    lab
}

fn bfd_check(lab: &Lab, region: &str) -> redirector_proto::control::CheckView {
    let status = lab.status().unwrap();
    let region = status.regions.into_iter().find(|r| r.name == region).unwrap();
    region.checks.into_iter().find(|c| c.kind == redirector_proto::model::CheckKind::Bfd).expect("a bfd check")
}

#[derive(Clone, Copy, Debug)]
enum Failure {
    BfddStopped,
    LinkDown,
    BlackHoled,
}

#[test]
fn each_failure_takes_a_region_with_an_frr_peer_down_within_a_second() {
    for failure in [Failure::BfddStopped, Failure::LinkDown, Failure::BlackHoled] {
        let mut lab = lab();
        let check = bfd_check(&lab, "region2");
        assert_eq!((check.target.as_str(), check.last_ok), ("10.2.0.2", Some(true)), "{check:?}");
        match failure {
            Failure::BfddStopped => lab.kill_bfdd(2),
            Failure::LinkDown => lab.link_down(2),
            Failure::BlackHoled => lab.black_hole(2),
        }
        .unwrap();
        let took = lab.wait_active("region1", Duration::from_secs(3)).unwrap();
        eprintln!("{failure:?}: region1 took over after {took:?}");
        assert!(took < Duration::from_secs(1), "{failure:?}: {took:?}");
        let why = lab.region_changes("region2").unwrap().last().unwrap().why.clone();
        assert!(why.starts_with("bfd 10.2.0.2:"), "{failure:?}: {why}");
        match failure {
            Failure::BfddStopped => lab.restore_bfdd(2),
            Failure::LinkDown => lab.link_up(2),
            Failure::BlackHoled => lab.lift_black_hole(2),
        }
        .unwrap();
        lab.wait_active("region2", Duration::from_secs(10)).unwrap();
    }
}

/// A reload starts the BFD task anew while the last one still holds its
/// sockets: the sessions come back up with no verdict in between, and
/// still detect.
#[test]
fn a_reload_keeps_every_region_up_and_its_sessions_detecting() {
    let mut lab = lab();
    let before = lab.region_changes("region2").unwrap().len();
    lab.ctl_ok(&["reload"]).unwrap();
    // The new sessions' handshake at one packet a second, and then some.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(lab.region_changes("region2").unwrap().len(), before, "region2 changed state across the reload");
    assert_eq!(bfd_check(&lab, "region2").last_ok, Some(true));
    lab.kill_bfdd(2).unwrap();
    let took = lab.wait_active("region1", Duration::from_secs(3)).unwrap();
    assert!(took < Duration::from_secs(1), "after the reload: {took:?}");
    assert!(lab.daemon_log().matches("every BFD check fails").count() == 0, "{}", lab.daemon_log());
}

#[test]
fn datagrams_that_are_not_a_sessions_control_packets_are_refused_and_counted_by_cause() {
    let lab = lab();
    // A session this gateway does not have (its discriminators are others).
    let up = Control::new(State::Up, 0x1234, 0x9999_9999, 3, 100_000, 100_000);
    let mut bad_version = up.encode(None);
    bad_version[0] = 0x40 | (bad_version[0] & 0x1f);
    let mut bad_length = up.encode(None);
    bad_length[3] = 60;
    let key = AuthKey { kind: AuthType::MeticulousKeyedSha1, key_id: 1, secret: b"not-configured".to_vec() };
    let sent = [
        ("short", up.encode(None)[..20].to_vec(), 255),
        ("version", bad_version, 255),
        ("length", bad_length, 255),
        ("unknown_session", up.encode(None), 255),
        ("ttl", Control { your_discriminator: 0, state: State::Down, ..up }.encode(None), 64),
        ("authentication", Control { your_discriminator: 0, state: State::Down, ..up }.encode(Some((&key, 1))), 255),
    ];
    {
        let _inside = lab.topo.region("region2").ns.enter().unwrap();
        let socket = UdpSocket::bind("10.2.0.2:0").unwrap();
        for (_, datagram, ttl) in &sent {
            socket.set_ttl(*ttl).unwrap();
            socket.send_to(datagram, "10.2.0.1:3784").unwrap();
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let metrics = lab.metrics().unwrap();
    for (cause, _, _) in &sent {
        let line = format!("redirector_bfd_rejected_total{{cause=\"{cause}\"}} 1");
        assert!(metrics.lines().any(|l| l == line), "no `{line}` in\n{metrics}");
    }
    // The real session never noticed.
    assert_eq!(bfd_check(&lab, "region2").last_ok, Some(true));
    assert_eq!(lab.active().unwrap(), ["region2"]);
}
