//! One HTTP session as the front end sees it: which HTTP exchange waits
//! for which answer, where each message from the child goes, and the
//! bounded log of events that makes streams resumable.
//!
//! Plain data and no I/O: every method returns the bytes to write and the
//! connection to write them to ([`Delivery`]), and the front end writes.
//!
//! Streams are numbered per session: 0 is the GET stream (for the older
//! HTTP+SSE transport, its one stream), 1, 2… one per POST answered as
//! SSE. An event's id is `STREAM-SEQ`, with `SEQ` counted per session, so
//! ids are unique within the session and name the stream they belong to,
//! as resumption with `Last-Event-ID` requires.

use std::collections::{HashMap, VecDeque};

use crate::http::response::{self, Response};
use crate::http::security::Principal;
use crate::proto::message::{Id, Kind, classify, code};
use crate::proto::reply::error_line;
use crate::session::client::ChannelPeer;

/// A connection, by its key in the front end's slab.
pub type ConnKey = usize;
pub type StreamNo = u64;

/// The GET stream's number (and the legacy transport's only stream).
pub const GET_STREAM: StreamNo = 0;

/// Events kept per session for replay, and for a GET stream not open yet.
/// An event past either bound pushes out the oldest.
pub const REPLAY_EVENTS: usize = 256;
pub const REPLAY_BYTES: usize = 256 * 1024;

/// Streams remembered per session after they finished (for resumption).
const FINISHED_STREAMS: usize = 64;

/// Bytes for one connection; `done` ends the exchange on it (the
/// connection then reads its next request, or closes).
#[derive(Debug)]
pub struct Delivery {
    pub conn: ConnKey,
    pub bytes: Vec<u8>,
    pub done: bool,
}

/// How an exchange gets its answer.
#[derive(Debug)]
pub enum Reply {
    /// Events on a chunked `text/event-stream`.
    Sse,
    /// One JSON body once every response is in; the head is ready but for
    /// its body.
    Json {
        head: Response,
        batch: bool,
        collected: Vec<Vec<u8>>,
    },
}

#[derive(Debug)]
struct Stream {
    conn: Option<ConnKey>,
    reply: Reply,
    /// Responses still due on it (the GET stream has none).
    awaiting: usize,
    /// The last event written to a connection.
    delivered: u64,
    /// The newest of its events pushed out of the log before delivery or
    /// replay; a resume from before it cannot be served.
    lost_upto: u64,
    finished: bool,
}

impl Stream {
    fn new(conn: Option<ConnKey>, reply: Reply, awaiting: usize) -> Stream {
        Stream {
            conn,
            reply,
            awaiting,
            delivered: 0,
            lost_upto: 0,
            finished: false,
        }
    }
}

struct Event {
    stream: StreamNo,
    seq: u64,
    line: Vec<u8>,
}

/// Which transport a session was made by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Streamable HTTP at `/mcp`.
    Streamable,
    /// HTTP+SSE (2024-11-05): `GET /sse` and `POST /messages`.
    Legacy,
}

/// Why a stream could not be opened.
#[derive(Debug, PartialEq, Eq)]
pub enum OpenError {
    /// A GET stream is open already (409).
    Conflict,
}

pub struct HttpSession {
    pub id: String,
    pub principal: Option<Principal>,
    pub peer: ChannelPeer,
    pub transport: Transport,
    /// The protocol version the client asked for in `initialize`.
    pub protocol: String,
    /// DELETEd (or its legacy stream closed): the id answers 404 while the
    /// worker winds down.
    pub ended: bool,
    streams: HashMap<StreamNo, Stream>,
    next_stream: StreamNo,
    pending: HashMap<Id, StreamNo>,
    progress: HashMap<String, StreamNo>,
    log: VecDeque<Event>,
    log_bytes: usize,
    next_seq: u64,
    /// Events for the GET stream pushed out before anyone read them.
    pub dropped_unread: u64,
}

/// What one POSTed body asks of the session.
pub struct Posted<'a> {
    pub kind: &'a Kind,
    /// `progressToken`s from the body's requests (as JSON text).
    pub progress_tokens: Vec<String>,
}

impl HttpSession {
    pub fn new(
        id: String,
        principal: Option<Principal>,
        peer: ChannelPeer,
        transport: Transport,
        protocol: String,
    ) -> HttpSession {
        let mut streams = HashMap::new();
        streams.insert(GET_STREAM, Stream::new(None, Reply::Sse, 0));
        HttpSession {
            id,
            principal,
            peer,
            transport,
            protocol,
            ended: false,
            streams,
            next_stream: 1,
            pending: HashMap::new(),
            progress: HashMap::new(),
            log: VecDeque::new(),
            log_bytes: 0,
            next_seq: 1,
            dropped_unread: 0,
        }
    }

