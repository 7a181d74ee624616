//! `forkline serve`: the mio loop that owns the listeners, the signals and
//! the waker; admits or refuses each connection and hands it to the pool.
//!
//! The acceptor never blocks on a client: a refusal is one small
//! non-blocking write on a fresh socket, whose send buffer is empty.
//! Listeners are edge-triggered, so every readiness event is drained until
//! the backlog is empty — whatever goes wrong with one connection, and
//! even at the descriptor ceiling (see `fd_limit::Reserve`), nothing is
//! left waiting unseen. Shutdown is driven from here: the first signal
//! closes the listeners and fires the shutdown trigger, the second fires
//! `hurry`; every session that ends wakes the loop through the waker, and
//! once the table is empty the pool is joined and `serve` returns.

use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{error, info, warn};
use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;

use crate::child::reaper::Reaper;
use crate::child::stderr::StderrLog;
use crate::child::warm::WarmPool;
use crate::config::{ListenAddr, ServeConfig};
use crate::error::{Context, Error};
use crate::http::frontend::{Admit, CHANNEL_CAPACITY, Frontend};
use crate::net::fd_limit::{self, Reserve};
use crate::net::listener::{AcceptError, Accepted, Listener, Stream};
use crate::ops::admin::{self, Admin};
use crate::ops::metrics::Metrics;
use crate::proto::message::{Message, code};
use crate::session::client::{
    ChannelClient, ChannelPeer, ClientSide, Notify, StreamClient, notifying_pair,
};
use crate::session::outbox::WriteKind;
use crate::session::pool::Pool;
use crate::session::relay::Control;
use crate::session::rules::Tap;
use crate::session::run::{self as session, Shared};
use crate::session::table::{ClientKey, Refusal, SessionId, Sessions, Slot};
use crate::shutdown::Trigger;
use crate::sys::socket;

const SIGNALS: Token = Token(0);
const WAKER: Token = Token(1);
/// Listener `i` is registered as `Token(FIRST_LISTENER + i)`.
const FIRST_LISTENER: usize = 2;
/// How long, at shutdown, HTTP answers already owed may take to be written.
const HTTP_LINGER: Duration = Duration::from_secs(2);

/// After a failure that does not concern one connection (out of memory or
/// buffers, out of descriptors with no reserve), the backlog is tried
/// again this much later instead of in a hot loop.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// A worker idle this long exits; see `Pool::new` for why not longer.
const WORKER_LINGER: Duration = Duration::from_secs(5);
/// A session's worker runs its whole session: spawn, relay, teardown. It
/// parses one JSON envelope at a time (serde_json's nesting limit bounds
/// the recursion); only the pages it touches count as memory.
const WORKER_STACK_BYTES: usize = 256 * 1024;

/// Everything a session's job needs from the proxy, shared by `Arc`.
struct Proxy {
    config: ServeConfig,
    stderr: StderrLog,
    reaper: Reaper,
    shutdown: Trigger,
    hurry: Trigger,
    /// `--prespawn`'s children; set once the session table exists (the
    /// pool sizes itself by the sessions live).
    warm: std::sync::OnceLock<WarmPool>,
    metrics: Arc<Metrics>,
}

