//! One session from its first byte to its last: spawn the child, start the
//! two pumps, supervise, end the child, answer what was left unanswered,
//! and join everything.
//!
//! Per session: the supervisor on the calling (worker) thread, and two
//! scoped pump threads — `client-in` reads the client, checks each line and
//! writes it to the child's stdin; `child-out` reads the child's stdout,
//! checks each line and writes it to the client. The child's stderr goes to
//! the shared I/O hub. Every thread a session starts is scoped to it, so
//! none can outlive it.

use std::io::{BufReader, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Mutex;
use std::thread::{self, Scope, ScopedJoinHandle};
use std::time::Instant;

use log::{debug, error, info, trace, warn};

use crate::child::process::{self as child, Exit};
use crate::child::stderr::StderrLog;
use crate::config::{ChildCommand, Limits};
use crate::proto::framing::{self, Frame};
use crate::proto::message::{self, Message, code};
use crate::session::flow::{self, Control, Counters, EndReason, Event, Flow, Timing};
use crate::session::table::SessionId;
use crate::session::writer::{FdKind, LineWriter, WriteError};
use crate::shutdown::Trigger;
use crate::sys::interrupt::{Alarm, Interruptible, set_nonblocking};

/// The pumps need little stack: a pump parses one JSON envelope
/// (serde_json's nesting limit bounds its recursion) and copies it.
const PUMP_STACK_BYTES: usize = 256 * 1024;

const READ_BUFFER_BYTES: usize = 4 * 1024;

/// What every session of one proxy shares.
pub struct Shared<'a> {
    pub command: &'a ChildCommand,
    pub limits: &'a Limits,
    /// Fired on the first SIGTERM/SIGINT.
    pub shutdown: &'a Trigger,
    /// Fired on the second: skip every grace.
    pub hurry: &'a Trigger,
    pub hub: &'a StderrLog,
}

/// The client end of a byte-stream session (a socket, or forkline's own
/// stdin/stdout).
pub struct ClientStream<'a, R> {
    pub reader: R,
    /// Where the client's messages are written, and how.
    pub writer: BorrowedFd<'a>,
    pub writer_kind: FdKind,
    /// Must wake a thread blocked reading `reader`, and leave `writer`
    /// usable for the last answers.
    pub stop_reading: &'a (dyn Fn() + Sync),
}

/// How a session went, for the caller's exit status and tests.
#[derive(Debug)]
pub struct Summary {
    pub reason: EndReason,
    /// `None` when the child could not be started.
    pub exit: Option<Exit>,
    pub counters: Counters,
}

