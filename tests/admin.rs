//! `serve --admin ADDR`: `/healthz` (ok, then draining during the shutdown
//! grace), `/metrics` read by the real Prometheus text parser
//! (`prometheus_client`, installed into target/sdk-venv by .ci/setup-sdk)
//! after known traffic, `/sessions` listing TCP and HTTP sessions, `DELETE
//! /sessions/ID` ending each kind, and the 4xx answers to bad requests.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::http::{self as h, McpSession, Request, Response};
use common::*;
use serde_json::{Value, json};

/// The `admin http://ADDR` listener's address.
fn admin_addr(forkline: &Forkline) -> SocketAddr {
    forkline
        .listening
        .iter()
        .find_map(|l| l.strip_prefix("admin http://"))
        .unwrap_or_else(|| panic!("no admin listener in {:?}", forkline.listening))
        .parse()
        .expect("admin address parses")
}

fn get(addr: SocketAddr, path: &str) -> Response {
    h::request(addr, &Request::get(path))
}

fn delete(addr: SocketAddr, path: &str) -> Response {
    h::request(addr, &Request::delete(path))
}

fn sessions(addr: SocketAddr) -> Vec<Value> {
    let r = get(addr, "/sessions");
    r.assert_status(200);
    assert_eq!(r.media_type().as_deref(), Some("application/json"), "{r}");
    r.json().as_array().expect("a JSON array").clone()
}

/// A sample as the parser script prints it: family, type, sample name,
/// labels, value.
type RawSample = (String, String, String, serde_json::Map<String, Value>, f64);

/// One sample of a scrape, as prometheus_client parsed it.
#[derive(Debug)]
struct Sample {
    family: String,
    kind: String,
    name: String,
    labels: serde_json::Map<String, Value>,
    value: f64,
}

/// Scrapes `/metrics` and parses it with `prometheus_client`'s own text
/// parser; `None` (outside CI) when the venv is missing.
fn scrape(addr: SocketAddr) -> Option<Vec<Sample>> {
    let python = common::interop::sdk_python()?;
    let r = get(addr, "/metrics");
    r.assert_status(200);
    assert_eq!(
        r.header("Content-Type"),
        Some("text/plain; version=0.0.4; charset=utf-8"),
        "{r}"
    );
    let script = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        out.append([family.name, family.type, s.name, s.labels, s.value])
print(json.dumps(out))
"#;
    let mut child = Command::new(python)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(r.text().as_bytes())
        .expect("feed the parser");
    let out = child.wait_with_output().expect("parser output");
    assert!(
        out.status.success(),
        "prometheus_client refused the scrape: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        r.text()
    );
    let parsed: Vec<RawSample> = serde_json::from_slice(&out.stdout).expect("parser's JSON");
    Some(
        parsed
            .into_iter()
            .map(|(family, kind, name, labels, value)| Sample {
                family,
                kind,
                name,
                labels,
                value,
            })
            .collect(),
    )
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).and_then(Value::as_str) == Some(*v))
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one sample {name}{labels:?} expected, found {found:?}"
    );
    found[0].value
}

fn kind_of(samples: &[Sample], family: &str) -> String {
    samples
        .iter()
        .find(|s| s.family == family)
        .unwrap_or_else(|| panic!("no family {family}"))
        .kind
        .clone()
}

