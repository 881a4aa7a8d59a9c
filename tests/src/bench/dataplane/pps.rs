//! Small UDP packets from the client through the gateway to the region, as
//! fast as the gateway takes them, and the CPU time the gateway spends on
//! each.
//!
//! The generator is the kernel's BPF_PROG_TEST_RUN in live-frames mode on
//! the client's interface: it sends frames out of a recycled page pool with
//! no socket, no skb and no copy, about 100 ns a frame here, the cheapest
//! sender the kernel has (no pktgen in this kernel; xdp-trafficgen does not
//! run on it). The region drops the frames in XDP; its veth counts them.
//!
//! A veth hands a frame to its peer in the sender's softirq: left alone,
//! generator, gateway and region would take turns on one core and the rate
//! would say little about the gateway. Threaded NAPI gives the gateway's
//! client side and the region each a kernel thread instead. The gateway's
//! thread runs the gateway's whole share of the work (receive, its program
//! or the kernel's forwarding path, the hand-over to the region's veth) and
//! is pinned, with Open vSwitch's daemons in B, to a core of its own, as on
//! a box whose traffic comes from elsewhere; the generator and the region,
//! at real-time priority so its ring never overflows and wastes the
//! gateway's work, share the other core.

use std::{
    net::IpAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use aya::{
    maps::{Array, MapData, PerCpuArray},
    programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp},
    Ebpf,
};

use super::{gateways::link_mac, DISCARD_PORT};
use crate::{
    baseline,
    frames::{Frame, Mac, L4},
    lab::wait_for,
    netns::Netns,
    topology::{Topology, CLIENT_ADDR, CLIENT_ADDR6, CLIENT_IFACE},
    xdp::{interrupted, xdp_md},
};

/// Small UDP packets: over IPv4 the 60-byte minimum Ethernet frame (64 on
/// a wire); over IPv6 its headers alone take 62 bytes, and a frame has no
/// payload.
const FRAME_LEN4: usize = 60;
const FRAME_LEN6: usize = 62;
/// Ethernet + IP + UDP: what the generator stamps on every frame.
const HEADERS4: usize = 42;
const HEADERS6: usize = 62;
/// Frames the kernel sends per batch (its default: one NAPI budget).
const BATCH: u32 = 64;
/// Each BPF_PROG_TEST_RUN call ends with a wait for an RCU grace period
/// (the page pool's teardown): calls of about this long keep that wait a
/// small share of the time, and still end soon after the window.
const CALL: Duration = Duration::from_millis(100);

const GATEWAY_CPU: usize = 1;
pub const TRAFFIC_CPU: usize = 0;

#[derive(Clone, Copy, Debug)]
pub struct PacketRate {
    /// Frames the generator sent, per second, over the same window.
    pub offered: f64,
    /// Frames that reached the region, per second.
    pub delivered: f64,
    /// Generated frames the region's sink dropped over the window: unlike
    /// the veth's receive count, no ARP or IPv6 neighbour traffic among them.
    pub discarded: u64,
    /// CPU time the gateway spent per delivered frame.
    pub gateway_ns: f64,
}

#[derive(Clone, Copy, Debug)]
pub struct Window {
    pub warm_up: Duration,
    pub length: Duration,
}

