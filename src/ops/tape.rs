//! Session tapes: `--record DIR` writes one JSON Lines file per session —
//! a `start` record, one record per message passed on, an `end` record.
//!
//! A tape is a [`Tap`], so it runs on its session's own worker thread and
//! costs only that session anything: no lock, no channel, no thread of
//! its own. Records go into a per-session buffer that is written out when
//! the worker is about to wait for I/O (`Tap::flush`), when it passes
//! `FLUSH_AT`, and at the end. So a busy session pays one `write(2)` per
//! turn of its loop, not one per message, and an idle one holds nothing
//! in memory and leaves its tape current on disk for anyone tailing it.
//! The end record is written and flushed before the worker moves on, and
//! shutdown waits for every worker, so a tape is whole after SIGTERM too.
//! There is no `fsync`: a tape survives forkline's death, not the host's.
//!
//! Messages are embedded as the bytes that went out: the relay only passes
//! on lines that are valid JSON (or its own error objects), and a line
//! holds no raw newline, so `{"t":…,"dir":…,"msg":` + line + `}` is one
//! valid JSON Lines record without building a value tree.
//!
//! A write that fails (disk full, a file-size limit, an I/O error) stops
//! the recording, never the session: the file is cut back to its last
//! whole record, one warning says why, and the end record (if it still
//! fits — the cut often makes room) says `"complete":false` with the error.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use log::warn;
use serde_json::json;

use crate::error::Error;
use crate::logging::Timestamp;
use crate::session::rules::{Direction, Tap};
use crate::session::run::{Start, Summary};
use crate::session::table::SessionId;

/// Buffered bytes past which a tape writes out without waiting for its
/// session to go idle. Small, because thousands of sessions may record.
const FLUSH_AT: usize = 32 * 1024;

/// A buffer this large is given back when it empties, so a burst does not
/// pin memory for the session's life.
const KEEP_CAPACITY: usize = 4 * 1024;

/// Where tapes go, and the name part shared by one forkline process.
/// Cheap to clone; opening a tape is left to the session's own worker.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorder {
    dir: PathBuf,
    /// 48 random bits, as 12 hex digits, drawn once per process: session
    /// ids restart at `s1` with every run, this does not.
    run: String,
}