#[test]
fn metrics_after_known_traffic_parse_as_prometheus_text_with_the_right_values() {
    // One session at a time; its child ignores the end of its stdin, so it
    // is stopped by SIGTERM after the grace: an exit by signal.
    let child = fake_server(&["--ignore-stdin-eof"]);
    let forkline = Forkline::serve_tcp(
        &[
            "--admin",
            "127.0.0.1:0",
            "--max-sessions",
            "1",
            "--shutdown-grace",
            "1",
        ],
        &child,
    );
    assert_eq!(forkline.listening.len(), 2, "{:?}", forkline.listening);
    let admin = admin_addr(&forkline);

    let mut client = forkline.connect();
    for id in 1..=2 {
        let reply = client.call(json!(id), "tools/list", json!({}));
        assert_eq!(reply["id"], json!(id), "{reply}");
    }
    // The table is full: the next client is refused by max_sessions.
    let mut refused = forkline.connect();
    let line = refused.recv();
    assert_error(&line, -32001, &Value::Null);
    assert!(refused.closed_within(PATIENCE));

    client.close_write();
    assert!(client.closed_within(PATIENCE), "the session did not end");
    assert!(
        poll_until(PATIENCE, || sessions(admin).is_empty()),
        "the session is still listed: {:?}",
        sessions(admin)
    );
    let Some(samples) = scrape(admin) else {
        return;
    };
    let v = |name: &str, labels: &[(&str, &str)]| value(&samples, name, labels);
    assert_eq!(v("forkline_sessions_total", &[("transport", "tcp")]), 1.0);
    assert_eq!(v("forkline_sessions_total", &[("transport", "http")]), 0.0);
    assert_eq!(v("forkline_sessions_active", &[("transport", "tcp")]), 0.0);
    assert_eq!(
        v("forkline_refusals_total", &[("reason", "max_sessions")]),
        1.0
    );
    assert_eq!(
        v(
            "forkline_refusals_total",
            &[("reason", "max_sessions_per_client")]
        ),
        0.0
    );
    assert_eq!(v("forkline_messages_total", &[("direction", "in")]), 2.0);
    assert_eq!(v("forkline_messages_total", &[("direction", "out")]), 2.0);
    assert!(v("forkline_bytes_total", &[("direction", "in")]) > 2.0 * 40.0);
    assert_eq!(v("forkline_child_exits_total", &[("kind", "signal")]), 1.0);
    assert_eq!(
        v("forkline_child_exits_total", &[("kind", "exit_zero")]),
        0.0
    );
    assert_eq!(v("forkline_children_spawned_total", &[]), 1.0);
    assert_eq!(v("forkline_session_duration_seconds_count", &[]), 1.0);
    assert!(
        v("forkline_session_duration_seconds_sum", &[]) >= 1.0,
        "the grace"
    );
    assert_eq!(
        v(
            "forkline_session_duration_seconds_bucket",
            &[("le", "+Inf")]
        ),
        1.0
    );
    assert_eq!(v("forkline_request_duration_seconds_count", &[]), 2.0);
    assert_eq!(
        v(
            "forkline_request_duration_seconds_bucket",
            &[("le", "+Inf")]
        ),
        2.0
    );
    assert!(v("forkline_request_duration_seconds_sum", &[]) > 0.0);
    assert_eq!(v("forkline_warm_pool_children", &[]), 0.0);
    assert_eq!(v("forkline_draining", &[]), 0.0);
    assert!(v("forkline_fd_limit", &[]) >= 64.0);
    assert!(v("forkline_fds_open", &[]) >= 5.0);
    assert!(v("forkline_fd_session_capacity", &[]) >= 1.0);
    assert_eq!(kind_of(&samples, "forkline_sessions_active"), "gauge");
    assert_eq!(kind_of(&samples, "forkline_sessions"), "counter");
    assert_eq!(kind_of(&samples, "forkline_refusals"), "counter");
    assert_eq!(
        kind_of(&samples, "forkline_request_duration_seconds"),
        "histogram"
    );
    assert_eq!(
        kind_of(&samples, "forkline_session_duration_seconds"),
        "histogram"
    );
}

