//! A small raw HTTP/1.1 client for the `serve --http` tests, on
//! `std::net::TcpStream` only, so a test sees exactly the bytes forkline
//! sends: the status line, every header, the body framing (Content-Length
//! or chunked) and, for `text/event-stream` bodies, each SSE event as it
//! arrives.
//!
//! Nothing here hides a protocol mistake: a response without
//! `Content-Length` or `Transfer-Encoding: chunked` (HTTP-CONTRACT.md: every
//! response has one), a malformed chunk or a body cut short panics with what
//! was received. Every read has a deadline; bytes read before a timeout stay
//! buffered, so a caller may wait again without losing any.
//!
//! On top of the client: starting `forkline serve --http 127.0.0.1:0`, the
//! JSON-RPC bodies the tests send, and `McpSession`, a handshake-era
//! Streamable HTTP session (one fresh connection per exchange unless a test
//! says otherwise).

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Forkline, PATIENCE, poll_until};

/// `Accept` of a Streamable HTTP client that takes either answer form.
pub const ACCEPT_BOTH: &str = "application/json, text/event-stream";
pub const ACCEPT_JSON: &str = "application/json";
pub const ACCEPT_SSE: &str = "text/event-stream";

/// The handshake-era versions HTTP-CONTRACT.md says forkline supports.
pub const SUPPORTED_VERSIONS: [&str; 4] = ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];

// ---- starting forkline ------------------------------------------------------

/// `forkline serve --http 127.0.0.1:0 ARGS… [-- CHILD…]` (no child: the
/// built-in echo-server).
pub fn serve_http(args: &[&str], child: &[String]) -> Forkline {
    let mut all: Vec<&str> = vec!["--http", "127.0.0.1:0"];
    all.extend_from_slice(args);
    if !child.is_empty() {
        all.push("--");
        all.extend(child.iter().map(String::as_str));
    }
    Forkline::serve(&all, 1)
}

/// The address of the first `http://ADDR/mcp` listener.
pub fn http_addr(forkline: &Forkline) -> SocketAddr {
    forkline
        .listening
        .iter()
        .find_map(|l| l.strip_prefix("http://"))
        .unwrap_or_else(|| panic!("no http:// listener in {:?}", forkline.listening))
        .strip_suffix("/mcp")
        .expect("the http listener line ends in /mcp")
        .parse()
        .expect("http listener address parses")
}

// ---- requests -----------------------------------------------------------------

/// An HTTP/1.1 request to write. `Host` is added unless set; the body is
/// framed by `Content-Length` (POST always, others when not empty) unless
/// `chunked` asks for chunks of that size.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub chunked: Option<usize>,
}

impl Request {
    pub fn new(method: &str, target: &str) -> Request {
        Request {
            method: method.to_string(),
            target: target.to_string(),
            headers: Vec::new(),
            body: Vec::new(),
            chunked: None,
        }
    }

    pub fn get(target: &str) -> Request {
        Request::new("GET", target)
    }

    pub fn post(target: &str) -> Request {
        Request::new("POST", target)
    }

    pub fn delete(target: &str) -> Request {
        Request::new("DELETE", target)
    }

    pub fn options(target: &str) -> Request {
        Request::new("OPTIONS", target)
    }

    /// Adds a header (a second one of the same name is added, not replaced).
    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Sets a header, replacing any of the same name.
    pub fn set_header(self, name: &str, value: &str) -> Request {
        self.without_header(name).header(name, value)
    }

