//! The one topology builder of the project: the lab, the end-to-end tests and
//! the benchmarks all stand on it.
//!
//! ```text
//!   client ns                gateway ns                      region ns (i = 1..n)
//!   eth0 10.0.0.2/24 ── veth-client 10.0.0.1/24
//!        fd00::2/64                 fd00::1/64
//!                           veth-r<i>  10.<i>.0.1/24 ─────── eth0 10.<i>.0.2/24
//!                                      fd00:<i>::1/64             fd00:<i>::2/64
//! ```
//!
//! Every link of a single gateway is dual-stack (duplicate address
//! detection off: the addresses are usable at once).
//!
//! A gateway pair ([`Topology::build_pair`]) puts two gateways on each
//! segment, through a bridge in a switch namespace, and links them for
//! the flow sync:
//!
//! ```text
//!   client ns        switch ns (br0, br<i>)      gateway A ns (gw)        gateway B ns (gw2)
//!   eth0 10.0.0.2 ── br0 ─┬─ veth-client 10.0.0.11   veth-client 10.0.0.12
//!                         └──────────────────────────────────────┘
//!   region i eth0 ── br<i> ─ veth-r<i> 10.<i>.0.11     veth-r<i> 10.<i>.0.12
//!                            veth-sync 10.255.0.1 ──── veth-sync 10.255.0.2
//! ```
//!
//! The addresses clients and regions route through (10.0.0.1, 10.<i>.0.1)
//! are the pair's shared ones: held by whichever gateway is master (VRRP),
//! or given to one with [`Topology::hold_shared`].
//!
//! Endpoints send full checksums (tx offload off), as frames on a real wire
//! do: a namespace's socket otherwise hands veth partial checksums that only
//! the kernel's own path would complete. Endpoints run GRO so their veth
//! takes frames the gateway's XDP program redirects to them.

use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::Result;

use crate::netns::{run, Netns};

pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
pub const GATEWAY_CLIENT_SIDE: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
pub const CLIENT_IFACE: &str = "veth-client";
pub const CLIENT_ADDR6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
pub const GATEWAY_CLIENT_SIDE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);

pub struct Region {
    /// "region1", "region2", ...
    pub name: String,
    pub ns: Netns,
    pub addr: Ipv4Addr,
    /// Its IPv6 address; a gateway pair's regions have none.
    pub addr6: Option<Ipv6Addr>,
    /// The gateway's interface toward this region.
    pub gateway_iface: String,
}

/// A gateway pair's flow-sync link: gateway A's end, gateway B's end.
pub const SYNC_A: Ipv4Addr = Ipv4Addr::new(10, 255, 0, 1);
pub const SYNC_B: Ipv4Addr = Ipv4Addr::new(10, 255, 0, 2);
pub const SYNC_IFACE: &str = "veth-sync";

pub struct Topology {
    pub client: Netns,
    /// The gateway; gateway A of a pair.
    pub gateway: Netns,
    pub regions: Vec<Region>,
    /// Gateway B of a pair.
    pub peer: Option<Netns>,
    /// A pair's bridges; dropped (deleted) after the namespaces it links.
    _switch: Option<Netns>,
}

impl Topology {
    /// Builds the namespaces `<prefix>-client`, `<prefix>-gw` and
    /// `<prefix>-r1..rN`, replacing any left by an earlier run.
    pub fn build(prefix: &str, regions: u8) -> Result<Self> {
        let client = no_dad(Netns::new(&format!("{prefix}-client"))?)?;
        let gateway = no_dad(Netns::new(&format!("{prefix}-gw"))?)?;
        gateway.sysctl("net.ipv4.ip_forward", "1")?;
        // Replies leave toward the client with the VIP as source, which the
        // reverse-path filter of a stricter host would judge spoofed.
        gateway.sysctl("net.ipv4.conf.all.rp_filter", "0")?;
        gateway.sysctl("net.ipv4.conf.default.rp_filter", "0")?;
        gateway.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        let client_side = Ends { gateway: GATEWAY_CLIENT_SIDE, endpoint: CLIENT_ADDR, gateway6: GATEWAY_CLIENT_SIDE6, endpoint6: CLIENT_ADDR6 };
        link(&gateway, CLIENT_IFACE, &client, &client_side)?;

        let mut built = Vec::new();
        for i in 1..=regions {
            let ns = no_dad(Netns::new(&format!("{prefix}-r{i}"))?)?;
            let gateway_iface = format!("veth-r{i}");
            let ends = Ends {
                gateway: Ipv4Addr::new(10, i, 0, 1),
                endpoint: region_addr(i),
                gateway6: Ipv6Addr::new(0xfd00, i.into(), 0, 0, 0, 0, 0, 1),
                endpoint6: region_addr6(i),
            };
            link(&gateway, &gateway_iface, &ns, &ends)?;
            built.push(Region {
                name: format!("region{i}"),
                ns,
                addr: ends.endpoint,
                addr6: Some(ends.endpoint6),
                gateway_iface,
            });
        }
        Ok(Self {
            client,
            gateway,
            regions: built,
            peer: None,
            _switch: None,
        })
    }

