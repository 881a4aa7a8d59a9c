//! Next hop from the kernel's FIB and neighbour table, then out.
//!
//! A rewritten packet that cannot leave from here (neighbour unresolved,
//! route not forwardable, egress not attached) goes to the kernel with its
//! addresses rewritten and its MACs untouched: the kernel forwards it like
//! any routed packet and resolves the neighbour, so nothing is lost while
//! ARP or neighbour discovery runs.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use redirector_common::{NextHop, Reason};

use redirector_ebpf::{
    fib::{lookup, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS},
    ip::IpHeader,
    parse::Packet,
};

use crate::{maps::EGRESS, rewrite::rewrite_macs};

/// Asks the kernel where the (already rewritten) packet's destination is,
/// and whether the program can send it there itself.
#[inline(always)]
pub fn resolve<H: IpHeader>(ctx: &XdpContext, pkt: &Packet<H>) -> Result<NextHop, Reason> {
    let (ret, fib) = lookup(ctx, pkt.ip, pkt.protocol);
    let ingress = ctx.ingress_ifindex() as u32;
    match ret {
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
pub fn transmit<H: IpHeader>(ctx: &XdpContext, pkt: &Packet<H>, hop: &NextHop, sent: Reason) -> (u32, Reason) {
    rewrite_macs(ctx, pkt, hop.src_mac, hop.dst_mac);
    if hop.ifindex == ctx.ingress_ifindex() as u32 {
        return (xdp_action::XDP_TX, sent);
    }
    // Detached since the hop was resolved (at most a second ago).
    match EGRESS.redirect(hop.ifindex, 0) {
        Ok(action) => (action, sent),
        Err(_) => (xdp_action::XDP_DROP, Reason::DropRedirectFailed),
    }
}
