//! Health of regions, from the probe results the checkers feed in.
//!
//! Nothing here reads a clock: every result carries `at`, the time since a
//! fixed origin (the daemon's start), so tests drive time.
//!
//! A check starts `Pending` and gets a verdict from a run of results:
//! `rise` successes in a row make it Up, `fall` misses in a row (failures
//! or timeouts) make it Down, and the same runs move it between Up and Down
//! afterwards. A check still without a verdict after `rise + fall` probes
//! is flapping from the start and is Down: it has not earned new flows.
//!
//! A region is Down as soon as ANY of its checks is Down, Up when all are
//! Up, and Pending otherwise. Each check guards something the others may
//! not see, so one that fails is believed: with the agent killed while the
//! HTTP server lives, the heartbeat check goes down and takes the region
//! down; status still shows the HTTP check up.
//!
//! Pending exists for restarts: the data plane kept forwarding on its last
//! state, and a region the new process knows nothing about yet must not be
//! written Down (which would re-steer its flows) or Up. Pending ends within
//! `(rise + fall) × interval`, since every probe ends in a result.
//!
//! Drain is an operator state on top of health: a drained region takes no
//! new flows while the flows pinned to it continue, unless it goes down.
//! Held down is the operator's other: the region is down whatever its
//! checks say (new flows elsewhere, established flows re-steered) until
//! the operator gives it back to its checks, which go on probing
//! meanwhile.

use std::{fmt, time::Duration};

pub use redirector_proto::probe::Outcome;
use redirector_proto::{model::RegionStatus, probe::ProbeResult};

use crate::config::{CheckKind, RegionConfig};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// No verdict yet since the daemon started.
    Pending,
    Up,
    Down,
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Health::Pending => "pending",
            Health::Up => "up",
            Health::Down => "down",
        })
    }
}

/// The result of one probe of one check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    /// When the result came in.
    pub at: Duration,
    pub outcome: Outcome,
    /// From the probe's start to its result.
    pub latency: Duration,
}

impl Probe {
    pub fn new(at: Duration, result: ProbeResult) -> Probe {
        Probe { at, outcome: result.outcome, latency: result.latency }
    }
}

/// One check of a region, as `redirectorctl status` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckStatus {
    pub kind: CheckKind,
    /// What it probes: an address, or the URL.
    pub target: String,
    pub health: Health,
    /// When `health` last changed (the daemon's start while Pending).
    pub since: Duration,
    /// The current run: at most one of the two is non-zero.
    pub successes: u32,
    pub failures: u32,
    /// Results since the daemon started.
    pub probes: u64,
    pub last: Option<Probe>,
    /// Probes that could not be made here ([`Outcome::Local`]): counted
    /// against nothing, neither a success nor a miss.
    pub local_errors: u64,
    pub last_local: Option<Probe>,
}

impl CheckStatus {
    fn new(kind: CheckKind, target: String, now: Duration) -> Self {
        CheckStatus {
            kind,
            target,
            health: Health::Pending,
            since: now,
            successes: 0,
            failures: 0,
            probes: 0,
            last: None,
            local_errors: 0,
            last_local: None,
        }
    }

    /// Takes a result in; returns why the verdict changed, if it did.
    fn record(&mut self, probe: Probe, rise: u32, fall: u32) -> Option<String> {
        if let Outcome::Local(_) = probe.outcome {
            self.local_errors += 1;
            self.last_local = Some(probe);
            return None;
        }
        self.probes += 1;
        if probe.outcome == Outcome::Success {
            self.successes += 1;
            self.failures = 0;
        } else {
            self.failures += 1;
            self.successes = 0;
        }
        let (health, why) = match self.health {
            Health::Down | Health::Pending if self.successes >= rise => {
                (Health::Up, format!("{} successes in a row", self.successes))
            }
            Health::Up | Health::Pending if self.failures >= fall => (
                Health::Down,
                format!("{} misses in a row, last: {}", self.failures, probe.outcome),
            ),
            Health::Pending if self.probes >= u64::from(rise) + u64::from(fall) => (
                Health::Down,
                format!(
                    "no verdict after {} probes, last: {}",
                    self.probes, probe.outcome
                ),
            ),
            unchanged => (unchanged, String::new()),
        };
        let at = probe.at;
        self.last = Some(probe);
        if health == self.health {
            return None;
        }
        self.health = health;
        self.since = at;
        Some(format!("{} {}: {why}", self.kind, self.target))
    }
}

