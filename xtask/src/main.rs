//! Project tasks: `cargo xtask setup | build | test | lab | fuzz | soak | bench | package`.
//!
//! xtask depends on nothing of the project itself, so it builds on stable
//! on a fresh machine before the eBPF toolchain exists, and installs it.

use std::{
    env, fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

mod package;

#[derive(Parser)]
#[command(about = "redirector project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (idempotent; seconds when all is there).
    Setup,
    /// Build the release binaries (the XDP object is embedded in them).
    Build,
    /// Run every test, the in-kernel and network-namespace ones included (root).
    Test {
        /// Passed to `cargo test` after `--` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The lab: client, gateway and three regions in namespaces, and a
    /// scripted failover demo. `--keep` leaves it running; `down` removes it;
    /// `--pair`: two gateways syncing flows under keepalived, the master killed.
    Lab {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Differential fuzzing of the XDP program against its reference model:
    /// `--frames N`, `--seed S`, `--minutes M`, `--record`.
    Fuzz {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The chaos soak: the lab under load, a fault every few seconds,
    /// invariants checked: `--minutes N` (2), `--seed S`, `--only KIND,...`,
    /// `--calm` (no faults: the control run), `--record`.
    Soak {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The Debian packages (redirector, redirector-agent) under
    /// target/package/debian/. `--check` (root) builds amd64 and arm64,
    /// installs, checks, runs the lab's demo with and purges the amd64
    /// ones, and runs the arm64 ones under qemu-user.
    Package {
        /// amd64 (this machine) or aarch64 (cross-built).
        #[arg(long, default_value = "amd64")]
        target: String,
        #[arg(long, conflicts_with = "target")]
        check: bool,
    },
    /// Run a benchmark and write its results under bench/results/.
    Bench {
        #[arg(default_value = "xdp")]
        which: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// Debian packages the tests and the lab use.
const APT_PACKAGES: &[&str] = &[
    "iproute2",
    "iputils-ping",
    "ethtool",
    "procps",
    "curl",
    "wrk",
    "iperf3",
    "nftables",
    "util-linux",
    // The flood test: spoofed SYNs, as an attacker sends them.
    "hping3",
    // `bench dataplane` runs the reference's switch (userspace datapath,
    // no kernel module) as one of the gateways it measures.
    "openvswitch-switch",
    // The gateway pair: VRRP moves the shared addresses between gateways
    // (the pair tests and the lab's pair), as operators deploy it.
    "keepalived",
    // `bench pair`'s anchor: Linux NAT pairs keep their connections with
    // conntrackd (and `conntrack -F` empties a "rebooted" gateway's table).
    "conntrackd",
    "conntrack",
    // BFD checks are tested against FRR's bfdd in the regions, the peer
    // operators' routers run.
    "frr",
    // The metrics as operators consume them: a test scrapes redirectord with
    // Debian's Prometheus and checks the exposition and the shipped alert
    // rules with its promtool.
    "prometheus",
    // The benchmarks' plots (plotters renders text through fontconfig).
    "pkg-config",
    "libfontconfig-dev",
    "libfreetype-dev",
    "fonts-dejavu-core",
];

/// bpf-linker must be built against the LLVM of the pinned nightly.
const BPF_LINKER_VERSION: &str = "0.13.0";

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let root = project_root();
    match cli.task {
        Task::Setup => setup(&root),
        Task::Build => {
            setup(&root)?;
            cargo(&root, &["build", "--release", "--workspace", "--bins"])
        }
        Task::Test { args } => {
            require_root("the tests create network namespaces and load XDP programs")?;
            setup(&root)?;
            build_without_ebpf_toolchain(&root)?;
            // The namespace tests run the daemon, agent and servers as
            // processes: cargo test alone does not build other packages' bins.
            cargo(&root, &["build", "--workspace", "--bins"])?;
            let mut cmd = vec!["test", "--workspace", "--no-fail-fast"];
            if !args.is_empty() {
                cmd.push("--");
                cmd.extend(args.iter().map(String::as_str));
            }
            cargo_test(&root, &cmd)
        }
        Task::Lab { args } => {
            require_root("the lab builds network namespaces and loads XDP programs")?;
            setup(&root)?;
            cargo(&root, &["build", "--release", "--workspace", "--bins"])?;
            let mut cmd = Command::new(root.join("target/release/lab"));
            cmd.args(&args);
            run_command(&mut cmd)
        }
        Task::Fuzz { args } => {
            require_root("fuzzing loads the XDP program into a namespace")?;
            setup(&root)?;
            run_tests_bin(&root, "fuzz", &args)
        }
        Task::Soak { args } => {
            require_root("the soak builds namespaces and runs the daemon")?;
            setup(&root)?;
            // It runs the project's binaries as processes.
            cargo(&root, &["build", "--release", "--workspace", "--bins"])?;
            run_tests_bin(&root, "soak", &args)
        }
        Task::Package { target, check } => {
            if check {
                require_root("the check installs the packages and runs the lab")?;
            }
            setup(&root)?;
            package::run(&root, package::Arch::parse(&target)?, check)
        }
        Task::Bench { which, args } => {
            require_root("the benchmarks load XDP programs and build namespaces")?;
            setup(&root)?;
            // Benchmarks run the project's binaries as processes.
            cargo(&root, &["build", "--release", "--workspace", "--bins"])?;
            let args: Vec<String> = std::iter::once(which).chain(args).collect();
            run_tests_bin(&root, "bench", &args)
        }
    }
}

/// Runs a binary of the test bed, release build, with `args`.
fn run_tests_bin(root: &Path, bin: &str, args: &[String]) -> Result<()> {
    let mut cmd = vec!["run", "--release", "--quiet", "-p", "redirector-tests", "--bin", bin, "--"];
    cmd.extend(args.iter().map(String::as_str));
    cargo(root, &cmd)
}

/// What runs in a region (the agent) and what an operator runs (the CLI)
/// must build with stable alone. Proved by building them where neither the
/// pinned nightly nor bpf-linker can be found: a PATH holding only stable's
/// cargo and rustc and the system's tools, and a RUSTUP_HOME with no
/// toolchain in it. It builds into a target directory of its own: a build
/// script run with the eBPF toolchain must not be found there cached.
fn build_without_ebpf_toolchain(root: &Path) -> Result<()> {
    let cargo = PathBuf::from(env::var("CARGO").context("run through cargo (cargo xtask)")?);
    let toolchain = cargo.parent().context("cargo has no directory")?;
    let sandbox = cache_dir().join("stable-only");
    let bin = sandbox.join("bin");
    let _ = fs::remove_dir_all(&sandbox);
    fs::create_dir_all(&bin)?;
    fs::create_dir_all(sandbox.join("rustup"))?;
    for tool in ["cargo", "rustc"] {
        std::os::unix::fs::symlink(toolchain.join(tool), bin.join(tool))?;
    }
    let path = format!("{}:/usr/bin:/bin", bin.display());
    let sandboxed = |program: &str| {
        let mut cmd = Command::new(program);
        cmd.current_dir(root)
            .env("PATH", &path)
            .env("RUSTUP_HOME", sandbox.join("rustup"))
            .env("CARGO_TARGET_DIR", root.join("target/stable-only"))
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("RUSTC")
            .env_remove("RUSTC_WRAPPER");
        cmd
    };
    for missing in ["bpf-linker", "rustup"] {
        let found = sandboxed("sh").args(["-c", &format!("command -v {missing}")]).output()?;
        if found.status.success() {
            bail!("the stable-only build can see {missing}: {}", String::from_utf8_lossy(&found.stdout));
        }
    }
    eprintln!("xtask: building redirector-agent and redirectorctl with stable alone (no nightly, no bpf-linker)");
    run_command(sandboxed(bin.join("cargo").to_str().unwrap()).args([
        "build",
        "--locked",
        "-p",
        "redirector-agent",
        "-p",
        "redirectorctl",
    ]))
}

fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn require_root(why: &str) -> Result<()> {
    if unsafe { libc::geteuid() } != 0 {
        bail!("run as root: {why} (CI runs as root)");
    }
    Ok(())
}

fn setup(root: &Path) -> Result<()> {
    let channel = pinned_nightly(root)?;
    ensure_nightly(&channel)?;
    ensure_bpf_linker(&channel)?;
    ensure_apt_packages(APT_PACKAGES)?;
    Ok(())
}

/// The nightly named in redirector-ebpf/rust-toolchain.toml: one place.
fn pinned_nightly(root: &Path) -> Result<String> {
    let path = root.join("redirector-ebpf/rust-toolchain.toml");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .find_map(|line| {
            let value = line.trim().strip_prefix("channel")?.trim().strip_prefix('=')?;
            Some(value.trim().trim_matches('"').to_string())
        })
        .with_context(|| format!("no `channel = ...` in {}", path.display()))
}

fn ensure_nightly(channel: &str) -> Result<()> {
    let installed = output("rustup", &["component", "list", "--installed", "--toolchain", channel])
        .unwrap_or_default();
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    eprintln!("xtask: installing {channel} with rust-src");
    status(
        "rustup",
        &["toolchain", "install", channel, "--profile", "minimal", "--component", "rust-src"],
    )
}

fn cache_dir() -> PathBuf {
    let home = env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".cache/redirector")
}

fn cargo_bin(name: &str) -> PathBuf {
    let home = env::var_os("CARGO_HOME").map_or_else(
        || {
            env::var_os("HOME")
                .map_or_else(|| PathBuf::from("/root"), PathBuf::from)
                .join(".cargo")
        },
        PathBuf::from,
    );
    home.join("bin").join(name)
}

/// bpf-linker built against the pinned nightly's own libLLVM (Debian has no
/// libLLVM that fits). A stamp records which nightly it was built for.
fn ensure_bpf_linker(channel: &str) -> Result<()> {
    let stamp = cache_dir().join("bpf-linker.stamp");
    let want = format!("{BPF_LINKER_VERSION} {channel}");
    let linker_runs = Command::new(cargo_bin("bpf-linker"))
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if linker_runs && fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == want) {
        return Ok(());
    }

    let sysroot = output("rustc", &[&format!("+{channel}"), "--print", "sysroot"])?;
    let libdir = Path::new(sysroot.trim()).join("lib");
    let libllvm = fs::read_dir(&libdir)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so."))
        })
        .with_context(|| format!("no libLLVM.so.* in {}", libdir.display()))?;
    let major = libllvm
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("libLLVM.so."))
        .and_then(|v| v.split('.').next())
        .context("cannot read the LLVM version of the nightly")?
        .to_string();
    // The build links against lib/libLLVM.so; the binary then loads the
    // library by its soname through its runpath, so both names are needed.
    let prefix = cache_dir().join(format!("llvm-{channel}"));
    fs::create_dir_all(prefix.join("lib"))?;
    for name in [Path::new("libLLVM.so"), Path::new(libllvm.file_name().unwrap())] {
        let link = prefix.join("lib").join(name);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&libllvm, &link)?;
    }

    eprintln!("xtask: building bpf-linker {BPF_LINKER_VERSION} against LLVM {major} of {channel}");
    let feature = format!("llvm-{major}");
    let mut cmd = Command::new("cargo");
    cmd.env("LLVM_PREFIX", &prefix).args([
        "install",
        "bpf-linker",
        "--version",
        BPF_LINKER_VERSION,
        "--locked",
        "--force",
        "--no-default-features",
        "--features",
        &feature,
    ]);
    run_command(&mut cmd)?;
    fs::write(&stamp, want)?;
    Ok(())
}

