//! The data plane as userspace sees it: load the XDP object (or adopt the
//! one already pinned), attach it to interfaces, write services, regions and
//! selection tables, read counters and flows.
//!
//! Everything lives under a pin directory on bpffs: the maps by name and
//! one XDP link per interface in `links/`. A process that exits leaves the
//! data plane forwarding on its last state; the next one loads the same
//! object against the same maps and swaps its program into the pinned links
//! atomically, so no flow loses its region across a restart.

use std::{collections::BTreeMap, fs, net::IpAddr, path::PathBuf};

use anyhow::{anyhow, Context, Result};
use aya::{
    maps::{Array, DevMapHash, MapData, PerCpuArray, RingBuf},
    programs::{
        links::{FdLink, PinnedLink},
        xdp::{XdpLink, XdpLinkId, XdpMode as KernelXdpMode},
        ProgramError, Xdp,
    },
    Ebpf, EbpfLoader,
};
use redirector_common::{
    map_names, new_flow_table_size, selection_index, Addr4, Addr6, Counters, Reason, Region, RegionState,
    SelectionTable, Service, FLOW_TABLE_SIZE, PROGRAM_NAME,
};
use tracing::{debug, warn};

use super::{
    check_region_id, check_services,
    flow_table::{FlowTable, FLOW_MAPS},
    pins::{check_outlives_process, ensure_bpffs, ifindex, link_pin, list_link_pins, remove_link_pin},
    services::ServiceMaps,
    AttachMode, Dataplane, Selection, ServiceSpec, Stats,
};
use crate::config::{ServiceAddr, XdpMode, DEFAULT_PIN_PATH};

/// The XDP object, built by build.rs with the pinned nightly.
static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("REDIRECTOR_EBPF_OBJECT"));

pub struct BpfDataplane {
    ebpf: Ebpf,
    pin_path: PathBuf,
    services4: ServiceMaps<Addr4>,
    services6: ServiceMaps<Addr6>,
    regions: Array<MapData, Region>,
    selection: Array<MapData, SelectionTable>,
    flows: FlowTable,
    egress: DevMapHash<MapData>,
    region_counters: PerCpuArray<MapData, Counters>,
    service_counters: PerCpuArray<MapData, Counters>,
    reasons: PerCpuArray<MapData, u64>,
    /// Entries of `reasons`, which an older data plane pinned smaller.
    reasons_held: u32,
    links: BTreeMap<String, XdpLinkId>,
    xdp_mode: XdpMode,
    logger: Option<FlowEventLogger>,
    flow_events: Option<RingBuf<MapData>>,
    region_signals: Option<RingBuf<MapData>>,
}

pub type FlowEventLogger = aya_log::EbpfLogger<&'static dyn log::Log>;

#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub pin_path: PathBuf,
    /// Log new flows and re-steers through aya-log (costs per new flow).
    pub log_flow_events: bool,
    /// Tell the flow sync, through the `FLOW_EVENTS` ring buffer, of every
    /// flow that enters the established table (costs per new flow).
    pub sync_flow_events: bool,
    /// Tell the controller, through the `REGION_SIGNALS` ring buffer, of
    /// every SYN a region refused with a reset (passive detection).
    pub passive_detection: bool,
    /// Entries of the established flow table; the table of new TCP flows
    /// takes [`new_flow_table_size`] of it. A table already pinned keeps
    /// its size.
    pub flow_table_size: u32,
    /// How interfaces attached from now on take the program (a link an
    /// earlier process pinned keeps the mode it was attached in).
    pub xdp_mode: XdpMode,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            pin_path: PathBuf::from(DEFAULT_PIN_PATH),
            log_flow_events: false,
            sync_flow_events: false,
            passive_detection: false,
            flow_table_size: FLOW_TABLE_SIZE,
            xdp_mode: XdpMode::Auto,
        }
    }
}

