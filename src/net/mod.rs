//! Listening sockets, the mio acceptor that admits connections, and the
//! descriptor limit that bounds how many it can.

pub mod acceptor;
pub mod fd_limit;
pub mod listener;
pub mod servers;
