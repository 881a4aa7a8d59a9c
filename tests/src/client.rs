//! The measuring client (the reference's perftest.py, in Rust): consecutive
//! HTTP requests over the real kernel stack, each on a new TCP connection
//! with a short timeout, counting successes and failures and measuring the
//! unavailability T_un = time from the last success before a failure to the
//! first success after it. Requests follow each other as perftest's do, or
//! start on a fixed clock (an open loop, [`Pacing::OpenLoop`]).

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::netns::Netns;

/// How requests follow each other.
#[derive(Clone, Copy, Debug)]
pub enum Pacing {
    /// perftest's way: each request starts this long after the previous
    /// one ended, so one caught in a black hole holds the next back for its
    /// whole timeout. Times are when requests ended.
    Sequential { pause: Duration },
    /// A request starts every `period` whatever became of the earlier ones,
    /// as from many independent clients. Times are when requests started:
    /// T_un is then the window in which a new request fails, to within the
    /// gap between starts ([`Report::largest_gap`]), whatever the timeout.
    OpenLoop { period: Duration },
}

#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Connect + answer must complete within this.
    pub timeout: Duration,
    pub pacing: Pacing,
    /// Bounds: whichever comes first ends the run.
    pub max_requests: u64,
    pub max_duration: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            timeout: Duration::from_millis(200),
            pacing: Pacing::Sequential { pause: Duration::from_millis(2) },
            max_requests: 1_000_000,
            max_duration: Duration::from_secs(120),
        }
    }
}

/// A window of unavailability.
#[derive(Clone, Copy, Debug)]
pub struct Outage {
    /// Since the start of the run: the last success before the failures.
    pub from: Duration,
    /// The first success after them.
    pub to: Duration,
    pub failed_requests: u64,
}

impl Outage {
    pub fn t_un(&self) -> Duration {
        self.to - self.from
    }
}

#[derive(Clone, Debug, Default)]
pub struct Report {
    pub successes: u64,
    pub failures: u64,
    /// Successful answers by body (which region answered).
    pub by_body: BTreeMap<String, u64>,
    pub outages: Vec<Outage>,
    pub elapsed: Duration,
    /// (time since start, body) of every success, in order.
    pub answers: Vec<(Duration, String)>,
    /// Open loop: the longest time between two requests' starts, what T_un
    /// is measured to (the client's thread can be held up).
    pub largest_gap: Duration,
}

impl Report {
    pub fn requests(&self) -> u64 {
        self.successes + self.failures
    }

    pub fn success_rate(&self) -> f64 {
        if self.requests() == 0 {
            return 0.0;
        }
        self.successes as f64 / self.requests() as f64
    }

    pub fn max_t_un(&self) -> Duration {
        self.outages.iter().map(Outage::t_un).max().unwrap_or_default()
    }

    /// Outages less than `gap` apart become one, from the first's start to
    /// the last's end.
    pub fn merge_outages(&mut self, gap: Duration) {
        let mut merged: Vec<Outage> = Vec::with_capacity(self.outages.len());
        for outage in self.outages.drain(..) {
            match merged.last_mut() {
                Some(last) if outage.from < last.to + gap => {
                    last.to = outage.to;
                    last.failed_requests += outage.failed_requests;
                }
                _ => merged.push(outage),
            }
        }
        self.outages = merged;
    }

    /// When `body` first answered, since the start of the run.
    pub fn first_answer_from(&self, body: &str) -> Option<Duration> {
        self.answers.iter().find(|(_, b)| b == body).map(|(at, _)| *at)
    }
}

/// One GET on a new connection; the body on a 200.
pub fn get(target: SocketAddr, timeout: Duration) -> Result<String> {
    get_from(0, target, timeout)
}

/// [`get`] from a chosen source port (0: the kernel's choice), so that a
/// run's flows, and how they hash, are the same every time.
pub fn get_from(source_port: u16, target: SocketAddr, timeout: Duration) -> Result<String> {
    let started = Instant::now();
    let mut conn = connect(source_port, target, timeout)?;
    let left = timeout.saturating_sub(started.elapsed()).max(Duration::from_millis(1));
    conn.set_read_timeout(Some(left))?;
    conn.set_write_timeout(Some(left))?;
    conn.write_all(one_shot_request(target).as_bytes())?;
    let mut response = Vec::new();
    conn.read_to_end(&mut response).context("reading the answer")?;
    one_shot_body(&response)
}

