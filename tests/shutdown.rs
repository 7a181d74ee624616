//! Shutdown on SIGTERM/SIGINT: listeners close at once (no new sessions,
//! Unix socket file removed), in-flight requests get the grace to be
//! answered and -32004 after it, every child and grandchild is ended, and
//! forkline exits 0. A second signal skips the grace.

mod common;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// The pid of the (single) fixture child forkline is running.
fn only_child(forkline: &Forkline) -> u32 {
    let mut pid = None;
    poll_until(PATIENCE, || {
        pid = children_of(forkline.pid())
            .into_iter()
            .map(|(p, _)| p)
            .find(|p| cmdline(*p).contains("fake_mcp_server"));
        pid.is_some()
    });
    pid.expect("a fixture child")
}

/// Sends request `id` and waits until the child has read it (the fixture
/// runs with `--trace` and forkline logs the child's stderr).
fn request_in_flight(
    forkline: &Forkline,
    client: &mut Client,
    id: serde_json::Value,
    method: &str,
) {
    client.request(id.clone(), method, json!({}));
    forkline.wait_for_log(&format!("fake: received {method} id={id}"));
}

#[test]
fn an_in_flight_request_is_answered_within_the_grace() {
    let mut forkline = Forkline::serve_tcp(
        &["--shutdown-grace", "5"],
        &fake_server(&["--delay-ms", "1000", "--trace"]),
    );
    let mut guard = StrayGuard::new();
    let mut client = forkline.connect();
    request_in_flight(&forkline, &mut client, json!(9), "slow");
    let child = only_child(&forkline);
    guard.watch(child);

    forkline.signal(libc::SIGTERM);
    assert_echo(&client.recv(), &json!(9), "slow");
    closed_and_exited_cleanly(&mut forkline, &mut client, child);
}

#[test]
fn an_unanswered_request_gets_shutting_down_error_after_the_grace() {
    let mut forkline = Forkline::serve_tcp(
        &["--shutdown-grace", "0.5"],
        &fake_server(&["--hang", "--trace"]),
    );
    let mut guard = StrayGuard::new();
    let mut client = forkline.connect();
    request_in_flight(&forkline, &mut client, json!("h1"), "never");
    let child = only_child(&forkline);
    guard.watch(child);

    forkline.signal(libc::SIGTERM);
    let message = assert_error(&client.recv(), -32004, &json!("h1"));
    assert!(!message.is_empty());
    closed_and_exited_cleanly(&mut forkline, &mut client, child);
    forkline.wait_for_log("reason=shutdown");
}

#[test]
fn sigint_shuts_down_the_same_way() {
    let mut forkline = Forkline::serve_tcp(
        &["--shutdown-grace", "0.5"],
        &fake_server(&["--hang", "--trace"]),
    );
    let mut guard = StrayGuard::new();
    let mut client = forkline.connect();
    request_in_flight(&forkline, &mut client, json!(77), "never");
    let child = only_child(&forkline);
    guard.watch(child);

    forkline.signal(libc::SIGINT);
    assert_error(&client.recv(), -32004, &json!(77));
    let status = forkline.wait_exit(PATIENCE);
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGINT; log:\n{}",
        forkline.stderr_text()
    );
    assert_all_gone(&[child], "child after SIGINT");
}

#[test]
fn listeners_close_at_once_and_a_second_signal_skips_the_grace() {
    const GRACE: Duration = Duration::from_secs(30);
    let dir = TempDir::new("forkline-shutdown");
    let path = dir.path.join("s.sock");
    let child_cmd = fake_server(&["--hang", "--trace"]);
    let mut args = vec![
        "--tcp",
        "127.0.0.1:0",
        "--unix",
        path.to_str().unwrap(),
        "--shutdown-grace",
        "30",
        "--",
    ];
    args.extend(child_cmd.iter().map(|s| s.as_str()));
    let mut forkline = Forkline::serve(&args, 2);
    let addr = forkline.tcp_addr();
    let mut guard = StrayGuard::new();
    let mut client = forkline.connect();
    request_in_flight(&forkline, &mut client, json!(5), "never");
    let child = only_child(&forkline);
    guard.watch(child);

    let first_signal = Instant::now();
    forkline.signal(libc::SIGTERM);
    // During the (30 s) grace: no new connection over TCP or Unix, and the
    // socket file is gone.
    let closed = poll_until(PATIENCE, || {
        TcpStream::connect(addr).is_err() && std::os::unix::net::UnixStream::connect(&path).is_err()
    });
    assert!(closed, "listeners still accept connections after SIGTERM");
    assert!(
        !path.exists(),
        "unix socket file {} still there after SIGTERM",
        path.display()
    );
    assert!(
        forkline.try_exit_status().is_none(),
        "exited before the grace with a request in flight"
    );

    forkline.signal(libc::SIGTERM);
    assert_error(&client.recv(), -32004, &json!(5));
    let status = forkline.wait_exit(PATIENCE);
    assert_eq!(status.code(), Some(0), "exit status after a second SIGTERM");
    assert!(
        first_signal.elapsed() < GRACE,
        "the second signal did not skip the {GRACE:?} grace"
    );
    assert_all_gone(&[child], "child after shutdown");
}

#[test]
fn shutdown_ends_idle_sessions_and_stubborn_children_with_their_grandchildren() {
    let mut forkline = Forkline::serve_tcp(
        &["--shutdown-grace", "0.2"],
        &fake_server(&["--grandchild", "--ignore-stdin-eof", "--ignore-sigterm"]),
    );
    let mut guard = StrayGuard::new();
    let mut clients: Vec<Client> = (0..3).map(|_| forkline.connect()).collect();
    let envs: Vec<FakeEnv> = clients
        .iter_mut()
        .enumerate()
        .map(|(i, c)| c.fake_env(i as u64))
        .collect();
    let mut pids = Vec::new();
    for env in &envs {
        guard.watch_env(env);
        pids.push(env.pid);
        pids.push(env.grandchild_pid.expect("grandchild"));
    }

    forkline.signal(libc::SIGTERM);
    for client in &mut clients {
        assert!(
            client.closed_within(PATIENCE),
            "idle session not closed at shutdown"
        );
    }
    let status = forkline.wait_exit(PATIENCE);
    assert_eq!(
        status.code(),
        Some(0),
        "exit status; log:\n{}",
        forkline.stderr_text()
    );
    assert_all_gone(&pids, "children and grandchildren after shutdown");
}

/// After a shutdown: the session closed, forkline exited 0, its child is gone.
fn closed_and_exited_cleanly(forkline: &mut Forkline, client: &mut Client, child: u32) {
    assert!(
        client.closed_within(PATIENCE),
        "session not closed at shutdown"
    );
    let status = forkline.wait_exit(PATIENCE);
    assert_eq!(
        status.code(),
        Some(0),
        "exit status; log:\n{}",
        forkline.stderr_text()
    );
    assert_all_gone(&[child], "child after shutdown");
}
