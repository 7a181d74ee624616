//! The stateless era over HTTP (MCP 2026-07-28): no sessions and no
//! handshake, so each principal gets one child, shared by its concurrent
//! requests, and forkline adapts handshake-era children for it.
//!
//! Plain data and no I/O, like `http::session`: methods return the bytes
//! for each connection ([`Delivery`]) and what to send the child goes
//! through the worker's channel.
//!
//! - Requests of different HTTP exchanges may carry the same JSON-RPC id,
//!   so every request reaches the child under an id of forkline's own
//!   (`"fl-N"`) and its answer gets the client's id back.
//! - A child's era is learnt once, when it starts, the way the SDKs learn
//!   a server's: `server/discover` first. A child that answers it with a
//!   stateless-era version speaks the new era and gets requests unchanged
//!   (but for their ids). One that refuses it — or says nothing within
//!   [`PROBE_TIMEOUT`]: some old servers never answer an unknown request
//!   before `initialize` — is sent `initialize` (with the client info and
//!   capabilities of the first request's `_meta`); answering that with an
//!   `InitializeResult` makes it a handshake-era child, which is adapted:
//!   `notifications/initialized` follows, `server/discover` is answered
//!   from that result, at once, the new envelope is taken off requests and
//!   results get what the new era requires. Requests that arrive meanwhile
//!   wait for the answer.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;
use serde_json::value::RawValue;

use crate::http::response::{self, Response};
use crate::http::session::{ConnKey, Delivery};
use crate::proto::message::{Id, Kind, classify, code};
use crate::proto::reply::error_line;
use crate::session::client::{ChannelPeer, Refused};

/// Protocol versions of the stateless era forkline serves.
pub const MODERN_VERSIONS: [&str; 1] = ["2026-07-28"];
/// The version forkline asks an adapted child for.
const ADAPTED_VERSION: &str = "2025-11-25";
/// The id of forkline's own `initialize` to a new child.
const INITIALIZE_ID: &str = "\"forkline-initialize\"";
const DISCOVER_ID: &str = "\"forkline-discover\"";
/// How long a new child may take to answer forkline's `server/discover`
/// (its boot included) before it is taken for a handshake-era server that
/// ignores unknown requests, and sent `initialize`.
pub const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The `_meta` keys of the stateless era.
pub const META_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
const META_CLIENT_INFO: &str = "io.modelcontextprotocol/clientInfo";
const META_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";

/// A stateless request as the front end checked it.
pub struct Incoming {
    /// The client's id, as JSON text.
    pub id: Id,
    pub method: String,
    pub line: Vec<u8>,
    /// Answer as SSE (events may precede the answer) or as one JSON body.
    pub sse: bool,
    /// For a JSON answer: the head, ready but for its status and body.
    pub head: Response,
    pub progress_token: Option<String>,
}

struct Exchange {
    /// `None` while the client has it: its stream closed (cancelled), or
    /// it got an `InputRequiredResult` and its retry is awaited.
    conn: Option<ConnKey>,
    id: Id,
    method: String,
    /// The child's own requests carried in an `InputRequiredResult`, by
    /// the key the client answers them under, and their ids.
    inputs: Vec<(String, Id)>,
    sse: bool,
    head: Option<Response>,
    progress_token: Option<String>,
    /// The token the child was given (the first request's): a retry after
    /// an `InputRequiredResult` brings a token of its own, which the
    /// child's progress notifications are rewritten to.
    child_token: Option<String>,
}

enum Era {
    /// Our `server/discover` is out (and, once it was refused or went
    /// unanswered, our `initialize`); requests wait.
    Probing { initialize_sent: bool },
    /// A handshake-era child; `discover` is the result forkline answers
    /// `server/discover` with.
    Handshake { discover: Box<RawValue> },
    /// A stateless-era child: requests go as they are.
    Modern,
}

/// One principal's child.
pub struct StatelessChild {
    pub principal: String,
    pub peer: ChannelPeer,
    era: Era,
    held: Vec<(ConnKey, Incoming)>,
    /// Who the first client said it is: what `initialize` will say.
    meta: ClientMeta,
    exchanges: HashMap<u64, Exchange>,
    /// Open `subscriptions/listen` streams served by forkline itself (for
    /// an adapted child, which has no such method).
    listeners: Vec<Listener>,
    next_id: u64,
}

/// One `subscriptions/listen` stream and what its client opted in to.
struct Listener {
    conn: ConnKey,
    id: Id,
    filter: Filter,
}

/// The notification types of a subscription (MCP 2026-07-28
/// `SubscriptionFilter`), as honored.
#[derive(Debug, Default, Clone, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Filter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tools_list_changed: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    prompts_list_changed: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    resources_list_changed: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    resource_subscriptions: Option<Vec<String>>,
}

