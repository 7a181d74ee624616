//! The command line: clap-derived arguments turned into validated configs.
//!
//! Value parsers reject bad input at parse time, so clap's own error names
//! the flag and exits 2; nothing downstream re-validates.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::config::values::{
    parse_at_least_one, parse_bytes, parse_count, parse_idle_timeout, parse_seconds,
    parse_socket_addr,
};
use crate::config::{
    ChildCommand, ConfigSource, ConnectAddr, DEFAULT_SERVER, LimitSettings, Limits, ListenAddr,
    Overrides, ServeConfig, ServerSpec, StdioConfig, file,
};
use crate::error::Error;
use crate::ops::tape::Recorder;

#[derive(Debug, Parser)]
#[command(
    name = "forkline",
    version,
    about = "A multi-session forward proxy for MCP: one fresh stdio server process per client session",
    arg_required_else_help = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// More log output (-v debug, -vv trace); RUST_LOG, when set, wins
    #[arg(short, long, action = ArgAction::Count, global = true, display_order = 900)]
    pub verbose: u8,
    /// Less log output (-q warnings only, -qq errors only)
    #[arg(short, long, action = ArgAction::Count, global = true, conflicts_with = "verbose", display_order = 901)]
    pub quiet: u8,
    /// Log lines as text, or as one JSON object per line for log shippers
    #[arg(
        long,
        value_enum,
        global = true,
        default_value = "text",
        display_order = 902
    )]
    pub log_format: crate::logging::Format,
}

impl Cli {
    /// Parses the process's arguments, exiting with clap's message (and
    /// status 2) when they are wrong.
    pub fn parse_args() -> Cli {
        Cli::from_matches(&Cli::command().get_matches()).unwrap_or_else(|e| e.exit())
    }

    /// As `parse_args`, for the tests.
    pub fn try_parse_args<I, T>(argv: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Cli::from_matches(&Cli::command().try_get_matches_from(argv)?)
    }

    /// Also records which `serve` flags the command line gave, which win
    /// over a `--config` file (a default does not).
    fn from_matches(matches: &ArgMatches) -> Result<Cli, clap::Error> {
        let mut cli = Cli::from_arg_matches(matches)?;
        if let (Command::Serve(args), Some(("serve", sub))) =
            (&mut cli.command, matches.subcommand())
        {
            args.given = sub
                .ids()
                .filter(|id| sub.value_source(id.as_str()) == Some(ValueSource::CommandLine))
                .map(|id| id.as_str().to_string())
                .collect();
        }
        Ok(cli)
    }
}

// Parsed once per process: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Listen for clients; every connection gets its own child process
    Serve(ServeArgs),
    /// Run one session on forkline's own stdin/stdout
    Stdio(StdioArgs),
    /// Join stdin/stdout to a session of a remote `forkline serve`
    Connect(ConnectArgs),
    /// Check a `--config` file without serving it: every problem with its
    /// JSON path (exit 2), or one line per server (exit 0)
    Check(CheckArgs),
    /// Print a session tape written by `--record` as a readable transcript
    Replay(ReplayArgs),
    /// A tiny built-in MCP server (tool `echo`), speaking both protocol eras
    EchoServer,
}

