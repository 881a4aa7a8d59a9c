//! A reference model of the XDP program in plain Rust, for differential
//! fuzzing: a pure function of the maps' state and a frame to an action,
//! the frame the program leaves, and the changes to its flow tables and
//! counters. Written from the rules (docs/ARCHITECTURE.md), not from the
//! program's code: it reads bytes by offset, and where an input checksum
//! is right it computes the output checksums in full.
//!
//! What it shares with the program is what both sides must agree on by
//! design, from `redirector-common`: the flow hash and slot, the lifetime
//! rule, the map layouts.
//!
//! It knows the packet fixture's routes and neighbours (`crate::xdp`). A
//! flow's cached next hop is asked of the FIB again once its last-seen time
//! is a second old; the model has no clock, so the fuzzer clears both
//! sides' tables more often than that.

use std::{collections::HashMap, net::Ipv4Addr};

use redirector_common::{
    lifetime::{handshake_keeps_region, keeps_region},
    selection_slot, Counters, Flow, FlowKey, NextHop, Reason, RegionState, FLOW_ANSWERED,
    FLOW_FIN_SEEN, FLOW_ORIGINAL, FLOW_REPLY, FLOW_RST_SEEN, IPPROTO_ICMP, IPPROTO_TCP,
    IPPROTO_ICMPV6, IPPROTO_UDP, MAX_IPV6_EXTENSION_HEADERS, MAX_REGIONS, MAX_SERVICES, NO_REGION,
};

use crate::{
    frames::Mac,
    xdp::{CLIENT, CLIENT_MAC, CLI_MAC, REGIONS, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX},
};

/// A service as the model holds it: every fixture region serves it at
/// `backend_port`.
#[derive(Clone)]
pub struct ModelService {
    pub id: u32,
    pub vip: Ipv4Addr,
    pub port: u16,
    pub protocol: u8,
    pub backend_port: u16,
    /// The live selection table.
    pub slots: Vec<u8>,
}

/// What the program did with one frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub action: u32,
    pub frame: Vec<u8>,
}

/// The interfaces of the fixture, by name, as the kernel numbered them.
#[derive(Clone)]
pub struct Links {
    pub ifindex: HashMap<&'static str, u32>,
}

pub struct Model {
    pub services: Vec<ModelService>,
    /// By region id.
    pub regions: [RegionState; MAX_REGIONS as usize],
    pub flows: HashMap<FlowKey, Flow>,
    pub new_flows: HashMap<FlowKey, Flow>,
    pub reasons: [u64; Reason::COUNT as usize],
    pub region_counters: Vec<Counters>,
    pub service_counters: Vec<Counters>,
    /// Flow keys the last frame looked up or changed, in either table.
    pub touched: Vec<FlowKey>,
    links: Links,
}

/// A frame's headers as the program reads them.
struct Parsed {
    l3: usize,
    l4: usize,
    protocol: u8,
    key: FlowKey,
    tcp_flags: u8,
    /// TCP sequence and acknowledgement numbers.
    seq: u32,
    ack_number: u32,
}

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// The FIB's answer for a destination, as the fixture's routes and
/// neighbour table give it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fib {
    Hop(NextHop),
    NoNeighbour,
    Other,
}

impl Model {
    pub fn new(services: Vec<ModelService>, links: Links) -> Self {
        Model {
            services,
            regions: [RegionState::Down; MAX_REGIONS as usize],
            flows: HashMap::new(),
            new_flows: HashMap::new(),
            reasons: [0; Reason::COUNT as usize],
            region_counters: vec![Counters::default(); MAX_REGIONS as usize],
            service_counters: vec![Counters::default(); MAX_SERVICES as usize],
            touched: Vec::new(),
            links,
        }
    }

    /// The program's verdict on `frame` arriving on `ingress`, and its
    /// effects on the model's state.
    pub fn process(&mut self, frame: &[u8], ingress: u32) -> Verdict {
        let mut out = frame.to_vec();
        self.touched.clear();
        let (action, reason) = self.decide(&mut out, ingress);
        self.reasons[reason as usize] += 1;
        Verdict { action, frame: out }
    }

