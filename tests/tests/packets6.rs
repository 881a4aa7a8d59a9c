//! In-kernel packet tests of what only IPv6 has: its flow keys, extension
//! headers, Fragment header, neighbour discovery and its UDP checksum rule.
//! The paths both families share run for both in `packets.rs`. Expected
//! frames are built independently (etherparse, full checksums).

use redirector::dataplane::Dataplane;
use redirector_common::{Address, Reason, FLOW_ORIGINAL, FLOW_REPLY, IPPROTO_TCP};
use redirector_tests::{frames::L4, steer::*, xdp::*};


#[test]
fn a_new_ipv6_flow_is_tracked_both_ways_under_its_own_addresses() {
    let mut gw = Gateway::new().unwrap();
    gw.select(R1.id).unwrap();
    let syn = from_client(VIP6, L4::tcp_syn(40_100, 80));
    let out = gw.run(&syn.bytes(), "cli").unwrap();
    assert_frame(&out, XDP_REDIRECT, &steered(&syn, R1, 80).bytes());

    assert!(gw.dataplane.new_flows().unwrap().is_empty(), "nothing in the IPv4 tables");
    let flows = gw.dataplane.new_flows6().unwrap();
    assert_eq!(flows.len(), 2, "{flows:?}");
    let (key, original) = flows.iter().find(|(_, f)| f.direction == FLOW_ORIGINAL).unwrap();
    let (reply_key, reply) = flows.iter().find(|(_, f)| f.direction == FLOW_REPLY).unwrap();
    assert_eq!(
        (key.src_addr.to_ip(), key.dst_addr.to_ip(), u16::from_be(key.src_port), key.protocol),
        (CLIENT6.into(), VIP6.into(), 40_100, IPPROTO_TCP)
    );
    assert_eq!((original.region_id, original.rewrite_addr.to_ip()), (R1.id, R1.addr6.into()));
    assert_eq!((reply_key.src_addr.to_ip(), reply_key.dst_addr.to_ip()), (R1.addr6.into(), CLIENT6.into()));
    assert_eq!(reply.rewrite_addr.to_ip(), std::net::IpAddr::from(VIP6));
    let stats = gw.dataplane.stats().unwrap();
    assert_eq!(stats.services[4].new_flows, 1, "web6 is service 4");
}

#[test]
fn extension_headers_up_to_the_bound_are_skipped_and_kept() {
    let mut gw = Gateway::new().unwrap();
    gw.select(R2.id).unwrap();
    let chains: [&[u8]; 5] = [&[0], &[43], &[60], &[0, 60, 43, 60], &[60, 60]];
    for (i, chain) in chains.iter().enumerate() {
        let mut syn = from_client(VIP6, L4::tcp_syn(40_110 + i as u16, 80));
        syn.ipv6_extensions = chain.to_vec();
        let out = gw.run(&syn.bytes(), "cli").unwrap();
        assert_frame(&out, XDP_REDIRECT, &steered(&syn, R2, 80).bytes());
        // The region's answer carries them too.
        let mut answer = reply_from(R2, &syn, 80);
        answer.ipv6_extensions = chain.to_vec();
        let out = gw.run(&answer.bytes(), R2.iface).unwrap();
        assert_frame(&out, XDP_REDIRECT, &as_client_sees(&answer, VIP6, 80).bytes());
    }
    let mut udp = from_client(VIP6_2, L4::udp(40_120, 53));
    udp.ipv6_extensions = vec![0, 43];
    let out = gw.run(&udp.bytes(), "cli").unwrap();
    assert_frame(&out, XDP_REDIRECT, &steered(&udp, R2, 5353).bytes());
}

#[test]
fn more_extension_headers_than_the_bound_pass_untouched() {
    let mut gw = Gateway::new().unwrap();
    gw.select(R2.id).unwrap();
    let mut syn = from_client(VIP6, L4::tcp_syn(40_130, 80));
    syn.ipv6_extensions = vec![0, 60, 43, 60, 60];
    assert_eq!(syn.ipv6_extensions.len(), redirector_common::MAX_IPV6_EXTENSION_HEADERS + 1);
    assert_passed_untouched(&gw, &syn.bytes(), "cli", Reason::PassIpv6Extensions);
    assert!(entries(&gw).is_empty());
}

