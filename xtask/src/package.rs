//! `cargo xtask package [--target aarch64] [--check]`: the Debian packages
//! `redirector` (the gateway) and `redirector-agent` (a region host), built
//! with cargo-deb from the `[package.metadata.deb]` of their crates.
//!
//! `--check` builds both architectures, then proves them as an operator
//! would meet them: the amd64 packages installed with `dpkg -i`, the
//! installed example config checked, the lab's failover demo run with the
//! installed binaries, and the packages purged; the arm64 binaries run
//! under qemu-user (`--help`, `--check-config`), and the unit tests of
//! every crate they are built from.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, ensure, Context, Result};

use crate::{cargo_bin, ensure_apt_packages, output, run_command};

const CARGO_DEB_VERSION: &str = "3.8.0";
const PACKAGES: [&str; 2] = ["redirector", "redirector-agent"];
/// What the packages install, from the crates that build it.
const CRATES: [&str; 3] = ["redirector", "redirectorctl", "redirector-agent"];
/// The cross linker and libc, and the emulator the arm64 checks run in.
const ARM64_APT_PACKAGES: &[&str] = &["gcc-aarch64-linux-gnu", "libc6-dev-arm64-cross", "qemu-user-static"];
/// Where qemu-user finds the arm64 loader and libc.
const ARM64_SYSROOT: &str = "/usr/aarch64-linux-gnu";
/// The crates whose unit tests run on arm64: what a region host and an
/// operator's machine run, the rules and wire formats they share, and the
/// gateway's controller, config and policies (its XDP data plane needs a
/// kernel: qemu-user has no bpf syscall).
const ARM64_TESTED: [&str; 5] =
    ["redirector-agent", "redirectorctl", "redirector-proto", "redirector-common", "redirector"];
/// Left out under qemu-user, and why: qemu answers a guest's reads of its
/// own /proc/PID/stat itself, with zero CPU times (the agent measuring
/// other processes, as it does on a region host, reads the kernel's).
const ARM64_SKIPPED: [(&str, &str); 1] = [(
    "cpu::tests::the_pid_meter_measures_this_process",
    "qemu-user reports zero CPU time in the emulated process's own /proc/PID/stat",
)];

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Amd64,
    Arm64,
}

impl Arch {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "amd64" | "x86_64" | "x86_64-unknown-linux-gnu" => Ok(Self::Amd64),
            "arm64" | "aarch64" | "aarch64-unknown-linux-gnu" => Ok(Self::Arm64),
            other => bail!("--target {other:?}: amd64 or aarch64 (arm64)"),
        }
    }

    fn rust_target(self) -> &'static str {
        match self {
            Self::Amd64 => "x86_64-unknown-linux-gnu",
            Self::Arm64 => "aarch64-unknown-linux-gnu",
        }
    }

    fn debian(self) -> &'static str {
        match self {
            Self::Amd64 => "amd64",
            Self::Arm64 => "arm64",
        }
    }
}

/// The packages of one architecture, built.
struct Built {
    arch: Arch,
    debs: Vec<PathBuf>,
}

pub fn run(root: &Path, arch: Arch, check: bool) -> Result<()> {
    ensure_cargo_deb()?;
    let dir = root.join("target/package");
    write_docs(root, &dir)?;
    if !check {
        report(&build(root, &dir, arch)?)?;
        return Ok(());
    }
    let amd64 = build(root, &dir, Arch::Amd64)?;
    let arm64 = build(root, &dir, Arch::Arm64)?;
    report(&amd64)?;
    report(&arm64)?;
    check_installed(root, &amd64)?;
    check_arm64(root, &dir, &arm64)?;
    eprintln!("xtask: packages checked: installed, config checked, lab demo passed, purged; arm64 under qemu-user");
    Ok(())
}