    /// Whether events for this client carry a priming event first (MCP
    /// 2025-11-25; older clients would choke on its empty data).
    pub fn primes(protocol: &str) -> bool {
        protocol >= "2025-11-25"
    }

    /// Registers a POSTed body's requests on a new stream of `conn` and
    /// returns the stream, or `None` for a body without requests (nothing
    /// to wait for). For the legacy transport every answer goes on the one
    /// stream. The caller sends `line` to the worker afterwards.
    pub fn post(&mut self, posted: &Posted<'_>, conn: ConnKey, reply: Reply) -> Option<StreamNo> {
        let mut ids = Vec::new();
        posted
            .kind
            .for_each_request_id(&mut |id| ids.push(id.clone()));
        if ids.is_empty() {
            return None;
        }
        let stream = if self.transport == Transport::Legacy {
            GET_STREAM
        } else {
            let n = self.next_stream;
            self.next_stream += 1;
            self.streams
                .insert(n, Stream::new(Some(conn), reply, ids.len()));
            self.forget_finished_streams();
            n
        };
        for id in ids {
            self.pending.insert(id, stream);
        }
        for token in &posted.progress_tokens {
            self.progress.insert(token.clone(), stream);
        }
        Some(stream)
    }

    /// A priming event for stream `n` (its id lets a client resume from the
    /// very start).
    pub fn priming(&mut self, n: StreamNo) -> Vec<u8> {
        let seq = self.take_seq();
        if let Some(stream) = self.streams.get_mut(&n) {
            stream.delivered = seq;
        }
        let mut out = Vec::new();
        response::event(&mut out, Some((n, seq)), None, b"");
        out
    }

    /// Opens the GET stream on `conn`, or resumes stream `from.0` after
    /// event `from.1`. Returns what to write at once, ending the exchange
    /// when the stream has nothing more to come.
    pub fn open_stream(
        &mut self,
        conn: ConnKey,
        from: Option<(StreamNo, u64)>,
    ) -> Result<Delivery, OpenError> {
        let (n, after) = match from {
            Some((n, seq)) => (n, seq),
            None => {
                let get = self.streams.get(&GET_STREAM);
                if get.is_some_and(|s| s.conn.is_some()) {
                    return Err(OpenError::Conflict);
                }
                (GET_STREAM, get.map_or(0, |s| s.delivered))
            }
        };
        let mut out = Vec::new();
        let Some(stream) = self.streams.get(&n) else {
            response::comment(&mut out, "this stream is no longer held; nothing to resume");
            response::end_of_stream(&mut out);
            return Ok(Delivery {
                conn,
                bytes: out,
                done: true,
            });
        };
        // A resume from before what the log still holds cannot be served;
        // a first GET takes what is left (what was pushed out is counted
        // in `dropped_unread` and logged).
        if from.is_some() && stream.lost_upto > after {
            response::comment(
                &mut out,
                "events after that id are no longer held (replay buffer exceeded)",
            );
            response::end_of_stream(&mut out);
            return Ok(Delivery {
                conn,
                bytes: out,
                done: true,
            });
        }
        let legacy = self.transport == Transport::Legacy;
        let mut last = after;
        for event in self.log.iter().filter(|e| e.stream == n && e.seq > after) {
            write_event(&mut out, legacy, n, event.seq, &event.line);
            last = event.seq;
        }
        let stream = self.streams.get_mut(&n).ok_or(OpenError::Conflict)?;
        stream.delivered = stream.delivered.max(last);
        if stream.finished {
            response::end_of_stream(&mut out);
            return Ok(Delivery {
                conn,
                bytes: out,
                done: true,
            });
        }
        stream.conn = Some(conn);
        Ok(Delivery {
            conn,
            bytes: out,
            done: false,
        })
    }

    /// Attaches a new legacy SSE connection as the one stream.
    pub fn attach_legacy(&mut self, conn: ConnKey) {
        if let Some(stream) = self.streams.get_mut(&GET_STREAM) {
            stream.conn = Some(conn);
        }
    }

    /// `conn` closed: its streams wait for a resume; its JSON exchanges
    /// are dropped. Returns whether it carried the legacy stream (whose
    /// end is the session's end).
    pub fn detach(&mut self, conn: ConnKey) -> bool {
        let mut carried_legacy = false;
        for (&n, stream) in self.streams.iter_mut() {
            if stream.conn == Some(conn) {
                stream.conn = None;
                if n == GET_STREAM && self.transport == Transport::Legacy {
                    carried_legacy = true;
                }
            }
        }
        carried_legacy
    }