#[test]
fn healthz_says_ok_then_draining_during_the_shutdown_grace() {
    let child = fake_server(&[]);
    let mut forkline =
        Forkline::serve_tcp(&["--admin", "127.0.0.1:0", "--shutdown-grace", "5"], &child);
    let admin = admin_addr(&forkline);
    let r = get(admin, "/healthz");
    r.assert_status(200);
    assert_eq!(r.text(), "ok\n");

    // A request held unanswered keeps its session, and so the proxy, in
    // the grace after SIGTERM.
    let mut client = forkline.connect();
    client.request(json!(1), "fake/hold", json!({}));
    assert!(
        poll_until(PATIENCE, || sessions(admin)
            .first()
            .is_some_and(|s| s["inflight"] == 1)),
        "{:?}",
        sessions(admin)
    );
    forkline.signal(libc::SIGTERM);
    let mut last = None;
    let draining = poll_until(PATIENCE, || {
        let r = get(admin, "/healthz");
        let done = r.status == 503;
        last = Some(r);
        done
    });
    assert!(draining, "still {:?}", last);
    assert_eq!(last.expect("an answer").text(), "draining\n");
    // Still draining a moment later, while the session finishes.
    std::thread::sleep(Duration::from_millis(300));
    get(admin, "/healthz").assert_status(503);
    assert!(
        forkline.try_exit_status().is_none(),
        "exited before the grace"
    );
    // The held request is answered with -32004 once the grace is over.
    let reply = client.recv();
    assert_error(&reply, -32004, &json!(1));
    assert!(forkline.wait_exit(PATIENCE).success());
}

