//! When the sweep reminds the peers of a flow: every
//! [`SYNC_REFRESH_NS`] each, at a phase its hash gives it, so that the
//! reminders of a busy table spread evenly over the period instead of
//! arriving at a peer all at once (measured: 100 000 refreshes in one burst
//! held a peer's new flows up 0.4 s), whatever the sweep's cadence.

use redirector_common::{flow_hash, lifetime::SYNC_REFRESH_NS, FlowKey, LAST_SEEN_GRANULARITY_NS};

/// Whether `key`'s reminder falls in the sweep that covers
/// (`last_sweep_ns`, `now_ns`]: its phase point passed in between.
pub fn due(key: &FlowKey, last_sweep_ns: u64, now_ns: u64) -> bool {
    let phase = ((u128::from(flow_hash(key)) * u128::from(SYNC_REFRESH_NS)) >> 32) as u64;
    let period = |t: u64| (t + SYNC_REFRESH_NS - phase) / SYNC_REFRESH_NS;
    period(now_ns) != period(last_sweep_ns)
}

/// A flow due is reminded of if a packet passed here since its previous
/// reminder (give or take the data plane's last-seen granularity).
pub fn carried_since_last_reminder(last_seen_ns: u64, now_ns: u64) -> bool {
    last_seen_ns + SYNC_REFRESH_NS + LAST_SEEN_GRANULARITY_NS >= now_ns
}

#[cfg(test)]
mod tests {
    use redirector_common::IPPROTO_UDP;

    use super::*;

    fn key(port: u16) -> FlowKey {
        FlowKey { src_addr: 0x0a00_0002, dst_addr: 0x0a02_0002, src_port: port, dst_port: 53, protocol: IPPROTO_UDP, _pad: [0; 3] }
    }

    /// Sweeps every `step` from `start` over `periods` refresh periods
    /// (the last one shorter if need be): how many times each key was due,
    /// and the most any one sweep had.
    fn sweep(keys: &[FlowKey], start: u64, step: u64, periods: u64) -> (Vec<u64>, usize) {
        let mut times = vec![0; keys.len()];
        let mut busiest = 0;
        let end = start + periods * SYNC_REFRESH_NS;
        let mut last = start;
        while last < end {
            let now = (last + step).min(end);
            let due_now: Vec<usize> = (0..keys.len()).filter(|&i| due(&keys[i], last, now)).collect();
            busiest = busiest.max(due_now.len());
            for i in due_now {
                times[i] += 1;
            }
            last = now;
        }
        (times, busiest)
    }

    #[test]
    fn each_flow_is_due_once_a_period_whatever_the_sweep_cadence() {
        let keys: Vec<FlowKey> = (0..2_000).map(key).collect();
        for step in [100_000_000, 1_000_000_000, 3_700_000_000] {
            let (times, _) = sweep(&keys, 5 * SYNC_REFRESH_NS + 123, step, 6);
            assert!(times.iter().all(|&n| n == 6), "step {step}: {:?}", &times[..10]);
        }
    }

    #[test]
    fn reminders_spread_over_the_period() {
        let keys: Vec<FlowKey> = (0..10_000).map(key).collect();
        // Sweeps every second: a tenth of the flows each, give or take.
        let (_, busiest) = sweep(&keys, SYNC_REFRESH_NS, 1_000_000_000, 3);
        assert!(busiest < 1_200, "{busiest} flows due in one sweep");
    }

    #[test]
    fn a_flow_idle_since_its_last_reminder_is_not_reminded_of() {
        let now = 100 * SYNC_REFRESH_NS;
        assert!(carried_since_last_reminder(now - SYNC_REFRESH_NS, now));
        assert!(!carried_since_last_reminder(now - 2 * SYNC_REFRESH_NS, now));
    }
}
