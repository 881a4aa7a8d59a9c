//! The policies on a simulated clock: fall, rise, preempt, preempt delay,
//! flap limit, all-down, overrides, drain, weights, spill, watermarks, dwell.

use super::*;
use crate::{config::Measure, health::Transition};

const R1: u8 = 0;
const R2: u8 = 1;
const R3: u8 = 2;

/// region1 (100), region2 (200), region3 (50); "web" is served by all
/// three, "dns" by region1 and region3.
fn config(failover: &str) -> Config {
    let mut text = format!("interfaces = [\"eth0\"]\n[failover]\n{failover}\n");
    for (i, priority) in [100, 200, 50].into_iter().enumerate() {
        let n = i + 1;
        text += &format!(
            "[[region]]\nname = \"region{n}\"\naddress = \"10.{n}.0.2\"\npriority = {priority}\n\
             checks = [{{ kind = \"tcp\", address = \"10.{n}.0.2:80\" }}]\n"
        );
    }
    text += "[[service]]\nname = \"web\"\nvip = \"10.2.0.2\"\nport = 80\nprotocol = \"tcp\"\n\
             regions = [\"region1\", \"region2\", \"region3\"]\n";
    text += "[[service]]\nname = \"dns\"\nvip = \"10.2.0.2\"\nport = 53\nprotocol = \"udp\"\n\
             regions = [\"region1\", \"region3\"]\n";
    Config::parse(&text, "policy.toml").unwrap()
}

/// A policy and the regions' states on a simulated clock.
struct Lab {
    policy: Policy,
    conditions: Vec<RegionCondition>,
    now: Duration,
    events: Vec<Event>,
}

impl Lab {
    fn new(failover: &str) -> Lab {
        let pending = RegionCondition {
            health: Health::Pending,
            drained: false,
            held_down: false,
            since: Duration::ZERO,
        };
        Lab {
            policy: Policy::new(&config(failover)),
            conditions: vec![pending; 3],
            now: Duration::ZERO,
            events: Vec::new(),
        }
    }

    /// Every region up, web on region2, at t = 1 s.
    fn settled(failover: &str) -> Lab {
        let mut lab = Lab::new(failover);
        lab.at_ms(1000);
        for r in [R1, R2, R3] {
            lab.set(r, Health::Up);
        }
        assert_eq!(lab.web(), (Some("region2"), true));
        lab.events.clear();
        lab
    }

    fn at_ms(&mut self, ms: u64) {
        self.now = Duration::from_millis(ms);
    }

    fn set(&mut self, region: u8, health: Health) {
        let condition = &mut self.conditions[region as usize];
        if condition.health != health {
            *condition = RegionCondition { health, since: self.now, ..*condition };
        }
    }

    fn drain(&mut self, region: u8, drained: bool) {
        let condition = &mut self.conditions[region as usize];
        condition.drained = drained;
        condition.since = self.now;
    }

    fn evaluate(&mut self) -> Vec<Decision> {
        let e = self.policy.evaluate(self.now, &self.conditions);
        self.events.extend(e.events);
        e.decisions
    }

    /// Evaluates; web's active region and whether it changed.
    fn web(&mut self) -> (Option<&'static str>, bool) {
        let d = &self.evaluate()[0];
        (
            d.single()
                .map(|r| ["region1", "region2", "region3"][r as usize]),
            d.changed,
        )
    }

    fn note(&self) -> Option<String> {
        self.policy.snapshot()[0].note.clone()
    }

    fn web_events(&self) -> impl DoubleEndedIterator<Item = &Event> {
        self.events
            .iter()
            .filter(|e| e.subject == Subject::Service(0))
    }

    fn last_reason(&self) -> &str {
        &self.web_events().next_back().unwrap().reason
    }
}

#[test]
fn nothing_is_decided_until_every_region_has_a_verdict() {
    let mut lab = Lab::new("");
    lab.set(R2, Health::Up);
    lab.set(R3, Health::Up);
    assert_eq!(lab.web(), (None, false));
    assert_eq!(lab.note().as_deref(), Some(WAITING));
    lab.at_ms(300);
    lab.set(R1, Health::Up);
    assert_eq!(lab.web(), (Some("region2"), true));
    assert_eq!(
        lab.last_reason(),
        "region2 is the eligible region of highest priority"
    );
    assert_eq!(lab.note(), None);
    assert_eq!(
        lab.web(),
        (Some("region2"), false),
        "no change, nothing to write"
    );
}

