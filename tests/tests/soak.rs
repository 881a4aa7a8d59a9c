//! The chaos soak in the test run (root): two minutes of faults under load
//! on a fresh, printed seed. Longer runs: `cargo xtask soak --minutes N`.

use std::time::Duration;

use redirector_tests::{
    netns::require_root,
    soak::{soak, verdict::FaultKind, SoakOptions},
};

#[test]
fn two_minutes_of_faults_under_load_break_no_invariant() {
    require_root();
    let seed = redirector_tests::fuzz::fresh_seed();
    eprintln!("soak seed {seed} (replay: cargo xtask soak --minutes 2 --seed {seed})");
    let report = soak(&SoakOptions { duration: Duration::from_secs(120), seed, kinds: FaultKind::ALL.to_vec() }).expect("soak");
    println!("{}", report.markdown());
    assert!(report.violations.is_empty(), "seed {seed}:\n{}", report.violations.join("\n"));
    assert!(report.faults.len() >= 20, "only {} faults in two minutes", report.faults.len());
    assert!(report.new_requests.successes > 1000 && report.kept.answered > 1000 && report.udp.answered > 1000);
}
