//! redirectord's configuration: one TOML file, checked whole before the
//! daemon touches the data plane.
//!
//! ```toml
//! interfaces = ["veth-client", "veth-r1", "veth-r2"]  # XDP is attached to each
//! pin_path = "/sys/fs/bpf/redirector"                   # default
//! control_socket = "/run/redirector/control.sock"       # default
//! metrics_listen = "127.0.0.1:9477"                     # metrics off when absent
//! flow_table_size = 262144       # default; established flows, both directions (two entries
//!                                # each); new TCP flows get a table a quarter this size
//! xdp_mode = "auto"              # default: native XDP where the driver has it, generic
//!                                # where not; "native" refuses a driver without it;
//!                                # "generic" always (any driver, slower: see the README)
//!
//! [passive]              # off when absent: SYNs a region refuses with a reset take it
//! syn_refused = 3        # down at once, this many (at least 2) ...
//! window_ms = 1000       # ... within this window; its checks bring it back (rise)
//!
//! [health]               # defaults for every region; a region may override each
//! interval_ms = 100      # between probes of one check; at least 10
//! fall = 3               # consecutive misses that take a check down
//! rise = 3               # consecutive successes that bring it up
//! timeout_ms = 100       # a probe unanswered this long after its tick is a miss; <= interval_ms
//!
//! [failover]
//! preempt = true                 # a better region coming back takes new flows
//! preempt_delay_ms = 0           # ... once it has been eligible this long
//! max_switches_per_minute = 6    # flap limit, see below
//! all_down = "keep-last"         # or "drop"
//!
//! [balance]
//! dwell_ms = 3000                # default; a region's saturated-or-not verdict holds at
//!                                # least this long, so load at a watermark cannot flap; 0: none
//! sample_ms = 1000               # default; pps and active flows are sampled this often,
//!                                # at least 100 (each sample walks the flow table)
//!
//! [[region]]                     # ids are given in file order: 0, 1, ...
//! name = "region1"
//! address = "10.1.0.2"           # IPv4 or IPv6
//! address6 = "fd00:1::2"         # optional, when address is IPv4: the IPv6 services
//!                                # reach the region here (a dual-stack region)
//! priority = 100                 # default 0; the highest eligible wins
//! checks = [{ kind = "http", url = "http://10.1.0.2:80/", expect_status = 200 }]
//! # interval_ms, fall, rise, timeout_ms: per-region overrides
//!
//! [[region]]
//! name = "region2"
//! address = "10.2.0.2"
//! priority = 200
//! checks = [{ kind = "heartbeat", address = "10.2.0.2:7946", key_file = "/etc/redirector/hb.key" }]
//!                                # http, tcp and heartbeat checks reach IPv6 too:
//!                                # "http://[fd00:2::2]/", "[fd00:2::2]:7946"
//! weight = 1                     # default 1: the share of new flows under weighted;
//!                                # 0: a backup, taking new flows only when no region of
//!                                # positive weight is eligible
//! # Load watermarks, each optional: saturated above high, until back below low. Under
//! # policy pps/flows/cpu, new flows spill to the next region in priority order while
//! # this region is saturated.
//! pps = { low = 800, high = 1000 }     # client-to-region packets/s
//! flows = { low = 800, high = 1000 }   # active flows
//! cpu = { low = 60, high = 80 }        # percent, reported by the agent: needs a heartbeat check
//!
//! [[service]]                    # ids are given in file order: 0, 1, ...
//! name = "web"
//! vip = "10.2.0.2"              # IPv4 or IPv6; every region listed needs an address
//!                                # of its family (a dual-stack service: two services)
//! port = 80                      # tcp and udp only
//! protocol = "tcp"               # tcp | udp | icmp
//! policy = "failover"            # default; or weighted | pps | flows | cpu
//! regions = ["region1", "region2"]
//! weights = { region1 = 3, region2 = 1 }  # optional: overrides the regions' weight for this service
//! target_port = 8080             # optional: the regions serve on this port
//!
//! [alerts]                       # optional: the Alertmanager webhook (POST /alerts)
//! listen = "127.0.0.1:9478"      # its own address, not metrics_listen
//! token_file = "/etc/redirector/alerts.token"   # bearer token, 16 bytes or more
//! label = "region"               # default: the alert label naming the region
//!
//! [sync]                         # optional: flow-state sync with the other gateways
//! listen = "10.255.0.1:7947"     # this gateway's sync address (UDP), as its peers list it
//! peers = ["10.255.0.2:7947"]    # the other gateways' sync addresses
//! key_file = "/etc/redirector/sync.key"   # optional: HMAC-SHA256 key, the same on every gateway
//! ```
//!
//! Check kinds: `heartbeat` {address, key_file?}, `http` {url, expect_status
//! (default 200)}, `tcp` {address}.
//!
//! Policies: `failover` sends new flows to the highest-priority eligible
//! region; `weighted` shares them among the eligible regions by weight (at
//! least one weight must be positive); `pps`, `flows` and `cpu` fail over by
//! priority but spill past a saturated region, so at least one of the
//! service's regions needs the matching watermarks, and under `cpu` every
//! region with `cpu` watermarks needs a heartbeat check: the agent reports
//! its CPU over it.
//!
//! `max_switches_per_minute` bounds how often one service's new flows change
//! region within any 60 s. Only switches away from a region that is still
//! eligible (failback, override resumption) wait for the window; moving off
//! a region that went down or was drained is never held back, though it
//! counts. It is at least 1: `preempt = false` is how failback is turned off.
//!
//! Every error names the file, the line and the key, e.g.
//! `lab.toml:31: service "web".regions: unknown region "region9" (known:

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

