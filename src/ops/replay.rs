//! `forkline replay TAPE`: a tape read back as a person inspects a
//! session — one aligned line per message (time, direction, size, the
//! round-trip time of each answer, then what it was), between a header
//! from the start record and a footer from the end record. `--json`
//! prints the records themselves, checked.
//!
//! The tape is read one record at a time, so a long tape costs the memory
//! of one line plus the requests still awaiting their answer. Columns have
//! fixed widths with the one of varying width last, so lines align
//! without reading ahead. A line that is not a record the recorder writes
//! is an error naming it; a tape that simply stops (forkline was killed,
//! or the disk filled) is shown as far as it goes, with a note saying so.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::path::Path;

use serde_json::Value;

use crate::error::Error;

/// One checked line of a tape.
enum Record {
    Start(Value),
    Message {
        t: u64,
        dir: Dir,
        msg: Value,
        /// The message's bytes on the wire, newline included.
        bytes: usize,
    },
    End(Value),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Dir {
    In,
    Out,
}

impl Dir {
    fn arrow(self) -> &'static str {
        match self {
            Dir::In => "→",
            Dir::Out => "←",
        }
    }
}

/// How a tape ended, once read to the end.
enum Ending {
    /// Its end record came last.
    Whole,
    /// No end record.
    Missing,
    /// The last line stops mid-record (no newline, not JSON).
    CutShort(usize),
}

/// Prints `path` to `out`, as a transcript or (`json`) as its records.
/// Returns the note for a tape that stops short, which the caller shows
/// (on stdout in a transcript, where it is already written; on stderr
/// with `--json`). A malformed tape is `Error::Tape` naming the line.
pub fn replay(path: &Path, json: bool, out: &mut dyn Write) -> Result<Option<String>, Error> {
    let file = File::open(path).map_err(|source| Error::Io {
        what: format!("cannot open tape `{}`", path.display()),
        source,
    })?;
    let mut reader = TapeReader {
        path,
        input: BufReader::new(file),
        line: 0,
        seen_start: false,
        seen_end: false,
        buf: Vec::new(),
    };
    let mut transcript = Transcript::default();
    let ending = loop {
        match reader.next()? {
            Step::Record(record) => {
                let written = if json {
                    out.write_all(&reader.buf)
                        .and_then(|()| out.write_all(b"\n"))
                } else {
                    transcript.print(&record, out)
                };
                if let Err(e) = written {
                    return stdout_closed(e);
                }
            }
            Step::Eof => {
                break if reader.seen_end {
                    Ending::Whole
                } else {
                    Ending::Missing
                };
            }
            Step::CutShort => break Ending::CutShort(reader.line),
        }
    };
    let note = match ending {
        Ending::Whole => None,
        Ending::Missing => Some(
            "tape incomplete: no end record (the session was still running, or forkline was \
             killed or could not write it)"
                .to_string(),
        ),
        Ending::CutShort(line) => Some(format!(
            "tape incomplete: line {line} stops mid-record and there is no end record \
             (forkline was killed or could not write it)"
        )),
    };
    if !json {
        if let Some(note) = &note {
            if let Err(e) = writeln!(out, "{note}") {
                return stdout_closed(e);
            }
        }
    }
    if let Err(e) = out.flush() {
        return stdout_closed(e);
    }
    Ok(if json { note } else { None })
}

/// A reader that went away (`replay … | head`) is not a failure.
fn stdout_closed(e: io::Error) -> Result<Option<String>, Error> {
    if e.kind() == io::ErrorKind::BrokenPipe {
        Ok(None)
    } else {
        Err(Error::Io {
            what: "cannot write the transcript".into(),
            source: e,
        })
    }
}

enum Step {
    Record(Record),
    Eof,
    /// The last line has no newline and does not parse.
    CutShort,
}

struct TapeReader<'a, R> {
    path: &'a Path,
    input: R,
    /// Number of the line in `buf`, from 1.
    line: usize,
    seen_start: bool,
    seen_end: bool,
    /// The current line, without its newline.
    buf: Vec<u8>,
}

