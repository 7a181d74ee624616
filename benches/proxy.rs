//! `cargo bench --bench proxy`: forkline against its async twin and the
//! tools people use today (issue 5), measured in one run, side by side;
//! and how many sessions one proxy holds under its fd limit, and how it
//! recovers after they all close (issue 10); the single-session round
//! trip again with the driver, the tool and its child on one CPU, free of
//! the scheduler's placement (benches/proxy/one_cpu.rs); and what the
//! relays' costs come to with a real MCP server (the Python SDK's) as the
//! child.
//!
//! The driver starts every tool itself on a loopback port, waits until it
//! listens, measures, then stops it and kills and reaps everything it left,
//! by PID. Rows: a direct pipe to the child (the driver's own floor),
//! socat (the raw relay floor), forkline, the tokio twin
//! (benches/async-twin; once as it is, once with its child's stdin and
//! stdout on one socket pair), forkline's `serve --http` (issue 11; SSE answers,
//! and JSON answers), supergateway and mcp-proxy (both Streamable HTTP).
//! Every loop is bounded in count and time. `--quick` (or
//! FORKLINE_BENCH_QUICK=1) is a smoke run with small counts; `--only
//! forkline,socat` limits the rows; `--burst-cap N` changes the cap of the
//! max-live-sessions phase (6,500; 300 in quick mode). The full run writes
//! docs/benchmarks.md.
//!
//! benches/run.sh is the one documented command: it installs the peers
//! (benches/setup.sh), builds forkline and the twin, then runs this.

#[path = "proxy/burst.rs"]
mod burst;
#[path = "proxy/client.rs"]
mod client;
#[path = "proxy/one_cpu.rs"]
mod one_cpu;
#[path = "proxy/procfs.rs"]
mod procfs;
#[path = "proxy/report.rs"]
mod report;
#[path = "proxy/tools.rs"]
mod tools;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use client::{Session, Target, echo_call, open_initialized, open_with_stream};
use report::{Fig, Row, SdkFigures, Throughput};
use tools::{Kind, Paths, Running};

/// Counts and durations of one run.
#[derive(Debug, Clone)]
pub struct Settings {
    pub quick: bool,
    pub warmup: usize,
    /// Round trips timed one by one, per round; over all rounds, 10,000
    /// calls = 20,000 messages relayed.
    pub latency_calls: usize,
    /// The latency and throughput runs are repeated in rounds that visit
    /// every tool in turn, so that a slow moment of the machine (2 shared
    /// cores) does not land on one tool only.
    pub rounds: usize,
    pub concurrency: Vec<usize>,
    pub duration: Duration,
    pub setup_sessions: usize,
    pub idle_small: usize,
    pub idle_large: usize,
    pub idle_window: Duration,
    pub settle: Duration,
    /// No single measurement loop runs longer than this.
    pub cap: Duration,
    /// Issue 10: sessions opened one after another on forkline, the twin
    /// and socat, at most this many...
    pub burst_cap: usize,
    /// ...within this time,
    pub burst_time: Duration,
    /// each step (connect, `initialize`, the final call) within this;
    pub burst_timeout: Duration,
    /// then one call on every session, all answered within this.
    pub burst_answer_time: Duration,
    /// After the close: forkline's and the twin's threads, fds and RSS are
    /// sampled for up to `recovery_window`, and reported at `recovery_mark`.
    pub recovery_window: Duration,
    pub recovery_mark: Duration,
    /// The real-child phase: rounds, and per round the calls of the
    /// latency run (after a tenth as many warm-up calls) and the sessions
    /// of the throughput run (which lasts `duration`).
    pub sdk_rounds: usize,
    pub sdk_calls: usize,
    pub sdk_sessions: usize,
}

impl Settings {
    /// forkline's and the twin's session limits in the burst phase: above
    /// the cap, so that only the fd limit can stop them.
    pub fn burst_limit(&self) -> usize {
        self.burst_cap + 100
    }

    fn full() -> Settings {
        Settings {
            quick: false,
            warmup: 200,
            latency_calls: 2_000,
            rounds: 5,
            concurrency: vec![16, 64, 256],
            duration: Duration::from_secs(2),
            setup_sessions: 100,
            idle_small: 100,
            idle_large: 1_000,
            idle_window: Duration::from_secs(3),
            settle: Duration::from_secs(1),
            cap: Duration::from_secs(60),
            // The driver holds one fd per session too: 6,500 stays well
            // under the 20,000 hard limit of the machines we run on.
            burst_cap: 6_500,
            burst_time: Duration::from_secs(120),
            burst_timeout: Duration::from_secs(5),
            burst_answer_time: Duration::from_secs(30),
            recovery_window: Duration::from_secs(40),
            recovery_mark: Duration::from_secs(30),
            sdk_rounds: 3,
            sdk_calls: 500,
            sdk_sessions: 16,
        }
    }

