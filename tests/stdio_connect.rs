//! `forkline stdio` runs one session on its own stdin/stdout with the same
//! rules as `serve`; `forkline connect` bridges its stdin/stdout to a
//! session of a `serve` over TCP or a Unix socket and exits 0 when the
//! session ends normally.

mod common;

use common::*;
use serde_json::{Value, json};

fn stdio_args(child: &[String]) -> Vec<&str> {
    let mut args = vec!["stdio", "--"];
    args.extend(child.iter().map(String::as_str));
    args
}

#[test]
fn stdio_relays_a_session_on_its_own_stdin_and_stdout() {
    let child = fake_server(&[]);
    let mut forkline = Piped::spawn(&stdio_args(&child));
    let mut guard = StrayGuard::new();

    let env = FakeEnv::from_result(&forkline.call(json!(1), "fake/env", json!({}))["result"]);
    guard.watch_env(&env);
    assert_eq!(env.pgid, env.pid, "child not in its own process group");
    assert!(
        env.session_id.is_some(),
        "FORKLINE_SESSION_ID not set in stdio mode"
    );

    assert_echo(
        &forkline.call(json!("a"), "tools/list", json!({})),
        &json!("a"),
        "tools/list",
    );
    forkline.send("this is not json");
    assert_error(&forkline.recv(), -32700, &Value::Null);
    forkline.send("[1,2]");
    assert_error(&forkline.recv(), -32600, &Value::Null);
    assert_echo(
        &forkline.call(json!(2), "after", json!({})),
        &json!(2),
        "after",
    );

    forkline.close_stdin();
    assert!(
        forkline.stdout_closed_within(PATIENCE),
        "stdout not closed after stdin EOF"
    );
    let status = forkline.wait_exit(PATIENCE);
    assert_eq!(
        status.code(),
        Some(0),
        "exit after stdin EOF; stderr:\n{}",
        forkline.stderr_text()
    );
    assert_all_gone(&[env.pid], "child after stdin EOF");
}

#[test]
fn stdio_applies_the_message_limit() {
    let child = fake_server(&[]);
    let mut args = vec!["stdio", "--max-message-bytes", "1024", "--"];
    args.extend(child.iter().map(String::as_str));
    let mut forkline = Piped::spawn(&args);
    let big = format!(
        r#"{{"jsonrpc":"2.0","id":7,"method":"big","params":{{"pad":"{}"}}}}"#,
        "x".repeat(2000)
    );
    forkline.send(&big);
    assert_error(&forkline.recv(), -32003, &json!(7));
    assert_echo(
        &forkline.call(json!(8), "small", json!({})),
        &json!(8),
        "small",
    );
}

#[test]
fn stdio_with_a_missing_command_names_it() {
    let request = format!(
        "{}\n",
        json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    );
    let run = run_forkline(&["stdio", "--", "/nonexistent/cmd"], request.as_bytes());
    // Either an error on stderr (and a failing exit) or a -32002 answer to
    // the request: both must name the command.
    let on_stdout = run.stdout.lines().any(|l| {
        serde_json::from_str::<Value>(l).is_ok_and(|m| {
            m["error"]["code"] == json!(-32002)
                && m["id"] == json!(1)
                && m["error"]["message"]
                    .as_str()
                    .is_some_and(|t| t.contains("/nonexistent/cmd"))
        })
    });
    let on_stderr = run.stderr.contains("/nonexistent/cmd") && !run.status.success();
    assert!(
        on_stdout || on_stderr,
        "the missing command is not named: {run:?}"
    );
}

fn serve_fake(extra: &[&str]) -> Forkline {
    Forkline::serve_tcp(extra, &fake_server(&[]))
}