/// Small UDP packets to `target` (sent to the MAC `next_hop`), from the
/// client's address of its family, over the window; `gateway_pids` are
/// processes doing the gateway's work besides the kernel.
pub fn packet_rate(topo: &Topology, next_hop: Mac, target: IpAddr, gateway_pids: &[u32], window: Window) -> Result<PacketRate> {
    let region = &topo.regions[0].ns;
    let _sink = {
        let _inside = region.enter()?;
        baseline::attach("udp_discard", &["eth0"])?
    };
    let _gro = GroOn::set(&topo.gateway, CLIENT_IFACE)?;
    let gateway_thread = NapiThread::start(&topo.gateway, CLIENT_IFACE)?;
    let region_thread = NapiThread::start(region, "eth0")?;
    let gateway: Vec<u32> = std::iter::once(gateway_thread.pid).chain(gateway_pids.iter().copied()).collect();
    let _pinned = Pinned::new(&gateway, GATEWAY_CPU)?;
    pin(region_thread.pid, TRAFFIC_CPU)?;
    let param = libc::sched_param { sched_priority: 50 };
    if unsafe { libc::sched_setscheduler(region_thread.pid as libc::pid_t, libc::SCHED_FIFO, &param) } != 0 {
        bail!("real-time priority for the region's NAPI thread: {}", std::io::Error::last_os_error());
    }

    let client_mac = link_mac(&topo.client, "eth0")?;
    let frame = |source: IpAddr, len: usize, headers: usize| {
        let mut frame = Frame::new(source, target, L4::udp(40_000, DISCARD_PORT));
        (frame.src_mac, frame.dst_mac) = (client_mac, next_hop);
        frame.payload = vec![0; len - headers];
        frame.bytes()
    };
    let generator = match target {
        IpAddr::V4(_) => {
            let frame = frame(CLIENT_ADDR.into(), FRAME_LEN4, HEADERS4);
            Generator::start::<HEADERS4>(&topo.client, &frame, "udp_generator", "TEMPLATE4")?
        }
        IpAddr::V6(_) => {
            let frame = frame(CLIENT_ADDR6.into(), FRAME_LEN6, HEADERS6);
            Generator::start::<HEADERS6>(&topo.client, &frame, "udp6_generator", "TEMPLATE6")?
        }
    };
    thread::sleep(window.warm_up);
    // The sink's count is read around the timed counters, not between them.
    let drops = sink_drops(region)?;
    let (sent, packets, cpu, from) = (generator.frames()?, rx_packets(region)?, cpu_time(&gateway)?, Instant::now());
    thread::sleep(window.length);
    let (sent, delivered, busy, elapsed) = (
        generator.frames()?.saturating_sub(sent),
        rx_packets(region)?.saturating_sub(packets),
        cpu_time(&gateway)?.saturating_sub(cpu),
        from.elapsed(),
    );
    let discarded = sink_drops(region)?.saturating_sub(drops);
    generator.stop()?;
    Ok(PacketRate {
        offered: sent as f64 / elapsed.as_secs_f64(),
        delivered: delivered as f64 / elapsed.as_secs_f64(),
        discarded,
        gateway_ns: busy.as_nanos() as f64 / delivered.max(1) as f64,
    })
}

/// The generator on its own thread in the client's namespace.
struct Generator {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<Result<()>>>,
    /// Frames made so far, as the generator program counts them.
    generated: PerCpuArray<MapData, u64>,
}

impl Generator {
    /// Runs `program`, which stamps the first `HEADERS` bytes of `frame`
    /// from its map `template` on every frame it sends.
    fn start<const HEADERS: usize>(client: &Netns, frame: &[u8], program: &'static str, template: &str) -> Result<Self> {
        let mut ebpf = baseline::load(program)?;
        let mut headers: Array<_, [u8; HEADERS]> = Array::try_from(
            ebpf.map_mut(template).with_context(|| format!("no {template} map in the baseline object"))?,
        )?;
        headers.set(0, <[u8; HEADERS]>::try_from(&frame[..HEADERS])?, 0)?;
        let generated =
            PerCpuArray::try_from(ebpf.take_map("GENERATED").context("no GENERATED map in the baseline object")?)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (ns, frame, flag) = (client.name().to_string(), frame.to_vec(), stop.clone());
        let thread = thread::spawn(move || generate(&ns, &ebpf, program, &frame, &flag));
        Ok(Self {
            stop,
            thread: Some(thread),
            generated,
        })
    }

    fn frames(&self) -> Result<u64> {
        Ok(self.generated.get(&0, 0)?.iter().sum())
    }

    fn stop(mut self) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().expect("generator thread panicked")
    }
}

