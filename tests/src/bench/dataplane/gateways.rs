//! The six gateway implementations, each set up on a fresh topology
//! (client → gateway → one region) and torn down when dropped.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use anyhow::{ensure, Context, Result};
use aya::Ebpf;
use redirector::{
    config::{ServiceAddr, XdpMode},
    dataplane::{AttachMode, BpfDataplane, Dataplane, LoadOptions, Selection, ServiceSpec},
};
use redirector_common::RegionState;

use super::{ovs, PORTS};
use crate::{
    baseline,
    frames::Mac,
    netns::Netns,
    topology::{Topology, CLIENT_IFACE, GATEWAY_CLIENT_SIDE},
    xdp::{mac_str, PinDir},
};

/// The address clients use for the service in A, B and C (TEST-NET-2: no
/// interface has it; the client's default route leads to the gateway).
pub const VIP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// The IPv6 VIP of A and C, from the documentation prefix for the same
/// reason.
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 1);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Variant {
    Redirector,
    Ovs,
    Nat,
    Routing,
    BareXdp,
    RedirectorGeneric,
}

impl Variant {
    pub const ALL: [Variant; 6] =
        [Self::Redirector, Self::Ovs, Self::Nat, Self::Routing, Self::BareXdp, Self::RedirectorGeneric];

    pub fn letter(self) -> &'static str {
        ["A", "B", "C", "D", "E", "F"][self as usize]
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Redirector => "redirector (XDP, native)",
            Self::Ovs => "Open vSwitch, userspace datapath, reference flows",
            Self::Nat => "nftables DNAT + conntrack",
            Self::Routing => "kernel routing, no rewrite",
            Self::BareXdp => "bare XDP forward (FIB + redirect)",
            Self::RedirectorGeneric => "redirector (XDP, generic mode: drivers without XDP)",
        }
    }

    pub fn short(self) -> &'static str {
        ["A redirector", "B OVS", "C nftables NAT", "D routing", "E bare XDP", "F redirector generic"][self as usize]
    }
}

/// A gateway in place; what it loaded or started goes when it drops.
pub struct Gateway {
    /// Where clients send: the VIP or the region's address.
    pub target: Ipv4Addr,
    /// The same over IPv6, for the variants that have it.
    pub target6: Option<IpAddr>,
    /// The MAC the client sends its frames to.
    pub next_hop_mac: Mac,
    state: State,
}

enum State {
    Redirector { _dataplane: Box<BpfDataplane>, _pins: PinDir },
    Ovs(ovs::Switch),
    Nothing,
    Xdp { _program: Ebpf },
}

/// The MAC the client believes the VIP's next hop has in B: the switch
/// passes frames on with no router behind it, as in the reference's flat
/// network where the VIP was a server's own address and MAC.
const OVS_VIP_MAC: Mac = [0x02, 0x00, 0x5e, 0x00, 0x00, 0x01];

impl Gateway {
    pub fn set_up(variant: Variant, topo: &Topology) -> Result<Self> {
        let region = &topo.regions[0];
        let gateway_mac = link_mac(&topo.gateway, CLIENT_IFACE)?;
        let region6 = IpAddr::V6(region.addr6.context("a single gateway's regions are dual-stack")?);
        let vip6 = Some(IpAddr::V6(VIP6));
        // Over IPv6 too: ours and the two kernel paths an operator would
        // compare it with. B's reference flows and E's forward match IPv4
        // only; F is A's program again.
        let (state, target, target6, next_hop_mac) = match variant {
            Variant::Redirector => (redirector(topo, XdpMode::Native)?, VIP, vip6, gateway_mac),
            Variant::RedirectorGeneric => (redirector(topo, XdpMode::Generic)?, VIP, None, gateway_mac),
            Variant::Ovs => (State::Ovs(open_vswitch(topo)?), VIP, None, OVS_VIP_MAC),
            Variant::Nat => {
                nat(topo)?;
                (State::Nothing, VIP, vip6, gateway_mac)
            }
            Variant::Routing => (State::Nothing, region.addr, Some(region6), gateway_mac),
            Variant::BareXdp => {
                let _inside = topo.gateway.enter()?;
                let ebpf = baseline::attach("bare_forward", &[CLIENT_IFACE, &region.gateway_iface])?;
                (State::Xdp { _program: ebpf }, region.addr, None, gateway_mac)
            }
        };
        Ok(Self {
            target,
            target6,
            next_hop_mac,
            state,
        })
    }

    /// Processes doing the gateway's work besides the kernel: Open
    /// vSwitch's daemons.
    pub fn processes(&self) -> Vec<u32> {
        match &self.state {
            State::Ovs(switch) => switch.pids(),
            _ => Vec::new(),
        }
    }

    /// OpenFlow rules with packet counts, for a diagnosis when B forwarded
    /// nothing.
    pub fn diagnosis(&self) -> String {
        match &self.state {
            State::Ovs(switch) => switch.dump_flows().unwrap_or_else(|e| format!("{e:#}")),
            _ => String::new(),
        }
    }
}

