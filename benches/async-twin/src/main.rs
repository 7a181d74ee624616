//! forkline-twin: forkline's TCP session proxy written the async way — the
//! comparator of issue 5. It is what a careful engineer writes with tokio:
//! a multi-threaded runtime, one task per connection, `tokio::process` for
//! the child (its own process group, killed on drop), framed line reads
//! through a `tokio_util` codec, bounded `mpsc` channels, `select!` over
//! the two directions, the idle timer and shutdown.
//!
//! Same contract as `forkline serve --tcp` for what the benchmark exercises:
//! one fresh child per connection; each client line must be valid JSON-RPC
//! or is answered with -32700/-32600 and never reaches the child; a line
//! over `--max-message-bytes` is discarded and answered with -32003; the
//! limits `--max-sessions` / `--max-sessions-per-client` refuse with -32001;
//! `--idle-timeout`; requests the child never answered get -32002; the
//! child's stderr goes to the log. On SIGTERM/SIGINT: stop accepting, let
//! sessions answer what is in flight for `--shutdown-grace`, then end.
//!
//! `tokio::process` gives the child pipes; `--child-socket-pair` gives it
//! one socket pair for stdin and stdout instead, as socat does (and
//! forkline did before its child's stdout became a pipe), so the benchmark
//! can tell what the runtime costs from what the transport does.
//!
//! It prints `forkline-twin: listening on tcp://ADDR` on stderr once bound,
//! as forkline does, so the benchmark finds the port.

mod codec;
mod message;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use clap::{ArgAction, Parser};
use futures_util::{SinkExt, StreamExt};
use log::{debug, info, warn};
use tokio::io::AsyncWriteExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, ChildStderr, Command};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::codec::{FramedRead, FramedWrite};

use codec::{Frame, JsonLines};
use message::{CHILD_GONE, Invalid, SESSION_REFUSED, TOO_LARGE, classify, error_line, sniff_id};

/// Messages queued towards the client, as in forkline.
const CHANNEL_CAPACITY: usize = 16;
const READ_BUFFER_BYTES: usize = 16 * 1024;
const STDERR_LINE_BYTES: usize = 8 * 1024;
const SHUTTING_DOWN: i64 = -32004;

