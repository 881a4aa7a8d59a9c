//! The alert webhook: Prometheus Alertmanager (or anything that posts its
//! payload) takes regions down and gives them back, as `redirectorctl down`
//! and `up` do. Off unless `[alerts]` is configured; on its own listen
//! address; every request carries the bearer token from `token_file`.
//!
//! `POST /alerts` with Alertmanager's webhook payload (version 4): each
//! alert whose labels carry `label` (default `region`) names a region;
//! firing takes it down, resolved gives it back to its checks. When one
//! payload says both of a region (grouped alerts), firing wins. Alerts
//! without the label are not ours and are ignored. A payload naming an
//! unknown region, or not a payload, is refused whole: nothing changes.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use redirector_proto::{
    control::{Request, Response},
    key::Key,
};
use serde::Deserialize;
use tokio::{
    io::AsyncWriteExt,
    net::{TcpListener, TcpStream},
    sync::{mpsc, oneshot},
};
use tracing::{info, warn};

use crate::{
    control_server::Call,
    http::{self, BadBody, BadRequest},
    listener::{self, ListenerStats},
};

/// A webhook call gets this long to send its payload and take the answer.
const DEADLINE: Duration = Duration::from_secs(10);
/// Alertmanager batches alerts per group; a thousand alerts are well under.
const MAX_BODY: usize = 1024 * 1024;

#[derive(Deserialize)]
struct Payload {
    alerts: Vec<Alert>,
}

