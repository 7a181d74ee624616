//! One session from its first byte to its last: spawn the child, relay
//! until the session ends, stop the child, answer what was left
//! unanswered, and say how it went.
//!
//! All of it runs on the calling (worker) thread. Every resource is owned
//! by a value whose `Drop` gives it back — the child's group is killed,
//! the exit watch forgets our socket, the client socket closes — so a
//! session that ends any way, a panic included, leaves nothing behind.

use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use log::{info, warn};

use crate::child::process::{ChildIo, Exit, Spawner};
use crate::child::reaper::{ExitWatch, OnExit};
use crate::child::stderr::StderrLog;
use crate::child::warm::WarmPool;
use crate::config::{ChildCommand, Limits};
use crate::proto::message::code;
use crate::session::client::ClientSide;
use crate::session::relay::{ChildFds, ChildInput, ChildSide, Control, EndReason, Relay};
use crate::session::rules::{Counters, Tap};
use crate::session::table::SessionId;
use crate::sys::wake::{Sleeper, Tid};

/// What every session of one proxy shares.
pub struct Shared<'a> {
    pub command: &'a ChildCommand,
    pub limits: &'a Limits,
    pub control: Control<'a>,
    pub stderr: &'a StderrLog,
    pub spawner: &'a Spawner,
    /// Children started ahead (`--prespawn`), if any.
    pub warm: Option<&'a WarmPool>,
}

/// How a session went, for the caller's exit status and tests.
#[derive(Debug)]
pub struct Summary {
    pub reason: EndReason,
    /// `None` when the child could not be started.
    pub exit: Option<Exit>,
    pub counters: Counters,
}

/// What a tap learns when its session starts (see `Tap::start`).
#[derive(Debug)]
pub struct Start<'a> {
    pub id: SessionId,
    pub peer: &'a str,
    pub command: &'a ChildCommand,
    /// `None` when the child could not be started.
    pub pid: Option<u32>,
    /// When the session began (`run` was called), by the wall clock and
    /// by the monotonic one that message times are measured against.
    pub wall: SystemTime,
    pub started: Instant,
}

type BoxedTap = Box<dyn Tap + Send>;

/// Our end of the child's socket pair (its stderr, maybe its stdin).
/// Withdraws the reaper's wake-up before the session lets go of the socket
/// (the stderr log may hold it a moment longer) or of its thread, so the
/// reaper never touches a recycled fd number or a thread that has moved on.
struct ChildSocket {
    stream: Arc<UnixStream>,
    watch: Arc<ExitWatch>,
}

impl ChildSocket {
    fn new(stream: Arc<UnixStream>, watch: Arc<ExitWatch>, worker: Tid) -> ChildSocket {
        watch.wake_on_exit(Some(OnExit {
            socket: stream.as_raw_fd(),
            thread: worker,
        }));
        ChildSocket { stream, watch }
    }
}

impl Drop for ChildSocket {
    fn drop(&mut self) {
        self.watch.wake_on_exit(None);
    }
}

/// Runs a session to its end. Blocks the calling thread for the session's
/// life. `on_spawn` learns the child's pid; `tap` sees every message.
pub fn run(
    id: SessionId,
    peer: &str,
    shared: &Shared,
    client: ClientSide<'_>,
    on_spawn: impl FnOnce(u32),
    tap: Option<Box<dyn Tap + Send>>,
) -> Summary {
    let wall = SystemTime::now();
    let started = Instant::now();
    let (summary, tap) = run_session(id, peer, shared, client, on_spawn, tap, (wall, started));
    if let Some(mut tap) = tap {
        tap.end(&summary);
    }
    info!(
        "[{id}] session closed reason={} dur_ms={} in={} out={} bytes_in={} bytes_out={}{}",
        summary.reason.as_str(),
        started.elapsed().as_millis(),
        summary.counters.messages_in,
        summary.counters.messages_out,
        summary.counters.bytes_in,
        summary.counters.bytes_out,
        summary
            .exit
            .map(|e| format!(" child=\"{e}\""))
            .unwrap_or_default()
    );
    summary
}

