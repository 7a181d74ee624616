//! The session table: every live session in a slab, and the limits.
//!
//! Admission and release are the only writes, both O(1) and under one
//! short lock that is never held across I/O. A [`Slot`] is the right to
//! one entry; its `Drop` frees the entry, so a session that ends in any
//! way — return, error, panic — gives its place back.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use slab::Slab;

/// Who a client is, for the per-client limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientKey {
    /// Peer IP address (TCP, HTTP).
    Ip(IpAddr),
    /// Peer user id (Unix socket).
    Uid(u32),
}

impl fmt::Display for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientKey::Ip(ip) => write!(f, "{ip}"),
            ClientKey::Uid(uid) => write!(f, "uid {uid}"),
        }
    }
}

/// A session's public id, unique for the life of the process. Slab keys
/// are reused; this is not, so logs and lookups never confuse two sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s{}", self.0)
    }
}

/// The limits one server's sessions are admitted under. Counts are kept
/// by server name, so a server whose settings a reload changed goes on
/// counting the sessions it already has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quota {
    pub server: Arc<str>,
    pub max_sessions: usize,
    pub max_per_client: usize,
    /// The server came from a `--config` file: refusals name it and its
    /// keys rather than the flags.
    pub named: bool,
}

/// Why a connection was turned away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// `server` is set for a server of a `--config` file.
    MaxSessions {
        limit: usize,
        server: Option<Arc<str>>,
    },
    MaxSessionsPerClient {
        limit: usize,
        client: ClientKey,
        server: Option<Arc<str>>,
    },
    /// The descriptor limit allows no more sessions.
    Descriptors(FdBudget),
    /// `accept` itself ran out of descriptors under the limit `fds`.
    OutOfDescriptors { fds: u64 },
}

/// What the descriptor limit allows: `sessions` sessions at `per_session`
/// descriptors each under `RLIMIT_NOFILE` `limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdBudget {
    pub limit: u64,
    pub sessions: usize,
    pub per_session: usize,
}

impl Refusal {
    /// The label used in logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::MaxSessions { .. } => "max_sessions",
            Refusal::MaxSessionsPerClient { .. } => "max_sessions_per_client",
            Refusal::Descriptors(_) | Refusal::OutOfDescriptors { .. } => "fd_limit",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::MaxSessions {
                limit,
                server: None,
            } => {
                write!(
                    f,
                    "session refused: --max-sessions reached ({limit} of {limit} sessions live)"
                )
            }
            Refusal::MaxSessions {
                limit,
                server: Some(name),
            } => write!(
                f,
                "session refused: server `{name}` reached its maxSessions ({limit} of {limit} sessions live)"
            ),
            Refusal::MaxSessionsPerClient {
                limit,
                client,
                server: None,
            } => write!(
                f,
                "session refused: --max-sessions-per-client reached ({limit} of {limit} sessions live for {client})"
            ),
            Refusal::MaxSessionsPerClient {
                limit,
                client,
                server: Some(name),
            } => write!(
                f,
                "session refused: server `{name}` reached its maxSessionsPerClient ({limit} of {limit} sessions live for {client})"
            ),
            Refusal::OutOfDescriptors { fds } => write!(
                f,
                "session refused: out of file descriptors (the limit, RLIMIT_NOFILE, is {fds})"
            ),
            Refusal::Descriptors(FdBudget {
                limit,
                sessions,
                per_session,
            }) => write!(
                f,
                "session refused: the file descriptor limit is reached (RLIMIT_NOFILE {limit} allows {sessions} sessions at {per_session} descriptors each; {sessions} are live)",
            ),
        }
    }
}

/// A live session's figures as its worker last published them (its
/// metrics tap does, each time the worker is about to wait), for
/// `/sessions`. Relaxed atomics: each figure is read on its own.
#[derive(Debug, Default)]
pub struct Activity {
    pub messages_in: AtomicU64,
    pub messages_out: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Client requests awaiting their answer.
    pub inflight: AtomicU64,
    /// When the last message passed, in milliseconds after `Entry::started`.
    pub last_message_ms: AtomicU64,
    /// `DELETE /sessions/ID` asked this session to end (see
    /// `Sessions::request_end`).
    pub end_requested: AtomicBool,
}

/// What the table knows about a live session.
#[derive(Debug, Clone)]
pub struct Entry {
    pub id: SessionId,
    /// The server it is a session of.
    pub server: Arc<str>,
    pub client: ClientKey,
    pub peer: String,
    /// The HTTP principal (bearer token name), when there is one.
    pub principal: Option<String>,
    pub transport: &'static str,
    pub started: Instant,
    pub child_pid: Option<u32>,
    pub activity: Arc<Activity>,
    /// A stream client's socket, while the session's worker holds it open:
    /// what `request_end` shuts down. Cleared (`Slot::forget_client_fd`)
    /// before the socket closes, so a recycled number is never touched.
    client_fd: Option<RawFd>,
}

