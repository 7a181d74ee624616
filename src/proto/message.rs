//! JSON-RPC 2.0 envelopes: what a framed line is, read cheaply.
//!
//! The session worker forwards original bytes and never re-serialise a message, so
//! all it needs is the shape (request, notification, response), the `id`
//! and the `method`. One serde pass validates the whole line and borrows
//! those three fields; no value tree is built.

use std::borrow::Cow;
use std::fmt;

use serde::de::IgnoredAny;
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

// The error objects moved to `reply`; these names stay reachable here so
// callers need not know.
pub use super::reply::{code, error_line};

/// A JSON-RPC id as canonical JSON text (`7`, `"abc"`): ids of different
/// types never collide, and the same value written two ways is one id.
/// JSON-RPC matches an answer to its request by value, and servers that
/// parse and re-serialise write `"req\/1"` back as `"req/1"` and `1.0` as
/// `1`; comparing raw text would leave such a request waiting forever.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Id(Box<str>);

impl Id {
    /// Canonical text of a valid JSON string or number: a string without
    /// escapes and an integer in plain form are already canonical (the
    /// common case, no allocation beyond the copy); anything else is
    /// decoded and written again as serde_json writes it.
    fn canonical(raw: &str) -> Id {
        if raw.starts_with('"') {
            if !raw.contains('\\') {
                return Id(raw.into());
            }
            return match serde_json::from_str::<String>(raw) {
                Ok(value) => Id(serde_json::to_string(&value)
                    .unwrap_or_else(|_| raw.to_string())
                    .into()),
                Err(_) => Id(raw.into()),
            };
        }
        if raw.bytes().all(|b| b.is_ascii_digit() || b == b'-') && raw != "-0" {
            return Id(raw.into());
        }
        match serde_json::from_str::<f64>(raw) {
            // Integral and exactly representable: the integer's own form.
            Ok(n) if n.fract() == 0.0 && n.abs() < 9_007_199_254_740_992.0 => {
                Id((n as i64).to_string().into())
            }
            _ => Id(raw.into()),
        }
    }

    /// The id's canonical JSON text.
    pub fn as_json(&self) -> &str {
        &self.0
    }

    #[cfg(test)]
    pub(crate) fn from_json(raw: &str) -> Id {
        Id(raw.into())
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The shape of a valid message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Request {
        id: Id,
        method: Box<str>,
    },
    Notification {
        method: Box<str>,
    },
    /// `id` is `None` for an error response to something unreadable.
    Response {
        id: Option<Id>,
    },
    /// A JSON-RPC batch (MCP 2025-03-26 allowed them); forwarded as one line.
    Batch(Vec<Kind>),
}

impl Kind {
    /// Calls `f` with every request id this message opens.
    pub fn for_each_request_id(&self, f: &mut impl FnMut(&Id)) {
        match self {
            Kind::Request { id, .. } => f(id),
            Kind::Batch(items) => items.iter().for_each(|k| k.for_each_request_id(f)),
            Kind::Notification { .. } | Kind::Response { .. } => {}
        }
    }

    /// Calls `f` with every response id this message carries.
    pub fn for_each_response_id(&self, f: &mut impl FnMut(&Id)) {
        match self {
            Kind::Response { id: Some(id) } => f(id),
            Kind::Batch(items) => items.iter().for_each(|k| k.for_each_response_id(f)),
            _ => {}
        }
    }

    /// The method, for logs.
    pub fn method(&self) -> Option<&str> {
        match self {
            Kind::Request { method, .. } | Kind::Notification { method } => Some(method),
            _ => None,
        }
    }
}

/// A valid message: its original bytes (no line ending) and its shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub line: Vec<u8>,
    pub kind: Kind,
}

impl Message {
    /// Classifies `line`, keeping its bytes as they are.
    pub fn parse(line: Vec<u8>) -> Result<Message, Invalid> {
        let kind = classify(&line)?;
        Ok(Message { line, kind })
    }

