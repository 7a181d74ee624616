//! `serve --config FILE` and `forkline check FILE`: the `mcpServers` JSON
//! that MCP clients (Claude Desktop, Cursor, VS Code) already keep, plus
//! an optional `forkline` object per server and one at the top.
//!
//! The whole file is checked before anything of it is used, and every
//! problem is collected (not just the first) with its JSON path, so one
//! `check` names all of them. Keys forkline does not know are errors: a
//! typo such as `maxSesions` must not pass silently. The keys MCP clients
//! use that mean nothing to a proxy are handled by rule: `disabled: true`
//! and remote (`url`) servers are skipped and said so; `autoApprove`,
//! `alwaysAllow` and `timeout` concern the client and are ignored.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::config::env::{self, ExpandError};
use crate::config::values::{
    parse_at_least_one, parse_bytes, parse_count, parse_idle_timeout, parse_seconds,
    parse_socket_addr,
};
use crate::config::{ChildCommand, LimitSettings, Limits, ListenAddr, Overrides, ServerSpec};

/// Where `serve --config` listens when neither the file nor the command
/// line names a listener: HTTP, since only HTTP can tell servers apart.
pub const DEFAULT_HTTP: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 7070);

/// A file's servers, ready to serve.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    /// In the file's order.
    pub servers: Vec<ServerSpec>,
    /// Entries not served, and why (disabled, remote).
    pub skipped: Vec<(String, &'static str)>,
    /// HTTP listeners (the top `forkline.http`, or `--http`).
    pub http: Vec<SocketAddr>,
    /// The top `forkline.admin`, or `--admin`.
    pub admin: Option<SocketAddr>,
}

/// Where in the file a problem is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// The file as a whole (it cannot be read, the command line clashes).
    File,
    /// A syntax error, 1-based.
    Text { line: usize, column: usize },
    /// A JSON path such as `mcpServers.github.env.TOKEN`.
    Path(String),
}

/// One thing wrong with a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub at: Location,
    pub what: String,
}

impl Problem {
    fn at(path: &str, what: impl Into<String>) -> Problem {
        Problem {
            at: Location::Path(path.to_string()),
            what: what.into(),
        }
    }
}

/// Every problem of one file, printed one per line as `FILE: PATH: WHAT`
/// (or `FILE:LINE:COLUMN: WHAT` for a syntax error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problems {
    pub file: PathBuf,
    pub list: Vec<Problem>,
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.display();
        for (i, problem) in self.list.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            match &problem.at {
                Location::File => write!(f, "{file}: {}", problem.what)?,
                Location::Text { line, column } => {
                    write!(f, "{file}:{line}:{column}: {}", problem.what)?
                }
                Location::Path(path) => write!(f, "{file}: {path}: {}", problem.what)?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

/// What a file's check looks up outside the file; the tests lend their own.
pub struct Environment<'a> {
    /// A variable of forkline's environment, for `${env:NAME}`.
    pub variable: &'a dyn Fn(&str) -> Option<String>,
    /// Whether a server's `command` can be started: its `PATH` (the
    /// server's `env` may set one) is given.
    pub runnable: &'a dyn Fn(&str, Option<&str>) -> bool,
}

/// Reads, checks and loads `path` under the command line's `overrides`.
pub fn load(path: &Path, overrides: &Overrides) -> Result<Loaded, Problems> {
    let problems = |list| Problems {
        file: path.to_path_buf(),
        list,
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        problems(vec![Problem {
            at: Location::File,
            what: format!("cannot read it: {e}"),
        }])
    })?;
    let process = Environment {
        variable: &env::from_process,
        runnable: &runnable,
    };
    parse(&text, overrides, &process).map_err(problems)
}

/// Checks and loads a file's text.
pub fn parse(text: &str, overrides: &Overrides, env: &Environment) -> Result<Loaded, Vec<Problem>> {
    let root: Value = serde_json::from_str(text).map_err(|e| {
        vec![Problem {
            at: Location::Text {
                line: e.line(),
                column: e.column(),
            },
            what: syntax_error(&e),
        }]
    })?;
    let mut walk = Walk {
        problems: Vec::new(),
        env,
    };
    let loaded = walk.root(&root, overrides);
    if walk.problems.is_empty() {
        Ok(loaded)
    } else {
        Err(walk.problems)
    }
}

