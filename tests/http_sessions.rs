//! `serve --http`: the life of a Streamable HTTP session on `/mcp`
//! (HTTP-CONTRACT.md "POST /mcp", "DELETE /mcp", "Session end"):
//! `initialize` answered as JSON or as SSE, notifications, requests,
//! batches and keep-alive, then every way a session ends (DELETE, child
//! death, idle timeout, SIGTERM) and the limits that refuse one.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::http::*;
use common::*;
use serde_json::{Value, json};

fn assert_echo_tool_reply(reply: &Value, id: Value, text: &str) {
    assert_eq!(reply["jsonrpc"], "2.0", "{reply}");
    assert_eq!(reply["id"], id, "{reply}");
    assert_eq!(reply["result"]["content"][0]["type"], "text", "{reply}");
    assert_eq!(reply["result"]["content"][0]["text"], text, "{reply}");
}

fn echo_call(id: Value, text: &str) -> Value {
    rpc_request(
        id,
        "tools/call",
        json!({"name": "echo", "arguments": {"text": text}}),
    )
}

fn assert_initialize_result(reply: &Value, id: Value, version: &str) {
    assert_eq!(reply["jsonrpc"], "2.0", "{reply}");
    assert_eq!(reply["id"], id, "{reply}");
    let result = &reply["result"];
    assert_eq!(result["protocolVersion"], version, "{reply}");
    assert!(result["capabilities"]["tools"].is_object(), "{reply}");
    assert_eq!(
        result["serverInfo"]["name"], "forkline-echo-server",
        "{reply}"
    );
    assert!(result["serverInfo"]["version"].is_string(), "{reply}");
}

// ---- initialize ------------------------------------------------------------------

#[test]
fn initialize_answers_json_with_a_fresh_session_id() {
    let forkline = serve_http(&[], &[]);
    let addr = http_addr(&forkline);
    let mut ids = BTreeSet::new();
    for n in 0..3 {
        let response = request(
            addr,
            &mcp_post_json(&initialize_body(json!(n), "2025-06-18")),
        );
        response.assert_status(200);
        assert_eq!(
            response.media_type().as_deref(),
            Some("application/json"),
            "{response}"
        );
        let id = response
            .header("Mcp-Session-Id")
            .unwrap_or_else(|| panic!("no Mcp-Session-Id: {response}"));
        assert!(
            is_session_id(id),
            "session id {id:?} is not NODE.<32 lowercase hex characters>"
        );
        assert!(
            ids.insert(id.to_string()),
            "session id {id} handed out twice"
        );
        assert_initialize_result(&response.json(), json!(n), "2025-06-18");
    }
}

#[test]
fn initialize_answers_sse_when_accept_allows_it() {
    let forkline = serve_http(&[], &[]);
    let addr = http_addr(&forkline);
    let stream = HttpConn::connect(addr).open(&mcp_post(&initialize_body(json!(1), "2025-06-18")));
    let mut stream = stream;
    stream.assert_sse_head();
    let id = stream
        .head
        .header("Mcp-Session-Id")
        .unwrap_or_else(|| panic!("no Mcp-Session-Id on the SSE answer: {}", stream.head))
        .to_string();
    assert!(is_session_id(&id), "session id {id:?}");
    let first = stream.next_event();
    assert!(
        !first.is_priming(),
        "a priming event for a 2025-06-18 client: {first:?}"
    );
    let reply = first
        .json()
        .unwrap_or_else(|| panic!("first event has no message: {first:?}"));
    assert_event_id(&first);
    assert_initialize_result(&reply, json!(1), "2025-06-18");
    let rest = stream.expect_end(PATIENCE);
    assert!(
        rest.iter().all(|e| e.data.is_none()),
        "events after the response: {rest:?}"
    );
}

