//! Flow-state sync (`[sync]`): every flow this gateway pins is told to its
//! peers, and theirs are written into this gateway's table, so that any of
//! them can carry any flow on, both ways, to the same region.
//!
//! What goes out, over one UDP socket (the `listen` address, which is
//! where peers know this gateway from), in datagrams of
//! [`redirector_proto::sync`]:
//! - each flow as it enters the established table or is re-steered, read
//!   from the data plane's `FLOW_EVENTS` ring buffer as it happens;
//! - every [`SYNC_REFRESH_NS`](redirector_common::lifetime::SYNC_REFRESH_NS),
//!   the flows this gateway carried packets of since (the sweep reads them
//!   from the table), so a peer's copy lives as long as the flow does here;
//! - the flows the sweep deleted (closed or expired here), as closes;
//! - the whole table, to a peer that starts and asks for it;
//! - a keepalive (an empty batch) each second, so each side knows the
//!   other is there.
//!
//! A gateway that starts asks every peer for its table and says it is
//! ready (status, `redirectorctl status --json`) once each has sent it, or
//! was silent too long to wait for.
//!
//! All of it runs on a thread of its own, so a burst of records never
//! holds up the controller's probes.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use aya::maps::{MapData, RingBuf};
use redirector_common::SyncEvent;
use redirector_proto::{
    control::SyncView,
    key::Key,
    sync::{records_in, FlowRecord, Kind, Message, Receiver, Sender, MAX_DATAGRAM},
};
use sha2::{Digest, Sha256};
use tokio::{
    io::unix::AsyncFd,
    net::UdpSocket,
    sync::{mpsc, watch},
    time::sleep_until,
};
use tracing::{debug, info, warn};

use crate::{
    config::{Config, SyncSettings},
    dataplane::{
        flow_table::{coarse_monotonic_ns, FlowTable},
        ring_record, service_specs,
    },
};

pub mod peers;
pub mod records;
pub mod refresh;

use self::{peers::Peers, records::Applied};

/// Kernel socket buffers: a resync of a full table arrives faster than
/// one thread writes it to the map.
const SOCKET_BUFFER: usize = 8 << 20;
/// How often the status and metrics see this thread's state.
const PUBLISH_EVERY: Duration = Duration::from_millis(100);

/// What two gateways must agree on for a record to mean the same on both:
/// service ids, their addresses, and the endpoint each region serves them
/// at (region ids are positions in the config). Peers with another digest
/// are refused.
pub fn digest(config: &Config) -> u64 {
    let mut hash = Sha256::new();
    for region in &config.regions {
        hash.update(format!("region {}\n", region.name));
    }
    for service in service_specs(config) {
        hash.update(format!("service {} {}\n", service.id, service.addr));
        for (region, endpoint) in &service.backends {
            hash.update(format!(" {region} {endpoint}\n"));
        }
    }
    u64::from_be_bytes(hash.finalize()[..8].try_into().expect("a SHA-256 has 8 bytes"))
}

/// The daemon's handle on the sync thread.
pub struct Sync {
    /// The sweep's refreshes and closes go here.
    pub news: mpsc::Sender<Vec<FlowRecord>>,
    /// Published every [`PUBLISH_EVERY`]: status and metrics read it.
    pub view: Arc<Mutex<SyncView>>,
    digest: watch::Sender<u64>,
}