/// Where the client pump sends what it reads.
enum Destination<'a> {
    Child(LineWriter<'a>),
    /// No child could be started: every request is answered with this.
    Nowhere(&'a str),
}

/// Runs a session to its end. Blocks the calling thread for the session's
/// life; every thread it starts is joined before it returns. `on_spawn`
/// learns the child's pid.
pub fn run<R: Read + Send>(
    id: SessionId,
    peer: &str,
    shared: &Shared,
    client: ClientStream<'_, R>,
    on_spawn: impl FnOnce(u32),
) -> Summary {
    let started = Instant::now();
    let summary = match Alarm::new() {
        Ok(alarm) => run_with_alarm(id, peer, shared, client, on_spawn, &alarm),
        Err(e) => {
            error!("[{id}] cannot create the session's wake-up fd: {e}");
            Summary {
                reason: EndReason::ChildExited,
                exit: None,
                counters: Counters::default(),
            }
        }
    };
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

fn run_with_alarm<R: Read + Send>(
    id: SessionId,
    peer: &str,
    shared: &Shared,
    client: ClientStream<'_, R>,
    on_spawn: impl FnOnce(u32),
    alarm: &Alarm,
) -> Summary {
    let client_out = Mutex::new(LineWriter::new(client.writer, client.writer_kind, alarm));
    // While the client pump waits on a full child stdin it is not reading
    // the client; a reset connection must still end the session.
    let client_socket = (client.writer_kind == FdKind::Socket).then_some(client.writer);
    let (events_tx, events) = crossbeam_channel::unbounded();
    let flow = Flow::new(events_tx);
    let control = Control {
        shutdown: shared.shutdown,
        hurry: shared.hurry,
    };
    let timing = Timing {
        idle_timeout: shared.limits.idle_timeout,
        grace: shared.limits.shutdown_grace,
    };
    let max = shared.limits.max_message_bytes;
    let reader = client.reader;

    let session_id = id.to_string();
    let env = [
        ("FORKLINE_SESSION_ID", session_id.as_str()),
        ("FORKLINE_PEER", peer),
    ];
    let (mut child, pipes) = match child::spawn(shared.command, &env) {
        Ok(spawned) => spawned,
        Err(e) => {
            warn!("[{id}] {e}");
            let why = e.to_string();
            let nowhere = Destination::Nowhere(&why);
            let reason = thread::scope(|s| {
                let mut threads = Threads::default();
                threads.spawn(s, format!("{id}-client-in"), || {
                    pump_client(id, reader, max, &flow, &nowhere, &client_out)
                });
                let reason = flow::supervise(&flow, &events, &control, timing);
                // Also ends a wait for room to answer a client that stopped reading.
                alarm.ring();
                (client.stop_reading)();
                threads.join_all(id);
                reason
            });
            return Summary {
                reason,
                exit: None,
                counters: flow.finish().1,
            };
        }
    };
    on_spawn(child.pid());
    info!(
        "[{id}] session opened peer={peer} pid={} command=\"{}\"",
        child.pid(),
        shared.command
    );

    shared.hub.watch(id, pipes.stderr);
    let stdin = pipes.stdin;
    if let Err(e) = set_nonblocking(stdin.as_fd()) {
        warn!("[{id}] cannot make the child's stdin non-blocking: {e}");
    }
    let child_exit = child.exit_watch();
    let to_child = Destination::Child(
        LineWriter::new(stdin.as_fd(), FdKind::NonBlocking, alarm).giving_up_on(client_socket),
    );
    let child_exit_fd = child_exit.as_ref().map(|fd| fd.as_fd());
    let stdout = Interruptible::ending_with(pipes.stdout, alarm, child_exit_fd);

    let child_out = ClientOut {
        lock: &client_out,
        give_up_on: child_exit_fd,
    };
    let reason = thread::scope(|s| {
        let mut threads = Threads::default();
        threads.spawn(s, format!("{id}-client-in"), || {
            pump_client(id, reader, max, &flow, &to_child, &client_out)
        });
        threads.spawn(s, format!("{id}-child-out"), || {
            pump_child(id, stdout, max, &flow, &child_out)
        });
        let reason = flow::supervise(&flow, &events, &control, timing);
        // Both pumps give up their waits and reads; the client's reader is
        // woken separately, leaving its writer for the last answers.
        alarm.ring();
        (client.stop_reading)();
        threads.join_all(id);
        reason
    });

    // Closing its stdin is the polite end (MCP stdio, "Shutdown").
    drop(stdin);
    let exit = child.stop(shared.limits.shutdown_grace, shared.hurry.alarm());
    if exit.forced {
        info!(
            "[{id}] child pid={} did not exit after its stdin closed; {exit}",
            child.pid()
        );
    }
    shared.hub.release(id);

    let (unanswered, mut counters) = flow.finish();
    let (code, text) = match reason {
        EndReason::Shutdown => (
            code::SHUTTING_DOWN,
            format!("forkline is shutting down; the MCP server ended ({exit}) before answering"),
        ),
        _ => (
            code::CHILD_GONE,
            format!("the MCP server ended ({exit}) before answering this request"),
        ),
    };
    // The alarm has rung: these go out only if the client has room now.
    let out = client_out.lock().unwrap_or_else(|e| e.into_inner());
    for request in &unanswered {
        if out
            .write_line(&Message::error(Some(request), code, &text).line)
            .is_err()
        {
            break;
        }
        counters.messages_out += 1;
    }
    Summary {
        reason,
        exit: Some(exit),
        counters,
    }
}

/// The child pump's view of the client writer: the same lock, but a wait
/// for room also ends when the child exits.
struct ClientOut<'a> {
    lock: &'a Mutex<LineWriter<'a>>,
    give_up_on: Option<BorrowedFd<'a>>,
}

impl ClientOut<'_> {
    fn write(&self, message: &Message) -> Result<(), WriteError> {
        let writer = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        writer
            .giving_up_on(self.give_up_on)
            .write_line(&message.line)
    }
}

/// Sends forkline's own reply to the client, under the client lock.
fn reply(flow: &Flow, client_out: &Mutex<LineWriter>, message: Message) -> Result<(), WriteError> {
    let writer = client_out.lock().unwrap_or_else(|e| e.into_inner());
    writer.write_line(&message.line)?;
    drop(writer);
    flow.to_client(&message);
    Ok(())
}

