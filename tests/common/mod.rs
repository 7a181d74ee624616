//! Shared harness for the integration tests: start the real `forkline`
//! binary, find the addresses it bound, talk to it over real sockets, and
//! read `/proc` to check what it left behind.
//!
//! Every process started here is killed and waited for by its `Drop`, and
//! every wait is "poll until a deadline", never a fixed sleep.

#![allow(dead_code)] // each test file uses a different part of the harness

pub mod http;
pub mod interop;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Generous upper bound for anything that should happen "promptly"; tests
/// poll and return as soon as the condition holds, so this only matters
/// when something is broken.
pub const PATIENCE: Duration = Duration::from_secs(20);

pub fn forkline_bin() -> &'static str {
    env!("CARGO_BIN_EXE_forkline")
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The command line of the fake MCP server fixture with the given flags.
pub fn fake_server(flags: &[&str]) -> Vec<String> {
    let mut cmd = vec![
        "python3".to_string(),
        "-u".to_string(),
        fixture("fake_mcp_server.py").display().to_string(),
    ];
    cmd.extend(flags.iter().map(|f| f.to_string()));
    cmd
}

/// Polls `cond` until it holds or `timeout` passes; returns whether it held.
pub fn poll_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Polls until `child` exits; panics after `timeout` with `log()`.
fn wait_for_exit(child: &mut Child, timeout: Duration, log: impl Fn() -> String) -> ExitStatus {
    let mut status = None;
    poll_until(timeout, || {
        status = child.try_wait().expect("try_wait forkline");
        status.is_some()
    });
    status.unwrap_or_else(|| {
        panic!(
            "forkline still running after {timeout:?}; stderr:\n{}",
            log()
        )
    })
}

/// A running `forkline` process. Dropping it kills and reaps it.
pub struct Forkline {
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
    stderr_thread: Option<thread::JoinHandle<()>>,
    /// Addresses from the `forkline: listening on …` lines, in order.
    pub listening: Vec<String>,
    pub tempdir: TempDir,
}

impl Forkline {
    /// `forkline serve ARGS…`, waiting until `expected_listeners` listening
    /// lines have been printed.
    pub fn serve(args: &[&str], expected_listeners: usize) -> Forkline {
        Self::start("serve", args, expected_listeners)
    }

    /// `forkline serve --tcp 127.0.0.1:0 ARGS… -- CHILD…`, waiting for a
    /// listening line for each listener asked for.
    pub fn serve_tcp(args: &[&str], child: &[String]) -> Forkline {
        Self::serve_with_listener("--tcp", args, child, |_| {})
    }

    /// [`Forkline::serve_tcp`] with `configure` applied to the command
    /// first (a resource limit, see [`limit_fds`]).
    pub fn serve_tcp_configured(
        args: &[&str],
        child: &[String],
        configure: impl FnOnce(&mut Command),
    ) -> Forkline {
        Self::serve_with_listener("--tcp", args, child, configure)
    }

    /// `forkline serve --http 127.0.0.1:0 ARGS… -- CHILD…` (no `--` when
    /// `child` is empty: then the child is `forkline echo-server`).
    pub fn serve_http(args: &[&str], child: &[String]) -> Forkline {
        Self::serve_with_listener("--http", args, child, |_| {})
    }

    fn serve_with_listener(
        listener: &str,
        args: &[&str],
        child: &[String],
        configure: impl FnOnce(&mut Command),
    ) -> Forkline {
        let mut all: Vec<&str> = vec![listener, "127.0.0.1:0"];
        all.extend_from_slice(args);
        // Each prints its line in turn: a test that reads the second one
        // must not start after the first.
        let listeners = all
            .iter()
            .filter(|a| ["--tcp", "--unix", "--http", "--admin"].contains(a))
            .count();
        if !child.is_empty() {
            all.push("--");
            all.extend(child.iter().map(String::as_str));
        }
        Self::serve_configured(&all, listeners, configure)
    }

    /// `forkline serve ARGS…` with `configure` applied to the command
    /// first (an environment, a resource limit).
    pub fn serve_configured(
        args: &[&str],
        expected_listeners: usize,
        configure: impl FnOnce(&mut Command),
    ) -> Forkline {
        Self::start_with("serve", args, expected_listeners, configure)
    }

    fn start(subcommand: &str, args: &[&str], expected_listeners: usize) -> Forkline {
        Self::start_with(subcommand, args, expected_listeners, |_| {})
    }

