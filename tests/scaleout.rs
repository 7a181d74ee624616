//! Scale-out (PRODUCT.md "Scale-out"): three `forkline serve` nodes behind
//! a real HAProxy that runs `deploy/haproxy.cfg` exactly as committed (the
//! test only sets the variables the file reads: where the balancer binds,
//! each node's address and admin port), all on loopback.
//!
//! What is checked: session ids name their node (`NODE.<random>`, on both
//! HTTP transports); the official Python SDK's sessions spread over every
//! node and each of their requests reaches the node that holds its child
//! (the child's environment names the node; the node's `/sessions` lists
//! the child), also after HAProxy is restarted mid-run; a draining node
//! takes no new sessions and answers what it has in flight; a killed
//! node's sessions get 404 and the others go on; stateless-era requests of
//! one principal always reach one node; a `--config` file's
//! `/servers/NAME/...` sessions route alike; a node's own 503 (a busy session)
//! passes the balancer unchanged; and a node answers 404 for a session id
//! naming another node, whatever else the request says.
//!
//! HAProxy comes from Debian's package (`.ci/setup-haproxy`, run by
//! `.ci/setup-sdk`). Without it these tests pass with a notice on a
//! developer's machine and fail under CI. Every process started here is
//! ended by its pid in a `Drop`; every wait polls with a deadline.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::http::*;
use common::interop::{drain, join_within, sdk_python, skip_unless_ci};
use common::*;
use serde_json::{Value, json};

/// The `server` names in deploy/haproxy.cfg, which the nodes take as
/// their `--node-id`.
const NODES: [&str; 3] = ["forkline-0", "forkline-1", "forkline-2"];

/// Sessions of the SDK test (the issue's figure).
const SDK_SESSIONS: usize = 30;

// ---- the nodes ----------------------------------------------------------------

/// One `forkline serve --http … --admin … --node-id ID`, whose children see
/// `FORKLINE_TEST_NODE=ID` in their environment.
struct Node {
    id: &'static str,
    forkline: Forkline,
    http: SocketAddr,
    admin: SocketAddr,
}

impl Node {
    /// `child` empty: no command (a `--config` file names the servers);
    /// `listeners`: the listening lines to wait for.
    fn start(id: &'static str, args: &[&str], child: &[String], listeners: usize) -> Node {
        // Through the balancer every session's peer is the balancer, so
        // the per-client limit is the node's own limit (README).
        let mut all = vec![
            "--http",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--node-id",
            id,
            "--max-sessions-per-client",
            "64",
        ];
        all.extend_from_slice(args);
        if !child.is_empty() {
            all.push("--");
            all.extend(child.iter().map(String::as_str));
        }
        let forkline = Forkline::serve_configured(&all, listeners, |command| {
            command.env("FORKLINE_TEST_NODE", id);
        });
        let admin = forkline
            .listening
            .iter()
            .find_map(|l| l.strip_prefix("admin http://"))
            .unwrap_or_else(|| panic!("no admin listener in {:?}", forkline.listening))
            .parse()
            .expect("admin address parses");
        // `http://ADDR/mcp`, or `http://ADDR/servers/NAME/mcp` per server.
        let http = forkline
            .listening
            .iter()
            .find_map(|l| l.strip_prefix("http://"))
            .and_then(|l| l.split('/').next())
            .unwrap_or_else(|| panic!("no http listener in {:?}", forkline.listening))
            .parse()
            .expect("http address parses");
        Node {
            id,
            forkline,
            http,
            admin,
        }
    }

    /// `GET /sessions` of this node's admin endpoint.
    fn sessions(&self) -> Vec<Value> {
        let response = request(self.admin, &Request::get("/sessions"));
        response.assert_status(200);
        response.json().as_array().cloned().unwrap_or_default()
    }

    /// `GET /healthz`: its status and text.
    fn healthz(&self) -> (u16, String) {
        let response = request(self.admin, &Request::get("/healthz"));
        (response.status, response.text().trim().to_string())
    }
}

/// The node field of a session id (`NODE.<random>`).
fn node_of(session_id: &str) -> &str {
    assert!(is_session_id(session_id), "not NODE.<hex>: {session_id:?}");
    session_id.split('.').next().unwrap_or_default()
}

// ---- HAProxy --------------------------------------------------------------------

