//! Reference programs the benchmarks measure the data plane against, and the
//! two ends of the packet-rate test; not part of what redirectord loads.
#![no_std]
#![no_main]

use core::mem::{size_of, MaybeUninit};

use aya_ebpf::{
    bindings::{bpf_fib_lookup, xdp_action},
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect},
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::Ipv4Hdr,
    udp::UdpHdr,
};

/// The least an XDP program can do to send a frame back out.
#[xdp]
pub fn bare_tx(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_TX
}

const AF_INET: u8 = 2;
const BPF_FIB_LKUP_RET_SUCCESS: i64 = 0;

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
    let eth: *mut EthHdr = header(ctx, 0)?;
    if unsafe { (*eth).ether_type } != EtherType::Ipv4 as u16 {
        return None;
    }
    let ip: *const Ipv4Hdr = header(ctx, EthHdr::LEN)?;
    let mut fib: bpf_fib_lookup = unsafe { MaybeUninit::zeroed().assume_init() };
    unsafe {
        fib.family = AF_INET;
        fib.l4_protocol = (*ip).proto;
        fib.__bindgen_anon_1.tot_len = u16::from_be_bytes((*ip).tot_len);
        fib.__bindgen_anon_2.tos = (*ip).tos;
        fib.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes((*ip).src_addr);
        fib.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes((*ip).dst_addr);
    }
    fib.ifindex = ctx.ingress_ifindex() as u32;
    let size = size_of::<bpf_fib_lookup>() as i32;
    if unsafe { fib_lookup(ctx.ctx as *mut _, &mut fib, size, 0) } != BPF_FIB_LKUP_RET_SUCCESS {
        return None;
    }
    unsafe {
        (*eth).src_addr = fib.smac;
        (*eth).dst_addr = fib.dmac;
        Some(bpf_redirect(fib.ifindex, 0) as u32)
    }
}

/// Ethernet, IPv4 (no options) and UDP headers of a generated frame.
const HEADERS: usize = EthHdr::LEN + Ipv4Hdr::LEN + UdpHdr::LEN;

/// The headers of every generated frame, written by the benchmark before it
/// runs the generator.
#[map]
static TEMPLATE: Array<[u8; HEADERS]> = Array::with_max_entries(1, 0);

/// Frames the generator has made. The benchmark counts here, not per call:
/// a call a signal cuts short has sent an unknown part of its frames.
#[map]
static GENERATED: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Traffic generator, run through BPF_PROG_TEST_RUN in live-frames mode on
/// the client's interface: each run sends the frame out of it. The kernel
/// recycles frames without restoring their bytes, and the gateway under
/// test rewrites them in place (addresses, MACs, TTL), so every run writes
/// the headers afresh. The payload is never touched: the template's UDP
/// checksum, computed over the whole frame, stays right.
#[xdp]
pub fn udp_generator(ctx: XdpContext) -> u32 {
    let Some(template) = TEMPLATE.get(0) else {
        return xdp_action::XDP_ABORTED;
    };
    let Some(frame) = header::<[u8; HEADERS]>(&ctx, 0) else {
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
const IPPROTO_UDP: u8 = 17;

/// The region's end of the packet-rate test: drops the generator's frames
/// before the stack spends anything on them (the veth has counted them as
/// received by then), so the region costs the shared CPUs next to nothing.
/// Everything else goes up the stack.
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
    let eth: *const EthHdr = header(ctx, 0)?;
    let ip: *const Ipv4Hdr = header(ctx, EthHdr::LEN)?;
    let (ether_type, vihl, proto) = unsafe { ((*eth).ether_type, (*ip).vihl, (*ip).proto) };
    if ether_type != EtherType::Ipv4 as u16 || proto != IPPROTO_UDP || vihl != 0x45 {
        return Some(false);
    }
    let udp: *const UdpHdr = header(ctx, EthHdr::LEN + Ipv4Hdr::LEN)?;
    Some(u16::from_be_bytes(unsafe { (*udp).dst }) == DISCARD_PORT)
}

/// A `T` at `offset` in the frame, if the frame holds it whole.
#[inline(always)]
fn header<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data() + offset;
    if start + size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some(start as *mut T)
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
