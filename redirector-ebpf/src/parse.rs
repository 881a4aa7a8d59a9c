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
    Address, FlowKey, Reason, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP,
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

/// The upper layer's header, where the rewrite writes.
pub enum L4 {
    Tcp(*mut TcpHdr),
    Udp(*mut UdpHdr),
    /// ICMP or ICMPv6 echo; ICMPv6's checksum covers the addresses, ICMP's
    /// does not.
    Echo(*mut Icmpv4Hdr),
}

/// What the path reads of a TCP header, copied out by the parser; all
/// zero for other protocols.
#[derive(Clone, Copy, Default)]
pub struct Segment {
    /// The flags byte: `TCP_FIN`, `TCP_SYN`, `TCP_RST`, `TCP_ACK`...
    pub flags: u8,
    /// Sequence and acknowledgement numbers, host order.
    pub seq: u32,
    pub ack: u32,
}

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
/// Offset of the flags byte in the TCP header.
const TCP_FLAGS_OFFSET: usize = 13;

/// A parsed IPv4 or IPv6 packet the data plane may steer.
pub struct Packet<H> {
    pub ip: *mut H,
    /// Where the forward writes the MACs ([`Packet::eth`]).
    eth: *mut EthHdr,
    /// The upper-layer protocol: IPv4's, or the last next header of IPv6.
    pub protocol: u8,
    pub l4: L4,
    /// Source and destination port as they sit in the packet; for ICMP
    /// echo, the identifier on the client's side (the source of a request,
    /// the destination of a reply) and 0 on the other.
    pub ports: (u16, u16),
    pub segment: Segment,
}

/// Frame length, for the byte counters.
#[inline(always)]
pub fn frame_len(ctx: &XdpContext) -> u64 {
    (ctx.data_end() - ctx.data()) as u64
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
    bounded(ctx, ctx.data() + offset)
}

/// [`header`] for family `H`'s path. Where its stages run in frames of
/// their own, `data` is read as LLVM cannot see through: it is a 32-bit
/// field widened, so LLVM knows a pointer into the packet has its top half
/// zero and, spilling one to the stack for a stage, stores only the bottom
/// half, which the verifier refuses for a pointer. A volatile read forgets
/// what LLVM knew.
#[inline(always)]
fn header_in<H: IpHeader, T>(ctx: &XdpContext, offset: usize) -> Result<*mut T, Reason> {
    bounded(ctx, opaque::<H>(ctx.data()) + offset)
}

#[inline(always)]
fn opaque<H: IpHeader>(address: usize) -> usize {
    if H::OWN_FRAMES {
        unsafe { core::ptr::read_volatile(&address) }
    } else {
        address
    }
}

#[inline(always)]
fn bounded<T>(ctx: &XdpContext, start: usize) -> Result<*mut T, Reason> {
    if start + size_of::<T>() > ctx.data_end() {
        return Err(Reason::PassMalformed);
    }
    Ok(start as *mut T)
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
    let l3 = link.l3;
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
    let upper = upper_layer::<Ipv4Hdr>(ctx, protocol, l4_offset)?;
    Ok(packet(link, ip, protocol, upper))
}

/// IPv6 (up to `MAX_IPV6_EXTENSION_HEADERS` skipped) → TCP, UDP or ICMPv6
/// echo.
#[inline(always)]
pub fn ipv6(ctx: &XdpContext, link: &Link) -> Result<Packet<Ipv6Hdr>, Reason> {
    let l3 = link.l3;
    let ip: *mut Ipv6Hdr = header_in::<Ipv6Hdr, _>(ctx, l3)?;
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
        // Every extension header is at least 8 bytes; the first 4 say all
        // that matters here.
        let ext: *const [u8; 4] = header_in::<Ipv6Hdr, _>(ctx, offset)?;
        let (following, units, segments_left) = unsafe { ((*ext)[0], (*ext)[1], (*ext)[3]) };
        // Segments still to visit: the upper layer's checksum covers the
        // last of them, not the destination in the header, which is all
        // the rewrite knows of.
        if next == IPV6_ROUTING && segments_left != 0 {
            return Err(Reason::PassIpv6Extensions);
        }
        next = following;
        offset += (units as usize + 1) * 8;
    }
    match next {
        IPV6_FRAGMENT => return Err(Reason::PassFragment),
        IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DESTINATION_OPTIONS => return Err(Reason::PassIpv6Extensions),
        _ => {}
    }
    let upper = upper_layer::<Ipv6Hdr>(ctx, next, offset)?;
    Ok(packet(link, ip, next, upper))
}

