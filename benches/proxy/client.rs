//! The load driver's clients: one MCP session each, over a raw TCP line
//! stream (forkline, the twin, socat), Streamable HTTP (forkline's `serve
//! --http`, supergateway, mcp-proxy) or pipes straight to a child (the
//! floor row). All blocking, std only, with a read timeout so nothing can
//! hang the run.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;

const IO_TIMEOUT: Duration = Duration::from_secs(20);
pub const PROTOCOL_VERSION: &str = "2025-06-18";

pub fn initialize(id: u64) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"initialize","params":{{"protocolVersion":"{PROTOCOL_VERSION}","capabilities":{{}},"clientInfo":{{"name":"forkline-bench","version":"0"}}}}}}"#
    )
}

pub const INITIALIZED: &str = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;

/// The small tools/call every latency and throughput figure is made of.
pub fn echo_call(id: u64) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"echo","arguments":{{"text":"hello, forkline"}}}}}}"#
    )
}

/// How to reach a tool.
#[derive(Debug, Clone)]
pub enum Target {
    /// Newline-delimited JSON-RPC over TCP.
    Line(SocketAddr),
    /// MCP Streamable HTTP at this path, POSTs sending this `Accept`.
    Http(SocketAddr, &'static str, Accept),
    /// No proxy: spawn this command and talk to it over pipes.
    Pipe(Vec<String>),
}

/// The `Accept` header of an HTTP client's POSTs, which lets the server
/// choose how to answer a request (Streamable HTTP, 2025-06-18 §"Sending
/// Messages to the Server"): every row of the comparison sends `Both`, as
/// the SDKs do; `JsonOnly` is forkline's second HTTP row, to show what the
/// SSE framing costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accept {
    /// `application/json, text/event-stream`: the server may answer with
    /// either (forkline and supergateway answer with an SSE stream,
    /// mcp-proxy with JSON).
    Both,
    /// `application/json`: the server must answer with a JSON body.
    JsonOnly,
}

impl Accept {
    fn header(self) -> &'static str {
        match self {
            Accept::Both => "application/json, text/event-stream",
            Accept::JsonOnly => "application/json",
        }
    }
}

/// One MCP session. Every call blocks until answered or IO_TIMEOUT.
pub trait Session: Send {
    /// Sends request `id` (its JSON text is `body`) and waits for its answer.
    fn request(&mut self, id: u64, body: &str) -> io::Result<()>;
    /// Sends a notification.
    fn notify(&mut self, body: &str) -> io::Result<()>;
    /// Ends the session politely (HTTP DELETE); dropping also ends it.
    fn close(&mut self) {}
    /// HTTP: the `Content-Type` the last request was answered with.
    fn answered_as(&self) -> Option<&str> {
        None
    }
}

pub fn open(target: &Target) -> io::Result<Box<dyn Session>> {
    Ok(match target {
        Target::Line(addr) => Box::new(LineSession::connect(*addr, IO_TIMEOUT)?),
        Target::Http(addr, path, accept) => Box::new(HttpSession::connect(*addr, path, *accept)?),
        Target::Pipe(command) => Box::new(PipeSession::spawn(command)?),
    })
}

/// Opens a session and completes the MCP handshake; returns how long
/// connect → `initialize` answered took.
pub fn open_initialized(target: &Target) -> io::Result<(Box<dyn Session>, Duration)> {
    let started = Instant::now();
    let mut session = open(target)?;
    session.request(0, &initialize(0))?;
    let took = started.elapsed();
    session.notify(INITIALIZED)?;
    Ok((session, took))
}

/// An idle Streamable HTTP session as an MCP client leaves it: initialized,
/// and its GET stream (`Accept: text/event-stream`) open and answered with
/// `200 text/event-stream`, then held with no traffic. Costs the driver two
/// fds: the kept-alive POST connection and the stream's.
pub fn open_with_stream(target: &Target) -> io::Result<Box<dyn Session>> {
    let Target::Http(addr, path, accept) = target else {
        return Err(other("only an HTTP session has a GET stream"));
    };
    let mut session = HttpSession::connect(*addr, path, *accept)?;
    session.request(0, &initialize(0))?;
    session.notify(INITIALIZED)?;
    session.open_stream()?;
    Ok(Box::new(session))
}

fn other(msg: impl Into<String>) -> io::Error {
    io::Error::other(msg.into())
}

