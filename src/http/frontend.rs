//! The HTTP front end: every HTTP listener and connection, driven by the
//! acceptor's own `mio` loop, and the HTTP sessions they lead to.
//!
//! Connections cost no thread: a thousand open GET streams are a thousand
//! sockets in this loop. Each session still has its own worker thread and
//! child, reached through channels (`session::client::ChannelPeer`); a
//! worker that has put messages in its outbox calls the session's notify,
//! which queues the session here and wakes the loop, and the loop routes
//! them to the streams they belong to (`http::session`).

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use log::{debug, info, warn};
use mio::net::TcpListener;
use mio::{Interest, Registry, Token, Waker};
use slab::Slab;

use crate::error::Error;
use crate::http::conn::{self, Conn, Phase};
use crate::http::node::NodeId;
use crate::http::request::{self, Malformed, Parsed, Request};
use crate::http::response::{self, Response};
use crate::http::security::{self, Access, NoToken, Principal};
use crate::http::session::{
    self, Delivery, GET_STREAM, HttpSession, OpenError, Posted, Reply, Transport,
};
use crate::http::stateless::{self, Incoming, MODERN_VERSIONS, StatelessChild};
use crate::net::fd_limit::Reserve;
use crate::proto::message::{Invalid, Kind, classify, code};
use crate::session::client::{ChannelPeer, Notify, Refused};
use crate::session::table::{ClientKey, Refusal, SessionId};

/// mio tokens: listeners and connections live above the acceptor's own.
pub const LISTENER_TOKENS: usize = 1 << 30;
pub const CONN_TOKENS: usize = 1 << 31;

/// A request's head must be complete this long after its first byte.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// And its body this long after the head.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// A connection with no request in progress is closed after this.
const KEEP_ALIVE_IDLE: Duration = Duration::from_secs(60);
/// An SSE stream with nothing to say sends a comment this often, so a
/// dead peer is noticed and proxies do not time it out.
const SSE_KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How long an SSE head may wait for its first event before it is
/// written alone.
const HEAD_HOLD: Duration = Duration::from_millis(5);
/// A session's output waits while one of its connections has this much
/// unsent (backpressure: the worker then stops reading its child).
const OUTPUT_HIGH_WATER: usize = 256 * 1024;
/// Messages each way between the loop and one session's worker.
pub const CHANNEL_CAPACITY: usize = 128;
/// Messages taken from one session per turn, so one chatty child cannot
/// hold the loop.
const SESSION_BATCH: usize = 256;
/// How long a refused client's unread input is drained before closing.
const DRAIN_TIME: Duration = Duration::from_secs(2);
/// Pause before trying a listener again after `accept` failed.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Protocol versions of the handshake era a client may name.
const HANDSHAKE_VERSIONS: [&str; 4] = ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];
/// What a client that sends no `MCP-Protocol-Version` speaks (the spec).
const DEFAULT_VERSION: &str = "2025-03-26";

const ALLOWED_HEADERS: &str = "Content-Type, Accept, Authorization, Mcp-Session-Id, \
     Mcp-Protocol-Version, Mcp-Method, Mcp-Name, Last-Event-ID";
const EXPOSED_HEADERS: &str = "Mcp-Session-Id, Mcp-Protocol-Version, WWW-Authenticate";

/// Which server a request reaches.
pub enum Route {
    Found {
        name: Arc<str>,
        max_message_bytes: usize,
    },
    /// No server of that name (or, for a path without one, not exactly
    /// one server); these are the names there are.
    Unknown { known: Vec<String> },
}

/// What the front end needs from the acceptor: the servers, and to start
/// a session, a place in the session table and a worker.
pub trait Admit {
    /// The server `/servers/NAME/…` names, or (`None`) the one `/mcp`
    /// serves.
    fn route(&self, server: Option<&str>) -> Route;

    /// `principal` is the bearer token's name, when there is one.
    fn admit(
        &mut self,
        server: &str,
        client: ClientKey,
        peer: String,
        principal: Option<&str>,
        transport: &'static str,
        notify: Notify,
    ) -> Result<(SessionId, ChannelPeer), Refusal>;
}

