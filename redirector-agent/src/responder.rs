//! Answers redirectord's heartbeat requests with the latest report.

use std::{convert::Infallible, io, net::SocketAddr, time::Duration};

use redirector_proto::heartbeat::{self, DecodeError, Key, MESSAGE_LEN};
use tokio::{
    net::UdpSocket,
    time::{interval, MissedTickBehavior},
};
use tracing::{debug, info};

use crate::report::LatestReport;

/// Requests answered and dropped since the responder started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResponderCounters {
    pub answered: u64,
    /// Wrong length, magic or kind, or a field out of range.
    pub malformed: u64,
    /// A daemon speaking another heartbeat version: worth its own count,
    /// as it means the two ends were upgraded apart.
    pub bad_version: u64,
    /// MAC missing, wrong, or present where no key is configured.
    pub unauthenticated: u64,
    /// Replies the kernel refused to send.
    pub send_errors: u64,
}

impl ResponderCounters {
    fn dropped(&self) -> u64 {
        self.malformed + self.bad_version + self.unauthenticated
    }

    fn since(&self, earlier: &ResponderCounters) -> ResponderCounters {
        ResponderCounters {
            answered: self.answered - earlier.answered,
            malformed: self.malformed - earlier.malformed,
            bad_version: self.bad_version - earlier.bad_version,
            unauthenticated: self.unauthenticated - earlier.unauthenticated,
            send_errors: self.send_errors - earlier.send_errors,
        }
    }
}

impl std::fmt::Display for ResponderCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} answered, {} malformed, {} of another version, {} unauthenticated dropped, {} send errors",
            self.answered, self.malformed, self.bad_version, self.unauthenticated, self.send_errors
        )
    }
}

/// Answers heartbeat requests on one socket with the latest report.
pub struct Responder {
    socket: UdpSocket,
    key: Option<Key>,
    report: LatestReport,
    counters: ResponderCounters,
}

impl Responder {
    pub fn new(socket: UdpSocket, key: Option<Key>, report: LatestReport) -> Self {
        Responder {
            socket,
            key,
            report,
            counters: ResponderCounters::default(),
        }
    }

    pub fn counters(&self) -> ResponderCounters {
        self.counters
    }

    /// Answers until the socket fails. Every `summary_every` it logs what
    /// it dropped in that period, if anything: each drop is only logged at
    /// debug, so a misconfigured daemon would otherwise go unnoticed.
    pub async fn run(&mut self, summary_every: Duration) -> io::Result<Infallible> {
        // One byte more than a heartbeat: a longer datagram must show up as
        // too long, not be truncated into one that decodes.
        let mut buf = [0u8; MESSAGE_LEN + 1];
        let mut summary = interval(summary_every);
        summary.set_missed_tick_behavior(MissedTickBehavior::Delay);
        summary.tick().await;
        let mut last_summary = self.counters;
        loop {
            tokio::select! {
                received = self.socket.recv_from(&mut buf) => {
                    let (len, from) = received?;
                    self.handle(&buf[..len], from).await;
                }
                _ = summary.tick() => {
                    let period = self.counters.since(&last_summary);
                    if period.dropped() > 0 || period.send_errors > 0 {
                        info!("heartbeat in the last {summary_every:?}: {period}");
                    }
                    last_summary = self.counters;
                }
            }
        }
    }