    fn side(&mut self, reason: Reason) {
        self.reasons[reason as usize] += 1;
    }

    fn decide(&mut self, frame: &mut [u8], ingress: u32) -> (u32, Reason) {
        let p = match parse(frame) {
            Ok(p) => p,
            Err(reason) => return (XDP_PASS, reason),
        };
        let key = p.key;
        self.touched.push(key);
        let syn = p.tcp_flags & TCP_SYN != 0 && p.tcp_flags & TCP_ACK == 0;
        let tcp = p.protocol == IPPROTO_TCP;
        let mut carried = 0;
        let mut into_new = tcp;
        let mut midstream = false;
        if let Some(flow) = self.flows.get(&key).copied() {
            if flow.direction == FLOW_REPLY {
                return self.toward_client(frame, &p, ingress, false);
            }
            if keeps_region(key.protocol, flow.flags, 0, syn) {
                if self.regions[flow.region_id as usize] != RegionState::Down {
                    return self.toward_region(frame, &p, ingress, false);
                }
                self.side(Reason::ReSteered);
                carried = flow.flags;
                into_new = false;
            } else if tcp {
                let reply = reply_key(&key, flow.rewrite_addr, flow.rewrite_port);
                self.touched.push(reply);
                self.flows.remove(&reply);
                self.flows.remove(&key);
            }
        } else if tcp {
            match self.new_flows.get(&key).copied() {
                Some(flow) if flow.direction == FLOW_REPLY => return self.toward_client(frame, &p, ingress, true),
                Some(flow) if handshake_keeps_region(flow.flags, 0, syn) => {
                    if self.regions[flow.region_id as usize] != RegionState::Down {
                        let promoted = self.promote_if_complete(&p, &flow);
                        return self.toward_region(frame, &p, ingress, !promoted);
                    }
                    self.side(Reason::ReSteered);
                    carried = flow.flags;
                }
                Some(_) => {}
                None => midstream = !syn,
            }
        }
        let Some(service) = self
            .services
            .iter()
            .find(|s| s.vip == Ipv4Addr::from(u32::from_be(key.dst_addr)) && s.port == u16::from_be(key.dst_port) && s.protocol == key.protocol)
            .cloned()
        else {
            return (XDP_PASS, Reason::PassNotService);
        };
        if midstream {
            self.side(Reason::MidstreamNoFlow);
        }
        self.new_flow(frame, &p, ingress, &service, into_new, carried | close_flags(p.tcp_flags))
    }

    /// A new TCP flow whose packet acknowledges the region's SYN-ACK moves
    /// to the established table, if its reply twin is still there.
    fn promote_if_complete(&mut self, p: &Parsed, flow: &Flow) -> bool {
        let ack_number = (p.tcp_flags & TCP_ACK != 0 && p.tcp_flags & TCP_SYN == 0)
            .then_some(p.ack_number);
        if flow.flags & FLOW_ANSWERED == 0 || ack_number != Some(flow.handshake) {
            return false;
        }
        let twin = reply_key(&p.key, flow.rewrite_addr, flow.rewrite_port);
        self.touched.push(twin);
        let Some(mut reply) = self.new_flows.get(&twin).copied() else {
            return false;
        };
        reply.handshake = 0;
        let mut original = *flow;
        original.flags &= !FLOW_ANSWERED;
        original.handshake = 0;
        self.flows.insert(twin, reply);
        self.flows.insert(p.key, original);
        self.new_flows.remove(&p.key);
        self.new_flows.remove(&twin);
        self.side(Reason::Promoted);
        true
    }

    fn table(&mut self, new: bool) -> &mut HashMap<FlowKey, Flow> {
        if new {
            &mut self.new_flows
        } else {
            &mut self.flows
        }
    }

    fn toward_region(&mut self, frame: &mut [u8], p: &Parsed, ingress: u32, new: bool) -> (u32, Reason) {
        let flow = self.table(new)[&p.key];
        self.count(flow.service_id as u32, flow.region_id, frame.len(), true, false);
        rewrite(frame, p, true, flow.rewrite_addr, flow.rewrite_port);
        let hop = self.next_hop(frame, p, ingress, new, p.key);
        self.leave(frame, ingress, hop, Reason::Forwarded)
    }