/// Binds every listener, prints where, and serves until SIGTERM/SIGINT.
/// Returns once every session has ended and every worker is joined.
pub fn serve(config: ServeConfig) -> Result<(), Error> {
    let fd_limit = fd_limit::raise_to_hard_limit();
    let mut poll = Poll::new().context(|| "cannot create the event loop".into())?;
    let waker =
        Arc::new(Waker::new(poll.registry(), WAKER).context(|| "cannot create the waker".into())?);
    let mut signals =
        Signals::new([SIGTERM, SIGINT]).context(|| "cannot install signal handlers".into())?;
    poll.registry()
        .register(&mut signals, SIGNALS, Interest::READABLE)
        .context(|| "cannot watch signals".into())?;

    let proxy = Arc::new(Proxy {
        stderr: StderrLog::start().context(|| "cannot start the stderr log thread".into())?,
        reaper: Reaper::start().context(|| "cannot start the child reaper".into())?,
        shutdown: Trigger::new().context(|| "cannot create the shutdown trigger".into())?,
        hurry: Trigger::new().context(|| "cannot create the shutdown trigger".into())?,
        metrics: Arc::new(Metrics::new()),
        config,
        warm: std::sync::OnceLock::new(),
    });
    let mut reserve = Reserve::new();
    // Bound last: once a socket exists, everything serving it is in place,
    // so a client (or a test) that sees the socket file can rely on that.
    let bound = bind_all(&proxy.config.listen, &poll).and_then(|listeners| {
        let mut http = Frontend::bind(
            &proxy.config.http,
            poll.registry(),
            Arc::clone(&waker),
            proxy.config.access.clone(),
            proxy.config.limits.max_message_bytes,
            proxy.config.limits.max_sessions,
            proxy.config.node_id.clone(),
        )?;
        let metrics = Arc::clone(&proxy.metrics);
        http.count_refusals(Box::new(move |reason| metrics.refused(reason)));
        let admin = proxy
            .config
            .admin
            .map(|addr| Admin::bind(addr, poll.registry()))
            .transpose()?;
        Ok((listeners, http, admin))
    });
    let (mut listeners, mut http, mut admin) = match bound {
        Ok(bound) => bound,
        Err(e) => {
            proxy.reaper.stop();
            return Err(e);
        }
    };
    let limits = &proxy.config.limits;
    // Each warm child holds a session's descriptors but the client's.
    let capacity = fd_limit::session_capacity(fd_limit, fd_limit::open_fds())
        .saturating_sub(proxy.config.prespawn);
    if limits.max_sessions > capacity {
        warn!(
            "--max-sessions {} is more than the descriptor limit allows: RLIMIT_NOFILE {fd_limit} \
             leaves room for {capacity} sessions at {} descriptors each; connections past that \
             are refused with -32001 (raise the limit with `ulimit -n` or LimitNOFILE=)",
            limits.max_sessions,
            fd_limit::FDS_PER_SESSION
        );
    }
    // Written whatever the log level: scripts and tests read these lines.
    // The node id first: an operator matching a balancer's server names
    // to nodes needs it even when it was not given (the host name's).
    eprintln!("forkline: node {}", proxy.config.node_id);
    for listener in listeners.iter().flatten() {
        eprintln!("forkline: listening on {}", listener.local_addr());
    }
    for addr in http.local_addrs() {
        eprintln!("forkline: listening on http://{addr}/mcp");
    }
    if let Some(admin) = &admin {
        eprintln!("forkline: listening on admin http://{}", admin.local_addr());
    }
    info!(
        "serving `{}` max_sessions={} fd_limit={fd_limit} fd_capacity={capacity}",
        proxy.config.command, limits.max_sessions
    );

    let session_waker = Arc::clone(&waker);
    let sessions = Sessions::new(limits, fd_limit, capacity, move || {
        // The loop re-checks the table on every wake-up; a failed wake
        // only delays that to the next event.
        let _ = session_waker.wake();
    });
    if proxy.config.prespawn > 0 {
        let live = sessions.clone();
        let started = WarmPool::start(
            proxy.config.prespawn,
            limits.max_sessions,
            proxy.config.command.clone(),
            proxy.reaper.clone(),
            move || live.len(),
        )
        .context(|| "cannot start the warm pool".into());
        match started {
            Ok(warm) => {
                let _ = proxy.warm.set(warm);
            }
            Err(e) => {
                proxy.reaper.stop();
                return Err(e);
            }
        }
    }
    let pool_waker = Arc::clone(&waker);
    let mut pool = Pool::new(
        limits.max_sessions,
        WORKER_LINGER,
        WORKER_STACK_BYTES,
        // A worker that exited wakes the loop, which joins it.
        move || {
            let _ = pool_waker.wake();
        },
    );
    let mut events = Events::with_capacity(64);
    let mut throttle = Throttle::default();
    // Listeners whose backlog must be tried again after ACCEPT_RETRY.
    let mut retry_at: Option<Instant> = None;

    // Once the last session has ended at shutdown, how long what is owed
    // to HTTP clients may take to be written before the loop ends anyway.
    let mut linger_until: Option<Instant> = None;

    loop {
        let admin_deadline = admin.as_ref().and_then(Admin::next_deadline);
        let wake_at = [retry_at, http.next_deadline(), linger_until, admin_deadline]
            .into_iter()
            .flatten()
            .min();
        let timeout = wake_at.map(|at| at.saturating_duration_since(Instant::now()));
        if let Err(e) = poll.poll(&mut events, timeout) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(Error::Io {
                what: "event loop failed".into(),
                source: e,
            });
        }
        let mut ready: Vec<usize> = Vec::new();
        let mut woken = false;
        for event in events.iter() {
            match event.token() {
                SIGNALS => {
                    for signal in signals.pending() {
                        if on_signal(signal, &proxy, &mut listeners, &poll) {
                            http.begin_shutdown(poll.registry());
                        }
                    }
                }
                WAKER => {
                    woken = true;
                    // A session may have ended: room for a warm child.
                    if let Some(warm) = proxy.warm.get() {
                        warm.nudge();
                    }
                }
                token if Admin::owns(token) => {
                    if let Some(admin) = admin.as_mut() {
                        let mut end_channel = |id| http.end_session(id);
                        let mut ctx = admin::Context {
                            metrics: &proxy.metrics,
                            sessions: &sessions,
                            draining: proxy.shutdown.has_fired(),
                            fd_limit,
                            fd_capacity: capacity,
                            warm_pool: proxy.warm.get().map_or(0, WarmPool::len),
                            end_channel: &mut end_channel,
                        };
                        admin.on_event(poll.registry(), token, &mut ctx);
                    }
                }
                token if Frontend::owns(token) => {
                    let mut admit = HttpAdmission {
                        sessions: &sessions,
                        proxy: &proxy,
                        pool: &mut pool,
                        fd_limit,
                    };
                    http.on_event(poll.registry(), event, &mut admit);
                }
                Token(n) => ready.push(n - FIRST_LISTENER),
            }
        }
        if woken {
            let mut admit = HttpAdmission {
                sessions: &sessions,
                proxy: &proxy,
                pool: &mut pool,
                fd_limit,
            };
            http.on_wake(poll.registry(), &mut admit);
        }
        http.on_timers(poll.registry());
        if let Some(admin) = admin.as_mut() {
            admin.on_timers(poll.registry());
        }
        if retry_at.is_some_and(|at| Instant::now() >= at) {
            retry_at = None;
            ready.extend(0..listeners.len());
        }
        for i in ready {
            if let Some(Some(listener)) = listeners.get(i) {
                let mut admission = Admission {
                    sessions: &sessions,
                    proxy: &proxy,
                    pool: &mut pool,
                    reserve: &mut reserve,
                    throttle: &mut throttle,
                    fd_limit,
                };
                if admission.drain(listener) == Drained::RetryLater {
                    retry_at = Some(Instant::now() + ACCEPT_RETRY);
                }
            }
        }
        pool.reap_exited();
        if proxy.shutdown.has_fired() && sessions.is_empty() {
            let until = *linger_until.get_or_insert_with(|| Instant::now() + HTTP_LINGER);
            if http.is_flushed() || Instant::now() >= until {
                break;
            }
        }
    }
    if let Some(admin) = admin.as_mut() {
        admin.close_all(poll.registry());
    }
    pool.join();
    if let Some(warm) = proxy.warm.get() {
        warm.stop();
    }
    proxy.reaper.stop();
    info!("shut down cleanly");
    Ok(())
}