#[test]
fn the_first_listed_wins_among_equal_priorities() {
    let mut lab = Lab::new("");
    lab.policy.regions[R3 as usize].config.priority = 100;
    for r in [R1, R2, R3] {
        lab.set(r, if r == R2 { Health::Down } else { Health::Up });
    }
    assert_eq!(lab.web(), (Some("region1"), true));
}

#[test]
fn failover_is_immediate_and_failback_preempts() {
    let mut lab = Lab::settled("");
    lab.at_ms(2000);
    lab.set(R2, Health::Down);
    assert_eq!(lab.web(), (Some("region1"), true));
    let e = lab.web_events().next_back().unwrap();
    assert_eq!(
        (
            e.subject,
            e.from.as_str(),
            e.to.as_str(),
            e.reason.as_str(),
            e.at
        ),
        (
            Subject::Service(0),
            "region2",
            "region1",
            "failover: region2 down",
            Duration::from_secs(2)
        )
    );
    lab.at_ms(3000);
    lab.set(R2, Health::Up);
    assert_eq!(lab.web(), (Some("region2"), true));
    assert_eq!(
        lab.last_reason(),
        "failback: region2 (priority 200) preempts region1 (priority 100)"
    );
}

#[test]
fn failback_waits_for_the_preempt_delay_which_restarts_if_the_region_flaps() {
    let mut lab = Lab::settled("preempt_delay_ms = 2000");
    lab.at_ms(2000);
    lab.set(R2, Health::Down);
    assert_eq!(lab.web(), (Some("region1"), true));
    lab.at_ms(3000);
    lab.set(R2, Health::Up);
    assert_eq!(lab.web(), (Some("region1"), false));
    assert_eq!(
        lab.policy.next_deadline(),
        Some(Duration::from_millis(5000))
    );
    assert_eq!(
        lab.note().as_deref(),
        Some("region2 takes new flows once eligible for 2000 ms (preempt_delay_ms)")
    );
    lab.at_ms(4000);
    lab.set(R2, Health::Down);
    assert_eq!(lab.web(), (Some("region1"), false));
    assert_eq!(lab.policy.next_deadline(), None);
    lab.at_ms(4500);
    lab.set(R2, Health::Up);
    lab.at_ms(6499);
    assert_eq!(lab.web(), (Some("region1"), false));
    lab.at_ms(6500);
    assert_eq!(lab.web(), (Some("region2"), true));
}

#[test]
fn without_preempt_the_active_region_keeps_new_flows_while_eligible() {
    let mut lab = Lab::settled("preempt = false");
    lab.at_ms(2000);
    lab.set(R2, Health::Down);
    assert_eq!(lab.web(), (Some("region1"), true));
    lab.at_ms(3000);
    lab.set(R2, Health::Up);
    assert_eq!(lab.web(), (Some("region1"), false));
    lab.at_ms(9000);
    assert_eq!(lab.web(), (Some("region1"), false));
    lab.set(R1, Health::Down);
    assert_eq!(
        lab.web(),
        (Some("region2"), true),
        "failover picks the best"
    );
}