/// serde_json's message without its own "at line L column C", which the
/// location already says.
fn syntax_error(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let what = match text.rfind(" at line ") {
        Some(at) => text[..at].to_string(),
        None => text,
    };
    format!("not valid JSON: {what}")
}

/// Whether `program` names an executable file, by path or in `PATH`.
fn runnable(program: &str, path_var: Option<&str>) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        return executable(Path::new(program));
    }
    let search = match path_var {
        Some(value) => value.to_string(),
        None => std::env::var("PATH").unwrap_or_default(),
    };
    search
        .split(':')
        .filter(|dir| !dir.is_empty())
        .any(|dir| executable(&Path::new(dir).join(program)))
}

const SERVER_KEYS: &[&str] = &["command", "args", "env", "forkline", "type", "disabled"];
/// Keys of MCP clients' own that say nothing about the server process.
const CLIENT_KEYS: &[&str] = &["autoApprove", "alwaysAllow", "timeout"];
const LIMIT_KEYS: &[&str] = &[
    "maxSessions",
    "maxSessionsPerClient",
    "idleTimeout",
    "maxMessageBytes",
    "maxInflight",
    "prespawn",
];
/// `type` values of servers reached over the network, which forkline
/// does not serve: clients reach them directly.
const REMOTE_TYPES: &[&str] = &["http", "sse", "streamable-http", "streamableHttp"];

/// Which `forkline` object a key is read in.
#[derive(Clone, Copy, PartialEq)]
enum Level {
    Top,
    Server,
}

struct Walk<'a> {
    problems: Vec<Problem>,
    env: &'a Environment<'a>,
}

/// One server's `forkline` object, read.
#[derive(Default)]
struct ServerSettings {
    limits: LimitSettings,
    listen: Vec<(ListenAddr, String)>,
}

/// The top `forkline` object, read.
#[derive(Default)]
struct TopSettings {
    limits: LimitSettings,
    http: Vec<(SocketAddr, String)>,
    admin: Option<SocketAddr>,
}

