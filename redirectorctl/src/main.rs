//! redirectorctl: the operator's handle on a running redirectord.
use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Result;
use clap::{Parser, Subcommand};
use redirector_proto::control::{self, Request, Response};

mod render;

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
    /// Take REGION down now, whatever its checks say: new flows go
    /// elsewhere and its established flows are re-steered.
    Down { region: String },
    /// Give REGION, held down, back to its checks.
    Up { region: String },
    /// Recent state changes, with when and why.
    Events {
        #[arg(long)]
        json: bool,
    },
    /// The data plane's flows: client, VIP, service, region, backend,
    /// state, idle time; the most recently active first, at most --limit
    /// (1000 by default, 100000 at most), of --region or --service only.
    Flows {
        #[arg(long)]
        region: Option<String>,
        #[arg(long)]
        service: Option<String>,
        #[arg(long)]
        limit: Option<u32>,
        #[arg(long)]
        json: bool,
    },
    /// Exit 0 if redirectord answers and, with [sync], has every peer's
    /// flow table (or gave up on a silent peer); 1 otherwise. For
    /// keepalived's track_script: a gateway takes the shared addresses only
    /// once it can carry every flow on.
    Ready,
    /// Re-read the config; an invalid one is refused and nothing changes.
    Reload,
    /// Take the data plane off every interface, remove its pins, stop redirectord.
    Detach,
}

fn main() -> ExitCode {
    // Output piped into `head` and cut short ends this process quietly,
    // as it does any Unix filter, rather than failing a write.
    // SAFETY: resetting a signal's disposition before any thread starts.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
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
        Command::Down { region } => (Request::Down { region }, false),
        Command::Up { region } => (Request::Up { region }, false),
        Command::Events { json } => (Request::Events, json),
        Command::Flows { region, service, limit, json } => (Request::Flows { region, service, limit }, json),
        Command::Ready => return ready(&cli.socket),
        Command::Reload => (Request::Reload, false),
        Command::Detach => (Request::Detach, false),
    };
    match control::call(&cli.socket, &request, Duration::from_secs(10))? {
        Response::Done { message } => println!("{message}"),
        Response::Error { message } => anyhow::bail!("{message}"),
        Response::Status(status) if json => println!("{}", serde_json::to_string_pretty(&status)?),
        Response::Status(status) => render::status(&status),
        Response::Events { events } if json => println!("{}", serde_json::to_string_pretty(&events)?),
        Response::Events { events } => render::events(events),
        Response::Flows(flows) if json => println!("{}", serde_json::to_string_pretty(&flows)?),
        Response::Flows(flows) => render::flows(&flows),
    }
    Ok(())
}

/// Quick, for a health script run every second: redirectord answers in
/// milliseconds or is not ready.
fn ready(socket: &std::path::Path) -> Result<()> {
    match control::call(socket, &Request::Status, Duration::from_secs(2))? {
        Response::Status(status) => match status.sync {
            Some(sync) if !sync.ready => {
                let waiting: Vec<&str> = sync
                    .peers
                    .iter()
                    .filter(|p| p.resync == control::ResyncState::Waiting)
                    .map(|p| p.address.as_str())
                    .collect();
                anyhow::bail!("not ready: waiting for the flow tables of {}", waiting.join(", "))
            }
            _ => {
                println!("ready");
                Ok(())
            }
        },
        Response::Error { message } => anyhow::bail!("{message}"),
        other => anyhow::bail!("unexpected answer {other:?}"),
    }
}
