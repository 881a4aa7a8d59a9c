//! redirectorctl: the operator's handle on a running redirectord.
use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Result;
use clap::{Parser, Subcommand};
use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use redirector::control::{self, Request, Response, Status};

#[derive(Parser)]
#[command(version, about = "Control a running redirectord")]
struct Cli {
    /// redirectord's control socket.
    #[arg(long, global = true, default_value = control::DEFAULT_SOCKET)]
    socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Regions (state, checks, traffic) and which regions take each service's new flows.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Send new flows to REGION (all services, or --service); --auto gives them back to the policy.
    SetActive {
        #[arg(required_unless_present = "auto", conflicts_with = "auto")]
        region: Option<String>,
        #[arg(long)]
        auto: bool,
        #[arg(long)]
        service: Option<String>,
    },
    /// REGION's share of new flows under the weighted policy (and the load
    /// policies' spread when every region is saturated); established flows
    /// stay where they are. All services REGION serves, or --service.
    Weight {
        region: String,
        weight: u32,
        #[arg(long)]
        service: Option<String>,
    },
    /// No new flows to REGION; its established flows continue.
    Drain { region: String },
    /// REGION takes new flows again (when healthy).
    Undrain { region: String },
    /// Recent state changes, with when and why.
    Events {
        #[arg(long)]
        json: bool,
    },
    /// Re-read the config; an invalid one is refused and nothing changes.
    Reload,
    /// Take the data plane off every interface, remove its pins, stop redirectord.
    Detach,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("redirectorctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let (request, json) = match cli.command {
        Command::Status { json } => (Request::Status, json),
        Command::SetActive { region, service, .. } => (Request::SetActive { region, service }, false),
        Command::Weight { region, weight, service } => (Request::Weight { region, weight, service }, false),
        Command::Drain { region } => (Request::Drain { region }, false),
        Command::Undrain { region } => (Request::Undrain { region }, false),
        Command::Events { json } => (Request::Events, json),
        Command::Reload => (Request::Reload, false),
        Command::Detach => (Request::Detach, false),
    };
    match control::call(&cli.socket, &request, Duration::from_secs(10))? {
        Response::Done { message } => println!("{message}"),
        Response::Error { message } => anyhow::bail!("{message}"),
        Response::Status(status) if json => println!("{}", serde_json::to_string_pretty(&status)?),
        Response::Status(status) => print_status(&status),
        Response::Events { events } if json => println!("{}", serde_json::to_string_pretty(&events)?),
        Response::Events { events } => {
            let mut table = table(&["time", "subject", "what", "why", "map write"]);
            for e in events {
                table.add_row(vec![
                    clock(e.unix_ms),
                    e.subject,
                    e.what,
                    e.why,
                    e.map_write_us.map_or(String::new(), |us| format!("{us:.0} µs")),
                ]);
            }
            println!("{table}");
        }
    }
    Ok(())
}

fn print_status(status: &Status) {
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
            r.state.clone(),
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
        let pinned = match (&s.pinned, &s.note) {
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
            s.policy.clone(),
            // Failover ranks by priority: weights play no part.
            if s.policy == "failover" {
                "-".into()
            } else {
                s.weights.iter().map(|(r, w)| format!("{r}={w}")).collect::<Vec<_>>().join("\n")
            },
            if shares.is_empty() { "none".into() } else { shares.join("\n") },
            pinned,
        ]);
    }
    println!("{services}");
}

fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table.load_preset(UTF8_BORDERS_ONLY).set_header(header.to_vec());
    table
}

/// Local wall-clock time of a Unix timestamp in ms, as HH:MM:SS.mmm (UTC).
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
