//! What the datagram formats here (heartbeat, flow sync) share: the same
//! first bytes — magic (4), version (1), kind (1), flags (1, bit 0: a MAC
//! is set) — and what their decoders say is wrong with what arrived.
//! Callers name the protocol ("heartbeat reply refused: ...").

use std::fmt;

use crate::key::MacError;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Not the length the format (or the header's count) gives.
    Length(usize),
    Magic,
    /// A version this end does not speak.
    Version(u8),
    /// Not the kind expected here, or no kind at all.
    Kind(u8),
    /// A field out of its range, or a zero byte that is not.
    Field(&'static str),
    /// A key is configured and the datagram carries no MAC.
    MissingMac,
    /// No key is configured and the datagram carries a MAC.
    UnexpectedMac,
    BadMac,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Length(n) => write!(f, "wrong length ({n} bytes)"),
            DecodeError::Magic => f.write_str("bad magic"),
            DecodeError::Version(v) => write!(f, "version {v}, which this end does not speak"),
            DecodeError::Kind(k) => write!(f, "unexpected message kind {k}"),
            DecodeError::Field(name) => write!(f, "bad field {name}"),
            DecodeError::MissingMac => f.write_str("no MAC, and a key is configured"),
            DecodeError::UnexpectedMac => f.write_str("a MAC, and no key is configured"),
            DecodeError::BadMac => f.write_str("MAC does not verify"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Bit 0 of the flags byte: the datagram carries a MAC.
pub(crate) const FLAG_MAC: u8 = 1;

/// Checks the magic, the version and that no unknown flag is set, in that
/// order (a later version may change all after them); whether a MAC is
/// set. `b` must hold at least the seven bytes.
pub(crate) fn preamble(b: &[u8], magic: [u8; 4], version: u8) -> Result<bool, DecodeError> {
    if b[0..4] != magic {
        return Err(DecodeError::Magic);
    }
    if b[4] != version {
        return Err(DecodeError::Version(b[4]));
    }
    if b[6] & !FLAG_MAC != 0 {
        return Err(DecodeError::Field("flags"));
    }
    Ok(b[6] & FLAG_MAC != 0)
}

impl From<MacError> for DecodeError {
    fn from(e: MacError) -> Self {
        match e {
            MacError::Missing => DecodeError::MissingMac,
            MacError::Unexpected => DecodeError::UnexpectedMac,
            MacError::Bad => DecodeError::BadMac,
        }
    }
}
