//! The words the daemon, the CLI and the config file share, each spelled
//! once: how it is written in the file, shown in status, labelled in
//! metrics and serialised in JSON are all the same name.

use std::{fmt, str::FromStr};

use redirector_common::{RegionState, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What a service speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    /// ICMP echo; the service has no port.
    Icmp,
}

impl Protocol {
    /// The IP protocol number, as the data plane keys on it.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => IPPROTO_TCP,
            Protocol::Udp => IPPROTO_UDP,
            Protocol::Icmp => IPPROTO_ICMP,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Icmp => "icmp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A load a region can be saturated on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Measure {
    /// Client-to-region packets per second.
    Pps,
    /// Open flows pinned to the region.
    Flows,
    /// CPU percent, as the region's agent reports it.
    Cpu,
}

impl Measure {
    pub const ALL: [Measure; 3] = [Measure::Pps, Measure::Flows, Measure::Cpu];

    pub fn name(self) -> &'static str {
        match self {
            Measure::Pps => "pps",
            Measure::Flows => "flows",
            Measure::Cpu => "cpu",
        }
    }
}

/// How a service's new flows are spread over its regions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PolicyKind {
    /// The highest-priority eligible region takes every new flow.
    Failover,
    /// New flows are shared among the eligible regions by weight.
    Weighted,
    /// Failover, except that new flows spill to the next region while one
    /// is saturated on this measure.
    Spill(Measure),
}

impl PolicyKind {
    pub const ALL: [PolicyKind; 5] = [
        PolicyKind::Failover,
        PolicyKind::Weighted,
        PolicyKind::Spill(Measure::Pps),
        PolicyKind::Spill(Measure::Flows),
        PolicyKind::Spill(Measure::Cpu),
    ];

    /// As written in the config file: a spill policy is named by its measure.
    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::Failover => "failover",
            PolicyKind::Weighted => "weighted",
            PolicyKind::Spill(measure) => measure.name(),
        }
    }

    /// Whether weights mean anything to it (every policy but failover).
    pub fn is_balanced(self) -> bool {
        self != PolicyKind::Failover
    }
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for PolicyKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        PolicyKind::ALL.into_iter().find(|p| p.name() == s).ok_or_else(|| {
            let names: Vec<&str> = PolicyKind::ALL.iter().map(|p| p.name()).collect();
            format!("unknown variant `{s}`, expected one of `{}`", names.join("`, `"))
        })
    }
}

impl Serialize for PolicyKind {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for PolicyKind {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// What a health check talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// The region's redirector-agent, over the UDP heartbeat.
    Heartbeat,
    /// An HTTP GET that must answer the expected status.
    Http,
    /// A TCP connect.
    Tcp,
    /// A BFD session with the region's router or host (RFC 5880, 5881).
    Bfd,
}

impl CheckKind {
    pub fn name(self) -> &'static str {
        match self {
            CheckKind::Heartbeat => "heartbeat",
            CheckKind::Http => "http",
            CheckKind::Tcp => "tcp",
            CheckKind::Bfd => "bfd",
        }
    }
}

impl fmt::Display for CheckKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A region as the controller knows it: its health with the operator's
/// drain on top.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegionStatus {
    /// No health verdict yet since the daemon started: the data plane keeps
    /// what it had.
    Pending,
    Up,
    /// Up or pending, and drained by the operator: no new flows, its
    /// established flows continue.
    Draining,
    /// Its flows are re-steered on their next packet, drained or not.
    Down,
}

impl RegionStatus {
    pub const ALL: [RegionStatus; 4] = [
        RegionStatus::Down,
        RegionStatus::Up,
        RegionStatus::Draining,
        RegionStatus::Pending,
    ];

    pub fn name(self) -> &'static str {
        match self {
            RegionStatus::Pending => "pending",
            RegionStatus::Up => "up",
            RegionStatus::Draining => "draining",
            RegionStatus::Down => "down",
        }
    }

    /// `redirector_region_state`: 0 down, 1 up, 2 draining, 3 pending.
    pub fn metric_value(self) -> i64 {
        match self {
            RegionStatus::Down => 0,
            RegionStatus::Up => 1,
            RegionStatus::Draining => 2,
            RegionStatus::Pending => 3,
        }
    }

    /// What the data plane should hold; None while pending: the data plane
    /// keeps what it has (its last state across a restart, down when new).
    pub fn dataplane_state(self) -> Option<RegionState> {
        match self {
            RegionStatus::Pending => None,
            RegionStatus::Up => Some(RegionState::Up),
            RegionStatus::Draining => Some(RegionState::Draining),
            RegionStatus::Down => Some(RegionState::Down),
        }
    }
}

impl fmt::Display for RegionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_are_named_as_in_the_file_and_parse_back() {
        for policy in PolicyKind::ALL {
            assert_eq!(policy.name().parse::<PolicyKind>(), Ok(policy));
            let json = serde_json::to_string(&policy).unwrap();
            assert_eq!(json, format!("\"{}\"", policy.name()));
            assert_eq!(serde_json::from_str::<PolicyKind>(&json).unwrap(), policy);
        }
        assert_eq!("pps".parse(), Ok(PolicyKind::Spill(Measure::Pps)));
        let err = "fastest".parse::<PolicyKind>().unwrap_err();
        assert!(err.contains("`failover`, `weighted`, `pps`, `flows`, `cpu`"), "{err}");
    }

    #[test]
    fn region_status_has_one_name_and_metric_value_each() {
        let values: Vec<i64> = RegionStatus::ALL.iter().map(|s| s.metric_value()).collect();
        assert_eq!(values, [0, 1, 2, 3]);
        for status in RegionStatus::ALL {
            assert_eq!(serde_json::to_string(&status).unwrap(), format!("\"{status}\""));
        }
        assert_eq!(RegionStatus::Pending.dataplane_state(), None);
        assert_eq!(RegionStatus::Draining.dataplane_state(), Some(RegionState::Draining));
    }
}
