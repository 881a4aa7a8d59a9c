use std::net::SocketAddr;

use proptest::prelude::*;

use super::*;
use crate::key::tests::key;

const DIGEST: u64 = 0x5eed_0000_0000_0001;

fn record(n: u32) -> FlowRecord {
    FlowRecord {
        event: [FlowEvent::Pinned, FlowEvent::ReSteered, FlowEvent::Refreshed, FlowEvent::Closed][n as usize % 4],
        key: FlowKey {
            src_addr: u32::from_ne_bytes([10, 0, (n >> 8) as u8, n as u8]),
            dst_addr: u32::from_ne_bytes([192, 0, 2, 10]),
            src_port: (40_000 + n as u16).to_be(),
            dst_port: 80u16.to_be(),
            protocol: [IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP][n as usize % 3],
            _pad: [0; 3],
        },
        service_id: (n % 4) as u16,
        region_id: (n % 3) as u8,
        flags: [0, FLOW_ANSWERED, FLOW_FIN_SEEN, FLOW_RST_SEEN | FLOW_FIN_SEEN][n as usize % 4],
        rewrite_addr: u32::from_ne_bytes([10, 2, 0, 2]),
        rewrite_port: 8080u16.to_be(),
    }
}

fn records(n: u32) -> Vec<FlowRecord> {
    (0..n).map(record).collect()
}

fn peer(n: u8) -> SocketAddr {
    SocketAddr::from(([10, 255, 0, n], 7947))
}

#[test]
fn records_and_control_messages_round_trip_signed_or_not() {
    for k in [None, Some(key(7))] {
        let mut sender = Sender::new(1_700_000_000_000_000_000, DIGEST, k.clone());
        let datagrams = sender.flows(&records(20));
        assert_eq!(datagrams.len(), 1);
        let message = Message::decode(&datagrams[0], k.as_ref()).unwrap();
        assert_eq!(message.records, records(20));
        assert_eq!((message.kind, message.boot, message.seq, message.digest), (Kind::Flows, 1_700_000_000_000_000_000, 1, DIGEST));
        for kind in [Kind::ResyncRequest, Kind::ResyncDone] {
            let message = Message::decode(&sender.control(kind), k.as_ref()).unwrap();
            assert_eq!((message.kind, message.records.len()), (kind, 0));
        }
    }
}

