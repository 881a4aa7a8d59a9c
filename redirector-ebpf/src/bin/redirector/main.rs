//! redirector: XDP transparent redirection of a service's traffic between
//! regions.
//!
//! Packet path, top to bottom:
//!   parse → classify (service? reply of a tracked flow? neither: pass)
//!   → flow lookup → select a region for new flows → rewrite → forward;
//!   a region's answer during a handshake also feeds passive detection.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action, helpers::bpf_ktime_get_coarse_ns, macros::xdp, programs::XdpContext,
    Global,
};
use aya_log_ebpf::debug;
use redirector_common::{
    Flow, FlowKey, NextHop, Reason, Service, ServiceKey, SYNC_EVENT_PINNED, SYNC_EVENT_RE_STEERED, FLOW_REPLY,
    IPPROTO_TCP,
};

use redirector_ebpf::parse::{self, Packet};

mod detect;
mod flow;
mod forward;
mod maps;
mod rewrite;
mod select;
mod stats;
mod sync;

use crate::{
    flow::{Placement, Table},
    maps::{FLOWS, NEW_FLOWS, SERVICES},
    rewrite::End,
    stats::Direction,
};

/// Set to 1 by the loader to log flow events (new flow, re-steer) through
/// aya-log. At 0 the verifier prunes the logging branches, so the packet
/// path pays nothing for them.
#[no_mangle]
static LOG_FLOW_EVENTS: Global<u8> = Global::new(0);

#[xdp]
pub fn redirector(ctx: XdpContext) -> u32 {
    let (action, reason) = process(&ctx);
    stats::count_reason(reason);
    action
}

#[inline(always)]
fn process(ctx: &XdpContext) -> (u32, Reason) {
    let pkt = match parse::parse(ctx) {
        Ok(pkt) => pkt,
        Err(reason) => return (xdp_action::XDP_PASS, reason),
    };
    let key = pkt.flow_key();
    let now = now_ns();

    // Established flows first: one lookup carries all they need.
    // A flow re-steered off a down region keeps what it saw of its close,
    // and an established one stays in the established table.
    let mut carried_flags = 0;
    let mut event = SYNC_EVENT_PINNED;
    let mut table = if key.protocol == IPPROTO_TCP { &NEW_FLOWS } else { &FLOWS };
    let mut midstream = false;
    if let Some(flow) = FLOWS.get_ptr_mut(&key) {
        if unsafe { (*flow).direction } == FLOW_REPLY {
            return to_client(ctx, &pkt, &key, flow, &FLOWS, now);
        }
        if flow::holds(flow, &key, &pkt, now) {
            if !select::region_is_down(unsafe { (*flow).region_id }) {
                return to_region(ctx, &pkt, flow, now);
            }
            stats::count_reason(Reason::ReSteered);
            log_flow_event(ctx, &key, "re-steered off a down region");
            carried_flags = unsafe { (*flow).flags };
            table = &FLOWS;
            event = SYNC_EVENT_RE_STEERED;
        } else if key.protocol == IPPROTO_TCP {
            // A SYN reopens the tuple as a new flow: the old one's entries
            // must not answer for it.
            flow::forget(&FLOWS, &key, flow);
        }
    } else if key.protocol == IPPROTO_TCP {
        match NEW_FLOWS.get_ptr_mut(&key) {
            Some(flow) if unsafe { (*flow).direction } == FLOW_REPLY => {
                detect::handshake_answer(&pkt, unsafe { &*flow });
                return to_client(ctx, &pkt, &key, flow, &NEW_FLOWS, now);
            }
            Some(flow) if flow::handshake_holds(flow, &pkt, now) => {
                if !select::region_is_down(unsafe { (*flow).region_id }) {
                    return to_region(ctx, &pkt, established(&key, flow, &pkt), now);
                }
                stats::count_reason(Reason::ReSteered);
                log_flow_event(ctx, &key, "re-steered off a down region");
                carried_flags = unsafe { (*flow).flags };
            }
            Some(_) => {}
            None => midstream = !pkt.is_tcp_syn(),
        }
    }

    let service_key = ServiceKey {
        vip: key.dst_addr,
        port: key.dst_port,
        protocol: key.protocol,
        _pad: 0,
    };
    match unsafe { SERVICES.get(&service_key) } {
        Some(service) => {
            if midstream {
                stats::count_reason(Reason::MidstreamNoFlow);
            }
            let placement = Placement {
                table,
                flags: carried_flags | pkt.tcp_close_flags(),
                event,
                refusal_ack: pkt.tcp_syn_seq().map_or(0, |seq| seq.wrapping_add(1)),
            };
            new_flow(ctx, &pkt, &key, service, &placement, now)
        }
        None => (xdp_action::XDP_PASS, Reason::PassNotService),
    }
}

