//! redirector-agent: runs in a region, answers redirectord's heartbeats
//! with the region's state (its own check of the local service, CPU
//! utilisation, established connections to the service).
//!
//! redirector-agent --listen 10.1.0.2:7946 --key-file /etc/redirector/hb.key \
//!     --check-url http://127.0.0.1:80/ --cpu-cgroup /sys/fs/cgroup/region1

use std::{io::IsTerminal, process::ExitCode, time::Duration};

use anyhow::{Context, Result};
use clap::Parser;
use redirector_agent::cli::Cli;
use redirector_proto::{heartbeat::Key, probe::HttpCheck};
use tokio::{
    net::UdpSocket,
    signal::unix::{signal, SignalKind},
};
use tracing::info;
use tracing_subscriber::EnvFilter;

mod connections;
mod cpu;
mod report;
mod responder;
mod sampler;
mod service_check;

use crate::{
    cpu::{CpuMeter, CpuSource},
    report::LatestReport,
    responder::Responder,
};

/// CPU is sampled at least this far apart: utilisation over a shorter
/// period is mostly tick rounding (/proc counts in 10 ms ticks).
const MIN_CPU_PERIOD: Duration = Duration::from_millis(500);
/// How often dropped requests, if any, are summarised in the log.
const SUMMARY_PERIOD: Duration = Duration::from_secs(60);

/// Whose CPU the replies report.
fn cpu_source(cli: &Cli) -> CpuSource {
    match (&cli.cpu_cgroup, cli.cpu_pids.is_empty()) {
        (Some(dir), _) => CpuSource::Cgroup(dir.clone()),
        (None, false) => CpuSource::Pids(cli.cpu_pids.clone()),
        (None, true) => CpuSource::Host,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_target(false)
        .with_ansi(std::io::stdout().is_terminal())
        .init();
    // One thread answers every heartbeat: a reply is a decode, two MACs
    // and a send, tens of microseconds.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    match runtime
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(run(cli)))
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    let key = cli.key_file.as_deref().map(Key::load).transpose()?;
    let check = cli
        .check_url
        .as_deref()
        .map(|url| HttpCheck::parse(url, cli.check_status).map_err(anyhow::Error::msg))
        .transpose()
        .context("--check-url")?;
    let service_port = cli.service_port.or(check.as_ref().map(|c| c.port));
    let source = cpu_source(&cli);
    let cpu = CpuMeter::new(&source).context("CPU source")?;
    let check_every = Duration::from_millis(cli.check_interval_ms);
    let report = LatestReport::default();

    if let Some(check) = check {
        let timeout = cli
            .check_timeout_ms
            .map_or(check_every, Duration::from_millis);
        // The first reply already carries a real result.
        service_check::check_once(&check, timeout, &report).await;
        tokio::spawn(service_check::check_service(
            check,
            check_every,
            timeout,
            report.clone(),
        ));
    }
    sampler::spawn_load_sampler(
        cpu,
        service_port,
        check_every.max(MIN_CPU_PERIOD),
        report.clone(),
    )
    .context("starting the load sampler")?;

    let socket = UdpSocket::bind(cli.listen)
        .await
        .with_context(|| format!("binding {}", cli.listen))?;
    info!(
        "answering heartbeats on {}{}; CPU of {source}; connections on port {}",
        cli.listen,
        if key.is_some() { " (keyed)" } else { "" },
        service_port.map_or("(none)".into(), |p| p.to_string()),
    );
    let mut responder = Responder::new(socket, key, report);
    let mut sigterm = signal(SignalKind::terminate())?;
    let result = tokio::select! {
        ended = responder.run(SUMMARY_PERIOD) => {
            let Err(e) = ended;
            Err(anyhow::Error::new(e).context("heartbeat socket"))
        }
        _ = sigterm.recv() => Ok(()),
        _ = tokio::signal::ctrl_c() => Ok(()),
    };
    info!("heartbeat since start: {}", responder.counters());
    result
}