/// HAProxy in the foreground (`-db`) on deploy/haproxy.cfg. Dropping it
/// kills it by its pid and reaps it.
struct Haproxy {
    child: Child,
    addr: SocketAddr,
    env: Vec<(String, String)>,
    log: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
}

fn recipe() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/haproxy.cfg")
}

/// The `haproxy` binary, or `None` (after a notice, never under CI).
fn haproxy_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|dir| dir.join("haproxy"))
        .find(|candidate| candidate.is_file());
    if found.is_none() {
        skip_unless_ci("haproxy is not installed (.ci/setup-haproxy installs it)");
    }
    found
}

impl Haproxy {
    /// Starts HAProxy in front of `nodes` on a free loopback port.
    fn start(binary: &Path, nodes: &[Node]) -> Haproxy {
        for (n, node) in nodes.iter().enumerate() {
            assert_eq!(node.id, NODES[n], "nodes in the recipe's order");
        }
        let servers: Vec<(SocketAddr, u16)> =
            nodes.iter().map(|n| (n.http, n.admin.port())).collect();
        Haproxy::start_for(binary, &servers)
    }

    /// Starts HAProxy with the recipe's servers at `servers` (HTTP
    /// address, admin port), in the recipe's order.
    fn start_for(binary: &Path, servers: &[(SocketAddr, u16)]) -> Haproxy {
        let mut env = Vec::new();
        for (n, (http, admin)) in servers.iter().enumerate() {
            env.push((format!("FORKLINE_{n}"), http.to_string()));
            env.push((format!("FORKLINE_{n}_ADMIN_PORT"), admin.to_string()));
        }
        // A port found free may be taken before HAProxy binds it: a few
        // tries, each with a new port.
        let mut why = String::new();
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            match Haproxy::spawn(binary, addr, env.clone()) {
                Ok(haproxy) => return haproxy,
                Err(e) => why = e,
            }
        }
        panic!("HAProxy did not start on deploy/haproxy.cfg:\n{why}");
    }

    fn spawn(
        binary: &Path,
        addr: SocketAddr,
        env: Vec<(String, String)>,
    ) -> Result<Haproxy, String> {
        let mut command = Command::new(binary);
        command
            .arg("-db")
            .arg("-f")
            .arg(recipe())
            .env("FORKLINE_LB_BIND", addr.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (name, value) in &env {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("spawn haproxy");
        let log = Arc::new(Mutex::new(Vec::new()));
        let reader = {
            let out = child.stdout.take().expect("stdout piped");
            let err = child.stderr.take().expect("stderr piped");
            let log = Arc::clone(&log);
            thread::spawn(move || {
                let out_log = Arc::clone(&log);
                let out_thread = thread::spawn(move || {
                    for line in BufReader::new(out).lines().map_while(Result::ok) {
                        out_log.lock().unwrap().push(line);
                    }
                });
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    if std::env::var_os("FORKLINE_TEST_ECHO_LOG").is_some() {
                        eprintln!("haproxy> {line}");
                    }
                    log.lock().unwrap().push(line);
                }
                let _ = out_thread.join();
            })
        };
        let mut haproxy = Haproxy {
            child,
            addr,
            env,
            log,
            reader: Some(reader),
        };
        let up = poll_until(PATIENCE, || {
            TcpStream::connect(addr).is_ok() || haproxy.exited()
        });
        if !up || haproxy.exited() {
            return Err(haproxy.log_text());
        }
        Ok(haproxy)
    }

    fn exited(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_some()
    }

    fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits until a log line contains `needle`.
    fn wait_for_log(&self, needle: &str) {
        assert!(
            poll_until(PATIENCE, || self.log_text().contains(needle)),
            "HAProxy never logged {needle:?}:\n{}",
            self.log_text()
        );
    }

    /// Kills this HAProxy and starts a new one on the same port and file:
    /// what it knew is gone, as after a crash or a redeploy.
    fn restart(&mut self, binary: &Path) {
        let old = self.child.id();
        self.stop();
        // The port was just closed; binding it again may take a few tries.
        let mut restarted = None;
        let mut why = String::new();
        poll_until(PATIENCE, || {
            match Haproxy::spawn(binary, self.addr, self.env.clone()) {
                Ok(h) => restarted = Some(h),
                Err(e) => why = e,
            }
            restarted.is_some()
        });
        let new = restarted.unwrap_or_else(|| panic!("HAProxy did not start again:\n{why}"));
        assert_ne!(new.child.id(), old);
        *self = new;
    }

    fn stop(&mut self) {
        if !self.exited() {
            // SAFETY: a signal to the pid of our own, not yet reaped child.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
            let _ = self.child.wait();
        }
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---- a cluster ------------------------------------------------------------------

/// Three nodes and HAProxy in front of them.
struct Cluster {
    lb: Haproxy,
    nodes: Vec<Node>,
    haproxy: PathBuf,
}

impl Cluster {
    /// `None` (after a notice, never under CI) without HAProxy.
    fn start(args: &[&str], child: &[String]) -> Option<Cluster> {
        Cluster::start_with(args, child, 2)
    }

    /// `listeners`: each node's listening lines (see `Node::start_with`).
    fn start_with(args: &[&str], child: &[String], listeners: usize) -> Option<Cluster> {
        let haproxy = haproxy_binary()?;
        let nodes: Vec<Node> = NODES
            .iter()
            .map(|id| Node::start(id, args, child, listeners))
            .collect();
        let lb = Haproxy::start(&haproxy, &nodes);
        Some(Cluster { lb, nodes, haproxy })
    }

    fn addr(&self) -> SocketAddr {
        self.lb.addr
    }

    fn node(&self, id: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    fn node_mut(&mut self, id: &str) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    /// Opens sessions through the balancer until every node holds at
    /// least `each` (a bounded number of tries).
    fn sessions_on_every_node(&self, each: usize) -> BTreeMap<String, Vec<McpSession>> {
        let mut by_node: BTreeMap<String, Vec<McpSession>> = BTreeMap::new();
        for _ in 0..each * NODES.len() * 4 {
            if NODES
                .iter()
                .all(|n| by_node.get(*n).is_some_and(|s| s.len() >= each))
            {
                return by_node;
            }
            let session = McpSession::open(self.addr());
            by_node
                .entry(node_of(&session.id).to_string())
                .or_default()
                .push(session);
        }
        panic!(
            "least connections never gave every node {each} sessions: {:?}",
            by_node
                .iter()
                .map(|(n, s)| (n, s.len()))
                .collect::<Vec<_>>()
        );
    }
}

/// The fake server as a handshake-era server with `whoami` and `sleep`.
fn cluster_child() -> Vec<String> {
    fake_server(&["--legacy", "--cluster-tools"])
}

/// `tools/call whoami` in `session`: the child's pid, its session and
/// the node it runs under.
fn whoami(session: &McpSession) -> Value {
    let reply = session.call(
        json!("who"),
        "tools/call",
        json!({"name": "whoami", "arguments": {}}),
    );
    let text = reply["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("whoami answer without text: {reply}"));
    serde_json::from_str(text).expect("whoami text is JSON")
}

/// A session's request through the balancer reached its own node.
fn assert_on_its_node(session: &McpSession) {
    let me = whoami(session);
    assert_eq!(
        me["test_node"],
        node_of(&session.id),
        "session {} answered by {me}",
        session.id
    );
}

/// `POST ping` in `session`: the whole response.
fn ping(session: &McpSession) -> Response {
    session.post_json(&rpc_request(json!("p"), "ping", json!({})))
}

/// A 404 with a JSON-RPC error body (what the SDKs take as "session gone").
fn assert_session_gone(response: &Response, what: &str) {
    assert_eq!(response.status, 404, "{what}: {response}");
    assert_eq!(
        response.media_type().as_deref(),
        Some("application/json"),
        "{what}: {response}"
    );
    let body = response.json();
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("Session not found")),
        "{what}: {response}"
    );
}

// ---- the Python SDK through HAProxy ----------------------------------------------

/// One phase's report of sdk_cluster_client.py.
fn read_phase(
    lines: &mpsc::Receiver<String>,
    phase: u64,
    context: &dyn Fn() -> String,
) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines.recv_timeout(left).unwrap_or_else(|_| {
            panic!("no phase {phase} report from the SDK client\n{}", context())
        });
        let Ok(report) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if report["phase"] == phase {
            return report["sessions"].as_array().cloned().unwrap_or_default();
        }
    }
}

