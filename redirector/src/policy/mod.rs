//! Policies: which regions take a service's new flows, and in what shares,
//! given the regions' health and load, their priorities and weights, and the
//! operator's overrides. Established flows never move on a decision: the
//! data plane keeps each on its region until the region goes down.
//!
//! Pure: the controller feeds load samples to [`Policy::observe_load`],
//! calls [`Policy::evaluate`] after every health change, load sample,
//! operator command, and at [`Policy::next_deadline`], and writes the data
//! plane when a decision says `changed`.
//!
//! Files: the evaluation and its bookkeeping here; `failover.rs` the rules
//! by priority, failback and the operator's override; `balance.rs` the
//! weighted and spill policies and saturation; `operator.rs` the commands
//! (`set-active`, `weight`); `event.rs` what they report.
//!
//! `policy = "failover"`, per service:
//! - A region is eligible when Up and not drained. The eligible region of
//!   highest priority takes new flows; among equals, the one listed first in
//!   the service's `regions`.
//! - Nothing is decided while a region of the service is still Pending (the
//!   daemon just started), unless the active region is known to be down or
//!   drained: the data plane keeps what it had, so a restart never flaps.
//! - Failover, off a region that went down or was drained, is immediate.
//! - Failback (`preempt`): a region of higher priority than the active one
//!   takes over once it has been eligible for `preempt_delay`. With
//!   `preempt = false` the active region keeps new flows while eligible.
//! - Flap limit: a service's new flows change region at most
//!   `max_switches_per_minute` times in any 60 s. Only elective switches
//!   (away from a region still eligible) wait for the window; a switch off a
//!   region that cannot take flows is never held back, but it counts.
//!   Operator commands neither wait nor count, nor does taking a region
//!   when none was selected (start, or after `all_down = "drop"`).
//! - No eligible region: `keep-last` keeps steering to the last active one
//!   (if the checks are what failed, traffic still flows); `drop` selects
//!   nowhere, and the data plane drops new flows and counts them.
//! - `set-active REGION` pins new flows to REGION at once. If REGION goes
//!   down or is drained the override is suspended and the rules above pick
//!   a region; when REGION is eligible again the override resumes as a
//!   failback does (after `preempt_delay`, within the flap limit, whatever
//!   `preempt` says). `set-active --auto` hands the service back to the
//!   rules, which apply at once: with `preempt` the best region takes over
//!   if it has been eligible long enough.
//!
//! The load policies share the waiting, the overrides and `all_down`:
//! - `weighted`: new flows spread over the eligible regions by weight (a
//!   Maglev table, see [`crate::maglev`]). Weight 0 is a backup: backups
//!   share new flows equally when no region of positive weight is eligible.
//! - `pps`, `flows`, `cpu`: the eligible region of highest priority that is
//!   not saturated on that measure takes new flows; while it is saturated
//!   they spill to the next. When every eligible region is saturated they
//!   spread by weight. A region becomes saturated above its `high`
//!   watermark and stops below its `low`; either verdict holds at least the
//!   `[balance]` dwell time, so load that hovers at a watermark cannot make
//!   new flows oscillate.
//! - These rebalance on every change, bounded by the dwell time rather than
//!   the flap limit, which only holds back failover's elective switches.

use std::{collections::VecDeque, time::Duration};

use crate::{
    config::{
        BalanceSettings, Config, FailoverSettings, PolicyKind, RegionConfig, ServiceConfig,
        SWITCH_WINDOW,
    },
    health::{Health, RegionCondition},
};

mod balance;
mod event;
mod failover;
mod operator;
#[cfg(test)]
mod tests;

pub use balance::Load;
pub use event::{Event, EventKind, Subject};
pub use operator::PolicyError;
use balance::Saturation;

const WAITING: &str = "waiting for a health verdict on every region";
const DROPPING: &str = "no eligible region: new flows are dropped";

/// Regions with weights, by region id; as a decision's share, the regions
/// taking new flows (empty: nowhere).
pub type Share = Vec<(u8, u32)>;

/// What the data plane should select for one service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub service: u32,
    /// The regions taking new flows and their weights.
    pub share: Share,
    /// The service's live weights over all its regions: the base of its
    /// table, so that a region leaving or joining `share` moves only its
    /// own slots (see [`crate::maglev::selection`]).
    pub weights: Share,
    /// `share` differs from the previous decision, or `weights` do and
    /// several regions share new flows.
    pub changed: bool,
}

#[cfg(test)]
impl Decision {
    /// The one region taking every new flow, if it is one.
    pub fn single(&self) -> Option<u8> {
        single(&self.share)
    }
}

fn single(share: &Share) -> Option<u8> {
    match share.as_slice() {
        [(region, _)] => Some(*region),
        _ => None,
    }
}

fn one(region: u8) -> Share {
    vec![(region, 1)]
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Evaluation {
    /// One per service, in service id order.
    pub decisions: Vec<Decision>,
    pub events: Vec<Event>,
}

/// A service's policy as `redirectorctl status` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSnapshot {
    pub policy: PolicyKind,
    /// The regions taking new flows, with their weights.
    pub share: Share,
    /// Live weights of every region of the service.
    pub weights: Share,
    /// The region of the operator's `set-active`.
    pub set_active: Option<u8>,
    /// Why the policy is not where its rules alone would put it, or what it
    /// waits for: "override suspended: region1 down", ...
    pub note: Option<String>,
}

