//! redirector: XDP transparent redirection of a service's traffic between
//! regions.
//!
//! Packet path, top to bottom, the same for IPv4 and IPv6 (compiled once
//! per family, each with its own maps: `family.rs`):
//!   parse → classify (service? reply of a tracked flow? neither: pass)
//!   → flow lookup → select a region for new flows → rewrite → forward;
//!   a region's answer during a handshake also feeds passive detection.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action, helpers::bpf_ktime_get_coarse_ns, macros::xdp, programs::XdpContext,
    Global,
};
use redirector_common::{
    Backend, Flow, FlowKey, NextHop, Reason, ServiceKey, SYNC_EVENT_PINNED, SYNC_EVENT_RE_STEERED, FLOW_REPLY,
    IPPROTO_TCP,
};

use network_types::ip::{Ipv4Hdr, Ipv6Hdr};
use redirector_ebpf::{
    ip::End,
    parse::{self, Link, Packet, Version},
};

mod detect;
mod family;
mod flow;
mod forward;
mod maps;
mod rewrite;
mod select;
mod stages;
mod stats;
mod sync;

use crate::{
    family::Family,
    stages::Stages,
    flow::{Placement, Table},
    stats::Direction,
};

/// Set to 1 by the loader to log flow events (new flow, re-steer) through
/// aya-log. At 0 the verifier prunes the logging branches, so the packet
/// path pays nothing for them.
#[no_mangle]
static LOG_FLOW_EVENTS: Global<u8> = Global::new(0);

#[xdp]
pub fn redirector(ctx: XdpContext) -> u32 {
    match parse::link(&ctx) {
        Ok((link, Version::V4)) => steer::<Ipv4Hdr>(&ctx, &link),
        Ok((link, Version::V6)) => steer::<Ipv6Hdr>(&ctx, &link),
        Err(reason) => {
            stats::count_reason(reason);
            xdp_action::XDP_PASS
        }
    }
}

/// What every stage of a packet's path reads.
pub struct Steering<'a, F: Family> {
    pub ctx: &'a XdpContext,
    pub pkt: &'a Packet<F>,
    pub key: FlowKey<F::Addr>,
    pub now: u64,
}

/// One family's path, in a frame of its own: the two together would not
/// fit the verifier's 512 bytes. Its stages (`stages.rs`) are inlined or
/// run in frames of their own as the family needs. It counts why it did
/// what it did and returns the action alone: a scalar, where a returned
/// pair is written through the caller's stack and leaves LLVM's last
/// pointer in the return register, which the verifier refuses.
#[inline(never)]
fn steer<F: Stages>(ctx: &XdpContext, link: &Link) -> u32 {
    let (action, reason) = steer_path::<F>(ctx, link);
    stats::count_reason(reason);
    action
}

