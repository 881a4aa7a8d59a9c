//! What this gateway knows of each peer, on a clock it is given: when it
//! last heard from it, what went each way, and whether the peer has sent
//! its whole table since this gateway started (the resync). The gateway is
//! ready once every peer has, or has stayed silent too long to wait for:
//! a gateway whose peer is down must still come up.

use std::{net::SocketAddr, time::Duration};

use redirector_proto::control::{PeerView, ResyncState};

/// A peer heard within this is reachable: three keepalives.
pub const REACHABLE_WITHIN: Duration = Duration::from_secs(3);
/// Every peer hears from this gateway at least this often, records or not.
pub const KEEPALIVE_EVERY: Duration = Duration::from_secs(1);
/// A resync request unanswered this long is sent again.
pub const RESYNC_RETRY: Duration = Duration::from_millis(500);
/// A peer that says nothing this long while this gateway waits for its
/// table is not waited for (it is down, or unreachable): the gateway is
/// ready without it. A peer sending its table is waited for as long as it
/// keeps sending.
pub const RESYNC_PATIENCE: Duration = Duration::from_secs(2);

pub struct Peer {
    pub addr: SocketAddr,
    last_heard: Option<Duration>,
    /// Of the last datagram taken: its receipt less its send time.
    lag: Option<Duration>,
    pub records_received: u64,
    pub records_sent: u64,
    pub datagrams_sent: u64,
    pub send_errors: u64,
    resync: Resync,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Resync {
    /// Waiting since `since`; last asked at `asked` (None: not yet).
    Waiting { since: Duration, asked: Option<Duration> },
    Done,
    GaveUp,
}

/// What the peer set wants sent now.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Due {
    /// Peers (indices) to ask for their table.
    pub resync_requests: Vec<usize>,
    /// Peers that heard nothing from this gateway for a keepalive period.
    pub keepalives: Vec<usize>,
}

pub struct Peers {
    pub peers: Vec<Peer>,
    last_sent: Vec<Duration>,
}

impl Peers {
    /// At `now`, a gateway that starts: it asks every peer for its table.
    pub fn start(addrs: &[SocketAddr], now: Duration) -> Self {
        Self {
            peers: addrs
                .iter()
                .map(|&addr| Peer {
                    addr,
                    last_heard: None,
                    lag: None,
                    records_received: 0,
                    records_sent: 0,
                    datagrams_sent: 0,
                    send_errors: 0,
                    resync: Resync::Waiting { since: now, asked: None },
                })
                .collect(),
            last_sent: vec![Duration::ZERO; addrs.len()],
        }
    }

    pub fn index(&self, addr: SocketAddr) -> Option<usize> {
        self.peers.iter().position(|p| p.addr == addr)
    }

    /// A datagram from peer `i` was taken, carrying `records`, `lag`
    /// after it was sent.
    pub fn heard(&mut self, i: usize, records: usize, lag: Duration, now: Duration) {
        let peer = &mut self.peers[i];
        peer.last_heard = Some(now);
        peer.lag = Some(lag);
        peer.records_received += records as u64;
    }

    /// Peer `i` has sent its whole table.
    pub fn resynced(&mut self, i: usize) {
        self.peers[i].resync = Resync::Done;
    }

    /// A datagram to peer `i` carrying `records` left (or failed to).
    pub fn sent(&mut self, i: usize, records: usize, ok: bool, now: Duration) {
        let peer = &mut self.peers[i];
        if ok {
            peer.datagrams_sent += 1;
            peer.records_sent += records as u64;
        } else {
            peer.send_errors += 1;
        }
        self.last_sent[i] = now;
    }

    /// Ready: every peer has sent its table, or was given up.
    pub fn ready(&self) -> bool {
        self.peers.iter().all(|p| !matches!(p.resync, Resync::Waiting { .. }))
    }

    /// Peers given up on now (silent past patience), and what is due.
    pub fn due(&mut self, now: Duration) -> (Due, Vec<SocketAddr>) {
        let mut due = Due::default();
        let mut given_up = Vec::new();
        for (i, peer) in self.peers.iter_mut().enumerate() {
            if let Resync::Waiting { since, asked } = peer.resync {
                let waited_from = peer.last_heard.map_or(since, |heard| heard.max(since));
                if now.saturating_sub(waited_from) >= RESYNC_PATIENCE {
                    peer.resync = Resync::GaveUp;
                    given_up.push(peer.addr);
                } else if asked.is_none_or(|asked| now.saturating_sub(asked) >= RESYNC_RETRY) {
                    peer.resync = Resync::Waiting { since, asked: Some(now) };
                    due.resync_requests.push(i);
                }
            }
            if now.saturating_sub(self.last_sent[i]) >= KEEPALIVE_EVERY {
                due.keepalives.push(i);
            }
        }
        (due, given_up)
    }

