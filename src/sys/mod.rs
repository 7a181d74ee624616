//! Thin safe wrappers over the few system calls std lacks: poll, eventfd,
//! socket pairs and shutdown.

pub mod alarm;
pub mod eventfd;
pub mod poll;
pub mod socket;
