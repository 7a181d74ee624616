//! Waiting for a fast child's answer without going to sleep.
//!
//! A local stdio server mostly answers within microseconds of a request.
//! A worker that blocks in `poll(2)` as soon as it has forwarded one pays
//! a sleep and a wake-up for every answer, and the CPU it leaves may go
//! idle meanwhile: on a VM whose idle vCPU halts, waking it again costs
//! 25-30 µs (docs/benchmarks.md), and under load those idle gaps were a
//! tenth of both CPUs. So for a short window after it forwards a request
//! to a child whose last answer came within that window, the worker polls
//! without blocking and yields the CPU between polls. Any other runnable
//! thread on that CPU goes first (the child itself, when they share one);
//! with none, the CPU stays awake for the answer. A child slower than the
//! window stops the spinning at its first slow answer, and starts it again
//! at its next fast one; a session with nothing awaited never spins, so
//! idle sessions still cost no wake-ups.

use std::time::{Duration, Instant};

/// How long a worker polls for an answer before it blocks. Long enough
/// for a trivial server to answer through a busy scheduler, short enough
/// that a slow server wastes no more than this per slow answer.
pub const WINDOW: Duration = Duration::from_micros(50);

/// A gap this long between two polls of the spin means the yield in
/// between gave the CPU to other work: the CPU is busy, so there is no
/// idle gap to save, and spinning on would only take turns from threads
/// that have work. The worker blocks instead.
const BUSY_GAP: Duration = Duration::from_micros(10);

#[derive(Debug)]
pub struct Spin {
    /// Poll without blocking until then, while an answer is awaited.
    until: Option<Instant>,
    /// The child's last answer came within the window (assumed at first).
    child_is_fast: bool,
    /// When the spin last polled.
    last_poll: Option<Instant>,
}

impl Default for Spin {
    fn default() -> Self {
        Spin {
            until: None,
            child_is_fast: true,
            last_poll: None,
        }
    }
}

impl Spin {
    /// A request went to the child at `now`.
    pub fn forwarded(&mut self, now: Instant) {
        if self.child_is_fast {
            self.until = now.checked_add(WINDOW);
            self.last_poll = None;
        }
    }

    /// The child answered a request `rtt` after it was forwarded.
    pub fn answered(&mut self, rtt: Duration) {
        self.child_is_fast = rtt <= WINDOW;
        if !self.child_is_fast {
            self.until = None;
        }
    }

    /// True while the worker should poll without blocking: within the
    /// window, with an answer still awaited, and with the CPU not taken by
    /// other work since the last poll.
    pub fn keep_polling(&mut self, now: Instant, awaiting: bool) -> bool {
        let busy = self
            .last_poll
            .is_some_and(|last| now.saturating_duration_since(last) > BUSY_GAP);
        match self.until {
            Some(until) if awaiting && now < until && !busy => {
                self.last_poll = Some(now);
                true
            }
            _ => {
                self.until = None;
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polls_within_the_window_while_an_answer_is_awaited() {
        let mut spin = Spin::default();
        let t0 = Instant::now();
        let step = BUSY_GAP / 2;
        assert!(!spin.keep_polling(t0, true), "nothing forwarded yet");
        spin.forwarded(t0);
        assert!(spin.keep_polling(t0 + step, true));
        assert!(spin.keep_polling(t0 + step * 2, true));
        assert!(!spin.keep_polling(t0 + step * 3, false), "nothing awaited");
        spin.forwarded(t0);
        let mut at = t0;
        while at < t0 + WINDOW {
            assert!(spin.keep_polling(at, true));
            at += step;
        }
        assert!(!spin.keep_polling(at, true), "the window is over");
        assert!(!spin.keep_polling(t0, true), "and stays over");
    }

    #[test]
    fn a_yield_that_gave_the_cpu_away_ends_the_spin() {
        let mut spin = Spin::default();
        let t0 = Instant::now();
        spin.forwarded(t0);
        assert!(spin.keep_polling(t0, true));
        assert!(
            !spin.keep_polling(t0 + BUSY_GAP * 2, true),
            "other work ran in between"
        );
        spin.forwarded(t0 + BUSY_GAP * 2);
        assert!(
            spin.keep_polling(t0 + BUSY_GAP * 2, true),
            "a new request spins again"
        );
    }

    #[test]
    fn a_slow_answer_stops_the_spinning_until_a_fast_one() {
        let mut spin = Spin::default();
        let t0 = Instant::now();
        spin.answered(WINDOW * 20);
        spin.forwarded(t0);
        assert!(
            !spin.keep_polling(t0, true),
            "a slow child is not waited for"
        );
        spin.answered(WINDOW / 10);
        spin.forwarded(t0);
        assert!(spin.keep_polling(t0, true), "fast again");
        spin.answered(WINDOW * 2);
        assert!(
            !spin.keep_polling(t0, true),
            "a slow answer ends the window"
        );
    }
}
