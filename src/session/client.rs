//! The client end of a session, as the worker sees it: a byte stream (a
//! TCP or Unix socket, or forkline's own stdin and stdout) or framed
//! messages through channels (an HTTP session, whose front end parses
//! requests on its own threads). Both are driven by the same worker, rules
//! and child lifecycle; only how bytes arrive and leave differs.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};

use crate::session::outbox::{HIGH_WATER, Outbox, WriteKind};
use crate::sys::eventfd::EventFd;

/// Where a session's client is.
pub enum ClientSide<'a> {
    Stream(StreamClient<'a>),
    Channels(ChannelClient),
}

/// A byte-stream client. For a socket, `read` and `write` are the same fd.
pub struct StreamClient<'a> {
    pub read: BorrowedFd<'a>,
    pub write: BorrowedFd<'a>,
    pub write_kind: WriteKind,
}

impl StreamClient<'_> {
    /// One fd for both ways (a socket), so one `poll` entry.
    pub fn is_one_socket(&self) -> bool {
        self.read.as_raw_fd() == self.write.as_raw_fd() && self.write_kind == WriteKind::Socket
    }
}

/// A client whose messages arrive and leave as whole lines (no newline)
/// through channels. The other side rings `doorbell` after every send into
/// `inbox` and every receive from `outbox`, so a worker waiting in
/// `poll(2)` for either wakes up. Dropping `inbox`'s sender is the client's
/// end of input; dropping `outbox`'s receiver means it is gone.
pub struct ChannelClient {
    pub inbox: Receiver<Vec<u8>>,
    pub outbox: Sender<Vec<u8>>,
    pub doorbell: Arc<Doorbell>,
    /// Called after messages were put in `outbox`, and once more when the
    /// worker lets go of the session: a front end that multiplexes many
    /// sessions in one event loop cannot block on every outbox.
    notify: Option<Notify>,
}

/// How a worker tells its channel peer that there is something to take.
pub type Notify = Box<dyn Fn() + Send + Sync>;

impl ChannelClient {
    fn notify(&self) {
        if let Some(notify) = &self.notify {
            notify();
        }
    }
}

impl Drop for ChannelClient {
    fn drop(&mut self) {
        // Disconnect first, so the peer woken here sees the end.
        let (dead, _) = crossbeam_channel::bounded(0);
        drop(std::mem::replace(&mut self.outbox, dead));
        self.notify();
    }
}

/// The other side of a [`ChannelClient`] (an HTTP front end, or a test).
/// Dropping it ends the session's input and rings the doorbell, so the
/// worker sees the end at once.
pub struct ChannelPeer {
    to_session: Option<Sender<Vec<u8>>>,
    from_session: Receiver<Vec<u8>>,
    doorbell: Arc<Doorbell>,
}

impl ChannelPeer {
    /// Sends one message to the session; `false` once the session is gone
    /// or input was ended. Blocks while the session's inbox is full.
    pub fn send(&self, line: Vec<u8>) -> bool {
        let sent = self
            .to_session
            .as_ref()
            .is_some_and(|to_session| to_session.send(line).is_ok());
        self.doorbell.ring();
        sent
    }

    /// The client's end of input: the session answers what is in flight
    /// (within its grace) and ends. Answers can still be received.
    pub fn end_input(&mut self) {
        self.to_session = None;
        self.doorbell.ring();
    }

    /// Sends one message without blocking.
    pub fn try_send(&self, line: Vec<u8>) -> Result<(), Refused> {
        let Some(to_session) = &self.to_session else {
            return Err(Refused::Gone);
        };
        let sent = match to_session.try_send(line) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(Refused::Full),
            Err(TrySendError::Disconnected(_)) => Err(Refused::Gone),
        };
        self.doorbell.ring();
        sent
    }

    /// One message from the session if one is waiting: `Ok(None)` when
    /// none is, `Err` once the session has ended and all it sent is taken.
    pub fn try_recv(&self) -> Result<Option<Vec<u8>>, Ended> {
        match self.from_session.try_recv() {
            Ok(line) => {
                // Only a worker that found its outbox full waits for room,
                // so only the take that leaves one free slot (the first
                // since it was full) rings: a wake-up of the worker per
                // answer saved on the hot path.
                let capacity = self.from_session.capacity().unwrap_or(usize::MAX);
                if self.from_session.len() + 1 >= capacity {
                    self.doorbell.ring();
                }
                Ok(Some(line))
            }
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::Disconnected) => Err(Ended),
        }
    }

    /// Receives one message from the session, blocking; `None` once the
    /// session has ended and everything it sent was received.
    pub fn recv(&self) -> Option<Vec<u8>> {
        let line = self.from_session.recv().ok();
        self.doorbell.ring();
        line
    }
}

/// Why [`ChannelPeer::try_send`] did not send.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The session's inbox is full.
    Full,
    /// The session has ended, or its input was ended.
    Gone,
}

