//! The chaos soak: the lab under constant load (a new-connection loop,
//! kept-alive connections, UDP flows) with a fault injected every few
//! seconds ([`faults`]), and invariants ([`verdict`]) checked over the whole
//! run: no established flow on a healthy region breaks or moves; every
//! outage of new requests is explained by a region failure and lasts under
//! a second; redirectord never panics or dies by itself; nothing is left
//! behind.

pub mod faults;
pub mod traffic;
pub mod verdict;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    net::SocketAddr,
    os::unix::fs::MetadataExt,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use anyhow::Result;
use redirector_proto::model::RegionStatus;

use self::{
    faults::Chaos,
    traffic::{TrafficLog, Workers},
    verdict::{during, judge, Fault, FaultKind, Trouble, SINGLE_LOSS_EVERY},
};
use crate::{
    client::{self, Measurement},
    fuzz::mix,
    lab::{wait_for, Lab, LabOptions, UDP_PORT},
    netns::{run, unique_name},
};

pub struct SoakOptions {
    pub duration: Duration,
    pub seed: u64,
    /// The kinds of fault to inject, chosen among at random. None: the
    /// control run, the same lab and traffic without faults, which tells
    /// what the traffic sees when nothing goes wrong.
    pub kinds: Vec<FaultKind>,
}

/// Kept-alive connections and how often each asks.
const KEPT: usize = 10;
const KEPT_PAUSE: Duration = Duration::from_millis(100);
/// UDP flows and how often each sends.
const UDP_FLOWS: usize = 4;
const UDP_PAUSE: Duration = Duration::from_millis(20);
/// A new request's connect and answer: long enough that two cores shared
/// by every process of the soak (debug builds in the test run) do not fail
/// one by being slow, short enough that a region failure worked around in
/// 0.4 s stays well under `MAX_OUTAGE` (a request sent just before the
/// switch times out, the next succeeds).
const REQUEST_TIMEOUT: Duration = Duration::from_millis(300);
/// The longest a region may take to be up again after a repair.
const RECOVERY: Duration = Duration::from_secs(15);
/// At the defaults (100 ms probes, fall 3) a region failure must be worked
/// around within this.
const MAX_OUTAGE: Duration = Duration::from_secs(1);

pub struct SoakReport {
    pub seed: u64,
    pub elapsed: Duration,
    pub faults: Vec<Fault>,
    pub new_requests: client::Report,
    pub kept: TrafficLog,
    pub udp: TrafficLog,
    /// The gateway's packet counters at the end, by reason (they live in
    /// the pinned maps, so they span the daemon's restarts).
    pub packets: Vec<(String, u64)>,
    /// Non-zero drop and error counters of the lab's interfaces
    /// (`ethtool -S`), "namespace/interface counter value": where a packet
    /// the gateway's program forwarded may still have been lost.
    pub interface_drops: Vec<String>,
    /// Single losses no fault explains, within the tolerance.
    pub tolerated: Vec<String>,
    /// Every invariant that did not hold, one line each.
    pub violations: Vec<String>,
}