#[derive(Deserialize)]
struct Reply<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(default)]
    method: Option<IgnoredAny>,
    #[serde(default)]
    result: Option<IgnoredAny>,
    #[serde(borrow, default)]
    error: Option<&'a RawValue>,
}

/// `Some(Ok)` if `json` answers request `id`, `Some(Err)` if it is an error
/// answer to it (or an error with a null id, which is about our line),
/// `None` if it is something else (a notification, a server request).
fn answers(json: &[u8], id: u64) -> Option<io::Result<()>> {
    let reply: Reply = match serde_json::from_slice(json) {
        Ok(r) => r,
        Err(e) => return Some(Err(other(format!("unparsable reply: {e}")))),
    };
    if reply.method.is_some() {
        return None;
    }
    let raw = reply.id.map(RawValue::get);
    let ours = raw == Some(&*id.to_string());
    if let Some(error) = reply.error {
        if ours || raw == Some("null") {
            return Some(Err(other(format!("error reply: {}", error.get()))));
        }
        return None;
    }
    (ours && reply.result.is_some()).then_some(Ok(()))
}

/// Newline-delimited JSON-RPC over any byte stream.
struct Lines<R, W> {
    reader: BufReader<R>,
    writer: W,
    out: Vec<u8>,
    line: Vec<u8>,
}

impl<R: Read, W: Write> Lines<R, W> {
    fn new(reader: R, writer: W) -> Self {
        Lines {
            reader: BufReader::with_capacity(64 * 1024, reader),
            writer,
            out: Vec::with_capacity(512),
            line: Vec::with_capacity(512),
        }
    }

    fn send(&mut self, body: &str) -> io::Result<()> {
        // One write per message: body and newline together.
        self.out.clear();
        self.out.extend_from_slice(body.as_bytes());
        self.out.push(b'\n');
        self.writer.write_all(&self.out)?;
        self.writer.flush()
    }

    fn request(&mut self, id: u64, body: &str) -> io::Result<()> {
        self.send(body)?;
        self.receive(id)
    }

    /// Reads lines until the answer to `id`.
    fn receive(&mut self, id: u64) -> io::Result<()> {
        loop {
            self.line.clear();
            if self.reader.read_until(b'\n', &mut self.line)? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the peer closed the session",
                ));
            }
            if let Some(result) = answers(&self.line, id) {
                return result;
            }
        }
    }
}

/// One socket as both halves of [`Lines`], so that a session costs the
/// driver one fd, not two (`try_clone` would dup it): the burst phase holds
/// thousands of sessions under the driver's own fd limit.
struct Half(Arc<TcpStream>);

impl Read for Half {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self.0).read(buf)
    }
}

impl Write for Half {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self.0).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A session over raw TCP (forkline, the twin, socat). Besides the
/// [`Session`] calls it can send a request and read its answer apart, so
/// that a call is in flight on every session before any answer is read.
/// Dropping it closes the connection.
pub struct LineSession {
    lines: Lines<Half, Half>,
    stream: Arc<TcpStream>,
}

impl LineSession {
    /// Connects; every read and write then gives up after `timeout`.
    pub fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<LineSession> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let stream = Arc::new(stream);
        Ok(LineSession {
            lines: Lines::new(Half(Arc::clone(&stream)), Half(Arc::clone(&stream))),
            stream,
        })
    }

    /// Sends one message without waiting for anything.
    pub fn send(&mut self, body: &str) -> io::Result<()> {
        self.lines.send(body)
    }

    /// Waits up to `timeout` for the answer to request `id`.
    pub fn receive(&mut self, id: u64, timeout: Duration) -> io::Result<()> {
        // A zero timeout means "block forever" to setsockopt.
        self.stream
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        self.lines.receive(id)
    }
}

impl Session for LineSession {
    fn request(&mut self, id: u64, body: &str) -> io::Result<()> {
        self.lines.request(id, body)
    }

    fn notify(&mut self, body: &str) -> io::Result<()> {
        self.lines.send(body)
    }
}

/// The floor: the child on our own pipes, no proxy at all.
struct PipeSession {
    lines: Option<Lines<ChildStdout, ChildStdin>>,
    child: Child,
}