#[inline(always)]
fn packet<H: IpHeader>(link: &Link, ip: *mut H, protocol: u8, upper: Upper) -> Packet<H> {
    Packet {
        ip,
        // Never read where the family's stages run in frames of their own
        // (`Packet::eth`), and a pointer LLVM may spill in halves there.
        eth: if H::OWN_FRAMES { core::ptr::null_mut() } else { link.eth },
        protocol,
        l4: upper.l4,
        ports: upper.ports,
        segment: upper.segment,
    }
}

/// The upper layer as parsed.
struct Upper {
    l4: L4,
    ports: (u16, u16),
    segment: Segment,
}

/// TCP, UDP, or the family's ICMP echo at `offset`.
#[inline(always)]
fn upper_layer<H: IpHeader>(ctx: &XdpContext, protocol: u8, offset: usize) -> Result<Upper, Reason> {
    let icmp = <H::Addr as Address>::ICMP;
    let ports = |header: *const u32| {
        let [a, b, c, d] = unsafe { word(header, 0) }.to_ne_bytes();
        (u16::from_ne_bytes([a, b]), u16::from_ne_bytes([c, d]))
    };
    match protocol {
        IPPROTO_TCP => {
            let tcp: *mut TcpHdr = header_in::<H, _>(ctx, offset)?;
            // A data offset under 5 words puts the payload inside the
            // header: no TCP stack would take it.
            if unsafe { (*tcp).doff() } < 5 {
                return Err(Reason::PassMalformed);
            }
            let segment = unsafe {
                Segment {
                    flags: *(tcp as *const u8).add(TCP_FLAGS_OFFSET),
                    seq: u32::from_be(word(tcp as *const u32, 1)),
                    ack: u32::from_be(word(tcp as *const u32, 2)),
                }
            };
            Ok(Upper { l4: L4::Tcp(tcp), ports: ports(tcp as *const u32), segment })
        }
        IPPROTO_UDP => {
            let udp: *mut UdpHdr = header_in::<H, _>(ctx, offset)?;
            Ok(Upper { l4: L4::Udp(udp), ports: ports(udp as *const u32), segment: Segment::default() })
        }
        p if p == icmp => {
            // ICMPv6's header has ICMPv4's layout.
            let hdr: *mut Icmpv4Hdr = header_in::<H, _>(ctx, offset)?;
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
            let id = u16::from_ne_bytes([data[0], data[1]]);
            let ports = if kind == request { (id, 0) } else { (0, id) };
            Ok(Upper { l4: L4::Echo(hdr), ports, segment: Segment::default() })
        }
        _ => Err(Reason::PassNotService),
    }
}

/// The `index`th 32-bit word from `header`, as it sits in the packet. The
/// headers' fields are byte arrays, and a read of one compiles to a load
/// per byte (BPF has no unaligned load): eight instructions more for each
/// word, on every packet. The verifier accepts word access at any packet
/// offset on the architectures with efficient unaligned access (x86-64,
/// arm64), as the IPv6 addresses' reads do (`ip.rs`). To Rust this is a
/// read through a pointer that may be 2-byte aligned only, on purpose: the
/// object is built without debug assertions (both profiles), so no
/// alignment check is compiled in, and a plain load is what the BPF target
/// emits for it.
#[inline(always)]
unsafe fn word(header: *const u32, index: usize) -> u32 {
    header.add(index).read()
}

/// A 16-bit field (a port, a checksum) to read and write as one, for the
/// reason [`word`] gives.
#[inline(always)]
pub fn half_word(field: &mut [u8; 2]) -> *mut u16 {
    field.as_mut_ptr() as *mut u16
}

