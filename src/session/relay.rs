//! The worker's loop: both directions of one session moved by one thread
//! from one `poll(2)` over the client and the child's stdout pipe (and the
//! child's stdin while there is input queued for it).
//!
//! Why one thread: a session is mostly idle, and a thread per direction
//! (the first two designs) cost two more stacks, two more wake-ups per
//! round trip and a lock per message. Here a message read from one side is
//! checked and written to the other by the thread that read it, with no
//! hand-off, and a whole read's worth of lines goes out in one write. When
//! a destination has more than its high-water mark pending, its source is
//! not read: that is the backpressure, and why memory per session stays
//! bounded whatever the peers do. The loop sleeps in `poll(2)` with no
//! timeout: the session clock wakes it at its next deadline (idle timeout
//! or grace), so an idle session costs no wake-ups but that one, and a
//! busy one arms no kernel timer per wait. What it waits for beyond its
//! own descriptors — the shutdown broadcasts, its child's exit, the clock
//! — is a flag or a time checked every turn and a signal that ends the
//! wait ([`crate::sys::wake`]): no entry in the poll set, whose cost the
//! kernel pays per entry twice a round trip.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::process::ChildStdin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use log::{debug, trace, warn};

use crate::child::reaper::ExitWatch;
use crate::config::Limits;
use crate::proto::framing::{Frame, LineSplitter};
use crate::proto::message::{self, Id, Kind, Message, classify, code};
use crate::session::client::{self, ClientSide, ClientSink, Flushed, Received};
use crate::session::clock::Clock;
use crate::session::outbox::{Outbox, WriteKind};
use crate::session::read_buffer::{Read, ReadBuffer};
use crate::session::rules::{Counters, Direction, Rules, Tap, Verdict};
use crate::session::table::SessionId;
use crate::shutdown::Trigger;
use crate::sys::poll::poll;
use crate::sys::socket::shutdown_write;
use crate::sys::wake::Sleeper;

/// Messages taken from a channel client per turn, so one busy client
/// cannot keep its worker from the other direction.
const CHANNEL_BATCH: usize = 64;

/// Lines of garbage from one child logged at warn level; the rest at debug.
const GARBAGE_WARNINGS: u32 = 5;

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    ClientClosed,
    ChildExited,
    IdleTimeout,
    Shutdown,
    /// Ended from outside: the admin endpoint's `DELETE /sessions/ID`.
    Deleted,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::ClientClosed => "client_closed",
            EndReason::ChildExited => "child_exited",
            EndReason::IdleTimeout => "idle_timeout",
            EndReason::Shutdown => "shutdown",
            EndReason::Deleted => "deleted",
        }
    }
}

/// The timing rules of a session.
#[derive(Debug, Clone, Copy)]
struct Timing {
    idle_timeout: Option<Duration>,
    /// How long unanswered requests may wait once the session is closing.
    grace: Duration,
}

/// The broadcasts a session listens to.
#[derive(Clone, Copy)]
pub struct Control<'a> {
    /// Stop taking requests; answer what is in flight within the grace.
    pub shutdown: &'a Trigger,
    /// Skip what is left of the grace.
    pub hurry: &'a Trigger,
    /// Wakes the worker at its deadlines, so its poll needs no timeout.
    pub clock: &'a Clock,
    /// This one session was asked to end (`DELETE /sessions/ID`). The flag
    /// only names the reason: whoever sets it also ends the client's input
    /// (`shutdown(SHUT_RD)` of its socket, or the channel peer's
    /// `end_input`), which is what wakes the worker, so this costs the
    /// loop no descriptor and no check per turn.
    pub end_requested: Option<&'a AtomicBool>,
}

impl Control<'_> {
    /// `reason`, or `Deleted` when a client "closed" because it was told to.
    fn name(&self, reason: EndReason) -> EndReason {
        let asked = self
            .end_requested
            .is_some_and(|flag| flag.load(Ordering::Relaxed));
        if asked && reason == EndReason::ClientClosed {
            EndReason::Deleted
        } else {
            reason
        }
    }
}

