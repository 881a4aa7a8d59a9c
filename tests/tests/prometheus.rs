//! Prometheus for real: Debian's `promtool` checks redirectord's
//! exposition and the shipped alert rules, and Debian's `prometheus`
//! scrapes a running redirectord and answers queries on what it scraped.
//! The shipped Grafana dashboard asks only for metrics redirectord exports.

use std::{collections::BTreeSet, fs, path::Path, process::Command, time::Duration};

use redirector_tests::{
    client::Session,
    lab::{body, wait_for, Lab, LabOptions, Process, METRICS},
    netns::{require_root, unique_name},
};

const DIST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../dist");
/// Where the test's Prometheus listens, in the gateway's namespace.
const PROMETHEUS: &str = "127.0.0.1:9090";

fn promtool(args: &[&str], stdin: Option<&str>) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package) is installed by cargo xtask setup");
    if let Some(text) = stdin {
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

/// The value of `query`'s single result, through Prometheus's HTTP API.
fn query(lab: &Lab, query: &str) -> anyhow::Result<f64> {
    let url = format!("http://{PROMETHEUS}/api/v1/query");
    let answer = lab.topo.gateway.exec("curl", &["-sf", "--data-urlencode", &format!("query={query}"), &url])?;
    let json: serde_json::Value = serde_json::from_str(&answer)?;
    let result = &json["data"]["result"];
    anyhow::ensure!(result.as_array().is_some_and(|r| r.len() == 1), "{query}: {answer}");
    Ok(result[0]["value"][1].as_str().unwrap_or("nan").parse()?)
}

#[test]
fn prometheus_scrapes_redirectord_and_promtool_accepts_its_metrics_and_the_shipped_rules() {
    require_root();
    let mut lab = Lab::new(&unique_name("rdm"), LabOptions { regions: 2, ..LabOptions::default() }).unwrap();
    lab.start_daemon().unwrap();
    let mut session = Session::open(&lab.topo.client, lab.vip(), Duration::from_secs(2)).unwrap();
    assert_eq!(session.get().unwrap(), body(2));

    let metrics = lab.metrics().unwrap();
    let checked = promtool(&["check", "metrics"], Some(&metrics));
    assert!(checked.status.success(), "promtool check metrics: {}{}", String::from_utf8_lossy(&checked.stdout), String::from_utf8_lossy(&checked.stderr));

    let rules = Path::new(DIST).join("prometheus/redirector-alerts.yml");
    let checked = promtool(&["check", "rules", rules.to_str().unwrap()], None);
    assert!(checked.status.success(), "promtool check rules: {}{}", String::from_utf8_lossy(&checked.stdout), String::from_utf8_lossy(&checked.stderr));

    let config = lab.dir.join("prometheus.yml");
    fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: redirector\n    static_configs:\n      - targets: ['{METRICS}']\n",
            rules.display()
        ),
    )
    .unwrap();
    let mut cmd = lab.topo.gateway.command("prometheus");
    cmd.arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", lab.dir.join("tsdb").display()))
        .arg(format!("--web.listen-address={PROMETHEUS}"))
        .stdout(std::process::Stdio::null())
        .stderr(fs::File::create(lab.dir.join("prometheus.log")).unwrap());
    let _prometheus = Process::spawn(cmd, "prometheus").unwrap();
    wait_for(Duration::from_secs(30), || {
        anyhow::ensure!(query(&lab, "up{job=\"redirector\"}")? == 1.0, "not scraped yet");
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{e:#}: {}", fs::read_to_string(lab.dir.join("prometheus.log")).unwrap_or_default()));
    assert_eq!(query(&lab, "redirector_region_state{region=\"region2\"}").unwrap(), 1.0);
    assert_eq!(query(&lab, "redirector_switches_total{service=\"web\"}").unwrap(), 1.0, "none → region2");
    assert!(query(&lab, "redirector_region_packets_total{region=\"region2\"}").unwrap() >= 1.0);
}

/// Every metric name the dashboard's queries use, by the pattern
/// `redirector_…` they all share.
fn dashboard_metrics() -> BTreeSet<String> {
    let text = fs::read_to_string(Path::new(DIST).join("grafana/redirector.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut names = BTreeSet::new();
    let mut exprs = Vec::new();
    collect_exprs(&json, &mut exprs);
    assert!(!exprs.is_empty(), "no queries in the dashboard");
    for expr in exprs {
        let mut rest = expr.as_str();
        while let Some(at) = rest.find("redirector_") {
            let name: String = rest[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            rest = &rest[at + name.len()..];
            names.insert(name);
        }
    }
    names
}

fn collect_exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match v {
                    serde_json::Value::String(expr) if key == "expr" => out.push(expr.clone()),
                    other => collect_exprs(other, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

/// Every metric family the exposition declares.
fn exported(metrics: &str) -> BTreeSet<String> {
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[test]
fn the_dashboard_asks_only_for_what_redirectord_exports() {
    require_root();
    let options = LabOptions { regions: 2, pair: Some(redirector_tests::lab::PairOptions { sync: true, sync_key: false }), ..LabOptions::default() };
    let mut lab = Lab::new(&unique_name("rdg"), options).unwrap();
    lab.topo.hold_shared(&lab.topo.gateway).unwrap();
    lab.start_daemon().unwrap();
    let exported = exported(&lab.metrics().unwrap());
    let missing: Vec<String> = dashboard_metrics().into_iter().filter(|name| !exported.contains(name)).collect();
    assert!(missing.is_empty(), "the dashboard asks for {missing:?}, which redirectord does not export");
}
