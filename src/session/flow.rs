//! The rules of a session, apart from its I/O: which requests await an
//! answer, when the session is idle, how it winds down.
//!
//! Messages do not pass through here on their way: two pump threads per
//! session copy them — the client's into the child's stdin, the child's
//! into the client — and, for each one, call into the shared [`Flow`]
//! under one short lock. A pump that cannot write waits, and so stops
//! reading its source: that is the backpressure, and why no queue grows.
//! The supervisor ([`supervise`], on the session's worker thread) hears
//! from the pumps over a crossbeam channel, and from the proxy through the
//! shutdown triggers, and decides when the session ends.
//!
//! An earlier design routed every message through a relay thread between
//! reader and writer threads. It cost four thread hand-offs per round trip
//! and five threads per session; this one costs none and two (see
//! docs/benchmarks.md). It is all plain data and channels, so it is
//! unit-tested without sockets, and a recorder (`Tap`) or an HTTP front-end
//! calls the same `Flow` methods a pump does.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::proto::message::{Id, Message};
use crate::shutdown::Trigger;

/// Which way a message went, for taps (counters, tapes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client to server.
    In,
    /// Server to client, including errors forkline sends on its behalf.
    Out,
}

/// Observes every message a session passes on. Recording and metrics
/// attach here without the pumps knowing about them.
pub trait Tap: Send {
    fn message(&mut self, direction: Direction, message: &Message);
}

/// Messages and bytes each way.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    pub messages_in: u64,
    pub bytes_in: u64,
    pub messages_out: u64,
    pub bytes_out: u64,
}

impl Tap for Counters {
    fn message(&mut self, direction: Direction, message: &Message) {
        let bytes = message.line.len() as u64 + 1;
        match direction {
            Direction::In => {
                self.messages_in += 1;
                self.bytes_in += bytes;
            }
            Direction::Out => {
                self.messages_out += 1;
                self.bytes_out += bytes;
            }
        }
    }
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    ClientClosed,
    ChildExited,
    IdleTimeout,
    Shutdown,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::ClientClosed => "client_closed",
            EndReason::ChildExited => "child_exited",
            EndReason::IdleTimeout => "idle_timeout",
            EndReason::Shutdown => "shutdown",
        }
    }
}

/// What a pump tells the supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The client sent EOF: it may still be reading answers.
    ClientEof,
    /// The client is gone for good: reset, or a write to it failed.
    ClientGone,
    /// The child closed its stdout or exited.
    ChildEnded,
    /// The last unanswered request got its answer while closing.
    Drained,
}

/// The session state both pumps and the supervisor share.
pub struct Flow {
    state: Mutex<State>,
    started: Instant,
    /// Milliseconds since `started` of the last message either way.
    last_activity_ms: AtomicU64,
    /// Set at shutdown: client requests are answered -32004, not forwarded.
    refusing: AtomicBool,
    events: Sender<Event>,
}

struct State {
    pending: HashSet<Id>,
    tap: Counters,
    /// Once closing, a `Drained` event goes out when `pending` empties.
    closing: bool,
}

impl Flow {
    pub fn new(events: Sender<Event>) -> Flow {
        Flow {
            state: Mutex::new(State {
                pending: HashSet::new(),
                tap: Counters::default(),
                closing: false,
            }),
            started: Instant::now(),
            last_activity_ms: AtomicU64::new(0),
            refusing: AtomicBool::new(false),
            events,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update is a single statement; a poisoned lock is consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn touch(&self) {
        self.last_activity_ms
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Whether new client requests are being turned away (shutdown).
    pub fn is_refusing(&self) -> bool {
        self.refusing.load(Ordering::Relaxed)
    }

    /// Books a client message about to be written to the child.
    pub fn client_to_child(&self, message: &Message) {
        self.touch();
        let mut state = self.lock();
        message.kind.for_each_request_id(&mut |id| {
            state.pending.insert(id.clone());
        });
        state.tap.message(Direction::In, message);
    }

    /// Books a message about to be written to the client: a child's, or an
    /// error forkline sends.
    pub fn to_client(&self, message: &Message) {
        self.touch();
        let drained = {
            let mut state = self.lock();
            let before = state.pending.len();
            message.kind.for_each_response_id(&mut |id| {
                state.pending.remove(id);
            });
            state.tap.message(Direction::Out, message);
            state.closing && before > 0 && state.pending.is_empty()
        };
        if drained {
            let _ = self.events.send(Event::Drained);
        }
    }

    /// For an answer the child sent but forkline had to drop (oversized):
    /// true if `id` was awaited, so the client must hear about it.
    pub fn was_awaited(&self, id: &Id) -> bool {
        self.lock().pending.contains(id)
    }

    /// Tells the supervisor something happened.
    pub fn report(&self, event: Event) {
        let _ = self.events.send(event);
    }

    fn begin_closing(&self, refuse: bool) -> bool {
        if refuse {
            self.refusing.store(true, Ordering::Relaxed);
        }
        let mut state = self.lock();
        state.closing = true;
        state.pending.is_empty()
    }

    fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_activity_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }

    /// The requests still awaiting an answer, sorted, and the counters.
    pub fn finish(&self) -> (Vec<Id>, Counters) {
        let state = self.lock();
        let mut unanswered: Vec<Id> = state.pending.iter().cloned().collect();
        unanswered.sort_by(|a, b| a.as_json().cmp(b.as_json()));
        (unanswered, state.tap)
    }
}

/// The supervisor's timing rules.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub idle_timeout: Option<Duration>,
    /// How long unanswered requests may wait once the session is closing.
    pub grace: Duration,
}

/// The proxy-wide broadcasts a session listens to.
pub struct Control<'a> {
    /// Stop forwarding client requests; answer what is in flight within
    /// the grace.
    pub shutdown: &'a Trigger,
    /// Skip what is left of the grace.
    pub hurry: &'a Trigger,
}