    /// Routes one message from the child to the stream it belongs to.
    pub fn from_child(&mut self, line: Vec<u8>, out: &mut Vec<Delivery>) {
        let Ok(kind) = classify(&line) else {
            return;
        };
        if let Kind::Batch(_) = kind {
            // Each item goes where it belongs, as a message of its own
            // (a JSON answer puts a batch's answers back in one array).
            if let Ok(items) = serde_json::from_slice::<Vec<&serde_json::value::RawValue>>(&line) {
                for item in items {
                    self.from_child(item.get().as_bytes().to_vec(), out);
                }
            }
            return;
        }
        let target = self.stream_for(&kind, &line);
        let answers = usize::from(matches!(kind, Kind::Response { id: Some(_) }));
        // `None`: an answer nobody waits for (its exchange was dropped).
        if let Some(n) = target {
            self.deliver(n, line, answers, out);
        }
    }

    fn stream_for(&mut self, kind: &Kind, line: &[u8]) -> Option<StreamNo> {
        let mut answered = None;
        kind.for_each_response_id(&mut |id| {
            if let Some(n) = self.pending.remove(id) {
                answered.get_or_insert(n);
            }
        });
        if answered.is_some() {
            return answered;
        }
        if matches!(kind, Kind::Response { .. }) {
            return None;
        }
        if kind.method() == Some("notifications/progress") {
            if let Some(n) = progress_token(line).and_then(|t| self.progress_stream(&t)) {
                return Some(n);
            }
        }
        Some(self.unrelated_stream())
    }

    /// The stream of the request in flight that gave out `token`, while
    /// it is an open SSE stream.
    fn progress_stream(&self, token: &str) -> Option<StreamNo> {
        let n = *self.progress.get(token)?;
        let s = self.streams.get(&n)?;
        (!s.finished && matches!(s.reply, Reply::Sse)).then_some(n)
    }

    /// Where a message that answers nothing goes: on the GET stream when
    /// one is open; else on an open SSE stream of a request in flight (the
    /// client reads it, and the message most likely concerns it); else
    /// into the log, for the GET stream to come.
    fn unrelated_stream(&self) -> StreamNo {
        let open = |s: &Stream| s.conn.is_some() && !s.finished && matches!(s.reply, Reply::Sse);
        if self.transport == Transport::Legacy || self.streams.get(&GET_STREAM).is_some_and(open) {
            return GET_STREAM;
        }
        self.streams
            .iter()
            .filter(|(_, s)| open(s))
            .map(|(&n, _)| n)
            .max()
            .unwrap_or(GET_STREAM)
    }

    fn deliver(&mut self, n: StreamNo, line: Vec<u8>, answers: usize, out: &mut Vec<Delivery>) {
        let seq = self.take_seq();
        let legacy = self.transport == Transport::Legacy;
        let Some(stream) = self.streams.get_mut(&n) else {
            return;
        };
        stream.awaiting = stream.awaiting.saturating_sub(answers);
        let complete = n != GET_STREAM && stream.awaiting == 0;
        match &mut stream.reply {
            Reply::Json {
                head,
                batch,
                collected,
            } => {
                collected.push(line);
                if complete {
                    stream.finished = true;
                    if let Some(conn) = stream.conn.take() {
                        let body = json_body(*batch, collected);
                        let head = std::mem::replace(head, Response::new(200));
                        let mut bytes = Vec::new();
                        head.body(body).encode(false, &mut bytes);
                        out.push(Delivery {
                            conn,
                            bytes,
                            done: true,
                        });
                    }
                }
                return;
            }
            Reply::Sse => {
                let mut bytes = Vec::new();
                if let Some(conn) = stream.conn {
                    write_event(&mut bytes, legacy, n, seq, &line);
                    stream.delivered = seq;
                    if complete {
                        response::end_of_stream(&mut bytes);
                        stream.conn = None;
                    }
                    out.push(Delivery {
                        conn,
                        bytes,
                        done: complete,
                    });
                }
                if complete {
                    stream.finished = true;
                }
            }
        }
        self.keep(n, seq, line);
    }

    fn keep(&mut self, stream: StreamNo, seq: u64, line: Vec<u8>) {
        self.log_bytes += line.len();
        self.log.push_back(Event { stream, seq, line });
        while self.log.len() > REPLAY_EVENTS || self.log_bytes > REPLAY_BYTES {
            let Some(old) = self.log.pop_front() else {
                break;
            };
            self.log_bytes -= old.line.len();
            if let Some(s) = self.streams.get_mut(&old.stream) {
                s.lost_upto = s.lost_upto.max(old.seq);
                if old.stream == GET_STREAM && s.delivered < old.seq {
                    self.dropped_unread += 1;
                }
            }
        }
    }

