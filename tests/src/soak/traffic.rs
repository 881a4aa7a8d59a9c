//! The soak's long-lived traffic: kept-alive HTTP connections that reopen
//! when one breaks, and UDP flows that keep sending; both record every
//! break, loss and move with the region the flow was on. (New requests are
//! the measuring client's, `crate::client::Measurement`.)

use std::{
    net::{SocketAddr, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::Result;

use super::verdict::Trouble;

/// How long a UDP flow waits for an answer before it sends the next
/// datagram.
const UDP_WAIT: Duration = Duration::from_millis(300);
use crate::{client::Session, netns::Netns};

/// What a kind of long-lived traffic saw.
#[derive(Debug, Default)]
pub struct TrafficLog {
    /// Connections (or UDP flows) opened.
    pub flows: u64,
    /// Requests answered (or datagrams answered).
    pub answered: u64,
    /// Requests (datagrams) that got no answer.
    pub lost: u64,
    /// Datagrams answered only after the next was sent (not lost).
    pub late: u64,
    /// Breaks and losses, with the region the flow was on.
    pub troubles: Vec<Trouble>,
    /// A flow answered by another region than before, with the region it
    /// left.
    pub moves: Vec<Trouble>,
}

impl TrafficLog {
    fn merge(&mut self, other: TrafficLog) {
        self.flows += other.flows;
        self.answered += other.answered;
        self.lost += other.lost;
        self.late += other.late;
        self.troubles.extend(other.troubles);
        self.moves.extend(other.moves);
    }
}

/// The region named in an answer: "I am DataVM on R2" or "R2 ...".
pub fn region_of(answer: &str) -> Option<u8> {
    answer.split_whitespace().find_map(|word| word.strip_prefix('R')?.parse().ok())
}

/// Worker threads that run until stopped (or for at most `limit`).
pub struct Workers {
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<TrafficLog>>,
}

impl Workers {
    /// `count` kept-alive HTTP connections to `target` from namespace
    /// `ns`, each asking every `pause`; a connection that breaks is
    /// recorded and replaced.
    pub fn kept(ns: &str, target: SocketAddr, count: usize, pause: Duration, t0: Instant, limit: Duration) -> Self {
        Self::spawn(count, limit, |stop| {
            let ns = ns.to_string();
            move || kept_connection(&ns, target, pause, t0, &stop)
        })
    }

    /// `count` UDP flows to `target` from namespace `ns`, each sending a
    /// datagram every `pause` and waiting `timeout` for its answer.
    pub fn udp(ns: &str, target: SocketAddr, count: usize, pause: Duration, t0: Instant, limit: Duration) -> Self {
        Self::spawn(count, limit, |stop| {
            let ns = ns.to_string();
            move || udp_flow(&ns, target, pause, t0, &stop).unwrap_or_default()
        })
    }

    fn spawn<F>(count: usize, limit: Duration, mut make: impl FnMut(Arc<AtomicBool>) -> F) -> Self
    where
        F: FnOnce() -> TrafficLog + Send + 'static,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let workers = (0..count)
            .map(|_| {
                let run = make(stop.clone());
                thread::spawn(run)
            })
            .collect();
        let deadline = stop.clone();
        thread::spawn(move || {
            thread::sleep(limit);
            deadline.store(true, Ordering::Relaxed);
        });
        Self { stop, workers }
    }

    pub fn stop(self) -> TrafficLog {
        self.stop.store(true, Ordering::Relaxed);
        let mut log = TrafficLog::default();
        for worker in self.workers {
            log.merge(worker.join().expect("traffic worker panicked"));
        }
        log
    }
}

fn kept_connection(ns: &str, target: SocketAddr, pause: Duration, t0: Instant, stop: &AtomicBool) -> TrafficLog {
    let mut log = TrafficLog::default();
    let Ok(ns) = Netns::attach(ns) else { return log };
    while !stop.load(Ordering::Relaxed) {
        // A connection that cannot open is a failed new request: the
        // measuring client judges those.
        let Ok(mut session) = Session::open(&ns, target, Duration::from_secs(2)) else {
            thread::sleep(Duration::from_millis(200));
            continue;
        };
        log.flows += 1;
        let mut region = None;
        let mut last_answer = t0.elapsed();
        while !stop.load(Ordering::Relaxed) {
            match session.get() {
                Ok(body) => {
                    let now = t0.elapsed();
                    let answered_by = region_of(&body);
                    if region.is_some() && answered_by != region {
                        let what = format!("kept connection moved from {region:?} to {answered_by:?}");
                        log.moves.push(Trouble { from: now, to: now, region, what, single: false });
                    }
                    region = answered_by;
                    last_answer = now;
                    log.answered += 1;
                }
                Err(e) => {
                    log.lost += 1;
                    let what = format!("kept connection on {region:?} broke: {e:#}");
                    log.troubles.push(Trouble { from: last_answer, to: t0.elapsed(), region, what, single: false });
                    break;
                }
            }
            thread::sleep(pause);
        }
    }
    log
}

fn udp_flow(ns: &str, target: SocketAddr, pause: Duration, t0: Instant, stop: &AtomicBool) -> Result<TrafficLog> {
    let mut log = TrafficLog { flows: 1, ..Default::default() };
    let socket = Netns::attach(ns)?.on_thread(|| {
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        socket.connect(target)?;
        Ok(socket)
    })?;
    socket.set_read_timeout(Some(UDP_WAIT))?;
    let mut region = None;
    let mut last_answer = t0.elapsed();
    // Datagrams not answered within UDP_WAIT: lost unless their answer
    // comes later (then only late).
    let mut unanswered: Vec<u64> = Vec::new();
    let mut buf = [0u8; 256];
    for seq in 0u64.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let _ = socket.send(seq.to_string().as_bytes());
        let answer = loop {
            match socket.recv(&mut buf) {
                Ok(n) => {
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let answered: Option<u64> = text.split_whitespace().nth(1).and_then(|s| s.parse().ok());
                    if answered == Some(seq) {
                        break Some(text);
                    }
                    if let Some(at) = unanswered.iter().position(|&s| Some(s) == answered) {
                        unanswered.remove(at);
                        log.late += 1;
                    }
                }
                Err(_) => break None,
            }
        };
        let now = t0.elapsed();
        match answer {
            Some(text) => {
                let answered_by = region_of(&text);
                if !unanswered.is_empty() {
                    log.lost += unanswered.len() as u64;
                    let what = format!("UDP flow on {region:?} lost {} datagrams", unanswered.len());
                    let single = unanswered.len() == 1;
                    log.troubles.push(Trouble { from: last_answer, to: now, region, what, single });
                    unanswered.clear();
                }
                if region.is_some() && answered_by != region {
                    let what = format!("UDP flow moved from {region:?} to {answered_by:?}");
                    log.moves.push(Trouble { from: last_answer, to: now, region, what, single: false });
                }
                region = answered_by;
                last_answer = now;
                log.answered += 1;
            }
            None => unanswered.push(seq),
        }
        thread::sleep(pause);
    }
    if !unanswered.is_empty() {
        log.lost += unanswered.len() as u64;
        let what = format!("UDP flow on {region:?} lost {} datagrams until the end", unanswered.len());
        log.troubles.push(Trouble { from: last_answer, to: t0.elapsed(), region, what, single: false });
    }
    Ok(log)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_name_their_region() {
        assert_eq!(region_of("I am DataVM on R2"), Some(2));
        assert_eq!(region_of("R13 4411"), Some(13));
        assert_eq!(region_of("nobody"), None);
    }
}
