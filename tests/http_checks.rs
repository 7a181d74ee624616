//! `serve --http`: the checks every request goes through before it reaches
//! a session (HTTP-CONTRACT.md "Checks, in this order" and "POST /mcp"):
//! path, Origin, CORS preflight, bearer token, method, header size and
//! syntax, the header timeout, Content-Type, Accept, body size, protocol
//! version, JSON and JSON-RPC validity, session id. Bad input of any kind
//! never crashes forkline.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::http::*;
use common::*;
use serde_json::{Value, json};

fn items(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_ascii_lowercase()).collect()
}

/// A token file with two principals, `alice` and `bob`.
struct Tokens {
    dir: TempDir,
}

const ALICE: &str = "Bearer alice-token-6f1c";
const BOB: &str = "Bearer bob-token-93ad";

impl Tokens {
    fn new() -> Tokens {
        let dir = TempDir::new("forkline-tokens");
        std::fs::write(
            dir.path.join("tokens"),
            "alice:alice-token-6f1c\nbob:bob-token-93ad\n",
        )
        .expect("write token file");
        Tokens { dir }
    }

    fn path(&self) -> String {
        self.dir.path.join("tokens").display().to_string()
    }
}

// ---- 1. path ------------------------------------------------------------------

#[test]
fn unknown_paths_get_404() {
    let forkline = serve_http(&[], &[]);
    let addr = http_addr(&forkline);
    let init = initialize_body(json!(1), "2025-06-18");
    for (method, path) in [
        ("GET", "/"),
        ("POST", "/"),
        ("POST", "/mcpx"),
        ("POST", "/mcp/extra"),
        ("GET", "/MCP"),
        ("GET", "/ssex"),
        ("POST", "/messages/x"),
        ("GET", "/metrics"),
        ("OPTIONS", "/nope"),
    ] {
        let req = Request::new(method, path)
            .header("Accept", ACCEPT_BOTH)
            .json(&init);
        let response = request(addr, &req);
        assert_eq!(response.status, 404, "{method} {path}: {response}");
        assert!(
            response.header("Mcp-Session-Id").is_none(),
            "{method} {path} created a session: {response}"
        );
    }
}

#[test]
fn a_query_string_is_allowed_on_the_served_paths() {
    let forkline = serve_http(&[], &[]);
    let addr = http_addr(&forkline);
    let response = request(
        addr,
        &Request::post("/mcp?client=test&x=1")
            .header("Accept", ACCEPT_JSON)
            .json(&initialize_body(json!(1), "2025-06-18")),
    );
    response.assert_status(200);
    assert!(response.header("Mcp-Session-Id").is_some(), "{response}");
    let response = request(addr, &Request::new("PUT", "/mcp?x=1"));
    assert_eq!(
        response.status, 405,
        "PUT /mcp?x=1 is not a 404: {response}"
    );
}

// ---- 2. Origin ------------------------------------------------------------------

#[test]
fn a_foreign_origin_gets_403() {
    let forkline = serve_http(&["--allow-origin", "https://app.example"], &[]);
    let addr = http_addr(&forkline);
    for origin in [
        "http://evil.example",
        "https://localhost.evil.example",
        "http://127.0.0.1.evil.example",
        "http://evil.example/localhost",
        "null",
        // --allow-origin is an exact match: scheme, host and port.
        "http://app.example",
        "https://app.example:8443",
        "https://app.example.evil",
        "https://sub.app.example",
    ] {
        let req = mcp_post_json(&initialize_body(json!(1), "2025-06-18")).header("Origin", origin);
        let response = request(addr, &req);
        assert_eq!(response.status, 403, "Origin {origin}: {response}");
        assert!(
            response.header("Mcp-Session-Id").is_none(),
            "Origin {origin} created a session: {response}"
        );
        assert_ne!(
            response.header("Access-Control-Allow-Origin"),
            Some(origin),
            "a refused Origin is echoed as allowed: {response}"
        );
    }
}

#[test]
fn localhost_and_listed_origins_are_allowed_and_echoed() {
    let forkline = serve_http(&["--allow-origin", "https://app.example"], &[]);
    let addr = http_addr(&forkline);
    for origin in [
        "http://localhost",
        "http://localhost:5173",
        "https://localhost:8443",
        "http://127.0.0.1",
        "http://127.0.0.1:6274",
        "http://[::1]",
        "http://[::1]:8080",
        "https://app.example",
    ] {
        let req = mcp_post_json(&initialize_body(json!(1), "2025-06-18")).header("Origin", origin);
        let response = request(addr, &req);
        assert_eq!(response.status, 200, "Origin {origin}: {response}");
        assert_eq!(
            response.header("Access-Control-Allow-Origin"),
            Some(origin),
            "Origin {origin}: {response}"
        );
        assert!(
            response
                .header_items("Access-Control-Expose-Headers")
                .iter()
                .any(|h| h == "mcp-session-id"),
            "Origin {origin}: Mcp-Session-Id not exposed: {response}"
        );
    }
}

