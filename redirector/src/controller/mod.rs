//! The controller: health → policy → data plane. It owns every piece of
//! state and is the only writer of the data plane, which it reaches
//! through the [`Dataplane`] trait; it reads time from a [`Clock`]. No
//! sockets, timers or files here: the daemon feeds it inputs (probe
//! results, load samples, operator commands, a reloaded config) and asks
//! when it wants to be woken, so tests drive it on a simulated clock
//! against a fake data plane and check what was written, in which order.
//!
//! The order of writes, the invariants the data plane relies on:
//! - a new or re-keyed service selects nowhere until its first decision
//!   (`set_services`), and every decision that changes what a service's new
//!   flows take rewrites its table, unless the table is already live;
//! - a service's table flips at most once per
//!   [`BANK_REUSE_GRACE`](crate::dataplane::BANK_REUSE_GRACE): a flip
//!   decided sooner waits (it is not slept on) and the latest table wins;
//!   a write that fails is tried again;
//! - single-region tables (failover) are written before the Maglev tables
//!   of weighted services decided with them, and logging waits for both;
//! - a region is written down only once no live table of a service whose
//!   next table waits still selects it, so flows re-steered off it find
//!   the new table; up and draining are written at once (down is the
//!   checks' verdict or the operator's hold, `redirectorctl down`);
//! - nothing is written for a region while it is pending after a start:
//!   the data plane keeps its last state, and a restart moves no flow.

use std::{collections::VecDeque, time::Duration};

use anyhow::{bail, Result};
use redirector_common::{RegionState, NO_REGION};
use redirector_proto::{
    control::{Request, Response},
    heartbeat,
};
use tracing::{error, info};

use crate::{
    config::Config,
    dataplane::{check_services, flow_table::Sweep, service_specs, Dataplane, Selection, Stats},
    health::{Probe, RegionHealth, Transition},
    maglev, metrics,
    passive::{self, Detector},
    policy::{Decision, Event, EventKind, Load, Policy, Subject},
};

mod clock;
mod flips;
mod status;
#[cfg(test)]
mod tests;

pub use clock::{unix_ms, Clock, MonotonicClock};
use flips::{Flips, Pending};

/// Events kept for `redirectorctl events`.
const EVENT_LOG: usize = 1000;
/// A table whose write failed is tried again after this.
const RETRY: Duration = Duration::from_millis(100);

/// One probe of one check, as a checker reports it.
#[derive(Clone, Debug)]
pub struct ProbeReport {
    /// The checks' generation the checker was started for: results of
    /// checkers of a configuration since replaced are dropped.
    pub generation: u64,
    pub region: usize,
    pub check: usize,
    pub probe: Probe,
    /// Heartbeat checks: what the agent reported, and the verifier's
    /// counters of rejected replies.
    pub heartbeat: Option<HeartbeatNews>,
}

#[derive(Clone, Copy, Debug)]
pub struct HeartbeatNews {
    pub report: Option<heartbeat::Report>,
    pub counters: heartbeat::Counters,
}

/// What the last load samples said.
#[derive(Default)]
struct Traffic {
    at: Option<Duration>,
    packets: Vec<u64>,
    pps: Vec<f64>,
    active_flows: Vec<u64>,
    stats: Stats,
}

/// An event as `redirectorctl events` keeps it.
struct Logged {
    event: Event,
    /// Decision → map write, once the selection it decided is live.
    map_write: Option<Duration>,
}

/// A table the data plane took.
struct Written {
    service: u32,
    /// From the input that led to it.
    took: Duration,
    /// The event that announced it, if logged already.
    event: Option<u64>,
}

/// What the data plane holds, read back at a start or reload.
struct Live {
    selections: Vec<Selection>,
    regions: Vec<Option<RegionState>>,
}