    pub fn without_header(mut self, name: &str) -> Request {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Request {
        self.body = body.into();
        self
    }

    /// `Content-Type: application/json` and `value` as the body.
    pub fn json(self, value: &Value) -> Request {
        self.set_header("Content-Type", "application/json")
            .body(value.to_string())
    }

    /// Sends the body with `Transfer-Encoding: chunked`, `size` bytes a chunk.
    pub fn chunked(mut self, size: usize) -> Request {
        assert!(size > 0, "chunk size 0");
        self.chunked = Some(size);
        self
    }

    fn has_header(&self, name: &str) -> bool {
        self.headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
    }

    /// The request's bytes on the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!("{} {} HTTP/1.1\r\n", self.method, self.target).into_bytes();
        if !self.has_header("Host") {
            out.extend_from_slice(b"Host: 127.0.0.1\r\n");
        }
        for (name, value) in &self.headers {
            out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        match self.chunked {
            Some(size) => {
                out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
                for piece in self.body.chunks(size) {
                    out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
                    out.extend_from_slice(piece);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\n\r\n");
            }
            None => {
                if (!self.body.is_empty() || self.method == "POST")
                    && !self.has_header("Content-Length")
                {
                    out.extend_from_slice(
                        format!("Content-Length: {}\r\n", self.body.len()).as_bytes(),
                    );
                }
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(&self.body);
            }
        }
        out
    }
}

// ---- responses ----------------------------------------------------------------

/// A response: its head and (once read) its whole body.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every comma-separated item of every header of that name, trimmed
    /// and lowercased (`Allow`, `Access-Control-Allow-Headers`, …).
    pub fn header_items(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .map(|item| item.trim().to_ascii_lowercase())
            .filter(|item| !item.is_empty())
            .collect()
    }

    /// The media type of `Content-Type`, lowercased, without parameters.
    pub fn media_type(&self) -> Option<String> {
        self.header("Content-Type").map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
    }

    pub fn is_chunked(&self) -> bool {
        self.header_items("Transfer-Encoding")
            .iter()
            .any(|t| t == "chunked")
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the whole response if it is not.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response body is not JSON ({e}): {self}"))
    }

    /// The body parsed as a complete SSE stream.
    pub fn sse_events(&self) -> Vec<SseEvent> {
        let mut parser = SseParser::default();
        let mut events = parser.feed(&self.body);
        events.extend(parser.finish());
        events
    }

    /// Panics with the whole response unless the status is `status`.
    pub fn assert_status(&self, status: u16) -> &Response {
        assert_eq!(self.status, status, "unexpected status: {self}");
        self
    }
}

impl std::fmt::Display for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "HTTP/1.1 {} {}", self.status, self.reason)?;
        for (n, v) in &self.headers {
            writeln!(f, "{n}: {v}")?;
        }
        let body = String::from_utf8_lossy(&self.body);
        let shown: String = body.chars().take(2000).collect();
        write!(f, "\n{shown}")
    }
}

/// How the rest of a body is delimited.
#[derive(Clone, Copy, Debug)]
enum Framing {
    Length(usize),
    /// Chunked: reading a size line, data with `n` bytes left, the CRLF
    /// after the data, or the trailer section.
    ChunkSize,
    ChunkData(usize),
    ChunkEnd,
    Trailer,
    Done,
}

impl Framing {
    /// The framing of `head`'s body; panics on a response with neither
    /// `Content-Length` nor chunked encoding, except where HTTP forbids a
    /// body (1xx, 204, 304).
    fn of(head: &Response) -> Framing {
        if head.is_chunked() {
            return Framing::ChunkSize;
        }
        if let Some(len) = head.header("Content-Length") {
            let len = len
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("bad Content-Length {len:?} in {head}"));
            return if len == 0 {
                Framing::Done
            } else {
                Framing::Length(len)
            };
        }
        if head.status < 200 || head.status == 204 || head.status == 304 {
            return Framing::Done;
        }
        panic!("response with neither Content-Length nor Transfer-Encoding: chunked: {head}");
    }
}

// ---- the connection -------------------------------------------------------------

/// One client connection. Requests on it reuse it (keep-alive) as long as
/// the server keeps it open.
pub struct HttpConn {
    stream: TcpStream,
    /// Bytes received and not consumed yet.
    buf: Vec<u8>,
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(ErrorKind::TimedOut, format!("timed out reading {what}"))
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock)
}

impl HttpConn {
    pub fn connect(addr: SocketAddr) -> HttpConn {
        HttpConn::from_stream(TcpStream::connect(addr).expect("connect to forkline's HTTP port"))
    }