pub use redirector_proto::{
    control::DEFAULT_SOCKET,
    model::{CheckKind, Measure, PolicyKind, Protocol},
    probe::HttpCheck,
};
use serde::Deserialize;

mod raw;
mod validate;
#[cfg(test)]
mod tests;

/// A config file longer than this is refused unread.
pub const MAX_CONFIG_FILE: u64 = 1 << 20;

/// The flow table's bounds: the smallest holds a few thousand flows, the
/// largest 8 M flows (16 M entries, some 2 GB of kernel memory).
pub const MIN_FLOW_TABLE_SIZE: u32 = 4_096;
pub const MAX_FLOW_TABLE_SIZE: u32 = 16 * 1024 * 1024;

/// Where maps and links are pinned unless `pin_path` says otherwise.
pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/redirector";

/// The window of `max_switches_per_minute`.
pub const SWITCH_WINDOW: Duration = Duration::from_secs(60);
pub(crate) const MIN_INTERVAL_MS: u64 = 10;
/// The kernel's IFNAMSIZ less the terminating NUL.
pub(crate) const MAX_INTERFACE_NAME: usize = 15;

pub(crate) const DEFAULT_HEALTH: HealthSettings = HealthSettings {
    interval: Duration::from_millis(100),
    fall: 3,
    rise: 3,
    timeout: Duration::from_millis(100),
};
pub(crate) const DEFAULT_FAILOVER: FailoverSettings = FailoverSettings {
    preempt: true,
    preempt_delay: Duration::ZERO,
    max_switches_per_minute: 6,
    all_down: AllDown::KeepLast,
};
pub(crate) const DEFAULT_BALANCE: BalanceSettings = BalanceSettings {
    dwell: Duration::from_millis(3000),
    sample: Duration::from_millis(1000),
};
/// A sample walks the whole flow table: about 0.1 s when it is full, and
/// samples then come no more often than every 0.2 s (the walk takes at most
/// half a core).
pub(crate) const MIN_SAMPLE_MS: u64 = 100;
/// One share each: with no weights written, `weighted` spreads evenly.
pub(crate) const DEFAULT_WEIGHT: u32 = 1;
/// The alert label that names a region, unless `[alerts] label` says.
pub(crate) const DEFAULT_ALERT_LABEL: &str = "region";
/// cpu watermarks are a percentage of the region's CPU.
pub(crate) const MAX_PERCENT: u64 = 100;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub interfaces: Vec<String>,
    pub pin_path: PathBuf,
    pub control_socket: PathBuf,
    pub metrics_listen: Option<SocketAddr>,
    /// Entries of the established flow table (two per flow).
    pub flow_table_size: u32,
    pub xdp_mode: XdpMode,
    pub failover: FailoverSettings,
    pub balance: BalanceSettings,
    /// Position is the region's id in the data plane.
    pub regions: Vec<RegionConfig>,
    /// Position is the service's id in the data plane.
    pub services: Vec<ServiceConfig>,
    /// The alert webhook, off when None.
    pub alerts: Option<AlertsSettings>,
    /// Flow-state sync with peer gateways, off when None.
    pub sync: Option<SyncSettings>,
    /// Passive detection, off when None.
    pub passive: Option<PassiveSettings>,
}

