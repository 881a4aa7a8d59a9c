//! `redirectorctl flows`: the data plane's flows as an operator reads
//! them. The tables are read in batches on a blocking thread (the daemon's
//! `flows` answer never waits on the controller, nor the controller on
//! it); this turns the entries into views: one per flow (its original
//! entry), filtered, the most recently active first, cut at a limit.

use std::net::SocketAddr;

use redirector_common::{
    lifetime::{life, Life},
    Address, Flow, FlowKey, FLOW_CLOSED, FLOW_ORIGINAL, FLOW_SYNCED,
};
use redirector_proto::control::{FlowList, FlowState, FlowView, Response};
use tokio::{sync::oneshot, task::spawn_blocking};

use crate::{
    config::{Config, Protocol},
    dataplane::flow_table::{coarse_monotonic_ns, FlowTable},
    policy::PolicyError,
};

/// Reads the tables of both families under `pin_path` (batched, on a
/// blocking thread) and sends the listing to `reply`.
pub async fn answer(pin_path: std::path::PathBuf, config: Config, filter: Filter, reply: oneshot::Sender<Response>) {
    let read = spawn_blocking(move || -> anyhow::Result<FlowList> {
        let table = FlowTable::open(&pin_path)?;
        let mut entries = originals(&table.entries()?, false);
        entries.extend(originals(&table.new_entries()?, true));
        entries.extend(originals(&table.entries6()?, false));
        entries.extend(originals(&table.new_entries6()?, true));
        Ok(list(&config, entries, coarse_monotonic_ns(), &filter))
    })
    .await;
    let response = match read {
        Ok(Ok(listed)) => Response::Flows(listed),
        Ok(Err(e)) => Response::Error { message: format!("reading the flow tables: {e:#}") },
        Err(e) => Response::Error { message: format!("reading the flow tables: {e}") },
    };
    let _ = reply.send(response);
}

/// Flows listed when the operator names no limit.
pub const DEFAULT_LIMIT: u32 = 1_000;
/// The most one answer lists: 100 000 flows are about 20 MB of JSON.
pub const MAX_LIMIT: u32 = 100_000;

/// What the operator asked for, names resolved to the data plane's ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    pub region: Option<u8>,
    pub service: Option<u16>,
    pub limit: usize,
}

impl Filter {
    /// Refuses names the config does not know, naming the known ones.
    pub fn new(config: &Config, region: Option<&str>, service: Option<&str>, limit: Option<u32>) -> Result<Filter, String> {
        let region = match region {
            Some(name) => Some(config.regions.iter().position(|r| r.name == name).ok_or_else(|| {
                PolicyError::UnknownRegion { name: name.into(), known: config.regions.iter().map(|r| r.name.clone()).collect() }
                    .to_string()
            })? as u8),
            None => None,
        };
        let service = match service {
            Some(name) => Some(config.services.iter().find(|s| s.name == name).map(|s| s.id as u16).ok_or_else(|| {
                PolicyError::UnknownService { name: name.into(), known: config.services.iter().map(|s| s.name.clone()).collect() }
                    .to_string()
            })?),
            None => None,
        };
        let limit = limit.unwrap_or(DEFAULT_LIMIT);
        if limit == 0 || limit > MAX_LIMIT {
            return Err(format!("--limit {limit}: it is 1 to {MAX_LIMIT}"));
        }
        Ok(Filter { region, service, limit: limit as usize })
    }

    fn matches(&self, entry: &Entry) -> bool {
        self.region.is_none_or(|r| r == entry.region_id) && self.service.is_none_or(|s| s == entry.service_id)
    }
}

/// A flow's original entry, of either family, its addresses as the
/// operator reads them.
#[derive(Clone, Debug)]
pub struct Entry {
    client: SocketAddr,
    vip: SocketAddr,
    backend: SocketAddr,
    /// ICMPv6 is ICMP's, as the lifetime rule reads it.
    protocol: Protocol,
    service_id: u16,
    region_id: u8,
    flags: u8,
    last_seen_ns: u64,
    /// In a table of new TCP flows.
    handshake: bool,
}

