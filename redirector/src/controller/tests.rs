//! The controller against a fake data plane on a simulated clock: what it
//! writes at start, on failures, on operator commands and reloads, and in
//! which order.

use std::time::Duration;

use redirector_common::RegionState;
use redirector_proto::{
    control::{EventKind, Request, Response},
    model::RegionStatus,
};

use super::{RETRY, *};
use crate::{
    config::ServiceAddr,
    dataplane::{
        fake::{FakeDataplane, SimClock, Write},
        Selection, BANK_REUSE_GRACE,
    },
    health::{Outcome, Probe},
};

const MS: Duration = Duration::from_millis(1);
const R1: u8 = 0;
const R2: u8 = 1;
const R3: u8 = 2;

/// Three regions (region2 preferred, then region1, then region3), one tcp
/// check each, fall = rise = 2 at 10 ms; `services` as TOML.
fn config(services: &str) -> Config {
    let mut text = String::from("interfaces = [\"eth0\", \"eth1\"]\n[health]\ninterval_ms = 10\nfall = 2\nrise = 2\ntimeout_ms = 10\n");
    for (n, priority) in [(1, 100), (2, 200), (3, 50)] {
        text += &format!(
            "[[region]]\nname = \"region{n}\"\naddress = \"10.{n}.0.2\"\npriority = {priority}\n\
             checks = [{{ kind = \"tcp\", address = \"10.{n}.0.2:80\" }}]\n"
        );
    }
    Config::parse(&(text + services), "test.toml").unwrap()
}

const WEB: &str = "[[service]]\nname = \"web\"\nvip = \"10.2.0.2\"\nport = 80\nprotocol = \"tcp\"\nregions = [\"region1\", \"region2\", \"region3\"]\n";
const DNS: &str = "[[service]]\nname = \"dns\"\nvip = \"10.2.0.2\"\nport = 53\nprotocol = \"udp\"\nregions = [\"region1\", \"region3\"]\n";
const PING: &str = "[[service]]\nname = \"ping\"\nvip = \"10.9.0.1\"\nprotocol = \"icmp\"\nregions = [\"region1\", \"region2\"]\n";

struct Rig {
    clock: SimClock,
    controller: Controller<FakeDataplane>,
}

impl Rig {
    fn start(config: Config) -> Rig {
        Rig::start_on(config, |_| {})
    }

    /// Starts on a data plane `prepare` filled first, as an earlier daemon
    /// would have left it.
    fn start_on(config: Config, prepare: impl FnOnce(&mut FakeDataplane)) -> Rig {
        let clock = SimClock::default();
        clock.set(Duration::from_secs(1));
        let mut dataplane = FakeDataplane::new(clock.clone(), &["eth0", "eth1", "eth2"]);
        prepare(&mut dataplane);
        let controller = Controller::start(config, dataplane, Box::new(clock.clone()), 0).unwrap();
        Rig { clock, controller }
    }

    fn dataplane(&mut self) -> &mut FakeDataplane {
        &mut self.controller.dataplane
    }

    fn writes(&mut self) -> Vec<Write> {
        self.dataplane().take_writes().into_iter().map(|(_, w)| w).collect()
    }

    fn addr(&self, service: &str) -> ServiceAddr {
        self.controller.config.services.iter().find(|s| s.name == service).unwrap().addr
    }

    fn live(&mut self, service: &str) -> Selection {
        let addr = self.addr(service);
        self.dataplane().live(&addr).clone()
    }

    /// A result of `region`'s check `check`, from a checker of `generation`.
    fn probe(&mut self, generation: u64, region: u8, check: usize, outcome: Outcome) {
        self.controller.on_probe(ProbeReport {
            generation,
            region: region as usize,
            check,
            probe: Probe { at: self.clock.now(), outcome, latency: MS },
            heartbeat: None,
        });
    }

    /// One probe result for every region's check, `ok` per region, 10 ms
    /// after the previous round.
    fn round(&mut self, ok: [bool; 3]) {
        self.clock.advance(10 * MS);
        let generation = self.controller.generation();
        for (region, ok) in ok.into_iter().enumerate() {
            let outcome = if ok { Outcome::Success } else { Outcome::Timeout };
            self.probe(generation, region as u8, 0, outcome);
        }
    }

