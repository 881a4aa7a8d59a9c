//! One redirectord of the lab, in its gateway's namespace: started,
//! stopped, and asked through its control socket as an operator would.
//! A lab has one, or two for a gateway pair.

use std::{
    fs,
    path::PathBuf,
    process::{Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use redirector_proto::{
    control::{Event, EventKind, Status},
    model::RegionStatus,
};

use super::{binary, log_to, wait_for, Process, METRICS};
use crate::{netns::Netns, xdp::PinDir};

pub struct Daemon {
    /// Names its process and its log file.
    name: String,
    ns: Netns,
    pub config_path: PathBuf,
    pub socket: PathBuf,
    pub pins: PinDir,
    log: PathBuf,
    process: Option<Process>,
}

impl Daemon {
    /// `ns`: the gateway's namespace (not deleted by this handle); logs go
    /// to `<name>.log` in `dir`.
    pub fn new(name: &str, ns: &Netns, config_path: PathBuf, socket: PathBuf, pins: PinDir, dir: &std::path::Path) -> Result<Self> {
        Ok(Self {
            name: name.to_string(),
            ns: Netns::attach(ns.name())?,
            config_path,
            socket,
            pins,
            log: dir.join(format!("{name}.log")),
            process: None,
        })
    }

    /// Starts it and waits until it answers and every region has a health
    /// verdict.
    pub fn start(&mut self) -> Result<()> {
        let mut cmd = self.ns.command(binary("redirectord")?.to_str().unwrap());
        cmd.args(["--config", self.config_path.to_str().unwrap()]);
        log_to(&mut cmd, &self.log)?;
        self.process = Some(Process::spawn(cmd, &self.name)?);
        wait_for(Duration::from_secs(10), || {
            if let Some(status) = self.exited()? {
                bail!("{} exited ({status}): {}", self.name, self.log());
            }
            let status = self.status()?;
            match status.regions.iter().find(|r| r.state == RegionStatus::Pending) {
                Some(r) => bail!("{} still pending", r.name),
                None => Ok(()),
            }
        })
    }

    /// Kills it with `signal`; the data plane stays.
    pub fn stop(&mut self, signal: i32) -> Result<()> {
        match self.process.take() {
            Some(process) => process.stop(signal),
            None => Ok(()),
        }
    }

    /// Waits (at most `limit`) for it to exit by itself.
    pub fn exit(&mut self, limit: Duration) -> Result<std::process::ExitStatus> {
        let process = self.process.as_mut().with_context(|| format!("{} was not started", self.name))?;
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = process.exited()? {
                self.process = None;
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("{} still runs after {limit:?}", self.name);
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// How it ended, if it ended by itself; None while it runs (or was
    /// never started).
    pub fn exited(&mut self) -> Result<Option<std::process::ExitStatus>> {
        match self.process.as_mut() {
            Some(process) => process.exited(),
            None => Ok(None),
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Process::pid)
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs redirectorctl against it.
    pub fn ctl(&self, args: &[&str]) -> Result<Output> {
        Ok(Command::new(binary("redirectorctl")?)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()?)
    }

    /// redirectorctl, which must succeed; its stdout.
    pub fn ctl_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.ctl(args)?;
        if !out.status.success() {
            bail!("redirectorctl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn status(&self) -> Result<Status> {
        Ok(serde_json::from_str(&self.ctl_ok(&["status", "--json"])?)?)
    }

    /// The events in which `service`'s new flows changed regions.
    pub fn switches(&self, service: &str) -> Result<Vec<Event>> {
        self.events_of(EventKind::Switch, &format!("service {service}"))
    }

    /// The events in which `region`'s state changed.
    pub fn region_changes(&self, region: &str) -> Result<Vec<Event>> {
        self.events_of(EventKind::Region, &format!("region {region}"))
    }

    fn events_of(&self, kind: EventKind, subject: &str) -> Result<Vec<Event>> {
        let events: Vec<Event> = serde_json::from_str(&self.ctl_ok(&["events", "--json"])?)?;
        Ok(events.into_iter().filter(|e| e.kind == kind && e.subject == subject).collect())
    }

    /// Its /metrics text.
    pub fn metrics(&self) -> Result<String> {
        self.ns.exec("curl", &["-sf", &format!("http://{METRICS}/metrics")])
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.process.take();
        // A daemon killed outright leaves its socket.
        let _ = fs::remove_file(&self.socket);
    }
}