impl Drop for Generator {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs until told to stop, a minute at most.
fn generate(ns: &str, ebpf: &Ebpf, program: &str, frame: &[u8], stop: &AtomicBool) -> Result<()> {
    let _inside = Netns::attach(ns)?.enter()?;
    pin_task(0, TRAFFIC_CPU)?;
    let program: &Xdp = ebpf.program(program).context("no generator")?.try_into()?;
    let ifindex = redirector::dataplane::ifindex("eth0")?;
    let ctx = xdp_md(frame.len(), ifindex);
    let started = Instant::now();
    let mut repeat = 1u32 << 14;
    while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(60) {
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.ctx_in = Some(&ctx);
        opts.repeat = repeat;
        opts.attrs = TestRunAttrs::new().xdp_live_frames(BATCH);
        let call = Instant::now();
        match program.test_run(opts) {
            Ok(_) => {}
            // The frames it sent are counted all the same.
            Err(e) if interrupted(&e) => continue,
            Err(e) => return Err(e).context("BPF_PROG_TEST_RUN in live-frames mode"),
        }
        let scaled = f64::from(repeat) * CALL.as_secs_f64() / call.elapsed().as_secs_f64().max(1e-6);
        repeat = scaled.clamp(f64::from(1u32 << 14), f64::from(1u32 << 24)) as u32;
    }
    Ok(())
}

/// Frames the region's eth0 has received, as its driver counts them.
fn rx_packets(region: &Netns) -> Result<u64> {
    let out = region.ip(&["-j", "-s", "link", "show", "dev", "eth0"])?;
    let links: serde_json::Value = serde_json::from_str(&out)?;
    links[0]["stats64"]["rx"]["packets"]
        .as_u64()
        .with_context(|| format!("no rx counter for eth0 in {out}"))
}

/// Frames the XDP program on the region's eth0 (`udp_discard`) dropped,
/// over all its receive queues: only the generator's.
fn sink_drops(region: &Netns) -> Result<u64> {
    let out = region.exec("ethtool", &["-S", "eth0"])?;
    let counts: Vec<u64> = out
        .lines()
        .filter_map(|l| l.trim().strip_prefix("rx_queue_")?.split_once("_xdp_drops: "))
        .map(|(_, n)| n.parse())
        .collect::<Result<_, _>>()?;
    ensure!(!counts.is_empty(), "no XDP drop counter for eth0 in {out}");
    Ok(counts.iter().sum())
}

/// GRO on a veth for as long as this lives: it gives the veth NAPI, without
/// which frames sent by XDP (the generator's) are dropped on arrival. B
/// runs its gateway without (Open vSwitch forwards GRO's aggregates whole,
/// too big for the other side), so the previous setting comes back.
struct GroOn<'a> {
    ns: &'a Netns,
    iface: &'a str,
    was_on: bool,
}

impl<'a> GroOn<'a> {
    fn set(ns: &'a Netns, iface: &'a str) -> Result<Self> {
        let features = ns.exec("ethtool", &["-k", iface])?;
        let was_on = features.lines().any(|l| l.trim() == "generic-receive-offload: on");
        ns.exec("ethtool", &["-K", iface, "gro", "on"])?;
        Ok(Self { ns, iface, was_on })
    }
}

impl Drop for GroOn<'_> {
    fn drop(&mut self) {
        if !self.was_on {
            let _ = self.ns.exec("ethtool", &["-K", self.iface, "gro", "off"]);
        }
    }
}

/// Threaded NAPI on a veth for as long as this lives, and the kernel
/// thread that polls it.
struct NapiThread<'a> {
    ns: &'a Netns,
    iface: &'a str,
    pid: u32,
}

