//! redirectord: health checks → health state → failover policy → data plane.
//!
//! One task, the controller, owns every piece of state and is the only
//! writer of the data plane. Checker tasks send it probe results; the flow
//! table's sweep, on its own thread, sends it active flows per region (each
//! sweep is a sample for the load policies); the control socket sends it
//! requests and waits for answers; the metrics endpoint reads
//! the snapshot it publishes. Inputs flow one way.
//!
//! Exiting (SIGTERM, SIGINT, a crash) leaves the data plane forwarding on its
//! last state: maps and links are pinned. A new redirectord adopts them; its
//! regions start Pending and nothing is written until checks give verdicts,
//! so a restart moves no flow.

use std::{
    collections::VecDeque,
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{anyhow, bail, Context, Result};
use redirector_common::{RegionState, NO_REGION};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UdpSocket},
    signal::unix::{signal, SignalKind},
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
    time::{interval, sleep_until, MissedTickBehavior},
};
use tracing::{error, info, warn};

use crate::{
    config::{Check, Config, RegionConfig},
    control::{self, Request, Response},
    dataplane::{self, Dataplane, LoadOptions, Selection},
    flow_table::{self, Sweep},
    health::{Health, Outcome, Probe, RegionHealth, RegionView},
    heartbeat::{self, Key, Verifier},
    maglev, metrics, policy,
    policy::{Decision, Load, Policy, Subject},
    probe,
};

/// Events kept for `redirectorctl events`.
const EVENT_LOG: usize = 1000;

#[derive(Clone, Debug)]
pub struct Options {
    pub config: PathBuf,
    /// Log new flows and re-steers from the data plane (aya-log).
    pub log_flow_events: bool,
    /// Take the data plane down on exit instead of leaving it forwarding.
    pub detach_on_exit: bool,
}

/// What checker tasks and the control socket send the controller.
enum Input {
    Probe(ProbeReport),
    Control(Request, oneshot::Sender<Response>),
}

struct ProbeReport {
    region: usize,
    check: usize,
    probe: Probe,
    /// Heartbeat checks: the agent's report and the verifier's counters.
    agent: Option<heartbeat::Report>,
    heartbeat_counters: Option<heartbeat::Counters>,
}

/// Heartbeat keys are read with the config, so a missing key file refuses
/// the config (at start or reload) rather than failing a check later.
struct LoadedConfig {
    config: Config,
    keys: Vec<Vec<Option<Key>>>,
}

fn load_config(path: &Path) -> Result<LoadedConfig> {
    let config = Config::load(path)?;
    let mut keys = Vec::new();
    for region in &config.regions {
        let mut region_keys = Vec::new();
        for check in &region.checks {
            region_keys.push(match check {
                Check::Heartbeat { key_file: Some(file), .. } => Some(
                    Key::load(file).with_context(|| {
                        format!("region {}: heartbeat key {}", region.name, file.display())
                    })?,
                ),
                _ => None,
            });
        }
        keys.push(region_keys);
    }
    Ok(LoadedConfig { config, keys })
}

/// `redirectord --check-config`: everything `reload` checks before applying.
pub fn check_config(path: &Path) -> Result<String> {
    let loaded = load_config(path)?;
    Dataplane::check_services(&loaded.config.service_specs())?;
    Ok(format!(
        "{}: ok ({} regions, {} services, {} interfaces)",
        path.display(),
        loaded.config.regions.len(),
        loaded.config.services.len(),
        loaded.config.interfaces.len()
    ))
}

struct Controller {
    config_path: PathBuf,
    config: Config,
    dataplane: Dataplane,
    health: Vec<RegionHealth>,
    policy: Policy,
    /// The daemon's clock: health and policy time is `origin.elapsed()`.
    origin: Instant,
    origin_unix_ms: u64,
    /// What REGIONS holds, as far as this process knows.
    written: Vec<Option<RegionState>>,
    inputs: mpsc::Sender<Input>,
    checkers: Vec<JoinHandle<()>>,
    snapshot: metrics::Shared,
    switches: Vec<u64>,
    /// Per service: each region's share of the selection table last
    /// written, in percent.
    table_shares: Vec<Vec<(u8, f64)>>,
    /// Decision → map write of the last change.
    last_map_write: Option<Duration>,
    traffic: Traffic,
    heartbeat_counters: Vec<Vec<heartbeat::Counters>>,
    agent_reports: Vec<Option<heartbeat::Report>>,
    /// For `redirectorctl events`, newest last.
    log: VecDeque<control::Event>,
}

