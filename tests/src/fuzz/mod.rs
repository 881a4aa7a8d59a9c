//! Differential fuzzing of the XDP program against a reference model
//! ([`model`]): generated frames ([`generate`]) and map changes go to both;
//! after every frame the action, the frame left behind and every flow entry
//! the frame touched must agree, and at the end of each segment both flow
//! tables whole and every counter. A segment that disagrees is replayed
//! from cleared tables and, if it disagrees again, saved as a fixture
//! ([`fixture`]) that the packet tests replay from then on.

pub mod fixture;
pub mod generate;
pub mod model;

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use aya::maps::{HashMap as BpfHashMap, Map, MapData, MapError};
use redirector::{
    config::ServiceAddr,
    dataplane::{Dataplane, Selection},
};
use redirector_common::{map_names, Flow, FlowKey, Reason, RegionState, NO_REGION, SELECTION_SLOTS};

use self::{
    generate::Generator,
    model::{Links, Model, ModelService, Verdict},
};
use crate::xdp::{backend_port, vip4, Gateway, ALT, DNS, PING, WEB};

/// The fixture's services, by id.
pub const SERVICES: [ServiceAddr; 4] = [WEB, ALT, DNS, PING];
/// Interfaces a frame may arrive on.
pub const INTERFACES: [&str; 5] = ["cli", "r1", "r2", "r3", "r4"];

/// One thing done to both sides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Frame { ingress: &'static str, bytes: Vec<u8> },
    Region { id: u8, state: RegionState },
    Select { service: usize, spec: SelectionSpec },
}

/// A selection table described compactly: each slot takes one of
/// `regions` (`NO_REGION` among them for "nowhere"), chosen by a hash of
/// `seed` and the slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelectionSpec {
    pub regions: Vec<u8>,
    pub seed: u64,
}

impl SelectionSpec {
    pub fn slots(&self) -> Vec<u8> {
        (0..SELECTION_SLOTS as u64)
            .map(|slot| self.regions[(mix(self.seed ^ slot) % self.regions.len() as u64) as usize])
            .collect()
    }
}

/// A seed for a run that was given none: the clock's nanoseconds. Printed
/// by whoever uses it, so the run can be replayed.
pub fn fresh_seed() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
}

/// splitmix64's finaliser: a well-spread hash of a counter.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

type FlowMap = BpfHashMap<MapData, FlowKey, Flow>;

/// The program in its namespace and the model, fed the same steps.
pub struct Harness {
    gateway: Gateway,
    model: Model,
    flows: FlowMap,
    new_flows: FlowMap,
    /// The program's counters before the first step: the model counts from
    /// zero.
    baseline: redirector::dataplane::Stats,
}