/// Every session of `reports` has a session id naming a node, and every
/// one of its whoami calls (`calls`, or `sse_calls` for an HTTP+SSE
/// session) was answered by one child on that node. Returns each
/// session's node, child pid and `FORKLINE_SESSION_ID`.
fn check_sessions(
    reports: &[Value],
    (calls, sse_calls): (usize, usize),
    context: &dyn Fn() -> String,
) -> Vec<(String, u32, String)> {
    assert_eq!(reports.len(), SDK_SESSIONS, "{}", context());
    let mut seen = Vec::new();
    for report in reports {
        let id = report["session_id"]
            .as_str()
            .unwrap_or_else(|| panic!("a session without an id: {report}\n{}", context()));
        let node = node_of(id).to_string();
        let answers = report["whoami"].as_array().expect("whoami answers");
        let want = if report["transport"] == "sse" {
            sse_calls
        } else {
            calls
        };
        assert_eq!(answers.len(), want, "{report}");
        let pid = answers[0]["pid"].as_u64().expect("pid") as u32;
        for answer in answers {
            assert_eq!(
                answer["test_node"],
                node.as_str(),
                "a request of {id} left its node: {report}"
            );
            assert_eq!(
                answer["pid"], pid,
                "a request of {id} reached another child: {report}"
            );
        }
        let table_id = answers[0]["session"]
            .as_str()
            .expect("FORKLINE_SESSION_ID")
            .to_string();
        seen.push((node, pid, table_id));
    }
    seen
}

