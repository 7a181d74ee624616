//! `--record DIR` and `forkline replay`: every session of every transport
//! leaves one JSON Lines tape (start, each message as it went, end), whose
//! name is unique across runs; tapes are whole after SIGTERM; an unusable
//! directory is refused at start; a disk that fills mid-session stops the
//! recording, not the session. `replay` prints a tape as an aligned
//! transcript or its records, and names the line of a malformed one.

mod common;

use std::path::{Path, PathBuf};

use common::http::{McpSession, http_addr, serve_http};
use common::*;
use serde_json::{Value, json};

/// One line of a tape: its bytes (without the newline) and its value.
struct Line {
    raw: Vec<u8>,
    value: Value,
}

impl Line {
    fn kind(&self) -> Option<&str> {
        self.value["type"].as_str()
    }

    /// The embedded message exactly as it is in the file.
    fn raw_msg(&self) -> &[u8] {
        let at = self
            .raw
            .windows(6)
            .position(|w| w == b"\"msg\":")
            .expect("a message record has msg");
        let start = at + b"\"msg\":".len();
        &self.raw[start..self.raw.len() - 1]
    }
}

/// Every tape in `dir`, by name.
fn tapes(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read the record dir")
        .map(|e| e.expect("dir entry").path())
        .collect();
    found.sort();
    found
}

/// Reads a tape; every line must be newline-terminated JSON.
fn read_tape(path: &Path) -> Vec<Line> {
    let bytes = std::fs::read(path).expect("read tape");
    assert!(
        bytes.is_empty() || bytes.ends_with(b"\n"),
        "tape {} does not end with a newline",
        path.display()
    );
    bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|raw| Line {
            value: serde_json::from_slice(raw).unwrap_or_else(|e| {
                panic!(
                    "tape line is not JSON ({e}): {}",
                    String::from_utf8_lossy(raw)
                )
            }),
            raw: raw.to_vec(),
        })
        .collect()
}

/// Waits until `dir` holds exactly one tape and it ends with an end
/// record; returns its path and lines.
fn finished_tape(dir: &Path) -> (PathBuf, Vec<Line>) {
    let mut found = None;
    poll_until(PATIENCE, || {
        let all = tapes(dir);
        if all.len() != 1 {
            return false;
        }
        let lines = read_tape(&all[0]);
        if lines.last().and_then(Line::kind) == Some("end") {
            found = Some((all[0].clone(), lines));
            return true;
        }
        false
    });
    found.unwrap_or_else(|| panic!("no finished tape in {}: {:?}", dir.display(), tapes(dir)))
}

/// The message records of a tape as (dir, message).
fn messages(lines: &[Line]) -> Vec<(&str, &Value)> {
    lines
        .iter()
        .filter(|l| l.kind().is_none())
        .map(|l| (l.value["dir"].as_str().expect("dir"), &l.value["msg"]))
        .collect()
}

/// Start first, end last, message times never going back; returns the
/// start and end records.
fn check_shape(lines: &[Line]) -> (&Value, &Value) {
    assert!(lines.len() >= 2, "a tape has a start and an end");
    assert_eq!(lines[0].kind(), Some("start"));
    assert_eq!(lines.last().unwrap().kind(), Some("end"));
    let mut last = 0;
    for line in &lines[1..lines.len() - 1] {
        assert_eq!(line.kind(), None, "only messages between start and end");
        let t = line.value["t"].as_u64().expect("t in µs");
        assert!(t >= last, "message times go back: {t} after {last}");
        last = t;
        assert!(matches!(line.value["dir"].as_str(), Some("in" | "out")));
    }
    let end = &lines.last().unwrap().value;
    assert!(end["t"].as_u64().expect("end t") >= last);
    (&lines[0].value, end)
}

fn record_dir() -> TempDir {
    TempDir::new("forkline-tapes")
}

fn arg(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

/// The pid forkline logged for its session's child.
fn logged_pid(forkline: &Forkline) -> u64 {
    let line = forkline.wait_for_log("session opened");
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("pid="))
        .and_then(|p| p.parse().ok())
        .expect("pid= in the session opened line")
}

// ---- the transports ---------------------------------------------------------

