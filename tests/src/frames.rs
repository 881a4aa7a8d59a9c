//! Frames for packet tests, described field by field and serialised by
//! etherparse, which computes every checksum over the whole header and
//! payload. The data plane's incremental updates are checked against that
//! independent full computation by comparing whole frames.

use std::net::Ipv4Addr;

use etherparse::{
    IpFragOffset, IpHeaders, IpNumber, Ipv4Extensions, Ipv4Header, Ipv4Options, PacketBuilder,
    VlanId,
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
    /// ICMP destination unreachable (type 3) with raw rest-of-header bytes.
    IcmpUnreachable { code: u8 },
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
            L4::IcmpEcho { .. } | L4::IcmpUnreachable { .. } => {}
        }
        l4
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub src_mac: Mac,
    pub dst_mac: Mac,
    pub vlan: Option<u16>,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    /// Raw IPv4 options, a multiple of 4 bytes.
    pub ip_options: Vec<u8>,
    /// (more fragments, offset in 8-byte units)
    pub fragment: Option<(bool, u16)>,
    pub l4: L4,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr, l4: L4) -> Self {
        Self {
            src_mac: [0x02, 0, 0, 0, 0, 0x01],
            dst_mac: [0x02, 0, 0, 0, 0, 0x02],
            vlan: None,
            src,
            dst,
            ttl: 64,
            ip_options: Vec::new(),
            fragment: None,
            l4,
            payload: b"hello, region".to_vec(),
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        let mut ip = Ipv4Header::new(0, self.ttl, IpNumber(0), self.src.octets(), self.dst.octets())
            .expect("valid header");
        ip.options = Ipv4Options::try_from(&self.ip_options[..]).expect("options: multiple of 4, ≤ 40");
        if let Some((more, offset)) = self.fragment {
            ip.more_fragments = more;
            ip.fragment_offset = IpFragOffset::try_new(offset).expect("13-bit offset");
        }
        let ip = IpHeaders::Ipv4(ip, Ipv4Extensions::default());
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
                    L4::IcmpEcho { request, id, seq } => {
                        let b = if *request {
                            step.icmpv4_echo_request(*id, *seq)
                        } else {
                            step.icmpv4_echo_reply(*id, *seq)
                        };
                        b.write(&mut out, &self.payload)
                    }
                    L4::IcmpUnreachable { code } => step
                        .icmpv4_raw(3, *code, [0; 4])
                        .write(&mut out, &self.payload),
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

    /// Offset of the IPv4 header in the frame.
    pub fn l3_offset(&self) -> usize {
        14 + if self.vlan.is_some() { 4 } else { 0 }
    }

    /// Offset of the TCP/UDP/ICMP header in the frame.
    pub fn l4_offset(&self) -> usize {
        self.l3_offset() + 20 + self.ip_options.len()
    }

    /// Offset just past the fixed TCP/UDP/ICMP header.
    pub fn l4_end(&self) -> usize {
        self.l4_offset()
            + match self.l4 {
                L4::Tcp { .. } => 20,
                L4::Udp { .. } | L4::IcmpEcho { .. } | L4::IcmpUnreachable { .. } => 8,
            }
    }
}