/// The original entries of one table; `handshake`: a table of new flows.
pub fn originals<A: Address>(table: &[(FlowKey<A>, Flow<A>)], handshake: bool) -> Vec<Entry> {
    let addr = |ip: &A, port: u16| SocketAddr::new(ip.to_ip(), u16::from_be(port));
    table
        .iter()
        .filter(|(_, flow)| flow.direction == FLOW_ORIGINAL)
        .map(|(key, flow)| {
            let protocol = [Protocol::Tcp, Protocol::Udp, Protocol::Icmp]
                .into_iter()
                .find(|p| p.number() == key.protocol || (*p == Protocol::Icmp && key.protocol == A::ICMP))
                .unwrap_or(Protocol::Tcp);
            Entry {
                client: addr(&key.src_addr, key.src_port),
                vip: addr(&key.dst_addr, key.dst_port),
                backend: addr(&flow.rewrite_addr, flow.rewrite_port),
                protocol,
                service_id: flow.service_id,
                region_id: flow.region_id,
                flags: flow.flags,
                last_seen_ns: flow.last_seen_ns,
                handshake,
            }
        })
        .collect()
}

/// The views of the `entries` that `filter` keeps, at `now_ns` on the
/// data plane's clock.
pub fn list(config: &Config, mut entries: Vec<Entry>, now_ns: u64, filter: &Filter) -> FlowList {
    let total = entries.len() as u64;
    entries.retain(|entry| filter.matches(entry));
    let matched = entries.len() as u64;
    entries.sort_by_key(|entry| std::cmp::Reverse(entry.last_seen_ns));
    entries.truncate(filter.limit);
    let flows = entries.iter().map(|entry| view(config, entry, now_ns)).collect();
    FlowList { flows, matched, total }
}