#[test]
fn connect_over_tcp_bridges_stdin_and_stdout() {
    let server = serve_fake(&[]);
    let address = format!("tcp://{}", server.tcp_addr());
    let mut bridge = Piped::spawn(&["connect", &address]);
    let mut guard = StrayGuard::new();

    let env = FakeEnv::from_result(&bridge.call(json!(1), "fake/env", json!({}))["result"]);
    guard.watch_env(&env);
    assert!(
        env.peer
            .as_deref()
            .is_some_and(|p| p.starts_with("127.0.0.1:")),
        "peer: {env:?}"
    );
    assert_echo(
        &bridge.call(json!(2), "via-connect", json!({"k": [1, 2]})),
        &json!(2),
        "via-connect",
    );

    // Bytes pass unchanged through both hops.
    let sent =
        r#"{"jsonrpc":"2.0",  "id" : 3, "method":"fake/raw","params":{"u":"ünï ☃","n":1.50}}"#;
    bridge.send(sent);
    let line = bridge.recv_line_within(PATIENCE).expect("fake/raw answer");
    assert!(line.ends_with(r#" }, "id" : 3}"#), "bytes changed: {line}");
    let answer: Value = serde_json::from_str(&line).expect("JSON");
    assert_eq!(answer["result"]["raw"], sent);

    bridge.close_stdin();
    let status = bridge.wait_exit(PATIENCE);
    assert_eq!(
        status.code(),
        Some(0),
        "connect exit after stdin EOF; stderr:\n{}",
        bridge.stderr_text()
    );
    assert_all_gone(&[env.pid], "session child after connect ended");
    server.wait_for_log("reason=client_closed");
}

#[test]
fn connect_over_unix_bridges_stdin_and_stdout() {
    let dir = TempDir::new("forkline-connect");
    let path = dir.path.join("c.sock");
    let child = fake_server(&[]);
    let mut args = vec!["--unix", path.to_str().unwrap(), "--"];
    args.extend(child.iter().map(String::as_str));
    let _server = Forkline::serve(&args, 1);
    let mut bridge = Piped::spawn(&["connect", &format!("unix:{}", path.display())]);
    let mut guard = StrayGuard::new();

    let env = FakeEnv::from_result(&bridge.call(json!(1), "fake/env", json!({}))["result"]);
    guard.watch_env(&env);
    assert_echo(
        &bridge.call(json!(2), "via-unix", json!({})),
        &json!(2),
        "via-unix",
    );
    bridge.close_stdin();
    let status = bridge.wait_exit(PATIENCE);
    assert_eq!(
        status.code(),
        Some(0),
        "connect exit after stdin EOF; stderr:\n{}",
        bridge.stderr_text()
    );
    assert_all_gone(&[env.pid], "session child after connect ended");
}

#[test]
fn connect_exits_0_when_the_server_ends_the_session() {
    let server = serve_fake(&["--idle-timeout", "0.5"]);
    let mut bridge = Piped::spawn(&["connect", &format!("tcp://{}", server.tcp_addr())]);
    assert_echo(
        &bridge.call(json!(1), "hello", json!({})),
        &json!(1),
        "hello",
    );
    // Stdin stays open: the session ends on the server's idle timeout.
    assert!(
        bridge.stdout_closed_within(PATIENCE),
        "connect kept stdout open after the session ended"
    );
    let status = bridge.wait_exit(PATIENCE);
    assert_eq!(
        status.code(),
        Some(0),
        "connect exit when the session ended; stderr:\n{}",
        bridge.stderr_text()
    );
    server.wait_for_log("reason=idle_timeout");
}

#[test]
fn connect_to_a_port_nobody_listens_on_fails_clearly() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = free.local_addr().unwrap();
    drop(free);
    let run = run_forkline(&["connect", &format!("tcp://{addr}")], b"");
    assert!(
        !run.status.success(),
        "connect to a dead port succeeded: {run:?}"
    );
    assert!(run.stdout.is_empty(), "connect wrote to stdout: {run:?}");
    assert!(
        run.stderr.contains(&addr.to_string()) || run.stderr.contains(&format!("tcp://{addr}")),
        "error does not name the address {addr}: {}",
        run.stderr
    );
}

#[test]
fn connect_to_a_missing_unix_socket_fails_clearly() {
    let dir = TempDir::new("forkline-connect-missing");
    let path = dir.path.join("nobody.sock");
    let run = run_forkline(&["connect", &format!("unix:{}", path.display())], b"");
    assert!(
        !run.status.success(),
        "connect to a missing socket succeeded: {run:?}"
    );
    assert!(
        run.stderr.contains(&path.display().to_string()),
        "error does not name the path: {}",
        run.stderr
    );
}

/// `forkline connect` spawned with plain pipes (not [`Piped`], whose
/// reader thread would keep stdout's read end open), so a test can close
/// stdout's read end alone. Stderr goes to a file, for failure messages.
/// Dropping it kills and reaps the process by PID on every path.
struct BareConnect {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    stdout: Option<std::io::BufReader<std::process::ChildStdout>>,
    stderr_path: std::path::PathBuf,
    _dir: TempDir,
}

impl BareConnect {
    fn spawn(server: &Forkline) -> BareConnect {
        let dir = TempDir::new("forkline-bare-connect");
        let stderr_path = dir.path.join("connect.stderr");
        let stderr = std::fs::File::create(&stderr_path).expect("create stderr file");
        let mut child = std::process::Command::new(forkline_bin())
            .args(["connect", &format!("tcp://{}", server.tcp_addr())])
            .env("RUST_LOG", "debug")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn forkline connect");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().map(std::io::BufReader::new);
        BareConnect {
            child,
            stdin,
            stdout,
            stderr_path,
            _dir: dir,
        }
    }

    fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Sends one request and returns the first line on stdout. The line is
    /// read on a thread only so that a broken bridge cannot hang the test;
    /// the thread hands the read end back.
    fn call(&mut self, id: Value, method: &str) -> Value {
        use std::io::{BufRead, Write};
        let request = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": {}});
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{request}").expect("write to connect's stdin");
        stdin.flush().expect("flush connect's stdin");
        let mut stdout = self.stdout.take().expect("stdout open");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let read = stdout.read_line(&mut line);
            let _ = tx.send((read.map(|_| line), stdout));
        });
        let (line, stdout) = rx.recv_timeout(PATIENCE).unwrap_or_else(|_| {
            panic!(
                "no answer through connect within {PATIENCE:?}; stderr:\n{}",
                self.stderr_text()
            )
        });
        self.stdout = Some(stdout);
        let line = line.expect("read connect's stdout");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad JSON ({e}): {line}"))
    }

    /// Closes stdout's read end only: the client has gone away, while
    /// connect's stdin stays open.
    fn drop_stdout_reader(&mut self) {
        self.stdout = None;
    }

    /// Polls until connect exits; panics after `timeout`.
    fn wait_exit(&mut self, timeout: std::time::Duration) -> std::process::ExitStatus {
        let mut status = None;
        poll_until(timeout, || {
            status = self.child.try_wait().expect("try_wait connect");
            status.is_some()
        });
        status.unwrap_or_else(|| {
            panic!(
                "connect still running after {timeout:?}; stderr:\n{}",
                self.stderr_text()
            )
        })
    }
}

