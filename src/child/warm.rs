//! The warm pool (`--prespawn N`): children started before anyone asks,
//! so a new session does not wait for its server to boot.
//!
//! One thread keeps the pool full. It starts a child whenever the pool is
//! short, and waits — in one `select` over the exit of every waiting child,
//! a refill request and shutdown — for the next thing to do: a child taken
//! by a session or one that died while waiting is replaced (the death is
//! logged). The pool counts against `--max-sessions`: it holds at most
//! `--max-sessions` minus the live sessions, so a full proxy keeps no
//! child it could not hand out.
//!
//! A warm child starts before its session exists, so its environment
//! cannot name it: `FORKLINE_SESSION_ID` is `warm-N` (`warm-SERVER-N` for
//! a server of a `--config` file, where each server keeps its own pool; N
//! counts the pool's children from 1) and `FORKLINE_PEER` is empty. The
//! log line of the session that takes it names both, so the two can be
//! joined.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Select, Sender};
use log::{info, warn};

use crate::child::process::{ChildIo, ChildProcess, Spawner};
use crate::config::ChildCommand;
use crate::sync::lock;

/// A child waiting for its session.
pub struct Warm {
    pub child: ChildProcess,
    pub io: ChildIo,
    /// Its `FORKLINE_SESSION_ID`.
    pub name: String,
}

/// After a failed start, the pause before the next try (a command that
/// cannot start must not spin the thread).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

struct State {
    waiting: VecDeque<Warm>,
    stopping: bool,
}

/// The pool; `take` is called by session workers.
pub struct WarmPool {
    state: Arc<Mutex<State>>,
    refill: Sender<()>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl WarmPool {
    /// Starts the thread that keeps `size` children warm (fewer while
    /// `live()` sessions leave less room under `max_sessions`). Children
    /// are named `prefix` followed by their count.
    pub fn start(
        prefix: String,
        size: usize,
        max_sessions: usize,
        command: ChildCommand,
        spawner: Spawner,
        live: impl Fn() -> usize + Send + 'static,
    ) -> std::io::Result<WarmPool> {
        let state = Arc::new(Mutex::new(State {
            waiting: VecDeque::new(),
            stopping: false,
        }));
        let (refill, requests) = crossbeam_channel::bounded(1);
        let keeper = Keeper {
            state: Arc::clone(&state),
            requests,
            size,
            max_sessions,
            command,
            spawner,
            live: Box::new(live),
            prefix,
            started: 0,
        };
        let thread = std::thread::Builder::new()
            .name("warm-pool".into())
            .stack_size(128 * 1024)
            .spawn(move || keeper.run())?;
        Ok(WarmPool {
            state,
            refill,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// A warm child, if one is waiting and still alive.
    pub fn take(&self) -> Option<Warm> {
        let warm = {
            let mut state = lock(&self.state);
            loop {
                let warm = state.waiting.pop_front()?;
                if warm.child.watch().status().is_none() {
                    break warm;
                }
                // Died while waiting; the keeper logs and replaces it.
            }
        };
        let _ = self.refill.try_send(());
        Some(warm)
    }

    /// Children waiting now.
    pub fn len(&self) -> usize {
        lock(&self.state).waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Asks the pool to check its size again (a session ended: room under
    /// `--max-sessions` may have come back).
    pub fn nudge(&self) {
        let _ = self.refill.try_send(());
    }

    /// Stops the thread and ends every waiting child (their `Drop` kills
    /// their groups; the reaper reaps them). Call before the reaper stops.
    pub fn stop(&self) {
        lock(&self.state).stopping = true;
        let _ = self.refill.try_send(());
        if let Some(thread) = lock(&self.thread).take() {
            crate::sync::join(thread);
        }
        let waiting = std::mem::take(&mut lock(&self.state).waiting);
        drop(waiting);
    }
}

impl Drop for WarmPool {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Keeper {
    state: Arc<Mutex<State>>,
    requests: Receiver<()>,
    size: usize,
    max_sessions: usize,
    command: ChildCommand,
    spawner: Spawner,
    live: Box<dyn Fn() -> usize + Send>,
    /// `warm-`, or `warm-SERVER-` when several servers each keep a pool.
    prefix: String,
    started: u64,
}

impl Keeper {
    fn run(mut self) {
        loop {
            if lock(&self.state).stopping {
                return;
            }
            self.drop_dead();
            let failed = self.fill();
            // Wait for a refill request, a waiting child's exit, or (after
            // a failed start) the retry pause.
            let exits: Vec<Receiver<crate::shutdown::Never>> = lock(&self.state)
                .waiting
                .iter()
                .map(|w| w.child.watch().receiver().clone())
                .collect();
            let mut select = Select::new();
            select.recv(&self.requests);
            for exit in &exits {
                select.recv(exit);
            }
            let ready = if failed {
                select.select_timeout(RETRY_AFTER_FAILURE).ok()
            } else {
                Some(select.select())
            };
            if let Some(op) = ready {
                let index = op.index();
                if index == 0 {
                    let _ = op.recv(&self.requests);
                } else {
                    let _ = op.recv(&exits[index - 1]);
                }
            }
        }
    }

    /// Forgets children that died while waiting, logging each.
    fn drop_dead(&mut self) {
        let mut state = lock(&self.state);
        state.waiting.retain(|w| match w.child.watch().status() {
            None => true,
            Some(status) => {
                warn!(
                    "warm child {} (pid {}) exited while waiting ({status}); starting another",
                    w.name,
                    w.child.pid()
                );
                false
            }
        });
    }

    /// Starts children until the pool is full; `true` if a start failed.
    fn fill(&mut self) -> bool {
        loop {
            let room = self.max_sessions.saturating_sub((self.live)());
            let target = self.size.min(room);
            if lock(&self.state).waiting.len() >= target || lock(&self.state).stopping {
                return false;
            }
            self.started += 1;
            let name = format!("{}{}", self.prefix, self.started);
            let env = [
                ("FORKLINE_SESSION_ID", name.as_str()),
                ("FORKLINE_PEER", ""),
            ];
            match self.spawner.spawn(&self.command, &env) {
                Ok((child, io)) => {
                    // Sessions may have come while it started: keep it only
                    // if the room is still there (dropping it kills it).
                    let room = self.max_sessions.saturating_sub((self.live)());
                    let mut state = lock(&self.state);
                    if state.waiting.len() < self.size.min(room) && !state.stopping {
                        info!("warm child {name} started pid={}", child.pid());
                        state.waiting.push_back(Warm { child, io, name });
                    } else {
                        info!("warm child {name} not needed after all: ended");
                        drop(state);
                        drop((child, io));
                        return false;
                    }
                }
                Err(e) => {
                    warn!("warm child {name}: {e}; trying again in {RETRY_AFTER_FAILURE:?}");
                    return true;
                }
            }
        }
    }
}
