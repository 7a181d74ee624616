//! `forkline check FILE`: a `--config` file checked as `serve` would load
//! it, without serving it. Each problem is one line with its JSON path
//! (exit 2); a good file gets one line per server (exit 0). Values of
//! `env` are never printed: they are often secrets.

use std::io::{self, Write};
use std::path::Path;
use std::time::Duration;

use crate::config::file::{self, Loaded};
use crate::config::{Overrides, ServerSpec};

/// Checks `path`, writing the verdict to `out`; returns the exit status.
pub fn run(path: &Path, out: &mut impl Write) -> io::Result<i32> {
    match file::load(path, &Overrides::default()) {
        Ok(loaded) => {
            write_summary(path, &loaded, out)?;
            Ok(0)
        }
        Err(problems) => {
            writeln!(out, "{problems}")?;
            let n = problems.list.len();
            writeln!(
                out,
                "{}: {n} problem{}; nothing is served from it",
                path.display(),
                if n == 1 { "" } else { "s" }
            )?;
            Ok(2)
        }
    }
}

fn write_summary(path: &Path, loaded: &Loaded, out: &mut impl Write) -> io::Result<()> {
    for server in &loaded.servers {
        writeln!(out, "{}", summary(server))?;
    }
    for (name, why) in &loaded.skipped {
        writeln!(out, "{name}: skipped ({why})")?;
    }
    let http: Vec<String> = loaded.http.iter().map(|a| format!("http://{a}")).collect();
    writeln!(
        out,
        "{}: ok, {} server{} to serve{}",
        path.display(),
        loaded.servers.len(),
        if loaded.servers.len() == 1 { "" } else { "s" },
        if http.is_empty() {
            String::new()
        } else {
            format!(" on {}", http.join(", "))
        }
    )
}

/// `NAME: COMMAND; at /servers/NAME/mcp[, LISTENERS]; LIMITS[; env: NAMES]`
pub fn summary(server: &ServerSpec) -> String {
    let limits = &server.limits;
    let mut at = vec![format!("/servers/{}/mcp", server.name)];
    at.extend(server.listen.iter().map(ToString::to_string));
    let mut line = format!(
        "{}: `{}`; at {}; maxSessions {}, maxSessionsPerClient {}, idleTimeout {}, \
         maxMessageBytes {}, maxInflight {}, prespawn {}",
        server.name,
        server.command,
        at.join(", "),
        limits.max_sessions,
        limits.max_sessions_per_client,
        limits.idle_timeout.map_or("never".into(), seconds),
        bytes(limits.max_message_bytes),
        limits.max_inflight,
        server.prespawn,
    );
    if !server.command.env.is_empty() {
        let names: Vec<&str> = server.command.env.iter().map(|(k, _)| k.as_str()).collect();
        line.push_str(&format!("; env: {}", names.join(", ")));
    }
    line
}

fn seconds(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

fn bytes(n: usize) -> String {
    const MIB: usize = 1024 * 1024;
    match n {
        n if n % MIB == 0 => format!("{}MiB", n / MIB),
        n if n % 1024 == 0 => format!("{}KiB", n / 1024),
        n => n.to_string(),
    }
}
