//! In-kernel tests of what the data plane tells the flow sync: crafted
//! frames through BPF_PROG_TEST_RUN, then the `FLOW_EVENTS` ring buffer
//! read as redirectord reads it.

use aya::maps::{MapData, RingBuf};
use redirector::dataplane::{flow_table::coarse_monotonic_ns, Dataplane};
use redirector_common::{
    lifetime::SYNC_REFRESH_NS, Flow, Reason, RegionState, SyncEvent, FLOW_ORIGINAL, FLOW_SYNCED, IPPROTO_TCP,
    IPPROTO_UDP, SYNC_EVENT_PINNED, SYNC_EVENT_RE_STEERED,
};
use redirector_tests::{frames::L4, steer::*, xdp::*};

/// Every event the ring holds now.
fn events(ring: &mut RingBuf<MapData>) -> Vec<SyncEvent> {
    drain_ring(ring)
}

fn gateway() -> (Gateway, RingBuf<MapData>) {
    let mut gw = Gateway::with_sync_events().unwrap();
    gw.select(R1.id).unwrap();
    let ring = gw.dataplane.take_flow_events().expect("loaded with sync events");
    (gw, ring)
}

/// The event must say what the flow's original entry says.
fn assert_announces(event: &SyncEvent, gw: &Gateway, kind: u8) {
    let (key, flow) = gw
        .dataplane
        .flows()
        .unwrap()
        .into_iter()
        .find(|(k, f)| f.direction == FLOW_ORIGINAL && *k == event.key)
        .expect("the announced flow is established");
    assert_eq!(event.event, kind);
    assert_eq!(event.key, key);
    assert_eq!(
        (event.rewrite_addr, event.rewrite_port, event.service_id, event.region_id, event.flags),
        (flow.rewrite_addr, flow.rewrite_port, flow.service_id, flow.region_id, flow.flags)
    );
}

#[test]
fn a_tcp_flow_is_announced_when_its_handshake_completes_not_before() {
    let (gw, mut ring) = gateway();
    gw.run(&from_client(VIP, L4::tcp_syn(41_000, 80)).bytes(), "cli").unwrap();
    assert!(events(&mut ring).is_empty(), "a SYN alone (a flood's) never reaches the peers");
    handshake(&gw, R1, 41_001);
    let announced = events(&mut ring);
    assert_eq!(announced.len(), 1, "{announced:?}");
    assert_announces(&announced[0], &gw, SYNC_EVENT_PINNED);
    assert_eq!((announced[0].region_id, announced[0].key.protocol), (R1.id, IPPROTO_TCP));
    // Later packets of the flow, both ways, announce nothing.
    let data = from_client(VIP, L4::tcp(41_001, 80));
    gw.run(&data.bytes(), "cli").unwrap();
    gw.run(&reply_from(R1, &data, 80).bytes(), R1.iface).unwrap();
    assert!(events(&mut ring).is_empty());
}

#[test]
fn a_udp_flow_is_announced_on_its_first_packet_and_a_re_steer_on_its_move() {
    let (mut gw, mut ring) = gateway();
    let query = from_client(VIP2, L4::udp(41_002, 53));
    gw.run(&query.bytes(), "cli").unwrap();
    gw.run(&query.bytes(), "cli").unwrap();
    let announced = events(&mut ring);
    assert_eq!(announced.len(), 1, "{announced:?}");
    assert_announces(&announced[0], &gw, SYNC_EVENT_PINNED);
    assert_eq!((announced[0].key.protocol, announced[0].rewrite_port), (IPPROTO_UDP, 5353u16.to_be()));

    gw.dataplane.set_region_state(R1.id, RegionState::Down).unwrap();
    gw.select(R2.id).unwrap();
    let out = gw.run(&query.bytes(), "cli").unwrap();
    assert_frame(&out, XDP_REDIRECT, &steered(&query, R2, 5353).bytes());
    let announced = events(&mut ring);
    assert_eq!(announced.len(), 1, "{announced:?}");
    assert_announces(&announced[0], &gw, SYNC_EVENT_RE_STEERED);
    assert_eq!(announced[0].region_id, R2.id);
}

#[test]
fn without_sync_nothing_is_announced() {
    let mut gw = Gateway::new().unwrap();
    gw.select(R1.id).unwrap();
    assert!(gw.dataplane.take_flow_events().is_none());
    let mut ring = gw.pinned_ring(redirector_common::map_names::FLOW_EVENTS).unwrap();
    handshake(&gw, R1, 41_003);
    gw.run(&from_client(VIP2, L4::udp(41_004, 53)).bytes(), "cli").unwrap();
    assert!(events(&mut ring).is_empty());
    assert_eq!(gw.dataplane.stats().unwrap().reason(Reason::SyncEventLost), 0);
}

/// A peer's copy (written by the sync with FLOW_SYNCED) becomes this
/// gateway's own flow when a packet of it passes here, so it is announced
/// in the next refreshes; a copy no packet touched stays marked.
#[test]
fn a_packet_through_a_peers_copy_makes_it_carried_here() {
    let (mut gw, mut ring) = gateway();
    handshake(&gw, R1, 41_005);
    handshake(&gw, R1, 41_006);
    events(&mut ring);
    // Both made copies, stamped as the sync stamps them, a refresh ago.
    let stamp = coarse_monotonic_ns() - SYNC_REFRESH_NS;
    for (key, flow) in gw.dataplane.flows().unwrap() {
        let copy = Flow { flags: flow.flags | FLOW_SYNCED, last_seen_ns: stamp, next_hop: Default::default(), ..flow };
        gw.dataplane.set_flow(&key, &copy).unwrap();
    }
    let data = from_client(VIP, L4::tcp(41_005, 80));
    let out = gw.run(&data.bytes(), "cli").unwrap();
    assert_frame(&out, XDP_REDIRECT, &steered(&data, R1, 80).bytes());
    for (key, flow) in gw.dataplane.flows().unwrap().into_iter().filter(|(_, f)| f.direction == FLOW_ORIGINAL) {
        let carried = u16::from_be(key.src_port) == 41_005;
        assert_eq!(flow.flags & FLOW_SYNCED == 0, carried, "{key:?} {flow:?}");
    }
    assert!(events(&mut ring).is_empty(), "a copy carried on is not a new flow");
}

/// A reader that falls behind (or a daemon that is not running) loses
/// events, never packets: each one lost is counted, and the flows are
/// forwarded and pinned all the same (the sweep's refresh carries them).
#[test]
fn a_full_ring_loses_events_counted_and_forwards_every_packet() {
    let (gw, mut ring) = gateway();
    // More flows than the ring holds events (4 MiB of 40-byte records).
    let flows: u32 = 110_000;
    for i in 0..flows {
        let mut query = from_client(VIP2, L4::udp(1024 + (i % 60_000) as u16, 53));
        query.src = std::net::Ipv4Addr::from(u32::from(CLIENT) + i / 60_000).into();
        let out = gw.run(&query.bytes(), "cli").unwrap();
        assert_eq!(out.action, XDP_REDIRECT, "flow {i}");
    }
    let stats = gw.dataplane.stats().unwrap();
    let lost = stats.reason(Reason::SyncEventLost);
    let read = events(&mut ring).len() as u64;
    assert!(lost > 0, "the ring held {read} events");
    assert_eq!((read + lost, stats.reason(Reason::Forwarded)), (flows as u64, flows as u64));
    assert_eq!(gw.dataplane.flows().unwrap().len(), 2 * flows as usize);
}