fn bind_all(addrs: &[ListenAddr], poll: &Poll) -> Result<Vec<Option<Listener>>, Error> {
    let mut listeners = Vec::with_capacity(addrs.len());
    for (i, addr) in addrs.iter().enumerate() {
        let mut listener = Listener::bind(addr)?;
        poll.registry()
            .register(&mut listener, Token(FIRST_LISTENER + i), Interest::READABLE)
            .context(|| format!("cannot watch {addr}"))?;
        listeners.push(Some(listener));
    }
    Ok(listeners)
}

/// Returns whether this signal began the shutdown.
fn on_signal(signal: i32, proxy: &Proxy, listeners: &mut [Option<Listener>], poll: &Poll) -> bool {
    let name = if signal == SIGINT {
        "SIGINT"
    } else {
        "SIGTERM"
    };
    if proxy.shutdown.has_fired() {
        warn!("{name} again: skipping the grace period");
        proxy.hurry.fire();
        return false;
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
    true
}

#[derive(Debug, PartialEq, Eq)]
enum Drained {
    Empty,
    RetryLater,
}

/// Everything admitting a connection touches.
struct Admission<'a> {
    sessions: &'a Sessions,
    proxy: &'a Arc<Proxy>,
    pool: &'a mut Pool,
    reserve: &'a mut Reserve,
    throttle: &'a mut Throttle,
    fd_limit: u64,
}

