//! redirectord with real processes: region servers, agents, the daemon and
//! redirectorctl in namespaces, traffic from the measuring client.

use std::{thread, time::Duration};

use redirector_proto::{
    control::{self, Request, Response},
    model::{CheckKind, RegionStatus},
};

use redirector_tests::{
    client::{Measurement, Options, Pacing, Session},
    lab::{body, Lab, LabOptions, AGENT_PORT, ALERTS, ALERT_TOKEN},
    netns::{require_root, unique_name, Netns},
};

fn lab(options: LabOptions) -> Lab {
    require_root();
    let mut lab = Lab::new(&unique_name("rdc"), options).unwrap();
    lab.start_daemon().unwrap();
    lab
}

fn measure(lab: &Lab) -> Measurement {
    Measurement::start(&lab.topo.client, lab.vip(), Options::default())
}

#[test]
fn server_killed_moves_new_requests_to_the_next_region_within_a_second_and_back() {
    let mut lab = lab(LabOptions::default());
    lab.wait_active("region2", Duration::from_secs(2)).unwrap();
    let client = measure(&lab);
    thread::sleep(Duration::from_millis(500));

    lab.kill_server(2).unwrap();
    lab.wait_active("region1", Duration::from_secs(2)).unwrap();
    thread::sleep(Duration::from_millis(500));
    let report = client.stop().unwrap();

    assert!(report.by_body.contains_key(&body(2)) && report.by_body.contains_key(&body(1)), "{:?}", report.by_body);
    let t_un = report.max_t_un();
    eprintln!("requests {} failures {} T_un {t_un:?} by region {:?}", report.requests(), report.failures, report.by_body);
    assert!(t_un < Duration::from_secs(1), "T_un {t_un:?} ≥ 1 s: {:?}", report.outages);
    let last = report.answers.last().unwrap();
    assert_eq!(last.1, body(1), "after the failure region1 answers");

    // Failback (preempt = true): region2 takes new flows again once up.
    lab.restore_server(2).unwrap();
    lab.wait_active("region2", Duration::from_secs(2)).unwrap();
    let events = lab.ctl_ok(&["events", "--json"]).unwrap();
    assert!(events.contains("region region2") && events.contains("map_write_us"), "{events}");
    eprintln!("{}", lab.ctl_ok(&["events"]).unwrap());
}

#[test]
fn set_active_moves_new_requests_within_100_ms_and_auto_gives_them_back() {
    set_active_moves_new_requests_within_100_ms(lab(LabOptions::default()));
}

/// A command is live when redirectorctl returns, even when the service's
/// table flipped a moment before and the next flip must wait for the
/// bank-reuse grace: the answer waits, the next connection goes where the
/// command said.
#[test]
fn a_command_is_live_when_redirectorctl_returns() {
    let lab = lab(LabOptions::default());
    lab.wait_active("region2", Duration::from_secs(2)).unwrap();
    let vip = lab.vip();
    // Straight to the control socket, as redirectorctl sends it: the
    // commands follow one another well within the grace (5 ms).
    for (region, expect) in [(Some("region1"), 1), (None, 2), (Some("region3"), 3), (None, 2)] {
        let request = Request::SetActive { region: region.map(str::to_string), service: None };
        let response = control::call(&lab.socket(), &request, Duration::from_secs(2)).unwrap();
        assert!(matches!(response, Response::Done { .. }), "{response:?}");
        assert_eq!(get(&lab, vip), body(expect), "right after set-active {region:?}");
    }
}

#[test]
fn down_takes_a_healthy_region_down_now_and_up_gives_it_back_to_its_checks() {
    let lab = lab(LabOptions::default());
    lab.wait_active("region2", Duration::from_secs(2)).unwrap();
    let vip = lab.vip();
    let mut kept = Session::open(&lab.topo.client, vip, Duration::from_secs(1)).unwrap();
    assert_eq!(kept.get().unwrap(), body(2));

    let said = lab.ctl_ok(&["down", "region2"]).unwrap();
    assert_eq!(said.trim(), "region region2: up, held down by the operator");
    assert_eq!(get(&lab, vip), body(1), "new flows at once to the next region");
    assert!(kept.get().is_err(), "an established flow re-steered off it: region1 knows no such connection");
    let status = lab.status().unwrap();
    let region2 = status.regions.iter().find(|r| r.name == "region2").unwrap();
    assert_eq!((region2.state, region2.held_down), (RegionStatus::Down, true), "in --json too");
    assert!(lab.ctl_ok(&["status"]).unwrap().contains("down (operator)"));
    thread::sleep(Duration::from_millis(500));
    assert_eq!(get(&lab, vip), body(1), "its checks pass, and it stays down");
    assert!(lab.ctl_ok(&["events"]).unwrap().contains("put down by the operator"));

    let said = lab.ctl_ok(&["up", "region2"]).unwrap();
    assert_eq!(said.trim(), "region region2: up");
    assert_eq!(get(&lab, vip), body(2));
    let unknown = lab.ctl(&["down", "region9"]).unwrap();
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("known: region1, region2, region3"));
}