// The child's command is the first positional argument, with or without
// `--` before it: some MCP clients (the MCP Inspector's `--cli`) swallow
// the `--`. From the command on every word is the child's, so `srv --tcp x`
// passes `--tcp x` to `srv`; forkline's own options go before it.
// `trailing_var_arg` alone does that. `allow_hyphen_values` is left off on
// purpose: with it, an unknown option before the command (`--bogus srv`)
// would become the command instead of an error; a program whose name
// starts with `-` still works after `--`.
#[derive(Debug, Args)]
#[command(
    override_usage = "forkline serve [OPTIONS] [[--] COMMAND [ARGS...]]\n       forkline serve --config FILE [OPTIONS]"
)]
pub struct ServeArgs {
    /// Listen for raw TCP (newline-delimited JSON-RPC); repeatable.
    /// Default when no listener is given: 127.0.0.1:7070
    #[arg(long = "tcp", value_name = "ADDR", value_parser = parse_socket_addr)]
    pub tcp: Vec<std::net::SocketAddr>,
    /// Listen on a Unix domain socket; repeatable. A stale socket file is
    /// replaced and the file is removed at exit
    #[arg(long = "unix", value_name = "PATH")]
    pub unix: Vec<PathBuf>,
    /// Serve MCP Streamable HTTP at http://ADDR/mcp (and the older HTTP+SSE
    /// transport at /sse); repeatable
    #[arg(long = "http", value_name = "ADDR", value_parser = parse_socket_addr)]
    pub http: Vec<std::net::SocketAddr>,
    /// HTTP clients must send `Authorization: Bearer TOKEN` with a token
    /// from this file (one `name:token` per line; the name is the principal)
    #[arg(long, value_name = "PATH")]
    pub auth_token_file: Option<PathBuf>,
    /// Accept HTTP requests from this browser Origin besides localhost
    /// (e.g. https://app.example); repeatable
    #[arg(long = "allow-origin", value_name = "ORIGIN")]
    pub allow_origin: Vec<String>,
    /// Keep N children started and waiting, so a new session does not wait
    /// for its server to boot; they count against --max-sessions
    #[arg(
        long,
        value_name = "N",
        allow_negative_numbers = true,
        default_value = "0",
        value_parser = parse_count
    )]
    pub prespawn: usize,
    /// Serve /metrics (Prometheus text), /sessions (JSON; DELETE
    /// /sessions/ID ends one) and /healthz at http://ADDR. No
    /// authentication: a loopback address unless --admin-allow-remote
    #[arg(long = "admin", value_name = "ADDR", value_parser = parse_socket_addr)]
    pub admin: Option<std::net::SocketAddr>,
    /// Let --admin bind an address that is not loopback (anyone who can
    /// reach it can list and end sessions: firewall it)
    #[arg(long = "admin-allow-remote")]
    pub admin_allow_remote: bool,
    /// Serve every server of FILE, the `mcpServers` JSON of Claude Desktop,
    /// Cursor or VS Code, at /servers/NAME/mcp. Flags given on the command
    /// line win over the file, for every server; SIGHUP re-reads it
    #[arg(long = "config", value_name = "FILE", conflicts_with = "command")]
    pub config: Option<PathBuf>,
    /// This node's name, the first field of every HTTP session id
    /// (ID.<random>), so a load balancer can send a session to the node
    /// that holds its child: letters, digits and `-`, at most 32.
    /// Default: the short host name, made valid
    #[arg(long = "node-id", value_name = "ID", value_parser = crate::http::node::NodeId::parse)]
    pub node_id: Option<crate::http::node::NodeId>,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub record: RecordArgs,
    /// The MCP server to run for each session (default: `forkline
    /// echo-server`); everything from COMMAND on is its own
    #[arg(
        value_name = "COMMAND",
        num_args = 1..,
        trailing_var_arg = true
    )]
    pub command: Vec<String>,
    /// The ids of the flags the command line gave (see `Cli::from_matches`).
    #[arg(skip)]
    pub given: Vec<String>,
}

// `--config FILE` is taken too, spelled as `serve` takes the same file:
// a user who has just typed `serve --config servers.json` types it again.
#[derive(Debug, Args)]
#[command(override_usage = "forkline check [--config] FILE")]
pub struct CheckArgs {
    /// A file for `serve --config`
    #[arg(value_name = "FILE", required_unless_present = "config")]
    file: Option<PathBuf>,
    /// The same file, given as `serve` takes it
    #[arg(long, value_name = "FILE", conflicts_with = "file")]
    config: Option<PathBuf>,
}

impl CheckArgs {
    pub fn file(&self) -> &Path {
        // clap makes one of the two present.
        self.file
            .as_deref()
            .or(self.config.as_deref())
            .unwrap_or(Path::new(""))
    }
}