#[test]
fn the_flap_limit_defers_failback_but_never_failover() {
    let mut lab = Lab::settled("max_switches_per_minute = 2");
    lab.at_ms(10_000);
    lab.set(R2, Health::Down);
    assert_eq!(lab.web(), (Some("region1"), true));
    lab.at_ms(11_000);
    lab.set(R2, Health::Up);
    assert_eq!(lab.web(), (Some("region2"), true));
    lab.at_ms(12_000);
    lab.set(R2, Health::Down);
    assert_eq!(
        lab.web(),
        (Some("region1"), true),
        "a third switch, off a dead region"
    );
    lab.at_ms(13_000);
    lab.set(R2, Health::Up);
    assert_eq!(lab.web(), (Some("region1"), false));
    let deferred =
        "switch to region2 deferred: 3 switches in the last 60 s (max_switches_per_minute = 2)";
    assert_eq!(lab.note().as_deref(), Some(deferred));
    assert_eq!(lab.last_reason(), deferred);
    let events = lab.events.len();
    assert_eq!(lab.web(), (Some("region1"), false));
    assert_eq!(
        lab.events.len(),
        events,
        "a standing deferral is reported once"
    );
    // The switches at 10 s and 11 s leave the window at 70 s and 71 s.
    assert_eq!(lab.policy.next_deadline(), Some(Duration::from_secs(70)));
    lab.at_ms(70_000);
    assert_eq!(lab.web(), (Some("region1"), false));
    assert_eq!(lab.policy.next_deadline(), Some(Duration::from_secs(71)));
    lab.at_ms(71_000);
    assert_eq!(lab.web(), (Some("region2"), true));
    assert_eq!(lab.note(), None);
}

#[test]
fn all_down_keep_last_keeps_steering_to_the_last_active_region() {
    let mut lab = Lab::settled("");
    lab.at_ms(2000);
    for r in [R1, R2, R3] {
        lab.set(r, Health::Down);
    }
    assert_eq!(lab.web(), (Some("region2"), false));
    assert_eq!(
        lab.last_reason(),
        "no eligible region: new flows stay on region2 (all_down = keep-last)"
    );
    lab.at_ms(3000);
    lab.set(R3, Health::Up);
    assert_eq!(lab.web(), (Some("region3"), true));
    assert_eq!(lab.last_reason(), "failover: region2 down");
}

#[test]
fn all_down_drop_selects_nowhere_until_a_region_comes_back() {
    let mut lab = Lab::settled("all_down = \"drop\"");
    lab.at_ms(2000);
    for r in [R1, R2, R3] {
        lab.set(r, Health::Down);
    }
    assert_eq!(lab.web(), (None, true));
    let said: Vec<_> = lab
        .web_events()
        .map(|e| (e.from.as_str(), e.to.as_str(), e.reason.as_str()))
        .collect();
    assert_eq!(said, [("region2", "none", DROPPING)], "said once");
    assert_eq!(lab.web(), (None, false));
    assert_eq!(lab.note().as_deref(), Some(DROPPING));
    lab.at_ms(3000);
    lab.set(R1, Health::Up);
    assert_eq!(lab.web(), (Some("region1"), true));
}

#[test]
fn drain_moves_new_flows_off_at_once_and_lifting_it_fails_back() {
    let mut lab = Lab::settled("preempt_delay_ms = 500");
    lab.at_ms(2000);
    lab.drain(R2, true);
    assert_eq!(lab.web(), (Some("region1"), true));
    assert_eq!(lab.last_reason(), "failover: region2 draining");
    lab.at_ms(3000);
    lab.drain(R2, false);
    assert_eq!(lab.web(), (Some("region1"), false));
    lab.at_ms(3500);
    assert_eq!(lab.web(), (Some("region2"), true));
}

#[test]
fn set_active_pins_new_flows_at_once_and_auto_hands_back() {
    let mut lab = Lab::settled("preempt_delay_ms = 5000");
    lab.at_ms(2000);
    let events = lab.policy.set_active(lab.now, "region3", Some("web")).unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(
        events[0].reason,
        "set-active region3: new flows sent there by the operator"
    );
    assert_eq!(
        lab.web(),
        (Some("region3"), true),
        "no preempt delay for the operator"
    );
    assert_eq!(lab.last_reason(), "set-active region3 (operator)");
    assert_eq!(lab.policy.snapshot()[0].set_active, Some(R3));
    lab.at_ms(3000);
    lab.policy.set_active(lab.now, "region1", Some("web")).unwrap();
    assert_eq!(lab.web(), (Some("region1"), true));

    lab.at_ms(4000);
    let events = lab.policy.set_auto(lab.now, Some("web")).unwrap();
    assert_eq!(
        events[0].reason,
        "set-active --auto: the policy decides again"
    );
    assert_eq!(lab.policy.snapshot()[0].set_active, None);
    assert_eq!(
        lab.web(),
        (Some("region1"), false),
        "region2 has been up 3 s of 5"
    );
    lab.at_ms(6000);
    assert_eq!(lab.web(), (Some("region2"), true));
}

