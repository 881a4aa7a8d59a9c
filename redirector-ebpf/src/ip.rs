//! IPv4 and IPv6 behind one trait, so the packet path is written once and
//! compiled once per family: what differs is where the addresses sit,
//! whether the header has a checksum of its own, whether ICMP's covers the
//! addresses, how the header is parsed and how the FIB is asked.

use aya_ebpf::{bindings::bpf_fib_lookup, programs::XdpContext};
use network_types::ip::{Ipv4Hdr, Ipv6Hdr};
use redirector_common::{csum, Addr4, Addr6, Address, Reason};

use crate::parse::{self, half_word, Link, Packet};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Which end of a packet: its source or its destination.
#[derive(Clone, Copy)]
pub enum End {
    Source,
    Destination,
}

pub trait IpHeader {
    type Addr: Address;
    /// The family's path runs its stages in stack frames of their own
    /// (IPv6: `stages.rs` in the program): they read the packet's header
    /// pointers from their caller's stack, which LLVM must store whole
    /// (`parse::header_in`).
    const OWN_FRAMES: bool;
    /// ICMP's checksum covers the addresses through a pseudo-header
    /// (ICMPv6, RFC 4443), or not (ICMPv4).
    const ICMP_COVERS_ADDRESSES: bool;

    fn addr(ip: *const Self, end: End) -> Self::Addr;
    /// Sets one address, and the header's own checksum if it has one.
    fn set_addr(ip: *mut Self, end: End, old: &Self::Addr, new: &Self::Addr);
    /// The family's header and what follows, after `link`.
    fn parse(ctx: &XdpContext, link: &Link) -> Result<Packet<Self>, Reason>
    where
        Self: Sized;
    /// The `bpf_fib_lookup` parameters of the packet's route, but for the
    /// upper-layer protocol (after IPv6's extension headers).
    fn fib_params(ip: *const Self, fib: &mut bpf_fib_lookup);
}

impl IpHeader for Ipv4Hdr {
    type Addr = Addr4;
    const OWN_FRAMES: bool = false;

    #[inline(always)]
    fn parse(ctx: &XdpContext, link: &Link) -> Result<Packet<Self>, Reason> {
        parse::ipv4(ctx, link)
    }
    const ICMP_COVERS_ADDRESSES: bool = false;

    /// A word load, as IPv6's (below): the field is a byte array, whose
    /// read would take a load per byte.
    #[inline(always)]
    fn addr(ip: *const Self, end: End) -> Addr4 {
        let field = unsafe {
            match end {
                End::Source => &(*ip).src_addr,
                End::Destination => &(*ip).dst_addr,
            }
        };
        unsafe { (field.as_ptr() as *const u32).read() }
    }

    #[inline(always)]
    fn set_addr(ip: *mut Self, end: End, old: &Addr4, new: &Addr4) {
        let field = unsafe {
            match end {
                End::Source => &mut (*ip).src_addr,
                End::Destination => &mut (*ip).dst_addr,
            }
        };
        unsafe {
            (field.as_mut_ptr() as *mut u32).write(*new);
            let check = half_word(&mut (*ip).check);
            check.write(csum::replace4(check.read(), *old, *new));
        }
    }

    #[inline(always)]
    fn fib_params(ip: *const Self, fib: &mut bpf_fib_lookup) {
        unsafe {
            let ip = &*ip;
            fib.family = AF_INET;
            fib.__bindgen_anon_1.tot_len = u16::from_be_bytes(ip.tot_len);
            fib.__bindgen_anon_2.tos = ip.tos;
            fib.__bindgen_anon_3.ipv4_src = Self::addr(ip, End::Source);
            fib.__bindgen_anon_4.ipv4_dst = Self::addr(ip, End::Destination);
        }
    }
}

/// IPv6 addresses are read and written as four 32-bit words where they sit
/// in the frame, 2-byte aligned behind Ethernet. Loads of a byte each, what
/// an unaligned read compiles to for BPF, spill the path's registers past
/// its 512-byte stack (and cost IPv4's path eight instructions an address
/// while its addresses were read so); the verifier accepts word
/// access at any packet offset on the architectures with efficient
/// unaligned access (x86-64, arm64), as Katran's and Cilium's `in6_addr`
/// copies rely on.
impl IpHeader for Ipv6Hdr {
    type Addr = Addr6;
    const OWN_FRAMES: bool = true;

    #[inline(always)]
    fn parse(ctx: &XdpContext, link: &Link) -> Result<Packet<Self>, Reason> {
        parse::ipv6(ctx, link)
    }
    const ICMP_COVERS_ADDRESSES: bool = true;

    #[inline(always)]
    fn addr(ip: *const Self, end: End) -> Addr6 {
        let field = unsafe {
            match end {
                End::Source => &(*ip).src_addr,
                End::Destination => &(*ip).dst_addr,
            }
        };
        let words = field.as_ptr() as *const u32;
        unsafe { [words.read(), words.add(1).read(), words.add(2).read(), words.add(3).read()] }
    }

    #[inline(always)]
    fn set_addr(ip: *mut Self, end: End, _old: &Addr6, new: &Addr6) {
        // No header checksum in IPv6: the upper layer's covers the
        // addresses alone.
        let field = unsafe {
            match end {
                End::Source => &mut (*ip).src_addr,
                End::Destination => &mut (*ip).dst_addr,
            }
        };
        let words = field.as_mut_ptr() as *mut u32;
        for (i, word) in new.iter().enumerate() {
            unsafe { words.add(i).write(*word) };
        }
    }

    #[inline(always)]
    fn fib_params(ip: *const Self, fib: &mut bpf_fib_lookup) {
        unsafe {
            fib.family = AF_INET6;
            fib.__bindgen_anon_1.tot_len = u16::from_be_bytes((*ip).payload_len).saturating_add(Ipv6Hdr::LEN as u16);
            // Traffic class and flow label, as the kernel reads them.
            fib.__bindgen_anon_2.flowinfo = u32::from_ne_bytes((*ip).vcf) & 0x0fff_ffffu32.to_be();
            fib.__bindgen_anon_3.ipv6_src = Self::addr(ip, End::Source);
            fib.__bindgen_anon_4.ipv6_dst = Self::addr(ip, End::Destination);
        }
    }
}