impl Walk<'_> {
    fn problem(&mut self, path: &str, what: impl Into<String>) {
        self.problems.push(Problem::at(path, what));
    }

    fn root(&mut self, root: &Value, overrides: &Overrides) -> Loaded {
        let mut loaded = Loaded {
            servers: Vec::new(),
            skipped: Vec::new(),
            http: Vec::new(),
            admin: None,
        };
        let Some(root) = root.as_object() else {
            self.problems.push(Problem {
                at: Location::File,
                what: format!(
                    "must be a JSON object with `mcpServers`, not {}",
                    kind(root)
                ),
            });
            return loaded;
        };
        let mut top = TopSettings::default();
        for key in root.keys() {
            match key.as_str() {
                "mcpServers" | "forkline" => {}
                "servers" => self.problem(
                    &path_of("", key),
                    "unknown key (VS Code's mcp.json calls it `servers`; forkline reads `mcpServers`)",
                ),
                _ => self.problem(
                    &path_of("", key),
                    "unknown key (known here: mcpServers, forkline)",
                ),
            }
        }
        if let Some(value) = root.get("forkline") {
            top = self.top_settings(value);
        }
        let Some(servers) = root.get("mcpServers") else {
            self.problem(
                "mcpServers",
                "missing: the file lists its servers under `mcpServers`",
            );
            return loaded;
        };
        let Some(servers) = servers.as_object() else {
            self.problem(
                "mcpServers",
                format!(
                    "must be an object of servers by name, not {}",
                    kind(servers)
                ),
            );
            return loaded;
        };
        let mut listeners: Vec<(ListenAddr, String)> = Vec::new();
        for (name, entry) in servers {
            let path = path_of("mcpServers", name);
            match self.server(&path, name, entry, &top.limits, &overrides.limits) {
                Entry::Serve(spec, own) => {
                    listeners.extend(own);
                    loaded.servers.push(*spec);
                }
                Entry::Skip(why) => loaded.skipped.push((name.clone(), why)),
                Entry::Broken => {}
            }
        }
        if servers.is_empty() {
            self.problem("mcpServers", "is empty: there is no server to serve");
        } else if loaded.servers.is_empty() && self.problems.is_empty() {
            self.problem(
                "mcpServers",
                "has no server to serve: every one is disabled or remote (`url`)",
            );
        }
        if !overrides.listen.is_empty() {
            match loaded.servers.as_mut_slice() {
                [only] => {
                    only.listen.extend(overrides.listen.iter().cloned());
                    listeners.extend(
                        overrides
                            .listen
                            .iter()
                            .map(|addr| (addr.clone(), "the command line".to_string())),
                    );
                }
                servers => self.problems.push(Problem {
                    at: Location::File,
                    what: format!(
                        "--tcp and --unix serve one server, and the file has {}; give each \
                         server its own in its `forkline` object",
                        servers.len()
                    ),
                }),
            }
        }
        loaded.http = match &overrides.http {
            Some(http) => http.clone(),
            None => {
                for (addr, path) in &top.http {
                    listeners.push((ListenAddr::Tcp(*addr), path.clone()));
                }
                top.http.iter().map(|(addr, _)| *addr).collect()
            }
        };
        if loaded.http.is_empty() && listeners.is_empty() {
            loaded.http.push(DEFAULT_HTTP);
        }
        loaded.admin = overrides.admin.or(top.admin);
        self.no_shared_listeners(&listeners);
        loaded
    }

    /// Two listeners on one address would fail to bind, or (Unix) the
    /// second would replace the first's socket file.
    fn no_shared_listeners(&mut self, listeners: &[(ListenAddr, String)]) {
        let mut seen: HashMap<&ListenAddr, &str> = HashMap::new();
        for (addr, path) in listeners {
            // Port 0 is a fresh port for each.
            if matches!(addr, ListenAddr::Tcp(a) if a.port() == 0) {
                continue;
            }
            match seen.get(addr) {
                Some(first) => {
                    let what = format!("{addr} is already a listener at {first}");
                    self.problem(path, what);
                }
                None => {
                    seen.insert(addr, path);
                }
            }
        }
    }

    fn server(
        &mut self,
        path: &str,
        name: &str,
        entry: &Value,
        defaults: &LimitSettings,
        overrides: &LimitSettings,
    ) -> Entry {
        let before = self.problems.len();
        if !is_server_name(name) {
            self.problem(
                path,
                "a server name is 1 to 64 letters, digits, `.`, `_` or `-` \
                 (it is part of the URL /servers/NAME/mcp)",
            );
        }
        let Some(entry) = entry.as_object() else {
            self.problem(path, format!("must be an object, not {}", kind(entry)));
            return Entry::Broken;
        };
        match entry.get("disabled") {
            None | Some(Value::Bool(false)) => {}
            Some(Value::Bool(true)) => return Entry::Skip("disabled"),
            Some(other) => {
                let what = format!("must be true or false, not {}", kind(other));
                self.problem(&path_of(path, "disabled"), what);
                return Entry::Broken;
            }
        }
        match entry.get("type") {
            None => {}
            Some(Value::String(t)) if t == "stdio" => {}
            Some(Value::String(t)) if REMOTE_TYPES.contains(&t.as_str()) => {
                return Entry::Skip("a remote server: MCP clients reach its url directly");
            }
            Some(other) => {
                let what = format!(
                    "must be \"stdio\" (or a remote type: {}), not {other}",
                    REMOTE_TYPES.join(", ")
                );
                self.problem(&path_of(path, "type"), what);
                return Entry::Broken;
            }
        }
        if entry.contains_key("url") && !entry.contains_key("command") {
            return Entry::Skip("a remote server: MCP clients reach its url directly");
        }
        for key in entry.keys() {
            if !SERVER_KEYS.contains(&key.as_str()) && !CLIENT_KEYS.contains(&key.as_str()) {
                let what = format!("unknown key (known here: {})", SERVER_KEYS.join(", "));
                self.problem(&path_of(path, key), what);
            }
        }
        let env = self.env_values(path, entry.get("env"));
        let command = self.command(path, entry, &env);
        let settings = match entry.get("forkline") {
            Some(value) => self.server_settings(&path_of(path, "forkline"), value),
            None => ServerSettings::default(),
        };
        let Some(mut command) = command else {
            return Entry::Broken;
        };
        if self.problems.len() > before {
            return Entry::Broken;
        }
        command.env = env;
        let mut limits = Limits::default();
        let mut prespawn = 0;
        defaults.apply(&mut limits, &mut prespawn);
        settings.limits.apply(&mut limits, &mut prespawn);
        overrides.apply(&mut limits, &mut prespawn);
        let spec = ServerSpec {
            name: name.to_string(),
            command,
            limits,
            prespawn,
            listen: settings
                .listen
                .iter()
                .map(|(addr, _)| addr.clone())
                .collect(),
        };
        Entry::Serve(Box::new(spec), settings.listen)
    }

    fn command(
        &mut self,
        path: &str,
        entry: &Map<String, Value>,
        env: &[(String, String)],
    ) -> Option<ChildCommand> {
        let at = path_of(path, "command");
        let written = match entry.get("command") {
            Some(Value::String(c)) if !c.trim().is_empty() => c.clone(),
            Some(Value::String(_)) => {
                self.problem(&at, "is empty");
                return None;
            }
            Some(other) => {
                let what = format!("must be a string, not {}", kind(other));
                self.problem(&at, what);
                return None;
            }
            None => {
                let what = "missing: a stdio server needs the `command` that starts it";
                self.problem(path, what);
                return None;
            }
        };
        let mut words = vec![written];
        match entry.get("args") {
            None => {}
            Some(Value::Array(args)) => {
                for (i, arg) in args.iter().enumerate() {
                    match arg {
                        Value::String(arg) => words.push(arg.clone()),
                        other => {
                            let what = format!("must be a string, not {}", kind(other));
                            self.problem(&format!("{path}.args[{i}]"), what);
                        }
                    }
                }
            }
            Some(other) => {
                let what = format!("must be an array of strings, not {}", kind(other));
                self.problem(&path_of(path, "args"), what);
            }
        }
        let mut expanded = Vec::with_capacity(words.len());
        for (i, word) in words.iter().enumerate() {
            let at = if i == 0 {
                at.clone()
            } else {
                format!("{path}.args[{}]", i - 1)
            };
            match self.expand(&at, word) {
                Some(word) => expanded.push(word),
                None => return None,
            }
        }
        let program = expanded.remove(0);
        let path_var = env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.as_str());
        if !(self.env.runnable)(&program, path_var) {
            let what = if program.contains('/') {
                format!("`{program}` is not an executable file")
            } else {
                format!("`{program}` is not found in PATH")
            };
            self.problem(&at, what);
            return None;
        }
        let mut command = ChildCommand::new(program, expanded);
        if command.shown() != words {
            command.written = Some(words);
        }
        Some(command)
    }

    fn env_values(&mut self, path: &str, value: Option<&Value>) -> Vec<(String, String)> {
        let at = path_of(path, "env");
        let Some(value) = value else {
            return Vec::new();
        };
        let Some(map) = value.as_object() else {
            let what = format!("must be an object of strings, not {}", kind(value));
            self.problem(&at, what);
            return Vec::new();
        };
        let mut env = Vec::with_capacity(map.len());
        for (name, value) in map {
            let var = path_of(&at, name);
            if name.is_empty() || name.contains('=') || name.contains('\0') {
                self.problem(&var, "is not a usable variable name");
                continue;
            }
            match value {
                Value::String(text) => {
                    if let Some(text) = self.expand(&var, text) {
                        env.push((name.clone(), text));
                    }
                }
                other => {
                    let what = format!("must be a string, not {}", kind(other));
                    self.problem(&var, what);
                }
            }
        }
        env
    }

    fn expand(&mut self, path: &str, text: &str) -> Option<String> {
        match env::expand(text, self.env.variable) {
            Ok(text) if text.contains('\0') => {
                self.problem(path, "contains a NUL byte, which no command line can hold");
                None
            }
            Ok(text) => Some(text),
            Err(e @ (ExpandError::Missing(_) | ExpandError::Unsupported(_))) => {
                self.problem(path, e.to_string());
                None
            }
        }
    }

    fn top_settings(&mut self, value: &Value) -> TopSettings {
        let mut top = TopSettings::default();
        let Some(map) = self.settings_object("forkline", value) else {
            return top;
        };
        for (key, value) in map {
            let at = path_of("forkline", key);
            match key.as_str() {
                "http" => {
                    for (addr, at) in self.addresses(&at, value) {
                        if let Some(addr) = self.socket_addr(&at, &addr) {
                            top.http.push((addr, at));
                        }
                    }
                }
                "admin" => match value {
                    Value::String(addr) => top.admin = self.socket_addr(&at, addr),
                    other => {
                        let what = format!("must be a string IP:PORT, not {}", kind(other));
                        self.problem(&at, what);
                    }
                },
                "shutdownGrace" => {
                    top.limits.shutdown_grace = self.number(&at, value, parse_seconds);
                }
                "tcp" | "unix" => self.problem(
                    &at,
                    "a raw-socket listener serves one server: put it in that server's \
                     `forkline` object",
                ),
                _ => self.limit(&at, key, value, &mut top.limits, Level::Top),
            }
        }
        top
    }

    fn server_settings(&mut self, path: &str, value: &Value) -> ServerSettings {
        let mut settings = ServerSettings::default();
        let Some(map) = self.settings_object(path, value) else {
            return settings;
        };
        for (key, value) in map {
            let at = path_of(path, key);
            match key.as_str() {
                "tcp" => {
                    for (addr, at) in self.addresses(&at, value) {
                        if let Some(addr) = self.socket_addr(&at, &addr) {
                            settings.listen.push((ListenAddr::Tcp(addr), at));
                        }
                    }
                }
                "unix" => {
                    for (socket, at) in self.addresses(&at, value) {
                        if socket.is_empty() {
                            self.problem(&at, "is empty");
                        } else {
                            let addr = ListenAddr::Unix(PathBuf::from(socket));
                            settings.listen.push((addr, at));
                        }
                    }
                }
                _ => self.limit(&at, key, value, &mut settings.limits, Level::Server),
            }
        }
        settings
    }

    fn settings_object<'v>(
        &mut self,
        path: &str,
        value: &'v Value,
    ) -> Option<&'v Map<String, Value>> {
        let map = value.as_object();
        if map.is_none() {
            let what = format!("must be an object of settings, not {}", kind(value));
            self.problem(path, what);
        }
        map
    }

    fn limit(
        &mut self,
        at: &str,
        key: &str,
        value: &Value,
        limits: &mut LimitSettings,
        level: Level,
    ) {
        match key {
            "maxSessions" => limits.max_sessions = self.number(at, value, parse_at_least_one),
            "maxSessionsPerClient" => {
                limits.max_sessions_per_client = self.number(at, value, parse_at_least_one);
            }
            "idleTimeout" => limits.idle_timeout = self.number(at, value, parse_idle_timeout),
            "maxInflight" => limits.max_inflight = self.number(at, value, parse_at_least_one),
            "prespawn" => limits.prespawn = self.number(at, value, parse_count),
            "maxMessageBytes" => {
                limits.max_message_bytes = match value {
                    Value::String(text) => self.checked(at, text, parse_bytes),
                    _ => self.number(at, value, parse_bytes),
                };
            }
            _ => {
                let mut known = LIMIT_KEYS.to_vec();
                match level {
                    Level::Top => known.extend(["shutdownGrace", "http", "admin"]),
                    Level::Server => known.extend(["tcp", "unix"]),
                }
                let what = format!("unknown key (known here: {})", known.join(", "));
                self.problem(at, what);
            }
        }
    }

    /// A JSON number, checked by the flag's own rule.
    fn number<T>(
        &mut self,
        at: &str,
        value: &Value,
        rule: fn(&str) -> Result<T, String>,
    ) -> Option<T> {
        match value {
            Value::Number(n) => self.checked(at, &n.to_string(), rule),
            other => {
                let what = format!("must be a number, not {}", kind(other));
                self.problem(at, what);
                None
            }
        }
    }

    fn checked<T>(
        &mut self,
        at: &str,
        text: &str,
        rule: fn(&str) -> Result<T, String>,
    ) -> Option<T> {
        match rule(text) {
            Ok(value) => Some(value),
            Err(why) => {
                self.problem(at, why);
                None
            }
        }
    }

    fn socket_addr(&mut self, at: &str, text: &str) -> Option<SocketAddr> {
        self.checked(at, text, parse_socket_addr)
    }

    /// A string or an array of strings, each with its own path.
    fn addresses(&mut self, at: &str, value: &Value) -> Vec<(String, String)> {
        match value {
            Value::String(one) => vec![(one.clone(), at.to_string())],
            Value::Array(many) => {
                let mut out = Vec::with_capacity(many.len());
                for (i, item) in many.iter().enumerate() {
                    let item_at = format!("{at}[{i}]");
                    match item {
                        Value::String(text) => out.push((text.clone(), item_at)),
                        other => {
                            let what = format!("must be a string, not {}", kind(other));
                            self.problem(&item_at, what);
                        }
                    }
                }
                out
            }
            other => {
                let what = format!(
                    "must be a string or an array of strings, not {}",
                    kind(other)
                );
                self.problem(at, what);
                Vec::new()
            }
        }
    }
}