pub fn soak(options: &SoakOptions) -> Result<SoakReport> {
    let prefix = unique_name("rds");
    let lab_options = LabOptions {
        heartbeat: true,
        heartbeat_key: true,
        udp_service: true,
        // Regions fail here ten times a minute, far more often than a flap
        // limit is meant to allow.
        max_switches_per_minute: 1000,
        // A region failure leaves the connections it cut established on
        // the region; a new connection reusing one's port would wait a
        // second for its SYN retransmission, long after the failure (seen
        // 4 times in 30 minutes before this). Servers in the field time
        // out idle connections; the soak's kept ones ask every 100 ms.
        region_idle_reset: Some(Duration::from_secs(2)),
        ..LabOptions::default()
    };
    let mut lab = Lab::new(&prefix, lab_options)?;
    let namespaces = namespace_inodes(&prefix)?;
    anyhow::ensure!(namespaces.len() == 5, "the lab's namespaces: found {} of 5", namespaces.len());
    let pins = lab.gateway.pins.0.clone();
    let mut violations = Vec::new();
    lab.start_daemon()?;
    lab.wait_active("region2", Duration::from_secs(5))?;

    let vip = lab.vip();
    let udp_target = SocketAddr::new(vip.ip(), UDP_PORT);
    let client_ns = lab.topo.client.name().to_string();
    let limit = options.duration + Duration::from_secs(60);
    let t0 = Instant::now();
    let measuring = Measurement::start(
        &lab.topo.client,
        vip,
        client::Options { timeout: REQUEST_TIMEOUT, pacing: client::Pacing::Sequential { pause: Duration::from_millis(10) }, max_duration: limit, max_requests: u64::MAX },
    );
    let measuring_offset = t0.elapsed();
    let kept = Workers::kept(&client_ns, vip, KEPT, KEPT_PAUSE, t0, limit);
    let udp = Workers::udp(&client_ns, udp_target, UDP_FLOWS, UDP_PAUSE, t0, limit);

    let faults = if options.kinds.is_empty() {
        thread::sleep(options.duration.saturating_sub(Duration::from_secs(2)));
        Vec::new()
    } else {
        inject_faults(&mut lab, options, t0, &mut violations)
    };

    thread::sleep(Duration::from_secs(2));
    let mut new_requests = measuring.stop()?;
    for outage in &mut new_requests.outages {
        outage.from += measuring_offset;
        outage.to += measuring_offset;
    }
    let (kept, udp) = (kept.stop(), udp.stop());
    let elapsed = t0.elapsed();

    let tolerated = check_traffic(&faults, &new_requests, &kept, &udp, &mut violations);
    let packets = lab.metrics().map(|text| packet_counters(&text)).unwrap_or_else(|e| {
        violations.push(format!("reading the metrics at the end: {e:#}"));
        Vec::new()
    });
    let interface_drops = interface_drops(&lab);
    let log = lab.daemon_log();
    for line in log.lines().filter(|l| l.contains("panicked")) {
        violations.push(format!("redirectord panicked: {line}"));
    }
    if lab.daemon_pid().is_some() {
        lab.stop_daemon(libc::SIGTERM)?;
    }
    drop(lab);
    violations.extend(leaks(&prefix, &namespaces, &pins)?);
    Ok(SoakReport { seed: options.seed, elapsed, faults, new_requests, kept, udp, packets, interface_drops, tolerated, violations })
}

/// One fault after another until the soak's time is up, each repaired and
/// recovered from before the next; what ran when.
fn inject_faults(lab: &mut Lab, options: &SoakOptions, t0: Instant, violations: &mut Vec<String>) -> Vec<Fault> {
    let mut chaos = Chaos::new(lab);
    let mut random = options.seed;
    let mut next = |n: u64| {
        random = random.wrapping_add(1);
        mix(random) % n
    };
    let mut faults = Vec::new();
    thread::sleep(Duration::from_secs(2));
    while t0.elapsed() + Duration::from_secs(8) < options.duration {
        let kind = options.kinds[next(options.kinds.len() as u64) as usize];
        // The region taking new flows half the time.
        let region = [2, 2, 1, 3][next(4) as usize];
        let hold = Duration::from_millis(match kind {
            FaultKind::Reload => 0,
            FaultKind::DaemonKilled => 200 + next(800),
            _ => 1000 + next(1500),
        });
        let start = t0.elapsed();
        if let Err(e) = chaos.inject(lab, kind, region) {
            violations.push(format!("{start:.1?}: injecting {} on region{region}: {e:#}", kind.name()));
        }
        thread::sleep(hold);
        if let Err(e) = chaos.repair(lab, kind, region) {
            violations.push(format!("{:.1?}: repairing {} on region{region}: {e:#}", t0.elapsed(), kind.name()));
        }
        let end = t0.elapsed();
        faults.push(Fault { kind, region: Some(region), start, end });
        if let Err(e) = recovered(lab) {
            violations.push(format!("{:.1?} after {} on region{region}: {e:#}", t0.elapsed(), kind.name()));
        }
        thread::sleep(Duration::from_millis(500 + next(1000)));
    }
    faults
}

/// Waits until redirectord runs and every region is up again.
fn recovered(lab: &mut Lab) -> Result<()> {
    if let Some(status) = lab.daemon_exited()? {
        let log = lab.daemon_log();
        lab.start_daemon()?;
        anyhow::bail!("redirectord exited by itself ({status}); log tail: {}", tail(&log, 5));
    }
    wait_for(RECOVERY, || {
        let status = lab.status()?;
        let down: Vec<&str> =
            status.regions.iter().filter(|r| r.state != RegionStatus::Up).map(|r| r.name.as_str()).collect();
        anyhow::ensure!(down.is_empty(), "regions not up: {down:?}");
        Ok(())
    })
}

