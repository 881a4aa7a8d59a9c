//! The control socket between `redirectorctl` and `redirectord`: one JSON
//! request line, one JSON response line, over a Unix stream socket (mode
//! 0600: whoever can write the data plane's decisions is root's business).
//!
//! The views here are what the daemon reports; the daemon fills them from
//! its state, nothing here owns state.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::model::{CheckKind, PolicyKind, Protocol, RegionStatus};

pub const DEFAULT_SOCKET: &str = "/run/redirector/control.sock";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum Request {
    Status,
    /// `region: None` gives new flows back to the policy (`--auto`).
    SetActive {
        region: Option<String>,
        service: Option<String>,
    },
    /// A region's weight in every weighted or load-balanced service it
    /// serves, or in `service` only.
    Weight {
        region: String,
        weight: u32,
        service: Option<String>,
    },
    Drain {
        region: String,
    },
    Undrain {
        region: String,
    },
    /// Take a region down now, whatever its checks say: new flows go
    /// elsewhere, established flows are re-steered.
    Down {
        region: String,
    },
    /// Give a region held down back to its checks.
    Up {
        region: String,
    },
    Events,
    /// The data plane's flows, at most `limit` of them (the most recently
    /// active first), of `region` or `service` only if named.
    Flows {
        region: Option<String>,
        service: Option<String>,
        limit: Option<u32>,
    },
    Reload,
    /// Take the data plane off every interface and remove its pins; the
    /// daemon exits afterwards.
    Detach,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum Response {
    Done { message: String },
    Status(Status),
    Events { events: Vec<Event> },
    Flows(FlowList),
    Error { message: String },
}

/// `flows`: the flows that matched, the most recently active first, cut at
/// the limit asked for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlowList {
    pub flows: Vec<FlowView>,
    /// Flows that matched the filters (at least `flows.len()`).
    pub matched: u64,
    /// Flows in the data plane, both tables.
    pub total: u64,
}

/// One flow, as its client sees it and where it goes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlowView {
    /// The client's address and port (an ICMP echo's identifier).
    pub client: String,
    /// The VIP and port it addressed.
    pub vip: String,
    pub protocol: Protocol,
    /// None for a service no longer configured (its flows finish where
    /// they are).
    pub service: Option<String>,
    pub region: String,
    /// The region endpoint its destination is rewritten to.
    pub backend: String,
    pub state: FlowState,
    /// A peer gateway's flow (flow sync) that no packet has taken here.
    pub copy: bool,
    /// Since its last packet, with the data plane's 1 s granularity.
    pub idle_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FlowState {
    /// TCP, handshake not complete (the table of new flows).
    Handshake,
    /// Established (TCP), or a live UDP / ICMP flow.
    Open,
    /// TCP, FIN or RST seen: it lingers, then goes.
    Closed,
    /// Idle past its protocol's timeout: the next packet that can open a
    /// flow re-selects it.
    Idle,
}

