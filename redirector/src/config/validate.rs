//! From the file as written to the model: every check of the config, each
//! error naming the file, the line and the key.

use std::{
    collections::HashMap,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    ops::Range,
    path::PathBuf,
    time::Duration,
};

use redirector_common::{MAX_REGIONS, MAX_SERVICES};
use toml::Spanned;

use super::{
    raw::{
        RawAlerts, RawBalance, RawCheck, RawConfig, RawFailover, RawHealth, RawPassive, RawRegion, RawService, RawSync,
        RawWatermarks,
    },
    AlertsSettings, BalanceSettings, Check, CheckKind, Config, ConfigError, FailoverSettings, HealthSettings, HttpCheck,
    Measure, PassiveSettings, PolicyKind, Protocol, RegionConfig, ServiceAddr, ServiceConfig, SyncSettings, Watermarks,
    DEFAULT_ALERT_LABEL, DEFAULT_BALANCE, DEFAULT_PASSIVE, MAX_PASSIVE_WINDOW_MS, MIN_PASSIVE_THRESHOLD,
    DEFAULT_FAILOVER, DEFAULT_HEALTH, DEFAULT_PIN_PATH, DEFAULT_SOCKET, DEFAULT_WEIGHT, MAX_FLOW_TABLE_SIZE,
    MAX_INTERFACE_NAME, MAX_PERCENT, MIN_FLOW_TABLE_SIZE, MIN_INTERVAL_MS, MIN_SAMPLE_MS,
};

