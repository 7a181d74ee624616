//! Waking one thread out of its `poll(2)` with a signal, so that what a
//! session waits for besides its own descriptors (the shutdown broadcasts,
//! its child's exit, its deadlines) costs it no entry in its poll set and
//! no timeout.
//!
//! Why: a session's worker polls twice per round trip, and the kernel's
//! cost of `poll(2)` grows with every entry it registers and unregisters.
//! An eventfd shared by all sessions (the shutdown alarm) was also one wait
//! queue that every worker on every CPU locked twice a turn. With it and
//! the child's socket out of the set, a worker spends about 0.3 µs less
//! CPU per round trip and 64 or 256 sessions made 11-14% more requests/s
//! in alternating runs on the 2-vCPU benchmark machine.
//!
//! How, without a lost wake-up: the thread keeps [`WAKE_SIGNAL`] blocked
//! except inside `ppoll(2)`, which unblocks it atomically for the wait.
//! A waker first publishes what happened (an atomic flag the sleeper checks
//! before each wait), then signals the thread: a signal that arrives
//! between the check and the wait stays pending and ends the wait at once.
//! The handler does nothing and is installed with `SA_RESTART`, so any
//! other thread it might reach (it is only ever sent to a registered
//! sleeper) goes on with its blocking call. A child inherits the mask of
//! the thread that spawns it, so a session's worker is a sleeper only
//! after its child is started, and not once its session is over.

use std::io;
use std::marker::PhantomData;
use std::sync::Once;
use std::time::Duration;

/// The signal: its default action is to be ignored, so one that arrived
/// before the handler was installed would harm nobody, and nothing else in
/// the process uses it.
pub const WAKE_SIGNAL: libc::c_int = libc::SIGURG;

/// A kernel thread id, as `tgkill(2)` takes it.
pub type Tid = libc::pid_t;

/// This thread, made wakeable by [`wake`]. Not `Send`: it describes the
/// thread that made it.
pub struct Sleeper {
    tid: Tid,
    /// This thread's signal mask before: put back on drop.
    before: libc::sigset_t,
    /// The same without [`WAKE_SIGNAL`]: the mask during a wait.
    waiting_mask: libc::sigset_t,
    _this_thread: PhantomData<*const ()>,
}

impl Sleeper {
    /// Installs the handler (once per process) and blocks [`WAKE_SIGNAL`]
    /// on this thread outside [`Sleeper::poll`] until the sleeper is
    /// dropped. A child spawned meanwhile would inherit the blocked signal
    /// (std does not reset the mask): spawn before, or after.
    pub fn for_this_thread() -> Sleeper {
        static HANDLER: Once = Once::new();
        HANDLER.call_once(install_handler);
        // SAFETY: sigset_t is plain data; the calls below only fill it.
        let mut wake: libc::sigset_t = unsafe { std::mem::zeroed() };
        let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointers to sigset_t values owned here; with a
        // valid signal number and `how`, these calls cannot fail.
        unsafe {
            libc::sigemptyset(&mut wake);
            libc::sigaddset(&mut wake, WAKE_SIGNAL);
            libc::pthread_sigmask(libc::SIG_BLOCK, &wake, &mut old);
        }
        let mut waiting_mask = old;
        // SAFETY: as above.
        unsafe { libc::sigdelset(&mut waiting_mask, WAKE_SIGNAL) };
        Sleeper {
            // SAFETY: gettid(2) has no failure mode.
            tid: unsafe { libc::gettid() },
            before: old,
            waiting_mask,
            _this_thread: PhantomData,
        }
    }

    pub fn tid(&self) -> Tid {
        self.tid
    }

    /// `poll(2)` on `fds` for at most `timeout` (`None`: no limit), ended
    /// early by [`wake`]. Returns how many entries have events: 0 after a
    /// wake-up, a timeout or any other signal, so the caller looks at its
    /// flags and deadlines again.
    pub fn poll(&self, fds: &mut [libc::pollfd], timeout: Option<Duration>) -> io::Result<usize> {
        let limit = timeout.map(|t| libc::timespec {
            tv_sec: t.as_secs().min(libc::time_t::MAX as u64) as libc::time_t,
            tv_nsec: t.subsec_nanos() as libc::c_long,
        });
        let limit_ptr = limit
            .as_ref()
            .map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: `fds` is a valid slice of pollfd for its length; the
        // timespec and mask outlive the call.
        let n = unsafe {
            libc::ppoll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                limit_ptr,
                &self.waiting_mask,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::Interrupted {
            return Ok(0);
        }
        Err(err)
    }
}

impl Drop for Sleeper {
    /// A wake-up still pending (sent after the last wait) runs the empty
    /// handler here and is gone, not left to end a later wait early.
    fn drop(&mut self) {
        // SAFETY: a mask this thread had; not `Send`, so this thread.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.before, std::ptr::null_mut()) };
    }
}

/// Ends the current or next [`Sleeper::poll`] of thread `tid` of this
/// process. The caller must know `tid` is alive (it holds the lock its
/// sleeper deregisters under), or the signal could reach a recycled id.
pub fn wake(tid: Tid) {
    // SAFETY: tgkill(2) with our own pid; ESRCH is harmless.
    unsafe {
        libc::syscall(
            libc::SYS_tgkill,
            libc::getpid(),
            tid as libc::c_long,
            WAKE_SIGNAL,
        );
    }
}

extern "C" fn on_wake_signal(_: libc::c_int) {}

fn install_handler() {
    // SAFETY: a zeroed sigaction is a valid start; the handler is
    // async-signal-safe (it does nothing).
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_wake_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        // Cannot fail for a catchable signal and a valid action.
        libc::sigaction(WAKE_SIGNAL, &action, std::ptr::null_mut());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Instant;

    /// A thread asleep with no deadline and nothing to poll: only a wake
    /// can end its wait.
    fn sleeper_thread() -> (std::thread::JoinHandle<usize>, Tid, mpsc::Receiver<()>) {
        let (tid_tx, tid_rx) = mpsc::channel();
        let (asleep_tx, asleep_rx) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let sleeper = Sleeper::for_this_thread();
            tid_tx.send(sleeper.tid()).expect("send tid");
            asleep_tx.send(()).expect("send");
            sleeper.poll(&mut [], None).expect("ppoll")
        });
        let tid = tid_rx.recv().expect("tid");
        (thread, tid, asleep_rx)
    }

    #[test]
    fn a_wake_ends_a_wait_without_a_deadline() {
        let (thread, tid, asleep) = sleeper_thread();
        asleep.recv().expect("asleep");
        // Until it is parked in ppoll the signal is blocked and kept
        // pending, so this cannot be too early.
        wake(tid);
        assert_eq!(thread.join().expect("join"), 0);
    }

    #[test]
    fn a_wake_sent_before_the_wait_is_not_lost() {
        let sleeper = Sleeper::for_this_thread();
        wake(sleeper.tid());
        let started = Instant::now();
        // No fds, a long deadline: returns at once only because the
        // signal was kept pending.
        let n = sleeper
            .poll(&mut [], Some(Duration::from_secs(60)))
            .expect("ppoll");
        assert_eq!(n, 0);
        assert!(started.elapsed() < Duration::from_secs(30));
    }

    #[test]
    fn a_timeout_still_ends_the_wait() {
        let sleeper = Sleeper::for_this_thread();
        let n = sleeper
            .poll(&mut [], Some(Duration::from_millis(10)))
            .expect("ppoll");
        assert_eq!(n, 0);
    }
}
