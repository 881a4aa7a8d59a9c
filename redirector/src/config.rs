//! redirectord's configuration: one TOML file, checked whole before the
//! daemon touches the data plane.
//!
//! ```toml
//! interfaces = ["veth-client", "veth-r1", "veth-r2"]  # XDP is attached to each
//! pin_path = "/sys/fs/bpf/redirector"                   # default
//! control_socket = "/run/redirector/control.sock"       # default
//! metrics_listen = "127.0.0.1:9477"                     # metrics off when absent
//!
//! [health]               # defaults for every region; a region may override each
//! interval_ms = 100      # between probes of one check; at least 10
//! fall = 3               # consecutive misses that take a check down
//! rise = 3               # consecutive successes that bring it up
//! timeout_ms = 100       # a probe unanswered this long is a miss; <= interval_ms
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
//! address = "10.1.0.2"
//! priority = 100                 # default 0; the highest eligible wins
//! checks = [{ kind = "http", url = "http://10.1.0.2:80/", expect_status = 200 }]
//! # interval_ms, fall, rise, timeout_ms: per-region overrides
//!
//! [[region]]
//! name = "region2"
//! address = "10.2.0.2"
//! priority = 200
//! checks = [{ kind = "heartbeat", address = "10.2.0.2:7946", key_file = "/etc/redirector/hb.key" }]
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
//! vip = "10.2.0.2"
//! port = 80                      # tcp and udp only
//! protocol = "tcp"               # tcp | udp | icmp
//! policy = "failover"            # default; or weighted | pps | flows | cpu
//! regions = ["region1", "region2"]
//! weights = { region1 = 3, region2 = 1 }  # optional: overrides the regions' weight for this service
//! target_port = 8080             # optional: the regions serve on this port
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
//! region1, region2)`.

use std::{
    collections::{BTreeMap, HashMap},
    fmt, fs,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    ops::Range,
    path::{Path, PathBuf},
    time::Duration,
};

use redirector_common::{MAX_REGIONS, MAX_SERVICES};
use serde::Deserialize;
use toml::Spanned;

use crate::{
    control::DEFAULT_SOCKET,
    dataplane::{Protocol, ServiceAddr, ServiceSpec, DEFAULT_PIN_PATH},
};

/// The window of `max_switches_per_minute`.
pub const SWITCH_WINDOW: Duration = Duration::from_secs(60);
const MIN_INTERVAL_MS: u64 = 10;
/// The kernel's IFNAMSIZ less the terminating NUL.
const MAX_INTERFACE_NAME: usize = 15;

const DEFAULT_HEALTH: HealthSettings = HealthSettings {
    interval: Duration::from_millis(100),
    fall: 3,
    rise: 3,
    timeout: Duration::from_millis(100),
};
const DEFAULT_FAILOVER: FailoverSettings = FailoverSettings {
    preempt: true,
    preempt_delay: Duration::ZERO,
    max_switches_per_minute: 6,
    all_down: AllDown::KeepLast,
};
const DEFAULT_BALANCE: BalanceSettings = BalanceSettings {
    dwell: Duration::from_millis(3000),
    sample: Duration::from_millis(1000),
};
/// A sample walks the whole flow table: about 0.1 s when it is full, and
/// samples then come no more often than every 0.2 s (the walk takes at most
/// half a core).
const MIN_SAMPLE_MS: u64 = 100;
/// One share each: with no weights written, `weighted` spreads evenly.
const DEFAULT_WEIGHT: u32 = 1;
/// cpu watermarks are a percentage of the region's CPU.
const MAX_PERCENT: u64 = 100;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub interfaces: Vec<String>,
    pub pin_path: PathBuf,
    pub control_socket: PathBuf,
    pub metrics_listen: Option<SocketAddr>,
    pub failover: FailoverSettings,
    pub balance: BalanceSettings,
    /// Position is the region's id in the data plane.
    pub regions: Vec<RegionConfig>,
    /// Position is the service's id in the data plane.
    pub services: Vec<ServiceConfig>,
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
    pub address: Ipv4Addr,
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
    /// The watermarks a load policy compares this region's load with; none
    /// for the policies that do not measure load.
    pub fn watermarks(&self, policy: PolicyKind) -> Option<Watermarks> {
        match policy {
            PolicyKind::Failover | PolicyKind::Weighted => None,
            PolicyKind::Pps => self.pps,
            PolicyKind::Flows => self.flows,
            PolicyKind::Cpu => self.cpu,
        }
    }

    fn has_heartbeat(&self) -> bool {
        self.checks
            .iter()
            .any(|c| matches!(c, Check::Heartbeat { .. }))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    /// The region's redirector-agent, over the UDP heartbeat protocol.
    Heartbeat {
        address: SocketAddrV4,
        key_file: Option<PathBuf>,
    },
    Http(HttpCheck),
    /// A TCP connect.
    Tcp {
        address: SocketAddrV4,
    },
}

/// A GET whose answer must carry `expect_status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpCheck {
    pub url: String,
    pub host: String,
    pub port: u16,
    /// With the query, if any; "/" when the URL has none.
    pub path: String,
    pub expect_status: u16,
}

/// How a check is named in status output and events.
impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Check::Heartbeat { address, .. } => write!(f, "heartbeat {address}"),
            Check::Http(http) => write!(f, "http {}", http.url),
            Check::Tcp { address } => write!(f, "tcp {address}"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyKind {
    /// The highest-priority eligible region takes every new flow.
    Failover,
    /// New flows are shared among the eligible regions by weight.
    Weighted,
    /// Failover, except that new flows spill to the next region while one
    /// is saturated by packets per second, active flows or CPU.
    Pps,
    Flows,
    Cpu,
}

impl PolicyKind {
    /// As written in the file.
    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::Failover => "failover",
            PolicyKind::Weighted => "weighted",
            PolicyKind::Pps => "pps",
            PolicyKind::Flows => "flows",
            PolicyKind::Cpu => "cpu",
        }
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
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// `file` only names the text in messages.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let source = Source { file, text };
        let raw: RawConfig = serde_path_to_error::deserialize(toml::Deserializer::new(text))
            .map_err(|e| source.serde_error(e))?;
        source.config(raw)
    }

    /// The services as the data plane takes them: each region serves on its
    /// address, at `target_port` or the service's own port.
    pub fn service_specs(&self) -> Vec<ServiceSpec> {
        self.services
            .iter()
            .map(|s| ServiceSpec {
                id: s.id,
                addr: s.addr,
                backends: s
                    .regions
                    .iter()
                    .map(|&id| {
                        let port = s.target_port.unwrap_or(s.addr.port);
                        (
                            id,
                            SocketAddrV4::new(self.regions[id as usize].address, port),
                        )
                    })
                    .collect(),
            })
            .collect()
    }
}

