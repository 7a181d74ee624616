//! The reaper: one thread that learns of every child's exit through
//! SIGCHLD, sweeps what is left of its process group, reaps it, and tells
//! its session.
//!
//! Why not a pidfd per child: it is one more descriptor per session, and
//! descriptors are what bounds how many sessions one process holds. One
//! signal for all children costs none. The exit is seen with
//! `waitid(WNOWAIT)`, which leaves the zombie in place: while it holds its
//! pid, its process group cannot have been recycled, so the sweep
//! (`kill(-pgid, SIGKILL)`) can only reach the child's own group. Only
//! then is it reaped. Every signal forkline sends a child's group goes
//! through [`ExitWatch::signal_group`], under the same lock the reaper
//! holds from sweep to reap, so no signal can ever reach a recycled pid.
//!
//! Children are spawned under the registry lock, so by the time the
//! reaper looks, every child of ours is registered. It never reaps a pid
//! it did not register (std reaps a child whose `exec` failed itself, and
//! tests spawn children of their own).

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
use signal_hook::consts::SIGCHLD;
use signal_hook::iterator::{Handle, Signals};

use crate::shutdown::Never;
use crate::sync::lock;
use crate::sys::socket::shutdown_read_raw;
use crate::sys::wake::{self, Tid};

/// A handle to the reaper thread; clones share it. The owner that started
/// it calls [`Reaper::stop`] once every session has ended.
#[derive(Clone)]
pub struct Reaper {
    inner: Arc<Inner>,
}

struct Inner {
    children: Mutex<HashMap<u32, Arc<ExitWatch>>>,
    signals: Handle,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// What a session knows of its child's exit.
#[derive(Debug)]
pub struct ExitWatch {
    pid: u32,
    /// Set once reaped, before anyone is woken: what a woken session
    /// worker checks.
    reaped: AtomicBool,
    state: Mutex<ExitState>,
    /// Dropped when the child has been reaped: wakes every `select!`.
    exited: Mutex<Option<Sender<Never>>>,
    on_exit: Receiver<Never>,
}

#[derive(Debug, Default)]
struct ExitState {
    status: Option<ExitStatus>,
    wake: Option<OnExit>,
}

/// Whom a session wants told when its child exits.
#[derive(Debug, Clone, Copy)]
pub struct OnExit {
    /// A socket of the session's to `shutdown(SHUT_RD)`, so its reader
    /// (the stderr log) sees end of file even if a grandchild that escaped
    /// the group still holds the child's end.
    pub socket: RawFd,
    /// The session's worker, a [`Sleeper`](crate::sys::wake::Sleeper), to
    /// wake from its poll.
    pub thread: Tid,
}

impl OnExit {
    fn notify(self) {
        shutdown_read_raw(self.socket);
        wake::wake(self.thread);
    }
}

impl Reaper {
    /// Installs the SIGCHLD handler and starts the thread. Must run before
    /// the first child is spawned.
    pub fn start() -> std::io::Result<Reaper> {
        let mut signals = Signals::new([SIGCHLD])?;
        let inner = Arc::new(Inner {
            children: Mutex::new(HashMap::new()),
            signals: signals.handle(),
            thread: Mutex::new(None),
        });
        let worker = Arc::clone(&inner);
        let thread = std::thread::Builder::new()
            .name("child-reaper".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                // `forever` ends when `stop` closes the handle.
                for _ in signals.forever() {
                    worker.collect();
                }
                worker.collect();
            })?;
        *lock(&inner.thread) = Some(thread);
        Ok(Reaper { inner })
    }

    /// Spawns `command` and registers the child before the reaper can look
    /// for it. Blocks other spawns and the reaper for the spawn's duration.
    pub fn spawn(&self, command: &mut Command) -> std::io::Result<(Child, Arc<ExitWatch>)> {
        let mut children = lock(&self.inner.children);
        let child = command.spawn()?;
        let watch = Arc::new(ExitWatch::new(child.id()));
        children.insert(child.id(), Arc::clone(&watch));
        Ok((child, watch))
    }