/// Alertmanager's webhook payload with one alert about `region`.
fn alert(status: &str, region: &str) -> String {
    format!(
        r#"{{"version":"4","status":"{status}","receiver":"redirector","groupLabels":{{}},"commonLabels":{{}},"alerts":[{{"status":"{status}","labels":{{"alertname":"RegionDegraded","region":"{region}"}},"annotations":{{}},"startsAt":"2026-11-29T10:00:00Z","fingerprint":"1a2b"}}]}}"#
    )
}

/// curl's POST to the webhook, as Alertmanager sends it; the HTTP status.
fn post_alert(lab: &Lab, token: &str, body: &str) -> String {
    let url = format!("http://{ALERTS}/alerts");
    let auth = format!("Authorization: Bearer {token}");
    let args = ["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", &auth, "-H", "Content-Type: application/json", "--data-binary", body, &url];
    lab.topo.gateway.exec("curl", &args).unwrap()
}

#[test]
fn alertmanager_firing_takes_a_region_down_and_resolved_gives_it_back() {
    let lab = lab(LabOptions { alerts: true, ..Default::default() });
    lab.wait_active("region2", Duration::from_secs(2)).unwrap();
    let vip = lab.vip();
    let held = |lab: &Lab| lab.status().unwrap().regions.iter().find(|r| r.name == "region2").unwrap().held_down;

    assert_eq!(post_alert(&lab, "not-the-token-0123456789", &alert("firing", "region2")), "401");
    assert_eq!(post_alert(&lab, ALERT_TOKEN, &alert("firing", "region9")), "422");
    assert_eq!(post_alert(&lab, ALERT_TOKEN, "{\"alerts\":"), "422");
    assert!(!held(&lab), "nothing refused changed anything");
    assert_eq!(get(&lab, vip), body(2));

    assert_eq!(post_alert(&lab, ALERT_TOKEN, &alert("firing", "region2")), "200");
    assert!(held(&lab));
    assert_eq!(get(&lab, vip), body(1), "new flows moved when the webhook answered");
    assert_eq!(post_alert(&lab, ALERT_TOKEN, &alert("resolved", "region2")), "200");
    assert!(!held(&lab));
    assert_eq!(get(&lab, vip), body(2));
}

/// One request from the client namespace; the body.
fn get(lab: &Lab, vip: std::net::SocketAddr) -> String {
    lab.topo.client.on_thread(|| redirector_tests::client::get(vip, Duration::from_secs(1))).unwrap()
}

/// The sweep walks the whole table every sample (here as often as it may:
/// sample_ms = 100, about 0.1 s per walk); it must never hold back the
/// controller's answer to an operator (or to a probe).
#[test]
fn set_active_moves_new_requests_within_100_ms_while_a_full_flow_table_is_swept() {
    let lab = lab(LabOptions { sample_ms: 100, ..Default::default() });
    let entries = redirector_common::FLOW_TABLE_SIZE * 19 / 20;
    let mut table = lab.fill_flow_table(entries).unwrap();
    let sweep = table.sweep(redirector::dataplane::flow_table::monotonic_ns()).unwrap();
    eprintln!("flow table: {} entries, swept in {:?}", sweep.entries, sweep.took);
    assert!(sweep.entries >= entries as usize * 9 / 10, "the table is full: {} entries", sweep.entries);
    set_active_moves_new_requests_within_100_ms(lab);
}