    fn quick() -> Settings {
        Settings {
            quick: true,
            warmup: 50,
            latency_calls: 300,
            rounds: 2,
            concurrency: vec![16, 64, 256],
            duration: Duration::from_millis(500),
            setup_sessions: 10,
            idle_small: 10,
            idle_large: 50,
            idle_window: Duration::from_secs(1),
            settle: Duration::from_millis(300),
            cap: Duration::from_secs(20),
            burst_cap: 300,
            burst_time: Duration::from_secs(30),
            burst_timeout: Duration::from_secs(3),
            burst_answer_time: Duration::from_secs(10),
            recovery_window: Duration::from_secs(5),
            recovery_mark: Duration::from_secs(5),
            sdk_rounds: 1,
            sdk_calls: 50,
            sdk_sessions: 16,
        }
    }
}

/// Where the hand-kept part of docs/benchmarks.md begins.
const KEPT_MARKER: &str = "<!-- kept: benches/proxy.rs rewrites the file above this line only -->";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick")
        || std::env::var("FORKLINE_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let mut settings = if quick {
        Settings::quick()
    } else {
        Settings::full()
    };
    let value_of = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1).cloned())
    };
    if let Some(cap) = value_of("--burst-cap") {
        match cap.replace([',', '_'], "").parse::<usize>() {
            Ok(n) if n > 0 => settings.burst_cap = n,
            _ => {
                eprintln!("bench: --burst-cap wants a positive count, not {cap:?}");
                std::process::exit(2);
            }
        }
    }
    let only: Option<Vec<String>> =
        value_of("--only").map(|v| v.split(',').map(str::to_owned).collect());
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = value_of("--out")
        .map(PathBuf::from)
        .or_else(|| (!quick && only.is_none()).then(|| root.join("docs/benchmarks.md")));

    raise_fd_limit();
    tools::become_subreaper();
    let mut paths = Paths::new(&root, Path::new(env!("CARGO_BIN_EXE_forkline")));
    let _ = std::fs::create_dir_all(&paths.work);
    paths.trivial = compile_trivial_child(&paths);
    if !paths.twin.exists() {
        build_twin(&paths);
    }

    let load: String = std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(", "))
        .unwrap_or_default();
    let started = Instant::now();
    let kinds: Vec<Kind> = Kind::ALL
        .into_iter()
        .filter(|k| only.as_ref().is_none_or(|o| o.iter().any(|w| w == k.key())))
        .collect();
    let mut rows = run_all(&kinds, &paths, &settings);
    for row in &mut rows {
        report::footprint(row, &paths);
    }

    let machine = report::machine(&paths, &load);
    // The run's own arguments (`--only`, `--burst-cap`), so a partial run
    // says so; `--out` only says where the text went.
    let mut command = String::from("benches/run.sh");
    let mut words = args.iter();
    while let Some(a) = words.next() {
        if a == "--out" {
            words.next();
        } else if a != "--bench" {
            command.push(' ');
            command.push_str(a);
        }
    }
    if quick && !args.iter().any(|a| a == "--quick") {
        command.push_str(" --quick");
    }
    let mut doc = report::render(&rows, &settings, &machine, &command, started.elapsed());
    println!("{doc}");
    if let Some(out) = out {
        // The sections other runs added (an `--only` run, prespawn.py,
        // reload.py, scaleout.py) stay: everything from the marker on.
        if let Ok(old) = std::fs::read_to_string(&out) {
            if let Some(at) = old.find(KEPT_MARKER) {
                if !doc.ends_with('\n') {
                    doc.push('\n');
                }
                doc.push('\n');
                doc.push_str(&old[at..]);
            }
        }
        if let Some(dir) = out.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        match std::fs::write(&out, &doc) {
            Ok(()) => eprintln!("bench: wrote {}", out.display()),
            Err(e) => eprintln!("bench: cannot write {}: {e}", out.display()),
        }
    }
}

fn progress(kind: Kind, what: &str) {
    eprintln!("bench: [{}] {what}", kind.key());
}

/// 1,000 idle sessions need thousands of descriptors, in the driver and in
/// every tool it starts (they inherit the limit).
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out-pointer; setrlimit within the hard limit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn compile_trivial_child(paths: &Paths) -> Option<PathBuf> {
    let source = paths.root.join("benches/trivial_echo.c");
    let binary = paths.work.join("trivial_echo");
    let cc = tools::which("cc").or_else(|| tools::which("gcc"))?;
    let ok = Command::new(cc)
        .args(["-O2", "-o"])
        .arg(&binary)
        .arg(&source)
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        Some(binary)
    } else {
        eprintln!(
            "bench: cannot compile {}; using forkline echo-server instead",
            source.display()
        );
        None
    }
}

fn build_twin(paths: &Paths) {
    eprintln!("bench: building the async twin (benches/async-twin)…");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "--quiet", "--manifest-path"])
        .arg(paths.root.join("benches/async-twin/Cargo.toml"))
        .status();
    if !status.is_ok_and(|s| s.success()) {
        eprintln!("bench: building the twin failed; its row will say so");
    }
}

