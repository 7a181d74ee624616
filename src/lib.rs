//! forkline: a multi-session forward proxy for the Model Context Protocol.
//!
//! An MCP server that speaks stdio serves one client. forkline listens and,
//! for every client session, spawns a fresh child process of that server
//! and relays newline-framed JSON-RPC between the two, with limits,
//! isolation and a clean shutdown. It is synchronous by design: a mio
//! acceptor, a bounded pool of worker threads — one per session, moving
//! both directions from one `poll(2)` — a reaper thread for every child's
//! exit, a thread for every child's stderr, and a slab of sessions.
//!
//! The binary is a thin shell over these modules; `run` is its entry.

pub mod child;
pub mod cli;
pub mod commands;
pub mod config;
pub mod error;
pub mod http;
pub mod logging;
pub mod net;
pub mod ops;
pub mod proto;
pub mod session;
pub mod shutdown;
pub mod sync;
pub mod sys;

use cli::{Cli, Command};
use error::Error;

/// Runs one parsed command line; returns the process exit status.
pub fn run(cli: Cli) -> Result<i32, Error> {
    match cli.command {
        Command::Serve(args) => {
            let config = args.to_config()?;
            net::acceptor::serve(config)?;
            Ok(0)
        }
        Command::Stdio(args) => {
            let config = args.to_config()?;
            commands::stdio::run(&config)
        }
        Command::Connect(args) => {
            commands::connect::run(&args.address)?;
            Ok(0)
        }
        Command::Check(args) => {
            let stdout = std::io::stdout();
            commands::check::run(args.file(), &mut stdout.lock()).map_err(|source| Error::Io {
                what: "cannot write the verdict".into(),
                source,
            })
        }
        Command::Replay(args) => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            if let Some(note) = ops::replay::replay(&args.tape, args.json, &mut out)? {
                eprintln!("forkline: {note}");
            }
            Ok(0)
        }
        Command::EchoServer => {
            commands::echo_server::run(std::io::stdin().lock(), std::io::stdout().lock()).map_err(
                |source| Error::Io {
                    what: "echo-server".into(),
                    source,
                },
            )?;
            Ok(0)
        }
    }
}
