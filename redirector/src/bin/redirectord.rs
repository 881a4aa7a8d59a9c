//! redirectord: health-checks the regions and steers new flows through the
//! XDP data plane. Runs in the foreground (systemd: redirectord.service).
use std::process::ExitCode;

use clap::Parser;
use redirector::{cli::Cli, daemon};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_target(false)
        .init();
    if let Some(path) = cli.check_config {
        return match daemon::check_config(&path, !cli.offline) {
            Ok(message) => {
                println!("{message}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("redirectord: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    raise_descriptor_limit();
    let options = daemon::Options {
        config: cli.config.expect("required by clap"),
        log_flow_events: cli.log_flow_events,
        detach_on_exit: cli.detach_on_exit,
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
    match runtime.map_err(anyhow::Error::from).and_then(|rt| rt.block_on(daemon::run(options))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The soft limit on open descriptors up to the hard one (systemd's default
/// soft limit is 1 024): the checks open a socket per probe, and clients of
/// the control socket and /metrics are capped, so descriptors stay for the
/// probes either way; this leaves headroom for many checks.
fn raise_descriptor_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit read and write the struct given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                tracing::warn!("raising the open-file limit: {}", std::io::Error::last_os_error());
            }
        }
    }
}