fn run_session(
    id: SessionId,
    peer: &str,
    shared: &Shared,
    client: ClientSide<'_>,
    on_spawn: impl FnOnce(u32),
    mut tap: Option<BoxedTap>,
    (wall, started): (SystemTime, Instant),
) -> (Summary, Option<BoxedTap>) {
    let limits = shared.limits;
    let tap_start = |tap: &mut Option<BoxedTap>, pid| {
        if let Some(tap) = tap.as_mut() {
            tap.start(&Start {
                id,
                peer,
                command: shared.command,
                pid,
                wall,
                started,
            });
        }
    };
    let session_id = id.to_string();
    let env = [
        ("FORKLINE_SESSION_ID", session_id.as_str()),
        ("FORKLINE_PEER", peer),
    ];
    let warm = shared.warm.and_then(WarmPool::take);
    let warm_name = warm.as_ref().map(|w| w.name.clone());
    let spawned = match warm {
        Some(warm) => Ok((warm.child, warm.io)),
        None => shared.spawner.spawn(shared.command, &env),
    };
    // Only now: a child spawned by a sleeper would inherit its mask.
    let sleeper = Sleeper::for_this_thread();
    let (mut child, io) = match spawned {
        Ok(spawned) => spawned,
        Err(e) => {
            warn!("[{id}] {e}");
            tap_start(&mut tap, None);
            let why = e.to_string();
            let mut relay = Relay::new(
                id,
                limits,
                client,
                ChildSide::Missing(&why),
                shared.control,
                &sleeper,
                tap,
            );
            let reason = relay.run();
            relay.drain_client(limits.shutdown_grace);
            let summary = Summary {
                reason,
                exit: None,
                counters: relay.counters(),
            };
            return (summary, relay.take_tap());
        }
    };
    on_spawn(child.pid());
    tap_start(&mut tap, Some(child.pid()));
    info!(
        "[{id}] session opened peer={peer} pid={} command=\"{}\"{}",
        child.pid(),
        shared.command,
        warm_name
            .map(|name| format!(" warm_child={name}"))
            .unwrap_or_default()
    );
    let ChildIo {
        socket,
        stdout,
        stdin,
    } = io;
    shared.stderr.watch(id, Arc::clone(&socket));
    let socket = ChildSocket::new(socket, Arc::clone(child.watch()), sleeper.tid());
    let stdin = match stdin {
        Some(pipe) => ChildInput::Pipe(pipe),
        None => ChildInput::Socket(socket.stream.as_fd()),
    };

    let mut relay = Relay::new(
        id,
        limits,
        client,
        ChildSide::Running(ChildFds {
            stdin,
            stdout: stdout.as_fd(),
            exit: &socket.watch,
        }),
        shared.control,
        &sleeper,
        tap,
    );
    let reason = relay.run();
    relay.finish_input();
    let exit = child.stop(
        limits.shutdown_grace,
        shared.control.shutdown,
        shared.control.hurry,
    );
    if exit.forced {
        info!(
            "[{id}] child pid={} did not exit after its stdin closed; {exit}",
            child.pid()
        );
    }
    shared.stderr.release(id);

    let (code, text) = match reason {
        EndReason::Shutdown => (
            code::SHUTTING_DOWN,
            format!("forkline is shutting down; the MCP server ended ({exit}) before answering"),
        ),
        _ => (
            code::CHILD_GONE,
            format!("the MCP server ended ({exit}) before answering this request"),
        ),
    };
    relay.answer_unanswered(code, &text);
    relay.drain_client(limits.shutdown_grace);
    let counters = relay.counters();
    let tap = relay.take_tap();
    drop(relay);
    drop(socket);
    let summary = Summary {
        reason,
        exit: Some(exit),
        counters,
    };
    (summary, tap)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::child::process::Stdin;
    use crate::child::reaper::Reaper;
    use crate::session::client::{StreamClient, channel_pair};
    use crate::session::clock::Clock;
    use crate::session::outbox::WriteKind;
    use crate::session::rules::Direction;
    use crate::shutdown::Trigger;
    use std::io::{BufRead, BufReader, Write};
    use std::net::Shutdown;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    struct Proxy {
        command: ChildCommand,
        limits: Limits,
        shutdown: Trigger,
        hurry: Trigger,
        clock: Clock,
        stderr: StderrLog,
        spawner: Spawner,
    }

    impl Proxy {
        fn new(script: &str) -> Proxy {
            Proxy::with_stdin(script, Stdin::Pipe)
        }

        fn with_stdin(script: &str, stdin: Stdin) -> Proxy {
            Proxy {
                command: ChildCommand::new("/bin/sh", vec!["-c".into(), script.into()]),
                limits: Limits {
                    shutdown_grace: Duration::from_secs(2),
                    ..Limits::default()
                },
                shutdown: Trigger::new().expect("trigger"),
                hurry: Trigger::new().expect("trigger"),
                clock: Clock::start().expect("clock"),
                stderr: StderrLog::start().expect("stderr log"),
                spawner: Spawner::new(Reaper::start().expect("reaper"), stdin),
            }
        }

        fn shared(&self) -> Shared<'_> {
            Shared {
                command: &self.command,
                limits: &self.limits,
                control: Control {
                    shutdown: &self.shutdown,
                    hurry: &self.hurry,
                    clock: &self.clock,
                    end_requested: None,
                },
                stderr: &self.stderr,
                spawner: &self.spawner,
                warm: None,
            }
        }
    }

    fn gone(pid: u32) -> bool {
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
    }

    fn poll_until(mut cond: impl FnMut() -> bool) -> bool {
        (0..2000).any(|_| {
            if cond() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
            false
        })
    }

    /// Panics on the first message it sees, as a bug in a tap would.
    struct PanickingTap;

    impl Tap for PanickingTap {
        fn message(&mut self, _: Direction, _: &[u8]) {
            panic!("a deliberate test panic in a tap");
        }
    }

    #[test]
    fn a_session_that_panics_still_ends_its_child_and_its_group() {
        let proxy = Proxy::new("sleep 1000 & cat");
        let (ours, mut theirs) = UnixStream::pair().expect("socketpair");
        ours.set_nonblocking(true).expect("non-blocking");
        let pid = AtomicU32::new(0);
        theirs
            .write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"x\"}\n")
            .expect("send a request");
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let client = ClientSide::Stream(StreamClient {
                read: ours.as_fd(),
                write: ours.as_fd(),
                write_kind: WriteKind::Socket,
            });
            run(
                SessionId(7),
                "test",
                &proxy.shared(),
                client,
                |p| pid.store(p, Ordering::SeqCst),
                Some(Box::new(PanickingTap)),
            )
        }));
        assert!(outcome.is_err(), "the tap's panic propagates");
        let pid = pid.load(Ordering::SeqCst);
        assert_ne!(pid, 0, "the child was spawned");
        assert!(
            poll_until(|| gone(pid)),
            "child {pid} outlived its panicked session"
        );
        assert!(
            poll_until(|| proxy.spawner.reaper().live() == 0),
            "the child was never reaped"
        );
        proxy.spawner.reaper().stop();
    }

    #[test]
    fn a_channel_client_runs_on_the_same_engine() {
        // Answers one request, as `cat` would echo one, but as a response.
        let proxy = Proxy::new(
            r#"read line; echo '{"jsonrpc":"2.0","id":1,"result":{"ok":true}}'; cat >/dev/null"#,
        );
        let (client, mut peer) = channel_pair(4).expect("channels");
        std::thread::scope(|s| {
            let session = s.spawn(|| {
                run(
                    SessionId(8),
                    "test",
                    &proxy.shared(),
                    ClientSide::Channels(client),
                    |_| {},
                    None,
                )
            });
            assert!(peer.send(br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#.to_vec()));
            assert!(peer.send(b"not json".to_vec()));
            let first = peer.recv().expect("an answer");
            let second = peer.recv().expect("the parse error");
            let mut got = [first, second];
            got.sort();
            assert!(
                got.iter()
                    .any(|l| l.starts_with(br#"{"jsonrpc":"2.0","id":1,"result""#))
            );
            assert!(got.iter().any(|l| l.windows(6).any(|w| w == b"-32700")));
            peer.end_input();
            let summary = session.join().expect("session thread");
            assert_eq!(summary.reason, EndReason::ClientClosed);
            assert_eq!(summary.exit.map(|e| e.status.code()), Some(Some(0)));
            assert_eq!(summary.counters.messages_in, 1);
            assert_eq!(summary.counters.messages_out, 2);
        });
        proxy.spawner.reaper().stop();
    }

    #[test]
    fn a_full_channel_outbox_drained_without_blocking_never_stalls_the_worker() {
        // 200 notifications through an outbox of 2: the worker waits for
        // room over and over, and `try_recv` must wake it every time.
        let proxy = Proxy::new(
            r#"i=0; while [ $i -lt 200 ]; do echo '{"jsonrpc":"2.0","method":"n"}'; i=$((i+1)); done; cat >/dev/null"#,
        );
        let (client, mut peer) = channel_pair(2).expect("channels");
        std::thread::scope(|s| {
            let session = s.spawn(|| {
                run(
                    SessionId(9),
                    "test",
                    &proxy.shared(),
                    ClientSide::Channels(client),
                    |_| {},
                    None,
                )
            });
            let mut got = 0;
            let deadline = Instant::now() + Duration::from_secs(10);
            while got < 200 && Instant::now() < deadline {
                match peer.try_recv() {
                    Ok(Some(_)) => got += 1,
                    Ok(None) => std::thread::sleep(Duration::from_millis(1)),
                    Err(_) => break,
                }
            }
            assert_eq!(got, 200, "the worker stalled with a full outbox");
            peer.end_input();
            session.join().expect("session thread");
        });
        proxy.spawner.reaper().stop();
    }

    #[test]
    fn children_start_with_no_signal_blocked_though_their_thread_ran_a_session_before() {
        // The worker blocks its wake-up signal while it relays; a child
        // that inherited the mask would never see that signal (std does
        // not reset it), nor would its own children.
        let dir = std::env::temp_dir().join(format!("forkline-sigmask-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let masks: Vec<String> = (0..2)
            .map(|i| {
                let file = dir.join(format!("mask-{i}"));
                // No shell in between: a shell may reset the mask itself.
                let mut proxy = Proxy::new("");
                proxy.command = ChildCommand::new(
                    "cp",
                    vec!["/proc/self/status".into(), file.display().to_string()],
                );
                let (ours, theirs) = UnixStream::pair().expect("socketpair");
                ours.set_nonblocking(true).expect("non-blocking");
                theirs.shutdown(Shutdown::Write).expect("half-close");
                let client = ClientSide::Stream(StreamClient {
                    read: ours.as_fd(),
                    write: ours.as_fd(),
                    write_kind: WriteKind::Socket,
                });
                // On this thread, one session after the other.
                let summary = run(
                    SessionId(10 + i),
                    "test",
                    &proxy.shared(),
                    client,
                    |_| {},
                    None,
                );
                assert_eq!(summary.exit.map(|e| e.status.code()), Some(Some(0)));
                proxy.spawner.reaper().stop();
                let status = std::fs::read_to_string(&file).expect("the child wrote its status");
                let mask = status.lines().find(|l| l.starts_with("SigBlk:"));
                mask.unwrap_or("SigBlk: missing").to_string()
            })
            .collect();
        let _ = std::fs::remove_dir_all(&dir);
        for mask in masks {
            assert_eq!(
                mask.split_whitespace().nth(1),
                Some("0000000000000000"),
                "{mask}"
            );
        }
    }

    #[test]
    fn a_stream_client_gets_its_answer_and_the_child_ends_at_eof_on_either_stdin() {
        for stdin in [Stdin::Pipe, Stdin::Socket] {
            a_stream_client_gets_its_answer_and_the_child_ends_at_eof(stdin);
        }
    }

    fn a_stream_client_gets_its_answer_and_the_child_ends_at_eof(stdin: Stdin) {
        // `cat` exits only when its input ends.
        let proxy = Proxy::with_stdin("cat", stdin);
        let (ours, theirs) = UnixStream::pair().expect("socketpair");
        ours.set_nonblocking(true).expect("non-blocking");
        std::thread::scope(|s| {
            let session = s.spawn(|| {
                let client = ClientSide::Stream(StreamClient {
                    read: ours.as_fd(),
                    write: ours.as_fd(),
                    write_kind: WriteKind::Socket,
                });
                run(SessionId(9), "test", &proxy.shared(), client, |_| {}, None)
            });
            (&theirs)
                .write_all(b"{\"jsonrpc\":\"2.0\",\"method\":\"n\"}\n")
                .expect("send");
            let mut line = String::new();
            BufReader::new(&theirs).read_line(&mut line).expect("echo");
            assert_eq!(line, "{\"jsonrpc\":\"2.0\",\"method\":\"n\"}\n");
            theirs.shutdown(Shutdown::Write).expect("half-close");
            let summary = session.join().expect("session thread");
            assert_eq!(summary.reason, EndReason::ClientClosed);
            let exit = summary.exit.expect("the child ran");
            assert!(!exit.forced, "{stdin:?}: the child's input never ended");
            assert_eq!(exit.status.code(), Some(0));
        });
        assert_eq!(proxy.spawner.reaper().live(), 0);
        proxy.spawner.reaper().stop();
    }
}
