//! Interop with real Node.js MCP software, pinned in `.ci/package.json` and
//! `.ci/package-lock.json` and installed into `target/npm` by
//! `.ci/setup-sdk`: the MCP reference server (`server-everything`, the
//! official TypeScript SDK's stdio server transport) and the MCP Inspector's
//! CLI (the TypeScript SDK's stdio client).
//!
//! forkline hands a child pipes as stdin and stdout and one end of a Unix
//! socket pair as stderr; a `serve` sized for more sessions than four
//! descriptors each allow puts stdin on that socket too, where most
//! launchers give three pipes. libuv opens a socket as a pipe handle, but
//! then fds 0 and 2 are one open file: the O_NONBLOCK Node sets on stderr
//! is set on stdin too, and a shutdown(2) through either would end both
//! directions. So these tests check, on both wirings, that real servers
//! read their requests, write answers bigger than the pipe's buffer, log
//! to stderr, and exit on EOF just as they do on pipes:
//! - the official Python SDK client (`tests/fixtures/sdk_client.py`, as in
//!   `tests/interop_sdk.rs`) against server-everything through `forkline
//!   stdio` (the command given without `--`) and through `forkline connect`
//!   → `forkline serve`;
//! - the Inspector's CLI running `forkline stdio node …` exactly as users
//!   do (it swallows a `--`, so forkline gets the command without one),
//!   against server-everything and against the built-in `echo-server`, and
//!   through `forkline connect`;
//! - a server built on the official Python SDK instead
//!   (`tests/fixtures/sdk_server.py`; its stdio transport serves private
//!   duplicates of fds 0 and 1), under the Python client and the Inspector.
//!
//! Without the packages (or, for the SDK tests, the venv) the tests say so
//! and pass, except under CI, where they fail: there `.ci/run` must have run
//! `.ci/setup-sdk`, and a skipped interop test would pass without testing.
//!
//! Processes: every client is killed with its whole tree and reaped on
//! every path. This test binary makes itself a child subreaper, so a server
//! that a client's escalation orphans (see `inspector_leaves_no_server_running`)
//! becomes its child and is killed and reaped by pid too.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::Duration;

use common::interop::{SdkReport, descendants, drain, join_within, sdk_python, skip_unless_ci};
use common::*;
use serde_json::{Value, json};

/// How long sdk_client.py gives itself (`--timeout`) for everything.
const SDK_TIMEOUT_SECS: u64 = 30;

/// Our bound on one client process (sdk_client.py or the Inspector): the
/// SDK's timeout, the Inspector's 15 s connect timeout and 4 s shutdown
/// escalation, interpreter start-up on a busy two-core machine.
const CLIENT_PATIENCE: Duration = Duration::from_secs(SDK_TIMEOUT_SECS + 30);

/// Text sent through `echo`: non-ASCII and JSON-escaped characters, so a
/// relay that re-encodes instead of forwarding bytes unchanged shows up.
const ECHO_TEXT: &str = "forkline ✓ «interop» \"quoted\" \\ tab\tend";

/// `ECHO_TEXT` repeated this often is 1.3 MB of text (more on the wire,
/// JSON-escaped): several times the socket's send buffer (208 KiB by
/// default), so a non-blocking stdout must write it in pieces; below
/// forkline's default 4 MiB message limit.
const BIG_REPEAT: usize = 30_000;

/// The reference server is a handshake-era server (TypeScript SDK 1.x): the
/// Python SDK's `server/discover` probe is refused and it falls back to
/// `initialize`, agreeing on the newest version both know.
const EVERYTHING_VERSION: &str = "2025-11-25";

/// Marker the `sh` wrapper prints with the exit status of the command the
/// SDK launched (see `with_exit_report`).
const EXIT_MARKER: &str = "forkline-node-test: server command exited with status ";

/// Passes (after a notice) when `what` is missing outside CI; panics in CI.
fn missing(what: &str) {
    skip_unless_ci(what);
}

/// The Node packages in `target/npm`.
struct NodePackages {
    /// server-everything's entry point (`node ENTRY stdio`).
    everything: PathBuf,
    /// The Inspector's launcher (`mcp-inspector`).
    inspector: PathBuf,
}

