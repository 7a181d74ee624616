//! The proxy's counters and histograms, and their Prometheus text form
//! (exposition format 0.0.4) for the admin endpoint's `/metrics`.
//!
//! One [`Metrics`] of relaxed atomics is shared by every session. The hot
//! path never touches it: each session's [`MetricsTap`] counts in plain
//! fields of its own and publishes the difference when its worker is about
//! to wait (`Tap::flush`) and at its end, so a busy session pays a few
//! additions per message and a handful of atomic adds per turn of its
//! loop, and sessions on different cores do not fight over cache lines per
//! message. What is live (sessions active, descriptors) is not counted at
//! all but read when scraped: from the session table and `/proc`.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::session::rules::{Direction, Tap};
use crate::session::run::{Start, Summary};
use crate::session::table::Activity;

/// Session transports, as the table labels them; the label set of
/// `forkline_sessions_total` and `forkline_sessions_active`.
pub const TRANSPORTS: [&str; 5] = ["tcp", "unix", "http", "http+sse", "http-stateless"];

/// Why a connection or session was refused: the session table's
/// `Refusal::reason` labels, then the HTTP front end's own.
pub const REFUSALS: [&str; 5] = [
    "max_sessions",
    "max_sessions_per_client",
    "fd_limit",
    "shutting_down",
    "max_http_connections",
];

/// How a child ended (`forkline_child_exits_total{kind}`).
pub const EXIT_KINDS: [&str; 4] = ["exit_zero", "exit_nonzero", "signal", "spawn_failure"];

/// Bucket bounds, in seconds. Sessions last from milliseconds (a probe)
/// to hours (an IDE).
const SESSION_BOUNDS: [f64; 10] = [0.01, 0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 1800.0, 3600.0];
/// Round trips through a local child: tens of microseconds for a trivial
/// one, seconds for a tool that works.
const REQUEST_BOUNDS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0,
];

