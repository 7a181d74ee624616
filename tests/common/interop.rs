//! What the interop tests with real MCP software share: finding the
//! Python with the official SDK, reading a client's pipes on threads, and
//! the process tree a client launched.
//!
//! An interop test whose client is missing says so and passes on a
//! developer's machine, but fails under CI: there a skipped interop test
//! would pass without testing anything.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use super::{children_of, poll_until};

/// True under CI (`CI` set to anything but empty, `false` or `0`).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// Passes (after a notice) when `what` is missing outside CI; panics in CI.
pub fn skip_unless_ci(what: &str) {
    assert!(
        !in_ci(),
        "CI is set but {what}. .ci/run should have installed it with .ci/setup-sdk; the \
         interop tests must run in CI, not be skipped"
    );
    eprintln!("notice: skipping interop test: {what} (run .ci/setup-sdk to enable it)");
}

/// The Python to run the SDK with: `$FORKLINE_SDK_PYTHON`, else
/// `target/sdk-venv/bin/python` as made by `.ci/setup-sdk`; `None` (after
/// a notice, and never under CI) when there is neither.
pub fn sdk_python() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("FORKLINE_SDK_PYTHON").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        assert!(
            path.exists(),
            "FORKLINE_SDK_PYTHON={} does not exist; run .ci/setup-sdk or unset it",
            path.display()
        );
        return Some(path);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/sdk-venv/bin/python");
    if venv.exists() {
        return Some(venv);
    }
    skip_unless_ci(&format!(
        "there is no Python with the MCP SDK ({} does not exist, FORKLINE_SDK_PYTHON is unset)",
        venv.display()
    ));
    None
}

/// Reads `pipe` to its end on a thread of its own.
pub fn drain(mut pipe: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        buf
    })
}

/// Joins a pipe reader if it ends within `timeout` (a process the client
/// launched could hold the pipe open; then the reader is left behind, not
/// waited on forever).
pub fn join_within(handle: Option<JoinHandle<Vec<u8>>>, timeout: Duration) -> String {
    let Some(handle) = handle else {
        return String::new();
    };
    if !poll_until(timeout, || handle.is_finished()) {
        return "<pipe still open: something the client launched outlived it>".to_string();
    }
    String::from_utf8_lossy(&handle.join().unwrap_or_default()).into_owned()
}

/// Every live descendant of `pid`, children first.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut queue = vec![pid];
    while let Some(parent) = queue.pop() {
        for (child, _) in children_of(parent) {
            out.push(child);
            queue.push(child);
        }
    }
    out
}

/// What sdk_client.py reported.
#[derive(Debug)]
pub struct SdkReport {
    pub era: String,
    pub protocol_version: String,
    pub tools: Vec<String>,
    pub echo: String,
    pub stderr: String,
}

impl SdkReport {
    /// Reads the JSON line sdk_client.py printed last; panics with
    /// `context()` when there is none or it lacks a field, and when the SDK
    /// logged a line it could not parse (forkline must never hand a client
    /// garbage, nor split or join the server's lines).
    pub fn parse(stdout: &str, stderr: &str, context: impl Fn() -> String) -> SdkReport {
        let line = stdout.lines().rev().find(|l| !l.trim().is_empty());
        let json: serde_json::Value =
            serde_json::from_str(line.unwrap_or("")).unwrap_or_else(|e| {
                panic!("sdk_client.py printed no JSON report ({e})\n{}", context())
            });
        let field = |name: &str| {
            json[name]
                .as_str()
                .unwrap_or_else(|| panic!("report lacks string {name:?}: {json}\n{}", context()))
                .to_string()
        };
        let tools = json["tools"]
            .as_array()
            .unwrap_or_else(|| panic!("report lacks \"tools\": {json}\n{}", context()))
            .iter()
            .map(|t| t.as_str().expect("tool names are strings").to_string())
            .collect();
        assert!(
            !stderr.contains("Failed to parse JSONRPC message"),
            "the SDK received a line that is not JSON-RPC\n{}",
            context()
        );
        SdkReport {
            era: field("era"),
            protocol_version: field("protocol_version"),
            tools,
            echo: field("echo"),
            stderr: stderr.to_string(),
        }
    }
}
