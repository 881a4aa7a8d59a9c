//! In-kernel packet tests: crafted frames through BPF_PROG_TEST_RUN, with
//! the action and every output byte asserted. Expected frames are built
//! independently (etherparse, full checksum computation).

use std::net::{IpAddr, Ipv4Addr};

use std::collections::BTreeSet;

use redirector::{
    config::ServiceAddr,
    dataplane::{flow_table::monotonic_ns, Dataplane, Selection},
};
use redirector_common::{
    lifetime::{CLOSED_FLOW_LINGER_NS, UDP_IDLE_TIMEOUT_NS}, Flow, FlowKey, Reason, RegionState, FLOW_FIN_SEEN,
    FLOW_ORIGINAL, FLOW_REPLY, IPPROTO_TCP, IPPROTO_UDP,
};
use redirector_tests::{
    frames::L4,
    steer::*,
    xdp::*,
};

#[test]
fn new_tcp_flow_goes_to_the_selected_region_and_is_tracked_both_ways() {
    let mut gw = Gateway::new().unwrap();
    gw.select(R1.id).unwrap();
    let syn = from_client(VIP, L4::tcp_syn(40_000, 80));

    let out = gw.run(&syn.bytes(), "cli").unwrap();

    assert_frame(&out, XDP_REDIRECT, &steered(&syn, R1, 80).bytes());
    assert!(gw.dataplane.flows().unwrap().is_empty(), "not established before its handshake completes");
    let flows = gw.dataplane.new_flows().unwrap();
    assert_eq!(flows.len(), 2, "original and reply entries: {flows:?}");
    let original = flows.iter().find(|(_, f)| f.direction == FLOW_ORIGINAL).unwrap();
    let reply = flows.iter().find(|(_, f)| f.direction == FLOW_REPLY).unwrap();
    assert_eq!(original.1.region_id, R1.id);
    assert_eq!(original.0.protocol, IPPROTO_TCP);
    assert_eq!(reply.0, original.0.reversed().with_src(R1.addr, 80));
    let stats = gw.dataplane.stats().unwrap();
    let r1 = stats.regions[R1.id as usize];
    assert_eq!((r1.packets, r1.bytes, r1.new_flows), (1, syn.bytes().len() as u64, 1));
    assert_eq!(stats.services[0].new_flows, 1);
    assert_eq!(stats.reason(Reason::Forwarded), 1);
}

trait WithSrc {
    fn with_src(self, addr: Ipv4Addr, port: u16) -> Self;
}
impl WithSrc for redirector_common::FlowKey {
    fn with_src(mut self, addr: Ipv4Addr, port: u16) -> Self {
        self.src_addr = u32::from(addr).to_be();
        self.src_port = port.to_be();
        self
    }
}

#[test]
fn the_clients_ack_of_the_regions_syn_ack_moves_the_flow_to_the_established_table() {
    for fam in FAMILIES {
        let mut gw = Gateway::new().unwrap();
        gw.select(R1.id).unwrap();
        handshake_to(&gw, fam.vip, R1, 40_032);
        let flows = entries(&gw);
        assert_eq!(flows.len(), 2, "original and reply, moved: {flows:?}");
        assert!(flows.iter().all(|f| f.established && f.handshake == 0 && f.flags == 0), "{flows:?}");
        assert_eq!(gw.dataplane.stats().unwrap().reason(Reason::Promoted), 1);
        // And it carries on from there, both ways.
        assert_carried_both_ways(&gw, fam.vip, R1, 40_032);
    }
}

/// A client reusing its port after a closed, established connection: the
/// new connection's packets must all go to its new region, not find the
/// old connection's entries.
#[test]
fn a_port_reused_after_a_closed_connection_follows_its_new_region_through_the_handshake() {
    for fam in FAMILIES {
        let mut gw = Gateway::new().unwrap();
        gw.select(R1.id).unwrap();
        handshake_to(&gw, fam.vip, R1, 40_037);
        let mut fin = from_client(fam.vip, L4::tcp(40_037, 80));
        if let L4::Tcp { fin: f, .. } = &mut fin.l4 {
            *f = true;
        }
        gw.run(&fin.bytes(), "cli").unwrap();
        gw.select(R2.id).unwrap();
        handshake_to(&gw, fam.vip, R2, 40_037);
        assert_eq!(gw.dataplane.stats().unwrap().reason(Reason::Promoted), 2);
        let flows = original_entries(&gw);
        assert_eq!((flows.len(), flows[0].region_id), (1, R2.id), "{flows:?}");
    }
}

