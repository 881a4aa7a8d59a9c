//! The two address families as the maps hold them: an IPv4 address is one
//! 32-bit word, an IPv6 address four, each word as it sits in the packet
//! (network order read natively). The map layouts are generic over the
//! family, so both share one definition and one set of rules (hashing,
//! checksum arithmetic) and each family keeps entries of its own size.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An IPv4 address, network order.
pub type Addr4 = u32;
/// An IPv6 address: its four 32-bit words, each in network order.
pub type Addr6 = [u32; 4];

pub trait Address: Copy + Default + Eq + core::hash::Hash + core::fmt::Debug + 'static {
    /// Tail padding that makes `Flow<Self>` a whole number of its 8-byte
    /// alignment with every byte named: no implicit padding in a map value.
    type FlowPad: Copy + Default + Eq + core::fmt::Debug;
    /// The protocol number of ICMP in this family: ICMPv6 over IPv6.
    const ICMP: u8;
    /// The words the flow hash mixes and the checksums sum.
    fn words(&self) -> &[u32];
    /// `ip` as the maps hold it, if it is of this family.
    fn from_ip(ip: IpAddr) -> Option<Self>;
    fn to_ip(&self) -> IpAddr;

    /// The all-zero address: a backend slot without an endpoint.
    #[inline(always)]
    fn is_unspecified(&self) -> bool {
        *self == Self::default()
    }
}

impl Address for Addr4 {
    type FlowPad = [u8; 0];
    const ICMP: u8 = crate::IPPROTO_ICMP;
    #[inline(always)]
    fn words(&self) -> &[u32] {
        core::slice::from_ref(self)
    }
    fn from_ip(ip: IpAddr) -> Option<Self> {
        match ip {
            IpAddr::V4(v4) => Some(u32::from_ne_bytes(v4.octets())),
            IpAddr::V6(_) => None,
        }
    }
    fn to_ip(&self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(self.to_ne_bytes()))
    }
}

impl Address for Addr6 {
    type FlowPad = [u8; 4];
    const ICMP: u8 = crate::IPPROTO_ICMPV6;
    #[inline(always)]
    fn words(&self) -> &[u32] {
        self
    }
    fn from_ip(ip: IpAddr) -> Option<Self> {
        match ip {
            IpAddr::V6(v6) => Some(addr6_from_bytes(&v6.octets())),
            IpAddr::V4(_) => None,
        }
    }
    fn to_ip(&self) -> IpAddr {
        IpAddr::V6(Ipv6Addr::from(addr6_to_bytes(self)))
    }
}

/// An IPv6 address from the 16 bytes of a header.
#[inline(always)]
pub fn addr6_from_bytes(bytes: &[u8; 16]) -> Addr6 {
    let mut words = [0u32; 4];
    let mut i = 0;
    while i < 4 {
        words[i] = u32::from_ne_bytes([bytes[4 * i], bytes[4 * i + 1], bytes[4 * i + 2], bytes[4 * i + 3]]);
        i += 1;
    }
    words
}

/// The 16 bytes of a header holding `addr`.
#[inline(always)]
pub fn addr6_to_bytes(addr: &Addr6) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let word = addr[i].to_ne_bytes();
        bytes[4 * i] = word[0];
        bytes[4 * i + 1] = word[1];
        bytes[4 * i + 2] = word[2];
        bytes[4 * i + 3] = word[3];
        i += 1;
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_words_round_trip_and_keep_packet_order() {
        let bytes: [u8; 16] = core::array::from_fn(|i| i as u8 * 17);
        let words = addr6_from_bytes(&bytes);
        assert_eq!(words[1], u32::from_ne_bytes([68, 85, 102, 119]));
        assert_eq!(addr6_to_bytes(&words), bytes);
        assert!(!words.is_unspecified());
        assert!(Addr6::default().is_unspecified());
        assert!(0u32.is_unspecified() && !1u32.is_unspecified());
        let last_word_only: Addr6 = [0, 0, 0, 1];
        assert!(!last_word_only.is_unspecified(), "every word counts");
    }

    #[test]
    fn addresses_convert_both_ways_in_packet_order_and_refuse_the_other_family() {
        let v4: IpAddr = "10.2.0.2".parse().unwrap();
        let v6: IpAddr = "fd00:2::2".parse().unwrap();
        let word = Addr4::from_ip(v4).unwrap();
        assert_eq!(word.to_ne_bytes(), [10, 2, 0, 2]);
        assert_eq!(word.to_ip(), v4);
        let words = Addr6::from_ip(v6).unwrap();
        assert_eq!(words[0].to_ne_bytes(), [0xfd, 0, 0, 2]);
        assert_eq!(words[3].to_ne_bytes(), [0, 0, 0, 2]);
        assert_eq!(words.to_ip(), v6);
        assert_eq!(Addr4::from_ip(v6), None);
        assert_eq!(Addr6::from_ip(v4), None);
    }
}