impl<'a> NapiThread<'a> {
    fn start(ns: &'a Netns, iface: &'a str) -> Result<Self> {
        // The thread is "napi/<iface>-<id>", cut to the 15 characters of a
        // task name; other namespaces may have an `iface` too, so it is the
        // one that was not there before.
        let name: String = format!("napi/{iface}-").chars().take(15).collect();
        let before = napi_threads(&name)?;
        // Made first: threading goes off again if what follows fails.
        let mut thread = Self { ns, iface, pid: 0 };
        set_threaded(ns, iface, true)?;
        wait_for(Duration::from_secs(2), || {
            thread.pid = napi_threads(&name)?
                .into_iter()
                .find(|p| !before.contains(p))
                .context("no NAPI thread yet")?;
            Ok(())
        })
        .with_context(|| format!("threaded NAPI on {iface} in {}", ns.name()))?;
        Ok(thread)
    }
}

impl Drop for NapiThread<'_> {
    fn drop(&mut self) {
        let _ = set_threaded(self.ns, self.iface, false);
    }
}

/// Writes /sys/class/net/<iface>/threaded. /sys shows the network
/// namespace of whoever mounted it, so the write goes through a sysfs
/// mounted inside the namespace, in a mount namespace of its own.
fn set_threaded(ns: &Netns, iface: &str, on: bool) -> Result<()> {
    let script = format!("mount -t sysfs sysfs /sys && echo {} > /sys/class/net/{iface}/threaded", u8::from(on));
    ns.exec("unshare", &["--mount", "sh", "-c", &script])?;
    Ok(())
}

/// Kernel threads whose name starts with `prefix`.
fn napi_threads(prefix: &str) -> Result<Vec<u32>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let Some(pid) = entry?.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.starts_with(prefix) {
            found.push(pid);
        }
    }
    Ok(found)
}

/// CPU time of every thread of `pids` so far: the scheduler's nanosecond
/// count, not the tick-sampled one. (This kernel does no separate IRQ time
/// accounting: softirq work done in a thread's context counts as its own.)
fn cpu_time(pids: &[u32]) -> Result<Duration> {
    let mut total = 0u64;
    for pid in pids {
        for task in tasks(*pid)? {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{task}/schedstat")).unwrap_or_default();
            total += stat.split_whitespace().next().and_then(|ns| ns.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    Ok(Duration::from_nanos(total))
}

/// Processes kept on one core until this drops, when they may run anywhere
/// again (Open vSwitch serves the other tests after this one).
struct Pinned(Vec<u32>);

impl Pinned {
    fn new(pids: &[u32], cpu: usize) -> Result<Self> {
        let pinned = Self(pids.to_vec());
        for pid in pids {
            pin(*pid, cpu)?;
        }
        Ok(pinned)
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        for pid in &self.0 {
            for task in tasks(*pid).unwrap_or_default() {
                let _ = set_affinity(task, &(0..cpus()).collect::<Vec<_>>());
            }
        }
    }
}

/// Every thread of process (or kernel thread) `pid` to `cpu` only.
fn pin(pid: u32, cpu: usize) -> Result<()> {
    for task in tasks(pid)? {
        pin_task(task, cpu)?;
    }
    Ok(())
}

/// Task `tid` (0: the calling thread) to `cpu` only; on a single core
/// nothing moves.
pub fn pin_task(tid: libc::pid_t, cpu: usize) -> Result<()> {
    if cpus() < 2 {
        return Ok(());
    }
    set_affinity(tid, &[cpu])
}

fn set_affinity(tid: libc::pid_t, cpus: &[usize]) -> Result<()> {
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for cpu in cpus {
        unsafe { libc::CPU_SET(*cpu, &mut set) };
    }
    if unsafe { libc::sched_setaffinity(tid, std::mem::size_of_val(&set), &set) } != 0 {
        bail!("setting the CPUs of task {tid}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

fn cpus() -> usize {
    thread::available_parallelism().map_or(1, |n| n.get())
}

fn tasks(pid: u32) -> Result<Vec<libc::pid_t>> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/task")).with_context(|| format!("process {pid} is gone"))?;
    Ok(dir
        .filter_map(|t| t.ok()?.file_name().to_str()?.parse().ok())
        .collect())
}
