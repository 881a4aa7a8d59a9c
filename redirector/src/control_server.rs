//! The control socket redirectorctl talks to: one JSON request line, one
//! JSON response line (the messages are in `redirector_proto::control`).
//! Mode 0600: whoever can steer the data plane is root's business.

use std::{fs, os::unix::fs::PermissionsExt, path::Path, sync::Arc, time::Duration};

use anyhow::{bail, Context, Result};
use redirector_proto::control::{Request, Response};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};

use crate::listener::{self, ListenerStats};

/// A request, where its answer goes, and word that the answer reached the
/// client (so a daemon that exits after answering waits for it).
pub struct Call {
    pub request: Request,
    pub reply: oneshot::Sender<Response>,
    pub delivered: oneshot::Receiver<()>,
}

/// Binds the socket. A socket left by a dead daemon is replaced; one a live
/// daemon answers on is not.
pub fn bind(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!("another redirectord answers on {}", path.display());
        }
        fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// An operator's request and its answer get this long.
const DEADLINE: Duration = Duration::from_secs(10);
/// A request line longer than this is refused.
const MAX_REQUEST: u64 = 64 * 1024;

/// Answers connections for ever, passing each request to the controller
/// and its response back.
pub async fn serve(listener: UnixListener, calls: mpsc::Sender<Call>, stats: Arc<ListenerStats>) {
    listener::serve(listener, "control socket", DEADLINE, stats, move |conn| answer(conn, calls.clone())).await
}

async fn answer(conn: UnixStream, calls: mpsc::Sender<Call>) {
    let (read, mut write) = conn.into_split();
    let mut line = Vec::new();
    let mut reader = BufReader::new(read.take(MAX_REQUEST));
    if reader.read_until(b'\n', &mut line).await.is_err() || line.is_empty() {
        return;
    }
    let (delivered_tx, delivered) = oneshot::channel();
    let response = match parse(&line) {
        Ok(request) => {
            let (reply, answer) = oneshot::channel();
            if calls.send(Call { request, reply, delivered }).await.is_err() {
                return;
            }
            match answer.await {
                Ok(response) => response,
                Err(_) => return,
            }
        }
        Err(message) => Response::Error { message },
    };
    let mut text = serde_json::to_string(&response).unwrap_or_default();
    text.push('\n');
    if write.write_all(text.as_bytes()).await.is_ok() && write.flush().await.is_ok() {
        let _ = delivered_tx.send(());
    }
}

/// A request line, or why it is none.
fn parse(line: &[u8]) -> Result<Request, String> {
    let text = std::str::from_utf8(line).map_err(|e| format!("bad request: not UTF-8 ({e})"))?;
    serde_json::from_str(text).map_err(|e| format!("bad request: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_that_are_not_json_or_not_utf8_get_an_error_naming_why() {
        assert_eq!(parse(b"{\"command\":\"status\"}\n"), Ok(Request::Status));
        let not_utf8 = parse(b"{\"command\":\"st\xffatus\"}\n").unwrap_err();
        assert!(not_utf8.starts_with("bad request: not UTF-8"), "{not_utf8}");
        let unknown = parse(b"{\"command\":\"reboot\"}").unwrap_err();
        assert!(unknown.starts_with("bad request: unknown variant `reboot`"), "{unknown}");
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        fn name() -> impl Strategy<Value = String> {
            "[a-z0-9\\-_.\"\\\\é]{0,12}"
        }

        fn request() -> impl Strategy<Value = Request> {
            prop_oneof![
                Just(Request::Status),
                Just(Request::Events),
                Just(Request::Reload),
                Just(Request::Detach),
                (prop::option::of(name()), prop::option::of(name()))
                    .prop_map(|(region, service)| Request::SetActive { region, service }),
                (name(), any::<u32>(), prop::option::of(name()))
                    .prop_map(|(region, weight, service)| Request::Weight { region, weight, service }),
                name().prop_map(|region| Request::Drain { region }),
                name().prop_map(|region| Request::Undrain { region }),
                name().prop_map(|region| Request::Down { region }),
                name().prop_map(|region| Request::Up { region }),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

            #[test]
            fn every_request_survives_the_wire(request in request()) {
                let mut line = serde_json::to_vec(&request).unwrap();
                line.push(b'\n');
                prop_assert_eq!(parse(&line), Ok(request));
            }

            #[test]
            fn no_line_makes_the_parser_panic(
                request in request(),
                flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
                noise in prop::collection::vec(any::<u8>(), 0..256),
            ) {
                let _ = parse(&noise);
                let mut line = serde_json::to_vec(&request).unwrap();
                for (at, byte) in flips {
                    let i = at.index(line.len());
                    line[i] ^= byte;
                }
                if let Err(message) = parse(&line) {
                    prop_assert!(message.starts_with("bad request: "), "{}", message);
                }
            }
        }
    }
}