/// Counts a refusal the front end makes itself, by its metrics label
/// (table refusals are counted where `Admit` is refused).
pub type OnRefused = Box<dyn Fn(&'static str)>;

/// The HTTP side of `serve`.
pub struct Frontend {
    listeners: Vec<(TcpListener, SocketAddr)>,
    conns: Slab<Conn>,
    sessions: Slab<Live<HttpSession>>,
    by_id: HashMap<String, usize>,
    children: Slab<Live<StatelessChild>>,
    by_principal: HashMap<String, usize>,
    ready_tx: Sender<usize>,
    ready_rx: Receiver<usize>,
    waker: Arc<Waker>,
    access: Access,
    /// The first field of every session id minted here.
    node: NodeId,
    max_body: usize,
    max_conns: usize,
    draining: bool,
    /// Every connection's deadline, one entry each (`Conn::deadline`), so
    /// the set never holds more entries than there are connections.
    timers: BTreeSet<(Instant, usize)>,
    /// Spent to refuse a connection with a 503 when `accept` hits EMFILE.
    reserve: Reserve,
    /// When to try the listeners' backlogs again after `accept` failed.
    accept_retry: Option<Instant>,
    /// Connections with input to serve once their exchange ended.
    resume: Vec<usize>,
    /// New stateless children still to answer `server/discover`, and when
    /// they will be taken for handshake-era servers.
    probes: Vec<(Instant, usize, SessionId)>,
    on_refused: Option<OnRefused>,
}

/// A session (or a principal's stateless child) and its worker's state.
struct Live<S> {
    session: S,
    /// The server it is a session of: requests for another find it not.
    server: Arc<str>,
    /// Its server's `maxMessageBytes` when it started: a reload changes
    /// new sessions' settings, not this one's.
    max_message_bytes: usize,
    table_id: SessionId,
    queued: Arc<AtomicBool>,
    /// Its output waits for a connection to drain.
    stalled: bool,
}

/// What the front end needs of whatever routes one worker's output.
trait Routes {
    fn peer(&self) -> &ChannelPeer;
    fn route(&mut self, line: Vec<u8>, out: &mut Vec<Delivery>);
    fn end(&mut self, out: &mut Vec<Delivery>);
    /// Whether any connection carrying its streams passes `test`.
    fn any_conn(&self, test: &mut dyn FnMut(usize) -> bool) -> bool;
}

impl Routes for HttpSession {
    fn peer(&self) -> &ChannelPeer {
        &self.peer
    }
    fn route(&mut self, line: Vec<u8>, out: &mut Vec<Delivery>) {
        HttpSession::from_child(self, line, out);
    }
    fn end(&mut self, out: &mut Vec<Delivery>) {
        HttpSession::end(self, out);
    }
    fn any_conn(&self, test: &mut dyn FnMut(usize) -> bool) -> bool {
        self.conns().any(test)
    }
}

impl Routes for StatelessChild {
    fn peer(&self) -> &ChannelPeer {
        &self.peer
    }
    fn route(&mut self, line: Vec<u8>, out: &mut Vec<Delivery>) {
        StatelessChild::from_child(self, line, out);
    }
    fn end(&mut self, out: &mut Vec<Delivery>) {
        StatelessChild::end(self, out);
    }
    fn any_conn(&self, test: &mut dyn FnMut(usize) -> bool) -> bool {
        self.conns().any(test)
    }
}

/// One turn of taking a worker's output.
struct Turn {
    out: Vec<Delivery>,
    ended: bool,
    /// It may have more waiting: take another turn.
    more: bool,
}

/// Takes what `live`'s worker has put out, unless one of its connections
/// is too far behind (then `flush` brings it back).
fn take_output<S: Routes>(live: &mut Live<S>, conns: &Slab<Conn>) -> Turn {
    let mut turn = Turn {
        out: Vec::new(),
        ended: false,
        more: false,
    };
    let stalled = live
        .session
        .any_conn(&mut |c| conns.get(c).is_some_and(|c| c.unsent() > OUTPUT_HIGH_WATER));
    live.stalled = stalled;
    if stalled {
        return turn;
    }
    let mut taken = 0;
    while taken < SESSION_BATCH {
        match live.session.peer().try_recv() {
            Ok(Some(line)) => {
                taken += 1;
                live.session.route(line, &mut turn.out);
            }
            Ok(None) => break,
            Err(_) => {
                live.session.end(&mut turn.out);
                turn.ended = true;
                break;
            }
        }
    }
    turn.more = !turn.ended && taken == SESSION_BATCH;
    turn
}

/// Stateless children's keys (in the ready queue and in
/// `Phase::Answering`) carry this bit; sessions' do not.
const STATELESS: usize = 1 << 40;

impl Frontend {
    /// Binds every `--http` address and registers it with `registry`.
    pub fn bind(
        addrs: &[SocketAddr],
        registry: &Registry,
        waker: Arc<Waker>,
        access: Access,
        max_body: usize,
        max_sessions: usize,
        node: NodeId,
    ) -> Result<Frontend, Error> {
        let mut listeners = Vec::with_capacity(addrs.len());
        for (i, addr) in addrs.iter().enumerate() {
            let bind_error = |source| Error::Bind {
                address: format!("http://{addr}"),
                source,
            };
            let mut listener = TcpListener::bind(*addr).map_err(bind_error)?;
            let local = listener.local_addr().map_err(bind_error)?;
            registry
                .register(
                    &mut listener,
                    Token(LISTENER_TOKENS + i),
                    Interest::READABLE,
                )
                .map_err(bind_error)?;
            listeners.push((listener, local));
        }
        // Bounded by the sessions that can exist: each is queued at most
        // once until the loop takes it.
        let (ready_tx, ready_rx) = crossbeam_channel::unbounded();
        Ok(Frontend {
            listeners,
            conns: Slab::new(),
            sessions: Slab::new(),
            by_id: HashMap::new(),
            children: Slab::new(),
            by_principal: HashMap::new(),
            ready_tx,
            ready_rx,
            waker,
            access,
            node,
            max_body,
            // Clients keep a few connections per session (a GET stream,
            // POSTs in flight); past this, new ones get 503.
            max_conns: max_sessions.saturating_mul(4).max(64),
            draining: false,
            timers: BTreeSet::new(),
            reserve: Reserve::new(),
            accept_retry: None,
            resume: Vec::new(),
            probes: Vec::new(),
            on_refused: None,
        })
    }

    /// The largest request body taken (a reload changed the servers):
    /// `max_body`, or more while a live session started under a larger
    /// limit (until the next reload after it ends).
    pub fn set_max_body(&mut self, max_body: usize) {
        let live = self.sessions.iter().map(|(_, l)| l.max_message_bytes).max();
        self.max_body = live.map_or(max_body, |l| l.max(max_body));
    }

    /// Counts the refusals the front end makes itself (too many
    /// connections, shutting down, out of descriptors at `accept`).
    pub fn count_refusals(&mut self, on_refused: OnRefused) {
        self.on_refused = Some(on_refused);
    }

    fn refused(&self, reason: &'static str) {
        if let Some(count) = &self.on_refused {
            count(reason);
        }
    }

    /// Ends session `id`'s input, as a DELETE of it would (the admin
    /// endpoint's `DELETE /sessions/ID`): its worker winds down, and an
    /// HTTP session's id answers 404 from now on. `false` if no session
    /// or stateless child here has that id.
    pub fn end_session(&mut self, id: SessionId) -> bool {
        if let Some((_, live)) = self.sessions.iter_mut().find(|(_, l)| l.table_id == id) {
            live.session.ended = true;
            live.session.peer.end_input();
            return true;
        }
        if let Some((_, live)) = self.children.iter_mut().find(|(_, l)| l.table_id == id) {
            // Its principal's next request finds it gone and is told to
            // retry, as after an idle end; the retry starts a new child.
            live.session.peer.end_input();
            return true;
        }
        false
    }

    /// The bound addresses, for the `listening on` lines.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().map(|(_, a)| *a).collect()
    }

    pub fn owns(token: Token) -> bool {
        token.0 >= LISTENER_TOKENS
    }

    /// A readiness event for one of our tokens.
    pub fn on_event(
        &mut self,
        registry: &Registry,
        event: &mio::event::Event,
        admit: &mut dyn Admit,
    ) {
        let token = event.token();
        if token.0 >= CONN_TOKENS {
            let key = token.0 - CONN_TOKENS;
            if event.is_read_closed() {
                // The peer's FIN came: read on to it, short reads or not.
                if let Some(conn) = self.conns.get_mut(key) {
                    conn.peer_closing = true;
                }
            }
            self.on_conn_ready(registry, key, admit);
        } else {
            self.accept(registry, token.0 - LISTENER_TOKENS);
        }
        self.resume_input(registry, admit);
    }

    /// Connections whose exchange ended with more input behind it (a
    /// pipelined request, or input left unread at its bound) are served
    /// now: no readiness event will come for bytes already read.
    fn resume_input(&mut self, registry: &Registry, admit: &mut dyn Admit) {
        while let Some(key) = self.resume.pop() {
            self.on_conn_ready(registry, key, admit);
        }
    }

    fn accept(&mut self, registry: &Registry, i: usize) {
        loop {
            let Some((listener, _)) = self.listeners.get(i) else {
                return;
            };
            match listener.accept() {
                Ok((socket, peer)) => self.add_conn(registry, socket, peer),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => match e.raw_os_error() {
                    Some(libc::ECONNABORTED | libc::EINTR | libc::EPROTO) => {}
                    Some(libc::EMFILE | libc::ENFILE) if self.reserve.release() => {
                        // The reserve descriptor lets us take the
                        // connection and say why it is refused.
                        if let Ok((mut socket, _)) = listener.accept() {
                            if let Some(count) = &self.on_refused {
                                count("fd_limit");
                            }
                            let mut bytes = Vec::new();
                            Response::rpc_error(
                                503,
                                code::SESSION_REFUSED,
                                "session refused: out of file descriptors",
                            )
                            .header("Retry-After", "1")
                            .encode(true, &mut bytes);
                            let _ = io::Write::write(&mut socket, &bytes);
                        }
                        self.reserve.restore();
                    }
                    _ => {
                        // Edge-triggered: nothing will tell us again, so
                        // the backlog is tried again after a pause.
                        warn!("http accept failed: {e}; retrying");
                        self.accept_retry = Some(Instant::now() + ACCEPT_RETRY);
                        return;
                    }
                },
            }
        }
    }

    fn add_conn(&mut self, registry: &Registry, socket: mio::net::TcpStream, peer: SocketAddr) {
        let _ = socket.set_nodelay(true);
        let mut conn = Conn::new(socket, peer);
        if self.conns.len() >= self.max_conns || self.draining {
            let (why, reason) = if self.draining {
                ("forkline is shutting down", "shutting_down")
            } else {
                ("too many HTTP connections", "max_http_connections")
            };
            self.refused(reason);
            let mut bytes = Vec::new();
            Response::rpc_error(503, code::SESSION_REFUSED, why)
                .header("Retry-After", "1")
                .encode(true, &mut bytes);
            conn.queue(&bytes);
            let _ = conn.flush();
            return;
        }
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if let Err(e) = registry.register(
            &mut conn.socket,
            Token(CONN_TOKENS + key),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            warn!("cannot watch an HTTP connection from {peer}: {e}");
            return;
        }
        entry.insert(conn);
        self.arm(key);
    }

    fn on_conn_ready(&mut self, registry: &Registry, key: usize, admit: &mut dyn Admit) {
        let limit = conn::input_limit(self.max_body);
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if let Err(e) = conn.fill(limit) {
            debug!("http connection from {} failed: {e}", conn.peer);
            self.close(registry, key);
            return;
        }
        self.flush(registry, key);
        self.serve_input(registry, key, admit);
    }

    /// Answers every whole request in the connection's input, while it is
    /// free to (an answer still streaming holds the rest back).
    fn serve_input(&mut self, registry: &Registry, key: usize, admit: &mut dyn Admit) {
        loop {
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            if conn.phase == Phase::Draining {
                conn.input = Vec::new();
                if conn.eof {
                    self.close(registry, key);
                }
                return;
            }
            let Phase::Reading { since, .. } = conn.phase else {
                // A client that closed while its answer is on the way is
                // gone (its stream's events stay in the log for a resume);
                // a closing connection closes once its answer is written.
                if conn.eof && matches!(conn.phase, Phase::Answering { .. }) {
                    self.close(registry, key);
                }
                return;
            };
            if conn.input.is_empty() {
                if conn.eof {
                    self.close(registry, key);
                } else {
                    conn.phase = Phase::Reading {
                        since: None,
                        head_done: false,
                    };
                    self.arm(key);
                }
                return;
            }
            match request::parse(&conn.input, self.max_body) {
                Parsed::Partial { head_done } => {
                    if conn.eof {
                        self.close(registry, key);
                        return;
                    }
                    let since = since.unwrap_or_else(Instant::now);
                    let before = conn.phase;
                    conn.phase = Phase::Reading {
                        since: Some(since),
                        head_done,
                    };
                    if before != conn.phase {
                        self.arm(key);
                    }
                    return;
                }
                Parsed::Bad(malformed) => {
                    self.refuse_malformed(registry, key, &malformed);
                    return;
                }
                Parsed::Whole(req, used) => {
                    conn.consume(used);
                    conn.close_after = !req.keep_alive() || self.draining;
                    conn.origin = None;
                    self.on_request(registry, key, req, admit);
                }
            }
        }
    }

    fn refuse_malformed(&mut self, registry: &Registry, key: usize, malformed: &Malformed) {
        debug!("http: {malformed}");
        let status = malformed.status();
        let response = Response::rpc_error(status, code::INVALID_REQUEST, &malformed.to_string());
        if let Some(conn) = self.conns.get_mut(key) {
            // The rest of the input cannot be framed: answer and close
            // (draining what is left, see `Phase::Draining`).
            conn.close_after = true;
        }
        self.respond(registry, key, response);
    }

    /// One whole request: every check of the contract in order, then the
    /// endpoint.
    fn on_request(
        &mut self,
        registry: &Registry,
        key: usize,
        mut req: Request,
        admit: &mut dyn Admit,
    ) {
        let Some((named, endpoint)) = endpoint_of(&req.path) else {
            let r = Response::text(
                404,
                "not found: forkline serves MCP at /mcp (and /sse, /messages), or at \
                 /servers/NAME/mcp for each server of its --config file",
            );
            return self.respond(registry, key, r);
        };
        let origin = req.header("origin");
        if !self.access.origin_allowed(origin) {
            let r = Response::rpc_error(
                403,
                code::INVALID_REQUEST,
                &format!(
                    "Origin {} is not allowed (allow it with --allow-origin)",
                    origin.unwrap_or_default()
                ),
            );
            return self.respond(registry, key, r);
        }
        if let Some(conn) = self.conns.get_mut(key) {
            conn.origin = origin.map(str::to_string);
        }
        if req.method == "OPTIONS" {
            let r = Response::new(204)
                .header("Access-Control-Allow-Methods", endpoint.allow())
                .header("Access-Control-Allow-Headers", ALLOWED_HEADERS)
                .header("Access-Control-Max-Age", "86400");
            return self.respond(registry, key, r);
        }
        // A session id whose node field names another node is not here,
        // whatever else the request says: 404, which tells an SDK to start
        // a new session (a balancer that lost track of the node may send
        // it anywhere). Checked before the token: which node holds a
        // session is no secret, it is the id's first field. An id with no
        // node field is no node's and goes the usual way (token, then 404).
        let claimed = match endpoint {
            Endpoint::Mcp => req.header("mcp-session-id"),
            Endpoint::Messages => req.query_param("sessionId"),
            Endpoint::Sse => None,
        };
        if claimed.is_some_and(|id| self.node.names_other_node(id)) {
            return self.respond(registry, key, unknown_session());
        }
        let principal = match self.access.authenticate(req.header("authorization")) {
            Ok(principal) => principal,
            Err(NoToken) => {
                let r = Response::rpc_error(
                    401,
                    code::INVALID_REQUEST,
                    "a valid bearer token is required",
                )
                .header("WWW-Authenticate", "Bearer");
                return self.respond(registry, key, r);
            }
        };
        let (server, server_limit) = match admit.route(named) {
            Route::Found {
                name,
                max_message_bytes,
            } => (name, max_message_bytes),
            Route::Unknown { known } => match self.retired_server(&req, named) {
                // A reload removed its server; its live sessions finish.
                Some(server) => (server, self.max_body),
                None => {
                    let r = unknown_server(named, &known);
                    return self.respond(registry, key, r);
                }
            },
        };
        // A live session keeps the limit it started with, whatever a reload
        // has made of its server's since (its worker holds it to that one).
        let max_message_bytes = self
            .named_session(&req)
            .filter(|live| live.server == server)
            .map_or(server_limit, |live| live.max_message_bytes);
        if req.body.len() > max_message_bytes {
            let r = Response::rpc_error(
                413,
                code::INVALID_REQUEST,
                &format!(
                    "request body larger than server {server}'s maxMessageBytes ({max_message_bytes})"
                ),
            );
            return self.respond(registry, key, r);
        }
        let at = Mount {
            server,
            max_message_bytes: server_limit,
            named: named.is_some(),
        };
        let method_ok = match endpoint {
            Endpoint::Mcp => matches!(req.method.as_str(), "GET" | "POST" | "DELETE"),
            Endpoint::Sse => req.method == "GET",
            Endpoint::Messages => req.method == "POST",
        };
        if !method_ok {
            let r = Response::text(405, "method not allowed").header("Allow", endpoint.allow());
            return self.respond(registry, key, r);
        }
        match (endpoint, req.method.as_str()) {
            (Endpoint::Mcp, "POST") => {
                self.post_mcp(registry, key, &mut req, &at, principal, admit);
            }
            (Endpoint::Mcp, "GET") => self.get_mcp(registry, key, &req, &at, principal),
            (Endpoint::Mcp, _) => self.delete_mcp(registry, key, &req, &at, principal),
            (Endpoint::Sse, _) => self.get_sse(registry, key, &req, &at, principal, admit),
            (Endpoint::Messages, _) => {
                self.post_messages(registry, key, &mut req, &at, principal);
            }
        }
    }

    fn post_mcp(
        &mut self,
        registry: &Registry,
        key: usize,
        req: &mut Request,
        at: &Mount,
        principal: Option<Principal>,
        admit: &mut dyn Admit,
    ) {
        if let Err(r) = check_json_post(req) {
            return self.respond(registry, key, r);
        }
        let body = std::mem::take(&mut req.body);
        let req: &Request = req;
        let sse = req.names("text/event-stream");
        if !sse && !req.accepts("application/json") {
            let r = Response::rpc_error(
                406,
                code::INVALID_REQUEST,
                "Accept must allow application/json or text/event-stream",
            );
            return self.respond(registry, key, r);
        }
        let version = req.header("mcp-protocol-version");
        let session_id = req.header("mcp-session-id");
        if let Some(v) = version {
            if session_id.is_none() && v >= MODERN_VERSIONS[0] {
                return self.stateless(registry, key, req, body, at, principal, admit);
            }
            if !HANDSHAKE_VERSIONS.contains(&v) {
                let r = unsupported_version(v);
                return self.respond(registry, key, r);
            }
        }
        let (line, kind) = match message_of(body) {
            Ok(found) => found,
            Err(r) => return self.respond(registry, key, r),
        };
        let live = match session_id {
            Some(id) => match self.find(id, principal.as_ref(), at) {
                Some(live) => live,
                None => return self.respond(registry, key, unknown_session()),
            },
            None => {
                if !is_initialize(&kind) {
                    let r = Response::rpc_error(
                        400,
                        code::INVALID_REQUEST,
                        "Bad Request: no Mcp-Session-Id header (only initialize starts a session)",
                    );
                    return self.respond(registry, key, r);
                }
                let protocol = requested_version(&line)
                    .unwrap_or_else(|| version.unwrap_or(DEFAULT_VERSION).to_string());
                let transport = Transport::Streamable;
                match self.start_session(key, transport, at, principal, protocol, admit) {
                    Ok(live) => live,
                    Err(r) => return self.respond(registry, key, r),
                }
            }
        };
        let protocol = version
            .map(str::to_string)
            .unwrap_or_else(|| self.sessions[live].session.protocol.clone());
        let posted = Posted {
            kind: &kind,
            progress_tokens: session::progress_tokens(&line),
        };
        let session_header = self.sessions[live].session.id.clone();
        let head = |status| Response::new(status).header("Mcp-Session-Id", session_header.clone());
        let reply = if sse {
            Reply::Sse
        } else {
            Reply::Json {
                head: self.with_cors(key, head(200).header("Content-Type", "application/json")),
                batch: matches!(kind, Kind::Batch(_)),
                collected: Vec::new(),
            }
        };
        let session = &mut self.sessions[live].session;
        match session.peer.try_send(line) {
            Ok(()) => {}
            Err(Refused::Full) => {
                let r =
                    Response::rpc_error(503, code::SESSION_REFUSED, "the session is busy; retry")
                        .header("Retry-After", "1");
                return self.respond(registry, key, r);
            }
            Err(Refused::Gone) => return self.respond(registry, key, unknown_session()),
        }
        let Some(stream) = session.post(&posted, key, reply) else {
            return self.respond(registry, key, head(202));
        };
        if !sse {
            self.hold(key, live, false);
            return;
        }
        let mut bytes = Vec::new();
        let head = self.with_cors(key, sse_head(&session_header));
        let close = self.conns.get(key).is_some_and(|c| c.close_after);
        head.encode(close, &mut bytes);
        if HttpSession::primes(&protocol) {
            bytes.extend(self.sessions[live].session.priming(stream));
        }
        self.hold_head(key, &bytes);
        self.hold(key, live, true);
    }

    /// A stateless-era POST (MCP 2026-07-28, no session id): checked
    /// against the era's header rules, then served by the principal's
    /// child (started on first use).
    // Each argument is one thing the request brought; a struct of them
    // would only be unpacked again on the next line.
    #[allow(clippy::too_many_arguments)]
    fn stateless(
        &mut self,
        registry: &Registry,
        key: usize,
        req: &Request,
        body: Vec<u8>,
        at: &Mount,
        principal: Option<Principal>,
        admit: &mut dyn Admit,
    ) {
        let version = req.header("mcp-protocol-version").unwrap_or_default();
        if !MODERN_VERSIONS.contains(&version) {
            return self.respond(registry, key, unsupported_modern_version(version));
        }
        let (line, kind) = match message_of(body) {
            Ok(found) => found,
            Err(r) => return self.respond(registry, key, r),
        };
        let (id, method) = match kind {
            Kind::Request { id, method } => (Some(id), method),
            Kind::Notification { method } => (None, method),
            _ => {
                let r = Response::rpc_error(
                    400,
                    code::INVALID_REQUEST,
                    "a stateless-era POST carries one request or notification",
                );
                return self.respond(registry, key, r);
            }
        };
        if &*method == "initialize" {
            let r = Response::rpc_error(
                400,
                code::INVALID_REQUEST,
                &format!(
                    "initialize belongs to the handshake era ({}); MCP-Protocol-Version {version} has no handshake",
                    HANDSHAKE_VERSIONS.join(", ")
                ),
            );
            return self.respond(registry, key, r);
        }
        if let Err(why) = check_headers(req, &line, &method, id.is_some(), version) {
            let r = Response::rpc_error_for(400, id.as_ref(), code::HEADER_MISMATCH, &why);
            return self.respond(registry, key, r);
        }
        let Some(peer) = self.conns.get(key).map(|c| c.peer) else {
            return;
        };
        let principal = match &principal {
            Some(name) => format!("token:{name}"),
            None => peer.ip().to_string(),
        };
        // A principal has a child of each server it uses.
        let principal_key = format!("{}/{principal}", at.server);
        let Some(id) = id else {
            // A notification: the child takes it if it runs; none is
            // started for one.
            if let Some(&slot) = self.by_principal.get(&principal_key) {
                let _ = self.children[slot].session.peer.try_send(line);
            }
            return self.respond(registry, key, Response::new(202));
        };
        let progress_token = session::progress_tokens(&line).into_iter().next();
        // A stream only when there is something to stream: otherwise one
        // JSON body, which can also carry the era's 404 for an unknown method.
        let listen = &*method == "subscriptions/listen";
        if listen && !req.names("text/event-stream") {
            let r = Response::rpc_error_for(
                406,
                Some(&id),
                code::INVALID_REQUEST,
                "subscriptions/listen is answered as a stream: Accept must name text/event-stream",
            );
            return self.respond(registry, key, r);
        }
        let sse = (progress_token.is_some() || listen) && req.names("text/event-stream");
        let incoming = Incoming {
            id,
            method: method.to_string(),
            line,
            sse,
            head: self.with_cors(
                key,
                Response::new(200).header("Content-Type", "application/json"),
            ),
            progress_token,
        };
        let current = self.by_principal.get(&principal_key).copied();
        let current = current.filter(|&slot| self.still_current(slot, &principal_key, at));
        let slot = match current {
            Some(slot) => slot,
            None => match self.start_child(principal_key, principal, at, peer, &incoming, admit) {
                Ok(slot) => slot,
                Err(r) => return self.respond(registry, key, r),
            },
        };
        if sse {
            let mut bytes = Vec::new();
            let close = self.conns.get(key).is_some_and(|c| c.close_after);
            self.with_cors(key, Response::event_stream())
                .encode(close, &mut bytes);
            self.hold_head(key, &bytes);
        }
        self.hold(key, slot | STATELESS, sse);
        let mut out = Vec::new();
        self.children[slot].session.request(key, incoming, &mut out);
        self.deliver(registry, out);
    }

    /// Whether the principal's child `slot` runs the server `at` names as
    /// it is now. One started before a reload changed its server is let
    /// go: the principal's next child gets the new settings, and the old
    /// one ends at once if it has nothing in flight, else when it idles out.
    fn still_current(&mut self, slot: usize, principal_key: &str, at: &Mount) -> bool {
        let Some(live) = self.children.get_mut(slot) else {
            return false;
        };
        if Arc::ptr_eq(&live.server, &at.server) {
            return true;
        }
        info!(
            "[{}] stateless child of {principal_key} runs settings a reload replaced; \
             the next request starts a new one",
            live.table_id
        );
        if live.session.is_idle() {
            live.session.peer.end_input();
        }
        self.by_principal.remove(principal_key);
        false
    }

    /// Starts the child of a principal that has none of this server.
    fn start_child(
        &mut self,
        principal_key: String,
        principal: String,
        at: &Mount,
        peer: SocketAddr,
        first: &Incoming,
        admit: &mut dyn Admit,
    ) -> Result<usize, Response> {
        if self.draining {
            self.refused("shutting_down");
            return Err(Response::rpc_error(
                503,
                code::SESSION_REFUSED,
                "session refused: forkline is shutting down",
            )
            .header("Retry-After", "1"));
        }
        // The slot is known before the child starts (its notify names it);
        // nothing is inserted in between, so `insert` lands on it.
        let slot = self.children.vacant_key();
        let queued = Arc::new(AtomicBool::new(false));
        let notify = self.notifier(slot | STATELESS, &queued);
        let (table_id, channel) = admit
            .admit(
                &at.server,
                ClientKey::Ip(peer.ip()),
                principal.clone(),
                Some(principal.as_str()),
                "http-stateless",
                notify,
            )
            .map_err(|refusal| {
                info!(
                    "refused principal={principal} reason={} ({refusal})",
                    refusal.reason()
                );
                Response::rpc_error_for(
                    503,
                    Some(&first.id),
                    code::SESSION_REFUSED,
                    &refusal.to_string(),
                )
                .header("Retry-After", "1")
            })?;
        info!("[{table_id}] stateless child for principal={principal}");
        self.probes
            .push((Instant::now() + stateless::PROBE_TIMEOUT, slot, table_id));
        self.by_principal.insert(principal_key.clone(), slot);
        let inserted = self.children.insert(Live {
            session: StatelessChild::start(principal_key, channel, first),
            server: Arc::clone(&at.server),
            max_message_bytes: at.max_message_bytes,
            table_id,
            queued,
            stalled: false,
        });
        debug_assert_eq!(inserted, slot);
        Ok(slot)
    }

    /// What a worker calls when it has put messages out: queues `key`
    /// (once until the loop takes it) and wakes the loop.
    fn notifier(&self, key: usize, queued: &Arc<AtomicBool>) -> Notify {
        let queued = Arc::clone(queued);
        let ready = self.ready_tx.clone();
        let waker = Arc::clone(&self.waker);
        Box::new(move || {
            if !queued.swap(true, Ordering::AcqRel) {
                let _ = ready.send(key);
                let _ = waker.wake();
            }
        })
    }

    fn get_mcp(
        &mut self,
        registry: &Registry,
        key: usize,
        req: &Request,
        at: &Mount,
        principal: Option<Principal>,
    ) {
        if !req.accepts("text/event-stream") {
            let r = Response::rpc_error(
                406,
                code::INVALID_REQUEST,
                "Accept must allow text/event-stream",
            );
            return self.respond(registry, key, r);
        }
        let Some(id) = req.header("mcp-session-id") else {
            return self.respond(registry, key, missing_session());
        };
        let Some(live) = self.find(id, principal.as_ref(), at) else {
            return self.respond(registry, key, unknown_session());
        };
        // An id not of ours has nothing to resume, which the stream says
        // (a stream number no session reaches).
        let from = req
            .header("last-event-id")
            .map(|id| session::parse_event_id(id).unwrap_or((u64::MAX, 0)));
        let protocol = req
            .header("mcp-protocol-version")
            .map(str::to_string)
            .unwrap_or_else(|| self.sessions[live].session.protocol.clone());
        let session = &mut self.sessions[live].session;
        let delivery = match session.open_stream(key, from) {
            Ok(d) => d,
            Err(OpenError::Conflict) => {
                let r = Response::rpc_error(
                    409,
                    code::INVALID_REQUEST,
                    "a GET stream is already open for this session",
                );
                return self.respond(registry, key, r);
            }
        };
        let mut bytes = Vec::new();
        let close = self.conns.get(key).is_some_and(|c| c.close_after);
        let session_id = session.id.clone();
        let priming =
            (from.is_none() && HttpSession::primes(&protocol)).then(|| session.priming(GET_STREAM));
        self.with_cors(key, sse_head(&session_id))
            .encode(close, &mut bytes);
        bytes.extend(priming.unwrap_or_default());
        bytes.extend(delivery.bytes);
        if delivery.done {
            self.write(registry, key, &bytes);
            self.exchange_done(registry, key);
        } else {
            self.hold(key, live, true);
            self.write(registry, key, &bytes);
        }
    }

    fn delete_mcp(
        &mut self,
        registry: &Registry,
        key: usize,
        req: &Request,
        at: &Mount,
        principal: Option<Principal>,
    ) {
        let Some(id) = req.header("mcp-session-id") else {
            return self.respond(registry, key, missing_session());
        };
        let Some(live) = self.find(id, principal.as_ref(), at) else {
            return self.respond(registry, key, unknown_session());
        };
        let live = &mut self.sessions[live];
        info!("[{}] http session ended by DELETE", live.table_id);
        live.session.ended = true;
        live.session.peer.end_input();
        self.respond(registry, key, Response::new(200));
    }

    fn get_sse(
        &mut self,
        registry: &Registry,
        key: usize,
        req: &Request,
        at: &Mount,
        principal: Option<Principal>,
        admit: &mut dyn Admit,
    ) {
        if !req.accepts("text/event-stream") {
            let r = Response::rpc_error(
                406,
                code::INVALID_REQUEST,
                "Accept must allow text/event-stream",
            );
            return self.respond(registry, key, r);
        }
        let live = match self.start_session(
            key,
            Transport::Legacy,
            at,
            principal,
            "2024-11-05".into(),
            admit,
        ) {
            Ok(live) => live,
            Err(r) => return self.respond(registry, key, r),
        };
        let session = &mut self.sessions[live].session;
        session.attach_legacy(key);
        let endpoint = if at.named {
            format!("/servers/{}/messages?sessionId={}", at.server, session.id)
        } else {
            format!("/messages?sessionId={}", session.id)
        };
        let mut bytes = Vec::new();
        let close = self.conns.get(key).is_some_and(|c| c.close_after);
        self.with_cors(key, Response::event_stream())
            .encode(close, &mut bytes);
        response::event(&mut bytes, None, Some("endpoint"), endpoint.as_bytes());
        self.hold(key, live, true);
        self.write(registry, key, &bytes);
    }

    fn post_messages(
        &mut self,
        registry: &Registry,
        key: usize,
        req: &mut Request,
        at: &Mount,
        principal: Option<Principal>,
    ) {
        let Some(id) = req.query_param("sessionId") else {
            let r = Response::rpc_error(
                400,
                code::INVALID_REQUEST,
                "Bad Request: no sessionId in the query",
            );
            return self.respond(registry, key, r);
        };
        let Some(live) = self.find(id, principal.as_ref(), at) else {
            return self.respond(registry, key, unknown_session());
        };
        if let Err(r) = check_json_post(req) {
            return self.respond(registry, key, r);
        }
        let (line, kind) = match message_of(std::mem::take(&mut req.body)) {
            Ok(found) => found,
            Err(r) => return self.respond(registry, key, r),
        };
        let posted = Posted {
            kind: &kind,
            progress_tokens: Vec::new(),
        };
        let session = &mut self.sessions[live].session;
        if session.transport != Transport::Legacy {
            return self.respond(registry, key, unknown_session());
        }
        match session.peer.try_send(line) {
            Ok(()) => {
                session.post(&posted, key, Reply::Sse);
                self.respond(registry, key, Response::text(202, "Accepted"));
            }
            Err(Refused::Full) => {
                let r =
                    Response::rpc_error(503, code::SESSION_REFUSED, "the session is busy; retry")
                        .header("Retry-After", "1");
                self.respond(registry, key, r);
            }
            Err(Refused::Gone) => self.respond(registry, key, unknown_session()),
        }
    }

    /// Admits a session and starts its worker.
    fn start_session(
        &mut self,
        key: usize,
        transport: Transport,
        at: &Mount,
        principal: Option<Principal>,
        protocol: String,
        admit: &mut dyn Admit,
    ) -> Result<usize, Response> {
        let refused = |text: &str| {
            Response::rpc_error(503, code::SESSION_REFUSED, text).header("Retry-After", "1")
        };
        if self.draining {
            self.refused("shutting_down");
            return Err(refused("session refused: forkline is shutting down"));
        }
        let Some(peer) = self.conns.get(key).map(|c| c.peer) else {
            return Err(refused("connection gone"));
        };
        let id = security::new_session_id(&self.node).map_err(|e| {
            warn!("no random session id: {e}");
            Response::rpc_error(500, code::SESSION_REFUSED, "cannot make a session id")
        })?;
        // As in `start_child`: nothing is inserted before `insert` below.
        let slot = self.sessions.vacant_key();
        let queued = Arc::new(AtomicBool::new(false));
        let notify = self.notifier(slot, &queued);
        let label = match transport {
            Transport::Streamable => "http",
            Transport::Legacy => "http+sse",
        };
        let (table_id, channel) = admit
            .admit(
                &at.server,
                ClientKey::Ip(peer.ip()),
                peer.to_string(),
                principal.as_deref(),
                label,
                notify,
            )
            .map_err(|refusal| {
                info!(
                    "refused peer={peer} reason={} ({refusal})",
                    refusal.reason()
                );
                refused(&refusal.to_string())
            })?;
        info!(
            "[{table_id}] {label} session peer={peer}{} protocol={protocol}",
            principal
                .as_ref()
                .map(|p| format!(" principal={p}"))
                .unwrap_or_default()
        );
        self.by_id.insert(id.clone(), slot);
        let inserted = self.sessions.insert(Live {
            session: HttpSession::new(id, principal, channel, transport, protocol),
            server: Arc::clone(&at.server),
            max_message_bytes: at.max_message_bytes,
            table_id,
            queued,
            stalled: false,
        });
        debug_assert_eq!(inserted, slot);
        Ok(slot)
    }

    /// The live session `req` names by its id, if any (whoever's it is).
    fn named_session(&self, req: &Request) -> Option<&Live<HttpSession>> {
        let id = req
            .header("mcp-session-id")
            .or_else(|| req.query_param("sessionId"))?;
        self.sessions.get(*self.by_id.get(id)?)
    }

    /// The server of the live session `req` names, when no server of the
    /// catalog matches its path any more (a reload removed it, or left
    /// several where `/mcp` had one): its sessions go on until they end.
    fn retired_server(&self, req: &Request, named: Option<&str>) -> Option<Arc<str>> {
        let live = self.named_session(req)?;
        named
            .is_none_or(|name| *live.server == *name)
            .then(|| Arc::clone(&live.server))
    }

    /// A live session by its id, for this principal and server.
    fn find(&self, id: &str, principal: Option<&Principal>, at: &Mount) -> Option<usize> {
        let &slot = self.by_id.get(id)?;
        let live = self.sessions.get(slot)?;
        (!live.session.ended
            && live.session.principal.as_ref() == principal
            && live.server == at.server)
            .then_some(slot)
    }

    /// The worker of session `slot` has put messages out (or ended).
    pub fn on_wake(&mut self, registry: &Registry, admit: &mut dyn Admit) {
        while let Ok(key) = self.ready_rx.try_recv() {
            let queued = if key & STATELESS != 0 {
                self.children.get(key & !STATELESS).map(|l| &l.queued)
            } else {
                self.sessions.get(key).map(|l| &l.queued)
            };
            if let Some(queued) = queued {
                queued.store(false, Ordering::Release);
            }
            self.service(registry, key);
        }
        self.resume_input(registry, admit);
    }

    /// Takes and routes what the worker of `key` (a session, or with the
    /// [`STATELESS`] bit a principal's child) has put out.
    fn service(&mut self, registry: &Registry, key: usize) {
        if key & STATELESS != 0 {
            return self.service_child(registry, key & !STATELESS);
        }
        let Some(live) = self.sessions.get_mut(key) else {
            return;
        };
        let turn = take_output(live, &self.conns);
        self.after_turn(key, turn.more);
        self.deliver(registry, turn.out);
        if turn.ended {
            let live = self.sessions.remove(key);
            self.by_id.remove(&live.session.id);
            if live.session.dropped_unread > 0 {
                warn!(
                    "[{}] {} server messages for the GET stream were dropped: none was open and the buffer ({} events) was full",
                    live.table_id,
                    live.session.dropped_unread,
                    session::REPLAY_EVENTS
                );
            }
            debug!("[{}] http session gone", live.table_id);
        }
    }

    fn service_child(&mut self, registry: &Registry, slot: usize) {
        let Some(live) = self.children.get_mut(slot) else {
            return;
        };
        let turn = take_output(live, &self.conns);
        self.after_turn(slot | STATELESS, turn.more);
        self.deliver(registry, turn.out);
        if turn.ended {
            let live = self.children.remove(slot);
            // Unless a reload already mapped the principal to a new child.
            if self.by_principal.get(&live.session.principal) == Some(&slot) {
                self.by_principal.remove(&live.session.principal);
            }
            debug!(
                "[{}] stateless child of {} gone",
                live.table_id, live.session.principal
            );
        }
    }

    fn after_turn(&self, key: usize, more: bool) {
        if more {
            let _ = self.ready_tx.send(key);
            let _ = self.waker.wake();
        }
    }

    fn deliver(&mut self, registry: &Registry, out: Vec<Delivery>) {
        for d in out {
            self.write(registry, d.conn, &d.bytes);
            if d.done {
                self.exchange_done(registry, d.conn);
            }
        }
    }

    /// The answer on `key` is complete: read the next request (or close).
    fn exchange_done(&mut self, registry: &Registry, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        conn.phase = if conn.close_after {
            Phase::Closing
        } else {
            Phase::Reading {
                since: None,
                head_done: false,
            }
        };
        if conn.phase != Phase::Closing && (!conn.input.is_empty() || conn.input_capped) {
            self.resume.push(key);
        }
        self.arm(key);
        self.flush(registry, key);
    }

    /// Queues an SSE head (and what comes with it) without writing it:
    /// most answers come within a millisecond, and one write of head and
    /// answer costs the client one wake-up instead of two. `HEAD_HOLD`
    /// bounds the wait (see `arm`).
    fn hold_head(&mut self, key: usize, bytes: &[u8]) {
        if let Some(conn) = self.conns.get_mut(key) {
            conn.queue(bytes);
            conn.head_held = true;
        }
    }

    /// The conn waits for session `live`'s answer.
    fn hold(&mut self, key: usize, live: usize, sse: bool) {
        if let Some(conn) = self.conns.get_mut(key) {
            conn.phase = Phase::Answering { session: live, sse };
        }
        self.arm(key);
    }

    fn respond(&mut self, registry: &Registry, key: usize, response: Response) {
        let response = self.with_cors(key, response);
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let mut bytes = Vec::new();
        response.encode(conn.close_after, &mut bytes);
        conn.queue(&bytes);
        self.exchange_done(registry, key);
    }

    fn with_cors(&self, key: usize, response: Response) -> Response {
        match self.conns.get(key).and_then(|c| c.origin.clone()) {
            Some(origin) => response
                .header("Access-Control-Allow-Origin", origin)
                .header("Access-Control-Expose-Headers", EXPOSED_HEADERS)
                .header("Vary", "Origin"),
            None => response,
        }
    }

    fn write(&mut self, registry: &Registry, key: usize, bytes: &[u8]) {
        if let Some(conn) = self.conns.get_mut(key) {
            conn.queue(bytes);
        }
        self.flush(registry, key);
    }

    fn flush(&mut self, registry: &Registry, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        match conn.flush() {
            Ok(all) => {
                if all && conn.phase == Phase::Closing {
                    if conn.input.is_empty() && !conn.input_capped {
                        self.close(registry, key);
                    } else {
                        let _ = conn.socket.shutdown(std::net::Shutdown::Write);
                        conn.input = Vec::new();
                        conn.phase = Phase::Draining;
                        self.arm(key);
                    }
                    return;
                }
                if conn.unsent() <= OUTPUT_HIGH_WATER {
                    if let Phase::Answering { session, .. } = conn.phase {
                        let stalled = if session & STATELESS != 0 {
                            self.children
                                .get(session & !STATELESS)
                                .is_some_and(|l| l.stalled)
                        } else {
                            self.sessions.get(session).is_some_and(|l| l.stalled)
                        };
                        if stalled {
                            self.service(registry, session);
                        }
                    }
                }
            }
            Err(e) => {
                debug!("http write to {} failed: {e}", conn.peer);
                self.close(registry, key);
            }
        }
    }

    fn close(&mut self, registry: &Registry, key: usize) {
        if !self.conns.contains(key) {
            return;
        }
        let mut conn = self.conns.remove(key);
        if let Some(at) = conn.deadline {
            self.timers.remove(&(at, key));
        }
        let _ = registry.deregister(&mut conn.socket);
        if let Phase::Answering { session, .. } = conn.phase {
            if session & STATELESS != 0 {
                if let Some(live) = self.children.get_mut(session & !STATELESS) {
                    live.session.detach(key);
                }
            } else if let Some(live) = self.sessions.get_mut(session) {
                if live.session.detach(key) {
                    info!("[{}] legacy SSE stream closed: session ends", live.table_id);
                    live.session.ended = true;
                    live.session.peer.end_input();
                }
            }
        }
    }

    /// Sets the connection's deadline for its phase.
    fn arm(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let now = Instant::now();
        let deadline = match conn.phase {
            Phase::Reading { since: None, .. } => Some(now + KEEP_ALIVE_IDLE),
            Phase::Reading {
                since: Some(since),
                head_done: false,
            } => Some(since + HEAD_TIMEOUT),
            Phase::Reading {
                since: Some(since),
                head_done: true,
            } => Some(since + BODY_TIMEOUT),
            Phase::Answering { .. } if conn.head_held => Some(now + HEAD_HOLD),
            Phase::Answering { .. } => Some(now + SSE_KEEP_ALIVE),
            Phase::Closing => Some(now + HEAD_TIMEOUT),
            Phase::Draining => Some(now + DRAIN_TIME),
        };
        if conn.deadline == deadline {
            return;
        }
        if let Some(old) = std::mem::replace(&mut conn.deadline, deadline) {
            self.timers.remove(&(old, key));
        }
        if let Some(at) = deadline {
            self.timers.insert((at, key));
        }
    }

    /// When the loop must next wake for us.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        let others = self
            .probes
            .iter()
            .map(|(at, _, _)| *at)
            .chain(self.accept_retry)
            .min();
        match (self.next_timer(), others) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn next_timer(&self) -> Option<Instant> {
        self.timers.first().map(|&(at, _)| at)
    }

    /// Runs every deadline that has passed.
    pub fn on_timers(&mut self, registry: &Registry) {
        let now = Instant::now();
        let (due, waiting): (Vec<_>, Vec<_>) =
            self.probes.drain(..).partition(|(at, _, _)| *at <= now);
        self.probes = waiting;
        for (_, slot, table_id) in due {
            if let Some(live) = self.children.get_mut(slot) {
                if live.table_id == table_id {
                    live.session.probe_timed_out();
                }
            }
        }
        if self.accept_retry.is_some_and(|at| at <= now) {
            self.accept_retry = None;
            for i in 0..self.listeners.len() {
                self.accept(registry, i);
            }
        }
        while let Some(&(at, key)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            conn.deadline = None;
            match conn.phase {
                Phase::Answering { .. } if conn.head_held => {
                    self.flush(registry, key);
                    self.arm(key);
                }
                Phase::Answering { sse, .. } => {
                    if sse {
                        let mut bytes = Vec::new();
                        response::comment(&mut bytes, "keep-alive");
                        conn.queue(&bytes);
                    }
                    self.arm(key);
                    self.flush(registry, key);
                }
                Phase::Reading { since: Some(_), .. } => {
                    debug!("http request from {} timed out", conn.peer);
                    conn.input = Vec::new();
                    conn.close_after = true;
                    let r = Response::rpc_error(
                        408,
                        code::INVALID_REQUEST,
                        "request not complete in time",
                    );
                    self.respond(registry, key, r);
                }
                Phase::Reading { since: None, .. } | Phase::Closing | Phase::Draining => {
                    self.close(registry, key)
                }
            }
        }
    }

    /// SIGTERM: no new connections or sessions; every connection closes after
    /// its next answer.
    pub fn begin_shutdown(&mut self, registry: &Registry) {
        self.draining = true;
        for (mut listener, _) in self.listeners.drain(..) {
            let _ = registry.deregister(&mut listener);
        }
        // Connections stay until the end: a request on one gets its 503
        // (and `Connection: close`) rather than a reset.
        for (_, conn) in self.conns.iter_mut() {
            conn.close_after = true;
        }
    }

    /// Whether everything owed to clients has been written.
    pub fn is_flushed(&self) -> bool {
        self.sessions.is_empty()
            && self.children.is_empty()
            && self.conns.iter().all(|(_, c)| c.unsent() == 0)
    }

    /// HTTP sessions still open (workers not yet ended).
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }
}

