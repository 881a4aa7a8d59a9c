//! BFD control packets (RFC 5880 §4.1) and the checks of §6.8.6 that need
//! no session: version, lengths, detect multiplier, multipoint, the
//! discriminators, and the shape of the authentication section.
//!
//! | offset | size | field                                                   |
//! |-------:|-----:|---------------------------------------------------------|
//! |      0 |    1 | version (3 bits, 1), diagnostic (5 bits)                |
//! |      1 |    1 | state (2 bits), P, F, C, A, D, M                        |
//! |      2 |    1 | detect multiplier                                       |
//! |      3 |    1 | length of the whole packet                              |
//! |      4 |    4 | my discriminator                                        |
//! |      8 |    4 | your discriminator (0 until the peer's is known)        |
//! |     12 |    4 | desired min TX interval, µs                             |
//! |     16 |    4 | required min RX interval, µs                            |
//! |     20 |    4 | required min echo RX interval, µs (0: no echo)          |
//! |     24 |   28 | with A: type (4 keyed, 5 meticulous keyed SHA1), length |
//! |        |      | 28, key id, 0, sequence number, SHA1 digest             |
//!
//! The SHA1 digest is computed over the whole packet with the key, padded
//! with zeros to 20 bytes, in the digest's place (§6.7.4).

use std::fmt;

use sha1::{Digest, Sha1};

/// Where single-hop control packets are sent (RFC 5881 §4).
pub const PORT: u16 = 3784;
/// The source ports they come from (RFC 5881 §4).
pub const SOURCE_PORTS: std::ops::RangeInclusive<u16> = 49152..=65535;
/// The TTL they are sent with and, unauthenticated, must arrive with: a
/// packet from farther away has crossed a router (RFC 5881 §5, GTSM).
pub const TTL: u8 = 255;
pub const VERSION: u8 = 1;
pub const MANDATORY_LEN: usize = 24;
/// The SHA1 authentication section.
pub const SHA1_AUTH_LEN: usize = 28;
pub const MAX_LEN: usize = MANDATORY_LEN + SHA1_AUTH_LEN;
/// A key is at most as long as the digest it stands in for.
pub const MAX_KEY_LEN: usize = 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum State {
    AdminDown = 0,
    Down = 1,
    Init = 2,
    Up = 3,
}

impl State {
    fn from_bits(bits: u8) -> State {
        match bits & 3 {
            0 => State::AdminDown,
            1 => State::Down,
            2 => State::Init,
            _ => State::Up,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            State::AdminDown => "admin-down",
            State::Down => "down",
            State::Init => "init",
            State::Up => "up",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The local system's reason for the session's last change (§4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Diag {
    None = 0,
    DetectionTimeExpired = 1,
    NeighborSignaledDown = 3,
    AdminDown = 7,
}

impl Diag {
    pub fn describe(code: u8) -> &'static str {
        match code {
            0 => "no diagnostic",
            1 => "control detection time expired",
            2 => "echo function failed",
            3 => "neighbor signaled session down",
            4 => "forwarding plane reset",
            5 => "path down",
            6 => "concatenated path down",
            7 => "administratively down",
            8 => "reverse concatenated path down",
            _ => "reserved diagnostic",
        }
    }
}

/// Keyed SHA1: the sequence number may repeat; meticulous: it must grow
/// with every packet (§6.7.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthType {
    KeyedSha1 = 4,
    MeticulousKeyedSha1 = 5,
}

/// A control packet's authentication section, as it was on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Auth {
    pub kind: AuthType,
    pub key_id: u8,
    pub sequence: u32,
    pub digest: [u8; 20],
}

/// A key and its id, as both ends configure them.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthKey {
    pub kind: AuthType,
    pub key_id: u8,
    /// 1 to 20 bytes.
    pub secret: Vec<u8>,
}

