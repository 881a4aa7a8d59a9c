//! Address and port rewrites with their checksum fixes.
//!
//! The IPv4 header checksum covers the addresses; TCP and UDP checksums
//! cover them through the pseudo-header, and the ports directly. ICMP's
//! checksum covers neither, so an echo only needs the IPv4 fix.

use crate::{
    csum,
    parse::{Packet, L4},
};

#[derive(Clone, Copy)]
pub enum End {
    Source,
    Destination,
}

/// Sets one end of the packet to `addr:port` (network order).
#[inline(always)]
pub fn rewrite_end(pkt: &Packet, end: End, addr: u32, port: u16) {
    let old_addr = unsafe {
        let field = match end {
            End::Source => &mut (*pkt.ip).src_addr,
            End::Destination => &mut (*pkt.ip).dst_addr,
        };
        let old = u32::from_ne_bytes(*field);
        *field = addr.to_ne_bytes();
        old
    };
    unsafe {
        let check = u16::from_ne_bytes((*pkt.ip).check);
        (*pkt.ip).check = csum::replace4(check, old_addr, addr).to_ne_bytes();
    }
    match pkt.l4 {
        L4::Tcp(tcp) => unsafe {
            let port_field = match end {
                End::Source => &mut (*tcp).source,
                End::Destination => &mut (*tcp).dest,
            };
            let old_port = u16::from_ne_bytes(*port_field);
            *port_field = port.to_ne_bytes();
            let check = u16::from_ne_bytes((*tcp).check);
            let check = csum::replace4(check, old_addr, addr);
            (*tcp).check = csum::replace2(check, old_port, port).to_ne_bytes();
        },
        L4::Udp(udp) => unsafe {
            let port_field = match end {
                End::Source => &mut (*udp).src,
                End::Destination => &mut (*udp).dst,
            };
            let old_port = u16::from_ne_bytes(*port_field);
            *port_field = port.to_ne_bytes();
            let check = u16::from_ne_bytes((*udp).check);
            // A zero UDP checksum means "none" and stays so; a computed zero
            // is sent as all ones (RFC 768).
            if check != 0 {
                let check = csum::replace2(csum::replace4(check, old_addr, addr), old_port, port);
                (*udp).check = if check == 0 { 0xffff } else { check }.to_ne_bytes();
            }
        },
        L4::IcmpEcho { .. } => {}
    }
}

/// Sets the frame's MAC addresses toward the next hop.
#[inline(always)]
pub fn rewrite_macs(pkt: &Packet, src: [u8; 6], dst: [u8; 6]) {
    unsafe {
        (*pkt.eth).src_addr = src;
        (*pkt.eth).dst_addr = dst;
    }
}
