//! The daemon's side of the heartbeat: numbers its requests and takes only
//! authentic replies to requests still in flight, from the agent's address
//! (the replay guard).

use std::{collections::VecDeque, fmt, net::SocketAddr, time::Duration};

use super::{decode_refusal, is_refusal, DecodeError, Key, Kind, Message, Refusal, Report, MESSAGE_LEN};

/// Requests a verifier remembers when its caller stops expiring them.
const MAX_OUTSTANDING: usize = 64;

/// Replies refused or taken, by cause.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub accepted: u64,
    /// Requests that got no reply before [`Verifier::expire`].
    pub expired: u64,
    /// Wrong length, magic or kind, or a field out of range.
    pub malformed: u64,
    pub bad_version: u64,
    /// MAC missing, wrong, or present where no key is configured.
    pub unauthenticated: u64,
    /// From an address other than the agent's.
    pub wrong_source: u64,
    /// Not the answer to a request in flight: duplicated, replayed, late
    /// (after its request expired), or never asked for.
    pub unexpected_sequence: u64,
}

impl Counters {
    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &Counters) {
        self.accepted += other.accepted;
        self.expired += other.expired;
        self.malformed += other.malformed;
        self.bad_version += other.bad_version;
        self.unauthenticated += other.unauthenticated;
        self.wrong_source += other.wrong_source;
        self.unexpected_sequence += other.unexpected_sequence;
    }

    /// Replies rejected (and requests expired), by reason as metrics label
    /// them.
    pub fn rejections(&self) -> [(&'static str, u64); 6] {
        [
            ("malformed", self.malformed),
            ("bad_version", self.bad_version),
            ("unauthenticated", self.unauthenticated),
            ("wrong_source", self.wrong_source),
            ("unexpected_sequence", self.unexpected_sequence),
            ("expired", self.expired),
        ]
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    WrongSource(SocketAddr),
    Malformed(DecodeError),
    BadVersion(u8),
    Unauthenticated(DecodeError),
    /// The agent refused our request for its key.
    Refused(Refusal),
    UnexpectedSequence(u64),
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::WrongSource(from) => write!(f, "heartbeat reply from {from}, not the agent"),
            Rejection::Malformed(e) | Rejection::Unauthenticated(e) => {
                write!(f, "heartbeat reply refused: {e}")
            }
            Rejection::BadVersion(v) => write!(f, "heartbeat reply refused: version {v}"),
            Rejection::Refused(why) => write!(f, "the agent refused the request: {why}"),
            Rejection::UnexpectedSequence(seq) => {
                write!(f, "heartbeat reply {seq} answers no request in flight")
            }
        }
    }
}

/// A reply taken: the agent was alive `rtt` after the request left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Accepted {
    pub seq: u64,
    pub rtt: Duration,
    pub report: Report,
}

struct InFlight {
    seq: u64,
    sent_at: Duration,
    /// The agent refused it; it still expires as any unanswered request.
    refused: Option<Refusal>,
}

/// The daemon's side of one agent: numbers requests and takes only
/// authentic replies to requests still in flight, from the agent's address.
pub struct Verifier {
    agent: SocketAddr,
    key: Option<Key>,
    next_seq: u64,
    in_flight: VecDeque<InFlight>,
    counters: Counters,
}

impl Verifier {
    /// `first_seq` should differ at every daemon start (the wall clock in
    /// ns does), so that replies recorded before a restart never match a
    /// new request.
    pub fn new(agent: SocketAddr, key: Option<Key>, first_seq: u64) -> Self {
        Verifier {
            agent,
            key,
            next_seq: first_seq,
            in_flight: VecDeque::new(),
            counters: Counters::default(),
        }
    }

    /// A new request, sent at `now` (also its timestamp, which the reply
    /// must echo).
    pub fn request(&mut self, now: Duration) -> [u8; MESSAGE_LEN] {
        let seq = self.next_seq;
        self.next_seq = seq.wrapping_add(1);
        if self.in_flight.len() == MAX_OUTSTANDING {
            self.in_flight.pop_front();
        }
        self.in_flight.push_back(InFlight { seq, sent_at: now, refused: None });
        Message::request(seq, timestamp_ns(now)).encode(self.key.as_ref())
    }

    /// Forgets the request made last: it could not be sent, so its missing
    /// reply is no miss.
    pub fn withdraw_last(&mut self) {
        self.in_flight.pop_back();
    }

    /// Checks a datagram received at `now`; counts it either way.
    pub fn accept(
        &mut self,
        from: SocketAddr,
        bytes: &[u8],
        now: Duration,
    ) -> Result<Accepted, Rejection> {
        let verdict = self.check(from, bytes, now);
        let c = &mut self.counters;
        *match &verdict {
            Ok(_) => &mut c.accepted,
            Err(Rejection::WrongSource(_)) => &mut c.wrong_source,
            Err(Rejection::Malformed(_)) => &mut c.malformed,
            Err(Rejection::BadVersion(_)) => &mut c.bad_version,
            Err(Rejection::Unauthenticated(_) | Rejection::Refused(_)) => &mut c.unauthenticated,
            Err(Rejection::UnexpectedSequence(_)) => &mut c.unexpected_sequence,
        } += 1;
        verdict
    }

