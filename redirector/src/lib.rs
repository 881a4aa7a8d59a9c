//! redirector's gateway: redirectord and the XDP data plane it drives.
//!
//! Pure, tested on a simulated clock: `config` (the file → the model),
//! `health` (probe results → region verdicts), `policy` (verdicts, load and
//! operator commands → which regions take new flows), `maglev` (a share →
//! a selection table) and `controller` (all of them → the order of data
//! plane writes, through the `dataplane::Dataplane` trait). At the edges:
//! `dataplane` (the BPF maps and links), `checkers` (probes),
//! `control_server`, `metrics`, and `daemon`, which wires them.
pub mod alerts;
pub mod bfd;
pub mod checkers;
pub mod cli;
pub mod config;
pub mod control_server;
pub mod controller;
pub mod daemon;
pub mod dataplane;
pub mod flow_list;
pub mod health;
pub mod http;
pub mod listener;
pub mod maglev;
pub mod metrics;
pub mod passive;
pub mod policy;
pub mod sync;
