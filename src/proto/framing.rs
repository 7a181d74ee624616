//! Newline framing with a size cap, as a pure push parser.
//!
//! MCP's stdio framing: one message per line, `\n`-terminated, a trailing
//! `\r` tolerated and stripped, empty lines skipped. The session worker
//! reads whatever the fd has and pushes it here; complete lines come back
//! borrowed, straight from the read buffer when a line lies whole in it
//! (the common case, no copy). A line longer than the limit is never held
//! whole: its first bytes are kept (enough to read an `id` from most
//! messages) and the rest is skipped as it streams past, so an endless
//! line costs bounded memory.

/// How much of an oversized line is kept, so its `id` can usually still be
/// read and the sender told which request was refused.
pub const OVERSIZED_HEAD_BYTES: usize = 4096;

/// A partial line buffer this large or larger is given back once empty,
/// so one big message does not pin its memory for the session's life.
const SHRINK_ABOVE_BYTES: usize = 64 * 1024;

/// One complete line.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A message, without its line ending.
    Message(&'a [u8]),
    /// A line of `len` bytes exceeded the limit and was discarded; `head`
    /// is its beginning (at most the limit, at most `OVERSIZED_HEAD_BYTES`).
    Oversized { len: usize, head: &'a [u8] },
}

/// Splits a byte stream into lines of at most `max` bytes (line ending
/// excluded). Holds at most `max + 1` bytes of a partial line.
#[derive(Debug)]
pub struct LineSplitter {
    max: usize,
    /// The partial line so far (or, once oversized, its head).
    line: Vec<u8>,
    /// Bytes of the partial line seen so far, kept or not.
    seen: usize,
    oversized: bool,
}

impl LineSplitter {
    pub fn new(max: usize) -> LineSplitter {
        LineSplitter {
            max,
            line: Vec::new(),
            seen: 0,
            oversized: false,
        }
    }

    /// True when no partial line is pending.
    pub fn is_empty(&self) -> bool {
        self.seen == 0
    }

    /// Feeds `bytes`; calls `on_frame` for every line they complete.
    pub fn push(&mut self, mut bytes: &[u8], mut on_frame: impl FnMut(Frame<'_>)) {
        while let Some(at) = memchr::memchr(b'\n', bytes) {
            let piece = &bytes[..at];
            if self.is_empty() {
                // The whole line is in `bytes`: hand it out in place.
                if let Some(frame) = self.frame_of(piece, piece.len()) {
                    on_frame(frame);
                }
            } else {
                self.keep(piece);
                let line = std::mem::take(&mut self.line);
                if let Some(frame) = self.frame_of(&line, self.seen) {
                    on_frame(frame);
                }
                self.line = line;
                self.reset();
            }
            bytes = &bytes[at + 1..];
        }
        self.keep(bytes);
    }

    /// At end of stream: a last line without a newline still counts (a
    /// peer that forgets the final `\n` is common and costs nothing).
    pub fn finish(&mut self, mut on_frame: impl FnMut(Frame<'_>)) {
        if self.is_empty() {
            return;
        }
        let line = std::mem::take(&mut self.line);
        if let Some(frame) = self.frame_of(&line, self.seen) {
            on_frame(frame);
        }
        self.line = line;
        self.reset();
    }

    /// Appends to the partial line, keeping only what the limit allows.
    fn keep(&mut self, bytes: &[u8]) {
        self.seen += bytes.len();
        if self.oversized {
            return;
        }
        // Room for the message plus a `\r` that will be stripped.
        if self.line.len() + bytes.len() <= self.max.saturating_add(1) {
            self.line.extend_from_slice(bytes);
        } else {
            let head = self.head_len();
            let room = head.saturating_sub(self.line.len());
            self.line.extend_from_slice(&bytes[..room.min(bytes.len())]);
            self.line.truncate(head);
            self.oversized = true;
        }
    }

    /// The frame for a complete line whose kept bytes are `line` and whose
    /// full length was `seen`; `None` for an empty line.
    fn frame_of<'a>(&self, line: &'a [u8], seen: usize) -> Option<Frame<'a>> {
        let oversized = self.oversized;
        let (line, len) = match line.last() {
            Some(b'\r') if !oversized => (&line[..line.len() - 1], seen - 1),
            _ => (line, seen),
        };
        if oversized || len > self.max {
            let head = &line[..line.len().min(self.head_len())];
            return Some(Frame::Oversized { len, head });
        }
        (!line.is_empty()).then_some(Frame::Message(line))
    }

    fn head_len(&self) -> usize {
        self.max.min(OVERSIZED_HEAD_BYTES)
    }

    fn reset(&mut self) {
        self.line.clear();
        if self.line.capacity() >= SHRINK_ABOVE_BYTES {
            self.line = Vec::new();
        }
        self.seen = 0;
        self.oversized = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Eq)]
    enum Owned {
        Message(Vec<u8>),
        Oversized { len: usize, head: Vec<u8> },
    }

    /// Every frame of `data` fed `step` bytes at a time, then finished.
    fn frames(data: &[u8], max: usize, step: usize) -> Vec<Owned> {
        let mut splitter = LineSplitter::new(max);
        let mut out = Vec::new();
        let mut collect = |frame: Frame<'_>| {
            out.push(match frame {
                Frame::Message(m) => Owned::Message(m.to_vec()),
                Frame::Oversized { len, head } => Owned::Oversized {
                    len,
                    head: head.to_vec(),
                },
            })
        };
        for chunk in data.chunks(step.max(1)) {
            splitter.push(chunk, &mut collect);
        }
        splitter.finish(&mut collect);
        assert!(splitter.is_empty());
        out
    }

    fn messages(data: &[u8], max: usize) -> Vec<Vec<u8>> {
        frames(data, max, 3)
            .into_iter()
            .filter_map(|f| match f {
                Owned::Message(m) => Some(m),
                Owned::Oversized { .. } => None,
            })
            .collect()
    }

    #[test]
    fn splits_lines_across_arbitrary_reads() {
        for step in 1..20 {
            assert_eq!(
                frames(b"{\"a\":1}\n{\"b\":2}\n", 100, step),
                vec![
                    Owned::Message(b"{\"a\":1}".to_vec()),
                    Owned::Message(b"{\"b\":2}".to_vec())
                ],
                "step {step}"
            );
        }
    }

    #[test]
    fn strips_crlf_and_skips_empty_lines() {
        assert_eq!(
            messages(b"\n\r\n{}\r\n\n[]\n", 100),
            vec![b"{}".to_vec(), b"[]".to_vec()]
        );
    }

    #[test]
    fn final_line_without_newline_counts() {
        assert_eq!(
            messages(b"{}\n{\"last\":true}", 100),
            vec![b"{}".to_vec(), b"{\"last\":true}".to_vec()]
        );
    }

    #[test]
    fn exactly_the_limit_passes_and_one_over_does_not() {
        let at_limit = [b'x'; 10];
        let mut data = at_limit.to_vec();
        data.extend_from_slice(b"\r\n");
        data.extend_from_slice(&[b'y'; 11]);
        data.extend_from_slice(b"\n{}\n");
        for step in [1, 4, 100] {
            let got = frames(&data, 10, step);
            assert_eq!(
                got[0],
                Owned::Message(at_limit.to_vec()),
                "a CRLF line at the limit fits (step {step})"
            );
            assert_eq!(
                got[1],
                Owned::Oversized {
                    len: 11,
                    head: vec![b'y'; 10]
                },
                "step {step}"
            );
            assert_eq!(got[2], Owned::Message(b"{}".to_vec()), "the stream goes on");
        }
    }

    #[test]
    fn an_endless_line_keeps_only_its_head() {
        let mut splitter = LineSplitter::new(50_000);
        splitter.push(b"{\"id\":7,", |_| panic!("no frame yet"));
        let filler = [b'z'; 1000];
        for _ in 0..100 {
            splitter.push(&filler, |_| panic!("no frame yet"));
            assert!(splitter.line.len() <= 50_001, "holds at most the limit");
        }
        let mut got = None;
        splitter.push(b"\n", |f| {
            if let Frame::Oversized { len, head } = f {
                got = Some((len, head.to_vec()));
            }
        });
        let (len, head) = got.expect("an oversized frame");
        assert_eq!(len, 100_008);
        assert_eq!(head.len(), OVERSIZED_HEAD_BYTES);
        assert!(head.starts_with(b"{\"id\":7,"));
        assert!(
            splitter.line.capacity() < SHRINK_ABOVE_BYTES,
            "memory given back"
        );
    }

    #[test]
    fn invalid_utf8_is_framed_as_bytes() {
        assert_eq!(messages(b"\xff\xfe\n", 100), vec![b"\xff\xfe".to_vec()]);
    }

    #[test]
    fn empty_input_has_no_frames() {
        assert!(frames(b"", 10, 1).is_empty());
        assert!(frames(b"\n\n\r\n", 10, 1).is_empty());
    }
}