    /// Every region up (rise = 2), the first decisions written.
    fn settled(config: Config) -> Rig {
        let mut rig = Rig::start(config);
        rig.round([true; 3]);
        rig.round([true; 3]);
        rig
    }

    fn ctl(&mut self, request: Request) -> Response {
        self.controller.handle(request)
    }

    fn set_active(&mut self, region: &str) {
        let response = self.ctl(Request::SetActive { region: Some(region.into()), service: Some("web".into()) });
        assert!(matches!(response, Response::Done { .. }), "{response:?}");
    }
}

#[test]
fn a_fresh_start_attaches_writes_the_services_and_nothing_else_until_every_region_has_a_verdict() {
    let mut rig = Rig::start(config(WEB));
    let web = rig.addr("web");
    assert_eq!(
        rig.writes(),
        [Write::Attach("eth0".into()), Write::Attach("eth1".into()), Write::Services(vec![web])]
    );
    assert_eq!(rig.live("web"), Selection::nowhere());
    rig.round([true; 3]);
    assert_eq!(rig.writes(), [], "one success of two: every region still pending");
    rig.round([true, true, false]);
    assert_eq!(
        rig.writes(),
        [Write::RegionState(R1, RegionState::Up), Write::RegionState(R2, RegionState::Up)],
        "regions up are written up; no selection while region3 has no verdict"
    );
    rig.round([true, true, true]);
    rig.round([true, true, true]);
    assert_eq!(
        rig.writes(),
        [Write::Selection(web, Selection::all(R2)), Write::RegionState(R3, RegionState::Up)],
        "the selection first, then the region state"
    );
}

#[test]
fn a_restart_adopts_the_live_selection_and_region_states_and_moves_no_flow() {
    let mut rig = Rig::start_on(config(WEB), |dp| {
        let web = config(WEB).services[0].addr;
        dp.services.insert(web, (0, Selection::all(R1)));
        dp.attached.insert("eth0".into());
        for r in [R1, R2, R3] {
            dp.regions.insert(r, RegionState::Up);
        }
    });
    let web = rig.addr("web");
    assert_eq!(rig.writes(), [Write::Attach("eth0".into()), Write::Attach("eth1".into()), Write::Services(vec![web])]);
    rig.round([true; 3]);
    rig.round([true; 3]);
    // region2 is preferred and preempts, but only once it has a verdict:
    // until then region1 kept every new flow, and no state was rewritten.
    assert_eq!(rig.writes(), [Write::Selection(web, Selection::all(R2))]);
}

#[test]
fn an_adopted_region_that_is_still_the_choice_is_not_rewritten() {
    let mut rig = Rig::start_on(config(WEB), |dp| {
        dp.services.insert(config(WEB).services[0].addr, (0, Selection::all(R2)));
    });
    rig.writes();
    rig.round([true; 3]);
    rig.round([true; 3]);
    assert!(
        rig.writes().iter().all(|w| !matches!(w, Write::Selection(..))),
        "region2 already takes web's new flows"
    );
}

#[test]
fn a_failover_writes_the_new_table_before_marking_the_region_down() {
    let mut rig = Rig::settled(config(WEB));
    let web = rig.addr("web");
    rig.writes();
    rig.round([true, false, true]);
    assert_eq!(rig.writes(), [], "one miss of two");
    rig.round([true, false, true]);
    assert_eq!(
        rig.writes(),
        [Write::Selection(web, Selection::all(R1)), Write::RegionState(R2, RegionState::Down)]
    );
    let status = rig.controller.status();
    assert_eq!(status.regions[1].state, RegionStatus::Down);
    assert_eq!(status.services[0].active, ["region1"]);
    let switch = rig.controller.events().into_iter().rev().find(|e| e.kind == EventKind::Switch).unwrap();
    assert_eq!((switch.subject.as_str(), switch.what.as_str()), ("service web", "region2 → region1"));
    assert!(switch.map_write_us.is_some(), "{switch:?}");
}