pub struct Controller<D: Dataplane> {
    config: Config,
    dataplane: D,
    clock: Box<dyn Clock>,
    /// Wall-clock time of the clock's origin, for status and events.
    origin_unix_ms: u64,
    generation: u64,
    health: Vec<RegionHealth>,
    policy: Policy,
    /// What REGIONS holds, as far as this process knows.
    written: Vec<Option<RegionState>>,
    /// Each service's live table, by id.
    live: Vec<Selection>,
    flips: Flips,
    switches: Vec<u64>,
    last_map_write: Option<Duration>,
    traffic: Traffic,
    heartbeat_counters: Vec<Vec<heartbeat::Counters>>,
    agent_reports: Vec<Option<heartbeat::Report>>,
    /// With `[passive]`: the refusals each region's answers told of.
    passive: Option<Detector>,
    /// Newest last; `log_base` is the number of events dropped off its front.
    log: VecDeque<Logged>,
    log_base: u64,
    snapshot: metrics::Shared,
}

impl<D: Dataplane> Controller<D> {
    /// Takes over the data plane as it is: attaches to the interfaces (an
    /// interface already attached by an earlier process swaps programs
    /// atomically), writes the services, and adopts what each service
    /// selects now and each region's state, so the first decisions start
    /// from them.
    pub fn start(config: Config, mut dataplane: D, clock: Box<dyn Clock>, origin_unix_ms: u64) -> Result<Self> {
        check_services(&service_specs(&config))?;
        for interface in &config.interfaces {
            let mode = dataplane.attach(interface)?;
            info!("{interface}: XDP {mode:?}");
        }
        let live = write_services(&mut dataplane, &config)?;
        let now = clock.now();
        let mut controller = Controller {
            health: config.regions.iter().map(|r| RegionHealth::new(r, now)).collect(),
            policy: Policy::new(&config),
            written: Vec::new(),
            live: Vec::new(),
            flips: Flips::default(),
            switches: vec![0; config.services.len()],
            last_map_write: None,
            traffic: Traffic::default(),
            heartbeat_counters: checks_of(&config),
            agent_reports: vec![None; config.regions.len()],
            passive: config.passive.map(|settings| Detector::new(settings, config.regions.len())),
            log: VecDeque::new(),
            log_base: 0,
            snapshot: metrics::Shared::default(),
            generation: 0,
            config,
            dataplane,
            clock,
            origin_unix_ms,
        };
        controller.adopt(live);
        controller.publish();
        Ok(controller)
    }

