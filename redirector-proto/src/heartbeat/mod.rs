//! The UDP heartbeat between redirectord and a region's redirector-agent:
//! the daemon sends a request per probe interval, the agent answers with a
//! report on its region. Encoding, decoding and the daemon's checks of the
//! replies; no sockets here.
//!
//! Wire format, version 1: 64 bytes, integers big-endian.
//!
//! | offset | size | field                                                  |
//! |-------:|-----:|--------------------------------------------------------|
//! |      0 |    4 | magic `RDHB`                                           |
//! |      4 |    1 | version, 1                                             |
//! |      5 |    1 | kind: 1 request, 2 reply, 3 refused                    |
//! |      6 |    1 | flags: bit 0 = the MAC field is set; others 0          |
//! |      7 |    1 | 0                                                      |
//! |      8 |    8 | sequence number                                        |
//! |     16 |    8 | timestamp (ns): the daemon's clock; a reply echoes it  |
//! |     24 |    1 | reply: agent's service check, 0 none, 1 ok, 2 failed;  |
//! |        |      | refused: why, 1 no MAC, 2 a MAC but no key, 3 bad MAC  |
//! |     25 |    1 | 0                                                      |
//! |     26 |    2 | reply: CPU utilisation, permille (0..=1000)            |
//! |     28 |    4 | reply: active connections                              |
//! |     32 |   32 | HMAC-SHA256 of bytes 0..32 under the shared key, or 0  |
//!
//! Magic and version come first and stay put, so a later version can change
//! everything after them. The MAC covers the kind, so a request cannot be
//! reflected back as a reply.
//!
//! Both ends have the same key or none: a MAC where none is expected is
//! refused like a missing one. The agent answers a request it cannot
//! authenticate with a `refused` message: unsigned, echoing the request's
//! sequence number and timestamp, saying why, and no larger than the
//! request, so it amplifies nothing and tells nothing but that the keys
//! differ. The daemon counts it as `unauthenticated` and the request still
//! times out (a refusal, which anyone on the path could forge, never fails
//! a probe sooner), its probe saying the agent refused the key. A key
//! configured on one end only thus shows up at once, by name.
//!
//! The heartbeat check succeeds when an accepted reply arrives in time and
//! the agent does not report its own service check failed: an agent that
//! is alive but sees its service fail takes the region down too.

use std::fmt;

use hmac::Mac;

pub use crate::key::{Key, KeyError, MAX_KEY_FILE, MIN_KEY_LEN};
use crate::key::check_mac;
pub use crate::wire::DecodeError;
use crate::wire::{preamble, FLAG_MAC};
use crate::probe::Outcome;

pub const MESSAGE_LEN: usize = 64;
pub const VERSION: u8 = 1;
const MAGIC: [u8; 4] = *b"RDHB";
const SIGNED_LEN: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Request,
    Reply,
}

impl Kind {
    fn wire(self) -> u8 {
        match self {
            Kind::Request => 1,
            Kind::Reply => 2,
        }
    }
}

/// The wire kind of a refusal (see the module's doc).
const KIND_REFUSED: u8 = 3;

/// Why an agent refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The agent has a key; the request carried no MAC.
    MissingMac,
    /// The request carried a MAC; the agent has no key.
    UnexpectedMac,
    /// The MAC does not verify under the agent's key.
    BadMac,
}

impl Refusal {
    fn of(error: &DecodeError) -> Option<Refusal> {
        match error {
            DecodeError::MissingMac => Some(Refusal::MissingMac),
            DecodeError::UnexpectedMac => Some(Refusal::UnexpectedMac),
            DecodeError::BadMac => Some(Refusal::BadMac),
            _ => None,
        }
    }

    fn wire(self) -> u8 {
        match self {
            Refusal::MissingMac => 1,
            Refusal::UnexpectedMac => 2,
            Refusal::BadMac => 3,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::MissingMac => "the agent has a key and the request had no MAC",
            Refusal::UnexpectedMac => "the agent has no key and the request had a MAC",
            Refusal::BadMac => "the agent's key is another",
        })
    }
}