    fn toward_client(&mut self, frame: &mut [u8], p: &Parsed, ingress: u32, new: bool) -> (u32, Reason) {
        let reply = self.table(new)[&p.key];
        let close = close_flags(p.tcp_flags);
        let synack = (p.tcp_flags & TCP_SYN != 0 && p.tcp_flags & TCP_ACK != 0).then_some(p.seq);
        if close != 0 || synack.is_some() {
            let original_key = FlowKey {
                src_addr: p.key.dst_addr,
                dst_addr: reply.rewrite_addr,
                src_port: p.key.dst_port,
                dst_port: reply.rewrite_port,
                protocol: p.key.protocol,
                _pad: [0; 3],
            };
            self.touched.push(original_key);
            if let Some(original) = self.table(new).get_mut(&original_key) {
                original.flags |= close;
                if let Some(seq) = synack {
                    original.flags |= FLOW_ANSWERED;
                    original.handshake = seq.wrapping_add(1);
                }
            }
        }
        self.count(reply.service_id as u32, reply.region_id, frame.len(), false, false);
        rewrite(frame, p, false, reply.rewrite_addr, reply.rewrite_port);
        let hop = self.next_hop(frame, p, ingress, new, p.key);
        self.leave(frame, ingress, hop, Reason::Replied)
    }

    fn new_flow(
        &mut self,
        frame: &mut [u8],
        p: &Parsed,
        ingress: u32,
        service: &ModelService,
        into_new: bool,
        flags: u8,
    ) -> (u32, Reason) {
        let region = service.slots[selection_slot(&p.key)];
        if region == NO_REGION {
            return (XDP_DROP, Reason::DropNoRegion);
        }
        let Some(link) = REGIONS.iter().find(|r| r.id == region) else {
            return (XDP_DROP, Reason::DropNoBackend);
        };
        let backend_addr = u32::from(link.addr).to_be();
        let backend_port = service.backend_port.to_be();
        self.count(service.id, region, frame.len(), true, true);
        rewrite(frame, p, true, backend_addr, backend_port);
        let fib = self.fib(frame, p, ingress);
        let mut flow = Flow {
            last_seen_ns: 0,
            rewrite_addr: backend_addr,
            rewrite_port: backend_port,
            service_id: service.id as u16,
            region_id: region,
            direction: FLOW_ORIGINAL,
            flags,
            _pad: 0,
            handshake: 0,
            next_hop: fib.unwrap_or_default(),
            _tail: [],
        };
        let table = self.table(into_new);
        table.insert(p.key, flow);
        flow.direction = FLOW_REPLY;
        flow.rewrite_addr = p.key.dst_addr;
        flow.rewrite_port = p.key.dst_port;
        flow.next_hop = NextHop::default();
        // A SYN's sequence number + 1: what a refusal acknowledges.
        let syn = p.protocol == IPPROTO_TCP && p.tcp_flags & TCP_SYN != 0 && p.tcp_flags & TCP_ACK == 0;
        flow.handshake = if syn { p.seq.wrapping_add(1) } else { 0 };
        let reply = reply_key(&p.key, backend_addr, backend_port);
        table.insert(reply, flow);
        self.touched.push(reply);
        self.leave(frame, ingress, fib, Reason::Forwarded)
    }

    /// The flow's cached next hop, or the FIB's answer stored in it.
    fn next_hop(&mut self, frame: &[u8], p: &Parsed, ingress: u32, new: bool, key: FlowKey) -> Result<NextHop, Reason> {
        let close = close_flags(p.tcp_flags);
        let entry = self.table(new).get_mut(&key).expect("the flow's entry");
        entry.flags |= close;
        if entry.next_hop.ifindex != 0 {
            return Ok(entry.next_hop);
        }
        let fib = self.fib(frame, p, ingress);
        self.table(new).get_mut(&key).unwrap().next_hop = fib.unwrap_or_default();
        fib
    }

