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
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;

use crate::child::process::Spawner;
use crate::child::reaper::Reaper;
use crate::child::stderr::StderrLog;
use crate::config::{ListenAddr, ServeConfig, ServerSpec, file};
use crate::error::{Context, Error};
use crate::http::frontend::{Admit, CHANNEL_CAPACITY, Frontend, Route};
use crate::net::fd_limit::{self, Reserve};
use crate::net::listener::{AcceptError, Accepted, Listener, Stream};
use crate::net::servers::{self, Catalog, Server};
use crate::ops::admin::{self, Admin, ServerView};
use crate::ops::metrics::Metrics;
use crate::proto::message::{Message, code};
use crate::session::client::{
    ChannelClient, ChannelPeer, ClientSide, Notify, StreamClient, notifying_pair,
};
use crate::session::clock::Clock;
use crate::session::outbox::WriteKind;
use crate::session::pool::Pool;
use crate::session::relay::Control;
use crate::session::rules::Tap;
use crate::session::run::{self as session, Shared};
use crate::session::table::{ClientKey, FdBudget, Refusal, SessionId, Sessions, Slot};
use crate::shutdown::Trigger;
use crate::sys::socket;
use slab::Slab;

const SIGNALS: Token = Token(0);
const WAKER: Token = Token(1);
/// Raw listener `k` (its key in the slab) is `Token(FIRST_LISTENER + k)`.
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
/// What it needs of its server comes with the job (`Arc<Server>`).
struct Proxy {
    config: ServeConfig,
    stderr: StderrLog,
    spawner: Spawner,
    clock: Clock,
    shutdown: Trigger,
    hurry: Trigger,
    metrics: Arc<Metrics>,
}

/// A TCP or Unix listener and the server its connections are sessions of.
struct RawListener {
    listener: Listener,
    addr: ListenAddr,
    server: String,
}