/// CPU seconds of the proxy side of a running tool, or of the driver
/// itself for the direct row.
fn proxy_cpu(running: Option<&Running>) -> f64 {
    match running {
        Some(r) => procfs::cpu_seconds(&r.tree().proxy),
        None => procfs::self_cpu_seconds(),
    }
}

/// A tool under load in phase 1, with what it has measured so far.
struct Live {
    row: usize,
    running: Option<Running>,
    target: Target,
    latency: LatencyRound,
    latency_error: Option<String>,
    /// Per concurrency: the rounds, or why the level failed.
    throughput: Vec<(usize, Result<Vec<ThroughputRound>, String>)>,
}

/// Phase 1 (latency, throughput, set-up with the echo server) runs every
/// tool side by side, in interleaved rounds, then again, in fewer rounds,
/// with a real MCP server as the child (socat, forkline and the twins);
/// phase 2 (set-up with the trivial child, memory, idle wake-ups) one tool
/// at a time; phase 3 (issue 10: max live sessions, then recovery) one tool
/// at a time, for forkline, the twin and socat only.
fn run_all(kinds: &[Kind], paths: &Paths, s: &Settings) -> Vec<Row> {
    let mut rows: Vec<Row> = kinds.iter().map(|k| Row::new(*k)).collect();
    let mut live = Vec::new();
    for (i, row) in rows.iter_mut().enumerate() {
        let kind = row.kind;
        if let Some(why) = paths.unavailable(kind) {
            progress(kind, &format!("skipped: {why}"));
            row.skipped = Some(why);
            continue;
        }
        progress(kind, "starting with forkline echo-server as the child");
        let running = match kind {
            Kind::Direct => None,
            _ => match tools::start(
                kind,
                paths,
                &paths.echo_child(),
                &format!("{}-echo", kind.key()),
            ) {
                Ok(r) => Some(r),
                Err(e) => {
                    progress(kind, &format!("cannot start: {e}"));
                    row.skipped = Some(e);
                    continue;
                }
            },
        };
        let target = echo_target(running.as_ref(), paths);
        live.push(Live {
            row: i,
            running,
            target,
            latency: LatencyRound::default(),
            latency_error: None,
            throughput: Vec::new(),
        });
    }

    for round in 1..=s.rounds {
        for l in live.iter_mut().filter(|l| l.latency_error.is_none()) {
            progress(
                rows[l.row].kind,
                &format!("latency, round {round} of {}", s.rounds),
            );
            match latency(&l.target, l.running.as_ref(), s) {
                Ok(r) => l.latency.add(r),
                Err(e) => l.latency_error = Some(e),
            }
            // The round's session is closed: let its processes go, and the
            // machine quiet down, before the next tool's round. Without this,
            // socat's fork and child exiting landed in the next tool's
            // measured calls (forkline's, in the fixed order) and showed as
            // involuntary context switches of its worker: 2.5 per call
            // against 2.0 with the pause (per-thread counts, --quick).
            if let Some(r) = &l.running {
                settle(r, s);
                thread::sleep(s.settle);
            }
        }
    }
    for l in &live {
        let row = &mut rows[l.row];
        match &l.latency_error {
            Some(e) => {
                for fig in [
                    &mut row.p50_us,
                    &mut row.p99_us,
                    &mut row.cpu_1,
                    &mut row.switches_per_call,
                ] {
                    *fig = Err(e.clone());
                }
            }
            None => l.latency.report(row),
        }
    }

    for &sessions in &s.concurrency {
        for l in live.iter_mut() {
            l.throughput.push((sessions, Ok(Vec::new())));
        }
        for round in 1..=s.rounds {
            for l in live.iter_mut() {
                let (_, slot) = l.throughput.last_mut().expect("pushed above");
                let Ok(rounds) = slot else { continue };
                progress(
                    rows[l.row].kind,
                    &format!(
                        "throughput with {sessions} sessions, round {round} of {}",
                        s.rounds
                    ),
                );
                match throughput(&l.target, l.running.as_ref(), sessions, s) {
                    Ok(r) => rounds.push(r),
                    Err(e) => *slot = Err(e),
                }
                if let Some(r) = &l.running {
                    settle(r, s);
                }
            }
        }
    }
    for l in &live {
        let row = &mut rows[l.row];
        for (sessions, result) in &l.throughput {
            let t = result
                .as_ref()
                .map_err(Clone::clone)
                .and_then(|r| summarize(r));
            if let Ok(t) = &t {
                if let Some(e) = &t.first_error {
                    row.notes.push(format!(
                        "{sessions} sessions: {} call(s) failed, first: {e}",
                        t.errors
                    ));
                }
                if *sessions == 64 {
                    row.cpu_64 = Ok(t.cpu_ms_per_10k);
                }
            } else if *sessions == 64 {
                row.cpu_64 = t.as_ref().map(|t| t.cpu_ms_per_10k).map_err(Clone::clone);
            }
            row.throughput.push((*sessions, t));
        }
    }

    for l in live.iter_mut() {
        let kind = rows[l.row].kind;
        progress(kind, "session set-up (echo-server child)");
        rows[l.row].setup_echo_ms = setup(&l.target, s);
        if let Some(mut r) = l.running.take() {
            finish(&mut rows[l.row], &mut r, "echo-server");
        }
    }
    tools::reap_orphans();

    one_cpu::phase(&mut rows, paths, s);
    tools::reap_orphans();

    if let Some(child) = paths.sdk_child() {
        phase_sdk(&mut rows, paths, &child, s);
        tools::reap_orphans();
    }

    for l in &live {
        let t = Instant::now();
        phase_two(&mut rows[l.row], paths, s);
        tools::reap_orphans();
        progress(
            rows[l.row].kind,
            &format!("phase 2 done in {:.0} s", t.elapsed().as_secs_f64()),
        );
    }

    for l in &live {
        let kind = rows[l.row].kind;
        if !matches!(kind, Kind::Forkline | Kind::Twin | Kind::Socat) {
            continue;
        }
        let t = Instant::now();
        phase_three(&mut rows[l.row], paths, s);
        tools::reap_orphans();
        let took = t.elapsed().as_secs_f64();
        rows[l.row].burst_phase_s = Some(took);
        progress(kind, &format!("phase 3 done in {took:.0} s"));
    }
    rows
}