impl<R: BufRead> TapeReader<'_, R> {
    fn next(&mut self) -> Result<Step, Error> {
        self.buf.clear();
        let n = self
            .input
            .read_until(b'\n', &mut self.buf)
            .map_err(|source| Error::Io {
                what: format!("cannot read tape `{}`", self.path.display()),
                source,
            })?;
        if n == 0 {
            if self.line == 0 {
                return Err(self.malformed(1, "the tape is empty".into()));
            }
            return Ok(Step::Eof);
        }
        self.line += 1;
        let terminated = self.buf.last() == Some(&b'\n');
        if terminated {
            self.buf.pop();
        }
        let value: Value = match serde_json::from_slice(&self.buf) {
            Ok(value) => value,
            // What a writer that was stopped mid-line leaves behind.
            Err(_) if !terminated && self.seen_start && !self.seen_end => {
                return Ok(Step::CutShort);
            }
            Err(e) => return Err(self.malformed(self.line, format!("not JSON: {e}"))),
        };
        let record = self.check(value)?;
        Ok(Step::Record(record))
    }

    fn check(&mut self, value: Value) -> Result<Record, Error> {
        let line = self.line;
        let Value::Object(fields) = &value else {
            return Err(self.malformed(line, "a record must be a JSON object".into()));
        };
        if self.seen_end {
            return Err(self.malformed(line, "a record after the end record".into()));
        }
        let kind = fields.get("type").and_then(Value::as_str);
        if !self.seen_start {
            if kind != Some("start") {
                return Err(self.malformed(
                    line,
                    "the first record must be the start record (\"type\":\"start\")".into(),
                ));
            }
            self.seen_start = true;
            return Ok(Record::Start(value));
        }
        match kind {
            Some("end") => {
                self.seen_end = true;
                Ok(Record::End(value))
            }
            Some("start") => Err(self.malformed(line, "a second start record".into())),
            Some(other) => Err(self.malformed(line, format!("unknown record type `{other}`"))),
            None => {
                let t = fields.get("t").and_then(Value::as_u64).ok_or_else(|| {
                    self.malformed(
                        line,
                        "a message record needs `t`, microseconds as a whole number".into(),
                    )
                })?;
                let dir = match fields.get("dir").and_then(Value::as_str) {
                    Some("in") => Dir::In,
                    Some("out") => Dir::Out,
                    _ => {
                        return Err(self.malformed(
                            line,
                            "a message record needs `dir`, \"in\" or \"out\"".into(),
                        ));
                    }
                };
                let msg = fields
                    .get("msg")
                    .cloned()
                    .ok_or_else(|| self.malformed(line, "a message record needs `msg`".into()))?;
                let bytes = raw_msg(&self.buf).map_or_else(
                    || serde_json::to_string(&msg).map_or(0, |s| s.len()),
                    <[u8]>::len,
                ) + 1;
                Ok(Record::Message { t, dir, msg, bytes })
            }
        }
    }

    fn malformed(&self, line: usize, reason: String) -> Error {
        Error::Tape {
            path: self.path.display().to_string(),
            line,
            reason,
        }
    }
}

/// The transcript's state: requests awaiting their answer, by the
/// direction they went and their id as JSON text.
#[derive(Default)]
struct Transcript {
    pending: HashMap<(Dir, String), u64>,
}

impl Transcript {
    fn print(&mut self, record: &Record, out: &mut dyn Write) -> io::Result<()> {
        match record {
            Record::Start(start) => {
                let text = |key: &str| match start.get(key) {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Null) | None => "-".into(),
                    Some(other) => other.to_string(),
                };
                let command = match start.get("command") {
                    Some(Value::Array(words)) => words
                        .iter()
                        .map(|w| w.as_str().map_or_else(|| w.to_string(), str::to_string))
                        .collect::<Vec<_>>()
                        .join(" "),
                    _ => text("command"),
                };
                let server = match start.get("server") {
                    Some(Value::String(name)) => format!("  server {name}"),
                    _ => String::new(),
                };
                writeln!(
                    out,
                    "session {}  {}{server}  peer {}  pid {}  started {}",
                    text("session"),
                    text("transport"),
                    text("peer"),
                    text("pid"),
                    text("time")
                )?;
                writeln!(out, "command {command}")?;
                writeln!(out, "tape    {}", text("tape"))?;
                writeln!(out)?;
                writeln!(
                    out,
                    "{:>12}  {:<3}  {:>8}  {:>10}  message",
                    "time ms", "dir", "bytes", "rtt ms"
                )
            }
            Record::Message { t, dir, msg, bytes } => {
                let rtt = self.book(*t, *dir, msg);
                let rtt = rtt.map_or_else(String::new, millis);
                writeln!(
                    out,
                    "{:>12}  {:<3}  {bytes:>8}  {rtt:>10}  {}",
                    millis(*t),
                    dir.arrow(),
                    label(msg)
                )
            }
            Record::End(end) => {
                let t = end.get("t").and_then(Value::as_u64).unwrap_or(0);
                let reason = end.get("reason").and_then(Value::as_str).unwrap_or("-");
                let child = match end.get("exit") {
                    Some(Value::Object(exit)) => exit
                        .get("text")
                        .and_then(Value::as_str)
                        .unwrap_or("-")
                        .to_string(),
                    _ => "never started".into(),
                };
                let count = |side: &str, what: &str| {
                    end.get(side)
                        .and_then(|s| s.get(what))
                        .and_then(Value::as_u64)
                        .unwrap_or(0)
                };
                let unanswered = self.pending.len();
                writeln!(
                    out,
                    "{:>12}  end  {reason}; child {child}; in {} messages, {} bytes; out {} \
                     messages, {} bytes{}",
                    millis(t),
                    count("in", "messages"),
                    count("in", "bytes"),
                    count("out", "messages"),
                    count("out", "bytes"),
                    match unanswered {
                        0 => String::new(),
                        n => format!("; {n} requests never answered"),
                    }
                )?;
                if end.get("complete") == Some(&Value::Bool(false)) {
                    let error = end
                        .get("error")
                        .and_then(Value::as_str)
                        .unwrap_or("unknown");
                    writeln!(
                        out,
                        "tape incomplete: recording stopped when a write failed: {error}"
                    )?;
                }
                Ok(())
            }
        }
    }

    /// Books the requests in `msg` and matches its answers; returns the
    /// round-trip time (µs) of the answer it carries (of a batch, the
    /// longest).
    fn book(&mut self, t: u64, dir: Dir, msg: &Value) -> Option<u64> {
        let items: &[Value] = match msg {
            Value::Array(items) => items,
            other => std::slice::from_ref(other),
        };
        let answerer = match dir {
            Dir::In => Dir::Out,
            Dir::Out => Dir::In,
        };
        let mut rtt: Option<u64> = None;
        for item in items {
            let Some(id) = item.get("id") else { continue };
            let key = id.to_string();
            if item.get("method").is_some() {
                self.pending.insert((dir, key), t);
            } else if let Some(asked) = self.pending.remove(&(answerer, key)) {
                let this = t.saturating_sub(asked);
                rtt = Some(rtt.map_or(this, |r| r.max(this)));
            }
        }
        rtt
    }
}

