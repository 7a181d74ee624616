//! The wire: newline framing, JSON-RPC envelopes read cheaply, and the
//! error objects forkline itself sends.

pub mod framing;
pub mod message;
pub mod reply;
