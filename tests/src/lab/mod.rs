//! The lab with real processes on the topology: an HTTP server and a
//! redirector-agent in each region, redirectord in the gateway, driven with
//! redirectorctl. Shared by the controller tests, `cargo xtask lab` and the
//! failover benchmark. Everything it starts is killed, and everything it
//! made removed, when it drops.

use std::{
    fmt::Write as _,
    fs,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use redirector::dataplane::flow_table::{monotonic_ns, FlowTable};
use redirector_proto::control::Status;
use redirector_common::{Flow, FlowKey, FLOW_ORIGINAL, IPPROTO_TCP};

use crate::{
    netns::{unique_name, Netns},
    topology::{Topology, SYNC_A, SYNC_B},
    xdp::PinDir,
};

mod bfdd;
mod daemon;
mod nat;
mod pair;
pub use bfdd::BfdPeer;
pub use daemon::Daemon;
pub use pair::{keepalived_config, Guard, Side};

pub const HTTP_PORT: u16 = 80;
/// Where each region's server also answers: the ports the services of
/// `examples/lab.toml` other than `web` are served on, each its own (two
/// services rewritten to one region port collide when a client reuses its
/// source port: README, `target_port`).
pub const SERVICE_PORTS: [u16; 2] = [8081, 8088];
pub const AGENT_PORT: u16 = 7946;
/// The UDP service's port, when the lab has one (`LabOptions::udp_service`).
pub const UDP_PORT: u16 = 5300;
/// redirectord's metrics, on the gateway's loopback.
pub const METRICS: &str = "127.0.0.1:9477";
/// Where the alert webhook listens (in the gateway's namespace), with
/// `LabOptions::alerts`, and the bearer token it wants.
pub const ALERTS: &str = "127.0.0.1:9478";
pub const ALERT_TOKEN: &str = "lab-alert-token-0123456789";
/// The port of [`LabOptions::closed_service`], where no region listens.
pub const CLOSED_PORT: u16 = 8099;
/// A pair's sync port, on [`SYNC_A`] and [`SYNC_B`].
pub const SYNC_PORT: u16 = 7947;

/// What the packages install: with `REDIRECTOR_INSTALLED_BIN` set (to
/// `/usr/bin`), the lab runs these from there, as an operator would, and
/// the test bed's own tools from the build.
const INSTALLED: [&str; 3] = ["redirectord", "redirectorctl", "redirector-agent"];

/// Where the project's binaries were built: beside the running test or
/// tool (target/<profile>/ or its deps/); or, for what the packages
/// install, `REDIRECTOR_INSTALLED_BIN`.
pub fn binary(name: &str) -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("REDIRECTOR_INSTALLED_BIN").filter(|_| INSTALLED.contains(&name)) {
        let path = PathBuf::from(dir).join(name);
        ensure!(path.exists(), "{} is not installed", path.display());
        return Ok(path);
    }
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().context("no directory for the running binary")?;
    if dir.ends_with("deps") {
        dir = dir.parent().unwrap();
    }
    let path = dir.join(name);
    if !path.exists() {
        bail!(
            "{} is not built; `cargo build --workspace --bins` first (`cargo xtask test` does)",
            path.display()
        );
    }
    Ok(path)
}

/// A child process killed (SIGKILL) and reaped on drop.
pub struct Process {
    child: Child,
    name: String,
}