impl NodePackages {
    /// The installed packages, or `None` (after a notice) when they are
    /// missing and this is not CI.
    fn find() -> Option<NodePackages> {
        let modules = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/npm/node_modules");
        let packages = NodePackages {
            everything: modules.join("@modelcontextprotocol/server-everything/dist/index.js"),
            inspector: modules.join(".bin/mcp-inspector"),
        };
        for path in [&packages.everything, &packages.inspector] {
            if !path.exists() {
                missing(&format!("{} does not exist", path.display()));
                return None;
            }
        }
        become_subreaper();
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

/// Makes this test process the reaper of orphans among its descendants
/// (prctl(2) `PR_SET_CHILD_SUBREAPER`), so a server orphaned when a client
/// SIGKILLs forkline is ours to kill and reap instead of init's.
fn become_subreaper() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: prctl with an integer argument; no memory is passed.
        let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        assert_eq!(
            rc,
            0,
            "prctl(PR_SET_CHILD_SUBREAPER): {}",
            std::io::Error::last_os_error()
        );
    });
}

/// Servers a test saw start (by pid, from forkline's `session opened` log
/// line). Dropping it SIGKILLs any that still runs server-everything and
/// reaps it if it became our child; tests assert what should be gone
/// before this runs, it never makes a test pass.
#[derive(Default)]
struct ServerGuard {
    pids: Vec<u32>,
}

impl ServerGuard {
    fn watch(&mut self, pid: u32) {
        self.pids.push(pid);
    }
}

impl Drop for ServerGuard {
    fn drop(&mut self) {
        for &pid in &self.pids {
            if pid_alive(pid) && cmdline(pid).contains("server-everything") {
                // SAFETY: kill(2) on a pid we just checked is the server.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
            poll_until(PATIENCE, || reaped(pid));
        }
    }
}

/// Reaps `pid` if it is our exited child; true once it is reaped, or gone
/// and not ours to reap.
fn reaped(pid: u32) -> bool {
    let mut status = 0;
    // SAFETY: waitpid on one pid with WNOHANG; `status` outlives the call.
    match unsafe { libc::waitpid(pid as i32, &mut status, libc::WNOHANG) } {
        0 => false,
        r if r == pid as i32 => true,
        _ => !pid_alive(pid),
    }
}

/// The pid forkline logged for the session's child (`session opened …
/// pid=N`) in `log`.
fn session_child_pid(log: &str) -> Option<u32> {
    log.lines()
        .filter(|l| l.contains("session opened"))
        .flat_map(str::split_whitespace)
        .find_map(|w| w.strip_prefix("pid=")?.parse().ok())
}

/// A running client process (sdk_client.py or the Inspector) and what it
/// launched. Dropping it kills the whole tree (the clients put the servers
/// they launch where a kill of the client alone does not reach), then
/// reaps the client.
struct ClientRun {
    child: Child,
    stdout: Option<JoinHandle<Vec<u8>>>,
    stderr: Option<JoinHandle<Vec<u8>>>,
}

/// How a client run ended.
struct Outcome {
    /// `None` if it had to be killed.
    status: Option<ExitStatus>,
    stdout: String,
    /// The client's stderr, which includes what it launched (forkline's
    /// log, the server's stderr).
    stderr: String,
}

impl Outcome {
    fn succeeded(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// Status and output for a failure message (a megabyte echo cut short).
    fn describe(&self) -> String {
        format!(
            "status: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status,
            abridged(&self.stdout),
            abridged(&self.stderr)
        )
    }
}

/// `text`, or its first 8,000 characters and how long it was.
fn abridged(text: &str) -> String {
    const KEEP: usize = 8_000;
    match text.char_indices().nth(KEEP) {
        None => text.to_string(),
        Some((cut, _)) => format!("{}… ({} bytes in all)", &text[..cut], text.len()),
    }
}

impl ClientRun {
    fn start(mut command: Command) -> ClientRun {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"));
        let stdout = drain(child.stdout.take().expect("stdout piped"));
        let stderr = drain(child.stderr.take().expect("stderr piped"));
        ClientRun {
            child,
            stdout: Some(stdout),
            stderr: Some(stderr),
        }
    }

    /// Waits (bounded) for the client to exit, killing its tree if it does
    /// not, and collects its output.
    fn finish(mut self) -> Outcome {
        let mut status = None;
        poll_until(CLIENT_PATIENCE, || {
            status = self.child.try_wait().expect("try_wait client");
            status.is_some()
        });
        if status.is_none() {
            self.kill_all();
        }
        Outcome {
            status,
            stdout: join_within(self.stdout.take(), PATIENCE),
            stderr: join_within(self.stderr.take(), PATIENCE),
        }
    }

