//! `--max-inflight` (issue 10, defect 2): a session's client can make the
//! proxy hold at most that many requests awaiting their answer. The next
//! request is refused with -32005 and its own id and never reaches the
//! child; notifications still do, and the session goes on. Together with
//! the 1 KiB id limit (tests/serve_errors.rs,
//! `a_request_id_over_1_kib_is_refused_and_never_reaches_the_child`) and
//! backpressure, this bounds the memory a client can make forkline hold
//! whatever it sends: the second test pushes past the limit with big
//! requests and long ids and measures forkline's peak memory.
//!
//! The last test shows that an answer frees its request's place even when
//! the server writes the id differently from the request (the same value
//! by JSON-RPC's rule).
//!
//! (The bound for a flooding child whose client never reads is
//! tests/lifecycle.rs,
//! `a_flood_the_client_never_reads_is_held_back_and_does_not_slow_others`.)

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

#[test]
fn max_inflight_refuses_the_next_request_with_its_id_and_never_forwards_it() {
    let forkline = Forkline::serve_tcp(&["--max-inflight", "4"], &fake_server(&["--trace"]));
    let mut guard = StrayGuard::new();
    let mut client = forkline.connect();
    let env = client.fake_env(0);
    guard.watch_env(&env);

    // Four requests the child holds unanswered: the limit.
    for id in 1..=4 {
        client.request(json!(id), "fake/hold", json!({"n": id}));
    }
    for id in 1..=4 {
        forkline.wait_for_log(&format!("fake: received fake/hold id={id}"));
    }

    // The fifth and later: refused at once, each with its own id.
    for id in 5..=7 {
        client.request(json!(id), "fake/hold", json!({"n": id}));
        let message = assert_error(&client.recv(), -32005, &json!(id));
        assert!(
            message.contains("--max-inflight") && message.contains('4'),
            "the refusal does not name the limit and its figure: {message}"
        );
    }
    // A string id too, echoed as it was sent.
    client.request(json!("over-\u{e9}"), "fake/hold", json!({}));
    assert_error(&client.recv(), -32005, &json!("over-\u{e9}"));

    // Notifications are not requests: they still reach the child. The fake
    // traces what it reads in order, so once it traced this notification,
    // a refused request that had reached it would have been traced too.
    client.send(r#"{"jsonrpc":"2.0","method":"notifications/roots/list_changed"}"#);
    forkline.wait_for_log("fake: received notification notifications/roots/list_changed");
    let log = forkline.stderr_text();
    for refused in ["id=5", "id=6", "id=7", "id=\"over-"] {
        assert!(
            !log.contains(&format!("fake: received fake/hold {refused}")),
            "a refused request ({refused}) reached the child; log:\n{log}"
        );
    }

    // The session goes on: the held four are answered, in order ...
    client.send(r#"{"jsonrpc":"2.0","method":"fake/release"}"#);
    for id in 1..=4 {
        assert_echo(&client.recv(), &json!(id), "fake/hold");
    }
    // ... and that frees all four places: the refused requests were never
    // booked, so four new ones fit again and the fifth does not.
    for id in 11..=14 {
        client.request(json!(id), "fake/hold", json!({}));
    }
    forkline.wait_for_log("fake: received fake/hold id=14");
    client.request(json!(15), "fake/hold", json!({}));
    assert_error(&client.recv(), -32005, &json!(15));
    client.send(r#"{"jsonrpc":"2.0","method":"fake/release"}"#);
    for id in 11..=14 {
        assert_echo(&client.recv(), &json!(id), "fake/hold");
    }
    assert_echo(
        &client.call(json!(16), "after", json!({})),
        &json!(16),
        "after",
    );
    assert!(pid_alive(env.pid), "the child died");
}

/// Requests sent past the default `--max-inflight` (256).
const REQUESTS: usize = 300;
const DEFAULT_MAX_INFLIGHT: usize = 256;
/// A string id of 1000 characters: 1002 bytes of JSON with its quotes,
/// under the 1 KiB limit.
const ID_CHARS: usize = 1000;
/// Each request's padding: big, but well under the 4 MiB message limit.
const PAD_BYTES: usize = 1_000_000;
/// What forkline's peak memory may grow by. What it must hold is 256 ids
/// (256 KiB) and a message or two in its buffers; the old engine, which
/// kept every request it had not been answered, grew by 311 MiB.
const GROWTH_BOUND: u64 = 40 * 1024 * 1024;

fn long_id(n: usize) -> String {
    let head = format!("req-{n:04}-");
    format!("{head}{}", "i".repeat(ID_CHARS - head.len()))
}

#[test]
fn requests_past_max_inflight_cost_no_memory_however_big() {
    // `cat` reads everything and answers nothing: every request forwarded
    // stays in flight for the session's life.
    let forkline = Forkline::serve_tcp(
        &["--shutdown-grace", "0.2"],
        &["sh".into(), "-c".into(), "cat > /dev/null".into()],
    );
    let stream = TcpStream::connect(forkline.tcp_addr()).expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    forkline.wait_for_log("session opened");
    let pid = forkline.pid();
    let child = children_of(pid)
        .into_iter()
        .map(|(p, _)| p)
        .find(|p| cmdline(*p).contains("cat > /dev/null"))
        .expect("the `sh -c cat` child");
    let before = peak_rss_bytes(pid);

    let mut writer = stream.try_clone().expect("clone");
    let sender = std::thread::spawn(move || {
        let pad = vec![b'p'; PAD_BYTES];
        for n in 1..=REQUESTS {
            let head = format!(
                r#"{{"jsonrpc":"2.0","id":"{}","method":"big","params":{{"pad":""#,
                long_id(n)
            );
            writer.write_all(head.as_bytes())?;
            writer.write_all(&pad)?;
            writer.write_all(b"\"}}\n")?;
        }
        writer.flush()
    });

    // Read all the while: forkline's refusals must never have to wait for
    // room (a client that does not read is backpressure's business).
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let deadline = Instant::now() + PATIENCE;
    let mut refused = Vec::new();
    while refused.len() < REQUESTS - DEFAULT_MAX_INFLIGHT {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "{} of {} refusals within {PATIENCE:?}; log:\n{}",
            refused.len(),
            REQUESTS - DEFAULT_MAX_INFLIGHT,
            forkline.stderr_text()
        );
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .expect("read timeout");
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => panic!(
                "forkline closed the session; log:\n{}",
                forkline.stderr_text()
            ),
            Ok(_) => {
                let msg: Value = serde_json::from_str(&line).expect("JSON from forkline");
                refused.push(msg);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => continue,
            Err(e) => panic!("reading from forkline: {e}"),
        }
    }
    sender
        .join()
        .expect("sender thread")
        .expect("forkline took every request");

    // The first 256 went to the child; each later one was refused, in
    // order, with its own (long) id.
    for (i, msg) in refused.iter().enumerate() {
        let n = DEFAULT_MAX_INFLIGHT + 1 + i;
        assert_error(msg, -32005, &json!(long_id(n)));
    }
    let peak = peak_rss_bytes(pid);
    assert!(
        peak.saturating_sub(before) < GROWTH_BOUND,
        "forkline's peak memory grew by {} MiB ({} -> {} MiB) for {REQUESTS} requests of {} KiB",
        (peak - before) >> 20,
        before >> 20,
        peak >> 20,
        PAD_BYTES >> 10
    );

    // The session is still there, still at its limit.
    let mut client = Client::from_tcp_stream(stream);
    client.request(json!("one-more"), "small", json!({}));
    assert_error(&client.recv(), -32005, &json!("one-more"));

    // Closing ends it: the 256 never answered are given up after the grace
    // and the child is stopped.
    drop(client);
    drop(reader);
    assert_all_gone(&[child], "the child after its client closed");
    wait_for_log_word(&forkline, "reason=client_closed");
}

/// JSON-RPC 2.0 (section 5): a response's id "MUST be the same as the
/// value of the id member in the Request Object" -- the same value, not
/// the same bytes. A server that parses and re-serialises (every SDK does)
/// answers `"req\/1"` as `"req/1"` and `"\u0061"` as `"a"`. Such an
/// answer must still free its request's place, or a session leaks one
/// place per request until every request is refused.
#[test]
fn an_answer_whose_id_is_written_differently_still_frees_its_place() {
    let forkline = Forkline::serve_tcp(&["--max-inflight", "2"], &fake_server(&[]));
    let mut guard = StrayGuard::new();
    let mut client = forkline.connect();
    let env = client.fake_env(0);
    guard.watch_env(&env);
    for (raw_id, value) in [
        (r#""req\/1""#, "req/1"),
        (r#""\u0061""#, "a"),
        (r#""req\/2""#, "req/2"),
    ] {
        client.send(&format!(
            r#"{{"jsonrpc":"2.0","id":{raw_id},"method":"escaped","params":{{}}}}"#
        ));
        assert_echo(&client.recv(), &json!(value), "escaped");
    }
    // All three were answered: nothing is in flight.
    let reply = client.call(json!(4), "after", json!({}));
    assert!(
        reply.get("error").is_none(),
        "a request refused with nothing in flight (answers with re-encoded ids were not booked): {reply}"
    );
    assert_echo(&reply, &json!(4), "after");
}
