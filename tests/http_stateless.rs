//! `serve --http`, stateless era (MCP 2026-07-28): POSTs without a session
//! id that name 2026-07-28 are served by one child per principal, their
//! headers checked against the body, their ids rewritten, handshake-era
//! children adapted, and a closed stream cancels its request.

mod common;

use std::net::SocketAddr;

use common::http::*;
use common::*;
use serde_json::{Value, json};

fn call(addr: SocketAddr, body: &Value) -> Value {
    let response = request(addr, &stateless_post(body));
    response.assert_status(200);
    assert_eq!(
        response.media_type().as_deref(),
        Some("application/json"),
        "{response}"
    );
    assert!(
        response.header("Mcp-Session-Id").is_none(),
        "the stateless era has no sessions: {response}"
    );
    response.json()
}

fn fake_env(addr: SocketAddr, token: Option<&str>) -> Value {
    let mut req = stateless_post(&modern(json!("env"), "fake/env", json!({})));
    if let Some(token) = token {
        req = req.header("Authorization", &format!("Bearer {token}"));
    }
    let response = request(addr, &req);
    response.assert_status(200);
    response.json()["result"].clone()
}

#[test]
fn an_unsupported_modern_version_gets_32022_naming_both_eras() {
    let forkline = serve_http(&[], &[]);
    let body = modern(json!(1), "server/discover", json!({}));
    let response = request(
        http_addr(&forkline),
        &stateless_post(&body).set_header("MCP-Protocol-Version", "2027-01-01"),
    );
    response.assert_status(400);
    let error = &response.json()["error"];
    assert_eq!(error["code"], -32022, "{response}");
    let supported = error["data"]["supported"].as_array().expect("supported");
    assert!(supported.contains(&json!(MODERN)), "{response}");
    assert!(supported.contains(&json!("2025-11-25")), "{response}");
    assert_eq!(error["data"]["requested"], "2027-01-01", "{response}");
}

#[test]
fn headers_that_disagree_with_the_body_get_400_with_32020() {
    let forkline = serve_http(&[], &[]);
    let addr = http_addr(&forkline);
    let echo = modern(
        json!(7),
        "tools/call",
        json!({"name": "echo", "arguments": {"text": "x"}}),
    );
    let cases = [
        (
            "no Mcp-Method",
            stateless_post(&echo).without_header("Mcp-Method"),
        ),
        (
            "wrong Mcp-Method",
            stateless_post(&echo).set_header("Mcp-Method", "tools/list"),
        ),
        (
            "no Mcp-Name",
            stateless_post(&echo).without_header("Mcp-Name"),
        ),
        (
            "wrong Mcp-Name",
            stateless_post(&echo).set_header("Mcp-Name", "other"),
        ),
        (
            "bad base64 Mcp-Name",
            stateless_post(&echo).set_header("Mcp-Name", "=?base64?!!?="),
        ),
        ("body version", {
            let mut body = echo.clone();
            body["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"] =
                json!("2099-01-01");
            stateless_post(&body)
        }),
    ];
    for (what, req) in cases {
        let response = request(addr, &req);
        response.assert_status(400);
        let body = response.json();
        assert_eq!(body["error"]["code"], -32020, "{what}: {response}");
        assert_eq!(
            body["id"], 7,
            "{what}: the error carries the id: {response}"
        );
    }
    // The base64 form of the right name passes ("echo").
    let encoded = stateless_post(&echo).set_header("Mcp-Name", "=?base64?ZWNobw==?=");
    let response = request(addr, &encoded);
    response.assert_status(200);
    assert_eq!(
        response.json()["result"]["content"][0]["text"],
        "x",
        "{response}"
    );
}

#[test]
fn a_response_or_a_batch_is_not_a_stateless_post() {
    let forkline = serve_http(&[], &[]);
    let addr = http_addr(&forkline);
    for body in [
        json!({"jsonrpc": "2.0", "id": 1, "result": {}}),
        json!([modern(json!(1), "ping", json!({}))]),
    ] {
        let response = request(
            addr,
            &Request::post("/mcp")
                .header("Accept", ACCEPT_BOTH)
                .header("MCP-Protocol-Version", MODERN)
                .header("Mcp-Method", "ping")
                .json(&body),
        );
        response.assert_status(400);
        assert_error_body(&response, -32600);
    }
}

