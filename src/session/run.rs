//! One session from its first byte to its last: spawn the child, relay
//! until the session ends, stop the child, answer what was left
//! unanswered, and say how it went.
//!
//! All of it runs on the calling (worker) thread. Every resource is owned
//! by a value whose `Drop` gives it back — the child's group is killed,
//! the exit watch forgets our socket, the client socket closes — so a
//! session that ends any way, a panic included, leaves nothing behind.

use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Instant;

use log::{info, warn};

use crate::child::process::{self, Exit};
use crate::child::reaper::{ExitWatch, Reaper};
use crate::child::stderr::StderrLog;
use crate::config::{ChildCommand, Limits};
use crate::proto::message::code;
use crate::session::client::ClientSide;
use crate::session::relay::{ChildSide, Control, EndReason, Relay};
use crate::session::rules::{Counters, Tap};
use crate::session::table::SessionId;

/// What every session of one proxy shares.
pub struct Shared<'a> {
    pub command: &'a ChildCommand,
    pub limits: &'a Limits,
    pub control: Control<'a>,
    pub stderr: &'a StderrLog,
    pub reaper: &'a Reaper,
}

/// How a session went, for the caller's exit status and tests.
#[derive(Debug)]
pub struct Summary {
    pub reason: EndReason,
    /// `None` when the child could not be started.
    pub exit: Option<Exit>,
    pub counters: Counters,
}

/// Our end of the child's stdio. Withdraws the reaper's wake-up before the
/// socket closes, so the reaper never touches a recycled fd number.
struct ChildSocket {
    stream: UnixStream,
    watch: Arc<ExitWatch>,
}

impl ChildSocket {
    fn new(stream: UnixStream, watch: Arc<ExitWatch>) -> ChildSocket {
        watch.wake_on_exit(Some(stream.as_raw_fd()));
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
    let started = Instant::now();
    let summary = run_session(id, peer, shared, client, on_spawn, tap);
    info!(
        "[{id}] session closed reason={} dur_ms={} in={} out={}{}",
        summary.reason.as_str(),
        started.elapsed().as_millis(),
        summary.counters.messages_in,
        summary.counters.messages_out,
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
    tap: Option<Box<dyn Tap + Send>>,
) -> Summary {
    let limits = shared.limits;
    let session_id = id.to_string();
    let env = [
        ("FORKLINE_SESSION_ID", session_id.as_str()),
        ("FORKLINE_PEER", peer),
    ];
    let (mut child, io) = match process::spawn(shared.reaper, shared.command, &env) {
        Ok(spawned) => spawned,
        Err(e) => {
            warn!("[{id}] {e}");
            let why = e.to_string();
            let mut relay = Relay::new(
                id,
                limits,
                client,
                ChildSide::Missing(&why),
                shared.control,
                tap,
            );
            let reason = relay.run();
            relay.drain_client(limits.shutdown_grace);
            return Summary {
                reason,
                exit: None,
                counters: relay.counters(),
            };
        }
    };
    on_spawn(child.pid());
    info!(
        "[{id}] session opened peer={peer} pid={} command=\"{}\"",
        child.pid(),
        shared.command
    );
    shared.stderr.watch(id, io.stderr);
    let socket = ChildSocket::new(io.stdio, Arc::clone(child.watch()));

    let mut relay = Relay::new(
        id,
        limits,
        client,
        ChildSide::Running(socket.stream.as_fd()),
        shared.control,
        tap,
    );
    let reason = relay.run();
    relay.finish_input();
    // Closing its stdin is the polite end (MCP stdio, "Shutdown").
    let _ = socket.stream.shutdown(Shutdown::Write);
    let exit = child.stop(limits.shutdown_grace, shared.control.hurry);
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
    drop(relay);
    drop(socket);
    Summary {
        reason,
        exit: Some(exit),
        counters,
    }
}
