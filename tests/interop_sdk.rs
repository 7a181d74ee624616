//! Interop with the official MCP Python SDK (`mcp`, pinned in
//! `.ci/requirements.txt`): a real client, launching forkline exactly as an
//! IDE would launch any stdio server, must negotiate the right protocol era
//! through it, list the tools and call one.
//!
//! The SDK probes `server/discover` first and falls back to `initialize`
//! when the server rejects it (PRODUCT.md, "Protocol eras"), so each test
//! checks which era was negotiated: the stateless era (2026-07-28) against
//! the built-in `echo-server`, the handshake era against the handshake-only
//! fake server. Over TCP, Unix sockets and stdio forkline is era-blind, so
//! the era seen must be the one the child speaks.
//!
//! The client is `tests/fixtures/sdk_client.py`, run by a Python that has
//! the SDK: `$FORKLINE_SDK_PYTHON`, else `target/sdk-venv/bin/python` as
//! made by `.ci/setup-sdk`. Without one the tests say so and pass, except
//! under CI, where they fail: there `.ci/run` must have set the venv up.

mod common;

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::Duration;

use common::interop::{SdkReport, descendants, drain, join_within, sdk_python};
use common::*;
use serde_json::Value;

/// How long sdk_client.py gives itself (`--timeout`) for everything,
/// including the SDK's bounded shutdown of the server it launched.
const SDK_TIMEOUT_SECS: u64 = 30;

/// Our own bound on the Python process: its timeout plus interpreter start.
const SDK_PATIENCE: Duration = Duration::from_secs(SDK_TIMEOUT_SECS + 30);

/// Text sent through `echo`: non-ASCII and JSON-escaped characters, so a
/// relay that re-encodes instead of forwarding bytes unchanged shows up.
const ECHO_TEXT: &str = "forkline ✓ «interop» \"quoted\" \\ tab\tend";

/// Marker the `sh` wrapper prints with the exit status of the command the
/// SDK launched (see `with_exit_report`).
const EXIT_MARKER: &str = "forkline-sdk-test: server command exited with status ";

/// Wraps `command` in `sh` so its exit status is printed to stderr with
/// `EXIT_MARKER`. The SDK closes the server's stdin at the end and, if it
/// has not exited 2 s later, SIGTERMs its process group (the wrapper too),
/// so the marker appears only when the command exits promptly by itself.
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

/// A running sdk_client.py. Dropping it kills the Python process and the
/// server it launched (the SDK puts that in its own session, out of reach
/// of a kill of Python alone), then reaps Python.
struct SdkClient {
    child: Child,
    stdout: Option<JoinHandle<Vec<u8>>>,
    stderr: Option<JoinHandle<Vec<u8>>>,
}

impl SdkClient {
    fn start(python: &Path, text: &str, server: &[String]) -> SdkClient {
        let mut child = Command::new(python)
            .arg("-u")
            .arg(fixture("sdk_client.py"))
            .args([
                "--text",
                text,
                "--timeout",
                &SDK_TIMEOUT_SECS.to_string(),
                "--",
            ])
            .args(server)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {} sdk_client.py: {e}", python.display()));
        let stdout = drain(child.stdout.take().expect("stdout piped"));
        let stderr = drain(child.stderr.take().expect("stderr piped"));
        SdkClient {
            child,
            stdout: Some(stdout),
            stderr: Some(stderr),
        }
    }

    /// Waits (bounded) for the client to exit; returns its status (`None`
    /// if it had to be killed), stdout and stderr.
    fn finish(mut self) -> (Option<ExitStatus>, String, String) {
        let mut status = None;
        poll_until(SDK_PATIENCE, || {
            status = self.child.try_wait().expect("try_wait sdk_client");
            status.is_some()
        });
        if status.is_none() {
            self.kill_all();
        }
        let stdout = join_within(self.stdout.take(), PATIENCE);
        let stderr = join_within(self.stderr.take(), PATIENCE);
        (status, stdout, stderr)
    }

