//! Selection tables waiting out the bank-reuse grace. A service's table
//! flips banks at most once per grace; a table decided sooner waits here,
//! the latest decision replacing an earlier one, and is written when the
//! controller is woken at [`Flips::next_due`]. Nothing sleeps.

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
    /// When each service's table last flipped, by address: the data
    /// plane's key, which a reload may give another id.
    last: HashMap<ServiceAddr, Duration>,
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
            .keys()
            .copied()
            .filter(|s| self.free_at(&self.pending[s].addr) <= now)
            .collect();
        ready
            .into_iter()
            .map(|s| (s, self.pending.remove(&s).expect("listed")))
            .collect()
    }

    pub fn flipped(&mut self, addr: ServiceAddr, at: Duration) {
        self.last.insert(addr, at);
    }

    pub fn any_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// When the first waiting table may be written.
    pub fn next_due(&self) -> Option<Duration> {
        self.pending.values().map(|p| self.free_at(&p.addr)).min()
    }

    fn free_at(&self, addr: &ServiceAddr) -> Duration {
        self.last.get(addr).map_or(Duration::ZERO, |&at| at + BANK_REUSE_GRACE)
    }
}
