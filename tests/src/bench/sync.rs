//! `cargo xtask bench sync [--quick]`: how fast a flow pinned on gateway A
//! is on gateway B, at a given rate of new flows, and what the sync costs
//! each side.
//!
//! A pair (the tests' topology, the sync signed), gateway A holding the
//! shared addresses. A sender in the client's namespace offers new UDP
//! flows to the lab's UDP service at a fixed rate, each from another
//! source (address and port; the addresses are the client's own, so the
//! answers reach it), built once and patched. One flow in every
//! `rate / SAMPLES_PER_SECOND` is sampled: its key and when it was sent;
//! a prober looks each sampled key up in gateway B's flow table until it
//! is there. Lag = found - sent: the data plane, the ring buffer, A's
//! sync thread, the datagram, B's sync thread and its map writes.
//! CPU: each daemon's `sync` thread, over the run.

use std::{
    collections::VecDeque,
    mem::size_of,
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use redirector::{dataplane::flow_table::FlowTable, sync::records::FlowStore};
use redirector_common::{FlowKey, Reason, IPPROTO_UDP};

use super::{publish, thread_cpu_ticks, ticks_per_second};
use crate::{
    frames::{Frame, L4},
    lab::{wait_for, Daemon, Lab, LabOptions, PairOptions, UDP_PORT},
    netns::{require_root, unique_name},
    topology::CLIENT_ADDR,
};

const SAMPLES_PER_SECOND: u64 = 1_000;
/// A sampled flow not on gateway B after this is counted missing.
const GIVE_UP: Duration = Duration::from_secs(3);

struct Row {
    offered: u64,
    sent: u64,
    achieved: f64,
    lags: Vec<Duration>,
    missing: usize,
    sync_cpu: [f64; 2],
    events_lost: u64,
}

pub fn run(args: &[String]) -> Result<()> {
    require_root();
    let quick = args.iter().any(|a| a == "--quick");
    let (rates, seconds): (&[u64], u64) = if quick { (&[1_000], 1) } else { (&[1_000, 10_000, 100_000], 5) };
    let options = LabOptions {
        regions: 2,
        udp_service: true,
        pair: Some(PairOptions { sync: true, sync_key: true }),
        ..LabOptions::default()
    };
    let mut lab = Lab::new(&unique_name("rbs"), options)?;
    for i in 0..SOURCES {
        let (addr, _) = source(i * 60_000);
        lab.topo.client.ip(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
    }
    lab.topo.hold_shared(&lab.topo.gateway)?;
    lab.start_daemon()?;
    lab.peer().start()?;
    wait_for(Duration::from_secs(5), || {
        anyhow::ensure!(lab.peer.as_ref().unwrap().status()?.sync.is_some_and(|s| s.ready), "gateway B not ready");
        Ok(())
    })?;
    let mut next_flow = 0u64;
    let mut rows = Vec::new();
    for &rate in rates {
        let row = measure(&lab, rate, Duration::from_secs(seconds), &mut next_flow)?;
        eprintln!("bench sync: {rate} flows/s: {} sampled, {} missing", row.lags.len(), row.missing);
        rows.push(row);
    }
    publish("bench sync", "sync", &report(&rows, seconds), !quick);
    Ok(())
}

fn measure(lab: &Lab, rate: u64, duration: Duration, next_flow: &mut u64) -> Result<Row> {
    let a = &lab.gateway;
    let b = lab.peer.as_ref().context("a pair")?;
    let pids = [a.pid().context("gateway A runs")?, b.pid().context("gateway B runs")?];
    let before = [thread_cpu_ticks(pids[0], "sync")?, thread_cpu_ticks(pids[1], "sync")?];
    let lost_before = events_lost(a)?;
    let (samples_tx, samples_rx) = mpsc::channel();
    let table = FlowTable::open(&b.pins.0)?;
    let prober = thread::spawn(move || probe(&table, samples_rx));
    let vip = lab.topo.region("region2").addr;
    let first = *next_flow;
    let started = Instant::now();
    let sent = lab.topo.client.on_thread(|| send(vip, rate, duration, first, samples_tx))?;
    let took = started.elapsed();
    *next_flow += sent;
    let (lags, missing) = prober.join().expect("prober panicked");
    let elapsed = started.elapsed().as_secs_f64();
    let after = [thread_cpu_ticks(pids[0], "sync")?, thread_cpu_ticks(pids[1], "sync")?];
    let sync_cpu = [0, 1].map(|i| (after[i] - before[i]) as f64 / ticks_per_second() / elapsed * 100.0);
    Ok(Row {
        offered: rate,
        sent,
        achieved: sent as f64 / took.as_secs_f64(),
        lags,
        missing,
        sync_cpu,
        events_lost: events_lost(a)? - lost_before,
    })
}

fn events_lost(daemon: &Daemon) -> Result<u64> {
    let status = daemon.status()?;
    Ok(status.reasons.iter().find(|(r, _)| r == Reason::SyncEventLost.name()).map_or(0, |(_, n)| *n))
}

/// Client addresses the flows come from (each with 60 000 ports).
const SOURCES: u64 = 20;

/// The `i`th flow's source: one of the client's addresses and a port.
fn source(i: u64) -> (Ipv4Addr, u16) {
    let [a, b, c, _] = CLIENT_ADDR.octets();
    (Ipv4Addr::new(a, b, c, 10 + (i / 60_000 % SOURCES) as u8), 1024 + (i % 60_000) as u16)
}

fn flow_key(vip: Ipv4Addr, i: u64) -> FlowKey {
    let (addr, port) = source(i);
    FlowKey {
        src_addr: u32::from(addr).to_be(),
        dst_addr: u32::from(vip).to_be(),
        src_port: port.to_be(),
        dst_port: UDP_PORT.to_be(),
        protocol: IPPROTO_UDP,
        _pad: [0; 3],
    }
}

/// Sends `rate` new flows a second for `duration` (bounded by both),
/// starting at flow `first`, through a raw socket (this thread is in the
/// client's namespace); every sampled flow's key and send time go to
/// `samples`. Returns the datagrams sent.
fn send(vip: Ipv4Addr, rate: u64, duration: Duration, first: u64, samples: mpsc::Sender<(FlowKey, Instant)>) -> Result<u64> {
    // SAFETY: socket(2) returns a new descriptor or -1.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    if fd < 0 {
        bail!("raw socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: fd is a descriptor this function owns from here.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let template = Frame::new(CLIENT_ADDR, vip, L4::Udp { src_port: 1024, dst_port: UDP_PORT, zero_checksum: true });
    let mut packet = template.bytes()[template.l3_offset()..].to_vec();
    let mut to: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    to.sin_family = libc::AF_INET as libc::sa_family_t;
    to.sin_addr.s_addr = u32::from(vip).to_be();
    let total = rate * duration.as_secs().max(1);
    let sample_every = (rate / SAMPLES_PER_SECOND).max(1);
    let started = Instant::now();
    let mut sent = 0;
    while sent < total && started.elapsed() < duration * 2 {
        // Paced by the millisecond: what is due by now goes out.
        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        if sent >= due.min(total) {
            thread::sleep(Duration::from_micros(200));
            continue;
        }
        let i = first + sent;
        let (addr, port) = source(i);
        packet[12..16].copy_from_slice(&addr.octets());
        packet[20..22].copy_from_slice(&port.to_be_bytes());
        // SAFETY: the buffer and address outlive the call.
        let n = unsafe {
            libc::sendto(
                socket.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                &to as *const libc::sockaddr_in as *const libc::sockaddr,
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOBUFS) {
                continue;
            }
            bail!("sending flow {i}: {e}");
        }
        if sent % sample_every == 0 {
            let _ = samples.send((flow_key(vip, i), Instant::now()));
        }
        sent += 1;
    }
    Ok(sent)
}

/// Looks each sampled key up in gateway B's table, round after round,
/// until it is there (its lag) or `GIVE_UP` passed (missing); returns
/// when the sender is done and nothing is pending.
fn probe(table: &FlowTable, samples: mpsc::Receiver<(FlowKey, Instant)>) -> (Vec<Duration>, usize) {
    let mut pending: VecDeque<(FlowKey, Instant)> = VecDeque::new();
    let mut lags = Vec::new();
    let mut missing = 0;
    let mut open = true;
    while open || !pending.is_empty() {
        loop {
            match samples.try_recv() {
                Ok(sample) => pending.push_back(sample),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        pending.retain(|(key, sent)| {
            if table.get(key).is_some() {
                lags.push(sent.elapsed());
                false
            } else if sent.elapsed() > GIVE_UP {
                missing += 1;
                false
            } else {
                true
            }
        });
        if pending.is_empty() {
            thread::sleep(Duration::from_micros(100));
        }
    }
    lags.sort();
    (lags, missing)
}

fn report(rows: &[Row], seconds: u64) -> String {
    let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1e3);
    let at = |lags: &[Duration], p: f64| lags.get(((lags.len().max(1) - 1) as f64 * p).round() as usize).copied().map_or("-".into(), ms);
    let mut text = format!(
        "## Flow sync: lag from gateway A's data plane to gateway B's table\n\n\
         New UDP flows through gateway A for {seconds} s per rate; one flow in every rate/{SAMPLES_PER_SECOND} sampled \
         and looked up in gateway B's table until there (missing: not there after {} s). Sync CPU: each daemon's \
         sync thread, percent of one core.\n\n\
         | new flows/s offered | sent (per s) | sampled | lag p50 | lag p99 | lag max | missing | sync CPU A | sync CPU B | events lost (ring full) |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        GIVE_UP.as_secs()
    );
    for r in rows {
        text += &format!(
            "| {} | {} ({:.0}) | {} | {} | {} | {} | {} | {:.1} % | {:.1} % | {} |\n",
            r.offered,
            r.sent,
            r.achieved,
            r.lags.len() + r.missing,
            at(&r.lags, 0.5),
            at(&r.lags, 0.99),
            r.lags.last().copied().map_or("-".into(), ms),
            r.missing,
            r.sync_cpu[0],
            r.sync_cpu[1],
            r.events_lost,
        );
    }
    text
}
