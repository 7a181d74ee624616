//! `serve --config FILE` (issue 14): every server of an `mcpServers` file
//! at `/servers/NAME/mcp` (and `/sse`), each session a child of its own
//! server with that server's `env`, per-server limits and raw-socket
//! listeners, command-line flags over the file, and SIGHUP reloads that
//! add, change and remove servers while their live sessions go on.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;

use common::http::*;
use common::*;
use serde_json::{Value, json};

/// A server entry running the fake fixture, with `WHO` in its `env`.
fn fake_entry(who: &str) -> Value {
    let words = fake_server(&["--initialize"]);
    json!({"command": words[0], "args": words[1..], "env": {"WHO": who}})
}

/// forkline serving a config file it can be told to re-read.
struct Served {
    forkline: Forkline,
    file: PathBuf,
}

impl Served {
    /// `forkline serve --config FILE ARGS…` with `config` in FILE, waiting
    /// for `listeners` listening lines.
    fn start(config: &Value, args: &[&str], listeners: usize) -> Served {
        Served::start_with(config, args, listeners, |_| {})
    }

    fn start_with(
        config: &Value,
        args: &[&str],
        listeners: usize,
        configure: impl FnOnce(&mut std::process::Command),
    ) -> Served {
        let dir = TempDir::new("many-servers");
        let file = dir.path.join("servers.json");
        std::fs::write(&file, config.to_string()).expect("write config");
        let file_arg = file.to_string_lossy().into_owned();
        let mut all = vec!["--config", file_arg.as_str()];
        all.extend_from_slice(args);
        let mut forkline = Forkline::serve_configured(&all, listeners, configure);
        forkline.tempdir = dir;
        Served { forkline, file }
    }

    /// The HTTP listener's address.
    fn addr(&self) -> SocketAddr {
        let line = self
            .forkline
            .listening
            .iter()
            .find_map(|l| l.strip_prefix("http://"))
            .expect("an http listener");
        let host = line.split('/').next().expect("host");
        host.parse().expect("http address")
    }

    /// The `tcp://` listener printed for `server`.
    fn tcp_of(&self, server: &str) -> SocketAddr {
        self.listener_of(&self.forkline.listening, server)
    }

    fn listener_of(&self, lines: &[String], server: &str) -> SocketAddr {
        let suffix = format!(" for server {server}");
        lines
            .iter()
            .filter_map(|l| l.strip_suffix(&suffix))
            .map(|l| l.strip_prefix("forkline: listening on ").unwrap_or(l))
            .find_map(|l| l.strip_prefix("tcp://"))
            .unwrap_or_else(|| panic!("no tcp listener for {server}: {lines:?}"))
            .parse()
            .expect("tcp address")
    }

    /// Rewrites the file and sends SIGHUP; waits for the reload's verdict
    /// (`reloaded` or `does not check out`) and returns that log line.
    fn reload(&self, config: &str) -> String {
        let before = self.forkline.stderr_lines().len();
        std::fs::write(&self.file, config).expect("rewrite config");
        self.forkline.signal(libc::SIGHUP);
        let mut verdict = None;
        poll_until(PATIENCE, || {
            verdict = self.forkline.stderr_lines()[before..]
                .iter()
                .find(|l| l.contains("SIGHUP: reloaded") || l.contains("does not check out"))
                .cloned();
            verdict.is_some()
        });
        verdict.unwrap_or_else(|| {
            panic!(
                "no reload verdict after SIGHUP; log:\n{}",
                self.forkline.stderr_text()
            )
        })
    }

    fn session(&self, server: &str) -> McpSession {
        let path = format!("/servers/{server}/mcp");
        McpSession::open_at(self.addr(), &path, "2025-06-18", &[])
    }

    fn initialize(&self, path: &str) -> Response {
        request(
            self.addr(),
            &Request::post(path)
                .header("Accept", ACCEPT_JSON)
                .json(&initialize_body(json!(0), "2025-06-18")),
        )
    }
}

/// `fake/env` through `session`, asking for `vars`.
fn env_of(session: &McpSession, vars: &[&str]) -> Value {
    session.call(json!("env"), "fake/env", json!({"vars": vars}))["result"].clone()
}

