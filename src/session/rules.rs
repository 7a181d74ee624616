//! The rules of one session, apart from its I/O: which requests await an
//! answer, how many may, what is refused and why, and the counters.
//!
//! Plain data, owned by the session's worker thread: no lock, no channel.
//! The worker asks before it forwards a client message and tells after it
//! passes on a child's; everything here is unit-tested without sockets.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::proto::message::{Id, Kind, code};
use crate::session::run::{Start, Summary};

/// Which way a message went, for taps (counters, tapes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client to server.
    In,
    /// Server to client, including errors forkline sends on its behalf.
    Out,
}

/// Observes a session: its start, every message it passes on, and its
/// end. Recording and metrics attach here. Every method is called on the
/// session's own worker thread, in this order: `start` once, then
/// `message` and `flush` any number of times, then `end` once (not at all
/// if the session panicked). Whatever a method costs, only its own session
/// waits for it.
pub trait Tap {
    /// The child runs (or could not be started: `start.pid` is `None`);
    /// nothing has been relayed yet.
    fn start(&mut self, _start: &Start<'_>) {}

    /// A message passed on, as the bytes that went out (without the
    /// newline): always one valid JSON text.
    fn message(&mut self, direction: Direction, line: &[u8]);

    /// A client request was answered (by the child, or by forkline on its
    /// behalf) `rtt` after it was forwarded; called just after the answer's
    /// `message`.
    fn answered(&mut self, _rtt: Duration) {}

    /// How many client requests await their answer, after a message that
    /// may have changed it (every forwarded client message, every answer).
    fn awaiting(&mut self, _requests: usize) {}

    /// The worker is about to wait for I/O: a tap that buffers writes out
    /// what it holds now, so nothing lingers in memory while the session
    /// is idle.
    fn flush(&mut self) {}

    /// The session is over, its child stopped and reaped; no message
    /// follows.
    fn end(&mut self, _summary: &Summary) {}
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
    fn message(&mut self, direction: Direction, line: &[u8]) {
        let bytes = line.len() as u64 + 1;
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

/// What to do with a valid client message.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Write it to the child as it is.
    Forward,
    /// Do not forward it; answer each of its requests (if any) with this
    /// error.
    Refuse { code: i64, reason: String },
}

/// The bookkeeping of one session.
#[derive(Debug)]
pub struct Rules {
    /// Client requests forwarded and not yet answered, with when they
    /// were forwarded (for the round-trip time).
    pending: HashMap<Id, Instant>,
    max_inflight: usize,
    /// Shutdown has begun: new requests are refused, everything else
    /// (answers to the child's own requests, cancellations) still passes.
    refusing: bool,
    pub counters: Counters,
}

impl Rules {
    pub fn new(max_inflight: usize) -> Rules {
        Rules {
            pending: HashMap::new(),
            max_inflight,
            refusing: false,
            counters: Counters::default(),
        }
    }

    /// Decides about a client message read at `now`; a forwarded one is
    /// booked.
    pub fn from_client(&mut self, kind: &Kind, now: Instant) -> Verdict {
        let mut requests = 0usize;
        kind.for_each_request_id(&mut |_| requests += 1);
        if requests > 0 && self.refusing {
            return Verdict::Refuse {
                code: code::SHUTTING_DOWN,
                reason: "forkline is shutting down; no new requests are taken".into(),
            };
        }
        if requests > 0 && self.pending.len() + requests > self.max_inflight {
            return Verdict::Refuse {
                code: code::TOO_MANY_INFLIGHT,
                reason: format!(
                    "--max-inflight reached: {} requests of this session already await their answer (limit {})",
                    self.pending.len(),
                    self.max_inflight
                ),
            };
        }
        if requests > 0 {
            kind.for_each_request_id(&mut |id| {
                self.pending.insert(id.clone(), now);
            });
        }
        Verdict::Forward
    }

    /// Books a message on its way to the client, read (or made) at `now`:
    /// a child's, or an answer forkline gives itself. `answered` gets the
    /// round-trip time of each request it answers.
    pub fn to_client(&mut self, kind: &Kind, now: Instant, mut answered: impl FnMut(Duration)) {
        kind.for_each_response_id(&mut |id| {
            if let Some(sent) = self.pending.remove(id) {
                answered(now.saturating_duration_since(sent));
            }
        });
        if self.pending.is_empty() && self.pending.capacity() > 64 {
            // A burst of requests must not pin its table for good.
            self.pending = HashMap::new();
        }
    }

    /// True if the client still awaits an answer to `id`.
    pub fn awaits(&self, id: &Id) -> bool {
        self.pending.contains_key(id)
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// From now on, new requests are refused with -32004.
    pub fn refuse_new_requests(&mut self) {
        self.refusing = true;
    }

    /// The requests still unanswered, in a stable order, forgotten here.
    pub fn take_unanswered(&mut self) -> Vec<Id> {
        let mut ids: Vec<Id> = self.pending.drain().map(|(id, _)| id).collect();
        ids.sort_by(|a, b| a.as_json().cmp(b.as_json()));
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::message::classify;

    fn kind(json: &str) -> Kind {
        classify(json.as_bytes()).expect("valid test message")
    }

    fn request(id: u32) -> Kind {
        kind(&format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call"}}"#
        ))
    }

    fn answer(id: u32) -> Kind {
        kind(&format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{{}}}}"#))
    }

    #[test]
    fn tracks_requests_until_answered() {
        let mut rules = Rules::new(8);
        assert_eq!(
            rules.from_client(&request(1), Instant::now()),
            Verdict::Forward
        );
        assert_eq!(
            rules.from_client(
                &kind(r#"{"jsonrpc":"2.0","id":"x","method":"b"}"#),
                Instant::now()
            ),
            Verdict::Forward
        );
        assert_eq!(
            rules.from_client(
                &kind(r#"{"jsonrpc":"2.0","method":"notifications/n"}"#),
                Instant::now()
            ),
            Verdict::Forward
        );
        rules.to_client(&answer(1), Instant::now(), |_| {});
        assert_eq!(rules.pending(), 1);
        let unanswered = rules.take_unanswered();
        assert_eq!(unanswered.len(), 1);
        assert_eq!(unanswered[0].as_json(), "\"x\"");
    }

    #[test]
    fn the_request_past_max_inflight_is_refused_and_not_booked() {
        let mut rules = Rules::new(2);
        assert_eq!(
            rules.from_client(&request(1), Instant::now()),
            Verdict::Forward
        );
        assert_eq!(
            rules.from_client(&request(2), Instant::now()),
            Verdict::Forward
        );
        let Verdict::Refuse { code, reason } = rules.from_client(&request(3), Instant::now())
        else {
            panic!("the third request must be refused");
        };
        assert_eq!(code, -32005);
        assert!(reason.contains("--max-inflight"), "{reason}");
        assert_eq!(rules.pending(), 2);
        // Notifications and answers to the child's requests still pass.
        assert_eq!(
            rules.from_client(
                &kind(r#"{"jsonrpc":"2.0","method":"notifications/cancelled"}"#),
                Instant::now()
            ),
            Verdict::Forward
        );
        assert_eq!(
            rules.from_client(&answer(99), Instant::now()),
            Verdict::Forward
        );
        rules.to_client(&answer(1), Instant::now(), |_| {});
        assert_eq!(
            rules.from_client(&request(3), Instant::now()),
            Verdict::Forward,
            "room again"
        );
    }

    #[test]
    fn a_batch_counts_every_request_in_it() {
        let mut rules = Rules::new(2);
        assert_eq!(
            rules.from_client(&request(1), Instant::now()),
            Verdict::Forward
        );
        let batch = kind(
            r#"[{"jsonrpc":"2.0","id":2,"method":"a"},{"jsonrpc":"2.0","id":3,"method":"a"}]"#,
        );
        assert!(matches!(
            rules.from_client(&batch, Instant::now()),
            Verdict::Refuse { code: -32005, .. }
        ));
        assert_eq!(rules.pending(), 1, "nothing of the refused batch is booked");
    }

    #[test]
    fn shutdown_refuses_requests_but_passes_answers_and_cancellations() {
        let mut rules = Rules::new(8);
        assert_eq!(
            rules.from_client(&request(1), Instant::now()),
            Verdict::Forward
        );
        rules.refuse_new_requests();
        assert!(matches!(
            rules.from_client(&request(2), Instant::now()),
            Verdict::Refuse { code: -32004, .. }
        ));
        assert_eq!(
            rules.from_client(&kind(
                r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":1}}"#
            ), Instant::now()),
            Verdict::Forward
        );
        assert_eq!(
            rules.from_client(
                &kind(r#"{"jsonrpc":"2.0","id":"srv-1","result":{"roots":[]}}"#),
                Instant::now()
            ),
            Verdict::Forward,
            "the answer to the child's roots/list reaches it"
        );
        assert!(rules.awaits(&request_id(1)));
    }

    fn request_id(n: u32) -> Id {
        let mut found = None;
        request(n).for_each_request_id(&mut |id| found = Some(id.clone()));
        found.expect("an id")
    }

    #[test]
    fn an_answer_reports_its_requests_round_trip_once() {
        let mut rules = Rules::new(8);
        let sent = Instant::now();
        let read = sent + Duration::from_millis(2);
        assert_eq!(rules.from_client(&request(1), sent), Verdict::Forward);
        let mut rtts = Vec::new();
        rules.to_client(&answer(1), read, |rtt| rtts.push(rtt));
        rules.to_client(&answer(1), read, |rtt| rtts.push(rtt));
        rules.to_client(&answer(7), read, |rtt| rtts.push(rtt));
        assert_eq!(rtts, [Duration::from_millis(2)]);
    }

    #[test]
    fn counters_count_lines_and_their_newlines() {
        let mut counters = Counters::default();
        counters.message(Direction::In, b"{}");
        counters.message(Direction::Out, b"{}");
        counters.message(Direction::Out, b"[1]");
        assert_eq!(
            counters,
            Counters {
                messages_in: 1,
                bytes_in: 3,
                messages_out: 2,
                bytes_out: 7
            }
        );
    }
}