fn ensure_apt_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            output("dpkg-query", &["-W", "-f=${Status}", p])
                .map_or(true, |s| !s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    status("apt-get", &["update", "-qq"])?;
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend(&missing);
    let mut cmd = Command::new("apt-get");
    cmd.env("DEBIAN_FRONTEND", "noninteractive").args(&args);
    run_command(&mut cmd)
}

fn cargo(root: &Path, args: &[&str]) -> Result<()> {
    let mut cmd = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root).args(args);
    run_command(&mut cmd)
}

/// Runs `cargo test`, passing its output through, and ends with the total
/// over every test binary: cargo itself ends on the last binary's line,
/// often a doc-test run with nothing in it.
fn cargo_test(root: &Path, args: &[&str]) -> Result<()> {
    let mut child = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(root)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run cargo test")?;
    let (mut passed, mut failed) = (0u64, 0u64);
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line?;
        println!("{line}");
        if let Some(summary) = line.strip_prefix("test result: ") {
            passed += count_before(summary, " passed");
            failed += count_before(summary, " failed");
        }
    }
    let status = child.wait()?;
    println!("tests: {passed} passed, {failed} failed");
    if !status.success() {
        bail!("cargo test failed: {status}");
    }
    if passed == 0 {
        bail!("no test ran");
    }
    Ok(())
}

/// The number just before `label` in a `test result:` line.
fn count_before(summary: &str, label: &str) -> u64 {
    summary
        .split(';')
        .find_map(|part| part.trim().trim_start_matches("ok. ").trim_start_matches("FAILED. ").strip_suffix(label))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

fn status(program: &str, args: &[&str]) -> Result<()> {
    run_command(Command::new(program).args(args))
}

fn run_command(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn output(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