#[test]
fn a_2025_11_25_client_gets_a_priming_event_first() {
    let forkline = serve_http(&[], &[]);
    let addr = http_addr(&forkline);
    // A real client sends no MCP-Protocol-Version header on initialize:
    // its version is the one in the body.
    let mut stream =
        HttpConn::connect(addr).open(&mcp_post(&initialize_body(json!(1), "2025-11-25")));
    stream.assert_sse_head();
    let session_id = stream
        .head
        .header("Mcp-Session-Id")
        .expect("session id")
        .to_string();
    let priming = stream.next_event();
    assert!(
        priming.is_priming(),
        "first event is not a priming event: {priming:?}"
    );
    assert_event_id(&priming);
    let (event, reply) = stream.next_message();
    assert_event_id(&event);
    assert_ne!(
        event.id, priming.id,
        "the response reuses the priming event's id"
    );
    assert_initialize_result(&reply, json!(1), "2025-11-25");
    stream.expect_end(PATIENCE);

    // Later requests of the session carry the version header.
    let session = McpSession {
        addr,
        path: "/mcp".into(),
        id: session_id,
        version: "2025-11-25".into(),
        extra: vec![],
        init: reply,
    };
    session
        .post(&rpc_notification("notifications/initialized", json!({})))
        .assert_status(202);
    let mut stream = HttpConn::connect(addr).open(&session.post_req(&echo_call(json!(2), "hi")));
    stream.assert_sse_head();
    let priming = stream.next_event();
    assert!(
        priming.is_priming(),
        "first event is not a priming event: {priming:?}"
    );
    let (_, reply) = stream.next_message();
    assert_echo_tool_reply(&reply, json!(2), "hi");
    stream.expect_end(PATIENCE);
}

#[test]
fn a_chunked_request_body_is_accepted() {
    let forkline = serve_http(&[], &[]);
    let req = mcp_post_json(&initialize_body(json!(1), "2025-06-18")).chunked(7);
    let response = request(http_addr(&forkline), &req);
    response.assert_status(200);
    assert!(response.header("Mcp-Session-Id").is_some(), "{response}");
    assert_initialize_result(&response.json(), json!(1), "2025-06-18");
}

// ---- requests in a session ------------------------------------------------------------

#[test]
fn notifications_and_responses_get_202_with_an_empty_body() {
    let forkline = serve_http(&[], &fake_server(&["--initialize", "--trace"]));
    let session = McpSession::open(http_addr(&forkline));
    for body in [
        rpc_notification("notifications/initialized", json!({})),
        rpc_notification("notifications/roots/list_changed", json!({})),
        json!({"jsonrpc": "2.0", "id": "srv-none", "result": {}}),
        json!({"jsonrpc": "2.0", "id": "srv-none-2", "error": {"code": -1, "message": "no"}}),
    ] {
        for response in [session.post(&body), session.post_json(&body)] {
            assert_eq!(response.status, 202, "{body}: {response}");
            assert!(
                response.body.is_empty(),
                "{body}: 202 with a body: {response}"
            );
        }
    }
    forkline.wait_for_log("fake: received notification notifications/roots/list_changed");
    forkline.wait_for_log("fake: received response id=\"srv-none-2\"");
}

#[test]
fn tools_call_reaches_the_echo_tool_as_json_and_as_sse() {
    let forkline = serve_http(&[], &[]);
    let session = McpSession::open(http_addr(&forkline));
    let tools = session.call(json!(1), "tools/list", json!({}));
    assert_eq!(tools["result"]["tools"][0]["name"], "echo", "{tools}");

    let text = "héllo ☃ \"quoted\"\nnew line";
    let reply = session.call(
        json!(2),
        "tools/call",
        json!({"name": "echo", "arguments": {"text": text}}),
    );
    assert_echo_tool_reply(&reply, json!(2), text);

    let response = session.post(&echo_call(json!("three"), text));
    assert_sse_head(&response);
    let messages: Vec<Value> = response
        .sse_events()
        .iter()
        .filter_map(SseEvent::json)
        .collect();
    assert_eq!(
        messages.len(),
        1,
        "one message on the request's stream: {response}"
    );
    assert_echo_tool_reply(&messages[0], json!("three"), text);
}

