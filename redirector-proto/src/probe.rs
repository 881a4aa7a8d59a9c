//! Health probes: what one probe of a check found, and the probes that
//! both the daemon (its http and tcp checks) and the agent (its local
//! service check) run. The socket half is behind the `probe` feature.

use std::{fmt, time::Duration};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// Why, for status output: "connection refused", "status 503"...
    Failure(String),
    /// No answer within the check's timeout.
    Timeout,
    /// The probe could not be made here (no descriptor, no buffer, no
    /// memory, no local port left): it says nothing of the region.
    Local(String),
}

impl Outcome {
    /// A failure of `error`: [`Outcome::Local`] when it is this host's
    /// shortage rather than the target's answer.
    pub fn of_error(error: &std::io::Error, what: &str) -> Outcome {
        const LOCAL: [i32; 5] = [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM, libc::EADDRNOTAVAIL];
        let why = if what.is_empty() { error.to_string() } else { format!("{what}: {error}") };
        if error.raw_os_error().is_some_and(|code| LOCAL.contains(&code)) {
            Outcome::Local(why)
        } else {
            Outcome::Failure(why)
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Success => f.write_str("ok"),
            Outcome::Failure(why) => write!(f, "failed: {why}"),
            Outcome::Timeout => f.write_str("timeout"),
            Outcome::Local(why) => write!(f, "not run here: {why}"),
        }
    }
}

/// What one probe found, and how long it took to find it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeResult {
    pub outcome: Outcome,
    /// From the probe's start to its result.
    pub latency: Duration,
}

/// A GET whose answer must carry `expect_status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpCheck {
    pub url: String,
    pub host: String,
    pub port: u16,
    /// With the query, if any; "/" when the URL has none.
    pub path: String,
    pub expect_status: u16,
}

impl HttpCheck {
    /// `http://HOST[:PORT][/PATH]`, HOST a name, an IPv4 address or an
    /// IPv6 address in brackets: the checker speaks plain HTTP only.
    pub fn parse(url: &str, expect_status: u16) -> Result<HttpCheck, String> {
        let (host, port, path) = parse_http_url(url)?;
        Ok(HttpCheck {
            url: url.to_string(),
            host,
            port,
            path,
            expect_status,
        })
    }

    /// The Host header's value (RFC 9110: the port unless the default):
    /// an IPv6 address goes back in brackets.
    pub fn host_header(&self) -> String {
        let host = match self.host.parse::<std::net::Ipv6Addr>() {
            Ok(v6) => format!("[{v6}]"),
            Err(_) => self.host.clone(),
        };
        match self.port {
            80 => host,
            port => format!("{host}:{port}"),
        }
    }
}

fn parse_http_url(url: &str) -> Result<(String, u16, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url:?}: only http:// URLs are supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.strip_prefix('[') {
        // RFC 3986's IP-literal: [ADDRESS] or [ADDRESS]:PORT.
        Some(literal) => {
            let (address, after) = literal
                .split_once(']')
                .ok_or_else(|| format!("{url:?}: no ']' after the IPv6 address"))?;
            let address = address
                .parse::<std::net::Ipv6Addr>()
                .map_err(|_| format!("{url:?}: {address:?} is not an IPv6 address"))?;
            let port = match after {
                "" => None,
                _ => Some(after.strip_prefix(':').ok_or_else(|| format!("{url:?}: bad port {after:?}"))?),
            };
            (address.to_string(), port)
        }
        None if authority.matches(':').count() > 1 => {
            return Err(format!("{url:?}: bad host {authority:?} (an IPv6 address goes in brackets)"));
        }
        None => match authority.split_once(':') {
            Some((host, port)) => (host.to_string(), Some(port)),
            None => (authority.to_string(), None),
        },
    };
    let port = match port {
        Some(port) => port
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("{url:?}: bad port {port:?}"))?,
        None => 80,
    };
    if host.is_empty() || (!host.contains(':') && host.contains(['@', '[', ']', '?', '#'])) {
        return Err(format!("{url:?}: bad host {host:?}"));
    }
    Ok((host, port, path.to_string()))
}

