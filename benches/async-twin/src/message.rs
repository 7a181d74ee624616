//! The JSON-RPC rules forkline applies to each line, with the same outcome:
//! one borrowing serde pass validates the line and yields the request ids
//! it opens and the response ids it closes; invalid lines are answered with
//! -32700 (not JSON) or -32600 (JSON, not JSON-RPC).
//!
//! A deliberate copy of forkline's `src/message.rs` logic rather than a
//! dependency on the forkline crate: the twin must stand alone (its own
//! dependency tree is one of the figures compared), yet do exactly the same
//! work per message, or the comparison would flatter one side.

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;
use std::borrow::Cow;

pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const SESSION_REFUSED: i64 = -32001;
pub const CHILD_GONE: i64 = -32002;
pub const TOO_LARGE: i64 = -32003;

/// What a valid line does to the set of requests awaiting an answer.
#[derive(Debug, Default)]
pub struct Ids {
    pub requests: Vec<Box<str>>,
    pub responses: Vec<Box<str>>,
}

/// Why a line was refused: the code and message for the error answer.
pub struct Invalid(pub i64, pub String);

#[derive(Default)]
struct Present<'a>(Option<&'a RawValue>);

impl<'de: 'a, 'a> Deserialize<'de> for Present<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <&RawValue>::deserialize(d).map(|raw| Present(Some(raw)))
    }
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    jsonrpc: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    id: Present<'a>,
    #[serde(borrow, default)]
    method: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    result: Present<'a>,
    #[serde(borrow, default)]
    error: Present<'a>,
}

/// Validates one line and collects its ids.
pub fn classify(line: &[u8]) -> Result<Ids, Invalid> {
    let text = std::str::from_utf8(line)
        .map_err(|e| Invalid(PARSE_ERROR, format!("Parse error: invalid UTF-8: {e}")))?;
    let mut ids = Ids::default();
    match text.bytes().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => {
            let e: Envelope = serde_json::from_str(text).map_err(invalid)?;
            envelope(e, &mut ids)?;
        }
        Some(b'[') => {
            let items: Vec<Envelope> = serde_json::from_str(text).map_err(invalid)?;
            if items.is_empty() {
                return Err(Invalid(
                    INVALID_REQUEST,
                    "Invalid Request: empty batch".into(),
                ));
            }
            for e in items {
                envelope(e, &mut ids)?;
            }
        }
        _ => {
            serde_json::from_str::<IgnoredAny>(text).map_err(invalid)?;
            return Err(Invalid(
                INVALID_REQUEST,
                "Invalid Request: a message must be a JSON object".into(),
            ));
        }
    }
    Ok(ids)
}

fn invalid(e: serde_json::Error) -> Invalid {
    match e.classify() {
        serde_json::error::Category::Data => {
            Invalid(INVALID_REQUEST, format!("Invalid Request: {e}"))
        }
        _ => Invalid(PARSE_ERROR, format!("Parse error: {e}")),
    }
}

fn envelope(e: Envelope, ids: &mut Ids) -> Result<(), Invalid> {
    let rpc = |why: &str| Err(Invalid(INVALID_REQUEST, format!("Invalid Request: {why}")));
    if e.jsonrpc.as_deref() != Some("2.0") {
        return rpc("\"jsonrpc\" must be \"2.0\"");
    }
    let has_result = e.result.0.is_some();
    let has_error = e.error.0.is_some();
    match (e.method, e.id.0) {
        (Some(_), _) if has_result || has_error => rpc("a request cannot carry result or error"),
        (Some(_), None) => Ok(()),
        (Some(_), Some(id)) => {
            ids.requests.push(request_id(id)?);
            Ok(())
        }
        (None, Some(id)) if has_result != has_error => {
            if id.get() != "null" {
                ids.responses.push(request_id(id)?);
            }
            Ok(())
        }
        (None, _) => rpc("expected a request, notification or response"),
    }
}

fn request_id(raw: &RawValue) -> Result<Box<str>, Invalid> {
    match raw.get().as_bytes().first() {
        Some(b'"' | b'-' | b'0'..=b'9') => Ok(raw.get().into()),
        _ => Err(Invalid(
            INVALID_REQUEST,
            "Invalid Request: \"id\" must be a string or a number".into(),
        )),
    }
}

/// One error answer, as a line body.
pub fn error_line(id: Option<&str>, code: i64, message: &str) -> bytes::Bytes {
    let message = serde_json::to_string(message).unwrap_or_else(|_| "\"error\"".into());
    let id = id.unwrap_or("null");
    format!(r#"{{"jsonrpc":"2.0","id":{id},"error":{{"code":{code},"message":{message}}}}}"#).into()
}

/// The top-level `id` of a truncated JSON object (the head of an oversized
/// line), when it can be read for sure.
pub fn sniff_id(head: &[u8]) -> Option<Box<str>> {
    let mut s = Scan { b: head, at: 0 };
    s.eat(b'{')?;
    loop {
        let key = s.string()?;
        s.eat(b':')?;
        s.ws();
        if key == b"\"id\"" {
            let start = s.at;
            match s.peek()? {
                b'"' => {
                    s.string()?;
                }
                b'-' | b'0'..=b'9' => {
                    while matches!(s.peek()?, b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9') {
                        s.at += 1;
                    }
                }
                _ => return None,
            }
            return std::str::from_utf8(&head[start..s.at]).ok().map(Into::into);
        }
        s.value()?;
        s.eat(b',')?;
    }
}

struct Scan<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Scan<'a> {
    fn ws(&mut self) {
        while self.b.get(self.at).is_some_and(u8::is_ascii_whitespace) {
            self.at += 1;
        }
    }
    fn peek(&self) -> Option<u8> {
        self.b.get(self.at).copied()
    }
    fn eat(&mut self, want: u8) -> Option<()> {
        self.ws();
        (self.peek()? == want).then(|| self.at += 1)
    }
    fn string(&mut self) -> Option<&'a [u8]> {
        self.ws();
        let start = self.at;
        (self.peek()? == b'"').then_some(())?;
        self.at += 1;
        loop {
            match self.peek()? {
                b'\\' => self.at += 2,
                b'"' => {
                    self.at += 1;
                    return Some(&self.b[start..self.at]);
                }
                _ => self.at += 1,
            }
        }
    }
    fn value(&mut self) -> Option<()> {
        self.ws();
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    match self.peek()? {
                        b'"' => {
                            self.string()?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                self.at += 1;
                                return Some(());
                            }
                        }
                        _ => {}
                    }
                    self.at += 1;
                }
            }
            _ => {
                while !matches!(self.peek()?, b',' | b'}' | b']')
                    && !self.peek()?.is_ascii_whitespace()
                {
                    self.at += 1;
                }
                Some(())
            }
        }
    }
}
