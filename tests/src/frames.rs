//! Frames for packet tests, described field by field and serialised by
//! etherparse, which computes every checksum over the whole header and
//! payload. The data plane's incremental updates are checked against that
//! independent full computation by comparing whole frames.

use std::net::IpAddr;

use etherparse::{
    IpFragOffset, IpHeaders, IpNumber, Ipv4Extensions, Ipv4Header, Ipv4Options, Ipv6Extensions, Ipv6Header,
    PacketBuilder, VlanId,
};

pub type Mac = [u8; 6];

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum L4 {
    Tcp {
        src_port: u16,
        dst_port: u16,
        syn: bool,
        ack: bool,
        fin: bool,
        rst: bool,
        /// Sequence and acknowledgement numbers (the latter sent with ACK).
        seq: u32,
        ack_no: u32,
    },
    Udp {
        src_port: u16,
        dst_port: u16,
        /// Send with checksum 0 ("no checksum").
        zero_checksum: bool,
    },
    IcmpEcho {
        request: bool,
        id: u16,
        seq: u16,
    },
    /// ICMP destination unreachable (type 3; ICMPv6's type 1) with raw
    /// rest-of-header bytes.
    IcmpUnreachable { code: u8 },
    /// Any other ICMP or ICMPv6 message (neighbour discovery...), its
    /// rest-of-header zero.
    IcmpOther { kind: u8, code: u8 },
}

impl L4 {
    pub fn tcp(src_port: u16, dst_port: u16) -> Self {
        L4::Tcp {
            src_port,
            dst_port,
            syn: false,
            ack: true,
            fin: false,
            rst: false,
            seq: 1000,
            ack_no: 2000,
        }
    }

    pub fn tcp_syn(src_port: u16, dst_port: u16) -> Self {
        L4::Tcp {
            src_port,
            dst_port,
            syn: true,
            ack: false,
            fin: false,
            rst: false,
            seq: 1000,
            ack_no: 0,
        }
    }

    /// A region's answer to a SYN, its own sequence number `seq`.
    pub fn tcp_synack(src_port: u16, dst_port: u16, seq: u32) -> Self {
        L4::Tcp {
            src_port,
            dst_port,
            syn: true,
            ack: true,
            fin: false,
            rst: false,
            seq,
            ack_no: 1001,
        }
    }

    /// An ACK of `ack_no`.
    pub fn tcp_ack(src_port: u16, dst_port: u16, ack_no: u32) -> Self {
        L4::Tcp {
            src_port,
            dst_port,
            syn: false,
            ack: true,
            fin: false,
            rst: false,
            seq: 1001,
            ack_no,
        }
    }

    pub fn udp(src_port: u16, dst_port: u16) -> Self {
        L4::Udp {
            src_port,
            dst_port,
            zero_checksum: false,
        }
    }

