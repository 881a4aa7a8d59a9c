//! The controller's state as operators read it: `redirectorctl status` and
//! `events`, and the snapshot `/metrics` encodes. State stays typed until
//! here; names and strings are made at this edge.

use redirector_proto::control::{self, CheckView, RegionView, ServiceView, Status};

use super::Controller;
use crate::{dataplane::Dataplane, health::Outcome, maglev, metrics};

impl<D: Dataplane> Controller<D> {
    fn unix_ms(&self, at: std::time::Duration) -> u64 {
        self.origin_unix_ms + at.as_millis() as u64
    }

    fn region_name(&self, region: u8) -> String {
        self.config.regions[region as usize].name.clone()
    }

    pub fn status(&self) -> Status {
        let regions = self
            .config
            .regions
            .iter()
            .zip(&self.health)
            .map(|(region, health)| {
                let condition = health.condition();
                let id = region.id as usize;
                let counters = self.traffic.stats.regions.get(id).copied().unwrap_or_default();
                let load = self.load(id);
                RegionView {
                    name: region.name.clone(),
                    state: condition.status(),
                    since_unix_ms: self.unix_ms(condition.since),
                    checks: health
                        .checks()
                        .iter()
                        .map(|c| {
                            // A local error newer than the last real result
                            // is what the operator needs to see now.
                            let local = c.last_local.as_ref().filter(|l| c.last.as_ref().is_none_or(|p| l.at > p.at));
                            CheckView {
                                kind: c.kind,
                                target: c.target.clone(),
                                last_ok: c.last.as_ref().map(|p| p.outcome == Outcome::Success),
                                last_latency_ms: c.last.as_ref().map(|p| p.latency.as_secs_f64() * 1e3),
                                last_error: match (local, c.last.as_ref().map(|p| &p.outcome)) {
                                    (Some(l), _) => Some(format!("{} (not counted against the region)", l.outcome)),
                                    (None, Some(Outcome::Success) | None) => None,
                                    (None, Some(other)) => Some(other.to_string()),
                                },
                                local_errors: c.local_errors,
                                since_unix_ms: self.unix_ms(c.since),
                            }
                        })
                        .collect(),
                    pps: load.pps,
                    active_flows: load.flows,
                    cpu_percent: load.cpu_percent,
                    agent_connections: self.agent_reports[id].map(|a| a.active_connections),
                    saturated: self.policy.saturated(region.id).iter().map(|m| m.name().to_string()).collect(),
                    packets: counters.packets,
                    bytes: counters.bytes,
                    new_flows: counters.new_flows,
                    held_down: condition.held_down,
                }
            })
            .collect();
        let named = |share: &[(u8, u32)]| share.iter().map(|&(r, w)| (self.region_name(r), w)).collect::<Vec<_>>();
        let services = self
            .config
            .services
            .iter()
            .zip(self.policy.snapshot())
            .zip(&self.live)
            .map(|((service, policy), live)| ServiceView {
                name: service.name.clone(),
                vip: service.addr.vip.to_string(),
                port: service.addr.port,
                protocol: service.addr.protocol,
                policy: policy.policy,
                active: named(&policy.share).into_iter().map(|(name, _)| name).collect(),
                weights: named(&policy.weights),
                new_flow_shares: maglev::shares(live.slots()).into_iter().map(|(r, pct)| (self.region_name(r), pct)).collect(),
                set_active: policy.set_active.map(|r| self.region_name(r)),
                note: policy.note,
            })
            .collect();
        Status {
            regions,
            services,
            reasons: self
                .traffic
                .stats
                .reasons
                .iter()
                .map(|(reason, n)| (reason.name().to_string(), *n))
                .collect(),
            // The sync thread's, filled in by the daemon.
            sync: None,
        }
    }

    pub fn events(&self) -> Vec<control::Event> {
        self.log
            .iter()
            .map(|logged| {
                let e = &logged.event;
                control::Event {
                    unix_ms: self.unix_ms(e.at),
                    kind: e.kind,
                    subject: self.subject_name(e.subject),
                    what: format!("{} → {}", e.from, e.to),
                    why: e.reason.clone(),
                    map_write_us: logged.map_write.map(|took| took.as_secs_f64() * 1e6),
                }
            })
            .collect()
    }

    /// Refreshes what `/metrics` serves.
    pub(super) fn publish(&mut self) {
        let mut rejected = redirector_proto::heartbeat::Counters::default();
        for c in self.heartbeat_counters.iter().flatten() {
            rejected.add(c);
        }
        let snapshot = metrics::Snapshot {
            status: self.status(),
            switches: self
                .config
                .services
                .iter()
                .zip(&self.switches)
                .map(|(s, n)| (s.name.clone(), *n))
                .collect(),
            last_map_write_seconds: self.last_map_write.map(|took| took.as_secs_f64()),
            heartbeat_rejections: rejected,
        };
        *self.snapshot.lock().unwrap_or_else(|e| e.into_inner()) = snapshot;
    }
}
