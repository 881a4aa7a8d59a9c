//! The shared secret behind the MACs redirector's peers put on their
//! datagrams (heartbeats, and flow sync between gateways): HMAC-SHA256
//! under a key read from a file.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// HMAC-SHA256 takes any key length; a short one is a weak one.
pub const MIN_KEY_LEN: usize = 16;
/// A key file longer than this is not a key (HMAC hashes keys over 64
/// bytes down anyway).
pub const MAX_KEY_FILE: u64 = 4096;

pub(crate) type HmacSha256 = Hmac<Sha256>;

/// A shared HMAC key.
#[derive(Clone)]
pub struct Key(Vec<u8>);

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(..)")
    }
}

#[derive(Debug)]
pub enum KeyError {
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    TooShort {
        path: PathBuf,
        len: usize,
    },
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::Read { path, source } => {
                write!(f, "key {}: {source}", path.display())
            }
            KeyError::TooShort { path, len } => write!(
                f,
                "key {}: {len} bytes, at least {MIN_KEY_LEN} needed",
                path.display()
            ),
        }
    }
}

impl std::error::Error for KeyError {}

impl Key {
    /// The file's bytes, less trailing whitespace, so that a key written
    /// with `echo` or `base64` works on both ends.
    pub fn load(path: &Path) -> Result<Key, KeyError> {
        let mut bytes = crate::file::read_small(path, MAX_KEY_FILE).map_err(|source| KeyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        while bytes.last().is_some_and(u8::is_ascii_whitespace) {
            bytes.pop();
        }
        if bytes.len() < MIN_KEY_LEN {
            return Err(KeyError::TooShort {
                path: path.to_path_buf(),
                len: bytes.len(),
            });
        }
        Ok(Key(bytes))
    }

    /// Whether `presented` is this key (a bearer token), in a time that
    /// does not depend on where they differ.
    pub fn matches(&self, presented: &[u8]) -> bool {
        presented.len() == self.0.len() && presented.iter().zip(&self.0).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }

    pub(crate) fn mac(&self, signed: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(signed);
        mac
    }
}

/// Why a datagram's MAC was not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MacError {
    /// A key is configured and the datagram carries no MAC.
    Missing,
    /// No key is configured and the datagram carries a MAC.
    Unexpected,
    Bad,
}

/// Checks `tag` over `signed` when `has_mac` says the sender set one. Both
/// ends have the same key or none: a MAC where none is expected is refused
/// like a missing one.
pub(crate) fn check_mac(key: Option<&Key>, has_mac: bool, signed: &[u8], tag: &[u8]) -> Result<(), MacError> {
    match key {
        Some(_) if !has_mac => Err(MacError::Missing),
        // Constant-time comparison: no timing oracle on the tag.
        Some(key) => key.mac(signed).verify_slice(tag).map_err(|_| MacError::Bad),
        None if has_mac => Err(MacError::Unexpected),
        None => Ok(()),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn a_presented_token_matches_only_the_key_itself() {
        let k = key(b'a');
        assert!(k.matches(&[b'a'; 32]));
        assert!(!k.matches(&[b'a'; 31]));
        assert!(!k.matches(&[b'a'; 33]));
        let mut last = [b'a'; 32];
        last[31] = b'b';
        assert!(!k.matches(&last));
        assert!(!k.matches(b""));
    }

    /// A 32-byte key of one repeated byte.
    pub(crate) fn key(byte: u8) -> Key {
        Key(vec![byte; 32])
    }

    #[test]
    fn keys_load_from_a_file_without_trailing_whitespace() {
        use std::fs;
        let dir = std::env::temp_dir().join(format!("redirector-key-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("hb.key");
        fs::write(&path, "0123456789abcdef0123\n").unwrap();
        let k = Key::load(&path).unwrap();
        assert_eq!(k.0, b"0123456789abcdef0123");
        assert_eq!(format!("{k:?}"), "Key(..)", "never printed");
        fs::write(&path, "short  \n").unwrap();
        let e = Key::load(&path).unwrap_err();
        assert!(matches!(e, KeyError::TooShort { len: 5, .. }), "{e}");
        fs::write(&path, vec![b'k'; MAX_KEY_FILE as usize + 1]).unwrap();
        let e = Key::load(&path).unwrap_err();
        assert_eq!(e.to_string(), format!("key {}: longer than 4096 bytes", path.display()));
        assert!(matches!(Key::load(Path::new("/dev/zero")), Err(KeyError::Read { .. })));
        fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(Key::load(&path), Err(KeyError::Read { .. })));
    }
}