/// How `Sessions::request_end` reached a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndRequest {
    /// Its stream client's input was shut down: the worker sees end of file.
    Stream,
    /// A channel (HTTP) client: whoever feeds it must end its input.
    Channel,
    /// No live session has this id.
    Unknown,
}

#[derive(Debug)]
struct Table {
    entries: Slab<Entry>,
    per_server: HashMap<Arc<str>, usize>,
    per_client: HashMap<(Arc<str>, ClientKey), usize>,
    next_id: u64,
}

/// The shared table. Cheap to clone (an `Arc`).
#[derive(Clone)]
pub struct Sessions {
    inner: Arc<Shared>,
}

struct Shared {
    table: Mutex<Table>,
    fds: FdBudget,
    /// Called after every release, outside the lock (the acceptor's waker).
    on_release: Box<dyn Fn() + Send + Sync>,
}

impl Sessions {
    /// An empty table; `fds` is what the descriptor limit in force allows,
    /// over every server.
    pub fn new(fds: FdBudget, on_release: impl Fn() + Send + Sync + 'static) -> Sessions {
        let table = Table {
            entries: Slab::new(),
            per_server: HashMap::new(),
            per_client: HashMap::new(),
            next_id: 1,
        };
        Sessions {
            inner: Arc::new(Shared {
                table: Mutex::new(table),
                fds,
                on_release: Box::new(on_release),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        crate::sync::lock(&self.inner.table)
    }

    /// Admits a session of `quota`'s server for `client`, or says which
    /// limit refuses it. Never blocks beyond the table lock.
    pub fn try_admit(
        &self,
        quota: &Quota,
        client: ClientKey,
        peer: String,
        transport: &'static str,
    ) -> Result<Slot, Refusal> {
        let named = quota.named.then(|| Arc::clone(&quota.server));
        let mut table = self.lock();
        let live = table.per_server.get(&quota.server).copied().unwrap_or(0);
        if live >= quota.max_sessions {
            return Err(Refusal::MaxSessions {
                limit: quota.max_sessions,
                server: named,
            });
        }
        if table.entries.len() >= self.inner.fds.sessions {
            return Err(Refusal::Descriptors(self.inner.fds));
        }
        let client_key = (Arc::clone(&quota.server), client);
        let count = table.per_client.get(&client_key).copied().unwrap_or(0);
        if count >= quota.max_per_client {
            return Err(Refusal::MaxSessionsPerClient {
                limit: quota.max_per_client,
                client,
                server: named,
            });
        }
        table.per_client.insert(client_key, count + 1);
        table.per_server.insert(Arc::clone(&quota.server), live + 1);
        let id = SessionId(table.next_id);
        table.next_id += 1;
        let key = table.entries.insert(Entry {
            id,
            server: Arc::clone(&quota.server),
            client,
            peer,
            principal: None,
            transport,
            started: Instant::now(),
            child_pid: None,
            activity: Arc::default(),
            client_fd: None,
        });
        debug_assert_eq!(
            table.per_client.values().sum::<usize>(),
            table.entries.len(),
            "per-client counts add up to the live sessions"
        );
        Ok(Slot {
            sessions: self.clone(),
            key,
            id,
        })
    }

    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Live sessions of one server.
    pub fn live_for(&self, server: &str) -> usize {
        self.lock().per_server.get(server).copied().unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A copy of every live entry, for admin listings and tests.
    pub fn snapshot(&self) -> Vec<Entry> {
        self.lock().entries.iter().map(|(_, e)| e.clone()).collect()
    }

    /// Asks session `id` to end: marks it (so it ends with reason
    /// `deleted`) and, for a stream client, shuts down the socket's read
    /// side so its worker sees end of file and winds down as at any end.
    /// Done under the table lock, while the entry (and so the socket, see
    /// `Slot::forget_client_fd`) is live: the fd cannot have been reused.
    /// A channel client is left to its front end (`EndRequest::Channel`).
    pub fn request_end(&self, id: SessionId) -> EndRequest {
        let table = self.lock();
        let Some((_, entry)) = table.entries.iter().find(|(_, e)| e.id == id) else {
            return EndRequest::Unknown;
        };
        entry.activity.end_requested.store(true, Ordering::Relaxed);
        match entry.client_fd {
            Some(fd) => {
                // SAFETY: shutdown(2) on a descriptor the entry says is open
                // (see above); it changes no memory of ours.
                unsafe { libc::shutdown(fd, libc::SHUT_RD) };
                EndRequest::Stream
            }
            None => EndRequest::Channel,
        }
    }

    fn release(&self, key: usize, id: SessionId) {
        {
            let mut table = self.lock();
            // The id check guards against a reused key ever being freed twice.
            if table.entries.get(key).is_some_and(|e| e.id == id) {
                let entry = table.entries.remove(key);
                let client_key = (Arc::clone(&entry.server), entry.client);
                if let Some(count) = table.per_client.get_mut(&client_key) {
                    *count -= 1;
                    if *count == 0 {
                        table.per_client.remove(&client_key);
                    }
                }
                if let Some(count) = table.per_server.get_mut(&entry.server) {
                    *count -= 1;
                    if *count == 0 {
                        table.per_server.remove(&entry.server);
                    }
                }
            }
        }
        (self.inner.on_release)();
    }
}

/// The right to one table entry. Dropping it frees the entry.
pub struct Slot {
    sessions: Sessions,
    key: usize,
    id: SessionId,
}

impl Slot {
    pub fn id(&self) -> SessionId {
        self.id
    }

    /// Records the child's pid once it runs.
    pub fn set_child_pid(&self, pid: u32) {
        self.update(|entry| entry.child_pid = Some(pid));
    }

    /// Records the HTTP principal the session serves.
    pub fn set_principal(&self, principal: Option<String>) {
        self.update(|entry| entry.principal = principal);
    }

    /// The session's live figures, shared with its metrics tap.
    pub fn activity(&self) -> Arc<Activity> {
        let table = self.sessions.lock();
        match table.entries.get(self.key).filter(|e| e.id == self.id) {
            Some(entry) => Arc::clone(&entry.activity),
            None => Arc::default(),
        }
    }

    /// The stream client's socket, which `Sessions::request_end` may shut
    /// down until `forget_client_fd`. The caller keeps it open until then.
    /// An end asked for before this (the worker had not started) is
    /// carried out now.
    pub fn set_client_fd(&self, fd: RawFd) {
        self.update(|entry| {
            entry.client_fd = Some(fd);
            if entry.activity.end_requested.load(Ordering::Relaxed) {
                // SAFETY: as in `request_end`; the caller holds `fd` open.
                unsafe { libc::shutdown(fd, libc::SHUT_RD) };
            }
        });
    }

    /// Must come before the client socket closes (`Drop` does it too, for
    /// a slot dropped first).
    pub fn forget_client_fd(&self) {
        self.update(|entry| entry.client_fd = None);
    }

    fn update(&self, change: impl FnOnce(&mut Entry)) {
        let mut table = self.sessions.lock();
        if let Some(entry) = table.entries.get_mut(self.key).filter(|e| e.id == self.id) {
            change(entry);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.sessions.release(self.key, self.id);
    }
}

impl fmt::Debug for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Slot({})", self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn budget(limit: u64, sessions: usize) -> FdBudget {
        FdBudget {
            limit,
            sessions,
            per_session: 4,
        }
    }

    fn quota(max: usize, per_client: usize) -> Quota {
        named("default", max, per_client, false)
    }

    fn named(server: &str, max: usize, per_client: usize, named: bool) -> Quota {
        Quota {
            server: server.into(),
            max_sessions: max,
            max_per_client: per_client,
            named,
        }
    }

    fn ip(last: u8) -> ClientKey {
        ClientKey::Ip(IpAddr::from([127, 0, 0, last]))
    }

    #[test]
    fn enforces_the_total_limit_and_frees_on_drop() {
        let released = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&released);
        let q = quota(2, 10);
        let sessions = Sessions::new(budget(1024, 1000), move || {
            counter.fetch_add(1, Ordering::SeqCst);
        });
        let a = sessions
            .try_admit(&q, ip(1), "a".into(), "tcp")
            .expect("first");
        let b = sessions
            .try_admit(&q, ip(2), "b".into(), "tcp")
            .expect("second");
        assert_eq!(
            sessions
                .try_admit(&q, ip(3), "c".into(), "tcp")
                .unwrap_err(),
            Refusal::MaxSessions {
                limit: 2,
                server: None
            }
        );
        drop(a);
        assert_eq!(released.load(Ordering::SeqCst), 1);
        let c = sessions
            .try_admit(&q, ip(3), "c".into(), "tcp")
            .expect("room again");
        assert_ne!(c.id(), b.id());
        assert_eq!(sessions.len(), 2);
    }

    #[test]
    fn enforces_the_per_client_limit_per_key() {
        let q = quota(10, 1);
        let sessions = Sessions::new(budget(1024, 1000), || {});
        let _a = sessions
            .try_admit(&q, ip(1), "a".into(), "tcp")
            .expect("first for .1");
        let refusal = sessions
            .try_admit(&q, ip(1), "a2".into(), "tcp")
            .unwrap_err();
        assert_eq!(refusal.reason(), "max_sessions_per_client");
        assert!(refusal.to_string().contains("127.0.0.1"), "{refusal}");
        let _b = sessions
            .try_admit(&q, ip(2), "b".into(), "tcp")
            .expect(".2 has its own budget");
        let _u = sessions
            .try_admit(&q, ClientKey::Uid(1000), "u".into(), "unix")
            .expect("uids too");
        assert!(
            sessions
                .try_admit(&q, ClientKey::Uid(1000), "u2".into(), "unix")
                .is_err()
        );
    }

    #[test]
    fn the_descriptor_limit_refuses_like_any_other_limit() {
        let q = quota(100, 100);
        let sessions = Sessions::new(budget(64, 2), || {});
        let _a = sessions
            .try_admit(&q, ip(1), "a".into(), "tcp")
            .expect("first");
        let _b = sessions
            .try_admit(&q, ip(2), "b".into(), "tcp")
            .expect("second");
        let refusal = sessions
            .try_admit(&q, ip(3), "c".into(), "tcp")
            .unwrap_err();
        assert_eq!(refusal.reason(), "fd_limit");
        let text = refusal.to_string();
        assert!(
            text.contains("file descriptor limit")
                && text.contains("RLIMIT_NOFILE 64 allows 2 sessions at 4 descriptors each"),
            "{text}"
        );
    }

    #[test]
    fn ids_are_never_reused_even_when_keys_are() {
        let q = quota(1, 1);
        let sessions = Sessions::new(budget(1024, 1000), || {});
        let first = sessions
            .try_admit(&q, ip(1), "a".into(), "tcp")
            .expect("admit")
            .id();
        let second = sessions
            .try_admit(&q, ip(1), "a".into(), "tcp")
            .expect("admit again")
            .id();
        assert!(second > first);
    }

    #[test]
    fn each_server_has_its_own_limits() {
        let sessions = Sessions::new(budget(1024, 1000), || {});
        let a = named("a", 1, 1, true);
        let b = named("b", 2, 1, true);
        let _a1 = sessions
            .try_admit(&a, ip(1), "p".into(), "http")
            .expect("a");
        let refusal = sessions
            .try_admit(&a, ip(2), "p".into(), "http")
            .unwrap_err();
        assert_eq!(
            refusal.to_string(),
            "session refused: server `a` reached its maxSessions (1 of 1 sessions live)"
        );
        let _b1 = sessions
            .try_admit(&b, ip(1), "p".into(), "http")
            .expect("b counts apart, per client too");
        let refusal = sessions
            .try_admit(&b, ip(1), "p".into(), "http")
            .unwrap_err();
        assert_eq!(refusal.reason(), "max_sessions_per_client");
        assert!(refusal.to_string().contains("server `b`"), "{refusal}");
        assert_eq!((sessions.live_for("a"), sessions.live_for("b")), (1, 1));
        drop(_a1);
        assert_eq!(sessions.live_for("a"), 0);
        assert_eq!(sessions.snapshot()[0].server.as_ref(), "b");
    }

    #[test]
    fn snapshot_shows_the_child_pid() {
        let q = quota(4, 4);
        let sessions = Sessions::new(budget(1024, 1000), || {});
        let slot = sessions
            .try_admit(&q, ip(1), "127.0.0.1:5".into(), "tcp")
            .expect("admit");
        slot.set_child_pid(4242);
        let entries = sessions.snapshot();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].child_pid, Some(4242));
        assert_eq!(entries[0].peer, "127.0.0.1:5");
    }

    #[test]
    fn request_end_shuts_a_stream_clients_input_only_while_it_is_known() {
        use std::io::Read;
        use std::os::fd::AsRawFd;
        use std::os::unix::net::UnixStream;
        let q = quota(4, 4);
        let sessions = Sessions::new(budget(1024, 1000), || {});
        let slot = sessions
            .try_admit(&q, ip(1), "p".into(), "tcp")
            .expect("admit");
        let (mut ours, _theirs) = UnixStream::pair().expect("socketpair");
        slot.set_client_fd(ours.as_raw_fd());
        assert_eq!(sessions.request_end(slot.id()), EndRequest::Stream);
        assert!(slot.activity().end_requested.load(Ordering::Relaxed));
        let mut buf = [0u8; 4];
        assert_eq!(ours.read(&mut buf).expect("read"), 0, "end of file");
        slot.forget_client_fd();
        assert_eq!(sessions.request_end(slot.id()), EndRequest::Channel);
        assert_eq!(sessions.request_end(SessionId(999)), EndRequest::Unknown);
        drop(slot);
        assert_eq!(sessions.request_end(SessionId(1)), EndRequest::Unknown);
    }
}
