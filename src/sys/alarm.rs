//! A one-shot wake-up that any number of threads can wait for in
//! `poll(2)`: the fd half of a shutdown trigger.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use crate::sys::eventfd::EventFd;

/// A one-shot, level-triggered wake-up, observable through `poll(2)` by any
/// number of threads. Backed by an eventfd: ringing it makes it readable
/// for good, since nobody ever reads it.
#[derive(Debug)]
pub struct Alarm {
    fd: EventFd,
}

impl Alarm {
    pub fn new() -> io::Result<Alarm> {
        Ok(Alarm {
            fd: EventFd::new()?,
        })
    }

    /// Wakes every current and future wait on this alarm. Idempotent.
    pub fn ring(&self) {
        self.fd.signal();
    }

    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::poll::poll;
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    fn is_ringing(alarm: &Alarm) -> bool {
        let mut fds = [libc::pollfd {
            fd: alarm.as_fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        matches!(poll(&mut fds, Some(Duration::ZERO)), Ok(1))
    }

    #[test]
    fn ringing_is_idempotent_and_level_triggered() {
        let alarm = Alarm::new().expect("eventfd");
        assert!(!is_ringing(&alarm));
        alarm.ring();
        alarm.ring();
        assert!(is_ringing(&alarm));
        assert!(is_ringing(&alarm), "still ringing: nobody reads it");
    }
}
