//! One session from its first byte to its last: spawn the child, start the
//! I/O threads, run the relay, end the child, answer what was left
//! unanswered, and join everything.
//!
//! Every thread a session starts is scoped to it, so none can outlive it.
//! Per session: the relay on the calling (worker) thread, a reader for the
//! client and a reader for the child's stdout. Each reader turns blocking
//! I/O into messages on a bounded channel. Writes need no thread: the
//! relay writes each side's fd without blocking (see `outbox`), and the
//! shared I/O hub drains the child's stderr and says when a blocked fd
//! drains.

use std::io::{BufReader, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::thread::{self, Scope, ScopedJoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, bounded};
use log::{debug, error, info, trace, warn};

use crate::child::{self, Exit};
use crate::config::{ChildCommand, Limits};
use crate::framing::{self, Frame};
use crate::hub::Hub;
use crate::interrupt::{Alarm, Interruptible, set_nonblocking};
use crate::message::{self, Message, code};
use crate::outbox::{FdKind, FdWriter, Outbox};
use crate::relay::{self, Control, Counters, EndReason, Endpoint, Inbound, Timing};
use crate::table::SessionId;
use crate::trigger::Trigger;

/// Messages queued per direction per channel. Small on purpose: memory per
/// session is bounded by roughly (capacity + 2) × the message limit per
/// direction, and a short queue already keeps both ends busy.
const CHANNEL_CAPACITY: usize = 16;

/// The I/O threads need little stack: a reader parses one JSON envelope
/// (serde_json's nesting limit bounds its recursion), a writer copies.
const IO_STACK_BYTES: usize = 256 * 1024;

const READ_BUFFER_BYTES: usize = 4 * 1024;

/// What every session of one proxy shares.
pub struct Shared<'a> {
    pub command: &'a ChildCommand,
    pub limits: &'a Limits,
    /// Fired on the first SIGTERM/SIGINT.
    pub shutdown: &'a Trigger,
    /// Fired on the second: skip every grace.
    pub hurry: &'a Trigger,
    pub hub: &'a Hub,
}

/// The client end of a byte-stream session (a socket, or forkline's own
/// stdin/stdout). `close` must wake a thread blocked reading `reader`.
pub struct ClientStream<'a, R> {
    pub reader: R,
    /// Where the client's messages are written, and how.
    pub writer: BorrowedFd<'a>,
    pub writer_kind: FdKind,
    pub close: &'a (dyn Fn() + Sync),
}

/// How a session went, for the caller's exit status and tests.
#[derive(Debug)]
pub struct Summary {
    pub reason: EndReason,
    /// `None` when the child could not be started.
    pub exit: Option<Exit>,
    pub counters: Counters,
}

/// Runs a session to its end. Blocks the calling thread for the session's
/// life; every thread it starts is joined before it returns. `on_spawn`
/// learns the child's pid.
pub fn run<R>(
    id: SessionId,
    peer: &str,
    shared: &Shared,
    client: ClientStream<'_, R>,
    on_spawn: impl FnOnce(u32),
) -> Summary
where
    R: Read + Send,
{
    let started = Instant::now();
    let max = shared.limits.max_message_bytes;
    let close = client.close;
    let alarm = Alarm::new();
    let summary = thread::scope(|s| {
        let mut threads = Threads::default();
        let (from_client, to_relay) = bounded(CHANNEL_CAPACITY);
        let reader = client.reader;
        threads.spawn(s, format!("{id}-client-in"), move || {
            read_client(id, reader, max, &from_client)
        });
        let writer = FdWriter::new(client.writer, client.writer_kind, shared.hub);
        let mut client_end = Endpoint {
            from: to_relay,
            to: Outbox::Fd(writer),
        };

        let (reason, exit, counters) = match &alarm {
            Ok(alarm) => with_child(
                s,
                &mut threads,
                id,
                peer,
                shared,
                &mut client_end,
                alarm,
                on_spawn,
            ),
            Err(e) => {
                error!("[{id}] cannot create the session's wake-up fd: {e}");
                (EndReason::ChildExited, None, Counters::default())
            }
        };
        finish_writing(&mut client_end.to, shared);
        drop(client_end);
        close();
        threads.join_all(id);
        Summary {
            reason,
            exit,
            counters,
        }
    });
    info!(
        "[{id}] session closed reason={} dur_ms={} in={} out={}{}",
        summary.reason.as_str(),
        started.elapsed().as_millis(),
        summary.counters.messages_in,
        summary.counters.messages_out,
        summary
            .exit
            .map(|e| format!(" child=\"{e}\""))
            .unwrap_or_default()
    );
    summary
}