#[test]
fn an_ack_that_does_not_acknowledge_the_syn_ack_leaves_the_flow_new() {
    for fam in FAMILIES {
        let mut gw = Gateway::new().unwrap();
        gw.select(R1.id).unwrap();
        let syn = from_client(fam.vip, L4::tcp_syn(40_033, 80));
        gw.run(&syn.bytes(), "cli").unwrap();
        // Blind: no SYN-ACK seen yet, then one acknowledging another number.
        let blind = from_client(fam.vip, L4::tcp_ack(40_033, 80, 7_001));
        let out = gw.run(&blind.bytes(), "cli").unwrap();
        assert_frame(&out, XDP_REDIRECT, &steered(&blind, R1, 80).bytes());
        let mut synack = reply_from(R1, &syn, 80);
        synack.l4 = L4::tcp_synack(80, 40_033, 9_000);
        gw.run(&synack.bytes(), R1.iface).unwrap();
        let wrong = from_client(fam.vip, L4::tcp_ack(40_033, 80, 7_001));
        let out = gw.run(&wrong.bytes(), "cli").unwrap();
        assert_frame(&out, XDP_REDIRECT, &steered(&wrong, R1, 80).bytes());
        let flows = entries(&gw);
        assert!(flows.len() == 2 && flows.iter().all(|f| !f.established), "{flows:?}");
        assert_eq!(gw.dataplane.stats().unwrap().reason(Reason::Promoted), 0);
    }
}

/// A SYN flood from spoofed sources, with as many SYNs as the established
/// table has entries (enough to evict everything from one table shared by
/// all flows), churns the table of new flows only: an established
/// connection keeps its entries.
#[test]
fn a_syn_flood_does_not_evict_an_established_flow() {
    const FLOW_TABLE: u32 = 16_384;
    let mut gw = Gateway::with_flow_table_size(FLOW_TABLE).unwrap();
    gw.select(R1.id).unwrap();
    handshake(&gw, R1, 40_034);
    let capacity = redirector_common::new_flow_table_size(FLOW_TABLE);
    gw.select(R2.id).unwrap();
    for i in 0..FLOW_TABLE {
        let mut syn = from_client(VIP, L4::tcp_syn(1024 + (i % 60_000) as u16, 80));
        syn.src = Ipv4Addr::from(0x0a80_0000 + i).into();
        let out = gw.run(&syn.bytes(), "cli").unwrap();
        assert_eq!(out.action, XDP_REDIRECT);
    }
    assert!(gw.dataplane.new_flows().unwrap().len() as u32 <= capacity);
    assert_eq!(gw.dataplane.flows().unwrap().len(), 2, "the established flow's entries are all FLOWS holds");
    let data = from_client(VIP, L4::tcp(40_034, 80));
    let out = gw.run(&data.bytes(), "cli").unwrap();
    assert_frame(&out, XDP_REDIRECT, &steered(&data, R1, 80).bytes());
}

#[test]
fn a_mid_stream_packet_of_no_known_flow_is_counted_and_steered_as_a_new_flow() {
    for fam in FAMILIES {
        let mut gw = Gateway::new().unwrap();
        gw.select(R2.id).unwrap();
        let lost = from_client(fam.vip, L4::tcp(40_035, 80));
        let out = gw.run(&lost.bytes(), "cli").unwrap();
        assert_frame(&out, XDP_REDIRECT, &steered(&lost, R2, 80).bytes());
        let stats = gw.dataplane.stats().unwrap();
        assert_eq!((stats.reason(Reason::MidstreamNoFlow), stats.reason(Reason::Forwarded)), (1, 1));
        let flows = entries(&gw);
        assert!(flows.len() == 2 && flows.iter().all(|f| !f.established), "tracked as new: its answers come back from the VIP");
        let answer = reply_from(R2, &lost, 80);
        let out = gw.run(&answer.bytes(), R2.iface).unwrap();
        assert_frame(&out, XDP_REDIRECT, &as_client_sees(&answer, fam.vip, 80).bytes());
        // Not counted for what is no service's.
        let other = from_client(R1.addr_of(fam.vip), L4::tcp(40_036, 22));
        gw.run(&other.bytes(), "cli").unwrap();
        assert_eq!(gw.dataplane.stats().unwrap().reason(Reason::MidstreamNoFlow), 1);
    }
}


#[test]
fn established_flow_keeps_its_region_when_selection_changes() {
    for fam in FAMILIES {
        let mut gw = Gateway::new().unwrap();
        gw.select(R1.id).unwrap();
        let syn = from_client(fam.vip, L4::tcp_syn(40_001, 80));
        gw.run(&syn.bytes(), "cli").unwrap();

        gw.select(R2.id).unwrap();
        let ack = from_client(fam.vip, L4::tcp(40_001, 80));
        let out = gw.run(&ack.bytes(), "cli").unwrap();
        assert_frame(&out, XDP_REDIRECT, &steered(&ack, R1, 80).bytes());

        let other = from_client(fam.vip, L4::tcp_syn(40_002, 80));
        let out = gw.run(&other.bytes(), "cli").unwrap();
        assert_frame(&out, XDP_REDIRECT, &steered(&other, R2, 80).bytes());
        assert_eq!(gw.dataplane.stats().unwrap().regions[R1.id as usize].new_flows, 1);
    }
}

