//! Where the relay puts a message for one side: straight into its file
//! descriptor without blocking, or onto a channel for another thread.
//!
//! Writing directly from the relay spares a writer thread per direction
//! (a stack per session, and a thread hand-off per message). A write that
//! would block is never waited on here: its unwritten rest is kept, the
//! [`Hub`] is asked to say when the fd drains, and until then the outbox
//! reports itself blocked so the relay stops reading the other side. So at
//! most one message per direction is held, whatever the peer does.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::hub::{Hub, Until, Watch};
use crate::message::Message;

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
    /// Picks the right kind for an fd we may not switch to non-blocking.
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

/// Writes whole lines to an fd without ever blocking.
pub struct FdWriter<'a> {
    fd: BorrowedFd<'a>,
    kind: FdKind,
    hub: &'a Hub,
    /// Bytes accepted but not yet written: non-empty means blocked.
    backlog: Vec<u8>,
    ready_tx: Sender<()>,
    ready_rx: Receiver<()>,
    watch: Option<Watch<'a>>,
}

impl<'a> FdWriter<'a> {
    /// `fd` must already be non-blocking for [`FdKind::NonBlocking`].
    pub fn new(fd: BorrowedFd<'a>, kind: FdKind, hub: &'a Hub) -> FdWriter<'a> {
        let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
        FdWriter {
            fd,
            kind,
            hub,
            backlog: Vec::new(),
            ready_tx,
            ready_rx,
            watch: None,
        }
    }

    /// Writes `message` and its newline, keeping what does not fit now.
    /// Must not be called while [`is_blocked`](Self::is_blocked).
    pub fn write(&mut self, message: &Message) -> io::Result<()> {
        debug_assert!(self.backlog.is_empty(), "write while blocked");
        let total = message.line.len() + 1;
        let written = self.write_now(&[&message.line, b"\n"])?;
        if written < total {
            let (line_rest, newline) = match written.checked_sub(message.line.len()) {
                None => (&message.line[written..], &b"\n"[..]),
                Some(_) => (&[][..], &b""[..]),
            };
            self.backlog.extend_from_slice(line_rest);
            self.backlog.extend_from_slice(newline);
            self.watch()?;
        }
        Ok(())
    }

    pub fn is_blocked(&self) -> bool {
        !self.backlog.is_empty()
    }

    /// Asks the hub to say `()` on `tell` if this connection is reset or
    /// closed both ways. For noticing a vanished client while it is not
    /// being read; the watch ends when dropped.
    pub fn watch_hangup(&self, tell: Sender<()>) -> io::Result<Watch<'a>> {
        self.hub.watch(self.fd, Until::HungUp, tell)
    }

    /// Signals (one `()`) once a blocked writer may make progress.
    pub fn ready(&self) -> &Receiver<()> {
        &self.ready_rx
    }

    /// Writes more of the backlog after [`ready`](Self::ready) fired.
    pub fn resume(&mut self) -> io::Result<()> {
        self.watch = None;
        while !self.backlog.is_empty() {
            let n = match self.write_now(&[&self.backlog, &[]]) {
                Ok(n) => n,
                Err(e) => {
                    // The side is gone: nothing left to wait for.
                    self.backlog.clear();
                    return Err(e);
                }
            };
            if n == 0 {
                return self.watch();
            }
            self.backlog.drain(..n);
        }
        Ok(())
    }

    fn watch(&mut self) -> io::Result<()> {
        // A stale wake-up from an earlier watch must not count for this one.
        while self.ready_rx.try_recv().is_ok() {}
        self.watch = Some(
            self.hub
                .watch(self.fd, Until::Writable, self.ready_tx.clone())?,
        );
        Ok(())
    }

    /// One non-blocking write; 0 when the fd cannot take anything now.
    fn write_now(&self, parts: &[&[u8]; 2]) -> io::Result<usize> {
        let fd = self.fd.as_raw_fd();
        loop {
            let n = match self.kind {
                FdKind::Socket => {
                    let mut iov = iovecs(parts);
                    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
                    msg.msg_iov = iov.as_mut_ptr();
                    msg.msg_iovlen = iov.len() as _;
                    unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) }
                }
                FdKind::NonBlocking => {
                    let iov = iovecs(parts);
                    unsafe { libc::writev(fd, iov.as_ptr(), iov.len() as i32) }
                }
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
                    let mut iov = iovecs(parts);
                    cap_iovecs(&mut iov, libc::PIPE_BUF);
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

/// A line and its newline, or a backlog: never more than two parts, so
/// the iovecs live on the stack (this is the per-message hot path).
fn iovecs(parts: &[&[u8]; 2]) -> [libc::iovec; 2] {
    parts.map(|p| libc::iovec {
        iov_base: p.as_ptr() as *mut _,
        iov_len: p.len(),
    })
}

fn cap_iovecs(iov: &mut [libc::iovec], mut budget: usize) {
    for v in iov {
        v.iov_len = v.iov_len.min(budget);
        budget -= v.iov_len;
    }
}

/// One side's way in: an fd, or a channel to whoever consumes it (a test,
/// an HTTP front-end). The relay treats both alike.
pub enum Outbox<'a> {
    Fd(FdWriter<'a>),
    Channel(Sender<Message>),
}

/// What became of a message handed to an [`Outbox`].
#[derive(Debug)]
pub enum Put {
    /// Taken (for an fd, perhaps partly written; see `is_blocked`).
    Taken,
    /// A full channel handed it back: hold it and wait for room.
    Full(Message),
}

impl Outbox<'_> {
    pub fn channel(to: Sender<Message>) -> Self {
        Outbox::Channel(to)
    }

    /// Hands `message` on without blocking. An error means the side is
    /// gone.
    pub fn put(&mut self, message: Message) -> io::Result<Put> {
        match self {
            Outbox::Fd(writer) => writer.write(&message).map(|()| Put::Taken),
            Outbox::Channel(to) => match to.try_send(message) {
                Ok(()) => Ok(Put::Taken),
                Err(TrySendError::Full(message)) => Ok(Put::Full(message)),
                Err(TrySendError::Disconnected(_)) => Err(io::ErrorKind::BrokenPipe.into()),
            },
        }
    }

    /// True while an fd writer holds unwritten bytes.
    pub fn is_blocked(&self) -> bool {
        matches!(self, Outbox::Fd(writer) if writer.is_blocked())
    }
}
