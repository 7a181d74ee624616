//! `forkline serve`: the mio loop that owns the listeners, the signals and
//! the waker; admits or refuses each connection and hands it to the pool.
//!
//! The acceptor never blocks on a client: a refusal is one small write on
//! a fresh socket, whose send buffer is empty, made without blocking.
//! Shutdown is driven from here: the first signal closes the listeners and
//! fires the shutdown trigger, the second fires `hurry`; every session
//! that ends wakes the loop through the waker, and once the table is empty
//! the pool is joined and `serve` returns.

use std::io::{self, Write};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use log::{error, info, warn};
use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;

use crate::child::stderr::Hub;
use crate::config::ServeConfig;
use crate::error::{Context, Error};
use crate::net::listener::{Accepted, Listener};
use crate::proto::message::{Message, code};
use crate::session::pool::Pool;
use crate::session::run::{self as session, ClientStream, Shared};
use crate::session::table::{Sessions, Slot};
use crate::session::writer::FdKind;
use crate::shutdown::Trigger;

const SIGNALS: Token = Token(0);
const WAKER: Token = Token(1);
/// Listener `i` is registered as `Token(FIRST_LISTENER + i)`.
const FIRST_LISTENER: usize = 2;

/// A worker idle this long exits; see `Pool::new` for why not longer.
const WORKER_LINGER: Duration = Duration::from_secs(5);
/// A session's worker spawns the child, supervises and answers what was
/// left unanswered; the pumps it starts choose their own stacks.
const WORKER_STACK_BYTES: usize = 256 * 1024;

/// Everything a session's job needs from the proxy, shared by `Arc`.
struct Proxy {
    config: ServeConfig,
    hub: Hub,
    shutdown: Trigger,
    hurry: Trigger,
}

/// Binds every listener, prints where, and serves until SIGTERM/SIGINT.
/// Returns once every session has ended and every worker is joined.
pub fn serve(config: ServeConfig) -> Result<(), Error> {
    let mut poll = Poll::new().context(|| "cannot create the event loop".into())?;
    let waker =
        Arc::new(Waker::new(poll.registry(), WAKER).context(|| "cannot create the waker".into())?);
    let mut signals =
        Signals::new([SIGTERM, SIGINT]).context(|| "cannot install signal handlers".into())?;
    poll.registry()
        .register(&mut signals, SIGNALS, Interest::READABLE)
        .context(|| "cannot watch signals".into())?;

    let mut listeners = Vec::with_capacity(config.listen.len());
    for (i, addr) in config.listen.iter().enumerate() {
        let mut listener = Listener::bind(addr)?;
        poll.registry()
            .register(&mut listener, Token(FIRST_LISTENER + i), Interest::READABLE)
            .context(|| format!("cannot watch {addr}"))?;
        listeners.push(Some(listener));
    }
    // Written whatever the log level: scripts and tests read these lines.
    for listener in listeners.iter().flatten() {
        eprintln!("forkline: listening on {}", listener.local_addr());
    }
    info!(
        "serving `{}` max_sessions={}",
        config.command, config.limits.max_sessions
    );

    let session_waker = Arc::clone(&waker);
    let sessions = Sessions::new(&config.limits, move || {
        // The loop re-checks the table on every wake-up; a failed wake
        // only delays that to the next event.
        let _ = session_waker.wake();
    });
    let proxy = Arc::new(Proxy {
        config,
        hub: Hub::start().context(|| "cannot start the I/O hub thread".into())?,
        shutdown: Trigger::new().context(|| "cannot create the shutdown trigger".into())?,
        hurry: Trigger::new().context(|| "cannot create the shutdown trigger".into())?,
    });
    let pool_waker = Arc::clone(&waker);
    let mut pool = Pool::new(
        proxy.config.limits.max_sessions,
        WORKER_LINGER,
        WORKER_STACK_BYTES,
        // A worker that exited wakes the loop, which joins it.
        move || {
            let _ = pool_waker.wake();
        },
    );
    let mut events = Events::with_capacity(64);

    loop {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(Error::Io {
                what: "event loop failed".into(),
                source: e,
            });
        }
        for event in events.iter() {
            match event.token() {
                SIGNALS => {
                    for signal in signals.pending() {
                        on_signal(signal, &proxy, &mut listeners, &poll);
                    }
                }
                WAKER => {}
                Token(n) => {
                    if let Some(Some(listener)) = listeners.get(n - FIRST_LISTENER) {
                        accept_all(listener, &sessions, &proxy, &mut pool);
                    }
                }
            }
        }
        pool.reap_exited();
        if proxy.shutdown.has_fired() && sessions.is_empty() {
            break;
        }
    }
    pool.join();
    info!("shut down cleanly");
    Ok(())
}

