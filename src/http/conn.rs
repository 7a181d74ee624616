//! One HTTP connection: its socket, what has been read and not parsed,
//! what is waiting to be written, and what it is doing now.
//!
//! Non-blocking throughout; the front end calls `fill` on readable events
//! and `flush` whenever it has added output or the socket is writable.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::Instant;

use mio::net::TcpStream;

use crate::http::request::MAX_HEAD_BYTES;

/// What the connection is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for a request (or its rest). `since` is when its first
    /// byte came (`None`: idle between requests).
    Reading {
        since: Option<Instant>,
        head_done: bool,
    },
    /// A request is being answered by a session: an SSE stream, or a JSON
    /// answer still to come. Further requests wait in `input`.
    Answering { session: usize, sse: bool },
    /// The answer is written; the connection closes once it is flushed.
    Closing,
    /// Flushed and shut down for writing; what the client still sends is
    /// read and dropped until it closes (or a short while passes), so the
    /// kernel does not answer unread input with a reset that could destroy
    /// the answer before the client has read it.
    Draining,
}

pub struct Conn {
    pub socket: TcpStream,
    pub peer: SocketAddr,
    pub input: Vec<u8>,
    output: Vec<u8>,
    written: usize,
    pub phase: Phase,
    /// Close after the exchange in progress (the client asked, or we
    /// are shutting down).
    pub close_after: bool,
    /// The allowed Origin of the request being answered, for CORS headers.
    pub origin: Option<String>,
    /// The peer closed its side.
    pub eof: bool,
    /// Epoll reported the peer's close (its FIN may sit behind data).
    pub peer_closing: bool,
    /// `fill` stopped at its bound with the socket maybe holding more.
    pub input_capped: bool,
    /// An SSE head is queued but not yet written: it goes out with the
    /// first event (one write, one wake-up of the client), or on its own
    /// after a moment if no event comes.
    pub head_held: bool,
    /// When its timer fires: its one entry in the front end's timer set.
    pub deadline: Option<Instant>,
}

/// How much input one connection may hold unparsed: a head, a body at
/// the message limit and some slack for a pipelined request behind it.
pub fn input_limit(max_body: usize) -> usize {
    MAX_HEAD_BYTES + max_body + 64 * 1024
}

impl Conn {
    pub fn new(socket: TcpStream, peer: SocketAddr) -> Conn {
        Conn {
            socket,
            peer,
            input: Vec::new(),
            output: Vec::new(),
            written: 0,
            phase: Phase::Reading {
                since: None,
                head_done: false,
            },
            close_after: false,
            origin: None,
            eof: false,
            peer_closing: false,
            input_capped: false,
            head_held: false,
            deadline: None,
        }
    }

    /// Reads what the socket has, up to `limit` bytes buffered. `Err` when
    /// the connection failed.
    pub fn fill(&mut self, limit: usize) -> io::Result<()> {
        let mut chunk = [0u8; 16 * 1024];
        self.input_capped = false;
        while self.input.len() < limit {
            match self.socket.read(&mut chunk) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(());
                }
                Ok(n) => {
                    self.input.extend_from_slice(&chunk[..n]);
                    if n < chunk.len() && !self.peer_closing {
                        // A short read of a TCP socket emptied its receive
                        // queue: more data raises a new edge, so the read
                        // that would only say EAGAIN is saved (a syscall
                        // per request). Not once the peer has closed: its
                        // end of file raises no edge of its own.
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.input_capped = true;
        Ok(())
    }

    pub fn queue(&mut self, bytes: &[u8]) {
        self.output.extend_from_slice(bytes);
    }

    /// Writes what it can. `Ok(true)` once nothing is left.
    pub fn flush(&mut self) -> io::Result<bool> {
        while self.written < self.output.len() {
            match self.socket.write(&self.output[self.written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.head_held = false;
        // Idle connections hold no buffers (a thousand open GET streams
        // should cost sockets, not memory).
        self.output = Vec::new();
        self.written = 0;
        Ok(true)
    }

    /// Bytes queued and not yet taken by the socket.
    pub fn unsent(&self) -> usize {
        self.output.len() - self.written
    }

    /// Drops the first `n` bytes of input (a parsed request).
    pub fn consume(&mut self, n: usize) {
        self.input.drain(..n);
        if self.input.is_empty() {
            self.input = Vec::new();
        }
    }
}
