//! Next hop from the kernel's FIB and neighbour table, then out.
//!
//! A rewritten packet that cannot leave from here (neighbour unresolved,
//! route not forwardable, egress not attached) goes to the kernel with its
//! addresses rewritten and its MACs untouched: the kernel forwards it like
//! any routed packet and resolves the neighbour, so nothing is lost while
//! ARP runs.

use aya_ebpf::{
    bindings::{bpf_fib_lookup, xdp_action},
    helpers::bpf_fib_lookup as fib_lookup,
    programs::XdpContext,
};
use core::mem::{size_of, MaybeUninit};
use redirector_common::{NextHop, Reason};

use crate::{maps::EGRESS, parse::Packet, rewrite::rewrite_macs};

const AF_INET: u8 = 2;
const BPF_FIB_LKUP_RET_SUCCESS: i64 = 0;
const BPF_FIB_LKUP_RET_NO_NEIGH: i64 = 7;

/// Asks the kernel where the (already rewritten) packet's destination is,
/// and whether the program can send it there itself.
#[inline(always)]
pub fn resolve(ctx: &XdpContext, pkt: &Packet) -> Result<NextHop, Reason> {
    let mut fib: bpf_fib_lookup = unsafe { MaybeUninit::zeroed().assume_init() };
    unsafe {
        let ip = &*pkt.ip;
        fib.family = AF_INET;
        fib.l4_protocol = ip.proto;
        fib.__bindgen_anon_1.tot_len = u16::from_be_bytes(ip.tot_len);
        fib.__bindgen_anon_2.tos = ip.tos;
        fib.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(ip.src_addr);
        fib.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(ip.dst_addr);
    }
    let ingress = ctx.ingress_ifindex() as u32;
    fib.ifindex = ingress;
    let size = size_of::<bpf_fib_lookup>() as i32;
    match unsafe { fib_lookup(ctx.ctx as *mut _, &mut fib, size, 0) } {
        BPF_FIB_LKUP_RET_SUCCESS => {}
        BPF_FIB_LKUP_RET_NO_NEIGH => return Err(Reason::PassNoNeighbour),
        _ => return Err(Reason::PassFibOther),
    }
    if fib.ifindex != ingress && EGRESS.get(fib.ifindex).is_none() {
        return Err(Reason::PassEgressNotAttached);
    }
    Ok(NextHop {
        ifindex: fib.ifindex,
        src_mac: fib.smac,
        dst_mac: fib.dmac,
    })
}

/// Sends the rewritten packet to `hop` (from [`resolve`]): back out of the
/// interface it came in on, or redirected to another attached one. `sent` is
/// the reason recorded when it leaves from here.
#[inline(always)]
pub fn transmit(ctx: &XdpContext, pkt: &Packet, hop: &NextHop, sent: Reason) -> (u32, Reason) {
    rewrite_macs(pkt, hop.src_mac, hop.dst_mac);
    if hop.ifindex == ctx.ingress_ifindex() as u32 {
        return (xdp_action::XDP_TX, sent);
    }
    // Detached since the hop was resolved (at most a second ago).
    match EGRESS.redirect(hop.ifindex, 0) {
        Ok(action) => (action, sent),
        Err(_) => (xdp_action::XDP_DROP, Reason::DropRedirectFailed),
    }
}
