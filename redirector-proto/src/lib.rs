//! What redirector's programs say to each other, defined once for both
//! ends: the heartbeat between redirectord and each region's agent, the
//! control socket between redirectorctl and redirectord, the HTTP check
//! both the daemon and the agent run, and the words they all share.
//!
//! It builds on stable with no eBPF toolchain: the agent and the CLI, which
//! run where no XDP program is loaded, depend on this crate and not on the
//! gateway's.
pub mod bfd;
pub mod control;
pub mod file;
pub mod heartbeat;
pub mod key;
pub mod model;
pub mod probe;
pub mod sync;
pub mod wire;