#[test]
fn a_batch_gets_every_answer() {
    let forkline = serve_http(&[], &[]);
    // Batches are a 2025-03-26 feature.
    let session = McpSession::open_with(http_addr(&forkline), "2025-03-26", &[]);
    let batch = json!([
        echo_call(json!(1), "one"),
        rpc_notification("notifications/roots/list_changed", json!({})),
        rpc_request(json!(2), "tools/list", json!({})),
    ]);

    let response = session.post_json(&batch);
    response.assert_status(200);
    assert_eq!(response.media_type().as_deref(), Some("application/json"));
    let answers = response.json();
    let answers = answers.as_array().unwrap_or_else(|| {
        panic!("a batch answered with something other than an array: {response}")
    });
    assert_eq!(answers.len(), 2, "one answer per request: {response}");
    let by_id = |id: Value| {
        answers
            .iter()
            .find(|a| a["id"] == id)
            .unwrap_or_else(|| panic!("no answer with id {id}: {response}"))
    };
    assert_echo_tool_reply(by_id(json!(1)), json!(1), "one");
    assert_eq!(by_id(json!(2))["result"]["tools"][0]["name"], "echo");

    let response = session.post(&json!([
        rpc_request(json!(3), "ping", json!({})),
        echo_call(json!(4), "four"),
    ]));
    assert_sse_head(&response);
    let mut ids: Vec<Value> = response
        .sse_events()
        .iter()
        .filter_map(SseEvent::json)
        .map(|m| m["id"].clone())
        .collect();
    ids.sort_by_key(|v| v.as_i64());
    assert_eq!(ids, vec![json!(3), json!(4)], "{response}");

    let response = session.post(&json!([
        rpc_notification("notifications/initialized", json!({})),
        rpc_notification("notifications/roots/list_changed", json!({})),
    ]));
    assert_eq!(response.status, 202, "a batch of notifications: {response}");
}

#[test]
fn several_requests_share_one_keep_alive_connection() {
    let forkline = serve_http(&[], &[]);
    let addr = http_addr(&forkline);
    let mut conn = HttpConn::connect(addr);
    let response = conn.request(&mcp_post_json(&initialize_body(json!(0), "2025-06-18")));
    response.assert_status(200);
    let session = McpSession {
        addr,
        path: "/mcp".into(),
        id: response
            .header("Mcp-Session-Id")
            .expect("session id")
            .to_string(),
        version: "2025-06-18".into(),
        extra: vec![],
        init: response.json(),
    };
    let check_alive = |r: &Response| {
        assert!(
            !r.header_items("Connection").iter().any(|c| c == "close"),
            "forkline asked to close a keep-alive connection: {r}"
        );
    };
    check_alive(&response);
    let r =
        conn.request(&session.post_req(&rpc_notification("notifications/initialized", json!({}))));
    assert_eq!(r.status, 202, "{r}");
    check_alive(&r);
    for n in 1..=3 {
        let r = conn.request(&session.post_json_req(&echo_call(json!(n), &format!("json {n}"))));
        r.assert_status(200);
        assert_echo_tool_reply(&r.json(), json!(n), &format!("json {n}"));
        check_alive(&r);
    }
    // An SSE answer, read incrementally, then the same connection again.
    let mut stream = conn.open(&session.post_req(&echo_call(json!(10), "sse")));
    stream.assert_sse_head();
    let (_, reply) = stream.next_message();
    assert_echo_tool_reply(&reply, json!(10), "sse");
    stream.expect_end(PATIENCE);
    let mut conn = stream.into_conn();
    let r = conn.request(&session.post_json_req(&rpc_request(json!(11), "ping", json!({}))));
    r.assert_status(200);
    let r = conn.request(&session.with_headers(Request::delete("/mcp")));
    assert_eq!(r.status, 200, "{r}");
    let r = conn.request(&session.post_json_req(&rpc_request(json!(12), "ping", json!({}))));
    assert_eq!(r.status, 404, "{r}");
}

