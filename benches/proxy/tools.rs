//! The tools under test: where each one lives, how it is started on a
//! loopback port, how we know it is ready, and how it is stopped and every
//! process it left behind killed and reaped, by PID.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::client::{Accept, Target};
use crate::procfs::{self, Tree};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// No proxy: the driver talks to the child over pipes (the floor).
    Direct,
    Socat,
    Forkline,
    /// forkline asked for more sessions than four descriptors each allow,
    /// so its children take stdin from the socket their stderr is on (the
    /// wiring of the max-live-sessions phase): what that costs.
    ForklineStdinSocket,
    Twin,
    /// The twin with its child's stdin and stdout on one socket pair, as
    /// socat has them: what a Unix socket costs against a pipe.
    TwinSocketPair,
    /// `forkline serve --http`, driven like the HTTP peers (SSE answers).
    ForklineHttp,
    /// The same, with POSTs that accept JSON answers only.
    ForklineHttpJson,
    Supergateway,
    McpProxy,
}

impl Kind {
    pub const ALL: [Kind; 10] = [
        Kind::Direct,
        Kind::Socat,
        Kind::Forkline,
        Kind::ForklineStdinSocket,
        Kind::Twin,
        Kind::TwinSocketPair,
        Kind::ForklineHttp,
        Kind::ForklineHttpJson,
        Kind::Supergateway,
        Kind::McpProxy,
    ];

    /// Short name, for `--only` and log files.
    pub fn key(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Socat => "socat",
            Kind::Forkline => "forkline",
            Kind::ForklineStdinSocket => "forkline-stdin-socket",
            Kind::Twin => "twin",
            Kind::TwinSocketPair => "twin-socketpair",
            Kind::ForklineHttp => "forkline-http",
            Kind::ForklineHttpJson => "forkline-http-json",
            Kind::Supergateway => "supergateway",
            Kind::McpProxy => "mcp-proxy",
        }
    }

    /// Row label in the table.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Direct => "direct pipe (no proxy)",
            Kind::Socat => "socat (TCP, fork)",
            Kind::Forkline => "**forkline** (TCP)",
            Kind::ForklineStdinSocket => "**forkline**, child's stdin on its socket",
            Kind::Twin => "async twin (tokio, TCP)",
            Kind::TwinSocketPair => "async twin, child on a socket pair",
            Kind::ForklineHttp => "**forkline** (HTTP)",
            Kind::ForklineHttpJson => "**forkline** (HTTP, JSON answers)",
            Kind::Supergateway => "supergateway (HTTP)",
            Kind::McpProxy => "mcp-proxy (HTTP)",
        }
    }

    /// forkline's own HTTP rows.
    pub fn is_forkline_http(self) -> bool {
        matches!(self, Kind::ForklineHttp | Kind::ForklineHttpJson)
    }
}

/// Where everything is.
pub struct Paths {
    pub root: PathBuf,
    pub forkline: PathBuf,
    pub twin: PathBuf,
    pub supergateway: PathBuf,
    pub mcp_proxy: PathBuf,
    /// Compiled benches/trivial_echo.c, if a C compiler was found.
    pub trivial: Option<PathBuf>,
    pub work: PathBuf,
}

impl Paths {
    pub fn new(root: &Path, forkline: &Path) -> Paths {
        let peers = root.join("benches/.peers");
        Paths {
            root: root.to_path_buf(),
            forkline: forkline.to_path_buf(),
            twin: root.join("benches/async-twin/target/release/forkline-twin"),
            supergateway: peers.join("node_modules/.bin/supergateway"),
            mcp_proxy: peers.join("venv/bin/mcp-proxy"),
            trivial: None,
            work: root.join("target/bench-proxy"),
        }
    }

    /// `forkline echo-server`: the MCP child of every latency and
    /// throughput figure.
    pub fn echo_child(&self) -> Vec<String> {
        vec![self.forkline.display().to_string(), "echo-server".into()]
    }

    /// A real MCP server (benches/sdk_echo.py on the official Python SDK,
    /// from mcp-proxy's venv), if that venv is installed.
    pub fn sdk_child(&self) -> Option<Vec<String>> {
        let python = self.root.join("benches/.peers/venv/bin/python");
        let script = self.root.join("benches/sdk_echo.py");
        (python.exists() && script.exists())
            .then(|| vec![python.display().to_string(), script.display().to_string()])
    }

