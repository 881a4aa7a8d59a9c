//! `cargo xtask fuzz [--frames N] [--seed S] [--minutes M]`: differential
//! fuzzing of the XDP program against its reference model (root). A
//! disagreement is saved under tests/fuzz-fixtures/, which the packet
//! tests replay.
use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::Parser;
use redirector_tests::{
    bench::publish,
    fuzz::{fresh_seed, fuzz, FuzzOptions},
};

#[derive(Parser)]
struct Args {
    /// Frames to generate.
    #[arg(long, default_value_t = 1_000_000)]
    frames: u64,
    /// The generator's seed; a fresh one (printed) if not given.
    #[arg(long)]
    seed: Option<u64>,
    /// Stop after this many minutes even if fewer frames ran.
    #[arg(long, default_value_t = 60)]
    minutes: u64,
    /// Also write the report to bench/results/fuzz.md.
    #[arg(long)]
    record: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(fresh_seed);
    eprintln!("fuzz: seed {seed}, up to {} frames", args.frames);
    let options = FuzzOptions {
        seed,
        frames: args.frames,
        time_limit: Duration::from_secs(args.minutes * 60),
        fixtures: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz-fixtures"),
    };
    let report = match fuzz(&options) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("fuzz: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    publish("fuzz", "fuzz", &format!("{}\n", report.markdown()), args.record);
    if report.mismatch.is_some() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
