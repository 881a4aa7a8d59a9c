//! ns/packet of each packet path through BPF_PROG_TEST_RUN, next to a bare
//! XDP_TX program measured in the same run.
//!
//! Paths are measured in interleaved rounds (A B C ... A B C ...) so drift
//! of the machine hits all alike; the table gives each path's median round.
//! The kernel runs the repeats on one buffer without resetting it, so the
//! measured flows go to region 2, which serves at the VIP's own address (the
//! reference deployment): the rewrite writes back equal values and every
//! repeat takes the whole path again (lookups, checksum arithmetic, FIB,
//! MAC rewrite, redirect). The new-flow path cannot repeat one frame (the
//! second run would find the flow), so it runs distinct frames one call each
//! and reports the mean of the kernel's per-call times, which carry the
//! timer's own cost. So does the handshake-completing ACK, which moves a
//! new TCP flow to the established table once per connection.

use std::{net::IpAddr, time::Duration};

use anyhow::{ensure, Result};
use aya::programs::Xdp;

use super::{machine, median, write_result};
use crate::{
    baseline,
    frames::{Frame, L4},
    xdp::{client_of, test_run, Gateway, CLIENT_MAC, CLI_MAC, R1, R2, VIP, VIP6, XDP_PASS, XDP_REDIRECT, XDP_TX},
};

pub struct Options {
    /// `--ipv4`: the IPv4 paths only, as a build before IPv6 measures
    /// them (for a before-and-after run against one), written to
    /// xdp-ipv4.md.
    pub ipv4_only: bool,
    pub repeat: u32,
    pub rounds: usize,
    pub new_flows: u16,
}

impl Options {
    pub fn parse(args: &[String]) -> Result<Self> {
        let quick = args.iter().any(|a| a == "--quick");
        let ipv4_only = args.iter().any(|a| a == "--ipv4");
        Ok(if quick {
            Self { ipv4_only, repeat: 100_000, rounds: 3, new_flows: 2_000 }
        } else {
            Self { ipv4_only, repeat: 2_000_000, rounds: 7, new_flows: 20_000 }
        })
    }
}

fn client_frame(dst: impl Into<IpAddr>, l4: L4) -> Vec<u8> {
    let dst = dst.into();
    let mut f = Frame::new(client_of(dst), dst, l4);
    f.src_mac = CLIENT_MAC;
    f.dst_mac = CLI_MAC;
    f.bytes()
}

struct Path {
    name: &'static str,
    ns_per_packet: Vec<f64>,
}

