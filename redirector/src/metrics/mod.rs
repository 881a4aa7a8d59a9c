//! Prometheus metrics, encoded at scrape time from the snapshot the
//! controller publishes (this module reads state, it owns none), and the
//! endpoint that serves them.

use std::{
    fmt,
    sync::{atomic::Ordering, Arc, Mutex},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
    registry::Registry,
};

use crate::{bfd, listener::ListenerStats};

mod endpoint;
mod sync;
pub use endpoint::serve;

use redirector_proto::{
    control::{RegionView, Status, SyncView},
    heartbeat,
};

/// What the controller last published.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub status: Status,
    /// Per service: times its new flows changed region.
    pub switches: Vec<(String, u64)>,
    /// Decision → map write of the last change, seconds.
    pub last_map_write_seconds: Option<f64>,
    /// Heartbeat replies rejected, summed over every heartbeat check.
    pub heartbeat_rejections: heartbeat::Counters,
}

pub type Shared = Arc<Mutex<Snapshot>>;

/// One figure of a region's status, exported per region.
type RegionFigure<T> = fn(&RegionView) -> T;

#[derive(Debug)]
struct SnapshotCollector(Shared);

impl Collector for SnapshotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let snap = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let regions = &snap.status.regions;

        let mut family = encoder.encode_descriptor(
            "redirector_region_state",
            "Region state: 0 down, 1 up, 2 draining, 3 pending (no verdict yet)",
            None,
            MetricType::Gauge,
        )?;
        for r in regions {
            ConstGauge::new(r.state.metric_value()).encode(family.encode_family(&[("region", r.name.as_str())])?)?;
        }

        let mut family = encoder.encode_descriptor(
            "redirector_check_latency_seconds",
            "Latency of each check's last probe",
            None,
            MetricType::Gauge,
        )?;
        for r in regions {
            for c in &r.checks {
                if let Some(ms) = c.last_latency_ms {
                    let labels = [("region", r.name.as_str()), ("check", c.target.as_str())];
                    ConstGauge::new(ms / 1000.0).encode(family.encode_family(&labels)?)?;
                }
            }
        }

        let mut family = encoder.encode_descriptor(
            "redirector_check_up",
            "Whether each check's last probe passed",
            None,
            MetricType::Gauge,
        )?;
        for r in regions {
            for c in &r.checks {
                if let Some(ok) = c.last_ok {
                    let labels = [("region", r.name.as_str()), ("check", c.target.as_str())];
                    ConstGauge::new(i64::from(ok)).encode(family.encode_family(&labels)?)?;
                }
            }
        }

        let mut family = encoder.encode_descriptor(
            "redirector_check_local_errors",
            "Probes that could not be made on the gateway (no descriptor, buffer or port left); counted against no region",
            None,
            MetricType::Counter,
        )?;
        for r in regions {
            for c in &r.checks {
                let labels = [("region", r.name.as_str()), ("check", c.target.as_str())];
                ConstCounter::new(c.local_errors).encode(family.encode_family(&labels)?)?;
            }
        }

        let traffic: [(&str, &str, RegionFigure<u64>); 3] = [
            ("redirector_region_packets", "Client → region packets", |r| r.packets),
            ("redirector_region_bytes", "Client → region bytes", |r| r.bytes),
            ("redirector_region_new_flows", "Flows pinned to the region", |r| r.new_flows),
        ];
        for (name, help, value) in traffic {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for r in regions {
                ConstCounter::new(value(r)).encode(family.encode_family(&[("region", r.name.as_str())])?)?;
            }
        }

        let mut family = encoder.encode_descriptor(
            "redirector_region_active_flows",
            "Open flows pinned to the region",
            None,
            MetricType::Gauge,
        )?;
        for r in regions {
            ConstGauge::new(r.active_flows as i64).encode(family.encode_family(&[("region", r.name.as_str())])?)?;
        }

        let load: [(&str, &str, RegionFigure<Option<f64>>); 2] = [
            ("redirector_region_pps", "Client → region packets per second, last sample", |r| Some(r.pps)),
            ("redirector_region_cpu_ratio", "CPU the region's agent reports, 0 to 1", |r| {
                r.cpu_percent.map(|c| c / 100.0)
            }),
        ];
        for (name, help, value) in load {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for r in regions {
                if let Some(v) = value(r) {
                    ConstGauge::new(v).encode(family.encode_family(&[("region", r.name.as_str())])?)?;
                }
            }
        }

        let mut family = encoder.encode_descriptor(
            "redirector_region_saturated",
            "Whether the region is above its watermarks on a load measure",
            None,
            MetricType::Gauge,
        )?;
        for r in regions {
            for measure in &r.saturated {
                let labels = [("region", r.name.as_str()), ("measure", measure.as_str())];
                ConstGauge::new(1).encode(family.encode_family(&labels)?)?;
            }
        }

        let services = &snap.status.services;
        let mut family = encoder.encode_descriptor(
            "redirector_service_weight",
            "Live weight of each region of a service",
            None,
            MetricType::Gauge,
        )?;
        for s in services {
            for (region, weight) in &s.weights {
                let labels = [("service", s.name.as_str()), ("region", region.as_str())];
                ConstGauge::new(*weight as i64).encode(family.encode_family(&labels)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "redirector_service_new_flow_share",
            "Share of a service's selection table each region holds, 0 to 1",
            None,
            MetricType::Gauge,
        )?;
        for s in services {
            for (region, pct) in &s.new_flow_shares {
                let labels = [("service", s.name.as_str()), ("region", region.as_str())];
                ConstGauge::new(pct / 100.0).encode(family.encode_family(&labels)?)?;
            }
        }

        let mut family = encoder.encode_descriptor(
            "redirector_switches",
            "Times a service's new flows changed region",
            None,
            MetricType::Counter,
        )?;
        for (service, n) in &snap.switches {
            ConstCounter::new(*n).encode(family.encode_family(&[("service", service.as_str())])?)?;
        }

        let mut family = encoder.encode_descriptor(
            "redirector_packets",
            "Data plane verdicts by reason",
            None,
            MetricType::Counter,
        )?;
        for (reason, n) in &snap.status.reasons {
            ConstCounter::new(*n).encode(family.encode_family(&[("reason", reason.as_str())])?)?;
        }

        let mut family = encoder.encode_descriptor(
            "redirector_heartbeat_rejected",
            "Heartbeat replies rejected, by reason",
            None,
            MetricType::Counter,
        )?;
        for (reason, n) in snap.heartbeat_rejections.rejections() {
            ConstCounter::new(n).encode(family.encode_family(&[("reason", reason)])?)?;
        }

        if let Some(seconds) = snap.last_map_write_seconds {
            let family = encoder.encode_descriptor(
                "redirector_last_map_write_seconds",
                "Decision to data plane map write, last change",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(seconds).encode(family)?;
        }
        Ok(())
    }
}

/// The flow sync's view, when `[sync]` is configured.
pub type SharedSync = Option<Arc<Mutex<SyncView>>>;

/// The exposition text of a snapshot, with what the listeners turned away
/// and the flow sync's state, in Prometheus's text format 0.0.4.
pub fn render(shared: &Shared, listeners: &Listeners, sync: &SharedSync, bfd: &Arc<bfd::Shared>) -> Result<String, fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(SnapshotCollector(shared.clone())));
    registry.register_collector(Box::new(listeners.clone()));
    registry.register_collector(Box::new(BfdRejected(bfd.clone())));
    if let Some(view) = sync {
        registry.register_collector(Box::new(sync::SyncCollector(view.clone())));
    }
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    Ok(text_format(&text))
}

