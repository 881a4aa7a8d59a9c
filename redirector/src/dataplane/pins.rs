//! bpffs: where the data plane lives between daemons. The maps are pinned
//! by name under the pin path and one XDP link per interface under
//! `links/`; while a pin exists, the kernel keeps what it pins.

use std::{
    ffi::CString,
    fs,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use aya::programs::links::PinnedLink;
use redirector_common::map_names;

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
