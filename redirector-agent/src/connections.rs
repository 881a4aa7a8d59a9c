//! Established connections to the region's service, from /proc/net/tcp:
//! what the agent reports next to the data plane's count of active flows.

use std::{fs, io, path::Path};

use anyhow::{Context, Result};

use crate::cpu::read_text;

const TCP_ESTABLISHED: &str = "01";

/// ESTABLISHED connections with local port `port` in a /proc/net/tcp or
/// /proc/net/tcp6 table. Lines that do not parse (the header) are skipped.
pub fn established_on_port(table: &str, port: u16) -> u32 {
    let count = table
        .lines()
        .filter(|line| {
            let mut fields = line.split_whitespace();
            let local = fields.nth(1);
            let state = fields.nth(1);
            state == Some(TCP_ESTABLISHED) && local.and_then(local_port) == Some(port)
        })
        .count();
    u32::try_from(count).unwrap_or(u32::MAX)
}

/// The port of an `ADDRESS:PORT` field, both in hex.
fn local_port(field: &str) -> Option<u16> {
    let (_, port) = field.rsplit_once(':')?;
    u16::from_str_radix(port, 16).ok()
}

/// Established connections to the service in this network namespace.
/// IPv4 clients of a service listening on `::` are in tcp6, as mapped
/// addresses, so both tables count; tcp6 is absent without IPv6.
pub fn count_connections(port: u16) -> Result<u32> {
    let v4 = established_on_port(&read_text(Path::new("/proc/net/tcp"))?, port);
    let v6 = match fs::read_to_string("/proc/net/tcp6") {
        Ok(table) => established_on_port(&table, port),
        Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e).context("reading /proc/net/tcp6"),
    };
    Ok(v4.saturating_add(v6))
}

#[cfg(test)]
mod tests {
    use super::*;


    /// Port 8080 is 1F90. Lines: a listener on 8080, two clients on 8080,
    /// one in TIME_WAIT on 8080, one established on 22, and an outbound
    /// connection *to* 8080 (local port ephemeral).
    const NET_TCP: &str = "\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0000000000000000 100 0 0 10 0
   1: 0201010A:1F90 0200000A:C350 01 00000000:00000000 00:00000000 00000000     0        0 1002 1 0000000000000000 20 4 30 10 -1
   2: 0201010A:1F90 0300000A:C351 01 00000000:00000000 00:00000000 00000000     0        0 1003 1 0000000000000000 20 4 30 10 -1
   3: 0201010A:1F90 0400000A:C352 06 00000000:00000000 03:00000285 00000000     0        0 0 3 0000000000000000
   4: 0201010A:0016 0500000A:D431 01 00000000:00000000 02:0009A2E4 00000000     0        0 1004 2 0000000000000000 20 4 1 10 -1
   5: 0201010A:A1B2 0600000A:1F90 01 00000000:00000000 00:00000000 00000000     0        0 1005 1 0000000000000000 20 4 30 10 -1
";

    const NET_TCP6: &str = "\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2001 1 0000000000000000 100 0 0 10 0
   1: 0000000000000000FFFF00000201010A:1F90 0000000000000000FFFF00000700000A:C353 01 00000000:00000000 00:00000000 00000000     0        0 2002 1 0000000000000000 20 4 30 10 -1
";

    #[test]
    fn only_established_connections_on_the_local_port_count() {
        assert_eq!(established_on_port(NET_TCP, 8080), 2);
        assert_eq!(established_on_port(NET_TCP, 22), 1);
        assert_eq!(established_on_port(NET_TCP, 0xA1B2), 1);
        assert_eq!(established_on_port(NET_TCP, 80), 0);
        assert_eq!(established_on_port(NET_TCP6, 8080), 1);
        assert_eq!(established_on_port("", 8080), 0);
        assert_eq!(established_on_port("garbage\n   7: x:zz 01\n", 8080), 0);
    }

    #[test]
    fn connections_are_counted_in_this_namespace() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let before = count_connections(port).unwrap();
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let _server = listener.accept().unwrap();
        // The accepted end has the local port; the client's end does not.
        assert_eq!(count_connections(port).unwrap(), before + 1);
    }
}