    fn leave(&mut self, frame: &mut [u8], ingress: u32, hop: Result<NextHop, Reason>, sent: Reason) -> (u32, Reason) {
        match hop {
            Ok(hop) => {
                frame[0..6].copy_from_slice(&hop.dst_mac);
                frame[6..12].copy_from_slice(&hop.src_mac);
                if hop.ifindex == ingress {
                    (XDP_TX, sent)
                } else if self.attached(hop.ifindex) {
                    (XDP_REDIRECT, sent)
                } else {
                    // A hop cached while the packet came in on its own link.
                    (XDP_DROP, Reason::DropRedirectFailed)
                }
            }
            Err(reason) => (XDP_PASS, reason),
        }
    }

    fn count(&mut self, service: u32, region: u8, len: usize, to_region: bool, new_flow: bool) {
        for c in [&mut self.region_counters[region as usize], &mut self.service_counters[service as usize]] {
            if to_region {
                c.packets += 1;
                c.bytes += len as u64;
                c.new_flows += u64::from(new_flow);
            } else {
                c.reply_packets += 1;
                c.reply_bytes += len as u64;
            }
        }
    }

    /// Where the (rewritten) packet goes, and whether the program can send
    /// it there itself.
    fn fib(&self, frame: &[u8], p: &Parsed, ingress: u32) -> Result<NextHop, Reason> {
        let dst = Ipv4Addr::new(frame[p.l3 + 16], frame[p.l3 + 17], frame[p.l3 + 18], frame[p.l3 + 19]);
        let tot_len = u16::from_be_bytes([frame[p.l3 + 2], frame[p.l3 + 3]]);
        match self.route(dst, tot_len) {
            Fib::Hop(hop) => {
                if hop.ifindex != ingress && !self.attached(hop.ifindex) {
                    return Err(Reason::PassEgressNotAttached);
                }
                Ok(hop)
            }
            Fib::NoNeighbour => Err(Reason::PassNoNeighbour),
            Fib::Other => Err(Reason::PassFibOther),
        }
    }

    fn attached(&self, ifindex: u32) -> bool {
        ["cli", "r1", "r2", "r3"].iter().any(|i| self.links.ifindex[i] == ifindex)
    }

    /// The fixture's routes: 192.0.2.0/24 on cli, 10.N.0.0/24 on rN; the
    /// gateway's own and broadcast addresses are no next hop; a packet
    /// longer than the links' MTU must be fragmented first.
    fn route(&self, dst: Ipv4Addr, tot_len: u16) -> Fib {
        let o = dst.octets();
        let link = match o {
            [192, 0, 2, _] => Some(("cli", CLI_MAC)),
            [10, n @ 1..=4, 0, _] => REGIONS.iter().find(|r| r.id == n).map(|r| (r.iface, r.iface_mac)),
            _ => None,
        };
        let Some((iface, iface_mac)) = link else { return Fib::Other };
        if o[3] == 1 || o[3] == 255 || tot_len > 1500 {
            return Fib::Other;
        }
        let neighbour: Option<Mac> = if dst == CLIENT {
            Some(CLIENT_MAC)
        } else {
            // region3's neighbour is never resolved.
            REGIONS.iter().find(|r| r.addr == dst && r.id != 3).map(|r| r.mac)
        };
        match neighbour {
            Some(mac) => Fib::Hop(NextHop { ifindex: self.links.ifindex[iface], src_mac: iface_mac, dst_mac: mac }),
            None => Fib::NoNeighbour,
        }
    }
}

fn reply_key(key: &FlowKey, addr: u32, port: u16) -> FlowKey {
    FlowKey { src_addr: addr, dst_addr: key.src_addr, src_port: port, dst_port: key.src_port, protocol: key.protocol, _pad: [0; 3] }
}

fn close_flags(tcp_flags: u8) -> u8 {
    let mut flags = 0;
    if tcp_flags & TCP_FIN != 0 {
        flags |= FLOW_FIN_SEEN;
    }
    if tcp_flags & TCP_RST != 0 {
        flags |= FLOW_RST_SEEN;
    }
    flags
}

