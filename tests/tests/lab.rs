//! The lab's scripted demo (`cargo xtask lab`), run whole: each of its
//! steps checks what it shows, and it ends by removing what it built.

use std::process::Command;

use redirector_tests::{lab::binary, netns::require_root};

#[test]
fn the_lab_demo_runs_to_its_end() {
    require_root();
    let out = Command::new(binary("lab").unwrap()).output().unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
