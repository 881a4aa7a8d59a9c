//! How long a flow entry lives: one rule for the XDP program, which decides
//! per packet whether an entry still holds, and for the controller's sweep,
//! which deletes entries and counts active flows. Both read it from here,
//! so they cannot disagree.
//!
//! | entry | live | then |
//! |---|---|---|
//! | TCP, open | idle ≤ [`TCP_IDLE_TIMEOUT_NS`] | a new SYN may re-select; mid-stream packets keep the region; never deleted for idleness (the LRU reclaims the coldest entries when the table is full) |
//! | TCP, closed (FIN or RST seen) | never | a new SYN re-selects; deleted [`CLOSED_FLOW_LINGER_NS`] after its last packet |
//! | UDP, ICMP echo | idle ≤ [`UDP_IDLE_TIMEOUT_NS`] | the next packet re-selects; deleted |
//!
//! A mid-stream TCP packet always keeps its region: any other region would
//! answer it with a reset. An open TCP connection that idles for hours
//! (keepalives off) therefore resumes where it was.

use crate::{FLOW_CLOSED, IPPROTO_TCP};

/// A UDP or ICMP flow idle this long is a new flow on its next packet.
pub const UDP_IDLE_TIMEOUT_NS: u64 = 30_000_000_000;
/// A TCP flow idle this long may be re-selected by a new SYN (the client's
/// port reused after it vanished without a FIN), and counts as active no
/// more.
pub const TCP_IDLE_TIMEOUT_NS: u64 = 300_000_000_000;
/// A closed TCP flow's entries go this long after their last packet: late
/// retransmissions and the final ACKs still find them.
pub const CLOSED_FLOW_LINGER_NS: u64 = 30_000_000_000;
/// A new TCP flow (in the table of new flows) whose handshake has not
/// completed after this long without a packet is gone.
pub const HANDSHAKE_TIMEOUT_NS: u64 = 30_000_000_000;

/// A gateway with sync peers tells them again, this often, of every flow
/// it carried packets of since the last time: a peer's copy of a flow is
/// as fresh as the last reminder, and a UDP flow's copy must not expire
/// on the peer while the flow is alive here.
pub const SYNC_REFRESH_NS: u64 = 10_000_000_000;
const _: () = assert!(SYNC_REFRESH_NS * 2 < UDP_IDLE_TIMEOUT_NS);

/// What an entry's protocol, flags and idle time say about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Life {
    /// Its packets keep their region; it counts as an active flow.
    Live,
    /// Idle or closed: a packet that can open a flow (any UDP or ICMP
    /// packet, a TCP SYN) opens it anew; a mid-stream TCP packet keeps
    /// the region.
    Reopenable,
    /// As Reopenable, and the sweep deletes it.
    Expired,
}

#[inline(always)]
pub fn life(protocol: u8, flags: u8, idle_ns: u64) -> Life {
    if protocol == IPPROTO_TCP {
        if flags & FLOW_CLOSED != 0 {
            if idle_ns > CLOSED_FLOW_LINGER_NS {
                Life::Expired
            } else {
                Life::Reopenable
            }
        } else if idle_ns > TCP_IDLE_TIMEOUT_NS {
            Life::Reopenable
        } else {
            Life::Live
        }
    } else if idle_ns > UDP_IDLE_TIMEOUT_NS {
        Life::Expired
    } else {
        Life::Live
    }
}

/// The life of a new TCP flow's entry (the table of new flows): as an
/// established one's, but it expires [`HANDSHAKE_TIMEOUT_NS`] after its
/// last packet if the handshake never completes.
#[inline(always)]
pub fn handshake_life(flags: u8, idle_ns: u64) -> Life {
    match life(IPPROTO_TCP, flags, idle_ns) {
        Life::Live if idle_ns > HANDSHAKE_TIMEOUT_NS => Life::Expired,
        other => other,
    }
}

/// Whether a packet keeps its original entry's region, or opens the flow
/// anew. `opener`: the packet is a TCP SYN without ACK.
#[inline(always)]
pub fn keeps_region(protocol: u8, flags: u8, idle_ns: u64, opener: bool) -> bool {
    region_kept(protocol, life(protocol, flags, idle_ns), opener)
}

