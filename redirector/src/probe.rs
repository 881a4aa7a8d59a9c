//! One health probe of one check, with its timeout: the I/O half of health
//! checking. Results feed the pure state machine in `health`.

use std::time::{Duration, Instant};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::timeout,
};

use crate::{config::HttpCheck, health::Outcome};

const TIMEOUT: &str = "timeout";

/// What one probe found.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeResult {
    pub ok: bool,
    pub latency: Duration,
    /// Why it failed.
    pub error: Option<String>,
}

impl ProbeResult {
    pub fn outcome(&self) -> Outcome {
        match (self.ok, self.error.as_deref()) {
            (true, _) => Outcome::Success,
            (false, Some(TIMEOUT)) => Outcome::Timeout,
            (false, error) => Outcome::Failure(error.unwrap_or("failed").to_string()),
        }
    }

    fn from(started: Instant, outcome: Result<Result<(), String>, tokio::time::error::Elapsed>) -> Self {
        let latency = started.elapsed();
        match outcome {
            Ok(Ok(())) => Self { ok: true, latency, error: None },
            Ok(Err(error)) => Self { ok: false, latency, error: Some(error) },
            Err(_) => Self { ok: false, latency, error: Some(TIMEOUT.into()) },
        }
    }
}

/// A TCP connect.
pub async fn tcp(address: std::net::SocketAddrV4, limit: Duration) -> ProbeResult {
    let started = Instant::now();
    let outcome = timeout(limit, async {
        TcpStream::connect(address).await.map(drop).map_err(|e| e.to_string())
    })
    .await;
    ProbeResult::from(started, outcome)
}

/// A GET whose status line must carry the expected status (the reference's
/// checkHTTPServer).
pub async fn http(check: &HttpCheck, limit: Duration) -> ProbeResult {
    let started = Instant::now();
    let outcome = timeout(limit, async {
        let mut conn = TcpStream::connect((check.host.as_str(), check.port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let request = format!(
            "GET {} HTTP/1.0\r\nHost: {}\r\nConnection: close\r\nUser-Agent: redirectord\r\n\r\n",
            check.path, check.host
        );
        conn.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
        let status = read_status(&mut conn).await?;
        if status == check.expect_status {
            Ok(())
        } else {
            Err(format!("status {status}, expected {}", check.expect_status))
        }
    })
    .await;
    ProbeResult::from(started, outcome)
}

/// The status code of an HTTP answer, from its first line.
async fn read_status(conn: &mut TcpStream) -> Result<u16, String> {
    let mut head = Vec::with_capacity(64);
    let mut byte = [0u8; 256];
    while !head.contains(&b'\n') {
        let n = conn.read(&mut byte).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed before a status line".into());
        }
        head.extend_from_slice(&byte[..n]);
        if head.len() > 4096 {
            return Err("status line too long".into());
        }
    }
    let line = String::from_utf8_lossy(&head);
    let line = line.lines().next().unwrap_or("");
    line.split_whitespace()
        .nth(1)
        .filter(|_| line.starts_with("HTTP/"))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("not an HTTP status line: {line:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn server(answer: &'static [u8]) -> std::net::SocketAddrV4 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let std::net::SocketAddr::V4(addr) = listener.local_addr().unwrap() else { unreachable!() };
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = conn.read(&mut buf).await;
                let _ = conn.write_all(answer).await;
            }
        });
        addr
    }

    fn check(addr: std::net::SocketAddrV4, expect_status: u16) -> HttpCheck {
        HttpCheck {
            url: format!("http://{addr}/"),
            host: addr.ip().to_string(),
            port: addr.port(),
            path: "/".into(),
            expect_status,
        }
    }

    #[tokio::test]
    async fn http_passes_on_the_expected_status_only() {
        let addr = server(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await;
        assert!(http(&check(addr, 200), Duration::from_secs(1)).await.ok);
        let wrong = http(&check(addr, 204), Duration::from_secs(1)).await;
        assert_eq!(wrong.error.as_deref(), Some("status 200, expected 204"));
    }

    #[tokio::test]
    async fn http_fails_on_garbage_refusal_and_silence() {
        let garbage = server(b"SSH-2.0-OpenSSH\r\n").await;
        assert!(!http(&check(garbage, 200), Duration::from_secs(1)).await.ok);
        // A port nobody listens on: refused at once.
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let std::net::SocketAddr::V4(closed) = closed else { unreachable!() };
        let refused = http(&check(closed, 200), Duration::from_secs(1)).await;
        assert!(refused.error.unwrap().starts_with("connect"));
        // Accepts and never answers: the timeout decides.
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let std::net::SocketAddr::V4(addr) = silent.local_addr().unwrap() else { unreachable!() };
        let slow = http(&check(addr, 200), Duration::from_millis(50)).await;
        assert_eq!(slow.error.as_deref(), Some("timeout"));
        drop(silent);
    }

    #[tokio::test]
    async fn tcp_connect_succeeds_or_not() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let std::net::SocketAddr::V4(addr) = listener.local_addr().unwrap() else { unreachable!() };
        assert!(tcp(addr, Duration::from_secs(1)).await.ok);
        drop(listener);
        assert!(!tcp(addr, Duration::from_secs(1)).await.ok);
    }
}
