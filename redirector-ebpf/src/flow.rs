//! The flow table: which region an established flow is pinned to, and the
//! reply twin that maps the region's answers back to the VIP.
//!
//! Expiry: a UDP or ICMP flow idle for `UDP_IDLE_TIMEOUT_NS` picks its
//! region anew. A TCP flow picks anew only on a fresh SYN after it closed
//! (FIN or RST seen) or idled past `TCP_IDLE_TIMEOUT_NS`; a mid-stream
//! packet always keeps its region. Capacity is bounded by the LRU, and the
//! controller deletes closed and idle entries.

use crate::{maps::FLOWS, parse::Packet};
use redirector_common::{
    Backend, Flow, FlowKey, FLOW_CLOSED, FLOW_ORIGINAL, FLOW_REPLY, IPPROTO_TCP,
    LAST_SEEN_GRANULARITY_NS, TCP_IDLE_TIMEOUT_NS, UDP_IDLE_TIMEOUT_NS,
};

/// The flow's entry if it still holds for this packet.
#[inline(always)]
pub fn established(key: &FlowKey, pkt: &Packet, now: u64) -> Option<*mut Flow> {
    let flow = FLOWS.get_ptr_mut(key)?;
    let (last_seen, flags) = unsafe { ((*flow).last_seen_ns, (*flow).flags) };
    let idle = now.wrapping_sub(last_seen);
    let expired = if key.protocol == IPPROTO_TCP {
        pkt.is_tcp_syn() && (flags & FLOW_CLOSED != 0 || idle > TCP_IDLE_TIMEOUT_NS)
    } else {
        idle > UDP_IDLE_TIMEOUT_NS
    };
    if expired {
        None
    } else {
        Some(flow)
    }
}

/// Records what this packet says about the flow: that it is alive, and
/// whether it is closing.
#[inline(always)]
pub fn touch(flow: *mut Flow, pkt: &Packet, now: u64) {
    let close = pkt.tcp_close_flags();
    unsafe {
        if close & !(*flow).flags != 0 {
            (*flow).flags |= close;
        }
        if now.wrapping_sub((*flow).last_seen_ns) > LAST_SEEN_GRANULARITY_NS {
            (*flow).last_seen_ns = now;
        }
    }
}

/// The reply twin's key: the region's endpoint answering the client.
#[inline(always)]
pub fn reply_key(key: &FlowKey, backend: &Backend) -> FlowKey {
    FlowKey {
        src_addr: backend.addr,
        dst_addr: key.src_addr,
        src_port: backend.port,
        dst_port: key.src_port,
        protocol: key.protocol,
        _pad: [0; 3],
    }
}

/// Pins the flow to `region_id` (new, or moved off a down region), with the
/// reply twin for `backend`.
#[inline(always)]
pub fn pin(key: &FlowKey, service_id: u16, region_id: u8, backend: &Backend, now: u64) {
    let mut flow = Flow {
        last_seen_ns: now,
        vip: key.dst_addr,
        vport: key.dst_port,
        service_id,
        region_id,
        direction: FLOW_ORIGINAL,
        flags: 0,
        _pad: [0; 5],
    };
    // On a full table the LRU evicts the coldest entry; an insert only fails
    // on allocation failure, and then the flow is re-selected next packet.
    let _ = FLOWS.insert(key, &flow, 0);
    flow.direction = FLOW_REPLY;
    let _ = FLOWS.insert(&reply_key(key, backend), &flow, 0);
}

/// The client's flow key as the reply twin `reply` remembers it.
#[inline(always)]
pub fn original_key(reply_key: &FlowKey, reply: &Flow) -> FlowKey {
    FlowKey {
        src_addr: reply_key.dst_addr,
        dst_addr: reply.vip,
        src_port: reply_key.dst_port,
        dst_port: reply.vport,
        protocol: reply_key.protocol,
        _pad: [0; 3],
    }
}
