//! How a session winds down, beyond tests/shutdown.rs and
//! tests/lifecycle.rs.
//!
//! Issue 10, defect 9: during the shutdown grace forkline refuses new
//! requests (-32004, at once) but everything else the client sends still
//! reaches the child until it is stopped: the answer to a request the
//! server made of the client (`roots/list`), which the server may need
//! before it can answer what is in flight, and `notifications/cancelled`.
//!
//! Issue 10, defect 8: a session never waits for a timeout that may not
//! come. With `--idle-timeout 0` (never) there is none at all, so the
//! session must end on the event itself: the child's exit (even when a
//! grandchild, in the child's process group or escaped from it, keeps its
//! stdio open), or the client resetting its connection while forkline has
//! stopped reading it.

mod common;

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

const GRACE_SECS: &str = "5";
const GRACE: Duration = Duration::from_secs(5);

/// Sends `fake/ask-roots` as request `id` and reads the server's
/// `roots/list` request that it causes; returns that request's id.
fn ask_roots(client: &mut Client, id: Value) -> Value {
    client.request(id, "fake/ask-roots", json!({}));
    let ask = client.recv();
    assert_eq!(
        ask["method"], "roots/list",
        "not the server's request: {ask}"
    );
    assert_eq!(ask["id"], json!("srv-1"), "the server's request: {ask}");
    assert!(ask.get("result").is_none() && ask.get("error").is_none());
    ask["id"].clone()
}

/// SIGTERM, then waits until the session refuses new requests.
fn shut_down(forkline: &Forkline, client: &mut Client) -> Duration {
    forkline.signal(libc::SIGTERM);
    forkline.wait_for_log("SIGTERM: shutting down");
    probe_until_shutting_down(client)
}

/// The session closed, forkline exited 0 and the child is gone.
fn ended_cleanly(forkline: &mut Forkline, client: &mut Client, child: u32) {
    assert!(
        client.closed_within(PATIENCE),
        "session not closed at shutdown"
    );
    let status = forkline.wait_exit(PATIENCE);
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM; log:\n{}",
        forkline.stderr_text()
    );
    assert_all_gone(&[child], "child after shutdown");
    assert!(
        forkline
            .stderr_lines()
            .iter()
            .any(|l| l.contains("session closed") && l.contains("reason=shutdown")),
        "no `session closed reason=shutdown`; log:\n{}",
        forkline.stderr_text()
    );
}

#[test]
fn the_answer_to_a_server_request_reaches_the_child_during_shutdown() {
    let mut forkline = Forkline::serve_tcp(
        &["--shutdown-grace", GRACE_SECS],
        &fake_server(&["--trace"]),
    );
    let mut guard = StrayGuard::new();
    let mut client = forkline.connect();
    let env = client.fake_env(0);
    guard.watch_env(&env);

    // The server cannot answer request 1 before the client answers its
    // roots/list; the client answers only once shutdown has begun.
    let srv = ask_roots(&mut client, json!(1));
    shut_down(&forkline, &mut client);
    let roots = json!([{"uri": "file:///work", "name": "work"}]);
    client.send(&json!({"jsonrpc": "2.0", "id": srv, "result": {"roots": roots}}).to_string());

    let reply = client.recv();
    assert_eq!(
        reply["id"],
        json!(1),
        "not the answer to request 1: {reply}"
    );
    assert!(
        reply.get("error").is_none(),
        "request 1 got an error instead of its answer (did the client's roots reach the child?): {reply}"
    );
    assert_eq!(reply["result"]["method"], "fake/ask-roots", "{reply}");
    assert_eq!(
        reply["result"]["roots"], roots,
        "the child did not get the client's roots: {reply}"
    );
    ended_cleanly(&mut forkline, &mut client, env.pid);
}