#[test]
fn a_second_flip_within_the_bank_reuse_grace_waits_and_the_latest_table_wins() {
    let mut rig = Rig::settled(config(WEB));
    let web = rig.addr("web");
    rig.writes();
    rig.clock.advance(20 * MS);
    rig.set_active("region3");
    let first = rig.clock.now();
    assert_eq!(rig.writes(), [Write::Selection(web, Selection::all(R3))]);

    rig.clock.advance(MS);
    rig.set_active("region1");
    rig.clock.advance(MS);
    rig.set_active("region2");
    assert_eq!(rig.writes(), [], "the bank flipped away from 2 ms ago may still be read");
    assert_eq!(rig.controller.next_deadline(), Some(first + BANK_REUSE_GRACE));
    assert_eq!(rig.live("web"), Selection::all(R3));

    rig.clock.set(first + BANK_REUSE_GRACE);
    rig.controller.on_deadline();
    let writes = rig.dataplane().take_writes();
    assert_eq!(writes, [(first + BANK_REUSE_GRACE, Write::Selection(web, Selection::all(R2)))]);
    assert_eq!(rig.controller.next_deadline(), None);
    let events = rig.controller.events();
    let set_active: Vec<_> = events.iter().filter(|e| e.kind == EventKind::Switch).rev().take(3).collect();
    assert!(set_active[0].map_write_us.is_some(), "the table written has its latency");
    assert_eq!(set_active[1].map_write_us, None, "region1's table was never written");
}

#[test]
fn a_region_marked_down_while_a_table_that_leaves_it_waits_is_written_after_that_table() {
    let mut rig = Rig::settled(config(WEB));
    let web = rig.addr("web");
    rig.writes();
    rig.clock.advance(20 * MS);
    rig.set_active("region3");
    let flipped = rig.clock.now();
    rig.clock.advance(2 * MS);
    rig.set_active("region1");
    // region3, which the live table still selects, dies now: flows
    // re-steered off it must find region1's table, so its state waits.
    let generation = rig.controller.generation();
    for _ in 0..2 {
        rig.probe(generation, R3, 0, Outcome::Timeout);
    }
    assert_eq!(rig.writes(), [Write::Selection(web, Selection::all(R3))]);
    assert_eq!(rig.controller.status().regions[2].state, RegionStatus::Down);
    rig.clock.set(flipped + BANK_REUSE_GRACE);
    rig.controller.on_deadline();
    assert_eq!(
        rig.writes(),
        [Write::Selection(web, Selection::all(R1)), Write::RegionState(R3, RegionState::Down)]
    );
}

#[test]
fn drain_and_undrain_write_the_region_state_and_move_new_flows() {
    let mut rig = Rig::settled(config(WEB));
    let web = rig.addr("web");
    rig.writes();
    rig.clock.advance(20 * MS);
    let done = rig.ctl(Request::Drain { region: "region2".into() });
    assert_eq!(done, Response::Done { message: "region region2: up, draining".into() });
    assert_eq!(
        rig.writes(),
        [Write::Selection(web, Selection::all(R1)), Write::RegionState(R2, RegionState::Draining)]
    );
    let unknown = rig.ctl(Request::Drain { region: "region9".into() });
    assert_eq!(
        unknown,
        Response::Error { message: "unknown region \"region9\" (known: region1, region2, region3)".into() }
    );
    assert_eq!(rig.writes(), []);
    rig.clock.advance(20 * MS);
    let done = rig.ctl(Request::Undrain { region: "region2".into() });
    assert_eq!(done, Response::Done { message: "region region2: up".into() });
    assert_eq!(
        rig.writes(),
        [Write::Selection(web, Selection::all(R2)), Write::RegionState(R2, RegionState::Up)]
    );
}