/// Decides when the session ends. Blocks the calling thread until then;
/// wakes only for an event, a broadcast or a deadline — never to poll.
pub fn supervise(
    flow: &Flow,
    events: &Receiver<Event>,
    control: &Control,
    timing: Timing,
) -> EndReason {
    // Once closing: why, and until when unanswered requests may wait.
    let mut closing: Option<(EndReason, Instant)> = None;
    let mut shutting_down = false;
    let mut hurried = false;
    loop {
        let deadline = match closing {
            Some((_, until)) => Some(until),
            None => timing
                .idle_timeout
                .map(|idle| Instant::now() + idle.saturating_sub(flow.idle_for())),
        };
        let timeout = deadline.map_or(Duration::MAX, |d| {
            d.saturating_duration_since(Instant::now())
        });
        let never = crossbeam_channel::never();
        let shutdown = if shutting_down {
            &never
        } else {
            control.shutdown.receiver()
        };
        let hurry = if hurried || closing.is_none() {
            &never
        } else {
            control.hurry.receiver()
        };
        crossbeam_channel::select! {
            recv(events) -> event => match event {
                Ok(Event::ClientEof) => {
                    if flow.begin_closing(false) {
                        return closing.map_or(EndReason::ClientClosed, |(reason, _)| reason);
                    }
                    let until = Instant::now() + timing.grace;
                    closing = Some(closing.map_or((EndReason::ClientClosed, until), |(r, u)| (r, u.min(until))));
                }
                Ok(Event::ClientGone) => return EndReason::ClientClosed,
                Ok(Event::ChildEnded) => return closing.map_or(EndReason::ChildExited, |(reason, _)| reason),
                Ok(Event::Drained) => {
                    if let Some((reason, _)) = closing {
                        return reason;
                    }
                }
                // Both pumps gone without a word: nothing left to supervise.
                Err(_) => return closing.map_or(EndReason::ChildExited, |(reason, _)| reason),
            },
            recv(shutdown) -> _ => {
                shutting_down = true;
                if flow.begin_closing(true) {
                    return EndReason::Shutdown;
                }
                let until = if control.hurry.has_fired() { Instant::now() } else { Instant::now() + timing.grace };
                closing = Some((EndReason::Shutdown, closing.map_or(until, |(_, u)| u.min(until))));
            }
            recv(hurry) -> _ => {
                hurried = true;
                closing = closing.map(|(reason, _)| (reason, Instant::now()));
            }
            default(timeout) => match closing {
                Some((reason, _)) => return reason,
                // Activity since the deadline was set moves it on.
                None if flow.idle_for() >= timing.idle_timeout.unwrap_or(Duration::MAX) => {
                    return EndReason::IdleTimeout;
                }
                None => {}
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::unbounded;

    fn msg(json: &str) -> Message {
        Message::parse(json.as_bytes().to_vec()).expect("valid test message")
    }

    struct Triggers {
        shutdown: Trigger,
        hurry: Trigger,
    }

    fn triggers() -> Triggers {
        Triggers {
            shutdown: Trigger::new().expect("trigger"),
            hurry: Trigger::new().expect("trigger"),
        }
    }

    fn timing(idle_ms: Option<u64>, grace_ms: u64) -> Timing {
        Timing {
            idle_timeout: idle_ms.map(Duration::from_millis),
            grace: Duration::from_millis(grace_ms),
        }
    }

    fn run(flow: &Flow, events: &Receiver<Event>, t: &Triggers, timing: Timing) -> EndReason {
        supervise(
            flow,
            events,
            &Control {
                shutdown: &t.shutdown,
                hurry: &t.hurry,
            },
            timing,
        )
    }

    #[test]
    fn tracks_requests_until_answered_and_counts_both_ways() {
        let (tx, _rx) = unbounded();
        let flow = Flow::new(tx);
        flow.client_to_child(&msg(r#"{"jsonrpc":"2.0","id":1,"method":"a"}"#));
        flow.client_to_child(&msg(r#"{"jsonrpc":"2.0","id":"x","method":"b"}"#));
        flow.client_to_child(&msg(r#"{"jsonrpc":"2.0","method":"notifications/n"}"#));
        flow.to_client(&msg(r#"{"jsonrpc":"2.0","id":1,"result":{}}"#));
        assert!(flow.was_awaited(&Id::from_json("\"x\"")));
        assert!(!flow.was_awaited(&Id::from_json("1")));
        let (unanswered, counters) = flow.finish();
        assert_eq!(unanswered, vec![Id::from_json("\"x\"")]);
        assert_eq!((counters.messages_in, counters.messages_out), (3, 1));
    }

    #[test]
    fn the_child_ending_ends_the_session() {
        let (tx, rx) = unbounded();
        let flow = Flow::new(tx);
        flow.report(Event::ChildEnded);
        assert_eq!(
            run(&flow, &rx, &triggers(), timing(None, 1000)),
            EndReason::ChildExited
        );
    }

    #[test]
    fn a_half_closed_client_waits_for_its_answers() {
        let (tx, rx) = unbounded();
        let flow = Flow::new(tx);
        let t = triggers();
        flow.client_to_child(&msg(r#"{"jsonrpc":"2.0","id":1,"method":"a"}"#));
        std::thread::scope(|s| {
            let supervisor = s.spawn(|| run(&flow, &rx, &t, timing(None, 60_000)));
            flow.report(Event::ClientEof);
            flow.to_client(&msg(r#"{"jsonrpc":"2.0","id":1,"result":{}}"#));
            assert_eq!(
                supervisor.join().expect("supervisor"),
                EndReason::ClientClosed
            );
        });
        assert!(flow.finish().0.is_empty());
    }

    #[test]
    fn a_client_eof_with_nothing_pending_ends_at_once() {
        let (tx, rx) = unbounded();
        let flow = Flow::new(tx);
        flow.report(Event::ClientEof);
        assert_eq!(
            run(&flow, &rx, &triggers(), timing(None, 60_000)),
            EndReason::ClientClosed
        );
    }

    #[test]
    fn shutdown_refuses_new_requests_and_waits_for_answers() {
        let (tx, rx) = unbounded();
        let flow = Flow::new(tx);
        let t = triggers();
        flow.client_to_child(&msg(r#"{"jsonrpc":"2.0","id":1,"method":"a"}"#));
        flow.client_to_child(&msg(r#"{"jsonrpc":"2.0","id":2,"method":"a"}"#));
        std::thread::scope(|s| {
            let supervisor = s.spawn(|| run(&flow, &rx, &t, timing(None, 200)));
            t.shutdown.fire();
            flow.to_client(&msg(r#"{"jsonrpc":"2.0","id":1,"result":{}}"#));
            assert_eq!(supervisor.join().expect("supervisor"), EndReason::Shutdown);
        });
        assert!(flow.is_refusing());
        assert_eq!(flow.finish().0, vec![Id::from_json("2")], "left for -32004");
    }

    #[test]
    fn shutdown_ends_as_soon_as_the_last_answer_arrives() {
        let (tx, rx) = unbounded();
        let flow = Flow::new(tx);
        let t = triggers();
        flow.client_to_child(&msg(r#"{"jsonrpc":"2.0","id":1,"method":"a"}"#));
        std::thread::scope(|s| {
            let supervisor = s.spawn(|| run(&flow, &rx, &t, timing(None, 3_600_000)));
            t.shutdown.fire();
            flow.to_client(&msg(r#"{"jsonrpc":"2.0","id":1,"result":{}}"#));
            assert_eq!(
                supervisor.join().expect("ends long before the grace"),
                EndReason::Shutdown
            );
        });
    }

    #[test]
    fn hurry_cuts_the_grace_short() {
        let (tx, rx) = unbounded();
        let flow = Flow::new(tx);
        let t = triggers();
        flow.client_to_child(&msg(r#"{"jsonrpc":"2.0","id":1,"method":"a"}"#));
        t.shutdown.fire();
        t.hurry.fire();
        assert_eq!(
            run(&flow, &rx, &t, timing(None, 3_600_000)),
            EndReason::Shutdown
        );
    }

    #[test]
    fn idle_timeout_ends_a_quiet_session_and_activity_defers_it() {
        let (tx, rx) = unbounded();
        let flow = Flow::new(tx);
        let t = triggers();
        let started = Instant::now();
        std::thread::scope(|s| {
            let supervisor = s.spawn(|| run(&flow, &rx, &t, timing(Some(100), 1000)));
            for _ in 0..4 {
                std::thread::sleep(Duration::from_millis(50));
                flow.to_client(&msg(r#"{"jsonrpc":"2.0","method":"tick"}"#));
            }
            assert_eq!(
                supervisor.join().expect("supervisor"),
                EndReason::IdleTimeout
            );
        });
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "activity kept it alive"
        );
    }

    #[test]
    fn a_gone_client_ends_the_session_even_with_requests_pending() {
        let (tx, rx) = unbounded();
        let flow = Flow::new(tx);
        flow.client_to_child(&msg(r#"{"jsonrpc":"2.0","id":1,"method":"a"}"#));
        flow.report(Event::ClientGone);
        assert_eq!(
            run(&flow, &rx, &triggers(), timing(None, 60_000)),
            EndReason::ClientClosed
        );
    }
}