    /// Two gateways (`<prefix>-gw`, `<prefix>-gw2`) on every segment,
    /// through bridges in `<prefix>-sw`, and a link between them for the
    /// flow sync. Nobody holds the shared addresses yet.
    pub fn build_pair(prefix: &str, regions: u8) -> Result<Self> {
        let switch = Netns::new(&format!("{prefix}-sw"))?;
        let client = Netns::new(&format!("{prefix}-client"))?;
        let gateway = Netns::new(&format!("{prefix}-gw"))?;
        let peer = Netns::new(&format!("{prefix}-gw2"))?;
        for gw in [&gateway, &peer] {
            gw.sysctl("net.ipv4.ip_forward", "1")?;
            gw.sysctl("net.ipv4.conf.all.rp_filter", "0")?;
            gw.sysctl("net.ipv4.conf.default.rp_filter", "0")?;
        }
        let mut segments = vec![("br0".to_string(), &client, CLIENT_IFACE.to_string(), CLIENT_ADDR, Ipv4Addr::new(10, 0, 0, 0))];
        let mut built = Vec::new();
        for i in 1..=regions {
            built.push(Region {
                name: format!("region{i}"),
                ns: Netns::new(&format!("{prefix}-r{i}"))?,
                addr: region_addr(i),
                addr6: None,
                gateway_iface: format!("veth-r{i}"),
            });
        }
        for (i, region) in built.iter().enumerate() {
            let n = i as u8 + 1;
            segments.push((format!("br{n}"), &region.ns, region.gateway_iface.clone(), region.addr, Ipv4Addr::new(10, n, 0, 0)));
        }
        for (i, (bridge, endpoint, gw_iface, addr, net)) in segments.iter().enumerate() {
            switch.ip(&["link", "add", bridge, "type", "bridge"])?;
            switch.ip(&["link", "set", bridge, "up"])?;
            let [a, b, c, _] = net.octets();
            let host = |last: u8| Ipv4Addr::new(a, b, c, last);
            bridge_port(&switch, bridge, &format!("e{i}"), endpoint, "eth0")?;
            endpoint.ip(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
            endpoint.ip(&["link", "set", "eth0", "up"])?;
            endpoint.ip(&["route", "add", "default", "via", &host(1).to_string()])?;
            endpoint.exec("ethtool", &["-K", "eth0", "tx", "off", "gro", "on"])?;
            for (gw, port, last) in [(&gateway, format!("a{i}"), 11), (&peer, format!("b{i}"), 12)] {
                bridge_port(&switch, bridge, &port, gw, gw_iface)?;
                gw.ip(&["addr", "add", &format!("{}/24", host(last)), "dev", gw_iface])?;
                gw.ip(&["link", "set", gw_iface, "up"])?;
            }
        }
        run(
            "ip",
            &[
                "link", "add", SYNC_IFACE, "netns", gateway.name(), "type", "veth", "peer", "name", SYNC_IFACE,
                "netns", peer.name(),
            ],
        )?;
        for (gw, addr) in [(&gateway, SYNC_A), (&peer, SYNC_B)] {
            gw.ip(&["addr", "add", &format!("{addr}/24"), "dev", SYNC_IFACE])?;
            gw.ip(&["link", "set", SYNC_IFACE, "up"])?;
        }
        Ok(Self { client, gateway, regions: built, peer: Some(peer), _switch: Some(switch) })
    }

    /// The addresses clients and regions route through, each segment's
    /// `.1`, added to `gw` before anyone asked for them: what VRRP gives
    /// its master, for a pair run without it.
    pub fn hold_shared(&self, gw: &Netns) -> Result<()> {
        for (iface, addr) in self.shared_addresses() {
            gw.ip(&["addr", "add", &format!("{addr}/24"), "dev", &iface])?;
        }
        Ok(())
    }

    /// Each segment's shared address and the gateways' interface on it.
    pub fn shared_addresses(&self) -> Vec<(String, Ipv4Addr)> {
        std::iter::once((CLIENT_IFACE.to_string(), GATEWAY_CLIENT_SIDE))
            .chain(self.regions.iter().enumerate().map(|(i, r)| (r.gateway_iface.clone(), Ipv4Addr::new(10, i as u8 + 1, 0, 1))))
            .collect()
    }

    /// The gateway's interfaces, client side first: what XDP attaches to.
    pub fn gateway_interfaces(&self) -> Vec<String> {
        std::iter::once(CLIENT_IFACE.to_string())
            .chain(self.regions.iter().map(|r| r.gateway_iface.clone()))
            .collect()
    }

    pub fn region(&self, name: &str) -> &Region {
        self.regions
            .iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("no region {name} in the topology"))
    }
}

