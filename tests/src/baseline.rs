//! The reference XDP programs (redirector-ebpf/src/bin/baseline.rs), built
//! by redirector's build script alongside the data plane.

use anyhow::{Context, Result};
use aya::{programs::Xdp, Ebpf};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../redirector-ebpf/target/bpfel-unknown-none/release/baseline"
));

/// Loads the reference object with its program `name` loaded in the kernel.
pub fn load(name: &str) -> Result<Ebpf> {
    let mut ebpf = Ebpf::load(OBJECT).context("loading the baseline object")?;
    let program: &mut Xdp = ebpf
        .program_mut(name)
        .with_context(|| format!("no program {name} in the baseline object"))?
        .try_into()?;
    program.load()?;
    Ok(ebpf)
}
