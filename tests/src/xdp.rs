//! A gateway in a namespace for in-kernel packet tests and the ns/packet
//! benchmark: the real data plane, loaded and attached, fed crafted frames
//! through BPF_PROG_TEST_RUN.
//!
//! Links (each a veth whose peer stays down-stream in the same namespace):
//!   cli  192.0.2.1/24 2001:db8::1/64  client 192.0.2.10, 2001:db8::10; region 5
//!                                     (192.0.2.50, 2001:db8::50) on the same link (XDP_TX)
//!   r1   10.1.0.1/24  fd00:1::1/64    region 1, 10.1.0.2, fd00:1::2
//!   r2   10.2.0.1/24  fd00:2::1/64    region 2, 10.2.0.2, fd00:2::2 (also the VIPs of `web`
//!                                     and `web6`, as in the reference setup)
//!   r3   10.3.0.1/24  fd00:3::1/64    region 3, 10.3.0.2, fd00:3::2, neighbour never resolved
//!   r4   10.4.0.1/24  fd00:4::1/64    region 4, 10.4.0.2, fd00:4::2, interface not attached
//!                                     (no devmap entry)
//!
//! Every fixture service has an IPv6 twin (ids 4-7) on the IPv6 VIPs.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use aya::{
    programs::{ProgramError, TestRun, TestRunOptions, Xdp},
    sys::SyscallError,
};
use redirector::{
    config::{Protocol, ServiceAddr},
    dataplane::{self, BpfDataplane, Dataplane, LoadOptions, Selection, ServiceSpec},
};
use redirector_common::RegionState;

use crate::{
    frames::Mac,
    netns::{require_root, unique_name, Netns, NetnsGuard},
};

pub const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
pub const CLIENT_MAC: Mac = [0x02, 0xc1, 0, 0, 0, 0x10];
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 2);
pub const VIP2: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// Region 2's IPv6 address, as VIP is its IPv4 one.
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 2);
pub const VIP6_2: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 1);

/// The client's address of `vip`'s family.
pub fn client_of(vip: IpAddr) -> IpAddr {
    match vip {
        IpAddr::V4(_) => CLIENT.into(),
        IpAddr::V6(_) => CLIENT6.into(),
    }
}

/// A region of the fixture: id, address, the MAC of its host, the gateway
/// interface toward it and that interface's MAC.
#[derive(Clone, Copy, Debug)]
pub struct RegionLink {
    pub id: u8,
    pub addr: Ipv4Addr,
    pub addr6: Ipv6Addr,
    pub mac: Mac,
    pub iface: &'static str,
    pub iface_mac: Mac,
}

pub const CLI_MAC: Mac = [0x02, 0x9a, 0, 0, 0, 0x01];
pub const R1: RegionLink = region(1, [10, 1, 0, 2], "r1");
pub const R2: RegionLink = region(2, [10, 2, 0, 2], "r2");
pub const R3: RegionLink = region(3, [10, 3, 0, 2], "r3");
pub const R4: RegionLink = region(4, [10, 4, 0, 2], "r4");
pub const R5: RegionLink = RegionLink {
    id: 5,
    addr: Ipv4Addr::new(192, 0, 2, 50),
    addr6: Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x50),
    mac: [0x02, 0xbb, 0, 0, 0, 5],
    iface: "cli",
    iface_mac: CLI_MAC,
};
pub const REGIONS: [RegionLink; 5] = [R1, R2, R3, R4, R5];

const fn region(id: u8, addr: [u8; 4], iface: &'static str) -> RegionLink {
    RegionLink {
        id,
        addr: Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]),
        addr6: Ipv6Addr::new(0xfd00, id as u16, 0, 0, 0, 0, 0, 2),
        mac: [0x02, 0xbb, 0, 0, 0, id],
        iface,
        iface_mac: [0x02, 0x9a, 0, 0, 0, 0x10 + id],
    }
}

impl RegionLink {
    /// The region's address of `like`'s family.
    pub fn addr_of(&self, like: IpAddr) -> IpAddr {
        match like {
            IpAddr::V4(_) => self.addr.into(),
            IpAddr::V6(_) => self.addr6.into(),
        }
    }
}