fn set_active_moves_new_requests_within_100_ms(lab: Lab) {
    lab.wait_active("region2", Duration::from_secs(2)).unwrap();
    let client = measure(&lab);
    thread::sleep(Duration::from_millis(300));

    let command = std::time::Instant::now();
    let since_start = client.elapsed();
    lab.ctl_ok(&["set-active", "region3"]).unwrap();
    let returned = command.elapsed();
    thread::sleep(Duration::from_millis(400));
    lab.ctl_ok(&["set-active", "--auto"]).unwrap();
    thread::sleep(Duration::from_millis(300));
    let report = client.stop().unwrap();

    let moved = report.first_answer_from(&body(3)).expect("region3 answered after set-active");
    let delay = moved.saturating_sub(since_start);
    eprintln!("set-active returned after {returned:?}; first answer from region3 {delay:?} after the command");
    assert!(delay < Duration::from_millis(100), "region3 answered {delay:?} after set-active");
    assert_eq!(report.failures, 0, "{:?}", report.outages);
    assert_eq!(report.answers.last().unwrap().1, body(2), "--auto: back to the policy's region2");
}

/// New connections as fast as one client makes them (over 1 000/s here,
/// so a single connection lost in a restart shows) while redirectord is
/// killed and restarted four times, twice with SIGKILL, twice with SIGTERM.
#[test]
fn connections_survive_restarts_of_redirectord_at_over_a_thousand_per_second() {
    let mut lab = lab(LabOptions::default());
    lab.wait_active("region2", Duration::from_secs(2)).unwrap();
    lab.ctl_ok(&["set-active", "region1"]).unwrap();
    let fast = Options { pacing: Pacing::Sequential { pause: Duration::ZERO }, ..Options::default() };
    let client = Measurement::start(&lab.topo.client, lab.vip(), fast);
    thread::sleep(Duration::from_millis(300));

    for signal in [libc::SIGKILL, libc::SIGTERM, libc::SIGKILL, libc::SIGTERM] {
        lab.stop_daemon(signal).unwrap();
        thread::sleep(Duration::from_millis(300));
        lab.start_daemon().unwrap();
        assert!(lab.daemon_log().contains("veth-client: XDP Adopted"), "{}", lab.daemon_log());
        thread::sleep(Duration::from_millis(300));
    }
    let elapsed = client.elapsed();
    let report = client.stop().unwrap();

    let rate = report.requests() as f64 / elapsed.as_secs_f64();
    eprintln!("{} connections in {elapsed:?}: {rate:.0}/s, {} failed", report.requests(), report.failures);
    assert!(rate >= 1000.0, "{rate:.0} new connections/s: too slow to see one lost");
    assert_eq!(report.failures, 0, "{:?}\n{}", report.outages, lab.daemon_log());
    // The new daemon adopted what the data plane selected (region1, by the
    // operator); the override itself lived in the old process, so its
    // policy, with every region up, then prefers region2.
    assert_eq!(report.answers[0].1, body(1));
    assert!(lab.status().unwrap().regions.iter().all(|r| r.state == RegionStatus::Up));
}

#[test]
fn bad_config_is_refused_by_check_config_and_reload_and_traffic_is_undisturbed() {
    let lab = lab(LabOptions::default());
    lab.wait_active("region2", Duration::from_secs(2)).unwrap();
    let good = std::fs::read_to_string(lab.config_path()).unwrap();
    let before = lab.status().unwrap();
    let client = measure(&lab);

    let bad = good.replace("priority = 100", "priority = \"high\"");
    std::fs::write(lab.config_path(), &bad).unwrap();
    let line = bad.lines().position(|l| l.contains("\"high\"")).unwrap() + 1;
    let check = std::process::Command::new(redirector_tests::lab::binary("redirectord").unwrap())
        .args(["--check-config", lab.config_path().to_str().unwrap()])
        .output()
        .unwrap();
    let message = String::from_utf8_lossy(&check.stderr);
    assert!(!check.status.success());
    assert!(message.contains(&format!("redirector.toml:{line}")) && message.contains("priority"), "{message}");

    let reload = lab.ctl(&["reload"]).unwrap();
    let message = String::from_utf8_lossy(&reload.stderr);
    assert!(!reload.status.success());
    assert!(message.contains("nothing changed") && message.contains(&format!(":{line}")), "{message}");
    thread::sleep(Duration::from_millis(300));
    let report = client.stop().unwrap();
    assert_eq!(report.failures, 0);
    assert_eq!(report.by_body.keys().collect::<Vec<_>>(), [&body(2)]);
    let after = lab.status().unwrap();
    assert_eq!(
        after.services.iter().map(|s| &s.active).collect::<Vec<_>>(),
        before.services.iter().map(|s| &s.active).collect::<Vec<_>>()
    );

    // A good config reloads.
    std::fs::write(lab.config_path(), good.replace("priority = 100", "priority = 300")).unwrap();
    lab.ctl_ok(&["reload"]).unwrap();
    lab.wait_active("region1", Duration::from_secs(2)).unwrap();
}

