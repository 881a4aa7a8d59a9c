//! The program's maps. Layouts come from `redirector-common`; every map is
//! pinned by name so the data plane outlives the daemon that loaded it.

use aya_ebpf::{
    macros::map,
    maps::{Array, DevMapHash, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use redirector_common::{
    new_flow_table_size, Addr6, Backend, Counters, Flow, FlowKey, Region, SelectionTable, Service,
    ServiceKey, Reason, FLOW_EVENTS_BYTES, REGION_SIGNALS_BYTES, FLOW_TABLE_SIZE, MAX_INTERFACES, MAX_REGIONS, MAX_SERVICES,
};

// IPv4 and IPv6 services, backends and flows live in maps of their own, so
// an IPv4 entry keeps its size (a 16-byte key, a 40-byte value) instead of
// taking IPv6's (40 and 56). Service ids, regions, selection tables and
// counters are shared: a service is one id whatever its family.

#[map]
pub static SERVICES: HashMap<ServiceKey, Service> = HashMap::pinned(MAX_SERVICES, 0);

#[map]
pub static SERVICES6: HashMap<ServiceKey<Addr6>, Service> = HashMap::pinned(MAX_SERVICES, 0);

#[map]
pub static BACKENDS: Array<Backend> = Array::pinned(MAX_SERVICES * MAX_REGIONS, 0);

#[map]
pub static BACKENDS6: Array<Backend<Addr6>> = Array::pinned(MAX_SERVICES * MAX_REGIONS, 0);

#[map]
pub static REGIONS: Array<Region> = Array::pinned(MAX_REGIONS, 0);

/// Two banks per service; `Service::bank` says which one is live.
#[map]
pub static SELECTION: Array<SelectionTable> = Array::pinned(MAX_SERVICES * 2, 0);

/// Established flows: TCP once its handshake completed, UDP and ICMP from
/// their first packet. The loader sizes it (`flow_table_size`).
#[map]
pub static FLOWS: LruHashMap<FlowKey, Flow> = LruHashMap::pinned(FLOW_TABLE_SIZE, 0);

/// New TCP flows, until the client's ACK completes the handshake the
/// region answered: spoofed SYNs churn this table and never reach FLOWS.
#[map]
pub static NEW_FLOWS: LruHashMap<FlowKey, Flow> =
    LruHashMap::pinned(new_flow_table_size(FLOW_TABLE_SIZE), 0);

/// `FLOWS` and `NEW_FLOWS` of IPv6, sized alike by the loader.
#[map]
pub static FLOWS6: LruHashMap<FlowKey<Addr6>, Flow<Addr6>> = LruHashMap::pinned(FLOW_TABLE_SIZE, 0);

#[map]
pub static NEW_FLOWS6: LruHashMap<FlowKey<Addr6>, Flow<Addr6>> =
    LruHashMap::pinned(new_flow_table_size(FLOW_TABLE_SIZE), 0);

/// Interfaces the program may redirect to, keyed by ifindex.
#[map]
pub static EGRESS: DevMapHash = DevMapHash::pinned(MAX_INTERFACES, 0);

#[map]
pub static REGION_COUNTERS: PerCpuArray<Counters> = PerCpuArray::pinned(MAX_REGIONS, 0);

#[map]
pub static SERVICE_COUNTERS: PerCpuArray<Counters> = PerCpuArray::pinned(MAX_SERVICES, 0);

#[map]
pub static REASONS: PerCpuArray<u64> = PerCpuArray::pinned(Reason::COUNT, 0);

/// Flows entering the established table, for the flow sync (`sync.rs`).
#[map]
pub static FLOW_EVENTS: RingBuf = RingBuf::pinned(FLOW_EVENTS_BYTES, 0);

/// What regions' answers say of their health, for passive detection
/// (`detect.rs`).
#[map]
pub static REGION_SIGNALS: RingBuf = RingBuf::pinned(REGION_SIGNALS_BYTES, 0);
