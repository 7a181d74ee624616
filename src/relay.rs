//! The heart of a session: one `select` loop that moves messages between a
//! client and its child, and sees only channels.
//!
//! Readers and writers live on their own threads (blocking I/O cannot sit
//! in a `select`); the relay never blocks on I/O, so shutdown, the idle
//! timer and both directions stay live at all times. It holds at most one
//! message per direction that its destination could not take yet; while it
//! does, it stops reading the source, so a peer that does not read pushes
//! back on the other instead of growing a buffer. What it does not know
//! about: sockets, HTTP, pipes. A byte-stream client, an HTTP front-end or
//! a test all attach the same way, through an [`Endpoint`].

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Select, Sender, TrySendError};

use crate::message::{Id, Message, code};
use crate::trigger::Trigger;

/// What a reader thread hands the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    Message(Message),
    /// A line that was not forwarded. From the client, the error goes back
    /// to it; from the child, it reaches the client only if `id` names a
    /// request still awaiting its answer (the garbage itself never does).
    Refused {
        id: Option<Id>,
        code: i64,
        reason: String,
    },
}

/// One side of the relay: what arrives from it, and where to send to it.
/// Dropping `from`'s sender (the reader ends) means that side closed.
pub struct Endpoint {
    pub from: Receiver<Inbound>,
    pub to: Sender<Message>,
}

/// Which way a message went, for taps (counters, tapes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client to server.
    In,
    /// Server to client, including errors forkline sends on its behalf.
    Out,
}

/// Observes every message the relay passes on. Recording and metrics
/// attach here without the relay knowing about them.
pub trait Tap {
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

/// The relay's timing rules.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub idle_timeout: Option<Duration>,
    /// How long unanswered requests may wait once the session is closing.
    pub grace: Duration,
}

/// The proxy-wide broadcasts a relay listens to.
pub struct Control<'a> {
    /// Stop reading the client; answer what is in flight within the grace.
    pub shutdown: &'a Trigger,
    /// Skip what is left of the grace.
    pub hurry: &'a Trigger,
}

/// How the relay ended.
#[derive(Debug)]
pub struct Outcome {
    pub reason: EndReason,
    /// Client requests the child never answered. The caller answers them
    /// once it knows how the child ended (-32002).
    pub unanswered: Vec<Id>,
}

/// Runs until the session ends. Blocks the calling thread, never on I/O.
pub fn run(
    client: &Endpoint,
    child: &Endpoint,
    control: &Control,
    timing: Timing,
    tap: &mut dyn Tap,
) -> Outcome {
    Relay {
        client,
        child,
        timing,
        tap,
        pending: HashSet::new(),
        to_child: None,
        to_client: None,
        closing: None,
    }
    .run(control)
}

struct Relay<'a> {
    client: &'a Endpoint,
    child: &'a Endpoint,
    timing: Timing,
    tap: &'a mut dyn Tap,
    /// Client requests awaiting the child's answer.
    pending: HashSet<Id>,
    /// A message its destination could not take yet.
    to_child: Option<Message>,
    to_client: Option<Message>,
    /// Once the client is gone or shutdown began: why, and until when
    /// unanswered requests may still be answered.
    closing: Option<(EndReason, Instant)>,
}

