//! Real TCP through the XDP data plane: client namespace → VIP → gateway
//! namespace running the program → region namespace, and back from the VIP.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use redirector::{
    config::{Protocol, ServiceAddr},
    dataplane::{AttachMode, BpfDataplane, Dataplane, LoadOptions, Selection, ServiceSpec},
};
use redirector_common::{Reason, RegionState, FLOW_REPLY};
use redirector_tests::{
    inns::{fetch, Conn, Server},
    netns::{require_root, unique_name},
    topology::{Topology, CLIENT_ADDR, CLIENT_ADDR6},
    xdp::PinDir,
};

const TIMEOUT: Duration = Duration::from_secs(3);

/// The data plane loaded in the calling thread's namespace (the gateway)
/// and attached to every gateway interface.
fn attached(topo: &Topology, pins: &PinDir) -> BpfDataplane {
    let mut dp = BpfDataplane::load(&LoadOptions { pin_path: pins.0.clone(), ..LoadOptions::default() }).unwrap();
    for iface in topo.gateway_interfaces() {
        assert_eq!(dp.attach(&iface).unwrap(), AttachMode::Native, "{iface}");
    }
    dp
}

/// Service `id` at `addr`, on the same port at region 1's `r1` and region
/// 2's `r2`.
fn served_by(id: u32, addr: ServiceAddr, r1: IpAddr, r2: IpAddr) -> ServiceSpec {
    ServiceSpec { id, addr, backends: [(1, SocketAddr::new(r1, addr.port)), (2, SocketAddr::new(r2, addr.port))].into() }
}

#[test]
fn tcp_to_the_vip_is_served_by_the_selected_region_and_answered_from_the_vip() {
    require_root();
    let topo = Topology::build(&unique_name("rds"), 2).unwrap();
    let (r1, r2) = (topo.region("region1"), topo.region("region2"));
    let _servers = [
        Server::start(&r1.ns, 80, "I am region1").unwrap(),
        Server::start(&r2.ns, 80, "I am region2").unwrap(),
    ];
    // The VIP is region2's own address, as in the reference deployment:
    // without the data plane every request would reach region2.
    let web = ServiceAddr { vip: r2.addr.into(), port: 80, protocol: Protocol::Tcp };

    let pins = PinDir::unique();
    let _inside = topo.gateway.enter().unwrap();
    let mut dp = attached(&topo, &pins);
    dp.set_services(&[served_by(0, web, r1.addr.into(), r2.addr.into())]).unwrap();
    dp.set_region_state(1, RegionState::Up).unwrap();
    dp.set_region_state(2, RegionState::Up).unwrap();

    dp.set_selection(&web, &Selection::all(1)).unwrap();
    for _ in 0..5 {
        assert_eq!(fetch(&topo.client, r2.addr, 80, TIMEOUT).unwrap(), "I am region1");
    }
    dp.set_selection(&web, &Selection::all(2)).unwrap();
    assert_eq!(fetch(&topo.client, r2.addr, 80, TIMEOUT).unwrap(), "I am region2");

    let stats = dp.stats().unwrap();
    assert_eq!(stats.regions[1].new_flows, 5);
    assert_eq!(stats.regions[2].new_flows, 1);
    assert!(stats.reason(Reason::Forwarded) >= 6 * 3, "SYN, ACK, FIN... each redirected: {stats:?}");
    assert!(stats.reason(Reason::Replied) >= 6 * 2, "{stats:?}");
    // Every answer was turned back into the VIP: reply entries rewrite to it.
    let flows = dp.flows().unwrap();
    let replies: Vec<_> = flows.iter().filter(|(_, f)| f.direction == FLOW_REPLY).collect();
    assert_eq!(replies.len(), 6);
    for (key, flow) in replies {
        assert_eq!((flow.rewrite_addr, flow.rewrite_port), (u32::from(r2.addr).to_be(), 80u16.to_be()));
        assert_eq!(key.dst_addr, u32::from(CLIENT_ADDR).to_be());
    }
}

#[test]
fn traffic_not_for_a_service_is_routed_as_before() {
    require_root();
    let topo = Topology::build(&unique_name("rds"), 1).unwrap();
    let r1 = topo.region("region1");
    let _server = Server::start(&r1.ns, 8080, "plain routing").unwrap();
    let pins = PinDir::unique();
    let _inside = topo.gateway.enter().unwrap();
    let mut dp = attached(&topo, &pins);
    // A service on port 80 of region1's address; port 8080 is not one.
    let web = ServiceAddr { vip: r1.addr.into(), port: 80, protocol: Protocol::Tcp };
    dp.set_services(&[ServiceSpec { id: 0, addr: web, backends: [(1, SocketAddr::new(r1.addr.into(), 80))].into() }]).unwrap();
    dp.set_selection(&web, &Selection::all(1)).unwrap();

    assert_eq!(fetch(&topo.client, r1.addr, 8080, TIMEOUT).unwrap(), "plain routing");
    topo.client.exec("ping", &["-c", "2", "-i", "0.2", "-W", "1", "10.0.0.1"]).unwrap();
    topo.client.exec("ping", &["-c", "2", "-i", "0.2", "-W", "1", &r1.addr.to_string()]).unwrap();
    let stats = dp.stats().unwrap();
    assert!(stats.reason(Reason::PassNotService) >= 4, "{stats:?}");
    assert_eq!(stats.reason(Reason::Forwarded), 0);
}