#[test]
fn each_session_has_its_own_child() {
    let forkline = serve_http(&[], &fake_server(&["--initialize"]));
    let mut guard = StrayGuard::new();
    let addr = http_addr(&forkline);
    let a = McpSession::open(addr);
    let b = McpSession::open(addr);
    assert_ne!(a.id, b.id);
    let (pa, pb) = (a.child_pid(), b.child_pid());
    guard.watch(pa);
    guard.watch(pb);
    assert_ne!(pa, pb, "two sessions share one child");
    assert_eq!(a.child_pid(), pa, "a session changed child");
}

// ---- DELETE ----------------------------------------------------------------------

#[test]
fn delete_ends_the_session_its_streams_and_its_child() {
    let forkline = serve_http(&[], &fake_server(&["--initialize"]));
    let mut guard = StrayGuard::new();
    let session = McpSession::open(http_addr(&forkline));
    let pid = session.child_pid();
    guard.watch(pid);
    let mut get = session.open_get();

    let response = session.delete();
    assert_eq!(response.status, 200, "{response}");
    assert!(
        response.body.is_empty(),
        "DELETE answered with a body: {response}"
    );
    get.expect_end(PATIENCE);
    assert_all_gone(&[pid], "the deleted session's child");
    assert_no_zombies(forkline.pid());

    let response = session.post_json(&rpc_request(json!(1), "ping", json!({})));
    assert_eq!(response.status, 404, "POST after DELETE: {response}");
    let stream = HttpConn::connect(session.addr).open(&session.get_req());
    assert_eq!(stream.head.status, 404, "GET after DELETE: {}", stream.head);
    let response = session.delete();
    assert_eq!(response.status, 404, "a second DELETE: {response}");
}

// ---- the child dies --------------------------------------------------------------

#[test]
fn pending_posts_get_32002_at_once_when_the_child_dies() {
    let forkline = serve_http(&[], &fake_server(&["--initialize", "--trace"]));
    let mut guard = StrayGuard::new();
    let session = McpSession::open(http_addr(&forkline));
    let pid = session.child_pid();
    guard.watch(pid);
    let mut get = session.open_get();

    let mut json_conn = HttpConn::connect(session.addr);
    json_conn.send(&session.post_json_req(&rpc_request(
        json!("held-json"),
        "fake/hold",
        json!({}),
    )));
    forkline.wait_for_log("fake: received fake/hold id=\"held-json\"");
    let mut sse = HttpConn::connect(session.addr).open(&session.post_req(&rpc_request(
        json!("held-sse"),
        "fake/hold",
        json!({}),
    )));
    sse.assert_sse_head();
    forkline.wait_for_log("fake: received fake/hold id=\"held-sse\"");

    let killed = Instant::now();
    // SAFETY: kill(2) on the fixture child this test just asked for.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);

    let response = json_conn.read_response();
    let waited = killed.elapsed();
    response.assert_status(200);
    assert_error(&response.json(), -32002, &json!("held-json"));
    assert!(
        waited < Duration::from_secs(5),
        "the -32002 took {waited:?}"
    );

    let (_, reply) = sse.next_message();
    assert_error(&reply, -32002, &json!("held-sse"));
    sse.expect_end(PATIENCE);
    get.expect_end(PATIENCE);

    let response = session.post_json(&rpc_request(json!(1), "ping", json!({})));
    assert_eq!(
        response.status, 404,
        "the session of a dead child: {response}"
    );
    assert_no_zombies(forkline.pid());
}

#[test]
fn a_child_that_exits_by_itself_ends_its_session() {
    let forkline = serve_http(&[], &fake_server(&["--initialize"]));
    let mut guard = StrayGuard::new();
    let session = McpSession::open(http_addr(&forkline));
    let pid = session.child_pid();
    guard.watch(pid);
    let response = session.post_json(&rpc_request(json!("bye"), "fake/exit", json!({"code": 3})));
    response.assert_status(200);
    let message = assert_error(&response.json(), -32002, &json!("bye"));
    assert!(
        mentions_exit_status(&message, 3),
        "no exit status 3 in {message:?}"
    );
    assert_all_gone(&[pid], "the exited child");
    session.wait_gone();
}