impl Filter {
    fn wants(&self, method: &str, line: &[u8]) -> bool {
        match method {
            "notifications/tools/list_changed" => self.tools_list_changed == Some(true),
            "notifications/prompts/list_changed" => self.prompts_list_changed == Some(true),
            "notifications/resources/list_changed" => self.resources_list_changed == Some(true),
            "notifications/resources/updated" => {
                let uri = updated_uri(line);
                self.resource_subscriptions
                    .as_ref()
                    .is_some_and(|uris| uri.is_some_and(|u| uris.contains(&u)))
            }
            _ => false,
        }
    }
}

fn updated_uri(line: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Note {
        params: Params,
    }
    #[derive(serde::Deserialize)]
    struct Params {
        uri: String,
    }
    serde_json::from_slice::<Note>(line)
        .ok()
        .map(|n| n.params.uri)
}

impl StatelessChild {
    /// Nothing in flight, held or listening: ending it loses nothing.
    pub fn is_idle(&self) -> bool {
        self.exchanges.is_empty() && self.held.is_empty() && self.listeners.is_empty()
    }

    /// A child that has just been started; `first` is the request that
    /// started it (its `_meta` says who the client is). Sends the probe.
    pub fn start(principal: String, peer: ChannelPeer, first: &Incoming) -> StatelessChild {
        let meta = client_meta(&first.line);
        let discover = format!(
            r#"{{"jsonrpc":"2.0","id":{DISCOVER_ID},"method":"server/discover","params":{{"_meta":{{"{META_VERSION}":"{}","{META_CLIENT_INFO}":{},"{META_CAPABILITIES}":{}}}}}}}"#,
            MODERN_VERSIONS[0], meta.client_info, meta.capabilities
        );
        // The inbox of a new session is empty: this cannot be refused but
        // by a session already gone, which `end` then reports.
        let _ = peer.try_send(discover.into_bytes());
        StatelessChild {
            principal,
            peer,
            era: Era::Probing {
                initialize_sent: false,
            },
            meta,
            held: Vec::new(),
            exchanges: HashMap::new(),
            listeners: Vec::new(),
            next_id: 1,
        }
    }

    /// Takes one request of `conn` (whose SSE head, if any, is written).
    pub fn request(&mut self, conn: ConnKey, incoming: Incoming, out: &mut Vec<Delivery>) {
        match &self.era {
            Era::Probing { .. } => self.held.push((conn, incoming)),
            Era::Handshake { discover } if incoming.method == "server/discover" => {
                let line = format!(
                    r#"{{"jsonrpc":"2.0","id":{},"result":{}}}"#,
                    incoming.id.as_json(),
                    discover.get()
                );
                out.push(final_answer(
                    conn,
                    incoming.sse,
                    Some(incoming.head),
                    line.into_bytes(),
                ));
            }
            Era::Handshake { .. } if incoming.method == "subscriptions/listen" => {
                self.listen(conn, incoming, out);
            }
            _ => {
                let mut incoming = Some(incoming);
                if !self.resume(conn, &mut incoming) {
                    if let Some(incoming) = incoming {
                        self.forward(conn, incoming, out);
                    }
                }
            }
        }
    }

    fn forward(&mut self, conn: ConnKey, incoming: Incoming, out: &mut Vec<Delivery>) {
        let n = self.next_id;
        self.next_id += 1;
        let handshake = matches!(self.era, Era::Handshake { .. });
        let line =
            for_child(&incoming.line, &format!("\"fl-{n}\""), handshake).unwrap_or(incoming.line);
        let refused = match self.peer.try_send(line) {
            Ok(()) => None,
            Err(Refused::Full) => Some("the principal's child is busy; retry"),
            Err(Refused::Gone) => Some("the principal's child has ended; retry"),
        };
        if let Some(text) = refused {
            let line = error_line(Some(&incoming.id), code::SESSION_REFUSED, text);
            out.push(final_answer(conn, incoming.sse, Some(incoming.head), line));
            return;
        }
        self.exchanges.insert(
            n,
            Exchange {
                conn: Some(conn),
                id: incoming.id,
                method: incoming.method,
                inputs: Vec::new(),
                sse: incoming.sse,
                head: (!incoming.sse).then_some(incoming.head),
                child_token: incoming.progress_token.clone(),
                progress_token: incoming.progress_token,
            },
        );
    }