#[test]
fn data_plane_forwards_without_its_loader_and_a_new_loader_adopts_it_without_losing_flows() {
    require_root();
    let topo = Topology::build(&unique_name("rds"), 2).unwrap();
    let (r1, r2) = (topo.region("region1"), topo.region("region2"));
    let _servers = [Server::echo(&r1.ns, 80, "region1:").unwrap(), Server::echo(&r2.ns, 80, "region2:").unwrap()];
    let web = ServiceAddr { vip: r2.addr.into(), port: 80, protocol: Protocol::Tcp };
    let pins = PinDir::unique();
    let options = LoadOptions { pin_path: pins.0.clone(), ..LoadOptions::default() };
    let _inside = topo.gateway.enter().unwrap();

    let mut first = attached(&topo, &pins);
    first.set_services(&[served_by(0, web, r1.addr.into(), r2.addr.into())]).unwrap();
    first.set_region_state(1, RegionState::Up).unwrap();
    first.set_region_state(2, RegionState::Up).unwrap();
    first.set_selection(&web, &Selection::all(1)).unwrap();
    let mut long_lived = Conn::open(&topo.client, web.vip, 80, TIMEOUT).unwrap();
    assert_eq!(long_lived.read(8).unwrap(), "region1:");
    assert_eq!(long_lived.round_trip("before").unwrap(), "before");
    let forwarded_before = first.stats().unwrap().reason(Reason::Forwarded);

    // The loader goes away (as redirectord does on exit or crash): the
    // pinned links keep the program on the interfaces.
    drop(first);
    assert_eq!(long_lived.round_trip("orphaned").unwrap(), "orphaned");
    assert_eq!(greeting(&topo.client, web.vip), "region1:");

    // A new loader adopts maps and links; its decisions apply to new flows
    // only, and counters carry on.
    let mut second = BpfDataplane::load(&options).unwrap();
    for iface in topo.gateway_interfaces() {
        assert_eq!(second.attach(&iface).unwrap(), AttachMode::Adopted, "{iface}");
    }
    assert!(second.stats().unwrap().reason(Reason::Forwarded) > forwarded_before);
    second.set_selection(&web, &Selection::all(2)).unwrap();
    assert_eq!(long_lived.round_trip("after").unwrap(), "after");
    assert_eq!(greeting(&topo.client, web.vip), "region2:");
    assert_eq!(second.attached().unwrap(), topo.gateway_interfaces().iter().cloned().collect::<std::collections::BTreeSet<_>>().into_iter().collect::<Vec<_>>());

    // Detaching is explicit: the interfaces route on their own again.
    for iface in topo.gateway_interfaces() {
        second.detach(&iface).unwrap();
    }
    assert!(second.attached().unwrap().is_empty());
    assert_eq!(greeting(&topo.client, web.vip), "region2:", "plain routing to the VIP's owner");
}

/// Which region answers a new connection to `vip`:80 (echo servers greet
/// with their name).
fn greeting(client: &redirector_tests::netns::Netns, vip: std::net::IpAddr) -> String {
    Conn::open(client, vip, 80, TIMEOUT).unwrap().read(8).unwrap()
}

/// A service on an IPv4 VIP and its twin on an IPv6 VIP, both steered by
/// one data plane at once: connections of each family open together, go
/// to the selected region, are answered from their VIP (the client's TCP
/// would refuse anything else), and keep their region when the selection
/// moves on.
#[test]
fn a_dual_stack_service_steers_both_families_at_once() {
    require_root();
    let topo = Topology::build(&unique_name("rds"), 2).unwrap();
    let (r1, r2) = (topo.region("region1"), topo.region("region2"));
    let _servers = [Server::echo(&r1.ns, 80, "region1:").unwrap(), Server::echo(&r2.ns, 80, "region2:").unwrap()];
    let (r1_6, r2_6) = (r1.addr6.unwrap(), r2.addr6.unwrap());
    let web = ServiceAddr { vip: r2.addr.into(), port: 80, protocol: Protocol::Tcp };
    let web6 = ServiceAddr { vip: r2_6.into(), port: 80, protocol: Protocol::Tcp };
    let pins = PinDir::unique();
    let _inside = topo.gateway.enter().unwrap();
    let mut dp = attached(&topo, &pins);
    dp.set_services(&[served_by(0, web, r1.addr.into(), r2.addr.into()), served_by(1, web6, r1_6.into(), r2_6.into())])
        .unwrap();
    dp.set_region_state(1, RegionState::Up).unwrap();
    dp.set_region_state(2, RegionState::Up).unwrap();
    for service in [&web, &web6] {
        dp.set_selection(service, &Selection::all(1)).unwrap();
    }

    let mut kept = [web.vip, web6.vip].map(|vip| Conn::open(&topo.client, vip, 80, TIMEOUT).unwrap());
    for conn in &mut kept {
        assert_eq!(conn.read(8).unwrap(), "region1:");
    }
    for service in [&web, &web6] {
        dp.set_selection(service, &Selection::all(2)).unwrap();
    }
    for (conn, family) in kept.iter_mut().zip(["IPv4", "IPv6"]) {
        assert_eq!(conn.round_trip(family).unwrap(), family, "{family}: still on region1");
    }
    assert_eq!(greeting(&topo.client, web.vip), "region2:");
    assert_eq!(greeting(&topo.client, web6.vip), "region2:");

    let stats = dp.stats().unwrap();
    assert_eq!((stats.services[0].new_flows, stats.services[1].new_flows), (2, 2), "{stats:?}");
    assert_eq!(stats.regions[1].new_flows, 2, "one connection of each family");
    let replies6: Vec<_> = dp.flows6().unwrap().into_iter().filter(|(_, f)| f.direction == FLOW_REPLY).collect();
    assert_eq!(replies6.len(), 2, "{replies6:?}");
    for (key, flow) in replies6 {
        assert_eq!(redirector_common::Address::to_ip(&flow.rewrite_addr), web6.vip);
        assert_eq!(redirector_common::Address::to_ip(&key.dst_addr), std::net::IpAddr::from(CLIENT_ADDR6));
    }
}
