//! Failover by priority: the eligible region of highest priority takes new
//! flows, failback waits for the preempt delay and the flap limit, the
//! operator's `set-active` overrides both, and `all_down` says what happens
//! when no region is eligible.

use super::{one, single, Ctx, Override, ServiceState, Share, Step, Urgency, DROPPING};
use crate::config::{AllDown, SWITCH_WINDOW};

impl ServiceState {
    /// The override's region is eligible.
    pub(super) fn follow_override(&self, ctx: &Ctx, set_active: Override, active_ok: bool) -> Step {
        let region = set_active.region;
        if single(&self.active) == Some(region) {
            return Step::keep(None);
        }
        if !set_active.suspended {
            return Step::Switch {
                to: one(region),
                reason: format!("set-active {} (operator)", ctx.name(region)),
                urgency: Urgency::Operator,
                note: None,
            };
        }
        let reason = format!("override resumed: {} eligible again", ctx.name(region));
        if active_ok {
            self.elective(ctx, region, reason)
        } else {
            Step::forced(region, reason)
        }
    }

    pub(super) fn automatic(&self, ctx: &Ctx, active_ok: bool) -> Step {
        let Some(best) = self.best(ctx) else {
            return self.all_down(ctx);
        };
        match single(&self.active) {
            Some(active) if active_ok => {
                if ctx.settings.preempt && ctx.priority(best) > ctx.priority(active) {
                    let reason = format!(
                        "failback: {} (priority {}) preempts {} (priority {})",
                        ctx.name(best),
                        ctx.priority(best),
                        ctx.name(active),
                        ctx.priority(active)
                    );
                    self.elective(ctx, best, reason)
                } else {
                    Step::keep(None)
                }
            }
            Some(active) => Step::forced(
                best,
                format!(
                    "failover: {} {}",
                    ctx.name(active),
                    ctx.unavailability(active)
                ),
            ),
            None => Step::forced(
                best,
                format!(
                    "{} is the eligible region of highest priority",
                    ctx.name(best)
                ),
            ),
        }
    }

    /// Highest priority among the eligible; the first listed among equals.
    pub(super) fn best(&self, ctx: &Ctx) -> Option<u8> {
        self.by_preference(ctx).into_iter().next()
    }

    /// The eligible regions, highest priority first, in listed order among
    /// equals.
    pub(super) fn by_preference(&self, ctx: &Ctx) -> Vec<u8> {
        let mut eligible: Vec<u8> =
            self.config.regions.iter().copied().filter(|&r| ctx.condition(r).eligible()).collect();
        eligible.sort_by_key(|&r| std::cmp::Reverse(ctx.priority(r)));
        eligible
    }

    pub(super) fn all_down(&self, ctx: &Ctx) -> Step {
        match (ctx.settings.all_down, self.active.is_empty()) {
            (AllDown::KeepLast, false) => Step::keep(Some(format!(
                "no eligible region: new flows stay on {} (all_down = keep-last)",
                ctx.label(&self.active)
            ))),
            (AllDown::Drop, false) => Step::Switch {
                to: Share::new(),
                reason: DROPPING.into(),
                urgency: Urgency::Forced,
                note: Some(DROPPING.into()),
            },
            (_, true) => Step::keep(Some(DROPPING.into())),
        }
    }

    /// A switch away from a region that could keep the flows: after the
    /// preempt delay, within the flap limit.
    pub(super) fn elective(&self, ctx: &Ctx, to: u8, reason: String) -> Step {
        let ready = ctx.condition(to).since + ctx.settings.preempt_delay;
        if ctx.now < ready {
            return Step::Keep {
                note: Some(format!(
                    "{} takes new flows once eligible for {} ms (preempt_delay_ms)",
                    ctx.name(to),
                    ctx.settings.preempt_delay.as_millis()
                )),
                wake: Some(ready),
            };
        }
        let limit = ctx.settings.max_switches_per_minute;
        if let Some(&oldest) = self
            .switches
            .front()
            .filter(|_| self.switches.len() >= limit as usize)
        {
            return Step::Keep {
                note: Some(format!(
                    "switch to {} deferred: {} switches in the last {} s (max_switches_per_minute = {limit})",
                    ctx.name(to),
                    self.switches.len(),
                    SWITCH_WINDOW.as_secs()
                )),
                wake: Some(oldest + SWITCH_WINDOW),
            };
        }
        Step::Switch {
            to: one(to),
            reason,
            urgency: Urgency::Elective,
            note: None,
        }
    }
}
