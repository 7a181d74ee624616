//! Session lifecycle: whichever way a session ends, its child and the
//! child's grandchildren are gone and reaped; hundreds of sessions leave
//! no thread, descriptor or zombie behind; and one misbehaving session
//! (a flooding child its client never reads, a client flooding a child
//! that never reads) neither slows another nor grows forkline's memory.

mod common;

use std::io::{ErrorKind, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use serde_json::json;

/// Opens one session and returns it with its child's environment, after
/// checking the grandchild is alive and in the child's process group.
fn open_session(forkline: &Forkline, guard: &mut StrayGuard) -> (Client, FakeEnv) {
    let mut client = forkline.connect();
    let env = client.fake_env(1);
    guard.watch_env(&env);
    let grandchild = env
        .grandchild_pid
        .expect("fixture started with a grandchild");
    assert!(
        pid_alive(env.pid) && pid_alive(grandchild),
        "child or grandchild not running: {env:?}"
    );
    let stat =
        std::fs::read_to_string(format!("/proc/{grandchild}/stat")).expect("grandchild stat");
    let pgrp: u32 = stat[stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        pgrp, env.pid,
        "grandchild is not in the child's process group"
    );
    (client, env)
}

/// After a session ended: child and grandchild gone, nothing unreaped, and
/// the end logged with `reason`.
fn assert_session_cleaned_up(forkline: &Forkline, env: &FakeEnv, reason: &str) {
    assert_all_gone(
        &[env.pid, env.grandchild_pid.unwrap()],
        "child and grandchild",
    );
    assert_no_zombies(forkline.pid());
    let sid = env.session_id.as_deref().expect("session id");
    let mut line = None;
    poll_until(PATIENCE, || {
        line = forkline.stderr_lines().into_iter().find(|l| {
            l.contains("session closed")
                && l.contains(sid)
                && l.contains(&format!("reason={reason}"))
        });
        line.is_some()
    });
    assert!(
        line.is_some(),
        "no `session closed reason={reason}` for {sid}; log:\n{}",
        forkline.stderr_text()
    );
}

#[test]
fn client_close_ends_child_and_grandchild() {
    let forkline = Forkline::serve_tcp(&[], &fake_server(&["--grandchild"]));
    let mut guard = StrayGuard::new();
    let (client, env) = open_session(&forkline, &mut guard);
    drop(client);
    assert_session_cleaned_up(&forkline, &env, "client_closed");
}

#[test]
fn child_exit_ends_the_session_and_the_grandchild() {
    let forkline = Forkline::serve_tcp(&[], &fake_server(&["--grandchild", "--crash-after", "1"]));
    let mut guard = StrayGuard::new();
    let (mut client, env) = open_session(&forkline, &mut guard);
    let err = client.call(json!(2), "boom", json!({}));
    assert_error(&err, -32002, &json!(2));
    assert!(
        client.closed_within(PATIENCE),
        "session not closed after its child exited"
    );
    assert_session_cleaned_up(&forkline, &env, "child_exited");
}

#[test]
fn idle_timeout_ends_child_and_grandchild() {
    let forkline = Forkline::serve_tcp(&["--idle-timeout", "0.5"], &fake_server(&["--grandchild"]));
    let mut guard = StrayGuard::new();
    let (mut client, env) = open_session(&forkline, &mut guard);
    assert!(client.closed_within(PATIENCE), "idle session not closed");
    assert_session_cleaned_up(&forkline, &env, "idle_timeout");
}

#[test]
fn a_child_ignoring_stdin_eof_and_sigterm_is_killed() {
    let forkline = Forkline::serve_tcp(
        &["--shutdown-grace", "0.2"],
        &fake_server(&["--grandchild", "--ignore-stdin-eof", "--ignore-sigterm"]),
    );
    let mut guard = StrayGuard::new();
    let (client, env) = open_session(&forkline, &mut guard);
    drop(client);
    assert_session_cleaned_up(&forkline, &env, "client_closed");
}

#[test]
fn a_grandchild_holding_the_pipes_does_not_keep_an_exited_child_session_alive() {
    // The grandchild inherits the child's stdout and stderr, so those
    // pipes stay open after the child exits: the session must still end
    // on the child's exit, and take the grandchild with it.
    let forkline = Forkline::serve_tcp(
        &[],
        &fake_server(&["--grandchild-keeps-stdio", "--crash-after", "1"]),
    );
    let mut guard = StrayGuard::new();
    let (mut client, env) = open_session(&forkline, &mut guard);
    client.request(json!(2), "boom", json!({}));
    let Some(line) = client.recv_line_within(PATIENCE) else {
        panic!(
            "no answer to the request that crashed the child within {PATIENCE:?}: child {} is {:?} \
             (Z = exited, not reaped), grandchild holding its pipes is {:?}; log:\n{}",
            env.pid,
            process_state(env.pid),
            process_state(env.grandchild_pid.unwrap()),
            forkline.stderr_text()
        )
    };
    let err: serde_json::Value = serde_json::from_str(&line).expect("JSON");
    let message = assert_error(&err, -32002, &json!(2));
    assert!(
        mentions_exit_status(&message, 3),
        "exit status missing: {message}"
    );
    assert!(
        client.closed_within(PATIENCE),
        "session not closed after its child exited"
    );
    assert_session_cleaned_up(&forkline, &env, "child_exited");
}

#[test]
fn a_grandchild_holding_the_pipes_does_not_outlive_a_closed_client() {
    let forkline = Forkline::serve_tcp(
        &["--shutdown-grace", "0.2"],
        &fake_server(&["--grandchild-keeps-stdio"]),
    );
    let mut guard = StrayGuard::new();
    let (client, env) = open_session(&forkline, &mut guard);
    drop(client);
    assert_session_cleaned_up(&forkline, &env, "client_closed");
}

/// Threads other than pool workers, and pool workers.
fn thread_census(pid: u32) -> (usize, usize) {
    let names = thread_names(pid);
    let workers = names.iter().filter(|n| n.starts_with("worker")).count();
    (names.len() - workers, workers)
}

#[test]
fn churn_of_500_sessions_leaks_no_thread_fd_or_zombie() {
    const CYCLES: usize = 500;
    const PARALLEL: usize = 4;
    const MAX_SESSIONS: usize = 16;
    // The built-in echo-server child: the quickest to start.
    let forkline = Forkline::serve(
        &[
            "--tcp",
            "127.0.0.1:0",
            "--max-sessions",
            "16",
            "--max-sessions-per-client",
            "16",
        ],
        1,
    );
    let pid = forkline.pid();
    let addr = forkline.tcp_addr();

    let mut first = forkline.connect();
    assert_eq!(first.call(json!(0), "ping", json!({}))["id"], json!(0));
    drop(first);
    forkline.wait_for_log("session closed");
    assert!(
        poll_until(PATIENCE, || children_of(pid).is_empty()),
        "first child not reaped"
    );
    let (base_threads, _) = thread_census(pid);
    let base_fds = fd_count(pid);

    std::thread::scope(|scope| {
        for t in 0..PARALLEL {
            scope.spawn(move || {
                for i in 0..CYCLES / PARALLEL {
                    let id = json!(format!("{t}-{i}"));
                    let mut client = Client::tcp(addr);
                    let reply = client.call(id.clone(), "ping", json!({}));
                    assert_eq!(reply["id"], id, "cycle {t}-{i}: {reply}");
                    assert!(reply.get("result").is_some(), "cycle {t}-{i}: {reply}");
                }
            });
        }
    });

    let closed = poll_until(PATIENCE, || {
        forkline
            .stderr_lines()
            .iter()
            .filter(|l| l.contains("session closed"))
            .count()
            > CYCLES
    });
    assert!(closed, "not every session logged its end");
    let settled = poll_until(PATIENCE, || {
        let (threads, workers) = thread_census(pid);
        threads <= base_threads
            && workers <= MAX_SESSIONS
            && fd_count(pid) <= base_fds
            && children_of(pid).is_empty()
    });
    assert!(
        settled,
        "after {CYCLES} sessions: threads {:?} (baseline {base_threads} besides workers), fds {} (baseline {base_fds}), children {:?}",
        thread_names(pid),
        fd_count(pid),
        children_of(pid)
    );
    assert_no_zombies(pid);
}

/// Waits until `pid` is blocked writing: asleep, with its written-byte
/// count unchanged between two looks. Gives up (returning false) once it
/// has written more than `limit` bytes or after `PATIENCE`.
fn wait_until_blocked_writing(pid: u32, limit: u64) -> bool {
    let mut last = None;
    let mut blocked = false;
    poll_until(PATIENCE, || {
        let written = bytes_written(pid).unwrap_or(0);
        if written > limit {
            return true;
        }
        let asleep = process_state(pid) == Some('S');
        blocked = asleep && last == Some(written);
        last = asleep.then_some(written);
        blocked
    });
    blocked
}

const MEMORY_BOUND: u64 = 64 * 1024 * 1024;

#[test]
fn a_flood_the_client_never_reads_is_held_back_and_does_not_slow_others() {
    let forkline = Forkline::serve_tcp(&["--shutdown-grace", "0.2"], &fake_server(&[]));
    let mut guard = StrayGuard::new();
    let mut flooded = forkline.connect();
    let flood_env = flooded.fake_env(1);
    guard.watch_env(&flood_env);
    flooded.request(json!("flood"), "fake/flood", json!({}));

    let mut other = forkline.connect();
    let other_env = other.fake_env(2);
    guard.watch_env(&other_env);
    for i in 0..100 {
        assert_echo(
            &other.call(json!(i), "meanwhile", json!({"i": i})),
            &json!(i),
            "meanwhile",
        );
    }

    // Kernel buffers on the way (pipe, both socket buffers) hold a few tens
    // of MiB at most; a proxy that keeps reading would let the child write
    // far more than this.
    const NEVER_BLOCKED: u64 = 512 * 1024 * 1024;
    assert!(
        wait_until_blocked_writing(flood_env.pid, NEVER_BLOCKED),
        "the flooding child never blocked ({} MiB written): forkline keeps reading what its client does not",
        bytes_written(flood_env.pid).unwrap_or(0) >> 20
    );
    let rss = rss_bytes(forkline.pid());
    assert!(
        rss < MEMORY_BOUND,
        "forkline holds {} MiB while a client does not read",
        rss >> 20
    );
    assert_echo(
        &other.call(json!("after"), "after", json!({})),
        &json!("after"),
        "after",
    );

    // Held back, not lost: the flood arrives whole and in order.
    let first = flooded.recv();
    assert_echo(&first, &json!("flood"), "fake/flood");
    for seq in 0..2000 {
        let note = flooded.recv();
        assert_eq!(
            note["params"]["seq"],
            json!(seq),
            "flood out of order or lost"
        );
    }

    drop(flooded);
    assert_all_gone(&[flood_env.pid], "flooding child after its client closed");
    assert!(pid_alive(other_env.pid), "the other session's child died");
    assert_no_zombies(forkline.pid());
}

/// Opens a session whose child stops reading, then writes ~1 KiB requests
/// into it until the socket stops taking them (a write that makes no
/// progress for a second counts as blocked). Returns the client, a raw
/// handle on its socket and the child's environment.
fn flood_a_child_that_never_reads(
    forkline: &Forkline,
    guard: &mut StrayGuard,
) -> (Client, TcpStream, FakeEnv) {
    const CHUNK_LINES: usize = 64;
    const NEVER_BLOCKED: usize = 512 * 1024 * 1024;
    let stream = TcpStream::connect(forkline.tcp_addr()).expect("connect");
    let mut raw = stream.try_clone().expect("clone");
    let mut flooder = Client::from_tcp_stream(stream);
    let env = flooder.fake_env(1);
    guard.watch_env(&env);
    assert_echo(
        &flooder.call(json!(2), "fake/stop-reading", json!({})),
        &json!(2),
        "fake/stop-reading",
    );

    raw.set_write_timeout(Some(Duration::from_secs(1)))
        .expect("write timeout");
    let mut chunk = Vec::new();
    let pad = "p".repeat(960);
    let mut sent = 0usize;
    let mut blocked = false;
    let mut n = 100u64;
    while sent < NEVER_BLOCKED {
        chunk.clear();
        for _ in 0..CHUNK_LINES {
            n += 1;
            writeln!(
                chunk,
                r#"{{"jsonrpc":"2.0","id":{n},"method":"flood","params":{{"pad":"{pad}"}}}}"#
            )
            .unwrap();
        }
        match raw.write(&chunk) {
            Ok(written) => sent += written,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                blocked = true;
                break;
            }
            Err(e) => panic!("forkline dropped the flooding client after {sent} bytes: {e}"),
        }
    }
    assert!(
        blocked,
        "forkline took {} MiB from a client whose child reads nothing",
        sent >> 20
    );
    (flooder, raw, env)
}