impl Sync {
    /// Binds the socket (errors here stop the daemon's start) and starts
    /// the thread. `events`: the data plane's ring buffer of flow events.
    pub fn start(
        settings: &SyncSettings,
        key: Option<Key>,
        digest: u64,
        table: FlowTable,
        events: RingBuf<MapData>,
    ) -> Result<Sync> {
        let socket = std::net::UdpSocket::bind(settings.listen)
            .with_context(|| format!("sync: binding {}", settings.listen))?;
        socket.set_nonblocking(true)?;
        grow_buffers(&socket);
        let (news_tx, news) = mpsc::channel(64);
        let (digest_tx, digests) = watch::channel(digest);
        let view = Arc::new(Mutex::new(SyncView {
            listen: settings.listen.to_string(),
            ready: false,
            peers: Vec::new(),
            flows_written: 0,
            flows_deleted: 0,
            records_kept: 0,
            refused: Vec::new(),
        }));
        let boot = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let origin = Instant::now();
        let task = Task {
            sender: Sender::new(boot, digest, key.clone()),
            receiver: Receiver::new(&settings.peers, key, digest),
            peers: Peers::start(&settings.peers, Duration::ZERO),
            table,
            applied: Applied::default(),
            view: view.clone(),
            origin,
            was_ready: false,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("sync: starting its runtime")?;
        std::thread::Builder::new().name("sync".into()).spawn(move || {
            runtime.block_on(async move {
                // SAFETY: the AsyncFd owns the ring buffer, which owns the
                // fd: it stays open for as long as it is registered.
                let events = unsafe { AsyncFd::register_with_interest(events, tokio::io::Interest::READABLE) }
                    .map_err(|e| e.into_parts().1);
                match (UdpSocket::from_std(socket), events) {
                    (Ok(socket), Ok(events)) => task.run(socket, events, news, digests).await,
                    (Err(e), _) | (_, Err(e)) => warn!("sync: {e}; flows are not synced"),
                }
            })
        })?;
        info!("sync: listening on {}, peers {:?}", settings.listen, settings.peers);
        Ok(Sync { news: news_tx, view, digest: digest_tx })
    }

    /// After a reload: the new config's digest.
    pub fn set_digest(&self, digest: u64) {
        self.digest.send_replace(digest);
    }

    pub fn view(&self) -> SyncView {
        self.view.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn grow_buffers(socket: &std::net::UdpSocket) {
    use std::os::fd::AsRawFd;
    let size = SOCKET_BUFFER as libc::c_int;
    for option in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
        // SAFETY: setsockopt reads an int of the size given.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                &size as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            warn!("sync: socket buffer of {SOCKET_BUFFER} bytes refused: {}", std::io::Error::last_os_error());
        }
    }
}

struct Task {
    sender: Sender,
    receiver: Receiver,
    peers: Peers,
    table: FlowTable,
    applied: Applied,
    view: Arc<Mutex<SyncView>>,
    origin: Instant,
    was_ready: bool,
}

impl Task {
    async fn run(
        mut self,
        socket: UdpSocket,
        mut events: AsyncFd<RingBuf<MapData>>,
        mut news: mpsc::Receiver<Vec<FlowRecord>>,
        mut digests: watch::Receiver<u64>,
    ) {
        let mut buf = vec![0u8; MAX_DATAGRAM + 1];
        let mut publish = tokio::time::interval(PUBLISH_EVERY);
        loop {
            let due_at = tokio::time::Instant::from_std(self.origin + self.peers.next_due());
            tokio::select! {
                readable = events.readable_mut() => match readable {
                    Ok(mut guard) => {
                        let records = drain(guard.get_inner_mut());
                        guard.clear_ready();
                        self.send_records(&socket, &records, None).await;
                    }
                    Err(e) => return warn!("sync: reading flow events: {e}; flows are not synced"),
                },
                received = socket.recv_from(&mut buf) => match received {
                    Ok((len, from)) => self.on_datagram(&socket, from, &buf[..len]).await,
                    Err(e) => debug!("sync: receiving: {e}"),
                },
                Some(records) = news.recv() => self.send_records(&socket, &records, None).await,
                _ = sleep_until(due_at) => self.on_due(&socket).await,
                _ = publish.tick() => self.publish(),
                Ok(()) = digests.changed() => {
                    let digest = *digests.borrow_and_update();
                    self.sender.set_digest(digest);
                    self.receiver.set_digest(digest);
                }
            }
        }
    }

    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    /// `records`, batched, to every peer, or to `only` that one.
    async fn send_records(&mut self, socket: &UdpSocket, records: &[FlowRecord], only: Option<usize>) {
        for datagram in self.sender.flows(records) {
            let count = records_in(&datagram);
            for i in (0..self.peers.peers.len()).filter(|&i| only.is_none_or(|peer| peer == i)) {
                self.send(socket, i, &datagram, count).await;
            }
        }
    }