    /// One message from the child.
    pub fn from_child(&mut self, line: Vec<u8>, out: &mut Vec<Delivery>) {
        let Ok(kind) = classify(&line) else {
            return;
        };
        match kind {
            Kind::Response { id: Some(id) } if id.as_json() == DISCOVER_ID => {
                self.on_discover_answer(&line, out);
            }
            Kind::Response { id: Some(id) } if id.as_json() == INITIALIZE_ID => {
                self.on_initialize_answer(&line, out);
            }
            Kind::Response { id: Some(id) } => {
                let Some(exchange) = ours(&id).and_then(|n| self.exchanges.remove(&n)) else {
                    return;
                };
                let Some(conn) = exchange.conn else {
                    return;
                };
                let adapt_for =
                    matches!(self.era, Era::Handshake { .. }).then_some(exchange.method.as_str());
                let line = for_client(&line, exchange.id.as_json(), adapt_for).unwrap_or(line);
                out.push(final_answer(conn, exchange.sse, exchange.head, line));
            }
            Kind::Notification { method } => self.notification(&method, line, out),
            Kind::Request { id, method } => self.server_request(id, &method, &line, out),
            Kind::Response { id: None } | Kind::Batch(_) => {}
        }
    }

    /// A request of the child's own (sampling, elicitation, roots) has no
    /// stream to go on in this era: it is carried to the client inside an
    /// `InputRequiredResult` answering the request it serves (Multi
    /// Round-Trip Requests), and the client's retry brings its answer back.
    /// That request is the one interactive request in flight (`tools/call`,
    /// `prompts/get`, `resources/read`: the methods whose results may ask
    /// for input); with none, or several (whose is it?), the child is told
    /// at once rather than left waiting.
    fn server_request(&mut self, id: Id, method: &str, line: &[u8], out: &mut Vec<Delivery>) {
        let mut open = self
            .exchanges
            .iter()
            .filter(|(_, e)| e.conn.is_some() && INTERACTIVE.contains(&e.method.as_str()));
        let target = match (open.next(), open.next()) {
            (Some((&n, _)), None) => Some(n),
            _ => None,
        };
        let params = request_params(line);
        let Some((n, params)) = target.zip(params) else {
            log::debug!(
                "stateless child of {} asked {method}; refused",
                self.principal
            );
            let refusal = error_line(
                Some(&id),
                code::METHOD_NOT_FOUND,
                "forkline: this server-to-client request belongs to no single request in flight over stateless HTTP",
            );
            let _ = self.peer.try_send(refusal);
            return;
        };
        let key = format!("fl-input-{}", self.next_id);
        self.next_id += 1;
        let Some(exchange) = self.exchanges.get_mut(&n) else {
            return;
        };
        let Some(conn) = exchange.conn.take() else {
            return;
        };
        exchange.inputs.push((key.clone(), id));
        let result = serde_json::json!({
            "resultType": "input_required",
            "inputRequests": { key: { "method": method, "params": params } },
            "requestState": format!("fl-state-{n}"),
        });
        let line = format!(
            r#"{{"jsonrpc":"2.0","id":{},"result":{result}}}"#,
            exchange.id.as_json()
        );
        let head = exchange.head.take();
        out.push(final_answer(conn, exchange.sse, head, line.into_bytes()));
    }

    /// `subscriptions/listen` for an adapted child: forkline keeps the
    /// stream and sends down it the child's change notifications the
    /// client opted in to; resource subscriptions become the handshake
    /// era's `resources/subscribe` requests to the child.
    fn listen(&mut self, conn: ConnKey, incoming: Incoming, out: &mut Vec<Delivery>) {
        let filter = listen_filter(&incoming.line).unwrap_or_default();
        for uri in filter.resource_subscriptions.iter().flatten() {
            let n = self.next_id;
            self.next_id += 1;
            let subscribe = serde_json::json!({
                "jsonrpc": "2.0",
                "id": format!("fl-{n}"),
                "method": "resources/subscribe",
                "params": { "uri": uri },
            });
            // Its answer finds no exchange and is dropped.
            let _ = self.peer.try_send(subscribe.to_string().into_bytes());
        }
        let ack = serde_json::json!({
            "jsonrpc": "2.0",
            "method": "notifications/subscriptions/acknowledged",
            "params": { "notifications": filter },
        });
        let mut bytes = Vec::new();
        response::event(&mut bytes, None, None, ack.to_string().as_bytes());
        out.push(Delivery {
            conn,
            bytes,
            done: false,
        });
        self.listeners.push(Listener {
            conn,
            id: incoming.id,
            filter,
        });
    }