/// `fake/env` as a stateless-era request (no session) to `path`: the
/// principal's child's pid and `WHO`.
fn stateless_env(addr: SocketAddr, path: &str) -> (u64, String) {
    let body = json!({
        "jsonrpc": "2.0", "id": "env", "method": "fake/env",
        "params": {"vars": ["WHO"], "_meta": {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"},
            "io.modelcontextprotocol/clientCapabilities": {}}}
    });
    let response = request(
        addr,
        &Request::post(path)
            .header("Accept", ACCEPT_BOTH)
            .header("MCP-Protocol-Version", "2026-07-28")
            .header("Mcp-Method", "fake/env")
            .json(&body),
    );
    response.assert_status(200);
    let result = response.json()["result"].clone();
    let pid = result["pid"].as_u64().expect("pid");
    let who = result["vars"]["WHO"].as_str().expect("WHO").to_string();
    (pid, who)
}

fn who(session: &McpSession) -> String {
    env_of(session, &["WHO"])["vars"]["WHO"]
        .as_str()
        .unwrap_or_else(|| panic!("no WHO in the child's environment"))
        .to_string()
}

#[test]
fn each_server_is_served_at_its_own_path_with_its_own_env() {
    let mut alpha = fake_entry("alpha");
    alpha["env"]["TOKEN"] = json!("${env:FORKLINE_TEST_SECRET}");
    alpha["args"]
        .as_array_mut()
        .expect("args")
        .push(json!("--tag=${env:FORKLINE_TEST_SECRET}"));
    let config = json!({
        "forkline": {"http": "127.0.0.1:0"},
        "mcpServers": {"alpha": alpha, "beta": fake_entry("beta")}
    });
    let served = Served::start_with(&config, &[], 2, |command| {
        command.env("FORKLINE_TEST_SECRET", "s3cret");
    });
    let urls: Vec<&String> = served.forkline.listening.iter().collect();
    assert!(
        urls.iter().any(|u| u.ends_with("/servers/alpha/mcp"))
            && urls.iter().any(|u| u.ends_with("/servers/beta/mcp")),
        "one listening line per server: {urls:?}"
    );

    let a = served.session("alpha");
    let b = served.session("beta");
    let env = env_of(&a, &["WHO", "TOKEN", "FORKLINE_SESSION_ID"]);
    assert_eq!(env["vars"]["WHO"], "alpha");
    assert_eq!(env["vars"]["TOKEN"], "s3cret", "${{env:}} expanded in env");
    assert!(
        env["argv"]
            .as_array()
            .expect("argv")
            .contains(&json!("--tag=s3cret")),
        "${{env:}} expanded in args: {env}"
    );
    assert_eq!(who(&b), "beta");
    assert_ne!(a.child_pid(), b.child_pid());
    // The expanded secret is not written to the log.
    assert!(
        !served.forkline.stderr_text().contains("s3cret"),
        "the secret reached the log:\n{}",
        served.forkline.stderr_text()
    );

    // A session belongs to its server: its id means nothing at another.
    let wrong = McpSession {
        path: "/servers/beta/mcp".into(),
        ..a.clone()
    };
    let response = wrong.post_json(&rpc_request(json!(1), "ping", json!({})));
    response.assert_status(404);

    // An unknown server, or /mcp when there are several: 404 naming the
    // servers, nothing of their commands or environments.
    for path in ["/servers/gamma/mcp", "/mcp"] {
        let response = served.initialize(path);
        response.assert_status(404);
        let body = response.json();
        assert_eq!(body["servers"], json!(["alpha", "beta"]), "{path}: {body}");
        assert!(
            !response.text().contains("fake_mcp_server") && !response.text().contains("WHO"),
            "{path}: {body}"
        );
    }
}

