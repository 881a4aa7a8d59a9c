//! Frames of a flow through the packet-test gateway ([`crate::xdp`]), as
//! they arrive and as they must leave, built independently of the program
//! (etherparse, checksums computed in full), and the assertions on them.

use std::net::IpAddr;

use redirector_common::{Address, Flow, FlowKey, FLOW_ORIGINAL};

use crate::{
    frames::{Frame, L4},
    xdp::*,
};

/// Client → VIP frame as it arrives on the gateway's client link, from
/// the client's address of the VIP's family.
pub fn from_client(vip: impl Into<IpAddr>, l4: L4) -> Frame {
    let vip = vip.into();
    let mut f = Frame::new(client_of(vip), vip, l4);
    f.src_mac = CLIENT_MAC;
    f.dst_mac = CLI_MAC;
    f
}

/// What `from_client(..)` must become when steered to `region`: the
/// destination address (and port) rewritten, MACs toward the region.
pub fn steered(frame: &Frame, region: RegionLink, port: u16) -> Frame {
    let mut f = frame.clone();
    f.dst = region.addr_of(frame.dst);
    f.l4 = match frame.l4 {
        L4::Tcp { src_port, .. } | L4::Udp { src_port, .. } => frame.l4.with_ports(src_port, port),
        _ => frame.l4.clone(),
    };
    f.src_mac = region.iface_mac;
    f.dst_mac = region.mac;
    f
}

/// The region's answer to `request` as it arrives from the region.
pub fn reply_from(region: RegionLink, request: &Frame, port: u16) -> Frame {
    let mut f = request.clone();
    f.src = region.addr_of(request.src);
    f.dst = client_of(request.src);
    f.src_mac = region.mac;
    f.dst_mac = region.iface_mac;
    f.l4 = match request.l4 {
        L4::Tcp { src_port, .. } => L4::tcp(port, src_port),
        L4::Udp { src_port, .. } => request.l4.with_ports(port, src_port),
        L4::IcmpEcho { id, seq, .. } => L4::IcmpEcho {
            request: false,
            id,
            seq,
        },
        ref other => other.clone(),
    };
    f
}

/// What the client must receive: the VIP as source, MACs toward the client.
pub fn as_client_sees(reply: &Frame, vip: impl Into<IpAddr>, vport: u16) -> Frame {
    let mut f = reply.clone();
    f.src = vip.into();
    f.l4 = match reply.l4 {
        L4::Tcp { dst_port, .. } | L4::Udp { dst_port, .. } => reply.l4.with_ports(vport, dst_port),
        _ => reply.l4.clone(),
    };
    f.src_mac = CLI_MAC;
    f.dst_mac = CLIENT_MAC;
    f
}

/// `frame` arriving on `iface` passes to the kernel as it came, counted
/// under `reason`.
pub fn assert_passed_untouched(gw: &Gateway, frame: &[u8], iface: &str, reason: redirector_common::Reason) {
    use redirector::dataplane::Dataplane;
    let before = gw.dataplane.stats().unwrap().reason(reason);
    let out = gw.run(frame, iface).unwrap();
    assert_frame(&out, XDP_PASS, frame);
    let after = gw.dataplane.stats().unwrap().reason(reason);
    assert_eq!(after, before + 1, "{} counter", reason.name());
}

/// Each of `frames`, cut at every length from an Ethernet header's (what
/// BPF_PROG_TEST_RUN takes at the least) to just short of its upper-layer
/// header's end, passes to the kernel as it came; none leaves a flow entry
/// or is forwarded.
pub fn assert_every_cut_passes(gw: &Gateway, frames: &[Frame]) {
    use redirector::dataplane::Dataplane;
    for frame in frames {
        let bytes = frame.bytes();
        for len in 14..frame.l4_end() {
            let cut = &bytes[..len];
            let out = gw.run(cut, "cli").unwrap();
            assert_eq!(out.action, XDP_PASS, "cut at {len}: {frame:?}");
            assert_eq!(out.frame, cut, "cut at {len} changed the frame");
        }
    }
    assert!(entries(gw).is_empty());
    assert_eq!(gw.dataplane.stats().unwrap().reason(redirector_common::Reason::Forwarded), 0);
}

pub fn assert_frame(got: &Outcome, action: u32, expected: &[u8]) {
    assert_eq!(got.action, action, "XDP action");
    assert_eq!(
        hex(&got.frame),
        hex(expected),
        "output frame (got, expected) differ"
    );
}