/// Lets the client take what is still queued for it (final errors
/// included), but never waits on a client that does not read past the
/// grace, and not at all once told to hurry.
fn finish_writing(outbox: &mut Outbox, shared: &Shared) {
    let Outbox::Fd(writer) = outbox else { return };
    let deadline = Instant::now() + shared.limits.shutdown_grace;
    while writer.is_blocked() {
        crossbeam_channel::select! {
            recv(writer.ready()) -> _ => {
                if writer.resume().is_err() {
                    return;
                }
            }
            recv(shared.hurry.receiver()) -> _ => return,
            default(deadline.saturating_duration_since(Instant::now())) => return,
        }
    }
}

/// Spawns the child and relays until the session ends; then ends the
/// child and answers what it left unanswered.
#[allow(clippy::too_many_arguments)]
fn with_child<'scope, 'env>(
    s: &'scope Scope<'scope, 'env>,
    threads: &mut Threads<'scope>,
    id: SessionId,
    peer: &str,
    shared: &Shared,
    client: &mut Endpoint,
    alarm: &'scope Alarm,
    on_spawn: impl FnOnce(u32),
) -> (EndReason, Option<Exit>, Counters) {
    let session_id = id.to_string();
    let env = [
        ("FORKLINE_SESSION_ID", session_id.as_str()),
        ("FORKLINE_PEER", peer),
    ];
    let (mut child, pipes) = match child::spawn(shared.command, &env) {
        Ok(spawned) => spawned,
        Err(e) => {
            warn!("[{id}] {e}");
            let reason = answer_without_child(client, shared, &e.to_string());
            return (reason, None, Counters::default());
        }
    };
    on_spawn(child.pid());
    info!(
        "[{id}] session opened peer={peer} pid={} command=\"{}\"",
        child.pid(),
        shared.command
    );

    let max = shared.limits.max_message_bytes;
    let (from_child, to_relay) = bounded(CHANNEL_CAPACITY);
    let stdout = Interruptible::ending_with(pipes.stdout, alarm, child.exit_watch());
    threads.spawn(s, format!("{id}-child-out"), move || {
        read_child(id, stdout, max, &from_child)
    });
    shared.hub.drain_stderr(id, pipes.stderr);
    let stdin = pipes.stdin;
    if let Err(e) = set_nonblocking(stdin.as_fd()) {
        warn!("[{id}] cannot make the child's stdin non-blocking: {e}");
    }
    let writer = FdWriter::new(stdin.as_fd(), FdKind::NonBlocking, shared.hub);
    let mut child_end = Endpoint {
        from: to_relay,
        to: Outbox::Fd(writer),
    };

    let mut counters = Counters::default();
    let control = Control {
        shutdown: shared.shutdown,
        hurry: shared.hurry,
    };
    let timing = Timing {
        idle_timeout: shared.limits.idle_timeout,
        grace: shared.limits.shutdown_grace,
    };
    let outcome = relay::run(client, &mut child_end, &control, timing, &mut counters);

    // Closing the child's stdin is the polite end (MCP stdio, Shutdown);
    // dropping our receiver stops its stdout reader at the next message.
    drop(child_end);
    drop(stdin);
    let exit = child.stop(shared.limits.shutdown_grace, shared.hurry.alarm());
    if exit.forced {
        info!(
            "[{id}] child pid={} did not exit after its stdin closed; {exit}",
            child.pid()
        );
    }
    shared.hub.release_stderr(id);
    // Wake the stdout reader if an escaped grandchild still holds the pipe.
    alarm.ring();

    let (code, text) = match outcome.reason {
        EndReason::Shutdown => (
            code::SHUTTING_DOWN,
            format!("forkline is shutting down; the MCP server ended ({exit}) before answering"),
        ),
        _ => (
            code::CHILD_GONE,
            format!("the MCP server ended ({exit}) before answering this request"),
        ),
    };
    for request in &outcome.unanswered {
        relay::put_if_free(&mut client.to, Message::error(Some(request), code, &text));
        counters.messages_out += 1;
    }
    (outcome.reason, Some(exit), counters)
}