// The file as written. Values that later checks refer to keep their spans.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    interfaces: Spanned<Vec<Spanned<String>>>,
    pin_path: Option<PathBuf>,
    control_socket: Option<PathBuf>,
    metrics_listen: Option<SocketAddr>,
    #[serde(default)]
    health: RawHealth,
    #[serde(default)]
    failover: RawFailover,
    #[serde(default)]
    balance: RawBalance,
    #[serde(default)]
    region: Vec<RawRegion>,
    #[serde(default)]
    service: Vec<RawService>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    interval_ms: Option<Spanned<u64>>,
    fall: Option<Spanned<u32>>,
    rise: Option<Spanned<u32>>,
    timeout_ms: Option<Spanned<u64>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFailover {
    preempt: Option<bool>,
    preempt_delay_ms: Option<u64>,
    max_switches_per_minute: Option<Spanned<u32>>,
    all_down: Option<AllDown>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBalance {
    dwell_ms: Option<u64>,
    sample_ms: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegion {
    name: Spanned<String>,
    address: Ipv4Addr,
    #[serde(default)]
    priority: u32,
    checks: Spanned<Vec<RawCheck>>,
    interval_ms: Option<Spanned<u64>>,
    fall: Option<Spanned<u32>>,
    rise: Option<Spanned<u32>>,
    timeout_ms: Option<Spanned<u64>>,
    weight: Option<u32>,
    pps: Option<RawWatermarks>,
    flows: Option<RawWatermarks>,
    cpu: Option<RawWatermarks>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWatermarks {
    low: Spanned<u64>,
    high: Spanned<u64>,
}

impl RawRegion {
    fn health_overrides(&self) -> RawHealth {
        RawHealth {
            interval_ms: self.interval_ms.clone(),
            fall: self.fall.clone(),
            rise: self.rise.clone(),
            timeout_ms: self.timeout_ms.clone(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum CheckKind {
    Heartbeat,
    Http,
    Tcp,
}

/// Flat rather than an internally tagged enum: serde buffers those, which
/// loses the spans that point an error at the offending key.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCheck {
    kind: Spanned<CheckKind>,
    address: Option<Spanned<SocketAddrV4>>,
    key_file: Option<Spanned<PathBuf>>,
    url: Option<Spanned<String>>,
    expect_status: Option<Spanned<u16>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: Spanned<String>,
    vip: Spanned<Ipv4Addr>,
    port: Option<Spanned<u16>>,
    protocol: Spanned<Protocol>,
    policy: Option<Spanned<PolicyKind>>,
    regions: Spanned<Vec<Spanned<String>>>,
    /// Region name to weight; toml keeps no order, the spans give it back.
    /// (A spanned key would show as `?` in the key path of a type error.)
    weights: Option<Spanned<BTreeMap<String, Spanned<u32>>>>,
    target_port: Option<Spanned<u16>>,
}

/// A health setting and where it comes from, so that an inconsistency is
/// blamed on the line that caused it.
#[derive(Clone)]
struct Located<T> {
    value: T,
    span: Range<usize>,
    key: String,
    level: Level,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    Default,
    Health,
    Region,
}

impl<T: Copy> Located<T> {
    fn inherit(
        own: &Option<Spanned<T>>,
        key: String,
        level: Level,
        inherited: &Located<T>,
    ) -> Self {
        match own {
            Some(v) => Located {
                value: *v.get_ref(),
                span: v.span(),
                key,
                level,
            },
            None => inherited.clone(),
        }
    }
}

struct LocatedHealth {
    interval_ms: Located<u64>,
    fall: Located<u32>,
    rise: Located<u32>,
    timeout_ms: Located<u64>,
}

impl LocatedHealth {
    fn defaults() -> Self {
        fn default<T>(value: T, name: &str) -> Located<T> {
            Located {
                value,
                span: 0..0,
                key: format!("health.{name} (default)"),
                level: Level::Default,
            }
        }
        LocatedHealth {
            interval_ms: default(DEFAULT_HEALTH.interval.as_millis() as u64, "interval_ms"),
            fall: default(DEFAULT_HEALTH.fall, "fall"),
            rise: default(DEFAULT_HEALTH.rise, "rise"),
            timeout_ms: default(DEFAULT_HEALTH.timeout.as_millis() as u64, "timeout_ms"),
        }
    }

    fn overridden(&self, raw: &RawHealth, prefix: &str, level: Level) -> Self {
        let key = |name: &str| format!("{prefix}.{name}");
        LocatedHealth {
            interval_ms: Located::inherit(
                &raw.interval_ms,
                key("interval_ms"),
                level,
                &self.interval_ms,
            ),
            fall: Located::inherit(&raw.fall, key("fall"), level, &self.fall),
            rise: Located::inherit(&raw.rise, key("rise"), level, &self.rise),
            timeout_ms: Located::inherit(
                &raw.timeout_ms,
                key("timeout_ms"),
                level,
                &self.timeout_ms,
            ),
        }
    }

    fn settings(&self) -> HealthSettings {
        HealthSettings {
            interval: Duration::from_millis(self.interval_ms.value),
            fall: self.fall.value,
            rise: self.rise.value,
            timeout: Duration::from_millis(self.timeout_ms.value),
        }
    }
}

/// The text being checked, to turn byte spans into line numbers.
struct Source<'a> {
    file: &'a str,
    text: &'a str,
}

impl Source<'_> {
    fn line(&self, offset: usize) -> usize {
        let offset = offset.min(self.text.len());
        self.text.as_bytes()[..offset]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    fn error(
        &self,
        span: Range<usize>,
        key: impl fmt::Display,
        message: impl fmt::Display,
    ) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_string(),
            line: self.line(span.start),
            key: key.to_string(),
            // toml's messages span lines; ours stay on one.
            message: message.to_string().trim().replace('\n', "; "),
        }
    }

    fn serde_error(&self, e: serde_path_to_error::Error<toml::de::Error>) -> ConfigError {
        let key = without_spanned_segments(&e.path().to_string());
        let inner = e.inner();
        self.error(inner.span().unwrap_or(0..0), key, inner.message())
    }

    /// In the order of the file's sections, so the first error reported
    /// is the first one in the file.
    fn config(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let interfaces = self.interfaces(&raw.interfaces)?;
        let health = self.health_defaults(&raw.health)?;
        let failover = self.failover(&raw.failover)?;
        let balance = self.balance(&raw.balance)?;
        let regions = self.regions(&raw.region, &health)?;
        let services = self.services(&raw.service, &regions)?;
        Ok(Config {
            interfaces,
            pin_path: raw
                .pin_path
                .unwrap_or_else(|| PathBuf::from(DEFAULT_PIN_PATH)),
            control_socket: raw
                .control_socket
                .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET)),
            metrics_listen: raw.metrics_listen,
            failover,
            balance,
            regions,
            services,
        })
    }

    fn interfaces(&self, raw: &Spanned<Vec<Spanned<String>>>) -> Result<Vec<String>, ConfigError> {
        if raw.get_ref().is_empty() {
            return Err(self.error(raw.span(), "interfaces", "at least one interface is needed"));
        }
        let mut seen = HashMap::new();
        for (i, name) in raw.get_ref().iter().enumerate() {
            let key = format!("interfaces[{i}]");
            let valid = (1..=MAX_INTERFACE_NAME).contains(&name.get_ref().len())
                && !name
                    .get_ref()
                    .contains(|c: char| c == '/' || c.is_whitespace());
            if !valid {
                return Err(self.error(
                    name.span(),
                    key,
                    format!(
                        "{:?} is not an interface name (1 to {MAX_INTERFACE_NAME} bytes, no '/' or spaces)",
                        name.get_ref()
                    ),
                ));
            }
            self.unique(&mut seen, name, &key)?;
        }
        Ok(raw.get_ref().iter().map(|n| n.get_ref().clone()).collect())
    }

    /// Refuses a name seen before, naming the line of the first one.
    fn unique(
        &self,
        seen: &mut HashMap<String, usize>,
        name: &Spanned<String>,
        key: &str,
    ) -> Result<(), ConfigError> {
        let line = self.line(name.span().start);
        if let Some(first) = seen.insert(name.get_ref().clone(), line) {
            return Err(self.error(
                name.span(),
                key,
                format!("{:?} appears twice (first on line {first})", name.get_ref()),
            ));
        }
        Ok(())
    }

    fn name(&self, name: &Spanned<String>, key: &str) -> Result<(), ConfigError> {
        let value = name.get_ref();
        let valid = !value.is_empty()
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid {
            return Err(self.error(
                name.span(),
                key,
                format!("{value:?}: a name is non-empty ASCII letters, digits, '-', '_' or '.'"),
            ));
        }
        Ok(())
    }

    fn health_defaults(&self, raw: &RawHealth) -> Result<LocatedHealth, ConfigError> {
        let health = LocatedHealth::defaults().overridden(raw, "health", Level::Health);
        self.check_health(&health)?;
        Ok(health)
    }

    fn blame<T>(&self, at: &Located<T>, message: impl fmt::Display) -> ConfigError {
        self.error(at.span.clone(), &at.key, message)
    }

    fn check_health(&self, h: &LocatedHealth) -> Result<(), ConfigError> {
        if h.interval_ms.value < MIN_INTERVAL_MS {
            return Err(self.blame(
                &h.interval_ms,
                format!(
                    "{} ms is below the minimum of {MIN_INTERVAL_MS} ms",
                    h.interval_ms.value
                ),
            ));
        }
        for count in [&h.fall, &h.rise] {
            if count.value == 0 {
                return Err(self.blame(count, "must be at least 1"));
            }
        }
        if h.timeout_ms.value == 0 {
            return Err(self.blame(&h.timeout_ms, "must be at least 1 ms"));
        }
        if h.timeout_ms.value > h.interval_ms.value {
            // Blame the setting written closest to the region.
            let blamed = if h.timeout_ms.level >= h.interval_ms.level {
                &h.timeout_ms
            } else {
                &h.interval_ms
            };
            return Err(self.blame(
                blamed,
                format!(
                    "timeout_ms ({}) exceeds interval_ms ({}): a check has one probe in flight at a time",
                    h.timeout_ms.value, h.interval_ms.value
                ),
            ));
        }
        Ok(())
    }

    fn failover(&self, raw: &RawFailover) -> Result<FailoverSettings, ConfigError> {
        let max_switches_per_minute = match &raw.max_switches_per_minute {
            Some(n) if *n.get_ref() == 0 => {
                return Err(self.error(
                    n.span(),
                    "failover.max_switches_per_minute",
                    "must be at least 1 (set preempt = false to stop failback)",
                ))
            }
            Some(n) => *n.get_ref(),
            None => DEFAULT_FAILOVER.max_switches_per_minute,
        };
        Ok(FailoverSettings {
            preempt: raw.preempt.unwrap_or(DEFAULT_FAILOVER.preempt),
            preempt_delay: raw
                .preempt_delay_ms
                .map_or(DEFAULT_FAILOVER.preempt_delay, Duration::from_millis),
            max_switches_per_minute,
            all_down: raw.all_down.unwrap_or(DEFAULT_FAILOVER.all_down),
        })
    }

    fn balance(&self, raw: &RawBalance) -> Result<BalanceSettings, ConfigError> {
        let sample = match &raw.sample_ms {
            Some(ms) if *ms.get_ref() < MIN_SAMPLE_MS => {
                return Err(self.error(
                    ms.span(),
                    "balance.sample_ms",
                    format!(
                        "{} ms is below the minimum of {MIN_SAMPLE_MS} ms: each sample walks the flow table",
                        ms.get_ref()
                    ),
                ))
            }
            Some(ms) => Duration::from_millis(*ms.get_ref()),
            None => DEFAULT_BALANCE.sample,
        };
        Ok(BalanceSettings {
            dwell: raw.dwell_ms.map_or(DEFAULT_BALANCE.dwell, Duration::from_millis),
            sample,
        })
    }

    fn regions(
        &self,
        raw: &[RawRegion],
        health: &LocatedHealth,
    ) -> Result<Vec<RegionConfig>, ConfigError> {
        if raw.is_empty() {
            return Err(self.error(0..0, "region", "at least one [[region]] is needed"));
        }
        let mut seen = HashMap::new();
        let mut regions = Vec::new();
        for (i, r) in raw.iter().enumerate() {
            let key = format!("region[{i}]");
            if i >= MAX_REGIONS as usize {
                return Err(self.error(
                    r.name.span(),
                    key,
                    format!("more than {MAX_REGIONS} regions: the data plane holds {MAX_REGIONS}"),
                ));
            }
            self.name(&r.name, &format!("{key}.name"))?;
            self.unique(&mut seen, &r.name, &format!("{key}.name"))?;
            let prefix = format!("region {:?}", r.name.get_ref());
            let located = health.overridden(&r.health_overrides(), &prefix, Level::Region);
            self.check_health(&located)?;
            regions.push(RegionConfig {
                id: i as u8,
                name: r.name.get_ref().clone(),
                address: r.address,
                priority: r.priority,
                health: located.settings(),
                checks: self.checks(&r.checks, &prefix)?,
                weight: r.weight.unwrap_or(DEFAULT_WEIGHT),
                pps: self.watermarks(&r.pps, &format!("{prefix}.pps"), false)?,
                flows: self.watermarks(&r.flows, &format!("{prefix}.flows"), false)?,
                cpu: self.watermarks(&r.cpu, &format!("{prefix}.cpu"), true)?,
            });
        }
        Ok(regions)
    }

    /// `percent`: the load is a percentage, so no watermark is above 100.
    fn watermarks(
        &self,
        raw: &Option<RawWatermarks>,
        key: &str,
        percent: bool,
    ) -> Result<Option<Watermarks>, ConfigError> {
        let Some(raw) = raw else {
            return Ok(None);
        };
        let (low, high) = (*raw.low.get_ref(), *raw.high.get_ref());
        if percent && high > MAX_PERCENT {
            return Err(self.error(
                raw.high.span(),
                key,
                format!("high ({high}) is above {MAX_PERCENT} percent"),
            ));
        }
        if low > high {
            return Err(self.error(
                raw.low.span(),
                key,
                format!("low ({low}) is above high ({high})"),
            ));
        }
        Ok(Some(Watermarks { low, high }))
    }

    fn checks(
        &self,
        raw: &Spanned<Vec<RawCheck>>,
        prefix: &str,
    ) -> Result<Vec<Check>, ConfigError> {
        if raw.get_ref().is_empty() {
            return Err(self.error(
                raw.span(),
                format!("{prefix}.checks"),
                "at least one check is needed: a region without one could never be up",
            ));
        }
        raw.get_ref()
            .iter()
            .enumerate()
            .map(|(i, c)| self.check(c, &format!("{prefix}.checks[{i}]")))
            .collect()
    }

    fn check(&self, raw: &RawCheck, key: &str) -> Result<Check, ConfigError> {
        let kind = *raw.kind.get_ref();
        let (allowed, kind_name): (&[&str], _) = match kind {
            CheckKind::Heartbeat => (&["address", "key_file"], "heartbeat"),
            CheckKind::Http => (&["url", "expect_status"], "http"),
            CheckKind::Tcp => (&["address"], "tcp"),
        };
        let present = [
            ("address", raw.address.as_ref().map(Spanned::span)),
            ("key_file", raw.key_file.as_ref().map(Spanned::span)),
            ("url", raw.url.as_ref().map(Spanned::span)),
            (
                "expect_status",
                raw.expect_status.as_ref().map(Spanned::span),
            ),
        ];
        for (name, span) in present {
            if let Some(span) = span.filter(|_| !allowed.contains(&name)) {
                return Err(self.error(
                    span,
                    format!("{key}.{name}"),
                    format!(
                        "a {kind_name} check has no {name} (its keys: {})",
                        allowed.join(", ")
                    ),
                ));
            }
        }
        let missing = |name: &str| {
            self.error(
                raw.kind.span(),
                format!("{key}.{name}"),
                format!("a {kind_name} check needs {name}"),
            )
        };
        Ok(match kind {
            CheckKind::Heartbeat => Check::Heartbeat {
                address: *raw
                    .address
                    .as_ref()
                    .ok_or_else(|| missing("address"))?
                    .get_ref(),
                key_file: raw.key_file.as_ref().map(|k| k.get_ref().clone()),
            },
            CheckKind::Tcp => Check::Tcp {
                address: *raw
                    .address
                    .as_ref()
                    .ok_or_else(|| missing("address"))?
                    .get_ref(),
            },
            CheckKind::Http => {
                let url = raw.url.as_ref().ok_or_else(|| missing("url"))?;
                let expect_status = match &raw.expect_status {
                    Some(s) if !(100..=599).contains(s.get_ref()) => {
                        return Err(self.error(
                            s.span(),
                            format!("{key}.expect_status"),
                            format!("{} is not an HTTP status (100 to 599)", s.get_ref()),
                        ))
                    }
                    Some(s) => *s.get_ref(),
                    None => 200,
                };
                Check::Http(
                    HttpCheck::parse(url.get_ref(), expect_status)
                        .map_err(|m| self.error(url.span(), format!("{key}.url"), m))?,
                )
            }
        })
    }

    fn services(
        &self,
        raw: &[RawService],
        regions: &[RegionConfig],
    ) -> Result<Vec<ServiceConfig>, ConfigError> {
        let mut names = HashMap::new();
        let mut addrs: HashMap<ServiceAddr, (String, usize)> = HashMap::new();
        let mut services = Vec::new();
        for (i, s) in raw.iter().enumerate() {
            let key = format!("service[{i}]");
            if i >= MAX_SERVICES as usize {
                return Err(self.error(
                    s.name.span(),
                    key,
                    format!(
                        "more than {MAX_SERVICES} services: the data plane holds {MAX_SERVICES}"
                    ),
                ));
            }
            self.name(&s.name, &format!("{key}.name"))?;
            self.unique(&mut names, &s.name, &format!("{key}.name"))?;
            let prefix = format!("service {:?}", s.name.get_ref());
            let addr = self.service_addr(s, &prefix)?;
            let line = self.line(s.vip.span().start);
            if let Some((other, first)) = addrs.insert(addr, (s.name.get_ref().clone(), line)) {
                return Err(self.error(
                    s.vip.span(),
                    format!("{prefix}.vip"),
                    format!(
                        "{} {}:{} is already service {other:?} (line {first})",
                        protocol_name(addr.protocol),
                        addr.vip,
                        addr.port
                    ),
                ));
            }
            let ids = self.service_regions(&s.regions, regions, &prefix)?;
            let service = ServiceConfig {
                id: i as u32,
                name: s.name.get_ref().clone(),
                addr,
                policy: s
                    .policy
                    .as_ref()
                    .map_or(PolicyKind::Failover, |p| *p.get_ref()),
                weights: self.service_weights(s, &ids, regions, &prefix)?,
                regions: ids,
                target_port: self.target_port(s, &prefix)?,
            };
            self.policy_inputs(s, &service, regions, &prefix)?;
            services.push(service);
        }
        Ok(services)
    }

    /// The regions' own weights, with the service's overrides applied.
    fn service_weights(
        &self,
        s: &RawService,
        ids: &[u8],
        regions: &[RegionConfig],
        prefix: &str,
    ) -> Result<Vec<u32>, ConfigError> {
        let mut weights: Vec<u32> = ids.iter().map(|&id| regions[id as usize].weight).collect();
        let Some(raw) = &s.weights else {
            return Ok(weights);
        };
        let mut overrides: Vec<_> = raw.get_ref().iter().collect();
        overrides.sort_by_key(|(_, weight)| weight.span().start);
        for (name, weight) in overrides {
            let key = format!("{prefix}.weights.{name}");
            let region = self.region_named(name, weight.span(), regions, &key)?;
            let Some(i) = ids.iter().position(|&id| id == region.id) else {
                let own: Vec<&str> = s
                    .regions
                    .get_ref()
                    .iter()
                    .map(|n| n.get_ref().as_str())
                    .collect();
                return Err(self.error(
                    weight.span(),
                    key,
                    format!(
                        "{name:?} is not among service {:?}'s regions ({})",
                        s.name.get_ref(),
                        own.join(", ")
                    ),
                ));
            };
            weights[i] = *weight.get_ref();
        }
        Ok(weights)
    }

    /// Refuses a policy that has nothing to go by: no weight to share new
    /// flows by, or no load to compare.
    fn policy_inputs(
        &self,
        s: &RawService,
        service: &ServiceConfig,
        regions: &[RegionConfig],
        prefix: &str,
    ) -> Result<(), ConfigError> {
        // The default, failover, needs nothing but priorities.
        let Some(policy) = &s.policy else {
            return Ok(());
        };
        let refuse =
            |message: String| self.error(policy.span(), format!("{prefix}.policy"), message);
        let members = || service.regions.iter().map(|&id| &regions[id as usize]);
        match service.policy {
            PolicyKind::Failover => Ok(()),
            PolicyKind::Weighted => {
                service
                    .check_weights(&service.weights)
                    .map_err(|message| match &s.weights {
                        Some(w) => self.error(w.span(), format!("{prefix}.weights"), message),
                        None => refuse(message),
                    })
            }
            load => {
                let name = load.name();
                if !members().any(|r| r.watermarks(load).is_some()) {
                    return Err(refuse(format!(
                        "policy {name} needs {name} = {{ low, high }} on at least one of its regions"
                    )));
                }
                // Only the agent knows its region's CPU; it tells over the
                // heartbeat.
                if load == PolicyKind::Cpu {
                    if let Some(r) = members().find(|r| r.cpu.is_some() && !r.has_heartbeat()) {
                        return Err(refuse(format!(
                            "region {:?} has cpu watermarks but no heartbeat check, over which its agent reports CPU",
                            r.name
                        )));
                    }
                }
                Ok(())
            }
        }
    }

    /// The region called `name`, written at `span`; refused naming the
    /// known ones.
    fn region_named<'r>(
        &self,
        name: &str,
        span: Range<usize>,
        regions: &'r [RegionConfig],
        key: &str,
    ) -> Result<&'r RegionConfig, ConfigError> {
        regions.iter().find(|r| r.name == name).ok_or_else(|| {
            let known: Vec<&str> = regions.iter().map(|r| r.name.as_str()).collect();
            self.error(
                span,
                key,
                format!("unknown region {name:?} (known: {})", known.join(", ")),
            )
        })
    }

    fn service_addr(&self, s: &RawService, prefix: &str) -> Result<ServiceAddr, ConfigError> {
        let protocol = *s.protocol.get_ref();
        let port = match (protocol, &s.port) {
            (Protocol::Icmp, None) => 0,
            (Protocol::Icmp, Some(p)) => {
                return Err(self.error(
                    p.span(),
                    format!("{prefix}.port"),
                    "an icmp service has no port",
                ))
            }
            (_, None) => {
                return Err(self.error(
                    s.protocol.span(),
                    format!("{prefix}.port"),
                    format!("a {} service needs a port", protocol_name(protocol)),
                ))
            }
            (_, Some(p)) if *p.get_ref() == 0 => {
                return Err(self.error(
                    p.span(),
                    format!("{prefix}.port"),
                    "port 0 is not a service port",
                ))
            }
            (_, Some(p)) => *p.get_ref(),
        };
        Ok(ServiceAddr {
            vip: *s.vip.get_ref(),
            port,
            protocol,
        })
    }

    fn target_port(&self, s: &RawService, prefix: &str) -> Result<Option<u16>, ConfigError> {
        let Some(p) = &s.target_port else {
            return Ok(None);
        };
        let key = format!("{prefix}.target_port");
        if *s.protocol.get_ref() == Protocol::Icmp {
            return Err(self.error(p.span(), key, "an icmp service has no port"));
        }
        if *p.get_ref() == 0 {
            return Err(self.error(p.span(), key, "port 0 is not a service port"));
        }
        Ok(Some(*p.get_ref()))
    }

    fn service_regions(
        &self,
        raw: &Spanned<Vec<Spanned<String>>>,
        regions: &[RegionConfig],
        prefix: &str,
    ) -> Result<Vec<u8>, ConfigError> {
        let key = format!("{prefix}.regions");
        if raw.get_ref().is_empty() {
            return Err(self.error(raw.span(), key, "at least one region is needed"));
        }
        let mut seen = HashMap::new();
        let mut ids = Vec::new();
        for name in raw.get_ref() {
            let region = self.region_named(name.get_ref(), name.span(), regions, &key)?;
            self.unique(&mut seen, name, &key)?;
            ids.push(region.id);
        }
        Ok(ids)
    }
}