    async fn handle(&mut self, request: &[u8], from: SocketAddr) {
        let c = &mut self.counters;
        match heartbeat::answer(request, self.key.as_ref(), self.report.get()) {
            Ok(reply) => match self.socket.send_to(&reply, from).await {
                Ok(_) => c.answered += 1,
                Err(e) => {
                    c.send_errors += 1;
                    debug!("heartbeat reply to {from}: {e}");
                }
            },
            Err(e) => {
                *match e {
                    DecodeError::Version(_) => &mut c.bad_version,
                    DecodeError::MissingMac | DecodeError::UnexpectedMac | DecodeError::BadMac => {
                        &mut c.unauthenticated
                    }
                    _ => &mut c.malformed,
                } += 1;
                debug!("heartbeat request from {from} refused: {e}");
                // A daemon with another key (or none) learns why at once.
                if let Some(refusal) = heartbeat::refusal(request, &e) {
                    if self.socket.send_to(&refusal, from).await.is_err() {
                        c.send_errors += 1;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use redirector_proto::heartbeat::{Refusal, Rejection, Report, ServiceCheck, Verifier};

    use super::*;

    const KEY: &str = "0123456789abcdef0123456789abcdef";

    /// Keys only load from files: one file, once, for every test.
    fn key() -> Key {
        static KEY_ONCE: std::sync::OnceLock<Key> = std::sync::OnceLock::new();
        KEY_ONCE
            .get_or_init(|| {
                let path = std::env::temp_dir()
                    .join(format!("redirector-agent-key-{}", std::process::id()));
                std::fs::write(&path, KEY).unwrap();
                let key = Key::load(&path).unwrap();
                std::fs::remove_file(&path).unwrap();
                key
            })
            .clone()
    }

    fn sample_report() -> Report {
        Report {
            service: ServiceCheck::Ok,
            cpu_permille: 321,
            active_connections: 17,
        }
    }

    async fn responder(key: Option<Key>) -> (Responder, SocketAddr) {
        responder_on("127.0.0.1:0", key).await
    }

    async fn responder_on(address: &str, key: Option<Key>) -> (Responder, SocketAddr) {
        let socket = UdpSocket::bind(address).await.unwrap();
        let addr = socket.local_addr().unwrap();
        let report = LatestReport::default();
        report.update(|r| *r = sample_report());
        (Responder::new(socket, key, report), addr)
    }

    /// Runs `client` against a running responder; returns its result and
    /// the responder's counters afterwards.
    async fn exchange<T>(
        mut responder: Responder,
        client: impl std::future::Future<Output = T>,
    ) -> (T, ResponderCounters) {
        let result = tokio::select! {
            r = responder.run(Duration::from_secs(60)) => panic!("responder ended: {r:?}"),
            t = client => t,
        };
        (result, responder.counters())
    }

    async fn receive(socket: &UdpSocket) -> (SocketAddr, Vec<u8>) {
        let mut buf = [0u8; 128];
        let (len, from) = tokio::time::timeout(Duration::from_secs(2), socket.recv_from(&mut buf))
            .await
            .expect("a reply")
            .unwrap();
        (from, buf[..len].to_vec())
    }

    #[tokio::test]
    async fn the_responder_answers_with_the_latest_report() {
        let (responder, agent) = responder(Some(key())).await;
        let report = responder.report.clone();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut verifier = Verifier::new(agent, Some(key()), 7);
        let ((first, second), counters) = exchange(responder, async {
            client
                .send_to(&verifier.request(Duration::from_millis(1)), agent)
                .await
                .unwrap();
            let (from, reply) = receive(&client).await;
            let first = verifier
                .accept(from, &reply, Duration::from_millis(2))
                .unwrap();
            report.update(|r| r.service = ServiceCheck::Failed);
            client
                .send_to(&verifier.request(Duration::from_millis(3)), agent)
                .await
                .unwrap();
            let (from, reply) = receive(&client).await;
            (
                first,
                verifier
                    .accept(from, &reply, Duration::from_millis(4))
                    .unwrap(),
            )
        })
        .await;
        assert_eq!((first.seq, first.report), (7, sample_report()));
        assert_eq!(second.seq, 8);
        assert_eq!(second.report.service, ServiceCheck::Failed);
        assert_eq!(counters.answered, 2);
    }

    /// One keyed heartbeat from a client bound at `client_bind` to `agent`,
    /// checked by the verifier as redirectord's heartbeat check checks it.
    async fn one_heartbeat(responder: Responder, client_bind: &str, agent: SocketAddr) -> u64 {
        let client = UdpSocket::bind(client_bind).await.unwrap();
        let mut verifier = Verifier::new(agent, Some(key()), 40);
        let (accepted, _) = exchange(responder, async {
            client.send_to(&verifier.request(Duration::from_millis(1)), agent).await.unwrap();
            let (from, reply) = receive(&client).await;
            verifier.accept(from, &reply, Duration::from_millis(2)).unwrap()
        })
        .await;
        accepted.seq
    }

    #[tokio::test]
    async fn the_responder_answers_over_ipv6_and_both_families_on_an_unspecified_ipv6_address() {
        let (responder, agent) = responder_on("[::1]:0", Some(key())).await;
        assert_eq!(one_heartbeat(responder, "[::1]:0", agent).await, 40);
        // `--listen [::]:PORT`: an IPv4 heartbeat is answered from the
        // IPv4 address it was sent to, which the check insists on.
        let (responder, dual) = responder_on("[::]:0", Some(key())).await;
        let over_ipv4 = SocketAddr::from(([127, 0, 0, 1], dual.port()));
        assert_eq!(one_heartbeat(responder, "127.0.0.1:0", over_ipv4).await, 40);
    }

    #[tokio::test]
    async fn a_keyed_responder_refuses_requests_without_the_key_and_drops_garbage() {
        let (responder, agent) = responder(Some(key())).await;
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut unkeyed = Verifier::new(agent, None, 100);
        let mut keyed = Verifier::new(agent, Some(key()), 200);
        let ((refusal, reply), counters) = exchange(responder, async {
            client
                .send_to(&unkeyed.request(Duration::ZERO), agent)
                .await
                .unwrap();
            client
                .send_to(&[0u8; MESSAGE_LEN + 1], agent)
                .await
                .unwrap();
            client
                .send_to(&keyed.request(Duration::ZERO), agent)
                .await
                .unwrap();
            // Loopback keeps order: a refusal of the unkeyed request, no
            // answer to the garbage, then the keyed request's reply.
            let (from, refused) = receive(&client).await;
            let refusal = unkeyed.accept(from, &refused, Duration::ZERO);
            let (from, reply) = receive(&client).await;
            (refusal, keyed.accept(from, &reply, Duration::ZERO))
        })
        .await;
        assert_eq!(refusal, Err(Rejection::Refused(Refusal::MissingMac)));
        assert_eq!(reply.map(|a| a.seq), Ok(200));
        assert_eq!(
            counters,
            ResponderCounters {
                answered: 1,
                malformed: 1,
                unauthenticated: 1,
                ..ResponderCounters::default()
            }
        );
    }
}
