//! The admin endpoint (`serve --admin ADDR`): `/healthz`, `/metrics`
//! (Prometheus text), `/sessions` (JSON) and `DELETE /sessions/ID`.
//!
//! A listener of its own in the acceptor's `mio` loop, next to the HTTP
//! front end but sharing nothing with it but the request parser and the
//! response writer: an operator's scrape must never wait behind MCP
//! traffic, and an MCP client cannot reach these paths through `--http`.
//! Each connection gets one answer and is closed (scrapers and `curl` open
//! one per request anyway): non-blocking, at most [`MAX_CONNS`] at once,
//! [`REQUEST_TIMEOUT`] for the whole exchange, and no request body (a
//! `DELETE` has none). Everything it reads is read at request time — the
//! table's snapshot, the shared atomics — so it holds no state of its own.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use serde_json::json;
use slab::Slab;

use crate::error::Error;
use crate::http::request::{self, MAX_HEAD_BYTES, Parsed, Request};
use crate::http::response::Response;
use crate::net::fd_limit;
use crate::ops::metrics::{Gauges, Metrics, TRANSPORTS};
use crate::session::table::{EndRequest, Entry, SessionId, Sessions};

/// The admin listener's token; its connections follow it. Below the HTTP
/// front end's tokens (`1 << 30`) and far above the acceptor's listeners.
pub const TOKENS: usize = 1 << 29;
const LISTENER: Token = Token(TOKENS);
/// Room for this many connections' tokens.
const TOKEN_SPAN: usize = 1 << 20;
/// Connections open at once; more are closed at once, unanswered.
pub const MAX_CONNS: usize = 32;
/// A connection must have sent its request and taken its answer by then.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request body: none of these requests needs one.
const MAX_BODY: usize = 1024;

/// One server as `/servers` shows it.
#[derive(Debug, Clone)]
pub struct ServerView {
    pub name: String,
    pub sessions: usize,
    pub max_sessions: usize,
    pub max_sessions_per_client: usize,
    /// Children waiting in its warm pool.
    pub warm: usize,
    /// Its raw-socket listeners.
    pub listeners: Vec<String>,
}

/// What a request may read and act on, lent by the acceptor for one event.
pub struct Context<'a> {
    pub metrics: &'a Metrics,
    pub sessions: &'a Sessions,
    /// The servers new sessions may be admitted to.
    pub servers: &'a [ServerView],
    /// Shutdown has begun.
    pub draining: bool,
    pub fd_limit: u64,
    pub fd_capacity: usize,
    /// Children waiting in the warm pool (`--prespawn`).
    pub warm_pool: usize,
    /// Ends an HTTP (channel) session's input through its front end.
    pub end_channel: &'a mut dyn FnMut(SessionId) -> bool,
}

struct Conn {
    socket: TcpStream,
    peer: SocketAddr,
    input: Vec<u8>,
    output: Vec<u8>,
    written: usize,
    answered: bool,
    deadline: Instant,
}

/// The admin listener and its connections.
pub struct Admin {
    listener: Option<TcpListener>,
    addr: SocketAddr,
    conns: Slab<Conn>,
}

