//! Thin safe wrappers over the few system calls std lacks.

pub mod interrupt;