/// Every veth of the lab's namespaces: its non-zero drop and error
/// counters.
fn interface_drops(lab: &Lab) -> Vec<String> {
    let mut namespaces = vec![&lab.topo.client, &lab.topo.gateway];
    namespaces.extend(lab.topo.regions.iter().map(|r| &r.ns));
    let mut drops = Vec::new();
    for ns in namespaces {
        let Ok(links) = ns.exec("ip", &["-o", "link", "show", "type", "veth"]) else { continue };
        for link in links.lines() {
            let Some(name) = link.split(": ").nth(1).map(|n| n.split('@').next().unwrap_or(n)) else { continue };
            let Ok(stats) = ns.exec("ethtool", &["-S", name]) else { continue };
            drops.extend(drop_counters(&stats).map(|(counter, n)| format!("{}/{name} {counter} {n}", ns.name())));
        }
    }
    drops
}

/// `ethtool -S` lines naming a drop or an error, the non-zero ones.
fn drop_counters(stats: &str) -> impl Iterator<Item = (&str, u64)> {
    stats.lines().filter_map(|line| {
        let (counter, value) = line.trim().split_once(": ")?;
        let value: u64 = value.trim().parse().ok()?;
        ((counter.contains("drop") || counter.contains("err")) && value > 0).then_some((counter, value))
    })
}

/// `redirector_packets_total{reason="..."} N` lines, the non-zero ones.
fn packet_counters(metrics: &str) -> Vec<(String, u64)> {
    metrics
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("redirector_packets_total{reason=\"")?;
            let (reason, value) = rest.split_once("\"} ")?;
            let value: u64 = value.trim().parse().ok()?;
            (value > 0).then(|| (reason.to_string(), value))
        })
        .collect()
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join(" | ")
}

/// Pushes the traffic's violations; returns the single losses tolerated
/// ([`verdict::judge`]).
fn check_traffic(
    faults: &[Fault],
    new_requests: &client::Report,
    kept: &TrafficLog,
    udp: &TrafficLog,
    violations: &mut Vec<String>,
) -> Vec<String> {
    let outages: Vec<Trouble> = new_requests
        .outages
        .iter()
        .map(|o| Trouble {
            from: o.from,
            to: o.to,
            region: None,
            what: format!("new requests failed for {:?} ({} requests)", o.t_un(), o.failed_requests),
            single: o.failed_requests == 1,
        })
        .collect();
    for (outage, trouble) in new_requests.outages.iter().zip(&outages) {
        if outage.t_un() >= MAX_OUTAGE {
            violations.push(format!("at {:.1?}: {}: over {MAX_OUTAGE:?}", outage.from, trouble.what));
        }
    }
    let describe = |kind: &str, t: &Trouble| {
        format!("{kind}, {:.1?} to {:.1?}: {}; no region failure explains it, during: {}", t.from, t.to, t.what, during(faults, t.from, t.to))
    };
    let mut tolerated = Vec::new();
    for (kind, troubles, sent) in [
        ("new requests", &outages, new_requests.requests()),
        ("kept connections", &kept.troubles, kept.answered + kept.lost),
        ("UDP flows", &udp.troubles, udp.answered + udp.lost + udp.late),
        ("UDP flows", &udp.moves, 0),
    ] {
        let (broken, singles) = judge(faults, troubles, sent);
        violations.extend(broken.into_iter().map(|t| describe(kind, t)));
        tolerated.extend(singles.into_iter().map(|t| describe(kind, t)));
    }
    // A kept TCP connection answered by another region was re-steered to
    // one that cannot know it: never right.
    for t in &kept.moves {
        violations.push(format!("at {:.1?}: {}", t.from, t.what));
    }
    tolerated
}

/// The inode of each of the lab's namespaces: a process still in one after
/// the lab is gone was left behind.
fn namespace_inodes(prefix: &str) -> Result<Vec<u64>> {
    let mut inodes = Vec::new();
    for entry in fs::read_dir("/run/netns")? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with(prefix) {
            inodes.push(fs::metadata(entry.path())?.ino());
        }
    }
    Ok(inodes)
}

