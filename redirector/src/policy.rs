//! Policies: which regions take a service's new flows, and in what shares,
//! given the regions' health and load, their priorities and weights, and the
//! operator's overrides. Established flows never move on a decision: the
//! data plane keeps each on its region until the region goes down.
//!
//! Pure: the daemon feeds load samples to [`Policy::observe_load`], calls
//! [`Policy::evaluate`] after every health change, load sample, operator
//! command, and at [`Policy::next_deadline`], and writes the data plane when
//! a decision says `changed`.
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

use std::{collections::VecDeque, fmt, time::Duration};

use crate::{
    config::{
        AllDown, BalanceSettings, Config, FailoverSettings, PolicyKind, RegionConfig,
        ServiceConfig, Watermarks, SWITCH_WINDOW,
    },
    health::{Health, RegionView, Transition},
};

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
    fn single(&self) -> Option<u8> {
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

/// A region's load, as the daemon samples it.
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
    fn measure(&self, kind: PolicyKind) -> Option<f64> {
        match kind {
            PolicyKind::Pps => Some(self.pps),
            PolicyKind::Flows => Some(self.flows as f64),
            PolicyKind::Cpu => self.cpu_percent,
            PolicyKind::Failover | PolicyKind::Weighted => None,
        }
    }
}

/// The load policies, which saturate on a measure.
const MEASURES: [PolicyKind; 3] = [PolicyKind::Pps, PolicyKind::Flows, PolicyKind::Cpu];

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Evaluation {
    /// One per service, in service id order.
    pub decisions: Vec<Decision>,
    pub events: Vec<Event>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subject {
    Region(String),
    Service(String),
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Region(name) => write!(f, "region {name}"),
            Subject::Service(name) => write!(f, "service {name}"),
        }
    }
}

/// For `redirectorctl events`. For a service, `from` and `to` are the
/// regions taking new flows ("none": nowhere), equal when the event is about
/// the policy's state rather than a switch; for a region, its state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub at: Duration,
    pub subject: Subject,
    pub from: String,
    pub to: String,
    pub reason: String,
}

impl Event {
    pub fn region(name: &str, transition: &Transition) -> Event {
        Event {
            at: transition.at,
            subject: Subject::Region(name.to_string()),
            from: transition.from.to_string(),
            to: transition.to.to_string(),
            reason: transition.reason.clone(),
        }
    }
}

/// The last `capacity` events, oldest first.
#[derive(Clone, Debug)]
pub struct EventLog {
    events: VecDeque<Event>,
    capacity: usize,
}

impl EventLog {
    pub fn new(capacity: usize) -> Self {
        EventLog {
            events: VecDeque::with_capacity(capacity),
            capacity,
        }
    }