    /// An error response forkline itself sends.
    pub fn error(id: Option<&Id>, code: i64, message: &str) -> Message {
        Message {
            line: error_line(id, code, message),
            kind: Kind::Response { id: id.cloned() },
        }
    }
}

/// Why a line is not a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalid {
    /// Not JSON at all (-32700).
    Json(String),
    /// JSON, but not a JSON-RPC 2.0 message (-32600).
    Rpc(String),
}

impl Invalid {
    pub fn code(&self) -> i64 {
        match self {
            Invalid::Json(_) => code::PARSE_ERROR,
            Invalid::Rpc(_) => code::INVALID_REQUEST,
        }
    }

    pub fn message(&self) -> String {
        match self {
            Invalid::Json(why) => format!("Parse error: {why}"),
            Invalid::Rpc(why) => format!("Invalid Request: {why}"),
        }
    }
}

/// A field that may be absent, and whose `null` is distinct from absence.
/// (`Option<T>` would read `"id": null` as absent.)
#[derive(Default)]
struct Present<'a>(Option<&'a RawValue>);

impl<'de: 'a, 'a> Deserialize<'de> for Present<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
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
    // Every other member (params, _meta…) is skipped, but still validated.
}

/// Classifies one framed line. Pure and cheap: one pass, no allocation
/// beyond the id and method.
pub fn classify(line: &[u8]) -> Result<Kind, Invalid> {
    // serde_json skips unknown members without checking their strings'
    // UTF-8, so the whole line is checked here, once.
    let line =
        std::str::from_utf8(line).map_err(|e| Invalid::Json(format!("invalid UTF-8: {e}")))?;
    match line.bytes().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => object_kind(line),
        Some(b'[') => {
            // Items as raw text first: deserialised straight into
            // `Envelope`, an array item would be read field by field
            // (`["2.0",1,"tools/call"]` as a request).
            let items: Vec<&RawValue> = serde_json::from_str(line).map_err(invalid)?;
            if items.is_empty() {
                return Err(Invalid::Rpc("empty batch".into()));
            }
            items
                .into_iter()
                .map(|item| object_kind(item.get()))
                .collect::<Result<_, _>>()
                .map(Kind::Batch)
        }
        _ => match serde_json::from_str::<IgnoredAny>(line) {
            Ok(_) => Err(Invalid::Rpc("a message must be a JSON object".into())),
            Err(e) => Err(invalid(e)),
        },
    }
}

/// The kind of one message that must be a JSON object: a whole line, or
/// one item of a batch (with no whitespace around it).
fn object_kind(text: &str) -> Result<Kind, Invalid> {
    // serde reads a JSON array into a struct too, field by field; only an
    // object is a JSON-RPC message (JSON-RPC 2.0, sections 4 and 6).
    if !text.trim_start().starts_with('{') {
        return Err(Invalid::Rpc(
            "a message (and every item of a batch) must be a JSON object".into(),
        ));
    }
    let envelope: Envelope = serde_json::from_str(text).map_err(invalid)?;
    envelope_kind(envelope)
}

fn invalid(e: serde_json::Error) -> Invalid {
    match e.classify() {
        serde_json::error::Category::Data => Invalid::Rpc(e.to_string()),
        _ => Invalid::Json(e.to_string()),
    }
}

fn envelope_kind(e: Envelope) -> Result<Kind, Invalid> {
    if e.jsonrpc.as_deref() != Some("2.0") {
        return Err(Invalid::Rpc("\"jsonrpc\" must be \"2.0\"".into()));
    }
    let has_outcome = e.result.0.is_some() || e.error.0.is_some();
    match (e.method, e.id.0) {
        (Some(_), _) if has_outcome => Err(Invalid::Rpc(
            "a request cannot carry result or error".into(),
        )),
        (Some(method), None) => Ok(Kind::Notification {
            method: method.into(),
        }),
        (Some(method), Some(id)) => Ok(Kind::Request {
            id: request_id(id)?,
            method: method.into(),
        }),
        (None, Some(id)) if e.result.0.is_some() != e.error.0.is_some() => {
            let id = if id.get() == "null" {
                None
            } else {
                Some(request_id(id)?)
            };
            Ok(Kind::Response { id })
        }
        (None, _) => Err(Invalid::Rpc(
            "expected a request, notification or response".into(),
        )),
    }
}

