//! The config file as written: the serde schema. Values that later checks
//! refer to keep their spans, so an error points at its line.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    path::PathBuf,
};

use serde::Deserialize;
use toml::Spanned;

use super::{AllDown, CheckKind, PolicyKind, Protocol, XdpMode};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) interfaces: Spanned<Vec<Spanned<String>>>,
    pub(super) pin_path: Option<PathBuf>,
    pub(super) control_socket: Option<PathBuf>,
    pub(super) metrics_listen: Option<SocketAddr>,
    pub(super) flow_table_size: Option<Spanned<u32>>,
    pub(super) xdp_mode: Option<XdpMode>,
    #[serde(default)]
    pub(super) health: RawHealth,
    #[serde(default)]
    pub(super) failover: RawFailover,
    #[serde(default)]
    pub(super) balance: RawBalance,
    #[serde(default)]
    pub(super) region: Vec<RawRegion>,
    #[serde(default)]
    pub(super) service: Vec<RawService>,
    pub(super) alerts: Option<RawAlerts>,
    pub(super) sync: Option<RawSync>,
    pub(super) passive: Option<RawPassive>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPassive {
    pub(super) syn_refused: Option<Spanned<u32>>,
    pub(super) window_ms: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSync {
    pub(super) listen: Spanned<SocketAddr>,
    pub(super) peers: Spanned<Vec<Spanned<SocketAddr>>>,
    pub(super) key_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAlerts {
    pub(super) listen: Spanned<SocketAddr>,
    pub(super) token_file: PathBuf,
    pub(super) label: Option<Spanned<String>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    pub(super) interval_ms: Option<Spanned<u64>>,
    pub(super) fall: Option<Spanned<u32>>,
    pub(super) rise: Option<Spanned<u32>>,
    pub(super) timeout_ms: Option<Spanned<u64>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFailover {
    pub(super) preempt: Option<bool>,
    pub(super) preempt_delay_ms: Option<u64>,
    pub(super) max_switches_per_minute: Option<Spanned<u32>>,
    pub(super) all_down: Option<AllDown>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBalance {
    pub(super) dwell_ms: Option<u64>,
    pub(super) sample_ms: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRegion {
    pub(super) name: Spanned<String>,
    pub(super) address: Spanned<IpAddr>,
    pub(super) address6: Option<Spanned<Ipv6Addr>>,
    #[serde(default)]
    pub(super) priority: u32,
    pub(super) checks: Spanned<Vec<RawCheck>>,
    pub(super) interval_ms: Option<Spanned<u64>>,
    pub(super) fall: Option<Spanned<u32>>,
    pub(super) rise: Option<Spanned<u32>>,
    pub(super) timeout_ms: Option<Spanned<u64>>,
    pub(super) weight: Option<u32>,
    pub(super) pps: Option<RawWatermarks>,
    pub(super) flows: Option<RawWatermarks>,
    pub(super) cpu: Option<RawWatermarks>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWatermarks {
    pub(super) low: Spanned<u64>,
    pub(super) high: Spanned<u64>,
}

impl RawRegion {
    pub(super) fn health_overrides(&self) -> RawHealth {
        RawHealth {
            interval_ms: self.interval_ms.clone(),
            fall: self.fall.clone(),
            rise: self.rise.clone(),
            timeout_ms: self.timeout_ms.clone(),
        }
    }
}

/// Flat rather than an internally tagged enum: serde buffers those, which
/// loses the spans that point an error at the offending key.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCheck {
    pub(super) kind: Spanned<CheckKind>,
    /// ADDR:PORT, or for BFD the peer's address alone.
    pub(super) address: Option<Spanned<String>>,
    pub(super) key_file: Option<Spanned<PathBuf>>,
    pub(super) key_id: Option<Spanned<u8>>,
    pub(super) url: Option<Spanned<String>>,
    pub(super) expect_status: Option<Spanned<u16>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    pub(super) name: Spanned<String>,
    pub(super) vip: Spanned<IpAddr>,
    pub(super) port: Option<Spanned<u16>>,
    pub(super) protocol: Spanned<Protocol>,
    pub(super) policy: Option<Spanned<PolicyKind>>,
    pub(super) regions: Spanned<Vec<Spanned<String>>>,
    /// Region name to weight; toml keeps no order, the spans give it back.
    /// (A spanned key would show as `?` in the key path of a type error.)
    pub(super) weights: Option<Spanned<BTreeMap<String, Spanned<u32>>>>,
    pub(super) target_port: Option<Spanned<u16>>,
}