#[test]
fn every_response_to_an_allowed_origin_carries_the_cors_headers() {
    let forkline = serve_http(&[], &[]);
    let addr = http_addr(&forkline);
    let origin = "http://localhost:3000";
    let session = McpSession::open(addr);
    let cases = [
        (
            "SSE answer",
            session
                .post_req(&rpc_request(json!(1), "tools/list", json!({})))
                .header("Origin", origin),
        ),
        (
            "202",
            session
                .post_req(&rpc_notification("notifications/initialized", json!({})))
                .header("Origin", origin),
        ),
        (
            "404 unknown session",
            mcp_post(&rpc_request(json!(2), "ping", json!({})))
                .header("Mcp-Session-Id", UNKNOWN_SESSION)
                .header("Origin", origin),
        ),
        ("405", Request::new("PUT", "/mcp").header("Origin", origin)),
        (
            "400 bad JSON",
            session
                .post_req(&json!(null))
                .body("{not json")
                .header("Origin", origin),
        ),
    ];
    for (what, req) in cases {
        let response = request(addr, &req);
        assert_eq!(
            response.header("Access-Control-Allow-Origin"),
            Some(origin),
            "{what}: {response}"
        );
        assert!(
            response
                .header_items("Access-Control-Expose-Headers")
                .iter()
                .any(|h| h == "mcp-session-id"),
            "{what}: Mcp-Session-Id not exposed: {response}"
        );
    }
}

#[test]
fn origin_is_checked_before_the_token_and_the_method() {
    let tokens = Tokens::new();
    let forkline = serve_http(&["--auth-token-file", &tokens.path()], &[]);
    let addr = http_addr(&forkline);
    let evil = "http://evil.example";
    for req in [
        mcp_post(&initialize_body(json!(1), "2025-06-18")).header("Origin", evil),
        Request::options("/mcp")
            .header("Origin", evil)
            .header("Access-Control-Request-Method", "POST"),
        Request::new("PUT", "/mcp").header("Origin", evil),
    ] {
        let response = request(addr, &req);
        assert_eq!(
            response.status, 403,
            "{} {}: {response}",
            req.method, req.target
        );
    }
}

// ---- 3. CORS preflight ----------------------------------------------------------

#[test]
fn cors_preflight_gets_204_with_the_allow_headers() {
    let forkline = serve_http(&[], &[]);
    let addr = http_addr(&forkline);
    let origin = "http://localhost:6274";
    for path in ["/mcp", "/sse", "/messages"] {
        let response = request(
            addr,
            &Request::options(path)
                .header("Origin", origin)
                .header("Access-Control-Request-Method", "POST")
                .header(
                    "Access-Control-Request-Headers",
                    "content-type, mcp-session-id, mcp-protocol-version",
                ),
        );
        assert_eq!(response.status, 204, "OPTIONS {path}: {response}");
        assert!(response.body.is_empty(), "204 with a body: {response}");
        assert_eq!(
            response.header("Access-Control-Allow-Origin"),
            Some(origin),
            "{response}"
        );
        if path == "/mcp" {
            let methods: BTreeSet<String> = response
                .header_items("Access-Control-Allow-Methods")
                .into_iter()
                .collect();
            assert!(
                items(&["GET", "POST", "DELETE", "OPTIONS"]).is_subset(&methods),
                "Access-Control-Allow-Methods: {response}"
            );
        }
        let allowed: BTreeSet<String> = response
            .header_items("Access-Control-Allow-Headers")
            .into_iter()
            .collect();
        let needed = items(&[
            "Content-Type",
            "Accept",
            "Authorization",
            "Mcp-Session-Id",
            "Mcp-Protocol-Version",
            "Mcp-Method",
            "Mcp-Name",
            "Last-Event-ID",
        ]);
        let missing: Vec<_> = needed.difference(&allowed).collect();
        assert!(
            missing.is_empty(),
            "Allow-Headers lacks {missing:?}: {response}"
        );
        let max_age = response
            .header("Access-Control-Max-Age")
            .unwrap_or_else(|| panic!("no Access-Control-Max-Age: {response}"));
        assert!(
            max_age.trim().parse::<u64>().is_ok_and(|s| s > 0),
            "Access-Control-Max-Age {max_age:?}"
        );
    }
}