#[test]
fn refused_syns_take_a_region_down_at_once_and_its_checks_bring_it_back() {
    let passive = format!("{WEB}[passive]\nsyn_refused = 3\nwindow_ms = 100\n");
    let mut rig = Rig::settled(config(&passive));
    let web = rig.addr("web");
    rig.writes();
    let signal = |rig: &mut Rig, region: u8| {
        rig.clock.advance(MS);
        let at = rig.clock.now();
        rig.controller.on_region_signal(passive::Signal { region, at });
    };
    // Two refusals, and two more from another region: nothing.
    for region in [R2, R2, R1, R1] {
        signal(&mut rig, region);
    }
    assert_eq!(rig.writes(), [], "no region has had three in 100 ms");
    signal(&mut rig, R2);
    assert_eq!(
        rig.writes(),
        [Write::Selection(web, Selection::all(R1)), Write::RegionState(R2, RegionState::Down)],
        "the third within the window: down, as a failed check would take it"
    );
    let event = rig.controller.events().into_iter().rev().find(|e| e.kind == EventKind::Region).unwrap();
    assert_eq!(event.why, "passive: 3 SYNs refused by a reset within 100 ms");

    // Its checks, which never failed, bring it back after rise (2) successes.
    rig.round([true, true, true]);
    assert_eq!(rig.writes(), [], "one success of two");
    rig.round([true, true, true]);
    assert_eq!(rig.writes(), [Write::Selection(web, Selection::all(R2)), Write::RegionState(R2, RegionState::Up)]);
}

#[test]
fn a_region_appended_by_reload_is_watched_by_passive_detection() {
    let two = |text: &str| {
        let mut c = config(text);
        c.regions.truncate(2);
        c.services[0].regions.retain(|r| *r != R3);
        c
    };
    let passive = format!("{WEB}[passive]\nsyn_refused = 2\nwindow_ms = 100\n");
    let mut rig = Rig::settled(two(&passive));
    rig.controller.reload(config(&passive)).unwrap();
    for _ in 0..3 {
        rig.round([true; 3]);
    }
    rig.writes();
    for _ in 0..2 {
        rig.clock.advance(MS);
        let at = rig.clock.now();
        rig.controller.on_region_signal(passive::Signal { region: R3, at });
    }
    assert!(rig.writes().contains(&Write::RegionState(R3, RegionState::Down)), "region3 taken down");
}

#[test]
fn without_passive_detection_signals_change_nothing() {
    let mut rig = Rig::settled(config(WEB));
    rig.writes();
    for _ in 0..10 {
        rig.clock.advance(MS);
        let at = rig.clock.now();
        rig.controller.on_region_signal(passive::Signal { region: R2, at });
    }
    assert_eq!(rig.writes(), []);
}

#[test]
fn down_holds_a_healthy_region_down_and_up_gives_it_back_to_its_checks() {
    let mut rig = Rig::settled(config(WEB));
    let web = rig.addr("web");
    rig.writes();
    rig.clock.advance(20 * MS);
    let done = rig.ctl(Request::Down { region: "region2".into() });
    assert_eq!(done, Response::Done { message: "region region2: up, held down by the operator".into() });
    assert_eq!(
        rig.writes(),
        [Write::Selection(web, Selection::all(R1)), Write::RegionState(R2, RegionState::Down)],
        "new flows elsewhere first, then its established flows re-steered"
    );
    let region2 = |rig: &Rig| rig.controller.status().regions.into_iter().find(|r| r.name == "region2").unwrap();
    assert_eq!((region2(&rig).state, region2(&rig).held_down), (RegionStatus::Down, true));

    // Its checks pass and it stays down.
    for _ in 0..5 {
        rig.round([true, true, true]);
    }
    assert_eq!(rig.writes(), []);
    assert_eq!(region2(&rig).state, RegionStatus::Down);

    let unknown = rig.ctl(Request::Down { region: "region9".into() });
    assert_eq!(
        unknown,
        Response::Error { message: "unknown region \"region9\" (known: region1, region2, region3)".into() }
    );
    rig.clock.advance(20 * MS);
    let done = rig.ctl(Request::Up { region: "region2".into() });
    assert_eq!(done, Response::Done { message: "region region2: up".into() });
    assert_eq!(rig.writes(), [Write::Selection(web, Selection::all(R2)), Write::RegionState(R2, RegionState::Up)]);
    assert!(!region2(&rig).held_down);
    let events = rig.controller.events();
    let reasons: Vec<&str> = events.iter().rev().filter(|e| e.kind == EventKind::Region).take(2).map(|e| e.why.as_str()).collect();
    assert_eq!(reasons, ["given back to its checks by the operator", "put down by the operator"]);
}

