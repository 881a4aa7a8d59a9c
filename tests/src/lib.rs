//! Test bed for redirector: network namespaces, crafted frames, the packet
//! test gateway; shared by the integration tests, the lab and the benchmarks.
pub mod baseline;
pub mod bench;
pub mod client;
pub mod frames;
pub mod inns;
pub mod lab;
pub mod fuzz;
pub mod netns;
pub mod pair_load;
pub mod soak;
pub mod steer;
pub mod topology;
pub mod xdp;
