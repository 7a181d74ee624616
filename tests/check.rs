//! `forkline check FILE`: broken files get every problem with its JSON path
//! (line and column for a syntax error) and exit 2; a good file gets one
//! line per server and exit 0 — the README's example among them, as it
//! stands in the README.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::*;

/// `forkline check FILE` with FILE holding `text`; PATH also holds
/// forkline's own directory, so a file may name `forkline` as a command.
fn check(text: &str, configure: impl FnOnce(&mut Command)) -> (String, Output) {
    let dir = TempDir::new("check");
    let file = dir.path.join("servers.json");
    std::fs::write(&file, text).expect("write the file");
    let file = file.display().to_string();
    let output = check_with(&[&file], configure);
    (file, output)
}

/// `forkline check ARGS…`; PATH also holds forkline's own directory.
fn check_with(args: &[&str], configure: impl FnOnce(&mut Command)) -> Output {
    let bin_dir = Path::new(forkline_bin()).parent().expect("bin dir");
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut command = Command::new(forkline_bin());
    command
        .arg("check")
        .args(args)
        .env("PATH", path)
        .stdin(Stdio::null());
    configure(&mut command);
    command.output().expect("run forkline check")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Checks `text` fails with exactly `problems` (each after `FILE`).
fn assert_problems(text: &str, problems: &[&str]) {
    let (file, output) = check(text, |_| {});
    let expected: String = problems
        .iter()
        .map(|p| format!("{file}{p}\n"))
        .chain([format!(
            "{file}: {} problem{}; nothing is served from it\n",
            problems.len(),
            if problems.len() == 1 { "" } else { "s" }
        )])
        .collect();
    assert_eq!(stdout(&output), expected, "{text}");
    assert_eq!(output.status.code(), Some(2), "{text}");
}

#[test]
fn a_server_without_a_command() {
    assert_problems(
        r#"{"mcpServers": {"fs": {"args": ["/srv/docs"]}}}"#,
        &[": mcpServers.fs: missing: a stdio server needs the `command` that starts it"],
    );
}

#[test]
fn an_unknown_key_is_named_with_its_path() {
    assert_problems(
        r#"{"mcpServers": {"fs": {"command": "forkline", "forkline": {"maxSesions": 2}}}}"#,
        &[
            ": mcpServers.fs.forkline.maxSesions: unknown key (known here: maxSessions, \
           maxSessionsPerClient, idleTimeout, maxMessageBytes, maxInflight, prespawn, tcp, unix)",
        ],
    );
    assert_problems(
        r#"{"mcpServers": {"fs": {"command": "forkline", "cwd": "/srv"}}}"#,
        &[
            ": mcpServers.fs.cwd: unknown key (known here: command, args, env, forkline, type, disabled)",
        ],
    );
}

#[test]
fn bad_json_gets_its_line_and_column() {
    assert_problems(
        "{\"mcpServers\": {\n  \"fs\": {\"command\": \"forkline\",}\n}}\n",
        &[":2:32: not valid JSON: trailing comma"],
    );
    assert_problems(
        "{\"mcpServers\": {\"fs\": {\"command\": \"forkline\"}}",
        &[":1:46: not valid JSON: EOF while parsing an object"],
    );
}

#[test]
fn a_missing_environment_variable() {
    assert_problems(
        r#"{"mcpServers": {"gh": {"command": "forkline",
            "env": {"GITHUB_TOKEN": "${env:FORKLINE_TEST_UNSET_VARIABLE}"}}}}"#,
        &[
            ": mcpServers.gh.env.GITHUB_TOKEN: ${env:FORKLINE_TEST_UNSET_VARIABLE}: \
           FORKLINE_TEST_UNSET_VARIABLE is not set in forkline's environment",
        ],
    );
}

#[test]
fn every_problem_of_a_file_at_once() {
    assert_problems(
        r#"{"mcpServers": {
            "a": {"command": "forkline", "args": "echo-server"},
            "b": {"command": "no-such-program-here", "forkline": {"maxSessions": 0}}
        }, "forkline": {"http": "localhost:80"}}"#,
        &[
            ": forkline.http: expected IP:PORT, e.g. 127.0.0.1:7070 or [::1]:7070, got `localhost:80`",
            ": mcpServers.a.args: must be an array of strings, not a string",
            ": mcpServers.b.command: `no-such-program-here` is not found in PATH",
            ": mcpServers.b.forkline.maxSessions: must be at least 1",
        ],
    );
}

