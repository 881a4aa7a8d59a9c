//! Flow records and flow-table entries: what this gateway tells its peers
//! of its own flows, and how a peer's records land in this gateway's
//! table.
//!
//! A peer's flow is written as the data plane would have pinned it (an
//! original entry and its reply twin, same region and rewrite target),
//! with two differences: `FLOW_SYNCED` marks it as a copy (never announced
//! back, cleared by the data plane when a packet of it passes here), and
//! its next hop is unknown, so the first packet here asks the FIB.
//! A flow this gateway carries itself is never overwritten by a copy of
//! the same decision, nor deleted by a peer's close: its own sweep decides.

use anyhow::Result;
use redirector_common::{
    Flow, FlowKey, NextHop, SyncEvent, FLOW_CLOSED, FLOW_ORIGINAL, FLOW_REPLY, FLOW_SYNCED, SYNC_EVENT_PINNED,
    SYNC_EVENT_RE_STEERED,
};
use redirector_proto::sync::{FlowEvent, FlowRecord};

/// The record of a data plane event; None for an event it does not know
/// (a newer program than this daemon).
pub fn from_dataplane(event: &SyncEvent) -> Option<FlowRecord> {
    let kind = match event.event {
        SYNC_EVENT_PINNED => FlowEvent::Pinned,
        SYNC_EVENT_RE_STEERED => FlowEvent::ReSteered,
        _ => return None,
    };
    Some(FlowRecord {
        event: kind,
        key: event.key,
        service_id: event.service_id,
        region_id: event.region_id,
        flags: event.flags & FLOW_CLOSED,
        rewrite_addr: event.rewrite_addr,
        rewrite_port: event.rewrite_port,
    })
}

/// The record of an original entry of this gateway's established table.
pub fn from_entry(event: FlowEvent, key: &FlowKey, flow: &Flow) -> FlowRecord {
    FlowRecord {
        event,
        key: *key,
        service_id: flow.service_id,
        region_id: flow.region_id,
        flags: flow.flags & FLOW_CLOSED,
        rewrite_addr: flow.rewrite_addr,
        rewrite_port: flow.rewrite_port,
    }
}

/// The original entry and reply twin a peer's record makes here, last
/// seen `now_ns` (the data plane's clock).
pub fn entries(record: &FlowRecord, now_ns: u64) -> [(FlowKey, Flow); 2] {
    let original = Flow {
        last_seen_ns: now_ns,
        rewrite_addr: record.rewrite_addr,
        rewrite_port: record.rewrite_port,
        service_id: record.service_id,
        region_id: record.region_id,
        direction: FLOW_ORIGINAL,
        flags: (record.flags & FLOW_CLOSED) | FLOW_SYNCED,
        _pad: 0,
        handshake: 0,
        next_hop: NextHop::default(),
        _tail: [],
    };
    let reply = Flow {
        direction: FLOW_REPLY,
        rewrite_addr: record.key.dst_addr,
        rewrite_port: record.key.dst_port,
        ..original
    };
    [(record.key, original), (reply_key(&record.key, &original), reply)]
}

/// The key of an original entry's reply twin.
fn reply_key(key: &FlowKey, original: &Flow) -> FlowKey {
    key.reply_key(original.rewrite_addr, original.rewrite_port)
}

/// The established flow table as applying records needs it.
pub trait FlowStore {
    fn get(&self, key: &FlowKey) -> Option<Flow>;
    fn insert(&mut self, key: &FlowKey, flow: &Flow) -> Result<()>;
    /// Removing what is not there is not an error.
    fn remove(&mut self, key: &FlowKey) -> Result<()>;
}

/// What applying a batch did, record by record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Written (both entries).
    pub written: u64,
    /// Closed on the peer: both entries deleted here.
    pub deleted: u64,
    /// Left alone: carried here with the same region, or closed on the
    /// peer but carried here, or closed and unknown here.
    pub kept: u64,
}

impl Applied {
    pub fn add(&mut self, other: Applied) {
        self.written += other.written;
        self.deleted += other.deleted;
        self.kept += other.kept;
    }
}