/// What the data plane does with an IPv6 frame: the parse alone decides
/// the reason it passes with (`redirector-ebpf/src/parse.rs`). The model
/// steers no IPv6: the generator sends IPv6 to no service's address (and
/// IPv4 under IPv6's EtherType), never to the fixture's IPv6 services,
/// which the packet tests cover.
fn ipv6_verdict(frame: &[u8], l3: usize) -> Reason {
    let len = frame.len();
    if len < l3 + 40 {
        return Reason::PassMalformed;
    }
    if frame[l3] >> 4 != 6 {
        return Reason::PassMalformed;
    }
    let mut next = frame[l3 + 6];
    let mut offset = l3 + 40;
    for _ in 0..MAX_IPV6_EXTENSION_HEADERS {
        if !matches!(next, 0 | 43 | 60) {
            break;
        }
        if len < offset + 4 {
            return Reason::PassMalformed;
        }
        if next == 43 && frame[offset + 3] != 0 {
            return Reason::PassIpv6Extensions;
        }
        next = frame[offset];
        offset += (frame[offset + 1] as usize + 1) * 8;
    }
    let needed = match next {
        44 => return Reason::PassFragment,
        0 | 43 | 60 => return Reason::PassIpv6Extensions,
        IPPROTO_TCP => 20,
        IPPROTO_UDP | IPPROTO_ICMPV6 => 8,
        _ => return Reason::PassNotService,
    };
    if len < offset + needed {
        return Reason::PassMalformed;
    }
    match next {
        IPPROTO_TCP if frame[offset + 12] >> 4 < 5 => Reason::PassMalformed,
        IPPROTO_ICMPV6 if frame[offset + 1] != 0 || !matches!(frame[offset], 128 | 129) => Reason::PassIcmpOther,
        _ => Reason::PassNotService,
    }
}

fn parse(frame: &[u8]) -> Result<Parsed, Reason> {
    let len = frame.len();
    if len < 14 {
        return Err(Reason::PassMalformed);
    }
    let mut ether_type = u16::from_be_bytes([frame[12], frame[13]]);
    let mut l3 = 14;
    if ether_type == 0x8100 {
        if len < 18 {
            return Err(Reason::PassMalformed);
        }
        ether_type = u16::from_be_bytes([frame[16], frame[17]]);
        l3 = 18;
    }
    if ether_type == 0x86dd {
        return Err(ipv6_verdict(frame, l3));
    }
    if ether_type != 0x0800 {
        return Err(Reason::PassNotIp);
    }
    if len < l3 + 20 {
        return Err(Reason::PassMalformed);
    }
    let (version, ihl) = (frame[l3] >> 4, (frame[l3] & 0x0f) as usize);
    if version != 4 || ihl < 5 {
        return Err(Reason::PassMalformed);
    }
    if u16::from_be_bytes([frame[l3 + 6], frame[l3 + 7]]) & 0x3fff != 0 {
        return Err(Reason::PassFragment);
    }
    let l4 = l3 + ihl * 4;
    let protocol = frame[l3 + 9];
    let word = |at: usize| u16::from_ne_bytes([frame[at], frame[at + 1]]);
    let long = |at: usize| u32::from_be_bytes(frame[at..at + 4].try_into().unwrap());
    let (src_port, dst_port, tcp_flags, seq, ack_number) = match protocol {
        IPPROTO_TCP => {
            if len < l4 + 20 {
                return Err(Reason::PassMalformed);
            }
            if frame[l4 + 12] >> 4 < 5 {
                return Err(Reason::PassMalformed);
            }
            (word(l4), word(l4 + 2), frame[l4 + 13], long(l4 + 4), long(l4 + 8))
        }
        IPPROTO_UDP => {
            if len < l4 + 8 {
                return Err(Reason::PassMalformed);
            }
            (word(l4), word(l4 + 2), 0, 0, 0)
        }
        IPPROTO_ICMP => {
            if len < l4 + 8 {
                return Err(Reason::PassMalformed);
            }
            let (kind, code) = (frame[l4], frame[l4 + 1]);
            if code != 0 || (kind != 8 && kind != 0) {
                return Err(Reason::PassIcmpOther);
            }
            let id = word(l4 + 4);
            if kind == 8 {
                (id, 0, 0, 0, 0)
            } else {
                (0, id, 0, 0, 0)
            }
        }
        _ => return Err(Reason::PassNotService),
    };
    let addr = |at: usize| u32::from_ne_bytes(frame[at..at + 4].try_into().unwrap());
    Ok(Parsed {
        l3,
        l4,
        protocol,
        key: FlowKey { src_addr: addr(l3 + 12), dst_addr: addr(l3 + 16), src_port, dst_port, protocol, _pad: [0; 3] },
        tcp_flags,
        seq,
        ack_number,
    })
}

