//! Flow-state sync between gateways: each gateway tells its peers about
//! the flows it pins, re-steers, refreshes and closes, so that a peer can
//! carry any of them on, both ways, to the same region, if the gateway
//! dies. Encoding and decoding, numbering, and a peer's checks of what
//! arrives ([`Receiver`]); no sockets here.
//!
//! Wire format, version 1: one UDP datagram, integers big-endian except
//! where a record copies addresses and ports as they are on the wire.
//!
//! | offset | size | field                                                  |
//! |-------:|-----:|--------------------------------------------------------|
//! |      0 |    4 | magic `RDFS`                                           |
//! |      4 |    1 | version, 1                                             |
//! |      5 |    1 | kind: 1 flows, 2 resync request, 3 resync done         |
//! |      6 |    1 | flags: bit 0 = a MAC follows the records; others 0     |
//! |      7 |    1 | records, 0 to [`MAX_RECORDS`] (0 unless kind 1)         |
//! |      8 |    8 | boot: when the sender started, ns since the Unix epoch |
//! |     16 |    8 | sequence number within the boot, from 1                |
//! |     24 |    8 | config digest: the sender's services and regions       |
//! |     32 |    8 | when it was sent, µs since the Unix epoch (the lag)   |
//! |     40 | 24 n | records                                                |
//! |        |   32 | HMAC-SHA256 of everything before it, if flagged        |
//!
//! A record, 24 bytes: the flow as the client sent it (client address,
//! VIP, client port or ICMP echo identifier, VIP port: network order, as
//! in `FlowKey`), protocol, event (1 pinned, 2 re-steered, 3 refreshed,
//! 4 closed), region id, the flow's `FLOW_*` close and handshake bits, the
//! region endpoint its destination is rewritten to (network order), and
//! the service id. The reply entry follows from it; next hops do not
//! travel, each gateway asks its own FIB.
//!
//! Region and service ids are positions in the config, so peers must run
//! the same one: a datagram whose digest differs from the receiver's is
//! refused and counted, never applied. With the biggest batch a datagram
//! is 1 416 bytes, under a 1 500-byte MTU.

mod receiver;

use hmac::Mac;
use redirector_common::{
    FlowKey, FLOW_ANSWERED, FLOW_FIN_SEEN, FLOW_RST_SEEN, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, MAX_REGIONS,
    MAX_SERVICES,
};

pub use self::receiver::{Counters, Receiver, Rejection};
pub use crate::wire::DecodeError;
use crate::wire::{preamble, FLAG_MAC};
use crate::key::{check_mac, Key};

pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 40;
pub const RECORD_LEN: usize = 24;
pub const MAC_LEN: usize = 32;
/// Records in one datagram: the most that fit a 1 500-byte MTU with the
/// IP and UDP headers.
pub const MAX_RECORDS: usize = 56;
pub const MAX_DATAGRAM: usize = HEADER_LEN + MAX_RECORDS * RECORD_LEN + MAC_LEN;
// With the IPv4 and UDP headers, within a 1 500-byte MTU.
const _: () = assert!(MAX_DATAGRAM + 28 <= 1500);
const MAGIC: [u8; 4] = *b"RDFS";
const FLOW_BITS: u8 = FLOW_FIN_SEEN | FLOW_RST_SEEN | FLOW_ANSWERED;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A batch of flow records.
    Flows,
    /// A gateway that starts asks its peers for their whole tables.
    ResyncRequest,
    /// A peer has sent its whole table in answer to a resync request.
    ResyncDone,
}

impl Kind {
    fn wire(self) -> u8 {
        match self {
            Kind::Flows => 1,
            Kind::ResyncRequest => 2,
            Kind::ResyncDone => 3,
        }
    }

    fn from_wire(byte: u8) -> Option<Kind> {
        match byte {
            1 => Some(Kind::Flows),
            2 => Some(Kind::ResyncRequest),
            3 => Some(Kind::ResyncDone),
            _ => None,
        }
    }
}

/// What happened to a flow on the gateway that sends the record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowEvent {
    /// A new flow, pinned to a region.
    Pinned,
    /// Moved off a region that went down.
    ReSteered,
    /// Still alive: a long-lived flow's periodic reminder, and every flow
    /// of a resync.
    Refreshed,
    /// Closed (FIN both ways or RST) or expired.
    Closed,
}

