//! Writing whole lines to a file descriptor from a pump thread: without a
//! syscall to spare when the fd has room, and waiting in `poll(2)` — never
//! in a `write(2)` nobody can interrupt — when it has not.
//!
//! Waiting is the backpressure: a pump that cannot write stops reading its
//! source. The wait ends early when the session's alarm rings, when a
//! watched peer hangs up, or when the child exits, so a blocked pump never
//! outlives its session.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use crate::sys::interrupt::{Alarm, wait_any};

/// How bytes reach an fd without blocking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdKind {
    /// A socket: `sendmsg(MSG_DONTWAIT)`, whatever the fd's own mode.
    Socket,
    /// A pipe we own, switched to non-blocking mode.
    NonBlocking,
    /// An fd that must stay in blocking mode (our own stdout belongs to the
    /// parent too): write only what `poll` says fits, at most `PIPE_BUF`.
    Shared,
}

impl FdKind {
    /// The right kind for an fd we may not switch to non-blocking.
    pub fn for_shared_fd(fd: BorrowedFd<'_>) -> FdKind {
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        let is_socket = unsafe { libc::fstat(fd.as_raw_fd(), &mut stat) } == 0
            && stat.st_mode & libc::S_IFMT == libc::S_IFSOCK;
        if is_socket {
            FdKind::Socket
        } else {
            FdKind::Shared
        }
    }
}

/// Why a line was not written (whole).
#[derive(Debug)]
pub enum WriteError {
    /// The fd is broken: its reader is gone.
    Io(io::Error),
    /// The session's alarm rang while waiting for room.
    Ending,
    /// The watched fd said to give up while waiting for room.
    GaveUp,
}

/// Writes lines to one fd. Cheap to copy; holds no buffer.
#[derive(Clone, Copy)]
pub struct LineWriter<'a> {
    fd: BorrowedFd<'a>,
    kind: FdKind,
    /// Rings when the session ends: give up.
    alarm: &'a Alarm,
    /// Readable (a pidfd: the child exited) or hung up (the other peer's
    /// socket): give up, the bytes have nowhere useful to go.
    give_up_on: Option<BorrowedFd<'a>>,
}

impl<'a> LineWriter<'a> {
    pub fn new(fd: BorrowedFd<'a>, kind: FdKind, alarm: &'a Alarm) -> LineWriter<'a> {
        LineWriter {
            fd,
            kind,
            alarm,
            give_up_on: None,
        }
    }

    /// Also gives up once `fd` is readable or hung up.
    pub fn giving_up_on(mut self, fd: Option<BorrowedFd<'a>>) -> Self {
        self.give_up_on = fd;
        self
    }

    /// Writes `line` and a newline. Blocks (in `poll`) while the fd is
    /// full; `Err` when the fd is broken or the wait was given up.
    pub fn write_line(&self, line: &[u8]) -> Result<(), WriteError> {
        let mut parts: [&[u8]; 2] = [line, b"\n"];
        loop {
            let mut n = self.write_now(&parts).map_err(WriteError::Io)?;
            for part in parts.iter_mut() {
                let step = n.min(part.len());
                *part = &part[step..];
                n -= step;
            }
            if parts[1].is_empty() {
                return Ok(());
            }
            self.wait_writable()?;
        }
    }

    fn wait_writable(&self) -> Result<(), WriteError> {
        let alarm = (self.alarm.as_fd(), libc::POLLIN);
        let fd = (self.fd, libc::POLLOUT);
        let ready = match self.give_up_on {
            // Events of a pidfd are POLLIN; a socket's hang-up is reported
            // whatever is asked, so POLLIN would only add false alarms on
            // a socket: ask for it on pidfds alone.
            Some(other) => wait_any(&[alarm, fd, (other, self.give_up_events(other))], None),
            None => wait_any(&[alarm, fd], None),
        };
        match ready.map_err(WriteError::Io)? {
            Some(1) => Ok(()),
            Some(2) => Err(WriteError::GaveUp),
            _ => Err(WriteError::Ending),
        }
    }

    fn give_up_events(&self, other: BorrowedFd<'_>) -> libc::c_short {
        if FdKind::for_shared_fd(other) == FdKind::Socket {
            0
        } else {
            libc::POLLIN
        }
    }

    /// One non-blocking write; 0 when the fd cannot take anything now.
    fn write_now(&self, parts: &[&[u8]; 2]) -> io::Result<usize> {
        let fd = self.fd.as_raw_fd();
        let mut iov = parts.map(|p| libc::iovec {
            iov_base: p.as_ptr() as *mut _,
            iov_len: p.len(),
        });
        loop {
            let n = match self.kind {
                FdKind::Socket => {
                    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
                    msg.msg_iov = iov.as_mut_ptr();
                    msg.msg_iovlen = iov.len() as _;
                    unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) }
                }
                FdKind::NonBlocking => unsafe { libc::writev(fd, iov.as_ptr(), iov.len() as i32) },
                FdKind::Shared => {
                    let mut pfd = libc::pollfd {
                        fd,
                        events: libc::POLLOUT,
                        revents: 0,
                    };
                    if unsafe { libc::poll(&mut pfd, 1, 0) } == 0 {
                        return Ok(0);
                    }
                    // Past POLLOUT, up to PIPE_BUF bytes never block a pipe.
                    let mut budget = libc::PIPE_BUF;
                    for v in iov.iter_mut() {
                        v.iov_len = v.iov_len.min(budget);
                        budget -= v.iov_len;
                    }
                    unsafe { libc::writev(fd, iov.as_ptr(), iov.len() as i32) }
                }
            };
            if n >= 0 {
                return Ok(n as usize);
            }
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Ok(0),
                _ => return Err(err),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn writes_whole_lines_and_waits_for_room() {
        let alarm = Alarm::new().expect("alarm");
        let (ours, mut theirs) = UnixStream::pair().expect("socketpair");
        let big = vec![b'x'; 1 << 20];
        std::thread::scope(|s| {
            let reader = s.spawn(move || {
                let mut got = Vec::new();
                theirs.read_to_end(&mut got).expect("read");
                got
            });
            let writer = LineWriter::new(ours.as_fd(), FdKind::Socket, &alarm);
            writer
                .write_line(&big)
                .expect("big line, written in pieces");
            writer.write_line(b"{}").expect("small line");
            ours.shutdown(std::net::Shutdown::Write).expect("shutdown");
            let got = reader.join().expect("reader");
            assert_eq!(got.len(), big.len() + 4);
            assert!(got.ends_with(b"x\n{}\n"));
        });
    }

    #[test]
    fn a_full_fd_gives_up_when_the_alarm_rings() {
        let alarm = Alarm::new().expect("alarm");
        let (ours, _theirs) = UnixStream::pair().expect("socketpair");
        let big = vec![b'x'; 8 << 20];
        std::thread::scope(|s| {
            let writer =
                s.spawn(|| LineWriter::new(ours.as_fd(), FdKind::Socket, &alarm).write_line(&big));
            alarm.ring();
            let err = writer
                .join()
                .expect("writer thread")
                .expect_err("nobody reads");
            assert!(matches!(err, WriteError::Ending), "{err:?}");
        });
    }
}
