//! Flow events for the flow sync: each flow that enters the established
//! table, or moves off a down region, is told to `redirectord` through a
//! ring buffer as it happens, and from there to the peer gateways. Only
//! when the loader sets `SYNC_FLOW_EVENTS`: at 0 the verifier removes the
//! branch and a gateway without peers pays nothing.
//!
//! Closes and refreshes do not pass here: the daemon's sweep reads them
//! from the table (a flow's close bits, its last packet) every period.

use aya_ebpf::Global;
use redirector_common::{Flow, SyncEvent, FlowKey, Reason};

use crate::{maps::FLOW_EVENTS, stats};

/// Set to 1 by the loader when `[sync]` names peers.
#[no_mangle]
static SYNC_FLOW_EVENTS: Global<u8> = Global::new(0);

/// Tells the peers that `flow`, the original entry of `key` in the
/// established table, was pinned (`SYNC_EVENT_PINNED`) or re-steered
/// (`SYNC_EVENT_RE_STEERED`). A full ring loses the event, counted: the
/// sweep's next refresh carries the flow.
#[inline(always)]
pub fn announce(key: &FlowKey, flow: &Flow, event: u8) {
    if SYNC_FLOW_EVENTS.load() == 0 {
        return;
    }
    let Some(mut entry) = FLOW_EVENTS.reserve::<SyncEvent>(0) else {
        stats::count_reason(Reason::SyncEventLost);
        return;
    };
    entry.write(SyncEvent {
        key: *key,
        rewrite_addr: flow.rewrite_addr,
        rewrite_port: flow.rewrite_port,
        service_id: flow.service_id,
        region_id: flow.region_id,
        flags: flow.flags,
        event,
        _pad: [0; 5],
    });
    entry.submit(0);
}