// ---- idle timeout ------------------------------------------------------------------

#[test]
fn the_idle_timeout_ends_a_session() {
    let forkline = serve_http(&["--idle-timeout", "1"], &fake_server(&["--initialize"]));
    let mut guard = StrayGuard::new();
    let session = McpSession::open(http_addr(&forkline));
    let pid = session.child_pid();
    guard.watch(pid);
    let idle_since = Instant::now();
    // Poll the child, not the session: a request would be activity.
    assert_all_gone(&[pid], "the idle session's child");
    assert!(
        idle_since.elapsed() >= Duration::from_millis(900),
        "ended after {:?}, before the 1 s idle timeout",
        idle_since.elapsed()
    );
    let response = session.post_json(&rpc_request(json!(1), "ping", json!({})));
    assert_eq!(response.status, 404, "an idle-ended session: {response}");
    forkline.wait_for_log("reason=idle_timeout");
}

// ---- limits -------------------------------------------------------------------------

fn assert_503(response: &Response, what: &str) {
    assert_eq!(response.status, 503, "{what}: {response}");
    let retry = response
        .header("Retry-After")
        .unwrap_or_else(|| panic!("{what}: 503 without Retry-After: {response}"));
    assert!(
        retry.trim().parse::<u64>().is_ok(),
        "{what}: Retry-After {retry:?} is not a number of seconds"
    );
    assert!(
        response.header("Mcp-Session-Id").is_none(),
        "{what}: {response}"
    );
    let message = assert_error_body(response, -32001);
    assert!(!message.is_empty(), "{what}: empty -32001 message");
}

#[test]
fn max_sessions_refuses_the_next_with_503_retry_after_and_32001() {
    let forkline = serve_http(&["--max-sessions", "1"], &[]);
    let addr = http_addr(&forkline);
    let first = McpSession::open(addr);
    let init = mcp_post_json(&initialize_body(json!(1), "2025-06-18"));
    assert_503(&request(addr, &init), "a second initialize");
    let legacy = HttpConn::connect(addr)
        .open(&Request::get("/sse").header("Accept", ACCEPT_SSE))
        .into_response();
    assert_503(&legacy, "GET /sse");

    // The first session is unharmed, and its end frees the slot.
    assert_eq!(first.call(json!(2), "ping", json!({}))["id"], json!(2));
    first.delete().assert_status(200);
    let mut last = None;
    let admitted = poll_until(PATIENCE, || {
        let r = request(addr, &init);
        let ok = r.status == 200;
        last = Some(r);
        ok
    });
    assert!(
        admitted,
        "no session admitted after DELETE freed the slot: {}",
        last.unwrap()
    );
}

#[test]
fn max_sessions_per_client_counts_each_client_address() {
    let forkline = serve_http(&["--max-sessions-per-client", "1"], &[]);
    let addr = http_addr(&forkline);
    let init = mcp_post_json(&initialize_body(json!(1), "2025-06-18"));
    let from = |ip: [u8; 4]| {
        let stream = tcp_connect_from(ip.into(), addr).expect("connect from a loopback address");
        HttpConn::from_stream(stream).request(&init)
    };
    from([127, 0, 0, 1]).assert_status(200);
    assert_503(&from([127, 0, 0, 1]), "a second session from 127.0.0.1");
    from([127, 0, 0, 2]).assert_status(200);
    assert_503(&from([127, 0, 0, 2]), "a second session from 127.0.0.2");
}

// ---- SIGTERM -----------------------------------------------------------------------