/// Issue 10, with the trivial C child: the live sessions one proxy holds
/// under its fd limit, then (forkline and the twin) its recovery once they
/// all close. The session limits are set above the cap, so that only the
/// fd limit can stop forkline and the twin.
fn phase_three(row: &mut Row, paths: &Paths, s: &Settings) {
    let kind = row.kind;
    progress(
        kind,
        &format!("restarting for the burst: up to {} sessions", s.burst_cap),
    );
    let mut running = match tools::start_with_limit(
        kind,
        paths,
        &paths.trivial_child(),
        &format!("{}-burst", kind.key()),
        s.burst_limit(),
    ) {
        Ok(r) => r,
        Err(e) => {
            row.burst = Err(format!("could not start: {e}"));
            return;
        }
    };
    let recover = matches!(kind, Kind::Forkline | Kind::Twin);
    row.burst = burst::measure(&running, s, recover, |what| progress(kind, what));
    finish(row, &mut running, "burst");
}

/// The trivial C child, so the child's own start-up and memory do not hide
/// the proxy's: set-up, then memory and idle wake-ups.
fn phase_two(row: &mut Row, paths: &Paths, s: &Settings) {
    let kind = row.kind;
    progress(kind, "restarting with the trivial C child");
    let trivial = paths.trivial_child();
    let mut running = match kind {
        Kind::Direct => None,
        _ => match tools::start(kind, paths, &trivial, &format!("{}-trivial", kind.key())) {
            Ok(r) => Some(r),
            Err(e) => {
                row.setup_trivial_ms = Err(e.clone());
                row.notes
                    .push(format!("could not start with the trivial child: {e}"));
                return;
            }
        },
    };
    let target = running
        .as_ref()
        .map_or_else(|| Target::Pipe(trivial.clone()), |r| r.target.clone());
    progress(kind, "session set-up (trivial child)");
    row.setup_trivial_ms = setup(&target, s);
    if let Some(r) = running.as_mut() {
        progress(kind, "memory and idle wake-ups");
        let sessions = memory(row, r, s);
        // Clients leave first (TCP: the connection closes; HTTP: the
        // connection closes but the server-side session stays), then the
        // tool is stopped: what it leaves alive after that is its doing.
        drop(sessions);
        finish(row, r, "trivial child");
    } else {
        // Not applicable: renders as "—", without a note.
        for fig in [
            &mut row.rss_idle,
            &mut row.rss_small,
            &mut row.rss_large,
            &mut row.kib_per_session,
            &mut row.pss_per_session,
            &mut row.children_large,
            &mut row.wake_idle,
            &mut row.wake_small,
        ] {
            *fig = Err(String::new());
        }
    }
}

/// Where a phase with the echo child talks to a tool: its listener, or
/// for the direct row (nothing running) the child on the driver's pipes.
fn echo_target(running: Option<&Running>, paths: &Paths) -> Target {
    running.map_or_else(|| Target::Pipe(paths.echo_child()), |r| r.target.clone())
}

/// Stops a tool and notes what it complained about or left behind.
fn finish(row: &mut Row, running: &mut Running, phase: &str) {
    let stopped = running.stop();
    if stopped.outlived > 0 {
        row.notes.push(format!(
            "{phase}: {} process(es) of its tree outlived SIGTERM + 5 s and were killed",
            stopped.outlived
        ));
    }
    if !stopped.complaints.is_empty() {
        let mut shown: Vec<&str> = stopped
            .complaints
            .iter()
            .map(String::as_str)
            .take(3)
            .collect();
        shown.dedup();
        row.notes.push(format!(
            "{phase}: {} warning/error line(s) in its log, e.g. `{}`",
            stopped.complaints.len(),
            shown.join("` / `")
        ));
    }
}

