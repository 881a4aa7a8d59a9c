//! Address and port rewrites with their checksum fixes.
//!
//! The IPv4 header checksum covers the addresses (IPv6 has none); TCP and
//! UDP checksums cover them through the pseudo-header, and the ports
//! directly. ICMPv6's checksum covers the addresses too, ICMP's neither,
//! so an IPv4 echo only needs the header's fix.

use aya_ebpf::programs::XdpContext;
use redirector_common::csum;

use redirector_ebpf::{
    ip::{End, IpHeader},
    parse::{half_word, Packet, L4},
};

/// Sets one end of the packet to `addr:port` (network order).
#[inline(always)]
pub fn rewrite_end<H: IpHeader>(ctx: &XdpContext, pkt: &Packet<H>, end: End, addr: &H::Addr, port: u16) {
    let old_addr = H::addr(pkt.ip, end);
    H::set_addr(pkt.ip, end, &old_addr, addr);
    // TCP and UDP carry the ports and a checksum over the pseudo-header.
    // A UDP checksum of zero says "none" over IPv4, and over IPv6 either
    // is invalid or is a tunnel's (RFC 6935): it stays zero, as it came.
    let (src_port, dst_port, check, udp) = match pkt.l4 {
        L4::Tcp(tcp) => {
            let Some(tcp) = pkt.checked(ctx, tcp) else { return };
            unsafe { (half_word(&mut (*tcp).source), half_word(&mut (*tcp).dest), half_word(&mut (*tcp).check), false) }
        }
        L4::Udp(udp) => {
            let Some(udp) = pkt.checked(ctx, udp) else { return };
            unsafe { (half_word(&mut (*udp).src), half_word(&mut (*udp).dst), half_word(&mut (*udp).check), true) }
        }
        L4::Echo(echo) => {
            let Some(echo) = pkt.checked(ctx, echo) else { return };
            if H::ICMP_COVERS_ADDRESSES {
                let check = unsafe { half_word(&mut (*echo).check) };
                unsafe { check.write(csum::replace_addr(check.read(), &old_addr, addr)) };
            }
            return;
        }
    };
    let port_field = match end {
        End::Source => src_port,
        End::Destination => dst_port,
    };
    let (old_port, old_check) = unsafe { (port_field.read(), check.read()) };
    unsafe { port_field.write(port) };
    if udp && old_check == 0 {
        return;
    }
    let new_check = csum::replace2(csum::replace_addr(old_check, &old_addr, addr), old_port, port);
    // A UDP checksum that computes to zero is sent as all ones (RFC 768,
    // RFC 8200): zero says "none" over IPv4 and is invalid over IPv6.
    let new_check = if udp && new_check == 0 { 0xffff } else { new_check };
    unsafe { check.write(new_check) };
}

/// Sets the frame's MAC addresses toward the next hop.
#[inline(always)]
pub fn rewrite_macs<H: IpHeader>(ctx: &XdpContext, pkt: &Packet<H>, src: [u8; 6], dst: [u8; 6]) {
    if let Some(eth) = pkt.eth(ctx) {
        unsafe {
            (*eth).src_addr = src;
            (*eth).dst_addr = dst;
        }
    }
}