impl BpfDataplane {
    /// Loads the program. Maps already pinned under `pin_path` are adopted
    /// with their contents; missing ones are created and pinned.
    pub fn load(options: &LoadOptions) -> Result<Self> {
        ensure_bpffs(&options.pin_path)?;
        check_outlives_process(&options.pin_path)?;
        warn_if_pinned_size_differs(&options.pin_path, options.flow_table_size);
        let reasons_pinned = pinned_entries(&options.pin_path, map_names::REASONS);
        if let Some(held) = reasons_pinned.filter(|&held| held < Reason::COUNT) {
            warn!(
                "the pinned REASONS map counts {held} reasons, this data plane {}: the newer ones \
                 read 0 until the data plane is rebuilt (redirectorctl detach, then start)",
                Reason::COUNT
            );
        }
        let log_flow_events = u8::from(options.log_flow_events);
        let sync_flow_events = u8::from(options.sync_flow_events);
        let passive_detection = u8::from(options.passive_detection);
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&options.pin_path)
            .override_global("LOG_FLOW_EVENTS", &log_flow_events, true)
            .override_global("SYNC_FLOW_EVENTS", &sync_flow_events, true)
            .override_global("PASSIVE_DETECTION", &passive_detection, true)
            .map_max_entries(map_names::FLOWS, options.flow_table_size)
            .map_max_entries(map_names::NEW_FLOWS, new_flow_table_size(options.flow_table_size))
            .map_max_entries(map_names::FLOWS6, options.flow_table_size)
            .map_max_entries(map_names::NEW_FLOWS6, new_flow_table_size(options.flow_table_size))
            .load(OBJECT)
            .context("loading the XDP object")?;
        // The logger holds the ring buffer the program writes to: it must
        // exist before the program loads and live as long as it runs.
        let logger = if options.log_flow_events {
            Some(aya_log::EbpfLogger::init(&mut ebpf).context("setting up flow event logging")?)
        } else {
            None
        };
        let program: &mut Xdp = ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or_else(|| anyhow!("the object has no program {PROGRAM_NAME}"))?
            .try_into()?;
        load_xdp(program)?;