/// The data plane and the sweep follow one lifetime rule: an open TCP
/// connection idle for an hour is neither deleted nor counted active, and
/// its next mid-stream packet still goes to its region, whatever the
/// selection says now; its reply still leaves from the VIP.
#[test]
fn a_tcp_connection_idle_for_an_hour_resumes_on_its_region_after_a_sweep() {
    for fam in FAMILIES {
        let mut gw = Gateway::new().unwrap();
        gw.select(R1.id).unwrap();
        handshake_to(&gw, fam.vip, R1, 40_030);
        age_established(&mut gw, 3_600_000_000_000);

        let sweep = gw.dataplane.flow_table().unwrap().sweep(monotonic_ns()).unwrap();
        assert_eq!((sweep.entries, sweep.expired), (2, 0), "{}: both entries kept", fam.vip);
        assert_eq!(sweep.active[R1.id as usize], 0, "{}: an hour idle is not active", fam.vip);

        gw.select(R2.id).unwrap();
        assert_carried_both_ways(&gw, fam.vip, R1, 40_030);
    }
}

#[test]
fn reply_from_region_reaches_the_client_from_the_vip() {
    for fam in FAMILIES {
        let mut gw = Gateway::new().unwrap();
        gw.select(R1.id).unwrap();
        let syn = from_client(fam.vip, L4::tcp_syn(40_003, 80));
        gw.run(&syn.bytes(), "cli").unwrap();

        let synack = reply_from(R1, &syn, 80);
        let out = gw.run(&synack.bytes(), R1.iface).unwrap();
        assert_frame(&out, XDP_REDIRECT, &as_client_sees(&synack, fam.vip, 80).bytes());
        let stats = gw.dataplane.stats().unwrap();
        assert_eq!(stats.reason(Reason::Replied), 1);
        let r1 = stats.regions[R1.id as usize];
        assert_eq!((r1.reply_packets, r1.reply_bytes), (1, synack.bytes().len() as u64));
    }
}

#[test]
fn region_serving_on_another_port_gets_port_rewritten_both_ways() {
    for fam in FAMILIES {
        let mut gw = Gateway::new().unwrap();
        gw.select(R2.id).unwrap();
        let syn = from_client(fam.vip2, L4::tcp_syn(40_004, ALT.port));
        let out = gw.run(&syn.bytes(), "cli").unwrap();
        assert_frame(&out, XDP_REDIRECT, &steered(&syn, R2, 8081).bytes());

        let synack = reply_from(R2, &syn, 8081);
        let out = gw.run(&synack.bytes(), R2.iface).unwrap();
        assert_frame(&out, XDP_REDIRECT, &as_client_sees(&synack, fam.vip2, ALT.port).bytes());
    }
}

#[test]
fn draining_region_keeps_established_flows() {
    for fam in FAMILIES {
        let mut gw = Gateway::new().unwrap();
        gw.select(R1.id).unwrap();
        let syn = from_client(fam.vip, L4::tcp_syn(40_005, 80));
        gw.run(&syn.bytes(), "cli").unwrap();

        // Draining: the controller takes the region out of selection, the data
        // plane keeps what is pinned there.
        gw.dataplane.set_region_state(R1.id, RegionState::Draining).unwrap();
        gw.select(R2.id).unwrap();
        let ack = from_client(fam.vip, L4::tcp(40_005, 80));
        let out = gw.run(&ack.bytes(), "cli").unwrap();
        assert_frame(&out, XDP_REDIRECT, &steered(&ack, R1, 80).bytes());
        assert_eq!(gw.dataplane.stats().unwrap().reason(Reason::ReSteered), 0);
    }
}

#[test]
fn flow_on_a_down_region_is_re_steered_on_its_next_packet() {
    for fam in FAMILIES {
        let mut gw = Gateway::new().unwrap();
        gw.select(R1.id).unwrap();
        let syn = from_client(fam.vip, L4::tcp_syn(40_006, 80));
        gw.run(&syn.bytes(), "cli").unwrap();

        gw.dataplane.set_region_state(R1.id, RegionState::Down).unwrap();
        gw.select(R2.id).unwrap();
        let ack = from_client(fam.vip, L4::tcp(40_006, 80));
        let out = gw.run(&ack.bytes(), "cli").unwrap();
        assert_frame(&out, XDP_REDIRECT, &steered(&ack, R2, 80).bytes());

        let stats = gw.dataplane.stats().unwrap();
        assert_eq!(stats.reason(Reason::ReSteered), 1);
        assert_eq!(stats.regions[R2.id as usize].new_flows, 1);
        let flows = original_entries(&gw);
        assert_eq!(flows.len(), 1);
        assert_eq!(flows[0].region_id, R2.id);
        // The new region's answers are translated back too.
        let reply = reply_from(R2, &ack, 80);
        let out = gw.run(&reply.bytes(), R2.iface).unwrap();
        assert_frame(&out, XDP_REDIRECT, &as_client_sees(&reply, fam.vip, 80).bytes());
    }
}

