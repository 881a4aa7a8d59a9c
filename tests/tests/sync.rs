//! Flow-state sync between two gateways, with real processes: two
//! redirectord on the pair topology, region servers, a client through
//! gateway A, and gateway B's flow table read from its pins.

use std::{
    collections::HashMap,
    net::{SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use redirector::{
    config::Config,
    dataplane::{flow_table::FlowTable, remove_pins},
    sync::digest,
};
use redirector_common::{Flow, FlowKey, FLOW_ORIGINAL, FLOW_REPLY, FLOW_SYNCED, IPPROTO_TCP, IPPROTO_UDP};
use redirector_proto::{
    control::{ResyncState, SyncView},
    key::Key,
    sync::{FlowEvent, FlowRecord, Sender},
};
use redirector_tests::{
    client::Session,
    lab::{body, wait_for, Daemon, Lab, LabOptions, PairOptions, SYNC_PORT, UDP_PORT},
    netns::{require_root, unique_name},
    topology::{CLIENT_ADDR, SYNC_A, SYNC_B},
};

fn pair(sync: bool) -> Lab {
    pair_with(LabOptions { pair: Some(PairOptions { sync, sync_key: true }), ..LabOptions::default() })
}

fn pair_with(options: LabOptions) -> Lab {
    require_root();
    Lab::new(&unique_name("rds"), LabOptions { regions: 2, ..options }).unwrap()
}

/// Both gateways running, A holding the shared addresses, both ready.
fn running_pair() -> Lab {
    start_pair(pair(true))
}

fn start_pair(mut lab: Lab) -> Lab {
    lab.topo.hold_shared(&lab.topo.gateway).unwrap();
    lab.start_daemon().unwrap();
    lab.peer().start().unwrap();
    for daemon in [&lab.gateway, lab.peer.as_ref().unwrap()] {
        wait_for(Duration::from_secs(5), || {
            anyhow::ensure!(sync_view(daemon)?.ready, "not ready");
            Ok(())
        })
        .unwrap();
    }
    lab
}

fn sync_view(daemon: &Daemon) -> anyhow::Result<SyncView> {
    daemon.status()?.sync.ok_or_else(|| anyhow::anyhow!("no sync in the status"))
}

fn refused(daemon: &Daemon, cause: &str) -> u64 {
    let view = sync_view(daemon).unwrap();
    view.refused.iter().find(|(c, _)| c == cause).map_or(0, |(_, n)| *n)
}

/// A gateway's established table, by key.
fn table(daemon: &Daemon) -> HashMap<FlowKey, Flow> {
    FlowTable::open(&daemon.pins.0).unwrap().entries().unwrap().into_iter().collect()
}

/// The key of the client's connection from `port` to the VIP.
fn client_key(lab: &Lab, port: u16) -> FlowKey {
    FlowKey {
        src_addr: u32::from(CLIENT_ADDR).to_be(),
        dst_addr: u32::from(lab.topo.region("region2").addr).to_be(),
        src_port: port.to_be(),
        dst_port: lab.vip().port().to_be(),
        protocol: IPPROTO_TCP,
        _pad: [0; 3],
    }
}

/// Whether `theirs` holds `key` as `ours` pins it: same region and
/// rewrite target, both entries.
fn holds_as(theirs: &HashMap<FlowKey, Flow>, key: &FlowKey, ours: &Flow) -> bool {
    let same = |flow: &Flow| (flow.region_id, flow.rewrite_addr, flow.rewrite_port) == (ours.region_id, ours.rewrite_addr, ours.rewrite_port);
    theirs.get(key).is_some_and(|f| f.direction == FLOW_ORIGINAL && same(f))
        && theirs.get(&key.reply_key(ours.rewrite_addr, ours.rewrite_port)).is_some_and(|f| f.direction == FLOW_REPLY && same(f))
}

#[test]
fn a_flow_pinned_on_one_gateway_reaches_the_other_and_a_restarted_gateway_gets_the_table_before_it_is_ready() {
    let mut lab = running_pair();
    let mut sessions = Vec::new();
    let started = Instant::now();
    for _ in 0..20 {
        let mut session = Session::open(&lab.topo.client, lab.vip(), Duration::from_secs(2)).unwrap();
        assert_eq!(session.get().unwrap(), body(2));
        sessions.push(session);
    }
    let opened = started.elapsed();
    let keys: Vec<FlowKey> = sessions.iter().map(|s| client_key(&lab, s.local_port().unwrap())).collect();
    let on_a = table(&lab.gateway);
    for key in &keys {
        assert!(on_a.get(key).is_some_and(|f| f.flags & FLOW_SYNCED == 0), "gateway A carries {key:?}");
    }
    let synced_at = Instant::now();
    wait_for(Duration::from_secs(1), || {
        let on_b = table(lab.peer.as_ref().unwrap());
        let missing = keys.iter().filter(|k| !holds_as(&on_b, k, &on_a[k])).count();
        anyhow::ensure!(missing == 0, "{missing} of {} flows not on gateway B", keys.len());
        Ok(())
    })
    .unwrap();
    println!("20 connections opened in {opened:?}; all on gateway B {:?} after the last", synced_at.elapsed());
    // Status and metrics see the sync thread's counts within 0.1 s.
    wait_for(Duration::from_secs(1), || {
        let b = sync_view(lab.peer.as_ref().unwrap())?;
        let sent = sync_view(&lab.gateway)?.peers[0].records_sent;
        let lag = b.peers[0].lag_ms.is_some_and(|ms| (0.0..1000.0).contains(&ms));
        anyhow::ensure!(
            b.peers[0].reachable && lag && b.peers[0].records_received >= 20 && b.flows_written >= 20 && sent >= 20,
            "{b:?}, {sent} sent"
        );
        Ok(())
    })
    .unwrap();

    // Gateway B's host reboots: its table is gone with it.
    let peer = lab.peer();
    peer.stop(libc::SIGKILL).unwrap();
    remove_pins(&peer.pins.0).unwrap();
    peer.start().unwrap();
    wait_for(Duration::from_secs(5), || {
        anyhow::ensure!(sync_view(lab.peer.as_ref().unwrap())?.ready, "not ready");
        Ok(())
    })
    .unwrap();
    let on_b = table(lab.peer.as_ref().unwrap());
    let missing: Vec<_> = keys.iter().filter(|k| !holds_as(&on_b, k, &on_a[k])).collect();
    assert!(missing.is_empty(), "ready without {} of the flows", missing.len());
    assert_eq!(sync_view(lab.peer.as_ref().unwrap()).unwrap().peers[0].resync, ResyncState::Done);
    for session in &mut sessions {
        assert_eq!(session.get().unwrap(), body(2), "through gateway A all along");
    }
}

/// Gateway A's sync address, played by the test: datagrams as A would
/// send them, and as an attacker or a broken peer would.
struct FakePeer {
    socket: UdpSocket,
    to: SocketAddr,
}

impl FakePeer {
    fn bind(lab: &Lab, port: u16) -> Self {
        let socket = lab.topo.gateway.on_thread(|| Ok(UdpSocket::bind((SYNC_A, port))?)).unwrap();
        Self { socket, to: (SYNC_B, SYNC_PORT).into() }
    }

    fn send(&self, datagram: &[u8]) {
        self.socket.send_to(datagram, self.to).unwrap();
    }
}

fn record(lab: &Lab, event: FlowEvent, port: u16) -> FlowRecord {
    let region2 = lab.topo.region("region2").addr;
    FlowRecord {
        event,
        key: client_key(lab, port),
        service_id: 0,
        region_id: 1,
        flags: 0,
        rewrite_addr: u32::from(region2).to_be(),
        rewrite_port: 80u16.to_be(),
    }
}

#[test]
fn forged_replayed_foreign_and_malformed_datagrams_are_refused_counted_and_change_nothing() {
    let mut lab = pair(true);
    lab.peer().start().unwrap();
    let peer = lab.peer.as_ref().unwrap();
    let config = Config::load(&peer.config_path).unwrap();
    let key = Key::load(&lab.sync_key_path()).unwrap();
    let boot = 1_000;
    let mut a = Sender::new(boot, digest(&config), Some(key.clone()));
    let fake = FakePeer::bind(&lab, SYNC_PORT);
    let has = |port: u16| table(peer).contains_key(&client_key(&lab, port));
    let settle = || std::thread::sleep(Duration::from_millis(200));

    // An authentic flow arrives.
    let pinned_y = a.flows(&[record(&lab, FlowEvent::Pinned, 50_001)]).remove(0);
    fake.send(&pinned_y);
    wait_for(Duration::from_secs(1), || {
        anyhow::ensure!(has(50_001), "not written");
        Ok(())
    })
    .unwrap();

    // Signed with another key: the close is not applied.
    let wrong = lab.dir.join("wrong-sync.key");
    std::fs::write(&wrong, "not-the-lab-sync-key-at-all\n").unwrap();
    let mut forger = Sender::new(boot + 1, digest(&config), Some(Key::load(&wrong).unwrap()));
    fake.send(&forger.flows(&[record(&lab, FlowEvent::Closed, 50_001)]).remove(0));
    // Unsigned.
    let mut unsigned = Sender::new(boot + 1, digest(&config), None);
    fake.send(&unsigned.flows(&[record(&lab, FlowEvent::Pinned, 50_002)]).remove(0));
    settle();
    assert!(has(50_001) && !has(50_002));
    assert_eq!(refused(peer, "unauthenticated"), 2);

    // Closed for real, then the old datagram that pinned it, replayed.
    fake.send(&a.flows(&[record(&lab, FlowEvent::Closed, 50_001)]).remove(0));
    wait_for(Duration::from_secs(1), || {
        anyhow::ensure!(!has(50_001), "not deleted");
        Ok(())
    })
    .unwrap();
    fake.send(&pinned_y);
    settle();
    assert!(!has(50_001), "a replay pinned a closed flow again");
    assert_eq!(refused(peer, "replayed"), 1);

    // Cut short, and bytes that are no sync datagram at all.
    let whole = a.flows(&[record(&lab, FlowEvent::Pinned, 50_003)]).remove(0);
    fake.send(&whole[..whole.len() - 5]);
    fake.send(b"GET / HTTP/1.1\r\n\r\n");
    // From a port that is not the peer's.
    let stranger = FakePeer::bind(&lab, SYNC_PORT + 1);
    stranger.send(&a.flows(&[record(&lab, FlowEvent::Pinned, 50_004)]).remove(0));
    // A peer with other services or regions.
    let mut other_config = Sender::new(boot + 2, digest(&config) ^ 1, Some(key));
    fake.send(&other_config.flows(&[record(&lab, FlowEvent::Pinned, 50_005)]).remove(0));
    settle();
    for port in [50_003, 50_004, 50_005] {
        assert!(!has(port), "flow from port {port} written");
    }
    assert_eq!(
        (refused(peer, "malformed"), refused(peer, "unknown_peer"), refused(peer, "config_mismatch")),
        (2, 1, 1)
    );
    let metrics = peer.metrics().unwrap();
    assert!(metrics.lines().any(|l| l == r#"redirector_sync_refused_total{cause="replayed"} 1"#), "{metrics}");

    // Still listening to the real peer.
    fake.send(&a.flows(&[record(&lab, FlowEvent::Pinned, 50_006)]).remove(0));
    wait_for(Duration::from_secs(1), || {
        anyhow::ensure!(has(50_006), "not written");
        Ok(())
    })
    .unwrap();
    assert!(lab.peer().exited().unwrap().is_none(), "redirectord-b runs");
}

#[test]
fn a_peer_that_goes_silent_does_not_stop_the_other_from_forwarding() {
    let mut lab = running_pair();
    let mut kept = Session::open(&lab.topo.client, lab.vip(), Duration::from_secs(2)).unwrap();
    assert_eq!(kept.get().unwrap(), body(2));
    lab.peer().stop(libc::SIGKILL).unwrap();
    let started = Instant::now();
    let mut new_connections = 0;
    while started.elapsed() < Duration::from_secs(4) {
        let mut session = Session::open(&lab.topo.client, lab.vip(), Duration::from_secs(1)).unwrap();
        assert_eq!(session.get().unwrap(), body(2), "connection {new_connections}");
        assert_eq!(kept.get().unwrap(), body(2));
        new_connections += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    let view = sync_view(&lab.gateway).unwrap();
    assert!(!view.peers[0].reachable, "{view:?}");
    assert!(view.peers[0].records_sent >= new_connections, "{view:?}");
    println!("{new_connections} new connections through gateway A while its peer was gone");
}

#[test]
fn flows_closed_on_one_gateway_go_away_on_both() {
    let lab = running_pair();
    let mut session = Session::open(&lab.topo.client, lab.vip(), Duration::from_secs(2)).unwrap();
    assert_eq!(session.get().unwrap(), body(2));
    let key = client_key(&lab, session.local_port().unwrap());
    let peer = lab.peer.as_ref().unwrap();
    wait_for(Duration::from_secs(1), || {
        anyhow::ensure!(table(peer).contains_key(&key), "not on gateway B");
        Ok(())
    })
    .unwrap();
    drop(session);
    // A closed flow lingers 30 s after its last packet, then A's sweep
    // deletes it and tells B.
    let closed = Instant::now();
    wait_for(Duration::from_secs(45), || {
        let (a, b) = (table(&lab.gateway).contains_key(&key), table(peer).contains_key(&key));
        anyhow::ensure!(!a && !b, "still on gateway A: {a}, on gateway B: {b}");
        Ok(())
    })
    .unwrap();
    println!("closed flow gone from both gateways {:?} after its close", closed.elapsed());
}

/// A UDP flow idles out on a gateway 30 s after its last packet; gateway
/// A's refreshes keep B's copy of a flow alive on A as long as it lives.
#[test]
fn a_udp_flow_alive_on_one_gateway_stays_known_to_the_other_past_its_idle_timeout() {
    let options = LabOptions { udp_service: true, pair: Some(PairOptions { sync: true, sync_key: true }), ..LabOptions::default() };
    let lab = start_pair(pair_with(options));
    let target = SocketAddr::new(lab.vip().ip(), UDP_PORT);
    let socket = lab.topo.client.on_thread(|| Ok(UdpSocket::bind((CLIENT_ADDR, 0))?)).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let key = FlowKey { protocol: IPPROTO_UDP, dst_port: UDP_PORT.to_be(), ..client_key(&lab, socket.local_addr().unwrap().port()) };
    let peer = lab.peer.as_ref().unwrap();
    let started = Instant::now();
    let mut answer = [0u8; 64];
    // Bounded: 45 datagrams, one a second.
    for i in 0..45 {
        socket.send_to(format!("ping {i}").as_bytes(), target).unwrap();
        let (n, _) = socket.recv_from(&mut answer).unwrap();
        assert!(answer[..n].starts_with(b"R"), "{:?}", String::from_utf8_lossy(&answer[..n]));
        let lag = if i == 0 { Duration::from_secs(1) } else { Duration::ZERO };
        wait_for(lag, || {
            anyhow::ensure!(table(peer).contains_key(&key), "gateway B lost the flow after {:?}", started.elapsed());
            Ok(())
        })
        .unwrap();
        std::thread::sleep(Duration::from_secs(1));
    }
    let view = sync_view(peer).unwrap();
    assert!(view.peers[0].records_received >= 4, "the first record and three refreshes: {view:?}");
}
