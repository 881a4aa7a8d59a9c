//! The flow tables at scale (`--size N` entries, default a million): the
//! kernel memory they take, how long the daemon's sweep of a full table
//! takes, and what an established packet costs with the table empty and
//! full.

use std::{
    fs,
    os::fd::{AsFd, AsRawFd},
    time::Instant,
};

use anyhow::{bail, Context, Result};
use aya::maps::MapData;
use redirector::dataplane::flow_table::monotonic_ns;
use redirector_common::{map_names, new_flow_table_size, Flow, FlowKey, FLOW_ORIGINAL, IPPROTO_TCP};

use super::{machine, median, write_result, xdp};
use crate::{
    frames::{Frame, L4},
    xdp::{test_run, Gateway, CLIENT, CLIENT_MAC, CLI_MAC, R2, VIP, XDP_REDIRECT},
};

/// The kernel memory charged for a pinned map (its fdinfo's `memlock`).
fn memlock(pin: &std::path::Path) -> Result<u64> {
    let map = MapData::from_pin(pin).with_context(|| format!("opening {}", pin.display()))?;
    let fd = map.fd().as_fd().as_raw_fd();
    let info = fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))?;
    info.lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
        .context("no memlock in the map's fdinfo")
}

fn established_ns(gw: &Gateway, repeat: u32, rounds: usize) -> Result<f64> {
    let mut frame = Frame::new(CLIENT, VIP, L4::tcp(50_000, 80));
    frame.src_mac = CLIENT_MAC;
    frame.dst_mac = CLI_MAC;
    let frame = frame.bytes();
    let mut ns = Vec::new();
    for _ in 0..rounds {
        let (action, _, per_run) = test_run(gw.dataplane.program(), &frame, gw.ifindex("cli"), repeat)?;
        anyhow::ensure!(action == XDP_REDIRECT, "established: action {action}");
        ns.push(per_run.as_nanos() as f64);
    }
    Ok(median(&mut ns))
}

pub fn run(args: &[String]) -> Result<()> {
    let quick = args.iter().any(|a| a == "--quick");
    let size: u32 = match args.iter().position(|a| a == "--size") {
        Some(i) => args.get(i + 1).context("--size N")?.parse().context("--size N")?,
        None if quick => 65_536,
        None => 1_048_576,
    };
    let (repeat, rounds) = if quick { (100_000, 3) } else { (2_000_000, 5) };
    let mut gw = Gateway::with_flow_table_size(size)?;
    gw.select(R2.id)?;
    let flows_bytes = memlock(&gw.pins().join(map_names::FLOWS))?;
    let new_flows_bytes = memlock(&gw.pins().join(map_names::NEW_FLOWS))?;
    let flows6_bytes = memlock(&gw.pins().join(map_names::FLOWS6))?;
    let new_flows6_bytes = memlock(&gw.pins().join(map_names::NEW_FLOWS6))?;

    xdp::handshake(&gw, crate::xdp::VIP.into(), 50_000)?;
    let empty_ns = established_ns(&gw, repeat, rounds)?;

    // Fill to 95 %: an LRU may start evicting before it is quite full.
    let mut table = gw.dataplane.flow_table()?;
    let entries = size / 20 * 19;
    let started = Instant::now();
    let now = monotonic_ns();
    for i in 0..entries {
        let key = FlowKey {
            src_addr: i.to_be(),
            dst_addr: u32::from(VIP).to_be(),
            src_port: 40_000u16.to_be(),
            dst_port: 80u16.to_be(),
            protocol: IPPROTO_TCP,
            _pad: [0; 3],
        };
        let flow = Flow { last_seen_ns: now, region_id: R2.id, direction: FLOW_ORIGINAL, ..Default::default() };
        table.set(&key, &flow)?;
    }
    let filled = started.elapsed();
    // The measured flow may have gone to make room: open it again.
    xdp::handshake(&gw, crate::xdp::VIP.into(), 50_000)?;
    let full_ns = established_ns(&gw, repeat, rounds)?;

    let mut sweeps = Vec::new();
    let mut read = 0;
    for _ in 0..5 {
        let sweep = table.sweep(monotonic_ns())?;
        read = sweep.entries;
        sweeps.push(sweep.took.as_secs_f64() * 1e3);
    }
    if read < entries as usize * 9 / 10 {
        bail!("the sweep read {read} of {entries} entries");
    }
    let sweep_ms = median(&mut sweeps);
    let new_size = new_flow_table_size(size);
    let report = format!(
        "# Flow tables at {size} entries\n\n\
         Machine: {}\n\n\
         | measure | value |\n|---|---:|\n\
         | established table (`flow_table_size`) | {size} entries, {:.1} MiB, {:.0} bytes/entry |\n\
         | table of new TCP flows (a quarter) | {new_size} entries, {:.1} MiB, {:.0} bytes/entry |\n\
         | IPv6 established table (`flow_table_size`) | {size} entries, {:.1} MiB, {:.0} bytes/entry |\n\
         | IPv6 table of new TCP flows (a quarter) | {new_size} entries, {:.1} MiB, {:.0} bytes/entry |\n\
         | filled from userspace | {read} entries read back, written in {:.1} s |\n\
         | one sweep of the full table (median of 5) | {sweep_ms:.0} ms |\n\
         | established flow → region, table empty | {empty_ns:.0} ns/packet |\n\
         | established flow → region, table full | {full_ns:.0} ns/packet |\n\n\
         Memory is the kernel's `memlock` charge of each map (its fdinfo). Both directions of a \
         flow take an entry each: {size} entries hold {} flows. ns/packet: BPF_PROG_TEST_RUN, \
         repeat {repeat}, median of {rounds}.\n",
        machine(),
        flows_bytes as f64 / (1 << 20) as f64,
        flows_bytes as f64 / size as f64,
        new_flows_bytes as f64 / (1 << 20) as f64,
        new_flows_bytes as f64 / new_size as f64,
        flows6_bytes as f64 / (1 << 20) as f64,
        flows6_bytes as f64 / size as f64,
        new_flows6_bytes as f64 / (1 << 20) as f64,
        new_flows6_bytes as f64 / new_size as f64,
        filled.as_secs_f64(),
        size / 2,
    );
    println!("{report}");
    let name = if quick { "flows-quick" } else { "flows" };
    println!("written to {}", write_result(name, &report)?.display());
    Ok(())
}
