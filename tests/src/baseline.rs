//! The reference XDP programs (redirector-ebpf/src/bin/baseline.rs), built
//! by redirector's build script alongside the data plane.

use anyhow::{Context, Result};
use aya::{
    programs::{xdp::XdpMode, Xdp},
    Ebpf,
};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../redirector-ebpf/target/bpfel-unknown-none/release/baseline"
));

/// Loads the reference object with its program `name` loaded in the kernel.
pub fn load(name: &str) -> Result<Ebpf> {
    let mut ebpf = Ebpf::load(OBJECT).context("loading the baseline object")?;
    redirector::dataplane::load_xdp(program(&mut ebpf, name)?)?;
    Ok(ebpf)
}

/// The program `name` of a loaded reference object.
pub fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp> {
    Ok(ebpf
        .program_mut(name)
        .with_context(|| format!("no program {name} in the baseline object"))?
        .try_into()?)
}

/// Loads program `name` and attaches it in native mode to each of
/// `interfaces` of the calling thread's namespace; it stays attached until
/// the returned object drops.
pub fn attach(name: &str, interfaces: &[&str]) -> Result<Ebpf> {
    let mut ebpf = load(name)?;
    let program = program(&mut ebpf, name)?;
    for iface in interfaces {
        program
            .attach(iface, XdpMode::Driver)
            .with_context(|| format!("attaching {name} to {iface} in native mode"))?;
    }
    Ok(ebpf)
}
