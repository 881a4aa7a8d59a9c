//! The config: every error class with its line and key.

use redirector_common::{MAX_REGIONS, MAX_SERVICES};

use super::{validate::without_spanned_segments, *};

const LAB: &str = r#"interfaces = ["veth-client", "veth-r1", "veth-r2"]
metrics_listen = "127.0.0.1:9477"

[health]
interval_ms = 100
fall = 3
rise = 3
timeout_ms = 100

[failover]
preempt = true
preempt_delay_ms = 0
max_switches_per_minute = 6
all_down = "keep-last"

[[region]]
name = "region1"
address = "10.1.0.2"
priority = 100
checks = [{ kind = "http", url = "http://10.1.0.2:80/", expect_status = 200 }]

[[region]]
name = "region2"
address = "10.2.0.2"
priority = 200
checks = [{ kind = "heartbeat", address = "10.2.0.2:7946" }]

[[service]]
name = "web"
vip = "10.2.0.2"
port = 80
protocol = "tcp"
policy = "failover"
regions = ["region1", "region2"]
"#;

/// The message for `text`, which must be refused.
fn refused(text: &str) -> String {
    Config::parse(text, "lab.toml").unwrap_err().to_string()
}

/// LAB with `from` replaced by `to` (which must occur once).
fn lab_with(from: &str, to: &str) -> String {
    assert_eq!(LAB.matches(from).count(), 1, "{from:?}");
    LAB.replace(from, to)
}

fn line_of(text: &str, needle: &str) -> usize {
    text[..text.find(needle).unwrap()].lines().count() + 1
}

#[test]
fn the_lab_config_loads_with_defaults_filled_in() {
    let c = Config::parse(LAB, "lab.toml").unwrap();
    assert_eq!(c.interfaces, ["veth-client", "veth-r1", "veth-r2"]);
    assert_eq!(c.pin_path, PathBuf::from("/sys/fs/bpf/redirector"));
    assert_eq!(c.control_socket, PathBuf::from(DEFAULT_SOCKET));
    assert_eq!(c.metrics_listen, Some("127.0.0.1:9477".parse().unwrap()));
    assert_eq!(c.failover, DEFAULT_FAILOVER);
    assert_eq!(c.regions.len(), 2);
    let r2 = &c.regions[1];
    assert_eq!((r2.id, r2.name.as_str(), r2.priority), (1, "region2", 200));
    assert_eq!(r2.health, DEFAULT_HEALTH);
    assert_eq!(
        r2.checks,
        [Check::Heartbeat {
            address: "10.2.0.2:7946".parse().unwrap(),
            key_file: None
        }]
    );
    let Check::Http(http) = &c.regions[0].checks[0] else {
        panic!("{:?}", c.regions[0].checks)
    };
    assert_eq!(
        (http.host.as_str(), http.port, http.path.as_str()),
        ("10.1.0.2", 80, "/")
    );
    let web = &c.services[0];
    assert_eq!(
        (web.id, web.regions.as_slice(), web.target_port),
        (0, &[0u8, 1][..], None)
    );
    assert_eq!(
        (web.policy, web.weights.as_slice()),
        (PolicyKind::Failover, &[1, 1][..])
    );
    assert_eq!(
        web.addr,
        ServiceAddr {
            vip: Ipv4Addr::new(10, 2, 0, 2).into(),
            port: 80,
            protocol: Protocol::Tcp
        }
    );
}

#[test]
fn optional_sections_take_their_documented_defaults() {
    let text = r#"interfaces = ["eth0"]
[[region]]
name = "a"
address = "10.0.0.1"
checks = [{ kind = "tcp", address = "10.0.0.1:80" }]
"#;
    let c = Config::parse(text, "min.toml").unwrap();
    assert_eq!(c.failover, DEFAULT_FAILOVER);
    assert_eq!(c.regions[0].health, DEFAULT_HEALTH);
    assert_eq!(c.regions[0].priority, 0);
    assert_eq!(c.metrics_listen, None);
    assert!(c.services.is_empty());
    assert_eq!(c.balance, DEFAULT_BALANCE);
    assert_eq!(c.balance.dwell, Duration::from_secs(3));
    let a = &c.regions[0];
    assert_eq!((a.weight, a.pps, a.flows, a.cpu), (1, None, None, None));
}

#[test]
fn a_region_overrides_the_health_defaults_key_by_key() {
    let text = lab_with(
        "priority = 200\n",
        "priority = 200\ninterval_ms = 50\nfall = 2\ntimeout_ms = 40\n",
    );
    let c = Config::parse(&text, "lab.toml").unwrap();
    assert_eq!(
        c.regions[1].health,
        HealthSettings {
            interval: Duration::from_millis(50),
            fall: 2,
            rise: 3,
            timeout: Duration::from_millis(40),
        }
    );
    assert_eq!(c.regions[0].health, DEFAULT_HEALTH);
}

#[test]
fn a_wrong_type_names_the_line_and_the_key_path() {
    let text = lab_with("priority = 200", "priority = \"high\"");
    let line = line_of(&text, "priority = \"high\"");
    assert_eq!(
        refused(&text),
        format!(
            "lab.toml:{line}: region[1].priority: invalid type: string \"high\", expected u32"
        )
    );
}

#[test]
fn an_unknown_key_is_refused_by_name() {
    let text = lab_with("priority = 100", "prioirty = 100");
    let line = line_of(&text, "prioirty");
    let message = refused(&text);
    assert!(
        message.starts_with(&format!(
            "lab.toml:{line}: region[0].prioirty: unknown field `prioirty`"
        )),
        "{message}"
    );
    let text = lab_with("fall = 3", "fal = 3");
    assert!(refused(&text).starts_with("lab.toml:6: health.fal: unknown field `fal`"));
    let text = lab_with("all_down", "all_dawn");
    assert!(refused(&text).starts_with("lab.toml:14: failover.all_dawn: unknown field"));
}