    /// Kills the launched tree first (found through /proc while the client
    /// still parents it), then the client, and reaps the client, and the
    /// rest of the tree as it falls to us (we are its subreaper).
    fn kill_all(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        let tree = descendants(self.child.id());
        for &pid in &tree {
            // SAFETY: kill(2) on a descendant of our own child.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in tree {
            poll_until(PATIENCE, || reaped(pid));
        }
    }
}

impl Drop for ClientRun {
    fn drop(&mut self) {
        self.kill_all();
    }
}

// ---- the Python SDK client --------------------------------------------------

/// Wraps `command` in `sh` so its exit status is printed to stderr with
/// `EXIT_MARKER` (as in tests/interop_sdk.rs): the SDK closes the server's
/// stdin and SIGTERMs it 2 s later, so the marker appears only when the
/// command exits promptly by itself.
fn with_exit_report(command: &[String]) -> Vec<String> {
    let script = format!("\"$@\"; echo \"{EXIT_MARKER}$?\" >&2");
    let mut wrapped = vec![
        "/bin/sh".to_string(),
        "-c".to_string(),
        script,
        "sh".to_string(),
    ];
    wrapped.extend_from_slice(command);
    wrapped
}

/// The `echo` tool sdk_client.py calls: its argument's name, and how
/// often `ECHO_TEXT` is repeated in it.
struct EchoCall {
    arg: &'static str,
    repeat: usize,
}

/// server-everything's `echo` takes `message`.
const EVERYTHING_ECHO: EchoCall = EchoCall {
    arg: "message",
    repeat: 1,
};

/// Runs sdk_client.py, calling `echo` as `call` says, against `server`;
/// panics with everything known (and `proxy`'s log, if given) when it fails.
fn run_sdk(
    python: &Path,
    call: &EchoCall,
    server: &[String],
    proxy: Option<&Forkline>,
) -> SdkReport {
    let mut command = Command::new(python);
    command
        .arg("-u")
        .arg(fixture("sdk_client.py"))
        .args(["--arg", call.arg, "--text", ECHO_TEXT])
        .args(["--repeat", &call.repeat.to_string()])
        .args(["--timeout", &SDK_TIMEOUT_SECS.to_string(), "--"])
        .args(server)
        .env("RUST_LOG", "debug");
    let outcome = ClientRun::start(command).finish();
    let context = || {
        let proxy_log = proxy.map(Forkline::stderr_text).unwrap_or_default();
        format!(
            "server command: {server:?}\n{}\n--- forkline serve log ---\n{proxy_log}",
            outcome.describe()
        )
    };
    assert!(outcome.succeeded(), "sdk_client.py failed\n{}", context());
    SdkReport::parse(&outcome.stdout, &outcome.stderr, context)
}

/// The handshake era was negotiated with server-everything, it lists
/// `echo`, and `echo` returned the text it was sent, whole.
fn assert_everything_session(report: &SdkReport, repeat: usize) {
    assert_eq!(
        (report.era.as_str(), report.protocol_version.as_str()),
        ("legacy", EVERYTHING_VERSION),
        "expected the SDK's server/discover probe to be refused by server-everything (a \
         handshake-era server) and the SDK to fall back to initialize at {EVERYTHING_VERSION}\n{}",
        report.stderr
    );
    assert!(
        report.tools.iter().any(|t| t == "echo"),
        "server-everything's tools/list through forkline lacks echo: {:?}\n{}",
        report.tools,
        report.stderr
    );
    assert_echoed(report, &format!("Echo: {}", ECHO_TEXT.repeat(repeat)));
}

/// `echo` returned `expected`, whole; on a mismatch, says where it starts.
fn assert_echoed(report: &SdkReport, expected: &str) {
    if report.echo != expected {
        let common = report
            .echo
            .chars()
            .zip(expected.chars())
            .take_while(|(a, b)| a == b)
            .count();
        panic!(
            "tools/call echo round trip: got {} chars, expected {}; they differ from char {common} \
             (got {:?}…)\n{}",
            report.echo.chars().count(),
            expected.chars().count(),
            report
                .echo
                .chars()
                .skip(common)
                .take(40)
                .collect::<String>(),
            report.stderr
        );
    }
}

/// The command the SDK launched exited by itself, with status 0, once the
/// SDK closed its stdin.
fn assert_exited_cleanly(report: &SdkReport, what: &str) {
    let status = report
        .stderr
        .lines()
        .find_map(|l| l.split_once(EXIT_MARKER).map(|(_, s)| s.trim().to_string()));
    assert_eq!(
        status.as_deref(),
        Some("0"),
        "`{what}` should exit 0 promptly when its client closes stdin, once the server exits \
         on EOF (no status means the SDK had to kill it)\n{}",
        report.stderr
    );
}

/// After the session ended, `serve` reaped that session's child and is
/// still up for the next client.
fn assert_session_cleaned_up(proxy: &mut Forkline) {
    let pid = proxy.pid();
    let gone = poll_until(PATIENCE, || children_of(pid).is_empty());
    assert!(
        gone,
        "forkline serve still has children {:?} after the client disconnected\n{}",
        children_of(pid),
        proxy.stderr_text()
    );
    assert!(
        proxy.try_exit_status().is_none(),
        "forkline serve exited after one session\n{}",
        proxy.stderr_text()
    );
}

/// `forkline stdio node …server-everything… stdio`: the command without
/// `--`, as a user writes it into a client's configuration.
fn stdio_command(packages: &NodePackages) -> Vec<String> {
    let mut command = vec![forkline_bin().to_string(), "stdio".to_string()];
    command.extend(packages.everything_command());
    command
}

/// a(i). Python SDK → `forkline stdio node server-everything` (no `--`).
#[test]
fn sdk_talks_to_server_everything_through_stdio_mode() {
    let Some(packages) = NodePackages::find() else {
        return;
    };
    let Some(python) = sdk_python() else { return };
    let command = with_exit_report(&stdio_command(&packages));
    let report = run_sdk(&python, &EVERYTHING_ECHO, &command, None);
    assert_everything_session(&report, 1);
    assert_exited_cleanly(&report, "forkline stdio");
}

/// a(ii). Python SDK → `forkline connect tcp://…` → `forkline serve --
/// node server-everything`.
#[test]
fn sdk_talks_to_server_everything_through_connect_tcp() {
    let Some(packages) = NodePackages::find() else {
        return;
    };
    let Some(python) = sdk_python() else { return };
    let mut proxy = Forkline::serve_tcp(&[], &packages.everything_command());
    let address = format!("tcp://{}", proxy.tcp_addr());
    let command = with_exit_report(&[forkline_bin().to_string(), "connect".into(), address]);
    let report = run_sdk(&python, &EVERYTHING_ECHO, &command, Some(&proxy));
    assert_everything_session(&report, 1);
    assert_exited_cleanly(&report, "forkline connect");
    assert_session_cleaned_up(&mut proxy);
}

/// A 1.3 MB request and a 1.3 MB answer through both hops, with the Node
/// server's stdin on the socket it shares with stderr (the wiring of a
/// proxy sized for the most sessions): it reads a line far longer than one
/// socket read and writes one far longer than the pipe's buffer, and
/// forkline keeps both whole.
#[test]
fn sdk_echoes_a_large_message_through_server_everything_reading_a_socket() {
    let Some(packages) = NodePackages::find() else {
        return;
    };
    let Some(python) = sdk_python() else { return };
    let mut proxy =
        Forkline::serve_tcp_configured(&[], &packages.everything_command(), stdin_on_socket);
    proxy.wait_for_log("child_stdin=socket");
    let address = format!("tcp://{}", proxy.tcp_addr());
    let command = with_exit_report(&[forkline_bin().to_string(), "connect".into(), address]);
    let call = EchoCall {
        arg: "message",
        repeat: BIG_REPEAT,
    };
    let report = run_sdk(&python, &call, &command, Some(&proxy));
    assert_everything_session(&report, BIG_REPEAT);
    assert_exited_cleanly(&report, "forkline connect");
    assert_session_cleaned_up(&mut proxy);
}

/// The premise of this file, checked: the Node server `forkline stdio`
/// starts has pipes as stdin and stdout and a socket as stderr, speaks MCP
/// over them, has its stderr logged and exits 0 on its stdin's EOF. (The
/// tests with a large message run it with stdin on the socket too.)
#[test]
fn server_everything_runs_with_stdin_and_stdout_on_pipes_and_stderr_on_a_socket() {
    let Some(packages) = NodePackages::find() else {
        return;
    };
    let mut args = vec!["stdio"];
    let everything = packages.everything_command();
    args.extend(everything.iter().map(String::as_str));
    let mut forkline = Piped::spawn(&args);
    let mut servers = ServerGuard::default();
    let init = forkline.call(
        json!(1),
        "initialize",
        json!({
            "protocolVersion": EVERYTHING_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "forkline-test", "version": "0"}
        }),
    );
    assert_eq!(
        init["result"]["protocolVersion"], EVERYTHING_VERSION,
        "initialize through forkline stdio: {init}"
    );
    let children = children_of(forkline.pid());
    assert_eq!(
        children.len(),
        1,
        "forkline stdio should have one child: {children:?}"
    );
    let server = children[0].0;
    servers.watch(server);
    let fd = |n: u32| {
        std::fs::read_link(format!("/proc/{server}/fd/{n}"))
            .unwrap_or_else(|e| panic!("readlink /proc/{server}/fd/{n}: {e}"))
            .display()
            .to_string()
    };
    let (stdin, stdout, stderr) = (fd(0), fd(1), fd(2));
    assert!(
        stdin.starts_with("pipe:") && stdout.starts_with("pipe:") && stdin != stdout,
        "server-everything's stdin ({stdin}) and stdout ({stdout}) should be two pipes"
    );
    assert!(
        stderr.starts_with("socket:"),
        "server-everything's stderr ({stderr}) should be a socket"
    );
    forkline.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}).to_string());
    forkline.request(
        json!(2),
        "tools/call",
        json!({"name": "echo", "arguments": {"message": ECHO_TEXT}}),
    );
    // The server may send notifications (tools/list_changed) first.
    let answer = (0..16)
        .map(|_| forkline.recv())
        .find(|m| m["id"] == json!(2))
        .expect("an answer to tools/call among the server's first 16 messages");
    assert_eq!(
        answer["result"]["content"][0]["text"],
        format!("Echo: {ECHO_TEXT}"),
        "tools/call echo through forkline stdio: {answer}"
    );
    forkline.close_stdin();
    let status = forkline.wait_exit(PATIENCE);
    let log = forkline.stderr_text();
    assert_eq!(
        status.code(),
        Some(0),
        "forkline stdio after stdin EOF; log:\n{log}"
    );
    assert!(
        log.contains("child=\"exit status 0\""),
        "server-everything should exit 0 by itself on EOF of its stdin; log:\n{log}"
    );
    assert!(
        log.contains("[s1] child stderr: Starting default (STDIO) server"),
        "server-everything's start-up line on stderr should be logged; log:\n{log}"
    );
    assert!(!pid_alive(server), "server-everything outlived forkline");
}