/// prometheus-client writes OpenMetrics: a counter family `x` whose
/// samples are `x_total`, and a closing `# EOF`. In the text format 0.0.4
/// (what the endpoint says it serves, and what `promtool check metrics`
/// reads) a family is named as its samples are, so a counter's HELP and
/// TYPE must name `x_total`, and `# EOF` is not a line.
fn text_format(open_metrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = open_metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut text = String::with_capacity(open_metrics.len());
    for line in open_metrics.lines().filter(|l| *l != "# EOF") {
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|tag| {
            let rest = line.strip_prefix(tag)?;
            let (name, tail) = rest.split_once(' ')?;
            counters.contains(name).then(|| format!("{tag}{name}_total {tail}"))
        });
        text += renamed.as_deref().unwrap_or(line);
        text.push('\n');
    }
    text
}

/// BFD datagrams the checks refused, by cause.
#[derive(Debug)]
struct BfdRejected(Arc<bfd::Shared>);

impl Collector for BfdRejected {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "redirector_bfd_rejected",
            "BFD datagrams refused, by cause (malformed, unknown session, authentication, TTL)",
            None,
            MetricType::Counter,
        )?;
        for (cause, n) in self.0.rejected.snapshot() {
            ConstCounter::new(n).encode(family.encode_family(&[("cause", cause)])?)?;
        }
        Ok(())
    }
}

