//! The child-stderr log: one thread (`child-stderr`) and one `mio::Poll`
//! that log every child's stderr, line by line, tagged with its session.
//!
//! A drain thread per session would cost a stack per session for output
//! that is idle nearly always. The thread owns every pipe it watches, so a
//! session that ends can never leave a registration behind that matches a
//! recycled fd number. Requests arrive on a channel and a `Waker`; dropping
//! the [`StderrLog`] stops and joins the thread.

use std::collections::HashMap;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd};
use std::process::ChildStderr;
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
use log::{error, info};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::session::table::SessionId;
use crate::sys::interrupt::set_nonblocking;

const WAKER: Token = Token(0);

/// Longest stderr line logged whole; the rest of a longer one is cut.
const STDERR_LINE_BYTES: usize = 8 * 1024;

/// A handle to the `child-stderr` thread. Dropping it stops and joins the thread.
pub struct StderrLog {
    requests: Sender<Request>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
}

enum Request {
    /// Log every line of this child's stderr until EOF or `Release`.
    Watch {
        session: SessionId,
        pipe: ChildStderr,
    },
    /// Log what is left of the session's stderr, then close it.
    Release { session: SessionId },
}

impl StderrLog {
    /// Starts the `child-stderr` thread.
    pub fn start() -> io::Result<StderrLog> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (requests, inbox) = crossbeam_channel::unbounded();
        let thread = std::thread::Builder::new()
            .name("child-stderr".into())
            .spawn(move || {
                if let Err(e) = LogLoop::new(poll, inbox).run() {
                    error!("the child-stderr thread stopped: {e}");
                }
            })?;
        Ok(StderrLog {
            requests,
            waker,
            thread: Some(thread),
        })
    }

    fn send(&self, request: Request) {
        // Both fail only once the thread is gone, i.e. during teardown.
        if self.requests.send(request).is_ok() {
            let _ = self.waker.wake();
        }
    }

    /// Logs `pipe` line by line, tagged with `session`, until EOF or
    /// [`StderrLog::release`].
    pub fn watch(&self, session: SessionId, pipe: ChildStderr) {
        self.send(Request::Watch { session, pipe });
    }

    /// Logs what is left in the session's stderr and closes it: the child
    /// is gone, but an escaped grandchild could hold the pipe open.
    pub fn release(&self, session: SessionId) {
        self.send(Request::Release { session });
    }
}

impl Drop for StderrLog {
    fn drop(&mut self) {
        // Replacing the sender disconnects the thread's inbox.
        let (dead, _) = crossbeam_channel::bounded(0);
        drop(std::mem::replace(&mut self.requests, dead));
        let _ = self.waker.wake();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                error!("thread child-stderr panicked");
            }
        }
    }
}

struct StderrPipe {
    session: SessionId,
    pipe: ChildStderr,
    line: Vec<u8>,
    /// Bytes of the current line beyond what `line` keeps.
    dropped: usize,
}

struct LogLoop {
    poll: Poll,
    inbox: Receiver<Request>,
    stderr: HashMap<Token, StderrPipe>,
    by_session: HashMap<SessionId, Token>,
    next: usize,
}

impl LogLoop {
    fn new(poll: Poll, inbox: Receiver<Request>) -> LogLoop {
        LogLoop {
            poll,
            inbox,
            stderr: HashMap::new(),
            by_session: HashMap::new(),
            next: 0,
        }
    }

    fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(256);
        loop {
            if let Err(e) = self.poll.poll(&mut events, None) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for event in events.iter() {
                if event.token() != WAKER {
                    self.read_stderr(event.token(), false);
                }
            }
            loop {
                match self.inbox.try_recv() {
                    Ok(request) => self.handle(request),
                    Err(e) if e.is_disconnected() => return Ok(()),
                    Err(_) => break,
                }
            }
        }
    }

    fn handle(&mut self, request: Request) {
        match request {
            Request::Watch { session, pipe } => {
                self.next += 1;
                let token = Token(self.next);
                let fd = pipe.as_raw_fd();
                let registered = set_nonblocking(pipe.as_fd()).and_then(|()| {
                    self.poll
                        .registry()
                        .register(&mut SourceFd(&fd), token, Interest::READABLE)
                });
                match registered {
                    Ok(()) => {
                        self.by_session.insert(session, token);
                        self.stderr.insert(
                            token,
                            StderrPipe {
                                session,
                                pipe,
                                line: Vec::new(),
                                dropped: 0,
                            },
                        );
                    }
                    Err(e) => error!("[{session}] cannot watch the child's stderr: {e}"),
                }
            }
            Request::Release { session } => {
                if let Some(token) = self.by_session.get(&session).copied() {
                    self.read_stderr(token, true);
                }
            }
        }
    }

    /// Reads what the pipe has, logging complete lines. At EOF, or when
    /// `closing`, logs the partial line too and drops the pipe.
    fn read_stderr(&mut self, token: Token, closing: bool) {
        let Some(pipe) = self.stderr.get_mut(&token) else {
            return;
        };
        let mut buf = [0u8; 4096];
        let ended = loop {
            match pipe.pipe.read(&mut buf) {
                Ok(0) => break true,
                Ok(n) => pipe.take(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
                Err(_) => break true,
            }
        };
        if ended || closing {
            pipe.flush_partial();
            let fd = pipe.pipe.as_raw_fd();
            let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
            if let Some(pipe) = self.stderr.remove(&token) {
                self.by_session.remove(&pipe.session);
            }
        }
    }
}

impl StderrPipe {
    fn take(&mut self, mut bytes: &[u8]) {
        while let Some(at) = memchr::memchr(b'\n', bytes) {
            self.keep(&bytes[..at]);
            self.emit();
            bytes = &bytes[at + 1..];
        }
        self.keep(bytes);
    }

    fn keep(&mut self, bytes: &[u8]) {
        let room = STDERR_LINE_BYTES.saturating_sub(self.line.len());
        self.line.extend_from_slice(&bytes[..room.min(bytes.len())]);
        self.dropped += bytes.len().saturating_sub(room);
    }

    fn emit(&mut self) {
        if self.line.last() == Some(&b'\r') {
            self.line.pop();
        }
        let text = String::from_utf8_lossy(&self.line);
        if self.dropped > 0 {
            info!(target: "forkline::child", "[{}] child stderr: {text}… ({} more bytes)", self.session, self.dropped);
        } else if !text.is_empty() {
            info!(target: "forkline::child", "[{}] child stderr: {text}", self.session);
        }
        self.line.clear();
        self.dropped = 0;
    }

    fn flush_partial(&mut self) {
        if !self.line.is_empty() || self.dropped > 0 {
            self.emit();
        }
    }
}
