//! Listening sockets and the mio acceptor that admits connections.

pub mod acceptor;
pub mod listener;