impl Relay<'_> {
    fn run(mut self, control: &Control) -> Outcome {
        let mut last_activity = Instant::now();
        loop {
            if let Some((reason, _)) = self.closing {
                if self.pending.is_empty() {
                    return self.end(reason);
                }
            }
            let deadline = match self.closing {
                Some((_, until)) => Some(until),
                None => self.timing.idle_timeout.map(|idle| last_activity + idle),
            };

            let mut sel = Select::new();
            let reading_client =
                self.closing.is_none() && self.to_child.is_none() && self.to_client.is_none();
            let op_from_client = reading_client.then(|| sel.recv(&self.client.from));
            let op_from_child = self.to_client.is_none().then(|| sel.recv(&self.child.from));
            let op_to_child = self.to_child.is_some().then(|| sel.send(&self.child.to));
            let op_to_client = self.to_client.is_some().then(|| sel.send(&self.client.to));
            let shutting_down = matches!(self.closing, Some((EndReason::Shutdown, _)));
            let op_shutdown = (!shutting_down).then(|| sel.recv(control.shutdown.receiver()));
            let op_hurry = (self.closing.is_some() && !control.hurry.has_fired())
                .then(|| sel.recv(control.hurry.receiver()));

            let selected = match deadline {
                Some(deadline) => match sel.select_deadline(deadline) {
                    Ok(op) => op,
                    Err(_) => return self.deadline_passed(),
                },
                None => sel.select(),
            };
            let index = Some(selected.index());

            if index == op_from_client {
                match selected.recv(&self.client.from) {
                    Ok(inbound) => {
                        last_activity = Instant::now();
                        self.on_client(inbound);
                    }
                    Err(_) => self
                        .begin_closing(EndReason::ClientClosed, Instant::now() + self.timing.grace),
                }
            } else if index == op_from_child {
                match selected.recv(&self.child.from) {
                    Ok(inbound) => {
                        last_activity = Instant::now();
                        self.on_child(inbound);
                    }
                    Err(_) => {
                        let reason = self
                            .closing
                            .map_or(EndReason::ChildExited, |(reason, _)| reason);
                        return self.end(reason);
                    }
                }
            } else if index == op_to_child {
                let message = self.to_child.take().expect("selected only when Some");
                if let Err(e) = selected.send(&self.child.to, message) {
                    // The child's stdin is gone; it is exiting. Its stdout
                    // closing will end the session with the right reason.
                    log::debug!(
                        "dropped a message for a child that stopped reading: {:?}",
                        e.into_inner().kind
                    );
                }
            } else if index == op_to_client {
                let message = self.to_client.take().expect("selected only when Some");
                if selected.send(&self.client.to, message).is_err() {
                    return self.end(EndReason::ClientClosed);
                }
            } else if index == op_shutdown {
                let _ = selected.recv(control.shutdown.receiver());
                let until = if control.hurry.has_fired() {
                    Instant::now()
                } else {
                    Instant::now() + self.timing.grace
                };
                self.begin_closing(EndReason::Shutdown, until);
            } else if index == op_hurry {
                let _ = selected.recv(control.hurry.receiver());
                if let Some((reason, _)) = self.closing {
                    self.closing = Some((reason, Instant::now()));
                }
            }
        }
    }

    fn begin_closing(&mut self, reason: EndReason, until: Instant) {
        let until = match self.closing {
            Some((_, earlier)) => earlier.min(until),
            None => until,
        };
        self.closing = Some((reason, until));
    }

    fn on_client(&mut self, inbound: Inbound) {
        match inbound {
            Inbound::Message(message) => {
                message.kind.for_each_request_id(&mut |id| {
                    self.pending.insert(id.clone());
                });
                self.tap.message(Direction::In, &message);
                self.to_child = try_send(&self.child.to, message);
            }
            Inbound::Refused { id, code, reason } => {
                self.send_client(Message::error(id.as_ref(), code, &reason))
            }
        }
    }

    fn on_child(&mut self, inbound: Inbound) {
        match inbound {
            Inbound::Message(message) => {
                message.kind.for_each_response_id(&mut |id| {
                    self.pending.remove(id);
                });
                self.send_client(message);
            }
            Inbound::Refused {
                id: Some(id),
                code,
                reason,
            } if self.pending.remove(&id) => {
                self.send_client(Message::error(Some(&id), code, &reason));
            }
            Inbound::Refused { .. } => {}
        }
    }

    fn send_client(&mut self, message: Message) {
        self.tap.message(Direction::Out, &message);
        self.to_client = try_send(&self.client.to, message);
    }

    fn deadline_passed(mut self) -> Outcome {
        match self.closing {
            Some((EndReason::Shutdown, _)) => {
                // PRODUCT.md, Shutdown: what the grace did not see answered
                // gets -32004. Best effort: a client that stopped reading
                // does not hold the shutdown up.
                let mut unanswered: Vec<Id> = self.pending.drain().collect();
                unanswered.sort_by(|a, b| a.as_json().cmp(b.as_json()));
                if let Some(message) = self.to_client.take() {
                    let _ = self.client.to.try_send(message);
                }
                for id in unanswered {
                    let message = Message::error(
                        Some(&id),
                        code::SHUTTING_DOWN,
                        "forkline is shutting down; the request was not answered in time",
                    );
                    self.tap.message(Direction::Out, &message);
                    let _ = self.client.to.try_send(message);
                }
                self.end(EndReason::Shutdown)
            }
            Some((reason, _)) => self.end(reason),
            None => self.end(EndReason::IdleTimeout),
        }
    }

    fn end(mut self, reason: EndReason) -> Outcome {
        // A message still waiting for the client goes first, best effort.
        if let Some(message) = self.to_client.take() {
            let _ = self.client.to.try_send(message);
        }
        let mut unanswered: Vec<Id> = self.pending.into_iter().collect();
        unanswered.sort_by(|a, b| a.as_json().cmp(b.as_json()));
        Outcome { reason, unanswered }
    }
}