// ---- the MCP Inspector's CLI ------------------------------------------------

/// Runs `mcp-inspector --cli TARGET… ARGS…` to its end. Its catalog and
/// client config go to a temporary directory, not `~/.mcp-inspector`.
fn run_inspector(packages: &NodePackages, target: &[String], args: &[&str]) -> Outcome {
    let home = TempDir::new("forkline-inspector");
    let mut command = Command::new(&packages.inspector);
    command
        .arg("--cli")
        .args(target)
        .args(args)
        .env("MCP_CATALOG_PATH", home.path.join("mcp.json"))
        .env("MCP_CLIENT_CONFIG_PATH", home.path.join("client.json"));
    ClientRun::start(command).finish()
}

/// The Inspector exited 0 and printed one JSON document; returns it.
fn inspector_json(outcome: &Outcome, what: &str) -> Value {
    assert!(
        outcome.succeeded(),
        "mcp-inspector --cli {what} failed\n{}",
        outcome.describe()
    );
    serde_json::from_str(outcome.stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "mcp-inspector --cli {what} printed no JSON ({e})\n{}",
            outcome.describe()
        )
    })
}

fn tool_names(listing: &Value) -> Vec<&str> {
    listing["tools"]
        .as_array()
        .map(|tools| tools.iter().filter_map(|t| t["name"].as_str()).collect())
        .unwrap_or_default()
}

