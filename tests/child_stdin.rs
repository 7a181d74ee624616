//! How `serve` wires a child's stdin follows from its descriptor limit: a
//! pipe of its own (four descriptors a session) where the limit has room
//! for every session at four, else the socket pair the child's stderr is
//! on (three), so that the most sessions fit. Either way the child speaks
//! over it, gets end of file when the session ends, and the session holds
//! no more descriptors than the wiring says.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::json;

/// Sessions open at once to count descriptors.
const SESSIONS: usize = 20;

/// A child that first says what its stdin and stderr are, then echoes.
fn reporting_child() -> Vec<String> {
    let script = r#"printf '{"jsonrpc":"2.0","method":"test/fds","params":{"stdin":"%s","stderr":"%s"}}\n' "$(readlink /proc/$$/fd/0)" "$(readlink /proc/$$/fd/2)"; exec cat"#;
    vec!["sh".into(), "-c".into(), script.into()]
}

/// Runs `SESSIONS` sessions on a forkline set up by `configure`; checks
/// each one's child reports stdin as `stdin_kind` ("pipe" or "socket") and
/// answers, that forkline holds at most `fds_per_session` descriptors per
/// session and gets them all back, and that every child ends on its own
/// at end of input.
fn check_wiring(configure: impl FnOnce(&mut Command), stdin_kind: &str, fds_per_session: usize) {
    let args = ["--max-sessions-per-client", "64"];
    let forkline = Forkline::serve_tcp_configured(&args, &reporting_child(), configure);
    let logged = forkline.wait_for_log("fd_capacity=");
    assert!(
        logged.contains(&format!("child_stdin={stdin_kind}")),
        "the start-up line names the wiring: {logged}"
    );
    let pid = forkline.pid();
    let idle_fds = fd_count(pid);

    let mut clients: Vec<Client> = (0..SESSIONS).map(|_| forkline.connect()).collect();
    for (n, client) in clients.iter_mut().enumerate() {
        let fds = client.recv();
        let (stdin, stderr) = (
            fds["params"]["stdin"].as_str().unwrap_or_default(),
            fds["params"]["stderr"].as_str().unwrap_or_default(),
        );
        assert!(stderr.starts_with("socket:"), "stderr is the socket: {fds}");
        assert!(stdin.starts_with(&format!("{stdin_kind}:")), "stdin: {fds}");
        if stdin_kind == "socket" {
            assert_eq!(stdin, stderr, "one socket for stdin and stderr: {fds}");
        }
        client.send(
            &json!({"jsonrpc": "2.0", "method": "test/ping", "params": {"n": n}}).to_string(),
        );
        assert_eq!(
            client.recv()["params"]["n"],
            json!(n),
            "session {n} answers"
        );
    }
    let busy_fds = fd_count(pid);
    assert!(
        busy_fds <= idle_fds + fds_per_session * SESSIONS,
        "at most {fds_per_session} descriptors per session: {idle_fds} idle, \
         {busy_fds} with {SESSIONS} sessions"
    );

    drop(clients);
    let ended = poll_until(PATIENCE, || {
        forkline.stderr_text().matches("session closed").count() == SESSIONS
    });
    let log = forkline.stderr_text();
    assert!(ended, "every session closes; log:\n{log}");
    assert_eq!(
        log.matches("child=\"exit status 0\"").count(),
        SESSIONS,
        "every `cat` saw end of input and exited by itself; log:\n{log}"
    );
    assert!(
        poll_until(Duration::from_secs(5), || fd_count(pid) <= idle_fds),
        "descriptors back to {idle_fds}: {}",
        fd_count(pid)
    );
    assert_no_zombies(pid);
}

#[test]
fn where_the_limit_pays_for_four_descriptors_a_child_gets_a_stdin_pipe() {
    // 64 sessions at four each fit under 1,024.
    check_wiring(|command| limit_fds(command, 1024), "pipe", 4);
}

#[test]
fn under_a_tight_limit_a_child_shares_one_socket_for_stdin_and_stderr() {
    check_wiring(stdin_on_socket, "socket", 3);
}