/// Sends without blocking; hands the message back if the channel is full.
fn try_send(to: &Sender<Message>, message: Message) -> Option<Message> {
    match to.try_send(message) {
        Ok(()) => None,
        Err(TrySendError::Full(message)) => Some(message),
        // The receiving side is gone; its reader closing ends the session.
        Err(TrySendError::Disconnected(_)) => None,
    }
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Kind;
    use crossbeam_channel::bounded;

    /// The far ends of both endpoints, as a test drives them.
    struct Harness {
        client_in: Sender<Inbound>,
        client_out: Receiver<Message>,
        child_in: Sender<Inbound>,
        child_out: Receiver<Message>,
    }

    fn endpoints(capacity: usize) -> (Endpoint, Endpoint, Harness) {
        let (client_in, client_from) = bounded(capacity);
        let (client_to, client_out) = bounded(capacity);
        let (child_in, child_from) = bounded(capacity);
        let (child_to, child_out) = bounded(capacity);
        (
            Endpoint {
                from: client_from,
                to: client_to,
            },
            Endpoint {
                from: child_from,
                to: child_to,
            },
            Harness {
                client_in,
                client_out,
                child_in,
                child_out,
            },
        )
    }

    fn msg(json: &str) -> Inbound {
        Inbound::Message(Message::parse(json.as_bytes().to_vec()).expect("valid test message"))
    }

    fn text(m: &Message) -> String {
        String::from_utf8_lossy(&m.line).into_owned()
    }

    fn timing() -> Timing {
        Timing {
            idle_timeout: None,
            grace: Duration::from_secs(30),
        }
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

    fn run_relay(
        client: Endpoint,
        child: Endpoint,
        t: &Triggers,
        timing: Timing,
    ) -> (Outcome, Counters) {
        let mut counters = Counters::default();
        let control = Control {
            shutdown: &t.shutdown,
            hurry: &t.hurry,
        };
        let outcome = run(&client, &child, &control, timing, &mut counters);
        (outcome, counters)
    }

    #[test]
    fn relays_both_ways_in_order_and_ends_when_the_child_closes() {
        let (client, child, h) = endpoints(4);
        let t = triggers();
        std::thread::scope(|s| {
            let relay = s.spawn(|| run_relay(client, child, &t, timing()));
            for i in 0..50 {
                h.client_in
                    .send(msg(&format!(
                        r#"{{"jsonrpc":"2.0","id":{i},"method":"m"}}"#
                    )))
                    .expect("send");
                let got = h.child_out.recv().expect("forwarded to child");
                assert_eq!(
                    text(&got),
                    format!(r#"{{"jsonrpc":"2.0","id":{i},"method":"m"}}"#)
                );
                h.child_in
                    .send(msg(&format!(
                        r#"{{"jsonrpc":"2.0","id":{i},"result":{{}}}}"#
                    )))
                    .expect("send");
                assert_eq!(
                    h.client_out.recv().expect("answer").kind,
                    Kind::Response { id: Some(id(i)) }
                );
            }
            h.client_in
                .send(msg(r#"{"jsonrpc":"2.0","id":"open","method":"slow"}"#))
                .expect("send");
            h.child_out.recv().expect("forwarded");
            drop(h.child_in);
            let (outcome, counters) = relay.join().expect("relay thread");
            assert_eq!(outcome.reason, EndReason::ChildExited);
            assert_eq!(outcome.unanswered, vec![Id::from_json("\"open\"")]);
            assert_eq!(counters.messages_in, 51);
            assert_eq!(counters.messages_out, 50);
        });
    }

    fn id(n: i32) -> Id {
        Id::from_json(&n.to_string())
    }

    #[test]
    fn refused_client_lines_are_answered_and_never_reach_the_child() {
        let (client, child, h) = endpoints(4);
        let t = triggers();
        std::thread::scope(|s| {
            let relay = s.spawn(|| run_relay(client, child, &t, timing()));
            h.client_in
                .send(Inbound::Refused {
                    id: None,
                    code: code::PARSE_ERROR,
                    reason: "Parse error".into(),
                })
                .expect("send");
            let reply = h.client_out.recv().expect("error reply");
            assert!(text(&reply).contains("-32700"), "{}", text(&reply));
            assert!(h.child_out.try_recv().is_err(), "nothing reached the child");
            drop(h.client_in);
            let (outcome, _) = relay.join().expect("relay");
            assert_eq!(outcome.reason, EndReason::ClientClosed);
        });
    }

    #[test]
    fn an_oversized_answer_to_a_pending_request_becomes_an_error() {
        let (client, child, h) = endpoints(4);
        let t = triggers();
        std::thread::scope(|s| {
            let relay = s.spawn(|| run_relay(client, child, &t, timing()));
            h.client_in
                .send(msg(r#"{"jsonrpc":"2.0","id":5,"method":"big"}"#))
                .expect("send");
            h.child_out.recv().expect("forwarded");
            let refused = |id| Inbound::Refused {
                id,
                code: code::TOO_LARGE,
                reason: "too big".into(),
            };
            h.child_in
                .send(refused(Some(id(99))))
                .expect("not pending: dropped");
            h.child_in
                .send(refused(Some(id(5))))
                .expect("pending: reported");
            let reply = h.client_out.recv().expect("error");
            assert_eq!(reply.kind, Kind::Response { id: Some(id(5)) });
            assert!(text(&reply).contains("-32003"));
            drop(h.child_in);
            let (outcome, _) = relay.join().expect("relay");
            assert!(outcome.unanswered.is_empty());
        });
    }

    #[test]
    fn a_client_that_does_not_read_stops_the_child_side_not_the_relay() {
        let (client, child, h) = endpoints(1);
        let t = triggers();
        std::thread::scope(|s| {
            let relay = s.spawn(|| run_relay(client, child, &t, timing()));
            // Fill the client's channel and the relay's one held message;
            // the next child message then waits in the child's channel.
            for i in 0..3 {
                h.child_in
                    .send(msg(&format!(r#"{{"jsonrpc":"2.0","method":"n{i}"}}"#)))
                    .expect("send");
            }
            assert!(
                h.child_in
                    .send_timeout(
                        msg(r#"{"jsonrpc":"2.0","method":"n3"}"#),
                        Duration::from_millis(50)
                    )
                    .is_err(),
                "backpressure reached the child's reader"
            );
            // Shutdown still gets through while the client is stuck.
            t.shutdown.fire();
            let (outcome, _) = relay.join().expect("relay");
            assert_eq!(outcome.reason, EndReason::Shutdown);
            let got: Vec<String> = h.client_out.try_iter().map(|m| text(&m)).collect();
            assert_eq!(got, vec![r#"{"jsonrpc":"2.0","method":"n0"}"#.to_string()]);
        });
    }

    #[test]
    fn shutdown_waits_for_answers_then_sends_32004() {
        let (client, child, h) = endpoints(4);
        let t = triggers();
        let timing = Timing {
            idle_timeout: None,
            grace: Duration::from_millis(200),
        };
        std::thread::scope(|s| {
            let relay = s.spawn(|| run_relay(client, child, &t, timing));
            for i in 1..=2 {
                h.client_in
                    .send(msg(&format!(
                        r#"{{"jsonrpc":"2.0","id":{i},"method":"m"}}"#
                    )))
                    .expect("send");
                h.child_out.recv().expect("forwarded");
            }
            t.shutdown.fire();
            h.child_in
                .send(msg(r#"{"jsonrpc":"2.0","id":1,"result":{}}"#))
                .expect("answer one");
            let (outcome, _) = relay.join().expect("relay");
            assert_eq!(outcome.reason, EndReason::Shutdown);
            assert!(outcome.unanswered.is_empty());
            let replies: Vec<Message> = h.client_out.try_iter().collect();
            assert_eq!(replies.len(), 2);
            assert_eq!(replies[0].kind, Kind::Response { id: Some(id(1)) });
            assert!(
                text(&replies[1]).contains(r#""id":2,"error":{"code":-32004"#),
                "{}",
                text(&replies[1])
            );
        });
    }

    #[test]
    fn hurry_cuts_the_grace_short() {
        let (client, child, h) = endpoints(4);
        let t = triggers();
        let timing = Timing {
            idle_timeout: None,
            grace: Duration::from_secs(3600),
        };
        std::thread::scope(|s| {
            let relay = s.spawn(|| run_relay(client, child, &t, timing));
            h.client_in
                .send(msg(r#"{"jsonrpc":"2.0","id":1,"method":"m"}"#))
                .expect("send");
            h.child_out.recv().expect("forwarded");
            t.shutdown.fire();
            t.hurry.fire();
            let (outcome, _) = relay.join().expect("relay returns long before the grace");
            assert_eq!(outcome.reason, EndReason::Shutdown);
            assert!(text(&h.client_out.recv().expect("-32004")).contains("-32004"));
        });
    }

    #[test]
    fn idle_timeout_ends_a_quiet_session() {
        let (client, child, _h) = endpoints(4);
        let t = triggers();
        let timing = Timing {
            idle_timeout: Some(Duration::from_millis(20)),
            grace: Duration::from_secs(1),
        };
        let (outcome, _) = run_relay(client, child, &t, timing);
        assert_eq!(outcome.reason, EndReason::IdleTimeout);
    }

    #[test]
    fn a_half_closed_client_still_gets_its_answers() {
        let (client, child, h) = endpoints(4);
        let t = triggers();
        std::thread::scope(|s| {
            let relay = s.spawn(|| run_relay(client, child, &t, timing()));
            h.client_in
                .send(msg(r#"{"jsonrpc":"2.0","id":1,"method":"m"}"#))
                .expect("send");
            drop(h.client_in);
            h.child_out.recv().expect("forwarded");
            h.child_in
                .send(msg(r#"{"jsonrpc":"2.0","id":1,"result":{}}"#))
                .expect("answer");
            let (outcome, _) = relay.join().expect("relay");
            assert_eq!(outcome.reason, EndReason::ClientClosed);
            assert_eq!(
                h.client_out.recv().expect("answer delivered").kind,
                Kind::Response { id: Some(id(1)) }
            );
        });
    }
}
