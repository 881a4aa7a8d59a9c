//! Passive detection in the kernel: crafted frames through
//! BPF_PROG_TEST_RUN, then the `REGION_SIGNALS` ring buffer read as
//! redirectord reads it.

use aya::maps::{MapData, RingBuf};
use redirector::dataplane::Dataplane;
use redirector_common::{Reason, RegionSignal, SIGNAL_SYN_REFUSED};
use redirector_tests::{frames::L4, steer::*, xdp::*};

fn signals(ring: &mut RingBuf<MapData>) -> Vec<RegionSignal> {
    drain_ring(ring)
}

/// The region's reset in answer to the client's SYN on port `client_port`.
fn refused(region: RegionLink, client_port: u16) -> redirector_tests::frames::Frame {
    let syn = from_client(VIP, L4::tcp_syn(client_port, 80));
    let mut rst = reply_from(region, &syn, 80);
    rst.l4 = L4::Tcp { src_port: 80, dst_port: client_port, syn: false, ack: true, fin: false, rst: true, seq: 0, ack_no: 1001 };
    rst
}

#[test]
fn a_syn_refused_with_a_reset_is_signalled_with_its_region_and_still_reaches_the_client() {
    let mut gw = Gateway::with_passive_detection().unwrap();
    gw.select(R1.id).unwrap();
    let mut ring = gw.dataplane.take_region_signals().expect("loaded with passive detection");
    let syn = from_client(VIP, L4::tcp_syn(42_000, 80));
    let out = gw.run(&syn.bytes(), "cli").unwrap();
    assert_frame(&out, XDP_REDIRECT, &steered(&syn, R1, 80).bytes());
    assert!(signals(&mut ring).is_empty(), "a SYN says nothing of the region");

    let rst = refused(R1, 42_000);
    let out = gw.run(&rst.bytes(), R1.iface).unwrap();
    assert_frame(&out, XDP_REDIRECT, &as_client_sees(&rst, VIP, 80).bytes());
    let told = signals(&mut ring);
    assert_eq!(told.len(), 1, "{told:?}");
    assert_eq!((told[0].region_id, told[0].kind, told[0].service_id), (R1.id, SIGNAL_SYN_REFUSED, 0));
    assert!(told[0].at_ns > 0);
}

#[test]
fn answers_and_resets_of_established_flows_signal_nothing() {
    let mut gw = Gateway::with_passive_detection().unwrap();
    gw.select(R1.id).unwrap();
    let mut ring = gw.dataplane.take_region_signals().unwrap();
    // A SYN-ACK, the handshake completed, then the region resets the
    // established connection: a server closing one connection, not one
    // that is gone.
    handshake(&gw, R1, 42_001);
    let rst = refused(R1, 42_001);
    let out = gw.run(&rst.bytes(), R1.iface).unwrap();
    assert_frame(&out, XDP_REDIRECT, &as_client_sees(&rst, VIP, 80).bytes());
    assert!(signals(&mut ring).is_empty());
    // A reset from a region to a client it has no flow with passes untouched.
    let stray = refused(R1, 42_002).bytes();
    assert_frame(&gw.run(&stray, R1.iface).unwrap(), XDP_PASS, &stray);
    assert!(signals(&mut ring).is_empty());
    assert_eq!(gw.dataplane.stats().unwrap().reason(Reason::RegionSignalLost), 0);
}

/// Resets a client can draw from a listening region: none may pass for a
/// refused SYN, or one client could take a healthy region down.
#[test]
fn resets_that_do_not_acknowledge_the_flows_syn_signal_nothing() {
    let mut gw = Gateway::with_passive_detection().unwrap();
    gw.select(R1.id).unwrap();
    let mut ring = gw.dataplane.take_region_signals().unwrap();
    let rst = |client_port: u16, ack: bool, ack_no: u32| {
        let mut f = refused(R1, client_port);
        f.l4 = L4::Tcp { src_port: 80, dst_port: client_port, syn: false, ack, fin: false, rst: true, seq: 0, ack_no };
        f
    };
    // The SYN's sequence number is 1000: a refusal acknowledges 1001.
    gw.run(&from_client(VIP, L4::tcp_syn(42_004, 80)).bytes(), "cli").unwrap();
    gw.run(&rst(42_004, true, 5_000).bytes(), R1.iface).unwrap();
    // A bad ACK after the SYN-ACK is reset without ACK.
    gw.run(&from_client(VIP, L4::tcp_syn(42_005, 80)).bytes(), "cli").unwrap();
    gw.run(&rst(42_005, false, 0).bytes(), R1.iface).unwrap();
    // A flow no SYN opened (a client's stray segment, steered as a new flow).
    gw.run(&from_client(VIP, L4::tcp(42_006, 80)).bytes(), "cli").unwrap();
    gw.run(&rst(42_006, true, 1001).bytes(), R1.iface).unwrap();
    assert!(signals(&mut ring).is_empty());
    assert_eq!(gw.dataplane.new_flows().unwrap().len(), 6, "all three flows were tracked, so each reset was judged");
}

#[test]
fn without_passive_detection_nothing_is_signalled() {
    let mut gw = Gateway::new().unwrap();
    gw.select(R1.id).unwrap();
    assert!(gw.dataplane.take_region_signals().is_none());
    let mut ring = gw.pinned_ring(redirector_common::map_names::REGION_SIGNALS).unwrap();
    gw.run(&from_client(VIP, L4::tcp_syn(42_003, 80)).bytes(), "cli").unwrap();
    gw.run(&refused(R1, 42_003).bytes(), R1.iface).unwrap();
    assert!(signals(&mut ring).is_empty());
}
