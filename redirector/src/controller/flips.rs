//! Selection tables waiting out the bank-reuse grace. A service's table
//! flips banks at most once per grace; a table decided sooner waits here,
//! the latest decision replacing an earlier one, and is written when the
//! controller is woken at [`Flips::next_due`]. Nothing sleeps.

use std::{collections::BTreeMap, time::Duration};

use crate::dataplane::{Selection, BANK_REUSE_GRACE};

pub(super) struct Flips {
    /// Per service id: when its table last flipped.
    last: Vec<Option<Duration>>,
    pending: BTreeMap<u32, Pending>,
}

pub(super) struct Pending {
    pub selection: Selection,
    /// When the input that led to it arrived.
    pub trigger: Duration,
    /// The event that announced it, by sequence number.
    pub event: Option<u64>,
}

impl Flips {
    pub fn new(services: usize) -> Self {
        Flips {
            last: vec![None; services],
            pending: BTreeMap::new(),
        }
    }

    /// For a new set of services: none flipped, none waiting.
    pub fn reset(&mut self, services: usize) {
        *self = Flips::new(services);
    }

    pub fn decide(&mut self, service: u32, selection: Selection, trigger: Duration, event: Option<u64>) {
        self.pending.insert(service, Pending { selection, trigger, event });
    }

    /// Takes the tables that may be written at `now`.
    pub fn due(&mut self, now: Duration) -> Vec<(u32, Pending)> {
        let ready: Vec<u32> = self
            .pending
            .keys()
            .copied()
            .filter(|&s| self.free_at(s) <= now)
            .collect();
        ready
            .into_iter()
            .map(|s| (s, self.pending.remove(&s).expect("listed")))
            .collect()
    }

    pub fn flipped(&mut self, service: u32, at: Duration) {
        if let Some(last) = self.last.get_mut(service as usize) {
            *last = Some(at);
        }
    }

    pub fn any_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// When the first waiting table may be written.
    pub fn next_due(&self) -> Option<Duration> {
        self.pending.keys().map(|&s| self.free_at(s)).min()
    }

    fn free_at(&self, service: u32) -> Duration {
        self.last
            .get(service as usize)
            .copied()
            .flatten()
            .map_or(Duration::ZERO, |at| at + BANK_REUSE_GRACE)
    }
}