        Ok(Self {
            services4: ServiceMaps {
                services: take_map(&mut ebpf, map_names::SERVICES)?,
                backends: take_map(&mut ebpf, map_names::BACKENDS)?,
            },
            services6: ServiceMaps {
                services: take_map(&mut ebpf, map_names::SERVICES6)?,
                backends: take_map(&mut ebpf, map_names::BACKENDS6)?,
            },
            regions: take_map(&mut ebpf, map_names::REGIONS)?,
            selection: take_map(&mut ebpf, map_names::SELECTION)?,
            flows: FlowTable::from_maps(
                FLOW_MAPS.iter().map(|name| take_raw_map(&mut ebpf, name)).collect::<Result<_>>()?,
            )?,
            egress: take_map(&mut ebpf, map_names::EGRESS)?,
            region_counters: take_map(&mut ebpf, map_names::REGION_COUNTERS)?,
            service_counters: take_map(&mut ebpf, map_names::SERVICE_COUNTERS)?,
            reasons: take_map(&mut ebpf, map_names::REASONS)?,
            reasons_held: reasons_pinned.unwrap_or(Reason::COUNT),
            flow_events: if options.sync_flow_events {
                Some(take_map(&mut ebpf, map_names::FLOW_EVENTS)?)
            } else {
                None
            },
            region_signals: if options.passive_detection {
                Some(take_map(&mut ebpf, map_names::REGION_SIGNALS)?)
            } else {
                None
            },
            ebpf,
            pin_path: options.pin_path.clone(),
            links: BTreeMap::new(),
            xdp_mode: options.xdp_mode,
            logger,
        })
    }

    /// The reader of the program's flow event log (when loaded with
    /// `log_flow_events`): poll its fd for readability and `flush` it to
    /// pass the records to the `log` crate's logger.
    pub fn take_logger(&mut self) -> Option<FlowEventLogger> {
        self.logger.take()
    }

    /// The reader of the flow events the program writes for the flow sync
    /// (when loaded with `sync_flow_events`).
    pub fn take_flow_events(&mut self) -> Option<RingBuf<MapData>> {
        self.flow_events.take()
    }

    /// The ring buffer of region signals, read by the daemon (when loaded
    /// with `passive_detection`).
    pub fn take_region_signals(&mut self) -> Option<RingBuf<MapData>> {
        self.region_signals.take()
    }

    /// The loaded program, for BPF_PROG_TEST_RUN.
    pub fn program(&self) -> &Xdp {
        self.ebpf
            .program(PROGRAM_NAME)
            .expect("checked at load")
            .try_into()
            .expect("checked at load")
    }

    fn program_mut(&mut self) -> &mut Xdp {
        self.ebpf
            .program_mut(PROGRAM_NAME)
            .expect("checked at load")
            .try_into()
            .expect("checked at load")
    }

    /// Attaches where no earlier process did, in the mode the config asks.
    fn attach_new(&mut self, interface: &str) -> Result<(XdpLinkId, AttachMode)> {
        let in_mode = |this: &mut Self, mode: KernelXdpMode| this.program_mut().attach(interface, mode);
        match self.xdp_mode {
            XdpMode::Native => Ok((
                in_mode(self, KernelXdpMode::Driver)
                    .with_context(|| format!("{interface}: native XDP refused (xdp_mode = \"native\")"))?,
                AttachMode::Native,
            )),
            XdpMode::Generic => Ok((
                in_mode(self, KernelXdpMode::Skb).with_context(|| format!("attaching XDP to {interface}"))?,
                AttachMode::Generic,
            )),
            XdpMode::Auto => match in_mode(self, KernelXdpMode::Driver) {
                Ok(id) => Ok((id, AttachMode::Native)),
                Err(native) => {
                    warn!("{interface}: native XDP refused ({native}); using generic mode");
                    let id = in_mode(self, KernelXdpMode::Skb).with_context(|| format!("attaching XDP to {interface}"))?;
                    Ok((id, AttachMode::Generic))
                }
            },
        }
    }

    /// Interfaces with a pinned link under this pin path.
    pub fn attached(&self) -> Result<Vec<String>> {
        list_link_pins(&self.pin_path)
    }

    /// A second handle on the flow table, for a sweep on another thread.
    pub fn flow_table(&self) -> Result<FlowTable> {
        FlowTable::open(&self.pin_path)
    }

    /// Every entry of the established flow table, both directions.
    pub fn flows(&self) -> Result<Vec<(redirector_common::FlowKey, redirector_common::Flow)>> {
        self.flows.entries()
    }

    /// Every entry of the table of new TCP flows, both directions.
    pub fn new_flows(&self) -> Result<Vec<(redirector_common::FlowKey, redirector_common::Flow)>> {
        self.flows.new_entries()
    }

    /// [`Self::flows`] of IPv6.
    pub fn flows6(&self) -> Result<Vec<(redirector_common::FlowKey<Addr6>, redirector_common::Flow<Addr6>)>> {
        self.flows.entries6()
    }

    /// [`Self::new_flows`] of IPv6.
    pub fn new_flows6(&self) -> Result<Vec<(redirector_common::FlowKey<Addr6>, redirector_common::Flow<Addr6>)>> {
        self.flows.new_entries6()
    }

    /// Overwrites a flow entry: tests age entries with it.
    #[cfg(feature = "test-hooks")]
    pub fn set_flow(&mut self, key: &redirector_common::FlowKey, flow: &redirector_common::Flow) -> Result<()> {
        self.flows.set(key, flow)
    }

    /// [`Self::set_flow`] of IPv6.
    #[cfg(feature = "test-hooks")]
    pub fn set_flow6(&mut self, key: &redirector_common::FlowKey<Addr6>, flow: &redirector_common::Flow<Addr6>) -> Result<()> {
        self.flows.set6(key, flow)
    }
}

impl BpfDataplane {
    /// The service's current entry, from its VIP's family's map.
    fn service(&self, addr: &ServiceAddr) -> Result<Service> {
        match addr.vip {
            IpAddr::V4(_) => self.services4.get(addr),
            IpAddr::V6(_) => self.services6.get(addr),
        }
    }

    fn insert_service(&mut self, addr: &ServiceAddr, service: Service) -> Result<()> {
        match addr.vip {
            IpAddr::V4(_) => self.services4.insert(addr, service),
            IpAddr::V6(_) => self.services6.insert(addr, service),
        }
    }