pub fn run(args: &[String]) -> Result<()> {
    let opts = Options::parse(args)?;
    let mut gw = Gateway::new()?;
    gw.select(R2.id)?;
    let bare = baseline::load("bare_tx")?;
    let bare: &Xdp = bare.program("bare_tx").unwrap().try_into()?;

    let established = client_frame(VIP, L4::tcp(50_000, 80));
    handshake(&gw, VIP.into(), 50_000)?;
    let reply = region_frame(R2.addr.into(), L4::tcp(80, 50_000));
    let not_service = client_frame(R1.addr, L4::tcp(50_001, 22));
    let established6 = client_frame(VIP6, L4::tcp(50_000, 80));
    if !opts.ipv4_only {
        handshake(&gw, VIP6.into(), 50_000)?;
    }
    let reply6 = region_frame(R2.addr6.into(), L4::tcp(80, 50_000));
    let not_service6 = client_frame(R1.addr6, L4::tcp(50_001, 22));
    let cli = gw.ifindex("cli");
    let r2 = gw.ifindex(R2.iface);

    let program = gw.dataplane.program();
    let mut cases: Vec<(&str, &Xdp, &[u8], u32, u32)> = vec![
        ("bare XDP_TX program (reference)", bare, &established, cli, XDP_TX),
        ("established flow → region (redirect)", program, &established, cli, XDP_REDIRECT),
        ("reply → client (redirect)", program, &reply, r2, XDP_REDIRECT),
        ("not a service (pass)", program, &not_service, cli, XDP_PASS),
        ("IPv6: established flow → region (redirect)", program, &established6, cli, XDP_REDIRECT),
        ("IPv6: reply → client (redirect)", program, &reply6, r2, XDP_REDIRECT),
        ("IPv6: not a service (pass)", program, &not_service6, cli, XDP_PASS),
    ];
    if opts.ipv4_only {
        cases.retain(|case| !case.0.starts_with("IPv6"));
    }
    let mut paths: Vec<Path> = cases
        .iter()
        .map(|c| Path { name: c.0, ns_per_packet: Vec::new() })
        .collect();
    let mut new_flow = Path { name: "new flow → region (select, pin both ways)", ns_per_packet: Vec::new() };
    let mut promote = Path {
        name: "handshake ACK → region (to the established table)",
        ns_per_packet: Vec::new(),
    };
    let mut next_port = 1u16;
    for _ in 0..opts.rounds {
        for (path, (_, program, frame, ifindex, expected)) in paths.iter_mut().zip(&cases) {
            let (action, _, per_run) = test_run(program, frame, *ifindex, opts.repeat)?;
            ensure!(action == *expected, "{}: action {action}, expected {expected}", path.name);
            path.ns_per_packet.push(nanos(per_run));
        }
        let mut total = 0.0;
        for _ in 0..opts.new_flows {
            let syn = client_frame(VIP, L4::tcp_syn(next_port, 80));
            next_port = next_port.wrapping_add(1).max(1);
            let (action, _, per_run) = test_run(gw.dataplane.program(), &syn, cli, 1)?;
            ensure!(action == XDP_REDIRECT, "new flow: action {action}");
            total += nanos(per_run);
        }
        new_flow.ns_per_packet.push(total / opts.new_flows as f64);
        // The flows just opened: each region answers, and the client's
        // ACK completes the handshake.
        let mut total = 0.0;
        let first = next_port.wrapping_sub(opts.new_flows).max(1);
        for port in (0..opts.new_flows).map(|i| first.wrapping_add(i).max(1)) {
            let synack = region_frame(R2.addr.into(), L4::tcp_synack(80, port, 9_000));
            let (action, ..) = test_run(gw.dataplane.program(), &synack, r2, 1)?;
            ensure!(action == XDP_REDIRECT, "SYN-ACK: action {action}");
            let ack = client_frame(VIP, L4::tcp_ack(port, 80, 9_001));
            let (action, _, per_run) = test_run(gw.dataplane.program(), &ack, cli, 1)?;
            ensure!(action == XDP_REDIRECT, "handshake ACK: action {action}");
            total += nanos(per_run);
        }
        promote.ns_per_packet.push(total / opts.new_flows as f64);
    }
    paths.push(new_flow);
    paths.push(promote);

    let bare_ns = median(&mut paths[0].ns_per_packet.clone());
    let mut table = String::from("| path | ns/packet | × bare XDP_TX |\n|---|---:|---:|\n");
    for path in &mut paths {
        let ns = median(&mut path.ns_per_packet);
        table += &format!("| {} | {ns:.1} | {:.2} |\n", path.name, ns / bare_ns);
    }
    let (family, name) = if opts.ipv4_only { (", IPv4's paths only (`--ipv4`)", "xdp-ipv4") } else { ("", "xdp") };
    let report = format!(
        "# XDP packet path, ns/packet (BPF_PROG_TEST_RUN){family}\n\n\
         Machine: {}\n\n\
         Median of {} interleaved rounds; repeat = {} per measurement \
         (new flows: {} distinct SYNs per round, one call each).\n\n{table}",
        machine(),
        opts.rounds,
        opts.repeat,
        opts.new_flows
    );
    println!("{report}");
    let path = write_result(name, &report)?;
    println!("written to {}", path.display());
    Ok(())
}

/// A frame from region 2 (at `src`, of either family) to the client.
fn region_frame(src: IpAddr, l4: L4) -> Vec<u8> {
    let mut f = Frame::new(src, client_of(src), l4);
    f.src_mac = R2.mac;
    f.dst_mac = R2.iface_mac;
    f.bytes()
}

/// Opens a connection from `port` to `web` on `vip` (region 2's address of
/// its family) and completes its handshake, so its flow is in the
/// established table.
pub fn handshake(gw: &Gateway, vip: IpAddr, port: u16) -> Result<()> {
    let steps = [
        (client_frame(vip, L4::tcp_syn(port, 80)), "cli"),
        (region_frame(vip, L4::tcp_synack(80, port, 9_000)), R2.iface),
        (client_frame(vip, L4::tcp_ack(port, 80, 9_001)), "cli"),
    ];
    for (frame, iface) in steps {
        let (action, ..) = gw.run_repeat(&frame, iface, 1)?;
        ensure!(action == XDP_REDIRECT, "handshake of port {port}: action {action}");
    }
    let established = match vip {
        IpAddr::V4(_) => gw.dataplane.flows()?.iter().any(|(k, _)| k.src_port == port.to_be()),
        IpAddr::V6(_) => gw.dataplane.flows6()?.iter().any(|(k, _)| k.src_port == port.to_be()),
    };
    ensure!(established, "port {port} to {vip} not established");
    Ok(())
}

fn nanos(d: Duration) -> f64 {
    d.as_nanos() as f64
}
