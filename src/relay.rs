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

use crossbeam_channel::{Receiver, RecvError, Select, SelectedOperation, Sender};

use crate::hub::Watch;
use crate::message::{Id, Message, code};
use crate::outbox::{Outbox, Put};
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

/// One side of the relay: what arrives from it, and how to reach it.
/// The reader dropping `from`'s sender means that side closed.
pub struct Endpoint<'a> {
    pub from: Receiver<Inbound>,
    pub to: Outbox<'a>,
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
    client: &mut Endpoint<'_>,
    child: &mut Endpoint<'_>,
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
        client_gone: false,
        hangup_watch: None,
        hangup: crossbeam_channel::bounded(1),
    }
    .run(control)
}

struct Relay<'r, 'a, 'b> {
    client: &'r mut Endpoint<'a>,
    child: &'r mut Endpoint<'b>,
    timing: Timing,
    tap: &'r mut dyn Tap,
    /// Client requests awaiting the child's answer.
    pending: HashSet<Id>,
    /// A message a full channel could not take yet (an fd outbox keeps
    /// its own backlog instead).
    to_child: Option<Message>,
    to_client: Option<Message>,
    /// Once the client is gone or shutdown began: why, and until when
    /// unanswered requests may still be answered.
    closing: Option<(EndReason, Instant)>,
    /// Writing to the client failed: it is gone.
    client_gone: bool,
    /// While the client is not being read: the hub's watch for its
    /// connection vanishing, and where the hub says so.
    hangup_watch: Option<Watch<'a>>,
    hangup: (Sender<()>, Receiver<()>),
}

impl Relay<'_, '_, '_> {
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
            let Some(wake) = self.wait(control, deadline) else {
                return self.deadline_passed();
            };
            match wake {
                Wake::Client(Ok(inbound)) => {
                    last_activity = Instant::now();
                    self.on_client(inbound);
                }
                Wake::Client(Err(_)) => {
                    self.begin_closing(EndReason::ClientClosed, Instant::now() + self.timing.grace)
                }
                Wake::Child(Ok(inbound)) => {
                    last_activity = Instant::now();
                    self.on_child(inbound);
                }
                Wake::Child(Err(_)) => {
                    let reason = self
                        .closing
                        .map_or(EndReason::ChildExited, |(reason, _)| reason);
                    return self.end(reason);
                }
                Wake::ChildWritable => {
                    if let Err(e) = resume(&mut self.child.to) {
                        // The child's stdin is gone; it is exiting, and its
                        // stdout closing ends the session with the right reason.
                        log::debug!("dropped a message for a child that stopped reading: {e}");
                    }
                }
                Wake::ClientWritable => {
                    if resume(&mut self.client.to).is_err() {
                        return self.end(EndReason::ClientClosed);
                    }
                }
                Wake::Shutdown => {
                    let until = if control.hurry.has_fired() {
                        Instant::now()
                    } else {
                        Instant::now() + self.timing.grace
                    };
                    self.begin_closing(EndReason::Shutdown, until);
                }
                Wake::ClientHungUp => return self.end(EndReason::ClientClosed),
                Wake::Hurry => {
                    if let Some((reason, _)) = self.closing {
                        self.closing = Some((reason, Instant::now()));
                    }
                }
            }
            if self.client_gone {
                return self.end(EndReason::ClientClosed);
            }
        }
    }

    /// Waits for the next thing to do; `None` when `deadline` passes. A
    /// side is read only while everything it could produce can be taken:
    /// that is where backpressure comes from.
    fn wait(&mut self, control: &Control, deadline: Option<Instant>) -> Option<Wake> {
        let client_blocked = self.to_client.is_some() || self.client.to.is_blocked();
        let child_blocked = self.to_child.is_some() || self.child.to.is_blocked();
        let mut sel = Select::new();
        let reading_client = self.closing.is_none() && !child_blocked && !client_blocked;
        let op_from_client = reading_client.then(|| sel.recv(&self.client.from));
        let op_from_child = (!client_blocked).then(|| sel.recv(&self.child.from));
        let op_child_writable = child_blocked.then(|| watch(&mut sel, &self.child.to));
        let op_client_writable = client_blocked.then(|| watch(&mut sel, &self.client.to));
        // Not reading the client, we would not see it vanish: have the hub
        // watch its connection meanwhile.
        if reading_client || self.closing.is_some() {
            self.hangup_watch = None;
        } else if self.hangup_watch.is_none() {
            if let Outbox::Fd(writer) = &self.client.to {
                self.hangup_watch = writer.watch_hangup(self.hangup.0.clone()).ok();
            }
        }
        let op_client_hung_up = self.hangup_watch.as_ref().map(|_| sel.recv(&self.hangup.1));
        let shutting_down = matches!(self.closing, Some((EndReason::Shutdown, _)));
        let op_shutdown = (!shutting_down).then(|| sel.recv(control.shutdown.receiver()));
        let op_hurry = (self.closing.is_some() && !control.hurry.has_fired())
            .then(|| sel.recv(control.hurry.receiver()));

        let selected = match deadline {
            Some(deadline) => sel.select_deadline(deadline).ok()?,
            None => sel.select(),
        };
        let index = Some(selected.index());
        Some(if index == op_from_client {
            Wake::Client(selected.recv(&self.client.from))
        } else if index == op_from_child {
            Wake::Child(selected.recv(&self.child.from))
        } else if index == op_child_writable {
            complete_watch(selected, &self.child.to, &mut self.to_child);
            Wake::ChildWritable
        } else if index == op_client_writable {
            complete_watch(selected, &self.client.to, &mut self.to_client);
            Wake::ClientWritable
        } else if index == op_client_hung_up {
            let _ = selected.recv(&self.hangup.1);
            Wake::ClientHungUp
        } else if index == op_shutdown {
            let _ = selected.recv(control.shutdown.receiver());
            Wake::Shutdown
        } else {
            debug_assert_eq!(index, op_hurry);
            let _ = selected.recv(control.hurry.receiver());
            Wake::Hurry
        })
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
                match self.child.to.put(message) {
                    Ok(Put::Taken) => {}
                    Ok(Put::Full(message)) => self.to_child = Some(message),
                    // The child stopped reading; its stdout closing ends
                    // the session, and the request is answered with -32002.
                    Err(e) => {
                        log::debug!("dropped a message for a child that stopped reading: {e}")
                    }
                }
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
        match self.client.to.put(message) {
            Ok(Put::Taken) => {}
            Ok(Put::Full(message)) => self.to_client = Some(message),
            Err(_) => self.client_gone = true,
        }
    }

    fn deadline_passed(mut self) -> Outcome {
        match self.closing {
            Some((EndReason::Shutdown, _)) => {
                // PRODUCT.md, Shutdown: what the grace did not see answered
                // gets -32004. Best effort: a client that stopped reading
                // does not hold the shutdown up.
                let mut unanswered: Vec<Id> = self.pending.drain().collect();
                unanswered.sort_by(|a, b| a.as_json().cmp(b.as_json()));
                for id in unanswered {
                    let message = Message::error(
                        Some(&id),
                        code::SHUTTING_DOWN,
                        "forkline is shutting down; the request was not answered in time",
                    );
                    self.tap.message(Direction::Out, &message);
                    put_if_free(&mut self.client.to, message);
                }
                self.end(EndReason::Shutdown)
            }
            Some((reason, _)) => self.end(reason),
            None => self.end(EndReason::IdleTimeout),
        }
    }

    fn end(mut self, reason: EndReason) -> Outcome {
        // A message a full channel still holds goes last, best effort.
        if let Some(message) = self.to_client.take() {
            put_if_free(&mut self.client.to, message);
        }
        let mut unanswered: Vec<Id> = self.pending.into_iter().collect();
        unanswered.sort_by(|a, b| a.as_json().cmp(b.as_json()));
        Outcome { reason, unanswered }
    }
}