    fn start_with(
        subcommand: &str,
        args: &[&str],
        expected_listeners: usize,
        configure: impl FnOnce(&mut Command),
    ) -> Forkline {
        let tempdir = TempDir::new("forkline");
        let mut command = Command::new(forkline_bin());
        configure(&mut command);
        let mut child = command
            .arg(subcommand)
            .args(args)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn forkline");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let pipe = child.stderr.take().expect("stderr piped");
        let sink = Arc::clone(&stderr);
        let stderr_thread = thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("FORKLINE_TEST_ECHO_LOG").is_some() {
                    eprintln!("forkline> {line}");
                }
                sink.lock().unwrap().push(line);
            }
        });
        let mut me = Forkline {
            child,
            stderr,
            stderr_thread: Some(stderr_thread),
            listening: Vec::new(),
            tempdir,
        };
        let found = poll_until(PATIENCE, || {
            me.listening = me
                .stderr_lines()
                .iter()
                .filter_map(|l| {
                    l.strip_prefix("forkline: listening on ")
                        .map(str::to_string)
                })
                .collect();
            me.listening.len() >= expected_listeners || me.try_exit_status().is_some()
        });
        if me.listening.len() < expected_listeners && me.try_exit_status().is_some() {
            // forkline exited (a usage error, say): let the reader reach
            // the end of its stderr, so the message below shows why.
            let reader = me.stderr_thread.take();
            if let Some(reader) = reader {
                if poll_until(PATIENCE, || reader.is_finished()) {
                    let _ = reader.join();
                }
            }
        }
        assert!(
            found && me.listening.len() >= expected_listeners,
            "forkline did not report {expected_listeners} listener(s); stderr:\n{}",
            me.stderr_text()
        );
        me
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The first `tcp://` listener's address.
    pub fn tcp_addr(&self) -> SocketAddr {
        self.listening
            .iter()
            .find_map(|l| l.strip_prefix("tcp://"))
            .expect("a tcp listener")
            .parse()
            .expect("tcp listener address parses")
    }

    /// The first `http://` listener's MCP endpoint, as printed
    /// (`http://127.0.0.1:PORT/mcp`).
    pub fn http_url(&self) -> String {
        self.listening
            .iter()
            .find(|l| l.starts_with("http://"))
            .expect("an http listener")
            .clone()
    }

    /// The first `http://` listener's origin, `http://127.0.0.1:PORT`, to
    /// which the paths of the other endpoints (`/sse`) are appended.
    pub fn http_origin(&self) -> String {
        let url = self.http_url();
        let host_start = "http://".len();
        match url[host_start..].find('/') {
            Some(slash) => url[..host_start + slash].to_string(),
            None => url,
        }
    }

    pub fn connect(&self) -> Client {
        Client::tcp(self.tcp_addr())
    }

    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    pub fn stderr_text(&self) -> String {
        self.stderr_lines().join("\n")
    }

    /// Waits until some stderr line contains `needle`; returns that line.
    pub fn wait_for_log(&self, needle: &str) -> String {
        let mut hit = None;
        poll_until(PATIENCE, || {
            hit = self.stderr_lines().into_iter().find(|l| l.contains(needle));
            hit.is_some()
        });
        hit.unwrap_or_else(|| {
            panic!(
                "no log line contains {needle:?}; stderr:\n{}",
                self.stderr_text()
            )
        })
    }

    pub fn signal(&self, signal: i32) {
        let rc = unsafe { libc::kill(self.pid() as i32, signal) };
        assert_eq!(rc, 0, "kill({}, {signal})", self.pid());
    }

    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait forkline")
    }

    /// Waits for forkline to exit on its own; panics after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let status = wait_for_exit(&mut self.child, timeout, || {
            self.stderr.lock().unwrap().join("\n")
        });
        if let Some(t) = self.stderr_thread.take() {
            t.join().expect("stderr reader");
        }
        status
    }
}

impl Drop for Forkline {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if let Some(t) = self.stderr_thread.take() {
            let _ = t.join();
        }
    }
}

/// A client connection speaking newline-delimited JSON.
pub struct Client {
    writer: Box<dyn Write + Send>,
    reader: BufReader<Box<dyn Read + Send>>,
    shutdown: Box<dyn Fn() + Send>,
    set_timeout: Box<dyn Fn(Option<Duration>) + Send>,
}