/// The longest id forkline accepts, as raw JSON text (a string's quotes
/// and escapes count). Every awaited request keeps its id until answered,
/// so this and `--max-inflight` together bound what one session holds
/// (PRODUCT.md, "--max-inflight").
pub const MAX_ID_BYTES: usize = 1024;

fn request_id(raw: &RawValue) -> Result<Id, Invalid> {
    let text = raw.get();
    if text.len() > MAX_ID_BYTES {
        return Err(Invalid::Rpc(format!(
            "\"id\" is {} bytes long; at most {MAX_ID_BYTES} are allowed",
            text.len()
        )));
    }
    match text.as_bytes().first() {
        Some(b'"' | b'-' | b'0'..=b'9') => Ok(Id::canonical(text)),
        _ => Err(Invalid::Rpc("\"id\" must be a string or a number".into())),
    }
}

/// Finds the top-level `id` of a possibly truncated JSON object, for the
/// head of an oversized line. Returns `None` when it cannot tell for sure,
/// and when the id is not a valid JSON string or number of at most
/// `MAX_ID_BYTES`: the id goes into a reply as it is, and a reply must
/// always be valid JSON.
pub fn sniff_id(head: &[u8]) -> Option<Id> {
    let mut s = Scanner { bytes: head, at: 0 };
    s.expect(b'{')?;
    loop {
        let key = s.string()?;
        s.expect(b':')?;
        s.skip_ws();
        if key == b"\"id\"" {
            let start = s.at;
            match s.peek()? {
                b'"' => {
                    s.string()?;
                }
                b'-' | b'0'..=b'9' => s.number()?,
                _ => return None,
            }
            // The scanner only finds where the id ends. The id is copied
            // into forkline's own reply as it is, so it must be the JSON
            // `classify` would accept: valid UTF-8, escapes and number
            // syntax checked by serde_json, and no longer than any other id.
            let text = std::str::from_utf8(&head[start..s.at]).ok()?;
            if text.len() > MAX_ID_BYTES {
                return None;
            }
            serde_json::from_str::<&RawValue>(text).ok()?;
            return Some(Id::canonical(text));
        }
        s.skip_value()?;
        match s.next_non_ws()? {
            b',' => continue,
            _ => return None,
        }
    }
}

