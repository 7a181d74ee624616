//! The command line: every subcommand's `--help` lists its flags with
//! their defaults; a bad flag or value exits 2 naming the flag; no
//! arguments prints usage and exits 2; a listener that cannot bind exits 1
//! naming the address.

mod common;

use common::*;

/// The help entry (first line and continuation lines) of `flag` in `help`.
fn help_entry<'a>(help: &'a str, flag: &str) -> Option<String> {
    let lines: Vec<&'a str> = help.lines().collect();
    let start = lines.iter().position(|l| {
        l.trim_start().starts_with('-')
            && l.split(|c: char| c.is_whitespace() || c == ',')
                .any(|w| w.trim_end_matches("...") == flag)
    })?;
    let mut entry = vec![lines[start]];
    // An entry ends at the next flag or heading. Blank lines may sit
    // inside one: clap puts help under its flag, default after a blank
    // line, once some flag's help is too long for one column.
    for l in &lines[start + 1..] {
        let t = l.trim_start();
        if t.starts_with('-') || (!t.is_empty() && !l.starts_with(' ')) {
            break;
        }
        entry.push(l);
    }
    Some(entry.join("\n"))
}

fn help_of(subcommand: &str) -> String {
    let run = run_forkline(&[subcommand, "--help"], b"");
    assert_eq!(run.status.code(), Some(0), "{subcommand} --help: {run:?}");
    run.stdout
}

fn assert_flag(help: &str, flag: &str, default: Option<&str>) {
    let entry =
        help_entry(help, flag).unwrap_or_else(|| panic!("{flag} missing from help:\n{help}"));
    if let Some(default) = default {
        assert!(
            entry.contains(&format!("[default: {default}]")),
            "{flag} does not show its default {default}:\n{entry}"
        );
    }
}

const LIMIT_FLAGS: [(&str, &str); 6] = [
    ("--max-sessions", "64"),
    ("--max-sessions-per-client", "16"),
    ("--idle-timeout", "300"),
    ("--max-message-bytes", "4MiB"),
    ("--max-inflight", "256"),
    ("--shutdown-grace", "5"),
];

#[test]
fn serve_help_lists_every_flag_with_its_default() {
    let help = help_of("serve");
    for (flag, default) in LIMIT_FLAGS {
        assert_flag(&help, flag, Some(default));
    }
    assert_flag(&help, "--tcp", None);
    assert_flag(&help, "--unix", None);
    assert_flag(&help, "--verbose", None);
    assert_flag(&help, "--quiet", None);
    let tcp = help_entry(&help, "--tcp").unwrap();
    assert!(
        tcp.contains("127.0.0.1:7070"),
        "--tcp does not mention its default listener:\n{tcp}"
    );
    assert!(
        help.contains("echo-server"),
        "serve help does not say the default child is echo-server:\n{help}"
    );
}

#[test]
fn stdio_help_lists_its_limit_flags_with_their_defaults() {
    let help = help_of("stdio");
    for (flag, default) in LIMIT_FLAGS {
        assert_flag(&help, flag, Some(default));
    }
    assert!(
        help.contains("[--] COMMAND [ARGS...]"),
        "stdio help does not show the command, with or without `--`:\n{help}"
    );
}

#[test]
fn serve_usage_shows_the_command_with_an_optional_separator() {
    let help = help_of("serve");
    assert!(
        help.contains("[--] COMMAND [ARGS...]"),
        "serve help does not show the command, with or without `--`:\n{help}"
    );
}

/// The MCP Inspector (`mcp-inspector --cli forkline stdio -- node srv.js`)
/// swallows the `--`: the command must work without it.
#[test]
fn stdio_runs_a_command_given_without_a_separator() {
    let child = fake_server(&[]);
    let mut args = vec!["stdio", "--max-message-bytes", "64KiB"];
    args.extend(child.iter().map(String::as_str));
    let mut forkline = Piped::spawn(&args);
    assert_echo(
        &forkline.call(serde_json::json!(1), "tools/list", serde_json::json!({})),
        &serde_json::json!(1),
        "tools/list",
    );
    forkline.close_stdin();
    let status = forkline.wait_exit(PATIENCE);
    assert_eq!(
        status.code(),
        Some(0),
        "exit after stdin EOF; stderr:\n{}",
        forkline.stderr_text()
    );
}

#[test]
fn connect_and_echo_server_have_help() {
    let connect = help_of("connect");
    assert!(
        connect.contains("tcp://HOST:PORT") && connect.contains("unix:PATH"),
        "{connect}"
    );
    let echo = help_of("echo-server");
    assert!(echo.to_lowercase().contains("echo"), "{echo}");
}

