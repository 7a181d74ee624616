//! Resources come back (issue 10, defect 6): after a burst of sessions
//! closes, forkline's threads and descriptors return to their idle level —
//! the workers that served the burst exit once idle for 5 s and are
//! joined — instead of staying for the life of the process.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

const BURST: usize = 100;

#[test]
fn after_a_burst_threads_and_descriptors_return_to_their_idle_level() {
    // 200 sessions fit under 700 descriptors at three each, not at four:
    // the wiring of a proxy sized for the most sessions (tests/child_stdin.rs).
    let forkline = Forkline::serve_tcp_configured(
        &["--max-sessions", "200", "--max-sessions-per-client", "200"],
        &["cat".to_string()],
        |command| limit_fds(command, 700),
    );
    let pid = forkline.pid();
    let (idle_threads, idle_fds) = (thread_count(pid), fd_count(pid));

    let mut clients: Vec<Client> = (0..BURST).map(|_| forkline.connect()).collect();
    for (n, client) in clients.iter_mut().enumerate() {
        let ping = json!({"jsonrpc": "2.0", "method": "test/ping", "params": {"n": n}});
        client.send(&ping.to_string());
        assert_eq!(
            client.recv()["params"]["n"],
            json!(n),
            "session {n} answers"
        );
    }
    let (busy_threads, busy_fds) = (thread_count(pid), fd_count(pid));
    assert!(
        busy_threads >= idle_threads + BURST,
        "one thread per session: {idle_threads} idle, {busy_threads} with {BURST} sessions"
    );
    assert!(
        busy_fds <= idle_fds + 3 * BURST + 8,
        "at most 3 descriptors per session: {idle_fds} idle, {busy_fds} with {BURST} sessions"
    );

    drop(clients);
    // Descriptors go with the sessions; threads after the workers' linger.
    let recovered = poll_until(Duration::from_secs(5) + PATIENCE, || {
        thread_count(pid) <= idle_threads && fd_count(pid) <= idle_fds
    });
    assert!(
        recovered,
        "not back to idle ({idle_threads} threads, {idle_fds} fds): {} threads {:?}, {} fds",
        thread_count(pid),
        thread_names(pid),
        fd_count(pid)
    );
    assert_no_zombies(pid);
}