/// Waits until the tool's tree is back to its size before the last load
/// (children of closed sessions gone), at most 10 s.
fn settle(running: &Running, s: &Settings) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let base = match running.kind {
        // mcp-proxy keeps its one shared child.
        Kind::McpProxy => 1,
        _ => 0,
    };
    while running.tree().children.len() > base && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    thread::sleep(s.settle / 4);
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// One tool in the real-child phase, with what it has measured so far.
struct SdkRun {
    row: usize,
    running: Running,
    latency: LatencyRound,
    throughput: Vec<ThroughputRound>,
    error: Option<String>,
}

/// The real-child phase: socat, forkline and the twins restarted with a
/// real MCP server as the child (the Python SDK's FastMCP), then in turn,
/// round after round, a 1-session latency run and a throughput run, to
/// show what the relay's cost comes to when the child does real work.
fn phase_sdk(rows: &mut [Row], paths: &Paths, child: &[String], s: &Settings) {
    let sdk = Settings {
        warmup: (s.sdk_calls / 10).max(1),
        latency_calls: s.sdk_calls,
        ..s.clone()
    };
    let mut live = Vec::new();
    for (i, row) in rows.iter_mut().enumerate() {
        let kind = row.kind;
        let wanted = matches!(
            kind,
            Kind::Socat | Kind::Forkline | Kind::Twin | Kind::TwinSocketPair
        );
        if !wanted || row.skipped.is_some() {
            continue;
        }
        progress(
            kind,
            "starting with the Python SDK's echo server as the child",
        );
        match tools::start(kind, paths, child, &format!("{}-sdk", kind.key())) {
            Ok(running) => live.push(SdkRun {
                row: i,
                running,
                latency: LatencyRound::default(),
                throughput: Vec::new(),
                error: None,
            }),
            Err(e) => row
                .notes
                .push(format!("real-child phase: cannot start: {e}")),
        }
    }
    for round in 1..=s.sdk_rounds {
        for run in live.iter_mut().filter(|r| r.error.is_none()) {
            progress(
                rows[run.row].kind,
                &format!("real child: round {round} of {}", s.sdk_rounds),
            );
            let target = run.running.target.clone();
            let running = &run.running;
            let measured = latency(&target, Some(running), &sdk).and_then(|l| {
                settle(running, s);
                throughput(&target, Some(running), s.sdk_sessions, &sdk).map(|t| (l, t))
            });
            match measured {
                Ok((l, t)) => {
                    run.latency.add(l);
                    run.throughput.push(t);
                }
                Err(e) => run.error = Some(e),
            }
            settle(running, s);
        }
    }
    for mut run in live {
        let figures = match run.error {
            Some(e) => SdkFigures {
                p50_us: Err(e.clone()),
                rps: Err(e.clone()),
                cpu_ms_per_10k: Err(e),
            },
            None => {
                let t = summarize(&run.throughput);
                SdkFigures {
                    p50_us: Ok(run.latency.p50()),
                    rps: t.as_ref().map(|t| t.rps).map_err(Clone::clone),
                    cpu_ms_per_10k: t.map(|t| t.cpu_ms_per_10k),
                }
            }
        };
        let row = &mut rows[run.row];
        row.sdk = Some(figures);
        finish(row, &mut run.running, "real child");
    }
}

/// Context switches of the proxy's threads so far (none for the direct row).
fn proxy_switches(running: Option<&Running>) -> Option<u64> {
    running.map(|r| {
        r.tree()
            .proxy
            .iter()
            .map(|p| procfs::context_switches(*p))
            .sum()
    })
}

/// Round trips of one tool, pooled over rounds.
#[derive(Default)]
struct LatencyRound {
    samples_us: Vec<f64>,
    /// HTTP: how the server answered the requests.
    answered_as: Option<String>,
    cpu_s: f64,
    switches: Option<u64>,
    /// The p50 of each round added, to show the spread between rounds.
    round_p50s: Vec<f64>,
    /// The context switches per call of each round, likewise.
    round_switches: Vec<f64>,
}

impl LatencyRound {
    fn add(&mut self, other: LatencyRound) {
        let mut sorted = other.samples_us.clone();
        sorted.sort_by(f64::total_cmp);
        self.round_p50s.push(percentile(&sorted, 0.5));
        if let Some(s) = other.switches {
            self.round_switches
                .push(s as f64 / other.samples_us.len().max(1) as f64);
        }
        self.samples_us.extend(other.samples_us);
        if other.answered_as.is_some() {
            self.answered_as = other.answered_as;
        }
        self.cpu_s += other.cpu_s;
        self.switches = match (self.switches, other.switches) {
            (a, None) => a,
            (None, b) => b,
            (Some(a), Some(b)) => Some(a + b),
        };
    }