#[test]
fn the_alert_webhook_is_off_by_default_and_checked_when_configured() {
    assert_eq!(Config::parse(LAB, "lab.toml").unwrap().alerts, None);
    let alerts = "\n[alerts]\nlisten = \"127.0.0.1:9478\"\ntoken_file = \"/etc/redirector/alerts.token\"\n";
    let c = Config::parse(&format!("{LAB}{alerts}"), "lab.toml").unwrap();
    assert_eq!(
        c.alerts,
        Some(AlertsSettings {
            listen: "127.0.0.1:9478".parse().unwrap(),
            token_file: "/etc/redirector/alerts.token".into(),
            label: "region".into(),
        })
    );
    let with = |extra: &str| format!("{LAB}{alerts}{extra}");
    let text = with("label = \"site\"\n");
    assert_eq!(Config::parse(&text, "lab.toml").unwrap().alerts.unwrap().label, "site");
    let text = with("label = \"\"\n");
    assert!(refused(&text).starts_with(&format!("lab.toml:{}: alerts.label: must name", line_of(&text, "label ="))), "{}", refused(&text));
    let text = with("lable = \"site\"\n");
    assert!(refused(&text).starts_with(&format!("lab.toml:{}: alerts.lable: unknown field", line_of(&text, "lable"))), "{}", refused(&text));
    let text = format!("{LAB}\n[alerts]\nlisten = \"127.0.0.1:9477\"\ntoken_file = \"t\"\n");
    let message = refused(&text);
    assert!(
        message.starts_with(&format!("lab.toml:{}: alerts.listen: is metrics_listen too", line_of(&text, "\nlisten"))),
        "{message}"
    );
    let text = format!("{LAB}\n[alerts]\nlisten = \"127.0.0.1:9478\"\n");
    assert!(refused(&text).contains("alerts: missing field `token_file`"), "{}", refused(&text));
}

#[test]
fn sync_is_off_by_default_and_checked_when_configured() {
    assert_eq!(Config::parse(LAB, "lab.toml").unwrap().sync, None);
    let sync = |body: &str| format!("{LAB}\n[sync]\n{body}\n");
    let text = sync("listen = \"10.255.0.1:7947\"\npeers = [\"10.255.0.2:7947\"]\nkey_file = \"/etc/redirector/sync.key\"");
    assert_eq!(
        Config::parse(&text, "lab.toml").unwrap().sync,
        Some(SyncSettings {
            listen: "10.255.0.1:7947".parse().unwrap(),
            peers: vec!["10.255.0.2:7947".parse().unwrap()],
            key_file: Some("/etc/redirector/sync.key".into()),
        })
    );
    let cases = [
        ("listen = \"0.0.0.0:7947\"\npeers = [\"10.255.0.2:7947\"]", "\nlisten =", "sync.listen: must be this gateway's own address"),
        ("listen = \"10.255.0.1:7947\"\npeers = []", "peers =", "sync.peers: names no peer"),
        ("listen = \"10.255.0.1:7947\"\npeers = [\"10.255.0.1:7947\"]", "peers =", "sync.peers[0]: 10.255.0.1:7947 is sync.listen"),
        (
            "listen = \"10.255.0.1:7947\"\npeers = [\"10.255.0.2:7947\",\n  \"10.255.0.2:7947\"]",
            "  \"10.255.0.2",
            "sync.peers[1]: 10.255.0.2:7947 is listed twice",
        ),
        ("listen = \"10.255.0.1:7947\"\npeers = [\"[fd00::2]:7947\"]", "peers =", "sync.peers[0]: [fd00::2]:7947 is not of sync.listen's"),
        ("listen = \"10.255.0.1:7947\"\npeers = [\"10.255.0.2\"]", "peers =", "sync.peers[0]: invalid socket address syntax"),
        ("listen = \"10.255.0.1:7947\"\npeers = [\"10.255.0.2:7947\"]\nkeyfile = \"k\"", "keyfile", "sync.keyfile: unknown field"),
    ];
    for (body, line, start) in cases {
        let text = sync(body);
        let message = refused(&text);
        assert!(message.starts_with(&format!("lab.toml:{}: {start}", line_of(&text, line))), "{message}");
    }
    assert!(refused(&sync("peers = [\"10.255.0.2:7947\"]")).contains("sync: missing field `listen`"));
}

#[test]
fn an_unknown_key_inside_a_check_is_refused() {
    let text = lab_with("expect_status = 200", "expect_stauts = 200");
    let message = refused(&text);
    assert!(
        message.starts_with("lab.toml:20: region[0].checks[0].expect_stauts: unknown field"),
        "{message}"
    );
}

#[test]
fn a_key_of_another_check_kind_is_refused() {
    let text = lab_with(
        r#"address = "10.2.0.2:7946""#,
        r#"address = "10.2.0.2:7946", url = "http://x/""#,
    );
    assert_eq!(
        refused(&text),
        "lab.toml:26: region \"region2\".checks[0].url: a heartbeat check has no url (its keys: address, key_file)"
    );
}

