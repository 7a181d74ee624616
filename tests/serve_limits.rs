//! `serve`'s limits: total sessions, sessions per client (per IP over TCP,
//! per uid over a Unix socket) and the idle timeout. A refused connection
//! gets a -32001 line naming the limit, then EOF; freed room is reused.

mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

/// Reads the refusal a connection over a limit must get, then its EOF;
/// returns the error message.
fn expect_refusal(client: &mut Client) -> String {
    let refusal = client.recv();
    let message = assert_error(&refusal, -32001, &Value::Null);
    assert!(
        client.closed_within(PATIENCE),
        "refused connection not closed after {refusal}"
    );
    message
}

/// Tries one new session; true if it was admitted (its request answered),
/// false if it was refused (-32001, or closed before answering). The
/// request is written even if the refusal already closed the socket.
fn try_session(mut client: Client) -> bool {
    let _ = client.send_raw(b"{\"jsonrpc\":\"2.0\",\"id\":\"probe\",\"method\":\"probe\"}\n");
    let Some(line) = client.recv_line_within(PATIENCE) else {
        return false;
    };
    let reply: Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad JSON ({e}): {line}"));
    if reply["error"]["code"] == json!(-32001) {
        return false;
    }
    assert_echo(&reply, &json!("probe"), "probe");
    true
}

#[test]
fn max_sessions_refuses_the_next_connection_and_frees_room_on_close() {
    let forkline = Forkline::serve_tcp(&["--max-sessions", "2"], &fake_server(&[]));
    let mut guard = StrayGuard::new();
    let mut first = forkline.connect();
    let mut second = forkline.connect();
    guard.watch_env(&first.fake_env(1));
    guard.watch_env(&second.fake_env(2));

    let mut third = forkline.connect();
    let message = expect_refusal(&mut third);
    assert!(
        message.contains("max-sessions") && !message.contains("max-sessions-per-client"),
        "refusal does not name --max-sessions: {message}"
    );
    assert!(
        message.contains('2'),
        "refusal does not give the figure 2: {message}"
    );

    // The two admitted sessions are untouched by the refusal.
    assert_echo(
        &second.call(json!(3), "still", json!({})),
        &json!(3),
        "still",
    );

    drop(first);
    assert!(
        poll_until(PATIENCE, || try_session(forkline.connect())),
        "no session admitted after one of two closed; log:\n{}",
        forkline.stderr_text()
    );
    forkline.wait_for_log("reason=client_closed");
}

#[test]
fn max_sessions_per_client_counts_per_ip_over_tcp() {
    let forkline = Forkline::serve_tcp(&["--max-sessions-per-client", "1"], &fake_server(&[]));
    let mut guard = StrayGuard::new();
    let mut first = forkline.connect();
    guard.watch_env(&first.fake_env(1));

    let mut again = forkline.connect();
    let message = expect_refusal(&mut again);
    assert!(
        message.contains("max-sessions-per-client"),
        "refusal does not name the limit: {message}"
    );

    // Another peer IP (127.0.0.2 is loopback too) has its own allowance.
    let stream = tcp_connect_from(Ipv4Addr::new(127, 0, 0, 2), forkline.tcp_addr())
        .expect("connect from 127.0.0.2");
    let mut other = Client::from_tcp_stream(stream);
    let env = other.fake_env(2);
    guard.watch_env(&env);
    assert!(
        env.peer
            .as_deref()
            .is_some_and(|p| p.starts_with("127.0.0.2:")),
        "FORKLINE_PEER of the other client: {env:?}"
    );
    assert_echo(
        &first.call(json!(3), "still", json!({})),
        &json!(3),
        "still",
    );
}

#[test]
fn max_sessions_per_client_counts_per_uid_over_unix() {
    let dir = TempDir::new("forkline-limits");
    let path = dir.path.join("l.sock");
    let child = fake_server(&[]);
    let mut args = vec![
        "--unix",
        path.to_str().unwrap(),
        "--max-sessions-per-client",
        "1",
        "--",
    ];
    args.extend(child.iter().map(|s| s.as_str()));
    let forkline = Forkline::serve(&args, 1);
    let mut guard = StrayGuard::new();

    let mut first = Client::unix(&path);
    guard.watch_env(&first.fake_env(1));
    let mut again = Client::unix(&path);
    let message = expect_refusal(&mut again);
    assert!(
        message.contains("max-sessions-per-client"),
        "refusal does not name the limit: {message}"
    );
    assert_echo(
        &first.call(json!(2), "still", json!({})),
        &json!(2),
        "still",
    );
    drop(first);
    let readmitted = poll_until(PATIENCE, || try_session(Client::unix(&path)));
    assert!(readmitted, "same uid not admitted after its session closed");
    forkline.wait_for_log("reason=client_closed");
}

#[test]
fn idle_timeout_ends_a_quiet_session_but_not_a_busy_one() {
    const TIMEOUT: Duration = Duration::from_millis(1000);
    let forkline = Forkline::serve_tcp(&["--idle-timeout", "1"], &fake_server(&[]));
    let mut guard = StrayGuard::new();
    let mut quiet = forkline.connect();
    let mut busy = forkline.connect();
    let quiet_env = quiet.fake_env(1);
    let busy_env = busy.fake_env(2);
    guard.watch_env(&quiet_env);
    guard.watch_env(&busy_env);
    let start = Instant::now();

    // Keep `busy` talking (a message every 100 ms, well inside the 1 s
    // timeout) until the quiet one has been closed and at least three
    // timeouts have passed. Bounded: 600 rounds is a minute.
    let mut quiet_closed = false;
    for round in 0..600u64 {
        if quiet_closed && start.elapsed() > 3 * TIMEOUT {
            break;
        }
        let reply = busy.call(json!(100 + round), "keepalive", json!({}));
        assert_echo(&reply, &json!(100 + round), "keepalive");
        if !quiet_closed {
            quiet_closed = quiet.closed_within(Duration::from_millis(100));
        } else {
            std::thread::sleep(Duration::from_millis(100)); // pacing, not waiting for an outcome
        }
    }
    assert!(
        quiet_closed,
        "quiet session never closed; log:\n{}",
        forkline.stderr_text()
    );
    assert!(start.elapsed() > 3 * TIMEOUT);
    assert_all_gone(&[quiet_env.pid], "child of the idle session");
    assert!(pid_alive(busy_env.pid), "busy session's child died");
    assert_echo(
        &busy.call(json!("last"), "last", json!({})),
        &json!("last"),
        "last",
    );
    let closed = forkline.wait_for_log("reason=idle_timeout");
    let sid = quiet_env.session_id.expect("session id");
    assert!(
        closed.contains(&sid),
        "idle_timeout logged for another session: {closed}"
    );
    assert!(
        !forkline
            .stderr_lines()
            .iter()
            .any(|l| l.contains("reason=idle_timeout")
                && l.contains(busy_env.session_id.as_deref().unwrap())),
        "busy session ended by the idle timeout"
    );
}