impl PipeSession {
    fn spawn(command: &[String]) -> io::Result<PipeSession> {
        let mut child = Command::new(&command[0])
            .args(&command[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(other("pipes missing"));
        };
        Ok(PipeSession {
            lines: Some(Lines::new(stdout, stdin)),
            child,
        })
    }

    fn lines(&mut self) -> &mut Lines<ChildStdout, ChildStdin> {
        self.lines.as_mut().expect("open until dropped")
    }
}

impl Session for PipeSession {
    fn request(&mut self, id: u64, body: &str) -> io::Result<()> {
        self.lines().request(id, body)
    }

    fn notify(&mut self, body: &str) -> io::Result<()> {
        self.lines().send(body)
    }
}

impl Drop for PipeSession {
    fn drop(&mut self) {
        // Closing stdin ends the child; kill it if it lingers. Always reap.
        self.lines.take();
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(2))
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return;
                }
            }
        }
    }
}

/// MCP Streamable HTTP: POST each message to the endpoint over one
/// keep-alive HTTP/1.1 connection, carrying `Mcp-Session-Id`; optionally
/// the session's GET stream, held open and never read after its head.
struct HttpSession {
    addr: SocketAddr,
    path: &'static str,
    accept: Accept,
    conn: Option<BufReader<TcpStream>>,
    session_id: Option<String>,
    request: Vec<u8>,
    answered_as: String,
    stream: Option<TcpStream>,
}

struct Response {
    status: u16,
    content_type: String,
    session_id: Option<String>,
    body: Vec<u8>,
}

impl HttpSession {
    fn connect(addr: SocketAddr, path: &'static str, accept: Accept) -> io::Result<HttpSession> {
        let mut s = HttpSession {
            addr,
            path,
            accept,
            conn: None,
            session_id: None,
            request: Vec::with_capacity(1024),
            answered_as: String::new(),
            stream: None,
        };
        s.conn = Some(s.dial()?);
        Ok(s)
    }

    fn dial(&self) -> io::Result<BufReader<TcpStream>> {
        let stream = TcpStream::connect_timeout(&self.addr, IO_TIMEOUT)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(BufReader::with_capacity(64 * 1024, stream))
    }

    fn exchange(&mut self, method: &str, body: &str) -> io::Result<Response> {
        self.request.clear();
        write!(
            self.request,
            "{method} {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nAccept: {}\r\nContent-Length: {}\r\n",
            self.path,
            self.addr,
            self.accept.header(),
            body.len()
        )?;
        if let Some(id) = &self.session_id {
            write!(
                self.request,
                "Mcp-Session-Id: {id}\r\nMCP-Protocol-Version: {PROTOCOL_VERSION}\r\n"
            )?;
        }
        self.request.extend_from_slice(b"\r\n");
        self.request.extend_from_slice(body.as_bytes());
        // A kept-alive connection the server has since closed fails before
        // any byte of the answer: dial again once.
        for attempt in 0..2 {
            let mut conn = match self.conn.take() {
                Some(conn) => conn,
                None => self.dial()?,
            };
            conn.get_mut().write_all(&self.request)?;
            match read_response(&mut conn) {
                Ok((response, keep)) => {
                    if keep {
                        self.conn = Some(conn);
                    }
                    return Ok(response);
                }
                Err(e) if attempt == 0 && e.kind() == io::ErrorKind::ConnectionAborted => continue,
                Err(e) => return Err(e),
            }
        }
        Err(other("the server closed the connection twice"))
    }

    /// Opens the session's GET stream on a connection of its own and reads
    /// the response head; fails unless it is `200 text/event-stream`. The
    /// stream is then held, unread, until the session is dropped.
    fn open_stream(&mut self) -> io::Result<()> {
        let Some(id) = &self.session_id else {
            return Err(other("no session id to open a GET stream with"));
        };
        let mut conn = self.dial()?;
        write!(
            conn.get_mut(),
            "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nMcp-Session-Id: {id}\r\nMCP-Protocol-Version: {PROTOCOL_VERSION}\r\n\r\n",
            self.path,
            self.addr
        )?;
        let (status, content_type) = read_head(&mut conn)?;
        if status != 200 || !content_type.starts_with("text/event-stream") {
            return Err(other(format!(
                "GET stream: HTTP {status}, Content-Type {content_type:?}"
            )));
        }
        // Anything already buffered past the head (a priming event) is
        // dropped with the reader; the socket itself stays open.
        self.stream = Some(conn.into_inner());
        Ok(())
    }
}