    pub fn from_stream(stream: TcpStream) -> HttpConn {
        stream.set_nodelay(true).expect("nodelay");
        stream
            .set_write_timeout(Some(PATIENCE))
            .expect("write timeout");
        HttpConn {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Writes `bytes` as they are.
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Writes `req`; panics if the write fails.
    pub fn send(&mut self, req: &Request) {
        self.send_raw(&req.to_bytes())
            .unwrap_or_else(|e| panic!("writing {} {}: {e}", req.method, req.target));
    }

    /// Half-closes: the server sees EOF after what was sent.
    pub fn close_write(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
    }

    /// Reads more bytes into the buffer before `deadline`. EOF is
    /// `UnexpectedEof`, the deadline `TimedOut`.
    fn fill(&mut self, deadline: Instant, what: &str) -> io::Result<()> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out(what));
        }
        self.stream.set_read_timeout(Some(left))?;
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    return Err(io::Error::new(
                        ErrorKind::UnexpectedEof,
                        format!("connection closed while reading {what}"),
                    ));
                }
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(());
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if is_timeout(&e) => return Err(timed_out(what)),
                Err(e) => return Err(e),
            }
        }
    }

    /// One line ending in LF (CR stripped); consumed only when complete.
    fn line(&mut self, deadline: Instant, what: &str) -> io::Result<Vec<u8>> {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(line);
            }
            self.fill(deadline, what)?;
        }
    }

    /// Up to `n` bytes (at least one), waiting for them if none are buffered.
    fn take_up_to(&mut self, n: usize, deadline: Instant, what: &str) -> io::Result<Vec<u8>> {
        if self.buf.is_empty() {
            self.fill(deadline, what)?;
        }
        let n = n.min(self.buf.len());
        Ok(self.buf.drain(..n).collect())
    }

    /// Reads a response head. `Ok(None)` if the server closed the
    /// connection before sending a byte of it.
    pub fn try_read_head(&mut self, timeout: Duration) -> io::Result<Option<Response>> {
        let deadline = Instant::now() + timeout;
        let status_line = match self.line(deadline, "the status line") {
            Ok(line) => line,
            Err(e) if e.kind() == ErrorKind::UnexpectedEof && self.buf.is_empty() => {
                return Ok(None);
            }
            Err(e) if e.kind() == ErrorKind::ConnectionReset && self.buf.is_empty() => {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let status_line = String::from_utf8_lossy(&status_line).into_owned();
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default();
        assert!(
            version == "HTTP/1.1" || version == "HTTP/1.0",
            "not an HTTP status line: {status_line:?}"
        );
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status code in {status_line:?}"));
        let reason = parts.next().unwrap_or_default().to_string();
        let mut headers = Vec::new();
        loop {
            let line = self.line(deadline, "the response headers")?;
            if line.is_empty() {
                break;
            }
            let line = String::from_utf8_lossy(&line).into_owned();
            let (name, value) = line
                .split_once(':')
                .unwrap_or_else(|| panic!("malformed response header {line:?}"));
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
        Ok(Some(Response {
            status,
            reason,
            headers,
            body: Vec::new(),
        }))
    }

    /// Reads a response head within `PATIENCE`; panics on EOF or timeout.
    pub fn read_head(&mut self) -> Response {
        match self.try_read_head(PATIENCE) {
            Ok(Some(head)) => head,
            Ok(None) => panic!("forkline closed the connection without a response"),
            Err(e) => panic!("reading a response head: {e}"),
        }
    }

    /// The next piece of a body (`None` once it is complete).
    fn body_piece(
        &mut self,
        framing: &mut Framing,
        deadline: Instant,
    ) -> io::Result<Option<Vec<u8>>> {
        loop {
            match *framing {
                Framing::Done => return Ok(None),
                Framing::Length(left) => {
                    let piece = self.take_up_to(left, deadline, "the body")?;
                    let left = left - piece.len();
                    *framing = if left == 0 {
                        Framing::Done
                    } else {
                        Framing::Length(left)
                    };
                    return Ok(Some(piece));
                }
                Framing::ChunkSize => {
                    let line = self.line(deadline, "a chunk size")?;
                    let line = String::from_utf8_lossy(&line).into_owned();
                    let hex = line.split(';').next().unwrap_or("").trim();
                    let size = usize::from_str_radix(hex, 16)
                        .unwrap_or_else(|_| panic!("bad chunk size line {line:?}"));
                    *framing = if size == 0 {
                        Framing::Trailer
                    } else {
                        Framing::ChunkData(size)
                    };
                }
                Framing::ChunkData(left) => {
                    let piece = self.take_up_to(left, deadline, "chunk data")?;
                    let left = left - piece.len();
                    *framing = if left == 0 {
                        Framing::ChunkEnd
                    } else {
                        Framing::ChunkData(left)
                    };
                    return Ok(Some(piece));
                }
                Framing::ChunkEnd => {
                    let line = self.line(deadline, "the CRLF after a chunk")?;
                    assert!(line.is_empty(), "chunk data longer than its size: {line:?}");
                    *framing = Framing::ChunkSize;
                }
                Framing::Trailer => {
                    if self.line(deadline, "the chunked trailer")?.is_empty() {
                        *framing = Framing::Done;
                    }
                }
            }
        }
    }

    /// Reads the whole body of `head` within `timeout`.
    pub fn read_body_within(&mut self, head: &Response, timeout: Duration) -> io::Result<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut framing = Framing::of(head);
        let mut body = Vec::new();
        while let Some(piece) = self.body_piece(&mut framing, deadline)? {
            body.extend_from_slice(&piece);
        }
        Ok(body)
    }

    /// Reads one whole response within `PATIENCE`; panics otherwise.
    pub fn read_response(&mut self) -> Response {
        let mut response = self.read_head();
        response.body = self
            .read_body_within(&response, PATIENCE)
            .unwrap_or_else(|e| panic!("reading the body of {response}: {e}"));
        response
    }

    /// Sends `req` and reads the whole response.
    pub fn request(&mut self, req: &Request) -> Response {
        self.send(req);
        self.read_response()
    }

    /// Sends `req` and reads the response head; the body is left to read
    /// as an SSE stream (or with `read_body_within`).
    pub fn open(mut self, req: &Request) -> SseStream {
        self.send(req);
        let head = self.read_head();
        SseStream::new(self, head)
    }

    /// True once the server has closed the connection (EOF or reset)
    /// within `timeout`; anything it sends meanwhile is collected in
    /// `self.leftover()`.
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            match self.fill(deadline, "until EOF") {
                Ok(()) => continue,
                Err(e) if e.kind() == ErrorKind::TimedOut => return false,
                Err(_) => return true,
            }
        }
    }

    /// Bytes received and not consumed by a response.
    pub fn leftover(&self) -> &[u8] {
        &self.buf
    }
}

