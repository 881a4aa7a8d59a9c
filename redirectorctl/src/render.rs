//! redirectorctl's tables: status, events and flows as an operator reads
//! them, as text for main to print.

use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use redirector_proto::{
    control::{Event, FlowList, Status},
    model::PolicyKind,
};

pub fn status(status: &Status) -> String {
    let mut text = String::new();
    let mut regions = table(&[
        "region", "state", "since", "checks", "pps", "active flows", "cpu", "saturated", "new flows",
    ]);
    for r in &status.regions {
        let checks = r
            .checks
            .iter()
            .map(|c| {
                let result = match (c.last_ok, c.last_latency_ms) {
                    (Some(true), Some(ms)) => format!("ok {ms:.1} ms"),
                    (Some(true), None) => "ok".into(),
                    (Some(false), _) => format!("FAIL {}", c.last_error.as_deref().unwrap_or("")),
                    (None, _) => "pending".into(),
                };
                format!("{} {}: {result}", c.kind, c.target)
            })
            .collect::<Vec<_>>()
            .join("\n");
        regions.add_row(vec![
            r.name.clone(),
            if r.held_down { format!("{} (operator)", r.state) } else { r.state.to_string() },
            clock(r.since_unix_ms),
            checks,
            format!("{:.0}", r.pps),
            match r.agent_connections {
                Some(agent) => format!("{} (agent: {agent})", r.active_flows),
                None => r.active_flows.to_string(),
            },
            r.cpu_percent.map_or("-".into(), |c| format!("{c:.1} %")),
            if r.saturated.is_empty() { "-".into() } else { r.saturated.join(", ") },
            r.new_flows.to_string(),
        ]);
    }
    text += &format!("{regions}\n");
    let mut services = table(&["service", "vip", "policy", "weights", "new flows to", "override"]);
    for s in &status.services {
        let set_active = match (&s.set_active, &s.note) {
            (Some(p), Some(note)) => format!("{p} ({note})"),
            (Some(p), None) => p.clone(),
            (None, Some(note)) => format!("auto ({note})"),
            (None, None) => "auto".into(),
        };
        let shares = s
            .new_flow_shares
            .iter()
            .map(|(region, pct)| format!("{region} {pct:.1} %"))
            .collect::<Vec<_>>();
        services.add_row(vec![
            s.name.clone(),
            format!("{}/{}", endpoint(&s.vip, s.port), s.protocol),
            s.policy.to_string(),
            // Failover ranks by priority: weights play no part.
            if s.policy == PolicyKind::Failover {
                "-".into()
            } else {
                s.weights.iter().map(|(r, w)| format!("{r}={w}")).collect::<Vec<_>>().join("\n")
            },
            if shares.is_empty() { "none".into() } else { shares.join("\n") },
            set_active,
        ]);
    }
    text += &format!("{services}\n");
    if let Some(sync) = &status.sync {
        text += &format!(
            "sync on {}: {}; peers' flows written {}, closed {}, kept {}{}\n",
            sync.listen,
            if sync.ready { "ready" } else { "waiting for the peers' tables" },
            sync.flows_written,
            sync.flows_deleted,
            sync.records_kept,
            refused(&sync.refused),
        );
        let mut peers = table(&["peer", "reachable", "last heard", "lag", "records in", "records out", "table"]);
        for p in &sync.peers {
            peers.add_row(vec![
                p.address.clone(),
                if p.reachable { "yes" } else { "NO" }.to_string(),
                p.last_heard_ms.map_or("never".into(), |ms| format!("{ms} ms ago")),
                p.lag_ms.map_or("-".into(), |ms| format!("{ms:.2} ms")),
                p.records_received.to_string(),
                if p.send_errors == 0 {
                    p.records_sent.to_string()
                } else {
                    format!("{} ({} send errors)", p.records_sent, p.send_errors)
                },
                p.resync.name().to_string(),
            ]);
        }
        text += &format!("{peers}\n");
    }
    text
}

/// ", refused: 3 unauthenticated, 1 replayed", or nothing.
fn refused(causes: &[(String, u64)]) -> String {
    let listed: Vec<String> = causes.iter().filter(|(_, n)| *n > 0).map(|(cause, n)| format!("{n} {cause}")).collect();
    if listed.is_empty() {
        String::new()
    } else {
        format!("; refused: {}", listed.join(", "))
    }
}