#[test]
fn an_adapted_child_is_initialized_once_and_discover_is_answered_for_it() {
    let forkline = serve_http(&[], &fake_server(&["--initialize", "--trace"]));
    let addr = http_addr(&forkline);
    let discover = call(addr, &modern(json!("d"), "server/discover", json!({})));
    let result = &discover["result"];
    assert_eq!(discover["id"], "d", "{discover}");
    assert_eq!(result["resultType"], "complete", "{discover}");
    assert_eq!(result["supportedVersions"], json!([MODERN]), "{discover}");
    assert!(result["capabilities"].is_object(), "{discover}");
    assert!(
        result["_meta"]["io.modelcontextprotocol/serverInfo"]["name"].is_string(),
        "{discover}"
    );
    // The child saw forkline's initialize and initialized, and not the probe.
    forkline.wait_for_log("fake: received initialize");
    forkline.wait_for_log("fake: received notification notifications/initialized");
    let reply = call(addr, &modern(json!(2), "ping", json!({})));
    assert_eq!(reply["id"], 2, "{reply}");
    assert_eq!(reply["result"]["resultType"], "complete", "{reply}");
    // forkline's own probe reached the child; the client's discover did not.
    let log = forkline.stderr_text();
    assert_eq!(
        log.matches("fake: received server/discover").count(),
        1,
        "one server/discover, forkline's:\n{log}"
    );
    assert!(
        log.contains(r#"fake: received server/discover id="forkline-discover""#),
        "{log}"
    );
    assert_eq!(
        forkline
            .stderr_text()
            .matches("fake: received initialize")
            .count(),
        1,
        "one initialize per child:\n{}",
        forkline.stderr_text()
    );
}

#[test]
fn a_child_that_answers_neither_probe_gets_requests_as_they_are_but_for_the_id() {
    // Without --initialize the fake answers both server/discover and
    // initialize with an echo, neither a DiscoverResult nor an
    // InitializeResult: forkline passes requests through.
    let forkline = serve_http(&[], &fake_server(&[]));
    let addr = http_addr(&forkline);
    let body = modern(json!(41), "fake/raw", json!({"k": "v"}));
    let reply = call(addr, &body);
    assert_eq!(reply["id"], 41, "the client's id comes back: {reply}");
    let seen: Value = serde_json::from_str(
        reply["result"]["raw"]
            .as_str()
            .expect("the line the child got"),
    )
    .expect("json");
    assert_eq!(seen["params"]["k"], "v", "{seen}");
    assert_eq!(
        seen["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"], MODERN,
        "a stateless-era child keeps the envelope: {seen}"
    );
    assert_ne!(seen["id"], 41, "the child sees forkline's own id: {seen}");
}

#[test]
fn equal_ids_of_concurrent_requests_never_collide() {
    let forkline = serve_http(&[], &fake_server(&["--initialize", "--trace"]));
    let addr = http_addr(&forkline);
    // Request 1 is held by the child; another request 1 is answered
    // meanwhile; then the held one is released and answered.
    let mut held = HttpConn::connect(addr);
    held.send(&stateless_post(&modern(json!(1), "fake/hold", json!({}))));
    forkline.wait_for_log("fake: received fake/hold");
    let other = call(addr, &modern(json!(1), "ping", json!({})));
    assert_eq!(other["id"], 1, "{other}");
    assert_eq!(other["result"]["method"], "ping", "{other}");
    let release = request(
        addr,
        &Request::post("/mcp")
            .header("Accept", ACCEPT_BOTH)
            .header("MCP-Protocol-Version", MODERN)
            .header("Mcp-Method", "fake/release")
            .json(&json!({"jsonrpc": "2.0", "method": "fake/release"})),
    );
    release.assert_status(202);
    let answer = held.read_response();
    answer.assert_status(200);
    let answer = answer.json();
    assert_eq!(answer["id"], 1, "{answer}");
    assert_eq!(answer["result"]["method"], "fake/hold", "{answer}");
}

#[test]
fn closing_a_response_stream_cancels_its_request_in_the_child() {
    let forkline = serve_http(&[], &fake_server(&["--initialize", "--trace"]));
    let addr = http_addr(&forkline);
    // A progress token makes forkline answer with a stream.
    let body = modern(json!(5), "fake/hold", json!({}));
    let mut body = body;
    body["params"]["_meta"]["progressToken"] = json!("p5");
    let stream = HttpConn::connect(addr).open(&stateless_post(&body));
    stream.assert_sse_head();
    forkline.wait_for_log("fake: received fake/hold");
    drop(stream);
    forkline.wait_for_log("fake: received notification notifications/cancelled");
}

#[test]
fn each_principal_has_its_own_child_and_keeps_it() {
    let dir = TempDir::new("stateless-tokens");
    let tokens = dir.path.join("tokens");
    std::fs::write(&tokens, "alice:a-secret\nbob:b-secret\n").expect("token file");
    let forkline = serve_http(
        &["--auth-token-file", tokens.to_str().expect("utf8 path")],
        &fake_server(&["--initialize"]),
    );
    let addr = http_addr(&forkline);
    let alice = fake_env(addr, Some("a-secret"))["pid"].clone();
    let bob = fake_env(addr, Some("b-secret"))["pid"].clone();
    assert_ne!(alice, bob, "two principals, two children");
    assert_eq!(fake_env(addr, Some("a-secret"))["pid"], alice);
    assert_eq!(fake_env(addr, Some("b-secret"))["pid"], bob);
    let refused = request(addr, &stateless_post(&modern(json!(1), "ping", json!({}))));
    refused.assert_status(401);
}

#[test]
fn the_idle_timeout_ends_a_principals_child_and_the_next_request_starts_one() {
    let forkline = serve_http(&["--idle-timeout", "1"], &fake_server(&["--initialize"]));
    let addr = http_addr(&forkline);
    let first = fake_env(addr, None)["pid"].as_u64().expect("pid") as u32;
    assert!(
        poll_until(PATIENCE, || !pid_alive(first)),
        "the idle child {first} was not ended"
    );
    let second = fake_env(addr, None)["pid"].as_u64().expect("pid") as u32;
    assert_ne!(first, second);
}

#[test]
fn an_unknown_method_gets_404_with_32601() {
    let forkline = serve_http(&[], &[]);
    let response = request(
        http_addr(&forkline),
        &stateless_post(&modern(json!(3), "no/such-method", json!({}))),
    );
    response.assert_status(404);
    let body = response.json();
    assert_eq!(body["error"]["code"], -32601, "{response}");
    assert_eq!(body["id"], 3, "{response}");
}

#[test]
fn a_request_in_flight_when_the_child_dies_gets_32002() {
    let forkline = serve_http(&[], &fake_server(&["--initialize"]));
    let addr = http_addr(&forkline);
    let reply = call(addr, &modern(json!(9), "fake/exit", json!({"code": 3})));
    assert_eq!(reply["id"], 9, "{reply}");
    assert_eq!(reply["error"]["code"], -32002, "{reply}");
    // The principal gets a new child next time.
    let pong = call(addr, &modern(json!(10), "ping", json!({})));
    assert_eq!(pong["id"], 10, "{pong}");
}

#[test]
fn a_server_request_of_an_adapted_child_travels_as_an_input_required_result() {
    let forkline = serve_http(&[], &fake_server(&["--initialize", "--trace"]));
    let addr = http_addr(&forkline);
    // The child asks roots/list while serving a tool call.
    let ask = |id: Value| {
        modern(
            id,
            "tools/call",
            json!({"name": "ask-roots", "arguments": {}}),
        )
    };
    let first = call(addr, &ask(json!(1)));
    assert_eq!(first["id"], 1, "{first}");
    let result = &first["result"];
    assert_eq!(result["resultType"], "input_required", "{first}");
    let requests = result["inputRequests"].as_object().expect("inputRequests");
    assert_eq!(requests.len(), 1, "{first}");
    let (key, asked) = requests.iter().next().expect("one input request");
    assert_eq!(asked["method"], "roots/list", "{first}");
    let state = result["requestState"].as_str().expect("requestState");

    // The retry carries the answer; the child gets it as its response and
    // the request it was serving answers the retry.
    let roots = json!([{"uri": "file:///srv/project", "name": "project"}]);
    let mut retry = ask(json!(2));
    retry["params"]["inputResponses"] = json!({ key.as_str(): { "roots": roots } });
    retry["params"]["requestState"] = json!(state);
    let answer = call(addr, &retry);
    assert_eq!(answer["id"], 2, "{answer}");
    assert_eq!(answer["result"]["method"], "fake/ask-roots", "{answer}");
    assert_eq!(answer["result"]["roots"], roots, "{answer}");
    // The child's stderr reaches the log on its own thread: once a later
    // request's trace line is there, every earlier one is (one pipe, in
    // order), so the count below is final.
    call(addr, &modern(json!(3), "ping", json!({})));
    forkline.wait_for_log("fake: received ping");
    assert_eq!(
        forkline
            .stderr_text()
            .matches("fake: received tools/call")
            .count(),
        1,
        "the retry is not a second request to the child:\n{}",
        forkline.stderr_text()
    );
}

#[test]
fn subscriptions_listen_streams_the_change_notifications_asked_for() {
    let forkline = serve_http(&[], &fake_server(&["--initialize", "--trace"]));
    let addr = http_addr(&forkline);
    let listen = modern(
        json!("listen-1"),
        "subscriptions/listen",
        json!({"notifications": {"toolsListChanged": true, "resourceSubscriptions": ["file:///a"]}}),
    );
    let mut stream = HttpConn::connect(addr).open(&stateless_post(&listen));
    stream.assert_sse_head();
    let (_, ack) = stream.next_message();
    assert_eq!(
        ack["method"], "notifications/subscriptions/acknowledged",
        "{ack}"
    );
    assert_eq!(
        ack["params"]["notifications"]["toolsListChanged"], true,
        "{ack}"
    );
    // An old server learns of the resource subscription its own way.
    forkline.wait_for_log("fake: received resources/subscribe");

    let note =
        |method: &str, params: Value| json!({"jsonrpc": "2.0", "method": method, "params": params});
    let emit = modern(
        json!(2),
        "fake/emit",
        json!({"messages": [
            note("notifications/prompts/list_changed", json!({})),
            note("notifications/resources/updated", json!({"uri": "file:///b"})),
            note("notifications/tools/list_changed", json!({})),
            note("notifications/resources/updated", json!({"uri": "file:///a"})),
        ]}),
    );
    let reply = call(addr, &emit);
    assert_eq!(reply["id"], 2, "{reply}");
    let (_, first) = stream.next_message();
    assert_eq!(
        first["method"], "notifications/tools/list_changed",
        "{first}"
    );
    let (_, second) = stream.next_message();
    assert_eq!(
        second["method"], "notifications/resources/updated",
        "{second}"
    );
    assert_eq!(
        second["params"]["uri"], "file:///a",
        "only what was asked for: {second}"
    );

    // The child's end ends the subscription with its result.
    let gone = call(addr, &modern(json!(3), "fake/exit", json!({})));
    assert_eq!(gone["error"]["code"], -32002, "{gone}");
    let rest = stream.expect_end(PATIENCE);
    let last = rest
        .iter()
        .filter_map(SseEvent::json)
        .next_back()
        .expect("a final result");
    assert_eq!(last["id"], "listen-1", "{last}");
    assert_eq!(
        last["result"]["_meta"]["io.modelcontextprotocol/subscriptionId"], "listen-1",
        "{last}"
    );
}

#[test]
fn a_dual_era_child_that_answers_discover_is_served_in_the_new_era() {
    // The built-in echo-server speaks both eras: it answers forkline's
    // server/discover, so it is never sent initialize.
    let forkline = serve_http(&["-v"], &[]);
    let addr = http_addr(&forkline);
    let reply = call(addr, &modern(json!(1), "tools/list", json!({})));
    assert_eq!(reply["result"]["tools"][0]["name"], "echo", "{reply}");
    forkline.wait_for_log("speaks the stateless era");
    assert!(
        !forkline.stderr_text().contains("adapted"),
        "{}",
        forkline.stderr_text()
    );
}

#[test]
fn an_old_server_that_ignores_discover_is_adapted_after_the_probe_times_out() {
    let forkline = serve_http(
        &[],
        &fake_server(&["--legacy", "--silent-before-initialize", "--trace"]),
    );
    let addr = http_addr(&forkline);
    let discover = call(addr, &modern(json!("d"), "server/discover", json!({})));
    assert_eq!(
        discover["result"]["supportedVersions"],
        json!([MODERN]),
        "{discover}"
    );
    assert_eq!(
        discover["result"]["_meta"]["io.modelcontextprotocol/serverInfo"]["name"], "fake-legacy",
        "{discover}"
    );
    forkline.wait_for_log("did not answer server/discover");
    let echo = call(
        addr,
        &modern(
            json!(2),
            "tools/call",
            json!({"name": "echo", "arguments": {"text": "old"}}),
        ),
    );
    assert_eq!(echo["result"]["content"][0]["text"], "old", "{echo}");
    assert_eq!(echo["result"]["resultType"], "complete", "{echo}");
}

#[test]
fn handshake_sessions_and_stateless_clients_share_one_forkline() {
    let forkline = serve_http(&[], &fake_server(&["--initialize"]));
    let addr = http_addr(&forkline);
    let session = McpSession::open(addr);
    let stateless_pid = fake_env(addr, None)["pid"].clone();
    let session_pid = session.child_pid();
    assert_ne!(json!(session_pid), stateless_pid, "each has its own child");
    // Both go on working side by side.
    let reply = session.call(json!(5), "ping", json!({}));
    assert_eq!(reply["id"], 5, "{reply}");
    assert_eq!(fake_env(addr, None)["pid"], stateless_pid);
}

#[test]
fn a_principals_child_comes_from_the_warm_pool_when_there_is_one() {
    let forkline = serve_http(&["--prespawn", "1"], &fake_server(&["--initialize"]));
    // The pool logs this under its lock as it queues the child: from then
    // on a new principal takes it.
    forkline.wait_for_log("warm child warm-1 started pid=");
    let env = fake_env(http_addr(&forkline), None);
    let name = env["session_id"].as_str().unwrap_or_default();
    assert!(
        name.starts_with("warm-"),
        "FORKLINE_SESSION_ID {name:?}: {env}"
    );
}
