//! Locking and joining that outlive a panic.
//!
//! A panic in one session is caught and logged by its worker, and the
//! proxy goes on; had it held a mutex, honouring the poison would fail
//! every other session that takes the same lock. Every mutex in forkline
//! guards data whose critical sections are a few statements that leave it
//! consistent (an insert, a remove, a flag, a count), so its data is used
//! as it stands.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Joins a thread; a panic that ended it is logged by the thread's name,
/// and the caller goes on with its own shutdown.
pub fn join(handle: JoinHandle<()>) {
    let name = handle.thread().name().unwrap_or("unnamed").to_string();
    if handle.join().is_err() {
        log::error!("thread {name} panicked");
    }
}