/// [`get`] on the tokio runtime of the calling thread (and its namespace).
async fn get_async(target: SocketAddr, timeout: Duration) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut conn = tokio::net::TcpStream::connect(target).await.with_context(|| format!("connect {target}"))?;
        conn.write_all(one_shot_request(target).as_bytes()).await?;
        let mut response = Vec::new();
        conn.read_to_end(&mut response).await.context("reading the answer")?;
        one_shot_body(&response)
    };
    tokio::time::timeout(timeout, exchange).await.context("timed out")?
}

/// A GET the server answers and then closes (HTTP/1.0).
fn one_shot_request(target: SocketAddr) -> String {
    format!("GET / HTTP/1.0\r\nHost: {target}\r\n\r\n")
}

/// The body of a whole one-shot answer, if its status is 200.
fn one_shot_body(response: &[u8]) -> Result<String> {
    let response = String::from_utf8_lossy(response);
    let Some((head, body)) = response.split_once("\r\n\r\n") else {
        bail!("truncated answer");
    };
    ok_status(head)?;
    Ok(body.trim_end().to_string())
}

fn ok_status(head: &str) -> Result<()> {
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        bail!("answer {:?}", head.lines().next().unwrap_or(""));
    }
    Ok(())
}

fn connect(source_port: u16, target: SocketAddr, timeout: Duration) -> Result<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(target), socket2::Type::STREAM, None)?;
    if source_port != 0 {
        socket.set_reuse_address(true)?;
        let any: std::net::IpAddr = match target {
            SocketAddr::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
        };
        let source = SocketAddr::new(any, source_port);
        socket.bind(&source.into()).with_context(|| format!("binding port {source_port}"))?;
    }
    socket
        .connect_timeout(&target.into(), timeout)
        .with_context(|| format!("connect {target}"))?;
    Ok(socket.into())
}

/// HTTP/1.1 requests over one kept connection, as a long-lived client's.
pub struct Session {
    stream: TcpStream,
    target: SocketAddr,
    buffer: Vec<u8>,
}

impl Session {
    /// Connects from inside `ns`; the socket stays in that namespace and
    /// can then be used from any thread.
    pub fn open(ns: &Netns, target: SocketAddr, timeout: Duration) -> Result<Self> {
        let stream = ns.on_thread(|| connect(0, target, timeout))?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(Self { stream, target, buffer: Vec::new() })
    }

    /// The client's port: with the client's address and the target, the
    /// flow's key.
    pub fn local_port(&self) -> Result<u16> {
        Ok(self.stream.local_addr()?.port())
    }

    /// One GET; the body of its 200 answer.
    pub fn get(&mut self) -> Result<String> {
        let request = format!("GET / HTTP/1.1\r\nHost: {}\r\n\r\n", self.target);
        self.stream.write_all(request.as_bytes())?;
        let head_end = loop {
            if let Some(i) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            self.fill()?;
        };
        let head = String::from_utf8_lossy(&self.buffer[..head_end]).into_owned();
        ok_status(&head)?;
        let length: usize = head
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse()))
            .context("no Content-Length in a kept-alive answer")??;
        while self.buffer.len() < head_end + length {
            self.fill()?;
        }
        let body = String::from_utf8_lossy(&self.buffer[head_end..head_end + length]).trim_end().to_string();
        self.buffer.drain(..head_end + length);
        Ok(body)
    }

    fn fill(&mut self) -> Result<()> {
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk).context("reading the answer")?;
        if n == 0 {
            bail!("the connection was closed");
        }
        self.buffer.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

/// Connections held open, each asking every `pause` (zero: as fast as it
/// can) and remembering which region answered it first: whether an
/// established flow ever moved or broke.
pub struct Kept {
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<KeptConnection>>,
}

/// What the kept connections saw, over all of them.
#[derive(Debug, Default)]
pub struct KeptReport {
    pub requests: u64,
    /// The fewest requests one connection made.
    pub min_requests: u64,
    /// Connections by the region (body) that answered them first.
    pub first_answers: BTreeMap<String, usize>,
    /// Connections answered by another region than their first, and
    /// connections that failed: what happened, one line each.
    pub moved: Vec<String>,
    pub broken: Vec<String>,
}