#[test]
fn sigterm_answers_pending_posts_with_32004_within_the_grace_and_exits_0() {
    let mut forkline = serve_http(
        &["--shutdown-grace", "2"],
        &fake_server(&["--initialize", "--trace"]),
    );
    let mut guard = StrayGuard::new();
    let session = McpSession::open(http_addr(&forkline));
    let pid = session.child_pid();
    guard.watch(pid);

    let mut json_conn = HttpConn::connect(session.addr);
    json_conn.send(&session.post_json_req(&rpc_request(
        json!("held-json"),
        "fake/hold",
        json!({}),
    )));
    forkline.wait_for_log("fake: received fake/hold id=\"held-json\"");
    let mut sse = HttpConn::connect(session.addr).open(&session.post_req(&rpc_request(
        json!("held-sse"),
        "fake/hold",
        json!({}),
    )));
    sse.assert_sse_head();
    forkline.wait_for_log("fake: received fake/hold id=\"held-sse\"");

    let signalled = Instant::now();
    forkline.signal(libc::SIGTERM);
    let response = json_conn.read_response();
    let waited = signalled.elapsed();
    response.assert_status(200);
    assert_error(&response.json(), -32004, &json!("held-json"));
    assert!(
        waited < Duration::from_secs(2 + 3),
        "the -32004 came {waited:?} after SIGTERM with a 2 s grace"
    );
    let (_, reply) = sse.next_message();
    assert_error(&reply, -32004, &json!("held-sse"));
    sse.expect_end(PATIENCE);

    let status = forkline.wait_exit(PATIENCE);
    assert_eq!(
        status.code(),
        Some(0),
        "exit status; log:\n{}",
        forkline.stderr_text()
    );
    assert_all_gone(&[pid], "the child after shutdown");
}

#[test]
fn during_the_shutdown_grace_a_new_session_gets_503() {
    let forkline = serve_http(
        &["--shutdown-grace", "10"],
        &fake_server(&["--initialize", "--trace"]),
    );
    let mut guard = StrayGuard::new();
    let session = McpSession::open(http_addr(&forkline));
    guard.watch(session.child_pid());
    // A held request keeps the grace going; a connection opened before the
    // signal is where the new client knocks.
    let mut held = HttpConn::connect(session.addr);
    held.send(&session.post_json_req(&rpc_request(json!("held"), "fake/hold", json!({}))));
    forkline.wait_for_log("fake: received fake/hold id=\"held\"");
    let mut conn = HttpConn::connect(session.addr);
    conn.request(&session.post_json_req(&rpc_request(json!(1), "ping", json!({}))))
        .assert_status(200);

    forkline.signal(libc::SIGTERM);
    forkline.wait_for_log("SIGTERM: shutting down");
    let response = conn.request(&mcp_post_json(&initialize_body(json!(2), "2025-06-18")));
    assert_503(&response, "initialize during the shutdown grace");
}

#[test]
fn a_session_whose_child_stops_reading_refuses_more_with_503_not_memory() {
    let forkline = serve_http(&[], &fake_server(&["--initialize"]));
    let session = McpSession::open(http_addr(&forkline));
    // A child that reads no more never sees end of input when forkline is
    // killed at the end of the test: it is ended by its pid.
    let mut guard = StrayGuard::new();
    guard.watch(session.child_pid());
    let reply = session.call(json!(1), "fake/stop-reading", json!({}));
    assert_eq!(reply["id"], 1, "{reply}");
    // The child reads nothing more: its socket, the worker's 32 KiB and
    // the session's inbox of 128 messages fill, then POSTs are refused.
    let pad = "x".repeat(4096);
    let mut refused = None;
    for i in 0..2000 {
        let note = rpc_notification("notifications/pad", json!({"i": i, "pad": pad}));
        let response = session.post_json(&note);
        if response.status == 503 {
            refused = Some((i, response));
            break;
        }
        response.assert_status(202);
    }
    let (i, response) = refused.expect("a full session refuses POSTs");
    assert!(response.header("Retry-After").is_some(), "{response}");
    assert_error_body(&response, -32001);
    assert!(i > 128, "refused only past the inbox: after {i}");
}