fn on_signal(signal: i32, proxy: &Proxy, listeners: &mut [Option<Listener>], poll: &Poll) {
    let name = if signal == SIGINT {
        "SIGINT"
    } else {
        "SIGTERM"
    };
    if proxy.shutdown.has_fired() {
        warn!("{name} again: skipping the grace period");
        proxy.hurry.fire();
        return;
    }
    info!(
        "{name}: shutting down; in-flight requests get up to {:?}",
        proxy.config.limits.shutdown_grace
    );
    // Closing the listeners first: new connections are refused by the
    // kernel from now on, and Unix socket files disappear.
    for slot in listeners.iter_mut() {
        if let Some(mut listener) = slot.take() {
            let _ = poll.registry().deregister(&mut listener);
        }
    }
    proxy.shutdown.fire();
}

/// Accepts until `WouldBlock`, as edge-triggered readiness requires.
fn accept_all(listener: &Listener, sessions: &Sessions, proxy: &Arc<Proxy>, pool: &mut Pool) {
    loop {
        match listener.accept() {
            Ok(accepted) => admit(accepted, listener.transport(), sessions, proxy, pool),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // ECONNABORTED and friends concern one connection; EMFILE means
            // we are at the fd limit: the connection waits in the backlog
            // and the next readiness event retries.
            Err(e) => {
                warn!("accept on {} failed: {e}", listener.local_addr());
                return;
            }
        }
    }
}

fn admit(
    accepted: Accepted,
    transport: &'static str,
    sessions: &Sessions,
    proxy: &Arc<Proxy>,
    pool: &mut Pool,
) {
    let Accepted {
        stream,
        client,
        peer,
    } = accepted;
    let slot = match sessions.try_admit(client, peer.clone(), transport) {
        Ok(slot) => slot,
        Err(refusal) => {
            info!(
                "refused peer={peer} reason={} ({refusal})",
                refusal.reason()
            );
            let line = Message::error(None, code::SESSION_REFUSED, &refusal.to_string());
            let mut out = Vec::with_capacity(line.line.len() + 1);
            out.extend_from_slice(&line.line);
            out.push(b'\n');
            // The socket is blocking, but a fresh socket's send buffer
            // takes a line this small at once.
            let _ = (&stream).write_all(&out);
            stream.shutdown();
            return;
        }
    };
    let job_proxy = Arc::clone(proxy);
    let job = Box::new(move || run_session(slot, stream, &peer, &job_proxy));
    if pool.execute(job).is_err() {
        // Unreachable while admission caps sessions at the pool's size;
        // the job (and with it the slot and the stream) is dropped.
        error!("no worker could take a session; connection dropped");
    }
}

fn run_session(slot: Slot, stream: crate::net::listener::Stream, peer: &str, proxy: &Proxy) {
    let shared = Shared {
        command: &proxy.config.command,
        limits: &proxy.config.limits,
        shutdown: &proxy.shutdown,
        hurry: &proxy.hurry,
        hub: &proxy.hub,
    };
    let stop_reading = || stream.shutdown_read();
    let client = ClientStream {
        reader: &stream,
        writer: stream.as_fd(),
        writer_kind: FdKind::Socket,
        stop_reading: &stop_reading,
    };
    session::run(slot.id(), peer, &shared, client, |pid| {
        slot.set_child_pid(pid)
    });
    // The slot goes last: once it is free, the acceptor may admit the next
    // session and, during shutdown, may find the table empty.
    drop(stream);
    drop(slot);
}