impl KeptReport {
    /// Adds what another set of kept connections saw.
    pub fn merge(&mut self, other: KeptReport) {
        self.requests += other.requests;
        self.min_requests = self.min_requests.min(other.min_requests);
        for (region, n) in other.first_answers {
            *self.first_answers.entry(region).or_default() += n;
        }
        self.moved.extend(other.moved);
        self.broken.extend(other.broken);
    }
}

struct KeptConnection {
    requests: u64,
    first: Option<String>,
    moved: Option<String>,
    broken: Option<String>,
}

impl Kept {
    /// Each request waits up to 2 s for its answer.
    pub fn open(ns: &Netns, target: SocketAddr, count: usize, pause: Duration) -> Result<Self> {
        Self::open_with_timeout(ns, target, count, pause, Duration::from_secs(2))
    }

    /// Each request waits up to `timeout` for its answer (and counts the
    /// connection broken past it).
    pub fn open_with_timeout(
        ns: &Netns,
        target: SocketAddr,
        count: usize,
        pause: Duration,
        timeout: Duration,
    ) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::new();
        for i in 0..count {
            let mut session = Session::open(ns, target, timeout)?;
            let stop = stop.clone();
            workers.push(thread::spawn(move || {
                let mut seen = KeptConnection { requests: 0, first: None, moved: None, broken: None };
                // Bounded: stopped by the caller, or after 10 minutes.
                let deadline = Instant::now() + Duration::from_secs(600);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    match session.get() {
                        Ok(answer) => match &seen.first {
                            None => seen.first = Some(answer),
                            Some(first) if *first != answer && seen.moved.is_none() => {
                                seen.moved = Some(format!("connection {i} moved from {first:?} to {answer:?}"))
                            }
                            Some(_) => {}
                        },
                        Err(e) => {
                            seen.broken = Some(format!("connection {i}: {e:#}"));
                            break;
                        }
                    }
                    seen.requests += 1;
                    thread::sleep(pause);
                }
                seen
            }));
        }
        Ok(Self { stop, workers })
    }

    pub fn close(self) -> KeptReport {
        self.stop.store(true, Ordering::Relaxed);
        let mut report = KeptReport { min_requests: u64::MAX, ..Default::default() };
        for worker in self.workers {
            let seen = worker.join().expect("kept connection panicked");
            report.requests += seen.requests;
            report.min_requests = report.min_requests.min(seen.requests);
            if let Some(first) = seen.first {
                *report.first_answers.entry(first).or_default() += 1;
            }
            report.moved.extend(seen.moved);
            report.broken.extend(seen.broken);
        }
        report
    }
}

/// A measuring client running in a namespace until stopped or bounded.
pub struct Measurement {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<Report>>>,
    started: Instant,
}

impl Measurement {
    pub fn start(ns: &Netns, target: SocketAddr, options: Options) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ns_name = ns.name().to_string();
        let stop_flag = stop.clone();
        let thread = thread::spawn(move || {
            let _inside = Netns::attach(&ns_name)?.enter()?;
            match options.pacing {
                Pacing::Sequential { pause } => Ok(sequential(target, options, pause, &stop_flag)),
                Pacing::OpenLoop { period } => open_loop(target, options, period, &stop_flag),
            }
        });
        Self {
            stop,
            thread: Some(thread),
            started: Instant::now(),
        }
    }

    /// Time since the client started, on the clock its report uses (give
    /// or take the thread's start).
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Stops the client and returns what it measured.
    pub fn stop(mut self) -> Result<Report> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().expect("client thread panicked")
    }
}