/// Sends one request on a fresh connection and reads the whole response.
pub fn request(addr: SocketAddr, req: &Request) -> Response {
    HttpConn::connect(addr).request(req)
}

// ---- SSE ---------------------------------------------------------------------

/// One SSE event: the fields it had (`data` lines joined by `\n`) and the
/// comment lines (text after the `:`) that came with it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: Option<String>,
    pub comments: Vec<String>,
}

impl SseEvent {
    /// The data as JSON, if the event has non-empty data.
    pub fn json(&self) -> Option<Value> {
        let data = self.data.as_deref()?;
        if data.is_empty() {
            return None;
        }
        Some(
            serde_json::from_str(data)
                .unwrap_or_else(|e| panic!("SSE data is not JSON ({e}): {self:?}")),
        )
    }

    /// A priming event (2025-11-25 transports): an id and empty data.
    pub fn is_priming(&self) -> bool {
        self.id.as_deref().is_some_and(|id| !id.is_empty()) && self.data.as_deref() == Some("")
    }
}

/// Incremental SSE parsing (WHATWG "Interpreting an event stream"):
/// lines end in LF or CRLF; a blank line dispatches.
#[derive(Default)]
struct SseParser {
    pending: Vec<u8>,
    current: Option<SseEvent>,
}

impl SseParser {
    fn feed(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        self.pending.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(pos) = self.pending.iter().position(|b| *b == b'\n') {
            let mut line: Vec<u8> = self.pending.drain(..=pos).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8(line).expect("SSE stream is UTF-8");
            if line.is_empty() {
                if let Some(event) = self.current.take() {
                    out.push(event);
                }
                continue;
            }
            let event = self.current.get_or_insert_with(SseEvent::default);
            if let Some(comment) = line.strip_prefix(':') {
                event.comments.push(comment.trim_start().to_string());
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line.as_str(), ""),
            };
            match field {
                "id" => event.id = Some(value.to_string()),
                "event" => event.event = Some(value.to_string()),
                "data" => {
                    event.data = Some(match event.data.take() {
                        Some(before) => format!("{before}\n{value}"),
                        None => value.to_string(),
                    })
                }
                _ => {} // retry and unknown fields
            }
        }
        out
    }

    /// At the end of the body: an event not closed by a blank line is
    /// not dispatched (WHATWG), but comments alone are still reported.
    fn finish(&mut self) -> Option<SseEvent> {
        let event = self.current.take()?;
        (event.id.is_none() && event.event.is_none() && event.data.is_none()).then_some(event)
    }
}