#[test]
fn sdk_sessions_spread_over_all_nodes_stay_on_their_own_and_outlive_a_balancer_restart() {
    let Some(python) = sdk_python() else { return };
    let Some(mut cluster) = Cluster::start(&[], &cluster_child()) else {
        return;
    };
    const CALLS: usize = 3;
    let mut client = Command::new(&python)
        .arg("-u")
        .arg(fixture("sdk_cluster_client.py"))
        .args(["--sessions", &SDK_SESSIONS.to_string()])
        .args(["--calls", &CALLS.to_string()])
        // Every fifth session over the HTTP+SSE transport (`?sessionId=`).
        .args(["--sse-every", "5"])
        .args(["--timeout", "120"])
        .arg(format!("http://{}", cluster.addr()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the SDK client");
    let _guard = KillOnDrop(client.id());
    let mut stdin: ChildStdin = client.stdin.take().expect("stdin piped");
    let stderr = Some(drain(client.stderr.take().expect("stderr piped")));
    let (tx, lines) = mpsc::channel();
    let stdout = client.stdout.take().expect("stdout piped");
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let stderr = Mutex::new(stderr);
    let context = || {
        let err = join_within(stderr.lock().unwrap().take(), Duration::from_secs(5));
        format!("SDK client stderr:\n{err}")
    };

    // Phase 1: every session opened and asked whoami, through the balancer.
    let first = read_phase(&lines, 1, &context);
    let seen = check_sessions(&first, (CALLS, CALLS), &context);
    let nodes: BTreeSet<&str> = seen.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(
        nodes,
        NODES.into_iter().collect(),
        "sessions did not spread over every node"
    );
    let sse = first.iter().filter(|r| r["transport"] == "sse").count();
    assert_eq!(sse, SDK_SESSIONS / 5, "HTTP+SSE sessions");
    // Each child is one that its node lists, under the session that the
    // child's FORKLINE_SESSION_ID names.
    let listed: HashMap<&str, Vec<Value>> =
        cluster.nodes.iter().map(|n| (n.id, n.sessions())).collect();
    for (node, pid, table_id) in &seen {
        let entry = listed[node.as_str()]
            .iter()
            .find(|e| e["child_pid"] == *pid)
            .unwrap_or_else(|| {
                panic!(
                    "{node}'s /sessions does not list child {pid}: {:?}",
                    listed[node.as_str()]
                )
            });
        assert_eq!(entry["id"], table_id.as_str(), "{entry}");
    }

    // The balancer is replaced; it kept nothing, so nothing is lost.
    let haproxy = cluster.haproxy.clone();
    cluster.lb.restart(&haproxy);
    writeln!(stdin, "go").expect("tell the SDK client to go on");
    stdin.flush().expect("flush");

    // Phase 2: the same Streamable HTTP sessions, each still on its own
    // node and child. (An HTTP+SSE session lives on its one stream, which
    // the restart cut: it ended as after any lost connection.)
    let second = read_phase(&lines, 2, &context);
    let after = check_sessions(&second, (2 * CALLS, CALLS), &context);
    assert_eq!(
        after.iter().map(|(n, p, _)| (n, p)).collect::<Vec<_>>(),
        seen.iter().map(|(n, p, _)| (n, p)).collect::<Vec<_>>(),
        "a session moved across the restart"
    );
    let status = wait_child(&mut client, Duration::from_secs(60));
    assert!(
        status.success(),
        "SDK client exited {status}\n{}",
        context()
    );
}

/// Kills a process by pid when dropped (unless it is gone already).
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: a signal to a pid we spawned; if it was already reaped
        // the pid is not reused this soon on a test machine.
        unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
    }
}