/// The child end of the relay.
pub enum ChildSide<'a> {
    Running(ChildFds<'a>),
    /// No child could be started: every request is answered with this.
    Missing(&'a str),
}

/// Everything the per-message handlers touch, apart from the splitters
/// (which lend them the lines).
struct Core<'a> {
    id: SessionId,
    max: usize,
    rules: Rules,
    tap: Option<Box<dyn Tap + Send>>,
    to_client: ClientSink,
    to_child: Outbox,
    /// The child cannot take input any more (it is exiting).
    child_input_closed: bool,
    missing_child: Option<&'a str>,
    /// When this turn began: one reading of the clock per turn, taken as
    /// the wait ends, serves the deadlines and the activity stamps.
    now: Instant,
    last_activity: Instant,
    garbage_lines: u32,
}

/// One session's two directions.
pub struct Relay<'a> {
    core: Core<'a>,
    client: ClientSide<'a>,
    child: Option<ChildFds<'a>>,
    from_client: LineSplitter,
    from_child: LineSplitter,
    reads: ReadBuffer,
    client_eof: bool,
    child_eof: bool,
    /// The child's socket hung up: it exited, so its stdout is read until
    /// it is empty, and then counts as ended.
    child_gone: bool,
    timing: Timing,
    control: Control<'a>,
    sleeper: &'a Sleeper,
    closing: Option<(EndReason, Instant)>,
    ended: Option<EndReason>,
    shutdown_seen: bool,
    hurry_seen: bool,
}

/// A running child's descriptors, all non-blocking, and its exit.
pub struct ChildFds<'a> {
    /// Where we write its stdin.
    pub stdin: ChildInput<'a>,
    /// The pipe we read its stdout from.
    pub stdout: BorrowedFd<'a>,
    /// Says the child has exited, which its stdout may not: a grandchild
    /// can hold it. The reaper wakes this session's [`Sleeper`] too.
    pub exit: &'a ExitWatch,
}

/// The child's stdin, as the relay writes and ends it.
pub enum ChildInput<'a> {
    /// The socket pair it shares with the child's stderr, which the stderr
    /// log reads: `shutdown(SHUT_WR)` ends the input and leaves the rest.
    Socket(BorrowedFd<'a>),
    /// A pipe of its own, closed to end the input.
    Pipe(ChildStdin),
    /// Ended.
    Closed,
}

impl ChildInput<'_> {
    fn target(&self) -> Option<(BorrowedFd<'_>, WriteKind)> {
        match self {
            ChildInput::Socket(fd) => Some((*fd, WriteKind::Socket)),
            ChildInput::Pipe(pipe) => Some((pipe.as_fd(), WriteKind::Pipe)),
            ChildInput::Closed => None,
        }
    }

    fn close(&mut self) {
        if let ChildInput::Socket(fd) = std::mem::replace(self, ChildInput::Closed) {
            shutdown_write(fd);
        }
    }
}

/// Indices into the poll set; `NONE` marks an unused slot.
const NONE: usize = usize::MAX;

/// Who is where in a turn's poll set: `slots[CHILD]` is the index of the
/// child's entry, and so on.
const CLIENT_READ: usize = 0;
const CLIENT_WRITE: usize = 1;
const CHILD_STDIN: usize = 2;
const CHILD_STDOUT: usize = 3;
const SLOTS: usize = 4;

