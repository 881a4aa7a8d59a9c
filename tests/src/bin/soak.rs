//! `cargo xtask soak [--minutes N] [--seed S] [--calm | --only KIND,...] [--record]`: the lab under
//! load and a fault every few seconds, invariants checked over the run
//! (root).
use std::{process::ExitCode, time::Duration};

use clap::Parser;
use redirector_tests::{
    bench::publish,
    fuzz::fresh_seed,
    soak::{soak, verdict::FaultKind, SoakOptions},
};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 2)]
    minutes: u64,
    /// Chooses the faults, their regions and timing; a fresh one (printed)
    /// if not given.
    #[arg(long)]
    seed: Option<u64>,
    /// The same lab and traffic without faults (the control run).
    #[arg(long, conflicts_with = "only")]
    calm: bool,
    /// Only these kinds of fault (all if not given).
    #[arg(long, value_delimiter = ',')]
    only: Vec<FaultKind>,
    /// Also write the report to bench/results/soak.md (soak-calm.md with
    /// --calm, soak-selected.md with --only).
    #[arg(long)]
    record: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(fresh_seed);
    eprintln!("soak: seed {seed}, {} minutes", args.minutes);
    let record_as = match (args.calm, args.only.is_empty()) {
        (true, _) => "soak-calm",
        (false, true) => "soak",
        (false, false) => "soak-selected",
    };
    let kinds = match (args.calm, args.only.is_empty()) {
        (true, _) => Vec::new(),
        (false, true) => FaultKind::ALL.to_vec(),
        (false, false) => args.only,
    };
    let report = match soak(&SoakOptions { duration: Duration::from_secs(args.minutes * 60), seed, kinds }) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("soak: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    publish("soak", record_as, &report.markdown(), args.record);
    if report.violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