#[derive(Default)]
struct Traffic {
    at: Option<Instant>,
    packets: Vec<u64>,
    pps: Vec<f64>,
    active_flows: Vec<u64>,
    stats: dataplane::Stats,
}

pub async fn run(options: Options) -> Result<()> {
    let LoadedConfig { config, keys } = load_config(&options.config)?;
    Dataplane::check_services(&config.service_specs())?;
    let mut dataplane = Dataplane::load(&LoadOptions {
        pin_path: config.pin_path.clone(),
        log_flow_events: options.log_flow_events,
    })?;
    for interface in &config.interfaces {
        let mode = dataplane.attach(interface)?;
        info!("{interface}: XDP {mode:?}");
    }
    dataplane.set_services(&config.service_specs())?;
    if let Some(logger) = dataplane.take_logger() {
        tokio::spawn(poll_flow_events(logger));
    }

    let origin = Instant::now();
    let mut policy = Policy::new(&config);
    let mut table_shares = Vec::new();
    for service in &config.services {
        // A restarted daemon takes over what the data plane selects now.
        let slots = dataplane.selection(&service.addr)?;
        let first = slots.slots()[0];
        if slots.slots().iter().all(|&r| r == first) {
            policy.adopt(service.id, (first != NO_REGION).then_some(first));
        }
        table_shares.push(maglev::shares(slots.slots()));
    }
    let written = config
        .regions
        .iter()
        .map(|r| dataplane.region_state(r.id).ok())
        .collect();

    let (inputs, mut input_rx) = mpsc::channel(1024);
    let snapshot = metrics::Shared::default();
    if let Some(listen) = config.metrics_listen {
        let shared = snapshot.clone();
        tokio::spawn(async move {
            if let Err(e) = metrics::serve(listen, shared).await {
                error!("{e:#}");
            }
        });
    }
    let control_socket = config.control_socket.clone();
    let listener = bind_control_socket(&control_socket)?;
    tokio::spawn(serve_control(listener, inputs.clone()));

    let mut controller = Controller {
        config_path: options.config.clone(),
        health: config.regions.iter().map(|r| RegionHealth::new(r, Duration::ZERO)).collect(),
        switches: vec![0; config.services.len()],
        table_shares,
        heartbeat_counters: config.regions.iter().map(|r| vec![Default::default(); r.checks.len()]).collect(),
        agent_reports: vec![None; config.regions.len()],
        config,
        dataplane,
        policy,
        origin,
        origin_unix_ms: unix_ms(),
        written,
        inputs,
        checkers: Vec::new(),
        snapshot,
        last_map_write: None,
        traffic: Traffic::default(),
        log: VecDeque::new(),
    };
    controller.spawn_checkers(&keys);
    // Samples pace the load policies; each is one walk of the flow table,
    // the first before any decision.
    let mut flows = controller.dataplane.flow_table()?;
    controller.refresh_traffic(flows.sweep_logged());
    let (sample_period, period_rx) = watch::channel(controller.config.balance.sample);
    let (sweeps, mut sweep_rx) = mpsc::channel(1);
    tokio::spawn(flow_table::sweep_every(flows, period_rx, sweeps));
    info!(
        "redirectord running: {} regions, {} services, control socket {}",
        controller.config.regions.len(),
        controller.config.services.len(),
        control_socket.display()
    );

    let mut sighup = signal(SignalKind::hangup())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut detached = false;
    let mut failure = None;
    loop {
        let deadline = controller
            .policy
            .next_deadline()
            .map(|d| tokio::time::Instant::from_std(controller.origin + d));
        tokio::select! {
            Some(input) = input_rx.recv() => match input {
                Input::Probe(report) => controller.on_probe(report),
                Input::Control(request, reply) => {
                    let stop = request == Request::Detach;
                    let response = controller.on_control(request);
                    detached = stop && matches!(response, Response::Done { .. });
                    let _ = reply.send(response);
                    if detached {
                        break;
                    }
                }
            },
            _ = sleep_until(deadline.unwrap_or_else(far_future)), if deadline.is_some() => {
                controller.decide(Instant::now());
            }
            sweep = sweep_rx.recv() => match sweep {
                Some(sweep) => controller.refresh_traffic(sweep),
                None => {
                    failure = Some(anyhow!("the flow-table sweep stopped (logged above)"));
                    break;
                }
            },
            _ = sighup.recv() => {
                match controller.reload() {
                    Ok(message) => info!("SIGHUP: {message}"),
                    Err(e) => error!("SIGHUP: config refused, nothing changed: {e:#}"),
                }
            }
            // After a reload (SIGHUP or `redirectorctl reload`).
            _ = std::future::ready(()), if *sample_period.borrow() != controller.config.balance.sample => {
                sample_period.send_replace(controller.config.balance.sample);
            }
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }

    for checker in &controller.checkers {
        checker.abort();
    }
    let _ = fs::remove_file(&control_socket);
    if options.detach_on_exit && !detached {
        controller.detach()?;
        info!("detached the data plane on exit");
    } else if !detached {
        info!("exiting; the data plane keeps forwarding on its last state");
    }
    failure.map_or(Ok(()), Err)
}

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86_400)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Controller {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    fn on_probe(&mut self, report: ProbeReport) {
        let received = Instant::now();
        let Some(region) = self.health.get_mut(report.region) else {
            return; // from a checker of a config replaced since
        };
        if let Some(agent) = report.agent {
            self.agent_reports[report.region] = Some(agent);
        }
        if let Some(counters) = report.heartbeat_counters {
            self.heartbeat_counters[report.region][report.check] = counters;
        }
        if let Some(transition) = region.record(report.check, report.probe) {
            let name = region.name().to_string();
            info!("region {name}: {} → {} ({})", transition.from, transition.to, transition.reason);
            self.record_events(vec![policy::Event::region(&name, &transition)], &[]);
            self.decide(received);
        }
    }

    /// Runs the policy and writes what changed: selections first, so flows
    /// re-steered off a region marked down next pick the new choice; then
    /// region states. `trigger` is when the input that led here arrived.
    fn decide(&mut self, trigger: Instant) {
        let views: Vec<RegionView> = self.health.iter().map(RegionHealth::view).collect();
        let evaluation = self.policy.evaluate(self.now(), &views);
        let mut written = Vec::new();
        for decision in evaluation.decisions.iter().filter(|d| d.changed) {
            let service = &self.config.services[decision.service as usize];
            let selection = self.selection(decision);
            match self.dataplane.set_selection(&service.addr, &selection) {
                Ok(()) => {
                    let took = trigger.elapsed();
                    let shares = maglev::shares(selection.slots());
                    let to: Vec<String> = shares
                        .iter()
                        .map(|&(r, pct)| format!("{} {pct:.1} %", self.config.regions[r as usize].name))
                        .collect();
                    info!(
                        "service {}: new flows → {}; decision → map write {:.0} µs",
                        service.name,
                        if to.is_empty() { "nowhere".to_string() } else { to.join(", ") },
                        took.as_secs_f64() * 1e6
                    );
                    self.table_shares[decision.service as usize] = shares;
                    self.switches[decision.service as usize] += 1;
                    self.last_map_write = Some(took);
                    written.push((service.name.clone(), took));
                }
                Err(e) => error!("service {}: writing the selection failed: {e:#}", service.name),
            }
        }
        self.write_region_states();
        self.record_events(evaluation.events, &written);
        self.publish();
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
        Selection::from_slots(&slots).expect("maglev fills every slot")
    }

    fn write_region_states(&mut self) {
        for (region, health) in self.config.regions.iter().zip(&self.health) {
            let Some(state) = health.dataplane_state() else { continue };
            let slot = &mut self.written[region.id as usize];
            if *slot == Some(state) {
                continue;
            }
            match self.dataplane.set_region_state(region.id, state) {
                Ok(()) => *slot = Some(state),
                Err(e) => error!("region {}: writing its state failed: {e:#}", region.name),
            }
        }
    }

    fn record_events(&mut self, events: Vec<policy::Event>, map_writes: &[(String, Duration)]) {
        for event in events {
            let write = match &event.subject {
                Subject::Service(name) if event.from != event.to => map_writes
                    .iter()
                    .find(|(service, _)| service == name)
                    .map(|(_, took)| took.as_secs_f64() * 1e6),
                _ => None,
            };
            self.log.push_back(control::Event {
                unix_ms: self.origin_unix_ms + event.at.as_millis() as u64,
                subject: event.subject.to_string(),
                what: format!("{} → {}", event.from, event.to),
                why: event.reason.clone(),
                map_write_us: write,
            });
            if self.log.len() > EVENT_LOG {
                self.log.pop_front();
            }
        }
    }

    fn region_index(&self, name: &str) -> Result<usize, String> {
        self.config.regions.iter().position(|r| r.name == name).ok_or_else(|| {
            let known: Vec<&str> = self.config.regions.iter().map(|r| r.name.as_str()).collect();
            format!("unknown region {name:?} (known: {})", known.join(", "))
        })
    }

    fn on_control(&mut self, request: Request) -> Response {
        let received = Instant::now();
        let now = self.now();
        let result: Result<String, String> = match request {
            Request::Status => return Response::Status(self.status()),
            Request::Events => {
                return Response::Events {
                    events: self.log.iter().cloned().collect(),
                }
            }
            Request::SetActive { region: Some(region), service } => self
                .policy
                .pin(now, &region, service.as_deref())
                .map(|events| {
                    self.record_events(events, &[]);
                    format!("new flows pinned to {region}")
                })
                .map_err(|e| e.to_string()),
            Request::SetActive { region: None, service } => self
                .policy
                .unpin(now, service.as_deref())
                .map(|events| {
                    self.record_events(events, &[]);
                    "new flows follow the policy again".to_string()
                })
                .map_err(|e| e.to_string()),
            Request::Weight { region, weight, service } => self
                .policy
                .set_weight(now, &region, weight, service.as_deref())
                .map(|events| {
                    let message = format!(
                        "weight of {region} = {weight} in {}",
                        events.iter().map(|e| e.subject.to_string()).collect::<Vec<_>>().join(", ")
                    );
                    self.record_events(events, &[]);
                    message
                })
                .map_err(|e| e.to_string()),
            Request::Drain { region } | Request::Undrain { region } if self.region_index(&region).is_err() => {
                Err(self.region_index(&region).unwrap_err())
            }
            Request::Drain { region } => Ok(self.set_drained(&region, true, now)),
            Request::Undrain { region } => Ok(self.set_drained(&region, false, now)),
            Request::Reload => self.reload().map_err(|e| format!("config refused, nothing changed: {e:#}")),
            Request::Detach => self
                .detach()
                .map(|()| "detached from every interface; pins removed; redirectord exits".into())
                .map_err(|e| format!("{e:#}")),
        };
        match result {
            Ok(message) => {
                self.decide(received);
                Response::Done { message }
            }
            Err(message) => Response::Error { message },
        }
    }

    fn set_drained(&mut self, region: &str, drained: bool, now: Duration) -> String {
        let index = self.region_index(region).expect("checked by the caller");
        match self.health[index].set_drained(drained, now) {
            Some(transition) => {
                self.record_events(vec![policy::Event::region(region, &transition)], &[]);
                format!("region {region}: {}", transition.to)
            }
            None => format!("region {region}: already {}", self.health[index].view()),
        }
    }

    /// Re-reads the config. Everything that can be refused is checked
    /// before anything changes: an invalid config leaves the running state
    /// untouched.
    fn reload(&mut self) -> Result<String> {
        let LoadedConfig { config, keys } = load_config(&self.config_path)?;
        Dataplane::check_services(&config.service_specs())?;
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
        for interface in &config.interfaces {
            dataplane::ifindex(interface)?;
        }

        for interface in config.interfaces.iter().filter(|i| !self.config.interfaces.contains(i)) {
            self.dataplane.attach(interface)?;
        }
        for interface in self.config.interfaces.iter().filter(|i| !config.interfaces.contains(i)) {
            self.dataplane.detach(interface)?;
        }
        self.dataplane.set_services(&config.service_specs())?;

        let now = self.now();
        let mut health = Vec::new();
        for (i, region) in config.regions.iter().enumerate() {
            let unchanged = self.config.regions.get(i).is_some_and(|old| same_checks(old, region));
            health.push(if unchanged { self.health[i].clone() } else { RegionHealth::new(region, now) });
        }
        let mut policy = Policy::new(&config);
        for (old, status) in self.config.services.iter().zip(self.policy.status()) {
            if let Some(new) = config.services.iter().find(|s| s.name == old.name) {
                let active = match status.share.as_slice() {
                    [(name, _)] => config.regions.iter().position(|r| r.name == *name),
                    _ => None,
                };
                policy.adopt(new.id, active.map(|r| r as u8));
            }
        }
        self.health = health;
        self.policy = policy;
        self.written.resize(config.regions.len(), None);
        self.switches.resize(config.services.len(), 0);
        self.table_shares.resize(config.services.len(), Vec::new());
        self.agent_reports.resize(config.regions.len(), None);
        self.heartbeat_counters = config.regions.iter().map(|r| vec![Default::default(); r.checks.len()]).collect();
        self.config = config;
        for checker in self.checkers.drain(..) {
            checker.abort();
        }
        self.spawn_checkers(&keys);
        Ok(format!(
            "reloaded {}: {} regions, {} services",
            self.config_path.display(),
            self.config.regions.len(),
            self.config.services.len()
        ))
    }

    fn detach(&mut self) -> Result<()> {
        for interface in self.config.interfaces.clone() {
            self.dataplane.detach(&interface)?;
        }
        Dataplane::remove_pins(&self.config.pin_path)
    }

    fn spawn_checkers(&mut self, keys: &[Vec<Option<Key>>]) {
        for (r, region) in self.config.regions.iter().enumerate() {
            for (c, check) in region.checks.iter().enumerate() {
                let task = Checker {
                    region: r,
                    check: c,
                    interval: region.health.interval,
                    timeout: region.health.timeout,
                    origin: self.origin,
                    inputs: self.inputs.clone(),
                };
                let handle = match check.clone() {
                    Check::Heartbeat { address, .. } => {
                        tokio::spawn(task.heartbeat(address.into(), keys[r][c].clone()))
                    }
                    Check::Http(http) => tokio::spawn(task.http(http)),
                    Check::Tcp { address } => tokio::spawn(task.tcp(address)),
                };
                self.checkers.push(handle);
            }
        }
    }

    /// Counters and pps from the data plane, active flows from a sweep of
    /// its flow table (kept from the last one when the table could not be
    /// read); then the load policies see them.
    fn refresh_traffic(&mut self, sweep: Option<Sweep>) {
        if let Some(sweep) = sweep {
            self.traffic.active_flows = sweep.active;
        }
        let stats = match self.dataplane.stats() {
            Ok(stats) => stats,
            Err(e) => return error!("reading counters: {e:#}"),
        };
        let now = Instant::now();
        let packets: Vec<u64> = stats.regions.iter().map(|c| c.packets).collect();
        if let Some(at) = self.traffic.at {
            let dt = now.duration_since(at).as_secs_f64();
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
        let events = self.policy.observe_load(self.now(), &loads);
        for event in &events {
            info!("{}: {} → {} ({})", event.subject, event.from, event.to, event.reason);
        }
        self.record_events(events, &[]);
        // Also publishes.
        self.decide(now);
    }

    /// Region `r`'s load, as last sampled.
    fn load(&self, r: usize) -> Load {
        Load {
            pps: self.traffic.pps.get(r).copied().unwrap_or(0.0),
            flows: self.traffic.active_flows.get(r).copied().unwrap_or(0),
            cpu_percent: self.agent_reports[r].map(|a| a.cpu_permille as f64 / 10.0),
        }
    }

    fn status(&self) -> control::Status {
        let regions = self
            .config
            .regions
            .iter()
            .zip(&self.health)
            .map(|(region, health)| {
                let view = health.view();
                let counters = self.traffic.stats.regions.get(region.id as usize).copied().unwrap_or_default();
                let load = self.load(region.id as usize);
                control::RegionStatus {
                    name: region.name.clone(),
                    state: state_name(&view).into(),
                    since_unix_ms: self.origin_unix_ms + view.since.as_millis() as u64,
                    checks: health
                        .checks()
                        .iter()
                        .map(|c| {
                            let (kind, target) = c.label.split_once(' ').unwrap_or((&c.label, ""));
                            control::CheckStatus {
                                kind: kind.into(),
                                target: target.into(),
                                last_ok: c.last.as_ref().map(|p| p.outcome == Outcome::Success),
                                last_latency_ms: c.last.as_ref().map(|p| p.latency.as_secs_f64() * 1e3),
                                last_error: c.last.as_ref().and_then(|p| match &p.outcome {
                                    Outcome::Success => None,
                                    other => Some(other.to_string()),
                                }),
                                since_unix_ms: self.origin_unix_ms + c.since.as_millis() as u64,
                            }
                        })
                        .collect(),
                    pps: load.pps,
                    active_flows: load.flows,
                    cpu_percent: load.cpu_percent,
                    agent_connections: self.agent_reports[region.id as usize].map(|a| a.active_connections),
                    saturated: self.policy.saturated(region.id).into_iter().map(String::from).collect(),
                    packets: counters.packets,
                    bytes: counters.bytes,
                    new_flows: counters.new_flows,
                }
            })
            .collect();
        let services = self
            .config
            .services
            .iter()
            .zip(self.policy.status())
            .zip(&self.table_shares)
            .map(|((service, status), shares)| control::ServiceStatus {
                name: service.name.clone(),
                vip: service.addr.vip.to_string(),
                port: service.addr.port,
                protocol: format!("{:?}", service.addr.protocol).to_lowercase(),
                policy: status.policy.name().into(),
                active: status.share.iter().map(|(name, _)| name.clone()).collect(),
                weights: status.weights,
                new_flow_shares: shares
                    .iter()
                    .map(|&(r, pct)| (self.config.regions[r as usize].name.clone(), pct))
                    .collect(),
                pinned: status.pinned,
                note: status.note,
            })
            .collect();
        control::Status {
            regions,
            services,
            reasons: self
                .traffic
                .stats
                .reasons
                .iter()
                .map(|(reason, n)| (reason.name().to_string(), *n))
                .collect(),
        }
    }

    fn publish(&mut self) {
        let status = self.status();
        let mut snap = self.snapshot.lock().unwrap();
        snap.status = status;
        snap.switches = self
            .config
            .services
            .iter()
            .zip(&self.switches)
            .map(|(s, n)| (s.name.clone(), *n))
            .collect();
        snap.last_map_write_seconds = self.last_map_write.map(|took| took.as_secs_f64());
        let mut rejected = heartbeat::Counters::default();
        for c in self.heartbeat_counters.iter().flatten() {
            rejected.malformed += c.malformed;
            rejected.bad_version += c.bad_version;
            rejected.unauthenticated += c.unauthenticated;
            rejected.wrong_source += c.wrong_source;
            rejected.unexpected_sequence += c.unexpected_sequence;
            rejected.expired += c.expired;
        }
        snap.heartbeat_rejections = vec![
            ("malformed".into(), rejected.malformed),
            ("bad_version".into(), rejected.bad_version),
            ("unauthenticated".into(), rejected.unauthenticated),
            ("wrong_source".into(), rejected.wrong_source),
            ("unexpected_sequence".into(), rejected.unexpected_sequence),
            ("expired".into(), rejected.expired),
        ];
    }
}

fn state_name(view: &RegionView) -> &'static str {
    match (view.health, view.drained) {
        (Health::Down, _) => "down",
        (_, true) => "draining",
        (Health::Up, false) => "up",
        (Health::Pending, false) => "pending",
    }
}