fn view(config: &Config, entry: &Entry, now_ns: u64) -> FlowView {
    let idle = now_ns.saturating_sub(entry.last_seen_ns);
    let state = if entry.handshake {
        FlowState::Handshake
    } else if entry.flags & FLOW_CLOSED != 0 {
        FlowState::Closed
    } else if life(entry.protocol.number(), entry.flags, idle) == Life::Live {
        FlowState::Open
    } else {
        FlowState::Idle
    };
    FlowView {
        client: entry.client.to_string(),
        vip: entry.vip.to_string(),
        protocol: entry.protocol,
        service: config.services.get(entry.service_id as usize).map(|s| s.name.clone()),
        region: config.regions.get(entry.region_id as usize).map_or_else(|| format!("#{}", entry.region_id), |r| r.name.clone()),
        backend: entry.backend.to_string(),
        state,
        copy: entry.flags & FLOW_SYNCED != 0,
        idle_ms: idle / 1_000_000,
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use redirector_common::{Addr6, FLOW_FIN_SEEN, FLOW_REPLY, IPPROTO_TCP, IPPROTO_UDP};

    use super::*;

    #[test]
    fn ipv6_flows_are_listed_with_their_addresses_in_brackets() {
        let c = config();
        let addr = |text: &str| Addr6::from_ip(text.parse().unwrap()).unwrap();
        let key = FlowKey::<Addr6> {
            src_addr: addr("fd00::2"),
            dst_addr: addr("fd00:2::2"),
            src_port: 40_000u16.to_be(),
            dst_port: 80u16.to_be(),
            protocol: IPPROTO_TCP,
            _pad: [0; 3],
        };
        let web6 = c.services.iter().find(|s| s.name == "web6").unwrap().id as u16;
        let flow = Flow::<Addr6> {
            last_seen_ns: SECOND,
            rewrite_addr: addr("fd00:1::2"),
            rewrite_port: 80u16.to_be(),
            service_id: web6,
            region_id: 0,
            direction: FLOW_ORIGINAL,
            ..Flow::default()
        };
        let all = Filter::new(&c, None, None, None).unwrap();
        let listed = list(&c, originals(&[(key, flow)], false), SECOND, &all);
        let view = &listed.flows[0];
        assert_eq!(
            (view.client.as_str(), view.vip.as_str(), view.backend.as_str()),
            ("[fd00::2]:40000", "[fd00:2::2]:80", "[fd00:1::2]:80")
        );
        assert_eq!((view.service.as_deref(), view.region.as_str(), view.state), (Some("web6"), "region1", FlowState::Open));
    }

    const LAB: &str = include_str!("../../examples/lab.toml");
    const SECOND: u64 = 1_000_000_000;

    fn config() -> Config {
        Config::parse(LAB, "lab.toml").unwrap()
    }

    fn entry(port: u16, protocol: u8, region: u8, service: u16, last_seen_ns: u64, flags: u8) -> (FlowKey, Flow) {
        let key = FlowKey {
            src_addr: u32::from(Ipv4Addr::new(10, 0, 0, 2)).to_be(),
            dst_addr: u32::from(Ipv4Addr::new(10, 2, 0, 2)).to_be(),
            src_port: port.to_be(),
            dst_port: 80u16.to_be(),
            protocol,
            _pad: [0; 3],
        };
        let flow = Flow {
            last_seen_ns,
            // Region ids are positions in the config: id 0 is region1, at 10.1.0.2.
            rewrite_addr: u32::from(Ipv4Addr::new(10, region + 1, 0, 2)).to_be(),
            rewrite_port: 80u16.to_be(),
            service_id: service,
            region_id: region,
            direction: FLOW_ORIGINAL,
            flags,
            ..Flow::default()
        };
        (key, flow)
    }

    #[test]
    fn one_view_per_flow_newest_first_with_its_state() {
        let c = config();
        let now = 1_000 * SECOND;
        let (reply_key, mut reply) = entry(9, IPPROTO_TCP, 1, 0, now, 0);
        reply.direction = FLOW_REPLY;
        let established = vec![
            entry(40_001, IPPROTO_TCP, 0, 0, now - 2 * SECOND, 0),
            entry(40_002, IPPROTO_TCP, 1, 0, now - SECOND, FLOW_FIN_SEEN),
            entry(40_003, IPPROTO_UDP, 1, 0, now - 40 * SECOND, FLOW_SYNCED),
            (reply_key, reply),
        ];
        let new = vec![entry(40_004, IPPROTO_TCP, 0, 0, now, 0)];
        let all = Filter::new(&c, None, None, None).unwrap();
        let mut entries = originals(&established, false);
        entries.extend(originals(&new, true));
        let listed = list(&c, entries, now, &all);
        assert_eq!((listed.total, listed.matched), (4, 4));
        let seen: Vec<(&str, FlowState, bool, u64)> =
            listed.flows.iter().map(|f| (f.client.as_str(), f.state, f.copy, f.idle_ms)).collect();
        assert_eq!(
            seen,
            [
                ("10.0.0.2:40004", FlowState::Handshake, false, 0),
                ("10.0.0.2:40002", FlowState::Closed, false, 1_000),
                ("10.0.0.2:40001", FlowState::Open, false, 2_000),
                ("10.0.0.2:40003", FlowState::Idle, true, 40_000),
            ]
        );
        let first = &listed.flows[2];
        assert_eq!((first.vip.as_str(), first.region.as_str(), first.backend.as_str()), ("10.2.0.2:80", "region1", "10.1.0.2:80"));
        assert_eq!(first.service.as_deref(), Some(c.services[0].name.as_str()));
    }

    #[test]
    fn filters_and_the_limit_cut_what_is_listed_not_what_is_counted() {
        let c = config();
        let established: Vec<_> = (0..10).map(|i| entry(40_000 + i, IPPROTO_TCP, (i % 2) as u8, 0, i as u64, 0)).collect();
        let region2 = Filter::new(&c, Some("region2"), None, Some(3)).unwrap();
        let listed = list(&c, originals(&established, false), 100, &region2);
        assert_eq!((listed.total, listed.matched, listed.flows.len()), (10, 5, 3));
        assert!(listed.flows.iter().all(|f| f.region == "region2"));
        assert_eq!(listed.flows[0].client, "10.0.0.2:40009", "the most recently active first");
    }

    #[test]
    fn unknown_names_and_limits_out_of_range_are_refused() {
        let c = config();
        let err = Filter::new(&c, Some("region9"), None, None).unwrap_err();
        assert!(err.starts_with("unknown region \"region9\" (known: region1, region2, region3"), "{err}");
        let err = Filter::new(&c, None, Some("nope"), None).unwrap_err();
        assert!(err.starts_with("unknown service \"nope\" (known: "), "{err}");
        assert_eq!(Filter::new(&c, None, None, Some(0)).unwrap_err(), "--limit 0: it is 1 to 100000");
        assert_eq!(Filter::new(&c, None, None, None).unwrap().limit, DEFAULT_LIMIT as usize);
    }
}