    fn take_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    fn forget_finished_streams(&mut self) {
        let finished = self.streams.values().filter(|s| s.finished).count();
        if finished <= FINISHED_STREAMS {
            return;
        }
        let mut old: Vec<StreamNo> = self
            .streams
            .iter()
            .filter(|(_, s)| s.finished)
            .map(|(&n, _)| n)
            .collect();
        old.sort_unstable();
        for n in old.into_iter().take(finished - FINISHED_STREAMS) {
            self.streams.remove(&n);
        }
    }

    /// The worker has ended: every exchange still waiting is answered
    /// (the worker answers requests in flight itself; this covers what
    /// raced with its end) and every open stream ends.
    pub fn end(&mut self, out: &mut Vec<Delivery>) {
        let pending: Vec<(Id, StreamNo)> = self.pending.drain().collect();
        for (id, n) in pending {
            let line = error_line(
                Some(&id),
                code::CHILD_GONE,
                "the session ended before this request was answered",
            );
            self.deliver(n, line, 1, out);
        }
        for stream in self.streams.values_mut() {
            if let Some(conn) = stream.conn.take() {
                let mut bytes = Vec::new();
                match &mut stream.reply {
                    Reply::Sse => response::end_of_stream(&mut bytes),
                    Reply::Json {
                        head,
                        batch,
                        collected,
                    } => {
                        let body = json_body(*batch, collected);
                        std::mem::replace(head, Response::new(200))
                            .body(body)
                            .encode(false, &mut bytes);
                    }
                }
                out.push(Delivery {
                    conn,
                    bytes,
                    done: true,
                });
            }
            stream.finished = true;
        }
    }

    /// Connections that carry one of this session's streams.
    pub fn conns(&self) -> impl Iterator<Item = ConnKey> + '_ {
        self.streams.values().filter_map(|s| s.conn)
    }

    /// Requests whose answers the session still owes.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }
}

fn write_event(out: &mut Vec<u8>, legacy: bool, stream: StreamNo, seq: u64, line: &[u8]) {
    if legacy {
        response::event(out, None, Some("message"), line);
    } else {
        response::event(out, Some((stream, seq)), None, line);
    }
}

/// A JSON answer: the one response, or (for a batch) an array of them;
/// a child that answered a batch with an array has its items spliced in.
fn json_body(batch: bool, collected: &[Vec<u8>]) -> Vec<u8> {
    if !batch && collected.len() == 1 {
        return collected[0].clone();
    }
    let mut body = vec![b'['];
    for (i, line) in collected.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        let trimmed = line.trim_ascii();
        match trimmed
            .strip_prefix(b"[")
            .and_then(|t| t.strip_suffix(b"]"))
        {
            Some(items) => body.extend_from_slice(items),
            None => body.extend_from_slice(trimmed),
        }
    }
    body.push(b']');
    body
}

/// The `progressToken` of a progress notification, as JSON text.
pub fn progress_token(line: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Note<'a> {
        #[serde(borrow)]
        params: Params<'a>,
    }
    #[derive(serde::Deserialize)]
    struct Params<'a> {
        #[serde(borrow, rename = "progressToken")]
        token: &'a serde_json::value::RawValue,
    }
    let note: Note<'_> = serde_json::from_slice(line).ok()?;
    Some(note.params.token.get().to_string())
}

/// The `progressToken`s a POSTed body's requests give out (in
/// `params._meta`), as JSON text.
pub fn progress_tokens(body: &[u8]) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct Req<'a> {
        #[serde(borrow, default)]
        params: Option<Params<'a>>,
    }
    #[derive(serde::Deserialize)]
    struct Params<'a> {
        #[serde(borrow, default, rename = "_meta")]
        meta: Option<Meta<'a>>,
    }
    #[derive(serde::Deserialize)]
    struct Meta<'a> {
        #[serde(borrow, default, rename = "progressToken")]
        token: Option<&'a serde_json::value::RawValue>,
    }
    // Most bodies have no token: skip the second parse for them.
    if memchr::memmem::find(body, b"progressToken").is_none() {
        return Vec::new();
    }
    let token = |r: Req<'_>| Some(r.params?.meta?.token?.get().to_string());
    match body.trim_ascii_start().first() {
        Some(b'[') => serde_json::from_slice::<Vec<Req<'_>>>(body)
            .map(|items| items.into_iter().filter_map(token).collect())
            .unwrap_or_default(),
        _ => serde_json::from_slice::<Req<'_>>(body)
            .ok()
            .and_then(token)
            .into_iter()
            .collect(),
    }
}

/// Parses `STREAM-SEQ`, the form of every event id forkline writes.
pub fn parse_event_id(id: &str) -> Option<(StreamNo, u64)> {
    let (stream, seq) = id.trim().split_once('-')?;
    Some((stream.parse().ok()?, seq.parse().ok()?))
}
