//! The one topology builder of the project: the lab, the end-to-end tests and
//! the benchmarks all stand on it.
//!
//! ```text
//!   client ns                gateway ns                      region ns (i = 1..n)
//!   eth0 10.0.0.2/24 ── veth-client 10.0.0.1/24
//!                           veth-r<i>  10.<i>.0.1/24 ─────── eth0 10.<i>.0.2/24
//! ```
//!
//! Endpoints send full checksums (tx offload off), as frames on a real wire
//! do: a namespace's socket otherwise hands veth partial checksums that only
//! the kernel's own path would complete. Endpoints run GRO so their veth
//! takes frames the gateway's XDP program redirects to them.

use std::net::Ipv4Addr;

use anyhow::Result;

use crate::netns::{run, Netns};

pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
pub const GATEWAY_CLIENT_SIDE: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
pub const CLIENT_IFACE: &str = "veth-client";

pub struct Region {
    /// "region1", "region2", ...
    pub name: String,
    pub ns: Netns,
    pub addr: Ipv4Addr,
    /// The gateway's interface toward this region.
    pub gateway_iface: String,
}

pub struct Topology {
    pub client: Netns,
    pub gateway: Netns,
    pub regions: Vec<Region>,
}

impl Topology {
    /// Builds the namespaces `<prefix>-client`, `<prefix>-gw` and
    /// `<prefix>-r1..rN`, replacing any left by an earlier run.
    pub fn build(prefix: &str, regions: u8) -> Result<Self> {
        let client = Netns::new(&format!("{prefix}-client"))?;
        let gateway = Netns::new(&format!("{prefix}-gw"))?;
        gateway.sysctl("net.ipv4.ip_forward", "1")?;
        // Replies leave toward the client with the VIP as source, which the
        // reverse-path filter of a stricter host would judge spoofed.
        gateway.sysctl("net.ipv4.conf.all.rp_filter", "0")?;
        gateway.sysctl("net.ipv4.conf.default.rp_filter", "0")?;
        link(&gateway, CLIENT_IFACE, GATEWAY_CLIENT_SIDE, &client, CLIENT_ADDR)?;

        let mut built = Vec::new();
        for i in 1..=regions {
            let ns = Netns::new(&format!("{prefix}-r{i}"))?;
            let gateway_iface = format!("veth-r{i}");
            let addr = region_addr(i);
            link(&gateway, &gateway_iface, Ipv4Addr::new(10, i, 0, 1), &ns, addr)?;
            built.push(Region {
                name: format!("region{i}"),
                ns,
                addr,
                gateway_iface,
            });
        }
        Ok(Self {
            client,
            gateway,
            regions: built,
        })
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

/// A veth from the gateway (`gw_iface`, `gw_addr`/24) to `eth0` of
/// `endpoint` (`addr`/24, default route via the gateway).
fn link(gateway: &Netns, gw_iface: &str, gw_addr: Ipv4Addr, endpoint: &Netns, addr: Ipv4Addr) -> Result<()> {
    run(
        "ip",
        &[
            "link", "add", gw_iface, "netns", gateway.name(), "type", "veth", "peer", "name",
            "eth0", "netns", endpoint.name(),
        ],
    )?;
    gateway.ip(&["addr", "add", &format!("{gw_addr}/24"), "dev", gw_iface])?;
    gateway.ip(&["link", "set", gw_iface, "up"])?;
    endpoint.ip(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
    endpoint.ip(&["link", "set", "eth0", "up"])?;
    endpoint.ip(&["route", "add", "default", "via", &gw_addr.to_string()])?;
    endpoint.exec("ethtool", &["-K", "eth0", "tx", "off", "gro", "on"])?;
    Ok(())
}