#[test]
fn batches_fill_datagrams_to_the_mtu_in_order() {
    let mut sender = Sender::new(1, DIGEST, Some(key(1)));
    let datagrams = sender.flows(&records(130));
    let lens: Vec<usize> = datagrams.iter().map(Vec::len).collect();
    assert_eq!(lens, [MAX_DATAGRAM, MAX_DATAGRAM, HEADER_LEN + 18 * RECORD_LEN + MAC_LEN]);
    let decoded: Vec<Message> = datagrams.iter().map(|d| Message::decode(d, Some(&key(1))).unwrap()).collect();
    assert_eq!(decoded.iter().map(|m| m.seq).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(decoded.into_iter().flat_map(|m| m.records).collect::<Vec<_>>(), records(130));
    assert!(sender.flows(&[]).is_empty(), "nothing to say, nothing sent");
}

#[test]
fn addresses_and_ports_travel_as_they_are_on_the_wire() {
    let mut sender = Sender::new(1, DIGEST, None);
    let datagram = sender.flows(&records(2)).remove(0);
    let second = &datagram[HEADER_LEN + RECORD_LEN..HEADER_LEN + 2 * RECORD_LEN];
    assert_eq!(&second[0..4], [10, 0, 0, 1]);
    assert_eq!(&second[4..8], [192, 0, 2, 10]);
    assert_eq!(&second[8..10], 40_001u16.to_be_bytes());
    assert_eq!(&second[10..12], 80u16.to_be_bytes());
    assert_eq!(second[12..16], [IPPROTO_UDP, 2, 1, FLOW_ANSWERED]);
    assert_eq!(&second[16..22], [10, 2, 0, 2, 0x1f, 0x90]);
    assert_eq!(&second[22..24], [0, 1]);
}

/// An unsigned datagram with one record, its fields set by `edit`.
fn with_record(edit: impl FnOnce(&mut [u8])) -> Vec<u8> {
    let mut b = Sender::new(1, DIGEST, None).flows(&records(1)).remove(0);
    edit(&mut b[HEADER_LEN..]);
    b
}

#[test]
fn fields_out_of_range_are_named() {
    let cases: [(&str, Vec<u8>); 5] = [
        ("protocol", with_record(|r| r[12] = 47)),
        ("event", with_record(|r| r[13] = 0)),
        ("region id", with_record(|r| r[14] = MAX_REGIONS as u8)),
        ("flow flags", with_record(|r| r[15] = 0x80)),
        ("service id", with_record(|r| r[22..24].copy_from_slice(&(MAX_SERVICES as u16).to_be_bytes()))),
    ];
    for (field, bytes) in cases {
        assert_eq!(Message::decode(&bytes, None), Err(DecodeError::Field(field)));
    }
    let mut control = Sender::new(1, DIGEST, None).control(Kind::ResyncRequest);
    control[7] = 1;
    control.extend_from_slice(&[0; RECORD_LEN]);
    assert_eq!(Message::decode(&control, None), Err(DecodeError::Field("record count")), "records on a request");
    let mut zero = Sender::new(1, DIGEST, None).control(Kind::ResyncDone);
    zero[16..24].fill(0);
    assert_eq!(Message::decode(&zero, None), Err(DecodeError::Field("sequence")));
    let mut kind = zero.clone();
    kind[5] = 9;
    assert_eq!(Message::decode(&kind, None), Err(DecodeError::Kind(9)));
    let mut version = zero;
    version[4] = 2;
    assert_eq!(Message::decode(&version, None), Err(DecodeError::Version(2)));
}

#[test]
fn a_datagram_cut_or_padded_anywhere_is_refused() {
    let whole = Sender::new(1, DIGEST, Some(key(3))).flows(&records(3)).remove(0);
    for len in 0..whole.len() {
        assert!(Message::decode(&whole[..len], Some(&key(3))).is_err(), "cut at {len}");
    }
    let mut padded = whole.clone();
    padded.push(0);
    assert_eq!(Message::decode(&padded, Some(&key(3))), Err(DecodeError::Length(whole.len() + 1)));
}

#[test]
fn keys_must_match_on_both_ends() {
    let signed = Sender::new(1, DIGEST, Some(key(1))).control(Kind::ResyncRequest);
    let unsigned = Sender::new(1, DIGEST, None).control(Kind::ResyncRequest);
    assert_eq!(Message::decode(&signed, Some(&key(2))), Err(DecodeError::BadMac));
    assert_eq!(Message::decode(&signed, None), Err(DecodeError::UnexpectedMac));
    assert_eq!(Message::decode(&unsigned, Some(&key(1))), Err(DecodeError::MissingMac));
}

#[test]
fn every_flipped_bit_of_a_signed_datagram_is_refused() {
    let whole = Sender::new(1, DIGEST, Some(key(4))).flows(&records(2)).remove(0);
    for byte in 0..whole.len() {
        for bit in 0..8 {
            let mut b = whole.clone();
            b[byte] ^= 1 << bit;
            assert!(Message::decode(&b, Some(&key(4))).is_err(), "byte {byte} bit {bit}");
        }
    }
}

#[test]
fn the_receiver_takes_each_datagram_of_a_peer_once() {
    let mut sender = Sender::new(100, DIGEST, Some(key(5)));
    let mut receiver = Receiver::new(&[peer(2)], Some(key(5)), DIGEST);
    let first = sender.flows(&records(3)).remove(0);
    assert_eq!(receiver.accept(peer(2), &first).unwrap().records, records(3));
    assert_eq!(receiver.accept(peer(2), &first), Err(Rejection::Replayed { boot: 100, seq: 1 }));
    // Reordered: 3 before 2, both taken, each once.
    let (second, third) = (sender.control(Kind::ResyncDone), sender.control(Kind::ResyncDone));
    assert!(receiver.accept(peer(2), &third).is_ok());
    assert!(receiver.accept(peer(2), &second).is_ok());
    assert!(receiver.accept(peer(2), &second).is_err());
    assert_eq!(
        receiver.counters,
        Counters { accepted: 3, records: 3, replayed: 2, ..Counters::default() },
        "{:?}",
        receiver.counters
    );
}

#[test]
fn the_replay_window_is_64_datagrams_deep() {
    let mut sender = Sender::new(100, DIGEST, None);
    let datagrams: Vec<Vec<u8>> = (0..70).map(|_| sender.control(Kind::ResyncDone)).collect();
    let mut receiver = Receiver::new(&[peer(2)], None, DIGEST);
    assert!(receiver.accept(peer(2), &datagrams[69]).is_ok(), "seq 70");
    assert!(receiver.accept(peer(2), &datagrams[6]).is_ok(), "seq 7: 63 behind");
    assert_eq!(receiver.accept(peer(2), &datagrams[5]), Err(Rejection::Replayed { boot: 100, seq: 6 }), "64 behind");
}

#[test]
fn a_restarted_peer_is_taken_and_its_old_boot_is_not() {
    let mut receiver = Receiver::new(&[peer(2)], Some(key(5)), DIGEST);
    let mut before = Sender::new(100, DIGEST, Some(key(5)));
    let old = before.control(Kind::ResyncDone);
    let late_old = before.control(Kind::ResyncDone);
    assert!(receiver.accept(peer(2), &old).is_ok());
    let mut after = Sender::new(200, DIGEST, Some(key(5)));
    assert!(receiver.accept(peer(2), &after.control(Kind::ResyncRequest)).is_ok(), "seq 1 of a newer boot");
    assert_eq!(receiver.accept(peer(2), &late_old), Err(Rejection::Replayed { boot: 100, seq: 2 }));
}

#[test]
fn refusals_are_counted_and_move_no_replay_guard() {
    let mut receiver = Receiver::new(&[peer(2)], Some(key(5)), DIGEST);
    let mut peer_sender = Sender::new(100, DIGEST, Some(key(5)));
    let genuine = peer_sender.control(Kind::ResyncDone);

    // A forger without the key, numbering far ahead, from the peer's address.
    let mut forger = Sender::new(u64::MAX, DIGEST, Some(key(6)));
    assert!(matches!(receiver.accept(peer(2), &forger.control(Kind::ResyncDone)), Err(Rejection::Unauthenticated(_))));
    // The genuine datagram from elsewhere.
    assert_eq!(receiver.accept(peer(9), &genuine), Err(Rejection::UnknownPeer(peer(9))));
    assert!(matches!(receiver.accept(peer(2), b"RDFS"), Err(Rejection::Malformed(DecodeError::Length(4)))));
    let mut other_version = genuine.clone();
    other_version[4] = 2;
    assert_eq!(receiver.accept(peer(2), &other_version), Err(Rejection::BadVersion(2)));
    let mut other_config = Sender::new(100, DIGEST + 1, Some(key(5)));
    assert_eq!(
        receiver.accept(peer(2), &other_config.control(Kind::ResyncDone)),
        Err(Rejection::ConfigMismatch { theirs: DIGEST + 1, ours: DIGEST })
    );
    assert!(receiver.accept(peer(2), &genuine).is_ok(), "nothing refused moved the guard");
    assert_eq!(
        receiver.counters,
        Counters {
            accepted: 1,
            malformed: 1,
            bad_version: 1,
            unauthenticated: 1,
            unknown_peer: 1,
            config_mismatch: 1,
            ..Counters::default()
        }
    );
    let rejected: u64 = receiver.counters.rejections().iter().map(|(_, n)| n).sum();
    assert_eq!(rejected, 5);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn arbitrary_bytes_are_an_error_or_a_message_never_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1500)) {
        let mut receiver = Receiver::new(&[peer(2)], None, DIGEST);
        let _ = receiver.accept(peer(2), &bytes);
        let _ = Message::decode(&bytes, Some(&key(1)));
    }

    #[test]
    fn mutated_signed_datagrams_are_refused(n in 0u32..=MAX_RECORDS as u32, at in any::<prop::sample::Index>(), xor in 1u8..) {
        let mut b = Sender::new(1, DIGEST, Some(key(8))).flows(&records(n.max(1))).remove(0);
        let i = at.index(b.len());
        b[i] ^= xor;
        let mut receiver = Receiver::new(&[peer(2)], Some(key(8)), DIGEST);
        prop_assert!(receiver.accept(peer(2), &b).is_err());
    }

    #[test]
    fn what_is_sent_is_what_arrives(n in 1u32..200, boot in 1u64.., signed in any::<bool>()) {
        let k = signed.then(|| key(9));
        let mut sender = Sender::new(boot, DIGEST, k.clone());
        let mut receiver = Receiver::new(&[peer(2)], k, DIGEST);
        let mut arrived = Vec::new();
        for datagram in sender.flows(&records(n)) {
            arrived.extend(receiver.accept(peer(2), &datagram).unwrap().records);
        }
        prop_assert_eq!(arrived, records(n));
    }
}
