//! The `/metrics` endpoint: a request head read whole, however many
//! segments it takes, answered for GET and HEAD of `/metrics` (any query),
//! within the listener's limits.

use std::{sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tracing::{info, warn};

use super::{render, Listeners, Shared};
use crate::listener::{self, ListenerStats};

/// A scrape gets this long to send its request and take the answer.
const DEADLINE: Duration = Duration::from_secs(5);
/// A request head longer than this is not a scrape.
const MAX_HEAD: usize = 8 * 1024;

/// Serves `GET` (and `HEAD`) `/metrics` on `listener` until the process
/// ends.
pub async fn serve(listener: TcpListener, shared: Shared, listeners: Listeners, stats: Arc<ListenerStats>) {
    if let Ok(at) = listener.local_addr() {
        info!("metrics on http://{at}/metrics");
    }
    listener::serve(listener, "metrics", DEADLINE, stats, move |conn| {
        answer(conn, shared.clone(), listeners.clone())
    })
    .await
}

async fn answer(mut conn: TcpStream, shared: Shared, listeners: Listeners) {
    let Some(head) = read_head(&mut conn).await else { return };
    let response = match Scrape::parse(&head) {
        Scrape::Metrics { head_only } => match render(&shared, &listeners) {
            Ok(body) => {
                let header = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                if head_only { header } else { header + &body }
            }
            Err(e) => {
                warn!("metrics: encoding failed: {e}");
                "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into()
            }
        },
        Scrape::OtherMethod => {
            "HTTP/1.1 405 Method Not Allowed\r\nAllow: GET, HEAD\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into()
        }
        Scrape::OtherPath => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into(),
        Scrape::Malformed => "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into(),
    };
    let _ = conn.write_all(response.as_bytes()).await;
}

/// The request head, however many segments it came in, up to the blank
/// line; None if the client closed first or sent more than `MAX_HEAD`.
async fn read_head(conn: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf).await.ok().filter(|&n| n > 0)?;
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_HEAD {
            return None;
        }
    }
    Some(head)
}

#[derive(Debug, PartialEq, Eq)]
enum Scrape {
    Metrics { head_only: bool },
    OtherMethod,
    OtherPath,
    Malformed,
}

impl Scrape {
    fn parse(head: &[u8]) -> Scrape {
        let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
        let line = String::from_utf8_lossy(line);
        let mut words = line.split_whitespace();
        let (Some(method), Some(target), Some(version)) = (words.next(), words.next(), words.next()) else {
            return Scrape::Malformed;
        };
        if !version.starts_with("HTTP/1.") {
            return Scrape::Malformed;
        }
        let path = target.split('?').next().unwrap_or_default();
        match (method, path) {
            ("GET" | "HEAD", "/metrics") => Scrape::Metrics { head_only: method == "HEAD" },
            ("GET" | "HEAD", _) => Scrape::OtherPath,
            _ => Scrape::OtherMethod,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrapes_are_read_whole_with_get_or_head_and_any_query() {
        let parse = |text: &str| Scrape::parse(text.as_bytes());
        assert_eq!(parse("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), Scrape::Metrics { head_only: false });
        assert_eq!(parse("HEAD /metrics HTTP/1.0\r\n\r\n"), Scrape::Metrics { head_only: true });
        assert_eq!(parse("GET /metrics?x=1&y HTTP/1.1\r\n\r\n"), Scrape::Metrics { head_only: false });
        assert_eq!(parse("GET / HTTP/1.1\r\n\r\n"), Scrape::OtherPath);
        assert_eq!(parse("POST /metrics HTTP/1.1\r\n\r\n"), Scrape::OtherMethod);
        assert_eq!(parse("GET /metrics\r\n\r\n"), Scrape::Malformed);
        assert_eq!(parse("\u{ff}\u{fe} /metrics HTTP/1.1\r\n\r\n"), Scrape::OtherMethod);
        assert_eq!(parse(""), Scrape::Malformed);
    }

    #[tokio::test]
    async fn a_request_in_several_segments_is_answered_and_head_gets_no_body() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let at = listener.local_addr().unwrap();
        let stats = Arc::new(ListenerStats::default());
        tokio::spawn(serve(listener, Shared::default(), Listeners::default(), stats.clone()));
        let mut split = TcpStream::connect(at).await.unwrap();
        for part in ["GE", "T /metr", "ics HTTP/1.1\r\n", "Host: x\r\n", "\r\n"] {
            split.write_all(part.as_bytes()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut answer = String::new();
        split.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
        assert!(answer.contains("redirector_region_state"), "{answer}");

        let mut head = TcpStream::connect(at).await.unwrap();
        head.write_all(b"HEAD /metrics HTTP/1.1\r\n\r\n").await.unwrap();
        let mut answer = String::new();
        head.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK") && answer.ends_with("\r\n\r\n"), "{answer}");
    }
}