/// Just enough of a JSON lexer for `sniff_id`: every method returns `None`
/// when it runs out of input.
struct Scanner<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Scanner<'a> {
    fn skip_ws(&mut self) {
        while self.bytes.get(self.at).is_some_and(u8::is_ascii_whitespace) {
            self.at += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn next_non_ws(&mut self) -> Option<u8> {
        self.skip_ws();
        let b = self.peek()?;
        self.at += 1;
        Some(b)
    }

    fn expect(&mut self, want: u8) -> Option<()> {
        (self.next_non_ws()? == want).then_some(())
    }

    /// A string, returned with its quotes.
    fn string(&mut self) -> Option<&'a [u8]> {
        self.skip_ws();
        let start = self.at;
        (self.peek()? == b'"').then_some(())?;
        self.at += 1;
        loop {
            match self.peek()? {
                b'\\' => self.at += 2,
                b'"' => {
                    self.at += 1;
                    return Some(&self.bytes[start..self.at]);
                }
                _ => self.at += 1,
            }
        }
    }

    fn number(&mut self) -> Option<()> {
        let start = self.at;
        while self
            .peek()
            .is_some_and(|b| matches!(b, b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'))
        {
            self.at += 1;
        }
        // A number that runs into the end of the head may be cut short.
        (self.at > start && self.at < self.bytes.len()).then_some(())
    }

    fn skip_value(&mut self) -> Option<()> {
        self.skip_ws();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_id_written_two_ways_is_one_id() {
        let id_of = |json: &str| match classify(json.as_bytes()) {
            Ok(Kind::Request { id, .. }) => id,
            Ok(Kind::Response { id: Some(id) }) => id,
            other => panic!("{json}: {other:?}"),
        };
        let pairs = [
            (
                r#"{"jsonrpc":"2.0","id":"req\/1","method":"m"}"#,
                r#"{"jsonrpc":"2.0","id":"req/1","result":{}}"#,
            ),
            (
                r#"{"jsonrpc":"2.0","id":"\u0061","method":"m"}"#,
                r#"{"jsonrpc":"2.0","id":"a","result":{}}"#,
            ),
            (
                r#"{"jsonrpc":"2.0","id":"caf\u00e9","method":"m"}"#,
                r#"{"jsonrpc":"2.0","id":"café","result":{}}"#,
            ),
            (
                r#"{"jsonrpc":"2.0","id":1.0,"method":"m"}"#,
                r#"{"jsonrpc":"2.0","id":1,"result":{}}"#,
            ),
            (
                r#"{"jsonrpc":"2.0","id":1e2,"method":"m"}"#,
                r#"{"jsonrpc":"2.0","id":100,"result":{}}"#,
            ),
            (
                r#"{"jsonrpc":"2.0","id":-0,"method":"m"}"#,
                r#"{"jsonrpc":"2.0","id":0,"result":{}}"#,
            ),
        ];
        for (request, answer) in pairs {
            assert_eq!(id_of(request), id_of(answer), "{request} vs {answer}");
        }
        assert_ne!(
            id_of(r#"{"jsonrpc":"2.0","id":"1","method":"m"}"#),
            id_of(r#"{"jsonrpc":"2.0","id":1,"result":{}}"#),
            "a string and a number are different ids"
        );
        // Canonical text is still valid JSON of the same value.
        let tricky = id_of(r#"{"jsonrpc":"2.0","id":"q\"\\\n","method":"m"}"#);
        let back: String = serde_json::from_str(tricky.as_json()).expect("valid JSON");
        assert_eq!(back, "q\"\\\n");
    }

    fn id(s: &str) -> Id {
        Id(s.into())
    }

    #[test]
    fn requests_notifications_and_responses() {
        assert_eq!(
            classify(br#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{}}"#),
            Ok(Kind::Request {
                id: id("1"),
                method: "tools/list".into()
            })
        );
        assert_eq!(
            classify(br#"{"method":"a\/b","jsonrpc":"2.0","id":"x"}"#),
            Ok(Kind::Request {
                id: id("\"x\""),
                method: "a/b".into()
            }),
            "escaped method and id after method"
        );
        assert_eq!(
            classify(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#),
            Ok(Kind::Notification {
                method: "notifications/initialized".into()
            })
        );
        assert_eq!(
            classify(br#"{"jsonrpc":"2.0","id":3,"result":null}"#),
            Ok(Kind::Response { id: Some(id("3")) })
        );
        assert_eq!(
            classify(br#"{"jsonrpc":"2.0","id":null,"error":{"code":1,"message":"m"}}"#),
            Ok(Kind::Response { id: None })
        );
    }

    #[test]
    fn batches_are_messages() {
        let kind =
            classify(br#"[{"jsonrpc":"2.0","id":1,"method":"a"},{"jsonrpc":"2.0","method":"n"}]"#)
                .expect("valid batch");
        let mut ids = Vec::new();
        kind.for_each_request_id(&mut |i| ids.push(i.clone()));
        assert_eq!(ids, vec![id("1")]);
        assert!(matches!(classify(b"[]"), Err(Invalid::Rpc(_))));
    }

    #[test]
    fn batch_items_must_be_objects() {
        // serde reads a JSON array into a struct field by field, so
        // `["2.0",1,"tools/call"]` used to pass for a request.
        for bad in [
            &br#"[["2.0",1,"tools/call"]]"#[..],
            br#"[{"jsonrpc":"2.0","id":1,"method":"a"},["2.0",2,"b"]]"#,
            br#"[[{"jsonrpc":"2.0","id":1,"method":"a"}]]"#,
            br#"[["2.0",1,null,{}]]"#,
            br#"[1]"#,
            br#"["2.0"]"#,
            br#"[null]"#,
            br#"[true]"#,
        ] {
            match classify(bad) {
                Err(Invalid::Rpc(why)) => assert!(why.contains("object"), "{why}"),
                other => panic!("{}: {other:?}", String::from_utf8_lossy(bad)),
            }
        }
        // Whitespace around items is not part of them.
        let spaced = b" [ {\"jsonrpc\":\"2.0\",\"method\":\"n\"} ,\n\t\
            {\"jsonrpc\":\"2.0\",\"id\":2,\"result\":1} ] ";
        assert!(matches!(
            classify(spaced),
            Ok(Kind::Batch(items)) if items.len() == 2
        ));
        // A broken item is still a parse error, not an invalid request.
        assert!(matches!(
            classify(br#"[{"jsonrpc":"2.0","method":"n"},{"#),
            Err(Invalid::Json(_))
        ));
    }

    #[test]
    fn a_single_message_must_be_an_object() {
        for bad in [
            &br#"["2.0",1,"tools/call"]"#[..],
            br#" ["2.0",1,"tools/call"]"#,
            br#""2.0""#,
            br#"null"#,
        ] {
            assert!(
                matches!(classify(bad), Err(Invalid::Rpc(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn not_json_is_a_parse_error() {
        for bad in [
            &b"{"[..],
            b"nope",
            b"{\"a\":1} trailing",
            b"\xff\xfe",
            b"{\"s\":\"\xff\"}",
        ] {
            assert!(
                matches!(classify(bad), Err(Invalid::Json(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn json_that_is_not_jsonrpc_is_invalid_request() {
        for bad in [
            &br#"{"foo":1}"#[..],
            br#"[1,2]"#,
            br#"42"#,
            br#"{"id":1,"method":"x"}"#,
            br#"{"jsonrpc":"1.0","id":1,"method":"x"}"#,
            br#"{"jsonrpc":"2.0","id":{},"method":"x"}"#,
            br#"{"jsonrpc":"2.0","id":null,"method":"x"}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":5}"#,
            br#"{"jsonrpc":"2.0","id":1,"result":1,"error":{}}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":"x","result":1}"#,
        ] {
            assert!(
                matches!(classify(bad), Err(Invalid::Rpc(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    /// A JSON string id whose raw text (quotes included) is `len` bytes.
    fn string_id(len: usize) -> String {
        format!("\"{}\"", "x".repeat(len - 2))
    }

    #[test]
    fn ids_over_a_kibibyte_are_invalid_requests() {
        let request = |id: &str| format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"m"}}"#);
        let response = |id: &str| format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{{}}}}"#);
        assert_eq!(
            MAX_ID_BYTES, 1024,
            "PRODUCT.md: longer than 1 KiB is refused"
        );
        let at_limit = string_id(MAX_ID_BYTES);
        assert_eq!(
            classify(request(&at_limit).as_bytes()),
            Ok(Kind::Request {
                id: id(&at_limit),
                method: "m".into()
            })
        );
        let long_number = "1".repeat(1025);
        for over in [string_id(1025), string_id(2000), long_number] {
            for line in [request(&over), response(&over)] {
                match classify(line.as_bytes()) {
                    Err(Invalid::Rpc(why)) => {
                        assert!(why.contains(&MAX_ID_BYTES.to_string()), "{why}")
                    }
                    other => panic!("a {}-byte id: {other:?}", over.len()),
                }
            }
            let batch = format!("[{}]", request(&over));
            assert!(matches!(classify(batch.as_bytes()), Err(Invalid::Rpc(_))));
        }
    }

    /// The head of an oversized request whose id is the raw bytes `id`.
    fn head_with_id(id: &[u8]) -> Vec<u8> {
        let mut head = br#"{"jsonrpc":"2.0","id":"#.to_vec();
        head.extend_from_slice(id);
        head.extend_from_slice(br#","method":"x","params":{"pad":"xxxxxxxx"#);
        head
    }

    #[test]
    fn sniffed_ids_that_are_not_valid_json_are_not_trusted() {
        let long = string_id(MAX_ID_BYTES + 1);
        let bad: [(&str, &[u8]); 11] = [
            ("bad escape", br#""\q""#),
            ("short unicode escape", br#""\u12""#),
            ("raw control byte", b"\"a\x01b\""),
            ("raw newline", b"\"a\nb\""),
            ("lone minus", b"-"),
            ("exponent without digits", b"1e"),
            ("leading zero", b"01"),
            ("fraction without digits", b"1."),
            ("plus sign", b"+1"),
            ("invalid UTF-8", b"\"\xff\""),
            ("longer than MAX_ID_BYTES", long.as_bytes()),
        ];
        for (what, id) in bad {
            let sniffed = sniff_id(&head_with_id(id));
            assert_eq!(sniffed, None, "{what}");
            let line = error_line(sniffed.as_ref(), code::TOO_LARGE, "too large");
            let reply: serde_json::Value = serde_json::from_slice(&line)
                .unwrap_or_else(|e| panic!("{what}: error line is not JSON ({e})"));
            assert_eq!(reply["id"], serde_json::Value::Null, "{what}");
        }
        let at_limit = string_id(MAX_ID_BYTES);
        let good: [&[u8]; 6] = [
            br#""a\"b\\c""#,
            br#""\u00e9\n""#,
            "\"é☃\"".as_bytes(),
            b"-1.5e+3",
            b"0",
            at_limit.as_bytes(),
        ];
        for id in good {
            let sniffed = sniff_id(&head_with_id(id));
            let text = String::from_utf8_lossy(id);
            assert!(sniffed.is_some(), "{text} is a valid id");
            let line = error_line(sniffed.as_ref(), code::TOO_LARGE, "too large");
            let reply: serde_json::Value = serde_json::from_slice(&line).expect("valid JSON");
            let original: serde_json::Value = serde_json::from_slice(id).expect("valid id");
            // The same value, perhaps written in canonical form.
            match original.as_f64() {
                Some(n) => assert_eq!(reply["id"].as_f64(), Some(n), "{text}"),
                None => assert_eq!(reply["id"], original, "{text}"),
            }
        }
    }

    #[test]
    fn sniffs_ids_from_truncated_heads() {
        assert_eq!(
            sniff_id(br#"{"jsonrpc":"2.0","id":42,"method":"x","params":{"pad":"xxxx"#),
            Some(id("42"))
        );
        assert_eq!(
            sniff_id(br#"{ "params": {"a": [1, {"id": 9}], "s": "}\""}, "id" : "abc", "x"#),
            Some(id("\"abc\"")),
            "nested ids and tricky strings are skipped"
        );
        assert_eq!(
            sniff_id(br#"{"jsonrpc":"2.0","params":{"pad":"xxxxxxxx"#),
            None,
            "id beyond the head"
        );
        assert_eq!(
            sniff_id(br#"{"id":12"#),
            None,
            "a number cut short is not trusted"
        );
        assert_eq!(sniff_id(br#"{"id":{"x":1}}"#), None);
        assert_eq!(sniff_id(b"garbage"), None);
    }
}