#[test]
fn during_shutdown_a_new_request_is_refused_at_once_while_one_in_flight_completes() {
    let mut forkline = Forkline::serve_tcp(
        &["--shutdown-grace", GRACE_SECS],
        &fake_server(&["--trace"]),
    );
    let mut guard = StrayGuard::new();
    let mut client = forkline.connect();
    let env = client.fake_env(0);
    guard.watch_env(&env);

    client.request(json!("slow"), "fake/hold", json!({}));
    forkline.wait_for_log("fake: received fake/hold id=\"slow\"");
    let signalled = Instant::now();
    let waited = shut_down(&forkline, &mut client);
    // At once: not after the grace, and while "slow" is still in flight
    // (nothing has released it yet, so it cannot have been answered).
    assert!(
        waited < GRACE / 5,
        "the new request waited {waited:?} for its -32004 (grace {GRACE:?})"
    );
    client.send(r#"{"jsonrpc":"2.0","method":"fake/release"}"#);
    assert_echo(&client.recv(), &json!("slow"), "fake/hold");
    assert!(
        signalled.elapsed() < GRACE,
        "the in-flight request was answered only after the grace"
    );
    ended_cleanly(&mut forkline, &mut client, env.pid);
}

#[test]
fn a_cancellation_during_shutdown_reaches_the_child() {
    let mut forkline = Forkline::serve_tcp(&["--shutdown-grace", "1"], &fake_server(&["--trace"]));
    let mut guard = StrayGuard::new();
    let mut client = forkline.connect();
    let env = client.fake_env(0);
    guard.watch_env(&env);

    client.request(json!(7), "fake/hold", json!({}));
    forkline.wait_for_log("fake: received fake/hold id=7");
    shut_down(&forkline, &mut client);
    client.send(
        r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":7,"reason":"shutting down"}}"#,
    );
    forkline.wait_for_log("fake: received notification notifications/cancelled");

    // The server honours the cancellation by not answering; the proxy
    // still owes the client an answer, and gives -32004 after the grace.
    assert_error(&client.recv(), -32004, &json!(7));
    ended_cleanly(&mut forkline, &mut client, env.pid);
}

/// After a session ended on its own: the client saw EOF, the child (and
/// grandchild, if any) are gone and reaped, and the end is logged with
/// `reason`.
fn session_ended(forkline: &Forkline, client: &mut Client, pids: &[u32], reason: &str) {
    assert!(
        client.closed_within(PATIENCE),
        "the session did not end; log:\n{}",
        forkline.stderr_text()
    );
    assert_all_gone(pids, "the session's processes");
    assert_no_zombies(forkline.pid());
    wait_for_log_word(forkline, &format!("reason={reason}"));
}

#[test]
fn with_no_idle_timeout_the_childs_exit_ends_the_session_at_once() {
    let forkline = Forkline::serve_tcp(&["--idle-timeout", "0"], &fake_server(&[]));
    let mut guard = StrayGuard::new();
    let mut client = forkline.connect();
    let env = client.fake_env(1);
    guard.watch_env(&env);

    client.request(json!(2), "fake/exit", json!({"code": 0}));
    let message = assert_error(&client.recv(), -32002, &json!(2));
    assert!(
        mentions_exit_status(&message, 0),
        "the exit status is missing: {message}"
    );
    session_ended(&forkline, &mut client, &[env.pid], "child_exited");
}

#[test]
fn with_no_idle_timeout_the_childs_exit_ends_the_session_though_a_grandchild_keeps_its_stdio() {
    // The grandchild holds the child's stdout: forkline never sees end of
    // file, only the exit itself.
    let forkline = Forkline::serve_tcp(
        &["--idle-timeout", "0"],
        &fake_server(&["--grandchild-keeps-stdio"]),
    );
    let mut guard = StrayGuard::new();
    let mut client = forkline.connect();
    let env = client.fake_env(1);
    guard.watch_env(&env);
    let grandchild = env.grandchild_pid.expect("a grandchild");

    client.request(json!(2), "fake/exit", json!({"code": 4}));
    let message = assert_error(&client.recv(), -32002, &json!(2));
    assert!(
        mentions_exit_status(&message, 4),
        "the exit status is missing: {message}"
    );
    session_ended(
        &forkline,
        &mut client,
        &[env.pid, grandchild],
        "child_exited",
    );
}

#[test]
fn with_no_idle_timeout_the_childs_exit_ends_the_session_though_an_escaped_grandchild_keeps_its_stdio()
 {
    // The grandchild left the child's process group (setsid), so the sweep
    // of the group on exit does not reach it and the child's socket stays
    // open for good: only the reaper's word of the exit can end the session.
    let forkline = Forkline::serve_tcp(
        &["--idle-timeout", "0"],
        &fake_server(&["--grandchild-escapes"]),
    );
    let mut guard = StrayGuard::new();
    let mut client = forkline.connect();
    let env = client.fake_env(1);
    guard.watch_env(&env); // the escaped `sleep` is killed when the test ends

    client.request(json!(2), "fake/exit", json!({"code": 5}));
    let message = assert_error(&client.recv(), -32002, &json!(2));
    assert!(
        mentions_exit_status(&message, 5),
        "the exit status is missing: {message}"
    );
    session_ended(&forkline, &mut client, &[env.pid], "child_exited");
}

#[test]
fn answers_written_just_before_the_exit_arrive_though_an_escaped_grandchild_keeps_its_stdout() {
    // A client that reads slowly keeps forkline's output full, so the
    // child's last answers wait in its stdout pipe when it exits. The
    // reaper's word of the exit reaches the worker then: those answers
    // must still be read and delivered, and the pipe's lasting silence
    // (the grandchild keeps it open) must then end the session.
    // Big answers keep forkline's output full; the small ones after them
    // fit in the pipe at once, so the child writes them and exits while
    // forkline may still wait on the client. (The client's pace makes that
    // order likely, not certain; the test passes in any order.)
    const BIG: usize = 64;
    const CALLS: usize = BIG + 16;
    let padding = |n: usize| if n < BIG { 128 * 1024 } else { 100 };
    // Over a Unix socket, whose buffers stay small: loopback TCP's
    // autotuned megabytes would take every answer, and forkline would
    // never hold any back.
    let dir = TempDir::new("forkline-exit");
    let path = dir.path.join("s.sock");
    let child = fake_server(&["--grandchild-escapes"]);
    let mut args = vec![
        "--unix",
        path.to_str().expect("utf-8 temp path"),
        "--idle-timeout",
        "0",
        "--",
    ];
    args.extend(child.iter().map(String::as_str));
    let forkline = Forkline::serve(&args, 1);
    let mut guard = StrayGuard::new();
    let stream = std::os::unix::net::UnixStream::connect(&path).expect("connect");
    stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut recv = move || -> Option<Value> {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(serde_json::from_str(&line).expect("JSON from forkline")),
        }
    };
    let mut writer = stream.try_clone().expect("clone");
    writeln!(writer, r#"{{"jsonrpc":"2.0","id":1,"method":"fake/env"}}"#).expect("send");
    let env = FakeEnv::from_result(&recv().expect("fake/env answer")["result"]);
    guard.watch_env(&env);

    let mut burst = Vec::new();
    for n in 0..CALLS {
        let line = json!({"jsonrpc": "2.0", "id": 10 + n, "method": "tools/call",
                          "params": {"padding": "x".repeat(padding(n))}});
        burst.extend_from_slice(format!("{line}\n").as_bytes());
    }
    let exit = json!({"jsonrpc": "2.0", "id": 2, "method": "fake/exit", "params": {"code": 6}});
    burst.extend_from_slice(format!("{exit}\n").as_bytes());
    // From a thread: the answers back up while the requests still go.
    let sender = std::thread::spawn(move || writer.write_all(&burst));
    for n in 0..CALLS {
        std::thread::sleep(Duration::from_millis(3));
        let answer = recv().unwrap_or_else(|| panic!("answer {n} of {CALLS} never came"));
        assert_eq!(answer["id"], json!(10 + n), "answer {n} of {CALLS}");
        assert_eq!(
            answer["result"]["params"]["padding"].as_str().map(str::len),
            Some(padding(n)),
            "answer {n} of {CALLS}"
        );
    }
    let message = assert_error(&recv().expect("the -32002 answer"), -32002, &json!(2));
    assert!(
        mentions_exit_status(&message, 6),
        "the exit status is missing: {message}"
    );
    assert!(recv().is_none(), "the session did not end");
    sender.join().expect("sender").expect("the burst was sent");
    assert_all_gone(&[env.pid], "the child");
    assert_no_zombies(forkline.pid());
    wait_for_log_word(&forkline, "reason=child_exited");
}

#[test]
fn with_no_idle_timeout_a_client_reset_while_held_back_ends_the_session() {
    const LINES_PER_WRITE: usize = 64;
    const NEVER_BLOCKED: usize = 512 * 1024 * 1024;
    let forkline = Forkline::serve_tcp(
        &["--idle-timeout", "0", "--shutdown-grace", "0.2"],
        &fake_server(&["--no-read"]),
    );
    let mut guard = StrayGuard::new();
    let stream = TcpStream::connect(forkline.tcp_addr()).expect("connect");
    forkline.wait_for_log("session opened");
    let child = the_fixture_child(&forkline);
    guard.watch(child);

    // Notifications (so no -32005 answers pile up) until forkline stops
    // taking them: the child reads nothing, forkline holds back.
    let mut raw = stream.try_clone().expect("clone");
    raw.set_write_timeout(Some(Duration::from_secs(1)))
        .expect("write timeout");
    let line = format!(
        "{}\n",
        json!({"jsonrpc": "2.0", "method": "notifications/message", "params": {"pad": "n".repeat(960)}})
    );
    let chunk = line.repeat(LINES_PER_WRITE);
    let mut sent = 0usize;
    let blocked = loop {
        if sent >= NEVER_BLOCKED {
            break false;
        }
        match raw.write(chunk.as_bytes()) {
            Ok(n) => sent += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                break true;
            }
            Err(e) => panic!("forkline dropped the client after {sent} bytes: {e}"),
        }
    };
    assert!(
        blocked,
        "forkline took {} MiB for a child that reads nothing",
        sent >> 20
    );
    assert!(pid_alive(child), "the child died before the reset");

    abort_on_close(&stream);
    drop(raw);
    drop(stream);
    assert_all_gone(&[child], "the child after its client reset the connection");
    assert_no_zombies(forkline.pid());
    wait_for_log_word(&forkline, "reason=client_closed");
}
