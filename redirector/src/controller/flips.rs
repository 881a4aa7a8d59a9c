//! Selection tables on their way to the data plane. A service's table
//! flips banks at most once per bank-reuse grace: a table decided sooner
//! waits here, the latest decision replacing an earlier one, and is written
//! when the controller is woken at [`Flips::next_due`]. A table whose write
//! failed waits here too, to be tried again. Nothing sleeps.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use crate::{
    config::ServiceAddr,
    dataplane::{Selection, BANK_REUSE_GRACE},
};

#[derive(Default)]
pub(super) struct Flips {
    /// When each service id's table last flipped. By id, as the data
    /// plane's banks are (`SELECTION[id × 2 + bank]`): kept across reloads,
    /// which may give an id to another service.
    last: HashMap<u32, Duration>,
    /// By service id.
    pending: BTreeMap<u32, Pending>,
}

pub(super) struct Pending {
    pub addr: ServiceAddr,
    pub selection: Selection,
    /// When the input that led to it arrived.
    pub trigger: Duration,
    /// The event that announced it, by sequence number.
    pub event: Option<u64>,
    /// Not before this (a failed write is retried later).
    pub not_before: Duration,
}

impl Flips {
    /// Drops what waits: a reload decides anew.
    pub fn forget_pending(&mut self) {
        self.pending.clear();
    }

    pub fn decide(&mut self, service: u32, pending: Pending) {
        self.pending.insert(service, pending);
    }

    /// The event that announced `service`'s waiting table, to be given its
    /// map write time when it is written.
    pub fn announced(&mut self, service: u32, event: u64) {
        if let Some(pending) = self.pending.get_mut(&service) {
            pending.event = Some(event);
        }
    }

    /// Takes the tables that may be written at `now`.
    pub fn due(&mut self, now: Duration) -> Vec<(u32, Pending)> {
        let ready: Vec<u32> = self
            .pending
            .iter()
            .filter(|(&s, p)| self.free_at(s, p) <= now)
            .map(|(&s, _)| s)
            .collect();
        ready
            .into_iter()
            .map(|s| (s, self.pending.remove(&s).expect("listed")))
            .collect()
    }

    pub fn flipped(&mut self, service: u32, at: Duration) {
        self.last.insert(service, at);
    }

    /// The services whose next table waits.
    pub fn waiting(&self) -> impl Iterator<Item = u32> + '_ {
        self.pending.keys().copied()
    }

    /// When the first waiting table may be written.
    pub fn next_due(&self) -> Option<Duration> {
        self.pending.iter().map(|(&s, p)| self.free_at(s, p)).min()
    }

    fn free_at(&self, service: u32, pending: &Pending) -> Duration {
        let grace = self.last.get(&service).map_or(Duration::ZERO, |&at| at + BANK_REUSE_GRACE);
        grace.max(pending.not_before)
    }
}