#[test]
fn operator_errors_name_what_is_known_and_exit_non_zero() {
    let lab = lab(LabOptions::default());
    for args in [&["drain", "region9"][..], &["set-active", "region9"], &["set-active", "region1", "--service", "mail"]] {
        let out = lab.ctl(args).unwrap();
        let message = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(message.contains("known:") && message.contains("region1") || message.contains("web"), "{args:?}: {message}");
    }
    let usage = lab.ctl(&["frobnicate"]).unwrap();
    assert_eq!(usage.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&usage.stderr).contains("Usage"));

    let json: serde_json::Value = serde_json::from_str(&lab.ctl_ok(&["status", "--json"]).unwrap()).unwrap();
    assert_eq!(json["regions"][1]["name"], "region2");
    assert_eq!(json["regions"][1]["state"], "up");
    assert_eq!(json["services"][0]["name"], "web");
    assert_eq!(json["services"][0]["active"][0], "region2");

    lab.ctl_ok(&["drain", "region2"]).unwrap();
    lab.wait_active("region1", Duration::from_secs(1)).unwrap();
    let json: serde_json::Value = serde_json::from_str(&lab.ctl_ok(&["status", "--json"]).unwrap()).unwrap();
    assert_eq!(json["regions"][1]["state"], "draining");
    lab.ctl_ok(&["undrain", "region2"]).unwrap();
    lab.wait_active("region2", Duration::from_secs(1)).unwrap();
}

/// Answers every heartbeat request at `ns`'s agent address with a reply
/// that echoes its sequence number and timestamp (read off the wire, as
/// anyone on the path can) and carries a MAC under the wrong key, until
/// `stop` is set.
fn spoof_heartbeats(ns: &str, key_file: &std::path::Path, stop: &std::sync::atomic::AtomicBool) {
    use redirector_proto::heartbeat::{Key, Kind, Message, Report, ServiceCheck};
    let _inside = Netns::attach(ns).unwrap().enter().unwrap();
    let socket = std::net::UdpSocket::bind(("0.0.0.0", AGENT_PORT)).unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let wrong = Key::load(key_file).unwrap();
    let mut buf = [0u8; 128];
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let Ok((len, from)) = socket.recv_from(&mut buf) else { continue };
        if len < 24 {
            continue;
        }
        let reply = Message {
            kind: Kind::Reply,
            seq: u64::from_be_bytes(buf[8..16].try_into().unwrap()),
            timestamp_ns: u64::from_be_bytes(buf[16..24].try_into().unwrap()),
            report: Report { service: ServiceCheck::Ok, ..Default::default() },
        };
        socket.send_to(&reply.encode(Some(&wrong)), from).unwrap();
    }
}

#[test]
fn spoofed_heartbeats_do_not_keep_a_dead_region_up() {
    let mut lab = lab(LabOptions { heartbeat: true, heartbeat_key: true, ..Default::default() });
    lab.wait_active("region2", Duration::from_secs(2)).unwrap();

    // The real agent dies; an impostor at its address answers every
    // request at once with well-formed replies it cannot sign.
    lab.kill_agent(2).unwrap();
    let wrong_key = lab.dir.join("wrong.key");
    std::fs::write(&wrong_key, "not-the-lab-key-but-long-enough").unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let region2_ns = lab.topo.region("region2").ns.name().to_string();
    thread::scope(|scope| {
        scope.spawn(|| spoof_heartbeats(&region2_ns, &wrong_key, &stop));
        lab.wait_active("region1", Duration::from_secs(2)).unwrap();
        thread::sleep(Duration::from_millis(200));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });

    let region2 = lab.status().unwrap().regions.into_iter().find(|r| r.name == "region2").unwrap();
    assert_eq!(region2.state, RegionStatus::Down);
    let rejected = unauthenticated(&lab);
    assert!(rejected >= 3, "{rejected} replies rejected as unauthenticated");
}