impl Client {
    pub fn tcp(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect to forkline");
        stream.set_nodelay(true).expect("nodelay");
        let reader = stream.try_clone().expect("clone stream");
        let closer = stream.try_clone().expect("clone stream");
        let timer = stream.try_clone().expect("clone stream");
        Client {
            writer: Box::new(stream),
            reader: BufReader::new(Box::new(reader)),
            shutdown: Box::new(move || {
                let _ = closer.shutdown(std::net::Shutdown::Write);
            }),
            set_timeout: Box::new(move |t| {
                let _ = timer.set_read_timeout(t);
            }),
        }
    }

    pub fn unix(path: &Path) -> Client {
        let stream = UnixStream::connect(path).expect("connect to forkline unix socket");
        let reader = stream.try_clone().expect("clone stream");
        let closer = stream.try_clone().expect("clone stream");
        let timer = stream.try_clone().expect("clone stream");
        Client {
            writer: Box::new(stream),
            reader: BufReader::new(Box::new(reader)),
            shutdown: Box::new(move || {
                let _ = closer.shutdown(std::net::Shutdown::Write);
            }),
            set_timeout: Box::new(move |t| {
                let _ = timer.set_read_timeout(t);
            }),
        }
    }

    /// Sends raw bytes as they are (no newline added).
    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.writer.write_all(bytes)?;
        self.writer.flush()
    }

    /// Sends one line (a newline is appended).
    pub fn send(&mut self, line: &str) {
        self.send_raw(format!("{line}\n").as_bytes())
            .expect("send to forkline");
    }

    /// Sends a request `{"jsonrpc":"2.0","id":ID,"method":METHOD,"params":PARAMS}`.
    pub fn request(&mut self, id: serde_json::Value, method: &str, params: serde_json::Value) {
        let msg =
            serde_json::json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        self.send(&msg.to_string());
    }

    /// Reads one line, waiting at most `timeout`. `None` on EOF or timeout.
    pub fn recv_line_within(&mut self, timeout: Duration) -> Option<String> {
        self.set_read_timeout(Some(timeout));
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(line.trim_end_matches(['\r', '\n']).to_string()),
        }
    }

    /// Reads one JSON message; panics on EOF, timeout or bad JSON.
    pub fn recv(&mut self) -> serde_json::Value {
        let line = self
            .recv_line_within(PATIENCE)
            .expect("a line from forkline before EOF/timeout");
        serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("bad JSON from forkline ({e}): {line}"))
    }

    /// Sends a request and returns the next message.
    pub fn call(
        &mut self,
        id: serde_json::Value,
        method: &str,
        params: serde_json::Value,
    ) -> serde_json::Value {
        self.request(id, method, params);
        self.recv()
    }

    /// True once the server side closed the connection (EOF), within `timeout`.
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            self.set_read_timeout(Some(left));
            let mut buf = [0u8; 4096];
            match self.reader.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue, // drain whatever else was in flight
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }

    /// Half-closes the write side: the proxy sees the client's EOF.
    pub fn close_write(&self) {
        (self.shutdown)();
    }

    fn set_read_timeout(&mut self, timeout: Option<Duration>) {
        (self.set_timeout)(timeout);
    }
}

/// A unique, self-removing temporary directory.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("{prefix}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

// ---- /proc inspection ------------------------------------------------------

pub fn pid_alive(pid: u32) -> bool {
    // A zombie still has a /proc entry; treat it as not alive but visible
    // through `zombie_children`.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => proc_state(&stat) != Some('Z'),
        Err(_) => false,
    }
}

fn proc_state(stat: &str) -> Option<char> {
    // The command name is in parentheses and may contain spaces.
    let after = &stat[stat.rfind(')')? + 1..];
    after.trim_start().chars().next()
}

fn proc_ppid(stat: &str) -> Option<u32> {
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// Direct children of `pid` as (pid, state).
pub fn children_of(pid: u32) -> Vec<(u32, char)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        if proc_ppid(&stat) == Some(pid) {
            if let Some(state) = proc_state(&stat) {
                out.push((child, state));
            }
        }
    }
    out
}

pub fn zombie_children(pid: u32) -> Vec<u32> {
    children_of(pid)
        .into_iter()
        .filter(|(_, s)| *s == 'Z')
        .map(|(p, _)| p)
        .collect()
}

