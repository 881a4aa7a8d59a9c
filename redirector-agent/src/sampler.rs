//! Samples the region's load into the report, off the responder's thread.

use std::{io, thread, time::Duration};

use anyhow::Result;
use tracing::{info, warn};

use crate::{connections::count_connections, cpu::CpuMeter, report::LatestReport};

/// Samples CPU and connections into the report about every `every`, on a
/// thread of its own: reading /proc/net/tcp takes time in proportion to
/// the connections, and the responder must not wait for it. Connections
/// are reported at once, CPU after the first period (it needs two
/// readings); drift does not matter, as utilisation is over the time that
/// actually passed.
pub fn spawn_load_sampler(
    mut cpu: CpuMeter,
    service_port: Option<u16>,
    every: Duration,
    report: LatestReport,
) -> io::Result<()> {
    thread::Builder::new()
        .name("load-sampler".into())
        .spawn(move || {
            let mut failing = Failing::default();
            let mut cpu_permille = 0;
            loop {
                let connections = match service_port {
                    Some(port) => failing.note("connections", count_connections(port)),
                    None => 0,
                };
                report.update(|r| {
                    r.cpu_permille = cpu_permille;
                    r.active_connections = connections;
                });
                thread::sleep(every);
                cpu_permille = failing.note("CPU", cpu.sample());
            }
        })
        .map(drop)
}

/// The load sources failing now, so that each failure is logged when it
/// starts and ends rather than twice a second. A failing source reports 0.
#[derive(Default)]
struct Failing(Vec<&'static str>);

impl Failing {
    fn note<T: Default>(&mut self, what: &'static str, result: Result<T>) -> T {
        let was_failing = self.0.contains(&what);
        match result {
            Ok(value) => {
                if was_failing {
                    info!("{what} measured again");
                    self.0.retain(|w| *w != what);
                }
                value
            }
            Err(e) => {
                if !was_failing {
                    warn!("{what} not measured, reporting 0: {e:#}");
                    self.0.push(what);
                }
                T::default()
            }
        }
    }
}