#[test]
fn cors_preflight_needs_no_token() {
    let tokens = Tokens::new();
    let forkline = serve_http(&["--auth-token-file", &tokens.path()], &[]);
    let response = request(
        http_addr(&forkline),
        &Request::options("/mcp")
            .header("Origin", "http://localhost:5173")
            .header("Access-Control-Request-Method", "POST")
            .header(
                "Access-Control-Request-Headers",
                "authorization, content-type",
            ),
    );
    assert_eq!(response.status, 204, "{response}");
    assert_eq!(
        response.header("Access-Control-Allow-Origin"),
        Some("http://localhost:5173")
    );
}

// ---- 4. bearer token --------------------------------------------------------------

fn assert_401(response: &Response, what: &str) {
    assert_eq!(response.status, 401, "{what}: {response}");
    let challenge = response
        .header("WWW-Authenticate")
        .unwrap_or_else(|| panic!("{what}: 401 without WWW-Authenticate: {response}"));
    assert!(
        challenge.to_ascii_lowercase().starts_with("bearer"),
        "{what}: WWW-Authenticate {challenge:?}"
    );
    assert!(
        response.header("Mcp-Session-Id").is_none(),
        "{what}: {response}"
    );
}

#[test]
fn a_missing_or_wrong_bearer_token_gets_401() {
    let tokens = Tokens::new();
    let forkline = serve_http(&["--auth-token-file", &tokens.path()], &[]);
    let addr = http_addr(&forkline);
    let init = initialize_body(json!(1), "2025-06-18");
    let wrong = [
        None,
        Some("Bearer wrong"),
        Some("Bearer alice-token-6f1"),
        Some("Bearer alice-token-6f1cx"),
        Some("Bearer alice"),
        Some("Bearer alice:alice-token-6f1c"),
        Some("Bearer "),
        Some("Basic YWxpY2U6YWxpY2UtdG9rZW4tNmYxYw=="),
        Some("alice-token-6f1c"),
    ];
    for auth in wrong {
        let mut req = mcp_post_json(&init);
        if let Some(auth) = auth {
            req = req.header("Authorization", auth);
        }
        assert_401(&request(addr, &req), &format!("POST with {auth:?}"));
    }
    // The token is checked before the session id and the method.
    let get = Request::get("/mcp")
        .header("Accept", ACCEPT_SSE)
        .header("Mcp-Session-Id", UNKNOWN_SESSION);
    assert_401(&request(addr, &get), "GET without a token");
    let delete = Request::delete("/mcp").header("Mcp-Session-Id", UNKNOWN_SESSION);
    assert_401(&request(addr, &delete), "DELETE without a token");
    assert_401(
        &request(addr, &Request::new("PUT", "/mcp")),
        "PUT without a token",
    );
    assert_401(
        &request(addr, &Request::get("/sse").header("Accept", ACCEPT_SSE)),
        "GET /sse without a token",
    );
}

#[test]
fn the_right_bearer_token_opens_and_uses_a_session() {
    let tokens = Tokens::new();
    let forkline = serve_http(&["--auth-token-file", &tokens.path()], &[]);
    let addr = http_addr(&forkline);
    let session = McpSession::open_with(addr, "2025-06-18", &[("Authorization", ALICE)]);
    assert!(is_session_id(&session.id), "session id {:?}", session.id);
    let reply = session.call(
        json!(2),
        "tools/call",
        json!({"name": "echo", "arguments": {"text": "with a token"}}),
    );
    assert_eq!(
        reply["result"]["content"][0]["text"], "with a token",
        "{reply}"
    );
    // The same session without the token is refused.
    let bare = mcp_post_json(&rpc_request(json!(3), "ping", json!({})))
        .header("Mcp-Session-Id", &session.id)
        .header("MCP-Protocol-Version", "2025-06-18");
    assert_401(&request(addr, &bare), "the session without a token");
    // A method not served, with the right token: past the token check.
    let put = Request::new("PUT", "/mcp").header("Authorization", ALICE);
    assert_eq!(request(addr, &put).status, 405);
}

#[test]
fn a_session_answers_404_to_another_principal() {
    let tokens = Tokens::new();
    let forkline = serve_http(&["--auth-token-file", &tokens.path()], &[]);
    let addr = http_addr(&forkline);
    let alice = McpSession::open_with(addr, "2025-06-18", &[("Authorization", ALICE)]);
    let mut as_bob = alice.clone();
    as_bob.extra = vec![("Authorization".into(), BOB.into())];

    let response = as_bob.post_json(&rpc_request(json!(1), "ping", json!({})));
    assert_eq!(response.status, 404, "bob used alice's session: {response}");
    let response = HttpConn::connect(addr).open(&as_bob.get_req());
    assert_eq!(
        response.head.status, 404,
        "bob opened alice's GET stream: {}",
        response.head
    );
    let response = as_bob.delete();
    assert_eq!(
        response.status, 404,
        "bob deleted alice's session: {response}"
    );

    // Alice's session is untouched.
    let reply = alice.call(json!(2), "ping", json!({}));
    assert_eq!(reply["id"], json!(2), "{reply}");
    assert!(reply.get("result").is_some(), "{reply}");
}