#[test]
fn closed_tcp_flow_is_re_selected_by_a_new_syn_but_a_retransmitted_syn_is_not() {
    for fam in FAMILIES {
        let mut gw = Gateway::new().unwrap();
        gw.select(R1.id).unwrap();
        let syn = from_client(fam.vip, L4::tcp_syn(40_007, 80));
        gw.run(&syn.bytes(), "cli").unwrap();
        gw.select(R2.id).unwrap();

        // A retransmitted SYN of an open flow stays where the first one went.
        let out = gw.run(&syn.bytes(), "cli").unwrap();
        assert_frame(&out, XDP_REDIRECT, &steered(&syn, R1, 80).bytes());

        let mut fin = from_client(fam.vip, L4::tcp(40_007, 80));
        if let L4::Tcp { fin: f, .. } = &mut fin.l4 {
            *f = true;
        }
        let out = gw.run(&fin.bytes(), "cli").unwrap();
        assert_frame(&out, XDP_REDIRECT, &steered(&fin, R1, 80).bytes());

        let out = gw.run(&syn.bytes(), "cli").unwrap();
        assert_frame(&out, XDP_REDIRECT, &steered(&syn, R2, 80).bytes());
    }
}

/// Every region down, `all_down = keep-last`: new flows still go to the
/// last region, and each of their packets is re-steered (re-pinned) off
/// it. Closing must survive that, or the flow stays "active" for ever and
/// a new SYN on its tuple is held to the old region.
#[test]
fn a_flow_that_closes_while_its_region_is_down_stays_closed() {
    for fam in FAMILIES {
        let mut gw = Gateway::new().unwrap();
        gw.select(R1.id).unwrap();
        gw.dataplane.set_region_state(R1.id, RegionState::Down).unwrap();
        let syn = from_client(fam.vip, L4::tcp_syn(40_031, 80));
        let mut fin = from_client(fam.vip, L4::tcp(40_031, 80));
        if let L4::Tcp { fin: f, .. } = &mut fin.l4 {
            *f = true;
        }
        let last_ack = from_client(fam.vip, L4::tcp(40_031, 80));
        for frame in [&syn, &fin, &last_ack] {
            let out = gw.run(&frame.bytes(), "cli").unwrap();
            assert_frame(&out, XDP_REDIRECT, &steered(frame, R1, 80).bytes());
        }
        let flows = original_entries(&gw);
        assert_eq!(flows.len(), 1);
        assert_eq!(flows[0].flags & FLOW_FIN_SEEN, FLOW_FIN_SEEN, "closed, though re-pinned twice since");
        let sweep = gw.dataplane.flow_table().unwrap().sweep(monotonic_ns()).unwrap();
        assert_eq!(sweep.active[R1.id as usize], 0, "a closed flow is not active");

        gw.dataplane.set_region_state(R1.id, RegionState::Up).unwrap();
        gw.select(R2.id).unwrap();
        let out = gw.run(&syn.bytes(), "cli").unwrap();
        assert_frame(&out, XDP_REDIRECT, &steered(&syn, R2, 80).bytes());
    }
}

#[test]
fn fin_from_the_region_marks_the_clients_entry_closed() {
    for fam in FAMILIES {
        let mut gw = Gateway::new().unwrap();
        gw.select(R1.id).unwrap();
        let syn = from_client(fam.vip, L4::tcp_syn(40_008, 80));
        gw.run(&syn.bytes(), "cli").unwrap();
        let mut fin = reply_from(R1, &syn, 80);
        if let L4::Tcp { fin: f, .. } = &mut fin.l4 {
            *f = true;
        }
        gw.run(&fin.bytes(), R1.iface).unwrap();
        let flows = original_entries(&gw);
        assert_eq!(flows[0].flags, redirector_common::FLOW_FIN_SEEN);
    }
}