#[test]
fn operator_switches_are_neither_limited_nor_counted() {
    let mut lab = Lab::settled("max_switches_per_minute = 1");
    lab.at_ms(2000);
    lab.set(R2, Health::Down);
    assert_eq!(lab.web(), (Some("region1"), true));
    lab.at_ms(3000);
    lab.set(R2, Health::Up);
    assert_eq!(lab.web(), (Some("region1"), false), "failback deferred");
    lab.policy.set_active(lab.now, "region2", Some("web")).unwrap();
    assert_eq!(lab.web(), (Some("region2"), true));
    lab.policy.set_active(lab.now, "region3", Some("web")).unwrap();
    assert_eq!(lab.web(), (Some("region3"), true));
    lab.policy.set_auto(lab.now, Some("web")).unwrap();
    assert_eq!(
        lab.web(),
        (Some("region3"), false),
        "the failover at 2 s still counts"
    );
    assert_eq!(lab.policy.next_deadline(), Some(Duration::from_secs(62)));
    lab.at_ms(62_000);
    assert_eq!(lab.web(), (Some("region2"), true));
}

#[test]
fn a_set_active_region_going_down_suspends_the_override_until_it_is_back() {
    let mut lab = Lab::settled("preempt_delay_ms = 1000");
    lab.policy.set_active(lab.now, "region3", Some("web")).unwrap();
    assert_eq!(lab.web(), (Some("region3"), true));
    lab.at_ms(2000);
    lab.set(R3, Health::Down);
    assert_eq!(lab.web(), (Some("region2"), true));
    let reasons: Vec<&str> = lab
        .web_events()
        .rev()
        .take(2)
        .map(|e| e.reason.as_str())
        .collect();
    assert_eq!(
        reasons,
        ["override suspended: region3 down", "failover: region3 down"]
    );
    let status = &lab.policy.snapshot()[0];
    assert_eq!(status.set_active, Some(R3));
    assert_eq!(
        status.note.as_deref(),
        Some("override suspended: region3 down")
    );

    lab.at_ms(3000);
    lab.set(R3, Health::Up);
    assert_eq!(
        lab.web(),
        (Some("region2"), false),
        "resuming waits like a failback"
    );
    lab.at_ms(4000);
    assert_eq!(lab.web(), (Some("region3"), true));
    assert_eq!(
        lab.last_reason(),
        "override resumed: region3 eligible again"
    );
    assert_eq!(lab.note(), None);
}

#[test]
fn a_suspended_override_resumes_at_once_when_the_stand_in_dies() {
    let mut lab = Lab::settled("preempt_delay_ms = 1000");
    lab.policy.set_active(lab.now, "region3", Some("web")).unwrap();
    lab.web();
    lab.at_ms(2000);
    lab.set(R3, Health::Down);
    assert_eq!(lab.web(), (Some("region2"), true));
    lab.at_ms(3000);
    lab.set(R3, Health::Up);
    lab.set(R2, Health::Down);
    assert_eq!(lab.web(), (Some("region3"), true));
}

#[test]
fn set_active_without_a_service_pins_every_service_the_region_serves() {
    let mut lab = Lab::settled("");
    let events = lab.policy.set_active(lab.now, "region2", None).unwrap();
    assert_eq!(events.len(), 1, "dns is not served by region2");
    let events = lab.policy.set_active(lab.now, "region1", None).unwrap();
    assert_eq!(events.len(), 2);
    let d = lab.evaluate();
    assert_eq!((d[0].single(), d[1].single()), (Some(R1), Some(R1)));
    assert_eq!(lab.policy.set_auto(lab.now, None).unwrap().len(), 2);
    assert!(
        lab.policy.set_auto(lab.now, None).unwrap().is_empty(),
        "nothing left to unpin"
    );
    let d = lab.evaluate();
    assert_eq!((d[0].single(), d[1].single()), (Some(R2), Some(R1)));
}