/// Its upper layer's checksum covers the last segment, not the header's
/// destination: a rewrite of the VIP would corrupt it.
#[test]
fn a_routing_header_with_segments_left_passes_untouched() {
    let mut gw = Gateway::new().unwrap();
    gw.select(R2.id).unwrap();
    let mut syn = from_client(VIP6, L4::tcp_syn(40_135, 80));
    syn.ipv6_extensions = vec![0, 43];
    syn.ipv6_segments_left = 1;
    assert_passed_untouched(&gw, &syn.bytes(), "cli", Reason::PassIpv6Extensions);
    assert!(entries(&gw).is_empty());
}

#[test]
fn a_fragment_header_passes_untouched_wherever_it_sits() {
    let mut gw = Gateway::new().unwrap();
    gw.select(R2.id).unwrap();
    for (i, chain) in [&[44][..], &[0, 44], &[0, 60, 43, 44]].iter().enumerate() {
        let mut query = from_client(VIP6_2, L4::udp(40_140 + i as u16, 53));
        query.ipv6_extensions = chain.to_vec();
        assert_passed_untouched(&gw, &query.bytes(), "cli", Reason::PassFragment);
    }
    assert!(entries(&gw).is_empty());
}

#[test]
fn ipv6_frames_cut_at_every_byte_before_the_l4_header_ends_pass_untouched() {
    let mut gw = Gateway::new().unwrap();
    gw.select(R1.id).unwrap();
    let mut tagged_with_extensions = from_client(VIP6, L4::tcp_syn(40_150, 80));
    tagged_with_extensions.vlan = Some(7);
    tagged_with_extensions.ipv6_extensions = vec![0, 60, 43];
    let frames = [
        from_client(VIP6, L4::tcp_syn(40_151, 80)),
        from_client(VIP6_2, L4::udp(40_152, 53)),
        from_client(VIP6_2, L4::IcmpEcho { request: true, id: 1, seq: 1 }),
        tagged_with_extensions,
    ];
    assert_every_cut_passes(&gw, &frames);
}

#[test]
fn neighbour_discovery_and_icmpv6_errors_pass_untouched() {
    let mut gw = Gateway::new().unwrap();
    gw.select(R1.id).unwrap();
    let syn = from_client(VIP6, L4::tcp_syn(40_160, 80));
    gw.run(&syn.bytes(), "cli").unwrap();
    // Router solicitation and advertisement, neighbour solicitation and
    // advertisement, redirect: to the VIP, from the tracked client.
    for kind in [133, 134, 135, 136, 137] {
        let ndp = from_client(VIP6, L4::IcmpOther { kind, code: 0 });
        assert_passed_untouched(&gw, &ndp.bytes(), "cli", Reason::PassIcmpOther);
    }
    // The region's port unreachable about the steered SYN.
    let steered_syn = steered(&syn, R1, 80);
    let mut error = reply_from(R1, &syn, 80);
    error.l4 = L4::IcmpUnreachable { code: 4 };
    error.payload = steered_syn.bytes()[14..steered_syn.l4_end()].to_vec();
    assert_passed_untouched(&gw, &error.bytes(), R1.iface, Reason::PassIcmpOther);
    // An echo with a code other than 0 is no echo.
    let odd = from_client(VIP6_2, L4::IcmpOther { kind: 128, code: 1 });
    assert_passed_untouched(&gw, &odd.bytes(), "cli", Reason::PassIcmpOther);
}

#[test]
fn ipv6_traffic_not_for_a_service_passes_untouched() {
    let mut gw = Gateway::new().unwrap();
    gw.select(R1.id).unwrap();
    let gateway: std::net::Ipv6Addr = "2001:db8::1".parse().unwrap();
    let cases = [
        from_client(R1.addr6, L4::tcp_syn(40_170, 22)),
        from_client(VIP6, L4::udp(40_171, 80)),
        from_client(gateway, L4::IcmpEcho { request: true, id: 9, seq: 1 }),
        reply_from(R1, &from_client(VIP6, L4::tcp_syn(40_172, 80)), 80),
    ];
    for frame in &cases {
        assert_passed_untouched(&gw, &frame.bytes(), "cli", Reason::PassNotService);
    }
    assert!(entries(&gw).is_empty());
    // An IPv6 header whose version says otherwise.
    let mut bad = from_client(VIP6, L4::tcp_syn(40_173, 80)).bytes();
    bad[14] = (4 << 4) | (bad[14] & 0x0f);
    assert_passed_untouched(&gw, &bad, "cli", Reason::PassMalformed);
    // A TCP data offset under five words.
    let mut short = from_client(VIP6, L4::tcp_syn(40_174, 80)).bytes();
    short[14 + 40 + 12] = (4 << 4) | (short[14 + 40 + 12] & 0x0f);
    assert_passed_untouched(&gw, &short, "cli", Reason::PassMalformed);
}