    /// The trivial C child where the child's own cost would hide the
    /// proxy's (set-up with a trivial child, idle-session memory); falls
    /// back to the echo server without a C compiler.
    pub fn trivial_child(&self) -> Vec<String> {
        match &self.trivial {
            Some(p) => vec![p.display().to_string()],
            None => self.echo_child(),
        }
    }

    /// Why a tool cannot run here, if it cannot.
    pub fn unavailable(&self, kind: Kind) -> Option<String> {
        let missing = |what: &str| Some(format!("{what} not installed: run benches/setup.sh"));
        match kind {
            Kind::Direct
            | Kind::Forkline
            | Kind::ForklineStdinSocket
            | Kind::ForklineHttp
            | Kind::ForklineHttpJson => None,
            Kind::Socat => which("socat").is_none().then(|| "socat not installed: run benches/setup.sh".into()),
            Kind::Twin | Kind::TwinSocketPair => (!self.twin.exists()).then(|| {
                "twin not built: cargo build --release --manifest-path benches/async-twin/Cargo.toml".into()
            }),
            Kind::Supergateway if !self.supergateway.exists() => missing("supergateway"),
            Kind::Supergateway if which("node").is_none() => Some("node not found".into()),
            Kind::McpProxy if !self.mcp_proxy.exists() => missing("mcp-proxy"),
            Kind::Supergateway | Kind::McpProxy => None,
        }
    }
}

pub fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|p| p.is_file())
}

/// Sessions the limits must allow: the 1,000-idle-session row plus slack.
const SESSION_LIMIT: usize = 1100;

/// A tool running on a loopback port.
pub struct Running {
    pub kind: Kind,
    pub pid: i32,
    pub target: Target,
    /// argv[0] of its MCP children, to tell them from the proxy in /proc.
    pub child_program: String,
    process: Child,
    log: PathBuf,
}

/// A `--max-sessions` that four descriptors a session cannot hold under
/// the hard `RLIMIT_NOFILE` (which forkline raises its soft limit to) and
/// three can: forkline then gives its children stdin on the socket pair.
pub fn stdin_on_socket_sessions() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct it is given.
    let hard = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        usize::try_from(limit.rlim_max).unwrap_or(usize::MAX)
    } else {
        20_000
    };
    (hard / 4).saturating_add(1).min(1 << 20)
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// Whether anything listens on TCP `port` (IPv4 or IPv6), from
/// /proc/net/tcp: readiness without opening a session.
fn listening(port: u16) -> bool {
    let want = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|file| {
        std::fs::read_to_string(file).is_ok_and(|text| {
            text.lines().skip(1).any(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                f.len() > 3 && f[1].ends_with(&want) && f[3] == "0A"
            })
        })
    })
}

/// Starts `kind` serving `child` (argv), in its own process group, its
/// stderr copied to `<work>/logs/<log_name>.log`. Returns once it accepts
/// connections.
pub fn start(
    kind: Kind,
    paths: &Paths,
    child: &[String],
    log_name: &str,
) -> Result<Running, String> {
    start_with_limit(kind, paths, child, log_name, SESSION_LIMIT)
}

/// [`start`], with forkline's and the twin's session limits (total and per
/// client) at `max_sessions`, so that only the fd limit stops the burst
/// phase. The other tools have no such limit.
pub fn start_with_limit(
    kind: Kind,
    paths: &Paths,
    child: &[String],
    log_name: &str,
    max_sessions: usize,
) -> Result<Running, String> {
    launch(kind, paths, child, log_name, max_sessions, None)
}

/// [`start`], with the tool and every process it starts held on `cpu`.
pub fn start_on_cpu(
    kind: Kind,
    paths: &Paths,
    child: &[String],
    log_name: &str,
    cpu: usize,
) -> Result<Running, String> {
    launch(kind, paths, child, log_name, SESSION_LIMIT, Some(cpu))
}