    /// Starts the policy from what the data plane holds: a service whose
    /// table gives every slot to one region keeps it until the rules move it.
    fn adopt(&mut self, live: Live) {
        for (service, selection) in self.config.services.iter().zip(&live.selections) {
            if let Some(region) = selection.single() {
                self.policy.adopt(service.id, (region != NO_REGION).then_some(region));
            }
        }
        self.live = live.selections;
        self.written = live.regions;
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The generation checkers are started for; see [`ProbeReport`].
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// What `/metrics` serves, refreshed at every decision.
    pub fn metrics(&self) -> metrics::Shared {
        self.snapshot.clone()
    }

    pub fn on_probe(&mut self, report: ProbeReport) {
        if report.generation != self.generation {
            return;
        }
        let Some(region) = self.health.get_mut(report.region) else {
            return;
        };
        let trigger = report.probe.at;
        if let Some(news) = report.heartbeat {
            if let Some(agent) = news.report {
                self.agent_reports[report.region] = Some(agent);
            }
            if let Some(counters) = self.heartbeat_counters[report.region].get_mut(report.check) {
                *counters = news.counters;
            }
        }
        if let Some(transition) = region.record(report.check, report.probe) {
            let event = Event::region(report.region as u8, &transition);
            self.decide(trigger, vec![event]);
        }
    }

    /// A SYN the region refused with a reset (passive detection): enough of
    /// them take an up region down at once, as its checks failing would.
    pub fn on_region_signal(&mut self, signal: passive::Signal) {
        let Some(detector) = &mut self.passive else { return };
        let Some(count) = detector.signal(signal) else { return };
        let window = detector.settings().window;
        let Some(region) = self.health.get_mut(signal.region as usize) else { return };
        let why = format!("passive: {count} SYNs refused by a reset within {} ms", window.as_millis());
        if let Some(transition) = region.force_down(signal.at, why) {
            let event = Event::region(signal.region, &transition);
            self.decide(signal.at, vec![event]);
        }
    }

    /// When the controller wants [`Controller::on_deadline`] even if no
    /// input comes: a preempt delay or flap-limit window ends, or a table
    /// waits out the bank-reuse grace or a retry.
    pub fn next_deadline(&self) -> Option<Duration> {
        [self.policy.next_deadline(), self.flips.next_due()].into_iter().flatten().min()
    }

    /// Whether a decided table still waits for its write (the bank-reuse
    /// grace, or a retry): an operator's command is not live until none
    /// does.
    pub fn tables_pending(&self) -> bool {
        self.flips.waiting().next().is_some()
    }

    pub fn on_deadline(&mut self) {
        let now = self.clock.now();
        self.decide(now, Vec::new());
    }

    /// Runs the policy and writes what changed: selections first, then
    /// region states; then, the writes done, it logs and records `causes`
    /// (the events of the input that led here, which arrived at `trigger`)
    /// and the policy's own events.
    fn decide(&mut self, trigger: Duration, causes: Vec<Event>) {
        let now = self.clock.now();
        let conditions: Vec<_> = self.health.iter().map(RegionHealth::condition).collect();
        let evaluation = self.policy.evaluate(now, &conditions);
        // A single-region table is a fill, a weighted one a Maglev build
        // (~1.7 ms): each is written as soon as it is built, the cheap ones
        // first, so a failover does not wait behind a rebalance.
        let mut changed: Vec<&Decision> = evaluation.decisions.iter().filter(|d| d.changed).collect();
        changed.sort_by_key(|d| d.share.len() > 1);
        let mut written = Vec::new();
        for decision in changed {
            let selection = self.selection(decision);
            if self.live[decision.service as usize] == selection {
                continue;
            }
            let pending = Pending {
                addr: self.config.services[decision.service as usize].addr,
                selection,
                trigger,
                event: None,
                not_before: Duration::ZERO,
            };
            self.flips.decide(decision.service, pending);
            written.extend(self.write_due_tables(now));
        }
        // Tables decided earlier whose grace (or retry delay) is over.
        written.extend(self.write_due_tables(now));
        self.write_region_states();

        for w in &written {
            self.note_written(w);
        }
        for event in causes.into_iter().chain(evaluation.events) {
            let switched = match event.subject {
                Subject::Service(service) if event.kind == EventKind::Switch => Some(service),
                _ => None,
            };
            let seq = self.record(event);
            if let Some(service) = switched {
                match written.iter().find(|w| w.service == service) {
                    Some(w) => self.set_map_write(seq, w.took),
                    None => self.flips.announced(service, seq),
                }
            }
        }
        self.publish();
    }

    /// Flips the tables that may be written now. Nothing but the writes:
    /// their bookkeeping and logging come after (`note_written`).
    fn write_due_tables(&mut self, now: Duration) -> Vec<Written> {
        let mut written = Vec::new();
        for (service, mut pending) in self.flips.due(now) {
            match self.dataplane.set_selection(&pending.addr, &pending.selection) {
                Ok(()) => {
                    let at = self.clock.now();
                    self.flips.flipped(service, at);
                    written.push(Written { service, took: at.saturating_sub(pending.trigger), event: pending.event });
                    self.live[service as usize] = pending.selection;
                }
                Err(e) => {
                    let name = &self.config.services[service as usize].name;
                    error!("service {name}: writing the selection failed, trying again in {RETRY:?}: {e:#}");
                    pending.not_before = now + RETRY;
                    self.flips.decide(service, pending);
                }
            }
        }
        written
    }

    fn note_written(&mut self, w: &Written) {
        let shares = maglev::shares(self.live[w.service as usize].slots());
        let to: Vec<String> = shares
            .iter()
            .map(|&(r, pct)| format!("{} {pct:.1} %", self.config.regions[r as usize].name))
            .collect();
        info!(
            "service {}: new flows → {}; decision → map write {:.0} µs",
            self.config.services[w.service as usize].name,
            if to.is_empty() { "nowhere".to_string() } else { to.join(", ") },
            w.took.as_secs_f64() * 1e6
        );
        self.switches[w.service as usize] += 1;
        self.last_map_write = Some(w.took);
        if let Some(seq) = w.event {
            self.set_map_write(seq, w.took);
        }
    }

    /// The logged event `seq`, if still kept, gets its map write time.
    fn set_map_write(&mut self, seq: u64, took: Duration) {
        if let Some(logged) = seq.checked_sub(self.log_base).and_then(|i| self.log.get_mut(i as usize)) {
            logged.map_write = Some(took);
        }
    }

    /// The selection table of a decision.
    fn selection(&self, decision: &Decision) -> Selection {
        let entries = |share: &[(u8, u32)]| -> Vec<maglev::Entry> {
            share
                .iter()
                .map(|&(region, weight)| maglev::Entry {
                    region,
                    name: &self.config.regions[region as usize].name,
                    weight,
                })
                .collect()
        };
        let slots = maglev::selection(&entries(&decision.weights), &entries(&decision.share));
        Selection::from_slots(&slots).expect("maglev fills every slot with a known region")
    }

    /// Region states as health and drain say. Down waits while a service
    /// whose next table waits still selects the region in its live one.
    fn write_region_states(&mut self) {
        for (region, health) in self.config.regions.iter().zip(&self.health) {
            let Some(state) = health.condition().status().dataplane_state() else { continue };
            if self.written[region.id as usize] == Some(state) {
                continue;
            }
            let still_selected = || self.flips.waiting().any(|s| self.live[s as usize].slots().contains(&region.id));
            if state == RegionState::Down && still_selected() {
                continue;
            }
            match self.dataplane.set_region_state(region.id, state) {
                Ok(()) => self.written[region.id as usize] = Some(state),
                Err(e) => error!("region {}: writing its state failed: {e:#}", region.name),
            }
        }
    }

    /// Logs `event` and keeps it for `redirectorctl events`; returns its
    /// sequence number.
    fn record(&mut self, event: Event) -> u64 {
        info!("{}: {} → {} ({})", self.subject_name(event.subject), event.from, event.to, event.reason);
        self.log.push_back(Logged { event, map_write: None });
        if self.log.len() > EVENT_LOG {
            self.log.pop_front();
            self.log_base += 1;
        }
        self.log_base + self.log.len() as u64 - 1
    }

    /// "region region1", "service web".
    fn subject_name(&self, subject: Subject) -> String {
        match subject {
            Subject::Region(r) => format!("region {}", self.config.regions[r as usize].name),
            Subject::Service(s) => format!("service {}", self.config.services[s as usize].name),
        }
    }

    /// A load sample: counters and pps from the data plane, active flows
    /// from a sweep of its flow table (kept from the last one when the
    /// table could not be read); then the load policies see them.
    pub fn on_sample(&mut self, sweep: Option<Sweep>) {
        if let Some(sweep) = sweep {
            self.traffic.active_flows = sweep.active;
        }
        let stats = match self.dataplane.stats() {
            Ok(stats) => stats,
            Err(e) => return error!("reading counters: {e:#}"),
        };
        let now = self.clock.now();
        let packets: Vec<u64> = stats.regions.iter().map(|c| c.packets).collect();
        if let Some(at) = self.traffic.at {
            let dt = now.saturating_sub(at).as_secs_f64().max(1e-9);
            self.traffic.pps = packets
                .iter()
                .zip(&self.traffic.packets)
                .map(|(now, before)| now.saturating_sub(*before) as f64 / dt)
                .collect();
        }
        self.traffic.at = Some(now);
        self.traffic.packets = packets;
        self.traffic.stats = stats;
        let loads: Vec<Load> = (0..self.config.regions.len()).map(|r| self.load(r)).collect();
        let events = self.policy.observe_load(now, &loads);
        self.decide(now, events);
    }

    /// Region `r`'s load, as last sampled.
    fn load(&self, r: usize) -> Load {
        Load {
            pps: self.traffic.pps.get(r).copied().unwrap_or(0.0),
            flows: self.traffic.active_flows.get(r).copied().unwrap_or(0),
            cpu_percent: self.agent_reports[r].map(|a| a.cpu_permille as f64 / 10.0),
        }
    }

    /// An operator's request. `reload`, `detach` and `flows` involve the
    /// daemon's files and threads: it handles them ([`Controller::reload`],
    /// [`Controller::detach`], [`crate::flow_list`]), and they are refused
    /// here.
    pub fn handle(&mut self, request: Request) -> Response {
        let now = self.clock.now();
        let result = match request {
            Request::Status => return Response::Status(self.status()),
            Request::Events => return Response::Events { events: self.events() },
            Request::SetActive { region: Some(region), service } => self
                .policy
                .set_active(now, &region, service.as_deref())
                .map(|events| (format!("new flows go to {region}"), events)),
            Request::SetActive { region: None, service } => self
                .policy
                .set_auto(now, service.as_deref())
                .map(|events| ("new flows follow the policy again".to_string(), events)),
            Request::Weight { region, weight, service } => {
                self.policy.set_weight(now, &region, weight, service.as_deref()).map(|events| {
                    let services: Vec<String> = events.iter().map(|e| self.subject_name(e.subject)).collect();
                    (format!("weight of {region} = {weight} in {}", services.join(", ")), events)
                })
            }
            Request::Drain { region } => self.set_condition(&region, now, |h, now| h.set_drained(true, now)),
            Request::Undrain { region } => self.set_condition(&region, now, |h, now| h.set_drained(false, now)),
            Request::Down { region } => self.set_condition(&region, now, |h, now| h.set_held_down(true, now)),
            Request::Up { region } => self.set_condition(&region, now, |h, now| h.set_held_down(false, now)),
            Request::Reload | Request::Detach | Request::Flows { .. } => {
                return Response::Error { message: "reload, detach and flows are the daemon's".into() };
            }
        };
        match result {
            Ok((message, events)) => {
                self.decide(now, events);
                Response::Done { message }
            }
            Err(e) => Response::Error { message: e.to_string() },
        }
    }

    /// The operator's drain or hold on `region`, as `change` applies it.
    fn set_condition(
        &mut self,
        region: &str,
        now: Duration,
        change: impl FnOnce(&mut RegionHealth, Duration) -> Option<Transition>,
    ) -> Result<(String, Vec<Event>), crate::policy::PolicyError> {
        let id = self.policy.region_id(region)?;
        let health = &mut self.health[id as usize];
        Ok(match change(health, now) {
            Some(transition) => (format!("region {region}: {}", transition.to), vec![Event::region(id, &transition)]),
            None => (format!("region {region}: already {}", health.condition()), Vec::new()),
        })
    }

    /// Takes `config` in place of the running one. Everything that can be
    /// refused, and every data plane write that can fail, comes before any
    /// state changes: a reload refused leaves the controller as it was.
    /// Regions keep their health when their checks are unchanged, services
    /// their switch counts by name; the services are written and adopted as
    /// at a start, so a service whose address or id changed gets its table
    /// written. Returns a summary; the daemon restarts the checkers for the
    /// new [`Controller::generation`].
    pub fn reload(&mut self, config: Config) -> Result<String> {
        check_services(&service_specs(&config))?;
        for (old, new) in self.config.regions.iter().zip(&config.regions) {
            if old.name != new.name {
                bail!(
                    "region {} is now {:?} at the same position: regions are identified by their \
                     position (flows are pinned to it), so they can be appended, not reordered or \
                     removed, while redirectord runs",
                    old.name,
                    new.name
                );
            }
        }
        if config.regions.len() < self.config.regions.len() {
            bail!("regions can be appended, not removed, while redirectord runs");
        }
        if config.pin_path != self.config.pin_path || config.control_socket != self.config.control_socket {
            bail!("pin_path and control_socket take effect at start only");
        }
        if config.alerts != self.config.alerts {
            bail!("[alerts] takes effect at start only");
        }
        if config.sync != self.config.sync {
            bail!("[sync] takes effect at start only");
        }
        if config.passive != self.config.passive {
            bail!("[passive] takes effect at start only");
        }
        if config.flow_table_size != self.config.flow_table_size {
            bail!(
                "flow_table_size takes effect when the data plane is rebuilt (redirectorctl detach, \
                 then start; established flows are lost)"
            );
        }
        if config.xdp_mode != self.config.xdp_mode {
            bail!("xdp_mode takes effect when the data plane is rebuilt (redirectorctl detach, then start)");
        }
        for interface in &config.interfaces {
            self.dataplane.check_interface(interface)?;
        }
        for interface in config.interfaces.iter().filter(|i| !self.config.interfaces.contains(i)) {
            self.dataplane.attach(interface)?;
        }
        for interface in self.config.interfaces.iter().filter(|i| !config.interfaces.contains(i)) {
            self.dataplane.detach(interface)?;
        }
        let live = write_services(&mut self.dataplane, &config)?;
        // A service the data plane now holds anew (its id changed) takes
        // the table it had under its name, so it steers on while its
        // regions' verdicts come in, instead of dropping its new flows.
        let carried: Vec<Option<Selection>> = config
            .services
            .iter()
            .zip(&live.selections)
            .map(|(service, now_live)| {
                let old = self.config.services.iter().find(|o| o.name == service.name)?;
                let table = &self.live[old.id as usize];
                let regions_still_served = table.slots().iter().all(|&r| r == NO_REGION || service.regions.contains(&r));
                (now_live.single() == Some(NO_REGION) && regions_still_served && *table != *now_live)
                    .then(|| table.clone())
            })
            .collect();

        let now = self.clock.now();
        self.health = config
            .regions
            .iter()
            .enumerate()
            .map(|(i, region)| match self.config.regions.get(i) {
                Some(old) if old.checks == region.checks && old.health == region.health => self.health[i].clone(),
                // New checks start over; the operator's drain and hold stay.
                Some(_) => RegionHealth::new(region, now).with_operator_state(self.health[i].condition()),
                None => RegionHealth::new(region, now),
            })
            .collect();
        // Tables decided for the old services are moot: the new ones
        // start from what the data plane holds.
        self.flips.forget_pending();
        self.policy = Policy::new(&config);
        self.switches = config
            .services
            .iter()
            .map(|s| {
                let old = self.config.services.iter().position(|o| o.name == s.name);
                old.map_or(0, |i| self.switches[i])
            })
            .collect();
        self.agent_reports.resize(config.regions.len(), None);
        self.heartbeat_counters = checks_of(&config);
        // Appended regions are watched too (recent refusals start over).
        self.passive = config.passive.map(|settings| Detector::new(settings, config.regions.len()));
        self.generation += 1;
        self.config = config;
        self.adopt(live);
        for (service, table) in carried.into_iter().enumerate() {
            let Some(table) = table else { continue };
            if let Some(region) = table.single() {
                self.policy.adopt(service as u32, Some(region));
            }
            let addr = self.config.services[service].addr;
            let pending = Pending { addr, selection: table, trigger: now, event: None, not_before: Duration::ZERO };
            self.flips.decide(service as u32, pending);
        }
        self.decide(now, Vec::new());
        Ok(format!(
            "{} regions, {} services",
            self.config.regions.len(),
            self.config.services.len()
        ))
    }

    /// Takes the data plane off every interface and removes its pins.
    pub fn detach(&mut self) -> Result<()> {
        for interface in self.config.interfaces.clone() {
            self.dataplane.detach(&interface)?;
        }
        self.dataplane.remove_pins()
    }
}

/// Makes the data plane hold `config`'s services (a new or re-keyed one
/// selecting nowhere), then reads back what it holds.
fn write_services<D: Dataplane>(dataplane: &mut D, config: &Config) -> Result<Live> {
    dataplane.set_services(&service_specs(config))?;
    let selections = config
        .services
        .iter()
        .map(|s| dataplane.selection(&s.addr))
        .collect::<Result<_>>()?;
    let regions = config.regions.iter().map(|r| dataplane.region_state(r.id).ok()).collect();
    Ok(Live { selections, regions })
}

/// One slot per check of every region.
fn checks_of(config: &Config) -> Vec<Vec<heartbeat::Counters>> {
    config.regions.iter().map(|r| vec![Default::default(); r.checks.len()]).collect()
}