/// `[passive]`: how many SYNs one region may refuse with a reset within
/// `window` before it is taken down without waiting for its checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PassiveSettings {
    pub threshold: u32,
    pub window: Duration,
}

/// `[passive]` defaults: three refusals within a second. Two is the least
/// accepted: one refused SYN is a client at a closed port as often as a
/// dead server.
pub(crate) const DEFAULT_PASSIVE: PassiveSettings = PassiveSettings { threshold: 3, window: Duration::from_secs(1) };
pub(crate) const MIN_PASSIVE_THRESHOLD: u32 = 2;
pub(crate) const MAX_PASSIVE_WINDOW_MS: u64 = 60_000;

/// `[sync]`: this gateway's sync address, its peers', and the key their
/// datagrams are signed with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncSettings {
    pub listen: SocketAddr,
    pub peers: Vec<SocketAddr>,
    pub key_file: Option<PathBuf>,
}

/// `[alerts]`: where the webhook listens, its bearer token's file, and the
/// label that names a region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlertsSettings {
    pub listen: SocketAddr,
    pub token_file: PathBuf,
    pub label: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthSettings {
    pub interval: Duration,
    pub fall: u32,
    pub rise: u32,
    pub timeout: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailoverSettings {
    pub preempt: bool,
    pub preempt_delay: Duration,
    pub max_switches_per_minute: u32,
    pub all_down: AllDown,
}

/// Tuning of the load policies (`pps`, `flows`, `cpu`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BalanceSettings {
    /// How long a region's saturated-or-not verdict holds at least, so that
    /// load hovering at a watermark cannot make new flows oscillate; zero:
    /// no dwell.
    pub dwell: Duration,
    /// How often pps and active flows (and so saturation) are sampled.
    pub sample: Duration,
}

/// Load watermarks: a region becomes saturated above `high` and stops
/// being saturated below `low`. `low <= high`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Watermarks {
    pub low: u64,
    pub high: u64,
}

/// How the program is attached to each interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum XdpMode {
    /// In the driver where it has XDP, else generic.
    #[default]
    Auto,
    /// In the driver, or not at all: an operator who sized the gateway on
    /// native figures would rather it refused to start than ran slower.
    Native,
    /// On the socket buffer, after the driver: works on every interface.
    Generic,
}

/// What new flows of a service do when none of its regions is eligible.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AllDown {
    /// Keep steering to the last active region: if the checks are what
    /// failed, traffic still flows.
    KeepLast,
    /// Select nowhere: the data plane drops new flows and counts them.
    Drop,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionConfig {
    pub id: u8,
    pub name: String,
    /// Where the region serves, of either family.
    pub address: IpAddr,
    /// Its IPv6 address too, when `address` is IPv4: a dual-stack region.
    pub address6: Option<Ipv6Addr>,
    pub priority: u32,
    /// The `[health]` defaults with this region's overrides applied.
    pub health: HealthSettings,
    /// At least one.
    pub checks: Vec<Check>,
    /// The region's share of new flows under `weighted`, unless a service
    /// overrides it. 0: a backup, which takes new flows only when no region
    /// of positive weight is eligible.
    pub weight: u32,
    /// Client-to-region packets per second.
    pub pps: Option<Watermarks>,
    /// Active flows.
    pub flows: Option<Watermarks>,
    /// Percent of the CPU, as the region's agent reports it over the
    /// heartbeat: at most 100.
    pub cpu: Option<Watermarks>,
}

impl RegionConfig {
    /// The region's address of `vip`'s family, if it has one.
    pub fn address_for(&self, vip: IpAddr) -> Option<IpAddr> {
        match (vip, self.address) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => Some(self.address),
            (IpAddr::V6(_), IpAddr::V4(_)) => self.address6.map(IpAddr::V6),
            (IpAddr::V4(_), IpAddr::V6(_)) => None,
        }
    }

    /// The watermarks a spill policy compares this region's `measure` with.
    pub fn watermarks(&self, measure: Measure) -> Option<Watermarks> {
        match measure {
            Measure::Pps => self.pps,
            Measure::Flows => self.flows,
            Measure::Cpu => self.cpu,
        }
    }

    pub(crate) fn has_heartbeat(&self) -> bool {
        self.checks
            .iter()
            .any(|c| matches!(c, Check::Heartbeat { .. }))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    /// The region's redirector-agent, over the UDP heartbeat protocol.
    Heartbeat {
        address: SocketAddr,
        key_file: Option<PathBuf>,
    },
    Http(HttpCheck),
    /// A TCP connect.
    Tcp {
        address: SocketAddr,
    },
    /// A BFD session with the region's router or host: `interval_ms` is
    /// its desired TX and required RX interval, `fall` its detect
    /// multiplier. With a key file, meticulous keyed SHA1 under `key_id`.
    Bfd {
        address: Ipv4Addr,
        key_file: Option<PathBuf>,
        key_id: u8,
    },
}

