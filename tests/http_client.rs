//! The raw HTTP/1.1 client of tests/common/http.rs, checked against a
//! scripted server on a loopback socket: body framing (Content-Length,
//! chunked with odd splits and a trailer, none for 204), SSE parsing
//! (priming events, comments, multi-line data, CRLF), keep-alive, and
//! reads that time out mid-chunk and resume without losing a byte. When an
//! `http_*` test fails, this says whether the client can be trusted.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use common::PATIENCE;
use common::http::*;
use serde_json::json;

/// Reads one request head (and a Content-Length body) from `stream`.
fn read_request(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        assert_eq!(
            stream.read(&mut byte).expect("read request"),
            1,
            "EOF in head"
        );
        got.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&got).to_ascii_lowercase();
    if let Some(len) = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse::<usize>().unwrap())
    {
        let mut body = vec![0u8; len];
        stream.read_exact(&mut body).expect("read body");
        got.extend_from_slice(&body);
    }
    got
}

/// A one-connection server running `script` on its own thread.
fn scripted(
    script: impl FnOnce(TcpStream) + Send + 'static,
) -> (std::net::SocketAddr, thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().unwrap();
    let handle = thread::spawn(move || {
        let (stream, _) = listener.accept().expect("accept");
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        script(stream);
    });
    (addr, handle)
}

fn chunk(piece: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", piece.len()).into_bytes();
    out.extend_from_slice(piece);
    out.extend_from_slice(b"\r\n");
    out
}

#[test]
fn framing_sse_and_keep_alive() {
    let sse = b"id: s-0\r\ndata:\r\n\r\n: keep-alive\n\nid: s-1\nevent: message\ndata: {\"a\":\ndata: 1}\n\n";
    let (addr, server) = scripted(move |mut s| {
        let first = read_request(&mut s);
        assert!(first.starts_with(b"POST /mcp HTTP/1.1\r\n"), "{first:?}");
        let body = br#"{"ok":true}"#;
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: Application/JSON; charset=utf-8\r\nMcp-Session-Id: abc\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(body).unwrap();

        read_request(&mut s);
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nX-Accel-Buffering: no\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
        // Chunks that cut lines, fields and the CRLF pair anywhere.
        for piece in sse.chunks(5) {
            s.write_all(&chunk(piece)).unwrap();
        }
        s.write_all(b"0;ext=1\r\nX-Trailer: t\r\n\r\n").unwrap();

        read_request(&mut s);
        s.write_all(b"HTTP/1.1 204 No Content\r\nAllow: GET, POST\r\nallow: DELETE\r\n\r\n")
            .unwrap();
    });

    let mut conn = HttpConn::connect(addr);
    let r = conn.request(&mcp_post(&json!({"x": 1})));
    r.assert_status(200);
    assert_eq!(r.media_type().as_deref(), Some("application/json"));
    assert_eq!(r.header("mcp-session-id"), Some("abc"));
    assert_eq!(r.json(), json!({"ok": true}));

    let mut stream = conn.open(&Request::get("/mcp").header("Accept", ACCEPT_SSE));
    stream.assert_sse_head();
    let priming = stream.next_event();
    assert!(priming.is_priming(), "{priming:?}");
    assert_eq!(assert_event_id(&priming), "s-0");
    let comment = stream.next_event();
    assert_eq!(comment.comments, vec!["keep-alive".to_string()]);
    assert_eq!(comment.data, None);
    let (event, msg) = stream.next_message();
    assert_eq!(event.event.as_deref(), Some("message"));
    assert_eq!(event.id.as_deref(), Some("s-1"));
    assert_eq!(msg, json!({"a": 1}));
    assert!(stream.expect_end(PATIENCE).is_empty());

    let mut conn = stream.into_conn();
    let r = conn.request(&Request::options("/mcp"));
    assert_eq!(r.status, 204);
    assert_eq!(r.header_items("ALLOW"), vec!["get", "post", "delete"]);
    server.join().expect("server thread");
}

#[test]
fn a_read_that_times_out_mid_chunk_loses_nothing() {
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (addr, server) = scripted(move |mut s| {
        read_request(&mut s);
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
        let event = b"id: a-1\ndata: {\"n\":1}\n\n";
        let whole = chunk(event);
        // Half a chunk, then wait for the client to time out.
        s.write_all(&whole[..9]).unwrap();
        go_rx.recv().unwrap();
        s.write_all(&whole[9..]).unwrap();
        go_rx.recv().unwrap();
        // The server closes without the terminator.
    });
    let mut stream = HttpConn::connect(addr).open(&Request::get("/mcp"));
    assert!(matches!(
        stream.next_within(Duration::from_millis(100)),
        SseNext::Timeout
    ));
    go_tx.send(()).unwrap();
    let (event, msg) = stream.next_message();
    assert_eq!(event.id.as_deref(), Some("a-1"));
    assert_eq!(msg, json!({"n": 1}));
    go_tx.send(()).unwrap();
    assert!(
        matches!(stream.next_within(PATIENCE), SseNext::Closed(_)),
        "a close without the chunked terminator is not a clean end"
    );
    server.join().expect("server thread");
}

#[test]
fn a_chunked_request_is_framed_as_http_says() {
    let req = Request::post("/mcp")
        .header("Accept", ACCEPT_JSON)
        .json(&json!({"k": "0123456789"}))
        .chunked(6);
    let bytes = String::from_utf8(req.to_bytes()).unwrap();
    assert!(
        bytes.starts_with("POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n"),
        "{bytes}"
    );
    assert!(bytes.contains("Transfer-Encoding: chunked\r\n"), "{bytes}");
    assert!(!bytes.contains("Content-Length"), "{bytes}");
    assert!(
        bytes.ends_with("\r\n\r\n6\r\n{\"k\":\"\r\n6\r\n012345\r\n6\r\n6789\"}\r\n0\r\n\r\n"),
        "{bytes:?}"
    );
    let plain = Request::post("/mcp").body("abc").to_bytes();
    assert!(
        String::from_utf8(plain)
            .unwrap()
            .ends_with("Content-Length: 3\r\n\r\nabc")
    );
}

#[test]
fn closed_within_sees_the_servers_close() {
    let (addr, server) = scripted(|mut s| {
        s.write_all(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n")
            .unwrap();
    });
    let mut conn = HttpConn::connect(addr);
    assert!(conn.closed_within(PATIENCE));
    assert!(conn.leftover().starts_with(b"HTTP/1.1 408"));
    server.join().expect("server thread");
}
