//! Spawning and stopping a session's child and its process group.
//!
//! The child's stdout is a pipe and its stderr one end of a socket pair;
//! its stdin is either a pipe of its own or the same socket pair, the other
//! way ([`Stdin`]). The answers, which a session waits for, come over the
//! stdout pipe, and with [`Stdin::Pipe`] the requests go over one too: a
//! pipe hands a message over in about half the time a Unix socket takes (an
//! `skb` each way; benches/pingpong.c). The socket pair is there for what
//! only a socket can do: `shutdown(2)` wakes the session and the stderr log
//! when the child exits (`SHUT_RD`, see the [`Reaper`]) even while a
//! grandchild holds the child's stdio, and with [`Stdin::Socket`] it
//! carries stdin one way and stderr the other, so that a session costs
//! three descriptors, not four. The child runs in a process group of its
//! own, so one `kill(-pgid)` reaches the grandchildren it may have started.
//! Exits are learned and reaped by the [`Reaper`].

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::select;
use log::error;

use crate::child::reaper::{ExitWatch, Reaper};
use crate::config::ChildCommand;
use crate::error::Error;
use crate::shutdown::Trigger;
use crate::sys::poll::set_nonblocking;

/// How long a child gets to die after SIGKILL before we stop waiting (a
/// process in uninterruptible sleep); the reaper still reaps it later.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// A running child. `Drop` kills its group if `stop` never ran, so no path
/// (an early return, a panic) leaves one behind; the reaper reaps it.
#[derive(Debug)]
pub struct ChildProcess {
    watch: Arc<ExitWatch>,
    stopped: Option<Exit>,
}

/// Where a child's stdin comes from; the same for every child of a process
/// (`serve` picks it at start from its descriptor limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stdin {
    /// A pipe of its own: four descriptors a session, and a request
    /// reaches the child sooner (a round trip on one CPU took 29.4 µs
    /// against 31.0 in the benchmark).
    Pipe,
    /// The stderr socket pair, written the other way: three descriptors a
    /// session, for when four would not leave room for `--max-sessions`.
    Socket,
}

impl Stdin {
    /// Descriptors a session holds: the client's, and the child's on our
    /// side (stdout, the socket, and the stdin pipe if there is one).
    pub fn fds_per_session(self) -> usize {
        match self {
            Stdin::Pipe => 4,
            Stdin::Socket => 3,
        }
    }

    /// For the start-up log line.
    pub fn as_str(self) -> &'static str {
        match self {
            Stdin::Pipe => "pipe",
            Stdin::Socket => "socket",
        }
    }
}

/// The child's I/O, handed to the session. All are non-blocking.
#[derive(Debug)]
pub struct ChildIo {
    /// Our end of the socket pair: the child's stderr (we read) and, with
    /// [`Stdin::Socket`], its stdin (we write). The session and the stderr
    /// log both use it, hence shared.
    pub socket: Arc<UnixStream>,
    /// The read end of the child's stdout.
    pub stdout: ChildStdout,
    /// The write end of the child's stdin with [`Stdin::Pipe`].
    pub stdin: Option<ChildStdin>,
}

/// Starts children, every one wired the same way, for the reaper to reap.
#[derive(Clone)]
pub struct Spawner {
    reaper: Reaper,
    stdin: Stdin,
}

impl Spawner {
    pub fn new(reaper: Reaper, stdin: Stdin) -> Spawner {
        Spawner { reaper, stdin }
    }

    /// Starts `command`; see [`spawn`].
    pub fn spawn(
        &self,
        command: &ChildCommand,
        env: &[(&str, &str)],
    ) -> Result<(ChildProcess, ChildIo), Error> {
        spawn(&self.reaper, self.stdin, command, env)
    }

    pub fn reaper(&self) -> &Reaper {
        &self.reaper
    }
}

/// How a child ended, for logs and -32002 messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub status: ExitStatus,
    /// True when forkline had to signal it (it ignored stdin EOF).
    pub forced: bool,
}

