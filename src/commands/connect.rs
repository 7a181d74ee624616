//! `forkline connect`: the client-side bridge. Joins forkline's own stdin
//! and stdout to one session of a remote `forkline serve`, so any MCP
//! client that can only launch stdio servers can use it.
//!
//! A plain byte copy each way: the server end already frames and checks.
//! When stdin ends, the socket's write half is closed and answers still in
//! flight are read to the end; when the server closes, stdin's copy is
//! woken through an [`Alarm`] and joined.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;

use crate::config::ConnectAddr;
use crate::error::{Context, Error};
use crate::sys::interrupt::{Alarm, Interruptible};

/// Bridges until the server ends the session. Blocks.
pub fn run(addr: &ConnectAddr) -> Result<(), Error> {
    match addr {
        ConnectAddr::Tcp(hostport) => {
            let stream = TcpStream::connect(hostport)
                .context(|| format!("cannot connect to tcp://{hostport}"))?;
            stream
                .set_nodelay(true)
                .context(|| "cannot set TCP_NODELAY".into())?;
            bridge(&stream, || stream.shutdown(Shutdown::Write))
        }
        ConnectAddr::Unix(path) => {
            let stream = UnixStream::connect(path)
                .context(|| format!("cannot connect to unix:{}", path.display()))?;
            bridge(&stream, || stream.shutdown(Shutdown::Write))
        }
    }
}

fn bridge<S>(stream: &S, half_close: impl Fn() -> io::Result<()> + Sync) -> Result<(), Error>
where
    S: Sync,
    for<'a> &'a S: Read + Write,
{
    let alarm = Alarm::new().context(|| "cannot create a wake-up fd".into())?;
    // Fds 0 and 1 stay open for the life of the process.
    let stdin = Interruptible::new(
        unsafe { BorrowedFd::borrow_raw(libc::STDIN_FILENO) },
        &alarm,
    );
    let stdout = Interruptible::new(
        unsafe { BorrowedFd::borrow_raw(libc::STDOUT_FILENO) },
        &alarm,
    );
    std::thread::scope(|s| {
        let upstream = std::thread::Builder::new()
            .name("stdin-to-server".into())
            .spawn_scoped(s, || {
                let mut stdin = stdin;
                let mut to_server = stream;
                let copied = io::copy(&mut stdin, &mut to_server);
                // Tell the server we are done sending; it still answers
                // what is in flight before it closes.
                let _ = half_close();
                copied.map(drop)
            })
            .context(|| "cannot start a thread".into())?;
        let mut stdout = stdout;
        let mut from_server = stream;
        let downstream = io::copy(&mut from_server, &mut stdout);
        alarm.ring();
        let upstream = upstream
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("thread stdin-to-server panicked")));
        downstream.context(|| "the connection to the server failed".into())?;
        // Stdin failing after the server ended the session is no failure.
        if let Err(e) = upstream {
            log::debug!("stdin copy ended: {e}");
        }
        Ok(())
    })
}
