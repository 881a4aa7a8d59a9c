//! Header parsing. Every access is bounds-checked against the frame end; a
//! frame that stops short of a header we need is `Malformed` and passes
//! untouched.

use aya_ebpf::programs::XdpContext;
use core::mem::size_of;
use network_types::{
    eth::{EthHdr, EtherType},
    icmp::Icmpv4Hdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
    vlan::VlanHdr,
};
use redirector_common::{
    FlowKey, Reason, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP,
    MAX_IPV6_EXTENSION_HEADERS,
};

use crate::ip::{End, IpHeader};

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;
/// More-fragments flag and fragment offset bits of `Ipv4Hdr::frags`.
const IP_MF_AND_OFFSET: u16 = 0x3fff;
/// IPv6 extension headers skipped on the way to the upper layer; their
/// length is in 8-byte units after the first 8 (RFC 8200, 4.3-4.6).
const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_DESTINATION_OPTIONS: u8 = 60;
const IPV6_FRAGMENT: u8 = 44;

pub enum L4 {
    Tcp(*mut TcpHdr),
    Udp(*mut UdpHdr),
    /// Echo request (client side) or reply (region side); the identifier
    /// plays the client's port. `check` is the ICMP checksum, rewritten
    /// only where it covers the addresses (ICMPv6).
    IcmpEcho { request: bool, id: u16, check: *mut [u8; 2] },
}

/// A parsed IPv4 or IPv6 packet the data plane may steer.
pub struct Packet<H> {
    pub eth: *mut EthHdr,
    pub ip: *mut H,
    /// The upper-layer protocol: IPv4's, or the last next header of IPv6.
    pub protocol: u8,
    pub l4: L4,
    /// Frame length, for the byte counters.
    pub len: u64,
}

/// What a frame turned out to be.
pub enum Parsed {
    V4(Packet<Ipv4Hdr>),
    V6(Packet<Ipv6Hdr>),
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

/// Ethernet (with at most one 802.1Q tag) → IPv4 or IPv6 → TCP, UDP or
/// ICMP echo.
#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Result<Parsed, Reason> {
    let eth: *mut EthHdr = header(ctx, 0)?;
    let mut l3 = EthHdr::LEN;
    let mut ether_type = unsafe { (*eth).ether_type };
    if ether_type == EtherType::Ieee8021q as u16 {
        let vlan: *mut VlanHdr = header(ctx, l3)?;
        ether_type = unsafe { (*vlan).ether_type };
        l3 += VlanHdr::LEN;
    }
    if ether_type == EtherType::Ipv4 as u16 {
        ipv4(ctx, eth, l3).map(Parsed::V4)
    } else if ether_type == EtherType::Ipv6 as u16 {
        ipv6(ctx, eth, l3).map(Parsed::V6)
    } else {
        Err(Reason::PassNotIp)
    }
}

#[inline(always)]
fn ipv4(ctx: &XdpContext, eth: *mut EthHdr, l3: usize) -> Result<Packet<Ipv4Hdr>, Reason> {
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
    let l4 = upper_layer(ctx, protocol, l4_offset, IPPROTO_ICMP)?;
    Ok(packet(ctx, eth, ip, protocol, l4))
}

#[inline(always)]
fn ipv6(ctx: &XdpContext, eth: *mut EthHdr, l3: usize) -> Result<Packet<Ipv6Hdr>, Reason> {
    let ip: *mut Ipv6Hdr = header(ctx, l3)?;
    if unsafe { (*ip).vcf[0] } >> 4 != 6 {
        return Err(Reason::PassMalformed);
    }
    let mut next = unsafe { (*ip).next_hdr };
    let mut offset = l3 + Ipv6Hdr::LEN;
    // Each header is at most 2 KiB, so the offset stays bounded.
    for _ in 0..MAX_IPV6_EXTENSION_HEADERS {
        if !matches!(next, IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DESTINATION_OPTIONS) {
            break;
        }
        let ext: *const [u8; 2] = header(ctx, offset)?;
        let (following, units) = unsafe { ((*ext)[0], (*ext)[1]) };
        next = following;
        offset += (units as usize + 1) * 8;
    }
    match next {
        IPV6_FRAGMENT => return Err(Reason::PassFragment),
        IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DESTINATION_OPTIONS => return Err(Reason::PassIpv6Extensions),
        _ => {}
    }
    let l4 = upper_layer(ctx, next, offset, IPPROTO_ICMPV6)?;
    Ok(packet(ctx, eth, ip, next, l4))
}

#[inline(always)]
fn packet<H>(ctx: &XdpContext, eth: *mut EthHdr, ip: *mut H, protocol: u8, l4: L4) -> Packet<H> {
    Packet {
        eth,
        ip,
        protocol,
        l4,
        len: (ctx.data_end() - ctx.data()) as u64,
    }
}

/// TCP, UDP, or the family's ICMP (`icmp`) echo at `offset`.
#[inline(always)]
fn upper_layer(ctx: &XdpContext, protocol: u8, offset: usize, icmp: u8) -> Result<L4, Reason> {
    match protocol {
        IPPROTO_TCP => {
            let tcp: *mut TcpHdr = header(ctx, offset)?;
            // A data offset under 5 words puts the payload inside the
            // header: no TCP stack would take it.
            if unsafe { (*tcp).doff() } < 5 {
                return Err(Reason::PassMalformed);
            }
            Ok(L4::Tcp(tcp))
        }
        IPPROTO_UDP => Ok(L4::Udp(header(ctx, offset)?)),
        p if p == icmp => {
            // ICMPv6's header has ICMPv4's layout.
            let hdr: *mut Icmpv4Hdr = header(ctx, offset)?;
            let (kind, code) = unsafe { ((*hdr).type_, (*hdr).code) };
            let (request, reply) = if icmp == IPPROTO_ICMP {
                (ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY)
            } else {
                (ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY)
            };
            if code != 0 || (kind != request && kind != reply) {
                return Err(Reason::PassIcmpOther);
            }
            let data = unsafe { (*hdr).data };
            Ok(L4::IcmpEcho {
                request: kind == request,
                id: u16::from_ne_bytes([data[0], data[1]]),
                check: unsafe { &mut (*hdr).check },
            })
        }
        _ => Err(Reason::PassNotService),
    }
}

impl<H: IpHeader> Packet<H> {
    /// The packet's 5-tuple, addresses and ports as they sit in the packet.
    #[inline(always)]
    pub fn flow_key(&self) -> FlowKey<H::Addr> {
        let (src_port, dst_port) = match self.l4 {
            L4::Tcp(tcp) => unsafe {
                (u16::from_ne_bytes((*tcp).source), u16::from_ne_bytes((*tcp).dest))
            },
            L4::Udp(udp) => unsafe {
                (u16::from_ne_bytes((*udp).src), u16::from_ne_bytes((*udp).dst))
            },
            L4::IcmpEcho { request: true, id, .. } => (id, 0),
            L4::IcmpEcho { request: false, id, .. } => (0, id),
        };
        FlowKey {
            src_addr: H::addr(self.ip, End::Source),
            dst_addr: H::addr(self.ip, End::Destination),
            src_port,
            dst_port,
            protocol: self.protocol,
            _pad: [0; 3],
        }
    }
}

impl<H> Packet<H> {
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