pub fn events(events: Vec<Event>) -> String {
    let mut table = table(&["time", "kind", "subject", "what", "why", "map write"]);
    for e in events {
        table.add_row(vec![
            clock(e.unix_ms),
            e.kind.name().to_string(),
            e.subject,
            e.what,
            e.why,
            e.map_write_us.map_or(String::new(), |us| format!("{us:.0} µs")),
        ]);
    }
    format!("{table}\n")
}

pub fn flows(list: &FlowList) -> String {
    let mut table = table(&["client", "vip", "service", "region", "backend", "state", "idle"]);
    for f in &list.flows {
        table.add_row(vec![
            f.client.clone(),
            format!("{}/{}", f.vip, f.protocol),
            f.service.clone().unwrap_or_else(|| "(removed)".into()),
            f.region.clone(),
            f.backend.clone(),
            if f.copy { format!("{} (peer's copy)", f.state.name()) } else { f.state.name().to_string() },
            format!("{:.0} s", f.idle_ms as f64 / 1000.0),
        ]);
    }
    let shown = list.flows.len() as u64;
    let more = if shown < list.matched { " (--limit N for more)" } else { "" };
    format!("{table}\n{shown} of {} flows matched{more}; {} in the data plane\n", list.matched, list.total)
}

fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table.load_preset(UTF8_BORDERS_ONLY).set_header(header.to_vec());
    table
}

/// The UTC time of day of a Unix timestamp in ms, as HH:MM:SS.mmmZ.
fn clock(unix_ms: u64) -> String {
    if unix_ms == 0 {
        return "-".into();
    }
    let secs = unix_ms / 1000;
    format!(
        "{:02}:{:02}:{:02}.{:03}Z",
        secs / 3600 % 24,
        secs / 60 % 60,
        secs % 60,
        unix_ms % 1000
    )
}

/// `VIP:PORT`, an IPv6 VIP in brackets (RFC 3986): `[fd00:2::2]:80`.
fn endpoint(vip: &str, port: u16) -> String {
    match vip.parse::<std::net::IpAddr>() {
        Ok(ip) => std::net::SocketAddr::new(ip, port).to_string(),
        Err(_) => format!("{vip}:{port}"),
    }
}

#[cfg(test)]
mod tests {
    use redirector_proto::{
        control::{FlowState, FlowView},
        model::Protocol,
    };

    use super::*;

    fn flow(client: &str, service: Option<&str>, state: FlowState, copy: bool) -> FlowView {
        FlowView {
            client: client.into(),
            vip: "10.2.0.2:80".into(),
            protocol: Protocol::Tcp,
            service: service.map(Into::into),
            region: "region1".into(),
            backend: "10.1.0.2:80".into(),
            state,
            copy,
            idle_ms: 2_400,
        }
    }

    #[test]
    fn a_flow_list_says_what_it_left_out() {
        let list = FlowList {
            flows: vec![
                flow("10.0.0.2:40000", Some("web"), FlowState::Open, false),
                flow("10.0.0.2:40001", None, FlowState::Handshake, true),
            ],
            matched: 5,
            total: 9,
        };
        let text = flows(&list);
        let rows: Vec<&str> = text.lines().filter(|l| l.contains("10.0.0.2:4000")).collect();
        assert_eq!(rows.len(), 2, "{text}");
        assert!(rows[0].contains("web") && rows[0].contains("open") && rows[0].contains("2 s"), "{}", rows[0]);
        assert!(rows[1].contains("(removed)") && rows[1].contains("handshake (peer's copy)"), "{}", rows[1]);
        assert!(text.ends_with("2 of 5 flows matched (--limit N for more); 9 in the data plane\n"), "{text}");
        let all = FlowList { matched: 2, ..list };
        assert!(flows(&all).ends_with("2 of 2 flows matched; 9 in the data plane\n"));
    }

    #[test]
    fn an_ipv6_vip_is_written_in_brackets_before_its_port() {
        assert_eq!(endpoint("fd00:2::2", 80), "[fd00:2::2]:80");
        assert_eq!(endpoint("10.2.0.2", 80), "10.2.0.2:80");
    }

    #[test]
    fn times_are_utc_clock_times_and_zero_is_none() {
        assert_eq!(clock(0), "-");
        // 2023-11-14T22:13:20.123Z
        assert_eq!(clock(1_700_000_000_123), "22:13:20.123Z");
    }

    #[test]
    fn only_the_causes_that_happened_are_listed() {
        assert_eq!(refused(&[("replayed".into(), 0)]), "");
        assert_eq!(
            refused(&[("unauthenticated".into(), 3), ("replayed".into(), 0), ("config_mismatch".into(), 1)]),
            "; refused: 3 unauthenticated, 1 config_mismatch"
        );
    }
}