    /// Backends first, then the service entry: a new service selects
    /// nowhere until the controller writes its selection.
    fn write_service(&mut self, spec: &ServiceSpec) -> Result<()> {
        match spec.addr.vip {
            IpAddr::V4(_) => self.services4.write_backends(spec)?,
            IpAddr::V6(_) => self.services6.write_backends(spec)?,
        }
        if self.service(&spec.addr).is_ok_and(|existing| existing.id == spec.id) {
            return Ok(());
        }
        self.selection.set(selection_index(spec.id, 0), Selection::nowhere().table(), 0)?;
        self.insert_service(&spec.addr, Service { id: spec.id, bank: 0 })
    }
}

impl Dataplane for BpfDataplane {
    fn set_services(&mut self, services: &[ServiceSpec]) -> Result<()> {
        check_services(services)?;
        for s in services {
            self.write_service(s)?;
        }
        self.services4.retain(services)?;
        self.services6.retain(services)?;
        Ok(())
    }

    fn selection(&self, service: &ServiceAddr) -> Result<Selection> {
        let current = self.service(service)?;
        Ok(Selection::from_table(Box::new(self.selection.get(&current.selection_index(), 0)?)))
    }

    fn set_selection(&mut self, service: &ServiceAddr, selection: &Selection) -> Result<()> {
        let current = self.service(service)?;
        let next = Service {
            id: current.id,
            bank: current.bank ^ 1,
        };
        self.selection.set(next.selection_index(), selection.table(), 0)?;
        self.insert_service(service, next)
    }

    fn region_state(&self, region: u8) -> Result<RegionState> {
        check_region_id(region)?;
        let r = self.regions.get(&(region as u32), 0)?;
        RegionState::from_u8(r.state).ok_or_else(|| anyhow!("region {region}: bad state {}", r.state))
    }

    fn set_region_state(&mut self, region: u8, state: RegionState) -> Result<()> {
        check_region_id(region)?;
        let value = Region {
            state: state as u8,
            _pad: [0; 7],
        };
        self.regions.set(region as u32, value, 0)?;
        Ok(())
    }

    fn stats(&self) -> Result<Stats> {
        let sum = |values: aya::maps::PerCpuValues<Counters>| {
            values.iter().fold(Counters::default(), |mut acc, c| {
                acc.add(c);
                acc
            })
        };
        let regions = self
            .region_counters
            .iter()
            .map(|v| v.map(sum))
            .collect::<Result<_, _>>()?;
        let services = self
            .service_counters
            .iter()
            .map(|v| v.map(sum))
            .collect::<Result<_, _>>()?;
        let mut reasons = Vec::new();
        for reason in Reason::ALL {
            // A map pinned by an older data plane has no entry for the
            // newer reasons (warned at load): they read 0.
            let count = match self.reasons.get(&(reason as u32), 0) {
                Ok(per_cpu) => per_cpu.iter().sum(),
                Err(_) if reason as u32 >= self.reasons_held => 0,
                Err(e) => return Err(e.into()),
            };
            reasons.push((reason, count));
        }
        Ok(Stats {
            regions,
            services,
            reasons,
        })
    }

    fn check_interface(&self, interface: &str) -> Result<()> {
        ifindex(interface).map(drop)
    }