fn ensure_cargo_deb() -> Result<()> {
    let version = Command::new(cargo_bin("cargo-deb")).arg("--version").output();
    if version.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(CARGO_DEB_VERSION)) {
        return Ok(());
    }
    eprintln!("xtask: installing cargo-deb {CARGO_DEB_VERSION}");
    run_command(Command::new("cargo").args(["install", "cargo-deb", "--version", CARGO_DEB_VERSION, "--locked"]))
}

/// Man pages (gzipped, as Debian ships them) and completions, generated
/// from the clap definitions by redirector-docs, on the build host: they
/// are the same for every architecture.
fn write_docs(root: &Path, dir: &Path) -> Result<()> {
    let docs = dir.join("docs");
    let _ = fs::remove_dir_all(&docs);
    run_command(
        cargo_in(root, dir)
            // The amd64 packages' target: the crates are built once for both.
            .args(["run", "--release", "--locked", "--quiet", "--target", Arch::Amd64.rust_target()])
            .args(["-p", "redirector-docs", "--"])
            .arg(&docs),
    )?;
    for page in fs::read_dir(docs.join("man"))? {
        run_command(Command::new("gzip").args(["-9", "-n", "-f"]).arg(page?.path()))?;
    }
    Ok(())
}

/// The binaries as the packages ship them (without the tests' hooks, which
/// a build of the whole workspace would turn on), then the packages.
fn build(root: &Path, dir: &Path, arch: Arch) -> Result<Built> {
    let target = arch.rust_target();
    if arch == Arch::Arm64 {
        ensure_apt_packages(ARM64_APT_PACKAGES)?;
        let installed = output("rustup", &["target", "list", "--installed"])?;
        if !installed.lines().any(|t| t == target) {
            run_command(Command::new("rustup").args(["target", "add", target]))?;
        }
    }
    let mut cmd = cargo_in(root, dir);
    cmd.args(["build", "--release", "--locked", "--target", target]);
    for krate in CRATES {
        cmd.args(["-p", krate]);
    }
    run_command(&mut cmd)?;
    let out = dir.join("debian").join(arch.debian());
    fs::create_dir_all(&out)?;
    let mut debs = Vec::new();
    for package in PACKAGES {
        let mut cmd = cargo_in(root, dir);
        cmd.args(["deb", "--no-build", "--strip", "-p", package, "--target", target, "--output"]).arg(&out);
        // cargo-deb strips a cross build with the target's binutils.
        cmd.env("STRIP_aarch64-linux-gnu", "aarch64-linux-gnu-strip")
            .env("OBJCOPY_aarch64-linux-gnu", "aarch64-linux-gnu-objcopy");
        let printed = cmd.output().with_context(|| format!("running cargo deb -p {package}"))?;
        ensure!(
            printed.status.success(),
            "cargo deb -p {package} --target {target}: {}",
            String::from_utf8_lossy(&printed.stderr).trim()
        );
        let path = String::from_utf8_lossy(&printed.stdout).lines().last().unwrap_or_default().trim().to_string();
        ensure!(path.ends_with(".deb"), "cargo deb -p {package} printed no package path");
        debs.push(PathBuf::from(path));
    }
    Ok(Built { arch, debs })
}

fn cargo_in(root: &Path, target_dir: &Path) -> Command {
    let mut cmd = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root).env("CARGO_TARGET_DIR", target_dir);
    cmd
}

fn report(built: &Built) -> Result<()> {
    for deb in &built.debs {
        let arch = output("dpkg-deb", &["-f", path_str(deb)?, "Architecture"])?;
        ensure!(
            arch.trim() == built.arch.debian(),
            "{} is for {}, not {}",
            deb.display(),
            arch.trim(),
            built.arch.debian()
        );
        let installed_kib = output("dpkg-deb", &["-f", path_str(deb)?, "Installed-Size"])?;
        println!(
            "{}: {:.1} MiB, {:.1} MiB installed",
            deb.display(),
            fs::metadata(deb)?.len() as f64 / (1 << 20) as f64,
            installed_kib.trim().parse::<f64>().unwrap_or(0.0) / 1024.0
        );
    }
    Ok(())
}

