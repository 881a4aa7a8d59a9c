//! The data plane as userspace sees it: load the XDP object (or adopt the
//! one already pinned), attach it to interfaces, write services, regions and
//! selection tables, read counters and flows.
//!
//! Everything lives under a pin directory on bpffs: the maps by name and
//! one XDP link per interface in `links/`. A process that exits leaves the
//! data plane forwarding on its last state; the next one loads the same
//! object against the same maps and swaps its program into the pinned links
//! atomically, so no flow loses its region across a restart.

use std::{
    collections::BTreeMap,
    ffi::CString,
    fs,
    net::{Ipv4Addr, SocketAddrV4},
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use aya::{
    maps::{Array, DevMapHash, HashMap, MapData, PerCpuArray},
    programs::{
        links::{FdLink, PinnedLink},
        ProgramError,
        xdp::{XdpLink, XdpLinkId, XdpMode},
        Xdp,
    },
    Ebpf, EbpfLoader,
};
use redirector_common::{
    backend_index, map_names, selection_index, Backend, Counters, Flow, FlowKey, Reason, Region,
    RegionState, SelectionTable, Service, ServiceKey, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP,
    MAX_REGIONS, MAX_SERVICES, NO_REGION, PROGRAM_NAME, SELECTION_SLOTS,
};
use tracing::{debug, warn};

use crate::flow_table::FlowTable;

/// The XDP object, built by build.rs with the pinned nightly.
static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("REDIRECTOR_EBPF_OBJECT"));

pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/redirector";
const BPFFS_MOUNT: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// A selection bank just taken out of service is not rewritten before this:
/// a packet that read the old bank number finishes with it in nanoseconds
/// (XDP runs to completion), so this is a wide margin, not a tuning knob.
const BANK_REUSE_GRACE: Duration = Duration::from_millis(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    /// ICMP echo; the service port is 0.
    Icmp,
}

impl Protocol {
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => IPPROTO_TCP,
            Protocol::Udp => IPPROTO_UDP,
            Protocol::Icmp => IPPROTO_ICMP,
        }
    }
}

/// What a client addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceAddr {
    pub vip: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
}

impl ServiceAddr {
    fn key(&self) -> ServiceKey {
        ServiceKey {
            vip: u32::from(self.vip).to_be(),
            port: self.port.to_be(),
            protocol: self.protocol.number(),
            _pad: 0,
        }
    }
}

/// A service as the data plane holds it: where each region serves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSpec {
    /// Index in the data plane's tables, `0..MAX_SERVICES`.
    pub id: u32,
    pub addr: ServiceAddr,
    /// Region id → the region's endpoint for this service.
    pub backends: BTreeMap<u8, SocketAddrV4>,
}

/// Which region each new flow of a service takes, slot by slot.
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
        let mut table = Self::nowhere();
        table.0.slots.copy_from_slice(slots);
        Ok(table)
    }

    pub fn slots(&self) -> &[u8] {
        &self.0.slots
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

pub struct Dataplane {
    ebpf: Ebpf,
    pin_path: PathBuf,
    services: HashMap<MapData, ServiceKey, Service>,
    backends: Array<MapData, Backend>,
    regions: Array<MapData, Region>,
    selection: Array<MapData, SelectionTable>,
    flows: FlowTable,
    egress: DevMapHash<MapData>,
    region_counters: PerCpuArray<MapData, Counters>,
    service_counters: PerCpuArray<MapData, Counters>,
    reasons: PerCpuArray<MapData, u64>,
    links: BTreeMap<String, XdpLinkId>,
    /// When each service last flipped banks (see `BANK_REUSE_GRACE`).
    flipped_at: std::collections::HashMap<u32, Instant>,
    logger: Option<FlowEventLogger>,
}

pub type FlowEventLogger = aya_log::EbpfLogger<&'static dyn log::Log>;

#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub pin_path: PathBuf,
    /// Log new flows and re-steers through aya-log (costs per new flow).
    pub log_flow_events: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            pin_path: PathBuf::from(DEFAULT_PIN_PATH),
            log_flow_events: false,
        }
    }
}