    /// The same segment with other ports (ICMP: the echo id stands for the
    /// client's port).
    pub fn with_ports(&self, src: u16, dst: u16) -> Self {
        let mut l4 = self.clone();
        match &mut l4 {
            L4::Tcp {
                src_port, dst_port, ..
            }
            | L4::Udp {
                src_port, dst_port, ..
            } => {
                *src_port = src;
                *dst_port = dst;
            }
            L4::IcmpEcho { .. } | L4::IcmpUnreachable { .. } | L4::IcmpOther { .. } => {}
        }
        l4
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub src_mac: Mac,
    pub dst_mac: Mac,
    pub vlan: Option<u16>,
    /// Both of one family: an IPv4 or an IPv6 packet.
    pub src: IpAddr,
    pub dst: IpAddr,
    /// TTL, or IPv6's hop limit.
    pub ttl: u8,
    /// Raw IPv4 options, a multiple of 4 bytes.
    pub ip_options: Vec<u8>,
    /// IPv6 extension headers before the upper layer, by their next-header
    /// number (0, 43, 60; 44 a Fragment header), 8 bytes each.
    pub ipv6_extensions: Vec<u8>,
    /// Segments left of its routing headers (type 4, segment routing).
    pub ipv6_segments_left: u8,
    /// (more fragments, offset in 8-byte units)
    pub fragment: Option<(bool, u16)>,
    pub l4: L4,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn new(src: impl Into<IpAddr>, dst: impl Into<IpAddr>, l4: L4) -> Self {
        Self {
            src_mac: [0x02, 0, 0, 0, 0, 0x01],
            dst_mac: [0x02, 0, 0, 0, 0, 0x02],
            vlan: None,
            src: src.into(),
            dst: dst.into(),
            ttl: 64,
            ip_options: Vec::new(),
            ipv6_extensions: Vec::new(),
            ipv6_segments_left: 0,
            fragment: None,
            l4,
            payload: b"hello, region".to_vec(),
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        let ip = match (self.src, self.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                let mut ip = Ipv4Header::new(0, self.ttl, IpNumber(0), src.octets(), dst.octets()).expect("valid header");
                ip.options = Ipv4Options::try_from(&self.ip_options[..]).expect("options: multiple of 4, ≤ 40");
                if let Some((more, offset)) = self.fragment {
                    ip.more_fragments = more;
                    ip.fragment_offset = IpFragOffset::try_new(offset).expect("13-bit offset");
                }
                IpHeaders::Ipv4(ip, Ipv4Extensions::default())
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                let ip = Ipv6Header {
                    hop_limit: self.ttl,
                    source: src.octets(),
                    destination: dst.octets(),
                    ..Ipv6Header::default()
                };
                IpHeaders::Ipv6(ip, Ipv6Extensions::default())
            }
            (src, dst) => panic!("{src} -> {dst}: addresses of two families"),
        };
        let eth = PacketBuilder::ethernet2(self.src_mac, self.dst_mac);
        let mut out = Vec::new();
        macro_rules! finish {
            ($step:expr) => {{
                let step = $step;
                match &self.l4 {
                    L4::Tcp {
                        src_port,
                        dst_port,
                        syn,
                        ack,
                        fin,
                        rst,
                        seq,
                        ack_no,
                    } => {
                        let mut b = step.tcp(*src_port, *dst_port, *seq, 64_000);
                        if *syn {
                            b = b.syn();
                        }
                        if *ack {
                            b = b.ack(*ack_no);
                        }
                        if *fin {
                            b = b.fin();
                        }
                        if *rst {
                            b = b.rst();
                        }
                        b.write(&mut out, &self.payload)
                    }
                    L4::Udp {
                        src_port, dst_port, ..
                    } => step.udp(*src_port, *dst_port).write(&mut out, &self.payload),
                    L4::IcmpEcho { request, id, seq } if self.src.is_ipv4() => {
                        let b = if *request {
                            step.icmpv4_echo_request(*id, *seq)
                        } else {
                            step.icmpv4_echo_reply(*id, *seq)
                        };
                        b.write(&mut out, &self.payload)
                    }
                    L4::IcmpEcho { request, id, seq } => {
                        let b = if *request {
                            step.icmpv6_echo_request(*id, *seq)
                        } else {
                            step.icmpv6_echo_reply(*id, *seq)
                        };
                        b.write(&mut out, &self.payload)
                    }
                    L4::IcmpUnreachable { code } if self.src.is_ipv4() => step
                        .icmpv4_raw(3, *code, [0; 4])
                        .write(&mut out, &self.payload),
                    L4::IcmpUnreachable { code } => step.icmpv6_raw(1, *code, [0; 4]).write(&mut out, &self.payload),
                    L4::IcmpOther { kind, code } if self.src.is_ipv4() => {
                        step.icmpv4_raw(*kind, *code, [0; 4]).write(&mut out, &self.payload)
                    }
                    L4::IcmpOther { kind, code } => step.icmpv6_raw(*kind, *code, [0; 4]).write(&mut out, &self.payload),
                }
                .expect("serialising a frame")
            }};
        }
        match self.vlan {
            Some(id) => finish!(eth
                .single_vlan(VlanId::try_new(id).expect("12-bit VLAN id"))
                .ip(ip)),
            None => finish!(eth.ip(ip)),
        }
        self.insert_ipv6_extensions(&mut out);
        if let L4::Udp {
            zero_checksum: true,
            ..
        } = self.l4
        {
            let at = self.l4_offset() + 6;
            out[at..at + 2].copy_from_slice(&[0, 0]);
        }
        out
    }

    /// Puts the extension headers between the fixed IPv6 header and the
    /// upper layer. The upper layer's checksum does not cover them (its
    /// pseudo-header has the upper-layer length, RFC 8200 8.1), so what
    /// etherparse computed stays right.
    fn insert_ipv6_extensions(&self, out: &mut Vec<u8>) {
        if self.ipv6_extensions.is_empty() {
            return;
        }
        let l3 = self.l3_offset();
        let upper = out[l3 + 6];
        let mut headers = Vec::new();
        for (i, &kind) in self.ipv6_extensions.iter().enumerate() {
            let next = self.ipv6_extensions.get(i + 1).copied().unwrap_or(upper);
            let mut header = [0u8; 8];
            header[0] = next;
            match kind {
                // Fragment: offset 0 with more fragments, identification 7.
                44 => header[2..8].copy_from_slice(&[0, 1, 0, 0, 0, 7]),
                // Routing: type 4 (segment routing).
                43 => header[2..4].copy_from_slice(&[4, self.ipv6_segments_left]),
                // Options: one PadN filling the 6 bytes.
                _ => header[2..4].copy_from_slice(&[1, 4]),
            }
            headers.extend_from_slice(&header);
        }
        out[l3 + 6] = self.ipv6_extensions[0];
        let payload = u16::from_be_bytes([out[l3 + 4], out[l3 + 5]]) + headers.len() as u16;
        out[l3 + 4..l3 + 6].copy_from_slice(&payload.to_be_bytes());
        out.splice(l3 + 40..l3 + 40, headers);
    }

    /// Offset of the IP header in the frame.
    pub fn l3_offset(&self) -> usize {
        14 + if self.vlan.is_some() { 4 } else { 0 }
    }

    /// Offset of the TCP/UDP/ICMP header in the frame.
    pub fn l4_offset(&self) -> usize {
        self.l3_offset()
            + match self.src {
                IpAddr::V4(_) => 20 + self.ip_options.len(),
                IpAddr::V6(_) => 40 + 8 * self.ipv6_extensions.len(),
            }
    }

    /// Offset just past the fixed TCP/UDP/ICMP header.
    pub fn l4_end(&self) -> usize {
        self.l4_offset()
            + match self.l4 {
                L4::Tcp { .. } => 20,
                L4::Udp { .. } | L4::IcmpEcho { .. } | L4::IcmpUnreachable { .. } | L4::IcmpOther { .. } => 8,
            }
    }
}
