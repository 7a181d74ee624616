//! `forkline stdio`: one session whose client is forkline's own stdin and
//! stdout, for MCP clients that launch their servers themselves.
//!
//! The same session engine as `serve`; only the client end differs. Our
//! stdin and stdout belong to the parent too, so they stay in blocking
//! mode: the worker reads them only after `poll(2)` says so and writes a
//! pipe at most `PIPE_BUF` at a time. Signals are watched on a thread of
//! their own, closed and joined at the end. The exit status is the
//! child's, so the client launching us sees what it would have seen
//! launching the server directly.

use std::os::fd::BorrowedFd;
use std::os::unix::process::ExitStatusExt;

use log::{info, warn};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::child::process::{Spawner, Stdin};
use crate::child::reaper::Reaper;
use crate::child::stderr::StderrLog;
use crate::config::StdioConfig;
use crate::error::{Context, Error};
use crate::session::client::{ClientSide, StreamClient};
use crate::session::clock::Clock;
use crate::session::outbox::WriteKind;
use crate::session::relay::Control;
use crate::session::run::{self as session, Shared, Summary};
use crate::session::table::SessionId;
use crate::shutdown::Trigger;

/// Runs the one session; returns the exit status for forkline itself.
pub fn run(config: &StdioConfig) -> Result<i32, Error> {
    let shutdown = Trigger::new().context(|| "cannot create the shutdown trigger".into())?;
    let hurry = Trigger::new().context(|| "cannot create the shutdown trigger".into())?;
    let stderr = StderrLog::start().context(|| "cannot start the stderr log thread".into())?;
    let reaper = Reaper::start().context(|| "cannot start the child reaper".into())?;
    // One session: a stdin pipe costs one descriptor.
    let spawner = Spawner::new(reaper, Stdin::Pipe);
    let clock = Clock::start().context(|| "cannot start the session clock".into())?;
    let mut signals =
        Signals::new([SIGTERM, SIGINT]).context(|| "cannot install signal handlers".into())?;
    let signals_handle = signals.handle();

    let summary = std::thread::scope(|s| {
        let watcher = std::thread::Builder::new()
            .name("signals".into())
            .spawn_scoped(s, || {
                for signal in signals.forever() {
                    let name = if signal == SIGINT {
                        "SIGINT"
                    } else {
                        "SIGTERM"
                    };
                    if shutdown.has_fired() {
                        warn!("{name} again: skipping the grace period");
                        hurry.fire();
                    } else {
                        info!("{name}: shutting down");
                        shutdown.fire();
                    }
                }
            });
        let shared = Shared {
            command: &config.command,
            limits: &config.limits,
            control: Control {
                shutdown: &shutdown,
                hurry: &hurry,
                clock: &clock,
                end_requested: None,
            },
            stderr: &stderr,
            spawner: &spawner,
            warm: None,
        };
        let client = ClientSide::Stream(StreamClient {
            read: stdin_fd(),
            write: stdout_fd(),
            write_kind: WriteKind::for_shared_fd(stdout_fd()),
        });
        let id = SessionId(1);
        let tape = config.record.as_ref().map(|r| r.tape(id, "stdio", None));
        let summary = session::run(id, "stdio", &shared, client, |_| {}, tape);
        signals_handle.close();
        if let Ok(watcher) = watcher {
            if watcher.join().is_err() {
                log::error!("thread signals panicked");
            }
        }
        summary
    });
    spawner.reaper().stop();
    Ok(exit_status(&summary))
}

/// 0 when the child exited 0, its own code when it exited non-zero,
/// 128 + N when signal N killed it (as a shell reports it), 1 when it
/// could not be started.
fn exit_status(summary: &Summary) -> i32 {
    let Some(exit) = summary.exit else {
        return 1;
    };
    match (exit.status.code(), exit.status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        _ => 1,
    }
}

fn stdin_fd() -> BorrowedFd<'static> {
    // Fds 0 and 1 stay open for the life of the process.
    unsafe { BorrowedFd::borrow_raw(libc::STDIN_FILENO) }
}

fn stdout_fd() -> BorrowedFd<'static> {
    unsafe { BorrowedFd::borrow_raw(libc::STDOUT_FILENO) }
}