#[derive(Debug, Args)]
#[command(override_usage = "forkline stdio [OPTIONS] [--] COMMAND [ARGS...]")]
pub struct StdioArgs {
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub record: RecordArgs,
    /// The MCP server to run; everything from COMMAND on is its own
    #[arg(
        value_name = "COMMAND",
        required = true,
        num_args = 1..,
        trailing_var_arg = true
    )]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RecordArgs {
    /// Write one JSON Lines tape per session into DIR (created if missing):
    /// DIR/<UTC start>-<run id>-<session id>.jsonl; read one back with
    /// `forkline replay`
    #[arg(long = "record", value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

impl RecordArgs {
    /// Creates and checks the directory: unusable is a config error.
    fn to_recorder(&self) -> Result<Option<Recorder>, Error> {
        self.dir.as_deref().map(Recorder::open).transpose()
    }
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// A tape file from `--record DIR`
    #[arg(value_name = "TAPE")]
    pub tape: PathBuf,
    /// Print the records themselves (checked), one JSON object per line,
    /// instead of the transcript
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// tcp://HOST:PORT or unix:PATH
    #[arg(value_name = "ADDRESS", value_parser = parse_connect_addr)]
    pub address: ConnectAddr,
}

// Every numeric flag has `allow_negative_numbers`, so `--idle-timeout -3`
// reaches the value parser and is reported as a bad value of that flag
// rather than as an unknown argument `-3`.
#[derive(Debug, Args)]
pub struct LimitArgs {
    /// Live sessions at once; the worker pool never grows past this
    #[arg(
        long,
        value_name = "N",
        allow_negative_numbers = true,
        default_value = "64",
        value_parser = parse_at_least_one
    )]
    pub max_sessions: usize,
    /// Live sessions per peer IP (TCP) or peer uid (Unix socket)
    #[arg(
        long,
        value_name = "N",
        allow_negative_numbers = true,
        default_value = "16",
        value_parser = parse_at_least_one
    )]
    pub max_sessions_per_client: usize,
    /// End a session after this long without a message either way; 0 = never
    #[arg(
        long,
        value_name = "SECS",
        allow_negative_numbers = true,
        default_value = "300",
        value_parser = parse_idle_timeout
    )]
    pub idle_timeout: Duration,
    /// Largest message either way (bytes, or with a KiB/MiB suffix)
    #[arg(
        long,
        value_name = "N",
        allow_negative_numbers = true,
        default_value = "4MiB",
        value_parser = parse_bytes
    )]
    pub max_message_bytes: usize,
    /// Requests of one session awaiting their answer; the next one gets
    /// -32005 and is not forwarded
    #[arg(
        long,
        value_name = "N",
        allow_negative_numbers = true,
        default_value = "256",
        value_parser = parse_at_least_one
    )]
    pub max_inflight: usize,
    /// Time a child gets to exit after its stdin closes (and again after
    /// SIGTERM), and in-flight requests get at shutdown
    #[arg(
        long,
        value_name = "SECS",
        allow_negative_numbers = true,
        default_value = "5",
        value_parser = parse_seconds
    )]
    pub shutdown_grace: Duration,
}

impl LimitArgs {
    /// The limits the command line gave, by the ids in `given`.
    fn given(&self, given: &[String]) -> LimitSettings {
        let has = |id: &str| given.iter().any(|g| g == id);
        LimitSettings {
            max_sessions: has("max_sessions").then_some(self.max_sessions),
            max_sessions_per_client: has("max_sessions_per_client")
                .then_some(self.max_sessions_per_client),
            idle_timeout: has("idle_timeout").then_some(self.idle_timeout),
            max_message_bytes: has("max_message_bytes").then_some(self.max_message_bytes),
            max_inflight: has("max_inflight").then_some(self.max_inflight),
            shutdown_grace: has("shutdown_grace").then_some(self.shutdown_grace),
            prespawn: None,
        }
    }

    fn to_limits(&self) -> Limits {
        Limits {
            max_sessions: self.max_sessions,
            max_sessions_per_client: self.max_sessions_per_client,
            idle_timeout: (!self.idle_timeout.is_zero()).then_some(self.idle_timeout),
            max_message_bytes: self.max_message_bytes,
            max_inflight: self.max_inflight,
            shutdown_grace: self.shutdown_grace,
        }
    }
}

