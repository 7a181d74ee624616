//! The child side of a session: spawning, stopping and reaping a server
//! process and its group, and logging its stderr.

pub mod process;
pub mod reaper;
pub mod stderr;
pub mod warm;
