//! The anchor a gateway pair is measured against: plain Linux on the same
//! pair topology, as OPNFV's L3 HA deploys it. Each gateway forwards with
//! nftables DNAT and conntrack (no redirectord), conntrackd (FTFW over the
//! sync link) keeps the other's conntrack table, and keepalived runs
//! conntrackd's primary-backup script on every VRRP transition: the new
//! master commits the peer's connections to its kernel, NAT bindings
//! included.

use std::{fs, net::Ipv4Addr, time::Duration};

use anyhow::Result;

use super::{log_to, Guard, Lab, Process, Side, HTTP_PORT};
use crate::topology::{SYNC_A, SYNC_B, SYNC_IFACE};

/// conntrackd's sync port on the sync link.
const CONNTRACKD_PORT: u16 = 3780;

impl Lab {
    /// Gateway `side` forwards as plain Linux: the NAT table (steering
    /// nothing yet), conntrackd and keepalived with conntrackd's script.
    pub fn start_linux_nat(&mut self, side: Side, advert: Duration) -> Result<()> {
        let ns = self.pair_ns(side);
        // As conntrackd's manual has it: a packet of a connection this
        // gateway has no entry for (yet: the commit runs as it becomes
        // master) is dropped, not picked up mid-stream as a new one that
        // would clash with the synced entry; TCP sends it again. Window
        // tracking off: the synced entry's windows lag the connection.
        ns.sysctl("net.netfilter.nf_conntrack_tcp_loose", "0")?;
        ns.sysctl("net.netfilter.nf_conntrack_tcp_be_liberal", "1")?;
        ns.exec(
            "nft",
            &["add table ip redirector_nat; \
               add chain ip redirector_nat prerouting { type nat hook prerouting priority dstnat; }; \
               add chain ip redirector_nat forward { type filter hook forward priority filter; }; \
               add rule ip redirector_nat forward ct state invalid drop"],
        )?;
        let (config, script) = self.conntrackd_files(side)?;
        let mut cmd = self.pair_ns(side).command("conntrackd");
        cmd.arg("-C").arg(&config);
        log_to(&mut cmd, &self.dir.join(format!("conntrackd-{}.out", side.name())))?;
        let conntrackd = Process::spawn(cmd, &format!("conntrackd {}", side.name()))?;
        self.pair_extras[side as usize].push(conntrackd);
        let script = script.display().to_string();
        // Give conntrackd its socket before keepalived's first transition
        // calls it.
        super::wait_for(Duration::from_secs(5), || {
            anyhow::ensure!(self.dir.join(format!("conntrackd-{}.ctl", side.name())).exists(), "conntrackd not up");
            Ok(())
        })?;
        self.start_keepalived_guarded(side, advert, Guard::Notify(&script))
    }

    /// New connections to the VIP's port go to `region` (DNAT), or, None,
    /// to the VIP itself (region2's own address: routed), on both gateways.
    pub fn nat_steer(&self, region: Option<Ipv4Addr>) -> Result<()> {
        let vip = self.vip();
        for side in [Side::A, Side::B] {
            let ns = self.pair_ns(side);
            ns.exec("nft", &["flush chain ip redirector_nat prerouting"])?;
            if let Some(to) = region {
                let rule = format!(
                    "add rule ip redirector_nat prerouting ip daddr {} tcp dport {HTTP_PORT} dnat to {to}",
                    vip.ip()
                );
                ns.exec("nft", &[&rule])?;
            }
        }
        Ok(())
    }

    /// Gateway `side` back as a rebooted host: an empty conntrack table,
    /// links up, the NAT table as at boot (steering nothing), conntrackd
    /// and keepalived started.
    pub fn revive_linux_nat(&mut self, side: Side, advert: Duration) -> Result<()> {
        let ns = self.pair_ns(side);
        ns.exec("conntrack", &["-F"])?;
        let _ = ns.exec("nft", &["delete table ip redirector_nat"]);
        for iface in self.gateway_links() {
            self.pair_ns(side).ip(&["link", "set", &iface, "up"])?;
        }
        let _ = fs::remove_file(self.dir.join(format!("conntrackd-{}.lock", side.name())));
        let _ = fs::remove_file(self.dir.join(format!("conntrackd-{}.ctl", side.name())));
        self.start_linux_nat(side, advert)
    }

    /// conntrackd's config and its primary-backup script for `side`, in
    /// the lab directory.
    fn conntrackd_files(&self, side: Side) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
        let file = |ext: &str| self.dir.join(format!("conntrackd-{}.{ext}", side.name()));
        let (this, peer) = match side {
            Side::A => (SYNC_A, SYNC_B),
            Side::B => (SYNC_B, SYNC_A),
        };
        // The gateways' own traffic (VRRP, probes, the sync) is not synced.
        let mut ignore = vec![Ipv4Addr::LOCALHOST, SYNC_A, SYNC_B];
        for (_, shared) in self.topo.shared_addresses() {
            let [a, b, c, _] = shared.octets();
            ignore.extend([shared, Ipv4Addr::new(a, b, c, 11), Ipv4Addr::new(a, b, c, 12)]);
        }
        let ignore: String = ignore.iter().map(|a| format!("            IPv4_address {a}\n")).collect();
        let config = format!(
            "Sync {{\n    Mode FTFW {{\n    }}\n    UDP {{\n        IPv4_address {this}\n        IPv4_Destination_Address {peer}\n        \
             Port {CONNTRACKD_PORT}\n        Interface {SYNC_IFACE}\n        SndSocketBuffer 1249280\n        RcvSocketBuffer 1249280\n        \
             Checksum on\n    }}\n}}\n\
             General {{\n    HashSize 32768\n    HashLimit 131072\n    LogFile {log}\n    LockFile {lock}\n    UNIX {{\n        Path {ctl}\n    }}\n    \
             NetlinkBufferSize 2097152\n    NetlinkBufferSizeMaxGrowth 8388608\n    Filter From Userspace {{\n        Protocol Accept {{\n            TCP\n        }}\n        \
             Address Ignore {{\n{ignore}        }}\n    }}\n}}\n",
            log = file("log").display(),
            lock = file("lock").display(),
            ctl = file("ctl").display(),
        );
        fs::write(file("conf"), config)?;
        // conntrackd's own primary-backup.sh (Debian's example), for this
        // config: commit the peer's connections when master, take them
        // again when backup.
        let c = format!("conntrackd -C {}", file("conf").display());
        let script = format!(
            "#!/bin/sh\ncase \"$1\" in\n  primary) {c} -c; {c} -f; {c} -R; {c} -B ;;\n  backup) {c} -t; {c} -n ;;\n  fault) {c} -t ;;\nesac\nexit 0\n"
        );
        fs::write(file("sh"), script)?;
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(file("sh"), fs::Permissions::from_mode(0o755))?;
        Ok((file("conf"), file("sh")))
    }
}
