//! FRR's bfdd in a region: the BFD peer a region's router would be.
//! Debian's frr, run per namespace with files of its own (no zebra: a peer
//! given by its local address needs none).

use std::{
    fs,
    net::Ipv4Addr,
    os::unix::fs::{chown, PermissionsExt},
    path::Path,
    time::Duration,
};

use anyhow::{Context, Result};

use super::{log_to, wait_for, Process};
use crate::netns::Netns;

const BFDD: &str = "/usr/lib/frr/bfdd";

/// How the peer runs: its interval (TX and RX) and detect multiplier.
#[derive(Clone, Copy, Debug)]
pub struct BfdPeer {
    pub interval_ms: u64,
    pub detect_mult: u32,
}

/// Starts bfdd in `ns` with one session, to `peer` from `local`; its files
/// and log in `dir`. Returns once its control socket is there.
pub fn start(ns: &Netns, dir: &Path, peer: Ipv4Addr, local: Ipv4Addr, settings: BfdPeer) -> Result<Process> {
    fs::create_dir_all(dir)?;
    let config = dir.join("bfdd.conf");
    fs::write(
        &config,
        format!(
            "bfd\n peer {peer} local-address {local}\n  receive-interval {ms}\n  transmit-interval {ms}\n  \
             detect-multiplier {mult}\n  no shutdown\n !\n!\n",
            ms = settings.interval_ms,
            mult = settings.detect_mult
        ),
    )?;
    // bfdd drops to the frr user: its directory must be frr's.
    let (uid, gid) = frr_ids()?;
    chown(dir, Some(uid), Some(gid))?;
    chown(&config, Some(uid), Some(gid))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    let socket = dir.join("bfdd.sock");
    let mut cmd = ns.command(BFDD);
    cmd.arg("-f")
        .arg(&config)
        .arg("-i")
        .arg(dir.join("bfdd.pid"))
        .arg("--vty_socket")
        .arg(dir)
        .arg("--bfdctl")
        .arg(&socket)
        .arg("-z")
        .arg(dir.join("zserv.api"))
        .args(["-P", "0"]);
    log_to(&mut cmd, &dir.join("bfdd.log"))?;
    let process = Process::spawn(cmd, &format!("bfdd in {}", ns.name()))?;
    wait_for(Duration::from_secs(5), || {
        anyhow::ensure!(socket.exists(), "no {}", socket.display());
        Ok(())
    })
    .with_context(|| fs::read_to_string(dir.join("bfdd.log")).unwrap_or_default())?;
    Ok(process)
}

fn frr_ids() -> Result<(u32, u32)> {
    let passwd = fs::read_to_string("/etc/passwd")?;
    let line = passwd.lines().find(|l| l.starts_with("frr:")).context("no frr user: is Debian's frr installed?")?;
    let fields: Vec<&str> = line.split(':').collect();
    Ok((fields[2].parse()?, fields[3].parse()?))
}