/// The unauthenticated count of /metrics.
fn unauthenticated(lab: &Lab) -> u64 {
    let metrics = lab.metrics().unwrap();
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(r#"redirector_heartbeat_rejected_total{reason="unauthenticated"} "#))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no unauthenticated counter in\n{metrics}"))
}

#[test]
fn an_agent_without_our_key_or_with_another_refuses_by_name_and_is_counted() {
    let mut lab = lab(LabOptions { heartbeat: true, heartbeat_key: true, ..Default::default() });
    lab.wait_active("region2", Duration::from_secs(2)).unwrap();
    let other = lab.dir.join("other.key");
    std::fs::write(&other, "another-key-of-at-least-16-bytes").unwrap();
    for (key, why) in [(None, "the agent has no key and the request had a MAC"), (Some(other.as_path()), "the agent's key is another")] {
        let before = unauthenticated(&lab);
        lab.replace_agent(2, key).unwrap();
        lab.wait_active("region1", Duration::from_secs(2)).unwrap();
        thread::sleep(Duration::from_millis(300));
        let status = lab.status().unwrap();
        let heartbeat = status.regions[1].checks.iter().find(|c| c.kind == CheckKind::Heartbeat).unwrap();
        let error = heartbeat.last_error.clone().unwrap_or_default();
        assert!(error.contains(why), "{error}");
        assert!(unauthenticated(&lab) >= before + 3, "{} refusals counted", unauthenticated(&lab) - before);
        lab.restore_agent(2).unwrap();
        lab.wait_active("region2", Duration::from_secs(2)).unwrap();
    }
}

#[test]
fn agent_killed_while_http_lives_takes_its_region_down() {
    let mut lab = lab(LabOptions { heartbeat: true, ..Default::default() });
    lab.wait_active("region2", Duration::from_secs(2)).unwrap();
    let client = measure(&lab);
    thread::sleep(Duration::from_millis(300));

    lab.kill_agent(2).unwrap();
    lab.wait_active("region1", Duration::from_secs(2)).unwrap();
    thread::sleep(Duration::from_millis(300));
    let report = client.stop().unwrap();

    // The HTTP server never stopped, so nothing waited for a timeout: new
    // requests moved when the heartbeat check took region2 down. A request
    // in flight at that moment may fail at once: a down region's flows are
    // re-steered on their next packet, and the new region resets them.
    assert!(report.max_t_un() < Duration::from_millis(500), "{:?}", report.outages);
    assert!(report.failures <= 2, "{:?}", report.outages);
    assert_eq!(report.answers.last().unwrap().1, body(1));
    let status = lab.status().unwrap();
    let region2 = status.regions.iter().find(|r| r.name == "region2").unwrap();
    let http = region2.checks.iter().find(|c| c.kind == CheckKind::Http).unwrap();
    let heartbeat = region2.checks.iter().find(|c| c.kind == CheckKind::Heartbeat).unwrap();
    assert_eq!((http.last_ok, heartbeat.last_ok), (Some(true), Some(false)));
}

#[test]
fn detach_answers_then_the_daemon_exits_and_the_program_is_off_every_interface() {
    let mut lab = lab(LabOptions::default());
    let out = lab.ctl(&["detach"]).unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "exit {:?}: {stderr}", out.status);
    assert!(stdout.starts_with("detached from every interface"), "{stdout}");
    assert!(lab.daemon_exit(Duration::from_secs(5)).unwrap().success());
    assert!(!lab.gateway.pins.0.exists(), "pins removed");
    let links = lab.topo.gateway.exec("ip", &["-details", "link", "show"]).unwrap();
    assert!(!links.contains("prog/xdp"), "{links}");
}

#[test]
fn status_into_a_pipe_closed_early_ends_quietly() {
    let lab = lab(LabOptions::default());
    let ctl = redirector_tests::lab::binary("redirectorctl").unwrap();
    // `true` closes the pipe before redirectorctl has its answer to write.
    for reader in ["true", "head -c 1 >/dev/null"] {
        let script = format!("{} --socket {} status | {reader}", ctl.display(), lab.socket().display());
        let out = std::process::Command::new("sh").args(["-c", &script]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.is_empty(), "| {reader}: {stderr}");
    }
}