/// Sets the resource limit `resource` (soft and hard) of forkline to
/// `limit` before it starts; its children inherit it.
pub fn set_rlimit(command: &mut Command, resource: libc::__rlimit_resource_t, limit: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setrlimit is async-signal-safe; nothing else runs in the
    // child between fork and exec.
    unsafe {
        command.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(resource, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Sets forkline's descriptor limit, `RLIMIT_NOFILE`, to `limit`.
pub fn limit_fds(command: &mut Command, limit: u64) {
    set_rlimit(command, libc::RLIMIT_NOFILE, limit);
}

/// A descriptor limit under which `serve`'s default 64 sessions fit at
/// three descriptors each (192) but not at four (256 and the headroom), so
/// that its children get their stdin on the socket pair they share with
/// stderr, not on a pipe of their own.
pub const STDIN_ON_SOCKET_FD_LIMIT: u64 = 256;

/// Configures a forkline whose children take their stdin from the socket.
pub fn stdin_on_socket(command: &mut Command) {
    limit_fds(command, STDIN_ON_SOCKET_FD_LIMIT);
}

pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

pub fn thread_names(pid: u32) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("comm")).ok())
        .map(|s| s.trim().to_string())
        .collect()
}

pub fn thread_count(pid: u32) -> usize {
    thread_names(pid).len()
}

/// Pids of every live process whose environment has
/// `FORKLINE_SESSION_ID` and whose ancestor chain (or orphaned state) came
/// from a test: used to prove children and grandchildren are gone.
pub fn pids_alive(pids: &HashSet<u32>) -> Vec<u32> {
    pids.iter().copied().filter(|p| pid_alive(*p)).collect()
}

// ---- more harness: raw streams, piped processes, /proc figures ------------
//
// Added for the serve/lifecycle/shutdown/stdio tests. Nothing above was
// changed; these only add to it.

impl Client {
    /// Wraps an already connected TCP stream (e.g. one bound to a chosen
    /// local address with `tcp_connect_from`). The caller may keep clones
    /// of the stream, e.g. to read its local address or to write raw bytes
    /// with a write timeout.
    pub fn from_tcp_stream(stream: TcpStream) -> Client {
        stream.set_nodelay(true).expect("nodelay");
        let reader = stream.try_clone().expect("clone stream");
        let closer = stream.try_clone().expect("clone stream");
        let timer = stream.try_clone().expect("clone stream");
        Client {
            writer: Box::new(stream),
            reader: BufReader::new(Box::new(reader)),
            shutdown: Box::new(move || {
                let _ = closer.shutdown(std::net::Shutdown::Write);
            }),
            set_timeout: Box::new(move |t| {
                let _ = timer.set_read_timeout(t);
            }),
        }
    }

    /// Wraps an already connected Unix stream.
    pub fn from_unix_stream(stream: UnixStream) -> Client {
        let reader = stream.try_clone().expect("clone stream");
        let closer = stream.try_clone().expect("clone stream");
        let timer = stream.try_clone().expect("clone stream");
        Client {
            writer: Box::new(stream),
            reader: BufReader::new(Box::new(reader)),
            shutdown: Box::new(move || {
                let _ = closer.shutdown(std::net::Shutdown::Write);
            }),
            set_timeout: Box::new(move |t| {
                let _ = timer.set_read_timeout(t);
            }),
        }
    }

    /// Reads one line as raw bytes (without its `\n`), waiting at most
    /// `timeout`. `None` on EOF or timeout.
    pub fn recv_raw_line_within(&mut self, timeout: Duration) -> Option<Vec<u8>> {
        self.set_read_timeout(Some(timeout));
        let mut line = Vec::new();
        match self.reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => {
                if line.last() == Some(&b'\n') {
                    line.pop();
                }
                Some(line)
            }
        }
    }

    /// `fake/env` of the fake MCP server behind this session.
    pub fn fake_env(&mut self, id: u64) -> FakeEnv {
        let reply = self.call(serde_json::json!(id), "fake/env", serde_json::json!({}));
        assert_eq!(
            reply["id"],
            serde_json::json!(id),
            "fake/env answer: {reply}"
        );
        FakeEnv::from_result(&reply["result"])
    }
}

/// What `fake/env` reports about the child process behind a session.
#[derive(Debug, Clone)]
pub struct FakeEnv {
    pub pid: u32,
    pub pgid: u32,
    pub session_id: Option<String>,
    pub peer: Option<String>,
    pub grandchild_pid: Option<u32>,
}

