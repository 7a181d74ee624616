//! Reading one HTTP/1.1 request out of a connection's input buffer.
//!
//! `httparse` reads the head; this file adds what it leaves to us: the
//! body by `Content-Length` or chunked encoding, and the bounds a peer
//! cannot push past (head size, header count, body size). Parsing is
//! incremental: called again with more bytes until a request is whole.

use std::fmt;

/// Largest request head (request line and headers) we read.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most headers in one request.
const MAX_HEADERS: usize = 64;

/// A whole request. Header names are lower-cased.
#[derive(Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: String,
    /// HTTP/1.0 (close after the response unless asked otherwise).
    pub http10: bool,
    headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// A query parameter's value, as given (no percent-decoding: the only
    /// one we read, `sessionId`, is our own hex).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then_some(v)
        })
    }

    /// Whether the peer wants the connection kept open after this one.
    pub fn keep_alive(&self) -> bool {
        let connection = self.header("connection").unwrap_or("");
        let has = |token: &str| {
            connection
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case(token))
        };
        if self.http10 {
            has("keep-alive")
        } else {
            !has("close")
        }
    }

    /// Whether `Accept` allows `media` (`type/subtype`); a missing header,
    /// `*/*` and `type/*` allow everything they cover.
    pub fn accepts(&self, media: &str) -> bool {
        let Some(accept) = self.header("accept") else {
            return true;
        };
        let kind = media.split('/').next().unwrap_or("");
        accept.split(',').any(|item| {
            let range = item.split(';').next().unwrap_or("").trim();
            range == "*/*"
                || range.eq_ignore_ascii_case(media)
                || range
                    .strip_suffix("/*")
                    .is_some_and(|t| t.eq_ignore_ascii_case(kind))
        })
    }

    /// Whether `Accept` names `media` itself (not through a wildcard).
    pub fn names(&self, media: &str) -> bool {
        self.header("accept").is_some_and(|accept| {
            accept.split(',').any(|item| {
                item.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .eq_ignore_ascii_case(media)
            })
        })
    }
}

/// Why a request could not be read; each maps to one status code.
#[derive(Debug, PartialEq, Eq)]
pub enum Malformed {
    /// 400: the head or the chunked framing is not HTTP.
    Syntax(&'static str),
    /// 431: the head is larger than [`MAX_HEAD_BYTES`] or has too many headers.
    HeadTooLarge,
    /// 413: the body is larger than the message limit.
    BodyTooLarge { limit: usize },
    /// 501: a transfer coding other than chunked.
    Unsupported(&'static str),
}

impl Malformed {
    pub fn status(&self) -> u16 {
        match self {
            Malformed::Syntax(_) => 400,
            Malformed::HeadTooLarge => 431,
            Malformed::BodyTooLarge { .. } => 413,
            Malformed::Unsupported(_) => 501,
        }
    }
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Malformed::Syntax(what) => write!(f, "malformed request: {what}"),
            Malformed::HeadTooLarge => write!(
                f,
                "request head larger than {MAX_HEAD_BYTES} bytes or with more than {MAX_HEADERS} headers"
            ),
            Malformed::BodyTooLarge { limit } => {
                write!(f, "request body larger than --max-message-bytes ({limit})")
            }
            Malformed::Unsupported(what) => write!(f, "not supported: {what}"),
        }
    }
}

/// What the buffer holds so far.
#[derive(Debug)]
pub enum Parsed {
    /// Not a whole request yet. `head_done` once the head has been read
    /// (the body time-out applies from then on).
    Partial {
        head_done: bool,
    },
    /// A request, and how many bytes of the buffer it took.
    Whole(Request, usize),
    Bad(Malformed),
}

/// Reads one request from the front of `buf`; bodies past `max_body`
/// bytes are refused (413) as soon as that is known.
pub fn parse(buf: &[u8], max_body: usize) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut head = httparse::Request::new(&mut headers);
    let head_len = match head.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > MAX_HEAD_BYTES {
                return Parsed::Bad(Malformed::HeadTooLarge);
            }
            return Parsed::Partial { head_done: false };
        }
        Err(httparse::Error::TooManyHeaders) => return Parsed::Bad(Malformed::HeadTooLarge),
        Err(_) => return Parsed::Bad(Malformed::Syntax("not an HTTP/1.x request head")),
    };
    if head_len > MAX_HEAD_BYTES {
        return Parsed::Bad(Malformed::HeadTooLarge);
    }
    let (Some(method), Some(target), Some(version)) = (head.method, head.path, head.version) else {
        return Parsed::Bad(Malformed::Syntax("incomplete request line"));
    };
    let mut owned = Vec::with_capacity(head.headers.len());
    for h in head.headers.iter() {
        let Ok(value) = std::str::from_utf8(h.value) else {
            return Parsed::Bad(Malformed::Syntax("a header value is not UTF-8"));
        };
        owned.push((h.name.to_ascii_lowercase(), value.trim().to_string()));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut request = Request {
        method: method.to_string(),
        path: path.to_string(),
        query: query.to_string(),
        http10: version == 0,
        headers: owned,
        body: Vec::new(),
    };

    let rest = &buf[head_len..];
    let chunked = match request.header("transfer-encoding") {
        None => false,
        Some(te) if te.eq_ignore_ascii_case("chunked") => true,
        Some(_) => return Parsed::Bad(Malformed::Unsupported("transfer codings but chunked")),
    };
    if chunked {
        return match dechunk(rest, max_body) {
            Ok(Some((body, used))) => {
                request.body = body;
                Parsed::Whole(request, head_len + used)
            }
            Ok(None) => Parsed::Partial { head_done: true },
            Err(e) => Parsed::Bad(e),
        };
    }
    let length = match request.header("content-length") {
        None => 0,
        Some(v) => match v.parse::<usize>() {
            Ok(n) => n,
            Err(_) => return Parsed::Bad(Malformed::Syntax("Content-Length is not a number")),
        },
    };
    if length > max_body {
        return Parsed::Bad(Malformed::BodyTooLarge { limit: max_body });
    }
    if rest.len() < length {
        return Parsed::Partial { head_done: true };
    }
    request.body = rest[..length].to_vec();
    Parsed::Whole(request, head_len + length)
}

