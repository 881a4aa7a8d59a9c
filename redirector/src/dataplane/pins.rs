//! bpffs: where the data plane lives between daemons. The maps are pinned
//! by name under the pin path and one XDP link per interface under
//! `links/`; while a pin exists, the kernel keeps what it pins.

use std::{
    ffi::CString,
    fs, io,
    os::unix::{ffi::OsStrExt, fs::MetadataExt},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use aya::programs::links::PinnedLink;
use redirector_common::map_names;
use tracing::warn;

const BPFFS_MOUNT: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

pub fn ifindex(interface: &str) -> Result<u32> {
    let name = CString::new(interface).context("interface name with a NUL byte")?;
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => bail!("no interface named {interface:?}"),
        index => Ok(index),
    }
}

/// Interfaces with a pinned link under `pin_path`, by name.
pub(super) fn list_link_pins(pin_path: &Path) -> Result<Vec<String>> {
    let dir = pin_path.join("links");
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut names = Vec::new();
    for entry in fs::read_dir(&dir)? {
        names.push(entry?.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

/// Unpinning drops bpffs's reference; the link (and so the XDP attachment)
/// goes when no process holds it either.
pub(super) fn remove_link_pin(pin: &Path) -> Result<()> {
    if pin.exists() {
        let link = PinnedLink::from_pin(pin)
            .with_context(|| format!("opening the pinned link {}", pin.display()))?;
        drop(link.unpin()?);
    }
    Ok(())
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    unsafe { libc::statfs(c_path.as_ptr(), &mut stat) == 0 && stat.f_type as i64 == BPF_FS_MAGIC }
}

/// Mounts bpffs at /sys/fs/bpf when it is not mounted (a new machine), and
/// creates the pin directory, which must be on bpffs.
pub(super) fn ensure_bpffs(pin_path: &Path) -> Result<()> {
    let mount = Path::new(BPFFS_MOUNT);
    if pin_path.starts_with(mount) && !is_bpffs(mount) {
        let source = CString::new("bpf").unwrap();
        let target = CString::new(BPFFS_MOUNT).unwrap();
        let rc = unsafe {
            libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                source.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            bail!(
                "mounting bpffs at {BPFFS_MOUNT}: {} (root needed)",
                std::io::Error::last_os_error()
            );
        }
    }
    fs::create_dir_all(pin_path)
        .with_context(|| format!("creating the pin directory {}", pin_path.display()))?;
    if !is_bpffs(pin_path) {
        bail!(
            "pin path {} is not on a bpffs (mount one: mount -t bpf bpf DIR)",
            pin_path.display()
        );
    }
    Ok(())
}


/// Where the link of `interface` is pinned.
pub(super) fn link_pin(pin_path: &Path, interface: &str) -> PathBuf {
    pin_path.join("links").join(interface)
}

/// Detaches from every pinned interface and removes all pins under
/// `pin_path`: the explicit way to take the data plane down.
pub fn remove_pins(pin_path: &Path) -> Result<()> {
    for interface in list_link_pins(pin_path)? {
        remove_link_pin(&link_pin(pin_path, &interface))?;
    }
    let _ = fs::remove_dir(pin_path.join("links"));
    for name in map_names::ALL {
        let path = pin_path.join(name);
        if path.exists() {
            fs::remove_file(&path).with_context(|| format!("unpinning {}", path.display()))?;
        }
    }
    if pin_path.exists() {
        fs::remove_dir(pin_path).with_context(|| format!("removing {}", pin_path.display()))?;
    }
    Ok(())
}

/// Refuses a pin path on a bpffs that only this process's mount namespace
/// sees: its pins, and the XDP links with them, would die with the
/// process, and a restart would build the data plane anew instead of
/// adopting it. That is what `ip netns exec` does (it gives the process a
/// private /sys, where the daemon then mounts a bpffs of its own).
///
/// The pin directory must be the same (device and inode) seen from the
/// parent process's root, which outlives this one (systemd, a shell);
/// from PID 1's when the parent's cannot be read. When neither can be
/// read, it says so and goes on.
pub(super) fn check_outlives_process(pin_path: &Path) -> Result<()> {
    let ours = fs::metadata(pin_path).with_context(|| format!("reading {}", pin_path.display()))?;
    let namespace = |pid: &str| fs::read_link(format!("/proc/{pid}/ns/mnt")).ok();
    // SAFETY: getppid cannot fail.
    let parent = unsafe { libc::getppid() }.to_string();
    let own = namespace("self");
    if own.is_some() && own == namespace(&parent) {
        return Ok(());
    }
    let relative = pin_path.strip_prefix("/").unwrap_or(pin_path);
    for pid in [parent.as_str(), "1"] {
        let view = Path::new("/proc").join(pid).join("root").join(relative);
        match fs::metadata(&view) {
            Ok(theirs) if (theirs.dev(), theirs.ino()) == (ours.dev(), ours.ino()) => return Ok(()),
            Ok(_) => bail!(private(pin_path, pid)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => bail!(private(pin_path, pid)),
            Err(_) => continue,
        }
    }
    warn!(
        "cannot tell whether {} outlives this process's mount namespace (neither its parent's nor \
         PID 1's root can be read): if redirectord runs in a mount namespace of its own, its pins \
         die with it",
        pin_path.display()
    );
    Ok(())
}

fn private(pin_path: &Path, pid: &str) -> String {
    format!(
        "pin path {} is on a bpffs that only this process's mount namespace sees (process {pid} \
         sees another there): the pins and XDP links would die with redirectord, and a restart \
         would build the data plane anew instead of adopting it. Run redirectord in the host's \
         mount namespace: `nsenter --net=/var/run/netns/NAME redirectord ...` instead of `ip netns \
         exec NAME redirectord ...`, which mounts a private /sys; in a container, bind-mount the \
         host's /sys/fs/bpf",
        pin_path.display()
    )
}
