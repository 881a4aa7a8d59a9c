//! Passive detection: a region's answers say whether its server is there.
//! A reset in answer to a SYN means nothing listens on the service's port
//! in that region; it is told to `redirectord` through a ring buffer as it
//! passes, and a policy there decides (never on one signal). Only when the
//! loader sets `PASSIVE_DETECTION`: at 0 the verifier removes the branch.
//!
//! "In answer to a SYN" is checked, not assumed: the reset must carry ACK
//! and acknowledge the flow's SYN (its sequence number + 1, kept in the
//! reply twin when the SYN pinned it). A client cannot forge the signal
//! with segments a listening region resets: a bad ACK is reset without
//! ACK, a segment of a flow no SYN opened has nothing to match, and a
//! segment without ACK after the SYN is dropped by the region's half-open
//! connection.

use aya_ebpf::{helpers::bpf_ktime_get_ns, Global};
use redirector_common::{Flow, Reason, RegionSignal, SIGNAL_SYN_REFUSED};
use redirector_ebpf::{ip::IpHeader, parse::Packet};

use crate::{maps::REGION_SIGNALS, stats};

/// Set to 1 by the loader when the config has `[passive]`.
#[no_mangle]
static PASSIVE_DETECTION: Global<u8> = Global::new(0);

/// `pkt` passes from the region back to the client on `reply`, the reply
/// entry of a flow still in its handshake.
#[inline(always)]
pub fn handshake_answer<H: IpHeader>(pkt: &Packet<H>, reply: &Flow<H::Addr>) {
    if PASSIVE_DETECTION.load() == 0 {
        return;
    }
    if reply.handshake == 0 || pkt.tcp_rst_ack_number() != Some(reply.handshake) {
        return;
    }
    let Some(mut entry) = REGION_SIGNALS.reserve::<RegionSignal>(0) else {
        stats::count_reason(Reason::RegionSignalLost);
        return;
    };
    entry.write(RegionSignal {
        at_ns: unsafe { bpf_ktime_get_ns() },
        service_id: reply.service_id,
        region_id: reply.region_id,
        kind: SIGNAL_SYN_REFUSED,
        _pad: [0; 4],
    });
    entry.submit(0);
}
