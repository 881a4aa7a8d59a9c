//! The data plane as the controller sees it: a narrow trait (what Katran's
//! `BaseBpfAdapter` is to `KatranLb`), so the controller's decisions and
//! the order of its writes are tested against a fake, without root.
//!
//! [`BpfDataplane`] is the real one: the XDP object loaded, pinned and
//! attached. Addresses and ports are converted to the network order the
//! maps hold at that edge, nowhere else.

use std::{
    collections::{BTreeMap, HashSet},
    net::SocketAddr,
};

use anyhow::{bail, Result};
use redirector_common::{
    Counters, Reason, RegionState, SelectionTable, MAX_REGIONS, MAX_SERVICES, NO_REGION,
    SELECTION_SLOTS,
};

use crate::config::{Config, Protocol, ServiceAddr};

mod bpf;
#[cfg(test)]
pub mod fake;
pub mod flow_table;
mod pins;
mod services;

pub use bpf::{load_xdp, BpfDataplane, FlowEventLogger, LoadOptions};
pub use pins::{ifindex, remove_pins};

/// What the controller writes and reads. Every write takes effect at once;
/// pacing (the bank-reuse grace of selections) is the controller's.
pub trait Dataplane {
    /// Makes the data plane hold exactly `services` (checked with
    /// [`check_services`] first): backends written, new services inserted
    /// selecting nowhere, services no longer listed removed.
    fn set_services(&mut self, services: &[ServiceSpec]) -> Result<()>;
    /// The live selection table of a service.
    fn selection(&self, service: &ServiceAddr) -> Result<Selection>;
    /// Fills the service's idle bank with `selection` and flips to it in one
    /// update: a packet reads the whole old table or the whole new one. The
    /// bank flipped away from must not be written again for
    /// [`BANK_REUSE_GRACE`].
    fn set_selection(&mut self, service: &ServiceAddr, selection: &Selection) -> Result<()>;
    fn region_state(&self, region: u8) -> Result<RegionState>;
    fn set_region_state(&mut self, region: u8, state: RegionState) -> Result<()>;
    /// Counters summed over CPUs.
    fn stats(&self) -> Result<Stats>;
    /// Refuses an interface the data plane could not attach to.
    fn check_interface(&self, interface: &str) -> Result<()>;
    /// Attaches to `interface`, or takes over the link an earlier process
    /// pinned there.
    fn attach(&mut self, interface: &str) -> Result<AttachMode>;
    /// The kernel forwards `interface`'s traffic on its own again.
    fn detach(&mut self, interface: &str) -> Result<()>;
    /// Detaches from every interface and removes every pin: the explicit
    /// way to take the data plane down.
    fn remove_pins(&mut self) -> Result<()>;
}

/// A selection bank just taken out of service is not rewritten before this:
/// a packet that read the old bank number finishes with it in nanoseconds
/// (XDP runs to completion), so this is a wide margin, not a tuning knob.
pub const BANK_REUSE_GRACE: std::time::Duration = std::time::Duration::from_millis(5);

/// A service as the data plane holds it: where each region serves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSpec {
    /// Index in the data plane's tables, `0..MAX_SERVICES`.
    pub id: u32,
    pub addr: ServiceAddr,
    /// Region id → the region's endpoint for this service, of the VIP's
    /// family.
    pub backends: BTreeMap<u8, SocketAddr>,
}

/// The services of a config as the data plane takes them.
/// A ring buffer record the program wrote as a `T` (`SyncEvent`,
/// `RegionSignal`: plain integers), or None for a record of another size.
pub fn ring_record<T: aya::Pod>(item: &[u8]) -> Option<T> {
    // SAFETY: T is Pod (any bytes are a value); read unaligned from a
    // buffer of its size.
    (item.len() == std::mem::size_of::<T>()).then(|| unsafe { std::ptr::read_unaligned(item.as_ptr() as *const T) })
}

pub fn service_specs(config: &Config) -> Vec<ServiceSpec> {
    config
        .services
        .iter()
        .map(|s| ServiceSpec {
            id: s.id,
            addr: s.addr,
            backends: s
                .regions
                .iter()
                .filter_map(|&id| Some((id, s.endpoint(&config.regions[id as usize])?)))
                .collect(),
        })
        .collect()
}

/// Refuses what the data plane cannot hold before anything is written.
pub fn check_services(services: &[ServiceSpec]) -> Result<()> {
    if services.len() > MAX_SERVICES as usize {
        bail!(
            "{} services configured; the data plane holds at most {MAX_SERVICES}",
            services.len()
        );
    }
    let mut ids = HashSet::new();
    let mut addrs = HashSet::new();
    for s in services {
        if s.id >= MAX_SERVICES {
            bail!("service id {} out of range 0..{MAX_SERVICES}", s.id);
        }
        if !ids.insert(s.id) {
            bail!("service id {} used twice", s.id);
        }
        if !addrs.insert(s.addr) {
            bail!("two services on {}", s.addr);
        }
        if s.addr.protocol == Protocol::Icmp && s.addr.port != 0 {
            bail!("an ICMP service has no port (got {})", s.addr.port);
        }
        for (&region, endpoint) in &s.backends {
            check_region_id(region)?;
            if endpoint.ip().is_unspecified() {
                bail!("region {region} of service {} has the unspecified address {}", s.id, endpoint.ip());
            }
            if endpoint.is_ipv4() != s.addr.vip.is_ipv4() {
                bail!("region {region} of service {} ({}) is at {endpoint}: not the VIP's family", s.id, s.addr);
            }
        }
    }
    Ok(())
}