/// The agent's own check of the service in its region.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ServiceCheck {
    /// The agent checks nothing locally.
    #[default]
    None,
    Ok,
    Failed,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub service: ServiceCheck,
    pub cpu_permille: u16,
    pub active_connections: u32,
}

impl Report {
    /// What the reply means for the region's heartbeat check.
    pub fn outcome(&self) -> Outcome {
        match self.service {
            ServiceCheck::Failed => Outcome::Failure("the agent's service check failed".into()),
            ServiceCheck::None | ServiceCheck::Ok => Outcome::Success,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Message {
    pub kind: Kind,
    pub seq: u64,
    pub timestamp_ns: u64,
    /// All zero in a request.
    pub report: Report,
}

impl Message {
    pub fn request(seq: u64, timestamp_ns: u64) -> Message {
        Message {
            kind: Kind::Request,
            seq,
            timestamp_ns,
            report: Report::default(),
        }
    }

    pub fn encode(&self, key: Option<&Key>) -> [u8; MESSAGE_LEN] {
        let mut b = [0u8; MESSAGE_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4] = VERSION;
        b[5] = self.kind.wire();
        b[6] = if key.is_some() { FLAG_MAC } else { 0 };
        b[8..16].copy_from_slice(&self.seq.to_be_bytes());
        b[16..24].copy_from_slice(&self.timestamp_ns.to_be_bytes());
        b[24] = match self.report.service {
            ServiceCheck::None => 0,
            ServiceCheck::Ok => 1,
            ServiceCheck::Failed => 2,
        };
        b[26..28].copy_from_slice(&self.report.cpu_permille.to_be_bytes());
        b[28..32].copy_from_slice(&self.report.active_connections.to_be_bytes());
        if let Some(key) = key {
            let tag = key.mac(&b[..SIGNED_LEN]).finalize().into_bytes();
            b[SIGNED_LEN..].copy_from_slice(&tag);
        }
        b
    }

    /// Checks framing and authentication before it reads any field.
    pub fn decode(bytes: &[u8], key: Option<&Key>, expect: Kind) -> Result<Message, DecodeError> {
        let b: &[u8; MESSAGE_LEN] = bytes
            .try_into()
            .map_err(|_| DecodeError::Length(bytes.len()))?;
        let has_mac = preamble(b, MAGIC, VERSION)?;
        check_mac(key, has_mac, &b[..SIGNED_LEN], &b[SIGNED_LEN..])?;
        if b[5] != expect.wire() {
            return Err(DecodeError::Kind(b[5]));
        }
        if b[7] != 0 || b[25] != 0 {
            return Err(DecodeError::Field("reserved"));
        }
        let service = match b[24] {
            0 => ServiceCheck::None,
            1 => ServiceCheck::Ok,
            2 => ServiceCheck::Failed,
            _ => return Err(DecodeError::Field("service check")),
        };
        let cpu_permille = u16::from_be_bytes([b[26], b[27]]);
        if cpu_permille > 1000 {
            return Err(DecodeError::Field("cpu permille"));
        }
        Ok(Message {
            kind: expect,
            seq: u64::from_be_bytes(b[8..16].try_into().unwrap()),
            timestamp_ns: u64::from_be_bytes(b[16..24].try_into().unwrap()),
            report: Report {
                service,
                cpu_permille,
                active_connections: u32::from_be_bytes(b[28..32].try_into().unwrap()),
            },
        })
    }
}

/// The agent's side: the reply to a request, or why there is none.
pub fn answer(
    request: &[u8],
    key: Option<&Key>,
    report: Report,
) -> Result<[u8; MESSAGE_LEN], DecodeError> {
    let request = Message::decode(request, key, Kind::Request)?;
    let reply = Message {
        kind: Kind::Reply,
        seq: request.seq,
        timestamp_ns: request.timestamp_ns,
        report,
    };
    Ok(reply.encode(key))
}

/// The agent's side, when [`answer`] failed with `error`: the refusal to
/// send back, if `error` is about the key and the request is framed as
/// one (nothing is sent for anything else).
pub fn refusal(request: &[u8], error: &DecodeError) -> Option<[u8; MESSAGE_LEN]> {
    let why = Refusal::of(error)?;
    let b: &[u8; MESSAGE_LEN] = request.try_into().ok()?;
    if b[0..4] != MAGIC || b[4] != VERSION || b[5] != Kind::Request.wire() {
        return None;
    }
    let mut r = [0u8; MESSAGE_LEN];
    r[0..4].copy_from_slice(&MAGIC);
    r[4] = VERSION;
    r[5] = KIND_REFUSED;
    r[8..24].copy_from_slice(&b[8..24]);
    r[24] = why.wire();
    Some(r)
}

/// A refusal's sequence number, echoed timestamp and reason; an error if
/// `bytes` is not a refusal.
pub fn decode_refusal(bytes: &[u8]) -> Result<(u64, u64, Refusal), DecodeError> {
    let b: &[u8; MESSAGE_LEN] = bytes.try_into().map_err(|_| DecodeError::Length(bytes.len()))?;
    if preamble(b, MAGIC, VERSION)? {
        return Err(DecodeError::Field("reserved"));
    }
    if b[5] != KIND_REFUSED {
        return Err(DecodeError::Kind(b[5]));
    }
    if b[6..8] != [0, 0] || b[25..].iter().any(|&x| x != 0) {
        return Err(DecodeError::Field("reserved"));
    }
    let why = match b[24] {
        1 => Refusal::MissingMac,
        2 => Refusal::UnexpectedMac,
        3 => Refusal::BadMac,
        _ => return Err(DecodeError::Field("refusal")),
    };
    let word = |at: usize| u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"));
    Ok((word(8), word(16), why))
}

/// Whether `bytes` says it is a refusal (framing only; decoding checks
/// the rest).
pub fn is_refusal(bytes: &[u8]) -> bool {
    bytes.len() == MESSAGE_LEN && bytes[0..4] == MAGIC && bytes[5] == KIND_REFUSED
}

mod verifier;
pub use verifier::{Accepted, Counters, Rejection, Verifier};

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) use crate::key::tests::key;

    pub(crate) fn report() -> Report {
        Report {
            service: ServiceCheck::Ok,
            cpu_permille: 423,
            active_connections: 70_000,
        }
    }

    /// The agent's reply to `request`, with `key`.
    pub(crate) fn reply(request: &[u8], key: Option<&Key>) -> [u8; MESSAGE_LEN] {
        answer(request, key, report()).unwrap()
    }

    #[test]
    fn the_layout_is_as_documented() {
        let m = Message {
            kind: Kind::Reply,
            seq: 0x0102_0304_0506_0708,
            timestamp_ns: 0x1112_1314_1516_1718,
            report: report(),
        };
        let b = m.encode(None);
        assert_eq!(&b[0..8], b"RDHB\x01\x02\x00\x00");
        assert_eq!(&b[8..16], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(
            &b[16..24],
            &[0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18]
        );
        assert_eq!(&b[24..32], &[1, 0, 0x01, 0xa7, 0x00, 0x01, 0x11, 0x70]);
        assert_eq!(&b[32..], &[0; 32]);
        assert_eq!(Message::decode(&b, None, Kind::Reply), Ok(m));
        let signed = m.encode(Some(&key(7)));
        assert_eq!(signed[6], FLAG_MAC);
        assert_ne!(&signed[32..], &[0; 32]);
        assert_eq!(Message::decode(&signed, Some(&key(7)), Kind::Reply), Ok(m));
    }

    #[test]
    fn the_agent_echoes_sequence_and_timestamp() {
        let request = Message::request(42, 99).encode(Some(&key(1)));
        let reply =
            Message::decode(&reply(&request, Some(&key(1))), Some(&key(1)), Kind::Reply).unwrap();
        assert_eq!(
            (reply.seq, reply.timestamp_ns, reply.report),
            (42, 99, report())
        );
    }

    #[test]
    fn every_tampered_byte_fails_authentication() {
        let good = Message::request(1, 2).encode(Some(&key(1)));
        for i in 0..MESSAGE_LEN {
            let mut bad = good;
            bad[i] ^= 0x20;
            let e = Message::decode(&bad, Some(&key(1)), Kind::Request).unwrap_err();
            // Framing is read before the MAC: those bytes fail earlier.
            let expected = match i {
                0..=3 => DecodeError::Magic,
                4 => DecodeError::Version(VERSION ^ 0x20),
                6 => DecodeError::Field("flags"),
                _ => DecodeError::BadMac,
            };
            assert_eq!(e, expected, "byte {i}");
        }
    }

    #[test]
    fn a_wrong_key_a_missing_mac_and_an_unexpected_mac_are_refused() {
        let signed = Message::request(1, 2).encode(Some(&key(1)));
        let plain = Message::request(1, 2).encode(None);
        let (right, wrong) = (key(1), key(2));
        let decode = |b: &[u8], k| Message::decode(b, k, Kind::Request).unwrap_err();
        assert_eq!(decode(&signed, Some(&wrong)), DecodeError::BadMac);
        assert_eq!(decode(&plain, Some(&right)), DecodeError::MissingMac);
        assert_eq!(decode(&signed, None), DecodeError::UnexpectedMac);
        // A forger who sets the flag without the key gets nowhere either.
        let mut flagged = plain;
        flagged[6] = FLAG_MAC;
        assert_eq!(decode(&flagged, Some(&right)), DecodeError::BadMac);
    }

    #[test]
    fn framing_errors_are_named() {
        let good = Message::request(1, 2).encode(None);
        let decode = |b: &[u8]| Message::decode(b, None, Kind::Request).unwrap_err();
        assert_eq!(decode(&good[..63]), DecodeError::Length(63));
        assert_eq!(decode(&[]), DecodeError::Length(0));
        assert_eq!(
            decode(&[good.as_slice(), &[0]].concat()),
            DecodeError::Length(65)
        );
        let mut v2 = good;
        v2[4] = 2;
        assert_eq!(decode(&v2), DecodeError::Version(2));
        assert_eq!(
            Message::decode(&good, None, Kind::Reply).unwrap_err(),
            DecodeError::Kind(1),
            "a request reflected as a reply"
        );
    }

    #[test]
    fn report_fields_out_of_range_are_refused() {
        let mut m = Message::request(1, 2);
        m.kind = Kind::Reply;
        m.report.cpu_permille = 1001;
        let decode = |b: &[u8]| Message::decode(b, None, Kind::Reply).unwrap_err();
        assert_eq!(decode(&m.encode(None)), DecodeError::Field("cpu permille"));
        m.report.cpu_permille = 1000;
        let mut b = m.encode(None);
        b[24] = 3;
        assert_eq!(decode(&b), DecodeError::Field("service check"));
        b[24] = 0;
        b[25] = 1;
        assert_eq!(decode(&b), DecodeError::Field("reserved"));
    }

    #[test]
    fn a_request_refused_for_its_key_gets_an_unsigned_refusal_echoing_it() {
        let plain = Message::request(7, 99).encode(None);
        let error = answer(&plain, Some(&key(1)), report()).unwrap_err();
        let refused = refusal(&plain, &error).unwrap();
        assert!(is_refusal(&refused));
        assert_eq!(decode_refusal(&refused), Ok((7, 99, Refusal::MissingMac)));
        assert_eq!(refused[6], 0, "unsigned");
        let signed = Message::request(8, 100).encode(Some(&key(2)));
        for (agent_key, why) in [(None, Refusal::UnexpectedMac), (Some(&key(1)), Refusal::BadMac)] {
            let error = answer(&signed, agent_key, report()).unwrap_err();
            assert_eq!(decode_refusal(&refusal(&signed, &error).unwrap()), Ok((8, 100, why)));
        }
        // Nothing is sent for what is not a request of ours.
        assert_eq!(refusal(&plain[..10], &DecodeError::MissingMac), None);
        assert_eq!(refusal(&plain, &DecodeError::Magic), None);
        let reply = Message { kind: Kind::Reply, ..Message::request(1, 1) }.encode(None);
        assert_eq!(refusal(&reply, &DecodeError::MissingMac), None, "no refusal bounced off a reply");
        let mut bad = refused;
        bad[24] = 9;
        assert_eq!(decode_refusal(&bad), Err(DecodeError::Field("refusal")));
        assert_eq!(decode_refusal(&plain), Err(DecodeError::Kind(1)));
    }

    #[test]
    fn the_agent_does_not_answer_an_unauthenticated_request() {
        let plain = Message::request(1, 2).encode(None);
        assert_eq!(
            answer(&plain, Some(&key(1)), report()),
            Err(DecodeError::MissingMac)
        );
        let forged = Message::request(1, 2).encode(Some(&key(9)));
        assert_eq!(
            answer(&forged, Some(&key(1)), report()),
            Err(DecodeError::BadMac)
        );
    }

    #[test]
    fn a_failed_service_check_in_a_reply_is_a_failed_probe() {
        let r = Report {
            service: ServiceCheck::Failed,
            ..report()
        };
        assert_eq!(
            r.outcome(),
            Outcome::Failure("the agent's service check failed".into())
        );
        assert_eq!(Report::default().outcome(), Outcome::Success);
    }
}

/// Whatever arrives, the decoders answer with a value or an error, never a
/// panic; what one end encodes, the other decodes as it was.
#[cfg(test)]
mod properties {
    use std::{net::SocketAddr, time::Duration};

    use proptest::prelude::*;

    use super::{tests::key, *};

    fn service() -> impl Strategy<Value = ServiceCheck> {
        prop_oneof![Just(ServiceCheck::None), Just(ServiceCheck::Ok), Just(ServiceCheck::Failed)]
    }

    fn message() -> impl Strategy<Value = Message> {
        (any::<bool>(), any::<u64>(), any::<u64>(), service(), 0u16..=1000, any::<u32>()).prop_map(
            |(reply, seq, timestamp_ns, service, cpu_permille, active_connections)| Message {
                kind: if reply { Kind::Reply } else { Kind::Request },
                seq,
                timestamp_ns,
                report: Report { service, cpu_permille, active_connections },
            },
        )
    }

    /// A datagram as any sender could make it: anything at all, or a real
    /// message with bytes flipped, cut or added.
    fn datagram() -> impl Strategy<Value = Vec<u8>> {
        let mutated = (message(), any::<bool>(), prop::collection::vec((0usize..MESSAGE_LEN, any::<u8>()), 0..6), 0usize..70)
            .prop_map(|(m, signed, flips, len)| {
                let mut bytes = m.encode(signed.then(|| key(1)).as_ref()).to_vec();
                for (at, byte) in flips {
                    bytes[at] ^= byte;
                }
                bytes.resize(len, 0x5a);
                bytes
            });
        prop_oneof![prop::collection::vec(any::<u8>(), 0..130), mutated]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

        #[test]
        fn what_one_end_encodes_the_other_decodes(m in message(), signed in any::<bool>()) {
            let k = signed.then(|| key(3));
            prop_assert_eq!(Message::decode(&m.encode(k.as_ref()), k.as_ref(), m.kind), Ok(m));
        }

        #[test]
        fn no_datagram_makes_a_decoder_or_the_verifier_panic(datagrams in prop::collection::vec(datagram(), 1..8)) {
            let agent: SocketAddr = "10.2.0.2:7946".parse().unwrap();
            let mut verifier = Verifier::new(agent, Some(key(1)), 1);
            for (i, bytes) in datagrams.iter().enumerate() {
                for k in [None, Some(key(1))] {
                    let _ = Message::decode(bytes, k.as_ref(), Kind::Reply);
                    if let Err(e) = answer(bytes, k.as_ref(), Report::default()) {
                        let _ = refusal(bytes, &e);
                    }
                }
                let _ = decode_refusal(bytes);
                verifier.request(Duration::from_millis(i as u64));
                let _ = verifier.accept(agent, bytes, Duration::from_millis(i as u64));
                let _ = verifier.expire(Duration::from_millis(i as u64 * 50), Duration::from_millis(10));
            }
        }
    }
}
