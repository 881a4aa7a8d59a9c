//! Prometheus metrics, encoded at scrape time from the snapshot the
//! controller publishes: this module reads state, it owns none.

use std::{
    fmt,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use anyhow::{Context, Result};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
    registry::Registry,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};
use tracing::{info, warn};

use redirector_proto::{
    control::{RegionView, Status},
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
        let r = &snap.heartbeat_rejections;
        for (reason, n) in [
            ("malformed", r.malformed),
            ("bad_version", r.bad_version),
            ("unauthenticated", r.unauthenticated),
            ("wrong_source", r.wrong_source),
            ("unexpected_sequence", r.unexpected_sequence),
            ("expired", r.expired),
        ] {
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

/// The exposition text of a snapshot.
pub fn render(shared: &Shared) -> Result<String, fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(SnapshotCollector(shared.clone())));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    Ok(text)
}

/// Serves `GET /metrics` on `listen` until the process ends.
pub async fn serve(listen: SocketAddr, shared: Shared) -> Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("metrics: binding {listen}"))?;
    info!("metrics on http://{listen}/metrics");
    loop {
        let (mut conn, _) = listener.accept().await?;
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut request = [0u8; 1024];
            let n = conn.read(&mut request).await.unwrap_or(0);
            let wants_metrics = request[..n].starts_with(b"GET /metrics ");
            let response = match (wants_metrics, render(&shared)) {
                (true, Ok(body)) => format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                ),
                (true, Err(e)) => {
                    warn!("metrics: encoding failed: {e}");
                    "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into()
                }
                (false, _) => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into(),
            };
            let _ = conn.write_all(response.as_bytes()).await;
        });
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
            });
            snap.switches.push(("web".into(), 3));
            snap.status.reasons.push(("forwarded".into(), 7));
            snap.heartbeat_rejections.unauthenticated = 5;
        }
        let text = render(&shared).unwrap();
        for line in [
            r#"redirector_region_state{region="region1"} 2"#,
            r#"redirector_region_packets_total{region="region1"} 42"#,
            r#"redirector_check_latency_seconds{region="region1",check="http://10.1.0.2/"} 0.0015"#,
            r#"redirector_switches_total{service="web"} 3"#,
            r#"redirector_packets_total{reason="forwarded"} 7"#,
            r#"redirector_heartbeat_rejected_total{reason="unauthenticated"} 5"#,
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
    }
}