/// The server a request is for, and whether its path named it (for the
/// legacy transport's `endpoint` event, which names the POST path).
struct Mount {
    server: Arc<str>,
    /// The limit for a session or child started here.
    max_message_bytes: usize,
    /// It came by `/servers/NAME/…`, not `/mcp`, `/sse` or `/messages`.
    named: bool,
}

/// `/mcp` → (None, Mcp); `/servers/NAME/mcp` → (Some(NAME), Mcp); the
/// same for `sse` and `messages`.
fn endpoint_of(path: &str) -> Option<(Option<&str>, Endpoint)> {
    let (server, rest) = match path.strip_prefix("/servers/") {
        Some(tail) => {
            let (name, rest) = tail.split_once('/')?;
            (Some(name), rest)
        }
        None => (None, path.strip_prefix('/')?),
    };
    let endpoint = match rest {
        "mcp" => Endpoint::Mcp,
        "sse" => Endpoint::Sse,
        "messages" | "message" => Endpoint::Messages,
        _ => return None,
    };
    Some((server, endpoint))
}

/// 404 for a server that is not here, naming the ones that are (never
/// their commands or environments).
fn unknown_server(name: Option<&str>, known: &[String]) -> Response {
    let message = match name {
        Some(name) => format!("no server named {name:?} here"),
        None => "this forkline serves several servers: use /servers/NAME/mcp".to_string(),
    };
    let paths: Vec<String> = known.iter().map(|n| format!("/servers/{n}/mcp")).collect();
    let body = serde_json::json!({
        "error": message,
        "servers": known,
        "endpoints": paths,
    });
    let mut bytes = serde_json::to_vec(&body).unwrap_or_default();
    bytes.push(b'\n');
    Response::json(404, bytes)
}

