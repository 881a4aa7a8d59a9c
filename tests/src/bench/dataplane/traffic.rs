//! Request/response latency, TCP throughput and HTTP load from the client
//! through the gateway to the region, with real kernel sockets and tools.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};

use super::{ECHO_PORT, HTTP_PORT, IPERF_PORT};
use crate::{
    inns,
    lab::{binary, wait_for, Process},
    netns::Netns,
    topology::Topology,
};

/// Round-trip times of `count` 64-byte request/response exchanges over one
/// TCP connection to an echo server in the region, sorted; the first
/// tenth warms the path and is not counted.
pub fn latency(topo: &Topology, target: Ipv4Addr, count: usize) -> Result<Vec<Duration>> {
    let _server = inns::Server::echo(&topo.regions[0].ns, ECHO_PORT, "")?;
    let ns = topo.client.name().to_string();
    thread::spawn(move || -> Result<Vec<Duration>> {
        let _inside = Netns::attach(&ns)?.enter()?;
        let timeout = Duration::from_secs(2);
        let mut conn = TcpStream::connect_timeout(&SocketAddr::from((target, ECHO_PORT)), timeout)
            .with_context(|| format!("connecting to the echo server at {target}"))?;
        conn.set_nodelay(true)?;
        conn.set_read_timeout(Some(timeout))?;
        let (request, mut response) = ([0x5a_u8; 64], [0u8; 64]);
        let warm_up = count / 10;
        let mut rtts = Vec::with_capacity(count);
        for i in 0..warm_up + count {
            let sent = Instant::now();
            conn.write_all(&request)?;
            conn.read_exact(&mut response).context("reading the echo")?;
            if i >= warm_up {
                rtts.push(sent.elapsed());
            }
        }
        rtts.sort();
        Ok(rtts)
    })
    .join()
    .expect("latency thread panicked")
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Throughput {
    pub bits_per_second: f64,
    pub bytes: u64,
}

/// One iperf3 TCP stream from the client to `target` for `seconds`.
pub fn tcp_throughput(topo: &Topology, target: Ipv4Addr, seconds: u32) -> Result<Throughput> {
    let region = &topo.regions[0].ns;
    let mut server = region.command("iperf3");
    server.args(["--server", "--one-off", "--port", &IPERF_PORT.to_string()]);
    let _server = Process::spawn(quiet(server), "iperf3 server")?;
    wait_listening(region, IPERF_PORT)?;
    let out = bounded(
        &topo.client,
        seconds + 15,
        "iperf3",
        &[
            "--client", &target.to_string(), "--port", &IPERF_PORT.to_string(), "--time", &seconds.to_string(),
            "--connect-timeout", "3000", "--json",
        ],
    )?;
    let report: serde_json::Value = serde_json::from_str(&out).context("reading iperf3's JSON")?;
    let received = &report["end"]["sum_received"];
    Ok(Throughput {
        bits_per_second: received["bits_per_second"].as_f64().unwrap_or(0.0),
        bytes: received["bytes"].as_u64().unwrap_or(0),
    })
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Load {
    pub connections: u32,
    pub requests: u64,
    pub requests_per_second: f64,
    /// connect, read, write and timeout errors, and non-2xx answers.
    pub errors: u64,
}

/// The project's region HTTP server (keep-alive) in the region, for wrk.
pub fn http_server(topo: &Topology) -> Result<Process> {
    let region = &topo.regions[0].ns;
    let mut cmd = region.command(binary("region-http")?.to_str().unwrap());
    cmd.args(["--listen", &format!("0.0.0.0:{HTTP_PORT}"), "--name", "R1"]);
    let server = Process::spawn(quiet(cmd), "region-http")?;
    wait_listening(region, HTTP_PORT)?;
    Ok(server)
}

/// wrk with `connections` connections for `seconds`, two threads.
pub fn http_load(topo: &Topology, target: Ipv4Addr, connections: u32, seconds: u32) -> Result<Load> {
    let out = bounded(
        &topo.client,
        seconds + 30,
        "wrk",
        &[
            "--threads", "2", "--connections", &connections.to_string(), "--duration", &format!("{seconds}s"),
            "--timeout", "5s", &format!("http://{target}:{HTTP_PORT}/"),
        ],
    )?;
    parse_wrk(&out, connections)
}

/// The figures of wrk's plain-text report.
fn parse_wrk(out: &str, connections: u32) -> Result<Load> {
    let mut load = Load { connections, ..Default::default() };
    for line in out.lines().map(str::trim) {
        if let Some(rate) = line.strip_prefix("Requests/sec:") {
            load.requests_per_second = rate.trim().parse()?;
        } else if line.contains(" requests in ") {
            load.requests = line.split_whitespace().next().unwrap_or("0").parse()?;
        } else if let Some(errors) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 12, write 0, timeout 3"
            load.errors += errors
                .split(',')
                .filter_map(|kind| kind.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>();
        } else if let Some(non_2xx) = line.strip_prefix("Non-2xx or 3xx responses:") {
            load.errors += non_2xx.trim().parse::<u64>()?;
        }
    }
    ensure!(load.requests_per_second > 0.0 || out.contains("Requests/sec"), "unreadable wrk report:\n{out}");
    Ok(load)
}

/// Runs `program` in `ns`, killed after `seconds` if it has not ended.
fn bounded(ns: &Netns, seconds: u32, program: &str, args: &[&str]) -> Result<String> {
    let seconds = seconds.to_string();
    let mut full = vec!["--kill-after=5", seconds.as_str(), program];
    full.extend_from_slice(args);
    ns.exec("timeout", &full)
}

fn quiet(mut cmd: std::process::Command) -> std::process::Command {
    cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    cmd
}

fn wait_listening(ns: &Netns, port: u16) -> Result<()> {
    wait_for(Duration::from_secs(5), || {
        let out = ns.exec("ss", &["-Hltn", &format!("sport = :{port}")])?;
        if out.trim().is_empty() {
            bail!("nothing listens on port {port} in {}", ns.name());
        }
        Ok(())
    })
}
