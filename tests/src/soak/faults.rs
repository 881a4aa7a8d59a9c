//! Injecting and repairing the soak's faults on a running lab.

use std::{
    fs,
    process::{Child, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::verdict::FaultKind;
use crate::lab::{priority, Lab};

/// The lab's faults: at most one at a time.
pub struct Chaos {
    /// The config the lab started with, and whether the changed one is in
    /// place (each reload swaps them).
    base_config: String,
    changed: bool,
    flood: Option<Child>,
}

/// A flood burst's pace: one spoofed SYN every 200 µs (5 000/s), aimed at
/// the VIP's port, so the region taking new flows answers every SYN. At
/// 20 000/s its TCP stack, in SYN-cookie mode on the two cores it shares
/// with everything else here, made 0 to 2.6 % of new connections miss the
/// measuring client's 200 ms (none with the same flood aimed at another
/// region through the same gateway): the region's limit, not the
/// gateway's, whose own is the flood test's (`tests/tests/flood.rs`, flat
/// out).
const FLOOD_INTERVAL: &str = "u200";

impl Chaos {
    pub fn new(lab: &Lab) -> Self {
        Self { base_config: lab.config(&lab.gateway.pins.0), changed: false, flood: None }
    }

    pub fn inject(&mut self, lab: &mut Lab, kind: FaultKind, region: u8) -> Result<()> {
        let name = format!("region{region}");
        match kind {
            FaultKind::ServerKilled => lab.kill_server(region),
            FaultKind::AgentKilled => lab.kill_agent(region),
            FaultKind::LinkDown => lab.link_down(region),
            FaultKind::BlackHole => lab.black_hole(region),
            FaultKind::DaemonKilled => lab.stop_daemon(libc::SIGKILL),
            FaultKind::DaemonStopped => signal_daemon(lab, libc::SIGSTOP),
            FaultKind::Reload => {
                self.changed = !self.changed;
                let text = if self.changed { changed_config(&self.base_config)? } else { self.base_config.clone() };
                fs::write(lab.config_path(), text)?;
                lab.ctl_ok(&["reload"]).map(drop)
            }
            FaultKind::SetActive => lab.ctl_ok(&["set-active", &name]).map(drop),
            FaultKind::Drain => lab.ctl_ok(&["drain", &name]).map(drop),
            FaultKind::Weight => lab.ctl_ok(&["weight", &name, "4", "--service", "stream"]).map(drop),
            FaultKind::SynFlood => {
                let vip = lab.vip();
                let child = lab
                    .topo
                    .client
                    .command("hping3")
                    .args(["-S", "-p", &vip.port().to_string(), "-i", FLOOD_INTERVAL, "--rand-source", "-c", "200000"])
                    .arg(vip.ip().to_string())
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .context("hping3 (cargo xtask setup installs it)")?;
                self.flood = Some(child);
                Ok(())
            }
        }
    }

    pub fn repair(&mut self, lab: &mut Lab, kind: FaultKind, region: u8) -> Result<()> {
        let name = format!("region{region}");
        match kind {
            FaultKind::ServerKilled => lab.restore_server(region),
            FaultKind::AgentKilled => lab.restore_agent(region),
            FaultKind::LinkDown => lab.link_up(region),
            FaultKind::BlackHole => lab.lift_black_hole(region),
            FaultKind::DaemonKilled => lab.start_daemon(),
            FaultKind::DaemonStopped => signal_daemon(lab, libc::SIGCONT),
            FaultKind::Reload => Ok(()),
            FaultKind::SetActive => lab.ctl_ok(&["set-active", "--auto"]).map(drop),
            FaultKind::Drain => lab.ctl_ok(&["undrain", &name]).map(drop),
            FaultKind::Weight => lab.ctl_ok(&["weight", &name, "1", "--service", "stream"]).map(drop),
            FaultKind::SynFlood => self.stop_flood(),
        }
    }

    /// Ends a flood burst by PID: SIGINT, then SIGKILL if it lingers.
    fn stop_flood(&mut self) -> Result<()> {
        let Some(mut child) = self.flood.take() else { return Ok(()) };
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(2);
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                child.kill()?;
                child.wait()?;
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }
}

impl Drop for Chaos {
    fn drop(&mut self) {
        let _ = self.stop_flood();
    }
}

fn signal_daemon(lab: &Lab, signal: i32) -> Result<()> {
    let pid = lab.daemon_pid().context("redirectord is not running")?;
    if unsafe { libc::kill(pid as i32, signal) } != 0 {
        bail!("signalling redirectord: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// The lab's config with health and policy changes a reload must take
/// without disturbing traffic: another rise, region3's priority, and a
/// second (TCP) check on region1.
fn changed_config(base: &str) -> Result<String> {
    let region1_http = "checks = [{ kind = \"http\", url = \"http://10.1.0.2:80/\"";
    let changes = [
        ("rise = 3".to_string(), "rise = 2".to_string()),
        (format!("priority = {}", priority(3)), format!("priority = {}", priority(3) + 5)),
        (region1_http.to_string(), format!("checks = [{{ kind = \"tcp\", address = \"10.1.0.2:80\" }}, {}", &region1_http[10..])),
    ];
    let mut text = base.to_string();
    for (from, to) in changes {
        if !text.contains(&from) {
            bail!("the lab's config has no {from:?} to change");
        }
        text = text.replacen(&from, &to, 1);
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_changed_config_differs_where_it_says() {
        let base = "rise = 3\npriority = 70\nchecks = [{ kind = \"http\", url = \"http://10.1.0.2:80/\", expect_status = 200 }]\n";
        let changed = changed_config(base).unwrap();
        assert_eq!(
            changed,
            "rise = 2\npriority = 75\nchecks = [{ kind = \"tcp\", address = \"10.1.0.2:80\" }, \
             { kind = \"http\", url = \"http://10.1.0.2:80/\", expect_status = 200 }]\n"
        );
        assert!(changed_config("rise = 4").is_err());
    }
}