impl std::fmt::Display for Exit {
    /// "exit status 3", "killed by SIGKILL", as cargo reports a child.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.status.code(), self.status.signal()) {
            (Some(code), _) => write!(f, "exit status {code}"),
            (None, Some(sig)) => write!(f, "killed by {}", signal_name(sig)),
            _ => write!(f, "{}", self.status),
        }
    }
}

fn signal_name(sig: i32) -> String {
    match sig {
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGKILL => "SIGKILL".into(),
        libc::SIGINT => "SIGINT".into(),
        libc::SIGSEGV => "SIGSEGV".into(),
        libc::SIGABRT => "SIGABRT".into(),
        libc::SIGPIPE => "SIGPIPE".into(),
        libc::SIGHUP => "SIGHUP".into(),
        other => format!("signal {other}"),
    }
}

/// Starts `command` in its own process group with its stdout piped, its
/// stderr on a socket pair and its stdin as `stdin` says; the command's own
/// `env`, then `env`, are added to forkline's own environment. Blocks for
/// the spawn only.
pub fn spawn(
    reaper: &Reaper,
    stdin: Stdin,
    command: &ChildCommand,
    env: &[(&str, &str)],
) -> Result<(ChildProcess, ChildIo), Error> {
    let spawn_error = |source| Error::Spawn {
        command: command.to_string(),
        source,
    };
    // Both ends are close-on-exec; the child gets its end through dup2
    // onto 2 (and 0), which clears the flag on those copies only.
    let (ours, theirs) = UnixStream::pair().map_err(spawn_error)?;
    let theirs = OwnedFd::from(theirs);
    let child_stdin = match stdin {
        Stdin::Pipe => Stdio::piped(),
        Stdin::Socket => Stdio::from(theirs.try_clone().map_err(spawn_error)?),
    };
    ours.set_nonblocking(true).map_err(spawn_error)?;
    let mut cmd = Command::new(&command.program);
    cmd.args(&command.args)
        .envs(command.env.iter().map(|(k, v)| (k, v)))
        .envs(env.iter().copied())
        .stdin(child_stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::from(theirs))
        .process_group(0);
    let (mut child, watch) = reaper.spawn(&mut cmd).map_err(spawn_error)?;
    // The command holds the child's end; it must be gone, or our reads
    // would never see end of file.
    drop(cmd);
    let process = ChildProcess {
        watch,
        stopped: None,
    };
    let Some(stdout) = child.stdout.take() else {
        // Unreachable with Stdio::piped(); `process` kills it on drop.
        return Err(spawn_error(std::io::Error::other("child stdout missing")));
    };
    set_nonblocking(stdout.as_fd()).map_err(spawn_error)?;
    let stdin = child.stdin.take();
    if let Some(pipe) = &stdin {
        set_nonblocking(pipe.as_fd()).map_err(spawn_error)?;
    }
    Ok((
        process,
        ChildIo {
            socket: Arc::new(ours),
            stdout,
            stdin,
        },
    ))
}

impl ChildProcess {
    pub fn pid(&self) -> u32 {
        self.watch.pid()
    }

    /// The child's exit as the reaper reports it.
    pub fn watch(&self) -> &Arc<ExitWatch> {
        &self.watch
    }