    fn p50(&self) -> f64 {
        let mut sorted = self.samples_us.clone();
        sorted.sort_by(f64::total_cmp);
        percentile(&sorted, 0.5)
    }

    fn report(&self, row: &mut Row) {
        let mut sorted = self.samples_us.clone();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len() as f64;
        row.p50_us = Ok(percentile(&sorted, 0.5));
        row.p99_us = Ok(percentile(&sorted, 0.99));
        // A call is two messages: the request and its answer.
        row.cpu_1 = Ok(self.cpu_s * 1e3 * 10_000.0 / (2.0 * n));
        row.switches_per_call = self.switches.map(|s| s as f64 / n).ok_or_else(String::new);
        row.round_p50s = self.round_p50s.clone();
        row.round_switches = self.round_switches.clone();
        row.answered_as.clone_from(&self.answered_as);
    }
}

/// One session, round trips one after another, each timed; the proxy's
/// CPU time and context switches over them.
fn latency(
    target: &Target,
    running: Option<&Running>,
    s: &Settings,
) -> Result<LatencyRound, String> {
    let (mut session, _) =
        open_initialized(target).map_err(|e| format!("cannot open a session: {e}"))?;
    let mut id = 1u64;
    let deadline = Instant::now() + s.cap;
    for _ in 0..s.warmup {
        session
            .request(id, &echo_call(id))
            .map_err(|e| format!("warm-up call failed: {e}"))?;
        id += 1;
    }
    let mut samples_us = Vec::with_capacity(s.latency_calls);
    let bodies: Vec<String> = (0..s.latency_calls as u64)
        .map(|i| echo_call(id + i))
        .collect();
    let cpu0 = proxy_cpu(running);
    let switches0 = proxy_switches(running);
    for body in &bodies {
        let t = Instant::now();
        session
            .request(id, body)
            .map_err(|e| format!("call {id} failed: {e}"))?;
        samples_us.push(t.elapsed().as_secs_f64() * 1e6);
        id += 1;
        if Instant::now() > deadline {
            break;
        }
    }
    let cpu1 = proxy_cpu(running);
    let switches1 = proxy_switches(running);
    let answered_as = session.answered_as().map(str::to_owned);
    session.close();
    Ok(LatencyRound {
        samples_us,
        answered_as,
        cpu_s: cpu1 - cpu0,
        switches: switches1.zip(switches0).map(|(b, a)| b.saturating_sub(a)),
        round_p50s: Vec::new(),
        round_switches: Vec::new(),
    })
}

/// What one session thread of the throughput run did.
struct Worker {
    calls: u64,
    latencies_us: Vec<f64>,
    errors: u64,
    first_error: Option<String>,
}

/// `sessions` sessions, each a thread doing closed-loop calls for the set
/// duration: aggregate requests/s and p99.
fn throughput(
    target: &Target,
    running: Option<&Running>,
    sessions: usize,
    s: &Settings,
) -> Result<ThroughputRound, String> {
    let ready = Arc::new(Barrier::new(sessions + 1));
    let go_barrier = Arc::new(Barrier::new(sessions + 1));
    let done = Arc::new(Barrier::new(sessions + 1));
    // Sessions close only after the CPU reading: a closed session's socat
    // fork exits and takes its CPU time out of the tree.
    let measured = Arc::new(Barrier::new(sessions + 1));
    let go = Arc::new(AtomicBool::new(false));
    let (opened_tx, opened_rx) = mpsc::channel::<Result<(), String>>();
    let duration = s.duration;
    let mut handles = Vec::with_capacity(sessions);
    for i in 0..sessions {
        let target = target.clone();
        let (ready, go_barrier, done, go) =
            (ready.clone(), go_barrier.clone(), done.clone(), go.clone());
        let measured = measured.clone();
        let opened_tx = opened_tx.clone();
        let spawned = thread::Builder::new()
            .name(format!("load-{i}"))
            .stack_size(256 * 1024)
            .spawn(move || {
                let session = open_initialized(&target).map(|(s, _)| s);
                let _ = opened_tx.send(session.as_ref().map(drop).map_err(|e| e.to_string()));
                ready.wait();
                go_barrier.wait();
                let mut w = Worker {
                    calls: 0,
                    latencies_us: Vec::with_capacity(65_536),
                    errors: 0,
                    first_error: None,
                };
                let mut session: Option<Box<dyn Session>> = session.ok();
                if go.load(Ordering::Acquire) {
                    if let Some(sess) = session.as_mut() {
                        let deadline = Instant::now() + duration;
                        let mut id = 1u64;
                        while Instant::now() < deadline {
                            let body = echo_call(id);
                            let t = Instant::now();
                            match sess.request(id, &body) {
                                Ok(()) => {
                                    w.latencies_us.push(t.elapsed().as_secs_f64() * 1e6);
                                    w.calls += 1;
                                }
                                Err(e) => {
                                    w.errors += 1;
                                    w.first_error.get_or_insert_with(|| e.to_string());
                                    break;
                                }
                            }
                            id += 1;
                        }
                    }
                }
                done.wait();
                measured.wait();
                if let Some(mut sess) = session {
                    sess.close();
                }
                w
            });
        match spawned {
            Ok(h) => handles.push(h),
            Err(e) => {
                // Cannot happen on a sane machine; without the thread the
                // barriers would never open, so give up loudly.
                panic!("cannot start load thread {i}: {e}");
            }
        }
    }
    drop(opened_tx);
    ready.wait();
    // Every thread sent its result before reaching `ready`.
    let opened: Vec<Result<(), String>> = opened_rx.try_iter().collect();
    let failed: Vec<&String> = opened.iter().filter_map(|r| r.as_ref().err()).collect();
    let ok = failed.is_empty();
    go.store(ok, Ordering::Release);
    let cpu0 = proxy_cpu(running);
    let t0 = Instant::now();
    go_barrier.wait();
    done.wait();
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu1 = proxy_cpu(running);
    measured.wait();
    let workers: Vec<Worker> = handles.into_iter().filter_map(|h| h.join().ok()).collect();
    if !ok {
        return Err(format!(
            "{} of {sessions} sessions could not be opened, first: {}",
            failed.len(),
            failed[0]
        ));
    }
    Ok(ThroughputRound {
        calls: workers.iter().map(|w| w.calls).sum(),
        elapsed_s: elapsed,
        cpu_s: cpu1 - cpu0,
        errors: workers.iter().map(|w| w.errors).sum(),
        first_error: workers.iter().find_map(|w| w.first_error.clone()),
        latencies_us: workers.into_iter().flat_map(|w| w.latencies_us).collect(),
    })
}

