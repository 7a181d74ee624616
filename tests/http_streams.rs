//! `serve --http`: the session's GET stream and where each message the
//! child sends goes (HTTP-CONTRACT.md "GET /mcp" and "POST /mcp"): one GET
//! stream at a time (409), server requests and notifications on it and
//! buffered while none is open, the client's answers back to the child,
//! progress on the request's own stream, every message on exactly one
//! stream, and `Last-Event-ID` resumption.
//!
//! The child is the fixture with `--initialize --trace`: `fake/emit` makes
//! it send whatever messages a test needs before it answers, and
//! `fake/ask-roots` makes it wait for the client's answer to its
//! `roots/list`.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::http::*;
use common::*;
use serde_json::{Value, json};

fn serve() -> Forkline {
    serve_http(&[], &fake_server(&["--initialize", "--trace"]))
}

fn log_message(text: &str) -> Value {
    rpc_notification(
        "notifications/message",
        json!({"level": "info", "logger": "fake", "data": text}),
    )
}

fn is_log(msg: &Value, text: &str) -> bool {
    msg["method"] == "notifications/message" && msg["params"]["data"] == text
}

/// Makes the child send `messages`, then answer; waits for the answer
/// as JSON (so none of `messages` can travel with it).
fn emit(session: &McpSession, id: &str, messages: Vec<Value>) {
    let reply = session.call(json!(id), "fake/emit", json!({"messages": messages}));
    assert_eq!(reply["id"], json!(id), "{reply}");
    assert_eq!(reply["result"]["method"], "fake/emit", "{reply}");
}

/// Sends a marker notification through the child and reads `stream`
/// up to it; returns the messages before it.
fn drain_to_marker(session: &McpSession, stream: &mut SseStream, marker: &str) -> Vec<Value> {
    emit(
        session,
        &format!("emit-{marker}"),
        vec![log_message(marker)],
    );
    let mut before = stream.messages_until(|m| is_log(m, marker));
    before.pop();
    before
}

// ---- the GET stream ----------------------------------------------------------

#[test]
fn get_opens_the_stream_and_a_second_concurrent_get_gets_409() {
    let forkline = serve();
    let session = McpSession::open(http_addr(&forkline));
    let first = session.open_get();
    let second = HttpConn::connect(session.addr).open(&session.get_req());
    assert_eq!(
        second.head.status, 409,
        "a second GET stream: {}",
        second.head
    );
    // The first stream still works.
    let mut first = first;
    emit(&session, "e1", vec![log_message("still the first")]);
    let (event, msg) = first.next_message();
    assert!(is_log(&msg, "still the first"), "{msg}");
    assert_event_id(&event);

    // Once it is gone, a new GET stream may open.
    abort_on_close(first.conn().stream());
    drop(first);
    let mut again = session.reopen_get(&session.get_req());
    emit(&session, "e2", vec![log_message("to the new stream")]);
    let (_, msg) = again.next_message();
    assert!(is_log(&msg, "to the new stream"), "{msg}");
}

#[test]
fn an_idle_get_stream_gets_keep_alive_comments() {
    let forkline = serve();
    let session = McpSession::open(http_addr(&forkline));
    let mut get = session.open_get();
    // Every 15 s by the contract; wait up to 25 s for the first.
    match get.next_within(Duration::from_secs(25)) {
        SseNext::Event(e) => {
            assert!(e.data.is_none() && e.id.is_none(), "not a comment: {e:?}");
            assert!(!e.comments.is_empty(), "an empty event: {e:?}");
        }
        other => panic!("no keep-alive comment within 25 s: {other:?}"),
    }
    // The stream is still live after it.
    emit(&session, "after", vec![log_message("after the keep-alive")]);
    let (_, msg) = get.next_message();
    assert!(is_log(&msg, "after the keep-alive"), "{msg}");
}