#[test]
fn set_active_refuses_what_does_not_exist() {
    let mut lab = Lab::settled("");
    let err = lab.policy.set_active(lab.now, "region9", None).unwrap_err();
    assert_eq!(
        err.to_string(),
        "unknown region \"region9\" (known: region1, region2, region3)"
    );
    let err = lab
        .policy
        .set_active(lab.now, "region1", Some("mail"))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "unknown service \"mail\" (known: web, dns)"
    );
    let err = lab.policy.set_active(lab.now, "region2", Some("dns")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "service \"dns\" is not served by region \"region2\""
    );
    assert_eq!(lab.policy.snapshot()[1].set_active, None);
}

#[test]
fn an_adopted_selection_survives_a_restart_without_a_write() {
    let mut lab = Lab::new("preempt = false");
    lab.policy.adopt(0, Some(R1));
    lab.policy.adopt(1, Some(R2));
    for r in [R1, R2] {
        lab.set(r, Health::Up);
    }
    assert_eq!(lab.web(), (Some("region1"), false), "region3 is pending");
    lab.set(R3, Health::Up);
    let d = lab.evaluate();
    assert_eq!((d[0].single(), d[0].changed), (Some(R1), false));
    assert_eq!(
        (d[1].single(), d[1].changed),
        (Some(R1), true),
        "region2 does not serve dns"
    );
}

#[test]
fn a_dead_adopted_region_is_left_before_every_verdict_is_in() {
    let mut lab = Lab::new("");
    lab.policy.adopt(0, Some(R2));
    lab.set(R2, Health::Down);
    lab.set(R3, Health::Up);
    assert_eq!(lab.web(), (Some("region3"), true));
}

#[test]
fn fed_by_health_it_fails_over_within_fall_intervals() {
    use crate::health::{Outcome, Probe, RegionHealth};
    let config = config("");
    let mut policy = Policy::new(&config);
    let mut regions: Vec<RegionHealth> = config
        .regions
        .iter()
        .map(|r| RegionHealth::new(r, Duration::ZERO))
        .collect();
    let mut web = Vec::new();
    for tick in 1..=6u32 {
        let at = tick * Duration::from_millis(100);
        for (id, region) in regions.iter_mut().enumerate() {
            let outcome = if id == R2 as usize && tick > 3 {
                Outcome::Timeout
            } else {
                Outcome::Success
            };
            let latency = Duration::from_millis(1);
            region.record(
                0,
                Probe {
                    at,
                    outcome,
                    latency,
                },
            );
        }
        let conditions: Vec<RegionCondition> = regions.iter().map(RegionHealth::condition).collect();
        let d = policy.evaluate(at, &conditions).decisions.remove(0);
        web.push((tick, d.single(), d.changed));
    }
    assert_eq!(
        web,
        [
            (1, None, false),
            (2, None, false),
            (3, Some(R2), true),
            (4, Some(R2), false),
            (5, Some(R2), false),
            (6, Some(R1), true),
        ]
    );
}

#[test]
fn region_events_show_health_and_drain() {
    let t = Transition {
        at: Duration::from_secs(5),
        from: RegionCondition {
            health: Health::Up,
            drained: true,
            held_down: false,
            since: Duration::ZERO,
        },
        to: RegionCondition {
            health: Health::Down,
            drained: true,
            held_down: false,
            since: Duration::from_secs(5),
        },
        reason: "tcp 10.1.0.2:80: 3 misses in a row, last: timeout".into(),
    };
    let e = Event::region(R1, &t);
    assert_eq!((e.subject, e.kind), (Subject::Region(R1), EventKind::Region));
    assert_eq!(
        (e.from.as_str(), e.to.as_str()),
        ("up, draining", "down, draining")
    );
    assert_eq!(e.at, Duration::from_secs(5));
}