fn wait_child(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let mut status = None;
    poll_until(timeout, || {
        status = child.try_wait().expect("try_wait");
        status.is_some()
    });
    status.unwrap_or_else(|| panic!("still running after {timeout:?}"))
}

// ---- drain and loss ------------------------------------------------------------

#[test]
fn a_draining_node_takes_no_new_sessions_and_answers_what_it_has_in_flight() {
    let Some(mut cluster) = Cluster::start(&["--shutdown-grace", "30"], &cluster_child()) else {
        return;
    };
    let by_node = cluster.sessions_on_every_node(2);
    let draining = "forkline-1";
    let busy = by_node[draining][0].clone();
    let slow = thread::spawn(move || {
        busy.call(
            json!("slow"),
            "tools/call",
            json!({"name": "sleep", "arguments": {"ms": 3000}}),
        )
    });
    let node = cluster.node(draining);
    assert!(
        poll_until(PATIENCE, || node
            .sessions()
            .iter()
            .any(|s| s["inflight"] == 1)),
        "the slow call never reached {draining}"
    );

    node.forkline.signal(libc::SIGTERM);
    assert!(
        poll_until(PATIENCE, || node.healthz() == (503, "draining".into())),
        "{draining} never said draining: {:?}",
        node.healthz()
    );
    // New sessions, at once and after the balancer has seen the 503: none
    // on the draining node.
    let mut fresh: Vec<McpSession> = (0..4).map(|_| McpSession::open(cluster.addr())).collect();
    cluster
        .lb
        .wait_for_log(&format!("sessions/{draining} is DOWN"));
    fresh.extend((0..4).map(|_| McpSession::open(cluster.addr())));
    for session in &fresh {
        assert_ne!(
            node_of(&session.id),
            draining,
            "a new session on the draining node"
        );
        assert_on_its_node(session);
    }

    // What it had in flight is answered, then it ends.
    let answer = slow.join().expect("the slow call");
    assert_eq!(answer["result"]["content"][0]["text"], "slept", "{answer}");
    let status = cluster.node_mut(draining).forkline.wait_exit(PATIENCE);
    assert_eq!(status.code(), Some(0), "the drained node's exit");
    for session in &by_node[draining] {
        assert_session_gone(&ping(session), "a session of the drained node");
    }
    for other in ["forkline-0", "forkline-2"] {
        for session in &by_node[other] {
            assert_on_its_node(session);
        }
    }
}

#[test]
fn a_killed_nodes_sessions_get_404_and_the_others_are_untouched() {
    let Some(mut cluster) = Cluster::start(&[], &cluster_child()) else {
        return;
    };
    let by_node = cluster.sessions_on_every_node(2);
    let lost = "forkline-2";
    let node = cluster.node_mut(lost);
    node.forkline.signal(libc::SIGKILL);
    node.forkline.wait_exit(PATIENCE);

    // Before the balancer's check has noticed (its connect fails) and after.
    for session in &by_node[lost] {
        assert_session_gone(&ping(session), "right after the kill");
    }
    cluster.lb.wait_for_log(&format!("sessions/{lost} is DOWN"));
    for session in &by_node[lost] {
        assert_session_gone(&ping(session), "POST once the balancer knows");
        let get = request(cluster.addr(), &session.get_req());
        assert_session_gone(&get, "GET");
        assert_session_gone(&session.delete(), "DELETE");
    }
    for other in ["forkline-0", "forkline-1"] {
        for session in &by_node[other] {
            assert_on_its_node(session);
        }
    }
    for _ in 0..6 {
        let session = McpSession::open(cluster.addr());
        assert_ne!(node_of(&session.id), lost, "a new session on the lost node");
    }
}

