//! Issue 10's two phases, one tool at a time, with the trivial C child: how
//! many live sessions one proxy holds under the fd limit it inherits from
//! the driver, what each session costs it in fds and threads, and how it
//! recovers once they all close at the same moment.
//!
//! Sessions are opened one after another, each initialized with one round
//! trip, up to `Settings::burst_cap` or the first refusal, error or
//! timeout, whichever comes first. Then one call is sent on every session
//! before any answer is read ("all answer at once"), so every session is
//! live at the same time. Then all close together, and the proxy's
//! threads, fds and RSS are sampled until the recovery window ends. Every
//! loop is bounded in count and time; the driver holds one fd per session
//! (`LineSession`) under its own limit, raised to the hard limit at start.

use std::io;
use std::thread;
use std::time::{Duration, Instant};

use crate::Settings;
use crate::client::{INITIALIZED, LineSession, Session, Target, echo_call, initialize};
use crate::procfs;
use crate::tools::Running;

/// "Back to idle": at most this many threads and fds above the idle level.
pub const SLACK_THREADS: usize = 2;
pub const SLACK_FDS: usize = 8;

/// Fds the driver keeps for itself beside its sessions (logs, pipes,
/// /proc reads).
const DRIVER_SPARE_FDS: usize = 256;

/// How often the recovery window checks for "back to idle"; `samples` keep
/// one reading a second.
const POLL: Duration = Duration::from_millis(100);

/// The proxy's own processes at one moment, summed over them (socat forks
/// one per session).
#[derive(Debug, Clone, Copy, Default)]
pub struct Level {
    pub processes: usize,
    pub threads: usize,
    pub fds: usize,
    pub rss_kib: u64,
}

impl Level {
    fn of(pids: &[i32]) -> Level {
        Level {
            processes: pids.len(),
            threads: pids.iter().map(|p| procfs::threads(*p)).sum(),
            fds: pids.iter().map(|p| procfs::fds(*p)).sum(),
            rss_kib: procfs::sum_rss_kib(pids),
        }
    }

    /// Within the slack of `idle` in threads and fds.
    pub fn is_back_at(&self, idle: &Level) -> bool {
        self.threads <= idle.threads + SLACK_THREADS && self.fds <= idle.fds + SLACK_FDS
    }
}

/// What the burst phase measured for one tool.
pub struct Burst {
    /// `Settings::burst_cap`, or less if the driver's own fd limit could
    /// not hold that many sessions (then `stopped_by` says so).
    pub cap: usize,
    /// Sessions open and initialized when opening stopped.
    pub opened: usize,
    /// Of those, the ones that answered the call made on all at once.
    pub answered: usize,
    /// What stopped the opening short of the cap, if anything.
    pub stopped_by: Option<String>,
    /// The first failure of the all-at-once call, if any.
    pub answer_error: Option<String>,
    /// Seconds to open the `opened` sessions, and for all to answer.
    pub open_s: f64,
    pub answer_s: f64,
    /// The proxy's soft RLIMIT_NOFILE, as /proc shows it.
    pub fd_limit: Option<u64>,
    /// The proxy before the first session, and with `opened` sessions.
    pub idle: Level,
    pub peak: Level,
    /// Forkline and the twin only.
    pub recovery: Option<Recovery>,
}

impl Burst {
    /// Whether every session opened also answered at once.
    pub fn all_answered(&self) -> bool {
        self.opened > 0 && self.answered == self.opened
    }

    /// (fds@N − fds idle) ÷ N, over the proxy's processes.
    pub fn fds_per_session(&self) -> Option<f64> {
        (self.opened > 0)
            .then(|| (self.peak.fds as f64 - self.idle.fds as f64) / self.opened as f64)
    }

    /// (threads@N − threads idle) ÷ N, over the proxy's processes.
    pub fn threads_per_session(&self) -> Option<f64> {
        (self.opened > 0)
            .then(|| (self.peak.threads as f64 - self.idle.threads as f64) / self.opened as f64)
    }
}

/// The proxy after every session closed at once.
pub struct Recovery {
    pub window: Duration,
    pub mark: Duration,
    /// One reading a second from the close: (seconds after, level).
    pub samples: Vec<(f64, Level)>,
    /// The first reading at or after `mark`.
    pub at_mark: Option<Level>,
    /// Seconds from the close until threads and fds were back within the
    /// slack of idle, if they were within the window.
    pub back_after: Option<f64>,
}

impl Recovery {
    /// Whether the reading at the mark is back at `idle`.
    pub fn back_at_mark(&self, idle: &Level) -> Option<bool> {
        self.at_mark.map(|l| l.is_back_at(idle))
    }
}

fn describe(e: &io::Error, timeout: Duration) -> String {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            format!("no answer within {:.0} s", timeout.as_secs_f64())
        }
        _ => e.to_string(),
    }
}

/// One session: connect, `initialize` answered, `initialized` sent.
fn open_one(target: &Target, timeout: Duration) -> Result<LineSession, String> {
    let Target::Line(addr) = target else {
        return Err("the burst phase drives raw TCP tools only".into());
    };
    let mut session = LineSession::connect(*addr, timeout)
        .map_err(|e| format!("connect: {}", describe(&e, timeout)))?;
    session
        .request(0, &initialize(0))
        .map_err(|e| format!("initialize: {}", describe(&e, timeout)))?;
    session
        .notify(INITIALIZED)
        .map_err(|e| format!("initialized: {}", describe(&e, timeout)))?;
    Ok(session)
}

