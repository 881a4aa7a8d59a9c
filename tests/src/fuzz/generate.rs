//! The fuzzer's steps: mostly frames a gateway sees (clients opening,
//! using and closing connections to the fixture's services, regions
//! answering them, handshakes completed or guessed, ICMP errors quoting
//! them, traffic for no service), often damaged (VLAN tags, IP options, fragments, truncation,
//! flipped bytes, wrong checksums and lengths, odd flags), mixed with
//! region state and selection changes.
//!
//! Deterministic for a seed, given the model's answers: it asks the model
//! (never the program) where a connection was pinned, to answer from there.

use std::net::Ipv4Addr;

use redirector_common::{FlowKey, RegionState, NO_REGION};

use super::{
    mix,
    model::Model,
    SelectionSpec, Step, INTERFACES, SERVICES,
};
use crate::{
    frames::{Frame, L4},
    xdp::{backend_port, vip4, CLIENT, CLIENT6, R1, R3, R4, R5, REGIONS, VIP, VIP2},
};

/// A connection the generator opened: what its packets need.
#[derive(Clone)]
struct Conn {
    service: usize,
    client: Ipv4Addr,
    /// The client's port, or its echo identifier.
    port: u16,
    /// The sequence number of the last SYN-ACK sent for it.
    synack: Option<u32>,
}

pub struct Generator {
    state: u64,
    conns: Vec<Conn>,
}

const MAX_CONNS: usize = 128;

impl Generator {
    pub fn new(seed: u64) -> Self {
        Self { state: mix(seed), conns: Vec::new() }
    }

    fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(1);
        mix(self.state)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }

    /// Every region's state and every service's selection, so a segment
    /// replays the same from any start.
    pub fn segment_start(&mut self) -> Vec<Step> {
        self.conns.clear();
        let mut steps: Vec<Step> = REGIONS.iter().map(|r| self.region_step(r.id)).collect();
        steps.extend((0..SERVICES.len()).map(|service| self.select_step(service)));
        steps
    }

    fn region_step(&mut self, id: u8) -> Step {
        let state = match self.below(10) {
            0..=6 => RegionState::Up,
            7 => RegionState::Draining,
            _ => RegionState::Down,
        };
        Step::Region { id, state }
    }

    fn select_step(&mut self, service: usize) -> Step {
        // Mostly fixture regions; 6 has no backend, NO_REGION no region.
        let choices = [1, 1, 2, 2, 3, 4, 5, 5, 6, NO_REGION];
        let n = 1 + self.below(3) as usize;
        let regions = (0..n).map(|_| self.pick(&choices)).collect();
        Step::Select { service, spec: SelectionSpec { regions, seed: self.next() } }
    }

    pub fn step(&mut self, model: &Model) -> Step {
        match self.below(200) {
            0..=3 => {
                let id = self.pick(&[1, 2, 3, 4, 5]);
                self.region_step(id)
            }
            4 => {
                let service = self.below(SERVICES.len() as u64) as usize;
                self.select_step(service)
            }
            _ => self.frame(model),
        }
    }

    fn frame(&mut self, model: &Model) -> Step {
        let (mut frame, mut ingress) = match self.below(100) {
            0..=21 => self.open(),
            22..=43 if !self.conns.is_empty() => self.client_packet(),
            44..=53 if !self.conns.is_empty() => self.handshake_ack(),
            54..=81 if !self.conns.is_empty() => self.answer(model),
            82..=85 if !self.conns.is_empty() => self.icmp_error(model),
            86..=99 => self.noise(),
            _ => self.open(),
        };
        if self.chance(10) {
            ingress = self.pick(&INTERFACES);
        }
        if self.chance(30) {
            for _ in 0..1 + self.below(3) {
                self.damage_fields(&mut frame);
            }
        }
        let mut bytes = frame.bytes();
        if self.chance(15) {
            for _ in 0..1 + self.below(3) {
                self.damage_bytes(&frame, &mut bytes);
            }
        }
        Step::Frame { ingress, bytes }
    }

    fn client_addr(&mut self) -> Ipv4Addr {
        match self.below(100) {
            0..=49 => CLIENT,
            50..=79 => Ipv4Addr::new(192, 0, 2, 2 + self.below(250) as u8),
            80..=87 => self.pick(&REGIONS).addr,
            88..=91 => self.pick(&[Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(192, 0, 2, 255), VIP, VIP2]),
            _ => Ipv4Addr::from(self.next() as u32),
        }
    }

    fn port(&mut self) -> u16 {
        if self.chance(70) {
            40_000 + self.below(12) as u16
        } else {
            self.next() as u16
        }
    }

    /// A SYN with a random initial sequence number.
    fn syn(&mut self, src_port: u16, dst_port: u16) -> L4 {
        let mut l4 = L4::tcp_syn(src_port, dst_port);
        if let L4::Tcp { seq, .. } = &mut l4 {
            *seq = self.next() as u32;
        }
        l4
    }

    /// A client opens a connection to a service: SYN, datagram or echo.
    fn open(&mut self) -> (Frame, &'static str) {
        let service = self.below(SERVICES.len() as u64) as usize;
        let conn = Conn { service, client: self.client_addr(), port: self.port(), synack: None };
        let l4 = match service {
            0 | 1 => self.syn(conn.port, SERVICES[service].port),
            2 => L4::udp(conn.port, SERVICES[service].port),
            _ => L4::IcmpEcho { request: true, id: conn.port, seq: self.next() as u16 },
        };
        let frame = Frame::new(conn.client, vip4(&SERVICES[service]), l4);
        if self.conns.len() < MAX_CONNS {
            self.conns.push(conn);
        } else {
            let at = self.below(MAX_CONNS as u64) as usize;
            self.conns[at] = conn;
        }
        (frame, "cli")
    }

    fn conn(&mut self) -> Conn {
        let at = self.below(self.conns.len() as u64) as usize;
        self.conns[at].clone()
    }

    /// The client's next packet of a connection: data, a close, a reset, a
    /// SYN reusing the tuple, or any flags at all.
    fn client_packet(&mut self) -> (Frame, &'static str) {
        let conn = self.conn();
        let service = SERVICES[conn.service];
        let l4 = match conn.service {
            0 | 1 => {
                let (syn, ack, fin, rst) = match self.below(10) {
                    0..=3 => (false, true, false, false),
                    4 | 5 => (false, true, true, false),
                    6 => (false, self.chance(50), false, true),
                    7 => (true, false, false, false),
                    _ => (self.chance(50), self.chance(50), self.chance(50), self.chance(50)),
                };
                L4::Tcp {
                    src_port: conn.port,
                    dst_port: service.port,
                    syn,
                    ack,
                    fin,
                    rst,
                    seq: self.next() as u32,
                    ack_no: self.next() as u32,
                }
            }
            2 => L4::udp(conn.port, service.port),
            _ => L4::IcmpEcho { request: true, id: conn.port, seq: self.next() as u16 },
        };
        (Frame::new(conn.client, vip4(&service), l4), "cli")
    }

    /// The ACK that ends a handshake: mostly right, sometimes a guess.
    fn handshake_ack(&mut self) -> (Frame, &'static str) {
        let conn = self.conn();
        let service = SERVICES[conn.service];
        let ack_no = match (conn.synack, self.below(10)) {
            (Some(seq), 0..=7) => seq.wrapping_add(1),
            (Some(seq), 8) => seq,
            _ => self.next() as u32,
        };
        let l4 = L4::tcp_ack(conn.port, service.port, ack_no);
        (Frame::new(conn.client, vip4(&service), l4), "cli")
    }

    /// A region answers a connection, from where the model pinned it (or
    /// from any region, when the model holds no flow for it).
    fn answer(&mut self, model: &Model) -> (Frame, &'static str) {
        let at = self.below(self.conns.len() as u64) as usize;
        let conn = self.conns[at].clone();
        let service = SERVICES[conn.service];
        let protocol = service.protocol.number();
        let (src_port, dst_port) = if conn.service == 3 { (conn.port, 0) } else { (conn.port, service.port) };
        let key = FlowKey {
            src_addr: u32::from(conn.client).to_be(),
            dst_addr: u32::from(vip4(&service)).to_be(),
            src_port: src_port.to_be(),
            dst_port: dst_port.to_be(),
            protocol,
            _pad: [0; 3],
        };
        let pinned = model.flows.get(&key).or_else(|| model.new_flows.get(&key)).copied();
        let region = match pinned.and_then(|f| REGIONS.iter().find(|r| r.id == f.region_id)) {
            Some(region) if self.chance(95) => *region,
            _ => self.pick(&REGIONS),
        };
        let from_port = pinned.map_or_else(|| backend_port(&service), |f| u16::from_be(f.rewrite_port));
        let l4 = match conn.service {
            0 | 1 => {
                let seq = self.next() as u32;
                let (syn, fin, rst) = match self.below(10) {
                    0..=3 => (true, false, false),
                    4..=6 => (false, false, false),
                    7 | 8 => (false, true, false),
                    _ => (false, false, true),
                };
                if syn {
                    self.conns[at].synack = Some(seq);
                }
                L4::Tcp { src_port: from_port, dst_port: conn.port, syn, ack: true, fin, rst, seq, ack_no: self.next() as u32 }
            }
            2 => L4::udp(from_port, conn.port),
            _ => L4::IcmpEcho { request: false, id: conn.port, seq: self.next() as u16 },
        };
        (Frame::new(region.addr, conn.client, l4), region.iface)
    }

    /// An ICMP error quoting a tracked flow's packet: from the region
    /// side about a packet sent toward the region, or from the client about
    /// a reply it could not take.
    fn icmp_error(&mut self, model: &Model) -> (Frame, &'static str) {
        let (answer, ingress) = self.answer(model);
        let (quoted, outer) = if self.chance(50) {
            // The packet the region got: its answer's addresses and ports
            // swapped back.
            let mut toward_region = answer.clone();
            std::mem::swap(&mut toward_region.src, &mut toward_region.dst);
            toward_region.l4 = match answer.l4 {
                L4::Tcp { src_port, dst_port, .. } => L4::tcp(dst_port, src_port),
                L4::Udp { src_port, dst_port, .. } => L4::udp(dst_port, src_port),
                other => other,
            };
            (toward_region, Frame::new(answer.src, answer.dst, L4::IcmpUnreachable { code: self.below(16) as u8 }))
        } else {
            let reply = Frame { src: self.pick(&[VIP, VIP2]).into(), ..answer.clone() };
            (reply, Frame::new(answer.dst, answer.src, L4::IcmpUnreachable { code: self.below(16) as u8 }))
        };
        let bytes = quoted.bytes();
        let ingress = if outer.src == answer.src { ingress } else { "cli" };
        (Frame { payload: bytes[quoted.l3_offset()..quoted.l4_offset() + 8].to_vec(), ..outer }, ingress)
    }

    /// Traffic for no service: other addresses, ports and protocols, and
    /// IPv6.
    fn noise(&mut self) -> (Frame, &'static str) {
        if self.chance(25) {
            return (self.ipv6_noise(), self.pick(&INTERFACES));
        }
        let dst = match self.below(6) {
            0 => VIP,
            1 => VIP2,
            2 => self.pick(&REGIONS).addr,
            3 => self.pick(&[
                Ipv4Addr::new(10, 1, 0, 1),
                Ipv4Addr::new(10, 1, 0, 255),
                Ipv4Addr::new(10, 3, 0, 0),
                Ipv4Addr::new(224, 0, 0, 1),
                Ipv4Addr::new(255, 255, 255, 255),
                CLIENT,
            ]),
            _ => Ipv4Addr::from(self.next() as u32),
        };
        let ports = [80, 8080, 53, 8081, 5353, 0, self.next() as u16];
        let (src_port, dst_port) = (self.port(), self.pick(&ports));
        let l4 = match self.below(4) {
            0 => self.syn(src_port, dst_port),
            1 => L4::tcp(src_port, dst_port),
            2 => L4::udp(src_port, dst_port),
            _ => L4::IcmpEcho { request: self.chance(50), id: src_port, seq: 1 },
        };
        let src = self.client_addr();
        (Frame::new(src, dst, l4), self.pick(&INTERFACES))
    }

    /// IPv6 to no service's address (the fixture's IPv6 services select
    /// nowhere, and the model steers no IPv6), behind up to six extension
    /// headers: what the parser skips, the bound, fragments, neighbour
    /// discovery.
    fn ipv6_noise(&mut self) -> Frame {
        let dst = self.pick(&[R1.addr6, R3.addr6, R4.addr6, R5.addr6, CLIENT6]);
        let any_port = self.next() as u16;
        let (src_port, dst_port) = (self.port(), self.pick(&[80, 53, 8080, any_port]));
        let l4 = match self.below(5) {
            0 => self.syn(src_port, dst_port),
            1 => L4::tcp(src_port, dst_port),
            2 => L4::udp(src_port, dst_port),
            3 => L4::IcmpEcho { request: self.chance(50), id: src_port, seq: 1 },
            _ => L4::IcmpOther { kind: self.pick(&[1, 133, 134, 135, 136, 143]), code: 0 },
        };
        let mut frame = Frame::new(CLIENT6, dst, l4);
        let headers = self.below(7) as usize;
        frame.ipv6_extensions = (0..headers).map(|_| self.pick(&[0, 43, 60, 60, 44])).collect();
        frame.ipv6_segments_left = self.pick(&[0, 0, 0, 1, 2]);
        frame
    }

    /// Changes a field the frame is built from; checksums stay right.
    fn damage_fields(&mut self, frame: &mut Frame) {
        match self.below(8) {
            0 => frame.vlan = Some(self.below(4095) as u16 + 1),
            1 => frame.ip_options = (0..4 * (1 + self.below(10))).map(|_| self.byte()).collect(),
            2 => frame.fragment = Some((self.chance(50), self.below(8192) as u16)),
            3 => {
                let len = match self.below(3) {
                    0 => 0,
                    1 => self.below(100),
                    _ => 1400 + self.below(200),
                };
                frame.payload = (0..len).map(|_| self.byte()).collect();
            }
            4 => {
                if let L4::Udp { zero_checksum, .. } = &mut frame.l4 {
                    *zero_checksum = true;
                }
            }
            5 => frame.ttl = self.byte(),
            6 => frame.l4 = L4::IcmpUnreachable { code: self.below(16) as u8 },
            _ => {
                if let L4::IcmpEcho { request, .. } = &mut frame.l4 {
                    *request = !*request;
                }
            }
        }
    }

    /// Damages the serialised frame: what no builder would send.
    fn damage_bytes(&mut self, frame: &Frame, bytes: &mut Vec<u8>) {
        let (l3, l4) = (frame.l3_offset(), frame.l4_offset());
        if bytes.len() <= l4 + 20 {
            return;
        }
        match self.below(9) {
            // The kernel hands XDP no frame shorter than an Ethernet header
            // (nor takes one for a test run).
            0 => bytes.truncate(14 + self.below(bytes.len() as u64 - 14) as usize),
            1 => {
                let at = self.below(bytes.len().min(l4 + 24) as u64) as usize;
                bytes[at] ^= 1 << self.below(8);
            }
            2 => bytes[l3 + 10] ^= self.byte() | 1,
            3 => {
                let at = l4 + match frame.l4 {
                    L4::Tcp { .. } => 16,
                    L4::Udp { .. } => 6,
                    _ => 2,
                };
                bytes[at] ^= self.byte() | 1;
            }
            4 => {
                let tot_len = self.next() as u16;
                bytes[l3 + 2..l3 + 4].copy_from_slice(&tot_len.to_be_bytes());
            }
            5 => bytes[l3] = self.byte(),
            6 => bytes[l4 + 12] = self.byte(),
            7 => {
                let any = self.next() as u16;
                let ether_type = self.pick(&[0x86dd, 0x0806, 0x8100, 0x88a8, any]);
                bytes[l3 - 2..l3].copy_from_slice(&ether_type.to_be_bytes());
            }
            _ => bytes.extend((0..1 + self.below(32)).map(|_| self.byte())),
        }
    }
}
