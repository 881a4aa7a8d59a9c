//! The flow tables: which region a flow is pinned to and where its packets
//! go, and the reply twin that maps the region's answers back to the VIP.
//!
//! Two tables, so that a SYN flood cannot evict an established connection:
//! a new TCP flow is pinned in `NEW_FLOWS`, and moves to `FLOWS` (the
//! established table) only when the client's ACK carries the
//! acknowledgement of the SYN-ACK its region sent; spoofed sources never
//! see that SYN-ACK. UDP and ICMP flows, which have no handshake to check,
//! go to `FLOWS` at once.
//!
//! How long an entry holds is [`redirector_common::lifetime`]'s rule, the
//! one the controller's sweep deletes by. Capacity is bounded by the LRUs.

use aya_ebpf::maps::LruHashMap;
use redirector_common::{
    lifetime::{handshake_keeps_region, keeps_region},
    Address, Backend, Flow, FlowKey, NextHop, Service, FLOW_ANSWERED, SYNC_EVENT_PINNED, FLOW_ORIGINAL, FLOW_REPLY,
    FLOW_SYNCED, LAST_SEEN_GRANULARITY_NS,
};
use redirector_ebpf::parse::Packet;

use crate::family::Family;

pub type Table<A> = LruHashMap<FlowKey<A>, Flow<A>>;

/// Whether an original entry of the established table still holds for this
/// packet, or the packet opens the flow anew.
#[inline(always)]
pub fn holds<F: Family>(flow: *const Flow<F::Addr>, key: &FlowKey<F::Addr>, pkt: &Packet<F>, now: u64) -> bool {
    let (last_seen, flags) = unsafe { ((*flow).last_seen_ns, (*flow).flags) };
    keeps_region(key.protocol, flags, now.wrapping_sub(last_seen), pkt.is_tcp_syn())
}

/// [`holds`] for an entry of the table of new flows.
#[inline(always)]
pub fn handshake_holds<F: Family>(flow: *const Flow<F::Addr>, pkt: &Packet<F>, now: u64) -> bool {
    let (last_seen, flags) = unsafe { ((*flow).last_seen_ns, (*flow).flags) };
    handshake_keeps_region(flags, now.wrapping_sub(last_seen), pkt.is_tcp_syn())
}

/// Records what this packet says about the flow: that it is alive (and
/// carried here, no longer only a peer's copy), and whether it is closing.
/// True when the last-seen time was refreshed (and so the cached next hop
/// is due for a refresh too).
#[inline(always)]
pub fn touch<F: Family>(flow: *mut Flow<F::Addr>, pkt: &Packet<F>, now: u64) -> bool {
    let close = pkt.tcp_close_flags();
    unsafe {
        if close & !(*flow).flags != 0 {
            (*flow).flags |= close;
        }
        if now.wrapping_sub((*flow).last_seen_ns) > LAST_SEEN_GRANULARITY_NS {
            (*flow).last_seen_ns = now;
            (*flow).flags &= !FLOW_SYNCED;
            return true;
        }
    }
    false
}

/// A region's SYN-ACK of sequence number `seq` answered the flow: its
/// client's ACK of `seq + 1` completes the handshake.
#[inline(always)]
pub fn answered<A: Address>(original: *mut Flow<A>, seq: u32) {
    unsafe {
        (*original).flags |= FLOW_ANSWERED;
        (*original).handshake = seq.wrapping_add(1);
    }
}

/// Whether this client packet completes the new flow's handshake: the
/// region answered, and the packet acknowledges its SYN-ACK.
#[inline(always)]
pub fn completes_handshake<F: Family>(flow: *const Flow<F::Addr>, pkt: &Packet<F>) -> bool {
    let (flags, expected) = unsafe { ((*flow).flags, (*flow).handshake) };
    flags & FLOW_ANSWERED != 0 && pkt.tcp_ack_number() == Some(expected)
}