impl ServeArgs {
    pub fn to_config(&self) -> Result<ServeConfig, Error> {
        let mut listen: Vec<ListenAddr> = self.tcp.iter().copied().map(ListenAddr::Tcp).collect();
        listen.extend(self.unix.iter().cloned().map(ListenAddr::Unix));
        let tokens = match &self.auth_token_file {
            Some(path) => Some(crate::http::security::read_token_file(path)?),
            None => None,
        };
        let access = crate::http::security::Access {
            tokens,
            allowed_origins: self.allow_origin.clone(),
        };
        let record = self.record.to_recorder()?;
        let node_id = self
            .node_id
            .clone()
            .unwrap_or_else(crate::http::node::NodeId::from_host_name);
        if let Some(path) = &self.config {
            let source = ConfigSource {
                path: path.clone(),
                overrides: self.overrides(listen),
                admin_allow_remote: self.admin_allow_remote,
            };
            let loaded = file::load(path, &source.overrides).map_err(|problems| Error::File {
                what: "the --config file does not check out".into(),
                problems,
            })?;
            check_admin(loaded.admin, self.admin_allow_remote)?;
            return Ok(ServeConfig {
                servers: loaded.servers,
                http: loaded.http,
                access,
                record,
                admin: loaded.admin,
                source: Some(source),
                node_id,
            });
        }
        if listen.is_empty() && self.http.is_empty() {
            listen.push(ListenAddr::Tcp(std::net::SocketAddr::from((
                [127, 0, 0, 1],
                7070,
            ))));
        }
        let command = match child_command(&self.command) {
            Some(command) => command,
            None => ChildCommand::builtin_echo().map_err(|e| {
                Error::config(
                    "COMMAND",
                    format!("cannot locate forkline's own binary: {e}"),
                )
            })?,
        };
        check_admin(self.admin, self.admin_allow_remote)?;
        Ok(ServeConfig {
            servers: vec![ServerSpec {
                name: DEFAULT_SERVER.to_string(),
                command,
                limits: self.limits.to_limits(),
                prespawn: self.prespawn,
                listen,
            }],
            http: self.http.clone(),
            access,
            record,
            admin: self.admin,
            source: None,
            node_id,
        })
    }

    /// What of the command line wins over a `--config` file.
    fn overrides(&self, listen: Vec<ListenAddr>) -> Overrides {
        let has = |id: &str| self.given.iter().any(|g| g == id);
        let mut limits = self.limits.given(&self.given);
        limits.prespawn = has("prespawn").then_some(self.prespawn);
        Overrides {
            limits,
            listen,
            http: has("http").then(|| self.http.clone()),
            admin: self.admin,
        }
    }
}

/// The admin endpoint has no authentication and can end sessions: off the
/// host only when asked for by name.
pub fn check_admin(admin: Option<std::net::SocketAddr>, allow_remote: bool) -> Result<(), Error> {
    match admin {
        Some(addr) if !addr.ip().is_loopback() && !allow_remote => Err(Error::config(
            "--admin",
            format!(
                "{addr} is not a loopback address; the admin endpoint has no \
                 authentication (add --admin-allow-remote to serve it there anyway)"
            ),
        )),
        _ => Ok(()),
    }
}

impl StdioArgs {
    pub fn to_config(&self) -> Result<StdioConfig, Error> {
        let command = child_command(&self.command)
            .ok_or_else(|| Error::config("COMMAND", "the MCP server to run is required"))?;
        Ok(StdioConfig {
            limits: self.limits.to_limits(),
            command,
            record: self.record.to_recorder()?,
        })
    }
}

fn child_command(words: &[String]) -> Option<ChildCommand> {
    let (program, args) = words.split_first()?;
    Some(ChildCommand::new(program, args.to_vec()))
}

