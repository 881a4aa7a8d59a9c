//! The kernel's FIB and neighbour table, asked from XDP: where a packet's
//! destination is, out of which interface, with which MACs.

use aya_ebpf::{
    bindings::bpf_fib_lookup, helpers::bpf_fib_lookup as fib_lookup, programs::XdpContext,
};
use core::mem::{size_of, MaybeUninit};
use network_types::ip::Ipv4Hdr;

const AF_INET: u8 = 2;
pub const BPF_FIB_LKUP_RET_SUCCESS: i64 = 0;
pub const BPF_FIB_LKUP_RET_NO_NEIGH: i64 = 7;

/// Looks up the route of the IPv4 packet `ip` as if it arrived on the
/// ingress interface. On success the answer holds the egress `ifindex`
/// and the `smac` / `dmac` to put on the frame.
#[inline(always)]
pub fn lookup_ipv4(ctx: &XdpContext, ip: *const Ipv4Hdr) -> (i64, bpf_fib_lookup) {
    let mut fib: bpf_fib_lookup = unsafe { MaybeUninit::zeroed().assume_init() };
    unsafe {
        let ip = &*ip;
        fib.family = AF_INET;
        fib.l4_protocol = ip.proto;
        fib.__bindgen_anon_1.tot_len = u16::from_be_bytes(ip.tot_len);
        fib.__bindgen_anon_2.tos = ip.tos;
        fib.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(ip.src_addr);
        fib.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(ip.dst_addr);
    }
    fib.ifindex = ctx.ingress_ifindex() as u32;
    let size = size_of::<bpf_fib_lookup>() as i32;
    let ret = unsafe { fib_lookup(ctx.ctx as *mut _, &mut fib, size, 0) };
    (ret, fib)
}