#[cfg(any(feature = "probe", test))]
pub use sockets::{http, tcp};

#[cfg(any(feature = "probe", test))]
mod sockets {
    use std::{
        net::SocketAddr,
        time::{Duration, Instant},
    };

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpStream,
        time::timeout,
    };

    use super::{HttpCheck, Outcome, ProbeResult};

    fn result(started: Instant, outcome: Result<Result<(), Outcome>, tokio::time::error::Elapsed>) -> ProbeResult {
        let outcome = match outcome {
            Ok(Ok(())) => Outcome::Success,
            Ok(Err(failed)) => failed,
            Err(_) => Outcome::Timeout,
        };
        ProbeResult { outcome, latency: started.elapsed() }
    }

    /// A TCP connect.
    pub async fn tcp(address: SocketAddr, limit: Duration) -> ProbeResult {
        let started = Instant::now();
        let outcome = timeout(limit, async {
            TcpStream::connect(address).await.map(drop).map_err(|e| Outcome::of_error(&e, ""))
        })
        .await;
        result(started, outcome)
    }

    /// A GET whose status line must carry the expected status (the
    /// reference's checkHTTPServer).
    pub async fn http(check: &HttpCheck, limit: Duration) -> ProbeResult {
        let started = Instant::now();
        let outcome = timeout(limit, async {
            let mut conn = TcpStream::connect((check.host.as_str(), check.port))
                .await
                .map_err(|e| Outcome::of_error(&e, "connect"))?;
            let request = format!(
                "GET {} HTTP/1.0\r\nHost: {}\r\nConnection: close\r\nUser-Agent: redirectord\r\n\r\n",
                check.path,
                check.host_header()
            );
            conn.write_all(request.as_bytes()).await.map_err(|e| Outcome::of_error(&e, ""))?;
            let status = read_status(&mut conn).await.map_err(Outcome::Failure)?;
            if status == check.expect_status {
                Ok(())
            } else {
                Err(Outcome::Failure(format!("status {status}, expected {}", check.expect_status)))
            }
        })
        .await;
        result(started, outcome)
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
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    use super::*;

    async fn server(answer: &'static [u8]) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = conn.read(&mut buf).await;
                let _ = conn.write_all(answer).await;
            }
        });
        addr
    }

    fn check(addr: SocketAddr, expect_status: u16) -> HttpCheck {
        HttpCheck::parse(&format!("http://{addr}/"), expect_status).unwrap()
    }

    fn failure(why: &str) -> Outcome {
        Outcome::Failure(why.into())
    }

    #[tokio::test]
    async fn http_passes_on_the_expected_status_only() {
        let addr = server(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await;
        assert_eq!(http(&check(addr, 200), Duration::from_secs(1)).await.outcome, Outcome::Success);
        let wrong = http(&check(addr, 204), Duration::from_secs(1)).await;
        assert_eq!(wrong.outcome, failure("status 200, expected 204"));
    }

    #[tokio::test]
    async fn http_fails_on_garbage_refusal_and_silence() {
        let garbage = server(b"SSH-2.0-OpenSSH\r\n").await;
        let answer = http(&check(garbage, 200), Duration::from_secs(1)).await;
        assert_eq!(answer.outcome, failure("not an HTTP status line: \"SSH-2.0-OpenSSH\""));
        // A port nobody listens on: refused at once.
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let refused = http(&check(closed, 200), Duration::from_secs(1)).await;
        assert!(matches!(&refused.outcome, Outcome::Failure(why) if why.starts_with("connect")), "{refused:?}");
        // Accepts and never answers: the timeout decides.
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let slow = http(&check(silent.local_addr().unwrap(), 200), Duration::from_millis(50)).await;
        assert_eq!(slow.outcome, Outcome::Timeout);
        assert!(slow.latency >= Duration::from_millis(50));
        drop(silent);
    }

    #[tokio::test]
    async fn http_and_tcp_probes_reach_an_ipv6_address() {
        let listener = TcpListener::bind("[::1]:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (sent, mut request) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let n = conn.read(&mut buf).await.unwrap_or(0);
                let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await;
                let _ = sent.send(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        });
        let check = check(addr, 200);
        assert_eq!(check.host, "::1");
        assert_eq!(http(&check, Duration::from_secs(1)).await.outcome, Outcome::Success);
        let request = request.recv().await.unwrap();
        assert!(request.contains(&format!("\r\nHost: [::1]:{}\r\n", addr.port())), "{request:?}");
        assert_eq!(tcp(addr, Duration::from_secs(1)).await.outcome, Outcome::Success);
    }

    #[tokio::test]
    async fn tcp_connect_succeeds_or_not() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        assert_eq!(tcp(addr, Duration::from_secs(1)).await.outcome, Outcome::Success);
        drop(listener);
        assert!(matches!(tcp(addr, Duration::from_secs(1)).await.outcome, Outcome::Failure(_)));
    }
}