pub struct Policy {
    settings: FailoverSettings,
    balance: BalanceSettings,
    regions: Vec<RegionInfo>,
    services: Vec<ServiceState>,
}

struct RegionInfo {
    config: RegionConfig,
    /// By measure, in the order of [`Measure::ALL`].
    saturation: [Saturation; 3],
}

struct ServiceState {
    /// `regions`: ids in the order of preference among equals.
    config: ServiceConfig,
    /// Parallel to `config.regions`; the operator's `weight` changes them.
    weights: Vec<u32>,
    /// The weights the last decision was made with: a table over several
    /// regions is rewritten when they change.
    decided_weights: Share,
    active: Share,
    /// The operator's `set-active`.
    set_active: Option<Override>,
    /// Times of the switches that count for the flap limit, oldest first,
    /// none older than `SWITCH_WINDOW`.
    switches: VecDeque<Duration>,
    note: Option<String>,
    /// When the policy wants to be asked again without any other change.
    wake: Option<Duration>,
}

/// `set-active REGION`: new flows go to REGION whatever the rules say.
#[derive(Clone, Copy)]
struct Override {
    region: u8,
    /// The region cannot take flows; the rules decide meanwhile.
    suspended: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Urgency {
    /// Off a region that cannot take new flows: never held back.
    Forced,
    /// The operator's own command: neither held back nor counted.
    Operator,
    /// Off a region still eligible: waits for the flap limit.
    Elective,
    /// A load policy rebalancing: bounded by the dwell time, not counted.
    Balance,
}

enum Step {
    Keep {
        note: Option<String>,
        wake: Option<Duration>,
    },
    Switch {
        to: Share,
        reason: String,
        urgency: Urgency,
        /// What still holds once switched.
        note: Option<String>,
    },
}

impl Step {
    fn keep(note: Option<String>) -> Step {
        Step::Keep { note, wake: None }
    }

    fn forced(to: u8, reason: String) -> Step {
        Step::Switch {
            to: one(to),
            reason,
            urgency: Urgency::Forced,
            note: None,
        }
    }

    /// `note` replaces whatever the step would note.
    fn noting(self, note: String) -> Step {
        match self {
            Step::Keep { wake, .. } => Step::Keep {
                note: Some(note),
                wake,
            },
            Step::Switch {
                to,
                reason,
                urgency,
                ..
            } => Step::Switch {
                to,
                reason,
                urgency,
                note: Some(note),
            },
        }
    }
}

/// What one evaluation looks at.
struct Ctx<'a> {
    now: Duration,
    settings: &'a FailoverSettings,
    regions: &'a [RegionInfo],
    conditions: &'a [RegionCondition],
}

impl Ctx<'_> {
    fn condition(&self, region: u8) -> RegionCondition {
        self.conditions[region as usize]
    }

    fn name(&self, region: u8) -> &str {
        &self.regions[region as usize].config.name
    }

    /// "none", "region1", or "region1=3,region2=1".
    fn label(&self, share: &Share) -> String {
        match share.as_slice() {
            [] => "none".to_string(),
            [(region, _)] => self.name(*region).to_string(),
            many => many
                .iter()
                .map(|(r, w)| format!("{}={w}", self.name(*r)))
                .collect::<Vec<_>>()
                .join(","),
        }
    }

    fn priority(&self, region: u8) -> u32 {
        self.regions[region as usize].config.priority
    }

    /// Why a region takes no new flows: its status ("down", "pending",
    /// "draining"), or "eligible" when it does.
    fn unavailability(&self, region: u8) -> &'static str {
        let condition = self.condition(region);
        if condition.eligible() {
            "eligible"
        } else {
            condition.status().name()
        }
    }
}

impl Policy {
    /// Every service starts selecting nowhere; see [`Policy::adopt`].
    pub fn new(config: &Config) -> Self {
        Policy {
            settings: config.failover,
            balance: config.balance,
            regions: config
                .regions
                .iter()
                .map(|r| RegionInfo {
                    config: r.clone(),
                    saturation: Default::default(),
                })
                .collect(),
            services: config
                .services
                .iter()
                .map(|s| ServiceState {
                    config: s.clone(),
                    weights: s.weights.clone(),
                    decided_weights: Vec::new(),
                    active: Share::new(),
                    set_active: None,
                    switches: VecDeque::new(),
                    note: None,
                    wake: None,
                })
                .collect(),
        }
    }

    /// Takes over what the data plane already selects for `service` (after
    /// a restart), so the first decisions start from it. A region the
    /// service no longer lists is not adopted: the policy will write.
    pub fn adopt(&mut self, service: u32, region: Option<u8>) {
        if let Some(s) = self.services.get_mut(service as usize) {
            s.active = region
                .filter(|r| s.config.regions.contains(r))
                .map_or_else(Share::new, one);
        }
    }

