//! `serve --prespawn N`: children started ahead, handed to new sessions,
//! replaced when taken or when they die while waiting, counted against
//! `--max-sessions`, and ended at shutdown.

mod common;

use std::collections::HashSet;

use common::*;
use serde_json::json;

/// Live (not zombie) children of forkline.
fn live_children(forkline: &Forkline) -> HashSet<u32> {
    children_of(forkline.pid())
        .into_iter()
        .filter(|(_, state)| *state != 'Z')
        .map(|(pid, _)| pid)
        .collect()
}

fn wait_children(forkline: &Forkline, n: usize) -> HashSet<u32> {
    let mut live = HashSet::new();
    let settled = poll_until(PATIENCE, || {
        live = live_children(forkline);
        live.len() == n
    });
    assert!(
        settled,
        "forkline has {} children {live:?}, expected {n}; log:\n{}",
        live.len(),
        forkline.stderr_text()
    );
    live
}

/// Waits until every child in `pids` is in the pool, not just started: the
/// pool logs `warm child … started pid=P` under its lock as it queues P,
/// so once the line is out, a session's `take` finds P.
fn wait_queued(forkline: &Forkline, pids: &HashSet<u32>) {
    for pid in pids {
        let line_end = format!(" started pid={pid}");
        let queued = poll_until(PATIENCE, || {
            forkline
                .stderr_lines()
                .iter()
                .any(|l| l.ends_with(&line_end))
        });
        assert!(
            queued,
            "warm child {pid} never queued; log:\n{}",
            forkline.stderr_text()
        );
    }
}

#[test]
fn a_session_takes_a_warm_child_and_the_pool_refills() {
    let forkline = Forkline::serve_tcp(&["--prespawn", "2"], &fake_server(&[]));
    let mut guard = StrayGuard::new();
    let warm = wait_children(&forkline, 2);
    warm.iter().for_each(|&pid| guard.watch(pid));
    wait_queued(&forkline, &warm);

    let mut client = forkline.connect();
    let env = client.fake_env(1);
    guard.watch_env(&env);
    assert!(
        warm.contains(&env.pid),
        "the session got a child started before it: {} not in {warm:?}",
        env.pid
    );
    let name = env.session_id.clone().unwrap_or_default();
    assert!(name.starts_with("warm-"), "FORKLINE_SESSION_ID {name:?}");
    assert_eq!(env.peer.as_deref(), Some(""), "a warm child knows no peer");
    forkline.wait_for_log(&format!("warm_child={name}"));
    // One in use, two waiting again.
    let now = wait_children(&forkline, 3);
    now.iter().for_each(|&pid| guard.watch(pid));
    assert!(now.contains(&env.pid));
}

#[test]
fn a_warm_child_that_dies_while_waiting_is_replaced_and_logged() {
    let forkline = Forkline::serve_tcp(&["--prespawn", "1"], &fake_server(&[]));
    let mut guard = StrayGuard::new();
    let first = wait_children(&forkline, 1);
    let &victim = first.iter().next().expect("one warm child");
    guard.watch(victim);
    // SAFETY: kill(2) of forkline's own child, found just above.
    assert_eq!(unsafe { libc::kill(victim as i32, libc::SIGKILL) }, 0);
    forkline.wait_for_log("exited while waiting");
    let mut replaced = HashSet::new();
    let ok = poll_until(PATIENCE, || {
        replaced = live_children(&forkline);
        replaced.len() == 1 && !replaced.contains(&victim)
    });
    replaced.iter().for_each(|&pid| guard.watch(pid));
    assert!(ok, "no replacement for {victim}: {replaced:?}");
    wait_queued(&forkline, &replaced);
    // And the replacement serves a session.
    let mut client = forkline.connect();
    let env = client.fake_env(1);
    assert!(
        replaced.contains(&env.pid),
        "{} not in {replaced:?}",
        env.pid
    );
}

#[test]
fn the_pool_counts_against_max_sessions() {
    let forkline = Forkline::serve_tcp(
        &["--prespawn", "2", "--max-sessions", "2"],
        &fake_server(&[]),
    );
    let mut guard = StrayGuard::new();
    wait_children(&forkline, 2)
        .iter()
        .for_each(|&pid| guard.watch(pid));
    let mut a = forkline.connect();
    let mut b = forkline.connect();
    guard.watch(a.fake_env(1).pid);
    let b_pid = b.fake_env(2).pid;
    guard.watch(b_pid);
    // Two sessions, no room left: no warm child beyond them.
    wait_children(&forkline, 2);
    let mut third = forkline.connect();
    let refusal = third.recv();
    assert_error(&refusal, -32001, &json!(null));
    // A session ends: the room goes back to the pool.
    drop(a);
    forkline.wait_for_log("[s1] session closed");
    let mut waiting = wait_children(&forkline, 2);
    waiting.remove(&b_pid);
    waiting.iter().for_each(|&pid| guard.watch(pid));
    wait_queued(&forkline, &waiting);
    let mut c = forkline.connect();
    let env = c.fake_env(3);
    guard.watch(env.pid);
    assert!(
        env.session_id
            .as_deref()
            .is_some_and(|s| s.starts_with("warm-")),
        "{env:?}"
    );
}

#[test]
fn shutdown_ends_the_waiting_children() {
    let mut forkline = Forkline::serve_tcp(&["--prespawn", "3"], &fake_server(&[]));
    let warm: Vec<u32> = wait_children(&forkline, 3).into_iter().collect();
    let mut guard = StrayGuard::new();
    warm.iter().for_each(|&pid| guard.watch(pid));
    forkline.signal(libc::SIGTERM);
    let status = forkline.wait_exit(PATIENCE);
    assert_eq!(status.code(), Some(0), "{}", forkline.stderr_text());
    assert_all_gone(&warm, "warm children after SIGTERM");
}

#[test]
fn prespawn_values_out_of_range_name_the_flag() {
    for bad in ["-1", "10001", "x"] {
        let out = std::process::Command::new(forkline_bin())
            .args(["serve", "--prespawn", bad])
            .output()
            .expect("forkline runs");
        assert_eq!(out.status.code(), Some(2), "--prespawn {bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--prespawn"), "--prespawn {bad}: {err}");
    }
}

#[test]
fn the_admin_endpoint_reports_the_pools_size() {
    let child = fake_server(&[]);
    let mut args = vec![
        "--tcp",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--prespawn",
        "2",
        "--",
    ];
    args.extend(child.iter().map(String::as_str));
    let forkline = Forkline::serve(&args, 2);
    let mut guard = StrayGuard::new();
    wait_children(&forkline, 2)
        .iter()
        .for_each(|&pid| guard.watch(pid));
    let admin = forkline
        .listening
        .iter()
        .find_map(|l| l.strip_prefix("admin http://"))
        .expect("an admin listener")
        .to_string();
    let gauge = || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&admin).expect("admin connects");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .expect("request");
        let mut text = String::new();
        s.read_to_string(&mut text).expect("answer");
        text.lines()
            .find_map(|l| l.strip_prefix("forkline_warm_pool_children "))
            .map(str::to_string)
    };
    assert!(
        poll_until(PATIENCE, || gauge().as_deref() == Some("2")),
        "forkline_warm_pool_children: {:?}",
        gauge()
    );
}