/// Spanned<T> shows up in serde's path as a private field of its own, as in
/// `checks.$__serde_spanned_private_value[0]`; the operator's key is
/// `checks[0]`. A path to the root is printed as ".".
fn without_spanned_segments(path: &str) -> String {
    let mut key = String::new();
    for segment in path.split('.').filter(|s| !s.is_empty()) {
        match segment.strip_prefix("$__") {
            Some(private) => key.push_str(&private[private.find('[').unwrap_or(private.len())..]),
            None => {
                if !key.is_empty() {
                    key.push('.');
                }
                key.push_str(segment);
            }
        }
    }
    key
}

fn protocol_name(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Icmp => "icmp",
    }
}

impl HttpCheck {
    /// `http://HOST[:PORT][/PATH]`: the checker speaks plain HTTP only.
    pub fn parse(url: &str, expect_status: u16) -> Result<HttpCheck, String> {
        let (host, port, path) = parse_http_url(url)?;
        Ok(HttpCheck {
            url: url.to_string(),
            host,
            port,
            path,
            expect_status,
        })
    }
}

fn parse_http_url(url: &str) -> Result<(String, u16, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url:?}: only http:// URLs are supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) => {
            let port = port
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| format!("{url:?}: bad port {port:?}"))?;
            (host, port)
        }
        None => (authority, 80),
    };
    if host.is_empty() || host.contains(['@', '[', ']', '?', '#']) {
        return Err(format!("{url:?}: bad host {host:?}"));
    }
    Ok((host.to_string(), port, path.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAB: &str = r#"interfaces = ["veth-client", "veth-r1", "veth-r2"]
metrics_listen = "127.0.0.1:9477"

[health]
interval_ms = 100
fall = 3
rise = 3
timeout_ms = 100

[failover]
preempt = true
preempt_delay_ms = 0
max_switches_per_minute = 6
all_down = "keep-last"

[[region]]
name = "region1"
address = "10.1.0.2"
priority = 100
checks = [{ kind = "http", url = "http://10.1.0.2:80/", expect_status = 200 }]

[[region]]
name = "region2"
address = "10.2.0.2"
priority = 200
checks = [{ kind = "heartbeat", address = "10.2.0.2:7946" }]

[[service]]
name = "web"
vip = "10.2.0.2"
port = 80
protocol = "tcp"
policy = "failover"
regions = ["region1", "region2"]
"#;

    /// The message for `text`, which must be refused.
    fn refused(text: &str) -> String {
        Config::parse(text, "lab.toml").unwrap_err().to_string()
    }

    /// LAB with `from` replaced by `to` (which must occur once).
    fn lab_with(from: &str, to: &str) -> String {
        assert_eq!(LAB.matches(from).count(), 1, "{from:?}");
        LAB.replace(from, to)
    }

    fn line_of(text: &str, needle: &str) -> usize {
        text[..text.find(needle).unwrap()].lines().count() + 1
    }

    #[test]
    fn the_lab_config_loads_with_defaults_filled_in() {
        let c = Config::parse(LAB, "lab.toml").unwrap();
        assert_eq!(c.interfaces, ["veth-client", "veth-r1", "veth-r2"]);
        assert_eq!(c.pin_path, PathBuf::from("/sys/fs/bpf/redirector"));
        assert_eq!(c.control_socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9477".parse().unwrap()));
        assert_eq!(c.failover, DEFAULT_FAILOVER);
        assert_eq!(c.regions.len(), 2);
        let r2 = &c.regions[1];
        assert_eq!((r2.id, r2.name.as_str(), r2.priority), (1, "region2", 200));
        assert_eq!(r2.health, DEFAULT_HEALTH);
        assert_eq!(
            r2.checks,
            [Check::Heartbeat {
                address: "10.2.0.2:7946".parse().unwrap(),
                key_file: None
            }]
        );
        let Check::Http(http) = &c.regions[0].checks[0] else {
            panic!("{:?}", c.regions[0].checks)
        };
        assert_eq!(
            (http.host.as_str(), http.port, http.path.as_str()),
            ("10.1.0.2", 80, "/")
        );
        let web = &c.services[0];
        assert_eq!(
            (web.id, web.regions.as_slice(), web.target_port),
            (0, &[0u8, 1][..], None)
        );
        assert_eq!(
            (web.policy, web.weights.as_slice()),
            (PolicyKind::Failover, &[1, 1][..])
        );
        assert_eq!(
            web.addr,
            ServiceAddr {
                vip: Ipv4Addr::new(10, 2, 0, 2),
                port: 80,
                protocol: Protocol::Tcp
            }
        );
    }

    #[test]
    fn optional_sections_take_their_documented_defaults() {
        let text = r#"interfaces = ["eth0"]
[[region]]
name = "a"
address = "10.0.0.1"
checks = [{ kind = "tcp", address = "10.0.0.1:80" }]
"#;
        let c = Config::parse(text, "min.toml").unwrap();
        assert_eq!(c.failover, DEFAULT_FAILOVER);
        assert_eq!(c.regions[0].health, DEFAULT_HEALTH);
        assert_eq!(c.regions[0].priority, 0);
        assert_eq!(c.metrics_listen, None);
        assert!(c.services.is_empty());
        assert_eq!(c.balance, DEFAULT_BALANCE);
        assert_eq!(c.balance.dwell, Duration::from_secs(3));
        let a = &c.regions[0];
        assert_eq!((a.weight, a.pps, a.flows, a.cpu), (1, None, None, None));
    }

    #[test]
    fn a_region_overrides_the_health_defaults_key_by_key() {
        let text = lab_with(
            "priority = 200\n",
            "priority = 200\ninterval_ms = 50\nfall = 2\ntimeout_ms = 40\n",
        );
        let c = Config::parse(&text, "lab.toml").unwrap();
        assert_eq!(
            c.regions[1].health,
            HealthSettings {
                interval: Duration::from_millis(50),
                fall: 2,
                rise: 3,
                timeout: Duration::from_millis(40),
            }
        );
        assert_eq!(c.regions[0].health, DEFAULT_HEALTH);
    }

    #[test]
    fn a_wrong_type_names_the_line_and_the_key_path() {
        let text = lab_with("priority = 200", "priority = \"high\"");
        let line = line_of(&text, "priority = \"high\"");
        assert_eq!(
            refused(&text),
            format!(
                "lab.toml:{line}: region[1].priority: invalid type: string \"high\", expected u32"
            )
        );
    }

    #[test]
    fn an_unknown_key_is_refused_by_name() {
        let text = lab_with("priority = 100", "prioirty = 100");
        let line = line_of(&text, "prioirty");
        let message = refused(&text);
        assert!(
            message.starts_with(&format!(
                "lab.toml:{line}: region[0].prioirty: unknown field `prioirty`"
            )),
            "{message}"
        );
        let text = lab_with("fall = 3", "fal = 3");
        assert!(refused(&text).starts_with("lab.toml:6: health.fal: unknown field `fal`"));
        let text = lab_with("all_down", "all_dawn");
        assert!(refused(&text).starts_with("lab.toml:14: failover.all_dawn: unknown field"));
    }

    #[test]
    fn an_unknown_key_inside_a_check_is_refused() {
        let text = lab_with("expect_status = 200", "expect_stauts = 200");
        let message = refused(&text);
        assert!(
            message.starts_with("lab.toml:20: region[0].checks[0].expect_stauts: unknown field"),
            "{message}"
        );
    }

    #[test]
    fn a_key_of_another_check_kind_is_refused() {
        let text = lab_with(
            r#"address = "10.2.0.2:7946""#,
            r#"address = "10.2.0.2:7946", url = "http://x/""#,
        );
        assert_eq!(
            refused(&text),
            "lab.toml:26: region \"region2\".checks[0].url: a heartbeat check has no url (its keys: address, key_file)"
        );
    }

    #[test]
    fn a_check_without_its_required_key_is_refused() {
        let text = lab_with(r#", address = "10.2.0.2:7946""#, "");
        assert_eq!(
            refused(&text),
            "lab.toml:26: region \"region2\".checks[0].address: a heartbeat check needs address"
        );
    }

    #[test]
    fn a_missing_key_names_its_table() {
        let text = lab_with("address = \"10.1.0.2\"\n", "");
        assert_eq!(
            refused(&text),
            format!(
                "lab.toml:{}: region[0]: missing field `address`",
                line_of(&text, "[[region]]")
            )
        );
    }

    #[test]
    fn addresses_must_be_ipv4() {
        let text = lab_with(r#"vip = "10.2.0.2""#, r#"vip = "10.2.0.300""#);
        assert_eq!(
            refused(&text),
            "lab.toml:30: service[0].vip: invalid IPv4 address syntax"
        );
        let text = lab_with(r#"address = "10.1.0.2""#, r#"address = "fe80::1""#);
        assert_eq!(
            refused(&text),
            "lab.toml:18: region[0].address: invalid IPv4 address syntax"
        );
    }

    #[test]
    fn a_syntax_error_names_its_line() {
        let message = refused(&lab_with("fall = 3", "fall = "));
        assert!(message.starts_with("lab.toml:6: "), "{message}");
    }

    #[test]
    fn a_service_naming_an_unknown_region_lists_the_known_ones() {
        let text = lab_with(
            r#"regions = ["region1", "region2"]"#,
            r#"regions = ["region1", "region9"]"#,
        );
        assert_eq!(
            refused(&text),
            "lab.toml:34: service \"web\".regions: unknown region \"region9\" (known: region1, region2)"
        );
    }

    #[test]
    fn a_service_lists_a_region_once() {
        let text = lab_with(
            r#"regions = ["region1", "region2"]"#,
            r#"regions = ["region1", "region1"]"#,
        );
        assert_eq!(
            refused(&text),
            "lab.toml:34: service \"web\".regions: \"region1\" appears twice (first on line 34)"
        );
    }

    #[test]
    fn names_are_unique() {
        let text = lab_with(r#"name = "region2""#, r#"name = "region1""#);
        assert_eq!(
            refused(&text),
            "lab.toml:23: region[1].name: \"region1\" appears twice (first on line 17)"
        );
        let text = format!("{LAB}\n[[service]]\nname = \"web\"\nvip = \"10.9.0.1\"\nport = 1\nprotocol = \"udp\"\nregions = [\"region1\"]\n");
        let line = line_of(&text, "name = \"web\"\nvip = \"10.9.0.1\"");
        assert_eq!(
            refused(&text),
            format!("lab.toml:{line}: service[1].name: \"web\" appears twice (first on line 29)")
        );
    }

    #[test]
    fn names_are_plain_words() {
        let text = lab_with(r#"name = "region1""#, r#"name = "region one""#);
        assert!(
            refused(&text).starts_with("lab.toml:17: region[0].name: \"region one\": a name is")
        );
    }

    #[test]
    fn two_services_cannot_share_an_address() {
        let text = format!("{LAB}\n[[service]]\nname = \"web2\"\nvip = \"10.2.0.2\"\nport = 80\nprotocol = \"tcp\"\nregions = [\"region1\"]\n");
        let line = text.lines().count() - 3;
        assert_eq!(
            refused(&text),
            format!("lab.toml:{line}: service \"web2\".vip: tcp 10.2.0.2:80 is already service \"web\" (line 30)")
        );
    }

    #[test]
    fn ports_follow_the_protocol() {
        let icmp = lab_with(r#"protocol = "tcp""#, r#"protocol = "icmp""#);
        assert_eq!(
            refused(&icmp),
            "lab.toml:31: service \"web\".port: an icmp service has no port"
        );
        let no_port = lab_with("port = 80\n", "");
        assert_eq!(
            refused(&no_port),
            "lab.toml:31: service \"web\".port: a tcp service needs a port"
        );
        let zero = lab_with("port = 80\n", "port = 0\n");
        assert_eq!(
            refused(&zero),
            "lab.toml:31: service \"web\".port: port 0 is not a service port"
        );
        let ping = lab_with("port = 80\nprotocol = \"tcp\"", "protocol = \"icmp\"");
        let c = Config::parse(&ping, "lab.toml").unwrap();
        assert_eq!(c.services[0].addr.port, 0);
    }

    #[test]
    fn target_port_moves_every_backend() {
        let text = lab_with("port = 80\n", "port = 80\ntarget_port = 8080\n");
        let c = Config::parse(&text, "lab.toml").unwrap();
        let specs = c.service_specs();
        assert_eq!(
            specs[0].backends.values().copied().collect::<Vec<_>>(),
            [
                "10.1.0.2:8080".parse().unwrap(),
                "10.2.0.2:8080".parse::<SocketAddrV4>().unwrap()
            ]
        );
        let plain = Config::parse(LAB, "lab.toml").unwrap().service_specs();
        assert_eq!(plain[0].backends[&1], "10.2.0.2:80".parse().unwrap());
        crate::dataplane::Dataplane::check_services(&plain).unwrap();
    }

    #[test]
    fn health_counts_and_times_have_floors() {
        assert_eq!(
            refused(&lab_with("fall = 3", "fall = 0")),
            "lab.toml:6: health.fall: must be at least 1"
        );
        assert_eq!(
            refused(&lab_with("rise = 3", "rise = 0")),
            "lab.toml:7: health.rise: must be at least 1"
        );
        assert_eq!(
            refused(&lab_with("interval_ms = 100", "interval_ms = 5")),
            "lab.toml:5: health.interval_ms: 5 ms is below the minimum of 10 ms"
        );
        assert_eq!(
            refused(&lab_with("timeout_ms = 100", "timeout_ms = 0")),
            "lab.toml:8: health.timeout_ms: must be at least 1 ms"
        );
        let region_override = lab_with("priority = 200\n", "priority = 200\nrise = 0\n");
        assert_eq!(
            refused(&region_override),
            "lab.toml:26: region \"region2\".rise: must be at least 1"
        );
        let negative = refused(&lab_with("fall = 3", "fall = -1"));
        assert!(
            negative.starts_with("lab.toml:6: health.fall: invalid value"),
            "{negative}"
        );
    }

    #[test]
    fn a_timeout_longer_than_the_interval_blames_the_most_specific_setting() {
        let region_interval = lab_with("priority = 200\n", "priority = 200\ninterval_ms = 50\n");
        assert_eq!(
            refused(&region_interval),
            "lab.toml:26: region \"region2\".interval_ms: timeout_ms (100) exceeds interval_ms (50): \
             a check has one probe in flight at a time"
        );
        let global_timeout = lab_with("timeout_ms = 100", "timeout_ms = 150");
        assert!(
            refused(&global_timeout).starts_with("lab.toml:8: health.timeout_ms: timeout_ms (150)")
        );
    }

    #[test]
    fn the_data_plane_limits_are_enforced() {
        let mut text = String::from("interfaces = [\"eth0\"]\n");
        for i in 0..=MAX_REGIONS {
            text += &format!(
                "[[region]]\nname = \"r{i}\"\naddress = \"10.0.0.1\"\nchecks = [{{ kind = \"tcp\", address = \"10.0.0.1:80\" }}]\n"
            );
        }
        let line = line_of(&text, &format!("name = \"r{MAX_REGIONS}\""));
        assert_eq!(
            refused(&text),
            format!("lab.toml:{line}: region[32]: more than 32 regions: the data plane holds 32")
        );

        let mut text = LAB.to_string();
        for i in 1..=MAX_SERVICES {
            text += &format!(
                "[[service]]\nname = \"s{i}\"\nvip = \"10.3.0.1\"\nport = {i}\nprotocol = \"udp\"\nregions = [\"region1\"]\n"
            );
        }
        let line = line_of(&text, &format!("name = \"s{MAX_SERVICES}\""));
        assert_eq!(
            refused(&text),
            format!("lab.toml:{line}: service[64]: more than 64 services: the data plane holds 64")
        );
    }

    #[test]
    fn at_least_one_region_interface_check_and_service_region() {
        let no_region = "interfaces = [\"eth0\"]\n";
        assert_eq!(
            refused(no_region),
            "lab.toml:1: region: at least one [[region]] is needed"
        );
        assert_eq!(
            refused(&lab_with(
                r#"interfaces = ["veth-client", "veth-r1", "veth-r2"]"#,
                "interfaces = []"
            )),
            "lab.toml:1: interfaces: at least one interface is needed"
        );
        let no_check = lab_with(
            r#"[{ kind = "heartbeat", address = "10.2.0.2:7946" }]"#,
            "[]",
        );
        assert!(refused(&no_check)
            .starts_with("lab.toml:26: region \"region2\".checks: at least one check"));
        let no_service_region = lab_with(r#"["region1", "region2"]"#, "[]");
        assert_eq!(
            refused(&no_service_region),
            "lab.toml:34: service \"web\".regions: at least one region is needed"
        );
    }

    #[test]
    fn interface_names_fit_the_kernel() {
        let long = lab_with("\"veth-r2\"]", "\"veth-r2-is-far-too-long\"]");
        assert!(refused(&long)
            .starts_with("lab.toml:1: interfaces[2]: \"veth-r2-is-far-too-long\" is not"));
        let twice = lab_with("\"veth-r2\"]", "\"veth-r1\"]");
        assert_eq!(
            refused(&twice),
            "lab.toml:1: interfaces[2]: \"veth-r1\" appears twice (first on line 1)"
        );
    }

    #[test]
    fn failover_settings_are_read_and_checked() {
        let text = lab_with("preempt = true", "preempt = false")
            .replace("preempt_delay_ms = 0", "preempt_delay_ms = 2500")
            .replace("\"keep-last\"", "\"drop\"");
        let f = Config::parse(&text, "lab.toml").unwrap().failover;
        assert_eq!(
            f,
            FailoverSettings {
                preempt: false,
                preempt_delay: Duration::from_millis(2500),
                max_switches_per_minute: 6,
                all_down: AllDown::Drop
            }
        );
        assert_eq!(
            refused(&lab_with("max_switches_per_minute = 6", "max_switches_per_minute = 0")),
            "lab.toml:13: failover.max_switches_per_minute: must be at least 1 (set preempt = false to stop failback)"
        );
        let bad_mode = refused(&lab_with("\"keep-last\"", "\"keep\""));
        assert!(
            bad_mode.starts_with("lab.toml:14: failover.all_down: unknown variant `keep`"),
            "{bad_mode}"
        );
    }

    #[test]
    fn spanned_wrappers_leave_no_trace_in_key_paths() {
        assert_eq!(
            without_spanned_segments("region[0].checks.$__serde_spanned_private_value[0].urll"),
            "region[0].checks[0].urll"
        );
        assert_eq!(
            without_spanned_segments("health.fall.$__serde_spanned_private_value"),
            "health.fall"
        );
        assert_eq!(without_spanned_segments("."), "");
    }

    #[test]
    fn http_checks_take_plain_http_urls_only() {
        assert_eq!(
            parse_http_url("http://checker.lab:8080/health?deep=1"),
            Ok(("checker.lab".into(), 8080, "/health?deep=1".into()))
        );
        assert_eq!(
            parse_http_url("http://10.1.0.2"),
            Ok(("10.1.0.2".into(), 80, "/".into()))
        );
        let https = refused(&lab_with("http://10.1.0.2:80/", "https://10.1.0.2/"));
        assert_eq!(
            https,
            "lab.toml:20: region \"region1\".checks[0].url: \"https://10.1.0.2/\": only http:// URLs are supported"
        );
        assert!(parse_http_url("http://10.1.0.2:0/").is_err());
        assert!(parse_http_url("http://:80/").is_err());
        assert!(parse_http_url("http://user@host/").is_err());
        let status = refused(&lab_with("expect_status = 200", "expect_status = 42"));
        assert!(status
            .starts_with("lab.toml:20: region \"region1\".checks[0].expect_status: 42 is not"));
    }

    /// `text` must be refused with a message that starts with `start`
    /// (the tail is serde's, such as the fields it expected).
    fn refused_with(text: &str, start: &str) {
        let message = refused(text);
        assert!(message.starts_with(start), "{message}");
    }

    /// LAB with region1 carrying `region1` and region2 `region2` (lines
    /// after their priorities), and the service `service` in place of its
    /// policy line.
    fn balanced(region1: &str, region2: &str, service: &str) -> String {
        lab_with("priority = 100\n", &format!("priority = 100\n{region1}"))
            .replace("priority = 200\n", &format!("priority = 200\n{region2}"))
            .replace("policy = \"failover\"\n", service)
    }

    #[test]
    fn balance_settings_are_read_and_checked() {
        let text = format!("{LAB}\n[balance]\ndwell_ms = 0\n");
        let c = Config::parse(&text, "lab.toml").unwrap();
        assert_eq!(c.balance.dwell, Duration::ZERO);
        assert_eq!(c.balance.sample, Duration::from_secs(1));
        let fast = format!("{text}sample_ms = 99\n");
        let line = line_of(&fast, "sample_ms");
        assert_eq!(
            refused(&fast),
            format!(
                "lab.toml:{line}: balance.sample_ms: 99 ms is below the minimum of 100 ms: each sample walks the flow table"
            )
        );
        let typo = text.replace("dwell_ms", "dwel_ms");
        let line = line_of(&typo, "dwel_ms");
        let message = refused(&typo);
        assert!(
            message.starts_with(&format!(
                "lab.toml:{line}: balance.dwel_ms: unknown field `dwel_ms`"
            )),
            "{message}"
        );
    }

    #[test]
    fn policy_names_are_the_ones_the_file_takes() {
        for kind in [
            PolicyKind::Failover,
            PolicyKind::Weighted,
            PolicyKind::Pps,
            PolicyKind::Flows,
            PolicyKind::Cpu,
        ] {
            let text = balanced(
                "pps = { low = 1, high = 2 }\nflows = { low = 1, high = 2 }\n",
                "cpu = { low = 1, high = 2 }\n",
                &format!("policy = {:?}\n", kind.name()),
            );
            let c = Config::parse(&text, "lab.toml").unwrap();
            assert_eq!(c.services[0].policy, kind);
        }
    }

    #[test]
    fn regions_carry_weights_and_watermarks() {
        let text = balanced(
            "weight = 3\npps = { low = 800, high = 1000 }\nflows = { low = 5, high = 5 }\n",
            "weight = 0\ncpu = { low = 60, high = 100 }\n",
            "policy = \"cpu\"\n",
        );
        let c = Config::parse(&text, "lab.toml").unwrap();
        let (r1, r2) = (&c.regions[0], &c.regions[1]);
        assert_eq!(r1.weight, 3);
        assert_eq!(
            r1.pps,
            Some(Watermarks {
                low: 800,
                high: 1000
            })
        );
        assert_eq!(r1.flows, Some(Watermarks { low: 5, high: 5 }));
        assert_eq!((r1.cpu, r2.pps, r2.flows), (None, None, None));
        assert_eq!(
            (r2.weight, r2.cpu),
            (0, Some(Watermarks { low: 60, high: 100 }))
        );
        assert_eq!(r1.watermarks(PolicyKind::Pps), r1.pps);
        assert_eq!(r1.watermarks(PolicyKind::Weighted), None);
        assert_eq!(c.services[0].weights, [3, 0]);
    }

    #[test]
    fn watermarks_are_checked() {
        assert_eq!(
            refused(&balanced("pps = { low = 900, high = 800 }\n", "", "")),
            "lab.toml:20: region \"region1\".pps: low (900) is above high (800)"
        );
        assert_eq!(
            refused(&balanced("", "cpu = { low = 60, high = 101 }\n", "")),
            "lab.toml:26: region \"region2\".cpu: high (101) is above 100 percent"
        );
        refused_with(
            &balanced("flows = { low = 900 }\n", "", ""),
            "lab.toml:20: region[0].flows: missing field `high`",
        );
        refused_with(
            &balanced("", "pps = { low = 1, hihg = 2 }\n", ""),
            "lab.toml:26: region[1].pps.hihg: unknown field `hihg`",
        );
        refused_with(
            &balanced("pps = { low = -1, high = 2 }\n", "", ""),
            "lab.toml:20: region[0].pps.low: invalid value",
        );
    }

    #[test]
    fn a_service_overrides_region_weights_by_name() {
        let text = balanced(
            "weight = 5\n",
            "",
            "policy = \"weighted\"\nweights = { region2 = 3, region1 = 0 }\n",
        );
        let c = Config::parse(&text, "lab.toml").unwrap();
        assert_eq!(c.services[0].weights, [0, 3]);
        let partial = balanced("weight = 5\n", "", "weights = { region2 = 2 }\n");
        let c = Config::parse(&partial, "lab.toml").unwrap();
        assert_eq!(c.services[0].weights, [5, 2]);
    }

    #[test]
    fn service_weights_name_the_services_own_regions() {
        assert_eq!(
            refused(&balanced("", "", "weights = { region1 = 1, region9 = 2 }\n")),
            "lab.toml:33: service \"web\".weights.region9: unknown region \"region9\" (known: region1, region2)"
        );
        let region3 = format!(
            "{LAB}\n[[region]]\nname = \"region3\"\naddress = \"10.3.0.2\"\n\
             checks = [{{ kind = \"tcp\", address = \"10.3.0.2:80\" }}]\n"
        )
        .replace("policy = \"failover\"\n", "weights = { region3 = 1 }\n");
        assert_eq!(
            refused(&region3),
            "lab.toml:33: service \"web\".weights.region3: \"region3\" is not among service \"web\"'s regions (region1, region2)"
        );
        refused_with(
            &balanced("", "", "weights = { region1 = -1 }\n"),
            "lab.toml:33: service[0].weights.region1: invalid value",
        );
    }

    #[test]
    fn a_weighted_service_needs_a_positive_weight() {
        let zero = "weight = 0\n";
        assert_eq!(
            refused(&balanced(zero, zero, "policy = \"weighted\"\n")),
            "lab.toml:35: service \"web\".policy: every weight of service \"web\" would be 0: \
             no region would take new flows"
        );
        let overridden = balanced(
            "",
            "",
            "policy = \"weighted\"\nweights = { region1 = 0, region2 = 0 }\n",
        );
        assert_eq!(
            refused(&overridden),
            "lab.toml:34: service \"web\".weights: every weight of service \"web\" would be 0: \
             no region would take new flows"
        );
        let backup = balanced(zero, "", "policy = \"weighted\"\n");
        assert!(Config::parse(&backup, "lab.toml").is_ok());
        let failover = balanced(zero, zero, "");
        assert_eq!(
            Config::parse(&failover, "lab.toml").unwrap().services[0].weights,
            [0, 0]
        );
    }

    #[test]
    fn check_weights_refuses_what_would_strand_new_flows() {
        let text = balanced("", "", "policy = \"weighted\"\n");
        let c = Config::parse(&text, "lab.toml").unwrap();
        let web = &c.services[0];
        assert_eq!(web.check_weights(&[0, 2]), Ok(()));
        assert_eq!(
            web.check_weights(&[0, 0]),
            Err(
                "every weight of service \"web\" would be 0: no region would take new flows".into()
            )
        );
        assert_eq!(
            web.check_weights(&[1]),
            Err("service \"web\" has 2 regions: it takes 2 weights, not 1".into())
        );
        let failover = &Config::parse(LAB, "lab.toml").unwrap().services[0];
        assert_eq!(failover.check_weights(&[0, 0]), Ok(()));
    }

    #[test]
    fn a_load_policy_needs_watermarks_on_one_of_its_regions() {
        for kind in ["pps", "flows", "cpu"] {
            let text = balanced("", "", &format!("policy = \"{kind}\"\n"));
            assert_eq!(
                refused(&text),
                format!(
                    "lab.toml:33: service \"web\".policy: policy {kind} needs {kind} = {{ low, high }} \
                     on at least one of its regions"
                )
            );
        }
        let elsewhere = balanced("flows = { low = 1, high = 2 }\n", "", "policy = \"pps\"\n");
        assert!(refused(&elsewhere)
            .ends_with("policy pps needs pps = { low, high } on at least one of its regions"));
    }

    #[test]
    fn cpu_watermarks_need_the_agents_heartbeat() {
        let cpu = "cpu = { low = 60, high = 80 }\n";
        let text = balanced(cpu, cpu, "policy = \"cpu\"\n");
        assert_eq!(
            refused(&text),
            "lab.toml:35: service \"web\".policy: region \"region1\" has cpu watermarks but no \
             heartbeat check, over which its agent reports CPU"
        );
        // Under another policy the watermarks are not read.
        let pps = balanced(cpu, "pps = { low = 1, high = 2 }\n", "policy = \"pps\"\n");
        assert!(Config::parse(&pps, "lab.toml").is_ok());
    }

    #[test]
    fn load_names_a_missing_file() {
        let err = Config::load(Path::new("/nonexistent/redirector.toml")).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }));
        assert!(
            err.to_string()
                .starts_with("/nonexistent/redirector.toml: "),
            "{err}"
        );
    }
}
