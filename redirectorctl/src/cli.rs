//! redirectorctl's command line, as a type: the binary parses it, and the
//! package's man pages and shell completions are generated from it.
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use redirector_proto::control;

#[derive(Parser)]
#[command(version, about = "Control a running redirectord")]
pub struct Cli {
    /// redirectord's control socket.
    #[arg(long, global = true, default_value = control::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Regions (state, checks, traffic) and which regions take each
    /// service's new flows.
    Status {
        /// The whole status as JSON (addresses and states as text).
        #[arg(long)]
        json: bool,
    },
    /// Send new flows to one region, overriding the policy.
    ///
    /// All services REGION serves, or --service only; --auto gives them
    /// back to the policy. Established flows stay where they are.
    SetActive {
        #[arg(required_unless_present = "auto", conflicts_with = "auto")]
        region: Option<String>,
        /// Give the service(s) back to their policy.
        #[arg(long)]
        auto: bool,
        /// This service only.
        #[arg(long)]
        service: Option<String>,
    },
    /// Set a region's share of new flows.
    ///
    /// REGION's share under the weighted policy (and the load policies'
    /// spread when every region is saturated); established flows stay
    /// where they are. All services REGION serves, or --service.
    Weight {
        region: String,
        weight: u32,
        /// This service only.
        #[arg(long)]
        service: Option<String>,
    },
    /// No new flows to REGION; its established flows continue.
    Drain { region: String },
    /// REGION takes new flows again (when healthy).
    Undrain { region: String },
    /// Take REGION down now, whatever its checks say.
    ///
    /// New flows go elsewhere and its established flows are re-steered;
    /// `status` shows it down by the operator until `up`.
    Down { region: String },
    /// Give REGION, held down, back to its checks.
    Up { region: String },
    /// Recent state changes, with when and why.
    Events {
        /// The events as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the data plane's flows.
    ///
    /// Client, VIP, service, region, backend, state (handshake, open,
    /// closed, idle; a peer's copy) and idle time, the most recently active
    /// first. Read in batches on redirectord's side without holding up its
    /// controller; the answer says how many matched and how many the data
    /// plane holds.
    Flows {
        /// Only flows steered to this region.
        #[arg(long)]
        region: Option<String>,
        /// Only flows of this service.
        #[arg(long)]
        service: Option<String>,
        /// At most this many flows [default: 1000; at most 100000].
        #[arg(long)]
        limit: Option<u32>,
        /// The flows as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Exit 0 once this gateway can carry every flow on.
    ///
    /// 0 if redirectord answers and, with [sync], has every peer's flow
    /// table (or gave up on a silent peer); 1 otherwise. For keepalived's
    /// track_script: a gateway takes the shared addresses only once it can
    /// carry every flow on.
    Ready,
    /// Re-read the config; an invalid one is refused and nothing changes.
    Reload,
    /// Take the data plane off every interface, remove its pins, stop
    /// redirectord.
    Detach,
}