/// "web" by `policy` over region1 (100), region2 (200), region3 (50),
/// each region with `extra` keys; dwell 1 s.
fn balanced(policy: &str, extra: [&str; 3]) -> Lab {
    let mut text = "interfaces = [\"eth0\"]\n[balance]\ndwell_ms = 1000\n".to_string();
    for (i, priority) in [100, 200, 50].into_iter().enumerate() {
        let n = i + 1;
        text += &format!(
            "[[region]]\nname = \"region{n}\"\naddress = \"10.{n}.0.2\"\npriority = {priority}\n{}\n\
             checks = [{{ kind = \"heartbeat\", address = \"10.{n}.0.2:7946\" }}]\n",
            extra[i]
        );
    }
    text += &format!(
        "[[service]]\nname = \"web\"\nvip = \"10.2.0.2\"\nport = 80\nprotocol = \"tcp\"\n\
         policy = \"{policy}\"\nregions = [\"region1\", \"region2\", \"region3\"]\n"
    );
    let mut lab = Lab::new("");
    lab.policy = Policy::new(&Config::parse(&text, "balance.toml").unwrap());
    lab.at_ms(1000);
    for r in [R1, R2, R3] {
        lab.set(r, Health::Up);
    }
    lab
}

impl Lab {
    fn share(&mut self) -> Share {
        self.evaluate().remove(0).share
    }

    /// Samples `pps` per region at `ms`, then evaluates.
    fn pps_at(&mut self, ms: u64, pps: [f64; 3]) -> Share {
        self.at_ms(ms);
        let loads = pps.map(|pps| Load { pps, ..Load::default() });
        let events = self.policy.observe_load(self.now, &loads);
        self.events.extend(events);
        self.share()
    }
}

#[test]
fn weighted_spreads_new_flows_over_the_eligible_by_weight() {
    let mut lab = balanced("weighted", ["weight = 1", "weight = 3", "weight = 0"]);
    assert_eq!(lab.share(), [(R1, 1), (R2, 3)]);
    assert_eq!(lab.last_reason(), "weighted: new flows spread over region1=1,region2=3");
    lab.set(R2, Health::Down);
    assert_eq!(lab.share(), [(R1, 1)], "a down region takes no new flows");
    lab.drain(R1, true);
    assert_eq!(lab.share(), [(R3, 1)], "only the backup (weight 0) is left");
    lab.drain(R1, false);
    lab.set(R2, Health::Up);
    assert_eq!(lab.share(), [(R1, 1), (R2, 3)]);
    let d = lab.evaluate().remove(0);
    assert!(!d.changed, "nothing changed, nothing to write");
    assert_eq!(d.weights, [(R1, 1), (R2, 3), (R3, 0)]);
}

#[test]
fn an_operator_weight_rebalances_and_bad_weights_change_nothing() {
    let mut lab = balanced("weighted", ["weight = 1", "weight = 1", "weight = 0"]);
    assert_eq!(lab.share(), [(R1, 1), (R2, 1)]);
    lab.policy.set_weight(lab.now, "region1", 4, None).unwrap();
    let d = lab.evaluate().remove(0);
    assert_eq!((d.share, d.changed), (vec![(R1, 4), (R2, 1)], true));
    assert_eq!(lab.last_reason(), "weighted: new flows spread over region1=4,region2=1");

    lab.policy.set_weight(lab.now, "region1", 0, Some("web")).unwrap();
    let err = lab.policy.set_weight(lab.now, "region2", 0, None).unwrap_err();
    assert!(err.to_string().contains("every weight of service \"web\""), "{err}");
    let err = lab.policy.set_weight(lab.now, "region9", 1, None).unwrap_err();
    assert_eq!(err.to_string(), "unknown region \"region9\" (known: region1, region2, region3)");
    assert_eq!(lab.share(), [(R2, 1)], "the refused weights changed nothing");
    assert_eq!(lab.policy.snapshot()[0].weights[..2], [(R1, 0), (R2, 1)]);
}

#[test]
fn weights_of_a_failover_service_are_refused() {
    let mut lab = Lab::settled("");
    let err = lab.policy.set_weight(lab.now, "region1", 2, Some("web")).unwrap_err();
    assert!(matches!(err, PolicyError::NotBalanced { .. }), "{err}");
    let err = lab.policy.set_weight(lab.now, "region1", 2, None).unwrap_err();
    assert!(matches!(err, PolicyError::NoBalancedServiceIn { .. }), "{err}");
    assert_eq!(lab.web(), (Some("region2"), false));
}

