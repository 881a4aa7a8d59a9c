//! The agent's own check of the service in its region: an HTTP GET every
//! interval, its verdict carried by every heartbeat reply.

use std::time::Duration;

use redirector_proto::{
    heartbeat::ServiceCheck,
    probe::{self, HttpCheck, Outcome},
};
use tokio::time::{interval_at, MissedTickBehavior};
use tracing::{info, warn};

use crate::report::LatestReport;

/// One probe, its result written into the report; logs only changes, as
/// a probe runs every check interval (100 ms by default).
pub async fn check_once(check: &HttpCheck, timeout: Duration, report: &LatestReport) {
    let result = probe::http(check, timeout).await;
    let now = match result.outcome {
        Outcome::Success => ServiceCheck::Ok,
        _ => ServiceCheck::Failed,
    };
    let before = report.get().service;
    report.update(|r| r.service = now);
    match (before, now) {
        (ServiceCheck::Failed, ServiceCheck::Ok) => info!("{}: ok again", check.url),
        (ServiceCheck::None | ServiceCheck::Ok, ServiceCheck::Failed) => {
            warn!("{}: check {}", check.url, result.outcome)
        }
        _ => {}
    }
}

/// Probes every `every`, forever, starting a period from now (after the
/// caller's first [`check_once`]). A probe that outlasts the period delays
/// the next one rather than overlapping it.
pub async fn check_service(
    check: HttpCheck,
    every: Duration,
    timeout: Duration,
    report: LatestReport,
) {
    let mut ticks = interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        check_once(&check, timeout, &report).await;
    }
}
