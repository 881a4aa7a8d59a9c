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
    map_names, Flow, FlowKey, FLOW_ORIGINAL, MAX_REGIONS,
};
use tokio::{
    sync::{mpsc, watch},
    task::spawn_blocking,
    time::sleep_until,
};
use tracing::{debug, error, info, warn};

/// Entries per `BPF_MAP_LOOKUP_BATCH`. The kernel returns a hash bucket
/// whole or not at all, so this must exceed any bucket's length (a few).
const BATCH: usize = 4096;

/// Handles on the two pinned flow maps (established flows and new TCP
/// flows), independent of the loader's.
pub struct FlowTable {
    established: FlowMap,
    new: FlowMap,
}

/// One flow map, read in batches.
struct FlowMap(HashMap<MapData, FlowKey, Flow>);

impl FlowTable {
    pub fn open(pin_path: &Path) -> Result<Self> {
        let open = |name: &str| -> Result<Map> {
            let path = pin_path.join(name);
            let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
            Ok(Map::from_map_data(data)?)
        };
        Self::from_maps(open(map_names::FLOWS)?, open(map_names::NEW_FLOWS)?)
    }

    pub fn from_maps(established: Map, new: Map) -> Result<Self> {
        Ok(Self {
            established: FlowMap(HashMap::try_from(established).context("FLOWS")?),
            new: FlowMap(HashMap::try_from(new).context("NEW_FLOWS")?),
        })
    }

    /// Every entry of the established table, both directions.
    pub fn entries(&self) -> Result<Vec<(FlowKey, Flow)>> {
        self.established.entries()
    }

    /// Every entry of the table of new TCP flows, both directions.
    pub fn new_entries(&self) -> Result<Vec<(FlowKey, Flow)>> {
        self.new.entries()
    }

    /// Overwrites an entry of the established table: tests age entries
    /// with it.
    #[cfg(feature = "test-hooks")]
    pub fn set(&mut self, key: &FlowKey, flow: &Flow) -> Result<()> {
        Ok(self.established.0.insert(key, flow, 0)?)
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
    /// expired entries of both tables, by the data plane's own rule
    /// ([`redirector_common::lifetime`]).
    pub fn sweep(&mut self, now_ns: u64) -> Result<Sweep> {
        let started = Instant::now();
        let mut active = vec![0u64; MAX_REGIONS as usize];
        let mut expired = 0;
        let established = self.established.entries()?;
        for (key, flow) in &established {
            match life(key.protocol, flow.flags, now_ns.saturating_sub(flow.last_seen_ns)) {
                // Already gone if the data plane's LRU evicted it meanwhile.
                Life::Expired => expired += usize::from(self.established.0.remove(key).is_ok()),
                Life::Live if flow.direction == FLOW_ORIGINAL => {
                    if let Some(n) = active.get_mut(flow.region_id as usize) {
                        *n += 1;
                    }
                }
                Life::Live | Life::Reopenable => {}
            }
        }
        let new = self.new.entries()?;
        for (key, flow) in &new {
            if handshake_life(flow.flags, now_ns.saturating_sub(flow.last_seen_ns)) == Life::Expired {
                expired += usize::from(self.new.0.remove(key).is_ok());
            }
        }
        Ok(Sweep {
            active,
            entries: established.len() + new.len(),
            new_entries: new.len(),
            expired,
            took: started.elapsed(),
        })
    }
}

impl FlowMap {
    /// Every entry, both directions, read `BATCH` at a time. Entries added
    /// or removed by the data plane meanwhile may or may not be seen.
    pub fn entries(&self) -> Result<Vec<(FlowKey, Flow)>> {
        let fd = self.0.map().fd().as_fd().as_raw_fd() as u32;
        let mut keys: Vec<FlowKey> = Vec::with_capacity(BATCH);
        let mut values: Vec<Flow> = Vec::with_capacity(BATCH);
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
                return Err(e).context("BPF_MAP_LOOKUP_BATCH on FLOWS");
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

/// The data plane's clock (CLOCK_MONOTONIC).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