/// Zero is no UDP checksum over IPv4 but an invalid one over IPv6: a
/// checksum that computes to zero goes out as all ones (RFC 8200, 8.1).
/// The client port is chosen so that the rewritten datagram's checksum
/// computes to zero: the incremental update then yields 0x0000, which must
/// not leave.
#[test]
fn an_ipv6_udp_checksum_that_computes_to_zero_leaves_as_all_ones() {
    let mut gw = Gateway::new().unwrap();
    gw.select(R1.id).unwrap();
    let checksum = |frame: &redirector_tests::frames::Frame| {
        let bytes = frame.bytes();
        let at = frame.l4_offset() + 6;
        u16::from_be_bytes([bytes[at], bytes[at + 1]])
    };
    let port = (1024..=u16::MAX)
        .find(|&port| checksum(&steered(&from_client(VIP6_2, L4::udp(port, 53)), R1, 5353)) == 0xffff)
        .expect("some client port makes the checksum compute to zero");
    let query = from_client(VIP6_2, L4::udp(port, 53));
    assert_ne!(checksum(&query), 0xffff, "the arriving datagram's checksum is an ordinary one");
    let out = gw.run(&query.bytes(), "cli").unwrap();
    assert_frame(&out, XDP_REDIRECT, &steered(&query, R1, 5353).bytes());
}

/// The data plane before IPv6 pinned a REASONS map with no room for
/// `pass_ipv6_extensions`. Adopted after an upgrade, it keeps counting the
/// reasons it has room for, and reads the newest as 0 rather than failing
/// every statistics read (which fed the load policies).
#[test]
fn a_reasons_map_pinned_before_the_newest_reason_reads_it_as_zero() {
    let pins = PinDir::unique();
    pin_counters(&pins.0, "REASONS", Reason::COUNT - 1);
    let mut gw = Gateway::adopting(pins).unwrap();
    gw.select(R2.id).unwrap();

    let not_service = from_client(R1.addr6, L4::tcp_syn(40_160, 22));
    assert_passed_untouched(&gw, &not_service.bytes(), "cli", Reason::PassNotService);
    let mut beyond_the_bound = from_client(VIP6, L4::tcp_syn(40_161, 80));
    beyond_the_bound.ipv6_extensions = vec![0, 60, 43, 60, 60];
    let before = gw.dataplane.stats().unwrap().reasons;
    let out = gw.run(&beyond_the_bound.bytes(), "cli").unwrap();
    assert_frame(&out, XDP_PASS, &beyond_the_bound.bytes());
    let after = gw.dataplane.stats().unwrap().reasons;
    assert_eq!(after, before, "no room for its reason, and counted under no other");
    assert_eq!(after.last(), Some(&(Reason::PassIpv6Extensions, 0)));
}

/// Pins a per-CPU array of `entries` 64-bit counters at `dir/name`, made
/// with the raw syscalls as any earlier loader would have made it.
fn pin_counters(dir: &std::path::Path, name: &str, entries: u32) {
    use std::{ffi::CString, os::unix::ffi::OsStrExt};
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_OBJ_PIN: libc::c_long = 6;
    const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;
    let bpf = |cmd: libc::c_long, attr: &[u32; 32]| unsafe {
        libc::syscall(libc::SYS_bpf, cmd, attr.as_ptr(), std::mem::size_of_val(attr))
    };
    let mut create = [0u32; 32];
    create[..4].copy_from_slice(&[BPF_MAP_TYPE_PERCPU_ARRAY, 4, 8, entries]);
    let fd = bpf(BPF_MAP_CREATE, &create);
    assert!(fd >= 0, "creating {name}: {}", std::io::Error::last_os_error());
    std::fs::create_dir_all(dir).unwrap();
    let path = CString::new(dir.join(name).as_os_str().as_bytes()).unwrap();
    let mut pin = [0u32; 32];
    let address = path.as_ptr() as u64;
    pin[..3].copy_from_slice(&[address as u32, (address >> 32) as u32, fd as u32]);
    let pinned = bpf(BPF_OBJ_PIN, &pin);
    assert_eq!(pinned, 0, "pinning {name}: {}", std::io::Error::last_os_error());
    unsafe { libc::close(fd as i32) };
}
