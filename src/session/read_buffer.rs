//! What a session's worker reads into: one read per descriptor per turn,
//! with no allocation for an ordinary message and nothing large held by a
//! session that has gone quiet.
//!
//! Most reads are one message of a few hundred bytes. They land in a
//! small buffer the session keeps for its life (1 KiB, all an idle session
//! holds for reading). A read that fills it may have more behind it: those
//! bytes move to a large buffer taken from the allocator for that turn,
//! which a second read fills further and `end_turn` gives back, so a big
//! message costs what it did and a quiet session holds none of it.
//!
//! Why not one large buffer per turn, as before: a chunk of 8 KiB is beyond
//! glibc's per-thread cache, so every turn of every session took its
//! malloc arena's lock twice (allocate, free), an arena that one or two
//! dozen worker threads share. A buffer kept per session would cost each
//! idle session its pages, and a buffer on the worker's stack stays
//! resident for the thread's life once touched.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Kept per session: a tools/call and its answer fit several times over.
const SMALL: usize = 1024;

/// One turn's most, when the small buffer fills.
const LARGE: usize = 8 * 1024;

/// The outcome of one turn's read.
#[derive(Debug, PartialEq, Eq)]
pub enum Read<'a> {
    Bytes(&'a [u8]),
    /// End of file.
    End,
    /// Nothing to read after all (a spurious wake-up).
    Nothing,
}

#[derive(Debug)]
pub struct ReadBuffer {
    small: Box<[u8]>,
    large: Vec<u8>,
    /// An error the second read of a turn met after the first brought
    /// bytes: those go out first, and the next read reports it (a socket
    /// reports a reset only once).
    deferred: Option<io::Error>,
}

impl Default for ReadBuffer {
    fn default() -> Self {
        ReadBuffer {
            small: vec![0; SMALL].into_boxed_slice(),
            large: Vec::new(),
            deferred: None,
        }
    }
}

impl ReadBuffer {
    /// Reads what `fd` has, without blocking: one read, and a second one
    /// when the first filled the small buffer.
    pub fn read(&mut self, fd: BorrowedFd<'_>) -> io::Result<Read<'_>> {
        if let Some(e) = self.deferred.take() {
            return Err(e);
        }
        // SAFETY: `small` is initialised memory of its own length.
        let n = match unsafe { read_into(fd, self.small.as_mut_ptr(), self.small.len()) }? {
            None => return Ok(Read::Nothing),
            Some(0) => return Ok(Read::End),
            Some(n) if n < self.small.len() => return Ok(Read::Bytes(&self.small[..n])),
            Some(n) => n,
        };
        self.large.clear();
        self.large.reserve(LARGE);
        self.large.extend_from_slice(&self.small[..n]);
        let room = self.large.spare_capacity_mut();
        // SAFETY: read(2) writes at most `room.len()` bytes into the spare
        // capacity; the length is raised by what it reports as written.
        match unsafe { read_into(fd, room.as_mut_ptr().cast(), room.len()) } {
            Ok(Some(more)) => unsafe { self.large.set_len(n + more) },
            // An end of file is seen again by the next read.
            Ok(None) => {}
            Err(e) => self.deferred = Some(e),
        }
        Ok(Read::Bytes(&self.large))
    }

    /// Gives back this turn's large buffer, if it took one.
    pub fn end_turn(&mut self) {
        if self.large.capacity() != 0 {
            self.large = Vec::new();
        }
    }
}

/// One read(2) that does not block: `Ok(None)` when it would.
///
/// # Safety
/// `buf` must be valid for writes of `len` bytes.
unsafe fn read_into(fd: BorrowedFd<'_>, buf: *mut u8, len: usize) -> io::Result<Option<usize>> {
    loop {
        // SAFETY: the caller's promise about `buf` and `len`.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.cast(), len) };
        if n >= 0 {
            return Ok(Some(n as usize));
        }
        let err = io::Error::last_os_error();
        match err.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return Ok(None),
            _ => return Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    fn pair() -> (UnixStream, UnixStream) {
        let (a, b) = UnixStream::pair().expect("socket pair");
        b.set_nonblocking(true).expect("non-blocking");
        (a, b)
    }

    #[test]
    fn a_small_message_is_read_whole_and_takes_no_large_buffer() {
        let (mut tx, rx) = pair();
        let mut buf = ReadBuffer::default();
        assert_eq!(buf.read(rx.as_fd()).expect("read"), Read::Nothing);
        tx.write_all(b"{\"id\":1}\n").expect("write");
        assert_eq!(
            buf.read(rx.as_fd()).expect("read"),
            Read::Bytes(b"{\"id\":1}\n")
        );
        assert_eq!(buf.large.capacity(), 0);
        drop(tx);
        assert_eq!(buf.read(rx.as_fd()).expect("read"), Read::End);
    }

    #[test]
    fn a_read_that_fills_the_small_buffer_goes_on_into_the_large_one_for_that_turn() {
        let (mut tx, rx) = pair();
        let sent: Vec<u8> = (0..SMALL * 3).map(|i| (i % 251) as u8).collect();
        tx.write_all(&sent).expect("write");
        let mut buf = ReadBuffer::default();
        let Read::Bytes(got) = buf.read(rx.as_fd()).expect("read") else {
            panic!("bytes expected");
        };
        assert_eq!(got, &sent[..]);
        assert!(buf.large.capacity() >= LARGE);
        buf.end_turn();
        assert_eq!(buf.large.capacity(), 0);
        assert_eq!(buf.read(rx.as_fd()).expect("read"), Read::Nothing);
    }

    #[test]
    fn a_turn_reads_at_most_the_large_buffer_and_the_rest_waits() {
        let (mut tx, rx) = pair();
        let sent: Vec<u8> = (0..LARGE * 3).map(|i| (i % 251) as u8).collect();
        tx.write_all(&sent).expect("write");
        let mut buf = ReadBuffer::default();
        let mut got = Vec::new();
        for _ in 0..100 {
            match buf.read(rx.as_fd()).expect("read") {
                Read::Bytes(b) => {
                    assert!(b.len() <= LARGE);
                    got.extend_from_slice(b);
                }
                Read::Nothing => break,
                Read::End => panic!("no end expected"),
            }
            buf.end_turn();
        }
        assert_eq!(got, sent);
    }

    #[test]
    fn exactly_a_small_buffer_then_the_end_gives_the_bytes_and_then_the_end() {
        let (mut tx, rx) = pair();
        let sent = vec![b'x'; SMALL];
        tx.write_all(&sent).expect("write");
        drop(tx);
        let mut buf = ReadBuffer::default();
        assert_eq!(buf.read(rx.as_fd()).expect("read"), Read::Bytes(&sent[..]));
        buf.end_turn();
        assert_eq!(buf.read(rx.as_fd()).expect("read"), Read::End);
    }
}
