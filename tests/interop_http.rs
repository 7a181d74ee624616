//! Interop of `forkline serve --http` with real MCP clients nobody here
//! wrote: the official Python SDK (`mcp`, pinned in `.ci/requirements.txt`)
//! with its `streamable_http` and `sse` client transports, and the official
//! TypeScript SDK (`@modelcontextprotocol/sdk`, pinned in `.ci/package.json`)
//! with `StreamableHTTPClientTransport` and `SSEClientTransport`, and its
//! 2.x client package (`@modelcontextprotocol/client`, also pinned there),
//! which speaks the stateless era too. Each
//! connects through forkline to a stdio server forkline spawns per session:
//! the built-in `echo-server`, the reference server `server-everything` (run
//! with node from `target/npm`, never downloaded at test time), or the
//! Python SDK's own server (`tests/fixtures/sdk_server.py --whoami`).
//!
//! The clients are `tests/fixtures/sdk_http_client.py`,
//! `tests/fixtures/ts_http_client.mjs` and `tests/fixtures/ts2_http_client.mjs`;
//! each prints one JSON report with every HTTP exchange it made. What is
//! checked:
//! - the handshake era end to end: `initialize`, `tools/list`, `tools/call`,
//!   answers unchanged (non-ASCII, JSON escapes);
//! - the Python SDK's default `mode="auto"`: its `server/discover` probe
//!   (`MCP-Protocol-Version: 2026-07-28`, no session) is refused so that it
//!   falls back to `initialize` (mcp/client/_probe.py);
//! - the TypeScript 2.x client in `versionNegotiation: { mode: "auto" }`:
//!   its `server/discover` probe, then the stateless era to `echo-server`
//!   and to server-everything (adapted by forkline), with progress, and
//!   sampling, roots and elicitation as InputRequiredResult rounds;
//! - progress notifications of a long tool call reach the client on the
//!   request's stream (streamable HTTP) or the session's SSE stream;
//! - the session ends when the client says so (DELETE, or closing the SSE
//!   stream) and its child is gone;
//! - ten concurrent clients get ten sessions and ten children.
//!
//! Without the SDK venv or the Node packages the tests say so and pass,
//! except under CI, where they fail: there `.ci/run` must have run
//! `.ci/setup-sdk`, and a skipped interop test would pass without testing.
//!
//! Processes: every client is killed and reaped by pid on every path; this
//! test binary makes itself a child subreaper, so a child forkline leaves
//! behind when it is killed becomes ours and is killed and reaped too.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::Duration;

use common::http::is_session_id;
use common::interop::{descendants, drain, join_within, sdk_python, skip_unless_ci};
use common::*;
use serde_json::Value;

/// How long a client script gives itself (`--timeout`) for everything.
const CLIENT_TIMEOUT_SECS: u64 = 30;

/// Our bound on one client process: its own timeout plus interpreter
/// start-up on a busy machine.
const CLIENT_PATIENCE: Duration = Duration::from_secs(CLIENT_TIMEOUT_SECS + 30);

/// Text sent through `echo`: non-ASCII and JSON-escaped characters, so a
/// relay that re-encodes instead of forwarding bytes unchanged shows up.
const ECHO_TEXT: &str = "forkline ✓ «interop» \"quoted\" \\ tab\tend";

/// The newest handshake-era version; both SDKs offer it in `initialize`,
/// and every server here accepts it.
const HANDSHAKE_VERSION: &str = "2025-11-25";

/// server-everything's tool that sends `notifications/progress` once per
/// step when the call carries a `progressToken`
/// (dist/tools/trigger-long-running-operation.js).
const PROGRESS_TOOL: &str = "trigger-long-running-operation";
/// server-everything's tool that sends `sampling/createMessage` to the
/// client (registered only for clients that declare sampling).
const SAMPLING_TOOL: &str = "trigger-sampling-request";
/// server-everything's tool that sends `roots/list` to the client
/// (registered only for clients that declare roots).
const ROOTS_TOOL: &str = "get-roots-list";
/// server-everything's tool that sends `elicitation/create` to the client
/// (registered only for clients that declare elicitation; the TypeScript
/// 2.x client only).
const ELICITATION_TOOL: &str = "trigger-elicitation-request";
/// The name ts2_http_client.mjs's elicitation handler gives.
const ELICITED_NAME: &str = "forkline elicited";
/// The stateless era's protocol version.
const STATELESS_VERSION: &str = "2026-07-28";
/// The root the Python client's roots callback lists.
const ROOT_URI: &str = "file:///srv/forkline-test-root";
/// What the Python client's sampling callback answers
/// (tests/fixtures/sdk_http_client.py).
const SAMPLED_TEXT: &str = "sampled by the forkline test client";
const PROGRESS_ARGS: &str = r#"{"duration": 1.5, "steps": 3}"#;

/// How many clients the concurrency test runs at once (below forkline's
/// default `--max-sessions-per-client` of 16).
const CONCURRENT_CLIENTS: usize = 10;

// ---- what a client is asked to do ------------------------------------------

/// One of the two HTTP transports of MCP.
#[derive(Clone, Copy, Debug)]
enum Transport {
    /// Streamable HTTP (2025-03-26 on), at `/mcp`.
    StreamableHttp,
    /// HTTP+SSE (2024-11-05), at `/sse` and the `endpoint` it names.
    Sse,
}

impl Transport {
    fn flag(self) -> &'static str {
        match self {
            Transport::StreamableHttp => "streamable_http",
            Transport::Sse => "sse",
        }
    }

    /// The URL a client of this transport is given.
    fn url(self, proxy: &Forkline) -> String {
        match self {
            Transport::StreamableHttp => proxy.http_url(),
            Transport::Sse => format!("{}/sse", proxy.http_origin()),
        }
    }
}

/// The calls a client makes after `tools/list`.
struct Calls {
    /// Tool called with `ECHO_TEXT` as its argument `arg`.
    tool: &'static str,
    arg: &'static str,
    /// Also call `PROGRESS_TOOL` with a progress callback.
    progress: bool,
    /// Also call `whoami` (sdk_server.py --whoami).
    whoami: bool,
    /// Also call `SAMPLING_TOOL`, which asks the client for sampling
    /// (the Python client only).
    sampling: bool,
    /// Also call `ROOTS_TOOL`, which asks the client for its roots (the
    /// Python client only).
    roots: bool,
    /// Also call `ELICITATION_TOOL`, which asks the client to fill in a
    /// form (the TypeScript 2.x client only).
    elicitation: bool,
}