#[derive(Debug, Parser)]
#[command(
    name = "forkline-twin",
    about = "forkline's TCP session proxy written with tokio (a benchmark comparator)"
)]
struct Args {
    /// Listen for raw TCP (newline-delimited JSON-RPC)
    #[arg(long = "tcp", value_name = "ADDR", default_value = "127.0.0.1:7070")]
    tcp: SocketAddr,
    /// Live sessions at once
    #[arg(long, value_name = "N", default_value_t = 64)]
    max_sessions: usize,
    /// Live sessions per peer IP
    #[arg(long, value_name = "N", default_value_t = 16)]
    max_sessions_per_client: usize,
    /// End a session after this many seconds without a message; 0 = never
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    idle_timeout: u64,
    /// Largest message either way, in bytes
    #[arg(long, value_name = "N", default_value_t = 4 << 20)]
    max_message_bytes: usize,
    /// Seconds a child gets to exit, and in-flight requests get at shutdown
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    shutdown_grace: u64,
    /// The child's stdin and stdout on one socket pair, as socat has them,
    /// instead of two pipes (the benchmark's transport comparison)
    #[arg(long)]
    child_socket_pair: bool,
    #[arg(short, long, action = ArgAction::Count)]
    verbose: u8,
    #[arg(short, long, action = ArgAction::Count, conflicts_with = "verbose")]
    quiet: u8,
    /// The MCP server to run for each session
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

/// The child's stdin and stdout: two pipes, or the halves of one socket
/// pair (`--child-socket-pair`). Boxed, so one session body serves both; a
/// virtual call per read or write is nothing beside the system call.
type ChildIn = Box<dyn AsyncWrite + Unpin + Send>;
type ChildOut = Box<dyn AsyncRead + Unpin + Send>;

/// What every session shares.
struct Proxy {
    args: Args,
    sessions: Arc<Semaphore>,
    per_client: Mutex<HashMap<IpAddr, usize>>,
    next_id: AtomicU64,
    shutdown: watch::Receiver<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EndReason {
    ClientClosed,
    ChildExited,
    IdleTimeout,
    Shutdown,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let level = match (args.verbose, args.quiet) {
        (0, 0) => log::LevelFilter::Info,
        (0, 1) => log::LevelFilter::Warn,
        (0, _) => log::LevelFilter::Error,
        (1, _) => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    };
    env_logger::Builder::new()
        .filter_level(level)
        .parse_env("RUST_LOG")
        .init();

    let listener = match TcpListener::bind(args.tcp).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("error: cannot listen on {}: {e}", args.tcp);
            return ExitCode::from(1);
        }
    };
    match listener.local_addr() {
        Ok(addr) => eprintln!("forkline-twin: listening on tcp://{addr}"),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    }
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(term), Ok(int)) => (term, int),
        _ => {
            eprintln!("error: cannot install signal handlers");
            return ExitCode::from(1);
        }
    };

    let (stop, stopped) = watch::channel(false);
    let max_sessions = args.max_sessions;
    let grace = Duration::from_secs(args.shutdown_grace);
    let proxy = Arc::new(Proxy {
        sessions: Arc::new(Semaphore::new(max_sessions)),
        per_client: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(0),
        shutdown: stopped,
        args,
    });

    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => admit(&proxy, stream, peer),
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    drop(listener);
    info!("shutting down");
    let _ = stop.send(true);
    // Every session holds a permit until it has ended, so having them all
    // back means every session is done. A second signal skips the wait.
    let all = u32::try_from(max_sessions).unwrap_or(u32::MAX);
    tokio::select! {
        _ = proxy.sessions.acquire_many(all) => {}
        _ = tokio::time::sleep(grace * 3 + Duration::from_secs(1)) => warn!("sessions still running at exit"),
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    ExitCode::SUCCESS
}

/// Admits a connection against the limits and spawns its session task, or
/// refuses it with -32001.
fn admit(proxy: &Arc<Proxy>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let Ok(permit) = Arc::clone(&proxy.sessions).try_acquire_owned() else {
        let n = proxy.args.max_sessions;
        return refuse(
            stream,
            peer,
            format!("session refused: --max-sessions reached ({n} of {n} sessions live)"),
        );
    };
    let Some(slot) = ClientSlot::take(proxy, peer.ip()) else {
        let n = proxy.args.max_sessions_per_client;
        let ip = peer.ip();
        return refuse(
            stream,
            peer,
            format!(
                "session refused: --max-sessions-per-client reached ({n} of {n} sessions live for {ip})"
            ),
        );
    };
    let id = proxy.next_id.fetch_add(1, Ordering::Relaxed) + 1;
    tokio::spawn(session(Arc::clone(proxy), id, stream, peer, permit, slot));
}

fn refuse(mut stream: TcpStream, peer: SocketAddr, why: String) {
    info!("refused peer={peer} ({why})");
    tokio::spawn(async move {
        let mut line = error_line(None, SESSION_REFUSED, &why).to_vec();
        line.push(b'\n');
        let _ = timeout(Duration::from_secs(1), async {
            stream.write_all(&line).await?;
            stream.shutdown().await
        })
        .await;
    });
}

/// A session's place in the per-client count; `Drop` gives it back.
struct ClientSlot {
    proxy: Arc<Proxy>,
    ip: IpAddr,
}