/// Applies a peer's records to `store`, in order.
pub fn apply(store: &mut impl FlowStore, records: &[FlowRecord], now_ns: u64) -> Result<Applied> {
    let mut applied = Applied::default();
    for record in records {
        let here = store.get(&record.key).filter(|flow| flow.direction == FLOW_ORIGINAL);
        let carried_here = here.is_some_and(|flow| flow.flags & FLOW_SYNCED == 0);
        match record.event {
            FlowEvent::Closed => match here {
                Some(flow) if !carried_here => {
                    store.remove(&reply_key(&record.key, &flow))?;
                    store.remove(&record.key)?;
                    applied.deleted += 1;
                }
                _ => applied.kept += 1,
            },
            FlowEvent::Pinned | FlowEvent::ReSteered | FlowEvent::Refreshed => {
                let same_decision = here.is_some_and(|flow| {
                    (flow.region_id, flow.rewrite_addr, flow.rewrite_port)
                        == (record.region_id, record.rewrite_addr, record.rewrite_port)
                });
                if carried_here && same_decision {
                    applied.kept += 1;
                    continue;
                }
                if let Some(stale) = here.filter(|_| !same_decision) {
                    // Moved to another endpoint: the old twin would answer
                    // for an endpoint the flow left.
                    store.remove(&reply_key(&record.key, &stale))?;
                }
                for (key, flow) in entries(record, now_ns) {
                    store.insert(&key, &flow)?;
                }
                applied.written += 1;
            }
        }
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use redirector_common::{FLOW_FIN_SEEN, IPPROTO_TCP, IPPROTO_UDP};

    use super::*;

    impl FlowStore for HashMap<FlowKey, Flow> {
        fn get(&self, key: &FlowKey) -> Option<Flow> {
            HashMap::get(self, key).copied()
        }
        fn insert(&mut self, key: &FlowKey, flow: &Flow) -> Result<()> {
            HashMap::insert(self, *key, *flow);
            Ok(())
        }
        fn remove(&mut self, key: &FlowKey) -> Result<()> {
            HashMap::remove(self, key);
            Ok(())
        }
    }

    const CLIENT: u32 = u32::from_be_bytes([192, 0, 2, 10]);
    const VIP: u32 = u32::from_be_bytes([10, 2, 0, 2]);
    const REGION1: u32 = u32::from_be_bytes([10, 1, 0, 2]);
    const REGION2: u32 = u32::from_be_bytes([10, 3, 0, 2]);

    fn key(protocol: u8) -> FlowKey {
        FlowKey {
            src_addr: CLIENT.to_be(),
            dst_addr: VIP.to_be(),
            src_port: 40_000u16.to_be(),
            dst_port: 80u16.to_be(),
            protocol,
            _pad: [0; 3],
        }
    }

    fn record(event: FlowEvent, region_id: u8, endpoint: u32) -> FlowRecord {
        FlowRecord {
            event,
            key: key(IPPROTO_TCP),
            service_id: 3,
            region_id,
            flags: 0,
            rewrite_addr: endpoint.to_be(),
            rewrite_port: 8080u16.to_be(),
        }
    }

    fn twin_key(endpoint: u32) -> FlowKey {
        FlowKey {
            src_addr: endpoint.to_be(),
            dst_addr: CLIENT.to_be(),
            src_port: 8080u16.to_be(),
            dst_port: 40_000u16.to_be(),
            protocol: IPPROTO_TCP,
            _pad: [0; 3],
        }
    }

    #[test]
    fn a_record_makes_both_entries_as_the_data_plane_pins_them() {
        let [(k, original), (twin, reply)] = entries(&record(FlowEvent::Pinned, 1, REGION1), 7);
        assert_eq!(k, key(IPPROTO_TCP));
        assert_eq!(twin, twin_key(REGION1));
        assert_eq!((original.direction, original.region_id, original.service_id), (FLOW_ORIGINAL, 1, 3));
        assert_eq!((original.rewrite_addr, original.rewrite_port), (REGION1.to_be(), 8080u16.to_be()));
        assert_eq!((reply.direction, reply.rewrite_addr, reply.rewrite_port), (FLOW_REPLY, VIP.to_be(), 80u16.to_be()));
        for flow in [original, reply] {
            assert_eq!((flow.last_seen_ns, flow.flags, flow.next_hop), (7, FLOW_SYNCED, NextHop::default()));
        }
    }

    #[test]
    fn data_plane_events_and_entries_become_records_without_local_bits() {
        let event = SyncEvent {
            key: key(IPPROTO_UDP),
            rewrite_addr: REGION1.to_be(),
            rewrite_port: 53u16.to_be(),
            service_id: 2,
            region_id: 4,
            flags: FLOW_SYNCED,
            event: SYNC_EVENT_RE_STEERED,
            _pad: [0; 5],
        };
        let r = from_dataplane(&event).unwrap();
        assert_eq!((r.event, r.region_id, r.service_id, r.flags), (FlowEvent::ReSteered, 4, 2, 0));
        assert_eq!(from_dataplane(&SyncEvent { event: 9, ..event }), None);
        let [(k, flow), _] = entries(&record(FlowEvent::Pinned, 1, REGION1), 7);
        let flow = Flow { flags: FLOW_FIN_SEEN | FLOW_SYNCED, ..flow };
        let r = from_entry(FlowEvent::Refreshed, &k, &flow);
        assert_eq!((r.event, r.flags, r.region_id), (FlowEvent::Refreshed, FLOW_FIN_SEEN, 1));
    }

    #[test]
    fn a_flow_carried_here_keeps_its_entry_against_the_same_decision_and_a_close() {
        let mut table = HashMap::new();
        apply(&mut table, &[record(FlowEvent::Pinned, 1, REGION1)], 5).unwrap();
        // A packet passed here: the data plane cleared the mark, cached a hop.
        let carried = Flow { flags: 0, next_hop: NextHop { ifindex: 9, ..NextHop::default() }, ..table[&key(IPPROTO_TCP)] };
        table.insert(key(IPPROTO_TCP), carried);
        let applied = apply(
            &mut table,
            &[record(FlowEvent::Refreshed, 1, REGION1), record(FlowEvent::Closed, 1, REGION1)],
            9,
        )
        .unwrap();
        assert_eq!(applied, Applied { written: 0, deleted: 0, kept: 2 });
        assert_eq!(table[&key(IPPROTO_TCP)], carried);
    }

    #[test]
    fn a_peer_that_moved_the_flow_wins_and_the_old_twin_goes() {
        let mut table = HashMap::new();
        apply(&mut table, &[record(FlowEvent::Pinned, 1, REGION1)], 5).unwrap();
        let applied = apply(&mut table, &[record(FlowEvent::ReSteered, 2, REGION2)], 6).unwrap();
        assert_eq!(applied.written, 1);
        assert_eq!(table.len(), 2);
        assert_eq!(table[&key(IPPROTO_TCP)].region_id, 2);
        assert!(table.contains_key(&twin_key(REGION2)) && !table.contains_key(&twin_key(REGION1)));
    }

    #[test]
    fn a_close_removes_a_copy_both_ways_and_nothing_else() {
        let mut table = HashMap::new();
        apply(&mut table, &[record(FlowEvent::Pinned, 1, REGION1)], 5).unwrap();
        let other = FlowKey { src_port: 1u16.to_be(), ..key(IPPROTO_TCP) };
        table.insert(other, Flow::default());
        let applied = apply(&mut table, &[record(FlowEvent::Closed, 1, REGION1)], 6).unwrap();
        assert_eq!(applied.deleted, 1);
        assert_eq!(table.keys().collect::<Vec<_>>(), vec![&other]);
        // Closed and unknown here: nothing to do.
        let applied = apply(&mut table, &[record(FlowEvent::Closed, 1, REGION1)], 7).unwrap();
        assert_eq!((applied.kept, table.len()), (1, 1));
    }

    #[test]
    fn a_refresh_of_a_copy_renews_it() {
        let mut table = HashMap::new();
        apply(&mut table, &[record(FlowEvent::Pinned, 1, REGION1)], 5).unwrap();
        apply(&mut table, &[record(FlowEvent::Refreshed, 1, REGION1)], 50).unwrap();
        assert!(table.values().all(|flow| flow.last_seen_ns == 50));
    }
}