impl FakeEnv {
    pub fn from_result(r: &serde_json::Value) -> FakeEnv {
        let pid = |v: &serde_json::Value| v.as_u64().map(|p| p as u32);
        FakeEnv {
            pid: pid(&r["pid"]).unwrap_or_else(|| panic!("fake/env without pid: {r}")),
            pgid: pid(&r["pgid"]).unwrap_or_else(|| panic!("fake/env without pgid: {r}")),
            session_id: r["session_id"].as_str().map(str::to_string),
            peer: r["peer"].as_str().map(str::to_string),
            grandchild_pid: pid(&r["grandchild_pid"]),
        }
    }
}

/// Checks that `msg` is a JSON-RPC error with `code` and `id`; returns
/// its message.
pub fn assert_error(msg: &serde_json::Value, code: i64, id: &serde_json::Value) -> String {
    assert_eq!(msg["jsonrpc"], "2.0", "not a JSON-RPC 2.0 message: {msg}");
    assert_eq!(
        msg["error"]["code"],
        serde_json::json!(code),
        "wrong error code in {msg}"
    );
    assert_eq!(&msg["id"], id, "wrong id in {msg}");
    assert!(msg.get("result").is_none(), "error with a result: {msg}");
    msg["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("error without a message string: {msg}"))
        .to_string()
}

/// Checks that `msg` is the fake server's default echo answer to
/// `method` with `id`.
pub fn assert_echo(msg: &serde_json::Value, id: &serde_json::Value, method: &str) {
    assert_eq!(msg["jsonrpc"], "2.0", "not a JSON-RPC 2.0 message: {msg}");
    assert_eq!(&msg["id"], id, "wrong id in {msg}");
    assert_eq!(
        msg["result"]["method"], method,
        "not the echo of {method}: {msg}"
    );
}

/// True if `text` mentions `status` as an exit status: some word `exit`
/// (any case) and the number as a word of its own.
pub fn mentions_exit_status(text: &str, status: i32) -> bool {
    let lower = text.to_lowercase();
    let number = status.to_string();
    lower.contains("exit")
        && lower
            .split(|c: char| !c.is_ascii_alphanumeric() && c != '-')
            .any(|w| w == number)
}

/// Connects to `remote` from a chosen local IP (any of 127.0.0.0/8 works
/// on Linux loopback), so one test can be two different clients.
pub fn tcp_connect_from(
    local: std::net::Ipv4Addr,
    remote: SocketAddr,
) -> std::io::Result<TcpStream> {
    use std::os::fd::FromRawFd;
    let SocketAddr::V4(remote) = remote else {
        panic!("IPv4 only: {remote}")
    };
    let sockaddr = |ip: std::net::Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls on a descriptor we own; it is closed on
    // every error path and otherwise handed to TcpStream, which owns it.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let bind_to = sockaddr(local, 0);
        let connect_to = sockaddr(*remote.ip(), remote.port());
        if libc::bind(fd, &bind_to as *const _ as *const libc::sockaddr, len) != 0
            || libc::connect(fd, &connect_to as *const _ as *const libc::sockaddr, len) != 0
        {
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            return Err(err);
        }
        Ok(TcpStream::from_raw_fd(fd))
    }
}

/// A field of `/proc/PID/status` in bytes (`VmRSS`, `VmHWM`, …).
pub fn proc_status_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Resident memory of `pid` in bytes.
pub fn rss_bytes(pid: u32) -> u64 {
    proc_status_bytes(pid, "VmRSS").unwrap_or_else(|| panic!("no VmRSS for pid {pid}"))
}

/// Peak resident memory of `pid` in bytes.
pub fn peak_rss_bytes(pid: u32) -> u64 {
    proc_status_bytes(pid, "VmHWM").unwrap_or_else(|| panic!("no VmHWM for pid {pid}"))
}

/// Bytes `pid` has passed to write-like system calls (`wchar` in
/// `/proc/PID/io`).
pub fn bytes_written(pid: u32) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("wchar:"))
        .and_then(|v| v.trim().parse().ok())
}