impl fmt::Debug for AuthKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AuthKey({:?}, id {}, {} bytes)", self.kind, self.key_id, self.secret.len())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Control {
    /// The sender's diagnostic code (5 bits).
    pub diag: u8,
    pub state: State,
    pub poll: bool,
    pub final_: bool,
    pub control_plane_independent: bool,
    pub demand: bool,
    pub detect_mult: u8,
    pub my_discriminator: u32,
    pub your_discriminator: u32,
    pub desired_min_tx_us: u32,
    pub required_min_rx_us: u32,
    pub required_min_echo_rx_us: u32,
    pub auth: Option<Auth>,
}

/// Why a datagram is not a control packet this end takes. Each is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BfdError {
    Short(usize),
    Version(u8),
    /// The length field, against the datagram's.
    Length { field: u8, datagram: usize },
    DetectMultZero,
    Multipoint,
    MyDiscriminatorZero,
    /// Your discriminator 0 in a state other than Down or AdminDown.
    YourDiscriminatorZero,
    /// No session has this discriminator (or this address).
    UnknownSession,
    AuthMissing,
    AuthUnexpected,
    AuthType(u8),
    AuthKeyId(u8),
    AuthLength(u8),
    AuthDigest,
    /// A sequence number the session saw, or older.
    AuthReplayed(u32),
    /// Not sent with TTL 255, unauthenticated: from beyond one hop.
    Ttl(u8),
}

impl BfdError {
    /// Stable name for counters and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            BfdError::Short(_) => "short",
            BfdError::Version(_) => "version",
            BfdError::Length { .. } => "length",
            BfdError::DetectMultZero => "detect_mult_zero",
            BfdError::Multipoint => "multipoint",
            BfdError::MyDiscriminatorZero | BfdError::YourDiscriminatorZero => "discriminator",
            BfdError::UnknownSession => "unknown_session",
            BfdError::AuthMissing
            | BfdError::AuthUnexpected
            | BfdError::AuthType(_)
            | BfdError::AuthKeyId(_)
            | BfdError::AuthLength(_)
            | BfdError::AuthDigest
            | BfdError::AuthReplayed(_) => "authentication",
            BfdError::Ttl(_) => "ttl",
        }
    }
}

impl fmt::Display for BfdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BfdError::Short(n) => write!(f, "{n} bytes: shorter than a control packet ({MANDATORY_LEN})"),
            BfdError::Version(v) => write!(f, "version {v}, not {VERSION}"),
            BfdError::Length { field, datagram } => {
                write!(f, "length field {field} does not fit a {datagram}-byte datagram")
            }
            BfdError::DetectMultZero => f.write_str("detect multiplier 0"),
            BfdError::Multipoint => f.write_str("multipoint bit set"),
            BfdError::MyDiscriminatorZero => f.write_str("my discriminator 0"),
            BfdError::YourDiscriminatorZero => f.write_str("your discriminator 0 outside Down"),
            BfdError::UnknownSession => f.write_str("no session for it"),
            BfdError::AuthMissing => f.write_str("unauthenticated, and the session wants authentication"),
            BfdError::AuthUnexpected => f.write_str("authenticated, and the session has no key"),
            BfdError::AuthType(t) => write!(f, "authentication type {t} (keyed SHA1, 4 and 5, only)"),
            BfdError::AuthKeyId(id) => write!(f, "key id {id} is not the session's"),
            BfdError::AuthLength(n) => write!(f, "authentication section of {n} bytes, not {SHA1_AUTH_LEN}"),
            BfdError::AuthDigest => f.write_str("SHA1 digest does not match the key"),
            BfdError::AuthReplayed(seq) => write!(f, "sequence number {seq} replayed"),
            BfdError::Ttl(ttl) => write!(f, "TTL {ttl}, not {TTL}: not from a neighbour"),
        }
    }
}

impl std::error::Error for BfdError {}

