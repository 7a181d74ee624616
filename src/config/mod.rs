//! Plain configuration data, validated by `cli` (and `file`, for
//! `--config`) and read everywhere else.
//!
//! Nothing in this module does I/O; `file` reads the config file.
//! Defaults live in one place (`Limits::default`) so the help text, the
//! tests and the README can quote the same figures.

use std::path::PathBuf;
use std::time::Duration;

use crate::ops::tape::Recorder;

pub mod env;
pub mod file;
pub mod values;

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
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
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

/// The command every session's child runs. Fixed at start-up (or at a
/// reload of `--config`): clients can never choose the program, its
/// arguments or its environment.
#[derive(Debug, Clone, PartialEq)]
pub struct ChildCommand {
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Added to forkline's own environment (a config file's `env`).
    pub env: Vec<(String, String)>,
    /// The program and arguments as the config file wrote them, before
    /// `${env:NAME}` was expanded, when that changed them: what logs and
    /// tapes show, so a secret passed as an argument is not written out.
    pub written: Option<Vec<String>>,
}

impl ChildCommand {
    pub fn new(program: impl Into<PathBuf>, args: Vec<String>) -> ChildCommand {
        ChildCommand {
            program: program.into(),
            args,
            env: Vec::new(),
            written: None,
        }
    }

    /// This very binary's `echo-server`: the default child of `serve`.
    pub fn builtin_echo() -> std::io::Result<ChildCommand> {
        Ok(ChildCommand::new(
            std::env::current_exe()?,
            vec!["echo-server".into()],
        ))
    }

    /// The words to show for it (see `written`).
    pub fn shown(&self) -> Vec<String> {
        match &self.written {
            Some(words) => words.clone(),
            None => std::iter::once(self.program.display().to_string())
                .chain(self.args.iter().cloned())
                .collect(),
        }
    }
}

impl std::fmt::Display for ChildCommand {
    /// The command line as a user would type it, for logs and errors.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown().join(" "))
    }
}

/// One MCP server forkline serves: every session of it gets its own child
/// of `command`. Without `--config` there is one, named [`DEFAULT_SERVER`].
#[derive(Debug, Clone, PartialEq)]
pub struct ServerSpec {
    /// Its name in `/servers/NAME/mcp`, logs, `/sessions` and metrics.
    pub name: String,
    pub command: ChildCommand,
    pub limits: Limits,
    /// Children kept started and waiting for a session (`--prespawn`).
    pub prespawn: usize,
    /// Its own raw-socket listeners (TCP, Unix).
    pub listen: Vec<ListenAddr>,
}

/// The name of the one server of a `serve` without `--config`.
pub const DEFAULT_SERVER: &str = "default";

/// Limits as a config file's `forkline` object or the command line sets
/// them: each one that is `Some` replaces the value beneath it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LimitSettings {
    pub max_sessions: Option<usize>,
    pub max_sessions_per_client: Option<usize>,
    /// `Duration::ZERO` = never.
    pub idle_timeout: Option<Duration>,
    pub max_message_bytes: Option<usize>,
    pub max_inflight: Option<usize>,
    pub shutdown_grace: Option<Duration>,
    pub prespawn: Option<usize>,
}

impl LimitSettings {
    /// Lays these settings over `limits` and `prespawn`.
    pub fn apply(&self, limits: &mut Limits, prespawn: &mut usize) {
        if let Some(n) = self.max_sessions {
            limits.max_sessions = n;
        }
        if let Some(n) = self.max_sessions_per_client {
            limits.max_sessions_per_client = n;
        }
        if let Some(d) = self.idle_timeout {
            limits.idle_timeout = (!d.is_zero()).then_some(d);
        }
        if let Some(n) = self.max_message_bytes {
            limits.max_message_bytes = n;
        }
        if let Some(n) = self.max_inflight {
            limits.max_inflight = n;
        }
        if let Some(d) = self.shutdown_grace {
            limits.shutdown_grace = d;
        }
        if let Some(n) = self.prespawn {
            *prespawn = n;
        }
    }
}

/// What the command line says about a `--config` file's contents: the
/// flags given there win over the file, at start and at every reload.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    pub limits: LimitSettings,
    /// `--tcp`/`--unix`: only for a file that serves one server.
    pub listen: Vec<ListenAddr>,
    /// `--http` given: replaces the file's.
    pub http: Option<Vec<std::net::SocketAddr>>,
    /// `--admin` given: replaces the file's.
    pub admin: Option<std::net::SocketAddr>,
}

/// `serve --config`: the file, and the flags that win over it.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    pub path: PathBuf,
    pub overrides: Overrides,
    /// `--admin-allow-remote`.
    pub admin_allow_remote: bool,
}

/// Everything `serve` needs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// What is served; at least one, names unique.
    pub servers: Vec<ServerSpec>,
    /// Streamable HTTP (and HTTP+SSE) listeners.
    pub http: Vec<std::net::SocketAddr>,
    /// Who may use the HTTP listeners.
    pub access: crate::http::security::Access,
    /// `--record DIR`: where session tapes go (the directory is checked
    /// when the config is made).
    pub record: Option<Recorder>,
    /// `--admin ADDR`: where `/metrics`, `/sessions` and `/healthz` are
    /// served (checked to be loopback unless `--admin-allow-remote`).
    pub admin: Option<std::net::SocketAddr>,
    /// `--config FILE`, which SIGHUP re-reads; `None` without one.
    pub source: Option<ConfigSource>,
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
