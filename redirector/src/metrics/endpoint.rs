//! The `/metrics` endpoint: GET and HEAD of `/metrics` (any query),
//! within the listener's limits.

use std::{sync::Arc, time::Duration};

use tokio::{
    io::AsyncWriteExt,
    net::{TcpListener, TcpStream},
};
use tracing::{info, warn};

use super::{render, Listeners, Shared, SharedSync};
use crate::bfd;
use crate::{
    http::{self, BadRequest},
    listener::{self, ListenerStats},
};

/// A scrape gets this long to send its request and take the answer.
const DEADLINE: Duration = Duration::from_secs(5);

/// Serves `GET` (and `HEAD`) `/metrics` on `listener` until the process
/// ends.
pub async fn serve(
    listener: TcpListener,
    shared: Shared,
    listeners: Listeners,
    sync: SharedSync,
    bfd: Arc<bfd::Shared>,
    stats: Arc<ListenerStats>,
) {
    if let Ok(at) = listener.local_addr() {
        info!("metrics on http://{at}/metrics");
    }
    listener::serve(listener, "metrics", DEADLINE, stats, move |conn| {
        answer(conn, shared.clone(), listeners.clone(), sync.clone(), bfd.clone())
    })
    .await
}

async fn answer(mut conn: TcpStream, shared: Shared, listeners: Listeners, sync: SharedSync, bfd: Arc<bfd::Shared>) {
    let response = match http::read_head(&mut conn).await {
        Err(BadRequest::Gone) => return,
        Err(BadRequest::Malformed) => http::answer("400 Bad Request", "", ""),
        Ok(head) => match (head.method.as_str(), head.path.as_str()) {
            (method @ ("GET" | "HEAD"), "/metrics") => match render(&shared, &listeners, &sync, &bfd) {
                Ok(body) => {
                    let header = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    if method == "HEAD" { header } else { header + &body }
                }
                Err(e) => {
                    warn!("metrics: encoding failed: {e}");
                    http::answer("500 Internal Server Error", "", "")
                }
            },
            ("GET" | "HEAD", _) => http::answer("404 Not Found", "", ""),
            _ => http::answer("405 Method Not Allowed", "Allow: GET, HEAD\r\n", ""),
        },
    };
    let _ = conn.write_all(response.as_bytes()).await;
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    async fn ask(at: std::net::SocketAddr, request: &str) -> String {
        let mut conn = TcpStream::connect(at).await.unwrap();
        conn.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).await.unwrap();
        answer
    }

    #[tokio::test]
    async fn get_and_head_of_metrics_with_any_query_are_answered_and_the_rest_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let at = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, Shared::default(), Listeners::default(), None, Arc::default(), Arc::default()));
        for (request, status) in [
            ("GET /metrics?x=1&y HTTP/1.1\r\n\r\n", "200 OK"),
            ("HEAD /metrics HTTP/1.0\r\n\r\n", "200 OK"),
            ("GET / HTTP/1.1\r\n\r\n", "404 Not Found"),
            ("POST /metrics HTTP/1.1\r\n\r\n", "405 Method Not Allowed"),
            ("GET /metrics\r\n\r\n", "400 Bad Request"),
        ] {
            let answer = ask(at, request).await;
            assert!(answer.starts_with(&format!("HTTP/1.1 {status}\r\n")), "{request:?}: {answer}");
        }
    }

    #[tokio::test]
    async fn a_request_in_several_segments_is_answered_and_head_gets_no_body() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let at = listener.local_addr().unwrap();
        let stats = Arc::new(ListenerStats::default());
        tokio::spawn(serve(listener, Shared::default(), Listeners::default(), None, Arc::default(), stats.clone()));
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