impl Drop for Measurement {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn within_bounds(options: &Options, start: Instant, requests: u64, stop: &AtomicBool) -> bool {
    !stop.load(Ordering::Relaxed) && requests < options.max_requests && start.elapsed() < options.max_duration
}

fn sequential(target: SocketAddr, options: Options, pause: Duration, stop: &AtomicBool) -> Report {
    let start = Instant::now();
    let mut tally = Tally::default();
    while within_bounds(&options, start, tally.report.requests(), stop) {
        let result = get(target, options.timeout);
        tally.record(start.elapsed(), result);
        thread::sleep(pause);
    }
    tally.finish(start.elapsed())
}

/// Requests started every `period` on a runtime of this thread (so their
/// sockets are in its namespace), each on its own; the results are tallied
/// in the order the requests started.
fn open_loop(target: SocketAddr, options: Options, period: Duration, stop: &AtomicBool) -> Result<Report> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let start = Instant::now();
        let mut requests = tokio::task::JoinSet::new();
        let mut clock = tokio::time::interval(period);
        // After a stall of this thread tokio catches up with a burst (up
        // to 5 ms late) or, beyond, starts again from now: either way a
        // request's time is taken when it really starts (its first poll
        // sends the SYN), and the largest gap between starts is reported.
        clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut results = Vec::new();
        let mut started = 0;
        while within_bounds(&options, start, started, stop) {
            clock.tick().await;
            requests.spawn(async move {
                let at = start.elapsed();
                (at, get_async(target, options.timeout).await)
            });
            started += 1;
            while let Some(done) = requests.try_join_next() {
                results.push(done?);
            }
        }
        let elapsed = start.elapsed();
        while let Some(done) = requests.join_next().await {
            results.push(done?);
        }
        results.sort_by_key(|(at, _)| *at);
        let largest_gap = results.windows(2).map(|w| w[1].0 - w[0].0).max().unwrap_or_default();
        let mut tally = Tally::default();
        for (at, result) in results {
            tally.record(at, result);
        }
        let mut report = tally.finish(elapsed);
        report.largest_gap = largest_gap;
        // In start order, one failure's window can show a success inside:
        // a request that started in it and got through later, as when its
        // reused port met a TIME_WAIT in the failed region and the SYN
        // was sent again after the switch. Its window is still one.
        report.merge_outages(options.timeout);
        Ok(report)
    })
}

/// Results in the order of their times, into a [`Report`].
#[derive(Default)]
struct Tally {
    report: Report,
    last_success: Option<Duration>,
    failed_since_success: u64,
}

impl Tally {
    fn record(&mut self, at: Duration, result: Result<String>) {
        let report = &mut self.report;
        match result {
            Ok(body) => {
                report.successes += 1;
                if self.failed_since_success > 0 {
                    report.outages.push(Outage {
                        from: self.last_success.unwrap_or_default(),
                        to: at,
                        failed_requests: self.failed_since_success,
                    });
                    self.failed_since_success = 0;
                }
                self.last_success = Some(at);
                *report.by_body.entry(body.clone()).or_default() += 1;
                report.answers.push((at, body));
            }
            Err(_) => {
                report.failures += 1;
                self.failed_since_success += 1;
            }
        }
    }

    fn finish(mut self, elapsed: Duration) -> Report {
        self.report.elapsed = elapsed;
        if self.failed_since_success > 0 {
            // Still down at the end: the outage lasts at least until now.
            self.report.outages.push(Outage {
                from: self.last_success.unwrap_or_default(),
                to: elapsed,
                failed_requests: self.failed_since_success,
            });
        }
        self.report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outage_spans_from_last_success_to_first_success_after() {
        let o = Outage {
            from: Duration::from_millis(100),
            to: Duration::from_millis(350),
            failed_requests: 3,
        };
        assert_eq!(o.t_un(), Duration::from_millis(250));
        let r = Report {
            successes: 9,
            failures: 1,
            outages: vec![o],
            ..Default::default()
        };
        assert_eq!(r.success_rate(), 0.9);
        assert_eq!(r.max_t_un(), Duration::from_millis(250));
    }

    #[test]
    fn outages_closer_than_the_gap_are_one() {
        let ms = Duration::from_millis;
        let outage = |from, to, failed_requests| Outage { from: ms(from), to: ms(to), failed_requests };
        let mut r = Report {
            // The second starts where the first ended: one success between.
            outages: vec![outage(100, 120, 19), outage(120, 130, 8), outage(2000, 2030, 29)],
            ..Default::default()
        };
        r.merge_outages(ms(200));
        let seen: Vec<_> = r.outages.iter().map(|o| (o.from, o.to, o.failed_requests)).collect();
        assert_eq!(seen, [(ms(100), ms(130), 27), (ms(2000), ms(2030), 29)]);
    }
}