/// Services of the fixture.
pub const WEB: ServiceAddr = ServiceAddr {
    vip: IpAddr::V4(VIP),
    port: 80,
    protocol: Protocol::Tcp,
};
/// Regions serve it on 8081: the port is rewritten too.
pub const ALT: ServiceAddr = ServiceAddr {
    vip: IpAddr::V4(VIP2),
    port: 8080,
    protocol: Protocol::Tcp,
};
pub const DNS: ServiceAddr = ServiceAddr {
    vip: IpAddr::V4(VIP2),
    port: 53,
    protocol: Protocol::Udp,
};
pub const PING: ServiceAddr = ServiceAddr {
    vip: IpAddr::V4(VIP2),
    port: 0,
    protocol: Protocol::Icmp,
};

/// The VIP of an IPv4 fixture service.
pub fn vip4(service: &ServiceAddr) -> Ipv4Addr {
    match service.vip {
        IpAddr::V4(vip) => vip,
        IpAddr::V6(vip) => panic!("{vip}: an IPv6 service where the fixture wants IPv4"),
    }
}

pub const WEB6: ServiceAddr = ServiceAddr { vip: IpAddr::V6(VIP6), ..WEB };
pub const ALT6: ServiceAddr = ServiceAddr { vip: IpAddr::V6(VIP6_2), ..ALT };
pub const DNS6: ServiceAddr = ServiceAddr { vip: IpAddr::V6(VIP6_2), ..DNS };
pub const PING6: ServiceAddr = ServiceAddr { vip: IpAddr::V6(VIP6_2), ..PING };
/// Every fixture service; its position is its id.
pub const SERVICES: [ServiceAddr; 8] = [WEB, ALT, DNS, PING, WEB6, ALT6, DNS6, PING6];

/// Where each fixture service is served: the same port, except ALT and DNS.
pub fn backend_port(service: &ServiceAddr) -> u16 {
    match service.port {
        8080 => 8081,
        53 => 5353,
        port => port,
    }
}

pub struct Outcome {
    pub action: u32,
    pub frame: Vec<u8>,
}

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

/// Removes a pin directory and all it holds on drop, so a test that fails
/// half-way through setting up leaves nothing on bpffs either.
pub struct PinDir(pub PathBuf);

impl PinDir {
    pub fn unique() -> Self {
        Self(PathBuf::from(redirector::config::DEFAULT_PIN_PATH).with_file_name(unique_name("redirector-test")))
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if let Err(e) = dataplane::remove_pins(&self.0) {
            eprintln!("cleaning up {}: {e:#}", self.0.display());
        }
    }
}

pub struct Gateway {
    // Field order is drop order: the program lets go of its links, the pins
    // go, then we leave the namespace and delete it.
    pub dataplane: BpfDataplane,
    ifindexes: BTreeMap<&'static str, u32>,
    pins: PinDir,
    _inside: NetnsGuard,
    _ns: Netns,
}

impl Gateway {
    /// Builds the namespace, loads and attaches the data plane, installs
    /// the four services with every region up and selection nowhere.
    pub fn new() -> Result<Self> {
        Self::with_flow_event_log(false)
    }

    pub fn with_flow_event_log(log_flow_events: bool) -> Result<Self> {
        Self::with_options(LoadOptions { log_flow_events, ..LoadOptions::default() })
    }

    /// Announcing flows to the flow sync (`FLOW_EVENTS`).
    pub fn with_sync_events() -> Result<Self> {
        Self::with_options(LoadOptions { sync_flow_events: true, ..LoadOptions::default() })
    }

    /// Telling the controller of refused SYNs (`REGION_SIGNALS`).
    pub fn with_passive_detection() -> Result<Self> {
        Self::with_options(LoadOptions { passive_detection: true, ..LoadOptions::default() })
    }

    /// With flow tables of `flow_table_size` entries (new flows': a
    /// quarter of it).
    pub fn with_flow_table_size(flow_table_size: u32) -> Result<Self> {
        Self::with_options(LoadOptions { flow_table_size, ..LoadOptions::default() })
    }

