//! redirectorctl's tables: status and events as an operator reads them.

use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use redirector_proto::{
    control::{Event, FlowList, Status},
    model::PolicyKind,
};

pub fn status(status: &Status) {
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
    println!("{regions}");
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
            format!("{}:{}/{}", s.vip, s.port, s.protocol),
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
    println!("{services}");
    if let Some(sync) = &status.sync {
        println!(
            "sync on {}: {}; peers' flows written {}, closed {}, kept {}{}",
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
        println!("{peers}");
    }
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

pub fn events(events: Vec<Event>) {
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
    println!("{table}");
}

pub fn flows(list: &FlowList) {
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
    println!("{table}");
    let shown = list.flows.len() as u64;
    let more = if shown < list.matched { " (--limit N for more)" } else { "" };
    println!("{shown} of {} flows matched{more}; {} in the data plane", list.matched, list.total);
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
