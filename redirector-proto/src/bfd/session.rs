//! One BFD session in asynchronous mode (RFC 5880 §6.8), free of I/O: the
//! caller feeds it received packets and the time, asks it when to send
//! next and what, and learns of state changes from what it returns.
//!
//! What it keeps of the RFC: the three-way handshake (Down → Init → Up),
//! the detection time (the peer's multiplier × the slower of our required
//! RX and its desired TX), the transmit interval (the slower of our
//! desired TX and its required RX, less 0-25 % jitter), one packet a
//! second while not Up (§6.8.3), the Poll sequence when our transmit
//! interval changes, answering a Poll at once with Final, and keyed SHA1
//! sequence numbers. What it leaves out: demand mode and the echo
//! function (it advertises neither: required min echo RX 0).

use std::time::Duration;

use super::packet::{verify, AuthKey, AuthType, BfdError, Control, Diag, State};

/// While not Up, a session sends no faster than this (§6.8.3).
pub const SLOW_TX: Duration = Duration::from_secs(1);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// What we want to send at and can receive at, once Up.
    pub interval: Duration,
    pub detect_mult: u8,
    pub key: Option<AuthKey>,
}

/// A change of the session's state, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Change {
    pub from: State,
    pub to: State,
    /// `Diag` code: why it left Up (0 otherwise).
    pub diag: u8,
}

#[derive(Clone, Debug)]
pub struct Session {
    settings: Settings,
    local_discriminator: u32,
    remote_discriminator: u32,
    state: State,
    remote_state: State,
    diag: u8,
    /// What the peer last said it wants (µs); 1 µs until it has spoken
    /// (§6.8.1), so our first packets go at our own pace.
    remote_desired_tx: Duration,
    remote_required_rx: Duration,
    remote_detect_mult: u8,
    /// The desired TX we advertise now: `SLOW_TX` until Up.
    desired_tx: Duration,
    /// The interval our packets actually go at; a slower desired TX takes
    /// effect only once the peer acknowledged it (Poll answered).
    tx_interval: Duration,
    /// We changed our parameters and send P until the peer answers F.
    polling: bool,
    /// The peer polled: the next packet carries F, and goes at once.
    final_due: bool,
    next_tx: Duration,
    detect_deadline: Option<Duration>,
    tx_sequence: u32,
    rx_sequence: Option<u32>,
    /// When the last packet was accepted.
    last_rx: Option<Duration>,
}

