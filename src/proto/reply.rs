//! The error objects forkline itself sends: their codes (PRODUCT.md,
//! "Framing and message rules") and the line that carries one.
//!
//! Written by hand rather than through a value tree: the id is copied as
//! the raw JSON text it arrived as, so a reply carries exactly what was
//! sent. So every id that reaches here must already be valid JSON:
//! `message::classify` and `message::sniff_id` only produce such ids.

use super::message::Id;

/// Error codes forkline sends (PRODUCT.md, "Framing and message rules").
pub mod code {
    pub const PARSE_ERROR: i64 = -32700;
    pub const INVALID_REQUEST: i64 = -32600;
    pub const SESSION_REFUSED: i64 = -32001;
    pub const CHILD_GONE: i64 = -32002;
    pub const TOO_LARGE: i64 = -32003;
    pub const SHUTTING_DOWN: i64 = -32004;
    /// `--max-inflight` requests of the session already await their
    /// answer; this one is not forwarded. Carries the request's id.
    pub const TOO_MANY_INFLIGHT: i64 = -32005;
    /// JSON-RPC's own: the method is not served.
    pub const METHOD_NOT_FOUND: i64 = -32601;
    /// MCP 2026-07-28: HTTP headers disagree with the body (HeaderMismatch).
    pub const HEADER_MISMATCH: i64 = -32020;
    /// MCP 2026-07-28: UnsupportedProtocolVersion (`data.supported` lists
    /// what is served).
    pub const UNSUPPORTED_VERSION: i64 = -32022;
}

/// One JSON-RPC error object as a line body (no newline).
pub fn error_line(id: Option<&Id>, code: i64, message: &str) -> Vec<u8> {
    let id = id.map_or("null", Id::as_json);
    // Serialising a &str cannot fail.
    let message = serde_json::to_string(message).unwrap_or_else(|_| "\"error\"".into());
    format!(r#"{{"jsonrpc":"2.0","id":{id},"error":{{"code":{code},"message":{message}}}}}"#)
        .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::message::{Kind, classify};

    fn id(s: &str) -> Id {
        Id::from_json(s)
    }

    #[test]
    fn codes_match_the_contract() {
        // PRODUCT.md, "Framing and message rules": clients match on these.
        assert_eq!(
            [
                code::PARSE_ERROR,
                code::INVALID_REQUEST,
                code::SESSION_REFUSED,
                code::CHILD_GONE,
                code::TOO_LARGE,
                code::SHUTTING_DOWN,
                code::TOO_MANY_INFLIGHT,
            ],
            [-32700, -32600, -32001, -32002, -32003, -32004, -32005]
        );
    }

    #[test]
    fn error_lines_are_valid_jsonrpc() {
        let line = error_line(Some(&id("\"a\"")), code::CHILD_GONE, "child \"x\" exited");
        let v: serde_json::Value = serde_json::from_slice(&line).expect("valid JSON");
        assert_eq!(v["id"], "a");
        assert_eq!(v["error"]["code"], -32002);
        assert_eq!(v["error"]["message"], "child \"x\" exited");
        assert_eq!(
            classify(&line),
            Ok(Kind::Response {
                id: Some(id("\"a\""))
            })
        );
        let null = error_line(None, code::PARSE_ERROR, "bad");
        assert!(null.starts_with(br#"{"jsonrpc":"2.0","id":null,"#));
    }
}