#[test]
fn the_older_sse_transport_and_the_stateless_era_reach_the_named_server() {
    let config = json!({
        "mcpServers": {
            "echo": {"command": forkline_bin(), "args": ["echo-server"]},
            "beta": fake_entry("beta"),
        }
    });
    let served = Served::start(&config, &["--http", "127.0.0.1:0"], 2);
    let mut stream = HttpConn::connect(served.addr())
        .open(&Request::get("/servers/beta/sse").header("Accept", ACCEPT_SSE));
    let endpoint = stream.next_event();
    assert_eq!(endpoint.event.as_deref(), Some("endpoint"));
    let endpoint = endpoint.data.expect("the endpoint event's data");
    assert!(
        endpoint.starts_with("/servers/beta/messages?sessionId="),
        "the POST path keeps the server: {endpoint}"
    );
    let posted = request(
        served.addr(),
        &Request::post(&endpoint).json(&rpc_request(
            json!(7),
            "fake/env",
            json!({"vars": ["WHO"]}),
        )),
    );
    posted.assert_status(202);
    let (_, reply) = stream.next_message();
    assert_eq!(reply["result"]["vars"]["WHO"], "beta", "{reply}");

    // A stateless-era request: the principal gets a child of this server.
    let body = json!({
        "jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "echo", "arguments": {"text": "hi"}, "_meta": {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"},
            "io.modelcontextprotocol/clientCapabilities": {}}}
    });
    let response = request(
        served.addr(),
        &Request::post("/servers/echo/mcp")
            .header("Accept", ACCEPT_BOTH)
            .header("MCP-Protocol-Version", "2026-07-28")
            .header("Mcp-Method", "tools/call")
            .header("Mcp-Name", "echo")
            .json(&body),
    );
    response.assert_status(200);
    assert_eq!(
        response.json()["result"]["content"][0]["text"],
        "hi",
        "{response}"
    );
}

#[test]
fn each_server_has_its_own_limits_and_raw_socket_listeners() {
    let mut alpha = fake_entry("alpha");
    alpha["forkline"] = json!({"maxSessions": 2, "tcp": "127.0.0.1:0", "maxMessageBytes": "1KiB"});
    let mut beta = fake_entry("beta");
    beta["forkline"] = json!({"maxSessions": 3});
    let config = json!({"mcpServers": {"alpha": alpha, "beta": beta}});
    // No listener named at all: HTTP on 127.0.0.1:7070 would be the
    // default; this test names its own.
    let served = Served::start(&config, &["--http", "127.0.0.1:0"], 3);
    let tcp = served.tcp_of("alpha");

    // A raw TCP session is a session of alpha, and counts against it.
    let mut raw = Client::tcp(tcp);
    let env = raw.fake_env(1);
    assert!(env.session_id.is_some());
    let first = served.session("alpha");
    assert_eq!(who(&first), "alpha");
    let refused = served.initialize("/servers/alpha/mcp");
    refused.assert_status(503);
    let message = assert_error_body(&refused, -32001);
    assert_eq!(
        message,
        "session refused: server `alpha` reached its maxSessions (2 of 2 sessions live)"
    );
    let mut over = Client::tcp(tcp);
    let line = over.recv();
    assert!(
        assert_error(&line, -32001, &Value::Null).contains("server `alpha`"),
        "{line}"
    );

    // beta counts apart: three of it while alpha is full.
    let betas: Vec<McpSession> = (0..3).map(|_| served.session("beta")).collect();
    served.initialize("/servers/beta/mcp").assert_status(503);
    for session in &betas {
        assert_eq!(who(session), "beta");
    }

    // alpha's message limit is its own: a 2 KiB body is over it (413, before
    // any admission) and a 2 KiB line over its TCP listener gets -32003,
    // while beta reads the same body (and refuses it only as full: 503).
    let big = |path: &str| {
        let mut body = initialize_body(json!(0), "2025-06-18");
        body["params"]["clientInfo"]["name"] = json!("x".repeat(2048));
        request(
            served.addr(),
            &Request::post(path)
                .header("Accept", ACCEPT_JSON)
                .json(&body),
        )
    };
    let over = big("/servers/alpha/mcp");
    over.assert_status(413);
    assert!(
        over.text()
            .contains("server alpha's maxMessageBytes (1024)"),
        "{over}"
    );
    big("/servers/beta/mcp").assert_status(503);
    let pad = "y".repeat(2048);
    raw.request(json!(9), "fake/env", json!({ "pad": pad }));
    assert_error(&raw.recv(), -32003, &json!(9));

    // Room comes back when a session ends.
    first.delete().assert_status(200);
    let mut again = None;
    poll_until(PATIENCE, || {
        let response = served.initialize("/servers/alpha/mcp");
        let ok = response.status == 200;
        again = Some(response);
        ok
    });
    let again = again.expect("polled");
    again.assert_status(200);
}