#[test]
fn a_session_no_live_node_holds_gets_404_from_the_balancer_and_never_reaches_a_node() {
    let Some(cluster) = Cluster::start(&[], &cluster_child()) else {
        return;
    };
    let before: Vec<usize> = cluster.nodes.iter().map(|n| n.sessions().len()).collect();
    let random = "0123456789abcdef0123456789abcdef";
    for id in [
        format!("forkline-9.{random}"),
        random.to_string(),
        String::new(),
    ] {
        let post = mcp_post_json(&rpc_request(json!(1), "ping", json!({})))
            .header("Mcp-Session-Id", &id)
            .header("MCP-Protocol-Version", "2025-06-18");
        assert_session_gone(
            &request(cluster.addr(), &post),
            &format!("POST /mcp {id:?}"),
        );
        let messages = Request::post(&format!("/messages?sessionId={id}"))
            .header("Accept", ACCEPT_BOTH)
            .json(&rpc_request(json!(1), "ping", json!({})));
        assert_session_gone(
            &request(cluster.addr(), &messages),
            &format!("POST /messages {id:?}"),
        );
    }
    // A live node's name with a session it never had: the node's own 404.
    let post = mcp_post_json(&rpc_request(json!(1), "ping", json!({})))
        .header("Mcp-Session-Id", &format!("forkline-1.{random}"));
    assert_session_gone(
        &request(cluster.addr(), &post),
        "a live node's unknown session",
    );
    let after: Vec<usize> = cluster.nodes.iter().map(|n| n.sessions().len()).collect();
    assert_eq!(before, after, "no session was started for these requests");
}

/// A stand-in node: `GET /healthz` is 200, anything else 503 with
/// `Retry-After` and a -32001 body, as a forkline answers for a busy
/// session. One connection at a time, each closed after its answer;
/// serves until dropped (or for a minute at most).
struct BusyNode {
    addr: SocketAddr,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl BusyNode {
    fn start() -> BusyNode {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline {
                match listener.accept() {
                    Ok((stream, _)) => BusyNode::answer(stream),
                    Err(_) => match stopped.recv_timeout(Duration::from_millis(5)) {
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                        _ => return,
                    },
                }
            }
        });
        BusyNode {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn answer(stream: TcpStream) {
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let mut reader = BufReader::new(&stream);
        let mut first = String::new();
        if reader.read_line(&mut first).is_err() {
            return;
        }
        let mut length = 0;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; length];
        let _ = std::io::Read::read_exact(&mut reader, &mut body);
        let answer = if first.starts_with("GET /healthz ") {
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n".to_string()
        } else {
            let body = r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32001,"message":"the session is busy; retry"}}"#;
            format!(
                "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
        };
        let _ = (&stream).write_all(answer.as_bytes());
    }
}