/// forkline's built-in `echo-server`: `echo` returns `text`.
const ECHO_SERVER: Calls = Calls {
    tool: "echo",
    arg: "text",
    progress: false,
    whoami: false,
    sampling: false,
    roots: false,
    elicitation: false,
};

/// server-everything: `echo` returns `Echo: ` + `message`; a progress call.
const EVERYTHING: Calls = Calls {
    tool: "echo",
    arg: "message",
    progress: true,
    whoami: false,
    sampling: false,
    roots: false,
    elicitation: false,
};

/// sdk_server.py --whoami: `echo` returns `text`; `whoami` names its child.
const WHOAMI_SERVER: Calls = Calls {
    tool: "echo",
    arg: "text",
    progress: false,
    whoami: true,
    sampling: false,
    roots: false,
    elicitation: false,
};

impl Calls {
    /// The options both client scripts take for these calls.
    fn options(&self) -> Vec<String> {
        let mut options = vec![
            "--tool".to_string(),
            self.tool.to_string(),
            "--arg".to_string(),
            self.arg.to_string(),
            "--text".to_string(),
            ECHO_TEXT.to_string(),
            "--timeout".to_string(),
            CLIENT_TIMEOUT_SECS.to_string(),
        ];
        if self.progress {
            options.extend(
                [
                    "--progress-tool",
                    PROGRESS_TOOL,
                    "--progress-args",
                    PROGRESS_ARGS,
                ]
                .map(String::from),
            );
        }
        if self.whoami {
            options.extend(["--whoami-tool", "whoami"].map(String::from));
        }
        if self.sampling {
            options.extend(["--sampling-tool", SAMPLING_TOOL].map(String::from));
        }
        if self.roots {
            options.extend(["--roots-tool", ROOTS_TOOL].map(String::from));
        }
        if self.elicitation {
            options.extend(["--elicitation-tool", ELICITATION_TOOL].map(String::from));
        }
        options
    }
}

// ---- the software under test's peers ---------------------------------------

/// The Node packages in `target/npm`, as `.ci/setup-sdk` installs them.
struct NodePackages {
    /// server-everything's entry point (`node ENTRY stdio`).
    everything: PathBuf,
    /// The node_modules holding the TypeScript SDK and its 2.x client
    /// package (ts_http_client.mjs and ts2_http_client.mjs `--modules`).
    modules: PathBuf,
}

impl NodePackages {
    /// The installed packages, or `None` (after a notice) when they are
    /// missing and this is not CI.
    fn find() -> Option<NodePackages> {
        let modules = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/npm/node_modules");
        let packages = NodePackages {
            everything: modules.join("@modelcontextprotocol/server-everything/dist/index.js"),
            modules: modules.clone(),
        };
        let client = modules.join("@modelcontextprotocol/sdk/dist/esm/client/streamableHttp.js");
        let client2 = modules.join("@modelcontextprotocol/client/dist/index.mjs");
        for path in [&packages.everything, &client, &client2] {
            if !path.exists() {
                skip_unless_ci(&format!("{} does not exist", path.display()));
                return None;
            }
        }
        Some(packages)
    }

    /// `node …/server-everything/dist/index.js stdio`.
    fn everything_command(&self) -> Vec<String> {
        vec![
            "node".to_string(),
            self.everything.display().to_string(),
            "stdio".to_string(),
        ]
    }
}

/// `PYTHON tests/fixtures/sdk_server.py --whoami`.
fn whoami_server_command(python: &Path) -> Vec<String> {
    vec![
        python.display().to_string(),
        "-u".to_string(),
        fixture("sdk_server.py").display().to_string(),
        "--whoami".to_string(),
    ]
}

/// Makes this test process the reaper of orphans among its descendants
/// (prctl(2) `PR_SET_CHILD_SUBREAPER`), so a child left behind when a test
/// kills forkline is ours to kill and reap instead of init's.
fn become_subreaper() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes one integer.
        let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        assert_eq!(
            rc,
            0,
            "prctl(PR_SET_CHILD_SUBREAPER): {}",
            std::io::Error::last_os_error()
        );
    });
}

/// `forkline serve --http 127.0.0.1:0 -- CHILD…`, whose `Drop` also kills
/// and reaps (by pid) every process forkline had started.
struct Proxy {
    forkline: Option<Forkline>,
}

impl Proxy {
    /// Panics (with forkline's log) when forkline does not report an
    /// `http://` listener; an empty `child` means `forkline echo-server`.
    fn start(child: &[String]) -> Proxy {
        become_subreaper();
        let forkline = Forkline::serve_http(&[], child);
        Proxy {
            forkline: Some(forkline),
        }
    }

    /// `forkline serve --config FILE --http 127.0.0.1:0`, FILE holding
    /// `config`; waits for one `http://…/servers/NAME/mcp` line per server.
    fn start_config(config: &Value, servers: usize) -> Proxy {
        become_subreaper();
        let dir = TempDir::new("interop-config");
        let file = dir.path.join("servers.json");
        std::fs::write(&file, config.to_string()).expect("write the config file");
        let file = file.to_string_lossy().into_owned();
        let mut forkline = Forkline::serve(&["--config", &file, "--http", "127.0.0.1:0"], servers);
        // The file lives as long as forkline (which reads it at SIGHUP).
        forkline.tempdir = dir;
        Proxy {
            forkline: Some(forkline),
        }
    }

    /// The endpoint of server `name`, as forkline printed it.
    fn server_url(&self, name: &str) -> String {
        let suffix = format!("/servers/{name}/mcp");
        self.get()
            .listening
            .iter()
            .find(|l| l.starts_with("http://") && l.ends_with(&suffix))
            .unwrap_or_else(|| panic!("no listener line for {suffix}: {:?}", self.get().listening))
            .clone()
    }

    fn get(&self) -> &Forkline {
        self.forkline.as_ref().expect("forkline runs until drop")
    }

    /// Live (not zombie) children of forkline.
    fn live_children(&self) -> Vec<u32> {
        children_of(self.get().pid())
            .into_iter()
            .filter(|(_, state)| *state != 'Z')
            .map(|(pid, _)| pid)
            .collect()
    }