fn same_checks(old: &RegionConfig, new: &RegionConfig) -> bool {
    old.checks == new.checks && old.health == new.health
}

/// One check of one region, probing every interval.
struct Checker {
    region: usize,
    check: usize,
    interval: Duration,
    timeout: Duration,
    origin: Instant,
    inputs: mpsc::Sender<Input>,
}

impl Checker {
    fn ticker(&self) -> tokio::time::Interval {
        let mut ticker = interval(self.interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        ticker
    }

    async fn send(&self, outcome: Outcome, latency: Duration, agent: Option<heartbeat::Report>, counters: Option<heartbeat::Counters>) -> bool {
        let report = ProbeReport {
            region: self.region,
            check: self.check,
            probe: Probe { at: self.origin.elapsed(), outcome, latency },
            agent,
            heartbeat_counters: counters,
        };
        self.inputs.send(Input::Probe(report)).await.is_ok()
    }

    async fn http(self, check: crate::config::HttpCheck) {
        let mut ticker = self.ticker();
        loop {
            ticker.tick().await;
            let result = probe::http(&check, self.timeout).await;
            if !self.send(result.outcome(), result.latency, None, None).await {
                return;
            }
        }
    }

    async fn tcp(self, address: std::net::SocketAddrV4) {
        let mut ticker = self.ticker();
        loop {
            ticker.tick().await;
            let result = probe::tcp(address, self.timeout).await;
            if !self.send(result.outcome(), result.latency, None, None).await {
                return;
            }
        }
    }

    /// One request per interval; a request unanswered within the timeout
    /// is a miss. Replies are checked by the verifier (source, sequence,
    /// MAC) and the rejected ones only counted.
    async fn heartbeat(self, agent: std::net::SocketAddr, key: Option<Key>) {
        let socket = match UdpSocket::bind("0.0.0.0:0").await {
            Ok(socket) => socket,
            Err(e) => return error!("heartbeat to {agent}: no socket: {e}"),
        };
        // Sequence numbers from the wall clock: replies to a previous run
        // can never match a request of this one.
        let first_seq = unix_ms().saturating_mul(1_000_000);
        let mut verifier = Verifier::new(agent, key, first_seq);
        let mut ticker = self.ticker();
        let mut buf = [0u8; 512];
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    let now = self.origin.elapsed();
                    for _ in 0..verifier.expire(now, self.timeout) {
                        if !self.send(Outcome::Timeout, self.timeout, None, Some(verifier.counters())).await {
                            return;
                        }
                    }
                    let request = verifier.request(now);
                    if let Err(e) = socket.send_to(&request, agent).await {
                        warn!("heartbeat to {agent}: {e}");
                    }
                }
                received = socket.recv_from(&mut buf) => {
                    let Ok((len, from)) = received else { continue };
                    let now = self.origin.elapsed();
                    if let Ok(accepted) = verifier.accept(from, &buf[..len], now) {
                        let outcome = accepted.report.outcome();
                        if !self.send(outcome, accepted.rtt, Some(accepted.report), Some(verifier.counters())).await {
                            return;
                        }
                    }
                }
            }
        }
    }
}