    /// `options.pin_path` is replaced by a directory of the gateway's own.
    fn with_options(options: LoadOptions) -> Result<Self> {
        Self::loaded_into(PinDir::unique(), options)
    }

    /// Loaded into `pins`, where a test may have pinned maps as an earlier
    /// data plane would have left them.
    pub fn adopting(pins: PinDir) -> Result<Self> {
        Self::loaded_into(pins, LoadOptions::default())
    }

    fn loaded_into(pins: PinDir, options: LoadOptions) -> Result<Self> {
        require_root();
        let ns = Netns::new(&unique_name("rdt-pkt"))?;
        ns.sysctl("net.ipv4.ip_forward", "1")?;
        ns.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        ns.sysctl("net.ipv6.conf.default.forwarding", "1")?;
        // IPv6 on the gateway's own ends only: the peers' IPv6 chatter
        // (router solicitations, MLD, DAD) would reach the program between
        // a test's counter readings.
        ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
        ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
        let links = [("cli", "192.0.2.1/24", "2001:db8::1/64".to_string(), CLI_MAC)]
            .into_iter()
            .chain(
                REGIONS[..4]
                    .iter()
                    .map(|r| (r.iface, gateway_cidr(r.addr), gateway_cidr6(r.addr6), r.iface_mac)),
            );
        for (iface, cidr, cidr6, mac) in links {
            let peer = format!("{iface}-p");
            ns.ip(&["link", "add", iface, "type", "veth", "peer", "name", &peer])?;
            ns.sysctl(&format!("net.ipv6.conf.{iface}.disable_ipv6"), "0")?;
            ns.ip(&["link", "set", iface, "address", &mac_str(&mac), "up"])?;
            ns.ip(&["link", "set", &peer, "up"])?;
            ns.ip(&["addr", "add", cidr, "dev", iface])?;
            ns.ip(&["addr", "add", &cidr6, "dev", iface, "nodad"])?;
        }
        let neighbours = [(CLIENT.into(), CLIENT_MAC, "cli"), (CLIENT6.into(), CLIENT_MAC, "cli")]
            .into_iter()
            .chain([R1, R2, R4, R5].iter().flat_map(|r| {
                [(IpAddr::from(r.addr), r.mac, r.iface), (IpAddr::from(r.addr6), r.mac, r.iface)]
            }));
        for (addr, mac, iface) in neighbours {
            let (addr, mac) = (addr.to_string(), mac_str(&mac));
            ns.ip(&["neigh", "replace", &addr, "lladdr", &mac, "dev", iface, "nud", "permanent"])?;
        }

        let inside = ns.enter()?;
        let mut dataplane = BpfDataplane::load(&LoadOptions { pin_path: pins.0.clone(), ..options })?;
        for iface in ["cli", "r1", "r2", "r3"] {
            dataplane.attach(iface)?;
        }
        let services: Vec<ServiceSpec> = SERVICES
            .iter()
            .enumerate()
            .map(|(id, addr)| ServiceSpec {
                id: id as u32,
                addr: *addr,
                backends: REGIONS
                    .iter()
                    .map(|r| (r.id, SocketAddr::new(r.addr_of(addr.vip), backend_port(addr))))
                    .collect(),
            })
            .collect();
        dataplane.set_services(&services)?;
        for r in REGIONS {
            dataplane.set_region_state(r.id, RegionState::Up)?;
        }
        let mut ifindexes = BTreeMap::new();
        for iface in ["cli", "r1", "r2", "r3", "r4"] {
            ifindexes.insert(iface, dataplane::ifindex(iface)?);
        }
        Ok(Self {
            dataplane,
            ifindexes,
            pins,
            _inside: inside,
            _ns: ns,
        })
    }

    /// New flows of every fixture service go to `region`.
    pub fn select(&mut self, region: u8) -> Result<()> {
        for service in SERVICES {
            self.dataplane.set_selection(&service, &Selection::all(region))?;
        }
        Ok(())
    }

