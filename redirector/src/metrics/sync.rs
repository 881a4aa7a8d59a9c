//! The flow sync's figures, from the view its thread publishes.

use std::{
    fmt,
    sync::{Arc, Mutex},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
};
use redirector_proto::control::{PeerView, SyncView};

#[derive(Debug)]
pub struct SyncCollector(pub Arc<Mutex<SyncView>>);

impl Collector for SyncCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let view = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let family = encoder.encode_descriptor(
            "redirector_sync_ready",
            "1 once every peer has sent its flow table since this gateway started (or was silent too long)",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(i64::from(view.ready)).encode(family)?;

        type PeerFigure = (&'static str, &'static str, MetricType, fn(&PeerView) -> u64);
        let figures: [PeerFigure; 5] = [
            ("redirector_sync_peer_up", "1 if the peer was heard within 3 s", MetricType::Gauge, |p| u64::from(p.reachable)),
            ("redirector_sync_peer_resynced", "1 once the peer has sent its table since this gateway started", MetricType::Gauge, |p| {
                u64::from(p.resync == redirector_proto::control::ResyncState::Done)
            }),
            ("redirector_sync_records_received", "Flow records taken from the peer", MetricType::Counter, |p| p.records_received),
            ("redirector_sync_records_sent", "Flow records sent to the peer", MetricType::Counter, |p| p.records_sent),
            ("redirector_sync_send_errors", "Datagrams to the peer the socket refused", MetricType::Counter, |p| p.send_errors),
        ];
        for (name, help, kind, value) in figures {
            let mut family = encoder.encode_descriptor(name, help, None, kind)?;
            for peer in &view.peers {
                let labels = [("peer", peer.address.as_str())];
                match kind {
                    MetricType::Counter => ConstCounter::new(value(peer)).encode(family.encode_family(&labels)?)?,
                    _ => ConstGauge::new(value(peer) as i64).encode(family.encode_family(&labels)?)?,
                }
            }
        }

        let mut family = encoder.encode_descriptor(
            "redirector_sync_lag_seconds",
            "The peer's last datagram: taken here less sent there (the clocks' offset included)",
            None,
            MetricType::Gauge,
        )?;
        for peer in &view.peers {
            if let Some(ms) = peer.lag_ms {
                ConstGauge::new(ms / 1e3).encode(family.encode_family(&[("peer", peer.address.as_str())])?)?;
            }
        }

        let mut family = encoder.encode_descriptor(
            "redirector_sync_records_applied",
            "Peers' flow records: written here, closes applied, or left alone (a flow this gateway carries)",
            None,
            MetricType::Counter,
        )?;
        for (outcome, n) in [("written", view.flows_written), ("deleted", view.flows_deleted), ("kept", view.records_kept)] {
            ConstCounter::new(n).encode(family.encode_family(&[("outcome", outcome)])?)?;
        }

        let mut family = encoder.encode_descriptor(
            "redirector_sync_refused",
            "Sync datagrams refused, by cause",
            None,
            MetricType::Counter,
        )?;
        for (cause, n) in &view.refused {
            ConstCounter::new(*n).encode(family.encode_family(&[("cause", cause.as_str())])?)?;
        }
        Ok(())
    }
}