pub fn hex(bytes: &[u8]) -> String {
    bytes
        .chunks(16)
        .map(|c| c.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The fixture's VIPs of one family: a test run for each steers both.
#[derive(Clone, Copy, Debug)]
pub struct Family {
    /// `web`'s (region 2's own address).
    pub vip: IpAddr,
    /// `alt`'s, `dns`'s and `ping`'s.
    pub vip2: IpAddr,
}

pub const FAMILIES: [Family; 2] = [
    Family { vip: IpAddr::V4(VIP), vip2: IpAddr::V4(VIP2) },
    Family { vip: IpAddr::V6(VIP6), vip2: IpAddr::V6(VIP6_2) },
];

/// A flow entry of either family, addresses left out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub established: bool,
    pub direction: u8,
    pub region_id: u8,
    pub flags: u8,
    pub handshake: u32,
}

fn entry<A: Address>(established: bool, flow: &Flow<A>) -> Entry {
    Entry { established, direction: flow.direction, region_id: flow.region_id, flags: flow.flags, handshake: flow.handshake }
}

/// Every entry of the four flow tables (both families, new and
/// established), both directions.
pub fn entries(gw: &Gateway) -> Vec<Entry> {
    let dp = &gw.dataplane;
    let mut all: Vec<Entry> = dp.flows().unwrap().iter().map(|(_, f)| entry(true, f)).collect();
    all.extend(dp.new_flows().unwrap().iter().map(|(_, f)| entry(false, f)));
    all.extend(dp.flows6().unwrap().iter().map(|(_, f)| entry(true, f)));
    all.extend(dp.new_flows6().unwrap().iter().map(|(_, f)| entry(false, f)));
    all
}

/// Makes every entry of the established tables (both families, both
/// directions) last seen `ago_ns` before now.
pub fn age_established(gw: &mut Gateway, ago_ns: u64) {
    use redirector::dataplane::flow_table::monotonic_ns;
    let last_seen_ns = monotonic_ns().saturating_sub(ago_ns);
    let dp = &mut gw.dataplane;
    for (key, mut flow) in dp.flows().unwrap() {
        flow.last_seen_ns = last_seen_ns;
        dp.set_flow(&key, &flow).unwrap();
    }
    for (key, mut flow) in dp.flows6().unwrap() {
        flow.last_seen_ns = last_seen_ns;
        dp.set_flow6(&key, &flow).unwrap();
    }
}

/// [`entries`] that are original ones.
pub fn original_entries(gw: &Gateway) -> Vec<Entry> {
    entries(gw).into_iter().filter(|e| e.direction == FLOW_ORIGINAL).collect()
}

/// The original entries of both tables, new flows' and established ones'.
pub fn original_flows(gw: &Gateway) -> Vec<(FlowKey, Flow)> {
    let mut flows = gw.dataplane.flows().unwrap();
    flows.extend(gw.dataplane.new_flows().unwrap());
    flows.retain(|(_, f)| f.direction == FLOW_ORIGINAL);
    flows
}

/// A TCP connection through the gateway to `region`, its handshake
/// completed: the flow is established.
pub fn handshake(gw: &Gateway, region: RegionLink, client_port: u16) {
    handshake_to(gw, VIP.into(), region, client_port);
}

/// A segment of the client's connection from `client_port` to `web` on
/// `vip` goes to `region`, and the region's answer reaches the client from
/// the VIP.
pub fn assert_carried_both_ways(gw: &Gateway, vip: IpAddr, region: RegionLink, client_port: u16) {
    let data = from_client(vip, L4::tcp(client_port, 80));
    let out = gw.run(&data.bytes(), "cli").unwrap();
    assert_frame(&out, XDP_REDIRECT, &steered(&data, region, 80).bytes());
    let answer = reply_from(region, &data, 80);
    let out = gw.run(&answer.bytes(), region.iface).unwrap();
    assert_frame(&out, XDP_REDIRECT, &as_client_sees(&answer, vip, 80).bytes());
}

/// [`handshake`] with `web` on `vip`, of either family.
pub fn handshake_to(gw: &Gateway, vip: IpAddr, region: RegionLink, client_port: u16) {
    let syn = from_client(vip, L4::tcp_syn(client_port, 80));
    let out = gw.run(&syn.bytes(), "cli").unwrap();
    assert_frame(&out, XDP_REDIRECT, &steered(&syn, region, 80).bytes());
    let mut synack = reply_from(region, &syn, 80);
    synack.l4 = L4::tcp_synack(80, client_port, 7_000);
    let out = gw.run(&synack.bytes(), region.iface).unwrap();
    assert_frame(&out, XDP_REDIRECT, &as_client_sees(&synack, vip, 80).bytes());
    let ack = from_client(vip, L4::tcp_ack(client_port, 80, 7_001));
    let out = gw.run(&ack.bytes(), "cli").unwrap();
    assert_frame(&out, XDP_REDIRECT, &steered(&ack, region, 80).bytes());
}