/// web (failover) and api (weighted over three regions, listed first, so
/// its id is lower).
const API: &str = "[[service]]\nname = \"api\"\nvip = \"10.9.0.2\"\nport = 443\nprotocol = \"tcp\"\npolicy = \"weighted\"\nregions = [\"region1\", \"region2\", \"region3\"]\n";

#[test]
fn a_failover_table_is_written_before_the_maglev_tables_decided_with_it() {
    let mut rig = Rig::settled(config(&format!("{API}{WEB}")));
    let (api, web) = (rig.addr("api"), rig.addr("web"));
    rig.writes();
    rig.round([true, false, true]);
    rig.round([true, false, true]);
    let writes = rig.writes();
    let order: Vec<ServiceAddr> = writes
        .iter()
        .filter_map(|w| match w {
            Write::Selection(addr, _) => Some(*addr),
            _ => None,
        })
        .collect();
    assert_eq!(order, [web, api], "{writes:?}");
    assert_eq!(writes.last(), Some(&Write::RegionState(R2, RegionState::Down)));
}

#[test]
fn a_table_whose_write_failed_is_written_again_and_its_region_waits_for_it() {
    let mut rig = Rig::settled(config(WEB));
    let web = rig.addr("web");
    rig.writes();
    rig.dataplane().failing_selections = 1;
    rig.round([true, false, true]);
    rig.round([true, false, true]);
    assert_eq!(rig.writes(), [], "the table failed; region2 stays up while web still selects it");
    let retry = rig.controller.next_deadline().expect("a retry is due");
    assert_eq!(retry, rig.clock.now() + RETRY);
    rig.clock.set(retry);
    rig.controller.on_deadline();
    assert_eq!(
        rig.writes(),
        [Write::Selection(web, Selection::all(R1)), Write::RegionState(R2, RegionState::Down)]
    );
}

#[test]
fn a_region_coming_up_is_written_at_once_even_while_a_table_waits() {
    let mut rig = Rig::settled(config(WEB));
    let web = rig.addr("web");
    rig.clock.advance(20 * MS);
    rig.ctl(Request::Drain { region: "region2".into() });
    let flipped = rig.clock.now();
    rig.writes();
    rig.clock.advance(MS);
    rig.set_active("region3");
    rig.clock.advance(MS);
    rig.ctl(Request::Undrain { region: "region2".into() });
    assert_eq!(rig.writes(), [Write::RegionState(R2, RegionState::Up)], "no table to wait for: up is harmless");
    rig.clock.set(flipped + BANK_REUSE_GRACE);
    rig.controller.on_deadline();
    assert_eq!(rig.writes(), [Write::Selection(web, Selection::all(R3))]);
}

#[test]
fn a_weighted_table_adopted_at_a_restart_is_not_rewritten() {
    let mut first = Rig::settled(config(API));
    let api = first.addr("api");
    let live = first.live("api");
    assert_eq!(live.single(), None, "a Maglev table over three regions");
    let mut rig = Rig::start_on(config(API), |dp| {
        dp.services.insert(api, (0, live.clone()));
        for r in [R1, R2, R3] {
            dp.regions.insert(r, RegionState::Up);
        }
    });
    rig.writes();
    rig.round([true; 3]);
    rig.round([true; 3]);
    assert_eq!(rig.writes(), [], "the same table is live already");
    assert_eq!(rig.controller.status().services[0].new_flow_shares.len(), 3);
}

#[test]
fn a_reload_whose_data_plane_write_fails_changes_nothing_and_checkers_keep_counting() {
    let mut rig = Rig::settled(config(&format!("{WEB}{DNS}")));
    rig.writes();
    let generation = rig.controller.generation();
    rig.dataplane().failing_services = true;
    let err = rig.controller.reload(config(DNS)).unwrap_err().to_string();
    assert!(err.contains("the fake was told to fail"), "{err}");
    assert_eq!(rig.controller.generation(), generation, "the old checkers are still the ones");
    assert_eq!(rig.controller.config().services.len(), 2);
    rig.round([true, false, true]);
    rig.round([true, false, true]);
    assert_eq!(rig.controller.status().regions[1].state, RegionStatus::Down, "their results still count");
}