/// A UDP flow idle past its timeout is re-selected by the data plane, and
/// deleted by the sweep, over either family.
#[test]
fn udp_flow_idle_past_its_timeout_is_re_selected_and_swept() {
    // CLOCK_MONOTONIC runs since boot: a last-seen this far back is older
    // than the timeout on any machine.
    let past_timeout = UDP_IDLE_TIMEOUT_NS + 1_000_000_000;
    for fam in FAMILIES {
        let mut gw = Gateway::new().unwrap();
        gw.select(R1.id).unwrap();
        let query = from_client(fam.vip2, L4::udp(40_009, 53));
        let out = gw.run(&query.bytes(), "cli").unwrap();
        assert_frame(&out, XDP_REDIRECT, &steered(&query, R1, 5353).bytes());

        gw.select(R2.id).unwrap();
        let out = gw.run(&query.bytes(), "cli").unwrap();
        assert_frame(&out, XDP_REDIRECT, &steered(&query, R1, 5353).bytes());

        age_established(&mut gw, past_timeout);
        let out = gw.run(&query.bytes(), "cli").unwrap();
        assert_frame(&out, XDP_REDIRECT, &steered(&query, R2, 5353).bytes());

        age_established(&mut gw, past_timeout);
        let sweep = gw.dataplane.flow_table().unwrap().sweep(monotonic_ns()).unwrap();
        // The original entry, its reply entry, and the reply entry of the
        // region it had before.
        assert_eq!((sweep.entries, sweep.expired), (3, 3), "{}", fam.vip2);
        assert!(entries(&gw).is_empty(), "{}: {:?}", fam.vip2, entries(&gw));
    }
}

#[test]
fn udp_checksum_is_updated_and_a_zero_checksum_stays_zero() {
    // Over IPv6 a zero is no checksum either: invalid, or a tunnel's
    // (RFC 6935); it stays as it came.
    for fam in FAMILIES {
        let mut gw = Gateway::new().unwrap();
        gw.select(R1.id).unwrap();
        let query = from_client(fam.vip2, L4::udp(40_010, 53));
        let out = gw.run(&query.bytes(), "cli").unwrap();
        assert_frame(&out, XDP_REDIRECT, &steered(&query, R1, 5353).bytes());

        let mut no_sum = from_client(fam.vip2, L4::udp(40_011, 53));
        no_sum.l4 = L4::Udp { src_port: 40_011, dst_port: 53, zero_checksum: true };
        let out = gw.run(&no_sum.bytes(), "cli").unwrap();
        assert_frame(&out, XDP_REDIRECT, &steered(&no_sum, R1, 5353).bytes());
        let at = no_sum.l4_offset() + 6;
        assert_eq!(&out.frame[at..at + 2], &[0, 0]);

        let reply = reply_from(R1, &query, 5353);
        let out = gw.run(&reply.bytes(), R1.iface).unwrap();
        assert_frame(&out, XDP_REDIRECT, &as_client_sees(&reply, fam.vip2, 53).bytes());
    }
}

#[test]
fn icmp_echo_to_an_icmp_service_is_steered_and_answered_from_the_vip() {
    for fam in FAMILIES {
        let mut gw = Gateway::new().unwrap();
        gw.select(R2.id).unwrap();
        let echo = from_client(fam.vip2, L4::IcmpEcho { request: true, id: 0x4242, seq: 1 });
        let out = gw.run(&echo.bytes(), "cli").unwrap();
        assert_frame(&out, XDP_REDIRECT, &steered(&echo, R2, 0).bytes());

        let reply = reply_from(R2, &echo, 0);
        let out = gw.run(&reply.bytes(), R2.iface).unwrap();
        assert_frame(&out, XDP_REDIRECT, &as_client_sees(&reply, fam.vip2, 0).bytes());
    }
}

#[test]
fn icmp_errors_about_a_tracked_flow_pass_untouched() {
    let mut gw = Gateway::new().unwrap();
    gw.select(R1.id).unwrap();
    let syn = from_client(VIP, L4::tcp_syn(40_012, 80));
    gw.run(&syn.bytes(), "cli").unwrap();
    // Port unreachable from the region, quoting the steered SYN.
    let steered_syn = steered(&syn, R1, 80).bytes();
    let mut error = reply_from(R1, &syn, 80);
    error.l4 = L4::IcmpUnreachable { code: 3 };
    error.payload = steered_syn[14..14 + 28].to_vec();
    assert_passed_untouched(&gw, &error.bytes(), R1.iface, Reason::PassIcmpOther);
}

#[test]
fn traffic_not_for_a_service_passes_untouched() {
    let mut gw = Gateway::new().unwrap();
    gw.select(R1.id).unwrap();
    // TCP to another port of a region, UDP to the VIP's TCP port, ping to
    // the gateway, a region talking to the client outside any flow.
    let cases = [
        from_client(R1.addr, L4::tcp_syn(40_013, 22)),
        from_client(VIP, L4::udp(40_014, 80)),
        from_client(Ipv4Addr::new(192, 0, 2, 1), L4::IcmpEcho { request: true, id: 7, seq: 1 }),
        reply_from(R1, &from_client(VIP, L4::tcp_syn(40_015, 80)), 80),
    ];
    for frame in &cases {
        assert_passed_untouched(&gw, &frame.bytes(), "cli", Reason::PassNotService);
    }
    assert!(gw.dataplane.flows().unwrap().is_empty());

    let mut arp = from_client(VIP, L4::tcp(1, 80)).bytes();
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    assert_passed_untouched(&gw, &arp, "cli", Reason::PassNotIp);
    // An IPv4 header behind IPv6's EtherType: version 4 where 6 belongs.
    let mut mislabelled = from_client(VIP, L4::tcp(1, 80)).bytes();
    mislabelled[12..14].copy_from_slice(&[0x86, 0xdd]);
    assert_passed_untouched(&gw, &mislabelled, "cli", Reason::PassMalformed);
    let mut gre = from_client(VIP, L4::tcp(1, 80)).bytes();
    gre[14 + 9] = 47; // protocol field; checksum now wrong, which is not ours to judge
    assert_passed_untouched(&gw, &gre, "cli", Reason::PassNotService);
}