    async fn send(&mut self, socket: &UdpSocket, peer: usize, datagram: &[u8], records: usize) {
        let addr = self.peers.peers[peer].addr;
        let ok = match socket.send_to(datagram, addr).await {
            Ok(_) => true,
            Err(e) => {
                debug!("sync: sending to {addr}: {e}");
                false
            }
        };
        self.peers.sent(peer, records, ok, self.now());
    }

    async fn on_datagram(&mut self, socket: &UdpSocket, from: SocketAddr, bytes: &[u8]) {
        let message = match self.receiver.accept(from, bytes) {
            Ok(message) => message,
            Err(refused) => return debug!("sync: {refused}"),
        };
        let Some(peer) = self.peers.index(from) else { return };
        let lag = unix_us().saturating_sub(message.sent_unix_us);
        self.peers.heard(peer, message.records.len(), Duration::from_micros(lag), self.now());
        match message.kind {
            Kind::Flows => self.apply(&message),
            Kind::ResyncRequest => self.answer_resync(socket, peer).await,
            Kind::ResyncDone => {
                self.peers.resynced(peer);
                self.note_readiness();
            }
        }
    }

    fn apply(&mut self, message: &Message) {
        match records::apply(&mut self.table, &message.records, coarse_monotonic_ns()) {
            Ok(applied) => self.applied.add(applied),
            Err(e) => warn!("sync: {e:#}"),
        }
    }

    /// A peer that starts gets every flow of this table, then the end.
    async fn answer_resync(&mut self, socket: &UdpSocket, peer: usize) {
        let records = match self.table.resync_records(coarse_monotonic_ns()) {
            Ok(records) => records,
            Err(e) => return warn!("sync: reading the flow table for a resync: {e:#}"),
        };
        let addr = self.peers.peers[peer].addr;
        info!("sync: {addr} asks for the table: sending {} flows", records.len());
        self.send_records(socket, &records, Some(peer)).await;
        let done = self.sender.control(Kind::ResyncDone);
        self.send(socket, peer, &done, 0).await;
    }

    async fn on_due(&mut self, socket: &UdpSocket) {
        let (due, given_up) = self.peers.due(self.now());
        for addr in given_up {
            warn!("sync: {addr} did not send its table (silent for {:?}): ready without it", peers::RESYNC_PATIENCE);
        }
        for peer in due.resync_requests {
            let request = self.sender.control(Kind::ResyncRequest);
            self.send(socket, peer, &request, 0).await;
        }
        for peer in due.keepalives {
            let keepalive = self.sender.keepalive();
            self.send(socket, peer, &keepalive, 0).await;
        }
        self.note_readiness();
    }

    fn note_readiness(&mut self) {
        if !self.was_ready && self.peers.ready() {
            self.was_ready = true;
            info!("sync: ready, {} peers' flows written", self.applied.written);
            self.publish();
        }
    }

    fn publish(&self) {
        let mut view = self.view.lock().unwrap_or_else(|e| e.into_inner());
        view.ready = self.peers.ready();
        view.peers = self.peers.views(self.now());
        view.flows_written = self.applied.written;
        view.flows_deleted = self.applied.deleted;
        view.records_kept = self.applied.kept;
        view.refused = self.receiver.counters.rejections().iter().map(|(name, n)| (name.to_string(), *n)).collect();
    }
}

fn unix_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// Every event the ring buffer holds now, as records.
fn drain(ring: &mut RingBuf<MapData>) -> Vec<FlowRecord> {
    let mut records = Vec::new();
    while let Some(item) = ring.next() {
        if let Some(event) = ring_record::<SyncEvent>(&item) {
            records.extend(records::from_dataplane(&event));
        }
    }
    records
}