    /// Gives up on requests sent more than `timeout` before `now`; returns
    /// one entry per request given up, each a missed probe, with the
    /// agent's refusal if it refused it. A reply to one of them is refused.
    pub fn expire(&mut self, now: Duration, timeout: Duration) -> Vec<Option<Refusal>> {
        let mut expired = Vec::new();
        self.in_flight.retain(|r| {
            let late = now.saturating_sub(r.sent_at) > timeout;
            if late {
                expired.push(r.refused);
            }
            !late
        });
        self.counters.expired += expired.len() as u64;
        expired
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    fn check(
        &mut self,
        from: SocketAddr,
        bytes: &[u8],
        now: Duration,
    ) -> Result<Accepted, Rejection> {
        if from != self.agent {
            return Err(Rejection::WrongSource(from));
        }
        if is_refusal(bytes) {
            let (seq, timestamp, why) = decode_refusal(bytes).map_err(Rejection::Malformed)?;
            let request = self
                .in_flight
                .iter_mut()
                .find(|r| r.seq == seq && timestamp_ns(r.sent_at) == timestamp)
                .ok_or(Rejection::UnexpectedSequence(seq))?;
            request.refused = Some(why);
            return Err(Rejection::Refused(why));
        }
        let reply =
            Message::decode(bytes, self.key.as_ref(), Kind::Reply).map_err(|e| match e {
                DecodeError::Version(v) => Rejection::BadVersion(v),
                DecodeError::MissingMac | DecodeError::UnexpectedMac | DecodeError::BadMac => {
                    Rejection::Unauthenticated(e)
                }
                _ => Rejection::Malformed(e),
            })?;
        // Authenticated before this point: a forgery cannot cancel the
        // request a genuine reply would answer.
        let position = self
            .in_flight
            .iter()
            .position(|r| r.seq == reply.seq && timestamp_ns(r.sent_at) == reply.timestamp_ns)
            .ok_or(Rejection::UnexpectedSequence(reply.seq))?;
        let request = self
            .in_flight
            .remove(position)
            .expect("position is in range");
        Ok(Accepted {
            seq: reply.seq,
            rtt: now.saturating_sub(request.sent_at),
            report: reply.report,
        })
    }
}

fn timestamp_ns(at: Duration) -> u64 {
    u64::try_from(at.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        heartbeat::tests::{key, reply, report},
        probe::Outcome,
    };

    const AGENT: &str = "10.2.0.2:7946";
    const MS: Duration = Duration::from_millis(1);

    fn agent() -> SocketAddr {
        AGENT.parse().unwrap()
    }

    #[test]
    fn the_verifier_takes_a_reply_to_a_request_in_flight_once() {
        let k = key(1);
        let mut v = Verifier::new(agent(), Some(k.clone()), 1000);
        let request = v.request(10 * MS);
        let r = reply(&request, Some(&k));
        let accepted = v.accept(agent(), &r, 13 * MS).unwrap();
        assert_eq!(
            accepted,
            Accepted {
                seq: 1000,
                rtt: 3 * MS,
                report: report()
            }
        );
        assert_eq!(accepted.report.outcome(), Outcome::Success);
        assert_eq!(
            v.accept(agent(), &r, 14 * MS),
            Err(Rejection::UnexpectedSequence(1000))
        );
        let c = v.counters();
        assert_eq!((c.accepted, c.unexpected_sequence), (1, 1));
    }

    #[test]
    fn a_replay_of_an_earlier_reply_is_refused() {
        let mut v = Verifier::new(agent(), None, 1);
        let first = reply(&v.request(MS), None);
        v.accept(agent(), &first, 2 * MS).unwrap();
        v.request(101 * MS);
        assert_eq!(
            v.accept(agent(), &first, 102 * MS),
            Err(Rejection::UnexpectedSequence(1))
        );
        // Right sequence, wrong timestamp: not the reply to that request.
        let forged = Message {
            kind: Kind::Reply,
            seq: 2,
            timestamp_ns: 0,
            report: report(),
        };
        assert_eq!(
            v.accept(agent(), &forged.encode(None), 102 * MS),
            Err(Rejection::UnexpectedSequence(2))
        );
        assert_eq!(v.counters().unexpected_sequence, 2);
    }

    #[test]
    fn a_reply_from_another_address_is_refused_before_anything_else() {
        let mut v = Verifier::new(agent(), None, 1);
        let r = reply(&v.request(MS), None);
        let other: SocketAddr = "10.2.0.3:7946".parse().unwrap();
        assert_eq!(
            v.accept(other, &r, 2 * MS),
            Err(Rejection::WrongSource(other))
        );
        assert_eq!(
            v.accept(agent(), &r, 2 * MS).map(|a| a.seq),
            Ok(1),
            "still in flight"
        );
        let c = v.counters();
        assert_eq!((c.wrong_source, c.accepted), (1, 1));
    }

    #[test]
    fn a_forged_reply_does_not_cancel_the_genuine_one() {
        let k = key(1);
        let mut v = Verifier::new(agent(), Some(k.clone()), 1);
        let request = v.request(MS);
        let genuine = Message::decode(&reply(&request, Some(&k)), Some(&k), Kind::Reply).unwrap();
        let forged = genuine.encode(Some(&key(2)));
        assert!(matches!(
            v.accept(agent(), &forged, 2 * MS),
            Err(Rejection::Unauthenticated(DecodeError::BadMac))
        ));
        assert!(matches!(
            v.accept(agent(), &genuine.encode(None), 2 * MS),
            Err(Rejection::Unauthenticated(DecodeError::MissingMac))
        ));
        assert!(v.accept(agent(), &genuine.encode(Some(&k)), 3 * MS).is_ok());
        assert_eq!(v.counters().unauthenticated, 2);
    }

    #[test]
    fn each_cause_has_its_own_counter() {
        let mut v = Verifier::new(agent(), None, 1);
        let good = reply(&v.request(MS), None);
        let mut v2 = good;
        v2[4] = 2;
        assert_eq!(
            v.accept(agent(), &v2, 2 * MS),
            Err(Rejection::BadVersion(2))
        );
        assert_eq!(
            v.accept(agent(), &good[..10], 2 * MS),
            Err(Rejection::Malformed(DecodeError::Length(10)))
        );
        let request = Message::request(1, 1_000_000).encode(None);
        assert_eq!(
            v.accept(agent(), &request, 2 * MS),
            Err(Rejection::Malformed(DecodeError::Kind(1)))
        );
        assert_eq!(
            v.counters(),
            Counters {
                malformed: 2,
                bad_version: 1,
                ..Counters::default()
            }
        );
    }

    #[test]
    fn expired_requests_count_as_misses_and_their_late_replies_are_refused() {
        let mut v = Verifier::new(agent(), None, 1);
        let late = reply(&v.request(Duration::ZERO), None);
        let on_time = reply(&v.request(100 * MS), None);
        assert_eq!(
            v.expire(100 * MS, 100 * MS).len(),
            0,
            "exactly the timeout is still in time"
        );
        assert_eq!(v.expire(150 * MS, 100 * MS), [None]);
        assert_eq!(
            v.accept(agent(), &late, 150 * MS),
            Err(Rejection::UnexpectedSequence(1))
        );
        assert_eq!(
            v.accept(agent(), &on_time, 150 * MS).map(|a| a.rtt),
            Ok(50 * MS)
        );
        assert_eq!(v.counters().expired, 1);
    }

    #[test]
    fn a_withdrawn_request_neither_expires_nor_takes_a_reply() {
        let mut v = Verifier::new(agent(), None, 1);
        let answered = reply(&v.request(Duration::ZERO), None);
        let unsent = reply(&v.request(MS), None);
        v.withdraw_last();
        assert_eq!(v.accept(agent(), &unsent, 2 * MS), Err(Rejection::UnexpectedSequence(2)));
        assert!(v.accept(agent(), &answered, 2 * MS).is_ok());
        assert!(v.expire(Duration::from_secs(1), MS).is_empty());
    }

    #[test]
    fn a_refusal_is_counted_unauthenticated_and_named_when_its_request_expires() {
        let mut v = Verifier::new(agent(), Some(key(1)), 1);
        let request = v.request(Duration::ZERO);
        let plain_agent_error = super::super::answer(&request, None, report()).unwrap_err();
        let refused = super::super::refusal(&request, &plain_agent_error).unwrap();
        assert_eq!(v.accept(agent(), &refused, MS), Err(Rejection::Refused(Refusal::UnexpectedMac)));
        assert_eq!(v.counters().unauthenticated, 1);
        assert!(v.expire(50 * MS, 100 * MS).is_empty(), "a refusal does not end the request early");
        assert_eq!(v.expire(150 * MS, 100 * MS), [Some(Refusal::UnexpectedMac)]);
        // A refusal of nothing in flight, or from elsewhere, is only counted.
        assert_eq!(v.accept(agent(), &refused, 151 * MS), Err(Rejection::UnexpectedSequence(1)));
        let elsewhere: SocketAddr = "10.9.9.9:7946".parse().unwrap();
        assert_eq!(v.accept(elsewhere, &refused, 151 * MS), Err(Rejection::WrongSource(elsewhere)));
    }

    #[test]
    fn a_verifier_whose_requests_are_never_expired_stays_bounded() {
        let mut v = Verifier::new(agent(), None, 1);
        let first = reply(&v.request(Duration::ZERO), None);
        for i in 1..=MAX_OUTSTANDING as u32 {
            v.request(i * MS);
        }
        assert_eq!(v.in_flight.len(), MAX_OUTSTANDING);
        assert_eq!(
            v.accept(agent(), &first, MS),
            Err(Rejection::UnexpectedSequence(1))
        );
    }

}
