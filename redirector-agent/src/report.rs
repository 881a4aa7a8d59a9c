//! The report every heartbeat reply carries.

use std::sync::{Arc, Mutex};

use redirector_proto::heartbeat::Report;

/// The report every reply carries: written by the service check and the
/// load sampler as their results come in, read by the responder, which
/// therefore never waits for either.
#[derive(Clone, Debug, Default)]
pub struct LatestReport(Arc<Mutex<Report>>);

impl LatestReport {
    pub fn get(&self) -> Report {
        *self.lock()
    }

    pub fn update(&self, change: impl FnOnce(&mut Report)) {
        change(&mut self.lock());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Report> {
        // A writer cannot panic halfway through a field assignment, so a
        // poisoned report is still a whole one.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}