/// Watches the server forkline logged for this run; its pid must be there.
fn watch_server(servers: &mut ServerGuard, outcome: &Outcome) -> u32 {
    let pid = session_child_pid(&outcome.stderr).unwrap_or_else(|| {
        panic!(
            "forkline logged no `session opened … pid=` line\n{}",
            outcome.describe()
        )
    });
    servers.watch(pid);
    pid
}

/// b. `mcp-inspector --cli forkline stdio node server-everything stdio
/// --method tools/list`, as issue 13 runs it.
#[test]
fn inspector_lists_server_everything_tools_through_stdio_mode() {
    let Some(packages) = NodePackages::find() else {
        return;
    };
    let mut servers = ServerGuard::default();
    let outcome = run_inspector(
        &packages,
        &stdio_command(&packages),
        &["--method", "tools/list"],
    );
    watch_server(&mut servers, &outcome);
    let listing = inspector_json(&outcome, "tools/list");
    let names = tool_names(&listing);
    assert!(
        names.contains(&"echo") && names.len() > 1,
        "server-everything's tools through forkline: {names:?}\n{}",
        outcome.describe()
    );
}

/// b. `… --method tools/call --tool-name echo --tool-arg message=…`.
#[test]
fn inspector_calls_server_everything_echo_through_stdio_mode() {
    let Some(packages) = NodePackages::find() else {
        return;
    };
    let mut servers = ServerGuard::default();
    let message = format!("message={ECHO_TEXT}");
    let outcome = run_inspector(
        &packages,
        &stdio_command(&packages),
        &[
            "--method",
            "tools/call",
            "--tool-name",
            "echo",
            "--tool-arg",
            &message,
        ],
    );
    watch_server(&mut servers, &outcome);
    let result = inspector_json(&outcome, "tools/call echo");
    assert_eq!(
        result["content"][0]["text"],
        format!("Echo: {ECHO_TEXT}"),
        "echo through forkline: {result}\n{}",
        outcome.describe()
    );
}