impl Control {
    /// A packet in `state` between two discriminators, at the given pace,
    /// with no flag set and no authentication.
    pub fn new(state: State, mine: u32, yours: u32, detect_mult: u8, desired_min_tx_us: u32, required_min_rx_us: u32) -> Control {
        Control {
            diag: 0,
            state,
            poll: false,
            final_: false,
            control_plane_independent: false,
            demand: false,
            detect_mult,
            my_discriminator: mine,
            your_discriminator: yours,
            desired_min_tx_us,
            required_min_rx_us,
            required_min_echo_rx_us: 0,
            auth: None,
        }
    }

    /// Decodes `datagram` and checks what needs no session. The digest is
    /// not checked here (that needs the session's key): see [`verify`].
    pub fn decode(datagram: &[u8]) -> Result<Control, BfdError> {
        if datagram.len() < MANDATORY_LEN {
            return Err(BfdError::Short(datagram.len()));
        }
        let version = datagram[0] >> 5;
        if version != VERSION {
            return Err(BfdError::Version(version));
        }
        let flags = datagram[1];
        let has_auth = flags & 0x04 != 0;
        let length = datagram[3];
        let least = if has_auth { MANDATORY_LEN + 2 } else { MANDATORY_LEN };
        if (length as usize) < least || length as usize > datagram.len() {
            return Err(BfdError::Length { field: length, datagram: datagram.len() });
        }
        let word = |at: usize| u32::from_be_bytes(datagram[at..at + 4].try_into().unwrap());
        let packet = Control {
            diag: datagram[0] & 0x1f,
            state: State::from_bits(flags >> 6),
            poll: flags & 0x20 != 0,
            final_: flags & 0x10 != 0,
            control_plane_independent: flags & 0x08 != 0,
            demand: flags & 0x02 != 0,
            detect_mult: datagram[2],
            my_discriminator: word(4),
            your_discriminator: word(8),
            desired_min_tx_us: word(12),
            required_min_rx_us: word(16),
            required_min_echo_rx_us: word(20),
            auth: if has_auth { Some(decode_auth(&datagram[MANDATORY_LEN..length as usize])?) } else { None },
        };
        if packet.detect_mult == 0 {
            return Err(BfdError::DetectMultZero);
        }
        if flags & 0x01 != 0 {
            return Err(BfdError::Multipoint);
        }
        if packet.my_discriminator == 0 {
            return Err(BfdError::MyDiscriminatorZero);
        }
        if packet.your_discriminator == 0 && !matches!(packet.state, State::Down | State::AdminDown) {
            return Err(BfdError::YourDiscriminatorZero);
        }
        Ok(packet)
    }

    /// The packet on the wire; with `key`, authenticated (the digest
    /// computed here; `sequence` is the one to send).
    pub fn encode(&self, key: Option<(&AuthKey, u32)>) -> Vec<u8> {
        let length = if key.is_some() { MAX_LEN } else { MANDATORY_LEN };
        let mut out = Vec::with_capacity(length);
        out.push((VERSION << 5) | (self.diag & 0x1f));
        let mut flags = (self.state as u8) << 6;
        for (set, bit) in [
            (self.poll, 0x20),
            (self.final_, 0x10),
            (self.control_plane_independent, 0x08),
            (key.is_some(), 0x04),
            (self.demand, 0x02),
        ] {
            if set {
                flags |= bit;
            }
        }
        out.extend([flags, self.detect_mult, length as u8]);
        for word in [
            self.my_discriminator,
            self.your_discriminator,
            self.desired_min_tx_us,
            self.required_min_rx_us,
            self.required_min_echo_rx_us,
        ] {
            out.extend(word.to_be_bytes());
        }
        if let Some((key, sequence)) = key {
            out.extend([key.kind as u8, SHA1_AUTH_LEN as u8, key.key_id, 0]);
            out.extend(sequence.to_be_bytes());
            out.extend(padded(&key.secret));
            let digest = Sha1::digest(&out);
            out[MAX_LEN - 20..].copy_from_slice(&digest);
        }
        out
    }
}