/// Binds every listener, prints where, and serves until SIGTERM/SIGINT;
/// SIGHUP re-reads a `--config` file. Returns once every session has
/// ended and every worker is joined.
pub fn serve(config: ServeConfig) -> Result<(), Error> {
    let fd_limit = fd_limit::raise_to_hard_limit();
    let mut poll = Poll::new().context(|| "cannot create the event loop".into())?;
    let waker =
        Arc::new(Waker::new(poll.registry(), WAKER).context(|| "cannot create the waker".into())?);
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP])
        .context(|| "cannot install signal handlers".into())?;
    poll.registry()
        .register(&mut signals, SIGNALS, Interest::READABLE)
        .context(|| "cannot watch signals".into())?;

    let stderr = StderrLog::start().context(|| "cannot start the stderr log thread".into())?;
    let reaper = Reaper::start().context(|| "cannot start the child reaper".into())?;
    let clock = Clock::start().context(|| "cannot start the session clock".into())?;
    let shutdown = Trigger::new().context(|| "cannot create the shutdown trigger".into())?;
    let hurry = Trigger::new().context(|| "cannot create the shutdown trigger".into())?;
    let named = config.source.is_some();
    let prespawn: usize = config.servers.iter().map(|s| s.prespawn).sum();
    let wanted = servers::max_sessions(&config.servers).saturating_add(prespawn);
    // Decided once: a reload keeps the wiring and the capacity.
    let (stdin, capacity) = fd_limit::plan(fd_limit, fd_limit::open_fds(), wanted);
    // Each warm child holds a session's descriptors but the client's.
    let capacity = capacity.saturating_sub(prespawn);
    let proxy = Arc::new(Proxy {
        stderr,
        spawner: Spawner::new(reaper, stdin),
        clock,
        shutdown,
        hurry,
        metrics: Arc::new(Metrics::new()),
        config,
    });
    let session_waker = Arc::clone(&waker);
    let budget = FdBudget {
        limit: fd_limit,
        sessions: capacity,
        per_session: stdin.fds_per_session(),
    };
    let sessions = Sessions::new(budget, move || {
        // The loop re-checks the table on every wake-up; a failed wake
        // only delays that to the next event.
        let _ = session_waker.wake();
    });
    let started = Catalog::start(
        proxy.config.servers.clone(),
        named,
        &proxy.spawner,
        &sessions,
    )
    .context(|| "cannot start the warm pool".into());
    let mut catalog = match started {
        Ok(catalog) => catalog,
        Err(e) => {
            proxy.spawner.reaper().stop();
            return Err(e);
        }
    };
    let max_sessions = catalog.max_sessions();
    let mut reserve = Reserve::new();
    // Bound last: once a socket exists, everything serving it is in place,
    // so a client (or a test) that sees the socket file can rely on that.
    let bound = bind_all(&proxy.config.servers, &poll).and_then(|listeners| {
        let mut http = Frontend::bind(
            &proxy.config.http,
            poll.registry(),
            Arc::clone(&waker),
            proxy.config.access.clone(),
            catalog.max_message_bytes(),
            max_sessions,
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
            catalog.stop();
            proxy.spawner.reaper().stop();
            return Err(e);
        }
    };
    if max_sessions > capacity {
        warn!(
            "{} {max_sessions} is more than the descriptor limit allows: RLIMIT_NOFILE {fd_limit} \
             leaves room for {capacity} sessions at {} descriptors each; connections past that \
             are refused with -32001 (raise the limit with `ulimit -n` or LimitNOFILE=)",
            if named {
                "maxSessions, summed over the servers, is"
            } else {
                "--max-sessions"
            },
            stdin.fds_per_session()
        );
    }
    // Written whatever the log level: scripts and tests read these lines.
    // The node id first: an operator matching a balancer's server names
    // to nodes needs it even when it was not given (the host name's).
    eprintln!("forkline: node {}", proxy.config.node_id);
    for (_, raw) in &listeners {
        print_listener(raw, named);
    }
    for addr in http.local_addrs() {
        match catalog.only() {
            Some(_) => eprintln!("forkline: listening on http://{addr}/mcp"),
            None => {
                for server in catalog.iter() {
                    eprintln!(
                        "forkline: listening on http://{addr}/servers/{}/mcp",
                        server.name()
                    );
                }
            }
        }
    }
    if let Some(admin) = &admin {
        eprintln!("forkline: listening on admin http://{}", admin.local_addr());
    }
    for server in catalog.iter() {
        info!(
            "serving {}`{}` max_sessions={} fd_limit={fd_limit} fd_capacity={capacity} \
             child_stdin={}",
            if named {
                format!("{} = ", server.name())
            } else {
                String::new()
            },
            server.spec.command,
            server.spec.limits.max_sessions,
            stdin.as_str()
        );
    }

    let pool_waker = Arc::clone(&waker);
    let mut pool = Pool::new(
        max_sessions,
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
                        if signal == SIGHUP {
                            let mut reload = Reload {
                                proxy: &proxy,
                                catalog: &mut catalog,
                                listeners: &mut listeners,
                                sessions: &sessions,
                                pool: &mut pool,
                                http: &mut http,
                                poll: &poll,
                            };
                            reload.run();
                        } else if on_signal(signal, &proxy, &mut listeners, &poll) {
                            http.begin_shutdown(poll.registry());
                        }
                    }
                }
                WAKER => {
                    woken = true;
                    // A session may have ended: room for a warm child.
                    catalog.nudge();
                }
                token if Admin::owns(token) => {
                    if let Some(admin) = admin.as_mut() {
                        let servers = server_views(&catalog, &listeners, &sessions);
                        let mut end_channel = |id| http.end_session(id);
                        let mut ctx = admin::Context {
                            metrics: &proxy.metrics,
                            sessions: &sessions,
                            servers: &servers,
                            draining: proxy.shutdown.has_fired(),
                            fd_limit,
                            fd_capacity: capacity,
                            warm_pool: catalog.iter().map(|s| s.warm_len()).sum(),
                            end_channel: &mut end_channel,
                        };
                        admin.on_event(poll.registry(), token, &mut ctx);
                    }
                }
                token if Frontend::owns(token) => {
                    let mut admit = HttpAdmission {
                        sessions: &sessions,
                        proxy: &proxy,
                        catalog: &catalog,
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
                catalog: &catalog,
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
            ready.extend(listeners.iter().map(|(key, _)| key));
        }
        for key in ready {
            let Some(raw) = listeners.get(key) else {
                continue;
            };
            let Some(server) = catalog.find(&raw.server) else {
                continue;
            };
            let mut admission = Admission {
                sessions: &sessions,
                proxy: &proxy,
                server,
                pool: &mut pool,
                reserve: &mut reserve,
                throttle: &mut throttle,
                fd_limit,
            };
            if admission.drain(&raw.listener) == Drained::RetryLater {
                retry_at = Some(Instant::now() + ACCEPT_RETRY);
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
    catalog.stop();
    proxy.spawner.reaper().stop();
    info!("shut down cleanly");
    Ok(())
}

fn print_listener(raw: &RawListener, named: bool) {
    if named {
        eprintln!(
            "forkline: listening on {} for server {}",
            raw.listener.local_addr(),
            raw.server
        );
    } else {
        eprintln!("forkline: listening on {}", raw.listener.local_addr());
    }
}

fn bind_all(servers: &[ServerSpec], poll: &Poll) -> Result<Slab<RawListener>, Error> {
    let mut listeners = Slab::new();
    for server in servers {
        for addr in &server.listen {
            bind_one(&mut listeners, addr, &server.name, poll)?;
        }
    }
    Ok(listeners)
}

fn bind_one(
    listeners: &mut Slab<RawListener>,
    addr: &ListenAddr,
    server: &str,
    poll: &Poll,
) -> Result<usize, Error> {
    let mut listener = Listener::bind(addr)?;
    let entry = listeners.vacant_entry();
    poll.registry()
        .register(
            &mut listener,
            Token(FIRST_LISTENER + entry.key()),
            Interest::READABLE,
        )
        .context(|| format!("cannot watch {addr}"))?;
    let key = entry.key();
    entry.insert(RawListener {
        listener,
        addr: addr.clone(),
        server: server.to_string(),
    });
    Ok(key)
}

/// What a SIGHUP touches: the file is read and checked whole; only if it
/// checks out and every new listener binds does anything change.
struct Reload<'a> {
    proxy: &'a Proxy,
    catalog: &'a mut Catalog,
    listeners: &'a mut Slab<RawListener>,
    sessions: &'a Sessions,
    pool: &'a mut Pool,
    http: &'a mut Frontend,
    poll: &'a Poll,
}

impl Reload<'_> {
    fn run(&mut self) {
        let Some(source) = &self.proxy.config.source else {
            info!("SIGHUP: nothing to re-read (forkline serves no --config file)");
            return;
        };
        if self.proxy.shutdown.has_fired() {
            info!("SIGHUP: shutting down already; the file is not re-read");
            return;
        }
        let path = source.path.display();
        let loaded = match file::load(&source.path, &source.overrides) {
            Ok(loaded) => loaded,
            Err(problems) => {
                error!(
                    "SIGHUP: {path} does not check out; the settings in force stay. {}",
                    problems.to_string().replace('\n', "; ")
                );
                return;
            }
        };
        if loaded.http != self.proxy.config.http || loaded.admin != self.proxy.config.admin {
            warn!(
                "SIGHUP: {path} changes the HTTP or admin listeners; that takes a restart \
                 (the others are reloaded)"
            );
        }
        let added = match self.bind_new(&loaded.servers) {
            Ok(added) => added,
            Err(e) => {
                error!("SIGHUP: {e}; the settings in force stay");
                return;
            }
        };
        let changes = match self
            .catalog
            .replace(loaded.servers, &self.proxy.spawner, self.sessions)
        {
            Ok(changes) => changes,
            Err(e) => {
                error!("SIGHUP: cannot start a warm pool: {e}; the settings in force stay");
                for key in added {
                    self.close(key);
                }
                return;
            }
        };
        // Each listener stays with its server, moves to the server that
        // now lists its address, or closes. A port-0 address means a fresh
        // port for each server that lists it, so it never moves.
        let keys: Vec<usize> = self.listeners.iter().map(|(key, _)| key).collect();
        for key in keys {
            let raw = &self.listeners[key];
            let lists = |s: &Server| s.spec.listen.contains(&raw.addr);
            if self.catalog.find(&raw.server).is_some_and(|s| lists(s)) {
                continue;
            }
            let mover = if is_fresh_port(&raw.addr) {
                None
            } else {
                self.catalog.iter().find(|s| lists(s))
            };
            match mover.map(|s| s.spec.name.clone()) {
                Some(name) => self.listeners[key].server = name,
                None => self.close(key),
            }
        }
        for &key in &added {
            print_listener(&self.listeners[key], true);
        }
        self.pool.raise_max(self.catalog.max_sessions());
        self.http.set_max_body(self.catalog.max_message_bytes());
        info!("SIGHUP: reloaded {path}: {changes}");
    }

    /// Binds the listeners the new file has and the running one lacks; on
    /// any failure closes those it bound and says why.
    fn bind_new(&mut self, servers: &[ServerSpec]) -> Result<Vec<usize>, Error> {
        let mut added = Vec::new();
        for server in servers {
            for addr in &server.listen {
                // Kept, or (a fixed address) moved from another server.
                let have = |l: &RawListener| {
                    &l.addr == addr && (l.server == server.name || !is_fresh_port(addr))
                };
                if self.listeners.iter().any(|(_, l)| have(l)) {
                    continue;
                }
                match bind_one(self.listeners, addr, &server.name, self.poll) {
                    Ok(key) => added.push(key),
                    Err(e) => {
                        for key in added {
                            self.close(key);
                        }
                        return Err(e);
                    }
                }
            }
        }
        Ok(added)
    }

    fn close(&mut self, key: usize) {
        if let Some(mut raw) = self.listeners.try_remove(key) {
            let _ = self.poll.registry().deregister(&mut raw.listener);
            info!("closed {} (its server is gone)", raw.listener.local_addr());
        }
    }
}

