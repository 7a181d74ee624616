//! A one-shot wake-up that any number of threads can wait for in
//! `poll(2)`: the fd half of a shutdown trigger.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::Duration;

use crate::sys::eventfd::EventFd;
use crate::sys::poll::poll;

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

    pub fn is_ringing(&self) -> bool {
        let mut fds = [libc::pollfd {
            fd: self.fd.as_fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        matches!(poll(&mut fds, Some(Duration::ZERO)), Ok(1))
    }

    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ringing_is_idempotent_and_level_triggered() {
        let alarm = Alarm::new().expect("eventfd");
        assert!(!alarm.is_ringing());
        alarm.ring();
        alarm.ring();
        assert!(alarm.is_ringing());
        assert!(alarm.is_ringing(), "still ringing: nobody reads it");
    }
}