/// One timed window of the throughput run.
struct ThroughputRound {
    calls: u64,
    elapsed_s: f64,
    cpu_s: f64,
    errors: u64,
    first_error: Option<String>,
    latencies_us: Vec<f64>,
}

/// Requests/s is the median over rounds; p99 is over every call of every
/// round; CPU per message over all rounds.
fn summarize(rounds: &[ThroughputRound]) -> Result<Throughput, String> {
    let calls: u64 = rounds.iter().map(|r| r.calls).sum();
    let first_error = rounds.iter().find_map(|r| r.first_error.clone());
    if calls == 0 {
        return Err(format!(
            "no call succeeded: {}",
            first_error.unwrap_or_default()
        ));
    }
    let mut rates: Vec<f64> = rounds
        .iter()
        .map(|r| r.calls as f64 / r.elapsed_s)
        .collect();
    let round_rps = rates.clone();
    rates.sort_by(f64::total_cmp);
    let mut all: Vec<f64> = rounds
        .iter()
        .flat_map(|r| r.latencies_us.iter().copied())
        .collect();
    all.sort_by(f64::total_cmp);
    let cpu_s: f64 = rounds.iter().map(|r| r.cpu_s).sum();
    Ok(Throughput {
        rps: percentile(&rates, 0.5),
        round_rps,
        p99_ms: percentile(&all, 0.99) / 1e3,
        cpu_ms_per_10k: cpu_s * 1e3 * 10_000.0 / (2.0 * calls as f64),
        errors: rounds.iter().map(|r| r.errors).sum(),
        first_error,
    })
}

/// Connect → `initialize` answered, sequential sessions: the median, ms.
fn setup(target: &Target, s: &Settings) -> Fig {
    let deadline = Instant::now() + s.cap;
    let mut samples = Vec::with_capacity(s.setup_sessions);
    for _ in 0..s.setup_sessions {
        let (mut session, took) =
            open_initialized(target).map_err(|e| format!("session set-up failed: {e}"))?;
        samples.push(took.as_secs_f64() * 1e3);
        session.close();
        drop(session);
        if Instant::now() > deadline {
            break;
        }
    }
    samples.sort_by(f64::total_cmp);
    Ok(percentile(&samples, 0.5))
}

/// How the memory rows open one idle session.
type Opener = fn(&Target) -> std::io::Result<Box<dyn Session>>;

fn open_plain(target: &Target) -> std::io::Result<Box<dyn Session>> {
    open_initialized(target).map(|(s, _)| s)
}

/// Opens `n` sessions with `opener` on a few threads; returns those opened
/// and the first error, if any.
fn open_many(target: &Target, n: usize, opener: Opener) -> (Vec<Box<dyn Session>>, Option<String>) {
    let threads = 8.min(n.max(1));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let target = target.clone();
            let count = n / threads + usize::from(t < n % threads);
            thread::spawn(move || {
                let mut opened = Vec::with_capacity(count);
                let mut error = None;
                for _ in 0..count {
                    match opener(&target) {
                        Ok(s) => opened.push(s),
                        Err(e) => {
                            error.get_or_insert(e.to_string());
                        }
                    }
                }
                (opened, error)
            })
        })
        .collect();
    let mut all = Vec::with_capacity(n);
    let mut first = None;
    for h in handles {
        if let Ok((opened, error)) = h.join() {
            all.extend(opened);
            if first.is_none() {
                first = error;
            }
        }
    }
    (all, first)
}