// ---- 5. method ------------------------------------------------------------------

#[test]
fn a_method_not_served_gets_405_with_allow() {
    let forkline = serve_http(&[], &[]);
    let addr = http_addr(&forkline);
    let mcp = items(&["GET", "POST", "DELETE", "OPTIONS"]);
    let sse = items(&["GET", "OPTIONS"]);
    let messages = items(&["POST", "OPTIONS"]);
    for (method, path, allow) in [
        ("PUT", "/mcp", &mcp),
        ("PATCH", "/mcp", &mcp),
        ("HEAD", "/mcp", &mcp),
        ("POST", "/sse", &sse),
        ("DELETE", "/sse", &sse),
        ("PUT", "/sse", &sse),
        ("GET", "/messages", &messages),
        ("DELETE", "/messages?sessionId=abc", &messages),
    ] {
        let mut conn = HttpConn::connect(addr);
        conn.send(&Request::new(method, path));
        let head = conn.read_head();
        assert_eq!(head.status, 405, "{method} {path}: {head}");
        let got: BTreeSet<String> = head.header_items("Allow").into_iter().collect();
        assert_eq!(&got, allow, "{method} {path}: Allow header: {head}");
        if method != "HEAD" {
            conn.read_body_within(&head, PATIENCE)
                .unwrap_or_else(|e| panic!("{method} {path}: body: {e}"));
        }
    }
}

// ---- 6. header size, syntax and time ----------------------------------------------

#[test]
fn headers_over_16_kib_get_431_and_the_connection_closes() {
    let forkline = serve_http(&[], &[]);
    let addr = http_addr(&forkline);
    let one_big = mcp_post_json(&initialize_body(json!(1), "2025-06-18"))
        .header("X-Padding", &"a".repeat(17 * 1024));
    let mut many = mcp_post_json(&initialize_body(json!(1), "2025-06-18"));
    for i in 0..40 {
        many = many.header(&format!("X-Padding-{i}"), &"b".repeat(500));
    }
    for (what, req) in [
        ("one 17 KiB header", one_big),
        ("40 headers of 500 bytes", many),
    ] {
        let mut conn = HttpConn::connect(addr);
        let response = conn.request(&req);
        assert_eq!(response.status, 431, "{what}: {response}");
        assert!(
            response.header("Mcp-Session-Id").is_none(),
            "{what}: {response}"
        );
        assert!(
            conn.closed_within(PATIENCE),
            "{what}: connection still open after 431"
        );
    }
}

#[test]
fn headers_well_under_16_kib_are_served() {
    let forkline = serve_http(&[], &[]);
    let req = mcp_post_json(&initialize_body(json!(1), "2025-06-18"))
        .header("X-Padding", &"a".repeat(8 * 1024));
    request(http_addr(&forkline), &req).assert_status(200);
}

#[test]
fn a_malformed_request_line_or_header_gets_400_and_the_connection_closes() {
    let forkline = serve_http(&[], &[]);
    let addr = http_addr(&forkline);
    let bad: [&[u8]; 7] = [
        b"GET\r\n\r\n",
        b"GET /mcp HTTP/1.1 extra\r\nHost: x\r\n\r\n",
        b"GET /mcp HTTX/1.1\r\nHost: x\r\n\r\n",
        b"G(T /mcp HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /mcp HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n",
        b"POST /mcp HTTP/1.1\r\nHost: x\r\n: no name\r\n\r\n",
        b"POST /mcp HTTP/1.1\r\nHost: x\r\nBad Name: v\r\n\r\n",
    ];
    for bytes in bad {
        let shown = String::from_utf8_lossy(bytes);
        let mut conn = HttpConn::connect(addr);
        conn.send_raw(bytes).expect("send");
        let response = conn.read_response();
        assert_eq!(response.status, 400, "{shown:?}: {response}");
        assert!(
            conn.closed_within(PATIENCE),
            "{shown:?}: connection still open after 400"
        );
    }
    // Still serving.
    McpSession::open(addr);
}

