//! `forkline connect`: the client-side bridge. Joins forkline's own stdin
//! and stdout to one session of a remote `forkline serve`, so any MCP
//! client that can only launch stdio servers can use it.
//!
//! A plain byte copy each way (the server end already frames and checks),
//! run by ONE thread around one `poll(2)` over stdin, the socket and
//! stdout. One thread because the three ends must be watched together:
//! with a blocking copy per direction, the thread reading the socket never
//! learns that stdout's reader went away, and `connect` hung for as long as
//! the server held the session (issue 10, item 7). Here stdout is always
//! in the poll set, so its POLLERR/POLLHUP ends the bridge at once. Each
//! direction has a bounded buffer; a full buffer stops reading its source.
//!
//! Stdin and stdout are shared with our parent, so they stay in blocking
//! mode and every call on them is one that `poll` said cannot block. When
//! stdin ends, pending bytes go out and the socket's write half is closed,
//! and answers still in flight are delivered until the server closes.

use std::io;
use std::net::TcpStream;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use crate::config::ConnectAddr;
use crate::error::{Context, Error};

/// Bytes buffered in each direction before we stop reading the source.
const BUFFER_BYTES: usize = 64 * 1024;

/// How long, once the server has closed, stdout may take to accept what
/// the server sent last. A client that is alive reads it in milliseconds.
const STDOUT_DRAIN_PATIENCE: Duration = Duration::from_secs(10);

/// Bridges until the session ends. Blocks. `Ok` when the server closed
/// the connection (and stdout took all it sent) or when stdout's reader
/// went away; `Err` when connecting fails, the connection breaks, stdout
/// fails otherwise, or stdout does not take the server's last bytes
/// within [`STDOUT_DRAIN_PATIENCE`].
pub fn run(addr: &ConnectAddr) -> Result<(), Error> {
    let socket: OwnedFd = match addr {
        ConnectAddr::Tcp(hostport) => {
            let stream = TcpStream::connect(hostport)
                .context(|| format!("cannot connect to tcp://{hostport}"))?;
            stream
                .set_nodelay(true)
                .context(|| "cannot set TCP_NODELAY".into())?;
            stream.into()
        }
        ConnectAddr::Unix(path) => UnixStream::connect(path)
            .context(|| format!("cannot connect to unix:{}", path.display()))?
            .into(),
    };
    // SAFETY: fds 0 and 1 stay open for the life of the process (std
    // reopens them on /dev/null at startup if they were closed).
    let (stdin, stdout) = unsafe {
        (
            BorrowedFd::borrow_raw(libc::STDIN_FILENO),
            BorrowedFd::borrow_raw(libc::STDOUT_FILENO),
        )
    };
    let bridge = Bridge::new(stdin, stdout, socket.as_fd());
    let end = bridge.run()?;
    // Dropping `socket` closes the connection; for a gone client that
    // is what tells the server the session is over.
    log::debug!(
        "connect ended reason={} to_server_bytes={} to_client_bytes={}",
        end.reason.as_str(),
        end.to_server_bytes,
        end.to_client_bytes
    );
    Ok(())
}

/// Why the bridge stopped without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EndReason {
    /// The server closed the connection and stdout took everything.
    ServerClosed,
    /// Stdout's reader went away (POLLERR/POLLHUP, or EPIPE on write).
    StdoutClosed,
}

impl EndReason {
    fn as_str(self) -> &'static str {
        match self {
            EndReason::ServerClosed => "server_closed",
            EndReason::StdoutClosed => "stdout_closed",
        }
    }
}

#[derive(Debug)]
struct End {
    reason: EndReason,
    to_server_bytes: u64,
    to_client_bytes: u64,
}

/// What stdout is, which decides how to write to it without blocking
/// while leaving its file status flags (shared with our parent) alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StdoutKind {
    /// POLLOUT on a pipe means room for at least PIPE_BUF bytes, so a
    /// write of at most PIPE_BUF does not block.
    Pipe,
    /// A socket takes `send(MSG_DONTWAIT)`, which never blocks.
    Socket,
    /// A regular file, a tty or a device: a plain write.
    Other,
}

