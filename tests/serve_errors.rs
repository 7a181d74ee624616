//! `serve`'s error table: bad client input gets -32700/-32600/-32003 and the
//! session goes on; bad child output is dropped and logged; a crashing or
//! unspawnable child turns pending requests into -32002. Bad input never
//! reaches the child.

mod common;

use std::io::Write;
use std::net::TcpStream;

use common::*;
use serde_json::{Value, json};

/// The fake answers any invalid JSON it receives with its own -32700 whose
/// message starts "fake server": seeing one means forkline forwarded bad
/// input to the child.
fn assert_from_forkline(msg: &Value) {
    let text = msg["error"]["message"].as_str().unwrap_or_default();
    assert!(
        !text.starts_with("fake server"),
        "bad input reached the child: {msg}"
    );
}

#[test]
fn invalid_json_gets_parse_error_and_the_session_goes_on() {
    let forkline = Forkline::serve_tcp(&[], &fake_server(&[]));
    let mut client = forkline.connect();
    for (i, bad) in [
        r#"{"jsonrpc":"2.0","id":1,"#,
        "not json at all",
        r#"{"id": 2,,}"#,
        "}",
    ]
    .into_iter()
    .enumerate()
    {
        client.send(bad);
        let err = client.recv();
        assert_error(&err, -32700, &Value::Null);
        assert_from_forkline(&err);
        assert_echo(
            &client.call(json!(i), "still-here", json!({})),
            &json!(i),
            "still-here",
        );
    }
    assert!(
        !forkline
            .stderr_text()
            .contains("fake: received invalid JSON"),
        "the child received bad input; log:\n{}",
        forkline.stderr_text()
    );
}

#[test]
fn valid_json_that_is_not_json_rpc_gets_invalid_request() {
    let forkline = Forkline::serve_tcp(&[], &fake_server(&[]));
    let mut client = forkline.connect();
    let not_rpc = [
        "[1,2]",
        r#"{"foo":1}"#,
        r#"{"id":1,"method":"no-jsonrpc-member"}"#,
        "42",
        r#""a string""#,
    ];
    for (i, bad) in not_rpc.into_iter().enumerate() {
        client.send(bad);
        let err = client.recv();
        let message = assert_error(&err, -32600, &Value::Null);
        assert!(!message.is_empty(), "empty message for {bad}");
        assert_from_forkline(&err);
        assert_echo(
            &client.call(json!(i), "still-here", json!({})),
            &json!(i),
            "still-here",
        );
    }
}

/// Sends `bad` and then a request `after` in one write, so a forwarded
/// `bad` would show up as the child's answer to `after` arriving first.
/// Returns forkline's reply to `bad` after checking the echo of `after`.
fn send_bad_then_call(client: &mut Client, bad: &str, after: &str) -> Value {
    let follow_up = json!({"jsonrpc": "2.0", "id": after, "method": after});
    client
        .send_raw(format!("{bad}\n{follow_up}\n").as_bytes())
        .expect("send");
    let reply = client.recv();
    assert_ne!(
        reply["id"],
        json!(after),
        "no reply to {bad} before the answer to {after}: it was forwarded"
    );
    assert_from_forkline(&reply);
    assert_echo(&client.recv(), &json!(after), after);
    reply
}

#[test]
fn a_request_id_over_1_kib_is_refused_and_never_reaches_the_child() {
    let forkline = Forkline::serve_tcp(&[], &fake_server(&["--trace"]));
    let mut client = forkline.connect();
    let long_id = "i".repeat(2000);
    let bad = json!({"jsonrpc": "2.0", "id": long_id, "method": "long-id"}).to_string();
    let reply = send_bad_then_call(&mut client, &bad, "after-long-id");
    let message = assert_error(&reply, -32600, &Value::Null);
    assert!(
        message.contains("1024"),
        "the message does not say the limit: {message}"
    );
    // The fake traces every request it reads, in order: once it traced the
    // follow-up, a trace of the long-id request would already be there.
    forkline.wait_for_log("fake: received after-long-id");
    assert!(
        !forkline.stderr_text().contains("fake: received long-id"),
        "the request with a long id reached the child; log:\n{}",
        forkline.stderr_text()
    );
    assert_echo(
        &client.call(json!(3), "still-here", json!({})),
        &json!(3),
        "still-here",
    );
}

