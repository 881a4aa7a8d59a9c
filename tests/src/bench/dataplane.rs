//! Our data plane against its peers on one machine in one run: the same
//! topology (client → gateway → region, in namespaces) and the same traffic
//! through six gateways, run in turn (A B C D E F, repeated) so drift of the
//! machine hits all alike:
//!
//! - A: redirector (XDP, native mode on the veths);
//! - B: Open vSwitch, userspace datapath, with the reference's flows;
//! - C: nftables DNAT with conntrack;
//! - D: kernel routing with no rewrite (reference point);
//! - E: a bare XDP forward (the limit for XDP on this path);
//! - F: A in generic XDP, as on a driver without native XDP.
//!
//! Each run of a variant gets a fresh topology, so nothing one leaves
//! behind (a conntrack entry, a neighbour, an attached program) reaches
//! the next.

mod gateways;
mod ovs;
mod pps;
mod report;
mod traffic;

use std::{path::PathBuf, time::Duration};

use anyhow::{ensure, Context, Result};
use redirector::config::Protocol;

use self::{
    gateways::{Gateway, Variant},
    pps::{PacketRate, Window},
    traffic::{Load, Throughput},
};
use crate::{
    netns::{require_root, unique_name},
    topology::{Topology, CLIENT_IFACE},
};

/// What the traffic uses: the discard port for the packet rate, echo for
/// latency, iperf3's port and HTTP for wrk. A serves each as a service.
pub const DISCARD_PORT: u16 = 9;
pub const ECHO_PORT: u16 = 7;
pub const IPERF_PORT: u16 = 5201;
pub const HTTP_PORT: u16 = 80;
const PORTS: [(Protocol, u16); 4] = [
    (Protocol::Udp, DISCARD_PORT),
    (Protocol::Tcp, ECHO_PORT),
    (Protocol::Tcp, IPERF_PORT),
    (Protocol::Tcp, HTTP_PORT),
];

pub struct Options {
    pub quick: bool,
    pub rounds: usize,
    /// The packet-rate test's warm-up and measuring window.
    pub pps: Window,
    pub round_trips: usize,
    pub iperf_seconds: u32,
    /// wrk runs: (connections, seconds).
    pub loads: Vec<(u32, u32)>,
    /// `--only BD`: these variants only (for a diagnosis; no report).
    pub only: Option<String>,
}

impl Options {
    pub fn parse(args: &[String]) -> Result<Self> {
        let quick = args.iter().any(|a| a == "--quick");
        let only = match args.iter().position(|a| a == "--only") {
            Some(i) => Some(args.get(i + 1).context("--only takes letters, e.g. --only BD")?.to_uppercase()),
            None => None,
        };
        Ok(if quick {
            Self {
                quick,
                rounds: 1,
                pps: Window { warm_up: Duration::from_millis(200), length: Duration::from_millis(500) },
                round_trips: 2_000,
                iperf_seconds: 1,
                loads: vec![(1_000, 1)],
                only,
            }
        } else {
            Self {
                quick,
                rounds: 3,
                pps: Window { warm_up: Duration::from_millis(500), length: Duration::from_secs(3) },
                round_trips: 20_000,
                iperf_seconds: 5,
                loads: vec![(1_000, 5), (10_000, 5)],
                only,
            }
        })
    }

    fn runs(&self, variant: Variant) -> bool {
        self.only.as_ref().is_none_or(|only| only.contains(variant.letter()))
    }
}

/// One variant, one round.
pub struct Measured {
    pub pps: PacketRate,
    /// The same over IPv6, for the variants measured over both families.
    pub pps6: Option<PacketRate>,
    pub tcp: Throughput,
    /// Sorted round-trip times.
    pub rtt: Vec<Duration>,
    pub loads: Vec<Load>,
}

pub fn run(args: &[String]) -> Result<()> {
    require_root();
    let opts = Options::parse(args)?;
    raise_open_files_limit(opts.loads.iter().map(|l| l.0).max().unwrap_or(0))?;
    let mut measured: Vec<(Variant, Vec<Measured>)> = Variant::ALL.iter().map(|v| (*v, Vec::new())).collect();
    for round in 1..=opts.rounds {
        for (variant, rounds) in measured.iter_mut().filter(|(v, _)| opts.runs(*v)) {
            eprintln!("round {round}/{}: {} {}", opts.rounds, variant.letter(), variant.name());
            let m = measure(*variant, &opts).with_context(|| format!("{} {}", variant.letter(), variant.name()))?;
            eprintln!("  {}", report::one_line(&m));
            rounds.push(m);
        }
    }
    if opts.only.is_some() {
        return Ok(());
    }
    let dir = output_dir(opts.quick)?;
    let report = report::write(&dir, &opts, &measured)?;
    println!("{report}");
    println!("written to {}", dir.join("dataplane.md").display());
    Ok(())
}

