//! What the control socket and `/metrics` share at their door: a cap on
//! the connections they hold at once, a deadline on each, and accept errors
//! (out of descriptors, most often) that back off and retry instead of
//! spinning or ending the listener. Whoever connects, and however many,
//! cannot take the descriptors the health checks need.

use std::{
    future::Future,
    io,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::{
    net::{TcpListener, TcpStream, UnixListener, UnixStream},
    sync::Semaphore,
    time::{sleep, timeout},
};
use tracing::warn;

/// Connections a listener holds at once; one more is closed at once.
pub const MAX_CONNECTIONS: usize = 64;
/// After an accept error, before the next accept.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What a listener turned away, for `/metrics`.
#[derive(Debug, Default)]
pub struct ListenerStats {
    /// Closed at once: `MAX_CONNECTIONS` were open.
    pub refused: AtomicU64,
    /// Closed when their deadline passed.
    pub timed_out: AtomicU64,
    /// `accept` failed (no descriptor left, ...).
    pub accept_errors: AtomicU64,
}

pub trait Listener {
    type Conn: Send + 'static;
    fn accept(&self) -> impl Future<Output = io::Result<Self::Conn>> + Send;
}

impl Listener for TcpListener {
    type Conn = TcpStream;

    async fn accept(&self) -> io::Result<TcpStream> {
        TcpListener::accept(self).await.map(|(conn, _)| conn)
    }
}

impl Listener for UnixListener {
    type Conn = UnixStream;

    async fn accept(&self) -> io::Result<UnixStream> {
        UnixListener::accept(self).await.map(|(conn, _)| conn)
    }
}

/// Accepts connections for ever and runs `handle` on each, within
/// `deadline` and at most [`MAX_CONNECTIONS`] at a time.
pub async fn serve<L, F, Fut>(listener: L, name: &'static str, deadline: Duration, stats: Arc<ListenerStats>, handle: F)
where
    L: Listener,
    F: Fn(L::Conn) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        match listener.accept().await {
            Ok(conn) => match slots.clone().try_acquire_owned() {
                Ok(slot) => {
                    let work = handle(conn);
                    let stats = stats.clone();
                    tokio::spawn(async move {
                        if timeout(deadline, work).await.is_err() {
                            stats.timed_out.fetch_add(1, Ordering::Relaxed);
                        }
                        drop(slot);
                    });
                }
                Err(_) => {
                    if stats.refused.fetch_add(1, Ordering::Relaxed).is_multiple_of(1000) {
                        warn!("{name}: {MAX_CONNECTIONS} connections open; refusing more");
                    }
                }
            },
            Err(e) => {
                if stats.accept_errors.fetch_add(1, Ordering::Relaxed).is_multiple_of(100) {
                    warn!("{name}: accepting a connection: {e}; retrying");
                }
                sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Reads until the server closes; what it said.
    async fn said(conn: &mut TcpStream) -> String {
        let mut text = String::new();
        let _ = timeout(Duration::from_secs(5), conn.read_to_string(&mut text)).await.expect("closed");
        text
    }

    #[tokio::test]
    async fn idle_connections_beyond_the_cap_are_closed_and_the_held_ones_time_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let at = listener.local_addr().unwrap();
        let stats = Arc::new(ListenerStats::default());
        // Each connection waits for a byte that never comes, then says hello.
        tokio::spawn(serve(listener, "test", Duration::from_millis(300), stats.clone(), |mut conn: TcpStream| async move {
            let mut byte = [0u8; 1];
            if conn.read(&mut byte).await.unwrap_or(0) == 1 {
                let _ = conn.write_all(b"hello").await;
            }
        }));
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS + 10 {
            idle.push(TcpStream::connect(at).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(stats.refused.load(Ordering::Relaxed), 10);
        let mut late = TcpStream::connect(at).await.unwrap();
        late.write_all(b"x").await.unwrap();
        assert_eq!(said(&mut late).await, "", "refused while the cap is reached");
        for conn in &mut idle {
            assert_eq!(said(conn).await, "");
        }
        assert_eq!(stats.timed_out.load(Ordering::Relaxed), MAX_CONNECTIONS as u64);
        let mut next = TcpStream::connect(at).await.unwrap();
        next.write_all(b"x").await.unwrap();
        assert_eq!(said(&mut next).await, "hello", "served again once they timed out");
    }
}