/// The daemon's listeners, by name, with what they turned away.
#[derive(Clone, Debug, Default)]
pub struct Listeners(pub Vec<(&'static str, Arc<ListenerStats>)>);

impl Collector for Listeners {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        type Figure = (&'static str, &'static str, fn(&ListenerStats) -> u64);
        let figures: [Figure; 3] = [
            ("redirector_listener_refused", "Connections closed at once: the listener held its maximum", |s| {
                s.refused.load(Ordering::Relaxed)
            }),
            ("redirector_listener_timed_out", "Connections closed when their deadline passed", |s| {
                s.timed_out.load(Ordering::Relaxed)
            }),
            ("redirector_listener_accept_errors", "Accepts that failed (no descriptor left, ...)", |s| {
                s.accept_errors.load(Ordering::Relaxed)
            }),
        ];
        for (name, help, value) in figures {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (listener, stats) in &self.0 {
                ConstCounter::new(value(stats)).encode(family.encode_family(&[("listener", *listener)])?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use redirector_proto::{
        control::CheckView,
        model::{CheckKind, RegionStatus},
    };

    use super::*;

    #[test]
    fn renders_region_state_traffic_and_switches() {
        let shared: Shared = Default::default();
        {
            let mut snap = shared.lock().unwrap();
            snap.status.regions.push(RegionView {
                name: "region1".into(),
                state: RegionStatus::Draining,
                since_unix_ms: 0,
                checks: vec![CheckView {
                    kind: CheckKind::Http,
                    target: "http://10.1.0.2/".into(),
                    last_ok: Some(true),
                    last_latency_ms: Some(1.5),
                    last_error: None,
                    local_errors: 3,
                    since_unix_ms: 0,
                }],
                pps: 0.0,
                active_flows: 0,
                packets: 42,
                bytes: 0,
                new_flows: 0,
                cpu_percent: None,
                agent_connections: None,
                saturated: Vec::new(),
                held_down: false,
            });
            snap.switches.push(("web".into(), 3));
            snap.status.reasons.push(("forwarded".into(), 7));
            snap.heartbeat_rejections.unauthenticated = 5;
        }
        let stats = Arc::new(ListenerStats::default());
        stats.refused.store(9, Ordering::Relaxed);
        let text = render(&shared, &Listeners(vec![("metrics", stats)]), &None, &Arc::default()).unwrap();
        for line in [
            r#"redirector_region_state{region="region1"} 2"#,
            r#"redirector_region_packets_total{region="region1"} 42"#,
            r#"redirector_check_latency_seconds{region="region1",check="http://10.1.0.2/"} 0.0015"#,
            r#"redirector_switches_total{service="web"} 3"#,
            r#"redirector_packets_total{reason="forwarded"} 7"#,
            r#"redirector_heartbeat_rejected_total{reason="unauthenticated"} 5"#,
            r#"redirector_listener_refused_total{listener="metrics"} 9"#,
            r#"redirector_check_local_errors_total{region="region1",check="http://10.1.0.2/"} 3"#,
            // Text format 0.0.4: a counter's family is named as its samples.
            "# TYPE redirector_switches_total counter",
            "# TYPE redirector_region_state gauge",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert!(text.lines().all(|l| l != "# EOF" && l != "# TYPE redirector_switches counter"), "{text}");
    }
}
