//! The session clock: one thread that wakes each session's worker at its
//! next deadline (the idle timeout, the end of a grace), so that a worker's
//! poll hands the kernel no timeout of its own.
//!
//! Why: a `poll(2)` with a timeout arms and cancels a kernel timer every
//! time it sleeps, and a worker sleeps twice per round trip; on the
//! benchmark machine that was 0.5 µs of a worker's 7.5 µs of CPU per round
//! trip. The idle deadline moves with every message, but a session's alarm
//! is not moved with it: it stays where it was set, fires early, and the
//! woken worker sets it again at its current deadline. So a busy session
//! touches the clock once per idle-timeout period, not once per message,
//! and an idle one is woken once, at its deadline, as its own timeout
//! would have. With nothing due the thread sleeps without a timeout: no
//! wake-ups when idle.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use crate::sync::lock;
use crate::sys::wake::{self, Tid};

/// The clock's thread, stopped and joined on drop.
pub struct Clock {
    inner: Arc<Inner>,
    thread: Option<JoinHandle<()>>,
}

struct Inner {
    state: Mutex<State>,
    /// Rung when the earliest alarm moves earlier, and to stop.
    changed: Condvar,
}

#[derive(Default)]
struct State {
    /// Thread to wake, by when and a tie-breaking sequence number.
    /// Removed by the clock when it fires, by the owner when it moves or
    /// leaves; both under this lock, so no signal reaches a thread that
    /// has left.
    alarms: BTreeMap<(Instant, u64), Tid>,
    next_seq: u64,
    stopping: bool,
}

/// One worker's place on the clock: at most one alarm at a time.
pub struct Timer<'a> {
    clock: &'a Inner,
    tid: Tid,
    /// Where its alarm is, if it has one that has not fired yet.
    set: Option<(Instant, u64)>,
}

impl Clock {
    pub fn start() -> std::io::Result<Clock> {
        let inner = Arc::new(Inner {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        let ticking = Arc::clone(&inner);
        let thread = std::thread::Builder::new()
            .name("session-clock".into())
            .stack_size(64 * 1024)
            .spawn(move || ticking.run())?;
        Ok(Clock {
            inner,
            thread: Some(thread),
        })
    }

    /// A place on the clock for the worker thread `tid` (a
    /// [`Sleeper`](crate::sys::wake::Sleeper)).
    pub fn timer(&self, tid: Tid) -> Timer<'_> {
        Timer {
            clock: &self.inner,
            tid,
            set: None,
        }
    }
}

impl Drop for Clock {
    fn drop(&mut self) {
        lock(&self.inner.state).stopping = true;
        self.inner.changed.notify_all();
        if let Some(thread) = self.thread.take() {
            crate::sync::join(thread);
        }
    }
}

impl Inner {
    fn run(&self) {
        let mut state = lock(&self.state);
        loop {
            if state.stopping {
                return;
            }
            let now = Instant::now();
            while let Some(entry) = state.alarms.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                wake::wake(entry.remove());
            }
            state = match state.alarms.keys().next() {
                Some(&(due, _)) => {
                    let wait = due.saturating_duration_since(now);
                    match self.changed.wait_timeout(state, wait) {
                        Ok((state, _)) => state,
                        Err(poisoned) => poisoned.into_inner().0,
                    }
                }
                None => self
                    .changed
                    .wait(state)
                    .unwrap_or_else(|poisoned| poisoned.into_inner()),
            };
        }
    }
}

impl Timer<'_> {
    /// Makes sure the worker is woken by `due` (`None`: no deadline).
    /// `now` is the caller's reading of the clock this turn. Costs nothing
    /// while the alarm already set is still ahead and due no later than
    /// `due`.
    pub fn ensure(&mut self, due: Option<Instant>, now: Instant) {
        let ahead = self.set.filter(|&(at, _)| at > now);
        if ahead.is_some_and(|(at, _)| due.is_some_and(|due| at <= due)) {
            return;
        }
        if self.set.is_none() && due.is_none() {
            return;
        }
        let mut state = lock(&self.clock.state);
        if let Some(old) = self.set.take() {
            // Gone already if it fired.
            state.alarms.remove(&old);
        }
        let Some(due) = due else {
            return;
        };
        let key = (due, state.next_seq);
        state.next_seq += 1;
        state.alarms.insert(key, self.tid);
        let earliest = state.alarms.keys().next() == Some(&key);
        drop(state);
        self.set = Some(key);
        if earliest {
            self.clock.changed.notify_one();
        }
    }
}

impl Drop for Timer<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.set {
            lock(&self.clock.state).alarms.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::wake::Sleeper;
    use std::time::Duration;

    #[test]
    fn a_worker_is_woken_at_its_deadline_and_not_before() {
        let clock = Clock::start().expect("clock");
        let sleeper = Sleeper::for_this_thread();
        let mut timer = clock.timer(sleeper.tid());
        let start = Instant::now();
        let due = start + Duration::from_millis(50);
        timer.ensure(Some(due), start);
        // Without the clock this wait would last a minute.
        let minute = Some(Duration::from_secs(60));
        let mut woken = 0;
        while Instant::now() < due && woken < 100 {
            sleeper.poll(&mut [], minute).expect("ppoll");
            woken += 1;
        }
        assert!(Instant::now() >= due);
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the clock woke it"
        );
    }

    #[test]
    fn a_later_deadline_keeps_the_earlier_alarm_and_an_earlier_one_moves_it() {
        let clock = Clock::start().expect("clock");
        let now = Instant::now();
        let mut timer = clock.timer(0);
        let hour = Duration::from_secs(3600);
        timer.ensure(Some(now + hour), now);
        let first = timer.set;
        timer.ensure(Some(now + 2 * hour), now);
        assert_eq!(timer.set, first, "moving later costs nothing");
        timer.ensure(Some(now + hour / 2), now);
        assert_ne!(timer.set, first);
        assert_eq!(
            lock(&clock.inner.state).alarms.len(),
            1,
            "at most one alarm"
        );
        drop(timer);
        assert!(
            lock(&clock.inner.state).alarms.is_empty(),
            "gone with its owner"
        );
    }

    #[test]
    fn an_alarm_that_fired_is_set_again_at_the_next_deadline() {
        let clock = Clock::start().expect("clock");
        let sleeper = Sleeper::for_this_thread();
        let mut timer = clock.timer(sleeper.tid());
        let start = Instant::now();
        timer.ensure(Some(start + Duration::from_millis(10)), start);
        let minute = Some(Duration::from_secs(60));
        sleeper.poll(&mut [], minute).expect("ppoll");
        let now = Instant::now();
        let next = now + Duration::from_millis(10);
        timer.ensure(Some(next), now);
        while Instant::now() < next && start.elapsed() < Duration::from_secs(30) {
            sleeper.poll(&mut [], minute).expect("ppoll");
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "woken twice by the clock"
        );
    }
}