#[test]
fn switch_counts_follow_their_service_across_a_reload_that_renumbers_services() {
    let mut rig = Rig::settled(config(&format!("{WEB}{DNS}")));
    rig.clock.advance(20 * MS);
    rig.set_active("region1");
    let before: Vec<(String, u64)> = rig.controller.metrics().lock().unwrap().switches.clone();
    assert_eq!(before, [("web".to_string(), 2), ("dns".to_string(), 1)]);
    rig.clock.advance(20 * MS);
    rig.controller.reload(config(&format!("{DNS}{PING}"))).unwrap();
    let after = rig.controller.metrics().lock().unwrap().switches.clone();
    // dns, re-keyed from id 1 to 0, kept its count and had its table
    // written again; ping, new at id 1, had its first.
    assert_eq!(after, [("dns".to_string(), 2), ("ping".to_string(), 1)]);
}

#[test]
fn a_reload_that_removes_a_service_writes_the_tables_of_the_services_it_re_keyed() {
    let mut rig = Rig::settled(config(&format!("{WEB}{DNS}{PING}")));
    let (dns, ping) = (rig.addr("dns"), rig.addr("ping"));
    assert_eq!(rig.live("dns"), Selection::all(R1));
    assert_eq!(rig.live("ping"), Selection::all(R2));
    rig.writes();

    // Without web, dns and ping move up one id each: the data plane holds
    // them anew, selecting nowhere, until the controller writes them.
    rig.clock.advance(20 * MS);
    let summary = rig.controller.reload(config(&format!("{DNS}{PING}"))).unwrap();
    assert_eq!(summary, "3 regions, 2 services");
    assert_eq!(
        rig.writes(),
        [
            Write::Services(vec![dns, ping]),
            Write::Selection(dns, Selection::all(R1)),
            Write::Selection(ping, Selection::all(R2)),
        ]
    );
    let status = rig.controller.status();
    for service in &status.services {
        let live = rig.live(&service.name);
        let shares: Vec<String> = crate::maglev::shares(live.slots())
            .into_iter()
            .map(|(r, _)| rig.controller.config.regions[r as usize].name.clone())
            .collect();
        assert_eq!(shares, service.active, "{}: status and the live table agree", service.name);
    }
}

#[test]
fn a_re_keyed_service_keeps_its_table_while_its_regions_await_their_verdicts() {
    let mut rig = Rig::settled(config(&format!("{WEB}{DNS}")));
    let dns = rig.addr("dns");
    assert_eq!(rig.live("dns"), Selection::all(R1));
    rig.clock.advance(20 * MS);
    // Without web, dns moves to id 0; region1's checks change, so it is
    // pending again and no rule may decide dns until it has a verdict.
    let mut changed = config(DNS);
    let extra = changed.regions[0].checks[0].clone();
    changed.regions[0].checks.push(extra);
    rig.writes();
    rig.controller.reload(changed).unwrap();
    assert_eq!(
        rig.writes(),
        [Write::Services(vec![dns]), Write::Selection(dns, Selection::all(R1))],
        "dns's table carried over at once, not left selecting nowhere"
    );
    assert_eq!(rig.controller.status().regions[0].state, RegionStatus::Pending);
}

#[test]
fn the_operators_hold_and_drain_survive_a_reload_that_changes_the_regions_checks() {
    let mut rig = Rig::settled(config(WEB));
    rig.ctl(Request::Down { region: "region2".into() });
    rig.ctl(Request::Drain { region: "region3".into() });
    let mut changed = config(WEB);
    for region in [1, 2] {
        let extra = changed.regions[region].checks[0].clone();
        changed.regions[region].checks.push(extra);
    }
    rig.controller.reload(changed).unwrap();
    let status = rig.controller.status();
    assert_eq!((status.regions[1].state, status.regions[1].held_down), (RegionStatus::Down, true));
    assert_eq!(status.regions[2].state, RegionStatus::Draining, "pending checks, still drained");
}

#[test]
fn a_reload_that_changes_nothing_of_a_service_leaves_its_table_alone() {
    let mut rig = Rig::settled(config(&format!("{WEB}{DNS}")));
    rig.writes();
    rig.controller.reload(config(&format!("{WEB}{DNS}"))).unwrap();
    let web = rig.addr("web");
    let dns = rig.addr("dns");
    assert_eq!(rig.writes(), [Write::Services(vec![dns, web])], "regions kept their verdicts, services their tables");
}