#[test]
fn a_tcp_session_is_taped_message_by_message_as_it_went() {
    let dir = record_dir();
    let forkline = Forkline::serve_tcp(&["--record", arg(&dir.path)], &[]);
    let mut client = forkline.connect();
    // Odd spacing and an escape: the tape must hold these very bytes.
    let call = r#"{"jsonrpc":"2.0", "id":1,  "method":"tools/call","params":{"name":"echo","arguments":{"text":"h\u00e9"}}}"#;
    client.send(call);
    let answer = client.recv();
    assert_eq!(answer["result"]["content"][0]["text"], "hé");
    client.send(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
    client.send("not json");
    assert_eq!(client.recv()["error"]["code"], -32700);
    client.close_write();
    assert!(client.closed_within(PATIENCE));

    let (path, lines) = finished_tape(&dir.path);
    let (start, end) = check_shape(&lines);
    assert_eq!(start["session"], "s1");
    assert_eq!(start["transport"], "tcp");
    assert_eq!(
        start["server"], "default",
        "the server's name (serve --config)"
    );
    assert!(
        start["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{start}"
    );
    assert_eq!(start["pid"], logged_pid(&forkline));
    assert_eq!(start["command"][1], "echo-server");
    assert!(start["time"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        path.file_name().unwrap().to_str().unwrap(),
        format!("{}.jsonl", start["tape"].as_str().unwrap())
    );

    let msgs = messages(&lines);
    let dirs: Vec<&str> = msgs.iter().map(|(d, _)| *d).collect();
    assert_eq!(dirs, ["in", "out", "in", "out"], "{msgs:?}");
    assert_eq!(
        lines[1].raw_msg(),
        call.as_bytes(),
        "the line as it was sent"
    );
    assert_eq!(msgs[1].1["id"], 1);
    assert_eq!(msgs[2].1["method"], "notifications/initialized");
    assert_eq!(msgs[3].1["error"]["code"], -32700, "forkline's own answer");

    assert_eq!(end["reason"], "client_closed");
    assert_eq!(end["exit"]["code"], 0);
    assert_eq!(end["exit"]["text"], "exit status 0");
    assert_eq!(end["in"]["messages"], 2);
    assert_eq!(end["out"]["messages"], 2);
    let bytes_in: usize = lines[1..lines.len() - 1]
        .iter()
        .filter(|l| l.value["dir"] == "in")
        .map(|l| l.raw_msg().len() + 1)
        .sum();
    assert_eq!(end["in"]["bytes"], bytes_in as u64);
    assert_eq!(end["complete"], true);
    assert!(end.get("error").is_none());
}

#[test]
fn a_unix_session_is_taped() {
    let dir = record_dir();
    let sockets = TempDir::new("forkline-record-unix");
    let socket = sockets.path.join("s.sock");
    let forkline = Forkline::serve(
        &["--unix", arg(&socket), "--record", arg(&dir.path), "--"]
            .into_iter()
            .chain(fake_server(&[]).iter().map(String::as_str))
            .collect::<Vec<_>>(),
        1,
    );
    let mut client = Client::unix(&socket);
    assert_echo(
        &client.call(json!("a"), "over/unix", json!([1])),
        &json!("a"),
        "over/unix",
    );
    client.close_write();
    assert!(client.closed_within(PATIENCE));
    let (_, lines) = finished_tape(&dir.path);
    let (start, end) = check_shape(&lines);
    assert_eq!(start["transport"], "unix");
    assert!(
        start["peer"].as_str().unwrap().starts_with("unix:"),
        "{start}"
    );
    assert_eq!(start["pid"], logged_pid(&forkline));
    let msgs = messages(&lines);
    assert_eq!(msgs.len(), 2);
    assert_eq!(
        (msgs[0].0, &msgs[0].1["method"]),
        ("in", &json!("over/unix"))
    );
    assert_eq!((msgs[1].0, &msgs[1].1["id"]), ("out", &json!("a")));
    assert_eq!(end["reason"], "client_closed");
}

#[test]
fn a_stdio_session_is_taped_and_its_tape_is_whole_when_forkline_exits() {
    let dir = record_dir();
    let mut forkline = Piped::spawn(&[
        "stdio",
        "--record",
        arg(&dir.path),
        "--",
        forkline_bin(),
        "echo-server",
    ]);
    let answer = forkline.call(json!(7), "ping", json!({}));
    assert_eq!(answer["id"], 7);
    forkline.close_stdin();
    assert!(forkline.wait_exit(PATIENCE).success());
    // No polling: the tape must be complete by the time forkline exits.
    let all = tapes(&dir.path);
    assert_eq!(all.len(), 1, "{all:?}");
    let lines = read_tape(&all[0]);
    let (start, end) = check_shape(&lines);
    assert_eq!(start["transport"], "stdio");
    assert_eq!(start["peer"], "stdio");
    assert_eq!(start["session"], "s1");
    assert!(start["pid"].as_u64().is_some());
    let msgs = messages(&lines);
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[0].1["method"], "ping");
    assert_eq!(msgs[1].1["id"], 7);
    assert_eq!(end["reason"], "client_closed");
    assert_eq!(end["complete"], true);
}

#[test]
fn an_http_session_is_taped_with_its_transport() {
    let dir = record_dir();
    let forkline = serve_http(&["--record", arg(&dir.path)], &[]);
    let session = McpSession::open(http_addr(&forkline));
    let listed = session.call(json!(1), "tools/list", json!({}));
    assert_eq!(listed["result"]["tools"][0]["name"], "echo");
    session.delete();
    forkline.wait_for_log("session closed");
    let (_, lines) = finished_tape(&dir.path);
    let (start, end) = check_shape(&lines);
    assert_eq!(start["transport"], "http");
    assert!(start["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    let msgs = messages(&lines);
    let seen: Vec<(&str, Value)> = msgs
        .iter()
        .map(|(d, m)| {
            (
                *d,
                m.get("method").cloned().unwrap_or_else(|| m["id"].clone()),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("in", json!("initialize")),
            ("out", json!(0)),
            ("in", json!("notifications/initialized")),
            ("in", json!("tools/list")),
            ("out", json!(1)),
        ],
        "{msgs:?}"
    );
    assert_eq!(end["in"]["messages"], 3);
    assert_eq!(end["out"]["messages"], 2);
    assert_eq!(end["complete"], true);
}

// ---- names, shutdown, failures ----------------------------------------------

/// One echo session through a fresh forkline recording into `dir`.
fn one_recorded_session(dir: &Path) {
    let mut forkline = Forkline::serve_tcp(&["--record", arg(dir)], &[]);
    let mut client = forkline.connect();
    assert_eq!(client.call(json!(1), "ping", json!({}))["id"], 1);
    client.close_write();
    assert!(client.closed_within(PATIENCE));
    forkline.wait_for_log("session closed");
    forkline.signal(libc::SIGTERM);
    assert!(forkline.wait_exit(PATIENCE).success());
}

#[test]
fn tape_names_are_unique_across_runs_whose_session_ids_repeat() {
    let dir = record_dir();
    one_recorded_session(&dir.path);
    one_recorded_session(&dir.path);
    let all = tapes(&dir.path);
    assert_eq!(all.len(), 2, "{all:?}");
    let mut runs = Vec::new();
    for path in &all {
        let name = path.file_name().unwrap().to_str().unwrap();
        // 20261124T085146Z-3f9a1c07b2e4-s1.jsonl
        let parts: Vec<&str> = name.trim_end_matches(".jsonl").split('-').collect();
        assert_eq!(parts.len(), 3, "{name}");
        let stamp = parts[0].as_bytes();
        assert_eq!(stamp.len(), 16, "{name}");
        assert!(stamp[..8].iter().all(u8::is_ascii_digit), "{name}");
        assert_eq!((stamp[8], stamp[15]), (b'T', b'Z'), "{name}");
        assert_eq!(parts[1].len(), 12, "{name}");
        assert!(parts[1].bytes().all(|b| b.is_ascii_hexdigit()), "{name}");
        assert_eq!(parts[2], "s1", "{name}");
        let lines = read_tape(path);
        check_shape(&lines);
        assert_eq!(lines[0].value["session"], "s1");
        runs.push(parts[1].to_string());
    }
    assert_ne!(runs[0], runs[1], "each run has its own id");
}

#[test]
fn sigterm_mid_session_leaves_a_complete_tape() {
    let dir = record_dir();
    let mut forkline = Forkline::serve_tcp(
        &["--record", arg(&dir.path), "--shutdown-grace", "0.5"],
        &fake_server(&["--hang", "--trace"]),
    );
    let mut guard = StrayGuard::new();
    let mut client = forkline.connect();
    client.request(json!(5), "slow", json!({}));
    forkline.wait_for_log("fake: received slow id=5");
    guard.watch(logged_pid(&forkline) as u32);
    forkline.signal(libc::SIGTERM);
    assert_error(&client.recv(), -32004, &json!(5));
    assert!(forkline.wait_exit(PATIENCE).success());

    let all = tapes(&dir.path);
    assert_eq!(all.len(), 1, "{all:?}");
    let lines = read_tape(&all[0]);
    let (_, end) = check_shape(&lines);
    let msgs = messages(&lines);
    assert_eq!(msgs.len(), 2, "{msgs:?}");
    assert_eq!(msgs[0].1["method"], "slow");
    assert_eq!(
        msgs[1].1["error"]["code"], -32004,
        "the -32004 answer is taped"
    );
    assert_eq!(end["reason"], "shutdown");
    assert_eq!(end["complete"], true);
}

#[test]
fn an_unusable_record_directory_is_a_config_error_naming_the_flag() {
    let dir = record_dir();
    let file = dir.path.join("a-file");
    std::fs::write(&file, b"not a directory").expect("write file");
    let under_file = file.join("tapes");
    for args in [
        vec![
            "serve",
            "--tcp",
            "127.0.0.1:0",
            "--record",
            arg(&under_file),
        ],
        vec!["stdio", "--record", arg(&file), "--", "cat"],
    ] {
        let run = run_forkline(&args, b"");
        assert_eq!(run.status.code(), Some(2), "{args:?}: {}", run.stderr);
        assert!(run.stderr.contains("--record"), "{}", run.stderr);
        assert!(run.stderr.contains(arg(&dir.path)), "{}", run.stderr);
    }
}

/// Tape files of this forkline may not grow past this (RLIMIT_FSIZE).
const FILE_LIMIT: u64 = 4096;

#[test]
fn a_disk_that_fills_stops_the_tape_not_the_session() {
    let dir = record_dir();
    let args = ["--tcp", "127.0.0.1:0", "--record", arg(&dir.path)];
    let mut forkline = Forkline::serve_configured(&args, 1, |cmd| {
        set_rlimit(cmd, libc::RLIMIT_FSIZE, FILE_LIMIT);
    });
    let mut client = forkline.connect();
    let text = "x".repeat(200);
    // Far more than the limit holds, one exchange at a time.
    for i in 0..100 {
        let answer = client.call(
            json!(i),
            "tools/call",
            json!({"name": "echo", "arguments": {"text": text}}),
        );
        assert_eq!(answer["result"]["content"][0]["text"], text.as_str(), "{i}");
    }
    forkline.wait_for_log("is incomplete: write failed");
    assert_eq!(
        client.call(json!("after"), "ping", json!({}))["id"],
        "after"
    );
    client.close_write();
    assert!(client.closed_within(PATIENCE));
    forkline.wait_for_log("session closed");

    let warnings = forkline
        .stderr_lines()
        .into_iter()
        .filter(|l| l.contains("is incomplete"))
        .count();
    assert_eq!(
        warnings,
        1,
        "the log says why once:\n{}",
        forkline.stderr_text()
    );
    let all = tapes(&dir.path);
    assert_eq!(all.len(), 1, "{all:?}");
    let size = std::fs::metadata(&all[0]).unwrap().len();
    assert!(size <= FILE_LIMIT, "{size}");
    // Whatever is on disk is whole records: read_tape checks every line.
    let lines = read_tape(&all[0]);
    assert_eq!(lines[0].kind(), Some("start"));
    if let Some(end) = lines.last().filter(|l| l.kind() == Some("end")) {
        assert_eq!(end.value["complete"], false);
        assert!(
            end.value["error"].as_str().unwrap().contains("too large"),
            "{}",
            end.value
        );
    }
    let replay = run_forkline(&["replay", arg(&all[0])], b"");
    assert_eq!(replay.status.code(), Some(0), "{}", replay.stderr);
    assert!(
        replay.stdout.contains("tape incomplete"),
        "{}",
        replay.stdout
    );

    // SIGXFSZ did not kill forkline; it shuts down as usual.
    forkline.signal(libc::SIGTERM);
    assert!(forkline.wait_exit(PATIENCE).success());
}

// ---- replay -----------------------------------------------------------------

const KNOWN_TAPE: &str = r#"{"type":"start","time":"2026-11-24T08:51:46.792Z","session":"s3","tape":"20261124T085146Z-0123456789ab-s3","peer":"127.0.0.1:41898","transport":"tcp","command":["srv","--x"],"pid":4242}
{"t":1000,"dir":"in","msg":{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}}
{"t":2500,"dir":"out","msg":{"jsonrpc":"2.0","id":1,"result":{}}}
{"t":3000,"dir":"in","msg":{"jsonrpc":"2.0","method":"notifications/initialized"}}
{"t":4000,"dir":"in","msg":{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo"}}}
{"t":5000,"dir":"out","msg":{"jsonrpc":"2.0","id":"srv-1","method":"roots/list"}}
{"t":5250,"dir":"in","msg":{"jsonrpc":"2.0","id":"srv-1","result":{"roots":[]}}}
{"t":1234567,"dir":"out","msg":{"jsonrpc":"2.0","id":2,"error":{"code":-32002,"message":"gone"}}}
{"type":"end","t":1300000,"reason":"child_exited","exit":{"code":3,"signal":null,"forced":false,"text":"exit status 3"},"in":{"messages":4,"bytes":239},"out":{"messages":3,"bytes":156},"complete":true}
"#;

const KNOWN_TRANSCRIPT: &str = "\
session s3  tcp  peer 127.0.0.1:41898  pid 4242  started 2026-11-24T08:51:46.792Z
command srv --x
tape    20261124T085146Z-0123456789ab-s3

     time ms  dir     bytes      rtt ms  message
       1.000  →          59              initialize #1
       2.500  ←          37       1.500  #1 result
       3.000  →          55              notifications/initialized
       4.000  →          72              tools/call #2
       5.000  ←          53              roots/list #\"srv-1\"
       5.250  →          53       0.250  #\"srv-1\" result
    1234.567  ←          66    1230.567  #2 error -32002
    1300.000  end  child_exited; child exit status 3; in 4 messages, 239 bytes; out 3 messages, 156 bytes
";

fn write_tape(dir: &TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path.join(name);
    std::fs::write(&path, text).expect("write tape");
    path
}

#[test]
fn replay_prints_an_aligned_transcript_with_round_trip_times() {
    let dir = record_dir();
    let path = write_tape(&dir, "known.jsonl", KNOWN_TAPE);
    let run = run_forkline(&["replay", arg(&path)], b"");
    assert_eq!(run.status.code(), Some(0), "{}", run.stderr);
    assert_eq!(run.stdout + "\n", KNOWN_TRANSCRIPT);
}

#[test]
fn replay_json_prints_the_records_themselves() {
    let dir = record_dir();
    let path = write_tape(&dir, "known.jsonl", KNOWN_TAPE);
    let run = run_forkline(&["replay", "--json", arg(&path)], b"");
    assert_eq!(run.status.code(), Some(0), "{}", run.stderr);
    assert_eq!(run.stdout + "\n", KNOWN_TAPE);
}

#[test]
fn replay_of_a_real_tape_shows_every_message_and_its_answer_time() {
    let dir = record_dir();
    one_recorded_session(&dir.path);
    let all = tapes(&dir.path);
    let run = run_forkline(&["replay", arg(&all[0])], b"");
    assert_eq!(run.status.code(), Some(0), "{}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(
        lines[0].starts_with("session s1  tcp  server default  peer 127.0.0.1:"),
        "{}",
        run.stdout
    );
    let ping = lines
        .iter()
        .find(|l| l.ends_with("ping #1"))
        .expect("the ping");
    let answer = lines
        .iter()
        .find(|l| l.ends_with("#1 result"))
        .expect("its answer");
    assert!(ping.contains('→') && answer.contains('←'), "{}", run.stdout);
    // The rtt column ends at the same character on every line (the
    // arrows are one character, three bytes) and is filled on the answer
    // only.
    let column = |line: &str, end: usize| -> String {
        let chars: Vec<char> = line.chars().collect();
        chars[end - 10..end]
            .iter()
            .collect::<String>()
            .trim()
            .to_string()
    };
    let header: Vec<char> = lines[4].chars().collect();
    let rtt_end = lines[4].find("rtt ms").unwrap() + "rtt ms".len();
    assert_eq!(header.len(), lines[4].len(), "the header is ASCII");
    assert_eq!(column(ping, rtt_end), "", "{ping}");
    let rtt: f64 = column(answer, rtt_end).parse().expect("an rtt");
    assert!(rtt > 0.0, "{answer}");
    assert!(
        lines
            .last()
            .unwrap()
            .contains("end  client_closed; child exit status 0")
    );
}

#[test]
fn replay_names_the_line_of_a_malformed_tape() {
    let dir = record_dir();
    let known: Vec<&str> = KNOWN_TAPE.lines().collect();
    let cases: [(&str, String, &str); 5] = [
        ("empty", String::new(), "line 1"),
        ("no-start", known[1..].join("\n") + "\n", "line 1"),
        (
            "bad-dir",
            [known[0], r#"{"t":1,"dir":"sideways","msg":{}}"#].join("\n") + "\n",
            "line 2",
        ),
        (
            "garbage",
            [known[0], known[1], "garbage", known[2]].join("\n") + "\n",
            "line 3",
        ),
        (
            "after-end",
            KNOWN_TAPE.to_string() + known[1] + "\n",
            "line 10",
        ),
    ];
    for (name, text, line) in cases {
        let path = write_tape(&dir, name, &text);
        for json in [false, true] {
            let mut args = vec!["replay", arg(&path)];
            if json {
                args.push("--json");
            }
            let run = run_forkline(&args, b"");
            assert_eq!(run.status.code(), Some(2), "{name}: {}", run.stderr);
            assert!(
                run.stderr.contains("malformed tape") && run.stderr.contains(line),
                "{name}: {}",
                run.stderr
            );
            assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
        }
    }
}

#[test]
fn replay_shows_a_tape_cut_short_and_says_it_is_incomplete() {
    let dir = record_dir();
    let known: Vec<&str> = KNOWN_TAPE.lines().collect();
    let no_end = write_tape(&dir, "no-end", &(known[..5].join("\n") + "\n"));
    let run = run_forkline(&["replay", arg(&no_end)], b"");
    assert_eq!(run.status.code(), Some(0), "{}", run.stderr);
    assert!(run.stdout.contains("tools/call #2"), "{}", run.stdout);
    assert!(
        run.stdout
            .lines()
            .last()
            .unwrap()
            .starts_with("tape incomplete: no end record"),
        "{}",
        run.stdout
    );

    let half = &known[5][..known[5].len() / 2];
    let cut = write_tape(&dir, "cut", &(known[..5].join("\n") + "\n" + half));
    let run = run_forkline(&["replay", arg(&cut)], b"");
    assert_eq!(run.status.code(), Some(0), "{}", run.stderr);
    assert!(
        run.stdout.contains("line 6 stops mid-record"),
        "{}",
        run.stdout
    );

    let run = run_forkline(&["replay", "--json", arg(&cut)], b"");
    assert_eq!(run.status.code(), Some(0), "{}", run.stderr);
    assert_eq!(run.stdout + "\n", known[..5].join("\n") + "\n");
    assert!(run.stderr.contains("tape incomplete"), "{}", run.stderr);
}

#[test]
fn replay_of_a_missing_file_names_it() {
    let run = run_forkline(&["replay", "/nonexistent/tape.jsonl"], b"");
    assert_eq!(run.status.code(), Some(1));
    assert!(
        run.stderr.contains("/nonexistent/tape.jsonl"),
        "{}",
        run.stderr
    );
}