impl Admission<'_> {
    /// Accepts until the backlog is empty, as edge-triggered readiness
    /// requires. Only a failure of `accept(2)` itself that would repeat at
    /// once stops early, asking to be called again later.
    fn drain(&mut self, listener: &Listener) -> Drained {
        loop {
            match listener.accept() {
                Ok(accepted) => self.admit(accepted, listener.transport()),
                Err(AcceptError::Drained) => return Drained::Empty,
                Err(AcceptError::Connection(e)) => {
                    self.throttle.warn(format_args!(
                        "a connection on {} could not be set up and was closed: {e}",
                        listener.local_addr()
                    ));
                }
                Err(AcceptError::Listener(e)) => match e.raw_os_error() {
                    Some(libc::EINTR | libc::ECONNABORTED | libc::EPROTO | libc::EPERM) => {}
                    Some(libc::EMFILE | libc::ENFILE) => {
                        if !self.refuse_without_descriptors(listener) {
                            self.throttle.warn(format_args!(
                                "accept on {} failed: {e}; retrying",
                                listener.local_addr()
                            ));
                            return Drained::RetryLater;
                        }
                    }
                    _ => {
                        self.throttle.warn(format_args!(
                            "accept on {} failed: {e}; retrying",
                            listener.local_addr()
                        ));
                        return Drained::RetryLater;
                    }
                },
            }
        }
    }

    /// Out of descriptors: spends the reserve to take one connection and
    /// tell it why it is refused. `false` if that was not possible.
    fn refuse_without_descriptors(&mut self, listener: &Listener) -> bool {
        if !self.reserve.release() {
            return false;
        }
        let refused = match listener.accept() {
            Ok(accepted) => {
                let refusal = Refusal::Descriptors {
                    fds: self.fd_limit,
                    sessions: 0,
                };
                info!(
                    "refused peer={} reason={} ({refusal})",
                    accepted.peer,
                    refusal.reason()
                );
                self.proxy.metrics.refused(refusal.reason());
                refuse(&accepted.stream, &refusal);
                true
            }
            Err(_) => false,
        };
        self.reserve.restore();
        refused
    }

    fn admit(&mut self, accepted: Accepted, transport: &'static str) {
        let Accepted {
            stream,
            client,
            peer,
        } = accepted;
        let slot = match self.sessions.try_admit(client, peer.clone(), transport) {
            Ok(slot) => slot,
            Err(refusal) => {
                info!(
                    "refused peer={peer} reason={} ({refusal})",
                    refusal.reason()
                );
                self.proxy.metrics.refused(refusal.reason());
                refuse(&stream, &refusal);
                return;
            }
        };
        self.proxy.metrics.session_started(transport);
        let job_proxy = Arc::clone(self.proxy);
        let job = Box::new(move || run_session(slot, stream, &peer, transport, &job_proxy));
        if self.pool.execute(job).is_err() {
            // Unreachable while admission caps sessions at the pool's size;
            // the job (and with it the slot and the stream) is dropped.
            error!("no worker could take a session; connection dropped");
        }
    }
}

/// Sends the -32001 line and closes. The socket is fresh, so its send
/// buffer takes a line this small at once.
fn refuse(stream: &Stream, refusal: &Refusal) {
    let line = Message::error(None, code::SESSION_REFUSED, &refusal.to_string());
    let _ = socket::send_now(stream.as_fd(), &[&line.line, b"\n"]);
    stream.shutdown();
}