impl Admin {
    /// Binds `addr` and registers it with `registry`.
    pub fn bind(addr: SocketAddr, registry: &Registry) -> Result<Admin, Error> {
        let bind_error = |source| Error::Bind {
            address: format!("admin http://{addr}"),
            source,
        };
        let mut listener = TcpListener::bind(addr).map_err(bind_error)?;
        let local = listener.local_addr().map_err(bind_error)?;
        registry
            .register(&mut listener, LISTENER, Interest::READABLE)
            .map_err(bind_error)?;
        Ok(Admin {
            listener: Some(listener),
            addr: local,
            conns: Slab::new(),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn owns(token: Token) -> bool {
        (TOKENS..TOKENS + TOKEN_SPAN).contains(&token.0)
    }

    /// A readiness event for one of our tokens.
    pub fn on_event(&mut self, registry: &Registry, token: Token, ctx: &mut Context<'_>) {
        if token == LISTENER {
            self.accept(registry);
        } else {
            self.on_conn(registry, token.0 - TOKENS - 1, ctx);
        }
    }

    fn accept(&mut self, registry: &Registry) {
        loop {
            let Some(listener) = &self.listener else {
                return;
            };
            match listener.accept() {
                Ok((socket, peer)) => {
                    if self.conns.len() >= MAX_CONNS || self.conns.len() + 1 >= TOKEN_SPAN {
                        debug!("admin: too many connections; closed one from {peer}");
                        continue;
                    }
                    let entry = self.conns.vacant_entry();
                    let mut conn = Conn {
                        socket,
                        peer,
                        input: Vec::new(),
                        output: Vec::new(),
                        written: 0,
                        answered: false,
                        deadline: Instant::now() + REQUEST_TIMEOUT,
                    };
                    let token = Token(TOKENS + 1 + entry.key());
                    if let Err(e) = registry.register(
                        &mut conn.socket,
                        token,
                        Interest::READABLE | Interest::WRITABLE,
                    ) {
                        warn!("admin: cannot watch a connection from {peer}: {e}");
                        continue;
                    }
                    entry.insert(conn);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // Out of descriptors, most likely. Edge-triggered: the
                    // backlog is looked at again with the next connection;
                    // the admin side never holds the proxy up over it.
                    debug!("admin: accept failed: {e}");
                    return;
                }
            }
        }
    }

    fn on_conn(&mut self, registry: &Registry, key: usize, ctx: &mut Context<'_>) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if !conn.answered {
            let mut eof = false;
            let limit = MAX_HEAD_BYTES + MAX_BODY + 1;
            let mut chunk = [0u8; 4096];
            while conn.input.len() < limit {
                match conn.socket.read(&mut chunk) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => conn.input.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return self.close(registry, key),
                }
            }
            let response = match request::parse(&conn.input, MAX_BODY) {
                Parsed::Partial { .. } if eof => return self.close(registry, key),
                Parsed::Partial { .. } => return,
                Parsed::Bad(malformed) => {
                    Response::text(malformed.status(), &format!("{malformed}\n"))
                }
                Parsed::Whole(req, _) => route(&req, conn.peer, ctx),
            };
            conn.input = Vec::new();
            conn.answered = true;
            response.encode(true, &mut conn.output);
        }
        self.flush(registry, key);
    }

    /// Writes what it can of the answer; closes once it is all out.
    fn flush(&mut self, registry: &Registry, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        while conn.written < conn.output.len() {
            match conn.socket.write(&conn.output[conn.written..]) {
                Ok(0) => return self.close(registry, key),
                Ok(n) => conn.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.close(registry, key),
            }
        }
        if conn.answered {
            let _ = conn.socket.shutdown(Shutdown::Write);
            self.close(registry, key);
        }
    }

    fn close(&mut self, registry: &Registry, key: usize) {
        if let Some(mut conn) = self.conns.try_remove(key) {
            let _ = registry.deregister(&mut conn.socket);
        }
    }

    /// When the loop must next wake for us.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.conns.iter().map(|(_, c)| c.deadline).min()
    }

    /// Closes connections past their time: a request that never came
    /// whole gets a 408 if its socket takes it at once.
    pub fn on_timers(&mut self, registry: &Registry) {
        let now = Instant::now();
        let late: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline <= now)
            .map(|(k, _)| k)
            .collect();
        for key in late {
            if let Some(conn) = self.conns.get_mut(key) {
                if !conn.answered {
                    let mut bytes = Vec::new();
                    Response::text(408, "request not complete in time\n").encode(true, &mut bytes);
                    let _ = conn.socket.write(&bytes);
                }
            }
            self.close(registry, key);
        }
    }

    /// At shutdown the admin endpoint stays up (a balancer watches
    /// `/healthz` say `draining`) until the loop ends; then this closes it.
    pub fn close_all(&mut self, registry: &Registry) {
        if let Some(mut listener) = self.listener.take() {
            let _ = registry.deregister(&mut listener);
        }
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.close(registry, key);
        }
    }
}