    /// Live children still registered (for tests and metrics).
    pub fn live(&self) -> usize {
        lock(&self.inner.children).len()
    }

    /// Stops and joins the thread. Children still registered are left to
    /// their sessions' `Drop` (which kills them); call this last.
    pub fn stop(&self) {
        self.inner.signals.close();
        if let Some(thread) = lock(&self.inner.thread).take() {
            crate::sync::join(thread);
        }
    }
}

impl Inner {
    /// Reaps every registered child that has exited.
    fn collect(&self) {
        let mut children = lock(&self.children);
        loop {
            match peek_exited(libc::P_ALL, 0) {
                Some(pid) => match children.remove(&pid) {
                    Some(watch) => watch.reap(),
                    None => {
                        // Someone else's zombie stands first in line (it
                        // would be returned again and again): look at
                        // ours one by one instead.
                        children.retain(|pid, watch| {
                            if peek_exited(libc::P_PID, *pid).is_some() {
                                watch.reap();
                                false
                            } else {
                                true
                            }
                        });
                        return;
                    }
                },
                None => return,
            }
        }
    }
}

/// The pid of an exited child (`P_ALL`) or of `id` (`P_PID`), left
/// unreaped; `None` if there is none (or no child at all).
fn peek_exited(which: libc::idtype_t, id: u32) -> Option<u32> {
    loop {
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let rc = unsafe {
            libc::waitid(
                which,
                id,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        if rc != 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return None;
        }
        let pid = unsafe { info.si_pid() };
        return (pid > 0).then_some(pid as u32);
    }
}

impl ExitWatch {
    fn new(pid: u32) -> ExitWatch {
        let (exited, on_exit) = crossbeam_channel::bounded(0);
        ExitWatch {
            pid,
            reaped: AtomicBool::new(false),
            state: Mutex::new(ExitState::default()),
            exited: Mutex::new(Some(exited)),
            on_exit,
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The exit status once the child has been reaped.
    pub fn status(&self) -> Option<ExitStatus> {
        lock(&self.state).status
    }

    /// True once the child has been reaped; cheap enough for every turn of
    /// a session's loop.
    pub fn has_exited(&self) -> bool {
        self.reaped.load(Ordering::SeqCst)
    }

    /// Disconnected once the child has been reaped: put it in a `select!`.
    pub fn receiver(&self) -> &Receiver<Never> {
        &self.on_exit
    }

    /// Asks to be told when the child exits, at once if it already has;
    /// `None` withdraws it. The caller must withdraw before closing the
    /// socket or ending the thread it named: they are told under the lock
    /// this takes, so never after.
    pub fn wake_on_exit(&self, wake: Option<OnExit>) {
        let mut state = lock(&self.state);
        state.wake = wake;
        if let (Some(wake), Some(_)) = (wake, state.status) {
            wake.notify();
        }
    }

    /// Sends `signal` to the child's process group, unless it has already
    /// been reaped (then its pid may belong to someone else).
    pub fn signal_group(&self, signal: i32) {
        let state = lock(&self.state);
        if state.status.is_none() {
            // ESRCH (the group is already empty) is harmless.
            unsafe { libc::kill(-(self.pid as libc::pid_t), signal) };
        }
        drop(state);
    }

    /// Sweep, reap, record, wake. Called by the reaper only, for a child
    /// `waitid` saw exit.
    fn reap(&self) {
        let mut state = lock(&self.state);
        // The zombie still holds the pgid: this reaches only its group.
        unsafe { libc::kill(-(self.pid as libc::pid_t), libc::SIGKILL) };
        let mut raw = 0;
        let status = loop {
            let rc = unsafe { libc::waitpid(self.pid as libc::pid_t, &mut raw, 0) };
            if rc >= 0 {
                break ExitStatus::from_raw(raw);
            }
            if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                // Cannot happen for a zombie we saw; report it as killed.
                break ExitStatus::from_raw(libc::SIGKILL);
            }
        };
        state.status = Some(status);
        self.reaped.store(true, Ordering::SeqCst);
        if let Some(wake) = state.wake {
            wake.notify();
        }
        drop(state);
        lock(&self.exited).take();
    }
}