impl FlowState {
    /// As JSON spells it.
    pub fn name(self) -> &'static str {
        match self {
            FlowState::Handshake => "handshake",
            FlowState::Open => "open",
            FlowState::Closed => "closed",
            FlowState::Idle => "idle",
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub regions: Vec<RegionView>,
    pub services: Vec<ServiceView>,
    /// Data plane counters by reason (`forwarded`, `pass_not_service`, ...).
    pub reasons: Vec<(String, u64)>,
    /// Flow-state sync with the other gateways, if `[sync]` is configured.
    #[serde(default)]
    pub sync: Option<SyncView>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SyncView {
    /// This gateway's sync address.
    pub listen: String,
    /// Every peer has sent its table since this gateway started, or was
    /// silent too long to wait for.
    pub ready: bool,
    pub peers: Vec<PeerView>,
    /// Peers' flows written here, their closes applied here, and records
    /// left alone (a flow this gateway carries itself).
    pub flows_written: u64,
    pub flows_deleted: u64,
    pub records_kept: u64,
    /// Datagrams refused, by cause (`unauthenticated`, `replayed`, ...).
    pub refused: Vec<(String, u64)>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerView {
    pub address: String,
    /// Heard from within the last 3 s (peers send a keepalive every second).
    pub reachable: bool,
    /// Since the last datagram taken from it; None: never heard.
    pub last_heard_ms: Option<u64>,
    /// How long that datagram took from its sending to its taking here
    /// (the two gateways' clocks' offset included: NTP keeps it to a
    /// millisecond or so).
    pub lag_ms: Option<f64>,
    pub records_received: u64,
    pub records_sent: u64,
    /// Datagrams to it the socket refused (no route, buffer full).
    pub send_errors: u64,
    /// Whether it has sent its whole table since this gateway started.
    pub resync: ResyncState,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResyncState {
    Waiting,
    Done,
    /// Silent too long: this gateway became ready without its table.
    GaveUp,
}

impl ResyncState {
    /// As JSON spells it.
    pub fn name(self) -> &'static str {
        match self {
            ResyncState::Waiting => "waiting",
            ResyncState::Done => "done",
            ResyncState::GaveUp => "gave-up",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegionView {
    pub name: String,
    pub state: RegionStatus,
    /// Unix time (ms) of the last state change.
    pub since_unix_ms: u64,
    pub checks: Vec<CheckView>,
    /// Client → region packets per second, over the last sample.
    pub pps: f64,
    /// Open flows pinned to this region (from the flow table).
    pub active_flows: u64,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    /// CPU percent the region's agent reported last (host, cgroup or pids,
    /// as the agent was told).
    pub cpu_percent: Option<f64>,
    /// Established connections the agent counts on its service port.
    pub agent_connections: Option<u32>,
    /// The load measures ("pps", "flows", "cpu") on which the region is
    /// above its watermarks.
    pub saturated: Vec<String>,
    /// Down because the operator said so (`redirectorctl down`), whatever
    /// its checks say.
    #[serde(default)]
    pub held_down: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckView {
    pub kind: CheckKind,
    /// What it probes: an address, or the URL.
    pub target: String,
    /// None until the first probe answered or timed out.
    pub last_ok: Option<bool>,
    pub last_latency_ms: Option<f64>,
    /// Why the last probe failed, or could not be made here.
    pub last_error: Option<String>,
    /// Probes that could not be made on the gateway (no descriptor, no
    /// buffer...): counted against nothing.
    pub local_errors: u64,
    pub since_unix_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceView {
    pub name: String,
    pub vip: String,
    pub port: u16,
    pub protocol: Protocol,
    pub policy: PolicyKind,
    /// Regions taking new flows.
    pub active: Vec<String>,
    /// Live weight of each region of the service.
    pub weights: Vec<(String, u32)>,
    /// Percent of the selection table each region holds: its share of new
    /// flows. Empty until the daemon wrote the table.
    pub new_flow_shares: Vec<(String, f64)>,
    /// The region the operator sent new flows to (`set-active`), if any.
    pub set_active: Option<String>,
    /// Why the policy is not where its rules alone would put it, or what it
    /// waits for.
    pub note: Option<String>,
}

/// What an event is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// A region's health or drain changed.
    Region,
    /// A region crossed one of its load watermarks.
    Saturation,
    /// A service's new flows changed regions: its selection table was
    /// rewritten.
    Switch,
    /// Something about a service that moved no flow: an operator command,
    /// or what the policy waits for.
    Service,
}

impl EventKind {
    /// As JSON spells it.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Region => "region",
            EventKind::Saturation => "saturation",
            EventKind::Switch => "switch",
            EventKind::Service => "service",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub unix_ms: u64,
    pub kind: EventKind,
    /// The service or region it is about ("service web", "region region1").
    pub subject: String,
    pub what: String,
    pub why: String,
    /// Decision → data plane map write, when the event wrote the data plane.
    pub map_write_us: Option<f64>,
}

/// Sends one request and waits for its response.
pub fn call(socket: &Path, request: &Request, timeout: Duration) -> Result<Response> {
    let mut stream = UnixStream::connect(socket).with_context(|| {
        format!(
            "connecting to redirectord at {} (is it running? --socket PATH)",
            socket.display()
        )
    })?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut line = serde_json::to_string(request)?;
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    let mut reply = String::new();
    BufReader::new(&stream)
        .read_line(&mut reply)
        .context("reading redirectord's answer")?;
    if reply.is_empty() {
        bail!("redirectord closed the connection without answering");
    }
    serde_json::from_str(&reply).context("redirectord's answer is not a response")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_tagged_by_command() {
        let r = Request::SetActive {
            region: Some("region2".into()),
            service: None,
        };
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(json, r#"{"command":"set-active","region":"region2","service":null}"#);
        assert_eq!(serde_json::from_str::<Request>(&json).unwrap(), r);
    }

    #[test]
    fn event_kinds_are_named_as_json_spells_them() {
        for kind in [EventKind::Region, EventKind::Saturation, EventKind::Switch, EventKind::Service] {
            assert_eq!(serde_json::to_string(&kind).unwrap(), format!("\"{}\"", kind.name()));
        }
    }

    #[test]
    fn unknown_commands_are_refused() {
        assert!(serde_json::from_str::<Request>(r#"{"command":"reboot"}"#).is_err());
    }
}