impl ClientSlot {
    fn take(proxy: &Arc<Proxy>, ip: IpAddr) -> Option<ClientSlot> {
        let mut counts = proxy.per_client.lock().expect("per-client lock");
        let n = counts.entry(ip).or_insert(0);
        if *n >= proxy.args.max_sessions_per_client {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            proxy: Arc::clone(proxy),
            ip,
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut counts = self.proxy.per_client.lock().expect("per-client lock");
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// When the session last saw a message, for the idle timer.
struct Activity {
    started: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Completes once nothing has moved for `idle`; never without a limit.
    async fn idle(&self, idle: Option<Duration>) {
        let Some(idle) = idle else {
            return std::future::pending().await;
        };
        loop {
            let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = self.started + last + idle;
            if Instant::now() >= deadline {
                return;
            }
            sleep_until(deadline).await;
        }
    }
}

type Pending = Mutex<HashSet<Box<str>>>;

/// One session, from spawn to the last byte. The permit and the client
/// slot are released when it returns.
async fn session(
    proxy: Arc<Proxy>,
    id: u64,
    stream: TcpStream,
    peer: SocketAddr,
    _permit: OwnedSemaphorePermit,
    _slot: ClientSlot,
) {
    let args = &proxy.args;
    let max = args.max_message_bytes;
    let grace = Duration::from_secs(args.shutdown_grace);
    let idle = (args.idle_timeout > 0).then(|| Duration::from_secs(args.idle_timeout));
    let activity = Activity {
        started: Instant::now(),
        last_ms: AtomicU64::new(0),
    };

    let socket_pair = match args
        .child_socket_pair
        .then(std::os::unix::net::UnixStream::pair)
    {
        None => None,
        Some(Ok(pair)) => Some(pair),
        Some(Err(e)) => {
            warn!("[s{id}] cannot create the child's socket pair: {e}");
            return;
        }
    };
    let (child_stdin, child_stdout) = match &socket_pair {
        None => (Stdio::piped(), Stdio::piped()),
        Some((_, theirs)) => match (theirs.try_clone(), theirs.try_clone()) {
            (Ok(a), Ok(b)) => (Stdio::from(OwnedFd::from(a)), Stdio::from(OwnedFd::from(b))),
            _ => {
                warn!("[s{id}] cannot duplicate the child's socket");
                return;
            }
        },
    };
    let spawned = Command::new(&args.command[0])
        .args(&args.command[1..])
        .env("FORKLINE_SESSION_ID", format!("s{id}"))
        .env("FORKLINE_PEER", peer.to_string())
        .stdin(child_stdin)
        .stdout(child_stdout)
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            warn!("[s{id}] failed to spawn `{}`: {e}", args.command.join(" "));
            return;
        }
    };
    let pid = child.id();
    info!("[s{id}] session started peer={peer} child_pid={pid:?}");
    let (stdin, stdout, stderr): (ChildIn, ChildOut, _) = match (
        socket_pair,
        child.stdin.take(),
        child.stdout.take(),
        child.stderr.take(),
    ) {
        (None, Some(stdin), Some(stdout), Some(stderr)) => {
            (Box::new(stdin), Box::new(stdout), stderr)
        }
        (Some((ours, theirs)), None, None, Some(stderr)) => {
            drop(theirs);
            let ours = ours
                .set_nonblocking(true)
                .and_then(|()| tokio::net::UnixStream::from_std(ours));
            match ours {
                Ok(ours) => {
                    let (read, write) = ours.into_split();
                    (Box::new(write), Box::new(read), stderr)
                }
                Err(e) => {
                    warn!("[s{id}] cannot use the child's socket: {e}");
                    return;
                }
            }
        }
        _ => unreachable!("stderr is piped, stdin and stdout as asked"),
    };
    let stderr_task = tokio::spawn(log_stderr(id, stderr));
    let (read_half, write_half) = stream.into_split();
    let (to_client, for_client) = mpsc::channel(CHANNEL_CAPACITY);
    let writer = tokio::spawn(write_lines(write_half, for_client, max));
    let mut client_in =
        FramedRead::with_capacity(read_half, JsonLines::new(max), READ_BUFFER_BYTES);
    let mut child_in = FramedWrite::new(stdin, JsonLines::new(max));
    let mut child_out = FramedRead::with_capacity(stdout, JsonLines::new(max), READ_BUFFER_BYTES);
    let pending = Pending::default();
    let mut shutdown = proxy.shutdown.clone();

    let mut reason = tokio::select! {
        r = client_to_child(id, max, &mut client_in, &mut child_in, &to_client, &pending, &activity) => r,
        r = child_to_client(id, max, &mut child_out, &to_client, &pending, &activity, false) => r,
        () = activity.idle(idle) => EndReason::IdleTimeout,
        _ = shutdown.wait_for(|stop| *stop) => EndReason::Shutdown,
    };

    // The client is gone or we are shutting down: the child may still
    // answer what is in flight, within the grace.
    if matches!(reason, EndReason::ClientClosed | EndReason::Shutdown) && !lock(&pending).is_empty()
    {
        let drain = child_to_client(
            id,
            max,
            &mut child_out,
            &to_client,
            &pending,
            &activity,
            true,
        );
        if let Ok(EndReason::ChildExited) = timeout(grace, drain).await {
            reason = EndReason::ChildExited;
        }
    }

    // Closing its stdin is the child's cue to exit; then TERM, then KILL.
    drop(child_in);
    drop(child_out);
    let exit = stop_child(&mut child, pid, grace).await;
    let unanswered: Vec<Box<str>> = lock(&pending).drain().collect();
    let (code, why) = if reason == EndReason::Shutdown {
        (
            SHUTTING_DOWN,
            "the proxy is shutting down; the request was not answered in time".to_string(),
        )
    } else {
        (
            CHILD_GONE,
            format!("the server exited ({exit}) before answering"),
        )
    };
    for request in unanswered {
        let line = error_line(Some(&request), code, &why);
        if timeout(grace, to_client.send(line)).await.is_err() {
            break;
        }
    }
    drop(to_client);
    drop(client_in);
    let mut writer = writer;
    if timeout(grace, &mut writer).await.is_err() {
        writer.abort();
    }
    let mut stderr_task = stderr_task;
    if timeout(grace, &mut stderr_task).await.is_err() {
        stderr_task.abort();
    }
    info!(
        "[s{id}] session closed reason={reason:?} dur_ms={} exit={exit}",
        activity.started.elapsed().as_millis()
    );
}

fn lock(pending: &Pending) -> std::sync::MutexGuard<'_, HashSet<Box<str>>> {
    pending.lock().expect("pending lock")
}

