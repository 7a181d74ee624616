//! The operations side: session tapes (`--record`) and reading them back
//! (`forkline replay`), the metrics, and the admin endpoint (`--admin`).

pub mod admin;
pub mod metrics;
pub mod replay;
pub mod tape;