fn run_session(slot: Slot, stream: Stream, peer: &str, transport: &'static str, proxy: &Proxy) {
    let activity = slot.activity();
    let mut shared = shared(proxy);
    shared.control.end_requested = Some(&activity.end_requested);
    let client = ClientSide::Stream(StreamClient {
        read: stream.as_fd(),
        write: stream.as_fd(),
        write_kind: WriteKind::Socket,
    });
    // From here until `forget_client_fd`, `DELETE /sessions/ID` may shut
    // the socket's read side down (under the table lock).
    slot.set_client_fd(stream.as_fd().as_raw_fd());
    session::run(
        slot.id(),
        peer,
        &shared,
        client,
        |pid| slot.set_child_pid(pid),
        taps(proxy, &slot, transport),
    );
    slot.forget_client_fd();
    // The slot goes last: once it is free, the acceptor may admit the next
    // session and, during shutdown, may find the table empty.
    drop(stream);
    drop(slot);
}

/// What the HTTP front end admits sessions through.
struct HttpAdmission<'a> {
    sessions: &'a Sessions,
    proxy: &'a Arc<Proxy>,
    pool: &'a mut Pool,
    fd_limit: u64,
}

impl Admit for HttpAdmission<'_> {
    fn admit(
        &mut self,
        client: ClientKey,
        peer: String,
        principal: Option<&str>,
        transport: &'static str,
        notify: Notify,
    ) -> Result<(SessionId, ChannelPeer), Refusal> {
        let slot = self
            .sessions
            .try_admit(client, peer.clone(), transport)
            .inspect_err(|refusal| self.proxy.metrics.refused(refusal.reason()))?;
        self.proxy.metrics.session_started(transport);
        if principal.is_some() {
            slot.set_principal(principal.map(str::to_string));
        }
        let id = slot.id();
        let (channels, channel_peer) = match notifying_pair(CHANNEL_CAPACITY, Some(notify)) {
            Ok(pair) => pair,
            Err(e) => {
                error!("cannot set up an HTTP session's channels: {e}");
                return Err(Refusal::Descriptors {
                    fds: self.fd_limit,
                    sessions: 0,
                });
            }
        };
        let job_proxy = Arc::clone(self.proxy);
        let job =
            Box::new(move || run_channel_session(slot, channels, &peer, transport, &job_proxy));
        if self.pool.execute(job).is_err() {
            error!("no worker could take a session; HTTP session dropped");
        }
        Ok((id, channel_peer))
    }
}

fn run_channel_session(
    slot: Slot,
    channels: ChannelClient,
    peer: &str,
    transport: &'static str,
    proxy: &Proxy,
) {
    let activity = slot.activity();
    let mut shared = shared(proxy);
    // The front end ends the channel's input; this names the reason.
    shared.control.end_requested = Some(&activity.end_requested);
    session::run(
        slot.id(),
        peer,
        &shared,
        ClientSide::Channels(channels),
        |pid| slot.set_child_pid(pid),
        taps(proxy, &slot, transport),
    );
    drop(slot);
}

/// What watches the session: its tape with `--record`, and with `--admin`
/// its metrics (which pass everything on to the tape).
fn taps(proxy: &Proxy, slot: &Slot, transport: &'static str) -> Option<Box<dyn Tap + Send>> {
    let tape = proxy
        .config
        .record
        .as_ref()
        .map(|recorder| recorder.tape(slot.id(), transport));
    if proxy.config.admin.is_none() {
        return tape;
    }
    Some(proxy.metrics.tap(slot.activity(), tape))
}

fn shared(proxy: &Proxy) -> Shared<'_> {
    Shared {
        command: &proxy.config.command,
        limits: &proxy.config.limits,
        control: Control {
            shutdown: &proxy.shutdown,
            hurry: &proxy.hurry,
            end_requested: None,
        },
        stderr: &proxy.stderr,
        reaper: &proxy.reaper,
        warm: proxy.warm.get(),
    }
}

/// At most one warning a second for accept failures, with a count of the
/// ones held back, so a persistent failure cannot flood the log.
#[derive(Default)]
struct Throttle {
    last: Option<Instant>,
    held_back: u64,
}

impl Throttle {
    fn warn(&mut self, what: std::fmt::Arguments<'_>) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < Duration::from_secs(1))
        {
            self.held_back += 1;
            return;
        }
        if self.held_back > 0 {
            warn!(
                "{what} ({} similar failures in the last second not logged)",
                self.held_back
            );
        } else {
            warn!("{what}");
        }
        self.last = Some(now);
        self.held_back = 0;
    }
}