/// What woke the relay.
enum Wake {
    Client(Result<Inbound, RecvError>),
    Child(Result<Inbound, RecvError>),
    ChildWritable,
    ClientWritable,
    ClientHungUp,
    Shutdown,
    Hurry,
}

/// Registers the operation that unblocks `outbox`: room in its channel, or
/// the hub's word that its fd drained.
fn watch<'a>(sel: &mut Select<'a>, outbox: &'a Outbox) -> usize {
    match outbox {
        Outbox::Fd(writer) => sel.recv(writer.ready()),
        Outbox::Channel(to) => sel.send(to),
    }
}

fn complete_watch(selected: SelectedOperation<'_>, outbox: &Outbox, held: &mut Option<Message>) {
    match outbox {
        Outbox::Fd(writer) => {
            let _ = selected.recv(writer.ready());
        }
        Outbox::Channel(to) => {
            let message = held
                .take()
                .expect("a channel is watched only while a message is held");
            // Disconnected: the consumer is gone; its reader ends the session.
            let _ = selected.send(to, message);
        }
    }
}

/// Goes on writing after an fd outbox unblocked (a channel outbox was
/// already served by its `send` operation).
fn resume(outbox: &mut Outbox) -> std::io::Result<()> {
    match outbox {
        Outbox::Fd(writer) => writer.resume(),
        Outbox::Channel(_) => Ok(()),
    }
}

/// Last words (final errors): never blocks, never queues behind a backlog.
pub fn put_if_free(outbox: &mut Outbox, message: Message) {
    if !outbox.is_blocked() {
        let _ = outbox.put(message);
    }
}

impl std::fmt::Debug for Endpoint<'_> {
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

    fn endpoints(capacity: usize) -> (Endpoint<'static>, Endpoint<'static>, Harness) {
        let (client_in, client_from) = bounded(capacity);
        let (client_to, client_out) = bounded(capacity);
        let (child_in, child_from) = bounded(capacity);
        let (child_to, child_out) = bounded(capacity);
        (
            Endpoint {
                from: client_from,
                to: Outbox::channel(client_to),
            },
            Endpoint {
                from: child_from,
                to: Outbox::channel(child_to),
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
        mut client: Endpoint,
        mut child: Endpoint,
        t: &Triggers,
        timing: Timing,
    ) -> (Outcome, Counters) {
        let mut counters = Counters::default();
        let control = Control {
            shutdown: &t.shutdown,
            hurry: &t.hurry,
        };
        let outcome = run(&mut client, &mut child, &control, timing, &mut counters);
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
