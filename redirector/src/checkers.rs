//! The checker tasks: one per check of every region, each probing once per
//! interval and sending every result to the controller. They run on a
//! runtime thread of their own, so a result is timestamped when it comes
//! in, whatever the controller is busy with (a table build, a burst of
//! operator requests).

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use redirector_proto::{
    bfd::{packet::AuthKey, session::Settings},
    heartbeat::{Key, Verifier},
    probe::{self, HttpCheck, Outcome, ProbeResult},
};
use tokio::{
    net::UdpSocket,
    runtime::Handle,
    sync::mpsc,
    task::JoinHandle,
    time::{interval, MissedTickBehavior},
};
use tracing::warn;

use crate::{
    bfd,
    config::{Check, Config},
    controller::{unix_ms, HeartbeatNews, ProbeReport},
    health::Probe,
};

/// Heartbeat and BFD keys, read with the config so that a missing key file
/// refuses the config (at start or reload) rather than failing a check
/// later. By region, then check.
pub struct Keys(Vec<Vec<Option<CheckKey>>>);

enum CheckKey {
    Heartbeat(Key),
    Bfd(AuthKey),
}

impl Keys {
    pub fn load(config: &Config) -> Result<Keys> {
        let mut keys = Vec::new();
        for region in &config.regions {
            let mut region_keys = Vec::new();
            for check in &region.checks {
                region_keys.push(match check {
                    Check::Heartbeat { key_file: Some(file), .. } => Some(CheckKey::Heartbeat(
                        Key::load(file)
                            .with_context(|| format!("region {}: heartbeat key {}", region.name, file.display()))?,
                    )),
                    Check::Bfd { key_file: Some(file), key_id, .. } => Some(CheckKey::Bfd(
                        bfd::load_key(file, *key_id).with_context(|| format!("region {}: bfd key", region.name))?,
                    )),
                    _ => None,
                });
            }
            keys.push(region_keys);
        }
        Ok(Keys(keys))
    }

    fn heartbeat(&self, region: usize, check: usize) -> Option<Key> {
        match &self.0[region][check] {
            Some(CheckKey::Heartbeat(key)) => Some(key.clone()),
            _ => None,
        }
    }

    fn bfd(&self, region: usize, check: usize) -> Option<AuthKey> {
        match &self.0[region][check] {
            Some(CheckKey::Bfd(key)) => Some(key.clone()),
            _ => None,
        }
    }
}

/// The running checkers of one configuration.
pub struct Checkers(Vec<JoinHandle<()>>);

impl Checkers {
    /// Starts a checker for every check of `config` on `runtime` (one task
    /// for every BFD session); their reports carry `generation` and their
    /// times count from `origin`.
    pub fn spawn(
        runtime: &Handle,
        config: &Config,
        keys: &Keys,
        generation: u64,
        origin: Instant,
        reports: mpsc::Sender<ProbeReport>,
        bfd: Arc<bfd::Shared>,
    ) -> Checkers {
        let mut handles = Vec::new();
        let mut bfd_peers = Vec::new();
        for (r, region) in config.regions.iter().enumerate() {
            for (c, check) in region.checks.iter().enumerate() {
                let checker = Checker {
                    generation,
                    region: r,
                    check: c,
                    interval: region.health.interval,
                    timeout: region.health.timeout,
                    origin,
                    reports: reports.clone(),
                };
                handles.push(match check.clone() {
                    Check::Heartbeat { address, .. } => {
                        runtime.spawn(checker.heartbeat(address, keys.heartbeat(r, c)))
                    }
                    Check::Http(http) => runtime.spawn(checker.http(http)),
                    Check::Tcp { address } => runtime.spawn(checker.tcp(address)),
                    Check::Bfd { address, .. } => {
                        bfd_peers.push(bfd::Peer {
                            region: r,
                            check: c,
                            address,
                            settings: Settings {
                                interval: region.health.interval,
                                detect_mult: region.health.fall.clamp(1, 255) as u8,
                                key: keys.bfd(r, c),
                            },
                        });
                        continue;
                    }
                });
            }
        }
        if !bfd_peers.is_empty() {
            handles.push(runtime.spawn(bfd::run(bfd_peers, generation, origin, reports, bfd)));
        }
        Checkers(handles)
    }
}

impl Drop for Checkers {
    fn drop(&mut self) {
        for handle in &self.0 {
            handle.abort();
        }
    }
}

/// One check of one region.
struct Checker {
    generation: u64,
    region: usize,
    check: usize,
    interval: Duration,
    timeout: Duration,
    origin: Instant,
    reports: mpsc::Sender<ProbeReport>,
}

/// A probe's timeout, counted from its tick rather than from when it got
/// to run (`late` after the tick). A probe that times out returns a little
/// after the next tick (timers fire on the millisecond after their
/// deadline); counted from its start, each timed-out probe pushed the next
/// one's deadline that much later, and in a black hole the misses drifted
/// 3-5 ms late by the third. Never less than half the timeout, so a probe
/// whose tick came late because this thread stalled still gets its chance.
fn probe_limit(timeout: Duration, late: Duration) -> Duration {
    timeout - late.min(timeout / 2)
}

