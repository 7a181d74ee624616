//! The single-session round trip with the driver, the tool and its child
//! all held on one CPU.
//!
//! On a small VM the unpinned figure is mostly the scheduler's: a round
//! trip is four wake-ups (driver → proxy → child → proxy → driver), and
//! each one that lands on another virtual CPU waits for that CPU to leave
//! its halt, 25 to 30 µs on the 2-vCPU machine of docs/benchmarks.md
//! against about 3 on the same CPU. Where the three processes happen to sit
//! decides between about 12 and 90 µs for every tool alike, session by
//! session. On one CPU that lottery is gone and what is left is each
//! tool's own path: its system calls, its parsing and its copies. Both are
//! reported; neither replaces the other.

use std::thread;

use crate::report::{Fig, Row};
use crate::tools::{self, Kind, Paths, Running};
use crate::{
    LatencyRound, Settings, client::Target, echo_target, latency, percentile, progress, settle,
};

/// What the phase measured for one tool.
#[derive(Debug, Clone)]
pub struct OneCpu {
    pub cpu: usize,
    pub p50_us: Fig,
    pub p99_us: Fig,
    /// The p50 of each round, in order.
    pub round_p50s: Vec<f64>,
}

struct Pinned {
    row: usize,
    running: Option<Running>,
    target: Target,
    latency: LatencyRound,
    error: Option<String>,
}

/// Restarts the direct row, socat, forkline and the twins on the last CPU
/// this process may use, with the echo server as the child, and times one
/// session's round trips from a driver thread held on that CPU too, in
/// rounds that visit every tool in turn.
pub fn phase(rows: &mut [Row], paths: &Paths, s: &Settings) {
    let Some(cpu) = tools::last_cpu() else {
        eprintln!("bench: no CPU set to pin to; the one-CPU phase is skipped");
        return;
    };
    let mut live = Vec::new();
    for (i, row) in rows.iter_mut().enumerate() {
        let kind = row.kind;
        let wanted = matches!(
            kind,
            Kind::Direct
                | Kind::Socat
                | Kind::Forkline
                | Kind::ForklineStdinSocket
                | Kind::Twin
                | Kind::TwinSocketPair
        );
        if !wanted || row.skipped.is_some() {
            continue;
        }
        let running = match kind {
            // The driver spawns the direct row's child, from its pinned thread.
            Kind::Direct => None,
            _ => {
                progress(kind, &format!("starting on CPU {cpu} only"));
                let log = format!("{}-one-cpu", kind.key());
                match tools::start_on_cpu(kind, paths, &paths.echo_child(), &log, cpu) {
                    Ok(r) => Some(r),
                    Err(e) => {
                        row.notes.push(format!("one-CPU phase: cannot start: {e}"));
                        continue;
                    }
                }
            }
        };
        let target = echo_target(running.as_ref(), paths);
        live.push(Pinned {
            row: i,
            running,
            target,
            latency: LatencyRound::default(),
            error: None,
        });
    }
    let kinds: Vec<Kind> = rows.iter().map(|r| r.kind).collect();
    let driven = thread::scope(|scope| {
        scope
            .spawn(|| {
                tools::pin_to_cpu(cpu).map_err(|e| format!("cannot pin the driver: {e}"))?;
                for round in 1..=s.rounds {
                    for p in live.iter_mut().filter(|p| p.error.is_none()) {
                        progress(
                            kinds[p.row],
                            &format!("one CPU: latency, round {round} of {}", s.rounds),
                        );
                        match latency(&p.target, p.running.as_ref(), s) {
                            Ok(r) => p.latency.add(r),
                            Err(e) => p.error = Some(e),
                        }
                        if let Some(r) = &p.running {
                            settle(r, s);
                        }
                    }
                }
                Ok::<(), String>(())
            })
            .join()
            .unwrap_or_else(|_| Err("the driver thread panicked".into()))
    });
    for mut p in live {
        let row = &mut rows[p.row];
        let error = p.error.take().or_else(|| driven.clone().err());
        let figures = match error {
            Some(e) => OneCpu {
                cpu,
                p50_us: Err(e.clone()),
                p99_us: Err(e),
                round_p50s: Vec::new(),
            },
            None => {
                let mut sorted = p.latency.samples_us.clone();
                sorted.sort_by(f64::total_cmp);
                OneCpu {
                    cpu,
                    p50_us: Ok(percentile(&sorted, 0.5)),
                    p99_us: Ok(percentile(&sorted, 0.99)),
                    round_p50s: p.latency.round_p50s.clone(),
                }
            }
        };
        row.one_cpu = Some(figures);
        if let Some(mut r) = p.running.take() {
            crate::finish(row, &mut r, "one CPU");
        }
    }
}