/// What reading an SSE stream gave.
#[derive(Debug)]
pub enum SseNext {
    Event(SseEvent),
    /// The body ended cleanly (chunked terminator or full Content-Length).
    End,
    /// The connection closed or reset before the body's end.
    Closed(String),
    Timeout,
}

/// An SSE response body read incrementally. Owns its connection; once
/// the stream has ended, `into_conn` gives it back for the next request.
pub struct SseStream {
    conn: HttpConn,
    pub head: Response,
    framing: Framing,
    parser: SseParser,
    ready: std::collections::VecDeque<SseEvent>,
    /// Every event with data seen so far, in order (for "exactly one
    /// stream" checks).
    pub seen: Vec<SseEvent>,
}

impl SseStream {
    fn new(conn: HttpConn, head: Response) -> SseStream {
        let framing = Framing::of(&head);
        SseStream {
            conn,
            head,
            framing,
            parser: SseParser::default(),
            ready: Default::default(),
            seen: Vec::new(),
        }
    }

    /// Asserts the head of a `200` SSE response (HTTP-CONTRACT.md: content
    /// type, no caching, no proxy buffering, chunked).
    pub fn assert_sse_head(&self) -> &SseStream {
        assert_sse_head(&self.head);
        self
    }

    /// The next event within `timeout`.
    pub fn next_within(&mut self, timeout: Duration) -> SseNext {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(event) = self.ready.pop_front() {
                if event.data.is_some() {
                    self.seen.push(event.clone());
                }
                return SseNext::Event(event);
            }
            match self.conn.body_piece(&mut self.framing, deadline) {
                Ok(Some(piece)) => self.ready.extend(self.parser.feed(&piece)),
                Ok(None) => {
                    if let Some(event) = self.parser.finish() {
                        self.ready.push_back(event);
                        continue;
                    }
                    return SseNext::End;
                }
                Err(e) if e.kind() == ErrorKind::TimedOut => return SseNext::Timeout,
                Err(e) => return SseNext::Closed(e.to_string()),
            }
        }
    }

    /// The next event within `PATIENCE`; panics at the end or on timeout.
    pub fn next_event(&mut self) -> SseEvent {
        match self.next_within(PATIENCE) {
            SseNext::Event(e) => e,
            other => panic!(
                "expected an SSE event, got {other:?}; events so far: {:?}",
                self.seen
            ),
        }
    }

    /// The next event that carries a JSON message, skipping priming
    /// events and comment-only events; panics at the end or on timeout.
    pub fn next_message(&mut self) -> (SseEvent, Value) {
        loop {
            let event = self.next_event();
            if let Some(value) = event.json() {
                return (event, value);
            }
        }
    }

    /// Messages until one satisfies `pred` (that one included).
    pub fn messages_until(&mut self, mut pred: impl FnMut(&Value) -> bool) -> Vec<Value> {
        let mut out = Vec::new();
        loop {
            let (_, value) = self.next_message();
            let done = pred(&value);
            out.push(value);
            if done {
                return out;
            }
        }
    }

    /// Reads to the clean end of the body within `timeout`, returning the
    /// events still to come; panics on timeout or an unclean close.
    pub fn expect_end(&mut self, timeout: Duration) -> Vec<SseEvent> {
        let deadline = Instant::now() + timeout;
        let mut rest = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_within(left) {
                SseNext::Event(e) => rest.push(e),
                SseNext::End => return rest,
                other => panic!(
                    "SSE stream did not end cleanly within {timeout:?}: {other:?}; then: {rest:?}"
                ),
            }
        }
    }

    /// The connection, to send the next request on it. Panics unless the
    /// body was read to its end.
    pub fn into_conn(self) -> HttpConn {
        assert!(
            matches!(self.framing, Framing::Done),
            "into_conn before the end of the SSE body"
        );
        self.conn
    }

    /// Reads the rest of the body as a whole (for a refusal such as 404
    /// or 409 where a stream was expected) and returns the response.
    pub fn into_response(mut self) -> Response {
        let mut body = Vec::new();
        let deadline = Instant::now() + PATIENCE;
        loop {
            match self.conn.body_piece(&mut self.framing, deadline) {
                Ok(Some(piece)) => body.extend_from_slice(&piece),
                Ok(None) => break,
                Err(e) => panic!("reading the body of {}: {e}", self.head),
            }
        }
        let mut response = self.head;
        response.body = body;
        response
    }

    pub fn conn(&self) -> &HttpConn {
        &self.conn
    }
}

