//! BFD, single-hop asynchronous mode (RFC 5880, RFC 5881): a region's
//! router or host (FRR's bfdd, a switch) tells the gateway it is there
//! every few milliseconds, and the gateway knows within the detect
//! multiplier × the interval when it is not. The wire format and a
//! session's state machine, free of I/O.
pub mod packet;
pub mod session;