/// Installs the amd64 packages, checks what they put where, runs the lab's
/// failover demo with the installed binaries, and purges them, whatever
/// happened in between.
fn check_installed(root: &Path, built: &Built) -> Result<()> {
    // The demo's own tools (the lab, the regions' servers) come from the
    // test bed's build (target/release, where the lab runs from).
    run_command(Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into())).current_dir(root).args([
        "build",
        "--release",
        "--locked",
        "-p",
        "redirector-tests",
        "--bins",
    ]))?;
    ensure!(
        !Path::new(EXAMPLE_PINS).exists(),
        "{EXAMPLE_PINS} exists (a data plane pinned there?): removing the package would take it down; \
         run the check where none is"
    );
    let mut dpkg = Command::new("dpkg");
    dpkg.arg("-i").args(&built.debs);
    run_command(&mut dpkg)?;
    let checked = check_install(root);
    let purged = purge();
    checked.and(purged)
}

fn check_install(root: &Path) -> Result<()> {
    for file in [
        "/usr/bin/redirectord",
        "/usr/bin/redirectorctl",
        "/usr/bin/redirector-agent",
        "/usr/lib/systemd/system/redirectord.service",
        "/usr/lib/systemd/system/redirector-agent.service",
        "/usr/share/man/man8/redirectord.8.gz",
        "/usr/share/man/man8/redirectorctl-flows.8.gz",
        "/usr/share/man/man8/redirector-agent.8.gz",
        "/usr/share/bash-completion/completions/redirectorctl",
        "/usr/share/zsh/vendor-completions/_redirectorctl",
        "/usr/share/redirector/prometheus/redirector-alerts.yml",
    ] {
        ensure!(Path::new(file).exists(), "the packages did not install {file}");
    }
    let conffiles = output("dpkg-query", &["-W", "-f=${Conffiles}", "redirector", "redirector-agent"])?;
    for conffile in ["/etc/redirector/redirector.toml", "/etc/default/redirector-agent"] {
        ensure!(conffiles.contains(conffile), "{conffile} is not a conffile: {conffiles}");
    }
    for unit in ["/usr/lib/systemd/system/redirectord.service", "/usr/lib/systemd/system/redirector-agent.service"] {
        run_command(Command::new("systemd-analyze").args(["verify", "--man=no", unit]))?;
    }
    let example = "/etc/redirector/redirector.toml";
    println!("{}", output("/usr/bin/redirectord", &["--check-config", example, "--offline"])?.trim());
    check_config_with_its_interfaces(example)?;
    eprintln!("xtask: the lab's failover demo with the installed redirectord, redirectorctl and redirector-agent");
    run_command(
        Command::new(root.join("target/release/lab")).env("REDIRECTOR_INSTALLED_BIN", "/usr/bin"),
    )
}

/// `--check-config` as on a gateway: in a namespace that has the
/// interfaces the example names (veths; this kernel has no dummy driver),
/// which it looks up.
fn check_config_with_its_interfaces(config: &str) -> Result<()> {
    let text = fs::read_to_string(config)?;
    let line = text.lines().find(|l| l.trim_start().starts_with("interfaces")).context("no interfaces line")?;
    let names: Vec<&str> = line.split('"').skip(1).step_by(2).collect();
    ensure!(!names.is_empty(), "no interface named in {line:?}");
    let netns = format!("rdpkg-{}", std::process::id());
    run_command(Command::new("ip").args(["netns", "add", &netns]))?;
    let checked = (|| {
        for (i, name) in names.iter().enumerate() {
            let peer = format!("peer{i}");
            run_command(Command::new("ip").args(["-n", &netns, "link", "add", name, "type", "veth", "peer", "name", &peer]))?;
        }
        let printed = output("ip", &["netns", "exec", &netns, "/usr/bin/redirectord", "--check-config", config])?;
        println!("{}", printed.trim());
        Ok(())
    })();
    let removed = run_command(Command::new("ip").args(["netns", "del", &netns]));
    checked.and(removed)
}