#[test]
fn vlan_tagged_frame_is_steered_with_its_tag_kept() {
    for fam in FAMILIES {
        let mut gw = Gateway::new().unwrap();
        gw.select(R1.id).unwrap();
        let mut syn = from_client(fam.vip, L4::tcp_syn(40_016, 80));
        syn.vlan = Some(100);
        let out = gw.run(&syn.bytes(), "cli").unwrap();
        assert_frame(&out, XDP_REDIRECT, &steered(&syn, R1, 80).bytes());

        let mut qinq = from_client(fam.vip, L4::tcp_syn(40_017, 80));
        qinq.vlan = Some(100);
        let mut bytes = qinq.bytes();
        bytes[16..18].copy_from_slice(&[0x81, 0x00]); // a second tag
        assert_passed_untouched(&gw, &bytes, "cli", Reason::PassNotIp);
    }
}

#[test]
fn ip_options_are_skipped_and_kept() {
    let mut gw = Gateway::new().unwrap();
    gw.select(R1.id).unwrap();
    let mut syn = from_client(VIP, L4::tcp_syn(40_018, 80));
    // Router alert (4 bytes) + 4 NOPs... then end of list.
    syn.ip_options = vec![0x94, 0x04, 0x00, 0x00, 0x01, 0x01, 0x01, 0x00];
    let out = gw.run(&syn.bytes(), "cli").unwrap();
    assert_frame(&out, XDP_REDIRECT, &steered(&syn, R1, 80).bytes());
}

#[test]
fn frames_cut_at_every_byte_before_the_l4_header_ends_pass_untouched() {
    let mut gw = Gateway::new().unwrap();
    gw.select(R1.id).unwrap();
    let mut tagged_with_options = from_client(VIP, L4::tcp_syn(40_019, 80));
    tagged_with_options.vlan = Some(7);
    tagged_with_options.ip_options = vec![0x01; 12];
    let frames = [
        from_client(VIP, L4::tcp_syn(40_020, 80)),
        from_client(VIP2, L4::udp(40_021, 53)),
        from_client(VIP2, L4::IcmpEcho { request: true, id: 1, seq: 1 }),
        tagged_with_options,
    ];
    assert_every_cut_passes(&gw, &frames);
}

#[test]
fn malformed_ipv4_headers_pass_untouched() {
    let gw = Gateway::new().unwrap();
    let good = from_client(VIP, L4::tcp_syn(40_022, 80)).bytes();
    for (what, at, value) in [("version 6", 14, 0x65u8), ("IHL 4", 14, 0x44)] {
        let mut bad = good.clone();
        bad[at] = value;
        let out = gw.run(&bad, "cli").unwrap();
        assert_frame(&out, XDP_PASS, &bad);
        assert!(gw.dataplane.flows().unwrap().is_empty(), "{what}");
    }
    assert_eq!(gw.dataplane.stats().unwrap().reason(Reason::PassMalformed), 2);
    // IHL 15 claims 40 option bytes the frame does not have.
    let mut long = good.clone();
    long[14] = 0x4f;
    assert_passed_untouched(&gw, &long, "cli", Reason::PassMalformed);
}

#[test]
fn tcp_headers_with_a_data_offset_under_five_words_pass_untouched() {
    let gw = Gateway::new().unwrap();
    let good = from_client(VIP, L4::tcp_syn(40_023, 80)).bytes();
    // Ethernet 14 + IPv4 20, then the data offset in the top nibble of
    // the TCP header's byte 12.
    for words in 0..5u8 {
        let mut bad = good.clone();
        bad[14 + 20 + 12] = (words << 4) | (bad[14 + 20 + 12] & 0x0f);
        assert_passed_untouched(&gw, &bad, "cli", Reason::PassMalformed);
    }
    assert!(gw.dataplane.flows().unwrap().is_empty());
}

#[test]
fn fragments_pass_untouched_first_and_later_alike() {
    let mut gw = Gateway::new().unwrap();
    gw.select(R1.id).unwrap();
    let mut first = from_client(VIP2, L4::udp(40_023, 53));
    first.fragment = Some((true, 0));
    assert_passed_untouched(&gw, &first.bytes(), "cli", Reason::PassFragment);
    let mut later = from_client(VIP2, L4::udp(40_023, 53));
    later.fragment = Some((false, 185));
    assert_passed_untouched(&gw, &later.bytes(), "cli", Reason::PassFragment);
    assert!(gw.dataplane.flows().unwrap().is_empty());
}

