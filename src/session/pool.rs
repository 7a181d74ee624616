//! A bounded pool of named worker threads, each running one session at a
//! time, fed by a bounded channel.
//!
//! Workers are started on demand, never more than `max` (the session
//! limit), and kept: an idle worker costs a blocked `recv` and no
//! wake-ups. Dropping the job sender is the shutdown broadcast; `join`
//! waits for every worker and reports any that panicked, by name.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};

use crossbeam_channel::{Receiver, Sender, TrySendError};

pub type Job = Box<dyn FnOnce() + Send + 'static>;

pub struct Pool {
    jobs: Option<Sender<Job>>,
    queue: Receiver<Job>,
    workers: Vec<JoinHandle<()>>,
    /// Workers waiting for a job and not yet promised one.
    idle: Arc<AtomicUsize>,
    max: usize,
}

impl Pool {
    pub fn new(max: usize) -> Pool {
        let (jobs, queue) = crossbeam_channel::bounded(max);
        Pool {
            jobs: Some(jobs),
            queue,
            workers: Vec::new(),
            idle: Arc::new(AtomicUsize::new(0)),
            max,
        }
    }

    /// Hands `job` to a worker, starting one if none is idle. Never blocks.
    /// Fails only if more jobs are queued than the pool can ever hold, which
    /// admission control rules out.
    pub fn execute(&mut self, job: Job) -> Result<(), Job> {
        let claimed_idle = self
            .idle
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok();
        if !claimed_idle && self.workers.len() < self.max {
            if let Err(e) = self.spawn_worker() {
                log::error!("cannot start a worker thread: {e}");
            }
        }
        let Some(jobs) = &self.jobs else {
            return Err(job);
        };
        jobs.try_send(job).map_err(|e| match e {
            TrySendError::Full(job) | TrySendError::Disconnected(job) => job,
        })
    }

    fn spawn_worker(&mut self) -> std::io::Result<()> {
        let name = format!("worker-{}", self.workers.len() + 1);
        let queue = self.queue.clone();
        let idle = Arc::clone(&self.idle);
        let handle = thread::Builder::new()
            .name(name)
            .spawn(move || worker_loop(&queue, &idle))?;
        self.workers.push(handle);
        Ok(())
    }

    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Stops accepting jobs, lets running ones finish, joins every worker.
    pub fn join(mut self) {
        self.jobs.take();
        for handle in self.workers.drain(..) {
            let name = handle.thread().name().unwrap_or("worker").to_string();
            if handle.join().is_err() {
                log::error!("thread {name} panicked");
            }
        }
    }
}

fn worker_loop(queue: &Receiver<Job>, idle: &AtomicUsize) {
    // The first job is the one this worker was started for: it does not
    // announce itself idle until it has finished one.
    while let Ok(job) = queue.recv() {
        if catch_unwind(AssertUnwindSafe(job)).is_err() {
            let name = thread::current().name().unwrap_or("worker").to_string();
            log::error!("a session panicked on thread {name}; the worker carries on");
        }
        idle.fetch_add(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::bounded;

    #[test]
    fn grows_to_demand_never_past_max_and_reuses_workers() {
        let mut pool = Pool::new(3);
        let (release_tx, release_rx) = bounded::<()>(0);
        let (started_tx, started_rx) = bounded::<String>(8);
        for _ in 0..3 {
            let release = release_rx.clone();
            let started = started_tx.clone();
            pool.execute(Box::new(move || {
                let _ = started.send(thread::current().name().unwrap_or("").to_string());
                let _ = release.recv();
            }))
            .map_err(|_| "queued")
            .expect("room for three");
        }
        let mut names: Vec<String> = (0..3)
            .map(|_| started_rx.recv().expect("started"))
            .collect();
        names.sort();
        assert_eq!(names, vec!["worker-1", "worker-2", "worker-3"]);
        assert_eq!(pool.workers(), 3);
        for _ in 0..3 {
            release_tx.send(()).expect("release");
        }
        // Let the workers report idle, then reuse one of them.
        let done = (0..2000).any(|_| {
            thread::sleep(std::time::Duration::from_millis(1));
            pool.idle.load(Ordering::Acquire) == 3
        });
        assert!(done, "workers never went idle");
        let (tx, rx) = bounded(1);
        pool.execute(Box::new(move || {
            let _ = tx.send(());
        }))
        .map_err(|_| "queued")
        .expect("room");
        rx.recv().expect("job ran");
        assert_eq!(pool.workers(), 3, "no new worker for the fourth job");
        pool.join();
    }

    #[test]
    fn a_panicking_job_does_not_kill_its_worker() {
        let mut pool = Pool::new(1);
        pool.execute(Box::new(|| panic!("a deliberate test panic")))
            .map_err(|_| "queued")
            .expect("room");
        let recovered = (0..2000).any(|_| {
            thread::sleep(std::time::Duration::from_millis(1));
            pool.idle.load(Ordering::Acquire) == 1
        });
        assert!(recovered, "the worker never came back after the panic");
        let (tx, rx) = bounded(1);
        pool.execute(Box::new(move || {
            let _ = tx.send(());
        }))
        .map_err(|_| "queued")
        .expect("room");
        rx.recv().expect("the same worker ran the next job");
        assert_eq!(pool.workers(), 1);
        pool.join();
    }
}