pub(crate) fn check_region_id(region: u8) -> Result<()> {
    if region as u32 >= MAX_REGIONS {
        bail!("region id {region} out of range: the data plane holds {MAX_REGIONS} regions");
    }
    Ok(())
}

/// Which region each new flow of a service takes, slot by slot.
#[derive(Clone)]
pub struct Selection(Box<SelectionTable>);

impl Selection {
    /// New flows are dropped (counted as `drop_no_region`).
    pub fn nowhere() -> Self {
        Self::all(NO_REGION)
    }

    /// Every new flow goes to `region`.
    pub fn all(region: u8) -> Self {
        Self(Box::new(SelectionTable {
            slots: [region; SELECTION_SLOTS],
        }))
    }

    /// Slot by slot, as a load-balancing policy filled them.
    pub fn from_slots(slots: &[u8]) -> Result<Self> {
        if slots.len() != SELECTION_SLOTS {
            bail!(
                "a selection table has {SELECTION_SLOTS} slots, got {}",
                slots.len()
            );
        }
        if let Some(region) = slots.iter().find(|&&r| r != NO_REGION && r as u32 >= MAX_REGIONS) {
            bail!("selection names region {region}; ids are 0..{MAX_REGIONS}");
        }
        let mut table = Self::nowhere();
        table.0.slots.copy_from_slice(slots);
        Ok(table)
    }

    pub fn slots(&self) -> &[u8] {
        &self.0.slots
    }

    /// The one region every slot holds, if it is one (`NO_REGION` included).
    pub fn single(&self) -> Option<u8> {
        let first = self.0.slots[0];
        self.0.slots.iter().all(|&r| r == first).then_some(first)
    }

    pub(crate) fn from_table(table: Box<SelectionTable>) -> Self {
        Self(table)
    }

    pub(crate) fn table(&self) -> &SelectionTable {
        &self.0
    }
}

impl std::fmt::Debug for Selection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.single() {
            Some(NO_REGION) => f.write_str("Selection(nowhere)"),
            Some(region) => write!(f, "Selection(all {region})"),
            None => write!(f, "Selection({:?})", crate::maglev::shares(self.slots())),
        }
    }
}

impl PartialEq for Selection {
    fn eq(&self, other: &Self) -> bool {
        self.slots() == other.slots()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    Native,
    /// The driver has no native XDP: the generic (skb) hook, much slower.
    Generic,
    /// A link pinned by an earlier process now runs this process's program.
    Adopted,
}

/// Counters summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Indexed by region id.
    pub regions: Vec<Counters>,
    /// Indexed by service id.
    pub services: Vec<Counters>,
    pub reasons: Vec<(Reason, u64)>,
}

impl Stats {
    pub fn reason(&self, reason: Reason) -> u64 {
        self.reasons
            .iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, n)| *n)
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn service(id: u32, port: u16) -> ServiceSpec {
        ServiceSpec {
            id,
            addr: ServiceAddr {
                vip: Ipv4Addr::new(10, 2, 0, 2).into(),
                port,
                protocol: Protocol::Tcp,
            },
            backends: [(1, SocketAddr::new(Ipv4Addr::new(10, 1, 0, 2).into(), 80))].into(),
        }
    }

    fn refused(services: &[ServiceSpec]) -> String {
        format!("{:#}", check_services(services).unwrap_err())
    }

    #[test]
    fn accepts_what_it_can_hold() {
        let all: Vec<_> = (0..MAX_SERVICES).map(|i| service(i, 1000 + i as u16)).collect();
        check_services(&all).unwrap();
    }

    #[test]
    fn refuses_more_services_than_it_holds() {
        let too_many: Vec<_> = (0..=MAX_SERVICES).map(|i| service(i % MAX_SERVICES, i as u16)).collect();
        assert!(refused(&too_many).contains("at most 64"), "{}", refused(&too_many));
    }

    #[test]
    fn refuses_ids_and_regions_out_of_range_and_duplicates() {
        assert!(refused(&[service(MAX_SERVICES, 80)]).contains("out of range"));
        assert!(refused(&[service(1, 80), service(1, 81)]).contains("used twice"));
        assert_eq!(refused(&[service(1, 80), service(2, 80)]), "two services on tcp 10.2.0.2:80");
        let mut far = service(0, 80);
        far.backends.insert(MAX_REGIONS as u8, SocketAddr::new(Ipv4Addr::new(10, 9, 0, 2).into(), 80));
        assert!(refused(&[far]).contains("region id 32 out of range"));
        let mut ping = service(0, 7);
        ping.addr.protocol = Protocol::Icmp;
        assert!(refused(&[ping]).contains("ICMP service has no port"));
    }

    #[test]
    fn selection_tables_must_be_whole_and_name_known_regions() {
        assert!(Selection::from_slots(&[1, 2, 3]).is_err());
        let mut far = vec![1; SELECTION_SLOTS];
        far[7] = MAX_REGIONS as u8;
        assert!(Selection::from_slots(&far).is_err());
        assert_eq!(Selection::all(3).slots().len(), SELECTION_SLOTS);
        assert_eq!(Selection::all(3).single(), Some(3));
        assert_eq!(Selection::nowhere().single(), Some(NO_REGION));
        far[7] = 2;
        assert_eq!(Selection::from_slots(&far).unwrap().single(), None);
    }
}
