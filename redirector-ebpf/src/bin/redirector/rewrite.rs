//! Address and port rewrites with their checksum fixes.
//!
//! The IPv4 header checksum covers the addresses; TCP and UDP checksums
//! cover them through the pseudo-header, and the ports directly. ICMP's
//! checksum covers neither, so an echo only needs the IPv4 fix.

use redirector_common::csum;

use redirector_ebpf::parse::{Packet, L4};

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
    // TCP and UDP carry the ports and a checksum over the pseudo-header;
    // only UDP may say "no checksum" with a zero.
    let (src_port, dst_port, check, optional_check) = match pkt.l4 {
        L4::Tcp(tcp) => unsafe {
            (&mut (*tcp).source, &mut (*tcp).dest, &mut (*tcp).check, false)
        },
        L4::Udp(udp) => unsafe { (&mut (*udp).src, &mut (*udp).dst, &mut (*udp).check, true) },
        L4::IcmpEcho { .. } => return,
    };
    let port_field = match end {
        End::Source => src_port,
        End::Destination => dst_port,
    };
    let old_port = u16::from_ne_bytes(*port_field);
    *port_field = port.to_ne_bytes();
    let old_check = u16::from_ne_bytes(*check);
    if optional_check && old_check == 0 {
        return;
    }
    let new_check = csum::replace2(csum::replace4(old_check, old_addr, addr), old_port, port);
    // A computed zero is sent as all ones where zero means "none" (RFC 768).
    let new_check = if optional_check && new_check == 0 { 0xffff } else { new_check };
    *check = new_check.to_ne_bytes();
}

/// Sets the frame's MAC addresses toward the next hop.
#[inline(always)]
pub fn rewrite_macs(pkt: &Packet, src: [u8; 6], dst: [u8; 6]) {
    unsafe {
        (*pkt.eth).src_addr = src;
        (*pkt.eth).dst_addr = dst;
    }
}