/// Decodes a chunked body from the front of `buf`: the body and the bytes
/// it took, or `None` while incomplete. Trailers are skipped.
fn dechunk(buf: &[u8], max_body: usize) -> Result<Option<(Vec<u8>, usize)>, Malformed> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let (start, size) = match httparse::parse_chunk_size(&buf[at..]) {
            Ok(httparse::Status::Complete(found)) => found,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err(Malformed::Syntax("bad chunk size")),
        };
        let size =
            usize::try_from(size).map_err(|_| Malformed::BodyTooLarge { limit: max_body })?;
        if body.len().saturating_add(size) > max_body {
            return Err(Malformed::BodyTooLarge { limit: max_body });
        }
        at += start;
        if size == 0 {
            // Trailers, if any, end with an empty line.
            loop {
                let Some(end) = find_crlf(&buf[at..]) else {
                    return Ok(None);
                };
                at += end + 2;
                if end == 0 {
                    return Ok(Some((body, at)));
                }
            }
        }
        if buf.len() < at + size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&buf[at..at + size]);
        if &buf[at + size..at + size + 2] != b"\r\n" {
            return Err(Malformed::Syntax("chunk not followed by CRLF"));
        }
        at += size + 2;
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(raw: &[u8]) -> (Request, usize) {
        match parse(raw, 1024) {
            Parsed::Whole(r, n) => (r, n),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_post_with_a_length_is_read_whole_and_the_rest_left() {
        let raw = b"POST /mcp?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}GET";
        let (r, n) = whole(raw);
        assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/mcp"));
        assert_eq!(r.query_param("x"), Some("1"));
        assert_eq!(r.body, b"{}");
        assert_eq!(&raw[n..], b"GET");
        assert!(r.keep_alive());
    }

    #[test]
    fn a_head_or_body_still_arriving_is_partial() {
        assert!(matches!(
            parse(b"POST /mcp HTTP/1.1\r\nContent-Le", 10),
            Parsed::Partial { head_done: false }
        ));
        assert!(matches!(
            parse(b"POST /mcp HTTP/1.1\r\nContent-Length: 5\r\n\r\n{}", 10),
            Parsed::Partial { head_done: true }
        ));
    }

    #[test]
    fn chunked_bodies_are_decoded_with_their_trailers_skipped() {
        let raw = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{\"\r\n4;x=y\r\na\":1\r\n0\r\nT: v\r\n\r\nnext";
        let (r, n) = whole(raw);
        assert_eq!(r.body, b"{\"a\":1");
        assert_eq!(&raw[n..], b"next");
        let partial = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{";
        assert!(matches!(parse(partial, 10), Parsed::Partial { .. }));
    }

    #[test]
    fn every_bound_has_its_status() {
        let big = b"POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\n";
        assert!(matches!(parse(big, 10), Parsed::Bad(ref m) if m.status() == 413));
        let chunks = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nff\r\n";
        assert!(matches!(parse(chunks, 10), Parsed::Bad(ref m) if m.status() == 413));
        let mut huge = b"GET / HTTP/1.1\r\nX: ".to_vec();
        huge.resize(MAX_HEAD_BYTES + 10, b'a');
        assert!(matches!(parse(&huge, 10), Parsed::Bad(ref m) if m.status() == 431));
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("X{i}: y\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert!(matches!(parse(&many, 10), Parsed::Bad(ref m) if m.status() == 431));
        for garbage in [
            &b"\x00\x01\x02\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ] {
            assert!(
                matches!(parse(garbage, 10), Parsed::Bad(ref m) if m.status() == 400),
                "{garbage:?}"
            );
        }
        let gzip = b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n";
        assert!(matches!(parse(gzip, 10), Parsed::Bad(ref m) if m.status() == 501));
    }

    #[test]
    fn accept_and_connection_headers_are_read_as_lists() {
        let raw = b"GET / HTTP/1.0\r\nAccept: text/html, application/*;q=0.5\r\nConnection: Keep-Alive\r\n\r\n";
        let (r, _) = whole(raw);
        assert!(r.accepts("application/json"));
        assert!(!r.accepts("text/event-stream"));
        assert!(!r.names("application/json"));
        assert!(r.keep_alive());
        let (r, _) = whole(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert!(!r.keep_alive());
        assert!(r.accepts("text/event-stream"));
    }
}