async fn poll_flow_events(logger: dataplane::FlowEventLogger) {
    // SAFETY: the AsyncFd owns the logger, which owns the fd: the fd stays
    // open for as long as it is registered.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    };
    let mut logger = match registered {
        Ok(fd) => fd,
        Err(e) => return warn!("flow events: {e}"),
    };
    loop {
        let Ok(mut guard) = logger.readable_mut().await else { return };
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}

/// The control socket, mode 0600. A socket left by a dead daemon is
/// replaced; one a live daemon answers on is not.
fn bind_control_socket(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!("another redirectord answers on {}", path.display());
        }
        fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

async fn serve_control(listener: UnixListener, inputs: mpsc::Sender<Input>) {
    loop {
        let Ok((conn, _)) = listener.accept().await else { continue };
        let inputs = inputs.clone();
        tokio::spawn(async move {
            let (read, mut write) = conn.into_split();
            let mut line = String::new();
            let mut reader = BufReader::new(read.take(64 * 1024));
            if reader.read_line(&mut line).await.is_err() {
                return;
            }
            let response = match serde_json::from_str::<Request>(&line) {
                Ok(request) => {
                    let (reply, answer) = oneshot::channel();
                    if inputs.send(Input::Control(request, reply)).await.is_err() {
                        return;
                    }
                    match answer.await {
                        Ok(response) => response,
                        Err(_) => return,
                    }
                }
                Err(e) => Response::Error { message: format!("bad request: {e}") },
            };
            let mut text = serde_json::to_string(&response).unwrap_or_default();
            text.push('\n');
            let _ = write.write_all(text.as_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_example_configs_are_valid() {
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        for entry in fs::read_dir(examples).unwrap() {
            let path = entry.unwrap().path();
            check_config(&path).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        }
    }
}