/// The session has ended and everything it sent was received.
#[derive(Debug, PartialEq, Eq)]
pub struct Ended;

/// A connected pair, each way holding at most `capacity` messages.
pub fn channel_pair(capacity: usize) -> io::Result<(ChannelClient, ChannelPeer)> {
    notifying_pair(capacity, None)
}

/// A pair whose worker calls `notify` when it has put messages in its
/// outbox and when it has ended.
pub fn notifying_pair(
    capacity: usize,
    notify: Option<Notify>,
) -> io::Result<(ChannelClient, ChannelPeer)> {
    let doorbell = Arc::new(Doorbell::new()?);
    let (to_session, inbox) = crossbeam_channel::bounded(capacity);
    let (outbox, from_session) = crossbeam_channel::bounded(capacity);
    Ok((
        ChannelClient {
            inbox,
            outbox,
            doorbell: Arc::clone(&doorbell),
            notify,
        },
        ChannelPeer {
            to_session: Some(to_session),
            from_session,
            doorbell,
        },
    ))
}

impl Drop for ChannelPeer {
    fn drop(&mut self) {
        self.end_input();
    }
}

/// An eventfd the channel side rings to wake the session's worker.
#[derive(Debug)]
pub struct Doorbell {
    fd: EventFd,
}

impl Doorbell {
    pub fn new() -> io::Result<Doorbell> {
        Ok(Doorbell {
            fd: EventFd::new()?,
        })
    }

    pub fn ring(&self) {
        self.fd.signal();
    }

    /// Silences it until the next ring.
    pub fn clear(&self) {
        self.fd.drain();
    }
}

impl AsFd for Doorbell {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// What the client has not taken yet.
pub enum ClientSink {
    Stream(Outbox),
    /// Whole lines waiting for room in the channel, and their bytes.
    Channel(VecDeque<Vec<u8>>, usize),
}

/// How a flush toward the client went.
#[derive(Debug, PartialEq, Eq)]
pub enum Flushed {
    All,
    /// Some is left; wait for room.
    Partly,
    /// The client is gone.
    Gone,
}

impl ClientSink {
    pub fn for_side(side: &ClientSide) -> ClientSink {
        match side {
            ClientSide::Stream(_) => ClientSink::Stream(Outbox::default()),
            ClientSide::Channels(_) => ClientSink::Channel(VecDeque::new(), 0),
        }
    }

    pub fn push_line(&mut self, line: &[u8]) {
        match self {
            ClientSink::Stream(outbox) => outbox.push_line(line),
            ClientSink::Channel(lines, bytes) => {
                *bytes += line.len();
                lines.push_back(line.to_vec());
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        match self {
            ClientSink::Stream(outbox) => outbox.is_empty(),
            ClientSink::Channel(lines, _) => lines.is_empty(),
        }
    }

    pub fn is_full(&self) -> bool {
        match self {
            ClientSink::Stream(outbox) => outbox.is_full(),
            ClientSink::Channel(_, bytes) => *bytes >= HIGH_WATER,
        }
    }

    pub fn clear(&mut self) {
        match self {
            ClientSink::Stream(outbox) => outbox.clear(),
            ClientSink::Channel(lines, bytes) => {
                *lines = VecDeque::new();
                *bytes = 0;
            }
        }
    }

    /// Hands the client what it takes now, without blocking.
    pub fn flush(&mut self, side: &ClientSide) -> Flushed {
        match (self, side) {
            (ClientSink::Stream(outbox), ClientSide::Stream(stream)) => {
                match outbox.flush(stream.write, stream.write_kind) {
                    Ok(true) => Flushed::All,
                    Ok(false) => Flushed::Partly,
                    Err(_) => Flushed::Gone,
                }
            }
            (ClientSink::Channel(lines, bytes), ClientSide::Channels(channels)) => {
                let mut sent = false;
                let flushed = loop {
                    let Some(line) = lines.pop_front() else {
                        break Flushed::All;
                    };
                    let len = line.len();
                    match channels.outbox.try_send(line) {
                        Ok(()) => {
                            *bytes -= len;
                            sent = true;
                        }
                        Err(TrySendError::Full(line)) => {
                            lines.push_front(line);
                            break Flushed::Partly;
                        }
                        Err(TrySendError::Disconnected(_)) => break Flushed::Gone,
                    }
                };
                if sent {
                    channels.notify();
                }
                flushed
            }
            // A sink is always made for its own side (`for_side`).
            _ => Flushed::Gone,
        }
    }
}

/// One message from a channel client, if one is waiting.
pub enum Received {
    Line(Vec<u8>),
    Nothing,
    /// The client sent its last message.
    Ended,
}

pub fn try_receive(channels: &ChannelClient) -> Received {
    match channels.inbox.try_recv() {
        Ok(line) => Received::Line(line),
        Err(TryRecvError::Empty) => Received::Nothing,
        Err(TryRecvError::Disconnected) => Received::Ended,
    }
}