    /// A client's retry of a request that got an `InputRequiredResult`: the
    /// answers go to the child as the responses it waits for, and the
    /// request it served (still running in the child) answers this retry.
    /// `false` when `incoming` is no such retry (or its state is gone).
    fn resume(&mut self, conn: ConnKey, incoming: &mut Option<Incoming>) -> bool {
        let Some(retry) = incoming.as_ref().and_then(|i| retry_of(&i.line)) else {
            return false;
        };
        let Some(exchange) = self.exchanges.get_mut(&retry.state) else {
            return false;
        };
        if exchange.conn.is_some() {
            return false;
        }
        for (key, answer) in retry.responses {
            if let Some(at) = exchange.inputs.iter().position(|(k, _)| *k == key) {
                let (_, id) = exchange.inputs.remove(at);
                let line = format!(
                    r#"{{"jsonrpc":"2.0","id":{},"result":{}}}"#,
                    id.as_json(),
                    answer.get()
                );
                let _ = self.peer.try_send(line.into_bytes());
            }
        }
        let Some(incoming) = incoming.take() else {
            return false;
        };
        exchange.conn = Some(conn);
        exchange.id = incoming.id;
        exchange.sse = incoming.sse;
        exchange.head = (!incoming.sse).then_some(incoming.head);
        exchange.progress_token = incoming.progress_token;
        true
    }

    /// Request-scoped notifications go on their request's SSE stream:
    /// progress by its token; a log message to the one request in flight
    /// with a stream, when there is exactly one (with several, it cannot be
    /// told whose it is and is dropped rather than misdelivered).
    fn notification(&mut self, method: &str, line: Vec<u8>, out: &mut Vec<Delivery>) {
        let target = match method {
            "notifications/progress" => {
                let token = crate::http::session::progress_token(&line);
                let found = self.exchanges.values().find(|e| {
                    e.sse && e.conn.is_some() && e.child_token == token && token.is_some()
                });
                if let Some(e) = found {
                    if e.progress_token != e.child_token {
                        if let (Some(conn), Some(theirs)) = (e.conn, &e.progress_token) {
                            let line = with_progress_token(&line, theirs).unwrap_or(line);
                            let mut bytes = Vec::new();
                            response::event(&mut bytes, None, None, &line);
                            out.push(Delivery {
                                conn,
                                bytes,
                                done: false,
                            });
                        }
                        return;
                    }
                }
                found
            }
            "notifications/message" => {
                let mut open = self
                    .exchanges
                    .values()
                    .filter(|e| e.sse && e.conn.is_some());
                match (open.next(), open.next()) {
                    (Some(only), None) => Some(only),
                    _ => None,
                }
            }
            _ => {
                let mut wanted: Vec<ConnKey> = self
                    .listeners
                    .iter()
                    .filter(|l| l.filter.wants(method, &line))
                    .map(|l| l.conn)
                    .collect();
                // A stateless-era child serves `subscriptions/listen` itself:
                // what it sends outside a request goes to its listen streams.
                if matches!(self.era, Era::Modern) {
                    wanted.extend(
                        self.exchanges
                            .values()
                            .filter(|e| e.sse && e.method == "subscriptions/listen")
                            .filter_map(|e| e.conn),
                    );
                }
                for conn in wanted {
                    let mut bytes = Vec::new();
                    response::event(&mut bytes, None, None, &line);
                    out.push(Delivery {
                        conn,
                        bytes,
                        done: false,
                    });
                }
                None
            }
        };
        if let Some(conn) = target.and_then(|e| e.conn) {
            let mut bytes = Vec::new();
            response::event(&mut bytes, None, None, &line);
            out.push(Delivery {
                conn,
                bytes,
                done: false,
            });
        }
    }

    fn on_discover_answer(&mut self, line: &[u8], out: &mut Vec<Delivery>) {
        if !matches!(self.era, Era::Probing { .. }) {
            return;
        }
        if speaks_modern(line) {
            log::info!(
                "stateless child of {} speaks the stateless era",
                self.principal
            );
            self.settle(Era::Modern, out);
        } else {
            self.send_initialize();
        }
    }

    /// The child said nothing to `server/discover` in time.
    pub fn probe_timed_out(&mut self) {
        if matches!(
            self.era,
            Era::Probing {
                initialize_sent: false
            }
        ) {
            log::info!(
                "stateless child of {} did not answer server/discover within {PROBE_TIMEOUT:?}; trying initialize",
                self.principal
            );
            self.send_initialize();
        }
    }

    fn send_initialize(&mut self) {
        if let Era::Probing { initialize_sent } = &mut self.era {
            if !*initialize_sent {
                *initialize_sent = true;
                let init = format!(
                    r#"{{"jsonrpc":"2.0","id":{INITIALIZE_ID},"method":"initialize","params":{{"protocolVersion":"{ADAPTED_VERSION}","capabilities":{},"clientInfo":{}}}}}"#,
                    self.meta.capabilities, self.meta.client_info
                );
                let _ = self.peer.try_send(init.into_bytes());
            }
        }
    }