#[inline(always)]
fn steer_path<F: Stages>(ctx: &XdpContext, link: &Link) -> (u32, Reason) {
    let pkt = &match F::parse(ctx, link) {
        Ok(pkt) => pkt,
        Err(reason) => return (xdp_action::XDP_PASS, reason),
    };
    let (flows, new_flows) = (F::flows(), F::new_flows());
    let s = Steering { ctx, pkt, key: pkt.flow_key(), now: now_ns() };
    let key = &s.key;

    // Established flows first: one lookup carries all they need.
    // A flow re-steered off a down region keeps what it saw of its close,
    // and an established one stays in the established table.
    let mut carried_flags = 0;
    let mut event = SYNC_EVENT_PINNED;
    let mut table = if key.protocol == IPPROTO_TCP { new_flows } else { flows };
    let mut midstream = false;
    if let Some(flow) = flows.get_ptr_mut(key) {
        if unsafe { (*flow).direction } == FLOW_REPLY {
            return F::to_client(&s, flow, flows);
        }
        if flow::holds(flow, key, pkt, s.now) {
            if !select::region_is_down(unsafe { (*flow).region_id }) {
                return F::to_region(&s, flow);
            }
            stats::count_reason(Reason::ReSteered);
            carried_flags = unsafe { (*flow).flags };
            table = flows;
            event = SYNC_EVENT_RE_STEERED;
        } else if key.protocol == IPPROTO_TCP {
            // A SYN reopens the tuple as a new flow: the old one's entries
            // must not answer for it.
            F::forget(flows, key, flow);
        }
    } else if key.protocol == IPPROTO_TCP {
        match new_flows.get_ptr_mut(key) {
            Some(flow) if unsafe { (*flow).direction } == FLOW_REPLY => {
                detect::handshake_answer(pkt, unsafe { &*flow });
                return F::to_client(&s, flow, new_flows);
            }
            Some(flow) if flow::handshake_holds(flow, pkt, s.now) => {
                if !select::region_is_down(unsafe { (*flow).region_id }) {
                    return F::to_region(&s, established(key, flow, pkt));
                }
                stats::count_reason(Reason::ReSteered);
                carried_flags = unsafe { (*flow).flags };
                // Still new: told to the peers only once established.
                event = SYNC_EVENT_RE_STEERED;
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
    match unsafe { F::services().get(&service_key) } {
        Some(service) => {
            if midstream {
                stats::count_reason(Reason::MidstreamNoFlow);
            }
            let placement = Placement {
                service: *service,
                table,
                flags: carried_flags | pkt.tcp_close_flags(),
                event,
                refusal_ack: pkt.tcp_syn_seq().map_or(0, |seq| seq.wrapping_add(1)),
                now: s.now,
            };
            new_flow(&s, &placement)
        }
        None => (xdp_action::XDP_PASS, Reason::PassNotService),
    }
}

/// A new flow's entry, or its entry in the established table if this
/// packet completes its handshake.
#[inline(always)]
fn established<F: Stages>(key: &FlowKey<F::Addr>, flow: *mut Flow<F::Addr>, pkt: &Packet<F>) -> *mut Flow<F::Addr> {
    if !flow::completes_handshake(flow, pkt) {
        return flow;
    }
    match F::promote(key, flow) {
        Some(moved) => {
            stats::count_reason(Reason::Promoted);
            moved
        }
        None => flow,
    }
}

/// Client → VIP, established: to the region the flow is pinned to.
#[inline(always)]
pub fn to_region<F: Family>(s: &Steering<F>, flow: *mut Flow<F::Addr>) -> (u32, Reason) {
    let (ctx, pkt) = (s.ctx, s.pkt);
    let f = unsafe { &*flow };
    let direction = Direction::ToRegion { new_flow: false };
    stats::count_traffic(f.service_id as u32, f.region_id, parse::frame_len(ctx), direction);
    rewrite::rewrite_end(ctx, pkt, End::Destination, &f.rewrite_addr, f.rewrite_port);
    match next_hop(ctx, pkt, flow, s.now) {
        Ok(hop) => forward::transmit(ctx, pkt, &hop, Reason::Forwarded),
        Err(reason) => (xdp_action::XDP_PASS, reason),
    }
}

/// Client → VIP, first packet (or re-steered off a down region): pick a
/// region of the service, pin the flow both ways as `placement` says,
/// rewrite toward it.
#[inline(always)]
fn new_flow<F: Stages>(s: &Steering<F>, placement: &Placement<F::Addr>) -> (u32, Reason) {
    let service = &placement.service;
    let Some(region_id) = F::select_region(service, &s.key) else {
        return (xdp_action::XDP_DROP, Reason::DropNoRegion);
    };
    let Some(backend) = select::backend::<F>(service.id, region_id) else {
        return (xdp_action::XDP_DROP, Reason::DropNoBackend);
    };
    F::toward_backend(s, service.id, region_id, backend);
    let hop = F::resolve(s);
    F::pin(placement, &s.key, region_id, backend, &hop.unwrap_or_default());
    // One call site: aya-log's record building, verified once per path
    // into it, is what the verifier's budget allows.
    let what = if placement.event == SYNC_EVENT_RE_STEERED { "re-steered off a down region" } else { "new flow" };
    log_flow_event::<F>(s.ctx, &s.key, what);
    match hop {
        Ok(hop) => forward::transmit(s.ctx, s.pkt, &hop, Reason::Forwarded),
        Err(reason) => (xdp_action::XDP_PASS, reason),
    }
}

/// A new flow's first packet, counted and rewritten toward `backend`.
#[inline(always)]
pub fn toward_backend<F: Family>(s: &Steering<F>, service_id: u32, region_id: u8, backend: &Backend<F::Addr>) {
    let direction = Direction::ToRegion { new_flow: true };
    stats::count_traffic(service_id, region_id, parse::frame_len(s.ctx), direction);
    rewrite::rewrite_end(s.ctx, s.pkt, End::Destination, &backend.addr, backend.port);
}

/// Region → client, in reply to a flow of `table`: the client sees the
/// VIP.
#[inline(always)]
pub fn to_client<F: Family>(s: &Steering<F>, reply: *mut Flow<F::Addr>, table: &Table<F::Addr>) -> (u32, Reason) {
    let (ctx, pkt, key, now) = (s.ctx, s.pkt, &s.key, s.now);
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
    stats::count_traffic(r.service_id as u32, r.region_id, parse::frame_len(ctx), Direction::ToClient);
    rewrite::rewrite_end(ctx, pkt, End::Source, &r.rewrite_addr, r.rewrite_port);
    match next_hop(ctx, pkt, reply, now) {
        Ok(hop) => forward::transmit(ctx, pkt, &hop, Reason::Replied),
        Err(reason) => (xdp_action::XDP_PASS, reason),
    }
}

/// The flow's cached next hop, asked of the FIB again when the flow's
/// last-seen time is refreshed or nothing is cached yet.
#[inline(always)]
fn next_hop<F: Family>(ctx: &XdpContext, pkt: &Packet<F>, flow: *mut Flow<F::Addr>, now: u64) -> Result<NextHop, Reason> {
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
fn log_flow_event<F: Stages>(ctx: &XdpContext, key: &FlowKey<F::Addr>, what: &str) {
    if LOG_FLOW_EVENTS.load() != 0 {
        F::log(ctx, key, what);
    }
}