/// Namespaces, pins and processes the soak left.
fn leaks(prefix: &str, namespaces: &[u64], pins: &Path) -> Result<Vec<String>> {
    let mut leaks = Vec::new();
    let listed = run("ip", &["netns", "list"])?;
    leaks.extend(listed.lines().filter(|l| l.starts_with(prefix)).map(|l| format!("namespace left: {l}")));
    if pins.exists() {
        leaks.push(format!("pins left: {}", pins.display()));
    }
    for entry in fs::read_dir("/proc")? {
        let entry = entry?;
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(link) = fs::read_link(entry.path().join("ns/net")) else { continue };
        let inode = link.to_string_lossy().trim_start_matches("net:[").trim_end_matches(']').parse::<u64>();
        if inode.is_ok_and(|i| namespaces.contains(&i)) {
            let cmdline = fs::read_to_string(entry.path().join("cmdline")).unwrap_or_default().replace('\0', " ");
            leaks.push(format!("process left in a lab namespace: {pid} {cmdline}"));
        }
    }
    Ok(leaks)
}

impl SoakReport {
    pub fn markdown(&self) -> String {
        let mut out = format!(
            "Chaos soak{}, seed {}: {:.0} s, {} faults\n\n| fault | times |\n|---|---:|\n",
            if self.faults.is_empty() { " (calm: no faults)" } else { "" },
            self.seed,
            self.elapsed.as_secs_f64(),
            self.faults.len()
        );
        let mut counts: BTreeMap<FaultKind, usize> = BTreeMap::new();
        for f in &self.faults {
            *counts.entry(f.kind).or_default() += 1;
        }
        for (kind, n) in counts {
            let _ = writeln!(out, "| {} | {n} |", kind.name());
        }
        let r = &self.new_requests;
        let outages: Vec<String> = r.outages.iter().map(|o| format!("{:?}", o.t_un())).collect();
        let _ = write!(
            out,
            "\n| traffic | flows | answered | lost | late | breaks or gaps | moves |\n|---|---:|---:|---:|---:|---:|---:|\n\
             | new connections (one request each) | {} | {} | {} | | {} outages, longest {:?} | |\n",
            r.requests(),
            r.successes,
            r.failures,
            r.outages.len(),
            r.max_t_un(),
        );
        for (name, log) in [("kept-alive HTTP connections", &self.kept), ("UDP flows", &self.udp)] {
            let _ = writeln!(
                out,
                "| {name} | {} | {} | {} | {} | {} | {} |",
                log.flows,
                log.answered,
                log.lost,
                log.late,
                log.troubles.len(),
                log.moves.len()
            );
        }
        let counters: Vec<String> = self.packets.iter().map(|(reason, n)| format!("{reason} {n}")).collect();
        let _ = writeln!(out, "\nThe gateway's packets by reason: {}", counters.join(", "));
        let drops = if self.interface_drops.is_empty() { "none".to_string() } else { self.interface_drops.join(", ") };
        let _ = writeln!(out, "\nDrops and errors counted by the lab's interfaces: {drops}");
        let _ = writeln!(out, "\nOutages of new requests: {}", if outages.is_empty() { "none".into() } else { outages.join(", ") });
        let _ = writeln!(
            out,
            "\nSingle losses no fault explains, tolerated (up to 1 per {SINGLE_LOSS_EVERY} of a kind): {}",
            self.tolerated.len()
        );
        for t in &self.tolerated {
            let _ = writeln!(out, "- {t}");
        }
        let _ = writeln!(out, "\nInvariants violated: {}", self.violations.len());
        for v in &self.violations {
            let _ = writeln!(out, "- {v}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_counters_are_the_non_zero_reasons() {
        let metrics = "# TYPE redirector_packets_total counter\n\
                       redirector_packets_total{reason=\"forwarded\"} 12\n\
                       redirector_packets_total{reason=\"drop_no_region\"} 0\n\
                       redirector_packets_total{reason=\"replied\"} 9\n\
                       redirector_switches_total{service=\"web\"} 3\n";
        assert_eq!(packet_counters(metrics), vec![("forwarded".to_string(), 12), ("replied".to_string(), 9)]);
    }

    #[test]
    fn drop_counters_are_the_non_zero_drops_and_errors() {
        let stats = "NIC statistics:\n     peer_ifindex: 2\n     rx_queue_0_drops: 3\n     rx_queue_0_xdp_packets: 90\n     \
                     tx_queue_0_xdp_xmit_errors: 0\n     rx_queue_0_xdp_tx_errors: 1\n";
        assert_eq!(drop_counters(stats).collect::<Vec<_>>(), [("rx_queue_0_drops", 3), ("rx_queue_0_xdp_tx_errors", 1)]);
    }
}
