//! The maps of one address family's services: `SERVICES` and `BACKENDS`,
//! or their IPv6 twins. A service's id, selection banks and counters are
//! shared by both families; its VIP's family says which maps hold it.

use std::net::SocketAddr;

use anyhow::{anyhow, Context, Result};
use aya::maps::{Array, HashMap, MapData};
use redirector_common::{backend_index, Address, Backend, Service, ServiceKey, MAX_REGIONS};

use super::ServiceSpec;
use crate::config::{Protocol, ServiceAddr};

pub struct ServiceMaps<A: Address> {
    pub services: HashMap<MapData, ServiceKey<A>, Service>,
    pub backends: Array<MapData, Backend<A>>,
}

/// The protocol number a packet of `protocol` carries in this family: ICMP
/// echo is ICMPv6 over IPv6.
fn protocol_number<A: Address>(protocol: Protocol) -> u8 {
    match protocol {
        Protocol::Icmp => A::ICMP,
        protocol => protocol.number(),
    }
}

impl<A: Address> ServiceMaps<A> {
    /// The `SERVICES` key of a service: network order, as in the packet.
    pub fn key(addr: &ServiceAddr) -> Result<ServiceKey<A>> {
        let vip = A::from_ip(addr.vip).ok_or_else(|| anyhow!("service {addr}: VIP of the other family"))?;
        Ok(ServiceKey {
            vip,
            port: addr.port.to_be(),
            protocol: protocol_number::<A>(addr.protocol),
            _pad: 0,
        })
    }

    pub fn get(&self, addr: &ServiceAddr) -> Result<Service> {
        self.services
            .get(&Self::key(addr)?, 0)
            .with_context(|| format!("service {addr} is not in the data plane"))
    }

    pub fn insert(&mut self, addr: &ServiceAddr, service: Service) -> Result<()> {
        Ok(self.services.insert(Self::key(addr)?, service, 0)?)
    }

    /// Writes every region's endpoint of `spec` (none: an empty slot).
    pub fn write_backends(&mut self, spec: &ServiceSpec) -> Result<()> {
        for region in 0..MAX_REGIONS as u8 {
            let backend = match spec.backends.get(&region) {
                Some(endpoint) => backend(endpoint)?,
                None => Backend::default(),
            };
            self.backends.set(backend_index(spec.id, region), backend, 0)?;
        }
        Ok(())
    }

    /// Removes every service of this family not in `wanted`.
    pub fn retain(&mut self, wanted: &[ServiceSpec]) -> Result<()> {
        let wanted: Vec<ServiceKey<A>> = wanted.iter().filter_map(|s| Self::key(&s.addr).ok()).collect();
        let stale: Vec<ServiceKey<A>> = self
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
}

fn backend<A: Address>(endpoint: &SocketAddr) -> Result<Backend<A>> {
    Ok(Backend {
        addr: A::from_ip(endpoint.ip()).ok_or_else(|| anyhow!("endpoint {endpoint}: of the other family"))?,
        port: endpoint.port().to_be(),
        _pad: 0,
    })
}