/// Reads a response's status line and headers only: its status and
/// `Content-Type`.
fn read_head(conn: &mut BufReader<TcpStream>) -> io::Result<(u16, String)> {
    let mut line = String::new();
    if conn.read_line(&mut line)? == 0 {
        return Err(other("closed before answering"));
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| other(format!("bad status line {line:?}")))?;
    let mut content_type = String::new();
    loop {
        line.clear();
        if conn.read_line(&mut line)? == 0 {
            return Err(other("EOF in headers"));
        }
        let header = line.trim_end();
        if header.is_empty() {
            return Ok((status, content_type));
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-type") {
                content_type = value.trim().to_ascii_lowercase();
            }
        }
    }
}

impl Session for HttpSession {
    fn request(&mut self, id: u64, body: &str) -> io::Result<()> {
        let response = self.exchange("POST", body)?;
        if response.status != 200 {
            return Err(other(format!(
                "HTTP {}: {}",
                response.status,
                String::from_utf8_lossy(&response.body)
            )));
        }
        if self.session_id.is_none() {
            self.session_id = response.session_id.clone();
        }
        if self.answered_as != response.content_type {
            self.answered_as.clone_from(&response.content_type);
        }
        let found = if response.content_type.starts_with("text/event-stream") {
            sse_data(&response.body)
                .into_iter()
                .find_map(|data| answers(data.as_bytes(), id))
        } else {
            answers(&response.body, id)
        };
        found.unwrap_or_else(|| Err(other("the response did not answer the request")))
    }

    fn notify(&mut self, body: &str) -> io::Result<()> {
        let response = self.exchange("POST", body)?;
        match response.status {
            200 | 202 | 204 => Ok(()),
            status => Err(other(format!("HTTP {status} to a notification"))),
        }
    }

    fn close(&mut self) {
        if self.session_id.is_some() {
            let _ = self.exchange("DELETE", "");
        }
        self.stream.take();
    }

    fn answered_as(&self) -> Option<&str> {
        (!self.answered_as.is_empty()).then_some(self.answered_as.as_str())
    }
}

/// The `data:` payloads of an SSE body, one string per event.
fn sse_data(body: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(body);
    let mut events = Vec::new();
    let mut data = String::new();
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            if !data.is_empty() {
                events.push(std::mem::take(&mut data));
            }
        } else if let Some(rest) = line.strip_prefix("data:") {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(rest.strip_prefix(' ').unwrap_or(rest));
        }
    }
    if !data.is_empty() {
        events.push(data);
    }
    events
}

/// Reads one HTTP/1.1 response; also says whether the connection stays
/// open. `ConnectionAborted` means nothing at all was read.
fn read_response(conn: &mut BufReader<TcpStream>) -> io::Result<(Response, bool)> {
    let mut line = String::new();
    if conn.read_line(&mut line)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "closed before answering",
        ));
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| other(format!("bad status line {line:?}")))?;
    let mut content_length = None;
    let mut chunked = false;
    let mut keep = true;
    let mut content_type = String::new();
    let mut session_id = None;
    loop {
        line.clear();
        if conn.read_line(&mut line)? == 0 {
            return Err(other("EOF in headers"));
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let Some((name, value)) = header.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "content-length" => content_length = value.parse::<usize>().ok(),
            "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
            "connection" => keep = !value.eq_ignore_ascii_case("close"),
            "content-type" => content_type = value.to_ascii_lowercase(),
            "mcp-session-id" => session_id = Some(value.to_string()),
            _ => {}
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            conn.read_line(&mut line)?;
            let size_text = line.trim().split(';').next().unwrap_or("");
            let size = usize::from_str_radix(size_text, 16)
                .map_err(|_| other(format!("bad chunk size {line:?}")))?;
            if size == 0 {
                // Trailers, then the empty line.
                loop {
                    line.clear();
                    if conn.read_line(&mut line)? == 0 || line.trim().is_empty() {
                        break;
                    }
                }
                break;
            }
            let start = body.len();
            body.resize(start + size, 0);
            conn.read_exact(&mut body[start..])?;
            let mut crlf = [0u8; 2];
            conn.read_exact(&mut crlf)?;
        }
    } else if let Some(n) = content_length {
        body.resize(n, 0);
        conn.read_exact(&mut body)?;
    } else if !(status == 204 || status == 304 || (100..200).contains(&status)) {
        conn.read_to_end(&mut body)?;
        keep = false;
    }
    Ok((
        Response {
            status,
            content_type,
            session_id,
            body,
        },
        keep,
    ))
}
