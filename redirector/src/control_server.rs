//! The control socket redirectorctl talks to: one JSON request line, one
//! JSON response line (the messages are in `redirector_proto::control`).
//! Mode 0600: whoever can steer the data plane is root's business.

use std::{fs, os::unix::fs::PermissionsExt, path::Path};

use anyhow::{bail, Context, Result};
use redirector_proto::control::{Request, Response};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::UnixListener,
    sync::{mpsc, oneshot},
};

/// A request and where its answer goes.
pub type Call = (Request, oneshot::Sender<Response>);

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

/// Answers connections until the controller is gone, passing each request
/// to it and its response back.
pub async fn serve(listener: UnixListener, calls: mpsc::Sender<Call>) {
    loop {
        let Ok((conn, _)) = listener.accept().await else { continue };
        let calls = calls.clone();
        tokio::spawn(async move {
            let (read, mut write) = conn.into_split();
            let mut line = String::new();
            let mut reader = BufReader::new(read.take(64 * 1024));
            if reader.read_line(&mut line).await.is_err() {
                return;
            }
            let response = match serde_json::from_str::<Request>(&line) {
                Ok(request) => {
                    let (reply, answer) = oneshot::channel();
                    if calls.send((request, reply)).await.is_err() {
                        return;
                    }
                    match answer.await {
                        Ok(response) => response,
                        Err(_) => return,
                    }
                }
                Err(e) => Response::Error { message: format!("bad request: {e}") },
            };
            let mut text = serde_json::to_string(&response).unwrap_or_default();
            text.push('\n');
            let _ = write.write_all(text.as_bytes()).await;
        });
    }
}
