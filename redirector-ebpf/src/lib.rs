//! What every XDP program of this crate shares: the header parser, the two
//! IP families behind one trait, the FIB lookup, the panic handler and the
//! licence. The programs are in `src/bin/`: `redirector/` (what redirectord loads; its packet path, one
//! small file per stage, as Cilium's `bpf/lib`) and `baseline.rs` (the
//! reference programs the benchmarks measure it against). The maps stay
//! with their program: a map defined here would be created by every
//! program that links the crate.
#![no_std]

pub mod fib;
pub mod ip;
pub mod parse;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// The kernel lets only GPL-compatible programs call helpers such as
/// `bpf_fib_lookup`; every program of this crate carries this licence.
#[link_section = "license"]
#[no_mangle]
#[used]
pub static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