impl<'a> Relay<'a> {
    pub fn new(
        id: SessionId,
        limits: &Limits,
        client: ClientSide<'a>,
        child: ChildSide<'a>,
        control: Control<'a>,
        sleeper: &'a Sleeper,
        tap: Option<Box<dyn Tap + Send>>,
    ) -> Relay<'a> {
        let max_message_bytes = limits.max_message_bytes;
        let timing = Timing {
            idle_timeout: limits.idle_timeout,
            grace: limits.shutdown_grace,
        };
        let (child, missing_child) = match child {
            ChildSide::Running(fds) => (Some(fds), None),
            ChildSide::Missing(why) => (None, Some(why)),
        };
        Relay {
            core: Core {
                id,
                max: max_message_bytes,
                rules: Rules::new(limits.max_inflight),
                tap,
                to_client: ClientSink::for_side(&client),
                to_child: Outbox::default(),
                child_input_closed: false,
                missing_child,
                now: Instant::now(),
                last_activity: Instant::now(),
                garbage_lines: 0,
            },
            client,
            child,
            from_client: LineSplitter::new(max_message_bytes),
            from_child: LineSplitter::new(max_message_bytes),
            reads: ReadBuffer::default(),
            client_eof: false,
            child_eof: false,
            child_gone: false,
            timing,
            control,
            sleeper,
            closing: None,
            ended: None,
            shutdown_seen: false,
            hurry_seen: false,
        }
    }

    /// Relays until the session ends; returns why. Blocks the calling
    /// thread, waking only for I/O, a broadcast or a deadline.
    pub fn run(&mut self) -> EndReason {
        let reason = self.relay();
        self.control.name(reason)
    }

    fn relay(&mut self) -> EndReason {
        // Registered before the first look at the flags, so a broadcast
        // either is seen by that look or signals this thread.
        let control = self.control;
        let _shutdown = control.shutdown.wake_on_fire(self.sleeper.tid());
        let _hurry = control.hurry.wake_on_fire(self.sleeper.tid());
        let mut timer = control.clock.timer(self.sleeper.tid());
        self.core.now = Instant::now();
        loop {
            self.observe_broadcasts();
            if let Some(reason) = self.end_reason() {
                return reason;
            }
            let mut fds = [libc::pollfd {
                fd: -1,
                events: 0,
                revents: 0,
            }; SLOTS];
            let slots = self.fill_poll_set(&mut fds);
            let timeout = if self.child_gone && self.want_child_output() {
                // What the child left in its stdout is read at once.
                Some(Duration::ZERO)
            } else {
                timer.ensure(self.deadline(), self.core.now);
                None
            };
            if let Some(tap) = self.core.tap.as_mut() {
                tap.flush();
            }
            if let Err(e) = self.sleeper.poll(&mut fds, timeout) {
                warn!("[{}] poll failed: {e}; ending the session", self.core.id);
                return self.end_now(EndReason::ClientClosed);
            }
            self.core.now = Instant::now();
            self.handle(&fds, &slots);
            self.reads.end_turn();
        }
    }

    /// Ends the relay part: the caller stops the child next. What is still
    /// queued for the child is written if it fits now.
    pub fn finish_input(&mut self) {
        if let Some(child) = &mut self.child {
            if let Some((fd, kind)) = child.stdin.target() {
                if !self.core.child_input_closed {
                    let _ = self.core.to_child.flush(fd, kind);
                }
            }
            // Closing its stdin is the polite end (MCP stdio, "Shutdown").
            child.stdin.close();
        }
        self.core.child_input_closed = true;
        self.core.to_child.clear();
    }

    /// Answers every request still awaiting its answer with `code`.
    pub fn answer_unanswered(&mut self, code: i64, text: &str) {
        self.core.now = Instant::now();
        for request in self.core.rules.take_unanswered() {
            self.core
                .reply(&Message::error(Some(&request), code, text), false);
        }
    }

    /// Gives the client up to `limit` to take what is queued for it
    /// (`hurry` cuts it short). Returns the counters' final state.
    pub fn drain_client(&mut self, limit: Duration) {
        let deadline = Instant::now().checked_add(limit);
        for _ in 0..100_000 {
            match self.core.to_client.flush(&self.client) {
                Flushed::All | Flushed::Gone => return,
                Flushed::Partly => {}
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left.is_some_and(|l| l.is_zero()) || self.control.hurry.has_fired() {
                return;
            }
            let mut fds = [
                self.client_write_pollfd(libc::POLLOUT),
                pollfd(self.control.hurry.alarm().as_fd().as_raw_fd(), libc::POLLIN),
            ];
            if poll(&mut fds, left).is_err() {
                return;
            }
        }
    }

    pub fn counters(&self) -> Counters {
        self.core.rules.counters
    }

    /// Hands the tap back once the relay is done with it, for its `end`.
    pub fn take_tap(&mut self) -> Option<Box<dyn Tap + Send>> {
        self.core.tap.take()
    }

    fn end_now(&mut self, reason: EndReason) -> EndReason {
        self.ended = Some(reason);
        reason
    }

    fn end_reason(&self) -> Option<EndReason> {
        if self.ended.is_some() {
            return self.ended;
        }
        if let Some((reason, deadline)) = self.closing {
            if self.core.rules.pending() == 0 || self.core.now >= deadline {
                return Some(reason);
            }
            return None;
        }
        let idle_deadline = self
            .timing
            .idle_timeout
            .and_then(|t| self.core.last_activity.checked_add(t));
        match idle_deadline {
            Some(d) if self.core.now >= d => Some(EndReason::IdleTimeout),
            _ => None,
        }
    }

    fn deadline(&self) -> Option<Instant> {
        match self.closing {
            Some((_, deadline)) => Some(deadline),
            None => self
                .timing
                .idle_timeout
                .and_then(|t| self.core.last_activity.checked_add(t)),
        }
    }

    /// Starts the wind-down: `reason` unless one is already set, and the
    /// earlier of the current deadline and `within` from now.
    fn close(&mut self, reason: EndReason, within: Duration) {
        let now = self.core.now;
        let until = now
            .checked_add(within)
            .unwrap_or_else(|| now + Duration::from_secs(86_400));
        self.closing = Some(match self.closing {
            Some((r, d)) => (
                if reason == EndReason::Shutdown {
                    reason
                } else {
                    r
                },
                d.min(until),
            ),
            None => (reason, until),
        });
    }

    fn want_client_input(&self) -> bool {
        !self.client_eof && !self.core.to_child.is_full() && !self.core.to_client.is_full()
    }

    fn want_child_output(&self) -> bool {
        self.child.is_some() && !self.child_eof && !self.core.to_client.is_full()
    }

    fn client_write_pollfd(&self, events: libc::c_short) -> libc::pollfd {
        match &self.client {
            ClientSide::Stream(stream) => pollfd(stream.write.as_raw_fd(), events),
            ClientSide::Channels(channels) => {
                pollfd(channels.doorbell.as_fd().as_raw_fd(), libc::POLLIN)
            }
        }
    }

    /// Fills `fds` for this turn; returns where each party landed (its
    /// entry's index at `slots[CHILD_STDOUT]` and so on).
    fn fill_poll_set(&self, fds: &mut [libc::pollfd; SLOTS]) -> [usize; SLOTS] {
        let mut slots = [NONE; SLOTS];
        let mut n = 0;
        let mut add =
            |fds: &mut [libc::pollfd; SLOTS], slots: &mut [usize; SLOTS], slot, fd, events| {
                fds[n] = pollfd(fd, events);
                slots[slot] = n;
                n += 1;
            };
        let read_events = if self.want_client_input() {
            libc::POLLIN
        } else {
            0
        };
        let write_events = if self.core.to_client.is_empty() {
            0
        } else {
            libc::POLLOUT
        };
        match &self.client {
            ClientSide::Stream(stream) if stream.is_one_socket() => {
                // Always present: a reset shows as POLLERR/POLLHUP even
                // when nothing is asked for.
                add(
                    fds,
                    &mut slots,
                    CLIENT_READ,
                    stream.read.as_raw_fd(),
                    read_events | write_events,
                );
                slots[CLIENT_WRITE] = slots[CLIENT_READ];
            }
            ClientSide::Stream(stream) => {
                // A pipe at end of file polls readable for good: ask only
                // while we would read, or the loop would spin.
                if read_events != 0 {
                    add(
                        fds,
                        &mut slots,
                        CLIENT_READ,
                        stream.read.as_raw_fd(),
                        read_events,
                    );
                }
                // Watched even with nothing to write: a pipe whose reader
                // is gone reports POLLERR.
                add(
                    fds,
                    &mut slots,
                    CLIENT_WRITE,
                    stream.write.as_raw_fd(),
                    write_events,
                );
            }
            ClientSide::Channels(channels) => {
                add(
                    fds,
                    &mut slots,
                    CLIENT_READ,
                    channels.doorbell.as_fd().as_raw_fd(),
                    libc::POLLIN,
                );
                slots[CLIENT_WRITE] = slots[CLIENT_READ];
            }
        }
        if let Some(child) = &self.child {
            let waiting_for_room =
                !self.child_gone && !self.core.to_child.is_empty() && !self.core.child_input_closed;
            if let Some((stdin, _)) = child.stdin.target().filter(|_| waiting_for_room) {
                // Only to wake the loop when room frees: its events are
                // not read, as `flush_child` runs every turn and learns
                // from the write itself whether the child still reads.
                add(
                    fds,
                    &mut slots,
                    CHILD_STDIN,
                    stdin.as_raw_fd(),
                    libc::POLLOUT,
                );
            }
            if self.want_child_output() {
                // A pipe at end of file polls readable for good: asked
                // only while we would read.
                add(
                    fds,
                    &mut slots,
                    CHILD_STDOUT,
                    child.stdout.as_raw_fd(),
                    libc::POLLIN,
                );
            }
        }
        slots
    }

    /// Acts on what the wake-up signal stands for: a shutdown broadcast,
    /// the hurry after it, the child's exit. One atomic load each.
    fn observe_broadcasts(&mut self) {
        if !self.shutdown_seen && self.control.shutdown.has_fired() {
            self.on_shutdown();
        }
        if self.closing.is_some() && !self.hurry_seen && self.control.hurry.has_fired() {
            self.hurry_seen = true;
            if let Some((reason, _)) = self.closing {
                self.closing = Some((reason, self.core.now));
            }
        }
        if let Some(child) = &self.child {
            if !self.child_gone && child.exit.has_exited() {
                debug!("[{}] the server exited", self.core.id);
                self.child_gone = true;
            }
        }
    }

    fn handle(&mut self, fds: &[libc::pollfd; SLOTS], slots: &[usize; SLOTS]) {
        let revents = |slot: usize| {
            if slots[slot] == NONE {
                0
            } else {
                fds[slots[slot]].revents
            }
        };
        let hangup = libc::POLLERR | libc::POLLHUP;
        if let ClientSide::Channels(channels) = &self.client {
            if revents(CLIENT_READ) != 0 {
                channels.doorbell.clear();
            }
            // Cheap enough to look every turn, and a doorbell rung before
            // the last turn's look is not missed.
            self.receive_from_channels();
        } else {
            let read = revents(CLIENT_READ);
            if read & (libc::POLLIN | hangup) != 0 && self.want_client_input() {
                self.read_client();
            } else if read & hangup != 0 {
                debug!("[{}] client hung up", self.core.id);
                self.end_now(EndReason::ClientClosed);
                return;
            }
            if slots[CLIENT_WRITE] != slots[CLIENT_READ]
                && revents(CLIENT_WRITE) & libc::POLLERR != 0
            {
                debug!("[{}] client stopped reading for good", self.core.id);
                self.end_now(EndReason::ClientClosed);
                return;
            }
        }
        let child_output = revents(CHILD_STDOUT) & (libc::POLLIN | hangup) != 0;
        if (child_output || self.child_gone) && self.want_child_output() {
            self.read_child();
        }
        self.flush_child();
        if self.core.to_client.flush(&self.client) == Flushed::Gone {
            debug!("[{}] client write failed", self.core.id);
            self.core.to_client.clear();
            self.end_now(EndReason::ClientClosed);
        }
    }

    fn on_shutdown(&mut self) {
        self.shutdown_seen = true;
        self.core.rules.refuse_new_requests();
        if self.core.rules.pending() == 0 {
            self.end_now(EndReason::Shutdown);
            return;
        }
        let within = if self.control.hurry.has_fired() {
            self.hurry_seen = true;
            Duration::ZERO
        } else {
            self.timing.grace
        };
        self.close(EndReason::Shutdown, within);
    }

    fn on_client_eof(&mut self) {
        self.client_eof = true;
        if self.core.rules.pending() == 0 && self.core.to_child.is_empty() {
            let reason = self.closing.map_or(EndReason::ClientClosed, |(r, _)| r);
            self.end_now(reason);
        } else {
            self.close(EndReason::ClientClosed, self.timing.grace);
        }
    }

    fn read_client(&mut self) {
        let ClientSide::Stream(stream) = &self.client else {
            return;
        };
        let core = &mut self.core;
        match self.reads.read(stream.read) {
            Ok(Read::End) => {
                self.from_client.finish(|frame| core.client_frame(frame));
                self.on_client_eof();
            }
            Ok(Read::Bytes(bytes)) => self
                .from_client
                .push(bytes, |frame| core.client_frame(frame)),
            Ok(Read::Nothing) => {}
            Err(e) => {
                debug!("[{}] client read failed: {e}", core.id);
                self.end_now(EndReason::ClientClosed);
            }
        }
    }

    fn receive_from_channels(&mut self) {
        let ClientSide::Channels(channels) = &self.client else {
            return;
        };
        for _ in 0..CHANNEL_BATCH {
            if !self.want_client_input() {
                return;
            }
            match client::try_receive(channels) {
                Received::Line(line) => {
                    let frame = if line.len() > self.core.max {
                        let head = line.len().min(crate::proto::framing::OVERSIZED_HEAD_BYTES);
                        Frame::Oversized {
                            len: line.len(),
                            head: &line[..head],
                        }
                    } else {
                        Frame::Message(&line)
                    };
                    self.core.client_frame(frame);
                }
                Received::Nothing => return,
                Received::Ended => {
                    self.on_client_eof();
                    return;
                }
            }
        }
    }

    fn read_child(&mut self) {
        let Some(stdout) = self.child.as_ref().map(|child| child.stdout) else {
            return;
        };
        let core = &mut self.core;
        match self.reads.read(stdout) {
            Ok(Read::Bytes(bytes)) => {
                self.from_child.push(bytes, |frame| core.child_frame(frame));
                return;
            }
            // Once the child has exited, an empty pipe is its end: what
            // still holds it open is a grandchild's copy.
            Ok(Read::Nothing) if !self.child_gone => return,
            Ok(Read::Nothing) => debug!("[{}] the server exited; its output is empty", core.id),
            Ok(Read::End) => debug!("[{}] the server's output ended", core.id),
            Err(e) => debug!("[{}] reading the server's output failed: {e}", core.id),
        }
        self.from_child.finish(|frame| core.child_frame(frame));
        self.child_eof = true;
        let reason = self.closing.map_or(EndReason::ChildExited, |(r, _)| r);
        self.end_now(reason);
    }

    fn flush_child(&mut self) {
        let Some((stdin, kind)) = self.child.as_ref().and_then(|child| child.stdin.target()) else {
            return;
        };
        if self.core.child_input_closed || self.core.to_child.is_empty() {
            return;
        }
        if let Err(e) = self.core.to_child.flush(stdin, kind) {
            // The child is exiting; its end of file ends the session and
            // its unanswered requests get -32002.
            debug!("[{}] the server stopped reading: {e}", self.core.id);
            self.core.child_input_closed = true;
            self.core.to_child.clear();
        }
    }
}