    pub fn extend(&mut self, events: impl IntoIterator<Item = Event>) {
        for event in events {
            self.events.push_back(event);
            if self.events.len() > self.capacity {
                self.events.pop_front();
            }
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Event> {
        self.events.iter()
    }
}

/// A service as `redirectorctl status` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceStatus {
    pub name: String,
    pub policy: PolicyKind,
    /// The regions taking new flows, with their weights.
    pub share: Vec<(String, u32)>,
    /// Live weights of every region of the service.
    pub weights: Vec<(String, u32)>,
    /// The operator's `set-active` region.
    pub pinned: Option<String>,
    /// Why the policy is not where its rules alone would put it, or what it
    /// waits for: "override suspended: region1 down", ...
    pub note: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyError {
    UnknownRegion { name: String, known: Vec<String> },
    UnknownService { name: String, known: Vec<String> },
    NotServed { region: String, service: String },
    NoServiceIn { region: String },
    /// Weights mean nothing to a failover service.
    NotBalanced { service: String },
    NoBalancedServiceIn { region: String },
    Weights(String),
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyError::UnknownRegion { name, known } => {
                write!(f, "unknown region {name:?} (known: {})", known.join(", "))
            }
            PolicyError::UnknownService { name, known } => {
                write!(f, "unknown service {name:?} (known: {})", known.join(", "))
            }
            PolicyError::NotServed { region, service } => {
                write!(f, "service {service:?} is not served by region {region:?}")
            }
            PolicyError::NoServiceIn { region } => {
                write!(f, "no service is served by region {region:?}")
            }
            PolicyError::NotBalanced { service } => write!(
                f,
                "service {service:?} uses the failover policy: weights apply to weighted, pps, \
                 flows and cpu services"
            ),
            PolicyError::NoBalancedServiceIn { region } => write!(
                f,
                "region {region:?} serves no weighted, pps, flows or cpu service: weights would \
                 change nothing"
            ),
            PolicyError::Weights(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for PolicyError {}

pub struct Policy {
    settings: FailoverSettings,
    balance: BalanceSettings,
    regions: Vec<RegionInfo>,
    services: Vec<ServiceState>,
}

struct RegionInfo {
    config: RegionConfig,
    /// By measure, in the order of [`MEASURES`].
    saturation: [Saturation; 3],
}

#[derive(Clone, Copy, Default)]
struct Saturation {
    saturated: bool,
    /// None: never changed, so the first verdict need not wait.
    since: Option<Duration>,
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
    pin: Option<Pin>,
    /// Times of the switches that count for the flap limit, oldest first,
    /// none older than `SWITCH_WINDOW`.
    switches: VecDeque<Duration>,
    note: Option<String>,
    /// When the policy wants to be asked again without any other change.
    wake: Option<Duration>,
}

#[derive(Clone, Copy)]
struct Pin {
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
    views: &'a [RegionView],
}

impl Ctx<'_> {
    fn view(&self, region: u8) -> RegionView {
        self.views[region as usize]
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

    fn saturated(&self, region: u8, kind: PolicyKind) -> bool {
        let info = &self.regions[region as usize];
        MEASURES
            .iter()
            .position(|&m| m == kind)
            .is_some_and(|i| info.saturation[i].saturated)
    }

    /// Why a region takes no new flows.
    fn unavailability(&self, region: u8) -> &'static str {
        let view = self.view(region);
        match view.health {
            Health::Down => "down",
            Health::Pending => "pending",
            Health::Up if view.drained => "draining",
            Health::Up => "eligible",
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
                    pin: None,
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

    /// Takes a load sample (indexed by region id) and updates which
    /// regions are saturated; returns the changes as region events.
    pub fn observe_load(&mut self, now: Duration, loads: &[Load]) -> Vec<Event> {
        let dwell = self.balance.dwell;
        let mut events = Vec::new();
        for (region, load) in self.regions.iter_mut().zip(loads) {
            for (i, kind) in MEASURES.into_iter().enumerate() {
                let (Some(marks), Some(value)) = (region.config.watermarks(kind), load.measure(kind))
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
                events.push(saturation_event(now, &region.config.name, kind, state.saturated, value, marks));
            }
        }
        events
    }

    /// The measures on which `region` is saturated now.
    pub fn saturated(&self, region: u8) -> Vec<&'static str> {
        let Some(info) = self.regions.get(region as usize) else {
            return Vec::new();
        };
        MEASURES
            .iter()
            .zip(&info.saturation)
            .filter(|(_, s)| s.saturated)
            .map(|(kind, _)| kind.name())
            .collect()
    }

    /// `weight REGION N [--service NAME]`: every weighted or load-balanced
    /// service REGION serves when no service is named. All or nothing:
    /// weights that would leave a weighted service no region for new flows
    /// are refused, and nothing changes. Takes effect at the next
    /// evaluation.
    pub fn set_weight(
        &mut self,
        now: Duration,
        region: &str,
        weight: u32,
        service: Option<&str>,
    ) -> Result<Vec<Event>, PolicyError> {
        let id = self.region_id(region)?;
        let targets: Vec<usize> = match service {
            Some(name) => {
                let s = self.served_by(id, region, name)?;
                if self.services[s].config.policy == PolicyKind::Failover {
                    return Err(PolicyError::NotBalanced { service: name.to_string() });
                }
                vec![s]
            }
            None => (0..self.services.len())
                .filter(|&s| {
                    let config = &self.services[s].config;
                    config.policy != PolicyKind::Failover && config.regions.contains(&id)
                })
                .collect(),
        };
        if targets.is_empty() {
            return Err(PolicyError::NoBalancedServiceIn { region: region.to_string() });
        }
        let mut updated = Vec::new();
        for &s in &targets {
            let service = &self.services[s];
            let mut weights = service.weights.clone();
            let position = service.config.regions.iter().position(|&r| r == id).expect("served");
            weights[position] = weight;
            service.config.check_weights(&weights).map_err(PolicyError::Weights)?;
            updated.push((s, weights));
        }
        let reason = format!("weight {region} = {weight} (operator)");
        Ok(updated
            .into_iter()
            .map(|(s, weights)| {
                self.services[s].weights = weights;
                self.service_event(now, s, reason.clone())
            })
            .collect())
    }

    /// `regions` is indexed by region id and covers every region.
    pub fn evaluate(&mut self, now: Duration, regions: &[RegionView]) -> Evaluation {
        assert_eq!(regions.len(), self.regions.len(), "one view per region");
        let ctx = Ctx {
            now,
            settings: &self.settings,
            regions: &self.regions,
            views: regions,
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

    /// `set-active REGION [--service NAME]`: every service REGION serves
    /// when no service is named. Takes effect at the next evaluation.
    pub fn pin(
        &mut self,
        now: Duration,
        region: &str,
        service: Option<&str>,
    ) -> Result<Vec<Event>, PolicyError> {
        let id = self.region_id(region)?;
        let targets = match service {
            Some(name) => vec![self.served_by(id, region, name)?],
            None => {
                let served: Vec<usize> = (0..self.services.len())
                    .filter(|&s| self.services[s].config.regions.contains(&id))
                    .collect();
                if served.is_empty() {
                    return Err(PolicyError::NoServiceIn {
                        region: region.to_string(),
                    });
                }
                served
            }
        };
        let reason = format!("set-active {region}: new flows pinned by the operator");
        Ok(targets
            .into_iter()
            .map(|s| {
                self.services[s].pin = Some(Pin {
                    region: id,
                    suspended: false,
                });
                self.service_event(now, s, reason.clone())
            })
            .collect())
    }

    /// `set-active --auto [--service NAME]`: the rules decide again.
    pub fn unpin(
        &mut self,
        now: Duration,
        service: Option<&str>,
    ) -> Result<Vec<Event>, PolicyError> {
        let targets = match service {
            Some(name) => vec![self.service_index(name)?],
            None => (0..self.services.len()).collect(),
        };
        let unpinned: Vec<usize> = targets
            .into_iter()
            .filter(|&s| self.services[s].pin.take().is_some())
            .collect();
        Ok(unpinned
            .into_iter()
            .map(|s| {
                self.service_event(now, s, "set-active --auto: the policy decides again".into())
            })
            .collect())
    }

    pub fn status(&self) -> Vec<ServiceStatus> {
        let name = |r: u8| self.regions[r as usize].config.name.clone();
        let named = |share: &Share| share.iter().map(|&(r, w)| (name(r), w)).collect();
        self.services
            .iter()
            .map(|s| ServiceStatus {
                name: s.config.name.clone(),
                policy: s.config.policy,
                share: named(&s.active),
                weights: named(&s.live_weights()),
                pinned: s.pin.map(|p| name(p.region)),
                note: s.note.clone(),
            })
            .collect()
    }

    fn region_id(&self, name: &str) -> Result<u8, PolicyError> {
        self.regions
            .iter()
            .position(|r| r.config.name == name)
            .map(|i| i as u8)
            .ok_or_else(|| PolicyError::UnknownRegion {
                name: name.to_string(),
                known: self.regions.iter().map(|r| r.config.name.clone()).collect(),
            })
    }

    fn service_index(&self, name: &str) -> Result<usize, PolicyError> {
        self.services
            .iter()
            .position(|s| s.config.name == name)
            .ok_or_else(|| PolicyError::UnknownService {
                name: name.to_string(),
                known: self.services.iter().map(|s| s.config.name.clone()).collect(),
            })
    }

    /// The service `name`, which must list region `id`.
    fn served_by(&self, id: u8, region: &str, name: &str) -> Result<usize, PolicyError> {
        let s = self.service_index(name)?;
        if !self.services[s].config.regions.contains(&id) {
            return Err(PolicyError::NotServed {
                region: region.to_string(),
                service: name.to_string(),
            });
        }
        Ok(s)
    }

    /// An event about a service that does not move its new flows.
    fn service_event(&self, now: Duration, service: usize, reason: String) -> Event {
        let s = &self.services[service];
        let ctx = Ctx {
            now,
            settings: &self.settings,
            regions: &self.regions,
            views: &[],
        };
        let active = ctx.label(&s.active);
        Event {
            at: now,
            subject: Subject::Service(s.config.name.clone()),
            from: active.clone(),
            to: active,
            reason,
        }
    }
}

fn saturation_event(
    now: Duration,
    region: &str,
    kind: PolicyKind,
    saturated: bool,
    value: f64,
    marks: Watermarks,
) -> Event {
    let measure = kind.name();
    let (from, to, reason) = if saturated {
        ("normal", "saturated", format!("{measure} {value:.0} above its high watermark {}", marks.high))
    } else {
        ("saturated", "normal", format!("{measure} {value:.0} below its low watermark {}", marks.low))
    };
    Event {
        at: now,
        subject: Subject::Region(region.to_string()),
        from: format!("{measure} {from}"),
        to: format!("{measure} {to}"),
        reason,
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
        let active_ok = !self.active.is_empty() && self.active.iter().all(|&(r, _)| ctx.view(r).eligible());
        let must_leave = self.active.iter().any(|&(r, _)| {
            let v = ctx.view(r);
            !v.eligible() && v.health != Health::Pending
        });
        if !must_leave
            && self
                .config
                .regions
                .iter()
                .any(|&r| ctx.view(r).health == Health::Pending)
        {
            return Step::keep(Some(WAITING.into()));
        }
        match self.pin {
            Some(pin) if ctx.view(pin.region).eligible() => self.follow_pin(ctx, pin, active_ok),
            Some(pin) => self.rules(ctx, active_ok).noting(format!(
                "override suspended: {} {}",
                ctx.name(pin.region),
                ctx.unavailability(pin.region)
            )),
            None => self.rules(ctx, active_ok),
        }
    }

    fn rules(&self, ctx: &Ctx, active_ok: bool) -> Step {
        match self.config.policy {
            PolicyKind::Failover => self.automatic(ctx, active_ok),
            PolicyKind::Weighted => self.rebalance(ctx, self.by_weight(ctx)),
            measure => self.rebalance(ctx, self.spill(ctx, measure)),
        }
    }

    /// The pinned region is eligible.
    fn follow_pin(&self, ctx: &Ctx, pin: Pin, active_ok: bool) -> Step {
        let region = pin.region;
        if single(&self.active) == Some(region) {
            return Step::keep(None);
        }
        if !pin.suspended {
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

    fn automatic(&self, ctx: &Ctx, active_ok: bool) -> Step {
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
    fn best(&self, ctx: &Ctx) -> Option<u8> {
        self.by_preference(ctx).into_iter().next()
    }

    /// The eligible regions, highest priority first, in listed order among
    /// equals.
    fn by_preference(&self, ctx: &Ctx) -> Vec<u8> {
        let mut eligible: Vec<u8> =
            self.config.regions.iter().copied().filter(|&r| ctx.view(r).eligible()).collect();
        eligible.sort_by_key(|&r| std::cmp::Reverse(ctx.priority(r)));
        eligible
    }

    /// `weighted`: the eligible regions of positive weight; or, when there
    /// is none, the eligible backups (weight 0) alike.
    fn by_weight(&self, ctx: &Ctx) -> Option<(Share, String)> {
        let eligible: Share =
            self.live_weights().into_iter().filter(|&(r, _)| ctx.view(r).eligible()).collect();
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
    fn spill(&self, ctx: &Ctx, measure: PolicyKind) -> Option<(Share, String)> {
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
    fn rebalance(&self, ctx: &Ctx, choice: Option<(Share, String)>) -> Step {
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

    fn all_down(&self, ctx: &Ctx) -> Step {
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
    fn elective(&self, ctx: &Ctx, to: u8, reason: String) -> Step {
        let ready = ctx.view(to).since + ctx.settings.preempt_delay;
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
                events.push(self.event(ctx, &old, reason));
                (note, None)
            }
        };
        if let Some(pin) = &mut self.pin {
            if single(&self.active) == Some(pin.region) {
                pin.suspended = false;
            } else if !ctx.view(pin.region).eligible() {
                pin.suspended = true;
            }
        }
        let said = |n: &String| events.iter().any(|e| e.reason == *n);
        if let Some(new) = note
            .as_ref()
            .filter(|&n| self.note.as_ref() != Some(n) && !said(n))
        {
            events.push(self.event(ctx, &self.active, new.clone()));
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

    fn event(&self, ctx: &Ctx, from: &Share, reason: String) -> Event {
        Event {
            at: ctx.now,
            subject: Subject::Service(self.config.name.clone()),
            from: ctx.label(from),
            to: ctx.label(&self.active),
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const R1: u8 = 0;
    const R2: u8 = 1;
    const R3: u8 = 2;

    /// region1 (100), region2 (200), region3 (50); "web" is served by all
    /// three, "dns" by region1 and region3.
    fn config(failover: &str) -> Config {
        let mut text = format!("interfaces = [\"eth0\"]\n[failover]\n{failover}\n");
        for (i, priority) in [100, 200, 50].into_iter().enumerate() {
            let n = i + 1;
            text += &format!(
                "[[region]]\nname = \"region{n}\"\naddress = \"10.{n}.0.2\"\npriority = {priority}\n\
                 checks = [{{ kind = \"tcp\", address = \"10.{n}.0.2:80\" }}]\n"
            );
        }
        text += "[[service]]\nname = \"web\"\nvip = \"10.2.0.2\"\nport = 80\nprotocol = \"tcp\"\n\
                 regions = [\"region1\", \"region2\", \"region3\"]\n";
        text += "[[service]]\nname = \"dns\"\nvip = \"10.2.0.2\"\nport = 53\nprotocol = \"udp\"\n\
                 regions = [\"region1\", \"region3\"]\n";
        Config::parse(&text, "policy.toml").unwrap()
    }

    /// A policy and the regions' states on a simulated clock.
    struct Lab {
        policy: Policy,
        views: Vec<RegionView>,
        now: Duration,
        events: Vec<Event>,
    }

    impl Lab {
        fn new(failover: &str) -> Lab {
            let pending = RegionView {
                health: Health::Pending,
                drained: false,
                since: Duration::ZERO,
            };
            Lab {
                policy: Policy::new(&config(failover)),
                views: vec![pending; 3],
                now: Duration::ZERO,
                events: Vec::new(),
            }
        }

        /// Every region up, web on region2, at t = 1 s.
        fn settled(failover: &str) -> Lab {
            let mut lab = Lab::new(failover);
            lab.at_ms(1000);
            for r in [R1, R2, R3] {
                lab.set(r, Health::Up);
            }
            assert_eq!(lab.web(), (Some("region2"), true));
            lab.events.clear();
            lab
        }

        fn at_ms(&mut self, ms: u64) {
            self.now = Duration::from_millis(ms);
        }

        fn set(&mut self, region: u8, health: Health) {
            let view = &mut self.views[region as usize];
            if view.health != health {
                *view = RegionView {
                    health,
                    drained: view.drained,
                    since: self.now,
                };
            }
        }

        fn drain(&mut self, region: u8, drained: bool) {
            let view = &mut self.views[region as usize];
            view.drained = drained;
            view.since = self.now;
        }

        fn evaluate(&mut self) -> Vec<Decision> {
            let e = self.policy.evaluate(self.now, &self.views);
            self.events.extend(e.events);
            e.decisions
        }

        /// Evaluates; web's active region and whether it changed.
        fn web(&mut self) -> (Option<&'static str>, bool) {
            let d = &self.evaluate()[0];
            (
                d.single()
                    .map(|r| ["region1", "region2", "region3"][r as usize]),
                d.changed,
            )
        }

        fn note(&self) -> Option<String> {
            self.policy.status()[0].note.clone()
        }

        fn web_events(&self) -> impl DoubleEndedIterator<Item = &Event> {
            self.events
                .iter()
                .filter(|e| e.subject == Subject::Service("web".into()))
        }

        fn last_reason(&self) -> &str {
            &self.web_events().next_back().unwrap().reason
        }
    }

    #[test]
    fn nothing_is_decided_until_every_region_has_a_verdict() {
        let mut lab = Lab::new("");
        lab.set(R2, Health::Up);
        lab.set(R3, Health::Up);
        assert_eq!(lab.web(), (None, false));
        assert_eq!(lab.note().as_deref(), Some(WAITING));
        lab.at_ms(300);
        lab.set(R1, Health::Up);
        assert_eq!(lab.web(), (Some("region2"), true));
        assert_eq!(
            lab.last_reason(),
            "region2 is the eligible region of highest priority"
        );
        assert_eq!(lab.note(), None);
        assert_eq!(
            lab.web(),
            (Some("region2"), false),
            "no change, nothing to write"
        );
    }

    #[test]
    fn the_first_listed_wins_among_equal_priorities() {
        let mut lab = Lab::new("");
        lab.policy.regions[R3 as usize].config.priority = 100;
        for r in [R1, R2, R3] {
            lab.set(r, if r == R2 { Health::Down } else { Health::Up });
        }
        assert_eq!(lab.web(), (Some("region1"), true));
    }

    #[test]
    fn failover_is_immediate_and_failback_preempts() {
        let mut lab = Lab::settled("");
        lab.at_ms(2000);
        lab.set(R2, Health::Down);
        assert_eq!(lab.web(), (Some("region1"), true));
        let e = lab.web_events().next_back().unwrap();
        assert_eq!(
            (
                e.subject.to_string(),
                e.from.as_str(),
                e.to.as_str(),
                e.reason.as_str(),
                e.at
            ),
            (
                "service web".to_string(),
                "region2",
                "region1",
                "failover: region2 down",
                Duration::from_secs(2)
            )
        );
        lab.at_ms(3000);
        lab.set(R2, Health::Up);
        assert_eq!(lab.web(), (Some("region2"), true));
        assert_eq!(
            lab.last_reason(),
            "failback: region2 (priority 200) preempts region1 (priority 100)"
        );
    }

    #[test]
    fn failback_waits_for_the_preempt_delay_which_restarts_if_the_region_flaps() {
        let mut lab = Lab::settled("preempt_delay_ms = 2000");
        lab.at_ms(2000);
        lab.set(R2, Health::Down);
        assert_eq!(lab.web(), (Some("region1"), true));
        lab.at_ms(3000);
        lab.set(R2, Health::Up);
        assert_eq!(lab.web(), (Some("region1"), false));
        assert_eq!(
            lab.policy.next_deadline(),
            Some(Duration::from_millis(5000))
        );
        assert_eq!(
            lab.note().as_deref(),
            Some("region2 takes new flows once eligible for 2000 ms (preempt_delay_ms)")
        );
        lab.at_ms(4000);
        lab.set(R2, Health::Down);
        assert_eq!(lab.web(), (Some("region1"), false));
        assert_eq!(lab.policy.next_deadline(), None);
        lab.at_ms(4500);
        lab.set(R2, Health::Up);
        lab.at_ms(6499);
        assert_eq!(lab.web(), (Some("region1"), false));
        lab.at_ms(6500);
        assert_eq!(lab.web(), (Some("region2"), true));
    }

    #[test]
    fn without_preempt_the_active_region_keeps_new_flows_while_eligible() {
        let mut lab = Lab::settled("preempt = false");
        lab.at_ms(2000);
        lab.set(R2, Health::Down);
        assert_eq!(lab.web(), (Some("region1"), true));
        lab.at_ms(3000);
        lab.set(R2, Health::Up);
        assert_eq!(lab.web(), (Some("region1"), false));
        lab.at_ms(9000);
        assert_eq!(lab.web(), (Some("region1"), false));
        lab.set(R1, Health::Down);
        assert_eq!(
            lab.web(),
            (Some("region2"), true),
            "failover picks the best"
        );
    }

    #[test]
    fn the_flap_limit_defers_failback_but_never_failover() {
        let mut lab = Lab::settled("max_switches_per_minute = 2");
        lab.at_ms(10_000);
        lab.set(R2, Health::Down);
        assert_eq!(lab.web(), (Some("region1"), true));
        lab.at_ms(11_000);
        lab.set(R2, Health::Up);
        assert_eq!(lab.web(), (Some("region2"), true));
        lab.at_ms(12_000);
        lab.set(R2, Health::Down);
        assert_eq!(
            lab.web(),
            (Some("region1"), true),
            "a third switch, off a dead region"
        );
        lab.at_ms(13_000);
        lab.set(R2, Health::Up);
        assert_eq!(lab.web(), (Some("region1"), false));
        let deferred =
            "switch to region2 deferred: 3 switches in the last 60 s (max_switches_per_minute = 2)";
        assert_eq!(lab.note().as_deref(), Some(deferred));
        assert_eq!(lab.last_reason(), deferred);
        let events = lab.events.len();
        assert_eq!(lab.web(), (Some("region1"), false));
        assert_eq!(
            lab.events.len(),
            events,
            "a standing deferral is reported once"
        );
        // The switches at 10 s and 11 s leave the window at 70 s and 71 s.
        assert_eq!(lab.policy.next_deadline(), Some(Duration::from_secs(70)));
        lab.at_ms(70_000);
        assert_eq!(lab.web(), (Some("region1"), false));
        assert_eq!(lab.policy.next_deadline(), Some(Duration::from_secs(71)));
        lab.at_ms(71_000);
        assert_eq!(lab.web(), (Some("region2"), true));
        assert_eq!(lab.note(), None);
    }

    #[test]
    fn all_down_keep_last_keeps_steering_to_the_last_active_region() {
        let mut lab = Lab::settled("");
        lab.at_ms(2000);
        for r in [R1, R2, R3] {
            lab.set(r, Health::Down);
        }
        assert_eq!(lab.web(), (Some("region2"), false));
        assert_eq!(
            lab.last_reason(),
            "no eligible region: new flows stay on region2 (all_down = keep-last)"
        );
        lab.at_ms(3000);
        lab.set(R3, Health::Up);
        assert_eq!(lab.web(), (Some("region3"), true));
        assert_eq!(lab.last_reason(), "failover: region2 down");
    }

    #[test]
    fn all_down_drop_selects_nowhere_until_a_region_comes_back() {
        let mut lab = Lab::settled("all_down = \"drop\"");
        lab.at_ms(2000);
        for r in [R1, R2, R3] {
            lab.set(r, Health::Down);
        }
        assert_eq!(lab.web(), (None, true));
        let said: Vec<_> = lab
            .web_events()
            .map(|e| (e.from.as_str(), e.to.as_str(), e.reason.as_str()))
            .collect();
        assert_eq!(said, [("region2", "none", DROPPING)], "said once");
        assert_eq!(lab.web(), (None, false));
        assert_eq!(lab.note().as_deref(), Some(DROPPING));
        lab.at_ms(3000);
        lab.set(R1, Health::Up);
        assert_eq!(lab.web(), (Some("region1"), true));
    }

    #[test]
    fn drain_moves_new_flows_off_at_once_and_lifting_it_fails_back() {
        let mut lab = Lab::settled("preempt_delay_ms = 500");
        lab.at_ms(2000);
        lab.drain(R2, true);
        assert_eq!(lab.web(), (Some("region1"), true));
        assert_eq!(lab.last_reason(), "failover: region2 draining");
        lab.at_ms(3000);
        lab.drain(R2, false);
        assert_eq!(lab.web(), (Some("region1"), false));
        lab.at_ms(3500);
        assert_eq!(lab.web(), (Some("region2"), true));
    }

    #[test]
    fn set_active_pins_new_flows_at_once_and_auto_hands_back() {
        let mut lab = Lab::settled("preempt_delay_ms = 5000");
        lab.at_ms(2000);
        let events = lab.policy.pin(lab.now, "region3", Some("web")).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(
            events[0].reason,
            "set-active region3: new flows pinned by the operator"
        );
        assert_eq!(
            lab.web(),
            (Some("region3"), true),
            "no preempt delay for the operator"
        );
        assert_eq!(lab.last_reason(), "set-active region3 (operator)");
        assert_eq!(lab.policy.status()[0].pinned.as_deref(), Some("region3"));
        lab.at_ms(3000);
        lab.policy.pin(lab.now, "region1", Some("web")).unwrap();
        assert_eq!(lab.web(), (Some("region1"), true));

        lab.at_ms(4000);
        let events = lab.policy.unpin(lab.now, Some("web")).unwrap();
        assert_eq!(
            events[0].reason,
            "set-active --auto: the policy decides again"
        );
        assert_eq!(lab.policy.status()[0].pinned, None);
        assert_eq!(
            lab.web(),
            (Some("region1"), false),
            "region2 has been up 3 s of 5"
        );
        lab.at_ms(6000);
        assert_eq!(lab.web(), (Some("region2"), true));
    }

    #[test]
    fn operator_switches_are_neither_limited_nor_counted() {
        let mut lab = Lab::settled("max_switches_per_minute = 1");
        lab.at_ms(2000);
        lab.set(R2, Health::Down);
        assert_eq!(lab.web(), (Some("region1"), true));
        lab.at_ms(3000);
        lab.set(R2, Health::Up);
        assert_eq!(lab.web(), (Some("region1"), false), "failback deferred");
        lab.policy.pin(lab.now, "region2", Some("web")).unwrap();
        assert_eq!(lab.web(), (Some("region2"), true));
        lab.policy.pin(lab.now, "region3", Some("web")).unwrap();
        assert_eq!(lab.web(), (Some("region3"), true));
        lab.policy.unpin(lab.now, Some("web")).unwrap();
        assert_eq!(
            lab.web(),
            (Some("region3"), false),
            "the failover at 2 s still counts"
        );
        assert_eq!(lab.policy.next_deadline(), Some(Duration::from_secs(62)));
        lab.at_ms(62_000);
        assert_eq!(lab.web(), (Some("region2"), true));
    }

    #[test]
    fn a_pinned_region_going_down_suspends_the_override_until_it_is_back() {
        let mut lab = Lab::settled("preempt_delay_ms = 1000");
        lab.policy.pin(lab.now, "region3", Some("web")).unwrap();
        assert_eq!(lab.web(), (Some("region3"), true));
        lab.at_ms(2000);
        lab.set(R3, Health::Down);
        assert_eq!(lab.web(), (Some("region2"), true));
        let reasons: Vec<&str> = lab
            .web_events()
            .rev()
            .take(2)
            .map(|e| e.reason.as_str())
            .collect();
        assert_eq!(
            reasons,
            ["override suspended: region3 down", "failover: region3 down"]
        );
        let status = &lab.policy.status()[0];
        assert_eq!(status.pinned.as_deref(), Some("region3"));
        assert_eq!(
            status.note.as_deref(),
            Some("override suspended: region3 down")
        );

        lab.at_ms(3000);
        lab.set(R3, Health::Up);
        assert_eq!(
            lab.web(),
            (Some("region2"), false),
            "resuming waits like a failback"
        );
        lab.at_ms(4000);
        assert_eq!(lab.web(), (Some("region3"), true));
        assert_eq!(
            lab.last_reason(),
            "override resumed: region3 eligible again"
        );
        assert_eq!(lab.note(), None);
    }

    #[test]
    fn a_suspended_override_resumes_at_once_when_the_stand_in_dies() {
        let mut lab = Lab::settled("preempt_delay_ms = 1000");
        lab.policy.pin(lab.now, "region3", Some("web")).unwrap();
        lab.web();
        lab.at_ms(2000);
        lab.set(R3, Health::Down);
        assert_eq!(lab.web(), (Some("region2"), true));
        lab.at_ms(3000);
        lab.set(R3, Health::Up);
        lab.set(R2, Health::Down);
        assert_eq!(lab.web(), (Some("region3"), true));
    }

    #[test]
    fn set_active_without_a_service_pins_every_service_the_region_serves() {
        let mut lab = Lab::settled("");
        let events = lab.policy.pin(lab.now, "region2", None).unwrap();
        assert_eq!(events.len(), 1, "dns is not served by region2");
        let events = lab.policy.pin(lab.now, "region1", None).unwrap();
        assert_eq!(events.len(), 2);
        let d = lab.evaluate();
        assert_eq!((d[0].single(), d[1].single()), (Some(R1), Some(R1)));
        assert_eq!(lab.policy.unpin(lab.now, None).unwrap().len(), 2);
        assert!(
            lab.policy.unpin(lab.now, None).unwrap().is_empty(),
            "nothing left to unpin"
        );
        let d = lab.evaluate();
        assert_eq!((d[0].single(), d[1].single()), (Some(R2), Some(R1)));
    }

    #[test]
    fn set_active_refuses_what_does_not_exist() {
        let mut lab = Lab::settled("");
        let err = lab.policy.pin(lab.now, "region9", None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown region \"region9\" (known: region1, region2, region3)"
        );
        let err = lab
            .policy
            .pin(lab.now, "region1", Some("mail"))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown service \"mail\" (known: web, dns)"
        );
        let err = lab.policy.pin(lab.now, "region2", Some("dns")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "service \"dns\" is not served by region \"region2\""
        );
        assert_eq!(lab.policy.status()[1].pinned, None);
    }

    #[test]
    fn an_adopted_selection_survives_a_restart_without_a_write() {
        let mut lab = Lab::new("preempt = false");
        lab.policy.adopt(0, Some(R1));
        lab.policy.adopt(1, Some(R2));
        for r in [R1, R2] {
            lab.set(r, Health::Up);
        }
        assert_eq!(lab.web(), (Some("region1"), false), "region3 is pending");
        lab.set(R3, Health::Up);
        let d = lab.evaluate();
        assert_eq!((d[0].single(), d[0].changed), (Some(R1), false));
        assert_eq!(
            (d[1].single(), d[1].changed),
            (Some(R1), true),
            "region2 does not serve dns"
        );
    }

    #[test]
    fn a_dead_adopted_region_is_left_before_every_verdict_is_in() {
        let mut lab = Lab::new("");
        lab.policy.adopt(0, Some(R2));
        lab.set(R2, Health::Down);
        lab.set(R3, Health::Up);
        assert_eq!(lab.web(), (Some("region3"), true));
    }

    #[test]
    fn fed_by_health_it_fails_over_within_fall_intervals() {
        use crate::health::{Outcome, Probe, RegionHealth};
        let config = config("");
        let mut policy = Policy::new(&config);
        let mut regions: Vec<RegionHealth> = config
            .regions
            .iter()
            .map(|r| RegionHealth::new(r, Duration::ZERO))
            .collect();
        let mut web = Vec::new();
        for tick in 1..=6u32 {
            let at = tick * Duration::from_millis(100);
            for (id, region) in regions.iter_mut().enumerate() {
                let outcome = if id == R2 as usize && tick > 3 {
                    Outcome::Timeout
                } else {
                    Outcome::Success
                };
                let latency = Duration::from_millis(1);
                region.record(
                    0,
                    Probe {
                        at,
                        outcome,
                        latency,
                    },
                );
            }
            let views: Vec<RegionView> = regions.iter().map(RegionHealth::view).collect();
            let d = policy.evaluate(at, &views).decisions.remove(0);
            web.push((tick, d.single(), d.changed));
        }
        assert_eq!(
            web,
            [
                (1, None, false),
                (2, None, false),
                (3, Some(R2), true),
                (4, Some(R2), false),
                (5, Some(R2), false),
                (6, Some(R1), true),
            ]
        );
    }

    #[test]
    fn region_events_show_health_and_drain() {
        let t = Transition {
            at: Duration::from_secs(5),
            from: RegionView {
                health: Health::Up,
                drained: true,
                since: Duration::ZERO,
            },
            to: RegionView {
                health: Health::Down,
                drained: true,
                since: Duration::from_secs(5),
            },
            reason: "tcp 10.1.0.2:80: 3 misses in a row, last: timeout".into(),
        };
        let e = Event::region("region1", &t);
        assert_eq!(e.subject.to_string(), "region region1");
        assert_eq!(
            (e.from.as_str(), e.to.as_str()),
            ("up, draining", "down, draining")
        );
        assert_eq!(e.at, Duration::from_secs(5));
    }

    /// "web" by `policy` over region1 (100), region2 (200), region3 (50),
    /// each region with `extra` keys; dwell 1 s.
    fn balanced(policy: &str, extra: [&str; 3]) -> Lab {
        let mut text = "interfaces = [\"eth0\"]\n[balance]\ndwell_ms = 1000\n".to_string();
        for (i, priority) in [100, 200, 50].into_iter().enumerate() {
            let n = i + 1;
            text += &format!(
                "[[region]]\nname = \"region{n}\"\naddress = \"10.{n}.0.2\"\npriority = {priority}\n{}\n\
                 checks = [{{ kind = \"heartbeat\", address = \"10.{n}.0.2:7946\" }}]\n",
                extra[i]
            );
        }
        text += &format!(
            "[[service]]\nname = \"web\"\nvip = \"10.2.0.2\"\nport = 80\nprotocol = \"tcp\"\n\
             policy = \"{policy}\"\nregions = [\"region1\", \"region2\", \"region3\"]\n"
        );
        let mut lab = Lab::new("");
        lab.policy = Policy::new(&Config::parse(&text, "balance.toml").unwrap());
        lab.at_ms(1000);
        for r in [R1, R2, R3] {
            lab.set(r, Health::Up);
        }
        lab
    }

    impl Lab {
        fn share(&mut self) -> Share {
            self.evaluate().remove(0).share
        }

        /// Samples `pps` per region at `ms`, then evaluates.
        fn pps_at(&mut self, ms: u64, pps: [f64; 3]) -> Share {
            self.at_ms(ms);
            let loads = pps.map(|pps| Load { pps, ..Load::default() });
            let events = self.policy.observe_load(self.now, &loads);
            self.events.extend(events);
            self.share()
        }
    }

    #[test]
    fn weighted_spreads_new_flows_over_the_eligible_by_weight() {
        let mut lab = balanced("weighted", ["weight = 1", "weight = 3", "weight = 0"]);
        assert_eq!(lab.share(), [(R1, 1), (R2, 3)]);
        assert_eq!(lab.last_reason(), "weighted: new flows spread over region1=1,region2=3");
        lab.set(R2, Health::Down);
        assert_eq!(lab.share(), [(R1, 1)], "a down region takes no new flows");
        lab.drain(R1, true);
        assert_eq!(lab.share(), [(R3, 1)], "only the backup (weight 0) is left");
        lab.drain(R1, false);
        lab.set(R2, Health::Up);
        assert_eq!(lab.share(), [(R1, 1), (R2, 3)]);
        let d = lab.evaluate().remove(0);
        assert!(!d.changed, "nothing changed, nothing to write");
        assert_eq!(d.weights, [(R1, 1), (R2, 3), (R3, 0)]);
    }

    #[test]
    fn an_operator_weight_rebalances_and_bad_weights_change_nothing() {
        let mut lab = balanced("weighted", ["weight = 1", "weight = 1", "weight = 0"]);
        assert_eq!(lab.share(), [(R1, 1), (R2, 1)]);
        lab.policy.set_weight(lab.now, "region1", 4, None).unwrap();
        let d = lab.evaluate().remove(0);
        assert_eq!((d.share, d.changed), (vec![(R1, 4), (R2, 1)], true));
        assert_eq!(lab.last_reason(), "weighted: new flows spread over region1=4,region2=1");

        lab.policy.set_weight(lab.now, "region1", 0, Some("web")).unwrap();
        let err = lab.policy.set_weight(lab.now, "region2", 0, None).unwrap_err();
        assert!(err.to_string().contains("every weight of service \"web\""), "{err}");
        let err = lab.policy.set_weight(lab.now, "region9", 1, None).unwrap_err();
        assert_eq!(err.to_string(), "unknown region \"region9\" (known: region1, region2, region3)");
        assert_eq!(lab.share(), [(R2, 1)], "the refused weights changed nothing");
        assert_eq!(lab.policy.status()[0].weights[..2], [("region1".to_string(), 0), ("region2".to_string(), 1)]);
    }

    #[test]
    fn weights_of_a_failover_service_are_refused() {
        let mut lab = Lab::settled("");
        let err = lab.policy.set_weight(lab.now, "region1", 2, Some("web")).unwrap_err();
        assert!(matches!(err, PolicyError::NotBalanced { .. }), "{err}");
        let err = lab.policy.set_weight(lab.now, "region1", 2, None).unwrap_err();
        assert!(matches!(err, PolicyError::NoBalancedServiceIn { .. }), "{err}");
        assert_eq!(lab.web(), (Some("region2"), false));
    }

    #[test]
    fn pps_spills_past_the_high_watermark_and_returns_below_the_low_after_the_dwell() {
        let marks = "pps = { low = 500, high = 1000 }";
        let mut lab = balanced("pps", [marks, marks, marks]);
        assert_eq!(lab.pps_at(1000, [0.0, 900.0, 0.0]), [(R2, 1)], "region2 has the highest priority");
        assert_eq!(lab.pps_at(2000, [0.0, 1200.0, 0.0]), [(R1, 1)]);
        assert_eq!(lab.last_reason(), "pps: region2 saturated: new flows spill to region1");
        assert_eq!(lab.policy.saturated(R2), ["pps"]);
        // Between the watermarks: still saturated.
        assert_eq!(lab.pps_at(2500, [0.0, 700.0, 0.0]), [(R1, 1)]);
        // Below the low watermark, but within the dwell of the last change.
        assert_eq!(lab.pps_at(2800, [0.0, 100.0, 0.0]), [(R1, 1)]);
        assert_eq!(lab.pps_at(3000, [0.0, 100.0, 0.0]), [(R2, 1)]);
        assert_eq!(lab.last_reason(), "pps: region2 takes new flows (not saturated)");
        // Load hovering across the high watermark flips at most once a dwell.
        let mut moves = 0;
        for tick in 0..20 {
            let pps = if tick % 2 == 0 { 1100.0 } else { 400.0 };
            let before = lab.share();
            if lab.pps_at(3100 + tick * 100, [0.0, pps, 0.0]) != before {
                moves += 1;
            }
        }
        assert!(moves <= 2, "{moves} moves in 2 s with a 1 s dwell");
        let region_events: Vec<&Event> =
            lab.events.iter().filter(|e| e.subject == Subject::Region("region2".into())).collect();
        assert_eq!(region_events[0].to, "pps saturated");
        assert_eq!(region_events[0].reason, "pps 1200 above its high watermark 1000");
    }

    #[test]
    fn when_every_region_is_saturated_new_flows_spread_by_weight() {
        let marks = "pps = { low = 10, high = 20 }";
        let mut lab = balanced("pps", [&format!("{marks}\nweight = 2"), marks, ""]);
        assert_eq!(lab.pps_at(1000, [30.0, 30.0, 30.0]), [(R3, 1)], "region3 has no watermark");
        lab.set(R3, Health::Down);
        assert_eq!(lab.share(), [(R1, 2), (R2, 1)]);
        assert_eq!(lab.last_reason(), "pps: every eligible region saturated: new flows spread by weight");
    }

    #[test]
    fn cpu_without_a_report_is_not_saturated_and_flows_count_open_flows() {
        let mut lab = balanced("cpu", ["", "cpu = { low = 50, high = 80 }", ""]);
        let quiet = Load { cpu_percent: None, ..Load::default() };
        lab.policy.observe_load(lab.now, &[quiet; 3]);
        assert_eq!(lab.share(), [(R2, 1)]);
        let busy = Load { cpu_percent: Some(95.0), ..Load::default() };
        lab.policy.observe_load(lab.now, &[quiet, busy, quiet]);
        assert_eq!(lab.share(), [(R1, 1)]);

        let mut lab = balanced("flows", ["", "flows = { low = 800, high = 1000 }", ""]);
        let open = |flows| Load { flows, ..Load::default() };
        lab.policy.observe_load(lab.now, &[open(0), open(1001), open(0)]);
        assert_eq!(lab.share(), [(R1, 1)]);
    }

    #[test]
    fn set_active_overrides_a_load_policy_and_auto_hands_back() {
        let mut lab = balanced("weighted", ["", "", ""]);
        assert_eq!(lab.share(), [(R1, 1), (R2, 1), (R3, 1)]);
        lab.policy.pin(lab.now, "region3", None).unwrap();
        assert_eq!(lab.share(), [(R3, 1)]);
        lab.policy.unpin(lab.now, None).unwrap();
        assert_eq!(lab.share(), [(R1, 1), (R2, 1), (R3, 1)]);
    }

    #[test]
    fn the_event_log_keeps_the_newest() {
        let mut log = EventLog::new(2);
        let event = |n: u64| Event {
            at: Duration::from_secs(n),
            subject: Subject::Service("web".into()),
            from: "none".into(),
            to: "none".into(),
            reason: String::new(),
        };
        log.extend((1..=3).map(event));
        let kept: Vec<u64> = log.iter().map(|e| e.at.as_secs()).collect();
        assert_eq!(kept, [2, 3]);
        let mut none = EventLog::new(0);
        none.extend((1..=3).map(event));
        assert_eq!(none.iter().count(), 0);
    }
}