#[test]
fn results_of_checkers_started_before_a_reload_are_dropped() {
    let mut rig = Rig::settled(config(WEB));
    let old = rig.controller.generation();
    let mut more = config(WEB);
    let extra = more.regions[0].checks[0].clone();
    more.regions[1].checks.push(extra);
    rig.controller.reload(more).unwrap();
    assert_eq!(rig.controller.generation(), old + 1);
    rig.writes();
    // A stale result for a check index the new config has too, and one for
    // an index it lacks: neither may count.
    for check in [0, 5] {
        rig.probe(old, R2, check, Outcome::Success);
    }
    let region2 = &rig.controller.status().regions[1];
    assert!(region2.checks.iter().all(|c| c.last_ok.is_none()), "{region2:?}");
    assert_eq!(rig.writes(), []);
}

#[test]
fn a_flip_right_after_a_reload_still_waits_out_the_grace() {
    let mut rig = Rig::settled(config(WEB));
    let web = rig.addr("web");
    rig.clock.advance(20 * MS);
    rig.set_active("region3");
    let flipped = rig.clock.now();
    rig.clock.advance(MS);
    rig.controller.reload(config(WEB)).unwrap();
    rig.writes();
    rig.set_active("region1");
    assert_eq!(rig.writes(), [], "web's bank flipped 1 ms ago, before the reload");
    rig.clock.set(flipped + BANK_REUSE_GRACE);
    rig.controller.on_deadline();
    assert_eq!(rig.writes(), [Write::Selection(web, Selection::all(R1))]);
}

#[test]
fn a_refused_reload_changes_nothing() {
    let mut rig = Rig::settled(config(WEB));
    rig.writes();
    let mut renamed = config(WEB);
    renamed.regions[0].name = "elsewhere".into();
    let err = rig.controller.reload(renamed).unwrap_err().to_string();
    assert!(err.starts_with("region region1 is now \"elsewhere\""), "{err}");
    let mut unknown = config(WEB);
    unknown.interfaces.push("eth9".into());
    let err = rig.controller.reload(unknown).unwrap_err().to_string();
    assert_eq!(err, "no interface named \"eth9\"");
    assert_eq!(rig.writes(), []);
    assert_eq!(rig.controller.config().regions[0].name, "region1");
}

#[test]
fn a_new_flow_table_size_is_refused_at_reload() {
    let mut rig = Rig::settled(config(WEB));
    rig.writes();
    let mut bigger = config(WEB);
    bigger.flow_table_size *= 4;
    let err = rig.controller.reload(bigger).unwrap_err().to_string();
    assert!(err.starts_with("flow_table_size takes effect when the data plane is rebuilt"), "{err}");
    assert_eq!(rig.writes(), []);
}

#[test]
fn a_new_xdp_mode_is_refused_at_reload() {
    let mut rig = Rig::settled(config(WEB));
    rig.writes();
    let mut generic = config(WEB);
    generic.xdp_mode = crate::config::XdpMode::Generic;
    let err = rig.controller.reload(generic).unwrap_err().to_string();
    assert!(err.starts_with("xdp_mode takes effect when the data plane is rebuilt"), "{err}");
    assert_eq!(rig.writes(), []);
}

#[test]
fn a_reload_attaches_new_interfaces_and_detaches_dropped_ones() {
    let mut rig = Rig::settled(config(WEB));
    rig.writes();
    let mut moved = config(WEB);
    moved.interfaces = vec!["eth0".into(), "eth2".into()];
    rig.controller.reload(moved).unwrap();
    let writes = rig.writes();
    assert_eq!(writes[..2], [Write::Attach("eth2".into()), Write::Detach("eth1".into())]);
    assert_eq!(rig.dataplane().attached.iter().collect::<Vec<_>>(), ["eth0", "eth2"]);
}

#[test]
fn detach_takes_the_program_off_every_interface_then_removes_the_pins() {
    let mut rig = Rig::settled(config(WEB));
    rig.writes();
    rig.controller.detach().unwrap();
    assert_eq!(
        rig.writes(),
        [Write::Detach("eth0".into()), Write::Detach("eth1".into()), Write::RemovePins]
    );
}