    /// Where the gateway's data plane is pinned.
    pub fn pins(&self) -> &std::path::Path {
        &self.pins.0
    }

    /// The ring buffer `name` as a reader other than the loader opens it:
    /// by its pin (it is pinned with the rest whether or not the loader
    /// reads it).
    pub fn pinned_ring(&self, name: &str) -> Result<aya::maps::RingBuf<aya::maps::MapData>> {
        let pinned = aya::maps::MapData::from_pin(self.pins().join(name))?;
        Ok(aya::maps::RingBuf::try_from(aya::maps::Map::RingBuf(pinned))?)
    }

    pub fn ifindex(&self, iface: &str) -> u32 {
        self.ifindexes[iface]
    }

    /// Runs the program once on `frame` as if it arrived on `iface`.
    pub fn run(&self, frame: &[u8], iface: &str) -> Result<Outcome> {
        let (action, frame, _) = self.run_repeat(frame, iface, 1)?;
        Ok(Outcome { action, frame })
    }

    /// Runs the program `repeat` times; see [`test_run`].
    pub fn run_repeat(&self, frame: &[u8], iface: &str, repeat: u32) -> Result<(u32, Vec<u8>, Duration)> {
        test_run(self.dataplane.program(), frame, self.ifindex(iface), repeat)
    }
}

/// Runs `program` `repeat` times on `frame` arriving on `ifindex`; returns
/// the action, the frame after the last run and the kernel's mean time per
/// run. A run the kernel cuts short is run again.
pub fn test_run(program: &Xdp, frame: &[u8], ifindex: u32, repeat: u32) -> Result<(u32, Vec<u8>, Duration)> {
    let ctx = xdp_md(frame.len(), ifindex);
    let mut out = vec![0u8; frame.len() + 256];
    let mut attempts = 0;
    let result = loop {
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        opts.ctx_in = Some(&ctx);
        opts.repeat = repeat;
        match program.test_run(opts) {
            Err(e) if interrupted(&e) && attempts < 10 => attempts += 1,
            result => break result.context("BPF_PROG_TEST_RUN")?,
        }
    };
    if result.data_size_out as usize > out.len() {
        bail!("program grew the frame to {} bytes", result.data_size_out);
    }
    out.truncate(result.data_size_out as usize);
    Ok((result.return_value, out, result.duration))
}

/// Whether a test run failed only because it was cut short: the kernel ends
/// a run of many repeats when a signal is pending for the thread (a stop and
/// continue, the machine being frozen), and it may simply run again.
pub fn interrupted(e: &ProgramError) -> bool {
    matches!(e, ProgramError::SyscallError(SyscallError { io_error, .. })
        if io_error.kind() == std::io::ErrorKind::Interrupted)
}

/// struct xdp_md for ctx_in: data 0, data_end = frame length, the ingress
/// interface, rx queue 0. The kernel refuses anything else for test runs.
pub fn xdp_md(len: usize, ingress_ifindex: u32) -> Vec<u8> {
    [0u32, len as u32, 0, ingress_ifindex, 0, 0]
        .iter()
        .flat_map(|w| w.to_ne_bytes())
        .collect()
}

fn gateway_cidr(region: Ipv4Addr) -> &'static str {
    match region.octets()[1] {
        1 => "10.1.0.1/24",
        2 => "10.2.0.1/24",
        3 => "10.3.0.1/24",
        _ => "10.4.0.1/24",
    }
}

/// The gateway's end of a region's IPv6 /64: `fd00:N::1`.
fn gateway_cidr6(region: Ipv6Addr) -> String {
    let mut segments = region.segments();
    segments[7] = 1;
    format!("{}/64", Ipv6Addr::from(segments))
}

pub fn mac_str(mac: &Mac) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Every record of type `T` the ring holds now (each must be exactly one).
pub fn drain_ring<T: aya::Pod>(ring: &mut aya::maps::RingBuf<aya::maps::MapData>) -> Vec<T> {
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        out.push(redirector::dataplane::ring_record(&item).expect("a record of another size"));
    }
    out
}
