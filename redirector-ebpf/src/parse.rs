//! Header parsing. Every access is bounds-checked against the frame end; a
//! frame that stops short of a header we need is `Malformed` and passes
//! untouched.

use aya_ebpf::programs::XdpContext;
use core::mem::size_of;
use network_types::{
    eth::{EthHdr, EtherType},
    icmp::Icmpv4Hdr,
    ip::Ipv4Hdr,
    tcp::TcpHdr,
    udp::UdpHdr,
    vlan::VlanHdr,
};
use redirector_common::{FlowKey, Reason, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP};

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;
/// More-fragments flag and fragment offset bits of `Ipv4Hdr::frags`.
const IP_MF_AND_OFFSET: u16 = 0x3fff;

pub enum L4 {
    Tcp(*mut TcpHdr),
    Udp(*mut UdpHdr),
    /// Echo request (client side) or reply (region side); the identifier
    /// plays the client's port.
    IcmpEcho { request: bool, id: u16 },
}

/// A parsed IPv4 packet the data plane may steer.
pub struct Packet {
    pub eth: *mut EthHdr,
    pub ip: *mut Ipv4Hdr,
    pub l4: L4,
    /// Frame length, for the byte counters.
    pub len: u64,
}

/// A `T` at `offset` in the frame, if the frame holds it whole.
#[inline(always)]
pub fn header<T>(ctx: &XdpContext, offset: usize) -> Result<*mut T, Reason> {
    let start = ctx.data() + offset;
    if start + size_of::<T>() > ctx.data_end() {
        return Err(Reason::PassMalformed);
    }
    Ok(start as *mut T)
}

/// Ethernet (with at most one 802.1Q tag) → IPv4 → TCP, UDP or ICMP echo.
#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Result<Packet, Reason> {
    let eth: *mut EthHdr = header(ctx, 0)?;
    let mut l3 = EthHdr::LEN;
    let mut ether_type = unsafe { (*eth).ether_type };
    if ether_type == EtherType::Ieee8021q as u16 {
        let vlan: *mut VlanHdr = header(ctx, l3)?;
        ether_type = unsafe { (*vlan).ether_type };
        l3 += VlanHdr::LEN;
    }
    if ether_type != EtherType::Ipv4 as u16 {
        return Err(Reason::PassNotIpv4);
    }

    let ip: *mut Ipv4Hdr = header(ctx, l3)?;
    let (vihl, frags, protocol) = unsafe { ((*ip).vihl, (*ip).frags, (*ip).proto) };
    if vihl >> 4 != 4 || vihl & 0xf < 5 {
        return Err(Reason::PassMalformed);
    }
    if u16::from_be_bytes(frags) & IP_MF_AND_OFFSET != 0 {
        return Err(Reason::PassFragment);
    }
    // IHL is 4 bits, so options are at most 40 bytes: a bounded offset.
    let l4_offset = l3 + ((vihl & 0xf) as usize) * 4;

    let l4 = match protocol {
        IPPROTO_TCP => {
            let tcp: *mut TcpHdr = header(ctx, l4_offset)?;
            // A data offset under 5 words puts the payload inside the
            // header: no TCP stack would take it.
            if unsafe { (*tcp).doff() } < 5 {
                return Err(Reason::PassMalformed);
            }
            L4::Tcp(tcp)
        }
        IPPROTO_UDP => L4::Udp(header(ctx, l4_offset)?),
        IPPROTO_ICMP => {
            let icmp: *mut Icmpv4Hdr = header(ctx, l4_offset)?;
            let (kind, code) = unsafe { ((*icmp).type_, (*icmp).code) };
            if code != 0 || (kind != ICMP_ECHO_REQUEST && kind != ICMP_ECHO_REPLY) {
                return Err(Reason::PassIcmpOther);
            }
            let data = unsafe { (*icmp).data };
            L4::IcmpEcho {
                request: kind == ICMP_ECHO_REQUEST,
                id: u16::from_ne_bytes([data[0], data[1]]),
            }
        }
        _ => return Err(Reason::PassNotService),
    };
    Ok(Packet {
        eth,
        ip,
        l4,
        len: (ctx.data_end() - ctx.data()) as u64,
    })
}

