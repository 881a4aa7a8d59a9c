//! redirector-agent's command line, as a type: the binary parses it, and
//! the package's man page and shell completions are generated from it.
use std::{net::SocketAddr, path::PathBuf};

use clap::Parser;

#[derive(Parser)]
#[command(
    version,
    about = "Answer redirectord's heartbeats with this region's state"
)]
pub struct Cli {
    /// UDP address the heartbeats come to.
    #[arg(long)]
    pub listen: SocketAddr,
    /// Shared HMAC key, as redirectord's heartbeat check has it (key_file).
    #[arg(long)]
    pub key_file: Option<PathBuf>,
    /// Check the local service with an HTTP GET (http://HOST[:PORT][/PATH]);
    /// without it, replies carry no service check.
    #[arg(long)]
    pub check_url: Option<String>,
    /// The status the check expects.
    #[arg(long, default_value_t = 200, requires = "check_url")]
    pub check_status: u16,
    /// How often the service is checked (and the load sampled, when this
    /// is longer than 500 ms).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub check_interval_ms: u64,
    /// How long a check may take [default: the check interval].
    #[arg(long, requires = "check_url", value_parser = clap::value_parser!(u64).range(1..))]
    pub check_timeout_ms: Option<u64>,
    /// The service's port, for counting its connections [default: the
    /// --check-url port].
    #[arg(long)]
    pub service_port: Option<u16>,
    /// Report the CPU of this cgroup v2 directory, not the host's.
    #[arg(long, conflicts_with = "cpu_pids")]
    pub cpu_cgroup: Option<PathBuf>,
    /// Report the CPU of these processes (not their children), not the host's.
    #[arg(long, value_delimiter = ',')]
    pub cpu_pids: Vec<u32>,
}