impl Dataplane {
    /// Loads the program. Maps already pinned under `pin_path` are adopted
    /// with their contents; missing ones are created and pinned.
    pub fn load(options: &LoadOptions) -> Result<Self> {
        ensure_bpffs(&options.pin_path)?;
        let log_flow_events = u8::from(options.log_flow_events);
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&options.pin_path)
            .override_global("LOG_FLOW_EVENTS", &log_flow_events, true)
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
            services: take_map(&mut ebpf, map_names::SERVICES)?,
            backends: take_map(&mut ebpf, map_names::BACKENDS)?,
            regions: take_map(&mut ebpf, map_names::REGIONS)?,
            selection: take_map(&mut ebpf, map_names::SELECTION)?,
            flows: take_map(&mut ebpf, map_names::FLOWS)?,
            egress: take_map(&mut ebpf, map_names::EGRESS)?,
            region_counters: take_map(&mut ebpf, map_names::REGION_COUNTERS)?,
            service_counters: take_map(&mut ebpf, map_names::SERVICE_COUNTERS)?,
            reasons: take_map(&mut ebpf, map_names::REASONS)?,
            ebpf,
            pin_path: options.pin_path.clone(),
            links: BTreeMap::new(),
            flipped_at: Default::default(),
            logger,
        })
    }

    /// The reader of the program's flow event log (when loaded with
    /// `log_flow_events`): poll its fd for readability and `flush` it to
    /// pass the records to the `log` crate's logger.
    pub fn take_logger(&mut self) -> Option<FlowEventLogger> {
        self.logger.take()
    }

    pub fn pin_path(&self) -> &Path {
        &self.pin_path
    }

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

    fn link_pin(&self, interface: &str) -> PathBuf {
        self.pin_path.join("links").join(interface)
    }

    /// Attaches to `interface` in native mode (generic if the driver has
    /// none), or takes over the link an earlier process pinned there, and
    /// lets the program redirect to it.
    pub fn attach(&mut self, interface: &str) -> Result<AttachMode> {
        let ifindex = ifindex(interface)?;
        let pin = self.link_pin(interface);
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
            let (id, mode) = match self.program_mut().attach(interface, XdpMode::Driver) {
                Ok(id) => (id, AttachMode::Native),
                Err(native) => {
                    warn!("{interface}: native XDP refused ({native}); using generic mode");
                    let id = self
                        .program_mut()
                        .attach(interface, XdpMode::Skb)
                        .with_context(|| format!("attaching XDP to {interface}"))?;
                    (id, AttachMode::Generic)
                }
            };
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

    /// Takes the program off `interface`: the kernel forwards its traffic
    /// on its own again.
    pub fn detach(&mut self, interface: &str) -> Result<()> {
        if let Ok(ifindex) = ifindex(interface) {
            let _ = self.egress.remove(ifindex);
        }
        remove_link_pin(&self.link_pin(interface))?;
        if let Some(id) = self.links.remove(interface) {
            self.program_mut().detach(id)?;
        }
        Ok(())
    }

    /// Interfaces with a pinned link under this pin path.
    pub fn attached(&self) -> Result<Vec<String>> {
        list_link_pins(&self.pin_path)
    }

    /// Refuses what the data plane cannot hold before anything is written.
    pub fn check_services(services: &[ServiceSpec]) -> Result<()> {
        if services.len() > MAX_SERVICES as usize {
            bail!(
                "{} services configured; the data plane holds at most {MAX_SERVICES}",
                services.len()
            );
        }
        let mut ids = std::collections::HashSet::new();
        let mut addrs = std::collections::HashSet::new();
        for s in services {
            if s.id >= MAX_SERVICES {
                bail!("service id {} out of range 0..{MAX_SERVICES}", s.id);
            }
            if !ids.insert(s.id) {
                bail!("service id {} used twice", s.id);
            }
            if !addrs.insert(s.addr) {
                bail!("two services on {:?}", s.addr);
            }
            if s.addr.protocol == Protocol::Icmp && s.addr.port != 0 {
                bail!("an ICMP service has no port (got {})", s.addr.port);
            }
            for (&region, endpoint) in &s.backends {
                check_region_id(region)?;
                if endpoint.ip().is_unspecified() {
                    bail!("region {region} of service {} has address 0.0.0.0", s.id);
                }
            }
        }
        Ok(())
    }

    /// Makes the data plane hold exactly `services`: backends written first,
    /// then new services inserted (selecting nowhere until a selection is
    /// set), then services no longer listed removed.
    pub fn set_services(&mut self, services: &[ServiceSpec]) -> Result<()> {
        Self::check_services(services)?;
        for s in services {
            for region in 0..MAX_REGIONS as u8 {
                let backend = s.backends.get(&region).map_or(Backend::default(), |e| Backend {
                    addr: u32::from(*e.ip()).to_be(),
                    port: e.port().to_be(),
                    _pad: 0,
                });
                self.backends.set(backend_index(s.id, region), backend, 0)?;
            }
            let key = s.addr.key();
            match self.services.get(&key, 0) {
                Ok(existing) if existing.id == s.id => {}
                _ => {
                    let table = Selection::nowhere();
                    self.selection.set(selection_index(s.id, 0), table.0.as_ref(), 0)?;
                    self.services.insert(key, Service { id: s.id, bank: 0 }, 0)?;
                }
            }
        }
        let wanted: Vec<ServiceKey> = services.iter().map(|s| s.addr.key()).collect();
        let stale: Vec<ServiceKey> = self
            .services
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !wanted.contains(k))
            .collect();
        for key in stale {
            self.services.remove(&key)?;
        }
        Ok(())
    }

    /// Services in the data plane now: address → id.
    pub fn services(&self) -> Result<Vec<(ServiceAddr, u32)>> {
        let mut out = Vec::new();
        for entry in self.services.iter() {
            let (key, service) = entry?;
            let protocol = match key.protocol {
                IPPROTO_TCP => Protocol::Tcp,
                IPPROTO_UDP => Protocol::Udp,
                _ => Protocol::Icmp,
            };
            let addr = ServiceAddr {
                vip: Ipv4Addr::from(u32::from_be(key.vip)),
                port: u16::from_be(key.port),
                protocol,
            };
            out.push((addr, service.id));
        }
        Ok(out)
    }

    /// Where `region` serves service `service_id`, if it does.
    pub fn backend(&self, service_id: u32, region: u8) -> Result<Option<SocketAddrV4>> {
        check_region_id(region)?;
        let b = self.backends.get(&backend_index(service_id, region), 0)?;
        Ok((b.addr != 0).then(|| {
            SocketAddrV4::new(Ipv4Addr::from(u32::from_be(b.addr)), u16::from_be(b.port))
        }))
    }

    /// Swaps in a new selection for a service: the idle bank is filled, then
    /// the service entry flips to it in one update, so a packet reads either
    /// the whole old table or the whole new one.
    pub fn set_selection(&mut self, service: &ServiceAddr, selection: &Selection) -> Result<()> {
        let key = service.key();
        let current = self
            .services
            .get(&key, 0)
            .with_context(|| format!("service {service:?} is not in the data plane"))?;
        if let Some(region) = selection.slots().iter().find(|&&r| r != NO_REGION && r as u32 >= MAX_REGIONS) {
            bail!("selection names region {region}; ids are 0..{MAX_REGIONS}");
        }
        if let Some(at) = self.flipped_at.get(&current.id) {
            if let Some(wait) = BANK_REUSE_GRACE.checked_sub(at.elapsed()) {
                thread::sleep(wait);
            }
        }
        let next = Service {
            id: current.id,
            bank: current.bank ^ 1,
        };
        self.selection
            .set(next.selection_index(), selection.0.as_ref(), 0)?;
        self.services.insert(key, next, 0)?;
        self.flipped_at.insert(current.id, Instant::now());
        Ok(())
    }

    /// The live selection table of a service.
    pub fn selection(&self, service: &ServiceAddr) -> Result<Selection> {
        let current = self.services.get(&service.key(), 0)?;
        Ok(Selection(Box::new(
            self.selection.get(&current.selection_index(), 0)?,
        )))
    }

    pub fn set_region_state(&mut self, region: u8, state: RegionState) -> Result<()> {
        check_region_id(region)?;
        let value = Region {
            state: state as u8,
            _pad: [0; 7],
        };
        self.regions.set(region as u32, value, 0)?;
        Ok(())
    }

    pub fn region_state(&self, region: u8) -> Result<RegionState> {
        check_region_id(region)?;
        let r = self.regions.get(&(region as u32), 0)?;
        RegionState::from_u8(r.state).ok_or_else(|| anyhow!("region {region}: bad state {}", r.state))
    }

    pub fn stats(&self) -> Result<Stats> {
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
            let per_cpu = self.reasons.get(&(reason as u32), 0)?;
            reasons.push((reason, per_cpu.iter().sum()));
        }
        Ok(Stats {
            regions,
            services,
            reasons,
        })
    }

    /// Every entry of the flow table, both directions.
    pub fn flows(&self) -> Result<Vec<(FlowKey, Flow)>> {
        self.flows.entries()
    }

    /// Overwrites a flow entry (tests age entries with it).
    pub fn set_flow(&mut self, key: &FlowKey, flow: &Flow) -> Result<()> {
        self.flows.set(key, flow)
    }

    /// A second handle on the flow table, for a sweep on another thread.
    pub fn flow_table(&self) -> Result<FlowTable> {
        FlowTable::open(&self.pin_path)
    }

    /// Detaches from every pinned interface and removes all pins: the
    /// explicit way to take the data plane down.
    pub fn remove_pins(pin_path: &Path) -> Result<()> {
        for interface in list_link_pins(pin_path)? {
            remove_link_pin(&pin_path.join("links").join(interface))?;
        }
        let _ = fs::remove_dir(pin_path.join("links"));
        for name in map_names::ALL {
            let path = pin_path.join(name);
            if path.exists() {
                fs::remove_file(&path).with_context(|| format!("unpinning {}", path.display()))?;
            }
        }
        if pin_path.exists() {
            fs::remove_dir(pin_path).with_context(|| format!("removing {}", pin_path.display()))?;
        }
        Ok(())
    }
}

