//! Writing HTTP/1.1 responses and Server-Sent Events as bytes.
//!
//! Every response says how long it is (`Content-Length`) or is chunked, so
//! connections stay open between requests. SSE streams are chunked: ending
//! one is the zero-length chunk, and the connection carries on.

use std::fmt::Write as _;

use crate::proto::message::Id;
use crate::proto::reply::error_line;

/// A response head and (for non-streams) its body.
#[derive(Debug)]
pub struct Response {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    /// A stream follows: chunked, no body of its own.
    streaming: bool,
}

impl Response {
    pub fn new(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            streaming: false,
        }
    }

    /// A JSON-RPC error object (id null) as the body of an error status.
    pub fn rpc_error(status: u16, code: i64, message: &str) -> Response {
        Response::json(status, error_line(None, code, message))
    }

    /// An error answer to request `id`, as `application/json`.
    pub fn rpc_error_for(status: u16, id: Option<&Id>, code: i64, message: &str) -> Response {
        Response::json(status, error_line(id, code, message))
    }

    pub fn json(status: u16, body: Vec<u8>) -> Response {
        Response::new(status)
            .header("Content-Type", "application/json")
            .body(body)
    }

    pub fn text(status: u16, body: &str) -> Response {
        Response::new(status)
            .header("Content-Type", "text/plain; charset=utf-8")
            .body(body.as_bytes().to_vec())
    }

    /// The head of an SSE stream; events follow with [`event`].
    pub fn event_stream() -> Response {
        let mut r = Response::new(200)
            .header("Content-Type", "text/event-stream")
            .header("Cache-Control", "no-cache")
            // nginx and friends would otherwise hold events back.
            .header("X-Accel-Buffering", "no");
        r.streaming = true;
        r
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }

    pub fn body(mut self, body: Vec<u8>) -> Response {
        self.body = body;
        self
    }

    pub fn status(&self) -> u16 {
        self.status
    }

    pub fn with_status(mut self, status: u16) -> Response {
        self.status = status;
        self
    }

    pub fn is_stream(&self) -> bool {
        self.streaming
    }

    /// The bytes on the wire; `close` adds `Connection: close`.
    pub fn encode(&self, close: bool, out: &mut Vec<u8>) {
        let mut head = String::with_capacity(256);
        let _ = write!(head, "HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        for (name, value) in &self.headers {
            let _ = write!(head, "{name}: {value}\r\n");
        }
        if self.streaming {
            head.push_str("Transfer-Encoding: chunked\r\n");
        } else if self.status != 204 {
            let _ = write!(head, "Content-Length: {}\r\n", self.body.len());
        }
        if close {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        out.extend_from_slice(head.as_bytes());
        if !self.streaming {
            out.extend_from_slice(&self.body);
        }
    }
}

/// One SSE event as one chunk of a chunked body, written straight into
/// `out` (no staging copy: SSE answers are the hot path). `data` is one
/// JSON line (no newline inside) or empty (a priming event); `id` is
/// forkline's `STREAM-SEQ`.
pub fn event(out: &mut Vec<u8>, id: Option<(u64, u64)>, name: Option<&str>, data: &[u8]) {
    let len = id.map_or(0, |(stream, seq)| 6 + digits(stream) + digits(seq))
        + name.map_or(0, |name| 8 + name.len())
        + 6
        + data.len()
        + 2;
    let mut w = ChunkHead(out);
    let _ = write!(w, "{len:x}\r\n");
    if let Some((stream, seq)) = id {
        let _ = writeln!(w, "id: {stream}-{seq}");
    }
    if let Some(name) = name {
        let _ = writeln!(w, "event: {name}");
    }
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\n\n\r\n");
}

/// Decimal digits of `n`.
fn digits(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |d| d as usize + 1)
}

/// An SSE comment (ignored by clients; keeps a quiet stream's connection
/// in use so dead peers are noticed).
pub fn comment(out: &mut Vec<u8>, text: &str) {
    chunk(out, format!(": {text}\n\n").as_bytes());
}

/// The end of a chunked body.
pub fn end_of_stream(out: &mut Vec<u8>) {
    out.extend_from_slice(b"0\r\n\r\n");
}

fn chunk(out: &mut Vec<u8>, bytes: &[u8]) {
    let _ = write!(ChunkHead(out), "{:x}\r\n", bytes.len());
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\r\n");
}

struct ChunkHead<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for ChunkHead<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_chunk_says_its_own_length() {
        for (id, name, data) in [
            (Some((0, 0)), None, &b""[..]),
            (Some((9, 10)), None, b"{}"),
            (Some((123, u64::MAX)), Some("x"), b"{\"k\":1}"),
            (None, Some("endpoint"), b"/messages?sessionId=ab"),
            (None, None, b"[1]"),
        ] {
            let mut out = Vec::new();
            event(&mut out, id, name, data);
            let text = String::from_utf8(out).expect("utf8");
            let (size, rest) = text.split_once("\r\n").expect("chunk head");
            let size = usize::from_str_radix(size, 16).expect("hex");
            assert_eq!(rest.len(), size + 2, "{text:?}");
            assert!(rest.ends_with("\n\n\r\n"), "{text:?}");
        }
    }

    #[test]
    fn a_json_response_has_its_length_and_an_stream_is_chunked() {
        let mut out = Vec::new();
        Response::json(200, b"{}".to_vec())
            .header("Mcp-Session-Id", "ab")
            .encode(false, &mut out);
        let text = String::from_utf8(out).expect("utf8");
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("Mcp-Session-Id: ab\r\n"));
        assert!(text.ends_with("Content-Length: 2\r\n\r\n{}"), "{text}");

        let mut out = Vec::new();
        Response::event_stream().encode(true, &mut out);
        event(&mut out, Some((1, 2)), None, b"{\"a\":1}");
        end_of_stream(&mut out);
        let text = String::from_utf8(out).expect("utf8");
        assert!(text.contains("Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"));
        assert!(
            text.ends_with("17\r\nid: 1-2\ndata: {\"a\":1}\n\n\r\n0\r\n\r\n"),
            "{text}"
        );
    }
}