/// b. The Inspector against the built-in echo-server through `forkline
/// stdio <forkline> echo-server`: both calls work, and the session ends as
/// it should, the child exiting 0 on EOF within the Inspector's 2 s.
#[test]
fn inspector_talks_to_echo_server_through_stdio_mode() {
    let Some(packages) = NodePackages::find() else {
        return;
    };
    let bin = forkline_bin().to_string();
    let target = [bin.clone(), "stdio".into(), bin, "echo-server".into()];
    let outcome = run_inspector(&packages, &target, &["--method", "tools/list"]);
    let listing = inspector_json(&outcome, "tools/list");
    assert_eq!(
        tool_names(&listing),
        ["echo"],
        "echo-server's tools through forkline\n{}",
        outcome.describe()
    );
    let text = format!("text={ECHO_TEXT}");
    let args = [
        "--method",
        "tools/call",
        "--tool-name",
        "echo",
        "--tool-arg",
        &text,
    ];
    let outcome = run_inspector(&packages, &target, &args);
    let result = inspector_json(&outcome, "tools/call echo");
    assert_eq!(
        result["content"][0]["text"],
        ECHO_TEXT,
        "echo through forkline: {result}\n{}",
        outcome.describe()
    );
    assert!(
        outcome
            .stderr
            .lines()
            .any(|l| l.contains("session closed reason=client_closed")
                && l.contains("child=\"exit status 0\"")),
        "forkline should log the session's end with the child's clean exit before the \
         Inspector's SIGTERM\n{}",
        outcome.describe()
    );
}

/// The Inspector → `forkline connect tcp://…` → `forkline serve -- node
/// server-everything`. The server lingers after EOF (see
/// `inspector_leaves_no_server_running`), so the Inspector SIGTERMs
/// `connect` after 2 s; `serve` outlives its client and ends the child
/// itself after its grace.
#[test]
fn inspector_calls_server_everything_through_connect() {
    let Some(packages) = NodePackages::find() else {
        return;
    };
    let mut proxy = Forkline::serve_tcp(&[], &packages.everything_command());
    let target = [
        forkline_bin().to_string(),
        "connect".into(),
        format!("tcp://{}", proxy.tcp_addr()),
    ];
    let message = format!("message={ECHO_TEXT}");
    let outcome = run_inspector(
        &packages,
        &target,
        &[
            "--method",
            "tools/call",
            "--tool-name",
            "echo",
            "--tool-arg",
            &message,
        ],
    );
    let result = inspector_json(&outcome, "tools/call echo via connect");
    assert_eq!(
        result["content"][0]["text"],
        format!("Echo: {ECHO_TEXT}"),
        "echo through connect and serve: {result}\n--- serve log ---\n{}",
        proxy.stderr_text()
    );
    assert_session_cleaned_up(&mut proxy);
}