enum Entry {
    Serve(Box<ServerSpec>, Vec<(ListenAddr, String)>),
    Skip(&'static str),
    Broken,
}

/// Letters, digits, `.`, `_`, `-`: a URL path segment as it stands.
fn is_server_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// `parent.key`, or `parent["odd key"]` when the key is not a plain word.
fn path_of(parent: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
    match (parent.is_empty(), plain) {
        (true, true) => key.to_string(),
        (false, true) => format!("{parent}.{key}"),
        (_, false) => format!("{parent}[{}]", Value::String(key.to_string())),
    }
}

/// "a string", "an array"… for messages.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn variable(name: &str) -> Option<String> {
        (name == "GH_TOKEN").then(|| "ghp_secret".to_string())
    }

    fn runnable(program: &str, _path: Option<&str>) -> bool {
        program != "missing-binary"
    }

    fn check(text: &str) -> Result<Loaded, Vec<Problem>> {
        check_with(text, &Overrides::default())
    }

    fn check_with(text: &str, overrides: &Overrides) -> Result<Loaded, Vec<Problem>> {
        let env = Environment {
            variable: &variable,
            runnable: &runnable,
        };
        parse(text, overrides, &env)
    }

    fn problems(text: &str) -> Vec<String> {
        let list = check(text).expect_err("problems");
        Problems {
            file: "c.json".into(),
            list,
        }
        .to_string()
        .lines()
        .map(str::to_string)
        .collect()
    }

    #[test]
    fn a_client_config_loads_with_defaults_and_http_on_7070() {
        let loaded = check(
            r#"{"mcpServers": {
                "echo": {"command": "forkline", "args": ["echo-server"]},
                "github": {"command": "npx", "args": ["-y", "gh-server"],
                           "env": {"GITHUB_TOKEN": "${env:GH_TOKEN}"}}
            }}"#,
        )
        .expect("valid");
        assert_eq!(loaded.http, vec![DEFAULT_HTTP]);
        assert_eq!(loaded.servers.len(), 2);
        let echo = &loaded.servers[0];
        assert_eq!(echo.name, "echo");
        assert_eq!(echo.limits, Limits::default());
        assert_eq!(echo.command.to_string(), "forkline echo-server");
        let github = &loaded.servers[1];
        assert_eq!(
            github.command.env,
            vec![("GITHUB_TOKEN".to_string(), "ghp_secret".to_string())]
        );
    }

    #[test]
    fn limits_stack_top_then_server_then_command_line() {
        let text = r#"{
            "forkline": {"maxSessions": 10, "idleTimeout": 0, "http": "127.0.0.1:0"},
            "mcpServers": {
                "a": {"command": "srv", "forkline": {"maxSessions": 2, "maxMessageBytes": "64KiB",
                      "tcp": ["127.0.0.1:0"], "prespawn": 1}},
                "b": {"command": "srv"}
            }}"#;
        let loaded = check(text).expect("valid");
        let (a, b) = (&loaded.servers[0], &loaded.servers[1]);
        assert_eq!(a.limits.max_sessions, 2);
        assert_eq!(a.limits.max_message_bytes, 64 * 1024);
        assert_eq!(a.limits.idle_timeout, None);
        assert_eq!(a.prespawn, 1);
        assert_eq!(a.listen.len(), 1);
        assert_eq!(b.limits.max_sessions, 10);
        assert_eq!(loaded.http, vec!["127.0.0.1:0".parse().expect("addr")]);
        let overrides = Overrides {
            limits: LimitSettings {
                max_sessions: Some(7),
                idle_timeout: Some(Duration::from_secs(9)),
                ..LimitSettings::default()
            },
            http: Some(vec!["127.0.0.1:1".parse().expect("addr")]),
            ..Overrides::default()
        };
        let loaded = check_with(text, &overrides).expect("valid");
        for server in &loaded.servers {
            assert_eq!(server.limits.max_sessions, 7, "{}", server.name);
            assert_eq!(server.limits.idle_timeout, Some(Duration::from_secs(9)));
        }
        assert_eq!(loaded.http, vec!["127.0.0.1:1".parse().expect("addr")]);
    }

    #[test]
    fn every_problem_is_named_with_its_path() {
        let found = problems(
            r#"{"mcpServers": {
                "nocmd": {"args": []},
                "typo": {"command": "srv", "forkline": {"maxSesions": 3}},
                "bad": {"command": "srv", "args": ["x", 3], "env": {"N": 1}},
                "secret": {"command": "srv", "env": {"TOKEN": "${env:NOT_SET}"}},
                "gone": {"command": "missing-binary"},
                "my server": {"command": "srv"},
                "limits": {"command": "srv", "forkline": {"maxSessions": 0, "idleTimeout": -1}}
            }, "extra": 1}"#,
        );
        let expected = [
            "c.json: extra: unknown key (known here: mcpServers, forkline)",
            "c.json: mcpServers.bad.args[1]: must be a string, not a number",
            "c.json: mcpServers.bad.env.N: must be a string, not a number",
            "c.json: mcpServers.gone.command: `missing-binary` is not found in PATH",
            "c.json: mcpServers.limits.forkline.maxSessions: must be at least 1",
            "c.json: mcpServers.limits.forkline.idleTimeout: expected a non-negative number of seconds, got `-1`",
            "c.json: mcpServers[\"my server\"]: a server name is 1 to 64 letters, digits, `.`, `_` or `-` (it is part of the URL /servers/NAME/mcp)",
            "c.json: mcpServers.nocmd: missing: a stdio server needs the `command` that starts it",
            "c.json: mcpServers.secret.env.TOKEN: ${env:NOT_SET}: NOT_SET is not set in forkline's environment",
            "c.json: mcpServers.typo.forkline.maxSesions: unknown key (known here: maxSessions, maxSessionsPerClient, idleTimeout, maxMessageBytes, maxInflight, prespawn, tcp, unix)",
        ];
        let mut sorted = found.clone();
        sorted.sort();
        let mut want: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(sorted, want);
    }

    #[test]
    fn syntax_errors_have_line_and_column() {
        let found =
            problems("{\n  \"mcpServers\": {\n    \"a\": {\"command\": \"srv\",}\n  }\n}\n");
        assert_eq!(
            found,
            vec!["c.json:3:28: not valid JSON: trailing comma".to_string()]
        );
    }

    #[test]
    fn disabled_and_remote_servers_are_skipped_and_client_keys_ignored() {
        let loaded = check(
            r#"{"mcpServers": {
                "off": {"command": "missing-binary", "disabled": true},
                "remote": {"url": "https://example.com/mcp"},
                "typed": {"type": "sse", "url": "https://example.com/sse"},
                "on": {"type": "stdio", "command": "srv", "autoApprove": ["x"], "timeout": 60}
            }}"#,
        )
        .expect("valid");
        assert_eq!(loaded.servers.len(), 1);
        assert_eq!(loaded.servers[0].name, "on");
        let skipped: Vec<&str> = loaded.skipped.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(skipped, ["off", "remote", "typed"]);
        let none = problems(r#"{"mcpServers": {"off": {"command": "srv", "disabled": true}}}"#);
        assert_eq!(
            none,
            ["c.json: mcpServers: has no server to serve: every one is disabled or remote (`url`)"]
        );
    }

    #[test]
    fn listeners_may_not_be_shared_and_raw_ones_belong_to_a_server() {
        let found = problems(
            r#"{"forkline": {"http": "127.0.0.1:7000", "tcp": "127.0.0.1:7001"},
                "mcpServers": {
                "a": {"command": "srv", "forkline": {"tcp": "127.0.0.1:7000"}},
                "b": {"command": "srv", "forkline": {"unix": ["/tmp/x.sock", "/tmp/x.sock"]}}
            }}"#,
        );
        let mut found = found;
        found.sort();
        assert_eq!(
            found,
            [
                "c.json: forkline.http: tcp://127.0.0.1:7000 is already a listener at mcpServers.a.forkline.tcp",
                "c.json: forkline.tcp: a raw-socket listener serves one server: put it in that server's `forkline` object",
                "c.json: mcpServers.b.forkline.unix[1]: unix:/tmp/x.sock is already a listener at mcpServers.b.forkline.unix[0]",
            ]
        );
    }

    #[test]
    fn expanded_secrets_are_not_shown() {
        let loaded = check(
            r#"{"mcpServers": {"a": {"command": "srv", "args": ["--token", "${env:GH_TOKEN}"]}}}"#,
        )
        .expect("valid");
        let command = &loaded.servers[0].command;
        assert_eq!(command.args, ["--token", "ghp_secret"]);
        assert_eq!(command.to_string(), "srv --token ${env:GH_TOKEN}");
    }

    #[test]
    fn command_line_listeners_need_a_single_server() {
        let overrides = Overrides {
            listen: vec![ListenAddr::Tcp("127.0.0.1:0".parse().expect("addr"))],
            ..Overrides::default()
        };
        let one = r#"{"mcpServers": {"a": {"command": "srv"}}}"#;
        let loaded = check_with(one, &overrides).expect("one server");
        assert_eq!(loaded.servers[0].listen, overrides.listen);
        assert!(loaded.http.is_empty(), "no HTTP unless asked for");
        let two = r#"{"mcpServers": {"a": {"command": "srv"}, "b": {"command": "srv"}}}"#;
        let list = check_with(two, &overrides).expect_err("two servers");
        assert!(
            list[0].what.contains("--tcp and --unix serve one server"),
            "{list:?}"
        );
    }

    #[test]
    fn paths_quote_keys_that_are_not_plain_words() {
        assert_eq!(path_of("", "mcpServers"), "mcpServers");
        assert_eq!(path_of("mcpServers", "a-b_c"), "mcpServers.a-b_c");
        assert_eq!(path_of("mcpServers", "a.b"), "mcpServers[\"a.b\"]");
        assert_eq!(path_of("mcpServers", "q\""), "mcpServers[\"q\\\"\"]");
    }
}