#[test]
fn a_check_without_its_required_key_is_refused() {
    let text = lab_with(r#", address = "10.2.0.2:7946""#, "");
    assert_eq!(
        refused(&text),
        "lab.toml:26: region \"region2\".checks[0].address: a heartbeat check needs address"
    );
}

#[test]
fn a_bfd_check_takes_the_peers_address_alone_and_an_optional_key() {
    let heartbeat = r#"{ kind = "heartbeat", address = "10.2.0.2:7946" }"#;
    let with = |check: &str| lab_with(heartbeat, check);
    let config = Config::parse(&with(r#"{ kind = "bfd", address = "10.2.0.2" }"#), "lab.toml").unwrap();
    assert_eq!(
        config.regions[1].checks[0],
        Check::Bfd { address: "10.2.0.2".parse().unwrap(), key_file: None, key_id: 1 }
    );
    assert_eq!(config.regions[1].checks[0].to_string(), "bfd 10.2.0.2");
    let keyed = with(r#"{ kind = "bfd", address = "10.2.0.2", key_file = "/etc/redirector/bfd.key", key_id = 9 }"#);
    assert_eq!(
        Config::parse(&keyed, "lab.toml").unwrap().regions[1].checks[0],
        Check::Bfd { address: "10.2.0.2".parse().unwrap(), key_file: Some("/etc/redirector/bfd.key".into()), key_id: 9 }
    );
    assert_eq!(
        refused(&with(r#"{ kind = "bfd", address = "10.2.0.2:3784" }"#)),
        "lab.toml:26: region \"region2\".checks[0].address: \"10.2.0.2:3784\" is not an IPv4 address (a bfd check \
         takes the peer's address alone: BFD's port is 3784)"
    );
    assert_eq!(
        refused(&with(r#"{ kind = "bfd", address = "10.2.0.2", url = "http://10.2.0.2/" }"#)),
        "lab.toml:26: region \"region2\".checks[0].url: a bfd check has no url (its keys: address, key_file, key_id)"
    );
    assert_eq!(
        refused(&with(r#"{ kind = "heartbeat", address = "10.2.0.2" }"#)),
        "lab.toml:26: region \"region2\".checks[0].address: \"10.2.0.2\" is not an address and port (ADDR:PORT, or \
         [ADDR]:PORT for IPv6)"
    );
    let twice = with(r#"{ kind = "bfd", address = "10.2.0.2" }, { kind = "bfd", address = "10.2.0.2" }"#);
    assert_eq!(
        refused(&twice),
        "lab.toml:26: region \"region2\".checks[1]: 10.2.0.2 is region \"region2\".checks[0]'s BFD peer too: one \
         session per peer, one check"
    );
    assert_eq!(
        refused(&with(r#"{ kind = "heartbeat", address = "10.2.0.2:7946", key_id = 3 }"#)),
        "lab.toml:26: region \"region2\".checks[0].key_id: a heartbeat check has no key_id (its keys: address, key_file)"
    );
}

#[test]
fn heartbeat_tcp_and_http_checks_may_reach_a_region_over_ipv6() {
    let heartbeat = r#"{ kind = "heartbeat", address = "10.2.0.2:7946" }"#;
    let with = |checks: &str| lab_with(heartbeat, checks);
    let config = Config::parse(
        &with(
            r#"{ kind = "heartbeat", address = "[fd00:2::2]:7946" }, { kind = "tcp", address = "[fd00:2::2]:80" }, { kind = "http", url = "http://[fd00:2::2]:8080/health" }"#,
        ),
        "lab.toml",
    )
    .unwrap();
    let shown: Vec<String> = config.regions[1].checks.iter().map(ToString::to_string).collect();
    assert_eq!(shown, ["heartbeat [fd00:2::2]:7946", "tcp [fd00:2::2]:80", "http http://[fd00:2::2]:8080/health"]);
    assert_eq!(
        config.regions[1].checks[1],
        Check::Tcp { address: "[fd00:2::2]:80".parse().unwrap() }
    );
    let refusals = [
        (
            r#"{ kind = "tcp", address = "fd00:2::2:80" }"#,
            "\"fd00:2::2:80\" is not an address and port (ADDR:PORT, or [ADDR]:PORT for IPv6)",
        ),
        (r#"{ kind = "tcp", address = "[fd00:2::zz]:80" }"#, "\"[fd00:2::zz]:80\" is not an address and port (ADDR:PORT, or [ADDR]:PORT for IPv6)"),
        (r#"{ kind = "heartbeat", address = "[::]:7946" }"#, ":: is the unspecified address, not a host's"),
        (r#"{ kind = "tcp", address = "[ff02::1]:80" }"#, "ff02::1 is a multicast address, not a host's"),
        (r#"{ kind = "tcp", address = "[fd00:2::2]:0" }"#, "[fd00:2::2]:0: port 0 is no port to probe"),
        (r#"{ kind = "tcp", address = "[::ffff:0.0.0.0]:80" }"#, "0.0.0.0 is the unspecified address, not a host's"),
        (
            r#"{ kind = "heartbeat", address = "[fe80::1]:7946" }"#,
            "fe80::1 is link-local (give a tcp or heartbeat check its interface: [ADDR%IFINDEX]:PORT), not a host's",
        ),
    ];
    for (check, why) in refusals {
        assert_eq!(refused(&with(check)), format!("lab.toml:26: region \"region2\".checks[0].address: {why}"), "{check}");
    }
    assert_eq!(
        refused(&with(r#"{ kind = "http", url = "http://fd00:2::2/" }"#)),
        "lab.toml:26: region \"region2\".checks[0].url: \"http://fd00:2::2/\": bad host \"fd00:2::2\" (an IPv6 address \
         goes in brackets)"
    );
    assert_eq!(
        refused(&with(r#"{ kind = "http", url = "http://[::]/" }"#)),
        "lab.toml:26: region \"region2\".checks[0].url: :: is the unspecified address, not a host's"
    );
    // An IPv4-mapped address is the IPv4 address; a link-local one with
    // its interface is taken as given.
    let config = Config::parse(
        &with(r#"{ kind = "heartbeat", address = "[::ffff:10.2.0.2]:7946" }, { kind = "tcp", address = "[fe80::2%3]:80" }"#),
        "lab.toml",
    )
    .unwrap();
    assert_eq!(
        config.regions[1].checks,
        [
            Check::Heartbeat { address: "10.2.0.2:7946".parse().unwrap(), key_file: None },
            Check::Tcp { address: "[fe80::2%3]:80".parse().unwrap() },
        ]
    );
    let Check::Http(http) = &Config::parse(&with(r#"{ kind = "http", url = "http://[fd00:2::2]:8080/health" }"#), "lab.toml")
        .unwrap()
        .regions[1]
        .checks[0]
    else {
        panic!("an http check")
    };
    assert_eq!((http.host.as_str(), http.port, http.path.as_str()), ("fd00:2::2", 8080, "/health"));
}

#[test]
fn a_missing_key_names_its_table() {
    let text = lab_with("address = \"10.1.0.2\"\n", "");
    assert_eq!(
        refused(&text),
        format!(
            "lab.toml:{}: region[0]: missing field `address`",
            line_of(&text, "[[region]]")
        )
    );
}

#[test]
fn addresses_must_parse() {
    let text = lab_with(r#"vip = "10.2.0.2""#, r#"vip = "10.2.0.300""#);
    assert_eq!(refused(&text), "lab.toml:30: service[0].vip: invalid IP address syntax");
    let text = lab_with(r#"address = "10.1.0.2""#, r#"address = "fd00:1::2::3""#);
    assert_eq!(refused(&text), "lab.toml:18: region[0].address: invalid IP address syntax");
    let text = lab_with(r#"address = "10.1.0.2""#, "address = \"10.1.0.2\"\naddress6 = \"10.1.0.2\"");
    assert_eq!(refused(&text), "lab.toml:19: region[0].address6: invalid IPv6 address syntax");
}

/// LAB with an IPv6 service `web6` on `vip` next to `web`, and region2
/// at `region2` (its address lines).
fn dual_stack(vip: &str, region2: &str) -> String {
    let text = lab_with(r#"address = "10.2.0.2""#, region2);
    format!("{text}\n[[service]]\nname = \"web6\"\nvip = {vip:?}\nport = 80\nprotocol = \"tcp\"\nregions = [\"region2\"]\n")
}

#[test]
fn an_ipv6_service_takes_its_regions_ipv6_addresses() {
    let c = Config::parse(&dual_stack("fd00:2::100", "address = \"10.2.0.2\"\naddress6 = \"fd00:2::2\""), "lab.toml").unwrap();
    let (web, web6, region2) = (&c.services[0], &c.services[1], &c.regions[1]);
    assert_eq!(web6.addr.vip, "fd00:2::100".parse::<IpAddr>().unwrap());
    assert_eq!(web6.addr.to_string(), "tcp [fd00:2::100]:80");
    assert_eq!(web6.endpoint(region2), Some("[fd00:2::2]:80".parse().unwrap()));
    assert_eq!(web.endpoint(region2), Some("10.2.0.2:80".parse().unwrap()), "the IPv4 service keeps IPv4");
    // A region of IPv6 alone serves IPv6 services alone.
    let c = Config::parse(&dual_stack("fd00:2::100", "address = \"fd00:2::2\"").replace(r#"regions = ["region1", "region2"]"#, r#"regions = ["region1"]"#), "lab.toml").unwrap();
    assert_eq!(c.services[1].endpoint(&c.regions[1]), Some("[fd00:2::2]:80".parse().unwrap()));
    assert_eq!(c.services[0].endpoint(&c.regions[1]), None);
}

#[test]
fn a_service_and_its_regions_share_a_family() {
    let line = |text: &str, needle: &str| line_of(text, needle);
    let text = dual_stack("fd00:2::100", "address = \"10.2.0.2\"");
    assert_eq!(
        refused(&text),
        format!(
            "lab.toml:{}: service \"web6\".regions: region \"region2\" has no IPv6 address for VIP fd00:2::100 (give it address6)",
            line(&text, r#"regions = ["region2"]"#)
        )
    );
    let text = dual_stack("fd00:2::100", "address = \"fd00:2::2\"");
    assert_eq!(
        refused(&text),
        format!(
            "lab.toml:{}: service \"web\".regions: region \"region2\" has no IPv4 address for VIP 10.2.0.2 (its address is IPv6 only)",
            line(&text, r#"regions = ["region1", "region2"]"#)
        )
    );
    let text = dual_stack("fd00:2::100", "address = \"fd00:2::2\"\naddress6 = \"fd00:2::3\"");
    assert_eq!(
        refused(&text),
        format!(
            "lab.toml:{}: region \"region2\".address6: address is IPv6 already: address6 gives a region whose address is IPv4 its IPv6 address",
            line(&text, "address6")
        )
    );
}

#[test]
fn data_plane_addresses_are_routed_hosts_of_either_family() {
    let region2 = "address = \"10.2.0.2\"\naddress6 = \"fd00:2::2\"";
    let vip = |to: &str| refused(&dual_stack(to, region2));
    let at = line_of(&dual_stack("::", region2), "vip = \"::\"");
    assert_eq!(vip("::"), format!("lab.toml:{at}: service \"web6\".vip: :: is the unspecified address, not a host's"));
    assert_eq!(vip("ff02::1"), format!("lab.toml:{at}: service \"web6\".vip: ff02::1 is a multicast address, not a host's"));
    assert_eq!(
        vip("fe80::1"),
        format!("lab.toml:{at}: service \"web6\".vip: fe80::1 is link-local: traffic is steered to routed addresses")
    );
    assert_eq!(
        vip("::ffff:10.2.0.9"),
        format!("lab.toml:{at}: service \"web6\".vip: ::ffff:10.2.0.9 is IPv4-mapped: write the IPv4 address, 10.2.0.9")
    );
    let text = dual_stack("fd00:2::100", "address = \"10.2.0.2\"\naddress6 = \"fe80::2\"");
    assert_eq!(
        refused(&text),
        format!(
            "lab.toml:{}: region \"region2\".address6: fe80::2 is link-local: traffic is steered to routed addresses",
            line_of(&text, "address6")
        )
    );
}

#[test]
fn addresses_are_hosts_and_probed_ports_are_ports() {
    let vip = |to: &str| refused(&lab_with(r#"vip = "10.2.0.2""#, &format!("vip = {to:?}")));
    assert_eq!(vip("0.0.0.0"), "lab.toml:30: service \"web\".vip: 0.0.0.0 is the unspecified address, not a host's");
    assert_eq!(
        vip("255.255.255.255"),
        "lab.toml:30: service \"web\".vip: 255.255.255.255 is the broadcast address, not a host's"
    );
    let region = refused(&lab_with(r#"address = "10.1.0.2""#, r#"address = "224.0.0.1""#));
    assert_eq!(region, "lab.toml:18: region \"region1\".address: 224.0.0.1 is a multicast address, not a host's");
    let port = refused(&lab_with(r#"address = "10.2.0.2:7946""#, r#"address = "10.2.0.2:0""#));
    assert_eq!(port, "lab.toml:26: region \"region2\".checks[0].address: 10.2.0.2:0: port 0 is no port to probe");
    let unspecified = refused(&lab_with(r#"address = "10.2.0.2:7946""#, r#"address = "0.0.0.0:7946""#));
    assert!(unspecified.contains("0.0.0.0 is the unspecified address"), "{unspecified}");
}

#[test]
fn a_syntax_error_names_its_line() {
    let message = refused(&lab_with("fall = 3", "fall = "));
    assert!(message.starts_with("lab.toml:6: "), "{message}");
}

#[test]
fn a_service_naming_an_unknown_region_lists_the_known_ones() {
    let text = lab_with(
        r#"regions = ["region1", "region2"]"#,
        r#"regions = ["region1", "region9"]"#,
    );
    assert_eq!(
        refused(&text),
        "lab.toml:34: service \"web\".regions: unknown region \"region9\" (known: region1, region2)"
    );
}

#[test]
fn a_service_lists_a_region_once() {
    let text = lab_with(
        r#"regions = ["region1", "region2"]"#,
        r#"regions = ["region1", "region1"]"#,
    );
    assert_eq!(
        refused(&text),
        "lab.toml:34: service \"web\".regions: \"region1\" appears twice (first on line 34)"
    );
}

#[test]
fn names_are_unique() {
    let text = lab_with(r#"name = "region2""#, r#"name = "region1""#);
    assert_eq!(
        refused(&text),
        "lab.toml:23: region[1].name: \"region1\" appears twice (first on line 17)"
    );
    let text = format!("{LAB}\n[[service]]\nname = \"web\"\nvip = \"10.9.0.1\"\nport = 1\nprotocol = \"udp\"\nregions = [\"region1\"]\n");
    let line = line_of(&text, "name = \"web\"\nvip = \"10.9.0.1\"");
    assert_eq!(
        refused(&text),
        format!("lab.toml:{line}: service[1].name: \"web\" appears twice (first on line 29)")
    );
}

#[test]
fn names_are_plain_words() {
    let text = lab_with(r#"name = "region1""#, r#"name = "region one""#);
    assert!(
        refused(&text).starts_with("lab.toml:17: region[0].name: \"region one\": a name is")
    );
}

#[test]
fn two_services_cannot_share_an_address() {
    let text = format!("{LAB}\n[[service]]\nname = \"web2\"\nvip = \"10.2.0.2\"\nport = 80\nprotocol = \"tcp\"\nregions = [\"region1\"]\n");
    let line = text.lines().count() - 3;
    assert_eq!(
        refused(&text),
        format!("lab.toml:{line}: service \"web2\".vip: tcp 10.2.0.2:80 is already service \"web\" (line 30)")
    );
}

#[test]
fn ports_follow_the_protocol() {
    let icmp = lab_with(r#"protocol = "tcp""#, r#"protocol = "icmp""#);
    assert_eq!(
        refused(&icmp),
        "lab.toml:31: service \"web\".port: an icmp service has no port"
    );
    let no_port = lab_with("port = 80\n", "");
    assert_eq!(
        refused(&no_port),
        "lab.toml:31: service \"web\".port: a tcp service needs a port"
    );
    let zero = lab_with("port = 80\n", "port = 0\n");
    assert_eq!(
        refused(&zero),
        "lab.toml:31: service \"web\".port: port 0 is not a service port"
    );
    let ping = lab_with("port = 80\nprotocol = \"tcp\"", "protocol = \"icmp\"");
    let c = Config::parse(&ping, "lab.toml").unwrap();
    assert_eq!(c.services[0].addr.port, 0);
}

#[test]
fn target_port_moves_every_backend() {
    let text = lab_with("port = 80\n", "port = 80\ntarget_port = 8080\n");
    let c = Config::parse(&text, "lab.toml").unwrap();
    let web = &c.services[0];
    assert_eq!(
        c.regions.iter().map(|r| web.endpoint(r)).collect::<Vec<_>>(),
        [Some("10.1.0.2:8080".parse().unwrap()), Some("10.2.0.2:8080".parse::<SocketAddr>().unwrap())]
    );
    let plain = Config::parse(LAB, "lab.toml").unwrap();
    assert_eq!(plain.services[0].endpoint(&plain.regions[1]), Some("10.2.0.2:80".parse().unwrap()));
}

#[test]
fn health_counts_and_times_have_floors() {
    assert_eq!(
        refused(&lab_with("fall = 3", "fall = 0")),
        "lab.toml:6: health.fall: must be at least 1"
    );
    assert_eq!(
        refused(&lab_with("rise = 3", "rise = 0")),
        "lab.toml:7: health.rise: must be at least 1"
    );
    assert_eq!(
        refused(&lab_with("interval_ms = 100", "interval_ms = 5")),
        "lab.toml:5: health.interval_ms: 5 ms is below the minimum of 10 ms"
    );
    assert_eq!(
        refused(&lab_with("timeout_ms = 100", "timeout_ms = 0")),
        "lab.toml:8: health.timeout_ms: must be at least 1 ms"
    );
    let region_override = lab_with("priority = 200\n", "priority = 200\nrise = 0\n");
    assert_eq!(
        refused(&region_override),
        "lab.toml:26: region \"region2\".rise: must be at least 1"
    );
    let negative = refused(&lab_with("fall = 3", "fall = -1"));
    assert!(
        negative.starts_with("lab.toml:6: health.fall: invalid value"),
        "{negative}"
    );
}

#[test]
fn a_timeout_longer_than_the_interval_blames_the_most_specific_setting() {
    let region_interval = lab_with("priority = 200\n", "priority = 200\ninterval_ms = 50\n");
    assert_eq!(
        refused(&region_interval),
        "lab.toml:26: region \"region2\".interval_ms: timeout_ms (100) exceeds interval_ms (50): \
         a check has one probe in flight at a time"
    );
    let global_timeout = lab_with("timeout_ms = 100", "timeout_ms = 150");
    assert!(
        refused(&global_timeout).starts_with("lab.toml:8: health.timeout_ms: timeout_ms (150)")
    );
}

#[test]
fn the_data_plane_limits_are_enforced() {
    let mut text = String::from("interfaces = [\"eth0\"]\n");
    for i in 0..=MAX_REGIONS {
        text += &format!(
            "[[region]]\nname = \"r{i}\"\naddress = \"10.0.0.1\"\nchecks = [{{ kind = \"tcp\", address = \"10.0.0.1:80\" }}]\n"
        );
    }
    let line = line_of(&text, &format!("name = \"r{MAX_REGIONS}\""));
    assert_eq!(
        refused(&text),
        format!("lab.toml:{line}: region[32]: more than 32 regions: the data plane holds 32")
    );

    let mut text = LAB.to_string();
    for i in 1..=MAX_SERVICES {
        text += &format!(
            "[[service]]\nname = \"s{i}\"\nvip = \"10.3.0.1\"\nport = {i}\nprotocol = \"udp\"\nregions = [\"region1\"]\n"
        );
    }
    let line = line_of(&text, &format!("name = \"s{MAX_SERVICES}\""));
    assert_eq!(
        refused(&text),
        format!("lab.toml:{line}: service[64]: more than 64 services: the data plane holds 64")
    );
}

#[test]
fn at_least_one_region_interface_check_and_service_region() {
    let no_region = "interfaces = [\"eth0\"]\n";
    assert_eq!(
        refused(no_region),
        "lab.toml:1: region: at least one [[region]] is needed"
    );
    assert_eq!(
        refused(&lab_with(
            r#"interfaces = ["veth-client", "veth-r1", "veth-r2"]"#,
            "interfaces = []"
        )),
        "lab.toml:1: interfaces: at least one interface is needed"
    );
    let no_check = lab_with(
        r#"[{ kind = "heartbeat", address = "10.2.0.2:7946" }]"#,
        "[]",
    );
    assert!(refused(&no_check)
        .starts_with("lab.toml:26: region \"region2\".checks: at least one check"));
    let no_service_region = lab_with(r#"["region1", "region2"]"#, "[]");
    assert_eq!(
        refused(&no_service_region),
        "lab.toml:34: service \"web\".regions: at least one region is needed"
    );
}

#[test]
fn interface_names_fit_the_kernel() {
    let long = lab_with("\"veth-r2\"]", "\"veth-r2-is-far-too-long\"]");
    assert!(refused(&long)
        .starts_with("lab.toml:1: interfaces[2]: \"veth-r2-is-far-too-long\" is not"));
    let twice = lab_with("\"veth-r2\"]", "\"veth-r1\"]");
    assert_eq!(
        refused(&twice),
        "lab.toml:1: interfaces[2]: \"veth-r1\" appears twice (first on line 1)"
    );
}

#[test]
fn failover_settings_are_read_and_checked() {
    let text = lab_with("preempt = true", "preempt = false")
        .replace("preempt_delay_ms = 0", "preempt_delay_ms = 2500")
        .replace("\"keep-last\"", "\"drop\"");
    let f = Config::parse(&text, "lab.toml").unwrap().failover;
    assert_eq!(
        f,
        FailoverSettings {
            preempt: false,
            preempt_delay: Duration::from_millis(2500),
            max_switches_per_minute: 6,
            all_down: AllDown::Drop
        }
    );
    assert_eq!(
        refused(&lab_with("max_switches_per_minute = 6", "max_switches_per_minute = 0")),
        "lab.toml:13: failover.max_switches_per_minute: must be at least 1 (set preempt = false to stop failback)"
    );
    let bad_mode = refused(&lab_with("\"keep-last\"", "\"keep\""));
    assert!(
        bad_mode.starts_with("lab.toml:14: failover.all_down: unknown variant `keep`"),
        "{bad_mode}"
    );
}

#[test]
fn spanned_wrappers_leave_no_trace_in_key_paths() {
    assert_eq!(
        without_spanned_segments("region[0].checks.$__serde_spanned_private_value[0].urll"),
        "region[0].checks[0].urll"
    );
    assert_eq!(
        without_spanned_segments("health.fall.$__serde_spanned_private_value"),
        "health.fall"
    );
    assert_eq!(without_spanned_segments("."), "");
}

#[test]
fn http_checks_take_plain_http_urls_only() {
    let https = refused(&lab_with("http://10.1.0.2:80/", "https://10.1.0.2/"));
    assert_eq!(
        https,
        "lab.toml:20: region \"region1\".checks[0].url: \"https://10.1.0.2/\": only http:// URLs are supported"
    );
    let status = refused(&lab_with("expect_status = 200", "expect_status = 42"));
    assert!(status
        .starts_with("lab.toml:20: region \"region1\".checks[0].expect_status: 42 is not"));
}

/// `text` must be refused with a message that starts with `start`
/// (the tail is serde's, such as the fields it expected).
fn refused_with(text: &str, start: &str) {
    let message = refused(text);
    assert!(message.starts_with(start), "{message}");
}

/// LAB with region1 carrying `region1` and region2 `region2` (lines
/// after their priorities), and the service `service` in place of its
/// policy line.
fn balanced(region1: &str, region2: &str, service: &str) -> String {
    lab_with("priority = 100\n", &format!("priority = 100\n{region1}"))
        .replace("priority = 200\n", &format!("priority = 200\n{region2}"))
        .replace("policy = \"failover\"\n", service)
}

#[test]
fn balance_settings_are_read_and_checked() {
    let text = format!("{LAB}\n[balance]\ndwell_ms = 0\n");
    let c = Config::parse(&text, "lab.toml").unwrap();
    assert_eq!(c.balance.dwell, Duration::ZERO);
    assert_eq!(c.balance.sample, Duration::from_secs(1));
    let fast = format!("{text}sample_ms = 99\n");
    let line = line_of(&fast, "sample_ms");
    assert_eq!(
        refused(&fast),
        format!(
            "lab.toml:{line}: balance.sample_ms: 99 ms is below the minimum of 100 ms: each sample walks the flow table"
        )
    );
    let typo = text.replace("dwell_ms", "dwel_ms");
    let line = line_of(&typo, "dwel_ms");
    let message = refused(&typo);
    assert!(
        message.starts_with(&format!(
            "lab.toml:{line}: balance.dwel_ms: unknown field `dwel_ms`"
        )),
        "{message}"
    );
}

#[test]
fn policy_names_are_the_ones_the_file_takes() {
    for kind in [
        PolicyKind::Failover,
        PolicyKind::Weighted,
        PolicyKind::Spill(Measure::Pps),
        PolicyKind::Spill(Measure::Flows),
        PolicyKind::Spill(Measure::Cpu),
    ] {
        let text = balanced(
            "pps = { low = 1, high = 2 }\nflows = { low = 1, high = 2 }\n",
            "cpu = { low = 1, high = 2 }\n",
            &format!("policy = {:?}\n", kind.name()),
        );
        let c = Config::parse(&text, "lab.toml").unwrap();
        assert_eq!(c.services[0].policy, kind);
    }
}

#[test]
fn regions_carry_weights_and_watermarks() {
    let text = balanced(
        "weight = 3\npps = { low = 800, high = 1000 }\nflows = { low = 5, high = 5 }\n",
        "weight = 0\ncpu = { low = 60, high = 100 }\n",
        "policy = \"cpu\"\n",
    );
    let c = Config::parse(&text, "lab.toml").unwrap();
    let (r1, r2) = (&c.regions[0], &c.regions[1]);
    assert_eq!(r1.weight, 3);
    assert_eq!(
        r1.pps,
        Some(Watermarks {
            low: 800,
            high: 1000
        })
    );
    assert_eq!(r1.flows, Some(Watermarks { low: 5, high: 5 }));
    assert_eq!((r1.cpu, r2.pps, r2.flows), (None, None, None));
    assert_eq!(
        (r2.weight, r2.cpu),
        (0, Some(Watermarks { low: 60, high: 100 }))
    );
    assert_eq!(r1.watermarks(Measure::Pps), r1.pps);
    assert_eq!(r2.watermarks(Measure::Flows), None);
    assert_eq!(c.services[0].weights, [3, 0]);
}

#[test]
fn watermarks_are_checked() {
    assert_eq!(
        refused(&balanced("pps = { low = 900, high = 800 }\n", "", "")),
        "lab.toml:20: region \"region1\".pps: low (900) is above high (800)"
    );
    assert_eq!(
        refused(&balanced("", "cpu = { low = 60, high = 101 }\n", "")),
        "lab.toml:26: region \"region2\".cpu: high (101) is above 100 percent"
    );
    refused_with(
        &balanced("flows = { low = 900 }\n", "", ""),
        "lab.toml:20: region[0].flows: missing field `high`",
    );
    refused_with(
        &balanced("", "pps = { low = 1, hihg = 2 }\n", ""),
        "lab.toml:26: region[1].pps.hihg: unknown field `hihg`",
    );
    refused_with(
        &balanced("pps = { low = -1, high = 2 }\n", "", ""),
        "lab.toml:20: region[0].pps.low: invalid value",
    );
}

#[test]
fn a_service_overrides_region_weights_by_name() {
    let text = balanced(
        "weight = 5\n",
        "",
        "policy = \"weighted\"\nweights = { region2 = 3, region1 = 0 }\n",
    );
    let c = Config::parse(&text, "lab.toml").unwrap();
    assert_eq!(c.services[0].weights, [0, 3]);
    let partial = balanced("weight = 5\n", "", "weights = { region2 = 2 }\n");
    let c = Config::parse(&partial, "lab.toml").unwrap();
    assert_eq!(c.services[0].weights, [5, 2]);
}

#[test]
fn service_weights_name_the_services_own_regions() {
    assert_eq!(
        refused(&balanced("", "", "weights = { region1 = 1, region9 = 2 }\n")),
        "lab.toml:33: service \"web\".weights.region9: unknown region \"region9\" (known: region1, region2)"
    );
    let region3 = format!(
        "{LAB}\n[[region]]\nname = \"region3\"\naddress = \"10.3.0.2\"\n\
         checks = [{{ kind = \"tcp\", address = \"10.3.0.2:80\" }}]\n"
    )
    .replace("policy = \"failover\"\n", "weights = { region3 = 1 }\n");
    assert_eq!(
        refused(&region3),
        "lab.toml:33: service \"web\".weights.region3: \"region3\" is not among service \"web\"'s regions (region1, region2)"
    );
    refused_with(
        &balanced("", "", "weights = { region1 = -1 }\n"),
        "lab.toml:33: service[0].weights.region1: invalid value",
    );
}

#[test]
fn a_weighted_service_needs_a_positive_weight() {
    let zero = "weight = 0\n";
    assert_eq!(
        refused(&balanced(zero, zero, "policy = \"weighted\"\n")),
        "lab.toml:35: service \"web\".policy: every weight of service \"web\" would be 0: \
         no region would take new flows"
    );
    let overridden = balanced(
        "",
        "",
        "policy = \"weighted\"\nweights = { region1 = 0, region2 = 0 }\n",
    );
    assert_eq!(
        refused(&overridden),
        "lab.toml:34: service \"web\".weights: every weight of service \"web\" would be 0: \
         no region would take new flows"
    );
    let backup = balanced(zero, "", "policy = \"weighted\"\n");
    assert!(Config::parse(&backup, "lab.toml").is_ok());
    let failover = balanced(zero, zero, "");
    assert_eq!(
        Config::parse(&failover, "lab.toml").unwrap().services[0].weights,
        [0, 0]
    );
}

#[test]
fn check_weights_refuses_what_would_strand_new_flows() {
    let text = balanced("", "", "policy = \"weighted\"\n");
    let c = Config::parse(&text, "lab.toml").unwrap();
    let web = &c.services[0];
    assert_eq!(web.check_weights(&[0, 2]), Ok(()));
    assert_eq!(
        web.check_weights(&[0, 0]),
        Err(
            "every weight of service \"web\" would be 0: no region would take new flows".into()
        )
    );
    assert_eq!(
        web.check_weights(&[1]),
        Err("service \"web\" has 2 regions: it takes 2 weights, not 1".into())
    );
    let failover = &Config::parse(LAB, "lab.toml").unwrap().services[0];
    assert_eq!(failover.check_weights(&[0, 0]), Ok(()));
}

#[test]
fn a_load_policy_needs_watermarks_on_one_of_its_regions() {
    for kind in ["pps", "flows", "cpu"] {
        let text = balanced("", "", &format!("policy = \"{kind}\"\n"));
        assert_eq!(
            refused(&text),
            format!(
                "lab.toml:33: service \"web\".policy: policy {kind} needs {kind} = {{ low, high }} \
                 on at least one of its regions"
            )
        );
    }
    let elsewhere = balanced("flows = { low = 1, high = 2 }\n", "", "policy = \"pps\"\n");
    assert!(refused(&elsewhere)
        .ends_with("policy pps needs pps = { low, high } on at least one of its regions"));
}

#[test]
fn cpu_watermarks_need_the_agents_heartbeat() {
    let cpu = "cpu = { low = 60, high = 80 }\n";
    let text = balanced(cpu, cpu, "policy = \"cpu\"\n");
    assert_eq!(
        refused(&text),
        "lab.toml:35: service \"web\".policy: region \"region1\" has cpu watermarks but no \
         heartbeat check, over which its agent reports CPU"
    );
    // Under another policy the watermarks are not read.
    let pps = balanced(cpu, "pps = { low = 1, high = 2 }\n", "policy = \"pps\"\n");
    assert!(Config::parse(&pps, "lab.toml").is_ok());
}

#[test]
fn load_names_a_missing_file() {
    let err = Config::load(Path::new("/nonexistent/redirector.toml")).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }));
    assert!(
        err.to_string()
            .starts_with("/nonexistent/redirector.toml: "),
        "{err}"
    );
}

#[test]
fn load_refuses_what_is_not_a_small_regular_file_of_text() {
    assert_eq!(
        Config::load(Path::new("/dev/zero")).unwrap_err().to_string(),
        "/dev/zero: not a regular file"
    );
    let dir = std::env::temp_dir().join(format!("redirector-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let big = dir.join("big.toml");
    std::fs::write(&big, vec![b'#'; MAX_CONFIG_FILE as usize + 1]).unwrap();
    assert_eq!(
        Config::load(&big).unwrap_err().to_string(),
        format!("{}: longer than 1048576 bytes", big.display())
    );
    let binary = dir.join("binary.toml");
    std::fs::write(&binary, b"interfaces = [\"\xff\"]").unwrap();
    let err = Config::load(&binary).unwrap_err().to_string();
    assert!(err.contains("invalid utf-8"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_flow_table_size_is_bounded() {
    assert_eq!(Config::parse(LAB, "lab.toml").unwrap().flow_table_size, redirector_common::FLOW_TABLE_SIZE);
    let big = format!("flow_table_size = 1048576\n{LAB}");
    assert_eq!(Config::parse(&big, "lab.toml").unwrap().flow_table_size, 1 << 20);
    let tiny = format!("flow_table_size = 100\n{LAB}");
    assert_eq!(refused(&tiny), "lab.toml:1: flow_table_size: 100 entries: it is 4096 to 16777216");
}

#[test]
fn the_xdp_mode_is_auto_unless_set() {
    assert_eq!(Config::parse(LAB, "lab.toml").unwrap().xdp_mode, XdpMode::Auto);
    let generic = format!("xdp_mode = \"generic\"\n{LAB}");
    assert_eq!(Config::parse(&generic, "lab.toml").unwrap().xdp_mode, XdpMode::Generic);
    let native = format!("xdp_mode = \"native\"\n{LAB}");
    assert_eq!(Config::parse(&native, "lab.toml").unwrap().xdp_mode, XdpMode::Native);
    let err = refused(&format!("xdp_mode = \"offload\"\n{LAB}"));
    assert!(err.starts_with("lab.toml:1: xdp_mode: unknown variant `offload`, expected one of"), "{err}");
}

#[test]
fn passive_detection_is_off_by_default_and_never_fires_on_one_reset() {
    assert_eq!(Config::parse(LAB, "lab.toml").unwrap().passive, None);
    let defaults = format!("{LAB}\n[passive]\n");
    assert_eq!(Config::parse(&defaults, "lab.toml").unwrap().passive, Some(DEFAULT_PASSIVE));
    let set = format!("{LAB}\n[passive]\nsyn_refused = 2\nwindow_ms = 50\n");
    assert_eq!(
        Config::parse(&set, "lab.toml").unwrap().passive,
        Some(PassiveSettings { threshold: 2, window: Duration::from_millis(50) })
    );
    let lines = LAB.lines().count();
    let one = format!("{LAB}\n[passive]\nsyn_refused = 1\n");
    assert!(
        refused(&one).starts_with(&format!("lab.toml:{}: passive.syn_refused: 1: at least 2", lines + 3)),
        "{}",
        refused(&one)
    );
    let long = format!("{LAB}\n[passive]\nwindow_ms = 0\n");
    assert!(refused(&long).contains("passive.window_ms: 0: it is 1 to 60000"), "{}", refused(&long));
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

        /// Anything at all, or the lab's config with bytes flipped, cut
        /// or repeated: a config or an error naming the file and a line.
        #[test]
        fn no_text_makes_the_loader_panic_and_every_error_names_its_line(
            noise in "\\PC{0,300}",
            edits in prop::collection::vec((any::<prop::sample::Index>(), 0u8..3, any::<char>()), 1..5),
        ) {
            let _ = Config::parse(&noise, "fuzz.toml");
            let mut text: Vec<char> = LAB.chars().collect();
            for (at, how, c) in edits {
                let i = at.index(text.len());
                match how {
                    0 => text[i] = c,
                    1 => { text.remove(i); }
                    _ => { let repeated = text[i..(i + 12).min(text.len())].to_vec(); text.splice(i..i, repeated); }
                }
            }
            let text: String = text.into_iter().collect();
            if let Err(e) = Config::parse(&text, "fuzz.toml") {
                let message = e.to_string();
                prop_assert!(message.starts_with("fuzz.toml:"), "{}", message);
            }
        }
    }
}