/// `file` only names the text in messages.
pub(super) fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
    let source = Source { file, text };
    let raw: RawConfig = serde_path_to_error::deserialize(toml::Deserializer::new(text))
        .map_err(|e| source.serde_error(e))?;
    source.config(raw)
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
        let alerts = raw.alerts.as_ref().map(|a| self.alerts(a, raw.metrics_listen)).transpose()?;
        let sync = raw.sync.as_ref().map(|s| self.sync(s)).transpose()?;
        let passive = raw.passive.as_ref().map(|p| self.passive(p)).transpose()?;
        Ok(Config {
            interfaces,
            pin_path: raw
                .pin_path
                .unwrap_or_else(|| PathBuf::from(DEFAULT_PIN_PATH)),
            control_socket: raw
                .control_socket
                .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET)),
            metrics_listen: raw.metrics_listen,
            flow_table_size: self.flow_table_size(raw.flow_table_size.as_ref())?,
            xdp_mode: raw.xdp_mode.unwrap_or_default(),
            failover,
            balance,
            regions,
            services,
            alerts,
            sync,
            passive,
        })
    }

    fn passive(&self, raw: &RawPassive) -> Result<PassiveSettings, ConfigError> {
        let mut settings = DEFAULT_PASSIVE;
        if let Some(threshold) = &raw.syn_refused {
            settings.threshold = *threshold.get_ref();
            if settings.threshold < MIN_PASSIVE_THRESHOLD {
                return Err(self.error(
                    threshold.span(),
                    "passive.syn_refused",
                    format!("{}: at least {MIN_PASSIVE_THRESHOLD} (one refused SYN is as often a client at a closed port)", settings.threshold),
                ));
            }
        }
        if let Some(window) = &raw.window_ms {
            let ms = *window.get_ref();
            if !(1..=MAX_PASSIVE_WINDOW_MS).contains(&ms) {
                return Err(self.error(window.span(), "passive.window_ms", format!("{ms}: it is 1 to {MAX_PASSIVE_WINDOW_MS}")));
            }
            settings.window = Duration::from_millis(ms);
        }
        Ok(settings)
    }

    fn sync(&self, raw: &RawSync) -> Result<SyncSettings, ConfigError> {
        let listen = *raw.listen.get_ref();
        if listen.ip().is_unspecified() || listen.port() == 0 {
            // Peers know a gateway by the address its datagrams come from.
            return Err(self.error(raw.listen.span(), "sync.listen", "must be this gateway's own address and port, the one its peers list"));
        }
        if raw.peers.get_ref().is_empty() {
            return Err(self.error(raw.peers.span(), "sync.peers", "names no peer: list the other gateways, or leave [sync] out"));
        }
        let mut peers = Vec::new();
        for (i, peer) in raw.peers.get_ref().iter().enumerate() {
            let addr = *peer.get_ref();
            let problem = if addr == listen {
                Some("is sync.listen: a gateway is not its own peer")
            } else if addr.ip().is_unspecified() || addr.port() == 0 {
                Some("must be a peer's address and port")
            } else if peers.contains(&addr) {
                Some("is listed twice")
            } else if addr.is_ipv4() != listen.is_ipv4() {
                Some("is not of sync.listen's address family")
            } else {
                None
            };
            if let Some(problem) = problem {
                return Err(self.error(peer.span(), format!("sync.peers[{i}]"), format!("{addr} {problem}")));
            }
            peers.push(addr);
        }
        Ok(SyncSettings { listen, peers, key_file: raw.key_file.clone() })
    }

    fn alerts(&self, raw: &RawAlerts, metrics_listen: Option<SocketAddr>) -> Result<AlertsSettings, ConfigError> {
        if Some(*raw.listen.get_ref()) == metrics_listen {
            return Err(self.error(raw.listen.span(), "alerts.listen", "is metrics_listen too: the webhook needs its own address"));
        }
        let label = match &raw.label {
            Some(label) if label.get_ref().is_empty() => {
                return Err(self.error(label.span(), "alerts.label", "must name the alert label that carries a region"))
            }
            Some(label) => label.get_ref().clone(),
            None => DEFAULT_ALERT_LABEL.to_string(),
        };
        Ok(AlertsSettings { listen: *raw.listen.get_ref(), token_file: raw.token_file.clone(), label })
    }

    fn flow_table_size(&self, raw: Option<&Spanned<u32>>) -> Result<u32, ConfigError> {
        let Some(size) = raw else {
            return Ok(redirector_common::FLOW_TABLE_SIZE);
        };
        let value = *size.get_ref();
        if !(MIN_FLOW_TABLE_SIZE..=MAX_FLOW_TABLE_SIZE).contains(&value) {
            return Err(self.error(
                size.span(),
                "flow_table_size",
                format!("{value} entries: it is {MIN_FLOW_TABLE_SIZE} to {MAX_FLOW_TABLE_SIZE}"),
            ));
        }
        Ok(value)
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

    /// An address a host can have: not 0.0.0.0, broadcast or multicast.
    fn unicast(&self, addr: &Spanned<Ipv4Addr>, key: &str) -> Result<Ipv4Addr, ConfigError> {
        self.host_address(&Spanned::new(addr.span(), IpAddr::V4(*addr.get_ref())), key)?;
        Ok(*addr.get_ref())
    }

    /// A VIP or a region's address: a host's, and one the data plane can
    /// route to and write in a packet as given.
    fn routable(&self, addr: &Spanned<IpAddr>, key: &str) -> Result<IpAddr, ConfigError> {
        let ip = *addr.get_ref();
        if let IpAddr::V6(v6) = ip {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return Err(self.error(addr.span(), key, format!("{ip} is IPv4-mapped: write the IPv4 address, {v4}")));
            }
            if v6.is_unicast_link_local() {
                return Err(self.error(addr.span(), key, format!("{ip} is link-local: traffic is steered to routed addresses")));
            }
        }
        self.host_address(addr, key)?;
        Ok(ip)
    }

    /// A region's IPv6 address next to its IPv4 `address`.
    fn address6(&self, r: &RawRegion, prefix: &str) -> Result<Option<Ipv6Addr>, ConfigError> {
        let Some(raw) = &r.address6 else {
            return Ok(None);
        };
        let key = format!("{prefix}.address6");
        if r.address.get_ref().is_ipv6() {
            return Err(self.error(
                raw.span(),
                key,
                "address is IPv6 already: address6 gives a region whose address is IPv4 its IPv6 address",
            ));
        }
        let ip = self.routable(&Spanned::new(raw.span(), IpAddr::V6(*raw.get_ref())), &key)?;
        Ok(match ip {
            IpAddr::V6(v6) => Some(v6),
            IpAddr::V4(_) => None,
        })
    }

    /// [`Self::unicast`] for either family (IPv6: not ::, multicast, or
    /// link-local: a probe there needs its interface, `%IFINDEX`, which
    /// [`Self::endpoint`] takes).
    fn host_address(&self, addr: &Spanned<IpAddr>, key: &str) -> Result<(), ConfigError> {
        let ip = *addr.get_ref();
        let what = if ip.is_unspecified() {
            "the unspecified address"
        } else if matches!(ip, IpAddr::V4(v4) if v4.is_broadcast()) {
            "the broadcast address"
        } else if ip.is_multicast() {
            "a multicast address"
        } else if matches!(ip, IpAddr::V6(v6) if v6.is_unicast_link_local()) {
            "link-local (give a tcp or heartbeat check its interface: [ADDR%IFINDEX]:PORT)"
        } else {
            return Ok(());
        };
        Err(self.error(addr.span(), key, format!("{ip} is {what}, not a host's")))
    }

    /// An address and port a probe can reach: a host's address, a port.
    /// An IPv4-mapped IPv6 address is taken as the IPv4 address it is.
    fn endpoint(&self, addr: &Spanned<SocketAddr>, key: &str) -> Result<SocketAddr, ConfigError> {
        let given = *addr.get_ref();
        let endpoint = match given {
            SocketAddr::V6(v6) if v6.scope_id() != 0 => given,
            _ => SocketAddr::new(given.ip().to_canonical(), given.port()),
        };
        if !matches!(endpoint, SocketAddr::V6(v6) if v6.scope_id() != 0) {
            self.host_address(&Spanned::new(addr.span(), endpoint.ip()), key)?;
        }
        if endpoint.port() == 0 {
            return Err(self.error(addr.span(), key, format!("{endpoint}: port 0 is no port to probe")));
        }
        Ok(endpoint)
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
        let mut bfd_peers: HashMap<Ipv4Addr, String> = HashMap::new();
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
            let checks = self.checks(&r.checks, &prefix)?;
            for (c, check) in checks.iter().enumerate() {
                let Check::Bfd { address, .. } = check else { continue };
                let here = format!("{prefix}.checks[{c}]");
                if let Some(first) = bfd_peers.insert(*address, here.clone()) {
                    // RFC 5881: one session per pair of addresses.
                    return Err(self.error(
                        r.checks.span(),
                        here,
                        format!("{address} is {first}'s BFD peer too: one session per peer, one check"),
                    ));
                }
            }
            regions.push(RegionConfig {
                id: i as u8,
                name: r.name.get_ref().clone(),
                address: self.routable(&r.address, &format!("{prefix}.address"))?,
                address6: self.address6(r, &prefix)?,
                priority: r.priority,
                health: located.settings(),
                checks,
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
            CheckKind::Bfd => (&["address", "key_file", "key_id"], "bfd"),
        };
        let present = [
            ("address", raw.address.as_ref().map(Spanned::span)),
            ("key_file", raw.key_file.as_ref().map(Spanned::span)),
            ("key_id", raw.key_id.as_ref().map(Spanned::span)),
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
        let address_key = format!("{key}.address");
        let address = || -> Result<SocketAddr, ConfigError> {
            let address = raw.address.as_ref().ok_or_else(|| missing("address"))?;
            let parsed = address.get_ref().parse::<SocketAddr>().map_err(|_| {
                self.error(
                    address.span(),
                    &address_key,
                    format!("{:?} is not an address and port (ADDR:PORT, or [ADDR]:PORT for IPv6)", address.get_ref()),
                )
            })?;
            self.endpoint(&Spanned::new(address.span(), parsed), &address_key)
        };
        Ok(match kind {
            CheckKind::Heartbeat => Check::Heartbeat {
                address: address()?,
                key_file: raw.key_file.as_ref().map(|k| k.get_ref().clone()),
            },
            CheckKind::Tcp => Check::Tcp { address: address()? },
            CheckKind::Bfd => {
                let address = raw.address.as_ref().ok_or_else(|| missing("address"))?;
                let peer = address.get_ref().parse::<Ipv4Addr>().map_err(|_| {
                    self.error(
                        address.span(),
                        &address_key,
                        format!("{:?} is not an IPv4 address (a bfd check takes the peer's address alone: BFD's port is 3784)", address.get_ref()),
                    )
                })?;
                Check::Bfd {
                    address: self.unicast(&Spanned::new(address.span(), peer), &address_key)?,
                    key_file: raw.key_file.as_ref().map(|k| k.get_ref().clone()),
                    key_id: raw.key_id.as_ref().map_or(1, |id| *id.get_ref()),
                }
            }
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
                let check = HttpCheck::parse(url.get_ref(), expect_status)
                    .map_err(|m| self.error(url.span(), format!("{key}.url"), m))?;
                if let Ok(ip) = check.host.parse::<IpAddr>() {
                    self.host_address(&Spanned::new(url.span(), ip.to_canonical()), &format!("{key}.url"))?;
                }
                Check::Http(check)
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
                    format!("{addr} is already service {other:?} (line {first})"),
                ));
            }
            let ids = self.service_regions(&s.regions, regions, addr.vip, &prefix)?;
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
            PolicyKind::Spill(measure) => {
                let name = measure.name();
                if !members().any(|r| r.watermarks(measure).is_some()) {
                    return Err(refuse(format!(
                        "policy {name} needs {name} = {{ low, high }} on at least one of its regions"
                    )));
                }
                // Only the agent knows its region's CPU; it tells over the
                // heartbeat.
                if measure == Measure::Cpu {
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
                    format!("a {} service needs a port", protocol),
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
            vip: self.routable(&s.vip, &format!("{prefix}.vip"))?,
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
        vip: IpAddr,
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
            if region.address_for(vip).is_none() {
                let (family, hint) = match vip {
                    IpAddr::V4(_) => ("IPv4", "its address is IPv6 only"),
                    IpAddr::V6(_) => ("IPv6", "give it address6"),
                };
                return Err(self.error(
                    name.span(),
                    key,
                    format!("region {:?} has no {family} address for VIP {vip} ({hint})", region.name),
                ));
            }
            ids.push(region.id);
        }
        Ok(ids)
    }
}

/// Spanned<T> shows up in serde's path as a private field of its own, as in
/// `checks.$__serde_spanned_private_value[0]`; the operator's key is
/// `checks[0]`. A path to the root is printed as ".".
pub(super) fn without_spanned_segments(path: &str) -> String {
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