impl FlowEvent {
    fn wire(self) -> u8 {
        match self {
            FlowEvent::Pinned => 1,
            FlowEvent::ReSteered => 2,
            FlowEvent::Refreshed => 3,
            FlowEvent::Closed => 4,
        }
    }

    fn from_wire(byte: u8) -> Option<FlowEvent> {
        match byte {
            1 => Some(FlowEvent::Pinned),
            2 => Some(FlowEvent::ReSteered),
            3 => Some(FlowEvent::Refreshed),
            4 => Some(FlowEvent::Closed),
            _ => None,
        }
    }
}

/// One flow, as its original (client → VIP) entry pins it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowRecord {
    pub event: FlowEvent,
    pub key: FlowKey,
    pub service_id: u16,
    pub region_id: u8,
    /// `FLOW_FIN_SEEN`, `FLOW_RST_SEEN`, `FLOW_ANSWERED` bits.
    pub flags: u8,
    /// Network order, as in `Flow`.
    pub rewrite_addr: u32,
    pub rewrite_port: u16,
}

impl FlowRecord {
    fn encode(&self, b: &mut [u8]) {
        b[0..4].copy_from_slice(&self.key.src_addr.to_ne_bytes());
        b[4..8].copy_from_slice(&self.key.dst_addr.to_ne_bytes());
        b[8..10].copy_from_slice(&self.key.src_port.to_ne_bytes());
        b[10..12].copy_from_slice(&self.key.dst_port.to_ne_bytes());
        b[12] = self.key.protocol;
        b[13] = self.event.wire();
        b[14] = self.region_id;
        b[15] = self.flags;
        b[16..20].copy_from_slice(&self.rewrite_addr.to_ne_bytes());
        b[20..22].copy_from_slice(&self.rewrite_port.to_ne_bytes());
        b[22..24].copy_from_slice(&self.service_id.to_be_bytes());
    }