/// Loads an XDP program into the kernel. Verifier runs cut short by a
/// signal (EAGAIN) are run again, as libbpf does; anything else is the
/// kernel refusing the program.
pub fn load_xdp(program: &mut Xdp) -> Result<()> {
    const ATTEMPTS: usize = 5;
    let mut attempt = 1;
    loop {
        match program.load() {
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

fn take_map<T>(ebpf: &mut Ebpf, name: &str) -> Result<T>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| anyhow!("the object has no map {name}"))?;
    T::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
}

fn check_region_id(region: u8) -> Result<()> {
    if region as u32 >= MAX_REGIONS {
        bail!("region id {region} out of range: the data plane holds {MAX_REGIONS} regions");
    }
    Ok(())
}

pub fn ifindex(interface: &str) -> Result<u32> {
    let name = CString::new(interface).context("interface name with a NUL byte")?;
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => bail!("no interface named {interface:?}"),
        index => Ok(index),
    }
}

fn list_link_pins(pin_path: &Path) -> Result<Vec<String>> {
    let dir = pin_path.join("links");
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut names = Vec::new();
    for entry in fs::read_dir(&dir)? {
        names.push(entry?.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

/// Unpinning drops bpffs's reference; the link (and so the XDP attachment)
/// goes when no process holds it either.
fn remove_link_pin(pin: &Path) -> Result<()> {
    if pin.exists() {
        let link = PinnedLink::from_pin(pin)
            .with_context(|| format!("opening the pinned link {}", pin.display()))?;
        drop(link.unpin()?);
    }
    Ok(())
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    unsafe { libc::statfs(c_path.as_ptr(), &mut stat) == 0 && stat.f_type as i64 == BPF_FS_MAGIC }
}

/// Mounts bpffs at /sys/fs/bpf when it is not mounted (a new machine), and
/// creates the pin directory, which must be on bpffs.
fn ensure_bpffs(pin_path: &Path) -> Result<()> {
    let mount = Path::new(BPFFS_MOUNT);
    if pin_path.starts_with(mount) && !is_bpffs(mount) {
        let source = CString::new("bpf").unwrap();
        let target = CString::new(BPFFS_MOUNT).unwrap();
        let rc = unsafe {
            libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                source.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            bail!(
                "mounting bpffs at {BPFFS_MOUNT}: {} (root needed)",
                std::io::Error::last_os_error()
            );
        }
    }
    fs::create_dir_all(pin_path)
        .with_context(|| format!("creating the pin directory {}", pin_path.display()))?;
    if !is_bpffs(pin_path) {
        bail!(
            "pin path {} is not on a bpffs (mount one: mount -t bpf bpf DIR)",
            pin_path.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(id: u32, port: u16) -> ServiceSpec {
        ServiceSpec {
            id,
            addr: ServiceAddr {
                vip: Ipv4Addr::new(10, 2, 0, 2),
                port,
                protocol: Protocol::Tcp,
            },
            backends: [(1, SocketAddrV4::new(Ipv4Addr::new(10, 1, 0, 2), 80))].into(),
        }
    }

    fn refused(services: &[ServiceSpec]) -> String {
        format!("{:#}", Dataplane::check_services(services).unwrap_err())
    }

    #[test]
    fn accepts_what_it_can_hold() {
        let all: Vec<_> = (0..MAX_SERVICES).map(|i| service(i, 1000 + i as u16)).collect();
        Dataplane::check_services(&all).unwrap();
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
        assert!(refused(&[service(1, 80), service(2, 80)]).contains("two services"));
        let mut far = service(0, 80);
        far.backends.insert(MAX_REGIONS as u8, SocketAddrV4::new(Ipv4Addr::new(10, 9, 0, 2), 80));
        assert!(refused(&[far]).contains("region id 32 out of range"));
        let mut ping = service(0, 7);
        ping.addr.protocol = Protocol::Icmp;
        assert!(refused(&[ping]).contains("ICMP service has no port"));
    }

    #[test]
    fn selection_tables_must_be_whole() {
        assert!(Selection::from_slots(&[1, 2, 3]).is_err());
        assert_eq!(Selection::all(3).slots().len(), SELECTION_SLOTS);
        assert!(Selection::nowhere().slots().iter().all(|&r| r == NO_REGION));
    }
}
