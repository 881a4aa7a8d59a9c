//! The flow table seen from userspace: read in batches, and swept (active
//! flows counted per region, closed and idle entries deleted) off the
//! controller's loop.
//!
//! A full table holds 262 144 entries. Walked one entry at a time (a
//! get-next-key and a lookup per entry) it took 0.64 s here, long enough to
//! hold back the probe results that drive failover. `BPF_MAP_LOOKUP_BATCH`
//! reads thousands of entries per syscall, and the sweep runs on a blocking
//! thread that hands the controller only its counts.

use std::{
    mem::size_of,
    os::fd::{AsFd, AsRawFd},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use aya::maps::{HashMap, IterableMap, Map, MapData};
use aya_obj::generated::{bpf_attr, bpf_cmd};
use redirector_common::{
    lifetime::{handshake_life, life, Life},
    map_names, Addr6, Address, Flow, FlowKey, FLOW_ORIGINAL, FLOW_SYNCED, MAX_REGIONS,
};
use redirector_proto::sync::{FlowEvent, FlowRecord};
use tokio::{
    sync::{mpsc, watch},
    task::spawn_blocking,
    time::sleep_until,
};
use tracing::{debug, error, info, warn};

use crate::sync::{
    records::{self, FlowStore},
    refresh,
};

/// Entries per `BPF_MAP_LOOKUP_BATCH`. The kernel returns a hash bucket
/// whole or not at all, so this must exceed any bucket's length (a few).
const BATCH: usize = 4096;

/// Handles on the pinned flow maps (established flows and new TCP flows,
/// of each family), independent of the loader's.
pub struct FlowTable {
    established: FlowMap,
    new: FlowMap,
    established6: FlowMap<Addr6>,
    new6: FlowMap<Addr6>,
    announcer: Option<Announcer>,
}

/// Where the sweep tells the flow sync what only the table shows: the
/// flows this gateway carried, each once every [`SYNC_REFRESH_NS`]
/// ([`refresh`]), and the ones it deleted.
struct Announcer {
    out: mpsc::Sender<Vec<FlowRecord>>,
    last_sweep_ns: u64,
}

/// One flow map, read in batches.
struct FlowMap<A: Address = redirector_common::Addr4>(HashMap<MapData, FlowKey<A>, Flow<A>>);

/// The maps of a pin directory, by name, in the order [`FlowTable::from_maps`]
/// takes them.
pub const FLOW_MAPS: [&str; 4] = [map_names::FLOWS, map_names::NEW_FLOWS, map_names::FLOWS6, map_names::NEW_FLOWS6];

impl FlowTable {
    pub fn open(pin_path: &Path) -> Result<Self> {
        let open = |name: &str| -> Result<Map> {
            let path = pin_path.join(name);
            let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
            Ok(Map::from_map_data(data)?)
        };
        Self::from_maps(FLOW_MAPS.map(open).into_iter().collect::<Result<Vec<_>>>()?)
    }

    /// `maps`: those named by [`FLOW_MAPS`], in its order.
    pub fn from_maps(maps: Vec<Map>) -> Result<Self> {
        let [established, new, established6, new6]: [Map; 4] =
            maps.try_into().map_err(|_| anyhow::anyhow!("the flow tables are {} maps", FLOW_MAPS.len()))?;
        Ok(Self {
            established: FlowMap(HashMap::try_from(established).context("FLOWS")?),
            new: FlowMap(HashMap::try_from(new).context("NEW_FLOWS")?),
            established6: FlowMap(HashMap::try_from(established6).context("FLOWS6")?),
            new6: FlowMap(HashMap::try_from(new6).context("NEW_FLOWS6")?),
            announcer: None,
        })
    }

    /// From now on each sweep sends the flow sync its refreshes and
    /// closes (from a blocking thread: it waits for room).
    pub fn announce_to(&mut self, out: mpsc::Sender<Vec<FlowRecord>>) {
        self.announcer = Some(Announcer { out, last_sweep_ns: monotonic_ns() });
    }

    /// Every original entry of the established table that is not expired:
    /// what a peer that starts asks for, as refreshes.
    pub fn resync_records(&self, now_ns: u64) -> Result<Vec<FlowRecord>> {
        Ok(self
            .established
            .entries()?
            .iter()
            .filter(|(key, flow)| {
                flow.direction == FLOW_ORIGINAL && life(key.protocol, flow.flags, idle(now_ns, flow)) != Life::Expired
            })
            .map(|(key, flow)| records::from_entry(FlowEvent::Refreshed, key, flow))
            .collect())
    }

    /// Every entry of the established table, both directions.
    pub fn entries(&self) -> Result<Vec<(FlowKey, Flow)>> {
        self.established.entries()
    }

    /// Every entry of the table of new TCP flows, both directions.
    pub fn new_entries(&self) -> Result<Vec<(FlowKey, Flow)>> {
        self.new.entries()
    }

    /// [`Self::entries`] of IPv6.
    pub fn entries6(&self) -> Result<Vec<(FlowKey<Addr6>, Flow<Addr6>)>> {
        self.established6.entries()
    }

    /// [`Self::new_entries`] of IPv6.
    pub fn new_entries6(&self) -> Result<Vec<(FlowKey<Addr6>, Flow<Addr6>)>> {
        self.new6.entries()
    }

    /// Overwrites an entry of the established table: tests age entries
    /// with it.
    #[cfg(feature = "test-hooks")]
    pub fn set(&mut self, key: &FlowKey, flow: &Flow) -> Result<()> {
        Ok(self.established.0.insert(key, flow, 0)?)
    }

    /// [`Self::set`] of IPv6.
    #[cfg(feature = "test-hooks")]
    pub fn set6(&mut self, key: &FlowKey<Addr6>, flow: &Flow<Addr6>) -> Result<()> {
        Ok(self.established6.0.insert(key, flow, 0)?)
    }

    /// `sweep` now, logged; `None` when the table could not be read.
    pub fn sweep_logged(&mut self) -> Option<Sweep> {
        match self.sweep(monotonic_ns()) {
            Ok(sweep) => {
                debug!(
                    "flow tables: {} entries ({} new), {} expired, walked in {:?}",
                    sweep.entries, sweep.new_entries, sweep.expired, sweep.took
                );
                Some(sweep)
            }
            Err(e) => {
                error!("reading flows: {e:#}");
                None
            }
        }
    }

    /// Counts each region's active flows (original entries of established
    /// flows still live: a half-open TCP flow is not active) and deletes the
    /// expired entries of every table, by the data plane's own rule
    /// ([`redirector_common::lifetime`]).
    pub fn sweep(&mut self, now_ns: u64) -> Result<Sweep> {
        let plan = self.plan(now_ns)?;
        Ok(self.finish(plan))
    }

    /// The first half of a sweep: every table read, active flows counted,
    /// the expired entries listed.
    pub fn plan(&self, now_ns: u64) -> Result<SweepPlan> {
        let started = Instant::now();
        let mut active = vec![0u64; MAX_REGIONS as usize];
        let established = self.established.entries()?;
        let expired = survey(&established, now_ns, &mut active);
        // The flow sync carries IPv4 flows: only they are reminded of.
        let refresh = match self.announcer.as_ref().map(|a| a.last_sweep_ns) {
            Some(last_sweep) => established
                .iter()
                .filter(|(key, flow)| {
                    flow.direction == FLOW_ORIGINAL
                        && flow.flags & FLOW_SYNCED == 0
                        && life(key.protocol, flow.flags, idle(now_ns, flow)) != Life::Expired
                        && refresh::due(key, last_sweep, now_ns)
                        && refresh::carried_since_last_reminder(flow.last_seen_ns, now_ns)
                })
                .map(|(key, flow)| records::from_entry(FlowEvent::Refreshed, key, flow))
                .collect(),
            None => Vec::new(),
        };
        let established6 = self.established6.entries()?;
        let expired6 = survey(&established6, now_ns, &mut active);
        let new = self.new.entries()?;
        let new6 = self.new6.entries()?;
        Ok(SweepPlan {
            now_ns,
            started,
            active,
            entries: established.len() + new.len() + established6.len() + new6.len(),
            new_entries: new.len() + new6.len(),
            expired,
            expired_new: handshakes_expired(&new, now_ns),
            expired6,
            expired_new6: handshakes_expired(&new6, now_ns),
            refresh,
        })
    }

    /// The second half: each listed entry deleted if it is still expired.
    /// The data plane may have reused its key since it was read (a client
    /// port reused for a new connection, moments or, if this thread was
    /// held up, seconds later): that entry is live and stays. What is left
    /// is the microseconds between the look and the delete.
    pub fn finish(&mut self, plan: SweepPlan) -> Sweep {
        let now = plan.now_ns;
        let mut expired = 0;
        let mut closed = Vec::new();
        for key in &plan.expired {
            if let Some(flow) = self.established.delete_if(key, |flow| life(key.protocol, flow.flags, idle(now, flow))) {
                expired += 1;
                if flow.direction == FLOW_ORIGINAL && flow.flags & FLOW_SYNCED == 0 {
                    closed.push(records::from_entry(FlowEvent::Closed, key, &flow));
                }
            }
        }
        for key in &plan.expired6 {
            expired += usize::from(self.established6.delete_if(key, |flow| life(key.protocol, flow.flags, idle(now, flow))).is_some());
        }
        for key in &plan.expired_new {
            expired += usize::from(self.new.delete_if(key, |flow| handshake_life(flow.flags, idle(now, flow))).is_some());
        }
        for key in &plan.expired_new6 {
            expired += usize::from(self.new6.delete_if(key, |flow| handshake_life(flow.flags, idle(now, flow))).is_some());
        }
        if let Some(announcer) = &mut self.announcer {
            announcer.last_sweep_ns = now;
            let mut news = plan.refresh;
            news.append(&mut closed);
            if !news.is_empty() && announcer.out.blocking_send(news).is_err() {
                debug!("flow sync gone: the sweep's news are dropped");
            }
        }
        Sweep {
            active: plan.active,
            entries: plan.entries,
            new_entries: plan.new_entries,
            expired,
            took: plan.started.elapsed(),
        }
    }
}

fn idle<A: Address>(now_ns: u64, flow: &Flow<A>) -> u64 {
    now_ns.saturating_sub(flow.last_seen_ns)
}

/// Counts the live original entries of an established table per region
/// into `active`; the keys of its expired entries.
fn survey<A: Address>(entries: &[(FlowKey<A>, Flow<A>)], now_ns: u64, active: &mut [u64]) -> Vec<FlowKey<A>> {
    let mut expired = Vec::new();
    for (key, flow) in entries {
        match life(key.protocol, flow.flags, idle(now_ns, flow)) {
            Life::Expired => expired.push(*key),
            Life::Live if flow.direction == FLOW_ORIGINAL => {
                if let Some(n) = active.get_mut(flow.region_id as usize) {
                    *n += 1;
                }
            }
            Life::Live | Life::Reopenable => {}
        }
    }
    expired
}

/// The keys of a table of new flows whose handshake expired.
fn handshakes_expired<A: Address>(entries: &[(FlowKey<A>, Flow<A>)], now_ns: u64) -> Vec<FlowKey<A>> {
    entries
        .iter()
        .filter(|(_, flow)| handshake_life(flow.flags, idle(now_ns, flow)) == Life::Expired)
        .map(|(key, _)| *key)
        .collect()
}

/// A sweep read but not yet applied ([`FlowTable::plan`]).
pub struct SweepPlan {
    now_ns: u64,
    started: Instant,
    active: Vec<u64>,
    entries: usize,
    new_entries: usize,
    /// Keys of the established table, then of the table of new flows, that
    /// were expired when read; of IPv4, then of IPv6.
    expired: Vec<FlowKey>,
    expired_new: Vec<FlowKey>,
    expired6: Vec<FlowKey<Addr6>>,
    expired_new6: Vec<FlowKey<Addr6>>,
    /// For the flow sync: the flows whose reminder is due.
    refresh: Vec<FlowRecord>,
}

impl<A: Address> FlowMap<A> {
    /// Deletes `key`'s entry if, read again now, `life` says it is
    /// expired; the entry it deleted (an entry already gone is not: the
    /// LRU evicted it meanwhile).
    fn delete_if(&mut self, key: &FlowKey<A>, life: impl Fn(&Flow<A>) -> Life) -> Option<Flow<A>> {
        let flow = self.0.get(key, 0).ok().filter(|flow| life(flow) == Life::Expired)?;
        self.0.remove(key).ok().map(|()| flow)
    }

    /// Every entry, both directions, read `BATCH` at a time. Entries added
    /// or removed by the data plane meanwhile may or may not be seen.
    pub fn entries(&self) -> Result<Vec<(FlowKey<A>, Flow<A>)>> {
        let fd = self.0.map().fd().as_fd().as_raw_fd() as u32;
        let mut keys: Vec<FlowKey<A>> = Vec::with_capacity(BATCH);
        let mut values: Vec<Flow<A>> = Vec::with_capacity(BATCH);
        let mut entries = Vec::new();
        // The kernel's cursor (a bucket index, opaque here): none at first,
        // then where the previous batch ended.
        let mut cursor: Option<u32> = None;
        let mut next = 0u32;
        loop {
            // SAFETY: bpf_attr is plain data, all zeroes is its empty value.
            let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
            attr.batch.in_batch = cursor.as_ref().map_or(0, |c| c as *const u32 as u64);
            attr.batch.out_batch = &mut next as *mut u32 as u64;
            attr.batch.keys = keys.as_mut_ptr() as u64;
            attr.batch.values = values.as_mut_ptr() as u64;
            attr.batch.count = BATCH as u32;
            attr.batch.map_fd = fd;
            // SAFETY: the buffers hold BATCH keys and values of the map's
            // key and value sizes (checked when the map was opened).
            let ret = unsafe {
                libc::syscall(
                    libc::SYS_bpf,
                    bpf_cmd::BPF_MAP_LOOKUP_BATCH as libc::c_long,
                    &mut attr as *mut bpf_attr,
                    size_of::<bpf_attr>(),
                )
            };
            let error = (ret < 0).then(std::io::Error::last_os_error);
            // ENOENT: the walk is over; this last batch may still hold entries.
            let done = error.as_ref().is_some_and(|e| e.raw_os_error() == Some(libc::ENOENT));
            if let Some(e) = error.filter(|_| !done) {
                return Err(e).context("BPF_MAP_LOOKUP_BATCH on a flow table");
            }
            // SAFETY: the kernel wrote `count` (≤ BATCH) keys and values.
            let count = unsafe { attr.batch.count } as usize;
            unsafe {
                keys.set_len(count.min(BATCH));
                values.set_len(count.min(BATCH));
            }
            entries.extend(keys.drain(..).zip(values.drain(..)));
            if done {
                break;
            }
            cursor = Some(next);
        }
        Ok(entries)
    }

}

/// One walk of the flow tables.
#[derive(Clone, Debug, PartialEq)]
pub struct Sweep {
    /// Per region id.
    pub active: Vec<u64>,
    /// Both tables, both directions.
    pub entries: usize,
    /// Of which in the table of new TCP flows.
    pub new_entries: usize,
    pub expired: usize,
    pub took: Duration,
}

/// Sweeps every `period` and sends each sweep (`None`: the table could
/// not be read), the first one period after it starts. A new period takes
/// effect at once. A walk of T is followed by at least T of rest, so a full
/// table under a short period costs at most half a core: samples then come
/// every 2T. Returns when the receiver is gone, or, logged, when a sweep
/// panics (the controller stops on it).
pub async fn sweep_every(mut table: FlowTable, mut period: watch::Receiver<Duration>, out: mpsc::Sender<Option<Sweep>>) {
    let mut next = Instant::now() + *period.borrow_and_update();
    let mut slowed = false;
    loop {
        tokio::select! {
            _ = sleep_until(next.into()) => {}
            changed = period.changed() => if changed.is_err() {
                return;
            },
        }
        let every = *period.borrow_and_update();
        let started = Instant::now();
        let (back, sweep) = match spawn_blocking(move || {
            let sweep = table.sweep_logged();
            (table, sweep)
        })
        .await
        {
            Ok(done) => done,
            Err(e) => return error!("the flow-table sweep failed: {e}"),
        };
        table = back;
        let took = sweep.as_ref().map_or(Duration::ZERO, |s| s.took);
        if (took * 2 > every) != slowed {
            slowed = !slowed;
            if slowed {
                warn!(
                    "walking the flow table takes {took:?}: sampling every {:?} instead of every \
                     {every:?} (balance.sample_ms) keeps it under half a core",
                    took * 2
                );
            } else {
                info!("sampling every {every:?} (balance.sample_ms) again");
            }
        }
        if out.send(sweep).await.is_err() {
            return;
        }
        next = started + every.max(took * 2);
    }
}

/// A peer's flows land in the established table, as the data plane would
/// pin them.
impl FlowStore for FlowTable {
    fn get(&self, key: &FlowKey) -> Option<Flow> {
        self.established.0.get(key, 0).ok()
    }

    fn insert(&mut self, key: &FlowKey, flow: &Flow) -> Result<()> {
        self.established.0.insert(key, flow, 0).context("writing a peer's flow to FLOWS")
    }

    fn remove(&mut self, key: &FlowKey) -> Result<()> {
        match self.established.0.remove(key) {
            Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(aya::maps::MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            other => other.context("deleting a peer's flow from FLOWS"),
        }
    }
}

/// The clock the data plane stamps flows with (`bpf_ktime_get_coarse_ns`
/// is CLOCK_MONOTONIC_COARSE): an entry written from here must not be
/// stamped ahead of it, or the program would read it as idle for ages.
pub fn coarse_monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC_COARSE)
}

/// The data plane's clock (CLOCK_MONOTONIC).
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