/// A and F: the data plane on both gateway interfaces (in the driver, or
/// generic as on a NIC without XDP), one service per port the benchmark
/// uses, all steered to the region.
fn redirector(topo: &Topology, xdp_mode: XdpMode) -> Result<State> {
    let region = &topo.regions[0];
    let pins = PinDir::unique();
    let _inside = topo.gateway.enter()?;
    let mut dataplane = BpfDataplane::load(&LoadOptions {
        pin_path: pins.0.clone(),
        xdp_mode,
        ..LoadOptions::default()
    })?;
    let expected = if xdp_mode == XdpMode::Generic { AttachMode::Generic } else { AttachMode::Native };
    for iface in topo.gateway_interfaces() {
        let mode = dataplane.attach(&iface)?;
        ensure!(mode == expected, "{iface}: attached in {mode:?} mode, not {expected:?}");
    }
    let region6 = region.addr6.context("a single gateway's regions are dual-stack")?;
    let families = [(IpAddr::V4(VIP), IpAddr::V4(region.addr)), (IpAddr::V6(VIP6), IpAddr::V6(region6))];
    let services: Vec<ServiceSpec> = families
        .iter()
        .flat_map(|family| PORTS.iter().map(move |port| (family, port)))
        .enumerate()
        .map(|(id, (&(vip, backend), &(protocol, port)))| ServiceSpec {
            id: id as u32,
            addr: ServiceAddr { vip, port, protocol },
            backends: [(1, SocketAddr::new(backend, port))].into(),
        })
        .collect();
    dataplane.set_services(&services)?;
    dataplane.set_region_state(1, RegionState::Up)?;
    for service in &services {
        dataplane.set_selection(&service.addr, &Selection::all(1))?;
    }
    Ok(State::Redirector {
        _dataplane: Box::new(dataplane),
        _pins: pins,
    })
}

/// B: the gateway's interfaces become switch ports with no address (the
/// kernel neither routes nor answers there), and the reference's two
/// flows: toward the region, eth_dst and ip_dst set to the region's; back,
/// eth_src and ip_src set to the VIP's. Both ends find their next hop in
/// a static neighbour entry, as the reference's hosts found each other on
/// one LAN.
fn open_vswitch(topo: &Topology) -> Result<ovs::Switch> {
    let region = &topo.regions[0];
    let ports = [CLIENT_IFACE, region.gateway_iface.as_str()];
    topo.gateway.sysctl("net.ipv4.ip_forward", "0")?;
    for port in ports {
        topo.gateway.ip(&["addr", "flush", "dev", port])?;
        // A userspace switch forwards frames as they are: partial checksums
        // a socket leaves for the veth to finish would arrive unfinished,
        // and GRO's aggregates whole, too big for the other side.
        topo.gateway.exec("ethtool", &["-K", port, "tx", "off", "rx", "off", "gro", "off"])?;
    }
    let client_mac = link_mac(&topo.client, "eth0")?;
    let region_mac = link_mac(&region.ns, "eth0")?;
    static_neighbour(&topo.client, GATEWAY_CLIENT_SIDE, &OVS_VIP_MAC)?;
    static_neighbour(&region.ns, Ipv4Addr::new(10, 1, 0, 1), &client_mac)?;
    let switch = ovs::Switch::start(&topo.gateway, &ports)?;
    let (to_region, to_client) = (2, 1);
    switch.add_flows(&[
        format!(
            "priority=100,ip,in_port={to_client},nw_dst={VIP},actions=set_field:{}->eth_dst,set_field:{}->ip_dst,output:{to_region}",
            mac_str(&region_mac),
            region.addr
        ),
        format!(
            "priority=100,ip,in_port={to_region},nw_src={},actions=set_field:{}->eth_src,set_field:{VIP}->ip_src,output:{to_client}",
            region.addr,
            mac_str(&OVS_VIP_MAC)
        ),
    ])?;
    Ok(switch)
}

/// C: what a Linux admin would do: DNAT of the VIP to the region, in an
/// `ip` table and the same in an `ip6` one; the region routes its replies
/// back through the gateway, so conntrack's reverse translation gives them
/// the VIP as source, and no SNAT is needed (as with A and B, the region
/// sees the client's own address).
fn nat(topo: &Topology) -> Result<()> {
    let region = &topo.regions[0];
    let region6 = region.addr6.context("a single gateway's regions are dual-stack")?;
    let nft = |args: &[&str]| topo.gateway.exec("nft", args).context("setting up the NAT rules");
    for (family, vip, to) in [("ip", IpAddr::V4(VIP), IpAddr::V4(region.addr)), ("ip6", VIP6.into(), region6.into())] {
        nft(&["add", "table", family, "bench_nat"])?;
        nft(&[
            "add", "chain", family, "bench_nat", "prerouting",
            "{ type nat hook prerouting priority dstnat; policy accept; }",
        ])?;
        let dnat = format!("{family} daddr {vip} dnat to {to}");
        nft(&["add", "rule", family, "bench_nat", "prerouting", &dnat])?;
    }
    Ok(())
}

fn static_neighbour(ns: &Netns, addr: Ipv4Addr, mac: &Mac) -> Result<()> {
    ns.ip(&["neigh", "replace", &addr.to_string(), "lladdr", &mac_str(mac), "dev", "eth0", "nud", "permanent"])?;
    Ok(())
}

/// The MAC of `iface` in `ns`.
pub fn link_mac(ns: &Netns, iface: &str) -> Result<Mac> {
    let out = ns.ip(&["-j", "link", "show", "dev", iface])?;
    let links: serde_json::Value = serde_json::from_str(&out)?;
    let text = links[0]["address"]
        .as_str()
        .with_context(|| format!("no MAC for {iface} in {out}"))?;
    let mut mac = [0u8; 6];
    for (byte, part) in mac.iter_mut().zip(text.split(':')) {
        *byte = u8::from_str_radix(part, 16)?;
    }
    Ok(mac)
}