#[derive(Deserialize)]
struct Alert {
    status: AlertStatus,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum AlertStatus {
    Firing,
    Resolved,
}

/// What a payload asks: `down` or `up` for each region it names, in
/// region order.
pub fn decide(body: &[u8], label: &str, known: &[String]) -> Result<Vec<Request>, String> {
    let payload: Payload =
        serde_json::from_slice(body).map_err(|e| format!("not an Alertmanager webhook payload: {e}"))?;
    let mut regions: BTreeMap<&str, bool> = BTreeMap::new();
    for alert in &payload.alerts {
        let Some(region) = alert.labels.get(label) else { continue };
        if !known.iter().any(|k| k == region) {
            return Err(format!("alert names region {region:?}, unknown (known: {})", known.join(", ")));
        }
        *regions.entry(region).or_default() |= alert.status == AlertStatus::Firing;
    }
    Ok(regions
        .into_iter()
        .map(|(region, firing)| {
            let region = region.to_string();
            if firing { Request::Down { region } } else { Request::Up { region } }
        })
        .collect())
}

pub struct Settings {
    pub token: Key,
    pub label: String,
}

pub async fn serve(listener: TcpListener, settings: Arc<Settings>, calls: mpsc::Sender<Call>, stats: Arc<ListenerStats>) {
    if let Ok(at) = listener.local_addr() {
        info!("alert webhook on http://{at}/alerts");
    }
    listener::serve(listener, "alerts", DEADLINE, stats, move |conn| answer(conn, settings.clone(), calls.clone())).await
}

async fn answer(mut conn: TcpStream, settings: Arc<Settings>, calls: mpsc::Sender<Call>) {
    let response = match respond(&mut conn, &settings, &calls).await {
        Some(response) => response,
        None => return,
    };
    let _ = conn.write_all(response.as_bytes()).await;
}

/// The answer to one request; None when the client is gone.
async fn respond(conn: &mut TcpStream, settings: &Settings, calls: &mpsc::Sender<Call>) -> Option<String> {
    let head = match http::read_head(conn).await {
        Ok(head) => head,
        Err(BadRequest::Gone) => return None,
        Err(BadRequest::Malformed) => return Some(http::answer("400 Bad Request", "", "malformed request\n")),
    };
    if head.path != "/alerts" {
        return Some(http::answer("404 Not Found", "", "POST /alerts\n"));
    }
    if head.method != "POST" {
        return Some(http::answer("405 Method Not Allowed", "Allow: POST\r\n", "POST /alerts\n"));
    }
    let token = head.header("authorization").and_then(|v| v.strip_prefix("Bearer "));
    if !token.is_some_and(|t| settings.token.matches(t.trim().as_bytes())) {
        warn!("alerts: a request without the bearer token refused");
        return Some(http::answer("401 Unauthorized", "WWW-Authenticate: Bearer\r\n", "bearer token missing or wrong\n"));
    }
    let body = match http::read_body(conn, &head, MAX_BODY).await {
        Ok(body) => body,
        Err(BadBody::Gone) => return None,
        Err(BadBody::NoLength) => return Some(http::answer("411 Length Required", "", "Content-Length required\n")),
        Err(BadBody::TooLarge) => {
            return Some(http::answer("413 Content Too Large", "", &format!("at most {MAX_BODY} bytes\n")))
        }
    };
    let known = match call(calls, Request::Status).await {
        Some(Response::Status(status)) => status.regions.into_iter().map(|r| r.name).collect::<Vec<_>>(),
        _ => return Some(http::answer("503 Service Unavailable", "", "the controller did not answer\n")),
    };
    let requests = match decide(&body, &settings.label, &known) {
        Ok(requests) => requests,
        Err(e) => {
            warn!("alerts: payload refused: {e}");
            return Some(http::answer("422 Unprocessable Content", "", &format!("{e}; nothing changed\n")));
        }
    };
    let mut said = String::new();
    for request in requests {
        let line = match call(calls, request).await {
            Some(Response::Done { message }) => message,
            Some(Response::Error { message }) => format!("error: {message}"),
            _ => "the controller did not answer".into(),
        };
        info!("alerts: {line}");
        said.push_str(&line);
        said.push('\n');
    }
    Some(http::answer("200 OK", "", &said))
}

async fn call(calls: &mpsc::Sender<Call>, request: Request) -> Option<Response> {
    let (reply, answer) = oneshot::channel();
    let (delivered, delivered_rx) = oneshot::channel();
    calls.send(Call { request, reply, delivered: delivered_rx }).await.ok()?;
    let response = answer.await.ok();
    let _ = delivered.send(());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known() -> Vec<String> {
        ["region1", "region2", "region3"].map(String::from).to_vec()
    }

    fn payload(alerts: &[(&str, &str)]) -> Vec<u8> {
        let alerts: Vec<String> = alerts
            .iter()
            .map(|(status, region)| {
                format!(r#"{{"status":"{status}","labels":{{"alertname":"RegionDown","region":"{region}"}},"annotations":{{}},"startsAt":"2026-11-29T10:00:00Z","fingerprint":"f"}}"#)
            })
            .collect();
        format!(r#"{{"version":"4","status":"firing","receiver":"redirector","groupLabels":{{}},"alerts":[{}]}}"#, alerts.join(","))
            .into_bytes()
    }

    #[test]
    fn firing_takes_a_region_down_resolved_gives_it_back_and_firing_wins() {
        let body = payload(&[("firing", "region2"), ("resolved", "region1"), ("resolved", "region2")]);
        assert_eq!(
            decide(&body, "region", &known()),
            Ok(vec![Request::Up { region: "region1".into() }, Request::Down { region: "region2".into() }])
        );
    }

    #[test]
    fn alerts_without_the_label_are_not_ours() {
        let body = br#"{"alerts":[{"status":"firing","labels":{"alertname":"DiskFull","instance":"gw1"}}]}"#;
        assert_eq!(decide(body, "region", &known()), Ok(vec![]));
        assert_eq!(decide(&payload(&[("firing", "region2")]), "site", &known()), Ok(vec![]), "another label configured");
    }

    #[test]
    fn a_payload_naming_an_unknown_region_or_not_a_payload_is_refused_whole() {
        let body = payload(&[("firing", "region2"), ("firing", "region9")]);
        assert_eq!(decide(&body, "region", &known()), Err("alert names region \"region9\", unknown (known: region1, region2, region3)".into()));
        for bad in [&b"{}"[..], b"not json", br#"{"alerts":[{"status":"pending","labels":{}}]}"#, b""] {
            let e = decide(bad, "region", &known()).unwrap_err();
            assert!(e.starts_with("not an Alertmanager webhook payload: "), "{e}");
        }
    }

    /// The webhook on a free port, its calls answered by a stand-in for
    /// the controller that knows three regions and records every command.
    async fn webhook() -> (std::net::SocketAddr, mpsc::UnboundedReceiver<Request>) {
        use redirector_proto::control::{RegionView, Status};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let at = listener.local_addr().unwrap();
        let (calls, mut incoming) = mpsc::channel::<Call>(8);
        let (seen, commands) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(Call { request, reply, .. }) = incoming.recv().await {
                let response = match request {
                    Request::Status => {
                        let view = |name: &str| RegionView { name: name.into(), ..serde_json::from_str(REGION_VIEW).unwrap() };
                        Response::Status(Status { regions: known().iter().map(|n| view(n)).collect(), ..Status::default() })
                    }
                    other => {
                        let message = format!("{other:?}");
                        seen.send(other).unwrap();
                        Response::Done { message }
                    }
                };
                let _ = reply.send(response);
            }
        });
        let settings = Arc::new(Settings { token: token(), label: "region".into() });
        tokio::spawn(serve(listener, settings, calls, Arc::default()));
        (at, commands)
    }

    const REGION_VIEW: &str = r#"{"name":"","state":"up","since_unix_ms":0,"checks":[],"pps":0.0,"active_flows":0,"packets":0,"bytes":0,"new_flows":0,"cpu_percent":null,"agent_connections":null,"saturated":[]}"#;
    const TOKEN: &str = "0123456789abcdef0123";

    fn token() -> Key {
        let path = std::env::temp_dir().join(format!("redirector-alerts-token-{}", std::process::id()));
        std::fs::write(&path, format!("{TOKEN}\n")).unwrap();
        let key = Key::load(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        key
    }

    async fn post(at: std::net::SocketAddr, request: String) -> String {
        use tokio::io::AsyncReadExt;
        let mut conn = TcpStream::connect(at).await.unwrap();
        conn.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).await.unwrap();
        answer
    }

    fn request(method_path: &str, auth: &str, body: &[u8]) -> String {
        format!(
            "{method_path} HTTP/1.1\r\nHost: gw\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
            body.len(),
            String::from_utf8_lossy(body)
        )
    }

    #[tokio::test]
    async fn only_authentic_whole_payloads_change_anything() {
        let (at, mut commands) = webhook().await;
        let bearer = format!("Authorization: Bearer {TOKEN}\r\n");
        let body = payload(&[("firing", "region2"), ("resolved", "region1")]);
        for (request, status) in [
            (request("POST /alerts", "", &body), "401 Unauthorized"),
            (request("POST /alerts", "Authorization: Bearer 0123456789abcdef0124\r\n", &body), "401 Unauthorized"),
            (request("POST /other", &bearer, &body), "404 Not Found"),
            (request("GET /alerts", &bearer, b""), "405 Method Not Allowed"),
            (format!("POST /alerts HTTP/1.1\r\n{bearer}Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"), "411 Length Required"),
            (request("POST /alerts", &bearer, b"{\"alerts\": 3}"), "422 Unprocessable Content"),
            (request("POST /alerts", &bearer, &payload(&[("firing", "region2"), ("firing", "region9")])), "422 Unprocessable Content"),
        ] {
            let answer = post(at, request.clone()).await;
            assert!(answer.starts_with(&format!("HTTP/1.1 {status}\r\n")), "{request:?}: {answer}");
        }
        assert!(commands.try_recv().is_err(), "nothing refused reached the controller");

        let answer = post(at, request("POST /alerts", &bearer, &body)).await;
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert_eq!(commands.recv().await, Some(Request::Up { region: "region1".into() }));
        assert_eq!(commands.recv().await, Some(Request::Down { region: "region2".into() }));
    }
}
