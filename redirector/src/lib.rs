//! redirector: steer a service's traffic between regions with XDP.
//!
//! `dataplane` is the only module that touches the kernel's BPF objects.
pub mod agent;
pub mod control;
pub mod dataplane;
pub mod flow_table;
pub mod config;
pub mod health;
pub mod probe;
pub mod maglev;
pub mod policy;
pub mod heartbeat;
pub mod daemon;
pub mod metrics;