impl Drop for BusyNode {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[test]
fn a_nodes_own_503_passes_the_balancer_unchanged() {
    let Some(haproxy) = haproxy_binary() else {
        return;
    };
    let busy = BusyNode::start();
    let servers = vec![(busy.addr, busy.addr.port()); NODES.len()];
    let lb = Haproxy::start_for(&haproxy, &servers);
    let post = mcp_post_json(&rpc_request(json!(1), "ping", json!({}))).header(
        "Mcp-Session-Id",
        "forkline-0.0123456789abcdef0123456789abcdef",
    );
    let response = request(lb.addr, &post);
    assert_eq!(response.status, 503, "{response}");
    assert_eq!(response.header("Retry-After"), Some("1"), "{response}");
    assert_eq!(response.json()["error"]["code"], -32001, "{response}");
}

#[test]
fn a_config_files_servers_are_routed_by_session_id_on_both_transports() {
    let dir = TempDir::new("scaleout-config");
    let file = dir.path.join("servers.json");
    let words = cluster_child();
    let entry = json!({"command": words[0], "args": words[1..]});
    let config = json!({"mcpServers": {"alpha": entry, "beta": entry}});
    std::fs::write(&file, config.to_string()).expect("config file");
    let file = file.to_str().expect("utf8 path").to_string();
    // Two `http://ADDR/servers/NAME/mcp` lines and the admin line each.
    let Some(cluster) = Cluster::start_with(&["--config", &file], &[], 3) else {
        return;
    };
    let mut nodes = BTreeSet::new();
    for server in ["alpha", "beta"] {
        for _ in 0..6 {
            let path = format!("/servers/{server}/mcp");
            let session = McpSession::open_at(cluster.addr(), &path, "2025-06-18", &[]);
            assert_on_its_node(&session);
            nodes.insert(node_of(&session.id).to_string());
        }
    }
    assert_eq!(
        nodes.len(),
        NODES.len(),
        "sessions did not spread: {nodes:?}"
    );

    // HTTP+SSE at a named path: `?sessionId=` carries the node.
    let mut sse = HttpConn::connect(cluster.addr())
        .open(&Request::get("/servers/beta/sse").header("Accept", ACCEPT_SSE));
    sse.head.assert_status(200);
    let endpoint = sse.next_event().data.unwrap_or_default();
    let id = endpoint
        .strip_prefix("/servers/beta/messages?sessionId=")
        .unwrap_or_else(|| panic!("endpoint {endpoint:?}"))
        .to_string();
    let post = |body: &Value| {
        let posted = request(
            cluster.addr(),
            &Request::post(&endpoint)
                .header("Accept", ACCEPT_BOTH)
                .json(body),
        );
        assert_eq!(posted.status, 202, "{posted}");
    };
    post(&initialize_body(json!(1), "2024-11-05"));
    sse.next_message();
    post(&rpc_notification("notifications/initialized", json!({})));
    post(&rpc_request(
        json!(7),
        "tools/call",
        json!({"name": "whoami", "arguments": {}}),
    ));
    let (_, answer) = sse.next_message();
    let text = answer["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("{answer}"));
    let me: Value = serde_json::from_str(text).expect("whoami JSON");
    assert_eq!(me["test_node"], node_of(&id), "{answer}");
}

// ---- the stateless era ----------------------------------------------------------

/// `fake/env` of the stateless child that answers this request.
fn stateless_env(conn: HttpConn, token: Option<&str>) -> Value {
    let mut req = stateless_post(&modern(json!("env"), "fake/env", json!({})));
    if let Some(token) = token {
        req = req.header("Authorization", &format!("Bearer {token}"));
    }
    let mut conn = conn;
    let response = conn.request(&req);
    response.assert_status(200);
    response.json()["result"].clone()
}

#[test]
fn stateless_requests_of_one_token_always_reach_the_same_node() {
    let dir = TempDir::new("scaleout-tokens");
    let tokens = dir.path.join("tokens");
    let names: Vec<String> = (0..12).map(|n| format!("principal-{n}")).collect();
    let file: String = names.iter().map(|n| format!("{n}:{n}-secret\n")).collect();
    std::fs::write(&tokens, file).expect("token file");
    let tokens = tokens.to_str().expect("utf8 path").to_string();
    let Some(cluster) = Cluster::start(
        &["--auth-token-file", &tokens],
        &fake_server(&["--initialize"]),
    ) else {
        return;
    };
    let mut home: BTreeMap<&str, String> = BTreeMap::new();
    for round in 0..4 {
        for name in &names {
            let env = stateless_env(
                HttpConn::connect(cluster.addr()),
                Some(&format!("{name}-secret")),
            );
            let node = env["test_node"].as_str().expect("test_node").to_string();
            let first = home.entry(name).or_insert_with(|| node.clone());
            assert_eq!(*first, node, "round {round}: {name} moved");
        }
    }
    let used: BTreeSet<&String> = home.values().collect();
    assert!(
        used.len() >= 2,
        "twelve principals all hashed onto one node: {home:?}"
    );
}

#[test]
fn stateless_requests_from_one_address_always_reach_the_same_node() {
    let Some(cluster) = Cluster::start(&[], &fake_server(&["--initialize"])) else {
        return;
    };
    let mut home: BTreeMap<u8, String> = BTreeMap::new();
    for round in 0..3 {
        for last in 2..14u8 {
            let from = std::net::Ipv4Addr::new(127, 0, 0, last);
            let stream =
                tcp_connect_from(from, cluster.addr()).expect("connect from a loopback address");
            let env = stateless_env(HttpConn::from_stream(stream), None);
            let node = env["test_node"].as_str().expect("test_node").to_string();
            let first = home.entry(last).or_insert_with(|| node.clone());
            assert_eq!(*first, node, "round {round}: 127.0.0.{last} moved");
        }
    }
    let used: HashSet<&String> = home.values().collect();
    assert!(
        used.len() >= 2,
        "twelve addresses all hashed onto one node: {home:?}"
    );
}

// ---- one node on its own --------------------------------------------------------

#[test]
fn session_ids_of_both_transports_lead_with_the_node_id_printed_at_start() {
    let forkline = serve_http(&["--node-id", "edge-7"], &fake_server(&["--initialize"]));
    let line = forkline.wait_for_log("forkline: node ");
    assert_eq!(line, "forkline: node edge-7");
    let session = McpSession::open(http_addr(&forkline));
    assert!(
        session.id.starts_with("edge-7.") && is_session_id(&session.id),
        "{}",
        session.id
    );
    let mut sse = HttpConn::connect(http_addr(&forkline))
        .open(&Request::get("/sse").header("Accept", ACCEPT_SSE));
    sse.head.assert_status(200);
    let endpoint = sse.next_event().data.unwrap_or_default();
    let id = endpoint
        .strip_prefix("/messages?sessionId=")
        .unwrap_or_default();
    assert!(id.starts_with("edge-7.") && is_session_id(id), "{endpoint}");

    // Without --node-id: the host name's, valid, and printed.
    let forkline = serve_http(&[], &[]);
    let line = forkline.wait_for_log("forkline: node ");
    let node = line.strip_prefix("forkline: node ").unwrap_or_default();
    assert!(
        (1..=32).contains(&node.len())
            && node.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'),
        "{line}"
    );
    let session = McpSession::open(http_addr(&forkline));
    assert_eq!(node_of(&session.id), node);
}

#[test]
fn a_session_id_naming_another_node_gets_404_whatever_else_the_request_says() {
    let dir = TempDir::new("scaleout-node");
    let tokens = dir.path.join("tokens");
    std::fs::write(&tokens, "alice:alice-secret\n").expect("token file");
    let forkline = serve_http(
        &[
            "--node-id",
            "n1",
            "--auth-token-file",
            tokens.to_str().expect("utf8"),
        ],
        &fake_server(&["--initialize"]),
    );
    let addr = http_addr(&forkline);
    let other = "n2.0123456789abcdef0123456789abcdef";
    let ping = rpc_request(json!(1), "ping", json!({}));
    let cases = [
        (
            "POST, no token",
            mcp_post_json(&ping).header("Mcp-Session-Id", other),
        ),
        (
            "POST, a stateless-era version",
            mcp_post_json(&ping)
                .header("Mcp-Session-Id", other)
                .header("MCP-Protocol-Version", MODERN),
        ),
        (
            "POST, not JSON",
            Request::post("/mcp")
                .header("Mcp-Session-Id", other)
                .header("Content-Type", "text/plain")
                .body("x"),
        ),
        (
            "GET, no Accept",
            Request::get("/mcp").header("Mcp-Session-Id", other),
        ),
        (
            "DELETE",
            Request::delete("/mcp").header("Mcp-Session-Id", other),
        ),
        (
            "PUT",
            Request::new("PUT", "/mcp").header("Mcp-Session-Id", other),
        ),
        (
            "POST /messages",
            Request::post(&format!("/messages?sessionId={other}")).json(&ping),
        ),
    ];
    for (what, req) in cases {
        assert_session_gone(&request(addr, &req), what);
    }
    // This node's own ids go the usual way: the token first.
    let own = mcp_post_json(&ping).header("Mcp-Session-Id", "n1.0123456789abcdef0123456789abcdef");
    assert_eq!(request(addr, &own).status, 401);
    let own = own.header("Authorization", "Bearer alice-secret");
    assert_session_gone(&request(addr, &own), "an unknown session of this node");
}

#[test]
fn a_bad_node_id_exits_2_naming_the_flag() {
    for bad in ["a.b", "", "under_score", &"n".repeat(33)] {
        let run = run_forkline(&["serve", "--node-id", bad], b"");
        assert_eq!(run.status.code(), Some(2), "{bad:?}: {run:?}");
        assert!(run.stderr.contains("--node-id"), "{bad:?}: {}", run.stderr);
    }
}