/// One request's answer.
fn route(req: &Request, peer: SocketAddr, ctx: &mut Context<'_>) -> Response {
    if let Some(refused) = check_browser(req) {
        return refused;
    }
    let path = req.path.as_str();
    let method = req.method.as_str();
    let get = matches!(method, "GET" | "HEAD");
    match path {
        "/healthz" if get => {
            if ctx.draining {
                Response::text(503, "draining\n")
            } else {
                Response::text(200, "ok\n")
            }
        }
        "/metrics" if get => {
            let text = ctx.metrics.render(&gauges(ctx));
            Response::new(200)
                .header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                .body(text.into_bytes())
        }
        "/sessions" if get => {
            let now = Instant::now();
            let mut entries = ctx.sessions.snapshot();
            entries.sort_by_key(|e| e.id);
            let list: Vec<serde_json::Value> = entries.iter().map(|e| describe(e, now)).collect();
            json_response(200, &serde_json::Value::Array(list))
        }
        "/servers" if get => {
            let list: Vec<serde_json::Value> = ctx
                .servers
                .iter()
                .map(|s| {
                    json!({
                        "name": s.name,
                        "sessions": s.sessions,
                        "max_sessions": s.max_sessions,
                        "max_sessions_per_client": s.max_sessions_per_client,
                        "warm_children": s.warm,
                        "listeners": s.listeners,
                    })
                })
                .collect();
            json_response(200, &serde_json::Value::Array(list))
        }
        "/healthz" | "/metrics" | "/sessions" | "/servers" => not_allowed("GET, HEAD"),
        _ => match path.strip_prefix("/sessions/").map(parse_id) {
            Some(Some(id)) => match method {
                "GET" | "HEAD" => {
                    let now = Instant::now();
                    match ctx.sessions.snapshot().iter().find(|e| e.id == id) {
                        Some(entry) => json_response(200, &describe(entry, now)),
                        None => unknown(id),
                    }
                }
                "DELETE" => end_session(id, peer, ctx),
                _ => not_allowed("GET, HEAD, DELETE"),
            },
            Some(None) => Response::text(404, "no such session id (ids look like s42)\n"),
            None => Response::text(
                404,
                "not found; the admin endpoint serves /healthz, /metrics, /servers, /sessions and /sessions/ID\n",
            ),
        },
    }
}

fn end_session(id: SessionId, peer: SocketAddr, ctx: &mut Context<'_>) -> Response {
    let how = ctx.sessions.request_end(id);
    if how == EndRequest::Unknown {
        return unknown(id);
    }
    if how == EndRequest::Channel && !(ctx.end_channel)(id) {
        // Its front end has already let go of it: it is ending anyway.
        debug!("[{id}] admin DELETE: the session was already ending");
    }
    info!("[{id}] session ended by admin DELETE from {peer}");
    json_response(202, &json!({ "id": id.to_string(), "ending": true }))
}

/// Browsers may be made to reach a loopback port (DNS rebinding, or a
/// page's plain form post): a request with an `Origin`, or whose `Host`
/// is a name other than `localhost`, is not an operator's tool.
fn check_browser(req: &Request) -> Option<Response> {
    if req.header("origin").is_some() {
        return Some(Response::text(403, "browser requests are refused\n"));
    }
    let host = req.header("host")?;
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    if name.eq_ignore_ascii_case("localhost") || name.parse::<IpAddr>().is_ok() {
        None
    } else {
        Some(Response::text(
            403,
            "Host must be an IP address or localhost\n",
        ))
    }
}

