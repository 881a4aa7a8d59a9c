//! Builds the XDP object (redirector-ebpf) with the nightly pinned in its
//! rust-toolchain.toml and hands its path to the crate, which embeds it:
//! one binary ships.

use std::{env, path::PathBuf, process::Command};

fn main() {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap())
        .parent()
        .unwrap()
        .to_path_buf();
    let ebpf_dir = root.join("redirector-ebpf");
    for watched in [
        "redirector-ebpf/src",
        "redirector-ebpf/Cargo.toml",
        "redirector-common/src",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }

    // The outer cargo's environment would leak the stable toolchain and its
    // flags into the nested build; rustup must pick the pinned nightly from
    // redirector-ebpf/rust-toolchain.toml instead.
    let mut cargo = Command::new("cargo");
    for (key, _) in env::vars() {
        if (key.starts_with("CARGO") && key != "CARGO_HOME")
            || key.starts_with("RUSTC")
            || key.starts_with("RUSTUP_TOOLCHAIN")
            || key == "RUSTFLAGS"
            || key == "RUSTDOCFLAGS"
        {
            cargo.env_remove(key);
        }
    }
    let status = cargo
        .current_dir(&ebpf_dir)
        .args(["build", "--release", "--locked"])
        .status()
        .expect("cannot run cargo for redirector-ebpf; run `cargo xtask setup`");
    if !status.success() {
        panic!(
            "building redirector-ebpf failed ({status}); `cargo xtask setup` installs the pinned \
             nightly, rust-src and bpf-linker it needs"
        );
    }
    let object = ebpf_dir.join("target/bpfel-unknown-none/release/redirector");
    println!("cargo:rustc-env=REDIRECTOR_EBPF_OBJECT={}", object.display());
}
