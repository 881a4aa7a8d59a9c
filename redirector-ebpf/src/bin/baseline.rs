//! Reference programs the benchmarks measure the data plane against, and the
//! two ends of the packet-rate test; not part of what redirectord loads.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_redirect,
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::{Ipv4Hdr, Ipv6Hdr},
    udp::UdpHdr,
};
use redirector_common::IPPROTO_UDP;
use redirector_ebpf::{
    fib::{lookup, BPF_FIB_LKUP_RET_SUCCESS},
    parse::header,
};

/// The least an XDP program can do to send a frame back out.
#[xdp]
pub fn bare_tx(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_TX
}

/// Routing in XDP and nothing more: the next hop from the kernel's FIB, the
/// MACs set, out of the egress interface. No flow state, no address or TTL
/// rewrite: the floor for any XDP program that forwards on this path.
/// Whatever the FIB cannot answer at once (no neighbour yet, not
/// forwardable) goes to the kernel.
#[xdp]
pub fn bare_forward(ctx: XdpContext) -> u32 {
    forward(&ctx).unwrap_or(xdp_action::XDP_PASS)
}

#[inline(always)]
fn forward(ctx: &XdpContext) -> Option<u32> {
    let eth: *mut EthHdr = header(ctx, 0).ok()?;
    if unsafe { (*eth).ether_type } != EtherType::Ipv4 as u16 {
        return None;
    }
    let ip: *const Ipv4Hdr = header(ctx, EthHdr::LEN).ok()?;
    let (ret, fib) = lookup(ctx, ip, unsafe { (*ip).proto });
    if ret != BPF_FIB_LKUP_RET_SUCCESS {
        return None;
    }
    unsafe {
        (*eth).src_addr = fib.smac;
        (*eth).dst_addr = fib.dmac;
        Some(bpf_redirect(fib.ifindex, 0) as u32)
    }
}

/// Ethernet, IP (IPv4 with no options; IPv6 with no extension header) and
/// UDP headers of a generated frame.
const HEADERS4: usize = EthHdr::LEN + Ipv4Hdr::LEN + UdpHdr::LEN;
const HEADERS6: usize = EthHdr::LEN + Ipv6Hdr::LEN + UdpHdr::LEN;

/// The headers of every generated frame, written by the benchmark before it
/// runs the generator of their family.
#[map]
static TEMPLATE4: Array<[u8; HEADERS4]> = Array::with_max_entries(1, 0);
#[map]
static TEMPLATE6: Array<[u8; HEADERS6]> = Array::with_max_entries(1, 0);

/// Frames the generator has made. The benchmark counts here, not per call:
/// a call a signal cuts short has sent an unknown part of its frames.
#[map]
static GENERATED: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Traffic generators, run through BPF_PROG_TEST_RUN in live-frames mode on
/// the client's interface: each run sends the frame out of it. The kernel
/// recycles frames without restoring their bytes, and the gateway under
/// test rewrites them in place (addresses, MACs, TTL), so every run writes
/// the headers afresh. The payload is never touched: the template's UDP
/// checksum, computed over the whole frame, stays right.
#[xdp]
pub fn udp_generator(ctx: XdpContext) -> u32 {
    stamp(&ctx, &TEMPLATE4)
}

#[xdp]
pub fn udp6_generator(ctx: XdpContext) -> u32 {
    stamp(&ctx, &TEMPLATE6)
}

#[inline(always)]
fn stamp<const N: usize>(ctx: &XdpContext, template: &Array<[u8; N]>) -> u32 {
    let Some(template) = template.get(0) else {
        return xdp_action::XDP_ABORTED;
    };
    let Ok(frame) = header::<[u8; N]>(ctx, 0) else {
        return xdp_action::XDP_ABORTED;
    };
    unsafe { *frame = *template };
    if let Some(count) = GENERATED.get_ptr_mut(0) {
        unsafe { *count += 1 };
    }
    xdp_action::XDP_TX
}

/// The discard service (RFC 863): UDP to this port is what the generator
/// sends.
const DISCARD_PORT: u16 = 9;

/// The region's end of the packet-rate test: drops the generator's frames,
/// of either family, before the stack spends anything on them (the veth has
/// counted them as received by then), so the region costs the shared CPUs
/// next to nothing. Everything else goes up the stack.
#[xdp]
pub fn udp_discard(ctx: XdpContext) -> u32 {
    if is_discard(&ctx).unwrap_or(false) {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

#[inline(always)]
fn is_discard(ctx: &XdpContext) -> Option<bool> {
    let eth: *const EthHdr = header(ctx, 0).ok()?;
    let udp_at = match unsafe { (*eth).ether_type } {
        t if t == EtherType::Ipv4 as u16 => {
            let ip: *const Ipv4Hdr = header(ctx, EthHdr::LEN).ok()?;
            let (vihl, proto) = unsafe { ((*ip).vihl, (*ip).proto) };
            (proto == IPPROTO_UDP && vihl == 0x45).then_some(EthHdr::LEN + Ipv4Hdr::LEN)
        }
        t if t == EtherType::Ipv6 as u16 => {
            let ip: *const Ipv6Hdr = header(ctx, EthHdr::LEN).ok()?;
            (unsafe { (*ip).next_hdr } == IPPROTO_UDP).then_some(EthHdr::LEN + Ipv6Hdr::LEN)
        }
        _ => None,
    };
    let Some(udp_at) = udp_at else {
        return Some(false);
    };
    let udp: *const UdpHdr = header(ctx, udp_at).ok()?;
    Some(u16::from_be_bytes(unsafe { (*udp).dst }) == DISCARD_PORT)
}
