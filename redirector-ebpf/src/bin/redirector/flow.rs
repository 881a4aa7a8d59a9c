//! The flow table: which region an established flow is pinned to and where
//! its packets go, and the reply twin that maps the region's answers back to
//! the VIP.
//!
//! How long an entry holds is [`redirector_common::lifetime`]'s rule, the
//! one the controller's sweep deletes by. Capacity is bounded by the LRU.

use redirector_ebpf::parse::Packet;

use crate::maps::FLOWS;
use redirector_common::{
    lifetime::keeps_region, Backend, Flow, FlowKey, NextHop, FLOW_ORIGINAL, FLOW_REPLY,
    LAST_SEEN_GRANULARITY_NS,
};

/// Whether an original entry still holds for this packet, or the packet
/// opens the flow anew.
#[inline(always)]
pub fn holds(flow: *const Flow, key: &FlowKey, pkt: &Packet, now: u64) -> bool {
    let (last_seen, flags) = unsafe { ((*flow).last_seen_ns, (*flow).flags) };
    keeps_region(key.protocol, flags, now.wrapping_sub(last_seen), pkt.is_tcp_syn())
}

/// Records what this packet says about the flow: that it is alive, and
/// whether it is closing. True when the last-seen time was refreshed (and
/// so the cached next hop is due for a refresh too).
#[inline(always)]
pub fn touch(flow: *mut Flow, pkt: &Packet, now: u64) -> bool {
    let close = pkt.tcp_close_flags();
    unsafe {
        if close & !(*flow).flags != 0 {
            (*flow).flags |= close;
        }
        if now.wrapping_sub((*flow).last_seen_ns) > LAST_SEEN_GRANULARITY_NS {
            (*flow).last_seen_ns = now;
            return true;
        }
    }
    false
}

/// Pins the flow to `region_id` at `backend` (new, or moved off a down
/// region), with the reply twin that answers from the VIP. `flags`: the
/// `FLOW_*_SEEN` bits it starts with, so a flow that closed stays closed
/// when moved.
#[inline(always)]
pub fn pin(
    key: &FlowKey,
    service_id: u16,
    region_id: u8,
    backend: &Backend,
    next_hop: NextHop,
    flags: u8,
    now: u64,
) {
    let mut flow = Flow {
        last_seen_ns: now,
        rewrite_addr: backend.addr,
        rewrite_port: backend.port,
        service_id,
        region_id,
        direction: FLOW_ORIGINAL,
        flags,
        _pad: [0; 5],
        next_hop,
    };
    // On a full table the LRU evicts the coldest entry; an insert only fails
    // on allocation failure, and then the flow is re-selected next packet.
    let _ = FLOWS.insert(key, &flow, 0);

    let reply_key = FlowKey {
        src_addr: backend.addr,
        dst_addr: key.src_addr,
        src_port: backend.port,
        dst_port: key.src_port,
        protocol: key.protocol,
        _pad: [0; 3],
    };
    flow.direction = FLOW_REPLY;
    flow.rewrite_addr = key.dst_addr;
    flow.rewrite_port = key.dst_port;
    // It leaves toward the client: resolved on its first packet.
    flow.next_hop = NextHop::default();
    let _ = FLOWS.insert(&reply_key, &flow, 0);
}

/// The client's flow key as the reply twin `reply` remembers it.
#[inline(always)]
pub fn original_key(reply_key: &FlowKey, reply: &Flow) -> FlowKey {
    FlowKey {
        src_addr: reply_key.dst_addr,
        dst_addr: reply.rewrite_addr,
        src_port: reply_key.dst_port,
        dst_port: reply.rewrite_port,
        protocol: reply_key.protocol,
        _pad: [0; 3],
    }
}
