//! `cargo xtask bench [xdp|daemon|failover|availability|dataplane|lb|flows|sync|pair] [--quick]`
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (which, rest) = args.split_first().map_or(("xdp", &[][..]), |(w, r)| (w.as_str(), r));
    let result = match which {
        "xdp" => redirector_tests::bench::xdp::run(rest),
        "daemon" => redirector_tests::bench::daemon::run(rest),
        "failover" => redirector_tests::bench::failover::run(rest),
        "availability" => redirector_tests::bench::availability::run(rest),
        "dataplane" => redirector_tests::bench::dataplane::run(rest),
        "lb" => redirector_tests::bench::lb::run(rest),
        "flows" => redirector_tests::bench::flows::run(rest),
        "sync" => redirector_tests::bench::sync::run(rest),
        "pair" => redirector_tests::bench::pair::run(rest),
        other => Err(anyhow::anyhow!("unknown benchmark {other:?}; known: xdp, daemon, failover, availability, dataplane, lb, flows, sync, pair")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