#[test]
fn server_notifications_and_requests_reach_the_get_stream() {
    let forkline = serve();
    let session = McpSession::open(http_addr(&forkline));
    let mut get = session.open_get();
    let ask = json!({"jsonrpc": "2.0", "id": "srv-live", "method": "roots/list"});
    emit(&session, "e1", vec![log_message("hello"), ask.clone()]);
    let (first_event, first) = get.next_message();
    assert!(is_log(&first, "hello"), "{first}");
    let (second_event, second) = get.next_message();
    assert_eq!(second, ask, "the server's request, unchanged");
    let ids = [
        assert_event_id(&first_event),
        assert_event_id(&second_event),
    ];
    assert_ne!(ids[0], ids[1], "two events with one id");
}

#[test]
fn server_messages_sent_while_no_get_stream_is_open_are_delivered_when_one_opens() {
    let forkline = serve();
    let session = McpSession::open(http_addr(&forkline));
    let ask = json!({"jsonrpc": "2.0", "id": "srv-buffered", "method": "roots/list"});
    // The child writes these before its answer, so forkline has read them
    // by the time the answer arrives.
    emit(&session, "e1", vec![ask.clone(), log_message("buffered")]);

    let mut get = session.open_get();
    let (_, first) = get.next_message();
    assert_eq!(first, ask, "the buffered server request");
    let (_, second) = get.next_message();
    assert!(is_log(&second, "buffered"), "{second}");

    // The client's answer to it reaches the child.
    let answer = json!({"jsonrpc": "2.0", "id": "srv-buffered", "result": {"roots": []}});
    let response = session.post(&answer);
    assert_eq!(response.status, 202, "{response}");
    forkline.wait_for_log("fake: received response id=\"srv-buffered\"");
}

#[test]
fn the_clients_answer_to_a_server_request_reaches_the_child() {
    let forkline = serve();
    let session = McpSession::open(http_addr(&forkline));
    let mut get = session.open_get();
    let mut pending = HttpConn::connect(session.addr);
    pending.send(&session.post_json_req(&rpc_request(json!("ask"), "fake/ask-roots", json!({}))));

    let (_, question) = get.next_message();
    assert_eq!(question["method"], "roots/list", "{question}");
    assert_eq!(question["id"], "srv-1", "{question}");
    let roots = json!([{"uri": "file:///work", "name": "work"}]);
    let response =
        session.post(&json!({"jsonrpc": "2.0", "id": "srv-1", "result": {"roots": roots}}));
    assert_eq!(response.status, 202, "{response}");
    assert!(response.body.is_empty(), "{response}");

    let response = pending.read_response();
    response.assert_status(200);
    let reply = response.json();
    assert_eq!(reply["id"], "ask", "{reply}");
    assert_eq!(
        reply["result"]["roots"], roots,
        "the child did not get the roots: {reply}"
    );
}

// ---- which stream a message goes on --------------------------------------------

#[test]
fn progress_goes_on_the_requests_stream_and_other_messages_on_the_get_stream() {
    let forkline = serve();
    let session = McpSession::open(http_addr(&forkline));
    let mut get = session.open_get();
    let mut all_ids = HashSet::new();

    for token in [json!("tok-7"), json!(42)] {
        let progress = |n: u64| {
            rpc_notification(
                "notifications/progress",
                json!({"progressToken": token, "progress": n, "total": 2}),
            )
        };
        let body = rpc_request(
            json!(format!("work-{token}")),
            "fake/emit",
            json!({
                "_meta": {"progressToken": token},
                "messages": [progress(1), log_message(&format!("aside {token}")), progress(2)],
            }),
        );
        let mut post = HttpConn::connect(session.addr).open(&session.post_req(&body));
        post.assert_sse_head();
        let (e1, m1) = post.next_message();
        let (e2, m2) = post.next_message();
        let (e3, m3) = post.next_message();
        post.expect_end(PATIENCE);
        assert_eq!(m1, progress(1), "first on the request's stream");
        assert_eq!(
            m2,
            progress(2),
            "second on the request's stream (not the aside)"
        );
        assert_eq!(
            m3["id"],
            json!(format!("work-{token}")),
            "then the response: {m3}"
        );
        for e in [&e1, &e2, &e3] {
            assert!(all_ids.insert(assert_event_id(e)), "event id reused: {e:?}");
        }

        let (e, aside) = get.next_message();
        assert!(
            is_log(&aside, &format!("aside {token}")),
            "the GET stream got {aside}"
        );
        assert!(
            all_ids.insert(assert_event_id(&e)),
            "event id reused: {e:?}"
        );
        let before = drain_to_marker(&session, &mut get, &format!("marker {token}"));
        assert!(
            before.is_empty(),
            "the GET stream got more than the aside: {before:?}"
        );
    }
}