#[test]
fn sessions_lists_tcp_and_http_sessions_and_delete_ends_each() {
    let dir = TempDir::new("admin-tokens");
    let tokens = dir.path.join("tokens");
    std::fs::write(&tokens, "alice:s3cret-token\n").expect("token file");
    let child = fake_server(&[]);
    let forkline = Forkline::serve_tcp(
        &[
            "--http",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--auth-token-file",
            tokens.to_str().expect("utf-8 path"),
        ],
        &child,
    );
    assert_eq!(forkline.listening.len(), 3, "{:?}", forkline.listening);
    let admin = admin_addr(&forkline);
    let http = h::http_addr(&forkline);

    let mut tcp = forkline.connect();
    let tcp_pid = tcp.fake_env(1).pid;
    tcp.request(json!(2), "fake/hold", json!({}));
    let web = McpSession::open_with(
        http,
        "2025-06-18",
        &[("Authorization", "Bearer s3cret-token")],
    );
    let web_pid = web.child_pid();

    let mut listed = Vec::new();
    let both = poll_until(PATIENCE, || {
        listed = sessions(admin);
        listed.len() == 2 && listed[0]["inflight"] == 1 && listed[1]["messages_in"] == 3
    });
    assert!(both, "{listed:#?}");
    let (t, w) = (&listed[0], &listed[1]);
    assert_eq!(t["transport"], "tcp", "{t}");
    assert_eq!(t["child_pid"], json!(tcp_pid), "{t}");
    assert_eq!(t["principal"], Value::Null, "{t}");
    assert!(
        t["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with("127.0.0.1:")),
        "{t}"
    );
    assert_eq!(t["messages_in"], 2, "{t}");
    assert_eq!(t["messages_out"], 1, "{t}");
    assert!(t["bytes_in"].as_u64().unwrap() > 0, "{t}");
    let age = t["age_seconds"].as_f64().expect("age");
    let idle = t["idle_seconds"].as_f64().expect("idle");
    assert!(age >= idle && idle >= 0.0, "{t}");
    assert_eq!(w["transport"], "http", "{w}");
    assert_eq!(w["principal"], "alice", "{w}");
    assert_eq!(w["child_pid"], json!(web_pid), "{w}");
    // initialize, notifications/initialized, fake/env.
    assert_eq!(w["messages_in"], 3, "{w}");
    assert_eq!(w["messages_out"], 2, "{w}");
    assert_eq!(w["inflight"], 0, "{w}");
    let tcp_id = t["id"].as_str().expect("id").to_string();
    let web_id = w["id"].as_str().expect("id").to_string();
    let one = get(admin, &format!("/sessions/{tcp_id}"));
    one.assert_status(200);
    assert_eq!(one.json()["child_pid"], json!(tcp_pid));

    // DELETE of the TCP session: its held request gets -32002 once the
    // child is stopped, then the client sees the end; the child is reaped.
    let r = delete(admin, &format!("/sessions/{tcp_id}"));
    r.assert_status(202);
    assert_eq!(r.json()["id"], json!(tcp_id));
    let reply = tcp.recv();
    assert_error(&reply, -32002, &json!(2));
    assert!(tcp.closed_within(PATIENCE), "the TCP client saw no EOF");
    assert!(poll_until(PATIENCE, || !pid_alive(tcp_pid)), "child alive");
    assert!(
        poll_until(PATIENCE, || zombie_children(forkline.pid()).is_empty()),
        "a zombie is left"
    );
    forkline.wait_for_log(&format!("[{tcp_id}] session closed reason=deleted"));
    get(admin, &format!("/sessions/{tcp_id}")).assert_status(404);
    delete(admin, &format!("/sessions/{tcp_id}")).assert_status(404);

    // DELETE of the HTTP session: its id answers 404 from now on.
    delete(admin, &format!("/sessions/{web_id}")).assert_status(202);
    web.wait_gone();
    assert!(poll_until(PATIENCE, || !pid_alive(web_pid)), "child alive");
    forkline.wait_for_log(&format!("[{web_id}] session closed reason=deleted"));
    assert!(poll_until(PATIENCE, || sessions(admin).is_empty()));
    delete(admin, "/sessions/s999").assert_status(404);
}

#[test]
fn delete_ends_a_unix_socket_session_too() {
    let dir = TempDir::new("admin-unix");
    let socket = dir.path.join("fl.sock");
    let forkline = Forkline::serve(
        &[
            "--unix",
            socket.to_str().expect("utf-8 path"),
            "--admin",
            "127.0.0.1:0",
        ],
        2,
    );
    let admin = admin_addr(&forkline);
    let mut client = Client::unix(&socket);
    let reply = client.call(json!(1), "ping", json!({}));
    assert_eq!(reply["id"], 1, "{reply}");
    let mut listed = Vec::new();
    assert!(poll_until(PATIENCE, || {
        listed = sessions(admin);
        listed.len() == 1 && listed[0]["messages_out"] == 1
    }));
    assert_eq!(listed[0]["transport"], "unix");
    let pid = listed[0]["child_pid"].as_u64().expect("pid") as u32;
    let id = listed[0]["id"].as_str().expect("id").to_string();
    delete(admin, &format!("/sessions/{id}")).assert_status(202);
    assert!(client.closed_within(PATIENCE), "no EOF for the unix client");
    assert!(poll_until(PATIENCE, || !pid_alive(pid)), "child alive");
    forkline.wait_for_log(&format!("[{id}] session closed reason=deleted"));
}

#[test]
fn bad_admin_requests_get_4xx_and_the_address_must_be_loopback() {
    let forkline = Forkline::serve(&["--tcp", "127.0.0.1:0", "--admin", "127.0.0.1:0"], 2);
    let admin = admin_addr(&forkline);
    let status = |req: Request| h::request(admin, &req).status;
    assert_eq!(status(Request::get("/nope")), 404);
    assert_eq!(status(Request::post("/metrics")), 405);
    assert_eq!(status(Request::delete("/healthz")), 405);
    assert_eq!(status(Request::post("/sessions/s1")), 405);
    assert_eq!(status(Request::delete("/sessions/abc")), 404);
    assert_eq!(status(Request::delete("/sessions/")), 404);
    assert_eq!(
        status(Request::get("/metrics").header("Origin", "http://evil.example")),
        403
    );
    assert_eq!(
        status(Request::get("/sessions").set_header("Host", "evil.example:80")),
        403
    );
    assert_eq!(
        status(Request::get("/healthz").header("X-Big", &"a".repeat(20_000))),
        431
    );
    let mut conn = h::HttpConn::connect(admin);
    conn.send_raw(b"NOT HTTP AT ALL\r\n\r\n").expect("send");
    let r = conn.read_response();
    assert_eq!(r.status, 400, "{r}");
    assert!(conn.closed_within(PATIENCE), "closed after its answer");

    // A non-loopback address is refused unless asked for by name.
    let out = Command::new(forkline_bin())
        .args(["serve", "--tcp", "127.0.0.1:0", "--admin", "0.0.0.0:0"])
        .stdin(Stdio::null())
        .output()
        .expect("run forkline");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--admin-allow-remote"), "{stderr}");
}