/// Client lines to the child: valid ones forwarded as they came, invalid
/// and oversized ones answered and dropped.
async fn client_to_child(
    id: u64,
    max: usize,
    client_in: &mut FramedRead<OwnedReadHalf, JsonLines>,
    child_in: &mut FramedWrite<ChildIn, JsonLines>,
    to_client: &mpsc::Sender<Bytes>,
    pending: &Pending,
    activity: &Activity,
) -> EndReason {
    loop {
        let answer = match client_in.next().await {
            None => return EndReason::ClientClosed,
            Some(Err(e)) => {
                debug!("[s{id}] client read ended: {e}");
                return EndReason::ClientClosed;
            }
            Some(Ok(Frame::Line(line))) => {
                activity.touch();
                match classify(&line) {
                    Ok(ids) => {
                        lock(pending).extend(ids.requests);
                        if let Err(e) = child_in.send(line).await {
                            debug!("[s{id}] child stdin closed: {e}");
                            return EndReason::ChildExited;
                        }
                        continue;
                    }
                    Err(Invalid(code, why)) => {
                        debug!("[s{id}] refused a client line: {why}");
                        error_line(None, code, &why)
                    }
                }
            }
            Some(Ok(Frame::Oversized { head, len })) => {
                activity.touch();
                debug!("[s{id}] refused a client message of {len} bytes");
                let why = format!(
                    "message of {len} bytes exceeds --max-message-bytes ({max}); it was discarded"
                );
                error_line(sniff_id(&head).as_deref(), TOO_LARGE, &why)
            }
        };
        if to_client.send(answer).await.is_err() {
            return EndReason::ClientClosed;
        }
    }
}

