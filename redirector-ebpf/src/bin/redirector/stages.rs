//! The stages of the packet path that a family inlines or runs in stack
//! frames of its own.
//!
//! The verifier allows 512 bytes of stack to the deepest chain of calls.
//! IPv4's whole path fits one frame, and a call per stage would cost its
//! established path about a fifth (measured), so IPv4 inlines them all.
//! IPv6's path inlined whole spills past the limit (40-byte keys, 56-byte
//! entries, four-word addresses in ten registers), so IPv6 runs each stage
//! in a frame of its own, called one after the other from `steer`. One
//! list of stages, instantiated for each family with its inlining.

use aya_ebpf::programs::XdpContext;
use network_types::ip::{Ipv4Hdr, Ipv6Hdr};
use redirector_common::{Backend, Flow, FlowKey, NextHop, Reason, Service};

use crate::{
    family::Family,
    flow::{self, Placement, Table},
    select, Steering,
};

pub trait Stages: Family {
    fn to_region(s: &Steering<Self>, flow: *mut Flow<Self::Addr>) -> (u32, Reason);
    fn to_client(s: &Steering<Self>, reply: *mut Flow<Self::Addr>, table: &Table<Self::Addr>) -> (u32, Reason);
    fn toward_backend(s: &Steering<Self>, service_id: u32, region_id: u8, backend: &Backend<Self::Addr>);
    fn resolve(s: &Steering<Self>) -> Result<NextHop, Reason>;
    fn select_region(service: &Service, key: &FlowKey<Self::Addr>) -> Option<u8>;
    fn pin(placement: &Placement<Self::Addr>, key: &FlowKey<Self::Addr>, region_id: u8, backend: &Backend<Self::Addr>, next_hop: &NextHop);
    fn promote(key: &FlowKey<Self::Addr>, flow: *mut Flow<Self::Addr>) -> Option<*mut Flow<Self::Addr>>;
    fn forget(table: &Table<Self::Addr>, key: &FlowKey<Self::Addr>, original: *const Flow<Self::Addr>);
    fn log(ctx: &XdpContext, key: &FlowKey<Self::Addr>, what: &str);
}

macro_rules! stages {
    ($family:ty, $inlining:meta) => {
        impl Stages for $family {
            #[$inlining]
            fn to_region(s: &Steering<Self>, flow: *mut Flow<Self::Addr>) -> (u32, Reason) {
                crate::to_region(s, flow)
            }
            #[$inlining]
            fn to_client(s: &Steering<Self>, reply: *mut Flow<Self::Addr>, table: &Table<Self::Addr>) -> (u32, Reason) {
                crate::to_client(s, reply, table)
            }
            #[$inlining]
            fn toward_backend(s: &Steering<Self>, service_id: u32, region_id: u8, backend: &Backend<Self::Addr>) {
                crate::toward_backend(s, service_id, region_id, backend)
            }
            #[$inlining]
            fn resolve(s: &Steering<Self>) -> Result<NextHop, Reason> {
                crate::forward::resolve(s.ctx, s.pkt)
            }
            #[$inlining]
            fn select_region(service: &Service, key: &FlowKey<Self::Addr>) -> Option<u8> {
                select::select_region(service, key)
            }
            #[$inlining]
            fn pin(placement: &Placement<Self::Addr>, key: &FlowKey<Self::Addr>, region_id: u8, backend: &Backend<Self::Addr>, next_hop: &NextHop) {
                flow::pin::<Self>(placement, key, region_id, backend, next_hop)
            }
            #[$inlining]
            fn promote(key: &FlowKey<Self::Addr>, flow: *mut Flow<Self::Addr>) -> Option<*mut Flow<Self::Addr>> {
                flow::promote::<Self>(key, flow)
            }
            #[$inlining]
            fn forget(table: &Table<Self::Addr>, key: &FlowKey<Self::Addr>, original: *const Flow<Self::Addr>) {
                flow::forget(table, key, original)
            }
            // Either family: aya-log's record building, inlined, weighs
            // on IPv4's frame and, logging on, on its verification; a call
            // per new flow is nothing next to it.
            #[inline(never)]
            fn log(ctx: &XdpContext, key: &FlowKey<Self::Addr>, what: &str) {
                <Self as Family>::log_flow_event(ctx, key, what)
            }
        }
    };
}

stages!(Ipv4Hdr, inline(always));
stages!(Ipv6Hdr, inline(never));