#[test]
fn bad_flags_and_values_exit_2_naming_the_flag() {
    let cases: &[(&[&str], &str)] = &[
        (&["serve", "--max-sessions", "0"], "--max-sessions"),
        (&["serve", "--max-sessions", "many"], "--max-sessions"),
        (
            &["serve", "--max-sessions-per-client", "0"],
            "--max-sessions-per-client",
        ),
        (&["serve", "--tcp", "not-an-addr"], "--tcp"),
        (&["serve", "--idle-timeout", "soon"], "--idle-timeout"),
        (&["serve", "--idle-timeout=-1"], "--idle-timeout"),
        (
            &["serve", "--max-message-bytes", "4XB"],
            "--max-message-bytes",
        ),
        (&["serve", "--shutdown-grace", "later"], "--shutdown-grace"),
        (&["serve", "--max-inflight", "0"], "--max-inflight"),
        (
            &["stdio", "--max-inflight", "lots", "--", "true"],
            "--max-inflight",
        ),
        (&["serve", "--bogus-flag"], "--bogus-flag"),
        (
            &["stdio", "--max-message-bytes", "huge", "--", "true"],
            "--max-message-bytes",
        ),
        (&["stdio"], "COMMAND"),
        (&["connect", "http://127.0.0.1:1"], "ADDRESS"),
        (&["nonsense-subcommand"], "nonsense-subcommand"),
    ];
    for (args, named) in cases {
        let run = run_forkline(args, b"");
        assert_eq!(run.status.code(), Some(2), "forkline {args:?}: {run:?}");
        assert!(
            run.stderr.contains(named),
            "forkline {args:?}: stderr does not name {named}:\n{}",
            run.stderr
        );
        assert!(
            run.stdout.is_empty(),
            "forkline {args:?} wrote to stdout: {}",
            run.stdout
        );
    }
}

/// A negative value is a bad value of its flag, not an unknown flag `-3`.
#[test]
fn negative_values_are_invalid_values_of_their_flag() {
    let cases = [
        ("--idle-timeout", "-3", "<SECS>"),
        ("--shutdown-grace", "-0.5", "<SECS>"),
        ("--max-sessions", "-3", "<N>"),
        ("--max-sessions-per-client", "-1", "<N>"),
        ("--max-message-bytes", "-4096", "<N>"),
        ("--max-inflight", "-1", "<N>"),
    ];
    for (flag, value, placeholder) in cases {
        for args in [
            vec!["serve", "--tcp", "127.0.0.1:0", flag, value],
            vec!["stdio", flag, value, "--", "true"],
        ] {
            let run = run_forkline(&args, b"");
            assert_eq!(run.status.code(), Some(2), "forkline {args:?}: {run:?}");
            let named = format!("invalid value '{value}' for '{flag} {placeholder}'");
            assert!(
                run.stderr.contains(&named),
                "forkline {args:?}: stderr does not say {named:?}:\n{}",
                run.stderr
            );
        }
    }
}

/// A duration of 1e19 s used to parse and then panic adding it to an
/// `Instant`; anything over a year is refused up front.
#[test]
fn durations_over_a_year_exit_2_naming_the_flag_and_the_maximum() {
    for flag in ["--idle-timeout", "--shutdown-grace"] {
        for value in ["1e19", "31536001"] {
            for args in [
                vec!["stdio", flag, value, "--", "true"],
                vec!["serve", "--tcp", "127.0.0.1:0", flag, value],
            ] {
                let run = run_forkline(&args, b"");
                assert_eq!(run.status.code(), Some(2), "forkline {args:?}: {run:?}");
                assert!(
                    run.stderr.contains(flag) && run.stderr.contains("31536000"),
                    "forkline {args:?}: stderr does not name {flag} and the maximum:\n{}",
                    run.stderr
                );
            }
        }
    }
}

#[test]
fn no_arguments_prints_usage_and_exits_2() {
    let run = run_forkline(&[], b"");
    assert_eq!(run.status.code(), Some(2), "{run:?}");
    let text = format!("{}{}", run.stdout, run.stderr);
    assert!(text.contains("Usage"), "no usage printed: {run:?}");
    for sub in ["serve", "stdio", "connect", "echo-server"] {
        assert!(text.contains(sub), "usage does not list {sub}: {text}");
    }
}

#[test]
fn a_listener_that_cannot_bind_exits_1_naming_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().unwrap().to_string();
    let run = run_forkline(&["serve", "--tcp", &addr], b"");
    assert_eq!(run.status.code(), Some(1), "{run:?}");
    assert!(
        run.stderr.contains(&addr),
        "error does not name {addr}: {}",
        run.stderr
    );
}

#[test]
fn log_format_json_writes_one_object_per_line_with_the_session() {
    let mut forkline = Forkline::serve(&["--tcp", "127.0.0.1:0", "--log-format", "json"], 1);
    let mut client = forkline.connect();
    let reply = client.call(serde_json::json!(1), "ping", serde_json::json!({}));
    assert_eq!(reply["id"], 1, "{reply}");
    drop(client);
    forkline.wait_for_log("session closed");
    forkline.signal(libc::SIGTERM);
    assert_eq!(forkline.wait_exit(PATIENCE).code(), Some(0));
    let records: Vec<serde_json::Value> = forkline
        .stderr_lines()
        .iter()
        // The start-up lines are plain text whatever the log format.
        .filter(|l| !l.starts_with("forkline: listening on") && !l.starts_with("forkline: node "))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let closed = records
        .iter()
        .find(|r| {
            r["msg"]
                .as_str()
                .is_some_and(|m| m.starts_with("session closed"))
        })
        .expect("a session closed record");
    assert_eq!(closed["session"], "s1", "{closed}");
    assert_eq!(closed["level"], "INFO", "{closed}");
    let msg = closed["msg"].as_str().unwrap_or_default();
    for key in [
        "reason=",
        "dur_ms=",
        "in=",
        "out=",
        "bytes_in=",
        "bytes_out=",
        "child=",
    ] {
        assert!(msg.contains(key), "{key} missing: {msg}");
    }
}
