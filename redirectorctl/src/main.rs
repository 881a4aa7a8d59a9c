//! redirectorctl: the operator's handle on a running redirectord.
use std::{process::ExitCode, time::Duration};

use anyhow::Result;
use clap::Parser;
use redirector_proto::control::{self, Request, Response};
use redirectorctl::cli::{Cli, Command};

mod render;

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
        Response::Status(status) => print!("{}", render::status(&status)),
        Response::Events { events } if json => println!("{}", serde_json::to_string_pretty(&events)?),
        Response::Events { events } => print!("{}", render::events(events)),
        Response::Flows(flows) if json => println!("{}", serde_json::to_string_pretty(&flows)?),
        Response::Flows(flows) => print!("{}", render::flows(&flows)),
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