/// Reads, checks and forwards what the client sends, until it ends.
fn pump_client(
    id: SessionId,
    reader: impl Read,
    max: usize,
    flow: &Flow,
    destination: &Destination,
    client_out: &Mutex<LineWriter>,
) {
    let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, reader);
    let mut line = Vec::new();
    loop {
        let replied = match framing::read_frame(&mut reader, max, &mut line) {
            Ok(Frame::Message) => match Message::parse(std::mem::take(&mut line)) {
                Ok(message) => {
                    trace!("[{id}] client: {}", String::from_utf8_lossy(&message.line));
                    match forward(flow, destination, client_out, message) {
                        Ok(()) => Ok(()),
                        Err(WriteError::GaveUp) => {
                            flow.report(Event::ClientGone);
                            return;
                        }
                        Err(e) => Err(e),
                    }
                }
                Err(invalid) => {
                    debug!("[{id}] refused a client line: {}", invalid.message());
                    reply(
                        flow,
                        client_out,
                        Message::error(None, invalid.code(), &invalid.message()),
                    )
                }
            },
            Ok(Frame::Oversized { len }) => {
                debug!("[{id}] refused a client message of {len} bytes");
                let text = format!(
                    "message of {len} bytes exceeds --max-message-bytes ({max}); it was discarded"
                );
                reply(
                    flow,
                    client_out,
                    Message::error(message::sniff_id(&line).as_ref(), code::TOO_LARGE, &text),
                )
            }
            Ok(Frame::Eof) => {
                flow.report(Event::ClientEof);
                return;
            }
            Err(e) => {
                debug!("[{id}] client read ended: {e}");
                flow.report(Event::ClientGone);
                return;
            }
        };
        match replied {
            Ok(()) => {}
            Err(WriteError::Ending) => return,
            Err(_) => {
                flow.report(Event::ClientGone);
                return;
            }
        }
    }
}

/// Sends one valid client message where it goes. Only errors writing to
/// the client come back; a child that stopped reading is its stdout's
/// business (it is exiting, and its requests get -32002).
fn forward(
    flow: &Flow,
    destination: &Destination,
    client_out: &Mutex<LineWriter>,
    message: Message,
) -> Result<(), WriteError> {
    if flow.is_refusing() {
        return answer_requests(
            flow,
            client_out,
            &message,
            code::SHUTTING_DOWN,
            "forkline is shutting down",
        );
    }
    match destination {
        Destination::Nowhere(why) => {
            answer_requests(flow, client_out, &message, code::CHILD_GONE, why)
        }
        Destination::Child(to_child) => {
            flow.client_to_child(&message);
            match to_child.write_line(&message.line) {
                Ok(()) | Err(WriteError::Io(_)) => Ok(()),
                Err(e) => Err(e),
            }
        }
    }
}

/// Answers every request in `message` with an error instead of forwarding.
fn answer_requests(
    flow: &Flow,
    client_out: &Mutex<LineWriter>,
    message: &Message,
    code: i64,
    why: &str,
) -> Result<(), WriteError> {
    let mut ids = Vec::new();
    message
        .kind
        .for_each_request_id(&mut |id| ids.push(id.clone()));
    for request in ids {
        reply(flow, client_out, Message::error(Some(&request), code, why))?;
    }
    Ok(())
}

/// Reads and checks what the child prints and passes it to the client;
/// garbage is logged and dropped here, so the client never sees it.
fn pump_child(id: SessionId, reader: impl Read, max: usize, flow: &Flow, client_out: &ClientOut) {
    let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, reader);
    let mut line = Vec::new();
    loop {
        let message = match framing::read_frame(&mut reader, max, &mut line) {
            Ok(Frame::Message) => match Message::parse(std::mem::take(&mut line)) {
                Ok(message) => {
                    trace!("[{id}] server: {}", String::from_utf8_lossy(&message.line));
                    message
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
                // The request it answered must not wait forever.
                match message::sniff_id(&line).filter(|request| flow.was_awaited(request)) {
                    Some(request) => Message::error(
                        Some(&request),
                        code::TOO_LARGE,
                        &format!(
                            "the server's answer of {len} bytes exceeds --max-message-bytes ({max}); it was discarded"
                        ),
                    ),
                    None => continue,
                }
            }
            Ok(Frame::Eof) | Err(_) => {
                flow.report(Event::ChildEnded);
                return;
            }
        };
        match client_out.write(&message) {
            Ok(()) => flow.to_client(&message),
            Err(WriteError::Ending) => return,
            Err(WriteError::GaveUp) => {
                flow.report(Event::ChildEnded);
                return;
            }
            Err(WriteError::Io(e)) => {
                debug!("[{id}] client write failed: {e}");
                flow.report(Event::ClientGone);
                return;
            }
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
            .stack_size(PUMP_STACK_BYTES)
            .spawn_scoped(s, f)
        {
            Ok(handle) => self.handles.push(handle),
            // Without its pump the session cannot work; the supervisor ends
            // it at the idle timeout or shutdown.
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
