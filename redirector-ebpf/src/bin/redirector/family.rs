//! Each family's maps, and what the packet path does differently per family
//! beyond the headers (`redirector_ebpf::ip`): the flow sync carries IPv4
//! flows only, and flow events are logged with the family's addresses.

use aya_ebpf::{
    maps::{Array, HashMap},
    programs::XdpContext,
};
use aya_log_ebpf::debug;
use network_types::ip::{Ipv4Hdr, Ipv6Hdr};
use redirector_common::{Addr4, Addr6, Backend, Flow, FlowKey, Service, ServiceKey};
use redirector_ebpf::ip::IpHeader;

use crate::{
    flow::Table,
    maps::{BACKENDS, BACKENDS6, FLOWS, FLOWS6, NEW_FLOWS, NEW_FLOWS6, SERVICES, SERVICES6},
    sync,
};

pub trait Family: IpHeader + Sized + 'static {
    fn services() -> &'static HashMap<ServiceKey<Self::Addr>, Service>;
    fn backends() -> &'static Array<Backend<Self::Addr>>;
    /// Established flows.
    fn flows() -> &'static Table<Self::Addr>;
    /// TCP flows in their handshake.
    fn new_flows() -> &'static Table<Self::Addr>;
    /// Tells the flow sync of a flow entering the established table.
    fn announce(key: &FlowKey<Self::Addr>, flow: &Flow<Self::Addr>, event: u8);
    fn log_flow_event(ctx: &XdpContext, key: &FlowKey<Self::Addr>, what: &str);
}

impl Family for Ipv4Hdr {
    #[inline(always)]
    fn services() -> &'static HashMap<ServiceKey<Addr4>, Service> {
        &SERVICES
    }
    #[inline(always)]
    fn backends() -> &'static Array<Backend<Addr4>> {
        &BACKENDS
    }
    #[inline(always)]
    fn flows() -> &'static Table<Addr4> {
        &FLOWS
    }
    #[inline(always)]
    fn new_flows() -> &'static Table<Addr4> {
        &NEW_FLOWS
    }
    #[inline(always)]
    fn announce(key: &FlowKey<Addr4>, flow: &Flow<Addr4>, event: u8) {
        sync::announce(key, flow, event);
    }
    #[inline(always)]
    fn log_flow_event(ctx: &XdpContext, key: &FlowKey<Addr4>, what: &str) {
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

impl Family for Ipv6Hdr {
    #[inline(always)]
    fn services() -> &'static HashMap<ServiceKey<Addr6>, Service> {
        &SERVICES6
    }
    #[inline(always)]
    fn backends() -> &'static Array<Backend<Addr6>> {
        &BACKENDS6
    }
    #[inline(always)]
    fn flows() -> &'static Table<Addr6> {
        &FLOWS6
    }
    #[inline(always)]
    fn new_flows() -> &'static Table<Addr6> {
        &NEW_FLOWS6
    }
    /// The sync's wire format carries IPv4 tuples: an IPv6 flow stays on
    /// the gateway that carries it (README, *Flow sync*).
    #[inline(always)]
    fn announce(_key: &FlowKey<Addr6>, _flow: &Flow<Addr6>, _event: u8) {}
    #[inline(always)]
    fn log_flow_event(ctx: &XdpContext, key: &FlowKey<Addr6>, what: &str) {
        // The words hold the address's bytes in packet order: read them
        // as bytes where they are, without copies on IPv6's tight stack.
        let bytes = |addr: &Addr6| unsafe { *(addr.as_ptr() as *const [u8; 16]) };
        let (src, dst) = (bytes(&key.src_addr), bytes(&key.dst_addr));
        debug!(
            ctx,
            "{}: [{:i}]:{} -> [{:i}]:{} proto {}",
            what,
            src,
            u16::from_be(key.src_port),
            dst,
            u16::from_be(key.dst_port),
            key.protocol
        );
    }
}