/// The state letter of `pid` (`R`, `S`, `Z`, …), if it exists.
pub fn process_state(pid: u32) -> Option<char> {
    proc_state(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// The command line of `pid`, arguments joined by spaces.
pub fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// Last line of defence for processes forkline should have ended (fixture
/// children and their `sleep` grandchildren): on drop, any that is still
/// alive and still runs the fixture or `sleep` gets SIGKILL, so a failing
/// test does not leave them behind. Tests assert they are gone *before*
/// this runs; it never makes a test pass.
#[derive(Default)]
pub struct StrayGuard {
    pids: Vec<u32>,
}

impl StrayGuard {
    pub fn new() -> StrayGuard {
        StrayGuard::default()
    }

    pub fn watch(&mut self, pid: u32) {
        self.pids.push(pid);
    }

    pub fn watch_env(&mut self, env: &FakeEnv) {
        self.watch(env.pid);
        if let Some(g) = env.grandchild_pid {
            self.watch(g);
        }
    }
}

impl Drop for StrayGuard {
    fn drop(&mut self) {
        for &pid in &self.pids {
            let cmd = cmdline(pid);
            if pid_alive(pid) && (cmd.contains("fake_mcp_server") || cmd.starts_with("sleep")) {
                // SAFETY: kill(2) on a pid we just checked is our fixture.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
    }
}

/// Asserts that every pid in `pids` is gone (or a zombie of someone else)
/// within `PATIENCE`, naming the survivors.
pub fn assert_all_gone(pids: &[u32], what: &str) {
    let gone = poll_until(PATIENCE, || pids.iter().all(|p| !pid_alive(*p)));
    let alive: Vec<String> = pids
        .iter()
        .filter(|p| pid_alive(**p))
        .map(|p| format!("{p} ({})", cmdline(*p)))
        .collect();
    assert!(gone, "{what}: still alive after {PATIENCE:?}: {alive:?}");
}

/// Asserts that `pid` has no zombie children within `PATIENCE`.
pub fn assert_no_zombies(pid: u32) {
    let clean = poll_until(PATIENCE, || zombie_children(pid).is_empty());
    assert!(
        clean,
        "forkline (pid {pid}) left zombie children: {:?}",
        zombie_children(pid)
    );
}

/// A `forkline` process run with piped stdin/stdout/stderr (for `stdio`
/// and `connect`). Stdout lines arrive on a channel so reads can time
/// out. Dropping it kills and reaps the process.
pub struct Piped {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    stdout: std::sync::mpsc::Receiver<Vec<u8>>,
    stderr: Arc<Mutex<Vec<String>>>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Piped {
    /// `forkline ARGS…` with RUST_LOG=debug.
    pub fn spawn(args: &[&str]) -> Piped {
        let mut child = Command::new(forkline_bin())
            .args(args)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn forkline");
        let stdin = child.stdin.take();
        let mut out = BufReader::new(child.stdout.take().expect("stdout piped"));
        let err = BufReader::new(child.stderr.take().expect("stderr piped"));
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout_thread = thread::spawn(move || {
            loop {
                let mut line = Vec::new();
                match out.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if line.last() == Some(&b'\n') {
                            line.pop();
                        }
                        if tx.send(line).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&stderr);
        let stderr_thread = thread::spawn(move || {
            for line in err.lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("FORKLINE_TEST_ECHO_LOG").is_some() {
                    eprintln!("forkline> {line}");
                }
                sink.lock().unwrap().push(line);
            }
        });
        Piped {
            child,
            stdin,
            stdout: rx,
            stderr,
            threads: vec![stdout_thread, stderr_thread],
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        stdin.write_all(bytes)?;
        stdin.flush()
    }

    pub fn send(&mut self, line: &str) {
        self.send_raw(format!("{line}\n").as_bytes())
            .expect("write to forkline's stdin");
    }

    pub fn request(&mut self, id: serde_json::Value, method: &str, params: serde_json::Value) {
        let msg =
            serde_json::json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        self.send(&msg.to_string());
    }

    /// One stdout line within `timeout`; `None` on EOF or timeout.
    pub fn recv_line_within(&self, timeout: Duration) -> Option<String> {
        self.stdout
            .recv_timeout(timeout)
            .ok()
            .map(|l| String::from_utf8_lossy(&l).into_owned())
    }

    /// One JSON message from stdout; panics on EOF, timeout or bad JSON.
    pub fn recv(&self) -> serde_json::Value {
        let line = self.recv_line_within(PATIENCE).unwrap_or_else(|| {
            panic!(
                "no line on forkline's stdout before EOF/timeout; stderr:\n{}",
                self.stderr_text()
            )
        });
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad JSON on stdout ({e}): {line}"))
    }

    pub fn call(
        &mut self,
        id: serde_json::Value,
        method: &str,
        params: serde_json::Value,
    ) -> serde_json::Value {
        self.request(id, method, params);
        self.recv()
    }

    /// True once stdout reached EOF within `timeout`; lines still in
    /// flight are skipped.
    pub fn stdout_closed_within(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(_) => continue,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return true,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => return false,
            }
        }
    }

    /// Closes forkline's stdin: it sees EOF.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait forkline")
    }

    /// Waits for forkline to exit on its own; panics after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let status = wait_for_exit(&mut self.child, timeout, || {
            self.stderr.lock().unwrap().join("\n")
        });
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        status
    }
}

impl Drop for Piped {
    fn drop(&mut self) {
        self.stdin = None;
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// What a finished `forkline` run printed.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `forkline ARGS…` with `input` on stdin (then EOF) to its end,
/// killing it and panicking if it is still running after `PATIENCE`.
pub fn run_forkline(args: &[&str], input: &[u8]) -> Finished {
    let mut p = Piped::spawn(args);
    // The process may exit before reading its input (e.g. a usage error).
    let _ = p.send_raw(input);
    p.close_stdin();
    let status = p.wait_exit(PATIENCE);
    let mut stdout = Vec::new();
    while let Ok(line) = p.stdout.try_recv() {
        stdout.push(String::from_utf8_lossy(&line).into_owned());
    }
    Finished {
        status,
        stdout: stdout.join("\n"),
        stderr: p.stderr_text(),
    }
}

/// Waits until some stderr line of `forkline` has `word` as a whole
/// whitespace-separated word (so `pid=12` does not match `pid=123`).
pub fn wait_for_log_word(forkline: &Forkline, word: &str) -> String {
    let mut hit = None;
    poll_until(PATIENCE, || {
        hit = forkline
            .stderr_lines()
            .into_iter()
            .find(|l| l.split_whitespace().any(|w| w == word));
        hit.is_some()
    });
    hit.unwrap_or_else(|| {
        panic!(
            "no log line has the word {word:?}; stderr:\n{}",
            forkline.stderr_text()
        )
    })
}

/// Makes closing `stream` reset the connection (SO_LINGER 0 → RST)
/// instead of a graceful FIN that would queue behind unsent data.
pub fn abort_on_close(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a live socket with a correctly sized value.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(
        rc,
        0,
        "setsockopt(SO_LINGER): {}",
        std::io::Error::last_os_error()
    );
}

// ---- engine tests: the fixture child of a session, the shutdown probe -----
//
// Added for engine_limits.rs and engine_shutdown.rs; nothing above changed.

/// The pid of the one fixture child `forkline` runs (for fixtures that
/// cannot answer `fake/env`, e.g. `--no-read`); panics after `PATIENCE`.
pub fn the_fixture_child(forkline: &Forkline) -> u32 {
    let mut pid = None;
    poll_until(PATIENCE, || {
        let mut found = children_of(forkline.pid())
            .into_iter()
            .filter(|(p, state)| *state != 'Z' && cmdline(*p).contains("fake_mcp_server"));
        pid = found.next().map(|(p, _)| p);
        assert!(
            found.next().is_none(),
            "more than one fixture child of forkline {}",
            forkline.pid()
        );
        pid.is_some()
    });
    pid.unwrap_or_else(|| {
        panic!(
            "no fixture child of forkline {} within {PATIENCE:?}; log:\n{}",
            forkline.pid(),
            forkline.stderr_text()
        )
    })
}

/// After a shutdown signal: sends `probe-N` requests (method `probe`)
/// until one is refused with -32004, which proves the session has seen the
/// shutdown. Probes the session took before it saw the signal must be the
/// fake's echo. Returns how long the refused probe waited for its answer.
pub fn probe_until_shutting_down(client: &mut Client) -> Duration {
    let deadline = Instant::now() + PATIENCE;
    for n in 0..10_000u32 {
        assert!(
            Instant::now() < deadline,
            "no -32004 for a new request within {PATIENCE:?} of the signal"
        );
        let id = serde_json::json!(format!("probe-{n}"));
        let sent = Instant::now();
        let reply = client.call(id.clone(), "probe", serde_json::json!({}));
        let waited = sent.elapsed();
        if reply.get("error").is_some() {
            assert_error(&reply, -32004, &id);
            return waited;
        }
        assert_echo(&reply, &id, "probe");
    }
    panic!("10000 probes and none refused with -32004");
}