    /// Ends the child, whose stdin the caller has already closed. Waits
    /// `grace` for it to exit; then SIGTERM to the group and `grace` again;
    /// then SIGKILL. `hurry` cuts the graces short. `shutdown` firing
    /// *during* the first wait ends it at once: a SIGTERM to forkline
    /// while a child is being stopped reaches the child now — what the
    /// client launching `forkline stdio` expects, since it escalates to
    /// SIGKILL after a couple of seconds and a child it cannot see would
    /// be orphaned. (A shutdown that began before, ending the session, has
    /// given in-flight requests their grace already; the child still gets
    /// its chance to exit on end of input.) Blocks for at most about two
    /// graces, plus `KILL_WAIT` for a process slow to die of SIGKILL.
    pub fn stop(&mut self, grace: Duration, shutdown: &Trigger, hurry: &Trigger) -> Exit {
        if let Some(exit) = self.stopped {
            return exit;
        }
        let mut forced = false;
        let first_wait: &[&Trigger] = if shutdown.has_fired() {
            &[hurry]
        } else {
            &[hurry, shutdown]
        };
        if !self.wait_exited(grace, first_wait) {
            forced = true;
            self.watch.signal_group(libc::SIGTERM);
            if !self.wait_exited(grace, &[hurry]) {
                self.watch.signal_group(libc::SIGKILL);
                if !self.wait_exited(KILL_WAIT, &[]) {
                    error!(
                        "child pid={} still not reaped {KILL_WAIT:?} after SIGKILL",
                        self.pid()
                    );
                }
            }
        }
        let status = self
            .watch
            .status()
            .unwrap_or_else(|| ExitStatus::from_raw(libc::SIGKILL));
        let exit = Exit { status, forced };
        self.stopped = Some(exit);
        exit
    }