#[test]
fn a_server_request_during_a_post_goes_on_exactly_one_stream() {
    let forkline = serve();
    let session = McpSession::open(http_addr(&forkline));
    let mut get = session.open_get();
    let mut post = HttpConn::connect(session.addr).open(&session.post_req(&rpc_request(
        json!("ask"),
        "fake/ask-roots",
        json!({}),
    )));
    post.assert_sse_head();

    // The roots/list may go on either stream (the contract puts it on
    // the GET stream); watch both until it shows up.
    let mut question = None;
    let found = poll_until(PATIENCE, || {
        for stream in [&mut get, &mut post] {
            if let SseNext::Event(e) = stream.next_within(Duration::from_millis(20)) {
                if let Some(msg) = e.json() {
                    assert_eq!(
                        msg["method"], "roots/list",
                        "unexpected message first: {msg}"
                    );
                    question = Some(msg);
                    return true;
                }
            }
        }
        false
    });
    assert!(found, "no roots/list on either stream");
    let question = question.unwrap();
    let roots = json!([{"uri": "file:///a"}]);
    let answer = json!({"jsonrpc": "2.0", "id": question["id"], "result": {"roots": roots}});
    assert_eq!(session.post(&answer).status, 202);

    let (_, reply) = post.next_message();
    assert_eq!(reply["id"], "ask", "{reply}");
    assert_eq!(reply["result"]["roots"], roots, "{reply}");
    post.expect_end(PATIENCE);
    drain_to_marker(&session, &mut get, "after the ask");

    let count = |s: &SseStream| {
        s.seen
            .iter()
            .filter_map(SseEvent::json)
            .filter(|m| m["method"] == "roots/list")
            .count()
    };
    assert_eq!(
        count(&get) + count(&post),
        1,
        "roots/list delivered {} times on GET and {} on the POST",
        count(&get),
        count(&post)
    );
}

// ---- Last-Event-ID ------------------------------------------------------------------

#[test]
fn last_event_id_resumes_a_dropped_get_stream() {
    let forkline = serve();
    let session = McpSession::open(http_addr(&forkline));
    let mut get = session.open_get();
    emit(&session, "a", vec![log_message("A")]);
    let (event_a, msg) = get.next_message();
    assert!(is_log(&msg, "A"), "{msg}");
    let id_a = assert_event_id(&event_a);

    // The stream drops (reset, as a network failure would), then more is sent.
    abort_on_close(get.conn().stream());
    drop(get);
    emit(&session, "b", vec![log_message("B"), log_message("C")]);

    let resume = session.get_req().header("Last-Event-ID", &id_a);
    let mut resumed = session.reopen_get(&resume);
    let (_, b) = resumed.next_message();
    assert!(
        is_log(&b, "B"),
        "first after resuming: {b} (A again, or B lost?)"
    );
    let (_, c) = resumed.next_message();
    assert!(is_log(&c, "C"), "second after resuming: {c}");
    // And it goes on live.
    let before = drain_to_marker(&session, &mut resumed, "D");
    assert!(before.is_empty(), "replayed twice? {before:?}");
}