impl Checker {
    /// Probes start on a fixed grid (what keeps them there when each one
    /// times out is [`probe_limit`]). After a stall of this thread longer
    /// than tokio forgives (5 ms), the missed ticks are skipped: the grid
    /// stays where it was, with no burst of probes to catch up.
    fn ticker(&self) -> tokio::time::Interval {
        let mut ticker = interval(self.interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
        ticker
    }

    fn limit(&self, tick: tokio::time::Instant) -> Duration {
        probe_limit(self.timeout, tokio::time::Instant::now().saturating_duration_since(tick))
    }

    /// False once the controller is gone.
    async fn send(&self, result: ProbeResult, heartbeat: Option<HeartbeatNews>) -> bool {
        let report = ProbeReport {
            generation: self.generation,
            region: self.region,
            check: self.check,
            probe: Probe::new(self.origin.elapsed(), result),
            heartbeat,
        };
        self.reports.send(report).await.is_ok()
    }

    async fn http(self, check: HttpCheck) {
        let mut ticker = self.ticker();
        loop {
            let tick = ticker.tick().await;
            if !self.send(probe::http(&check, self.limit(tick)).await, None).await {
                return;
            }
        }
    }

    async fn tcp(self, address: SocketAddr) {
        let mut ticker = self.ticker();
        loop {
            let tick = ticker.tick().await;
            if !self.send(probe::tcp(address, self.limit(tick)).await, None).await {
                return;
            }
        }
    }

    /// One request per interval; a request unanswered within the timeout
    /// is a miss. Replies are checked by the verifier (source, sequence,
    /// MAC) and the rejected ones only counted. A socket that cannot be
    /// made or a request that cannot be sent for want of local resources
    /// is reported as such, counted against nothing, and tried again next
    /// interval.
    async fn heartbeat(self, agent: SocketAddr, key: Option<Key>) {
        // Sequence numbers from the wall clock: replies to a previous run
        // can never match a request of this one.
        let first_seq = unix_ms().saturating_mul(1_000_000);
        let mut verifier = Verifier::new(agent, key, first_seq);
        let mut socket: Option<UdpSocket> = None;
        let mut ticker = self.ticker();
        let mut buf = [0u8; 512];
        loop {
            let receive = async {
                match &socket {
                    Some(socket) => socket.recv_from(&mut buf).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = ticker.tick() => {
                    let now = self.origin.elapsed();
                    for refused in verifier.expire(now, self.timeout) {
                        let outcome = match refused {
                            Some(why) => Outcome::Failure(format!("no reply but a refusal: {why}")),
                            None => Outcome::Timeout,
                        };
                        let missed = ProbeResult { outcome, latency: self.timeout };
                        let news = HeartbeatNews { report: None, counters: verifier.counters() };
                        if !self.send(missed, Some(news)).await {
                            return;
                        }
                    }
                    if socket.is_none() {
                        let unspecified: SocketAddr = if agent.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
                        match UdpSocket::bind(unspecified).await {
                            Ok(bound) => socket = Some(bound),
                            Err(e) => {
                                let failed = ProbeResult { outcome: Outcome::of_error(&e, "heartbeat socket"), latency: Duration::ZERO };
                                if !self.send(failed, None).await {
                                    return;
                                }
                                continue;
                            }
                        }
                    }
                    let request = verifier.request(now);
                    let sent = socket.as_ref().expect("bound above").send_to(&request, agent).await;
                    if let Err(e) = sent {
                        verifier.withdraw_last();
                        let failed = ProbeResult { outcome: Outcome::of_error(&e, "heartbeat send"), latency: Duration::ZERO };
                        if !self.send(failed, None).await {
                            return;
                        }
                    }
                }
                received = receive => {
                    let (len, from) = match received {
                        Ok(got) => got,
                        Err(e) => {
                            warn!("heartbeat from {agent}: {e}");
                            continue;
                        }
                    };
                    let now = self.origin.elapsed();
                    if let Ok(accepted) = verifier.accept(from, &buf[..len], now) {
                        let answered = ProbeResult { outcome: accepted.report.outcome(), latency: accepted.rtt };
                        let news = HeartbeatNews { report: Some(accepted.report), counters: verifier.counters() };
                        if !self.send(answered, Some(news)).await {
                            return;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_ends_on_its_ticks_deadline_unless_its_tick_came_very_late() {
        let ms = Duration::from_millis;
        // On time, and a millisecond late after a timed-out probe: the
        // deadline stays tick + timeout.
        assert_eq!(probe_limit(ms(10), ms(0)), ms(10));
        assert_eq!(probe_limit(ms(10), ms(1)), ms(9));
        // A stalled thread: half the timeout still.
        assert_eq!(probe_limit(ms(10), ms(7)), ms(5));
        assert_eq!(probe_limit(ms(10), ms(500)), ms(5));
    }
}
