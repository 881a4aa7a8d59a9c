//! redirectord's wiring: the config and the data plane loaded, the
//! controller started on them, and its inputs connected: checker tasks on
//! a runtime thread of their own, the flow-table sweep on a blocking
//! thread, the control socket, `/metrics` and signals. The controller's
//! loop runs here; everything it decides is in [`crate::controller`].
//!
//! Exiting (SIGTERM, SIGINT, a crash) leaves the data plane forwarding on
//! its last state: maps and links are pinned. A new redirectord adopts
//! them; its regions start pending and nothing is written until checks
//! give verdicts, so a restart moves no flow.

use std::{
    fs,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{anyhow, Context, Result};
use redirector_proto::{
    control::{Request, Response},
    key::Key,
};
use tokio::{
    net::TcpListener,
    signal::unix::{signal, SignalKind},
    sync::{mpsc, oneshot, watch},
    time::sleep_until,
};
use tracing::{error, info, warn};

use crate::{
    alerts, bfd,
    checkers::{Checkers, Keys},
    config::Config,
    control_server,
    controller::{unix_ms, Controller, MonotonicClock},
    dataplane::{self, check_services, flow_table, service_specs, BpfDataplane, FlowEventLogger, LoadOptions},
    flow_list::{self, Filter},
    listener::ListenerStats,
    metrics, passive,
    sync::{self, Sync},
};

#[derive(Clone, Debug)]
pub struct Options {
    pub config: PathBuf,
    /// Log new flows and re-steers from the data plane (aya-log).
    pub log_flow_events: bool,
    /// Take the data plane down on exit instead of leaving it forwarding.
    pub detach_on_exit: bool,
}

/// `redirectord --check-config`: everything `reload` checks before
/// applying. `on_this_host`: the interfaces must exist here too (not with
/// `--offline`, which checks a file meant for another machine).
pub fn check_config(path: &Path, on_this_host: bool) -> Result<String> {
    let config = Config::load(path)?;
    Keys::load(&config)?;
    alert_token(&config)?;
    sync_key(&config)?;
    check_services(&service_specs(&config))?;
    for (i, interface) in config.interfaces.iter().enumerate().filter(|_| on_this_host) {
        dataplane::ifindex(interface).with_context(|| format!("{}: interfaces[{i}]", path.display()))?;
    }
    Ok(format!(
        "{}: ok ({} regions, {} services, {} interfaces)",
        path.display(),
        config.regions.len(),
        config.services.len(),
        config.interfaces.len()
    ))
}

/// The alert webhook's bearer token, if `[alerts]` is configured.
fn alert_token(config: &Config) -> Result<Option<Key>> {
    key_file(config.alerts.as_ref().map(|a| a.token_file.as_path()), "alerts.token_file")
}

/// The key sync datagrams are signed with, if `[sync]` names one.
fn sync_key(config: &Config) -> Result<Option<Key>> {
    key_file(config.sync.as_ref().and_then(|s| s.key_file.as_deref()), "sync.key_file")
}

/// A key file the config names (`setting`, for errors), if it names one.
fn key_file(path: Option<&Path>, setting: &str) -> Result<Option<Key>> {
    path.map(|path| Key::load(path).context(setting.to_string())).transpose()
}

pub async fn run(options: Options) -> Result<()> {
    let config = Config::load(&options.config)?;
    let keys = Keys::load(&config)?;
    let alert_token = alert_token(&config)?;
    let sync_key = sync_key(&config)?;
    check_services(&service_specs(&config))?;
    let mut dataplane = BpfDataplane::load(&LoadOptions {
        pin_path: config.pin_path.clone(),
        log_flow_events: options.log_flow_events,
        sync_flow_events: config.sync.is_some(),
        passive_detection: config.passive.is_some(),
        flow_table_size: config.flow_table_size,
        xdp_mode: config.xdp_mode,
    })?;
    if let Some(logger) = dataplane.take_logger() {
        tokio::spawn(poll_flow_events(logger));
    }
    let mut flows = dataplane.flow_table()?;
    let sync = match (&config.sync, dataplane.take_flow_events()) {
        (Some(settings), Some(events)) => {
            let ipv6: Vec<&str> = config.services.iter().filter(|s| s.addr.vip.is_ipv6()).map(|s| s.name.as_str()).collect();
            if !ipv6.is_empty() {
                warn!(
                    "the flow sync carries IPv4 flows only: the flows of {} stay on the gateway that \
                     carries them (a peer taking over selects them anew)",
                    ipv6.join(", ")
                );
            }
            let sync = Sync::start(settings, sync_key, sync::digest(&config), dataplane.flow_table()?, events)?;
            flows.announce_to(sync.news.clone());
            Some(sync)
        }
        _ => None,
    };
    let origin = Instant::now();
    let (signal_tx, mut signal_rx) = mpsc::channel(1024);
    if let Some(ring) = dataplane.take_region_signals() {
        tokio::spawn(passive::read_signals(ring, move || origin.elapsed(), signal_tx));
    }
    let mut controller = Controller::start(config, dataplane, Box::new(MonotonicClock(origin)), unix_ms())?;

    // Probes are timestamped on this runtime's thread, never behind the
    // controller's work.
    let probe_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("checkers")
        .enable_all()
        .build()
        .context("starting the checkers' runtime")?;
    let (probe_tx, mut probe_rx) = mpsc::channel(1024);
    let bfd = Arc::new(bfd::Shared::default());
    let spawn_checkers = |controller: &Controller<BpfDataplane>, keys: &Keys| {
        Checkers::spawn(
            probe_runtime.handle(),
            controller.config(),
            keys,
            controller.generation(),
            origin,
            probe_tx.clone(),
            bfd.clone(),
        )
    };
    let mut checkers = spawn_checkers(&controller, &keys);

    // Samples pace the load policies; each is one walk of the flow table,
    // the first before any decision.
    controller.on_sample(flows.sweep_logged());
    let (sample_period, period_rx) = watch::channel(controller.config().balance.sample);
    let (sweeps, mut sweep_rx) = mpsc::channel(1);
    tokio::spawn(flow_table::sweep_every(flows, period_rx, sweeps));

    let control_stats = Arc::new(ListenerStats::default());
    let control_socket = controller.config().control_socket.clone();
    let (call_tx, mut call_rx) = mpsc::channel(64);
    let control = control_server::bind(&control_socket)?;
    let mut listeners = vec![("control", control_stats.clone())];
    if let (Some(alerts), Some(token)) = (controller.config().alerts.clone(), alert_token) {
        let listener =
            TcpListener::bind(alerts.listen).await.with_context(|| format!("alerts: binding {}", alerts.listen))?;
        let stats = Arc::new(ListenerStats::default());
        listeners.push(("alerts", stats.clone()));
        let settings = Arc::new(alerts::Settings { token, label: alerts.label });
        tokio::spawn(alerts::serve(listener, settings, call_tx.clone(), stats));
    }
    tokio::spawn(control_server::serve(control, call_tx, control_stats));
    if let Some(listen) = controller.config().metrics_listen {
        let listener = TcpListener::bind(listen).await.with_context(|| format!("metrics: binding {listen}"))?;
        let metrics_stats = Arc::new(ListenerStats::default());
        listeners.push(("metrics", metrics_stats.clone()));
        let sync_view = sync.as_ref().map(|s| s.view.clone());
        tokio::spawn(metrics::serve(
            listener,
            controller.metrics(),
            metrics::Listeners(listeners),
            sync_view,
            bfd.clone(),
            metrics_stats,
        ));
    }
    info!(
        "redirectord running: {} regions, {} services, control socket {}",
        controller.config().regions.len(),
        controller.config().services.len(),
        control_socket.display()
    );

    let mut sighup = signal(SignalKind::hangup())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut detached = false;
    let mut failure = None;
    let mut held = HeldReplies::default();
    loop {
        let deadline = controller.next_deadline().map(|d| tokio::time::Instant::from_std(origin + d));
        tokio::select! {
            Some(report) = probe_rx.recv() => controller.on_probe(report),
            Some(signal) = signal_rx.recv() => controller.on_region_signal(signal),
            Some(control_server::Call { request, reply, delivered }) = call_rx.recv() => {
                let response = match request {
                    Request::Reload => match reload(&mut controller, &options.config) {
                        Ok((message, keys)) => {
                            checkers = spawn_checkers(&controller, &keys);
                            sync_digest(&sync, &controller);
                            Response::Done { message }
                        }
                        Err(e) => Response::Error { message: format!("config refused, nothing changed: {e:#}") },
                    },
                    Request::Detach => match controller.detach() {
                        Ok(()) => {
                            detached = true;
                            Response::Done { message: "detached from every interface; pins removed; redirectord exits".into() }
                        }
                        Err(e) => Response::Error { message: format!("{e:#}") },
                    },
                    // Read on a blocking thread, answered from there: the
                    // loop goes on.
                    Request::Flows { region, service, limit } => {
                        match Filter::new(controller.config(), region.as_deref(), service.as_deref(), limit) {
                            Ok(filter) => {
                                let config = controller.config().clone();
                                tokio::spawn(flow_list::answer(config.pin_path.clone(), config, filter, reply));
                                continue;
                            }
                            Err(message) => Response::Error { message },
                        }
                    }
                    Request::Status => match controller.handle(Request::Status) {
                        Response::Status(mut status) => {
                            status.sync = sync.as_ref().map(Sync::view);
                            Response::Status(status)
                        }
                        other => other,
                    },
                    other => controller.handle(other),
                };
                if detached {
                    let _ = reply.send(response);
                    // The answer first: redirectorctl waits for it.
                    let _ = tokio::time::timeout(Duration::from_secs(1), delivered).await;
                    break;
                }
                held.hold(reply, response);
            }
            _ = sleep_until(deadline.unwrap_or_else(far_future)), if deadline.is_some() => controller.on_deadline(),
            sweep = sweep_rx.recv() => match sweep {
                Some(sweep) => controller.on_sample(sweep),
                None => {
                    failure = Some(anyhow!("the flow-table sweep stopped (logged above)"));
                    break;
                }
            },
            _ = sighup.recv() => match reload(&mut controller, &options.config) {
                Ok((message, keys)) => {
                    checkers = spawn_checkers(&controller, &keys);
                    sync_digest(&sync, &controller);
                    info!("SIGHUP: {message}");
                }
                Err(e) => error!("SIGHUP: config refused, nothing changed: {e:#}"),
            },
            // After a reload (SIGHUP or `redirectorctl reload`).
            _ = std::future::ready(()), if *sample_period.borrow() != controller.config().balance.sample => {
                sample_period.send_replace(controller.config().balance.sample);
            }
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
        held.release(controller.tables_pending());
    }

    drop(checkers);
    probe_runtime.shutdown_background();
    let _ = fs::remove_file(&control_socket);
    if options.detach_on_exit && !detached {
        controller.detach()?;
        info!("detached the data plane on exit");
    } else if !detached {
        info!("exiting; the data plane keeps forwarding on its last state");
    }
    failure.map_or(Ok(()), Err)
}

/// Answers to operators' commands whose tables wait for the bank-reuse
/// grace (a few ms) or a retry: sent once every table is written, so that
/// a script's next connection after `redirectorctl set-active` already
/// goes where it said. A write that keeps failing is not waited for
/// longer than `HELD_AT_MOST`; the answer then says so.
#[derive(Default)]
struct HeldReplies(Vec<(oneshot::Sender<Response>, Response, Instant)>);

const HELD_AT_MOST: Duration = Duration::from_secs(1);

impl HeldReplies {
    fn hold(&mut self, reply: oneshot::Sender<Response>, response: Response) {
        self.0.push((reply, response, Instant::now()));
    }

    fn release(&mut self, tables_pending: bool) {
        let held = std::mem::take(&mut self.0);
        for (reply, response, since) in held {
            if !tables_pending {
                let _ = reply.send(response);
            } else if since.elapsed() >= HELD_AT_MOST {
                let _ = reply.send(match response {
                    Response::Done { message } => Response::Done {
                        message: format!("{message} (a selection table is not written yet: retried, see the log)"),
                    },
                    other => other,
                });
            } else {
                self.0.push((reply, response, since));
            }
        }
    }
}

/// Re-reads the config and its keys and hands it to the controller;
/// refused whole if anything is wrong.
fn reload(controller: &mut Controller<BpfDataplane>, path: &Path) -> Result<(String, Keys)> {
    let config = Config::load(path)?;
    let keys = Keys::load(&config)?;
    let summary = controller.reload(config)?;
    Ok((format!("reloaded {}: {summary}", path.display()), keys))
}

/// A reload may change what peers must agree on: from now on the sync
/// speaks for the new config.
fn sync_digest(sync: &Option<Sync>, controller: &Controller<BpfDataplane>) {
    if let Some(sync) = sync {
        sync.set_digest(sync::digest(controller.config()));
    }
}

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86_400)
}

async fn poll_flow_events(logger: FlowEventLogger) {
    // SAFETY: the AsyncFd owns the logger, which owns the fd: the fd stays
    // open for as long as it is registered.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    };
    let mut logger = match registered {
        Ok(fd) => fd,
        Err(e) => return warn!("flow events: {e}"),
    };
    loop {
        let Ok(mut guard) = logger.readable_mut().await else { return };
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_config_on_this_host_needs_its_interfaces() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/redirector.toml");
        let err = format!("{:#}", check_config(&example, true).unwrap_err());
        assert!(err.ends_with("interfaces[0]: no interface named \"veth-client\""), "{err}");
    }

    #[test]
    fn shipped_example_configs_are_valid() {
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        for entry in fs::read_dir(examples).unwrap() {
            let path = entry.unwrap().path();
            check_config(&path, false).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        }
    }
}