#[test]
fn a_client_flooding_a_child_that_never_reads_is_held_back_and_does_not_slow_others() {
    let mut forkline = Forkline::serve_tcp(&["--shutdown-grace", "0.2"], &fake_server(&[]));
    let mut guard = StrayGuard::new();
    let (_flooder, _raw, env) = flood_a_child_that_never_reads(&forkline, &mut guard);
    let rss = rss_bytes(forkline.pid());
    assert!(
        rss < MEMORY_BOUND,
        "forkline holds {} MiB while a child does not read",
        rss >> 20
    );

    let mut other = forkline.connect();
    let other_env = other.fake_env(3);
    guard.watch_env(&other_env);
    for i in 0..100 {
        assert_echo(
            &other.call(json!(i), "meanwhile", json!({"i": i})),
            &json!(i),
            "meanwhile",
        );
    }

    // The held-back session still ends cleanly at shutdown, though its
    // client has a backlog forkline will never read.
    forkline.signal(libc::SIGTERM);
    let status = forkline.wait_exit(PATIENCE);
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM");
    assert_all_gone(&[env.pid, other_env.pid], "children after shutdown");
}

#[test]
fn a_client_that_aborts_while_held_back_ends_its_session() {
    // The client resets its connection (RST) while forkline has stopped
    // reading it: the session must still end with its child, not linger
    // until the idle timeout (300 s by default).
    let forkline = Forkline::serve_tcp(&["--shutdown-grace", "0.2"], &fake_server(&[]));
    let mut guard = StrayGuard::new();
    let (flooder, raw, env) = flood_a_child_that_never_reads(&forkline, &mut guard);
    abort_on_close(&raw);
    drop(flooder);
    drop(raw);
    assert_all_gone(
        &[env.pid],
        "the non-reading child after its client reset the connection",
    );
    forkline.wait_for_log("reason=client_closed");
    assert_no_zombies(forkline.pid());
}
