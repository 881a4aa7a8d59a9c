//! redirector: XDP transparent redirection of a service's traffic between
//! regions.
//!
//! Packet path, top to bottom:
//!   parse → classify (service? reply of a tracked flow? neither: pass)
//!   → flow lookup → select a region for new flows → rewrite → forward.
#![no_std]
#![no_main]

mod csum;
mod flow;
mod forward;
mod maps;
mod parse;
mod rewrite;
mod select;
mod stats;

use aya_ebpf::{
    bindings::xdp_action, helpers::bpf_ktime_get_ns, macros::xdp, programs::XdpContext, Global,
};
use aya_log_ebpf::debug;
use redirector_common::{FlowKey, Reason, Service, FLOW_REPLY};

use crate::{
    maps::{FLOWS, SERVICES},
    parse::Packet,
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
    let service_key = redirector_common::ServiceKey {
        vip: key.dst_addr,
        port: key.dst_port,
        protocol: key.protocol,
        _pad: 0,
    };
    if let Some(service) = unsafe { SERVICES.get(&service_key) } {
        return to_region(ctx, &pkt, &key, service);
    }
    if let Some(reply) = FLOWS.get_ptr_mut(&key) {
        if unsafe { (*reply).direction } == FLOW_REPLY {
            return to_client(ctx, &pkt, &key, reply);
        }
    }
    (xdp_action::XDP_PASS, Reason::PassNotService)
}

/// Client → VIP: keep the flow's region, or pick one; rewrite toward it.
#[inline(always)]
fn to_region(ctx: &XdpContext, pkt: &Packet, key: &FlowKey, service: &Service) -> (u32, Reason) {
    let now = unsafe { bpf_ktime_get_ns() };
    let mut new_flow = false;
    let region_id = match flow::established(key, pkt, now) {
        Some(flow) if !select::region_is_down(unsafe { (*flow).region_id }) => {
            flow::touch(flow, pkt, now);
            unsafe { (*flow).region_id }
        }
        established => {
            if established.is_some() {
                stats::count_reason(Reason::ReSteered);
                log_flow_event(ctx, key, "re-steered off a down region");
            }
            let Some(region_id) = select::select_region(service, key) else {
                return (xdp_action::XDP_DROP, Reason::DropNoRegion);
            };
            new_flow = true;
            region_id
        }
    };
    let Some(backend) = select::backend(service.id, region_id) else {
        return (xdp_action::XDP_DROP, Reason::DropNoBackend);
    };
    if new_flow {
        flow::pin(key, service.id as u16, region_id, backend, now);
        log_flow_event(ctx, key, "new flow");
    }
    let direction = Direction::ToRegion { new_flow };
    stats::count_traffic(service.id, region_id, pkt.len, direction);
    rewrite::rewrite_end(pkt, End::Destination, backend.addr, backend.port);
    forward::send(ctx, pkt, Reason::Forwarded)
}

/// Region → client, in reply to a tracked flow: the client sees the VIP.
#[inline(always)]
fn to_client(
    ctx: &XdpContext,
    pkt: &Packet,
    key: &FlowKey,
    reply: *mut redirector_common::Flow,
) -> (u32, Reason) {
    let now = unsafe { bpf_ktime_get_ns() };
    let reply_flow = unsafe { *reply };
    flow::touch(reply, pkt, now);
    if pkt.tcp_close_flags() != 0 {
        // The controller counts active flows on original entries: tell the
        // client's entry too when the region closes the connection.
        if let Some(original) = FLOWS.get_ptr_mut(&flow::original_key(key, &reply_flow)) {
            flow::touch(original, pkt, now);
        }
    }
    let direction = Direction::ToClient;
    stats::count_traffic(reply_flow.service_id as u32, reply_flow.region_id, pkt.len, direction);
    rewrite::rewrite_end(pkt, End::Source, reply_flow.vip, reply_flow.vport);
    forward::send(ctx, pkt, Reason::Replied)
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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