#[test]
fn check_config_looks_up_the_interfaces_on_this_host_unless_offline() {
    let lab = lab(LabOptions::default());
    let redirectord = redirector_tests::lab::binary("redirectord").unwrap();
    let config = lab.config_path();
    let in_gateway = lab
        .topo
        .gateway
        .command(redirectord.to_str().unwrap())
        .args(["--check-config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(in_gateway.status.success(), "{}", String::from_utf8_lossy(&in_gateway.stderr));
    let on_host = std::process::Command::new(&redirectord).args(["--check-config", config.to_str().unwrap()]).output().unwrap();
    let message = String::from_utf8_lossy(&on_host.stderr);
    assert!(!on_host.status.success());
    assert!(message.contains("interfaces[0]: no interface named \"veth-client\""), "{message}");
    let offline = std::process::Command::new(&redirectord)
        .args(["--check-config", config.to_str().unwrap(), "--offline"])
        .output()
        .unwrap();
    assert!(offline.status.success(), "{}", String::from_utf8_lossy(&offline.stderr));
}

/// With every region's checks failing (keep-last), the data plane still
/// sends new connections to the last region and re-steers each of their
/// packets off it; the connections that closed meanwhile must not stay
/// counted once the regions are back.
#[test]
fn connections_that_came_and_went_while_every_region_was_down_are_not_counted_after_recovery() {
    let lab = lab(LabOptions { heartbeat: true, sample_ms: 200, ..Default::default() });
    lab.wait_active("region2", Duration::from_secs(2)).unwrap();
    for region in 1..=3 {
        lab.block_probes(region).unwrap();
    }
    redirector_tests::lab::wait_for(Duration::from_secs(3), || {
        let status = lab.status()?;
        anyhow::ensure!(status.regions.iter().all(|r| r.state == RegionStatus::Down), "not all down yet");
        Ok(())
    })
    .unwrap();
    let vip = lab.vip();
    // Whichever region took new flows last keeps them (keep-last).
    let answered = lab
        .topo
        .client
        .on_thread(|| Ok((0..500).filter(|_| redirector_tests::client::get(vip, Duration::from_secs(1)).is_ok()).count()))
        .unwrap();
    assert_eq!(answered, 500, "keep-last: every connection answered");
    for region in 1..=3 {
        lab.unblock_probes(region).unwrap();
    }
    redirector_tests::lab::wait_for(Duration::from_secs(5), || {
        for region in lab.status()?.regions {
            anyhow::ensure!(region.state == RegionStatus::Up, "{} {}", region.name, region.state);
            let agent = region.agent_connections.unwrap_or(u32::MAX) as u64;
            anyhow::ensure!(
                region.active_flows == agent,
                "{}: {} active flows, the agent counts {agent}",
                region.name,
                region.active_flows
            );
        }
        Ok(())
    })
    .unwrap();
}

/// `ip netns exec` gives the daemon a private /sys, so a bpffs of its own:
/// its pins would die with it. It must refuse to start, saying how to run.
#[test]
fn a_daemon_whose_pins_would_die_with_it_refuses_to_start() {
    require_root();
    let lab = Lab::new(&unique_name("rdp"), LabOptions::default()).unwrap();
    let log_file = lab.dir.join("private-bpffs.log");
    let log = std::fs::File::create(&log_file).unwrap();
    let mut command = std::process::Command::new("ip");
    command
        .args(["netns", "exec", lab.topo.gateway.name()])
        .arg(redirector_tests::lab::binary("redirectord").unwrap())
        .args(["--config", lab.config_path().to_str().unwrap()])
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    let mut daemon = redirector_tests::lab::Process::spawn(command, "redirectord under ip netns exec").unwrap();
    let mut exited = None;
    for _ in 0..500 {
        exited = daemon.exited().unwrap();
        if exited.is_some() {
            break;
        }
        thread::sleep(Duration::from_millis(10));
    }
    let log = std::fs::read_to_string(&log_file).unwrap();
    assert!(exited.is_some_and(|status| !status.success()), "still running or exited 0: {log}");
    assert!(log.contains("only this process's mount namespace sees") && log.contains("nsenter --net="), "{log}");
    assert!(!lab.gateway.pins.0.exists(), "nothing pinned where the host sees it");
}

/// A service on the lab's VIP, served on port 80 by all three regions.
fn extra_service(name: &str, port: u16, vip: std::net::IpAddr) -> String {
    format!(
        "\n[[service]]\nname = {name:?}\nvip = \"{vip}\"\nport = {port}\nprotocol = \"tcp\"\n\
         regions = [\"region1\", \"region2\", \"region3\"]\ntarget_port = 80\n"
    )
}

/// Reloads back to back at 10 ms probes, alternating two configs that
/// remove, add and re-key services, change one's port, add a check to one
/// region and reorder another's: after each, every service the previous
/// config had still answers, and at the end every service steers where
/// status says, the daemon alive.
#[test]
fn reloads_back_to_back_with_probes_in_flight_keep_every_service_steering() {
    let mut lab = lab(LabOptions { heartbeat: true, interval_ms: 10, timeout_ms: 10, ..Default::default() });
    lab.wait_active("region2", Duration::from_secs(2)).unwrap();
    let vip = lab.vip().ip();
    let base = std::fs::read_to_string(lab.config_path()).unwrap();
    let a = format!(
        "{base}{}{}{}",
        extra_service("s8081", 8081, vip),
        extra_service("s8082", 8082, vip),
        extra_service("s8083", 8083, vip)
    );
    // Region1 gains a tcp check, region3's checks swap places; s8083 moves
    // first (every id changes), s8081 goes, s8082 moves to port 8092, s8084
    // is new.
    let region1_http = "{ kind = \"http\", url = \"http://10.1.0.2:80/\", expect_status = 200 }";
    let region3_checks = "checks = [{ kind = \"http\", url = \"http://10.3.0.2:80/\", expect_status = 200 }, { kind = \"heartbeat\", address = \"10.3.0.2:7946\" }]";
    assert!(base.contains(region1_http) && base.contains(region3_checks), "{base}");
    let b_base = base
        .replace(region1_http, &format!("{region1_http}, {{ kind = \"tcp\", address = \"10.1.0.2:80\" }}"))
        .replace(
            region3_checks,
            "checks = [{ kind = \"heartbeat\", address = \"10.3.0.2:7946\" }, { kind = \"http\", url = \"http://10.3.0.2:80/\", expect_status = 200 }]",
        );
    let b = format!(
        "{b_base}{}{}{}",
        extra_service("s8083", 8083, vip),
        extra_service("s8082", 8092, vip),
        extra_service("s8084", 8084, vip)
    );
    let ports = |text: &str| -> Vec<u16> {
        text.lines().filter_map(|l| l.strip_prefix("port = ")).map(|p| p.parse().unwrap()).collect()
    };
    std::fs::write(lab.config_path(), &a).unwrap();
    lab.ctl_ok(&["reload"]).unwrap();
    lab.wait_active("region2", Duration::from_secs(2)).unwrap();
    thread::sleep(Duration::from_millis(200));

    let mut previous = a.clone();
    for i in 0..30 {
        let next = if i % 2 == 0 { &b } else { &a };
        std::fs::write(lab.config_path(), next).unwrap();
        lab.ctl_ok(&["reload"]).unwrap();
        // Services of the config before, which also stand in the new one
        // on the same port, must not have stopped answering.
        let kept: Vec<u16> = ports(&previous).into_iter().filter(|p| ports(next).contains(p)).collect();
        let failed: Vec<u16> = lab
            .topo
            .client
            .on_thread(|| {
                Ok(kept
                    .iter()
                    .copied()
                    .filter(|&port| redirector_tests::client::get(std::net::SocketAddr::new(vip, port), Duration::from_millis(500)).is_err())
                    .collect())
            })
            .unwrap();
        assert!(failed.is_empty(), "reload {i}: ports {failed:?} stopped answering\n{}", lab.daemon_log());
        previous = next.clone();
        thread::sleep(Duration::from_millis(5 + (i as u64 * 7) % 7));
    }

    redirector_tests::lab::wait_for(Duration::from_secs(3), || {
        let status = lab.status()?;
        anyhow::ensure!(status.regions.iter().all(|r| r.state == RegionStatus::Up), "regions not all up");
        anyhow::ensure!(status.services.iter().all(|s| s.active == ["region2"]), "{:?}", status.services);
        Ok(())
    })
    .unwrap();
    let answers: Vec<String> = lab
        .topo
        .client
        .on_thread(|| {
            Ok(ports(&a)
                .into_iter()
                .map(|port| redirector_tests::client::get(std::net::SocketAddr::new(vip, port), Duration::from_secs(1)).unwrap_or_default())
                .collect())
        })
        .unwrap();
    assert!(answers.iter().all(|body| *body == redirector_tests::lab::body(2)), "{answers:?}");
    assert!(lab.daemon_exit(Duration::from_millis(10)).is_err(), "redirectord still runs");
    assert!(!lab.daemon_log().contains("panicked"), "{}", lab.daemon_log());
}
