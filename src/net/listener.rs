//! TCP and Unix listeners and their streams, behind one enum each.
//!
//! Listeners are non-blocking (they live in the acceptor's `Poll`), and
//! so are accepted streams: each session's worker moves both directions
//! from one `poll(2)` and never blocks in a read or a write. A Unix listener owns its socket
//! file: a stale one is replaced at bind, ours is removed on drop.

use std::io;
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use mio::net::{TcpListener, UnixListener};

use crate::config::ListenAddr;
use crate::error::Error;
use crate::session::table::ClientKey;

pub enum Listener {
    Tcp(TcpListener),
    Unix {
        listener: UnixListener,
        file: SocketFile,
    },
}

/// A connection accepted and ready for a session.
pub struct Accepted {
    pub stream: Stream,
    pub client: ClientKey,
    /// The peer as the child sees it in `FORKLINE_PEER`.
    pub peer: String,
}

impl Listener {
    pub fn bind(addr: &ListenAddr) -> Result<Listener, Error> {
        let bind_error = |source| Error::Bind {
            address: addr.to_string(),
            source,
        };
        match addr {
            ListenAddr::Tcp(sock) => TcpListener::bind(*sock)
                .map(Listener::Tcp)
                .map_err(bind_error),
            ListenAddr::Unix(path) => {
                remove_stale_socket(path).map_err(bind_error)?;
                let listener = UnixListener::bind(path).map_err(bind_error)?;
                Ok(Listener::Unix {
                    listener,
                    file: SocketFile(path.clone()),
                })
            }
        }
    }

    /// The address actually bound (port 0 resolved), for the stderr line.
    pub fn local_addr(&self) -> String {
        match self {
            Listener::Tcp(l) => match l.local_addr() {
                Ok(addr) => format!("tcp://{addr}"),
                Err(_) => "tcp://?".into(),
            },
            Listener::Unix { file, .. } => format!("unix:{}", file.0.display()),
        }
    }

    pub fn transport(&self) -> &'static str {
        match self {
            Listener::Tcp(_) => "tcp",
            Listener::Unix { .. } => "unix",
        }
    }

    /// Accepts one pending connection, non-blocking as the session's
    /// worker wants it.
    pub fn accept(&self) -> Result<Accepted, AcceptError> {
        match self {
            Listener::Tcp(l) => {
                let (stream, addr) = l.accept().map_err(AcceptError::from_accept)?;
                let stream: std::net::TcpStream = stream.into();
                // Messages are small and latency-bound: no Nagle delay.
                stream.set_nodelay(true).map_err(AcceptError::Connection)?;
                Ok(Accepted {
                    stream: Stream::Tcp(stream),
                    client: ClientKey::Ip(addr.ip()),
                    peer: addr.to_string(),
                })
            }
            Listener::Unix { listener, .. } => {
                let (stream, _) = listener.accept().map_err(AcceptError::from_accept)?;
                let stream: std::os::unix::net::UnixStream = stream.into();
                let uid = peer_uid(&stream).map_err(AcceptError::Connection)?;
                Ok(Accepted {
                    stream: Stream::Unix(stream),
                    client: ClientKey::Uid(uid),
                    peer: format!("unix:uid={uid}"),
                })
            }
        }
    }
}

/// Why `accept` gave no connection.
#[derive(Debug)]
pub enum AcceptError {
    /// The backlog is empty.
    Drained,
    /// `accept(2)` failed; the connection (if any) is still in the backlog.
    Listener(io::Error),
    /// A connection was accepted but could not be set up; it is closed.
    Connection(io::Error),
}

impl AcceptError {
    fn from_accept(e: io::Error) -> AcceptError {
        if e.kind() == io::ErrorKind::WouldBlock {
            AcceptError::Drained
        } else {
            AcceptError::Listener(e)
        }
    }
}

impl mio::event::Source for Listener {
    fn register(
        &mut self,
        registry: &mio::Registry,
        token: mio::Token,
        interests: mio::Interest,
    ) -> io::Result<()> {
        match self {
            Listener::Tcp(l) => l.register(registry, token, interests),
            Listener::Unix { listener, .. } => listener.register(registry, token, interests),
        }
    }

    fn reregister(
        &mut self,
        registry: &mio::Registry,
        token: mio::Token,
        interests: mio::Interest,
    ) -> io::Result<()> {
        match self {
            Listener::Tcp(l) => l.reregister(registry, token, interests),
            Listener::Unix { listener, .. } => listener.reregister(registry, token, interests),
        }
    }

    fn deregister(&mut self, registry: &mio::Registry) -> io::Result<()> {
        match self {
            Listener::Tcp(l) => l.deregister(registry),
            Listener::Unix { listener, .. } => listener.deregister(registry),
        }
    }
}

/// Replaces a stale socket file, but never anything else, and never a
/// socket someone is still listening on.
fn remove_stale_socket(path: &Path) -> io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "the path exists and is not a socket",
        ));
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "another process is listening on this socket",
        ));
    }
    std::fs::remove_file(path)
}

/// A Unix socket file we created; removed when dropped.
pub struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn peer_uid(stream: &std::os::unix::net::UnixStream) -> io::Result<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.uid)
}

/// A connected client stream, non-blocking: the session's worker reads
/// and writes its fd after `poll(2)` says so.
pub enum Stream {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

impl Stream {
    /// Ends the connection both ways (after a refusal line).
    pub fn shutdown(&self) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(Shutdown::Both),
            Stream::Unix(s) => s.shutdown(Shutdown::Both),
        };
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Tcp(s) => s.as_fd(),
            Stream::Unix(s) => s.as_fd(),
        }
    }
}
