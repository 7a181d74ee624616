//! One-shot broadcasts for shutdown: seen by `select!`, by `poll(2)` and
//! by the session workers.
//!
//! Some threads wait on crossbeam channels, child stops wait in `poll(2)`,
//! and session workers sleep in a poll set that holds only their own
//! descriptors; a `Trigger` reaches all of them at once. Firing sets a
//! flag, drops the only `Sender`, which wakes every `select!` on the
//! receiver (crossbeam's broadcast idiom), rings an [`Alarm`] for the fd
//! waiters, and signals every registered [`Sleeper`] thread.
//!
//! [`Sleeper`]: crate::sys::wake::Sleeper

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_channel::{Receiver, Sender};
use slab::Slab;

use crate::sync::lock;
use crate::sys::alarm::Alarm;
use crate::sys::wake::{self, Tid};

/// A channel that never carries a value: only its disconnection matters.
pub enum Never {}

#[derive(Debug)]
pub struct Trigger {
    fired: AtomicBool,
    sender: Mutex<Option<Sender<Never>>>,
    receiver: Receiver<Never>,
    alarm: Alarm,
    /// Threads to signal when it fires. Signalled under this lock, which
    /// they deregister under, so no signal reaches a thread that is gone.
    sleepers: Mutex<Slab<Tid>>,
}

/// A thread's place in a trigger's wake-up list; leaving drops it.
pub struct Registration<'a> {
    trigger: &'a Trigger,
    key: usize,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        lock(&self.trigger.sleepers).remove(self.key);
    }
}

impl Trigger {
    pub fn new() -> std::io::Result<Trigger> {
        let (sender, receiver) = crossbeam_channel::bounded(0);
        Ok(Trigger {
            fired: AtomicBool::new(false),
            sender: Mutex::new(Some(sender)),
            receiver,
            alarm: Alarm::new()?,
            sleepers: Mutex::new(Slab::new()),
        })
    }

    /// Fires; every waiter wakes, now and later. Idempotent.
    pub fn fire(&self) {
        // Published before anyone is woken: a woken thread must see it.
        self.fired.store(true, Ordering::SeqCst);
        self.alarm.ring();
        lock(&self.sender).take();
        for (_, &tid) in lock(&self.sleepers).iter() {
            wake::wake(tid);
        }
    }

    pub fn has_fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }

    /// Signals thread `tid` (a [`Sleeper`]'s) when this fires, for as long
    /// as the registration lives. A trigger that fired before this call
    /// sends nothing: the caller checks [`Trigger::has_fired`] after it.
    ///
    /// [`Sleeper`]: crate::sys::wake::Sleeper
    pub fn wake_on_fire(&self, tid: Tid) -> Registration<'_> {
        let key = lock(&self.sleepers).insert(tid);
        Registration { trigger: self, key }
    }

    /// Disconnected once fired: put it in a `select!`.
    pub fn receiver(&self) -> &Receiver<Never> {
        &self.receiver
    }

    /// Readable once fired: put it in a `poll(2)`.
    pub fn alarm(&self) -> &Alarm {
        &self.alarm
    }
}

impl std::fmt::Debug for Never {
    fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firing_wakes_select_and_poll() {
        let trigger = Trigger::new().expect("trigger");
        assert!(!trigger.has_fired());
        assert!(trigger.receiver().try_recv().is_err_and(|e| e.is_empty()));
        trigger.fire();
        trigger.fire();
        assert!(trigger.has_fired());
        assert!(
            trigger
                .receiver()
                .try_recv()
                .is_err_and(|e| e.is_disconnected())
        );
    }

    #[test]
    fn firing_wakes_a_registered_sleeper_and_not_a_departed_one() {
        let trigger = Trigger::new().expect("trigger");
        let departed = trigger.wake_on_fire(1);
        drop(departed);
        assert!(lock(&trigger.sleepers).is_empty());
        std::thread::scope(|s| {
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            let trigger = &trigger;
            let sleeper = s.spawn(move || {
                let sleeper = crate::sys::wake::Sleeper::for_this_thread();
                let _registered = trigger.wake_on_fire(sleeper.tid());
                ready_tx.send(()).expect("ready");
                // Checked after registering, as a worker does; only the
                // wake-up can end the wait before its minute is up.
                let started = std::time::Instant::now();
                if !trigger.has_fired() {
                    let minute = std::time::Duration::from_secs(60);
                    sleeper.poll(&mut [], Some(minute)).expect("ppoll");
                }
                (trigger.has_fired(), started.elapsed())
            });
            ready_rx.recv().expect("ready");
            trigger.fire();
            let (fired, slept) = sleeper.join().expect("join");
            assert!(fired);
            assert!(
                slept.as_secs() < 30,
                "woken by the trigger, not the timeout"
            );
        });
    }
}