impl Recorder {
    /// Creates `dir` if need be and checks that a file can be created in
    /// it. Errors name `--record`, so an unusable directory is a config
    /// error at start (exit 2), not a warning per session later.
    pub fn open(dir: &Path) -> Result<Recorder, Error> {
        let unusable = |e: io::Error| {
            Error::config("--record", format!("cannot use `{}`: {e}", dir.display()))
        };
        std::fs::create_dir_all(dir).map_err(unusable)?;
        // Past RLIMIT_FSIZE a write raises SIGXFSZ, whose default action
        // kills the process; with a handler installed it fails with EFBIG
        // instead, which a tape survives. A handler (unlike SIG_IGN) is
        // reset in children at exec.
        signal_hook::flag::register(
            libc::SIGXFSZ,
            std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
        )
        .map_err(unusable)?;
        let run = crate::http::security::random_hex().map_err(unusable)?[..12].to_string();
        let probe = dir.join(format!(".forkline-probe-{run}"));
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&probe)
            .map_err(unusable)?;
        let _ = std::fs::remove_file(&probe);
        Ok(Recorder {
            dir: dir.to_path_buf(),
            run,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A tape for session `id` of `server` (`serve`'s server name; `None`
    /// for `stdio`); its file is created when the session starts.
    /// `transport` is `tcp`, `unix`, `http`, `http+sse` or `stdio`.
    pub fn tape(
        &self,
        id: SessionId,
        transport: &'static str,
        server: Option<&str>,
    ) -> Box<dyn Tap + Send> {
        Box::new(Tape {
            dir: self.dir.clone(),
            run: self.run.clone(),
            id,
            transport,
            server: server.map(str::to_string),
            state: State::NotStarted,
        })
    }
}

/// The name of a tape, without `.jsonl`: `20261124T085146Z-3f9a1c07b2e4-s1`
/// — the session's start (UTC, to the second), the process's random run
/// id, the session id. Unique across restarts and nodes, and `ls` lists a
/// directory's tapes roughly in the order their sessions began.
pub fn tape_name(start: &Start<'_>, run: &str) -> String {
    format!("{}-{run}-{}", Timestamp(start.wall).compact(), start.id)
}

/// One session's tape.
struct Tape {
    dir: PathBuf,
    run: String,
    id: SessionId,
    transport: &'static str,
    server: Option<String>,
    state: State,
}

enum State {
    NotStarted,
    Recording(Writer),
    /// The file could not be created, or the session has ended.
    Off,
}

/// The open file and what is buffered for it.
struct Writer {
    file: File,
    path: PathBuf,
    started: Instant,
    buf: Vec<u8>,
    /// Bytes on disk, all of them whole records.
    written: u64,
    /// Why recording stopped, once a write failed.
    failed: Option<String>,
}

impl Tap for Tape {
    fn start(&mut self, start: &Start<'_>) {
        let name = tape_name(start, &self.run);
        let path = self.dir.join(format!("{name}.jsonl"));
        // `create_new`: a tape is never overwritten, whatever the names.
        // Append mode: after a failed write cuts the file back, the next
        // write lands at the new end, not past it.
        let file = match OpenOptions::new().append(true).create_new(true).open(&path) {
            Ok(file) => file,
            Err(e) => {
                warn!(
                    "[{}] cannot create tape {}: {e}; this session is not recorded",
                    self.id,
                    path.display()
                );
                self.state = State::Off;
                return;
            }
        };
        let command = start.command.shown();
        // By hand rather than through a map, so `type` comes first and a
        // person reading the file sees the fields in a sensible order.
        let server = self
            .server
            .as_ref()
            .map(|name| format!(",\"server\":{}", json!(name)))
            .unwrap_or_default();
        let record = format!(
            "{{\"type\":\"start\",\"time\":{},\"session\":{},\"tape\":{},\"peer\":{},\
             \"transport\":{}{server},\"command\":{},\"pid\":{}}}\n",
            json!(Timestamp(start.wall).to_string()),
            json!(self.id.to_string()),
            json!(name),
            json!(start.peer),
            json!(self.transport),
            json!(command),
            json!(start.pid),
        );
        let mut writer = Writer {
            file,
            path,
            started: start.started,
            buf: Vec::new(),
            written: 0,
            failed: None,
        };
        writer.record(&[record.as_bytes()]);
        self.state = State::Recording(writer);
    }

    fn message(&mut self, direction: Direction, line: &[u8]) {
        let State::Recording(writer) = &mut self.state else {
            return;
        };
        if writer.failed.is_some() {
            return;
        }
        let t = writer.started.elapsed().as_micros();
        let head = match direction {
            Direction::In => format!("{{\"t\":{t},\"dir\":\"in\",\"msg\":"),
            Direction::Out => format!("{{\"t\":{t},\"dir\":\"out\",\"msg\":"),
        };
        writer.record(&[head.as_bytes(), line, b"}\n"]);
        warn_if_failed(self.id, writer);
    }

    fn flush(&mut self) {
        let State::Recording(writer) = &mut self.state else {
            return;
        };
        if writer.failed.is_some() || writer.buf.is_empty() {
            return;
        }
        writer.write_out();
        warn_if_failed(self.id, writer);
    }

    fn end(&mut self, summary: &Summary) {
        let State::Recording(mut writer) = std::mem::replace(&mut self.state, State::Off) else {
            return;
        };
        if writer.failed.is_none() {
            writer.write_out();
            warn_if_failed(self.id, &writer);
        }
        let failed_before = writer.failed.is_some();
        let exit = summary.exit.map(|exit| {
            use std::os::unix::process::ExitStatusExt;
            format!(
                "{{\"code\":{},\"signal\":{},\"forced\":{},\"text\":{}}}",
                json!(exit.status.code()),
                json!(exit.status.signal()),
                exit.forced,
                json!(exit.to_string())
            )
        });
        let counters = summary.counters;
        let outcome = match &writer.failed {
            None => "\"complete\":true".to_string(),
            Some(error) => format!("\"complete\":false,\"error\":{}", json!(error)),
        };
        let record = format!(
            "{{\"type\":\"end\",\"t\":{},\"reason\":\"{}\",\"exit\":{},\
             \"in\":{{\"messages\":{},\"bytes\":{}}},\"out\":{{\"messages\":{},\"bytes\":{}}},{outcome}}}\n",
            writer.started.elapsed().as_micros(),
            summary.reason.as_str(),
            exit.as_deref().unwrap_or("null"),
            counters.messages_in,
            counters.bytes_in,
            counters.messages_out,
            counters.bytes_out,
        );
        // Written even after a failure: cutting the file back to its last
        // whole record may have made room for this one.
        writer.failed = None;
        writer.record(&[record.as_bytes()]);
        writer.write_out();
        match &writer.failed {
            Some(e) if failed_before => log::debug!(
                "[{}] tape {}: its end record could not be written either: {e}",
                self.id,
                writer.path.display()
            ),
            Some(_) => warn_if_failed(self.id, &writer),
            None => {}
        }
    }
}

/// The one warning of a tape whose writes failed: callers stop writing
/// once `failed` is set, so it comes once per tape.
fn warn_if_failed(id: SessionId, writer: &Writer) {
    if let Some(e) = &writer.failed {
        warn!(
            "[{id}] tape {} is incomplete: write failed: {e}; recording stops, the session goes on",
            writer.path.display()
        );
    }
}

impl Writer {
    /// Adds one whole record (`parts` concatenated); one too large for the
    /// buffer goes straight to the file, never copied.
    fn record(&mut self, parts: &[&[u8]]) {
        if self.failed.is_some() {
            return;
        }
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if self.buf.len() + len > FLUSH_AT {
            self.write_out();
        }
        if len > FLUSH_AT {
            let result = parts.iter().try_for_each(|p| self.file.write_all(p));
            self.settle(result, len);
        } else {
            for part in parts {
                self.buf.extend_from_slice(part);
            }
        }
    }

    /// Writes the buffer out and empties it.
    fn write_out(&mut self) {
        if self.buf.is_empty() || self.failed.is_some() {
            return;
        }
        let result = self.file.write_all(&self.buf);
        let len = self.buf.len();
        self.settle(result, len);
        self.buf.clear();
        if self.buf.capacity() > KEEP_CAPACITY {
            self.buf = Vec::new();
        }
    }

    /// Books a write of `len` bytes; after a failure cuts the file back to
    /// its last whole record, so what is on disk stays valid JSON Lines.
    fn settle(&mut self, result: io::Result<()>, len: usize) {
        match result {
            Ok(()) => self.written += len as u64,
            Err(e) => {
                // Shrinking needs no space and is allowed under any
                // file-size limit. If it fails too, the last line may be
                // cut short; replay says so.
                let _ = self.file.set_len(self.written);
                self.failed = Some(e.to_string());
                self.buf = Vec::new();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ChildCommand;
    use crate::session::relay::EndReason;
    use crate::session::rules::Counters;
    use std::time::SystemTime;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("forkline-tape-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn summary(counters: Counters) -> Summary {
        Summary {
            reason: EndReason::ClientClosed,
            exit: None,
            counters,
        }
    }

    #[test]
    fn a_tape_holds_start_messages_as_they_went_and_end() {
        let dir = temp_dir("whole");
        let recorder = Recorder::open(&dir.join("nested")).expect("recorder");
        let command = ChildCommand::new("srv", vec!["a b".into()]);
        let mut tape = recorder.tape(SessionId(4), "tcp", Some("default"));
        tape.start(&Start {
            id: SessionId(4),
            peer: "127.0.0.1:9",
            command: &command,
            pid: Some(77),
            wall: SystemTime::now(),
            started: Instant::now(),
        });
        let mut counters = Counters::default();
        for (direction, line) in [
            (Direction::In, &br#"{"id":1, "method":"x"}"#[..]),
            (Direction::Out, br#"{"id":1,"result":"\u00e9"}"#),
        ] {
            counters.message(direction, line);
            tape.message(direction, line);
        }
        let big = format!(r#"{{"method":"n","params":"{}"}}"#, "y".repeat(FLUSH_AT));
        counters.message(Direction::Out, big.as_bytes());
        tape.message(Direction::Out, big.as_bytes());
        tape.flush();
        tape.end(&summary(counters));

        let files: Vec<PathBuf> = std::fs::read_dir(dir.join("nested"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(
            files.len(),
            1,
            "only the tape (the probe is gone): {files:?}"
        );
        let text = std::fs::read_to_string(&files[0]).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5);
        let start: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(start["type"], "start");
        assert_eq!(start["command"], json!(["srv", "a b"]));
        assert_eq!(start["server"], "default");
        assert_eq!(start["pid"], 77);
        assert!(start["tape"].as_str().unwrap().ends_with("-s4"));
        assert!(lines[1].contains(r#","dir":"in","msg":{"id":1, "method":"x"}}"#));
        assert!(lines[2].ends_with(r#","dir":"out","msg":{"id":1,"result":"\u00e9"}}"#));
        assert!(lines[3].len() > FLUSH_AT, "the big one went straight out");
        let end: serde_json::Value = serde_json::from_str(lines[4]).unwrap();
        assert_eq!(end["type"], "end");
        assert_eq!(end["exit"], serde_json::Value::Null);
        assert_eq!(end["in"]["bytes"], counters.bytes_in);
        assert_eq!(end["out"]["messages"], 2);
        assert_eq!(end["complete"], true);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_failed_write_stops_the_recording_once() {
        let mut writer = Writer {
            file: OpenOptions::new().append(true).open("/dev/full").unwrap(),
            path: "/dev/full".into(),
            started: Instant::now(),
            buf: Vec::new(),
            written: 0,
            failed: None,
        };
        writer.record(&[b"{}\n"]);
        assert!(writer.failed.is_none(), "buffered, not written yet");
        writer.write_out();
        let error = writer.failed.clone().expect("ENOSPC");
        assert!(error.contains("No space"), "{error}");
        writer.record(&[b"{}\n"]);
        assert!(writer.buf.is_empty(), "nothing is buffered after a failure");
        assert_eq!(writer.written, 0);
    }

    #[test]
    fn an_unusable_directory_names_the_flag() {
        let dir = temp_dir("unusable");
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("file");
        std::fs::write(&file, b"x").unwrap();
        let err = Recorder::open(&file).expect_err("a file is no directory");
        assert_eq!(err.exit_code(), 2);
        assert!(
            err.to_string()
                .starts_with("invalid --record: cannot use `"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
