//! Socket calls std does not offer on a raw or borrowed fd: a
//! non-blocking send that never raises SIGPIPE, and `shutdown(2)` on an fd
//! whose owner is elsewhere.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

/// Sends what fits now of `bytes` without blocking and without SIGPIPE.
/// Returns the bytes sent; 0 when the socket has no room. One buffer and
/// `send(2)`: `sendmsg(2)` costs the kernel a message header and an iovec
/// copied in, 0.1-0.2 µs a call, twice a round trip.
pub fn send_now(fd: BorrowedFd<'_>, bytes: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `bytes` is valid for reads of its length.
        let n = unsafe {
            libc::send(
                fd.as_raw_fd(),
                bytes.as_ptr().cast(),
                bytes.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        match err.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return Ok(0),
            _ => return Err(err),
        }
    }
}

/// `shutdown(fd, SHUT_RD)`: a reader of the socket sees end of file once
/// it has read what is queued. The caller guarantees `fd` is open (see
/// `child::reaper`, which holds a lock its owner takes before closing it).
pub fn shutdown_read_raw(fd: RawFd) {
    // ENOTCONN (the peer is long gone) is as good as success here.
    unsafe { libc::shutdown(fd, libc::SHUT_RD) };
}

/// `shutdown(fd, SHUT_WR)`: the peer reads end of file once it has read
/// what was sent; it may still write to us.
pub fn shutdown_write(fd: BorrowedFd<'_>) {
    // ENOTCONN (the peer is long gone) is as good as success here.
    unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_WR) };
}

/// True if `fd` is a socket (so `send_now` applies to it).
pub fn is_socket(fd: BorrowedFd<'_>) -> bool {
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::fstat(fd.as_raw_fd(), &mut stat) } == 0;
    ok && (stat.st_mode & libc::S_IFMT) == libc::S_IFSOCK
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn sends_what_fits_and_reports_a_full_socket_as_zero() {
        let (ours, mut theirs) = UnixStream::pair().expect("socketpair");
        assert!(is_socket(ours.as_fd()));
        assert_eq!(send_now(ours.as_fd(), b"abc\n").expect("send"), 4);
        let mut got = [0u8; 4];
        theirs.read_exact(&mut got).expect("read");
        assert_eq!(&got, b"abc\n");
        let big = vec![0u8; 1 << 16];
        let mut total = 0;
        for _ in 0..10_000 {
            let n = send_now(ours.as_fd(), &big).expect("send");
            if n == 0 {
                break;
            }
            total += n;
        }
        assert!(total > 0, "the socket took nothing");
        assert_eq!(send_now(ours.as_fd(), b"x").expect("full"), 0);
    }

    #[test]
    fn shutdown_read_delivers_what_is_queued_then_end_of_file() {
        let (ours, theirs) = UnixStream::pair().expect("socketpair");
        (&theirs).write_all(b"late\n").expect("write");
        shutdown_read_raw(ours.as_raw_fd());
        let mut got = Vec::new();
        (&ours).read_to_end(&mut got).expect("read to eof");
        assert_eq!(got, b"late\n");
    }
}
