//! The service a region runs in the lab and the tests: an HTTP/1.1 server
//! that names its region in every body ("I am DataVM on R1", as in the
//! reference demo). Keep-alive, so load tools like wrk can reuse connections.
//!
//! region-http --listen 0.0.0.0:80 [--listen 0.0.0.0:8081 ...] --name R1 [--udp 0.0.0.0:5300] [--idle-reset-ms N]
//!
//! With `--udp`, it also answers each datagram with "R1 " and the datagram:
//! a UDP service whose answers say which region took them.
//!
//! With `--idle-reset-ms`, a connection idle that long is reset, as a
//! production server's keep-alive timeout would close it. A region cut off
//! while its clients gave up on their connections otherwise keeps those
//! sockets established for good, and a client that later reuses one's
//! port toward this region gets a challenge ACK instead of a SYN-ACK
//! (RFC 5961) and connects only at its SYN retransmission, a second later.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context, Result};
use clap::Parser;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
};

#[derive(Parser)]
struct Args {
    /// Each address served (repeat for several ports).
    #[arg(long, required = true)]
    listen: Vec<SocketAddr>,
    #[arg(long)]
    name: String,
    #[arg(long)]
    udp: Option<SocketAddr>,
    #[arg(long)]
    idle_reset_ms: Option<u64>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    raise_open_files_limit();
    let body: &'static str = Box::leak(format!("I am DataVM on {}\n", args.name).into_boxed_str());
    let listeners = args.listen.iter().map(|&addr| bind(addr)).collect::<Result<Vec<_>>>()?;
    if let Some(addr) = args.udp {
        let socket = UdpSocket::bind(addr).await.with_context(|| format!("binding {addr}"))?;
        tokio::spawn(echo(socket, format!("{} ", args.name)));
    }
    let idle_reset = args.idle_reset_ms.map(Duration::from_millis);
    let accepting: Vec<_> = listeners.into_iter().map(|listener| tokio::spawn(accept(listener, body, idle_reset))).collect();
    for task in accepting {
        task.await??;
    }
    Ok(())
}

async fn accept(listener: TcpListener, body: &'static str, idle_reset: Option<Duration>) -> Result<()> {
    loop {
        let (conn, _) = listener.accept().await?;
        tokio::spawn(serve(conn, body, idle_reset));
    }
}

/// Load tests hold thousands of connections: allow as many files as the
/// hard limit does.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// A deep accept queue: load tests open thousands of connections at once.
/// An IPv6 listener takes IPv6 alone, so `[::]:80` and `0.0.0.0:80` can
/// both be given.
fn bind(addr: SocketAddr) -> Result<TcpListener> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into()).with_context(|| format!("binding {addr}"))?;
    socket.listen(65_535)?;
    socket.set_nonblocking(true)?;
    Ok(TcpListener::from_std(socket.into())?)
}

async fn serve(mut conn: TcpStream, body: &str, idle_reset: Option<Duration>) {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        // Requests end at an empty line; bodies are not expected (GET).
        let end = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            let read = match idle_reset {
                Some(idle) => match tokio::time::timeout(idle, conn.read(&mut chunk)).await {
                    Ok(read) => read,
                    Err(_) => {
                        // Dropped with a zero linger: a reset, and no
                        // socket left behind in FIN-WAIT.
                        let _ = conn.set_zero_linger();
                        return;
                    }
                },
                None => conn.read(&mut chunk).await,
            };
            match read {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let request = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let http10 = request.lines().next().is_some_and(|l| l.trim_end().ends_with("http/1.0"));
        let close = (http10 && !request.contains("connection: keep-alive"))
            || request.contains("connection: close");
        buf.drain(..end);
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{}\r\n{body}",
            body.len(),
            if close { "Connection: close\r\n" } else { "" }
        );
        if conn.write_all(response.as_bytes()).await.is_err() || close {
            return;
        }
    }
}

/// Answers every datagram with `prefix` and the datagram.
async fn echo(socket: UdpSocket, prefix: String) {
    let mut buf = [0u8; 1500];
    loop {
        let Ok((len, from)) = socket.recv_from(&mut buf).await else { continue };
        let mut answer = prefix.clone().into_bytes();
        answer.extend_from_slice(&buf[..len]);
        let _ = socket.send_to(&answer, from).await;
    }
}