/// Holds the calling thread, and what it starts from now on, on `cpu`.
pub fn pin_to_cpu(cpu: usize) -> std::io::Result<()> {
    // SAFETY: an all-zero cpu_set_t is the empty set; `cpu` is checked
    // against its size before CPU_SET; pid 0 is the calling thread.
    // sched_setaffinity is async-signal-safe, so fine in `pre_exec`.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if cpu >= 8 * std::mem::size_of::<libc::cpu_set_t>() {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        }
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The highest-numbered CPU this process may run on.
pub fn last_cpu() -> Option<usize> {
    // SAFETY: a zeroed set is valid; sched_getaffinity fills it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return None;
        }
        (0..8 * std::mem::size_of::<libc::cpu_set_t>())
            .rev()
            .find(|&c| libc::CPU_ISSET(c, &set))
    }
}

fn launch(
    kind: Kind,
    paths: &Paths,
    child: &[String],
    log_name: &str,
    max_sessions: usize,
    cpu: Option<usize>,
) -> Result<Running, String> {
    let logs = paths.work.join("logs");
    std::fs::create_dir_all(&logs).map_err(|e| format!("cannot create {}: {e}", logs.display()))?;
    let log = logs.join(format!("{log_name}.log"));
    let child_line = child.join(" ");
    let s = |x: &str| x.to_string();
    let (argv, port): (Vec<String>, Option<u16>) = match kind {
        Kind::Direct => return Err("the direct row has no proxy to start".into()),
        // The same limits and child for all, so only the proxy (or
        // forkline's listener) differs.
        Kind::Forkline
        | Kind::ForklineStdinSocket
        | Kind::Twin
        | Kind::TwinSocketPair
        | Kind::ForklineHttp
        | Kind::ForklineHttpJson => {
            let mut a = match kind {
                Kind::Twin => vec![paths.twin.display().to_string(), s("-q")],
                Kind::TwinSocketPair => vec![
                    paths.twin.display().to_string(),
                    s("-q"),
                    s("--child-socket-pair"),
                ],
                _ => vec![paths.forkline.display().to_string(), s("-q"), s("serve")],
            };
            let listener = if kind.is_forkline_http() {
                "--http"
            } else {
                "--tcp"
            };
            let limit = if kind == Kind::ForklineStdinSocket {
                max_sessions.max(stdin_on_socket_sessions())
            } else {
                max_sessions
            }
            .to_string();
            for flag in [
                listener,
                "127.0.0.1:0",
                "--max-sessions",
                &limit,
                "--max-sessions-per-client",
                &limit,
                "--shutdown-grace",
                "1",
                "--",
            ] {
                a.push(s(flag));
            }
            a.extend(child.iter().cloned());
            (a, None)
        }
        Kind::Socat => {
            let port = free_port().map_err(|e| format!("no free port: {e}"))?;
            // backlog=1024 as forkline's listener has: socat's default of 5
            // would drop SYNs when 256 sessions connect at once.
            let a = vec![
                s("socat"),
                format!("TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr,backlog=1024"),
                format!("EXEC:{child_line}"),
            ];
            (a, Some(port))
        }
        Kind::Supergateway => {
            let port = free_port().map_err(|e| format!("no free port: {e}"))?;
            let a = vec![
                paths.supergateway.display().to_string(),
                s("--stdio"),
                child_line.clone(),
                s("--outputTransport"),
                s("streamableHttp"),
                s("--stateful"),
                s("--port"),
                port.to_string(),
                s("--logLevel"),
                s("none"),
            ];
            (a, Some(port))
        }
        Kind::McpProxy => {
            let port = free_port().map_err(|e| format!("no free port: {e}"))?;
            let mut a = vec![
                paths.mcp_proxy.display().to_string(),
                s("--host"),
                s("127.0.0.1"),
                s("--port"),
                port.to_string(),
                s("--log-level"),
                s("WARNING"),
                s("--"),
            ];
            a.extend(child.iter().cloned());
            (a, Some(port))
        }
    };

    let mut file =
        File::create(&log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
    let _ = writeln!(file, "$ {}", argv.join(" "));
    let mut command = Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0);
    if let Some(cpu) = cpu {
        // SAFETY: the closure only makes one async-signal-safe call.
        unsafe {
            command.pre_exec(move || pin_to_cpu(cpu));
        }
    }
    let mut process = command
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", argv[0]))?;
    let pid = process.id() as i32;

    // Copy stderr to the log for the tool's whole life (it must never
    // block on a full pipe), and report forkline's "listening on" line.
    let accept = match kind {
        Kind::ForklineHttpJson => Accept::JsonOnly,
        _ => Accept::Both,
    };
    let (addr_tx, addr_rx) = mpsc::channel();
    let stderr = process.stderr.take().expect("piped");
    std::thread::Builder::new()
        .name(format!("log-{log_name}"))
        .spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("listening on tcp://").nth(1) {
                    if let Ok(addr) = rest.trim().parse::<SocketAddr>() {
                        let _ = addr_tx.send(Target::Line(addr));
                    }
                }
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let addr = rest.trim().strip_suffix("/mcp").unwrap_or(rest.trim());
                    if let Ok(addr) = addr.parse::<SocketAddr>() {
                        let _ = addr_tx.send(Target::Http(addr, "/mcp", accept));
                    }
                }
                let _ = writeln!(file, "{line}");
            }
        })
        .map_err(|e| format!("cannot start a log thread: {e}"))?;

    let mut running = Running {
        kind,
        pid,
        target: Target::Pipe(Vec::new()),
        child_program: child[0].clone(),
        process,
        log,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let target = loop {
        if let Ok(Some(status)) = running.process.try_wait() {
            let tail = running.log_tail(5);
            return Err(format!("{} exited at start ({status}): {tail}", kind.key()));
        }
        match port {
            None => {
                if let Ok(target) = addr_rx.recv_timeout(Duration::from_millis(20)) {
                    break target;
                }
            }
            Some(port) if listening(port) => {
                let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
                break match kind {
                    Kind::Socat => Target::Line(addr),
                    _ => Target::Http(addr, "/mcp", Accept::Both),
                };
            }
            Some(_) => std::thread::sleep(Duration::from_millis(20)),
        }
        if Instant::now() > deadline {
            running.stop();
            return Err(format!("{} did not listen within 30 s", kind.key()));
        }
    };
    running.target = target;
    Ok(running)
}