/// Moves a new flow whose handshake completed, both entries, to the
/// established table; its original entry there, or None if it could not
/// move (its reply twin evicted, the table refusing): it stays new.
#[inline(always)]
pub fn promote<F: Family>(key: &FlowKey<F::Addr>, flow: *mut Flow<F::Addr>) -> Option<*mut Flow<F::Addr>> {
    let (flows, new_flows) = (F::flows(), F::new_flows());
    let twin = unsafe { key.reply_key((*flow).rewrite_addr, (*flow).rewrite_port) };
    let reply = new_flows.get_ptr_mut(&twin)?;
    // Established: no handshake, no refusal to recognise any more. The
    // entries are changed where they are and copied from there: copies on
    // the stack would not fit IPv6's frame.
    let (handshake, refusal) = unsafe { ((*flow).handshake, (*reply).handshake) };
    unsafe {
        (*flow).flags &= !FLOW_ANSWERED;
        (*flow).handshake = 0;
        (*reply).handshake = 0;
    }
    let twin_moved = flows.insert(&twin, unsafe { &*reply }, 0).is_ok();
    if !twin_moved || flows.insert(key, unsafe { &*flow }, 0).is_err() {
        // It stays new, as it was: what this function changed is put
        // back, what another CPU set meanwhile (a FIN) is kept.
        if twin_moved {
            let _ = flows.remove(&twin);
        }
        unsafe {
            (*flow).flags |= FLOW_ANSWERED;
            (*flow).handshake = handshake;
            (*reply).handshake = refusal;
        }
        return None;
    }
    F::announce(key, unsafe { &*flow }, SYNC_EVENT_PINNED);
    let _ = new_flows.remove(key);
    let _ = new_flows.remove(&twin);
    flows.get_ptr_mut(key)
}

/// Where a flow is pinned and what it carries over.
pub struct Placement<'a, A: Address> {
    /// The service the flow addressed.
    pub service: Service,
    /// `NEW_FLOWS` for a TCP flow still in its handshake, else `FLOWS`.
    pub table: &'a Table<A>,
    /// The `FLOW_*_SEEN` bits it starts with, so a flow that closed stays
    /// closed when moved.
    pub flags: u8,
    /// What the peers are told when the flow lands in `FLOWS`, and the
    /// flow event log: `SYNC_EVENT_PINNED` or `SYNC_EVENT_RE_STEERED`.
    pub event: u8,
    /// Opened by a SYN: its sequence number + 1, what a region refusing it
    /// acknowledges (kept in the reply twin for passive detection); 0
    /// otherwise.
    pub refusal_ack: u32,
    /// The packet's time: the flow's last-seen time.
    pub now: u64,
}

/// Pins the flow to `region_id` at `backend` (new, or moved off a down
/// region), with the reply twin that answers from the VIP.
#[inline(always)]
pub fn pin<F: Family>(
    placement: &Placement<F::Addr>,
    key: &FlowKey<F::Addr>,
    region_id: u8,
    backend: &Backend<F::Addr>,
    next_hop: &NextHop,
) {
    let table = placement.table;
    let mut flow = Flow {
        last_seen_ns: placement.now,
        rewrite_addr: backend.addr,
        rewrite_port: backend.port,
        service_id: placement.service.id as u16,
        region_id,
        direction: FLOW_ORIGINAL,
        flags: placement.flags,
        _pad: 0,
        handshake: 0,
        next_hop: *next_hop,
        _tail: Default::default(),
    };
    // On a full table the LRU evicts the coldest entry; an insert only fails
    // on allocation failure, and then the flow is re-selected next packet.
    if table.insert(key, &flow, 0).is_ok() && core::ptr::eq(table, F::flows()) {
        F::announce(key, &flow, placement.event);
    }

    flow.direction = FLOW_REPLY;
    flow.rewrite_addr = key.dst_addr;
    flow.rewrite_port = key.dst_port;
    flow.handshake = placement.refusal_ack;
    // It leaves toward the client: resolved on its first packet.
    flow.next_hop = NextHop::default();
    let _ = table.insert(&key.reply_key(backend.addr, backend.port), &flow, 0);
}

/// Removes an original entry of `table` and its reply twin.
#[inline(always)]
pub fn forget<A: Address>(table: &Table<A>, key: &FlowKey<A>, original: *const Flow<A>) {
    let (addr, port) = unsafe { ((*original).rewrite_addr, (*original).rewrite_port) };
    let _ = table.remove(&key.reply_key(addr, port));
    let _ = table.remove(key);
}

/// The client's flow key as the reply twin `reply` remembers it.
#[inline(always)]
pub fn original_key<A: Address>(reply_key: &FlowKey<A>, reply: &Flow<A>) -> FlowKey<A> {
    FlowKey {
        src_addr: reply_key.dst_addr,
        dst_addr: reply.rewrite_addr,
        src_port: reply_key.dst_port,
        dst_port: reply.rewrite_port,
        protocol: reply_key.protocol,
        _pad: [0; 3],
    }
}
