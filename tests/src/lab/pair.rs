//! A lab's gateway pair under VRRP: keepalived on each gateway moves the
//! shared addresses (each segment's `.1`) to the master, and takes them
//! only once `redirectorctl ready` says its redirectord has the peer's
//! flows. A gateway dies as a host does (processes killed, links down,
//! its kernel state gone) and comes back as a rebooted one.

use std::{
    fs,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use redirector::dataplane::remove_pins;

use super::{binary, log_to, wait_for, Daemon, Lab, Process};
use crate::netns::Netns;

/// One of the pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    A,
    B,
}

impl Side {
    pub fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Side::A => "a",
            Side::B => "b",
        }
    }

    /// A is the preferred master.
    fn priority(self) -> u8 {
        match self {
            Side::A => 150,
            Side::B => 100,
        }
    }
}

/// The pair's one VRRP router.
const VIRTUAL_ROUTER_ID: u8 = 51;

/// How keepalived ties a gateway's mastership to what forwards on it.
#[derive(Clone, Copy, Debug)]
pub enum Guard<'a> {
    /// redirectord: master only while this command (`redirectorctl ready`)
    /// succeeds.
    Ready(&'a str),
    /// The Linux NAT anchor: conntrackd's primary-backup script (this
    /// path) on every transition.
    Notify(&'a str),
}

/// keepalived's config for gateway `side`: one VRRP instance, advertised
/// on the client side every `advert`, carrying every segment's shared
/// address; an interface down (or, with redirectord, redirectord not
/// ready) takes the gateway out (FAULT), so the other one is master.
/// `dist/keepalived/` ships it for gateway A of the example config (a test
/// keeps the two the same).
pub fn keepalived_config(side: Side, shared: &[(String, std::net::Ipv4Addr)], advert: Duration, guard: Guard) -> String {
    // Comments aligned after their line.
    let noted = |line: String, note: &str| format!("{line:<32}# {note}\n");
    let (this, other) = (side.name(), side.other().name());
    let forwarder = match guard {
        Guard::Ready(_) => "Both run redirectord with the same services and a [sync] section\n# naming each other",
        Guard::Notify(_) => "Both forward with nftables NAT and conntrack, conntrackd syncing\n# the conntrack tables (the Linux anchor)",
    };
    let mut text = format!(
        "# keepalived for redirector gateway {this} of a pair (gateway {other}: router_id redirector-{other},\n\
         # priority {}). {forwarder}; VRRP moves the addresses clients and regions route through.\n\n",
        side.other().priority()
    );
    text += &format!("global_defs {{\n    router_id redirector-{this}\n");
    text += &noted("    vrrp_version 3".into(), "sub-second advertisements");
    text += &noted("    script_user root".into(), "redirectorctl talks to a root-only socket");
    text += "}\n\n";
    if let Guard::Ready(ready) = guard {
        text += "# A gateway takes the addresses only once its redirectord has the peer's flows:\n\
                 # a restarted gateway must not become master with an empty flow table.\n";
        text += &format!(
            "vrrp_script redirector_ready {{\n    script \"{ready}\"\n    interval 1\n    timeout 2\n    fall 1\n    rise 1\n}}\n\n"
        );
    }
    text += "vrrp_instance redirector {\n";
    text += &noted("    state BACKUP".into(), "the priorities elect the master");
    text += &noted(format!("    interface {}", shared[0].0), "advertisements on the client side");
    text += &format!("    virtual_router_id {VIRTUAL_ROUTER_ID}\n    priority {}\n", side.priority());
    text += &noted(format!("    advert_int {}", advert.as_secs_f64()), "the backup takes over 3 of them (and a skew) after the last");
    text += "    virtual_ipaddress {\n";
    for (iface, addr) in shared {
        text += &format!("        {addr}/24 dev {iface}\n");
    }
    text += "    }\n";
    text += &noted("    track_interface {".into(), "any link down: FAULT, the other gateway is master");
    for (iface, _) in shared {
        text += &format!("        {iface}\n");
    }
    text += "    }\n";
    match guard {
        Guard::Ready(_) => text += "    track_script {\n        redirector_ready\n    }\n",
        Guard::Notify(script) => {
            for (state, arg) in [("master", "primary"), ("backup", "backup"), ("fault", "fault")] {
                text += &format!("    notify_{state} \"{script} {arg}\"\n");
            }
        }
    }
    text += "}\n";
    text
}

impl Lab {
    pub fn pair_daemon(&self, side: Side) -> &Daemon {
        match side {
            Side::A => &self.gateway,
            Side::B => self.peer.as_ref().expect("a pair"),
        }
    }

    fn pair_daemon_mut(&mut self, side: Side) -> &mut Daemon {
        match side {
            Side::A => &mut self.gateway,
            Side::B => self.peer.as_mut().expect("a pair"),
        }
    }

    pub fn pair_ns(&self, side: Side) -> &Netns {
        match side {
            Side::A => &self.topo.gateway,
            Side::B => self.topo.peer.as_ref().expect("a pair"),
        }
    }

    /// Starts keepalived on gateway `side`, advertising every `advert`,
    /// guarded by its redirectord's readiness.
    pub fn start_keepalived(&mut self, side: Side, advert: Duration) -> Result<()> {
        let ready = format!("{} --socket {} ready", binary("redirectorctl")?.display(), self.pair_daemon(side).socket.display());
        self.start_keepalived_guarded(side, advert, Guard::Ready(&ready))
    }

    pub(super) fn start_keepalived_guarded(&mut self, side: Side, advert: Duration, guard: Guard) -> Result<()> {
        let config = self.dir.join(format!("keepalived-{}.conf", side.name()));
        fs::write(&config, keepalived_config(side, &self.topo.shared_addresses(), advert, guard))?;
        let mut cmd = self.pair_ns(side).command("keepalived");
        cmd.args(["--dont-fork", "--log-console", "--log-detail", "--no-syslog", "--vrrp", "--use-file"]);
        cmd.arg(&config);
        for (flag, file) in [("--pid", "keepalived"), ("--vrrp_pid", "keepalived-vrrp")] {
            // A killed keepalived leaves its pid files, and keepalived
            // refuses to start while a pid in them runs (pids get reused);
            // a rebooted host starts with an empty /run.
            let pid_file = self.dir.join(format!("{file}-{}.pid", side.name()));
            let _ = fs::remove_file(&pid_file);
            cmd.arg(flag).arg(pid_file);
        }
        log_to(&mut cmd, &self.dir.join(format!("keepalived-{}.log", side.name())))?;
        self.keepalived[side as usize] = Some(Process::spawn(cmd, &format!("keepalived {}", side.name()))?);
        Ok(())
    }

    /// The gateway holding the shared client-side address, if one does
    /// (both would be a split brain: an error).
    pub fn master(&self) -> Result<Option<Side>> {
        let (_, client_side) = self.topo.shared_addresses().remove(0);
        let holds = |side: Side| -> Result<bool> {
            Ok(self.pair_ns(side).ip(&["-4", "addr", "show", "dev", "veth-client"])?.contains(&format!("{client_side}/")))
        };
        match (holds(Side::A)?, holds(Side::B)?) {
            (true, true) => bail!("both gateways hold {client_side}"),
            (true, false) => Ok(Some(Side::A)),
            (false, true) => Ok(Some(Side::B)),
            (false, false) => Ok(None),
        }
    }

    /// Times either gateway's keepalived became master, from their logs.
    pub fn master_transitions(&self) -> Result<usize> {
        let mut n = 0;
        for side in [Side::A, Side::B] {
            let log = fs::read_to_string(self.dir.join(format!("keepalived-{}.log", side.name()))).unwrap_or_default();
            n += log.matches("Entering MASTER STATE").count();
        }
        Ok(n)
    }

    /// Waits (at most `limit`) until `side` is master; how long it took.
    /// The error carries the pair's logs.
    pub fn wait_master(&self, side: Side, limit: Duration) -> Result<Duration> {
        let started = Instant::now();
        wait_for(limit, || match self.master()? {
            Some(master) if master == side => Ok(()),
            other => bail!("master: {other:?}"),
        })
        .with_context(|| self.pair_logs())?;
        Ok(started.elapsed())
    }

    /// The last lines of each gateway's keepalived and redirectord logs.
    pub fn pair_logs(&self) -> String {
        let tail = |text: String| {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(15)..].join("\n")
        };
        let mut out = String::new();
        for side in [Side::A, Side::B] {
            let keepalived = fs::read_to_string(self.dir.join(format!("keepalived-{}.log", side.name()))).unwrap_or_default();
            out += &format!("\n--- keepalived {}:\n{}", side.name(), tail(keepalived));
            out += &format!("\n--- redirectord {}:\n{}", side.name(), tail(self.pair_daemon(side).log()));
        }
        out
    }

    /// Gateway `side` dies as a host does: its processes killed, its
    /// links down. keepalived's VRRP process goes first: told of its
    /// parent's death it would leave gracefully (a priority-0
    /// advertisement that hands over at once), which a dead host never does.
    pub fn kill_gateway(&mut self, side: Side) -> Result<()> {
        if let Some(keepalived) = self.keepalived[side as usize].take() {
            let vrrp = fs::read_to_string(self.dir.join(format!("keepalived-vrrp-{}.pid", side.name())))?;
            let pid: i32 = vrrp.trim().parse().map_err(|e| anyhow::anyhow!("keepalived's VRRP pid {vrrp:?}: {e}"))?;
            // SAFETY: kill(2) on a pid keepalived wrote for its child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            keepalived.stop(libc::SIGKILL)?;
        }
        for process in std::mem::take(&mut self.pair_extras[side as usize]) {
            process.stop(libc::SIGKILL)?;
        }
        self.pair_daemon_mut(side).stop(libc::SIGKILL)?;
        for iface in self.gateway_links() {
            self.pair_ns(side).ip(&["link", "set", &iface, "down"])?;
        }
        // What VRRP had given it is gone with the host (and must not be
        // mistaken for a second master).
        for (iface, addr) in self.topo.shared_addresses() {
            let _ = self.pair_ns(side).ip(&["addr", "del", &format!("{addr}/24"), "dev", &iface]);
        }
        Ok(())
    }

    /// Gateway `side` back as a rebooted host: nothing of its data plane
    /// survived; links up, redirectord and keepalived started.
    pub fn revive_gateway(&mut self, side: Side, advert: Duration) -> Result<()> {
        remove_pins(&self.pair_daemon(side).pins.0)?;
        for iface in self.gateway_links() {
            self.pair_ns(side).ip(&["link", "set", &iface, "up"])?;
        }
        self.pair_daemon_mut(side).start()?;
        self.start_keepalived(side, advert)
    }

    pub(super) fn gateway_links(&self) -> Vec<String> {
        let mut links = self.topo.gateway_interfaces();
        links.push(crate::topology::SYNC_IFACE.to_string());
        links
    }
}

#[cfg(test)]
mod tests {
    use std::{net::Ipv4Addr, path::Path};

    use super::*;

    const DIST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../dist/keepalived/keepalived.conf");

    /// What operators are told to run is what the pair tests run
    /// (`REDIRECTOR_BLESS=1` writes the file after a deliberate change).
    #[test]
    fn the_shipped_keepalived_config_is_the_one_the_lab_runs() {
        let shared: Vec<(String, Ipv4Addr)> = [("veth-client", [10, 0, 0, 1]), ("veth-r1", [10, 1, 0, 1]), ("veth-r2", [10, 2, 0, 1])]
            .into_iter()
            .map(|(iface, addr)| (iface.to_string(), Ipv4Addr::from(addr)))
            .collect();
        let expected = keepalived_config(Side::A, &shared, Duration::from_millis(100), Guard::Ready("/usr/bin/redirectorctl ready"));
        if std::env::var_os("REDIRECTOR_BLESS").is_some() {
            fs::write(DIST, &expected).unwrap();
        }
        let shipped = fs::read_to_string(Path::new(DIST)).unwrap();
        assert_eq!(shipped, expected, "dist/keepalived/keepalived.conf differs from keepalived_config()");
    }
}
