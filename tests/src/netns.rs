//! Network namespaces the tests make, and commands run inside them.
//!
//! Every namespace is named with a prefix, the process id and a counter so
//! parallel tests and leftover runs never collide, and is deleted on drop.

use std::{
    fs::File,
    os::fd::AsRawFd,
    process::{Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{bail, Context, Result};

/// Runs `program args...` and fails with its stderr if it fails.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {program} (is it installed? `cargo xtask setup`)"))?;
    check(program, args, out)
}

fn check(program: &str, args: &[&str], out: Output) -> Result<String> {
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Tests that build namespaces and load XDP need root; CI runs as root. A
/// test that cannot run fails and says why rather than skipping.
pub fn require_root() {
    assert!(
        unsafe { libc::geteuid() } == 0,
        "this test needs root (network namespaces, XDP, bpffs); run it as root, as CI does"
    );
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A unique name `<prefix>-<pid>-<n>`, short enough for interface names.
pub fn unique_name(prefix: &str) -> String {
    format!(
        "{prefix}{}-{}",
        std::process::id() % 100_000,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

pub struct Netns {
    name: String,
    /// Only the creator deletes the namespace.
    owned: bool,
}

impl Netns {
    /// Creates a namespace with loopback up.
    pub fn new(name: &str) -> Result<Self> {
        // A namespace left by a killed run of the same name goes first.
        let _ = run("ip", &["netns", "del", name]);
        run("ip", &["netns", "add", name])?;
        let ns = Self {
            name: name.to_string(),
            owned: true,
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A handle on an existing namespace that does not delete it on drop.
    pub fn attach(name: &str) -> Result<Self> {
        if !std::path::Path::new("/run/netns").join(name).exists() {
            bail!("no network namespace {name}");
        }
        Ok(Self {
            name: name.to_string(),
            owned: false,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NS args...`
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Runs a program inside the namespace and waits for it.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        let out = self.command(program).args(args).stdin(Stdio::null()).output()?;
        check(program, args, out)
    }

    /// A command that will run inside the namespace. Only the network
    /// namespace changes: `ip netns exec` would also give the process a
    /// private mount namespace with a fresh /sys, where bpffs pins live and
    /// die with the process, and a daemon's data plane with them.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.name)).arg("--").arg(program);
        cmd
    }

    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec("sysctl", &["-qw", &format!("{key}={value}")])?;
        Ok(())
    }

    /// Runs `f` on a thread of its own inside the namespace and returns
    /// what it returns. Sockets `f` makes stay in the namespace, so they can
    /// be used from any thread afterwards.
    pub fn on_thread<R: Send>(&self, f: impl FnOnce() -> Result<R> + Send) -> Result<R> {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let _inside = self.enter()?;
                    f()
                })
                .join()
                .expect("thread in the namespace panicked")
        })
    }

    /// Moves the calling thread into the namespace until the guard drops.
    pub fn enter(&self) -> Result<NetnsGuard> {
        let original = File::open("/proc/thread-self/ns/net").context("opening own netns")?;
        let target = File::open(format!("/run/netns/{}", self.name))
            .with_context(|| format!("opening netns {}", self.name))?;
        setns(&target)?;
        Ok(NetnsGuard { original })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if self.owned {
            let _ = run("ip", &["netns", "del", &self.name]);
        }
    }
}

fn setns(ns: &File) -> Result<()> {
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

pub struct NetnsGuard {
    original: File,
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        setns(&self.original).expect("returning to the original netns");
    }
}