/// bench/results/ for a full run; a scratch directory for --quick, which
/// checks that the bench works and must not replace measured results.
fn output_dir(quick: bool) -> Result<PathBuf> {
    if !quick {
        return super::results_dir();
    }
    let dir = std::env::temp_dir().join("redirector-bench-dataplane-quick");
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn measure(variant: Variant, opts: &Options) -> Result<Measured> {
    let topo = Topology::build(&unique_name("rdbd"), 1)?;
    prepare(&topo)?;
    let gateway = Gateway::set_up(variant, &topo)?;
    let target = gateway.target;
    let pps = pps::packet_rate(&topo, gateway.next_hop_mac, target.into(), &gateway.processes(), opts.pps)?;
    let pps6 = gateway
        .target6
        .map(|target6| pps::packet_rate(&topo, gateway.next_hop_mac, target6, &gateway.processes(), opts.pps))
        .transpose()
        .context("over IPv6")?;
    let rtt = traffic::latency(&topo, target, opts.round_trips)?;
    let tcp = traffic::tcp_throughput(&topo, target, opts.iperf_seconds)?;
    let _http = traffic::http_server(&topo)?;
    let loads = opts
        .loads
        .iter()
        .map(|&(connections, seconds)| traffic::http_load(&topo, target, connections, seconds))
        .collect::<Result<Vec<_>>>()?;
    let m = Measured { pps, pps6, tcp, rtt, loads };
    forwarded(&m).with_context(|| gateway.diagnosis())?;
    Ok(m)
}

/// What CI asserts of every variant: it carried each kind of traffic. (The
/// latency test has failed already if any exchange went unanswered.)
fn forwarded(m: &Measured) -> Result<()> {
    ensure!(m.pps.discarded > 0, "no generated packet reached the region's sink");
    if let Some(pps6) = m.pps6 {
        ensure!(pps6.discarded > 0, "no generated IPv6 packet reached the region's sink");
    }
    ensure!(m.tcp.bytes > 0, "iperf3 moved no byte");
    for load in &m.loads {
        ensure!(load.requests > 0, "wrk with {} connections: no request answered", load.connections);
    }
    Ok(())
}

/// Settings every variant shares. GRO on the gateway's veths gives them
/// NAPI, which frames sent by XDP (the generator's) need to be received;
/// a real NIC has both anyway. Thousands of connections need ports on the
/// client and a deep accept queue in the region.
fn prepare(topo: &Topology) -> Result<()> {
    for iface in [CLIENT_IFACE, topo.regions[0].gateway_iface.as_str()] {
        topo.gateway.exec("ethtool", &["-K", iface, "gro", "on"])?;
    }
    topo.client.sysctl("net.ipv4.ip_local_port_range", "1024 65535")?;
    let region = &topo.regions[0].ns;
    region.sysctl("net.core.somaxconn", "65535")?;
    region.sysctl("net.ipv4.tcp_max_syn_backlog", "65535")?;
    Ok(())
}

/// Its output goes nowhere: a tool we read the result of otherwise, or a
/// daemon that logs to its files.
fn quiet(mut cmd: std::process::Command) -> std::process::Command {
    cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    cmd
}

/// wrk holds one descriptor per connection and inherits our limit: take
/// the whole hard limit (raising it needs CAP_SYS_RESOURCE, which a
/// container may not grant).
fn raise_open_files_limit(connections: u32) -> Result<()> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    ensure!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0, "getrlimit");
    limit.rlim_cur = limit.rlim_max;
    ensure!(
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } == 0,
        "raising RLIMIT_NOFILE to {}: {}",
        limit.rlim_max,
        std::io::Error::last_os_error()
    );
    let needed = libc::rlim_t::from(connections) + 100;
    ensure!(
        limit.rlim_cur >= needed,
        "wrk needs {needed} open files, the hard limit is {}",
        limit.rlim_max
    );
    Ok(())
}