/// A histogram of durations: a count per bucket (not cumulative; the
/// text form adds them up), the sum in microseconds and the count.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One per bound, and one past the last (`+Inf`).
    buckets: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    fn bucket(bounds: &[f64], d: Duration) -> usize {
        let secs = d.as_secs_f64();
        bounds
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(bounds.len())
    }

    pub fn observe(&self, d: Duration) {
        self.buckets[Self::bucket(self.bounds, d)].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(micros(d), Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds what a session gathered locally (see [`LocalHistogram`]).
    fn absorb(&self, local: &mut LocalHistogram) {
        if local.count == 0 {
            return;
        }
        for (i, n) in local.buckets.iter_mut().enumerate() {
            if *n > 0 {
                self.buckets[i].fetch_add(*n, Ordering::Relaxed);
                *n = 0;
            }
        }
        self.sum_micros
            .fetch_add(local.sum_micros, Ordering::Relaxed);
        self.count.fetch_add(local.count, Ordering::Relaxed);
        local.sum_micros = 0;
        local.count = 0;
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0u64;
        for (i, bucket) in self.buckets.iter().enumerate() {
            cumulative += bucket.load(Ordering::Relaxed);
            match self.bounds.get(i) {
                Some(bound) => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
                }
                None => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
                }
            }
        }
        // The count is the +Inf bucket's, so a scrape racing an
        // observation never shows a count the buckets disagree with.
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

/// A session's own round trips since it last published.
#[derive(Debug)]
struct LocalHistogram {
    buckets: [u64; REQUEST_BOUNDS.len() + 1],
    sum_micros: u64,
    count: u64,
}

impl LocalHistogram {
    fn observe(&mut self, d: Duration) {
        self.buckets[Histogram::bucket(&REQUEST_BOUNDS, d)] += 1;
        self.sum_micros += micros(d);
        self.count += 1;
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Counters of a labelled family, one per label in a fixed set.
#[derive(Debug)]
struct Family {
    labels: &'static [&'static str],
    values: Vec<AtomicU64>,
}

impl Family {
    fn new(labels: &'static [&'static str]) -> Family {
        Family {
            labels,
            values: labels.iter().map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn add(&self, label: &str, n: u64) {
        // An unknown label is a bug upstream; it is counted under the last.
        let i = self.labels.iter().position(|l| *l == label);
        debug_assert!(i.is_some(), "unknown metric label {label}");
        let i = i.unwrap_or(self.labels.len() - 1);
        self.values[i].fetch_add(n, Ordering::Relaxed);
    }

    fn get(&self, label: &str) -> u64 {
        self.labels
            .iter()
            .position(|l| *l == label)
            .map_or(0, |i| self.values[i].load(Ordering::Relaxed))
    }
}

/// Every counter of one `serve`. Shared by `Arc`; every update is a
/// relaxed atomic add.
#[derive(Debug)]
pub struct Metrics {
    sessions: Family,
    refusals: Family,
    /// Indexed by [`dir_index`].
    messages: [AtomicU64; 2],
    bytes: [AtomicU64; 2],
    exits: Family,
    spawned: AtomicU64,
    pub session_duration: Histogram,
    pub request_duration: Histogram,
}

fn dir_index(direction: Direction) -> usize {
    match direction {
        Direction::In => 0,
        Direction::Out => 1,
    }
}

/// What is read, not counted, when `/metrics` is scraped.
#[derive(Debug, Default)]
pub struct Gauges {
    /// Live sessions per transport (labels of [`TRANSPORTS`]).
    pub active: Vec<(&'static str, usize)>,
    /// Live sessions per server, by name (letters, digits, `.`, `_`, `-`:
    /// safe as a label value).
    pub per_server: Vec<(String, usize)>,
    pub warm_pool: usize,
    pub fd_limit: u64,
    pub fds_open: usize,
    pub fd_session_capacity: usize,
    pub draining: bool,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics {
            sessions: Family::new(&TRANSPORTS),
            refusals: Family::new(&REFUSALS),
            messages: [AtomicU64::new(0), AtomicU64::new(0)],
            bytes: [AtomicU64::new(0), AtomicU64::new(0)],
            exits: Family::new(&EXIT_KINDS),
            spawned: AtomicU64::new(0),
            session_duration: Histogram::new(&SESSION_BOUNDS),
            request_duration: Histogram::new(&REQUEST_BOUNDS),
        }
    }

    /// A session was admitted.
    pub fn session_started(&self, transport: &str) {
        self.sessions.add(transport, 1);
    }

    /// A connection or session was refused; `reason` is one of [`REFUSALS`].
    pub fn refused(&self, reason: &str) {
        self.refusals.add(reason, 1);
    }

    pub fn sessions_total(&self, transport: &str) -> u64 {
        self.sessions.get(transport)
    }

    pub fn refusals(&self, reason: &str) -> u64 {
        self.refusals.get(reason)
    }

    /// A tap for one session that counts into these metrics and into the
    /// session's table `activity`, then passes everything on to `inner`.
    pub fn tap(
        self: &Arc<Self>,
        activity: Arc<Activity>,
        inner: Option<Box<dyn Tap + Send>>,
    ) -> Box<dyn Tap + Send> {
        Box::new(MetricsTap {
            metrics: Arc::clone(self),
            activity,
            inner,
            started: Instant::now(),
            counts: [0; 4],
            published: [0; 4],
            last_message: None,
            moved: false,
            rtt: LocalHistogram {
                buckets: [0; REQUEST_BOUNDS.len() + 1],
                sum_micros: 0,
                count: 0,
            },
            awaiting: 0,
            dirty: false,
        })
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::with_capacity(4096);
        let o = &mut out;
        header(o, "forkline_sessions_active", "gauge", "Live sessions.");
        for (transport, n) in &gauges.active {
            let _ = writeln!(
                o,
                "forkline_sessions_active{{transport=\"{transport}\"}} {n}"
            );
        }
        header(
            o,
            "forkline_server_sessions_active",
            "gauge",
            "Live sessions per server.",
        );
        for (server, n) in &gauges.per_server {
            let _ = writeln!(
                o,
                "forkline_server_sessions_active{{server=\"{server}\"}} {n}"
            );
        }
        header(
            o,
            "forkline_sessions_total",
            "counter",
            "Sessions admitted since start.",
        );
        for (i, transport) in TRANSPORTS.iter().enumerate() {
            let n = self.sessions.values[i].load(Ordering::Relaxed);
            let _ = writeln!(
                o,
                "forkline_sessions_total{{transport=\"{transport}\"}} {n}"
            );
        }
        header(
            o,
            "forkline_refusals_total",
            "counter",
            "Connections or sessions refused, by the limit that refused them.",
        );
        for (i, reason) in REFUSALS.iter().enumerate() {
            let n = self.refusals.values[i].load(Ordering::Relaxed);
            let _ = writeln!(o, "forkline_refusals_total{{reason=\"{reason}\"}} {n}");
        }
        for (name, help, values) in [
            (
                "forkline_messages_total",
                "Messages relayed; in = client to server, out = server to client.",
                &self.messages,
            ),
            (
                "forkline_bytes_total",
                "Bytes of the messages relayed, newlines included.",
                &self.bytes,
            ),
        ] {
            header(o, name, "counter", help);
            for (i, direction) in ["in", "out"].iter().enumerate() {
                let n = values[i].load(Ordering::Relaxed);
                let _ = writeln!(o, "{name}{{direction=\"{direction}\"}} {n}");
            }
        }
        header(
            o,
            "forkline_child_exits_total",
            "counter",
            "Children ended: exit status 0, another status, killed by a signal, or never started.",
        );
        for (i, kind) in EXIT_KINDS.iter().enumerate() {
            let n = self.exits.values[i].load(Ordering::Relaxed);
            let _ = writeln!(o, "forkline_child_exits_total{{kind=\"{kind}\"}} {n}");
        }
        header(
            o,
            "forkline_children_spawned_total",
            "counter",
            "Child processes started.",
        );
        let _ = writeln!(
            o,
            "forkline_children_spawned_total {}",
            self.spawned.load(Ordering::Relaxed)
        );
        self.session_duration.render(
            o,
            "forkline_session_duration_seconds",
            "How long ended sessions lasted.",
        );
        self.request_duration.render(
            o,
            "forkline_request_duration_seconds",
            "Round trip of client requests: forwarded to the answer passed back.",
        );
        for (name, help, value) in [
            (
                "forkline_warm_pool_children",
                "Children started and waiting for a session (--prespawn; 0 until it exists).",
                gauges.warm_pool as u64,
            ),
            (
                "forkline_fd_limit",
                "The descriptor limit in force (RLIMIT_NOFILE, raised to the hard limit).",
                gauges.fd_limit,
            ),
            (
                "forkline_fds_open",
                "Descriptors open now.",
                gauges.fds_open as u64,
            ),
            (
                "forkline_fd_session_capacity",
                "Sessions the descriptor limit allows.",
                gauges.fd_session_capacity as u64,
            ),
            (
                "forkline_draining",
                "1 once shutdown has begun.",
                u64::from(gauges.draining),
            ),
        ] {
            header(o, name, "gauge", help);
            let _ = writeln!(o, "{name} {value}");
        }
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// One session's counting, on its own worker thread.
struct MetricsTap {
    metrics: Arc<Metrics>,
    activity: Arc<Activity>,
    inner: Option<Box<dyn Tap + Send>>,
    started: Instant,
    /// Messages in, bytes in, messages out, bytes out: all of the
    /// session's, and what of them the shared counters already have.
    counts: [u64; 4],
    published: [u64; 4],
    last_message: Option<Instant>,
    /// A message passed since the last `flush`: it stamps `last_message`.
    moved: bool,
    rtt: LocalHistogram,
    awaiting: usize,
    dirty: bool,
}

impl MetricsTap {
    fn stamp(&mut self) {
        if std::mem::take(&mut self.moved) {
            self.last_message = Some(Instant::now());
        }
    }

    fn publish(&mut self) {
        if !self.dirty {
            return;
        }
        self.dirty = false;
        let m = &self.metrics;
        let shared = [&m.messages[0], &m.bytes[0], &m.messages[1], &m.bytes[1]];
        let own = [
            &self.activity.messages_in,
            &self.activity.bytes_in,
            &self.activity.messages_out,
            &self.activity.bytes_out,
        ];
        for i in 0..4 {
            let delta = self.counts[i] - self.published[i];
            if delta > 0 {
                shared[i].fetch_add(delta, Ordering::Relaxed);
                own[i].store(self.counts[i], Ordering::Relaxed);
            }
        }
        self.published = self.counts;
        if let Some(last) = self.last_message {
            let ms = last.saturating_duration_since(self.started).as_millis();
            self.activity
                .last_message_ms
                .store(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::Relaxed);
        }
        self.activity
            .inflight
            .store(self.awaiting as u64, Ordering::Relaxed);
        m.request_duration.absorb(&mut self.rtt);
    }
}

impl Tap for MetricsTap {
    fn start(&mut self, start: &Start<'_>) {
        if start.pid.is_some() {
            self.metrics.spawned.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(inner) = self.inner.as_mut() {
            inner.start(start);
        }
    }

    fn message(&mut self, direction: Direction, line: &[u8]) {
        let i = dir_index(direction) * 2;
        self.counts[i] += 1;
        self.counts[i + 1] += line.len() as u64 + 1;
        // The time is taken once per turn, at `flush`, not per message.
        self.moved = true;
        self.dirty = true;
        if let Some(inner) = self.inner.as_mut() {
            inner.message(direction, line);
        }
    }

    fn answered(&mut self, rtt: Duration) {
        self.rtt.observe(rtt);
        self.dirty = true;
        if let Some(inner) = self.inner.as_mut() {
            inner.answered(rtt);
        }
    }

    fn awaiting(&mut self, requests: usize) {
        self.awaiting = requests;
        self.dirty = true;
        if let Some(inner) = self.inner.as_mut() {
            inner.awaiting(requests);
        }
    }

    fn flush(&mut self) {
        self.stamp();
        self.publish();
        if let Some(inner) = self.inner.as_mut() {
            inner.flush();
        }
    }

    fn end(&mut self, summary: &Summary) {
        self.stamp();
        self.awaiting = 0;
        self.dirty = true;
        self.publish();
        let kind = match &summary.exit {
            None => "spawn_failure",
            Some(exit) => match exit.status.code() {
                Some(0) => "exit_zero",
                Some(_) => "exit_nonzero",
                None => "signal",
            },
        };
        self.metrics.exits.add(kind, 1);
        self.metrics
            .session_duration
            .observe(self.started.elapsed());
        if let Some(inner) = self.inner.as_mut() {
            inner.end(summary);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_renders_cumulative_buckets_whose_last_is_the_count() {
        let h = Histogram::new(&REQUEST_BOUNDS);
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_secs(100));
        let mut out = String::new();
        h.render(&mut out, "x_seconds", "help");
        assert!(out.contains("x_seconds_bucket{le=\"0.0001\"} 1\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"0.0005\"} 2\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"30\"} 2\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_seconds_count 3\n"), "{out}");
        assert!(out.contains("x_seconds_sum 100.00035\n"), "{out}");
    }

    #[test]
    fn a_tap_publishes_at_flush_and_counts_the_exit_at_end() {
        let metrics = Arc::new(Metrics::new());
        let activity = Arc::new(Activity::default());
        let mut tap = metrics.tap(Arc::clone(&activity), None);
        tap.message(Direction::In, b"{}");
        tap.awaiting(1);
        assert_eq!(
            metrics.messages[0].load(Ordering::Relaxed),
            0,
            "nothing shared before the worker waits"
        );
        tap.flush();
        assert_eq!(metrics.messages[0].load(Ordering::Relaxed), 1);
        assert_eq!(metrics.bytes[0].load(Ordering::Relaxed), 3);
        assert_eq!(activity.inflight.load(Ordering::Relaxed), 1);
        tap.message(Direction::Out, b"[1]");
        tap.answered(Duration::from_micros(200));
        tap.awaiting(0);
        tap.flush();
        tap.flush();
        assert_eq!(metrics.messages[1].load(Ordering::Relaxed), 1);
        assert_eq!(activity.messages_out.load(Ordering::Relaxed), 1);
        assert_eq!(activity.inflight.load(Ordering::Relaxed), 0);
        assert_eq!(metrics.request_duration.count(), 1);
    }
}
