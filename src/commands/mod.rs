//! The subcommands other than `serve`'s acceptor: `stdio`, `connect` and
//! the built-in `echo-server`.

pub mod connect;
pub mod echo_server;
pub mod stdio;
