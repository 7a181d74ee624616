//! Thin safe wrappers over the few system calls std lacks: poll, eventfd,
//! socket pairs and shutdown, and waking a thread out of its poll.

pub mod alarm;
pub mod eventfd;
pub mod poll;
pub mod socket;
pub mod wake;