#[test]
fn a_single_server_is_served_at_mcp_too_and_flags_win_over_the_file() {
    let mut only = fake_entry("only");
    only["forkline"] = json!({"maxSessions": 5, "idleTimeout": 0});
    let config = json!({"mcpServers": {"only": only}});
    let served = Served::start(
        &config,
        &[
            "--http",
            "127.0.0.1:0",
            "--max-sessions",
            "1",
            "--tcp",
            "127.0.0.1:0",
        ],
        2,
    );
    assert!(
        served
            .forkline
            .listening
            .iter()
            .any(|l| l.starts_with("http://") && l.ends_with("/mcp") && !l.contains("/servers/")),
        "one server: printed as /mcp: {:?}",
        served.forkline.listening
    );
    let session = McpSession::open(served.addr());
    assert_eq!(who(&session), "only");
    // --max-sessions 1 on the command line wins over maxSessions 5.
    let refused = served.initialize("/servers/only/mcp");
    refused.assert_status(503);
    assert!(
        assert_error_body(&refused, -32001).contains("(1 of 1 sessions live)"),
        "{refused}"
    );
    // --tcp serves the one server.
    session.delete().assert_status(200);
    let tcp = served.tcp_of("only");
    let mut raw = None;
    poll_until(PATIENCE, || {
        let mut client = Client::tcp(tcp);
        client.request(json!(1), "fake/env", json!({"vars": ["WHO"]}));
        let reply = client.recv();
        let ok = reply["result"]["vars"]["WHO"] == "only";
        raw = Some(reply);
        ok
    });
    assert_eq!(
        raw.expect("polled")["result"]["vars"]["WHO"],
        "only",
        "the TCP session's child"
    );
}