/// Child lines to the client. Garbage is logged and dropped; an oversized
/// answer to a pending request becomes -32003. With `until_answered`, stops
/// once no request awaits an answer.
async fn child_to_client(
    id: u64,
    max: usize,
    child_out: &mut FramedRead<ChildOut, JsonLines>,
    to_client: &mpsc::Sender<Bytes>,
    pending: &Pending,
    activity: &Activity,
    until_answered: bool,
) -> EndReason {
    loop {
        if until_answered && lock(pending).is_empty() {
            return EndReason::ClientClosed;
        }
        let line = match child_out.next().await {
            None => return EndReason::ChildExited,
            Some(Err(e)) => {
                debug!("[s{id}] server stdout ended: {e}");
                return EndReason::ChildExited;
            }
            Some(Ok(Frame::Line(line))) => {
                match classify(&line) {
                    Ok(ids) => {
                        let mut pending = lock(pending);
                        for response in &ids.responses {
                            pending.remove(response);
                        }
                    }
                    Err(Invalid(_, why)) => {
                        warn!("[s{id}] dropped a server line: {why}");
                        continue;
                    }
                }
                line
            }
            Some(Ok(Frame::Oversized { head, len })) => {
                warn!(
                    "[s{id}] dropped a server message of {len} bytes: over --max-message-bytes ({max})"
                );
                match sniff_id(&head) {
                    Some(request) if lock(pending).remove(&request) => {
                        let why = format!(
                            "the server's answer of {len} bytes exceeds --max-message-bytes ({max}); it was discarded"
                        );
                        error_line(Some(&request), TOO_LARGE, &why)
                    }
                    _ => continue,
                }
            }
        };
        activity.touch();
        if to_client.send(line).await.is_err() {
            return EndReason::ClientClosed;
        }
    }
}

/// Writes queued lines to the client, one flush per burst.
async fn write_lines(half: OwnedWriteHalf, mut queue: mpsc::Receiver<Bytes>, max: usize) {
    let mut sink = FramedWrite::new(half, JsonLines::new(max));
    while let Some(line) = queue.recv().await {
        if sink.feed(line).await.is_err() {
            return;
        }
        while let Ok(more) = queue.try_recv() {
            if sink.feed(more).await.is_err() {
                return;
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
    let _ = sink.close().await;
}

/// The child's stderr, one log record per line.
async fn log_stderr(id: u64, stderr: ChildStderr) {
    let mut lines = FramedRead::new(stderr, JsonLines::new(STDERR_LINE_BYTES));
    while let Some(Ok(frame)) = lines.next().await {
        match frame {
            Frame::Line(line) => {
                info!(target: "forkline_twin::child", "[s{id}] child stderr: {}", String::from_utf8_lossy(&line))
            }
            Frame::Oversized { head, len } => {
                info!(target: "forkline_twin::child", "[s{id}] child stderr: {}… ({len} bytes)", String::from_utf8_lossy(&head))
            }
        }
    }
}

/// Waits for the child to exit after its stdin closed; then SIGTERM to its
/// group, then SIGKILL. Always reaps. Returns how it ended, for messages.
async fn stop_child(child: &mut Child, pid: Option<u32>, grace: Duration) -> String {
    let signal_group = |sig| {
        if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
            // SAFETY: killpg has no memory-safety preconditions.
            unsafe { libc::killpg(pid, sig) };
        }
    };
    let mut status = timeout(grace, child.wait()).await.ok().and_then(Result::ok);
    if status.is_none() {
        signal_group(libc::SIGTERM);
        status = timeout(grace, child.wait()).await.ok().and_then(Result::ok);
    }
    if status.is_none() {
        signal_group(libc::SIGKILL);
        let _ = child.start_kill();
        status = child.wait().await.ok();
    }
    match status {
        Some(s) => match (s.code(), s.signal()) {
            (Some(code), _) => format!("exit status {code}"),
            (_, Some(sig)) => format!("killed by signal {sig}"),
            _ => "unknown status".into(),
        },
        None => "not reaped".into(),
    }
}
