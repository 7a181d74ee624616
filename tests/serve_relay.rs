//! `serve` relays: one fresh child per connection, with its own session id
//! and peer in its environment; messages pass unchanged and in order both
//! ways; TCP and Unix listeners, alone or together; the built-in
//! echo-server is the default child.

mod common;

use std::collections::HashSet;
use std::io::Write;
use std::net::TcpStream;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixListener;

use common::*;
use serde_json::{Value, json};

#[test]
fn each_concurrent_client_gets_its_own_child_with_session_id_and_peer() {
    const CLIENTS: usize = 8;
    let forkline = Forkline::serve_tcp(&[], &fake_server(&[]));
    let mut guard = StrayGuard::new();

    // Open every connection first, so all eight sessions are live at once.
    let mut clients: Vec<(Client, String)> = (0..CLIENTS)
        .map(|_| {
            let stream = TcpStream::connect(forkline.tcp_addr()).expect("connect");
            let local = stream.local_addr().expect("local addr").to_string();
            (Client::from_tcp_stream(stream), local)
        })
        .collect();
    let envs: Vec<FakeEnv> = clients
        .iter_mut()
        .enumerate()
        .map(|(i, (client, _))| client.fake_env(i as u64))
        .collect();
    for env in &envs {
        guard.watch_env(env);
    }

    let pids: HashSet<u32> = envs.iter().map(|e| e.pid).collect();
    assert_eq!(
        pids.len(),
        CLIENTS,
        "children shared between sessions: {envs:?}"
    );
    let ids: HashSet<&str> = envs
        .iter()
        .map(|e| e.session_id.as_deref().expect("FORKLINE_SESSION_ID set"))
        .collect();
    assert_eq!(
        ids.len(),
        CLIENTS,
        "FORKLINE_SESSION_ID not distinct: {envs:?}"
    );
    for ((_, local), env) in clients.iter().zip(&envs) {
        assert_eq!(
            env.peer.as_deref(),
            Some(local.as_str()),
            "FORKLINE_PEER of {env:?}"
        );
        assert_eq!(
            env.pgid, env.pid,
            "child is not the leader of its own process group: {env:?}"
        );
        assert!(
            children_of(forkline.pid())
                .iter()
                .any(|(p, _)| *p == env.pid),
            "not forkline's child"
        );
        // The session's log lines carry the id the child was given.
        let opened = wait_for_log_word(&forkline, &format!("pid={}", env.pid));
        assert!(
            opened.contains(env.session_id.as_deref().unwrap()),
            "log line for child {} does not carry its session id {:?}: {opened}",
            env.pid,
            env.session_id
        );
    }
    drop(clients);
    assert_all_gone(
        &pids.into_iter().collect::<Vec<_>>(),
        "children after their clients closed",
    );
}

