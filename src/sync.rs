//! Locking that outlives a panic.
//!
//! A panic in one session is caught and logged by its worker, and the
//! proxy goes on; had it held a mutex, honouring the poison would fail
//! every other session that takes the same lock. Every mutex in forkline
//! guards data whose critical sections are a few statements that leave it
//! consistent (an insert, a remove, a flag, a count), so its data is used
//! as it stands.

use std::sync::{Mutex, MutexGuard, PoisonError};

pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