    /// Waits up to `timeout` for the reaper to report the exit; `false`
    /// if the child still runs (or one of `cut_short` fired, before or
    /// during the wait).
    fn wait_exited(&self, timeout: Duration, cut_short: &[&Trigger]) -> bool {
        if self.watch.status().is_some() {
            return true;
        }
        if cut_short.iter().any(|t| t.has_fired()) {
            return false;
        }
        let never = crossbeam_channel::never();
        let first = cut_short.first().map_or(&never, |t| t.receiver());
        let second = cut_short.get(1).map_or(&never, |t| t.receiver());
        select! {
            recv(self.watch.receiver()) -> _ => true,
            recv(first) -> _ => self.watch.status().is_some(),
            recv(second) -> _ => self.watch.status().is_some(),
            default(timeout) => self.watch.status().is_some(),
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if self.stopped.is_none() {
            self.watch.signal_group(libc::SIGKILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::child::reaper::OnExit;
    use crate::sys::wake::Sleeper;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::Shutdown;
    use std::os::fd::AsRawFd;

    fn sh(script: &str) -> ChildCommand {
        ChildCommand::new("/bin/sh", vec!["-c".into(), script.into()])
    }

    fn reaper() -> Reaper {
        Reaper::start().expect("reaper")
    }

    fn trigger() -> Trigger {
        Trigger::new().expect("trigger")
    }

    /// The child's stdout as a blocking reader, for tests that wait on it.
    fn blocking_stdout(io: ChildIo) -> (Arc<UnixStream>, BufReader<ChildStdout>) {
        let fd = io.stdout.as_raw_fd();
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        assert!(
            flags >= 0 && unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } == 0
        );
        (io.socket, BufReader::new(io.stdout))
    }

    #[test]
    fn a_child_that_exits_on_eof_is_not_signalled() {
        let reaper = reaper();
        let (mut child, io) =
            spawn(&reaper, Stdin::Socket, &sh("cat >/dev/null; exit 7"), &[]).expect("spawn");
        io.socket.shutdown(Shutdown::Write).expect("close stdin");
        let exit = child.stop(Duration::from_secs(10), &trigger(), &trigger());
        assert_eq!(exit.status.code(), Some(7));
        assert!(!exit.forced);
        assert_eq!(exit.to_string(), "exit status 7");
        reaper.stop();
    }

    #[test]
    fn stdin_and_stderr_share_one_socket_and_stdout_is_a_pipe() {
        let reaper = reaper();
        let (mut child, io) = spawn(
            &reaper,
            Stdin::Socket,
            &sh("read l; echo \"err $l\" >&2; echo \"got $l\"; [ -p /dev/stdout ] && echo pipe"),
            &[],
        )
        .expect("spawn");
        let (socket, mut stdout) = blocking_stdout(io);
        socket.set_nonblocking(false).expect("blocking");
        (&*socket).write_all(b"hi\n").expect("write");
        let mut out = String::new();
        stdout
            .read_to_string(&mut out)
            .expect("read stdout to its end");
        assert_eq!(out, "got hi\npipe\n");
        let mut err = String::new();
        BufReader::new(&*socket)
            .read_line(&mut err)
            .expect("read stderr");
        assert_eq!(err, "err hi\n");
        let exit = child.stop(Duration::from_secs(10), &trigger(), &trigger());
        assert_eq!(exit.status.code(), Some(0));
        reaper.stop();
    }

    #[test]
    fn a_stdin_pipe_carries_the_requests_and_closing_it_ends_input() {
        let reaper = reaper();
        let (mut child, mut io) = spawn(
            &reaper,
            Stdin::Pipe,
            &sh(
                "[ -p /dev/stdin ] && echo pipe; read l; echo \"err $l\" >&2; \
                 echo \"got $l\"; cat >/dev/null; exit 5",
            ),
            &[],
        )
        .expect("spawn");
        let mut stdin = io.stdin.take().expect("a stdin pipe");
        let flags = unsafe { libc::fcntl(stdin.as_raw_fd(), libc::F_GETFL) };
        assert_ne!(flags & libc::O_NONBLOCK, 0, "our end is non-blocking");
        stdin.write_all(b"hi\n").expect("write");
        let (socket, mut stdout) = blocking_stdout(io);
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read");
        assert_eq!(line, "pipe\n");
        line.clear();
        stdout.read_line(&mut line).expect("read");
        assert_eq!(line, "got hi\n");
        socket.set_nonblocking(false).expect("blocking");
        let mut err = String::new();
        BufReader::new(&*socket)
            .read_line(&mut err)
            .expect("read stderr");
        assert_eq!(err, "err hi\n");
        // Its `cat` ends only at end of input: the pipe's, not the socket's.
        drop(stdin);
        let exit = child.stop(Duration::from_secs(10), &trigger(), &trigger());
        assert_eq!(exit.status.code(), Some(5));
        assert!(!exit.forced, "exited on its own at end of input");
        reaper.stop();
    }

    #[test]
    fn a_stubborn_group_is_killed_and_reaped() {
        let reaper = reaper();
        // Ignores TERM and stdin EOF; its grandchild `sleep` shares the group.
        let (mut child, io) = spawn(
            &reaper,
            Stdin::Socket,
            &sh("trap '' TERM; sleep 1000 & echo $!; while :; do sleep 1; done"),
            &[],
        )
        .expect("spawn");
        let (socket, mut stdout) = blocking_stdout(io);
        let mut line = String::new();
        stdout.read_line(&mut line).expect("pid line");
        let grandchild: i32 = line.trim().parse().expect("grandchild pid");
        socket.shutdown(Shutdown::Write).expect("close stdin");
        let exit = child.stop(Duration::from_millis(50), &trigger(), &trigger());
        assert!(exit.forced);
        assert_eq!(exit.to_string(), "killed by SIGKILL");
        let gone = (0..400).any(|_| {
            std::thread::sleep(Duration::from_millis(5));
            (unsafe { libc::kill(grandchild, 0) }) != 0
                || std::fs::read_to_string(format!("/proc/{grandchild}/stat"))
                    .is_ok_and(|s| s.contains(") Z"))
        });
        assert!(gone, "grandchild {grandchild} survived its group");
        assert_eq!(reaper.live(), 0);
        reaper.stop();
    }

    #[test]
    fn an_exit_wakes_a_registered_reader_and_thread_even_if_a_grandchild_holds_the_socket() {
        let reaper = reaper();
        // The grandchild leaves the group (setsid) and keeps our stdio.
        let (mut child, io) = spawn(
            &reaper,
            Stdin::Socket,
            &sh("setsid sleep 1000 & echo $!; exit 0"),
            &[],
        )
        .expect("spawn");
        let sleeper = Sleeper::for_this_thread();
        child.watch().wake_on_exit(Some(OnExit {
            socket: io.socket.as_raw_fd(),
            thread: sleeper.tid(),
        }));
        let (socket, mut stdout) = blocking_stdout(io);
        let mut line = String::new();
        stdout.read_line(&mut line).expect("pid line");
        let grandchild: i32 = line.trim().parse().expect("grandchild pid");
        socket.set_nonblocking(false).expect("blocking");
        let mut rest = Vec::new();
        (&*socket).read_to_end(&mut rest).expect("read to eof");
        assert!(rest.is_empty(), "stderr held {rest:?}");
        assert!(child.watch().has_exited());
        // The reaper's signal came while this thread was reading, and was
        // kept for its next wait, which it ends at once.
        let started = std::time::Instant::now();
        sleeper
            .poll(&mut [], Some(Duration::from_secs(60)))
            .expect("ppoll");
        assert!(started.elapsed().as_secs() < 30, "the thread was woken");
        assert_eq!(
            child
                .stop(Duration::from_secs(10), &trigger(), &trigger())
                .status
                .code(),
            Some(0)
        );
        child.watch().wake_on_exit(None);
        unsafe { libc::kill(grandchild, libc::SIGKILL) };
        reaper.stop();
    }

    #[test]
    fn hurry_skips_the_grace() {
        let reaper = reaper();
        let hurry = trigger();
        hurry.fire();
        let (mut child, io) = spawn(
            &reaper,
            Stdin::Socket,
            &sh("trap '' TERM; while :; do sleep 1; done"),
            &[],
        )
        .expect("spawn");
        io.socket.shutdown(Shutdown::Write).expect("close stdin");
        let started = std::time::Instant::now();
        let exit = child.stop(Duration::from_secs(3600), &trigger(), &hurry);
        assert!(exit.forced);
        assert!(started.elapsed() < Duration::from_secs(3600));
        reaper.stop();
    }

    #[test]
    fn a_shutdown_during_the_wait_sends_sigterm_at_once() {
        let reaper = reaper();
        let shutdown = trigger();
        // Ignores end of input, dies of SIGTERM.
        let (mut child, io) = spawn(
            &reaper,
            Stdin::Socket,
            &sh("while :; do sleep 1; done"),
            &[],
        )
        .expect("spawn");
        io.socket.shutdown(Shutdown::Write).expect("close stdin");
        let started = std::time::Instant::now();
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(50));
                shutdown.fire();
            });
            let exit = child.stop(Duration::from_secs(3600), &shutdown, &trigger());
            assert!(exit.forced);
            assert_eq!(exit.to_string(), "killed by SIGTERM");
        });
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "did not wait out the grace"
        );
        reaper.stop();
    }

    #[test]
    fn a_shutdown_that_came_before_leaves_the_child_its_grace() {
        let reaper = reaper();
        let shutdown = trigger();
        shutdown.fire();
        let (mut child, io) =
            spawn(&reaper, Stdin::Socket, &sh("cat >/dev/null; exit 4"), &[]).expect("spawn");
        io.socket.shutdown(Shutdown::Write).expect("close stdin");
        let exit = child.stop(Duration::from_secs(10), &shutdown, &trigger());
        assert!(!exit.forced, "exited on its own at end of input");
        assert_eq!(exit.status.code(), Some(4));
        reaper.stop();
    }

    #[test]
    fn dropping_a_running_child_kills_its_group() {
        let reaper = reaper();
        let (child, _io) = spawn(&reaper, Stdin::Socket, &sh("sleep 1000"), &[]).expect("spawn");
        let watch = Arc::clone(child.watch());
        drop(child);
        let reaped = (0..2000).any(|_| {
            std::thread::sleep(Duration::from_millis(5));
            watch.status().is_some()
        });
        assert!(reaped, "the dropped child was never reaped");
        reaper.stop();
    }

    #[test]
    fn spawn_failure_names_the_command() {
        let reaper = reaper();
        let err = spawn(
            &reaper,
            Stdin::Pipe,
            &ChildCommand::new("/nonexistent/mcp", vec!["--x".into()]),
            &[],
        )
        .expect_err("no such file");
        assert!(
            err.to_string()
                .starts_with("failed to spawn `/nonexistent/mcp --x`: "),
            "{err}"
        );
        reaper.stop();
    }
}