    fn on_initialize_answer(&mut self, line: &[u8], out: &mut Vec<Delivery>) {
        if !matches!(self.era, Era::Probing { .. }) {
            return;
        }
        let era = match discover_from_initialize(line) {
            Some(discover) => {
                let _ = self.peer.try_send(
                    br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#.to_vec(),
                );
                log::info!(
                    "stateless child of {} speaks the handshake era: adapted",
                    self.principal
                );
                Era::Handshake { discover }
            }
            None => {
                // Neither answer was conclusive: requests go as they are,
                // and the child answers them as it can.
                log::warn!(
                    "stateless child of {} answered neither server/discover nor initialize as expected; passing requests through",
                    self.principal
                );
                Era::Modern
            }
        };
        self.settle(era, out);
    }

    fn settle(&mut self, era: Era, out: &mut Vec<Delivery>) {
        self.era = era;
        for (conn, incoming) in std::mem::take(&mut self.held) {
            self.request(conn, incoming, out);
        }
    }

    /// `conn` closed: its request is cancelled. The child is told, and a
    /// late answer will find no exchange.
    pub fn detach(&mut self, conn: ConnKey) {
        self.held.retain(|(c, _)| *c != conn);
        self.listeners.retain(|l| l.conn != conn);
        let gone: Vec<u64> = self
            .exchanges
            .iter()
            .filter(|(_, e)| e.conn == Some(conn))
            .map(|(&n, _)| n)
            .collect();
        for n in gone {
            self.exchanges.remove(&n);
            let cancel = format!(
                r#"{{"jsonrpc":"2.0","method":"notifications/cancelled","params":{{"requestId":"fl-{n}","reason":"the client closed its response stream"}}}}"#
            );
            let _ = self.peer.try_send(cancel.into_bytes());
        }
    }

    /// The child has ended: every request still waiting gets -32002.
    pub fn end(&mut self, out: &mut Vec<Delivery>) {
        let text = "the server process ended before this request was answered";
        for (conn, incoming) in std::mem::take(&mut self.held) {
            let line = error_line(Some(&incoming.id), code::CHILD_GONE, text);
            out.push(final_answer(conn, incoming.sse, Some(incoming.head), line));
        }
        for (_, exchange) in self.exchanges.drain() {
            if let Some(conn) = exchange.conn {
                let line = error_line(Some(&exchange.id), code::CHILD_GONE, text);
                out.push(final_answer(conn, exchange.sse, exchange.head, line));
            }
        }
        // A listen stream ends with its result: the subscription is over.
        for listener in std::mem::take(&mut self.listeners) {
            let id = listener.id.as_json();
            let line = format!(
                r#"{{"jsonrpc":"2.0","id":{id},"result":{{"resultType":"complete","_meta":{{"io.modelcontextprotocol/subscriptionId":{id}}}}}}}"#
            );
            out.push(final_answer(listener.conn, true, None, line.into_bytes()));
        }
    }

    pub fn conns(&self) -> impl Iterator<Item = ConnKey> + '_ {
        self.exchanges
            .values()
            .filter_map(|e| e.conn)
            .chain(self.held.iter().map(|(c, _)| *c))
            .chain(self.listeners.iter().map(|l| l.conn))
    }
}

/// The answer that ends an exchange: the last event of its stream, or its
/// JSON body (404 for an unknown method, as the era's transport asks).
fn final_answer(conn: ConnKey, sse: bool, head: Option<Response>, line: Vec<u8>) -> Delivery {
    let mut bytes = Vec::new();
    if sse {
        response::event(&mut bytes, None, None, &line);
        response::end_of_stream(&mut bytes);
    } else {
        let status = if error_code(&line) == Some(code::METHOD_NOT_FOUND) {
            404
        } else {
            200
        };
        head.unwrap_or_else(|| Response::new(200))
            .with_status(status)
            .body(line)
            .encode(false, &mut bytes);
    }
    Delivery {
        conn,
        bytes,
        done: true,
    }
}

