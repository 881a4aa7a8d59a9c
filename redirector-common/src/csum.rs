//! Incremental Internet checksum updates (RFC 1624, eqn. 3).
//!
//! Values are taken as they sit in the packet: one's complement sums do not
//! care about byte order as long as every term has the same one.

#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// `check` after one 16-bit word of the covered data changed.
#[inline(always)]
pub fn replace2(check: u16, old: u16, new: u16) -> u16 {
    !fold(!check as u32 + !old as u32 + new as u32)
}

/// `check` after one 32-bit word of the covered data changed.
#[inline(always)]
pub fn replace4(check: u16, old: u32, new: u32) -> u16 {
    !fold(
        !check as u32
            + !(old >> 16) as u16 as u32
            + !(old as u16) as u32
            + (new >> 16)
            + (new & 0xffff),
    )
}

/// `check` after an address of the covered data changed, word by word
/// (one for IPv4, four for IPv6).
#[inline(always)]
pub fn replace_addr<A: crate::Address>(check: u16, old: &A, new: &A) -> u16 {
    let mut check = check;
    for (old, new) in old.words().iter().zip(new.words()) {
        check = replace4(check, *old, *new);
    }
    check
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use etherparse::{Ipv4Header, PacketBuilder, SlicedPacket, TransportSlice};

    use super::*;

    /// A TCP segment from `src` to `dst` with full checksums, as etherparse
    /// computes them from scratch.
    fn segment(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ipv4(src, dst, 64)
            .tcp(sport, dport, 0x1234_5678, 512)
            .write(&mut out, payload)
            .unwrap();
        out
    }

    fn checksums(packet: &[u8]) -> (u16, u16) {
        let sliced = SlicedPacket::from_ip(packet).unwrap();
        let ip = Ipv4Header::from_slice(packet).unwrap().0;
        let Some(TransportSlice::Tcp(tcp)) = sliced.transport else { panic!("tcp") };
        (ip.header_checksum, tcp.checksum())
    }

    /// Words as they sit in the packet (network order bytes read natively),
    /// as the data plane reads them.
    fn word4(bytes: [u8; 4]) -> u32 {
        u32::from_ne_bytes(bytes)
    }

    fn word2(port: u16) -> u16 {
        u16::from_ne_bytes(port.to_be_bytes())
    }

    fn from_ne2(check: u16) -> u16 {
        u16::from_be_bytes(check.to_ne_bytes())
    }

    fn to_ne2(check: u16) -> u16 {
        u16::from_ne_bytes(check.to_be_bytes())
    }

    #[test]
    fn a_destination_rewrite_matches_a_full_recomputation() {
        let payloads: [&[u8]; 3] = [b"", b"GET / HTTP/1.0\r\n\r\n", &[0xff; 33]];
        let addrs = [[10, 2, 0, 2], [0, 0, 0, 0], [255, 255, 255, 255], [192, 0, 2, 10], [10, 1, 0, 2]];
        let ports = [80u16, 0, 65535, 8081, 1];
        for payload in payloads {
            for (i, &old_addr) in addrs.iter().enumerate() {
                let new_addr = addrs[(i + 1) % addrs.len()];
                let (old_port, new_port) = (ports[i], ports[(i + 2) % ports.len()]);
                let before = segment([192, 0, 2, 10], old_addr, 40000, old_port, payload);
                let after = segment([192, 0, 2, 10], new_addr, 40000, new_port, payload);
                let (ip_before, tcp_before) = checksums(&before);
                let (ip_after, tcp_after) = checksums(&after);
                let ip = replace4(to_ne2(ip_before), word4(old_addr), word4(new_addr));
                assert_eq!(from_ne2(ip), ip_after, "ip {old_addr:?} → {new_addr:?}");
                let tcp = replace2(
                    replace4(to_ne2(tcp_before), word4(old_addr), word4(new_addr)),
                    word2(old_port),
                    word2(new_port),
                );
                assert_eq!(from_ne2(tcp), tcp_after, "tcp {old_addr:?}:{old_port} → {new_addr:?}:{new_port}");
            }
        }
    }

    /// The TCP checksum of a segment over IPv6 from `src` to `dst`.
    fn tcp6_checksum(src: [u8; 16], dst: [u8; 16], dport: u16, payload: &[u8]) -> u16 {
        let mut out = Vec::new();
        PacketBuilder::ipv6(src, dst, 64).tcp(40000, dport, 1, 512).write(&mut out, payload).unwrap();
        let Some(TransportSlice::Tcp(tcp)) = SlicedPacket::from_ip(&out).unwrap().transport else { panic!("tcp") };
        tcp.checksum()
    }

    #[test]
    fn an_ipv6_destination_rewrite_matches_a_full_recomputation() {
        let client: [u8; 16] = core::array::from_fn(|i| if i == 0 { 0x20 } else { i as u8 });
        let addrs: [[u8; 16]; 4] = [
            core::array::from_fn(|i| if i < 2 { 0xfd } else { 2 * (i == 15) as u8 }),
            [0; 16],
            [0xff; 16],
            core::array::from_fn(|i| (i * 37) as u8),
        ];
        for payload in [&b""[..], b"GET / HTTP/1.1\r\n\r\n", &[0xff; 31]] {
            for (i, old) in addrs.iter().enumerate() {
                let new = addrs[(i + 1) % addrs.len()];
                let (old_port, new_port) = (80 + i as u16, 8081);
                let before = tcp6_checksum(client, *old, old_port, payload);
                let after = tcp6_checksum(client, new, new_port, payload);
                let (old_words, new_words) = (crate::address::addr6_from_bytes(old), crate::address::addr6_from_bytes(&new));
                let tcp = replace2(replace_addr(to_ne2(before), &old_words, &new_words), word2(old_port), word2(new_port));
                assert_eq!(from_ne2(tcp), after, "{old:?} → {new:?}");
            }
        }
    }

    #[test]
    fn replacing_a_word_by_itself_changes_nothing_and_round_trips() {
        for check in [0u16, 1, 0x1234, 0xfffe, 0xffff] {
            for (old, new) in [(0u32, 0u32), (0x0a02_0002, 0x0a01_0002), (u32::MAX, 0)] {
                let there = replace4(check, old, new);
                let back = replace4(there, new, old);
                // One's complement has two zeros: 0x0000 and 0xffff are the
                // same sum, and an update may turn one into the other.
                assert!(back == check || back ^ check == 0xffff, "{check:#x} {old:#x} {new:#x}: {back:#x}");
            }
        }
    }
}