    /// Waits until forkline has exactly `n` live children.
    fn assert_children(&self, n: usize) {
        let mut live = Vec::new();
        let settled = poll_until(PATIENCE, || {
            live = self.live_children();
            live.len() == n
        });
        assert!(
            settled,
            "forkline has children {live:?}, expected {n}; log:\n{}",
            self.get().stderr_text()
        );
    }

    /// Waits until forkline has no live child left: every session the
    /// clients ended has stopped its child.
    fn assert_no_children_within(&self, timeout: Duration) {
        let mut left = Vec::new();
        let gone = poll_until(timeout, || {
            left = self.live_children();
            left.is_empty()
        });
        assert!(
            gone,
            "forkline still has children {left:?} ({}) {timeout:?} after every client ended its \
             session; log:\n{}",
            left.iter()
                .map(|p| cmdline(*p))
                .collect::<Vec<_>>()
                .join(" | "),
            self.get().stderr_text()
        );
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let Some(forkline) = self.forkline.take() else {
            return;
        };
        let orphans = descendants(forkline.pid());
        drop(forkline); // kills and reaps forkline
        for pid in orphans {
            // SAFETY: plain kill(2)/waitpid(2) on pids we saw descend from
            // forkline; as subreaper we reap them, so none is reused meanwhile.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            poll_until(PATIENCE, || {
                let rc = unsafe { libc::waitpid(pid as i32, std::ptr::null_mut(), libc::WNOHANG) };
                rc != 0 // reaped (pid) or not ours / already gone (-1)
            });
        }
    }
}

// ---- running a client --------------------------------------------------------

/// A running client script. Dropping it kills whatever it started, then
/// it, and reaps it.
struct ClientProcess {
    what: String,
    child: Child,
    stdout: Option<JoinHandle<Vec<u8>>>,
    stderr: Option<JoinHandle<Vec<u8>>>,
}

impl ClientProcess {
    fn spawn(what: String, mut command: Command) -> ClientProcess {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        let stdout = drain(child.stdout.take().expect("stdout piped"));
        let stderr = drain(child.stderr.take().expect("stderr piped"));
        ClientProcess {
            what,
            child,
            stdout: Some(stdout),
            stderr: Some(stderr),
        }
    }

    /// `PYTHON sdk_http_client.py --transport T --mode MODE CALLS… URL`.
    fn python(
        python: &Path,
        transport: Transport,
        mode: &str,
        calls: &Calls,
        url: &str,
    ) -> ClientProcess {
        let mut command = Command::new(python);
        command
            .arg("-u")
            .arg(fixture("sdk_http_client.py"))
            .args(["--transport", transport.flag(), "--mode", mode])
            .args(calls.options())
            .arg(url);
        let what = format!(
            "sdk_http_client.py --transport {} --mode {mode} {url}",
            transport.flag()
        );
        ClientProcess::spawn(what, command)
    }

    /// `node ts_http_client.mjs --transport T CALLS… URL`.
    fn typescript(
        packages: &NodePackages,
        transport: Transport,
        calls: &Calls,
        url: &str,
    ) -> ClientProcess {
        let mut command = Command::new("node");
        command
            .arg(fixture("ts_http_client.mjs"))
            .args(["--transport", transport.flag()])
            .arg("--modules")
            .arg(&packages.modules)
            .args(calls.options())
            .arg(url);
        let what = format!("ts_http_client.mjs --transport {} {url}", transport.flag());
        ClientProcess::spawn(what, command)
    }

    /// `node ts2_http_client.mjs --mode auto CALLS… URL`: the TypeScript
    /// 2.x client, probing `server/discover` first.
    fn typescript2(packages: &NodePackages, calls: &Calls, url: &str) -> ClientProcess {
        let mut command = Command::new("node");
        command
            .arg(fixture("ts2_http_client.mjs"))
            .args(["--mode", "auto"])
            .arg("--modules")
            .arg(&packages.modules)
            .args(calls.options())
            .arg(url);
        ClientProcess::spawn(format!("ts2_http_client.mjs --mode auto {url}"), command)
    }

    /// Waits (bounded) for the client to exit and returns its report;
    /// panics with everything known (its output, forkline's log) when it
    /// fails, hangs or prints no JSON report.
    fn report(mut self, proxy: &Proxy) -> Report {
        let mut status: Option<ExitStatus> = None;
        poll_until(CLIENT_PATIENCE, || {
            status = self.child.try_wait().expect("try_wait client");
            status.is_some()
        });
        if status.is_none() {
            self.kill_all();
        }
        let stdout = join_within(self.stdout.take(), PATIENCE);
        let stderr = join_within(self.stderr.take(), PATIENCE);
        let context = format!(
            "client: {}\n--- client stdout ---\n{stdout}\n--- client stderr ---\n{stderr}\n--- \
             forkline serve log ---\n{}",
            self.what,
            proxy.get().stderr_text()
        );
        match status {
            None => panic!("client still running after {CLIENT_PATIENCE:?}; killed\n{context}"),
            Some(s) if !s.success() => panic!("client failed ({s})\n{context}"),
            Some(_) => {}
        }
        let line = stdout.lines().rev().find(|l| !l.trim().is_empty());
        let json = serde_json::from_str(line.unwrap_or(""))
            .unwrap_or_else(|e| panic!("client printed no JSON report ({e})\n{context}"));
        Report { json, context }
    }

