//! The BFD checks' edge: one task runs every BFD session of the config on
//! the checkers' runtime. It receives on UDP 3784 (RFC 5881), one socket
//! for all sessions, demultiplexed by discriminator (or, before the peer
//! knows ours, by its address); each session sends from a port of its own
//! in 49152-65535 with TTL 255. A session's state changes are the check's
//! results: Up is a success, leaving Up a failure, and while it is not Up
//! a failure is reported once a second so a silent peer gets a verdict.
//! What the decoder or a session refuses is counted by cause.

use std::{
    collections::BTreeMap,
    io,
    mem::MaybeUninit,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use redirector_proto::{
    bfd::{
        packet::{self, AuthKey, BfdError, Control, Diag, State},
        session::{Change, Session, Settings, SLOW_TX},
    },
    probe::{Outcome, ProbeResult},
};
use tokio::{io::Interest, net::UdpSocket, sync::mpsc, time::sleep_until};
use tracing::{info, warn};

use crate::{controller::ProbeReport, health::Probe};

/// One BFD check: where it reports, whom it talks to, how.
pub struct Peer {
    pub region: usize,
    pub check: usize,
    pub address: Ipv4Addr,
    pub settings: Settings,
}

/// What outlives a configuration's BFD task: the receiving socket (a
/// reload starts the next task before the last one has ended, and both
/// cannot bind 3784) and the refusal counters.
#[derive(Debug, Default)]
pub struct Shared {
    pub rejected: Rejected,
    receiver: Mutex<Option<std::net::UdpSocket>>,
}

impl Shared {
    /// The receiving socket, bound the first time; each task registers a
    /// duplicate of it with its own runtime.
    fn receiver(&self) -> io::Result<UdpSocket> {
        let mut bound = self.receiver.lock().unwrap_or_else(|e| e.into_inner());
        if bound.is_none() {
            *bound = Some(receive_socket()?);
        }
        UdpSocket::from_std(bound.as_ref().expect("bound above").try_clone()?)
    }
}

/// Datagrams refused, by cause ([`BfdError::name`]), for the metrics.
#[derive(Debug, Default)]
pub struct Rejected(pub [AtomicU64; REJECT_CAUSES.len()]);

/// Every cause the counters keep, in the metrics' order.
pub const REJECT_CAUSES: [&str; 9] =
    ["short", "version", "length", "detect_mult_zero", "multipoint", "discriminator", "unknown_session", "authentication", "ttl"];

impl Rejected {
    fn count(&self, error: &BfdError) {
        if let Some(i) = REJECT_CAUSES.iter().position(|c| *c == error.name()) {
            self.0[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        REJECT_CAUSES.iter().zip(&self.0).map(|(c, n)| (*c, n.load(Ordering::Relaxed))).collect()
    }
}

struct Running {
    peer: Peer,
    session: Session,
    socket: UdpSocket,
    /// When this task started it: a session that never came up gets its
    /// verdict counted from here.
    started: Duration,
    /// When a not-Up session last reported its failure.
    reported_down: Option<Duration>,
}

/// Runs `peers`' sessions until the controller goes (its channel closes)
/// or the task is aborted (a reload). Times count from `origin`.
pub async fn run(
    peers: Vec<Peer>,
    generation: u64,
    origin: Instant,
    reports: mpsc::Sender<ProbeReport>,
    shared: Arc<Shared>,
) {
    let now = || origin.elapsed();
    let report = |region: usize, check: usize, outcome: Outcome| ProbeReport {
        generation,
        region,
        check,
        probe: Probe::new(now(), ProbeResult { outcome, latency: Duration::ZERO }),
        heartbeat: None,
    };
    let sockets = shared.receiver().and_then(|receiver| {
        let senders = (0..peers.len()).map(send_socket).collect::<io::Result<Vec<_>>>()?;
        Ok((receiver, senders))
    });
    let (receiver, senders) = match sockets {
        Ok(sockets) => sockets,
        Err(e) => {
            // No session can run: the checks fail, saying why, rather than
            // leave their regions on their last verdict.
            warn!("bfd: {e}; every BFD check fails");
            let why = format!("bfd: no socket on this gateway: {e}");
            loop {
                for peer in &peers {
                    if reports.send(report(peer.region, peer.check, Outcome::Failure(why.clone()))).await.is_err() {
                        return;
                    }
                }
                tokio::time::sleep(SLOW_TX).await;
            }
        }
    };
    let mut sessions = Vec::new();
    let mut by_discriminator = BTreeMap::new();
    for (peer, socket) in peers.into_iter().zip(senders) {
        // Discriminators: random, nonzero, unique among this task's.
        let discriminator = loop {
            let d = rand_u32();
            if d != 0 && !by_discriminator.contains_key(&d) {
                break d;
            }
        };
        by_discriminator.insert(discriminator, sessions.len());
        let session = Session::new(peer.settings.clone(), discriminator, rand_u32(), now());
        sessions.push(Running { peer, session, socket, started: now(), reported_down: None });
    }
    let report = |running: &Running, outcome: Outcome| report(running.peer.region, running.peer.check, outcome);
    let mut buf = [0u8; 512];
    loop {
        let next = sessions.iter().map(|s| s.session.next_deadline()).min().unwrap_or(SLOW_TX);
        let deadline = tokio::time::Instant::from_std(origin + next);
        tokio::select! {
            received = recv_with_ttl(&receiver, &mut buf) => {
                let (len, from, ttl) = match received {
                    Ok(got) => got,
                    Err(e) => {
                        warn!("bfd: receiving: {e}");
                        continue;
                    }
                };
                let datagram = &buf[..len];
                let at = now();
                let found = Control::decode(datagram).and_then(|packet| {
                    let index = match packet.your_discriminator {
                        0 => sessions.iter().position(|s| s.peer.address == *from.ip()),
                        ours => by_discriminator.get(&ours).copied(),
                    }
                    .ok_or(BfdError::UnknownSession)?;
                    let running = &mut sessions[index];
                    // GTSM (RFC 5881 §5): unauthenticated packets must come
                    // from the neighbour itself.
                    if running.peer.settings.key.is_none() && ttl != Some(packet::TTL) {
                        return Err(BfdError::Ttl(ttl.unwrap_or(0)));
                    }
                    if running.peer.address != *from.ip() {
                        return Err(BfdError::UnknownSession);
                    }
                    Ok((index, running.session.receive(datagram, &packet, at)?))
                });
                match found {
                    Ok((index, Some(change))) => {
                        if !announce(&mut sessions[index], change, at, &reports, &report).await {
                            return;
                        }
                    }
                    Ok((_, None)) => {}
                    Err(error) => shared.rejected.count(&error),
                }
            }
            _ = sleep_until(deadline) => {
                let at = now();
                for running in sessions.iter_mut() {
                    if let Some(change) = running.session.expire(at) {
                        if !announce(running, change, at, &reports, &report).await {
                            return;
                        }
                    }
                    // Not Up: a failure once a second, the first once a
                    // silent peer had time to answer.
                    let due = match running.reported_down {
                        None => at >= running.started + first_verdict(&running.peer),
                        Some(last) => at.saturating_sub(last) >= SLOW_TX,
                    };
                    if running.session.state() != State::Up && due {
                        running.reported_down = Some(at);
                        if reports.send(report(running, down_outcome(&running.session))).await.is_err() {
                            return;
                        }
                    }
                    if running.session.transmit_due(at) {
                        let bytes = running.session.transmit(at, jitter());
                        let to = SocketAddrV4::new(running.peer.address, packet::PORT);
                        if let Err(e) = running.socket.send_to(&bytes, to).await {
                            warn!("bfd {}: sending: {e}", running.peer.address);
                        }
                    }
                }
            }
        }
    }
}

/// A session that never came up gets its verdict (down) once the peer had
/// time to answer at the slow pace: its multiplier's worth of seconds.
fn first_verdict(peer: &Peer) -> Duration {
    SLOW_TX * u32::from(peer.settings.detect_mult.max(1)) + SLOW_TX
}

/// Logs a state change and reports it: reaching Up is a success, leaving
/// it a failure saying why. False once the controller is gone.
async fn announce(
    running: &mut Running,
    change: Change,
    at: Duration,
    reports: &mpsc::Sender<ProbeReport>,
    report: &impl Fn(&Running, Outcome) -> ProbeReport,
) -> bool {
    info!(
        "bfd {}: {} → {} ({})",
        running.peer.address,
        change.from,
        change.to,
        Diag::describe(change.diag)
    );
    let outcome = if change.to == State::Up {
        running.reported_down = None;
        Outcome::Success
    } else if change.from == State::Up {
        running.reported_down = Some(at);
        down_outcome(&running.session)
    } else {
        // Down → Init is the handshake under way, not a verdict: a
        // session that never comes up gets one from the timer.
        return true;
    };
    reports.send(report(running, outcome)).await.is_ok()
}

fn down_outcome(session: &Session) -> Outcome {
    Outcome::Failure(format!("session {} ({})", session.state(), Diag::describe(session.diag())))
}

/// UDP 3784 on every address, telling each datagram's TTL.
fn receive_socket() -> io::Result<std::net::UdpSocket> {
    let socket = std::net::UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, packet::PORT)))?;
    socket.set_nonblocking(true)?;
    let on: libc::c_int = 1;
    // SAFETY: a valid fd and a c_int option value of its size.
    let set = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_RECVTTL,
            &on as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if set != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(socket)
}