/// Wake-ups per second of the proxy's threads over the idle window.
fn wakeups(running: &Running, s: &Settings) -> f64 {
    let proxy = running.tree().proxy;
    let before: u64 = proxy.iter().map(|p| procfs::context_switches(*p)).sum();
    thread::sleep(s.idle_window);
    let after: u64 = proxy.iter().map(|p| procfs::context_switches(*p)).sum();
    after.saturating_sub(before) as f64 / s.idle_window.as_secs_f64()
}

/// fds and threads summed over the proxy's processes.
fn fds_threads(pids: &[i32]) -> (usize, usize) {
    (
        pids.iter().map(|p| procfs::fds(*p)).sum(),
        pids.iter().map(|p| procfs::threads(*p)).sum(),
    )
}

/// Proxy RSS idle, with `idle_small` and `idle_large` idle sessions, the
/// children's RSS, fds and threads per idle session, and wake-ups when
/// idle; then one call on every idle session. forkline's HTTP sessions
/// hold their GET stream open (`open_with_stream`), as an MCP client
/// leaves them. Returns the open sessions.
fn memory(row: &mut Row, running: &Running, s: &Settings) -> Vec<Box<dyn Session>> {
    let opener: Opener = if row.kind.is_forkline_http() {
        row.idle_streams = true;
        open_with_stream
    } else {
        open_plain
    };
    thread::sleep(s.settle);
    row.rss_idle = Ok(procfs::sum_rss_kib(&running.tree().proxy) as f64);
    row.wake_idle = Ok(wakeups(running, s));

    let (mut sessions, error) = open_many(&running.target, s.idle_small, opener);
    if let Some(e) = &error {
        row.notes
            .push(format!("opening {} idle sessions: {e}", s.idle_small));
    }
    let small = sessions.len();
    thread::sleep(s.settle);
    let tree = running.tree();
    let rss_small = procfs::sum_rss_kib(&tree.proxy) as f64;
    let pss_small = procfs::sum_pss_kib(&tree.proxy) as f64;
    let (fds_small, threads_small) = fds_threads(&tree.proxy);
    row.rss_small = if small == s.idle_small {
        Ok(rss_small)
    } else {
        Err(format!("only {small} sessions opened"))
    };
    row.wake_small = Ok(wakeups(running, s));
    row.threads_small = Some(threads_small);

    let (more, error) = open_many(&running.target, s.idle_large - small, opener);
    if let Some(e) = &error {
        row.notes
            .push(format!("opening {} idle sessions: {e}", s.idle_large));
    }
    sessions.extend(more);
    let large = sessions.len();
    thread::sleep(s.settle);
    let tree = running.tree();
    let rss_large = procfs::sum_rss_kib(&tree.proxy) as f64;
    let pss_large = procfs::sum_pss_kib(&tree.proxy) as f64;
    let (fds_large, threads_large) = fds_threads(&tree.proxy);
    row.rss_large = if large == s.idle_large {
        Ok(rss_large)
    } else {
        Err(format!("only {large} of {} sessions opened", s.idle_large))
    };
    row.children_large = Ok(procfs::sum_rss_kib(&tree.children) as f64);
    row.children_count = Some(tree.children.len());
    if large > small {
        let n = (large - small) as f64;
        row.kib_per_session = Ok((rss_large - rss_small) / n);
        row.pss_per_session = Ok((pss_large - pss_small) / n);
        row.fds_per_idle = Ok((fds_large as f64 - fds_small as f64) / n);
        row.threads_per_idle = Ok((threads_large as f64 - threads_small as f64) / n);
    } else {
        let why = error.unwrap_or_else(|| "no session opened".into());
        row.kib_per_session = Err(why.clone());
        row.pss_per_session = Err(why.clone());
        row.fds_per_idle = Err(why.clone());
        row.threads_per_idle = Err(why);
    }
    row.idle_answered = Some(answer_all(&mut sessions, s));
    sessions
}

/// One call on every session, one after another, within `s.cap`:
/// (answered, sessions, first failure).
fn answer_all(sessions: &mut [Box<dyn Session>], s: &Settings) -> (usize, usize, Option<String>) {
    let deadline = Instant::now() + s.cap;
    let mut answered = 0;
    let mut first = None;
    for (i, session) in sessions.iter_mut().enumerate() {
        if Instant::now() > deadline {
            first.get_or_insert_with(|| format!("the {:.0} s cap ran out", s.cap.as_secs_f64()));
            break;
        }
        let id = 1_000 + i as u64;
        match session.request(id, &echo_call(id)) {
            Ok(()) => answered += 1,
            Err(e) => {
                first.get_or_insert_with(|| format!("session {}: {e}", i + 1));
            }
        }
    }
    (answered, sessions.len(), first)
}