    fn kill_all(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        for pid in descendants(self.child.id()) {
            // SAFETY: plain kill(2) on a pid seen descending from our child.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ClientProcess {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// What a client script printed, with the context to explain a failure.
struct Report {
    json: Value,
    context: String,
}

impl Report {
    fn str(&self, field: &str) -> &str {
        self.json[field].as_str().unwrap_or_else(|| {
            panic!(
                "report lacks string {field:?}: {}\n{}",
                self.json, self.context
            )
        })
    }

    fn tools(&self) -> Vec<&str> {
        self.json["tools"]
            .as_array()
            .unwrap_or_else(|| panic!("report lacks \"tools\"\n{}", self.context))
            .iter()
            .map(|t| t.as_str().expect("tool names are strings"))
            .collect()
    }

    /// The HTTP exchanges, in the order their responses arrived.
    fn http(&self) -> &[Value] {
        self.json["http"]
            .as_array()
            .unwrap_or_else(|| panic!("report lacks \"http\"\n{}", self.context))
    }

    /// The handshake era at `HANDSHAKE_VERSION` (the Python report also
    /// names the era from the SDK's own record of it).
    fn assert_handshake(&self) {
        if !self.json["era"].is_null() {
            assert_eq!(self.str("era"), "legacy", "era\n{}", self.context);
        }
        assert_eq!(
            self.str("protocol_version"),
            HANDSHAKE_VERSION,
            "negotiated version\n{}",
            self.context
        );
    }

    /// The stateless era: no session id, every exchange a POST that got 200.
    fn assert_stateless(&self) {
        assert_eq!(self.str("era"), "modern", "era\n{}", self.context);
        assert_eq!(
            self.str("protocol_version"),
            "2026-07-28",
            "negotiated version\n{}",
            self.context
        );
        assert!(
            self.json["session_id"].is_null(),
            "a stateless client got a session id\n{}",
            self.context
        );
        for exchange in self.http() {
            assert_eq!(
                (exchange["method"].as_str(), exchange["status"].as_u64()),
                (Some("POST"), Some(200)),
                "every stateless exchange is a POST answered 200\n{}",
                self.context
            );
        }
    }

    fn assert_tools(&self, expected: &[&str]) {
        let tools = self.tools();
        for name in expected {
            assert!(
                tools.contains(name),
                "tools/list lacks {name:?}: {tools:?}\n{}",
                self.context
            );
        }
    }

    fn assert_echo(&self, expected: &str) {
        assert_eq!(
            self.str("echo"),
            expected,
            "tools/call echo\n{}",
            self.context
        );
    }

    /// At least one progress notification, and the tool's answer after them.
    fn assert_progress(&self) {
        let progress = self.json["progress"]
            .as_array()
            .unwrap_or_else(|| panic!("report lacks \"progress\"\n{}", self.context));
        assert!(
            !progress.is_empty(),
            "no notifications/progress reached the client during {PROGRESS_TOOL}\n{}",
            self.context
        );
        assert!(
            self.str("progress_result")
                .starts_with("Long running operation completed"),
            "{PROGRESS_TOOL} result\n{}",
            self.context
        );
    }

    /// The client ended its streamable HTTP session with a DELETE that
    /// forkline answered 200 or 204.
    fn assert_deleted(&self) {
        let deleted = self.http().iter().any(|e| {
            e["method"] == "DELETE"
                && (e["status"] == 200 || e["status"] == 204)
                && e["headers"]["mcp-session-id"].is_string()
        });
        assert!(
            deleted,
            "no DELETE with Mcp-Session-Id answered 200/204\n{}",
            self.context
        );
    }

    /// forkline assigned a session id `NODE.<32 lowercase hex characters>`
    /// (HTTP-CONTRACT.md, POST /mcp; PRODUCT.md, Scale-out).
    fn session_id(&self) -> &str {
        let id = self.str("session_id");
        assert!(
            is_session_id(id),
            "session id {id:?} is not NODE.<32 lowercase hex characters>\n{}",
            self.context
        );
        id
    }
}

// ---- Python SDK, streamable HTTP -------------------------------------------

/// The Python SDK in handshake mode → forkline → `echo-server`.
#[test]
fn python_streamable_http_calls_echo_server() {
    let Some(python) = sdk_python() else { return };
    let proxy = Proxy::start(&[]);
    let url = Transport::StreamableHttp.url(proxy.get());
    let report = ClientProcess::python(
        &python,
        Transport::StreamableHttp,
        "legacy",
        &ECHO_SERVER,
        &url,
    )
    .report(&proxy);
    report.assert_handshake();
    assert_eq!(report.tools(), ["echo"], "tools/list\n{}", report.context);
    report.assert_echo(ECHO_TEXT);
    report.session_id();
    // After `notifications/initialized` the SDK opens the session's GET
    // stream (mcp/client/streamable_http.py, post_writer).
    assert!(
        report
            .http()
            .iter()
            .any(|e| e["method"] == "GET" && e["status"] == 200),
        "the SDK's GET stream was not opened with 200\n{}",
        report.context
    );
    report.assert_deleted();
    proxy.assert_no_children_within(PATIENCE);
}

/// The Python SDK's default `mode="auto"`: its first request is the
/// `server/discover` probe of the stateless era (2026-07-28), which forkline
/// serves: no session, no handshake on the wire, every POST answered 200,
/// and the principal's one child adapted by forkline (echo-server answers
/// `initialize`, so forkline initializes it and answers the probe itself).
#[test]
fn python_streamable_http_auto_mode_speaks_the_stateless_era() {
    let Some(python) = sdk_python() else { return };
    let proxy = Proxy::start(&[]);
    let url = Transport::StreamableHttp.url(proxy.get());
    let report = ClientProcess::python(
        &python,
        Transport::StreamableHttp,
        "auto",
        &ECHO_SERVER,
        &url,
    )
    .report(&proxy);
    let probe = &report.http()[0];
    assert_eq!(
        (
            probe["method"].as_str(),
            probe["headers"]["mcp-protocol-version"].as_str(),
            probe["headers"]["mcp-method"].as_str(),
        ),
        (Some("POST"), Some("2026-07-28"), Some("server/discover")),
        "the SDK's first exchange should be the server/discover probe\n{}",
        report.context
    );
    report.assert_stateless();
    report.assert_echo(ECHO_TEXT);
    proxy.assert_children(1);
}

/// The Python SDK in its default mode → forkline → server-everything, a
/// handshake-era server that forkline adapts: tools, `echo`, and a long
/// call whose progress notifications reach the client on that request's
/// stream.
#[test]
fn python_stateless_calls_everything_with_progress() {
    let Some(python) = sdk_python() else { return };
    let Some(packages) = NodePackages::find() else {
        return;
    };
    let proxy = Proxy::start(&packages.everything_command());
    let url = Transport::StreamableHttp.url(proxy.get());
    let report = ClientProcess::python(
        &python,
        Transport::StreamableHttp,
        "auto",
        &EVERYTHING,
        &url,
    )
    .report(&proxy);
    report.assert_stateless();
    report.assert_tools(&["echo", PROGRESS_TOOL]);
    report.assert_echo(&format!("Echo: {ECHO_TEXT}"));
    report.assert_progress();
    proxy.assert_children(1);
}

/// Multi Round-Trip Requests served for an old server: server-everything
/// (handshake era) sends `sampling/createMessage` (and, for
/// `get-roots-list`, `roots/list`) while serving a tool call of a
/// stateless-era client; forkline answers that POST with an
/// `InputRequiredResult` carrying it, the SDK runs its sampling callback
/// and retries with `inputResponses`, and forkline hands the answer to the
/// waiting server, whose tool result then answers the retry.
#[test]
fn python_stateless_sampling_and_roots_through_an_old_server_travel_as_input_required() {
    let Some(python) = sdk_python() else { return };
    let Some(packages) = NodePackages::find() else {
        return;
    };
    let proxy = Proxy::start(&packages.everything_command());
    let url = Transport::StreamableHttp.url(proxy.get());
    let calls = Calls {
        sampling: true,
        roots: true,
        progress: false,
        ..EVERYTHING
    };
    let report = ClientProcess::python(&python, Transport::StreamableHttp, "auto", &calls, &url)
        .report(&proxy);
    report.assert_stateless();
    let sampled = report.str("sampling");
    assert!(
        sampled.contains(SAMPLED_TEXT),
        "the tool's result should quote the client's sampling answer: {sampled:?}\n{}",
        report.context
    );
    let roots = report.str("roots");
    assert!(
        roots.contains(ROOT_URI),
        "get-roots-list should list the client's root: {roots:?}\n{}",
        report.context
    );
    proxy.assert_children(1);
}

/// The Python SDK in its default mode → forkline → a handshake-only test
/// server that answers nothing but `initialize` and `ping` before the
/// handshake (tests/fixtures/fake_mcp_server.py --legacy
/// --silent-before-initialize): forkline's `server/discover` probe gets no
/// answer, so after its wait forkline initializes the server itself and
/// serves the client in the stateless era.
#[test]
fn python_stateless_through_a_handshake_only_server_that_ignores_discover() {
    let Some(python) = sdk_python() else { return };
    let child: Vec<String> = [
        "python3",
        "-u",
        &fixture("fake_mcp_server.py").display().to_string(),
        "--legacy",
        "--silent-before-initialize",
    ]
    .map(String::from)
    .to_vec();
    let proxy = Proxy::start(&child);
    let url = Transport::StreamableHttp.url(proxy.get());
    let report = ClientProcess::python(
        &python,
        Transport::StreamableHttp,
        "auto",
        &ECHO_SERVER,
        &url,
    )
    .report(&proxy);
    report.assert_stateless();
    report.assert_echo(ECHO_TEXT);
    proxy.get().wait_for_log("did not answer server/discover");
    proxy.assert_children(1);
}

/// Stateless clients of one principal (here: one client address) share
/// one child, their requests' ids rewritten so that equal ids of different
/// clients never collide; every client gets its own answers.
#[test]
fn concurrent_stateless_clients_of_one_principal_share_its_child() {
    let Some(python) = sdk_python() else { return };
    let proxy = Proxy::start(&whoami_server_command(&python));
    let url = Transport::StreamableHttp.url(proxy.get());
    let clients: Vec<ClientProcess> = (0..CONCURRENT_CLIENTS)
        .map(|_| {
            ClientProcess::python(
                &python,
                Transport::StreamableHttp,
                "auto",
                &WHOAMI_SERVER,
                &url,
            )
        })
        .collect();
    let reports: Vec<Report> = clients.into_iter().map(|c| c.report(&proxy)).collect();
    let mut pids = HashSet::new();
    for report in &reports {
        report.assert_stateless();
        report.assert_echo(ECHO_TEXT);
        pids.insert(
            report.json["whoami"]["pid"]
                .as_u64()
                .unwrap_or_else(|| panic!("whoami lacks a pid\n{}", report.context)),
        );
    }
    assert_eq!(
        pids.len(),
        1,
        "one principal, one child: pids {pids:?}\n{}",
        proxy.get().stderr_text()
    );
    proxy.assert_children(1);
}

/// The Python SDK → forkline → server-everything over stdio: its tools,
/// `echo`, and a long call whose progress notifications reach the client
/// on the request's SSE stream.
#[test]
fn python_streamable_http_calls_everything_with_progress() {
    let Some(python) = sdk_python() else { return };
    let Some(packages) = NodePackages::find() else {
        return;
    };
    let proxy = Proxy::start(&packages.everything_command());
    let url = Transport::StreamableHttp.url(proxy.get());
    let report = ClientProcess::python(
        &python,
        Transport::StreamableHttp,
        "legacy",
        &EVERYTHING,
        &url,
    )
    .report(&proxy);
    report.assert_handshake();
    report.assert_tools(&["echo", PROGRESS_TOOL]);
    report.assert_echo(&format!("Echo: {ECHO_TEXT}"));
    report.assert_progress();
    report.assert_deleted();
    proxy.assert_no_children_within(PATIENCE);
}

// ---- Python SDK, HTTP+SSE ---------------------------------------------------

/// The Python SDK's `sse` client → forkline `/sse` → `echo-server`: the
/// `endpoint` event's relative path is resolved against the SSE URL and
/// every POST is answered 202; closing the stream ends the session.
#[test]
fn python_sse_calls_echo_server() {
    let Some(python) = sdk_python() else { return };
    let proxy = Proxy::start(&[]);
    let url = Transport::Sse.url(proxy.get());
    let report =
        ClientProcess::python(&python, Transport::Sse, "legacy", &ECHO_SERVER, &url).report(&proxy);
    report.assert_handshake();
    assert_eq!(report.tools(), ["echo"], "tools/list\n{}", report.context);
    report.assert_echo(ECHO_TEXT);
    // The sessionId of the `endpoint` event (its format is forkline's).
    let session = report.str("session_id").to_string();
    let posts: Vec<&Value> = report
        .http()
        .iter()
        .filter(|e| e["method"] == "POST")
        .collect();
    assert!(
        !posts.is_empty()
            && posts.iter().all(|e| {
                e["status"] == 202 && e["path"] == format!("/messages?sessionId={session}").as_str()
            }),
        "every POST should go to /messages?sessionId={session} and get 202\n{}",
        report.context
    );
    proxy.assert_no_children_within(PATIENCE);
}

/// The Python SDK's `sse` client → forkline → server-everything, with a
/// progress-reporting call (its notifications come on the one SSE stream).
#[test]
fn python_sse_calls_everything_with_progress() {
    let Some(python) = sdk_python() else { return };
    let Some(packages) = NodePackages::find() else {
        return;
    };
    let proxy = Proxy::start(&packages.everything_command());
    let url = Transport::Sse.url(proxy.get());
    let report =
        ClientProcess::python(&python, Transport::Sse, "legacy", &EVERYTHING, &url).report(&proxy);
    report.assert_handshake();
    report.assert_tools(&["echo", PROGRESS_TOOL]);
    report.assert_echo(&format!("Echo: {ECHO_TEXT}"));
    report.assert_progress();
    proxy.assert_no_children_within(PATIENCE);
}

// ---- TypeScript SDK ---------------------------------------------------------

/// The TypeScript SDK's StreamableHTTPClientTransport → forkline →
/// `echo-server`; it ends the session with DELETE (`terminateSession`).
#[test]
fn typescript_streamable_http_calls_echo_server() {
    let Some(packages) = NodePackages::find() else {
        return;
    };
    let proxy = Proxy::start(&[]);
    let url = Transport::StreamableHttp.url(proxy.get());
    let report =
        ClientProcess::typescript(&packages, Transport::StreamableHttp, &ECHO_SERVER, &url)
            .report(&proxy);
    report.assert_handshake();
    assert_eq!(report.tools(), ["echo"], "tools/list\n{}", report.context);
    report.assert_echo(ECHO_TEXT);
    report.session_id();
    report.assert_deleted();
    proxy.assert_no_children_within(PATIENCE);
}

/// The TypeScript SDK → forkline → server-everything, with progress.
#[test]
fn typescript_streamable_http_calls_everything_with_progress() {
    let Some(packages) = NodePackages::find() else {
        return;
    };
    let proxy = Proxy::start(&packages.everything_command());
    let url = Transport::StreamableHttp.url(proxy.get());
    let report = ClientProcess::typescript(&packages, Transport::StreamableHttp, &EVERYTHING, &url)
        .report(&proxy);
    report.assert_handshake();
    report.assert_tools(&["echo", PROGRESS_TOOL]);
    report.assert_echo(&format!("Echo: {ECHO_TEXT}"));
    report.assert_progress();
    report.assert_deleted();
    proxy.assert_no_children_within(PATIENCE);
}

/// The TypeScript SDK's SSEClientTransport → forkline `/sse` →
/// `echo-server` (it resolves the `endpoint` with `new URL(data, sseUrl)`).
#[test]
fn typescript_sse_calls_echo_server() {
    let Some(packages) = NodePackages::find() else {
        return;
    };
    let proxy = Proxy::start(&[]);
    let url = Transport::Sse.url(proxy.get());
    let report =
        ClientProcess::typescript(&packages, Transport::Sse, &ECHO_SERVER, &url).report(&proxy);
    report.assert_handshake();
    assert_eq!(report.tools(), ["echo"], "tools/list\n{}", report.context);
    report.assert_echo(ECHO_TEXT);
    assert!(
        !report.str("session_id").is_empty(),
        "no sessionId in the endpoint event\n{}",
        report.context
    );
    proxy.assert_no_children_within(PATIENCE);
}

/// The TypeScript SDK's SSE client → forkline → server-everything, with
/// progress.
#[test]
fn typescript_sse_calls_everything_with_progress() {
    let Some(packages) = NodePackages::find() else {
        return;
    };
    let proxy = Proxy::start(&packages.everything_command());
    let url = Transport::Sse.url(proxy.get());
    let report =
        ClientProcess::typescript(&packages, Transport::Sse, &EVERYTHING, &url).report(&proxy);
    report.assert_handshake();
    report.assert_tools(&["echo", PROGRESS_TOOL]);
    report.assert_progress();
    proxy.assert_no_children_within(PATIENCE);
}

// ---- many sessions at once --------------------------------------------------

/// Ten Python SDK clients at once, each through its own session to its own
/// child: ten session ids, ten child pids, ten `FORKLINE_SESSION_ID`s, each
/// child told the client's loopback address in `FORKLINE_PEER`, and every
/// child gone once the clients have ended their sessions.
#[test]
fn ten_concurrent_python_clients_get_their_own_sessions_and_children() {
    let Some(python) = sdk_python() else { return };
    let proxy = Proxy::start(&whoami_server_command(&python));
    let url = Transport::StreamableHttp.url(proxy.get());
    let clients: Vec<ClientProcess> = (0..CONCURRENT_CLIENTS)
        .map(|_| {
            ClientProcess::python(
                &python,
                Transport::StreamableHttp,
                "legacy",
                &WHOAMI_SERVER,
                &url,
            )
        })
        .collect();
    let reports: Vec<Report> = clients.into_iter().map(|c| c.report(&proxy)).collect();

    let mut session_ids = HashSet::new();
    let mut pids = HashSet::new();
    let mut child_sessions = HashSet::new();
    for report in &reports {
        report.assert_handshake();
        report.assert_echo(ECHO_TEXT);
        report.assert_deleted();
        session_ids.insert(report.session_id().to_string());
        let whoami = &report.json["whoami"];
        pids.insert(
            whoami["pid"]
                .as_u64()
                .unwrap_or_else(|| panic!("whoami lacks a pid: {whoami}\n{}", report.context)),
        );
        child_sessions.insert(
            whoami["session"]
                .as_str()
                .unwrap_or_else(|| {
                    panic!(
                        "the child had no FORKLINE_SESSION_ID: {whoami}\n{}",
                        report.context
                    )
                })
                .to_string(),
        );
        let peer = whoami["peer"].as_str().unwrap_or_default();
        assert!(
            peer.contains("127.0.0.1"),
            "FORKLINE_PEER {peer:?} should name the client's loopback address\n{}",
            report.context
        );
    }
    let log = proxy.get().stderr_text();
    assert_eq!(
        session_ids.len(),
        CONCURRENT_CLIENTS,
        "Mcp-Session-Id values {session_ids:?}\n{log}"
    );
    assert_eq!(pids.len(), CONCURRENT_CLIENTS, "child pids {pids:?}\n{log}");
    assert_eq!(
        child_sessions.len(),
        CONCURRENT_CLIENTS,
        "FORKLINE_SESSION_ID values {child_sessions:?}\n{log}"
    );
    proxy.assert_no_children_within(PATIENCE);
}

// ---- TypeScript SDK 2.x (`@modelcontextprotocol/client`) -------------------

impl Report {
    /// The POSTs whose `Mcp-Name` header is `name` (tool calls of it, in
    /// the order they were answered).
    fn calls_of(&self, name: &str) -> Vec<&Value> {
        self.http()
            .iter()
            .filter(|e| e["headers"]["mcp-name"] == name)
            .collect()
    }

    /// The words ts2_http_client.mjs summarized an exchange's answer in
    /// (`result:complete`, `notifications/progress`, …).
    fn messages(exchange: &Value) -> Vec<&str> {
        exchange["messages"]
            .as_array()
            .map(|m| m.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default()
    }

    /// The stateless era as the TypeScript 2.x client speaks it: its first
    /// exchange is the `server/discover` probe, and every exchange is a POST
    /// answered 200 that carries `MCP-Protocol-Version: 2026-07-28` and an
    /// `Mcp-Method` naming its body's method, with no `Mcp-Session-Id`
    /// either way and no `initialize` anywhere.
    fn assert_ts2_stateless(&self) {
        self.assert_stateless();
        let probe = &self.http()[0];
        assert_eq!(
            (probe["rpc"].as_str(), probe["status"].as_u64()),
            (Some("server/discover"), Some(200)),
            "the client's first exchange should be the server/discover probe, answered 200\n{}",
            self.context
        );
        for exchange in self.http() {
            let headers = &exchange["headers"];
            assert_eq!(
                headers["mcp-protocol-version"].as_str(),
                Some(STATELESS_VERSION),
                "every stateless POST carries MCP-Protocol-Version {STATELESS_VERSION}: \
                 {exchange}\n{}",
                self.context
            );
            assert_eq!(
                headers["mcp-method"], exchange["rpc"],
                "Mcp-Method should name the body's method: {exchange}\n{}",
                self.context
            );
            assert!(
                headers["mcp-session-id"].is_null()
                    && exchange["response_headers"]["mcp-session-id"].is_null(),
                "no Mcp-Session-Id in the stateless era: {exchange}\n{}",
                self.context
            );
            assert_ne!(
                exchange["rpc"], "initialize",
                "no handshake in the stateless era\n{}",
                self.context
            );
        }
    }

    /// server-everything's progress notifications for `PROGRESS_ARGS` (3
    /// steps of 3) reached the client's callback, in order, and the call's
    /// last POST was answered as a stream carrying them before its result.
    /// (The SDK reports each input-required round it fulfils as progress
    /// of its own, without a total; those are left out here.)
    fn assert_server_progress(&self) {
        self.assert_progress();
        let progress: Vec<(f64, Option<f64>)> = self.json["progress"]
            .as_array()
            .expect("assert_progress checked it")
            .iter()
            .map(|p| (p[0].as_f64().unwrap_or(-1.0), p[1].as_f64()))
            .filter(|(_, total)| total.is_some())
            .collect();
        assert_eq!(
            progress,
            [(1.0, Some(3.0)), (2.0, Some(3.0)), (3.0, Some(3.0))],
            "the client should see server-everything's three progress notifications\n{}",
            self.context
        );
        let calls = self.calls_of(PROGRESS_TOOL);
        let stream = calls.last().unwrap_or_else(|| {
            panic!(
                "no tools/call {PROGRESS_TOOL} in the trace\n{}",
                self.context
            )
        });
        assert_eq!(
            (
                stream["response_headers"]["content-type"]
                    .as_str()
                    .map(|t| t.starts_with("text/event-stream")),
                Report::messages(stream)
                    .iter()
                    .filter(|m| **m == "notifications/progress")
                    .count(),
                Report::messages(stream).last().copied(),
            ),
            (Some(true), 3, Some("result:complete")),
            "{PROGRESS_TOOL} should be answered as a stream of its progress, then its result\n{}",
            self.context
        );
    }

    /// `tool` asked the client for `method` through forkline: one of its
    /// POSTs was answered with an InputRequiredResult naming `method`, and
    /// its last one (the client's retry) with the tool's result.
    fn assert_input_required_round(&self, tool: &str, method: &str) {
        let calls = self.calls_of(tool);
        let asked = calls.iter().any(|e| {
            Report::messages(e)
                .iter()
                .any(|m| m.starts_with("result:input_required:") && m.contains(method))
        });
        assert!(
            asked,
            "no POST of tools/call {tool} was answered with an InputRequiredResult asking for \
             {method}\n{}",
            self.context
        );
        assert!(
            calls.len() >= 2
                && calls
                    .last()
                    .is_some_and(|e| Report::messages(e).last() == Some(&"result:complete")),
            "tools/call {tool} should end with the client's retry answered by the tool's \
             result\n{}",
            self.context
        );
    }
}

/// The TypeScript 2.x client with `versionNegotiation: { mode: "auto" }`
/// → forkline → `echo-server`: the `server/discover` probe (2026-07-28, no
/// session), then the stateless era (no `initialize`, no session, every
/// POST answered 200), served by the principal's one child.
#[test]
fn typescript2_auto_mode_speaks_the_stateless_era_to_echo_server() {
    let Some(packages) = NodePackages::find() else {
        return;
    };
    let proxy = Proxy::start(&[]);
    let url = Transport::StreamableHttp.url(proxy.get());
    let report = ClientProcess::typescript2(&packages, &ECHO_SERVER, &url).report(&proxy);
    report.assert_ts2_stateless();
    assert_eq!(report.tools(), ["echo"], "tools/list\n{}", report.context);
    report.assert_echo(ECHO_TEXT);
    assert_eq!(
        report.calls_of("echo").len(),
        1,
        "one POST for tools/call echo\n{}",
        report.context
    );
    proxy.assert_children(1);
}

/// The TypeScript 2.x client in auto mode → forkline → server-everything,
/// a handshake-era server forkline adapts: tools, `echo`, and a long call
/// whose progress notifications come on that POST's event stream.
#[test]
fn typescript2_stateless_calls_everything_with_progress() {
    let Some(packages) = NodePackages::find() else {
        return;
    };
    let proxy = Proxy::start(&packages.everything_command());
    let url = Transport::StreamableHttp.url(proxy.get());
    let report = ClientProcess::typescript2(&packages, &EVERYTHING, &url).report(&proxy);
    report.assert_ts2_stateless();
    report.assert_tools(&["echo", PROGRESS_TOOL]);
    report.assert_echo(&format!("Echo: {ECHO_TEXT}"));
    report.assert_server_progress();
    assert_eq!(
        report.calls_of(PROGRESS_TOOL).len(),
        1,
        "one POST for {PROGRESS_TOOL}: no input-required round without sampling or roots\n{}",
        report.context
    );
    proxy.assert_children(1);
}

/// Multi Round-Trip Requests served for an old server, with the TypeScript
/// 2.x client's own auto-fulfilment: server-everything sends
/// `sampling/createMessage`, `roots/list` and `elicitation/create` while
/// serving tool calls; forkline answers those POSTs with
/// InputRequiredResults, the SDK runs the handlers ts2_http_client.mjs
/// registered and retries with `inputResponses`, and the tools' results
/// quote the answers.
#[test]
fn typescript2_stateless_sampling_roots_and_elicitation_through_an_old_server_travel_as_input_required()
 {
    let Some(packages) = NodePackages::find() else {
        return;
    };
    let proxy = Proxy::start(&packages.everything_command());
    let url = Transport::StreamableHttp.url(proxy.get());
    let calls = Calls {
        sampling: true,
        roots: true,
        elicitation: true,
        progress: false,
        ..EVERYTHING
    };
    let report = ClientProcess::typescript2(&packages, &calls, &url).report(&proxy);
    report.assert_ts2_stateless();
    report.assert_tools(&[SAMPLING_TOOL, ROOTS_TOOL, ELICITATION_TOOL]);
    let sampled = report.str("sampling");
    assert!(
        sampled.contains(SAMPLED_TEXT),
        "the tool's result should quote the client's sampling answer: {sampled:?}\n{}",
        report.context
    );
    report.assert_input_required_round(SAMPLING_TOOL, "sampling/createMessage");
    let elicited = report.str("elicitation");
    assert!(
        elicited.contains(ELICITED_NAME),
        "the tool's result should quote the client's elicitation answer: {elicited:?}\n{}",
        report.context
    );
    report.assert_input_required_round(ELICITATION_TOOL, "elicitation/create");
    let roots = report.str("roots");
    assert!(
        roots.contains(ROOT_URI),
        "get-roots-list should list the client's root: {roots:?}\n{}",
        report.context
    );
    // server-everything asks for the roots by itself 350 ms after
    // `initialized` (dist/server/index.js), so the round may belong to
    // whichever tool call was in flight then, or to get-roots-list.
    assert!(
        report.http().iter().any(|e| Report::messages(e)
            .iter()
            .any(|m| m.starts_with("result:input_required:") && m.contains("roots/list"))),
        "roots/list never reached the client as an InputRequiredResult\n{}",
        report.context
    );
    proxy.assert_children(1);
}

/// A long call that gets an InputRequiredResult it did not cause: with
/// roots declared, server-everything sends `roots/list` by itself 350 ms
/// after `initialized`, while the progress call is in flight, so forkline
/// answers that POST with the round and the client retries (with a new id
/// and a new `progressToken`). The child's progress notifications still
/// carry the first POST's token; forkline rewrites them to the retry's and
/// sends them on the retry's stream (before this, the client saw none).
#[test]
fn typescript2_progress_of_a_call_continued_after_an_input_required_round_reaches_the_client() {
    let Some(packages) = NodePackages::find() else {
        return;
    };
    let proxy = Proxy::start(&packages.everything_command());
    let url = Transport::StreamableHttp.url(proxy.get());
    let calls = Calls {
        roots: true,
        ..EVERYTHING
    };
    let report = ClientProcess::typescript2(&packages, &calls, &url).report(&proxy);
    report.assert_ts2_stateless();
    report.assert_server_progress();
}

// ---- many servers from one config file ---------------------------------------

/// Issue 14: one `mcpServers` file with `echo-server` and server-everything,
/// served side by side at `/servers/NAME/mcp` to the Python SDK (both eras)
/// and the TypeScript SDK at once: each client reaches the server it named,
/// with a child of its own.
#[test]
fn python_and_typescript_clients_use_two_servers_of_one_config_file_side_by_side() {
    let Some(python) = sdk_python() else { return };
    let Some(packages) = NodePackages::find() else {
        return;
    };
    let everything = packages.everything_command();
    let config = serde_json::json!({
        "mcpServers": {
            "echo": {"command": forkline_bin(), "args": ["echo-server"]},
            "everything": {"command": everything[0], "args": everything[1..]},
        }
    });
    let proxy = Proxy::start_config(&config, 2);
    let echo = proxy.server_url("echo");
    let all = proxy.server_url("everything");
    let clients = [
        ClientProcess::python(
            &python,
            Transport::StreamableHttp,
            "legacy",
            &ECHO_SERVER,
            &echo,
        ),
        ClientProcess::python(
            &python,
            Transport::StreamableHttp,
            "auto",
            &EVERYTHING,
            &all,
        ),
        ClientProcess::typescript(&packages, Transport::StreamableHttp, &EVERYTHING, &all),
        ClientProcess::typescript(&packages, Transport::StreamableHttp, &ECHO_SERVER, &echo),
    ];
    let [py_echo, py_all, ts_all, ts_echo] = clients.map(|c| c.report(&proxy));
    py_echo.assert_handshake();
    assert_eq!(py_echo.tools(), ["echo"], "{}", py_echo.context);
    py_echo.assert_echo(ECHO_TEXT);
    py_all.assert_stateless();
    py_all.assert_tools(&["echo", PROGRESS_TOOL]);
    py_all.assert_echo(&format!("Echo: {ECHO_TEXT}"));
    py_all.assert_progress();
    ts_all.assert_handshake();
    ts_all.assert_tools(&["echo", PROGRESS_TOOL]);
    ts_all.assert_echo(&format!("Echo: {ECHO_TEXT}"));
    ts_all.assert_progress();
    ts_echo.assert_handshake();
    assert_eq!(ts_echo.tools(), ["echo"], "{}", ts_echo.context);
    ts_echo.assert_echo(ECHO_TEXT);
    // The handshake sessions were DELETEd; the stateless client's child (a
    // principal's, of server-everything) stays until its idle timeout.
    proxy.assert_children(1);
    let left = proxy.live_children();
    assert!(
        cmdline(left[0]).contains("server-everything"),
        "the child left should be the stateless principal's server-everything: {}",
        cmdline(left[0])
    );
}