    /// The next time `due` may have something to say.
    pub fn next_due(&self) -> Duration {
        let mut next = self.last_sent.iter().map(|&t| t + KEEPALIVE_EVERY).min().unwrap_or(KEEPALIVE_EVERY);
        for peer in &self.peers {
            if let Resync::Waiting { asked, .. } = peer.resync {
                next = next.min(asked.map_or(Duration::ZERO, |asked| asked + RESYNC_RETRY));
            }
        }
        next
    }

    pub fn views(&self, now: Duration) -> Vec<PeerView> {
        self.peers
            .iter()
            .map(|p| PeerView {
                address: p.addr.to_string(),
                reachable: p.last_heard.is_some_and(|t| now.saturating_sub(t) <= REACHABLE_WITHIN),
                last_heard_ms: p.last_heard.map(|t| now.saturating_sub(t).as_millis() as u64),
                lag_ms: p.lag.map(|lag| lag.as_secs_f64() * 1e3),
                records_received: p.records_received,
                records_sent: p.records_sent,
                send_errors: p.send_errors,
                resync: match p.resync {
                    Resync::Waiting { .. } => ResyncState::Waiting,
                    Resync::Done => ResyncState::Done,
                    Resync::GaveUp => ResyncState::GaveUp,
                },
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn two() -> Peers {
        Peers::start(&["10.255.0.2:7947".parse().unwrap(), "10.255.0.3:7947".parse().unwrap()], ms(1000))
    }

    #[test]
    fn a_starting_gateway_asks_every_peer_at_once_and_again_until_answered() {
        let mut peers = two();
        assert!(!peers.ready());
        assert_eq!(peers.due(ms(1000)).0.resync_requests, vec![0, 1]);
        assert_eq!(peers.due(ms(1200)).0.resync_requests, Vec::<usize>::new());
        peers.heard(0, 56, ms(1), ms(1300));
        peers.resynced(0);
        assert_eq!(peers.due(ms(1500)).0.resync_requests, vec![1]);
        peers.heard(1, 0, ms(1), ms(1600));
        peers.resynced(1);
        assert!(peers.ready());
        assert_eq!(peers.due(ms(2100)).0.resync_requests, Vec::<usize>::new());
    }

    #[test]
    fn a_silent_peer_is_given_up_and_a_sending_one_waited_for() {
        let mut peers = two();
        peers.due(ms(1000));
        // Peer 0 keeps sending its table; peer 1 says nothing.
        for t in (1100..=3500).step_by(100) {
            peers.heard(0, 56, ms(2), ms(t));
            let (_, given_up) = peers.due(ms(t));
            if t < 3000 {
                assert!(given_up.is_empty(), "at {t}");
            } else if t == 3000 {
                assert_eq!(given_up, vec![peers.peers[1].addr]);
            }
        }
        assert!(!peers.ready(), "peer 0 is still sending");
        peers.resynced(0);
        assert!(peers.ready());
        let views = peers.views(ms(3500));
        assert_eq!((views[0].resync, views[1].resync), (ResyncState::Done, ResyncState::GaveUp));
        assert!(views[0].reachable && !views[1].reachable);
        assert_eq!(views[0].records_received, 56 * 25);
        assert_eq!((views[0].lag_ms, views[1].lag_ms), (Some(2.0), None));
    }

    #[test]
    fn keepalives_go_to_peers_that_heard_nothing_for_a_period() {
        let mut peers = two();
        peers.sent(0, 3, true, ms(1500));
        peers.sent(1, 0, true, ms(1000));
        assert_eq!(peers.due(ms(2000)).0.keepalives, vec![1]);
        assert_eq!(peers.next_due(), ms(2000), "peer 1's keepalive is due");
        peers.sent(1, 0, false, ms(2000));
        assert_eq!((peers.peers[0].records_sent, peers.peers[1].send_errors), (3, 1));
    }
}