/// Asserts the head of a `200` SSE response.
pub fn assert_sse_head(head: &Response) {
    head.assert_status(200);
    assert_eq!(
        head.media_type().as_deref(),
        Some("text/event-stream"),
        "SSE content type: {head}"
    );
    assert!(
        head.header_items("Cache-Control")
            .iter()
            .any(|v| v == "no-cache"),
        "SSE response without Cache-Control: no-cache: {head}"
    );
    assert_eq!(
        head.header("X-Accel-Buffering")
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("no"),
        "SSE response without X-Accel-Buffering: no: {head}"
    );
    assert!(head.is_chunked(), "SSE response not chunked: {head}");
}

/// Asserts an SSE event id has the contract's `<stream>-<seq>` form.
pub fn assert_event_id(event: &SseEvent) -> String {
    let id = event
        .id
        .clone()
        .unwrap_or_else(|| panic!("SSE event without an id: {event:?}"));
    let (stream, seq) = id
        .rsplit_once('-')
        .unwrap_or_else(|| panic!("event id {id:?} is not <stream>-<seq>"));
    assert!(
        !stream.is_empty() && !seq.is_empty() && seq.bytes().all(|b| b.is_ascii_digit()),
        "event id {id:?} is not <stream>-<seq>"
    );
    id
}

// ---- JSON-RPC bodies --------------------------------------------------------

pub fn rpc_request(id: Value, method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}

pub fn rpc_notification(method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "method": method, "params": params})
}

pub fn initialize_body(id: Value, version: &str) -> Value {
    rpc_request(
        id,
        "initialize",
        json!({
            "protocolVersion": version,
            "capabilities": {"roots": {"listChanged": true}},
            "clientInfo": {"name": "forkline-http-tests", "version": "0"}
        }),
    )
}

/// `POST /mcp` with a JSON body and `Accept: ACCEPT_BOTH`.
pub fn mcp_post(body: &Value) -> Request {
    Request::post("/mcp")
        .header("Accept", ACCEPT_BOTH)
        .json(body)
}