/// What stopping a tool found.
pub struct Stopped {
    /// Processes of its tree still alive after it exited (then killed).
    pub outlived: usize,
    /// Warning and error lines from its log.
    pub complaints: Vec<String>,
}

impl Running {
    /// The proxy and child processes right now.
    pub fn tree(&self) -> Tree {
        Tree::of(self.pid, &self.child_program)
    }

    fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join(" | ")
    }

    /// SIGTERM, up to 5 s of grace, then SIGKILL to its group; then kills
    /// whatever of its tree outlived it, and reaps everything.
    pub fn stop(&mut self) -> Stopped {
        let before = self.tree();
        signal(self.pid, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.process.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                // SAFETY: plain syscalls on a process group and pid we own.
                unsafe { libc::killpg(self.pid, libc::SIGKILL) };
                signal(self.pid, libc::SIGKILL);
                let _ = self.process.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // Children the tool ends itself get a moment to go.
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut left: Vec<i32>;
        loop {
            reap_orphans();
            left = before
                .all()
                .filter(|p| *p != self.pid && procfs::alive(*p))
                .collect();
            if left.is_empty() || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for pid in &left {
            signal(*pid, libc::SIGKILL);
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while before.all().any(|p| p != self.pid && procfs::alive(p)) && Instant::now() < deadline {
            reap_orphans();
            std::thread::sleep(Duration::from_millis(10));
        }
        reap_orphans();
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let complaints = text
            .lines()
            .skip(1)
            .filter(|l| {
                let l = l.to_ascii_lowercase();
                l.contains("error") || l.contains("warn") || l.contains("panic")
            })
            .map(str::to_owned)
            .collect();
        Stopped {
            outlived: left.len(),
            complaints,
        }
    }
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid, sig) };
}

/// Makes this process the reaper of orphans from the tools' trees, so that
/// nothing they leave behind becomes a zombie nobody waits for.
pub fn become_subreaper() {
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
}

/// Waits for every exited orphan handed to us. Call only when no other
/// child of ours is meant to be waited for by its `Child` handle.
pub fn reap_orphans() {
    loop {
        let mut status = 0;
        // SAFETY: waitpid with a valid out-pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return;
        }
    }
}