/// The key, padded with zeros to the digest's 20 bytes.
fn padded(secret: &[u8]) -> [u8; 20] {
    let mut key = [0u8; 20];
    let n = secret.len().min(MAX_KEY_LEN);
    key[..n].copy_from_slice(&secret[..n]);
    key
}

fn decode_auth(section: &[u8]) -> Result<Auth, BfdError> {
    let (kind, length) = (section[0], section[1]);
    let kind = match kind {
        4 => AuthType::KeyedSha1,
        5 => AuthType::MeticulousKeyedSha1,
        other => return Err(BfdError::AuthType(other)),
    };
    if length as usize != SHA1_AUTH_LEN || section.len() != SHA1_AUTH_LEN {
        return Err(BfdError::AuthLength(length));
    }
    Ok(Auth {
        kind,
        key_id: section[2],
        sequence: u32::from_be_bytes(section[4..8].try_into().unwrap()),
        digest: section[8..28].try_into().unwrap(),
    })
}

/// Checks a decoded packet's authentication against the session's key:
/// present exactly when the session has a key, of its type and id, and
/// its digest right over `datagram` (the packet as received). Replay is
/// the session's to judge (it knows the last sequence number).
pub fn verify(datagram: &[u8], packet: &Control, key: Option<&AuthKey>) -> Result<(), BfdError> {
    match (packet.auth, key) {
        (None, None) => Ok(()),
        (None, Some(_)) => Err(BfdError::AuthMissing),
        (Some(_), None) => Err(BfdError::AuthUnexpected),
        (Some(auth), Some(key)) => {
            if auth.kind != key.kind {
                return Err(BfdError::AuthType(auth.kind as u8));
            }
            if auth.key_id != key.key_id {
                return Err(BfdError::AuthKeyId(auth.key_id));
            }
            let mut copy = datagram[..MAX_LEN].to_vec();
            copy[MAX_LEN - 20..].copy_from_slice(&padded(&key.secret));
            let expected = Sha1::digest(&copy);
            // Not secret-dependent timing worth hiding: a forger learns
            // nothing from how far the comparison got of a one-way hash.
            if expected.as_slice() == auth.digest {
                Ok(())
            } else {
                Err(BfdError::AuthDigest)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(my: u32, your: u32) -> Control {
        Control::new(State::Up, my, your, 3, 10_000, 10_000)
    }

    fn key() -> AuthKey {
        AuthKey { kind: AuthType::MeticulousKeyedSha1, key_id: 7, secret: b"gateway-pair-key".to_vec() }
    }

    #[test]
    fn a_packet_round_trips_and_sits_where_rfc_5880_puts_it() {
        let mut p = up(0x0102_0304, 0x0a0b_0c0d);
        p.poll = true;
        p.diag = 3;
        let wire = p.encode(None);
        assert_eq!(wire.len(), 24);
        assert_eq!(wire[0], 0x23, "version 1, diag 3");
        assert_eq!(wire[1], 0xe0, "state Up (3) << 6, P");
        assert_eq!((wire[2], wire[3]), (3, 24));
        assert_eq!(&wire[4..8], &[1, 2, 3, 4]);
        assert_eq!(&wire[12..16], &10_000u32.to_be_bytes());
        assert_eq!(Control::decode(&wire), Ok(p));
    }

    #[test]
    fn an_frr_style_first_packet_decodes() {
        // Down, your discriminator 0, 1 s while down (RFC 5880 §6.8.3).
        let mut p = up(0x5eed, 0);
        p.state = State::Down;
        p.desired_min_tx_us = 1_000_000;
        let decoded = Control::decode(&p.encode(None)).unwrap();
        assert_eq!((decoded.state, decoded.your_discriminator), (State::Down, 0));
    }

    #[test]
    fn every_session_free_check_refuses_by_name() {
        let good = up(1, 2).encode(None);
        let with = |at: usize, value: u8| {
            let mut w = good.clone();
            w[at] = value;
            Control::decode(&w)
        };
        assert_eq!(Control::decode(&good[..23]), Err(BfdError::Short(23)));
        assert_eq!(with(0, 0x00), Err(BfdError::Version(0)));
        assert_eq!(with(0, 0x40), Err(BfdError::Version(2)));
        assert_eq!(with(3, 23), Err(BfdError::Length { field: 23, datagram: 24 }));
        assert_eq!(with(3, 25), Err(BfdError::Length { field: 25, datagram: 24 }));
        assert_eq!(with(2, 0), Err(BfdError::DetectMultZero));
        assert_eq!(with(1, 0xc1), Err(BfdError::Multipoint));
        let mut zero_my = good.clone();
        zero_my[4..8].fill(0);
        assert_eq!(Control::decode(&zero_my), Err(BfdError::MyDiscriminatorZero));
        let zero_your = up(1, 0).encode(None);
        assert_eq!(Control::decode(&zero_your), Err(BfdError::YourDiscriminatorZero));
        // The A bit with no room for a section.
        assert_eq!(with(1, 0xc4), Err(BfdError::Length { field: 24, datagram: 24 }));
        let names: Vec<&str> = [BfdError::Version(0), BfdError::MyDiscriminatorZero, BfdError::AuthDigest]
            .iter()
            .map(BfdError::name)
            .collect();
        assert_eq!(names, ["version", "discriminator", "authentication"]);
    }

    #[test]
    fn a_longer_datagram_than_the_length_field_is_taken_up_to_the_field() {
        let mut wire = up(1, 2).encode(None);
        wire.extend([0xff; 8]);
        assert_eq!(Control::decode(&wire), Ok(up(1, 2)));
    }

    #[test]
    fn sha1_authentication_verifies_and_refuses_a_wrong_key_id_digest_or_absence() {
        let key = key();
        let wire = up(1, 2).encode(Some((&key, 41)));
        assert_eq!(wire.len(), 52);
        assert_eq!((wire[1] & 0x04, wire[3]), (0x04, 52));
        let packet = Control::decode(&wire).unwrap();
        let auth = packet.auth.unwrap();
        assert_eq!((auth.kind, auth.key_id, auth.sequence), (AuthType::MeticulousKeyedSha1, 7, 41));
        assert_eq!(verify(&wire, &packet, Some(&key)), Ok(()));

        let other = AuthKey { secret: b"another-key".to_vec(), ..key.clone() };
        assert_eq!(verify(&wire, &packet, Some(&other)), Err(BfdError::AuthDigest));
        let other_id = AuthKey { key_id: 8, ..key.clone() };
        assert_eq!(verify(&wire, &packet, Some(&other_id)), Err(BfdError::AuthKeyId(7)));
        let keyed = AuthKey { kind: AuthType::KeyedSha1, ..key.clone() };
        assert_eq!(verify(&wire, &packet, Some(&keyed)), Err(BfdError::AuthType(5)));
        assert_eq!(verify(&wire, &packet, None), Err(BfdError::AuthUnexpected));
        let plain = up(1, 2).encode(None);
        assert_eq!(verify(&plain, &Control::decode(&plain).unwrap(), Some(&key)), Err(BfdError::AuthMissing));

        // Any bit flipped after signing: the digest no longer matches.
        for at in [0, 2, 4, 12, 24 + 4, 51] {
            let mut tampered = wire.clone();
            tampered[at] ^= 0x01;
            if let Ok(p) = Control::decode(&tampered) {
                assert!(verify(&tampered, &p, Some(&key)).is_err(), "byte {at}");
            }
        }
    }

    #[test]
    fn other_authentication_types_and_lengths_are_refused() {
        let key = key();
        let mut wire = up(1, 2).encode(Some((&key, 1)));
        wire[24] = 1; // simple password
        assert_eq!(Control::decode(&wire), Err(BfdError::AuthType(1)));
        let mut wire = up(1, 2).encode(Some((&key, 1)));
        wire[25] = 24;
        assert_eq!(Control::decode(&wire), Err(BfdError::AuthLength(24)));
    }
}