/// The message as it went out, from a record as the recorder writes it
/// (`{"t":N,"dir":"in","msg":` + the line + `}`); `None` for a record
/// written another way, whose message is then measured re-serialised.
fn raw_msg(record: &[u8]) -> Option<&[u8]> {
    let rest = record.strip_prefix(b"{\"t\":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let rest = &rest[digits..];
    let rest = rest
        .strip_prefix(b",\"dir\":\"in\",\"msg\":")
        .or_else(|| rest.strip_prefix(b",\"dir\":\"out\",\"msg\":"))?;
    rest.strip_suffix(b"}")
}

/// Microseconds as milliseconds with three decimals.
fn millis(us: u64) -> String {
    format!("{}.{:03}", us / 1000, us % 1000)
}

/// What a message is: `tools/call #1`, `notifications/initialized`,
/// `#1 result`, `#1 error -32002`, `batch of 2: …`.
fn label(msg: &Value) -> String {
    match msg {
        Value::Array(items) => format!(
            "batch of {}: {}",
            items.len(),
            items.iter().map(item_label).collect::<Vec<_>>().join(", ")
        ),
        other => item_label(other),
    }
}

fn item_label(item: &Value) -> String {
    let id = item.get("id").map(|id| format!("#{id}"));
    if let Some(method) = item.get("method") {
        let method = method
            .as_str()
            .map_or_else(|| method.to_string(), str::to_string);
        return match id {
            Some(id) => format!("{method} {id}"),
            None => method,
        };
    }
    let id = id.unwrap_or_else(|| "#null".into());
    if item.get("result").is_some() {
        format!("{id} result")
    } else if let Some(error) = item.get("error") {
        match error.get("code") {
            Some(code) => format!("{id} error {code}"),
            None => format!("{id} error"),
        }
    } else {
        "(not JSON-RPC)".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn labels_say_what_a_message_is() {
        assert_eq!(
            label(&json!({"jsonrpc":"2.0","id":1,"method":"tools/call"})),
            "tools/call #1"
        );
        assert_eq!(
            label(&json!({"jsonrpc":"2.0","method":"notifications/initialized"})),
            "notifications/initialized"
        );
        assert_eq!(
            label(&json!({"jsonrpc":"2.0","id":"a","result":{}})),
            "#\"a\" result"
        );
        assert_eq!(
            label(&json!({"jsonrpc":"2.0","id":null,"error":{"code":-32700}})),
            "#null error -32700"
        );
        assert_eq!(
            label(&json!([{"jsonrpc":"2.0","id":1,"method":"a"},{"jsonrpc":"2.0","method":"b"}])),
            "batch of 2: a #1, b"
        );
    }

    #[test]
    fn round_trips_match_answers_to_requests_of_the_other_direction() {
        let mut transcript = Transcript::default();
        let request = json!({"jsonrpc":"2.0","id":1,"method":"x"});
        let answer = json!({"jsonrpc":"2.0","id":1,"result":{}});
        assert_eq!(transcript.book(100, Dir::In, &request), None);
        // The server's own request with the same id is another exchange.
        assert_eq!(transcript.book(150, Dir::Out, &request), None);
        assert_eq!(transcript.book(400, Dir::Out, &answer), Some(300));
        assert_eq!(transcript.book(500, Dir::In, &answer), Some(350));
        assert_eq!(
            transcript.book(600, Dir::Out, &answer),
            None,
            "answered once"
        );
        assert_eq!(millis(1_234_567), "1234.567");
        assert_eq!(millis(5), "0.005");
    }

    #[test]
    fn sizes_are_those_of_the_line_as_it_went_out() {
        let record = br#"{"t":12,"dir":"out","msg":{ "b":1,"a":"\u00e9" }}"#;
        assert_eq!(raw_msg(record), Some(&br#"{ "b":1,"a":"\u00e9" }"#[..]));
        assert_eq!(raw_msg(br#"{"dir":"in","t":1,"msg":{}}"#), None);
    }
}