    /// `regions` is indexed by region id and covers every region.
    pub fn evaluate(&mut self, now: Duration, conditions: &[RegionCondition]) -> Evaluation {
        assert_eq!(conditions.len(), self.regions.len(), "one condition per region");
        let ctx = Ctx {
            now,
            settings: &self.settings,
            regions: &self.regions,
            conditions,
        };
        let mut evaluation = Evaluation::default();
        for (id, service) in self.services.iter_mut().enumerate() {
            service.forget_old_switches(now);
            let step = service.choose(&ctx);
            let (decision, events) = service.apply(id as u32, step, &ctx);
            evaluation.decisions.push(decision);
            evaluation.events.extend(events);
        }
        evaluation
    }

    /// When [`Policy::evaluate`] should run again even if nothing else
    /// happens: a preempt delay or a flap-limit window ends then.
    pub fn next_deadline(&self) -> Option<Duration> {
        self.services.iter().filter_map(|s| s.wake).min()
    }

    /// Each service's policy state, in service id order.
    pub fn snapshot(&self) -> Vec<ServiceSnapshot> {
        self.services
            .iter()
            .map(|s| ServiceSnapshot {
                policy: s.config.policy,
                share: s.active.clone(),
                weights: s.live_weights(),
                set_active: s.set_active.map(|o| o.region),
                note: s.note.clone(),
            })
            .collect()
    }
}

impl ServiceState {
    fn forget_old_switches(&mut self, now: Duration) {
        let Some(cutoff) = now.checked_sub(SWITCH_WINDOW) else {
            return;
        };
        while self.switches.front().is_some_and(|&t| t <= cutoff) {
            self.switches.pop_front();
        }
    }

    /// The service's live weights, by region id.
    fn live_weights(&self) -> Share {
        let mut weights: Share = self.config.regions.iter().copied().zip(self.weights.iter().copied()).collect();
        weights.sort_unstable();
        weights
    }

    fn choose(&self, ctx: &Ctx) -> Step {
        let active_ok = !self.active.is_empty() && self.active.iter().all(|&(r, _)| ctx.condition(r).eligible());
        let must_leave = self.active.iter().any(|&(r, _)| {
            let c = ctx.condition(r);
            !c.eligible() && c.health != Health::Pending
        });
        if !must_leave
            && self
                .config
                .regions
                .iter()
                .any(|&r| ctx.condition(r).health == Health::Pending)
        {
            return Step::keep(Some(WAITING.into()));
        }
        match self.set_active {
            Some(o) if ctx.condition(o.region).eligible() => self.follow_override(ctx, o, active_ok),
            Some(o) => self.rules(ctx, active_ok).noting(format!(
                "override suspended: {} {}",
                ctx.name(o.region),
                ctx.unavailability(o.region)
            )),
            None => self.rules(ctx, active_ok),
        }
    }

    fn rules(&self, ctx: &Ctx, active_ok: bool) -> Step {
        match self.config.policy {
            PolicyKind::Failover => self.automatic(ctx, active_ok),
            PolicyKind::Weighted => self.rebalance(ctx, self.by_weight(ctx)),
            PolicyKind::Spill(measure) => self.rebalance(ctx, self.spill(ctx, measure)),
        }
    }

    fn apply(&mut self, id: u32, step: Step, ctx: &Ctx) -> (Decision, Vec<Event>) {
        let old = self.active.clone();
        let mut events: Vec<Event> = Vec::new();
        let (note, wake) = match step {
            Step::Keep { note, wake } => (note, wake),
            Step::Switch {
                to,
                reason,
                urgency,
                note,
            } => {
                // Taking a region when none was selected moves no flow
                // away from anywhere: it is no flap.
                let counted = matches!(urgency, Urgency::Forced | Urgency::Elective);
                if counted && !old.is_empty() {
                    self.switches.push_back(ctx.now);
                }
                self.active = to;
                events.push(self.event(ctx, EventKind::Switch, &old, reason));
                (note, None)
            }
        };
        if let Some(o) = &mut self.set_active {
            if single(&self.active) == Some(o.region) {
                o.suspended = false;
            } else if !ctx.condition(o.region).eligible() {
                o.suspended = true;
            }
        }
        let said = |n: &String| events.iter().any(|e| e.reason == *n);
        if let Some(new) = note
            .as_ref()
            .filter(|&n| self.note.as_ref() != Some(n) && !said(n))
        {
            events.push(self.event(ctx, EventKind::Service, &self.active, new.clone()));
        }
        self.note = note;
        self.wake = wake;
        let weights = self.live_weights();
        let reweighted = self.active.len() > 1 && weights != self.decided_weights;
        let decision = Decision {
            service: id,
            share: self.active.clone(),
            changed: self.active != old || reweighted,
            weights: weights.clone(),
        };
        self.decided_weights = weights;
        (decision, events)
    }

    fn event(&self, ctx: &Ctx, kind: EventKind, from: &Share, reason: String) -> Event {
        Event {
            at: ctx.now,
            kind,
            subject: Subject::Service(self.config.id),
            from: ctx.label(from),
            to: ctx.label(&self.active),
            reason,
        }
    }
}
