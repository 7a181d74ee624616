//! MCP's stdio framing as a `tokio_util::codec` pair: one JSON message per
//! `\n`-terminated line, a trailing `\r` stripped, empty lines skipped, and a
//! size cap that never holds more than `max + 1` bytes of one line.
//!
//! `LinesCodec::new_with_max_length` is the obvious choice and was not used
//! because it decodes to `String` (invalid UTF-8 becomes a stream error,
//! where the rule is a -32700 answer and the session going on) and reports
//! an oversized line as an error too, which ends a `FramedRead`. Here both
//! are ordinary items, and the bytes are kept as they came.

use std::io;

use bytes::{BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// How much of an oversized line is kept, so its `id` can still be read.
const OVERSIZED_HEAD_BYTES: usize = 4096;

#[derive(Debug)]
pub enum Frame {
    /// One message, without its line ending.
    Line(Bytes),
    /// A line over the cap, discarded; `head` is its first bytes.
    Oversized { head: Bytes, len: usize },
}

/// Decodes framed lines and encodes a message plus `\n`.
pub struct JsonLines {
    max: usize,
    /// Where to resume the search for `\n` in the buffer.
    next_index: usize,
    /// Set while skipping the rest of an oversized line.
    discarding: Option<(Bytes, usize)>,
}

impl JsonLines {
    pub fn new(max: usize) -> JsonLines {
        JsonLines {
            max,
            next_index: 0,
            discarding: None,
        }
    }

    fn head(&self, bytes: &[u8]) -> Bytes {
        Bytes::copy_from_slice(&bytes[..bytes.len().min(self.max.min(OVERSIZED_HEAD_BYTES))])
    }

    /// A complete line (no `\n`): strip `\r`, skip empty, apply the cap.
    fn finish(&self, mut line: BytesMut) -> Option<Frame> {
        if line.last() == Some(&b'\r') {
            line.truncate(line.len() - 1);
        }
        if line.is_empty() {
            None
        } else if line.len() > self.max {
            Some(Frame::Oversized {
                head: self.head(&line),
                len: line.len(),
            })
        } else {
            Some(Frame::Line(line.freeze()))
        }
    }
}

impl Decoder for JsonLines {
    type Item = Frame;
    type Error = io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> io::Result<Option<Frame>> {
        loop {
            if let Some((_, len)) = &mut self.discarding {
                match buf.iter().position(|b| *b == b'\n') {
                    Some(at) => {
                        *len += at;
                        let _ = buf.split_to(at + 1);
                        let (head, len) = self.discarding.take().expect("discarding");
                        return Ok(Some(Frame::Oversized { head, len }));
                    }
                    None => {
                        *len += buf.len();
                        buf.clear();
                        return Ok(None);
                    }
                }
            }
            let from = self.next_index.min(buf.len());
            match buf[from..].iter().position(|b| *b == b'\n') {
                Some(offset) => {
                    self.next_index = 0;
                    let at = from + offset;
                    let mut line = buf.split_to(at + 1);
                    line.truncate(at);
                    match self.finish(line) {
                        Some(frame) => return Ok(Some(frame)),
                        None => continue,
                    }
                }
                // No newline yet and already past the cap (+1 for a `\r`):
                // keep the head, drop the rest as it streams past.
                None if buf.len() > self.max.saturating_add(1) => {
                    self.next_index = 0;
                    self.discarding = Some((self.head(buf), buf.len()));
                    buf.clear();
                    return Ok(None);
                }
                None => {
                    self.next_index = buf.len();
                    return Ok(None);
                }
            }
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> io::Result<Option<Frame>> {
        if let Some(frame) = self.decode(buf)? {
            return Ok(Some(frame));
        }
        if let Some((head, len)) = self.discarding.take() {
            return Ok(Some(Frame::Oversized { head, len }));
        }
        // A last line without its `\n` still counts, as in forkline.
        self.next_index = 0;
        let rest = buf.split();
        Ok(self.finish(rest))
    }
}

impl Encoder<Bytes> for JsonLines {
    type Error = io::Error;

    fn encode(&mut self, line: Bytes, dst: &mut BytesMut) -> io::Result<()> {
        dst.reserve(line.len() + 1);
        dst.put(line);
        dst.put_u8(b'\n');
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(data: &[u8], max: usize, step: usize) -> Vec<String> {
        let mut codec = JsonLines::new(max);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for chunk in data.chunks(step) {
            buf.extend_from_slice(chunk);
            while let Some(f) = codec.decode(&mut buf).unwrap() {
                out.push(show(f));
            }
        }
        while let Some(f) = codec.decode_eof(&mut buf).unwrap() {
            out.push(show(f));
        }
        out
    }

    fn show(f: Frame) -> String {
        match f {
            Frame::Line(b) => String::from_utf8_lossy(&b).into_owned(),
            Frame::Oversized { len, .. } => format!("<{len}>"),
        }
    }

    #[test]
    fn frames_like_forkline() {
        for step in 1..6 {
            assert_eq!(
                decode_all(b"\n{}\r\n\nxxxxxxxxxxxx\n[1]\nlast", 10, step),
                vec!["{}", "<12>", "[1]", "last"],
                "step {step}"
            );
        }
        assert_eq!(decode_all(b"0123456789\r\n", 10, 3), vec!["0123456789"]);
    }
}
