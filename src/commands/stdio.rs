//! `forkline stdio`: one session whose client is forkline's own stdin and
//! stdout, for MCP clients that launch their servers themselves.
//!
//! The same session engine as `serve`; only the client end differs. Our
//! stdin and stdout belong to the parent too, so they stay in blocking
//! mode and are made wakeable with an [`Alarm`] instead. Signals are
//! watched on a thread of their own, closed and joined at the end.

use std::os::fd::BorrowedFd;

use log::{info, warn};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::child::stderr::StderrLog;
use crate::config::StdioConfig;
use crate::error::{Context, Error};
use crate::session::run::{self as session, ClientStream, Shared};
use crate::session::table::SessionId;
use crate::session::writer::FdKind;
use crate::shutdown::Trigger;
use crate::sys::interrupt::{Alarm, Interruptible};

/// Runs the one session. `Ok(true)` if the child ran, `Ok(false)` if it
/// could not be started (the client was told why).
pub fn run(config: &StdioConfig) -> Result<bool, Error> {
    let shutdown = Trigger::new().context(|| "cannot create the shutdown trigger".into())?;
    let hurry = Trigger::new().context(|| "cannot create the shutdown trigger".into())?;
    let hub = StderrLog::start().context(|| "cannot start the child-stderr thread".into())?;
    let client_alarm = Alarm::new().context(|| "cannot create a wake-up fd".into())?;
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
            hub: &hub,
            command: &config.command,
            limits: &config.limits,
            shutdown: &shutdown,
            hurry: &hurry,
        };
        let stop_reading = || client_alarm.ring();
        let client = ClientStream {
            reader: Interruptible::new(stdin_fd(), &client_alarm),
            writer: stdout_fd(),
            writer_kind: FdKind::for_shared_fd(stdout_fd()),
            stop_reading: &stop_reading,
        };
        let summary = session::run(SessionId(1), "stdio", &shared, client, |_| {});
        signals_handle.close();
        if let Ok(watcher) = watcher {
            if watcher.join().is_err() {
                log::error!("thread signals panicked");
            }
        }
        summary
    });
    Ok(summary.exit.is_some())
}

fn stdin_fd() -> BorrowedFd<'static> {
    // Fds 0 and 1 stay open for the life of the process.
    unsafe { BorrowedFd::borrow_raw(libc::STDIN_FILENO) }
}

fn stdout_fd() -> BorrowedFd<'static> {
    unsafe { BorrowedFd::borrow_raw(libc::STDOUT_FILENO) }
}