    /// Kills the launched server tree first (found through /proc while
    /// Python still parents it), then Python, and reaps Python.
    fn kill_all(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        for pid in descendants(self.child.id()) {
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for SdkClient {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// Runs sdk_client.py against `server` and returns its report; panics with
/// everything known (the client's stderr, and `proxy`'s log if given) when
/// the client fails or its output is not the documented JSON line.
fn run_sdk(python: &Path, server: &[String], proxy: Option<&Forkline>) -> SdkReport {
    let (status, stdout, stderr) = SdkClient::start(python, ECHO_TEXT, server).finish();
    let context = || {
        let proxy_log = proxy.map(Forkline::stderr_text).unwrap_or_default();
        format!(
            "server command: {server:?}\n--- sdk_client stdout ---\n{stdout}\n--- sdk_client \
             stderr ---\n{stderr}\n--- forkline serve log ---\n{proxy_log}"
        )
    };
    match status {
        None => panic!(
            "sdk_client.py still running after {SDK_PATIENCE:?}; killed\n{}",
            context()
        ),
        Some(s) if !s.success() => panic!("sdk_client.py failed ({s})\n{}", context()),
        Some(_) => {}
    }
    SdkReport::parse(&stdout, &stderr, context)
}

/// The stateless era was negotiated, and the tool works.
fn assert_modern(report: &SdkReport) {
    assert_eq!(
        (report.era.as_str(), report.protocol_version.as_str()),
        ("modern", "2026-07-28"),
        "expected the SDK's server/discover probe to succeed (echo-server speaks the 2026-07-28 \
         era); it negotiated {} {} instead\n{}",
        report.era,
        report.protocol_version,
        report.stderr
    );
    assert_echo_works(report);
}

/// The handshake era was negotiated (the probe was refused and the SDK fell
/// back to `initialize`), and the tool works.
fn assert_legacy(report: &SdkReport) {
    assert_eq!(
        report.era, "legacy",
        "expected the SDK to fall back to initialize against a handshake-only server; it \
         negotiated {} {}\n{}",
        report.era, report.protocol_version, report.stderr
    );
    assert_echo_works(report);
}

fn assert_echo_works(report: &SdkReport) {
    assert_eq!(
        report.tools,
        ["echo"],
        "tools/list through forkline\n{}",
        report.stderr
    );
    assert_eq!(
        report.echo, ECHO_TEXT,
        "tools/call echo round trip\n{}",
        report.stderr
    );
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
        "`{what}` should exit 0 promptly when its client closes stdin (the SDK waits 2 s, then \
         SIGTERMs it; no status means it had to be killed)\n{}",
        report.stderr
    );
}

/// After the SDK's session ended, `serve` reaped that session's child and
/// is still up for the next client.
fn assert_session_cleaned_up(proxy: &mut Forkline) {
    let pid = proxy.pid();
    let gone = poll_until(PATIENCE, || children_of(pid).is_empty());
    assert!(
        gone,
        "forkline serve still has children {:?} after the SDK client disconnected\n{}",
        children_of(pid),
        proxy.stderr_text()
    );
    assert!(
        proxy.try_exit_status().is_none(),
        "forkline serve exited after one SDK session\n{}",
        proxy.stderr_text()
    );
}

fn connect_command(address: &str) -> Vec<String> {
    with_exit_report(&[
        forkline_bin().to_string(),
        "connect".to_string(),
        address.to_string(),
    ])
}

/// a. SDK → `forkline connect tcp://…` → `forkline serve` → echo-server.
#[test]
fn sdk_negotiates_modern_era_through_connect_tcp() {
    let Some(python) = sdk_python() else { return };
    let mut proxy = Forkline::serve_tcp(&[], &[]);
    let address = format!("tcp://{}", proxy.tcp_addr());
    let report = run_sdk(&python, &connect_command(&address), Some(&proxy));
    assert_modern(&report);
    assert_exited_cleanly(&report, "forkline connect");
    assert_session_cleaned_up(&mut proxy);
}

/// b. SDK → `forkline connect unix:…` → `forkline serve` → echo-server,
/// using the address exactly as `serve` printed it.
#[test]
fn sdk_negotiates_modern_era_through_connect_unix() {
    let Some(python) = sdk_python() else { return };
    let dir = TempDir::new("forkline-sdk");
    let socket = dir.path.join("mcp.sock");
    let mut proxy = Forkline::serve(&["--unix", socket.to_str().expect("utf-8 temp path")], 1);
    let address = proxy
        .listening
        .iter()
        .find(|l| l.starts_with("unix:"))
        .unwrap_or_else(|| panic!("no unix: listener in {:?}", proxy.listening))
        .clone();
    assert_eq!(
        address,
        format!("unix:{}", socket.display()),
        "printed unix listener"
    );
    let report = run_sdk(&python, &connect_command(&address), Some(&proxy));
    assert_modern(&report);
    assert_exited_cleanly(&report, "forkline connect");
    assert_session_cleaned_up(&mut proxy);
}

/// c. SDK → `forkline connect` → `forkline serve` → handshake-only server:
/// the probe's -32601 reaches the SDK unchanged and it falls back.
#[test]
fn sdk_falls_back_to_handshake_through_connect() {
    let Some(python) = sdk_python() else { return };
    let mut proxy = Forkline::serve_tcp(&[], &fake_server(&["--legacy"]));
    let address = format!("tcp://{}", proxy.tcp_addr());
    let report = run_sdk(&python, &connect_command(&address), Some(&proxy));
    assert_legacy(&report);
    assert_exited_cleanly(&report, "forkline connect");
    assert_session_cleaned_up(&mut proxy);
}

/// d. SDK → `forkline stdio -- forkline echo-server`.
#[test]
fn sdk_negotiates_modern_era_through_stdio_mode() {
    let Some(python) = sdk_python() else { return };
    let bin = forkline_bin().to_string();
    let server = with_exit_report(&[
        bin.clone(),
        "stdio".into(),
        "--".into(),
        bin,
        "echo-server".into(),
    ]);
    let report = run_sdk(&python, &server, None);
    assert_modern(&report);
    assert_exited_cleanly(&report, "forkline stdio");
}

/// d. SDK → `forkline stdio -- python3 fake_mcp_server.py --legacy`.
#[test]
fn sdk_falls_back_to_handshake_through_stdio_mode() {
    let Some(python) = sdk_python() else { return };
    let mut command = vec![forkline_bin().to_string(), "stdio".into(), "--".into()];
    command.extend(fake_server(&["--legacy"]));
    let report = run_sdk(&python, &with_exit_report(&command), None);
    assert_legacy(&report);
    assert_exited_cleanly(&report, "forkline stdio");
}

/// Two SDK clients at once through one `serve`: each gets its own child
/// and its own negotiation, and neither disturbs the other.
#[test]
fn sdk_clients_in_parallel_get_separate_sessions() {
    let Some(python) = sdk_python() else { return };
    let mut proxy = Forkline::serve_tcp(&[], &[]);
    let command = connect_command(&format!("tcp://{}", proxy.tcp_addr()));
    let clients: Vec<SdkClient> = (0..2)
        .map(|_| SdkClient::start(&python, ECHO_TEXT, &command))
        .collect();
    for client in clients {
        let (status, stdout, stderr) = client.finish();
        assert!(
            status.is_some_and(|s| s.success()),
            "parallel sdk_client failed ({status:?})\n{stdout}\n{stderr}\n--- serve log ---\n{}",
            proxy.stderr_text()
        );
        let json: Value = serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("bad report ({e}): {stdout}\n{stderr}"));
        assert_eq!(json["era"], "modern", "{json}\n{stderr}");
        assert_eq!(json["echo"], ECHO_TEXT, "{json}\n{stderr}");
    }
    assert_session_cleaned_up(&mut proxy);
}