impl StdoutKind {
    fn of(fd: BorrowedFd<'_>) -> StdoutKind {
        let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: fstat fills `stat` for a live fd; we read it only on
        // success.
        let rc = unsafe { libc::fstat(fd.as_raw_fd(), stat.as_mut_ptr()) };
        if rc != 0 {
            return StdoutKind::Other;
        }
        // SAFETY: fstat succeeded, so `stat` is initialised.
        match unsafe { stat.assume_init() }.st_mode & libc::S_IFMT {
            libc::S_IFIFO => StdoutKind::Pipe,
            libc::S_IFSOCK => StdoutKind::Socket,
            _ => StdoutKind::Other,
        }
    }
}

/// Bytes read from one end and not yet written to the other: a fixed
/// buffer holding `bytes[start..end]`.
struct Pending {
    bytes: Box<[u8]>,
    start: usize,
    end: usize,
}

impl Pending {
    fn with_capacity(capacity: usize) -> Pending {
        debug_assert!(capacity > 0);
        Pending {
            bytes: vec![0; capacity].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    fn is_empty(&self) -> bool {
        self.start == self.end
    }

    fn len(&self) -> usize {
        self.end - self.start
    }

    fn has_room(&self) -> bool {
        self.len() < self.bytes.len()
    }

    /// The bytes waiting to be written.
    fn queued(&self) -> &[u8] {
        &self.bytes[self.start..self.end]
    }

    /// Free space to read into, moving queued bytes to the front first if
    /// the free space is all before them. Empty only when full.
    fn spare(&mut self) -> &mut [u8] {
        if self.end == self.bytes.len() && self.start > 0 {
            self.bytes.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.bytes[self.end..]
    }

    /// `n` bytes were read into `spare()`.
    fn filled(&mut self, n: usize) {
        debug_assert!(self.end + n <= self.bytes.len());
        self.end += n;
    }

    /// `n` bytes of `queued()` were written.
    fn consumed(&mut self, n: usize) {
        debug_assert!(n <= self.len());
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
    }
}

/// Whether poll's `revents` for stdout say nobody will read it again: a
/// pipe whose read end is closed reports POLLERR, a socket whose peer is
/// gone or a hung-up tty POLLHUP. (A peer's half-close of a socket is
/// POLLRDHUP, not POLLHUP, so a shared stdin/stdout socket is safe.)
fn reader_gone(revents: libc::c_short) -> bool {
    revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0
}

/// The poll set's slots, in order.
const STDIN: usize = 0;
const SOCKET: usize = 1;
const STDOUT: usize = 2;

/// The state of one bridge between stdin/stdout and a connected socket.
struct Bridge<'fd> {
    stdin: BorrowedFd<'fd>,
    stdout: BorrowedFd<'fd>,
    socket: BorrowedFd<'fd>,
    stdout_kind: StdoutKind,
    to_server: Pending,
    to_client: Pending,
    /// False once stdin reached EOF (or failed): nothing more to send.
    stdin_open: bool,
    /// False once we shut the socket's write half down.
    socket_write_open: bool,
    /// False once the server closed the connection.
    socket_read_open: bool,
    /// Set when the server closed: stdout must take the rest by then.
    drain_deadline: Option<Instant>,
    to_server_bytes: u64,
    to_client_bytes: u64,
}

impl<'fd> Bridge<'fd> {
    fn new(
        stdin: BorrowedFd<'fd>,
        stdout: BorrowedFd<'fd>,
        socket: BorrowedFd<'fd>,
    ) -> Bridge<'fd> {
        Bridge {
            stdin,
            stdout,
            socket,
            stdout_kind: StdoutKind::of(stdout),
            to_server: Pending::with_capacity(BUFFER_BYTES),
            to_client: Pending::with_capacity(BUFFER_BYTES),
            stdin_open: true,
            socket_write_open: true,
            socket_read_open: true,
            drain_deadline: None,
            to_server_bytes: 0,
            to_client_bytes: 0,
        }
    }

    /// Runs the poll loop to the end of the session. Blocks.
    fn run(mut self) -> Result<End, Error> {
        loop {
            if !self.socket_read_open && self.to_client.is_empty() {
                return Ok(self.end(EndReason::ServerClosed));
            }
            if !self.stdin_open && self.to_server.is_empty() && self.socket_write_open {
                self.half_close();
            }
            if self.drain_deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(Error::Io {
                    what: format!(
                        "stdout did not take the last {} bytes from the server within {:?}",
                        self.to_client.len(),
                        STDOUT_DRAIN_PATIENCE
                    ),
                    source: io::ErrorKind::TimedOut.into(),
                });
            }

            let mut fds = self.poll_set();
            poll(&mut fds, self.drain_deadline).context(|| "poll failed".into())?;

            if reader_gone(fds[STDOUT].revents) {
                log::debug!("stdout's reader is gone; closing the connection");
                return Ok(self.end(EndReason::StdoutClosed));
            }
            if fds[STDOUT].revents & libc::POLLOUT != 0 && self.flush_to_client()? {
                log::debug!("stdout's reader is gone (EPIPE); closing the connection");
                return Ok(self.end(EndReason::StdoutClosed));
            }
            let socket_ready = fds[SOCKET].revents;
            let wakes = libc::POLLERR | libc::POLLHUP | libc::POLLNVAL;
            if fds[SOCKET].events & libc::POLLIN != 0 && socket_ready & (libc::POLLIN | wakes) != 0
            {
                self.read_from_server()?;
            }
            // Not once the read above found the server gone.
            if fds[SOCKET].events & libc::POLLOUT != 0
                && socket_ready & (libc::POLLOUT | wakes) != 0
                && self.socket_read_open
            {
                self.flush_to_server()?;
            }
            if fds[STDIN].events & libc::POLLIN != 0
                && fds[STDIN].revents & (libc::POLLIN | wakes) != 0
            {
                self.read_from_stdin();
            }
        }
    }

