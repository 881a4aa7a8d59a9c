//! The load-balancing policies: `weighted` spreads new flows over the
//! eligible regions by weight; `pps`, `flows` and `cpu` fail over by
//! priority but spill past a region saturated on their measure. A region
//! becomes saturated above its high watermark and stops below its low,
//! each verdict held at least the dwell time.

use std::time::Duration;

use super::{one, Ctx, Event, EventKind, Policy, ServiceState, Share, Step, Subject, Urgency};
use crate::config::{Measure, Watermarks};

/// A region's load, as the controller samples it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Load {
    /// Client-to-region packets per second.
    pub pps: f64,
    /// Open flows pinned to the region in the data plane.
    pub flows: u64,
    /// From the agent's heartbeat; None until one reported.
    pub cpu_percent: Option<f64>,
}

impl Load {
    fn measure(&self, measure: Measure) -> Option<f64> {
        match measure {
            Measure::Pps => Some(self.pps),
            Measure::Flows => Some(self.flows as f64),
            Measure::Cpu => self.cpu_percent,
        }
    }
}

/// A region's verdict on one measure.
#[derive(Clone, Copy, Default)]
pub(super) struct Saturation {
    pub(super) saturated: bool,
    /// None: never changed, so the first verdict need not wait.
    since: Option<Duration>,
}

impl Ctx<'_> {
    fn saturated(&self, region: u8, measure: Measure) -> bool {
        let info = &self.regions[region as usize];
        Measure::ALL
            .iter()
            .position(|&m| m == measure)
            .is_some_and(|i| info.saturation[i].saturated)
    }
}

impl Policy {
    /// Takes a load sample (indexed by region id) and updates which
    /// regions are saturated; returns the changes as region events.
    pub fn observe_load(&mut self, now: Duration, loads: &[Load]) -> Vec<Event> {
        let dwell = self.balance.dwell;
        let mut events = Vec::new();
        for (region, load) in self.regions.iter_mut().zip(loads) {
            for (i, measure) in Measure::ALL.into_iter().enumerate() {
                let (Some(marks), Some(value)) = (region.config.watermarks(measure), load.measure(measure))
                else {
                    continue;
                };
                let state = &mut region.saturation[i];
                let flips = if state.saturated {
                    value < marks.low as f64
                } else {
                    value > marks.high as f64
                };
                if !flips || state.since.is_some_and(|t| now < t + dwell) {
                    continue;
                }
                state.saturated = !state.saturated;
                state.since = Some(now);
                events.push(saturation_event(now, region.config.id, measure, state.saturated, value, marks));
            }
        }
        events
    }

    /// The measures on which `region` is saturated now.
    pub fn saturated(&self, region: u8) -> Vec<Measure> {
        let Some(info) = self.regions.get(region as usize) else {
            return Vec::new();
        };
        Measure::ALL
            .iter()
            .zip(&info.saturation)
            .filter(|(_, s)| s.saturated)
            .map(|(&measure, _)| measure)
            .collect()
    }
}

fn saturation_event(
    now: Duration,
    region: u8,
    measure: Measure,
    saturated: bool,
    value: f64,
    marks: Watermarks,
) -> Event {
    let name = measure.name();
    let (from, to, reason) = if saturated {
        ("normal", "saturated", format!("{name} {value:.0} above its high watermark {}", marks.high))
    } else {
        ("saturated", "normal", format!("{name} {value:.0} below its low watermark {}", marks.low))
    };
    Event {
        at: now,
        kind: EventKind::Saturation,
        subject: Subject::Region(region),
        from: format!("{name} {from}"),
        to: format!("{name} {to}"),
        reason,
    }
}

impl ServiceState {
    /// `weighted`: the eligible regions of positive weight; or, when there
    /// is none, the eligible backups (weight 0) alike.
    pub(super) fn by_weight(&self, ctx: &Ctx) -> Option<(Share, String)> {
        let eligible: Share =
            self.live_weights().into_iter().filter(|&(r, _)| ctx.condition(r).eligible()).collect();
        let weighted: Share = eligible.iter().copied().filter(|&(_, w)| w > 0).collect();
        if !weighted.is_empty() {
            let reason = format!("weighted: new flows spread over {}", ctx.label(&weighted));
            return Some((weighted, reason));
        }
        let backups: Share = eligible.iter().map(|&(r, _)| (r, 1)).collect();
        let reason = format!(
            "weighted: no region of positive weight is eligible; the backups {} take new flows",
            ctx.label(&backups)
        );
        (!backups.is_empty()).then_some((backups, reason))
    }

    /// `pps`, `flows`, `cpu`: the preferred region not saturated on
    /// `measure`, or, when all are, every eligible region by weight.
    pub(super) fn spill(&self, ctx: &Ctx, measure: Measure) -> Option<(Share, String)> {
        let preference = self.by_preference(ctx);
        let (saturated, free): (Vec<u8>, Vec<u8>) =
            preference.iter().partition(|&&r| ctx.saturated(r, measure));
        let names = |regions: &[u8]| regions.iter().map(|&r| ctx.name(r)).collect::<Vec<_>>().join(", ");
        let measure = measure.name();
        if let Some(&first) = free.first() {
            let skipped: Vec<u8> = preference.iter().copied().take_while(|&r| r != first).collect();
            let reason = if skipped.is_empty() {
                format!("{measure}: {} takes new flows (not saturated)", ctx.name(first))
            } else {
                format!("{measure}: {} saturated: new flows spill to {}", names(&skipped), ctx.name(first))
            };
            return Some((one(first), reason));
        }
        if saturated.is_empty() {
            return None;
        }
        let spread: Share = self
            .live_weights()
            .into_iter()
            .filter(|(r, _)| saturated.contains(r))
            .map(|(r, w)| (r, w.max(1)))
            .collect();
        let reason = format!("{measure}: every eligible region saturated: new flows spread by weight");
        Some((spread, reason))
    }

    /// A load policy's choice, or `all_down` when it has none.
    pub(super) fn rebalance(&self, ctx: &Ctx, choice: Option<(Share, String)>) -> Step {
        match choice {
            None => self.all_down(ctx),
            Some((share, _)) if share == self.active => Step::keep(None),
            Some((share, reason)) => Step::Switch {
                to: share,
                reason,
                urgency: Urgency::Balance,
                note: None,
            },
        }
    }
}
