//! A data plane in memory for the controller's unit tests: it holds what
//! the maps would, behaves as [`super::BpfDataplane`] does on each write
//! (a new or re-keyed service selects nowhere), and logs every write with
//! the simulated time it came at.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::{anyhow, bail, Result};
use redirector_common::RegionState;

use super::{check_services, AttachMode, Dataplane, Selection, ServiceSpec, Stats};
use crate::{config::ServiceAddr, controller::Clock};

/// A clock the test moves.
#[derive(Clone, Default)]
pub struct SimClock(Arc<AtomicU64>);

impl SimClock {
    pub fn set(&self, at: Duration) {
        self.0.store(at.as_nanos() as u64, Ordering::SeqCst);
    }

    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_nanos() as u64, Ordering::SeqCst);
    }
}

impl Clock for SimClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::SeqCst))
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Write {
    Attach(String),
    Detach(String),
    /// The addresses held afterwards.
    Services(Vec<ServiceAddr>),
    Selection(ServiceAddr, Selection),
    RegionState(u8, RegionState),
    RemovePins,
}

pub struct FakeDataplane {
    clock: SimClock,
    /// Address → (service id, live selection).
    pub services: BTreeMap<ServiceAddr, (u32, Selection)>,
    pub regions: BTreeMap<u8, RegionState>,
    pub attached: BTreeSet<String>,
    /// Interfaces that exist on the fake host.
    pub interfaces: BTreeSet<String>,
    pub stats: Stats,
    /// Every write, with when it came.
    pub writes: Vec<(Duration, Write)>,
    /// So many next `set_selection` calls fail.
    pub failing_selections: u32,
    /// The next `set_services` call fails.
    pub failing_services: bool,
}

impl FakeDataplane {
    pub fn new(clock: SimClock, interfaces: &[&str]) -> Self {
        FakeDataplane {
            clock,
            services: BTreeMap::new(),
            regions: BTreeMap::new(),
            attached: BTreeSet::new(),
            interfaces: interfaces.iter().map(|i| i.to_string()).collect(),
            stats: Stats::default(),
            writes: Vec::new(),
            failing_selections: 0,
            failing_services: false,
        }
    }

    fn log(&mut self, write: Write) {
        self.writes.push((self.clock.now(), write));
    }

    /// The writes since the last call.
    pub fn take_writes(&mut self) -> Vec<(Duration, Write)> {
        std::mem::take(&mut self.writes)
    }

    /// What `service` selects now.
    pub fn live(&self, service: &ServiceAddr) -> &Selection {
        &self.services[service].1
    }
}

impl Dataplane for FakeDataplane {
    fn set_services(&mut self, services: &[ServiceSpec]) -> Result<()> {
        check_services(services)?;
        if std::mem::take(&mut self.failing_services) {
            bail!("SERVICES: no memory (the fake was told to fail)");
        }
        for s in services {
            let kept = self.services.get(&s.addr).is_some_and(|(id, _)| *id == s.id);
            if !kept {
                self.services.insert(s.addr, (s.id, Selection::nowhere()));
            }
        }
        self.services.retain(|addr, _| services.iter().any(|s| s.addr == *addr));
        let held = self.services.keys().copied().collect();
        self.log(Write::Services(held));
        Ok(())
    }

    fn selection(&self, service: &ServiceAddr) -> Result<Selection> {
        self.services
            .get(service)
            .map(|(_, selection)| selection.clone())
            .ok_or_else(|| anyhow!("service {service} is not in the data plane"))
    }

    fn set_selection(&mut self, service: &ServiceAddr, selection: &Selection) -> Result<()> {
        let Some((_, live)) = self.services.get_mut(service) else {
            bail!("service {service} is not in the data plane");
        };
        if self.failing_selections > 0 {
            self.failing_selections -= 1;
            bail!("SELECTION: no memory (the fake was told to fail)");
        }
        *live = selection.clone();
        self.log(Write::Selection(*service, selection.clone()));
        Ok(())
    }

    fn region_state(&self, region: u8) -> Result<RegionState> {
        Ok(self.regions.get(&region).copied().unwrap_or(RegionState::Down))
    }

    fn set_region_state(&mut self, region: u8, state: RegionState) -> Result<()> {
        self.regions.insert(region, state);
        self.log(Write::RegionState(region, state));
        Ok(())
    }

    fn stats(&self) -> Result<Stats> {
        Ok(self.stats.clone())
    }

    fn check_interface(&self, interface: &str) -> Result<()> {
        if !self.interfaces.contains(interface) {
            bail!("no interface named {interface:?}");
        }
        Ok(())
    }

    fn attach(&mut self, interface: &str) -> Result<AttachMode> {
        self.check_interface(interface)?;
        let adopted = !self.attached.insert(interface.to_string());
        self.log(Write::Attach(interface.to_string()));
        Ok(if adopted { AttachMode::Adopted } else { AttachMode::Native })
    }

    fn detach(&mut self, interface: &str) -> Result<()> {
        self.attached.remove(interface);
        self.log(Write::Detach(interface.to_string()));
        Ok(())
    }

    fn remove_pins(&mut self) -> Result<()> {
        self.services.clear();
        self.regions.clear();
        self.attached.clear();
        self.log(Write::RemovePins);
        Ok(())
    }
}