    fn decode(b: &[u8]) -> Result<FlowRecord, DecodeError> {
        let protocol = b[12];
        if ![IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP].contains(&protocol) {
            return Err(DecodeError::Field("protocol"));
        }
        let event = FlowEvent::from_wire(b[13]).ok_or(DecodeError::Field("event"))?;
        let region_id = b[14];
        if u32::from(region_id) >= MAX_REGIONS {
            return Err(DecodeError::Field("region id"));
        }
        let flags = b[15];
        if flags & !FLOW_BITS != 0 {
            return Err(DecodeError::Field("flow flags"));
        }
        let service_id = u16::from_be_bytes([b[22], b[23]]);
        if u32::from(service_id) >= MAX_SERVICES {
            return Err(DecodeError::Field("service id"));
        }
        let ne32 = |at: usize| u32::from_ne_bytes(b[at..at + 4].try_into().unwrap());
        let ne16 = |at: usize| u16::from_ne_bytes([b[at], b[at + 1]]);
        Ok(FlowRecord {
            event,
            key: FlowKey {
                src_addr: ne32(0),
                dst_addr: ne32(4),
                src_port: ne16(8),
                dst_port: ne16(10),
                protocol,
                _pad: [0; 3],
            },
            service_id,
            region_id,
            flags,
            rewrite_addr: ne32(16),
            rewrite_port: ne16(20),
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub kind: Kind,
    pub boot: u64,
    pub seq: u64,
    pub digest: u64,
    /// When the sender sent it, µs since the Unix epoch: the receiver's
    /// clock less this is the lag (give or take the clocks' offset).
    pub sent_unix_us: u64,
    /// Empty unless `kind` is `Flows`.
    pub records: Vec<FlowRecord>,
}

impl Message {
    /// # Panics
    /// With more than [`MAX_RECORDS`] records, or records on a message
    /// that is not `Flows`: [`Sender`] never builds one.
    pub fn encode(&self, key: Option<&Key>) -> Vec<u8> {
        assert!(self.records.len() <= MAX_RECORDS, "{} records in one sync datagram", self.records.len());
        assert!(self.kind == Kind::Flows || self.records.is_empty(), "records on a {:?} message", self.kind);
        let body = HEADER_LEN + self.records.len() * RECORD_LEN;
        let mut b = vec![0u8; body];
        b[0..4].copy_from_slice(&MAGIC);
        b[4] = VERSION;
        b[5] = self.kind.wire();
        b[6] = if key.is_some() { FLAG_MAC } else { 0 };
        b[7] = self.records.len() as u8;
        b[8..16].copy_from_slice(&self.boot.to_be_bytes());
        b[16..24].copy_from_slice(&self.seq.to_be_bytes());
        b[24..32].copy_from_slice(&self.digest.to_be_bytes());
        b[32..40].copy_from_slice(&self.sent_unix_us.to_be_bytes());
        for (record, chunk) in self.records.iter().zip(b[HEADER_LEN..].chunks_exact_mut(RECORD_LEN)) {
            record.encode(chunk);
        }
        if let Some(key) = key {
            let tag = key.mac(&b).finalize().into_bytes();
            b.extend_from_slice(&tag);
        }
        b
    }

    /// Checks framing and authentication before it reads any field.
    pub fn decode(b: &[u8], key: Option<&Key>) -> Result<Message, DecodeError> {
        if b.len() < HEADER_LEN {
            return Err(DecodeError::Length(b.len()));
        }
        let has_mac = preamble(b, MAGIC, VERSION)?;
        let count = b[7] as usize;
        if count > MAX_RECORDS {
            return Err(DecodeError::Field("record count"));
        }
        let body = HEADER_LEN + count * RECORD_LEN;
        if b.len() != body + if has_mac { MAC_LEN } else { 0 } {
            return Err(DecodeError::Length(b.len()));
        }
        check_mac(key, has_mac, &b[..body], &b[body..])?;
        let kind = Kind::from_wire(b[5]).ok_or(DecodeError::Kind(b[5]))?;
        if kind != Kind::Flows && count != 0 {
            return Err(DecodeError::Field("record count"));
        }
        let seq = u64::from_be_bytes(b[16..24].try_into().unwrap());
        if seq == 0 {
            return Err(DecodeError::Field("sequence"));
        }
        let records = b[HEADER_LEN..body].chunks_exact(RECORD_LEN).map(FlowRecord::decode).collect::<Result<_, _>>()?;
        Ok(Message {
            kind,
            boot: u64::from_be_bytes(b[8..16].try_into().unwrap()),
            seq,
            digest: u64::from_be_bytes(b[24..32].try_into().unwrap()),
            sent_unix_us: u64::from_be_bytes(b[32..40].try_into().unwrap()),
            records,
        })
    }
}

/// Records in a datagram [`Sender`] built.
pub fn records_in(datagram: &[u8]) -> usize {
    datagram.get(7).map_or(0, |&n| usize::from(n))
}

/// A gateway's outgoing side: numbers its datagrams and cuts batches to
/// size.
pub struct Sender {
    boot: u64,
    seq: u64,
    digest: u64,
    key: Option<Key>,
}

impl Sender {
    /// `boot` must grow from one start to the next (the receivers' replay
    /// guard drops a boot older than the last it saw): the start time in
    /// ns since the Unix epoch.
    pub fn new(boot: u64, digest: u64, key: Option<Key>) -> Self {
        Self { boot, seq: 0, digest, key }
    }

    /// After a reload that changed the services or regions.
    pub fn set_digest(&mut self, digest: u64) {
        self.digest = digest;
    }

    /// The datagrams that carry `records`, in order.
    pub fn flows(&mut self, records: &[FlowRecord]) -> Vec<Vec<u8>> {
        records.chunks(MAX_RECORDS).map(|chunk| self.datagram(Kind::Flows, chunk.to_vec())).collect()
    }

    /// An empty batch: tells a peer this gateway is there.
    pub fn keepalive(&mut self) -> Vec<u8> {
        self.datagram(Kind::Flows, Vec::new())
    }

    /// A message without records: a resync request or its end.
    pub fn control(&mut self, kind: Kind) -> Vec<u8> {
        self.datagram(kind, Vec::new())
    }

    fn datagram(&mut self, kind: Kind, records: Vec<FlowRecord>) -> Vec<u8> {
        self.seq += 1;
        let sent_unix_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        Message { kind, boot: self.boot, seq: self.seq, digest: self.digest, sent_unix_us, records }.encode(self.key.as_ref())
    }
}

#[cfg(test)]
mod tests;