#[test]
fn sighup_adds_changes_and_removes_servers_while_their_sessions_go_on() {
    let mut beta = fake_entry("beta");
    beta["forkline"] = json!({"tcp": "127.0.0.1:0"});
    let config = json!({
        "forkline": {"http": "127.0.0.1:0"},
        "mcpServers": {"alpha": fake_entry("alpha-1"), "beta": beta}
    });
    let served = Served::start(&config, &["--admin", "127.0.0.1:0"], 4);
    let beta_tcp = served.tcp_of("beta");
    let old_alpha = served.session("alpha");
    let old_beta = served.session("beta");
    let mut old_raw = Client::tcp(beta_tcp);
    let old_raw_pid = old_raw.fake_env(1).pid;
    let (alpha_pid, beta_pid) = (old_alpha.child_pid(), old_beta.child_pid());
    let (stateless_pid, stateless_who) = stateless_env(served.addr(), "/servers/alpha/mcp");
    assert_eq!(stateless_who, "alpha-1");

    // alpha changes, beta goes, gamma comes with a listener of its own.
    let mut gamma = fake_entry("gamma");
    gamma["forkline"] = json!({"tcp": "127.0.0.1:0", "prespawn": 1});
    let next = json!({
        "forkline": {"http": "127.0.0.1:0"},
        "mcpServers": {"alpha": fake_entry("alpha-2"), "gamma": gamma}
    });
    let verdict = served.reload(&next.to_string());
    assert!(
        verdict.contains("reloaded")
            && verdict.contains("added gamma; changed alpha; removed beta"),
        "{verdict}"
    );
    // Live sessions are untouched, children and all.
    assert_eq!(who(&old_alpha), "alpha-1");
    assert_eq!(old_alpha.child_pid(), alpha_pid);
    assert_eq!(who(&old_beta), "beta");
    assert_eq!(old_beta.child_pid(), beta_pid);
    assert_eq!(old_raw.fake_env(2).pid, old_raw_pid);
    // New sessions get the new settings; the removed server admits none.
    assert_eq!(who(&served.session("alpha")), "alpha-2");
    assert_eq!(who(&served.session("gamma")), "gamma");
    served.initialize("/servers/beta/mcp").assert_status(404);
    // A stateless principal's child of the changed server is replaced: the
    // old one had nothing in flight, so it ends.
    let (pid, who_now) = stateless_env(served.addr(), "/servers/alpha/mcp");
    assert_eq!(who_now, "alpha-2");
    assert_ne!(pid, stateless_pid);
    assert!(
        poll_until(PATIENCE, || !pid_alive(stateless_pid as u32)),
        "the replaced stateless child {stateless_pid} still runs"
    );
    assert!(
        TcpStream::connect(beta_tcp).is_err(),
        "the removed server's listener is closed"
    );
    let gamma_tcp = served.listener_of(&served.forkline.stderr_lines(), "gamma");
    let mut raw_gamma = Client::tcp(gamma_tcp);
    raw_gamma.request(json!(1), "fake/env", json!({"vars": ["WHO"]}));
    assert_eq!(raw_gamma.recv()["result"]["vars"]["WHO"], "gamma");

    // The admin endpoint lists the servers new sessions can reach.
    let admin: SocketAddr = served
        .forkline
        .listening
        .iter()
        .find_map(|l| l.strip_prefix("admin http://"))
        .expect("admin listener")
        .parse()
        .expect("admin address");
    // gamma keeps a warm child of its own, named after it.
    served
        .forkline
        .wait_for_log("warm child warm-gamma-1 started pid=");
    let mut servers = Value::Null;
    poll_until(PATIENCE, || {
        servers = request(admin, &Request::get("/servers")).json();
        servers[1]["warm_children"] == 1
    });
    assert_eq!(servers[1]["warm_children"], 1, "{servers}");
    let names: Vec<&str> = servers
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(names, ["alpha", "gamma"], "{servers}");
    // alpha: the old session, a new one, the stateless principal's child.
    assert_eq!(servers[0]["sessions"], 3, "{servers}");

    // A file that does not check out is refused; the settings stay.
    let verdict = served.reload(r#"{"mcpServers": {"alpha": {"args": []}}}"#);
    assert!(
        verdict.contains("does not check out")
            && verdict.contains("mcpServers.alpha: missing: a stdio server needs the `command`"),
        "{verdict}"
    );
    assert_eq!(who(&served.session("alpha")), "alpha-2");
    assert_eq!(who(&served.session("gamma")), "gamma");
    assert_eq!(
        who(&old_beta),
        "beta",
        "the removed server's session finishes"
    );
}

#[test]
fn a_file_that_does_not_check_out_stops_serve_with_its_problems() {
    let dir = TempDir::new("bad-config");
    let file = dir.path.join("bad.json");
    std::fs::write(
        &file,
        r#"{"mcpServers": {"x": {"command": "srv", "forkline": {"maxSesions": 1}}}}"#,
    )
    .expect("write");
    let output = std::process::Command::new(forkline_bin())
        .args(["serve", "--config"])
        .arg(&file)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run forkline");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("the --config file does not check out")
            && stderr.contains("mcpServers.x.forkline.maxSesions: unknown key"),
        "{stderr}"
    );
    let output = std::process::Command::new(forkline_bin())
        .args(["serve", "--config"])
        .arg(&file)
        .args(["--", "srv"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run forkline");
    assert_eq!(
        output.status.code(),
        Some(2),
        "a file and a command conflict"
    );
}

#[test]
fn a_reload_that_lowers_max_message_bytes_leaves_live_http_sessions_their_own_limit() {
    let mut alpha = fake_entry("alpha");
    alpha["forkline"] = json!({"maxMessageBytes": "64KiB"});
    let config = json!({"mcpServers": {"alpha": alpha, "beta": fake_entry("beta")}});
    let served = Served::start(&config, &["--http", "127.0.0.1:0"], 2);
    let old = served.session("alpha");

    let mut lowered = fake_entry("alpha");
    lowered["forkline"] = json!({"maxMessageBytes": "1KiB"});
    let verdict = served
        .reload(&json!({"mcpServers": {"alpha": lowered, "beta": fake_entry("beta")}}).to_string());
    assert!(verdict.contains("changed alpha"), "{verdict}");

    // 4 KiB: over alpha's new limit, well under the one `old` started with.
    let padded = |id: &str| {
        rpc_request(
            json!(id),
            "fake/env",
            json!({"vars": ["WHO"], "pad": "p".repeat(4096)}),
        )
    };
    let answer = old.post_json(&padded("old"));
    answer.assert_status(200);
    assert_eq!(answer.json()["result"]["vars"]["WHO"], "alpha", "{answer}");

    let new = served.session("alpha");
    let refused = new.post_json(&padded("new"));
    refused.assert_status(413);
    assert!(
        refused
            .text()
            .contains("server alpha's maxMessageBytes (1024)"),
        "{refused}"
    );
    // The new session is fine under its own limit.
    assert_eq!(who(&new), "alpha");
}
