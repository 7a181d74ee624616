//! The subcommands other than `serve`'s acceptor: `stdio`, `connect`,
//! `check` and the built-in `echo-server`.

pub mod check;
pub mod connect;
pub mod echo_server;
pub mod stdio;
