//! Request/response latency, TCP throughput and HTTP load from the client
//! through the gateway to the region, with real kernel sockets and tools.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};

use super::{
    pps::{pin_task, TRAFFIC_CPU},
    quiet, ECHO_PORT, HTTP_PORT, IPERF_PORT,
};
use crate::{
    lab::{binary, wait_for, Process},
    netns::Netns,
    topology::Topology,
};

/// Bytes of each request and of its answer.
const MESSAGE: usize = 64;

/// Round-trip times of `count` 64-byte request/response exchanges over one
/// TCP connection to an echo server in the region, sorted; the first tenth
/// warms the path and is not counted. Fails unless every exchange comes
/// back as sent. Client and server both run on one core, and so does what
/// the gateway does in their softirqs: a wake-up across cores costs this VM
/// tens of µs at random, which would drown what the gateway adds.
pub fn latency(topo: &Topology, target: Ipv4Addr, count: usize) -> Result<Vec<Duration>> {
    let server = echo_server(&topo.regions[0].ns)?;
    let rtts = topo.client.on_thread(|| {
        pin_task(0, TRAFFIC_CPU)?;
        let mut conn = TcpStream::connect_timeout(&SocketAddr::from((target, ECHO_PORT)), TIMEOUT)
            .with_context(|| format!("connecting to the echo server at {target}"))?;
        conn.set_nodelay(true)?;
        conn.set_read_timeout(Some(TIMEOUT))?;
        let (request, mut response) = ([0x5a_u8; MESSAGE], [0u8; MESSAGE]);
        let warm_up = count / 10;
        let mut rtts = Vec::with_capacity(count);
        for i in 0..warm_up + count {
            let sent = Instant::now();
            conn.write_all(&request)?;
            conn.read_exact(&mut response).context("reading the echo")?;
            if i >= warm_up {
                rtts.push(sent.elapsed());
            }
            ensure!(response == request, "the echo is not what was sent");
        }
        rtts.sort();
        Ok(rtts)
    });
    server.join().expect("echo server panicked")?;
    rtts
}

const TIMEOUT: Duration = Duration::from_secs(2);

/// Echoes one connection in `ns`, then ends; listening when this returns.
fn echo_server(ns: &Netns) -> Result<thread::JoinHandle<Result<()>>> {
    // The socket stays in the namespace; the thread serving it need not.
    let listener = ns.on_thread(|| {
        let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, ECHO_PORT))?;
        listener.set_nonblocking(true)?;
        Ok(listener)
    })?;
    Ok(thread::spawn(move || -> Result<()> {
        pin_task(0, TRAFFIC_CPU)?;
        let mut conn = accept_within(&listener, Duration::from_secs(5))?;
        conn.set_nodelay(true)?;
        conn.set_read_timeout(Some(TIMEOUT))?;
        let mut message = [0u8; MESSAGE];
        // Until the client closes (or stalls past the timeout).
        while conn.read_exact(&mut message).is_ok() {
            conn.write_all(&message)?;
        }
        Ok(())
    }))
}

fn accept_within(listener: &TcpListener, limit: Duration) -> Result<TcpStream> {
    let deadline = Instant::now() + limit;
    loop {
        match listener.accept() {
            Ok((conn, _)) => {
                conn.set_nonblocking(false)?;
                return Ok(conn);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(1))
            }
            Err(e) => bail!("echo server: no connection ({e})"),
        }
    }
}

#[derive(Clone, Copy, Debug)]
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

fn wait_listening(ns: &Netns, port: u16) -> Result<()> {
    wait_for(Duration::from_secs(5), || {
        let out = ns.exec("ss", &["-Hltn", &format!("sport = :{port}")])?;
        if out.trim().is_empty() {
            bail!("nothing listens on port {port} in {}", ns.name());
        }
        Ok(())
    })
}