#[test]
fn unresolved_neighbour_hands_the_rewritten_packet_to_the_kernel() {
    for fam in FAMILIES {
        let mut gw = Gateway::new().unwrap();
        gw.select(R3.id).unwrap();
        let syn = from_client(fam.vip, L4::tcp_syn(40_024, 80));
        let out = gw.run(&syn.bytes(), "cli").unwrap();
        // Addresses rewritten so the kernel forwards it to region 3 (and ARPs);
        // MACs untouched, still addressed to the gateway.
        let mut expected = steered(&syn, R3, 80);
        expected.src_mac = syn.src_mac;
        expected.dst_mac = syn.dst_mac;
        assert_frame(&out, XDP_PASS, &expected.bytes());
        assert_eq!(gw.dataplane.stats().unwrap().reason(Reason::PassNoNeighbour), 1);
    }
}

#[test]
fn egress_without_the_program_hands_the_rewritten_packet_to_the_kernel() {
    for fam in FAMILIES {
        let mut gw = Gateway::new().unwrap();
        gw.select(R4.id).unwrap();
        let syn = from_client(fam.vip, L4::tcp_syn(40_025, 80));
        let out = gw.run(&syn.bytes(), "cli").unwrap();
        let mut expected = steered(&syn, R4, 80);
        expected.src_mac = syn.src_mac;
        expected.dst_mac = syn.dst_mac;
        assert_frame(&out, XDP_PASS, &expected.bytes());
        assert_eq!(gw.dataplane.stats().unwrap().reason(Reason::PassEgressNotAttached), 1);
    }
}

#[test]
fn region_on_the_ingress_link_is_reached_with_xdp_tx() {
    for fam in FAMILIES {
        let mut gw = Gateway::new().unwrap();
        gw.select(R5.id).unwrap();
        let syn = from_client(fam.vip, L4::tcp_syn(40_026, 80));
        let out = gw.run(&syn.bytes(), "cli").unwrap();
        assert_frame(&out, XDP_TX, &steered(&syn, R5, 80).bytes());
    }
}

#[test]
fn service_without_a_region_drops_new_flows_and_counts_them() {
    for fam in FAMILIES {
        let gw = Gateway::new().unwrap();
        // Services start selecting nowhere until the controller decides.
        let syn = from_client(fam.vip, L4::tcp_syn(40_027, 80)).bytes();
        let out = gw.run(&syn, "cli").unwrap();
        assert_eq!(out.action, XDP_DROP);
        assert_eq!(gw.dataplane.stats().unwrap().reason(Reason::DropNoRegion), 1);
        assert!(entries(&gw).is_empty());
    }
}

#[test]
fn selection_update_fills_the_idle_bank_then_flips() {
    let mut gw = Gateway::new().unwrap();
    let web: ServiceAddr = WEB;
    gw.dataplane.set_selection(&web, &Selection::all(R1.id)).unwrap();
    let mut mixed = vec![R1.id; redirector_common::SELECTION_SLOTS];
    for slot in mixed.iter_mut().step_by(2) {
        *slot = R2.id;
    }
    gw.dataplane.set_selection(&web, &Selection::from_slots(&mixed).unwrap()).unwrap();
    assert_eq!(gw.dataplane.selection(&web).unwrap().slots(), &mixed[..]);
    // Flows hash across both regions of the new table.
    let mut seen = std::collections::BTreeSet::new();
    for port in 41_000..41_064 {
        let syn = from_client(VIP, L4::tcp_syn(port, 80));
        let out = gw.run(&syn.bytes(), "cli").unwrap();
        let dst = Ipv4Addr::new(out.frame[30], out.frame[31], out.frame[32], out.frame[33]);
        seen.insert(dst);
    }
    assert_eq!(seen, [R1.addr, R2.addr].into_iter().collect());
    assert!(Selection::from_slots(&mixed[1..]).is_err());
}

/// Records what the `log` crate is given, for the aya-log test.
struct Captured(std::sync::Mutex<Vec<String>>);

impl log::Log for Captured {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        // aya's loader logs too; only the program's own records count here.
        if !record.target().starts_with("aya") {
            self.0.lock().unwrap().push(record.args().to_string());
        }
    }
    fn flush(&self) {}
}

static CAPTURED: Captured = Captured(std::sync::Mutex::new(Vec::new()));