    /// In the configured mode (`xdp_mode`); the link is pinned, and the
    /// program may redirect to the interface.
    fn attach(&mut self, interface: &str) -> Result<AttachMode> {
        let ifindex = ifindex(interface)?;
        let pin = link_pin(&self.pin_path, interface);
        let mode = if pin.exists() {
            let link = PinnedLink::from_pin(&pin)
                .with_context(|| format!("opening the pinned link {}", pin.display()))?;
            let link = XdpLink::try_from(FdLink::from(link))?;
            let id = self
                .program_mut()
                .attach_to_link(link)
                .with_context(|| format!("replacing the program on {interface}"))?;
            self.links.insert(interface.to_string(), id);
            AttachMode::Adopted
        } else {
            let (id, mode) = self.attach_new(interface)?;
            let link = self.program_mut().take_link(id)?;
            let link = FdLink::try_from(link)
                .map_err(|e| anyhow!("{interface}: XDP link is not pinnable ({e}); kernel ≥ 5.9 needed"))?;
            fs::create_dir_all(pin.parent().unwrap())?;
            let pinned = link
                .pin(&pin)
                .with_context(|| format!("pinning the XDP link at {}", pin.display()))?;
            let id = self
                .program_mut()
                .attach_to_link(XdpLink::try_from(FdLink::from(pinned))?)?;
            self.links.insert(interface.to_string(), id);
            mode
        };
        self.egress
            .insert(ifindex, ifindex, None, 0)
            .with_context(|| format!("adding {interface} to the egress devmap"))?;
        debug!("{interface}: attached ({mode:?})");
        Ok(mode)
    }

    fn detach(&mut self, interface: &str) -> Result<()> {
        if let Ok(ifindex) = ifindex(interface) {
            let _ = self.egress.remove(ifindex);
        }
        remove_link_pin(&link_pin(&self.pin_path, interface))?;
        if let Some(id) = self.links.remove(interface) {
            self.program_mut().detach(id)?;
        }
        Ok(())
    }

    fn remove_pins(&mut self) -> Result<()> {
        super::remove_pins(&self.pin_path)
    }
}

/// Loads an XDP program into the kernel. Verifier runs cut short by a
/// signal (EAGAIN) are run again, as libbpf does; anything else is the
/// kernel refusing the program.
pub fn load_xdp(program: &mut Xdp) -> Result<()> {
    const ATTEMPTS: usize = 5;
    let mut attempt = 1;
    loop {
        match without_signals(|| program.load()) {
            Err(ProgramError::LoadError { io_error, .. })
                if io_error.raw_os_error() == Some(libc::EAGAIN) && attempt < ATTEMPTS =>
            {
                debug!("the verifier was interrupted (attempt {attempt}); loading again");
                attempt += 1;
            }
            result => return result.context("the kernel refused the XDP program"),
        }
    }
}

/// Runs `load` with every signal blocked on this thread. Verification
/// takes a few hundred milliseconds, and the kernel cuts it short when a
/// signal arrives for the loading thread (a child exiting, a SIGCONT):
/// blocked here, such a signal goes to another thread of the process, or
/// waits until `load` returns.
fn without_signals<T>(load: impl FnOnce() -> T) -> T {
    // SAFETY: sigset_t is plain data that sigfillset initialises;
    // pthread_sigmask changes this thread's mask alone, restored below.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut before: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut before);
        let loaded = load();
        libc::pthread_sigmask(libc::SIG_SETMASK, &before, std::ptr::null_mut());
        loaded
    }
}

fn take_map<T>(ebpf: &mut Ebpf, name: &str) -> Result<T>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    T::try_from(take_raw_map(ebpf, name)?).with_context(|| format!("map {name} has an unexpected type"))
}

fn take_raw_map(ebpf: &mut Ebpf, name: &str) -> Result<aya::maps::Map> {
    ebpf.take_map(name).ok_or_else(|| anyhow!("the object has no map {name}"))
}

/// A flow table already pinned is adopted with its size (and its flows):
/// a new `flow_table_size` takes effect when the data plane is rebuilt.
fn warn_if_pinned_size_differs(pin_path: &std::path::Path, wanted: u32) {
    if let Some(size) = pinned_entries(pin_path, map_names::FLOWS).filter(|&size| size != wanted) {
        warn!(
            "the pinned flow table holds {size} entries, not flow_table_size = {wanted}: it is \
             adopted as it is, with its flows; the new size takes effect once the data plane is \
             rebuilt (redirectorctl detach, then start)"
        );
    }
}

/// Entries of the map `name` pinned under `pin_path`, if one is.
fn pinned_entries(pin_path: &std::path::Path, name: &str) -> Option<u32> {
    let pinned = aya::maps::MapData::from_pin(pin_path.join(name)).ok()?;
    pinned.info().ok().map(|info| info.max_entries())
}