/// [`keeps_region`] for an entry of the table of new flows.
#[inline(always)]
pub fn handshake_keeps_region(flags: u8, idle_ns: u64, opener: bool) -> bool {
    region_kept(IPPROTO_TCP, handshake_life(flags, idle_ns), opener)
}

#[inline(always)]
fn region_kept(protocol: u8, life: Life, opener: bool) -> bool {
    match life {
        Life::Live => true,
        Life::Reopenable | Life::Expired => protocol == IPPROTO_TCP && !opener,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FLOW_FIN_SEEN, FLOW_RST_SEEN, IPPROTO_ICMP, IPPROTO_UDP};

    const S: u64 = 1_000_000_000;

    /// A simulated clock: the entry was last seen at `last_seen`; where do
    /// packets at `now` go, and what does the sweep do then?
    fn at(protocol: u8, flags: u8, last_seen: u64, now: u64) -> (Life, bool, bool) {
        let idle = now - last_seen;
        (life(protocol, flags, idle), keeps_region(protocol, flags, idle, false), keeps_region(protocol, flags, idle, true))
    }

    #[test]
    fn an_open_tcp_flow_keeps_its_region_mid_stream_however_long_it_idles() {
        let start = 1_000 * S;
        assert_eq!(at(IPPROTO_TCP, 0, start, start + 300 * S), (Life::Live, true, true));
        for idle in [301 * S, 3_600 * S, 86_400 * S * 30] {
            assert_eq!(at(IPPROTO_TCP, 0, start, start + idle), (Life::Reopenable, true, false), "{idle}");
        }
    }

    #[test]
    fn a_closed_tcp_flow_reopens_on_a_syn_and_goes_after_its_linger() {
        for flag in [FLOW_FIN_SEEN, FLOW_RST_SEEN] {
            assert_eq!(at(IPPROTO_TCP, flag, 0, 0), (Life::Reopenable, true, false));
            assert_eq!(at(IPPROTO_TCP, flag, 0, 30 * S), (Life::Reopenable, true, false));
            assert_eq!(at(IPPROTO_TCP, flag, 0, 30 * S + 1), (Life::Expired, true, false));
        }
    }

    #[test]
    fn udp_and_icmp_flows_end_after_their_idle_timeout() {
        for protocol in [IPPROTO_UDP, IPPROTO_ICMP] {
            assert_eq!(at(protocol, 0, 5 * S, 35 * S), (Life::Live, true, true));
            assert_eq!(at(protocol, 0, 5 * S, 35 * S + 1), (Life::Expired, false, false));
        }
    }

    #[test]
    fn a_new_tcp_flow_whose_handshake_never_completes_expires_after_its_timeout() {
        assert_eq!(handshake_life(0, 30 * S), Life::Live);
        assert_eq!(handshake_life(0, 30 * S + 1), Life::Expired);
        assert_eq!(handshake_life(FLOW_RST_SEEN, S), Life::Reopenable, "refused: a new SYN re-selects");
        assert!(handshake_keeps_region(0, 31 * S, false), "its late ACK still goes where its SYN went");
        assert!(!handshake_keeps_region(0, 31 * S, true), "a SYN after the timeout re-selects");
        assert!(handshake_keeps_region(0, S, true), "a retransmitted SYN keeps its region");
    }

    #[test]
    fn whatever_the_sweep_deletes_no_packet_would_have_kept_but_a_mid_stream_tcp_one() {
        for protocol in [IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP] {
            for flags in [0, FLOW_FIN_SEEN, FLOW_RST_SEEN, FLOW_CLOSED] {
                for idle in [0, S, 30 * S, 31 * S, 299 * S, 301 * S, 10_000 * S] {
                    if life(protocol, flags, idle) == Life::Expired {
                        assert!(!keeps_region(protocol, flags, idle, true));
                        assert!(protocol == IPPROTO_TCP || !keeps_region(protocol, flags, idle, false));
                        assert!(protocol != IPPROTO_TCP || flags & FLOW_CLOSED != 0, "an open TCP flow is never deleted");
                    }
                }
            }
        }
    }
}