impl Check {
    pub fn kind(&self) -> CheckKind {
        match self {
            Check::Heartbeat { .. } => CheckKind::Heartbeat,
            Check::Http(_) => CheckKind::Http,
            Check::Tcp { .. } => CheckKind::Tcp,
            Check::Bfd { .. } => CheckKind::Bfd,
        }
    }

    /// What it probes: the agent's or the server's address, or the URL.
    pub fn target(&self) -> String {
        match self {
            Check::Heartbeat { address, .. } | Check::Tcp { address } => address.to_string(),
            Check::Http(http) => http.url.clone(),
            Check::Bfd { address, .. } => address.to_string(),
        }
    }
}

/// How a check is named in logs and events: "heartbeat 10.2.0.2:7946".
impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind(), self.target())
    }
}

/// What a client addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceAddr {
    pub vip: IpAddr,
    /// 0 for ICMP echo services.
    pub port: u16,
    pub protocol: Protocol,
}

impl fmt::Display for ServiceAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.protocol, SocketAddr::new(self.vip, self.port))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceConfig {
    pub id: u32,
    pub name: String,
    pub addr: ServiceAddr,
    pub policy: PolicyKind,
    /// Region ids, as listed: among equal priorities the first wins.
    pub regions: Vec<u8>,
    /// Parallel to `regions`: each region's `weight`, or the service's
    /// override.
    pub weights: Vec<u32>,
    pub target_port: Option<u16>,
}

impl ServiceConfig {
    /// Where `region` serves this service: its address of the VIP's family,
    /// at `target_port` or the service's own port. None if the region has
    /// no address of that family (a checked config never lists it then).
    pub fn endpoint(&self, region: &RegionConfig) -> Option<SocketAddr> {
        let address = region.address_for(self.addr.vip)?;
        Some(SocketAddr::new(address, self.target_port.unwrap_or(self.addr.port)))
    }

    /// Refuses weights that would leave a weighted service without a region
    /// for new flows. `weights` is parallel to `regions`.
    pub fn check_weights(&self, weights: &[u32]) -> Result<(), String> {
        if weights.len() != self.regions.len() {
            return Err(format!(
                "service {:?} has {} regions: it takes {} weights, not {}",
                self.name,
                self.regions.len(),
                self.regions.len(),
                weights.len()
            ));
        }
        // A region of weight 0 is a backup to those of positive weight;
        // with none positive, weighted has nothing to share new flows by.
        if self.policy == PolicyKind::Weighted && weights.iter().all(|&w| w == 0) {
            return Err(format!(
                "every weight of service {:?} would be 0: no region would take new flows",
                self.name
            ));
        }
        Ok(())
    }
}

#[derive(Debug)]
pub enum ConfigError {
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    Invalid {
        file: String,
        line: usize,
        /// Empty when the text is not TOML at all.
        key: String,
        message: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { path, source } => write!(f, "{}: {source}", path.display()),
            ConfigError::Invalid {
                file,
                line,
                key,
                message,
            } if key.is_empty() => write!(f, "{file}:{line}: {message}"),
            ConfigError::Invalid {
                file,
                line,
                key,
                message,
            } => write!(f, "{file}:{line}: {key}: {message}"),
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Read { source, .. } => Some(source),
            ConfigError::Invalid { .. } => None,
        }
    }
}

impl Config {
    /// Reads `path`, which must be a regular file of at most
    /// [`MAX_CONFIG_FILE`] bytes of UTF-8, and checks it whole.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let read = |source| ConfigError::Read { path: path.to_path_buf(), source };
        let bytes = redirector_proto::file::read_small(path, MAX_CONFIG_FILE).map_err(read)?;
        let text = String::from_utf8(bytes)
            .map_err(|e| read(std::io::Error::new(std::io::ErrorKind::InvalidData, e.utf8_error())))?;
        Config::parse(&text, &path.display().to_string())
    }

    /// `file` only names the text in messages.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        validate::parse(text, file)
    }
}