#[cfg(test)]
mod outcome_tests {
    use std::io::{Error, ErrorKind};

    use super::*;

    #[test]
    fn shortages_of_this_host_are_local_and_the_rest_are_failures() {
        for code in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM, libc::EADDRNOTAVAIL] {
            assert!(matches!(Outcome::of_error(&Error::from_raw_os_error(code), "connect"), Outcome::Local(_)), "{code}");
        }
        let refused = Outcome::of_error(&Error::from_raw_os_error(libc::ECONNREFUSED), "connect");
        assert_eq!(refused, Outcome::Failure("connect: Connection refused (os error 111)".into()));
        assert!(matches!(Outcome::of_error(&Error::from(ErrorKind::Other), ""), Outcome::Failure(_)));
        assert_eq!(Outcome::Local("x".into()).to_string(), "not run here: x");
    }
}

#[cfg(test)]
mod url_tests {
    use super::*;

    fn parts(url: &str) -> Result<(String, u16, String), String> {
        HttpCheck::parse(url, 200).map(|c| (c.host, c.port, c.path))
    }

    #[test]
    fn http_checks_take_plain_http_urls_only() {
        assert_eq!(
            parts("http://checker.lab:8080/health?deep=1"),
            Ok(("checker.lab".into(), 8080, "/health?deep=1".into()))
        );
        assert_eq!(parts("http://10.1.0.2"), Ok(("10.1.0.2".into(), 80, "/".into())));
        assert_eq!(
            parts("https://10.1.0.2/"),
            Err("\"https://10.1.0.2/\": only http:// URLs are supported".into())
        );
        for bad in ["http://10.1.0.2:0/", "http://:80/", "http://user@host/", "http://x:y/", "http://[10.1.0.2]/"] {
            assert!(parts(bad).is_err(), "{bad}");
        }
        assert_eq!(HttpCheck::parse("http://localhost", 204).unwrap().expect_status, 204);
    }

    #[test]
    fn ipv6_addresses_come_in_brackets() {
        assert_eq!(parts("http://[fd00:2::2]:8080/x"), Ok(("fd00:2::2".into(), 8080, "/x".into())));
        assert_eq!(parts("http://[FD00:2:0::2]"), Ok(("fd00:2::2".into(), 80, "/".into())));
        for bare in ["http://fd00:2::2/", "http://fd00::2:8080/", "http://::1:80/"] {
            assert!(parts(bare).unwrap_err().ends_with("(an IPv6 address goes in brackets)"), "{bare}");
        }
        assert_eq!(parts("http://[fd00::2/"), Err("\"http://[fd00::2/\": no ']' after the IPv6 address".into()));
        assert_eq!(parts("http://[fd00::zz]/"), Err("\"http://[fd00::zz]/\": \"fd00::zz\" is not an IPv6 address".into()));
        assert_eq!(parts("http://[fd00::2]x/"), Err("\"http://[fd00::2]x/\": bad port \"x\"".into()));
        assert_eq!(parts("http://[fd00::2]:0/"), Err("\"http://[fd00::2]:0/\": bad port \"0\"".into()));
    }
}