impl Process {
    pub fn spawn(mut command: Command, name: &str) -> Result<Self> {
        let child = command
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Self {
            child,
            name: name.to_string(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` and waits (at most 5 s) for the process to exit.
    pub fn stop(mut self, signal: i32) -> Result<()> {
        unsafe { libc::kill(self.child.id() as i32, signal) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(10));
        }
        bail!("{} did not exit on signal {signal}", self.name)
    }

    /// Whether it exited by itself (and how).
    pub fn exited(&mut self) -> Result<Option<std::process::ExitStatus>> {
        Ok(self.child.try_wait()?)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Clone, Debug)]
pub struct LabOptions {
    pub regions: u8,
    /// Heartbeat checks to an agent in each region, besides the HTTP check.
    pub heartbeat: bool,
    /// HMAC key on the heartbeats (needs `heartbeat`).
    pub heartbeat_key: bool,
    pub interval_ms: u64,
    pub fall: u32,
    pub rise: u32,
    pub timeout_ms: u64,
    pub preempt: bool,
    pub preempt_delay_ms: u64,
    pub max_switches_per_minute: u32,
    pub all_down: &'static str,
    /// Run redirectord with this file (its pin path and control socket)
    /// instead of a config generated from these options.
    pub config_file: Option<PathBuf>,
    /// The service's policy: failover, weighted, pps, flows or cpu.
    pub policy: &'static str,
    /// Extra keys of region n's `[[region]]`, at index n - 1: weight,
    /// watermarks.
    pub region_keys: Vec<String>,
    /// `flow_table_size`; the daemon's default when None.
    pub flow_table_size: Option<u32>,
    /// `[balance] dwell_ms` and `sample_ms`.
    pub dwell_ms: u64,
    pub sample_ms: u64,
    /// Each region's server runs in a cgroup of its own, which its agent
    /// measures: the CPU policy on one machine (needs `heartbeat`).
    pub cgroups: bool,
    /// A second service, "stream": UDP on `UDP_PORT` at the same VIP,
    /// weighted, answered by each region's server.
    pub udp_service: bool,
    /// The alert webhook on [`ALERTS`], token [`ALERT_TOKEN`].
    pub alerts: bool,
    /// Each region's server resets a connection idle this long
    /// (`region-http --idle-reset-ms`); never when None.
    pub region_idle_reset: Option<Duration>,
    /// Two gateways ([`Topology::build_pair`]) instead of one.
    pub pair: Option<PairOptions>,
    /// `[passive]` with `syn_refused` at this threshold (window 1 s).
    pub passive: Option<u32>,
    /// The regions checked by BFD alone, each peer FRR's bfdd in the region.
    pub bfd: Option<BfdPeer>,
    /// A second TCP service, "closed", on [`CLOSED_PORT`] at the same VIP,
    /// by priority: no region serves it, so every SYN is refused.
    pub closed_service: bool,
    /// IPv6 end to end: every region gets its `address6`, "web6" is `web`
    /// on region2's IPv6 address ([`Lab::vip6`]), and the HTTP and
    /// heartbeat checks go over IPv6.
    pub ipv6: bool,
}

/// How a lab's gateway pair runs.
#[derive(Clone, Debug)]
pub struct PairOptions {
    /// `[sync]` on both gateways; off, each keeps its own flows (what the
    /// sync saves is measured against that).
    pub sync: bool,
    /// The sync's datagrams signed with [`Lab::sync_key_path`].
    pub sync_key: bool,
}

impl Default for LabOptions {
    fn default() -> Self {
        Self {
            regions: 3,
            heartbeat: false,
            heartbeat_key: false,
            interval_ms: 100,
            fall: 3,
            rise: 3,
            timeout_ms: 100,
            preempt: true,
            preempt_delay_ms: 0,
            max_switches_per_minute: 6,
            all_down: "keep-last",
            config_file: None,
            policy: "failover",
            region_keys: Vec::new(),
            dwell_ms: 1000,
            sample_ms: 1000,
            flow_table_size: None,
            cgroups: false,
            udp_service: false,
            region_idle_reset: None,
            alerts: false,
            pair: None,
            passive: None,
            bfd: None,
            closed_service: false,
            ipv6: false,
        }
    }
}

/// What the benchmarks strike a region with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Its HTTP server killed (the reference's failure): the next SYN is
    /// refused.
    ServerKilled,
    /// Everything it receives dropped: no answer, no reset.
    BlackHoled,
}

impl Failure {
    pub fn describe(self) -> &'static str {
        match self {
            Failure::ServerKilled => "server killed",
            Failure::BlackHoled => "black-holed",
        }
    }
}

/// Priorities as in the reference setup: region2 > region1 > region3 ...
pub fn priority(region: u8) -> u32 {
    match region {
        2 => 200,
        1 => 100,
        n => 100u32.saturating_sub(10 * u32::from(n)),
    }
}

/// The body a region's server answers with.
pub fn body(region: u8) -> String {
    format!("I am DataVM on R{region}")
}

pub struct Lab {
    // Drop order: processes first (the daemon's with its pins), then
    // files and namespaces.
    servers: Vec<Option<Process>>,
    agents: Vec<Option<Process>>,
    bfdds: Vec<Option<Process>>,
    /// A pair's keepalived, by [`Side`].
    keepalived: [Option<Process>; 2],
    /// What else runs on a pair's gateway host (conntrackd), by [`Side`].
    pair_extras: [Vec<Process>; 2],
    /// redirectord in the gateway; gateway A of a pair.
    pub gateway: Daemon,
    /// redirectord in gateway B of a pair.
    pub peer: Option<Daemon>,
    /// By region, when `cgroups`; removed once the processes are gone.
    cgroups: Vec<Cgroup>,
    pub options: LabOptions,
    pub dir: PathBuf,
    pub topo: Topology,
}

impl Lab {
    /// Builds the topology and starts the region servers (and agents); the
    /// daemon is started with [`Lab::start_daemon`].
    pub fn new(prefix: &str, options: LabOptions) -> Result<Self> {
        let topo = match options.pair {
            Some(_) => Topology::build_pair(prefix, options.regions)?,
            None => Topology::build(prefix, options.regions)?,
        };
        let dir = std::env::temp_dir().join(unique_name("redirector-lab"));
        fs::create_dir_all(&dir)?;
        let (config_path, socket, pins) = match &options.config_file {
            Some(file) => {
                let config = redirector::config::Config::load(file)?;
                (file.clone(), config.control_socket, PinDir(config.pin_path))
            }
            None => (dir.join("redirector.toml"), dir.join("control.sock"), PinDir::unique()),
        };
        let cgroups = if options.cgroups {
            (1..=options.regions)
                .map(|n| Cgroup::new(&cgroup_name(prefix, n)))
                .collect::<Result<_>>()?
        } else {
            Vec::new()
        };
        let gateway = Daemon::new("redirectord", &topo.gateway, config_path, socket, pins, &dir)?;
        let peer = match &topo.peer {
            Some(ns) => {
                let (config, socket) = (dir.join("redirector-b.toml"), dir.join("control-b.sock"));
                Some(Daemon::new("redirectord-b", ns, config, socket, PinDir::unique(), &dir)?)
            }
            None => None,
        };
        let mut lab = Self {
            servers: Vec::new(),
            agents: Vec::new(),
            bfdds: Vec::new(),
            keepalived: [None, None],
            pair_extras: [Vec::new(), Vec::new()],
            gateway,
            peer,
            cgroups,
            options,
            dir,
            topo,
        };
        if lab.options.heartbeat_key {
            fs::write(lab.key_path(), "lab-shared-heartbeat-key-0123456789\n")?;
        }
        if lab.options.alerts {
            fs::write(lab.alert_token_path(), format!("{ALERT_TOKEN}\n"))?;
        }
        if let Some(pair) = lab.options.pair.clone() {
            if pair.sync_key {
                fs::write(lab.sync_key_path(), "lab-shared-sync-key-0123456789\n")?;
            }
            let peer = lab.peer.as_ref().expect("built with the pair");
            let sides = [(&lab.gateway, SYNC_A, SYNC_B), (peer, SYNC_B, SYNC_A)];
            for (daemon, listen, other) in sides {
                let mut text = lab.config_for(&daemon.pins.0, &daemon.socket);
                if pair.sync {
                    lab.write_sync(&mut text, listen, other, pair.sync_key);
                }
                fs::write(&daemon.config_path, text)?;
            }
        } else if lab.options.config_file.is_none() {
            fs::write(lab.config_path(), lab.config(&lab.gateway.pins.0))?;
        }
        for region in 1..=lab.options.regions {
            let server = lab.start_server(region)?;
            lab.servers.push(Some(server));
            let agent = if lab.options.heartbeat {
                Some(lab.start_agent(region, lab.options.heartbeat_key.then(|| lab.key_path()).as_deref())?)
            } else {
                None
            };
            lab.agents.push(agent);
            let bfdd = if lab.options.bfd.is_some() { Some(lab.start_bfdd(region)?) } else { None };
            lab.bfdds.push(bfdd);
        }
        Ok(lab)
    }

    pub fn config_path(&self) -> PathBuf {
        self.gateway.config_path.clone()
    }

    pub fn socket(&self) -> PathBuf {
        self.gateway.socket.clone()
    }

    pub fn key_path(&self) -> PathBuf {
        self.dir.join("heartbeat.key")
    }

    pub fn alert_token_path(&self) -> PathBuf {
        self.dir.join("alerts.token")
    }

    /// The VIP: region2's own address, as in the reference setup.
    pub fn vip(&self) -> SocketAddr {
        SocketAddr::new(self.topo.region("region2").addr.into(), HTTP_PORT)
    }

    /// The IPv6 VIP of `web6` (with [`LabOptions::ipv6`]): region2's own
    /// IPv6 address.
    pub fn vip6(&self) -> SocketAddr {
        SocketAddr::new(self.region_addr6(2).into(), HTTP_PORT)
    }

    fn region_addr6(&self, region: u8) -> std::net::Ipv6Addr {
        self.topo.region(&format!("region{region}")).addr6.expect("a single gateway's regions are dual-stack")
    }

    /// The address checks reach region `n` at: IPv6 with
    /// [`LabOptions::ipv6`].
    fn check_host(&self, region: &crate::topology::Region) -> String {
        match (self.options.ipv6, region.addr6) {
            (true, Some(addr6)) => format!("[{addr6}]"),
            _ => region.addr.to_string(),
        }
    }

    /// The key a pair's sync datagrams are signed with.
    pub fn sync_key_path(&self) -> PathBuf {
        self.dir.join("sync.key")
    }

    /// Gateway B of the pair.
    pub fn peer(&mut self) -> &mut Daemon {
        self.peer.as_mut().expect("a lab built with LabOptions::pair")
    }

    fn write_sync(&self, text: &mut String, listen: Ipv4Addr, peer: Ipv4Addr, key: bool) {
        writeln!(text, "\n[sync]\nlisten = \"{listen}:{SYNC_PORT}\"\npeers = [\"{peer}:{SYNC_PORT}\"]").unwrap();
        if key {
            writeln!(text, "key_file = {:?}", self.sync_key_path().display().to_string()).unwrap();
        }
    }

    /// The config redirectord runs with.
    pub fn config(&self, pin_path: &Path) -> String {
        self.config_for(pin_path, &self.socket())
    }

    /// The config of a redirectord pinned at `pin_path`, answering on
    /// `socket`.
    fn config_for(&self, pin_path: &Path, socket: &Path) -> String {
        let o = &self.options;
        let mut text = String::new();
        let interfaces: Vec<String> = self
            .topo
            .gateway_interfaces()
            .iter()
            .map(|i| format!("{i:?}"))
            .collect();
        writeln!(text, "interfaces = [{}]", interfaces.join(", ")).unwrap();
        writeln!(text, "pin_path = {:?}", pin_path.display().to_string()).unwrap();
        writeln!(text, "control_socket = {:?}", socket.display().to_string()).unwrap();
        writeln!(text, "metrics_listen = {METRICS:?}").unwrap();
        if let Some(size) = o.flow_table_size {
            writeln!(text, "flow_table_size = {size}").unwrap();
        }
        writeln!(
            text,
            "\n[health]\ninterval_ms = {}\nfall = {}\nrise = {}\ntimeout_ms = {}",
            o.interval_ms, o.fall, o.rise, o.timeout_ms
        )
        .unwrap();
        writeln!(
            text,
            "\n[failover]\npreempt = {}\npreempt_delay_ms = {}\nmax_switches_per_minute = {}\nall_down = {:?}",
            o.preempt, o.preempt_delay_ms, o.max_switches_per_minute, o.all_down
        )
        .unwrap();
        writeln!(text, "\n[balance]\ndwell_ms = {}\nsample_ms = {}", o.dwell_ms, o.sample_ms).unwrap();
        for region in &self.topo.regions {
            let n: u8 = region.name.trim_start_matches("region").parse().unwrap();
            let mut checks = vec![match o.bfd {
                Some(_) => format!("{{ kind = \"bfd\", address = \"{}\" }}", region.addr),
                None => format!("{{ kind = \"http\", url = \"http://{}:{HTTP_PORT}/\", expect_status = 200 }}", self.check_host(region)),
            }];
            if o.heartbeat {
                let key = if o.heartbeat_key {
                    format!(", key_file = {:?}", self.key_path().display().to_string())
                } else {
                    String::new()
                };
                checks.push(format!(
                    "{{ kind = \"heartbeat\", address = \"{}:{AGENT_PORT}\"{key} }}",
                    self.check_host(region)
                ));
            }
            let address6 = match (o.ipv6, region.addr6) {
                (true, Some(addr6)) => format!("address6 = \"{addr6}\"\n"),
                _ => String::new(),
            };
            writeln!(
                text,
                "\n[[region]]\nname = {:?}\naddress = \"{}\"\n{address6}priority = {}\nchecks = [{}]\n{}",
                region.name,
                region.addr,
                priority(n),
                checks.join(", "),
                o.region_keys.get(n as usize - 1).map_or("", String::as_str)
            )
            .unwrap();
        }
        let names: Vec<String> = self.topo.regions.iter().map(|r| format!("{:?}", r.name)).collect();
        writeln!(
            text,
            "\n[[service]]\nname = \"web\"\nvip = \"{}\"\nport = {HTTP_PORT}\nprotocol = \"tcp\"\npolicy = {:?}\nregions = [{}]",
            self.vip().ip(),
            o.policy,
            names.join(", ")
        )
        .unwrap();
        if o.ipv6 {
            writeln!(
                text,
                "\n[[service]]\nname = \"web6\"\nvip = \"{}\"\nport = {HTTP_PORT}\nprotocol = \"tcp\"\npolicy = {:?}\nregions = [{}]",
                self.vip6().ip(),
                o.policy,
                names.join(", ")
            )
            .unwrap();
        }
        if o.udp_service {
            writeln!(
                text,
                "\n[[service]]\nname = \"stream\"\nvip = \"{}\"\nport = {UDP_PORT}\nprotocol = \"udp\"\npolicy = \"weighted\"\nregions = [{}]",
                self.vip().ip(),
                names.join(", ")
            )
            .unwrap();
        }
        if o.closed_service {
            writeln!(
                text,
                "\n[[service]]\nname = \"closed\"\nvip = \"{}\"\nport = {CLOSED_PORT}\nprotocol = \"tcp\"\nregions = [{}]",
                self.vip().ip(),
                names.join(", ")
            )
            .unwrap();
        }
        if let Some(threshold) = o.passive {
            writeln!(text, "\n[passive]\nsyn_refused = {threshold}\nwindow_ms = 1000").unwrap();
        }
        if o.alerts {
            let token = self.alert_token_path().display().to_string();
            writeln!(text, "\n[alerts]\nlisten = {ALERTS:?}\ntoken_file = {token:?}").unwrap();
        }
        text
    }

    fn region_ns(&self, region: u8) -> &Netns {
        &self.topo.region(&format!("region{region}")).ns
    }

    pub fn start_server(&self, region: u8) -> Result<Process> {
        let mut cmd = self.region_ns(region).command(binary("region-http")?.to_str().unwrap());
        cmd.args(["--name", &format!("R{region}")]);
        for port in std::iter::once(HTTP_PORT).chain(SERVICE_PORTS) {
            cmd.args(["--listen", &format!("0.0.0.0:{port}"), "--listen", &format!("[::]:{port}")]);
        }
        if self.options.udp_service {
            cmd.args(["--udp", &format!("0.0.0.0:{UDP_PORT}")]);
        }
        if let Some(idle) = self.options.region_idle_reset {
            cmd.args(["--idle-reset-ms", &idle.as_millis().to_string()]);
        }
        self.log_to(&mut cmd, &format!("region-http-r{region}.log"))?;
        if let Some(cgroup) = self.cgroups.get(region as usize - 1) {
            cgroup.run_in(&mut cmd)?;
        }
        let process = Process::spawn(cmd, &format!("region-http R{region}"))?;
        let pid = process.pid();
        wait_for(Duration::from_secs(5), || listening(pid, "tcp", HTTP_PORT))?;
        Ok(process)
    }

    pub fn start_agent(&self, region: u8, key: Option<&Path>) -> Result<Process> {
        let mut cmd = self.region_ns(region).command(binary("redirector-agent")?.to_str().unwrap());
        // Over IPv6 the agent answers from the address its check names.
        let listen = match self.options.ipv6 {
            true => format!("[{}]:{AGENT_PORT}", self.region_addr6(region)),
            false => format!("0.0.0.0:{AGENT_PORT}"),
        };
        cmd.args(["--listen", &listen]);
        cmd.args(["--check-url", &format!("http://127.0.0.1:{HTTP_PORT}/")]);
        if let Some(cgroup) = self.cgroups.get(region as usize - 1) {
            cmd.arg("--cpu-cgroup").arg(&cgroup.dir);
        }
        if let Some(key) = key {
            cmd.args(["--key-file", key.to_str().unwrap()]);
        }
        self.log_to(&mut cmd, &format!("agent-r{region}.log"))?;
        let process = Process::spawn(cmd, &format!("redirector-agent R{region}"))?;
        let pid = process.pid();
        let table = if self.options.ipv6 { "udp6" } else { "udp" };
        wait_for(Duration::from_secs(5), || listening(pid, table, AGENT_PORT))?;
        Ok(process)
    }

    /// FRR's bfdd in region `n`, peering with the gateway's address on the
    /// region's link.
    pub fn start_bfdd(&self, region: u8) -> Result<Process> {
        let settings = self.options.bfd.context("start_bfdd needs LabOptions::bfd")?;
        let addr = self.topo.region(&format!("region{region}")).addr;
        let gateway_side = Ipv4Addr::new(10, region, 0, 1);
        bfdd::start(self.region_ns(region), &self.dir.join(format!("bfdd-r{region}")), gateway_side, addr, settings)
    }

    /// Kills region `n`'s bfdd (SIGKILL: its peer hears nothing more).
    pub fn kill_bfdd(&mut self, region: u8) -> Result<()> {
        kill_in(&mut self.bfdds, region)
    }

    pub fn restore_bfdd(&mut self, region: u8) -> Result<()> {
        let bfdd = self.start_bfdd(region)?;
        self.bfdds[region as usize - 1] = Some(bfdd);
        Ok(())
    }

    /// Strikes region `n` with `failure`.
    pub fn fail(&mut self, region: u8, failure: Failure) -> Result<()> {
        match failure {
            Failure::ServerKilled => self.kill_server(region),
            Failure::BlackHoled => self.black_hole(region),
        }
    }

    /// Undoes [`Lab::fail`].
    pub fn repair(&mut self, region: u8, failure: Failure) -> Result<()> {
        match failure {
            Failure::ServerKilled => self.restore_server(region),
            Failure::BlackHoled => self.lift_black_hole(region),
        }
    }

    /// Kills region `n`'s HTTP server (SIGKILL: no goodbye).
    pub fn kill_server(&mut self, region: u8) -> Result<()> {
        kill_in(&mut self.servers, region)
    }

    pub fn restore_server(&mut self, region: u8) -> Result<()> {
        let server = self.start_server(region)?;
        self.servers[region as usize - 1] = Some(server);
        Ok(())
    }

    /// A busy loop in region `n`'s cgroup, one process that ends by itself
    /// after `limit` (perl is part of every Debian system): the cgroup's
    /// CPU rises by one core's worth.
    pub fn burn_cpu(&self, region: u8, limit: Duration) -> Result<Process> {
        let cgroup = self
            .cgroups
            .get(region as usize - 1)
            .context("burn_cpu needs LabOptions::cgroups")?;
        let mut cmd = Command::new("perl");
        cmd.args(["-e", &format!("my $end = time + {}; 1 while time < $end", limit.as_secs().max(1))]);
        cgroup.run_in(&mut cmd)?;
        Process::spawn(cmd, &format!("busy loop in R{region}"))
    }

    pub fn kill_agent(&mut self, region: u8) -> Result<()> {
        kill_in(&mut self.agents, region)
    }

    /// Starts redirectord in the gateway and waits until it answers and
    /// every region has a health verdict.
    pub fn start_daemon(&mut self) -> Result<()> {
        self.gateway.start()
    }

    /// Takes region `n`'s link down (its end of the veth): the gateway sees
    /// no carrier, packets toward it go nowhere.
    pub fn link_down(&self, region: u8) -> Result<()> {
        self.region_ns(region).ip(&["link", "set", "eth0", "down"])?;
        Ok(())
    }

    pub fn link_up(&self, region: u8) -> Result<()> {
        let ns = self.region_ns(region);
        ns.ip(&["link", "set", "eth0", "up"])?;
        // The default route went with the link.
        ns.ip(&["route", "replace", "default", "via", &format!("10.{region}.0.1")])?;
        Ok(())
    }

    /// Region `n` silently drops everything it receives: no answer, no RST,
    /// health checks included, as a firewall or a hung host would.
    pub fn black_hole(&self, region: u8) -> Result<()> {
        self.region_ns(region).exec(
            "nft",
            &["add table inet redirector_lab; add chain inet redirector_lab input { type filter hook input priority 0; policy drop; }"],
        )?;
        Ok(())
    }

    /// Drops what the gateway itself sends to region `n` (its health
    /// checks, heartbeats included), nothing else: clients still get through.
    pub fn block_probes(&self, region: u8) -> Result<()> {
        let rules = format!(
            "add table inet redirector_probes; \
             add chain inet redirector_probes input {{ type filter hook input priority 0; policy accept; }}; \
             add rule inet redirector_probes input ip saddr 10.{region}.0.1 drop"
        );
        self.region_ns(region).exec("nft", &[&rules])?;
        Ok(())
    }

    pub fn unblock_probes(&self, region: u8) -> Result<()> {
        self.region_ns(region).exec("nft", &["delete table inet redirector_probes"])?;
        Ok(())
    }

    pub fn lift_black_hole(&self, region: u8) -> Result<()> {
        self.region_ns(region).exec("nft", &["delete table inet redirector_lab"])?;
        Ok(())
    }

    pub fn restore_agent(&mut self, region: u8) -> Result<()> {
        let key = self.options.heartbeat_key.then(|| self.key_path());
        self.replace_agent(region, key.as_deref())
    }

    /// Region `region`'s agent (killed first, if running) started with
    /// `key`, whatever the lab's.
    pub fn replace_agent(&mut self, region: u8, key: Option<&Path>) -> Result<()> {
        self.kill_agent(region)?;
        let agent = self.start_agent(region, key)?;
        self.agents[region as usize - 1] = Some(agent);
        Ok(())
    }

    /// Sends a process's output to `name` in the lab directory, after what
    /// an earlier run of it wrote there.
    fn log_to(&self, cmd: &mut Command, name: &str) -> Result<()> {
        log_to(cmd, &self.dir.join(name))
    }

    /// Kills redirectord with `signal`; the data plane stays.
    pub fn stop_daemon(&mut self, signal: i32) -> Result<()> {
        self.gateway.stop(signal)
    }

    /// Waits (at most `limit`) for redirectord to exit by itself.
    pub fn daemon_exit(&mut self, limit: Duration) -> Result<std::process::ExitStatus> {
        self.gateway.exit(limit)
    }

    /// How redirectord ended, if it ended by itself; None while it runs
    /// (or was never started).
    pub fn daemon_exited(&mut self) -> Result<Option<std::process::ExitStatus>> {
        self.gateway.exited()
    }

    pub fn daemon_pid(&self) -> Option<u32> {
        self.gateway.pid()
    }

    pub fn daemon_log(&self) -> String {
        self.gateway.log()
    }

    /// Writes `entries` established TCP flows of region1 into the data
    /// plane's flow table (no packet of theirs ever comes: the table is full
    /// for the daemon's sweep, not for the packet path). Returns a handle on
    /// the table.
    pub fn fill_flow_table(&self, entries: u32) -> Result<FlowTable> {
        let mut table = FlowTable::open(&self.gateway.pins.0)?;
        let now = monotonic_ns();
        for i in 0..entries {
            let key = FlowKey {
                src_addr: i,
                dst_addr: u32::from(self.topo.region("region2").addr).to_be(),
                src_port: 40_000,
                dst_port: self.vip().port(),
                protocol: IPPROTO_TCP,
                _pad: [0; 3],
            };
            let flow = Flow { last_seen_ns: now, region_id: 1, direction: FLOW_ORIGINAL, ..Default::default() };
            table.set(&key, &flow)?;
        }
        Ok(table)
    }

    /// Runs redirectorctl against this lab's daemon.
    pub fn ctl(&self, args: &[&str]) -> Result<Output> {
        self.gateway.ctl(args)
    }

    /// redirectorctl, which must succeed; its stdout.
    pub fn ctl_ok(&self, args: &[&str]) -> Result<String> {
        self.gateway.ctl_ok(args)
    }

    /// redirectord's /metrics text.
    pub fn metrics(&self) -> Result<String> {
        self.gateway.metrics()
    }

    pub fn status(&self) -> Result<Status> {
        self.gateway.status()
    }

    /// The regions taking the service's new flows.
    pub fn active(&self) -> Result<Vec<String>> {
        Ok(self.status()?.services[0].active.clone())
    }

    /// Waits (at most `limit`) until `region` alone takes new flows; how
    /// long that took. The error carries the daemon's log.
    pub fn wait_active(&self, region: &str, limit: Duration) -> Result<Duration> {
        let started = Instant::now();
        wait_for(limit, || {
            let active = self.active()?;
            anyhow::ensure!(active == [region], "new flows go to {active:?}, not {region}");
            Ok(())
        })
        .with_context(|| self.daemon_log())?;
        Ok(started.elapsed())
    }

    /// Waits (at most `limit`) until the table written for `service`
    /// sends new flows to `regions` (in region order) and nowhere else.
    pub fn wait_new_flows(&self, service: &str, regions: &[&str], limit: Duration) -> Result<Duration> {
        let started = Instant::now();
        wait_for(limit, || {
            let status = self.status()?;
            let s = status
                .services
                .iter()
                .find(|s| s.name == service)
                .with_context(|| format!("no service {service}"))?;
            let names: Vec<&str> = s.new_flow_shares.iter().map(|(r, _)| r.as_str()).collect();
            anyhow::ensure!(names == regions, "{service}: new flows go to {:?}", s.new_flow_shares);
            Ok(())
        })
        .with_context(|| self.daemon_log())?;
        Ok(started.elapsed())
    }

    /// The events in which `service`'s new flows changed regions.
    pub fn switches(&self, service: &str) -> Result<Vec<redirector_proto::control::Event>> {
        self.gateway.switches(service)
    }

    /// The events in which `region`'s state changed.
    pub fn region_changes(&self, region: &str) -> Result<Vec<redirector_proto::control::Event>> {
        self.gateway.region_changes(region)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.keepalived = [None, None];
        self.pair_extras = [Vec::new(), Vec::new()];
        let _ = self.gateway.stop(libc::SIGKILL);
        if let Some(peer) = &mut self.peer {
            let _ = peer.stop(libc::SIGKILL);
        }
        self.servers.clear();
        self.agents.clear();
        self.bfdds.clear();
        self.cgroups.clear();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// SIGKILLs region `n`'s process of `slots` (one per region), if running.
fn kill_in(slots: &mut [Option<Process>], region: u8) -> Result<()> {
    match slots[region as usize - 1].take() {
        Some(process) => process.stop(libc::SIGKILL),
        None => Ok(()),
    }
}

/// Sends a process's output to `path`, after what an earlier run of it
/// wrote there.
fn log_to(cmd: &mut Command, path: &Path) -> Result<()> {
    let log = fs::OpenOptions::new().create(true).append(true).open(path)?;
    cmd.stdout(log.try_clone()?).stderr(log);
    Ok(())
}

fn cgroup_name(lab_prefix: &str, region: u8) -> String {
    format!("redirector-{lab_prefix}-r{region}")
}

/// Removes the cgroups a lab named `lab_prefix` left (`lab --keep`), with
/// whatever runs in them.
pub fn remove_cgroups(lab_prefix: &str) -> Result<()> {
    for region in 1..=redirector_common::MAX_REGIONS as u8 {
        let dir = cgroup_root()?.join(cgroup_name(lab_prefix, region));
        if dir.exists() {
            drop(Cgroup { dir });
        }
    }
    Ok(())
}

fn cgroup_root() -> Result<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts")?;
    mounts
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 2 && f[2] == "cgroup2")
        .map(|f| PathBuf::from(f[1]))
        .context("no cgroup v2 hierarchy is mounted (the CPU policy's lab measures cgroups)")
}

/// A cgroup v2 directory of the lab's, removed on drop with whatever still
/// runs in it.
struct Cgroup {
    dir: PathBuf,
}

impl Cgroup {
    fn new(name: &str) -> Result<Self> {
        let dir = cgroup_root()?.join(name);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self { dir })
    }

    /// Makes `cmd` join the cgroup before it executes, so every process it
    /// forks is counted too.
    fn run_in(&self, cmd: &mut Command) -> Result<()> {
        use std::os::unix::{io::AsRawFd, process::CommandExt};
        let procs = fs::OpenOptions::new().write(true).open(self.dir.join("cgroup.procs"))?;
        // SAFETY: only write(2) runs between fork and exec; the file stays
        // open in the parent's closure until the command is dropped.
        unsafe {
            cmd.pre_exec(move || {
                if libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(())
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = fs::write(self.dir.join("cgroup.kill"), "1");
        let _ = wait_for(Duration::from_secs(2), || Ok(fs::remove_dir(&self.dir)?));
    }
}

/// Whether process `pid` listens on `port` in its namespace's table
/// (/proc/PID/net/tcp or udp: local address `IP:PORT` in hex, state 0A is
/// TCP LISTEN; a bound UDP socket shows state 07).
fn listening(pid: u32, proto: &str, port: u16) -> Result<()> {
    let table = fs::read_to_string(format!("/proc/{pid}/net/{proto}"))?;
    let wanted = format!(":{port:04X}");
    let found = table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.len() > 3 && fields[1].ends_with(&wanted) && (fields[3] == "0A" || fields[3] == "07")
    });
    if found {
        Ok(())
    } else {
        bail!("process {pid} does not listen on {proto} port {port} yet")
    }
}

/// Polls `check` every 20 ms until it succeeds or `limit` passes; the last
/// error says why it did not.
pub fn wait_for(limit: Duration, mut check: impl FnMut() -> Result<()>) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        match check() {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!("still not so after {limit:?}")))
            }
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    }
}