fn parse_connect_addr(s: &str) -> Result<ConnectAddr, String> {
    if let Some(hostport) = s.strip_prefix("tcp://") {
        if hostport
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
        {
            return Ok(ConnectAddr::Tcp(hostport.to_string()));
        }
    } else if let Some(path) = s.strip_prefix("unix:") {
        if !path.is_empty() {
            return Ok(ConnectAddr::Unix(PathBuf::from(path)));
        }
    }
    Err(format!("expected tcp://HOST:PORT or unix:PATH, got `{s}`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_are_bounded_to_a_year() {
        assert_eq!(
            parse_seconds("31536000"),
            Ok(Duration::from_secs(31_536_000))
        );
        for too_long in ["31536000.5", "31536001", "1e19", "1e300"] {
            let why = parse_seconds(too_long).expect_err(too_long);
            assert!(why.contains("31536000"), "{too_long}: {why}");
        }
        let parse = |flag: &str| {
            Cli::try_parse_from(["forkline", "serve", flag, "1e19"])
                .expect_err(flag)
                .to_string()
        };
        let idle = parse("--idle-timeout");
        assert!(
            idle.contains("--idle-timeout") && idle.contains("0 means never"),
            "{idle}"
        );
        let grace = parse("--shutdown-grace");
        assert!(
            grace.contains("--shutdown-grace") && !grace.contains("never"),
            "{grace}"
        );
    }

    #[test]
    fn negative_numbers_reach_the_value_parser() {
        for flag in [
            "--idle-timeout",
            "--shutdown-grace",
            "--max-sessions",
            "--max-sessions-per-client",
            "--max-message-bytes",
            "--max-inflight",
        ] {
            let err = Cli::try_parse_from(["forkline", "serve", flag, "-3"]).expect_err(flag);
            assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation, "{err}");
        }
        assert_eq!(
            parse_at_least_one("-3"),
            Err("must be at least 1, got `-3`".into())
        );
    }

    #[test]
    fn connect_addresses() {
        assert_eq!(
            parse_connect_addr("tcp://127.0.0.1:7070"),
            Ok(ConnectAddr::Tcp("127.0.0.1:7070".into()))
        );
        assert_eq!(
            parse_connect_addr("tcp://[::1]:7070"),
            Ok(ConnectAddr::Tcp("[::1]:7070".into()))
        );
        assert_eq!(
            parse_connect_addr("unix:/tmp/x.sock"),
            Ok(ConnectAddr::Unix("/tmp/x.sock".into()))
        );
        assert!(parse_connect_addr("tcp://nohost").is_err());
        assert!(parse_connect_addr("http://127.0.0.1:1").is_err());
        assert!(parse_connect_addr("unix:").is_err());
    }

    #[test]
    fn serve_defaults_match_the_contract() {
        let cli = Cli::try_parse_from(["forkline", "serve"]).expect("parses");
        let Command::Serve(args) = cli.command else {
            panic!("serve")
        };
        let config = args.to_config().expect("valid");
        assert_eq!(config.servers[0].limits, Limits::default());
        assert_eq!(
            config.servers[0].listen,
            vec![ListenAddr::Tcp("127.0.0.1:7070".parse().expect("addr"))]
        );
        assert_eq!(
            config.servers[0].command.args,
            vec!["echo-server".to_string()]
        );
    }

    #[test]
    fn max_inflight_is_a_count_of_at_least_one() {
        assert_eq!(Limits::default().max_inflight, 256);
        let (config, _) = parse_stdio(&["forkline", "stdio", "--max-inflight", "1", "srv"]);
        assert_eq!(config.limits.max_inflight, 1);
        for bad in ["0", "-1", "many"] {
            let err = Cli::try_parse_from(["forkline", "stdio", "--max-inflight", bad, "srv"])
                .expect_err(bad);
            assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation, "{err}");
        }
    }

    #[test]
    fn idle_timeout_zero_means_never() {
        let cli = Cli::try_parse_from([
            "forkline",
            "serve",
            "--idle-timeout",
            "0",
            "--",
            "srv",
            "-x",
        ])
        .expect("parses");
        let Command::Serve(args) = cli.command else {
            panic!("serve")
        };
        let config = args.to_config().expect("valid");
        assert_eq!(config.servers[0].limits.idle_timeout, None);
        assert_eq!(config.servers[0].command.to_string(), "srv -x");
    }

    fn parse_stdio(argv: &[&str]) -> (StdioConfig, u8) {
        let cli = Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
        let Command::Stdio(args) = cli.command else {
            panic!("stdio")
        };
        (args.to_config().expect("valid"), cli.verbose)
    }

    fn parse_serve(argv: &[&str]) -> ServeConfig {
        let cli = Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
        let Command::Serve(args) = cli.command else {
            panic!("serve")
        };
        args.to_config().expect("valid")
    }

    #[test]
    fn admin_binds_loopback_unless_told_otherwise() {
        let config = parse_serve(&["forkline", "serve", "--admin", "127.0.0.1:0"]);
        assert_eq!(config.admin, Some("127.0.0.1:0".parse().expect("addr")));
        let config = parse_serve(&["forkline", "serve", "--admin", "[::1]:9"]);
        assert!(config.admin.is_some());
        let cli =
            Cli::try_parse_from(["forkline", "serve", "--admin", "0.0.0.0:9"]).expect("parses");
        let Command::Serve(args) = cli.command else {
            panic!("serve")
        };
        let err = args.to_config().expect_err("not loopback");
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("--admin-allow-remote"), "{err}");
        let config = parse_serve(&[
            "forkline",
            "serve",
            "--admin",
            "0.0.0.0:9",
            "--admin-allow-remote",
        ]);
        assert!(config.admin.is_some());
    }

    #[test]
    fn stdio_takes_the_command_with_or_without_a_separator() {
        // The MCP Inspector swallows the `--` of `forkline stdio -- node srv.js`.
        for argv in [
            &["forkline", "stdio", "node", "srv.js", "--port", "3"][..],
            &["forkline", "stdio", "--", "node", "srv.js", "--port", "3"],
        ] {
            let (config, _) = parse_stdio(argv);
            assert_eq!(
                config.command.to_string(),
                "node srv.js --port 3",
                "{argv:?}"
            );
        }
        // Options before the command are forkline's; from the command on,
        // everything is the child's, even forkline's own flags.
        let (config, verbose) = parse_stdio(&[
            "forkline",
            "stdio",
            "--idle-timeout",
            "0",
            "node",
            "srv.js",
            "--flag",
            "-v",
            "--idle-timeout",
            "9",
        ]);
        assert_eq!(config.limits.idle_timeout, None);
        assert_eq!(verbose, 0);
        assert_eq!(
            config.command.to_string(),
            "node srv.js --flag -v --idle-timeout 9"
        );
        // Only a `--` before the command is forkline's; later ones are the child's.
        for argv in [
            &["forkline", "stdio", "srv", "--", "x"][..],
            &["forkline", "stdio", "--", "srv", "--", "x"],
        ] {
            let (config, _) = parse_stdio(argv);
            assert_eq!(config.command.args, vec!["--", "x"], "{argv:?}");
        }
        let (config, _) = parse_stdio(&["forkline", "stdio", "--", "-odd-name"]);
        assert_eq!(config.command.to_string(), "-odd-name");
        let (config, _) = parse_stdio(&["forkline", "stdio", "srv"]);
        assert_eq!(config.command.to_string(), "srv");
        assert!(config.command.args.is_empty());
    }

    #[test]
    fn serve_takes_the_command_with_or_without_a_separator() {
        for argv in [
            &[
                "forkline",
                "serve",
                "--tcp",
                "127.0.0.1:0",
                "srv",
                "--tcp",
                "x",
            ][..],
            &[
                "forkline",
                "serve",
                "--tcp",
                "127.0.0.1:0",
                "--",
                "srv",
                "--tcp",
                "x",
            ],
        ] {
            let config = parse_serve(argv);
            assert_eq!(
                config.servers[0].command.to_string(),
                "srv --tcp x",
                "{argv:?}"
            );
            assert_eq!(
                config.servers[0].listen,
                vec![ListenAddr::Tcp("127.0.0.1:0".parse().expect("addr"))],
                "{argv:?}"
            );
        }
    }

    #[test]
    fn unknown_options_before_the_command_are_still_errors() {
        for argv in [
            &["forkline", "stdio", "--bogus", "srv"][..],
            &["forkline", "serve", "--bogus"],
            &["forkline", "serve", "-x", "srv"],
        ] {
            let err = Cli::try_parse_from(argv).expect_err("unknown flag");
            assert_eq!(
                err.kind(),
                clap::error::ErrorKind::UnknownArgument,
                "{argv:?}: {err}"
            );
        }
    }

    #[test]
    fn node_ids_are_checked_by_the_flag_and_default_to_a_valid_name() {
        let config = parse_serve(&["forkline", "serve", "--node-id", "forkline-0"]);
        assert_eq!(config.node_id.as_str(), "forkline-0");
        let config = parse_serve(&["forkline", "serve"]);
        assert!(crate::http::node::NodeId::parse(config.node_id.as_str()).is_ok());
        for bad in ["a.b", "", "x_y", &"n".repeat(33)] {
            let err = Cli::try_parse_from(["forkline", "serve", "--node-id", bad]).expect_err(bad);
            assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation, "{err}");
            assert!(err.to_string().contains("--node-id"), "{err}");
        }
    }

    #[test]
    fn stdio_requires_a_command() {
        assert!(Cli::try_parse_from(["forkline", "stdio"]).is_err());
    }
}