#[test]
fn last_event_id_of_a_post_stream_replays_the_rest_of_it() {
    let forkline = serve();
    let session = McpSession::open(http_addr(&forkline));
    let token = json!("tok-resume");
    let progress = rpc_notification(
        "notifications/progress",
        json!({"progressToken": token, "progress": 1}),
    );
    // The request is held after its progress, so the stream is cut
    // between the two: a client whose connection failed mid-request.
    let body = rpc_request(
        json!("resumable"),
        "fake/hold",
        json!({"_meta": {"progressToken": token}}),
    );
    let mut post = HttpConn::connect(session.addr).open(&session.post_req(&body));
    post.assert_sse_head();
    forkline.wait_for_log("fake: received fake/hold id=\"resumable\"");
    emit(&session, "progress", vec![progress.clone()]);
    let (event, msg) = post.next_message();
    assert_eq!(msg, progress, "progress on the request's stream");
    let last = assert_event_id(&event);
    abort_on_close(post.conn().stream());
    drop(post);

    assert_eq!(
        session
            .post(&rpc_notification("fake/release", json!({})))
            .status,
        202
    );
    let mut resumed = session.reopen_get(&session.get_req().header("Last-Event-ID", &last));
    let (_, reply) = resumed.next_message();
    assert_eq!(
        reply["id"], "resumable",
        "the held answer, replayed: {reply}"
    );
    assert_eq!(reply["result"]["method"], "fake/hold", "{reply}");
}

#[test]
fn a_last_event_id_no_longer_held_ends_the_stream_after_a_comment() {
    let forkline = serve();
    let session = McpSession::open(http_addr(&forkline));
    let mut get = session.open_get();
    emit(&session, "a", vec![log_message("A")]);
    let (event, _) = get.next_message();
    let id = assert_event_id(&event);
    let (stream, _) = id.rsplit_once('-').unwrap();
    drop(get);

    // A stream that never existed in this session: nothing of it is held.
    let unknown = format!("{stream}x-1");
    let resume = session.get_req().header("Last-Event-ID", &unknown);
    let mut resumed = session.reopen_get(&resume);
    let rest = resumed.expect_end(PATIENCE);
    assert!(
        rest.iter().any(|e| !e.comments.is_empty()),
        "the stream ended without a comment saying why: {rest:?}"
    );
    assert!(
        rest.iter().all(|e| e.json().is_none()),
        "messages on a stream that could not be resumed: {rest:?}"
    );
}

// ---- bounds ------------------------------------------------------------------

#[test]
fn messages_for_a_get_stream_not_open_are_held_up_to_the_bound_and_the_oldest_go() {
    // The bound is 256 events a session (README, `serve --http`).
    let forkline = serve();
    let session = McpSession::open(http_addr(&forkline));
    let sent: Vec<Value> = (0..300).map(|i| log_message(&format!("n{i}"))).collect();
    emit(&session, "flood", sent);
    let mut stream = session.open_get();
    let held = drain_to_marker(&session, &mut stream, "after");
    assert_eq!(held.len(), 256, "what the buffer held");
    assert!(is_log(&held[0], "n44"), "the oldest 44 went: {}", held[0]);
    assert!(is_log(&held[255], "n299"), "{}", held[255]);
}

#[test]
fn connections_past_the_bound_get_503() {
    // --max-sessions 1: the front end holds at most 64 connections.
    let forkline = serve_http(&["--max-sessions", "1"], &[]);
    let addr = http_addr(&forkline);
    let held: Vec<HttpConn> = (0..64).map(|_| HttpConn::connect(addr)).collect();
    // The next one is told why, without sending anything.
    let refused = HttpConn::connect(addr).read_response();
    assert_eq!(refused.status, 503, "{refused}");
    assert!(refused.header("Retry-After").is_some(), "{refused}");
    assert_error_body(&refused, -32001);
    // Those within the bound are served.
    let mut within = held.into_iter().next().expect("a held connection");
    let body = initialize_body(json!(1), "2025-06-18");
    within.request(&mcp_post_json(&body)).assert_status(200);
}
