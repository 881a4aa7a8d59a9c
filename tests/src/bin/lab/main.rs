//! `cargo xtask lab [--keep | --pair] | lab down`: the lab and its scripted
//! demo, or the gateway pair's (`pair.rs`).
//!
//! A client, a gateway and regions 1-3 in network namespaces, an HTTP
//! server ("I am DataVM on R<n>") and a redirector-agent in each region,
//! redirectord in the gateway with examples/lab.toml. The demo shows
//! requests to the VIP answered by region2, an operator switch, a failure
//! with its measured unavailability, and the failback.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::ExitCode,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use redirector::dataplane;
use redirector_tests::{
    client::{get, Measurement, Options},
    lab::{Lab, LabOptions, METRICS},
    netns::run,
};

mod pair;

const PREFIX: &str = "rdlab";

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Between steps: a Ctrl-C ends the demo and everything is taken down.
fn check_interrupt() -> Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

fn config_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/lab.toml")
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    unsafe {
        libc::signal(libc::SIGINT, on_interrupt as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_interrupt as *const () as libc::sighandler_t);
    }
    let result = match args.first().map(String::as_str) {
        Some("down") => down().map(|()| println!("lab removed")),
        None | Some("--keep") => demo(!args.is_empty()),
        Some("--pair") => pair::demo(),
        Some(other) => Err(anyhow::anyhow!("unknown argument {other:?}: lab [--keep | --pair] | lab down")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lab: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Removes what a lab left (a `--keep` run, or one killed outright).
fn down() -> Result<()> {
    let namespaces = run("ip", &["netns", "list"])?;
    for ns in namespaces.lines().filter_map(|l| l.split_whitespace().next()) {
        if ns.starts_with(&format!("{PREFIX}-")) {
            for pid in run("ip", &["netns", "pids", ns])?.split_whitespace() {
                let _ = run("kill", &["-9", pid]);
            }
            run("ip", &["netns", "del", ns])?;
        }
    }
    redirector_tests::lab::remove_cgroups(PREFIX)?;
    let config = redirector::config::Config::load(&config_file())?;
    dataplane::remove_pins(&config.pin_path)?;
    let _ = std::fs::remove_file(&config.control_socket);
    Ok(())
}

fn step(title: &str) -> Result<()> {
    check_interrupt()?;
    println!("\n── {title}");
    Ok(())
}

/// `count` requests to `vip`'s `port` from the client; the bodies.
fn requests(lab: &Lab, vip: IpAddr, port: u16, count: usize) -> Result<Vec<String>> {
    let _inside = lab.topo.client.enter()?;
    let target = SocketAddr::new(vip, port);
    (0..count)
        .map(|_| get(target, Duration::from_millis(500)))
        .collect()
}

fn show_requests(lab: &Lab, port: u16, expect: &str) -> Result<()> {
    show_requests_to(lab, lab.vip().ip(), port, expect)
}

fn show_requests_to(lab: &Lab, vip: IpAddr, port: u16, expect: &str) -> Result<()> {
    let bodies = requests(lab, vip, port, 3)?;
    for body in &bodies {
        println!("   curl http://{}/  →  {body}", SocketAddr::new(vip, port));
    }
    if bodies.iter().any(|b| !b.ends_with(expect)) {
        bail!("expected answers from {expect}");
    }
    Ok(())
}

/// `count` requests to `port`, counted by the region that answered.
fn show_split(lab: &Lab, port: u16, count: usize) -> Result<BTreeMap<String, usize>> {
    let mut split = BTreeMap::new();
    for body in requests(lab, lab.vip().ip(), port, count)? {
        *split.entry(body.rsplit(' ').next().unwrap_or("").to_string()).or_default() += 1;
    }
    println!("   {count} requests to :{port} answered by {split:?}");
    Ok(split)
}


fn demo(keep: bool) -> Result<()> {
    down().context("removing an earlier lab")?;
    let options = LabOptions {
        heartbeat: true,
        cgroups: true,
        config_file: Some(config_file()),
        ..Default::default()
    };
    step("building the lab: client, gateway, region1-3 (namespaces, veth pairs)")?;
    let mut lab = Lab::new(PREFIX, options)?;
    step("starting redirectord with examples/lab.toml (VIP 10.2.0.2, priorities region2 > region1 > region3)")?;
    lab.start_daemon()?;
    lab.wait_active("region2", Duration::from_secs(5))?;
    println!("{}", lab.ctl_ok(&["status"])?);

    step("requests to the VIP are answered by region2")?;
    show_requests(&lab, 80, "R2")?;

    step("service web6, web's twin on the IPv6 VIP fd00:2::2, is answered by region2 too")?;
    show_requests_to(&lab, lab.vip6().ip(), 80, "R2")?;

    step("redirectorctl set-active region1")?;
    println!("   {}", lab.ctl_ok(&["set-active", "region1"])?.trim());
    show_requests(&lab, 80, "R1")?;

    step("redirectorctl set-active --auto")?;
    println!("   {}", lab.ctl_ok(&["set-active", "--auto"])?.trim());
    show_requests(&lab, 80, "R2")?;

    step("service api (:8081), weighted region1 = 1, region2 = 1; then redirectorctl weight region1 3 --service api")?;
    let even = show_split(&lab, 8081, 200)?;
    println!("   {}", lab.ctl_ok(&["weight", "region1", "3", "--service", "api"])?.trim());
    thread::sleep(Duration::from_millis(100));
    let skewed = show_split(&lab, 8081, 200)?;

    step("service app (:8080), policy cpu: a busy loop in region2's cgroup takes it above 25 % CPU")?;
    show_requests(&lab, 8080, "R2")?;
    let busy = lab.burn_cpu(2, Duration::from_secs(30))?;
    let spilled = lab.wait_new_flows("app", &["region1"], Duration::from_secs(10))?;
    let cpu = lab.status()?.regions[1].cpu_percent.unwrap_or(0.0);
    println!("   region2 at {cpu:.0} % CPU: app's new flows moved to region1 after {spilled:.0?}");
    show_requests(&lab, 8080, "R1")?;
    drop(busy);
    let returned = lab.wait_new_flows("app", &["region2"], Duration::from_secs(10))?;
    println!("   busy loop stopped: app's new flows back on region2 after {returned:.0?}");

    step("region2's HTTP server killed, a measuring client running on each VIP (IPv4 and IPv6)")?;
    let client = Measurement::start(&lab.topo.client, lab.vip(), Options::default());
    let client6 = Measurement::start(&lab.topo.client, lab.vip6(), Options::default());
    thread::sleep(Duration::from_millis(500));
    lab.kill_server(2)?;
    let detected = lab.wait_active("region1", Duration::from_secs(5))?;
    thread::sleep(Duration::from_millis(500));
    let report = client.stop()?;
    let report6 = client6.stop()?;
    check_interrupt()?;
    for (family, report) in [("IPv4", &report), ("IPv6", &report6)] {
        println!(
            "   {family}: failover to region1 after {detected:.0?}; unavailability T_un = {:.0?}; {} of {} requests succeeded ({:.2} %)",
            report.max_t_un(),
            report.successes,
            report.requests(),
            report.success_rate() * 100.0
        );
    }

    step("region2's HTTP server restored: failback (preempt = true)")?;
    lab.restore_server(2)?;
    let failback = lab.wait_active("region2", Duration::from_secs(5))?;
    show_requests(&lab, 80, "R2")?;
    show_requests_to(&lab, lab.vip6().ip(), 80, "R2")?;

    step("summary")?;
    println!("| step | result |\n|---|---|");
    println!("| requests to the VIP, IPv4 and IPv6 | answered by region2 |");
    println!("| set-active region1 / --auto | region1, then region2 again |");
    println!("| api weighted 1:1, then 3:1 | {even:?}, then {skewed:?} |");
    println!("| app, region2's CPU at {cpu:.0} % | new flows to region1 after {spilled:.0?}, back {returned:.0?} after the load |");
    println!("| region2 server killed: detection | {detected:.0?} |");
    println!("| unavailability T_un, IPv4 / IPv6 | {:.0?} / {:.0?} |", report.max_t_un(), report6.max_t_un());
    println!("| success rate during the failure | {:.2} % of {} requests |", report.success_rate() * 100.0, report.requests());
    println!("| failback after region2 restored | {failback:.0?} |");
    println!("\n{}", lab.ctl_ok(&["events"])?);

    if keep {
        let socket = lab.socket();
        let ctl = redirector_tests::lab::binary("redirectorctl")?;
        println!(
            "\nThe lab keeps running. Explore it:\n\
             \x20  ip netns exec {PREFIX}-client curl -s http://10.2.0.2/\n\
             \x20  ip netns exec {PREFIX}-client curl -s 'http://[fd00:2::2]/'\n\
             \x20  {ctl} --socket {s} status\n\
             \x20  {ctl} --socket {s} set-active region3\n\
             \x20  ip netns exec {PREFIX}-gw curl -s http://{METRICS}/metrics\n\
             \x20  ip netns exec {PREFIX}-r2 ip link set eth0 down     # a failure of your own\n\
             Remove it: cargo xtask lab down",
            s = socket.display(),
            ctl = ctl.display()
        );
        // Leave processes, namespaces and pins to `lab down`.
        std::mem::forget(lab);
    }
    Ok(())
}