/// No orphan, ever (PRODUCT.md): after the Inspector's `forkline stdio`
/// session, the server must be gone. The Inspector's session is shorter
/// than the 350 ms after which server-everything asks the client for
/// `roots/list`; that request is still pending at EOF, so Node does not
/// exit on end of input. The Inspector (TypeScript SDK
/// `StdioClientTransport.close()`) waits 2 s, SIGTERMs forkline, waits 2 s
/// and SIGKILLs it. forkline, still in the grace it gives the child after
/// closing its stdin, passes the SIGTERM on to the child's group at once,
/// so the server is gone before the SIGKILL. (Before, forkline waited out
/// its 5 s grace, was SIGKILLed, and left the server running for 60 s.)
#[test]
fn inspector_leaves_no_server_running() {
    let Some(packages) = NodePackages::find() else {
        return;
    };
    let mut servers = ServerGuard::default();
    let outcome = run_inspector(
        &packages,
        &stdio_command(&packages),
        &["--method", "tools/list"],
    );
    let server = watch_server(&mut servers, &outcome);
    inspector_json(&outcome, "tools/list");
    assert!(
        poll_until(PATIENCE, || !pid_alive(server)),
        "server-everything (pid {server}) still runs {PATIENCE:?} after the Inspector's \
         forkline stdio session ended ({})\n{}",
        cmdline(server),
        outcome.describe()
    );
}

// ---- a server on the Python SDK ----------------------------------------------

/// `PYTHON tests/fixtures/sdk_server.py`: the Python SDK's own stdio server.
fn python_server_command(python: &Path) -> Vec<String> {
    vec![
        python.display().to_string(),
        fixture("sdk_server.py").display().to_string(),
    ]
}

/// The Python client → `forkline connect` → `forkline serve` → a Python SDK
/// server, with a 1.3 MB echo: the stateless era end to end, and the SDK's
/// stdio transport reading a socket (its stdin shares stderr's, as in a
/// proxy sized for the most sessions) in pieces.
#[test]
fn sdk_talks_to_python_sdk_server_through_connect_tcp() {
    let Some(python) = sdk_python() else { return };
    become_subreaper();
    let mut proxy =
        Forkline::serve_tcp_configured(&[], &python_server_command(&python), stdin_on_socket);
    proxy.wait_for_log("child_stdin=socket");
    let address = format!("tcp://{}", proxy.tcp_addr());
    let command = with_exit_report(&[forkline_bin().to_string(), "connect".into(), address]);
    let call = EchoCall {
        arg: "text",
        repeat: BIG_REPEAT,
    };
    let report = run_sdk(&python, &call, &command, Some(&proxy));
    assert_eq!(
        (report.era.as_str(), report.protocol_version.as_str()),
        ("modern", "2026-07-28"),
        "the Python SDK on both ends should agree on the stateless era through forkline\n{}",
        report.stderr
    );
    assert_eq!(report.tools, ["echo"], "tools/list\n{}", report.stderr);
    assert_echoed(&report, &ECHO_TEXT.repeat(BIG_REPEAT));
    assert_exited_cleanly(&report, "forkline connect");
    assert_session_cleaned_up(&mut proxy);
}

/// The Inspector → `forkline stdio PYTHON sdk_server.py` (no `--`): the
/// call works and the Python server exits 0 on EOF of its socket.
#[test]
fn inspector_calls_python_sdk_server_through_stdio_mode() {
    let Some(packages) = NodePackages::find() else {
        return;
    };
    let Some(python) = sdk_python() else { return };
    let mut target = vec![forkline_bin().to_string(), "stdio".to_string()];
    target.extend(python_server_command(&python));
    let text = format!("text={ECHO_TEXT}");
    let args = [
        "--method",
        "tools/call",
        "--tool-name",
        "echo",
        "--tool-arg",
        &text,
    ];
    let outcome = run_inspector(&packages, &target, &args);
    let result = inspector_json(&outcome, "tools/call echo");
    assert_eq!(
        result["content"][0]["text"],
        ECHO_TEXT,
        "echo through forkline: {result}\n{}",
        outcome.describe()
    );
    assert!(
        outcome
            .stderr
            .lines()
            .any(|l| l.contains("session closed reason=client_closed")
                && l.contains("child=\"exit status 0\"")),
        "the Python SDK server should exit 0 on EOF, before the Inspector's SIGTERM\n{}",
        outcome.describe()
    );
}