impl Session {
    /// A session in Down, to send its first packet at `now`; its
    /// authentication sequence numbers start after `sequence_start`, which
    /// should be random (§6.8.1), so a peer that remembers an earlier run's
    /// numbers does not take ours for replays.
    pub fn new(settings: Settings, local_discriminator: u32, sequence_start: u32, now: Duration) -> Session {
        assert_ne!(local_discriminator, 0, "a discriminator is never 0");
        Session {
            settings,
            local_discriminator,
            remote_discriminator: 0,
            state: State::Down,
            remote_state: State::Down,
            diag: 0,
            remote_desired_tx: Duration::from_micros(1),
            remote_required_rx: Duration::from_micros(1),
            remote_detect_mult: 0,
            desired_tx: SLOW_TX,
            tx_interval: SLOW_TX,
            polling: false,
            final_due: false,
            next_tx: now,
            detect_deadline: None,
            tx_sequence: sequence_start,
            rx_sequence: None,
            last_rx: None,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn remote_state(&self) -> State {
        self.remote_state
    }

    pub fn local_discriminator(&self) -> u32 {
        self.local_discriminator
    }

    pub fn remote_discriminator(&self) -> u32 {
        self.remote_discriminator
    }

    pub fn diag(&self) -> u8 {
        self.diag
    }

    /// The detection time as agreed now (None before the peer spoke).
    pub fn detection_time(&self) -> Option<Duration> {
        (self.remote_detect_mult > 0)
            .then(|| self.settings.interval.max(self.remote_desired_tx) * u32::from(self.remote_detect_mult))
    }

    /// The next instant the session needs the caller: a packet to send or
    /// a detection time to expire.
    pub fn next_deadline(&self) -> Duration {
        match self.detect_deadline {
            Some(detect) => detect.min(self.next_tx),
            None => self.next_tx,
        }
    }

    /// Takes a received packet in: `datagram` as it came, `packet` its
    /// decoding (the checks that need no session passed). Returns the
    /// state change it caused, if any.
    pub fn receive(&mut self, datagram: &[u8], packet: &Control, now: Duration) -> Result<Option<Change>, BfdError> {
        if packet.your_discriminator != 0 && packet.your_discriminator != self.local_discriminator {
            return Err(BfdError::UnknownSession);
        }
        verify(datagram, packet, self.settings.key.as_ref())?;
        if let Some(auth) = packet.auth {
            self.check_sequence(auth.kind, auth.sequence, packet.detect_mult)?;
            self.rx_sequence = Some(auth.sequence);
        }
        self.last_rx = Some(now);
        self.remote_discriminator = packet.my_discriminator;
        self.remote_state = packet.state;
        self.remote_desired_tx = Duration::from_micros(u64::from(packet.desired_min_tx_us));
        self.remote_required_rx = Duration::from_micros(u64::from(packet.required_min_rx_us));
        self.remote_detect_mult = packet.detect_mult;
        if packet.final_ && self.polling {
            self.polling = false;
            // The peer has our new desired TX: it may take effect.
            self.tx_interval = self.desired_tx;
        }
        if packet.poll {
            self.final_due = true;
            self.next_tx = now;
        }

        let change = match (self.state, packet.state) {
            (State::AdminDown, _) => None,
            (State::Down | State::Init | State::Up, State::AdminDown) if self.state != State::Down => {
                Some(self.go(State::Down, Diag::NeighborSignaledDown as u8, now))
            }
            (_, State::AdminDown) => None,
            (State::Down, State::Down) => Some(self.go(State::Init, 0, now)),
            (State::Down, State::Init) | (State::Init, State::Init | State::Up) => Some(self.go(State::Up, 0, now)),
            (State::Up, State::Down) => Some(self.go(State::Down, Diag::NeighborSignaledDown as u8, now)),
            _ => None,
        };
        // A packet from the peer restarts the detection timer, in every
        // state: in Down its expiry forgets the peer's discriminator.
        self.detect_deadline = self.detection_time().map(|detect| now + detect);
        Ok(change)
    }

    /// Expires the detection timer if `now` is past it (Init or Up: the
    /// session goes Down), and forgets the peer's sequence number once it
    /// has been silent for twice the detection time (§6.8.1: a restarted
    /// peer starts anew).
    pub fn expire(&mut self, now: Duration) -> Option<Change> {
        if let (Some(last), Some(detect)) = (self.last_rx, self.detection_time()) {
            if now >= last + 2 * detect {
                self.rx_sequence = None;
            }
        }
        let deadline = self.detect_deadline?;
        if now < deadline {
            return None;
        }
        self.detect_deadline = None;
        self.remote_discriminator = 0;
        matches!(self.state, State::Init | State::Up).then(|| self.go(State::Down, Diag::DetectionTimeExpired as u8, now))
    }

    /// Whether a packet is due at `now`.
    pub fn transmit_due(&self, now: Duration) -> bool {
        now >= self.next_tx
    }

    /// The packet to send now, as bytes, and schedules the next one;
    /// `jitter` in [0, 1) takes up to a quarter off the interval (a tenth
    /// at least with a multiplier of 1, §6.8.7), so sessions do not
    /// synchronise.
    pub fn transmit(&mut self, now: Duration, jitter: f64) -> Vec<u8> {
        let packet = Control {
            diag: self.diag,
            poll: self.polling && !self.final_due,
            final_: self.final_due,
            ..Control::new(
                self.state,
                self.local_discriminator,
                self.remote_discriminator,
                self.settings.detect_mult,
                micros(self.desired_tx),
                micros(self.settings.interval),
            )
        };
        self.final_due = false;
        let key = self.settings.key.as_ref().map(|key| {
            // Meticulous: a new number every packet; keyed: allowed to
            // repeat, and we advance it anyway.
            self.tx_sequence = self.tx_sequence.wrapping_add(1);
            (key, self.tx_sequence)
        });
        let bytes = packet.encode(key);
        let interval = self.tx_interval.max(self.remote_required_rx);
        let cut = if self.settings.detect_mult == 1 { 0.1 + 0.15 * jitter } else { 0.25 * jitter };
        self.next_tx = now + interval.mul_f64(1.0 - cut.clamp(0.0, 0.25));
        bytes
    }

    /// Moves to `to` for `diag`, adjusting our advertised pace: the
    /// configured interval once Up, one packet a second otherwise.
    fn go(&mut self, to: State, diag: u8, now: Duration) -> Change {
        let change = Change { from: self.state, to, diag };
        self.state = to;
        self.diag = diag;
        let desired = if to == State::Up { self.settings.interval } else { SLOW_TX };
        if desired != self.desired_tx {
            self.desired_tx = desired;
            if desired < self.tx_interval || to != State::Up {
                // Faster takes effect at once (§6.8.3); leaving Up, the
                // slow pace is what the RFC asks for.
                self.tx_interval = desired;
            }
            if to == State::Up {
                self.polling = true;
                self.next_tx = now;
            } else {
                self.polling = false;
            }
        }
        change
    }

    fn check_sequence(&self, kind: AuthType, sequence: u32, detect_mult: u8) -> Result<(), BfdError> {
        let Some(last) = self.rx_sequence else { return Ok(()) };
        // Serial arithmetic: how far past the last one this number is.
        let ahead = sequence.wrapping_sub(last);
        let window = 3 * u32::from(detect_mult);
        let fresh = match kind {
            AuthType::MeticulousKeyedSha1 => (1..=window).contains(&ahead),
            AuthType::KeyedSha1 => ahead <= window,
        };
        if fresh {
            Ok(())
        } else {
            Err(BfdError::AuthReplayed(sequence))
        }
    }
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn settings(key: Option<AuthKey>) -> Settings {
        Settings { interval: 10 * MS, detect_mult: 3, key }
    }

    /// Runs two sessions against each other, delivering every packet at
    /// once, until `until`; returns each side's changes.
    fn exchange(a: &mut Session, b: &mut Session, from: Duration, until: Duration) -> (Vec<Change>, Vec<Change>) {
        let (mut ca, mut cb) = (Vec::new(), Vec::new());
        let mut now = from;
        let deliver = |tx: &mut Session, rx: &mut Session, changes: &mut Vec<Change>, now| {
            if tx.transmit_due(now) {
                let wire = tx.transmit(now, 0.5);
                let packet = Control::decode(&wire).unwrap();
                changes.extend(rx.receive(&wire, &packet, now).unwrap());
            }
        };
        while now < until {
            deliver(a, b, &mut cb, now);
            deliver(b, a, &mut ca, now);
            ca.extend(a.expire(now));
            cb.extend(b.expire(now));
            now += MS;
        }
        (ca, cb)
    }

    fn states(changes: &[Change]) -> Vec<State> {
        changes.iter().map(|c| c.to).collect()
    }

    #[test]
    fn two_sessions_come_up_through_init_and_speed_up_by_a_poll_sequence() {
        let mut a = Session::new(settings(None), 0xa, 0, Duration::ZERO);
        let mut b = Session::new(settings(None), 0xb, 0, Duration::ZERO);
        let (ca, cb) = exchange(&mut a, &mut b, Duration::ZERO, 3 * SLOW_TX);
        // b hears a's Down first (a sends first), goes Init; a hears Init, Up.
        assert_eq!(states(&cb), [State::Init, State::Up]);
        assert_eq!(states(&ca), [State::Up]);
        assert_eq!((a.remote_discriminator(), b.remote_discriminator()), (0xb, 0xa));
        // Both poll their faster pace through: they now send every ~10 ms.
        assert!(!a.polling && !b.polling);
        assert_eq!((a.tx_interval, b.tx_interval), (10 * MS, 10 * MS));
        assert_eq!(a.detection_time(), Some(30 * MS));
    }

    #[test]
    fn silence_for_the_detection_time_takes_the_session_down_and_no_sooner() {
        let mut a = Session::new(settings(None), 1, 0, Duration::ZERO);
        let mut b = Session::new(settings(None), 2, 0, Duration::ZERO);
        exchange(&mut a, &mut b, Duration::ZERO, 3 * SLOW_TX);
        assert_eq!(a.state(), State::Up);
        // b goes silent at 3 s: a's timer was restarted by b's last packet,
        // sent within the last 10 ms.
        let silent = 3 * SLOW_TX;
        assert_eq!(a.expire(silent + 19 * MS), None, "under the 30 ms detection time");
        let change = a.expire(silent + 31 * MS).expect("past 30 ms since the last packet");
        assert_eq!((change.from, change.to, change.diag), (State::Up, State::Down, 1));
        assert_eq!(a.remote_discriminator(), 0, "forgotten: a restarted peer is welcome");
        // Back to one packet a second while down.
        a.transmit(silent + 31 * MS, 0.0);
        assert_eq!(a.next_tx - (silent + 31 * MS), SLOW_TX);
    }

    #[test]
    fn a_peer_saying_down_or_admin_down_takes_an_up_session_down() {
        for said in [State::Down, State::AdminDown] {
            let mut a = Session::new(settings(None), 1, 0, Duration::ZERO);
            let mut b = Session::new(settings(None), 2, 0, Duration::ZERO);
            exchange(&mut a, &mut b, Duration::ZERO, 3 * SLOW_TX);
            let mut packet = Control::decode(&b.transmit(3 * SLOW_TX, 0.0)).unwrap();
            packet.state = said;
            let wire = packet.encode(None);
            let change = a.receive(&wire, &packet, 3 * SLOW_TX).unwrap().unwrap();
            assert_eq!((change.to, change.diag), (State::Down, 3), "{said}");
        }
    }

    #[test]
    fn a_poll_is_answered_at_once_with_final() {
        let mut a = Session::new(settings(None), 1, 0, Duration::ZERO);
        let mut b = Session::new(settings(None), 2, 0, Duration::ZERO);
        exchange(&mut a, &mut b, Duration::ZERO, 3 * SLOW_TX);
        let now = 3 * SLOW_TX + 2 * MS;
        let mut poll = Control::decode(&b.transmit(now, 0.0)).unwrap();
        poll.poll = true;
        a.receive(&poll.encode(None), &poll, now).unwrap();
        assert!(a.transmit_due(now), "the answer does not wait for the interval");
        let answer = Control::decode(&a.transmit(now, 0.0)).unwrap();
        assert!(answer.final_ && !answer.poll);
    }

    #[test]
    fn a_packet_for_another_discriminator_is_not_this_sessions() {
        let mut a = Session::new(settings(None), 1, 0, Duration::ZERO);
        let mut packet = Control::decode(&Session::new(settings(None), 9, 0, Duration::ZERO).transmit(Duration::ZERO, 0.0)).unwrap();
        packet.your_discriminator = 77;
        packet.state = State::Init;
        let wire = packet.encode(None);
        assert_eq!(a.receive(&wire, &packet, Duration::ZERO), Err(BfdError::UnknownSession));
        assert_eq!(a.state(), State::Down);
    }

    #[test]
    fn meticulous_sha1_sessions_come_up_and_refuse_a_replayed_packet() {
        let key = AuthKey { kind: AuthType::MeticulousKeyedSha1, key_id: 1, secret: b"region-bfd-key".to_vec() };
        let mut a = Session::new(settings(Some(key.clone())), 1, 500, Duration::ZERO);
        let mut b = Session::new(settings(Some(key)), 2, 7_000_000, Duration::ZERO);
        exchange(&mut a, &mut b, Duration::ZERO, 3 * SLOW_TX);
        assert_eq!((a.state(), b.state()), (State::Up, State::Up));
        let now = 3 * SLOW_TX;
        let wire = b.transmit(now, 0.0);
        let packet = Control::decode(&wire).unwrap();
        assert_eq!(a.receive(&wire, &packet, now), Ok(None));
        let replayed = a.receive(&wire, &packet, now + MS);
        assert_eq!(replayed, Err(BfdError::AuthReplayed(packet.auth.unwrap().sequence)));
        // And an unauthenticated packet is refused by a keyed session.
        let plain = Control { auth: None, ..packet };
        assert_eq!(a.receive(&plain.encode(None), &plain, now), Err(BfdError::AuthMissing));
    }

    #[test]
    fn a_keyed_peer_that_restarts_with_other_sequence_numbers_is_taken_back() {
        let key = AuthKey { kind: AuthType::MeticulousKeyedSha1, key_id: 1, secret: b"region-bfd-key".to_vec() };
        let mut a = Session::new(settings(Some(key.clone())), 1, 10, Duration::ZERO);
        let mut b = Session::new(settings(Some(key.clone())), 2, 20, Duration::ZERO);
        exchange(&mut a, &mut b, Duration::ZERO, 3 * SLOW_TX);
        assert_eq!(a.state(), State::Up);
        // b restarts far away in sequence space, after a's detection time.
        let mut restarted = Session::new(settings(Some(key)), 3, 2_000_000_000, 3 * SLOW_TX);
        let back = 3 * SLOW_TX + 200 * MS;
        a.expire(back);
        assert_eq!(a.state(), State::Down);
        let (changes, _) = exchange(&mut a, &mut restarted, back, back + 3 * SLOW_TX);
        assert_eq!(states(&changes).last(), Some(&State::Up), "the restarted peer's numbers are taken");
    }

    #[test]
    fn with_a_detect_multiplier_of_one_the_interval_loses_a_tenth_to_a_quarter() {
        let one = Settings { detect_mult: 1, ..settings(None) };
        let mut a = Session::new(one, 1, 0, Duration::ZERO);
        a.transmit(Duration::ZERO, 0.0);
        assert_eq!(a.next_tx, SLOW_TX.mul_f64(0.9));
        a.transmit(Duration::ZERO, 0.999);
        assert!(a.next_tx >= SLOW_TX.mul_f64(0.75) && a.next_tx < SLOW_TX.mul_f64(0.76), "{:?}", a.next_tx);
    }

    #[test]
    fn the_transmit_interval_is_jittered_by_at_most_a_quarter() {
        let mut a = Session::new(settings(None), 1, 0, Duration::ZERO);
        for (jitter, expected) in [(0.0, SLOW_TX), (0.999, SLOW_TX.mul_f64(1.0 - 0.25 * 0.999))] {
            a.transmit(Duration::ZERO, jitter);
            assert_eq!(a.next_tx, expected);
        }
    }
}
