//! Header parsing. Every access is bounds-checked against the frame end; a
//! frame that stops short of a header we need is `Malformed` and passes
//! untouched.

use aya_ebpf::{bindings::xdp_md, programs::XdpContext};
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
    /// ICMP or ICMPv6 echo, request (client side) or reply (region side);
    /// its identifier plays the client's port. ICMPv6's checksum covers the
    /// addresses, ICMP's does not.
    Echo { header: *mut Icmpv4Hdr, request: bool },
}

/// A parsed IPv4 or IPv6 packet the data plane may steer.
pub struct Packet<H> {
    pub eth: *mut EthHdr,
    pub ip: *mut H,
    /// The upper-layer protocol: IPv4's, or the last next header of IPv6.
    pub protocol: u8,
    pub l4: L4,
    /// The program's context: [`Packet::tcp`] and the others read its
    /// `data_end` again, [`Packet::frame_len`] its bounds.
    md: *const xdp_md,
}

/// The link layer of a frame: its Ethernet header and where the IP header
/// starts.
pub struct Link {
    pub eth: *mut EthHdr,
    pub l3: usize,
}

/// The IP version a frame carries.
pub enum Version {
    V4,
    V6,
}

/// A `T` at `offset` in the frame, if the frame holds it whole.
#[inline(always)]
pub fn header<T>(ctx: &XdpContext, offset: usize) -> Result<*mut T, Reason> {
    let start = opaque(ctx.data()) + offset;
    if start + size_of::<T>() > ctx.data_end() {
        return Err(Reason::PassMalformed);
    }
    Ok(start as *mut T)
}

/// `data` as LLVM cannot see through. It is a 32-bit field widened, so LLVM
/// knows a pointer into the packet has its top half zero and, spilling one
/// to the stack, stores only the bottom half: the verifier refuses a
/// pointer stored in part. A volatile read forgets what LLVM knew.
#[inline(always)]
fn opaque(data: usize) -> usize {
    unsafe { core::ptr::read_volatile(&data) }
}

/// Ethernet, with at most one 802.1Q tag, in front of IPv4 or IPv6; the
/// family's header is parsed by its path (`IpHeader::parse`).
#[inline(always)]
pub fn link(ctx: &XdpContext) -> Result<(Link, Version), Reason> {
    let eth: *mut EthHdr = header(ctx, 0)?;
    let mut l3 = EthHdr::LEN;
    let mut ether_type = unsafe { (*eth).ether_type };
    if ether_type == EtherType::Ieee8021q as u16 {
        let vlan: *mut VlanHdr = header(ctx, l3)?;
        ether_type = unsafe { (*vlan).ether_type };
        l3 += VlanHdr::LEN;
    }
    let link = Link { eth, l3 };
    if ether_type == EtherType::Ipv4 as u16 {
        Ok((link, Version::V4))
    } else if ether_type == EtherType::Ipv6 as u16 {
        Ok((link, Version::V6))
    } else {
        Err(Reason::PassNotIp)
    }
}

/// IPv4 (options skipped by IHL) → TCP, UDP or ICMP echo.
#[inline(always)]
pub fn ipv4(ctx: &XdpContext, link: &Link) -> Result<Packet<Ipv4Hdr>, Reason> {
    let (eth, l3) = (link.eth, link.l3);
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

/// IPv6 (up to `MAX_IPV6_EXTENSION_HEADERS` skipped) → TCP, UDP or ICMPv6
/// echo.
#[inline(always)]
pub fn ipv6(ctx: &XdpContext, link: &Link) -> Result<Packet<Ipv6Hdr>, Reason> {
    let (eth, l3) = (link.eth, link.l3);
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
        md: ctx.ctx,
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
            Ok(L4::Echo { header: hdr, request: kind == request })
        }
        _ => Err(Reason::PassNotService),
    }
}