/// A region's state as the failover policy sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionCondition {
    /// What the checks say.
    pub health: Health,
    pub drained: bool,
    /// Down by the operator's word, whatever `health` says.
    pub held_down: bool,
    /// When this combination of health, drain and hold began.
    pub since: Duration,
}

impl RegionCondition {
    /// May take new flows.
    pub fn eligible(&self) -> bool {
        self.health == Health::Up && !self.drained && !self.held_down
    }

    pub fn status(&self) -> RegionStatus {
        if self.held_down {
            return RegionStatus::Down;
        }
        match (self.health, self.drained) {
            // A dead region's flows must move even if it is being drained.
            (Health::Down, _) => RegionStatus::Down,
            (_, true) => RegionStatus::Draining,
            (Health::Up, false) => RegionStatus::Up,
            (Health::Pending, false) => RegionStatus::Pending,
        }
    }
}

impl fmt::Display for RegionCondition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.health)?;
        if self.drained {
            f.write_str(", draining")?;
        }
        if self.held_down {
            f.write_str(", held down by the operator")?;
        }
        Ok(())
    }
}

/// A change of a region's health, drain or hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub at: Duration,
    pub from: RegionCondition,
    pub to: RegionCondition,
    pub reason: String,
}

#[derive(Clone, Debug)]
pub struct RegionHealth {
    name: String,
    rise: u32,
    fall: u32,
    checks: Vec<CheckStatus>,
    condition: RegionCondition,
}

impl RegionHealth {
    /// Every check Pending as of `now`, the region not drained.
    pub fn new(region: &RegionConfig, now: Duration) -> Self {
        RegionHealth {
            name: region.name.clone(),
            rise: region.health.rise,
            fall: region.health.fall,
            checks: region
                .checks
                .iter()
                .map(|c| CheckStatus::new(c.kind(), c.target(), now))
                .collect(),
            condition: RegionCondition {
                health: Health::Pending,
                drained: false,
                held_down: false,
                since: now,
            },
        }
    }