fn error_code(line: &[u8]) -> Option<i64> {
    #[derive(serde::Deserialize)]
    struct Answer {
        error: Option<ErrorObject>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorObject {
        code: i64,
    }
    serde_json::from_slice::<Answer>(line)
        .ok()?
        .error
        .map(|e| e.code)
}

/// Our number in a child's answer id `"fl-N"`.
fn ours(id: &Id) -> Option<u64> {
    id.as_json()
        .strip_prefix("\"fl-")?
        .strip_suffix('"')?
        .parse()
        .ok()
}

/// A JSON object's members, each kept as the bytes it arrived as (their
/// order becomes sorted). What forkline changes in a message it changes
/// through this, with one parse of each object it touches.
struct Members(BTreeMap<String, Box<RawValue>>);

impl Members {
    fn parse(text: &[u8]) -> Option<Members> {
        serde_json::from_slice(text).ok().map(Members)
    }

    /// The member `key`, itself an object.
    fn object(&self, key: &str) -> Option<Members> {
        Members::parse(self.0.get(key)?.get().as_bytes())
    }

    /// Sets `key` to the JSON text `json`.
    fn set(&mut self, key: &str, json: String) -> Option<()> {
        self.0
            .insert(key.to_string(), RawValue::from_string(json).ok()?);
        Some(())
    }

    fn set_object(&mut self, key: &str, members: &Members) -> Option<()> {
        self.set(key, serde_json::to_string(&members.0).ok()?)
    }

    fn to_vec(&self) -> Option<Vec<u8>> {
        serde_json::to_vec(&self.0).ok()
    }
}

/// A client's request as its child gets it: under forkline's `id`, and for
/// a handshake-era child without the new era's envelope.
fn for_child(line: &[u8], id: &str, strip_envelope: bool) -> Option<Vec<u8>> {
    let mut message = Members::parse(line)?;
    message.set("id", id.to_string())?;
    if strip_envelope {
        // Handshake-era servers may refuse it (the Python SDK's do); what
        // it says, `initialize` said.
        without_envelope(&mut message);
    }
    message.to_vec()
}

/// A child's answer as its client gets it: under the client's `id`, and
/// from a handshake-era child with what the new era requires of results.
fn for_client(line: &[u8], id: &str, adapt_for: Option<&str>) -> Option<Vec<u8>> {
    let mut message = Members::parse(line)?;
    message.set("id", id.to_string())?;
    if let Some(method) = adapt_for {
        as_modern_result(&mut message, method);
    }
    message.to_vec()
}

/// Takes the stateless era's `_meta` keys (`io.modelcontextprotocol/…`)
/// off a request, and `_meta` itself if nothing else was in it; `None`
/// when there were none.
fn without_envelope(message: &mut Members) -> Option<()> {
    let mut params = message.object("params")?;
    let mut meta = params.object("_meta")?;
    let before = meta.0.len();
    meta.0
        .retain(|key, _| !key.starts_with("io.modelcontextprotocol/"));
    if meta.0.len() == before {
        return None;
    }
    if meta.0.is_empty() {
        params.0.remove("_meta");
    } else {
        params.set_object("_meta", &meta)?;
    }
    message.set_object("params", &params)
}

/// A progress notification with its `params.progressToken` set to `token`
/// (JSON text).
fn with_progress_token(line: &[u8], token: &str) -> Option<Vec<u8>> {
    let mut message = Members::parse(line)?;
    let mut params = message.object("params")?;
    params.set("progressToken", token.to_string())?;
    message.set_object("params", &params)?;
    message.to_vec()
}

/// Methods whose stateless-era result may be an `InputRequiredResult`.
const INTERACTIVE: [&str; 3] = ["tools/call", "prompts/get", "resources/read"];

/// Methods whose stateless-era results must say how long they may be
/// cached (`ttlMs`, `cacheScope`).
const CACHEABLE: [&str; 5] = [
    "prompts/list",
    "resources/list",
    "resources/read",
    "resources/templates/list",
    "tools/list",
];

/// A handshake-era server's result in the shape the stateless era
/// requires: `"resultType":"complete"`, and for cacheable methods a
/// `ttlMs` of 0 and a `private` scope (the child is one principal's, and
/// forkline cannot know how long the answer holds). `None` when nothing
/// is missing or the message has no result.
fn as_modern_result(message: &mut Members, method: &str) -> Option<()> {
    let mut result = message.object("result")?;
    let mut missing = vec![("resultType", "\"complete\"")];
    if CACHEABLE.contains(&method) {
        missing.extend([("ttlMs", "0"), ("cacheScope", "\"private\"")]);
    }
    missing.retain(|(key, _)| !result.0.contains_key(*key));
    if missing.is_empty() {
        return None;
    }
    for (key, value) in missing {
        result.set(key, value.to_string())?;
    }
    message.set_object("result", &result)
}

/// A `server/discover` result made from an adapted child's answer to our
/// `initialize`; `None` when that answer is not an `InitializeResult`.
fn discover_from_initialize(line: &[u8]) -> Option<Box<RawValue>> {
    let answer: Value = serde_json::from_slice(line).ok()?;
    let init = answer.get("result")?.as_object()?;
    init.get("protocolVersion")?.as_str()?;
    let mut discover = serde_json::Map::new();
    discover.insert("resultType".into(), "complete".into());
    discover.insert("ttlMs".into(), 0.into());
    discover.insert("cacheScope".into(), "private".into());
    discover.insert(
        "supportedVersions".into(),
        Value::from(MODERN_VERSIONS.to_vec()),
    );
    discover.insert(
        "capabilities".into(),
        init.get("capabilities")
            .cloned()
            .unwrap_or_else(|| serde_json::json!({})),
    );
    if let Some(info) = init.get("serverInfo") {
        discover.insert(
            "_meta".into(),
            serde_json::json!({ "io.modelcontextprotocol/serverInfo": info }),
        );
    }
    if let Some(instructions) = init.get("instructions") {
        discover.insert("instructions".into(), instructions.clone());
    }
    RawValue::from_string(serde_json::to_string(&discover).ok()?).ok()
}

/// Whether a `server/discover` answer names a stateless-era version.
fn speaks_modern(line: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Answer {
        result: Option<Discover>,
    }
    #[derive(serde::Deserialize)]
    struct Discover {
        #[serde(rename = "supportedVersions")]
        supported: Vec<String>,
    }
    serde_json::from_slice::<Answer>(line)
        .ok()
        .and_then(|a| a.result)
        .is_some_and(|d| {
            d.supported
                .iter()
                .any(|v| MODERN_VERSIONS.contains(&v.as_str()))
        })
}

/// Who the client says it is, from a request's `_meta`, as JSON text.
struct ClientMeta {
    client_info: String,
    capabilities: String,
}

fn client_meta(line: &[u8]) -> ClientMeta {
    let meta = request_meta(line);
    let get = |key: &str, default: &str| {
        meta.as_ref()
            .and_then(|m| m.get(key))
            .map_or_else(|| default.to_string(), Value::to_string)
    };
    ClientMeta {
        client_info: get(
            META_CLIENT_INFO,
            r#"{"name":"forkline-stateless-client","version":"0"}"#,
        ),
        capabilities: get(META_CAPABILITIES, "{}"),
    }
}

/// `params` of a request, as JSON text (`{}` when it has none).
fn request_params(line: &[u8]) -> Option<Box<RawValue>> {
    #[derive(serde::Deserialize)]
    struct Req {
        params: Option<Box<RawValue>>,
    }
    let req: Req = serde_json::from_slice(line).ok()?;
    Some(
        req.params
            .unwrap_or_else(|| RawValue::from_string("{}".into()).unwrap_or_default()),
    )
}

/// `params.notifications` of `subscriptions/listen`.
fn listen_filter(line: &[u8]) -> Option<Filter> {
    #[derive(serde::Deserialize)]
    struct Req {
        params: Params,
    }
    #[derive(serde::Deserialize)]
    struct Params {
        notifications: Filter,
    }
    serde_json::from_slice::<Req>(line)
        .ok()
        .map(|r| r.params.notifications)
}

/// What a retry after an `InputRequiredResult` carries.
struct Retry {
    /// The exchange it resumes (from `requestState`).
    state: u64,
    responses: Vec<(String, Box<RawValue>)>,
}

fn retry_of(line: &[u8]) -> Option<Retry> {
    #[derive(serde::Deserialize)]
    struct Req {
        params: Params,
    }
    #[derive(serde::Deserialize)]
    struct Params {
        #[serde(rename = "requestState")]
        state: String,
        #[serde(rename = "inputResponses", default)]
        responses: BTreeMap<String, Box<RawValue>>,
    }
    let req: Req = serde_json::from_slice(line).ok()?;
    let state = req.params.state.strip_prefix("fl-state-")?.parse().ok()?;
    Some(Retry {
        state,
        responses: req.params.responses.into_iter().collect(),
    })
}

/// `params._meta` of a request.
pub fn request_meta(line: &[u8]) -> Option<serde_json::Map<String, Value>> {
    #[derive(serde::Deserialize)]
    struct Req {
        params: Option<Params>,
    }
    #[derive(serde::Deserialize)]
    struct Params {
        #[serde(rename = "_meta")]
        meta: Option<serde_json::Map<String, Value>>,
    }
    serde_json::from_slice::<Req>(line).ok()?.params?.meta
}

/// `params.name` (or `params.uri`) of a request, which `Mcp-Name` mirrors.
pub fn request_name(line: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Req {
        params: Option<Params>,
    }
    #[derive(serde::Deserialize)]
    struct Params {
        name: Option<String>,
        uri: Option<String>,
    }
    let params = serde_json::from_slice::<Req>(line).ok()?.params?;
    params.name.or(params.uri)
}

/// An `Mcp-Name`/`Mcp-Param-*` header value, decoded from the
/// `=?base64?…?=` form when it is in it.
pub fn header_value(raw: &str) -> Option<String> {
    match raw
        .strip_prefix("=?base64?")
        .and_then(|r| r.strip_suffix("?="))
    {
        Some(encoded) => String::from_utf8(base64_decode(encoded)?).ok(),
        None => Some(raw.to_string()),
    }
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let text = text.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    for chunk in text.chunks(4) {
        if chunk.len() == 1 {
            return None;
        }
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= value(c)? << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_swapped_and_members_keep_their_bytes() {
        let line = br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"n":1.50}}"#;
        let swapped = for_child(line, "\"fl-3\"", false).expect("rewritten");
        let text = String::from_utf8(swapped).expect("utf8");
        assert!(text.contains(r#""id":"fl-3""#), "{text}");
        assert!(text.contains(r#""params":{"n":1.50}"#), "{text}");
        assert_eq!(ours(&classify_id(&text)), Some(3));
    }

    fn classify_id(text: &str) -> Id {
        let Ok(Kind::Request { id, .. }) = classify(text.as_bytes()) else {
            panic!("{text}")
        };
        id
    }

    #[test]
    fn handshake_results_get_what_the_stateless_era_requires_once() {
        let line = br#"{"jsonrpc":"2.0","id":"fl-1","result":{"tools":[]}}"#;
        let typed = for_client(line, "1", Some("tools/list")).expect("added");
        let value: Value = serde_json::from_slice(&typed).expect("json");
        assert_eq!(value["id"], 1);
        assert_eq!(value["result"]["resultType"], "complete");
        assert_eq!(value["result"]["ttlMs"], 0);
        assert_eq!(value["result"]["cacheScope"], "private");
        let mut again = Members::parse(&typed).expect("object");
        assert!(as_modern_result(&mut again, "tools/list").is_none());
        let call = for_client(
            br#"{"jsonrpc":"2.0","id":1,"result":{}}"#,
            "1",
            Some("tools/call"),
        )
        .expect("added");
        let value: Value = serde_json::from_slice(&call).expect("json");
        assert!(value["result"].get("ttlMs").is_none());
        let mut error = Members::parse(br#"{"jsonrpc":"2.0","id":1,"error":{}}"#).expect("object");
        assert!(as_modern_result(&mut error, "ping").is_none());
    }

    #[test]
    fn discover_is_made_from_an_initialize_result() {
        let line = br#"{"jsonrpc":"2.0","id":"forkline-initialize","result":{"protocolVersion":"2025-06-18","capabilities":{"tools":{}},"serverInfo":{"name":"s","version":"1"},"instructions":"hi"}}"#;
        let discover: Value =
            serde_json::from_str(discover_from_initialize(line).expect("made").get())
                .expect("json");
        assert_eq!(discover["resultType"], "complete");
        assert_eq!(discover["supportedVersions"][0], "2026-07-28");
        assert_eq!(discover["capabilities"]["tools"], serde_json::json!({}));
        assert_eq!(
            discover["_meta"]["io.modelcontextprotocol/serverInfo"]["name"],
            "s"
        );
        assert_eq!(discover["instructions"], "hi");
        let refused = br#"{"jsonrpc":"2.0","id":"forkline-initialize","error":{"code":-32601,"message":"no"}}"#;
        assert!(discover_from_initialize(refused).is_none());
    }

    #[test]
    fn the_new_eras_envelope_is_taken_off_for_old_servers() {
        let line = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"e","_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","progressToken":7}}}"#;
        let bare: Value =
            serde_json::from_slice(&for_child(line, "\"fl-1\"", true).expect("stripped"))
                .expect("json");
        assert_eq!(
            bare["params"]["_meta"],
            serde_json::json!({"progressToken": 7})
        );
        assert_eq!(bare["params"]["name"], "e");
        let only = br#"{"jsonrpc":"2.0","id":1,"method":"ping","params":{"_meta":{"io.modelcontextprotocol/clientInfo":{}}}}"#;
        let bare: Value =
            serde_json::from_slice(&for_child(only, "1", true).expect("stripped")).expect("json");
        assert!(bare["params"].get("_meta").is_none());
        let mut plain =
            Members::parse(br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#).expect("object");
        assert!(without_envelope(&mut plain).is_none());
    }

    #[test]
    fn mcp_name_headers_are_decoded_from_their_base64_form() {
        assert_eq!(header_value("get_weather").as_deref(), Some("get_weather"));
        assert_eq!(
            header_value("=?base64?SGVsbG8sIOS4lueVjA==?=").as_deref(),
            Some("Hello, 世界")
        );
        assert_eq!(
            header_value("=?base64?IHBhZGRlZCA=?=").as_deref(),
            Some(" padded ")
        );
        assert_eq!(header_value("=?base64?!!?="), None);
    }
}