#[test]
fn pps_spills_past_the_high_watermark_and_returns_below_the_low_after_the_dwell() {
    let marks = "pps = { low = 500, high = 1000 }";
    let mut lab = balanced("pps", [marks, marks, marks]);
    assert_eq!(lab.pps_at(1000, [0.0, 900.0, 0.0]), [(R2, 1)], "region2 has the highest priority");
    assert_eq!(lab.pps_at(2000, [0.0, 1200.0, 0.0]), [(R1, 1)]);
    assert_eq!(lab.last_reason(), "pps: region2 saturated: new flows spill to region1");
    assert_eq!(lab.policy.saturated(R2), [Measure::Pps]);
    // Between the watermarks: still saturated.
    assert_eq!(lab.pps_at(2500, [0.0, 700.0, 0.0]), [(R1, 1)]);
    // Below the low watermark, but within the dwell of the last change.
    assert_eq!(lab.pps_at(2800, [0.0, 100.0, 0.0]), [(R1, 1)]);
    assert_eq!(lab.pps_at(3000, [0.0, 100.0, 0.0]), [(R2, 1)]);
    assert_eq!(lab.last_reason(), "pps: region2 takes new flows (not saturated)");
    // Load hovering across the high watermark flips at most once a dwell.
    let mut moves = 0;
    for tick in 0..20 {
        let pps = if tick % 2 == 0 { 1100.0 } else { 400.0 };
        let before = lab.share();
        if lab.pps_at(3100 + tick * 100, [0.0, pps, 0.0]) != before {
            moves += 1;
        }
    }
    assert!(moves <= 2, "{moves} moves in 2 s with a 1 s dwell");
    let region_events: Vec<&Event> =
        lab.events.iter().filter(|e| e.subject == Subject::Region(R2)).collect();
    assert_eq!((region_events[0].kind, region_events[0].to.as_str()), (EventKind::Saturation, "pps saturated"));
    assert_eq!(region_events[0].reason, "pps 1200 above its high watermark 1000");
}

#[test]
fn when_every_region_is_saturated_new_flows_spread_by_weight() {
    let marks = "pps = { low = 10, high = 20 }";
    let mut lab = balanced("pps", [&format!("{marks}\nweight = 2"), marks, ""]);
    assert_eq!(lab.pps_at(1000, [30.0, 30.0, 30.0]), [(R3, 1)], "region3 has no watermark");
    lab.set(R3, Health::Down);
    assert_eq!(lab.share(), [(R1, 2), (R2, 1)]);
    assert_eq!(lab.last_reason(), "pps: every eligible region saturated: new flows spread by weight");
}

#[test]
fn cpu_without_a_report_is_not_saturated_and_flows_count_open_flows() {
    let mut lab = balanced("cpu", ["", "cpu = { low = 50, high = 80 }", ""]);
    let quiet = Load { cpu_percent: None, ..Load::default() };
    lab.policy.observe_load(lab.now, &[quiet; 3]);
    assert_eq!(lab.share(), [(R2, 1)]);
    let busy = Load { cpu_percent: Some(95.0), ..Load::default() };
    lab.policy.observe_load(lab.now, &[quiet, busy, quiet]);
    assert_eq!(lab.share(), [(R1, 1)]);

    let mut lab = balanced("flows", ["", "flows = { low = 800, high = 1000 }", ""]);
    let open = |flows| Load { flows, ..Load::default() };
    lab.policy.observe_load(lab.now, &[open(0), open(1001), open(0)]);
    assert_eq!(lab.share(), [(R1, 1)]);
}

#[test]
fn set_active_overrides_a_load_policy_and_auto_hands_back() {
    let mut lab = balanced("weighted", ["", "", ""]);
    assert_eq!(lab.share(), [(R1, 1), (R2, 1), (R3, 1)]);
    lab.policy.set_active(lab.now, "region3", None).unwrap();
    assert_eq!(lab.share(), [(R3, 1)]);
    lab.policy.set_auto(lab.now, None).unwrap();
    assert_eq!(lab.share(), [(R1, 1), (R2, 1), (R3, 1)]);
}