#[test]
fn a_file_that_cannot_be_read() {
    let output = Command::new(forkline_bin())
        .args(["check", "/nonexistent/servers.json"])
        .stdin(Stdio::null())
        .output()
        .expect("run forkline check");
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        stdout(&output),
        "/nonexistent/servers.json: cannot read it: No such file or directory (os error 2)\n\
         /nonexistent/servers.json: 1 problem; nothing is served from it\n"
    );
}

/// The README's `mcpServers` example, exactly as the README has it.
fn readme_example() -> String {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("read README.md");
    let marker = "<!-- the config example: tests/check.rs reads it from here -->";
    let after = readme
        .split_once(marker)
        .unwrap_or_else(|| panic!("README.md lost its marker {marker:?}"))
        .1;
    let body = after
        .split_once("```json\n")
        .expect("a json block after the marker")
        .1;
    body.split_once("```")
        .expect("the json block's end")
        .0
        .to_string()
}

#[test]
fn the_readme_example_checks_out_line_by_line() {
    let (file, output) = check(&readme_example(), |command| {
        command.env("EVERYTHING_TOKEN", "t0ken");
    });
    assert_eq!(
        stdout(&output),
        format!(
            "echo: `forkline echo-server`; at /servers/echo/mcp; maxSessions 64, \
             maxSessionsPerClient 4, idleTimeout 300s, maxMessageBytes 4MiB, maxInflight 256, \
             prespawn 0\n\
             everything: `npx -y @modelcontextprotocol/server-everything`; at \
             /servers/everything/mcp, tcp://127.0.0.1:7071; maxSessions 8, maxSessionsPerClient 4, \
             idleTimeout 600s, maxMessageBytes 4MiB, maxInflight 256, prespawn 1; env: API_TOKEN\n\
             legacy: skipped (disabled)\n\
             weather: skipped (a remote server: MCP clients reach its url directly)\n\
             {file}: ok, 2 servers to serve on http://127.0.0.1:7070\n"
        )
    );
    assert_eq!(output.status.code(), Some(0));
    assert!(
        !stdout(&output).contains("t0ken"),
        "env values are never printed"
    );
    // Without the variable the same file does not check out.
    let (_, output) = check(&readme_example(), |command| {
        command.env_remove("EVERYTHING_TOKEN");
    });
    assert_eq!(output.status.code(), Some(2), "{}", stdout(&output));
}

#[test]
fn the_file_may_be_given_as_serve_takes_it_with_config() {
    let dir = TempDir::new("check-config");
    let good = dir.path.join("good.json");
    std::fs::write(
        &good,
        r#"{"mcpServers": {"echo": {"command": "forkline", "args": ["echo-server"]}}}"#,
    )
    .expect("write the file");
    let bad = dir.path.join("bad.json");
    std::fs::write(&bad, r#"{"mcpServers": {"fs": {}}}"#).expect("write the file");
    let good = good.to_str().expect("a UTF-8 path");
    let bad = bad.to_str().expect("a UTF-8 path");
    for (file, code) in [(good, 0), (bad, 2)] {
        let positional = check_with(&[file], |_| {});
        assert_eq!(positional.status.code(), Some(code), "{file}");
        let with_flag = check_with(&["--config", file], |_| {});
        assert_eq!(stdout(&with_flag), stdout(&positional), "{file}");
        assert_eq!(with_flag.status.code(), Some(code), "{file}");
    }
    // Neither, or both: a usage error that names what is wanted.
    let neither = check_with(&[], |_| {});
    assert_eq!(neither.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&neither.stderr).contains("<FILE>"),
        "{}",
        String::from_utf8_lossy(&neither.stderr)
    );
    let both = check_with(&[good, "--config", good], |_| {});
    assert_eq!(both.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&both.stderr).contains("cannot be used with"),
        "{}",
        String::from_utf8_lossy(&both.stderr)
    );
}
