//! The kernel's FIB and neighbour table, asked from XDP: where a packet's
//! destination is, out of which interface, with which MACs.

use aya_ebpf::{
    bindings::bpf_fib_lookup, helpers::bpf_fib_lookup as fib_lookup, programs::XdpContext,
};
use core::mem::{size_of, MaybeUninit};

use crate::ip::IpHeader;

pub const BPF_FIB_LKUP_RET_SUCCESS: i64 = 0;
pub const BPF_FIB_LKUP_RET_NO_NEIGH: i64 = 7;

/// Looks up the route of the packet `ip` (carrying `protocol` above IP) as
/// if it arrived on the ingress interface. On success the answer holds the
/// egress `ifindex` and the `smac` / `dmac` to put on the frame.
#[inline(always)]
pub fn lookup<H: IpHeader>(ctx: &XdpContext, ip: *const H, protocol: u8) -> (i64, bpf_fib_lookup) {
    let mut fib: bpf_fib_lookup = unsafe { MaybeUninit::zeroed().assume_init() };
    H::fib_params(ip, &mut fib);
    fib.l4_protocol = protocol;
    fib.ifindex = ctx.ingress_ifindex() as u32;
    let size = size_of::<bpf_fib_lookup>() as i32;
    let ret = unsafe { fib_lookup(ctx.ctx as *mut _, &mut fib, size, 0) };
    (ret, fib)
}