impl<H: IpHeader> Packet<H> {
    /// The packet's 5-tuple, addresses and ports as they sit in the packet.
    #[inline(always)]
    pub fn flow_key(&self) -> FlowKey<H::Addr> {
        let (src_port, dst_port) = match (self.tcp(), self.udp(), self.echo()) {
            (Some(tcp), ..) => unsafe { (u16::from_ne_bytes((*tcp).source), u16::from_ne_bytes((*tcp).dest)) },
            (_, Some(udp), _) => unsafe { (u16::from_ne_bytes((*udp).src), u16::from_ne_bytes((*udp).dst)) },
            (.., Some(echo)) => {
                let id = unsafe { u16::from_ne_bytes([(*echo).data[0], (*echo).data[1]]) };
                if matches!(self.l4, L4::Echo { request: true, .. }) {
                    (id, 0)
                } else {
                    (0, id)
                }
            }
            _ => (0, 0),
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
    /// The TCP header, checked again against the frame's end where it is
    /// read. Parsing checked it, but a stage that reads the packet from its
    /// caller's stack (IPv6's, `stages.rs`) finds there the protocol's tag
    /// as a byte the verifier no longer knows: it would take a UDP header's
    /// 8 checked bytes for TCP's 20 and refuse the program.
    #[inline(always)]
    pub fn tcp(&self) -> Option<*mut TcpHdr> {
        match self.l4 {
            L4::Tcp(tcp) => self.within(tcp),
            _ => None,
        }
    }

    /// The UDP header, checked again as [`Packet::tcp`].
    #[inline(always)]
    pub fn udp(&self) -> Option<*mut UdpHdr> {
        match self.l4 {
            L4::Udp(udp) => self.within(udp),
            _ => None,
        }
    }

    /// An ICMP or ICMPv6 echo's header, checked again as [`Packet::tcp`].
    #[inline(always)]
    pub fn echo(&self) -> Option<*mut Icmpv4Hdr> {
        match self.l4 {
            L4::Echo { header, .. } => self.within(header),
            _ => None,
        }
    }

    /// Frame length, for the byte counters.
    #[inline(always)]
    pub fn frame_len(&self) -> u64 {
        unsafe { ((*self.md).data_end - (*self.md).data) as u64 }
    }

    #[inline(always)]
    fn within<T>(&self, header: *mut T) -> Option<*mut T> {
        let end = unsafe { (*self.md).data_end } as usize;
        (header as usize + size_of::<T>() <= end).then_some(header)
    }

    /// TCP SYN without ACK: the only packet that may open a TCP flow anew.
    #[inline(always)]
    pub fn is_tcp_syn(&self) -> bool {
        match self.tcp() {
            Some(tcp) => unsafe { (*tcp).syn() != 0 && (*tcp).ack() == 0 },
            None => false,
        }
    }

    /// A SYN's sequence number (host order): the client's ISN.
    #[inline(always)]
    pub fn tcp_syn_seq(&self) -> Option<u32> {
        match self.tcp() {
            Some(tcp) => unsafe {
                ((*tcp).syn() != 0 && (*tcp).ack() == 0).then(|| u32::from_be_bytes((*tcp).seq))
            },
            None => None,
        }
    }

    /// A SYN-ACK's sequence number (host order): a region answering a SYN.
    #[inline(always)]
    pub fn tcp_synack_seq(&self) -> Option<u32> {
        match self.tcp() {
            Some(tcp) => unsafe {
                ((*tcp).syn() != 0 && (*tcp).ack() != 0).then(|| u32::from_be_bytes((*tcp).seq))
            },
            None => None,
        }
    }

    /// An ACK's acknowledgement number (host order), if the packet is an
    /// ACK without SYN.
    #[inline(always)]
    pub fn tcp_ack_number(&self) -> Option<u32> {
        match self.tcp() {
            Some(tcp) => unsafe {
                ((*tcp).ack() != 0 && (*tcp).syn() == 0).then(|| u32::from_be_bytes((*tcp).ack_seq))
            },
            None => None,
        }
    }

    /// A RST+ACK's acknowledgement number (host order): what a host
    /// refusing a segment without ACK (a SYN to a closed port) acknowledges.
    #[inline(always)]
    pub fn tcp_rst_ack_number(&self) -> Option<u32> {
        match self.tcp() {
            Some(tcp) => unsafe {
                ((*tcp).rst() != 0 && (*tcp).ack() != 0).then(|| u32::from_be_bytes((*tcp).ack_seq))
            },
            None => None,
        }
    }

    /// `FLOW_FIN_SEEN` / `FLOW_RST_SEEN` bits this packet carries.
    #[inline(always)]
    pub fn tcp_close_flags(&self) -> u8 {
        match self.tcp() {
            Some(tcp) => unsafe {
                let mut flags = 0;
                if (*tcp).fin() != 0 {
                    flags |= redirector_common::FLOW_FIN_SEEN;
                }
                if (*tcp).rst() != 0 {
                    flags |= redirector_common::FLOW_RST_SEEN;
                }
                flags
            },
            None => 0,
        }
    }
}