/// One's complement addition of 16-bit words.
fn oc_add(a: u16, b: u16) -> u16 {
    let sum = a as u32 + b as u32;
    ((sum & 0xffff) + (sum >> 16)) as u16
}

/// The one's complement sum of `bytes` as big-endian 16-bit words.
fn oc_sum(bytes: &[u8]) -> u16 {
    bytes.chunks(2).fold(0, |sum, pair| oc_add(sum, u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
}

/// The checksum at `at` of `after` (with `pseudo`'s sums added) once the
/// covered bytes changed from `before`: computed in full when the old one
/// was right, else moved by the difference of the two sums, as any
/// incremental update must.
fn checksum(before: &[u8], after: &[u8], at: usize, pseudo: (u16, u16)) -> u16 {
    let old = u16::from_be_bytes([before[at], before[at + 1]]);
    let sum = |bytes: &[u8], pseudo: u16| {
        let mut copy = bytes.to_vec();
        copy[at..at + 2].fill(0);
        oc_add(oc_sum(&copy), pseudo)
    };
    let (sum_before, sum_after) = (sum(before, pseudo.0), sum(after, pseudo.1));
    if oc_add(sum_before, old) == 0xffff {
        !sum_after
    } else {
        !oc_add(oc_add(!old, !sum_before), sum_after)
    }
}

/// Sets the destination (toward the region) or the source (back to the
/// VIP) address and port to `addr` and `port`, as they sit in the packet,
/// and the checksums that cover them.
fn rewrite(frame: &mut [u8], p: &Parsed, destination: bool, addr: u32, port: u16) {
    let before = frame.to_vec();
    let addr_at = p.l3 + if destination { 16 } else { 12 };
    frame[addr_at..addr_at + 4].copy_from_slice(&addr.to_ne_bytes());
    let ip = checksum(&before[p.l3..p.l4], &frame[p.l3..p.l4], 10, (0, 0));
    frame[p.l3 + 10..p.l3 + 12].copy_from_slice(&ip.to_be_bytes());
    let (check_at, header_len) = match p.protocol {
        IPPROTO_TCP => (16, 20),
        IPPROTO_UDP => (6, 8),
        _ => return,
    };
    let port_at = p.l4 + if destination { 2 } else { 0 };
    frame[port_at..port_at + 2].copy_from_slice(&port.to_ne_bytes());
    let udp = p.protocol == IPPROTO_UDP;
    if udp && before[p.l4 + 6..p.l4 + 8] == [0, 0] {
        return; // "no checksum" stays so
    }
    // The segment the checksum covers, as the IPv4 header gives its length;
    // where that length does not fit the frame the old checksum cannot be
    // verified, and the header alone carries the difference.
    let ip_header_len = p.l4 - p.l3;
    let tot_len = u16::from_be_bytes([frame[p.l3 + 2], frame[p.l3 + 3]]) as usize;
    let end = p.l3 + tot_len;
    let (end, segment_len) = if end >= p.l4 + header_len && end <= frame.len() {
        (end, tot_len - ip_header_len)
    } else {
        (p.l4 + header_len, 0)
    };
    let pseudo = |bytes: &[u8]| {
        let mut header = bytes[p.l3 + 12..p.l3 + 20].to_vec();
        header.extend([0, p.protocol]);
        header.extend((segment_len as u16).to_be_bytes());
        oc_sum(&header)
    };
    let pseudo = (pseudo(&before), pseudo(frame));
    let mut check = checksum(&before[p.l4..end], &frame[p.l4..end], check_at, pseudo);
    if udp && check == 0 {
        check = 0xffff;
    }
    frame[p.l4 + check_at..p.l4 + check_at + 2].copy_from_slice(&check.to_be_bytes());
}
