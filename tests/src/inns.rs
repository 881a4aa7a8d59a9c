//! Tiny TCP server and client that run on threads inside a namespace, for
//! tests that need real kernel sockets but not a separate process.

use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use anyhow::{Context, Result};

use crate::netns::Netns;

/// A TCP server on a thread inside a namespace, until dropped: answers every
/// connection with `body` and closes it, or (`Server::echo`) echoes what it
/// receives, naming itself first, until the client closes.
pub struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    pub fn start(ns: &Netns, port: u16, body: &str) -> Result<Self> {
        Self::spawn(ns, port, body, false)
    }

    pub fn echo(ns: &Netns, port: u16, name: &str) -> Result<Self> {
        Self::spawn(ns, port, name, true)
    }

    fn spawn(ns: &Netns, port: u16, body: &str, echo: bool) -> Result<Self> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let ns_name = ns.name().to_string();
        let body = body.to_string();
        let stop_flag = stop.clone();
        let thread = thread::spawn(move || {
            let listener = (|| -> Result<TcpListener> {
                let _inside = Netns::attach(&ns_name)?.enter()?;
                // Both families: an IPv6 socket takes IPv4 too, as mapped
                // addresses.
                let listener = TcpListener::bind((Ipv6Addr::UNSPECIFIED, port))?;
                listener.set_nonblocking(true)?;
                Ok(listener)
            })();
            let listener = match listener {
                Ok(l) => {
                    ready_tx.send(Ok(())).unwrap();
                    l
                }
                Err(e) => return ready_tx.send(Err(e)).unwrap(),
            };
            while !stop_flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.write_all(body.as_bytes());
                        if echo {
                            thread::spawn(move || {
                                let mut buf = [0u8; 1024];
                                while let Ok(n @ 1..) = conn.read(&mut buf) {
                                    if conn.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                            });
                        }
                    }
                    Err(_) => thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        ready_rx.recv().context("server thread died")??;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connects from inside `ns` and reads until the server closes.
pub fn fetch(ns: &Netns, addr: impl Into<IpAddr>, port: u16, timeout: Duration) -> Result<String> {
    let target = SocketAddr::new(addr.into(), port);
    let mut conn = Conn::open(ns, target.ip(), port, timeout)?;
    let mut body = String::new();
    conn.stream
        .read_to_string(&mut body)
        .with_context(|| format!("reading from {target}"))?;
    Ok(body)
}

/// A connection opened from inside a namespace and kept: the socket stays
/// in the namespace it was made in, so it can be used from any thread.
pub struct Conn {
    stream: TcpStream,
}

impl Conn {
    pub fn open(ns: &Netns, addr: impl Into<IpAddr>, port: u16, timeout: Duration) -> Result<Self> {
        let target = SocketAddr::new(addr.into(), port);
        let stream = ns.on_thread(|| {
            let stream = TcpStream::connect_timeout(&target, timeout)
                .with_context(|| format!("connecting to {target}"))?;
            stream.set_read_timeout(Some(timeout))?;
            Ok(stream)
        })?;
        Ok(Self { stream })
    }

    /// Reads exactly `len` bytes.
    pub fn read(&mut self, len: usize) -> Result<String> {
        let mut buf = vec![0u8; len];
        self.stream.read_exact(&mut buf).context("reading from the connection")?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    /// Sends `text` and returns what comes back (same length).
    pub fn round_trip(&mut self, text: &str) -> Result<String> {
        self.stream.write_all(text.as_bytes())?;
        self.read(text.len())
    }
}