impl<H: IpHeader> Packet<H> {
    /// The packet's 5-tuple, addresses and ports as they sit in the packet.
    #[inline(always)]
    pub fn flow_key(&self) -> FlowKey<H::Addr> {
        FlowKey {
            src_addr: H::addr(self.ip, End::Source),
            dst_addr: H::addr(self.ip, End::Destination),
            src_port: self.ports.0,
            dst_port: self.ports.1,
            protocol: self.protocol,
            _pad: [0; 3],
        }
    }

    /// The upper layer's header `header` (of [`Packet::l4`]), to rewrite.
    /// Where the family's stages run in frames of their own (IPv6's read
    /// the packet from their caller's stack, `stages.rs`), it is checked
    /// again against the frame's end: the protocol's tag is a byte whose
    /// value the verifier no longer knows there, and it would take a UDP
    /// header's 8 checked bytes for TCP's 20 and refuse the program. What
    /// the path only reads (ports, flags, sequence numbers) parsing copied
    /// out, so that check is paid once. IPv4's path, inlined whole, writes
    /// through what parsing checked.
    #[inline(always)]
    pub fn checked<T>(&self, ctx: &XdpContext, header: *mut T) -> Option<*mut T> {
        if !H::OWN_FRAMES {
            return Some(header);
        }
        (header as usize + size_of::<T>() <= ctx.data_end()).then_some(header)
    }

    /// The Ethernet header, to rewrite. Where the family's stages run in
    /// frames of their own it is found again from the context: the kept
    /// pointer may have been spilled in halves (`header_in`).
    #[inline(always)]
    pub fn eth(&self, ctx: &XdpContext) -> Option<*mut EthHdr> {
        if !H::OWN_FRAMES {
            return Some(self.eth);
        }
        self.checked(ctx, ctx.data() as *mut EthHdr)
    }

    #[inline(always)]
    fn tcp_flags(&self, set: u8, clear: u8) -> bool {
        self.segment.flags & (set | clear) == set
    }

    /// TCP SYN without ACK: the only packet that may open a TCP flow anew.
    #[inline(always)]
    pub fn is_tcp_syn(&self) -> bool {
        self.tcp_flags(TCP_SYN, TCP_ACK)
    }

    /// A SYN's sequence number (host order): the client's ISN.
    #[inline(always)]
    pub fn tcp_syn_seq(&self) -> Option<u32> {
        self.tcp_flags(TCP_SYN, TCP_ACK).then_some(self.segment.seq)
    }

    /// A SYN-ACK's sequence number (host order): a region answering a SYN.
    #[inline(always)]
    pub fn tcp_synack_seq(&self) -> Option<u32> {
        self.tcp_flags(TCP_SYN | TCP_ACK, 0).then_some(self.segment.seq)
    }

    /// An ACK's acknowledgement number (host order), if the packet is an
    /// ACK without SYN.
    #[inline(always)]
    pub fn tcp_ack_number(&self) -> Option<u32> {
        self.tcp_flags(TCP_ACK, TCP_SYN).then_some(self.segment.ack)
    }

    /// A RST+ACK's acknowledgement number (host order): what a host
    /// refusing a segment without ACK (a SYN to a closed port) acknowledges.
    #[inline(always)]
    pub fn tcp_rst_ack_number(&self) -> Option<u32> {
        self.tcp_flags(TCP_RST | TCP_ACK, 0).then_some(self.segment.ack)
    }

    /// `FLOW_FIN_SEEN` / `FLOW_RST_SEEN` bits this packet carries.
    #[inline(always)]
    pub fn tcp_close_flags(&self) -> u8 {
        let mut flags = 0;
        if self.segment.flags & TCP_FIN != 0 {
            flags |= redirector_common::FLOW_FIN_SEEN;
        }
        if self.segment.flags & TCP_RST != 0 {
            flags |= redirector_common::FLOW_RST_SEEN;
        }
        flags
    }
}
