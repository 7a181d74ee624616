//! The file-descriptor limit is a limit like any other (issue 10, defect
//! 5): forkline warns at start when `--max-sessions` is more than its
//! descriptors allow, a client past the ceiling gets a -32001 line naming
//! the descriptor limit (never a reset, never a session whose child cannot
//! start), a burst of them is drained from the backlog, and the sessions
//! already running go on.

mod common;

use std::process::Command;

use common::*;
use serde_json::{Value, json};

const FD_LIMIT: u64 = 64;

fn limit_fds(command: &mut Command) {
    common::limit_fds(command, FD_LIMIT);
}

/// A notification with a marker; `cat` as the child echoes it back.
fn ping(n: usize) -> String {
    json!({"jsonrpc": "2.0", "method": "test/ping", "params": {"n": n}}).to_string()
}

fn assert_echoed(msg: &Value, n: usize) {
    assert_eq!(
        msg["params"]["n"],
        json!(n),
        "not the echo of ping {n}: {msg}"
    );
}

#[test]
fn at_the_descriptor_ceiling_clients_are_told_why_and_running_sessions_go_on() {
    let forkline = Forkline::serve_configured(
        &[
            "--tcp",
            "127.0.0.1:0",
            "--max-sessions",
            "100",
            "--max-sessions-per-client",
            "100",
            "--",
            "cat",
        ],
        1,
        limit_fds,
    );
    let warning = forkline.wait_for_log("more than the descriptor limit allows");
    assert!(
        warning.contains("--max-sessions 100") && warning.contains(&FD_LIMIT.to_string()),
        "the warning names both figures: {warning}"
    );

    // Fill every session the limit allows; the next one is refused.
    let mut live = Vec::new();
    let refusal = (0..100)
        .find_map(|n| {
            let mut client = forkline.connect();
            client.send(&ping(n));
            let msg = client.recv();
            if msg.get("error").is_some() {
                return Some((msg, client));
            }
            assert_echoed(&msg, n);
            live.push(client);
            None
        })
        .map(|(msg, mut client)| {
            assert!(client.closed_within(PATIENCE), "a refused client is closed");
            msg
        })
        .unwrap_or_else(|| panic!("100 sessions under a {FD_LIMIT}-fd limit"));
    let text = assert_error(&refusal, -32001, &Value::Null);
    assert!(
        text.contains("file descriptor limit") && text.contains(&FD_LIMIT.to_string()),
        "the refusal names the descriptor limit: {text}"
    );
    assert!(
        live.len() >= 5,
        "only {} sessions fit in {FD_LIMIT} fds",
        live.len()
    );

    // A burst at the ceiling: every connection in the backlog gets its
    // line and is closed; none waits unseen.
    let mut burst: Vec<Client> = (0..20).map(|_| forkline.connect()).collect();
    for client in &mut burst {
        assert_error(&client.recv(), -32001, &Value::Null);
        assert!(client.closed_within(PATIENCE));
    }

    // The sessions already running are unharmed.
    for (i, client) in live.iter_mut().enumerate() {
        client.send(&ping(1000 + i));
        assert_echoed(&client.recv(), 1000 + i);
    }

    // One ends; its room is taken by the next client.
    let mut closing = live.pop().expect("a live session");
    closing.close_write();
    assert!(closing.closed_within(PATIENCE));
    let admitted = poll_until(PATIENCE, || {
        let mut client = forkline.connect();
        client.send(&ping(5000));
        let msg = client.recv();
        if msg.get("error").is_some() {
            return false;
        }
        assert_echoed(&msg, 5000);
        live.push(client);
        true
    });
    assert!(
        admitted,
        "no room after a session ended; log:\n{}",
        forkline.stderr_text()
    );
    assert!(
        !forkline.stderr_text().contains("Too many open files"),
        "forkline ran out of descriptors instead of refusing; log:\n{}",
        forkline.stderr_text()
    );
}