/// Runs the phase against a started tool and leaves it with no session
/// open (the caller stops it). `recover` samples the recovery window;
/// without it, waits only (at most 15 s) for the tool's children to go.
/// Blocks for at most `burst_time + burst_answer_time + recovery_window`
/// plus a few seconds of settling.
pub fn measure(
    running: &Running,
    s: &Settings,
    recover: bool,
    progress: impl Fn(&str),
) -> Result<Burst, String> {
    thread::sleep(s.settle);
    let idle = Level::of(&running.tree().proxy);
    let fd_limit = procfs::fd_limit(running.pid);
    // The driver holds one fd per session: on a machine whose hard limit
    // is low, its own limit must not pass for the proxy's.
    let me = std::process::id() as i32;
    let headroom = procfs::fd_limit(me).map_or(usize::MAX, |l| {
        (l as usize).saturating_sub(procfs::fds(me) + DRIVER_SPARE_FDS)
    });
    let cap = s.burst_cap.min(headroom);

    let started = Instant::now();
    let deadline = started + s.burst_time;
    let mut sessions: Vec<LineSession> = Vec::with_capacity(cap);
    let mut stopped_by = None;
    while sessions.len() < cap {
        if Instant::now() > deadline {
            stopped_by = Some(format!(
                "the {:.0} s time cap of the phase",
                s.burst_time.as_secs_f64()
            ));
            break;
        }
        match open_one(&running.target, s.burst_timeout) {
            Ok(session) => sessions.push(session),
            Err(e) => {
                stopped_by = Some(format!("session {}: {e}", sessions.len() + 1));
                break;
            }
        }
        if sessions.len() % 1000 == 0 {
            progress(&format!(
                "burst: {} sessions open after {:.1} s",
                sessions.len(),
                started.elapsed().as_secs_f64()
            ));
        }
    }
    let open_s = started.elapsed().as_secs_f64();
    let opened = sessions.len();
    if stopped_by.is_none() && cap < s.burst_cap {
        stopped_by = Some(format!("the driver's own fd limit ({cap} sessions)"));
    }
    progress(&format!(
        "burst: {opened} sessions open in {open_s:.1} s{}; a call on every one",
        stopped_by
            .as_ref()
            .map(|w| format!(", stopped by {w}"))
            .unwrap_or_default()
    ));

    // All answer at once: every request is in flight before the first
    // answer is read.
    let t = Instant::now();
    let answer_deadline = t + s.burst_answer_time;
    let call = echo_call(1);
    let mut answer_error = None;
    let mut sent = vec![false; opened];
    for (session, sent) in sessions.iter_mut().zip(sent.iter_mut()) {
        match session.send(&call) {
            Ok(()) => *sent = true,
            Err(e) => {
                answer_error
                    .get_or_insert_with(|| format!("send: {}", describe(&e, s.burst_timeout)));
            }
        }
    }
    let mut answered = 0;
    for (session, _) in sessions.iter_mut().zip(&sent).filter(|(_, sent)| **sent) {
        let left = answer_deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            answer_error.get_or_insert_with(|| {
                format!(
                    "the {:.0} s cap for all answers ran out",
                    s.burst_answer_time.as_secs_f64()
                )
            });
            break;
        }
        let timeout = left.min(s.burst_timeout);
        match session.receive(1, timeout) {
            Ok(()) => answered += 1,
            Err(e) => {
                answer_error.get_or_insert_with(|| describe(&e, timeout));
            }
        }
    }
    let answer_s = t.elapsed().as_secs_f64();
    let peak = Level::of(&running.tree().proxy);

    // Every session closes at once.
    progress(&format!(
        "burst: {answered} of {opened} answered in {answer_s:.1} s; closing all"
    ));
    let closed = Instant::now();
    drop(sessions);
    let recovery = recover.then(|| {
        progress(&format!(
            "recovery: sampling for up to {:.0} s",
            s.recovery_window.as_secs_f64()
        ));
        recovery(running.pid, &idle, s, closed)
    });
    // What the tool still has to reap, it gets a moment for (bounded).
    let drain = Instant::now() + Duration::from_secs(15);
    while !running.tree().children.is_empty() && Instant::now() < drain {
        thread::sleep(Duration::from_millis(200));
    }
    Ok(Burst {
        cap,
        opened,
        answered,
        stopped_by,
        answer_error,
        open_s,
        answer_s,
        fd_limit,
        idle,
        peak,
        recovery,
    })
}

/// Samples one proxy process after the close, until the window ends, or
/// sooner once past the mark and back at idle.
fn recovery(pid: i32, idle: &Level, s: &Settings, closed: Instant) -> Recovery {
    let mut samples = Vec::new();
    let mut at_mark = None;
    let mut back_after = None;
    let mut next_sample = Duration::ZERO;
    loop {
        let t = closed.elapsed();
        let level = Level::of(&[pid]);
        if back_after.is_none() && level.is_back_at(idle) {
            back_after = Some(t.as_secs_f64());
        }
        if t >= next_sample {
            samples.push((t.as_secs_f64(), level));
            next_sample += Duration::from_secs(1);
        }
        if at_mark.is_none() && t >= s.recovery_mark {
            at_mark = Some(level);
        }
        if t >= s.recovery_window || (at_mark.is_some() && back_after.is_some()) {
            break;
        }
        thread::sleep(POLL);
    }
    Recovery {
        window: s.recovery_window,
        mark: s.recovery_mark,
        samples,
        at_mark,
        back_after,
    }
}