#[test]
fn bytes_pass_unchanged_in_both_directions() {
    let forkline = Forkline::serve_tcp(&[], &fake_server(&[]));
    let mut client = forkline.connect();
    // Unusual spacing, key order, escapes, number forms and non-ASCII: any
    // re-serialisation by the proxy would change at least one of them.
    let sent = r#"{"params":{"s":"h\u00e9llo \"q\" \\ \/ \t","u":"ünïcødé ☃ 😀","n":1.50,"e":1E+2,"z":[ ]} ,  "id" : 7,"method":"fake/raw","jsonrpc":"2.0"}"#;
    client.send(sent);
    let line = client
        .recv_raw_line_within(PATIENCE)
        .expect("an answer to fake/raw");
    let line = String::from_utf8(line).expect("UTF-8 answer");
    // The fake writes its answer with its own odd spacing (RAW_PREFIX in
    // the fixture); it must arrive exactly so.
    let prefix =
        r#"{"jsonrpc":"2.0", "result" : {"n": 1.50, "e": 1E+2, "u": "\u00e9 é ☃ 😀", "raw": "#;
    assert!(
        line.starts_with(prefix),
        "child's bytes changed on the way out: {line}"
    );
    assert!(
        line.ends_with(r#" }, "id" : 7}"#),
        "child's bytes changed on the way out: {line}"
    );
    let answer: Value = serde_json::from_str(&line).expect("answer parses");
    assert_eq!(
        answer["result"]["raw"], sent,
        "client's bytes changed on the way in"
    );
}

#[test]
fn crlf_is_tolerated_and_empty_lines_are_skipped() {
    let forkline = Forkline::serve_tcp(&[], &fake_server(&[]));
    let mut client = forkline.connect();
    client
        .send_raw(b"\n\r\n{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"crlf\",\"params\":{\"k\":\"v\"}}\r\n\n")
        .expect("send");
    // Nothing for the empty lines: the very next message is the answer.
    let answer = client.recv();
    assert_echo(&answer, &json!(1), "crlf");
    assert_eq!(answer["result"]["params"], json!({"k": "v"}));
    let answer = client.call(json!(2), "after", json!({}));
    assert_echo(&answer, &json!(2), "after");
}

#[test]
fn order_is_kept_for_200_pipelined_requests() {
    const N: usize = 200;
    let forkline = Forkline::serve_tcp(&[], &fake_server(&[]));
    let mut client = forkline.connect();
    let mut batch = Vec::new();
    for i in 0..N {
        let msg = json!({"jsonrpc": "2.0", "id": i, "method": format!("m{i}"), "params": {"i": i}});
        writeln!(batch, "{msg}").unwrap();
    }
    client
        .send_raw(&batch)
        .expect("send 200 requests in one go");
    for i in 0..N {
        let answer = client.recv();
        assert_echo(&answer, &json!(i), &format!("m{i}"));
        assert_eq!(answer["result"]["params"]["i"], json!(i));
    }
}

#[test]
fn notifications_from_the_child_reach_the_client_in_order() {
    let forkline = Forkline::serve_tcp(&[], &fake_server(&[]));
    let mut client = forkline.connect();
    client.request(json!("n1"), "fake/notify", json!({"hello": "world"}));
    let note = client.recv();
    assert_eq!(
        note["method"], "notifications/message",
        "notification first: {note}"
    );
    assert_eq!(note["params"]["data"], json!({"hello": "world"}));
    assert!(note.get("id").is_none(), "a notification has no id: {note}");
    assert_echo(&client.recv(), &json!("n1"), "fake/notify");
}

#[test]
fn client_notifications_are_relayed_without_an_answer() {
    let forkline = Forkline::serve_tcp(&[], &fake_server(&[]));
    let mut client = forkline.connect();
    client.send(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
    // The fake answers nothing for a notification; forkline must not
    // invent an answer either: the next message is the request's answer.
    assert_echo(
        &client.call(json!(5), "after", json!(null)),
        &json!(5),
        "after",
    );
}

#[test]
fn port_zero_reports_the_bound_port() {
    let forkline = Forkline::serve_tcp(&[], &fake_server(&[]));
    let addr = forkline.tcp_addr();
    assert_ne!(
        addr.port(),
        0,
        "listening line reports port 0: {:?}",
        forkline.listening
    );
    assert_eq!(addr.ip().to_string(), "127.0.0.1");
    let mut client = Client::tcp(addr);
    assert_echo(&client.call(json!(1), "ping", json!({})), &json!(1), "ping");
}

#[test]
fn unix_listener_replaces_a_stale_socket_and_removes_it_at_exit() {
    let dir = TempDir::new("forkline-unix");
    let path = dir.path.join("f.sock");
    // A stale socket file: bound once, its listener gone, the file left.
    drop(UnixListener::bind(&path).expect("bind a stale socket"));
    assert!(
        std::fs::metadata(&path)
            .expect("stale file")
            .file_type()
            .is_socket()
    );

    let child = fake_server(&[]);
    let mut args = vec!["--unix", path.to_str().unwrap(), "--"];
    args.extend(child.iter().map(|s| s.as_str()));
    let mut forkline = Forkline::serve(&args, 1);
    assert_eq!(forkline.listening, vec![format!("unix:{}", path.display())]);

    let mut guard = StrayGuard::new();
    let mut client = Client::unix(&path);
    let env = client.fake_env(1);
    guard.watch_env(&env);
    assert!(
        env.session_id.is_some(),
        "FORKLINE_SESSION_ID set for a unix session"
    );
    assert!(
        env.peer.as_deref().is_some_and(|p| !p.is_empty()),
        "FORKLINE_PEER set: {env:?}"
    );
    assert_echo(
        &client.call(json!(2), "over-unix", json!([1])),
        &json!(2),
        "over-unix",
    );

    forkline.signal(libc::SIGTERM);
    let status = forkline.wait_exit(PATIENCE);
    assert_eq!(status.code(), Some(0), "exit after SIGTERM");
    assert!(!path.exists(), "socket file {} left behind", path.display());
    assert_all_gone(&[env.pid], "child after shutdown");
}

#[test]
fn tcp_and_unix_listeners_serve_at_once() {
    let dir = TempDir::new("forkline-both");
    let path = dir.path.join("both.sock");
    let child = fake_server(&[]);
    let mut args = vec![
        "--tcp",
        "127.0.0.1:0",
        "--unix",
        path.to_str().unwrap(),
        "--",
    ];
    args.extend(child.iter().map(|s| s.as_str()));
    let forkline = Forkline::serve(&args, 2);
    assert!(
        forkline
            .listening
            .iter()
            .any(|l| l.starts_with("tcp://127.0.0.1:")),
        "{:?}",
        forkline.listening
    );
    assert!(
        forkline
            .listening
            .contains(&format!("unix:{}", path.display())),
        "{:?}",
        forkline.listening
    );

    let mut guard = StrayGuard::new();
    let mut over_tcp = forkline.connect();
    let mut over_unix = Client::unix(&path);
    let a = over_tcp.fake_env(1);
    let b = over_unix.fake_env(2);
    guard.watch_env(&a);
    guard.watch_env(&b);
    assert_ne!(a.pid, b.pid, "one child per session, whatever the listener");
    assert_ne!(a.session_id, b.session_id);
}

#[test]
fn default_child_is_the_builtin_echo_server() {
    // No `--`: every session runs `forkline echo-server`.
    let forkline = Forkline::serve(&["--tcp", "127.0.0.1:0"], 1);
    let mut client = forkline.connect();
    let list = client.call(json!(1), "tools/list", json!({}));
    let tools = list["result"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("tools/list: {list}"));
    assert!(
        tools.iter().any(|t| t["name"] == "echo"),
        "no echo tool: {list}"
    );
    let call = client.call(
        json!(2),
        "tools/call",
        json!({"name": "echo", "arguments": {"text": "héllo through forkline"}}),
    );
    assert_eq!(call["id"], json!(2));
    assert_eq!(
        call["result"]["content"],
        json!([{"type": "text", "text": "héllo through forkline"}]),
        "echo answer: {call}"
    );
    let children = children_of(forkline.pid());
    assert!(
        children
            .iter()
            .any(|(p, _)| cmdline(*p).contains("echo-server")),
        "no echo-server child: {:?}",
        children
            .iter()
            .map(|(p, _)| cmdline(*p))
            .collect::<Vec<_>>()
    );
}

#[test]
fn child_stderr_goes_to_the_log_tagged_with_its_session() {
    let forkline = Forkline::serve_tcp(&[], &fake_server(&["--stderr", "fake-stderr-marker 42 ✓"]));
    let mut client = forkline.connect();
    let env = client.fake_env(1);
    let sid = env.session_id.expect("session id");
    // The marker also appears in the logged command line; the child's
    // stderr line is the one tagged with a session.
    let tagged = poll_until(PATIENCE, || {
        forkline
            .stderr_lines()
            .iter()
            .any(|l| l.contains("fake-stderr-marker 42 ✓") && l.contains("[s") && l.contains(&sid))
    });
    assert!(
        tagged,
        "child stderr not logged tagged with {sid}; log:\n{}",
        forkline.stderr_text()
    );
    let mut stdout_clean = true;
    for i in 0..3 {
        let reply = client.call(json!(10 + i), "after-stderr", json!({}));
        stdout_clean &= reply["result"]["method"] == "after-stderr";
    }
    assert!(
        stdout_clean,
        "child stderr leaked into the session's stream"
    );
}