#[derive(Clone, Copy)]
enum Endpoint {
    Mcp,
    Sse,
    Messages,
}

impl Endpoint {
    fn allow(self) -> &'static str {
        match self {
            Endpoint::Mcp => "GET, POST, DELETE, OPTIONS",
            Endpoint::Sse => "GET, OPTIONS",
            Endpoint::Messages => "POST, OPTIONS",
        }
    }
}

fn sse_head(session_id: &str) -> Response {
    Response::event_stream().header("Mcp-Session-Id", session_id.to_string())
}

fn check_json_post(req: &Request) -> Result<(), Response> {
    let json = req
        .header("content-type")
        .and_then(|ct| ct.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"));
    if json {
        Ok(())
    } else {
        Err(Response::rpc_error(
            415,
            code::INVALID_REQUEST,
            "Content-Type must be application/json",
        ))
    }
}

/// The body as one line for the child, and its shape. A body spread over
/// several lines is joined (newlines can only be whitespace in valid
/// JSON), since the child reads one message per line.
/// Works on the body in place: a POST's body is its message.
fn message_of(mut line: Vec<u8>) -> Result<(Vec<u8>, Kind), Response> {
    let kind =
        classify(&line).map_err(|e: Invalid| Response::rpc_error(400, e.code(), &e.message()))?;
    if memchr::memchr2(b'\n', b'\r', &line).is_some() {
        for b in &mut line {
            if *b == b'\n' || *b == b'\r' {
                *b = b' ';
            }
        }
    }
    let end = line.len()
        - line
            .iter()
            .rev()
            .take_while(|b| b.is_ascii_whitespace())
            .count();
    line.truncate(end);
    let start = line.iter().take_while(|b| b.is_ascii_whitespace()).count();
    line.drain(..start);
    Ok((line, kind))
}

fn is_initialize(kind: &Kind) -> bool {
    match kind {
        Kind::Request { method, .. } => &**method == "initialize",
        Kind::Batch(items) => items.iter().any(is_initialize),
        _ => false,
    }
}

/// `params.protocolVersion` of an initialize request.
fn requested_version(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Init {
        params: Params,
    }
    #[derive(serde::Deserialize)]
    struct Params {
        #[serde(rename = "protocolVersion")]
        protocol_version: String,
    }
    serde_json::from_slice::<Init>(body)
        .ok()
        .map(|i| i.params.protocol_version)
}

fn unsupported_version(v: &str) -> Response {
    Response::rpc_error(
        400,
        code::INVALID_REQUEST,
        &format!(
            "Bad Request: unsupported MCP-Protocol-Version {v:?} (supported: {})",
            HANDSHAKE_VERSIONS.join(", ")
        ),
    )
}

/// 400 with the era's UnsupportedProtocolVersion error: its `supported`
/// list names the handshake versions too, so a client that speaks them
/// falls back to `initialize`.
fn unsupported_modern_version(v: &str) -> Response {
    let supported: Vec<&str> = MODERN_VERSIONS
        .iter()
        .chain(HANDSHAKE_VERSIONS.iter().rev())
        .copied()
        .collect();
    let body = serde_json::json!({
        "jsonrpc": "2.0",
        "id": null,
        "error": {
            "code": code::UNSUPPORTED_VERSION,
            "message": format!("Unsupported protocol version {v:?} (supported: {})", supported.join(", ")),
            "data": { "supported": supported, "requested": v },
        },
    });
    Response::json(400, body.to_string().into_bytes())
}

/// The era's rule: `Mcp-Method`, `Mcp-Name` (for the methods that name
/// something) and the body's `_meta` protocol version must agree with
/// the body and the version header.
fn check_headers(
    req: &Request,
    line: &[u8],
    method: &str,
    is_request: bool,
    version: &str,
) -> Result<(), String> {
    match req.header("mcp-method") {
        None => return Err("Header mismatch: the Mcp-Method header is missing".into()),
        Some(m) if m != method => {
            return Err(format!(
                "Header mismatch: Mcp-Method header value {m:?} does not match body value {method:?}"
            ));
        }
        Some(_) => {}
    }
    if matches!(method, "tools/call" | "resources/read" | "prompts/get") {
        let body = stateless::request_name(line);
        let header = req.header("mcp-name");
        let Some(raw) = header else {
            return Err("Header mismatch: the Mcp-Name header is missing".into());
        };
        let decoded = stateless::header_value(raw).ok_or_else(|| {
            format!("Header mismatch: Mcp-Name header value {raw:?} is not valid base64")
        })?;
        if body.as_deref() != Some(decoded.as_str()) {
            return Err(format!(
                "Header mismatch: Mcp-Name header value {decoded:?} does not match body value {:?}",
                body.unwrap_or_default()
            ));
        }
    }
    if is_request {
        let meta = stateless::request_meta(line);
        let body_version = meta
            .as_ref()
            .and_then(|m| m.get(stateless::META_VERSION))
            .and_then(|v| v.as_str());
        if body_version != Some(version) {
            return Err(format!(
                "Header mismatch: MCP-Protocol-Version header value {version:?} does not match body value {:?}",
                body_version.unwrap_or_default()
            ));
        }
    }
    Ok(())
}

fn unknown_session() -> Response {
    Response::rpc_error(
        404,
        code::INVALID_REQUEST,
        "Session not found (unknown or ended)",
    )
}

fn missing_session() -> Response {
    Response::rpc_error(
        400,
        code::INVALID_REQUEST,
        "Bad Request: no Mcp-Session-Id header",
    )
}