/// With no child to talk to, answers every request with the spawn error
/// until the client leaves, goes quiet, or the proxy shuts down, so a
/// client sees why in its own error display instead of a bare hang-up.
fn answer_without_child(client: &mut Endpoint, shared: &Shared, why: &str) -> EndReason {
    let idle = shared.limits.idle_timeout.unwrap_or(Duration::MAX);
    loop {
        let deadline = Instant::now().checked_add(idle);
        let inbound = crossbeam_channel::select! {
            recv(client.from) -> inbound => inbound,
            recv(shared.shutdown.receiver()) -> _ => return EndReason::Shutdown,
            default(deadline.map_or(Duration::MAX, |d| d.saturating_duration_since(Instant::now()))) => {
                return EndReason::IdleTimeout;
            }
        };
        let reply = match inbound {
            Err(_) => return EndReason::ClientClosed,
            Ok(Inbound::Refused { id, code, reason }) => Message::error(id.as_ref(), code, &reason),
            Ok(Inbound::Message(m)) => {
                let mut first = None;
                m.kind.for_each_request_id(&mut |id| {
                    first.get_or_insert_with(|| id.clone());
                });
                match first {
                    Some(id) => Message::error(Some(&id), code::CHILD_GONE, why),
                    None => continue,
                }
            }
        };
        if client.to.is_blocked() {
            // A client that sends without reading gets no more answers.
            continue;
        }
        if client.to.put(reply).is_err() {
            return EndReason::ClientClosed;
        }
    }
}

/// Frames, validates and queues what the client sends. Ends at EOF, on a
/// read error, or when the relay is gone.
fn read_client(id: SessionId, reader: impl Read, max: usize, to_relay: &Sender<Inbound>) {
    let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, reader);
    let mut line = Vec::new();
    loop {
        let inbound = match framing::read_frame(&mut reader, max, &mut line) {
            Ok(Frame::Message) => match Message::parse(std::mem::take(&mut line)) {
                Ok(message) => {
                    trace!("[{id}] client: {}", String::from_utf8_lossy(&message.line));
                    Inbound::Message(message)
                }
                Err(invalid) => {
                    debug!("[{id}] refused a client line: {}", invalid.message());
                    Inbound::Refused {
                        id: None,
                        code: invalid.code(),
                        reason: invalid.message(),
                    }
                }
            },
            Ok(Frame::Oversized { len }) => {
                debug!("[{id}] refused a client message of {len} bytes");
                Inbound::Refused {
                    id: message::sniff_id(&line),
                    code: code::TOO_LARGE,
                    reason: format!(
                        "message of {len} bytes exceeds --max-message-bytes ({max}); it was discarded"
                    ),
                }
            }
            Ok(Frame::Eof) => return,
            Err(e) => {
                debug!("[{id}] client read ended: {e}");
                return;
            }
        };
        if to_relay.send(inbound).is_err() {
            return;
        }
    }
}

/// Frames and validates what the child prints; garbage is logged and
/// dropped here, so the client never sees it.
fn read_child(id: SessionId, reader: impl Read, max: usize, to_relay: &Sender<Inbound>) {
    let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, reader);
    let mut line = Vec::new();
    loop {
        let inbound = match framing::read_frame(&mut reader, max, &mut line) {
            Ok(Frame::Message) => match Message::parse(std::mem::take(&mut line)) {
                Ok(message) => {
                    trace!("[{id}] server: {}", String::from_utf8_lossy(&message.line));
                    Inbound::Message(message)
                }
                Err(invalid) => {
                    warn!(
                        "[{id}] dropped a line from the server that is not JSON-RPC: {}",
                        invalid.message()
                    );
                    continue;
                }
            },
            Ok(Frame::Oversized { len }) => {
                warn!(
                    "[{id}] dropped a server message of {len} bytes: over --max-message-bytes ({max})"
                );
                Inbound::Refused {
                    id: message::sniff_id(&line),
                    code: code::TOO_LARGE,
                    reason: format!(
                        "the server's answer of {len} bytes exceeds --max-message-bytes ({max}); it was discarded"
                    ),
                }
            }
            Ok(Frame::Eof) => return,
            Err(e) => {
                debug!("[{id}] server stdout ended: {e}");
                return;
            }
        };
        if to_relay.send(inbound).is_err() {
            return;
        }
    }
}

/// The session's threads, joined by name so a panic is reported.
#[derive(Default)]
struct Threads<'scope> {
    handles: Vec<ScopedJoinHandle<'scope, ()>>,
}

impl<'scope> Threads<'scope> {
    fn spawn<'env>(
        &mut self,
        s: &'scope Scope<'scope, 'env>,
        name: String,
        f: impl FnOnce() + Send + 'scope,
    ) {
        match thread::Builder::new()
            .name(name.clone())
            .stack_size(IO_STACK_BYTES)
            .spawn_scoped(s, f)
        {
            Ok(handle) => self.handles.push(handle),
            // Its channel ends were moved into `f` and dropped with it, so
            // the session sees that side as closed and ends.
            Err(e) => error!("cannot start thread {name}: {e}"),
        }
    }

    fn join_all(self, id: SessionId) {
        for handle in self.handles {
            let name = handle.thread().name().unwrap_or("?").to_string();
            if handle.join().is_err() {
                error!("[{id}] thread {name} panicked");
            }
        }
    }
}