pub fn region_addr(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, i, 0, 2)
}

pub fn region_addr6(i: u8) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, i.into(), 0, 0, 0, 0, 0, 2)
}

/// Turns duplicate address detection off for the interfaces `ns` will
/// get: their link-local addresses would stay tentative for a second, and
/// neighbour discovery with them, so a namespace's first IPv6 connection
/// would wait for its SYN's retransmission.
fn no_dad(ns: Netns) -> Result<Netns> {
    ns.sysctl("net.ipv6.conf.all.accept_dad", "0")?;
    ns.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
    Ok(ns)
}

/// The addresses of a gateway link's two ends.
struct Ends {
    gateway: Ipv4Addr,
    endpoint: Ipv4Addr,
    gateway6: Ipv6Addr,
    endpoint6: Ipv6Addr,
}

/// A veth from `ns`'s `iface` to port `port` of `bridge` in `switch`. The
/// port takes frames the gateway's XDP program redirects (GRO on: veth
/// needs NAPI on the receiving end).
fn bridge_port(switch: &Netns, bridge: &str, port: &str, ns: &Netns, iface: &str) -> Result<()> {
    run("ip", &["link", "add", port, "netns", switch.name(), "type", "veth", "peer", "name", iface, "netns", ns.name()])?;
    switch.ip(&["link", "set", port, "master", bridge, "up"])?;
    switch.exec("ethtool", &["-K", port, "gro", "on"])?;
    Ok(())
}

/// A veth from the gateway (`gw_iface`) to `eth0` of `endpoint`, each end
/// with its addresses of `ends` (/24 and /64), the endpoint's default
/// routes via the gateway.
fn link(gateway: &Netns, gw_iface: &str, endpoint: &Netns, ends: &Ends) -> Result<()> {
    run(
        "ip",
        &[
            "link", "add", gw_iface, "netns", gateway.name(), "type", "veth", "peer", "name",
            "eth0", "netns", endpoint.name(),
        ],
    )?;
    gateway.ip(&["addr", "add", &format!("{}/24", ends.gateway), "dev", gw_iface])?;
    gateway.ip(&["addr", "add", &format!("{}/64", ends.gateway6), "dev", gw_iface, "nodad"])?;
    gateway.ip(&["link", "set", gw_iface, "up"])?;
    endpoint.ip(&["addr", "add", &format!("{}/24", ends.endpoint), "dev", "eth0"])?;
    endpoint.ip(&["addr", "add", &format!("{}/64", ends.endpoint6), "dev", "eth0", "nodad"])?;
    endpoint.ip(&["link", "set", "eth0", "up"])?;
    endpoint.ip(&["route", "add", "default", "via", &ends.gateway.to_string()])?;
    endpoint.ip(&["-6", "route", "add", "default", "via", &ends.gateway6.to_string()])?;
    endpoint.exec("ethtool", &["-K", "eth0", "tx", "off", "gro", "on"])?;
    Ok(())
}