/// `127.0.0.1:0`: a new port at every bind.
fn is_fresh_port(addr: &ListenAddr) -> bool {
    matches!(addr, ListenAddr::Tcp(a) if a.port() == 0)
}

/// What `/servers` and the per-server metrics show.
fn server_views(
    catalog: &Catalog,
    listeners: &Slab<RawListener>,
    sessions: &Sessions,
) -> Vec<ServerView> {
    catalog
        .iter()
        .map(|server| ServerView {
            name: server.spec.name.clone(),
            sessions: sessions.live_for(server.name()),
            max_sessions: server.spec.limits.max_sessions,
            max_sessions_per_client: server.spec.limits.max_sessions_per_client,
            warm: server.warm_len(),
            listeners: listeners
                .iter()
                .filter(|(_, l)| l.server == server.spec.name)
                .map(|(_, l)| l.listener.local_addr().to_string())
                .collect(),
        })
        .collect()
}

/// Returns whether this signal began the shutdown.
fn on_signal(signal: i32, proxy: &Proxy, listeners: &mut Slab<RawListener>, poll: &Poll) -> bool {
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
    info!("{name}: shutting down; in-flight requests get their server's shutdown grace");
    // Closing the listeners first: new connections are refused by the
    // kernel from now on, and Unix socket files disappear.
    for (_, mut raw) in std::mem::take(listeners) {
        let _ = poll.registry().deregister(&mut raw.listener);
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
    /// The server the listener's connections are sessions of.
    server: &'a Arc<Server>,
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
                let refusal = Refusal::OutOfDescriptors { fds: self.fd_limit };
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
        let slot =
            match self
                .sessions
                .try_admit(&self.server.quota, client, peer.clone(), transport)
            {
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
        let server = Arc::clone(self.server);
        let job =
            Box::new(move || run_session(slot, stream, &peer, transport, &job_proxy, &server));
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
    let mut line = Message::error(None, code::SESSION_REFUSED, &refusal.to_string()).line;
    line.push(b'\n');
    let _ = socket::send_now(stream.as_fd(), &line);
    stream.shutdown();
}

fn run_session(
    slot: Slot,
    stream: Stream,
    peer: &str,
    transport: &'static str,
    proxy: &Proxy,
    server: &Server,
) {
    let activity = slot.activity();
    let mut shared = shared(proxy, server);
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
        taps(proxy, server, &slot, transport),
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
    catalog: &'a Catalog,
    pool: &'a mut Pool,
    fd_limit: u64,
}

impl Admit for HttpAdmission<'_> {
    fn route(&self, server: Option<&str>) -> Route {
        let found = match server {
            Some(name) => self.catalog.find(name),
            None => self.catalog.only(),
        };
        match found {
            Some(server) => Route::Found {
                name: Arc::clone(&server.quota.server),
                max_message_bytes: server.spec.limits.max_message_bytes,
            },
            None => Route::Unknown {
                known: self.catalog.names(),
            },
        }
    }

    fn admit(
        &mut self,
        server: &str,
        client: ClientKey,
        peer: String,
        principal: Option<&str>,
        transport: &'static str,
        notify: Notify,
    ) -> Result<(SessionId, ChannelPeer), Refusal> {
        let Some(server) = self.catalog.find(server) else {
            // A reload removed it between routing and admission, which the
            // loop's order rules out; refused as if full.
            return Err(Refusal::MaxSessions {
                limit: 0,
                server: Some(server.into()),
            });
        };
        let slot = self
            .sessions
            .try_admit(&server.quota, client, peer.clone(), transport)
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
                return Err(Refusal::OutOfDescriptors { fds: self.fd_limit });
            }
        };
        let job_proxy = Arc::clone(self.proxy);
        let server = Arc::clone(server);
        let job = Box::new(move || {
            run_channel_session(slot, channels, &peer, transport, &job_proxy, &server);
        });
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
    server: &Server,
) {
    let activity = slot.activity();
    let mut shared = shared(proxy, server);
    // The front end ends the channel's input; this names the reason.
    shared.control.end_requested = Some(&activity.end_requested);
    session::run(
        slot.id(),
        peer,
        &shared,
        ClientSide::Channels(channels),
        |pid| slot.set_child_pid(pid),
        taps(proxy, server, &slot, transport),
    );
    drop(slot);
}

/// What watches the session: its tape with `--record`, and with `--admin`
/// its metrics (which pass everything on to the tape).
fn taps(
    proxy: &Proxy,
    server: &Server,
    slot: &Slot,
    transport: &'static str,
) -> Option<Box<dyn Tap + Send>> {
    let tape = proxy
        .config
        .record
        .as_ref()
        .map(|recorder| recorder.tape(slot.id(), transport, Some(server.name())));
    if proxy.config.admin.is_none() {
        return tape;
    }
    Some(proxy.metrics.tap(slot.activity(), tape))
}

fn shared<'a>(proxy: &'a Proxy, server: &'a Server) -> Shared<'a> {
    Shared {
        command: &server.spec.command,
        limits: &server.spec.limits,
        control: Control {
            shutdown: &proxy.shutdown,
            hurry: &proxy.hurry,
            clock: &proxy.clock,
            end_requested: None,
        },
        stderr: &proxy.stderr,
        spawner: &proxy.spawner,
        warm: server.warm.as_ref(),
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
