//! Open vSwitch with the userspace (netdev) datapath in the gateway's
//! namespace: the reference's switch software, with no kernel module. Its
//! database, sockets, pid and log files live in a private directory, so it
//! neither needs nor touches a system installation; both daemons are
//! children of the benchmark, killed when the switch drops.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use super::quiet;
use crate::{
    lab::Process,
    netns::{unique_name, Netns},
};

pub const BRIDGE: &str = "br0";

pub struct Switch {
    // Drop order: the daemons go before their directory.
    vswitchd: Process,
    ovsdb: Process,
    dir: Scratch,
}

impl Switch {
    /// Starts ovsdb-server and ovs-vswitchd inside `ns` and makes a netdev
    /// bridge of `ports`, numbered from 1 in that order, that drops every
    /// frame until flows are added.
    pub fn start(ns: &Netns, ports: &[&str]) -> Result<Self> {
        let dir = Scratch::new()?;
        let db = dir.0.join("conf.db");
        run(ovs_command(&dir.0, "ovsdb-tool").arg("create").arg(&db).arg("/usr/share/openvswitch/vswitch.ovsschema"))?;
        // The daemons stay in the foreground as our children: no --detach,
        // nothing left behind if the benchmark dies.
        let mut ovsdb = ovs_in(ns, &dir.0, "ovsdb-server");
        ovsdb
            .arg(&db)
            .arg(format!("--remote=punix:{}", dir.db_socket().display()))
            .arg(format!("--pidfile={}", dir.0.join("ovsdb-server.pid").display()))
            .arg(format!("--unixctl={}", dir.0.join("ovsdb-server.ctl").display()))
            .arg(format!("--log-file={}", dir.0.join("ovsdb-server.log").display()));
        let ovsdb = Process::spawn(quiet(ovsdb), "ovsdb-server")?;
        crate::lab::wait_for(std::time::Duration::from_secs(5), || {
            if dir.db_socket().exists() {
                Ok(())
            } else {
                bail!("ovsdb-server has not made {} yet", dir.db_socket().display())
            }
        })?;
        let switch_dir = dir.0.clone();
        let vsctl = |args: &[&str]| run(vsctl(&switch_dir).args(args));
        vsctl(&["--no-wait", "init"])?;
        let mut vswitchd = ovs_in(ns, &dir.0, "ovs-vswitchd");
        vswitchd
            .arg(format!("unix:{}", dir.db_socket().display()))
            .arg(format!("--pidfile={}", dir.0.join("ovs-vswitchd.pid").display()))
            .arg(format!("--unixctl={}", dir.0.join("ovs-vswitchd.ctl").display()))
            .arg(format!("--log-file={}", dir.0.join("ovs-vswitchd.log").display()));
        let vswitchd = Process::spawn(quiet(vswitchd), "ovs-vswitchd")?;
        // ovs-vsctl waits (bounded by --timeout) until ovs-vswitchd has
        // applied each change.
        vsctl(&[
            "add-br", BRIDGE, "--", "set", "bridge", BRIDGE, "datapath_type=netdev", "fail_mode=secure",
        ])?;
        for (i, port) in ports.iter().enumerate() {
            let request = format!("ofport_request={}", i + 1);
            vsctl(&["add-port", BRIDGE, port, "--", "set", "interface", port, &request])?;
        }
        let switch = Self {
            vswitchd,
            ovsdb,
            dir,
        };
        // fail_mode=secure starts with no flow at all: nothing passes until
        // the caller's flows are in.
        switch.ofctl(&["del-flows", BRIDGE])?;
        Ok(switch)
    }

    pub fn pids(&self) -> Vec<u32> {
        vec![self.vswitchd.pid(), self.ovsdb.pid()]
    }

    /// Adds OpenFlow rules with ovs-ofctl, as the reference's controller
    /// programmed its switch.
    pub fn add_flows(&self, flows: &[String]) -> Result<()> {
        for flow in flows {
            self.ofctl(&["add-flow", BRIDGE, flow])?;
        }
        Ok(())
    }

    /// The bridge's flows with their packet counters.
    pub fn dump_flows(&self) -> Result<String> {
        self.ofctl(&["dump-flows", BRIDGE])
    }

    fn ofctl(&self, args: &[&str]) -> Result<String> {
        run(ovs_command(&self.dir.0, "ovs-ofctl").args(args))
    }
}

/// An OVS program told to keep every file of its own in `dir`.
fn ovs_command(dir: &Path, program: &str) -> Command {
    let mut cmd = Command::new(program);
    set_dirs(&mut cmd, dir);
    cmd
}

/// The same, run inside `ns`.
fn ovs_in(ns: &Netns, dir: &Path, program: &str) -> Command {
    let mut cmd = ns.command(program);
    set_dirs(&mut cmd, dir);
    cmd
}

fn set_dirs(cmd: &mut Command, dir: &Path) {
    for var in ["OVS_RUNDIR", "OVS_DBDIR", "OVS_LOGDIR", "OVS_SYSCONFDIR"] {
        cmd.env(var, dir);
    }
}

fn vsctl(dir: &Path) -> Command {
    let mut cmd = ovs_command(dir, "ovs-vsctl");
    cmd.arg(format!("--db=unix:{}", dir.join("db.sock").display()))
        .arg("--timeout=10");
    cmd
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("cannot run {:?} (is openvswitch-switch installed? `cargo xtask setup`)", cmd.get_program()))?;
    if !out.status.success() {
        bail!("{cmd:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The switch's private directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Self> {
        let dir = std::env::temp_dir().join(unique_name("redirector-ovs"));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }

    fn db_socket(&self) -> PathBuf {
        self.0.join("db.sock")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
