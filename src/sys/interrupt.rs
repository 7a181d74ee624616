//! Blocking file-descriptor I/O that can be woken.
//!
//! A thread blocked in `read(2)` on a pipe cannot be reached by a channel;
//! closing the fd under it races with fd reuse. So every blocking wait on a
//! pipe (a child's stdout and stderr, its stdin, forkline's own stdin and
//! stdout) first `poll(2)`s the fd together with an [`Alarm`]: ringing the
//! alarm makes every such wait return at once, forever after. Sockets do
//! not need this: `shutdown(2)` wakes their readers and writers.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

pub use crate::sys::alarm::Alarm;
pub use crate::sys::poll::{set_nonblocking, wait_any};

/// The largest write that cannot block on a pipe once it polls writable.
const PIPE_BUF: usize = libc::PIPE_BUF;

/// A pipe end whose blocking reads and writes give up when `alarm` rings:
/// reads then report end of file, writes `BrokenPipe`.
pub struct Interruptible<'a, F: AsFd> {
    fd: F,
    alarm: &'a Alarm,
    /// Once readable (and `fd` has nothing more), reads report end of
    /// file: a child's pidfd, so a grandchild that inherited the pipe
    /// cannot keep a session alive after the child itself exited.
    end: Option<BorrowedFd<'a>>,
}

impl<'a, F: AsFd> Interruptible<'a, F> {
    pub fn new(fd: F, alarm: &'a Alarm) -> Self {
        Interruptible {
            fd,
            alarm,
            end: None,
        }
    }

    /// Like `new`, but reads also end once `end` is readable and `fd` has
    /// no data waiting.
    pub fn ending_with(fd: F, alarm: &'a Alarm, end: Option<BorrowedFd<'a>>) -> Self {
        Interruptible { fd, alarm, end }
    }

    /// Waits for `events` on the fd; `false` when the alarm rang (or the
    /// end fd became readable) first. The fd is listed before the end fd,
    /// so data already written is read before the end is reported.
    fn ready(&self, events: libc::c_short) -> io::Result<bool> {
        let alarm = (self.alarm.as_fd(), libc::POLLIN);
        let fd = (self.fd.as_fd(), events);
        let ready = match &self.end {
            Some(end) => wait_any(&[alarm, fd, (*end, libc::POLLIN)], None)?,
            None => wait_any(&[alarm, fd], None)?,
        };
        Ok(ready == Some(1))
    }
}

impl<F: AsFd> Read for Interruptible<'_, F> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if !self.ready(libc::POLLIN)? {
                return Ok(0);
            }
            match sys_result(unsafe {
                libc::read(raw(&self.fd), buf.as_mut_ptr().cast(), buf.len())
            }) {
                Err(e) if is_retry(&e) => continue,
                other => return other,
            }
        }
    }
}

impl<F: AsFd> Write for Interruptible<'_, F> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Chunks of PIPE_BUF never block after POLLOUT, even on an fd we
        // must leave in blocking mode (our own stdout belongs to a parent).
        let chunk = &buf[..buf.len().min(PIPE_BUF)];
        loop {
            if !self.ready(libc::POLLOUT)? {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            match sys_result(unsafe {
                libc::write(raw(&self.fd), chunk.as_ptr().cast(), chunk.len())
            }) {
                Err(e) if is_retry(&e) => continue,
                other => return other,
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn raw(fd: &impl AsFd) -> RawFd {
    fd.as_fd().as_raw_fd()
}

fn sys_result(n: isize) -> io::Result<usize> {
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn is_retry(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    #[test]
    fn a_ringing_alarm_ends_a_blocked_read() {
        let alarm = Alarm::new().expect("eventfd");
        let (ours, _theirs) = UnixStream::pair().expect("socketpair");
        std::thread::scope(|s| {
            let reader = s.spawn(|| {
                let mut buf = [0u8; 8];
                Interruptible::new(&ours, &alarm).read(&mut buf)
            });
            alarm.ring();
            assert_eq!(reader.join().expect("reader thread").expect("read"), 0);
        });
        assert!(alarm.is_ringing());
    }

    #[test]
    fn data_flows_until_the_alarm() {
        let alarm = Alarm::new().expect("eventfd");
        assert!(!alarm.is_ringing());
        let (a, b) = UnixStream::pair().expect("socketpair");
        Interruptible::new(&a, &alarm)
            .write_all(b"hello")
            .expect("write");
        let mut buf = [0u8; 5];
        Interruptible::new(&b, &alarm)
            .read_exact(&mut buf)
            .expect("read");
        assert_eq!(&buf, b"hello");
        alarm.ring();
        let err = Interruptible::new(&a, &alarm)
            .write(b"x")
            .expect_err("alarm rang");
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }

    #[test]
    fn wait_any_times_out() {
        let alarm = Alarm::new().expect("eventfd");
        assert_eq!(
            wait_any(
                &[(alarm.as_fd(), libc::POLLIN)],
                Some(Duration::from_millis(5))
            )
            .expect("poll"),
            None
        );
    }
}
