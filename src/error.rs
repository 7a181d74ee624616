//! The one error type of forkline.
//!
//! Callers match on it because the proxy reacts differently per kind: a
//! config error exits 2, a spawn failure becomes a JSON-RPC error for the
//! client, an I/O failure on one session is a log line. Every variant
//! carries the thing it is about, so `Display` can name it.

use std::fmt;
use std::io;

#[derive(Debug)]
pub enum Error {
    /// A flag or its value is unusable; exits with status 2.
    Config { flag: &'static str, reason: String },
    /// The child command could not be started.
    Spawn { command: String, source: io::Error },
    /// Binding a listener failed.
    Bind { address: String, source: io::Error },
    /// Any other I/O failure, with what we were doing.
    Io { what: String, source: io::Error },
    /// A tape given to `replay` is not one forkline writes; exits with
    /// status 2. `line` counts from 1.
    Tape {
        path: String,
        line: usize,
        reason: String,
    },
    /// A `--config` file does not check out; exits with status 2.
    File {
        what: String,
        problems: crate::config::file::Problems,
    },
}

impl Error {
    pub fn config(flag: &'static str, reason: impl Into<String>) -> Error {
        Error::Config {
            flag,
            reason: reason.into(),
        }
    }

    /// The process exit status this error calls for.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config { .. } | Error::Tape { .. } | Error::File { .. } => 2,
            _ => 1,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config { flag, reason } => write!(f, "invalid {flag}: {reason}"),
            Error::Spawn { command, source } => write!(f, "failed to spawn `{command}`: {source}"),
            Error::Bind { address, source } => write!(f, "failed to listen on {address}: {source}"),
            Error::Io { what, source } => write!(f, "{what}: {source}"),
            Error::Tape { path, line, reason } => {
                write!(f, "malformed tape `{path}`, line {line}: {reason}")
            }
            Error::File { what, problems } => {
                write!(f, "{what}:")?;
                for line in problems.to_string().lines() {
                    write!(f, "\n  {line}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Config { .. } | Error::Tape { .. } | Error::File { .. } => None,
            Error::Spawn { source, .. } | Error::Bind { source, .. } | Error::Io { source, .. } => {
                source.source()
            }
        }
    }
}

/// Attaches what we were doing to an `io::Error`, instead of a blanket
/// `From<io::Error>` that would lose it.
pub trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, Error>;
}

impl<T> Context<T> for io::Result<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, Error> {
        self.map_err(|source| Error::Io {
            what: what(),
            source,
        })
    }
}
