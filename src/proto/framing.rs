//! Newline framing with a size cap, as pure functions over `BufRead`.
//!
//! MCP's stdio framing: one message per line, `\n`-terminated, a trailing
//! `\r` tolerated and stripped, empty lines skipped. A line longer than the
//! limit is never held whole: we keep its first bytes (enough to read an
//! `id` from most messages) and skip the rest as it streams past, so an
//! endless line costs bounded memory.

use std::io::{self, BufRead};

/// How much of an oversized line is kept, so its `id` can usually still be
/// read and the sender told which request was refused.
pub const OVERSIZED_HEAD_BYTES: usize = 4096;

/// What `read_frame` found.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A complete message is in the caller's buffer, without `\r\n`.
    Message,
    /// A line of `len` bytes exceeded the limit and was discarded; the
    /// caller's buffer holds its first bytes (at most the limit, at most
    /// `OVERSIZED_HEAD_BYTES`).
    Oversized { len: usize },
    /// The stream ended; no partial message is pending.
    Eof,
}

/// Reads the next non-empty line into `line` (cleared first). Blocks.
///
/// `max` bounds the message without its line ending. A final line without
/// a newline before EOF still counts as a message: being lenient costs
/// nothing and a peer that forgets the last `\n` is common.
pub fn read_frame(reader: &mut impl BufRead, max: usize, line: &mut Vec<u8>) -> io::Result<Frame> {
    line.clear();
    // Room for the message plus a `\r` that will be stripped.
    let keep = max.saturating_add(1);
    let head = max.min(OVERSIZED_HEAD_BYTES);
    let mut total = 0usize;
    let mut oversized = false;
    loop {
        let buf = match reader.fill_buf() {
            Ok(buf) => buf,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let (chunk, consumed, line_ended) = match memchr::memchr(b'\n', buf) {
            Some(at) => (&buf[..at], at + 1, true),
            None if buf.is_empty() => (&buf[..0], 0, true),
            None => (buf, buf.len(), false),
        };
        let at_eof = buf.is_empty();
        total += chunk.len();
        if !oversized {
            if line.len() + chunk.len() <= keep {
                line.extend_from_slice(chunk);
            } else {
                oversized = true;
                let room = head.saturating_sub(line.len());
                line.extend_from_slice(&chunk[..room.min(chunk.len())]);
                line.truncate(head);
            }
        }
        reader.consume(consumed);
        if !line_ended {
            continue;
        }
        if !oversized && line.last() == Some(&b'\r') {
            line.pop();
            total -= 1;
        }
        if !oversized && line.len() > max {
            oversized = true;
            line.truncate(head);
        }
        if oversized {
            return Ok(Frame::Oversized { len: total });
        }
        if !line.is_empty() {
            return Ok(Frame::Message);
        }
        if at_eof {
            return Ok(Frame::Eof);
        }
        // An empty line: skip it and read on.
        total = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufReader, Read};

    /// Hands out its data a few bytes per `read`, to prove frames survive
    /// arbitrary splits.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = self.step.min(self.data.len()).min(out.len());
            out[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    fn frames(data: &[u8], max: usize, step: usize) -> Vec<(Frame, Vec<u8>)> {
        let mut reader = BufReader::with_capacity(16, Trickle { data, step });
        let mut out = Vec::new();
        let mut line = Vec::new();
        for _ in 0..1000 {
            let frame = read_frame(&mut reader, max, &mut line).expect("in-memory read");
            let done = frame == Frame::Eof;
            out.push((frame, line.clone()));
            if done {
                return out;
            }
        }
        panic!("no EOF after 1000 frames");
    }

    fn messages(data: &[u8], max: usize) -> Vec<Vec<u8>> {
        frames(data, max, 3)
            .into_iter()
            .filter(|(f, _)| *f == Frame::Message)
            .map(|(_, l)| l)
            .collect()
    }

    #[test]
    fn splits_lines_across_arbitrary_reads() {
        for step in 1..8 {
            let got: Vec<_> = frames(b"{\"a\":1}\n{\"b\":2}\n", 100, step)
                .into_iter()
                .map(|(_, l)| l)
                .collect();
            assert_eq!(
                got,
                vec![b"{\"a\":1}".to_vec(), b"{\"b\":2}".to_vec(), Vec::new()],
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
        let got = frames(&data, 10, 4);
        assert_eq!(
            got[0],
            (Frame::Message, at_limit.to_vec()),
            "a CRLF line at the limit fits"
        );
        assert_eq!(got[1], (Frame::Oversized { len: 11 }, vec![b'y'; 10]));
        assert_eq!(
            got[2],
            (Frame::Message, b"{}".to_vec()),
            "the stream goes on after"
        );
    }

    #[test]
    fn an_endless_line_keeps_only_its_head() {
        let mut data = b"{\"id\":7,".to_vec();
        data.extend(std::iter::repeat_n(b'z', 100_000));
        data.push(b'\n');
        let got = frames(&data, 50_000, 1000);
        let (frame, head) = &got[0];
        assert_eq!(*frame, Frame::Oversized { len: 100_008 });
        assert_eq!(head.len(), OVERSIZED_HEAD_BYTES);
        assert!(head.starts_with(b"{\"id\":7,"));
    }

    #[test]
    fn invalid_utf8_is_framed_as_bytes() {
        assert_eq!(messages(b"\xff\xfe\n", 100), vec![b"\xff\xfe".to_vec()]);
    }

    #[test]
    fn empty_input_is_eof() {
        assert_eq!(frames(b"", 10, 1), vec![(Frame::Eof, Vec::new())]);
        assert_eq!(frames(b"\n\n", 10, 1), vec![(Frame::Eof, Vec::new())]);
    }
}
