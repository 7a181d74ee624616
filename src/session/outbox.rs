//! Bytes on their way to one fd, written without ever blocking.
//!
//! The worker appends whole lines and calls `flush` whenever it likes:
//! what the fd takes now is written, the rest waits for the next
//! `POLLOUT`. While an outbox holds more than `HIGH_WATER` bytes the worker
//! stops reading the side that fills it — the backpressure that bounds a
//! session's memory whatever its peers do.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use crate::sys::socket;

/// Above this many pending bytes the source of an outbox is not read.
pub const HIGH_WATER: usize = 32 * 1024;

/// An empty buffer with this much capacity or more is given back.
const SHRINK_ABOVE_BYTES: usize = 64 * 1024;

/// How bytes reach an fd without blocking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteKind {
    /// A socket: `send(MSG_DONTWAIT | MSG_NOSIGNAL)`, whatever the fd's mode.
    Socket,
    /// A non-blocking pipe of ours: `write(2)`. A reader that is gone is
    /// EPIPE, not a signal: Rust programs ignore SIGPIPE.
    Pipe,
    /// An fd that must stay in blocking mode (our own stdout belongs to the
    /// parent too): write only what `poll` says fits, at most `PIPE_BUF`.
    Shared,
}

impl WriteKind {
    /// The right kind for an fd we may not switch to non-blocking.
    pub fn for_shared_fd(fd: BorrowedFd<'_>) -> WriteKind {
        if socket::is_socket(fd) {
            WriteKind::Socket
        } else {
            WriteKind::Shared
        }
    }
}

/// Pending bytes for one fd.
#[derive(Debug, Default)]
pub struct Outbox {
    buf: Vec<u8>,
    /// Bytes of `buf` already written.
    sent: usize,
}

impl Outbox {
    /// Queues `line` and its newline.
    pub fn push_line(&mut self, line: &[u8]) {
        if self.sent > 0 && self.sent >= self.buf.len() / 2 {
            self.buf.drain(..self.sent);
            self.sent = 0;
        }
        self.buf.reserve(line.len() + 1);
        self.buf.extend_from_slice(line);
        self.buf.push(b'\n');
    }

    pub fn pending(&self) -> usize {
        self.buf.len() - self.sent
    }

    pub fn is_empty(&self) -> bool {
        self.pending() == 0
    }

    pub fn is_full(&self) -> bool {
        self.pending() >= HIGH_WATER
    }

    /// Drops everything pending (its reader is gone).
    pub fn clear(&mut self) {
        self.buf = Vec::new();
        self.sent = 0;
    }

    /// Writes what `fd` takes now. `Ok(true)` when nothing is left.
    pub fn flush(&mut self, fd: BorrowedFd<'_>, kind: WriteKind) -> io::Result<bool> {
        while !self.is_empty() {
            let n = write_now(fd, kind, &self.buf[self.sent..])?;
            if n == 0 {
                return Ok(false);
            }
            self.sent += n;
        }
        self.buf.clear();
        self.sent = 0;
        if self.buf.capacity() >= SHRINK_ABOVE_BYTES {
            self.buf = Vec::new();
        }
        Ok(true)
    }
}

/// One write that cannot block; 0 when the fd has no room now.
fn write_now(fd: BorrowedFd<'_>, kind: WriteKind, bytes: &[u8]) -> io::Result<usize> {
    let raw = fd.as_raw_fd();
    match kind {
        WriteKind::Socket => socket::send_now(fd, bytes),
        WriteKind::Pipe => {
            retry(|| unsafe { libc::write(raw, bytes.as_ptr().cast(), bytes.len()) })
        }
        WriteKind::Shared => {
            let mut pfd = libc::pollfd {
                fd: raw,
                events: libc::POLLOUT,
                revents: 0,
            };
            if unsafe { libc::poll(&mut pfd, 1, 0) } <= 0 {
                return Ok(0);
            }
            if pfd.revents & (libc::POLLERR | libc::POLLHUP) != 0
                && pfd.revents & libc::POLLOUT == 0
            {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            // Past POLLOUT, up to PIPE_BUF bytes never block a pipe.
            let len = bytes.len().min(libc::PIPE_BUF);
            retry(|| unsafe { libc::write(raw, bytes.as_ptr().cast(), len) })
        }
    }
}

fn retry(mut write: impl FnMut() -> isize) -> io::Result<usize> {
    loop {
        let n = write();
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn writes_what_fits_and_keeps_the_rest_in_order() {
        let (ours, mut theirs) = UnixStream::pair().expect("socketpair");
        let mut outbox = Outbox::default();
        let big = vec![b'x'; 1 << 20];
        outbox.push_line(&big);
        outbox.push_line(b"{}");
        assert!(outbox.is_full());
        assert!(
            !outbox
                .flush(ours.as_fd(), WriteKind::Socket)
                .expect("flush")
        );
        let mut got = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        for _ in 0..10_000 {
            if outbox
                .flush(ours.as_fd(), WriteKind::Socket)
                .expect("flush")
            {
                break;
            }
            let n = theirs.read(&mut buf).expect("read");
            got.extend_from_slice(&buf[..n]);
        }
        drop(ours);
        theirs.read_to_end(&mut got).expect("read the rest");
        assert_eq!(got.len(), big.len() + 4);
        assert!(got.ends_with(b"x\n{}\n"));
        assert!(outbox.is_empty());
        assert_eq!(outbox.buf.capacity(), 0, "a big buffer is given back");
    }

    #[test]
    fn a_closed_reader_is_an_error() {
        let (ours, theirs) = UnixStream::pair().expect("socketpair");
        drop(theirs);
        let mut outbox = Outbox::default();
        outbox.push_line(b"{}");
        assert!(outbox.flush(ours.as_fd(), WriteKind::Socket).is_err());
    }
}
