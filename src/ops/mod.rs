//! The operations side: session tapes (`--record`) and reading them back
//! (`forkline replay`).

pub mod replay;
pub mod tape;
