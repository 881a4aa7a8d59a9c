//! The little HTTP/1.1 the daemon's endpoints speak (`/metrics`, the
//! alert webhook): a request head read whole however many segments it
//! takes, a body by its Content-Length, bounded both, and one-shot answers
//! that close the connection.

use tokio::{io::AsyncReadExt, net::TcpStream};

/// A request head longer than this is not one of ours.
const MAX_HEAD: usize = 8 * 1024;

/// A request: its first line's method and path (query cut off), its
/// headers, and what arrived after the head.
#[derive(Debug, PartialEq, Eq)]
pub struct Head {
    pub method: String,
    pub path: String,
    /// Names lowercased.
    pub headers: Vec<(String, String)>,
    /// Bytes read past the blank line: the start of the body.
    pub rest: Vec<u8>,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// Why a request gets an error before any endpoint looks at it.
#[derive(Debug, PartialEq, Eq)]
pub enum BadRequest {
    /// The client closed first, or the head ran past `MAX_HEAD`: no answer.
    Gone,
    Malformed,
}

/// Reads the request head, however many segments it takes.
pub async fn read_head(conn: &mut TcpStream) -> Result<Head, BadRequest> {
    let mut bytes = Vec::with_capacity(256);
    let mut buf = [0u8; 1024];
    let end = loop {
        if let Some(at) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = conn.read(&mut buf).await.ok().filter(|&n| n > 0).ok_or(BadRequest::Gone)?;
        bytes.extend_from_slice(&buf[..n]);
        if bytes.len() > MAX_HEAD {
            return Err(BadRequest::Gone);
        }
    };
    let mut head = parse_head(&bytes[..end])?;
    head.rest = bytes[end..].to_vec();
    Ok(head)
}

fn parse_head(bytes: &[u8]) -> Result<Head, BadRequest> {
    let text = String::from_utf8_lossy(bytes);
    let mut lines = text.split("\r\n");
    let mut words = lines.next().unwrap_or_default().split_whitespace();
    let (Some(method), Some(target), Some(version), None) = (words.next(), words.next(), words.next(), words.next())
    else {
        return Err(BadRequest::Malformed);
    };
    if !version.starts_with("HTTP/1.") {
        return Err(BadRequest::Malformed);
    }
    let mut headers = Vec::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':').ok_or(BadRequest::Malformed)?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    Ok(Head {
        method: method.to_string(),
        path: target.split('?').next().unwrap_or_default().to_string(),
        headers,
        rest: Vec::new(),
    })
}

/// Why a body could not be read.
#[derive(Debug, PartialEq, Eq)]
pub enum BadBody {
    /// No Content-Length (chunked bodies are not taken).
    NoLength,
    TooLarge,
    /// The client closed before the whole body came.
    Gone,
}

/// The body `head` announces, at most `limit` bytes.
pub async fn read_body(conn: &mut TcpStream, head: &Head, limit: usize) -> Result<Vec<u8>, BadBody> {
    let len: usize = head.header("content-length").and_then(|v| v.parse().ok()).ok_or(BadBody::NoLength)?;
    if len > limit {
        return Err(BadBody::TooLarge);
    }
    // Bytes past the body (a pipelined request) are not read: the answer
    // closes the connection.
    let arrived = head.rest.len().min(len);
    let mut body = head.rest[..arrived].to_vec();
    body.resize(len, 0);
    conn.read_exact(&mut body[arrived..]).await.map_err(|_| BadBody::Gone)?;
    Ok(body)
}

/// A whole answer: status line, `headers` (each ending in CRLF), and a
/// plain-text body.
pub fn answer(status: &str, headers: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\n{headers}Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_split_into_method_path_and_headers() {
        let head = parse_head(b"POST /alerts?x=1 HTTP/1.1\r\nHost: gw\r\nAuthorization:  Bearer abc \r\n\r\n").unwrap();
        assert_eq!((head.method.as_str(), head.path.as_str()), ("POST", "/alerts"));
        assert_eq!(head.header("authorization"), Some("Bearer abc"));
        assert_eq!(head.header("host"), Some("gw"));
        assert_eq!(head.header("content-length"), None);
        for bad in ["GET /metrics\r\n\r\n", "GET / HTTP/2\r\n\r\n", "GET / HTTP/1.1 x\r\n\r\n", "GET / HTTP/1.1\r\nno colon\r\n\r\n", ""] {
            assert_eq!(parse_head(bad.as_bytes()), Err(BadRequest::Malformed), "{bad:?}");
        }
    }
}