/// A port of the session's own in 49152-65535 (RFC 5881 §4), TTL 255.
fn send_socket(index: usize) -> io::Result<UdpSocket> {
    let span = u32::from(packet::SOURCE_PORTS.end() - packet::SOURCE_PORTS.start()) + 1;
    let start = rand_u32() % span;
    let mut last = None;
    for attempt in 0..64u32 {
        let port = *packet::SOURCE_PORTS.start() + ((start + attempt * 97 + index as u32) % span) as u16;
        match std::net::UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))) {
            Ok(socket) => {
                socket.set_ttl(u32::from(packet::TTL))?;
                socket.set_nonblocking(true)?;
                return UdpSocket::from_std(socket);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no port")))
}

/// One datagram, its source and the TTL it arrived with.
async fn recv_with_ttl(socket: &UdpSocket, buf: &mut [u8]) -> io::Result<(usize, SocketAddrV4, Option<u8>)> {
    socket.async_io(Interest::READABLE, || recvmsg_ttl(socket.as_raw_fd(), buf)).await
}

fn recvmsg_ttl(fd: i32, buf: &mut [u8]) -> io::Result<(usize, SocketAddrV4, Option<u8>)> {
    let mut from = MaybeUninit::<libc::sockaddr_in>::zeroed();
    let mut control = [0u64; 8];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr() as *mut libc::c_void, iov_len: buf.len() };
    // SAFETY: msghdr is plain data; zeroed is a valid start.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = from.as_mut_ptr() as *mut libc::c_void;
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: every pointer in msg points at a live buffer of the size given.
    let n = unsafe { libc::recvmsg(fd, &mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut ttl = None;
    // SAFETY: the kernel filled msg's control buffer; CMSG_* walk it within
    // msg_controllen.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let holds_int = (*cmsg).cmsg_len as usize >= libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as usize;
            if (*cmsg).cmsg_level == libc::IPPROTO_IP && (*cmsg).cmsg_type == libc::IP_TTL && holds_int {
                ttl = Some(std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const libc::c_int) as u8);
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    // SAFETY: recvmsg wrote an AF_INET address (the socket is IPv4).
    let from = unsafe { from.assume_init() };
    let address = SocketAddrV4::new(Ipv4Addr::from(u32::from_be(from.sin_addr.s_addr)), u16::from_be(from.sin_port));
    Ok((n as usize, address, ttl))
}

fn rand_u32() -> u32 {
    let mut bytes = [0u8; 4];
    // SAFETY: a buffer of 4 bytes for getrandom to fill.
    let got = unsafe { libc::getrandom(bytes.as_mut_ptr() as *mut libc::c_void, 4, 0) };
    if got == 4 {
        u32::from_ne_bytes(bytes)
    } else {
        std::process::id() ^ 0x5eed_b0fd
    }
}

/// In [0, 1): how much of its quarter a packet's interval loses.
fn jitter() -> f64 {
    f64::from(rand_u32()) / (f64::from(u32::MAX) + 1.0)
}

/// A BFD key file: 1 to 20 bytes, used as they are (a trailing newline
/// included: write the file with `printf`, not `echo`).
pub fn load_key(path: &std::path::Path, key_id: u8) -> anyhow::Result<AuthKey> {
    let secret = redirector_proto::file::read_small(path, packet::MAX_KEY_LEN as u64)
        .map_err(|e| anyhow::anyhow!("{}: {e} (a BFD key is 1 to {} bytes)", path.display(), packet::MAX_KEY_LEN))?;
    anyhow::ensure!(!secret.is_empty(), "{}: empty (a BFD key is 1 to {} bytes)", path.display(), packet::MAX_KEY_LEN);
    Ok(AuthKey { kind: packet::AuthType::MeticulousKeyedSha1, key_id, secret })
}