    /// What to wait for this round. An end we want nothing from gets fd
    /// -1, which poll skips: otherwise a POLLHUP we cannot act on yet (a
    /// full buffer) would wake us in a busy loop. Stdout is always in,
    /// with events 0 when idle, because POLLERR/POLLHUP on it is how we
    /// learn that the client is gone.
    fn poll_set(&self) -> [libc::pollfd; 3] {
        let want_stdin = self.stdin_open && self.socket_read_open && self.to_server.has_room();
        let mut socket_events = 0;
        if self.socket_read_open && self.to_client.has_room() {
            socket_events |= libc::POLLIN;
        }
        if self.socket_read_open && self.socket_write_open && !self.to_server.is_empty() {
            socket_events |= libc::POLLOUT;
        }
        let stdout_events = if self.to_client.is_empty() {
            0
        } else {
            libc::POLLOUT
        };
        let skip_if_idle = |fd: BorrowedFd<'_>, events: libc::c_short| libc::pollfd {
            fd: if events == 0 { -1 } else { fd.as_raw_fd() },
            events,
            revents: 0,
        };
        [
            skip_if_idle(self.stdin, if want_stdin { libc::POLLIN } else { 0 }),
            skip_if_idle(self.socket, socket_events),
            libc::pollfd {
                fd: self.stdout.as_raw_fd(),
                events: stdout_events,
                revents: 0,
            },
        ]
    }

    /// One write of pending bytes to stdout, sized so it cannot block.
    /// Returns true when stdout's reader is gone.
    fn flush_to_client(&mut self) -> Result<bool, Error> {
        let queued = self.to_client.queued();
        let written = match self.stdout_kind {
            StdoutKind::Pipe => write(self.stdout, &queued[..queued.len().min(libc::PIPE_BUF)]),
            StdoutKind::Socket => send(self.stdout, queued),
            StdoutKind::Other => write(self.stdout, queued),
        };
        match written {
            Ok(n) => {
                self.to_client.consumed(n);
                self.to_client_bytes += n as u64;
                Ok(false)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e)
                if e.kind() == io::ErrorKind::BrokenPipe
                    || e.kind() == io::ErrorKind::ConnectionReset =>
            {
                Ok(true)
            }
            Err(e) => Err(e).context(|| "cannot write to stdout".into()),
        }
    }

    fn read_from_server(&mut self) -> Result<(), Error> {
        match recv(self.socket, self.to_client.spare()) {
            Ok(0) => {
                log::debug!(
                    "the server closed the connection; {} bytes left for stdout",
                    self.to_client.len()
                );
                self.socket_read_open = false;
                // Nothing more goes to a server that has closed.
                self.stdin_open = false;
                self.to_server.clear();
                self.drain_deadline = Some(Instant::now() + STDOUT_DRAIN_PATIENCE);
                Ok(())
            }
            Ok(n) => {
                self.to_client.filled(n);
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e).context(|| "the connection to the server failed".into()),
        }
    }

    fn flush_to_server(&mut self) -> Result<(), Error> {
        match send(self.socket, self.to_server.queued()) {
            Ok(n) => {
                self.to_server.consumed(n);
                self.to_server_bytes += n as u64;
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e).context(|| "the connection to the server failed".into()),
        }
    }

    /// POLLIN said this read does not block. A failing stdin ends our
    /// input like EOF does: the server still answers what it has.
    fn read_from_stdin(&mut self) {
        match read(self.stdin, self.to_server.spare()) {
            Ok(0) => {
                log::debug!("stdin ended; closing the connection's write half");
                self.stdin_open = false;
            }
            Ok(n) => self.to_server.filled(n),
            // Our parent may have made a shared stdin non-blocking.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => {
                log::debug!("stdin failed, treated as its end: {e}");
                self.stdin_open = false;
            }
        }
    }

    /// Tells the server we are done sending; it answers what is in flight
    /// before it closes. A failure means the connection is gone, which the
    /// next read reports.
    fn half_close(&mut self) {
        self.socket_write_open = false;
        // SAFETY: shutdown on a live socket fd.
        if unsafe { libc::shutdown(self.socket.as_raw_fd(), libc::SHUT_WR) } != 0 {
            log::debug!(
                "cannot half-close the connection: {}",
                io::Error::last_os_error()
            );
        }
    }

    fn end(&self, reason: EndReason) -> End {
        End {
            reason,
            to_server_bytes: self.to_server_bytes,
            to_client_bytes: self.to_client_bytes,
        }
    }
}