/// `POST /mcp` with a JSON body and `Accept: application/json` only.
pub fn mcp_post_json(body: &Value) -> Request {
    Request::post("/mcp")
        .header("Accept", ACCEPT_JSON)
        .json(body)
}

/// Checks a forkline error body `{"jsonrpc":"2.0","id":null,"error":{"code":C,…}}`;
/// returns its message.
pub fn assert_error_body(response: &Response, code: i64) -> String {
    let body = response.json();
    assert_eq!(
        body["jsonrpc"], "2.0",
        "not a JSON-RPC error body: {response}"
    );
    assert_eq!(body["id"], Value::Null, "error body id: {response}");
    assert_eq!(body["error"]["code"], json!(code), "error code: {response}");
    body["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("error body without message: {response}"))
        .to_string()
}

/// True if `id` is a session id as forkline mints them: `NODE.<random>`,
/// a node id (letters, digits, `-`; 1 to 32) and 32 lowercase hex
/// characters (PRODUCT.md, Scale-out).
pub fn is_session_id(id: &str) -> bool {
    let Some((node, random)) = id.split_once('.') else {
        return false;
    };
    (1..=32).contains(&node.len())
        && node.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && random.len() == 32
        && random
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A random-looking session id no server minted.
pub const UNKNOWN_SESSION: &str = "0123456789abcdef0123456789abcdef";

// ---- the stateless era ----------------------------------------------------------

/// The stateless era's first version (MCP 2026-07-28).
pub const MODERN: &str = "2026-07-28";

/// A stateless-era request: `params._meta` says who the client is (what
/// the handshake used to).
pub fn modern(id: Value, method: &str, mut params: Value) -> Value {
    params["_meta"] = json!({
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientInfo": {"name": "raw-test", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {},
    });
    rpc_request(id, method, params)
}

/// `POST /mcp` with every header the era requires (`MCP-Protocol-Version`,
/// `Mcp-Method`, `Mcp-Name`), taken from the body; not sent yet.
pub fn stateless_post(body: &Value) -> Request {
    let mut req = Request::post("/mcp")
        .header("Accept", ACCEPT_BOTH)
        .header("MCP-Protocol-Version", MODERN)
        .json(body);
    if let Some(method) = body["method"].as_str() {
        req = req.header("Mcp-Method", method);
    }
    let name = body["params"]["name"]
        .as_str()
        .or(body["params"]["uri"].as_str());
    if let Some(name) = name {
        req = req.header("Mcp-Name", name);
    }
    req
}

// ---- a Streamable HTTP session ------------------------------------------------

/// A handshake-era session: its id, the version it sends in
/// `MCP-Protocol-Version`, and extra headers for every request (a bearer
/// token).
#[derive(Clone, Debug)]
pub struct McpSession {
    pub addr: SocketAddr,
    /// Its endpoint: `/mcp`, or `/servers/NAME/mcp`.
    pub path: String,
    pub id: String,
    pub version: String,
    pub extra: Vec<(String, String)>,
    /// The response to `initialize`.
    pub init: Value,
}

impl McpSession {
    /// `initialize` (2025-06-18, JSON answer) and `notifications/initialized`.
    pub fn open(addr: SocketAddr) -> McpSession {
        McpSession::open_with(addr, "2025-06-18", &[])
    }

    /// `initialize` at `version` with `extra` headers on every request.
    pub fn open_with(addr: SocketAddr, version: &str, extra: &[(&str, &str)]) -> McpSession {
        McpSession::open_at(addr, "/mcp", version, extra)
    }

    /// `open_with` at the endpoint `path` (`/servers/NAME/mcp`).
    pub fn open_at(
        addr: SocketAddr,
        path: &str,
        version: &str,
        extra: &[(&str, &str)],
    ) -> McpSession {
        let mut req = Request::post(path)
            .header("Accept", ACCEPT_JSON)
            .json(&initialize_body(json!(0), version));
        for (n, v) in extra {
            req = req.header(n, v);
        }
        let response = request(addr, &req);
        response.assert_status(200);
        let id = response
            .header("Mcp-Session-Id")
            .unwrap_or_else(|| panic!("initialize answer without Mcp-Session-Id: {response}"))
            .to_string();
        let init = response.json();
        let session = McpSession {
            addr,
            path: path.to_string(),
            id,
            version: version.to_string(),
            extra: extra
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            init,
        };
        session
            .post(&rpc_notification("notifications/initialized", json!({})))
            .assert_status(202);
        session
    }

    /// `req` with this session's headers added.
    pub fn with_headers(&self, mut req: Request) -> Request {
        req = req
            .header("Mcp-Session-Id", &self.id)
            .header("MCP-Protocol-Version", &self.version);
        for (n, v) in &self.extra {
            req = req.header(n, v);
        }
        req
    }

    /// `POST /mcp` of `body` (Accept both), not sent yet.
    pub fn post_req(&self, body: &Value) -> Request {
        let req = Request::post(&self.path).header("Accept", ACCEPT_BOTH);
        self.with_headers(req.json(body))
    }

    /// `POST /mcp` of `body` (Accept JSON only), not sent yet.
    pub fn post_json_req(&self, body: &Value) -> Request {
        let req = Request::post(&self.path).header("Accept", ACCEPT_JSON);
        self.with_headers(req.json(body))
    }

    /// POSTs `body` (Accept both) on a fresh connection.
    pub fn post(&self, body: &Value) -> Response {
        request(self.addr, &self.post_req(body))
    }

    /// POSTs `body` (Accept JSON only) on a fresh connection.
    pub fn post_json(&self, body: &Value) -> Response {
        request(self.addr, &self.post_json_req(body))
    }

    /// A request answered as JSON; returns the JSON-RPC response.
    pub fn call(&self, id: Value, method: &str, params: Value) -> Value {
        let response = self.post_json(&rpc_request(id, method, params));
        response.assert_status(200);
        assert_eq!(
            response.media_type().as_deref(),
            Some("application/json"),
            "{response}"
        );
        response.json()
    }

    /// `fake/env` of the fixture child behind this session: its pid.
    pub fn child_pid(&self) -> u32 {
        let reply = self.call(json!("env"), "fake/env", json!({}));
        reply["result"]["pid"]
            .as_u64()
            .unwrap_or_else(|| panic!("fake/env answer without pid: {reply}")) as u32
    }

    /// `GET /mcp` request for the session's stream, not sent yet.
    pub fn get_req(&self) -> Request {
        self.with_headers(Request::get(&self.path).header("Accept", ACCEPT_SSE))
    }

    /// Opens the session's GET stream and checks its head.
    pub fn open_get(&self) -> SseStream {
        let stream = HttpConn::connect(self.addr).open(&self.get_req());
        stream.assert_sse_head();
        stream
    }

    /// Polls until `GET /mcp` is accepted again (the previous GET stream
    /// was dropped; forkline may take a moment to see its close).
    pub fn reopen_get(&self, req: &Request) -> SseStream {
        let mut stream = None;
        let ok = poll_until(PATIENCE, || {
            let s = HttpConn::connect(self.addr).open(req);
            if s.head.status == 409 {
                return false;
            }
            stream = Some(s);
            true
        });
        assert!(
            ok,
            "GET /mcp still 409 {PATIENCE:?} after the old stream was dropped"
        );
        let stream = stream.unwrap();
        stream.assert_sse_head();
        stream
    }

    /// `DELETE /mcp` for this session.
    pub fn delete(&self) -> Response {
        request(self.addr, &self.with_headers(Request::delete(&self.path)))
    }

    /// Polls until a request in this session answers 404.
    pub fn wait_gone(&self) {
        let mut last = None;
        let gone = poll_until(PATIENCE, || {
            let r = self.post_json(&rpc_request(json!("gone?"), "ping", json!({})));
            let done = r.status == 404;
            last = Some(r);
            done
        });
        assert!(
            gone,
            "session {} still answers after {PATIENCE:?}: {}",
            self.id,
            last.unwrap()
        );
    }
}