#[test]
fn flow_events_reach_the_log_through_aya_log_when_enabled() {
    log::set_logger(&CAPTURED).unwrap();
    log::set_max_level(log::LevelFilter::Trace);
    let mut gw = Gateway::with_flow_event_log(true).unwrap();
    gw.select(R1.id).unwrap();
    let mut logger = gw.dataplane.take_logger().expect("loaded with flow event logging");
    for vip in [IpAddr::V4(VIP), IpAddr::V6(VIP6)] {
        gw.run(&from_client(vip, L4::tcp_syn(40_028, 80)).bytes(), "cli").unwrap();
        gw.run(&from_client(vip, L4::tcp(40_028, 80)).bytes(), "cli").unwrap();
    }
    logger.flush();
    let lines = CAPTURED.0.lock().unwrap().clone();
    let ipv6 = format!("new flow: [{CLIENT6}]:40028 -> [{VIP6}]:80 proto 6");
    assert_eq!(
        lines,
        ["new flow: 192.0.2.10:40028 -> 10.2.0.2:80 proto 6", &ipv6],
        "one event a flow, for its first packet only"
    );
}

/// The sweep reads the table, then deletes what was expired; meanwhile
/// (longer if its thread is held up: redirectord stopped, a busy host) the
/// data plane may reuse a key for a new flow, which must survive.
#[test]
fn the_sweep_keeps_an_entry_reused_between_its_read_and_its_delete() {
    let mut gw = Gateway::new().unwrap();
    let now = monotonic_ns();
    let old = now.saturating_sub(CLOSED_FLOW_LINGER_NS + 1_000_000_000);
    let key = |port: u16| FlowKey {
        src_addr: u32::from(CLIENT).to_be(),
        dst_addr: u32::from(VIP2).to_be(),
        src_port: port.to_be(),
        dst_port: 80u16.to_be(),
        protocol: IPPROTO_TCP,
        _pad: [0; 3],
    };
    let closed = Flow { last_seen_ns: old, region_id: R1.id, flags: FLOW_FIN_SEEN, ..Default::default() };
    for port in [40_100, 40_101] {
        gw.dataplane.set_flow(&key(port), &closed).unwrap();
    }
    let mut table = gw.dataplane.flow_table().unwrap();
    let plan = table.plan(now).unwrap();
    // The client reuses port 40 100 for a new connection.
    let reopened = Flow { last_seen_ns: monotonic_ns(), region_id: R2.id, ..Default::default() };
    gw.dataplane.set_flow(&key(40_100), &reopened).unwrap();
    let sweep = table.finish(plan);
    assert_eq!(sweep.expired, 1, "only the entry still expired");
    let left = gw.dataplane.flows().unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!((left[0].0, left[0].1.region_id), (key(40_100), R2.id), "the new connection's entry stays");
}

#[test]
fn sweep_reads_a_table_of_many_batches_counts_active_flows_per_region_and_deletes_expired_ones() {
    let mut gw = Gateway::new().unwrap();
    let now = monotonic_ns();
    let idle = now.saturating_sub(UDP_IDLE_TIMEOUT_NS + 1_000_000_000);
    // Each entry i: region i % 3, and by i % 4 one of the four kinds.
    let entries = 10_000u32;
    let mut active = [0u64; 3];
    let mut expired = 0;
    for i in 0..entries {
        let region = (i % 3) as u8;
        let (protocol, direction, flags, last_seen_ns) = match i % 4 {
            0 => (IPPROTO_TCP, FLOW_ORIGINAL, 0, now),
            1 => (IPPROTO_TCP, FLOW_ORIGINAL, FLOW_FIN_SEEN, now),
            2 => (IPPROTO_TCP, FLOW_REPLY, 0, now),
            _ => (IPPROTO_UDP, FLOW_ORIGINAL, 0, idle),
        };
        match i % 4 {
            0 => active[region as usize] += 1,
            3 => expired += 1,
            _ => {}
        }
        let key = FlowKey {
            src_addr: i,
            dst_addr: u32::from(VIP2).to_be(),
            src_port: 40_000,
            dst_port: 80,
            protocol,
            _pad: [0; 3],
        };
        let flow = Flow { last_seen_ns, region_id: region, direction, flags, ..Default::default() };
        gw.dataplane.set_flow(&key, &flow).unwrap();
    }

    let sweep = gw.dataplane.flow_table().unwrap().sweep(now).unwrap();
    assert_eq!(sweep.entries, entries as usize, "every entry read");
    assert_eq!(sweep.expired, expired);
    assert_eq!(sweep.active[..3], active, "active flows per region");
    assert!(sweep.active[3..].iter().all(|&n| n == 0));

    let left = gw.dataplane.flows().unwrap();
    let distinct: BTreeSet<u32> = left.iter().map(|(key, _)| key.src_addr).collect();
    assert_eq!(left.len(), entries as usize - expired, "expired entries deleted");
    assert_eq!(distinct.len(), left.len(), "no entry read twice");
    assert!(distinct.iter().all(|i| i % 4 != 3), "only the idle ones deleted");
}