impl Packet {
    /// The packet's 5-tuple, addresses and ports as they sit in the packet.
    #[inline(always)]
    pub fn flow_key(&self) -> FlowKey {
        let (src_addr, dst_addr, protocol) = unsafe {
            (
                u32::from_ne_bytes((*self.ip).src_addr),
                u32::from_ne_bytes((*self.ip).dst_addr),
                (*self.ip).proto,
            )
        };
        let (src_port, dst_port) = match self.l4 {
            L4::Tcp(tcp) => unsafe {
                (u16::from_ne_bytes((*tcp).source), u16::from_ne_bytes((*tcp).dest))
            },
            L4::Udp(udp) => unsafe {
                (u16::from_ne_bytes((*udp).src), u16::from_ne_bytes((*udp).dst))
            },
            L4::IcmpEcho { request: true, id } => (id, 0),
            L4::IcmpEcho { request: false, id } => (0, id),
        };
        FlowKey {
            src_addr,
            dst_addr,
            src_port,
            dst_port,
            protocol,
            _pad: [0; 3],
        }
    }

    /// TCP SYN without ACK: the only packet that may open a TCP flow anew.
    #[inline(always)]
    pub fn is_tcp_syn(&self) -> bool {
        match self.l4 {
            L4::Tcp(tcp) => unsafe { (*tcp).syn() != 0 && (*tcp).ack() == 0 },
            _ => false,
        }
    }

    /// A SYN's sequence number (host order): the client's ISN.
    #[inline(always)]
    pub fn tcp_syn_seq(&self) -> Option<u32> {
        match self.l4 {
            L4::Tcp(tcp) => unsafe {
                ((*tcp).syn() != 0 && (*tcp).ack() == 0).then(|| u32::from_be_bytes((*tcp).seq))
            },
            _ => None,
        }
    }

    /// A SYN-ACK's sequence number (host order): a region answering a SYN.
    #[inline(always)]
    pub fn tcp_synack_seq(&self) -> Option<u32> {
        match self.l4 {
            L4::Tcp(tcp) => unsafe {
                ((*tcp).syn() != 0 && (*tcp).ack() != 0).then(|| u32::from_be_bytes((*tcp).seq))
            },
            _ => None,
        }
    }

    /// An ACK's acknowledgement number (host order), if the packet is an
    /// ACK without SYN.
    #[inline(always)]
    pub fn tcp_ack_number(&self) -> Option<u32> {
        match self.l4 {
            L4::Tcp(tcp) => unsafe {
                ((*tcp).ack() != 0 && (*tcp).syn() == 0).then(|| u32::from_be_bytes((*tcp).ack_seq))
            },
            _ => None,
        }
    }

    /// A RST+ACK's acknowledgement number (host order): what a host
    /// refusing a segment without ACK (a SYN to a closed port) acknowledges.
    #[inline(always)]
    pub fn tcp_rst_ack_number(&self) -> Option<u32> {
        match self.l4 {
            L4::Tcp(tcp) => unsafe {
                ((*tcp).rst() != 0 && (*tcp).ack() != 0).then(|| u32::from_be_bytes((*tcp).ack_seq))
            },
            _ => None,
        }
    }

    /// `FLOW_FIN_SEEN` / `FLOW_RST_SEEN` bits this packet carries.
    #[inline(always)]
    pub fn tcp_close_flags(&self) -> u8 {
        match self.l4 {
            L4::Tcp(tcp) => unsafe {
                let mut flags = 0;
                if (*tcp).fin() != 0 {
                    flags |= redirector_common::FLOW_FIN_SEEN;
                }
                if (*tcp).rst() != 0 {
                    flags |= redirector_common::FLOW_RST_SEEN;
                }
                flags
            },
            _ => 0,
        }
    }
}
