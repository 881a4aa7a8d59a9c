//! Passive detection: the data plane tells of every SYN a region refused
//! with a reset (`REGION_SIGNALS`); `threshold` of them from one region
//! within `window` take it down at once, without waiting for its checks.
//! Never on one signal: a client knocking at a closed port is not an
//! outage. The checks then bring it back: each must see `rise` successes
//! in a row after the verdict (a false positive costs the region its new
//! flows for that long).
//!
//! [`Detector`] is the pure rule; [`read_signals`] is the edge that reads
//! the ring buffer and hands signals to the controller's loop.

use std::{collections::VecDeque, time::Duration};

use aya::maps::{MapData, RingBuf};
use redirector_common::{RegionSignal, SIGNAL_SYN_REFUSED};
use tokio::{io::unix::AsyncFd, sync::mpsc};
use tracing::warn;

use crate::{
    config::PassiveSettings,
    dataplane::{flow_table::monotonic_ns, ring_record},
};

/// A SYN refused by `region`, seen at `at` (the controller's clock).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Signal {
    pub region: u8,
    pub at: Duration,
}

/// Recent refusals per region, and the rule that turns them into a verdict.
#[derive(Clone, Debug)]
pub struct Detector {
    settings: PassiveSettings,
    recent: Vec<VecDeque<Duration>>,
}

impl Detector {
    pub fn new(settings: PassiveSettings, regions: usize) -> Self {
        Detector { settings, recent: vec![VecDeque::new(); regions] }
    }

    pub fn settings(&self) -> PassiveSettings {
        self.settings
    }

    /// Takes a signal in; returns how many refusals the window held when
    /// they reach the threshold (and forgets them: the next verdict needs
    /// a threshold's worth anew).
    pub fn signal(&mut self, signal: Signal) -> Option<u32> {
        let recent = self.recent.get_mut(signal.region as usize)?;
        while recent.front().is_some_and(|&at| signal.at.saturating_sub(at) > self.settings.window) {
            recent.pop_front();
        }
        recent.push_back(signal.at);
        let count = recent.len() as u32;
        if count < self.settings.threshold {
            return None;
        }
        recent.clear();
        Some(count)
    }
}

/// Reads the data plane's region signals as they come and passes them to
/// the controller's loop, stamped with `now()`. Signals the data plane
/// wrote before this reader started (the pinned ring kept them while no
/// daemon ran: a restart, an upgrade) are dropped: they describe a past
/// that the checks have judged since.
pub async fn read_signals(
    ring: RingBuf<MapData>,
    now: impl Fn() -> Duration,
    signals: mpsc::Sender<Signal>,
) {
    // SAFETY: the AsyncFd owns the ring buffer, which owns the fd: the fd
    // stays open for as long as it is registered.
    let registered = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) };
    let mut ring = match registered {
        Ok(ring) => ring,
        Err(e) => return warn!("passive detection: {e}; regions are judged by their checks alone"),
    };
    let started_ns = monotonic_ns();
    loop {
        let mut guard = match ring.readable_mut().await {
            Ok(guard) => guard,
            Err(e) => return warn!("passive detection: reading signals: {e}; regions are judged by their checks alone"),
        };
        let at = now();
        while let Some(item) = guard.get_inner_mut().next() {
            let Some(raw) = ring_record::<RegionSignal>(&item) else { continue };
            let fresh = raw.at_ns >= started_ns;
            if fresh && raw.kind == SIGNAL_SYN_REFUSED && signals.send(Signal { region: raw.region_id, at }).await.is_err() {
                return;
            }
        }
        guard.clear_ready();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detector(threshold: u32, window_ms: u64) -> Detector {
        Detector::new(PassiveSettings { threshold, window: Duration::from_millis(window_ms) }, 2)
    }

    fn at(region: u8, ms: u64) -> Signal {
        Signal { region, at: Duration::from_millis(ms) }
    }

    #[test]
    fn a_threshold_of_refusals_within_the_window_is_a_verdict() {
        let mut d = detector(3, 1000);
        assert_eq!(d.signal(at(1, 0)), None);
        assert_eq!(d.signal(at(1, 2)), None);
        assert_eq!(d.signal(at(1, 4)), Some(3));
        // Forgotten once judged: the next verdict needs three more.
        assert_eq!(d.signal(at(1, 6)), None);
        assert_eq!(d.signal(at(1, 8)), None);
        assert_eq!(d.signal(at(1, 10)), Some(3));
    }

    #[test]
    fn refusals_spread_wider_than_the_window_never_add_up() {
        let mut d = detector(2, 100);
        for ms in (0..10_000).step_by(101) {
            assert_eq!(d.signal(at(0, ms)), None, "at {ms} ms");
        }
        assert_eq!(d.signal(at(0, 9_999 + 100)), Some(2), "two within 100 ms");
    }

    #[test]
    fn regions_are_counted_apart_and_unknown_ones_ignored() {
        let mut d = detector(2, 1000);
        assert_eq!(d.signal(at(0, 0)), None);
        assert_eq!(d.signal(at(1, 1)), None);
        assert_eq!(d.signal(at(7, 2)), None);
        assert_eq!(d.signal(at(1, 3)), Some(2));
    }
}
