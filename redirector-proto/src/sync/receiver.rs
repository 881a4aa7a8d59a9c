//! A gateway's incoming side: takes a datagram only from a configured peer,
//! authentic, for the same config, and not seen before (the replay guard),
//! and counts every refusal by cause. A refused datagram changes nothing,
//! not even the replay guard.

use std::{collections::HashMap, fmt, net::SocketAddr};

use super::{DecodeError, Message};
use crate::key::Key;

/// Sequence numbers below a peer's highest that are still taken once, for
/// datagrams the network reordered (as IPsec's anti-replay window, RFC
/// 4303 §3.4.3).
const WINDOW: u64 = 64;

/// Datagrams taken or refused, by cause.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub accepted: u64,
    /// Records in the datagrams taken.
    pub records: u64,
    /// Wrong length, magic or kind, or a field out of range.
    pub malformed: u64,
    pub bad_version: u64,
    /// MAC missing, wrong, or present where no key is configured.
    pub unauthenticated: u64,
    /// From an address that is not one of the peers.
    pub unknown_peer: u64,
    /// Seen before, from an older boot, or too far behind the newest.
    pub replayed: u64,
    /// From a peer running another config (services or regions).
    pub config_mismatch: u64,
}

impl Counters {
    /// Datagrams refused, by reason as metrics label them.
    pub fn rejections(&self) -> [(&'static str, u64); 6] {
        [
            ("malformed", self.malformed),
            ("bad_version", self.bad_version),
            ("unauthenticated", self.unauthenticated),
            ("unknown_peer", self.unknown_peer),
            ("replayed", self.replayed),
            ("config_mismatch", self.config_mismatch),
        ]
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    UnknownPeer(SocketAddr),
    Malformed(DecodeError),
    BadVersion(u8),
    Unauthenticated(DecodeError),
    Replayed { boot: u64, seq: u64 },
    ConfigMismatch { theirs: u64, ours: u64 },
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::UnknownPeer(from) => write!(f, "sync message from {from}, not a peer"),
            Rejection::Malformed(e) | Rejection::Unauthenticated(e) => write!(f, "sync message refused: {e}"),
            Rejection::BadVersion(v) => write!(f, "sync message refused: version {v}"),
            Rejection::Replayed { boot, seq } => {
                write!(f, "sync message {seq} of boot {boot} seen before or too old")
            }
            Rejection::ConfigMismatch { theirs, ours } => write!(
                f,
                "sync message for config {theirs:016x}, ours is {ours:016x}: the gateways must run the same services and regions"
            ),
        }
    }
}

/// What one peer sent last: its boot, its highest sequence number, and
/// which of the `WINDOW` below it arrived.
#[derive(Clone, Copy, Debug, Default)]
struct Window {
    boot: u64,
    highest: u64,
    /// Bit i: `highest - i` arrived.
    seen: u64,
}

impl Window {
    fn fresh(&self, boot: u64, seq: u64) -> bool {
        match boot.cmp(&self.boot) {
            std::cmp::Ordering::Less => false,
            std::cmp::Ordering::Greater => true,
            std::cmp::Ordering::Equal if seq > self.highest => true,
            std::cmp::Ordering::Equal => {
                let behind = self.highest - seq;
                behind < WINDOW && self.seen & (1 << behind) == 0
            }
        }
    }

    /// Only after `fresh` said yes.
    fn mark(&mut self, boot: u64, seq: u64) {
        if boot > self.boot {
            *self = Window { boot, highest: seq, seen: 1 };
        } else if seq > self.highest {
            let ahead = seq - self.highest;
            self.seen = if ahead >= WINDOW { 0 } else { self.seen << ahead };
            self.seen |= 1;
            self.highest = seq;
        } else {
            self.seen |= 1 << (self.highest - seq);
        }
    }
}

pub struct Receiver {
    key: Option<Key>,
    digest: u64,
    peers: HashMap<SocketAddr, Window>,
    pub counters: Counters,
}

impl Receiver {
    /// Takes datagrams from `peers` only, signed with `key` (or unsigned
    /// if None), for the config whose digest is `digest`.
    pub fn new(peers: &[SocketAddr], key: Option<Key>, digest: u64) -> Self {
        Self {
            key,
            digest,
            peers: peers.iter().map(|&p| (p, Window::default())).collect(),
            counters: Counters::default(),
        }
    }

    /// After a reload that changed the services or regions: from now on
    /// only peers that run the same are heard.
    pub fn set_digest(&mut self, digest: u64) {
        self.digest = digest;
    }

    pub fn accept(&mut self, from: SocketAddr, bytes: &[u8]) -> Result<Message, Rejection> {
        let result = self.check(from, bytes);
        let c = &mut self.counters;
        match &result {
            Ok(message) => {
                c.accepted += 1;
                c.records += message.records.len() as u64;
            }
            Err(Rejection::UnknownPeer(_)) => c.unknown_peer += 1,
            Err(Rejection::Malformed(_)) => c.malformed += 1,
            Err(Rejection::BadVersion(_)) => c.bad_version += 1,
            Err(Rejection::Unauthenticated(_)) => c.unauthenticated += 1,
            Err(Rejection::Replayed { .. }) => c.replayed += 1,
            Err(Rejection::ConfigMismatch { .. }) => c.config_mismatch += 1,
        }
        result
    }

    fn check(&mut self, from: SocketAddr, bytes: &[u8]) -> Result<Message, Rejection> {
        let window = self.peers.get_mut(&from).ok_or(Rejection::UnknownPeer(from))?;
        let message = Message::decode(bytes, self.key.as_ref()).map_err(|e| match e {
            DecodeError::Version(v) => Rejection::BadVersion(v),
            DecodeError::MissingMac | DecodeError::UnexpectedMac | DecodeError::BadMac => Rejection::Unauthenticated(e),
            e => Rejection::Malformed(e),
        })?;
        if !window.fresh(message.boot, message.seq) {
            return Err(Rejection::Replayed { boot: message.boot, seq: message.seq });
        }
        if message.digest != self.digest {
            return Err(Rejection::ConfigMismatch { theirs: message.digest, ours: self.digest });
        }
        window.mark(message.boot, message.seq);
        Ok(message)
    }
}