    /// This region, drained and held down as `was` (a reload that changed
    /// its checks keeps what the operator said).
    pub fn with_operator_state(mut self, was: RegionCondition) -> Self {
        self.condition.drained = was.drained;
        self.condition.held_down = was.held_down;
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn condition(&self) -> RegionCondition {
        self.condition
    }

    /// In the order of the region's `checks`.
    pub fn checks(&self) -> &[CheckStatus] {
        &self.checks
    }

    /// Feeds the result of a probe of check number `check` (its index in
    /// the region's `checks`); a check it does not have changes nothing.
    pub fn record(&mut self, check: usize, probe: Probe) -> Option<Transition> {
        let at = probe.at;
        let status = self.checks.get_mut(check)?;
        // A BFD session applies the multiplier itself (`fall` is its detect
        // multiplier): its state changes are verdicts.
        let (rise, fall) = if status.kind == CheckKind::Bfd { (1, 1) } else { (self.rise, self.fall) };
        let why = status.record(probe, rise, fall)?;
        let health = self.aggregate();
        (health != self.condition.health).then(|| self.change(at, |c| c.health = health, why))
    }

    /// The operator's drain; None if it was already so.
    pub fn set_drained(&mut self, drained: bool, now: Duration) -> Option<Transition> {
        let why = if drained {
            "drained by the operator"
        } else {
            "drain lifted by the operator"
        };
        (drained != self.condition.drained).then(|| self.change(now, |c| c.drained = drained, why.into()))
    }

    /// The operator's hold (`redirectorctl down`), or its end (`up`: the
    /// checks decide again); None if it was already so.
    pub fn set_held_down(&mut self, held_down: bool, now: Duration) -> Option<Transition> {
        let why = if held_down {
            "put down by the operator"
        } else {
            "given back to its checks by the operator"
        };
        (held_down != self.condition.held_down).then(|| self.change(now, |c| c.held_down = held_down, why.into()))
    }

    /// Passive detection's verdict: down now, whatever the checks last
    /// said, and each check must then see `rise` successes in a row to
    /// bring the region back. None unless the region was up.
    pub fn force_down(&mut self, at: Duration, why: String) -> Option<Transition> {
        if self.condition.health != Health::Up {
            return None;
        }
        for check in &mut self.checks {
            check.health = Health::Down;
            check.since = at;
            check.successes = 0;
        }
        Some(self.change(at, |c| c.health = Health::Down, why))
    }

    fn aggregate(&self) -> Health {
        let any = |h| self.checks.iter().any(|c| c.health == h);
        if any(Health::Down) {
            Health::Down
        } else if any(Health::Pending) {
            Health::Pending
        } else {
            Health::Up
        }
    }

    fn change(&mut self, at: Duration, update: impl FnOnce(&mut RegionCondition), reason: String) -> Transition {
        let from = self.condition;
        update(&mut self.condition);
        self.condition.since = at;
        Transition {
            at,
            from,
            to: self.condition,
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Check, HealthSettings};

    const T: Duration = Duration::from_millis(100);

    fn region(checks: usize) -> RegionHealth {
        let config = RegionConfig {
            id: 0,
            name: "region1".into(),
            address: "10.1.0.2".parse().unwrap(),
            address6: None,
            priority: 100,
            health: HealthSettings {
                interval: T,
                fall: 3,
                rise: 3,
                timeout: T,
            },
            weight: 1,
            pps: None,
            flows: None,
            cpu: None,
            checks: [
                Check::Heartbeat {
                    address: "10.1.0.2:7946".parse().unwrap(),
                    key_file: None,
                },
                Check::Tcp {
                    address: "10.1.0.2:80".parse().unwrap(),
                },
            ][..checks]
                .to_vec(),
        };
        RegionHealth::new(&config, Duration::ZERO)
    }

    /// Feeds one result per probe interval into `check`, starting at
    /// `*clock`; returns the transitions, with the probe number each came at.
    fn feed(
        r: &mut RegionHealth,
        check: usize,
        clock: &mut Duration,
        outcomes: &[Outcome],
    ) -> Vec<(usize, Transition)> {
        let mut transitions = Vec::new();
        for (i, outcome) in outcomes.iter().enumerate() {
            *clock += T;
            let probe = Probe {
                at: *clock,
                outcome: outcome.clone(),
                latency: Duration::from_millis(2),
            };
            transitions.extend(r.record(check, probe).map(|t| (i + 1, t)));
        }
        transitions
    }

    fn ok(n: usize) -> Vec<Outcome> {
        vec![Outcome::Success; n]
    }

    fn miss(n: usize) -> Vec<Outcome> {
        vec![Outcome::Timeout; n]
    }

    #[test]
    fn a_bfd_sessions_state_changes_are_verdicts_at_once() {
        let mut r = region(1);
        r.checks[0].kind = CheckKind::Bfd;
        let mut clock = Duration::ZERO;
        let up = feed(&mut r, 0, &mut clock, &ok(1));
        assert_eq!((up.len(), up[0].0, up[0].1.to.health), (1, 1, Health::Up), "one report of Up, not rise (3)");
        let failed = Outcome::Failure("session down (control detection time expired)".into());
        let down = feed(&mut r, 0, &mut clock, &[failed]);
        assert_eq!((down.len(), down[0].1.to.health), (1, Health::Down), "the session's detection is the multiplier");
        assert!(down[0].1.reason.starts_with("bfd 10.1.0.2:7946: 1 misses in a row"), "{}", down[0].1.reason);
    }

    #[test]
    fn a_region_starts_pending_and_leaves_the_data_plane_alone() {
        let r = region(1);
        assert_eq!(r.condition().health, Health::Pending);
        assert_eq!(r.condition().status(), RegionStatus::Pending);
        assert_eq!((r.checks()[0].kind, r.checks()[0].target.as_str()), (CheckKind::Heartbeat, "10.1.0.2:7946"));
    }

    #[test]
    fn rise_successes_bring_a_pending_region_up() {
        let mut r = region(1);
        let mut clock = Duration::ZERO;
        let t = feed(&mut r, 0, &mut clock, &ok(3));
        assert_eq!(t.len(), 1);
        let (probe, t) = &t[0];
        assert_eq!(*probe, 3);
        assert_eq!(
            (t.from.health, t.to.health, t.at),
            (Health::Pending, Health::Up, 3 * T)
        );
        assert_eq!(t.reason, "heartbeat 10.1.0.2:7946: 3 successes in a row");
        assert_eq!(r.condition().status(), RegionStatus::Up);
        assert_eq!(r.condition().since, 3 * T);
    }

    #[test]
    fn fall_misses_take_it_down_and_fewer_do_not() {
        let mut r = region(1);
        let mut clock = Duration::ZERO;
        feed(&mut r, 0, &mut clock, &ok(3));
        let mut outcomes = miss(2);
        outcomes.push(Outcome::Success);
        assert!(
            feed(&mut r, 0, &mut clock, &outcomes).is_empty(),
            "two misses are noise"
        );
        let t = feed(
            &mut r,
            0,
            &mut clock,
            &[miss(2), vec![Outcome::Failure("connection refused".into())]].concat(),
        );
        assert_eq!(t.len(), 1);
        assert_eq!((t[0].0, t[0].1.to.health), (3, Health::Down));
        assert_eq!(
            t[0].1.reason,
            "heartbeat 10.1.0.2:7946: 3 misses in a row, last: failed: connection refused"
        );
        assert_eq!(r.condition().status(), RegionStatus::Down);
        let check = &r.checks()[0];
        assert_eq!((check.failures, check.successes, check.probes), (3, 0, 9));
        assert_eq!(check.since, clock);
    }

    #[test]
    fn a_down_region_needs_rise_successes_in_a_row_to_come_back() {
        let mut r = region(1);
        let mut clock = Duration::ZERO;
        feed(&mut r, 0, &mut clock, &miss(3));
        assert_eq!(r.condition().health, Health::Down);
        let flaky = [ok(2), miss(1), ok(2)].concat();
        assert!(feed(&mut r, 0, &mut clock, &flaky).is_empty());
        let t = feed(&mut r, 0, &mut clock, &ok(1));
        assert_eq!(t[0].1.to.health, Health::Up);
    }

    #[test]
    fn a_check_flapping_from_the_start_is_down_after_rise_plus_fall_probes() {
        let mut r = region(1);
        let mut clock = Duration::ZERO;
        let flapping = [ok(2), miss(1), ok(2), miss(1)].concat();
        let t = feed(&mut r, 0, &mut clock, &flapping);
        assert_eq!(t.len(), 1);
        assert_eq!((t[0].0, t[0].1.to.health), (6, Health::Down));
        assert_eq!(
            t[0].1.reason,
            "heartbeat 10.1.0.2:7946: no verdict after 6 probes, last: timeout"
        );
    }

    #[test]
    fn one_down_check_takes_the_region_down_whatever_the_others_say() {
        // The agent is killed while the service still answers TCP.
        let mut r = region(2);
        let mut clock = Duration::ZERO;
        feed(&mut r, 0, &mut clock, &ok(3));
        assert_eq!(
            r.condition().health,
            Health::Pending,
            "the tcp check has no verdict yet"
        );
        let mut tcp_clock = Duration::ZERO;
        let t = feed(&mut r, 1, &mut tcp_clock, &ok(3));
        assert_eq!(t[0].1.to.health, Health::Up);

        let t = feed(&mut r, 0, &mut clock, &miss(3));
        assert_eq!(t[0].1.to.health, Health::Down);
        assert!(t[0].1.reason.starts_with("heartbeat "));
        assert!(
            feed(&mut r, 1, &mut tcp_clock, &ok(5)).is_empty(),
            "tcp alone cannot bring it back"
        );
        assert_eq!(r.checks()[1].health, Health::Up);

        let t = feed(&mut r, 0, &mut clock, &ok(3));
        assert_eq!(t[0].1.to.health, Health::Up);
    }

    #[test]
    fn a_region_down_on_one_check_gets_no_verdict_from_the_other_pending_one() {
        let mut r = region(2);
        let mut clock = Duration::ZERO;
        let t = feed(&mut r, 0, &mut clock, &miss(3));
        assert_eq!(
            t[0].1.to.health,
            Health::Down,
            "no need to wait for the tcp check"
        );
    }

    #[test]
    fn the_last_result_of_each_check_is_kept() {
        let mut r = region(2);
        let mut clock = Duration::ZERO;
        feed(
            &mut r,
            1,
            &mut clock,
            &[Outcome::Failure("connection refused".into())],
        );
        let last = r.checks()[1].last.as_ref().unwrap();
        assert_eq!(last.at, T);
        assert_eq!(last.outcome.to_string(), "failed: connection refused");
        assert_eq!(last.latency, Duration::from_millis(2));
        assert_eq!(r.checks()[0].last, None);
    }

    #[test]
    fn a_probe_that_could_not_run_here_counts_neither_way() {
        let mut r = region(1);
        let mut clock = Duration::ZERO;
        feed(&mut r, 0, &mut clock, &ok(3));
        let local = vec![Outcome::Local("connect: Too many open files (os error 24)".into()); 10];
        let t = feed(&mut r, 0, &mut clock, &[miss(2), local, miss(0)].concat());
        assert!(t.is_empty(), "two misses, then local errors: no verdict change");
        let check = &r.checks()[0];
        assert_eq!((check.failures, check.local_errors, check.probes), (2, 10, 5));
        assert_eq!(check.last.as_ref().unwrap().outcome, Outcome::Timeout, "the last real result");
        assert!(matches!(check.last_local.as_ref().unwrap().outcome, Outcome::Local(_)));
        let t = feed(&mut r, 0, &mut clock, &miss(1));
        assert_eq!(t[0].1.to.health, Health::Down, "the third real miss in a row");
    }

    #[test]
    fn a_result_for_a_check_the_region_does_not_have_changes_nothing() {
        let mut r = region(1);
        let probe = Probe { at: T, outcome: Outcome::Timeout, latency: T };
        assert_eq!(r.record(1, probe), None);
        assert_eq!(r.checks()[0].probes, 0);
    }

    #[test]
    fn drain_keeps_health_and_turns_the_data_plane_state_to_draining() {
        let mut r = region(1);
        let mut clock = Duration::ZERO;
        let t = r.set_drained(true, clock).unwrap();
        assert_eq!(t.to.to_string(), "pending, draining");
        assert_eq!(r.condition().status(), RegionStatus::Draining);
        assert!(
            r.set_drained(true, clock).is_none(),
            "no change, no transition"
        );

        feed(&mut r, 0, &mut clock, &ok(3));
        assert_eq!(r.condition().health, Health::Up);
        assert!(!r.condition().eligible());
        assert_eq!(r.condition().status(), RegionStatus::Draining);

        let t = feed(&mut r, 0, &mut clock, &miss(3));
        assert_eq!(t[0].1.to.to_string(), "down, draining");
        assert_eq!(
            r.condition().status(),
            RegionStatus::Down,
            "flows leave a dead region"
        );

        feed(&mut r, 0, &mut clock, &ok(3));
        let t = r.set_drained(false, clock).unwrap();
        assert_eq!(
            (t.reason.as_str(), t.to.since),
            ("drain lifted by the operator", clock)
        );
        assert!(r.condition().eligible());
        assert_eq!(r.condition().status(), RegionStatus::Up);
    }

    #[test]
    fn held_down_is_down_whatever_the_checks_say_until_given_back_to_them() {
        let mut r = region(1);
        let mut clock = Duration::ZERO;
        feed(&mut r, 0, &mut clock, &ok(3));
        assert!(r.condition().eligible());

        let t = r.set_held_down(true, clock).unwrap();
        assert_eq!((t.reason.as_str(), t.to.to_string()), ("put down by the operator", "up, held down by the operator".into()));
        assert_eq!(r.condition().status(), RegionStatus::Down, "its flows move");
        assert!(!r.condition().eligible());
        assert!(r.set_held_down(true, clock).is_none(), "no change, no transition");

        // The checks go on, and their verdict is the region's once given back.
        let t = feed(&mut r, 0, &mut clock, &miss(3));
        assert_eq!(t[0].1.to.to_string(), "down, held down by the operator");
        let t = r.set_held_down(false, clock).unwrap();
        assert_eq!((t.reason.as_str(), t.to.to_string()), ("given back to its checks by the operator", "down".into()));
        assert_eq!(r.condition().status(), RegionStatus::Down, "its checks still fail");
        feed(&mut r, 0, &mut clock, &ok(3));
        assert_eq!(r.condition().status(), RegionStatus::Up);

        // Drained and held down: down; the hold lifted: draining again.
        r.set_drained(true, clock);
        r.set_held_down(true, clock);
        assert_eq!(r.condition().status(), RegionStatus::Down);
        r.set_held_down(false, clock);
        assert_eq!(r.condition().status(), RegionStatus::Draining);
    }
}