// ---- thin safe wrappers over the syscalls, each retrying on EINTR ----------

/// Runs `call` until it does not fail with EINTR.
fn retry_interrupted(mut call: impl FnMut() -> isize) -> io::Result<usize> {
    loop {
        let rc = call();
        if rc >= 0 {
            return Ok(rc as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// `poll(2)` until an event or `deadline` (`None`: no deadline). Blocks.
fn poll(fds: &mut [libc::pollfd], deadline: Option<Instant>) -> io::Result<usize> {
    loop {
        let timeout_ms = match deadline {
            None => -1,
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                // Round up, so we do not wake just before the deadline.
                left.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as libc::c_int
            }
        };
        // SAFETY: `fds` is a valid, exclusively borrowed array of pollfd.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if rc >= 0 {
            return Ok(rc as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
    retry_interrupted(|| unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) })
}

fn write(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes.
    retry_interrupted(|| unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) })
}

/// `recv` that never blocks, whatever the socket's flags.
fn recv(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
    retry_interrupted(|| unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    })
}

/// `send` that never blocks and never raises SIGPIPE.
fn send(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes.
    retry_interrupted(|| unsafe {
        libc::send(
            fd.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::FromRawFd;

    #[test]
    fn pending_fills_drains_and_compacts() {
        let mut p = Pending::with_capacity(8);
        assert!(p.is_empty() && p.has_room());
        p.spare()[..5].copy_from_slice(b"hello");
        p.filled(5);
        assert_eq!(p.queued(), b"hello");
        p.consumed(3);
        assert_eq!(p.queued(), b"lo");
        // Three bytes free at the end, three at the front.
        p.spare()[..3].copy_from_slice(b"abc");
        p.filled(3);
        assert_eq!(p.queued(), b"loabc");
        // The end is reached: spare() moves the queued bytes to the front.
        assert_eq!(p.spare().len(), 3);
        assert_eq!(p.queued(), b"loabc");
        p.spare().copy_from_slice(b"xyz");
        p.filled(3);
        assert!(!p.has_room());
        assert!(p.spare().is_empty());
        assert_eq!(p.queued(), b"loabcxyz");
        p.consumed(8);
        assert!(p.is_empty());
        assert_eq!(p.spare().len(), 8);
    }

    /// A pipe as (read end, write end).
    fn pipe() -> (std::fs::File, std::fs::File) {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills two fds we then own.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
        assert_eq!(rc, 0, "pipe2: {}", io::Error::last_os_error());
        // SAFETY: both fds are fresh and owned by nobody else.
        unsafe {
            (
                std::fs::File::from_raw_fd(fds[0]),
                std::fs::File::from_raw_fd(fds[1]),
            )
        }
    }

    /// Runs a bridge on its own thread over a pipe for stdin, `stdout` as
    /// stdout and one end of a socket pair; returns what it returned.
    fn bridge_on_thread(
        stdin: std::fs::File,
        stdout: OwnedFd,
        socket: UnixStream,
    ) -> std::thread::JoinHandle<Result<End, Error>> {
        std::thread::spawn(move || Bridge::new(stdin.as_fd(), stdout.as_fd(), socket.as_fd()).run())
    }

    #[test]
    fn ends_when_the_stdout_pipe_reader_goes_away() {
        let (stdin_read, mut stdin_write) = pipe();
        let (mut stdout_read, stdout_write) = pipe();
        let (ours, mut server) = UnixStream::pair().unwrap();
        let bridge = bridge_on_thread(stdin_read, stdout_write.into(), ours);

        stdin_write.write_all(b"ping\n").unwrap();
        let mut got = [0; 5];
        server.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ping\n");
        server.write_all(b"pong\n").unwrap();
        stdout_read.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"pong\n");

        // Stdin and the server stay open; only stdout's reader leaves.
        drop(stdout_read);
        let end = bridge.join().unwrap().expect("bridge ends cleanly");
        assert_eq!(end.reason, EndReason::StdoutClosed);
        // The bridge closed its socket, so the server sees EOF.
        assert_eq!(server.read(&mut got).unwrap(), 0);
        drop(stdin_write);
    }

    #[test]
    fn stdin_eof_half_closes_and_answers_still_arrive() {
        let (stdin_read, mut stdin_write) = pipe();
        // Stdout is a socket here, as node-based clients give their
        // children: the `send(MSG_DONTWAIT)` path.
        let (stdout_ours, mut stdout_reader) = UnixStream::pair().unwrap();
        let (ours, mut server) = UnixStream::pair().unwrap();
        let bridge = bridge_on_thread(stdin_read, stdout_ours.into(), ours);

        stdin_write.write_all(b"last\n").unwrap();
        drop(stdin_write);
        // Read to EOF: the bridge half-closed after stdin's end.
        let mut request = Vec::new();
        server.read_to_end(&mut request).unwrap();
        assert_eq!(request, b"last\n");
        server.write_all(b"answer\n").unwrap();
        drop(server);

        let end = bridge.join().unwrap().expect("bridge ends cleanly");
        assert_eq!(end.reason, EndReason::ServerClosed);
        assert_eq!((end.to_server_bytes, end.to_client_bytes), (5, 7));
        let mut answer = Vec::new();
        stdout_reader.read_to_end(&mut answer).unwrap();
        assert_eq!(answer, b"answer\n");
    }

    #[test]
    fn a_reset_connection_is_an_error() {
        let (stdin_read, _stdin_write) = pipe();
        let (_stdout_read, stdout_write) = pipe();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: setsockopt on a live socket with a correctly sized value.
        let rc = unsafe {
            libc::setsockopt(
                server.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0);
        drop(server); // RST
        let stdout_write: OwnedFd = stdout_write.into();
        let socket: OwnedFd = client.into();
        let err = Bridge::new(stdin_read.as_fd(), stdout_write.as_fd(), socket.as_fd())
            .run()
            .expect_err("a reset is an error");
        assert!(
            err.to_string()
                .starts_with("the connection to the server failed"),
            "{err}"
        );
    }
}
