//! `serve --http`: the HTTP+SSE transport of 2024-11-05 (HTTP-CONTRACT.md
//! "Legacy HTTP+SSE"): `GET /sse` admits a session and names its
//! `/messages?sessionId=…` endpoint; POSTs there get 202 and their answers
//! arrive on the SSE stream as `event: message`; closing the stream ends
//! the session.

mod common;

use common::http::*;
use common::*;
use serde_json::{Value, json};

/// A legacy session: its open SSE stream and its POST endpoint.
struct Legacy {
    addr: std::net::SocketAddr,
    sse: SseStream,
    endpoint: String,
}

impl Legacy {
    fn open(addr: std::net::SocketAddr) -> Legacy {
        let mut sse =
            HttpConn::connect(addr).open(&Request::get("/sse").header("Accept", ACCEPT_SSE));
        sse.head.assert_status(200);
        assert_eq!(
            sse.head.media_type().as_deref(),
            Some("text/event-stream"),
            "{}",
            sse.head
        );
        assert!(sse.head.is_chunked(), "/sse not chunked: {}", sse.head);
        let first = sse.next_event();
        assert_eq!(
            first.event.as_deref(),
            Some("endpoint"),
            "first event: {first:?}"
        );
        let endpoint = first.data.clone().unwrap_or_default();
        let id = endpoint
            .strip_prefix("/messages?sessionId=")
            .unwrap_or_else(|| panic!("endpoint {endpoint:?} is not /messages?sessionId=…"));
        assert!(!id.is_empty() && !id.contains('&'), "endpoint {endpoint:?}");
        Legacy {
            addr,
            sse,
            endpoint,
        }
    }

    fn post(&self, body: &Value) -> Response {
        request(
            self.addr,
            &Request::post(&self.endpoint)
                .header("Accept", ACCEPT_BOTH)
                .json(body),
        )
    }

    /// POSTs a request and reads its answer from the SSE stream.
    fn call(&mut self, id: Value, method: &str, params: Value) -> Value {
        let response = self.post(&rpc_request(id.clone(), method, params));
        assert_eq!(response.status, 202, "{response}");
        assert_eq!(response.text(), "Accepted", "{response}");
        let (event, reply) = self.sse.next_message();
        assert_eq!(event.event.as_deref(), Some("message"), "{event:?}");
        assert_eq!(reply["id"], id, "{reply}");
        reply
    }

    fn handshake(&mut self) -> Value {
        let init = initialize_body(json!(0), "2024-11-05");
        let reply = self.call(json!(0), "initialize", init["params"].clone());
        let response = self.post(&rpc_notification("notifications/initialized", json!({})));
        assert_eq!(response.status, 202, "{response}");
        reply
    }
}

#[test]
fn get_sse_sends_the_endpoint_event_first() {
    let forkline = serve_http(&[], &[]);
    let a = Legacy::open(http_addr(&forkline));
    let b = Legacy::open(http_addr(&forkline));
    assert_ne!(
        a.endpoint, b.endpoint,
        "two legacy sessions share an endpoint"
    );
}

#[test]
fn a_legacy_post_gets_202_and_its_answer_comes_as_a_message_event() {
    let forkline = serve_http(&[], &[]);
    let mut legacy = Legacy::open(http_addr(&forkline));
    let reply = legacy.handshake();
    assert_eq!(reply["result"]["protocolVersion"], "2024-11-05", "{reply}");
    assert_eq!(
        reply["result"]["serverInfo"]["name"], "forkline-echo-server",
        "{reply}"
    );
    let reply = legacy.call(
        json!(1),
        "tools/call",
        json!({"name": "echo", "arguments": {"text": "over the old transport"}}),
    );
    assert_eq!(
        reply["result"]["content"][0]["text"], "over the old transport",
        "{reply}"
    );
}

#[test]
fn legacy_server_requests_and_their_answers_travel_both_ways() {
    let forkline = serve_http(&[], &fake_server(&["--initialize", "--trace"]));
    let mut legacy = Legacy::open(http_addr(&forkline));
    legacy.handshake();
    let response = legacy.post(&rpc_request(json!("ask"), "fake/ask-roots", json!({})));
    assert_eq!(response.status, 202, "{response}");
    let (event, question) = legacy.sse.next_message();
    assert_eq!(event.event.as_deref(), Some("message"), "{event:?}");
    assert_eq!(question["method"], "roots/list", "{question}");
    let roots = json!([{"uri": "file:///legacy"}]);
    let answer = json!({"jsonrpc": "2.0", "id": question["id"], "result": {"roots": roots}});
    assert_eq!(legacy.post(&answer).status, 202);
    let (_, reply) = legacy.sse.next_message();
    assert_eq!(reply["id"], "ask", "{reply}");
    assert_eq!(reply["result"]["roots"], roots, "{reply}");
}

#[test]
fn closing_the_legacy_sse_connection_ends_the_session_and_its_child() {
    let forkline = serve_http(&[], &fake_server(&["--initialize"]));
    let mut guard = StrayGuard::new();
    let mut legacy = Legacy::open(http_addr(&forkline));
    legacy.handshake();
    let env = legacy.call(json!("env"), "fake/env", json!({}));
    let pid = env["result"]["pid"].as_u64().expect("fake/env pid") as u32;
    guard.watch(pid);

    let Legacy {
        addr,
        sse,
        endpoint,
        ..
    } = legacy;
    drop(sse);
    assert_all_gone(&[pid], "the child of a closed legacy session");
    let mut last = None;
    let gone = poll_until(PATIENCE, || {
        let r = request(
            addr,
            &Request::post(&endpoint).json(&rpc_request(json!(1), "ping", json!({}))),
        );
        let done = r.status == 404;
        last = Some(r);
        done
    });
    assert!(gone, "the endpoint still answers: {}", last.unwrap());
    assert_no_zombies(forkline.pid());
}

#[test]
fn a_legacy_post_without_or_with_an_unknown_session_id_is_refused() {
    let forkline = serve_http(&[], &[]);
    let addr = http_addr(&forkline);
    // A live legacy session, so "unknown" is not just "none exist".
    let _live = Legacy::open(addr);
    let body = rpc_request(json!(1), "ping", json!({}));
    for target in ["/messages", "/messages?other=1"] {
        let response = request(addr, &Request::post(target).json(&body));
        assert_eq!(response.status, 400, "POST {target}: {response}");
    }
    let target = format!("/messages?sessionId={UNKNOWN_SESSION}");
    let response = request(addr, &Request::post(&target).json(&body));
    assert_eq!(response.status, 404, "POST {target}: {response}");
}