/// A new flow's entry, or its entry in the established table if this
/// packet completes its handshake.
#[inline(always)]
fn established(key: &FlowKey, flow: *mut Flow, pkt: &Packet) -> *mut Flow {
    if !flow::completes_handshake(flow, pkt) {
        return flow;
    }
    match flow::promote(key, flow) {
        Some(moved) => {
            stats::count_reason(Reason::Promoted);
            moved
        }
        None => flow,
    }
}

/// Client → VIP, established: to the region the flow is pinned to.
#[inline(always)]
fn to_region(ctx: &XdpContext, pkt: &Packet, flow: *mut Flow, now: u64) -> (u32, Reason) {
    let f = unsafe { &*flow };
    let direction = Direction::ToRegion { new_flow: false };
    stats::count_traffic(f.service_id as u32, f.region_id, pkt.len, direction);
    rewrite::rewrite_end(pkt, End::Destination, f.rewrite_addr, f.rewrite_port);
    match next_hop(ctx, pkt, flow, now) {
        Ok(hop) => forward::transmit(ctx, pkt, &hop, Reason::Forwarded),
        Err(reason) => (xdp_action::XDP_PASS, reason),
    }
}

/// Client → VIP, first packet (or re-steered off a down region): pick a
/// region, pin the flow both ways as `placement` says, rewrite toward it.
#[inline(always)]
fn new_flow(
    ctx: &XdpContext,
    pkt: &Packet,
    key: &FlowKey,
    service: &Service,
    placement: &Placement,
    now: u64,
) -> (u32, Reason) {
    let Some(region_id) = select::select_region(service, key) else {
        return (xdp_action::XDP_DROP, Reason::DropNoRegion);
    };
    let Some(backend) = select::backend(service.id, region_id) else {
        return (xdp_action::XDP_DROP, Reason::DropNoBackend);
    };
    let direction = Direction::ToRegion { new_flow: true };
    stats::count_traffic(service.id, region_id, pkt.len, direction);
    rewrite::rewrite_end(pkt, End::Destination, backend.addr, backend.port);
    let hop = forward::resolve(ctx, pkt);
    flow::pin(placement, key, service.id as u16, region_id, backend, hop.unwrap_or_default(), now);
    log_flow_event(ctx, key, "new flow");
    match hop {
        Ok(hop) => forward::transmit(ctx, pkt, &hop, Reason::Forwarded),
        Err(reason) => (xdp_action::XDP_PASS, reason),
    }
}

/// Region → client, in reply to a flow of `table`: the client sees the
/// VIP.
#[inline(always)]
fn to_client(ctx: &XdpContext, pkt: &Packet, key: &FlowKey, reply: *mut Flow, table: &Table, now: u64) -> (u32, Reason) {
    let r = unsafe { &*reply };
    let synack = pkt.tcp_synack_seq();
    if pkt.tcp_close_flags() != 0 || synack.is_some() {
        // The client's entry learns when the region closes the connection
        // (active flows are counted on original entries) and what its
        // SYN-ACK said (the client's ACK must acknowledge it).
        if let Some(original) = table.get_ptr_mut(&flow::original_key(key, r)) {
            flow::touch(original, pkt, now);
            if let Some(seq) = synack {
                flow::answered(original, seq);
            }
        }
    }
    stats::count_traffic(r.service_id as u32, r.region_id, pkt.len, Direction::ToClient);
    rewrite::rewrite_end(pkt, End::Source, r.rewrite_addr, r.rewrite_port);
    match next_hop(ctx, pkt, reply, now) {
        Ok(hop) => forward::transmit(ctx, pkt, &hop, Reason::Replied),
        Err(reason) => (xdp_action::XDP_PASS, reason),
    }
}

/// The flow's cached next hop, asked of the FIB again when the flow's
/// last-seen time is refreshed or nothing is cached yet.
#[inline(always)]
fn next_hop(ctx: &XdpContext, pkt: &Packet, flow: *mut Flow, now: u64) -> Result<NextHop, Reason> {
    let refresh = flow::touch(flow, pkt, now);
    let cached = unsafe { (*flow).next_hop };
    if cached.ifindex != 0 && !refresh {
        return Ok(cached);
    }
    let resolved = forward::resolve(ctx, pkt);
    unsafe { (*flow).next_hop = resolved.unwrap_or_default() };
    resolved
}

/// Flow timestamps need second granularity: the coarse clock (same epoch
/// as CLOCK_MONOTONIC, a tick behind at most) is the cheaper read.
#[inline(always)]
fn now_ns() -> u64 {
    unsafe { bpf_ktime_get_coarse_ns() }
}

#[inline(always)]
fn log_flow_event(ctx: &XdpContext, key: &FlowKey, what: &str) {
    if LOG_FLOW_EVENTS.load() != 0 {
        debug!(
            ctx,
            "{}: {:i}:{} -> {:i}:{} proto {}",
            what,
            u32::from_be(key.src_addr),
            u16::from_be(key.src_port),
            u32::from_be(key.dst_addr),
            u16::from_be(key.dst_port),
            key.protocol
        );
    }
}