/// The example config's pin path: what removing the package must take down
/// when redirectord is not there to detach.
const EXAMPLE_PINS: &str = "/sys/fs/bpf/redirector";

/// Purges both packages. A pin directory stands where the example config
/// pins its data plane, as a stopped redirectord leaves it: the removal
/// must take it away.
fn purge() -> Result<()> {
    let pins = Path::new(EXAMPLE_PINS);
    fs::create_dir_all(pins).with_context(|| format!("creating {EXAMPLE_PINS} (is bpffs mounted?)"))?;
    let mut dpkg = Command::new("dpkg");
    dpkg.arg("--purge").args(PACKAGES);
    run_command(&mut dpkg)?;
    for gone in ["/usr/bin/redirectord", "/etc/redirector/redirector.toml", "/etc/default/redirector-agent"] {
        ensure!(!Path::new(gone).exists(), "{gone} is left after the purge");
    }
    ensure!(!pins.exists(), "{EXAMPLE_PINS} is left after the removal: prerm did not take the data plane down");
    Ok(())
}

/// The arm64 packages' binaries, unpacked, run under qemu-user; then the
/// unit tests of the crates they are built from, built for arm64 and run
/// the same way.
fn check_arm64(root: &Path, dir: &Path, built: &Built) -> Result<()> {
    let unpacked = dir.join("arm64-root");
    let _ = fs::remove_dir_all(&unpacked);
    for deb in &built.debs {
        run_command(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&unpacked))?;
    }
    let qemu = |binary: &str, args: &[&str]| -> Result<String> {
        let path = unpacked.join("usr/bin").join(binary);
        ensure!(elf_machine(&path)? == EM_AARCH64, "{} is not an arm64 binary", path.display());
        let mut cmd = Command::new("qemu-aarch64-static");
        cmd.args(["-L", ARM64_SYSROOT]).arg(&path).args(args);
        let out = cmd.output().with_context(|| format!("running {binary} under qemu-aarch64-static"))?;
        ensure!(
            out.status.success(),
            "arm64 {binary} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    for binary in ["redirectord", "redirectorctl", "redirector-agent"] {
        let help = qemu(binary, &["--help"])?;
        ensure!(help.contains("Usage:"), "arm64 {binary} --help printed no usage");
    }
    let example = unpacked.join("etc/redirector/redirector.toml");
    println!("arm64: {}", qemu("redirectord", &["--check-config", path_str(&example)?, "--offline"])?.trim());

    let target = Arch::Arm64.rust_target();
    let mut tests = cargo_in(root, dir);
    tests.args(["test", "--release", "--locked", "--target", target]);
    for krate in ARM64_TESTED {
        tests.args(["-p", krate]);
    }
    tests.env(
        "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER",
        format!("qemu-aarch64-static -L {ARM64_SYSROOT}"),
    );
    tests.arg("--");
    for (test, why) in ARM64_SKIPPED {
        eprintln!("xtask: arm64: not run: {test} ({why})");
        tests.args(["--skip", test, "--exact"]);
    }
    run_command(&mut tests)
}

const EM_AARCH64: u16 = 183;

/// The ELF header's e_machine: what the binary was built for.
fn elf_machine(path: &Path) -> Result<u16> {
    let header = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    ensure!(header.len() > 20 && header.starts_with(b"\x7fELF"), "{} is not an ELF file", path.display());
    Ok(u16::from_le_bytes([header[18], header[19]]))
}

fn path_str(path: &Path) -> Result<&str> {
    path.to_str().with_context(|| format!("{} is not UTF-8", path.display()))
}