#[test]
fn an_unfinished_request_head_is_closed_after_the_header_timeout() {
    let forkline = serve_http(&[], &[]);
    let addr = http_addr(&forkline);
    let mut slow = HttpConn::connect(addr);
    let started = Instant::now();
    slow.send_raw(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n")
        .expect("send a partial head");
    // Another client is served meanwhile: the slow one holds no one up.
    let session = McpSession::open(addr);
    assert_eq!(session.call(json!(1), "ping", json!({}))["id"], json!(1));

    // The contract says 10 s; allow twice that before calling it a failure.
    assert!(
        slow.closed_within(Duration::from_secs(20)),
        "a connection with an unfinished head still open after 20 s"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(5),
        "closed after {waited:?}: too early for a 10 s header timeout"
    );
    let sent = String::from_utf8_lossy(slow.leftover()).into_owned();
    assert!(
        sent.is_empty() || sent.starts_with("HTTP/1.1 408"),
        "before closing, forkline sent something other than a 408: {sent:?}"
    );
}

#[test]
fn an_unfinished_body_is_closed_after_the_body_timeout() {
    let forkline = serve_http(&[], &[]);
    let addr = http_addr(&forkline);
    let mut slow = HttpConn::connect(addr);
    let started = Instant::now();
    slow.send_raw(
        b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
          Accept: application/json\r\nContent-Length: 100\r\n\r\n{\"jsonrpc\":",
    )
    .expect("send a head and part of the body");
    McpSession::open(addr);

    // The contract says 30 s; allow half as much again.
    assert!(
        slow.closed_within(Duration::from_secs(45)),
        "a connection with an unfinished body still open after 45 s"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(20),
        "closed after {waited:?}: too early for a 30 s body timeout"
    );
    let sent = String::from_utf8_lossy(slow.leftover()).into_owned();
    assert!(
        sent.is_empty() || sent.starts_with("HTTP/1.1 408"),
        "before closing, forkline sent something other than a 408: {sent:?}"
    );
}

// ---- POST /mcp: Content-Type, Accept, size ------------------------------------------

#[test]
fn a_post_without_a_json_content_type_gets_415() {
    let forkline = serve_http(&[], &[]);
    let addr = http_addr(&forkline);
    let init = initialize_body(json!(1), "2025-06-18");
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("text/event-stream"),
        Some("application/jsonl"),
        Some("multipart/form-data; boundary=x"),
    ] {
        let mut req = mcp_post_json(&init).without_header("Content-Type");
        if let Some(ct) = content_type {
            req = req.header("Content-Type", ct);
        }
        let response = request(addr, &req);
        assert_eq!(
            response.status, 415,
            "Content-Type {content_type:?}: {response}"
        );
        assert!(response.header("Mcp-Session-Id").is_none(), "{response}");
    }
    for content_type in ["application/json; charset=utf-8", "Application/JSON"] {
        let req = mcp_post_json(&init).set_header("Content-Type", content_type);
        let response = request(addr, &req);
        assert_eq!(
            response.status, 200,
            "Content-Type {content_type:?}: {response}"
        );
    }
}

#[test]
fn a_post_whose_accept_allows_neither_json_nor_sse_gets_406() {
    let forkline = serve_http(&[], &[]);
    let addr = http_addr(&forkline);
    let init = initialize_body(json!(1), "2025-06-18");
    for accept in [
        "text/html",
        "image/png",
        "application/xml",
        "text/plain, text/html",
    ] {
        let req = mcp_post(&init).set_header("Accept", accept);
        let response = request(addr, &req);
        assert_eq!(response.status, 406, "Accept {accept:?}: {response}");
        assert!(response.header("Mcp-Session-Id").is_none(), "{response}");
    }
    for (accept, media) in [
        ("*/*", None),
        ("application/json", Some("application/json")),
        ("text/event-stream", Some("text/event-stream")),
        (
            "text/html, application/json;q=0.9",
            Some("application/json"),
        ),
    ] {
        let req = mcp_post(&init).set_header("Accept", accept);
        let response = request(addr, &req);
        assert_eq!(response.status, 200, "Accept {accept:?}: {response}");
        if let Some(media) = media {
            assert_eq!(
                response.media_type().as_deref(),
                Some(media),
                "Accept {accept:?}"
            );
        }
    }
}

#[test]
fn a_get_whose_accept_does_not_allow_sse_gets_406() {
    let forkline = serve_http(&[], &[]);
    let session = McpSession::open(http_addr(&forkline));
    for accept in ["application/json", "text/html"] {
        let req = session.get_req().set_header("Accept", accept);
        let stream = HttpConn::connect(session.addr).open(&req);
        assert_eq!(
            stream.head.status, 406,
            "GET with Accept {accept:?}: {}",
            stream.head
        );
    }
    let req = session.get_req().set_header("Accept", "*/*");
    let stream = HttpConn::connect(session.addr).open(&req);
    stream.assert_sse_head();
}

#[test]
fn a_body_over_max_message_bytes_gets_413() {
    let forkline = serve_http(&["--max-message-bytes", "4096"], &[]);
    let addr = http_addr(&forkline);
    let session = McpSession::open(addr);
    let echo = |text: String| {
        rpc_request(
            json!(1),
            "tools/call",
            json!({"name": "echo", "arguments": {"text": text}}),
        )
    };

    // Refused on the declared length alone, before any body byte is sent.
    let mut conn = HttpConn::connect(addr);
    let mut head = session
        .post_json_req(&echo(String::new()))
        .set_header("Content-Length", "100000")
        .to_bytes();
    let body_start = head.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    head.truncate(body_start);
    conn.send_raw(&head).expect("send head");
    let response = conn.read_response();
    assert_eq!(response.status, 413, "Content-Length 100000: {response}");

    // A whole body of 5000 bytes, by length and chunked.
    let big = echo("x".repeat(5000));
    let by_length = request(addr, &session.post_json_req(&big));
    assert_eq!(by_length.status, 413, "5000-byte body: {by_length}");
    let chunked = request(addr, &session.post_json_req(&big).chunked(1000));
    assert_eq!(chunked.status, 413, "5000-byte chunked body: {chunked}");

    // Under the limit, both framings go through, and the session is fine.
    for req in [
        session.post_json_req(&echo("y".repeat(3000))),
        session.post_json_req(&echo("z".repeat(3000))).chunked(700),
    ] {
        let response = request(addr, &req);
        response.assert_status(200);
        let text = response.json()["result"]["content"][0]["text"].clone();
        assert_eq!(text.as_str().map(str::len), Some(3000), "{response}");
    }
}

// ---- POST /mcp: version, JSON, JSON-RPC, session id -----------------------------------

#[test]
fn an_unsupported_protocol_version_gets_400_naming_the_supported_ones() {
    let forkline = serve_http(&[], &[]);
    let addr = http_addr(&forkline);
    let session = McpSession::open(addr);
    let check = |what: &str, response: Response| {
        assert_eq!(response.status, 400, "{what}: {response}");
        let body = response.json();
        assert_eq!(body["jsonrpc"], "2.0", "{what}: {response}");
        assert_eq!(body["id"], Value::Null, "{what}: {response}");
        assert!(body["error"]["code"].is_i64(), "{what}: {response}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        for v in SUPPORTED_VERSIONS {
            assert!(
                message.contains(v),
                "{what}: the error does not name {v}: {message:?}"
            );
        }
    };
    for version in ["1999-01-01", "2025-01-01", "garbage", "2026-07-28"] {
        let req = mcp_post_json(&initialize_body(json!(1), "2025-06-18"))
            .header("MCP-Protocol-Version", version);
        let response = request(addr, &req);
        assert!(response.header("Mcp-Session-Id").is_none(), "{response}");
        check(
            &format!("initialize with version header {version}"),
            response,
        );
    }
    let req = session
        .post_json_req(&rpc_request(json!(2), "ping", json!({})))
        .set_header("MCP-Protocol-Version", "1999-01-01");
    check("in a session", request(addr, &req));
}

#[test]
fn every_supported_protocol_version_and_none_is_accepted() {
    let forkline = serve_http(&[], &[]);
    let addr = http_addr(&forkline);
    for version in SUPPORTED_VERSIONS {
        let req = mcp_post_json(&initialize_body(json!(1), version))
            .header("MCP-Protocol-Version", version);
        let response = request(addr, &req);
        assert_eq!(response.status, 200, "version {version}: {response}");
        let session = McpSession::open_with(addr, version, &[]);
        let reply = session.call(json!(2), "ping", json!({}));
        assert_eq!(reply["id"], json!(2), "version {version}: {reply}");
    }
    // No header at all: 2025-03-26 is assumed.
    let session = McpSession::open(addr);
    let req = session
        .post_json_req(&rpc_request(json!(3), "ping", json!({})))
        .without_header("MCP-Protocol-Version");
    request(addr, &req).assert_status(200);
}

#[test]
fn a_body_that_is_not_json_gets_400_with_parse_error() {
    let forkline = serve_http(&[], &fake_server(&["--initialize", "--trace"]));
    let addr = http_addr(&forkline);
    let session = McpSession::open(addr);
    let bad: [&[u8]; 6] = [
        b"{\"jsonrpc\":\"2.0\",\"id\":1,",
        b"not json at all",
        b"{\"id\": 2,,}",
        b"}",
        b"",
        b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"\xff\xfe\"}",
    ];
    for body in bad {
        let shown = String::from_utf8_lossy(body);
        for (what, req) in [
            ("without a session", mcp_post_json(&json!(null))),
            ("in a session", session.post_json_req(&json!(null))),
        ] {
            let response = request(addr, &req.body(body));
            assert_eq!(response.status, 400, "{shown:?} {what}: {response}");
            assert_error_body(&response, -32700);
        }
    }
    assert_eq!(
        session.call(json!(9), "still-here", json!({}))["result"]["method"],
        "still-here"
    );
    assert!(
        !forkline
            .stderr_text()
            .contains("fake: received invalid JSON"),
        "bad input reached the child; log:\n{}",
        forkline.stderr_text()
    );
}

#[test]
fn json_that_is_not_json_rpc_gets_400_with_invalid_request() {
    let forkline = serve_http(&[], &fake_server(&["--initialize", "--trace"]));
    let addr = http_addr(&forkline);
    let session = McpSession::open(addr);
    let bad = [
        json!({"foo": 1}),
        json!([1, 2]),
        json!(42),
        json!("a string"),
        json!([]),
        json!({"id": 1, "method": "no-jsonrpc-member"}),
        json!([{"jsonrpc": "2.0", "id": "batch-mate", "method": "ping"}, 3]),
    ];
    for body in &bad {
        for (what, req) in [
            ("without a session", mcp_post_json(body)),
            ("in a session", session.post_json_req(body)),
        ] {
            let response = request(addr, &req);
            assert_eq!(response.status, 400, "{body} {what}: {response}");
            assert_error_body(&response, -32600);
        }
    }
    assert_eq!(
        session.call(json!(9), "still-here", json!({}))["id"],
        json!(9)
    );
    forkline.wait_for_log("fake: received still-here id=9");
    assert!(
        !forkline.stderr_text().contains("\"batch-mate\""),
        "an item of a refused batch reached the child; log:\n{}",
        forkline.stderr_text()
    );
}

#[test]
fn a_request_without_a_session_id_that_is_not_initialize_gets_400() {
    let forkline = serve_http(&[], &[]);
    let addr = http_addr(&forkline);
    for body in [
        rpc_request(json!(1), "tools/list", json!({})),
        rpc_request(json!(2), "ping", json!({})),
        rpc_notification("notifications/initialized", json!({})),
        json!([rpc_request(json!(3), "tools/list", json!({}))]),
        json!({"jsonrpc": "2.0", "id": 4, "result": {}}),
    ] {
        let response = request(addr, &mcp_post(&body));
        assert_eq!(
            response.status, 400,
            "{body} without a session id: {response}"
        );
        assert!(response.header("Mcp-Session-Id").is_none(), "{response}");
    }
    let get = Request::get("/mcp").header("Accept", ACCEPT_SSE);
    let stream = HttpConn::connect(addr).open(&get);
    assert_eq!(
        stream.head.status, 400,
        "GET without a session id: {}",
        stream.head
    );
    let response = request(addr, &Request::delete("/mcp"));
    assert_eq!(
        response.status, 400,
        "DELETE without a session id: {response}"
    );
}

#[test]
fn an_unknown_session_id_gets_404() {
    let forkline = serve_http(&[], &[]);
    let addr = http_addr(&forkline);
    // A live session, so "unknown" is not just "the table is empty".
    let live = McpSession::open(addr);
    let mut flipped = live.id.clone().into_bytes();
    flipped[0] = if flipped[0] == b'a' { b'b' } else { b'a' };
    let flipped = String::from_utf8(flipped).unwrap();
    for id in [UNKNOWN_SESSION, flipped.as_str(), "not-a-session-id", "x"] {
        let post = mcp_post(&rpc_request(json!(1), "ping", json!({})))
            .header("Mcp-Session-Id", id)
            .header("MCP-Protocol-Version", "2025-06-18");
        let response = request(addr, &post);
        assert_eq!(response.status, 404, "POST with session {id:?}: {response}");
        let get = Request::get("/mcp")
            .header("Accept", ACCEPT_SSE)
            .header("Mcp-Session-Id", id);
        let stream = HttpConn::connect(addr).open(&get);
        assert_eq!(
            stream.head.status, 404,
            "GET with session {id:?}: {}",
            stream.head
        );
        let delete = Request::delete("/mcp").header("Mcp-Session-Id", id);
        let response = request(addr, &delete);
        assert_eq!(
            response.status, 404,
            "DELETE with session {id:?}: {response}"
        );
    }
    assert_eq!(live.call(json!(2), "ping", json!({}))["id"], json!(2));
}

// ---- framing and keep-alive across refusals -------------------------------------------

#[test]
fn refusals_are_framed_and_keep_the_connection_alive() {
    let forkline = serve_http(&[], &[]);
    let addr = http_addr(&forkline);
    let init = initialize_body(json!(1), "2025-06-18");
    let mut conn = HttpConn::connect(addr);
    // read_response panics on a response with neither Content-Length
    // nor chunked framing, so each of these also checks the framing.
    for (req, status) in [
        (Request::get("/nowhere"), 404),
        (Request::new("PUT", "/mcp"), 405),
        (mcp_post(&init).set_header("Accept", "text/html"), 406),
        (
            mcp_post(&init).set_header("Content-Type", "text/plain"),
            415,
        ),
        (mcp_post(&json!(null)).body("{oops"), 400),
        (
            mcp_post(&rpc_request(json!(2), "ping", json!({})))
                .header("Mcp-Session-Id", UNKNOWN_SESSION),
            404,
        ),
    ] {
        let response = conn.request(&req);
        assert_eq!(
            response.status, status,
            "{} {}: {response}",
            req.method, req.target
        );
    }
    let response = conn.request(&mcp_post_json(&init));
    response.assert_status(200);
    assert!(response.header("Mcp-Session-Id").is_some(), "{response}");
}

// ---- bad input never crashes ------------------------------------------------------

/// Bytes that look like nothing in particular (a fixed pseudo-random
/// sequence with some line breaks in it).
fn noise(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..len)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            if i % 97 == 96 { b'\n' } else { x as u8 }
        })
        .collect()
}