/// serde reads a JSON array into a struct field by field, so a batch of
/// arrays used to pass for a batch of requests and reach the child.
#[test]
fn a_batch_of_non_objects_is_refused_and_never_reaches_the_child() {
    let forkline = Forkline::serve_tcp(&[], &fake_server(&["--trace"]));
    let mut client = forkline.connect();
    for (i, bad) in [
        r#"[["2.0",1,"tools/call"]]"#,
        r#"[{"jsonrpc":"2.0","id":"in-batch","method":"in-batch"},["2.0",2,"x"]]"#,
        r#"[[{"jsonrpc":"2.0","id":1,"method":"nested"}]]"#,
        r#"[7]"#,
    ]
    .into_iter()
    .enumerate()
    {
        let after = format!("after-batch-{i}");
        let reply = send_bad_then_call(&mut client, bad, &after);
        assert_error(&reply, -32600, &Value::Null);
        forkline.wait_for_log(&format!("fake: received {after}"));
    }
    assert!(
        !forkline.stderr_text().contains("fake: received in-batch"),
        "a batch with a non-object item reached the child; log:\n{}",
        forkline.stderr_text()
    );
}

#[test]
fn invalid_utf8_gets_parse_error_and_the_session_goes_on() {
    let forkline = Forkline::serve_tcp(&[], &fake_server(&[]));
    let mut client = forkline.connect();
    client
        .send_raw(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"\xff\xfe\xc3\"}\n")
        .expect("send");
    let err = client.recv();
    assert_error(&err, -32700, &Value::Null);
    assert_from_forkline(&err);
    assert_echo(
        &client.call(json!(2), "after-utf8", json!({})),
        &json!(2),
        "after-utf8",
    );
}