fn gauges(ctx: &Context<'_>) -> Gauges {
    let entries = ctx.sessions.snapshot();
    let active = TRANSPORTS
        .iter()
        .map(|&t| (t, entries.iter().filter(|e| e.transport == t).count()))
        .collect();
    Gauges {
        active,
        per_server: ctx
            .servers
            .iter()
            .map(|s| (s.name.clone(), s.sessions))
            .collect(),
        warm_pool: ctx.warm_pool,
        fd_limit: ctx.fd_limit,
        fds_open: fd_limit::open_fds(),
        fd_session_capacity: ctx.fd_capacity,
        draining: ctx.draining,
    }
}

fn describe(e: &Entry, now: Instant) -> serde_json::Value {
    let a = &e.activity;
    let age = now.saturating_duration_since(e.started);
    let last = Duration::from_millis(a.last_message_ms.load(Ordering::Relaxed));
    let messages_in = a.messages_in.load(Ordering::Relaxed);
    let messages_out = a.messages_out.load(Ordering::Relaxed);
    let idle = if messages_in + messages_out == 0 {
        age
    } else {
        age.saturating_sub(last)
    };
    json!({
        "id": e.id.to_string(),
        "server": &*e.server,
        "transport": e.transport,
        "peer": e.peer,
        "principal": e.principal,
        "child_pid": e.child_pid,
        "age_seconds": seconds(age),
        "idle_seconds": seconds(idle),
        "messages_in": messages_in,
        "messages_out": messages_out,
        "bytes_in": a.bytes_in.load(Ordering::Relaxed),
        "bytes_out": a.bytes_out.load(Ordering::Relaxed),
        "inflight": a.inflight.load(Ordering::Relaxed),
        "ending": a.end_requested.load(Ordering::Relaxed),
    })
}

/// Seconds with millisecond precision.
fn seconds(d: Duration) -> f64 {
    d.as_millis() as f64 / 1000.0
}

/// `s42` → 42.
fn parse_id(text: &str) -> Option<SessionId> {
    let digits = text.strip_prefix('s')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().map(SessionId)
}

fn json_response(status: u16, value: &serde_json::Value) -> Response {
    let mut body = serde_json::to_vec(value).unwrap_or_default();
    body.push(b'\n');
    Response::json(status, body)
}

fn unknown(id: SessionId) -> Response {
    Response::text(404, &format!("no live session {id}\n"))
}

fn not_allowed(allow: &'static str) -> Response {
    Response::text(405, "method not allowed\n").header("Allow", allow)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_parse_only_in_their_own_form() {
        assert_eq!(parse_id("s42"), Some(SessionId(42)));
        assert_eq!(parse_id("42"), None);
        assert_eq!(parse_id("s"), None);
        assert_eq!(parse_id("s+1"), None);
        assert_eq!(parse_id("s99999999999999999999999"), None);
    }

    fn request(text: &str) -> Request {
        match request::parse(text.as_bytes(), MAX_BODY) {
            Parsed::Whole(req, _) => req,
            other => panic!("not a whole request: {other:?}"),
        }
    }

    #[test]
    fn browser_requests_are_refused() {
        let ok = request("GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:9\r\n\r\n");
        assert!(check_browser(&ok).is_none());
        let ok = request("GET /metrics HTTP/1.1\r\nHost: [::1]:9\r\n\r\n");
        assert!(check_browser(&ok).is_none());
        let ok = request("GET /metrics HTTP/1.1\r\nHost: localhost:9\r\n\r\n");
        assert!(check_browser(&ok).is_none());
        let rebound = request("GET /metrics HTTP/1.1\r\nHost: evil.example:9\r\n\r\n");
        assert_eq!(check_browser(&rebound).map(|r| r.status()), Some(403));
        let cross = request(
            "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: http://evil.example\r\n\r\n",
        );
        assert_eq!(check_browser(&cross).map(|r| r.status()), Some(403));
    }
}
