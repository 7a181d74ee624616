//! Spawning, stopping and reaping a session's child and its process group.
//!
//! The child runs in a process group of its own, so one `kill(-pgid)`
//! reaches the grandchildren it may have started (`kill` on the pid alone
//! does not). Exit is observed through a pidfd, which becomes readable when
//! the child exits *without* reaping it: the group is swept while the
//! leader is still a zombie holding its pid, so the pgid can never have
//! been recycled for someone else's group when we signal it.

use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::time::Duration;

use crate::config::ChildCommand;
use crate::error::Error;
use crate::sys::interrupt::{Alarm, wait_any};

/// A running child, its group and its exit watch. `Drop` kills the group
/// and reaps the child if `stop` was never called, so no path leaks one.
#[derive(Debug)]
pub struct ChildProcess {
    child: Child,
    /// Readable once the child exits; `None` on kernels before 5.3.
    pidfd: Option<OwnedFd>,
    status: Option<ExitStatus>,
}

/// The child's three pipes, handed to the session's I/O threads.
#[derive(Debug)]
pub struct ChildPipes {
    pub stdin: ChildStdin,
    pub stdout: ChildStdout,
    pub stderr: ChildStderr,
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

/// Starts `command` with piped stdio in its own process group; `env` is
/// added to forkline's own environment.
pub fn spawn(
    command: &ChildCommand,
    env: &[(&str, &str)],
) -> Result<(ChildProcess, ChildPipes), Error> {
    let mut cmd = Command::new(&command.program);
    cmd.args(&command.args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd.spawn().map_err(|source| Error::Spawn {
        command: command.to_string(),
        source,
    })?;
    let pipes = match (child.stdin.take(), child.stdout.take(), child.stderr.take()) {
        (Some(stdin), Some(stdout), Some(stderr)) => ChildPipes {
            stdin,
            stdout,
            stderr,
        },
        // Unreachable with Stdio::piped(), but a child must never leak.
        _ => {
            let _ = child.kill();
            let _ = child.wait();
            let source = std::io::Error::other("child pipes missing");
            return Err(Error::Spawn {
                command: command.to_string(),
                source,
            });
        }
    };
    let pidfd = pidfd_open(child.id());
    Ok((
        ChildProcess {
            child,
            pidfd,
            status: None,
        },
        pipes,
    ))
}

fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    // pidfds are close-on-exec by definition.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

impl ChildProcess {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// An fd that becomes readable when the child exits (a duplicate of
    /// its pidfd), for waits elsewhere; `None` without pidfd support.
    pub fn exit_watch(&self) -> Option<OwnedFd> {
        self.pidfd.as_ref().and_then(|fd| fd.try_clone().ok())
    }

    /// Ends the child, whose stdin the caller has already closed. Waits
    /// `grace` for it to exit; then SIGTERM to the group and `grace` again;
    /// then SIGKILL. Whatever is left of the group after the leader exits
    /// gets SIGKILL, then the leader is reaped. `hurry` cuts every wait
    /// short. Blocks for at most about two graces.
    pub fn stop(&mut self, grace: Duration, hurry: &Alarm) -> Exit {
        if let Some(status) = self.status {
            return Exit {
                status,
                forced: false,
            };
        }
        let mut forced = false;
        if !self.wait_exited(grace, hurry) {
            forced = true;
            self.signal_group(libc::SIGTERM);
            if !self.wait_exited(grace, hurry) {
                self.signal_group(libc::SIGKILL);
            }
        }
        // The leader is gone (or dying) but still unreaped: its pid is ours,
        // so this cannot hit a recycled group.
        self.signal_group(libc::SIGKILL);
        let status = self.reap();
        Exit { status, forced }
    }

    /// Waits up to `timeout` for the child to exit, without reaping it.
    /// `false` if it is still running (or `hurry` rang).
    fn wait_exited(&mut self, timeout: Duration, hurry: &Alarm) -> bool {
        match &self.pidfd {
            Some(pidfd) => {
                let fds = [(pidfd.as_fd(), libc::POLLIN), (hurry.as_fd(), libc::POLLIN)];
                matches!(wait_any(&fds, Some(timeout)), Ok(Some(0)))
            }
            None => self.wait_exited_without_pidfd(timeout, hurry),
        }
    }

    /// Kernels before 5.3 have no pidfd: look with `waitid(WNOWAIT)`, which
    /// also leaves the zombie in place, every few milliseconds.
    fn wait_exited_without_pidfd(&mut self, timeout: Duration, hurry: &Alarm) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            let rc = unsafe {
                libc::waitid(
                    libc::P_PID,
                    self.pid(),
                    &mut info,
                    libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
                )
            };
            if rc == 0 && unsafe { info.si_pid() } != 0 {
                return true;
            }
            if std::time::Instant::now() >= deadline || hurry.is_ringing() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn signal_group(&self, signal: i32) {
        // ESRCH (group already empty) is the expected, harmless outcome.
        unsafe { libc::kill(-(self.pid() as libc::pid_t), signal) };
    }

    fn reap(&mut self) -> ExitStatus {
        loop {
            match self.child.wait() {
                Ok(status) => {
                    self.status = Some(status);
                    return status;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                // ECHILD: someone else reaped it; report it as killed.
                Err(_) => {
                    let status = ExitStatus::from_raw(libc::SIGKILL);
                    self.status = Some(status);
                    return status;
                }
            }
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if self.status.is_none() {
            self.signal_group(libc::SIGKILL);
            self.reap();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::Instant;

    fn sh(script: &str) -> ChildCommand {
        ChildCommand {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
        }
    }

    #[test]
    fn a_child_that_exits_on_eof_is_not_signalled() {
        let alarm = Alarm::new().expect("alarm");
        let (mut child, pipes) = spawn(&sh("cat >/dev/null; exit 7"), &[]).expect("spawn");
        drop(pipes.stdin);
        let exit = child.stop(Duration::from_secs(10), &alarm);
        assert_eq!(exit.status.code(), Some(7));
        assert!(!exit.forced);
        assert_eq!(exit.to_string(), "exit status 7");
    }

    #[test]
    fn a_stubborn_group_is_killed_and_reaped() {
        let alarm = Alarm::new().expect("alarm");
        // Ignores TERM and stdin EOF; its grandchild `sleep` shares the group.
        let (mut child, mut pipes) = spawn(
            &sh("trap '' TERM; sleep 1000 & echo $!; while :; do sleep 1; done"),
            &[],
        )
        .expect("spawn");
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(&mut pipes.stdout), &mut line)
            .expect("pid line");
        let grandchild: i32 = line.trim().parse().expect("grandchild pid");
        pipes.stdin.flush().expect("flush");
        drop(pipes.stdin);
        let exit = child.stop(Duration::from_millis(50), &alarm);
        assert!(exit.forced);
        assert_eq!(exit.to_string(), "killed by SIGKILL");
        let gone = (0..400).any(|_| {
            std::thread::sleep(Duration::from_millis(5));
            (unsafe { libc::kill(grandchild, 0) }) != 0
                || std::fs::read_to_string(format!("/proc/{grandchild}/stat"))
                    .is_ok_and(|s| s.contains(") Z"))
        });
        assert!(gone, "grandchild {grandchild} survived its group");
    }

    #[test]
    fn hurry_skips_the_grace() {
        let alarm = Alarm::new().expect("alarm");
        alarm.ring();
        let (mut child, pipes) =
            spawn(&sh("trap '' TERM; while :; do sleep 1; done"), &[]).expect("spawn");
        drop(pipes.stdin);
        let started = Instant::now();
        let exit = child.stop(Duration::from_secs(3600), &alarm);
        assert!(exit.forced);
        assert!(started.elapsed() < Duration::from_secs(3600));
    }

    #[test]
    fn spawn_failure_names_the_command() {
        let err = spawn(
            &ChildCommand {
                program: "/nonexistent/mcp".into(),
                args: vec!["--x".into()],
            },
            &[],
        )
        .expect_err("no such file");
        assert!(
            err.to_string()
                .starts_with("failed to spawn `/nonexistent/mcp --x`: "),
            "{err}"
        );
    }
}
