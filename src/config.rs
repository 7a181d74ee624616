//! Plain configuration data, validated by `cli` and read everywhere else.
//!
//! Nothing here does I/O. Defaults live in one place (`Limits::default`)
//! so the help text, the tests and the README can quote the same figures.

use std::path::PathBuf;
use std::time::Duration;

use crate::ops::tape::Recorder;

/// The limits every session runs under.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Live sessions at once; also the worker pool's ceiling.
    pub max_sessions: usize,
    /// Live sessions per peer IP (TCP) or peer uid (Unix socket).
    pub max_sessions_per_client: usize,
    /// No message either way for this long ends the session. `None` = never.
    pub idle_timeout: Option<Duration>,
    /// Largest framed message, either direction, without its newline.
    pub max_message_bytes: usize,
    /// Requests of one session forwarded to its child and still awaiting
    /// their answer. The next request gets -32005 and is not forwarded, so
    /// a client that never reads its answers cannot grow the session's
    /// bookkeeping without bound. At least 1.
    pub max_inflight: usize,
    /// How long a child gets after its stdin closes, and again after
    /// SIGTERM; also how long in-flight requests get at shutdown.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_sessions: 64,
            max_sessions_per_client: 16,
            idle_timeout: Some(Duration::from_secs(300)),
            max_message_bytes: 4 * 1024 * 1024,
            max_inflight: 256,
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// Where `serve` listens.
#[derive(Debug, Clone, PartialEq)]
pub enum ListenAddr {
    Tcp(std::net::SocketAddr),
    Unix(PathBuf),
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Tcp(addr) => write!(f, "tcp://{addr}"),
            ListenAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// The command every session's child runs. Fixed at start-up: clients can
/// never choose the program, its arguments or its environment.
#[derive(Debug, Clone, PartialEq)]
pub struct ChildCommand {
    pub program: PathBuf,
    pub args: Vec<String>,
}

impl ChildCommand {
    /// This very binary's `echo-server`: the default child of `serve`.
    pub fn builtin_echo() -> std::io::Result<ChildCommand> {
        Ok(ChildCommand {
            program: std::env::current_exe()?,
            args: vec!["echo-server".into()],
        })
    }
}

impl std::fmt::Display for ChildCommand {
    /// The command line as a user would type it, for logs and errors.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.program.display())?;
        for arg in &self.args {
            write!(f, " {arg}")?;
        }
        Ok(())
    }
}

/// Everything `serve` needs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Raw-socket listeners (TCP, Unix).
    pub listen: Vec<ListenAddr>,
    /// Streamable HTTP (and HTTP+SSE) listeners.
    pub http: Vec<std::net::SocketAddr>,
    /// Who may use the HTTP listeners.
    pub access: crate::http::security::Access,
    pub limits: Limits,
    pub command: ChildCommand,
    /// `--record DIR`: where session tapes go (the directory is checked
    /// when the config is made).
    pub record: Option<Recorder>,
    /// Children kept started and waiting for a session (`--prespawn`).
    pub prespawn: usize,
    /// `--admin ADDR`: where `/metrics`, `/sessions` and `/healthz` are
    /// served (checked to be loopback unless `--admin-allow-remote`).
    pub admin: Option<std::net::SocketAddr>,
    /// `--node-id`: the first field of every HTTP session id (scale-out).
    pub node_id: crate::http::node::NodeId,
}

/// Everything `stdio` needs.
#[derive(Debug, Clone)]
pub struct StdioConfig {
    pub limits: Limits,
    pub command: ChildCommand,
    pub record: Option<Recorder>,
}

/// Where `connect` goes.
#[derive(Debug, Clone, PartialEq)]
pub enum ConnectAddr {
    Tcp(String),
    Unix(PathBuf),
}
