//! One-shot broadcasts for shutdown: seen by `select!` and by `poll(2)`.
//!
//! Relays wait on crossbeam channels, child stops wait in `poll(2)`; a
//! `Trigger` reaches both at once. Firing drops the only `Sender`, which
//! wakes every `select!` on the receiver (crossbeam's broadcast idiom), and
//! rings an [`Alarm`] for the fd waiters.

use std::sync::Mutex;

use crossbeam_channel::{Receiver, Sender};

use crate::sys::alarm::Alarm;

/// A channel that never carries a value: only its disconnection matters.
pub enum Never {}

#[derive(Debug)]
pub struct Trigger {
    sender: Mutex<Option<Sender<Never>>>,
    receiver: Receiver<Never>,
    alarm: Alarm,
}

impl Trigger {
    pub fn new() -> std::io::Result<Trigger> {
        let (sender, receiver) = crossbeam_channel::bounded(0);
        Ok(Trigger {
            sender: Mutex::new(Some(sender)),
            receiver,
            alarm: Alarm::new()?,
        })
    }

    /// Fires; every waiter wakes, now and later. Idempotent.
    pub fn fire(&self) {
        self.alarm.ring();
        // A poisoned lock still holds the sender; take it all the same.
        let mut sender = self.sender.lock().unwrap_or_else(|e| e.into_inner());
        sender.take();
    }

    pub fn has_fired(&self) -> bool {
        self.alarm.is_ringing()
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
}