#[test]
fn garbage_never_crashes_forkline_and_a_normal_request_then_works() {
    let mut forkline = serve_http(&[], &[]);
    let addr = http_addr(&forkline);
    let post = "POST /mcp HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nAccept: */*\r\n";
    let garbage: Vec<Vec<u8>> = vec![
        vec![0u8; 64],
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(), // a TLS ClientHello
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
        b"\r\n\r\n\r\n".to_vec(),
        b"GET /mcp HTTP/1.1\r\nHost: x\r\nX-Bad: \xff\xfe\xfd\r\n\r\n".to_vec(),
        format!("{post}Content-Length: -5\r\n\r\n").into_bytes(),
        format!("{post}Content-Length: abc\r\n\r\n").into_bytes(),
        format!("{post}Content-Length: 99999999999999999999999999\r\n\r\n").into_bytes(),
        format!("{post}Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!").into_bytes(),
        format!("{post}Transfer-Encoding: chunked\r\n\r\nzz\r\n").into_bytes(),
        format!("{post}Transfer-Encoding: chunked\r\n\r\nffffffffffffffffffffff\r\n").into_bytes(),
        format!("{post}Transfer-Encoding: chunked\r\n\r\n5\r\nabcdefgh\r\n0\r\n\r\n").into_bytes(),
        format!("{post}Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n").into_bytes(),
        format!("{post}Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n")
            .into_bytes(),
        noise(4096),
    ];
    for bytes in &garbage {
        let shown: String = String::from_utf8_lossy(bytes).chars().take(60).collect();
        let mut conn = HttpConn::connect(addr);
        // The server may close before reading everything; that is fine.
        let _ = conn.send_raw(bytes);
        conn.close_write();
        assert!(
            conn.closed_within(PATIENCE),
            "{shown:?}: connection still open {PATIENCE:?} after the client's EOF"
        );
        let answer = String::from_utf8_lossy(conn.leftover()).into_owned();
        // A refusal: 4xx, or 501/505 for a coding or version it does not do.
        assert!(
            answer.is_empty()
                || answer.starts_with("HTTP/1.1 4")
                || answer.starts_with("HTTP/1.1 501")
                || answer.starts_with("HTTP/1.1 505"),
            "{shown:?}: forkline answered with something other than a refusal: {answer:?}"
        );
        assert!(
            forkline.try_exit_status().is_none(),
            "forkline exited after {shown:?}; log:\n{}",
            forkline.stderr_text()
        );
    }

    // A truncated body: the client promises 200 bytes, sends 20 and stops.
    let mut truncated = HttpConn::connect(addr);
    truncated
        .send_raw(format!("{post}Content-Length: 200\r\n\r\n{{\"jsonrpc\":\"2.0\",").as_bytes())
        .expect("send a truncated body");
    // Served meanwhile:
    let session = McpSession::open(addr);
    truncated.close_write();
    assert!(
        truncated.closed_within(PATIENCE),
        "truncated body: connection still open"
    );

    let reply = session.call(
        json!(1),
        "tools/call",
        json!({"name": "echo", "arguments": {"text": "still fine"}}),
    );
    assert_eq!(
        reply["result"]["content"][0]["text"], "still fine",
        "{reply}"
    );
    assert!(forkline.try_exit_status().is_none(), "forkline exited");
}