impl Drop for BareConnect {
    fn drop(&mut self) {
        self.stdin = None;
        self.stdout = None;
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn connect_exits_0_when_its_stdout_reader_goes_away() {
    // The server would hold the session forever: only connect noticing its
    // own client is gone can end it (issue 10, item 7).
    let server = serve_fake(&["--idle-timeout", "0"]);
    let mut bridge = BareConnect::spawn(&server);
    assert_echo(&bridge.call(json!(1), "hello"), &json!(1), "hello");

    bridge.drop_stdout_reader();
    let status = bridge.wait_exit(PATIENCE);
    assert_eq!(
        status.code(),
        Some(0),
        "connect exit after its stdout reader went away; stderr:\n{}",
        bridge.stderr_text()
    );
    assert!(
        bridge.stderr_text().contains("reason=stdout_closed"),
        "stderr:\n{}",
        bridge.stderr_text()
    );
    // Its closing the connection ends the session on the server.
    server.wait_for_log("reason=client_closed");
}

#[test]
fn connect_exits_0_when_its_stdout_reader_goes_away_during_a_flood() {
    // The server floods and nobody reads: connect's buffer toward stdout
    // fills and it stops reading the socket (backpressure); then the
    // reader goes away, which is no error.
    let server = serve_fake(&["--idle-timeout", "0"]);
    let mut bridge = BareConnect::spawn(&server);
    let mut guard = StrayGuard::new();
    let env = FakeEnv::from_result(&bridge.call(json!(1), "fake/env")["result"]);
    guard.watch_env(&env);
    assert_echo(
        &bridge.call(json!(2), "fake/flood"),
        &json!(2),
        "fake/flood",
    );

    bridge.drop_stdout_reader();
    let status = bridge.wait_exit(PATIENCE);
    assert_eq!(
        status.code(),
        Some(0),
        "connect exit after its stdout reader went away mid-flood; stderr:\n{}",
        bridge.stderr_text()
    );
    // The server ends the session however it sees the close (a reset if
    // the flood was still in its buffers); its child must be gone.
    server.wait_for_log("session closed");
    assert_all_gone(&[env.pid], "session child after connect's client left");
}

// ---- `forkline stdio` exit status (issue 10, defect 12) -------------------
//
// PRODUCT.md, "stdio": 0 when the child exited 0, the child's own code when
// it exited non-zero, 128+N when signal N killed it, 1 when it could not
// start: the client that launched forkline sees what it would have seen
// launching the server itself.

/// `forkline stdio -- fake`, with the child's pid watched.
fn stdio_fake(guard: &mut StrayGuard) -> (Piped, FakeEnv) {
    let child = fake_server(&[]);
    let mut forkline = Piped::spawn(&stdio_args(&child));
    let env = FakeEnv::from_result(&forkline.call(json!(1), "fake/env", json!({}))["result"]);
    guard.watch_env(&env);
    (forkline, env)
}

#[test]
fn stdio_exits_with_the_childs_own_code() {
    let mut guard = StrayGuard::new();
    let (mut forkline, env) = stdio_fake(&mut guard);
    // Our stdin stays open: the child's exit alone ends the session.
    forkline.request(json!(2), "fake/exit", json!({"code": 3}));
    let message = assert_error(&forkline.recv(), -32002, &json!(2));
    assert!(
        mentions_exit_status(&message, 3),
        "the exit status is missing: {message}"
    );
    let status = forkline.wait_exit(PATIENCE);
    assert_eq!(
        status.code(),
        Some(3),
        "forkline's exit status after its child exited 3; stderr:\n{}",
        forkline.stderr_text()
    );
    assert_all_gone(&[env.pid], "the child");
}

#[test]
fn stdio_exits_0_when_the_child_exits_0_on_its_own() {
    let mut guard = StrayGuard::new();
    let (mut forkline, env) = stdio_fake(&mut guard);
    forkline.request(json!(2), "fake/exit", json!({"code": 0}));
    assert_error(&forkline.recv(), -32002, &json!(2));
    let status = forkline.wait_exit(PATIENCE);
    assert_eq!(
        status.code(),
        Some(0),
        "forkline's exit status after its child exited 0; stderr:\n{}",
        forkline.stderr_text()
    );
    assert_all_gone(&[env.pid], "the child");
}

#[test]
fn stdio_exits_128_plus_the_signal_that_killed_the_child() {
    for (script, signal) in [("kill -9 $$", 9), ("kill -TERM $$", 15)] {
        let mut forkline = Piped::spawn(&["stdio", "--", "sh", "-c", script]);
        let status = forkline.wait_exit(PATIENCE);
        assert_eq!(
            status.code(),
            Some(128 + signal),
            "forkline's exit status after `sh -c '{script}'`; stderr:\n{}",
            forkline.stderr_text()
        );
    }
}

#[test]
fn stdio_exits_1_when_the_command_cannot_start_and_answers_with_32002() {
    let requests = [
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}),
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        json!({"jsonrpc": "2.0", "id": "two", "method": "tools/list"}),
    ];
    let input: String = requests.iter().map(|r| format!("{r}\n")).collect();
    let run = run_forkline(
        &["stdio", "--", "/nonexistent/mcp-server", "--flag"],
        input.as_bytes(),
    );
    assert_eq!(run.status.code(), Some(1), "exit status: {run:?}");
    let answers: Vec<Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON ({e}): {l}")))
        .collect();
    assert_eq!(
        answers.len(),
        2,
        "one answer per request, none for the notification: {run:?}"
    );
    for (answer, id) in answers.iter().zip([json!(1), json!("two")]) {
        let message = assert_error(answer, -32002, &id);
        assert!(
            message.contains("/nonexistent/mcp-server"),
            "the answer does not name the command: {message}"
        );
    }
}