impl Harness {
    pub fn new() -> Result<Self> {
        let gateway = Gateway::new()?;
        let links = Links { ifindex: INTERFACES.iter().map(|i| (*i, gateway.ifindex(i))).collect() };
        let services = SERVICES
            .iter()
            .enumerate()
            .map(|(id, addr)| ModelService {
                id: id as u32,
                vip: vip4(addr),
                port: addr.port,
                protocol: addr.protocol.number(),
                backend_port: backend_port(addr),
                slots: vec![NO_REGION; SELECTION_SLOTS],
            })
            .collect();
        let mut model = Model::new(services, links);
        // The gateway starts with every fixture region up.
        for region in crate::xdp::REGIONS {
            model.regions[region.id as usize] = RegionState::Up;
        }
        let open = |name: &str| -> Result<FlowMap> {
            let path = gateway.pins().join(name);
            let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
            Ok(FlowMap::try_from(Map::from_map_data(data)?)?)
        };
        let (flows, new_flows) = (open(map_names::FLOWS)?, open(map_names::NEW_FLOWS)?);
        let baseline = gateway.dataplane.stats()?;
        Ok(Self { gateway, model, flows, new_flows, baseline })
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Applies `step` to both sides; `Some` says how they disagree.
    pub fn apply(&mut self, step: &Step) -> Result<Option<String>> {
        match step {
            Step::Frame { ingress, bytes } => {
                let ran = self.gateway.run(bytes, ingress)?;
                let program = Verdict { action: ran.action, frame: ran.frame };
                let model = self.model.process(bytes, self.gateway.ifindex(ingress));
                if program != model {
                    return Ok(Some(format!(
                        "frame on {ingress}: program {} {}, model {} {}",
                        program.action,
                        hex(&program.frame),
                        model.action,
                        hex(&model.frame)
                    )));
                }
                for key in self.model.touched.clone() {
                    for (name, map, table) in [
                        ("FLOWS", &self.flows, &self.model.flows),
                        ("NEW_FLOWS", &self.new_flows, &self.model.new_flows),
                    ] {
                        let program = lookup(map, &key)?.map(timeless);
                        let model = table.get(&key).copied().map(timeless);
                        if program != model {
                            return Ok(Some(format!("{name} {}: program {program:?}, model {model:?}", show(&key))));
                        }
                    }
                }
            }
            Step::Region { id, state } => {
                self.gateway.dataplane.set_region_state(*id, *state)?;
                self.model.regions[*id as usize] = *state;
            }
            Step::Select { service, spec } => {
                let slots = spec.slots();
                self.gateway.dataplane.set_selection(&SERVICES[*service], &Selection::from_slots(&slots)?)?;
                self.model.services[*service].slots = slots;
            }
        }
        Ok(None)
    }

    /// Both flow tables whole and every counter; `Some` says how the sides
    /// disagree.
    pub fn check_state(&self) -> Result<Option<String>> {
        let mut report = String::new();
        for (name, map, table) in [
            ("FLOWS", &self.flows, &self.model.flows),
            ("NEW_FLOWS", &self.new_flows, &self.model.new_flows),
        ] {
            let program: BTreeMap<String, Flow> = entries(map)?
                .into_iter()
                .map(|(k, f)| (show(&k), timeless(f)))
                .collect();
            let model: BTreeMap<String, Flow> =
                table.iter().map(|(k, f)| (show(k), timeless(*f))).collect();
            for key in program.keys().chain(model.keys()) {
                if program.get(key) != model.get(key) {
                    let _ = writeln!(report, "{name} {key}: program {:?}, model {:?}", program.get(key), model.get(key));
                }
            }
        }
        let stats = self.gateway.dataplane.stats()?;
        for reason in Reason::ALL {
            let program = stats.reason(reason) - self.baseline.reason(reason);
            let model = self.model.reasons[reason as usize];
            if program != model {
                let _ = writeln!(report, "counter {reason:?}: program {program}, model {model}");
            }
        }
        for (what, program, baseline, model) in [
            ("region", &stats.regions, &self.baseline.regions, &self.model.region_counters),
            ("service", &stats.services, &self.baseline.services, &self.model.service_counters),
        ] {
            for (id, ((program, baseline), model)) in program.iter().zip(baseline).zip(model).enumerate() {
                let mut expected = *baseline;
                expected.add(model);
                if *program != expected {
                    let _ = writeln!(report, "{what} {id} counters: program {program:?}, model {model:?} over {baseline:?}");
                }
            }
        }
        Ok((!report.is_empty()).then_some(report))
    }

    /// Empties both flow tables on both sides and takes the program's
    /// counters as they are: a fresh start short of reloading.
    pub fn reset(&mut self) -> Result<()> {
        for map in [&mut self.flows, &mut self.new_flows] {
            for key in map.keys().collect::<Result<Vec<_>, _>>()? {
                match map.remove(&key) {
                    Ok(()) | Err(MapError::KeyNotFound) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        self.model.flows.clear();
        self.model.new_flows.clear();
        self.baseline = self.gateway.dataplane.stats()?;
        self.model.reasons = Default::default();
        self.model.region_counters.iter_mut().for_each(|c| *c = Default::default());
        self.model.service_counters.iter_mut().for_each(|c| *c = Default::default());
        Ok(())
    }
}

fn lookup(map: &FlowMap, key: &FlowKey) -> Result<Option<Flow>> {
    match map.get(key, 0) {
        Ok(flow) => Ok(Some(flow)),
        Err(MapError::KeyNotFound) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn entries(map: &FlowMap) -> Result<HashMap<FlowKey, Flow>> {
    Ok(map.iter().collect::<Result<_, _>>()?)
}

/// A flow as both sides must agree on it: the time it was last seen is the
/// kernel's clock, which the model does not have.
fn timeless(mut flow: Flow) -> Flow {
    flow.last_seen_ns = 0;
    flow
}

/// A flow key as a network engineer reads it.
fn show(key: &FlowKey) -> String {
    let addr = |a: u32| std::net::Ipv4Addr::from(u32::from_be(a));
    format!(
        "proto {} {}:{} -> {}:{}",
        key.protocol,
        addr(key.src_addr),
        u16::from_be(key.src_port),
        addr(key.dst_addr),
        u16::from_be(key.dst_port)
    )
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A fuzzing run's bounds.
pub struct FuzzOptions {
    pub seed: u64,
    pub frames: u64,
    /// Stop at this wall time even if fewer frames ran.
    pub time_limit: Duration,
    /// Where a disagreement is saved as a fixture.
    pub fixtures: PathBuf,
}

/// What a fuzzing run did.
pub struct FuzzReport {
    pub seed: u64,
    pub frames: u64,
    pub segments: u64,
    pub elapsed: Duration,
    /// Frames by the model's reason (what the program must have said too).
    pub reasons: Vec<(Reason, u64)>,
    /// A disagreement that replayed, saved at this path.
    pub mismatch: Option<(PathBuf, String)>,
    /// Disagreements that did not replay from cleared tables: a segment that
    /// outlived the next-hop refresh, most likely.
    pub unreproduced: Vec<String>,
}

/// A segment ends before any flow of it is a second old (the data plane
/// would then refresh its cached next hops, which the model does not).
const SEGMENT_TIME: Duration = Duration::from_millis(400);
const SEGMENT_STEPS: u64 = 3000;

pub fn fuzz(options: &FuzzOptions) -> Result<FuzzReport> {
    let mut harness = Harness::new()?;
    let mut generator = Generator::new(options.seed);
    let mut reasons = [0u64; Reason::COUNT as usize];
    let started = Instant::now();
    let (mut frames, mut segments) = (0, 0);
    let mut unreproduced = Vec::new();
    let mut mismatch = None;
    while frames < options.frames && started.elapsed() < options.time_limit && mismatch.is_none() {
        harness.reset()?;
        segments += 1;
        let segment_started = Instant::now();
        let length = 1 + generator.below(SEGMENT_STEPS);
        let mut steps = generator.segment_start();
        let mut found = None;
        for step in &steps {
            if let Some(m) = harness.apply(step)? {
                found = Some(m);
            }
        }
        while found.is_none()
            && (steps.len() as u64) < length
            && frames < options.frames
            && segment_started.elapsed() < SEGMENT_TIME
        {
            let step = generator.step(harness.model());
            frames += u64::from(matches!(step, Step::Frame { .. }));
            found = harness.apply(&step)?;
            steps.push(step);
        }
        for (reason, n) in harness.model().reasons.iter().enumerate() {
            reasons[reason] += n;
        }
        if found.is_none() {
            found = harness.check_state()?;
        }
        let Some(found) = found else { continue };
        match replay(&mut harness, &steps)? {
            Some(_) => {
                let steps = shrink(&mut harness, steps)?;
                let again = replay(&mut harness, &steps)?.context("a shrunk segment agrees")?;
                let path = options.fixtures.join(format!("seed-{}-segment-{segments}.txt", options.seed));
                let header = format!("found by seed {} in segment {segments}:\n{again}", options.seed);
                fixture::save(&path, &header, &steps)?;
                mismatch = Some((path, again));
            }
            None => unreproduced.push(found),
        }
    }
    Ok(FuzzReport {
        seed: options.seed,
        frames,
        segments,
        elapsed: started.elapsed(),
        reasons: Reason::ALL.iter().map(|r| (*r, reasons[*r as usize])).collect(),
        mismatch,
        unreproduced,
    })
}

/// Runs `steps` from cleared tables; `Some` says how the sides disagree.
pub fn replay(harness: &mut Harness, steps: &[Step]) -> Result<Option<String>> {
    harness.reset()?;
    for (i, step) in steps.iter().enumerate() {
        if let Some(m) = harness.apply(step)? {
            return Ok(Some(format!("step {}: {m}", i + 1)));
        }
    }
    harness.check_state()
}

/// The disagreeing `steps` with as many steps left out as still disagree
/// (delta debugging by chunks, halving), so a fixture is a few lines. A
/// segment's region and selection steps are kept: they make it replay the
/// same from any start.
fn shrink(harness: &mut Harness, mut steps: Vec<Step>) -> Result<Vec<Step>> {
    let fixed = steps.iter().take_while(|s| !matches!(s, Step::Frame { .. })).count();
    let mut chunk = (steps.len() - fixed).div_ceil(2).max(1);
    let mut replays = 0;
    loop {
        let mut at = fixed;
        while at < steps.len() && replays < 5000 {
            let mut candidate = steps.clone();
            candidate.drain(at..(at + chunk).min(steps.len()));
            replays += 1;
            if replay(harness, &candidate)?.is_some() {
                steps = candidate;
            } else {
                at += chunk;
            }
        }
        if chunk == 1 || replays >= 5000 {
            return Ok(steps);
        }
        chunk = chunk.div_ceil(2);
    }
}

/// Replays every fixture under `dir`; the disagreements, by file.
pub fn replay_fixtures(dir: &Path) -> Result<(usize, Vec<(PathBuf, String)>)> {
    let mut harness = Harness::new()?;
    let mut failed = Vec::new();
    let files = fixture::list(dir)?;
    for path in &files {
        let steps = fixture::load(path)?;
        if let Some(m) = replay(&mut harness, &steps)? {
            failed.push((path.clone(), m));
        }
    }
    Ok((files.len(), failed))
}

impl FuzzReport {
    /// Markdown: what ran, how frames ended, what disagreed.
    pub fn markdown(&self) -> String {
        let mut out = format!(
            "Differential fuzzing, seed {}: {} frames in {} segments, {:.1} s ({:.0} frames/s)\n\n\
             | model's reason | frames |\n|---|---:|\n",
            self.seed,
            self.frames,
            self.segments,
            self.elapsed.as_secs_f64(),
            self.frames as f64 / self.elapsed.as_secs_f64().max(1e-9),
        );
        for (reason, n) in &self.reasons {
            let _ = writeln!(out, "| {reason:?} | {n} |");
        }
        let _ = writeln!(out, "\nDisagreements that replayed: {}", usize::from(self.mismatch.is_some()));
        if let Some((path, what)) = &self.mismatch {
            let _ = writeln!(out, "saved as {}:\n{what}", path.display());
        }
        let _ = writeln!(out, "Disagreements that did not replay: {}", self.unreproduced.len());
        for what in &self.unreproduced {
            let _ = writeln!(out, "  {what}");
        }
        out
    }
}