impl Core<'_> {
    fn touch(&mut self) {
        self.last_activity = self.now;
    }

    fn tap(&mut self, direction: Direction, line: &[u8]) {
        self.rules.counters.message(direction, line);
        if let Some(tap) = self.tap.as_mut() {
            tap.message(direction, line);
        }
    }

    /// Books a message to the client in the rules and passes it to the
    /// tap, with the round trip of each request it answers.
    fn tap_to_client(&mut self, kind: &message::Kind, line: &[u8]) {
        self.rules.counters.message(Direction::Out, line);
        let Some(tap) = self.tap.as_mut() else {
            self.rules.to_client(kind, self.now, |_| {});
            return;
        };
        tap.message(Direction::Out, line);
        let mut answers = 0;
        self.rules.to_client(kind, self.now, |rtt| {
            answers += 1;
            tap.answered(rtt);
        });
        if answers > 0 {
            tap.awaiting(self.rules.pending());
        }
    }

    /// Queues forkline's own message for the client; `book` when it stands
    /// for an awaited answer (so the request is no longer pending).
    fn reply(&mut self, message: &Message, book: bool) {
        self.to_client.push_line(&message.line);
        if book {
            self.tap_to_client(&message.kind, &message.line);
        } else {
            self.tap(Direction::Out, &message.line);
        }
    }

    fn refuse(&mut self, kind: &message::Kind, code: i64, reason: &str) {
        let mut ids: Vec<Id> = Vec::new();
        kind.for_each_request_id(&mut |id| ids.push(id.clone()));
        for id in ids {
            self.reply(&Message::error(Some(&id), code, reason), false);
        }
    }

    fn client_frame(&mut self, frame: Frame<'_>) {
        self.touch();
        match frame {
            Frame::Message(line) => match classify(line) {
                Ok(kind) => {
                    log_message(self.id, "client", &kind, line);
                    if let Some(why) = self.missing_child {
                        self.refuse(&kind, code::CHILD_GONE, why);
                        return;
                    }
                    match self.rules.from_client(&kind, self.now) {
                        Verdict::Forward => {
                            if !self.child_input_closed {
                                self.to_child.push_line(line);
                            }
                            self.tap(Direction::In, line);
                            if let Some(tap) = self.tap.as_mut() {
                                tap.awaiting(self.rules.pending());
                            }
                        }
                        Verdict::Refuse { code, reason } => {
                            debug!("[{}] refused a client message: {reason}", self.id);
                            self.refuse(&kind, code, &reason);
                        }
                    }
                }
                Err(invalid) => {
                    debug!("[{}] refused a client line: {}", self.id, invalid.message());
                    self.reply(
                        &Message::error(None, invalid.code(), &invalid.message()),
                        false,
                    );
                }
            },
            Frame::Oversized { len, head } => {
                debug!("[{}] refused a client message of {len} bytes", self.id);
                let text = format!(
                    "message of {len} bytes exceeds --max-message-bytes ({}); it was discarded",
                    self.max
                );
                let id = message::sniff_id(head);
                self.reply(&Message::error(id.as_ref(), code::TOO_LARGE, &text), false);
            }
        }
    }

    fn child_frame(&mut self, frame: Frame<'_>) {
        self.touch();
        match frame {
            Frame::Message(line) => match classify(line) {
                Ok(kind) => {
                    log_message(self.id, "server", &kind, line);
                    self.to_client.push_line(line);
                    self.tap_to_client(&kind, line);
                }
                Err(invalid) => self.garbage(&format!(
                    "dropped a line from the server that is not JSON-RPC: {}",
                    invalid.message()
                )),
            },
            Frame::Oversized { len, head } => {
                self.garbage(&format!(
                    "dropped a server message of {len} bytes: over --max-message-bytes ({})",
                    self.max
                ));
                // The request it answered must not wait forever.
                if let Some(id) = message::sniff_id(head).filter(|id| self.rules.awaits(id)) {
                    let text = format!(
                        "the server's answer of {len} bytes exceeds --max-message-bytes ({}); it was discarded",
                        self.max
                    );
                    self.reply(&Message::error(Some(&id), code::TOO_LARGE, &text), true);
                }
            }
        }
    }

    fn garbage(&mut self, what: &str) {
        self.garbage_lines += 1;
        if self.garbage_lines <= GARBAGE_WARNINGS {
            warn!("[{}] {what}", self.id);
            if self.garbage_lines == GARBAGE_WARNINGS {
                warn!(
                    "[{}] further dropped server lines are logged at debug level",
                    self.id
                );
            }
        } else {
            debug!("[{}] {what}", self.id);
        }
    }
}

fn pollfd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// One line per message at debug (what it is and its size, never its
/// content); the content itself only at trace.
fn log_message(id: SessionId, from: &str, kind: &Kind, line: &[u8]) {
    if log::log_enabled!(log::Level::Trace) {
        trace!("[{id}] {from}: {}", String::from_utf8_lossy(line));
    } else if log::log_enabled!(log::Level::Debug) {
        let what = match kind {
            Kind::Request { id, method } => format!("request id={id} method={method}"),
            Kind::Notification { method } => format!("notification method={method}"),
            Kind::Response { id: Some(id) } => format!("response id={id}"),
            Kind::Response { id: None } => "response id=null".to_string(),
            Kind::Batch(items) => format!("batch of {}", items.len()),
        };
        debug!("[{id}] {from} {what} bytes={}", line.len());
    }
}