/// A request of exactly `len` bytes (without the newline) whose id is
/// readable at its very start and whose answer (fake/env) is small.
fn padded_request(id: u64, len: usize) -> String {
    let head = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"fake/env","params":{{"pad":""#);
    let tail = r#""}}"#;
    let pad = len - head.len() - tail.len();
    let line = format!("{head}{}{tail}", "x".repeat(pad));
    assert_eq!(line.len(), len);
    line
}

#[test]
fn oversized_request_gets_message_too_large_with_its_id() {
    let forkline = Forkline::serve_tcp(&["--max-message-bytes", "1024"], &fake_server(&[]));
    let mut client = forkline.connect();

    // Exactly at the limit: relayed.
    client.send(&padded_request(41, 1024));
    let at_limit = client.recv();
    assert_eq!(
        at_limit["id"],
        json!(41),
        "a message of exactly the limit must pass: {at_limit}"
    );
    assert!(
        at_limit["result"]["pid"].is_u64(),
        "fake/env answer expected: {at_limit}"
    );

    // One byte over: refused, with the id it carries.
    client.send(&padded_request(42, 1025));
    let message = assert_error(&client.recv(), -32003, &json!(42));
    assert!(!message.is_empty());

    // Well over, id still at the front.
    client.send(&padded_request(43, 4096));
    assert_error(&client.recv(), -32003, &json!(43));

    assert_echo(
        &client.call(json!(44), "after-big", json!({})),
        &json!(44),
        "after-big",
    );
}

#[test]
fn oversized_line_without_a_readable_id_gets_null_id() {
    let forkline = Forkline::serve_tcp(&["--max-message-bytes", "1024"], &fake_server(&[]));
    let mut client = forkline.connect();
    client.send(&"x".repeat(4096));
    assert_error(&client.recv(), -32003, &Value::Null);
    assert_echo(
        &client.call(json!(1), "after-big", json!({})),
        &json!(1),
        "after-big",
    );
}

/// The id of an oversized line is read from its head and copied into the
/// -32003 reply; a broken one (`"\q"` is no JSON escape) used to make
/// forkline's own reply invalid JSON.
#[test]
fn an_oversized_line_with_a_broken_id_gets_valid_json_with_null_id() {
    let forkline = Forkline::serve_tcp(&["--max-message-bytes", "1024"], &fake_server(&[]));
    let mut client = forkline.connect();
    let line = format!(
        r#"{{"jsonrpc":"2.0","id":"\q","method":"x","params":{{"pad":"{}"}}}}"#,
        "x".repeat(4096)
    );
    client.send(&line);
    let raw = client
        .recv_raw_line_within(PATIENCE)
        .expect("a reply to the oversized line");
    let reply: Value = serde_json::from_slice(&raw).unwrap_or_else(|e| {
        panic!(
            "forkline's -32003 is not valid JSON ({e}): {}",
            String::from_utf8_lossy(&raw)
        )
    });
    assert_error(&reply, -32003, &Value::Null);
    assert_echo(
        &client.call(json!(1), "after-bad-id", json!({})),
        &json!(1),
        "after-bad-id",
    );
}

#[test]
fn an_endless_line_is_rejected_in_bounded_memory() {
    const CHUNK: usize = 64 * 1024;
    const TOTAL: usize = 64 * 1024 * 1024;
    let forkline = Forkline::serve_tcp(&["--max-message-bytes", "1024"], &fake_server(&[]));
    let stream = TcpStream::connect(forkline.tcp_addr()).expect("connect");
    let mut raw = stream.try_clone().expect("clone");
    let mut client = Client::from_tcp_stream(stream);
    assert_echo(
        &client.call(json!(1), "before", json!({})),
        &json!(1),
        "before",
    );

    let chunk = vec![b'x'; CHUNK];
    for _ in 0..TOTAL / CHUNK {
        raw.write_all(&chunk)
            .expect("forkline keeps reading an over-long line");
    }
    raw.write_all(b"\n").expect("newline");
    assert_error(&client.recv(), -32003, &Value::Null);
    assert_echo(
        &client.call(json!(2), "after", json!({})),
        &json!(2),
        "after",
    );

    // Buffering the line would cost at least its size; a bounded reader
    // costs a small fraction of it.
    let peak = peak_rss_bytes(forkline.pid());
    assert!(
        peak < (TOTAL / 4) as u64,
        "forkline's peak RSS is {} MiB after a {} MiB line: it buffered the line",
        peak >> 20,
        TOTAL >> 20
    );
}

#[test]
fn child_garbage_and_oversized_child_lines_are_dropped_and_logged() {
    let forkline = Forkline::serve_tcp(
        &["--max-message-bytes", "1024"],
        &fake_server(&["--garbage", "--oversize", "4096"]),
    );
    let mut client = forkline.connect();
    for id in 1..=2 {
        client.request(json!(id), "real", json!({"n": id}));
        // The fake writes a non-JSON line and a 4 KiB line before each
        // answer; the very next line the client sees must be the answer.
        let line = client.recv_line_within(PATIENCE).expect("a line");
        let msg: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("garbage relayed ({e}): {line}"));
        assert_echo(&msg, &json!(id), "real");
    }
    // Two answers, each preceded by two bad lines: four drops, each logged
    // under the session's id.
    let logged = |f: &Forkline| {
        f.stderr_lines()
            .into_iter()
            .filter(|l| l.contains("[s") && !l.contains("child stderr"))
            .filter(|l| {
                let l = l.to_lowercase();
                ["drop", "discard", "ignor", "skip"]
                    .iter()
                    .any(|w| l.contains(w))
            })
            .count()
    };
    let all_logged = poll_until(PATIENCE, || logged(&forkline) >= 4);
    assert!(
        all_logged,
        "expected 4 log lines about dropped child lines; log:\n{}",
        forkline.stderr_text()
    );
}

#[test]
fn a_crashing_child_answers_every_pending_request_with_its_exit_status() {
    // The fake reads (and never answers) requests 1 and 2, and exits with
    // status 3 on reading request 3: all three reached the child.
    let forkline = Forkline::serve_tcp(&[], &fake_server(&["--hang", "--crash-after", "2"]));
    let mut guard = StrayGuard::new();
    let mut client = forkline.connect();
    let pid = {
        let mut pid = None;
        poll_until(PATIENCE, || {
            pid = children_of(forkline.pid()).first().map(|(p, _)| *p);
            pid.is_some()
        });
        pid.expect("a child for the session")
    };
    guard.watch(pid);

    let ids = [json!(1), json!("two"), json!(3)];
    let batch: String = ids
        .iter()
        .map(|id| {
            format!(
                "{}\n",
                json!({"jsonrpc": "2.0", "id": id, "method": "doomed"})
            )
        })
        .collect();
    client
        .send_raw(batch.as_bytes())
        .expect("send three requests");

    let mut seen = Vec::new();
    for _ in 0..ids.len() {
        let err = client.recv();
        let message = assert_error(&err, -32002, &err["id"]);
        assert!(
            mentions_exit_status(&message, 3),
            "message lacks the exit status 3: {message}"
        );
        seen.push(err["id"].clone());
    }
    for id in &ids {
        assert!(seen.contains(id), "no -32002 for id {id}; got ids {seen:?}");
    }
    assert!(
        client.closed_within(PATIENCE),
        "session should end after its child exited"
    );
    assert_all_gone(&[pid], "crashed child");
    forkline.wait_for_log("reason=child_exited");
    assert_no_zombies(forkline.pid());
}

#[test]
fn an_unspawnable_command_gets_errors_naming_it_and_the_proxy_stays_up() {
    let mut forkline =
        Forkline::serve_tcp(&[], &["/nonexistent/cmd".to_string(), "--flag".to_string()]);
    for id in 1..=2 {
        let mut client = forkline.connect();
        let reply = client.call(json!(id), "tools/list", json!({}));
        let message = assert_error(&reply, -32002, &json!(id));
        assert!(
            message.contains("/nonexistent/cmd"),
            "message does not name the command: {message}"
        );
        assert!(
            forkline.try_exit_status().is_none(),
            "forkline exited after a spawn failure"
        );
    }
    forkline.wait_for_log("/nonexistent/cmd");
    assert_no_zombies(forkline.pid());
}
