//! When `accept(2)` itself fails for want of descriptors (EMFILE), the
//! acceptor spends its reserve descriptor to take each waiting connection,
//! send it a -32001 line naming the limit and close it, and drains the
//! whole backlog (issue 10, defect 5). Before, the edge-triggered accept
//! loop gave up on the first EMFILE and the backlog waited unseen.
//!
//! This runs the acceptor in this test process and uses up the process's
//! own descriptors, so it must stay the only test in this file: the limit
//! is process-wide.

mod common;

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::Path;

use common::{PATIENCE, TempDir, poll_until};
use forkline::config::{ChildCommand, Limits, ListenAddr, ServeConfig, ServerSpec};

const FD_LIMIT: u64 = 256;
const WAITING_CLIENTS: usize = 5;

#[test]
fn accept_out_of_descriptors_refuses_every_waiting_connection_with_a_line() {
    let limit = libc::rlimit {
        rlim_cur: FD_LIMIT,
        rlim_max: FD_LIMIT,
    };
    // SAFETY: plain setrlimit on this process.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
    let dir = TempDir::new("fd-exhaustion");
    let socket = dir.path.join("forkline.sock");
    let config = ServeConfig {
        servers: vec![ServerSpec {
            name: "default".into(),
            command: ChildCommand::new("cat", Vec::new()),
            limits: Limits {
                max_sessions: 1000,
                max_sessions_per_client: 1000,
                ..Limits::default()
            },
            prespawn: 0,
            listen: vec![ListenAddr::Unix(socket.clone())],
        }],
        http: Vec::new(),
        access: Default::default(),
        record: None,
        admin: None,
        source: None,
        node_id: forkline::http::node::NodeId::parse("fd-test").expect("valid"),
    };
    let server = std::thread::spawn(move || forkline::net::acceptor::serve(config));
    assert!(
        poll_until(PATIENCE, || socket.exists()),
        "the listener never appeared"
    );

    // The clients' sockets are made first and connected only once this
    // process has no descriptor left, so every `accept` the acceptor tries
    // fails with EMFILE and only its reserve can answer them. (The listener
    // is bound after the rest of serve's set-up, so nothing of the server's
    // is still to be opened.)
    let sockets: Vec<OwnedFd> = (0..WAITING_CLIENTS).map(|_| unix_socket()).collect();
    let mut hoard = Vec::new();
    for _ in 0..FD_LIMIT {
        match std::fs::File::open("/dev/null") {
            Ok(file) => hoard.push(file),
            Err(_) => break,
        }
    }
    assert!(
        std::fs::File::open("/dev/null").is_err(),
        "could not exhaust descriptors"
    );
    let mut clients: Vec<UnixStream> = sockets.into_iter().map(|fd| connect(fd, &socket)).collect();

    for client in &mut clients {
        client
            .set_read_timeout(Some(PATIENCE))
            .expect("read timeout");
        let mut line = String::new();
        client
            .read_to_string(&mut line)
            .expect("a refusal line, then EOF");
        let msg: serde_json::Value = serde_json::from_str(line.trim()).expect("one JSON line");
        assert_eq!(msg["error"]["code"], -32001, "{msg}");
        let text = msg["error"]["message"].as_str().unwrap_or_default();
        assert!(
            text.contains("file descriptors") && text.contains(&FD_LIMIT.to_string()),
            "the refusal names the descriptor limit: {text}"
        );
    }

    drop(hoard);
    drop(clients);
    // SAFETY: raising SIGTERM in this process: serve's handler takes it.
    unsafe { libc::raise(libc::SIGTERM) };
    assert!(
        poll_until(PATIENCE, || server.is_finished()),
        "serve did not shut down after SIGTERM"
    );
    server
        .join()
        .expect("the acceptor thread")
        .expect("serve returns Ok after SIGTERM");
}

/// An unconnected Unix stream socket: `UnixStream::connect` would need a
/// new descriptor at the moment there are none.
fn unix_socket() -> OwnedFd {
    // SAFETY: plain socket(2); the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` was just created and is owned by nothing else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn connect(fd: OwnedFd, path: &Path) -> UnixStream {
    // SAFETY: all-zero is a valid sockaddr_un.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    assert!(bytes.len() < addr.sun_path.len(), "socket path too long");
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: `addr` is a filled sockaddr_un of `len` bytes; `fd` is a socket.
    let rc = unsafe { libc::connect(fd.as_raw_fd(), (&raw const addr).cast(), len) };
    assert_eq!(rc, 0, "connect: {}", std::io::Error::last_os_error());
    UnixStream::from(fd)
}
