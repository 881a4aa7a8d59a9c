//! redirectord's command line, as a type: the binary parses it, and the
//! package's man page and shell completions are generated from it.
use std::path::PathBuf;

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "redirectord",
    version,
    about = "Steer a service's traffic between regions",
    long_about = "Steer a service's traffic between regions: health-check them and write the choice \
                  into the XDP data plane attached to the configured interfaces.\n\n\
                  SIGHUP (or `redirectorctl reload`) re-reads the config; an invalid one is refused \
                  and nothing changes. On exit the data plane keeps forwarding on its last state, and \
                  the next start adopts it without moving a flow; `redirectorctl detach` takes it down. \
                  The config's reference is in /usr/share/doc/redirector/README.md; the package's \
                  example is /etc/redirector/redirector.toml."
)]
pub struct Cli {
    /// The configuration file (TOML).
    #[arg(long, value_name = "PATH", required_unless_present = "check_config")]
    pub config: Option<PathBuf>,
    /// Validate the configuration and exit: non-zero with the line and
    /// reason. Its interfaces must exist on this host.
    #[arg(long, value_name = "PATH", conflicts_with = "config")]
    pub check_config: Option<PathBuf>,
    /// With --check-config: check the file alone, for another host (its
    /// interfaces are not looked up here).
    #[arg(long, requires = "check_config")]
    pub offline: bool,
    /// Log each new flow and re-steer from the data plane (for diagnosis).
    #[arg(long)]
    pub log_flow_events: bool,
    /// Take the data plane off the interfaces on exit (by default it keeps
    /// forwarding on its last state, so a restart loses no flow).
    #[arg(long)]
    pub detach_on_exit: bool,
}
